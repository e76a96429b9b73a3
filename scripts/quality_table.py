#!/usr/bin/env python3
"""Formats the rows of scripts/quality_sweep.sh (quality.tsv: label, file bytes, perplexity JSON) as the
markdown tables of docs/quality.md: one for the experts-per-token rows, one for the weight-type rows.

    python3 scripts/quality_table.py WORK_DIR/quality.tsv
"""
import json
import math
import sys


def row(label, size, r):
    ratio = math.exp(r["ln_ppl_ratio"]) - 1
    ratio_err = math.exp(r["ln_ppl_ratio"]) * r["ln_ppl_ratio_err"]
    return (f"| {label} | {size / 1e6:.1f} | {r['ppl']:.2f} ± {r['ppl_err']:.2f} | {100 * ratio:+.1f} ± "
            f"{100 * ratio_err:.1f} % | {r['kl_mean']:.4f} ± {r['kl_err']:.4f} | {r['kl_p99']:.3f} | "
            f"{r['kl_max']:.2f} | {100 * r['top1_agree']:.1f} ± {100 * r['top1_agree_err']:.1f} % | "
            f"{100 * r['dp_rms']:.2f} % |")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    header = ("| {} | file MB | PPL | PPL vs reference | mean KLD | 99 % KLD | max KLD | same top | RMS Δp |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    topk, types = [], []
    base = None
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            label, size, js = line.rstrip("\n").split("\t", 2)
            r = json.loads(js)
            base = base or r
            if label.startswith("top-k "):
                topk.append(row(label.split(",")[0][len("top-k "):], int(size), r))
            else:
                types.append(row(label, int(size), r))
    if base:
        print(f"Reference (BF16) perplexity {base['base_ppl']:.2f} ± {base['base_ppl_err']:.2f} over {base['tokens']} "
              f"scored tokens ({base['chunks']} windows of {base['ctx']}).\n")
    print(header.format("experts per token"))
    print("\n".join(topk))
    print()
    print(header.format("weights"))
    print("\n".join(types))


if __name__ == "__main__":
    main()
