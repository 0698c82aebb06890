#pragma once
// Makes OpenBLAS (the BLAS behind Debian's libtorch) use the kernels this CPU supports.
//
// OpenBLAS's DYNAMIC_ARCH picks its kernels from cpuid's family/model numbers. On virtual CPUs it
// does not recognise (our 2-core build machines report "Intel(R) Xeon(R) Processor" with AVX-512)
// it falls back to Prescott, SSE3 kernels: measured 4-5x slower sgemm than SkylakeX there, which
// made training and prefill that much slower. OPENBLAS_CORETYPE overrides the choice, but OpenBLAS
// reads it while the shared library loads, before main(); so the binaries call this first thing in
// main(), and it sets the variable from the CPU's real features and re-executes the program.
#include <string>

namespace ce {

// The kernel family OpenBLAS is using ("SkylakeX", "Haswell", "Prescott", ...), or "" when the
// BLAS in this process is not OpenBLAS.
std::string blas_kernel_name();

// The kernel family this CPU's features call for ("SkylakeX" with AVX-512, "Haswell" with
// AVX2+FMA), or "" when OpenBLAS's own choice should stand.
std::string preferred_blas_kernel();

// When OpenBLAS runs a kernel weaker than preferred_blas_kernel() and OPENBLAS_CORETYPE is unset,
// sets it and re-executes /proc/self/exe with argv (does not return on success). Call before any
// thread starts. Anything that fails leaves the process running as it was.
void use_fast_blas_kernel(char** argv);

}  // namespace ce
