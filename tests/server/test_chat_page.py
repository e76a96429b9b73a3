"""The chat page at / in headless Chromium: it sends ?q=TEXT, streams the answer in over server-sent
events, and shows it. Chromium is driven through the DevTools protocol (a minimal WebSocket client
below, standard library only): navigate, wait for the answer, read it from the DOM, take a screenshot.

Checks: the answer shown equals what the API gives for the same conversation (greedy), a second
message continues the conversation (the server reuses the cached prefix), and the screenshot is a
rendered page (not blank: the user bubble's blue is there).

Usage: test_chat_page.py FLASHMOE_BINARY. Exit 77 (skipped) when chromium is missing.
"""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zlib

from live_server import SKIP, LiveServer, check

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if not CHROMIUM:
    print("chromium not found: skipped")
    sys.exit(SKIP)


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: masked text frames out, frames in."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"WebSocket handshake failed: {head!r}")
        self.next_id = 0

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("DevTools connection closed")
            buf += chunk
        return buf

    def send_text(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv_text(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            if b0 & 0x0F == 0x9:  # ping
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def call(self, method, **params):
        self.next_id += 1
        self.send_text(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.recv_text())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]


def png_pixels(data):
    """Decodes an 8-bit RGB/RGBA PNG: (width, height, channels, rows of bytes)."""
    check(data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    check(depth == 8 and color in (2, 6), f"PNG depth {depth} color type {color}")
    ch = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * ch
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, ch, rows


def main():
    cli = sys.argv[1]
    profile = tempfile.mkdtemp(prefix="fm_chromium_")
    out_dir = os.environ.get("FM_SCREENSHOT_DIR", profile)
    with LiveServer(cli, "--ctx", "512") as server:
        browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                    "--window-size=900,700", "about:blank"],
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            port = None
            deadline = time.time() + 30
            while time.time() < deadline and port is None:
                line = browser.stderr.readline()
                m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                if m:
                    port = int(m.group(1))
            check(port is not None, "chromium did not open its DevTools port")
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
            page = next(t for t in targets if t["type"] == "page")
            ws = WebSocket(page["webSocketDebuggerUrl"])
            question = "In the beginning"
            ws.call("Page.navigate", url=f"{server.url}/?q={urllib.parse.quote(question)}&max_tokens=12&temperature=0")

            def wait_for(expr, what):
                end = time.time() + 60
                while time.time() < end:
                    v = ws.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")
                    if v:
                        return v
                    err = ws.call("Runtime.evaluate", expression="document.getElementById('error') && "
                                  "document.getElementById('error').textContent", returnByValue=True)["result"]
                    check(not err.get("value"), f"the page shows an error: {err.get('value')}")
                    time.sleep(0.1)
                raise AssertionError(f"timed out waiting for {what}")

            answer = wait_for("document.getElementById('done-2') && document.getElementById('answer-1').textContent",
                              "the first answer")
            messages = [{"role": "user", "content": question}]
            api = json.loads(urllib.request.urlopen(urllib.request.Request(
                server.url + "/v1/chat/completions",
                json.dumps({"messages": messages, "max_tokens": 12, "temperature": 0}).encode(),
                {"Content-Type": "application/json"}), timeout=60).read())
            check(answer == api["choices"][0]["message"]["content"],
                  f"page shows {answer!r}, the API answers {api['choices'][0]['message']['content']!r}")

            # A second message through the form: the conversation goes on, the cached prefix is reused.
            ws.call("Runtime.evaluate", expression="document.getElementById('input').value = 'And then?';"
                    "document.getElementById('form').requestSubmit();")
            stats = wait_for("document.getElementById('done-4') && document.getElementById('done-4').textContent",
                             "the second answer")
            cached = int(re.search(r"cached (\d+)", stats).group(1))
            check(cached > 0, f"the second turn reused no cached tokens: {stats}")

            shot = base64.b64decode(ws.call("Page.captureScreenshot", format="png")["data"])
            with open(os.path.join(out_dir, "chat_page.png"), "wb") as f:
                f.write(shot)
            w, h, ch, rows = png_pixels(shot)
            colors = set()
            blue = 0
            for row in rows[::4]:
                for x in range(0, w * ch, ch * 4):
                    px = tuple(row[x:x + 3])
                    colors.add(px)
                    if abs(px[0] - 0x2F) < 8 and abs(px[1] - 0x6F) < 8 and abs(px[2] - 0xDB) < 8:
                        blue += 1
            check(len(colors) > 8, f"the screenshot is blank ({len(colors)} colours)")
            check(blue > 20, f"no user message bubble in the screenshot ({blue} blue pixels)")
            m = server.metrics()
            check(m['flashmoe_requests_total{outcome="completed"}'] >= 3, "the server served the page's requests")
            print(f"ok   chat page: answer {answer!r}; second turn {stats!r}; screenshot {w}x{h}, "
                  f"{len(colors)} colours sampled")
        finally:
            browser.terminate()
            try:
                browser.wait(timeout=10)
            except subprocess.TimeoutExpired:
                browser.kill()
            shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL chat page: {e}")
        sys.exit(1)
