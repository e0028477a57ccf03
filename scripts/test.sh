#!/usr/bin/env bash
# Builds everything and runs the test suite in four passes:
#   release     build/       every test (Release, the build scripts/run.sh uses),
#                            the _pg variants (label pg) included, against a
#                            throwaway PostgreSQL cluster (scripts/pg.sh)
#   sanitizers  build-asan/  every test under AddressSanitizer and
#                            UndefinedBehaviorSanitizer
#   thread      build-tsan/  the unit and integration tests under
#                            ThreadSanitizer (the nodestate binary they start
#                            too), plus one check that no process, test
#                            program or server, made a TSan report
#   fuzz        build-fuzz/  each libFuzzer target briefly (scripts/fuzz.sh,
#                            FUZZ_SECONDS per target, default 5)
# Exits non-zero when any build, test or fuzz target fails. The last two lines
# are fuzz.sh's summary and "N passed, M failed" over all passes (a fuzz
# target counts as one test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh --test

total_passed=0
total_failed=0
failures=0
# Extra ctest arguments of the next run_pass.
ctest_args=()

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
  (cd "$dir" && ctest --output-on-failure "${ctest_args[@]}") 2>&1 | tee "$log" || rc=$?

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

# One PostgreSQL cluster for the release pass, removed at the end whatever
# happens; the other passes leave the pg label out to keep CI time.
pg_dir=$(mktemp -d /tmp/nodestate-pg.XXXXXX)
trap 'bash scripts/pg.sh stop "$pg_dir"' EXIT
if NODESTATE_TEST_PG=$(bash scripts/pg.sh start "$pg_dir"); then
  export NODESTATE_TEST_PG
else
  echo "== release: cannot start PostgreSQL; the _pg tests will be skipped" >&2
  failures=$((failures + 1))
  total_failed=$((total_failed + 1))
fi
run_pass "release" build -DCMAKE_BUILD_TYPE=Release
unset NODESTATE_TEST_PG
bash scripts/pg.sh stop "$pg_dir"
ctest_args=(-LE '^pg$')

# detect_leaks also reaches the nodestate binary the integration tests start,
# since it inherits the environment.
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_pass "sanitizers" build-asan -DNODESTATE_SANITIZE=address

# ThreadSanitizer writes every report (of a test program, or of a server an
# integration test started) to a file under build-tsan/tsan-reports/, so none
# hides in a server log that no test reads, nor in a Criterion test process
# (which ends with _Exit(0), so a report there does not fail the test).
# Tool checks (check_*.sh) are left to the passes above: they test what
# outside tools see, not threads.
tsan_reports="$PWD/build-tsan/tsan-reports"
rm -rf "$tsan_reports"
mkdir -p "$tsan_reports"
export TSAN_OPTIONS="log_path=$tsan_reports/report second_deadlock_stack=1"
ctest_args=(-E '^check_' -LE '^pg$')
tsan_start=$SECONDS
run_pass "thread" build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNODESTATE_SANITIZE=thread
ctest_args=()
# "No TSan report" is one more test of the pass.
reports=("$tsan_reports"/report*)
if [[ -e "${reports[0]}" ]]; then
  echo "== thread: ThreadSanitizer reports from ${#reports[@]} process(es):" >&2
  cat "${reports[@]}" >&2
  failures=$((failures + 1))
  total_failed=$((total_failed + 1))
else
  total_passed=$((total_passed + 1))
fi
echo "== thread: $((SECONDS - tsan_start)) s"

echo "== fuzz: scripts/fuzz.sh ${FUZZ_SECONDS:-5}"
fuzz_log=$(mktemp)
fuzz_rc=0
bash scripts/fuzz.sh "${FUZZ_SECONDS:-5}" 2>&1 | tee "$fuzz_log" || fuzz_rc=$?
fuzz_line=$(grep -E '^fuzz: [0-9]+ targets, [0-9]+ runs, [0-9]+ crashes$' "$fuzz_log" | tail -n 1 || true)
rm -f "$fuzz_log"
if [[ -n "$fuzz_line" ]]; then
  fuzz_targets=$(sed -E 's/^fuzz: ([0-9]+) targets.*/\1/' <<<"$fuzz_line")
  fuzz_crashes=$(sed -E 's/.* ([0-9]+) crashes$/\1/' <<<"$fuzz_line")
  total_passed=$((total_passed + fuzz_targets - fuzz_crashes))
  total_failed=$((total_failed + fuzz_crashes))
else
  fuzz_line="fuzz: did not run (build failed?)"
  total_failed=$((total_failed + 1))
fi
if ((fuzz_rc != 0)); then
  echo "== fuzz: FAILED" >&2
  failures=$((failures + 1))
fi

echo "$fuzz_line"
echo "$total_passed passed, $total_failed failed"
if ((failures > 0)); then
  exit 1
fi
