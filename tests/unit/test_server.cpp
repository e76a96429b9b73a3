// The OpenAI-compatible server: request parsing and validation, error bodies, SSE framing, metrics,
// the scheduler (queue bound, cancellation, prefix reuse, batched decoding = solo decoding) on the
// embedded default model, and the HTTP routes over loopback on an ephemeral port.
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "chat/chat_template.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "server/api.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fm::server {
namespace {

using namespace std::chrono_literals;

const std::string kModel = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";

// Requires an ApiError with this status and param whose message holds `needle`.
void expect_api_error(const std::function<void()>& fn, int status, const std::string& param,
                      const std::string& needle = {}, const std::string& code = {}) {
  try {
    fn();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << e.what();
    EXPECT_EQ(e.param, param) << e.what();
    if (!needle.empty()) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    if (!code.empty()) {
      EXPECT_EQ(e.code, code) << e.what();
    }
    return;
  }
  ADD_FAILURE() << "no ApiError (expected " << status << " for '" << param << "')";
}

TEST(ServerApi, ParsesAChatRequest) {
  const CompletionRequest r = parse_chat_request(R"({
    "model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                               {"role": "assistant", "content": null, "tool_calls": []}],
    "max_tokens": 7, "max_completion_tokens": 9, "temperature": 0.5, "top_p": 0.9, "seed": 42,
    "stop": ["x", "yz"], "stream": true, "stream_options": {"include_usage": true},
    "logprobs": true, "top_logprobs": 3, "top_k": 40, "presence_penalty": 0.5, "user": "ignored"})");
  EXPECT_EQ(r.endpoint, Endpoint::Chat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0]["role"], "system");
  EXPECT_EQ(r.messages[1]["content"], "a\nb");
  EXPECT_FALSE(r.messages[2].contains("content"));
  EXPECT_TRUE(r.messages[2].contains("tool_calls"));
  EXPECT_EQ(r.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);

  const CompletionRequest d = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_FLOAT_EQ(d.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_FALSE(d.max_tokens.has_value());
  EXPECT_FALSE(d.stream);
  EXPECT_FALSE(d.seed_given);
}

TEST(ServerApi, ParsesACompletionRequest) {
  CompletionRequest r =
      parse_completion_request(R"({"prompt": "Once", "echo": true, "logprobs": 2, "stop": "."})");
  EXPECT_EQ(r.prompt, "Once");
  EXPECT_EQ(r.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_TRUE(r.echo);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_EQ(r.stop, std::vector<std::string>{"."});
  r = parse_completion_request(R"({"prompt": [[1, 2, 3]], "max_tokens": 0})");
  EXPECT_TRUE(r.prompt_is_ids);
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(r.max_tokens, 0);
  r = parse_completion_request(R"({"prompt": ["text"], "max_tokens": 5.0})");
  EXPECT_EQ(r.prompt, "text");
  EXPECT_EQ(r.max_tokens, 5);
}

TEST(ServerApi, RefusesBadRequestsNamingTheField) {
  const auto chat = [](const std::string& body) { return [body] { parse_chat_request(body); }; };
  const auto completion = [](const std::string& body) { return [body] { parse_completion_request(body); }; };
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  expect_api_error(chat("{not json"), 400, "", "not valid JSON", "invalid_json");
  expect_api_error(chat("[1, 2]"), 400, "", "must be a JSON object");
  expect_api_error(chat("\"\xff\""), 400, "", "not valid JSON");  // invalid UTF-8
  expect_api_error(chat("{}"), 400, "messages", "required");
  expect_api_error(chat(R"({"messages": "hi"})"), 400, "messages", "must be an array");
  expect_api_error(chat(R"({"messages": []})"), 400, "messages", "at least one");
  expect_api_error(chat(R"({"messages": [{"content": "x"}]})"), 400, "messages[0].role");
  expect_api_error(chat(R"({"messages": [{"role": "robot", "content": "x"}]})"), 400, "messages[0].role",
                   "robot");
  expect_api_error(chat(R"({"messages": [{"role": "user"}]})"), 400, "messages[0].content");
  expect_api_error(chat(R"({"messages": [{"role": "user", "content": 5}]})"), 400, "messages[0].content");
  expect_api_error(chat(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})"), 400,
                   "messages[0].content", "image_url");
  expect_api_error(chat("{" + msgs + R"(, "temperature": "hot"})"), 400, "temperature", "must be a number");
  expect_api_error(chat("{" + msgs + R"(, "temperature": 2.5})"), 400, "temperature", "[0, 2]");
  expect_api_error(chat("{" + msgs + R"(, "temperature": -1})"), 400, "temperature");
  expect_api_error(chat("{" + msgs + R"(, "top_p": 0})"), 400, "top_p", "(0, 1]");
  expect_api_error(chat("{" + msgs + R"(, "top_p": 1.5})"), 400, "top_p");
  expect_api_error(chat("{" + msgs + R"(, "max_tokens": 0})"), 400, "max_tokens");
  expect_api_error(chat("{" + msgs + R"(, "max_tokens": "10"})"), 400, "max_tokens", "must be an integer");
  expect_api_error(chat("{" + msgs + R"(, "max_tokens": 1.5})"), 400, "max_tokens", "must be an integer");
  expect_api_error(chat("{" + msgs + R"(, "max_completion_tokens": -3})"), 400, "max_completion_tokens");
  expect_api_error(chat("{" + msgs + R"(, "seed": "x"})"), 400, "seed");
  expect_api_error(chat("{" + msgs + R"(, "stop": 3})"), 400, "stop");
  expect_api_error(chat("{" + msgs + R"(, "stop": ["a", "b", "c", "d", "e"]})"), 400, "stop", "at most 4");
  expect_api_error(chat("{" + msgs + R"(, "stop": [""]})"), 400, "stop", "empty");
  expect_api_error(chat("{" + msgs + R"(, "stream": "yes"})"), 400, "stream", "boolean");
  expect_api_error(chat("{" + msgs + R"(, "stream_options": {"include_usage": true}})"), 400,
                   "stream_options");
  expect_api_error(chat("{" + msgs + R"(, "n": 2})"), 400, "n");
  expect_api_error(chat("{" + msgs + R"(, "model": 7})"), 400, "model");
  expect_api_error(chat("{" + msgs + R"(, "top_logprobs": 2})"), 400, "top_logprobs", "logprobs");
  expect_api_error(chat("{" + msgs + R"(, "logprobs": true, "top_logprobs": 21})"), 400, "top_logprobs");
  expect_api_error(chat("{" + msgs + R"(, "presence_penalty": 3})"), 400, "presence_penalty");
  expect_api_error(completion("{}"), 400, "prompt", "required");
  expect_api_error(completion(R"({"prompt": ""})"), 400, "prompt", "empty");
  expect_api_error(completion(R"({"prompt": [1, -2]})"), 400, "prompt", "non-negative");
  expect_api_error(completion(R"({"prompt": ["a", "b"]})"), 400, "prompt", "one per request");
  expect_api_error(completion(R"({"prompt": {"a": 1}})"), 400, "prompt");
  expect_api_error(completion(R"({"prompt": "a", "logprobs": 6})"), 400, "logprobs");
  expect_api_error(completion(R"({"prompt": "a", "suffix": "b"})"), 400, "suffix");
}

TEST(ServerApi, ErrorBodyHasOpenAisShape) {
  const Json a =
      Json::parse(error_body(ApiError(400, "bad \"thing\"", "invalid_request_error", "top_p", "x_code")));
  ASSERT_TRUE(a.contains("error"));
  EXPECT_EQ(a["error"]["message"], "bad \"thing\"");
  EXPECT_EQ(a["error"]["type"], "invalid_request_error");
  EXPECT_EQ(a["error"]["param"], "top_p");
  EXPECT_EQ(a["error"]["code"], "x_code");
  const Json b = Json::parse(error_body(ApiError(429, "busy", "rate_limit_exceeded")));
  EXPECT_TRUE(b["error"]["param"].is_null());
  EXPECT_TRUE(b["error"]["code"].is_null());
}

TEST(ServerApi, SseFraming) {
  const ResponseMeta meta{.id = "chatcmpl-1", .created = 7, .model = "m"};
  // Text with newlines and a blank line stays inside one event: the JSON escapes them.
  const std::string ev = sse_event(chat_chunk(meta, Json{{"content", "a\n\nb"}}, "", nullptr));
  ASSERT_TRUE(ev.starts_with("data: "));
  ASSERT_TRUE(ev.ends_with("\n\n"));
  EXPECT_EQ(ev.find('\n'), ev.size() - 2);
  const Json j = Json::parse(ev.substr(6));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"]["content"], "a\n\nb");
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // Invalid UTF-8 (a token that is half a character) becomes U+FFFD instead of failing.
  EXPECT_NE(dump_json(Json{{"t", std::string("a\xe2\x82")}}).find("\xef\xbf\xbd"), std::string::npos);
  const Json u = usage_chunk(meta, Endpoint::Chat,
                             Usage{.prompt_tokens = 5, .completion_tokens = 3, .cached_tokens = 2});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 8);
  EXPECT_EQ(u["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
  const Json fin = chat_chunk(meta, Json::object(), "length", nullptr);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
}

TEST(ServerApi, ResponsesAndLogprobs) {
  const ResponseMeta meta{.id = "x", .created = 1, .model = "m"};
  std::vector<TokenLogprob> lps = {
      {.token = "He", .logprob = -0.5f, .top = {{"He", -0.5f}, {"A", -1.5f}}},
      {.token = "llo", .logprob = -0.25f, .top = {{"llo", -0.25f}, {"y", -2.0f}}}};
  const Json c =
      chat_response(meta, "Hello", "stop", Usage{.prompt_tokens = 4, .completion_tokens = 2}, &lps);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["logprobs"]["content"][1]["token"], "llo");
  EXPECT_EQ(c["choices"][0]["logprobs"]["content"][1]["bytes"], Json::array({108, 108, 111}));
  EXPECT_EQ(c["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"], "A");
  EXPECT_EQ(c["usage"]["total_tokens"], 6);
  const Json t = completion_response(meta, "Hello", "length", Usage{}, &lps, 1);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["logprobs"]["tokens"], Json::array({"He", "llo"}));
  EXPECT_EQ(t["choices"][0]["logprobs"]["text_offset"], Json::array({0, 2}));
  EXPECT_EQ(t["choices"][0]["logprobs"]["top_logprobs"][0].size(), 1u);
}

TEST(ServerApi, BearerKeyComparison) {
  EXPECT_TRUE(bearer_matches("Bearer s3cret", "s3cret"));
  EXPECT_FALSE(bearer_matches("Bearer s3cre", "s3cret"));
  EXPECT_FALSE(bearer_matches("Bearer s3cretX", "s3cret"));
  EXPECT_FALSE(bearer_matches("Bearer s3creT", "s3cret"));
  EXPECT_FALSE(bearer_matches("s3cret", "s3cret"));
  EXPECT_FALSE(bearer_matches("", "s3cret"));
  EXPECT_FALSE(bearer_matches("Bearer ", ""));
}

TEST(ServerMetrics, PrometheusText) {
  Metrics m;
  m.requests_received = 5;
  m.requests_rejected = 2;
  m.prompt_tokens = 100;
  m.prompt_tokens_reused = 25;
  m.decode_steps = 4;
  m.decode_sequences = 10;
  const std::string text = m.prometheus(4, 16, 1000, 2000);
  EXPECT_NE(text.find("flashmoe_requests_total{outcome=\"rejected\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("flashmoe_prompt_cache_hit_ratio 0.25\n"), std::string::npos) << text;
  EXPECT_NE(text.find("flashmoe_decode_batch_size_mean 2.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE flashmoe_queue_depth gauge\n"), std::string::npos);
  // Every sample line is "name[{labels}] number".
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.starts_with("#")) continue;
    const size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_TRUE(line.starts_with("flashmoe_")) << line;
    size_t used = 0;
    std::stod(line.substr(sp + 1), &used);
    EXPECT_EQ(used, line.size() - sp - 1) << line;
    ++samples;
  }
  EXPECT_GT(samples, 20);
}

// ---- the scheduler on the default model ----

struct Engine {
  std::unique_ptr<Model> model = Model::load(kModel);
  Tokenizer tokenizer = Tokenizer::load(kModel);
  ChatTemplate tmpl = ChatTemplate::from_model(kModel);
  CpuBackend backend{2};
  Transformer transformer{*model, backend, TransformerOptions{.max_context = 512, .max_batch = 64}};
  std::vector<int32_t> eos = tokenizer.eos_ids();
};

Engine& engine() {
  static Engine e;
  return e;
}

JobSpec spec_of(const std::string& text, int max_tokens, float temperature = 0.0f, uint64_t seed = 0) {
  JobSpec s;
  s.prompt_text = text;
  s.prompt = engine().tokenizer.encode(text);
  s.max_tokens = max_tokens;
  s.sampling.temperature = temperature;
  s.sampling.seed = seed;
  return s;
}

struct Answer {
  std::string text;
  std::string finish;
  Usage usage;
};

Answer collect(Job& job) {
  Answer a;
  for (;;) {
    JobOutput out = job.take(5s);
    a.text += out.text;
    if (out.finished) break;
  }
  a.finish = job.finish_reason();
  a.usage = job.usage();
  return a;
}

// The reference: fm::generate on a fresh sequence (one sequence, forward() per token).
std::string solo(const JobSpec& s) {
  Engine& e = engine();
  SequenceState state = e.transformer.new_sequence();
  StreamDecoder decoder(e.tokenizer);
  GenerateOptions opt{.max_new_tokens = s.max_tokens, .sampling = s.sampling, .stop_ids = e.eos};
  opt.decode = [&decoder](int32_t id) { return decoder.push(id); };
  GenerateResult r = generate(e.transformer, state, s.prompt, opt);
  if (r.finish_reason != FinishReason::StopString) r.text += decoder.flush();
  return r.text;
}

// Greedy decoding: the batched decode step's logits may differ from a single sequence's in the last
// bits (another kernel path), which a sampled draw can amplify but an argmax does not.
TEST(ServerScheduler, BatchedRequestsMatchSoloRuns) {
  Engine& e = engine();
  const std::vector<JobSpec> specs = {
      spec_of("In the beginning God created", 24), spec_of("And the LORD said unto Moses,", 20),
      spec_of("Blessed are the", 28), spec_of("The fool hath said in his heart", 16)};
  std::vector<std::string> expected;
  for (const JobSpec& s : specs) expected.push_back(solo(s));
  Metrics metrics;
  {
    Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 4, .max_queue = 8, .stop_ids = e.eos});
    std::vector<std::shared_ptr<Job>> jobs;
    for (const JobSpec& s : specs) jobs.push_back(sched.submit(s));
    for (size_t i = 0; i < jobs.size(); ++i) {
      ASSERT_TRUE(jobs[i]);
      const Answer a = collect(*jobs[i]);
      EXPECT_EQ(a.text, expected[i]) << "request " << i;
      EXPECT_TRUE(a.finish == "stop" || a.finish == "length") << a.finish;
      EXPECT_EQ(a.usage.prompt_tokens, int(specs[i].prompt.size()));
      EXPECT_LE(a.usage.completion_tokens, specs[i].max_tokens);
    }
  }
  // Several sequences shared decode steps.
  EXPECT_GT(metrics.decode_sequences.load(), metrics.decode_steps.load());
  EXPECT_EQ(metrics.requests_completed.load(), 4u);
}

TEST(ServerScheduler, SeedReproducesASampledAnswer) {
  Engine& e = engine();
  Metrics metrics;
  Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 2, .max_queue = 4, .stop_ids = e.eos});
  const JobSpec s = spec_of("And the LORD said unto Moses,", 24, 0.9f, 7);
  const Answer a = collect(*sched.submit(s));
  const Answer b = collect(*sched.submit(s));
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.text, solo(s));  // one sequence: the same computation as generate()
  JobSpec other = s;
  other.sampling.seed = 8;
  const Answer c = collect(*sched.submit(other));
  EXPECT_NE(a.text, c.text);
}

TEST(ServerScheduler, LongPromptIsFedInChunksBetweenDecodeSteps) {
  Engine& e = engine();
  Metrics metrics;
  Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 2, .max_queue = 4, .stop_ids = {}});
  JobSpec a = spec_of("In the beginning", 200);
  a.logprobs = true;  // one entry per generated token: counts them
  std::string long_text;
  while (e.tokenizer.encode(long_text).size() < 300) long_text += "And God saw the light, that it was good. ";
  const JobSpec b = spec_of(long_text, 6);  // 5 chunks of --batch 64
  const std::string b_alone = solo(b);
  auto job_a = sched.submit(a);
  size_t a_tokens = job_a->take(5s).logprobs.size();
  ASSERT_GT(a_tokens, 0u);
  auto job_b = sched.submit(b);
  std::string b_text;
  while (b_text.empty()) b_text += job_b->take(5s).text;
  a_tokens += job_a->take(0ms).logprobs.size();
  // One decode step for A per chunk of B's prompt: A went on while B was fed.
  EXPECT_GE(a_tokens, 5u);
  b_text += collect(*job_b).text;
  EXPECT_EQ(b_text, b_alone);
  job_a->cancel();
  EXPECT_EQ(collect(*job_a).finish, "cancelled");
}

TEST(ServerScheduler, StopStringsCutTheText) {
  Engine& e = engine();
  JobSpec s = spec_of("In the beginning God created", 40);
  const std::string full = solo(s);
  ASSERT_GT(full.size(), 8u);
  const std::string stop = full.substr(4, 3);
  s.stop = {stop};
  Metrics metrics;
  Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 2, .max_queue = 4, .stop_ids = e.eos});
  auto job = sched.submit(s);
  ASSERT_TRUE(job);
  const Answer a = collect(*job);
  EXPECT_EQ(a.finish, "stop");
  EXPECT_EQ(a.text, full.substr(0, full.find(stop)));
}

TEST(ServerScheduler, QueueBoundAndCancellation) {
  Engine& e = engine();
  Metrics metrics;
  Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 1, .max_queue = 2, .stop_ids = {}});
  // No stop ids: the first request runs to its length and holds the only slot.
  auto running = sched.submit(spec_of("In the beginning", 400));
  ASSERT_TRUE(running);
  running->take(5s);  // admitted: it produced something
  auto q1 = sched.submit(spec_of("a", 400));
  auto q2 = sched.submit(spec_of("b", 60));
  ASSERT_TRUE(q1 && q2);
  EXPECT_EQ(sched.submit(spec_of("c", 4)), nullptr);  // the queue is full
  EXPECT_EQ(metrics.queue_depth.load(), 2);
  q1->cancel();
  running->cancel();
  EXPECT_EQ(collect(*running).finish, "cancelled");
  EXPECT_EQ(collect(*q1).finish, "cancelled");
  const Answer a2 = collect(*q2);  // served once the others left
  EXPECT_EQ(a2.finish, "length");
  EXPECT_EQ(a2.usage.completion_tokens, 60);
  EXPECT_EQ(metrics.requests_cancelled.load(), 2u);
}

TEST(ServerScheduler, ExtendedPromptReusesTheSlot) {
  Engine& e = engine();
  Metrics metrics;
  Scheduler sched(e.transformer, e.tokenizer, metrics, {.slots = 2, .max_queue = 4, .stop_ids = e.eos});
  const JobSpec first = spec_of("In the beginning God created the heaven", 12);
  const Answer a = collect(*sched.submit(first));
  // The next request: the same text, the answer, and more.
  const std::string next_text = first.prompt_text + a.text + " And God said";
  JobSpec second = spec_of(next_text, 12);
  const Answer b = collect(*sched.submit(second));
  EXPECT_GT(b.usage.cached_tokens, int(first.prompt.size()));
  EXPECT_EQ(metrics.prefix_reuses.load(), 1u);
  // The same ids as a fresh prompt give the same answer as a fresh run.
  JobSpec by_ids;
  by_ids.prompt = first.prompt;
  const Answer c = collect(*sched.submit(first));  // a slot holding exactly `first` + its answer
  (void)c;
  std::vector<int32_t> ids = first.prompt;
  const std::vector<int32_t> more = e.tokenizer.encode(" And the earth");
  ids.insert(ids.end(), more.begin(), more.end());
  JobSpec fresh;
  fresh.prompt = ids;
  fresh.max_tokens = 10;
  const std::string expected = solo(fresh);
  const Answer d = collect(*sched.submit(fresh));
  EXPECT_EQ(d.text, expected);
  // A prompt that is no extension is prefilled from scratch.
  const Answer f = collect(*sched.submit(spec_of("Blessed are", 4)));
  EXPECT_EQ(f.usage.cached_tokens, 0);
}

// ---- HTTP over loopback ----

struct LiveServer {
  Metrics metrics;
  Scheduler scheduler;
  HttpServer http;
  int port = 0;
  std::thread thread;
  explicit LiveServer(ServerOptions options, int slots = 2, int queue = 4)
      : scheduler(engine().transformer, engine().tokenizer, metrics,
                  {.slots = slots, .max_queue = queue, .stop_ids = engine().eos}),
        http(scheduler, engine().tokenizer, &engine().tmpl, metrics, with_defaults(std::move(options))) {
    port = http.bind();
    thread = std::thread([this] { http.listen(); });
  }
  ~LiveServer() {
    http.stop();
    thread.join();
    scheduler.stop();
  }
  static ServerOptions with_defaults(ServerOptions o) {
    o.port = 0;
    if (o.model_id.empty()) o.model_id = "default";
    o.context = 512;
    return o;
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    return c;
  }
};

Json error_of(const httplib::Result& r) {
  EXPECT_TRUE(r);
  const Json j = Json::parse(r->body);
  EXPECT_TRUE(j.contains("error")) << r->body;
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << r->body;
  return j["error"];
}

TEST(ServerHttp, RoutesAndErrors) {
  ServerOptions o;
  o.max_body_bytes = 4096;
  LiveServer s(o);
  httplib::Client c = s.client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(Json::parse(r->body)["data"][0]["id"], "default");
  r = c.Get("/");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("<title>flashmoe chat</title>"), std::string::npos);
  EXPECT_EQ(error_of(c.Get("/nope"))["message"], "no route for GET /nope");

  const std::string body = R"({"model": "default", "max_tokens": 6, "temperature": 0,
                               "messages": [{"role": "user", "content": "In the beginning"}]})";
  r = c.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
  EXPECT_TRUE(j["choices"][0]["finish_reason"] == "stop" || j["choices"][0]["finish_reason"] == "length");

  r = c.Post("/v1/chat/completions", "{oops", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["code"], "invalid_json");
  r = c.Post("/v1/chat/completions", R"({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["code"], "model_not_found");
  r = c.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 600})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["code"], "context_length_exceeded");
  r = c.Post("/v1/completions", R"({"prompt": [1, 99999999]})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["param"], "prompt");
  r = c.Post("/v1/completions", R"({"prompt": "a", "top_k": -1, "min_p": 2})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/completions", std::string(5000, ' ') + "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("4096"), std::string::npos);

  r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("flashmoe_requests_total{outcome=\"completed\"} 1\n"), std::string::npos) << r->body;
}

TEST(ServerHttp, StreamsServerSentEvents) {
  LiveServer s(ServerOptions{});
  httplib::Client c = s.client();
  std::string raw;
  httplib::Headers headers;
  auto r = c.Post("/v1/completions", headers,
                  R"({"prompt": "In the beginning God", "max_tokens": 8, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  raw = r->body;
  ASSERT_TRUE(raw.ends_with("data: [DONE]\n\n")) << raw;
  std::string text, finish;
  bool usage = false;
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t end = raw.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    const std::string ev = raw.substr(pos, end - pos);
    pos = end + 2;
    ASSERT_TRUE(ev.starts_with("data: ")) << ev;
    if (ev == "data: [DONE]") continue;
    const Json j = Json::parse(ev.substr(6));
    if (j.contains("usage") && !j["usage"].is_null()) {
      usage = true;
      EXPECT_TRUE(j["choices"].empty());
      continue;
    }
    text += j["choices"][0]["text"].get<std::string>();
    if (!j["choices"][0]["finish_reason"].is_null()) finish = j["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(usage);
  EXPECT_TRUE(finish == "stop" || finish == "length");
  // The same request not streamed gives the same text.
  r = c.Post("/v1/completions", R"({"prompt": "In the beginning God", "max_tokens": 8, "temperature": 0})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(Json::parse(r->body)["choices"][0]["text"], text);
}

TEST(ServerHttp, ApiKey) {
  ServerOptions o;
  o.api_key = "s3cret";
  LiveServer s(o);
  httplib::Client c = s.client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(error_of(r)["code"], "invalid_api_key");
  r = c.Get("/v1/models", httplib::Headers{{"Authorization", "Bearer wrong"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Get("/v1/models", httplib::Headers{{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/health");  // open: for load balancers
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

}  // namespace
}  // namespace fm::server
