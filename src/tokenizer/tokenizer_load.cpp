// Loading a Tokenizer from tokenizer.json (+ its model folder), GGUF metadata or a tiktoken rank file.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace fm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open", path.string());
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("{}: read error", path.string());
  return ss.str();
}

json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// A regex that matches `s` literally (a Split pre-tokenizer given {"String": ...}).
std::string quote_regex(std::string_view s) { return "\\Q" + std::string(s) + "\\E"; }

// The regex of a tokenizer.json pre_tokenizer: Sequence[Split(Isolated), ByteLevel(use_regex false)],
// or ByteLevel(use_regex true) alone (GPT-2's regex).
std::string pre_tokenizer_pattern(const json& pre, const std::string& file) {
  auto byte_level_ok = [&](const json& b) {
    if (b.value("add_prefix_space", false))
      fail("{}: ByteLevel pre-tokenizer with add_prefix_space is not supported", file);
  };
  if (!pre.is_object()) fail("{}: pre_tokenizer is missing (a byte-level BPE tokenizer needs one)", file);
  const std::string type = pre.value("type", "");
  if (type == "ByteLevel") {
    byte_level_ok(pre);
    if (!pre.value("use_regex", true))
      fail("{}: ByteLevel pre-tokenizer without a regex is not supported", file);
    return std::string(kGpt2Pattern);
  }
  if (type == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
    const json& split = pre["pretokenizers"][0];
    const json& bl = pre["pretokenizers"][1];
    if (split.value("type", "") == "Split" && bl.value("type", "") == "ByteLevel" &&
        !bl.value("use_regex", true)) {
      byte_level_ok(bl);
      if (split.value("behavior", "") != "Isolated" || split.value("invert", false))
        fail("{}: Split pre-tokenizer behavior '{}' (invert {}) is not supported; only Isolated", file,
             split.value("behavior", ""), split.value("invert", false));
      const json& p = split.at("pattern");
      if (p.contains("Regex")) return p["Regex"].get<std::string>();
      if (p.contains("String")) return quote_regex(p["String"].get<std::string>());
    }
  }
  fail("{}: pre_tokenizer {} is not supported (flashmoe reads Split + ByteLevel, as Qwen ships)", file,
       pre.dump().substr(0, 200));
}

bool normalizer_is_nfc(const json& n, const std::string& file) {
  if (n.is_null()) return false;
  const std::string type = n.value("type", "");
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool any = false;
    for (const json& m : n.at("normalizers")) any = normalizer_is_nfc(m, file) || any;
    return any;
  }
  fail("{}: normalizer '{}' is not supported (flashmoe applies NFC or nothing)", file, type);
}

// tokenizer_config.json's bos_token etc.: a string or {"content": ...}.
std::optional<std::string> token_text(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

// config.json / generation_config.json ids: an int or a list of ints.
std::vector<int32_t> id_list(const json& j, const char* key) {
  std::vector<int32_t> ids;
  if (!j.contains(key)) return ids;
  const json& v = j[key];
  if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  if (v.is_array())
    for (const json& x : v)
      if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
  return ids;
}

// The model folder's other files: special token ids (tokenizer_config.json first, then config.json, as
// gguf-py reads them), more end-of-sequence ids (generation_config.json) and the chat template.
void read_model_folder(const fs::path& dir, Tokenizer& t, std::optional<int32_t>& bos,
                       std::optional<int32_t>& eos, std::optional<int32_t>& pad, std::optional<bool>& add_bos,
                       std::vector<int32_t>& more_eos, std::string& chat_template) {
  auto id_of = [&](const std::optional<std::string>& text) -> std::optional<int32_t> {
    if (!text) return std::nullopt;
    for (const AddedToken& a : t.added_tokens())
      if (a.content == *text) return a.id;
    return std::nullopt;
  };
  if (const fs::path p = dir / "tokenizer_config.json"; fs::is_regular_file(p)) {
    const json cfg = read_json(p);
    bos = id_of(token_text(cfg, "bos_token"));
    eos = id_of(token_text(cfg, "eos_token"));
    pad = id_of(token_text(cfg, "pad_token"));
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
      add_bos = cfg["add_bos_token"].get<bool>();
    if (cfg.contains("chat_template")) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) chat_template = ct.get<std::string>();
      if (ct.is_array())
        for (const json& named : ct)
          if (named.value("name", "") == "default") chat_template = named.value("template", "");
    }
  }
  if (chat_template.empty()) {
    if (const fs::path p = dir / "chat_template.jinja"; fs::is_regular_file(p)) {
      chat_template = read_file(p);
    } else if (const fs::path q = dir / "chat_template.json"; fs::is_regular_file(q)) {
      const json ct = read_json(q);
      if (ct.contains("chat_template") && ct["chat_template"].is_string())
        chat_template = ct["chat_template"];
    }
  }
  if (const fs::path p = dir / "config.json"; fs::is_regular_file(p)) {
    json cfg = read_json(p);
    if (cfg.contains("text_config") && !cfg.contains("eos_token_id")) cfg = cfg["text_config"];
    auto first = [&](const char* key) -> std::optional<int32_t> {
      const std::vector<int32_t> ids = id_list(cfg, key);
      return ids.empty() ? std::nullopt : std::optional(ids[0]);
    };
    if (!bos) bos = first("bos_token_id");
    if (!eos) eos = first("eos_token_id");
    if (!pad) pad = first("pad_token_id");
    for (int32_t id : id_list(cfg, "eos_token_id")) more_eos.push_back(id);
  }
  if (const fs::path p = dir / "generation_config.json"; fs::is_regular_file(p))
    for (int32_t id : id_list(read_json(p), "eos_token_id")) more_eos.push_back(id);
}

}  // namespace

Tokenizer Tokenizer::from_tokenizer_json(const fs::path& file) {
  const std::string name = file.string();
  const json j = read_json(file);
  TokenizerBuilder b(name);
  try {
    const json& model = j.at("model");
    const std::string type = model.value("type", "BPE");
    if (type != "BPE")
      fail("{}: model type '{}' is not supported (flashmoe reads byte-level BPE)", name, type);
    if (model.value("byte_fallback", false)) fail("{}: BPE byte_fallback is not supported", name);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
        fail("{}: BPE {} is not supported", name, key);
    if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0.0)
      fail("{}: BPE dropout is not supported", name);
    const std::string decoder =
        j.contains("decoder") && j["decoder"].is_object() ? j["decoder"].value("type", "") : "";
    if (decoder != "ByteLevel")
      fail("{}: decoder '{}' is not supported (flashmoe reads byte-level BPE)", name, decoder);

    b.set_pattern(pre_tokenizer_pattern(j.value("pre_tokenizer", json()), name), name + ": pre_tokenizer");
    b.tokenizer().nfc_ = normalizer_is_nfc(j.value("normalizer", json()), name);
    b.tokenizer().ignore_merges_ = model.value("ignore_merges", false);

    // The vocabulary, spelled in the byte-level alphabet; merges refer to it by that spelling.
    const json& vocab = model.at("vocab");
    StringMap<int32_t> by_spelling;
    by_spelling.reserve(vocab.size());
    for (const auto& [spelling, id_json] : vocab.items()) {
      const int32_t id = id_json.get<int32_t>();
      std::optional<std::string> bytes = utf8::byte_level_decode(spelling);
      b.set_token(id, bytes ? std::move(*bytes) : spelling, TokenType::Normal, bytes.has_value());
      by_spelling.emplace(spelling, id);
    }
    const json& merges = model.at("merges");
    b.tokenizer().merges_.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      std::string left, right;
      if (m.is_string()) {  // "left right"
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail("{}: merge {} '{}' is not two tokens separated by a space", name, i, s);
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {  // ["left", "right"]
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        fail("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", name, i);
      }
      const auto l = by_spelling.find(left), r = by_spelling.find(right);
      if (l == by_spelling.end() || r == by_spelling.end())
        fail("{}: merge {} ('{}' '{}') names a token that is not in the vocabulary", name, i, left, right);
      b.add_merge(l->second, r->second);
    }
    if (j.contains("added_tokens"))
      for (const json& a : j["added_tokens"])
        b.add_added(AddedToken{.id = a.at("id").get<int32_t>(),
                               .content = a.at("content").get<std::string>(),
                               .special = a.value("special", false),
                               .lstrip = a.value("lstrip", false),
                               .rstrip = a.value("rstrip", false),
                               .single_word = a.value("single_word", false),
                               .normalized = a.value("normalized", false)});
  } catch (const json::exception& e) {
    fail("{}: unexpected tokenizer.json structure: {}", name, e.what());
  }
  Tokenizer& t = b.tokenizer();
  std::vector<int32_t> more_eos;
  read_model_folder(file.parent_path(), t, t.bos_id_, t.eos_id_, t.pad_id_, t.add_bos_, more_eos,
                    t.chat_template_);
  for (int32_t id : more_eos) t.eos_ids_.push_back(id);
  return b.finish();
}

Tokenizer Tokenizer::from_gguf(const GgufFile& gguf) {
  const std::string name = gguf.path();
  const std::optional<std::string> model = gguf.try_string("tokenizer.ggml.model");
  if (!model) fail("{}: no tokenizer in this file (metadata key 'tokenizer.ggml.model' missing)", name);
  if (*model != "gpt2")
    fail("{}: tokenizer.ggml.model '{}' is not supported (flashmoe reads byte-level BPE, 'gpt2')", name,
         *model);
  const std::string pre = gguf.try_string("tokenizer.ggml.pre").value_or("default");
  const std::optional<std::string_view> pattern = pattern_for_pre_name(pre);
  if (!pattern)
    fail(
        "{}: tokenizer.ggml.pre '{}' is not supported (flashmoe knows qwen35, qwen2, deepseek-r1-qwen, "
        "stablelm2, "
        "gpt-2)",
        name, pre);
  const std::vector<std::string> tokens = gguf.get_string_array("tokenizer.ggml.tokens");
  const std::vector<int64_t> types =
      gguf.try_int_array("tokenizer.ggml.token_type").value_or(std::vector<int64_t>(tokens.size(), 1));
  if (types.size() != tokens.size())
    fail("{}: tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens {}", name, types.size(),
         tokens.size());
  const std::vector<std::string> merges = gguf.get_string_array("tokenizer.ggml.merges");

  TokenizerBuilder b(name);
  b.set_pattern(*pattern, name + ": tokenizer.ggml.pre");
  Tokenizer& t = b.tokenizer();
  // Not in llama.cpp's keys: what Hugging Face's tokenizer.json says (flashmoe writes these); else what
  // the Qwen tokenizers do.
  const bool qwen = pre == "qwen35" || pre == "qwen2" || pre == "deepseek-r1-qwen";
  t.nfc_ = gguf.try_bool("tokenizer.flashmoe.nfc").value_or(qwen);
  t.ignore_merges_ = gguf.try_bool("tokenizer.flashmoe.ignore_merges").value_or(pre == "qwen35");

  std::vector<bool> normal(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) normal[i] = TokenType(types[i]) == TokenType::Normal;
  TokenIndex by_spelling;  // merges name tokens by their spelling
  try {
    by_spelling.build(tokens.data(), tokens.size(), &normal);
  } catch (const Error& e) {
    fail("{}: tokenizer.ggml.tokens: {}", name, e.what());
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = int32_t(i);
    const std::string& text = tokens[i];
    switch (TokenType(types[i])) {
      case TokenType::Normal: {
        std::optional<std::string> bytes = utf8::byte_level_decode(text);
        b.set_token(id, bytes ? std::move(*bytes) : text, TokenType::Normal, bytes.has_value());
        break;
      }
      case TokenType::Control:
      case TokenType::UserDefined:
        b.add_added(
            AddedToken{.id = id, .content = text, .special = TokenType(types[i]) == TokenType::Control});
        break;
      case TokenType::Unused:
        b.set_token(id, "", TokenType::Unused);
        break;
      case TokenType::Unknown:
        b.set_token(id, text, TokenType::Unknown);
        break;
      default:
        fail("{}: token {} '{}' has type {}, which a byte-level BPE vocabulary does not use", name, i, text,
             types[i]);
    }
  }
  t.merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    const size_t sp = m.find(' ', 1);  // as llama.cpp splits them
    const int32_t l = sp == std::string::npos ? -1 : by_spelling.find(std::string_view(m).substr(0, sp));
    const int32_t r = sp == std::string::npos ? -1 : by_spelling.find(std::string_view(m).substr(sp + 1));
    if (l < 0 || r < 0)
      fail("{}: tokenizer.ggml.merges[{}] '{}' is not two tokens of the vocabulary", name, i, m);
    b.add_merge(l, r);
  }
  auto id_key = [&](const char* key) -> std::optional<int32_t> {
    const std::optional<uint64_t> v = gguf.try_u64(key);
    if (v && *v >= tokens.size())
      fail("{}: {} = {} is outside the vocabulary of {} tokens", name, key, *v, tokens.size());
    return v ? std::optional(int32_t(*v)) : std::nullopt;
  };
  t.bos_id_ = id_key("tokenizer.ggml.bos_token_id");
  t.eos_id_ = id_key("tokenizer.ggml.eos_token_id");
  t.pad_id_ = id_key("tokenizer.ggml.padding_token_id");
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (const auto id = id_key(key)) t.eos_ids_.push_back(*id);
  t.add_bos_ = gguf.try_bool("tokenizer.ggml.add_bos_token");
  t.chat_template_ = gguf.try_string("tokenizer.chat_template").value_or("");
  return b.finish();
}

namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::optional<std::string> base64_decode(std::string_view s) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    const int v = base64_value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  return out;
}

}  // namespace

Tokenizer Tokenizer::from_tiktoken(const fs::path& rank_file, const TiktokenSpec& spec) {
  const std::string name = rank_file.string();
  const std::string text = read_file(rank_file);
  TokenizerBuilder b(name);
  b.set_pattern(spec.pattern, name + ": pattern");
  Tokenizer& t = b.tokenizer();
  t.nfc_ = spec.nfc;
  t.ignore_merges_ = true;  // as transformers' TikTokenConverter sets it

  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    std::optional<std::string> bytes =
        sp == std::string::npos ? std::nullopt : base64_decode(line.substr(0, sp));
    int64_t rank = -1;
    if (sp != std::string::npos) {
      const std::string_view r = line.substr(sp + 1);
      rank = r.empty() || r.size() > 9 ||
                     !std::all_of(r.begin(), r.end(), [](char c) { return c >= '0' && c <= '9'; })
                 ? -1
                 : std::stoll(std::string(r));
    }
    if (!bytes || bytes->empty() || rank < 0) fail("{}: line {} is not 'base64-token rank'", name, line_no);
    if (rank < t.vocab_size() && t.token_type(int32_t(rank)) == TokenType::Normal)
      fail("{}: line {}: rank {} appears twice", name, line_no, rank);
    b.set_token(int32_t(rank), std::move(*bytes), TokenType::Normal);
  }
  std::vector<bool> present(t.tokens_.size());
  for (size_t id = 0; id < present.size(); ++id) present[id] = t.types_[id] == TokenType::Normal;
  TokenIndex ranks;  // throws for a token that appears twice
  try {
    ranks.build(t.tokens_.data(), t.tokens_.size(), &present);
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }
  // Merges as TikTokenConverter derives them: for each token (in rank order), every split into two
  // tokens, ordered by the ranks of the left then the right part; all ordered by the token's rank.
  struct Split {
    int32_t rank, left, right;
  };
  std::vector<Split> splits;
  for (int32_t rank = 0; rank < t.vocab_size(); ++rank) {
    const std::string_view s(t.tokens_[size_t(rank)]);
    for (size_t k = 1; k < s.size(); ++k) {
      const int32_t l = ranks.find(s.substr(0, k));
      if (l < 0) continue;
      const int32_t r = ranks.find(s.substr(k));
      if (r >= 0) splits.push_back({rank, l, r});
    }
  }
  std::sort(splits.begin(), splits.end(), [](const Split& a, const Split& b) {
    return std::tie(a.rank, a.left, a.right) < std::tie(b.rank, b.left, b.right);
  });
  t.merges_.reserve(splits.size());
  for (const Split& s : splits) b.add_merge(s.left, s.right);
  for (const auto& [id, content] : spec.special_tokens)
    b.add_added(AddedToken{.id = id, .content = content, .special = true});
  return b.finish();
}

Tokenizer Tokenizer::load(const fs::path& model_path) {
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) {
    const fs::path json_file = model_path / "tokenizer.json";
    if (!fs::is_regular_file(json_file, ec))
      fail("{}: no tokenizer.json in this folder (flashmoe reads the Hugging Face tokenizer.json)",
           model_path.string());
    return from_tokenizer_json(json_file);
  }
  if (!fs::exists(model_path, ec)) fail("{}: no such file or folder", model_path.string());
  if (model_path.extension() == ".gguf") return from_gguf(GgufFile::open(model_path));
  if (model_path.filename() == "tokenizer.json") return from_tokenizer_json(model_path);
  fail("{}: not a model folder, a tokenizer.json or a .gguf file", model_path.string());
}

}  // namespace fm
