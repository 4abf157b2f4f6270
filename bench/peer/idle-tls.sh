#!/usr/bin/env bash
# Resident memory per idle keep-alive connection over TLS (HTTP/1.1, or HTTP/2 with H2=1): nginx and HAProxy
# passthrough with a TLS listener against the project's proxy with one (`[server.tls]`),
# each in front of the harness's upstream, each alone while measured. A self-signed certificate is made for the
# run (openssl). Loopback only; every step bounded; stops only what it started, by PID.
#
# Usage: bench/peer/idle-tls.sh [BIN...]     (default: target/production/klarna-stepup)
#   CONNS=5000   connections per case (each served one GET, then held)
#   HOLD=30      seconds idle before the memory is read (the steady state, as run.sh's idle)
#   RUNS=2       rounds over the cases
#   H2=1         the clients speak HTTP/2 (ALPN h2), else HTTP/1.1; every listener offers both
# Prints one line per case and run: name, bytes per connection.
set -euo pipefail
die() { echo "idle-tls.sh: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RUN=${PEER_RUN_DIR:-$TARGET_DIR/peer-bench}/idle-tls
CONNS=${CONNS:-5000}
HOLD=${HOLD:-30}
RUNS=${RUNS:-2}
PROTO=--tls; [[ ${H2:-} == 1 ]] && PROTO=--h2
(( $# )) || set -- "$TARGET_DIR/production/klarna-stepup"
for b in "$@"; do [[ -x $b ]] || die "$b: not an executable (cargo build --profile production -p klarna-stepup-server --bin klarna-stepup)"; done
command -v openssl > /dev/null || die "openssl is needed for the test certificate"
port_busy() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
for p in 18080 18092 18093 18094; do port_busy $p && die "port $p is in use"; done
command -v haproxy > /dev/null || die "missing haproxy (run bench/peer/setup.sh)"
NOFILE=$(ulimit -Hn); [[ $NOFILE == unlimited ]] && NOFILE=1048576
ulimit -n "$NOFILE"

mkdir -p "$RUN"/{conf,upstream/logs,upstream/tmp,pass/logs,pass/tmp,haproxy}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2> /dev/null
more=$(( CONNS * 2 + 1024 ))
sed "s/worker_connections [0-9]*;/worker_connections $more;/" "$HERE/upstream.conf" > "$RUN/conf/upstream.conf"
sed -e "s/worker_connections [0-9]*;/worker_connections $more;/" \
    -e "s|listen 127.0.0.1:18082 backlog=4096;|listen 127.0.0.1:18092 ssl http2 backlog=4096; ssl_certificate $RUN/cert.pem; ssl_certificate_key $RUN/key.pem;|" \
    "$HERE/peer-pass.conf" > "$RUN/conf/pass.conf"
grep -q "18092 ssl http2" "$RUN/conf/pass.conf" || die "peer-pass.conf's listen line changed"
cat "$RUN/cert.pem" "$RUN/key.pem" > "$RUN/both.pem"
sed -e "s/__MAXCONN__/$(( CONNS + 1024 ))/" -e "s/__THREADS__/1/" \
    -e "s|bind 127.0.0.1:18083 backlog 4096|bind 127.0.0.1:18094 ssl crt $RUN/both.pem alpn h2,http/1.1 backlog 4096|" \
    "$HERE/peer-haproxy.cfg" > "$RUN/conf/haproxy.cfg"
grep -q "18094 ssl" "$RUN/conf/haproxy.cfg" || die "peer-haproxy.cfg's bind line changed"
printf '[server]\nlisten = "127.0.0.1:18093"\nupstream = "127.0.0.1:18080"\n[server.tls]\ncert = "%s"\nkey = "%s"\n' \
  "$RUN/cert.pem" "$RUN/key.pem" > "$RUN/proxy.toml"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  for n in upstream pass; do
    [[ -s $RUN/$n/nginx.pid ]] && kill -QUIT "$(cat "$RUN/$n/nginx.pid")" 2> /dev/null || true
  done
  [[ -s $RUN/haproxy/haproxy.pid ]] && kill "$(head -1 "$RUN/haproxy/haproxy.pid")" 2> /dev/null || true
}
trap cleanup EXIT
nginx_up() {  # name port -> its worker's pid
  nginx -p "$RUN/$1/" -c "$RUN/conf/$1.conf" -g "worker_processes 1; worker_rlimit_nofile $NOFILE;"
  for _ in $(seq 50); do port_busy "$2" && break; sleep 0.1; done
  pgrep -P "$(cat "$RUN/$1/nginx.pid")" | head -1
}
nginx_up upstream 18080 > /dev/null

measure() {  # name target pid
  local out
  out=$(timeout $(( HOLD + 120 )) python3 "$HERE/scale.py" idle "$PROTO" --target "$2" \
    --conns "$CONNS" --hold "$HOLD" --pids "$3") || die "$1: the idle run failed"
  echo "$1 $(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["open"], "open,", d["bytes_per_conn"], "bytes per connection")' <<< "$out")"
}
for run in $(seq "$RUNS"); do
  echo "== run $run/$RUNS: $CONNS idle TLS connections (${PROTO#--}), read after $HOLD s"
  pid=$(nginx_up pass 18092)
  measure "nginx passthrough" 127.0.0.1:18092 "$pid"
  kill -QUIT "$(cat "$RUN/pass/nginx.pid")"
  for _ in $(seq 50); do port_busy 18092 || break; sleep 0.1; done
  (cd "$RUN/haproxy" && haproxy -q -f "$RUN/conf/haproxy.cfg") || die "haproxy failed to start (run it by hand: cd $RUN/haproxy && haproxy -f $RUN/conf/haproxy.cfg)"
  for _ in $(seq 50); do port_busy 18094 && break; sleep 0.1; done
  measure "haproxy passthrough" 127.0.0.1:18094 "$(head -1 "$RUN/haproxy/haproxy.pid")"
  kill "$(head -1 "$RUN/haproxy/haproxy.pid")"
  for _ in $(seq 50); do port_busy 18094 || break; sleep 0.1; done
  rm -f "$RUN/haproxy/haproxy.pid"
  for b in "$@"; do
    "$b" serve --config "$RUN/proxy.toml" 2> "$RUN/proxy.log" & PIDS+=($!)
    for _ in $(seq 50); do port_busy 18093 && break; sleep 0.1; done
    measure "$b" 127.0.0.1:18093 "${PIDS[-1]}"
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2> /dev/null || true
    unset 'PIDS[-1]'
  done
done
