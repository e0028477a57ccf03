#!/usr/bin/env bash
# check_layers: the layers' arrows point down only, and the build enforces it.
#
#   main (server/) -> http (server/http) -> api (api/) -> engine (server/engine)
#   -> store (server/store) -> util (server/util)
#
# Each layer's library puts only its own directory on the include path, and
# gets the directories of the layers below from the libraries it links. So a
# header of a higher layer cannot be named from a lower one. This check
# compiles a probe with each layer's include path exactly as CMake computes it
# for that layer's sources (the build writes it to layers/<library>.include):
# the layer's own header and a lower layer's must compile, every header of a
# higher layer must fail as "not found".
#
# SQLite, libpq, jansson and libmicrohttpd install their headers in /usr/include,
# which no include path can hide, so for them the check is on what is used:
# each may be included only in its layer's directory, and no layer's library
# may call into one that is not its own (undefined symbols, nm).
#
# Environment: NODESTATE_SOURCE_DIR, NODESTATE_BUILD_DIR (set by ctest).
set -u
src=${NODESTATE_SOURCE_DIR:?}
build=${NODESTATE_BUILD_DIR:?}
layers=$build/layers
cc=$(cat "$layers/compiler")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

fail() {
  echo "FAIL: $*" >&2
  fails=$((fails + 1))
}

# probe LIBRARY HEADER: compiles '#include "HEADER"' with LIBRARY's include
# path; prints the compiler's messages to $tmp/out. Returns its status.
probe() {
  local flags=() dir
  while IFS= read -r dir; do
    [[ -n $dir ]] && flags+=("-I$dir")
  done <"$layers/$1.include"
  printf '#include "%s"\n' "$2" >"$tmp/probe.c"
  "$cc" -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fsyntax-only \
    "${flags[@]}" "$tmp/probe.c" >"$tmp/out" 2>&1
}

# expect_ok LIBRARY HEADER...: each header is reachable from LIBRARY.
expect_ok() {
  local lib=$1 h
  shift
  for h in "$@"; do
    probe "$lib" "$h" || { fail "$lib cannot include \"$h\":"; cat "$tmp/out" >&2; }
  done
}

# expect_missing LIBRARY HEADER...: each header is above LIBRARY and must
# not be found (another compile error would prove nothing).
expect_missing() {
  local lib=$1 h
  shift
  for h in "$@"; do
    if probe "$lib" "$h"; then
      fail "$lib can include \"$h\" of a layer above it"
    elif ! grep -q "$h: No such file\|'$h' file not found" "$tmp/out"; then
      fail "$lib including \"$h\" failed, but not as \"not found\":"
      cat "$tmp/out" >&2
    fi
  done
}

for f in ns_util ns_store_sqlite ns_engine ns_api ns_http ns_main; do
  [[ -r $layers/$f.include ]] || { echo "FAIL: $layers/$f.include missing: configure the build" >&2; exit 1; }
done

main_h=(config.h log.h)
http_h=(http.h framing.h waitq.h)
api_h=(api.h api_internal.h codec.h codec_internal.h prom.h problems.h buf.h text.h)
engine_h=(engine.h engine_internal.h cache.h queue.h rules.h stats.h writer.h
          writer_thread.h readthrough.h)
engine_h+=(cache_internal.h)
store_h=(store.h dblock.h)

expect_ok ns_util model.h logfmt.h loglevel.h lockcheck.h deadline.h
expect_missing ns_util "${store_h[@]}" "${engine_h[@]}" "${api_h[@]}" "${http_h[@]}" "${main_h[@]}"
expect_ok ns_store_sqlite store.h dblock.h model.h
expect_missing ns_store_sqlite "${engine_h[@]}" "${api_h[@]}" "${http_h[@]}" "${main_h[@]}"
expect_ok ns_engine engine.h engine_internal.h store.h model.h
expect_missing ns_engine "${api_h[@]}" "${http_h[@]}" "${main_h[@]}"
expect_ok ns_api api.h api_internal.h engine.h model.h
expect_missing ns_api "${http_h[@]}" "${main_h[@]}"
expect_ok ns_http http.h framing.h api.h engine.h model.h
expect_missing ns_http "${main_h[@]}"
expect_ok ns_main config.h log.h http.h

# Third-party headers (and the store's private headers, which bring
# sqlite3.h and libpq-fe.h): only in the directory of the layer that owns them.
check_header_home() {
  local header=$1 home=$2 f
  while IFS= read -r f; do
    [[ $f == "$home"/* ]] || fail "$f includes $header, which only $home/ may"
  done < <(cd "$src" && grep -rlE "#[[:space:]]*include[[:space:]]*$header" server api)
}
check_header_home '<sqlite3.h>' server/store
check_header_home '"sqlite_internal.h"' server/store
check_header_home '<libpq-fe.h>' server/store
check_header_home '"pg_internal.h"' server/store
check_header_home '"store_ops.h"' server/store
check_header_home '<jansson.h>' api
check_header_home '<microhttpd.h>' server/http
check_header_home '"http_internal.h"' server/http
# The cache's private header: only the cache's own files include it.
while IFS= read -r f; do
  [[ $f == server/engine/cache*.c ]] || fail "$f includes cache_internal.h, which only server/engine/cache*.c may"
done < <(cd "$src" && grep -rlE '#[[:space:]]*include[[:space:]]*"cache_internal.h"' server api)

# Third-party calls: no layer's objects may need a symbol of another layer's
# library. The store is an object library (each program links its objects).
check_symbols() {
  local name=$1 banned=$2
  shift 2
  local objs=("$@") o
  for o in "${objs[@]}"; do
    [[ -r $o ]] || { fail "$name: $o not built"; return; }
  done
  local bad
  bad=$(nm -u "${objs[@]}" 2>/dev/null | grep -oE "\b($banned)[A-Za-z0-9_]*" | sort -u)
  [[ -z $bad ]] || fail "$name calls into a library not its own: $(echo $bad)"
}
store_objs=("$build"/CMakeFiles/ns_store_sqlite.dir/server/store/*.o)
check_symbols ns_util 'sqlite3_|PQ|json_|jansson_|MHD_' "$build/libns_util.a"
check_symbols ns_store_sqlite 'json_|jansson_|MHD_' "${store_objs[@]}"
check_symbols ns_engine 'sqlite3_|PQ|json_|jansson_|MHD_' "$build/libns_engine.a"
check_symbols ns_api 'sqlite3_|PQ|MHD_' "$build/libns_api.a"
check_symbols ns_http 'sqlite3_|PQ|json_|jansson_' "$build/libns_http.a"
check_symbols ns_main 'sqlite3_|PQ|json_|jansson_|MHD_' "$build/libns_main.a"

if ((fails)); then
  echo "check_layers: $fails failure(s)" >&2
  exit 1
fi
echo "check_layers: every layer reaches its own and lower headers only"
