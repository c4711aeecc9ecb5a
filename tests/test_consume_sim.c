/*
 * test_consume_sim.c — the consumer's batch planner (lib/consume_plan.c)
 * driven through failures by a seeded, deterministic simulator.
 *
 * Each seed makes a batch of 1 to 40 messages over a few keys and
 * partitions, gives each message a fate — it applies; it is poison from
 * the start (the intake found it so); its handler fails a few times, or
 * every time (dead-lettered after max_attempts), or asks to run alone (it
 * fails in any batch); the database fails under it when it is tried alone
 * (the shell then gives up on the batch) — and lets whole batches fail at
 * COMMIT now and then, and a stop be asked for. A shell that keeps the
 * contract of lib/consume.c's apply_batch() carries out what the planner
 * says, and after every step the simulator checks:
 *
 *   - offsets told stored cover only messages that are done (applied, or
 *     dead-lettered, in a transaction that committed);
 *   - no message is done twice, and each key's messages are done in their
 *     Kafka order;
 *   - known poison never goes into a batch;
 *   - the plan ends within 3n + 2 steps, and at its end the messages
 *     before where it ended are done and told stored, those after are not;
 *   - without a database failure or a stop, every message is done.
 *
 * A failing seed prints itself; FERRY_SIM_SEED=N FERRY_SIM_TRACE=1 replays
 * it step by step (tests/tu_sim.h). FERRY_SIM_BROKEN=v runs a
 * deliberately broken planner (consume_plan.h, cplan_broken); the test
 * broken_are_caught requires each to fail within 1,000 seeds.
 *
 * Built with lib/consume_plan.c compiled -DFERRY_CPLAN_TEST (the Makefile's
 * rule): the library's own planner has no broken variants.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "../lib/consume_plan.h"
#include "tu_sim.h"

enum {
    SIM_SEEDS_DEFAULT = 20000,
    N_MAX = 40,
    MAX_ATTEMPTS = 3,          /* the consumer's max_attempts here */
};

typedef enum fate {
    F_OK,           /* applies */
    F_POISON,       /* poison from the intake: dead-lettered alone */
    F_FAIL_SOME,    /* its handler fails `fails` times, then applies */
    F_FAIL_ALWAYS,  /* its handler always fails: dead-lettered */
    F_ALONE,        /* its handler asks to run alone: fails in any batch */
    F_SYSTEM,       /* tried alone, the database fails under it `fails` times */
} fate;

static const char *const fate_name[] = {"ok", "poison", "fail-some", "fail-always",
                                        "alone", "system"};

typedef struct msg {
    fate fate;
    int key, partition;
    int fails;          /* F_FAIL_SOME, F_SYSTEM: failures left */
    int failed_tries;   /* handler failures counted so far */
    int done;           /* applied or dead-lettered, committed */
    int dead;           /* ... dead-lettered */
} msg;

/* The world of one seed. */
static struct {
    uint64_t rng;
    int n;
    msg m[N_MAX];
    bool poison[N_MAX];
    int broken;
    int tracing;
    int stop;
    char why[512];
    /* probes: did each kind of event happen? */
    uint64_t pr_batch_fail_at, pr_batch_fail_none, pr_alone, pr_poison, pr_dead,
        pr_system, pr_stop, pr_retry_ok;
} W;

static uint64_t next_rand(void)
{
    /* splitmix64 */
    uint64_t z = (W.rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int rnd(int n) { return (int)(next_rand() % (uint64_t)n); }
static int chance(int percent) { return rnd(100) < percent; }

static void trace(const char *fmt, ...)
{
    if (!W.tracing)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(W.why, sizeof W.why, fmt, ap);
    va_end(ap);
    return 1;
}

/* Message i's transaction committed: it is done (dead: dead-lettered). */
static int mark_done(int i, int dead)
{
    msg *x = &W.m[i];
    if (x->done)
        return bad("message %d done twice", i);
    for (int j = 0; j < i; j++)
        if (W.m[j].key == x->key && !W.m[j].done)
            return bad("message %d of key %d done before message %d of its key", i, x->key, j);
    x->done = 1;
    x->dead = dead;
    W.pr_dead += (uint64_t)dead;
    trace("    %d %s\n", i, dead ? "dead-lettered" : "applied");
    return 0;
}

/* A batch [from, to) in one transaction: the index (from `from`) of the
 * message that fails it, -1 for a failure of no message in particular,
 * or -2 when it commits. A handler failure in a batch counts as a try,
 * as batch_tx counts it. */
static int batch_fails_at(int from, int to)
{
    for (int i = from; i < to; i++) {
        msg *x = &W.m[i];
        switch (x->fate) {
        case F_FAIL_SOME:
            if (x->fails > 0) {
                x->fails--;
                x->failed_tries++;
                return i - from;
            }
            break;
        case F_FAIL_ALWAYS:
            x->failed_tries++;
            return i - from;
        case F_ALONE:
            W.pr_alone++;
            return i - from;
        default:
            break;
        }
    }
    return chance(10) ? -1 : -2;
}

/* Message i alone, as process() takes it: 1 when done (applied or
 * dead-lettered), 0 when not (the database failed under it, or a stop
 * came during a backoff). */
static int process(int i, int *err)
{
    msg *x = &W.m[i];
    *err = 0;
    switch (x->fate) {
    case F_POISON:
        W.pr_poison++;
        *err = mark_done(i, 1);
        return 1;
    case F_SYSTEM:
        if (x->fails > 0) {
            x->fails--;
            W.pr_system++;
            trace("    %d: the database failed (given up for this poll)\n", i);
            return 0;
        }
        *err = mark_done(i, 0);
        return 1;
    case F_FAIL_SOME:
    case F_FAIL_ALWAYS:
        for (;;) {
            if (x->fate == F_FAIL_SOME && x->fails == 0) {
                W.pr_retry_ok++;
                *err = mark_done(i, 0);
                return 1;
            }
            if (x->fate == F_FAIL_SOME)
                x->fails--;
            if (++x->failed_tries >= MAX_ATTEMPTS) {
                *err = mark_done(i, 1);
                return 1;
            }
            if (chance(3)) {        /* a stop during the backoff */
                W.stop = 1;
                W.pr_stop++;
                trace("    %d: stopped while backing off\n", i);
                return 0;
            }
        }
    default:
        *err = mark_done(i, 0);
        return 1;
    }
}

static const char *const do_name[] = {"batch", "one-by-one", "failed-alone", "end"};

/* One seed: 0 when every check held, else 1 with W.why. */
static int run_seed(uint64_t seed, int tracing)
{
    memset(&W.m, 0, sizeof W.m);
    W.rng = seed;
    W.tracing = tracing;
    W.stop = 0;
    W.why[0] = '\0';
    int n = W.n = 1 + rnd(N_MAX);
    int keys = 1 + rnd(6), parts = 1 + rnd(3);
    int p_poison = rnd(12), p_fail = rnd(25), p_system = rnd(6);
    for (int i = 0; i < n; i++) {
        msg *x = &W.m[i];
        x->key = rnd(keys);
        x->partition = x->key % parts;
        int r = rnd(100);
        if (r < p_poison)
            x->fate = F_POISON;
        else if ((r -= p_poison) < p_fail)
            x->fate = (fate)(F_FAIL_SOME + rnd(3));
        else if ((r -= p_fail) < p_system)
            x->fate = F_SYSTEM;
        else
            x->fate = F_OK;
        if (x->fate == F_FAIL_SOME)
            x->fails = 1 + rnd(MAX_ATTEMPTS + 1);   /* some reach max_attempts */
        if (x->fate == F_SYSTEM)
            x->fails = 1 + rnd(2);
        W.poison[i] = x->fate == F_POISON;
    }
    trace("seed %" PRIu64 ": %d messages, %d keys, %d partitions\n", seed, n, keys, parts);
    for (int i = 0; i < n; i++)
        trace("  %2d key %d part %d %s%s\n", i, W.m[i].key, W.m[i].partition,
              fate_name[W.m[i].fate], W.m[i].fails ? " (fails)" : "");

    cplan p;
    ferry__cplan_init(&p, n, W.poison);
    ferry__cplan_set_broken(&p, (cplan_broken)W.broken);
    cplan_result r = {0};
    const cplan_result *told = NULL;
    int stored = 0, systemed = 0;
    for (int steps = 0;; steps++) {
        if (steps > 3 * n + 2)
            return bad("no end after %d steps (a batch of %d)", steps, n);
        if (!W.stop && chance(2)) {
            W.stop = 1;
            W.pr_stop++;
            trace("  stop asked\n");
        }
        int ack_to;
        cplan_step s = ferry__cplan_next(&p, told, W.stop != 0, &ack_to);
        trace("  -> %s [%d, %d)%s, offsets told stored to %d\n", do_name[s.what], s.from,
              s.to, s.first ? " (first)" : "", ack_to);
        if (ack_to < stored)
            return bad("offsets told stored went back from %d to %d", stored, ack_to);
        for (int i = stored; i < ack_to; i++)
            if (i >= n || !W.m[i].done)
                return bad("offset of message %d told stored, but it is not done", i);
        stored = ack_to;
        r = (cplan_result){.failed_at = -1};
        told = &r;
        if (s.what != CPLAN_END && (s.from < 0 || s.to > n || s.from >= s.to))
            return bad("a step over [%d, %d) of a batch of %d", s.from, s.to, n);
        switch (s.what) {
        case CPLAN_BATCH: {
            for (int i = s.from; i < s.to; i++)
                if (W.poison[i])
                    return bad("poison message %d put in a batch [%d, %d)", i, s.from, s.to);
            int at = batch_fails_at(s.from, s.to);
            if (at == -2) {
                for (int i = s.from; i < s.to; i++)
                    if (mark_done(i, 0))
                        return 1;
                r.ok = true;
            } else {
                r.failed_at = at;
                if (at >= 0)
                    W.pr_batch_fail_at++;
                else
                    W.pr_batch_fail_none++;
                trace("    rolled back at %d\n", at < 0 ? at : s.from + at);
            }
            break;
        }
        case CPLAN_ONE_BY_ONE:
        case CPLAN_FAILED_ALONE: {
            int done = 0, err = 0;
            for (int i = s.from; i < s.to; i++) {
                if (!process(i, &err)) {
                    systemed = 1;
                    break;
                }
                if (err)
                    return 1;
                done++;
            }
            r.done = done;
            r.ok = done == s.to - s.from;
            break;
        }
        case CPLAN_END:
        default: {
            if (s.from < 0 || s.from > n)
                return bad("ended at %d of a batch of %d", s.from, n);
            for (int i = 0; i < n; i++)
                if ((i < s.from) != (W.m[i].done != 0))
                    return bad("ended at %d, but message %d is %sdone", s.from, i,
                               W.m[i].done ? "" : "not ");
            if (stored != s.from)
                return bad("ended at %d with offsets told stored to %d", s.from, stored);
            if (!systemed && !W.stop && s.from != n)
                return bad("ended at %d of %d with no failure and no stop", s.from, n);
            trace("  end at %d\n", s.from);
            return 0;
        }
        }
    }
}

static const char *prog = "test_consume_sim";

static int run_seeds(uint64_t first, uint64_t last, int tracing, uint64_t *failed)
{
    return tu_sim_run_seeds(first, last, tracing, run_seed, failed);
}

static void simulate(void **state)
{
    (void)state;
    const char *b = getenv("FERRY_SIM_BROKEN");
    W.broken = b ? atoi(b) : 0;
    tu_sim_seeds range = tu_sim_seeds_from_env(SIM_SEEDS_DEFAULT);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    W.pr_batch_fail_at = W.pr_batch_fail_none = W.pr_alone = W.pr_poison = W.pr_dead = 0;
    W.pr_system = W.pr_stop = W.pr_retry_ok = 0;
    uint64_t seed = 0;
    if (run_seeds(range.first, range.last, range.tracing, &seed)) {
        fprintf(stderr,
                "consume sim: seed %" PRIu64 " FAILED: %s\n"
                "  replay: FERRY_SIM_SEED=%" PRIu64 " FERRY_SIM_TRACE=1%s%s %s\n",
                seed, W.why, seed, W.broken ? " FERRY_SIM_BROKEN=" : "", W.broken ? b : "",
                prog);
        fail_msg("consume simulation failed at seed %" PRIu64, seed);
    }
    fprintf(stderr,
            "consume sim: %" PRIu64 " seeds passed (%" PRIu64 "..%" PRIu64 ", %.0f seeds/s); "
            "probes: batch_failed_at=%" PRIu64 " batch_failed=%" PRIu64 " alone=%" PRIu64
            " poison=%" PRIu64 " dead=%" PRIu64 " system=%" PRIu64 " stop=%" PRIu64
            " retried_ok=%" PRIu64 "\n",
            range.last - range.first, range.first, range.last - 1,
            tu_sim_rate(&t0, range.last - range.first), W.pr_batch_fail_at,
            W.pr_batch_fail_none, W.pr_alone, W.pr_poison, W.pr_dead, W.pr_system, W.pr_stop,
            W.pr_retry_ok);
    if (!range.one && range.count >= 1000) {
        /* Every fault must have fired somewhere, or the simulator is not
         * testing what it claims. */
        assert_true(W.pr_batch_fail_at > 0 && W.pr_batch_fail_none > 0 && W.pr_alone > 0);
        assert_true(W.pr_poison > 0 && W.pr_dead > 0 && W.pr_system > 0 && W.pr_stop > 0);
        assert_true(W.pr_retry_ok > 0);
    }
}

/* The same seed gives the same run. */
static void replay_is_exact(void **state)
{
    (void)state;
    if (getenv("FERRY_SIM_BROKEN") != NULL)
        skip();
    for (uint64_t seed = 0; seed < 200; seed++) {
        assert_int_equal(run_seed(seed, 0), 0);
        msg first[N_MAX];
        memcpy(first, W.m, sizeof first);
        int n = W.n;
        assert_int_equal(run_seed(seed, 0), 0);
        assert_int_equal(W.n, n);
        assert_memory_equal(W.m, first, sizeof first);
    }
}

/* Each deliberately broken planner fails within 1,000 seeds. */
static void broken_are_caught(void **state)
{
    (void)state;
    if (getenv("FERRY_SIM_SEED") != NULL)
        skip();
    for (int v = 1; v < CPLAN_BROKEN_COUNT; v++) {
        W.broken = v;
        uint64_t seed = 0;
        int caught = run_seeds(0, 1000, 0, &seed);
        fprintf(stderr, "consume sim: broken variant %d %s", v,
                caught ? "caught at seed " : "MISSED in 1000 seeds\n");
        if (caught)
            fprintf(stderr, "%" PRIu64 ": %s\n  replay: FERRY_SIM_BROKEN=%d FERRY_SIM_SEED=%"
                    PRIu64 " FERRY_SIM_TRACE=1 %s\n", seed, W.why, v, seed, prog);
        assert_true(caught);
    }
    W.broken = 0;
}

/* ---- decisions one at a time */

static cplan_step next(cplan *p, const cplan_result *r, int *ack)
{
    return ferry__cplan_next(p, r, false, ack);
}

/* A batch that fails at its third message: the two before go again as a
 * batch, the third alone, then the rest; offsets follow each commit. */
static void a_failure_is_isolated_and_offsets_follow_the_commits(void **state)
{
    (void)state;
    bool poison[6] = {0};
    cplan p;
    ferry__cplan_init(&p, 6, poison);
    int ack;
    cplan_step s = next(&p, NULL, &ack);
    assert_int_equal(s.what, CPLAN_BATCH);
    assert_int_equal(s.from, 0);
    assert_int_equal(s.to, 6);
    assert_true(s.first);
    assert_int_equal(ack, 0);
    cplan_result r = {.ok = false, .failed_at = 2};
    s = next(&p, &r, &ack);
    assert_int_equal(ack, 0);               /* nothing committed */
    assert_int_equal(s.what, CPLAN_BATCH);
    assert_int_equal(s.from, 0);
    assert_int_equal(s.to, 2);
    assert_false(s.first);
    r = (cplan_result){.ok = true, .failed_at = -1};
    s = next(&p, &r, &ack);
    assert_int_equal(ack, 2);
    assert_int_equal(s.what, CPLAN_FAILED_ALONE);
    assert_int_equal(s.from, 2);
    r = (cplan_result){.ok = true, .failed_at = -1};
    s = next(&p, &r, &ack);
    assert_int_equal(ack, 3);
    assert_int_equal(s.what, CPLAN_BATCH);
    assert_int_equal(s.from, 3);
    assert_int_equal(s.to, 6);
    r = (cplan_result){.ok = true, .failed_at = -1};
    s = next(&p, &r, &ack);
    assert_int_equal(ack, 6);
    assert_int_equal(s.what, CPLAN_END);
    assert_int_equal(s.from, 6);
}

/* Known poison splits the batch and goes alone; a failure of no message
 * in particular sends the run one by one; a message not done ends it. */
static void poison_goes_alone_and_a_failure_ends_the_plan(void **state)
{
    (void)state;
    bool poison[5] = {0, 0, 1, 0, 0};
    cplan p;
    ferry__cplan_init(&p, 5, poison);
    int ack;
    cplan_step s = next(&p, NULL, &ack);
    assert_int_equal(s.what, CPLAN_BATCH);
    assert_int_equal(s.to, 2);
    cplan_result r = {.ok = false, .failed_at = -1};
    s = next(&p, &r, &ack);
    assert_int_equal(s.what, CPLAN_ONE_BY_ONE);
    assert_int_equal(s.from, 0);
    assert_int_equal(s.to, 2);
    r = (cplan_result){.done = 2, .failed_at = -1};
    s = next(&p, &r, &ack);
    assert_int_equal(ack, 2);
    assert_int_equal(s.what, CPLAN_ONE_BY_ONE);     /* the poison, alone */
    assert_int_equal(s.from, 2);
    assert_int_equal(s.to, 3);
    r = (cplan_result){.done = 0, .failed_at = -1};  /* the database failed under it */
    s = next(&p, &r, &ack);
    assert_int_equal(s.what, CPLAN_END);
    assert_int_equal(s.from, 2);
    assert_int_equal(ack, 2);
    s = next(&p, NULL, &ack);
    assert_int_equal(s.what, CPLAN_END);            /* and stays ended */
}

/* A stop ends the plan before the next run, not in the middle of one. */
static void a_stop_ends_the_plan_between_runs(void **state)
{
    (void)state;
    bool poison[4] = {0};
    cplan p;
    ferry__cplan_init(&p, 4, poison);
    int ack;
    cplan_step s = ferry__cplan_next(&p, NULL, false, &ack);
    cplan_result r = {.ok = false, .failed_at = 1};
    s = ferry__cplan_next(&p, &r, true, &ack);
    assert_int_equal(s.what, CPLAN_ONE_BY_ONE);     /* the one before the failure */
    r = (cplan_result){.done = 1, .failed_at = -1};
    s = ferry__cplan_next(&p, &r, true, &ack);
    assert_int_equal(s.what, CPLAN_FAILED_ALONE);   /* then the failing one */
    r = (cplan_result){.ok = true, .failed_at = -1};
    s = ferry__cplan_next(&p, &r, true, &ack);
    assert_int_equal(s.what, CPLAN_END);
    assert_int_equal(s.from, 2);
    assert_int_equal(ack, 2);
}

int main(int argc, char **argv)
{
    prog = argv[0];
    (void)argc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(simulate),
        cmocka_unit_test(replay_is_exact),
        cmocka_unit_test(broken_are_caught),
        cmocka_unit_test(a_failure_is_isolated_and_offsets_follow_the_commits),
        cmocka_unit_test(poison_goes_alone_and_a_failure_ends_the_plan),
        cmocka_unit_test(a_stop_ends_the_plan_between_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
