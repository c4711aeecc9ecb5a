/*
 * test_order.c — messages of one (topic, key) are positioned in the order
 * their transactions committed, with no gap a high-water-mark reader could
 * skip. Commit order is witnessed independently by PostgreSQL's commit
 * timestamps (track_commit_timestamp = on).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "tu_order.h"

static const char *const order_conf[] = {"track_commit_timestamp = on", NULL};

/* For every key, ordering its rows by position must order them by commit
 * timestamp too (equal within one transaction). Returns violations. */
static long long commit_order_violations(PGconn *c)
{
    return tu_int(c, "SELECT count(*) FROM (SELECT pg_xact_commit_timestamp(xmin) ts, "
                     "lag(pg_xact_commit_timestamp(xmin)) OVER (PARTITION BY topic, "
                     "aggregateid ORDER BY seq) prev FROM ferry.outbox) s "
                     "WHERE ts IS NULL OR ts < prev");
}

/*
 * N transactions begin and write in order 1..N, then commit in the reverse
 * order, each emitting just before its COMMIT (the usual shape: update,
 * emit, commit). Anything fixed at the start or at the first write — a
 * sequence, the transaction id, created_at = now() — would order them
 * 1..N; their commits say N..1, and so must the positions.
 */
static void reverse_commit_order(void **state)
{
    enum { N = 5 };
    PGconn *admin = tu_connect();
    PGconn *c[N];
    tu_reverse_commits(admin, c, N);
    /* Position p belongs to transaction N - p: commit order. */
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox "
                                   "WHERE (payload->>'tx')::int <> 5 - seq"), 0);
    assert_int_equal(commit_order_violations(admin), 0);
    /* The witness: the start-time order is the exact reverse. */
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM (SELECT created_at, lag(created_at) "
                                   "OVER (ORDER BY seq) prev FROM ferry.outbox) s "
                                   "WHERE created_at >= prev"), 0);
    tu_reverse_commits_done(admin, c, N);
    PQfinish(admin);
}

/* ------------------------------------------------------------------ */

typedef struct blocked_emit {
    PGconn *conn;
    const char *payload;
    ferry_code rc;
    ferry_error err;
} blocked_emit;

static void *emit_thread(void *arg)
{
    blocked_emit *b = arg;
    ferry_msg m = {.topic = "ledger", .key = "acct-9", .type = "Posted", .payload = b->payload};
    b->rc = ferry_emit(b->conn, &m, NULL, NULL, &b->err);
    return NULL;
}

/*
 * Both transactions emit while both are open: A inserts first, B second.
 * B cannot overtake: its emit waits on A's key lock (proved by the server
 * showing B waiting on a lock held by A) until A ends. If A commits, B is
 * position 2; if A rolls back, B is position 1 and no hole is left behind
 * for a reader to wait on or skip.
 */
static void second_emitter_waits(bool a_commits)
{
    PGconn *admin = tu_connect();
    PGconn *a = tu_connect();
    blocked_emit b = {.conn = tu_connect(), .payload = "{\"tx\": \"B\"}"};
    tu_exec(a, "BEGIN");
    tu_emit_ledger(a, "acct-9", "{\"tx\": \"A\"}");
    tu_exec(b.conn, "BEGIN");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, emit_thread, &b), 0);
    char *sql = tu_sprintf("SELECT %d = ANY (pg_blocking_pids(%d))", PQbackendPID(a),
                           PQbackendPID(b.conn));
    tu_await(admin, sql, 20000);
    free(sql);
    tu_exec(a, a_commits ? "COMMIT" : "ROLLBACK");
    pthread_join(th, NULL);
    assert_ferry_ok(b.rc, b.err);
    tu_exec(b.conn, "COMMIT");

    if (a_commits) {
        assert_int_equal(tu_int(admin, "SELECT seq FROM ferry.outbox WHERE payload->>'tx' = 'A'"),
                         1);
        assert_int_equal(tu_int(admin, "SELECT seq FROM ferry.outbox WHERE payload->>'tx' = 'B'"),
                         2);
    } else {
        assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox"), 1);
        assert_int_equal(tu_int(admin, "SELECT seq FROM ferry.outbox WHERE payload->>'tx' = 'B'"),
                         1);
    }
    assert_int_equal(commit_order_violations(admin), 0);
    PQfinish(b.conn);
    PQfinish(a);
    PQfinish(admin);
}

static void second_emitter_waits_for_commit(void **state) { second_emitter_waits(true); }
static void second_emitter_after_rollback(void **state) { second_emitter_waits(false); }

/* ------------------------------------------------------------------ */

enum { STRESS_WRITERS = 6, STRESS_TXNS = 40 };

typedef struct stress {
    atomic_int writers_left;
    atomic_long snapshots;
    atomic_long gaps;
} stress;

typedef struct stress_writer {
    stress *s;
    int n;
    ferry_code rc;
    ferry_error err;
} stress_writer;

typedef struct stress_tx {
    stress_writer *w;
    int t;
    unsigned seed;
} stress_tx;

static ferry_code stress_fn(PGconn *conn, void *arg, ferry_error *err)
{
    stress_tx *x = arg;
    char payload[64];
    int count = 1 + rand_r(&x->seed) % 2;
    for (int i = 0; i < count; i++) {
        snprintf(payload, sizeof payload, "{\"w\": %d, \"t\": %d, \"i\": %d}", x->w->n, x->t, i);
        ferry_msg m = {.topic = "ledger", .key = rand_r(&x->seed) % 2 ? "hot-a" : "hot-b",
                       .type = "Posted", .payload = payload};
        ferry_code rc = ferry_emit(conn, &m, NULL, NULL, err);
        if (rc != FERRY_OK)
            return rc;
    }
    /* Hold the transaction open a little, so commits interleave with other
     * writers' emits. Workload shape, not synchronisation. */
    struct timespec think = {0, (long)(rand_r(&x->seed) % 1500) * 1000};
    nanosleep(&think, NULL);
    return FERRY_OK;
}

static void *stress_writer_main(void *arg)
{
    stress_writer *w = arg;
    PGconn *c = fpg_connect(tu_pg);
    unsigned seed = 7919u * (unsigned)(w->n + 1);
    for (int t = 0; t < STRESS_TXNS && c != NULL && w->rc == FERRY_OK; t++) {
        stress_tx x = {w, t, seed + (unsigned)t};
        w->rc = ferry_tx_run(c, NULL, stress_fn, &x, NULL, &w->err);
    }
    if (c == NULL)
        w->rc = FERRY_ECONN;
    PQfinish(c);
    atomic_fetch_sub(&w->s->writers_left, 1);
    return NULL;
}

/* A reader that remembers nothing but "the highest position I have seen"
 * must never find a later snapshot holding a hole below it: every snapshot
 * holds positions 1..n of each key. */
static void *stress_reader_main(void *arg)
{
    stress *s = arg;
    PGconn *c = fpg_connect(tu_pg);
    while (c != NULL && atomic_load(&s->writers_left) > 0) {
        PGresult *res = PQexec(c, "SELECT count(*) FROM (SELECT aggregateid, count(*) n, "
                                  "max(seq) m FROM ferry.outbox GROUP BY aggregateid) s "
                                  "WHERE n <> m");
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            atomic_fetch_add(&s->snapshots, 1);
            atomic_fetch_add(&s->gaps, atol(PQgetvalue(res, 0, 0)));
        }
        PQclear(res);
    }
    PQfinish(c);
    return NULL;
}

static void concurrent_same_key_commit_order(void **state)
{
    stress s = {.writers_left = STRESS_WRITERS};
    stress_writer w[STRESS_WRITERS];
    pthread_t th[STRESS_WRITERS], reader;
    assert_int_equal(pthread_create(&reader, NULL, stress_reader_main, &s), 0);
    for (int i = 0; i < STRESS_WRITERS; i++) {
        w[i] = (stress_writer){.s = &s, .n = i};
        assert_int_equal(pthread_create(&th[i], NULL, stress_writer_main, &w[i]), 0);
    }
    for (int i = 0; i < STRESS_WRITERS; i++) {
        pthread_join(th[i], NULL);
        assert_ferry_ok(w[i].rc, w[i].err);
    }
    pthread_join(reader, NULL);

    PGconn *c = tu_connect();
    assert_true(atomic_load(&s.snapshots) > 0);
    assert_int_equal(atomic_load(&s.gaps), 0);
    assert_int_equal(commit_order_violations(c), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT aggregateid, count(*) n, "
                               "max(seq) m FROM ferry.outbox GROUP BY aggregateid) s "
                               "WHERE n <> m"), 0);
    /* Both hot keys really were contended by several writers. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT aggregateid FROM ferry.outbox "
                               "GROUP BY aggregateid HAVING count(DISTINCT payload->'w') = 6) s"),
                     2);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */

typedef struct rr_case {
    PGconn *other;
    const char *key;
    int calls;
} rr_case;

/* Under REPEATABLE READ, a transaction whose snapshot predates another's
 * committed emit on the same key cannot take the next position from a
 * stale view: PostgreSQL refuses with a serialization failure, and the
 * transaction helper runs it again. */
static ferry_code rr_fn(PGconn *conn, void *arg, ferry_error *err)
{
    rr_case *x = arg;
    x->calls++;
    PGresult *res = PQexec(conn, "SELECT count(*) FROM ferry.outbox");   /* the snapshot */
    PQclear(res);
    if (x->calls == 1) {
        tu_exec(x->other, "BEGIN");
        tu_emit_ledger(x->other, x->key, "{\"by\": \"other\"}");
        tu_exec(x->other, "COMMIT");
    }
    ferry_msg m = {.topic = "ledger", .key = x->key, .type = "Posted", .payload = "{\"by\": \"rr\"}"};
    return ferry_emit(conn, &m, NULL, NULL, err);
}

static void repeatable_read_conflict_retried(const char *key, bool key_exists)
{
    PGconn *c = tu_connect();
    rr_case x = {.other = tu_connect(), .key = key};
    if (key_exists) {
        tu_exec(c, "BEGIN");
        tu_emit_ledger(c, key, "{\"by\": \"setup\"}");
        tu_exec(c, "COMMIT");
    }
    ferry_tx_opts opts = {.isolation = FERRY_REPEATABLE_READ};
    ferry_tx_report rep;
    ferry_error err;
    assert_ferry_ok(ferry_tx_run(c, &opts, rr_fn, &x, &rep, &err), err);
    assert_int_equal(rep.retries_conflict, 1);
    assert_int_equal(rep.attempts, 2);
    char *sql = tu_sprintf("SELECT string_agg(payload->>'by', ',' ORDER BY seq) "
                           "FROM ferry.outbox WHERE aggregateid = '%s'", key);
    char *order = tu_str(c, sql);
    assert_string_equal(order, key_exists ? "setup,other,rr" : "other,rr");
    free(order);
    free(sql);
    PQfinish(x.other);
    PQfinish(c);
}

static void repeatable_read_existing_key(void **state)
{
    repeatable_read_conflict_retried("rr-old", true);
}

static void repeatable_read_new_key(void **state)
{
    repeatable_read_conflict_retried("rr-new", false);
}

int main(void)
{
    tu_conf = order_conf;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(reverse_commit_order, tu_clean_outbox),
        cmocka_unit_test_setup(second_emitter_waits_for_commit, tu_clean_outbox),
        cmocka_unit_test_setup(second_emitter_after_rollback, tu_clean_outbox),
        cmocka_unit_test_setup(concurrent_same_key_commit_order, tu_clean_outbox),
        cmocka_unit_test_setup(repeatable_read_existing_key, tu_clean_outbox),
        cmocka_unit_test_setup(repeatable_read_new_key, tu_clean_outbox),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
