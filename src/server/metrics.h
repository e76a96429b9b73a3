// Counters of the server, updated by the HTTP threads and the scheduler without locks, and their
// Prometheus text exposition (GET /metrics, format version 0.0.4).
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

namespace fm::server {

struct Metrics {
  // Requests, by outcome.
  std::atomic<uint64_t> requests_received{0};   // POSTs to a completion endpoint
  std::atomic<uint64_t> requests_completed{0};  // answered in full
  std::atomic<uint64_t> requests_rejected{0};   // 429: the queue was full
  std::atomic<uint64_t> requests_invalid{0};    // 4xx: bad request, auth, too large
  std::atomic<uint64_t> requests_cancelled{0};  // the client went away
  std::atomic<uint64_t> requests_failed{0};     // 500: the engine failed
  // Tokens.
  std::atomic<uint64_t> prompt_tokens{0};           // prompt tokens of admitted requests
  std::atomic<uint64_t> prompt_tokens_reused{0};    // of which found in a slot's cache (not recomputed)
  std::atomic<uint64_t> prompt_tokens_computed{0};  // prefilled
  std::atomic<uint64_t> generated_tokens{0};
  std::atomic<uint64_t> prefix_reuses{0};  // requests that extended a slot's cached prefix
  // Engine time.
  std::atomic<uint64_t> prefill_ns{0};
  std::atomic<uint64_t> decode_ns{0};
  std::atomic<uint64_t> decode_steps{0};            // batched decode steps
  std::atomic<uint64_t> decode_sequences{0};        // sequences served by them (sum of batch sizes)
  std::atomic<double> recent_tokens_per_second{0};  // generated tokens/s over the last few seconds
  // Scheduling gauges.
  std::atomic<int64_t> queue_depth{0};
  std::atomic<int64_t> active_slots{0};
  // Expert cache and I/O (streamed experts only; copied from the engine by the scheduler).
  std::atomic<uint64_t> expert_demanded{0};
  std::atomic<uint64_t> expert_hits{0};  // ready in the cache or prefetched
  std::atomic<uint64_t> io_bytes_read{0};
  std::atomic<uint64_t> weight_bytes_read{0};

  // The exposition text: counters, gauges and derived rates, each with HELP and TYPE lines.
  // `rss` / `peak_rss`: the process's resident memory now and at its peak, in bytes.
  std::string prometheus(int slots, int max_queue, uint64_t rss, uint64_t peak_rss) const;
};

}  // namespace fm::server
