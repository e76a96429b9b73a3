#!/usr/bin/env python3
"""Build tiny random-weight Qwen3.5-MoE / Qwen3-MoE checkpoints with transformers and record
reference outputs for flashmoe's tests.

Run where torch and transformers 5.x are installed (the GPU machine), then unpack the archive into
tests/fixtures/:

    python3 tools/make_fixtures.py --out /tmp/fx && tar -C /tmp/fx -czf fixtures.tar.gz .

For every model the folder holds the checkpoint exactly as save_pretrained wrote it, plus
    ref.json    prompt ids, greedy ids, shapes, the smallest top-1/top-2 logit gap seen
    logits.npy  float32 [n_prompt + n_gen - 1, vocab]: one row per prompt position (one full
                forward pass), then one per cached decoding step after the first
    hidden.npy  float32 [n_layers + 1, n_prompt, hidden]: the residual stream after the embedding and
                after each decoder layer (the last entry is after the final norm, as transformers
                reports it)
The reference runs in float64 on the CPU from the saved (possibly bf16/f16-rounded) weights, with
eager attention, so it is deterministic and its own rounding (transformers' chunked DeltaNet prefill
loses ~1e-3 in float32) stays far below the tests' tolerance.
"""
import argparse
import importlib
import inspect
import json
import math
import os
import shutil

import numpy as np
import torch
import transformers
from transformers import (Qwen3_5MoeConfig, Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration,
                          Qwen3_5MoeTextConfig, Qwen3MoeConfig, Qwen3MoeForCausalLM)

N_PROMPT = 230
N_GEN = 24
VOCAB = 512


def randomize(model, zero_centred_norms, seed):
    """Give every parameter a scale that keeps activations O(1), so logits are well separated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight"):
                base = 0.0 if zero_centred_norms else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape).uniform_(0.5, 8.0, generator=g)))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("conv1d.weight"):
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("lm_head.weight"):
                p.copy_(3.0 / math.sqrt(p.shape[-1]) * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(2.0 / math.sqrt(p.shape[-1]) * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(1.0 / math.sqrt(p.shape[-1]) * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def float64_module(module):
    """Re-executes a transformers modeling module with every internal float32 cast made float64.

    transformers computes the DeltaNet recurrences, the gated norm and the softmaxes in float32 even
    for a float64 model; its chunked DeltaNet prefill then differs from its own recurrent decoding
    by ~1e-4. The float64 copy is the same code at higher precision, so the reference's own error is
    far below the tests' tolerance."""
    src = inspect.getsource(module)
    for old, new in (("torch.float32", "torch.float64"), ("softmax(router_logits, dtype=torch.float,",
                                                          "softmax(router_logits, dtype=torch.float64,")):
        src = src.replace(old, new)
    exec(compile(src, module.__file__, "exec"), module.__dict__)
    return module


def text_model(model):
    """The decoder stack (for hidden states) of a causal LM or of the multimodal wrapper."""
    inner = model.model
    return getattr(inner, "language_model", inner)


@torch.no_grad()
def reference(model, prompt):
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    prompt_logits = out.logits[0].double()
    hidden = torch.stack([h[0].double() for h in out.hidden_states])

    # Cached greedy decoding: the prompt once, then one token at a time.
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    last = out.logits[0, -1].double()
    greedy, step_logits, gaps = [], [], []
    for step in range(N_GEN):
        top2 = torch.topk(last, 2).values
        gaps.append(float(top2[0] - top2[1]))
        tok = int(torch.argmax(last))
        greedy.append(tok)
        if step == N_GEN - 1:
            break
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        last = out.logits[0, -1].double()
        step_logits.append(last.clone())

    # Self-check of the reference: an uncached pass over prompt + generated tokens must agree.
    full = model(input_ids=torch.tensor([prompt + greedy[:-1]]), use_cache=False).logits[0].double()
    cached = torch.cat([prompt_logits, torch.stack(step_logits)])
    drift = float((full - cached).abs().max())
    logits = cached.numpy()
    return logits, hidden.numpy(), greedy, min(gaps), drift


def fuse_experts(folder):
    """Rewrites a single-file checkpoint with each layer's experts fused into 3-D tensors
    (mlp.experts.gate_up_proj [E, 2I, H], gate rows first; mlp.experts.down_proj [E, H, I]), the
    layout of transformers' modules; transformers reads both layouts, so the reference still comes
    from this very file."""
    import re
    from safetensors.torch import load_file, save_file
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    experts = {}
    for name in list(tensors):
        m = re.match(r"(.*mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$", name)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = tensors.pop(name)
    for prefix, parts in experts.items():
        n = 1 + max(e for e, _ in parts)
        tensors[prefix + ".gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "gate")], parts[(e, "up")]]) for e in range(n)]).contiguous()
        tensors[prefix + ".down_proj"] = torch.stack([parts[(e, "down")] for e in range(n)]).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def save(make, zero_centred_norms, folder, dtype, prompt, shard=None, fused=False):
    """Saves the first seed's model whose greedy decoding has no near-tie (gap < 1e-3 would let
    float rounding flip the argmax)."""
    for seed in range(1234, 1264):
        model = make()
        randomize(model, zero_centred_norms, seed)
        if save_one(model, folder, dtype, prompt, seed, shard, fused):
            return
    raise SystemExit(f"{folder}: no seed without a near-tie")


def save_one(model, folder, dtype, prompt, seed, shard, fused):
    if os.path.exists(folder):
        shutil.rmtree(folder)
    model = model.to(dtype)
    if shard:
        model.save_pretrained(folder, max_shard_size=shard)
    else:
        model.save_pretrained(folder)
    if fused:
        fuse_experts(folder)
    # Reference from the saved weights, upcast to float64.
    cls = getattr(float64_module(importlib.import_module(type(model).__module__)), type(model).__name__)
    ref = cls.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager",
                              experts_implementation="eager").eval()
    logits, hidden, greedy, gap, drift = reference(ref, prompt)
    np.save(os.path.join(folder, "logits.npy"), logits.astype(np.float32))
    np.save(os.path.join(folder, "hidden.npy"), hidden.astype(np.float32))
    meta = {
        "prompt_ids": prompt, "greedy_ids": greedy, "n_prompt": len(prompt), "n_gen": N_GEN,
        "vocab_size": int(logits.shape[1]), "min_top2_gap": gap, "cached_vs_uncached_max_diff": drift,
        "dtype": str(dtype).replace("torch.", ""), "transformers": transformers.__version__,
        "torch": torch.__version__, "seed": seed,
    }
    with open(os.path.join(folder, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{os.path.basename(folder)}: gap {gap:.4f} drift {drift:.2e} greedy {greedy[:8]}...", flush=True)
    assert drift < 1e-6, "transformers' cached and uncached passes disagree"
    # A usable fixture: no near-tie, and a greedy run that is not one token repeated.
    return gap > 1e-3 and len(set(greedy)) >= 4


def rope(theta, partial, mrope=None):
    r = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": partial}
    if mrope:
        r.update({"mrope_section": mrope, "mrope_interleaved": True})
    return r


def qwen35_text_kwargs(**over):
    kw = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
              linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
              shared_expert_intermediate_size=48, rms_norm_eps=1e-6, max_position_embeddings=4096,
              rope_parameters=rope(1e7, 0.25, [2, 1, 1]))
    kw.update(over)
    return kw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only-llama-cpp-compatible", action="store_true",
                    help="make only the two models llama.cpp can express")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    rng = np.random.default_rng(7)
    prompt = [int(t) for t in rng.integers(0, VOCAB, N_PROMPT)]
    if args.only_llama_cpp_compatible:
        return main_llama_cpp_compatible(args.out, prompt)

    # 1. The multimodal wrapper as the published Qwen3.5 checkpoints ship it: text settings under
    #    text_config, language-model prefix, vision weights present; bf16, sharded, per-expert tensors,
    #    the real every-fourth layer pattern, value heads = 2 x key heads, dk != dv.
    text = qwen35_text_kwargs(num_hidden_layers=4)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  num_position_embeddings=64)
    cfg = Qwen3_5MoeConfig(text_config=text, vision_config=vision)
    save(lambda: Qwen3_5MoeForConditionalGeneration(cfg).eval(), True,
         os.path.join(args.out, "qwen35moe-vl-bf16"), torch.bfloat16, prompt, shard="300KB")

    # 2. The text-only model type, f32, another layer pattern, 4 value heads per key head, tied
    #    embeddings, experts fused into 3-D tensors.
    text = qwen35_text_kwargs(num_hidden_layers=6, linear_num_key_heads=2, linear_num_value_heads=8,
                              layer_types=["linear_attention", "full_attention", "linear_attention",
                                           "linear_attention", "full_attention", "linear_attention"],
                              tie_word_embeddings=True)
    cfg2 = Qwen3_5MoeTextConfig(**text)
    save(lambda: Qwen3_5MoeForCausalLM(cfg2).eval(), True,
         os.path.join(args.out, "qwen35moe-text-f32"), torch.float32, prompt, fused=True)

    # 3. Qwen3-MoE, f16, experts saved per expert, one dense-MLP layer, top-k renormalised.
    cfg = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                         num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True,
                         mlp_only_layers=[2], rms_norm_eps=1e-6, max_position_embeddings=4096,
                         rope_parameters=rope(1e6, 1.0))
    save(lambda: Qwen3MoeForCausalLM(cfg).eval(), False,
         os.path.join(args.out, "qwen3moe-f16"), torch.float16, prompt)

    # 4. Qwen3-MoE without renormalisation of the top-k weights, bf16.
    cfg4 = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=16, num_experts=16,
                         num_experts_per_tok=4, moe_intermediate_size=24, norm_topk_prob=False,
                         rms_norm_eps=1e-6, max_position_embeddings=4096, rope_parameters=rope(1e6, 1.0))
    save(lambda: Qwen3MoeForCausalLM(cfg4).eval(), False,
         os.path.join(args.out, "qwen3moe-nonorm-bf16"), torch.bfloat16, prompt)

    main_llama_cpp_compatible(args.out, prompt)


def main_llama_cpp_compatible(out, prompt):
    """Two more models within what llama.cpp's qwen35moe / qwen3moe graphs can express (DeltaNet key
    and value head dims equal; Qwen3-MoE top-k always renormalised, every layer MoE), for the check
    that llama.cpp computes the same logits from our GGUF (tools/llama_cpp_check.py)."""
    text = qwen35_text_kwargs(num_hidden_layers=4, linear_value_head_dim=16)
    cfg = Qwen3_5MoeTextConfig(**text)
    save(lambda: Qwen3_5MoeForCausalLM(cfg).eval(), True, os.path.join(out, "qwen35moe-dkdv-bf16"),
         torch.bfloat16, prompt)
    cfg3 = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                          rms_norm_eps=1e-6, max_position_embeddings=4096, rope_parameters=rope(1e6, 1.0))
    save(lambda: Qwen3MoeForCausalLM(cfg3).eval(), False, os.path.join(out, "qwen3moe-norm-bf16"),
         torch.bfloat16, prompt)


if __name__ == "__main__":
    main()
