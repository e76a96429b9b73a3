#include "server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::server {

// ---- Job ----

JobOutput Job::take(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, timeout,
               [this] { return done_ || !pending_.text.empty() || !pending_.logprobs.empty(); });
  JobOutput out = std::move(pending_);
  pending_ = {};
  out.finished = done_;
  return out;
}

bool Job::wait_finished(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [this] { return done_; });
}

void Job::cancel() { cancelled_.store(true); }

void Job::push(std::string_view text, TokenLogprob* logprob) {
  {
    std::lock_guard lock(mutex_);
    pending_.text += text;
    if (logprob) pending_.logprobs.push_back(std::move(*logprob));
  }
  cv_.notify_all();
}

void Job::finish(std::string reason, const Usage& usage, std::string error) {
  {
    std::lock_guard lock(mutex_);
    finish_reason_ = std::move(reason);
    usage_ = usage;
    error_ = std::move(error);
    done_ = true;
  }
  cv_.notify_all();
}

// ---- Scheduler ----

struct Scheduler::Slot {
  SequenceState state;
  std::vector<int32_t> tokens;  // ids fed: tokens.size() == state.n_past
  std::string text;             // their text, when text_known
  bool text_known = true;
  uint64_t last_use = 0;

  // The request being served.
  std::shared_ptr<Job> job;
  std::optional<Sampler> sampler;
  std::optional<StreamDecoder> decoder;
  std::optional<StopMatcher> stops;
  std::vector<int32_t> prefill;  // prompt ids still to feed from prefill_pos on
  size_t prefill_pos = 0;
  std::string prefill_text;  // the text the slot holds once they are fed
  int32_t next = -1;         // sampled, fed by the next decode step
  int generated = 0;
  int max_tokens = 0;
  Usage usage;

  bool prefilling() const { return prefill_pos < prefill.size(); }

  void clear() {
    state.reset();
    tokens.clear();
    text.clear();
    text_known = true;
  }
};

Scheduler::Scheduler(Transformer& transformer, const Tokenizer& tokenizer, Metrics& metrics,
                     SchedulerOptions options)
    : transformer_(transformer), tokenizer_(tokenizer), metrics_(metrics), options_(std::move(options)) {
  if (options_.slots < 1) fail("--parallel must be at least 1 (got {})", options_.slots);
  if (options_.slots > transformer.options().max_batch)
    fail("--parallel {} exceeds the batch of {} tokens per forward pass (--batch)", options_.slots,
         transformer.options().max_batch);
  if (options_.max_queue < 0) fail("--max-queue must be >= 0 (got {})", options_.max_queue);
  const size_t vocab = size_t(transformer.config().vocab_size);
  for (int i = 0; i < options_.slots; ++i) {
    auto s = std::make_unique<Slot>();
    s->state = transformer.new_sequence();
    slots_.push_back(std::move(s));
  }
  logits_.resize(vocab * size_t(options_.slots));
  scratch_.resize(vocab);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Job> Scheduler::submit(JobSpec spec) {
  FM_CHECK(!spec.prompt.empty(), "submit: empty prompt");
  auto job = std::make_shared<Job>(std::move(spec));
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || int(queue_.size()) >= options_.max_queue) return nullptr;
    queue_.push_back(job);
    metrics_.queue_depth.store(int64_t(queue_.size()));
  }
  cv_.notify_all();
  return job;
}

// The idle slot to serve `job` with: the one whose cached tokens the prompt extends the furthest, else the
// least recently used. `reuse`: tokens kept; `feed`: the ids to prefill.
Scheduler::Slot* Scheduler::pick_slot(const Job& job, size_t& reuse, std::vector<int32_t>& feed,
                                      std::string& text) {
  const JobSpec& spec = job.spec();
  Slot* best = nullptr;
  size_t best_reuse = 0;
  const std::string* best_text = nullptr;
  bool best_by_text = false;
  for (auto& s : slots_) {
    Slot& slot = *s;
    if (slot.job || slot.state.failed || slot.tokens.empty()) continue;
    const size_t n = slot.tokens.size();
    // The same ids followed by more.
    if (spec.prompt.size() > n && n > best_reuse &&
        std::equal(slot.tokens.begin(), slot.tokens.end(), spec.prompt.begin())) {
      best = &slot;
      best_reuse = n;
      best_by_text = false;
    }
    // The same text followed by more (a conversation that goes on: the answer's ids were generated, not
    // encoded, so the ids of a fresh encoding may differ where the text does not).
    for (const std::string* text : {&spec.prompt_text, &spec.alt_prompt_text}) {
      if (slot.text_known && !text->empty() && text->size() > slot.text.size() && n > best_reuse &&
          text->starts_with(slot.text)) {
        best = &slot;
        best_reuse = n;
        best_by_text = true;
        best_text = text;
      }
    }
  }
  if (best) {
    reuse = best_reuse;
    if (best_by_text) {
      feed = tokenizer_.encode(std::string_view(*best_text).substr(best->text.size()));
      text = *best_text;
    } else {
      feed.assign(spec.prompt.begin() + std::ptrdiff_t(best_reuse), spec.prompt.end());
      text = spec.prompt_text;
    }
    if (!feed.empty()) return best;
  }
  // No reuse: the least recently used idle slot, the empty ones first.
  Slot* lru = nullptr;
  for (auto& s : slots_)
    if (!s->job && (!lru || s->last_use < lru->last_use)) lru = s.get();
  if (!lru) return nullptr;
  lru->clear();
  reuse = 0;
  feed = spec.prompt;
  text = spec.prompt_text;
  return lru;
}

bool Scheduler::admit(Slot& slot, std::shared_ptr<Job> job) {
  const JobSpec& spec = job->spec();
  slot.job = std::move(job);
  slot.last_use = ++clock_;
  slot.generated = 0;
  slot.next = -1;
  slot.sampler.emplace(spec.sampling, transformer_.config().vocab_size);
  slot.decoder.emplace(tokenizer_);
  slot.stops.emplace(spec.stop);
  return true;
}

bool Scheduler::on_logits(Slot& slot, const float* logits) {
  const JobSpec& spec = slot.job->spec();
  const int V = transformer_.config().vocab_size;
  const auto bytes_of = [this](int32_t id) {
    return id >= 0 && id < tokenizer_.vocab_size() ? std::string(tokenizer_.token_bytes(id)) : std::string();
  };
  // Log-probabilities of the model's distribution (before the sampler's filters), as OpenAI reports them.
  std::optional<TokenLogprob> lp;
  if (spec.logprobs) {
    const float mx = *std::max_element(logits, logits + V);
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(double(logits[i] - mx));
    const float lse = mx + float(std::log(sum));
    for (int i = 0; i < V; ++i) scratch_[size_t(i)] = logits[i] - lse;
    lp.emplace();
    if (spec.top_logprobs > 0) {
      std::vector<int32_t> ids(static_cast<size_t>(V));
      std::iota(ids.begin(), ids.end(), 0);
      const int k = std::min(spec.top_logprobs, V);
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [this](int32_t a, int32_t b) {
        return scratch_[size_t(a)] > scratch_[size_t(b)] ||
               (scratch_[size_t(a)] == scratch_[size_t(b)] && a < b);
      });
      for (int i = 0; i < k; ++i)
        lp->top.emplace_back(bytes_of(ids[size_t(i)]), scratch_[size_t(ids[size_t(i)])]);
    }
  }
  const int32_t id = slot.sampler->sample(logits);
  ++slot.generated;
  metrics_.generated_tokens.fetch_add(1);
  const bool stop_token = !spec.ignore_eos && std::find(options_.stop_ids.begin(), options_.stop_ids.end(),
                                                        id) != options_.stop_ids.end();
  std::string piece;
  if (!stop_token && id < tokenizer_.vocab_size()) piece = slot.stops->push(slot.decoder->push(id));
  if (lp) {
    lp->token = bytes_of(id);
    lp->logprob = scratch_[size_t(id)];
  }
  slot.job->push(piece, lp ? &*lp : nullptr);

  std::string reason;
  if (stop_token || slot.stops->stopped())
    reason = "stop";
  else if (slot.generated >= slot.max_tokens || slot.state.n_past + 1 > transformer_.options().max_context)
    reason = "length";
  if (reason.empty()) {
    slot.next = id;
    return true;
  }
  if (!slot.stops->stopped()) {  // release what was held back
    std::string tail = slot.stops->push(slot.decoder->flush());
    tail += slot.stops->finish();
    if (!tail.empty()) slot.job->push(tail, nullptr);
  }
  release(slot, reason);
  return false;
}

void Scheduler::release(Slot& slot, const std::string& reason, const std::string& error) {
  slot.usage.completion_tokens = slot.generated;
  if (reason == "cancelled")
    metrics_.requests_cancelled.fetch_add(1);
  else if (reason == "error")
    metrics_.requests_failed.fetch_add(1);
  else
    metrics_.requests_completed.fetch_add(1);
  slot.job->finish(reason, slot.usage, error);
  slot.job.reset();
  slot.sampler.reset();
  slot.decoder.reset();
  slot.stops.reset();
  slot.prefill.clear();
  slot.prefill_pos = 0;
  slot.prefill_text.clear();
  slot.next = -1;
  slot.last_use = ++clock_;
}

void Scheduler::update_engine_metrics() {
  metrics_.weight_bytes_read.store(transformer_.weight_bytes_read());
  if (ExpertStore* store = transformer_.expert_store()) {
    const ExpertStoreStats st = store->stats();
    metrics_.expert_demanded.store(st.demanded);
    metrics_.expert_hits.store(st.hits + st.prefetch_hits);
    metrics_.io_bytes_read.store(store->io_stats().bytes_read);
  }
}

void Scheduler::prefill_chunk(Slot& slot) {
  const size_t n = std::min(slot.prefill.size() - slot.prefill_pos, size_t(transformer_.options().max_batch));
  const std::span<const int32_t> chunk(slot.prefill.data() + slot.prefill_pos, n);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    transformer_.forward(slot.state, chunk, logits_.data(), false);
  } catch (const Error& e) {
    slot.clear();
    release(slot, "error", e.what());
    return;
  }
  metrics_.prefill_ns.fetch_add(uint64_t(seconds_since(t0) * 1e9));
  metrics_.prompt_tokens_computed.fetch_add(n);
  slot.tokens.insert(slot.tokens.end(), chunk.begin(), chunk.end());
  slot.prefill_pos += n;
  if (slot.prefilling()) return;
  // The slot now holds the prompt's ids, which encode its text (when the request gave one).
  slot.text_known = !slot.prefill_text.empty();
  slot.text = std::move(slot.prefill_text);
  slot.prefill.clear();
  slot.prefill_pos = 0;
  on_logits(slot, logits_.data());
}

void Scheduler::loop() {
  const int64_t V = transformer_.config().vocab_size;
  const int ctx = transformer_.options().max_context;
  auto window_start = std::chrono::steady_clock::now();
  uint64_t window_tokens = metrics_.generated_tokens.load();
  std::vector<SequenceState*> states;
  std::vector<int32_t> tokens;
  std::vector<Slot*> batch;
  for (;;) {
    // 1. Admit waiting requests into idle slots.
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock lock(mutex_);
        if (stopping_) break;
        const bool idle = std::any_of(slots_.begin(), slots_.end(), [](const auto& s) { return !s->job; });
        if (queue_.empty() || !idle) break;
        job = std::move(queue_.front());
        queue_.pop_front();
        metrics_.queue_depth.store(int64_t(queue_.size()));
      }
      if (job->cancelled()) {
        metrics_.requests_cancelled.fetch_add(1);
        job->finish("cancelled", Usage{.prompt_tokens = int(job->spec().prompt.size())});
        continue;
      }
      size_t reuse = 0;
      std::vector<int32_t> feed;
      std::string text;  // what the slot's ids will encode
      Slot* slot = pick_slot(*job, reuse, feed, text);
      FM_CHECK(slot != nullptr, "no idle slot although one was seen");
      const JobSpec& spec = job->spec();
      admit(*slot, job);
      const int n_prompt = int(reuse + feed.size());
      slot->usage = Usage{.prompt_tokens = n_prompt, .cached_tokens = int(reuse)};
      slot->max_tokens = std::min(spec.max_tokens, ctx - n_prompt);
      metrics_.prompt_tokens.fetch_add(uint64_t(n_prompt));
      metrics_.prompt_tokens_reused.fetch_add(reuse);
      if (reuse > 0) metrics_.prefix_reuses.fetch_add(1);
      if (n_prompt >= ctx) {
        release(*slot, "error",
                fmt::format("the prompt ({} tokens) fills the context of {} tokens", n_prompt, ctx));
        continue;
      }
      if (slot->max_tokens <= 0) {
        release(*slot, "length");
        continue;
      }
      // Prefilled a chunk per iteration (below), between decode steps.
      slot->prefill = std::move(feed);
      slot->prefill_pos = 0;
      slot->prefill_text = std::move(text);
      slot->text_known = false;
    }

    // 1b. One chunk of one prompt (the earliest admitted): a long prompt delays the others' next token
    // by one chunk's time per step rather than by its whole prefill.
    Slot* filling = nullptr;
    for (auto& s : slots_)
      if (s->job && s->prefilling() && !s->job->cancelled() && (!filling || s->last_use < filling->last_use))
        filling = s.get();
    if (filling) prefill_chunk(*filling);

    // 2. Drop the requests whose clients went away; gather the rest for one decode step.
    batch.clear();
    int active = 0;
    bool prefilling = false;
    for (auto& s : slots_) {
      if (!s->job) continue;
      if (s->job->cancelled()) {
        release(*s, "cancelled");
        continue;
      }
      ++active;
      if (s->prefilling())
        prefilling = true;
      else
        batch.push_back(s.get());
    }
    metrics_.active_slots.store(active);

    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - window_start).count() >= 2.0) {
      const uint64_t g = metrics_.generated_tokens.load();
      metrics_.recent_tokens_per_second.store(double(g - window_tokens) /
                                              std::chrono::duration<double>(now - window_start).count());
      window_tokens = g;
      window_start = now;
      update_engine_metrics();
    }

    if (batch.empty()) {
      std::unique_lock lock(mutex_);
      if (stopping_) break;
      if (queue_.empty() && !prefilling) cv_.wait_for(lock, std::chrono::seconds(1));
      continue;
    }
    {
      std::lock_guard lock(mutex_);
      if (stopping_) break;
    }

    // 3. One decode step for every active slot.
    states.clear();
    tokens.clear();
    for (Slot* s : batch) {
      states.push_back(&s->state);
      tokens.push_back(s->next);
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      transformer_.decode_batch(states, tokens, logits_.data());
    } catch (const Error& e) {
      for (Slot* s : batch) {
        s->clear();
        release(*s, "error", e.what());
      }
      continue;
    }
    metrics_.decode_ns.fetch_add(uint64_t(seconds_since(t0) * 1e9));
    metrics_.decode_steps.fetch_add(1);
    metrics_.decode_sequences.fetch_add(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      Slot& s = *batch[i];
      s.tokens.push_back(s.next);
      if (s.text_known && s.next < tokenizer_.vocab_size())
        s.text += tokenizer_.token_bytes(s.next);
      else
        s.text_known = false;
      on_logits(s, logits_.data() + int64_t(i) * V);
    }
  }
  // Stopping: whatever is queued or running ends as cancelled.
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(queue_);
    metrics_.queue_depth.store(0);
  }
  for (auto& job : left) job->finish("cancelled", Usage{});
  for (auto& s : slots_)
    if (s->job) release(*s, "cancelled");
  metrics_.active_slots.store(0);
}

}  // namespace fm::server
