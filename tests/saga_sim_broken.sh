#!/bin/sh
# saga_sim_broken.sh — prove that the saga simulator catches every
# deliberately broken engine (lib/saga_step.c, -DFERRY_SAGA_BROKEN=N).
#
#   sh tests/saga_sim_broken.sh "CC CFLAGS" LIBFERRY_A "LIBS" [WORKDIR]
#
# e.g. (what the Makefile runs)
#   sh tests/saga_sim_broken.sh "cc -std=c11 ... -fsanitize=address,undefined" \
#       build/asan/libferry.a "-fsanitize=address,undefined $(pkg-config --libs ...)"
#
# For each variant N it compiles lib/saga_step.c with -DFERRY_SAGA_BROKEN=N,
# links it with tests/test_saga_sim.c and a copy of LIBFERRY_A without its
# own saga_step.o, runs the simulator on FERRY_SIM_SEEDS (default 1000)
# seeds and requires it to FAIL, printing the first failing seed and why.
# Exit status: 0 when every variant was caught, 1 otherwise.
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 \"CC CFLAGS\" LIBFERRY_A \"LIBS\" [WORKDIR]" >&2
    exit 2
fi
cc_cmd=$1
lib=$2
libs=$3
work=${4:-build/saga-broken}
seeds=${FERRY_SIM_SEEDS:-1000}

variants=$(sed -n 's/^#define FERRY_SAGA_BROKEN_VARIANTS \([0-9][0-9]*\).*/\1/p' lib/saga_step.c)
if [ -z "$variants" ]; then
    echo "$0: no FERRY_SAGA_BROKEN_VARIANTS in lib/saga_step.c" >&2
    exit 2
fi
mkdir -p "$work" || exit 2

# The test itself does not change between variants: compile it once.
$cc_cmd -c tests/test_saga_sim.c -o "$work/test_saga_sim.o" || exit 2
cp "$lib" "$work/libferry-nosaga.a" && ar d "$work/libferry-nosaga.a" saga_step.o || exit 2

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

missed=""
n=1
while [ "$n" -le "$variants" ]; do
    bin="$work/test_saga_sim_broken$n"
    $cc_cmd -DFERRY_BUILDING -DFERRY_SAGA_BROKEN="$n" -c lib/saga_step.c \
        -o "$work/saga_step_broken$n.o" || exit 2
    # $libs unquoted on purpose: it is a list of flags.
    # shellcheck disable=SC2086
    $cc_cmd -o "$bin" "$work/test_saga_sim.o" "$work/saga_step_broken$n.o" \
        "$work/libferry-nosaga.a" $libs || exit 2
    out=$(FERRY_SIM_SEEDS=$seeds FERRY_TEST_FILTER=simulate "$bin" 2>&1)
    rc=$?
    line=$(printf '%s\n' "$out" | grep -m1 '^saga sim: seed [0-9]* FAILED')
    if [ $rc -ne 0 ] && [ -n "$line" ]; then
        echo "caught  FERRY_SAGA_BROKEN=$n: ${line#saga sim: }"
        echo "        replay: FERRY_SIM_SEED=$(echo "$line" | sed 's/^saga sim: seed \([0-9]*\).*/\1/') FERRY_SIM_TRACE=1 $bin"
    else
        echo "MISSED  FERRY_SAGA_BROKEN=$n: no failure in $seeds seeds (exit $rc)"
        missed="$missed $n"
    fi
    n=$((n + 1))
done
if [ -n "$missed" ]; then
    echo "---- the simulator missed broken variant(s):$missed"
    exit 1
fi
echo "---- all $variants broken variants caught within $seeds seeds"
