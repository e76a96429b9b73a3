#include "server/metrics.h"

#include <fmt/format.h>

namespace fm::server {

namespace {

void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP flashmoe_{0} {1}\n# TYPE flashmoe_{0} {2}\nflashmoe_{0} {3}\n", name, help, type,
                     value);
}

}  // namespace

std::string Metrics::prometheus(int slots, int max_queue, uint64_t rss, uint64_t peak_rss) const {
  std::string out;
  out +=
      "# HELP flashmoe_requests_total Completion requests by outcome.\n# TYPE flashmoe_requests_total "
      "counter\n";
  const std::pair<const char*, uint64_t> outcomes[] = {
      {"received", requests_received.load()},   {"completed", requests_completed.load()},
      {"rejected", requests_rejected.load()},   {"invalid", requests_invalid.load()},
      {"cancelled", requests_cancelled.load()}, {"failed", requests_failed.load()}};
  for (const auto& [name, v] : outcomes)
    out += fmt::format("flashmoe_requests_total{{outcome=\"{}\"}} {}\n", name, v);

  metric(out, "prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
         double(prompt_tokens.load()));
  metric(out, "prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache.",
         double(prompt_tokens_reused.load()));
  metric(out, "prompt_tokens_computed_total", "counter", "Prompt tokens prefilled.",
         double(prompt_tokens_computed.load()));
  metric(out, "generated_tokens_total", "counter", "Tokens generated.", double(generated_tokens.load()));
  metric(out, "prefix_reuses_total", "counter", "Requests that extended a cached prefix.",
         double(prefix_reuses.load()));
  const uint64_t prompt = prompt_tokens.load();
  metric(out, "prompt_cache_hit_ratio", "gauge", "Share of prompt tokens found in the cache.",
         prompt ? double(prompt_tokens_reused.load()) / double(prompt) : 0.0);

  const double prefill_s = double(prefill_ns.load()) * 1e-9, decode_s = double(decode_ns.load()) * 1e-9;
  metric(out, "prefill_seconds_total", "counter", "Time spent prefilling prompts.", prefill_s);
  metric(out, "decode_seconds_total", "counter", "Time spent in decode steps.", decode_s);
  metric(out, "decode_steps_total", "counter", "Batched decode steps.", double(decode_steps.load()));
  metric(out, "decode_sequences_total", "counter",
         "Sequences served by the decode steps (sum of batch sizes).", double(decode_sequences.load()));
  const uint64_t steps = decode_steps.load();
  metric(out, "decode_batch_size_mean", "gauge", "Mean sequences per decode step.",
         steps ? double(decode_sequences.load()) / double(steps) : 0.0);
  metric(out, "prefill_tokens_per_second", "gauge", "Prompt tokens prefilled per second of prefill, overall.",
         prefill_s > 0 ? double(prompt_tokens_computed.load()) / prefill_s : 0.0);
  metric(out, "decode_tokens_per_second", "gauge",
         "Tokens decoded per second of decoding (all sequences), overall.",
         decode_s > 0 ? double(decode_sequences.load()) / decode_s : 0.0);
  metric(out, "generation_tokens_per_second_recent", "gauge",
         "Tokens generated per second over the last seconds.", recent_tokens_per_second.load());

  metric(out, "queue_depth", "gauge", "Requests waiting for a slot.", double(queue_depth.load()));
  metric(out, "queue_capacity", "gauge", "Requests the queue holds before refusing with 429.",
         double(max_queue));
  metric(out, "slots_active", "gauge", "Slots generating.", double(active_slots.load()));
  metric(out, "slots_total", "gauge", "Slots (sequences decoded together).", double(slots));

  const uint64_t demanded = expert_demanded.load();
  metric(out, "expert_cache_requests_total", "counter", "Routed experts the computation asked the cache for.",
         double(demanded));
  metric(out, "expert_cache_hits_total", "counter", "Of which cached or prefetched.",
         double(expert_hits.load()));
  metric(out, "expert_cache_hit_ratio", "gauge", "Expert cache hit rate (streamed experts).",
         demanded ? double(expert_hits.load()) / double(demanded) : 0.0);
  metric(out, "io_read_bytes_total", "counter", "Bytes of experts read from disk.",
         double(io_bytes_read.load()));
  metric(out, "weight_read_bytes_total", "counter", "Bytes of weights the forward passes read.",
         double(weight_bytes_read.load()));
  metric(out, "resident_memory_bytes", "gauge", "Resident memory of the process (VmRSS).", double(rss));
  metric(out, "resident_memory_peak_bytes", "gauge", "Peak resident memory of the process (VmHWM).",
         double(peak_rss));
  return out;
}

}  // namespace fm::server
