// flashmoe tokenize: text on stdin to token ids, or token ids to text, with a model's tokenizer.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fm::cli {

namespace {

struct TokenizeArgs {
  std::string model;
  bool ids = false, text = false, no_special = false;
};

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  if (std::ferror(stdin)) fail("tokenize: cannot read standard input");
  return data;
}

std::vector<int32_t> parse_ids(const std::string& input) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < input.size()) {
    while (i < input.size() &&
           (input[i] == ' ' || input[i] == '\n' || input[i] == '\t' || input[i] == '\r' || input[i] == ','))
      ++i;
    size_t j = i;
    while (j < input.size() && input[j] != ' ' && input[j] != '\n' && input[j] != '\t' && input[j] != '\r' &&
           input[j] != ',')
      ++j;
    if (j == i) break;
    const std::string word = input.substr(i, j - i);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || v < 0 || v > INT32_MAX) fail("tokenize --ids: '{}' is not a token id", word);
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

void tokenize(const TokenizeArgs& a) {
  const Tokenizer tok = Tokenizer::load(a.model);
  const std::string input = read_stdin();
  std::string out;
  if (a.ids) {
    out = tok.decode(parse_ids(input));
  } else {
    for (int32_t id : tok.encode(input, !a.no_special)) {
      if (!out.empty()) out.push_back(' ');
      out += std::to_string(id);
    }
    out.push_back('\n');
  }
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0)
    fail("tokenize: cannot write standard output");
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Text on stdin to token ids, or (--ids) token ids to text");
  cmd->add_option("-m,--model", args->model, "Model folder (tokenizer.json) or .gguf file")->required();
  CLI::Option* ids = cmd->add_flag("--ids", args->ids, "Read token ids (space separated), print their text");
  CLI::Option* text = cmd->add_flag("--text", args->text, "Read text, print its token ids (the default)");
  ids->excludes(text);
  cmd->add_flag("--no-special", args->no_special,
                "Encode special-token text (<|im_end|>, ...) as plain text");
  cmd->callback([args] { tokenize(*args); });
}

}  // namespace fm::cli
