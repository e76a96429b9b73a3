#!/usr/bin/env python3
"""Turn flashmoe's small fixture models into MLX-quantized checkpoints, exactly as mlx_lm writes
them, plus reference logits from mlx_lm itself.

Needs `pip install "mlx[cpu]" mlx-lm` (MLX has CPU wheels for Linux). The quantization is mlx_lm's
own (mlx_lm.utils.quantize_model over the model mlx_lm.utils.load_model builds, i.e. what
`mlx_lm.convert -q` does, with the model's default quant_predicate: the MoE router, and Qwen3.5's
shared-expert gate, at 8 bits), saved by mlx_lm.utils.save_model / save_config.

    python3 tools/make_mlx_fixtures.py --out tests/fixtures/mlx

Each folder holds config.json + model.safetensors as mlx_lm wrote them, and
    logits.npy  float32 [N_PROMPT, vocab]: mlx_lm's forward pass over the first N_PROMPT tokens of
                the source fixture's prompt, with every float parameter (scales and biases
                included, which is exact) cast to float32, so the reference computes in float32
    ref.json    the prompt, the source fixture, the quantization, mlx / mlx_lm versions, and the
                KL divergence of these logits from transformers' on the unquantized weights

logits.npy is written only where mlx_lm's forward pass on the unquantized weights agrees with
transformers' (max |diff| < 1e-4; 6e-6 for both Qwen3-MoE fixtures). mlx_lm 0.32.2's Qwen3.5 differs
from transformers by up to 0.86 on the unquantized qwen35moe-vl-bf16 (and 3.4 on qwen35moe-dkdv-bf16),
so the Qwen3.5 fixture has no mlx_lm logits; the tests check it against the same weights dequantized
to F32 (and flashmoe's F32 path is checked against transformers elsewhere). mlx_lm reads Qwen3.5
experts only fused (experts.gate_up_proj), so the Qwen3.5 source is fused first, as the published
checkpoints are. The third fixture splits mlx_lm's switch_mlp tensors per expert, a layout variant.
"""
import argparse
import json
import os
import re
import shutil
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model, quantize_model, save_config, save_model

N_PROMPT = 48

# name, source fixture, bits, group size, router override (None: the model's own predicate),
# expert layout ("switch": as mlx_lm writes; "per_expert": the same tensors split per expert).
CASES = [
    ("qwen3moe-norm-q4g64", "qwen3moe-norm-bf16", 4, 64, None, "switch"),
    ("qwen35moe-vl-q2g64", "qwen35moe-vl-bf16", 2, 64, None, "switch"),
    ("qwen3moe-f16-q3g32", "qwen3moe-f16", 3, 32, {"group_size": 32, "bits": 6}, "per_expert"),
]


def split_experts(folder):
    """Rewrites switch_mlp.{gate,up,down}_proj.{weight,scales,biases} [E][...] as
    experts.N.{gate,up,down}_proj.* (the per-expert layout some MLX checkpoints use)."""
    path = os.path.join(folder, "model.safetensors")
    tensors = dict(mx.load(path))
    for name in list(tensors):
        m = re.match(r"(.*\.mlp)\.switch_mlp\.(gate_proj|up_proj|down_proj)\.(weight|scales|biases)$", name)
        if m:
            stacked = tensors.pop(name)
            for e in range(stacked.shape[0]):
                tensors[f"{m.group(1)}.experts.{e}.{m.group(2)}.{m.group(3)}"] = stacked[e]
    mx.save_safetensors(path, tensors, metadata={"format": "mlx"})
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        idx["weight_map"] = {k: "model.safetensors" for k in sorted(tensors)}
        with open(index, "w") as f:
            json.dump(idx, f, indent=4)


def fused_copy(src, tmp):
    """A copy of a Qwen3.5 fixture with each layer's experts fused (experts.gate_up_proj [E][2I][H],
    gate rows first; experts.down_proj [E][H][I]) as the published Qwen3.5 checkpoints store them:
    mlx_lm's qwen3_5_moe reads only that layout."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(mx.load(str(f)))
    experts = {}
    for name in list(tensors):
        m = re.match(r"(.*mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$", name)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = tensors.pop(name)
    for prefix, parts in experts.items():
        n = 1 + max(e for e, _ in parts)
        tensors[prefix + ".gate_up_proj"] = mx.stack(
            [mx.concatenate([parts[(e, "gate")], parts[(e, "up")]]) for e in range(n)])
        tensors[prefix + ".down_proj"] = mx.stack([parts[(e, "down")] for e in range(n)])
    mx.save_safetensors(str(tmp / "model.safetensors"), tensors, metadata={"format": "pt"})
    shutil.copy(src / "config.json", tmp / "config.json")
    return tmp


def transformers4_keys(src):
    """The fixtures' configs come from transformers 5 (num_local_experts, rope_parameters); mlx_lm's
    qwen3_moe reads the transformers 4 spellings that the published Qwen3-MoE configs carry, so they
    are added (same values), as they are in a published checkpoint's config."""
    with open(src / "config.json") as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "qwen3_moe":
        return None
    extra = {"rope_theta": cfg["rope_parameters"]["rope_theta"]}
    if "num_experts" not in cfg:
        extra["num_experts"] = cfg["num_local_experts"]
    return extra


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def make(fixtures, out, name, source, bits, group, router, layout):
    src = Path(fixtures) / source
    dst = Path(out) / name
    if dst.exists():
        shutil.rmtree(dst)
    load_from = fused_copy(src, Path(out) / (name + ".tmp")) if source.startswith("qwen35") else src
    extra = transformers4_keys(src)
    with open(src / "ref.json") as f:
        prompt = json.load(f)["prompt_ids"][:N_PROMPT]
    base = np.load(src / "logits.npy")[:N_PROMPT]  # transformers, unquantized weights

    # Is mlx_lm's forward pass a reference for this architecture? Its logits on the unquantized
    # weights against transformers'.
    plain, _ = load_model(load_from, model_config=extra)
    plain.set_dtype(mx.float32)
    mlx_vs_transformers = float(np.abs(np.array(plain(mx.array([prompt]))[0]) - base).max())

    model, config = load_model(load_from, model_config=extra)
    if load_from != src:
        shutil.rmtree(load_from)
    predicate = None
    if router is not None:
        def predicate(path, _):
            return dict(router) if path.endswith("mlp.gate") else True
    model, config = quantize_model(model, config, group, bits, quant_predicate=predicate)
    save_model(dst, model)
    save_config(config, dst / "config.json")
    if layout == "per_expert":
        split_experts(dst)

    # The reference: the saved checkpoint loaded back by mlx_lm, computing in float32. Kept only
    # where mlx_lm agrees with transformers on the unquantized weights.
    ref_model, _ = load_model(dst, model_config=extra) if layout == "switch" else (model, None)
    ref_model.set_dtype(mx.float32)
    logits = np.array(ref_model(mx.array([prompt]))[0].astype(mx.float32))
    if mlx_vs_transformers < 1e-4:
        np.save(dst / "logits.npy", logits.astype(np.float32))

    # How far quantization moved the model from transformers' logits on the unquantized weights.
    p = log_softmax(base)
    kl = (np.exp(p) * (p - log_softmax(logits))).sum(axis=-1)
    n_quantized = sum(1 for k, _ in tree_flatten(model.parameters()) if k.endswith(".scales"))
    meta = {
        "source": source, "prompt_ids": prompt, "bits": bits, "group_size": group, "router": router,
        "expert_layout": layout, "quantized_matrices": n_quantized,
        "mlx_lm_vs_transformers_unquantized_max_abs": mlx_vs_transformers,
        "reference_logits": mlx_vs_transformers < 1e-4,
        "kl_vs_unquantized_mean": float(kl.mean()), "kl_vs_unquantized_max": float(kl.max()),
        "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
    }
    with open(dst / "ref.json", "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(p.stat().st_size for p in dst.iterdir())
    print(f"{name}: {n_quantized} quantized matrices, KL vs unquantized mean {kl.mean():.2e} max "
          f"{kl.max():.2e}, {size / 1024:.0f} KiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    for case in CASES:
        make(args.fixtures, args.out, *case)


if __name__ == "__main__":
    main()
