#!/usr/bin/env bash
# ratio_bench.sh: nodestate's single-update path against the ceiling of its
# own HTTP stack, and ?wait=true against the 202 path, as ratios measured in
# one run with the rounds alternating, so the machine's other load hits both
# sides alike (absolute rates on this shared 2-core machine are noisy).
#
#   1. ceiling vs 202: bench/ceiling_server (bare libmicrohttpd + jansson
#      parsing the same bodies, answering 202 with a small JSON) and
#      nodestate (defaults), ROUNDS rounds each, alternating, wrk -c64 with
#      bench/http_lifecycle.lua. Ratio nodestate/ceiling (target >= 0.75).
#   2. for synchronous normal and full: one nodestate, ROUNDS rounds of the
#      202 path and of ?wait=true, alternating (each round posts lifecycles
#      of its own nodes). Ratio wait/202 (target >= 0.75) and the p99 of the
#      wait rounds (target <= 15 ms).
#   3. with NOSYNC_DIR (e.g. /dev/shm, a tmpfs): step 2's `full` again with
#      the database there, where fdatasync writes nothing to a device, so
#      the difference from step 2's `full` is what the disk's sync costs.
#
# Before step 2 it prints what one synchronous 80 KiB overwrite (a durable
# commit's WAL bytes, written and flushed) costs on the database's disk:
# wall time and CPU time per write, from `dd oflag=dsync`.
#
# After each nodestate's SIGTERM its file is checked: every node wrk started
# is there, short by at most the requests in flight when each wrk round
# stopped (one per connection), no more rows than that, no non-2xx answer,
# and the server exited 0. The exit status is 1 when a check fails; targets
# are printed, not enforced.
#
# Environment: BUILD_DIR (default <repo>/build-bench), ROUNDS (3),
# WRK_DURATION (5s), WRK_CONNECTIONS (64), WRK_THREADS (2), HTTP_RUNS (16),
# SERVER_ARGS (more nodestate arguments, e.g. "--group-commit-delay 0"),
# NODESTATE_BIN / CEILING_BIN (binaries to use instead of building),
# SKIP_CEILING=1 / SKIP_WAIT=1, NOSYNC_DIR (step 3; none by default).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
rounds=${ROUNDS:-3}
duration=${WRK_DURATION:-5s}
conns=${WRK_CONNECTIONS:-64}
wthreads=${WRK_THREADS:-2}
runs=${HTTP_RUNS:-16}
lua=$root/bench/http_lifecycle.lua
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"

if [ -z "${NODESTATE_BIN:-}" ] || [ -z "${CEILING_BIN:-}" ]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
    cmake --build "$build" --target nodestate ceiling_server -j "$(nproc)" >/dev/null
fi
ns_bin=${NODESTATE_BIN:-$build/nodestate}
ceil_bin=${CEILING_BIN:-$build/bench/ceiling_server}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ratio-bench.XXXXXX")
nosync_tmp=""
pids=()
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp" ${nosync_tmp:+"$nosync_tmp"}
}
trap cleanup EXIT
status=0

bench_machine "wrk -t$wthreads -c$conns -d$duration, $rounds rounds"

# start_ns NAME ARGS...: starts nodestate on a new file in db_dir (default
# the run's directory); sets ns_pid, ns_addr, ns_db.
db_dir=$tmp
start_ns() {
    local name=$1
    shift
    ns_db=$db_dir/$name.db
    # shellcheck disable=SC2086 # SERVER_ARGS is meant to be word-split
    "$ns_bin" --listen 127.0.0.1:0 --db "$ns_db" "$@" ${SERVER_ARGS:-} 2>"$tmp/$name.log" &
    ns_pid=$!
    pids+=("$ns_pid")
    ns_addr=$(bench_wait_addr "$tmp/$name.log" "$ns_pid" ratio_bench)
    ns_started=0
    ns_ok=0
    ns_rounds=0
}

# to_ms VALUE: wrk's "850.00us", "9.50ms", "1.02s" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n }'
}

# round LABEL ADDR QUERY TAG: one wrk round; appends "LABEL rps p99ms" to results.
round() {
    local out=$tmp/wrk-$1-$4.out
    wrk "-t$wthreads" "-c$conns" "-d$duration" --latency -s "$lua" "http://$2" \
        -- "$runs" "$3" "$4" >"$out"
    local rps p99 answered non2xx started
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '/Latency Distribution/ { f = 1; next } f && $1 == "99%" { print $2; exit }' "$out")
    answered=$(awk '/ requests in / { print $1 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    non2xx=${non2xx:-0}
    started=$(awk '$1 == "lifecycle" && $2 == "nodes_started" { print $3 }' "$out")
    printf '  %-14s %10s req/s  p99 %8s ms  non-2xx %s\n' "$1" "$rps" "$(to_ms "$p99")" "$non2xx"
    echo "$1 $rps $(to_ms "$p99")" >>"$tmp/results"
    if [ "$non2xx" != 0 ]; then
        echo "check $1 round $4: $non2xx non-2xx answers FAILED"
        status=1
    fi
    if [ "$1" != ceiling ]; then
        ns_started=$((ns_started + started))
        ns_ok=$((ns_ok + answered - non2xx))
        ns_rounds=$((ns_rounds + 1))
    fi
}

# stop_ns NAME: SIGTERM, then the zero-loss checks on its file.
stop_ns() {
    local queued rc=0 rows lo
    sleep 0.5 # the requests in flight when wrk stopped are answered by now
    queued=$(curl -fsS "http://$ns_addr/stats?format=json" | grep -o '"updates_queued":[0-9]*' | cut -d: -f2)
    kill -TERM "$ns_pid"
    wait "$ns_pid" || rc=$?
    pids=("${pids[@]/$ns_pid}")
    rows=$(sqlite3 "$ns_db" "SELECT count(*) FROM run_node_state")
    lo=$((ns_started - ns_rounds * conns))
    local verdict=OK
    if [ "$rc" != 0 ] || ! grep -q 'msg=stopped' "$tmp/$1.log" || [ "$rows" -gt "$ns_started" ] ||
        [ "$rows" -lt "$lo" ] || [ "$queued" -lt "$ns_ok" ]; then
        verdict=FAILED
        status=1
    fi
    echo "  check $1: exit $rc, rows $rows of $ns_started nodes started (>= $lo)," \
         "updates_queued $queued >= 2xx $ns_ok: $verdict"
}

# mean LABEL FIELD: the mean of a column over the rounds of LABEL.
mean() { awk -v l="$1" -v f="$2" '$1 == l { s += $f; n++ } END { printf "%.2f", n ? s / n : 0 }' "$tmp/results"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

if [ "${SKIP_CEILING:-0}" != 1 ]; then
    echo
    echo "== ceiling (bare libmicrohttpd + jansson) vs nodestate 202"
    "$ceil_bin" 2>"$tmp/ceiling.log" &
    ceil_pid=$!
    pids+=("$ceil_pid")
    ceil_addr=$(bench_wait_addr "$tmp/ceiling.log" "$ceil_pid" ratio_bench)
    start_ns n202
    echo "  ceiling: $(head -n 1 "$tmp/ceiling.log"); nodestate: $ns_addr ${SERVER_ARGS:-}"
    for r in $(seq "$rounds"); do
        round ceiling "$ceil_addr" "" "r$r-"
        round ns202 "$ns_addr" "" "r$r-"
    done
    kill -TERM "$ceil_pid"
    wait "$ceil_pid" || true
    pids=("${pids[@]/$ceil_pid}")
    stop_ns n202
    c=$(mean ceiling 2)
    n=$(mean ns202 2)
    echo "  ceiling $c req/s (p99 $(mean ceiling 3) ms), nodestate 202 $n req/s (p99 $(mean ns202 3) ms)"
    echo "RESULT nodestate/ceiling = $(ratio "$n" "$c") (target >= 0.75)"
fi

# sync_probe DIR: one line on what a synchronous 80 KiB overwrite costs in
# DIR (200 of them, after a first pass that allocates the file's blocks).
sync_probe() {
    local f=$1/sync-probe t
    dd if=/dev/zero of="$f" bs=80k count=200 status=none
    sync "$f"
    t=$( { TIMEFORMAT='%R %U %S'; time dd if=/dev/zero of="$f" bs=80k count=200 \
        oflag=dsync conv=notrunc status=none; } 2>&1)
    rm -f "$f"
    awk -v t="$t" -v d="$1" 'BEGIN { split(t, a, " ")
        printf "  sync probe in %s: %.0f us wall, %.0f us CPU per 80 KiB dsync write\n",
            d, a[1] * 1e6 / 200, (a[2] + a[3]) * 1e6 / 200 }'
}

# wait_pass SYNC LABEL: ROUNDS rounds of 202 and ?wait=true, alternating, on
# one server under --synchronous SYNC; prints its RESULT line as LABEL.
wait_pass() {
    local sync=$1 label=$2
    echo
    echo "== ?wait=true vs 202, --synchronous $sync, database in $db_dir"
    start_ns "w$label" --synchronous "$sync"
    echo "  nodestate: $ns_addr --synchronous $sync ${SERVER_ARGS:-}"
    for r in $(seq "$rounds"); do
        round "a202-$label" "$ns_addr" "" "a$r-"
        round "wait-$label" "$ns_addr" "?wait=true" "w$r-"
    done
    stop_ns "w$label"
    a=$(mean "a202-$label" 2)
    w=$(mean "wait-$label" 2)
    echo "  202 $a req/s (p99 $(mean "a202-$label" 3) ms), wait $w req/s (p99 $(mean "wait-$label" 3) ms)"
    echo "RESULT $label: wait/202 = $(ratio "$w" "$a") (target >= 0.75)," \
         "wait p99 = $(mean "wait-$label" 3) ms (target <= 15)"
}

if [ "${SKIP_WAIT:-0}" != 1 ]; then
    echo
    sync_probe "$tmp"
    for sync in normal full; do
        wait_pass "$sync" "$sync"
    done
    if [ -n "${NOSYNC_DIR:-}" ]; then
        nosync_tmp=$(mktemp -d "$NOSYNC_DIR/ratio-bench.XXXXXX")
        db_dir=$nosync_tmp
        sync_probe "$nosync_tmp"
        wait_pass full full-nosync
        db_dir=$tmp
    fi
fi
exit "$status"
