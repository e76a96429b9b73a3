// safetensors reader: round trips through files written here, the checked-in fixtures, and one test per
// kind of malformed input (each must be an fm::Error naming the file and, where one is at fault, the
// tensor).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using fm::test::TempDir;

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <class T>
std::vector<uint8_t> to_bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file with a header written verbatim: u64 LE length, the header, then `data`.
void write_raw(const fs::path& path, const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  write_bytes(path, out + header + data);
}

// A well-formed safetensors file: tensors laid out back to back in the given order, header padded with
// spaces to a multiple of 8 as the reference writer does.
void write_safetensors(const fs::path& path, const std::vector<TensorSpec>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const TensorSpec& t : tensors) {
    const uint64_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, uint64_t(data.size())}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_raw(path, text, data);
}

std::string tensor_entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return fmt::format(R"({{"dtype":"{}","shape":{},"data_offsets":{}}})", dtype, shape, offsets);
}

using fm::test::expect_error;

void expect_file_error(const fs::path& file, std::initializer_list<std::string> needles) {
  expect_error([&] { fm::SafetensorsArchive::open_file(file); }, needles, file.string());
}

std::vector<TensorSpec> two_tensors() {
  return {{"alpha", "F32", {2, 2}, to_bytes(std::vector<float>{1, 2, 3, 4})},
          {"beta", "F32", {4}, to_bytes(std::vector<float>{5, 6, 7, 8})}};
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST(Safetensors, ShapeStr) {
  EXPECT_EQ(fm::shape_str({64, 32}), "[64, 32]");
  EXPECT_EQ(fm::shape_str({7}), "[7]");
  EXPECT_EQ(fm::shape_str({}), "[]");
}

TEST(Safetensors, RoundTripDtypes) {
  TempDir tmp;
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001};  // 1, -2, max finite, min subnormal
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x4049, 0x7f80, 0x0000, 0x8000};
  const std::vector<int64_t> i64 = {0, -1, INT64_MAX, INT64_MIN, 42};
  write_safetensors(tmp / "model.safetensors", {{"w.f32", "F32", {2, 3}, to_bytes(f32)},
                                                {"w.f16", "F16", {4}, to_bytes(f16)},
                                                {"w.bf16", "BF16", {3, 1, 2}, to_bytes(bf16)},
                                                {"ids", "I64", {5}, to_bytes(i64)},
                                                {"empty", "F32", {0, 4}, {}}});

  for (const auto& archive : {fm::SafetensorsArchive::open_dir(tmp.path),
                              fm::SafetensorsArchive::open_file(tmp / "model.safetensors")}) {
    EXPECT_EQ(archive.tensors().size(), 5u);
    const fm::TensorView& a = archive.get("w.f32");
    EXPECT_EQ(a.dtype, fm::DType::F32);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a.numel(), 6);
    EXPECT_EQ(a.rank(), 2);
    EXPECT_EQ(a.nbytes, 24u);
    EXPECT_EQ(a.file, (tmp / "model.safetensors").string());
    std::vector<float> f32_back(6);
    std::memcpy(f32_back.data(), a.data, a.nbytes);
    for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(std::memcmp(&f32_back[i], &f32[i], 4), 0) << i;

    const fm::TensorView& h = archive.get("w.f16");
    EXPECT_EQ(h.dtype, fm::DType::F16);
    EXPECT_EQ(std::memcmp(h.data, f16.data(), 8), 0);

    const fm::TensorView& b = archive.get("w.bf16");
    EXPECT_EQ(b.dtype, fm::DType::BF16);
    EXPECT_EQ(b.shape, (std::vector<int64_t>{3, 1, 2}));
    EXPECT_EQ(std::memcmp(b.data, bf16.data(), 12), 0);

    const fm::TensorView& ids = archive.get("ids");
    EXPECT_EQ(ids.dtype, fm::DType::I64);
    std::vector<int64_t> i64_back(5);
    std::memcpy(i64_back.data(), ids.data, ids.nbytes);
    EXPECT_EQ(i64_back, i64);

    const fm::TensorView& e = archive.get("empty");
    EXPECT_EQ(e.numel(), 0);
    EXPECT_EQ(e.nbytes, 0u);

    EXPECT_EQ(archive.find("__metadata__"), nullptr);
    EXPECT_EQ(archive.find("nope"), nullptr);
    EXPECT_EQ(archive.total_bytes(), 24u + 8u + 12u + 40u);
  }
  EXPECT_EQ(fm::SafetensorsArchive::open_dir(tmp.path).source(), tmp.path.string());
}

TEST(Safetensors, ArchiveOutlivesMove) {
  // Views point into the mapping; moving the archive must not invalidate them.
  TempDir tmp;
  write_safetensors(tmp / "model.safetensors", two_tensors());
  auto archive = fm::SafetensorsArchive::open_dir(tmp.path);
  const std::byte* before = archive.get("beta").data;
  fm::SafetensorsArchive moved = std::move(archive);
  EXPECT_EQ(moved.get("beta").data, before);
  float v = 0;
  std::memcpy(&v, moved.get("beta").data + 4, 4);
  EXPECT_EQ(v, 6.0f);
}

TEST(Safetensors, GetMissingTensorNamesSource) {
  TempDir tmp;
  write_safetensors(tmp / "model.safetensors", two_tensors());
  auto archive = fm::SafetensorsArchive::open_dir(tmp.path);
  expect_error([&] { archive.get("gamma"); }, {tmp.path.string(), "'gamma'", "not found"});
}

TEST(Safetensors, ShardedFixture) {
  const fs::path dir = fs::path(FM_FIXTURES) / "qwen35moe-vl-bf16";
  auto archive = fm::SafetensorsArchive::open_dir(dir);
  const fm::TensorView& t = archive.get("model.language_model.layers.0.linear_attn.in_proj_qkv.weight");
  EXPECT_EQ(t.dtype, fm::DType::BF16);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{160, 64}));
  EXPECT_EQ(t.nbytes, 160u * 64u * 2u);
  EXPECT_EQ(t.file, (dir / "model-00001-of-00004.safetensors").string());
  EXPECT_EQ(archive.get("model.visual.pos_embed.weight").file,
            (dir / "model-00004-of-00004.safetensors").string());

  // Every tensor of the index is present, and the byte total agrees with the index's metadata.
  const json index = json::parse(read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(archive.tensors().size(), index["weight_map"].size());
  EXPECT_EQ(archive.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
}

TEST(Safetensors, SingleFileFixture) {
  const fs::path file = fs::path(FM_FIXTURES) / "qwen3moe-f16" / "model.safetensors";
  auto archive = fm::SafetensorsArchive::open_file(file);
  EXPECT_EQ(archive.source(), file.string());
  const fm::TensorView& t = archive.get("lm_head.weight");
  EXPECT_EQ(t.dtype, fm::DType::F16);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(t.nbytes, 512u * 64u * 2u);
  EXPECT_NE(archive.find("model.embed_tokens.weight"), nullptr);
  // The directory form finds the same file.
  EXPECT_EQ(fm::SafetensorsArchive::open_dir(file.parent_path()).tensors().size(), archive.tensors().size());
}

// ---- malformed input ----

TEST(SafetensorsErrors, MissingDir) {
  TempDir tmp;
  const fs::path dir = tmp / "no_such_model";
  expect_error([&] { fm::SafetensorsArchive::open_dir(dir); }, {dir.string(), "no model.safetensors"});
  // An existing folder without weights gets the same message.
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {tmp.path.string(), "no model.safetensors"});
}

TEST(SafetensorsErrors, MissingFile) {
  TempDir tmp;
  expect_file_error(tmp / "absent.safetensors", {"cannot open"});
}

TEST(SafetensorsErrors, ShorterThanLengthField) {
  TempDir tmp;
  write_bytes(tmp / "short.safetensors", "abc");
  expect_file_error(tmp / "short.safetensors", {"too short"});
  write_bytes(tmp / "empty.safetensors", "");
  expect_file_error(tmp / "empty.safetensors", {"too short"});
}

TEST(SafetensorsErrors, TruncatedInsideHeader) {
  TempDir tmp;
  const fs::path file = tmp / "cut.safetensors";
  write_safetensors(file, two_tensors());
  const std::string full = read_file(file);
  write_bytes(file, full.substr(0, 8 + 20));
  expect_file_error(file, {"header length", "past the end"});
}

TEST(SafetensorsErrors, TruncatedInsideData) {
  TempDir tmp;
  const fs::path file = tmp / "cut.safetensors";
  write_safetensors(file, two_tensors());  // beta is stored last
  const std::string full = read_file(file);
  write_bytes(file, full.substr(0, full.size() - 6));
  expect_file_error(file, {"'beta'", "past the end"});
}

TEST(SafetensorsErrors, HeaderLengthPastEnd) {
  TempDir tmp;
  const fs::path file = tmp / "len.safetensors";
  std::string bytes(8, '\0');
  bytes[0] = char(0xe8);  // 1000
  bytes[1] = char(0x03);
  write_bytes(file, bytes + "{}");
  expect_file_error(file, {"header length 1000"});
  // A length near 2^64 must not wrap around in the bounds arithmetic.
  write_bytes(file, std::string(8, char(0xff)) + "{}");
  expect_file_error(file, {"header length"});
}

TEST(SafetensorsErrors, InvalidJson) {
  TempDir tmp;
  const fs::path file = tmp / "json.safetensors";
  write_raw(file, R"({"a": {"dtype": "F32",)");
  expect_file_error(file, {"invalid header JSON"});
  write_raw(file, "[1, 2]");
  expect_file_error(file, {"not a JSON object"});
  write_raw(file, R"({"a": [1]})");
  expect_file_error(file, {"'a'", "not an object"});
}

TEST(SafetensorsErrors, UnknownDtype) {
  TempDir tmp;
  const fs::path file = tmp / "dtype.safetensors";
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F8_E9M9", "[2]", "[0, 2]")), "xx");
  expect_file_error(file, {"'w'", "unknown dtype 'F8_E9M9'"});
  write_raw(file, R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_file_error(file, {"'w'", "missing dtype"});
  write_raw(file, R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_file_error(file, {"'w'", "dtype is not a string"});
}

TEST(SafetensorsErrors, NegativeShape) {
  TempDir tmp;
  const fs::path file = tmp / "shape.safetensors";
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[-1, 4]", "[0, 16]")),
            std::string(16, '\0'));
  expect_file_error(file, {"'w'", "non-negative"});
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[2.5]", "[0, 8]")),
            std::string(8, '\0'));
  expect_file_error(file, {"'w'", "non-negative integers"});
  write_raw(file, R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_file_error(file, {"'w'", "missing shape"});
}

TEST(SafetensorsErrors, HugeShapeDoesNotOverflow) {
  TempDir tmp;
  const fs::path file = tmp / "huge.safetensors";
  // 2^32 x 2^32 x 4 wraps a 64-bit product to 0, which would match offsets [0, 0] without the guard.
  write_raw(file,
            fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[4294967296, 4294967296, 4]", "[0, 0]")));
  expect_file_error(file, {"'w'", "too many elements"});
}

TEST(SafetensorsErrors, OffsetsPastEnd) {
  TempDir tmp;
  const fs::path file = tmp / "off.safetensors";
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[4]", "[0, 16]")),
            std::string(12, '\0'));
  expect_file_error(file, {"'w'", "past the end of the data"});
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[1]", "[8, 4]")), std::string(12, '\0'));
  expect_file_error(file, {"'w'", "begin after end"});
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("F32", "[1]", "[0]")), std::string(4, '\0'));
  expect_file_error(file, {"'w'", "two non-negative integers"});
  write_raw(file, R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0'));
  expect_file_error(file, {"'w'", "missing data_offsets"});
}

TEST(SafetensorsErrors, SizeDisagreesWithShape) {
  TempDir tmp;
  const fs::path file = tmp / "size.safetensors";
  write_raw(file, fmt::format(R"({{"w": {}}})", tensor_entry("BF16", "[4, 2]", "[0, 12]")),
            std::string(12, '\0'));
  expect_file_error(file, {"'w'", "12 bytes", "[4, 2]", "16"});
}

TEST(SafetensorsErrors, OverlappingTensors) {
  TempDir tmp;
  const fs::path file = tmp / "overlap.safetensors";
  write_raw(file,
            fmt::format(R"({{"a": {}, "b": {}, "c": {}}})", tensor_entry("F32", "[4]", "[0, 16]"),
                        tensor_entry("F32", "[2]", "[16, 24]"), tensor_entry("F32", "[4]", "[8, 24]")),
            std::string(24, '\0'));
  expect_file_error(file, {"'a'", "'c'", "overlap"});
  // A tensor nested inside an earlier, longer one is caught too, not only neighbours.
  write_raw(file,
            fmt::format(R"({{"big": {}, "x": {}, "y": {}}})", tensor_entry("F32", "[8]", "[0, 32]"),
                        tensor_entry("F32", "[1]", "[4, 8]"), tensor_entry("F32", "[1]", "[20, 24]")),
            std::string(32, '\0'));
  expect_file_error(file, {"'big'", "overlap"});
}

TEST(SafetensorsErrors, IndexNamesMissingShard) {
  TempDir tmp;
  write_safetensors(tmp / "shard-1.safetensors", two_tensors());
  write_bytes(tmp / "model.safetensors.index.json",
              R"({"weight_map": {"alpha": "shard-1.safetensors", "beta": "shard-1.safetensors",
                                 "gamma": "shard-2.safetensors"}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "shard-2.safetensors", "'gamma'", "does not exist"});
}

TEST(SafetensorsErrors, IndexNamesTensorAbsentFromShard) {
  TempDir tmp;
  write_safetensors(tmp / "shard-1.safetensors", two_tensors());
  write_bytes(tmp / "model.safetensors.index.json",
              R"({"weight_map": {"alpha": "shard-1.safetensors", "delta": "shard-1.safetensors"}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "'delta'", "shard-1.safetensors", "not present"});
}

TEST(SafetensorsErrors, IndexTensorInWrongShard) {
  TempDir tmp;
  write_safetensors(tmp / "s1.safetensors", two_tensors());
  write_safetensors(tmp / "s2.safetensors", {{"gamma", "F32", {1}, to_bytes(std::vector<float>{9})}});
  write_bytes(
      tmp / "model.safetensors.index.json",
      R"({"weight_map": {"alpha": "s1.safetensors", "gamma": "s1.safetensors", "beta": "s2.safetensors"}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "'beta'"});
}

TEST(SafetensorsErrors, IndexShardOutsideDir) {
  TempDir tmp;
  fs::create_directories(tmp / "model");
  write_safetensors(tmp / "elsewhere.safetensors", two_tensors());
  write_bytes(tmp / "model" / "model.safetensors.index.json",
              R"({"weight_map": {"alpha": "../elsewhere.safetensors"}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp / "model"); },
               {"model.safetensors.index.json", "'alpha'", "../elsewhere.safetensors", "plain file name"});
  write_bytes(tmp / "model" / "model.safetensors.index.json", R"({"weight_map": {"alpha": ".."}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp / "model"); },
               {"model.safetensors.index.json", "'..'"});
}

TEST(SafetensorsErrors, IndexMalformed) {
  TempDir tmp;
  write_bytes(tmp / "model.safetensors.index.json", "{\"weight_map\": ");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "invalid JSON"});
  write_bytes(tmp / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "weight_map"});
  write_bytes(tmp / "model.safetensors.index.json", R"({"weight_map": {"alpha": 3}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"model.safetensors.index.json", "'alpha'"});
}

TEST(SafetensorsErrors, TensorInTwoShards) {
  TempDir tmp;
  write_safetensors(tmp / "s1.safetensors", two_tensors());
  write_safetensors(tmp / "s2.safetensors", {{"beta", "F32", {1}, to_bytes(std::vector<float>{9})}});
  write_bytes(tmp / "model.safetensors.index.json",
              R"({"weight_map": {"alpha": "s1.safetensors", "beta": "s2.safetensors"}})");
  expect_error([&] { fm::SafetensorsArchive::open_dir(tmp.path); },
               {"s2.safetensors", "'beta'", "s1.safetensors"});
}

namespace fm {
namespace {

// Found by fuzzing: a number too large for a double made nlohmann throw out_of_range, which escaped
// as a non-fm::Error exception.
TEST(SafetensorsFuzzRegressions, NumberOutOfRangeIsAnError) {
  const auto dir = std::filesystem::temp_directory_path() / ("fm_st_fuzz_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string header = R"({"w":{"dtype":"F32","shape":[1E400],"data_offsets":[0,4]}})";
  const uint64_t len = header.size();
  {
    std::ofstream f(dir / "model.safetensors", std::ios::binary);
    f.write(reinterpret_cast<const char*>(&len), 8);
    f << header << "abcd";
  }
  try {
    SafetensorsArchive::open_file(dir / "model.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fm
