#!/usr/bin/env python3
"""Helpers for bench/peer/scale.sh (Python 3 standard library only, loopback only).

  scale.py body --bytes N --out FILE
      The harness's Klarna payment (request.json) with line items added until it is about
      N bytes (within one line item); the answer the upstream gives is the same for every
      size. Prints the size written.

  scale.py idle --target HOST:PORT --conns N --pids P[,P...] [--hold SECS] [--tls | --h2]
      Opens N keep-alive connections to the target (over TLS with --tls: HTTP/1.1, with
      --h2: HTTP/2; the certificate not checked), each sends one `GET /health` and reads
      its answer (so every connection is accepted, served and then idle), holds them all
      open for --hold seconds (default 3), and reads the summed VmRSS of the PIDs (the
      proxy's processes) after one such connection and with all N held. Then closes them.
      Prints one JSON object: {"conns", "open", "rss_one_kb", "rss_all_kb",
      "bytes_per_conn"}.

  scale.py paced --target HOST:PORT --conns N --every SECS --seconds D --pids P[,P...]
      N keep-alive connections, each sending one `GET /health` every SECS seconds (the
      first at a random moment within SECS) for D seconds: a proxy that lets go of an idle
      connection's state after less than SECS serves every request on a connection it let
      go of. Reads the PIDs' CPU time (user and system, from /proc) over the D seconds.
      Prints one JSON object: {"conns", "every", "requests", "user_us_per_req",
      "sys_us_per_req"}.
"""

import argparse
import asyncio
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def body(size, out):
    with open(os.path.join(HERE, "request.json")) as f:
        doc = json.load(f)
    items = doc["supplementary_purchase_data"]["line_items"]
    template = items[0]
    n = 0
    while len(json.dumps(doc, separators=(",", ":")).encode()) < size:
        n += 1
        item = dict(template)
        item["name"] = f"{template['name']} #{n}"
        item["reference"] = f"order-1234-line-extra-{n}"
        item["product_identifier"] = f"SKU-X{n:06d}"
        items.append(item)
    data = json.dumps(doc, separators=(",", ":")).encode()
    with open(out, "wb") as f:
        f.write(data)
    print(len(data))


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def h2_frame(ty, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ty, flags]) + stream.to_bytes(4, "big") + payload


async def h2_get(reader, writer, host):
    """HTTP/2 (prior knowledge of the ALPN's choice): the preface, `GET /health` on stream 1,
    read to its end (SETTINGS and PINGs answered on the way)."""
    # HPACK, not indexed: :method GET, :scheme https, :path /health, :authority host.
    block = bytes([0x82, 0x87, 0x04, 7]) + b"/health" + bytes([0x01, len(host)]) + host.encode()
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) + h2_frame(1, 0x5, 1, block))
    await writer.drain()
    while True:
        head = await asyncio.wait_for(reader.readexactly(9), 10)
        payload = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[:3], "big")), 10)
        ty, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        if ty == 4 and not flags & 1:
            writer.write(h2_frame(4, 1, 0))
        elif ty == 6 and not flags & 1:
            writer.write(h2_frame(6, 1, 0, payload))
        elif ty in (7, 3):
            raise ValueError("GOAWAY or RST_STREAM")
        elif ty in (0, 1) and stream == 1 and flags & 1:
            await writer.drain()
            return


async def hold_one(host, port, ready, release, opened, tls=None):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=tls and "localhost"), 10)
    except (OSError, asyncio.TimeoutError):
        ready.release()
        return
    try:
        tls_object = writer.get_extra_info("ssl_object")
        if tls_object is not None and tls_object.selected_alpn_protocol() == "h2":
            await h2_get(reader, writer, host)
        else:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 10)
        opened.append(1)
        ready.release()
        await release.wait()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        ready.release()
    finally:
        writer.close()


def thread_upstream(port, answer, delay=0.0, on_accept=None):
    """An HTTP/1.1 upstream on 127.0.0.1:`port`, a thread per connection: each request (a
    head, no body) answered with the bytes `answer` after `delay` seconds; `on_accept()` is
    called for each connection it accepts."""
    import socket, threading
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)

    def serve(c):
        f = c.makefile("rb")
        try:
            while f.readline():
                while f.readline() not in (b"\r\n", b""):
                    pass
                time.sleep(delay)
                c.sendall(answer)
        except OSError:
            pass
        finally:
            c.close()

    def accept():
        while True:
            c, _ = s.accept()
            if on_accept:
                on_accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def tls_proxy_config(listen, upstream, prefix):
    """A temporary folder with a self-signed certificate for localhost (openssl) and a
    `proxy.toml` for the proxy: a TLS listener on 127.0.0.1:`listen` in front of
    127.0.0.1:`upstream`, one worker thread. Its path."""
    import subprocess, tempfile
    tmp = tempfile.mkdtemp(prefix=prefix)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    with open(f"{tmp}/proxy.toml", "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{listen}"\nupstream = "127.0.0.1:{upstream}"\nthreads = 1\n'
                f'[server.tls]\ncert = "{tmp}/cert.pem"\nkey = "{tmp}/key.pem"\n')
    return tmp


def start_proxy(binary, config, listen, log=None):
    """`binary serve --config config`, once it accepts on 127.0.0.1:`listen` (10 s at most)
    and has settled: its process, to stop by its PID. Its log appended to the file `log`, if
    given (`RUST_LOG` as set, else debug for the proxy and h2), else discarded."""
    import socket, subprocess
    env = dict(os.environ)
    if log:
        env.setdefault("RUST_LOG", "info,klarna_stepup=debug,h2=debug")
    err = open(log, "ab") if log else subprocess.DEVNULL
    proxy = subprocess.Popen([binary, "serve", "--config", config], env=env,
                             stdout=subprocess.DEVNULL, stderr=err)
    if log:
        err.close()  # the proxy has its own descriptor
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", listen), 1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(0.5)
    return proxy


def insecure_tls(h2=False):
    """A client TLS context for the loopback peers' self-signed certificates: HTTP/1.1 only,
    or HTTP/2 only."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
    return ctx


async def idle(target, conns, pids, hold, tls=False, h2=False):
    host, port = target.rsplit(":", 1)
    port = int(port)
    tls = insecure_tls(h2) if tls or h2 else None
    release = asyncio.Event()
    opened = []
    # One connection first: the proxy's memory with a connection served, before the rest.
    first = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(hold_one(host, port, first, release, opened, tls))]
    await asyncio.wait_for(first.acquire(), 15)
    time.sleep(0.5)
    rss_one = rss_kb(pids)
    ready = asyncio.Semaphore(0)
    deadline = time.monotonic() + 60
    # Opened in batches, so that the listen backlog never overflows.
    for start in range(1, conns, 500):
        batch = range(start, min(conns, start + 500))
        for _ in batch:
            tasks.append(asyncio.create_task(hold_one(host, port, ready, release, opened, tls)))
        for _ in batch:
            await asyncio.wait_for(ready.acquire(), max(1, deadline - time.monotonic()))
    time.sleep(hold)
    rss_all = rss_kb(pids)
    release.set()
    await asyncio.gather(*tasks)
    extra = len(opened) - 1
    per = (rss_all - rss_one) * 1024 / extra if extra > 0 else None
    print(json.dumps({"conns": conns, "open": len(opened), "rss_one_kb": rss_one,
                      "rss_all_kb": rss_all,
                      "bytes_per_conn": None if per is None else round(per)}))


def cpu_ticks(pids):
    """(user, system) clock ticks used so far by the processes `pids`."""
    u = s = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        u, s = u + int(fields[11]), s + int(fields[12])
    return u, s


async def paced(target, conns, every, seconds, pids):
    import random
    host, port = target.rsplit(":", 1)
    req = b"GET /health HTTP/1.1\r\nHost: peer\r\n\r\n"
    done = 0

    async def one(end):
        nonlocal done
        r, w = await asyncio.open_connection(host, int(port))
        await asyncio.sleep(random.random() * every)
        while time.monotonic() < end:
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await r.readexactly(length)
            done += 1
            await asyncio.sleep(every)
        w.close()

    u0, s0 = cpu_ticks(pids)
    end = time.monotonic() + seconds
    await asyncio.gather(*(one(end) for _ in range(conns)))
    u1, s1 = cpu_ticks(pids)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    print(json.dumps({
        "conns": conns,
        "every": every,
        "requests": done,
        "user_us_per_req": round((u1 - u0) * tick_us / max(done, 1), 1),
        "sys_us_per_req": round((s1 - s0) * tick_us / max(done, 1), 1),
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("body")
    b.add_argument("--bytes", type=int, required=True)
    b.add_argument("--out", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--target", required=True)
    i.add_argument("--conns", type=int, required=True)
    i.add_argument("--pids", required=True)
    i.add_argument("--hold", type=float, default=3)
    i.add_argument("--tls", action="store_true")
    i.add_argument("--h2", action="store_true", help="over TLS, HTTP/2 (ALPN h2)")
    c = sub.add_parser("paced")
    c.add_argument("--target", required=True)
    c.add_argument("--conns", type=int, required=True)
    c.add_argument("--every", type=float, required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--pids", required=True)
    a = p.parse_args()
    if a.cmd == "body":
        body(a.bytes, a.out)
        return
    host = a.target.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit("scale.py: loopback targets only")
    pids = [int(x) for x in a.pids.split(",") if x]
    if a.cmd == "paced":
        if not 0.1 <= a.every <= 30 or not 1 <= a.seconds <= 60 or not 1 <= a.conns <= 5000:
            sys.exit("scale.py: --every 0.1..30 s, --seconds 1..60, --conns 1..5000")
        asyncio.run(paced(a.target, a.conns, a.every, a.seconds, pids))
    else:
        if not 1 <= a.hold <= 30 or not 1 <= a.conns <= 20000:
            sys.exit("scale.py: --hold 1..30 s, --conns 1..20000")
        asyncio.run(idle(a.target, a.conns, pids, a.hold, a.tls, a.h2))


if __name__ == "__main__":
    main()
