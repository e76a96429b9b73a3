// A read-only view of a stored tensor: its bytes live in a memory-mapped model file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/dtype.h"

namespace fm {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major, outermost first (PyTorch / safetensors order)
  const std::byte* data = nullptr;
  uint64_t nbytes = 0;
  std::string file;  // the file it lives in, for messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int rank() const { return int(shape.size()); }
};

// "[64, 32]"
std::string shape_str(const std::vector<int64_t>& shape);

// Where a model's tensors come from (a safetensors checkpoint, a GGUF file), as the weight binder
// sees it: lookup by name, and a name for messages.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const TensorView* find(std::string_view name) const = 0;
  virtual const std::string& source() const = 0;
  // The file and byte offset a tensor's data pointer lies at, for readers that go to the file
  // itself (the expert store) rather than through the mapping; false if `p` is in none of them.
  virtual bool locate(const std::byte* p, std::string* path, uint64_t* offset) const = 0;
};

}  // namespace fm
