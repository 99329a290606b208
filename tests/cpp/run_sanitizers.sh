#!/usr/bin/env bash
# Builds the C++ core tests (without Python or CUDA) twice, with AddressSanitizer + UndefinedBehavior
# Sanitizer into build/asan and with ThreadSanitizer into build/tsan, runs both, and exits non-zero if
# either build or run fails. The test suite runs it (tests/test_core_cpp.py, marked slow), one
# sanitizer per test.
#
#   tests/cpp/run_sanitizers.sh            # both, from the repository root (or anywhere)
#   tests/cpp/run_sanitizers.sh tsan       # only the named ones: asan, tsan
#   PYSERVE_TEST_SCALE=0.1 tests/cpp/run_sanitizers.sh   # a smaller concurrency test (default 1)
set -u -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
# TSan slows the scheduler's threads down by 5-15x; the full load (8 producers x 2000 requests against
# 2 instances) still runs in well under a second on two cores, so the scale is only a knob for slow hosts.
export PYSERVE_TEST_SCALE="${PYSERVE_TEST_SCALE:-1}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

status=0

# run_one NAME FLAGS: configure, build and run one sanitizer build.
run_one() {
  local name="$1" flags="$2" dir="$root/build/$1"
  echo "== $name: $flags"
  if ! cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPYSERVE_BUILD_PYTHON=OFF -DPYSERVE_BUILD_TESTS=ON -DPYSERVE_WITH_CUDA=OFF \
      -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >"$dir.configure.log" 2>&1; then
    cat "$dir.configure.log"
    echo "== $name: configure FAILED"
    return 1
  fi
  local start=$SECONDS
  if ! cmake --build "$dir" -j "$jobs" --target pyserve_core_tests >"$dir.build.log" 2>&1; then
    cat "$dir.build.log"
    echo "== $name: build FAILED"
    return 1
  fi
  echo "== $name: built in $((SECONDS - start)) s"
  start=$SECONDS
  if "$dir/pyserve_core_tests" >"$dir.run.log" 2>&1; then
    echo "== $name: $(tail -n 1 "$dir.run.log") in $((SECONDS - start)) s"
  else
    cat "$dir.run.log"
    echo "== $name: FAILED (see above; log in build/$name.run.log)"
    return 1
  fi
}

declare -A flags=(
  [asan]="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  [tsan]="-fsanitize=thread"
)
names=("$@")
[ "${#names[@]}" -eq 0 ] && names=(asan tsan)
for name in "${names[@]}"; do
  if [ -z "${flags[$name]+set}" ]; then
    echo "run_sanitizers.sh: unknown sanitizer build '$name': expected asan or tsan" >&2
    exit 2
  fi
done

mkdir -p "$root/build"
for name in "${names[@]}"; do
  run_one "$name" "${flags[$name]}" || status=1
done

if [ "$status" -eq 0 ]; then echo "sanitizers: all passed"; else echo "sanitizers: FAILED"; fi
exit "$status"
