#pragma once
// Writes a model in llama2.c's formats, so that its run.c can decode the same weights beside ours
// (docs/bench/decode): model.bin (the legacy version-0 layout: a 7-int header, then fp32 arrays,
// the classifier last when it is not tied) and tokenizer.bin (max piece length, then per piece its
// score, byte length and bytes, with SentencePiece's U+2581 turned back into a space).
//
// llama2.c rotates interleaved pairs (2i, 2i+1) where Hugging Face rotates halves (i, i + hd/2),
// so the q and k projections are permuted head by head (the inverse of HF's conversion script).
// Exit heads have no place in that format and are left out. Throws ModelError when run.c could not
// run the model as it is (rope_theta other than 10000: run.c has that number built in).
#include <string>

namespace ce {

struct Weights;
class SentencePieceTokenizer;

void write_llama2c_model(const Weights& weights, const std::string& path);
void write_llama2c_tokenizer(const SentencePieceTokenizer& tokenizer, const std::string& path);

}  // namespace ce
