# lib_check: shell the tool checks (tests/check_*.sh) share. A check sets
# check_name (its name, for messages and its scratch directory) and sources
# this file after `set -euo pipefail`. Not a check itself: its name keeps it
# out of the check_*.sh glob that registers the checks with ctest.

fail() {
    echo "$check_name: FAIL: $*" >&2
    exit 1
}
note() {
    echo "$check_name: $*"
}

# check_require_env: NODESTATE_BIN is an executable and NODESTATE_SOURCE_DIR
# is set, as ctest passes them.
check_require_env() {
    [[ -n "${NODESTATE_BIN:-}" ]] || fail "NODESTATE_BIN is not set (path to the nodestate binary)"
    [[ -x "$NODESTATE_BIN" ]] || fail "NODESTATE_BIN=$NODESTATE_BIN is not an executable"
    [[ -n "${NODESTATE_SOURCE_DIR:-}" ]] || fail "NODESTATE_SOURCE_DIR is not set (the repository root)"
}

# check_scratch: makes the scratch directory $tmp, and traps that on exit kill
# the nodestate in $ns_pid (when one is left running) and remove $tmp.
check_scratch() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$check_name.XXXXXX")
    ns_pid=""
    trap check_cleanup EXIT
    trap 'exit 130' INT TERM
}
check_cleanup() {
    if [[ -n "$ns_pid" ]] && kill -0 "$ns_pid" 2>/dev/null; then
        kill -KILL "$ns_pid" 2>/dev/null || true
        wait "$ns_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}

# check_clean_env: sets clean_env to env(1) options that unset every NODESTATE_*
# variable of the caller, so nodestate sees only the check's settings.
check_clean_env() {
    local k
    clean_env=()
    for k in $(compgen -e); do
        [[ "$k" == NODESTATE_* ]] && clean_env+=(-u "$k")
    done
    return 0  # not the last test's status: that would trip set -e
}

# check_wait SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds
# (returns 0) or SECONDS of wall time pass (returns 1). The condition ends the
# wait, never a guessed sleep; the deadline is wall time, so a busy machine
# gets the same time, and the loop is bounded in count too.
check_wait() {
    local end=$((SECONDS + $1)) i
    shift
    for ((i = 0; i < 100000; i++)); do
        "$@" && return 0
        ((SECONDS <= end)) || return 1
        sleep 0.1
    done
    return 1
}

# ns_wait_port PORT_FILE LOG MESSAGE: waits (up to 30 s) for the nodestate in
# $ns_pid, started with --port-file PORT_FILE, to write its port there (it
# does once listening, renaming a finished file into place) and sets port;
# fails with MESSAGE (and the log) if the process exits first.
ns_wait_port() {
    port=""
    local end=$((SECONDS + 30)) i
    for ((i = 0; i < 3000; i++)); do
        if [[ -f "$1" ]]; then
            port=$(cat "$1" 2>/dev/null || true)
            [[ "$port" =~ ^[0-9]+$ ]] && return 0
            port=""
        fi
        kill -0 "$ns_pid" 2>/dev/null || { cat "$2" >&2 2>/dev/null || true; fail "$3"; }
        ((SECONDS <= end)) || break
        sleep 0.05
    done
    cat "$2" >&2 2>/dev/null || true
    fail "nodestate wrote no port to $1 within 30 s"
}

# ns_wait_listening LOG MESSAGE: like ns_wait_port, for a nodestate started
# without --port-file: waits (up to 30 s) for its `msg=listening
# addr=127.0.0.1:PORT` line in LOG (which may not exist yet) and sets port.
ns_wait_listening() {
    port=""
    local end=$((SECONDS + 30)) i
    for ((i = 0; i < 3000; i++)); do
        port=$(sed -n 's/.*msg=listening.*addr=127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n 1 || true)
        [[ -n "$port" ]] && return 0
        kill -0 "$ns_pid" 2>/dev/null || { cat "$1" >&2 2>/dev/null || true; fail "$2"; }
        ((SECONDS <= end)) || break
        sleep 0.05
    done
    cat "$1" >&2 2>/dev/null || true
    fail "no 'msg=listening addr=127.0.0.1:PORT' line within 30 s"
}

# ns_wait_exit TICKS: after a signal, waits up to TICKS tenths of a second
# for the nodestate in $ns_pid to exit. Returns 1 while it still runs (ns_pid
# kept for the cleanup); otherwise reaps it, sets ns_rc to its exit status
# and clears ns_pid.
ns_wait_exit() {
    local tick
    for ((tick = 0; tick < $1; tick++)); do
        kill -0 "$ns_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$ns_pid" 2>/dev/null; then
        return 1
    fi
    ns_rc=0
    wait "$ns_pid" || ns_rc=$?
    ns_pid=""
}
