#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <random>
#include <thread>

#include "server/chat_html.h"  // kChatHtml: src/server/chat.html, generated at configure time
#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::server {

namespace {

using namespace std::chrono_literals;

constexpr const char* kJson = "application/json";

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}() * 0x9e3779b97f4a7c15ull ^ uint64_t(unix_now());
  const uint64_t n = counter.fetch_add(1) + 1;
  return fmt::format("{}-{:016x}", prefix, (n * 0xbf58476d1ce4e5b9ull) ^ salt);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), kJson);
}

// Everything a request's output is gathered into (not streamed) or sent from (streamed).
struct Collected {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  bool finished = false;
  void add(JobOutput&& out) {
    text += out.text;
    for (auto& lp : out.logprobs) logprobs.push_back(std::move(lp));
    finished = out.finished;
  }
};

// The conversation rendered with each earlier answer as the model saw it when it wrote it: the opening
// of the generation prompt after the assistant header (an empty <think> block with Qwen templates)
// kept in its content, with an empty reasoning_content, as ChatSession keeps its answers. Templates that
// drop earlier turns' <think> blocks then render what a slot holds, and the slot can be reused. "" when
// that changes nothing.
std::string as_the_model_saw_it(const ChatTemplate& tmpl, const Json& messages, const Json& tools,
                                const Json& kwargs, const std::string& rendered) {
  const std::string without_gen = tmpl.render(messages, tools, false, kwargs);
  if (!rendered.starts_with(without_gen)) return {};
  const std::string gen = rendered.substr(without_gen.size());
  const size_t nl = gen.find('\n');
  if (nl == std::string::npos || nl + 1 == gen.size()) return {};
  const std::string opening = gen.substr(nl + 1);
  Json alt = messages;
  bool changed = false;
  for (Json& m : alt) {
    if (m["role"] != "assistant" || !m.contains("content") || !m["content"].is_string()) continue;
    if (m.contains("reasoning_content") || m.contains("tool_calls")) continue;
    const std::string content = m["content"].get<std::string>();
    if (content.starts_with(opening)) continue;
    m["content"] = opening + content;
    m["reasoning_content"] = "";
    changed = true;
  }
  if (!changed) return {};
  std::string out = tmpl.render(alt, tools, true, kwargs);
  return out == rendered ? std::string() : out;
}

// How one request's output is written: its ids, the endpoint's format and the options that shape it.
struct Reply {
  ResponseMeta meta;
  Endpoint endpoint = Endpoint::Chat;
  bool logprobs = false;
  int top_logprobs = 0;
  bool include_usage = false;
  std::string echo;  // completion with echo: the prompt's text, ahead of the answer

  static bool ok(const Job& job) { return job.finish_reason() == "stop" || job.finish_reason() == "length"; }
  static std::string failure(const Job& job) {
    return error_body(ApiError(
        500, job.finish_reason() == "error" ? job.error() : "the server is shutting down", "server_error"));
  }

  // The events for what the job produced since the last call (the opening ones on the first call), and
  // the closing ones once it has finished.
  std::string events(const Job& job, const JobOutput& out, bool first) const {
    std::string buf;
    if (first) {
      if (endpoint == Endpoint::Chat)
        buf += sse_event(chat_chunk(meta, Json{{"role", "assistant"}, {"content", ""}}, "", nullptr));
      else if (!echo.empty())
        buf += sse_event(completion_chunk(meta, echo, "", nullptr, top_logprobs));
    }
    if (!out.text.empty() || !out.logprobs.empty()) {
      const auto* lps = logprobs ? &out.logprobs : nullptr;
      buf += sse_event(endpoint == Endpoint::Chat ? chat_chunk(meta, Json{{"content", out.text}}, "", lps)
                                                  : completion_chunk(meta, out.text, "", lps, top_logprobs));
    }
    if (!out.finished) return buf;
    if (ok(job)) {
      buf += sse_event(endpoint == Endpoint::Chat
                           ? chat_chunk(meta, Json::object(), job.finish_reason(), nullptr)
                           : completion_chunk(meta, "", job.finish_reason(), nullptr, top_logprobs));
      if (include_usage) buf += sse_event(usage_chunk(meta, endpoint, job.usage()));
    } else {
      buf += sse_event(Json::parse(failure(job)));  // OpenAI's form of an error inside a stream
    }
    return buf + sse_done();
  }

  // The whole response body once the job has finished; `status` 200 or 500.
  std::string whole(const Job& job, const Collected& c, int& status) const {
    status = ok(job) ? 200 : 500;
    if (!ok(job)) return failure(job);
    const auto* lps = logprobs ? &c.logprobs : nullptr;
    return dump_json(
        endpoint == Endpoint::Chat
            ? chat_response(meta, c.text, job.finish_reason(), job.usage(), lps)
            : completion_response(meta, echo + c.text, job.finish_reason(), job.usage(), lps, top_logprobs));
  }
};

// Server-sent events as the job produces output; a keep-alive comment every 2 s of silence. A failed
// write (the client went away) cancels the job. `sent` runs once the response is over.
void send_stream(std::shared_ptr<Job> job, Reply reply, httplib::Response& res, std::function<void()> sent) {
  struct State {
    std::shared_ptr<Job> job;
    Reply reply;
    bool started = false;
    std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
  };
  auto st = std::make_shared<State>(State{.job = std::move(job), .reply = std::move(reply)});
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st](size_t, httplib::DataSink& sink) {
        const bool first = !st->started;
        st->started = true;
        const JobOutput out = st->job->take(first ? 0ms : 500ms);
        std::string buf = st->reply.events(*st->job, out, first);
        if (buf.empty() && std::chrono::steady_clock::now() - st->last_write > 2s)
          buf = ": keep-alive\n\n";  // an SSE comment: finds out whether the client is still there
        if (!buf.empty()) {
          if (!sink.write(buf.data(), buf.size())) {
            st->job->cancel();
            return false;
          }
          st->last_write = std::chrono::steady_clock::now();
        }
        if (out.finished) sink.done();
        return true;
      },
      [st, sent = std::move(sent)](bool) {
        st->job->cancel();  // a no-op once finished; else the client went away
        sent();
      });
}

// One JSON body. A request done within `chunked_after` gets an ordinary response (status and length known); a longer one is
// sent chunked, with a space (JSON allows leading whitespace) every 2 s while it runs: a failed write
// means the client went away, and cancels the job. Returns false when `sent` is left to the response.
bool send_whole(std::shared_ptr<Job> job, Reply reply, httplib::Response& res, std::chrono::milliseconds chunked_after,
                std::function<void()> sent) {
  auto collected = std::make_shared<Collected>();
  if (job->wait_finished(chunked_after)) {
    while (!collected->finished) collected->add(job->take(0ms));
    int status = 200;
    const std::string body = reply.whole(*job, *collected, status);
    res.status = status;
    res.set_content(body, kJson);
    return true;
  }
  res.set_chunked_content_provider(
      kJson,
      [job, collected, reply = std::move(reply)](size_t, httplib::DataSink& sink) {
        if (job->wait_finished(2s)) collected->add(job->take(0ms));
        std::string buf = " ";
        int status = 200;
        if (collected->finished) buf = reply.whole(*job, *collected, status);
        if (!sink.write(buf.data(), buf.size())) {
          job->cancel();
          return false;
        }
        if (collected->finished) sink.done();
        return true;
      },
      [job, sent = std::move(sent)](bool) {
        job->cancel();
        sent();
      });
  return false;
}

}  // namespace

struct HttpServer::Prepared {
  JobSpec spec;
  std::string echo;  // completion with echo: the prompt's text
};

HttpServer::HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                       Metrics& metrics, ServerOptions options)
    : scheduler_(scheduler),
      tokenizer_(tokenizer),
      template_(chat_template),
      metrics_(metrics),
      options_(std::move(options)),
      http_(std::make_unique<httplib::Server>()) {
  const int threads =
      options_.http_threads > 0 ? options_.http_threads : scheduler_.slots() + scheduler_.max_queue() + 8;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  http_->set_payload_max_length(options_.max_body_bytes);
  // Short waits for a silent client: stopping the server waits for every connection thread.
  http_->set_keep_alive_timeout(2);
  http_->set_read_timeout(5);
  http_->set_write_timeout(30);
  routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  if (options_.port == 0) {
    const int port = http_->bind_to_any_port(options_.host);
    if (port <= 0) fail("serve: cannot listen on {} (any port)", options_.host);
    return port;
  }
  if (!http_->bind_to_port(options_.host, options_.port))
    fail("serve: cannot listen on {}:{} (in use, or not an address of this machine)", options_.host,
         options_.port);
  return options_.port;
}

void HttpServer::listen() { http_->listen_after_bind(); }

void HttpServer::stop() {
  if (http_) http_->stop();
}

void HttpServer::drain(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

HttpServer::Prepared HttpServer::prepare(const CompletionRequest& r) const {
  if (!r.model.empty() && r.model != options_.model_id)
    throw ApiError(
        400,
        fmt::format("The model '{}' does not exist: this server serves '{}'", r.model, options_.model_id),
        "invalid_request_error", "model", "model_not_found");
  try {
    validate(r.sampling);
  } catch (const Error& e) {
    bad_request(e.what());
  }
  Prepared p;
  JobSpec& spec = p.spec;
  std::string param = "prompt";
  if (r.endpoint == Endpoint::Chat) {
    if (!template_) bad_request("this model has no chat template: use /v1/completions", "messages");
    param = "messages";
    Json kwargs = r.template_kwargs;
    if (!kwargs.contains("enable_thinking")) kwargs["enable_thinking"] = false;
    try {
      spec.prompt_text = template_->render(r.messages, r.tools, true, kwargs);
    } catch (const Error& e) {
      bad_request(fmt::format("the chat template cannot render these messages: {}", e.what()), "messages");
    }
    spec.prompt = tokenizer_.encode(spec.prompt_text);
    spec.alt_prompt_text = as_the_model_saw_it(*template_, r.messages, r.tools, kwargs, spec.prompt_text);
  } else if (r.prompt_is_ids) {
    for (int32_t id : r.prompt_ids)
      if (id >= tokenizer_.vocab_size())
        bad_request(fmt::format("prompt token id {} is outside the vocabulary (0..{})", id,
                                tokenizer_.vocab_size() - 1),
                    "prompt");
    spec.prompt = r.prompt_ids;
    if (r.echo) p.echo = tokenizer_.decode(spec.prompt);
  } else {
    spec.prompt_text = r.prompt;
    spec.prompt = tokenizer_.encode(r.prompt);
    if (tokenizer_.add_bos().value_or(false) && tokenizer_.bos_id())
      spec.prompt.insert(spec.prompt.begin(), *tokenizer_.bos_id());
    if (r.echo) p.echo = r.prompt;
  }
  const int n = int(spec.prompt.size());
  if (n == 0) bad_request("the prompt encodes to no tokens", param);
  const int ctx = options_.context;
  if (n >= ctx)
    throw ApiError(
        400,
        fmt::format("This model's maximum context length is {} tokens. However, your prompt has {} tokens.",
                    ctx, n),
        "invalid_request_error", param, "context_length_exceeded");
  if (r.max_tokens && int64_t(n) + *r.max_tokens > ctx)
    throw ApiError(
        400,
        fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                    "({} in the prompt, {} for the completion).",
                    ctx, int64_t(n) + *r.max_tokens, n, *r.max_tokens),
        "invalid_request_error", r.endpoint == Endpoint::Chat ? "max_tokens" : "max_tokens",
        "context_length_exceeded");
  spec.max_tokens = r.max_tokens ? *r.max_tokens : ctx - n;
  spec.sampling = r.sampling;
  if (!r.seed_given) spec.sampling.seed = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  spec.stop = r.stop;
  spec.logprobs = r.logprobs;
  spec.top_logprobs = r.top_logprobs;
  spec.ignore_eos = r.ignore_eos;
  return p;
}

void HttpServer::complete(Endpoint endpoint, const std::string& body, httplib::Response& res) {
  metrics_.requests_received.fetch_add(1);
  CompletionRequest r;
  Prepared p;
  std::shared_ptr<Job> job;
  try {
    r = endpoint == Endpoint::Chat ? parse_chat_request(body) : parse_completion_request(body);
    p = prepare(r);
    job = scheduler_.submit(p.spec);
  } catch (const ApiError& e) {
    metrics_.requests_invalid.fetch_add(1);
    send_error(res, e);
    return;
  }
  if (!job) {
    metrics_.requests_rejected.fetch_add(1);
    send_error(res, ApiError(429, "the server is busy: the request queue is full, retry later",
                             "rate_limit_exceeded", {}, "queue_full"));
    res.set_header("Retry-After", "1");
    return;
  }
  Reply reply{.meta = {.id = new_id(endpoint == Endpoint::Chat ? "chatcmpl" : "cmpl"),
                       .created = unix_now(),
                       .model = options_.model_id},
              .endpoint = endpoint,
              .logprobs = r.logprobs,
              .top_logprobs = r.top_logprobs,
              .include_usage = r.include_usage,
              .echo = p.echo};
  // Counted until the response has been sent in full (drain() waits for it).
  in_flight_.fetch_add(1);
  auto sent = [this] { in_flight_.fetch_sub(1); };
  if (r.stream)
    send_stream(std::move(job), std::move(reply), res, sent);
  else if (send_whole(std::move(job), std::move(reply), res, std::chrono::milliseconds(options_.chunked_after_ms), sent))
    sent();
}

void HttpServer::routes() {
  httplib::Server& s = *http_;

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || req.path == "/" || req.path == "/health")
      return httplib::Server::HandlerResponse::Unhandled;
    if (bearer_matches(req.get_header_value("Authorization"), options_.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    metrics_.requests_invalid.fetch_add(1);
    send_error(res, ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                             "invalid_request_error", {}, "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });

  // Errors httplib answers itself (no route, body too large, ...) get an OpenAI-style body too.
  s.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = fmt::format("{} {}: HTTP {}", req.method, req.path, res.status);
    if (res.status == 404) message = fmt::format("no route for {} {}", req.method, req.path);
    if (res.status == 413) {
      metrics_.requests_invalid.fetch_add(1);
      message = fmt::format("the request body exceeds the limit of {} bytes", options_.max_body_bytes);
    }
    res.set_content(error_body(ApiError(res.status, message)), kJson);
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what, "server_error"));
  });

  s.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(kChatHtml), "text/html; charset=utf-8");
  });
  s.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", kJson);
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.prometheus(scheduler_.slots(), scheduler_.max_queue(), current_rss_bytes(),
                                        peak_rss_bytes()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  const auto model_json = [this] {
    return Json{{"id", options_.model_id},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "flashmoe"},
                {"max_model_len", options_.context}};
  };
  s.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump_json(Json{{"object", "list"}, {"data", Json::array({model_json()})}}), kJson);
  });
  s.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != options_.model_id) {
      send_error(res, ApiError(404, fmt::format("The model '{}' does not exist", req.matches[1].str()),
                               "invalid_request_error", "model", "model_not_found"));
      return;
    }
    res.set_content(dump_json(model_json()), kJson);
  });

  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    complete(Endpoint::Chat, req.body, res);
  });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    complete(Endpoint::Completion, req.body, res);
  });
}

}  // namespace fm::server
