#!/usr/bin/env python3
"""Checks that llama.cpp loads a GGUF file written by `flashmoe convert` and computes the same logits.

    python3 tools/llama_cpp_check.py --gguf model.gguf --fixture tests/fixtures/qwen35moe-vl-bf16 \
        [--ours ours.npy] [--tolerance 1e-3]

Needs llama-cpp-python (built from its PyPI source package: it vendors llama.cpp) and gguf-py.
The fixture models have no tokenizer, and llama.cpp refuses a model without one, so the script
first writes a copy of the file with a synthetic byte-level BPE vocabulary of the model's size
(256 byte tokens, then tokens made by merging pairs of them); the weights and every other key are
copied unchanged. It then evaluates the fixture's prompt ids with llama.cpp and compares llama.cpp's
logits of every prompt position with the transformers reference (and with ours, if given).
Exit status 0 when every comparison is within the tolerance.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def byte_tokens():
    """GPT-2's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def with_vocab(src, dst, vocab_size):
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    base = byte_tokens()
    tokens, merges = list(base), []
    for i in range(vocab_size - 256):
        a, b = base[i // 64 + 33], base[i % 64 + 33]
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen35")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab_size)
    writer.add_token_merges(merges)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=list(t.data.shape), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--ours", help="our logits (.npy from flashmoe run --dump-logits)")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    ap.add_argument("--llama-logits", help="tools/llama_logits.cpp built against llama.cpp: used instead of "
                                           "the llama_cpp Python binding")
    args = ap.parse_args()

    ref = json.load(open(os.path.join(args.fixture, "ref.json")))
    prompt = ref["prompt_ids"]
    expected = np.load(os.path.join(args.fixture, "logits.npy"))[: len(prompt)]
    vocab = expected.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "with_vocab.gguf")
        with_vocab(args.gguf, path, vocab)
        if args.llama_logits:
            out = os.path.join(tmp, "theirs.npy")
            subprocess.run([args.llama_logits, path, ",".join(map(str, prompt)), out], check=True,
                           stderr=None if args.verbose else subprocess.DEVNULL)
            theirs = np.load(out)
        else:
            import llama_cpp

            llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                                  verbose=args.verbose)
            llm.eval(prompt)
            theirs = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    ok = True
    reference = "mlx_lm" if "mlx_lm" in ref else "transformers"
    for label, other in ((reference, expected), ("flashmoe", np.load(args.ours)[: len(prompt)] if args.ours else None)):
        if other is None:
            continue
        diff = float(np.abs(theirs - other).max())
        top1 = float((theirs.argmax(1) == other.argmax(1)).mean())
        print(f"llama.cpp vs {label}: max |logit diff| {diff:.2e}, top-1 agreement {100 * top1:.1f}% "
              f"over {len(prompt)} prompt positions")
        ok &= diff <= args.tolerance
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
