#!/usr/bin/env bash
# Decode matvec (4096 x 14336 weights, one token) per weight type: flashmoe's bench_quant next to
# llama.cpp's `test-backend-ops perf -o MUL_MAT -b CPU` on the same shape, as a markdown table of
# weights/s and their ratio (ours / llama.cpp; above 1 is faster).
#
# usage: scripts/bench_quant_vs_llama.sh [-o FILE] [BENCH_QUANT] [LLAMA]
#   -o FILE      also write the table to FILE (atomically: a temporary file renamed into place)
#   BENCH_QUANT  default build/bench/bench_quant
#   LLAMA        llama.cpp's bin directory (holding test-backend-ops) or the test-backend-ops binary;
#                default $LLAMA_BUILD/bin (LLAMA_BUILD: a llama.cpp build directory)
# Environment:
#   TYPES    the types, e.g. TYPES="Q4_K Q8_0" (default: all of the table)
#   THREADS  thread counts (default "1 2"; bench_quant has 1, 2, 4, 8 and 16)
#   REPEATS  runs of each (type, threads) pair (default 3); each side keeps its best, which filters
#            out the moments another process took the core. The "spread" columns give
#            (best - worst) / best over the repeats of each side: the noise of the measurement.
#   FM_NO_AVX512=1  flashmoe takes its AVX2 kernels even where the CPU has AVX-512 VNNI, so both of
#            its x86 paths can be measured on one machine (llama.cpp's build is not affected)
#
# Each (type, threads) pair runs both programs back to back, and the repeats go round all pairs,
# so a change of machine load does not favour either side.
#
# test-backend-ops uses half of std::thread::hardware_concurrency() threads and has no option for it;
# the script runs it with a preloaded get_nprocs() that reports 2 * THREADS (libstdc++ asks glibc's
# get_nprocs for hardware_concurrency), so both programs run the same number of threads.
set -euo pipefail

out_file=
if [[ "${1:-}" == "-o" ]]; then
  out_file=${2:?"-o needs a file"}
  shift 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${1:-$root/build/bench/bench_quant}
llama=${2:-${LLAMA_BUILD:-}/bin}
tbo=$llama
[[ -d "$llama" ]] && tbo=$llama/test-backend-ops
[[ -x "$bench" ]] || { echo "no bench_quant at $bench (build the bench_quant target)" >&2; exit 1; }
[[ -x "$tbo" ]] || { echo "no test-backend-ops at $tbo (pass llama.cpp's bin directory)" >&2; exit 1; }
types=${TYPES:-"Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS MXFP4 BF16 F16"}
threads_list=${THREADS:-"1 2"}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/nprocs.c" <<'EOF'
#include <stdlib.h>
int get_nprocs(void) { return 2 * atoi(getenv("FM_LLAMA_THREADS")); }
int get_nprocs_conf(void) { return get_nprocs(); }
EOF
cc -shared -fPIC -O2 -o "$work/nprocs.so" "$work/nprocs.c"

touch "$work/llama.txt" "$work/ours.csv"
for r in $(seq "${REPEATS:-3}"); do
  for t in $types; do
    lt=$(echo "$t" | sed 's/.*/\L&/; s/_k$/_K/')  # ggml's spelling: q4_K, iq2_xxs, bf16
    for threads in $threads_list; do
      LD_PRELOAD="$work/nprocs.so" FM_LLAMA_THREADS=$threads "$tbo" perf -o MUL_MAT -b CPU \
        -p "^type_a=$lt,type_b=f32,m=4096,n=1,k=14336," 2>/dev/null |
        sed -n "s/.*MUL_MAT(type_a=[a-zA-Z0-9_]*,.*: *[0-9]* runs - *\([0-9.]*\) us\/run.*/$t $threads \1/p" \
          >>"$work/llama.txt" || true
      "$bench" --benchmark_filter="^BM_matvec_$t/threads:$threads/" --benchmark_format=csv 2>/dev/null |
        grep "^\"BM_matvec" >>"$work/ours.csv" || true
    done
  done
done

python3 - "$work/llama.txt" "$work/ours.csv" "$types" "$threads_list" >"$work/table.md" <<'EOF'
import csv, sys
llama_path, ours_path, types, threads_list = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
weights = 4096 * 14336
llama, ours = {}, {}
for line in open(llama_path):
    t, threads, us = line.split()
    llama.setdefault((t, int(threads)), []).append(weights / (float(us) * 1e-6))
# Google Benchmark's CSV columns: name,iterations,real_time,cpu_time,time_unit,bytes_per_second,
# items_per_second,label,...
for r in csv.reader(open(ours_path)):
    name = r[0]  # BM_matvec_Q4_K/threads:1/min_warmup_time:0.200/real_time
    t = name.split("/")[0][len("BM_matvec_"):]
    threads = int(name.split("threads:")[1].split("/")[0])
    ours.setdefault((t, threads), []).append(float(r[6]))
def best(v):
    return max(v) if v else None
def spread(v):
    return f"{(max(v) - min(v)) / max(v) * 100:.0f}%" if len(v) > 1 else "-"
def g(v):
    return f"{v / 1e9:.2f}" if v else "-"
head = ["type"]
for th in threads_list:
    head += [f"ours {th}T (Gw/s)", f"llama.cpp {th}T", f"ratio {th}T", f"spread ours/llama {th}T"]
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|---:|---:|---:|" * len(threads_list))
for t in types:
    cells = [t]
    for th in map(int, threads_list):
        o, l = ours.get((t, th), []), llama.get((t, th), [])
        cells += [g(best(o)), g(best(l)), f"{best(o) / best(l):.2f}" if o and l else "-",
                  f"{spread(o)} / {spread(l)}"]
    print("| " + " | ".join(cells) + " |")
EOF
cat "$work/table.md"
if [[ -n "$out_file" ]]; then
  cp "$work/table.md" "$out_file.tmp.$$" && mv "$out_file.tmp.$$" "$out_file"
fi
