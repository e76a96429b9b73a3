#include "formats/gguf_writer.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include "util/error.h"

namespace fm {

namespace {

// llama.cpp's GGML_MAX_NAME: it rejects tensor names of this many bytes or more.
constexpr size_t kMaxTensorName = 64;
constexpr uint64_t kMaxNumel = uint64_t(1) << 62;
constexpr uint64_t kMaxDataBytes = uint64_t(1) << 63;

uint64_t padded(uint64_t n, uint64_t alignment) { return n + (alignment - n % alignment) % alignment; }

// The header is assembled in memory (it is small next to the tensors) and written in one piece.
class Encoder {
 public:
  template <class T>
  void pod(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void string(const std::string& s) {
    pod(uint64_t(s.size()));
    out_ += s;
  }
  // The value without its type id.
  void value(const GgufValue& v) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>)
            string(x);
          else if constexpr (std::is_same_v<T, GgufArray>)
            array(x);
          else if constexpr (std::is_same_v<T, bool>)
            pod(uint8_t(x));
          else
            pod(x);
        },
        v.data);
  }
  void array(const GgufArray& a) {
    pod(uint32_t(a.elem_type()));
    pod(uint64_t(a.size()));
    std::visit(
        [&](const auto& items) {
          using T = typename std::decay_t<decltype(items)>::value_type;
          if constexpr (std::is_same_v<T, std::string>) {
            for (const std::string& s : items) string(s);
          } else if constexpr (std::is_same_v<T, bool>) {
            for (bool b : items) pod(uint8_t(b));
          } else if constexpr (std::is_same_v<T, GgufArray>) {
            FM_CHECK(false, "arrays of arrays are refused by GgufWriter::set");
          } else if (!items.empty()) {
            out_.append(reinterpret_cast<const char*>(items.data()), items.size() * sizeof(T));
          }
        },
        a.items);
  }
  void pad_to(uint64_t alignment) { out_.append(padded(out_.size(), alignment) - out_.size(), '\0'); }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

}  // namespace

GgufWriter::GgufWriter(std::filesystem::path path, uint32_t alignment)
    : path_(std::move(path)), alignment_(alignment) {
  if (alignment == 0 || !std::has_single_bit(alignment))
    fail("{}: alignment {} is not a nonzero power of two", path_.string(), alignment);
  if (alignment != kGgufDefaultAlignment) {
    metadata_.push_back(GgufKv{"general.alignment", GgufValue{alignment}});
    keys_.insert("general.alignment");
  }
}

GgufWriter::~GgufWriter() = default;

void GgufWriter::set(const std::string& key, GgufValue value) {
  FM_CHECK(!file_, "set after begin_data");
  const std::string path = path_.string();
  if (key.empty()) fail("{}: empty metadata key", path);
  if (key == "general.alignment")
    fail("{}: metadata key 'general.alignment' is set through the GgufWriter constructor", path);
  if (keys_.count(key) != 0) fail("{}: metadata key '{}' set twice", path, key);
  if (const auto* array = std::get_if<GgufArray>(&value.data); array && array->elem_type() == GgufType::ARRAY)
    fail("{}: metadata key '{}': arrays of arrays cannot be read by llama.cpp", path, key);
  keys_.insert(key);
  metadata_.push_back(GgufKv{key, std::move(value)});
}

void GgufWriter::declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  FM_CHECK(!file_, "declare after begin_data");
  const std::string path = path_.string();
  if (name.size() >= kMaxTensorName)
    fail("{}: tensor '{}': a name of {} bytes is too long for llama.cpp (at most {})", path, name,
         name.size(), kMaxTensorName - 1);
  if (names_.count(name) != 0) fail("{}: tensor '{}' declared twice", path, name);
  const DTypeInfo& info = dtype_info(dtype);
  if (info.ggml_type < 0) fail("{}: tensor '{}': {} has no GGML type", path, name, info.name);
  if (shape.empty() || shape.size() > kGgufMaxDims)
    fail("{}: tensor '{}': shape {} has rank {}, expected 1 to {}", path, name, shape_str(shape),
         shape.size(), kGgufMaxDims);

  std::vector<uint64_t> ne;
  uint64_t numel = 1;
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) {
    if (*it < 0) fail("{}: tensor '{}': shape {} has a negative dimension", path, name, shape_str(shape));
    const auto d = uint64_t(*it);
    if (d > kMaxNumel || (d != 0 && numel > kMaxNumel / d))
      fail("{}: tensor '{}': shape {} has too many elements", path, name, shape_str(shape));
    numel *= d;
    ne.push_back(d);
  }
  const std::optional<uint64_t> row = dtype_row_bytes(dtype, ne[0]);
  if (!row)
    fail("{}: tensor '{}': innermost dimension {} is not a multiple of the {} block size {}", path, name,
         ne[0], info.name, info.block);
  // Keeping each tensor under 2^62 bytes and the sum under 2^63 leaves the offset arithmetic no room to wrap.
  if (numel / uint64_t(info.block) > kMaxNumel / uint64_t(info.block_bytes))
    fail("{}: tensor '{}': shape {} of {} is too large", path, name, shape_str(shape), info.name);
  const uint64_t nbytes = numel / uint64_t(info.block) * uint64_t(info.block_bytes);
  if (padded(nbytes, alignment_) > kMaxDataBytes - data_size_)
    fail("{}: tensor '{}': the tensors add up to more than {} bytes", path, name, kMaxDataBytes);

  names_.insert(name);
  entries_.push_back(Entry{name, uint32_t(info.ggml_type), std::move(ne), data_size_, nbytes});
  data_size_ += padded(nbytes, alignment_);
}

void GgufWriter::begin_data() {
  FM_CHECK(!file_, "begin_data twice");
  Encoder enc;
  enc.pod(uint32_t(0x46554747));  // "GGUF" read as a little-endian u32
  enc.pod(uint32_t(3));
  enc.pod(uint64_t(entries_.size()));
  enc.pod(uint64_t(metadata_.size()));
  for (const GgufKv& kv : metadata_) {
    enc.string(kv.key);
    enc.pod(uint32_t(kv.value.type()));
    enc.value(kv.value);
  }
  for (const Entry& e : entries_) {
    enc.string(e.name);
    enc.pod(uint32_t(e.ne.size()));
    for (uint64_t d : e.ne) enc.pod(d);
    enc.pod(e.ggml_type);
    enc.pod(e.offset);
  }
  enc.pad_to(alignment_);

  file_.emplace(path_);
  write(enc.bytes().data(), enc.bytes().size());
  skip_finished_tensors();  // leading empty tensors
}

void GgufWriter::append(const void* data, uint64_t nbytes) {
  FM_CHECK(file_, "append before begin_data");
  const auto* p = static_cast<const std::byte*>(data);
  // A piece may end one tensor and start the next: split it at the boundaries, padding in between.
  while (nbytes > 0) {
    FM_CHECK(current_ < entries_.size(), "append past the declared tensors");
    const uint64_t n = std::min(nbytes, entries_[current_].nbytes - current_done_);
    write(p, n);
    p += n;
    nbytes -= n;
    current_done_ += n;
    skip_finished_tensors();
  }
}

void GgufWriter::skip_finished_tensors() {
  while (current_ < entries_.size() && current_done_ == entries_[current_].nbytes) {
    static constexpr char kZeros[256] = {};
    uint64_t pad = padded(current_done_, alignment_) - current_done_;
    while (pad > 0) {
      const uint64_t n = std::min<uint64_t>(pad, sizeof(kZeros));
      write(kZeros, n);
      pad -= n;
    }
    ++current_;
    current_done_ = 0;
  }
}

void GgufWriter::write(const void* data, uint64_t nbytes) { file_->write(data, nbytes); }

void GgufWriter::finish() {
  FM_CHECK(file_ && current_ == entries_.size(), "finish with {} of {} tensors written", current_,
           entries_.size());
  file_->commit();
  file_.reset();
}

}  // namespace fm
