#!/usr/bin/env python3
"""Helpers for bench/memory.sh (Python 3 standard library only, loopback only).

  memory.py upstream HOST:PORT
      A fake payment API: reads each request to its end (Content-Length or chunked),
      answers 200 with Klarna's STEP_UP_REQUIRED (bench/peer/upstream-body.json);
      GET /health answers a small JSON. Keep-alive. Runs until SIGTERM/SIGINT.

  memory.py client --target HOST:PORT --pid PID --conns N [--body-bytes B]
      N connections at once, each POSTs one Klarna payment padded to exactly B bytes
      (default 1 MiB) with a long "description". Every connection first sends its header
      and all of its body but the last --tail bytes; once each has done that (or already
      got its answer, e.g. a 503), the proxy's memory is read (the "in flight" point:
      everything it admitted is buffered). Then the tails go out and every answer is read.
      VmRSS of PID is sampled every 20 ms throughout. Prints one JSON object.

  memory.py status --pid PID
      VmRSS and VmHWM of PID (kB), as JSON.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def status(pid):
    """VmRSS, VmHWM (kB) of pid from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def hostport(s):
    host, port = s.rsplit(":", 1)
    if not (host.startswith("127.") or host in ("localhost", "[::1]", "::1")):
        sys.exit(f"memory.py: {s} is not a loopback address")
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------ upstream

async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def read_body(reader, headers):
    """Reads (and counts) a body; returns its length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        n = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return n
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise ConnectionError("body cut short")
                left -= len(chunk)
            await reader.readexactly(2)
            n += size
    left = int(headers.get("content-length", "0"))
    n = left
    while left:
        chunk = await reader.read(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("body cut short")
        left -= len(chunk)
    return n


async def upstream(listen):
    host, port = hostport(listen)
    with open(os.path.join(HERE, "peer", "upstream-body.json"), "rb") as f:
        stepup = f.read().strip()
    health = b'{"status":"ok"}'

    async def serve(reader, writer):
        try:
            while True:
                try:
                    line, headers = await read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await read_body(reader, headers)
                body = health if line.startswith("GET ") else stepup
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


# ------------------------------------------------------------------ client

def klarna_body(size):
    with open(os.path.join(HERE, "peer", "request.json")) as f:
        doc = json.load(f)
    doc["description"] = ""
    base = len(json.dumps(doc, separators=(",", ":")).encode())
    if size < base:
        sys.exit(f"memory.py: --body-bytes must be at least {base}")
    doc["description"] = "x" * (size - base)
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size
    return body


class SockReader:
    """Buffered reads over a non-blocking socket (loop.sock_recv): a failed send on the
    same socket does not stop it reading what the peer sent before it closed."""

    def __init__(self, loop, sock):
        self.loop, self.sock, self.buf = loop, sock, b""

    async def _more(self):
        data = await self.loop.sock_recv(self.sock, 1 << 16)
        if not data:
            raise asyncio.IncompleteReadError(self.buf, None)
        self.buf += data

    async def readuntil(self, sep):
        while sep not in self.buf:
            await self._more()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def read(self, n):
        if not self.buf:
            try:
                await self._more()
            except asyncio.IncompleteReadError:
                return b""
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def readexactly(self, n):
        while len(self.buf) < n:
            await self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


async def one(host, port, head, body, tail, go, st):
    """One connection; st collects what happened to it."""
    st.update(status=None, error=None, send_error=None, ready=asyncio.Event())
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except OSError as e:
        st["error"] = f"connect: {e.__class__.__name__}"
        st["ready"].set()
        sock.close()
        return

    async def send():
        view = memoryview(body)
        try:
            await loop.sock_sendall(sock, head)
            await loop.sock_sendall(sock, view[:len(body) - tail])
            st["ready"].set()
            await go.wait()
            await loop.sock_sendall(sock, view[len(body) - tail:])
        except OSError as e:  # the proxy closed: its answer may still be there to read
            st["send_error"] = e.__class__.__name__
            st["ready"].set()

    sender = asyncio.ensure_future(send())
    reader = SockReader(loop, sock)
    try:
        line, headers = await read_head(reader)
        st["status"] = int(line.split()[1])
        st["ready"].set()
        await read_body(reader, headers)
    except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, IndexError) as e:
        if st["status"] is None:
            st["error"] = "closed without an answer" if isinstance(e, asyncio.IncompleteReadError) \
                else e.__class__.__name__
    finally:
        st["ready"].set()
        sender.cancel()
        try:
            await sender
        except asyncio.CancelledError:
            pass
        sock.close()


async def client(a):
    host, port = hostport(a.target)
    body = klarna_body(a.body_bytes)
    head = (f"POST {a.path} HTTP/1.1\r\nHost: {a.target}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    samples = {"max_rss": 0}
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            try:
                samples["max_rss"] = max(samples["max_rss"], status(a.pid)["VmRSS"])
            except (OSError, KeyError):
                pass
            await asyncio.sleep(0.02)

    before = status(a.pid)
    smp = asyncio.ensure_future(sampler())
    go = asyncio.Event()
    states = [{} for _ in range(a.conns)]
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one(host, port, head, body, a.tail, go, st)) for st in states]
    await asyncio.sleep(0)
    # Phase 1: every connection has sent all but its tail, or has its answer.
    try:
        await asyncio.wait_for(asyncio.gather(*(st["ready"].wait() for st in states)), a.timeout)
        all_ready = True
    except asyncio.TimeoutError:
        all_ready = False
    t_ready = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    inflight = status(a.pid)
    answered_early = sum(1 for st in states if st["status"] is not None)
    # Phase 2: tails out, every answer read.
    go.set()
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    wall = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    after = status(a.pid)
    stop.set()
    await smp
    codes = {}
    for st in states:
        k = str(st["status"]) if st["status"] is not None else (st["error"] or "no answer")
        codes[k] = codes.get(k, 0) + 1
    print(json.dumps({
        "conns": a.conns, "body_bytes": len(body), "all_ready": all_ready,
        "ready_s": round(t_ready, 2), "wall_s": round(wall, 2), "unfinished": len(pending),
        "answered_before_tail": answered_early, "codes": codes,
        "send_failed": sum(1 for st in states if st["send_error"]),
        "rss_before_kb": before["VmRSS"], "rss_inflight_kb": inflight["VmRSS"],
        "rss_max_sampled_kb": samples["max_rss"], "rss_after_kb": after["VmRSS"],
        "hwm_kb": after["VmHWM"],
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("listen")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--pid", type=int, required=True)
    c.add_argument("--conns", type=int, required=True)
    c.add_argument("--body-bytes", type=int, default=1 << 20)
    c.add_argument("--tail", type=int, default=1024, help="bytes held back until all are in flight")
    c.add_argument("--path", default="/payments")
    c.add_argument("--timeout", type=float, default=60.0, help="bound of each phase, seconds")
    c.add_argument("--settle", type=float, default=0.5, help="seconds before each memory reading")
    s = sub.add_parser("status")
    s.add_argument("--pid", type=int, required=True)
    a = p.parse_args()
    if a.cmd == "upstream":
        asyncio.run(upstream(a.listen))
    elif a.cmd == "client":
        if not 1 <= a.conns <= 1000:
            sys.exit("memory.py: --conns must be 1..1000")
        if not 0 < a.timeout <= 120:
            sys.exit("memory.py: --timeout must be at most 120 s")
        asyncio.run(client(a))
    else:
        print(json.dumps(status(a.pid)))


if __name__ == "__main__":
    main()
