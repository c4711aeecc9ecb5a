/*
 * test_wal_relay.c — `ferry-relay run --outbox-source wal` against a real
 * PostgreSQL (wal_level = logical, tests/harness/pgtmp.c) and the
 * development broker, every topic read back: what committed is published
 * and nothing rolled back (also to a savepoint); a kill -9 mid-stream
 * loses nothing; a standby takes the slot over when the active relay
 * dies; a forged 'ferry' message is refused; a quiet database's slot
 * advances. The faults — poison, a large transaction killed in its
 * middle, a lost slot — are test_wal_faults.c's.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_http.h"
#include "tu_proc.h"
#include "tu_relay.h"
#include "tu_wal.h"


/* ------------------------------------------------------------------ tests */

/*
 * The operator creates the slot (the relay never does) and turns wal
 * mode on; --once publishes every committed message, in each key's
 * order, with the table source's headers, and nothing rolled back —
 * neither a whole transaction nor the part rolled back to a savepoint.
 * The slot is confirmed past them.
 */
static void once_publishes_committed_messages_only(void **state)
{
    char *out = NULL;
    assert_int_equal(tu_wal_slot_cmd("create", &out, NULL), 0);
    assert_non_null(strstr(out, "created the replication slot \"ferry\""));
    free(out);
    PGconn *c = tu_connect();
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
    tu_wal_emit_n("w.once", 500, 7, 100);
    tu_exec(c, "BEGIN");
    tu_exec(c, "SELECT ferry.emit('w.once', 'rolled-back', 'Tested', '{\"no\": 1}')");
    tu_exec(c, "ROLLBACK");
    tu_exec(c, "BEGIN");
    tu_exec(c, "SELECT ferry.emit('w.once', 'sp', 'Tested', '{\"sp\": 1}')");
    tu_exec(c, "SAVEPOINT s");
    tu_exec(c, "SELECT ferry.emit('w.once', 'sp', 'Tested', '{\"no\": 2}')");
    tu_exec(c, "ROLLBACK TO SAVEPOINT s");
    tu_exec(c, "SELECT ferry.emit('w.once', 'sp', 'Tested', '{\"sp\": 2}')");
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    char *end = tu_wal_lsn(c);

    tu_wal_relay_once_says("wal-once", 0, "\"event\":\"wal.streaming\"", "\"delivered\":502");
    char *sql = tu_sprintf("SELECT confirmed_flush_lsn >= '%s' FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", end);
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT (%s)::int", sql)), 1);
    free(sql);
    free(end);

    kt_msgs *got = kt_consume(kt_bootstrap(tu_wal_broker), "w.once", 503, 5000);
    assert_int_equal(got->count, 502);
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        assert_null(strstr(m->value, "\"no\""));
        assert_string_equal(kt_header(m, "ferry_type"), "Tested");
        assert_string_equal(kt_header(m, "ce_specversion"), "1.0");
        assert_string_equal(kt_header(m, "ce_id"), kt_header(m, "ferry_id"));
        assert_int_equal(strlen(kt_header(m, "ce_time")), strlen("2026-11-22T01:02:03.456789Z"));
        /* The table source's default (test_lang_cloudevents.c): the
         * cluster listens on a Unix socket; its database is "postgres". */
        assert_string_equal(kt_header(m, "ce_source"), "ferry://localhost/postgres");
        if (strcmp(m->key, "sp") != 0)
            assert_string_equal(kt_header(m, "traceparent"), "00-t-s-01");
    }
    kt_msgs_free(got);
    tu_wal_topic tc = tu_wal_check_topic("w.once", 502, 5000);
    assert_int_equal(tc.distinct, 502);
    assert_int_equal(tc.duplicates, 0);
    assert_int_equal(tc.keys, 8);
    PQfinish(c);
}

/*
 * kill -9 while the relay streams 30,000 messages in 30 transactions:
 * the slot was confirmed part of the way (the fault fired mid-stream);
 * restarted, the relay resumes from the slot and every message is in
 * Kafka, in each key's order — duplicates allowed, never a loss.
 */
static void kill9_mid_stream_loses_nothing(void **state)
{
    PGconn *c = tu_wal_connect();
    char *start = tu_wal_lsn(c);
    tu_wal_emit_n("w.kill9", 30000, 40, 1000);
    char *end = tu_wal_lsn(c);
    const char *args[] = {"--set", "max_inflight=2000", "--set", "batch_size=1000", NULL};
    tu_proc p = tu_wal_relay_start("wal-kill9", args);
    char *sql = tu_sprintf("SELECT confirmed_flush_lsn > '%s' FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", start);
    tu_await(c, sql, 60000);
    free(sql);
    kill(p.pid, SIGKILL);
    assert_int_equal(tu_proc_wait(&p, 10000), 128 + SIGKILL);
    tu_proc_done(&p);
    sql = tu_sprintf("SELECT (confirmed_flush_lsn < '%s')::int FROM pg_replication_slots "
                     "WHERE slot_name = 'ferry'", end);
    long long midway = tu_int_of(c, sql);
    assert_int_equal(midway, 1);                    /* it died part of the way */
    /* The slot is free again once the server noticed the session died. */
    tu_await(c, "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'ferry'", 30000);
    assert_int_equal(tu_wal_relay_once("wal-kill9", NULL), 0);
    tu_wal_topic tc = tu_wal_check_topic("w.kill9", 0, 8000);
    assert_int_equal(tc.distinct, 30000);
    print_message("kill -9: %zu duplicates published\n", tc.duplicates);
    free(start);
    free(end);
    PQfinish(c);
}

/*
 * One reader per slot: the second relay finds the lease wal:ferry held
 * and waits as a standby (PostgreSQL would refuse it the slot anyway);
 * when the active relay dies, the lease expires, the standby takes it and
 * the slot, and publishes what follows.
 */
static void a_standby_takes_the_slot_over(void **state)
{
    PQfinish(tu_wal_connect());
    const char *args[] = {"--set", "lease_ttl_ms=2000", NULL};
    tu_proc a = tu_wal_relay_start("wal-a", args);
    tu_proc_await_log(&a, "\"event\":\"wal.streaming\"", 30000);
    tu_proc b = tu_wal_relay_start("wal-b", args);
    tu_proc_await_log(&b, "\"event\":\"wal.standby\"", 30000);
    PGconn *c = tu_connect();
    char *holder = tu_str(c, "SELECT holder FROM ferry.lease WHERE name = 'wal:ferry'");
    assert_string_equal(holder, "wal-a");
    free(holder);
    tu_wal_emit_n("w.standby", 50, 5, 10);
    tu_wal_topic tc = tu_wal_check_topic("w.standby", 50, 20000);
    assert_int_equal(tc.distinct, 50);
    kill(a.pid, SIGKILL);
    assert_int_equal(tu_proc_wait(&a, 10000), 128 + SIGKILL);
    tu_proc_done(&a);
    tu_proc_await_log(&b, "\"event\":\"wal.active\"", 60000);
    holder = tu_str(c, "SELECT holder FROM ferry.lease WHERE name = 'wal:ferry'");
    assert_string_equal(holder, "wal-b");
    free(holder);
    tu_wal_emit_n("w.standby", 50, 5, 10);             /* positions 11..20 of each key */
    tc = tu_wal_check_topic("w.standby", 100, 20000);
    assert_int_equal(tc.distinct, 100);
    assert_int_equal(tu_proc_finish(&b, 30000), 0);
    /* Given back at a clean stop. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name = 'wal:ferry' "
                               "AND holder IS NULL"), 1);
    PQfinish(c);
}

/*
 * A relay paused past its lease, with no standby to take it: on waking it
 * finds the lease run out, takes it again under a new epoch (as every
 * holder's lease is taken: common/lease.c) and says so once, and streams
 * on. The slot was the fence meanwhile: no other relay could stream it.
 */
static void a_relay_paused_past_its_lease_streams_on(void **state)
{
    PGconn *c = tu_wal_connect();
    const char *args[] = {"--set", "lease_ttl_ms=1000", NULL};
    tu_proc p = tu_wal_relay_start("wal-pause", args);
    tu_proc_await_log(&p, "\"event\":\"wal.streaming\"", 30000);
    tu_wal_emit_n("w.pause", 20, 4, 5);
    assert_int_equal(tu_wal_check_topic("w.pause", 20, 20000).distinct, 20);
    long long epoch = tu_int(c, "SELECT epoch FROM ferry.lease WHERE name = 'wal:ferry'");
    assert_int_equal(kill(p.pid, SIGSTOP), 0);
    tu_await(c, "SELECT expires_at < now() FROM ferry.lease WHERE name = 'wal:ferry'", 30000);
    assert_int_equal(kill(p.pid, SIGCONT), 0);
    tu_proc_await_log(&p, "\"event\":\"wal.lease_lapsed\"", 30000);
    assert_true(tu_int(c, "SELECT epoch FROM ferry.lease WHERE name = 'wal:ferry' "
                          "AND holder = 'wal-pause'") > epoch);
    tu_wal_emit_n("w.pause", 20, 4, 5);                /* positions 6..10 of each key */
    assert_int_equal(tu_wal_check_topic("w.pause", 40, 20000).distinct, 40);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

/*
 * Writers on a few hot keys while the WAL relay publishes, and a batch of
 * transactions committed in the reverse of their start order: each key's
 * positions reach Kafka complete and in order, across partitions.
 */
static void per_key_order_holds_with_concurrent_writers(void **state)
{
    PGconn *c = tu_wal_connect();
    assert_int_equal(kt_command(tu_wal_broker, "topic-create w.order 4 1"), 0);
    tu_proc p = tu_wal_relay_start("wal-order", NULL);
    enum { W = 6, ROUNDS = 40, REV = 5 };
    tu_hot_writers *hw = tu_hot_writers_start("w.order", W, ROUNDS);
    /* Reverse commit order on one key: begun 0..4, committed 4..0. */
    PGconn *rc[REV];
    for (int i = 0; i < REV; i++) {
        rc[i] = tu_connect();
        tu_exec(rc[i], "BEGIN");
        tu_exec(rc[i], "SELECT txid_current()");
    }
    for (int i = REV - 1; i >= 0; i--) {
        char *sql = tu_sprintf("SELECT ferry.emit('w.order', 'rev', 'Tested', "
                               "'{\"tx\": %d}')", i);
        tu_exec(rc[i], sql);
        free(sql);
        tu_exec(rc[i], "COMMIT");
        PQfinish(rc[i]);
    }
    tu_hot_writers_join(hw);
    tu_wal_topic tc = tu_wal_check_topic("w.order", W * ROUNDS * 3 + REV, 30000);
    assert_int_equal(tc.distinct, W * ROUNDS * 3 + REV);
    assert_int_equal(tc.keys, 6);
    /* The reverse-committed key: position k came from transaction 5 - k. */
    kt_msgs *got = kt_consume(kt_bootstrap(tu_wal_broker), "w.order", W * ROUNDS * 3 + REV,
                              10000);
    int seen = 0;
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        if (strcmp(m->key, "rev") != 0)
            continue;
        char want[32];
        snprintf(want, sizeof want, "{\"tx\": %d}", REV - atoi(kt_header(m, "ferry_seq")));
        assert_string_equal(m->value, want);
        seen++;
    }
    kt_msgs_free(got);
    assert_int_equal(seen, REV);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

/*
 * A 'ferry' message that emit did not write — pg_logical_emit_message
 * is open to every role — is refused, named by its position, counted;
 * the messages around it are published.
 */
static void a_forged_message_is_refused(void **state)
{
    PGconn *c = tu_wal_connect();
    PGconn *f = tu_connect_as_new(c, "forger", NULL);
    tu_wal_emit_n("w.forged", 2, 1, 1);
    tu_exec(f, "SELECT pg_logical_emit_message(true, 'ferry', "
               "'1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 "
               "1 0 8 1 0 1 2\nw.forgedxT{}{\"evil\": 1}')");
    tu_exec(f, "SELECT pg_logical_emit_message(true, 'ferry', 'garbage')");
    PQfinish(f);
    tu_wal_emit_n("w.forged", 2, 1, 1);
    /* Refused: not clean. */
    tu_wal_relay_once_says("wal-forged", 1, "not this database's wal_token",
                           "the header line is cut short");
    kt_msgs *got = kt_consume(kt_bootstrap(tu_wal_broker), "w.forged", 5, 5000);
    assert_int_equal(got->count, 4);
    for (size_t i = 0; i < got->count; i++)
        assert_null(strstr(got->msgs[i].value, "evil"));
    kt_msgs_free(got);
    PQfinish(c);
}

/*
 * A quiet ferry database beside a busy one does not pin WAL: with
 * nothing of its own to decode, the relay confirms the positions the
 * server's keepalives report, so the slot's confirmed position follows
 * the other database's writes.
 */
static void a_quiet_database_does_not_pin_wal(void **state)
{
    PGconn *c = tu_wal_connect();
    char *ci = tu_fresh_database("busy");
    tu_proc p = tu_wal_relay_start("wal-quiet", NULL);
    tu_proc_await_log(&p, "\"event\":\"wal.streaming\"", 30000);
    PGconn *b = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(b), CONNECTION_OK);
    tu_exec(b, "CREATE TABLE t AS SELECT g, repeat('x', 500) s FROM generate_series(1, 20000) g");
    char *busy_end = tu_wal_lsn(b);
    PQfinish(b);
    char *sql = tu_sprintf("SELECT confirmed_flush_lsn >= '%s' FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", busy_end);
    tu_await(c, sql, 30000);
    free(sql);
    free(busy_end);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(once_publishes_committed_messages_only),
        cmocka_unit_test(kill9_mid_stream_loses_nothing),
        cmocka_unit_test(per_key_order_holds_with_concurrent_writers),
        cmocka_unit_test(a_standby_takes_the_slot_over),
        cmocka_unit_test(a_relay_paused_past_its_lease_streams_on),
        cmocka_unit_test(a_forged_message_is_refused),
        cmocka_unit_test(a_quiet_database_does_not_pin_wal),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_wal_group_setup, tu_wal_group_teardown);
}
