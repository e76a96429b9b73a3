#!/usr/bin/env bash
# A model larger than memory, for real: a Qwen3.5-397B-shaped synthetic GGUF (N layers, Q4_K
# experts, Q8_0 dense) run under a cgroup (v1 or v2) memory limit -- the page cache counts against it --
# by flashmoe (experts streamed, --mem-budget = the limit) and by llama.cpp (mmap, as users run
# it), same file, same threads, caches dropped before each; with the disk floor flashmoe measures
# in the same run for the bytes it read. Needs root (cgroup, drop_caches).
#
#   scripts/bench_stream.sh LLAMA_BIN_DIR [MODEL.gguf] [LIMIT_GB] [THREADS] [N_DECODE] [LAYERS]
#
# LLAMA_BIN_DIR holds llama-bench, built from the llama-cpp-python source package (see
# scripts/llama_cpp_check.sh). The model is made with `flashmoe synth` if it does not exist.
set -euo pipefail
llama_bin=${1:?usage: $0 LLAMA_BIN_DIR [MODEL.gguf] [LIMIT_GB] [THREADS] [N_DECODE] [LAYERS]}
model=${2:-/var/tmp/flashmoe-397b-synth.gguf}
limit_gb=${3:-8}
threads=${4:-$(nproc)}
n_decode=${5:-12}
layers=${6:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
flashmoe=${FLASHMOE:-$root/build/flashmoe}
out=${OUT_DIR:-$(mktemp -d)}

if [ ! -f "$model" ]; then
  "$flashmoe" synth -o "$model" --like qwen3.5-397b-a17b --layers "$layers" --type Q8_0 --expert-type Q4_K \
    --tokenizer "$root/models/default" 2>&1 | tr '\r' '\n' | tail -1
fi
model_bytes=$(stat -c %s "$model")
limit=$((limit_gb * 1024 * 1024 * 1024))

# cgroup v1 (memory controller mounted at /sys/fs/cgroup/memory) or v2 (unified hierarchy): one
# fresh group per engine, so each peak is its own.
if [ -d /sys/fs/cgroup/memory ]; then
  cg_root=/sys/fs/cgroup/memory limit_file=memory.limit_in_bytes peak_file=memory.max_usage_in_bytes
else
  cg_root=/sys/fs/cgroup limit_file=memory.max peak_file=memory.peak
  grep -qw memory "$cg_root/cgroup.subtree_control" || echo +memory > "$cg_root/cgroup.subtree_control"
fi
groups=()
trap 'for g in "${groups[@]}"; do rmdir "$g" 2>/dev/null || true; done' EXIT
# Runs a command inside a new group after dropping the page cache; its peak usage goes to $peak.
in_cgroup() {
  local name=$1
  shift
  local cg=$cg_root/flashmoe_bench_$$_$name
  mkdir "$cg"
  groups+=("$cg")
  echo "$limit" > "$cg/$limit_file"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  sh -c 'echo $$ > "$0/cgroup.procs"; shift; exec "$@"' "$cg" - "$@"
  peak=$(cat "$cg/$peak_file")
}

echo "model $(basename "$model"): $((model_bytes / 1000000)) MB; cgroup limit ${limit_gb} GiB; $threads threads" >&2
in_cgroup flashmoe "$flashmoe" bench -m "$model" -n "$n_decode" --prompt-len 4 --ctx 64 --batch 4 -t "$threads" \
  --mem-budget "${limit_gb}G" --direct-io --io-threads 4 --io-split 2 --json "$out/flashmoe.json" > /dev/null
fm_peak=$peak
# mmap, no repacking into anonymous memory: the way llama.cpp runs a model larger than RAM.
in_cgroup llama "$llama_bin/llama-bench" -m "$model" -p 0 -n "$n_decode" -t "$threads" -r 1 -lm mmap --repack 0 -o json > "$out/llama.json"
ll_peak=$peak

python3 - "$out/flashmoe.json" "$out/llama.json" "$fm_peak" "$ll_peak" "$model_bytes" "$limit" <<'EOF'
import json, sys
fm = json.load(open(sys.argv[1]))
ll = json.load(open(sys.argv[2]))
ll_tps = [t for t in ll if t.get("n_gen", 0) > 0][0]["avg_ts"]
fm_peak, ll_peak, size, limit = map(int, sys.argv[3:7])
gib = 1024 ** 3
print(f"model {size / 1e9:.2f} GB, cgroup limit {limit / gib:.1f} GiB ({size / limit:.2f}x smaller than the model)")
print("| engine | decode tok/s | vs llama.cpp | disk MB/token | disk floor tok/s | of floor | cgroup peak GiB |")
print("|---|---|---|---|---|---|---|")
print(f"| flashmoe (streamed experts) | {fm['decode_tok_s']:.2f} | {fm['decode_tok_s'] / ll_tps:.2f}x | "
      f"{fm['disk_bytes_read_per_token'] / 1e6:.0f} | {fm['disk_floor_tok_s']:.2f} | "
      f"{100 * fm['fraction_of_disk_floor']:.0f}% | {fm_peak / gib:.2f} |")
print(f"| llama.cpp (mmap) | {ll_tps:.2f} | 1.00x | | | | {ll_peak / gib:.2f} |")
print(f"flashmoe: io wait {fm['io_wait_ms_per_token']:.0f} ms/token, compute {fm['compute_ms_per_token']:.0f} ms/token, "
      f"cache hits {100 * fm['cache_hit_rate']:.0f}%, prediction precision {100 * fm['prediction_precision']:.0f}% "
      f"recall {100 * fm['prediction_recall']:.0f}%, disk {fm['disk_bandwidth_bytes_s'] / 1e9:.2f} GB/s, "
      f"memory floor {fm['memory_floor_tok_s']:.2f} tok/s")
EOF
