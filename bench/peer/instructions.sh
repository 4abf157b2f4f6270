#!/usr/bin/env bash
# Instructions per request (valgrind's callgrind): the proxy, plain nginx, and the library
# adapters bare and wrapped, each in front of the peer harness's upstream, under
# `wrk -t1 -c4`, counted only while the measured load runs (after a warm-up). A count of
# instructions does not move with the host's speed or with what else runs, so it shows a
# change of a few percent that CPU time on a shared machine hides; it is not CPU time
# (system calls, cache misses and waits are not in it; SHA-256 runs its portable code under
# valgrind, which does not emulate the CPU's SHA extensions).
#
# Writes <target>/peer-bench/instructions/instructions.md: per case, GET /health and the
# Klarna POST /payments, instructions per request and the ratio to nginx passthrough's.
#
# Env: CASES (default "klarna-stepup nginx floor hyper-bare hyper-stepup pingora-bare
# pingora-stepup"; floor is server/examples/floor_proxy.rs, an HTTP/1.1 passthrough on tokio
# and httparse alone: what the sockets and the runtime cost), STEPUP_BIN (default: the production build), NO_BUILD=1, DURATION (s,
# default 6), PEER_PORT_BASE (default 18080; the measured proxy listens on base + 17),
# REQUEST_JSON (the POST's body, default request.json; `scale.py body --bytes N --out F` makes larger
# ones), KEEP=1 (keep each case's callgrind files, cg.<case>.<route>.*, for callgrind_annotate).
set -euo pipefail
die() { echo "instructions.sh: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
RUN=$TARGET_DIR/peer-bench/instructions
CASES=${CASES:-klarna-stepup nginx floor hyper-bare hyper-stepup pingora-bare pingora-stepup}
DURATION=${DURATION:-6}
[[ $DURATION =~ ^[0-9]+$ ]] && (( DURATION >= 1 && DURATION <= 60 )) || die "DURATION must be 1..60"
BASE=${PEER_PORT_BASE:-18080}
UP=127.0.0.1:$BASE
PORT=$((BASE + 17))
for t in valgrind callgrind_control callgrind_annotate wrk nginx ss; do
  command -v "$t" >/dev/null || die "$t is missing (bench/peer/setup.sh installs the harness's tools)"
done
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

if [[ ${NO_BUILD:-0} != 1 ]]; then
  echo "== cargo build (the binary as shipped, the examples in release)"
  (cd "$ROOT" && cargo build --profile production -p klarna-stepup-server --bin klarna-stepup \
    && cargo build --release --example hyper_proxy \
    && cargo build --release --features pingora --example pingora_existing_proxy \
    && cargo build --release -p klarna-stepup-server --example floor_proxy)
fi
BIN=${STEPUP_BIN:-$TARGET_DIR/production/klarna-stepup}
# The POST runs from here (post.lua's directory): paths given relative to the caller's.
[[ $BIN == /* ]] || BIN=$PWD/$BIN
[[ -z ${REQUEST_JSON:-} || $REQUEST_JSON == /* ]] || REQUEST_JSON=$PWD/$REQUEST_JSON
EX=$TARGET_DIR/release/examples
mkdir -p "$RUN/nginx/logs" "$RUN/nginx/tmp" "$RUN/conf"
rm -f "$RUN"/cg.out.*
sed -e "s/127\.0\.0\.1:18080\b/$UP/g" -e "s/127\.0\.0\.1:18082\b/127.0.0.1:$PORT/g" \
  "$HERE/peer-pass.conf" > "$RUN/conf/peer-pass.conf"
printf '[server]\nlisten = "127.0.0.1:%s"\nupstream = "%s"\nthreads = 1\n' "$PORT" "$UP" > "$RUN/klarna-stepup.toml"

port_busy "$BASE" && die "port $BASE is in use (PEER_PORT_BASE=<n> moves the harness)"
port_busy "$PORT" && die "port $PORT is in use (PEER_PORT_BASE=<n> moves the harness)"
UP_PID=
VG_PID=
cleanup() {
  [[ -n $VG_PID ]] && stop_pid "$VG_PID"
  stop_upstream
}
trap cleanup EXIT
start_upstream "$BASE" "$RUN/upstream"

# Sets `cmd` to CASE's command line.
command_of() {
  case $1 in
    klarna-stepup) cmd=("$BIN" serve --config "$RUN/klarna-stepup.toml") ;;
    nginx) cmd=(nginx -p "$RUN/nginx/" -c "$RUN/conf/peer-pass.conf" -g "worker_processes 1; daemon off; master_process off;") ;;
    floor) cmd=("$EX/floor_proxy" "127.0.0.1:$PORT" "$UP") ;;
    hyper-bare) cmd=("$EX/hyper_proxy" "127.0.0.1:$PORT" "$UP" --bare) ;;
    hyper-stepup) cmd=("$EX/hyper_proxy" "127.0.0.1:$PORT" "$UP") ;;
    pingora-bare) cmd=("$EX/pingora_existing_proxy" "127.0.0.1:$PORT" "$UP" --bare) ;;
    pingora-stepup) cmd=("$EX/pingora_existing_proxy" "127.0.0.1:$PORT" "$UP") ;;
    *) die "unknown case $1" ;;
  esac
}

# measure CASE PATH [wrk script] -> instructions per request
measure() {
  local case=$1 path=$2 script=${3:-} out reqs ir f x cmd
  command_of "$case"
  # Started directly (no subshell), so that $! is valgrind's own PID.
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$RUN/cg.out.%p" "${cmd[@]}" \
    > "$RUN/$case.log" 2>&1 &
  VG_PID=$!
  for _ in $(seq 300); do port_busy "$PORT" && break; sleep 0.2; done
  port_busy "$PORT" || die "$case did not come up on :$PORT (see $RUN/$case.log)"
  local wrk_args=(-t1 -c4 ${script:+-s "$script"} "http://127.0.0.1:$PORT$path")
  timeout 30 wrk -d2s "${wrk_args[@]}" > /dev/null
  callgrind_control -i on "$VG_PID" > /dev/null
  out=$(timeout $((DURATION + 20)) wrk -d"${DURATION}s" "${wrk_args[@]}")
  callgrind_control -i off "$VG_PID" > /dev/null
  callgrind_control -d "$VG_PID" > /dev/null
  stop_pid "$VG_PID"
  VG_PID=
  reqs=$(awk '/requests in/ {print $1}' <<< "$out")
  [[ $reqs =~ ^[0-9]+$ ]] && (( reqs > 0 )) || die "$case $path: wrk made no requests"
  ir=0
  for f in "$RUN"/cg.out.*.1; do
    [[ -e $f ]] || continue
    x=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    ir=$((ir + ${x:-0}))
  done
  (( ir > 0 )) || die "$case $path: no instructions counted (see $RUN/$case.log)"
  if [[ ${KEEP:-0} == 1 ]]; then
    for f in "$RUN"/cg.out.*; do mv "$f" "$RUN/cg.$case.${path//\//}.${f##*.}"; done
  fi
  rm -f "$RUN"/cg.out.*
  echo $((ir / reqs))
}

declare -A GET POST
for c in $CASES; do
  GET[$c]=$(measure "$c" /health)
  POST[$c]=$(cd "$HERE" && REQUEST_JSON=${REQUEST_JSON:-$HERE/request.json} measure "$c" /payments "$HERE/post.lua")
  printf '%-16s GET %8s  POST %8s instructions per request\n' "$c" "${GET[$c]}" "${POST[$c]}"
done

{
  echo "# Instructions per request (callgrind, one worker, wrk -t1 -c4, ${DURATION}s measured)"
  echo
  echo "Project commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); binary $BIN."
  echo
  echo "| proxy | GET /health | ÷ nginx | Klarna POST /payments | ÷ nginx POST |"
  echo "|---|---|---|---|---|"
  for c in $CASES; do
    rg=-; rp=-
    if [[ -n ${GET[nginx]:-} ]]; then
      rg=$(awk -v a="${GET[$c]}" -v b="${GET[nginx]}" 'BEGIN {printf "%.2f", a / b}')
      rp=$(awk -v a="${POST[$c]}" -v b="${POST[nginx]}" 'BEGIN {printf "%.2f", a / b}')
    fi
    echo "| $c | ${GET[$c]} | $rg | ${POST[$c]} | $rp |"
  done
} > "$RUN/instructions.md"
echo "== $RUN/instructions.md"
cat "$RUN/instructions.md"
