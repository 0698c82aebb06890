// Decoder against the independent loop reference (RoPE, GQA, layouts), split equivalence, exit
// heads and their confidence.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>

#include "model/decoder.hpp"
#include "model/sampler.hpp"
#include "tests/model/reference_llama.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

// dim 64, 4 heads of 16, 3 layers, exits after 1 and 2; rope_theta 500 (not the default, so a
// decoder that ignored the config's theta would be caught).
ModelConfig reference_config(int64_t n_kv_heads) {
  ModelConfig c;
  c.dim = 64;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = n_kv_heads;
  c.ffn_dim = 128;
  c.vocab_size = 96;
  c.max_seq = 64;
  c.rope_theta = 500.0;
  c.norm_eps = 1e-5;
  c.exit_layers = {1, 2};
  c.default_split = 2;
  return c;
}

double max_diff(const at::Tensor& t, const Rows& r) {
  BOOST_REQUIRE_EQUAL(t.size(0), static_cast<int64_t>(r.size()));
  auto a = t.to(at::kDouble).contiguous();
  double m = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    BOOST_REQUIRE_EQUAL(a.size(1), static_cast<int64_t>(r[i].size()));
    const double* p = a[static_cast<int64_t>(i)].data_ptr<double>();
    for (size_t j = 0; j < r[i].size(); ++j) m = std::max(m, std::abs(p[j] - r[i][j]));
  }
  return m;
}

Rows map_rows(const Rows& h, const std::function<Vec(const Vec&)>& f) {
  Rows out;
  for (auto& r : h) out.push_back(f(r));
  return out;
}

// Logits of the whole model at every position, and of each exit, decoder vs reference.
void check_against_reference(int64_t n_kv_heads) {
  const auto c = reference_config(n_kv_heads);
  auto w = scaled_weights(c, 11 + static_cast<uint64_t>(n_kv_heads), 0.15, /*random_norms=*/true);
  Decoder d(w);
  ReferenceLlama ref(*w);
  const auto tokens = some_tokens(24, c.vocab_size, 5, 0);

  KvCache kv(c, 0, c.n_layers);
  auto h = d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv);
  const Rows rh = ref.layers(ref.embed(tokens), 0, c.n_layers);
  const Rows rl = map_rows(rh, [&](const Vec& v) { return ref.final_logits(v); });
  auto logits = d.final_logits(h);
  // The logits have a spread of several units; fp32 against a double loop agrees to ~1e-5.
  const double diff = max_diff(logits, rl);
  BOOST_TEST_MESSAGE("n_kv_heads " << n_kv_heads << ": max |logit - reference| = " << diff);
  BOOST_TEST(diff < 1e-4);
  // The comparison is meaningful: logits differ between positions by far more than the tolerance.
  BOOST_TEST(max_diff(logits.narrow(0, 0, 1), {rl[5]}) > 0.1);

  for (auto e : c.exit_layers) {
    KvCache kv_e(c, 0, e);
    auto he = d.forward(d.embed(token_tensor(tokens)), 0, 0, e, kv_e);
    const Rows re = ref.layers(ref.embed(tokens), 0, e);
    BOOST_TEST(max_diff(he, re) < 1e-4);  // hidden states, same tolerance
    const Rows rel = map_rows(re, [&](const Vec& v) { return ref.exit_logits(e, v); });
    BOOST_TEST(max_diff(d.exit_logits(e, he), rel) < 1e-4);
  }

  // The training form (batched, no cache) gives the same states for each sequence of a batch.
  const auto other = some_tokens(24, c.vocab_size, 99, 0);
  auto batch = at::stack({d.embed(token_tensor(tokens)), d.embed(token_tensor(other))});  // (2, T, dim)
  auto hb = d.forward_no_cache(batch, 0, c.n_layers);
  BOOST_TEST(max_diff(hb[0], rh) < 1e-4);
  BOOST_TEST(max_diff(hb[1], ref.layers(ref.embed(other), 0, c.n_layers)) < 1e-4);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(decoder)

BOOST_AUTO_TEST_CASE(matches_reference_with_grouped_query_attention) { check_against_reference(2); }

BOOST_AUTO_TEST_CASE(matches_reference_with_full_attention) { check_against_reference(4); }

BOOST_AUTO_TEST_CASE(matches_reference_with_single_kv_head) { check_against_reference(1); }

// The reference's deliberately wrong variants are far from the decoder: the tolerance above
// would catch interleaved RoPE or a modulo head-to-KV mapping.
BOOST_AUTO_TEST_CASE(reference_comparison_detects_rope_and_gqa_mistakes) {
  const auto c = reference_config(2);
  auto w = scaled_weights(c, 13, 0.15, true);
  Decoder d(w);
  const auto tokens = some_tokens(24, c.vocab_size, 5, 0);
  KvCache kv(c, 0, c.n_layers);
  auto logits = d.final_logits(d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv));
  for (int variant = 0; variant < 2; ++variant) {
    RefVariant v;
    (variant == 0 ? v.interleaved_rope : v.gqa_modulo) = true;
    ReferenceLlama wrong(*w, v);
    const Rows rh = wrong.layers(wrong.embed(tokens), 0, c.n_layers);
    const Rows rl = map_rows(rh, [&](const Vec& x) { return wrong.final_logits(x); });
    BOOST_TEST(max_diff(logits, rl) > 1e-2, "variant " << variant << " not distinguished");
  }
}

// Layers [0, k) then [k, L) over two caches give the states and logits of [0, L) in one call.
BOOST_AUTO_TEST_CASE(split_ranges_equal_full_range) {
  const auto c = tiny_config(2);
  auto w = scaled_weights(c, 3, 0.1, true);  // std 0.1: O(1) states, so tol 1e-5 absolute is tight
  Decoder d(w);
  const auto tokens = some_tokens(20, c.vocab_size, 8);
  auto x = d.embed(token_tensor(tokens));
  KvCache full(c, 0, c.n_layers);
  auto h_full = d.forward(x, 0, 0, c.n_layers, full);
  for (int64_t k = 1; k < c.n_layers; ++k) {
    KvCache edge(c, 0, k), cloud(c, k, c.n_layers);
    auto h_edge = d.forward(x, 0, 0, k, edge);
    auto h_cloud = d.forward(h_edge, 0, k, c.n_layers, cloud);
    // Same operations on the same shapes: equal up to fp32 reassociation, tol 1e-5.
    BOOST_TEST(max_abs_diff(h_cloud, h_full) < 1e-5, "split " << k);
    BOOST_TEST(max_abs_diff(d.final_logits(h_cloud), d.final_logits(h_full)) < 1e-5, "split " << k);
    // And position by position after a shared prefix: prefill 12 on both halves, then 1 at a time.
    KvCache e2(c, 0, k), c2(c, k, c.n_layers);
    d.forward(d.forward(x.narrow(0, 0, 12), 0, 0, k, e2), 0, k, c.n_layers, c2);
    for (int64_t p = 12; p < 20; ++p) {
      auto row = d.forward(d.forward(x.narrow(0, p, 1), p, 0, k, e2), p, k, c.n_layers, c2);
      BOOST_TEST(max_abs_diff(row, h_full.narrow(0, p, 1)) < 1e-5, "split " << k << " position " << p);
    }
  }
}

// An exit head whose row for one token is aligned with the normed state makes that token
// dominate: confidence exp(a) / (exp(a) + V - 1) for logit margin a.
BOOST_AUTO_TEST_CASE(peaked_exit_head_gives_high_confidence) {
  const auto c = tiny_config(2);
  auto w = scaled_weights(c, 4, 0.3);
  Decoder d(w);
  const auto tokens = some_tokens(6, c.vocab_size, 2);
  KvCache kv(c, 0, 2);
  auto h = d.forward(d.embed(token_tensor(tokens)), 0, 0, 2, kv)[-1];  // state after layer 2
  // normed state as the exit sees it: x * rsqrt(mean(x^2) + eps) * norm_weight
  auto& exit = w->exits.at(2);
  auto normed = h * at::rsqrt(h.pow(2).mean() + c.norm_eps) * exit.norm;
  const int64_t token = 37;
  const double margin = 8.0;  // logit of `token`; every other logit 0
  exit.head.zero_();
  exit.head[token].copy_(normed * (margin / normed.pow(2).sum().item<double>()));
  auto logits = d.exit_logits(2, h);
  BOOST_TEST(std::abs(logits[token].item<double>() - margin) < 1e-4);
  auto choice = greedy_choice(logits);
  BOOST_TEST(choice.token == token);
  const double expected = std::exp(margin) / (std::exp(margin) + static_cast<double>(c.vocab_size - 1));
  BOOST_TEST(choice.confidence > 0.9);
  BOOST_TEST(std::abs(choice.confidence - expected) < 1e-4);  // fp32 softmax, tol 1e-4

  // The other exit is untouched by the construction.
  KvCache kv1(c, 0, 1);
  auto h1 = d.forward(d.embed(token_tensor(tokens)), 0, 0, 1, kv1)[-1];
  BOOST_TEST(greedy_choice(d.exit_logits(1, h1)).confidence < 0.9);
}

BOOST_AUTO_TEST_CASE(flat_exit_head_gives_uniform_confidence) {
  const auto c = tiny_config(2);
  auto w = scaled_weights(c, 4, 0.3);
  w->exits.at(1).head.zero_();
  Decoder d(w);
  KvCache kv(c, 0, 1);
  auto h = d.forward(d.embed(token_tensor({5, 6, 7})), 0, 0, 1, kv);
  auto choice = greedy_choice(d.exit_logits(1, h[-1]));
  BOOST_TEST(std::abs(choice.confidence - 1.0 / static_cast<double>(c.vocab_size)) < 1e-6);
  BOOST_TEST(choice.token >= 0);
  BOOST_TEST(choice.token < c.vocab_size);
}

BOOST_AUTO_TEST_CASE(greedy_choice_is_argmax_and_max_softmax) {
  auto logits = at::tensor(std::vector<float>{1.0f, 3.0f, 2.0f, -1.0f});
  auto choice = greedy_choice(logits);
  BOOST_TEST(choice.token == 1);
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(-1.0);
  BOOST_TEST(std::abs(choice.confidence - std::exp(3.0) / z) < 1e-6);
  // fp16 logits are accepted and give the same answer.
  BOOST_TEST(greedy_choice(logits.to(at::kHalf)).token == 1);
  // Ties go to the lowest id, as torch's argmax; two equal maxima share the probability.
  const auto tie = greedy_choice(at::tensor(std::vector<float>{0.5f, 2.0f, 2.0f}));
  BOOST_TEST(tie.token == 1);
  BOOST_TEST(std::abs(tie.confidence - std::exp(2.0) / (std::exp(0.5) + 2 * std::exp(2.0))) < 1e-6);
}

// Tied exit heads use lm_head with the exit's own norm.
BOOST_AUTO_TEST_CASE(tied_exit_heads_read_lm_head_with_their_own_norm) {
  auto c = tiny_config(2);
  c.tie_exit_heads = true;
  auto w = scaled_weights(c, 5, 0.3, true);
  BOOST_TEST(w->exits.at(1).head.is_same(w->lm_head));
  Decoder d(w);
  ReferenceLlama ref(*w);
  const auto tokens = some_tokens(10, c.vocab_size, 3);
  KvCache kv(c, 0, 1);
  auto h = d.forward(d.embed(token_tensor(tokens)), 0, 0, 1, kv);
  const Rows rh = ref.layers(ref.embed(tokens), 0, 1);
  BOOST_TEST(max_diff(d.exit_logits(1, h), map_rows(rh, [&](const Vec& v) { return ref.exit_logits(1, v); })) < 1e-4);
  // Not the final norm: with random norms the two differ.
  BOOST_TEST(max_abs_diff(d.exit_logits(1, h), d.final_logits(h)) > 1e-2);
}

// A batched step over several sessions' caches, ragged (1 to 5 rows each, different depths of
// context), sessions joining and leaving between steps: every session's rows equal the loop
// reference over its whole sequence, at every precision within its own arithmetic (fp32 checked
// against the reference; fp16 / int8 against the same decoder run one session at a time).
BOOST_AUTO_TEST_CASE(batched_steps_equal_each_session_alone_with_ragged_lengths) {
  const auto c = reference_config(2);
  auto w = scaled_weights(c, 41, 0.15, /*random_norms=*/true);
  ReferenceLlama ref(*w);
  for (auto precision : {WeightPrecision::fp32, WeightPrecision::fp16, WeightPrecision::int8}) {
    Decoder d(w, precision);
    constexpr int kSessions = 8;
    std::vector<std::vector<int64_t>> tokens;
    for (int i = 0; i < kSessions; ++i) tokens.push_back(some_tokens(30, c.vocab_size, 100 + static_cast<uint64_t>(i), 0));
    std::vector<std::unique_ptr<KvCache>> batched, alone;
    for (int i = 0; i < kSessions; ++i) {
      batched.push_back(std::make_unique<KvCache>(c, 0, c.n_layers));
      alone.push_back(std::make_unique<KvCache>(c, 0, c.n_layers));
    }
    std::vector<int64_t> done(kSessions, 0);
    std::vector<float> scratch;
    // Rounds of (who takes part, how many rows each): joining (3, 5, 7 start late), leaving (0, 1
    // sit out later rounds), one row and several, B from 1 to 8.
    const std::vector<std::vector<std::pair<int, int64_t>>> rounds = {
        {{0, 3}},
        {{0, 1}, {1, 4}, {2, 2}},
        {{1, 1}, {2, 5}, {3, 1}, {4, 2}},
        {{0, 2}, {1, 1}, {2, 1}, {3, 3}, {4, 1}, {5, 4}, {6, 1}, {7, 2}},
        {{2, 1}, {3, 1}, {5, 1}, {6, 3}, {7, 1}}};
    for (const auto& round : rounds) {
      std::vector<Decoder::DecodeStep> steps;
      for (auto [i, n] : round) {
        const std::vector<int64_t> part(tokens[i].begin() + done[i], tokens[i].begin() + done[i] + n);
        steps.push_back({d.embed(token_tensor(part)), done[i], batched[i].get()});
      }
      const auto out = d.forward(steps, 0, c.n_layers, scratch);
      BOOST_REQUIRE_EQUAL(out.size(), round.size());
      for (size_t j = 0; j < round.size(); ++j) {
        const auto [i, n] = round[j];
        BOOST_TEST_CONTEXT(to_string(precision) << ", session " << i << " rows " << done[i] << "+" << n) {
          const auto solo = d.forward(steps[j].hidden, done[i], 0, c.n_layers, *alone[i]);
          BOOST_TEST(max_abs_diff(out[j], solo) < 1e-4);
          if (precision == WeightPrecision::fp32) {
            const std::vector<int64_t> prefix(tokens[i].begin(), tokens[i].begin() + done[i] + n);
            const Rows whole = ref.layers(ref.embed(prefix), 0, c.n_layers);
            BOOST_TEST(max_diff(out[j], Rows(whole.end() - n, whole.end())) < 1e-4);
          }
        }
        done[i] += n;
      }
    }
    for (int i = 0; i < kSessions; ++i) BOOST_TEST(batched[i]->length(c.n_layers - 1) == done[i]);
  }
}

// A step that reads only the last rows of a range (the cloud answering for the last position of a
// catch-up) runs the range's last layer on those rows alone: the rows it returns, and the cache it
// leaves for the steps after, must be those of the whole computation. Ranges ending at the final
// layer and before it; a session asking for none of its rows, one, some and all, in one batch and
// alone.
BOOST_AUTO_TEST_CASE(steps_reading_only_their_last_rows_fill_the_cache_of_every_row) {
  const auto c = reference_config(2);
  auto w = scaled_weights(c, 43, 0.15, /*random_norms=*/true);
  ReferenceLlama ref(*w);
  for (auto precision : {WeightPrecision::fp32, WeightPrecision::fp16, WeightPrecision::int8})
    for (const int64_t layer_end : {c.n_layers, int64_t{2}}) {
      BOOST_TEST_CONTEXT(to_string(precision) << ", layers [0, " << layer_end << ")") {
        Decoder d(w, precision);
        constexpr int kSessions = 4;
        std::vector<std::vector<int64_t>> tokens;
        std::vector<std::unique_ptr<KvCache>> trimmed, whole;
        for (int i = 0; i < kSessions; ++i) {
          tokens.push_back(some_tokens(24, c.vocab_size, 200 + static_cast<uint64_t>(i), 0));
          trimmed.push_back(std::make_unique<KvCache>(c, 0, layer_end));
          whole.push_back(std::make_unique<KvCache>(c, 0, layer_end));
        }
        std::vector<int64_t> done(kSessions, 0);
        std::vector<float> scratch;
        struct Part {
          int session;
          int64_t rows, outputs;
        };
        const std::vector<std::vector<Part>> rounds = {{{0, 5, 1}, {1, 3, 0}, {2, 4, 4}, {3, 1, 1}},
                                                       {{0, 4, 0}, {1, 6, 2}, {3, 7, 1}},
                                                       {{0, 1, 1}, {1, 1, 1}, {2, 6, 0}, {3, 2, 2}},
                                                       {{2, 3, 1}},
                                                       {{1, 2, 0}},  // no row read: keys and values alone
                                                       {{0, 2, -1}, {1, 1, -1}, {2, 1, -1}, {3, 1, -1}}};
        for (const auto& round : rounds) {
          std::vector<Decoder::DecodeStep> steps;
          for (const auto& p : round) {
            const std::vector<int64_t> part(tokens[p.session].begin() + done[p.session],
                                            tokens[p.session].begin() + done[p.session] + p.rows);
            steps.push_back({d.embed(token_tensor(part)), done[p.session], trimmed[p.session].get(), p.outputs});
          }
          const auto out = d.forward(steps, 0, layer_end, scratch);
          for (size_t j = 0; j < round.size(); ++j) {
            const auto& p = round[j];
            const int64_t kept = p.outputs < 0 ? p.rows : p.outputs;
            BOOST_TEST_CONTEXT("session " << p.session << " rows " << done[p.session] << "+" << p.rows << ", "
                                          << kept << " read") {
              BOOST_REQUIRE_EQUAL(out[j].size(0), kept);
              // The whole computation of the same rows, on a cache of its own (compared below).
              const auto all = d.forward(steps[j].hidden, done[p.session], 0, layer_end, *whole[p.session]);
              if (kept > 0) BOOST_TEST(max_abs_diff(out[j], all.narrow(0, p.rows - kept, kept)) < 1e-4);
              if (kept > 0 && precision == WeightPrecision::fp32) {
                const std::vector<int64_t> prefix(tokens[p.session].begin(),
                                                  tokens[p.session].begin() + done[p.session] + p.rows);
                const Rows ref_rows = ref.layers(ref.embed(prefix), 0, layer_end);
                BOOST_TEST(max_diff(out[j], Rows(ref_rows.end() - kept, ref_rows.end())) < 1e-4);
              }
            }
            done[p.session] += p.rows;
          }
        }
        // Every position's keys and values, in every layer, as the whole computation left them.
        for (int i = 0; i < kSessions; ++i)
          for (int64_t l = 0; l < layer_end; ++l) {
            BOOST_REQUIRE_EQUAL(trimmed[i]->length(l), done[i]);
            const int64_t n = done[i] * c.kv_dim();
            double diff = 0;
            for (int64_t f = 0; f < n; ++f)
              diff = std::max({diff, double(std::abs(trimmed[i]->keys(l)[f] - whole[i]->keys(l)[f])),
                               double(std::abs(trimmed[i]->values(l)[f] - whole[i]->values(l)[f]))});
            BOOST_TEST(diff < 1e-4, "session " << i << " layer " << l << ": cache differs by " << diff);
          }
      }
    }
}

BOOST_AUTO_TEST_CASE(batched_step_refuses_bad_steps_by_name) {
  const auto c = reference_config(2);
  Decoder d(scaled_weights(c, 3, 0.15));
  KvCache a(c, 0, c.n_layers), b(c, 0, c.n_layers);
  std::vector<float> scratch;
  const auto h = d.embed(token_tensor({3, 4}));
  const auto error = [&](std::vector<Decoder::DecodeStep> steps) {
    return model_error_text([&] { d.forward(steps, 0, c.n_layers, scratch); });
  };
  BOOST_TEST(contains(error({{h, 0, &a}, {h, 0, &a}}), "one cache twice"));
  BOOST_TEST(contains(error({{h, 0, &a}, {h, 0, nullptr}}), "step 1 has no cache"));
  BOOST_TEST(contains(error({{h, 0, &a}, {h, 2, &b}}), "has 0 cached positions, expected 2"));
  BOOST_TEST(contains(error({{h, 0, &a, 3}}), "outputs 3 outside [0, 2] rows"));
  BOOST_TEST(contains(model_error_text([&] { d.forward(h, 0, 0, c.n_layers, a, -2); }), "outputs -2 outside"));
  BOOST_TEST(a.length(0) == 0);  // refused before any layer ran
  BOOST_TEST(d.forward(std::vector<Decoder::DecodeStep>{}, 0, c.n_layers, scratch).empty());
}

BOOST_AUTO_TEST_CASE(bad_inputs_throw) {
  const auto c = tiny_config(2);
  Decoder d(scaled_weights(c, 6, 0.3));
  BOOST_CHECK_THROW(d.embed(token_tensor({1, c.vocab_size})), ModelError);
  BOOST_CHECK_THROW(d.embed(token_tensor({-1})), ModelError);
  BOOST_CHECK_THROW(d.exit_logits(4, at::zeros({c.dim})), ModelError);  // no exit after layer 4
  KvCache kv(c, 0, 2);
  BOOST_CHECK_THROW(d.forward(at::zeros({3, c.dim + 1}), 0, 0, 2, kv), ModelError);             // bad width
  BOOST_CHECK_THROW(d.forward(at::zeros({3, c.dim}, at::kDouble), 0, 0, 2, kv), ModelError);   // not fp32
  BOOST_CHECK_THROW(d.forward(at::zeros({3, c.dim}), 0, 0, 3, kv), ModelError);                // beyond cache
  BOOST_CHECK_THROW(d.forward(at::zeros({3, c.dim}), 0, 2, 1, kv), ModelError);                // reversed
  BOOST_TEST(kv.length(0) == 0);  // nothing cached by the failed calls
}

BOOST_AUTO_TEST_SUITE_END()
