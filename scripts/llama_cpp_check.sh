#!/usr/bin/env bash
# Builds llama.cpp from the llama-cpp-python source package and checks that it loads GGUF files made
# by `flashmoe convert` from the fixtures and computes the same logits (tools/llama_cpp_check.py).
# Needs: the sdist (pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36), gguf-py and
# numpy importable, scikit-build-core + cmake + ninja for the build. Slow on 2 cores (~30 min); minutes
# on 16.
#   scripts/llama_cpp_check.sh SDIST.tar.gz [BUILD_DIR]
set -euo pipefail
sdist=$1
work=${2:-build/llama-cpp-check}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work/site" "$work/src" "$work/ggufs"
if [ ! -d "$work/site/llama_cpp/lib" ]; then
  CMAKE_ARGS="-DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    python3 -m pip install --no-deps --no-build-isolation --target "$work/site" "$sdist" >"$work/build.log" 2>&1
fi
tar xzf "$sdist" -C "$work/src" --wildcards '*/include/*'
llama=$(ls -d "$work"/src/*/vendor/llama.cpp)
lib=$(cd "$work/site/llama_cpp/lib" && pwd)
g++ -std=c++17 -O2 "$root/tools/llama_logits.cpp" -I"$llama/include" -I"$llama/ggml/include" -L"$lib" -lllama \
  -lggml -lggml-base -Wl,-rpath,"$lib" -o "$work/llama_logits"
status=0
# The fixtures llama.cpp's graphs can express (see tools/make_fixtures.py).
for fixture in qwen35moe-dkdv-bf16 qwen3moe-norm-bf16; do
  dir="$root/tests/fixtures/$fixture"
  ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$dir/ref.json'))['prompt_ids'])))")
  "$root/build/flashmoe" convert "$dir" -o "$work/ggufs/$fixture.gguf" --type F32 2>/dev/null
  "$root/build/flashmoe" run -m "$work/ggufs/$fixture.gguf" --prompt-ids "$ids" -n 1 \
    --dump-logits "$work/ggufs/$fixture.npy" >/dev/null 2>&1
  echo "== $fixture (F32 GGUF)"
  # llama.cpp keeps its KV cache in f16 by default, so its own logits move by a few 1e-3.
  python3 "$root/tools/llama_cpp_check.py" --llama-logits "$work/llama_logits" --gguf "$work/ggufs/$fixture.gguf" \
    --fixture "$dir" --ours "$work/ggufs/$fixture.npy" --tolerance 1e-2 || status=1
done
exit $status
