#include "formats/gguf.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "util/error.h"

namespace fm {

// Values are copied out of the file with memcpy, which is only a decode on a little-endian host.
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {

constexpr std::array<std::string_view, kNumGgufTypes> kTypeNames = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64"};

constexpr uint64_t kHeaderBytes = 24;  // magic, version, tensor_count, kv_count
// The smallest possible encodings: a metadata entry with an empty key and a one-byte value
// (8 + 4 + 1), a tensor info with an empty name and one dimension (8 + 4 + 8 + 4 + 8), and an array
// element that is itself an empty array (4 + 8). Counts are checked against them before any reserve().
constexpr uint64_t kMinKvBytes = 13;
constexpr uint64_t kMinTensorInfoBytes = 32;
constexpr uint64_t kMinNestedArrayBytes = 12;
// Element counts above this are not real tensors, and keeping numel (and numel x bytes per element,
// checked separately) inside uint64 lets the size arithmetic stay overflow-free.
constexpr uint64_t kMaxNumel = uint64_t(1) << 62;
// gguf-py nests arrays (llama.cpp does not); a bound keeps a hostile file from recursing without end.
constexpr int kMaxArrayDepth = 8;

template <class T>
constexpr bool kIsInteger = std::is_integral_v<T> && !std::is_same_v<T, bool>;
template <class T>
constexpr bool kIsNumber = kIsInteger<T> || std::is_floating_point_v<T>;

// Calls f(std::integral_constant<size_t, I>) for the I == index; the parser and the writer use it to
// turn a runtime type id into the matching variant alternative.
template <class F, size_t... I>
void dispatch_type(size_t index, F&& f, std::index_sequence<I...>) {
  ((index == I ? (f(std::integral_constant<size_t, I>{}), 0) : 0), ...);
}

// The magic as the user would see it: printable bytes as they are, others as \xNN.
std::string printable(const std::byte* p, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(p[i]);
    if (c >= 0x20 && c < 0x7f)
      out += char(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

}  // namespace

std::string_view gguf_type_name(GgufType t) {
  FM_CHECK(uint32_t(t) < kNumGgufTypes, "GGUF type {}", uint32_t(t));
  return kTypeNames[size_t(t)];
}

std::string gguf_value_type_str(const GgufValue& v) {
  if (const auto* array = std::get_if<GgufArray>(&v.data))
    return fmt::format("array of {}", gguf_type_name(array->elem_type()));
  return std::string(gguf_type_name(v.type()));
}

// Walks the header once, front to back. Every read checks the bytes left first, so a corrupt length
// is reported (naming the key or tensor being read) instead of being trusted.
class GgufParser {
 public:
  GgufParser(std::span<const std::byte> bytes, GgufFile& out)
      : base_(bytes.data()), size_(bytes.size()), out_(out), path_(out.path_) {}

  void run() {
    parse_preamble();
    parse_metadata();
    parse_alignment();
    parse_tensor_infos();
    place_tensors();
  }

 private:
  struct Pending {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t ggml_type;
    DType dtype;
    uint64_t offset, nbytes;
  };

  uint64_t remaining() const { return size_ - pos_; }

  template <class... Args>
  [[noreturn]] void error(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}: {}: {}", path_, subject_, fmt::format(format, std::forward<Args>(args)...));
  }

  [[noreturn]] void truncated(std::string_view what) const {
    error("truncated: {} at offset {} runs past the end of the file ({} bytes)", what, pos_, size_);
  }

  template <class T>
  T read(std::string_view what) {
    if (sizeof(T) > remaining()) truncated(what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    const uint64_t start = pos_;
    const auto len = read<uint64_t>(what);
    if (len > remaining())
      error("truncated: {} of {} bytes at offset {} runs past the end of the file ({} bytes)", what, len,
            start, size_);
    std::string s(reinterpret_cast<const char*>(base_ + pos_), size_t(len));
    pos_ += len;
    return s;
  }

  GgufType read_type(std::string_view what) {
    const uint64_t start = pos_;
    const auto id = read<uint32_t>(what);
    if (id >= kNumGgufTypes) error("invalid {} {} at offset {}", what, id, start);
    return GgufType(id);
  }

  template <class T>
  T read_scalar() {
    if constexpr (std::is_same_v<T, bool>) {
      // Only 0 and 1 are ever written; anything else is corruption, not a truthy value.
      const uint64_t start = pos_;
      const auto b = read<uint8_t>("bool value");
      if (b > 1) error("bool value {} at offset {} is neither 0 nor 1", b, start);
      return b == 1;
    } else {
      return read<T>("value");
    }
  }

  GgufValue read_value(GgufType type) {
    GgufValue value;
    dispatch_type(
        size_t(type),
        [&](auto index) {
          using T = std::variant_alternative_t<decltype(index)::value, GgufValue::Data>;
          if constexpr (std::is_same_v<T, std::string>)
            value.data.emplace<T>(read_string("string value"));
          else if constexpr (std::is_same_v<T, GgufArray>)
            value.data.emplace<T>(read_array(1));
          else
            value.data.emplace<T>(read_scalar<T>());
        },
        std::make_index_sequence<kNumGgufTypes>{});
    return value;
  }

  GgufArray read_array(int depth) {
    if (depth > kMaxArrayDepth) error("arrays nested more than {} deep", kMaxArrayDepth);
    const GgufType elem = read_type("array element type");
    const uint64_t start = pos_;
    const auto count = read<uint64_t>("array length");
    GgufArray array;
    dispatch_type(
        size_t(elem),
        [&](auto index) {
          using T = typename std::variant_alternative_t<decltype(index)::value, GgufArray::Items>::value_type;
          // The smallest encoding of one element: a string's length, an empty array's type and count.
          constexpr uint64_t min_bytes = std::is_same_v<T, std::string> ? 8
                                         : std::is_same_v<T, GgufArray> ? kMinNestedArrayBytes
                                                                        : sizeof(T);
          // Checked before allocating: a huge count in a small file must not reserve gigabytes.
          if (count > remaining() / min_bytes)
            error("truncated: array of {} {} elements at offset {} runs past the end of the file ({} bytes)",
                  count, gguf_type_name(elem), start, size_);
          auto& items = array.items.emplace<std::vector<T>>();
          if constexpr (kIsNumber<T>) {
            items.resize(size_t(count));
            if (count > 0) std::memcpy(items.data(), base_ + pos_, size_t(count) * sizeof(T));
            pos_ += count * sizeof(T);
          } else {
            items.reserve(size_t(count));
            for (uint64_t i = 0; i < count; ++i) {
              if constexpr (std::is_same_v<T, std::string>)
                items.push_back(read_string("string array element"));
              else if constexpr (std::is_same_v<T, GgufArray>)
                items.push_back(read_array(depth + 1));
              else
                items.push_back(read_scalar<T>());
            }
          }
        },
        std::make_index_sequence<kNumGgufTypes>{});
    return array;
  }

  void parse_preamble() {
    subject_ = "header";
    if (size_ < 4) fail("{}: too short for a GGUF file ({} bytes)", path_, size_);
    if (std::memcmp(base_, "GGUF", 4) != 0)
      fail("{}: not a GGUF file: magic is '{}', expected 'GGUF'", path_, printable(base_, 4));
    if (size_ < kHeaderBytes)
      fail("{}: too short for a GGUF header ({} bytes, need {})", path_, size_, kHeaderBytes);
    pos_ = 4;
    const auto version = read<uint32_t>("version");
    if (version == 1)
      fail(
          "{}: GGUF version 1 is not supported (only 2 and 3); re-convert the model with a current llama.cpp",
          path_);
    // A big-endian file's version reads as 0x03000000 here: name the likely cause.
    if (version != 0 && (version & 0xffff) == 0)
      fail("{}: GGUF version {:#x} looks byte-swapped; big-endian GGUF files are not supported", path_,
           version);
    if (version != 2 && version != 3)
      fail("{}: unsupported GGUF version {} (supported: 2, 3)", path_, version);
    out_.version_ = version;

    const auto tensor_count = read<uint64_t>("tensor count");
    const auto kv_count = read<uint64_t>("metadata count");
    if (tensor_count > (size_ - kHeaderBytes) / kMinTensorInfoBytes)
      fail("{}: tensor count {} is impossible for a file of {} bytes (truncated or corrupt)", path_,
           tensor_count, size_);
    if (kv_count > (size_ - kHeaderBytes) / kMinKvBytes)
      fail("{}: metadata count {} is impossible for a file of {} bytes (truncated or corrupt)", path_,
           kv_count, size_);
    tensor_count_ = tensor_count;
    kv_count_ = kv_count;
  }

  void parse_metadata() {
    out_.metadata_.reserve(size_t(kv_count_));
    for (uint64_t i = 0; i < kv_count_; ++i) {
      subject_ = fmt::format("metadata entry {}", i);
      std::string key = read_string("key");
      if (key.empty()) error("empty key");
      subject_ = fmt::format("metadata key '{}'", key);
      if (out_.metadata_index_.count(key) != 0) error("defined twice");
      const GgufType type = read_type("value type");
      GgufValue value = read_value(type);
      out_.metadata_index_.emplace(key, out_.metadata_.size());
      out_.metadata_.push_back(GgufKv{std::move(key), std::move(value)});
    }
  }

  void parse_alignment() {
    const GgufValue* v = out_.find("general.alignment");
    if (v == nullptr) return;
    subject_ = "metadata key 'general.alignment'";
    // llama.cpp insists on uint32 here, so a file with another type would not load there either.
    const auto* alignment = std::get_if<uint32_t>(&v->data);
    if (alignment == nullptr) error("has type {}, expected uint32", gguf_value_type_str(*v));
    if (*alignment == 0 || !std::has_single_bit(*alignment))
      error("alignment {} is not a nonzero power of two", *alignment);
    out_.alignment_ = *alignment;
  }

  void parse_tensor_infos() {
    pending_.reserve(size_t(tensor_count_));
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      subject_ = fmt::format("tensor info {}", i);
      Pending t;
      t.name = read_string("name");
      subject_ = fmt::format("tensor '{}'", t.name);
      // Indexed now, in file order, so a duplicate is caught before its info is read.
      if (!out_.tensor_index_.emplace(t.name, size_t(i)).second) error("duplicate tensor name");

      const auto n_dims = read<uint32_t>("dimension count");
      if (n_dims == 0 || n_dims > kGgufMaxDims)
        error("has {} dimensions, expected 1 to {}", n_dims, kGgufMaxDims);
      uint64_t numel = 1;
      bool too_big = false;
      for (uint32_t d = 0; d < n_dims; ++d) {
        t.ne.push_back(read<uint64_t>("dimensions"));
        // Checked before multiplying so the running product never wraps.
        const uint64_t n = t.ne.back();
        too_big = too_big || n > kMaxNumel || (n != 0 && numel > kMaxNumel / n);
        if (!too_big) numel *= n;
      }
      if (too_big) error("ne [{}] has too many elements", fmt::join(t.ne, ", "));

      const uint64_t type_pos = pos_;
      t.ggml_type = read<uint32_t>("type");
      const std::optional<DType> dtype = dtype_from_ggml(t.ggml_type);
      if (!dtype) error("ggml type {} at offset {} is unknown or not supported", t.ggml_type, type_pos);
      t.dtype = *dtype;
      const DTypeInfo& info = dtype_info(t.dtype);
      if (!dtype_row_bytes(t.dtype, t.ne[0]))
        error("ne[0] = {} is not a multiple of the {} block size {}", t.ne[0], info.name, info.block);
      // numel <= 2^62 with up to 292 bytes per block could still wrap: check the product fits first.
      if (numel / uint64_t(info.block) > std::numeric_limits<uint64_t>::max() / uint64_t(info.block_bytes))
        error("ne [{}] of {} is too large", fmt::join(t.ne, ", "), info.name);
      t.nbytes = numel / uint64_t(info.block) * uint64_t(info.block_bytes);

      t.offset = read<uint64_t>("data offset");
      if (t.offset % out_.alignment_ != 0)
        error("data offset {} is misaligned (not a multiple of the alignment {})", t.offset, out_.alignment_);
      pending_.push_back(std::move(t));
    }
  }

  void place_tensors() {
    // The data section starts at the next multiple of the alignment, which may lie past the end of a
    // file holding no tensor bytes.
    const uint64_t align = out_.alignment_;
    out_.data_offset_ = pos_ + (align - pos_ % align) % align;
    const uint64_t data_size = size_ > out_.data_offset_ ? size_ - out_.data_offset_ : 0;

    struct Range {
      uint64_t begin, end;
      const std::string* name;
    };
    std::vector<Range> ranges;
    for (const Pending& t : pending_) {
      subject_ = fmt::format("tensor '{}'", t.name);
      if (t.offset > data_size || t.nbytes > data_size - t.offset)
        error(
            "{} bytes at data offset {} run past the end of the file (data section of {} bytes at offset {})",
            t.nbytes, t.offset, data_size, out_.data_offset_);
      // Empty tensors occupy no bytes and cannot collide with anything.
      if (t.nbytes > 0) ranges.push_back({t.offset, t.offset + t.nbytes, &t.name});
    }
    // Sorted by begin, a range must start at or after the furthest end seen so far.
    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1, furthest = 0; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[furthest].end)
        fail("{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", path_, *ranges[furthest].name,
             ranges[furthest].begin, ranges[furthest].end, *ranges[i].name, ranges[i].begin, ranges[i].end);
      if (ranges[i].end > ranges[furthest].end) furthest = i;
    }

    out_.tensors_.reserve(pending_.size());
    for (Pending& t : pending_) {
      GgufTensor g;
      g.view.name = std::move(t.name);
      g.view.dtype = t.dtype;
      for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) g.view.shape.push_back(int64_t(*it));
      // An empty tensor may sit at the very end, where even forming the pointer would be out of range.
      g.view.data = t.nbytes > 0 ? base_ + out_.data_offset_ + t.offset : nullptr;
      g.view.nbytes = t.nbytes;
      g.view.file = path_;
      g.ne = std::move(t.ne);
      g.ggml_type = t.ggml_type;
      g.offset = t.offset;
      out_.tensors_.push_back(std::move(g));
    }
  }

  const std::byte* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  GgufFile& out_;
  const std::string& path_;
  std::string subject_;  // what is being read, for messages: "metadata key 'x'", "tensor 'y'"
  uint64_t tensor_count_ = 0, kv_count_ = 0;
  std::vector<Pending> pending_;
};

GgufFile GgufFile::parse(std::span<const std::byte> bytes, std::string name) {
  GgufFile f;
  f.path_ = std::move(name);
  GgufParser(bytes, f).run();
  return f;
}

GgufFile GgufFile::open(const std::filesystem::path& path) {
  MappedFile mapped(path);
  GgufFile f = parse({mapped.data(), size_t(mapped.size())}, mapped.path());
  // Moving the mapping keeps its address, so the views parse() made stay valid.
  f.file_ = std::move(mapped);
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].value;
}

const GgufValue& GgufFile::require(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) fail("{}: metadata key '{}' missing", path_, key);
  return *v;
}

void GgufFile::type_error(std::string_view key, const GgufValue& v, std::string_view expected) const {
  fail("{}: metadata key '{}' has type {}, expected {}", path_, key, gguf_value_type_str(v), expected);
}

uint64_t GgufFile::to_u64(std::string_view key, const GgufValue& v) const {
  return std::visit(
      [&](const auto& x) -> uint64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (kIsInteger<T>) {
          if constexpr (std::is_signed_v<T>)
            if (x < 0) fail("{}: metadata key '{}' is {}, expected a non-negative integer", path_, key, x);
          return uint64_t(x);
        } else {
          type_error(key, v, "an integer");
        }
      },
      v.data);
}

int64_t GgufFile::to_i64(std::string_view key, const GgufValue& v) const {
  return std::visit(
      [&](const auto& x) -> int64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (kIsInteger<T>) {
          if constexpr (std::is_same_v<T, uint64_t>)
            if (x > uint64_t(std::numeric_limits<int64_t>::max()))
              fail("{}: metadata key '{}' is {}, which does not fit int64", path_, key, x);
          return int64_t(x);
        } else {
          type_error(key, v, "an integer");
        }
      },
      v.data);
}

double GgufFile::to_f64(std::string_view key, const GgufValue& v) const {
  return std::visit(
      [&](const auto& x) -> double {
        using T = std::decay_t<decltype(x)>;
        if constexpr (kIsNumber<T>)
          return double(x);
        else
          type_error(key, v, "a number");
      },
      v.data);
}

bool GgufFile::to_bool(std::string_view key, const GgufValue& v) const {
  const auto* b = std::get_if<bool>(&v.data);
  if (b == nullptr) type_error(key, v, "bool");
  return *b;
}

std::string GgufFile::to_string(std::string_view key, const GgufValue& v) const {
  const auto* s = std::get_if<std::string>(&v.data);
  if (s == nullptr) type_error(key, v, "string");
  return *s;
}

std::vector<int64_t> GgufFile::to_int_array(std::string_view key, const GgufValue& v) const {
  const auto* array = std::get_if<GgufArray>(&v.data);
  if (array == nullptr) type_error(key, v, "an array of integers");
  return std::visit(
      [&](const auto& items) -> std::vector<int64_t> {
        using T = typename std::decay_t<decltype(items)>::value_type;
        if constexpr (kIsInteger<T>) {
          std::vector<int64_t> out;
          out.reserve(items.size());
          for (size_t i = 0; i < items.size(); ++i) {
            if constexpr (std::is_same_v<T, uint64_t>)
              if (items[i] > uint64_t(std::numeric_limits<int64_t>::max()))
                fail("{}: metadata key '{}': element {} is {}, which does not fit int64", path_, key, i,
                     items[i]);
            out.push_back(int64_t(items[i]));
          }
          return out;
        } else {
          type_error(key, v, "an array of integers");
        }
      },
      array->items);
}

std::vector<std::string> GgufFile::to_string_array(std::string_view key, const GgufValue& v) const {
  const auto* array = std::get_if<GgufArray>(&v.data);
  const auto* items = array ? std::get_if<std::vector<std::string>>(&array->items) : nullptr;
  if (items == nullptr) type_error(key, v, "an array of strings");
  return *items;
}

std::vector<float> GgufFile::to_f32_array(std::string_view key, const GgufValue& v) const {
  const auto* array = std::get_if<GgufArray>(&v.data);
  if (array == nullptr) type_error(key, v, "an array of numbers");
  return std::visit(
      [&](const auto& items) -> std::vector<float> {
        using T = typename std::decay_t<decltype(items)>::value_type;
        if constexpr (kIsNumber<T>)
          return std::vector<float>(items.begin(), items.end());
        else
          type_error(key, v, "an array of numbers");
      },
      array->items);
}

uint64_t GgufFile::get_u64(std::string_view key) const { return to_u64(key, require(key)); }
int64_t GgufFile::get_i64(std::string_view key) const { return to_i64(key, require(key)); }
double GgufFile::get_f64(std::string_view key) const { return to_f64(key, require(key)); }
bool GgufFile::get_bool(std::string_view key) const { return to_bool(key, require(key)); }
std::string GgufFile::get_string(std::string_view key) const { return to_string(key, require(key)); }
std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  return to_int_array(key, require(key));
}
std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  return to_string_array(key, require(key));
}
std::vector<float> GgufFile::get_f32_array(std::string_view key) const {
  return to_f32_array(key, require(key));
}

// try_*: absent is nullopt; present with the wrong type is still an error.
std::optional<uint64_t> GgufFile::try_u64(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_u64(key, *v)) : std::nullopt;
}
std::optional<int64_t> GgufFile::try_i64(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_i64(key, *v)) : std::nullopt;
}
std::optional<double> GgufFile::try_f64(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_f64(key, *v)) : std::nullopt;
}
std::optional<bool> GgufFile::try_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_bool(key, *v)) : std::nullopt;
}
std::optional<std::string> GgufFile::try_string(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_string(key, *v)) : std::nullopt;
}
std::optional<std::vector<int64_t>> GgufFile::try_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_int_array(key, *v)) : std::nullopt;
}
std::optional<std::vector<std::string>> GgufFile::try_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_string_array(key, *v)) : std::nullopt;
}
std::optional<std::vector<float>> GgufFile::try_f32_array(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? std::optional(to_f32_array(key, *v)) : std::nullopt;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::get_tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  if (t == nullptr) fail("{}: tensor '{}' not found", path_, name);
  return *t;
}

}  // namespace fm
