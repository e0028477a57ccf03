#!/usr/bin/env bash
# Shutdown with a locked database: how long SIGTERM takes to exit, and whether
# every accepted update survives. Another connection holds the database's
# write lock (BEGIN IMMEDIATE, as a backup tool would) while wrk posts ~3 KB
# updates for WRITE_SECONDS; the queue fills up to --queue-max-bytes and
# further writes get 503. Then SIGTERM: the server spills the queue to
# <db>.spill and exits. The lock is released, the server started again (it
# replays the sidecar before listening) and the rows in the file are
# compared with the updates accepted. Not part of the test suite; the timing
# depends on the machine.
#
# Environment: NODESTATE_BIN (default <repo>/build-bench/nodestate),
# SHUTDOWN_TIMEOUT (8, as the Docker image sets it), WRITE_SECONDS (20),
# SERVER_ARGS (more nodestate arguments, e.g. "--queue-max-bytes 256M").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${NODESTATE_BIN:-$root/build-bench/nodestate}
budget=${SHUTDOWN_TIMEOUT:-8}
write_seconds=${WRITE_SECONDS:-20}
for c in sqlite3 wrk curl awk; do
    command -v "$c" >/dev/null 2>&1 || { echo "shutdown_bench: $c not found" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "shutdown_bench: no binary $bin (set NODESTATE_BIN)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nodestate-shutdown.XXXXXX")
db=$tmp/nodestate.db
server_pid=
lock_pid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    if [ -n "$lock_pid" ]; then kill -TERM "$lock_pid" 2>/dev/null || true; fi
    exec 3>&- 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

start() { # start LOG: runs the server on a free port, sets server_pid, addr, start_ms
    rm -f "$tmp/port"
    local t0
    t0=$(date +%s%N)
    # shellcheck disable=SC2086 # SERVER_ARGS is meant to be word-split
    "$bin" --listen 127.0.0.1:0 --db "$db" --shutdown-timeout "$budget" \
        --port-file "$tmp/port" ${SERVER_ARGS:-} 2>"$1" &
    server_pid=$!
    for _ in $(seq 300); do
        [ -s "$tmp/port" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -s "$tmp/port" ] || { echo "shutdown_bench: the server did not start:" >&2; cat "$1" >&2; exit 1; }
    addr=127.0.0.1:$(cat "$tmp/port")
    start_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}

start "$tmp/server.log"
echo "server: $bin, shutdown-timeout $budget s, db $db ${SERVER_ARGS:-}"

# The lock: a sqlite3 shell holding a write transaction, fed through fd 3.
exec 3> >(exec sqlite3 "$db" >/dev/null)
lock_pid=$!
echo "BEGIN IMMEDIATE; SELECT 1;" >&3
sleep 0.5

echo "\$ wrk -t2 -c16 -d${write_seconds}s -s bench/shutdown_lock.lua http://$addr"
wrk -t2 -c16 "-d${write_seconds}s" -s "$root/bench/shutdown_lock.lua" "http://$addr" >"$tmp/wrk.out"
sleep 0.5
stats=$(curl -fsS "http://$addr/stats?format=json")
field() { printf '%s' "$stats" | grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2 || true; }
accepted=$(field updates_queued)
held=$(field queue_bytes)
refused=$(field queue_full)

t0=$(date +%s%N)
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
t1=$(date +%s%N)
server_pid=
exit_ms=$(( (t1 - t0) / 1000000 ))
echo "ROLLBACK;" >&3
exec 3>&-
wait "$lock_pid" 2>/dev/null || true
lock_pid=

start "$tmp/restart.log"
restart_ms=$start_ms
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=
rows=$(sqlite3 "$db" "SELECT count(*) FROM run_node_state")

echo
echo "accepted (202):         $accepted, refused (503 queue-full): $refused"
echo "queue_bytes at SIGTERM: $held"
echo "SIGTERM to exit:        $exit_ms ms (budget ${budget} s, promised at most $(( budget * 1000 + 1000 )) ms), exit status $rc"
grep -o 'msg=spill-started [^ ]*\|msg=spilled updates=[0-9]* pieces=[0-9]*\|msg=stopped .*' "$tmp/server.log" | sed 's/^/  /'
grep -o 'msg=spill-replayed .* pieces=[0-9]*' "$tmp/restart.log" | sed 's/^/  restart: /' || true
echo "restart to listening:   $restart_ms ms (the replay included)"
echo "rows in the file:       $rows"
status=0
if [ "$exit_ms" -gt $(( budget * 1000 + 1000 )) ]; then
    echo "check exit within the budget + 1 s: FAILED"
    status=1
fi
if [ "$rc" = 0 ] && [ "$rows" != "$accepted" ]; then
    echo "check every accepted update in the file: FAILED ($rows of $accepted)"
    status=1
fi
exit "$status"
