// libFuzzer target for the GGUF reader and writer. Any input must either parse or throw fm::Error; a
// crash, a sanitizer report, an FM_CHECK abort or any other exception is a finding. Parsing runs on
// libFuzzer's own buffer (GgufFile::parse), so ASan sees a read even one byte past the input.
// Whatever parses is then written back with GgufWriter and read again: it must come back the same.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "util/error.h"

namespace {

template <class F>
void ignore_errors(F&& f) {
  try {
    f();
  } catch (const fm::Error&) {
  }
}

// Calls every typed accessor on every key: each must return or throw fm::Error, whatever the value.
void read_all_metadata(const fm::GgufFile& f) {
  for (const fm::GgufKv& kv : f.metadata()) {
    (void)fm::gguf_value_type_str(kv.value);
    ignore_errors([&] { (void)f.get_u64(kv.key); });
    ignore_errors([&] { (void)f.get_i64(kv.key); });
    ignore_errors([&] { (void)f.get_f64(kv.key); });
    ignore_errors([&] { (void)f.get_bool(kv.key); });
    ignore_errors([&] { (void)f.get_string(kv.key); });
    ignore_errors([&] { (void)f.get_int_array(kv.key); });
    ignore_errors([&] { (void)f.get_string_array(kv.key); });
    ignore_errors([&] { (void)f.get_f32_array(kv.key); });
  }
}

// GgufValue's == with floats compared bit for bit, so a NaN equals itself.
template <class T>
bool same(const T& a, const T& b) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
  } else if constexpr (std::is_same_v<T, fm::GgufArray>) {
    if (a.items.index() != b.items.index()) return false;
    return std::visit(
        [&](const auto& x) {
          const auto& y = std::get<std::decay_t<decltype(x)>>(b.items);
          if (x.size() != y.size()) return false;
          for (size_t i = 0; i < x.size(); ++i)
            if (!same<typename std::decay_t<decltype(x)>::value_type>(x[i], y[i])) return false;
          return true;
        },
        a.items);
  } else if constexpr (std::is_same_v<T, fm::GgufValue>) {
    if (a.data.index() != b.data.index()) return false;
    return std::visit([&](const auto& x) { return same(x, std::get<std::decay_t<decltype(x)>>(b.data)); },
                      a.data);
  } else {
    return a == b;
  }
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// What the writer writes of a key: general.alignment goes through its constructor, and arrays of
// arrays are refused by design (llama.cpp cannot read them).
bool rewritable(const fm::GgufKv& kv) {
  const auto* a = std::get_if<fm::GgufArray>(&kv.value.data);
  return kv.key != "general.alignment" && !(a && a->elem_type() == fm::GgufType::ARRAY);
}

std::vector<const fm::GgufKv*> rewritable_metadata(const fm::GgufFile& f) {
  std::vector<const fm::GgufKv*> out;
  for (const fm::GgufKv& kv : f.metadata())
    if (rewritable(kv)) out.push_back(&kv);
  return out;
}

void rewrite_and_compare(const fm::GgufFile& f) {
  // Skip names llama.cpp cannot read (refused by the writer), and alignments whose header padding alone
  // would be gigabytes.
  if (f.alignment() > 65536) return;
  for (const fm::GgufTensor& t : f.tensors())
    if (t.name().size() >= 64) return;

  static const std::filesystem::path path = [] {
    const std::filesystem::path shm = "/dev/shm";
    return (std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path()) /
           ("fuzz_gguf_" + std::to_string(::getpid()) + ".gguf");
  }();
  const std::vector<const fm::GgufKv*> kvs = rewritable_metadata(f);
  {
    fm::GgufWriter w(path, f.alignment());
    for (const fm::GgufKv* kv : kvs) w.set(kv->key, kv->value);
    for (const fm::GgufTensor& t : f.tensors()) w.declare(t.name(), t.view.dtype, t.view.shape);
    w.begin_data();
    for (const fm::GgufTensor& t : f.tensors()) w.append(t.view.data, t.view.nbytes);
    w.finish();
  }
  const fm::GgufFile g = fm::GgufFile::open(path);
  check(g.alignment() == f.alignment());
  // The writer puts a custom general.alignment first; everything else keeps its order.
  const std::vector<const fm::GgufKv*> back = rewritable_metadata(g);
  check(back.size() == kvs.size() && g.metadata().size() == kvs.size() + (f.alignment() != 32));
  for (size_t i = 0; i < kvs.size(); ++i)
    check(kvs[i]->key == back[i]->key && same(kvs[i]->value, back[i]->value));
  check(f.tensors().size() == g.tensors().size());
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const fm::GgufTensor &a = f.tensors()[i], &b = g.tensors()[i];
    check(a.name() == b.name() && a.ne == b.ne && a.ggml_type == b.ggml_type &&
          a.view.shape == b.view.shape && a.view.nbytes == b.view.nbytes);
    check(a.view.nbytes == 0 || std::memcmp(a.view.data, b.view.data, a.view.nbytes) == 0);
  }
  std::filesystem::remove(path);  // g's mapping outlives the name
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const fm::GgufFile f = fm::GgufFile::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz.gguf");
    read_all_metadata(f);
    // Touch every byte the parser vouched for, so a view reaching outside the input is reported.
    uint8_t sum = 0;
    for (const fm::GgufTensor& t : f.tensors()) {
      for (uint64_t i = 0; i < t.view.nbytes; ++i) sum = uint8_t(sum + uint8_t(t.view.data[i]));
      check(&f.get_tensor(t.name()) == &t);
    }
    asm volatile("" : : "r"(sum));  // keep the reads
    rewrite_and_compare(f);
  } catch (const fm::Error&) {
  }
  return 0;
}
