// Chat sessions on the embedded default model: cache reuse across turns, session files.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "chat/chat_template.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/chat_session.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fm {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;

const std::string kModel = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";

struct Engine {
  std::unique_ptr<Model> model = Model::load(kModel);
  Tokenizer tokenizer = Tokenizer::load(kModel);
  ChatTemplate tmpl = ChatTemplate::from_model(kModel);
  CpuBackend backend{2};
  Transformer transformer{*model, backend, TransformerOptions{.max_context = 512, .max_batch = 64}};
  ChatSession session() { return ChatSession(*model, transformer, tokenizer, tmpl, kModel); }
};

Engine& engine() {
  static Engine e;
  return e;
}

ChatOptions opts(int n = 12) { return ChatOptions{.max_new_tokens = n}; }

std::vector<float> next_logits(Transformer& t, SequenceState state, int32_t token) {
  std::vector<float> logits(static_cast<size_t>(t.config().vocab_size));
  t.forward(state, std::span<const int32_t>(&token, 1), logits.data(), false);
  return logits;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary);
  out << data;
}

TEST(Chat, SecondTurnFeedsOnlyTheNewSuffix) {
  Engine& e = engine();
  ChatSession s = e.session();
  const ChatTurn t1 = s.ask("In the beginning", opts());
  EXPECT_FALSE(t1.re_prefilled);
  const int after_first = s.n_past();
  ASSERT_GT(after_first, t1.fed);

  const ChatTurn t2 = s.ask("And the earth?", opts());
  EXPECT_FALSE(t2.re_prefilled);
  EXPECT_EQ(s.stats().re_prefills, 0);
  EXPECT_EQ(s.stats().prefix_reuses, 1);
  // What the template adds for the turn: the end of the answer, the user message, the generation prompt.
  // The last answer token was sampled but never fed, so it comes first.
  const std::vector<int32_t> suffix = e.tokenizer.encode(
      "<|im_end|>\n<|im_start|>user\nAnd the "
      "earth?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(s.stats().last_fed, t2.fed);
  const int last_not_fed = t1.finish == FinishReason::StopToken ? 0 : 1;
  EXPECT_EQ(t2.fed, int(suffix.size()) + last_not_fed);
  EXPECT_EQ(s.stats().reused_tokens, after_first);

  // The cache holds exactly what feeding the recorded tokens the same way gives: the first prompt, the
  // answer's tokens one at a time, then only the second turn's suffix.
  Transformer& tr = e.transformer;
  const std::vector<int32_t>& T = s.tokens();
  ASSERT_EQ(int(T.size()), t1.fed + t1.generated - 1 + t2.fed + t2.generated - 1);
  std::vector<float> scratch(static_cast<size_t>(tr.config().vocab_size));
  SequenceState same = tr.new_sequence();
  size_t pos = 0;
  for (const ChatTurn* t : {&t1, &t2}) {
    tr.forward(same, std::span<const int32_t>(T.data() + pos, size_t(t->fed)), scratch.data(), false);
    pos += size_t(t->fed);
    for (int i = 0; i + 1 < t->generated; ++i)
      tr.forward(same, std::span<const int32_t>(&T[pos++], 1), scratch.data(), false);
  }
  EXPECT_EQ(next_logits(tr, s.state(), 42), next_logits(tr, same, 42));

  // A single prefill of all of them agrees up to the batched kernels' rounding (activations quantized per
  // batch, chunked DeltaNet): measured 0.06 on logits of magnitude 11.
  SequenceState fresh = tr.new_sequence();
  tr.forward(fresh, T, scratch.data(), false);
  const std::vector<float> a = next_logits(tr, s.state(), 42);
  const std::vector<float> b = next_logits(tr, fresh, 42);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  EXPECT_LT(worst, 2e-2 * scale);
}

TEST(Chat, ThinkingAnswersAreKeptAsTheModelSawThem) {
  // Qwen3.5's template drops earlier answers' <think> blocks; answers are stored as fed, so the next turn
  // still extends what is in the cache.
  Engine& e = engine();
  ChatSession s = e.session();
  ChatOptions o = opts(8);
  o.think = true;
  s.ask("Who begat Seth?", o);
  s.ask("And then?", o);
  EXPECT_EQ(s.stats().re_prefills, 0);
  EXPECT_EQ(s.stats().prefix_reuses, 1);
}

TEST(Chat, ChangedHistoryIsPrefilledAgain) {
  Engine& e = engine();
  ChatSession s = e.session();
  s.ask("In the beginning", opts(4));
  s.set_system("You are a scribe.");  // the rendering no longer extends what was fed
  const ChatTurn t = s.ask("Go on", opts(4));
  EXPECT_TRUE(t.re_prefilled);
  EXPECT_EQ(s.stats().re_prefills, 1);
  EXPECT_EQ(t.fed, s.n_past() - (t.generated - 1));  // everything fed again
}

TEST(Chat, SavedSessionContinuesExactly) {
  Engine& e = engine();
  TempDir dir;
  const fs::path file = dir / "s.fmchat";
  ChatSession a = e.session();
  a.ask("In the beginning", opts());
  a.ask("What did God make?", opts());
  a.save(file);

  ChatSession b = e.session();
  b.load(file);
  EXPECT_EQ(b.n_past(), a.n_past());
  EXPECT_EQ(b.tokens(), a.tokens());
  EXPECT_EQ(b.messages(), a.messages());
  for (int32_t tok : {0, 42, 12285})
    EXPECT_EQ(next_logits(e.transformer, a.state(), tok), next_logits(e.transformer, b.state(), tok));

  // The next turn continues from the loaded cache, as the unsaved session does.
  const ChatTurn ta = a.ask("And the sea?", opts());
  const ChatTurn tb = b.ask("And the sea?", opts());
  EXPECT_FALSE(tb.re_prefilled);
  EXPECT_EQ(tb.fed, ta.fed);
  EXPECT_EQ(tb.text, ta.text);
  EXPECT_EQ(b.stats().re_prefills, 0);
  EXPECT_EQ(b.tokens(), a.tokens());
}

TEST(Chat, BrokenSessionFilesAreRefused) {
  Engine& e = engine();
  TempDir dir;
  const fs::path good = dir / "good.fmchat";
  ChatSession a = e.session();
  a.ask("In the beginning", opts(4));
  a.save(good);
  const std::string bytes = slurp(good);
  ChatSession b = e.session();

  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x20;
  spit(dir / "flipped", flipped);
  expect_error([&] { b.load(dir / "flipped"); }, {"checksum"}, (dir / "flipped").string());

  spit(dir / "short", bytes.substr(0, bytes.size() - 100));
  expect_error([&] { b.load(dir / "short"); }, {"truncated"}, (dir / "short").string());

  spit(dir / "other", "hello, not a session");
  expect_error([&] { b.load(dir / "other"); }, {"not a flashmoe chat session"}, (dir / "other").string());

  std::string future = bytes;
  future[8] = 9;  // version
  spit(dir / "future", future);
  expect_error([&] { b.load(dir / "future"); }, {"version 9"}, (dir / "future").string());

  expect_error([&] { b.load(dir / "missing"); }, {"cannot open"}, (dir / "missing").string());
  EXPECT_EQ(b.n_past(), 0);  // nothing was half-loaded

  // Another model's session: both models named.
  const std::string other_dir = std::string(FM_FIXTURES) + "/qwen35moe-text-f32";
  const std::unique_ptr<Model> other = Model::load(other_dir);
  EXPECT_NE(model_fingerprint(*other), model_fingerprint(*e.model));
  CpuBackend be(1);
  Transformer t(*other, be, TransformerOptions{.max_context = 64, .max_batch = 16});
  ChatSession c(*other, t, e.tokenizer, e.tmpl, other_dir);
  expect_error([&] { c.load(good); }, {kModel, other_dir, "fingerprint"}, good.string());
}

TEST(Chat, FingerprintIsStable) {
  const std::unique_ptr<Model> again = Model::load(kModel);
  EXPECT_EQ(model_fingerprint(*again), model_fingerprint(*engine().model));
}

// The command line: flashmoe run -p / --chat / --stop, flashmoe chat without a terminal, the default model.
struct Cmd {
  int status = -1;
  std::string out, err;
};

Cmd cli(const TempDir& dir, const std::string& args, const std::string& input = "",
        const std::string& env = "") {
  const fs::path in = dir / "stdin", out = dir / "stdout", err = dir / "stderr";
  spit(in, input);
  const std::string cmd = env + " " + std::string(FM_CLI) + " " + args + " <" + in.string() + " >" +
                          out.string() + " 2>" + err.string();
  const int raw = std::system(cmd.c_str());
  return Cmd{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(out), slurp(err)};
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream ss(text);
  for (int32_t id; ss >> id;) ids.push_back(id);
  return ids;
}

TEST(ChatCli, RunStreamsTheTextOfTheIds) {
  TempDir dir;
  Engine& e = engine();
  // No -m: the embedded default model.
  const Cmd ids = cli(dir, "run -p 'And God said' -n 24 -t 2 --print-ids");
  ASSERT_EQ(ids.status, 0) << ids.err;
  std::vector<int32_t> gen = parse_ids(ids.out);
  ASSERT_FALSE(gen.empty());
  const Cmd text = cli(dir, "run -m " + kModel + " -p 'And God said' -n 24 -t 2");
  ASSERT_EQ(text.status, 0) << text.err;
  const auto& eos = e.tokenizer.eos_ids();
  if (std::find(eos.begin(), eos.end(), gen.back()) != eos.end()) gen.pop_back();
  EXPECT_EQ(text.out, e.tokenizer.decode(gen) + "\n");

  // The prompt ids are the tokenizer's: --prompt-ids of the encoded text gives the same ids.
  std::string joined;
  for (int32_t id : e.tokenizer.encode("And God said"))
    joined += (joined.empty() ? "" : ",") + std::to_string(id);
  const Cmd same = cli(dir, "run --prompt-ids " + joined + " -n 24 -t 2 --print-ids");
  EXPECT_EQ(same.out, ids.out);

  // A stop string cuts the text before it.
  const std::string body = text.out.substr(0, text.out.size() - 1);
  ASSERT_GT(body.size(), 12u);
  const std::string stop = body.substr(body.size() / 2, 5);
  const Cmd stopped = cli(dir, "run -p 'And God said' -n 24 -t 2 --stop '" + stop + "'");
  ASSERT_EQ(stopped.status, 0) << stopped.err;
  EXPECT_EQ(stopped.out, body.substr(0, body.find(stop)) + "\n");
}

TEST(ChatCli, RunChatWrapsThePromptInTheTemplate) {
  TempDir dir;
  Engine& e = engine();
  const Cmd r = cli(dir, "run --chat -p 'Who made the sea?' -n 8 -t 2 --print-ids");
  ASSERT_EQ(r.status, 0) << r.err;
  const jinja::Json msgs = jinja::Json::array({{{"role", "user"}, {"content", "Who made the sea?"}}});
  const std::vector<int32_t> prompt =
      e.tokenizer.encode(e.tmpl.render(msgs, jinja::Json(), true, jinja::Json::object()));
  SequenceState st = e.transformer.new_sequence();
  GenerateOptions g{.max_new_tokens = 8, .stop_ids = e.tokenizer.eos_ids()};
  for (int id : e.model->config.eos_token_ids)
    if (std::find(g.stop_ids.begin(), g.stop_ids.end(), id) == g.stop_ids.end()) g.stop_ids.push_back(id);
  const GenerateResult ref = generate(e.transformer, st, prompt, g);
  EXPECT_EQ(parse_ids(r.out), ref.tokens);
}

TEST(ChatCli, ChatReadsLinesWithoutATerminal) {
  TempDir dir;
  const fs::path saved = dir / "s.fmchat";
  const Cmd r =
      cli(dir, "chat -t 2 -n 8", "In the beginning\nAnd then?\n/stats\n/save " + saved.string() + "\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("turns: 2 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("prefix reuses: 1 | re-prefills: 0"), std::string::npos) << r.out;
  const Cmd again = cli(dir, "chat -t 2 -n 8 --session " + saved.string(), "/stats\n");
  ASSERT_EQ(again.status, 0) << again.err;
  const size_t at = r.out.find("saved ");
  ASSERT_NE(at, std::string::npos);
  const std::string n = r.out.substr(at + 6, r.out.find(' ', at + 6) - at - 6);
  EXPECT_NE(again.out.find("context: " + n + " tokens"), std::string::npos) << again.out;

  // A missing default model is a clear error (another model's session: BrokenSessionFilesAreRefused).
  const Cmd missing = cli(dir, "chat", "", "FLASHMOE_DEFAULT_MODEL=" + (dir / "nowhere.gguf").string());
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("FLASHMOE_DEFAULT_MODEL"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace fm
