#!/usr/bin/env bash
# pg.sh: a throwaway PostgreSQL cluster for the tests (the _pg variants of the
# integration tests and test_pg_store), in a directory of its own, on a free
# port of 127.0.0.1, as an unprivileged user.
#
#   scripts/pg.sh start DIR   initdb + start in DIR (created; must not hold a
#                             cluster); prints the base URI, e.g.
#                             postgresql://postgres@127.0.0.1:54321/postgres,
#                             and writes it to DIR/uri
#   scripts/pg.sh stop DIR    stops the cluster and removes DIR
#
# Tests take the URI from NODESTATE_TEST_PG and create a database of their own
# per server start. initdb refuses to run as root: as root the cluster belongs
# to the user "postgres" (Debian's postgresql package creates it; scripts/deps.sh
# --test installs it). The cluster trades durability for speed (fsync off): it
# holds test data only.
set -euo pipefail

bindir=${PG_BINDIR:-}
if [[ -z $bindir ]]; then
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb ]] && bindir=$d
  done
fi
[[ -n $bindir && -x $bindir/initdb ]] || { echo "pg.sh: initdb not found (install postgresql, or set PG_BINDIR)" >&2; exit 1; }

as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd=${1:-}
dir=${2:-}
[[ -n $cmd && -n $dir ]] || { echo "usage: pg.sh start|stop DIR" >&2; exit 2; }

case $cmd in
start)
  mkdir -p "$dir"
  [[ ! -e $dir/data ]] || { echo "pg.sh: $dir/data exists" >&2; exit 1; }
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "pg.sh: running as root needs the user postgres" >&2; exit 1; }
    chown postgres "$dir"
  fi
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth=trust >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  for try in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    port_free "$port" || continue
    if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
         -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
         start >/dev/null; then
      uri="postgresql://postgres@127.0.0.1:$port/postgres"
      echo "$uri" >"$dir/uri"
      echo "$uri"
      exit 0
    fi
  done
  echo "pg.sh: could not start PostgreSQL:" >&2
  cat "$dir/server.log" >&2 || true
  exit 1
  ;;
stop)
  if [[ -d $dir/data ]]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: pg.sh start|stop DIR" >&2
  exit 2
  ;;
esac
