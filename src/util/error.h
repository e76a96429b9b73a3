// Errors. Two kinds, kept apart:
//  - fm::Error: bad user input or failed I/O (a file, a field, a request at fault). Thrown where it is
//    found, with a message that names the file and tensor or key, and turned into one line and a
//    non-zero exit at the CLI / server boundary. RAII makes the unwinding safe.
//  - FM_CHECK: a broken invariant of our own code. Aborts with file:line and context.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace fm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

[[noreturn]] void check_failed(const char* file, int line, const char* condition, const std::string& message);

}  // namespace fm

#define FM_CHECK(cond, ...)                                                              \
  do {                                                                                   \
    if (!(cond)) ::fm::check_failed(__FILE__, __LINE__, #cond, ::fmt::format(__VA_ARGS__)); \
  } while (0)
