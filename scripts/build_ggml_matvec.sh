#!/usr/bin/env bash
# Builds tools/ggml_matvec (llama.cpp's matvec timed through ggml's CPU backend) against the ggml that
# the llama-cpp-python source package vendors, with ggml's default options (native CPU tuning, the
# repacking buffer, OpenMP where the compiler has it), as `pip install llama-cpp-python` builds it.
#   scripts/build_ggml_matvec.sh SDIST.tar.gz|LLAMA_CPP_SOURCE_DIR [BUILD_DIR]
# Prints the path of the built binary. About a minute on 16 cores, several on 2.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?"usage: $0 SDIST.tar.gz|LLAMA_CPP_SOURCE_DIR [BUILD_DIR]"}
work=$(mkdir -p "${2:-build/ggml-matvec}" && cd "${2:-build/ggml-matvec}" && pwd)
if [[ -f "$src" ]]; then
  if [[ ! -d "$work/src" ]]; then
    mkdir -p "$work/src.tmp"
    tar xzf "$src" -C "$work/src.tmp" --wildcards '*/ggml/*'
    mv "$work/src.tmp" "$work/src"
  fi
  src=$(dirname "$(ls -d "$work"/src/*/vendor/llama.cpp/ggml "$work"/src/*/ggml 2>/dev/null | head -1)")
fi
[[ -f "$src/ggml/CMakeLists.txt" ]] || { echo "no ggml/CMakeLists.txt under $src" >&2; exit 1; }
# ggml as a subproject (its standalone mode wants a ggml.pc.in the source package leaves out).
mkdir -p "$work/top"
printf 'cmake_minimum_required(VERSION 3.14)\nproject(ggml_matvec C CXX)\nadd_subdirectory("%s" ggml)\n' \
  "$src/ggml" >"$work/top/CMakeLists.txt"
cmake -S "$work/top" -B "$work/ggml" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >"$work/cmake.log" 2>&1
cmake --build "$work/ggml" -j"$(nproc)" >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; exit 1; }
lib=$(dirname "$(find "$work/ggml" -name 'libggml-cpu.so' | head -1)")
g++ -std=c++17 -O2 "$root/tools/ggml_matvec.cpp" -I"$src/ggml/include" -L"$lib" -lggml -lggml-base -lggml-cpu \
  -Wl,-rpath,"$lib" -o "$work/ggml_matvec"
echo "$work/ggml_matvec"
