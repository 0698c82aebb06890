// Reference results of Hugging Face's own tokenizer (Rust, through its Node bindings) for
// test_hf_tokenizer.cpp to compare against.
//   node hf_tokenizer_reference.js NPM_DIR TOKENIZER_JSON INPUT_TXT OUT_JSON
// OUT_JSON gets {"ids": encode(text, add_special_tokens=false),
//                "decoded": decode(ids, skip_special_tokens=false),
//                "single": {id: decode([id], false) for every distinct id of "ids"}}.
'use strict';
const fs = require('fs');

async function main() {
  const [npmDir, tokenizerJson, inputTxt, outJson] = process.argv.slice(2);
  if (!outJson) {
    console.error('usage: node hf_tokenizer_reference.js NPM_DIR TOKENIZER_JSON INPUT_TXT OUT_JSON');
    process.exit(2);
  }
  const { Tokenizer } = require(npmDir + '/node_modules/tokenizers');
  const tokenizer = Tokenizer.fromFile(tokenizerJson);
  const text = fs.readFileSync(inputTxt, 'utf8');
  const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
  const ids = encoding.getIds();
  const single = {};
  for (const id of new Set(ids)) single[id] = await tokenizer.decode([id], false);
  const decoded = await tokenizer.decode(ids, false);
  fs.writeFileSync(outJson, JSON.stringify({ ids, decoded, single }), 'utf8');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
