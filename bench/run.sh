#!/usr/bin/env bash
# Reproducible benchmarks, not part of the test suite: builds a Release tree
# and runs each step below in turn, printing what it measured (with the
# machine line) and, where two designs are compared, their ratio:
#   engine_bench      direct SQLite vs the engine                    SKIP_ENGINE
#   durable_bench     ?wait=true acks of the real binary vs one
#                     commit per update on the same disk             SKIP_DURABLE
#   memory_bench      RSS per cached node                            SKIP_MEMORY
#   bigrun_bench      small runs beside a 100,000-node run           SKIP_BIGRUN
#   watch_bench       the 202 rate with and without watchers, and
#                     what idle streams cost                         SKIP_WATCH
#   cache_bench.sh    97 runs bounded vs unbounded cache (SOAK_SECONDS
#                     for the long soak)                             SKIP_CACHE
#   shutdown_bench.sh SIGTERM with the database locked: time to exit,
#                     every accepted update kept through the spill   SKIP_SHUTDOWN
#   TLS               the same wrk load over http and https          SKIP_TLS
#   batch_bench       1,000-update requests end to end vs the
#                     store's writer-only rate                       SKIP_BATCH
#   batch_cost_bench  CPU per batch item without HTTP: the decoder's
#                     fast path vs jansson's tree, the api layer     SKIP_BATCH
#   ratio_bench.sh    the 202 path vs a bare libmicrohttpd+jansson
#                     ceiling; ?wait=true vs 202, both sync modes    SKIP_RATIO
#   pg_bench.sh       nodestate on PostgreSQL vs pgbench workers     SKIP_PG
#   HTTP              wrk against the binary, then what reached
#                     the database                                   SKIP_HTTP
#
# Everything is overridable from the environment:
#   BUILD_DIR            build tree (default <repo>/build-bench)
#   BENCH_UPDATES        engine_bench --updates (default 300000)
#   BENCH_DIRECT_UPDATES engine_bench --direct-updates (default 20000)
#   BENCH_PRODUCERS      engine_bench --producers (default 8)
#   BENCH_BATCH_SIZE     engine_bench --batch-size (default: the service's)
#   BENCH_ARGS           more engine_bench arguments (e.g. "--sync full")
#   WRK_THREADS WRK_CONNECTIONS WRK_DURATION   wrk -t -c -d (2, 64, 10s)
#   HTTP_RUNS            runs the wrk script spreads nodes over (16)
#   SERVER_ARGS          more nodestate arguments (e.g. "--synchronous full")
#   DURABLE_CLIENTS      durable_bench --clients (default 32)
#   DURABLE_DURATION     durable_bench --duration seconds per sync mode (10)
#   DURABLE_CEILING_SECONDS  durable_bench --ceiling-seconds (6)
#   DURABLE_ARGS         more durable_bench arguments (e.g. "--sync full")
#   MEMORY_NODES         memory_bench --nodes (default 1000000)
#   MEMORY_THREADS       memory_bench --threads (default 8)
#   MEMORY_ARGS          more memory_bench arguments (e.g. "--runs 1000")
#   BIGRUN_NODES         bigrun_bench --nodes (default 100000)
#   BIGRUN_DURATION      bigrun_bench --duration seconds per phase (5)
#   BIGRUN_ARGS          more bigrun_bench arguments (e.g. "--big-clients 4")
#   WATCH_WATCHERS WATCH_IDLE WATCH_DURATION WATCH_ROUNDS   watch_bench
#                        --watchers (100) --idle (1000) --duration (5) --rounds (3)
#   WATCH_ARGS           more watch_bench arguments (e.g. "--writers 8")
#   SHUTDOWN_TIMEOUT WRITE_SECONDS   shutdown_bench.sh (8 s budget, 20 s of writes)
#   TLS_DURATION         wrk -d of each of the two TLS runs (default WRK_DURATION)
#   BATCH_CLIENTS        batch_bench --clients (default 4)
#   BATCH_SIZE           batch_bench --batch, updates per request (default 1000)
#   BATCH_DURATION       batch_bench --duration seconds (10)
#   BATCH_ARGS           more batch_bench arguments (e.g. "--server-arg --synchronous --server-arg full")
#   ROUNDS               ratio_bench.sh rounds per side (3; see that script for more)
#   NOSYNC_DIR           ratio_bench.sh also runs `full` with its file there (a
#                        tmpfs such as /dev/shm: the disk's sync removed)
#   CACHE_RUNS CACHE_BOUND CACHE_SECONDS   cache_bench.sh (97 runs, 100000 nodes, 60 s each)
#   SOAK_SECONDS SOAK_RUNS SOAK_BOUND      its soak (0 = none; 400 runs, 200000 nodes)
#   PG_BENCH_CONNECTIONS PG_BENCH_DURATION PG_BENCH_THREADS PG_BENCH_SERVER_ARGS
#                        pg_bench.sh (32 connections, 10 s per measurement; it
#                        needs PostgreSQL's server and pgbench)
#   SKIP_<STEP>=1        skip that step (the names in the list above)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
build=${BUILD_DIR:-$root/build-bench}
wrk_threads=${WRK_THREADS:-2}
wrk_connections=${WRK_CONNECTIONS:-64}
wrk_duration=${WRK_DURATION:-10s}
http_runs=${HTTP_RUNS:-16}

apt_updated=0
need() { # need COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is missing
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "run.sh: $1 not found, installing $2" >&2
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

need cmake cmake
need sqlite3 sqlite3
need curl curl
need wrk wrk
if [ "${SKIP_TLS:-0}" != 1 ]; then
    need openssl openssl
fi

echo "== build (Release) in $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" --target nodestate engine_bench durable_bench \
    memory_bench bigrun_bench batch_bench batch_cost_bench watch_bench ceiling_server -j "$(nproc)" >/dev/null

status=0

if [ "${SKIP_ENGINE:-0}" != 1 ]; then
    echo
    echo "== engine_bench"
    args=(--updates "${BENCH_UPDATES:-300000}"
          --direct-updates "${BENCH_DIRECT_UPDATES:-20000}"
          --producers "${BENCH_PRODUCERS:-8}")
    if [ -n "${BENCH_BATCH_SIZE:-}" ]; then
        args+=(--batch-size "$BENCH_BATCH_SIZE")
    fi
    # shellcheck disable=SC2206 # BENCH_ARGS is meant to be word-split
    extra=(${BENCH_ARGS:-})
    echo "\$ $build/bench/engine_bench ${args[*]} ${extra[*]}"
    "$build/bench/engine_bench" "${args[@]}" "${extra[@]}" || status=1
fi

if [ "${SKIP_DURABLE:-0}" != 1 ]; then
    echo
    echo "== durable_bench"
    args=(--server "$build/nodestate"
          --clients "${DURABLE_CLIENTS:-32}"
          --duration "${DURABLE_DURATION:-10}"
          --ceiling-seconds "${DURABLE_CEILING_SECONDS:-6}")
    # shellcheck disable=SC2206 # DURABLE_ARGS is meant to be word-split
    extra=(${DURABLE_ARGS:-})
    echo "\$ $build/bench/durable_bench ${args[*]} ${extra[*]}"
    "$build/bench/durable_bench" "${args[@]}" "${extra[@]}" || status=1
fi

if [ "${SKIP_MEMORY:-0}" != 1 ]; then
    echo
    echo "== memory_bench"
    args=(--server "$build/nodestate"
          --nodes "${MEMORY_NODES:-1000000}"
          --threads "${MEMORY_THREADS:-8}")
    # shellcheck disable=SC2206 # MEMORY_ARGS is meant to be word-split
    extra=(${MEMORY_ARGS:-})
    echo "\$ $build/bench/memory_bench ${args[*]} ${extra[*]}"
    "$build/bench/memory_bench" "${args[@]}" "${extra[@]}" || status=1
fi

if [ "${SKIP_BIGRUN:-0}" != 1 ]; then
    echo
    echo "== bigrun_bench"
    args=(--server "$build/nodestate"
          --nodes "${BIGRUN_NODES:-100000}"
          --duration "${BIGRUN_DURATION:-5}")
    # shellcheck disable=SC2206 # BIGRUN_ARGS is meant to be word-split
    extra=(${BIGRUN_ARGS:-})
    echo "\$ $build/bench/bigrun_bench ${args[*]} ${extra[*]}"
    "$build/bench/bigrun_bench" "${args[@]}" "${extra[@]}" || status=1
fi

if [ "${SKIP_WATCH:-0}" != 1 ]; then
    echo
    echo "== watch_bench"
    args=(--server "$build/nodestate"
          --watchers "${WATCH_WATCHERS:-100}"
          --idle "${WATCH_IDLE:-1000}"
          --duration "${WATCH_DURATION:-5}"
          --rounds "${WATCH_ROUNDS:-3}")
    # shellcheck disable=SC2206 # WATCH_ARGS is meant to be word-split
    extra=(${WATCH_ARGS:-})
    echo "\$ $build/bench/watch_bench ${args[*]} ${extra[*]}"
    "$build/bench/watch_bench" "${args[@]}" "${extra[@]}" || status=1
fi

if [ "${SKIP_CACHE:-0}" != 1 ]; then
    echo
    echo "== cache_bench (97 runs, bounded vs unbounded cache)"
    NODESTATE_BIN="$build/nodestate" bash "$root/bench/cache_bench.sh" || status=1
fi

if [ "${SKIP_SHUTDOWN:-0}" != 1 ]; then
    echo
    echo "== shutdown_bench (SIGTERM with the database locked)"
    NODESTATE_BIN="$build/nodestate" bash "$root/bench/shutdown_bench.sh" || status=1
fi

if [ "${SKIP_TLS:-0}" != 1 ]; then
    echo
    echo "== TLS: the same wrk load over http and https"
    # One server at a time, each on a fresh database, with a certificate made
    # here. wrk keeps its connections alive, so this is the cost of TLS per
    # request (encryption), not of a handshake per request.
    tls_tmp=$(mktemp -d "${TMPDIR:-/tmp}/nodestate-bench-tls.XXXXXX")
    tls_pid=
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls_tmp/key.pem" -out "$tls_tmp/cert.pem" -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
    tls_rps=()
    for scheme in http https; do
        tls_args=()
        if [ "$scheme" = https ]; then
            tls_args=(--tls-cert "$tls_tmp/cert.pem" --tls-key "$tls_tmp/key.pem")
        fi
        # shellcheck disable=SC2086 # SERVER_ARGS is meant to be word-split
        "$build/nodestate" --listen 127.0.0.1:0 --db "$tls_tmp/$scheme.db" \
            --port-file "$tls_tmp/$scheme.port" "${tls_args[@]}" ${SERVER_ARGS:-} \
            2>"$tls_tmp/$scheme.log" &
        tls_pid=$!
        for _ in $(seq 100); do
            [ -s "$tls_tmp/$scheme.port" ] && break
            kill -0 "$tls_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ ! -s "$tls_tmp/$scheme.port" ]; then
            echo "run.sh: the $scheme server did not start; its log:" >&2
            cat "$tls_tmp/$scheme.log" >&2
            kill -TERM "$tls_pid" 2>/dev/null || true
            status=1
            break
        fi
        tls_port=$(cat "$tls_tmp/$scheme.port")
        tls_cmd=(wrk "-t$wrk_threads" "-c$wrk_connections" "-d${TLS_DURATION:-$wrk_duration}"
                 -s "$root/bench/http_lifecycle.lua" "$scheme://127.0.0.1:$tls_port" -- "$http_runs")
        echo "\$ ${tls_cmd[*]}"
        "${tls_cmd[@]}" >"$tls_tmp/$scheme.wrk"
        tls_rps+=("$(awk '/^Requests\/sec:/ { print $2 }' "$tls_tmp/$scheme.wrk")")
        grep -E 'Requests/sec|Latency  |Non-2xx' "$tls_tmp/$scheme.wrk" | sed "s/^/  $scheme: /"
        kill -TERM "$tls_pid"
        wait "$tls_pid" || status=1
        tls_pid=
    done
    if [ "${#tls_rps[@]}" = 2 ]; then
        echo "requests/s http / https: ${tls_rps[0]} / ${tls_rps[1]}" \
             "(https = $(awk -v a="${tls_rps[0]}" -v b="${tls_rps[1]}" \
                 'BEGIN { printf "%.2f", b / a }') x http)"
    fi
    rm -rf "$tls_tmp"
fi

if [ "${SKIP_BATCH:-0}" != 1 ]; then
    echo
    echo "== batch_bench (POST /runs/{run_id}/nodes, 1,000 updates per request)"
    args=(--server "$build/nodestate"
          --clients "${BATCH_CLIENTS:-4}"
          --batch "${BATCH_SIZE:-1000}"
          --duration "${BATCH_DURATION:-10}")
    # shellcheck disable=SC2206 # BATCH_ARGS is meant to be word-split
    extra=(${BATCH_ARGS:-})
    echo "\$ $build/bench/batch_bench ${args[*]} ${extra[*]}"
    "$build/bench/batch_bench" "${args[@]}" "${extra[@]}" || status=1
    echo
    echo "== batch_cost_bench (CPU per batch item, no HTTP)"
    echo "\$ $build/bench/batch_cost_bench"
    "$build/bench/batch_cost_bench" || status=1
fi

if [ "${SKIP_RATIO:-0}" != 1 ]; then
    echo
    echo "== ratio_bench (202 vs the stack's ceiling; ?wait=true vs 202)"
    NODESTATE_BIN="$build/nodestate" CEILING_BIN="$build/bench/ceiling_server" \
        bash "$root/bench/ratio_bench.sh" || status=1
fi

if [ "${SKIP_PG:-0}" != 1 ]; then
    echo
    echo "== pg_bench (nodestate on PostgreSQL vs one upsert per transaction)"
    BUILD_DIR="$build" bash "$root/bench/pg_bench.sh" || status=1
fi

if [ "${SKIP_HTTP:-0}" = 1 ]; then
    exit "$status"
fi

echo
echo "== HTTP: wrk against $build/nodestate"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nodestate-bench.XXXXXX")
server_pid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

db=$tmp/nodestate.db
# Port 0: the kernel picks a free port; the server logs the real one.
# shellcheck disable=SC2086 # SERVER_ARGS is meant to be word-split
"$build/nodestate" --listen 127.0.0.1:0 --db "$db" ${SERVER_ARGS:-} \
    2>"$tmp/server.log" &
server_pid=$!

addr=$(bench_wait_addr "$tmp/server.log" "$server_pid" run.sh)
echo "server: pid $server_pid, $addr, db $db ${SERVER_ARGS:-}"

wrk_cmd=(wrk "-t$wrk_threads" "-c$wrk_connections" "-d$wrk_duration" --latency
         -s "$root/bench/http_lifecycle.lua" "http://$addr" -- "$http_runs")
echo "\$ ${wrk_cmd[*]}"
"${wrk_cmd[@]}" | tee "$tmp/wrk.out"

# Requests still in flight when wrk stopped are answered by now.
sleep 0.5
stats=$(curl -fsS "http://$addr/stats?format=json")
echo "$stats" >"$tmp/stats.json"

kill -TERM "$server_pid"
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=
if [ "$server_rc" != 0 ] || ! grep -q 'msg=stopped' "$tmp/server.log"; then
    echo "run.sh: server exit status $server_rc after SIGTERM; its log:" >&2
    tail -n 20 "$tmp/server.log" >&2
    status=1
fi

lc() { awk -v k="$1" '$1 == "lifecycle" && $2 == k { print $3 }' "$tmp/wrk.out"; }
rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk.out")
p50=$(awk '/Latency Distribution/ { f = 1; next } f && $1 == "50%" { print $2; exit }' "$tmp/wrk.out")
p99=$(awk '/Latency Distribution/ { f = 1; next } f && $1 == "99%" { print $2; exit }' "$tmp/wrk.out")
answered=$(awk '/ requests in / { print $1 }' "$tmp/wrk.out")
non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$tmp/wrk.out")
non2xx=${non2xx:-0}
ok2xx=$(( answered - non2xx ))
sent=$(lc requests_sent)
started=$(lc nodes_started)
completed=$(lc nodes_completed)
queued=$(printf '%s' "$stats" | grep -o '"updates_queued":[0-9]*' | cut -d: -f2)
read -r rows db_completed < <(sqlite3 -separator ' ' "$db" \
    "SELECT count(*), coalesce(sum(status = 'completed'), 0) FROM run_node_state")

echo
echo "== HTTP results (wrk -t$wrk_threads -c$wrk_connections -d$wrk_duration)"
echo "requests/s:            $rps"
echo "latency p50 / p99:     $p50 / $p99"
echo "2xx / non-2xx:         $ok2xx / $non2xx (of $sent sent)"
echo

# wrk never reads the answers to requests in flight when it stops (at most one
# per connection), though the server may have accepted them: the server is
# ahead of the answers wrk counted, and behind what wrk sent, by at most
# $wrk_connections. A non-2xx answer is a loss.
within() { # within LABEL LOW HIGH: 0 <= HIGH - LOW <= connections
    local diff=$(( $3 - $2 ))
    local verdict=OK
    if [ "$diff" -lt 0 ] || [ "$diff" -gt "$wrk_connections" ]; then
        verdict=FAILED
        status=1
    fi
    printf 'check %-38s %-9s <= %-9s diff %-4s %s\n' "$1" "$2" "$3" "$diff" "$verdict"
}
within "2xx answers <= updates_queued" "$ok2xx" "$queued"
within "updates_queued <= requests sent" "$queued" "$sent"
within "rows in the file <= nodes started" "$rows" "$started"
within "completed rows <= nodes completed" "$db_completed" "$completed"
if [ "$non2xx" != 0 ]; then
    echo "check non-2xx answers: $non2xx FAILED"
    status=1
fi
exit "$status"
