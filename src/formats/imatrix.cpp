#include "formats/imatrix.h"

#include <cmath>
#include <cstring>

#include "formats/gguf.h"
#include "util/error.h"

namespace fm {

namespace {

constexpr std::string_view kSums = ".in_sum2", kCounts = ".counts";

bool strip_suffix(std::string& name, std::string_view suffix) {
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  name.resize(name.size() - suffix.size());
  return true;
}

std::vector<float> read_f32(const GgufFile& file, const GgufTensor& t) {
  if (t.view.dtype != DType::F32)
    fail("{}: imatrix tensor '{}' has type {}, expected F32", file.path(), t.name(),
         dtype_name(t.view.dtype));
  std::vector<float> v(static_cast<size_t>(t.view.numel()));
  std::memcpy(v.data(), t.view.data, v.size() * sizeof(float));
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]) || v[i] < 0)
      fail("{}: imatrix tensor '{}' has the value {} at index {} (expected finite and non-negative)",
           file.path(), t.name(), v[i], i);
  return v;
}

}  // namespace

ImportanceMatrix ImportanceMatrix::load(const std::filesystem::path& path) {
  const GgufFile file = GgufFile::open(path);
  return from_gguf(file);
}

ImportanceMatrix ImportanceMatrix::from_gguf(const GgufFile& file) {
  if (const std::optional<std::string> type = file.try_string("general.type"); type && *type != "imatrix")
    fail("{}: not an importance matrix (general.type is '{}', expected 'imatrix')", file.path(), *type);
  ImportanceMatrix m;
  m.path_ = file.path();
  std::map<std::string, std::pair<const GgufTensor*, const GgufTensor*>, std::less<>> pairs;
  for (const GgufTensor& t : file.tensors()) {
    std::string name = t.name();
    if (strip_suffix(name, kSums))
      pairs[name].first = &t;
    else if (strip_suffix(name, kCounts))
      pairs[name].second = &t;
  }
  for (const auto& [name, pair] : pairs) {
    const auto [sums, counts] = pair;
    if (!sums)
      fail("{}: imatrix entry '{}' has '{}{}' but no '{}{}'", file.path(), name, name, kCounts, name, kSums);
    if (!counts)
      fail("{}: imatrix entry '{}' has '{}{}' but no '{}{}'", file.path(), name, name, kSums, name, kCounts);
    const std::vector<float> s = read_f32(file, *sums), c = read_f32(file, *counts);
    // in_sum2 is [cols] or [cols, mats] (GGML order), counts one value per matrix.
    const int64_t cols = int64_t(sums->ne[0]), mats = int64_t(c.size());
    if (cols == 0 || mats == 0 || int64_t(s.size()) != cols * mats)
      fail(
          "{}: imatrix entry '{}': in_sum2 has shape {} ({} values) but counts has {} values; expected "
          "in_sum2 of "
          "[columns, {}]",
          file.path(), name, shape_str(sums->view.shape), s.size(), c.size(), c.size());
    ImportanceEntry e{cols, mats, std::vector<float>(s.size())};
    for (int64_t j = 0; j < mats; ++j) {
      // llama-quantize rounds the counts to integers; a matrix that met no activation weighs all its
      // columns 1.
      const float count = float(std::lround(c[size_t(j)]));
      for (int64_t i = 0; i < cols; ++i)
        e.values[size_t(j * cols + i)] = count > 0.0f ? s[size_t(j * cols + i)] / count : 1.0f;
    }
    m.entries_.emplace(name, std::move(e));
  }
  if (m.entries_.empty())
    fail("{}: no importance entries (expected tensors named '<weight>{}' and '<weight>{}')", file.path(),
         kSums, kCounts);
  return m;
}

const ImportanceEntry* ImportanceMatrix::find(std::string_view tensor) const {
  const auto it = entries_.find(tensor);
  return it == entries_.end() ? nullptr : &it->second;
}

const ImportanceEntry* ImportanceMatrix::for_tensor(std::string_view tensor,
                                                    const std::vector<int64_t>& shape) const {
  const ImportanceEntry* e = find(tensor);
  if (!e) return nullptr;
  const int64_t cols = shape.empty() ? 0 : shape.back(), mats = shape.size() == 3 ? shape[0] : 1;
  if (shape.size() < 2 || shape.size() > 3 || e->cols != cols || e->mats != mats)
    fail("{}: imatrix entry '{}' is for {} matrices of {} columns, but the tensor has shape {}", path_,
         tensor, e->mats, e->cols, shape_str(shape));
  return e;
}

}  // namespace fm
