#!/usr/bin/env python3
"""Turns the public-domain books that scripts/get_corpus.sh unpacked from Debian packages into the
training and held-out evaluation text of flashmoe's default model.

Sources (all public domain; the packages' own licences are in docs/default_model.md):
    sword-text-kjv      King James Version of the Bible (1769 text)          SWORD module engKJV2006eb
    sword-text-web      World English Bible                                   SWORD module engWEB2015eb
    sword-comm-tdavid   C. H. Spurgeon, The Treasury of David (1869-1885)    SWORD module TDavid
    r-cran-janeaustenr  Jane Austen's six novels                              R lazy-load data base

The SWORD modules are read through diatheke (Debian package `diatheke`, the SWORD project's own
command-line front end); the Austen novels are read from the R data base with the `rdata` package.

Held out (never trained on; the evaluation text, in this order):
    Jane Austen, Persuasion (the whole novel)
    the Revelation of John, from both Bibles (so neither translation leaks it)
    The Treasury of David on Psalms 146-150
Output in OUT: train.jsonl and eval.jsonl (one document per line: source, title, text),
eval.txt (the held-out documents as plain text, separated by blank lines) and manifest.json
(sizes and SHA-256 of every output).
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zlib

SWORD_MODULES = {  # module -> (source name, kind)
    "engKJV2006eb": ("King James Version", "bible"),
    "engWEB2015eb": ("World English Bible", "bible"),
    "TDavid": ("The Treasury of David", "commentary"),
}
AUSTEN = {  # R object -> title, in publication order
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
HELD_OUT_BOOK = "Revelation of John"
HELD_OUT_PSALMS = range(146, 151)
HELD_OUT_NOVEL = "persuasion"

# A verse line of diatheke's plain output: optional indent, "Book C:V: text".
REF = re.compile(r"^\s*((?:I{1,3} )?[A-Z][A-Za-z ]*?) (\d+):(\d+): ?(.*)$")


def fail(msg):
    sys.exit(f"prepare_corpus: {msg}")


def diatheke(sword_home, module):
    env = dict(os.environ, HOME=sword_home, LC_ALL="C.UTF-8")
    out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", "Gen 1:1-Rev 22:21"], env=env,
                         capture_output=True)
    if out.returncode != 0 or not out.stdout:
        fail(f"diatheke -b {module} failed ({out.returncode}): {out.stderr.decode(errors='replace')[:500]}")
    return out.stdout.decode("utf-8")


def parse_verses(text, module):
    """[(book, chapter, verse, body)] from diatheke's plain output.

    diatheke prints an entry's pre-verse headings (Psalm titles) on lines of their own after a blank
    line, and repeats the last one it saw before every later verse (SWORD 1.9); such heading lines
    are dropped. Poetry continues a verse on the lines right after it (no blank line between)."""
    verses = []
    after_blank = True
    trailer = f"({module})"
    for line in text.split("\n"):
        m = REF.match(line)
        if m:
            verses.append([m.group(1), int(m.group(2)), int(m.group(3)), [m.group(4).strip()]])
            after_blank = False
        elif not line.strip():
            after_blank = True
        elif line.strip() == trailer:
            continue
        elif not after_blank and verses:
            verses[-1][3].append(line.strip())
        # else: a heading line (see above): dropped
    if len(verses) < 1000:
        fail(f"{module}: only {len(verses)} verses parsed from diatheke's output")
    return [(b, c, v, "\n".join(p for p in parts if p)) for b, c, v, parts in verses]


def clean(s):
    s = s.replace("\u00b6", "")  # pilcrows of the KJV
    s = re.sub(r"[ \t]*\*[ \t]*", " ", s)  # TDavid's emphasis markers
    s = re.sub(r"[ \t\u00a0]+", " ", s)
    return "\n".join(line.strip() for line in s.split("\n")).strip()


def bible_documents(verses, source):
    """One document a book: the book's name, then per chapter a 'Chapter N' line and its verses."""
    docs, cur = [], None
    for book, chap, verse, body in verses:
        body = clean(body)
        if source == "World English Bible":
            # The module glues a few words to a preceding divine name (<w>Yahweh’s</w><w>law</w>).
            body = re.sub(r"\b(Yahweh’s|Yahweh|Lord|God’s)(?=[a-z])", r"\1 ", body)
        if not body:
            continue
        if cur is None or cur["title"] != book:
            cur = {"source": source, "title": book, "parts": [book]}
            docs.append(cur)
            last_chap = None
        if chap != last_chap:
            cur["parts"].append(f"\nChapter {chap}\n")
            last_chap = chap
        cur["parts"].append(body)
    return [{"source": d["source"], "title": d["title"], "text": "\n".join(d["parts"]).strip()} for d in docs]


def commentary_documents(verses, source):
    """One document a psalm: the Treasury holds one entry a psalm (its first verse)."""
    docs = []
    for book, chap, verse, body in verses:
        body = clean(body)
        if not body:
            continue
        paras = [p for p in body.split("\n") if p]
        docs.append({"source": source, "title": f"{book} {chap}", "psalm": chap, "text": "\n\n".join(paras)})
    return docs


def austen_documents(data_dir):
    """The six novels from janeaustenr's lazy-load data base: one document a novel, paragraphs joined
    from the package's wrapped lines (an empty line ends a paragraph)."""
    import rdata
    rdx = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(
        open(os.path.join(data_dir, "Rdata.rdx"), "rb").read())))
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    docs = []
    for name, title in AUSTEN.items():
        if name not in rdx["variables"]:
            fail(f"janeaustenr data base has no object '{name}'")
        off, length = (int(x) for x in rdx["variables"][name])
        blob = rdb[off:off + length]
        size = struct.unpack(">I", blob[:4])[0]
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            fail(f"janeaustenr '{name}': {len(raw)} bytes decompressed, header says {size}")
        lines = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]
        paras, cur = [], []
        for line in lines + [""]:
            if line.strip():
                cur.append(line.strip())
            elif cur:
                paras.append(" ".join(cur))
                cur = []
        text = "\n\n".join(re.sub(r"_([^_]+)_", r"\1", p) for p in paras)
        docs.append({"source": "Jane Austen", "title": title, "novel": name, "text": text})
    return docs


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder the .deb packages were unpacked into (dpkg -x)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    sword = os.path.join(args.root, "usr/share/sword")
    if not os.path.isdir(os.path.join(sword, "mods.d")):
        fail(f"{sword}/mods.d is missing: unpack the sword-* packages into {args.root} first")
    home = os.path.join(args.out, "sword-home")
    os.makedirs(home, exist_ok=True)
    link = os.path.join(home, ".sword")
    if not os.path.islink(link):
        os.symlink(os.path.abspath(sword), link)

    train, held = [], []
    for module, (source, kind) in SWORD_MODULES.items():
        verses = parse_verses(diatheke(home, module), module)
        if kind == "bible":
            for d in bible_documents(verses, source):
                (held if d["title"] == HELD_OUT_BOOK else train).append(d)
        else:
            for d in commentary_documents(verses, source):
                (held if d.pop("psalm") in HELD_OUT_PSALMS else train).append(d)
    for d in austen_documents(os.path.join(args.root, "usr/lib/R/site-library/janeaustenr/data")):
        (held if d.pop("novel") == HELD_OUT_NOVEL else train).append(d)
    held.sort(key=lambda d: (d["source"] != "Jane Austen", d["source"] == "The Treasury of David"))

    os.makedirs(args.out, exist_ok=True)
    out = {}
    for name, docs in (("train.jsonl", train), ("eval.jsonl", held)):
        write_atomic(os.path.join(args.out, name), "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        out[name] = {"documents": len(docs), "characters": sum(len(d["text"]) for d in docs),
                     "bytes_utf8": sum(len(d["text"].encode()) for d in docs)}
    write_atomic(os.path.join(args.out, "eval.txt"), "\n\n".join(d["text"] for d in held) + "\n")
    for name in ("train.jsonl", "eval.jsonl", "eval.txt"):
        out.setdefault(name, {})["sha256"] = sha256(os.path.join(args.out, name))
    out["held_out"] = [f"{d['source']}: {d['title']}" for d in held]
    write_atomic(os.path.join(args.out, "manifest.json"), json.dumps(out, indent=1) + "\n")
    by_source = {}
    for d in train:
        by_source[d["source"]] = by_source.get(d["source"], 0) + len(d["text"].encode())
    print(json.dumps({"train_bytes_by_source": by_source, **{k: v for k, v in out.items() if k != "held_out"}},
                     indent=1))


if __name__ == "__main__":
    main()
