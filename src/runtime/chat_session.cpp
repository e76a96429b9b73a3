#include "runtime/chat_session.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fm {

namespace {

constexpr char kMagic[8] = {'F', 'M', 'C', 'H', 'A', 'T', '\0', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 40;

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  template <class T>
  void pod(const T& v) {
    bytes(&v, sizeof v);
  }
  void str(const std::string& s) {
    pod(uint64_t(s.size()));
    bytes(s.data(), s.size());
  }
  void mat(const Mat& m, bool head) {
    pod(int32_t(m.dtype));
    pod(m.rows);
    pod(m.cols);
    pod(m.row_bytes);
    if (head && m.data) bytes(m.data, size_t(std::min<uint64_t>(256, m.nbytes())));
  }
};

uint32_t crc32_of(const std::string& data) {
  return uint32_t(crc32_z(0L, reinterpret_cast<const Bytef*>(data.data()), data.size()));
}

struct Writer {
  std::string out;
  template <class T>
  void pod(const T& v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void floats(const float* p, size_t n) {
    pod(uint64_t(n));
    out.append(reinterpret_cast<const char*>(p), n * sizeof(float));
  }
};

struct Reader {
  const std::string& in;
  size_t pos;
  const std::string& file;
  void need(size_t n, const char* what) {
    if (in.size() - pos < n) fail("{}: session file is truncated or corrupt (reading {})", file, what);
  }
  template <class T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, in.data() + pos, sizeof v);
    pos += sizeof v;
    return v;
  }
  void floats(std::vector<float>& dst, size_t expected, const char* what) {
    const uint64_t n = pod<uint64_t>(what);
    if (n != expected)
      fail("{}: session file holds {} values for {} where this model and context need {}", file, n, what,
           expected);
    need(n * sizeof(float), what);
    std::memcpy(dst.data(), in.data() + pos, n * sizeof(float));
    pos += n * sizeof(float);
  }
};

}  // namespace

uint64_t model_fingerprint(const Model& model) {
  const ModelConfig& c = model.config;
  Fnv f;
  f.str("flashmoe model fingerprint 1");
  f.pod(int32_t(c.arch));
  for (int v : {c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
                c.rotary_dim, c.linear_num_k_heads, c.linear_num_v_heads, c.linear_k_head_dim,
                c.linear_v_head_dim, c.linear_conv_kernel, c.num_experts, c.num_experts_per_tok,
                c.moe_intermediate_size, c.shared_expert_intermediate_size, c.intermediate_size})
    f.pod(int32_t(v));
  f.pod(c.rms_norm_eps);
  f.pod(c.rope_theta);
  for (LayerKind k : c.layer_kinds) f.pod(int32_t(k));
  for (bool m : c.layer_is_moe) f.pod(uint8_t(m));
  const ModelWeights& w = model.weights;
  f.mat(w.embed, true);
  f.mat(w.lm_head, true);
  f.bytes(w.final_norm.data(), w.final_norm.size() * sizeof(float));
  for (const LayerWeights& L : w.layers)
    f.mat(L.kind == LayerKind::FullAttention ? L.attn.q : L.linear.qkv, true);
  for_each_matrix(w, [&f](const Mat& m) { f.mat(m, false); });
  return f.h;
}

ChatSession::ChatSession(const Model& model, Transformer& transformer, const Tokenizer& tokenizer,
                         const ChatTemplate& tmpl, std::string model_name)
    : model_(model),
      transformer_(transformer),
      tokenizer_(tokenizer),
      template_(tmpl),
      model_name_(std::move(model_name)),
      fingerprint_(model_fingerprint(model)),
      state_(transformer.new_sequence()) {}

void ChatSession::set_system(const std::string& text) { system_ = text; }

jinja::Json ChatSession::conversation() const {
  jinja::Json all = jinja::Json::array();
  if (!system_.empty()) all.push_back({{"role", "system"}, {"content", system_}});
  for (const auto& m : messages_) all.push_back(m);
  return all;
}

void ChatSession::reset() {
  messages_ = jinja::Json::array();
  state_.reset();
  tokens_.clear();
  fed_text_.clear();
}

ChatTurn ChatSession::ask(const std::string& user, const ChatOptions& options,
                          const std::function<void(std::string_view)>& on_text,
                          const std::function<bool(int32_t)>& on_token) {
  ChatTurn turn;
  jinja::Json conv = conversation();
  conv.push_back({{"role", "user"}, {"content", user}});
  const std::string rendered = template_.render(conv, jinja::Json(), true, options.think);
  // The assistant header ends the rendering without the generation prompt; what follows it in the
  // generation prompt (an empty <think> block, ...) is part of the answer as the model sees it.
  const std::string without_gen = template_.render(conv, jinja::Json(), false, options.think);
  std::string answer_prefix;
  if (rendered.starts_with(without_gen)) {
    const std::string gen = rendered.substr(without_gen.size());
    const size_t nl = gen.find('\n');
    if (nl != std::string::npos) answer_prefix = gen.substr(nl + 1);
  }

  std::string feed_text;
  if (state_.n_past > 0 && !state_.failed && rendered.starts_with(fed_text_)) {
    feed_text = rendered.substr(fed_text_.size());
  } else {
    turn.re_prefilled = state_.n_past > 0 || state_.failed;
    state_.reset();
    tokens_.clear();
    fed_text_.clear();
    feed_text = rendered;
  }
  const std::vector<int32_t> feed = tokenizer_.encode(feed_text);
  if (feed.empty()) fail("the chat template rendered nothing new for this turn");
  const int ctx = transformer_.options().max_context;
  const int room = ctx - state_.n_past - int(feed.size());
  if (room < 1)
    fail(
        "the conversation ({} tokens) and this message ({} tokens) fill the context of {} tokens: /reset, or "
        "raise --ctx",
        state_.n_past, feed.size(), ctx);

  StreamDecoder decoder(tokenizer_);
  GenerateOptions gopt{.max_new_tokens = std::min(options.max_new_tokens, room),
                       .sampling = options.sampling,
                       .stop_ids = tokenizer_.eos_ids()};
  gopt.decode = [&decoder](int32_t id) { return decoder.push(id); };
  gopt.on_text = [&on_text](std::string_view piece) {
    if (on_text) on_text(piece);
    return true;
  };
  const int reused = state_.n_past;
  GenerateResult r;
  try {
    r = generate(transformer_, state_, feed, gopt, on_token);
  } catch (const Error&) {
    state_.reset();  // a pass may have failed midway: the next turn starts from scratch
    tokens_.clear();
    fed_text_.clear();
    throw;
  }
  std::string tail = decoder.flush();
  if (!tail.empty() && on_text) on_text(tail);
  r.text += tail;

  // Every generated token but the last was fed back.
  tokens_.insert(tokens_.end(), feed.begin(), feed.end());
  fed_text_ += feed_text;
  if (r.tokens.size() > 1) {
    const std::span<const int32_t> back(r.tokens.data(), r.tokens.size() - 1);
    tokens_.insert(tokens_.end(), back.begin(), back.end());
    fed_text_ += tokenizer_.decode_bytes(back);
  }
  FM_CHECK(int(tokens_.size()) == state_.n_past, "chat: {} tokens recorded, {} in the cache", tokens_.size(),
           state_.n_past);

  messages_.push_back({{"role", "user"}, {"content", user}});
  messages_.push_back(
      {{"role", "assistant"}, {"content", answer_prefix + r.text}, {"reasoning_content", ""}});

  turn.text = r.text;
  turn.finish = r.finish_reason;
  turn.fed = int(feed.size());
  turn.generated = int(r.tokens.size());
  ++stats_.turns;
  if (turn.re_prefilled)
    ++stats_.re_prefills;
  else if (reused > 0)
    ++stats_.prefix_reuses;
  stats_.fed_tokens += turn.fed;
  stats_.reused_tokens += reused;
  stats_.generated += turn.generated;
  stats_.last_fed = turn.fed;
  stats_.prefill_seconds += r.prefill_seconds;
  stats_.decode_seconds += r.decode_seconds;
  stats_.decode_steps += r.decode_steps;
  return turn;
}

void ChatSession::save(const std::filesystem::path& file) const {
  const ModelConfig& c = transformer_.config();
  Writer w;
  const jinja::Json meta = {{"model", model_name_},
                            {"fingerprint", fmt::format("{:016x}", fingerprint_)},
                            {"messages", conversation()}};
  const std::string json = meta.dump();
  w.pod(uint32_t(json.size()));
  w.out += json;
  w.pod(uint64_t(tokens_.size()));
  w.out.append(reinterpret_cast<const char*>(tokens_.data()), tokens_.size() * sizeof(int32_t));
  w.pod(uint64_t(fed_text_.size()));
  w.out += fed_text_;
  w.pod(uint32_t(c.num_layers));
  const size_t kv_row = size_t(c.num_kv_heads) * c.head_dim;
  for (int l = 0; l < c.num_layers; ++l) {
    const bool full = c.layer_kinds[size_t(l)] == LayerKind::FullAttention;
    w.pod(uint8_t(full ? 1 : 0));
    if (full) {
      w.floats(state_.k_cache[size_t(l)].data(), kv_row * size_t(state_.n_past));
      w.floats(state_.v_cache[size_t(l)].data(), kv_row * size_t(state_.n_past));
    } else {
      w.floats(state_.conv_state[size_t(l)].data(), state_.conv_state[size_t(l)].size());
      w.floats(state_.recurrent_state[size_t(l)].data(), state_.recurrent_state[size_t(l)].size());
    }
  }
  Writer h;
  h.out.append(kMagic, sizeof kMagic);
  h.pod(kVersion);
  h.pod(uint32_t(0));
  h.pod(fingerprint_);
  h.pod(uint64_t(w.out.size()));
  h.pod(crc32_of(w.out));
  h.pod(uint32_t(0));
  FM_CHECK(h.out.size() == kHeaderBytes, "session header is {} bytes", h.out.size());
  AtomicFile out(file);
  out.write(h.out.data(), h.out.size());
  out.write(w.out.data(), w.out.size());
  out.commit();
}

void ChatSession::load(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the session file", file);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: cannot read the session file", file);
  if (data.size() < kHeaderBytes || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
    fail("{}: not a flashmoe chat session file", file);
  Reader hr{data, sizeof kMagic, file};
  const auto version = hr.pod<uint32_t>("version");
  hr.pod<uint32_t>("header");
  const auto fingerprint = hr.pod<uint64_t>("fingerprint");
  const auto payload_size = hr.pod<uint64_t>("payload size");
  const auto crc = hr.pod<uint32_t>("checksum");
  if (version != kVersion)
    fail("{}: session file version {} (this flashmoe reads version {})", file, version, kVersion);
  if (payload_size != data.size() - kHeaderBytes)
    fail("{}: session file is truncated or corrupt ({} payload bytes, the header says {})", file,
         data.size() - kHeaderBytes, payload_size);
  const std::string payload = data.substr(kHeaderBytes);
  if (crc32_of(payload) != crc) fail("{}: session file is corrupt (checksum mismatch)", file);

  Reader r{payload, 0, file};
  const auto json_len = r.pod<uint32_t>("conversation");
  r.need(json_len, "conversation");
  jinja::Json meta;
  try {
    meta = jinja::Json::parse(payload.substr(r.pos, json_len));
  } catch (const std::exception& e) {
    fail("{}: session file's conversation is not valid JSON: {}", file, e.what());
  }
  r.pos += json_len;
  if (!meta.is_object() || !meta.contains("messages") || !meta["messages"].is_array())
    fail("{}: session file has no \"messages\" list", file);
  if (fingerprint != fingerprint_)
    fail(
        "{}: the session was saved with model '{}' (fingerprint {:016x}), not with this model '{}' ({:016x})",
        file, meta.value("model", std::string("?")), fingerprint, model_name_, fingerprint_);

  const ModelConfig& c = transformer_.config();
  const auto n_tokens = r.pod<uint64_t>("token count");
  const int ctx = transformer_.options().max_context;
  if (n_tokens > uint64_t(ctx))
    fail("{}: the session holds {} tokens, more than --ctx {}", file, n_tokens, ctx);
  std::vector<int32_t> tokens(static_cast<size_t>(n_tokens));
  r.need(n_tokens * sizeof(int32_t), "token ids");
  std::memcpy(tokens.data(), payload.data() + r.pos, n_tokens * sizeof(int32_t));
  r.pos += n_tokens * sizeof(int32_t);
  for (int32_t id : tokens)
    if (id < 0 || id >= c.vocab_size) fail("{}: session token id {} is out of range", file, id);
  const auto text_len = r.pod<uint64_t>("fed text");
  r.need(text_len, "fed text");
  std::string fed_text = payload.substr(r.pos, text_len);
  r.pos += text_len;
  const auto layers = r.pod<uint32_t>("layer count");
  if (layers != uint32_t(c.num_layers))
    fail("{}: session has {} layers, the model {}", file, layers, c.num_layers);
  SequenceState state = transformer_.new_sequence();
  state.n_past = int(n_tokens);
  const size_t kv_row = size_t(c.num_kv_heads) * c.head_dim;
  for (int l = 0; l < c.num_layers; ++l) {
    const bool full = c.layer_kinds[size_t(l)] == LayerKind::FullAttention;
    if (r.pod<uint8_t>("layer kind") != (full ? 1 : 0))
      fail("{}: layer {} kind differs from the model's", file, l);
    if (full) {
      r.floats(state.k_cache[size_t(l)], kv_row * n_tokens, "K cache");
      r.floats(state.v_cache[size_t(l)], kv_row * n_tokens, "V cache");
    } else {
      r.floats(state.conv_state[size_t(l)], state.conv_state[size_t(l)].size(), "conv state");
      r.floats(state.recurrent_state[size_t(l)], state.recurrent_state[size_t(l)].size(), "recurrent state");
    }
  }
  if (r.pos != payload.size())
    fail("{}: session file has {} unexpected trailing bytes", file, payload.size() - r.pos);

  jinja::Json messages = jinja::Json::array();
  std::string system;
  for (const auto& m : meta["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      fail("{}: session message without a \"role\"", file);
    if (m["role"] == "system" && messages.empty() && system.empty() &&
        m.value("content", jinja::Json()).is_string())
      system = m["content"].get<std::string>();
    else
      messages.push_back(m);
  }
  state_ = std::move(state);
  tokens_ = std::move(tokens);
  fed_text_ = std::move(fed_text);
  messages_ = std::move(messages);
  system_ = system;
}

}  // namespace fm
