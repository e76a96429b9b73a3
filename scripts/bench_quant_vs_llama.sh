#!/usr/bin/env bash
# Decode matvec (4096 x 14336 weights, one token) per weight type: flashmoe's bench_quant next to
# llama.cpp's `test-backend-ops perf -o MUL_MAT -b CPU` on the same shape, on 1 and 2 threads, as a
# markdown table of weights/s and their ratio (ours / llama.cpp; above 1 is faster).
#
# usage: scripts/bench_quant_vs_llama.sh [BENCH_QUANT] [TEST_BACKEND_OPS]
#   BENCH_QUANT       default build/bench/bench_quant
#   TEST_BACKEND_OPS  default: $LLAMA_BUILD/bin/test-backend-ops, LLAMA_BUILD from the first line of
#                     /work/peers/LLAMA_BUILD_DONE ("build_dir: PATH") when unset
# TYPES (env) restricts the types, e.g. TYPES="Q4_K Q8_0"; REPEATS (env, default 2) runs each pair
# that many times and keeps each side's best, which filters out the moments another process took
# the core.
#
# test-backend-ops uses half of std::thread::hardware_concurrency() threads and has no option for it;
# the script runs it with a preloaded get_nprocs() that reports 2 * THREADS (libstdc++ asks glibc's
# get_nprocs for hardware_concurrency), so both programs run the same number of threads.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=${1:-$root/build/bench/bench_quant}
if [[ -z "${LLAMA_BUILD:-}" && -f /work/peers/LLAMA_BUILD_DONE ]]; then
  LLAMA_BUILD=$(sed -n 's/^build_dir: //p' /work/peers/LLAMA_BUILD_DONE | head -1)
fi
tbo=${2:-${LLAMA_BUILD:-}/bin/test-backend-ops}
[[ -x "$bench" ]] || { echo "no bench_quant at $bench (build the bench_quant target)" >&2; exit 1; }
[[ -x "$tbo" ]] || { echo "no test-backend-ops at $tbo (set LLAMA_BUILD or pass its path)" >&2; exit 1; }
types=${TYPES:-"Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS MXFP4 BF16 F16"}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/nprocs.c" <<'EOF'
#include <stdlib.h>
int get_nprocs(void) { return 2 * atoi(getenv("FM_LLAMA_THREADS")); }
int get_nprocs_conf(void) { return get_nprocs(); }
EOF
cc -shared -fPIC -O2 -o "$work/nprocs.so" "$work/nprocs.c"

# Each (type, threads) pair runs both programs back to back, so a change of machine load between
# types does not favour either side.
for t in $types; do
  lt=$(echo "$t" | sed 's/.*/\L&/; s/_k$/_K/')  # ggml's spelling: q4_K, iq2_xxs, bf16
  for threads in $(for r in $(seq "${REPEATS:-2}"); do echo 1 2; done); do
    LD_PRELOAD="$work/nprocs.so" FM_LLAMA_THREADS=$threads "$tbo" perf -o MUL_MAT -b CPU \
      -p "^type_a=$lt,type_b=f32,m=4096,n=1,k=14336," 2>/dev/null |
      sed -n "s/.*MUL_MAT(type_a=[a-zA-Z0-9_]*,.*: *[0-9]* runs - *\([0-9.]*\) us\/run.*/$t $threads \1/p" \
        >>"$work/llama.txt" || true
    "$bench" --benchmark_filter="^BM_matvec_$t/threads:$threads/" --benchmark_format=csv 2>/dev/null |
      grep "^\"BM_matvec" >>"$work/ours.csv" || true
  done
done

python3 - "$work/llama.txt" "$work/ours.csv" "$types" <<'EOF'
import csv, sys
llama_path, ours_path, types = sys.argv[1], sys.argv[2], sys.argv[3].split()
weights = 4096 * 14336
llama = {}
for line in open(llama_path):
    t, threads, us = line.split()
    key = (t, int(threads))
    llama[key] = max(llama.get(key, 0.0), weights / (float(us) * 1e-6))
ours = {}
# Google Benchmark's CSV columns: name,iterations,real_time,cpu_time,time_unit,bytes_per_second,
# items_per_second,label,...
for r in csv.reader(open(ours_path)):
    name = r[0]  # BM_matvec_Q4_K/threads:1/min_warmup_time:0.200/real_time
    t = name.split("/")[0][len("BM_matvec_"):]
    threads = int(name.split("threads:")[1].split("/")[0])
    ours[(t, threads)] = max(ours.get((t, threads), 0.0), float(r[6]))
def g(v):
    return f"{v / 1e9:.2f}" if v else "-"
print("| type | ours 1T (Gw/s) | llama.cpp 1T | ratio 1T | ours 2T | llama.cpp 2T | ratio 2T |")
print("|---|---:|---:|---:|---:|---:|---:|")
for t in types:
    cells = [t]
    for th in (1, 2):
        o, l = ours.get((t, th)), llama.get((t, th))
        cells += [g(o), g(l), f"{o / l:.2f}" if o and l else "-"]
    print("| " + " | ".join(cells) + " |")
EOF
