#!/usr/bin/env bash
# Installs the Debian packages nodestate needs, and only those that are
# missing: safe to run any number of times.
#   bash scripts/deps.sh          what building and running needs
#   bash scripts/deps.sh --fuzz   that plus clang and libFuzzer (scripts/fuzz.sh)
#   bash scripts/deps.sh --test   that plus what the test suite needs (which
#                                 fuzzes too)
# Needs root (or sudo) when something is missing; Debian 12 (bookworm).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libmicrohttpd-dev libsqlite3-dev libjansson-dev libpq-dev
  libcurl4-openssl-dev libcriterion-dev
  sqlite3 curl ca-certificates
)
if [[ "${1:-}" == "--test" || "${1:-}" == "--fuzz" ]]; then
  # clang 14 builds the libFuzzer targets; libclang-rt-14-dev holds libFuzzer
  # and clang's sanitizer runtimes.
  packages+=(clang libclang-rt-14-dev)
fi
if [[ "${1:-}" == "--test" ]]; then
  # wrk drives the benchmarks; promtool (in prometheus) lints /metrics and a
  # real Prometheus scrapes it; node runs the OpenAPI contract test and lint.
  packages+=(wrk prometheus)
  # haproxy routes by run in front of several instances (it_scaleout) and
  # checks docker/haproxy.cfg (check_docker), which also parses the compose
  # files with PyYAML.
  packages+=(haproxy python3-yaml)
  # PostgreSQL 15 runs the throwaway cluster (scripts/pg.sh) of the _pg tests.
  packages+=(postgresql)
  # openssl makes the self-signed certificates of it_tls and the TLS bench;
  # systemd brings systemd-analyze, which check_systemd runs on the unit.
  packages+=(openssl systemd)
  # A machine may carry Node.js from elsewhere (with its own npm); only
  # install Debian's when there is none, since the two conflict.
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for pkg in "${packages[@]}"; do
  # dpkg-query fails for a package it has never heard of; both mean "missing".
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "deps: installing ${missing[*]}" >&2
sudo=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "deps: missing packages and not root (no sudo): ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
