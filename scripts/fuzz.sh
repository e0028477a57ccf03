#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang into
# build-fuzz/ and runs each one for SECONDS (default 10) on a copy of its seed
# corpus (tests/fuzz/corpus/<name>/, with tests/fuzz/dict/<name>.dict when
# there is one), so the repository's corpus is never written. The last line
# is "fuzz: N targets, M runs, C crashes" (M: executions, from libFuzzer's
# final stats); exits non-zero when a target crashed, leaked or hung, and
# keeps the input that did it under build-fuzz/fuzz-crashes/<name>/.
#   bash scripts/fuzz.sh            10 s per target
#   bash scripts/fuzz.sh 600        ten minutes per target
#   FUZZ_TARGETS="codec router" bash scripts/fuzz.sh 60   only those
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-10}
if [[ ! "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: scripts/fuzz.sh [SECONDS] (whole seconds per target, >= 1)" >&2
  exit 2
fi

bash scripts/deps.sh --fuzz

build=build-fuzz
echo "== fuzz: configure and build in $build/"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNODESTATE_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j2 --target fuzzers

targets=()
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    targets+=("${name#fuzz_}")
  done
fi

# A crash aborts at once (UBSan included); leaks are reported per input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

total_runs=0
crashes=0
work="$build/fuzz-work"
for name in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$name"
  if [[ ! -x "$bin" ]]; then
    echo "== fuzz $name: no such target ($bin)" >&2
    crashes=$((crashes + 1))
    continue
  fi
  corpus="$work/$name/corpus"
  artifacts="$build/fuzz-crashes/$name"
  log="$work/$name/fuzz.log"
  rm -rf "$work/$name"
  mkdir -p "$corpus" "$artifacts"
  if [[ -d "tests/fuzz/corpus/$name" ]]; then
    cp -R "tests/fuzz/corpus/$name/." "$corpus/"
  fi
  args=(-max_total_time="$seconds" -timeout=30 -print_final_stats=1
        -artifact_prefix="$artifacts/")
  if [[ -f "tests/fuzz/dict/$name.dict" ]]; then
    args+=(-dict="tests/fuzz/dict/$name.dict")
  fi

  echo "== fuzz $name: ${seconds}s"
  rc=0
  # No stdin: an input naming a file to read (--token-file) cannot block on it.
  "$bin" "${args[@]}" "$corpus" </dev/null >"$log" 2>&1 || rc=$?

  # The final stats give the executions; a crash ends before them, so then
  # the last progress line ("#1234 NEW ...") is the count.
  runs=$(sed -nE 's/^stat::number_of_executed_units: ([0-9]+).*/\1/p' "$log" | tail -n 1)
  if [[ -z "$runs" ]]; then
    runs=$(sed -nE 's/^#([0-9]+)[[:space:]].*/\1/p' "$log" | tail -n 1)
  fi
  runs=${runs:-0}
  total_runs=$((total_runs + runs))
  if ((rc != 0)); then
    crashes=$((crashes + 1))
    echo "== fuzz $name: FAILED (exit $rc) after $runs runs; log: $log" >&2
    grep -E '^==[0-9]+==ERROR|SUMMARY|^fuzzkit:|Test unit written to' "$log" >&2 || tail -n 30 "$log" >&2
  else
    echo "== fuzz $name: $runs runs, $(find "$corpus" -type f | wc -l) inputs in the corpus copy"
  fi
done

echo "fuzz: ${#targets[@]} targets, $total_runs runs, $crashes crashes"
if ((crashes > 0)); then
  exit 1
fi
