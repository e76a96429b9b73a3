// The expert store: routed experts read from the model files on demand into a RAM cache of fixed
// slots, never loaded wholesale. The dense part of the model stays mapped (resident); the expert
// tensors of the mapping are never touched, so neither their pages nor their page cache count.
//
// Each expert (gate, up and down slices of one layer's expert tensors, wherever they lie in the
// files: GGUF 3-D tensors, safetensors fused or per-expert tensors) is one I/O job. A slot holds
// one expert; a table maps (layer, expert) to its slot. Slots are chosen for eviction by the
// cache policy among those neither pinned (being computed) nor loading.
//
// Used from one thread (the compute thread); the I/O engine's threads only fill slot buffers.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/io_engine.h"
#include "model/model.h"

namespace fm {

enum class CachePolicy { Lru, Lfu };

struct StreamOptions {
  io::IoOptions io;
  uint64_t cache_bytes = 0;  // RAM for expert slots (at least one layer's top-k experts)
  CachePolicy policy = CachePolicy::Lfu;
};

struct ExpertStoreStats {
  uint64_t demanded = 0;         // experts asked for by the computation
  uint64_t hits = 0;             // of which already in a slot, ready
  uint64_t prefetch_hits = 0;    // of which loading or loaded by a prefetch (not yet used since)
  uint64_t misses = 0;           // of which read on demand
  uint64_t prefetched = 0;       // prefetch reads issued
  uint64_t prefetch_cancelled = 0;
  uint64_t prefetch_unused = 0;  // prefetched experts evicted or cancelled without being used
  uint64_t evictions = 0;
  double wait_seconds = 0;       // compute thread blocked on reads
};

class ExpertStore {
 public:
  // Throws fm::Error when the model's experts are not in files the engine can read, or when the
  // cache cannot hold one layer's top-k experts plus one.
  ExpertStore(const Model& model, const StreamOptions& options, int top_k);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  int slots() const { return int(slots_.size()); }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint64_t expert_bytes() const { return expert_bytes_; }  // largest expert: gate + up + down

  // Starts demand reads for the experts of `layer` not cached or loading, and moves queued
  // prefetches among them to the front; prefetches of this layer not in `experts` are cancelled.
  void demand(int layer, std::span<const int32_t> experts);
  // Starts prefetch reads (lower priority) for those not cached or loading, while slots allow
  // without evicting anything pinned, demanded for the current layer, or loading.
  void prefetch(int layer, std::span<const int32_t> experts);
  // Waits for the expert (reading it now if it was neither demanded nor prefetched) and pins it;
  // the weights point into its slot until release(). A failed read is an fm::Error naming the
  // file; the slot is then freed and the store stays usable.
  FfnWeights acquire(int layer, int expert);
  // Unpins; once unpinned the expert no longer counts as demanded by the current layer.
  void release(int layer, int expert);
  // True if the expert is in a slot and its read has completed (acquire would not block).
  bool ready(int layer, int expert);
  // True if the expert is in a slot, read or being read.
  bool cached(int layer, int expert) const;

  ExpertStoreStats stats() const { return stats_; }
  io::IoStats io_stats() const { return io_->stats(); }
  io::IoEngine& io() { return *io_; }

 private:
  struct Location {  // of one expert's gate, up and down in the files
    int file[3] = {-1, -1, -1};
    uint64_t offset[3] = {};
  };
  struct LayerParts {  // per layer (types may differ between layers, shapes do not)
    Mat proto[3];             // gate, up, down: type and shape, data unset
    uint64_t slot_offset[3];  // where each part's padded range starts in a slot
  };
  enum class State : uint8_t { Free, Loading, Ready };
  struct Slot {
    int64_t key = -1;  // layer * E + expert
    State state = State::Free;
    bool prefetched = false;  // filled by a prefetch and not used since
    bool demanded = false;    // wanted by the current layer's computation
    int pins = 0;
    io::JobId job = 0;
    uint64_t last_use = 0;
    std::byte* buffer = nullptr;
  };

  int64_t key(int layer, int expert) const { return int64_t(layer) * n_experts_ + expert; }
  double frequency(int64_t key) const;  // the key's use count, decayed to the current clock
  int find_victim();
  int start_read(int layer, int expert, io::Priority priority);
  void complete(Slot& slot);
  void free_slot(Slot& slot);

  const Model& model_;
  StreamOptions options_;
  int n_experts_ = 0;
  int n_layers_ = 0;
  std::unique_ptr<io::IoEngine> io_;
  std::vector<Location> locations_;  // [layer * E + expert]
  std::vector<LayerParts> parts_;    // [layer]
  uint64_t slot_bytes_ = 0, expert_bytes_ = 0;
  std::vector<Slot> slots_;
  std::vector<int32_t> slot_of_;     // [layer * E + expert] -> slot or -1
  // LFU: how often each expert was used, cached or not, halved every half_life_ uses of any expert.
  std::vector<float> freq_;          // [layer * E + expert], as of freq_clock_
  std::vector<uint64_t> freq_clock_;
  double half_life_ = 0;
  int current_layer_ = -1;
  uint64_t clock_ = 0;
  ExpertStoreStats stats_;
};

}  // namespace fm
