#!/usr/bin/env bash
# Builds everything and runs the whole test suite twice: once in build/
# (Release, the same build scripts/run.sh uses) and once in build-asan/ under
# AddressSanitizer and UndefinedBehaviorSanitizer. Exits non-zero when any
# build or test fails; the last line sums both ctest runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh --test

total_passed=0
total_failed=0
failures=0

# run_pass NAME BUILD_DIR CMAKE_ARGS...: configure, build, ctest. A failing
# step is counted, not fatal, so the other pass still runs and reports.
run_pass() {
  local name=$1 dir=$2
  shift 2
  local log="$dir/ctest.log"

  echo "== $name: configure and build in $dir/"
  if ! cmake -S . -B "$dir" "$@" >/dev/null || ! cmake --build "$dir" -j2; then
    echo "== $name: build FAILED" >&2
    failures=$((failures + 1))
    total_failed=$((total_failed + 1))
    return 0
  fi

  echo "== $name: ctest"
  local rc=0
  (cd "$dir" && ctest --output-on-failure) 2>&1 | tee "$log" || rc=$?

  # ctest's summary: "95% tests passed, 1 tests failed out of 20".
  local summary total failed
  summary=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [[ -n "$summary" ]]; then
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$summary")
    total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$summary")
    total_passed=$((total_passed + total - failed))
    total_failed=$((total_failed + failed))
  elif ((rc == 0)); then
    # "No tests were found": nothing ran, nothing failed.
    :
  else
    total_failed=$((total_failed + 1))
  fi
  if ((rc != 0)); then
    echo "== $name: ctest FAILED" >&2
    failures=$((failures + 1))
  fi
}

run_pass "release" build -DCMAKE_BUILD_TYPE=Release

# detect_leaks also reaches the nodestate binary the integration tests start,
# since it inherits the environment.
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_pass "sanitizers" build-asan -DNODESTATE_SANITIZE=ON

echo "$total_passed passed, $total_failed failed"
if ((failures > 0)); then
  exit 1
fi
