#!/usr/bin/env bash
# thread_cpu.sh: where one request's CPU goes, per thread of the server, for
# two nodestate binaries side by side (or one against itself). Requests per
# second move by ±20% from minute to minute on the shared 2-core machine,
# and CPU per request with them, so the two binaries alternate, each on a
# fresh server and database, and the pairs are what to compare.
#
#   bash bench/thread_cpu.sh OLD_BIN NEW_BIN
#
# Each round: start the binary on a new file, warm it with a 2 s wrk round,
# then one WRK_DURATION round of bench/http_lifecycle.lua with QUERY
# ("?wait=true" by default, "" for the 202 path), reading every thread's
# utime+stime (/proc/<pid>/task/*/stat) and the machine's idle time
# (/proc/stat) around it. Prints per round: requests/s, the CPU per request
# of the HTTP workers together, of the writer and of every other busy
# thread (µs), the machine's idle and iowait per request, the server's
# context switches per request and the updates per commit.
#
# Environment: PAIRS (3), QUERY (?wait=true), WRK_DURATION (5s),
# WRK_CONNECTIONS (64), HTTP_RUNS (16), SERVER_ARGS (more nodestate
# arguments, e.g. "--synchronous full").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
bins=("$1" "$2")
pairs=${PAIRS:-3}
query=${QUERY-?wait=true}
duration=${WRK_DURATION:-5s}
conns=${WRK_CONNECTIONS:-64}
runs=${HTTP_RUNS:-16}
lua=$root/bench/http_lifecycle.lua
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
hz=$(getconf CLK_TCK)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/thread-cpu.XXXXXX")
pid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

bench_machine "wrk -t2 -c$conns -d$duration, query '${query}', $pairs pairs"

# Every thread of $pid as "tid:name ticks", sorted.
threads() {
    local t
    for t in /proc/"$pid"/task/*; do
        # comm may hold spaces; the fields after it are read from the last ')'.
        echo "${t##*/}:$(tr ' ' _ <"$t/comm") $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
    done | sort
}

# The machine's idle and iowait ticks, "idle iowait".
machine() { awk '/^cpu /{print $5, $6}' /proc/stat; }

round() {
    local bin=$1 db=$tmp/round.db addr reqs
    rm -f "$db" "$db-wal" "$db-shm" "$db.lock"
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of arguments
    "$bin" --db "$db" --listen 127.0.0.1:0 ${SERVER_ARGS:-} >"$tmp/log" 2>&1 &
    pid=$!
    addr=$(bench_wait_addr "$tmp/log" "$pid" thread_cpu)
    wrk -t2 -c"$conns" -d2s -s "$lua" "http://$addr" -- "$runs" "$query" warm- >/dev/null
    threads >"$tmp/before"
    read -r idle0 iow0 < <(machine)
    local cs0 cs1
    cs0=$(awk '/ctxt/{s += $2} END{print s}' /proc/"$pid"/task/*/status 2>/dev/null || echo 0)
    wrk -t2 -c"$conns" -d"$duration" -s "$lua" "http://$addr" -- "$runs" "$query" x- >"$tmp/wrk"
    cs1=$(awk '/ctxt/{s += $2} END{print s}' /proc/"$pid"/task/*/status 2>/dev/null || echo 0)
    read -r idle1 iow1 < <(machine)
    threads >"$tmp/after"
    reqs=$(awk '/requests in/{print $1}' "$tmp/wrk")
    local stats
    stats=$(curl -s "http://$addr/stats")
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
    join "$tmp/before" "$tmp/after" | awk -v n="$reqs" -v hz="$hz" \
        -v bin="$(basename "$bin")" -v rps="$(awk '/Requests\/sec/{print $2}' "$tmp/wrk")" \
        -v idle=$((idle1 - idle0)) -v iow=$((iow1 - iow0)) -v cs=$((cs1 - cs0)) \
        -v q="$(awk '/^nodestate_updates_queued_total /{print $2}' <<<"$stats")" \
        -v b="$(awk '/^nodestate_batches_written_total /{print $2}' <<<"$stats")" '
        function us(ticks) { return ticks * 1e6 / hz / n }
        {
            split($1, id, ":")
            d = $3 - $2
            if (id[2] == "MHD-worker") workers += d
            else if (d > 0) other = other sprintf(" %s=%.2f", id[1], us(d))
        }
        END {
            fmt = "%-12s %9.0f req/s  workers %.2f  other [%s ]  idle %.2f iowait %.2f us/req"
            fmt = fmt "  ctxsw %.2f/req  %.1f updates/commit\n"
            printf fmt, bin, rps, us(workers), other, us(idle), us(iow), cs / n, (b > 0 ? q / b : 0)
        }'
}

for _ in $(seq "$pairs"); do
    for b in "${bins[@]}"; do
        round "$b"
    done
done
echo "the busiest other thread is the writer, the next the checkpoint thread (ids differ per round)"
