// The command-line tool as a user runs it: a real process, its stdout, stderr and exit status.
// Bad input must give one line naming the file and tensor or key, exit status 1 (not a crash),
// and no output file written as if complete.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fixture_util.h"

namespace fm {
namespace {

namespace fs = std::filesystem;

struct Result {
  int status = -1;  // exit status; -1 if it died from a signal
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fm_cli_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::string& args) {
    const fs::path out = dir_ / "stdout", err = dir_ / "stderr";
    const std::string cmd = std::string(FM_CLI) + " " + args + " >" + out.string() + " 2>" + err.string();
    const int raw = std::system(cmd.c_str());
    Result r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  // A writable copy of a fixture model.
  fs::path copy_model(const std::string& name) {
    const fs::path dst = dir_ / name;
    fs::copy(std::string(FM_FIXTURES) + "/" + name, dst, fs::copy_options::recursive);
    return dst;
  }

  // Expects a clean failure: status 1, a single line starting "flashmoe: error:" containing each
  // of `needles`.
  void expect_error(const Result& r, std::initializer_list<std::string> needles) {
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(r.err.rfind("flashmoe: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const std::string& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' not in: " << r.err;
  }

  fs::path dir_;
};

std::string join_ids(const std::vector<int32_t>& ids, const char* sep) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? sep : "") + std::to_string(ids[i]);
  return s;
}

TEST_F(Cli, RunMatchesReferenceAndReports) {
  const test::Reference ref = test::load_reference("qwen35moe-vl-bf16");
  const fs::path npy = dir_ / "logits.npy";
  const Result r = run("run -m " + ref.dir + " --prompt-ids " + join_ids(ref.prompt, ",") + " -n " +
                       std::to_string(ref.greedy.size()) + " --print-ids -t 2 --dump-logits " + npy.string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, join_ids(ref.greedy, " ") + "\n");
  for (const char* field : {"load", "prefill", "tok/s", "decode", "peak RSS"})
    EXPECT_NE(r.err.find(field), std::string::npos) << r.err;
  const NpyArray logits = read_npy(npy);
  ASSERT_EQ(logits.shape, ref.logits.shape);
  EXPECT_LE(test::max_abs_diff(logits.data.data(), ref.logits.data.data(), logits.data.size()), 1e-3);
}

TEST_F(Cli, HelpOnEveryCommand) {
  for (const char* cmd : {"--help", "run --help", "bench --help", "synth --help"}) {
    const Result r = run(cmd);
    EXPECT_EQ(r.status, 0) << cmd;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << cmd << ": " << r.out;
  }
}

TEST_F(Cli, TextPromptNeedsTokenizer) {
  expect_error(run("run -m " + std::string(FM_FIXTURES) + "/qwen3moe-f16 -p hello"), {"tokenizer", "--prompt-ids"});
}

TEST_F(Cli, MissingModel) {
  expect_error(run("run -m " + (dir_ / "nowhere").string() + " --prompt-ids 1"), {(dir_ / "nowhere").string()});
}

TEST_F(Cli, TruncatedSafetensors) {
  const fs::path m = copy_model("qwen3moe-f16");
  const fs::path st = m / "model.safetensors";
  fs::resize_file(st, fs::file_size(st) / 2);
  const fs::path npy = dir_ / "out.npy";
  expect_error(run("run -m " + m.string() + " --prompt-ids 1,2 --dump-logits " + npy.string()), {st.string()});
  EXPECT_FALSE(fs::exists(npy));
}

// Rewrites the JSON header of a safetensors file in place (same data).
void edit_header(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = slurp(file);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  ASSERT_LE(text.size(), len);
  text.append(len - text.size(), ' ');
  bytes.replace(8, len, text);
  std::ofstream(file, std::ios::binary) << bytes;
}

TEST_F(Cli, HeaderOffsetsPastTheEnd) {
  const fs::path m = copy_model("qwen3moe-f16");
  const std::string name = "model.layers.1.mlp.gate.weight";
  edit_header(m / "model.safetensors", [&](nlohmann::json& h) {
    h[name]["data_offsets"][1] = h[name]["data_offsets"][1].get<uint64_t>() + 100000000;
  });
  expect_error(run("run -m " + m.string() + " --prompt-ids 1"), {"model.safetensors", name});
}

TEST_F(Cli, ShapeDisagreesWithConfig) {
  const fs::path m = copy_model("qwen3moe-f16");
  const std::string name = "model.layers.0.mlp.gate.weight";  // [8, 64] f16: same bytes as [4, 128]
  edit_header(m / "model.safetensors", [&](nlohmann::json& h) { h[name]["shape"] = {4, 128}; });
  expect_error(run("run -m " + m.string() + " --prompt-ids 1"), {"model.safetensors", name, "[4, 128]", "[8, 64]"});
}

TEST_F(Cli, DtypeDisagreesWithData) {
  const fs::path m = copy_model("qwen3moe-f16");
  const std::string name = "model.layers.0.mlp.gate.weight";
  edit_header(m / "model.safetensors", [&](nlohmann::json& h) { h[name]["dtype"] = "F32"; });
  expect_error(run("run -m " + m.string() + " --prompt-ids 1"), {"model.safetensors", name});
}

void edit_config(const fs::path& model, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json c = nlohmann::json::parse(slurp(model / "config.json"));
  edit(c);
  std::ofstream(model / "config.json") << c.dump(1);
}

TEST_F(Cli, UnknownArchitecture) {
  const fs::path m = copy_model("qwen3moe-f16");
  edit_config(m, [](nlohmann::json& c) { c["model_type"] = "llama"; });
  expect_error(run("run -m " + m.string() + " --prompt-ids 1"), {"config.json", "llama"});
}

TEST_F(Cli, MissingConfigKey) {
  const fs::path m = copy_model("qwen35moe-vl-bf16");
  edit_config(m, [](nlohmann::json& c) { c["text_config"].erase("linear_num_value_heads"); });
  expect_error(run("run -m " + m.string() + " --prompt-ids 1"), {"config.json", "linear_num_value_heads"});
}

TEST_F(Cli, TokenIdOutOfRange) {
  const fs::path npy = dir_ / "out.npy";
  expect_error(run("run -m " + std::string(FM_FIXTURES) + "/qwen3moe-f16 --prompt-ids 1,2,512 --dump-logits " +
                   npy.string()),
               {"512", "out of range"});
  EXPECT_FALSE(fs::exists(npy));
  expect_error(run("run -m " + std::string(FM_FIXTURES) + "/qwen3moe-f16 --prompt-ids 1,x"), {"'x'"});
}

TEST_F(Cli, SamplingIsReproducibleWithASeed) {
  const std::string base = "run -m " + std::string(FM_FIXTURES) + "/qwen3moe-f16 --prompt-ids 5,6,7 -n 12 --temp 1.5 ";
  const Result a = run(base + "--seed 42"), b = run(base + "--seed 42"), c = run(base + "--seed 43 --top-p 0.9");
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  expect_error(run(base + "--top-p 0"), {"--top-p"});
}

TEST_F(Cli, SynthWritesALoadableModel) {
  // Full shapes are gigabytes; one layer of the smallest preset is still 1.7 GB, so this checks the
  // refusal of a bad preset and leaves the real sizes to the benchmark.
  expect_error(run("synth -o " + (dir_ / "s").string() + " --like qwen9"), {"qwen9", "qwen3.5-35b-a3b"});
}

}  // namespace
}  // namespace fm

namespace fm {
namespace {

TEST_F(Cli, BenchReportsSpeedAgainstTheFloor) {
  const fs::path json = dir_ / "bench.json";
  const Result r = run("bench -m " + std::string(FM_FIXTURES) + "/qwen35moe-vl-bf16 -n 4 --prompt-len 8 -t 2 --json " +
                       json.string());
  ASSERT_EQ(r.status, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  EXPECT_EQ(j, nlohmann::json::parse(r.out));  // the file holds what stdout shows
  for (const char* key : {"decode_tok_s", "prefill_tok_s", "bytes_read_per_token", "read_bandwidth_bytes_s",
                          "memory_floor_tok_s", "fraction_of_floor", "peak_rss_bytes"})
    EXPECT_GT(j.at(key).get<double>(), 0.0) << key;
  // Bytes per decoded token of this bf16 model (hidden 64, vocab 512, 3 DeltaNet + 1 attention layer,
  // top-2 of 8 experts of 32, shared expert of 48): embedding row 128 + LM head 65536
  // + 3 x DeltaNet (qkv 20480 + z 12288 + b 512 + a 512 + out 12288) + attention (q 32768 + k 8192
  // + v 8192 + o 16384) + 4 x MoE (router 1024 + 2 experts x 12288 + shared 18432 + its gate 128).
  const double bytes = j.at("bytes_read_per_token").get<double>();
  EXPECT_EQ(bytes, 128 + 65536 + 3 * 46080 + 65536 + 4 * 44160);
  EXPECT_NEAR(j.at("memory_floor_tok_s").get<double>(), j.at("read_bandwidth_bytes_s").get<double>() / bytes, 1e-6 * bytes);
}

}  // namespace
}  // namespace fm

namespace fm {
namespace {

TEST_F(Cli, MoeTopKOverridesExpertsPerToken) {
  const std::string base = "run -m " + std::string(FM_FIXTURES) + "/qwen3moe-f16 --prompt-ids 5,6,7,8,9 -n 8 ";
  const Result normal = run(base), same = run(base + "--moe-top-k 3"), fewer = run(base + "--moe-top-k 1");
  ASSERT_EQ(normal.status, 0) << normal.err;
  EXPECT_EQ(normal.out, same.out);  // the model's own top-k is 3
  ASSERT_EQ(fewer.status, 0) << fewer.err;
  EXPECT_NE(normal.out, fewer.out);
  expect_error(run(base + "--moe-top-k 9"), {"--moe-top-k 9", "8 experts"});
}

}  // namespace
}  // namespace fm
