"""Starts `flashmoe serve` on a free loopback port for a test and stops it afterwards."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

SKIP = 77  # CTest's SKIP_RETURN_CODE for these tests


class LiveServer:
    def __init__(self, cli, *args):
        self.cli = cli
        self.args = ["serve", "--port", "0", *args]
        self.proc = None
        self.port = None
        self.log = []

    def __enter__(self):
        self.proc = subprocess.Popen([self.cli, *self.args], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("flashmoe serve did not start:\n" + "".join(self.log) + self.proc.stderr.read())
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            start = time.time()
            try:
                self.proc.wait(timeout=20)
                print(f"     (server stopped in {time.time() - start:.1f} s)")
            except subprocess.TimeoutExpired:
                if os.environ.get("FM_DEBUG_STOP"):
                    print(subprocess.run(["gdb", "-p", str(self.proc.pid), "-batch", "-ex", "thread apply all bt 10"],
                                         capture_output=True, text=True).stdout[-8000:])
                self.proc.kill()
                raise RuntimeError("flashmoe serve did not stop on SIGTERM")
        self.log.append(self.proc.stderr.read())
        return False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def get(self, path, key=None):
        req = urllib.request.Request(self.url + path)
        if key:
            req.add_header("Authorization", "Bearer " + key)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode()

    def metrics(self, key=None):
        out = {}
        for line in self.get("/metrics", key).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def memory(self):
        """VmRSS and VmHWM of the server process, in bytes."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    fields[k] = int(v.split()[0]) * 1024
        return fields


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run_tests(tests):
    failed = 0
    for t in tests:
        start = time.time()
        try:
            t()
            print(f"ok   {t.__name__} ({time.time() - start:.1f} s)", flush=True)
        except Exception as e:  # report every test, then fail
            failed += 1
            print(f"FAIL {t.__name__}: {type(e).__name__}: {e}", flush=True)
    sys.exit(1 if failed else 0)
