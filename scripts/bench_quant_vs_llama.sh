#!/usr/bin/env bash
# Decode matvec (4096 x 14336 weights, one token) per weight type: flashmoe's bench_quant next to
# llama.cpp's own kernels on the same shape and threads (tools/ggml_matvec: ggml's CPU backend, the
# activation quantized per call as llama.cpp's MUL_MAT does), as a markdown table of weights/s and
# the ratios (ours / llama.cpp; above 1 is faster). llama.cpp is timed in both weight layouts it
# has: "plain", the GGUF block layout (what test-backend-ops times), and "repack", the interleaved
# layout it gives a model's weights when it loads one on the CPU, where the type has one on this CPU
# (x86: Q4_0, Q4_K, IQ4_NL, MXFP4; Q2_K with AVX-512). flashmoe is timed in its two as well: the
# file's layout (what streamed experts are computed in) and, for the blocks of 32, "interleaved", the
# layout its CPU backend gives resident weights at load (Backend::prepare_resident). "ratio" is each
# side's faster layout against the other's; "ratio file layout" ours in the file's layout against
# llama.cpp's faster one.
#
# usage: scripts/bench_quant_vs_llama.sh [-o FILE] [BENCH_QUANT] GGML_MATVEC
#   -o FILE      also write the table to FILE, rewritten (atomically) after every type, so a run cut
#                short keeps the types it finished
#   BENCH_QUANT  default build/bench/bench_quant
#   GGML_MATVEC  tools/ggml_matvec built by scripts/build_ggml_matvec.sh
# Environment:
#   TYPES    the types, e.g. TYPES="Q4_K Q8_0" (default: all of the table)
#   THREADS  thread counts (default "1 2"; bench_quant has 1, 2, 4, 8 and 16)
#   REPEATS  runs of each (type, threads) pair (default 3), each of SHORT timings (default 3) of
#            SECONDS_EACH seconds (default 0.3) per program; each side keeps its best timing, which
#            filters out the moments another process took the core (short timings are more often
#            clean than long ones). The "spread" columns give (best - worst) / best over all timings
#            of each side: the noise of the measurement.
#   FM_NO_AVX512=1  flashmoe takes its AVX2 kernels even where the CPU has AVX-512 VNNI, so both of
#            its x86 paths can be measured on one machine (llama.cpp's build is not affected)
#
# Each (type, threads) pair runs the programs back to back, and the repeats go round all pairs, so a
# change of machine load does not favour either side.
set -euo pipefail

out_file=
if [[ "${1:-}" == "-o" ]]; then
  out_file=${2:?"-o needs a file"}
  shift 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ $# -ge 2 ]]; then
  bench=$1
  ggml=$2
else
  bench=$root/build/bench/bench_quant
  ggml=${1:?"usage: $0 [-o FILE] [BENCH_QUANT] GGML_MATVEC"}
fi
[[ -x "$bench" ]] || { echo "no bench_quant at $bench (build the bench_quant target)" >&2; exit 1; }
[[ -x "$ggml" ]] || { echo "no ggml_matvec at $ggml (scripts/build_ggml_matvec.sh builds it)" >&2; exit 1; }
types=${TYPES:-"Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS MXFP4 BF16 F16"}
threads_list=${THREADS:-"1 2"}
short=${SHORT:-3}
seconds=${SECONDS_EACH:-0.3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/llama.txt" "$work/ours.csv"

table() {
  python3 - "$work/llama.txt" "$work/ours.csv" "$types" "$threads_list" <<'PY'
import csv, sys
llama_path, ours_path, types, threads_list = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
llama, ours = {}, {}
for line in open(llama_path):  # TYPE THREADS LAYOUT us weights/s
    t, threads, layout, _, wps = line.split()
    llama.setdefault((t, int(threads), layout), []).append(float(wps))
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
    head += [f"ours {th}T (Gw/s)", f"ours interleaved {th}T", f"llama.cpp plain {th}T",
             f"llama.cpp repack {th}T", f"ratio {th}T", f"ratio file layout {th}T", f"spread ours/llama {th}T"]
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|---:|---:|---:|---:|---:|---:|" * len(threads_list))
for t in types:
    if not any((t, int(th)) in ours for th in threads_list):
        continue
    cells = [t]
    for th in map(int, threads_list):
        o, oi = ours.get((t, th), []), ours.get((t + "_interleaved", th), [])
        p, r = llama.get((t, th, "plain"), []), llama.get((t, th, "repack"), [])
        ref = max(best(p) or 0, best(r) or 0)
        top = max(best(o) or 0, best(oi) or 0)
        cells += [g(best(o)), g(best(oi)), g(best(p)), g(best(r)), f"{top / ref:.2f}" if top and ref else "-",
                  f"{best(o) / ref:.2f}" if o and ref else "-",
                  f"{spread(oi if best(oi) and best(oi) > best(o) else o)} / "
                  f"{spread(r if best(r) and best(r) > (best(p) or 0) else p)}"]
    print("| " + " | ".join(cells) + " |")
PY
}

for r in $(seq "${REPEATS:-3}"); do
  for t in $types; do
    lt=$(echo "$t" | sed 's/.*/\L&/; s/_k$/_K/')  # ggml's spelling: q4_K, iq2_xxs, bf16
    for threads in $threads_list; do
      for layout in "" --repack; do
        "$ggml" "$lt" "$threads" $layout --seconds "$seconds" --repetitions "$short" \
          >>"$work/llama.txt.new" 2>/dev/null || true
      done
      sed "s/^$lt /$t /" "$work/llama.txt.new" >>"$work/llama.txt" && rm "$work/llama.txt.new"
      # one CSV row per repetition (the aggregates, named ..._mean and so on, left out)
      "$bench" --benchmark_filter="^BM_matvec_$t(_interleaved)?/threads:$threads/" --benchmark_format=csv \
        --benchmark_repetitions="$short" --benchmark_min_time="$seconds" 2>/dev/null |
        grep "^\"BM_matvec" | grep -v '_\(mean\|median\|stddev\|cv\)"' >>"$work/ours.csv" || true
    done
    if [[ -n "$out_file" ]]; then
      table >"$out_file.tmp.$$" && mv "$out_file.tmp.$$" "$out_file"
    fi
  done
done
table
