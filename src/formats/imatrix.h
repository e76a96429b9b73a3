// Importance matrices as llama.cpp's llama-imatrix writes them (GGUF, general.type = "imatrix"), for
// quantizing with llama.cpp's weighted quantizers (formats/quant.h, quantize_row with importance).
//
// Per weight tensor W of the model (its GGUF name) two F32 tensors:
//   W.in_sum2  ne = [cols, mats]: the sum, over the activations W met, of each column's squared input;
//              mats is 1 for a 2-D weight and the number of experts for a stacked 3-D expert tensor
//   W.counts   ne = [1, mats]: how many activations each matrix (expert) met
// The importance of column c of matrix m is in_sum2[m][c] / counts[m], with counts rounded to the
// nearest integer; a matrix that met none (an expert the calibration text never routed to) gets 1 for
// every column. This is llama-quantize's reading (tools/quantize/quantize.cpp, load_imatrix), so the
// same file gives the same weights as there. The legacy .dat format is not read.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace fm {

class GgufFile;

struct ImportanceEntry {
  int64_t cols = 0, mats = 0;
  std::vector<float> values;  // [mats][cols]

  // Matrix m's (expert m's) cols values.
  const float* matrix(int64_t m) const { return values.data() + m * cols; }
};

class ImportanceMatrix {
 public:
  // Throws fm::Error naming the file and entry for: a file that is not GGUF or whose general.type is
  // not "imatrix", an in_sum2 without its counts or the other way round, types other than F32, shapes
  // that do not match (in_sum2 [cols, mats] against counts of mats values), negative or non-finite
  // values, and a file with no entries.
  static ImportanceMatrix load(const std::filesystem::path& path);
  static ImportanceMatrix from_gguf(const GgufFile& file);

  const std::string& path() const { return path_; }
  const std::map<std::string, ImportanceEntry, std::less<>>& entries() const { return entries_; }
  const ImportanceEntry* find(std::string_view tensor) const;

  // The entry for weight tensor `tensor` of shape [mats][rows][cols] (rank 3) or [rows][cols]
  // (rank 2, mats = 1), or nullptr when the file has none. Throws fm::Error naming both files' sides
  // when the entry's columns or matrix count differ from the tensor's (llama-quantize refuses that too).
  const ImportanceEntry* for_tensor(std::string_view tensor, const std::vector<int64_t>& shape) const;

 private:
  std::string path_;
  std::map<std::string, ImportanceEntry, std::less<>> entries_;
};

}  // namespace fm
