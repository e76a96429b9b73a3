// flashmoe chat: a conversation with a model, its cache kept from turn to turn (runtime/chat_session.h).
// On a terminal: GNU readline (line editing, history); Ctrl-C stops an answer, Ctrl-C or Ctrl-D at an
// empty prompt exits. Otherwise: one message (or /command) per line of stdin, the answers on stdout.
#include <readline/history.h>
#include <readline/readline.h>
#include <sys/select.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "chat/chat_template.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/chat_session.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fm::cli {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_sigint(int) { g_interrupted.store(true); }

struct ChatArgs {
  EngineArgs engine;
  std::string system_file;
  std::string session;
  std::string think = "off";
  ChatOptions chat;
};

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open '{}'", what, path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// readline's callback interface, so that a Ctrl-C (our handler, no SA_RESTART) wakes the select().
struct LineReader {
  static inline std::optional<std::string> line;
  static inline bool done = false;
  static void on_line(char* text) {
    done = true;
    if (text) {
      line = std::string(text);
      std::free(text);
    } else {
      line.reset();
      std::fputs("\n", stdout);  // Ctrl-D: end the prompt's line
    }
    rl_callback_handler_remove();
  }
  // nullopt: exit (Ctrl-D, or Ctrl-C on an empty line).
  static std::optional<std::string> read(const char* prompt) {
    done = false;
    line.reset();
    rl_callback_handler_install(prompt, on_line);
    while (!done) {
      fd_set fds;
      FD_ZERO(&fds);
      FD_SET(STDIN_FILENO, &fds);
      const int r = select(STDIN_FILENO + 1, &fds, nullptr, nullptr, nullptr);
      if (r < 0 && errno == EINTR) {
        if (!g_interrupted.exchange(false)) continue;
        const bool empty = rl_end == 0;
        rl_replace_line("", 0);
        rl_point = rl_end = 0;
        rl_callback_handler_remove();
        std::fputs("\n", stdout);
        if (empty) return std::nullopt;
        rl_callback_handler_install(prompt, on_line);  // Ctrl-C on a typed line drops it
        continue;
      }
      if (r > 0) rl_callback_read_char();
    }
    if (line && !line->empty()) add_history(line->c_str());
    return line;
  }
};

const char* kHelp =
    "commands:\n"
    "  /reset        forget the conversation\n"
    "  /save FILE    save the conversation and its cache\n"
    "  /load FILE    load a saved conversation (same model)\n"
    "  /stats        tokens, cache reuse and speed\n"
    "  /think on|off the model thinks before answering (Qwen templates' enable_thinking)\n"
    "  /max N        answer at most N tokens\n"
    "  /help         this text\n"
    "  /quit         exit (also Ctrl-D; Ctrl-C stops an answer)\n";

void print_stats(const ChatSession& s) {
  const ChatStats& st = s.stats();
  std::printf(
      "turns: %d | context: %d tokens | fed: %lld prompt tokens (last turn %d) | reused: %lld tokens | "
      "prefix reuses: %lld | re-prefills: %lld | generated: %lld tokens",
      st.turns, s.n_past(), (long long)st.fed_tokens, st.last_fed, (long long)st.reused_tokens,
      (long long)st.prefix_reuses, (long long)st.re_prefills, (long long)st.generated);
  if (st.prefill_seconds > 0)
    std::printf(" | prefill %.1f tok/s", double(st.fed_tokens) / st.prefill_seconds);
  if (st.decode_seconds > 0 && st.decode_steps > 0)
    std::printf(" | decode %.1f tok/s", double(st.decode_steps) / st.decode_seconds);
  std::printf("\n");
}

bool parse_on_off(const std::string& v, bool& out) {
  if (v == "on")
    out = true;
  else if (v == "off")
    out = false;
  else
    return false;
  return true;
}

// Runs one /command; false: quit.
bool command(ChatSession& session, ChatArgs& a, const std::string& line) {
  std::istringstream ss(line);
  std::string cmd, arg;
  ss >> cmd;
  std::getline(ss >> std::ws, arg);
  while (!arg.empty() && (arg.back() == ' ' || arg.back() == '\r')) arg.pop_back();
  if (cmd == "/quit" || cmd == "/exit") return false;
  if (cmd == "/help") {
    std::fputs(kHelp, stdout);
  } else if (cmd == "/reset") {
    session.reset();
    std::printf("conversation cleared\n");
  } else if (cmd == "/stats") {
    print_stats(session);
  } else if (cmd == "/think") {
    if (arg.empty())
      std::printf("thinking is %s\n", a.chat.think ? "on" : "off");
    else if (!parse_on_off(arg, a.chat.think))
      std::printf("usage: /think on|off\n");
    else
      std::printf("thinking %s\n", a.chat.think ? "on" : "off");
  } else if (cmd == "/max") {
    int n = 0;
    const auto [p, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), n);
    if (arg.empty() || ec != std::errc() || p != arg.data() + arg.size() || n < 1)
      std::printf("usage: /max N (N >= 1)\n");
    else
      std::printf("answers: at most %d tokens\n", a.chat.max_new_tokens = n);
  } else if (cmd == "/save" || cmd == "/load") {
    if (arg.empty()) {
      std::printf("usage: %s FILE\n", cmd.c_str());
    } else {
      try {
        if (cmd == "/save") {
          session.save(arg);
          std::printf("saved %d tokens to %s\n", session.n_past(), arg.c_str());
        } else {
          session.load(arg);
          std::printf("loaded %d tokens, %zu messages from %s\n", session.n_past(), session.messages().size(),
                      arg.c_str());
        }
      } catch (const Error& e) {
        std::printf("error: %s\n", e.what());
      }
    }
  } else {
    std::printf("unknown command %s (/help lists them)\n", cmd.c_str());
  }
  std::fflush(stdout);
  return true;
}

void answer(ChatSession& session, const ChatArgs& a, const std::string& text) {
  g_interrupted.store(false);
  try {
    const ChatTurn t = session.ask(
        text, a.chat,
        [](std::string_view piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        },
        [](int32_t) { return !g_interrupted.load(); });
    if (t.finish == FinishReason::Callback)
      std::printf("\n[interrupted]");
    else if (t.finish == FinishReason::Length)
      std::printf("\n[length limit]");
    std::printf("\n");
  } catch (const Error& e) {
    std::printf("\nerror: %s\n", e.what());
  }
  g_interrupted.store(false);
  std::fflush(stdout);
}

void chat(ChatArgs& a) {
  if (!parse_on_off(a.think, a.chat.think)) fail("--think: '{}' is not on or off", a.think);
  validate(a.chat.sampling);
  std::string system;
  if (!a.system_file.empty()) system = read_text_file(a.system_file, "--system");

  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  const Tokenizer tokenizer = Tokenizer::load(a.engine.model);
  const ChatTemplate tmpl = ChatTemplate::from_model(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  EngineArgs engine = a.engine;
  resolve_streaming(engine, *model);
  Transformer transformer(*model, backend, engine.transformer);
  ChatSession session(*model, transformer, tokenizer, tmpl, a.engine.model);
  session.set_system(system);
  if (!a.session.empty()) {
    session.load(a.session);
    if (!system.empty()) session.set_system(system);
    std::fprintf(stderr, "session %s: %d tokens, %zu messages\n", a.session.c_str(), session.n_past(),
                 session.messages().size());
  }

  struct sigaction sa = {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a Ctrl-C wakes the line reader
  struct sigaction old_sa = {};
  sigaction(SIGINT, &sa, &old_sa);

  const bool tty = isatty(STDIN_FILENO) != 0;
  if (tty) {
    rl_catch_signals = 0;
    std::fprintf(stderr, "flashmoe chat: %s (/help for commands, Ctrl-D to exit)\n", a.engine.model.c_str());
  }
  for (;;) {
    std::optional<std::string> line;
    if (tty) {
      line = LineReader::read("> ");
    } else {
      std::string l;
      if (!std::getline(std::cin, l)) break;
      line = l;
    }
    if (!line) break;
    std::string text = *line;
    while (!text.empty() && (text.back() == '\r' || text.back() == '\n')) text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    if (text[0] == '/') {
      if (!command(session, a, text)) break;
      continue;
    }
    answer(session, a, text);
  }
  sigaction(SIGINT, &old_sa, nullptr);
}

}  // namespace

void add_chat(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "Chat with a model (the embedded default model without -m)");
  add_engine_options(*cmd, args->engine);
  cmd->add_option("--system", args->system_file, "File holding the system message");
  cmd->add_option("--session", args->session, "Start from a session saved with /save");
  cmd->add_option("--think", args->think, "on or off: let the model think before answering (default off)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("-n,--n-predict", args->chat.max_new_tokens, "Most tokens per answer")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temp", args->chat.sampling.temperature, "Sampling temperature (0: greedy)");
  cmd->add_option("--top-k", args->chat.sampling.top_k, "Sample from the k most likely tokens (0: all)");
  cmd->add_option("--top-p", args->chat.sampling.top_p, "Nucleus sampling threshold");
  cmd->add_option("--min-p", args->chat.sampling.min_p,
                  "Drop tokens less likely than min-p times the top one");
  cmd->add_option("--repeat-penalty", args->chat.sampling.repetition_penalty, "Repetition penalty (1: off)");
  cmd->add_option("--seed", args->chat.sampling.seed, "Random seed");
  cmd->callback([args] { chat(*args); });
}

}  // namespace fm::cli
