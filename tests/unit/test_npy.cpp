#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "util/error.h"
#include "util/npy.h"

namespace fm {
namespace {

TEST(Npy, RoundTripAndNoPartialFile) {
  const auto dir = std::filesystem::temp_directory_path() / ("fm_npy_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, 6.0f};
  write_npy(dir / "a.npy", v.data(), {2, 3});
  const NpyArray a = read_npy(dir / "a.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.data, v);
  // numpy pads the header so the data starts at a multiple of 64 bytes.
  EXPECT_EQ((std::filesystem::file_size(dir / "a.npy") - v.size() * 4) % 64, 0u);
  // A write into a missing folder fails cleanly and leaves nothing behind.
  EXPECT_THROW(write_npy(dir / "missing" / "b.npy", v.data(), {6}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "missing"));
  // Truncated data is an error, not garbage.
  std::filesystem::resize_file(dir / "a.npy", std::filesystem::file_size(dir / "a.npy") - 4);
  EXPECT_THROW(read_npy(dir / "a.npy"), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fm
