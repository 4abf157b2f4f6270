#!/usr/bin/env bash
# How the cost grows: the peer benchmark (bench/peer/klarna-stepup.sh, every peer and the
# project's proxy in one run) at 50, 1,000 and 5,000 client connections with the harness's
# 1.5 KB Klarna payment, and at 50 connections with 16 KB and 256 KB payments (more line
# items; the upstream's answer is the same); then resident memory per idle keep-alive
# connection with IDLE_CONNS of them to each proxy. One table, in <run dir>/scale.md:
# each point's ratios to the plain-proxy peers of its own run, and how much worse than at
# the base point (50 connections, 1.5 KB) each is.
#
# Env knobs:
#   RUNS=1            runs per point (the table gives the median ratio over them).
#   CONNS_LIST="50 1000 5000"   BODY_LIST="16384 262144"   IDLE_CONNS=9800 (0: skip)
#   DURATION, WARMUP, WORKERS, STEPUP_BIN, NO_BUILD...: as for klarna-stepup.sh.
# Bounded: every case is wrk -d DURATION (≤ 10 s); at the defaults about 10 minutes a run.
set -euo pipefail
die() { echo "scale.sh: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
RUN=${PEER_RUN_DIR:-$TARGET_DIR/peer-bench}
[[ $RUN == /* ]] || RUN=$ROOT/$RUN
mkdir -p "$RUN/scale"

RUNS=${RUNS:-1}
CONNS_LIST=${CONNS_LIST-50 1000 5000}
BODY_LIST=${BODY_LIST-16384 262144}
IDLE_N=${IDLE_CONNS:-9800}
unset IDLE_CONNS   # the load points must not see it
[[ $RUNS =~ ^[0-9]+$ ]] && (( RUNS >= 1 && RUNS <= 9 )) || die "RUNS must be 1..9"

# Enough nginx worker connections (and open files) for the largest point: a proxy takes two
# a client (the client's and its request's upstream connection), the upstream takes the
# direct cases' clients beside the proxies' kept connections. With fewer, nginx closes idle
# keep-alive clients to make room (wrk counts read errors) and its figures are not its own.
max=50
for c in $CONNS_LIST; do (( c > max )) && max=$c; done
max=$(( 2 * max ))
(( IDLE_N > max )) && max=$IDLE_N
export WORKER_CONNECTIONS=$(( max + 512 ))
# The proxy under test is built once, then reused.
first=1
point() {  # label conns body_file
  local label=$1 conns=$2 body=$3 i
  for i in $(seq "$RUNS"); do
    echo "== scale point $label, run $i/$RUNS"
    local build=1
    (( first == 1 )) || build=0
    first=0
    NO_BUILD=$(( build == 0 ? 1 : ${NO_BUILD:-0} )) CONNS=$conns REQUEST_JSON=$body PACED=0 \
      RESULT_TSV="$RUN/scale/$label-$i.tsv" "$HERE/klarna-stepup.sh" > "$RUN/scale/$label-$i.log" 2>&1 \
      || { tail -20 "$RUN/scale/$label-$i.log" >&2; die "point $label failed (log: $RUN/scale/$label-$i.log)"; }
    grep -E '^\| (x1|x2|b|e|h1|h2|f) ' "$RUN/scale/$label-$i.log" | head -7 || true
  done
}

rm -f "$RUN"/scale/*.tsv
for c in $CONNS_LIST; do point "c$c-b1547" "$c" "$HERE/request.json"; done
for b in $BODY_LIST; do
  python3 "$HERE/scale.py" body --bytes "$b" --out "$RUN/scale/request-$b.json" > /dev/null
  point "c50-b$b" 50 "$RUN/scale/request-$b.json"
done
if (( IDLE_N > 0 )); then
  echo "== idle connections: $IDLE_N to each proxy"
  NO_BUILD=1 IDLE_CONNS=$IDLE_N IDLE_TSV="$RUN/scale/idle.tsv" "$HERE/klarna-stepup.sh" \
    > "$RUN/scale/idle.log" 2>&1 || { tail -20 "$RUN/scale/idle.log" >&2; die "idle failed"; }
fi

python3 - "$RUN/scale" "$RUNS" > "$RUN/scale.md" <<'EOF'
import csv, glob, os, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])

def rows(path):
    with open(path) as f:
        return {r["case"]: r for r in csv.DictReader(f, delimiter="\t")}

def num(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError, TypeError):
        return None

def ratio(a, b):
    return a / b if a is not None and b else None

# Each point's ratios, per run, then the median over runs.
RATIOS = [
    ("GET CPU / nginx", "x1", "b", "proxy_us_cpu_per_req"),
    ("GET CPU / HAProxy", "x1", "h1", "proxy_us_cpu_per_req"),
    ("POST CPU / nginx POST", "x2", "e", "proxy_us_cpu_per_req"),
    ("POST CPU / HAProxy POST", "x2", "h2", "proxy_us_cpu_per_req"),
    ("POST req/s / nginx+Lua", "x2", "f", "rps"),
    ("POST p99 / nginx POST p99", "x2", "e", "p99_ms"),
]
points = {}
for path in sorted(glob.glob(os.path.join(d, "c*-b*-*.tsv"))):
    label = os.path.basename(path).rsplit("-", 1)[0]
    points.setdefault(label, []).append(rows(path))

def key(label):
    c, b = label.split("-")
    return (int(b[1:]) != 1547, int(b[1:]), int(c[1:]))

table = {}
for label in sorted(points, key=key):
    med = {}
    for name, a, b, k in RATIOS:
        vals = [ratio(num(r.get(a, {}), k), num(r.get(b, {}), k)) for r in points[label]]
        vals = [v for v in vals if v is not None]
        med[name] = statistics.median(vals) if vals else None
    errs = sum(int(num(r.get(c, {}), "errors") or 0) for r in points[label] for c in ("x1", "x2"))
    other = max((num(r.get(c, {}), "other_pct") or 0) for r in points[label] for c in r)
    cpu = [num(r.get("x2", {}), "proxy_us_cpu_per_req") for r in points[label]]
    cpu = [v for v in cpu if v is not None]
    table[label] = (med, errs, other, statistics.median(cpu) if cpu else None)

print("# How cost grows: connections and body size\n")
print(f"Each point: `bench/peer/klarna-stepup.sh` (every peer and the proxy in one run), "
      f"median of {runs} run(s). A ratio's change is against the base point (50 connections, "
      "1.5 KB): positive is worse (for req/s, lower is worse).\n")
names = [n for n, *_ in RATIOS]
print("| point | " + " | ".join(names) + " | proxy POST µs/req | errors | max other % |")
print("|---|" + "---|" * (len(names) + 3))
base = table.get("c50-b1547", (None,))[0]
worst = []
for label, (med, errs, other, cpu) in table.items():
    cells = []
    for n in names:
        v = med[n]
        if v is None:
            cells.append("–")
            continue
        cell = f"{v:.2f}"
        if base and base.get(n) and label != "c50-b1547":
            change = (base[n] / v - 1) if "req/s" in n else (v / base[n] - 1)
            cell += f" ({change * 100:+.0f} %)"
            if change > 0.10 and "HAProxy" not in n:
                worst.append(f"{label}: {n} {change * 100:+.0f} %")
        cells.append(cell)
    c, b = label.split("-")
    print(f"| {int(c[1:]):,} conns, {int(b[1:]) / 1024:.1f} KB | " + " | ".join(cells)
          + f" | {cpu if cpu is not None else '–'} | {errs} | {other:.0f} |")
print()
print("More than 10 % worse than at the base point: " + ("; ".join(worst) if worst else "none") + ".")
idle = os.path.join(d, "idle.tsv")
if os.path.exists(idle):
    print("\n## Resident memory per idle keep-alive connection\n")
    print("| proxy | connections held | RSS with one (KiB) | RSS with all (KiB) | bytes per connection |")
    print("|---|---|---|---|---|")
    with open(idle) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            print(f"| {r['name']} | {r['open']} of {r['conns']} | {r['rss_one_kb']} | {r['rss_all_kb']} | {r['bytes_per_conn']} |")
EOF
cat "$RUN/scale.md"
echo "== written: $RUN/scale.md"
