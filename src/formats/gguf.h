// GGUF reader (llama.cpp's model format), versions 2 and 3, little-endian.
// Layout: "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count metadata entries (string key,
// u32 value type, value); tensor_count tensor infos (string name, u32 n_dims, u64 ne[n_dims], u32 ggml
// type, u64 offset); then the data section, starting at the next multiple of general.alignment (u32,
// default 32), with each tensor's offset relative to it. Strings are a u64 length and the bytes.
// The whole header is validated before anything is returned: every length against the bytes left,
// every tensor's type, size, alignment, bounds, and no two tensors overlapping. Errors name the file
// and the key or tensor at fault.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "formats/tensor.h"
#include "util/mapped_file.h"

namespace fm {

// Metadata value types; the numbering is GGUF's (gguf.h enum gguf_type).
enum class GgufType : uint32_t { U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };
inline constexpr uint32_t kNumGgufTypes = uint32_t(GgufType::F64) + 1;
std::string_view gguf_type_name(GgufType t);  // "uint32", "string", "array", ...

inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr uint32_t kGgufMaxDims = 4;  // GGML_MAX_DIMS

// An array of one element type. Alternative i of `items` holds elements of GgufType i, so the element
// type is the variant's index; arrays of arrays (which gguf-py writes, llama.cpp does not) nest.
struct GgufArray {
  using Items =
      std::variant<std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>, std::vector<int16_t>,
                   std::vector<uint32_t>, std::vector<int32_t>, std::vector<float>, std::vector<bool>,
                   std::vector<std::string>, std::vector<GgufArray>, std::vector<uint64_t>,
                   std::vector<int64_t>, std::vector<double>>;
  Items items;

  GgufType elem_type() const { return GgufType(items.index()); }
  size_t size() const {
    return std::visit([](const auto& v) { return v.size(); }, items);
  }
  bool operator==(const GgufArray&) const = default;
};

// One metadata value; alternative i holds a value of GgufType i.
struct GgufValue {
  using Data = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                            GgufArray, uint64_t, int64_t, double>;
  Data data;

  GgufType type() const { return GgufType(data.index()); }
  bool operator==(const GgufValue&) const = default;
};

// "uint32", or "array of string" for arrays; used in type mismatch messages.
std::string gguf_value_type_str(const GgufValue& v);

struct GgufKv {
  std::string key;
  GgufValue value;
};

struct GgufTensor {
  TensorView view;           // shape in PyTorch order: ne reversed
  std::vector<uint64_t> ne;  // GGML order, innermost (contiguous) dimension first
  uint32_t ggml_type = 0;
  uint64_t offset = 0;  // relative to the start of the data section

  const std::string& name() const { return view.name; }
};

class GgufFile {
 public:
  // Maps the file and parses it; tensor data stays in the mapping.
  static GgufFile open(const std::filesystem::path& path);
  // Parses a GGUF image already in memory. `bytes` must outlive the result; `name` stands for the file
  // in messages and in TensorView::file. This is open() without the mapping, for fuzzing and tests.
  static GgufFile parse(std::span<const std::byte> bytes, std::string name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // where the data section starts in the file
  const MappedFile& mapping() const { return file_; }     // empty for parse()

  // Metadata in file order.
  const std::vector<GgufKv>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;

  // Typed access. get_* throws "<file>: metadata key '<key>' missing" when absent; try_* returns nullopt
  // then. Both throw when the key is present with a type that does not convert:
  //   u64 / i64: any integer type whose value fits; f64: any integer or float type;
  //   int_array: an array of any integer type whose elements fit int64; f32_array: of any numeric type.
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  double get_f64(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::string get_string(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;

  std::optional<uint64_t> try_u64(std::string_view key) const;
  std::optional<int64_t> try_i64(std::string_view key) const;
  std::optional<double> try_f64(std::string_view key) const;
  std::optional<bool> try_bool(std::string_view key) const;
  std::optional<std::string> try_string(std::string_view key) const;
  std::optional<std::vector<int64_t>> try_int_array(std::string_view key) const;
  std::optional<std::vector<std::string>> try_string_array(std::string_view key) const;
  std::optional<std::vector<float>> try_f32_array(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  // Throws fm::Error "<file>: tensor '<name>' not found" when absent.
  const GgufTensor& get_tensor(std::string_view name) const;

 private:
  friend class GgufParser;
  const GgufValue& require(std::string_view key) const;
  [[noreturn]] void type_error(std::string_view key, const GgufValue& v, std::string_view expected) const;
  uint64_t to_u64(std::string_view key, const GgufValue& v) const;
  int64_t to_i64(std::string_view key, const GgufValue& v) const;
  double to_f64(std::string_view key, const GgufValue& v) const;
  bool to_bool(std::string_view key, const GgufValue& v) const;
  std::string to_string(std::string_view key, const GgufValue& v) const;
  std::vector<int64_t> to_int_array(std::string_view key, const GgufValue& v) const;
  std::vector<std::string> to_string_array(std::string_view key, const GgufValue& v) const;
  std::vector<float> to_f32_array(std::string_view key, const GgufValue& v) const;

  MappedFile file_;  // empty for parse()
  std::string path_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> metadata_;
  std::map<std::string, size_t, std::less<>> metadata_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace fm
