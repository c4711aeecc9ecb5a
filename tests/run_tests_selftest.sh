#!/bin/bash
# run_tests_selftest.sh — scripts/run-tests.sh stops a job that outlives
# FERRY_TEST_TIMEOUT and fails it, naming the job and its log, while the
# others still pass; the hung job's processes are gone afterwards.
#
# Run from the repository root (make test does). Uses a log directory of
# its own so that the suite's durations stay untouched.
set -u
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT

start=$(date +%s)
out=$(FERRY_TEST_TIMEOUT=2 FERRY_TEST_LOGDIR="$dir/logs" bash scripts/run-tests.sh \
    --job a-hung-job "echo \$\$ >$dir/hung.pid; echo started; exec sleep 300" \
    --job a-quick-job "true" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
echo "$out"

fail() { echo "run_tests_selftest: $*" >&2; exit 1; }
[ $rc -ne 0 ] || fail "the runner passed although a job hung"
case $out in
    *"FAIL  a-hung-job (timed out after 2s, FERRY_TEST_TIMEOUT; log: $dir/logs/a-hung-job.log)"*) ;;
    *) fail "no FAIL line naming the hung job, its timeout and its log" ;;
esac
case $out in *"PASS  a-quick-job"*) ;; *) fail "the quick job did not pass" ;; esac
case $out in *"1 passed, 1 failed: a-hung-job"*) ;; *) fail "wrong summary" ;; esac
grep -qx started "$dir/logs/a-hung-job.log" || fail "the hung job's log lacks its output"
# The fault fired: the job really ran and was stopped, not skipped.
[ -s "$dir/hung.pid" ] || fail "the hung job never started"
pid=$(cat "$dir/hung.pid")
! kill -0 "$pid" 2>/dev/null || fail "the hung job (pid $pid) still runs"
# Far below the 300 s the job would have slept (generous: a loaded machine).
[ "$took" -lt 60 ] || fail "the runner took ${took}s to stop a 2 s job"
echo "run_tests_selftest: ok (${took}s)"
