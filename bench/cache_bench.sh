#!/usr/bin/env bash
# The bounded cache under many runs: the rate a bound on the cache costs.
# wrk posts node lifecycles (bench/http_lifecycle.lua: scheduled, running,
# completed) spread over CACHE_RUNS runs, first against a server with no cache
# bound, then against one with --cache-max-nodes CACHE_BOUND, for
# CACHE_SECONDS each, and prints both rates and their ratio (bounded /
# unbounded), with what the bounded server's counters say: nodes evicted,
# runs read whole (cache_run_loads: a write never reads a run whole), and the
# peak of cache_nodes (sampled every second) against the bound.
#
# SOAK_SECONDS > 0 adds the soak: the same pair over SOAK_RUNS runs with
# --cache-max-nodes SOAK_BOUND, SOAK_SECONDS each, printing the rate of every
# minute of both (updates accepted, from /stats) and their ratio, and the
# peak of cache_nodes against the bound and the deepest queue seen: the cache
# may pass its bound only by nodes whose writes are still queued.
#
# Not part of the test suite; the numbers depend on the machine, which is
# why both servers run in the same invocation and the ratio is what counts.
#
# Environment: NODESTATE_BIN (default <repo>/build-bench/nodestate),
# CACHE_RUNS (97), CACHE_BOUND (100000), CACHE_SECONDS (60),
# SOAK_SECONDS (0: no soak), SOAK_RUNS (400), SOAK_BOUND (200000),
# WRK_THREADS (2), WRK_CONNECTIONS (64), SERVER_ARGS (more nodestate arguments).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${NODESTATE_BIN:-$root/build-bench/nodestate}
runs=${CACHE_RUNS:-97}
bound=${CACHE_BOUND:-100000}
seconds=${CACHE_SECONDS:-60}
soak_seconds=${SOAK_SECONDS:-0}
soak_runs=${SOAK_RUNS:-400}
soak_bound=${SOAK_BOUND:-200000}
wrk_threads=${WRK_THREADS:-2}
wrk_connections=${WRK_CONNECTIONS:-64}
for c in wrk curl awk; do
    command -v "$c" >/dev/null 2>&1 || { echo "cache_bench: $c not found" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "cache_bench: no binary $bin (set NODESTATE_BIN)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nodestate-cache.XXXXXX")
server_pid=
sampler_pid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [ -n "$sampler_pid" ]; then kill -TERM "$sampler_pid" 2>/dev/null || true; fi
    if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

machine() {
    local cpu
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "machine: nproc $(nproc), cpu \"${cpu:-unknown}\", kernel $(uname -srm)," \
         "load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
}

stat_of() { # stat_of JSON NAME: an integer member of /stats?format=json
    printf '%s' "$1" | grep -o "\"$2\":[0-9]*" | head -n 1 | cut -d: -f2
}

# phase LABEL SECONDS RUNS [SERVER ARGS...]: one server, wrk for SECONDS,
# /stats sampled every second into $tmp/LABEL.samples ("t queued nodes depth").
phase() {
    local label=$1 secs=$2 nruns=$3
    shift 3
    local dir=$tmp/$label
    mkdir -p "$dir"
    # shellcheck disable=SC2086 # SERVER_ARGS is meant to be word-split
    "$bin" --listen 127.0.0.1:0 --db "$dir/db" --port-file "$dir/port" "$@" \
        ${SERVER_ARGS:-} 2>"$dir/server.log" &
    server_pid=$!
    for _ in $(seq 300); do
        [ -s "$dir/port" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -s "$dir/port" ] || { echo "cache_bench: the server did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
    local addr
    addr=127.0.0.1:$(cat "$dir/port")
    (
        t0=$(date +%s.%N)
        while :; do
            s=$(curl -fsS "http://$addr/stats?format=json" 2>/dev/null || true)
            if [ -n "$s" ]; then
                echo "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')" \
                     "$(stat_of "$s" updates_queued) $(stat_of "$s" cache_nodes)" \
                     "$(stat_of "$s" queue_depth)"
            fi
            sleep 1
        done
    ) >"$tmp/$label.samples" &
    sampler_pid=$!
    wrk "-t$wrk_threads" "-c$wrk_connections" "-d${secs}s" -s "$root/bench/http_lifecycle.lua" \
        "http://$addr" -- "$nruns" >"$dir/wrk.out"
    kill -TERM "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=
    sleep 0.5 # what was in flight when wrk stopped is answered by now
    curl -fsS "http://$addr/stats?format=json" >"$tmp/$label.stats"
    kill -TERM "$server_pid"
    wait "$server_pid" || { echo "cache_bench: $label server exit status $?" >&2; exit 1; }
    server_pid=
}

rate_of() { awk '/^Requests\/sec:/ { printf "%d", $2 }' "$tmp/$1/wrk.out"; }
non2xx_of() { awk '/Non-2xx or 3xx responses:/ { print $NF; f = 1 } END { if (!f) print 0 }' "$tmp/$1/wrk.out"; }
peak_of() { awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { print m }' "$tmp/$1.samples"; }
depth_of() { awk 'BEGIN { m = 0 } $4 > m { m = $4 } END { print m }' "$tmp/$1.samples"; }
ratio() { awk -v b="$1" -v u="$2" 'BEGIN { if (u > 0) printf "%.2f", b / u; else print "n/a" }'; }

# report LABEL BOUND: what a bounded phase's counters and samples say.
report() {
    local s
    s=$(cat "$tmp/$1.stats")
    echo "  $1: $(rate_of "$1") updates/s, non-2xx $(non2xx_of "$1"), peak cache_nodes $(peak_of "$1")" \
         "(bound $2, deepest queue $(depth_of "$1")), now $(stat_of "$s" cache_nodes)," \
         "nodes evicted $(stat_of "$s" cache_nodes_evicted), runs evicted $(stat_of "$s" cache_evictions)," \
         "runs read whole $(stat_of "$s" cache_run_loads), node reads $(stat_of "$s" cache_loads)"
}

# minutes LABEL: updates accepted in each whole minute of the samples, per second.
minutes() {
    awk '{ m = int($1 / 60); if (!(m in first)) { first[m] = $2; t0[m] = $1 } last[m] = $2; t1[m] = $1; n = m }
         END { for (i = 0; i <= n; i++) if (t1[i] - t0[i] >= 30) printf "%d ", (last[i] - first[i]) / (t1[i] - t0[i]) }' \
        "$tmp/$1.samples"
}

machine
echo "server: $bin ${SERVER_ARGS:-}; wrk -t$wrk_threads -c$wrk_connections, bench/http_lifecycle.lua"
echo
echo "== $runs runs, ${seconds} s each: unbounded, then --cache-max-nodes $bound"
phase unbounded "$seconds" "$runs" --cache-max-nodes 0 --cache-max-bytes 0
phase bounded "$seconds" "$runs" --cache-max-nodes "$bound" --cache-max-bytes 0
report unbounded 0
report bounded "$bound"
u=$(rate_of unbounded)
b=$(rate_of bounded)
echo "ratio bounded/unbounded: $(ratio "$b" "$u") ($b / $u updates/s; target >= 0.7)"

if [ "$soak_seconds" -gt 0 ]; then
    echo
    echo "== soak: $soak_runs runs, $soak_seconds s each: unbounded, then --cache-max-nodes $soak_bound"
    phase soak_unbounded "$soak_seconds" "$soak_runs" --cache-max-nodes 0 --cache-max-bytes 0
    phase soak_bounded "$soak_seconds" "$soak_runs" --cache-max-nodes "$soak_bound" --cache-max-bytes 0
    report soak_unbounded 0
    report soak_bounded "$soak_bound"
    read -r -a mu <<<"$(minutes soak_unbounded)"
    read -r -a mb <<<"$(minutes soak_bounded)"
    printf '%-8s %12s %12s %6s\n' minute unbounded bounded ratio
    worst=
    for i in "${!mb[@]}"; do
        r=$(ratio "${mb[$i]}" "${mu[$i]:-0}")
        printf '%-8s %12s %12s %6s\n' "$((i + 1))" "${mu[$i]:-}" "${mb[$i]}" "$r"
        if [ "$r" != n/a ] && { [ -z "$worst" ] || awk -v a="$r" -v w="$worst" 'BEGIN { exit !(a < w) }'; }; then
            worst=$r
        fi
    done
    echo "soak: worst minute ratio ${worst:-n/a} (target >= 0.7 in every minute)"
fi
