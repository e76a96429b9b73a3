#!/usr/bin/env python3
"""Test vectors for flashmoe's quantizers with an importance matrix: llama.cpp's own
(ggml_quantize_chunk with a non-null imatrix, as llama-quantize calls it per row) through the
libggml-base.so that llama-cpp-python installs.

    pip install llama-cpp-python numpy
    python3 tools/make_imatrix_vectors.py tests/fixtures/quant

Writes to that folder:
  imatrix_input.bin    float32 x[ROWS][COLS], then float32 importance[ROWS][COLS] (row r is quantized
                       with importance row r)
  imatrix_<TYPE>.bin   llama.cpp's blocks of every row, [ROWS][row bytes], for each type below
ROWS = 16, COLS = 512 (two 256-value super-blocks). Rows: Gaussian weights of a few scales with
heavy-tailed random importance (lognormal, like real activations' mean squares), then edge rows:
zeros, a constant, a spike over tiny noise, blocks of wildly different magnitude, all positive,
importance with zero columns, importance all ones, importance spanning 1e-6..1e6.
"""
import ctypes
import os
import sys

import llama_cpp
import numpy as np

ROWS, COLS = 16, 512
# ggml_type numbers (ggml.h)
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
         "IQ3_XXS": 18, "IQ4_XS": 23}


def inputs():
    rng = np.random.default_rng(7)
    x, w = [], []
    for i in range(8):
        x.append(rng.standard_normal(COLS) * [0.02, 1.0, 0.5, 3.0][i % 4])
        w.append(np.exp(rng.standard_normal(COLS) * 1.5) * 100.0)
    noise = rng.standard_normal(COLS)
    imp = np.exp(rng.standard_normal(COLS))
    x.append(np.zeros(COLS))
    w.append(imp)
    x.append(np.full(COLS, -2.5))
    w.append(imp)
    spike = 1e-4 * noise
    spike[88] = 40.0
    spike[300] = -7.0
    x.append(spike)
    w.append(imp)
    x.append(noise * 10.0 ** (np.arange(COLS) // 32 % 8 - 4))
    w.append(imp)
    x.append(np.abs(noise))
    w.append(imp)
    zeros = imp.copy()
    zeros[::3] = 0.0
    zeros[256:288] = 0.0  # a whole 32-group without importance
    x.append(noise)
    w.append(zeros)
    x.append(noise * 0.1)
    w.append(np.ones(COLS))
    x.append(rng.standard_normal(COLS))
    w.append(10.0 ** rng.uniform(-6, 6, COLS))
    assert len(x) == ROWS
    return (np.ascontiguousarray(np.array(x, dtype=np.float32)),
            np.ascontiguousarray(np.array(w, dtype=np.float32)))


def main():
    out_dir = sys.argv[1]
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    x, w = inputs()
    with open(os.path.join(out_dir, "imatrix_input.bin"), "wb") as f:
        f.write(x.tobytes())
        f.write(w.tobytes())
    for name, t in TYPES.items():
        row_bytes = lib.ggml_row_size(t, COLS)
        out = np.zeros((ROWS, row_bytes), dtype=np.uint8)
        for r in range(ROWS):
            n = lib.ggml_quantize_chunk(t, x[r].ctypes.data, out[r].ctypes.data, 0, 1, COLS, w[r].ctypes.data)
            assert n == row_bytes, (name, n, row_bytes)
        with open(os.path.join(out_dir, f"imatrix_{name}.bin"), "wb") as f:
            f.write(out.tobytes())
        print(f"{name}: {ROWS} rows of {row_bytes} bytes")


if __name__ == "__main__":
    main()
