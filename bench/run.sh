#!/usr/bin/env bash
# bench/run.sh: the benchmark. Builds moonwire (Release), the generator, the
# raw echo server and the peers, runs every scenario against every server
# (server on CPU 0, generator on CPU 1), BENCH_RUNS times each with a fresh
# server per run, and writes bench/results/*.json, docs/benchmarks.md and
# docs/bench-*.png (bench/report.py, gnuplot). Prints one progress line per run.
#
# Environment: BENCH_RUNS (3), BENCH_PAIRS (5: back-to-back moonwire/raw pairs
# per echo and broadcast scenario, the targets' figure), BENCH_DURATION (5 s measured), BENCH_WARMUP (1 s),
# BENCH_SERVERS ("moonwire raw gorilla node nginx"), BENCH_SCENARIOS (all),
# BENCH_SERVER_CPU (0), BENCH_GEN_CPU (1), BENCH_SKIP_DEPS=1 to skip installs,
# BENCH_KEEP=1 to keep earlier results (re-run some servers or scenarios only),
# BENCH_VARIANTS (all the server and generator have: plain, workers2, broker,
# tls, deflate) to run only some of them.
# The progress line also shows the load average: other work on the machine
# (a test suite next door) makes runs noisy, and the min-max shows it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="${BENCH_BUILD:-$root/build-bench}"
out="$build/bench"
results="$here/results"
runs="${BENCH_RUNS:-3}"
pairs="${BENCH_PAIRS:-5}"
duration="${BENCH_DURATION:-5}"
warmup="${BENCH_WARMUP:-1}"
scpu="${BENCH_SERVER_CPU:-0}"
gcpu="${BENCH_GEN_CPU:-1}"
servers="${BENCH_SERVERS:-moonwire raw gorilla node nginx}"
scenarios="${BENCH_SCENARIOS:-echo32-d1 echo32-d32 echo16k-d4 broadcast-1k broadcast-1k-d32 idle-10k idle-10k-data idle-max}"

say() { printf 'bench: %s\n' "$*" >&2; }

# --- build -----------------------------------------------------------------
[ "${BENCH_SKIP_DEPS:-0}" = 1 ] || "$here/install-deps.sh"
say "building moonwire (Release) in $build"
# MW_WERROR=OFF: a Release (-O3) build only; GCC 12's -Wuse-after-free gives a
# false positive there that the RelWithDebInfo build does not (see docs/performance.md).
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMW_WERROR=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target moonwire >/dev/null
make -s -C "$here" BUILD="$build" tools
have() { command -v "$1" >/dev/null 2>&1; }
peers_ok=""
for s in $servers; do
    case $s in
    gorilla)
        if have go && [ -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
            (cd "$here/refs/gorilla" && GOPATH=/usr/share/gocode GO111MODULE=off \
                GOCACHE="$build/gocache" go build -o "$out/gorilla-ref" main.go)
            peers_ok+=" gorilla"
        else say "skipping gorilla: go or golang-github-gorilla-websocket-dev missing"; fi ;;
    node)
        if have node && [ -d "$here/refs/node/node_modules/ws" ]; then peers_ok+=" node"
        else say "skipping node: node or bench/refs/node/node_modules/ws missing"; fi ;;
    nginx)
        if have nginx && [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then peers_ok+=" nginx"
        else say "skipping nginx: nginx or libnginx-mod-http-lua missing"; fi ;;
    *) peers_ok+=" $s" ;;
    esac
done
servers="${peers_ok# }"

# Feature hooks: variants that run once the server (and the generator) has
# them. TLS and permessage-deflate need generator support too (not yet there);
# --workers 2 needs both CPUs for the server, so it would share CPU 1 with the
# generator and is reported apart.
variants="plain"
mw_help="$("$build/moonwire" --help 2>&1 || true)"
if grep -q -- '--workers' <<<"$mw_help"; then variants+=" workers2"; fi
# broker: broadcast across two moonwire processes through a redis-server
# (subscribers on one, the publisher on the other); all three on the server CPU.
if grep -q -- '--broker' <<<"$mw_help" && have redis-server; then variants+=" broker"; fi
# tls: the same scenario over TLS (moonwire's --tls-listen, a self-signed
# certificate); deflate: permessage-deflate on every message both ways (apps
# echo_deflate and broadcast_deflate). Echo and broadcast scenarios only.
lg_help="$("$out/loadgen" 2>&1 || true)" # its usage (exit status 2)
if grep -q -- '--tls-listen' <<<"$mw_help" && grep -q -- --tls <<<"$lg_help"; then variants+=" tls"; fi
if grep -q -- --deflate <<<"$lg_help"; then variants+=" deflate"; fi
if [ -n "${BENCH_VARIANTS:-}" ]; then
    keep=""
    for v in $variants; do [[ " $BENCH_VARIANTS " == *" $v "* ]] && keep+=" $v"; done
    variants="${keep# }"
fi

# --- servers ---------------------------------------------------------------
fdlimit="$(ulimit -Hn)"
ulimit -n "$fdlimit"
max_conns=$((fdlimit - 100)) # the server's own descriptors: listener, epoll, logs, Lua
# Below the ephemeral range (32768-60999): the generator's own connections
# take ephemeral ports on 127.0.0.1, and a server port among them may be busy.
port=$((12000 + RANDOM % 12000))
SPID="" SPORT="" RSSPID="" SLOG="" PUBPORT="" EXTRA_PIDS=""
work="$(mktemp -d /tmp/moonwire-bench.XXXXXX)"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 2 -subj /CN=localhost 2>/dev/null
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # wait_port PORT: until something accepts there (5 s)
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_server() { # start_server SERVER APP VARIANT SCENARIO
    local s=$1 app=$2 variant=$3 scenario=$4
    port=$((port + 1))
    SPORT=$port
    SLOG="$work/$s.log"
    local pin=(taskset -c "$scpu")
    case $s in
    moonwire)
        local extra=()
        [ "$variant" = workers2 ] && { extra=(--workers 2); pin=(taskset -c "$scpu,$gcpu"); }
        [ "$variant" = deflate ] && app="${app}_deflate"
        # Idle scenarios hold with heartbeats on, a ping a second to every
        # connection, so the hold shows what they cost as the count grows.
        [[ $scenario == idle-* ]] && extra+=(--ping-interval 1)
        if [ "$variant" = tls ]; then
            port=$((port + 1))
            SPORT=$port # the generator talks to the TLS listener
            extra=(--tls-listen "127.0.0.1:$port" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
            "${pin[@]}" "$build/moonwire" "$here/apps/$app.lua" --listen "127.0.0.1:$((port - 1))" \
                --max-connections "$max_conns" --log-level warn "${extra[@]}" 2>"$SLOG" &
            SPID=$! RSSPID=$SPID
            wait_port "$SPORT" || { say "moonwire (TLS) did not start: $(tail -3 "$SLOG")"; stop_server; return 1; }
            return 0
        fi
        if [ "$variant" = broker ]; then
            local rport=$((port + 1)) pport=$((port + 2))
            "${pin[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
                --dir "$work" --logfile "$work/redis.log" &
            EXTRA_PIDS="$!"
            wait_port "$rport" || { say "redis-server did not start"; return 1; }
            extra=(--broker "redis://127.0.0.1:$rport")
            "${pin[@]}" "$build/moonwire" "$here/apps/$app.lua" --listen "127.0.0.1:$pport" \
                --max-connections "$max_conns" --log-level warn "${extra[@]}" 2>"$SLOG.pub" &
            EXTRA_PIDS+=" $!"
            wait_port "$pport" || { say "moonwire (publisher side) did not start"; return 1; }
            PUBPORT=$pport
            port=$pport
        fi
        "${pin[@]}" "$build/moonwire" "$here/apps/$app.lua" --listen "127.0.0.1:$SPORT" \
            --max-connections "$max_conns" --log-level warn "${extra[@]}" 2>"$SLOG" &
        SPID=$! RSSPID=$SPID ;;
    raw)
        "${pin[@]}" "$out/rawecho" --listen "127.0.0.1:$port" 2>"$SLOG" &
        SPID=$! RSSPID=$SPID ;;
    gorilla | node)
        # the peers' own TLS and permessage-deflate (see peer_has)
        local extra=()
        [ "$variant" = tls ] && extra=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
        [ "$variant" = deflate ] && extra=(--deflate)
        if [ "$s" = gorilla ]; then
            GOMAXPROCS=1 "${pin[@]}" "$out/gorilla-ref" --listen "127.0.0.1:$port" "${extra[@]}" 2>"$SLOG" &
        else
            "${pin[@]}" node "$here/refs/node/server.js" --listen "127.0.0.1:$port" "${extra[@]}" 2>"$SLOG" &
        fi
        SPID=$! RSSPID=$SPID ;;
    nginx)
        local p="$work/nginx" tls=""
        [ "$variant" = tls ] && tls=" ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem"
        rm -rf "$p" && mkdir -p "$p/tmp"
        sed "s#@PREFIX@#$p#g; s#@LISTEN@#127.0.0.1:$port#; s#@LUA_DIR@#$here/refs/nginx#; s#@TLS@#$tls#" \
            "$here/refs/nginx/nginx.conf" >"$p/nginx.conf"
        "${pin[@]}" nginx -p "$p" -c "$p/nginx.conf" 2>"$SLOG" &
        SPID=$! ;;
    esac
    if ! wait_port "$SPORT"; then
        say "$s did not start: $(tail -3 "$SLOG" "$work/nginx/error.log" 2>/dev/null)"
        stop_server
        return 1
    fi
    if [ "$s" = nginx ]; then RSSPID="$(pgrep -P "$SPID" | head -1)"; fi
}

stop_server() {
    for p in $EXTRA_PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $EXTRA_PIDS; do wait "$p" 2>/dev/null || true; done
    EXTRA_PIDS="" PUBPORT=""
    [ -n "$SPID" ] || return 0
    kill "$SPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
}

# --- scenarios -------------------------------------------------------------
# scenario -> generator mode and arguments, app (moonwire), servers it applies to
scenario_args() {
    local common=(--duration "$duration" --warmup "$warmup" --quiet)
    case $1 in
    echo32-d1) echo echo --conns 100 --depth 1 --size 32 --text "${common[@]}" ;;
    echo32-d32) echo echo --conns 100 --depth 32 --size 32 --text "${common[@]}" ;;
    echo16k-d4) echo echo --conns 100 --depth 4 --size 16384 --binary "${common[@]}" ;;
    broadcast-1k) echo broadcast --conns 1000 --depth 8 --size 32 --text "${common[@]}" ;;
    # as many publishes in flight as echo32-d32 has messages per connection:
    # the issue's target compares it with the raw echo at that depth
    broadcast-1k-d32) echo broadcast --conns 1000 --depth 32 --size 32 --text "${common[@]}" ;;
    idle-10k | idle-10k-data) echo idle --conns 10000 --procs 1 --src-addrs 8 --hold 3 --quiet ;;
    idle-max) echo idle --conns "$max_conns" --procs 2 --src-addrs 16 --hold 3 --quiet ;;
    esac
}
# Which peers also run a variant: TLS all three; permessage-deflate gorilla
# and Node (lua-resty-websocket has no permessage-deflate).
peer_has() { # peer_has SERVER VARIANT
    case $2 in
    tls) [[ $1 == gorilla || $1 == node || $1 == nginx ]] ;;
    deflate) [[ $1 == gorilla || $1 == node ]] ;;
    *) return 1 ;;
    esac
}
scenario_app() { case $1 in broadcast-*) echo broadcast ;; *-data) echo echo_data ;; *) echo echo ;; esac; }

plan=()
for sc in $scenarios; do
    for s in $servers; do
        [ "$s" = raw ] && [[ $sc == broadcast-* ]] && continue
        [ "$s" != moonwire ] && [[ $sc == *-data ]] && continue # ws.data is ours
        for v in $variants; do
            [ "$v" != plain ] && [ "$s" != moonwire ] && ! peer_has "$s" "$v" && continue
            [ "$v" = broker ] && [[ $sc != broadcast-* ]] && continue
            [[ $v == tls || $v == deflate ]] && [[ $sc == idle-* ]] && continue
            plan+=("$sc $s $v")
        done
    done
done
pair_scenarios=()
if [[ " $servers " == *" moonwire "* && " $servers " == *" raw "* && " $variants " == *" plain "* ]]; then
    for sc in $scenarios; do [[ $sc == echo* || $sc == broadcast-* ]] && pair_scenarios+=("$sc"); done
fi
total=$((${#plan[@]} * runs + ${#pair_scenarios[@]} * pairs * 2))
mkdir -p "$results/pairs"
# BENCH_KEEP=1 keeps earlier results (to re-run some servers or scenarios)
[ "${BENCH_KEEP:-0}" = 1 ] || rm -f "$results"/*.json "$results"/pairs/*.json
# Pairs must not outlive the moonwire or raw runs they were measured beside:
# a scenario whose plain moonwire or raw runs are re-made loses its old pairs
# (and gets new ones when both servers run).
if [[ " $variants " == *" plain "* && (" $servers " == *" moonwire "* || " $servers " == *" raw "*) ]]; then
    for sc in $scenarios; do rm -f "$results/pairs/$sc".*.json; done
fi
say "$total runs: $(tr '\n' ' ' <<<"$scenarios")on $servers; server CPU $scpu, generator CPU $gcpu"
n=0
t0=$(date +%s)
failures=0
# Runs interleave within a scenario: run 1 of every server, then run 2, and
# so on, so a drift in the machine's load (it is shared) spreads over every
# server of the scenario instead of landing on one, and the ratios of
# medians stay comparable.
order=()
for sc in $scenarios; do
    for i in $(seq "$runs"); do
        for item in "${plan[@]}"; do
            [ "${item%% *}" = "$sc" ] && order+=("$item $i")
        done
    done
done
run_one() { # run_one SCENARIO SERVER VARIANT RESULT-FILE: start, measure, stop
    local sc=$1 s=$2 v=$3 f=$4
    # shellcheck disable=SC2207
    local args=($(scenario_args "$sc"))
    if ! start_server "$s" "$(scenario_app "$sc")" "$v" "$sc"; then
        echo "{\"mode\":\"${args[0]}\",\"label\":\"$s\",\"verified\":false,\"first_error\":\"server did not start\"}" >"$f"
        failures=$((failures + 1))
        return 0
    fi
    local gen=(taskset -c "$gcpu" "$out/loadgen" "${args[@]}" --port "$SPORT" --label "$s")
    if [ "$s" = raw ]; then # plain TCP against the raw echo server
        [ "${args[0]}" = echo ] && gen[4]=raw
        [ "${args[0]}" = idle ] && gen+=(--tcp)
    fi
    gen+=(--server-pid "$RSSPID") # idle: RSS and CPU; others: CPU share
    [ "${args[0]}" = broadcast ] && gen+=(--sub-path /sub --pub-path /pub)
    [ -n "$PUBPORT" ] && gen+=(--pub-port "$PUBPORT")
    [ "$v" = tls ] && gen+=(--tls)
    [ "$v" = deflate ] && gen+=(--deflate)
    "${gen[@]}" >"$f" 2>"$work/gen.err" || { failures=$((failures + 1)); cat "$work/gen.err" >&2; }
    stop_server
}
progress() { # progress SCENARIO SERVER WHAT RESULT-FILE
    n=$((n + 1))
    local line el eta
    line="$(python3 "$here/report.py" --summary "$4")"
    el=$(($(date +%s) - t0))
    eta=$((el * (total - n) / n))
    printf '[%3d/%3d %3dm%02ds, ~%dm%02ds left] %-13s %-16s %s: %s\n' "$n" "$total" \
        $((el / 60)) $((el % 60)) $((eta / 60)) $((eta % 60)) "$1" "$2" "$3" "$line; load $(cut -d' ' -f1 /proc/loadavg)" >&2
}
for entry in "${order[@]}"; do
    read -r sc s v i <<<"$entry"
    name="$s"
    [ "$v" != plain ] && name="$s-$v"
    f="$results/$sc.$name.$i.json"
    run_one "$sc" "$s" "$v" "$f"
    progress "$sc" "$name" "run $i" "$f"
done
# The targets' pairs: moonwire and raw back to back, BENCH_PAIRS times,
# which one goes first alternating. Each pair's ratio is measured within some
# 15 s, so the machine's drift over minutes (the shared host's load moves the
# raw echo by up to 30% between runs) cancels; report.py takes the median of
# the pairs' ratios as the target's figure. An echo scenario pairs with the
# raw echo of the same scenario; a broadcast one with the raw echo32-d32,
# which is what its target compares it with (raw/ keeps that run's scenario
# in its file name: pairs/broadcast-1k.raw.1.json ran echo32-d32).
for sc in "${pair_scenarios[@]}"; do
    ref=$sc
    [[ $sc == broadcast-* ]] && ref=echo32-d32
    for k in $(seq "$pairs"); do
        order2=("moonwire $sc" "raw $ref")
        [ $((k % 2)) = 0 ] && order2=("raw $ref" "moonwire $sc")
        for item in "${order2[@]}"; do
            read -r s run_sc <<<"$item"
            f="$results/pairs/$sc.$s.$k.json"
            run_one "$run_sc" "$s" plain "$f"
            progress "$run_sc" "$s" "pair $k" "$f"
        done
    done
done

# --- report ----------------------------------------------------------------
env_info="$(uname -r); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); \
$(nproc) CPUs; generator $(gcc --version | head -1)"
python3 "$here/report.py" --results "$results" --docs "$root/docs" --runs "$runs" \
    --duration "$duration" --env "$env_info" \
    --versions "moonwire $("$build/moonwire" --version 2>&1 | head -1); $(go version 2>/dev/null | cut -d' ' -f3); node $(node --version 2>/dev/null); ws $(node -p 'require("'"$here"'/refs/node/node_modules/ws/package.json").version' 2>/dev/null); $(nginx -v 2>&1 | cut -d' ' -f3)"
say "wrote docs/benchmarks.md and docs/bench-*.png ($failures failed runs) in $((($(date +%s) - t0) / 60)) min"
[ "$failures" -eq 0 ]
