g++ -std=c++20 -O2 -Isrc h.cpp src/ops/cpu/matmul_quant_avx2.cpp src/util/error.cpp src/formats/dtype.cpp -lfmt -o h "$@" && ./h
