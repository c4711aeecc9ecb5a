#!/bin/sh
# run-tests.sh TEST... — run each test binary, report, fail if any failed.
# Tests start their own throwaway PostgreSQL (tests/harness/pgtmp.c), so
# they run one at a time: two cores, and every cluster wants one.
set -u
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# libpq, jansson and glibc keep a few process-lifetime allocations.
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0}"

failed=""
passed=0
for t in "$@"; do
    name=$(basename "$t")
    start=$(date +%s)
    if [ -n "${FERRY_VALGRIND:-}" ]; then
        valgrind --quiet --error-exitcode=99 --leak-check=full \
            --errors-for-leak-kinds=definite --trace-children=no "$t"
    else
        "$t"
    fi
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS  $name (${secs}s)"
    else
        failed="$failed $name"
        echo "FAIL  $name (exit $rc, ${secs}s)"
    fi
done
echo "---- $passed passed, $(echo $failed | wc -w) failed${failed:+:$failed}"
[ -z "$failed" ]
