#!/usr/bin/env bash
# Builds the nodestate binary, Release, as build/nodestate. scripts/run.sh
# and the image's build stage (docker/Dockerfile) both run exactly this, so
# the binary a user runs and the one in the image are built the same way.
# Expects the packages of scripts/deps.sh to be installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The same build directory and build type as scripts/test.sh, so running both
# configures once and compiles each file once.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target nodestate -j2
