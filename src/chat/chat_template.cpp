#include "chat/chat_template.h"

#include <fstream>
#include <sstream>

#include "formats/gguf.h"

namespace fm {

namespace {

using Json = ChatTemplate::Json;

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("{}: cannot read", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Json read_json(const std::filesystem::path& p) {
  try {
    return Json::parse(read_text(p));
  } catch (const Json::exception& e) {
    fail("{}: invalid JSON: {}", p.string(), e.what());
  }
}

const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

// tokenizer_config.json writes a special token as a string or as an AddedToken {"content": ...}.
Json special_tokens_of(const Json& config, const std::filesystem::path& file) {
  Json out = Json::object();
  for (const char* key : kSpecialTokens) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (it->is_string()) {
      out[key] = *it;
    } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      out[key] = (*it)["content"];
    } else {
      fail("{}: '{}' is neither a string nor {{\"content\": ...}}", file.string(), key);
    }
  }
  return out;
}

ChatTemplate from_folder(const std::filesystem::path& dir) {
  const auto config_path = dir / "tokenizer_config.json";
  Json tokens = Json::object();
  Json config;
  if (std::filesystem::exists(config_path)) {
    config = read_json(config_path);
    if (!config.is_object()) fail("{}: expected a JSON object", config_path.string());
    tokens = special_tokens_of(config, config_path);
  }
  std::map<std::string, std::string> templates;
  std::string origin;
  if (const auto jinja_path = dir / "chat_template.jinja"; std::filesystem::exists(jinja_path)) {
    templates["default"] = read_text(jinja_path);
    origin = jinja_path.string();
  } else if (const auto json_path = dir / "chat_template.json"; std::filesystem::exists(json_path)) {
    const Json j = read_json(json_path);
    if (!j.is_object() || !j.contains("chat_template") || !j["chat_template"].is_string())
      fail("{}: expected {{\"chat_template\": \"...\"}}", json_path.string());
    templates["default"] = j["chat_template"].get<std::string>();
    origin = json_path.string();
  } else if (config.is_object() && config.contains("chat_template")) {
    const Json& t = config["chat_template"];
    origin = config_path.string();
    if (t.is_string()) {
      templates["default"] = t.get<std::string>();
    } else if (t.is_array()) {
      for (const Json& named : t) {
        if (!named.is_object() || !named.contains("name") || !named["name"].is_string() ||
            !named.contains("template") || !named["template"].is_string())
          fail("{}: 'chat_template' list entries must be {{\"name\": ..., \"template\": ...}}", origin);
        templates[named["name"].get<std::string>()] = named["template"].get<std::string>();
      }
    } else {
      fail("{}: 'chat_template' must be a string or a list of named templates", origin);
    }
  } else {
    fail(
        "{}: no chat template (looked for chat_template.jinja, chat_template.json and 'chat_template' in "
        "tokenizer_config.json)",
        dir.string());
  }
  return ChatTemplate(std::move(templates), std::move(tokens), origin);
}

ChatTemplate from_gguf(const std::filesystem::path& path) {
  const GgufFile gguf = GgufFile::open(path);
  std::map<std::string, std::string> templates;
  const auto source = gguf.try_string("tokenizer.chat_template");
  if (!source)
    fail("{}: metadata key 'tokenizer.chat_template' missing: the file carries no chat template",
         path.string());
  templates["default"] = *source;
  if (auto tool_use = gguf.try_string("tokenizer.chat_template.tool_use")) templates["tool_use"] = *tool_use;
  Json tokens = Json::object();
  if (const auto vocab = gguf.try_string_array("tokenizer.ggml.tokens")) {
    const std::pair<const char*, const char*> ids[] = {
        {"tokenizer.ggml.bos_token_id", "bos_token"},     {"tokenizer.ggml.eos_token_id", "eos_token"},
        {"tokenizer.ggml.unknown_token_id", "unk_token"}, {"tokenizer.ggml.seperator_token_id", "sep_token"},
        {"tokenizer.ggml.padding_token_id", "pad_token"}, {"tokenizer.ggml.cls_token_id", "cls_token"},
        {"tokenizer.ggml.mask_token_id", "mask_token"}};
    for (const auto& [key, name] : ids) {
      const auto id = gguf.try_u64(key);
      if (!id) continue;
      if (*id >= vocab->size())
        fail("{}: {} = {} is outside the vocabulary ({} tokens)", path.string(), key, *id, vocab->size());
      tokens[name] = (*vocab)[size_t(*id)];
    }
  }
  return ChatTemplate(std::move(templates), std::move(tokens), path.string() + ":tokenizer.chat_template");
}

}  // namespace

ChatTemplate ChatTemplate::from_model(const std::filesystem::path& path) {
  if (std::filesystem::is_directory(path)) return from_folder(path);
  if (path.extension() == ".gguf") return from_gguf(path);
  if (!std::filesystem::exists(path)) fail("{}: no such file or folder", path.string());
  fail("{}: expected a model folder or a .gguf file", path.string());
}

ChatTemplate::ChatTemplate(std::map<std::string, std::string> templates, Json special_tokens,
                           std::string origin)
    : special_tokens_(std::move(special_tokens)), origin_(std::move(origin)) {
  if (templates.empty()) fail("{}: no chat template", origin_);
  for (auto& [name, source] : templates) {
    const std::string where = name == "default" ? origin_ : origin_ + "[" + name + "]";
    templates_.emplace(name, jinja::Template(source, where));
  }
}

ChatTemplate::ChatTemplate(const std::string& source, Json special_tokens, std::string origin)
    : ChatTemplate(std::map<std::string, std::string>{{"default", source}}, std::move(special_tokens),
                   std::move(origin)) {}

std::string ChatTemplate::render(const Json& messages, const Json& tools, bool add_generation_prompt,
                                 bool enable_thinking) const {
  return render(messages, tools, add_generation_prompt, Json{{"enable_thinking", enable_thinking}});
}

std::string ChatTemplate::render(const Json& messages, const Json& tools, bool add_generation_prompt,
                                 const Json& kwargs) const {
  if (!messages.is_array()) fail("{}: messages must be a list", origin_);
  if (messages.empty()) fail("{}: cannot apply the chat template to an empty conversation", origin_);
  if (!tools.is_null() && !tools.is_array()) fail("{}: tools must be a list of JSON schemas", origin_);
  if (!kwargs.is_object()) fail("{}: template arguments must be a JSON object", origin_);

  // transformers drops null-valued keys, then aliases the reasoning fields.
  Json chat = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    if (!m.is_object()) fail("{}: message {} is not an object", origin_, i);
    Json clean = Json::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) clean[it.key()] = it.value();
    const Json* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"})
      if (!reasoning && clean.contains(key)) reasoning = &clean[key];
    if (reasoning) {
      Json aliased = Json::object();
      aliased["thinking"] = *reasoning;
      for (auto it = clean.begin(); it != clean.end(); ++it) aliased[it.key()] = it.value();
      aliased["reasoning_content"] = *reasoning;
      clean = std::move(aliased);
    }
    chat.push_back(std::move(clean));
  }

  Json vars = Json::object();
  vars["messages"] = std::move(chat);
  vars["tools"] = tools;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) vars[it.key()] = it.value();
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it) vars[it.key()] = it.value();

  auto pick = templates_.end();
  if (!tools.is_null()) pick = templates_.find("tool_use");
  if (pick == templates_.end()) pick = templates_.find("default");
  if (pick == templates_.end()) fail("{}: no 'default' chat template among the named ones", origin_);
  return pick->second.render(vars);
}

}  // namespace fm
