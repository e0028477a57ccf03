#!/usr/bin/env bash
# Builds the nodestate binary (Release, in build/) and runs it in the
# foreground with the given arguments; without any it serves the defaults
# (127.0.0.1:8080, ./nodestate.db). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh
bash scripts/build.sh
exec build/nodestate "$@"
