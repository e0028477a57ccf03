#!/usr/bin/env bash
# check_prometheus: the Prometheus exposition of a live nodestate, checked with
# the real tools.
#   (a) `promtool check metrics` on /stats and /metrics prints nothing, exits 0;
#   (b) a real Prometheus server scrapes /stats on loopback, and the values it
#       stored equal the JSON /stats (nothing changes the counters in between).
# Needs NODESTATE_BIN, and promtool and prometheus on PATH (Debian package
# `prometheus`, installed by `scripts/deps.sh --test`). Missing tools fail the
# test: a lint that silently skips proves nothing.
# Everything listens on 127.0.0.1 only; every wait is bounded.
set -euo pipefail

fail() {
    echo "check_prometheus: FAIL: $*" >&2
    exit 1
}

check_name=check_prometheus
# shellcheck source=lib_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_check.sh"

[[ -n "${NODESTATE_BIN:-}" ]] || fail "NODESTATE_BIN is not set (path to the nodestate binary)"
[[ -x "$NODESTATE_BIN" ]] || fail "NODESTATE_BIN=$NODESTATE_BIN is not an executable"
for tool in curl promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool not found on PATH; install it with: bash scripts/deps.sh --test (Debian package ${tool/promtool/prometheus})"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check_prometheus.XXXXXX")
ns_pid=""
prom_pid=""

# Stops a process we started: SIGTERM, then SIGKILL if it lingers past ~10 s.
stop() {
    local pid=$1
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop "$prom_pid"
    stop "$ns_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_log() {
    echo "--- $1 (last lines) ---" >&2
    tail -n 30 "$1" >&2 || true
}

# --- nodestate on an ephemeral port ------------------------------------------
"$NODESTATE_BIN" --listen 127.0.0.1:0 --db "$tmp/x.db" --port-file "$tmp/port" \
    2>"$tmp/nodestate.log" &
ns_pid=$!
ns_wait_port "$tmp/port" "$tmp/nodestate.log" "nodestate exited before listening"
base="http://127.0.0.1:$port"
echo "check_prometheus: nodestate on $base"

# request METHOD PATH WANT_STATUS [BODY]: fails unless the answer has that status.
request() {
    local method=$1 path=$2 want=$3 body=${4:-}
    local args=(-s -o "$tmp/body" -w '%{http_code}' --max-time 15 -X "$method")
    if [[ -n "$body" ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$body")
    fi
    local got
    got=$(curl "${args[@]}" "$base$path") || fail "$method $path: curl failed"
    [[ "$got" == "$want" ]] ||
        fail "$method $path: status $got, want $want; body: $(cat "$tmp/body")"
}

# Traffic so that most families have samples: several statuses, commits
# (?wait=true so the histograms see them), and 404, 409, 422, 400 answers.
request POST '/runs/r1/nodes/a/state' 202 '{"status":"scheduled"}'
request POST '/runs/r1/nodes/a/state' 202 '{"status":"running"}'
request POST '/runs/r1/nodes/b/state' 202 '{"status":"running","attempt":2}'
request POST '/runs/r1/nodes/a/state?wait=true' 200 '{"status":"completed","outputs":{"n":1}}'
request POST '/runs/r1/nodes/a/state' 200 '{"status":"completed","outputs":{"n":1}}'  # duplicate
request POST '/runs/r1/nodes/a/state' 409 '{"status":"running"}'                      # illegal
request POST '/runs/r1/nodes/b/state' 409 '{"status":"running","attempt":1}'          # stale
request POST '/runs/r1/nodes/b/state' 422 '{"status":"bogus"}'
request POST '/runs/r1/nodes/b/state' 400 '{not json'
request POST '/runs/r2/nodes/c/state?wait=true' 200 '{"status":"failed","last_error":"boom"}'
request GET '/runs/r1/nodes/a/state' 200
request GET '/runs/nope/nodes/x/state' 404
request GET '/runs/r1' 200
request DELETE '/runs/r2?wait=true' 200

# --- (a) promtool on /stats and /metrics -------------------------------------
for path in /stats /metrics; do
    curl -s -D "$tmp/headers" -o "$tmp/scrape" --max-time 15 "$base$path" ||
        fail "GET $path: curl failed"
    grep -qi '^content-type: text/plain; version=0\.0\.4' "$tmp/headers" ||
        fail "GET $path: not the 0.0.4 text format: $(grep -i '^content-type' "$tmp/headers")"
    # Families the traffic above must have filled, besides the unlabeled ones.
    for series in 'nodestate_http_responses_total{code="202"}' \
                  'nodestate_http_responses_total{code="409"}' \
                  'nodestate_http_responses_total{code="422"}' \
                  'nodestate_http_responses_total{code="404"}' \
                  'nodestate_updates_rejected_total{reason="stale"}' \
                  'nodestate_commit_duration_seconds_count' \
                  'nodestate_build_info{version=' \
                  'process_start_time_seconds' \
                  'process_resident_memory_bytes' \
                  'process_open_fds'; do
        grep -qF "$series" "$tmp/scrape" || fail "GET $path: no sample $series"
    done
    rc=0
    out=$(promtool check metrics <"$tmp/scrape" 2>&1) || rc=$?
    if [[ $rc -ne 0 || -n "$out" ]]; then
        echo "--- promtool check metrics on $path (exit $rc) ---" >&2
        printf '%s\n' "$out" >&2
        fail "promtool check metrics on $path is not clean"
    fi
    echo "check_prometheus: promtool check metrics $path: clean"
done

# --- (b) a real Prometheus scraping /stats -----------------------------------
# Prometheus cannot take port 0 and report it back, so try random high ports
# until one is free (a port taken between the probe and the bind shows as an
# early exit with "address already in use", and the next port is tried).
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cat >"$tmp/prom.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: nodestate
    metrics_path: /stats
    scrape_interval: 2s
    scrape_timeout: 2s
    static_configs:
      - targets: ['127.0.0.1:$port']
EOF
promtool check config "$tmp/prom.yml" >"$tmp/promtool-config.out" 2>&1 ||
    { cat "$tmp/promtool-config.out" >&2; fail "the generated prom.yml is invalid"; }

prom_port=""
for attempt in $(seq 10); do
    candidate=$((20000 + RANDOM % 40000))
    port_in_use "$candidate" && continue
    rm -rf "$tmp/data"
    prometheus --config.file="$tmp/prom.yml" --storage.tsdb.path="$tmp/data" \
        --web.listen-address="127.0.0.1:$candidate" --log.level=warn \
        >"$tmp/prometheus.log" 2>&1 &
    prom_pid=$!
    ready=""
    ready_end=$((SECONDS + 60))
    for _ in $(seq 3000); do
        ((SECONDS <= ready_end)) || break
        if ! kill -0 "$prom_pid" 2>/dev/null; then
            wait "$prom_pid" 2>/dev/null || true
            prom_pid=""
            break
        fi
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
                 "http://127.0.0.1:$candidate/-/ready" || true)" == 200 ]]; then
            ready=yes
            break
        fi
        sleep 0.1
    done
    if [[ -n "$ready" ]]; then
        prom_port=$candidate
        break
    fi
    if [[ -n "$prom_pid" ]]; then
        show_log "$tmp/prometheus.log"
        fail "prometheus on 127.0.0.1:$candidate not ready within 60 s"
    fi
    grep -qi 'address already in use' "$tmp/prometheus.log" ||
        { show_log "$tmp/prometheus.log"; fail "prometheus exited at start-up"; }
    echo "check_prometheus: port $candidate taken (attempt $attempt), trying another"
done
[[ -n "$prom_port" ]] || fail "found no free port for prometheus in 10 attempts"
prom="http://127.0.0.1:$prom_port"
echo "check_prometheus: prometheus on $prom"

# The value of an instant query's first sample ("" while there is none).
query() {
    curl -s -G --max-time 5 --data-urlencode "query=$1" "$prom/api/v1/query" |
        sed -n 's/.*"value":\[[^,]*,"\([^"]*\)"\].*/\1/p' || true
}

# query_is EXPR WANT: whether the query's value is WANT now (sets scraped).
# A scrape that a busy machine made time out leaves the series stale for a
# moment, so the checks below wait for the value rather than read it once.
query_is() {
    scraped=$(query "$1")
    [[ "$scraped" == "$2" ]]
}

json=$(curl -s --max-time 15 "$base/stats?format=json") || fail "GET /stats?format=json failed"
queued=$(grep -o '"updates_queued":[0-9]*' <<<"$json" | cut -d: -f2)
[[ -n "$queued" ]] || fail "no updates_queued in the JSON /stats: $json"
[[ "$queued" -gt 0 ]] || fail "updates_queued is 0 after the updates above"
scraped=""
if ! check_wait 90 query_is 'nodestate_updates_queued_total{job="nodestate"}' "$queued"; then
    show_log "$tmp/prometheus.log"
    curl -s --max-time 5 "$prom/api/v1/targets" >&2 || true
fi
[[ "$scraped" == "$queued" ]] ||
    fail "prometheus scraped nodestate_updates_queued_total=$scraped, JSON /stats says updates_queued=$queued"
echo "check_prometheus: nodestate_updates_queued_total $scraped == JSON updates_queued $queued"

# A labeled counter too: the 409 answers, which no scrape adds to.
codes=$(sed -n 's/.*"http_responses":{\([^}]*\)}.*/\1/p' <<<"$json")
conflicts=$(grep -o '"409":[0-9]*' <<<"$codes" | cut -d: -f2)
[[ "$conflicts" == 2 ]] || fail "JSON /stats http_responses has 409=${conflicts:-none}, want 2: $codes"
check_wait 60 query_is 'nodestate_http_responses_total{job="nodestate",code="409"}' "$conflicts" || true
[[ "$scraped" == "$conflicts" ]] ||
    fail "prometheus scraped nodestate_http_responses_total{code=\"409\"}=${scraped:-none}, JSON says $conflicts"
echo "check_prometheus: nodestate_http_responses_total{code=\"409\"} $scraped == JSON $conflicts"

# The README's PromQL examples: each must evaluate, and every metric it names
# must be one nodestate serves, so a renamed metric cannot leave them stale.
src=${NODESTATE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
readme="$src/README.md"
[[ -r "$readme" ]] || fail "cannot read $readme (set NODESTATE_SOURCE_DIR)"
awk '/^## /{in_section = ($0 == "## Monitoring with Prometheus")}
     in_section && /^```promql/{in_block = 1; next}
     in_block && /^```/{in_block = 0}
     in_block && !/^#/ && NF' "$readme" >"$tmp/examples"
[[ -s "$tmp/examples" ]] ||
    fail "no PromQL examples in the README section \"## Monitoring with Prometheus\""
n_examples=0
while IFS= read -r expr; do
    answer=$(curl -s -G --max-time 5 --data-urlencode "query=$expr" "$prom/api/v1/query") ||
        fail "README example $expr: query failed"
    grep -q '"status":"success"' <<<"$answer" ||
        fail "README example $expr does not evaluate: $answer"
    for name in $(grep -oE '\b(nodestate|process)_[a-z_]+' <<<"$expr" | sort -u); do
        grep -qE "^$name[ {]" "$tmp/scrape" ||
            fail "README example $expr names $name, which /metrics does not serve"
    done
    n_examples=$((n_examples + 1))
done <"$tmp/examples"
echo "check_prometheus: $n_examples README PromQL examples evaluate"

check_wait 60 query_is 'up{job="nodestate"}' 1 || true
up=$scraped
[[ "$up" == 1 ]] || fail "up{job=\"nodestate\"} is ${up:-absent}, want 1"
echo "check_prometheus: up{job=\"nodestate\"} == 1"
echo "check_prometheus: OK"
