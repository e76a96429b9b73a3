#!/usr/bin/env python3
"""A test vector for flashmoe's IQ3_XXS quantizer: llama.cpp's own (ggml_quantize_chunk, no importance
matrix, i.e. quantize_row_iq3_xxs_ref) through the libggml-base.so that llama-cpp-python installs.

    pip install llama-cpp-python gguf numpy
    python3 tools/make_iq3_xxs_vector.py tests/fixtures/quant/iq3_xxs_llama_cpp.bin

File: float32 input [ROWS][256], then llama.cpp's blocks [ROWS][98]. Rows: Gaussian, then the edge
rows of tests/unit/test_quant.cpp (zeros, constant, a spike over tiny noise, blocks of wildly
different magnitude, all positive). Also prints the relative RMSE of the Gaussian rows after gguf-py
dequantizes llama.cpp's blocks.
"""
import ctypes
import os
import sys

import gguf
import llama_cpp
import numpy as np

GGML_TYPE_IQ3_XXS = 18
ROWS_GAUSSIAN = 12


def main():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(2024)
    rows = [rng.standard_normal(256) for _ in range(ROWS_GAUSSIAN)]
    noise = rng.standard_normal(256)
    rows.append(np.zeros(256))
    rows.append(np.full(256, -2.5))
    spike = 1e-4 * noise
    spike[88] = 40.0
    rows.append(spike)
    rows.append(noise * 10.0 ** (np.arange(256) // 32 % 8 - 4))
    rows.append(np.abs(noise))
    x = np.ascontiguousarray(np.array(rows, dtype=np.float32))
    out = np.zeros((len(rows), 98), dtype=np.uint8)
    n = lib.ggml_quantize_chunk(GGML_TYPE_IQ3_XXS, x.ctypes.data, out.ctypes.data, 0, len(rows), 256, None)
    assert n == out.size
    with open(sys.argv[1], "wb") as f:
        f.write(x.tobytes())
        f.write(out.tobytes())
    y = gguf.quants.dequantize(out[:ROWS_GAUSSIAN], gguf.GGMLQuantizationType.IQ3_XXS)
    g = x[:ROWS_GAUSSIAN]
    print(f"{len(rows)} rows; Gaussian rows relative RMSE {np.sqrt(((y - g) ** 2).sum() / (g ** 2).sum()):.4f}")


if __name__ == "__main__":
    main()
