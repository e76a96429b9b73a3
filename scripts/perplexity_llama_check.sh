#!/bin/sh
# flashmoe perplexity agrees with llama.cpp's llama-perplexity on the same GGUF and text.
#
#   scripts/perplexity_llama_check.sh FLASHMOE_BIN WORK_DIR [TEXT] [CTX] [TOLERANCE]
#
# Runs both on the default model and on a Q4_K requantisation of it made with `flashmoe convert`, over
# TEXT (default: tests/fixtures/eval/persuasion-ch2.txt, 9 windows of 512) and requires the two final
# PPL estimates to differ by at most TOLERANCE (relative; default 0.005). llama-perplexity is looked for
# in $FLASHMOE_LLAMA_BIN, then on PATH; without it the check is skipped (exit 77, CTest's skip code).
set -eu

FLASHMOE=${1:?usage: $0 FLASHMOE_BIN WORK_DIR [TEXT] [CTX] [TOLERANCE]}
WORK=${2:?usage: $0 FLASHMOE_BIN WORK_DIR [TEXT] [CTX] [TOLERANCE]}
SRC=$(cd "$(dirname "$0")/.." && pwd)
TEXT=${3:-$SRC/tests/fixtures/eval/persuasion-ch2.txt}
CTX=${4:-512}
TOL=${5:-0.005}
MODEL=$SRC/models/default/flashmoe-default.gguf
THREADS=${FLASHMOE_CHECK_THREADS:-2}

LLAMA=
if [ -n "${FLASHMOE_LLAMA_BIN:-}" ] && [ -x "$FLASHMOE_LLAMA_BIN/llama-perplexity" ]; then
  LLAMA=$FLASHMOE_LLAMA_BIN/llama-perplexity
elif command -v llama-perplexity >/dev/null 2>&1; then
  LLAMA=$(command -v llama-perplexity)
fi
if [ -z "$LLAMA" ]; then
  echo "skipped: llama-perplexity not found (set FLASHMOE_LLAMA_BIN to the folder holding it)"
  exit 77
fi
[ -f "$MODEL" ] || { echo "error: $MODEL is missing"; exit 1; }
[ -f "$TEXT" ] || { echo "error: $TEXT is missing"; exit 1; }
mkdir -p "$WORK"

# Q4_K requantisation of the default model (all matrices), written by our converter.
Q4K=$WORK/default-q4_k.gguf
if [ ! -f "$Q4K" ] || [ "$MODEL" -nt "$Q4K" ]; then
  "$FLASHMOE" convert "$MODEL" -o "$Q4K" --type Q4_K -t "$THREADS" >"$WORK/convert.log" 2>&1 ||
    { cat "$WORK/convert.log"; exit 1; }
fi

status=0
for m in "$MODEL" "$Q4K"; do
  name=$(basename "$m")
  "$LLAMA" -m "$m" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" >"$WORK/llama-$name.log" 2>&1 ||
    { tail -20 "$WORK/llama-$name.log"; exit 1; }
  ref=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p' "$WORK/llama-$name.log")
  [ -n "$ref" ] || { echo "error: no final estimate in $WORK/llama-$name.log"; tail -20 "$WORK/llama-$name.log"; exit 1; }
  "$FLASHMOE" perplexity -m "$m" -f "$TEXT" --ctx "$CTX" -t "$THREADS" --no-progress >"$WORK/flashmoe-$name.log" 2>&1 ||
    { cat "$WORK/flashmoe-$name.log"; exit 1; }
  ours=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p' "$WORK/flashmoe-$name.log")
  [ -n "$ours" ] || { echo "error: no final estimate in $WORK/flashmoe-$name.log"; cat "$WORK/flashmoe-$name.log"; exit 1; }
  # shellcheck disable=SC2086
  if ! awk -v name="$name" -v tol="$TOL" -v r="$ref" -v o="$ours" 'BEGIN {
      split(r, a, " "); split(o, b, " ");
      d = (b[1] - a[1]) / a[1];
      printf "%-28s llama.cpp PPL %.4f +/- %.4f   flashmoe PPL %.4f +/- %.4f   difference %+.3f%%\n",
             name, a[1], a[2], b[1], b[2], 100 * d;
      exit (d < 0 ? -d : d) <= tol ? 0 : 1 }'; then
    echo "FAIL: $name differs by more than $(awk -v t="$TOL" 'BEGIN { print 100 * t }')%"
    status=1
  fi
done
exit $status
