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

// Writes tensors as stored (contiguous CPU copies), sorted by name.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ce
