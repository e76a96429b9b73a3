// A model's chat template: messages (+ tools) -> the prompt text, exactly as transformers'
// apply_chat_template(..., tokenize=False) renders it.
//
// Where the template comes from (the first found):
//   model folder: chat_template.jinja, chat_template.json {"chat_template": ...}, tokenizer_config.json
//                 "chat_template" (a string, or a list of {"name", "template"}: "tool_use" when tools are
//                 given and it exists, else "default");
//   .gguf file:   tokenizer.chat_template (tokenizer.chat_template.tool_use likewise).
// What the template sees, as transformers passes it: messages (each message's null-valued keys dropped;
// a reasoning_content / thinking / reasoning field aliased to both "thinking" and "reasoning_content"),
// tools (null when none), documents (null), add_generation_prompt, the special tokens that are set
// (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token), then the extra keyword
// arguments (enable_thinking, ...), which override a special token of the same name.
// JSON values are ordered_json so that tojson keeps the caller's key order, as Python dicts do.
#pragma once
#include <filesystem>
#include <map>
#include <string>

#include "chat/jinja.h"

namespace fm {

class ChatTemplate {
 public:
  using Json = jinja::Json;

  // Reads the template and special tokens of a model folder or a .gguf file. Throws fm::Error naming
  // the file when there is no template or it does not parse.
  static ChatTemplate from_model(const std::filesystem::path& path);

  // `templates`: name -> source ("default", optionally "tool_use"); `special_tokens`: {"eos_token": ...}.
  ChatTemplate(std::map<std::string, std::string> templates, Json special_tokens, std::string origin);
  ChatTemplate(const std::string& source, Json special_tokens = Json::object(),
               std::string origin = "chat template");

  // messages: [{"role": ..., "content": ..., ...}]; tools: a list of JSON schemas, or null.
  std::string render(const Json& messages, const Json& tools, bool add_generation_prompt,
                     bool enable_thinking) const;
  // With any template keyword arguments, e.g. {"enable_thinking": false}.
  std::string render(const Json& messages, const Json& tools, bool add_generation_prompt,
                     const Json& kwargs) const;

  const Json& special_tokens() const { return special_tokens_; }
  const std::string& origin() const { return origin_; }

 private:
  std::map<std::string, jinja::Template> templates_;
  Json special_tokens_;
  std::string origin_;
};

}  // namespace fm
