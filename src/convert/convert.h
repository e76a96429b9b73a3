// Conversion to GGUF: a Hugging Face checkpoint (or a GGUF file, to requantize) in, a GGUF file
// that flashmoe and llama.cpp read out. Tensor by tensor and row by row, so memory stays near one
// row per thread plus the output buffer of one tensor; written under a temporary name and renamed
// only when complete.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "formats/dtype.h"

namespace fm {

struct TensorTypeRule {
  std::string pattern;  // regular expression over the GGUF tensor name (std::regex_search)
  DType type;
};

struct ConvertOptions {
  DType type = DType::F16;             // 2-D weights
  std::optional<DType> expert_type;    // routed experts (default: type)
  std::vector<TensorTypeRule> rules;   // first match wins over the above
  int threads = 1;
  // llama.cpp's importance matrix (formats/imatrix.h; empty: none). Each quantized tensor with an entry
  // is quantized with it, row by row (an expert's rows with that expert's part), as llama-quantize does.
  // A tensor without an entry is quantized without, except at IQ3_XXS, which llama-quantize refuses
  // without one (but for token_embd and output), and so does this. A type that has an entry but cannot
  // use it (formats/quant.h, ImportanceUse::Unsupported) is an error, not silently ignored.
  std::filesystem::path imatrix;
};

struct ConvertProgress {
  size_t tensor_index, tensor_count;
  const std::string& name;
  DType type;
  uint64_t values_done, values_total;  // weights converted so far, of all
};

// "Q8_0" -> DType; throws fm::Error naming `what` for an unknown or unwritable type.
DType parse_output_type(const std::string& name, const char* what);
// "REGEX=TYPE"
TensorTypeRule parse_tensor_type_rule(const std::string& text);

class GgufWriter;
struct ModelConfig;
// The model metadata llama.cpp reads ({arch}.* keys, general.*), as convert_to_gguf writes it.
void write_gguf_model_metadata(GgufWriter& out, const ModelConfig& config, DType main_type, const std::string& source);

void convert_to_gguf(const std::filesystem::path& input, const std::filesystem::path& output,
                     const ConvertOptions& options, const std::function<void(const ConvertProgress&)>& progress = {});

}  // namespace fm
