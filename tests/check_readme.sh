#!/usr/bin/env bash
# check_readme: runs every curl example of README.md against a live nodestate,
# so the user's guide cannot drift from the service.
#
# An example is a fenced ```sh block that contains `curl`. The blocks are
# written to run one after another on a fresh database, and run here in README
# order, each with `set -e -o pipefail`, against $NODESTATE_BIN started on a
# free port (127.0.0.1:0, the real port read from its --port-file)
# with a scratch database; 127.0.0.1:8080 and localhost:8080 in a block are
# rewritten to that port, and no other :8080 may be left.
#
# Every curl command in a block is followed by the result it claims, as a
# comment a human can read and a shell ignores:
#     # → STATUS [OUTPUT]
# STATUS is the HTTP status the command must get. OUTPUT, when given, is text
# its standard output must contain, with `…` standing for anything left out
# (the pieces between the `…` must appear, in order). A block with a curl
# command and no claim for it, a failing command, a wrong status or missing
# output fails the check, which prints the block.
#
# A block may also start a second `nodestate` (the binary under test, run
# from the examples' directory beside the live server, at most 30 s), and
# claim its exit status and output (stdout and stderr together):
#     # → exit STATUS [OUTPUT]
# A `nodestate` run through another command (`timeout 20 nodestate … &`, a
# server in the background that the block stops itself) is the binary under
# test too, found on PATH; it makes no claim of its own.
#
# The README's Quick start block must be exactly its two commands.
# Needs NODESTATE_BIN, NODESTATE_SOURCE_DIR and curl.
set -euo pipefail

check_name=check_readme
source "$(dirname "${BASH_SOURCE[0]}")/lib_check.sh"

check_require_env
readme=$NODESTATE_SOURCE_DIR/README.md
[[ -f "$readme" ]] || fail "$readme is missing"
command -v curl >/dev/null 2>&1 || fail "curl not found on PATH"
curl_bin=$(command -v curl)

check_scratch

# --- Quick start: exactly the two commands -----------------------------------
quick=$(awk '
    /^## / { in_section = ($0 == "## Quick start"); next }
    in_section && /^```/ { if (in_block) exit; in_block = 1; next }
    in_section && in_block { print }' "$readme")
[[ "$quick" == $'bash scripts/run.sh\nbash scripts/test.sh' ]] ||
    fail "the Quick start block is not exactly 'bash scripts/run.sh' and 'bash scripts/test.sh': [$quick]"

# --- the examples: ```sh blocks with curl, one file each ---------------------
mkdir -p "$tmp/blocks"
awk -v dir="$tmp/blocks" '
    !in_block && $0 == "```sh" { in_block = 1; n++; start[n] = NR + 1; text = ""; next }
    in_block && /^```[[:space:]]*$/ {
        in_block = 0
        if (text ~ /(^|[^A-Za-z0-9_-])curl[[:space:]]/ || text ~ /(^|\n)nodestate[[:space:]]/) {
            kept++
            f = sprintf("%s/%03d.sh", dir, kept)
            printf "%s", text > f
            close(f)
            printf "%d\n", start[n] > (f ".line")
            close(f ".line")
        }
        next
    }
    in_block { text = text $0 "\n" }
    END { if (in_block) { print "unclosed ```sh block" > "/dev/stderr"; exit 1 } }' "$readme" ||
    fail "README.md: cannot extract the sh blocks"
blocks=("$tmp"/blocks/*.sh)
[[ -e "${blocks[0]}" ]] || fail "README.md has no \`\`\`sh block with curl; the extraction is broken"
note "${#blocks[@]} curl example blocks in README.md"

# --- nodestate on a free port, with nothing of the caller's configuration ----
check_clean_env
mkdir -p "$tmp/run"
log=$tmp/nodestate.log
(cd "$tmp/run" && exec env "${clean_env[@]}" "$NODESTATE_BIN" --listen 127.0.0.1:0 \
    --db "$tmp/run/nodestate.db" --port-file "$tmp/port") 2>"$log" &
ns_pid=$!
ns_wait_port "$tmp/port" "$log" "nodestate exited before listening"
note "nodestate on 127.0.0.1:$port"

# `nodestate` on PATH is the binary under test, for a block that runs it
# through another command.
mkdir -p "$tmp/bin"
ln -s "$NODESTATE_BIN" "$tmp/bin/nodestate"

# A curl that records each command's status and output for the claims. Our
# --write-out comes last so it wins over one in the example; --max-time comes
# first so an example may set its own.
cat >"$tmp/prelude.sh" <<EOF
set -e -o pipefail
__n=0
curl() {
    __n=\$((__n + 1))
    local out="\$__dir/out.\$__n" rc=0
    "$curl_bin" --max-time 30 "\$@" --write-out '%{stderr}\n@@http_code=%{http_code}\n' \\
        >"\$out" 2>"\$out.err" || rc=\$?
    cat "\$out"
    grep -v -e '^@@http_code=' -e '^\$' "\$out.err" >&2 || true
    sed -n 's/^@@http_code=//p' "\$out.err" >>"\$__dir/codes"
    return "\$rc"
}
# A second nodestate: its exit status is a claim to check, not a failure.
nodestate() {
    __n=\$((__n + 1))
    local out="\$__dir/out.\$__n" rc=0
    timeout 30 "$NODESTATE_BIN" "\$@" >"\$out" 2>&1 || rc=\$?
    cat "\$out"
    echo "exit \$rc" >>"\$__dir/codes"
}
EOF

# block_fail FILE LINE MESSAGE: fails, showing the block as the README has it.
block_fail() {
    {
        echo "check_readme: FAIL: README.md line $2: $3"
        echo "--- the block ---"
        cat "$1"
        echo "---"
    } >&2
    exit 1
}

# contains_in_order OUTPUT CLAIM: whether OUTPUT has CLAIM's pieces (split at
# …), in order.
contains_in_order() {
    local rest=$1 claim=$2 piece
    while [[ -n "$claim" ]]; do
        piece=${claim%%…*}
        if [[ "$piece" == "$claim" ]]; then claim=""; else claim=${claim#*…}; fi
        piece=$(sed -E 's/^[[:space:]]+|[[:space:]]+$//g' <<<"$piece")
        [[ -z "$piece" ]] && continue
        [[ "$rest" == *"$piece"* ]] || return 1
        rest=${rest#*"$piece"}
    done
    return 0
}

total=0
for block in "${blocks[@]}"; do
    line=$(cat "$block.line")
    dir=$tmp/b.$(basename "$block" .sh)
    mkdir -p "$dir"
    : >"$dir/codes"
    sed -e "s#127\.0\.0\.1:8080#127.0.0.1:$port#g" -e "s#localhost:8080#127.0.0.1:$port#g" "$block" >"$dir/body.sh"
    if grep -q ':8080' "$dir/body.sh"; then
        block_fail "$block" "$line" "an address with :8080 other than 127.0.0.1 or localhost"
    fi

    # The claims: "# → STATUS [OUTPUT]" lines, in order.
    want_codes=() want_out=()
    while IFS= read -r c; do
        c=${c#*→}
        c=${c# }
        [[ "$c" =~ ^([1-5][0-9][0-9]|exit\ [0-9]+)([[:space:]]+(.*))?$ ]] ||
            block_fail "$block" "$line" "a claim must read '# → STATUS [OUTPUT]' or '# → exit STATUS [OUTPUT]': # →$c"
        want_codes+=("${BASH_REMATCH[1]}")
        want_out+=("${BASH_REMATCH[3]}")
    done < <(grep -E '^[[:space:]]*# →' "$block" || true)

    rc=0
    (cd "$tmp/run" && PATH="$tmp/bin:$PATH" __dir=$dir bash -c 'source "$1"; source "$2"' _ "$tmp/prelude.sh" "$dir/body.sh") \
        >"$dir/stdout" 2>"$dir/stderr" || rc=$?
    mapfile -t got_codes <"$dir/codes"
    if ((rc != 0)); then
        cat "$dir/stdout" "$dir/stderr" >&2
        block_fail "$block" "$line" "the block exits $rc (command ${#got_codes[@]} is the last that ran)"
    fi
    ((${#got_codes[@]} > 0)) || block_fail "$block" "$line" "no curl or nodestate command ran"
    ((${#got_codes[@]} == ${#want_codes[@]})) ||
        block_fail "$block" "$line" "${#got_codes[@]} curl commands ran but the block claims ${#want_codes[@]} results; follow each curl with '# → STATUS [OUTPUT]'"
    for i in "${!got_codes[@]}"; do
        n=$((i + 1))
        out=$(tr -d '\r' <"$dir/out.$n")
        if [[ "${got_codes[$i]}" != "${want_codes[$i]}" ]]; then
            printf '%s\n' "$out" >&2
            block_fail "$block" "$line" "command $n answered ${got_codes[$i]}, the README claims ${want_codes[$i]}"
        fi
        if ! contains_in_order "$out" "${want_out[$i]}"; then
            printf -- '--- output of curl command %d ---\n%s\n' "$n" "$out" >&2
            block_fail "$block" "$line" "curl command $n: the output lacks what the README shows: ${want_out[$i]}"
        fi
    done
    total=$((total + ${#got_codes[@]}))
done
note "$total commands (curl, nodestate) in ${#blocks[@]} blocks got the status and output the README shows"

# The service the examples ran against must still stop cleanly.
kill -TERM "$ns_pid"
ns_wait_exit 300 || { cat "$log" >&2; fail "nodestate still runs 30 s after SIGTERM"; }
((ns_rc == 0)) || { cat "$log" >&2; fail "nodestate exited $ns_rc on SIGTERM after the examples"; }
note "PASS"
