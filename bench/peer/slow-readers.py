#!/usr/bin/env python3
"""Memory a client that reads nothing of a large answer makes the proxy hold.

For each given build of the proxy (a TLS listener, one worker thread, in front of an
upstream on loopback that answers every request with 32 MiB): CONNS HTTP/1.1 connections
each ask for the answer and read none of it; then one HTTP/2 connection opens STREAMS
streams asking for it and reads none of it. The proxy's resident memory is read before and
after each, once the answers have stalled. Loopback only; every step bounded in time; the
proxies started here are stopped by PID.

Usage: bench/peer/slow-readers.py [--conns 100] [--streams 200] BIN...
"""
import argparse, socket, sys, time

from scale import h2_frame as frame, insecure_tls, rss_kb, start_proxy, thread_upstream, tls_proxy_config

BODY = b"a" * (32 << 20)
UP, LISTEN = 18196, 18195


def tls_socket(ctx):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", LISTEN))
    return ctx.wrap_socket(s, server_hostname="localhost")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("bins", nargs="+")
    a = p.parse_args()
    if not 1 <= a.conns <= 1000 or not 1 <= a.streams <= 1000:
        sys.exit("slow-readers.py: --conns and --streams 1..1000")
    tmp = tls_proxy_config(LISTEN, UP, "slow-readers-")
    thread_upstream(UP, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
    ctx1, ctx2 = insecure_tls(), insecure_tls(h2=True)
    def h1():
        conns = []
        for _ in range(a.conns):
            t = tls_socket(ctx1)
            t.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(t)
        return conns

    def h2():
        t = tls_socket(ctx2)
        window = 0x7FFFFFFF
        out = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
               + frame(4, 0, 0, (4).to_bytes(2, "big") + window.to_bytes(4, "big"))
               + frame(8, 0, 0, (window - 65535).to_bytes(4, "big")))
        block = bytes([0x82, 0x87, 0x04, 4]) + b"/big" + bytes([0x01, 1]) + b"x"
        for i in range(a.streams):
            out += frame(1, 5, 1 + 2 * i, block)
        t.sendall(out)
        return [t]

    def held_kb(b, clients):
        """The proxy's memory with `clients`' connections stalled, less its memory before."""
        proxy = start_proxy(b, f"{tmp}/proxy.toml", LISTEN)
        try:
            base = rss_kb([proxy.pid])
            held = clients()
            time.sleep(5)
            kb = rss_kb([proxy.pid]) - base
            for t in held:
                t.close()
            return kb
        finally:
            proxy.terminate()
            proxy.wait(10)

    for b in a.bins:
        one = held_kb(b, h1) * 1024 // a.conns
        many = held_kb(b, h2)
        print(f"{b}: {a.conns} HTTP/1.1 connections reading nothing: {one} bytes each; "
              f"one HTTP/2 connection with {a.streams} streams reading nothing: {many} KiB")


if __name__ == "__main__":
    main()
