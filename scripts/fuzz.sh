#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang++ (ASan + UBSan) and runs each for SECONDS.
#   scripts/fuzz.sh [SECONDS [BUILD_DIR]]      defaults: 60, <repo>/build-fuzz
# Seeds come from tests/fixtures (the .gguf and .safetensors files) plus a tiny safetensors file made
# here; what the fuzzers find interesting accumulates in BUILD_DIR/corpus across runs. A finding stops
# the run with a non-zero exit and leaves the input in BUILD_DIR/artifacts/.
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${2:-$root/build-fuzz}
jobs=$(nproc 2>/dev/null || echo 2)

mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLASHMOE_FUZZ=ON -DBUILD_TESTING=OFF >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$jobs" --target fuzz_gguf fuzz_safetensors

# Inputs longer than this are cut by libFuzzer; it holds every fixture's safetensors header (< 20 KiB).
max_len=32768
seeds=$build/seeds
rm -rf "$seeds"
mkdir -p "$seeds/gguf" "$seeds/safetensors" "$build/corpus/gguf" "$build/corpus/safetensors" "$build/artifacts"
i=0
while IFS= read -r -d '' f; do
  i=$((i + 1))
  case "$f" in
    *.gguf) cp "$f" "$seeds/gguf/$i.gguf" ;;
    *.safetensors) head -c "$max_len" "$f" >"$seeds/safetensors/$i.safetensors" ;;
  esac
done < <(find "$root/tests/fixtures" -type f \( -name '*.gguf' -o -name '*.safetensors' \) -print0)

# A complete small safetensors file, so mutations start from one whose tensors all check out.
header='{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}'
n=${#header}
{
  printf "$(printf '\\x%02x' $((n & 255)) $((n >> 8 & 255)) 0 0 0 0 0 0)"
  printf '%s' "$header"
  head -c 16 /dev/zero
} >"$seeds/safetensors/small.safetensors"

for kind in gguf safetensors; do
  echo "== fuzz_$kind for ${seconds}s"
  log=$build/fuzz_$kind.log
  status=0
  "$build/fuzz/fuzz_$kind" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$kind-" "$build/corpus/$kind" "$seeds/$kind" \
    >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    echo "fuzz_$kind: finding (exit $status); input saved under $build/artifacts/, full log $log" >&2
    exit "$status"
  fi
  grep -E '^(INFO: seed corpus|Done |stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' "$log"
done
