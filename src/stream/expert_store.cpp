#include "stream/expert_store.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "util/error.h"

namespace fm {

namespace {

Mat FfnWeights::*const kParts[3] = {&FfnWeights::gate, &FfnWeights::up, &FfnWeights::down};

// Room for a range of `length` bytes at any offset, read as whole aligned blocks.
uint64_t padded_bound(uint64_t length) { return (length + io::kAlign - 1) / io::kAlign * io::kAlign + io::kAlign; }

}  // namespace

ExpertStore::ExpertStore(const Model& model, const StreamOptions& options, int top_k)
    : model_(model), options_(options), io_(std::make_unique<io::IoEngine>(options.io)) {
  const ModelConfig& c = model.config;
  n_experts_ = std::max(c.num_experts, 1);
  n_layers_ = c.num_layers;
  locations_.resize(size_t(n_layers_) * size_t(n_experts_));
  parts_.resize(size_t(n_layers_));
  slot_of_.assign(locations_.size(), -1);
  freq_.assign(locations_.size(), 0.0f);
  freq_clock_.assign(locations_.size(), 0);

  std::map<std::string, int> files;
  for (int l = 0; l < n_layers_; ++l) {
    const LayerWeights& L = model.weights.layers[size_t(l)];
    if (!L.is_moe) continue;
    LayerParts& lp = parts_[size_t(l)];
    uint64_t at = 0, bytes = 0;
    for (int p = 0; p < 3; ++p) {
      lp.proto[p] = L.moe.experts[0].*kParts[p];
      lp.proto[p].data = nullptr;
      lp.slot_offset[p] = at;
      at += padded_bound(lp.proto[p].nbytes());
      bytes += lp.proto[p].nbytes();
    }
    slot_bytes_ = std::max(slot_bytes_, at);
    expert_bytes_ = std::max(expert_bytes_, bytes);
    for (int e = 0; e < c.num_experts; ++e) {
      Location& loc = locations_[size_t(key(l, e))];
      for (int p = 0; p < 3; ++p) {
        const Mat& m = L.moe.experts[size_t(e)].*kParts[p];
        std::string path;
        if (!model.tensors->locate(m.data, &path, &loc.offset[p]))
          fail("{}: the experts of layer {} are not in a file the expert store can read", model.tensors->source(), l);
        auto [it, added] = files.try_emplace(path, 0);
        if (added) it->second = io_->add_file(path);
        loc.file[p] = it->second;
      }
    }
  }
  if (slot_bytes_ == 0) fail("{}: the model has no routed experts to stream", model.tensors->source());

  const uint64_t n_slots = options.cache_bytes / slot_bytes_;
  const uint64_t need = uint64_t(top_k) + 1;
  if (n_slots < need)
    fail("expert cache of {:.1f} MB holds {} experts of {:.2f} MB; at least {} ({:.1f} MB) are needed for top-k {}",
         double(options.cache_bytes) / 1e6, n_slots, double(slot_bytes_) / 1e6, need,
         double(need * slot_bytes_) / 1e6, top_k);
  slots_.resize(size_t(n_slots));
  for (Slot& s : slots_) s.buffer = io::alloc_aligned(slot_bytes_);
  // LFU's memory: counts halve every 16 cache-fulls of expert uses. Measured on the default model's
  // real routing (held-out text, token by token, docs/benchmarks.md): 16 read the fewest bytes at
  // every cache size tried, 9-22 % fewer than LRU; 1 behaves like LRU, no decay a little worse.
  half_life_ = 16.0 * double(n_slots);
}

ExpertStore::~ExpertStore() {
  for (Slot& s : slots_)
    if (s.state == State::Loading && !io_->cancel(s.job)) {
      try {
        io_->wait(s.job);
      } catch (const Error&) {
      }
    }
  io_.reset();
  for (Slot& s : slots_) io::free_aligned(s.buffer);
}

// The unpinned, settled slot the policy would drop first: a free one, else the least recently (LRU)
// or least often (LFU, ties by recency) used. Slots demanded by the current layer stay.
int ExpertStore::find_victim() {
  int best = -1;
  for (int i = 0; i < int(slots_.size()); ++i) {
    Slot& s = slots_[size_t(i)];
    // A prefetch that has finished is settled here, so that a failed one frees its slot.
    if (s.state == State::Loading && s.pins == 0 && !s.demanded && io_->done(s.job)) {
      try {
        complete(s);
      } catch (const Error&) {
      }
    }
    if (s.state == State::Free) return i;
    if (s.state != State::Ready || s.pins > 0 || s.demanded) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const Slot& b = slots_[size_t(best)];
    bool better = s.last_use < b.last_use;
    if (options_.policy == CachePolicy::Lfu) {
      const double fs = frequency(s.key), fb = frequency(b.key);
      better = fs < fb || (fs == fb && better);
    }
    if (better) best = i;
  }
  return best;
}

double ExpertStore::frequency(int64_t k) const {
  return freq_[size_t(k)] * std::exp2(-double(clock_ - freq_clock_[size_t(k)]) / half_life_);
}

void ExpertStore::free_slot(Slot& s) {
  if (s.key >= 0) slot_of_[size_t(s.key)] = -1;
  if (s.prefetched) ++stats_.prefetch_unused;
  s = Slot{.buffer = s.buffer};
}

int ExpertStore::start_read(int layer, int expert, io::Priority priority) {
  const int victim = find_victim();
  if (victim < 0) return -1;
  Slot& s = slots_[size_t(victim)];
  if (s.state != State::Free) {
    ++stats_.evictions;
    free_slot(s);
  }
  const Location& loc = locations_[size_t(key(layer, expert))];
  const LayerParts& lp = parts_[size_t(layer)];
  io::ReadRange ranges[3];
  for (int p = 0; p < 3; ++p)
    ranges[p] = io::ReadRange{loc.file[p], loc.offset[p], lp.proto[p].nbytes(), s.buffer + lp.slot_offset[p]};
  s.key = key(layer, expert);
  s.state = State::Loading;
  s.job = io_->submit(ranges, priority);
  s.prefetched = priority == io::Priority::Prefetch;
  slot_of_[size_t(s.key)] = victim;
  return victim;
}

void ExpertStore::demand(int layer, std::span<const int32_t> experts) {
  if (layer != current_layer_) {
    for (Slot& s : slots_) s.demanded = false;
    current_layer_ = layer;
  }
  for (int32_t e : experts) {
    const int i = slot_of_[size_t(key(layer, e))];
    if (i >= 0) {
      slots_[size_t(i)].demanded = true;
      if (slots_[size_t(i)].state == State::Loading) io_->promote(slots_[size_t(i)].job);
    }
  }
  // Prefetches of this layer that the routing did not pick are wasted: cancel those not started.
  for (Slot& s : slots_) {
    if (s.state != State::Loading || s.demanded || s.key / n_experts_ != layer) continue;
    if (io_->cancel(s.job)) {
      ++stats_.prefetch_cancelled;
      free_slot(s);
    }
  }
  for (int32_t e : experts) {
    if (slot_of_[size_t(key(layer, e))] >= 0) continue;
    const int i = start_read(layer, e, io::Priority::Demand);
    if (i < 0) break;  // every slot is busy: the rest are read in acquire(), as slots free up
    slots_[size_t(i)].demanded = true;
  }
}

void ExpertStore::prefetch(int layer, std::span<const int32_t> experts) {
  for (int32_t e : experts) {
    if (slot_of_[size_t(key(layer, e))] >= 0) continue;
    if (start_read(layer, e, io::Priority::Prefetch) < 0) return;
    ++stats_.prefetched;
  }
}

void ExpertStore::complete(Slot& s) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    io_->wait(s.job);
  } catch (const Error&) {
    stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.prefetched = false;
    free_slot(s);
    throw;
  }
  stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.state = State::Ready;
}

bool ExpertStore::ready(int layer, int expert) {
  const int i = slot_of_[size_t(key(layer, expert))];
  if (i < 0) return false;
  Slot& s = slots_[size_t(i)];
  return s.state == State::Ready || io_->done(s.job);
}

FfnWeights ExpertStore::acquire(int layer, int expert) {
  ++stats_.demanded;
  int i = slot_of_[size_t(key(layer, expert))];
  if (i < 0) {
    ++stats_.misses;
    i = start_read(layer, expert, io::Priority::Demand);
    if (i < 0) fail("expert cache: all {} slots are in use; raise --expert-cache", slots_.size());
  } else if (slots_[size_t(i)].prefetched) {
    ++stats_.prefetch_hits;
  } else if (slots_[size_t(i)].state == State::Ready) {
    ++stats_.hits;
  } else {
    ++stats_.misses;  // read on demand, still in flight
  }
  Slot& s = slots_[size_t(i)];
  if (s.state == State::Loading) complete(s);
  s.prefetched = false;
  s.demanded = true;
  ++s.pins;
  s.last_use = ++clock_;
  const size_t k = size_t(key(layer, expert));
  freq_[k] = float(frequency(int64_t(k)) + 1.0);
  freq_clock_[k] = clock_;
  const LayerParts& lp = parts_[size_t(layer)];
  const Location& loc = locations_[size_t(key(layer, expert))];
  FfnWeights w;
  const FfnWeights& mapped = model_.weights.layers[size_t(layer)].moe.experts[size_t(expert)];
  for (int p = 0; p < 3; ++p) {
    // The expert's own matrix (MLX scales and biases stay in the mapping), its data from the slot.
    Mat m = mapped.*kParts[p];
    m.data = s.buffer + lp.slot_offset[p] + io::head(loc.offset[p]);
    w.*kParts[p] = m;
  }
  return w;
}

void ExpertStore::release(int layer, int expert) {
  const int i = slot_of_[size_t(key(layer, expert))];
  FM_CHECK(i >= 0 && slots_[size_t(i)].pins > 0, "release of expert {} of layer {} that is not pinned", expert, layer);
  Slot& s = slots_[size_t(i)];
  if (--s.pins == 0) s.demanded = false;  // computed: it may now make room for the layer's other experts
}

bool ExpertStore::cached(int layer, int expert) const { return slot_of_[size_t(key(layer, expert))] >= 0;
}

}  // namespace fm
