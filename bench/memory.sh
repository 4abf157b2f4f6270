#!/usr/bin/env bash
# The proxy's resident memory (`./x memory`): VmRSS / VmHWM from /proc/PID/status, idle
# and with 50 and 500 connections at once, each POSTing a 1 MiB Klarna payment. Each case
# runs on a fresh proxy (so VmHWM is that case's peak) in front of a fake payment API
# (bench/memory.py upstream) that reads every body to its end. The config is the default
# plus body_limit = 2 MiB. Past [server] buffer_budget_bytes (default 64 MiB) of buffered
# candidates, new ones get 503 `overloaded`: memory is bounded by body_limit x the requests
# being buffered, and by the budget. Loopback only; each phase of a case is bounded (60 s);
# everything started here is stopped by its PID.
#
# Env knobs:
#   STEPUP_BIN=<path>   measure this binary (no build); default: build the release binary
#   STEPUP_CMD='<cmd>'  or this command line (no build; sees $LISTEN, $UPSTREAM, $CONFIG)
#   NO_BUILD=1          use what is in the target dir
#   CASES="0 50 500"    connection counts (0 = idle; each 1..1000)
#   BODY_BYTES=1048576  candidate body size;  BODY_LIMIT=2097152 (config body_limit)
#   BUDGET=<bytes>      [server] buffer_budget_bytes (default: not written, the proxy's default)
#   MEMORY_PORT=18094   the proxy's port on 127.0.0.1; the fake upstream listens on +2
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
RUN=$TARGET_DIR/memory-bench
mkdir -p "$RUN"

MEMORY_PORT=${MEMORY_PORT:-18094}   # the proxy; the fake upstream on +2
[[ $MEMORY_PORT =~ ^[0-9]+$ ]] && (( MEMORY_PORT >= 1024 && MEMORY_PORT <= 65000 )) || { echo "memory.sh: MEMORY_PORT must be 1024..65000" >&2; exit 1; }
LISTEN=127.0.0.1:$MEMORY_PORT
UPSTREAM=127.0.0.1:$(( MEMORY_PORT + 2 ))
CASES=${CASES:-0 50 500}
BODY_BYTES=${BODY_BYTES:-1048576}
BODY_LIMIT=${BODY_LIMIT:-2097152}
BUDGET=${BUDGET:-}

die() { echo "memory.sh: $*" >&2; exit 1; }
for t in python3 ss curl; do command -v "$t" >/dev/null || die "missing $t"; done
for n in $CASES; do [[ $n =~ ^[0-9]+$ ]] && (( n <= 1000 )) || die "CASES: numbers 0..1000"; done

resolve_stepup

PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; PIDS=(); }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # pid port what
  local i
  for i in $(seq 100); do
    kill -0 "$1" 2>/dev/null || die "$3 exited at start"
    port_busy "$2" && return 0
    sleep 0.1
  done
  die "$3 did not listen on :$2 within 10 s"
}

# ---------------------------------------------------------------- upstream
port_busy "${UPSTREAM##*:}" && die "port ${UPSTREAM##*:} is in use by something this script did not start (MEMORY_PORT=<n> moves it)"
python3 "$HERE/memory.py" upstream "$UPSTREAM" > "$RUN/upstream.log" 2>&1 < /dev/null &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PID" "${UPSTREAM##*:}" "the fake upstream"

CONFIG=$RUN/klarna-stepup.toml
{
  echo "# written by bench/memory.sh: the default configuration, but body_limit"
  echo "body_limit = $BODY_LIMIT"
  echo
  echo "[server]"
  echo "listen = \"$LISTEN\""
  echo "upstream = \"$UPSTREAM\""
  [[ -n $BUDGET ]] && echo "buffer_budget_bytes = $BUDGET"
} > "$CONFIG"
eff_budget=
if [[ -n ${STEPUP_BIN:-} ]]; then
  eff_budget=$("$STEPUP_BIN" check-config --config "$CONFIG" 2>/dev/null | awk '$1 == "buffer_budget_bytes" {print $3; exit}' || true)
fi
eff_budget=${BUDGET:-${eff_budget:-67108864}}

echo "== memory: $what"
echo "== config $CONFIG: body_limit=$BODY_LIMIT, buffer_budget_bytes=$eff_budget; bodies of $BODY_BYTES bytes"
echo "   (at most $(( eff_budget / BODY_BYTES )) such candidates admitted at once; the rest get 503)"

# all-CPU busy share over 3 s from /proc/stat: what else the machine was doing just before
host_busy_before() {
  local c u n s i w q sq st r b0 t0 b1 t1
  read -r c u n s i w q sq st r < /proc/stat; b0=$((u + n + s + q + sq + st)); t0=$((b0 + i + w))
  sleep 3
  read -r c u n s i w q sq st r < /proc/stat; b1=$((u + n + s + q + sq + st)); t1=$((b1 + i + w))
  echo $(( t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0 ))
}
before=$(host_busy_before)
ROWS=()
for n in $CASES; do
  port_busy "${LISTEN##*:}" && die "port ${LISTEN##*:} is in use by something this script did not start (MEMORY_PORT=<n> moves it)"
  log=$RUN/klarna-stepup-$n.log
  LISTEN=$LISTEN UPSTREAM=$UPSTREAM CONFIG=$CONFIG BIN=${STEPUP_BIN:-} \
    bash -c "exec $STEPUP_CMD" > "$log" 2>&1 < /dev/null &
  pid=$!
  PIDS+=("$pid")
  wait_port "$pid" "${LISTEN##*:}" "the proxy"
  # one small Klarna request first: the proxy has served (connection pool, engine) once
  code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data-binary @"$HERE/peer/request.json" "http://$LISTEN/payments" || true)
  [[ $code == 200 ]] || die "warm-up POST via the proxy got HTTP ${code:-none} (log: $log)"
  sleep 0.5
  if (( n == 0 )); then
    r=$(python3 "$HERE/memory.py" status --pid "$pid")
    rss=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["VmRSS"], d["VmHWM"])' "$r")
    read -r rss hwm <<< "$rss"
    ROWS+=("idle (after 1 request)|0|-|-|-|-|-|$rss|$rss|$hwm|$rss|-")
    echo "  idle: VmRSS $rss kB, VmHWM $hwm kB"
  else
    echo "  $n connections x $BODY_BYTES bytes ..."
    r=$(python3 "$HERE/memory.py" client --target "$LISTEN" --pid "$pid" --conns "$n" --body-bytes "$BODY_BYTES")
    echo "  $r"
    ROWS+=("$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); c = d["codes"]
other = {k: v for k, v in c.items() if k not in ("200", "503")}
print("|".join(str(x) for x in [
  "%d conns x %d B" % (d["conns"], d["body_bytes"]), d["conns"], c.get("200", 0), c.get("503", 0),
  ", ".join("%s: %d" % kv for kv in sorted(other.items())) or "0",
  "%.1f" % (c.get("200", 0) * d["body_bytes"] / 2**20),
  "%.1f" % ((max(d["hwm_kb"], d["rss_max_sampled_kb"]) - d["rss_before_kb"]) / 1024),
  d["rss_inflight_kb"], d["rss_max_sampled_kb"], d["hwm_kb"], d["rss_after_kb"],
  "%.1f" % d["wall_s"] + ("" if d["all_ready"] and not d["unfinished"] else " (timed out)")]))' "$r")")
  fi
  stop_pid "$pid"
  PIDS=("$UP_PID")
done
cleanup

out=$RUN/memory.md
{
  echo "# klarna-stepup resident memory"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $commit"
  echo "- $what"
  echo "- engine: ${ENGINE_LABEL:-not stated (set ENGINE_LABEL)}"
  echo "- host busy in the 3 s before the run (other work on the machine): $before %"
  echo "- config: defaults + body_limit = $BODY_LIMIT; buffer_budget_bytes = $eff_budget (at most $(( eff_budget / BODY_BYTES )) bodies of $BODY_BYTES B admitted at once)"
  echo "- each case: a fresh proxy, one small Klarna POST, then N connections at once each sending a"
  echo "  $BODY_BYTES B Klarna payment (all but 1 KiB, memory read once all are in flight, then the rest);"
  echo "  upstream: bench/memory.py (reads each body to its end, answers STEP_UP_REQUIRED)"
  echo "- bodies admitted: the 200s x body size (all in flight at once: memory is read before"
  echo "  any of them is complete); peak over idle: max(VmHWM, sampled VmRSS) - VmRSS before the case"
  echo
  echo "| case | conns | 200 | 503 | other | bodies admitted (MiB) | peak over idle (MiB) | VmRSS in flight (kB) | VmRSS max sampled (kB) | VmHWM (kB) | VmRSS after (kB) | wall s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do echo "| ${row//|/ | } |"; done
} > "$out"
cp "$out" "$RUN/memory-$(date +%Y%m%d-%H%M%S).md"
echo
cat "$out"
echo
echo "== written: $out"
