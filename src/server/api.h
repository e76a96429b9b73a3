// The OpenAI-compatible request and response formats: parsing and validating request bodies,
// building responses, stream chunks (server-sent events) and error bodies. No sockets, no model.
//
// Requests (fields users rely on; unknown fields are ignored, as most OpenAI-compatible servers do):
//   POST /v1/chat/completions  messages (role + string content or text parts), model, max_tokens /
//                              max_completion_tokens, temperature [0, 2], top_p (0, 1], seed, stop (string or
//                              up to 4 strings), stream, stream_options.include_usage, n (1 only),
//                              presence_penalty / frequency_penalty [-2, 2], logprobs + top_logprobs [0, 20],
//                              tools (passed to the chat template), chat_template_kwargs (e.g.
//                              {"enable_thinking": true}); extensions top_k, min_p, repetition_penalty,
//                              ignore_eos.
//   POST /v1/completions       prompt (a string, or one list of token ids, or a list of one of either),
//                              max_tokens (default 16), echo, logprobs (an integer [0, 5]), and the sampling
//                              fields above.
// Errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}, status 400 for a bad request.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"

namespace fm::server {

using Json = nlohmann::ordered_json;

// A request the API refuses: the HTTP status and OpenAI's error fields.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = {}, std::string code = {})
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type;   // invalid_request_error, authentication_error, rate_limit_exceeded, server_error
  std::string param;  // the request field at fault ("" -> null)
  std::string code;   // a machine-readable code ("" -> null)
};

// 400 invalid_request_error naming the field at fault.
[[noreturn]] void bad_request(const std::string& message, const std::string& param = {},
                              const std::string& code = {});

// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& e);

enum class Endpoint { Chat, Completion };

// What a request asks the engine for, once validated.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;              // as given ("" when absent)
  Json messages = Json::array();  // chat: [{"role", "content", ...}], text parts joined
  Json tools;                     // chat: null or the list given
  Json template_kwargs = Json::object();
  std::string prompt;               // completion: the prompt text
  std::vector<int32_t> prompt_ids;  // completion: the prompt as token ids (prompt is then "")
  bool prompt_is_ids = false;
  bool echo = false;                                // completion: the prompt's text leads the answer
  std::optional<int> max_tokens;                    // none: up to the context (chat) / 16 (completion)
  SamplerOptions sampling = {.temperature = 1.0f};  // OpenAI's default temperature is 1
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;
  int top_logprobs = 0;
  bool ignore_eos = false;  // extension (as vLLM): generate max_tokens whatever the model says
};

// Parse and validate a body; ApiError (400) naming the field for malformed JSON, wrong types, values
// out of range and unsupported features.
CompletionRequest parse_chat_request(std::string_view body);
CompletionRequest parse_completion_request(std::string_view body);

// One generated token's log-probability and its most likely alternatives (before sampling filters: the
// model's distribution).
struct TokenLogprob {
  std::string token;  // the token's bytes (possibly part of a UTF-8 character)
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;  // most likely first
};

// The usage block.
struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens reused from the slot's cache
};
Json usage_json(const Usage& u);

// Ids and timestamps common to one response's chunks.
struct ResponseMeta {
  std::string id;  // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;
  std::string model;
};

// Non-streamed responses.
Json chat_response(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                   const Usage& usage, const std::vector<TokenLogprob>* logprobs);
Json completion_response(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                         const Usage& usage, const std::vector<TokenLogprob>* logprobs, int top_logprobs);

// Streamed chunks. A chat stream opens with a role delta, then content deltas, one chunk carrying the
// finish_reason, an optional usage chunk (choices empty), and "data: [DONE]".
Json chat_chunk(const ResponseMeta& meta, const Json& delta, const std::string& finish_reason,
                const std::vector<TokenLogprob>* logprobs);
Json completion_chunk(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                      const std::vector<TokenLogprob>* logprobs, int top_logprobs);
Json usage_chunk(const ResponseMeta& meta, Endpoint endpoint, const Usage& usage);

// Server-sent event framing: "data: <json>\n\n" (a payload never holds a newline: JSON is dumped compact).
std::string sse_event(const Json& payload);
std::string sse_done();  // "data: [DONE]\n\n"

// JSON text of any string, valid UTF-8 or not (invalid bytes become U+FFFD).
std::string dump_json(const Json& j);

// Constant-time comparison of an Authorization header against "Bearer KEY".
bool bearer_matches(std::string_view header, std::string_view key);

}  // namespace fm::server
