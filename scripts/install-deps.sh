#!/usr/bin/env bash
# Installs the Debian packages moonwire needs to build and test, if any are
# missing. Runs apt-get only when something is missing, and only as root;
# otherwise it prints the command to run. Usage: scripts/install-deps.sh [build|test]
set -euo pipefail

# lua-cjson: the default app (apps/chat) speaks JSON.
build_pkgs=(gcc make cmake pkg-config libluajit2-5.1-dev luajit2 libev-dev libssl-dev
            zlib1g-dev libhiredis-dev lua-cjson)
test_pkgs=(lua-busted lua-socket lua-posix lua-check luarocks redis-server python3
           python3-websockets clang-format valgrind openssl clang libclang-rt-14-dev
           lua-dkjson chromium fonts-liberation)

want=("${build_pkgs[@]}")
if [ "${1:-build}" = test ]; then
  want+=("${test_pkgs[@]}")
  # Node's ws client needs node and npm; a machine that already has them
  # (from anywhere) keeps its own.
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "moonwire: missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "moonwire: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
