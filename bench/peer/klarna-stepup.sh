#!/usr/bin/env bash
# The project's proxy in the peer benchmark (`./x peer-bench`): builds the release binary,
# starts it on 127.0.0.1:18090 in front of the harness's upstream (127.0.0.1:18080) with
# the default configuration (only [server] listen and upstream), runs bench/peer/run.sh
# with it as the extra target, stops it by its PID, and prints the table plus the ratios
# of its targets to the peers (plain nginx, HAProxy, nginx + Lua), PASS/FAIL each. The ratios also go to
# <target>/peer-bench/ratios.md, ready to paste into benches/.
#
# Env knobs:
#   STEPUP_BIN=<path>    measure this binary (no build). Default: build
#                        `cargo build --profile production -p klarna-stepup-server --bin klarna-stepup`.
#   STEPUP_CMD='<cmd>'   or this command line (no build), run with bash; it sees $LISTEN
#                        (127.0.0.1:18090), $UPSTREAM (127.0.0.1:18080) and $CONFIG (the
#                        config file written here). E.g. another engine:
#                        STEPUP_CMD='target/release/examples/hyper_proxy $LISTEN $UPSTREAM'
#   STEPUP_NAME=klarna-stepup   its name in the table.
#   EXTRA2_CMD='<cmd>'   a second proxy measured in the same run (cases y1, y2), same
#                        variables but LISTEN=127.0.0.1:18092 and its own $CONFIG.
#   EXTRA2_NAME=extra2   its name.
#   NO_BUILD=1           skip the build (use what is in the target dir).
#   RESULT_TSV=<path>    where the results TSV goes (default <run dir>/results-<ts>-klarna-stepup.tsv).
#   IDLE_CONNS=N         no load: resident memory per idle keep-alive connection, N of them
#                        to each proxy (see run.sh); bench/peer/scale.sh uses it.
#   STRICT=1             exit 1 when a target FAILs.
#   VERIFY_ONLY=1        start everything and run the functional checks, no load.
#   RATIOS_FROM=<tsv>    run nothing; print the ratios of an earlier run's results TSV.
#   ENGINE_LABEL='...'   a line saying what serves, for the record.
#   RUST_LOG             passed to the proxies (their stderr goes to <run dir>/<name>.log).
#   PEER_PORT_BASE=18080 the harness's upstream port (lua peer +1, pass +2, the proxies +10, +12)
#   WORKERS, THREADS, CONNS, DURATION, WARMUP, EXTRA_ONLY: see run.sh (EXTRA_ONLY=1 skips
#                        the nginx peers, and then there are no ratios).
set -euo pipefail
die() { echo "klarna-stepup.sh: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
# shellcheck source=bench/lib.sh
source "$HERE/../lib.sh"
RUN=${PEER_RUN_DIR:-$TARGET_DIR/peer-bench}
[[ $RUN == /* ]] || RUN=$ROOT/$RUN
export PEER_RUN_DIR=$RUN
mkdir -p "$RUN"

BASE=${PEER_PORT_BASE:-18080}   # run.sh's upstream; the proxies listen on BASE+10, BASE+12
[[ $BASE =~ ^[0-9]+$ ]] && (( BASE >= 1024 && BASE <= 65000 )) || die "PEER_PORT_BASE must be 1024..65000"
UPSTREAM=127.0.0.1:$BASE
LISTEN1=127.0.0.1:$(( BASE + 10 ))
LISTEN2=127.0.0.1:$(( BASE + 12 ))
STEPUP_NAME=${STEPUP_NAME:-klarna-stepup}
EXTRA2_NAME=${EXTRA2_NAME:-extra2}
EXTRA2_CMD=${EXTRA2_CMD:-}


# ---------------------------------------------------------------- ratios
# ratios TSV: the table and the targets -> $RUN/ratios.md (and printed). The run's
# description comes from TSV.meta (written below); the proxies' names from the TSV.
ratios() {
  local tsv=$1 out="$RUN/ratios.md" id name
  {
    echo "# Peer benchmark: the project's proxy against nginx, HAProxy and nginx + Lua"
    echo
    [[ -s $tsv.meta ]] && cat "$tsv.meta"
    echo
    echo "| case | scenario | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | upstream µs/req | host % | up conns | other % |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $4, $5, $6, $7, $9, $10, $11, $12, ($13 == "" ? "?" : $13) }' "$tsv"
    for id in x y; do
      name=$(awk -F'\t' -v c="${id}2" '$1 == c { sub(/.* via /, "", $2); print $2 }' "$tsv")
      [[ -n $name ]] || continue
      echo
      echo "Targets for $name (ratios to the peers of this same run):"
      echo
      echo "| target | $name | peer | ratio | goal | verdict |"
      echo "|---|---|---|---|---|---|"
      awk -F'\t' -v x="$id" '
        function num(v) { return v ~ /^[0-9]+(\.[0-9]+)?$/ }
        function row(name, a, b, goal, op, lim,   r, ok) {
          if (!num(a) || !num(b) || b == 0) { printf "| %s | %s | %s | – | %s | FAIL (no figure) |\n", name, a, b, goal; return }
          r = a / b
          ok = (op == ">=") ? (r >= lim) : (r <= lim + 1e-9)
          printf "| %s | %s | %s | %.2f | %s | %s |\n", name, a, b, r, goal, ok ? "PASS" : "FAIL"
        }
        NR > 1 { rps[$1] = $4; p99[$1] = $6; err[$1] = $7; cpu[$1] = $9 }
        function info(name, a, b) {
          if (a == "" && b == "") return
          if (!num(a) || !num(b) || b == 0) { printf "| %s | %s | %s | – | – | – |\n", name, a, b; return }
          printf "| %s | %s | %s | %.2f | – | – |\n", name, a, b, a / b
        }
        END {
          row("GET CPU µs/req vs nginx passthrough (b)", cpu[x "1"], cpu["b"], "≤ 1.0", "<=", 1.0)
          info("GET CPU µs/req vs HAProxy passthrough (h1)", cpu[x "1"], cpu["h1"])
          row("GET p99 ms vs nginx passthrough (b)", p99[x "1"], p99["b"], "≤ 1.0", "<=", 1.0)
          row("POST CPU µs/req vs nginx passthrough POST (e)", cpu[x "2"], cpu["e"], "≤ 1.5", "<=", 1.5)
          info("POST CPU µs/req vs HAProxy passthrough POST (h2)", cpu[x "2"], cpu["h2"])
          row("POST req/s vs nginx+Lua (f)", rps[x "2"], rps["f"], "≥ 3", ">=", 3)
          info("POST CPU µs/req vs nginx+Lua (f)", cpu[x "2"], cpu["f"])
          row("POST p99 ms vs nginx passthrough POST (e)", p99[x "2"], p99["e"], "≤ 1.0", "<=", 1.0)
          info("GET p99 ms at a paced load vs nginx passthrough (x1p / bp)", p99[x "1p"], p99["bp"])
          info("GET p99 ms at a paced load vs HAProxy passthrough (x1p / h1p)", p99[x "1p"], p99["h1p"])
          info("POST p99 ms at a paced load vs nginx passthrough POST (x2p / ep)", p99[x "2p"], p99["ep"])
          e = err[x "1"] + err[x "2"]
          printf "| errors (wrk: connect, read, write, non-2xx/3xx, timeout), GET + POST | %s | %s | – | 0 | %s |\n", e, err["e"], (e == 0) ? "PASS" : "FAIL"
        }' "$tsv"
    done
    echo
    echo "CPU per request: utime+stime of the proxy's process (all threads; nginx: its worker"
    echo "processes) during the measured window, divided by the requests wrk completed. other %:"
    echo "CPU used by anything but the proxy, the upstream and wrk during the case (a shared machine);"
    echo "above about 5 the case's figures are disturbed."
    awk -F'\t' 'NR > 1 && $13 ~ /^[0-9]+$/ && $13 > 5 { bad = bad " " $1 } END { if (bad != "") print "**Disturbed cases (other % > 5):" bad "; re-run on a quiet machine.**" }' "$tsv"
    echo "Raw: $tsv and the wrk output beside it (logs/)."
  } > "$out"
  echo
  cat "$out"
  echo
  echo "== written: $out"
  if [[ ${STRICT:-0} == 1 ]] && grep -q '| FAIL' "$out"; then return 1; fi
  return 0
}

if [[ -n ${RATIOS_FROM:-} ]]; then   # only the ratios of an earlier run's TSV
  ratios "$RATIOS_FROM"; exit
fi

# ---------------------------------------------------------------- the binary
resolve_stepup

# ---------------------------------------------------------------- the proxies
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start_proxy() {  # name listen cmd -> sets STARTED_PID
  local name=$1 listen=$2 cmd=$3 config="$RUN/$1.toml" log="$RUN/$1.log" i
  port_busy "${listen##*:}" && die "port ${listen##*:} is in use by something this script did not start (PEER_PORT_BASE=<n> moves everything)"
  cat > "$config" <<EOF
# written by bench/peer/klarna-stepup.sh: the default configuration, listen and upstream only
[server]
listen = "$listen"
upstream = "$UPSTREAM"
EOF
  LISTEN=$listen UPSTREAM=$UPSTREAM CONFIG=$config BIN=${STEPUP_BIN:-} \
    bash -c "exec $cmd" > "$log" 2>&1 < /dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  for i in $(seq 100); do
    kill -0 "$STARTED_PID" 2>/dev/null || { tail -20 "$log" >&2; die "$name exited at start (log: $log)"; }
    port_busy "${listen##*:}" && break
    sleep 0.1
  done
  port_busy "${listen##*:}" || die "$name did not listen on $listen within 10 s (log: $log)"
  echo "== started $name (pid $STARTED_PID) on $listen -> $UPSTREAM; config $config; log $log"
}

start_proxy "$STEPUP_NAME" "$LISTEN1" "$STEPUP_CMD"
PID1=$STARTED_PID
PID2=
if [[ -n $EXTRA2_CMD ]]; then
  start_proxy "$EXTRA2_NAME" "$LISTEN2" "$EXTRA2_CMD"
  PID2=$STARTED_PID
fi

# ---------------------------------------------------------------- the harness
# all-CPU busy share over 3 s from /proc/stat: what else the machine was doing just before
host_busy_before() {
  local c u n s i w q sq st r b0 t0 b1 t1
  read -r c u n s i w q sq st r < /proc/stat; b0=$((u + n + s + q + sq + st)); t0=$((b0 + i + w))
  sleep 3
  read -r c u n s i w q sq st r < /proc/stat; b1=$((u + n + s + q + sq + st)); t1=$((b1 + i + w))
  echo $(( t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0 ))
}
before=$(host_busy_before)
TS=$(date +%Y%m%d-%H%M%S)
TSV=${RESULT_TSV:-$RUN/results-$TS-klarna-stepup.tsv}
{
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); project commit: $commit"
  echo "- $STEPUP_NAME: $what"
  [[ -n $PID2 ]] && echo "- $EXTRA2_NAME: command: $EXTRA2_CMD"
  echo "- proxy config: [server] listen and upstream only (the defaults otherwise)"
  echo "- machine: $(nproc) cores, $(uname -r); $(nginx -v 2>&1 | sed 's/^nginx version: //'); peers worker_processes=${WORKERS:-1}; wrk -t${THREADS:-2} -c${CONNS:-50} -d${DURATION:-8}s"
  echo "- engine: ${ENGINE_LABEL:-not stated (set ENGINE_LABEL)}"
  echo "- host busy in the 3 s before the run (other work on the machine): $before %"
} > "$TSV.meta"
extra2=()
[[ -n $PID2 ]] && extra2=(EXTRA2_TARGET="$LISTEN2" EXTRA2_NAME="$EXTRA2_NAME" EXTRA2_PID="$PID2")
env PEER_TS="$TS" PEER_TSV="$TSV" EXTRA_TARGET="$LISTEN1" EXTRA_NAME="$STEPUP_NAME" EXTRA_PID="$PID1" "${extra2[@]}" \
  "$HERE/run.sh"
cleanup
PIDS=()

[[ ${VERIFY_ONLY:-0} == 1 || -n ${IDLE_CONNS:-} ]] && exit 0
[[ -s $TSV ]] || die "no results ($TSV)"
if [[ ${EXTRA_ONLY:-0} == 1 ]]; then echo "EXTRA_ONLY=1: no peers measured, no ratios"; exit 0; fi
rc=0
ratios "$TSV" || rc=$?
cp "$RUN/ratios.md" "$RUN/ratios-$TS.md"
exit $rc
