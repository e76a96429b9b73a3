// The HTTP side of `flashmoe serve` (cpp-httplib): routes, authentication, request limits and the
// translation between OpenAI requests and scheduler jobs.
//
//   POST /v1/chat/completions, POST /v1/completions   streamed (server-sent events) or not
//   GET  /v1/models, /v1/models/{id}, /health, /metrics (Prometheus text), / (the chat page)
//
// HTTP threads parse and validate a request, render the chat template and tokenize (all thread-safe),
// then hand a job to the scheduler and stream its output back. A client that goes away (a failed write)
// cancels its job. With an API key, every route but / and /health needs "Authorization: Bearer KEY".
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Response;
}  // namespace httplib

namespace fm::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                   // 0: any free port (bind() returns it)
  std::string api_key;               // empty: no authentication
  std::string model_id;              // the name /v1/models lists and requests may give
  size_t max_body_bytes = 8u << 20;  // larger request bodies get 413
  int http_threads = 0;              // 0: slots + queue + 8
  int context = 4096;                // tokens per sequence (the transformer's max_context)
  int chunked_after_ms = 1000;       // a non-streamed answer not done by then is sent chunked
};

class HttpServer {
 public:
  // `chat_template` may be null: /v1/chat/completions then answers 400.
  HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, const ChatTemplate* chat_template,
             Metrics& metrics, ServerOptions options);
  ~HttpServer();

  // Binds the address; returns the port. fm::Error when it cannot.
  int bind();
  // Serves until stop() (from another thread or a signal watcher).
  void listen();
  void stop();
  // Waits until every response in flight has been sent (or `timeout` passes): after Scheduler::stop(),
  // so that streams end with their error event rather than a cut connection.
  void drain(std::chrono::milliseconds timeout);

 private:
  struct Prepared;
  void routes();
  Prepared prepare(const CompletionRequest& r) const;
  // POST /v1/chat/completions and /v1/completions: validate, queue, answer (streamed or not).
  void complete(Endpoint endpoint, const std::string& body, httplib::Response& res);

  Scheduler& scheduler_;
  const Tokenizer& tokenizer_;
  const ChatTemplate* template_;
  Metrics& metrics_;
  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  std::atomic<int> in_flight_{0};  // completion responses not yet sent in full
};

}  // namespace fm::server
