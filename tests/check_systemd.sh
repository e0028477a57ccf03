#!/usr/bin/env bash
# check_systemd: proves contrib/systemd/nodestate.service without a running
# systemd (none runs in CI), with systemd's own tools and the real binary.
#   (1) `systemd-analyze verify` on a copy whose ExecStart names the built
#       binary (verify wants the path to exist): exit 0 and no message.
#   (2) the settings the README promises, read back from the file: the
#       hardening (DynamicUser, StateDirectory, ProtectSystem=strict,
#       ProtectHome, PrivateTmp, NoNewPrivileges, RestrictAddressFamilies,
#       SystemCallFilter, an empty CapabilityBoundingSet), Restart=on-failure,
#       KillSignal=SIGTERM, an optional EnvironmentFile (leading '-'), and
#       TimeoutStopSec above the unit's NODESTATE_SHUTDOWN_TIMEOUT plus 1 s
#       (the most nodestate takes to exit after SIGTERM).
#   (3) `systemd-analyze security --offline=true`: the overall exposure must
#       be rated OK.
#   (4) the binary starts with the unit's Environment= lines (%S, the state
#       directory, made a scratch directory; the listen port made 0), answers
#       /healthz, and exits 0 on SIGTERM within TimeoutStopSec.
# Needs NODESTATE_BIN, NODESTATE_SOURCE_DIR, systemd-analyze and curl.
set -euo pipefail

check_name=check_systemd
source "$(dirname "${BASH_SOURCE[0]}")/lib_check.sh"

check_require_env
unit=$NODESTATE_SOURCE_DIR/contrib/systemd/nodestate.service
[[ -f "$unit" ]] || fail "$unit is missing"
for tool in systemd-analyze curl; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool not found on PATH; install the test packages with: bash scripts/deps.sh --test"
done
check_scratch

# ---------------------------------------------------------------------------
# (1) verify, on a copy that runs the built binary.
# ---------------------------------------------------------------------------
bin=$(readlink -f "$NODESTATE_BIN")
grep -q '^ExecStart=/usr/local/bin/nodestate$' "$unit" ||
    fail "ExecStart is not /usr/local/bin/nodestate (the path the install lines in the unit use)"
copy=$tmp/nodestate.service
sed "s|^ExecStart=/usr/local/bin/nodestate\$|ExecStart=$bin|" "$unit" >"$copy"
verify_out=$(systemd-analyze verify "$copy" 2>&1) || { echo "$verify_out" >&2; fail "systemd-analyze verify failed"; }
[[ -z "$verify_out" ]] || { echo "$verify_out" >&2; fail "systemd-analyze verify is not clean"; }
note "systemd-analyze verify: clean"

# ---------------------------------------------------------------------------
# (2) the promised settings.
# ---------------------------------------------------------------------------
# value KEY: the value of the last KEY= line of [Service] (systemd's rule for
# most settings), or fails when there is none.
service=$(awk '/^\[/ { s = ($0 == "[Service]") } s && /^[A-Za-z]+=/ { print }' "$unit")
value() {
    local v
    v=$(grep -E "^$1=" <<<"$service" | tail -n 1) || fail "[Service] has no $1="
    printf '%s\n' "${v#*=}"
}
want() {
    [[ "$(value "$1")" == "$2" ]] || fail "$1 is '$(value "$1")', want '$2'"
}
want DynamicUser yes
want StateDirectory nodestate
want ProtectSystem strict
want ProtectHome yes
want PrivateTmp yes
want NoNewPrivileges yes
want CapabilityBoundingSet ""
want Restart on-failure
want KillSignal SIGTERM
families=" $(value RestrictAddressFamilies) "
for f in AF_INET AF_INET6; do
    [[ "$families" == *" $f "* ]] || fail "RestrictAddressFamilies lacks $f: $families"
done
[[ "$families" != *" ~"* ]] || fail "RestrictAddressFamilies is a deny list: $families"
grep -qE '^SystemCallFilter=@system-service' <<<"$service" || fail "no SystemCallFilter=@system-service"
envfile=$(value EnvironmentFile)
[[ "$envfile" == -/* ]] || fail "EnvironmentFile=$envfile must be optional (start with '-')"

# The unit's environment, as systemd passes it (Environment= lines, in order).
unit_env=()
while IFS= read -r line; do
    unit_env+=("${line#Environment=}")
done < <(grep -E '^Environment=' <<<"$service")
shutdown=10 # the option's default, if the unit sets none
for kv in "${unit_env[@]}"; do
    [[ "$kv" == NODESTATE_SHUTDOWN_TIMEOUT=* ]] && shutdown=${kv#*=}
done
stop_timeout=$(value TimeoutStopSec)
[[ "$stop_timeout" =~ ^[0-9]+(s)?$ ]] || fail "TimeoutStopSec=$stop_timeout: give whole seconds"
stop_timeout=${stop_timeout%s}
awk -v t="$stop_timeout" -v s="$shutdown" 'BEGIN { exit !(t > s + 1) }' ||
    fail "TimeoutStopSec=$stop_timeout is not above NODESTATE_SHUTDOWN_TIMEOUT=$shutdown + 1 s: systemd would SIGKILL a shutdown in progress"
note "settings: hardening present, Restart=on-failure, KillSignal=SIGTERM, TimeoutStopSec=$stop_timeout > $shutdown + 1"

# ---------------------------------------------------------------------------
# (3) systemd's own exposure rating.
# ---------------------------------------------------------------------------
sec_out=$(systemd-analyze security --offline=true --no-pager "$copy" 2>&1) ||
    { echo "$sec_out" | tail -n 20 >&2; fail "systemd-analyze security failed"; }
rating=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' <<<"$sec_out")
[[ "$rating" == *" OK" ]] || { echo "$sec_out" | tail -n 20 >&2; fail "systemd-analyze security rates the unit '$rating', want OK"; }
note "systemd-analyze security: exposure $rating"

# ---------------------------------------------------------------------------
# (4) the binary with the unit's environment.
# ---------------------------------------------------------------------------
state=$tmp/state # stands in for %S (/var/lib)
mkdir -p "$state/nodestate"
run_env=()
for kv in "${unit_env[@]}"; do
    kv=${kv//%S/$state}
    [[ "$kv" == NODESTATE_LISTEN=* ]] && kv=NODESTATE_LISTEN=127.0.0.1:0
    [[ "$kv" != *%* ]] || fail "Environment=$kv: a specifier this check does not know"
    run_env+=("$kv")
done
check_clean_env
log=$tmp/nodestate.log
(cd "$state/nodestate" && exec env "${clean_env[@]}" "${run_env[@]}" "$bin" --port-file "$tmp/port") 2>"$log" &
ns_pid=$!
ns_wait_port "$tmp/port" "$log" "nodestate exited at start with the unit's environment"
body=$(curl -fsS --max-time 15 "http://127.0.0.1:$port/healthz") || fail "/healthz failed"
db=""
for kv in "${run_env[@]}"; do
    [[ "$kv" == NODESTATE_DB=* ]] && db=${kv#*=}
done
[[ -n "$db" && -f "$db" ]] || fail "no database at the unit's NODESTATE_DB ($db)"
[[ "$db" == "$state/nodestate/"* ]] || fail "NODESTATE_DB=$db is outside the StateDirectory, which is all ProtectSystem=strict leaves writable"
kill -TERM "$ns_pid"
ns_wait_exit "$((stop_timeout * 10))" || fail "nodestate still runs $stop_timeout s (TimeoutStopSec) after SIGTERM"
[[ "$ns_rc" == 0 ]] || { cat "$log" >&2; fail "nodestate exited $ns_rc after SIGTERM, want 0"; }
note "the unit's environment: /healthz answered $body, SIGTERM ended it with 0"
note "PASS"
