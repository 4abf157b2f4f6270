#!/usr/bin/env bash
# Installs what the payment-API stubs under server/tests/stacks/ need (only what is missing)
# and builds the Go stub; quick when everything is there. server/tests/it/stacks.rs runs them.
# A stack whose toolchain cannot be installed is reported here and skipped by the test,
# saying why.
set -uo pipefail
cd "$(dirname "$0")"

# Debian packages, installed only when missing (as ./x does).
need_apt() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${missing[*]}"
  $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

failed=()

# Go: Debian's toolchain, the standard library only (no module download).
if need_apt golang-go && (cd go && GOPROXY=off GOFLAGS=-mod=mod go build -o stub .); then :; else failed+=(go); fi

# Rack: Debian's rack and puma.
need_apt ruby-rack puma || failed+=(rack)

# Node: Express and qs from the npm registry, as package-lock.json pins them.
if command -v npm >/dev/null || need_apt nodejs npm; then
  if [ ! -f node/node_modules/.package-lock.json ] || [ node/package-lock.json -nt node/node_modules/.package-lock.json ]; then
    (cd node && npm ci --no-audit --no-fund --loglevel=error) || failed+=(node)
  fi
else
  failed+=(node)
fi

# Python: Flask in a virtual environment, as requirements.txt pins it.
stamp=python/.venv/requirements.txt
if ! cmp -s python/requirements.txt "$stamp"; then
  if (command -v python3 >/dev/null || need_apt python3 python3-venv) &&
    python3 -m venv python/.venv &&
    python/.venv/bin/pip install --quiet --disable-pip-version-check -r python/requirements.txt; then
    cp python/requirements.txt "$stamp"
  else
    failed+=(python)
  fi
fi

# Java: the JDK's HttpServer and Debian's Jackson (Maven Central is not reachable here).
{ command -v java >/dev/null || need_apt default-jdk-headless; } && need_apt libjackson2-databind-java || failed+=(java)

if [ ${#failed[@]} -gt 0 ]; then
  echo "server/tests/stacks/setup.sh: could not set up: ${failed[*]} (server/tests/it/stacks.rs skips them, saying so)"
fi
exit 0
