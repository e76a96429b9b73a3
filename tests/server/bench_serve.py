"""Aggregate decode throughput of flashmoe serve with 1 and N concurrent streams (continuous batching:
one decode step serves every active slot).

Usage: bench_serve.py FLASHMOE_BINARY [--streams 4] [--tokens 128] [-- extra serve options, e.g. -m MODEL]

For each case it starts a server, warms it up, then runs the clients at once, each streaming a
completion of exactly --tokens tokens (ignore_eos), and reports completion tokens / wall time:
  1 stream          --parallel 1, one client
  N streams, serial --parallel 1, N clients (one at a time: the queue)
  N streams, batch  --parallel N, N clients (decoded together)
"""
import argparse
import concurrent.futures
import json
import sys
import time
import urllib.request

from live_server import LiveServer

PROMPTS = ["In the beginning", "And God said", "Blessed are the", "The LORD is my", "And it came to pass",
           "Hear, O Israel", "Vanity of vanities", "Let there be"]


def stream_one(url, prompt, tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    usage = None
    first = None
    start = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                first = time.time() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
    return usage["completion_tokens"], first


def case(cli, extra, parallel, clients, tokens):
    with LiveServer(cli, "--parallel", str(parallel), "--max-queue", str(clients), *extra) as s:
        stream_one(s.url, "Warm up", 8)
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(clients) as ex:
            results = list(ex.map(lambda i: stream_one(s.url, PROMPTS[i % len(PROMPTS)], tokens), range(clients)))
        wall = time.time() - start
        n = sum(r[0] for r in results)
        m = s.metrics()
        return n, wall, m["flashmoe_decode_batch_size_mean"], max(r[1] for r in results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cli")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.extra = extra
    rows = []
    base = None
    for label, parallel, clients in [("1 stream", 1, 1), (f"{a.streams} streams, --parallel 1", 1, a.streams),
                                     (f"{a.streams} streams, --parallel {a.streams}", a.streams, a.streams)]:
        n, wall, batch, ttft = case(a.cli, a.extra, parallel, clients, a.tokens)
        tps = n / wall
        base = base or tps
        rows.append(f"{label:28s} {n:5d} tokens in {wall:6.2f} s = {tps:8.1f} tok/s aggregate "
                    f"(x{tps / base:.2f}; mean decode batch {batch:.2f}; slowest first token {ttft:.2f} s)")
        print(rows[-1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
