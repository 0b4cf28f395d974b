#!/usr/bin/env bash
# bench/install-deps.sh: installs what `make bench` needs beyond the build
# packages, and only what is missing: Go with gorilla/websocket (the Go peer,
# built offline from Debian's /usr/share/gocode), nginx with the Lua module and
# lua-resty-websocket (the nginx peer), gnuplot (plots), and Node's ws (npm,
# into bench/refs/node/node_modules). Run as root; otherwise it prints the
# apt-get command. Usage: bench/install-deps.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

want=(gcc make cmake util-linux golang-go golang-github-gorilla-websocket-dev nginx
      libnginx-mod-http-lua lua-nginx-websocket gnuplot-nox linux-perf valgrind)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
# Any nginx flavour (nginx, nginx-light, ...) will do: keep the one that is there.
if command -v nginx >/dev/null 2>&1; then
    tmp=()
    for p in "${missing[@]}"; do [ "$p" = nginx ] || tmp+=("$p"); done
    missing=("${tmp[@]+"${tmp[@]}"}")
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing Debian packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "bench: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian nginx package starts a service on port 80; the benchmark runs its
# own nginx processes and needs none.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi

if [ ! -d "$here/refs/node/node_modules/ws" ]; then
    (cd "$here/refs/node" && npm ci --no-audit --no-fund --silent)
fi
