#!/usr/bin/env python3
"""HTTP/2 frames that carry no request, sent as fast as a client can, against a proxy build.

Per attack: a fresh proxy (`BIN serve`, a TLS listener on 127.0.0.1:18397, one worker
thread) in front of a thread upstream on 127.0.0.1:18398 answering `ok` at once. ONE HTTP/2
connection over TLS sends the attack's frames as fast as the socket takes them, reading
nothing, for at most --seconds (up to 10) or until a send blocks for 2 s or fails.
Meanwhile the proxy's resident memory is sampled, the client socket is watched for the
proxy's close, and an HTTP/1.1-over-TLS `GET /` is timed once a second. Afterwards the
replies piled up are read (at most 5 s: the proxy's GOAWAY, if any), the client closes, and
2 s later the memory is read again. Prints one JSON line per attack, then a table.

Attacks: ping settings headers rst winupd cont (the default), cont-big (16 KB
CONTINUATION frames), headers-paced (--paced-batch N streams every 10 ms), rst-closed
(RST_STREAM of a stream already answered).

Loopback only; every step bounded in time and count; the proxy is stopped by its PID.

Usage: bench/peer/h2-flood.py --bin BIN [--seconds 8] [--rcvbuf N] [--repeat N] [ATTACK...]
"""
import argparse, json, os, select, socket, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import (cpu_ticks, h2_frame as frame, insecure_tls, rss_kb, start_proxy,
                   thread_upstream, tls_proxy_config)

LOG = os.path.join(__import__("tempfile").gettempdir(), "h2-flood-proxy.log")


LISTEN, UP = 18397, 18398
HOST = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERR = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
       4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
       8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
       12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
TYPES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS", 5: "PUSH",
         6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
GET_BLOCK = bytes([0x82, 0x87, 0x84, 0x01, 9]) + b"localhost"  # GET https / localhost
CLK = os.sysconf("SC_CLK_TCK")


# ---- the attacks: (setup bytes after the preface, a generator of batches) -------------
PACED_BATCH = 10  # streams per 10 ms for headers-paced (--paced-batch)


def on_new_streams(one):
    """Batches of 1000 frames `one(stream)`, each on a new client stream, until the stream
    numbers run out."""
    sid = 1
    while sid < 2**31 - 2001:
        out = []
        for _ in range(1000):
            out.append(one(sid))
            sid += 2
        yield b"".join(out), 1000


def batches(kind):
    """Yields (bytes, frames) batches forever (the caller bounds them)."""
    if kind == "ping":
        n = 0
        while True:
            out = b"".join(frame(6, 0, 0, (n + i).to_bytes(8, "big")) for i in range(2000))
            n += 2000
            yield out, 2000
    elif kind == "settings":
        one = frame(4, 0, 0)
        while True:
            yield one * 2000, 2000
    elif kind == "headers":
        yield from on_new_streams(lambda sid: frame(1, 0x5, sid, GET_BLOCK))
    elif kind == "headers-paced":
        # PACED_BATCH streams every 10 ms (10: about 1000/s, so that the proxy answers them rather than
        # refusing them over its 100 concurrent streams), never reading the answers.
        sid = 1
        while sid < 2**31 - 21:
            out = []
            for _ in range(PACED_BATCH):
                out.append(frame(1, 0x5, sid, GET_BLOCK))
                sid += 2
            time.sleep(0.01)
            yield b"".join(out), PACED_BATCH
    elif kind == "rst-closed":
        # stream 1 opened and answered, then RST_STREAM(CANCEL) on it (a closed stream),
        # over and over.
        yield frame(1, 0x5, 1, GET_BLOCK), 0
        time.sleep(0.3)
        one = frame(3, 0, 1, (8).to_bytes(4, "big"))
        while True:
            yield one * 2000, 2000
    elif kind == "rst":
        # CANCEL of idle streams.
        yield from on_new_streams(lambda sid: frame(3, 0, sid, (8).to_bytes(4, "big")))
    elif kind == "winupd":
        one = frame(8, 0, 0, (1).to_bytes(4, "big"))  # +1 on the connection window
        while True:
            yield one * 2000, 2000
    elif kind == "cont":
        # HEADERS (END_STREAM, no END_HEADERS) on stream 1, then CONTINUATION frames, each
        # a literal header field without indexing ("x-flood: vvvvvvvv"), never END_HEADERS.
        field = bytes([0x00, 7]) + b"x-flood" + bytes([8]) + b"vvvvvvvv"
        yield frame(1, 0x1, 1, GET_BLOCK), 1
        one = frame(9, 0, 1, field)
        while True:
            yield one * 2000, 2000
    elif kind == "cont-big":
        # as "cont", but each CONTINUATION a full 16 KiB frame of literal header fields
        field = bytes([0x00, 7]) + b"x-flood" + bytes([0x7F, 0x7F]) + b"v" * 254  # 265 B
        chunk = field * 61  # 16165 B: whole fields, under the 16384 B frame size
        yield frame(1, 0x1, 1, GET_BLOCK), 1
        one = frame(9, 0, 1, chunk)
        while True:
            yield one * 8, 8
    else:
        raise ValueError(kind)


# ---- helpers ----------------------------------------------------------------------------
def h2_connect(rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((HOST, LISTEN))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = insecure_tls(h2=True).wrap_socket(s, server_hostname="localhost")
    assert t.selected_alpn_protocol() == "h2", t.selected_alpn_protocol()
    return t


def probe_h1():
    """Seconds for an HTTP/1.1-over-TLS `GET /` answered 200, or an error string."""
    start = time.monotonic()
    try:
        s = socket.create_connection((HOST, LISTEN), 5)
        s.settimeout(5)
        t = insecure_tls().wrap_socket(s, server_hostname="localhost")
        t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got and len(got) < 65536:
            d = t.recv(4096)
            if not d:
                break
            got += d
        t.close()
        status = got.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 200 " not in status + " ":
            return f"bad:{status!r}"
        return round(time.monotonic() - start, 3)
    except Exception as e:  # noqa: BLE001 - reported
        return f"err:{type(e).__name__}@{time.monotonic() - start:.1f}s"


def read_replies(t, limit_s=5.0):
    """Reads what the proxy sent (at most limit_s seconds): frame counts by type, GOAWAY(s),
    RST_STREAM codes, how it ended."""
    t.settimeout(1.0)
    buf, total, counts, goaways, rsts = b"", 0, {}, [], {}
    end, how = time.monotonic() + limit_s, "still open (read time limit)"
    while time.monotonic() < end:
        try:
            d = t.recv(1 << 16)
        except socket.timeout:
            how = "still open (nothing more within 1 s)"
            break
        except (OSError, ValueError) as e:
            how = f"recv error {type(e).__name__}: {e}"
            break
        if not d:
            how = "EOF (proxy closed)"
            break
        total += len(d)
        buf += d
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            ty, payload = buf[3], buf[9:9 + n]
            name = TYPES.get(ty, str(ty))
            counts[name] = counts.get(name, 0) + 1
            if ty == 7 and len(payload) >= 8:
                goaways.append({"last_stream": int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                                "code": ERR.get(int.from_bytes(payload[4:8], "big"),
                                                int.from_bytes(payload[4:8], "big")),
                                "debug": payload[8:80].decode(errors="replace")})
            if ty == 3 and len(payload) == 4:
                c = ERR.get(int.from_bytes(payload, "big"), payload.hex())
                rsts[c] = rsts.get(c, 0) + 1
            buf = buf[9 + n:]
    return {"bytes_read": total, "frames": counts, "goaway": goaways, "rst_codes": rsts,
            "end": how}


# ---- one attack -------------------------------------------------------------------------
def run(binary, config, kind, seconds, rcvbuf=None, repeat=1):
    """Each attack `repeat` times against one fresh proxy (one JSON line per round)."""
    proxy = start_proxy(binary, config, LISTEN, log=LOG)
    rounds = []
    try:
        for rnd in range(1, repeat + 1):
            r = one_round(proxy, kind, seconds, rcvbuf)
            r["round"] = rnd
            print(json.dumps(r), flush=True)
            rounds.append(r)
        return rounds
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except Exception:  # noqa: BLE001
            proxy.kill()
            proxy.wait(5)


def one_round(proxy, kind, seconds, rcvbuf):
    pid = proxy.pid
    res = {"attack": kind, "proxy_pid": pid}
    if True:
        res["probe_before_s"] = probe_h1()
        time.sleep(0.3)
        rss0 = rss_kb([pid])
        cpu0 = sum(cpu_ticks([pid]))
        t = h2_connect(rcvbuf)
        res["client_rcvbuf"] = t.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        fd = t.fileno()
        stop = threading.Event()
        state = {"peak": rss0, "closed_at": None, "closed_how": None, "series": []}

        def monitor(t0):
            p = select.poll()
            p.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            next_mark = 1.0
            while not stop.is_set() and time.monotonic() - t0 < seconds + 15:
                try:
                    r = rss_kb([pid])
                except OSError:
                    break
                state["peak"] = max(state["peak"], r)
                el = time.monotonic() - t0
                if el >= next_mark:
                    state["series"].append((round(el, 1), r))
                    next_mark += 1.0
                if state["closed_at"] is None:
                    for _, ev in p.poll(0):
                        state["closed_at"] = round(el, 3)
                        state["closed_how"] = ("RST/ERR" if ev & (select.POLLHUP | select.POLLERR)
                                               else "FIN")
                time.sleep(0.02)

        probes = []

        def prober(t0):
            k = 0
            while not stop.is_set() and k < int(seconds) + 2:
                at = round(time.monotonic() - t0, 1)
                probes.append((at, probe_h1()))
                k += 1
                stop.wait(max(0.0, t0 + k + 0.5 - time.monotonic()))

        t.settimeout(2.0)  # a send that blocks for over 2 s ends the attack
        t.sendall(PREFACE + frame(4, 0, 0))
        t0 = time.monotonic()
        ths = [threading.Thread(target=monitor, args=(t0,), daemon=True),
               threading.Thread(target=prober, args=(t0,), daemon=True)]
        for th in ths:
            th.start()
        sent_frames = sent_bytes = 0
        why = f"time limit {seconds:g} s"
        for data, n in batches(kind):
            if time.monotonic() - t0 >= seconds:
                break
            try:
                t.sendall(data)
            except socket.timeout:
                why = f"send blocked > 2 s (at {time.monotonic() - t0:.2f} s)"
                break
            except (OSError, ValueError) as e:
                why = f"send failed {type(e).__name__} at {time.monotonic() - t0:.2f} s"
                break
            sent_frames += n
            sent_bytes += len(data)
        flood_s = time.monotonic() - t0
        rss_end = rss_kb([pid])
        time.sleep(0.3)
        stop.set()
        for th in ths:
            th.join(15)
        res.update({"frames_sent": sent_frames, "bytes_sent": sent_bytes,
                    "flood_s": round(flood_s, 2), "stopped": why,
                    "rss_before_kb": rss0, "rss_peak_kb": max(state["peak"], rss_end),
                    "rss_end_of_flood_kb": rss_end, "rss_series": state["series"],
                    "closed_by_proxy_at_s": state["closed_at"],
                    "closed_how": state["closed_how"], "probes": probes})
        res["replies"] = read_replies(t)
        try:
            t.close()
        except OSError:
            pass
        time.sleep(2)
        res["rss_2s_after_close_kb"] = rss_kb([pid])
        res["proxy_cpu_s"] = round((sum(cpu_ticks([pid])) - cpu0) / CLK, 2)
        res["probe_after_s"] = probe_h1()
        res["proxy_alive"] = proxy.poll() is None
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="the proxy binary")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--rcvbuf", type=int, default=None,
                   help="the attacking client's SO_RCVBUF (default: the kernel's)")
    p.add_argument("--paced-batch", type=int, default=10,
                   help="headers-paced: streams sent every 10 ms (1..100)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of each attack against the same proxy (1..5)")
    p.add_argument("attacks", nargs="*",
                   default=["ping", "settings", "headers", "rst", "winupd", "cont"])
    a = p.parse_args()
    if not 0 < a.seconds <= 10 or not 1 <= a.paced_batch <= 100 or not 1 <= a.repeat <= 5:
        sys.exit("--seconds 0..10, --paced-batch 1..100, --repeat 1..5")
    global PACED_BATCH
    PACED_BATCH = a.paced_batch
    tmp = tls_proxy_config(LISTEN, UP, "h2flood-")
    thread_upstream(UP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    results = []
    for kind in a.attacks:
        results += run(a.bin, f"{tmp}/proxy.toml", kind, a.seconds, a.rcvbuf, a.repeat)
    print("| attack | frames sent | stopped | closed by the proxy at (s) | its GOAWAY | RSS before / peak / after, KiB | proxy CPU s | GET / answered in (s): before; during; after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        goaway = "; ".join(f"{g['code']} {g['debug']!r}" for g in r["replies"]["goaway"]) or "-"
        during = ", ".join(str(p[1]) for p in r["probes"]) or "-"
        print(f"| {r['attack']} | {r['frames_sent']:,} | {r['stopped']} | {r['closed_by_proxy_at_s']} | {goaway} "
              f"| {r['rss_before_kb']} / {r['rss_peak_kb']} / {r['rss_2s_after_close_kb']} | {r['proxy_cpu_s']} "
              f"| {r['probe_before_s']}; {during}; {r['probe_after_s']} |")
    print(f"(the proxy's log: {LOG})", file=sys.stderr)


if __name__ == "__main__":
    main()
