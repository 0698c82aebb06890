// KvCache with the Decoder: incremental decoding, batched prefill and lazy catch-up give the
// states of a full recomputation; misuse is refused.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include "model/decoder.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

struct Fixture {
  ModelConfig c = tiny_config(2);
  // Matrices of std 0.1 keep the hidden states O(1), so an absolute tolerance means something.
  std::shared_ptr<Weights> w = scaled_weights(c, 21, 0.1, true);
  Decoder d{w};
  std::vector<int64_t> tokens = some_tokens(16, c.vocab_size, 4);
  at::Tensor x = d.embed(token_tensor(tokens));  // (16, dim)

  // States after [0, L) of positions [0, n), recomputed from scratch.
  at::Tensor full(int64_t n) const {
    KvCache kv(c, 0, c.n_layers);
    return d.forward(x.narrow(0, 0, n), 0, 0, c.n_layers, kv);
  }
};

// fp32 with different batch shapes: states agree to ~1e-6; tolerance 1e-5 absolute.
constexpr double tol = 1e-5;

}  // namespace

BOOST_AUTO_TEST_SUITE(kv_cache)

BOOST_FIXTURE_TEST_CASE(incremental_decode_equals_full_recomputation, Fixture) {
  KvCache kv(c, 0, c.n_layers);
  BOOST_TEST_MESSAGE("max |state| " << full(16).abs().max().item<double>());
  for (int64_t p = 0; p < x.size(0); ++p) {
    auto row = d.forward(x.narrow(0, p, 1), p, 0, c.n_layers, kv);
    BOOST_TEST(max_abs_diff(row, full(p + 1).narrow(0, p, 1)) < tol, "position " << p);
    for (int64_t l = 0; l < c.n_layers; ++l) BOOST_TEST(kv.length(l) == p + 1);
  }
}

BOOST_FIXTURE_TEST_CASE(batched_prefill_equals_one_by_one, Fixture) {
  KvCache batched(c, 0, c.n_layers), single(c, 0, c.n_layers);
  auto hb = d.forward(x.narrow(0, 0, 10), 0, 0, c.n_layers, batched);
  std::vector<at::Tensor> rows;
  for (int64_t p = 0; p < 10; ++p) rows.push_back(d.forward(x.narrow(0, p, 1), p, 0, c.n_layers, single));
  BOOST_TEST(max_abs_diff(hb, at::cat(rows, 0)) < tol);
  // The caches hold the same keys and values: the next positions decode alike from either.
  for (int64_t p = 10; p < 16; ++p) {
    auto a = d.forward(x.narrow(0, p, 1), p, 0, c.n_layers, batched);
    auto b = d.forward(x.narrow(0, p, 1), p, 0, c.n_layers, single);
    BOOST_TEST(max_abs_diff(a, b) < tol, "position " << p);
  }
}

// The deeper half catches up lazily (3 positions, then 5 at once, then 1) while the shallow half
// runs one position at a time; the result equals running every layer for every position eagerly.
BOOST_FIXTURE_TEST_CASE(lazy_gap_fill_equals_eager, Fixture) {
  const int64_t k = 2;
  KvCache edge(c, 0, k), cloud(c, k, c.n_layers), eager(c, 0, c.n_layers);
  std::vector<at::Tensor> eager_rows, edge_rows;
  for (int64_t p = 0; p < 9; ++p) {
    eager_rows.push_back(d.forward(x.narrow(0, p, 1), p, 0, c.n_layers, eager));
    edge_rows.push_back(d.forward(x.narrow(0, p, 1), p, 0, k, edge));
  }
  auto edge_states = at::cat(edge_rows, 0);
  auto eager_states = at::cat(eager_rows, 0);
  auto a = d.forward(edge_states.narrow(0, 0, 3), 0, k, c.n_layers, cloud);
  BOOST_TEST(cloud.length(k) == 3);
  auto b = d.forward(edge_states.narrow(0, 3, 5), 3, k, c.n_layers, cloud);
  BOOST_TEST(cloud.length(c.n_layers - 1) == 8);
  auto e = d.forward(edge_states.narrow(0, 8, 1), 8, k, c.n_layers, cloud);
  BOOST_TEST(max_abs_diff(at::cat({a, b, e}, 0), eager_states) < tol);
}

// Each layer keeps its own length: after [0,1) has run ahead, layer 1 can still catch up.
BOOST_FIXTURE_TEST_CASE(layers_keep_their_own_length, Fixture) {
  KvCache kv(c, 0, c.n_layers);
  auto h1 = d.forward(x.narrow(0, 0, 4), 0, 0, 1, kv);  // layer 0 holds 4 positions
  BOOST_TEST(kv.length(0) == 4);
  BOOST_TEST(kv.length(1) == 0);
  // [0, L) at start 4 is refused: layer 1 has 0 cached positions, not 4.
  BOOST_CHECK_THROW(d.forward(x.narrow(0, 4, 1), 4, 0, c.n_layers, kv), ModelError);
  auto h = d.forward(h1, 0, 1, c.n_layers, kv);  // catch up the deeper layers
  BOOST_TEST(max_abs_diff(h, full(4)) < tol);
  auto next = d.forward(x.narrow(0, 4, 1), 4, 0, c.n_layers, kv);
  BOOST_TEST(max_abs_diff(next, full(5).narrow(0, 4, 1)) < tol);
}

BOOST_FIXTURE_TEST_CASE(wrong_start_position_throws, Fixture) {
  KvCache kv(c, 0, c.n_layers);
  d.forward(x.narrow(0, 0, 3), 0, 0, c.n_layers, kv);
  BOOST_CHECK_THROW(d.forward(x.narrow(0, 3, 1), 2, 0, c.n_layers, kv), ModelError);  // overlap
  BOOST_CHECK_THROW(d.forward(x.narrow(0, 3, 1), 4, 0, c.n_layers, kv), ModelError);  // gap
  BOOST_CHECK_THROW(d.forward(x.narrow(0, 3, 1), 0, 0, c.n_layers, kv), ModelError);
  BOOST_CHECK_THROW(d.forward(x.narrow(0, 3, 1), -1, 0, c.n_layers, kv), ModelError);
  for (int64_t l = 0; l < c.n_layers; ++l) BOOST_TEST(kv.length(l) == 3);  // refused calls cache nothing
  // The right position still works afterwards.
  BOOST_TEST(max_abs_diff(d.forward(x.narrow(0, 3, 1), 3, 0, c.n_layers, kv), full(4).narrow(0, 3, 1)) < tol);
}

BOOST_FIXTURE_TEST_CASE(exceeding_max_seq_throws, Fixture) {
  KvCache kv(c, 0, c.n_layers);
  auto many = d.embed(token_tensor(some_tokens(c.max_seq, c.vocab_size, 9)));
  BOOST_CHECK_THROW(d.forward(at::cat({many, many.narrow(0, 0, 1)}, 0), 0, 0, c.n_layers, kv), ModelError);
  d.forward(many.narrow(0, 0, c.max_seq - 1), 0, 0, c.n_layers, kv);
  d.forward(many.narrow(0, c.max_seq - 1, 1), c.max_seq - 1, 0, c.n_layers, kv);  // exactly max_seq: fine
  BOOST_TEST(kv.length(0) == c.max_seq);
  BOOST_CHECK_THROW(d.forward(many.narrow(0, 0, 1), c.max_seq, 0, c.n_layers, kv), ModelError);
  // The cache refuses on its own as well.
  KvCache direct(c, 0, 1);
  auto k = at::zeros({c.max_seq, c.n_kv_heads, c.head_dim()});
  direct.append(0, k.data_ptr<float>(), k.data_ptr<float>(), c.max_seq);
  BOOST_CHECK_THROW(direct.append(0, k.data_ptr<float>(), k.data_ptr<float>(), 1), ModelError);
  BOOST_TEST(direct.length(0) == c.max_seq);
}

BOOST_AUTO_TEST_CASE(append_keeps_all_cached_positions_and_grows) {
  auto c = tiny_config(2);
  c.max_seq = 256;  // room to grow past the first capacity (64)
  KvCache kv(c, 1, 3);
  BOOST_TEST(kv.layer_begin() == 1);
  BOOST_TEST(kv.layer_end() == 3);
  BOOST_TEST(kv.bytes() == 0);
  BOOST_CHECK_THROW(kv.length(0), ModelError);  // layer outside [1, 3)
  BOOST_CHECK_THROW(kv.length(3), ModelError);
  // Rows (n, kv_heads, head_dim), position-major as the decoder writes them.
  auto k1 = at::randn({5, c.n_kv_heads, c.head_dim()});
  auto v1 = at::randn({5, c.n_kv_heads, c.head_dim()});
  kv.append(1, k1.data_ptr<float>(), v1.data_ptr<float>(), 5);
  auto cached = [&](const float* p, int64_t n) {
    return at::from_blob(const_cast<float*>(p), {n, c.n_kv_heads, c.head_dim()}).clone();
  };
  BOOST_TEST(at::equal(cached(kv.keys(1), 5), k1));
  BOOST_TEST(at::equal(cached(kv.values(1), 5), v1));
  const auto bytes_small = kv.bytes();
  BOOST_TEST(bytes_small > 0);
  auto k2 = at::randn({100, c.n_kv_heads, c.head_dim()});
  kv.append(1, k2.data_ptr<float>(), k2.data_ptr<float>(), 100);  // grows past the initial capacity
  auto all = cached(kv.keys(1), 105);
  BOOST_TEST(at::equal(all.narrow(0, 0, 5), k1));  // earlier positions survive the growth
  BOOST_TEST(at::equal(all.narrow(0, 5, 100), k2));
  BOOST_TEST(at::equal(cached(kv.values(1), 5), v1));
  BOOST_TEST(kv.bytes() > bytes_small);
  BOOST_TEST(kv.length(1) == 105);
  BOOST_TEST(kv.length(2) == 0);
  BOOST_CHECK_THROW(kv.append(0, k1.data_ptr<float>(), v1.data_ptr<float>(), 5), ModelError);
  kv.clear();
  BOOST_TEST(kv.length(1) == 0);
  BOOST_TEST(kv.bytes() == 0);
  BOOST_CHECK_THROW(KvCache(c, 2, 1), ModelError);
  BOOST_CHECK_THROW(KvCache(c, 0, c.n_layers + 1), ModelError);
  BOOST_CHECK_THROW(KvCache(c, -1, 2), ModelError);
}

// A cache that goes away leaves its storage to the next cache that grows to the same size (so that
// a new session does not fault in fresh pages), which then holds its own values; what is kept
// stays within KvCache::kRecycledBytes.
BOOST_AUTO_TEST_CASE(storage_of_a_destroyed_cache_is_taken_by_the_next_within_a_bound) {
  auto c = tiny_config(2);
  c.max_seq = 256;
  const int64_t row = c.n_kv_heads * c.head_dim();
  auto k = at::randn({100, c.n_kv_heads, c.head_dim()});
  auto v = at::randn({100, c.n_kv_heads, c.head_dim()});
  std::vector<const float*> buffers;  // the first cache's, at its last capacity (128 positions)
  KvCache::release_recycled();        // what the tests before this one left
  BOOST_TEST(KvCache::recycled_bytes() == 0);
  const int64_t before = 0;
  {
    KvCache first(c, 0, 1);
    first.append(0, k.data_ptr<float>(), v.data_ptr<float>(), 100);  // 64 positions, then 128
    buffers = {first.keys(0), first.values(0)};
    BOOST_TEST(first.bytes() == 2 * 128 * row * 4);
  }
  const int64_t left = KvCache::recycled_bytes();
  BOOST_TEST(left >= before + 2 * 128 * row * 4);  // its last buffers, and its first ones if there was room
  KvCache next(c, 0, 1);
  auto k2 = at::randn({100, c.n_kv_heads, c.head_dim()});
  next.append(0, k2.data_ptr<float>(), v.data_ptr<float>(), 100);
  BOOST_TEST((next.keys(0) == buffers[0] || next.keys(0) == buffers[1]));
  BOOST_TEST((next.values(0) == buffers[0] || next.values(0) == buffers[1]));
  BOOST_TEST(KvCache::recycled_bytes() < left);
  auto cached = [&](const float* p) { return at::from_blob(const_cast<float*>(p), k2.sizes()).clone(); };
  BOOST_TEST(at::equal(cached(next.keys(0)), k2));
  BOOST_TEST(at::equal(cached(next.values(0)), v));
  // Caches holding more than the bound together, then all gone: at most the bound is kept.
  auto wide = tiny_config(2);
  wide.max_seq = 1 << 16;
  const int64_t wide_row = wide.n_kv_heads * wide.head_dim();
  const auto zeros = at::zeros({wide.max_seq, wide_row});
  const int64_t cache_bytes = 2 * wide.max_seq * wide_row * 4;
  {
    std::vector<KvCache> many;
    for (int64_t held = 0; held <= 2 * KvCache::kRecycledBytes; held += cache_bytes) {
      many.emplace_back(wide, 0, 1);
      many.back().append(0, zeros.data_ptr<float>(), zeros.data_ptr<float>(), wide.max_seq);
    }
  }
  BOOST_TEST(KvCache::recycled_bytes() <= KvCache::kRecycledBytes);
  BOOST_TEST(KvCache::recycled_bytes() >= KvCache::kRecycledBytes - cache_bytes);
}

BOOST_AUTO_TEST_SUITE_END()
