#include "model/blas_kernel.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace ce {
namespace {

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Rank of an OpenBLAS kernel family by the vector units it uses: 2 = AVX-512, 1 = AVX2, 0 = older.
int kernel_rank(const std::string& name) {
  const auto n = lowercase(name);
  if (n == "skylakex" || n == "cooperlake" || n == "sapphirerapids") return 2;
  if (n == "haswell" || n == "zen") return 1;
  return 0;
}

}  // namespace

std::string blas_kernel_name() {
  using corename_fn = char* (*)();
  auto corename = reinterpret_cast<corename_fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!corename) return "";
  const char* name = corename();
  return name ? name : "";
}

std::string preferred_blas_kernel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

void use_fast_blas_kernel(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) return;  // the user's choice, or we already re-executed
  const auto current = blas_kernel_name();
  const auto preferred = preferred_blas_kernel();
  if (current.empty() || preferred.empty() || kernel_rank(current) >= kernel_rank(preferred)) return;
  if (setenv("OPENBLAS_CORETYPE", preferred.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: carry on with the slow kernel rather than not at all
}

}  // namespace ce
