#include "tune/config_file.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fm::tune {

namespace {

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\r')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return std::string(s.substr(b, e - b));
}

}  // namespace

std::vector<ConfigEntry> read_config_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open the configuration file", path.string());
  std::vector<ConfigEntry> entries;
  std::string line;
  int number = 0;
  while (std::getline(f, line)) {
    ++number;
    const std::string text = trim(line);
    if (text.empty() || text[0] == '#') continue;
    const size_t eq = text.find('=');
    if (eq == std::string::npos) fail("{}:{}: '{}' is not 'key = value'", path.string(), number, text);
    ConfigEntry e{.key = trim(std::string_view(text).substr(0, eq)),
                  .value = trim(std::string_view(text).substr(eq + 1)),
                  .line = number};
    if (e.key.empty()) fail("{}:{}: no key before '='", path.string(), number);
    if (e.value.size() >= 2 && e.value.front() == '"' && e.value.back() == '"')
      e.value = e.value.substr(1, e.value.size() - 2);
    for (const ConfigEntry& prev : entries)
      if (prev.key == e.key)
        fail("{}:{}: key '{}' given twice (first on line {})", path.string(), number, e.key, prev.line);
    entries.push_back(std::move(e));
  }
  if (f.bad()) fail("{}: read failed", path.string());
  return entries;
}

void write_config_file(const std::filesystem::path& path, std::string_view comment,
                       const KeyValues& entries) {
  std::string text;
  std::istringstream lines{std::string(comment)};
  for (std::string l; std::getline(lines, l);) text += l.empty() ? "#\n" : "# " + l + "\n";
  for (const auto& [k, v] : entries) {
    const bool quote = v.empty() || v.front() == ' ' || v.back() == ' ' || v.front() == '"';
    text += quote ? fmt::format("{} = \"{}\"\n", k, v) : fmt::format("{} = {}\n", k, v);
  }
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace fm::tune
