#!/usr/bin/env bash
# Installs the Debian packages nodestate needs to build, test and benchmark,
# and only those that are missing: safe to run any number of times.
# Needs root (or sudo) when something is missing; Debian 12 (bookworm).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libmicrohttpd-dev libsqlite3-dev libjansson-dev
  libcurl4-openssl-dev libcriterion-dev
  sqlite3 wrk curl ca-certificates
)

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
