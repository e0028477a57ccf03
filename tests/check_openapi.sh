#!/usr/bin/env bash
# The OpenAPI contract: openapi.yaml must pass `redocly lint` with no errors,
# and the real server must answer every path, method and status it lists
# exactly as it says (tests/contract/contract.test.mjs).
#
# Environment (ctest sets them): NODESTATE_BIN, the binary under test;
# NODESTATE_SOURCE_DIR, the source tree (default: this script's parent).
# Needs node >= 18.19 and npm (bash scripts/deps.sh --test); the npm packages
# pinned in tests/contract/package-lock.json are installed into
# tests/contract/node_modules by `npm ci` when missing or stale.
set -euo pipefail

src=${NODESTATE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
contract=$src/tests/contract
: "${NODESTATE_BIN:?NODESTATE_BIN must point at the nodestate binary}"

if [[ ! -x "$NODESTATE_BIN" ]]; then
  echo "check_openapi: NODESTATE_BIN=$NODESTATE_BIN is not an executable" >&2
  exit 1
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check_openapi: $tool not found; run: bash scripts/deps.sh --test" >&2
    exit 1
  fi
done
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 18 || (a === 18 && b >= 19) ? 0 : 1)'; then
  echo "check_openapi: node $(node --version) is too old; need >= 18.19" >&2
  exit 1
fi

# Redocly would otherwise phone home (usage telemetry, update check).
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export NO_UPDATE_NOTIFIER=1 npm_config_update_notifier=false

# npm ci only when node_modules is missing or was installed from another
# lock file: the stamp records the hash of the lock file it came from.
stamp=$contract/node_modules/.nodestate-lock-sha256
want=$(sha256sum "$contract/package-lock.json" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "check_openapi: npm ci in $contract" >&2
  (cd "$contract" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

echo "== redocly lint openapi.yaml"
# --no: use the locally installed CLI, never download one.
(cd "$contract" && npx --no -- redocly lint "$src/openapi.yaml")

echo "== contract test against $NODESTATE_BIN"
NODESTATE_SOURCE_DIR=$src node "$contract/contract.test.mjs"
