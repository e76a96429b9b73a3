// The saved log-probs of a reference run (flashmoe perplexity --save-logits / --kl-base).
//
// File layout, little-endian, no padding:
//   header (64 bytes)
//     char[8]  magic "FMLOGPRB"
//     u32      version = 1
//     i32      ctx, vocab, chunks, bos (-1: none)
//     u32      0 (reserved)
//     u64      text_hash (FNV-1a 64 of the text, 0: not known)
//     u64      rows = chunks * (ctx - 1 - ctx/2)
//     u64      payload checksum: FNV-1a 64 of every byte after the header
//     u64      0 (reserved)
//   i32 tokens[chunks * ctx]     the windows' tokens, as in the text
//   f32 row_scale[rows]          log p(v) = row_min + row_scale * q[v]
//   f32 row_min[rows]            log p at the floor max - 16 (or the row's minimum, if above)
//   f32 nll[rows]                exact -log p(target)
//   i32 top1[rows]               exact argmax
//   u16 q[rows][vocab]           quantised log p
// A row costs 2 * vocab + 16 bytes: 24.6 KB with the default model's 12,288 tokens, 496 KB with
// Qwen3.5's 248,320.
#include <cstring>
#include <fstream>

#include "eval/perplexity.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fm {

namespace {

constexpr char kMagic[8] = {'F', 'M', 'L', 'O', 'G', 'P', 'R', 'B'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 64;

struct Header {
  char magic[8];
  uint32_t version;
  int32_t ctx, vocab, chunks, bos;
  uint32_t reserved0;
  uint64_t text_hash;
  uint64_t rows;
  uint64_t checksum;
  uint64_t reserved1;
};
static_assert(sizeof(Header) == kHeaderBytes);

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
  }
};

template <class T>
void add_vec(Fnv& f, const std::vector<T>& v) {
  f.add(v.data(), v.size() * sizeof(T));
}

}  // namespace

float BaseLogProbs::log_prob(int64_t row, int32_t v) const {
  FM_CHECK(row >= 0 && row < rows() && v >= 0 && v < vocab, "row {} v {}", row, v);
  return row_min[size_t(row)] + row_scale[size_t(row)] * float(q[size_t(row) * size_t(vocab) + size_t(v)]);
}

void BaseLogProbs::save(const std::filesystem::path& path) const {
  const size_t n_rows = size_t(rows());
  FM_CHECK(ctx >= 4 && vocab > 0 && chunks > 0, "saving empty log-probs (ctx {}, vocab {}, chunks {})", ctx,
           vocab, chunks);
  FM_CHECK(tokens.size() == size_t(chunks) * size_t(ctx) && row_scale.size() == n_rows &&
               row_min.size() == n_rows && nll.size() == n_rows && top1.size() == n_rows &&
               q.size() == n_rows * size_t(vocab),
           "inconsistent log-probs ({} rows)", n_rows);
  Fnv fnv;
  add_vec(fnv, tokens);
  add_vec(fnv, row_scale);
  add_vec(fnv, row_min);
  add_vec(fnv, nll);
  add_vec(fnv, top1);
  add_vec(fnv, q);
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.ctx = ctx;
  h.vocab = vocab;
  h.chunks = chunks;
  h.bos = bos;
  h.text_hash = text_hash;
  h.rows = n_rows;
  h.checksum = fnv.h;
  AtomicFile out(path);
  out.write(&h, sizeof h);
  out.write(tokens.data(), tokens.size() * sizeof(int32_t));
  out.write(row_scale.data(), n_rows * sizeof(float));
  out.write(row_min.data(), n_rows * sizeof(float));
  out.write(nll.data(), n_rows * sizeof(float));
  out.write(top1.data(), n_rows * sizeof(int32_t));
  out.write(q.data(), q.size() * sizeof(uint16_t));
  out.commit();
}

BaseLogProbs BaseLogProbs::load(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the base log-probs file", name);
  in.seekg(0, std::ios::end);
  const uint64_t size = uint64_t(in.tellg());
  in.seekg(0);
  Header h{};
  if (size < kHeaderBytes || !in.read(reinterpret_cast<char*>(&h), sizeof h))
    fail("{}: too short ({} bytes) to be a flashmoe log-probs file", name, size);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
    fail("{}: not a flashmoe log-probs file (written by flashmoe perplexity --save-logits)", name);
  if (h.version != kVersion)
    fail("{}: log-probs file version {}, this flashmoe reads version {}", name, h.version, kVersion);
  if (h.ctx < 4 || h.vocab <= 0 || h.chunks <= 0 || h.bos < -1 || h.bos >= h.vocab)
    fail("{}: bad header (ctx {}, vocab {}, chunks {}, bos {})", name, h.ctx, h.vocab, h.chunks, h.bos);
  BaseLogProbs b;
  b.ctx = h.ctx;
  b.vocab = h.vocab;
  b.chunks = h.chunks;
  b.bos = h.bos;
  b.text_hash = h.text_hash;
  const uint64_t n_rows = uint64_t(b.rows());
  if (h.rows != n_rows)
    fail("{}: header says {} rows, ctx {} and {} chunks make {}", name, h.rows, h.ctx, h.chunks, n_rows);
  const uint64_t n_tokens = uint64_t(h.chunks) * uint64_t(h.ctx);
  // Sizes are bounded by the header's 32-bit fields, so this cannot overflow 64 bits.
  const uint64_t expected =
      kHeaderBytes + n_tokens * 4 + n_rows * (4 + 4 + 4 + 4) + n_rows * uint64_t(h.vocab) * 2;
  if (size != expected)
    fail("{}: {} bytes, the header (ctx {}, vocab {}, chunks {}) needs {}: truncated or corrupt", name, size,
         h.ctx, h.vocab, h.chunks, expected);
  auto read = [&](auto& vec, uint64_t count) {
    vec.resize(size_t(count));
    if (!in.read(reinterpret_cast<char*>(vec.data()), std::streamsize(count * sizeof(vec[0]))))
      fail("{}: read failed", name);
  };
  read(b.tokens, n_tokens);
  read(b.row_scale, n_rows);
  read(b.row_min, n_rows);
  read(b.nll, n_rows);
  read(b.top1, n_rows);
  read(b.q, n_rows * uint64_t(h.vocab));
  Fnv fnv;
  add_vec(fnv, b.tokens);
  add_vec(fnv, b.row_scale);
  add_vec(fnv, b.row_min);
  add_vec(fnv, b.nll);
  add_vec(fnv, b.top1);
  add_vec(fnv, b.q);
  if (fnv.h != h.checksum) fail("{}: checksum mismatch: the file is corrupt", name);
  for (uint64_t i = 0; i < n_tokens; ++i)
    if (b.tokens[i] < 0 || b.tokens[i] >= b.vocab)
      fail("{}: token {} is {}, outside the vocabulary", name, i, b.tokens[i]);
  for (uint64_t r = 0; r < n_rows; ++r)
    if (b.top1[r] < 0 || b.top1[r] >= b.vocab)
      fail("{}: row {} has argmax {}, outside the vocabulary", name, r, b.top1[r]);
  return b;
}

}  // namespace fm
