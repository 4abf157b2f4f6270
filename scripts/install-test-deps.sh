#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Debian's Chromium and its chromedriver
# (tests/browser.rs) and cmake (native build steps). Idempotent: installs only what is
# missing, runs `apt-get update` at most once, and says what it did.
#
#   sudo scripts/install-test-deps.sh      # or as root, as .ci/run does
set -euo pipefail

# package -> a command it provides (empty: check the package only)
packages=(chromium chromium-driver cmake)
declare -A provides=([chromium]=chromium [chromium-driver]=chromedriver [cmake]=cmake)

installed() {
    local pkg=$1 cmd=${provides[$1]:-}
    if [ -n "$cmd" ] && ! command -v "$cmd" >/dev/null 2>&1; then
        return 1
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${packages[@]}"; do
    if installed "$pkg"; then
        echo "install-test-deps: $pkg already installed"
    else
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${missing[*]}; run this script as root to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update"
apt-get update -qq
echo "install-test-deps: installing ${missing[*]}"
apt-get install -y -qq "${missing[@]}"
for pkg in "${missing[@]}"; do
    if installed "$pkg"; then
        echo "install-test-deps: installed $pkg"
    else
        echo "install-test-deps: $pkg still missing after apt-get install" >&2
        exit 1
    fi
done
