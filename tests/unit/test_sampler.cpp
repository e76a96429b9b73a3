// The sampler against a plain reference written from the published definitions (transformers'
// RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
// MinPLogitsWarper; OpenAI's presence/frequency penalties), in double precision: the same surviving
// tokens and probabilities within 1e-5. Then seeds, the draw itself, StopMatcher, and generate()'s
// stop handling on a fixture model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "fixture_util.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "test_util.h"

namespace fm {
namespace {

// id -> probability, the reference way: penalties, then temperature, top-k, top-p, min-p as HF's
// warpers do it (removed tokens become -inf; each warper's softmax is over what is left).
std::map<int32_t, double> reference(const std::vector<float>& logits, const SamplerOptions& o,
                                    const std::vector<int32_t>& prompt,
                                    const std::vector<int32_t>& generated) {
  const int n = int(logits.size());
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<double> l(logits.begin(), logits.end());
  std::set<int32_t> seen(prompt.begin(), prompt.end());
  seen.insert(generated.begin(), generated.end());
  for (int32_t t : seen)
    l[size_t(t)] =
        l[size_t(t)] > 0 ? l[size_t(t)] / o.repetition_penalty : l[size_t(t)] * o.repetition_penalty;
  std::map<int32_t, int> counts;
  for (int32_t t : generated) ++counts[t];
  for (auto [t, c] : counts) l[size_t(t)] -= o.presence_penalty + o.frequency_penalty * c;
  if (o.temperature == 0.0f) {
    int32_t best = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    return {{best, 1.0}};
  }
  for (double& x : l) x /= o.temperature;
  auto softmax = [&] {
    const double m = *std::max_element(l.begin(), l.end());
    std::vector<double> p(l.size());
    double s = 0;
    for (size_t i = 0; i < l.size(); ++i) s += p[i] = l[i] == ninf ? 0.0 : std::exp(l[i] - m);
    for (double& x : p) x /= s;
    return p;
  };
  if (o.top_k > 0 && o.top_k < n) {  // keep the k largest (ties to the lower id)
    std::vector<int32_t> idx(size_t(n), 0);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int32_t a, int32_t b) { return l[size_t(a)] > l[size_t(b)]; });
    for (size_t i = size_t(o.top_k); i < idx.size(); ++i) l[size_t(idx[i])] = ninf;
  }
  if (o.top_p < 1.0f) {  // ascending cumulative mass; remove where it is <= 1 - top_p; keep the top one
    const std::vector<double> p = softmax();
    std::vector<int32_t> idx(size_t(n), 0);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
      return p[size_t(a)] < p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a > b);
    });
    double cum = 0;
    for (size_t i = 0; i + 1 < idx.size(); ++i) {
      cum += p[size_t(idx[i])];
      if (cum <= 1.0 - o.top_p) l[size_t(idx[i])] = ninf;
    }
  }
  if (o.min_p > 0.0f) {
    const std::vector<double> p = softmax();
    const double top = *std::max_element(p.begin(), p.end());
    for (int i = 0; i < n; ++i)
      if (p[size_t(i)] < o.min_p * top) l[size_t(i)] = ninf;
  }
  const std::vector<double> p = softmax();
  std::map<int32_t, double> out;
  for (int i = 0; i < n; ++i)
    if (p[size_t(i)] > 0) out[i] = p[size_t(i)];
  return out;
}

void expect_matches(Sampler& s, const std::vector<float>& logits, const SamplerOptions& o,
                    const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated) {
  const std::map<int32_t, double> ref = reference(logits, o, prompt, generated);
  const std::vector<Candidate>& got = s.distribution(logits.data());
  std::map<int32_t, double> got_map;
  for (const Candidate& c : got) got_map[c.id] = c.prob;
  ASSERT_EQ(got_map.size(), ref.size()) << "surviving tokens differ";
  for (auto [id, p] : ref) {
    ASSERT_TRUE(got_map.count(id)) << "token " << id << " should survive";
    EXPECT_NEAR(got_map[id], p, 1e-5) << "token " << id;
  }
  for (size_t i = 1; i < got.size(); ++i) EXPECT_GE(got[i - 1].prob, got[i].prob);  // most likely first
}

std::vector<float> random_logits(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.5f);
  std::vector<float> l(static_cast<size_t>(n));
  for (float& x : l) x = d(rng);
  return l;
}

TEST(Sampler, EveryOptionMatchesTheReference) {
  const std::vector<SamplerOptions> configs = {
      {.temperature = 0.0f},
      {.temperature = 1.0f},
      {.temperature = 0.7f, .top_k = 5},
      {.temperature = 1.3f, .top_p = 0.9f},
      {.temperature = 1.0f, .top_p = 0.5f},
      {.temperature = 0.8f, .min_p = 0.05f},
      {.temperature = 1.0f, .min_p = 0.3f},
      {.temperature = 1.0f, .top_k = 20, .top_p = 0.95f, .min_p = 0.02f},
      {.temperature = 1.0f, .repetition_penalty = 1.3f},
      {.temperature = 0.0f, .repetition_penalty = 5.0f},
      {.temperature = 0.9f, .presence_penalty = 1.5f},
      {.temperature = 0.9f, .frequency_penalty = 0.7f},
      {.temperature = 0.6f,
       .top_k = 40,
       .top_p = 0.8f,
       .min_p = 0.1f,
       .repetition_penalty = 1.1f,
       .presence_penalty = -0.5f,
       .frequency_penalty = 0.3f},
  };
  const std::vector<int32_t> prompt = {3, 7, 7, 11, 40};
  const std::vector<int32_t> generated = {7, 12, 12, 12, 0};
  int config_index = 0;
  for (const SamplerOptions& o : configs) {
    for (uint32_t seed = 1; seed <= 4; ++seed) {
      SCOPED_TRACE(::testing::Message() << "config " << config_index << " logits seed " << seed);
      const std::vector<float> logits = random_logits(64, seed);
      Sampler s(o, 64);
      s.add_prompt(prompt);
      for (int32_t t : generated) s.accept(t);
      expect_matches(s, logits, o, prompt, generated);
    }
    ++config_index;
  }
}

TEST(Sampler, PenaltiesByHand) {
  // HF repetition penalty: positive logits divided, negative multiplied, once per seen token.
  Sampler rep({.temperature = 0.0f, .repetition_penalty = 2.0f}, 3);
  const std::vector<float> l = {2.0f, -2.0f, 1.5f};
  EXPECT_EQ(rep.distribution(l.data()).front().id, 0);
  rep.add_prompt(std::vector<int32_t>{0, 0, 1});  // 2 -> 1, -2 -> -4; token 2 (1.5) now wins
  EXPECT_EQ(rep.distribution(l.data()).front().id, 2);
  // Presence subtracts once, frequency per occurrence, over generated tokens only.
  Sampler pf({.temperature = 1.0f, .presence_penalty = 0.5f, .frequency_penalty = 0.25f}, 3);
  pf.add_prompt(std::vector<int32_t>{1, 1, 1});  // the prompt does not count
  pf.accept(0);
  pf.accept(0);
  const std::vector<float> z = {1.0f, 0.0f, 0.0f};
  // token 0: 1 - 0.5 - 2 * 0.25 = 0: all three equal.
  for (const Candidate& c : pf.distribution(z.data())) EXPECT_NEAR(c.prob, 1.0 / 3, 1e-6);
}

TEST(Sampler, MinPAndTopPExcludeWhatTheyShould) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  auto ids = [&](const SamplerOptions& o) {
    Sampler s(o, 4);
    std::vector<int32_t> out;
    for (const Candidate& c : s.distribution(l.data())) out.push_back(c.id);
    return out;
  };
  EXPECT_EQ(ids({.temperature = 1.0f, .min_p = 0.25f}), (std::vector<int32_t>{0, 1, 2}));  // 0.05 < 0.125
  EXPECT_EQ(ids({.temperature = 1.0f, .min_p = 0.35f}), (std::vector<int32_t>{0, 1}));     // 0.15 < 0.175
  EXPECT_EQ(ids({.temperature = 1.0f, .min_p = 0.65f}), (std::vector<int32_t>{0}));        // 0.3 < 0.325
  EXPECT_EQ(ids({.temperature = 1.0f, .min_p = 1.0f}), (std::vector<int32_t>{0}));
  EXPECT_EQ(ids({.temperature = 1.0f, .top_p = 0.45f}), (std::vector<int32_t>{0}));
  EXPECT_EQ(ids({.temperature = 1.0f, .top_p = 0.75f}), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(ids({.temperature = 1.0f, .top_p = 0.9f}), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(ids({.temperature = 1.0f, .top_p = 0.99f}), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(ids({.temperature = 1.0f, .top_k = 2, .top_p = 0.99f}), (std::vector<int32_t>{0, 1}));
  Sampler s({.temperature = 1.0f, .top_p = 0.75f}, 4);
  const auto& d = s.distribution(l.data());
  EXPECT_NEAR(d[0].prob, 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(d[1].prob, 0.3 / 0.8, 1e-6);
}

TEST(Sampler, SeedReproducesAndDrawsFollowTheDistribution) {
  const std::vector<float> logits = random_logits(32, 9);
  const SamplerOptions o{.temperature = 1.0f, .top_k = 8, .seed = 1234};
  auto run = [&](uint64_t seed) {
    SamplerOptions so = o;
    so.seed = seed;
    Sampler s(so, 32);
    std::vector<int32_t> ids;
    for (int i = 0; i < 300; ++i) ids.push_back(s.sample(logits.data()));
    return ids;
  };
  EXPECT_EQ(run(1234), run(1234));
  EXPECT_NE(run(1234), run(1235));

  // Frequencies of 40000 draws within 5 standard deviations of the distribution.
  Sampler s(o, 32);
  const std::vector<Candidate> d = s.distribution(logits.data());
  std::map<int32_t, int> hits;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++hits[s.sample(logits.data())];  // penalties are off: accepting is harmless
  for (const Candidate& c : d) {
    const double sd = std::sqrt(n * c.prob * (1 - c.prob));
    EXPECT_NEAR(hits[c.id], n * c.prob, 5 * sd + 1) << "token " << c.id;
  }
  int total = 0;
  for (auto [id, h] : hits) total += h;
  EXPECT_EQ(total, n);
  EXPECT_LE(hits.size(), d.size());  // nothing outside the top-k
}

TEST(Sampler, GreedyTiesToLowerIdAndRejectsBadOptions) {
  const std::vector<float> l = {0.0f, 3.0f, 3.0f, 1.0f};
  Sampler s({}, 4);
  EXPECT_EQ(s.sample(l.data()), 1);
  using test::expect_error;
  expect_error([] { Sampler({.temperature = -1.0f}, 4); }, {"--temp"});
  expect_error([] { Sampler({.top_p = 0.0f}, 4); }, {"--top-p"});
  expect_error([] { Sampler({.top_k = -2}, 4); }, {"--top-k"});
  expect_error([] { Sampler({.min_p = 1.5f}, 4); }, {"--min-p"});
  expect_error([] { Sampler({.repetition_penalty = 0.0f}, 4); }, {"--repeat-penalty"});
  expect_error([] { Sampler({.presence_penalty = NAN}, 4); }, {"--presence-penalty"});
  expect_error([] { Sampler({.frequency_penalty = INFINITY}, 4); }, {"--frequency-penalty"});
}

TEST(StopMatcher, HoldsBackAPossibleStartAndCutsAtTheStop) {
  StopMatcher m({"</s>"});
  EXPECT_EQ(m.push("Hello wor"), "Hello wor");
  EXPECT_EQ(m.push("ld<"), "ld");  // "<" could begin "</s>"
  EXPECT_EQ(m.push("/s"), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push(">more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "</s>");
  EXPECT_EQ(m.released(), std::string("Hello world").size());
  EXPECT_EQ(m.push("after"), "");
  EXPECT_EQ(m.finish(), "");
}

TEST(StopMatcher, FalseStartsAreReleased) {
  StopMatcher m({"abc", "<end>"});
  EXPECT_EQ(m.push("xab"), "x");
  EXPECT_EQ(m.push("x"), "abx");
  EXPECT_EQ(m.push("a<en"), "a");  // "<en" is held
  EXPECT_EQ(m.finish(), "<en");    // generation ended without a stop
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.released(), std::string("xabxa<en").size());
}

TEST(StopMatcher, EarliestStopWinsAndOverlaps) {
  StopMatcher a({"world", "lo w"});
  EXPECT_EQ(a.push("hello world"), "hel");
  EXPECT_EQ(a.matched(), "lo w");
  StopMatcher b({"aab"});
  EXPECT_EQ(b.push("aa"), "");
  EXPECT_EQ(b.push("ab!"), "a");  // "aaab": the stop starts at 1
  StopMatcher c({"STOP"});
  EXPECT_EQ(c.push("STOP"), "");
  EXPECT_TRUE(c.stopped());
  StopMatcher multi({"é"});  // multi-byte stop strings match bytes
  EXPECT_EQ(multi.push("caf\xC3"), "caf");
  EXPECT_EQ(multi.push("\xA9!"), "");
  EXPECT_TRUE(multi.stopped());
  test::expect_error([] { StopMatcher({"ok", ""}); }, {"empty"});
}

// generate() on a fixture model with a decoder that writes each id as "<id>".
TEST(Generate, StopTokensAndStopStrings) {
  const test::Reference ref = test::load_reference("qwen3moe-f16");
  const auto model = Model::load(ref.dir);
  CpuBackend backend(1);
  TransformerOptions topt;
  topt.max_context = 512;
  Transformer transformer(*model, backend, topt);
  const std::vector<int32_t> prompt(ref.prompt.begin(), ref.prompt.begin() + 8);
  auto decode = [](int32_t id) { return "<" + std::to_string(id) + ">"; };
  auto gen = [&](GenerateOptions o) {
    SequenceState state = transformer.new_sequence();
    return generate(transformer, state, prompt, o);
  };
  const GenerateResult full = gen({.max_new_tokens = 6, .decode = decode});
  ASSERT_EQ(full.tokens.size(), 6u);
  EXPECT_EQ(full.finish_reason, FinishReason::Length);
  std::string text;
  for (int32_t id : full.tokens) text += decode(id);
  EXPECT_EQ(full.text, text);

  // A stop token ends generation after it; its text is not decoded.
  const GenerateResult eos = gen({.max_new_tokens = 6, .stop_ids = {full.tokens[2]}, .decode = decode});
  const auto first =
      size_t(std::find(full.tokens.begin(), full.tokens.end(), full.tokens[2]) - full.tokens.begin());
  EXPECT_EQ(eos.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + long(first) + 1));
  EXPECT_EQ(eos.finish_reason, FinishReason::StopToken);

  // A stop string spanning two tokens' text: cut before it, streamed text never includes it.
  const std::string stop = decode(full.tokens[3]).substr(2) + decode(full.tokens[4]).substr(0, 2);
  const size_t cut = text.find(stop);
  std::string streamed;
  const GenerateResult s =
      gen({.max_new_tokens = 6, .stop_strings = {stop}, .decode = decode, .on_text = [&](std::string_view t) {
             streamed += t;
             return true;
           }});
  EXPECT_EQ(s.finish_reason, FinishReason::StopString);
  EXPECT_EQ(s.text, text.substr(0, cut));
  EXPECT_EQ(streamed, s.text);
  EXPECT_LE(s.tokens.size(), 5u);

  test::expect_error([&] { gen({.max_new_tokens = 2, .stop_strings = {"x"}}); }, {"decode"});
}

}  // namespace
}  // namespace fm
