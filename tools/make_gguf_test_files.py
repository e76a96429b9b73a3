#!/usr/bin/env python3
"""GGUF interop fixtures for flashmoe's tests, made and checked with gguf-py (llama.cpp's reference
GGUF library; pip install gguf==0.19.0).

    python3 tools/make_gguf_test_files.py [--out tests/fixtures/gguf]
        Writes reference_v3.gguf with gguf.GGUFWriter (metadata of every value type, arrays incl. a
        nested one, four small tensors incl. Q8_0 and BF16 made by gguf.quants.quantize) and
        reference_v3.json describing what a reader must find; test_gguf checks our reader against it.
        The file is then read back with gguf.GGUFReader and checked against the JSON.

    python3 tools/make_gguf_test_files.py --check FILE.gguf
        Reads FILE.gguf with gguf.GGUFReader and checks it against FILE.json (same schema). test_gguf's
        GgufInterop.WriteForGgufPy writes such a pair with our GgufWriter into
        <build>/gguf_interop/, so this proves gguf-py reads what we write; ctest runs it as gguf_py_check
        where gguf is importable.

JSON schema:
    {"version": 3, "alignment": 32, "data_offset": N,
     "metadata": [{"key": K, "type": T, "value": V}, ...],          # file order
     "tensors": [{"name", "ggml_type", "ne", "shape", "offset", "nbytes", "hex"}, ...]}   # file order
T is a GGUF value type name in lower case ("uint8", ..., "float64", "bool", "string", "array"). An
array's V is {"elem_type": T, "items": [...]}, nested arrays' items being such objects again. Floats
are the exact binary values (float32 ones widened to double). ne is GGML's order, shape PyTorch's
(reversed); offset is relative to the data section; hex is the tensor's bytes.
"""
import argparse
import importlib.metadata
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType, GGUFValueType

def type_name(t: GGUFValueType) -> str:
    return t.name.lower()


def as_stored(value, t: GGUFValueType):
    """The value as the file holds it: float32 rounding applied, so JSON carries the exact bits."""
    if t == GGUFValueType.FLOAT32:
        return float(np.float32(value))
    return value


def array_json(items, elem: GGUFValueType):
    if elem == GGUFValueType.ARRAY:
        return {"elem_type": "array", "items": [array_json(sub, elem_t) for sub, elem_t in items]}
    return {"elem_type": type_name(elem), "items": [as_stored(x, elem) for x in items]}


def make_reference(out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "reference_v3.gguf")
    writer = gguf.GGUFWriter(path, arch="qwen35moe")  # adds general.architecture first
    metadata = [{"key": "general.architecture", "type": "string", "value": "qwen35moe"}]

    def scalar(key, value, t):
        writer.add_key_value(key, value, t)
        metadata.append({"key": key, "type": type_name(t), "value": as_stored(value, t)})

    def array(key, values, elem):
        writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=elem)
        metadata.append({"key": key, "type": "array", "value": array_json(values, elem)})

    scalar("test.u8", 255, GGUFValueType.UINT8)
    scalar("test.i8", -128, GGUFValueType.INT8)
    scalar("test.u16", 65535, GGUFValueType.UINT16)
    scalar("test.i16", -32768, GGUFValueType.INT16)
    scalar("test.u32", 4294967295, GGUFValueType.UINT32)
    scalar("test.i32", -2147483648, GGUFValueType.INT32)
    scalar("test.f32", 0.1, GGUFValueType.FLOAT32)
    scalar("test.bool_true", True, GGUFValueType.BOOL)
    scalar("test.bool_false", False, GGUFValueType.BOOL)
    scalar("test.string", "h\u00e9llo w\u00f6rld \u2713", GGUFValueType.STRING)
    scalar("test.empty_string", "", GGUFValueType.STRING)
    scalar("test.u64", 2**64 - 1, GGUFValueType.UINT64)
    scalar("test.i64", -2**63, GGUFValueType.INT64)
    scalar("test.f64", 1.0 / 3.0, GGUFValueType.FLOAT64)
    # A real key the engine reads, so the fixture also looks like a model header.
    scalar("qwen35moe.block_count", 2, GGUFValueType.UINT32)

    array("test.tokens", ["<|endoftext|>", "", "\u0120the", "\u4f60\u597d", "a b"], GGUFValueType.STRING)
    array("test.i32_array", [0, -1, 2147483647, -2147483648], GGUFValueType.INT32)
    array("test.f32_array", [0.5, -1.25, 3.0e-5, 1.0e30], GGUFValueType.FLOAT32)
    array("test.u8_array", [0, 1, 254, 255], GGUFValueType.UINT8)
    array("test.bool_array", [True, False, True], GGUFValueType.BOOL)
    array("test.u64_array", [0, 2**64 - 1], GGUFValueType.UINT64)
    array("test.i64_array", [-2**63, 2**63 - 1], GGUFValueType.INT64)
    array("test.f64_array", [0.1, -2.5e300], GGUFValueType.FLOAT64)
    array("test.u16_array", [1, 65535], GGUFValueType.UINT16)
    array("test.i16_array", [-32768, 7], GGUFValueType.INT16)
    array("test.u32_array", [4294967295], GGUFValueType.UINT32)
    array("test.i8_array", [-128, 127], GGUFValueType.INT8)
    # Arrays of arrays: gguf-py infers each inner array's type from its first element.
    nested = [["a", "bc"], ["", "d", "e"]]
    writer.add_key_value("test.nested_strings", nested, GGUFValueType.ARRAY)
    metadata.append({"key": "test.nested_strings", "type": "array",
                     "value": array_json([(sub, GGUFValueType.STRING) for sub in nested], GGUFValueType.ARRAY)})

    rng = np.random.default_rng(1234)
    tensors = []

    def tensor(name, data, raw_dtype=None):
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
        tensors.append(name)

    tensor("blk.0.attn_norm.weight", rng.standard_normal((2, 3, 4)).astype(np.float32))
    tensor("token_embd.weight", rng.standard_normal((4, 8)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    tensor("blk.0.ffn_down.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    bf16 = gguf.quants.quantize(rng.standard_normal((3, 4)).astype(np.float32), GGMLQuantizationType.BF16)
    tensor("output_norm.weight", bf16, raw_dtype=GGMLQuantizationType.BF16)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Offsets, ne and bytes as gguf-py's reader sees them; check() below compares the rest.
    reader = gguf.GGUFReader(path)
    expected = {"version": 3, "alignment": int(reader.alignment), "data_offset": int(reader.data_offset),
                "metadata": metadata, "tensors": []}
    for t in reader.tensors:
        ne = [int(d) for d in t.shape]
        expected["tensors"].append({
            "name": t.name, "ggml_type": int(t.tensor_type), "ne": ne, "shape": ne[::-1],
            "offset": int(t.data_offset) - int(reader.data_offset), "nbytes": int(t.n_bytes),
            "hex": bytes(t.data.tobytes()).hex()})
    assert [t["name"] for t in expected["tensors"]] == tensors
    json_path = os.path.join(out_dir, "reference_v3.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def flatten(value):
    """gguf-py's ReaderField.contents() flattens nested arrays; do the same to the expected value."""
    if isinstance(value, dict):
        out = []
        for item in value["items"]:
            out.extend(flatten(item) if isinstance(item, dict) else [item])
        return out
    return value


def leaf_type(value) -> str:
    while isinstance(value, dict) and value["elem_type"] == "array":
        value = value["items"][0]
    return value["elem_type"]


def check(path: str) -> None:
    with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
        expected = json.load(f)
    reader = gguf.GGUFReader(path)
    problems = []

    def expect(cond, what):
        if not cond:
            problems.append(what)

    version = reader.fields["GGUF.version"].contents()
    expect(version == expected["version"], f"version {version}")
    expect(reader.alignment == expected["alignment"], f"alignment {reader.alignment}")
    expect(reader.data_offset == expected["data_offset"], f"data_offset {reader.data_offset}")

    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    expect([f.name for f in fields] == [m["key"] for m in expected["metadata"]],
           f"keys {[f.name for f in fields]}")
    for field, m in zip(fields, expected["metadata"]):
        got_type = type_name(field.types[0])
        expect(got_type == m["type"], f"{m['key']}: type {got_type}, expected {m['type']}")
        value = m["value"]
        if m["type"] == "array":
            # gguf-py learns an array's element type from its first element: an empty one reports none.
            if value["items"]:
                expect(type_name(field.types[-1]) == leaf_type(value), f"{m['key']}: element type {field.types[-1]}")
            value = flatten(value)
        got = field.contents()
        expect(got == value, f"{m['key']}: {got!r}, expected {value!r}")

    expect([t.name for t in reader.tensors] == [t["name"] for t in expected["tensors"]],
           f"tensors {[t.name for t in reader.tensors]}")
    for t, e in zip(reader.tensors, expected["tensors"]):
        ne = [int(d) for d in t.shape]
        expect(ne == e["ne"], f"{t.name}: ne {ne}, expected {e['ne']}")
        expect(int(t.tensor_type) == e["ggml_type"], f"{t.name}: type {t.tensor_type}")
        offset = int(t.data_offset) - int(reader.data_offset)
        expect(offset == e["offset"], f"{t.name}: offset {offset}, expected {e['offset']}")
        expect(int(t.n_bytes) == e["nbytes"], f"{t.name}: {t.n_bytes} bytes, expected {e['nbytes']}")
        expect(bytes(t.data.tobytes()).hex() == e["hex"], f"{t.name}: bytes differ")

    if problems:
        sys.exit(f"{path}: gguf-py reads it differently from {os.path.splitext(path)[0]}.json:\n  " +
                 "\n  ".join(problems))
    print(f"{path}: gguf-py {importlib.metadata.version('gguf')} GGUFReader agrees: {len(fields)} keys, {len(reader.tensors)} tensors")


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "gguf"))
    ap.add_argument("--check", metavar="FILE", help="check FILE.gguf against FILE.json with gguf.GGUFReader")
    args = ap.parse_args()
    if args.check:
        check(args.check)
    else:
        check(make_reference(args.out))


if __name__ == "__main__":
    main()
