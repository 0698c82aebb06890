#pragma once
// Reader and writer for the safetensors format (8-byte header length, JSON header, raw data).
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace ce {

using TensorMap = std::map<std::string, at::Tensor>;

// Reads every tensor (F32, F16, BF16, or I8: the values of int8 matrices) keeping its stored
// dtype. Throws ModelError naming the file and tensor on a truncated file, bad header, overlapping
// or out-of-range offsets, or an unsupported dtype.
TensorMap read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

// Hands the memory pages of a tensor read above back to the kernel once a converted copy of it is
// made, so that a load that widens or quantizes peaks at about the converted model rather than the
// file plus the copy. Never loses data (MADV_PAGEOUT): a page touched again is read again from the
// file, a written one goes to swap or stays. Only whole pages inside the tensor; a no-op on a
// kernel without MADV_PAGEOUT (before 5.4), where it costs memory only.
void release_pages(const at::Tensor& loaded);

// Writes tensors as stored (contiguous CPU copies), sorted by name.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ce
