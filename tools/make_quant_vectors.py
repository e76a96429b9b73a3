#!/usr/bin/env python3
"""Writes the quantization test vectors in tests/fixtures/quant/ (read by tests/unit/test_quant.cpp).

Reference: gguf-py (pip install gguf==0.19.0), whose gguf.quants dequantize/quantize are numpy
float32 code that we match bit for bit. MLX is not installable here, so the MLX affine vectors come
from its definition (mlx.core.dequantize, mode="affine":
https://ml-explore.github.io/mlx/build/html/python/_autosummary/mlx.core.dequantize.html),
computed below in float32 numpy.

Files (all little-endian, no headers; index.json gives the counts):
  dequant_<TYPE>.bin  blocks (blocks * block_bytes bytes), then the expected float32 values
                      (blocks * block). Scalar types (F32/F16/BF16) are blocks of one value.
  quant_<TYPE>.bin    rows * cols float32 inputs, then gguf.quants.quantize's bytes.
  mlx_b<bits>_g<group>.bin  packed uint32 words, bf16 scales, bf16 biases, expected float32.
index.json also names the ranges of edge-case blocks ("cases") so a failure can say which one.

usage: tools/make_quant_vectors.py [output_dir]
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

rng = np.random.default_rng(20240607)

# Byte offsets of each format's f16 scale fields (the block layouts of ggml-common.h).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.IQ4_NL: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0], T.IQ4_XS: [0],
}
QUANTIZED = list(F16_FIELDS) + [T.MXFP4]


def sane_f16(n: int) -> np.ndarray:
    """Random finite f16 scales, both signs, magnitudes 2^-12 .. 2^2."""
    mag = np.exp2(rng.uniform(-12, 2, n)).astype(np.float32)
    sign = np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    return (mag * sign).astype(np.float16).view(np.uint16)


def set_f16(blocks: np.ndarray, qtype, values) -> None:
    """Sets every f16 scale field of every block to values (one per block, or a scalar bit pattern)."""
    for off in F16_FIELDS[qtype]:
        v = np.broadcast_to(np.asarray(values, dtype=np.uint16), (blocks.shape[0],))
        blocks[:, off:off + 2] = v.astype("<u2").view(np.uint8).reshape(-1, 2)


def sane_scales(blocks: np.ndarray, qtype) -> np.ndarray:
    if qtype == T.MXFP4:
        blocks[:, 0] = rng.integers(112, 136, blocks.shape[0])  # 2^-16 .. 2^7
    else:
        for off in F16_FIELDS[qtype]:
            blocks[:, off:off + 2] = sane_f16(blocks.shape[0]).astype("<u2").view(np.uint8).reshape(-1, 2)
    return blocks


def u32le(values) -> np.ndarray:
    return np.asarray(values, dtype="<u4").view(np.uint8)


def grid_blocks(qtype, nbytes: int) -> list[np.ndarray]:
    """Blocks that together use every grid index and every sign pattern of an i-quant."""
    out = []
    if qtype == T.IQ2_XXS:  # per 32 values: 4 index bytes, then 4 7-bit sign indices + 4-bit scale
        for b in range(8):
            blk = np.zeros(nbytes, np.uint8)
            for ib in range(8):
                base = b * 32 + ib * 4
                blk[2 + 8 * ib:2 + 8 * ib + 4] = [base + k for k in range(4)]
                aux = sum(((base + k) % 128) << (7 * k) for k in range(4)) | (((b * 8 + ib) % 16) << 28)
                blk[2 + 8 * ib + 4:2 + 8 * ib + 8] = u32le([aux])
            out.append(blk)
    elif qtype == T.IQ2_XS:  # 16-bit words: 9-bit index, 7-bit sign index
        for b in range(16):
            blk = np.zeros(nbytes, np.uint8)
            words = [(b * 32 + i) | (((b * 32 + i * 5) % 128) << 9) for i in range(32)]
            blk[2:66] = np.asarray(words, dtype="<u2").view(np.uint8)
            blk[66:74] = rng.integers(0, 256, 8)
            out.append(blk)
    elif qtype == T.IQ2_S:  # qs[32] low index bits, signs[32], qh[8] 2 high bits each, scales[8]
        for b in range(32):
            blk = np.zeros(nbytes, np.uint8)
            for i in range(32):
                idx = b * 32 + i
                blk[2 + i] = idx & 255
                blk[66 + i // 4] |= ((idx >> 8) & 3) << (2 * (i % 4))
                blk[34 + i] = (b * 32 + i) % 256
            blk[74:82] = rng.integers(0, 256, 8)
            out.append(blk)
    elif qtype == T.IQ3_XXS:  # qs[64] indices, 8 words of 4 sign indices + scale
        for b in range(4):
            blk = np.zeros(nbytes, np.uint8)
            blk[2:66] = [b * 64 + i for i in range(64)]
            aux = [sum(((b * 32 + ib * 4 + k) % 128) << (7 * k) for k in range(4))
                   | (((b * 8 + ib) % 16) << 28) for ib in range(8)]
            blk[66:98] = u32le(aux)
            out.append(blk)
    elif qtype == T.IQ3_S:  # qs[64] low index bits, qh[8] high bit each, signs[32], scales[4]
        for b in range(8):
            blk = np.zeros(nbytes, np.uint8)
            for i in range(64):
                idx = b * 64 + i
                blk[2 + i] = idx & 255
                blk[66 + i // 8] |= (idx >> 8) << (i % 8)
            blk[74:106] = [(b * 32 + s) % 256 for s in range(32)]
            blk[106:110] = rng.integers(0, 256, 4)
            out.append(blk)
    for blk in out:
        sane_scales(blk.reshape(1, -1), qtype)
    return out


def dequant_cases(qtype) -> list[tuple[str, np.ndarray]]:
    block, nbytes = GGML_QUANT_SIZES[qtype]
    cases = []
    n_random = 48 if block == 32 else 12
    cases.append(("random", sane_scales(rng.integers(0, 256, (n_random, nbytes), dtype=np.uint8), qtype)))
    cases.append(("all_zero", np.zeros((1, nbytes), np.uint8)))
    # Every byte value at every position (32-element types) or somewhere in the block (super-blocks),
    # which takes every nibble / 2-bit field through every value; the scales are then made sane.
    n_sweep = 256 if block == 32 else 8
    sweep = np.zeros((n_sweep, nbytes), np.uint8)
    pos = np.arange(nbytes)
    for i in range(n_sweep):
        sweep[i] = (i + 37 * pos) % 256 if block == 32 else (32 * i + pos) % 256
    cases.append(("byte_sweep", sane_scales(sweep, qtype)))
    ones = np.full((1, nbytes), 255, np.uint8)
    cases.append(("payload_ff", sane_scales(ones.copy(), qtype)))
    cases.append(("all_ff", ones))
    if qtype == T.MXFP4:
        blocks = rng.integers(0, 256, (256, nbytes), dtype=np.uint8)
        blocks[:, 0] = np.arange(256)
        cases.append(("every_exponent", blocks))
    else:
        for name, bits in [("zero_scale", 0x0000), ("neg_zero_scale", 0x8000), ("max_scale", 0x7BFF),
                           ("min_scale", 0xFBFF), ("subnormal_scale", 0x0001),
                           ("neg_subnormal_scale", 0x8001), ("smallest_normal_scale", 0x0400),
                           ("inf_scale", 0x7C00), ("nan_scale", 0x7E00)]:
            blk = rng.integers(0, 256, (2, nbytes), dtype=np.uint8)
            set_f16(blk, qtype, bits)
            cases.append((name, blk))
        # A random payload under extreme scales, one field at a time where there are two.
        if len(F16_FIELDS[qtype]) == 2:
            blk = sane_scales(rng.integers(0, 256, (2, nbytes), dtype=np.uint8), qtype)
            off = F16_FIELDS[qtype][1]
            blk[:, off:off + 2] = [0xFF, 0x7B]  # 65504
            cases.append(("max_second_scale", blk))
    grids = grid_blocks(qtype, nbytes)
    if grids:
        cases.append(("every_grid_index_and_sign", np.stack(grids)))
    assert all(c.shape[1] == nbytes for _, c in cases)
    return cases


def scalar_cases(qtype) -> list[tuple[str, np.ndarray]]:
    if qtype == T.F32:
        vals = np.concatenate([rng.standard_normal(256).astype(np.float32),
                               np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4e38], np.float32)])
        return [("values", vals.view(np.uint8).reshape(-1, 4))]
    # 16-bit: random patterns plus zeros, subnormals, largest, infinities, NaNs.
    special = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00,
                        0x7E00, 0xFE00, 0x7C01, 0x7F80, 0xFF80, 0x7F7F, 0x0080, 0x3C00, 0x3F80], np.uint16)
    vals = np.concatenate([rng.integers(0, 65536, 2048).astype(np.uint16), special])
    return [("values", vals.astype("<u2").view(np.uint8).reshape(-1, 2))]


def reference_dequantize(blocks: np.ndarray, qtype) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(quants.dequantize(blocks, qtype), dtype=np.float32).reshape(-1)


def quant_rows(row: int) -> list[tuple[str, np.ndarray]]:
    """Float rows for the quantizers (all finite: gguf-py's casts of NaN to integers are undefined)."""
    def rows(n, f):
        return np.stack([f() for _ in range(n)]).astype(np.float32)

    cases = [
        ("normal", rows(6, lambda: rng.standard_normal(row))),
        ("uniform", rows(3, lambda: rng.uniform(-1, 1, row))),
        ("zeros", np.zeros((1, row), np.float32)),
        ("constant", np.stack([np.full(row, v, np.float32) for v in (0.5, -3.25, 1e-3, 7.0)])),
        ("huge", rows(2, lambda: rng.standard_normal(row) * 1e30)),
        ("beyond_f16_scale", rows(1, lambda: rng.standard_normal(row) * 3e6)),
        ("tiny", rows(2, lambda: rng.standard_normal(row) * 1e-30)),
        ("f16_subnormal_scale", rows(1, lambda: rng.standard_normal(row) * 1e-6)),
        ("block_magnitudes", rows(2, lambda: rng.standard_normal(row) * np.repeat(
            10.0 ** rng.uniform(-8, 8, row // 32), 32))),
        ("one_spike", np.stack([np.where(np.arange(row) % 32 == 5, 10.0, 1e-3 * rng.standard_normal(row))])),
        ("positive", rows(1, lambda: rng.uniform(0.5, 2.0, row))),
        ("negative", rows(1, lambda: -rng.uniform(0.5, 2.0, row))),
        ("equal_magnitudes",
         np.stack([np.tile(np.array([-2.0, 2.0, 1.0, -1.0] * 8, np.float32), row // 32)])),
    ]
    # Values on the rounding boundaries: halves of the level spacing for amax 127 (Q8_0's d = 1)
    # and for a max of -8 / -16 (Q4_0 / Q5_0 with d = 1).
    ties = np.tile(np.concatenate([[127.0, -126.5], np.arange(-14.5, 15.5, 1.0)]), row // 32 + 1)[:row]
    ties2 = np.tile(np.concatenate([[-8.0], np.arange(-7.5, 8.0, 0.5)[:31]]), row // 32 + 1)[:row]
    ties3 = np.tile(np.concatenate([[-16.0], np.arange(-15.5, 15.5, 1.0)]), row // 32 + 1)[:row]
    cases.append(("rounding_ties", np.stack([ties, ties2, ties3]).astype(np.float32)))
    return cases


def scalar_quant_rows(row: int) -> list[tuple[str, np.ndarray]]:
    """Inputs for F16 / BF16 rounding: random float32 bit patterns and edge values."""
    bits = rng.integers(0, 2**32, 2 * row, dtype=np.uint64).astype(np.uint32)
    vals = bits.view(np.float32)
    vals = np.where(np.isnan(vals), np.float32(1.5), vals)  # only the canonical NaN, below
    edge = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e-8, 5.96e-8, 2.98e-8, 2.9802322e-8,
                     6.1e-5, np.inf, -np.inf, np.nan, -np.nan, 1.0009765625, 1.00048828125, 1.00146484375,
                     3.4e38, 1e-40, 1.00390625, 1.01171875], np.float32)
    vals = np.concatenate([vals, edge, rng.standard_normal(row - len(edge)).astype(np.float32)])
    return [("values", vals.reshape(-1, row))]


def mlx_case(bits: int, group: int, rows: int, cols: int):
    """One MLX affine matrix: packed words, bf16 scales / biases, expected float32."""
    q = rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint64)
    q[0, :group] = (1 << bits) - 1  # a group of the largest level
    q[-1, -group:] = 0
    n_groups = cols // group
    scales = (rng.standard_normal((rows, n_groups)) * 0.05).astype(np.float32)
    biases = (-scales * (1 << (bits - 1)) + rng.standard_normal((rows, n_groups)) * 0.01).astype(np.float32)
    scales[0, 1] = 0.0
    biases[-1, 0] = 0.0
    scales_bf16 = to_bf16(scales)
    biases_bf16 = to_bf16(biases)
    # The row's bit stream: element j's bits start at bit j * bits, little-endian.
    shifts = (np.arange(cols, dtype=np.uint64) * np.uint64(bits))
    words = np.zeros((rows, cols * bits // 32), dtype=np.uint64)
    for r in range(rows):
        stream = 0
        for j in range(cols):
            stream |= int(q[r, j]) << int(shifts[j])
        for w in range(words.shape[1]):
            words[r, w] = (stream >> (32 * w)) & 0xFFFFFFFF
    sc = (scales_bf16.astype(np.uint32) << 16).view(np.float32)
    bi = (biases_bf16.astype(np.uint32) << 16).view(np.float32)
    g = np.arange(cols) // group
    expected = q.astype(np.float32) * sc[:, g] + bi[:, g]  # float32: product rounded, then the add
    return words.astype("<u4"), scales_bf16, biases_bf16, expected.astype(np.float32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/fixtures/quant"
    out.mkdir(parents=True, exist_ok=True)
    index = {"generator": "tools/make_quant_vectors.py", "reference": "gguf-py 0.19.0 gguf.quants",
             "dequant": [], "quant": [], "mlx": []}

    for qtype in [T.F32, T.F16, T.BF16] + QUANTIZED:
        block, nbytes = GGML_QUANT_SIZES[qtype]
        cases = scalar_cases(qtype) if qtype in (T.F32, T.F16, T.BF16) else dequant_cases(qtype)
        data = np.concatenate([c for _, c in cases]).astype(np.uint8)
        expected = reference_dequantize(data, qtype)
        assert expected.size == data.shape[0] * block
        name = f"dequant_{qtype.name}.bin"
        (out / name).write_bytes(data.tobytes() + expected.astype("<f4").tobytes())
        ranges, first = [], 0
        for case, c in cases:
            ranges.append({"name": case, "first": first, "count": int(c.shape[0])})
            first += int(c.shape[0])
        index["dequant"].append({"type": qtype.name, "file": name, "blocks": int(data.shape[0]),
                                 "block": block, "block_bytes": nbytes, "cases": ranges})

    row = 256
    for qtype in [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16]:
        cases = scalar_quant_rows(row) if qtype in (T.F16, T.BF16) else quant_rows(row)
        x = np.concatenate([c for _, c in cases]).astype(np.float32)
        with np.errstate(all="ignore"):
            q = np.asarray(quants.quantize(x, qtype)).view(np.uint8).reshape(x.shape[0], -1)
        name = f"quant_{qtype.name}.bin"
        (out / name).write_bytes(x.astype("<f4").tobytes() + q.tobytes())
        ranges, first = [], 0
        for case, c in cases:
            ranges.append({"name": case, "first": first, "count": int(c.shape[0])})
            first += int(c.shape[0])
        index["quant"].append({"type": qtype.name, "file": name, "rows": int(x.shape[0]), "cols": row,
                               "row_bytes": int(q.shape[1]), "cases": ranges})

    for bits in (2, 3, 4, 6, 8):
        for group in (32, 64, 128):
            rows, cols = 3, 384
            words, scales, biases, expected = mlx_case(bits, group, rows, cols)
            name = f"mlx_b{bits}_g{group}.bin"
            (out / name).write_bytes(words.tobytes() + scales.astype("<u2").tobytes() +
                                     biases.astype("<u2").tobytes() + expected.astype("<f4").tobytes())
            index["mlx"].append({"bits": bits, "group_size": group, "rows": rows, "cols": cols, "file": name,
                                 "words_per_row": int(words.shape[1])})

    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main()
