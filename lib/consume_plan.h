/*
 * consume_plan.h — how the consumer applies a gathered batch, as a pure
 * decision (lib/consume.c is the shell; tests/test_consume_sim.c the
 * seeded simulator).
 *
 * A batch is messages 0 .. n-1 in the order Kafka gave them. The planner
 * says what to try next — a run of them in one transaction, some one by
 * one, or the one that failed its batch alone — and, once the shell has
 * said how that went, which offsets may now be stored. It does no I/O and
 * keeps no clock: what it decides depends on what it was told and nothing
 * else, so a simulator can drive it through thousands of failures and
 * replay any of them from a seed.
 *
 * The rules it keeps (DESIGN's consumer invariants, README "Batches"):
 *   - offsets are stored only for messages the shell reported done (their
 *     transaction committed, or they were dead-lettered in one), and only
 *     as a prefix of the batch: never past a message that is not done;
 *   - messages are tried in Kafka order: none after a message before that
 *     message is done, so a key's messages are applied in their order;
 *   - a failure isolates its message: the ones before it are tried again
 *     as a batch, the failing one alone, then the rest; a failure that
 *     names no message sends the run one by one. Each failure takes at
 *     least one message out of the batches, so a run of r costs at most
 *     2r transactions besides the lone tries' own retries;
 *   - a known-poison message is never put in a batch;
 *   - a message that is not done ends the plan: the shell redelivers from
 *     there (consume.c, redeliver_rest).
 *
 * Private to libferry.
 */
#ifndef FERRY_CONSUME_PLAN_H
#define FERRY_CONSUME_PLAN_H

#include <stdbool.h>

/* What to try next. */
typedef enum cplan_do {
    CPLAN_BATCH,        /* [from, to) in one transaction */
    CPLAN_ONE_BY_ONE,   /* [from, to) each alone, in order, until one is not done */
    CPLAN_FAILED_ALONE, /* from, which failed its batch, alone */
    CPLAN_END,          /* nothing more: [0, from) are done, [from, n) are not */
} cplan_do;

typedef struct cplan_step {
    cplan_do what;
    int from, to;
    bool first;         /* CPLAN_BATCH: a run's first try (not the re-try of
                           the messages before a failure) */
} cplan_step;

/* What became of the last step, as the shell saw it. */
typedef struct cplan_result {
    bool ok;            /* BATCH: committed; FAILED_ALONE: done */
    int failed_at;      /* BATCH not ok: the failing message, from `from`; -1:
                           none in particular (COMMIT, the connection) */
    int done;           /* ONE_BY_ONE: how many, from `from`, are done */
} cplan_result;

enum cplan_phase { CPLAN_P_START, CPLAN_P_RUN, CPLAN_P_BEFORE, CPLAN_P_ALONE,
                   CPLAN_P_ONE, CPLAN_P_END };

/* The deliberately broken planners the simulator must catch: compiled in
 * only with -DFERRY_CPLAN_TEST (tests/test_consume_sim.c's build). */
typedef enum cplan_broken {
    CPLAN_OK = 0,
    CPLAN_BROKEN_ACK_FAILED,    /* a failed batch's offsets are stored too */
    CPLAN_BROKEN_WHOLE_AGAIN,   /* a failed batch is tried again whole */
    CPLAN_BROKEN_SKIP_FAILED,   /* the one that failed its batch is passed
                                   over, its offset stored */
    CPLAN_BROKEN_POISON_BATCHED,/* known poison goes in batches like the rest */
    CPLAN_BROKEN_COUNT
} cplan_broken;

typedef struct cplan {
    int n;
    const bool *poison;         /* n flags, borrowed: known poison, never batched */
    int next;                   /* the first message not done */
    int acked;                  /* offsets told stored: [0, acked) */
    int run_end;                /* the poison-free run being tried: [next, run_end) */
    int failed;                 /* the message that failed its batch, or -1 */
    enum cplan_phase phase;
    cplan_step last;            /* the step the next result is about */
    cplan_broken broken;
} cplan;

/* A plan for messages 0 .. n-1 (n >= 0); poison: n flags, read until the
 * plan ends. */
void ferry__cplan_init(cplan *p, int n, const bool *poison);

/*
 * The next step. result: how the step returned last went (NULL for the
 * first call); stop: a stop was asked for (no new step starts). Out:
 * *ack_to, the offsets of [0, *ack_to) may be stored now (those of
 * [old acked, *ack_to) were not told before). Once it returns CPLAN_END,
 * it keeps returning it.
 */
cplan_step ferry__cplan_next(cplan *p, const cplan_result *result, bool stop, int *ack_to);

#ifdef FERRY_CPLAN_TEST
void ferry__cplan_set_broken(cplan *p, cplan_broken b);
#endif

#endif
