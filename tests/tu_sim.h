/*
 * tu_sim.h — which seeds a seeded simulator (test_relay_sim.c,
 * test_saga_sim.c) runs, from the environment, and how fast it ran them.
 * Header-only: tests/saga_sim_broken.sh links test_saga_sim.c with
 * nothing but libferry.
 *
 *   FERRY_SIM_SEED=N   that seed alone (to replay a failure)
 *   FERRY_SIM_SEEDS=N  how many seeds (default: the simulator's)
 *   FERRY_SIM_FIRST=N  from which seed (default 0)
 *   FERRY_SIM_TRACE=1  print the trace
 */
#ifndef FERRY_TU_SIM_H
#define FERRY_TU_SIM_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef struct tu_sim_seeds {
    uint64_t first, last;       /* the seeds [first, last) */
    uint64_t count;             /* FERRY_SIM_SEEDS, or the default */
    int one;                    /* FERRY_SIM_SEED was given */
    int tracing;
} tu_sim_seeds;

static inline uint64_t tu_sim_env(const char *name, uint64_t dflt, int *set)
{
    const char *v = getenv(name);
    if (set != NULL)
        *set = v != NULL && v[0] != '\0';
    if (v == NULL || v[0] == '\0')
        return dflt;
    return strtoull(v, NULL, 10);
}

static inline tu_sim_seeds tu_sim_seeds_from_env(uint64_t default_count)
{
    tu_sim_seeds s = {0};
    uint64_t only = tu_sim_env("FERRY_SIM_SEED", 0, &s.one);
    s.count = tu_sim_env("FERRY_SIM_SEEDS", default_count, NULL);
    uint64_t from = tu_sim_env("FERRY_SIM_FIRST", 0, NULL);
    s.tracing = tu_sim_env("FERRY_SIM_TRACE", 0, NULL) != 0;
    s.first = s.one ? only : from;
    s.last = s.one ? only + 1 : from + s.count;
    return s;
}

/* Run seeds [first, last) by run(seed, tracing), which is 0 when every
 * check held; at the first that is not, its seed in *failed and 1. */
static inline int tu_sim_run_seeds(uint64_t first, uint64_t last, int tracing,
                                   int (*run)(uint64_t seed, int tracing), uint64_t *failed)
{
    for (uint64_t seed = first; seed < last; seed++)
        if (run(seed, tracing)) {
            *failed = seed;
            return 1;
        }
    return 0;
}

/* Seeds a second since t0 (CLOCK_MONOTONIC), for the report only: the
 * simulations themselves have no clock. */
static inline double tu_sim_rate(const struct timespec *t0, uint64_t seeds)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
    return secs > 0 ? (double)seeds / secs : 0.0;
}

#endif
