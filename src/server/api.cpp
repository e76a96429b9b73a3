#include "server/api.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace fm::server {

namespace {

Json null_if_empty(const std::string& s) { return s.empty() ? Json() : Json(s); }

const char* type_name(const Json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// The field, or nullptr when absent or null (OpenAI treats null as "not given").
const Json* field(const Json& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> number(const Json& body, const char* key, double lo, double hi, bool lo_open = false) {
  const Json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_request(fmt::format("'{}' must be a number, not {}", key, type_name(*v)), key);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
    bad_request(
        fmt::format("'{}' is {}; it must be in {}{}, {}]", key, v->dump(), lo_open ? "(" : "[", lo, hi), key);
  return x;
}

std::optional<int64_t> integer(const Json& body, const char* key, int64_t lo, int64_t hi) {
  const Json* v = field(body, key);
  if (!v) return std::nullopt;
  // 3.0 is accepted as 3, as Python clients may send floats.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)
      return integer(Json{{key, int64_t(d)}}, key, lo, hi);
  }
  if (!v->is_number_integer())
    bad_request(fmt::format("'{}' must be an integer, not {}", key, type_name(*v)), key);
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    bad_request(fmt::format("'{}' is {}; it must be in [{}, {}]", key, v->dump(), lo, hi), key);
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad_request(fmt::format("'{}' is {}; it must be in [{}, {}]", key, x, lo, hi), key);
  return x;
}

std::optional<bool> boolean(const Json& body, const char* key) {
  const Json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_request(fmt::format("'{}' must be a boolean, not {}", key, type_name(*v)), key);
  return v->get<bool>();
}

Json parse_body(std::string_view body) {
  Json j;
  try {
    j = Json::parse(body.begin(), body.end());
  } catch (const Json::parse_error& e) {
    bad_request(fmt::format("the request body is not valid JSON: {}", e.what()), {}, "invalid_json");
  }
  if (!j.is_object())
    bad_request(fmt::format("the request body must be a JSON object, not {}", type_name(j)));
  return j;
}

// The fields chat and completion requests share.
void parse_common(const Json& b, CompletionRequest& r) {
  if (const Json* m = field(b, "model")) {
    if (!m->is_string()) bad_request(fmt::format("'model' must be a string, not {}", type_name(*m)), "model");
    r.model = m->get<std::string>();
  }
  if (auto n = integer(b, "n", 1, 128); n && *n != 1)
    bad_request(fmt::format("'n' is {}: this server generates one choice per request (n = 1)", *n), "n");
  if (auto t = number(b, "temperature", 0, 2)) r.sampling.temperature = float(*t);
  if (auto p = number(b, "top_p", 0, 1, true)) r.sampling.top_p = float(*p);
  if (auto p = number(b, "presence_penalty", -2, 2)) r.sampling.presence_penalty = float(*p);
  if (auto p = number(b, "frequency_penalty", -2, 2)) r.sampling.frequency_penalty = float(*p);
  if (auto p = number(b, "repetition_penalty", 0, 100, true)) r.sampling.repetition_penalty = float(*p);
  if (auto p = number(b, "min_p", 0, 1)) r.sampling.min_p = float(*p);
  if (auto k = integer(b, "top_k", -1, std::numeric_limits<int32_t>::max()))
    r.sampling.top_k = *k < 0 ? 0 : int(*k);
  if (const Json* s = field(b, "seed")) {
    if (s->is_number_unsigned()) {
      r.sampling.seed = s->get<uint64_t>();
    } else if (s->is_number_integer()) {
      r.sampling.seed = uint64_t(s->get<int64_t>());
    } else {
      bad_request(fmt::format("'seed' must be an integer, not {}", type_name(*s)), "seed");
    }
    r.seed_given = true;
  }
  if (const Json* s = field(b, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 4)
        bad_request(fmt::format("'stop' holds {} strings; at most 4 are allowed", s->size()), "stop");
      for (const Json& x : *s) {
        if (!x.is_string())
          bad_request(fmt::format("'stop' entries must be strings, not {}", type_name(x)), "stop");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad_request(fmt::format("'stop' must be a string or an array of strings, not {}", type_name(*s)),
                  "stop");
    }
    for (const std::string& x : r.stop)
      if (x.empty()) bad_request("'stop' strings must not be empty", "stop");
  }
  r.ignore_eos = boolean(b, "ignore_eos").value_or(false);
  r.stream = boolean(b, "stream").value_or(false);
  if (const Json* so = field(b, "stream_options")) {
    if (!so->is_object())
      bad_request(fmt::format("'stream_options' must be an object, not {}", type_name(*so)),
                  "stream_options");
    if (!r.stream) bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    r.include_usage = boolean(*so, "include_usage").value_or(false);
  }
}

std::string join_text_parts(const Json& content, size_t index) {
  std::string text;
  for (const Json& part : content) {
    const std::string param = fmt::format("messages[{}].content", index);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad_request(fmt::format("{}: each content part must be an object with a 'type'", param), param);
    const std::string type = part["type"].get<std::string>();
    if (type != "text")
      bad_request(fmt::format("{}: content parts of type '{}' are not supported (text only)", param, type),
                  param);
    if (!part.contains("text") || !part["text"].is_string())
      bad_request(fmt::format("{}: a text part needs a string 'text'", param), param);
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

void bad_request(const std::string& message, const std::string& param, const std::string& code) {
  throw ApiError(400, message, "invalid_request_error", param, code);
}

std::string error_body(const ApiError& e) {
  const Json j = {{"error",
                   {{"message", e.what()},
                    {"type", e.type},
                    {"param", null_if_empty(e.param)},
                    {"code", null_if_empty(e.code)}}}};
  return dump_json(j);
}

CompletionRequest parse_chat_request(std::string_view body) {
  const Json b = parse_body(body);
  CompletionRequest r;
  r.endpoint = Endpoint::Chat;
  parse_common(b, r);
  const Json* msgs = field(b, "messages");
  if (!msgs) bad_request("'messages' is required", "messages");
  if (!msgs->is_array())
    bad_request(fmt::format("'messages' must be an array, not {}", type_name(*msgs)), "messages");
  if (msgs->empty()) bad_request("'messages' must hold at least one message", "messages");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad_request(fmt::format("{} must be an object, not {}", param, type_name(m)), param);
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      bad_request(fmt::format("{} needs a string 'role'", param), param + ".role");
    std::string r_name = role->get<std::string>();
    if (r_name != "system" && r_name != "developer" && r_name != "user" && r_name != "assistant" &&
        r_name != "tool")
      bad_request(
          fmt::format("{}.role '{}' is not one of system, developer, user, assistant, tool", param, r_name),
          param + ".role");
    if (r_name == "developer") r_name = "system";  // OpenAI's newer name for the system message
    Json out = Json::object();
    out["role"] = r_name;
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (r_name != "assistant") bad_request(fmt::format("{} needs a 'content'", param), param + ".content");
    } else if (content->is_string()) {
      out["content"] = *content;
    } else if (content->is_array()) {
      out["content"] = join_text_parts(*content, i);
    } else {
      bad_request(
          fmt::format("{}.content must be a string or an array of parts, not {}", param, type_name(*content)),
          param + ".content");
    }
    for (auto it = m.begin(); it != m.end(); ++it)  // name, tool_calls, tool_call_id, reasoning_content, ...
      if (it.key() != "role" && it.key() != "content") out[it.key()] = it.value();
    r.messages.push_back(std::move(out));
  }
  if (const Json* t = field(b, "tools")) {
    if (!t->is_array()) bad_request(fmt::format("'tools' must be an array, not {}", type_name(*t)), "tools");
    r.tools = *t;
  }
  if (const Json* k = field(b, "chat_template_kwargs")) {
    if (!k->is_object())
      bad_request(fmt::format("'chat_template_kwargs' must be an object, not {}", type_name(*k)),
                  "chat_template_kwargs");
    r.template_kwargs = *k;
  }
  // max_completion_tokens is the newer name; it wins when both are given.
  if (auto n = integer(b, "max_tokens", 1, std::numeric_limits<int32_t>::max())) r.max_tokens = int(*n);
  if (auto n = integer(b, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max()))
    r.max_tokens = int(*n);
  r.logprobs = boolean(b, "logprobs").value_or(false);
  if (auto k = integer(b, "top_logprobs", 0, 20)) {
    if (!r.logprobs) bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    r.top_logprobs = int(*k);
  }
  return r;
}

CompletionRequest parse_completion_request(std::string_view body) {
  const Json b = parse_body(body);
  CompletionRequest r;
  r.endpoint = Endpoint::Completion;
  parse_common(b, r);
  const Json* p = field(b, "prompt");
  if (!p) bad_request("'prompt' is required", "prompt");
  Json prompt = *p;
  // A list of one prompt (text or ids) is that prompt; several prompts in one request are not served.
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array()))
    prompt = prompt[0];
  if (prompt.is_string()) {
    r.prompt = prompt.get<std::string>();
    if (r.prompt.empty()) bad_request("'prompt' is empty", "prompt");
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number()) {
    for (const Json& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max())
        bad_request(fmt::format("'prompt' token ids must be non-negative integers, not {}", id.dump()),
                    "prompt");
      r.prompt_ids.push_back(int32_t(id.get<int64_t>()));
    }
    r.prompt_is_ids = true;
  } else if (prompt.is_array() && prompt.size() > 1) {
    bad_request(fmt::format("'prompt' holds {} prompts; this server takes one per request", prompt.size()),
                "prompt");
  } else {
    bad_request(fmt::format("'prompt' must be a string or an array of token ids, not {}", type_name(prompt)),
                "prompt");
  }
  r.max_tokens = 16;  // OpenAI's default for completions
  if (auto n = integer(b, "max_tokens", 0, std::numeric_limits<int32_t>::max())) r.max_tokens = int(*n);
  r.echo = boolean(b, "echo").value_or(false);
  if (auto k = integer(b, "logprobs", 0, 5)) {
    r.logprobs = true;
    r.top_logprobs = int(*k);
  }
  if (const Json* s = field(b, "suffix"))
    if (!(s->is_string() && s->get<std::string>().empty()))
      bad_request("'suffix' is not supported", "suffix");
  if (auto bo = integer(b, "best_of", 1, 128); bo && *bo != 1) bad_request("'best_of' must be 1", "best_of");
  return r;
}

Json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

Json bytes_of(const std::string& s) {
  Json b = Json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

Json chat_logprobs(const std::vector<TokenLogprob>& lps) {
  Json content = Json::array();
  for (const TokenLogprob& t : lps) {
    Json top = Json::array();
    for (const auto& [tok, lp] : t.top)
      top.push_back({{"token", tok}, {"logprob", lp}, {"bytes", bytes_of(tok)}});
    content.push_back(
        {{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes_of(t.token)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

// The legacy completions form: parallel lists; text_offset counts bytes from `offset0`.
Json completion_logprobs(const std::vector<TokenLogprob>& lps, int top_logprobs, size_t offset0) {
  Json tokens = Json::array(), token_lps = Json::array(), tops = Json::array(), offsets = Json::array();
  size_t offset = offset0;
  for (const TokenLogprob& t : lps) {
    tokens.push_back(t.token);
    token_lps.push_back(t.logprob);
    Json top = Json::object();
    for (size_t i = 0; i < t.top.size() && int(i) < top_logprobs; ++i) top[t.top[i].first] = t.top[i].second;
    tops.push_back(top_logprobs > 0 ? top : Json());
    offsets.push_back(offset);
    offset += t.token.size();
  }
  return {
      {"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

Json finish_json(const std::string& finish_reason) { return null_if_empty(finish_reason); }

}  // namespace

Json chat_response(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                   const Usage& usage, const std::vector<TokenLogprob>* logprobs) {
  Json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
                 {"logprobs", logprobs ? chat_logprobs(*logprobs) : Json()},
                 {"finish_reason", finish_json(finish_reason)}};
  return {{"id", meta.id},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", Json::array({choice})},
          {"usage", usage_json(usage)},
          {"system_fingerprint", nullptr}};
}

Json completion_response(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                         const Usage& usage, const std::vector<TokenLogprob>* logprobs, int top_logprobs) {
  Json choice = {{"index", 0},
                 {"text", text},
                 {"logprobs", logprobs ? completion_logprobs(*logprobs, top_logprobs, 0) : Json()},
                 {"finish_reason", finish_json(finish_reason)}};
  return {{"id", meta.id},
          {"object", "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", Json::array({choice})},
          {"usage", usage_json(usage)},
          {"system_fingerprint", nullptr}};
}

Json chat_chunk(const ResponseMeta& meta, const Json& delta, const std::string& finish_reason,
                const std::vector<TokenLogprob>* logprobs) {
  Json choice = {{"index", 0},
                 {"delta", delta},
                 {"logprobs", logprobs && !logprobs->empty() ? chat_logprobs(*logprobs) : Json()},
                 {"finish_reason", finish_json(finish_reason)}};
  return {{"id", meta.id},       {"object", "chat.completion.chunk"}, {"created", meta.created},
          {"model", meta.model}, {"system_fingerprint", nullptr},     {"choices", Json::array({choice})}};
}

Json completion_chunk(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                      const std::vector<TokenLogprob>* logprobs, int top_logprobs) {
  Json choice = {
      {"index", 0},
      {"text", text},
      {"logprobs", logprobs && !logprobs->empty() ? completion_logprobs(*logprobs, top_logprobs, 0) : Json()},
      {"finish_reason", finish_json(finish_reason)}};
  return {{"id", meta.id},       {"object", "text_completion"},   {"created", meta.created},
          {"model", meta.model}, {"system_fingerprint", nullptr}, {"choices", Json::array({choice})}};
}

Json usage_chunk(const ResponseMeta& meta, Endpoint endpoint, const Usage& usage) {
  return {{"id", meta.id},
          {"object", endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"system_fingerprint", nullptr},
          {"choices", Json::array()},
          {"usage", usage_json(usage)}};
}

std::string dump_json(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string sse_event(const Json& payload) { return "data: " + dump_json(payload) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

bool bearer_matches(std::string_view header, std::string_view key) {
  constexpr std::string_view kPrefix = "Bearer ";
  // Every byte of the key is compared whatever the header holds, so the time taken tells nothing about
  // how much of it was right; only the key's length is public.
  const bool prefix_ok = header.substr(0, kPrefix.size()) == kPrefix;
  const std::string_view given = prefix_ok ? header.substr(kPrefix.size()) : std::string_view();
  unsigned diff = given.size() == key.size() ? 0u : 1u;
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= unsigned(g ^ static_cast<unsigned char>(key[i]));
  }
  return prefix_ok && diff == 0 && !key.empty();
}

}  // namespace fm::server
