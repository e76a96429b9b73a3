#include "formats/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace fm {

namespace fs = std::filesystem;
using nlohmann::json;

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

namespace {

// A header is a few KiB to a few MiB even for the largest checkpoints; a bigger length is corruption
// (or an attack) and would otherwise make us parse an arbitrary amount of JSON.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;
// Element counts above this are not real tensors, and keeping numel and numel x element size well
// inside uint64 lets the size arithmetic below stay overflow-free.
constexpr uint64_t kMaxNumel = uint64_t(1) << 62;

// JSON non-negative integer -> value. nlohmann stores non-negative literals as unsigned and negative
// ones as signed, so a signed value here is always negative; floats ("4.0") are rejected too.
std::optional<uint64_t> as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  return std::nullopt;
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(p[i]);
  return v;
}

struct Range {
  uint64_t begin, end;
  const std::string* name;
};

std::string read_text_file(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail("{}: is a directory", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("{}: cannot read", path.string());
  return ss.str();
}

}  // namespace

SafetensorsArchive SafetensorsArchive::open_file(const fs::path& file) {
  SafetensorsArchive archive;
  archive.source_ = file.string();
  archive.add_file(file);
  return archive;
}

SafetensorsArchive SafetensorsArchive::open_dir(const fs::path& dir) {
  SafetensorsArchive archive;
  archive.source_ = dir.string();
  std::error_code ec;
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single_path = dir / "model.safetensors";

  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec))
      fail("{}: no model.safetensors or model.safetensors.index.json", dir.string());
    archive.add_file(single_path);
    return archive;
  }

  const std::string index_name = index_path.string();
  json index;
  try {
    index = json::parse(read_text_file(index_path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
    fail("{}: invalid JSON: {}", index_name, e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("{}: missing 'weight_map' object", index_name);
  const json& weight_map = index["weight_map"];

  // Distinct shards in a stable order, each remembered with the first tensor naming it for messages.
  std::map<std::string, std::string> shards;
  for (const auto& [name, shard_json] : weight_map.items()) {
    if (!shard_json.is_string()) fail("{}: tensor '{}': shard name is not a string", index_name, name);
    const std::string shard = shard_json.get<std::string>();
    // The index is data from the download; it must not make us open files outside the model folder.
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos)
      fail("{}: tensor '{}': shard '{}' is not a plain file name inside {}", index_name, name, shard,
           dir.string());
    shards.emplace(shard, name);
  }
  for (const auto& [shard, first_tensor] : shards) {
    const fs::path shard_path = dir / shard;
    if (!fs::exists(shard_path, ec))
      fail("{}: shard '{}' (holding tensor '{}') does not exist", index_name, shard, first_tensor);
    archive.add_file(shard_path);
  }
  // An index promising a tensor the shard lacks means a broken or partial download: say so now rather
  // than as a missing weight deep inside model loading.
  for (const auto& [name, shard_json] : weight_map.items()) {
    const std::string shard_file = (dir / shard_json.get<std::string>()).string();
    const TensorView* t = archive.find(name);
    if (t == nullptr)
      fail("{}: tensor '{}' is listed in shard '{}' but not present there", index_name, name,
           shard_json.get<std::string>());
    if (t->file != shard_file)
      fail("{}: tensor '{}' is listed in shard '{}' but found in {}", index_name, name,
           shard_json.get<std::string>(), t->file);
  }
  return archive;
}

void SafetensorsArchive::add_file(const fs::path& file) {
  auto mapped = std::make_unique<MappedFile>(file);
  const std::string& path = mapped->path();
  const uint64_t file_size = mapped->size();
  if (file_size < 8) fail("{}: too short for a safetensors file ({} bytes)", path, file_size);

  const uint64_t header_len = read_u64_le(mapped->data());
  if (header_len > file_size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes)", path, header_len, file_size);
  if (header_len > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the {} MiB limit", path, header_len, kMaxHeaderBytes >> 20);

  const char* header_begin = reinterpret_cast<const char*>(mapped->data() + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
    fail("{}: invalid header JSON: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", path);

  const std::byte* data_start = mapped->data() + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  std::vector<TensorView> views;
  views.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object()) fail("{}: tensor '{}': entry is not an object", path, name);

    // dtype
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) fail("{}: tensor '{}': missing dtype", path, name);
    if (!dtype_it->is_string()) fail("{}: tensor '{}': dtype is not a string", path, name);
    const std::string dtype_name = dtype_it->get<std::string>();
    const std::optional<DType> dtype = dtype_from_safetensors(dtype_name);
    if (!dtype) fail("{}: tensor '{}': unknown dtype '{}'", path, name, dtype_name);

    // shape
    auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) fail("{}: tensor '{}': missing shape", path, name);
    if (!shape_it->is_array()) fail("{}: tensor '{}': shape is not an array", path, name);
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const json& d : *shape_it) {
      const std::optional<uint64_t> dim = as_u64(d);
      if (!dim)
        fail("{}: tensor '{}': shape {} must hold non-negative integers", path, name, shape_it->dump());
      // Checked before multiplying so the running product never wraps.
      if (*dim > kMaxNumel || (*dim != 0 && numel > kMaxNumel / *dim))
        fail("{}: tensor '{}': shape {} has too many elements", path, name, shape_it->dump());
      numel *= *dim;
      shape.push_back(int64_t(*dim));
    }

    // data_offsets
    auto off_it = entry.find("data_offsets");
    if (off_it == entry.end()) fail("{}: tensor '{}': missing data_offsets", path, name);
    if (!off_it->is_array() || off_it->size() != 2 || !as_u64((*off_it)[0]) || !as_u64((*off_it)[1]))
      fail("{}: tensor '{}': data_offsets {} must be two non-negative integers", path, name, off_it->dump());
    const uint64_t begin = (*off_it)[0].get<uint64_t>();
    const uint64_t end = (*off_it)[1].get<uint64_t>();
    if (begin > end) fail("{}: tensor '{}': data_offsets [{}, {}] begin after end", path, name, begin, end);
    if (end > data_size)
      fail("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes)", path, name,
           begin, end, data_size);

    // numel <= 2^62 and at most 8 bytes per element would still wrap, so check the product fits first.
    const DTypeInfo& info = dtype_info(*dtype);
    if (numel / uint64_t(info.block) > UINT64_MAX / uint64_t(info.block_bytes))
      fail("{}: tensor '{}': shape {} is too large", path, name, shape_str(shape));
    const std::optional<uint64_t> expected = dtype_row_bytes(*dtype, numel);
    if (!expected)
      fail("{}: tensor '{}': {} elements are not a whole number of {} blocks", path, name, numel, dtype_name);
    if (end - begin != *expected)
      fail("{}: tensor '{}': {} bytes stored but {} {} needs {}", path, name, end - begin, dtype_name,
           shape_str(shape), *expected);

    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    view.shape = std::move(shape);
    view.data = data_start + begin;
    view.nbytes = end - begin;
    view.file = path;
    views.push_back(std::move(view));
  }

  // Overlap check: sorted by begin, a range must start at or after the furthest end seen so far.
  // Empty tensors occupy no bytes and cannot collide with anything.
  std::vector<Range> ranges;
  for (const TensorView& v : views) {
    const uint64_t begin = uint64_t(v.data - data_start);
    if (v.nbytes > 0) ranges.push_back({begin, begin + v.nbytes, &v.name});
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1, furthest = 0; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[furthest].end)
      fail("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", path, *ranges[furthest].name,
           ranges[furthest].begin, ranges[furthest].end, *ranges[i].name, ranges[i].begin, ranges[i].end);
    if (ranges[i].end > ranges[furthest].end) furthest = i;
  }

  for (TensorView& v : views) {
    auto existing = tensors_.find(v.name);
    if (existing != tensors_.end())
      fail("{}: tensor '{}' is also in {}", path, v.name, existing->second.file);
  }
  for (TensorView& v : views) {
    std::string key = v.name;
    tensors_.emplace(std::move(key), std::move(v));
  }
  files_.push_back(std::move(mapped));
}

const TensorView* SafetensorsArchive::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorView& SafetensorsArchive::get(std::string_view name) const {
  const TensorView* t = find(name);
  if (t == nullptr) fail("{}: tensor '{}' not found", source_, name);
  return *t;
}

bool SafetensorsArchive::locate(const std::byte* p, std::string* path, uint64_t* offset) const {
  for (const auto& f : files_) {
    if (f->data() && p >= f->data() && p < f->data() + f->size()) {
      *path = f->path();
      *offset = uint64_t(p - f->data());
      return true;
    }
  }
  return false;
}

uint64_t SafetensorsArchive::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors_) total += t.nbytes;
  return total;
}

}  // namespace fm
