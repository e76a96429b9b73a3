// flashmoe convert: a Hugging Face checkpoint (or a GGUF file) to a GGUF file.
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "convert/convert.h"
#include "util/error.h"

namespace fm::cli {

namespace {

struct ConvertArgs {
  std::string input, output, type = "F16", expert_type, imatrix;
  std::vector<std::string> tensor_types;
  int threads = 0;
};

void convert(const ConvertArgs& a) {
  ConvertOptions o;
  o.type = parse_output_type(a.type, "--type");
  if (!a.expert_type.empty()) o.expert_type = parse_output_type(a.expert_type, "--expert-type");
  for (const std::string& rule : a.tensor_types) o.rules.push_back(parse_tensor_type_rule(rule));
  o.threads = resolve_threads(a.threads);
  o.imatrix = a.imatrix;
  convert_to_gguf(a.input, a.output, o, [](const ConvertProgress& p) {
    std::fprintf(stderr, "\r[%zu/%zu] %3.0f%% %-40s %-8s", p.tensor_index + 1, p.tensor_count,
                 100.0 * double(p.values_done) / double(p.values_total), p.name.c_str(),
                 std::string(dtype_name(p.type)).c_str());
  });
  std::fprintf(stderr, "\nconvert: wrote %s\n", a.output.c_str());
}

}  // namespace

void add_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a Hugging Face checkpoint or a GGUF file to GGUF");
  cmd->add_option("input", args->input, "Model folder (config.json + safetensors) or GGUF file")->required();
  cmd->add_option("-o,--output", args->output, "Output .gguf file (written only when complete)")->required();
  cmd->add_option("--type", args->type, "Type of the weight matrices: F32, F16, BF16, Q8_0, Q4_K, ...");
  cmd->add_option("--expert-type", args->expert_type, "Type of the routed experts (default: --type)");
  cmd->add_option("--tensor-type", args->tensor_types,
                  "REGEX=TYPE for tensors whose GGUF name matches (repeatable)");
  cmd->add_option("--imatrix", args->imatrix,
                  "Importance matrix (llama-imatrix's GGUF) to quantize with, as llama-quantize --imatrix");
  cmd->add_option("-t,--threads", args->threads, "Threads (default: all)")->check(CLI::NonNegativeNumber);
  cmd->callback([args] { convert(*args); });
}

}  // namespace fm::cli
