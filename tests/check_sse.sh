#!/usr/bin/env bash
# check_sse: watches a live nodestate with a real Server-Sent Events client,
# the eventsource npm package (tests/sse/sse.test.mjs): 8 writers on 1,000
# nodes, plain, reconnecting (Last-Event-ID) and ?durable=true streams, the
# run's delete ending them. The package is pinned in tests/sse/package-lock.json
# and installed into tests/sse/node_modules by `npm ci` when missing or stale.
# Needs NODESTATE_BIN, NODESTATE_SOURCE_DIR, node >= 18.19 and npm.
set -euo pipefail

check_name=check_sse
source "$(dirname "${BASH_SOURCE[0]}")/lib_check.sh"

check_require_env
sse=$NODESTATE_SOURCE_DIR/tests/sse
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found; run: bash scripts/deps.sh --test"
done
export NO_UPDATE_NOTIFIER=1 npm_config_update_notifier=false
stamp=$sse/node_modules/.nodestate-lock-sha256
want=$(sha256sum "$sse/package-lock.json" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  note "npm ci in $sse"
  (cd "$sse" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

check_scratch
check_clean_env
log=$tmp/nodestate.log
env "${clean_env[@]}" "$NODESTATE_BIN" --listen 127.0.0.1:0 --db "$tmp/nodestate.db" \
    --port-file "$tmp/port" 2>"$log" &
ns_pid=$!
ns_wait_port "$tmp/port" "$log" "nodestate exited before listening"

NODESTATE_URL=http://127.0.0.1:$port node "$sse/sse.test.mjs" || { tail -20 "$log" >&2; fail "the SSE client's checks failed"; }

kill -TERM "$ns_pid"
ns_wait_exit 300 || { cat "$log" >&2; fail "nodestate still runs 30 s after SIGTERM"; }
((ns_rc == 0)) || { cat "$log" >&2; fail "nodestate exited $ns_rc on SIGTERM"; }
note "PASS"
