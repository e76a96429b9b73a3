#!/bin/sh
# The quality cost of the speed knobs on the default model (docs/quality.md): perplexity and KL
# divergence against a BF16 reference, for fewer or more routed experts per token (--moe-top-k) and for
# each weight type (routed experts only, dense kept Q8_0; and all matrices).
#
#   scripts/quality_sweep.sh FLASHMOE_BIN WORK_DIR [CHUNKS] [CTX] [TEXT]
#
# Environment: TYPES (weight types to try), TOPKS (routed experts per token; default the model's count,
# 8, 6, 4, 3, 2, 1), THREADS, and LLAMA_QUANTIZE: llama.cpp's llama-quantize, to add for each type the
# same conversion made by llama.cpp from the BF16 GGUF (no importance matrix), so our quantizers are
# compared with llama.cpp's on the same checkpoint. llama-quantize needs an importance matrix for
# IQ3_XXS (and the IQ2 types): LLAMA_IMATRIX names one (llama-imatrix on training text, never the
# evaluation text), else those rows are skipped. flashmoe's quantizers use none.
#
# Needs the bf16 checkpoint in models/default/hf (tools/train_default_model.py writes it) and the
# evaluation text data/corpus/eval.txt (scripts/get_corpus.sh). Prints one TSV row per configuration
# and writes them to WORK_DIR/quality.tsv.
set -eu

FLASHMOE=${1:?usage: $0 FLASHMOE_BIN WORK_DIR [CHUNKS] [CTX] [TEXT]}
WORK=${2:?usage: $0 FLASHMOE_BIN WORK_DIR [CHUNKS] [CTX] [TEXT]}
SRC=$(cd "$(dirname "$0")/.." && pwd)
CHUNKS=${3:-40}
CTX=${4:-512}
TEXT=${5:-$SRC/data/corpus/eval.txt}
HF=$SRC/models/default/hf
THREADS=${THREADS:-2}
TYPES=${TYPES:-"Q8_0 Q6_K Q5_K Q5_1 Q5_0 Q4_K Q4_1 Q4_0 IQ4_XS IQ3_XXS"}
EXPERTS=$(sed -n 's/.*"num_experts": *\([0-9]*\).*/\1/p' "$HF/config.json" | head -n 1)
TOPKS=${TOPKS:-"$EXPERTS 8 6 4 3 2 1"}
LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-}
LLAMA_IMATRIX=${LLAMA_IMATRIX:-}
mkdir -p "$WORK"

convert() {  # OUT ARGS...
  out=$1
  shift
  [ -f "$out" ] || "$FLASHMOE" convert "$HF" -o "$out" -t "$THREADS" "$@" >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
}

row() {  # LABEL MODEL ARGS...
  label=$1
  model=$2
  shift 2
  json=$("$FLASHMOE" perplexity -m "$model" -f "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" -t "$THREADS" --no-progress \
    --kl-base "$WORK/base.fmlp" --json "$@" 2>"$WORK/last.log") || { cat "$WORK/last.log"; exit 1; }
  size=$(stat -c %s "$model")
  printf '%s\t%s\t%s\n' "$label" "$size" "$json" | tee -a "$WORK/quality.tsv"
}

convert "$WORK/bf16.gguf" --type BF16
"$FLASHMOE" perplexity -m "$WORK/bf16.gguf" -f "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" -t "$THREADS" --no-progress \
  --save-logits "$WORK/base.fmlp" --json >"$WORK/base.json"
cat "$WORK/base.json"
: >"$WORK/quality.tsv"

for k in $TOPKS; do
  row "top-k $k, Q8_0" "$SRC/models/default/flashmoe-default.gguf" --moe-top-k "$k"
done
for t in $TYPES; do
  convert "$WORK/experts-$t.gguf" --type Q8_0 --expert-type "$t"
  row "experts $t, dense Q8_0" "$WORK/experts-$t.gguf"
  convert "$WORK/all-$t.gguf" --type "$t"
  row "all $t" "$WORK/all-$t.gguf"
  if [ -n "$LLAMA_QUANTIZE" ]; then
    lt=$(echo "$t" | tr 'A-Z' 'a-z')
    out=$WORK/llama-experts-$t.gguf
    label="experts $t, dense Q8_0 (llama-quantize)"
    imatrix=
    case $t in IQ3_XXS | IQ2_*) # llama-quantize refuses these without an importance matrix
      [ -n "$LLAMA_IMATRIX" ] || continue
      imatrix="--imatrix $LLAMA_IMATRIX"
      label="experts $t, dense Q8_0 (llama-quantize with an importance matrix)" ;;
    esac
    [ -f "$out" ] || "$LLAMA_QUANTIZE" --pure $imatrix --tensor-type ffn_gate_exps="$lt" --tensor-type \
      ffn_up_exps="$lt" --tensor-type ffn_down_exps="$lt" "$WORK/bf16.gguf" "$out" Q8_0 >"$out.log" 2>&1 ||
      { cat "$out.log"; exit 1; }
    row "$label" "$out"
  fi
done
