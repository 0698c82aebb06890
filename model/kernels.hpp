#pragma once
// The decode step's arithmetic on raw row-major buffers: matrix products against weights kept in
// their stored type (fp32, fp16, bf16, or int8 with one scale per 32 values), RMSNorm, RoPE, attention
// over a KV cache, SiLU·up. Torch-free and allocation-free: the caller owns every buffer.
//
// Why not libtorch here: one row through torch::linear goes through GEMM, which packs the whole
// weight matrix on every call (measured 6x slower than a matrix-vector product), and every
// elementwise op costs a dispatch and an allocation. These loops read each weight once per call,
// whatever the number of input rows, and keep the rest of the step in cache.
//
// The vector code is chosen once per process from the CPU's features (AVX-512, AVX2, or the
// portable SSE2 build); CE_KERNELS=portable|avx2|avx512 forces a lower one (tests compare them).
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

namespace ce::kernels {

enum class WeightType : uint8_t { f32, f16, bf16, q8, q8_grouped };
const char* to_string(WeightType type);

// Values per int8 scale: a row of `cols` values holds ceil(cols / 32) blocks, the last one short
// when cols is not a multiple of 32.
constexpr int64_t kQ8Block = 32;
constexpr int64_t q8_blocks(int64_t cols) { return (cols + kQ8Block - 1) / kQ8Block; }

// A (rows, cols) weight matrix as nn.Linear stores it (out, in), row-major.
// f16: IEEE half values. bf16: bfloat16 values. q8: int8 values, and `scales` (rows, ceil(cols / 32)) fp32 with
// value = q * scale of its block. q8_grouped: the same values and scales rearranged by interleave_q8 for
// the VNNI kernel.
struct Matrix {
  WeightType type = WeightType::f32;
  const void* data = nullptr;
  const float* scales = nullptr;  // q8 only
  int64_t rows = 0, cols = 0;
};

// One thread's place in a team of `count` threads, for callers that keep one parallel region
// open across several kernels (the decoder's layer loop) instead of paying a fork and join per
// kernel. {0, 1} is a thread alone.
struct Share {
  int index = 0, count = 1;
};
// y (n, w.rows) = x (n, w.cols) · wᵀ, or y += that when `accumulate` (the residual add). With
// int8 weights x is quantized as the weights are (quantize_q8) and blocks multiply in integers,
// as llama.cpp's Q8_0: y = sum over blocks of scale_w * scale_x * dot(q_w, q_x).
// x and y must not overlap. Parallel over output rows on kernels::threads() threads.
void linear(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate = false);
// The same for output rows [begin, end) only, on the calling thread; begin and end multiples of
// kQ8GroupRows (or end = w.rows).
void linear_rows(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end);

// out (n, dim) = x / rms(x) * weight; out may be x.
void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);

// Rotates each head of `x` (n, heads, head_dim) in place, row i at position start + i, in the
// Hugging Face rotate_half layout: pairs (j, j + head_dim/2). cos/sin: (max_seq, head_dim / 2).
void rope(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t start, const float* cos, const float* sin);

// Causal attention of n queries at positions [start, start + n) over a cache holding positions
// [0, start + n). q: (n, heads, head_dim). keys/values: (start + n, kv_heads, head_dim); head h
// reads kv head h / (heads / kv_heads), as Hugging Face's repeat_kv. out: (n, heads * head_dim).
// The scores live in a few rows of the calling thread's scratch: each query's scores, softmax and
// weighted sum of values are done before the next ones', so a call needs start + n floats for each
// query computed together, whatever its number of queries.
void attention(const float* q, int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t start,
               const float* keys, const float* values, float* out);

// gate (n, ffn) = silu(gate) * up, in place.
void silu_mul(float* gate, const float* up, int64_t n);

// Σ e^(x[i] - shift) over i < n: a softmax's denominator (a head's confidence is its inverse when
// shift is the largest logit). Within a few float ulp of each term; vectorised: over the shipped
// model's 2,048 logits 0.55 µs against 7.3 through libm's expf, which an edge step reading both
// exits paid twice in 0.3–0.5 ms.
float sum_exp(const float* x, int64_t n, float shift);

// x (rows, cols) += bias (cols) on every row (the q/k/v/o biases of Qwen2-style attention).
void add_bias(float* x, int64_t rows, int64_t cols, const float* bias);

// Quantizes a (rows, cols) fp32 matrix: q (rows, cols) int8, scales (rows, ceil(cols / 32)) with
// scale = max |value| / 127 of its block (0 for an all-zero block) and q = value / scale rounded
// to nearest, ties to even. The weights at load and, in every int8 product, the input rows.
void quantize_q8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scales);

// int8 weights for the AVX-512 VNNI kernel (q8_grouped), made at load by interleave_q8 from q8's
// values and scales; rows a multiple of 16 (q8_grouped_fits). Rows go in groups of
// 16, each group block by block (32 values), each block as 8 chunks of 64 bytes: chunk c holds
// values [4c, 4c + 4) of the block for rows 0..15 of the group, stored as q + 128 (unsigned). One
// vpdpbusd then multiplies a chunk by 4 input values broadcast to all lanes: lane i accumulates
// output row i, so a block costs 8 instructions for 16 output rows and no horizontal sum (the q8
// kernel needs about 8 per row: its int8 x int8 product goes through sign tricks and two
// multiply-adds). Scales: (rows / 16, blocks, 16), the group's scales of a block side by side.
// A short last block (cols not a multiple of 32) is padded with zero weights (stored 128), so the
// kernel multiplies whole blocks only: its products with the padding add nothing, and its scale is
// the short block's own. The data takes q8_grouped_bytes(rows, cols).
//   data[((g * blocks + b) * 8 + c) * 64 + 4 * i + j] = q[(16g + i) * cols + 32b + 4c + j] + 128
//                                                      (128 where 32b + 4c + j >= cols)
//   scales[(g * blocks + b) * 16 + i] = q8 scale of row 16g + i, block b
constexpr int64_t kQ8GroupRows = 16;
constexpr bool q8_grouped_fits(int64_t rows, int64_t /*cols*/) { return rows % kQ8GroupRows == 0; }
constexpr int64_t q8_grouped_bytes(int64_t rows, int64_t cols) { return rows * q8_blocks(cols) * kQ8Block; }
void interleave_q8(const int8_t* q, const float* scales, int64_t rows, int64_t cols, uint8_t* data, float* group_scales);
// Whether int8 matrices that fit are worth rearranging in this process: the CPU has AVX-512 VNNI and
// CE_KERNELS names no lower build. (Where it has not, q8_grouped still computes, on plain loops.)
bool q8_grouped_pays();

// Threads each call may use (>= 1); set from the node's or tool's thread setting.
void set_threads(int threads);
int threads();

// A member's count of the tickets it has handed out in the current phase (see for_each_ticket),
// on a cache line of its own: the owner takes from it without contention as long as nobody steals.
struct alignas(64) TicketCounter {
  std::atomic<int64_t> taken{0};
};

// One member of a running team: its place, the team's barrier, and the team's work tickets.
struct Member {
  Share share;
  TicketCounter* counters = nullptr;  // the team's, one a member; back to 0 at every sync

  // Returns once every member has called it as often (no-op for a team of one). Members must
  // call it equally often; the body of a team must not throw.
  void sync() const;

  // Runs body(ticket) for tickets [0, total) of a phase (the work between two syncs), each ticket
  // once on whichever member gets to it: a member takes its own share first (a static split, as
  // OpenMP's), then whatever the others have not started yet. Without the second part a member the
  // OS (or the hypervisor) preempts holds up the whole team at the next barrier for the rest of
  // its share; with it, the team loses at most the ticket in hand. Measured on 2 vCPUs shared with
  // a cloud node's network and actor threads and the load generator, a 32-session step of the
  // 179 M shape took 1.34x its time alone with the static split, 1.09x with tickets.
  // Every member must call it with the same `total`, at most once a phase.
  template <class Body>
  void for_each_ticket(int64_t total, Body&& body) const {
    if (share.count <= 1) {
      for (int64_t t = 0; t < total; ++t) body(t);
      return;
    }
    for (int k = 0; k < share.count; ++k) {
      const int owner = (share.index + k) % share.count;
      const int64_t begin = total * owner / share.count, size = total * (owner + 1) / share.count - begin;
      auto& taken = counters[owner].taken;
      if (k > 0 && taken.load(std::memory_order_relaxed) >= size) continue;  // a look before a write to its line
      for (int64_t i; (i = taken.fetch_add(1, std::memory_order_relaxed)) < size;) body(begin + i);
    }
  }
};

// A product of a phase: y (n, w.rows) = x (n, w.cols) · wᵀ, or y += that when `accumulate`.
struct Product {
  const float* x;
  int64_t n;
  const Matrix* w;
  float* y;
  bool accumulate = false;
};
// The products of one phase on every member (call it on each, with the same products): output rows
// in chunks of kQ8GroupRows multiples, as tickets (Member::for_each_ticket).
void linear(const Member& m, std::initializer_list<Product> products);
// gate (n, gate_w.rows) = silu(x · gate_wᵀ + gate_bias) * (x · up_wᵀ + up_bias), `up` (n, up_w.rows)
// its scratch, biases optional: the SwiGLU of a feed-forward block as one phase, chunk by chunk
// (a chunk's SiLU·up right after its rows, while they are in cache).
void swiglu(const Member& m, const float* x, int64_t n, const Matrix& gate_w, const Matrix& up_w, float* gate,
            float* up, const float* gate_bias = nullptr, const float* up_bias = nullptr);

// One sequence's attention in a phase of several (the cloud's sessions in one step), as attention().
struct Attention {
  const float* q;
  int64_t n, start;
  const float* keys;
  const float* values;
  float* out;
};
// The phase's attentions on every member: (query, head) pairs in chunks, as tickets.
void attention(const Member& m, int64_t heads, int64_t kv_heads, int64_t head_dim, const Attention* jobs,
               size_t count);

// The team a parallel section may use: threads() while no other section worth a team runs in
// this process (on a team or alone), else 1. Sections side by side (a node's edge and cloud
// computing at once) already fill the cores; a team beside them would wait at its barriers for
// a member the OS has preempted: measured with edge and cloud in one node on 2 cores, eight
// collaborative completions at once ran at ~1,700 tokens/s that way, ~2,700 each on its thread.
//
// run(body) calls body(member) on every member, the caller as member 0, the others on the
// process's one set of worker threads (started on first use), and returns when all are done.
// One set for the whole process, whichever thread runs a section: OpenMP (libgomp) keeps a worker
// pool per thread that ever ran a parallel region, and once its pools hold more threads than there
// are cores its workers stop spinning between regions and sleep, so that a node whose edge and
// cloud actors (or loader) each ran one paid a wake-up at every barrier: one standalone HTTP
// completion on the shipped model ran at ~1,100 tokens/s on 2 cores against ~3,200 on one thread.
class TeamClaim {
 public:
  explicit TeamClaim(bool worth_threads);  // false: the work is too small for more than one thread
  ~TeamClaim();
  TeamClaim(const TeamClaim&) = delete;
  TeamClaim& operator=(const TeamClaim&) = delete;
  int size() const { return size_; }

  template <class Body>
  void run(Body&& body) const {
    if (size_ <= 1) return body(Member{Share{}});
    run_team(size_, &body, [](void* b, const Member& m) { (*static_cast<std::remove_reference_t<Body>*>(b))(m); });
  }

 private:
  static void run_team(int size, void* body, void (*call)(void*, const Member&));
  int size_ = 1;
  bool holds_ = false;
};

// The vector code in use: "avx512", "avx2" or "portable".
std::string isa();

// How fp32, fp16 and bf16 products of many input rows are blocked (kernels_simd.inc's linear_range),
// chosen once per process by row_blocks(): `broadcast` takes the broadcast blocks (input rows
// transposed, each weight broadcast to all lanes) from the build's V::kNarrowBroadcastMinRows /
// kBroadcastMinRows rows on, `dot` the dot-product blocks at every row count. Which is faster
// depends on the core, not on the instruction set: measured on Intel Ice Lake the broadcast blocks
// won (fp32, 15 rows, weights from memory: 32-35 -> 67-74 GFLOP/s; the shipped model's fp16
// catch-up at gap 64 0.069 -> 0.061 ms a position), on AMD Zen 5 (AVX-512 on full-width units,
// cheap widening of halves) the dot-product blocks did at nearly every shape and row count (one
// core, median GMAC/s broadcast -> dot: fp32 16 rows 50-55 -> 65-84; fp16 64 rows of 1024 x 1024 /
// 1024 x 2816 65 / 46 -> 95 / 84; the 246 M shape's cloud catch-up at gap 64, fp16 1.47 -> 1.01 ms
// a position, fp32 1.35 -> 1.21).
enum class RowBlocks : uint8_t { broadcast, dot };
const char* to_string(RowBlocks blocks);
// This process's: dot on AMD CPUs, broadcast on the others; CE_ROW_BLOCKS=broadcast|dot forces one.
RowBlocks row_blocks();

}  // namespace ce::kernels
