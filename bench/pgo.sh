#!/usr/bin/env bash
# The proxy binary built with profile-guided optimisation (PGO): the production profile,
# compiled once with instrumentation, run against a training load on loopback, and compiled
# again with the counts it took (which branches are taken, which calls are hot), so that the
# compiler lays out and inlines the request path as it runs. Same source, same behaviour,
# same tests; only the machine code's layout differs.
#
#   bench/pgo.sh          (or ./x pgo)   ->  <target>/pgo/klarna-stepup
#
# The training load, against the peer harness's upstream (nginx, bench/peer/upstream.conf:
# `/health`, and `/payments` answered with Klarna's STEP_UP_REQUIRED): plain HTTP/1 `GET`
# and Klarna `POST` (wrk), the same over TLS (wrk), and over HTTP/2 with TLS (h2load), and a
# `POST` passed through (a route that is not a candidate), each bounded in time or count. A
# path the load does not take is compiled as rarely run: the load takes every protocol the
# proxy serves, and the Klarna rewrite both ways.
#
# Needs llvm-profdata of the LLVM rustc is built with (rustc -vV): the rustup component
# llvm-tools, or Debian's llvm-<major>, installed here when missing. Two production builds
# in target directories of their own (a few minutes each). Env: PEER_PORT_BASE (default
# 18080; the proxies listen on base + 18 and + 19), SECS (seconds per wrk load, default 4).
set -euo pipefail
die() { echo "pgo.sh: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEER=$ROOT/bench/peer
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
RUN=$TARGET_DIR/pgo
SECS=${SECS:-4}
[[ $SECS =~ ^[0-9]+$ ]] && (( SECS >= 1 && SECS <= 60 )) || die "SECS must be 1..60"
BASE=${PEER_PORT_BASE:-18080}
UP=127.0.0.1:$BASE
PLAIN=127.0.0.1:$((BASE + 18))
TLS=127.0.0.1:$((BASE + 19))
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for t in wrk h2load nginx openssl ss curl; do
  command -v "$t" >/dev/null || die "$t is missing (bench/peer/setup.sh and Debian's nghttp2-client install them)"
done
major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $major ]] || die "cannot read rustc's LLVM version (rustc -vV)"
profdata=""
for p in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata "llvm-profdata-$major"; do
  if command -v "$p" >/dev/null; then profdata=$p; break; fi
done
[[ -n $profdata ]] || die "no llvm-profdata for LLVM $major (rustup component add llvm-tools, or Debian's llvm-$major)"

for p in "$BASE" "$((BASE + 18))" "$((BASE + 19))"; do
  port_busy "$p" && die "port $p is in use (PEER_PORT_BASE=<n> moves the harness)"
done

rm -rf "$RUN/profiles" "$RUN/upstream" "$RUN/conf"
mkdir -p "$RUN/profiles" "$RUN/conf"

echo "== cargo build --profile production, instrumented ($RUN/generate)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$RUN/profiles" \
  CARGO_TARGET_DIR="$RUN/generate" \
  cargo build --profile production --locked -p klarna-stepup-server --bin klarna-stepup)
BIN=$RUN/generate/production/klarna-stepup

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$RUN/conf/key.pem" -out "$RUN/conf/cert.pem" -subj /CN=localhost 2>/dev/null
printf '[server]\nlisten = "%s"\nupstream = "%s"\n' "$PLAIN" "$UP" > "$RUN/conf/plain.toml"
printf '[server]\nlisten = "%s"\nupstream = "%s"\n[server.tls]\ncert = "%s"\nkey = "%s"\n' \
  "$TLS" "$UP" "$RUN/conf/cert.pem" "$RUN/conf/key.pem" > "$RUN/conf/tls.toml"

UP_PID=
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  stop_upstream
}
trap cleanup EXIT
start_upstream "$BASE" "$RUN/upstream"

# Each process writes its counts when it exits (a SIGTERM drains, then exits).
for cfg in plain tls; do
  LLVM_PROFILE_FILE="$RUN/profiles/klarna-stepup-%p.profraw" \
    "$BIN" serve --config "$RUN/conf/$cfg.toml" > "$RUN/$cfg.log" 2>&1 &
  PIDS+=($!)
done
for p in "$((BASE + 18))" "$((BASE + 19))"; do
  for _ in $(seq 100); do port_busy "$p" && break; sleep 0.1; done
  port_busy "$p" || die "the instrumented proxy did not come up on :$p (see $RUN/*.log)"
done

echo "== training load"
cd "$PEER"
# A load whose answers are not what the proxy serves in use would train the wrong paths.
load() {
  local out
  out=$("$@" 2>&1) || die "$* failed: $out"
  echo "$out" | grep -E "Requests/sec|^requests:|^status codes:" || true
  if [[ $1 == h2load ]]; then
    echo "$out" | grep -qE "^status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx" || die "not all 2xx: $*"
    echo "$out" | grep -qE " 0 failed, 0 errored, 0 timeout" || die "errors: $*"
  else
    ! echo "$out" | grep -qE "Non-2xx|Socket errors" || die "errors or non-2xx answers: $*"
  fi
}
for url in "http://$PLAIN" "https://$TLS"; do
  load wrk -t2 -c50 -d"${SECS}s" "$url/health"
  load wrk -t2 -c50 -d"${SECS}s" -s post.lua "$url/payments"
done
load h2load -n 20000 -c 10 -m 10 "https://$TLS/health"
load h2load -n 20000 -c 10 -m 10 -d request.json -H 'content-type: application/json' \
  "https://$TLS/payments"
# A POST on a route that is not a candidate, passed through, body and all (the upstream
# answers 404).
wrk -t2 -c50 -d"${SECS}s" -s post.lua "http://$PLAIN/refunds" | grep -E "Requests/sec" || true
cd "$ROOT"
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
PIDS=()
compgen -G "$RUN/profiles/*.profraw" >/dev/null || die "the instrumented proxy wrote no profile"
"$profdata" merge -o "$RUN/merged.profdata" "$RUN"/profiles/*.profraw

echo "== cargo build --profile production, with the profile ($RUN/use)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$RUN/merged.profdata" \
  CARGO_TARGET_DIR="$RUN/use" \
  cargo build --profile production --locked -p klarna-stepup-server --bin klarna-stepup)
BIN=$RUN/use/production/klarna-stepup

echo "== the built binary serves (a GET passed through, a Klarna POST rewritten)"
"$BIN" serve --config "$RUN/conf/plain.toml" > "$RUN/check.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do port_busy "$((BASE + 18))" && break; sleep 0.1; done
code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$PLAIN/health") || code=none
[[ $code == 200 ]] || die "GET /health: $code (see $RUN/check.log)"
answer=$(curl -s -m 5 -H 'content-type: application/json' --data-binary @"$PEER/request.json" \
  "http://$PLAIN/payments") || answer=
[[ $answer == '{"status":"pending","redirect_url":"https://pay.klarna.com/'* ]] \
  || die "POST /payments was not rewritten (see $RUN/check.log)"
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
PIDS=()
install -m 0755 "$BIN" "$RUN/klarna-stepup"
echo "== $RUN/klarna-stepup"
