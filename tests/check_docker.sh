#!/usr/bin/env bash
# check_docker: proves docker/Dockerfile, docker/compose.yaml and
# docker/prometheus.yml without a Docker engine, by reading them and running
# the same commands the image would run.
#   (1) structure: multi-stage, every stage FROM debian:bookworm-slim; the
#       runtime stage installs no compiler and every shared library the binary
#       links; USER is not root; VOLUME /data; EXPOSE 8080; the ENV defaults;
#       HEALTHCHECK; STOPSIGNAL SIGTERM; an exec-form ENTRYPOINT.
#   (2) build step: the build stage's RUN lines are exactly the scripts that
#       scripts/run.sh runs before it starts the binary (the Quick start path).
#       The stage is then replayed: what it COPYs is copied from the source
#       tree into a scratch "image root", its RUN lines run there verbatim, and
#       the file the runtime stage copies out (--from=build) must exist, run
#       and link only libraries the runtime stage installs.
#   (3) start step: $NODESTATE_BIN starts with the ENV the Dockerfile declares,
#       parsed from the file, with two substitutions: the directory of
#       NODESTATE_DB (the VOLUME, /data) becomes a scratch directory, which is
#       also the working directory (WORKDIR /data); NODESTATE_LISTEN
#       0.0.0.0:8080 becomes 127.0.0.1:0 and the real port is read from the
#       file --port-file names. The HEALTHCHECK command runs verbatim under
#       sh with NODESTATE_LISTEN=127.0.0.1:<real port> in its environment (a
#       literal :8080 in it would be replaced by the real port) and must
#       succeed; the URL the shipped prometheus.yml scrapes must pass
#       `promtool check metrics`; then after a few writes SIGTERM must end the
#       process with status 0 within NODESTATE_SHUTDOWN_TIMEOUT seconds, with
#       the writes on disk. Once it is gone the HEALTHCHECK must fail.
#   (4) compose.yaml and prometheus.yml: prometheus.yml passes `promtool check
#       config`; both parse as YAML (PyYAML when python3 has it, otherwise a
#       line-shape check) and agree with each other and with the Dockerfile.
#   (5) the scale-out set: docker/haproxy.cfg passes `haproxy -c -f` and
#       routes by run (balance uri depth 2, hash-type consistent, health
#       checks on /readyz) to exactly the nodestate services of
#       docker/compose.scale.yaml; docker/prometheus.scale.yml passes
#       `promtool check config` and scrapes each of them; the compose file
#       parses (PyYAML), its nodestate services build the Dockerfile replayed
#       in (2) (the same build commands), each with its own /data volume and
#       a postgresql:// NODESTATE_DB naming the PostgreSQL service with that
#       service's user, password and database, and HAProxy's image is the
#       minor release `haproxy -c` ran.
# Needs NODESTATE_BIN, NODESTATE_SOURCE_DIR, curl, promtool, haproxy, python3
# with PyYAML (for (5)), sqlite3, readelf and dpkg (Debian), and the packages of scripts/deps.sh (the replayed build
# runs it; it installs nothing when they are present).
set -euo pipefail

check_name=check_docker
source "$(dirname "${BASH_SOURCE[0]}")/lib_check.sh"

check_require_env
src=$NODESTATE_SOURCE_DIR
dockerfile=$src/docker/Dockerfile
compose=$src/docker/compose.yaml
promconf=$src/docker/prometheus.yml
scale_compose=$src/docker/compose.scale.yaml
scale_haproxy=$src/docker/haproxy.cfg
scale_promconf=$src/docker/prometheus.scale.yml
for f in "$dockerfile" "$compose" "$promconf" "$src/scripts/run.sh" \
    "$scale_compose" "$scale_haproxy" "$scale_promconf"; do
    [[ -f "$f" ]] || fail "$f is missing"
done
for tool in curl promtool haproxy python3 sqlite3 readelf dpkg; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool not found on PATH; install the test packages with: bash scripts/deps.sh --test"
done

check_scratch

# ---------------------------------------------------------------------------
# Parse the Dockerfile into instructions: continuation lines joined, comment
# lines dropped (Docker drops them inside continuations too).
# ---------------------------------------------------------------------------
op=() args=() stage=() lineno=()
stage_names=() stage_images=()
cur=-1
while IFS=$'\t' read -r ln text; do
    word=${text%%[[:space:]]*}
    rest=${text#"$word"}
    rest=$(sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//; s/[[:space:]]+/ /g' <<<"$rest")
    word=${word^^}
    if [[ "$word" == FROM ]]; then
        cur=$((cur + 1))
        read -r image as name <<<"$rest"
        stage_images+=("$image")
        [[ "${as,,}" == as ]] && stage_names+=("$name") || stage_names+=("")
    fi
    ((cur >= 0)) || fail "Dockerfile line $ln: $word before the first FROM"
    op+=("$word") args+=("$rest") stage+=("$cur") lineno+=("$ln")
done < <(awk '
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { next }
    {
        line = $0
        if (acc == "") start = NR
        if (line ~ /\\[[:space:]]*$/) {
            sub(/\\[[:space:]]*$/, "", line)
            acc = acc line " "
            next
        }
        print start "\t" acc line
        acc = ""
    }' "$dockerfile")

nstages=${#stage_images[@]}
final=$((nstages - 1))
((nstages >= 2)) || fail "Dockerfile has $nstages stage(s); it must be multi-stage (build, runtime)"
for i in "${!stage_images[@]}"; do
    [[ "${stage_images[$i]}" == debian:bookworm-slim ]] ||
        fail "stage $i is FROM ${stage_images[$i]}, not debian:bookworm-slim"
done
build_stage=""
for i in "${!stage_names[@]}"; do
    [[ "${stage_names[$i]}" == build ]] && build_stage=$i
done
[[ -n "$build_stage" && "$build_stage" != "$final" ]] ||
    fail "no build stage: expected 'FROM debian:bookworm-slim AS build' before the runtime stage"

# instr STAGE OP: prints the arguments of every OP instruction of STAGE, one a line.
instr() {
    local i
    for i in "${!op[@]}"; do
        [[ "${stage[$i]}" == "$1" && "${op[$i]}" == "$2" ]] && printf '%s\n' "${args[$i]}"
    done
    return 0
}
# last STAGE OP: the arguments of the last OP instruction of STAGE, or fails.
last() {
    local v
    v=$(instr "$1" "$2" | tail -n 1)
    [[ -n "$v" ]] || fail "the runtime stage has no $2 instruction"
    printf '%s\n' "$v"
}

# ---------------------------------------------------------------------------
# (1) The runtime stage.
# ---------------------------------------------------------------------------
declare -A envv=()
while read -r line; do
    read -ra words <<<"$line"
    if [[ "${words[0]}" != *=* ]]; then
        # Legacy form: ENV KEY value with spaces.
        envv[${words[0]}]=${line#"${words[0]} "}
        continue
    fi
    for w in "${words[@]}"; do
        [[ "$w" == *=* ]] || fail "ENV $line: cannot parse '$w' (write KEY=VALUE without spaces)"
        v=${w#*=}
        v=${v#\"} v=${v%\"}
        envv[${w%%=*}]=$v
    done
done < <(instr "$final" ENV)

listen=${envv[NODESTATE_LISTEN]:-}
db=${envv[NODESTATE_DB]:-}
shutdown=${envv[NODESTATE_SHUTDOWN_TIMEOUT]:-}
port_file=${envv[NODESTATE_PORT_FILE]:-}
[[ "$listen" == 0.0.0.0:8080 ]] || fail "ENV NODESTATE_LISTEN is '$listen', want 0.0.0.0:8080"
# Where the HEALTHCHECK learns the port; not on the volume, where a file of an
# earlier container would outlive it.
[[ "$port_file" == /tmp/* ]] || fail "ENV NODESTATE_PORT_FILE is '$port_file', want a file in /tmp"
[[ "$db" == /data/* ]] || fail "ENV NODESTATE_DB is '$db', want a file in /data"
[[ "$shutdown" =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "ENV NODESTATE_SHUTDOWN_TIMEOUT is '$shutdown', want seconds"
# docker stop waits 10 s after SIGTERM before SIGKILL; leave a margin to exit.
awk -v t="$shutdown" 'BEGIN { exit !(t > 0 && t <= 9) }' ||
    fail "NODESTATE_SHUTDOWN_TIMEOUT=$shutdown does not fit docker stop's 10 s grace period (want 0 < t <= 9)"

user=$(last "$final" USER)
user=${user%%:*}
[[ -n "$user" && "$user" != root && "$user" != 0 ]] || fail "USER is '$user'; the image must not run as root"
instr "$final" RUN | grep -Eq "useradd .*\\b$user\\b" || fail "no RUN creates the user $user (useradd)"
instr "$final" RUN | grep -Eq "chown [^ ]*${user}[^ ]* /data" || fail "no RUN gives /data to $user (chown)"
volume=$(last "$final" VOLUME)
[[ "$volume" =~ (^|[\"[:space:]])/data([\"[:space:]]|$) ]] || fail "VOLUME is '$volume', want /data"
[[ "$(last "$final" WORKDIR)" == /data ]] || fail "the runtime WORKDIR is not /data"
expose=$(last "$final" EXPOSE)
[[ " $expose " == *" 8080 "* || " $expose " == *" 8080/tcp "* ]] || fail "EXPOSE is '$expose', want 8080"
[[ "$(last "$final" STOPSIGNAL)" == SIGTERM ]] || fail "STOPSIGNAL is not SIGTERM"

healthcheck=$(last "$final" HEALTHCHECK)
[[ "$healthcheck" == *" CMD "* || "$healthcheck" == "CMD "* ]] || fail "HEALTHCHECK has no CMD: $healthcheck"
hc_cmd=${healthcheck#*CMD }
[[ "$hc_cmd" != \[* ]] || fail "HEALTHCHECK CMD must be the shell form (this check runs it with sh)"
[[ "$hc_cmd" == *"/healthz"* ]] || fail "HEALTHCHECK does not probe /healthz: $hc_cmd"
hc_tool=${hc_cmd%% *}

# The binary the runtime stage copies out of the build stage, and where to.
copy_from=$(instr "$final" COPY | grep -E -- '^--from=build ' || true)
[[ $(grep -c . <<<"$copy_from") == 1 ]] || fail "the runtime stage must COPY --from=build exactly once (the binary)"
read -r _ artifact bin_dest <<<"$copy_from"
[[ -n "$bin_dest" ]] || fail "cannot parse: COPY $copy_from"
entry=$(last "$final" ENTRYPOINT)
[[ "$entry" =~ ^\[\ *\"([^\"]+)\" ]] || fail "ENTRYPOINT must be the exec form [\"...\"], so nodestate is PID 1 and gets SIGTERM: $entry"
[[ "${BASH_REMATCH[1]}" == "$bin_dest" ]] || fail "ENTRYPOINT runs ${BASH_REMATCH[1]}, but the binary is copied to $bin_dest"

# Packages the runtime stage installs: the words after "apt-get install" up to "&&".
runtime_pkgs=$(instr "$final" RUN | grep -oE 'apt-get install[^&]*' | sed -E 's/apt-get install//' |
               tr ' ' '\n' | grep -Ev '^(-.*)?$' || true)
[[ -n "$runtime_pkgs" ]] || fail "the runtime stage installs no packages (apt-get install)"
for p in $runtime_pkgs; do
    case $p in
    gcc* | g++* | cpp* | clang* | cc | build-essential | cmake | make | pkg-config | *-dev)
        fail "the runtime stage installs $p; it must carry no compilers or headers" ;;
    esac
done
grep -qx "$hc_tool" <<<"$runtime_pkgs" || fail "the HEALTHCHECK runs $hc_tool, which the runtime stage does not install"
note "structure ok: 2 stages on debian:bookworm-slim, USER $user, VOLUME /data, EXPOSE 8080, runtime packages: $(tr '\n' ' ' <<<"$runtime_pkgs")"

# ---------------------------------------------------------------------------
# (2) The build step: the same scripts as scripts/run.sh, then replayed.
# ---------------------------------------------------------------------------
# Commands of the build stage's RUN lines, one a line, split at &&.
docker_build_cmds=$(instr "$build_stage" RUN | sed 's/ && /\n/g' | sed -E 's/^ +| +$//g')
# What scripts/run.sh runs before it execs the binary: its `bash scripts/...` lines.
run_sh_cmds=$(grep -E '^[[:space:]]*bash scripts/' "$src/scripts/run.sh" | sed -E 's/^ +| +$//g')
[[ -n "$run_sh_cmds" ]] || fail "scripts/run.sh runs no 'bash scripts/...' step"
while read -r c; do
    [[ "$c" =~ ^bash\ scripts/[a-z_]+\.sh$ ]] ||
        fail "build stage runs '$c'; it may only call scripts (bash scripts/NAME.sh), as CI does"
done <<<"$docker_build_cmds"
[[ "$docker_build_cmds" == "$run_sh_cmds" ]] ||
    fail "the build stage runs [$(tr '\n' ';' <<<"$docker_build_cmds")] but scripts/run.sh runs [$(tr '\n' ';' <<<"$run_sh_cmds")]"
note "build stage runs the scripts run.sh runs: $(tr '\n' ';' <<<"$docker_build_cmds")"

root=$tmp/rootfs
mkdir -p "$root"
workdir=/
build_log=$tmp/build.log
for i in "${!op[@]}"; do
    [[ "${stage[$i]}" == "$build_stage" ]] || continue
    a=${args[$i]}
    case ${op[$i]} in
    FROM) ;;
    WORKDIR)
        [[ "$a" == /* ]] && workdir=$a || workdir=$workdir/$a
        mkdir -p "$root$workdir" ;;
    COPY)
        [[ "$a" != -* ]] || fail "Dockerfile line ${lineno[$i]}: the replay does not know COPY flags: $a"
        [[ "$a" != *[\*\?]* ]] || fail "Dockerfile line ${lineno[$i]}: the replay does not know wildcards: $a"
        read -ra parts <<<"$a"
        dest=${parts[-1]}
        [[ "$dest" == /* ]] || dest=$workdir/$dest
        unset 'parts[-1]'
        for s in "${parts[@]}"; do
            [[ -e "$src/$s" ]] || fail "Dockerfile line ${lineno[$i]}: COPY $s: no such file in the source tree"
            if [[ -d "$src/$s" ]]; then
                mkdir -p "$root$dest"
                cp -a "$src/$s/." "$root$dest/"
            elif [[ "$dest" == */ || ${#parts[@]} -gt 1 ]]; then
                mkdir -p "$root$dest"
                cp -a "$src/$s" "$root$dest/"
            else
                mkdir -p "$(dirname "$root$dest")"
                cp -a "$src/$s" "$root$dest"
            fi
        done ;;
    RUN)
        note "replaying build step: RUN $a (in $workdir, log in $build_log)"
        if ! (cd "$root$workdir" && sh -c "$a") >>"$build_log" 2>&1; then
            tail -n 40 "$build_log" >&2
            fail "Dockerfile line ${lineno[$i]}: RUN $a failed"
        fi ;;
    ENV | ARG | LABEL | SHELL) fail "Dockerfile line ${lineno[$i]}: the replay does not know ${op[$i]} in the build stage" ;;
    *) fail "Dockerfile line ${lineno[$i]}: the replay does not know ${op[$i]}" ;;
    esac
done
[[ "$artifact" == /* ]] || fail "COPY --from=build $artifact: give the build stage path absolutely"
image_bin=$root$artifact
[[ -x "$image_bin" ]] || fail "the build stage did not produce $artifact (the runtime stage copies it)"
want_version=$("$NODESTATE_BIN" --version) || fail "$NODESTATE_BIN --version failed"
got_version=$("$image_bin" --version) || fail "the replayed build's $artifact --version failed"
[[ "$got_version" == "$want_version" ]] || fail "replayed build says '$got_version', NODESTATE_BIN says '$want_version'"

# Every library the binary links directly must come from libc6 (in the base
# image) or from a package the runtime stage installs.
ldd_out=$(ldd "$image_bin") || fail "ldd $image_bin failed"
while read -r soname; do
    path=$(awk -v n="$soname" '$1 == n && $2 == "=>" { print $3 }' <<<"$ldd_out")
    [[ -n "$path" ]] || fail "the build links $soname, which ldd cannot resolve"
    # With merged /usr, dpkg knows a library under /lib or /usr/lib, whichever
    # its package ships: ask for every spelling of the path.
    real=$(readlink -f "$path")
    pkg=""
    for p in "$path" "$real" "${path#/usr}" "/usr${path#/usr}" "${real#/usr}" "/usr${real#/usr}"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) || true
        [[ -n "$pkg" ]] && break
    done
    [[ -n "$pkg" ]] || fail "no Debian package owns $path ($soname)"
    [[ "$pkg" == libc6 ]] || grep -qx "$pkg" <<<"$runtime_pkgs" ||
        fail "the binary links $soname from package $pkg, which the runtime stage does not install"
done < <(readelf -d "$image_bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p')
note "build step ok: $artifact built ($got_version), its libraries are in the runtime stage"

# ---------------------------------------------------------------------------
# (3) The start step, with the Dockerfile's ENV.
# ---------------------------------------------------------------------------
data=$tmp/data # stands in for the VOLUME /data
mkdir -p "$data"
# The container's environment: the image's ENV with its two paths moved into
# the scratch directory (the volume, and the port file in /tmp).
image_env=()
for k in "${!envv[@]}"; do
    v=${envv[$k]}
    case $k in
    NODESTATE_DB) v=$data/${db#/data/} ;;
    NODESTATE_PORT_FILE) v=$tmp/port ;;
    esac
    image_env+=("$k=$v")
done
# Only the image's settings: no NODESTATE_* from the caller's environment.
check_clean_env
log=$tmp/nodestate.log

# start_image ENV_OVERRIDE... -- ARGS...: nodestate as the container starts it,
# with the image's environment plus overrides and arguments after the image
# name; waits for the port it writes to NODESTATE_PORT_FILE (sets port).
start_image() {
    local over=() args=()
    while (($#)) && [[ "$1" != -- ]]; do over+=("$1"); shift; done
    (($#)) && shift
    args=("$@")
    rm -f "$tmp/port"
    (cd "$data" && exec env "${clean_env[@]}" "${image_env[@]}" "${over[@]}" "$NODESTATE_BIN" "${args[@]}") 2>"$log" &
    ns_pid=$!
    ns_wait_port "$tmp/port" "$log" "nodestate exited at start with the image's ENV"
}

# run_healthcheck: the HEALTHCHECK command verbatim as Docker runs it: sh -c,
# the container's environment (NODESTATE_LISTEN=0.0.0.0:8080 whatever port the
# service took), so it passes only if it follows the port the service reports.
run_healthcheck() {
    env "${clean_env[@]}" "${image_env[@]}" sh -c "$hc_cmd"
}
healthcheck_ok() {
    run_healthcheck >"$tmp/hc.out" 2>&1 ||
        { cat "$tmp/hc.out" >&2; fail "HEALTHCHECK failed against nodestate started $1: $hc_cmd"; }
    note "HEALTHCHECK succeeded with the port given $1: $(cat "$tmp/hc.out")"
}

# The port given by --listen after the image name (NODESTATE_LISTEN still says 8080).
start_image -- --listen 127.0.0.1:0
healthcheck_ok "by the --listen flag"
kill -TERM "$ns_pid"
ns_wait_exit 300 || fail "nodestate did not stop on SIGTERM"
# The port given by NODESTATE_LISTEN (-e NODESTATE_LISTEN=...): the run the rest checks.
start_image NODESTATE_LISTEN=127.0.0.1:0 --
note "start step: nodestate with ${image_env[*]} NODESTATE_LISTEN=127.0.0.1:0 listens on 127.0.0.1:$port"
healthcheck_ok "by NODESTATE_LISTEN"
[[ -f "$data/${db#/data/}" ]] || fail "no database at NODESTATE_DB (the volume): $data/${db#/data/}"

# The URL the shipped prometheus.yml scrapes, asked for as Prometheus asks.
metrics_path=$(sed -n 's/^[[:space:]]*metrics_path:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$promconf" | head -n 1)
format=$(sed -n 's/^[[:space:]]*format:[[:space:]]*\[\([a-z]*\)\].*/\1/p' "$promconf" | head -n 1)
[[ "$metrics_path" == /stats ]] || fail "prometheus.yml scrapes '$metrics_path', not /stats"
scrape_url="http://127.0.0.1:$port$metrics_path${format:+?format=$format}"
ctype=$(curl -sS --max-time 15 -o "$tmp/scrape.txt" -w '%{content_type}' \
    -H 'Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1' \
    "$scrape_url") || fail "scraping $scrape_url failed"
[[ "$ctype" == "text/plain; version=0.0.4"* ]] || fail "$scrape_url answers Content-Type '$ctype', not Prometheus text"
promtool check metrics <"$tmp/scrape.txt" >"$tmp/promtool.out" 2>&1 ||
    { cat "$tmp/promtool.out" >&2; fail "promtool check metrics rejects what prometheus.yml scrapes ($scrape_url)"; }
note "the scrape of prometheus.yml ($metrics_path${format:+?format=$format}) passes promtool check metrics"

# A few writes for the shutdown to flush, then docker stop's SIGTERM.
for n in 1 2 3; do
    code=$(curl -sS --max-time 15 -o /dev/null -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' -d '{"status":"running"}' \
        "http://127.0.0.1:$port/runs/docker-check/nodes/n$n/state") || fail "POST failed"
    [[ "$code" == 202 || "$code" == 200 ]] || fail "POST answered $code, want 202"
done
kill -TERM "$ns_pid"
deadline=$(awk -v t="$shutdown" 'BEGIN { printf "%d", t * 10 }')
if ! ns_wait_exit "$deadline"; then
    cat "$log" >&2
    fail "nodestate still runs ${shutdown} s after SIGTERM (NODESTATE_SHUTDOWN_TIMEOUT); docker would SIGKILL it"
fi
[[ "$ns_rc" == 0 ]] || { cat "$log" >&2; fail "nodestate exited $ns_rc after SIGTERM, want 0"; }
grep -q 'msg=stopped' "$log" || { cat "$log" >&2; fail "no msg=stopped line after SIGTERM"; }
rows=$(sqlite3 "file:$data/${db#/data/}?mode=ro" "SELECT count(*) FROM run_node_state WHERE run_id = 'docker-check'" 2>&1) ||
    fail "reading the database after shutdown failed: $rows"
[[ "$rows" == 3 ]] || fail "after SIGTERM the database holds $rows of the 3 accepted writes"
note "SIGTERM: exit 0 within ${shutdown} s, the 3 accepted writes are on disk"

# The check must be able to fail: with nothing listening it has to.
if run_healthcheck >/dev/null 2>&1; then
    fail "HEALTHCHECK succeeds with nodestate stopped; it checks nothing"
fi

# ---------------------------------------------------------------------------
# (4) compose.yaml and prometheus.yml.
# ---------------------------------------------------------------------------
# promtool opens the credentials file, which compose mounts at
# /run/secrets/...: check a copy that names a scratch file instead.
: >"$tmp/empty-secret"
sed "s|/run/secrets/[A-Za-z0-9_.-]*|$tmp/empty-secret|g" "$promconf" >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml" >"$tmp/promconf.out" 2>&1 ||
    { cat "$tmp/promconf.out" >&2; fail "promtool check config docker/prometheus.yml"; }

if python3 -c 'import yaml' >/dev/null 2>&1; then
    python3 - "$compose" "$promconf" "$shutdown" <<'EOF' || fail "compose.yaml / prometheus.yml (see above)"
import re, sys, yaml

compose_path, prom_path, shutdown = sys.argv[1], sys.argv[2], float(sys.argv[3])
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

compose = yaml.safe_load(open(compose_path))
prom = yaml.safe_load(open(prom_path))
services = compose.get("services") or {}

ns_name = next((n for n, s in services.items()
                if isinstance(s.get("build"), dict)
                and s["build"].get("dockerfile") == "docker/Dockerfile"), None)
check(ns_name, "no service builds docker/Dockerfile")
if ns_name:
    ns = services[ns_name]
    check(ns["build"].get("context") == "..", "the nodestate build context is not .. (the repository root)")
    check(any(str(p).endswith(":8080") for p in ns.get("ports", [])), "nodestate's port 8080 is not published")
    check(any(str(v).split(":")[1:2] == ["/data"] for v in ns.get("volumes", [])), "no volume on /data")
    grace = str(ns.get("stop_grace_period", "10s"))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", grace)
    check(m and float(m.group(1)) > shutdown,
          f"stop_grace_period {grace} is not longer than NODESTATE_SHUTDOWN_TIMEOUT={shutdown:g}")

prom_name = next((n for n, s in services.items() if "prometheus" in str(s.get("image", ""))), None)
check(prom_name, "no Prometheus service")
if prom_name:
    p = services[prom_name]
    conf = next((a.split("=", 1)[1] for a in p.get("command", []) if a.startswith("--config.file=")), None)
    check(conf, "the Prometheus service has no --config.file")
    check(any(str(v).startswith("./prometheus.yml:" + str(conf)) for v in p.get("volumes", [])),
          f"./prometheus.yml is not mounted at {conf}")
    dep = p.get("depends_on") or {}
    check(ns_name in dep, "Prometheus does not depend on nodestate")

jobs = prom.get("scrape_configs") or []
targets = [t for j in jobs if j.get("metrics_path") == "/stats"
           for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
check(f"{ns_name}:8080" in targets, f"prometheus.yml does not scrape /stats on {ns_name}:8080 (targets {targets})")

# The token: one secret, given to both services; nodestate reads it as its
# token file, Prometheus sends it (authorization.credentials_file).
secrets = compose.get("secrets") or {}
check(len(secrets) == 1, f"compose.yaml should define one secret (the token), has {list(secrets)}")
secret = next(iter(secrets), None)
if secret and ns_name and prom_name:
    for n in (ns_name, prom_name):
        check(secret in (services[n].get("secrets") or []), f"service {n} does not get the secret {secret}")
    env = services[ns_name].get("environment") or {}
    check(f"/run/secrets/{secret}" in str(env.get("NODESTATE_TOKEN_FILE", "")),
          f"nodestate's NODESTATE_TOKEN_FILE does not name /run/secrets/{secret}")
    for j in jobs:
        if j.get("metrics_path") != "/stats":
            continue
        auth = j.get("authorization") or {}
        check(str(auth.get("type", "Bearer")).lower() == "bearer", "the scrape's authorization is not Bearer")
        check(auth.get("credentials_file") == f"/run/secrets/{secret}",
              f"the scrape's authorization.credentials_file is not /run/secrets/{secret}")

for e in errors:
    print("check_docker: compose/prometheus:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
    note "compose.yaml and prometheus.yml parse as YAML (PyYAML) and agree with the Dockerfile"
else
    # No YAML parser: check that every line has a YAML block shape, and the
    # facts above by text.
    for f in "$compose" "$promconf"; do
        bad=$(grep -nvE '^[ ]*(#.*)?$|^[ ]*(- )?[A-Za-z0-9_.-]+:( .*)?$|^[ ]*- [^ ].*$' "$f" || true)
        [[ -z "$bad" ]] || fail "$f: lines that are not YAML block mappings or lists: $bad"
        ! grep -qP '^\t' "$f" || fail "$f: a tab in the indentation"
    done
    grep -q 'dockerfile: docker/Dockerfile' "$compose" || fail "compose.yaml does not build docker/Dockerfile"
    grep -q 'prometheus.yml:/etc/prometheus/prometheus.yml' "$compose" || fail "compose.yaml does not mount prometheus.yml"
    grep -q '"nodestate:8080"' "$promconf" || fail "prometheus.yml does not scrape nodestate:8080"
    note "compose.yaml and prometheus.yml: line shapes ok (python3 has no yaml module; no full parse)"
fi

# ---------------------------------------------------------------------------
# (5) The token, end to end: compose's variables resolved as compose resolves
# them, two nodestates started as the service would be (token source set, and
# unset), and a real Prometheus with the shipped scrape job pointed at them,
# its credentials_file at what compose would mount: both are scraped (up 1).
# The same job with a wrong token must fail (up 0), so the header is really
# sent and checked.
# ---------------------------------------------------------------------------
command -v prometheus >/dev/null 2>&1 ||
    fail "prometheus not found on PATH; install the test packages with: bash scripts/deps.sh --test"
python3 -c 'import yaml' >/dev/null 2>&1 || fail "python3 has no yaml module (python3-yaml) for the token replay"
echo "check-docker-token-$RANDOM$RANDOM" >"$tmp/token.secret"
echo "not-the-token" >"$tmp/wrong.secret"

# compose_resolve SOURCE_OR_EMPTY: prints "TOKEN_FILE|SECRET_FILE|MOUNT", what
# compose makes of the service's NODESTATE_TOKEN_FILE and of the secret's
# file with NODESTATE_TOKEN_SOURCE set to SOURCE (or unset when empty), the
# /run/secrets/ mount moved to SECRET_FILE's scratch copy.
compose_resolve() {
    python3 - "$compose" "$1" "$tmp" <<'EOF'
import re, sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
source, tmp = sys.argv[2], sys.argv[3]
env = {"NODESTATE_TOKEN_SOURCE": source} if source else {}
def interp(s):
    def one(m):
        name, op, word = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op == ":+": return word if val else ""
        if op == "+": return word if val is not None else ""
        if op == ":-": return val if val else word
        if op == "-": return val if val is not None else word
        return val or ""
    return re.sub(r"\$\{(\w+)(?:(:?[-+])([^}]*))?\}", one, str(s))
ns = next(s for s in compose["services"].values()
          if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "docker/Dockerfile")
name, spec = next(iter(compose["secrets"].items()))
secret_file = interp(spec["file"])
token_file = interp((ns.get("environment") or {}).get("NODESTATE_TOKEN_FILE", ""))
token_file = token_file.replace(f"/run/secrets/{name}", f"{tmp}/mounted-{name}")
print(f"{token_file}|{secret_file}|{tmp}/mounted-{name}")
EOF
}

# start_token_ns TOKEN_FILE: a nodestate as compose's service (token file as
# resolved; empty means none); sets port and the pid in the named variable.
prom_targets=()
start_token_ns() {
    local tf=$1 name=$2
    rm -f "$tmp/port"
    env "${clean_env[@]}" NODESTATE_TOKEN_FILE="$tf" "$NODESTATE_BIN" --listen 127.0.0.1:0 \
        --db "$tmp/$name.db" --port-file "$tmp/port" 2>"$tmp/$name.log" &
    ns_pid=$!
    ns_wait_port "$tmp/port" "$tmp/$name.log" "nodestate ($name) exited at start"
    eval "${name}_pid=$ns_pid ${name}_port=$port"
    ns_pid=""
}

IFS='|' read -r set_tf set_secret set_mount < <(compose_resolve "$tmp/token.secret")
[[ "$set_tf" == "$set_mount" && "$set_secret" == "$tmp/token.secret" ]] ||
    fail "with NODESTATE_TOKEN_SOURCE set, compose gives nodestate token file '$set_tf' and the secret '$set_secret'"
cp "$set_secret" "$set_mount"
IFS='|' read -r unset_tf unset_secret _ < <(compose_resolve "")
[[ -z "$unset_tf" ]] || fail "with NODESTATE_TOKEN_SOURCE unset, compose still gives nodestate a token file: '$unset_tf'"
[[ -r "$unset_secret" ]] || fail "with NODESTATE_TOKEN_SOURCE unset, the secret's file '$unset_secret' does not exist"
start_token_ns "$set_tf" withtoken
start_token_ns "" notoken
stop_token_ns() {
    local pid
    for pid in "${withtoken_pid:-}" "${notoken_pid:-}" "${prom_pid:-}"; do
        [[ -n "$pid" ]] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    done
    return 0
}
trap 'stop_token_ns; check_cleanup' EXIT
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 15 "http://127.0.0.1:$withtoken_port/stats") || fail "curl"
[[ "$code" == 401 ]] || fail "nodestate started with compose's token file answers /stats without a token with $code, want 401"

# The shipped job three times: token set, token unset, wrong token.
python3 - "$promconf" "$tmp/prom-token.yml" "$withtoken_port" "$notoken_port" \
    "$set_mount" "$unset_secret" "$tmp/wrong.secret" <<'EOF'
import copy, sys, yaml
src, out, p_with, p_without, cred_with, cred_without, cred_wrong = sys.argv[1:]
prom = yaml.safe_load(open(src))
job = next(j for j in prom["scrape_configs"] if j.get("metrics_path") == "/stats")
jobs = []
for name, port, cred in (("with-token", p_with, cred_with), ("without-token", p_without, cred_without),
                         ("wrong-token", p_with, cred_wrong)):
    j = copy.deepcopy(job)
    j["job_name"] = name
    j["scrape_interval"] = "1s"
    j["scrape_timeout"] = "1s"
    j["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    j.setdefault("authorization", {})["credentials_file"] = cred
    jobs.append(j)
prom["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
prom["scrape_configs"] = jobs
yaml.safe_dump(prom, open(out, "w"))
EOF
promtool check config "$tmp/prom-token.yml" >"$tmp/prom-token.out" 2>&1 ||
    { cat "$tmp/prom-token.out" >&2; fail "the replayed Prometheus config is invalid"; }

prom_pid=""
prom_port=""
for attempt in $(seq 10); do
    candidate=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null && continue
    rm -rf "$tmp/prom-data"
    prometheus --config.file="$tmp/prom-token.yml" --storage.tsdb.path="$tmp/prom-data" \
        --web.listen-address="127.0.0.1:$candidate" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
    prom_pid=$!
    prom_ready() {
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$candidate/-/ready" || true)" == 200 ]]
    }
    if check_wait 60 prom_ready; then
        prom_port=$candidate
        break
    fi
    if kill -0 "$prom_pid" 2>/dev/null; then
        tail -n 30 "$tmp/prometheus.log" >&2
        fail "prometheus not ready within 60 s"
    fi
    wait "$prom_pid" 2>/dev/null || true
    prom_pid=""
    grep -qi 'address already in use' "$tmp/prometheus.log" ||
        { tail -n 30 "$tmp/prometheus.log" >&2; fail "prometheus exited at start-up"; }
done
[[ -n "$prom_port" ]] || fail "found no free port for prometheus in 10 attempts"

# up_is JOB VALUE: whether Prometheus's latest up for JOB is VALUE.
up_is() {
    local v
    v=$(curl -s -G --max-time 5 --data-urlencode "query=up{job=\"$1\"}" \
        "http://127.0.0.1:$prom_port/api/v1/query" |
        sed -n 's/.*"value":\[[^,]*,"\([^"]*\)"\].*/\1/p' || true)
    [[ "$v" == "$2" ]]
}
for want in "with-token 1" "without-token 1" "wrong-token 0"; do
    read -r job value <<<"$want"
    check_wait 60 up_is "$job" "$value" ||
        { tail -n 30 "$tmp/prometheus.log" >&2; fail "Prometheus's up{job=\"$job\"} never became $value"; }
done
note "token: Prometheus with the shipped job scrapes nodestate with compose's token secret (up 1), without a token when none is set (up 1), and is refused with a wrong one (up 0)"
# (6) The scale-out set: compose.scale.yaml, haproxy.cfg, prometheus.scale.yml.
# ---------------------------------------------------------------------------
haproxy -c -f "$scale_haproxy" >"$tmp/haproxy.out" 2>&1 ||
    { cat "$tmp/haproxy.out" >&2; fail "haproxy -c -f docker/haproxy.cfg rejects it"; }
# Warnings are allowed only for the servers' names, which resolve inside
# compose's network alone.
if grep -E '^\[(WARNING|ALERT)\]' "$tmp/haproxy.out" | grep -vq 'could not resolve address'; then
    cat "$tmp/haproxy.out" >&2
    fail "haproxy -c -f docker/haproxy.cfg warns about more than the compose-only host names"
fi
haproxy_minor=$(haproxy -v | sed -n 's/^HAProxy version \([0-9]*\.[0-9]*\).*/\1/p' | head -n 1)
[[ -n "$haproxy_minor" ]] || fail "cannot read haproxy -v"
promtool check config "$scale_promconf" >"$tmp/scale_promconf.out" 2>&1 ||
    { cat "$tmp/scale_promconf.out" >&2; fail "promtool check config docker/prometheus.scale.yml"; }
python3 -c 'import yaml' >/dev/null 2>&1 ||
    fail "python3 has no yaml module (PyYAML, Debian's python3-yaml): cannot parse docker/compose.scale.yaml"
python3 - "$scale_compose" "$scale_haproxy" "$scale_promconf" "$shutdown" "$haproxy_minor" <<'EOF' ||
import re, sys, urllib.parse, yaml

compose_path, haproxy_path, prom_path, shutdown, haproxy_minor = sys.argv[1:6]
shutdown = float(shutdown)
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

compose = yaml.safe_load(open(compose_path))
prom = yaml.safe_load(open(prom_path))
services = compose.get("services") or {}

def image(s):
    return str(s.get("image", ""))

pg_names = [n for n, s in services.items() if image(s).startswith("postgres:")]
check(len(pg_names) == 1, f"want one PostgreSQL service (image postgres:...), found {pg_names}")
pg_env = services[pg_names[0]].get("environment") or {} if pg_names else {}
pg_name = pg_names[0] if pg_names else None
if pg_name:
    check(services[pg_name].get("healthcheck"), "the PostgreSQL service has no healthcheck")

ns_names = sorted(n for n, s in services.items()
                  if isinstance(s.get("build"), dict)
                  and s["build"].get("dockerfile") == "docker/Dockerfile")
check(len(ns_names) >= 2, f"want several nodestate services building docker/Dockerfile, found {ns_names}")
data_volumes = []
for n in ns_names:
    s = services[n]
    check(s["build"].get("context") == "..", f"{n}: the build context is not .. (the repository root)")
    check(not s.get("ports"), f"{n}: publishes a port; clients must go through HAProxy")
    vols = [str(v) for v in s.get("volumes", []) if str(v).split(":")[1:2] == ["/data"]]
    check(len(vols) == 1, f"{n}: no volume of its own on /data (its spill sidecar)")
    data_volumes += [v.split(":")[0] for v in vols]
    grace = str(s.get("stop_grace_period", "10s"))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", grace)
    check(m and float(m.group(1)) > shutdown,
          f"{n}: stop_grace_period {grace} is not longer than NODESTATE_SHUTDOWN_TIMEOUT={shutdown:g}")
    env = s.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    db = str(env.get("NODESTATE_DB", ""))
    u = urllib.parse.urlparse(db)
    check(u.scheme in ("postgresql", "postgres"), f"{n}: NODESTATE_DB is '{db}', not a postgresql:// URI")
    if pg_name and u.scheme:
        check(u.hostname == pg_name, f"{n}: NODESTATE_DB names host {u.hostname}, not the service {pg_name}")
        check(u.username == pg_env.get("POSTGRES_USER") and u.password == pg_env.get("POSTGRES_PASSWORD")
              and u.path.lstrip("/") == pg_env.get("POSTGRES_DB"),
              f"{n}: NODESTATE_DB's user, password or database differ from {pg_name}'s POSTGRES_* settings")
        dep = s.get("depends_on") or {}
        check(pg_name in dep and (not isinstance(dep, dict)
                                  or dep[pg_name].get("condition") == "service_healthy"),
              f"{n}: does not wait for {pg_name} to be healthy")
check(len(set(data_volumes)) == len(data_volumes), f"nodestate services share a /data volume: {data_volumes}")

# HAProxy: its image, its config mounted, the port published, and the config
# itself routing by run to exactly the nodestate services.
hp_names = [n for n, s in services.items() if image(s).startswith("haproxy:")]
check(len(hp_names) == 1, f"want one HAProxy service, found {hp_names}")
if hp_names:
    hp = services[hp_names[0]]
    tag = image(hp).split(":", 1)[1]
    check(tag == haproxy_minor or tag.startswith(haproxy_minor + ".") or tag.startswith(haproxy_minor + "-"),
          f"HAProxy image {image(hp)} is not the {haproxy_minor} release that haproxy -c checked the config with")
    check("./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in [str(v) for v in hp.get("volumes", [])],
          "./haproxy.cfg is not mounted at /usr/local/etc/haproxy/haproxy.cfg")
    check(any(str(p).endswith(":8080") for p in hp.get("ports", [])), "HAProxy's port 8080 is not published")
    check(set(ns_names) <= set(hp.get("depends_on") or {}), "HAProxy does not depend on every nodestate service")

cfg = [l.split("#", 1)[0].strip() for l in open(haproxy_path)]
cfg = [re.sub(r"\s+", " ", l) for l in cfg if l]
for want in ("balance uri depth 2", "hash-type consistent", "option httpchk GET /readyz",
             "http-check expect status 200", "bind :8080"):
    check(want in cfg, f"haproxy.cfg lacks '{want}'")
servers = {}
for l in cfg:
    w = l.split(" ")
    if w[0] == "server":
        servers[w[1]] = w[2]
        check("check" in w[3:], f"haproxy.cfg: server {w[1]} has no health check")
check(sorted(servers.values()) == sorted(f"{n}:8080" for n in ns_names),
      f"haproxy.cfg servers {sorted(servers.values())} are not the nodestate services {ns_names} on 8080")

prom_names = [n for n, s in services.items() if "prometheus" in image(s)]
check(len(prom_names) == 1, f"want one Prometheus service, found {prom_names}")
if prom_names:
    p = services[prom_names[0]]
    conf = next((a.split("=", 1)[1] for a in p.get("command", []) if a.startswith("--config.file=")), None)
    check(conf and "./prometheus.scale.yml:" + conf + ":ro" in [str(v) for v in p.get("volumes", [])],
          f"./prometheus.scale.yml is not mounted at the --config.file ({conf})")
targets = [t for j in prom.get("scrape_configs") or [] if j.get("metrics_path") == "/stats"
           for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
check(sorted(targets) == sorted(f"{n}:8080" for n in ns_names),
      f"prometheus.scale.yml scrapes {targets}, not each nodestate service on 8080")

for e in errors:
    print("check_docker: compose.scale:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
    fail "docker/compose.scale.yaml, haproxy.cfg or prometheus.scale.yml (see above)"
note "scale-out set ok: haproxy -c (HAProxy $haproxy_minor) accepts haproxy.cfg, promtool accepts prometheus.scale.yml, compose.scale.yaml agrees with both and the Dockerfile"

note "PASS"
