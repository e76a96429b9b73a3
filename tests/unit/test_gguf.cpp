// GGUF reader and writer: round trips through our writer, the gguf-py reference file
// (tests/fixtures/gguf, made by tools/make_gguf_test_files.py), a file for gguf-py to check, and one
// test per kind of malformed input (each must be an fm::Error starting with the file path and naming
// the key or tensor at fault).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using fm::DType;
using fm::GgufArray;
using fm::GgufType;
using fm::GgufValue;
using nlohmann::json;

namespace {

using fm::test::TempDir;

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = uint8_t(gen());
  return out;
}

std::string hex(const std::byte* p, uint64_t n) {
  std::string out;
  for (uint64_t i = 0; i < n; ++i) out += fmt::format("{:02x}", uint8_t(p[i]));
  return out;
}

using fm::test::expect_error;

void expect_file_error(const fs::path& file, std::initializer_list<std::string> needles) {
  expect_error([&] { fm::GgufFile::open(file); }, needles, file.string());
}

// ---- GgufValue <-> the fixtures' JSON (schema in tools/make_gguf_test_files.py) ----

size_t type_index(const std::string& name) {
  for (uint32_t i = 0; i < fm::kNumGgufTypes; ++i)
    if (fm::gguf_type_name(GgufType(i)) == name) return i;
  throw std::runtime_error("unknown type name " + name);
}

GgufArray array_from_json(const json& j);

template <class T>
T item_from_json(const json& j) {
  if constexpr (std::is_same_v<T, GgufArray>)
    return array_from_json(j);
  else if constexpr (std::is_same_v<T, float>)
    return float(j.get<double>());  // the JSON holds the float32 value exactly
  else
    return j.get<T>();
}

template <size_t I = 0>
GgufValue value_from_json(size_t index, const json& j) {
  if constexpr (I < fm::kNumGgufTypes) {
    using T = std::variant_alternative_t<I, GgufValue::Data>;
    if (index == I) return GgufValue{item_from_json<T>(j)};
    return value_from_json<I + 1>(index, j);
  } else {
    throw std::runtime_error("bad type index");
  }
}

template <size_t I = 0>
GgufArray items_from_json(size_t index, const json& items) {
  if constexpr (I < fm::kNumGgufTypes) {
    using T = typename std::variant_alternative_t<I, GgufArray::Items>::value_type;
    if (index != I) return items_from_json<I + 1>(index, items);
    std::vector<T> v;
    for (const json& x : items) v.push_back(item_from_json<T>(x));
    return GgufArray{std::move(v)};
  } else {
    throw std::runtime_error("bad type index");
  }
}

GgufArray array_from_json(const json& j) {
  return items_from_json(type_index(j.at("elem_type").get<std::string>()), j.at("items"));
}

json array_to_json(const GgufArray& a);

template <class T>
json item_to_json(const T& x) {
  if constexpr (std::is_same_v<T, GgufArray>)
    return array_to_json(x);
  else
    return json(x);
}

json array_to_json(const GgufArray& a) {
  json items = json::array();
  std::visit(
      [&](const auto& v) {
        for (const auto& x : v) items.push_back(item_to_json(x));
      },
      a.items);
  return {{"elem_type", fm::gguf_type_name(a.elem_type())}, {"items", items}};
}

json value_to_json(const GgufValue& v) {
  return std::visit([](const auto& x) { return item_to_json(x); }, v.data);
}

// ---- a well-formed file through our writer ----

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Metadata of every type, including arrays of every non-array element type and an empty array.
std::vector<fm::GgufKv> all_metadata() {
  return {
      {"general.architecture", GgufValue{std::string("qwen35moe")}},
      {"t.u8", GgufValue{uint8_t(200)}},
      {"t.i8", GgufValue{int8_t(-100)}},
      {"t.u16", GgufValue{uint16_t(60000)}},
      {"t.i16", GgufValue{int16_t(-30000)}},
      {"t.u32", GgufValue{uint32_t(4000000000u)}},
      {"t.i32", GgufValue{int32_t(-2000000000)}},
      {"t.f32", GgufValue{1.5f}},
      {"t.bool", GgufValue{true}},
      {"t.string", GgufValue{std::string("h\xc3\xa9llo")}},
      {"t.empty_string", GgufValue{std::string()}},
      {"t.u64", GgufValue{std::numeric_limits<uint64_t>::max()}},
      {"t.i64", GgufValue{std::numeric_limits<int64_t>::min()}},
      {"t.f64", GgufValue{-0.125}},
      {"a.u8", GgufValue{GgufArray{std::vector<uint8_t>{1, 2, 255}}}},
      {"a.i8", GgufValue{GgufArray{std::vector<int8_t>{-1, 127}}}},
      {"a.u16", GgufValue{GgufArray{std::vector<uint16_t>{65535}}}},
      {"a.i16", GgufValue{GgufArray{std::vector<int16_t>{-5, 5}}}},
      {"a.u32", GgufValue{GgufArray{std::vector<uint32_t>{7, 8, 9}}}},
      {"a.i32", GgufValue{GgufArray{std::vector<int32_t>{-1, 0, 1}}}},
      {"a.f32", GgufValue{GgufArray{std::vector<float>{0.5f, -2.0f}}}},
      {"a.bool", GgufValue{GgufArray{std::vector<bool>{true, false, true}}}},
      {"a.string", GgufValue{GgufArray{std::vector<std::string>{"<s>", "", "\xe4\xbd\xa0"}}}},
      {"a.u64", GgufValue{GgufArray{std::vector<uint64_t>{std::numeric_limits<uint64_t>::max()}}}},
      {"a.i64", GgufValue{GgufArray{std::vector<int64_t>{-3, 4}}}},
      {"a.f64", GgufValue{GgufArray{std::vector<double>{1e300, -1e-300}}}},
      {"a.empty", GgufValue{GgufArray{std::vector<int32_t>{}}}},
  };
}

std::vector<TensorSpec> all_tensors() {
  auto spec = [](std::string name, DType dtype, std::vector<int64_t> shape, uint32_t seed) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= uint64_t(d);
    const uint64_t nbytes = *fm::dtype_row_bytes(dtype, n);
    return TensorSpec{std::move(name), dtype, std::move(shape), random_bytes(nbytes, seed)};
  };
  return {spec("blk.0.attn_norm.weight", DType::F32, {3, 5}, 1),
          spec("token_embd.weight", DType::F16, {4, 8}, 2),
          spec("blk.0.attn_q.weight", DType::BF16, {2, 3, 4}, 3),
          spec("blk.0.ffn_down_exps.weight", DType::Q8_0, {2, 3, 64}, 4),
          spec("blk.0.ffn_gate_exps.weight", DType::Q4_K, {2, 256}, 5),
          spec("empty", DType::F32, {0, 32}, 6),
          spec("ids", DType::I32, {7}, 7),
          spec("four_d", DType::F16, {1, 2, 3, 2}, 8)};
}

// Writes with our writer, appending the data in 7-byte pieces so pieces straddle tensor boundaries.
void write_with_writer(const fs::path& path, uint32_t alignment, const std::vector<fm::GgufKv>& metadata,
                       const std::vector<TensorSpec>& tensors) {
  fm::GgufWriter w(path, alignment);
  for (const fm::GgufKv& kv : metadata) w.set(kv.key, kv.value);
  for (const TensorSpec& t : tensors) w.declare(t.name, t.dtype, t.shape);
  w.begin_data();
  std::vector<uint8_t> all;
  for (const TensorSpec& t : tensors) all.insert(all.end(), t.bytes.begin(), t.bytes.end());
  for (size_t i = 0; i < all.size(); i += 7) w.append(all.data() + i, std::min<size_t>(7, all.size() - i));
  w.finish();
}

void check_round_trip(const fs::path& path, uint32_t alignment, const std::vector<fm::GgufKv>& metadata,
                      const std::vector<TensorSpec>& tensors) {
  const fm::GgufFile f = fm::GgufFile::open(path);
  EXPECT_EQ(f.path(), path.string());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);

  // The writer records a custom alignment as the first key.
  size_t first = 0;
  if (alignment != fm::kGgufDefaultAlignment) {
    ASSERT_GE(f.metadata().size(), 1u);
    EXPECT_EQ(f.metadata()[0].key, "general.alignment");
    EXPECT_EQ(f.metadata()[0].value, GgufValue{alignment});
    first = 1;
  }
  ASSERT_EQ(f.metadata().size(), metadata.size() + first);
  for (size_t i = 0; i < metadata.size(); ++i) {
    EXPECT_EQ(f.metadata()[first + i].key, metadata[i].key);
    EXPECT_TRUE(f.metadata()[first + i].value == metadata[i].value) << metadata[i].key;
    ASSERT_NE(f.find(metadata[i].key), nullptr);
  }

  ASSERT_EQ(f.tensors().size(), tensors.size());
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& spec = tensors[i];
    const fm::GgufTensor& t = f.tensors()[i];
    EXPECT_EQ(&f.get_tensor(spec.name), &t);
    EXPECT_EQ(t.name(), spec.name);
    EXPECT_EQ(t.view.dtype, spec.dtype);
    EXPECT_EQ(t.view.shape, spec.shape);
    EXPECT_EQ(t.view.file, path.string());
    EXPECT_EQ(t.ggml_type, uint32_t(fm::dtype_info(spec.dtype).ggml_type));
    const std::vector<uint64_t> ne(spec.shape.rbegin(), spec.shape.rend());
    EXPECT_EQ(t.ne, ne);
    // Back to back, each padded to the alignment: the layout llama.cpp insists on.
    EXPECT_EQ(t.offset, expected_offset) << spec.name;
    expected_offset += (spec.bytes.size() + alignment - 1) / alignment * alignment;
    ASSERT_EQ(t.view.nbytes, spec.bytes.size()) << spec.name;
    if (!spec.bytes.empty()) {
      EXPECT_EQ(std::memcmp(t.view.data, spec.bytes.data(), spec.bytes.size()), 0) << spec.name;
    }
  }
  EXPECT_EQ(fs::file_size(path), f.data_offset() + expected_offset);
}

// ---- raw bytes for malformed files ----

class Raw {
 public:
  Raw& u8(uint8_t v) { return pod(v); }
  Raw& u32(uint32_t v) { return pod(v); }
  Raw& u64(uint64_t v) { return pod(v); }
  Raw& str(const std::string& s) {
    u64(s.size());
    bytes_ += s;
    return *this;
  }
  Raw& raw(const std::string& s) {
    bytes_ += s;
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  template <class T>
  Raw& pod(T v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  std::string bytes_;
};

struct RawTensor {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;  // F32
  uint64_t offset = 0;
};

// A GGUF file assembled field by field: `kvs` are complete encoded entries (key, type, value).
std::string raw_gguf(const std::vector<std::string>& kvs, const std::vector<RawTensor>& tensors,
                     const std::string& data, uint32_t version = 3, uint32_t alignment = 32) {
  Raw r;
  r.raw("GGUF").u32(version).u64(tensors.size()).u64(kvs.size());
  for (const std::string& kv : kvs) r.raw(kv);
  for (const RawTensor& t : tensors) {
    r.str(t.name).u32(uint32_t(t.ne.size()));
    for (uint64_t d : t.ne) r.u64(d);
    r.u32(t.type).u64(t.offset);
  }
  std::string out = r.bytes();
  out.append((alignment - out.size() % alignment) % alignment, '\0');
  return out + data;
}

std::string kv_u32(const std::string& key, uint32_t v) { return Raw().str(key).u32(4).u32(v).bytes(); }
std::string kv_string(const std::string& key, const std::string& v) {
  return Raw().str(key).u32(8).str(v).bytes();
}

RawTensor f32_tensor(const std::string& name, std::vector<uint64_t> ne, uint64_t offset = 0) {
  return RawTensor{name, std::move(ne), 0, offset};
}

}  // namespace

// ---- round trips ----

class GgufRoundTrip : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufRoundTrip, AllTypes) {
  TempDir tmp;
  const uint32_t alignment = GetParam();
  write_with_writer(tmp / "m.gguf", alignment, all_metadata(), all_tensors());
  check_round_trip(tmp / "m.gguf", alignment, all_metadata(), all_tensors());
  // Nothing but the finished file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 1);
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufRoundTrip, ::testing::Values(32u, 64u, 1u, 4096u));

TEST(Gguf, TypedSetters) {
  TempDir tmp;
  const fs::path path = tmp / "s.gguf";
  {
    fm::GgufWriter w(path);
    w.set_u8("u8", 1);
    w.set_i8("i8", -2);
    w.set_u16("u16", 3);
    w.set_i16("i16", -4);
    w.set_u32("u32", 5);
    w.set_i32("i32", -6);
    w.set_u64("u64", 7);
    w.set_i64("i64", -8);
    w.set_f32("f32", 9.5f);
    w.set_f64("f64", -10.25);
    w.set_bool("bool", false);
    w.set_string("string", "eleven");
    w.set_array("strings", std::vector<std::string>{"x", "y"});
    w.set_array("ints", std::vector<int32_t>{12, -13});
    w.set_array("floats", std::vector<float>{14.5f});
    w.begin_data();
    w.finish();
  }
  const fm::GgufFile f = fm::GgufFile::open(path);
  EXPECT_TRUE(f.tensors().empty());
  const std::vector<std::pair<std::string, GgufType>> types = {
      {"u8", GgufType::U8},     {"i8", GgufType::I8},     {"u16", GgufType::U16},
      {"i16", GgufType::I16},   {"u32", GgufType::U32},   {"i32", GgufType::I32},
      {"u64", GgufType::U64},   {"i64", GgufType::I64},   {"f32", GgufType::F32},
      {"f64", GgufType::F64},   {"bool", GgufType::BOOL}, {"string", GgufType::STRING},
      {"ints", GgufType::ARRAY}};
  for (const auto& [key, type] : types) EXPECT_EQ(f.find(key)->type(), type) << key;
  EXPECT_EQ(f.get_i64("i8"), -2);
  EXPECT_EQ(f.get_u64("u64"), 7u);
  EXPECT_EQ(f.get_f64("f64"), -10.25);
  EXPECT_FALSE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("string"), "eleven");
  EXPECT_EQ(f.get_string_array("strings"), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(f.get_int_array("ints"), (std::vector<int64_t>{12, -13}));
  EXPECT_EQ(f.get_f32_array("floats"), (std::vector<float>{14.5f}));
}

TEST(Gguf, ParseFromMemory) {
  TempDir tmp;
  write_with_writer(tmp / "m.gguf", 32, all_metadata(), all_tensors());
  const std::string bytes = read_file(tmp / "m.gguf");
  const auto f = fm::GgufFile::parse(std::as_bytes(std::span(bytes)), "in-memory");
  EXPECT_EQ(f.path(), "in-memory");
  const fm::GgufTensor& t = f.get_tensor("ids");
  EXPECT_EQ(t.view.file, "in-memory");
  EXPECT_GE(t.view.data, reinterpret_cast<const std::byte*>(bytes.data()));
  EXPECT_LE(t.view.data + t.view.nbytes, reinterpret_cast<const std::byte*>(bytes.data() + bytes.size()));
}

TEST(Gguf, FileOutlivesMove) {
  // Views point into the mapping; moving the file must not invalidate them.
  TempDir tmp;
  write_with_writer(tmp / "m.gguf", 32, all_metadata(), all_tensors());
  auto f = fm::GgufFile::open(tmp / "m.gguf");
  const std::byte* before = f.get_tensor("ids").view.data;
  fm::GgufFile moved = std::move(f);
  EXPECT_EQ(moved.get_tensor("ids").view.data, before);
  EXPECT_EQ(std::memcmp(before, all_tensors()[6].bytes.data(), 28), 0);
}

TEST(Gguf, EmptyTensorHasNoData) {
  TempDir tmp;
  write_with_writer(tmp / "m.gguf", 32, {}, all_tensors());
  const auto f = fm::GgufFile::open(tmp / "m.gguf");
  const fm::GgufTensor& e = f.get_tensor("empty");
  EXPECT_EQ(e.view.numel(), 0);
  EXPECT_EQ(e.view.nbytes, 0u);
  EXPECT_EQ(e.view.data, nullptr);
  EXPECT_EQ(e.ne, (std::vector<uint64_t>{32, 0}));
}

TEST(Gguf, TypedAccessors) {
  TempDir tmp;
  std::vector<fm::GgufKv> md = all_metadata();
  md.push_back({"neg.i8_array", GgufValue{GgufArray{std::vector<int8_t>{-1}}}});
  write_with_writer(tmp / "m.gguf", 32, md, {});
  const auto f = fm::GgufFile::open(tmp / "m.gguf");
  const std::string file = (tmp / "m.gguf").string();

  // Integers of any type that fits.
  EXPECT_EQ(f.get_u64("t.u8"), 200u);
  EXPECT_EQ(f.get_u64("t.u16"), 60000u);
  EXPECT_EQ(f.get_u64("t.u32"), 4000000000u);
  EXPECT_EQ(f.get_u64("t.u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f.get_i64("t.i8"), -100);
  EXPECT_EQ(f.get_i64("t.i16"), -30000);
  EXPECT_EQ(f.get_i64("t.i32"), -2000000000);
  EXPECT_EQ(f.get_i64("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.get_i64("t.u32"), 4000000000);
  expect_error([&] { f.get_u64("t.i8"); }, {file, "'t.i8'", "-100", "non-negative"});
  expect_error([&] { f.get_i64("t.u64"); }, {file, "'t.u64'", "does not fit int64"});
  expect_error([&] { f.get_u64("t.string"); }, {file, "'t.string'", "has type string, expected an integer"});
  expect_error([&] { f.get_u64("t.f32"); }, {file, "'t.f32'", "has type float32"});
  expect_error([&] { f.get_i64("t.bool"); }, {file, "'t.bool'", "has type bool"});

  // Any number as a double.
  EXPECT_EQ(f.get_f64("t.f32"), 1.5);
  EXPECT_EQ(f.get_f64("t.f64"), -0.125);
  EXPECT_EQ(f.get_f64("t.i16"), -30000.0);
  expect_error([&] { f.get_f64("a.f32"); },
               {file, "'a.f32'", "has type array of float32, expected a number"});

  EXPECT_TRUE(f.get_bool("t.bool"));
  expect_error([&] { f.get_bool("t.u8"); }, {file, "'t.u8'", "has type uint8, expected bool"});
  EXPECT_EQ(f.get_string("general.architecture"), "qwen35moe");
  EXPECT_EQ(f.get_string("t.empty_string"), "");
  expect_error([&] { f.get_string("t.u8"); }, {file, "'t.u8'", "expected string"});

  // Arrays.
  EXPECT_EQ(f.get_int_array("a.u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(f.get_int_array("a.i16"), (std::vector<int64_t>{-5, 5}));
  EXPECT_EQ(f.get_int_array("a.i64"), (std::vector<int64_t>{-3, 4}));
  EXPECT_EQ(f.get_int_array("neg.i8_array"), (std::vector<int64_t>{-1}));
  EXPECT_TRUE(f.get_int_array("a.empty").empty());
  expect_error([&] { f.get_int_array("a.u64"); }, {file, "'a.u64'", "element 0", "does not fit int64"});
  expect_error([&] { f.get_int_array("a.f32"); },
               {file, "'a.f32'", "array of float32, expected an array of integers"});
  expect_error([&] { f.get_int_array("t.i32"); }, {file, "'t.i32'", "has type int32"});
  EXPECT_EQ(f.get_f32_array("a.f32"), (std::vector<float>{0.5f, -2.0f}));
  EXPECT_EQ(f.get_f32_array("a.i32"), (std::vector<float>{-1.0f, 0.0f, 1.0f}));
  EXPECT_EQ(f.get_f32_array("a.u8"), (std::vector<float>{1.0f, 2.0f, 255.0f}));
  expect_error([&] { f.get_f32_array("a.string"); }, {file, "'a.string'", "array of string"});
  EXPECT_EQ(f.get_string_array("a.string"), (std::vector<std::string>{"<s>", "", "\xe4\xbd\xa0"}));
  expect_error([&] { f.get_string_array("a.u8"); }, {file, "'a.u8'", "expected an array of strings"});
  expect_error([&] { f.get_string_array("t.string"); }, {file, "'t.string'", "expected an array of strings"});

  // Missing keys: get_* throws, try_* is empty; a present key of the wrong type still throws.
  expect_error([&] { f.get_u64("qwen35moe.block_count"); },
               {file, "metadata key 'qwen35moe.block_count' missing"});
  expect_error([&] { f.get_string_array("nope"); }, {file, "'nope' missing"});
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_FALSE(f.try_u64("nope"));
  EXPECT_FALSE(f.try_i64("nope"));
  EXPECT_FALSE(f.try_f64("nope"));
  EXPECT_FALSE(f.try_bool("nope"));
  EXPECT_FALSE(f.try_string("nope"));
  EXPECT_FALSE(f.try_int_array("nope"));
  EXPECT_FALSE(f.try_string_array("nope"));
  EXPECT_FALSE(f.try_f32_array("nope"));
  EXPECT_EQ(f.try_u64("t.u8"), 200u);
  EXPECT_EQ(f.try_i64("t.i8"), -100);
  EXPECT_EQ(f.try_f64("t.f32"), 1.5);
  EXPECT_EQ(f.try_bool("t.bool"), true);
  EXPECT_EQ(f.try_string("general.architecture"), "qwen35moe");
  EXPECT_EQ(f.try_int_array("a.i32"), (std::vector<int64_t>{-1, 0, 1}));
  EXPECT_EQ(f.try_string_array("a.string")->size(), 3u);
  EXPECT_EQ(f.try_f32_array("a.f32")->size(), 2u);
  expect_error([&] { f.try_u64("t.string"); }, {file, "'t.string'", "expected an integer"});

  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  expect_error([&] { f.get_tensor("nope"); }, {file, "tensor 'nope' not found"});
}

// ---- gguf-py interop ----

// reference_v3.gguf was written by gguf-py's GGUFWriter; the JSON says what it holds.
TEST(GgufInterop, ReadsGgufPyReference) {
  const fs::path dir = fs::path(FM_FIXTURES) / "gguf";
  const json expected = json::parse(read_file(dir / "reference_v3.json"));
  const fm::GgufFile f = fm::GgufFile::open(dir / "reference_v3.gguf");
  EXPECT_EQ(f.version(), expected["version"].get<uint32_t>());
  EXPECT_EQ(f.alignment(), expected["alignment"].get<uint32_t>());
  EXPECT_EQ(f.data_offset(), expected["data_offset"].get<uint64_t>());

  const json& md = expected["metadata"];
  ASSERT_EQ(f.metadata().size(), md.size());
  for (size_t i = 0; i < md.size(); ++i) {
    const std::string key = md[i]["key"];
    EXPECT_EQ(f.metadata()[i].key, key);
    const GgufValue want = value_from_json(type_index(md[i]["type"]), md[i]["value"]);
    EXPECT_TRUE(f.metadata()[i].value == want) << key << ": " << value_to_json(f.metadata()[i].value).dump();
  }
  EXPECT_EQ(f.get_u64("qwen35moe.block_count"), 2u);
  EXPECT_EQ(f.get_string_array("test.tokens")[3], "\xe4\xbd\xa0\xe5\xa5\xbd");
  const auto* nested = std::get_if<GgufArray>(&f.find("test.nested_strings")->data);
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->elem_type(), GgufType::ARRAY);
  EXPECT_EQ(nested->size(), 2u);

  const json& tensors = expected["tensors"];
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const json& e = tensors[i];
    const fm::GgufTensor& t = f.tensors()[i];
    EXPECT_EQ(t.name(), e["name"].get<std::string>());
    EXPECT_EQ(t.ggml_type, e["ggml_type"].get<uint32_t>());
    EXPECT_EQ(t.view.dtype, *fm::dtype_from_ggml(t.ggml_type));
    EXPECT_EQ(t.ne, e["ne"].get<std::vector<uint64_t>>());
    EXPECT_EQ(t.view.shape, e["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.offset, e["offset"].get<uint64_t>());
    EXPECT_EQ(t.view.nbytes, e["nbytes"].get<uint64_t>());
    EXPECT_EQ(hex(t.view.data, t.view.nbytes), e["hex"].get<std::string>()) << t.name();
  }
  EXPECT_EQ(f.get_tensor("blk.0.ffn_down.weight").view.dtype, DType::Q8_0);
  EXPECT_EQ(f.get_tensor("token_embd.weight").view.dtype, DType::F16);
}

TEST(GgufInterop, ReadsVersion2) {
  // v2 and v3 little-endian files are laid out identically; only the version field differs.
  TempDir tmp;
  std::string bytes = read_file(fs::path(FM_FIXTURES) / "gguf" / "reference_v3.gguf");
  bytes[4] = 2;
  write_bytes(tmp / "v2.gguf", bytes);
  const fm::GgufFile f = fm::GgufFile::open(tmp / "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.get_string("general.architecture"), "qwen35moe");
}

// Writes ours.gguf (alignment 64) and ours.json describing it into $FM_GGUF_INTEROP_DIR, by default
// <build>/gguf_interop, for `tools/make_gguf_test_files.py --check <dir>/ours.gguf`, which reads it with
// gguf-py (ctest's gguf_py_check runs both, in a folder of its own, where gguf is importable). Here it
// only checks our own reader.
TEST(GgufInterop, WriteForGgufPy) {
  const char* env_dir = std::getenv("FM_GGUF_INTEROP_DIR");
  const fs::path dir = env_dir ? fs::path(env_dir) : fs::path(FM_BUILD_DIR) / "gguf_interop";
  fs::create_directories(dir);
  const fs::path path = dir / "ours.gguf";
  const std::vector<fm::GgufKv> md = all_metadata();
  const std::vector<TensorSpec> tensors = all_tensors();
  write_with_writer(path, 64, md, tensors);
  check_round_trip(path, 64, md, tensors);

  const fm::GgufFile f = fm::GgufFile::open(path);
  json out = {{"version", 3}, {"alignment", 64}, {"data_offset", f.data_offset()}};
  json metadata = json::array();
  metadata.push_back({{"key", "general.alignment"}, {"type", "uint32"}, {"value", 64}});
  for (const fm::GgufKv& kv : md)
    metadata.push_back(
        {{"key", kv.key}, {"type", fm::gguf_type_name(kv.value.type())}, {"value", value_to_json(kv.value)}});
  out["metadata"] = metadata;
  json ts = json::array();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& spec = tensors[i];
    const std::vector<uint64_t> ne(spec.shape.rbegin(), spec.shape.rend());
    ts.push_back({{"name", spec.name},
                  {"ggml_type", fm::dtype_info(spec.dtype).ggml_type},
                  {"ne", ne},
                  {"shape", spec.shape},
                  {"offset", f.tensors()[i].offset},
                  {"nbytes", spec.bytes.size()},
                  {"hex", hex(reinterpret_cast<const std::byte*>(spec.bytes.data()), spec.bytes.size())}});
  }
  out["tensors"] = ts;
  std::ofstream(dir / "ours.json") << out.dump(1) << "\n";
}

// ---- writer contract ----

TEST(GgufWriter, DestroyedBeforeFinishLeavesNothing) {
  TempDir tmp;
  {
    fm::GgufWriter w(tmp / "m.gguf");
    w.set_u32("k", 1);
    w.declare("t", DType::F32, {4});
    w.begin_data();
    const float half[2] = {1, 2};
    w.append(half, sizeof(half));
  }
  EXPECT_FALSE(fs::exists(tmp / "m.gguf"));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 0);
}

TEST(GgufWriter, RejectsWhatLlamaCppCannotRead) {
  TempDir tmp;
  const std::string file = (tmp / "w.gguf").string();
  fm::GgufWriter w(tmp / "w.gguf");
  w.set_u32("k", 1);
  expect_error([&] { w.set_u32("k", 2); }, {file, "'k'", "set twice"});
  expect_error([&] { w.set_u32("", 2); }, {file, "empty metadata key"});
  expect_error([&] { w.set_u32("general.alignment", 64); }, {file, "'general.alignment'", "constructor"});
  expect_error([&] { w.set("nested", GgufValue{GgufArray{std::vector<GgufArray>{}}}); },
               {file, "'nested'", "arrays of arrays"});
  w.declare("t", DType::F32, {4});
  expect_error([&] { w.declare("t", DType::F32, {4}); }, {file, "'t'", "declared twice"});
  const std::string long_name(64, 'x');
  expect_error([&] { w.declare(long_name, DType::F32, {4}); }, {file, long_name, "too long"});
  w.declare(std::string(63, 'y'), DType::F32, {4});
  expect_error([&] { w.declare("u8", DType::U8, {4}); }, {file, "'u8'", "U8 has no GGML type"});
  expect_error([&] { w.declare("scalar", DType::F32, {}); }, {file, "'scalar'", "rank 0"});
  expect_error([&] { w.declare("r5", DType::F32, {1, 1, 1, 1, 1}); }, {file, "'r5'", "rank 5"});
  expect_error([&] { w.declare("neg", DType::F32, {-1, 4}); }, {file, "'neg'", "negative"});
  expect_error([&] { w.declare("q", DType::Q4_K, {256, 32}); }, {file, "'q'", "32", "block size 256"});
  expect_error(
      [&] {
        w.declare("huge", DType::F32, {int64_t(1) << 32, int64_t(1) << 32, 4});
      },
      {file, "'huge'", "too many elements"});
  expect_error([&] { w.declare("f64", DType::F64, {int64_t(1) << 62}); }, {file, "'f64'", "too large"});
  w.declare("big1", DType::F32, {int64_t(1) << 60});
  w.declare("big2", DType::F32, {int64_t(1) << 59});
  expect_error([&] { w.declare("big3", DType::F32, {int64_t(1) << 60}); },
               {file, "'big3'", "add up to more"});
  expect_error([&] { fm::GgufWriter bad(tmp / "a.gguf", 48); }, {"a.gguf", "alignment 48"});
}

// ---- malformed input ----

TEST(GgufErrors, MissingFile) {
  TempDir tmp;
  expect_file_error(tmp / "absent.gguf", {"cannot open"});
}

TEST(GgufErrors, TooShort) {
  TempDir tmp;
  const fs::path file = tmp / "short.gguf";
  write_bytes(file, "");
  expect_file_error(file, {"too short for a GGUF file (0 bytes)"});
  write_bytes(file, "GG");  // inside the magic
  expect_file_error(file, {"too short for a GGUF file (2 bytes)"});
  write_bytes(file, Raw().raw("GGUF").u32(3).u32(0).bytes());  // inside the counts
  expect_file_error(file, {"too short for a GGUF header (12 bytes"});
}

TEST(GgufErrors, WrongMagic) {
  TempDir tmp;
  const fs::path file = tmp / "magic.gguf";
  write_bytes(file, Raw().raw("GGML").u32(3).u64(0).u64(0).bytes());
  expect_file_error(file, {"not a GGUF file", "magic is 'GGML'"});
  // A safetensors file starts with its header length: show the bytes.
  write_bytes(file, Raw().u64(0x1234).raw("{}").bytes());
  expect_file_error(file, {"not a GGUF file", "magic is '4\\x12\\x00\\x00'"});
}

TEST(GgufErrors, UnsupportedVersions) {
  TempDir tmp;
  const fs::path file = tmp / "version.gguf";
  write_bytes(file, raw_gguf({}, {}, "", 1));
  expect_file_error(file, {"GGUF version 1 is not supported"});
  write_bytes(file, raw_gguf({}, {}, "", 99));
  expect_file_error(file, {"unsupported GGUF version 99"});
  write_bytes(file, raw_gguf({}, {}, "", 0));
  expect_file_error(file, {"unsupported GGUF version 0"});
  write_bytes(file, raw_gguf({}, {}, "", 0x03000000));  // a big-endian v3 file
  expect_file_error(file, {"big-endian"});
}

TEST(GgufErrors, AbsurdCounts) {
  TempDir tmp;
  const fs::path file = tmp / "counts.gguf";
  write_bytes(file,
              Raw().raw("GGUF").u32(3).u64(uint64_t(1) << 40).u64(0).raw(std::string(64, '\0')).bytes());
  expect_file_error(file, {"tensor count 1099511627776 is impossible for a file of 88 bytes"});
  write_bytes(file, Raw().raw("GGUF").u32(3).u64(0).u64(~uint64_t(0)).raw(std::string(64, '\0')).bytes());
  expect_file_error(file, {"metadata count 18446744073709551615 is impossible"});
}

TEST(GgufErrors, TruncatedAnywhere) {
  // Every prefix that cuts into the header or the tensor bytes is an error (only the last tensor's
  // trailing padding may be missing), and none reads out of bounds (see the sanitizer build).
  TempDir tmp;
  write_with_writer(tmp / "full.gguf", 32, all_metadata(), all_tensors());
  const std::string full = read_file(tmp / "full.gguf");
  const auto f = fm::GgufFile::open(tmp / "full.gguf");
  const fm::GgufTensor& last = f.tensors().back();
  const uint64_t end = f.data_offset() + last.offset + last.view.nbytes;
  const fs::path file = tmp / "cut.gguf";
  for (uint64_t n = 0; n < end; ++n) {
    write_bytes(file, full.substr(0, n));
    expect_file_error(file, {});
  }
  write_bytes(file, full.substr(0, end));
  EXPECT_EQ(fm::GgufFile::open(file).tensors().size(), f.tensors().size());
}

TEST(GgufErrors, TruncatedAtNamedPlaces) {
  TempDir tmp;
  const fs::path file = tmp / "cut.gguf";
  // Two files, as a cut early in a file with tensors already fails the tensor count check.
  const std::string kv_only = raw_gguf({kv_string("general.name", "a model name")}, {}, "");
  const std::string with_tensors = raw_gguf(
      {kv_u32("k", 1)}, {f32_tensor("weight", {4}), f32_tensor("bias", {4}, 32)}, std::string(48, '\x01'));
  const auto cut_at = [&](const std::string& full, const std::string& marker, size_t extra) {
    const size_t pos = full.find(marker);
    EXPECT_NE(pos, std::string::npos) << marker;
    write_bytes(file, full.substr(0, pos + extra));
  };
  cut_at(kv_only, "general.name", 8);  // inside the key
  expect_file_error(file, {"metadata entry 0", "truncated: key of 12 bytes", "past the end"});
  cut_at(kv_only, "a model name", 5);  // inside the string value
  expect_file_error(file, {"metadata key 'general.name'", "truncated: string value of 12 bytes"});
  cut_at(with_tensors, "bias", 4 + 4 + 3);  // inside the tensor info's ne
  expect_file_error(file, {"tensor 'bias'", "truncated: dimensions"});
  write_bytes(file, with_tensors.substr(0, with_tensors.size() - 10));  // inside the data
  expect_file_error(file, {"tensor 'bias'", "16 bytes at data offset 32 run past the end of the file"});
  // Early cuts fail on the counts instead.
  write_bytes(file, with_tensors.substr(0, 40));
  expect_file_error(file, {"tensor count 2 is impossible for a file of 40 bytes"});
}

TEST(GgufErrors, HugeStringLength) {
  TempDir tmp;
  const fs::path file = tmp / "string.gguf";
  write_bytes(file, raw_gguf({Raw().str("k").u32(8).u64(uint64_t(1) << 62).raw("abc").bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'k'", "string value of 4611686018427387904 bytes", "past the end"});
  write_bytes(file, raw_gguf({Raw().u64(~uint64_t(0)).raw("abc").bytes()}, {}, ""));
  expect_file_error(file, {"metadata entry 0", "key of 18446744073709551615 bytes"});
  // A tensor name.
  write_bytes(
      file, Raw().raw("GGUF").u32(3).u64(1).u64(0).u64(uint64_t(1) << 40).raw(std::string(40, 'n')).bytes());
  expect_file_error(file, {"tensor info 0", "name of 1099511627776 bytes"});
}

TEST(GgufErrors, HugeArrayLength) {
  TempDir tmp;
  const fs::path file = tmp / "array.gguf";
  // Must fail before allocating: 2^62 uint32 elements would be 16 EiB.
  write_bytes(file, raw_gguf({Raw().str("tokens").u32(9).u32(4).u64(uint64_t(1) << 62).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'tokens'", "array of 4611686018427387904 uint32 elements"});
  write_bytes(file, raw_gguf({Raw().str("tokens").u32(9).u32(8).u64(~uint64_t(0)).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'tokens'", "array of 18446744073709551615 string elements"});
  write_bytes(file, raw_gguf({Raw().str("nested").u32(9).u32(9).u64(uint64_t(1) << 40).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'nested'", "array elements"});
}

TEST(GgufErrors, InvalidValueTypes) {
  TempDir tmp;
  const fs::path file = tmp / "type.gguf";
  write_bytes(file, raw_gguf({Raw().str("k").u32(13).u32(0).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'k'", "invalid value type 13"});
  write_bytes(file, raw_gguf({Raw().str("arr").u32(9).u32(99).u64(0).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'arr'", "invalid array element type 99"});
  write_bytes(file, raw_gguf({Raw().str("flag").u32(7).u8(2).bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'flag'", "bool value 2", "neither 0 nor 1"});
}

TEST(GgufErrors, ArraysNestedTooDeep) {
  TempDir tmp;
  const fs::path file = tmp / "deep.gguf";
  Raw r;
  r.str("deep").u32(9);
  for (int i = 0; i < 9; ++i) r.u32(9).u64(1);
  r.u32(4).u64(0);
  write_bytes(file, raw_gguf({r.bytes()}, {}, ""));
  expect_file_error(file, {"metadata key 'deep'", "nested more than 8 deep"});
}

TEST(GgufErrors, BadKeys) {
  TempDir tmp;
  const fs::path file = tmp / "keys.gguf";
  write_bytes(file, raw_gguf({kv_u32("a.b", 1), kv_u32("c", 2), kv_u32("a.b", 3)}, {}, ""));
  expect_file_error(file, {"metadata key 'a.b'", "defined twice"});
  write_bytes(file, raw_gguf({kv_u32("", 1)}, {}, ""));
  expect_file_error(file, {"metadata entry 0", "empty key"});
}

TEST(GgufErrors, BadDimensionCount) {
  TempDir tmp;
  const fs::path file = tmp / "dims.gguf";
  write_bytes(file, raw_gguf({}, {f32_tensor("five", {1, 1, 1, 1, 1})}, std::string(32, '\0')));
  expect_file_error(file, {"tensor 'five'", "has 5 dimensions, expected 1 to 4"});
  write_bytes(file, raw_gguf({}, {f32_tensor("zero", {})}, std::string(32, '\0')));
  expect_file_error(file, {"tensor 'zero'", "has 0 dimensions"});
}

TEST(GgufErrors, UnknownGgmlType) {
  TempDir tmp;
  const fs::path file = tmp / "type.gguf";
  write_bytes(file, raw_gguf({}, {RawTensor{"w", {32}, 99, 0}}, std::string(256, '\0')));
  expect_file_error(file, {"tensor 'w'", "ggml type 99", "unknown or not supported"});
  // A real GGML type (IQ1_S) that we do not support.
  write_bytes(file, raw_gguf({}, {RawTensor{"w", {256}, 19, 0}}, std::string(256, '\0')));
  expect_file_error(file, {"tensor 'w'", "ggml type 19"});
}

TEST(GgufErrors, RowNotWholeBlocks) {
  TempDir tmp;
  const fs::path file = tmp / "block.gguf";
  write_bytes(file, raw_gguf({}, {RawTensor{"q", {33, 2}, 8, 0}}, std::string(256, '\0')));
  expect_file_error(file, {"tensor 'q'", "ne[0] = 33 is not a multiple of the Q8_0 block size 32"});
}

TEST(GgufErrors, MisalignedOffset) {
  TempDir tmp;
  const fs::path file = tmp / "align.gguf";
  write_bytes(file, raw_gguf({}, {f32_tensor("a", {4}), f32_tensor("b", {4}, 16)}, std::string(64, '\0')));
  expect_file_error(file, {"tensor 'b'", "data offset 16 is misaligned", "alignment 32"});
  // With general.alignment = 64, an offset of 32 is misaligned too.
  write_bytes(file, raw_gguf({kv_u32("general.alignment", 64)}, {f32_tensor("c", {4}, 32)},
                             std::string(128, '\0'), 3, 64));
  expect_file_error(file, {"tensor 'c'", "data offset 32 is misaligned", "alignment 64"});
}

TEST(GgufErrors, DataPastEnd) {
  TempDir tmp;
  const fs::path file = tmp / "end.gguf";
  write_bytes(file, raw_gguf({}, {f32_tensor("w", {16})}, std::string(60, '\0')));
  expect_file_error(file,
                    {"tensor 'w'", "64 bytes at data offset 0 run past the end", "data section of 60 bytes"});
  // An offset near 2^64 must not wrap around in the bounds arithmetic.
  write_bytes(file, raw_gguf({}, {f32_tensor("far", {4}, ~uint64_t(31))}, std::string(64, '\0')));
  expect_file_error(file, {"tensor 'far'", "run past the end"});
}

TEST(GgufErrors, OverlappingTensors) {
  TempDir tmp;
  const fs::path file = tmp / "overlap.gguf";
  write_bytes(file, raw_gguf({}, {f32_tensor("a", {16}), f32_tensor("b", {8}, 32)}, std::string(64, '\0')));
  expect_file_error(file, {"'a'", "'b'", "overlap"});
  // A tensor nested inside an earlier, longer one is caught too, not only neighbours.
  write_bytes(file,
              raw_gguf({}, {f32_tensor("big", {32}), f32_tensor("x", {1}, 32), f32_tensor("y", {1}, 96)},
                       std::string(128, '\0')));
  expect_file_error(file, {"'big'", "overlap"});
  // Empty tensors take no bytes and may share an offset.
  write_bytes(file, raw_gguf({}, {f32_tensor("e1", {0}), f32_tensor("e2", {0, 4}), f32_tensor("w", {4})},
                             std::string(32, '\0')));
  EXPECT_EQ(fm::GgufFile::open(file).tensors().size(), 3u);
}

TEST(GgufErrors, DuplicateTensorName) {
  TempDir tmp;
  const fs::path file = tmp / "dup.gguf";
  write_bytes(file, raw_gguf({}, {f32_tensor("w", {4}), f32_tensor("w", {4}, 32)}, std::string(64, '\0')));
  expect_file_error(file, {"tensor 'w'", "duplicate tensor name"});
}

TEST(GgufErrors, BadAlignment) {
  TempDir tmp;
  const fs::path file = tmp / "alignment.gguf";
  write_bytes(file, raw_gguf({kv_u32("general.alignment", 0)}, {}, ""));
  expect_file_error(file, {"'general.alignment'", "alignment 0 is not a nonzero power of two"});
  write_bytes(file, raw_gguf({kv_u32("general.alignment", 3)}, {}, ""));
  expect_file_error(file, {"'general.alignment'", "alignment 3 is not a nonzero power of two"});
  write_bytes(file, raw_gguf({Raw().str("general.alignment").u32(10).u64(64).bytes()}, {}, ""));
  expect_file_error(file, {"'general.alignment'", "has type uint64, expected uint32"});
}

TEST(GgufErrors, ShapeOverflow) {
  TempDir tmp;
  const fs::path file = tmp / "shape.gguf";
  // 2^32 x 2^32 x 4 wraps a 64-bit product to 0, which would make an empty tensor without the guard.
  write_bytes(file, raw_gguf({}, {f32_tensor("w", {uint64_t(1) << 32, uint64_t(1) << 32, 4})}, ""));
  expect_file_error(file, {"tensor 'w'", "too many elements"});
  write_bytes(file, raw_gguf({}, {f32_tensor("w", {~uint64_t(0)})}, ""));
  expect_file_error(file, {"tensor 'w'", "too many elements"});
  // 2^62 elements fit, but not 2^62 x 4 bytes.
  write_bytes(file, raw_gguf({}, {f32_tensor("w", {uint64_t(1) << 62})}, ""));
  expect_file_error(file, {"tensor 'w'", "too large"});
}
