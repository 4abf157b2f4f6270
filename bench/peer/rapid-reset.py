#!/usr/bin/env python3
"""What one HTTP/2 client resetting its streams soon after opening them costs the proxy.

For each given build of the proxy (a TLS listener, one worker thread, in front of an
upstream on loopback that answers each request after a second and counts the connections
it accepts): one HTTP/2 connection opens a stream (`GET`), waits until the proxy has taken
it (a PING sent after it is answered), resets it (`RST_STREAM`, `CANCEL`), pauses PACE ms
and starts again, for SECONDS at most or until the proxy closes the connection. Printed:
streams reset, whether and when the connection closed, connections the proxy opened to the
upstream meanwhile, and the proxy's CPU time. Each reset stream is a request the proxy
began toward the upstream and abandoned.

Loopback only; every step bounded in time and count; the proxies started here are stopped
by PID.

Usage: bench/peer/rapid-reset.py [--pace-ms 20] [--seconds 5] [--tls LINE]... BIN...
(--tls: a line for every build's `[server.tls]`, e.g. "h2_reset_budget = 0".)
"""
import argparse, os, socket, sys, time

from scale import cpu_ticks, h2_frame as frame, insecure_tls, start_proxy, thread_upstream, tls_proxy_config

UP, LISTEN = 18198, 18197
accepted = 0


def count():
    global accepted
    accepted += 1


def read_frame(t):
    head = b""
    while len(head) < 9:
        got = t.recv(9 - len(head))
        if not got:
            return None
        head += got
    n = int.from_bytes(head[:3], "big")
    payload = b""
    while len(payload) < n:
        got = t.recv(n - len(payload))
        if not got:
            return None
        payload += got
    return head[3], head[4], payload


def attack(ctx, pace, seconds):
    """(streams reset, seconds until the proxy closed the connection or None)."""
    s = socket.create_connection(("127.0.0.1", LISTEN), 5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(5)
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
    block = bytes([0x82, 0x87, 0x04, 5]) + b"/slow" + bytes([0x01, 1]) + b"x"
    start, stream, reset = time.monotonic(), 1, 0
    try:
        while time.monotonic() - start < seconds and stream < 2**31 - 2:
            t.sendall(frame(1, 5, stream, block) + frame(6, 0, 0, b"taken-it"))
            while True:
                f = read_frame(t)
                if f is None:
                    return reset, time.monotonic() - start
                ty, flags, payload = f
                if ty == 6 and flags & 1 and payload == b"taken-it":
                    break
                if ty == 6 and not flags & 1:
                    t.sendall(frame(6, 1, 0, payload))
            t.sendall(frame(3, 0, stream, (8).to_bytes(4, "big")))
            reset += 1
            stream += 2
            time.sleep(pace / 1000)
    except OSError:
        return reset, time.monotonic() - start
    finally:
        t.close()
    return reset, None


def cpu_seconds(pid):
    """The CPU time, user and system, the process `pid` has used so far."""
    return sum(cpu_ticks([pid])) / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pace-ms", type=float, default=20)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--tls", action="append", default=[], help="a [server.tls] line")
    p.add_argument("bins", nargs="+")
    a = p.parse_args()
    if not 0 <= a.pace_ms <= 1000 or not 0 < a.seconds <= 60:
        sys.exit("rapid-reset.py: --pace-ms 0..1000, --seconds up to 60")
    tmp = tls_proxy_config(LISTEN, UP, "rapid-reset-")
    with open(f"{tmp}/proxy.toml", "a") as f:  # [server.tls] is its last table
        f.writelines(line + "\n" for line in a.tls)
    thread_upstream(UP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", delay=1, on_accept=count)
    for b in a.bins:
        proxy = start_proxy(b, f"{tmp}/proxy.toml", LISTEN)
        try:
            before, cpu = accepted, cpu_seconds(proxy.pid)
            reset, closed = attack(insecure_tls(h2=True), a.pace_ms, a.seconds)
            opened, cpu = accepted - before, cpu_seconds(proxy.pid) - cpu
            when = f"closed after {closed:.2f} s" if closed is not None else f"open after {a.seconds:g} s"
            print(f"{b}: {reset} streams reset ({a.pace_ms:g} ms apart), connection {when}; "
                  f"{opened} upstream connections opened; proxy CPU {cpu:.2f} s")
        finally:
            proxy.terminate()
            proxy.wait(10)


if __name__ == "__main__":
    main()
