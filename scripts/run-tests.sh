#!/bin/bash
# run-tests.sh [--job NAME COMMAND]... [--cpu NAME]... TEST...
#
# Run each TEST binary and each extra job (COMMAND, run by bash -c), several
# at a time; print PASS or FAIL as each ends; then the end of every failed
# one's log and a summary. Exit status 0 only if every one passed.
#
# Why in parallel: the tests mostly wait — for their own PostgreSQL, for
# the development broker, for relays they run as processes — and hardly
# use a core. They share nothing: each binary starts its own cluster in its
# own mkdtemp directory, listening on a Unix socket there only
# (tests/harness/pgtmp.c), its own broker on ports the kernel picks
# (kafkatmp.c), metrics servers on port 0, temporary files from mkstemp.
#
# A few jobs do compute (the simulators, the fuzzers): name them with --cpu.
# No more than FERRY_TEST_CPU_JOBS of those run at once, so that on a small
# machine the waiting tests always have a core and their deadlines stay as
# they were written; I/O-bound ones fill the other slots meanwhile.
#
# Order: slowest first, by the durations the last run kept in
# build/test-logs/durations (-valgrind), or on a first run those in
# tests/durations, so that a long test does not start last and keep
# everyone waiting; a job never timed counts as slowest (it is new). With FERRY_TEST_JOBS=1 they run one by one in
# the order given, tests before extra jobs, as they used to.
#
# Each job's stdout and stderr go to build/test-logs/NAME.log (stdin is
# /dev/null). Each runs in a session of its own; on SIGINT or SIGTERM the
# runner stops them all (a test's clusters are torn down by their
# watchdogs, pgtmp.c) and fails.
#
# Environment:
#   FERRY_TEST_JOBS      jobs at once (default 10; 1 under FERRY_VALGRIND,
#                        which makes every test compute)
#   FERRY_TEST_CPU_JOBS  --cpu jobs at once (default: cores - 1, at least 1)
#   FERRY_TEST_TAIL      lines of a failed job's log to print (default 80)
#   FERRY_TEST_TIMEOUT   seconds a job may run before it is stopped and
#                        fails, naming itself and its log (default 1800;
#                        6000 under FERRY_VALGRIND)
#   FERRY_TEST_LOGDIR    where the logs and durations go (build/test-logs)
#   FERRY_VALGRIND=1     run the TEST binaries under valgrind
#   FERRY_PGTMP_TEMPLATE where the tests' clusters copy their data directory
#                        from, made by the first (default build/pg-template;
#                        empty: each runs initdb; tests/harness/pgtmp.c)
#   FERRY_PGTMP_DIR      where the tests' clusters live (default /dev/shm
#                        when it is a tmpfs with 4 GiB free, else TMPDIR)
set -u

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# libpq, jansson and glibc keep a few process-lifetime allocations.
export FERRY_PGTMP_TEMPLATE="${FERRY_PGTMP_TEMPLATE-$(pwd)/build/pg-template}"
# The suite is CPU-bound on 2 cores, and a seventh of that CPU went to ext4
# creating and deleting files (find_inode_bit, recently_deleted: perf over a
# whole make test): every cluster's initdb, every CREATE and TRUNCATE's new
# relation file. On tmpfs initdb took 0.57 s of CPU instead of 1.2 s and a
# copy of its output 0.06 s instead of 0.5 s. The clusters are throwaway
# (fsync is off in them anyway), their data tens of MB each.
if [ -z "${FERRY_PGTMP_DIR+set}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] &&
   [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] &&
   [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -ge 4194304 ] 2>/dev/null; then
    export FERRY_PGTMP_DIR=/dev/shm
fi
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0}"

usage() {
    echo "usage: $0 [--job NAME COMMAND]... [--cpu NAME]... TEST..." >&2
    exit 2
}

if [ -n "${FERRY_VALGRIND:-}" ]; then
    max_jobs=${FERRY_TEST_JOBS:-1}
else
    # 10: the jobs mostly wait (their times added up to six times the
    # test phase at 6), and on 2 shared cores 10 at once took make test
    # on a built tree from 137 s to 118 s, all passing.
    max_jobs=${FERRY_TEST_JOBS:-10}
fi
cores=$(nproc 2>/dev/null || echo 2)
max_cpu=${FERRY_TEST_CPU_JOBS:-$((cores > 1 ? cores - 1 : 1))}
tail_lines=${FERRY_TEST_TAIL:-80}
# A hung binary would otherwise hold the whole run until CI's own limit
# (90 min) kills it without saying which one. Half an hour: test_relay_sim,
# 76 s alone on 2 cores, took 626 to 629 s while five other suites shared
# the same 2 cores (and one run past 600 s), so ten minutes would fail a
# slow but healthy job.
if [ -n "${FERRY_VALGRIND:-}" ]; then
    timeout_secs=${FERRY_TEST_TIMEOUT:-6000}
else
    timeout_secs=${FERRY_TEST_TIMEOUT:-1800}
fi
for v in "$max_jobs" "$max_cpu" "$tail_lines" "$timeout_secs"; do
    case $v in ''|*[!0-9]*|0) echo "$0: FERRY_TEST_JOBS, FERRY_TEST_CPU_JOBS, FERRY_TEST_TAIL and FERRY_TEST_TIMEOUT take a number > 0" >&2; exit 2 ;; esac
done

# Jobs, by index: name, what to run (a path, or a command when kind is cmd).
names=() what=() kind=()
declare -A is_cpu=() seen=()
extra_names=() extra_cmds=()
while [ $# -gt 0 ]; do
    case $1 in
        --job) [ $# -ge 3 ] || usage; extra_names+=("$2"); extra_cmds+=("$3"); shift 3 ;;
        --cpu) [ $# -ge 2 ] || usage; is_cpu[$2]=1; shift 2 ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
add_job() {
    if [ -n "${seen[$1]:-}" ]; then
        echo "$0: two jobs named $1 (their logs would collide)" >&2
        exit 2
    fi
    seen[$1]=1
    names+=("$1"); what+=("$2"); kind+=("$3")
}
for t in "$@"; do add_job "$(basename "$t")" "$t" bin; done
for i in "${!extra_names[@]}"; do add_job "${extra_names[i]}" "${extra_cmds[i]}" cmd; done
[ ${#names[@]} -gt 0 ] || usage

logdir=${FERRY_TEST_LOGDIR:-build/test-logs}
# valgrind times differ from the sanitizers' by far more than their order.
durations=$logdir/durations${FERRY_VALGRIND:+-valgrind}
mkdir -p "$logdir" || exit 2

# The previous run's durations: "NAME SECONDS" lines. A fresh clone (CI
# always is one) has none: tests/durations, measured once on 2 busy cores,
# gives the order instead, so that the longest jobs (test_relay_sim, a
# simulator that computes for minutes) do not start last and hold up the
# end; without it they start in the order given, test_relay_sim among the
# last.
declare -A took_before=()
order_from=$durations
[ -f "$order_from" ] || [ -n "${FERRY_VALGRIND:-}" ] || order_from=tests/durations
if [ -f "$order_from" ]; then
    while read -r n s; do
        case $s in ''|*[!0-9]*) ;; *) took_before[$n]=$s ;; esac
    done <"$order_from"
fi

# The queue: indexes into names[], in the order they should start.
queue=()
if [ "$max_jobs" -eq 1 ]; then
    queue=("${!names[@]}")
else
    # sort -s keeps the given order among equals; never timed sorts first.
    while read -r _ i; do queue+=("$i"); done < <(
        for i in "${!names[@]}"; do
            echo "${took_before[${names[i]}]:-999999} $i"
        done | sort -s -k1,1nr)
fi

declare -A job_of=() started=()   # by pid
running=0 running_cpu=0
passed=0 failed=()
declare -A took=()

start_job() {
    local i=$1 name=${names[$1]} log="$logdir/${names[$1]}.log"
    # setsid: a session, hence a process group, of its own, which
    # stop_all() can signal as a whole (relays, brokers, compilers...).
    # timeout(1) makes that group its own and, past the limit, sends it
    # SIGTERM (the tests' clusters go with their watchdogs, pgtmp.c), then
    # SIGKILL 30 s later; it exits 124 (137 if it had to kill), which
    # the loop below reports as a timeout.
    local limit=(timeout -k 30 "$timeout_secs")
    if [ "${kind[i]}" = cmd ]; then
        setsid "${limit[@]}" bash -c "${what[i]}" >"$log" 2>&1 </dev/null &
    elif [ -n "${FERRY_VALGRIND:-}" ]; then
        setsid "${limit[@]}" valgrind --quiet --error-exitcode=99 --leak-check=full \
            --errors-for-leak-kinds=definite --trace-children=no "${what[i]}" \
            >"$log" 2>&1 </dev/null &
    else
        setsid "${limit[@]}" "${what[i]}" >"$log" 2>&1 </dev/null &
    fi
    job_of[$!]=$i
    started[$!]=$(date +%s)
    running=$((running + 1))
    [ -n "${is_cpu[$name]:-}" ] && running_cpu=$((running_cpu + 1))
}

stop_all() {
    trap '' INT TERM HUP
    echo "---- interrupted: stopping ${#job_of[@]} running job(s)" >&2
    for pid in "${!job_of[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    wait
    exit 130
}
trap stop_all INT TERM HUP

echo "---- ${#names[@]} jobs, up to $max_jobs at once ($max_cpu computing); logs in $logdir/"
declare -A done_or_running=()
while :; do
    # Start what may start: the first jobs in the queue that fit.
    if [ "$running" -lt "$max_jobs" ]; then
        for q in "${queue[@]}"; do
            [ "$running" -lt "$max_jobs" ] || break
            [ -z "${done_or_running[$q]:-}" ] || continue
            if [ -n "${is_cpu[${names[q]}]:-}" ] && [ "$running_cpu" -ge "$max_cpu" ]; then
                continue
            fi
            done_or_running[$q]=1
            start_job "$q"
        done
    fi
    [ "$running" -gt 0 ] || break

    wait -n -p pid
    rc=$?
    [ -n "${pid:-}" ] && [ -n "${job_of[$pid]:-}" ] || continue
    i=${job_of[$pid]}
    name=${names[i]}
    secs=$(( $(date +%s) - ${started[$pid]} ))
    unset "job_of[$pid]" "started[$pid]"
    running=$((running - 1))
    [ -n "${is_cpu[$name]:-}" ] && running_cpu=$((running_cpu - 1))
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        took[$name]=$secs
        echo "PASS  $name (${secs}s)"
    elif [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ "$secs" -ge "$timeout_secs" ]; }; then
        failed+=("$name")
        echo "FAIL  $name (timed out after ${timeout_secs}s, FERRY_TEST_TIMEOUT; log: $logdir/$name.log)"
    else
        failed+=("$name")
        echo "FAIL  $name (exit $rc, ${secs}s)"
    fi
done
trap - INT TERM HUP

# Keep the durations for the next run's order: this run's for what passed
# (a failure may have ended early), the last known for the rest.
for n in "${!took_before[@]}"; do
    [ -n "${took[$n]:-}" ] || took[$n]=${took_before[$n]}
done
for n in "${!took[@]}"; do echo "$n ${took[$n]}"; done | sort >"$durations.tmp" &&
    mv "$durations.tmp" "$durations"

for name in "${failed[@]}"; do
    echo
    echo "==== FAIL $name: the last $tail_lines lines of $logdir/$name.log"
    tail -n "$tail_lines" "$logdir/$name.log"
done
echo "---- $passed passed, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
