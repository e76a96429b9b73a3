// flashmoe serve: an OpenAI-compatible HTTP server (src/server/). It loads the model as run/chat do,
// starts the scheduler (one thread owns the transformer; --parallel slots decoded together) and serves
// until SIGINT or SIGTERM.
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <optional>
#include <thread>

#include "chat/chat_template.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "server/http_server.h"
#include "server/scheduler.h"
#include "stream/memory_plan.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fm::cli {

namespace {

struct ServeArgs {
  EngineArgs engine;
  server::ServerOptions http;
  int parallel = 4;
  int max_queue = 16;
  std::string max_body = "8M";
};

// The name clients give as "model": the file name without .gguf, or the folder's name.
std::string model_id_of(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "folder/"
  return p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
}

void serve(ServeArgs& a) {
  // SIGINT / SIGTERM stop the server: blocked before any thread starts (threads inherit the mask), taken
  // by a watcher thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (a.parallel < 1) fail("--parallel must be at least 1");
  a.http.max_body_bytes = size_t(parse_size(a.max_body, "--max-body"));
  if (a.http.model_id.empty()) a.http.model_id = model_id_of(a.engine.model);

  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  const Tokenizer tokenizer = Tokenizer::load(a.engine.model);
  std::optional<ChatTemplate> tmpl;
  try {
    tmpl.emplace(ChatTemplate::from_model(a.engine.model));
  } catch (const Error& e) {
    std::fprintf(stderr, "serve: no chat template (%s): /v1/chat/completions will refuse requests\n",
                 e.what());
  }
  CpuBackend backend(resolve_threads(a.engine.threads));
  EngineArgs engine = a.engine;
  if (a.parallel > engine.transformer.max_batch) engine.transformer.max_batch = a.parallel;
  // Every slot holds a sequence state; the memory plan counts one, so the others come off the budget.
  if (engine.mem_budget > 0) {
    const uint64_t extra = uint64_t(a.parallel - 1) * sequence_state_bytes(model->config, engine.transformer);
    if (extra >= engine.mem_budget)
      fail(
          "--mem-budget {:.2f} GB cannot hold the KV caches of {} slots ({:.2f} GB): lower --parallel or "
          "--ctx",
          double(engine.mem_budget) / 1e9, a.parallel, double(extra) / 1e9);
    engine.mem_budget -= extra;
  }
  resolve_streaming(engine, *model);
  Transformer transformer(*model, backend, engine.transformer);

  std::vector<int32_t> eos;
  for (int id : model->config.eos_token_ids) eos.push_back(int32_t(id));
  for (int32_t id : tokenizer.eos_ids())
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);

  server::Metrics metrics;
  server::Scheduler scheduler(transformer, tokenizer, metrics,
                              {.slots = a.parallel, .max_queue = a.max_queue, .stop_ids = eos});
  a.http.context = engine.transformer.max_context;
  server::HttpServer http(scheduler, tokenizer, tmpl ? &*tmpl : nullptr, metrics, a.http);

  // A client that goes away mid-write must not kill the process.
  signal(SIGPIPE, SIG_IGN);

  const int port = http.bind();
  std::fprintf(stderr, "serve: %s as '%s' on http://%s:%d (%d slots, queue %d, context %d%s)\n",
               a.engine.model.c_str(), a.http.model_id.c_str(), a.http.host.c_str(), port, a.parallel,
               a.max_queue, a.http.context, a.http.api_key.empty() ? "" : ", API key required");
  if (a.http.api_key.empty() && a.http.host != "127.0.0.1" && a.http.host != "localhost" &&
      a.http.host != "::1")
    std::fprintf(stderr,
                 "serve: warning: listening on %s without --api-key: anyone who can reach it may use it\n",
                 a.http.host.c_str());
  std::fflush(stderr);

  std::atomic<bool> done{false};
  std::thread watcher([&] {
    const timespec tick{0, 200'000'000};
    while (!done.load()) {
      const int sig = sigtimedwait(&signals, nullptr, &tick);
      if (sig != SIGINT && sig != SIGTERM) continue;
      std::fprintf(stderr, "serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      scheduler.stop();  // running requests end now (their clients get an error), not when done
      http.drain(std::chrono::seconds(5));
      // A stop before listen() has started is lost: repeat until it has returned.
      while (!done.load()) {
        http.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  });
  http.listen();
  done.store(true);
  watcher.join();
  scheduler.stop();
}

}  // namespace

void add_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API (and a chat page at /)");
  add_engine_options(*cmd, args->engine);
  cmd->add_option("--host", args->http.host, "Address to listen on (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", args->http.port, "Port (0: any free port, printed on stderr)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", args->http.api_key,
                  "Require 'Authorization: Bearer KEY' (default: $FLASHMOE_API_KEY, else none)")
      ->envname("FLASHMOE_API_KEY");
  cmd->add_option("--parallel", args->parallel, "Slots: requests decoded together (default 4)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--max-queue", args->max_queue,
                  "Requests that may wait for a slot; more get 429 (default 16)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--alias", args->http.model_id, "Model name clients use (default: the model file's name)");
  cmd->add_option("--max-body", args->max_body, "Largest request body (default 8M); larger ones get 413");
  cmd->add_option("--chunked-after", args->http.chunked_after_ms,
                  "Milliseconds after which a non-streamed answer is sent chunked, with whitespace kept flowing "
                  "so that a client that left is noticed (default 1000)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] { serve(*args); });
}

}  // namespace fm::cli
