/*
 * test_consume_drain.c — finding held messages that are ready costs the
 * same whatever else is held (issue 12, item 13).
 *
 * The consumer looks for ready held messages with ferry.inbox_ready() on
 * a timer and whenever it has lost track of which keys an apply made
 * ready. The cost is counted, not timed: the shared buffers one call
 * touches (EXPLAIN (ANALYZE, BUFFERS) of the call counts what the
 * function's own queries touch too), for the same ready messages beside a
 * small and a large backlog of held messages that are not ready. Timing
 * figures are bench/bench_consume.c's (consume_held_drain_ratio).
 *
 * Then the flag that makes that possible (ferry.inbox_key.ready, schema
 * 10) is checked against the truth after each way a key can become ready
 * or stop being ready, through the consumer protocol's SQL functions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Held rows of consumer name: ready_keys keys "r<n>" whose position 1 is
 * applied and 2 .. per+1 held (ready), and blocked_keys keys "b<n>" with
 * nothing applied and position 2 held (a gap: not ready). The blocked
 * keys sort before the ready ones, so a reader that walks the held keys
 * in order meets every one of them first. */
static void make_backlog(PGconn *conn, const char *name, int ready_keys, int per,
                         int blocked_keys)
{
    char *sql = tu_sprintf(
        "WITH k AS (INSERT INTO ferry.inbox_key (consumer, topic, key, seq) "
        "  SELECT '%s', 't.held', 'r' || g, 1 FROM generate_series(1, %d) g "
        "  UNION ALL SELECT '%s', 't.held', 'b' || g, 0 FROM generate_series(1, %d) g) "
        "INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, payload, reason) "
        "SELECT '%s', 't.held', 'r' || g, s, gen_random_uuid(), '{}', 'gap' "
        "  FROM generate_series(1, %d) g, generate_series(2, %d + 1) s "
        "UNION ALL "
        "SELECT '%s', 't.held', 'b' || g, 2, gen_random_uuid(), '{}', 'gap' "
        "  FROM generate_series(1, %d) g",
        name, ready_keys, name, blocked_keys, name, ready_keys, per, name, blocked_keys);
    tu_exec(conn, sql);
    free(sql);
    /* Written straight into the tables: the keys' ready flags as the
     * protocol's functions would have left them. */
    sql = tu_sprintf("SELECT count(ferry.inbox_settle_(consumer, topic, key)) "
                     "FROM ferry.inbox_key WHERE consumer = '%s'", name);
    tu_exec(conn, sql);
    free(sql);
}

/* Shared buffers (hit + read) one call of sql touches, and its rows. */
static long buffers_of(PGconn *conn, const char *sql, long *rows)
{
    char *q = tu_sprintf("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) %s", sql);
    char *plan = tu_str(conn, q);
    free(q);
    json_error_t jerr;
    json_t *j = json_loads(plan, 0, &jerr);
    if (j == NULL)
        fail_msg("EXPLAIN gave no JSON: %s", plan);
    json_t *top = json_object_get(json_array_get(j, 0), "Plan");
    long hit = (long)json_integer_value(json_object_get(top, "Shared Hit Blocks"));
    long read = (long)json_integer_value(json_object_get(top, "Shared Read Blocks"));
    *rows = (long)json_integer_value(json_object_get(top, "Actual Rows"));
    assert_non_null(json_object_get(top, "Shared Hit Blocks"));
    json_decref(j);
    free(plan);
    return hit + read;
}

/* The ready messages are found at a cost that does not grow with the
 * held messages that are not ready: 20 ready keys beside none, and beside
 * 5,000 blocked keys. */
static void finding_ready_held_messages_costs_the_same_beside_a_large_backlog(void **state)
{
    PGconn *conn = tu_connect();
    make_backlog(conn, "d-small", 20, 5, 0);
    make_backlog(conn, "d-big", 20, 5, 5000);
    tu_exec(conn, "VACUUM ANALYZE ferry.inbox_held, ferry.inbox_key");
    long rows_small, rows_big;
    /* Twice each: the first call may read the catalog. */
    buffers_of(conn, "SELECT * FROM ferry.inbox_ready('d-small', 100)", &rows_small);
    long small = buffers_of(conn, "SELECT * FROM ferry.inbox_ready('d-small', 100)",
                            &rows_small);
    buffers_of(conn, "SELECT * FROM ferry.inbox_ready('d-big', 100)", &rows_big);
    long big = buffers_of(conn, "SELECT * FROM ferry.inbox_ready('d-big', 100)", &rows_big);
    fprintf(stderr, "inbox_ready: %ld buffers beside 0 blocked keys, %ld beside 5000\n", small,
            big);
    /* The same answer: each ready key's next position, 2. */
    assert_int_equal(rows_small, 20);
    assert_int_equal(rows_big, 20);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_ready('d-big', 100) "
                                  "WHERE key LIKE 'r%' AND seq = 2"), 20);
    /* 5000 blocked keys cost at least one index page each to walk; the
     * margin allows for a deeper index, not for a walk. */
    assert_true(big <= small + small / 2 + 20);
    PQfinish(conn);
}

/* inbox_key.ready must be true for every key with a ready held message
 * (else the consumer would not find it); false ones left behind would
 * make every call look at them again. */
static long ready_wrong(PGconn *conn, const char *name)
{
    char *sql = tu_sprintf(
        "SELECT count(*) FROM ferry.inbox_key k "
        " LEFT JOIN LATERAL (SELECT h.seq FROM ferry.inbox_held h "
        "    WHERE h.consumer = k.consumer AND h.topic = k.topic AND h.key = k.key "
        "      AND h.seq IS NOT NULL ORDER BY h.seq LIMIT 1) f ON true "
        " WHERE k.consumer = '%s' AND k.ready IS DISTINCT FROM coalesce(f.seq <= k.seq OR "
        "   (f.seq = k.seq + 1 AND (k.parked_seq IS NULL OR f.seq < k.parked_seq)), false)",
        name);
    long n = (long)tu_int(conn, sql);
    free(sql);
    return n;
}

static void claim(PGconn *conn, const char *name, const char *key, long seq,
                  const char *want)
{
    char *sql = tu_sprintf("SELECT ferry.inbox_claim('%s', gen_random_uuid(), 't.f', '%s', "
                           "%ld)", name, key, seq);
    tu_assert_str_of(conn, sql, want);
}

static void hold(PGconn *conn, const char *name, const char *key, long seq)
{
    char *sql = tu_sprintf("SELECT ferry.inbox_hold('%s', gen_random_uuid(), 't.f', '%s', %ld, "
                           "'T', '', '{}', '{}', 0, %ld, 'gap')", name, key, seq, seq);
    tu_exec(conn, sql);
    free(sql);
}

/* Each way in and out of "ready", through the protocol's functions: an
 * apply that reaches a held position, a drain (claim + unhold), a dead
 * letter that parks the key, its replay, its discard ahead of a gap, and
 * an operator's skip over a gap. After each, the flag is the truth. */
static void the_ready_flag_follows_every_change_of_a_key(void **state)
{
    PGconn *conn = tu_connect();
    const char *n = "d-flag";
    claim(conn, n, "k", 1, "apply");
    hold(conn, n, "k", 3);
    assert_int_equal(ready_wrong(conn, n), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key "
                                  "WHERE consumer = 'd-flag' AND ready"), 0);
    claim(conn, n, "k", 2, "apply_more");           /* 3 is next, and held */
    assert_int_equal(ready_wrong(conn, n), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key "
                                  "WHERE consumer = 'd-flag' AND ready"), 1);
    /* Drained: 3 claimed and unheld in one transaction. */
    char *id = tu_str(conn, "SELECT message_id FROM ferry.inbox_held WHERE consumer = 'd-flag' "
                            "AND seq = 3");
    tu_exec(conn, "BEGIN");
    char *sql = tu_sprintf("SELECT ferry.inbox_claim('d-flag', '%s', 't.f', 'k', 3)", id);
    tu_assert_str_of(conn, sql, "apply");
    sql = tu_sprintf("SELECT ferry.inbox_unhold('d-flag', '%s')", id);
    tu_exec(conn, sql);
    free(sql);
    tu_exec(conn, "COMMIT");
    free(id);
    assert_int_equal(ready_wrong(conn, n), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key "
                                  "WHERE consumer = 'd-flag' AND ready"), 0);

    /* 4 dead-lettered parks the key; 5 held behind it is not ready. */
    hold(conn, n, "k", 5);
    tu_exec(conn, "SELECT ferry.inbox_dead_letter('d-flag', gen_random_uuid(), 't.f', 'k', 4, "
                  "'T', '', '{}', '{}', 5, 'refused')");
    assert_int_equal(ready_wrong(conn, n), 0);
    long dl = (long)tu_int(conn, "SELECT id FROM ferry.dead_letter WHERE consumer = 'd-flag'");
    /* Replayed: 4 held again, and ready. */
    sql = tu_sprintf("SELECT ferry.replay_dead_letter(%ld)", dl);
    tu_exec(conn, sql);
    free(sql);
    assert_int_equal(ready_wrong(conn, n), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_ready('d-flag', 10)"), 1);

    /* Another key: 1 applied, 3 dead-lettered ahead of a gap and
     * discarded (a marker at 3: still not ready), then the gap skipped. */
    claim(conn, n, "m", 1, "apply");
    tu_exec(conn, "SELECT ferry.inbox_dead_letter('d-flag', gen_random_uuid(), 't.f', 'm', 3, "
                  "'T', '', '{}', '{}', 5, 'refused')");
    dl = (long)tu_int(conn, "SELECT id FROM ferry.dead_letter WHERE consumer = 'd-flag' "
                            "AND aggregateid = 'm'");
    sql = tu_sprintf("SELECT ferry.discard_dead_letter(%ld)", dl);
    tu_exec(conn, sql);
    free(sql);
    assert_int_equal(ready_wrong(conn, n), 0);
    tu_exec(conn, "SELECT ferry.inbox_skip_gap('d-flag', 't.f', 'm')");
    assert_int_equal(ready_wrong(conn, n), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_ready('d-flag', 10)"), 2);
    PQfinish(conn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(finding_ready_held_messages_costs_the_same_beside_a_large_backlog),
        cmocka_unit_test(the_ready_flag_follows_every_change_of_a_key),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
