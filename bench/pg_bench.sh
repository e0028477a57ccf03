#!/usr/bin/env bash
# pg_bench: nodestate on PostgreSQL against workers that write PostgreSQL
# themselves, one upsert per transaction (pgbench with a custom script on the
# same run_node_state table), with the same number of connections, for the
# same time, on the same throwaway cluster in the same run:
#
#   202 path     wrk posting node lifecycles to nodestate (answered once
#                queued), against pgbench with synchronous_commit=off (a
#                worker that does not wait for the disk either) and on
#   ?wait=true   the same posts answered once committed, against pgbench with
#                synchronous_commit=on (a worker that waits for its commit)
#
# Prints each rate, the ratios (targets: 202 path >= 3x pgbench, ?wait=true
# >= 1.5x synchronous-commit pgbench) and a machine line. Not part of the
# test suite. The cluster is durable (fsync=on), unlike the tests' one.
#
#   BUILD_DIR               build tree with nodestate (default <repo>/build-bench;
#                           built when missing)
#   PG_BENCH_CONNECTIONS    wrk -c and pgbench -c (default 32)
#   PG_BENCH_DURATION       seconds per measurement (default 10)
#   PG_BENCH_THREADS        wrk -t and pgbench -j (default 2)
#   PG_BENCH_SERVER_ARGS    more nodestate arguments
#   PG_BINDIR               PostgreSQL's bin directory (default: the newest
#                           /usr/lib/postgresql/*/bin)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
conns=${PG_BENCH_CONNECTIONS:-32}
duration=${PG_BENCH_DURATION:-10}
threads=${PG_BENCH_THREADS:-2}

bindir=${PG_BINDIR:-}
if [[ -z $bindir ]]; then
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb ]] && bindir=$d
    done
fi
[[ -n $bindir && -x $bindir/initdb ]] || { echo "pg_bench: initdb not found (set PG_BINDIR)" >&2; exit 1; }
for tool in wrk pgbench psql curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "pg_bench: $tool not found (bash scripts/deps.sh --test)" >&2; exit 1; }
done
if [[ ! -x $build/nodestate ]]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
    cmake --build "$build" --target nodestate -j "$(nproc)" >/dev/null
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nodestate-pgbench.XXXXXX")
server_pid=
as_owner() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -d $tmp/data ]]; then
        as_owner "$bindir/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- a durable throwaway cluster -------------------------------------------
[[ $(id -u) != 0 ]] || chown postgres "$tmp"
as_owner "$bindir/initdb" -D "$tmp/data" -U postgres -E UTF8 --locale=C.UTF-8 --auth=trust \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; exit 1; }
port=
for _ in 1 2 3 4 5 6 7 8 9 10; do
    p=$((20000 + RANDOM % 40000))
    if as_owner "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w -t 60 \
        -o "-p $p -k $tmp -c listen_addresses=127.0.0.1 -c max_connections=$((conns * 2 + 20)) -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on" \
        start >/dev/null 2>&1; then
        port=$p
        break
    fi
done
[[ -n $port ]] || { cat "$tmp/pg.log" >&2; echo "pg_bench: PostgreSQL did not start" >&2; exit 1; }
base="postgresql://postgres@127.0.0.1:$port"
# pgbench writes the table nodestate created in the 202 run's database.
uri="$base/nsbench_202"

# --- nodestate: the 202 path, then ?wait=true --------------------------------
# Each on a database of its own: the lifecycle script starts its nodes over.

# nodestate_rate NAME QUERY: starts nodestate on database nsbench_NAME, drives
# it with wrk (QUERY appended to each POST), stops it; prints 2xx answers per
# second.
nodestate_rate() {
    local name=$1 query=$2 out=$tmp/wrk-$1.out db=nsbench_$1
    psql -qX "$base/postgres" -c "CREATE DATABASE $db" >/dev/null
    rm -f "$tmp/port"
    # shellcheck disable=SC2086 # PG_BENCH_SERVER_ARGS is meant to be word-split
    "$build/nodestate" --listen 127.0.0.1:0 --port-file "$tmp/port" --db "$base/$db" \
        --spill-path "$tmp/nodestate-$name.spill" ${PG_BENCH_SERVER_ARGS:-} 2>"$tmp/server-$name.log" &
    server_pid=$!
    for _ in $(seq 300); do
        [[ -s $tmp/port ]] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -s $tmp/port ]] || { cat "$tmp/server-$name.log" >&2; echo "pg_bench: nodestate did not start" >&2; exit 1; }
    local addr
    addr="127.0.0.1:$(cat "$tmp/port")"
    echo "\$ wrk -t$threads -c$conns -d${duration}s -s bench/http_lifecycle.lua http://$addr -- 256 $query" >&2
    wrk "-t$threads" "-c$conns" "-d${duration}s" -s "$root/bench/http_lifecycle.lua" \
        "http://$addr" -- 256 "$query" >"$out"
    local illegal
    sleep 0.5 # requests in flight when wrk stopped are answered by now
    illegal=$(curl -fsS "http://$addr/stats?format=json" | grep -o '"illegal":[0-9]*' | cut -d: -f2)
    kill -TERM "$server_pid"
    wait "$server_pid" || { tail -n 20 "$tmp/server-$name.log" >&2; echo "pg_bench: nodestate did not stop cleanly" >&2; exit 1; }
    server_pid=
    # The lifecycle script sends a node's next step W requests after the
    # one before without reading answers; a connection the loaded server
    # left waiting that long makes a step arrive late, which is refused
    # as illegal (409). Those are the script's, counted and left out of the
    # rate; any other non-2xx answer fails the benchmark.
    local non2xx requests secs
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    non2xx=${non2xx:-0}
    # (The server may have refused one more in flight when wrk stopped.)
    if ((non2xx > ${illegal:-0})); then
        cat "$out" >&2
        echo "pg_bench: $non2xx non-2xx answers from nodestate, of which ${illegal:-0} refused as illegal" >&2
        exit 1
    fi
    echo "$name: $non2xx answers 409 (steps that arrived out of order)" >&2
    requests=$(awk '/ requests in / { print $1 }' "$out")
    secs=$(awk '/ requests in / { sub(/s,$/, "", $4); print $4 }' "$out")
    awk -v n="$requests" -v bad="$non2xx" -v s="$secs" 'BEGIN { printf "%.0f\n", (n - bad) / s }'
}
rate_202=$(nodestate_rate 202 "")
rate_wait=$(nodestate_rate wait "?wait=true")
rows=$(psql -qtAX "$base/nsbench_202" -c "SELECT count(*) FROM run_node_state")

# --- direct workers: one judged upsert per transaction ----------------------
# The same table and, like the store's upsert, a row only replaces an older one.
psql -qX "$uri" -c 'CREATE SEQUENCE IF NOT EXISTS pgbench_seq START 1000000000' >/dev/null
cat >"$tmp/upsert.sql" <<'EOF'
\set n random(1, 1000000)
\set st random(1, 3)
INSERT INTO run_node_state AS t (run_id, node_id, status, attempt, updated_at, seq)
VALUES ('pgbench-' || (:n % 256), 'c' || :client_id || '-n' || :n,
        (ARRAY['scheduled', 'running', 'completed'])[:st], 1,
        to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        nextval('pgbench_seq'))
ON CONFLICT (run_id, node_id) DO UPDATE
   SET status = excluded.status, updated_at = excluded.updated_at, seq = excluded.seq
 WHERE t.seq < excluded.seq;
EOF
# pgbench_tps SYNC: transactions/s with synchronous_commit=SYNC.
pgbench_tps() {
    local out=$tmp/pgbench-$1.out
    echo "\$ PGOPTIONS='-c synchronous_commit=$1' pgbench -n -c $conns -j $threads -T $duration -f upsert.sql $uri" >&2
    PGOPTIONS="-c synchronous_commit=$1" pgbench -n -c "$conns" -j "$threads" -T "$duration" \
        -f "$tmp/upsert.sql" "$uri" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n 1
}
tps_async=$(pgbench_tps off)
tps_sync=$(pgbench_tps on)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
pgver=$(psql -qtAX "$uri" -c 'SHOW server_version')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "meets" : "BELOW") " target " t "x" }'; }
r202_async=$(ratio "$rate_202" "$tps_async")
r202_sync=$(ratio "$rate_202" "$tps_sync")
rwait=$(ratio "$rate_wait" "$tps_sync")

echo
echo "== nodestate on PostgreSQL vs one upsert per transaction ($conns connections, ${duration} s each)"
printf '%-46s %12s/s\n' "nodestate, 202 (queued)" "$rate_202"
printf '%-46s %12s/s\n' "nodestate, ?wait=true (committed)" "$rate_wait"
printf '%-46s %12s/s\n' "pgbench upsert, synchronous_commit=off" "$tps_async"
printf '%-46s %12s/s\n' "pgbench upsert, synchronous_commit=on" "$tps_sync"
echo "ratio 202 / pgbench synchronous_commit=off:        ${r202_async}x"
echo "ratio 202 / pgbench synchronous_commit=on:         ${r202_sync}x ($(verdict "$r202_sync" 3))"
echo "ratio ?wait=true / pgbench synchronous_commit=on:  ${rwait}x ($(verdict "$rwait" 1.5))"
echo "rows nodestate left in run_node_state: $rows"
echo "machine: $(nproc) cores, $cpu, $mem RAM; PostgreSQL $pgver (fsync=on, same host)"
