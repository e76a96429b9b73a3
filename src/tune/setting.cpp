#include "tune/setting.h"

#include <fmt/format.h>

#include <filesystem>

#include "stream/memory_plan.h"
#include "util/error.h"

namespace fm::tune {

KeyValues setting_entries(const Setting& s, bool with_model) {
  KeyValues kv;
  if (with_model) kv.emplace_back("model", s.model);
  kv.emplace_back("threads", std::to_string(s.threads));
  if (s.moe_top_k > 0) kv.emplace_back("moe-top-k", std::to_string(s.moe_top_k));
  kv.emplace_back("stream", s.stream ? "true" : "false");
  if (s.stream) {
    if (s.mem_budget > 0) kv.emplace_back("mem-budget", std::to_string(s.mem_budget));
    if (s.expert_cache > 0) kv.emplace_back("expert-cache", std::to_string(s.expert_cache));
    kv.emplace_back("io-threads", std::to_string(s.io_threads));
    kv.emplace_back("io-split", std::to_string(s.io_split));
    kv.emplace_back("direct-io", s.direct_io ? "true" : "false");
    kv.emplace_back("io-backend", s.io_backend);
    kv.emplace_back("cache-policy", s.cache_policy);
    kv.emplace_back("predict", s.predict);
  }
  return kv;
}

namespace {

std::string join(const KeyValues& kv) {
  std::string out;
  for (const auto& [k, v] : kv) out += fmt::format("{}{}={}", out.empty() ? "" : ";", k, v);
  return out;
}

KeyValues short_entries(const Setting& s) {
  KeyValues kv = setting_entries(s, true);
  kv.front().second = std::filesystem::path(s.model).filename().string();
  return kv;
}

}  // namespace

std::string describe(const Setting& s) { return join(short_entries(s)); }

std::string describe_change(const Setting& s, const Setting& base) {
  const KeyValues a = short_entries(s), b = short_entries(base);
  KeyValues diff;
  for (const auto& [k, v] : a) {
    bool same = false;
    for (const auto& [bk, bv] : b)
      if (bk == k) same = bv == v && (k != "model" || s.model == base.model);
    if (!same) diff.emplace_back(k, v);
  }
  return diff.empty() ? "base" : join(diff);
}

TransformerOptions transformer_options(const Setting& s, const Model& model, int max_context, int max_batch,
                                       int plan_context) {
  TransformerOptions t;
  t.max_context = max_context;
  t.max_batch = max_batch;
  t.experts_per_tok = s.moe_top_k;
  t.stream_experts = s.stream;
  if (!s.stream) return t;
  t.stream.io.threads = s.io_threads;
  t.stream.io.split = s.io_split;
  t.stream.io.direct = s.direct_io;
  if (s.io_backend == "uring")
    t.stream.io.backend = io::Backend::Uring;
  else if (s.io_backend == "pread")
    t.stream.io.backend = io::Backend::Pread;
  else
    fail("io-backend: '{}' is not pread or uring", s.io_backend);
  if (s.cache_policy == "lfu")
    t.stream.policy = CachePolicy::Lfu;
  else if (s.cache_policy == "lru")
    t.stream.policy = CachePolicy::Lru;
  else
    fail("cache-policy: '{}' is not lru or lfu", s.cache_policy);
  t.predict_lookahead = t.predict_temporal = false;
  size_t pos = 0;
  while (pos <= s.predict.size()) {
    size_t end = s.predict.find(',', pos);
    if (end == std::string::npos) end = s.predict.size();
    const std::string p = s.predict.substr(pos, end - pos);
    if (p == "lookahead")
      t.predict_lookahead = true;
    else if (p == "temporal")
      t.predict_temporal = true;
    else if (p == "both")
      t.predict_lookahead = t.predict_temporal = true;
    else if (p != "none" && !p.empty())
      fail("predict: unknown predictor '{}' (lookahead, temporal, both, none)", p);
    pos = end + 1;
  }
  TransformerOptions planned = t;
  if (plan_context > 0) planned.max_context = plan_context;
  t.stream.cache_bytes = plan_memory(model, planned, s.mem_budget, s.expert_cache).expert_cache;
  return t;
}

}  // namespace fm::tune
