#!/usr/bin/env bash
# Checks that llama.cpp loads GGUF files made by `flashmoe convert` from the fixtures and computes the
# same logits (tools/llama_cpp_check.py), with llama.cpp built from the llama-cpp-python source
# package, or as an installed llama-cpp-python carries it (its libllama.so / libggml*.so and headers).
# Needs gguf-py and numpy importable; for an sdist, scikit-build-core + cmake + ninja for the build:
# slow on 2 cores (~30 min), minutes on 16.
#   scripts/llama_cpp_check.sh SDIST.tar.gz [BUILD_DIR] [FLASHMOE]
#   scripts/llama_cpp_check.sh --installed BUILD_DIR [FLASHMOE]     (the CTest test llama_cpp_check)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--installed" ]; then
  work=$2
  flashmoe=${3:-$root/build/flashmoe}
  mkdir -p "$work/ggufs"
  # The installed package: llama_cpp/lib/*.so, and the headers pip put in site-packages/include.
  pkg=$(python3 -c 'import llama_cpp, os; print(os.path.dirname(os.path.abspath(llama_cpp.__file__)))')
  lib=$pkg/lib
  inc=$(dirname "$pkg")/include
  for f in "$lib/libllama.so" "$lib/libggml.so" "$lib/libggml-base.so" "$inc/llama.h" "$inc/ggml.h"; do
    [ -e "$f" ] || { echo "llama_cpp_check: $f not found (llama-cpp-python installed without it)" >&2; exit 1; }
  done
  includes=(-I"$inc")
else
  sdist=$1
  work=${2:-build/llama-cpp-check}
  flashmoe=${3:-$root/build/flashmoe}
  mkdir -p "$work/site" "$work/src" "$work/ggufs"
  if [ ! -d "$work/site/llama_cpp/lib" ]; then
    CMAKE_ARGS="-DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      python3 -m pip install --no-deps --no-build-isolation --target "$work/site" "$sdist" >"$work/build.log" 2>&1
  fi
  tar xzf "$sdist" -C "$work/src" --wildcards '*/include/*'
  llama=$(ls -d "$work"/src/*/vendor/llama.cpp)
  lib=$(cd "$work/site/llama_cpp/lib" && pwd)
  includes=(-I"$llama/include" -I"$llama/ggml/include")
fi
g++ -std=c++17 -O2 "$root/tools/llama_logits.cpp" "${includes[@]}" -L"$lib" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$lib" -o "$work/llama_logits"
status=0
# The fixtures llama.cpp's graphs can express (see tools/make_fixtures.py), and an MLX checkpoint of
# one of them (its reference logits are mlx_lm's, see tools/make_mlx_fixtures.py).
for fixture in qwen35moe-dkdv-bf16 qwen3moe-norm-bf16 mlx/qwen3moe-norm-q4g64; do
  dir="$root/tests/fixtures/$fixture"
  ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$dir/ref.json'))['prompt_ids'])))")
  out="$work/ggufs/${fixture//\//_}"
  "$flashmoe" convert "$dir" -o "$out.gguf" --type F32 2>/dev/null
  "$flashmoe" run -m "$out.gguf" --prompt-ids "$ids" -n 1 --dump-logits "$out.npy" >/dev/null 2>&1
  echo "== $fixture (F32 GGUF)"
  # llama.cpp keeps its KV cache in f16 by default, so its own logits move by a few 1e-3 (up to 9.3e-3
  # measured on the MLX fixture, whose logits are larger).
  tolerance=1e-2
  [[ $fixture == mlx/* ]] && tolerance=2e-2
  python3 "$root/tools/llama_cpp_check.py" --llama-logits "$work/llama_logits" --gguf "$out.gguf" \
    --fixture "$dir" --ours "$out.npy" --tolerance $tolerance || status=1
done
exit $status
