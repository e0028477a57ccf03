#!/usr/bin/env bash
# bench_lib.sh: what the bench/ scripts share, sourced, not run.

# bench_machine EXTRA: the machine line a benchmark prints first (time, cores,
# CPU, kernel, load), then EXTRA (what the run does).
bench_machine() {
    echo "machine: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores" \
         "($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))," \
         "Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $1"
}

# bench_wait_addr LOG PID WHO: the HOST:PORT that nodestate (PID, logging to
# LOG, started with --listen 127.0.0.1:0) logged, within 10 s; otherwise its
# log on stderr and exit 1, WHO naming the script.
bench_wait_addr() {
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening.*addr=\([0-9.]*:[0-9]*\).*/\1/p' "$1" | head -n 1)
        [ -n "$addr" ] && break
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "$3: the server did not start listening; its log ($1):" >&2
        cat "$1" >&2
        exit 1
    fi
    echo "$addr"
}
