#!/usr/bin/env bash
# Real clients against a real ce-node process (cloud + edge in one node, HTTP API on an
# ephemeral port, the shipped model): curl, plain and streamed, and the official `openai` npm
# package; their tokens must equal ce-generate's for the same prompt, sampling and seed.
#   test_openai_clients.sh BUILD_DIR SOURCE_DIR
# Exit 77 (skipped) when Node.js or the npm registry is unavailable for the openai package.
set -euo pipefail
build=$1
src=$2
# shellcheck source=tests/integration/node_process.sh
source "$src/tests/integration/node_process.sh"

model=ce-brown-8l
prompt="The jury said that"
# The shipped model with a ChatML chat template beside it (as SmolLM2 and Qwen publish theirs), so
# that the chat endpoint has a template to render.
cp -r "$src/models/$model" "$work/model"
python3 - "$work/model/tokenizer_config.json" <<'PY'
import json, sys
template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
json.dump({"chat_template": template}, open(sys.argv[1], "w"))
PY
start_node "$src" "$build" --set ce.model.path="$work/model"
base="http://127.0.0.1:$http_port"
echo "ce-node up: cloud port $cloud_port, HTTP $base"

# ce-generate's token ids for a mode/sampling: the line after '--- tokens'.
generate_ids() {
  "$build/tools/ce-generate" --model "$src/models/$model" --prompt "$prompt" --max-tokens 24 --threads 1 "$@" |
    sed -n '/^--- tokens/{n;p}' | sed -E 's/@[0-9]+//g' | tr ' ' ','
}
full_greedy=$(generate_ids --mode full)
# The chat request's prompt as the template renders it, tokenized as it stands (no BOS added).
chat_ids=$("$build/tools/ce-generate" --model "$src/models/$model" --no-bos --max-tokens 16 --threads 1 --mode full \
  --prompt $'<|im_start|>user\nThe jury said that<|im_end|>\n<|im_start|>assistant\n' |
  sed -n '/^--- tokens/{n;p}' | sed -E 's/@[0-9]+//g' | tr ' ' ',')
full_sampled=$(generate_ids --mode full --temperature 0.8 --seed 7)
full_sampled_8=$(generate_ids --mode full --temperature 0.8 --seed 8)  # choice 1 of n = 2 with seed 7
exits_only=$(generate_ids --mode early-exit --threshold 0)
echo "ce-generate full greedy:  $full_greedy"
echo "ce-generate full sampled: $full_sampled"

ids_of_json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(",".join(str(t["id"]) for t in d["x_ce"]["tokens"]))'; }
ids_of_sse() {
  python3 -c '
import json, sys
ids, done = [], False
for line in sys.stdin:
    line = line.strip()
    if line == "data: [DONE]": done = True
    elif line.startswith("data: "):
        ids += [t["id"] for t in json.loads(line[6:]).get("x_ce", {}).get("tokens", [])]
assert done, "no [DONE] event"
print(",".join(map(str, ids)))'
}

# curl, not streamed: every token from the cloud (θ > 1) is the full model's.
got=$(curl -sf "$base/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$model\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"x_ce\":{\"threshold\":2}}" | ids_of_json)
[ "$got" = "$full_greedy" ] || fail "curl plain: $got != $full_greedy"
echo "curl plain (θ 2) = ce-generate --mode full"

# curl, streamed, sampled.
got=$(curl -sfN "$base/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$model\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"temperature\":0.8,\"seed\":7,\"stream\":true,\"x_ce\":{\"threshold\":2}}" |
  ids_of_sse)
[ "$got" = "$full_sampled" ] || fail "curl stream sampled: $got != $full_sampled"
echo "curl stream (θ 2, T 0.8, seed 7) = ce-generate --mode full --temperature 0.8 --seed 7"

# curl, streamed, θ = 0: every token from an edge exit, as ce-generate's early-exit at θ 0.
got=$(curl -sfN "$base/v1/completions" \
  -d "{\"prompt\":\"$prompt\",\"max_tokens\":24,\"stream\":true,\"x_ce\":{\"threshold\":0}}" | ids_of_sse)
[ "$got" = "$exits_only" ] || fail "curl stream θ 0: $got != $exits_only"
echo "curl stream (θ 0) = ce-generate --mode early-exit --threshold 0"

# Errors: an OpenAI-style body with the field named, and the node still serves.
code=$(curl -s -o "$work/err.json" -w '%{http_code}' "$base/v1/completions" -d '{"prompt":"x","max_tokens":"many"}')
[ "$code" = 400 ] || fail "bad max_tokens gave HTTP $code"
grep -q '"param":"max_tokens"' "$work/err.json" || fail "error body does not name max_tokens: $(cat "$work/err.json")"
# Bodies are read whole first: `curl | grep -q` under pipefail fails whenever grep stops reading
# before curl has written everything (curl then dies of SIGPIPE).
health=$(curl -sf "$base/health") || fail "/health failed"
grep -q '"connected":true' <<<"$health" || fail "/health does not show the cloud link: $health"
metrics=$(curl -sf "$base/metrics") || fail "/metrics failed"
grep -q '^ce_tokens_total{source="cloud",layer="8"} ' <<<"$metrics" || fail "/metrics has no cloud token count"
echo "errors, /health and /metrics ok"

# The official openai package, unchanged.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: Node.js/npm not installed; the openai-package half of this test did not run"
  exit 77
fi
npm_dir="$build/npm-openai"
if [ ! -d "$npm_dir/node_modules/openai" ]; then
  mkdir -p "$npm_dir"
  # openai 4.x: the current major needs Node >= 22, Debian 12 ships 18 (this machine has 20).
  if ! (cd "$npm_dir" && timeout 180 npm install --no-audit --no-fund --loglevel=error openai@4 >"$work/npm.log" 2>&1); then
    cat "$work/npm.log"
    echo "SKIP: npm could not install the openai package (no registry?)"
    exit 77
  fi
fi
cp "$src/tests/integration/openai_client.mjs" "$npm_dir/"
out=$(node "$npm_dir/openai_client.mjs" "$base/v1" "$model" "$prompt")
echo "openai package: $out"
python3 - "$out" "$full_sampled" "$full_greedy" "$chat_ids" "$full_sampled_8" "$prompt" <<'PY'
import json, sys
out = json.loads(sys.argv[1])
sampled, greedy, chat, sampled_8, prompt = sys.argv[2:7]
ids = lambda v: ",".join(map(str, v))
assert out["models"] == ["ce-brown-8l"], out["models"]
assert ids(out["plain"]["ids"]) == sampled, ("plain", out["plain"]["ids"], sampled)
assert ids(out["stream"]["ids"]) == greedy, ("stream", out["stream"]["ids"], greedy)
assert out["plain"]["usage"]["completion_tokens"] == 24
assert out["stream"]["finish"] == "length"
assert len(out["stream"]["text"]) > 0
assert ids(out["chat"]["ids"]) == chat, ("chat", out["chat"]["ids"], chat)
assert ids(out["chat_stream"]["ids"]) == chat, ("chat stream", out["chat_stream"]["ids"], chat)
assert out["chat"]["role"] == "assistant" and out["chat"]["object"] == "chat.completion"
assert out["chat_stream"]["text"] == out["chat"]["text"], (out["chat_stream"]["text"], out["chat"]["text"])
assert out["chat_stream"]["role"] == "assistant"

# Completion logprobs with echo and max_tokens 0: the prompt's tokens (the BOS the server puts first
# is not echoed), each scored after what precedes it, in OpenAI's parallel arrays.
e = out["echo"]
assert e["text"] == prompt, e["text"]
assert e["finish"] == "length" and e["usage"]["completion_tokens"] == 0, e
lp = e["logprobs"]
n_prompt = e["usage"]["prompt_tokens"] - 1
assert n_prompt > 0
for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
    assert len(lp[key]) == n_prompt, (key, lp[key], n_prompt)
assert "".join(lp["tokens"]).strip() == prompt, lp["tokens"]  # each token's text, its space included
assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"]), lp["text_offset"]
for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
    assert isinstance(value, (int, float)) and value <= 0, value
    assert isinstance(top, dict) and 1 <= len(top) <= 2 and all(v <= 0 for v in top.values()), top
    assert value <= max(top.values()), (value, top)
assert [t["source"] for t in e["prompt_tokens"]] == ["cloud"] * n_prompt, e["prompt_tokens"]  # θ 2: the final layer

# n = 2 with seed 7: choice i is ce-generate's draw with seed 7 + i; usage sums the choices.
two = out["two"]
assert [c["index"] for c in two["choices"]] == [0, 1], two["choices"]
assert [c["seed"] for c in two["x_ce"]] == [7, 8], two["x_ce"]
assert ids(two["x_ce"][0]["ids"]) == sampled, ("n=2 choice 0", two["x_ce"][0]["ids"], sampled)
assert ids(two["x_ce"][1]["ids"]) == sampled_8, ("n=2 choice 1", two["x_ce"][1]["ids"], sampled_8)
assert two["choices"][0]["text"] == out["plain"]["text"]
assert two["usage"]["completion_tokens"] == 48, two["usage"]
for c in two["choices"]:
    assert len(c["logprobs"]["tokens"]) == 24 and len(c["logprobs"]["token_logprobs"]) == 24, c["logprobs"]

# Chat logprobs: one entry per token with its UTF-8 bytes, three alternatives most likely first;
# greedy, so the chosen token leads them. Streamed, the chunks add up to the same entries.
cl = out["chat_logprobs"]
assert cl["refusal"] is None
assert ids(cl["ids"]) == chat, ("chat logprobs", cl["ids"], chat)
assert len(cl["content"]) == len(cl["ids"]), cl["content"]
for entry in cl["content"]:
    assert entry["logprob"] <= 0, entry
    assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"], entry
    top = entry["top_logprobs"]
    assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True), top
    assert top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"], entry
# Two generations of the same tokens: equal logprobs up to float rounding (the cloud may compute a
# position in a batch of another shape).
def same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-4
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
assert same(cl["streamed"], cl["content"]), (cl["streamed"], cl["content"])

v = out["vendor"]
assert v["warning"] == '299 - "ignored fields: mirostat, typical_p"', v
assert v["ignored"] == ["mirostat", "typical_p"], v
PY
echo "openai package: plain (sampled) and streamed completions, plain and streamed chat completions = ce-generate"
echo "openai package: echo + logprobs + max_tokens 0, n = 2 (= ce-generate seeds 7 and 8), chat logprobs, ignored vendor fields"
echo "PASS"
