#include "model/safetensors.hpp"

#include <torch/torch.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/model_config.hpp"

namespace ce {
namespace {

using nlohmann::json;

// A header larger than this is treated as corrupt rather than allocated.
constexpr uint64_t max_header_bytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  size_t bytes;
};
constexpr DtypeInfo dtypes[] = {
    {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2}, {"BF16", at::kBFloat16, 2}, {"I8", at::kChar, 1}};

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (auto& d : dtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo* dtype_by_type(at::ScalarType t) {
  for (auto& d : dtypes)
    if (t == d.type) return &d;
  return nullptr;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ModelError(path + ": " + what);
}

}  // namespace

TensorMap read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, "cannot open safetensors file");
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) fail(path, "truncated: shorter than the 8-byte header length");
  uint64_t header_len = 0;
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > max_header_bytes || header_len > file_size - 8)
    fail(path, "header length " + std::to_string(header_len) + " exceeds the file size " +
                   std::to_string(file_size));
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  json j;
  try {
    j = json::parse(header);
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) fail(path, "header is not a JSON object");

  const uint64_t data_size = file_size - 8 - header_len;
  // The tensors are views of a private (copy-on-write) mapping of the file: memory holds the
  // file's bytes once, paged in as read, and a tensor written to (training) gets its own pages.
  // The mapping lives as long as any tensor of it.
  std::shared_ptr<void> mapping;
  const char* data = nullptr;
  if (data_size) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, "cannot open safetensors file");
    void* base = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (base == MAP_FAILED) fail(path, "cannot map the tensor data");
    mapping.reset(base, [file_size](void* p) { ::munmap(p, file_size); });
    data = static_cast<const char*>(base) + 8 + header_len;
  }

  TensorMap out;
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> ranges;
  for (auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (metadata && entry.is_object())
        for (auto& [k, v] : entry.items())
          if (v.is_string()) (*metadata)[k] = v.get<std::string>();
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets"))
      fail(path, where + ": header entry needs dtype, shape and data_offsets");
    const auto& jd = entry["dtype"];
    const auto& js = entry["shape"];
    const auto& jo = entry["data_offsets"];
    if (!jd.is_string()) fail(path, where + ": dtype is not a string");
    const DtypeInfo* dt = dtype_by_name(jd.get<std::string>());
    if (!dt) fail(path, where + ": unsupported dtype " + jd.get<std::string>() + " (F32, F16, BF16, I8 are)");
    if (!js.is_array()) fail(path, where + ": shape is not an array");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (auto& d : js) {
      if (!d.is_number_unsigned()) fail(path, where + ": shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 32)) fail(path, where + ": dimension " + std::to_string(v) + " is implausibly large");
      numel *= v;
      if (numel > (1ull << 34)) fail(path, where + ": too many elements");
      shape.push_back(static_cast<int64_t>(v));
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      fail(path, where + ": data_offsets must be two non-negative integers");
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end || end > data_size)
      fail(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") outside the data section of " + std::to_string(data_size) + " bytes");
    if (end - begin != numel * dt->bytes)
      fail(path, where + ": data_offsets span " + std::to_string(end - begin) + " bytes but shape and dtype need " +
                     std::to_string(numel * dt->bytes));
    ranges.emplace_back(begin, end, name);
    const auto options = torch::TensorOptions().dtype(dt->type);
    at::Tensor tensor;
    const char* at_bytes = data ? data + begin : nullptr;
    if (numel && reinterpret_cast<uintptr_t>(at_bytes) % dt->bytes == 0) {
      tensor = torch::from_blob(const_cast<char*>(at_bytes), shape, [mapping](void*) {}, options);
    } else {  // empty, or unaligned for its type (a header length the writer did not pad): a copy
      tensor = torch::empty(shape, options);
      if (numel) std::memcpy(tensor.data_ptr(), at_bytes, end - begin);
    }
    out.emplace(name, std::move(tensor));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (std::get<0>(ranges[i]) < std::get<1>(ranges[i - 1]))
      fail(path, "tensors '" + std::get<2>(ranges[i - 1]) + "' and '" + std::get<2>(ranges[i]) +
                     "' have overlapping data ranges");
  return out;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> ordered;
  uint64_t offset = 0;
  for (auto& [name, t] : tensors) {  // std::map: sorted by name
    const DtypeInfo* dt = dtype_by_type(t.scalar_type());
    if (!dt) throw ModelError(path + ": tensor '" + name + "' has a dtype safetensors writer does not support");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * dt->bytes;
    header[name] = {{"dtype", dt->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    ordered.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ModelError(path + ": cannot write safetensors file");
    uint64_t n = text.size();
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<char*>(len_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (auto& c : ordered)
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
    if (!out) throw ModelError(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ModelError(path + ": cannot rename temporary file");
}

void release_pages(const at::Tensor& loaded) {
  if (!loaded.defined() || !loaded.is_contiguous() || loaded.nbytes() == 0) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(loaded.data_ptr());
  const auto first = (begin + page - 1) / page * page, last = (begin + loaded.nbytes()) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT);
}

}  // namespace ce
