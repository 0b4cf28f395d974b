#!/usr/bin/env bash
# bench/smoke.sh: a short check that the benchmark's generator works, for
# ctest: builds loadgen and rawecho, runs loadgen echo for ~2 s against
# moonwire (bench/apps/echo.lua, text and binary) and against rawecho, a
# short broadcast, and echo over TLS and with permessage-deflate; each must
# verify every byte and move messages.
# Usage: bench/smoke.sh [MOONWIRE_BINARY]   (default: build-bench, then build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
mw="${1:-}"
if [ -z "$mw" ]; then
    for b in "$root/build-bench/moonwire" "$root/build/moonwire"; do
        [ -x "$b" ] && { mw="$b"; break; }
    done
fi
[ -x "$mw" ] || { echo "smoke: no moonwire binary (pass its path)" >&2; exit 2; }
out="$(mktemp -d /tmp/moonwire-bench-smoke.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$out"
}
trap cleanup EXIT
make -s -C "$here" BUILD="$out" tools >/dev/null

start() { # start LOG CMD...: runs CMD, waits for "listening on HOST:PORT", sets PORT
    local log=$1
    shift
    "$@" 2>"$log" &
    pids+=($!)
    for _ in $(seq 100); do
        PORT="$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)"
        [ -n "$PORT" ] && return 0
        sleep 0.05
    done
    echo "smoke: $* did not start:" >&2
    cat "$log" >&2
    return 1
}

failed=0
check() { # check NAME JSON: verified and nonzero throughput
    local name=$1 json=$2
    if python3 - "$json" <<'PY'; then echo "ok: $name"; else echo "FAILED: $name: $json" >&2; failed=$((failed + 1)); fi
import json, sys
r = json.loads(sys.argv[1])
rate = r.get("deliveries_per_s") or r.get("msgs_per_s") or 0
sys.exit(0 if r.get("verified") and rate > 0 else 1)
PY
}

lg="$out/bench/loadgen"
start "$out/mw.log" "$mw" "$here/apps/echo.lua" --listen 127.0.0.1:0 --log-level warn
mwport=$PORT
start "$out/mwb.log" "$mw" "$here/apps/broadcast.lua" --listen 127.0.0.1:0 --log-level warn
mwbport=$PORT
start "$out/raw.log" "$out/bench/rawecho" --listen 127.0.0.1:0
rawport=$PORT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$out/key.pem" -out "$out/cert.pem" -days 2 \
    -subj /CN=localhost 2>/dev/null
start "$out/mwz.log" "$mw" "$here/apps/echo_deflate.lua" --listen 127.0.0.1:0 --log-level info \
    --tls-listen 127.0.0.1:0 --tls-cert "$out/cert.pem" --tls-key "$out/key.pem"
mwzport=$PORT
for _ in $(seq 100); do
    tlsport="$(sed -n 's/.*TLS listening on [0-9.]*:\([0-9]*\).*/\1/p' "$out/mwz.log" | head -1)"
    [ -n "$tlsport" ] && break
    sleep 0.05
done

run() { "$lg" "$@" --warmup 0.2 --quiet 2>"$out/gen.err" || { cat "$out/gen.err" >&2; true; }; }
check "moonwire echo text" "$(run echo --port "$mwport" --conns 20 --depth 4 --size 100 --duration 1.5)"
check "moonwire echo binary 70000 B" \
    "$(run echo --port "$mwport" --conns 4 --depth 2 --size 70000 --binary --duration 1)"
check "rawecho" "$(run raw --port "$rawport" --conns 20 --depth 4 --size 100 --duration 1.5)"
check "moonwire broadcast" "$(run broadcast --port "$mwbport" --conns 50 --depth 4 --size 48 --duration 1)"
check "moonwire echo deflate" \
    "$(run echo --port "$mwzport" --conns 10 --depth 4 --size 300 --deflate --duration 1)"
check "moonwire echo TLS" "$(run echo --port "$tlsport" --conns 10 --depth 4 --size 300 --tls --duration 1)"
check "moonwire echo TLS + deflate, 70000 B binary" \
    "$(run echo --port "$tlsport" --conns 4 --depth 2 --size 70000 --binary --tls --deflate --duration 1)"
echo "$((7 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
