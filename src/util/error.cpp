#include "util/error.h"

#include <cstdio>
#include <cstdlib>

namespace fm {

void check_failed(const char* file, int line, const char* condition, const std::string& message) {
  std::fprintf(stderr, "flashmoe: internal error at %s:%d: check '%s' failed: %s\n", file, line, condition,
               message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace fm
