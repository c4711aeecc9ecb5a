/*
 * test_wal_sim.c — a seeded simulator for the WAL source's confirm
 * decision (daemon/relay_wal_track.c): a server that streams transactions
 * from the slot's confirmed position, a broker whose partitions
 * acknowledge in order but at their own pace and sometimes fail, feedback
 * that gets through now and then, and relay crashes and restarts. After
 * every step the confirmed position must be covered: every message of
 * every transaction at or before it acknowledged by Kafka. At the end,
 * with failures over, everything is delivered and confirmed.
 *
 * Each deliberately broken decision (wal_track_broken) must be caught
 * within a few hundred seeds; the correct one must pass them all. A
 * failing seed is printed, and FERRY_WAL_SIM_SEED=N replays it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "../daemon/relay_wal.h"

enum { TXS = 60, MSGS_MAX = 4, PARTS = 3, QCAP = TXS * MSGS_MAX, CAP = 8 };

typedef struct sim_msg {
    int tx, i;
    uint64_t ticket;
} sim_msg;

typedef struct sim {
    uint64_t rng;
    wal_track_broken broken;
    /* the stream */
    int nmsg[TXS];
    uint64_t end[TXS];
    int delivered[TXS][MSGS_MAX];
    /* the server */
    uint64_t slot;              /* confirmed_flush of the slot */
    int next_tx, next_msg;      /* where the server is in the stream */
    int began;                  /* BEGIN of next_tx sent */
    /* the broker */
    sim_msg q[PARTS][QCAP];
    int qhead[PARTS], qlen[PARTS];
    int failures_on;
    /* the relay */
    wal_track *t;
    uint64_t reported;          /* last feedback that reached the server */
    char why[256];
} sim;

static uint64_t next_rand(sim *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return s->rng;
}

static int chance(sim *s, int percent)
{
    return (int)(next_rand(s) % 100) < percent;
}

static void new_relay(sim *s)
{
    wal_track_free(s->t);
    s->t = wal_track_new(CAP);
    wal_track_set_broken(s->t, s->broken);
    /* The server resends from the slot's position. */
    for (int i = 0; i < TXS; i++) {
        if (s->end[i] > s->slot) {
            s->next_tx = i;
            break;
        }
        s->next_tx = TXS;
    }
    s->next_msg = 0;
    s->began = 0;
}

/* The producer goes with the relay: per partition, a prefix of what it
 * held may have reached the broker (gapless), the rest is lost. */
static void lose_producer(sim *s)
{
    for (int p = 0; p < PARTS; p++) {
        int keep = s->qlen[p] ? (int)(next_rand(s) % (unsigned)(s->qlen[p] + 1)) : 0;
        for (int k = 0; k < keep; k++) {
            sim_msg *m = &s->q[p][(s->qhead[p] + k) % QCAP];
            s->delivered[m->tx][m->i] = 1;
        }
        s->qhead[p] = s->qlen[p] = 0;
    }
}

/* Every transaction at or before the slot's position fully delivered. */
static int covered(sim *s)
{
    for (int i = 0; i < TXS && s->end[i] <= s->slot; i++)
        for (int j = 0; j < s->nmsg[i]; j++)
            if (!s->delivered[i][j]) {
                snprintf(s->why, sizeof s->why, "slot confirmed at %llu, past transaction %d "
                         "(end %llu) whose message %d Kafka never acknowledged",
                         (unsigned long long)s->slot, i, (unsigned long long)s->end[i], j);
                return 0;
            }
    return 1;
}

static void receive(sim *s)
{
    if (s->next_tx >= TXS || wal_track_full(s->t))
        return;
    int i = s->next_tx;
    if (!s->began) {
        if (wal_track_begin(s->t) != 0)
            return;
        s->began = 1;
        s->next_msg = 0;
        return;
    }
    if (s->next_msg < s->nmsg[i]) {
        uint64_t ticket = wal_track_message(s->t);
        int p = (int)(next_rand(s) % PARTS);
        sim_msg *m = &s->q[p][(s->qhead[p] + s->qlen[p]) % QCAP];
        *m = (sim_msg){.tx = i, .i = s->next_msg, .ticket = ticket};
        s->qlen[p]++;
        s->next_msg++;
        return;
    }
    wal_track_commit(s->t, s->end[i]);
    s->began = 0;
    s->next_tx++;
}

static void deliver(sim *s)
{
    int p = (int)(next_rand(s) % PARTS);
    if (s->qlen[p] == 0)
        return;
    sim_msg m = s->q[p][s->qhead[p]];
    s->qhead[p] = (s->qhead[p] + 1) % QCAP;
    s->qlen[p]--;
    int ok = !(s->failures_on && chance(s, 5));
    if (ok)
        s->delivered[m.tx][m.i] = 1;
    wal_track_report(s->t, m.ticket, ok);
}

static void feedback(sim *s)
{
    uint64_t c = wal_track_confirmable(s->t);
    if (c > s->slot)
        s->slot = c;
}

/* A keepalive: the server has sent everything before its position, which
 * lies between the last COMMIT it sent and the next one's end. */
static void keepalive(sim *s)
{
    if (s->began)
        return;
    uint64_t lo = s->next_tx > 0 ? s->end[s->next_tx - 1] : 1;
    uint64_t hi = s->next_tx < TXS ? s->end[s->next_tx] - 1 : lo + 10;
    if (lo > hi)
        return;
    wal_track_idle(s->t, lo + next_rand(s) % (hi - lo + 1));
}

/* Runs one seed; 0 when every check held, -1 with s->why otherwise. */
static int run_seed(uint64_t seed, wal_track_broken broken, char *why, size_t whylen)
{
    sim *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->rng = seed * 2654435761u + 1;
    s->broken = broken;
    uint64_t lsn = 100;
    for (int i = 0; i < TXS; i++) {
        s->nmsg[i] = (int)(next_rand(s) % (MSGS_MAX + 1));
        lsn += 10 + next_rand(s) % 50;
        s->end[i] = lsn;
    }
    s->failures_on = 1;
    new_relay(s);
    int rc = 0;
    for (int step = 0; step < 20000; step++) {
        if (step == 10000)
            s->failures_on = 0;
        int r = (int)(next_rand(s) % 100);
        if (r < 40)
            receive(s);
        else if (r < 80)
            deliver(s);
        else if (r < 92)
            feedback(s);
        else if (r < 97)
            keepalive(s);
        else if (r < 98 || wal_track_failed(s->t)) {
            /* A crash (kill -9), or the restart a failure calls for. */
            lose_producer(s);
            new_relay(s);
        }
        /* The slot moves only on feedback: checked there (and a crash
         * cannot undo a delivery). */
        if (r >= 80 && r < 92 && !covered(s)) {
            rc = -1;
            break;
        }
        if (step > 10000 && s->next_tx == TXS && !s->began && wal_track_inflight(s->t) == 0) {
            feedback(s);
            if (!covered(s)) {
                rc = -1;
                break;
            }
            if (s->slot < s->end[TXS - 1]) {
                snprintf(s->why, sizeof s->why, "everything delivered but the slot stays at "
                         "%llu, not %llu", (unsigned long long)s->slot,
                         (unsigned long long)s->end[TXS - 1]);
                rc = -1;
            }
            break;
        }
    }
    if (rc == 0 && s->slot < s->end[TXS - 1]) {
        snprintf(s->why, sizeof s->why, "did not finish: slot at %llu of %llu",
                 (unsigned long long)s->slot, (unsigned long long)s->end[TXS - 1]);
        rc = -1;
    }
    snprintf(why, whylen, "%s", s->why);
    wal_track_free(s->t);
    free(s);
    return rc;
}

static void the_confirm_decision_never_passes_an_unacknowledged_message(void **state)
{
    /* FERRY_SIM_SEEDS, as the relay's and the saga's simulators take it:
     * how many seeds (2,000 in the suite; ten times that before a change
     * to the track's decisions lands). */
    const char *only = getenv("FERRY_WAL_SIM_SEED");
    const char *n = getenv("FERRY_SIM_SEEDS");
    uint64_t seeds = n != NULL && strtoull(n, NULL, 10) > 0 ? strtoull(n, NULL, 10) : 2000;
    uint64_t from = only ? strtoull(only, NULL, 10) : 1, to = only ? from : seeds;
    char why[256];
    for (uint64_t seed = from; seed <= to; seed++)
        if (run_seed(seed, WAL_TRACK_CORRECT, why, sizeof why) != 0)
            fail_msg("seed %llu: %s", (unsigned long long)seed, why);
}

static void each_broken_decision_is_caught(void **state)
{
    static const struct {
        wal_track_broken b;
        const char *name;
    } broken[] = {
        {WAL_TRACK_CONFIRM_ON_WRITE, "confirm on write"},
        {WAL_TRACK_SKIP_FAILED, "a failure counts as done"},
        {WAL_TRACK_ANY_ORDER, "confirm a later transaction past an earlier one"},
    };
    for (size_t b = 0; b < sizeof broken / sizeof broken[0]; b++) {
        char why[256];
        uint64_t seed;
        for (seed = 1; seed <= 300; seed++)
            if (run_seed(seed, broken[b].b, why, sizeof why) != 0)
                break;
        if (seed > 300)
            fail_msg("the simulator did not catch \"%s\" in 300 seeds", broken[b].name);
        printf("caught \"%s\" at seed %llu: %s\n", broken[b].name, (unsigned long long)seed,
               why);
    }
}

/* The unit cases the simulator leans on. */
static void a_track_confirms_the_acknowledged_prefix_only(void **state)
{
    wal_track *t = wal_track_new(4);
    assert_non_null(t);
    assert_int_equal(wal_track_message(t), 0);          /* no BEGIN */
    assert_int_equal(wal_track_begin(t), 0);
    assert_int_equal(wal_track_begin(t), -1);           /* nested */
    uint64_t a = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 100), 0);
    assert_int_equal(wal_track_begin(t), 0);
    uint64_t b = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 90), -1);      /* backwards */
    assert_int_equal(wal_track_commit(t, 200), 0);
    assert_int_equal(wal_track_confirmable(t), 0);
    wal_track_report(t, b, 1);                          /* the later one first */
    assert_int_equal(wal_track_confirmable(t), 0);
    wal_track_idle(t, 500);                             /* not while pending */
    assert_int_equal(wal_track_confirmable(t), 0);
    wal_track_report(t, a, 1);
    wal_track_report(t, a, 1);                          /* a repeat changes nothing */
    assert_int_equal(wal_track_confirmable(t), 200);
    assert_int_equal(wal_track_inflight(t), 0);
    wal_track_idle(t, 300);                             /* quiet: advances */
    assert_int_equal(wal_track_confirmable(t), 300);
    /* A failure holds everything after it until a reset. */
    assert_int_equal(wal_track_begin(t), 0);
    uint64_t c = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 400), 0);
    wal_track_report(t, c, 0);
    assert_true(wal_track_failed(t));
    assert_int_equal(wal_track_confirmable(t), 300);
    wal_track_reset(t);
    wal_track_report(t, c, 1);                          /* from before the reset */
    assert_false(wal_track_failed(t));
    assert_int_equal(wal_track_confirmable(t), 300);
    wal_track_free(t);
    wal_track_free(NULL);
}

/*
 * PostgreSQL keeps a slot's confirmed position on disk only at
 * checkpoints: after a crash (pg_ctl restart -m immediate) it resends
 * from the last checkpointed position, before what the relay confirmed.
 * The restarted stream's COMMITs then end before the last one the track
 * saw; refused as "backwards", each restart failed at once, with backoff
 * up to 30 s (test_wal_outage.c's postgres_restarted_mid_stream found 656
 * of 800 messages after 90 s). After a reset they are accepted, and the
 * confirmed position never goes back.
 */
static void after_a_reset_the_stream_may_resend_from_before_the_confirmed_position(void **state)
{
    wal_track *t = wal_track_new(4);
    assert_int_equal(wal_track_begin(t), 0);
    uint64_t a = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 500), 0);
    wal_track_report(t, a, 1);
    assert_int_equal(wal_track_confirmable(t), 500);
    wal_track_reset(t);                                 /* the server crashed */
    assert_int_equal(wal_track_begin(t), 0);            /* resent from 300 */
    uint64_t b = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 400), 0);      /* before 500: accepted */
    wal_track_report(t, b, 1);
    assert_int_equal(wal_track_confirmable(t), 500);    /* never backwards */
    assert_int_equal(wal_track_begin(t), 0);
    uint64_t c = wal_track_message(t);
    assert_int_equal(wal_track_commit(t, 450), 0);
    assert_int_equal(wal_track_commit(t, 460), -1);     /* none open */
    assert_int_equal(wal_track_begin(t), 0);
    assert_int_equal(wal_track_commit(t, 440), -1);     /* backwards within a stream */
    wal_track_report(t, c, 1);
    assert_int_equal(wal_track_confirmable(t), 500);
    wal_track_free(t);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_track_confirms_the_acknowledged_prefix_only),
        cmocka_unit_test(after_a_reset_the_stream_may_resend_from_before_the_confirmed_position),
        cmocka_unit_test(the_confirm_decision_never_passes_an_unacknowledged_message),
        cmocka_unit_test(each_broken_decision_is_caught),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
