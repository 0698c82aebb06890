#pragma once
// Writes a model as a GGUF file (version 3) for llama.cpp's "llama" architecture, so that its
// CPU build can decode the same weights beside ours (docs/bench/decode).
//
// Layout as llama.cpp's own converter writes it: tensors named token_embd / blk.N.attn_q / … /
// output, dimensions innermost first, data aligned to 32 bytes; q and k permuted head by head from
// Hugging Face's rotate_half order into the interleaved order llama.cpp's RoPE reads (the same
// permutation as the llama2.c export); norms always F32; the SentencePiece vocabulary as
// tokenizer.ggml.{tokens, scores, token_type}. Exit heads have no place in the architecture and
// are left out (llama.cpp refuses a file with tensors it does not know).
//
// Matrices are written as F32, F16, or Q8_0 (blocks of 32 values: an fp16 scale max|x| / 127 and
// 32 int8 values, as ggml's reference quantizer makes them). A matrix whose rows are not a
// multiple of 32 values cannot be Q8_0 and is written F16, as llama.cpp's converter does.
#include <string>

namespace ce {

struct Weights;
class SentencePieceTokenizer;

enum class GgufType { f32, f16, q8_0 };

// Throws ModelError naming `path` when it cannot be written.
void write_gguf(const Weights& weights, const SentencePieceTokenizer& tokenizer, GgufType type, const std::string& path);

// "f32", "f16", "q8_0"; throws ModelError naming the choices otherwise.
GgufType gguf_type_from_string(const std::string& name);

}  // namespace ce
