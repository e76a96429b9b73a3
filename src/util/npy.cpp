#include "util/npy.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fm {

void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t count = 1;
  for (int64_t d : shape) {
    dims += fmt::format("{}, ", d);
    count *= d;
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  // magic (6) + version (2) + header length (2) + header + '\n', padded to a multiple of 64.
  const size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');

  AtomicFile out(path);
  const uint16_t header_len = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(&header_len, 2);
  out.write(header.data(), header.size());
  out.write(data, uint64_t(count) * sizeof(float));
  out.commit();
}

NpyArray read_npy(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  char magic[8];
  uint16_t header_len = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0 || magic[6] != 1 ||
      !in.read(reinterpret_cast<char*>(&header_len), 2))
    fail("{}: not a version 1.0 .npy file", path.string());
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) fail("{}: truncated header", path.string());
  if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    fail("{}: only little-endian float32 C-order arrays are supported", path.string());
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('shape': \(([0-9, ]*)\))")))
    fail("{}: no shape in header", path.string());
  NpyArray a;
  int64_t count = 1;
  const std::string dims = m[1];
  const std::regex number("[0-9]+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    a.shape.push_back(std::stoll(it->str()));
    count *= a.shape.back();
  }
  a.data.resize(size_t(count));
  if (!in.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(count * 4)))
    fail("{}: truncated data", path.string());
  return a;
}

}  // namespace fm
