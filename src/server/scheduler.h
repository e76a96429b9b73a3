// The scheduler: one thread owns the Transformer (which is not thread-safe) and serves every request.
//
// Requests wait in a bounded queue (submit() refuses when it is full: HTTP 429). A fixed pool of slots,
// each a SequenceState and the token ids it holds, serves them. Each iteration of the loop:
//   1. admits waiting requests into idle slots: a request whose prompt extends what a slot holds (the
//      same ids, or the same text, followed by more) feeds only the rest (the DeltaNet state cannot be
//      rewound, so only an exact extension counts); otherwise the least recently used slot is reset and
//      the whole prompt fed. Prompts are fed one chunk (--batch tokens) per iteration, so a long one
//      delays the others' decoding by a chunk at a time; the first token is sampled from the last
//      chunk's logits;
//   2. runs ONE batched decode step (Transformer::decode_batch) for every active slot: one pass over the
//      weights and experts serves all of them (continuous batching: requests join and leave between steps);
//   3. samples each slot's next token with its own Sampler (a seed reproduces a solo run), decodes it to
//      text (StreamDecoder), matches stop strings (StopMatcher) and hands the text to the request.
// A request cancelled by its client (a failed write) is dropped at the next step; its slot keeps the
// tokens it fed and stays reusable.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "model/qwen_moe.h"
#include "runtime/sampler.h"
#include "server/api.h"
#include "server/metrics.h"
#include "tokenizer/tokenizer.h"

namespace fm::server {

struct JobSpec {
  std::vector<int32_t> prompt;  // token ids, not empty, shorter than the context
  std::string prompt_text;      // the text they encode, when known (prefix reuse by text); "" otherwise
  // Chat: the same conversation rendered with earlier answers as the model saw them (the generation
  // prompt's opening, e.g. an empty <think> block, kept in their content). A slot whose text this
  // extends is reused with it; "" when the same as prompt_text.
  std::string alt_prompt_text;
  int max_tokens = 16;  // >= 0; also bounded by the context
  SamplerOptions sampling = {};
  std::vector<std::string> stop = {};
  bool logprobs = false;
  int top_logprobs = 0;     // alternatives per token, with logprobs
  bool ignore_eos = false;  // the stop ids do not end generation
};

// Output a request has produced since the consumer last looked.
struct JobOutput {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  bool finished = false;
};

// One request's link between its HTTP thread (the consumer) and the scheduler (the producer).
class Job {
 public:
  explicit Job(JobSpec spec) : spec_(std::move(spec)) {}
  const JobSpec& spec() const { return spec_; }

  // Consumer: waits up to `timeout` for output, then takes all there is. finished is set once the
  // last output has been taken; then finish_reason(), usage() and error() hold.
  JobOutput take(std::chrono::milliseconds timeout);
  bool wait_finished(std::chrono::milliseconds timeout);  // true once the job has finished
  void cancel();                                          // the client went away
  bool cancelled() const { return cancelled_.load(); }

  const std::string& finish_reason() const {
    return finish_reason_;
  }  // "stop", "length", "cancelled", "error"
  const Usage& usage() const { return usage_; }
  const std::string& error() const { return error_; }  // the engine's message when finish_reason is "error"

  // Producer.
  void push(std::string_view text, TokenLogprob* logprob);
  void finish(std::string reason, const Usage& usage, std::string error = {});

 private:
  friend class Scheduler;
  JobSpec spec_;
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  JobOutput pending_;  // guarded by mutex_
  bool done_ = false;  // guarded by mutex_
  std::string finish_reason_;
  Usage usage_;
  std::string error_;
};

struct SchedulerOptions {
  int slots = 4;                       // sequences decoded together (--parallel)
  int max_queue = 16;                  // requests waiting for a slot before submit() refuses
  std::vector<int32_t> stop_ids = {};  // end-of-generation tokens
};

class Scheduler {
 public:
  // Starts the scheduler thread. The transformer, tokenizer and metrics must outlive it.
  Scheduler(Transformer& transformer, const Tokenizer& tokenizer, Metrics& metrics, SchedulerOptions options);
  ~Scheduler();  // stops the thread; requests still queued or running finish as "cancelled"
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; nullptr when the queue is full.
  std::shared_ptr<Job> submit(JobSpec spec);
  void stop();

  int slots() const { return options_.slots; }
  int max_queue() const { return options_.max_queue; }

 private:
  struct Slot;
  void loop();
  bool admit(Slot& slot, std::shared_ptr<Job> job);
  void prefill_chunk(Slot& slot);  // feeds the next chunk of the slot's prompt; samples once it is all in
  Slot* pick_slot(const Job& job, size_t& reuse, std::vector<int32_t>& feed, std::string& text);
  // Samples from the logits, hands the text on; false when the request is done (the slot is then released).
  bool on_logits(Slot& slot, const float* logits);
  void release(Slot& slot, const std::string& reason, const std::string& error = {});
  void update_engine_metrics();

  Transformer& transformer_;
  const Tokenizer& tokenizer_;
  Metrics& metrics_;
  SchedulerOptions options_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<float> logits_;   // [slots][vocab]
  std::vector<float> scratch_;  // [vocab]: log-probabilities
  uint64_t clock_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by mutex_
  bool stopping_ = false;                   // guarded by mutex_
  std::thread thread_;
};

}  // namespace fm::server
