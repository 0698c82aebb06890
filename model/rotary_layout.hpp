#pragma once
// Hugging Face stores q and k projections for RoPE by rotate_half (pairs (i, i + hd/2) of each
// head); Meta's checkpoints, llama2.c and llama.cpp rotate interleaved pairs (2i, 2i + 1). The
// exporters to those formats permute the rows of wq and wk head by head with this (the inverse of
// the permutation HF's conversion script applies).
#include <ATen/core/Tensor.h>

namespace ce {

// (heads * hd, dim) in rotate_half row order -> the same rows in interleaved order.
at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int64_t heads);

}  // namespace ce
