#include "model/kernels.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "model/kernels_isa.hpp"

namespace ce::kernels {
namespace {

enum class Isa { portable, avx2, avx512 };

Isa supported_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::portable;
}

// The CPU's best, or a lower one that CE_KERNELS names (never a higher one: that would crash).
Isa chosen_isa() {
  const Isa best = supported_isa();
  const char* forced = std::getenv("CE_KERNELS");
  if (!forced) return best;
  const std::string name = forced;
  Isa wanted = best;
  if (name == "portable") wanted = Isa::portable;
  else if (name == "avx2") wanted = Isa::avx2;
  else if (name == "avx512") wanted = Isa::avx512;
  return std::min(wanted, best);
}

const Isa kIsa = chosen_isa();
// The VNNI kernel of q8_grouped weights runs where the CPU has it, unless CE_KERNELS names a lower build.
const bool kVnni = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return kIsa == Isa::avx512 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}();
// The core's vendor decides (kernels.hpp's RowBlocks): a cpuid reading, not a timing, so that a
// machine computes the same bits in every run.
RowBlocks chosen_row_blocks() {
  if (const char* forced = std::getenv("CE_ROW_BLOCKS")) {
    const std::string name = forced;
    if (name == "dot") return RowBlocks::dot;
    if (name == "broadcast") return RowBlocks::broadcast;
  }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_is("amd")) return RowBlocks::dot;
#endif
  return RowBlocks::broadcast;
}
const RowBlocks kRowBlocks = chosen_row_blocks();
std::atomic<int> g_threads{1};
std::atomic<int> g_sections{0};  // sections worth a team running now, on a team or alone

}  // namespace

const char* to_string(WeightType type) {
  switch (type) {
    case WeightType::f32: return "fp32";
    case WeightType::f16: return "fp16";
    case WeightType::bf16: return "bf16";
    case WeightType::q8:
    case WeightType::q8_grouped: return "int8";
  }
  return "?";
}

#define CE_KERNELS_DISPATCH(call)              \
  switch (kIsa) {                              \
    case Isa::avx512: return avx512::call;     \
    case Isa::avx2: return avx2::call;         \
    case Isa::portable: return portable::call; \
  }

void linear_rows(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end) {
  if (n <= 0 || begin >= end) return;
  if (w.type == WeightType::q8_grouped && kVnni) return avx512_vnni::linear_q8_grouped(x, n, w, y, accumulate, begin, end);
  CE_KERNELS_DISPATCH(linear(x, n, w, y, accumulate, begin, end, kRowBlocks));
}

namespace {

// How work is cut into tickets: a member's own share in kChunksPerMember chunks or more, so that a
// stolen or preempted chunk is a small part of it; but no chunk under kMinChunkWork multiply-adds
// (a ticket and a kernel call cost ~50 ns; int8 products quantize their input rows once a call),
// so that the shipped model's small products keep about the static split.
constexpr int64_t kChunksPerMember = 8;
constexpr int64_t kMinChunkWork = int64_t{1} << 15;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Units of work (a product's kQ8GroupRows-row groups, attention's (query, head) pairs) in one
// ticket, each unit `unit_work` multiply-adds: all of them for a thread alone.
int64_t units_a_ticket(int64_t units, int64_t unit_work, int members) {
  units = std::max<int64_t>(units, 1);
  if (members <= 1) return units;
  const int64_t by_count = ceil_div(units, members * kChunksPerMember);
  const int64_t by_work = ceil_div(kMinChunkWork, std::max<int64_t>(unit_work, 1));
  return std::min(units, std::max(by_count, by_work));
}

// Output rows of each chunk of a (rows, cols) product of n input rows: whole kQ8GroupRows groups,
// whole pairs of them where the VNNI kernel takes pairs (the other kernels do not mind either).
int64_t chunk_rows(int64_t n, int64_t rows, int64_t cols, int members) {
  const int64_t unit = n >= avx512_vnni::kPairMinRows ? 2 * kQ8GroupRows : kQ8GroupRows;
  return units_a_ticket(ceil_div(rows, unit), n * cols * unit, members) * unit;
}

thread_local uint64_t t_input_epoch = 0, t_last_epoch = 0;

}  // namespace

uint64_t& input_epoch() { return t_input_epoch; }
InputEpoch::InputEpoch() { t_input_epoch = ++t_last_epoch; }

void linear(const Member& m, std::initializer_list<Product> products) {
  constexpr size_t kMax = 8;
  if (products.size() > kMax) throw std::invalid_argument("kernels::linear: more than 8 products in one phase");
  std::array<int64_t, kMax> chunk{}, first{};  // each product's chunk rows, and its first ticket
  int64_t total = 0;
  size_t i = 0;
  for (const auto& p : products) {
    chunk[i] = chunk_rows(p.n, p.w->rows, p.w->cols, m.share.count);
    first[i] = total;
    total += p.n > 0 ? ceil_div(p.w->rows, chunk[i]) : 0;
    ++i;
  }
  const InputEpoch epoch;  // the products' inputs stay as they are until the phase ends
  m.for_each_ticket(total, [&](int64_t ticket) {
    size_t j = products.size() - 1;
    while (first[j] > ticket) --j;
    const auto& p = products.begin()[j];
    const int64_t begin = (ticket - first[j]) * chunk[j];
    linear_rows(p.x, p.n, *p.w, p.y, p.accumulate, begin, std::min(p.w->rows, begin + chunk[j]));
  });
}

void linear(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate) {
  // Work below ~64 K multiply-adds is not worth waking a second thread for.
  const TeamClaim claim(n * w.rows * w.cols >= (int64_t{1} << 16) && w.rows >= 16);
  claim.run([&](const Member& m) { linear(m, {{x, n, &w, y, accumulate}}); });
}

void swiglu(const Member& m, const float* x, int64_t n, const Matrix& gate_w, const Matrix& up_w, float* gate,
            float* up, const float* gate_bias, const float* up_bias) {
  const int64_t ffn = gate_w.rows;
  const int64_t chunk = chunk_rows(n, ffn, 2 * gate_w.cols, m.share.count);  // a row: two products' work
  const InputEpoch epoch;
  m.for_each_ticket(n > 0 ? ceil_div(ffn, chunk) : 0, [&](int64_t ticket) {
    const int64_t begin = ticket * chunk, end = std::min(ffn, begin + chunk);
    linear_rows(x, n, gate_w, gate, false, begin, end);
    linear_rows(x, n, up_w, up, false, begin, end);
    for (int64_t r = 0; r < n; ++r) {  // these columns of every row are complete: SiLU·up at once
      if (gate_bias) add_bias(gate + r * ffn + begin, 1, end - begin, gate_bias + begin);
      if (up_bias) add_bias(up + r * ffn + begin, 1, end - begin, up_bias + begin);
      silu_mul(gate + r * ffn + begin, up + r * ffn + begin, end - begin);
    }
  });
}

void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  CE_KERNELS_DISPATCH(rms_norm(x, weight, n, dim, eps, out));
}

void rope(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t start, const float* cos, const float* sin) {
  CE_KERNELS_DISPATCH(rope(x, n, heads, head_dim, start, cos, sin));
}

void attention(const float* q, int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t start,
               const float* keys, const float* values, float* out) {
  CE_KERNELS_DISPATCH(attention(q, n, heads, kv_heads, head_dim, start, keys, values, out, 0, n * heads));
}

void attention(const Member& m, int64_t heads, int64_t kv_heads, int64_t head_dim, const Attention* jobs,
               size_t count) {
  int64_t pairs = 0, span = 1;
  for (size_t i = 0; i < count; ++i) {
    pairs += jobs[i].n * heads;
    span = std::max(span, jobs[i].start + jobs[i].n);
  }
  // Pairs a ticket; a pair costs 2 x span x head_dim multiply-adds (scores, then values), at most.
  const int64_t chunk = units_a_ticket(pairs, 2 * span * head_dim, m.share.count);
  int64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += ceil_div(jobs[i].n * heads, chunk);
  m.for_each_ticket(total, [&](int64_t ticket) {
    size_t i = 0;
    for (int64_t tickets; ticket >= (tickets = ceil_div(jobs[i].n * heads, chunk)); ++i) ticket -= tickets;
    const auto& a = jobs[i];
    const int64_t begin = ticket * chunk, end = std::min(a.n * heads, begin + chunk);
    CE_KERNELS_DISPATCH(attention(a.q, a.n, heads, kv_heads, head_dim, a.start, a.keys, a.values, a.out, begin, end));
  });
}

void silu_mul(float* gate, const float* up, int64_t n) { CE_KERNELS_DISPATCH(silu_mul(gate, up, n)); }

float sum_exp(const float* x, int64_t n, float shift) {
  CE_KERNELS_DISPATCH(sum_exp(x, n, shift));
  __builtin_unreachable();  // the switch returns for every Isa
}

#undef CE_KERNELS_DISPATCH

void add_bias(float* x, int64_t rows, int64_t cols, const float* bias) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) x[r * cols + i] += bias[i];
}

void quantize_q8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scales) {
  // Also the input rows of every int8 product, so written for the vectorizer: round to nearest
  // (ties to even) by adding and subtracting 1.5 * 2^23, exact for |v| <= 127, no libm call.
  constexpr float kRound = 12582912.0f;
  const int64_t blocks = q8_blocks(cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kQ8Block, len = std::min(cols, begin + kQ8Block) - begin;
      const float* v = w + r * cols + begin;
      float top = 0;
#pragma omp simd reduction(max : top)
      for (int64_t k = 0; k < len; ++k) top = std::max(top, std::fabs(v[k]));
      const float scale = top / 127.0f;
      scales[r * blocks + b] = scale;
      const float inv = scale > 0 ? 1.0f / scale : 0.0f;
      int8_t* out = q + r * cols + begin;
#pragma omp simd
      for (int64_t k = 0; k < len; ++k) {
        const float scaled = std::clamp(v[k] * inv, -127.0f, 127.0f);
        out[k] = static_cast<int8_t>(static_cast<int32_t>((scaled + kRound) - kRound));
      }
    }
}

void interleave_q8(const int8_t* q, const float* scales, int64_t rows, int64_t cols, uint8_t* data,
                   float* group_scales) {
  const int64_t blocks = q8_blocks(cols);
  for (int64_t g = 0; g < rows / kQ8GroupRows; ++g)
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* out = data + (g * blocks + b) * kQ8GroupRows * kQ8Block;
      for (int64_t c = 0; c < kQ8Block / 4; ++c)
        for (int64_t i = 0; i < kQ8GroupRows; ++i)
          for (int64_t j = 0, col = b * kQ8Block + 4 * c; j < 4; ++j, ++col)
            *out++ = col < cols ? static_cast<uint8_t>(q[(g * kQ8GroupRows + i) * cols + col] + 128) : uint8_t{128};
      for (int64_t i = 0; i < kQ8GroupRows; ++i)
        group_scales[(g * blocks + b) * kQ8GroupRows + i] = scales[(g * kQ8GroupRows + i) * blocks + b];
    }
}

bool q8_grouped_pays() { return kVnni; }

// The VNNI kernel's arithmetic in plain loops, to the bit: per output row, the blocks in order, each
// block's exact integer dot product times (weight scale * input scale) added with one fused
// multiply-add.
void linear_q8_grouped_loops(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin,
                             int64_t end) {
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xs;
  const int64_t cols = w.cols, blocks = q8_blocks(cols);
  grow(xq, n * cols);
  grow(xs, n * blocks);
  quantize_q8(x, n, cols, xq.data(), xs.data());
  const auto* data = static_cast<const uint8_t*>(w.data);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t row = begin; row < end; ++row) {
      const int64_t g = row / kQ8GroupRows, i = row % kQ8GroupRows;
      float acc = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* block = data + (g * blocks + b) * kQ8GroupRows * kQ8Block;
        int32_t dot = 0;
        for (int64_t k = 0; k < std::min(kQ8Block, cols - b * kQ8Block); ++k)  // the padding is zeros
          dot += (int32_t{block[(k / 4) * 4 * kQ8GroupRows + 4 * i + k % 4]} - 128) *
                 xq[static_cast<size_t>(r * cols + b * kQ8Block + k)];
        const float scale = w.scales[(g * blocks + b) * kQ8GroupRows + i] * xs[static_cast<size_t>(r * blocks + b)];
        acc = std::fma(static_cast<float>(dot), scale, acc);
      }
      float& out = y[r * w.rows + row];
      out = accumulate ? out + acc : acc;
    }
}

void set_threads(int threads) { g_threads = std::max(1, threads); }
int threads() { return g_threads; }

namespace {

// The process's worker threads, members 1..size-1 of whichever team runs (one at a time: the
// TeamClaim serialises them). Everything that waits (a worker for the next section, a member at a
// barrier, the caller for the workers to finish) spins for a while and then sleeps: spinning is
// what makes a barrier cost ~a microsecond on cores of its own (a decode step of the shipped model
// has ~30), sleeping what keeps a team from burning a core when the OS has preempted a teammate
// (a node whose edge and cloud compute at once on two cores).
class Workers {
 public:
  static Workers& get() {
    static Workers workers;
    return workers;
  }
  ~Workers() { resize(0); }

  void run(int size, void* body, void (*call)(void*, const Member&)) {
    resize(size - 1);
    if (counters_.size() < static_cast<size_t>(size)) counters_ = std::vector<TicketCounter>(static_cast<size_t>(size));
    for (int i = 0; i < size; ++i) counters_[static_cast<size_t>(i)].taken.store(0);
    body_ = body;
    call_ = call;
    size_ = size;
    finished_.store(0);
    generation_.fetch_add(1);
    wake(job_);
    call(body, Member{Share{0, size}, counters_.data()});
    wait_for(done_, kSpins, [&] { return finished_.load() == size - 1; });
  }

  void sync(int size) {
    const uint32_t phase = phase_.load();
    if (arrived_.fetch_add(1) + 1 == size) {
      // Everyone has left the phase's ticket loop: the next phase's tickets start from 0.
      for (int i = 0; i < size; ++i) counters_[static_cast<size_t>(i)].taken.store(0, std::memory_order_relaxed);
      arrived_.store(0);
      phase_.store(phase + 1);
      wake(done_);
    } else {
      wait_for(done_, kSpins, [&] { return phase_.load() != phase; });
    }
  }

 private:
  static constexpr int kSpins = 2000;      // pause instructions (~50 us on Zen 4) before sleeping
  static constexpr int kIdleSpins = 8000;  // between sections: ~0.2 ms

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  // Returns once done() holds. The atomics are sequentially consistent, so that a waiter that
  // counts itself a sleeper and then finds done() false is always seen by the waker (which makes
  // done() true and then reads the sleepers).
  template <class Done>
  void wait_for(std::condition_variable& cv, int spins, Done done) {
    for (int i = 0; i < spins; ++i) {
      if (done()) return;
      cpu_relax();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1);
    cv.wait(lock, done);
    sleepers_.fetch_sub(1);
  }

  void wake(std::condition_variable& cv) {
    if (sleepers_.load() == 0) return;
    { std::lock_guard<std::mutex> lock(mutex_); }  // a sleeper is either waiting or will see done()
    cv.notify_all();
  }

  void resize(size_t count) {
    if (threads_.size() == count) return;
    stop_.store(true);
    wake(job_);
    for (auto& t : threads_) t.join();
    threads_.clear();
    stop_.store(false);
    const uint64_t now = generation_.load();
    for (size_t i = 0; i < count; ++i) threads_.emplace_back([this, i, now] { work(static_cast<int>(i) + 1, now); });
  }

  void work(int index, uint64_t seen) {
    for (;;) {
      wait_for(job_, kIdleSpins, [&] { return stop_.load() || generation_.load() != seen; });
      if (stop_.load()) return;
      seen = generation_.load();
      try {
        call_(body_, Member{Share{index, size_}, counters_.data()});
      } catch (...) {
        std::terminate();  // as an exception escaping an OpenMP region: the team cannot finish
      }
      if (finished_.fetch_add(1) + 1 == size_ - 1) wake(done_);
    }
  }

  std::vector<std::thread> threads_;
  std::vector<TicketCounter> counters_;  // the running team's, one a member
  std::mutex mutex_;
  std::condition_variable job_, done_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> generation_{0};
  void* body_ = nullptr;
  void (*call_)(void*, const Member&) = nullptr;
  int size_ = 1;
  std::atomic<int> finished_{0};
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> phase_{0};
};

}  // namespace

void Member::sync() const {
  if (share.count > 1) Workers::get().sync(share.count);
}

void TeamClaim::run_team(int size, void* body, void (*call)(void*, const Member&)) {
  Workers::get().run(size, body, call);
}

TeamClaim::TeamClaim(bool worth_threads) {
  if (!worth_threads || g_threads.load() <= 1) return;
  holds_ = true;
  if (g_sections.fetch_add(1) == 0) size_ = g_threads.load();
}

TeamClaim::~TeamClaim() {
  if (holds_) g_sections.fetch_sub(1);
}

std::string isa() {
  switch (kIsa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::portable: return "portable";
  }
  return "portable";
}

const char* to_string(RowBlocks blocks) { return blocks == RowBlocks::dot ? "dot" : "broadcast"; }
RowBlocks row_blocks() { return kRowBlocks; }

}  // namespace ce::kernels
