#!/bin/sh
# run-fuzz.sh SECONDS FUZZER... — run each libFuzzer target for SECONDS,
# one at a time; report; fail if any found a crash, leak, hang or broken
# promise. (`make test` runs it once per target, as jobs of
# scripts/run-tests.sh beside the rest of the suite; `make fuzz` once for
# all.)
#
# A target build/fuzz/fuzz_NAME starts from its seeds, tests/fuzz/corpus/NAME/
# (read, never written), and from build/fuzz/corpus/NAME/, where libFuzzer
# keeps the inputs it found new coverage with, so that the next run goes on
# from there (make clean forgets them). tests/fuzz/NAME.dict, if there, is
# its dictionary. A failing input is written to build/fuzz/artifacts/NAME/
# and its path printed with the command that replays it.
#
# Environment: FUZZ_TIMEOUT (seconds one input may take: a hang, or a
# quadratic walk, past it fails; default 10), FUZZ_RUNS (stop after this
# many inputs, default unlimited), FUZZ_MAX_LEN (longest input tried;
# default libFuzzer's, 4096 or the largest seed), FUZZ_ARGS (more
# libFuzzer flags, e.g. -jobs=2), FERRY_FUZZ_PENDING=5,11 or =all (also
# check the promises whose fixes are pending; tests/fuzz/fuzz.h).
set -u
[ $# -ge 2 ] || { echo "usage: $0 SECONDS FUZZER..." >&2; exit 2; }
secs=$1
shift

# As scripts/run-tests.sh, but libFuzzer reports the crash: no abort_on_error.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0}"

failed=""
passed=0
for bin in "$@"; do
    target=$(basename "$bin")
    name=${target#fuzz_}
    seeds=tests/fuzz/corpus/$name
    work=build/fuzz/corpus/$name
    artifacts=build/fuzz/artifacts/$name/
    log=build/fuzz/logs/$name.log
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    [ -d "$seeds" ] || { echo "FAIL  $target: no seed corpus $seeds"; failed="$failed $target"; continue; }
    set -- -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" \
        -runs="${FUZZ_RUNS:--1}" -artifact_prefix="$artifacts" -print_final_stats=1
    [ -n "${FUZZ_MAX_LEN:-}" ] && set -- "$@" -max_len="$FUZZ_MAX_LEN"
    [ -f "tests/fuzz/$name.dict" ] && set -- "$@" -dict="tests/fuzz/$name.dict"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$bin" "$@" ${FUZZ_ARGS:-} "$work" "$seeds" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS  $target (${took}s, ${runs:-?} inputs)"
    else
        failed="$failed $target"
        echo "FAIL  $target (exit $rc, ${took}s): the end of $log:"
        tail -n 60 "$log" | sed 's/^/    /'
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        if [ -n "$input" ]; then
            echo "    reproducer: $input"
            echo "    replay:     $bin $input"
        fi
    fi
done
echo "---- fuzz: $passed passed, $(echo $failed | wc -w) failed${failed:+:$failed}"
[ -z "$failed" ]
