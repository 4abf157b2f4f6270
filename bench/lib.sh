# Shared by the scripts under bench/ (sourced; needs ROOT and TARGET_DIR set, and a `die`):
# which proxy to run, the peer harness's upstream, and stopping what the script started.

# Sets STEPUP_CMD (run with bash; it sees $BIN, $CONFIG, $LISTEN, $UPSTREAM), STEPUP_BIN and
# `what` (a line saying what runs), from STEPUP_CMD, STEPUP_BIN or a release build (unless
# NO_BUILD=1); and `commit`, the project's commit.
resolve_stepup() {
  if [[ -n ${STEPUP_CMD:-} ]]; then
    what="command: $STEPUP_CMD"
  else
    if [[ -z ${STEPUP_BIN:-} ]]; then
      STEPUP_BIN=$TARGET_DIR/production/klarna-stepup
      if [[ ${NO_BUILD:-0} != 1 ]]; then
        echo "== cargo build --profile production -p klarna-stepup-server --bin klarna-stepup"
        (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile production -p klarna-stepup-server --bin klarna-stepup)
      fi
    fi
    [[ -x $STEPUP_BIN ]] || die "no binary at $STEPUP_BIN"
    STEPUP_BIN=$(cd "$(dirname "$STEPUP_BIN")" && pwd)/$(basename "$STEPUP_BIN")
    STEPUP_CMD='"$BIN" serve --config "$CONFIG"'
    what="binary: $STEPUP_BIN (built $(date -u -r "$STEPUP_BIN" +%Y-%m-%dT%H:%M:%SZ))"
  fi
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
  [[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit="$commit (+ uncommitted changes)"
}

# Stops a process this script started, by its PID: TERM (a graceful drain), then KILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Whether anything listens on TCP port $1.
port_busy() { ss -ltnH "sport = :$1" | grep -q .; }

# Starts the peer harness's upstream (nginx with bench/peer/upstream.conf, its listener
# moved to 127.0.0.1:$1) under the prefix $2 (its config at $2/upstream.conf), and sets
# UP_PID; stop_upstream stops it (by that PID).
start_upstream() {
  local port=$1 dir=$2 i
  mkdir -p "$dir/logs" "$dir/tmp"
  sed -e "s/127\.0\.0\.1:18080\b/127.0.0.1:$port/g" "$ROOT/bench/peer/upstream.conf" > "$dir/upstream.conf"
  nginx -p "$dir/" -c "$dir/upstream.conf" -g "worker_processes 1;" \
    || die "the upstream nginx did not start (see $dir/logs/error.log)"
  for i in $(seq 50); do port_busy "$port" && break; sleep 0.1; done
  UP_PID=$(cat "$dir/nginx.pid")
}

stop_upstream() {
  if [[ -n ${UP_PID:-} ]] && kill -0 "$UP_PID" 2>/dev/null; then kill -QUIT "$UP_PID" 2>/dev/null || true; fi
  return 0
}
