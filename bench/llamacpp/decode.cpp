// Greedy batch-1 decode from BOS with llama.cpp's library, timed like llama2.c's run.c: the model
// is loaded, BOS is decoded, then every further token is one llama_decode of one position; the
// rate counts the tokens after the first (run.c starts its clock after the first step too).
// Built by scripts/bench-decode against a llama.cpp checkout's headers and the CPU libraries of
// the npm package @node-llama-cpp/linux-x64 (not part of the project's build).
//
//   decode MODEL.gguf THREADS TOKENS   -> the text on stdout, "achieved tok/s: X" on stderr
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf THREADS TOKENS\n", argv[0]);
    return 2;
  }
  const int threads = std::atoi(argv[2]), tokens = std::atoi(argv[3]);
  if (const char* dir = std::getenv("LLAMA_BACKEND_DIR")) ggml_backend_load_all_from_path(dir);
  else ggml_backend_load_all();
  llama_log_set([](ggml_log_level level, const char* text, void*) {
    if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
  }, nullptr);
  auto mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) {
    std::fprintf(stderr, "decode: cannot load %s\n", argv[1]);
    return 1;
  }
  auto cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(tokens + 8);
  cp.n_batch = cp.n_ubatch = 8;
  cp.n_threads = cp.n_threads_batch = threads;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) {
    std::fprintf(stderr, "decode: cannot make a context\n");
    return 1;
  }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int vocab_size = llama_vocab_n_tokens(vocab);
  llama_token token = llama_vocab_bos(vocab);
  std::string text;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i <= tokens; ++i) {
    if (i == 1) start = std::chrono::steady_clock::now();
    if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
      std::fprintf(stderr, "decode: llama_decode failed at position %d\n", i);
      return 1;
    }
    const float* logits = llama_get_logits_ith(ctx, -1);
    int best = 0;  // greedy: the first of equal maxima, as ours and run.c
    for (int v = 1; v < vocab_size; ++v)
      if (logits[v] > logits[best]) best = v;
    token = best;
    if (i < tokens) {
      char piece[256];
      const int n = llama_token_to_piece(vocab, token, piece, sizeof piece, 0, false);
      if (n > 0) text.append(piece, static_cast<size_t>(n));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s\n", text.c_str());
  std::fprintf(stderr, "achieved tok/s: %f\n", tokens / seconds);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
