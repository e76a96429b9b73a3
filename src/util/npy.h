// NumPy .npy files (format 1.0, little-endian float32, C order), for logits dumps and test
// references. Writes go to a temporary file renamed on success, so a failed run never leaves a
// partial file that looks complete.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace fm {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape);
NpyArray read_npy(const std::filesystem::path& path);  // float32 '<f4' only

}  // namespace fm
