/*
 * test_wal_relay.c — `ferry-relay run --source wal` against a real
 * PostgreSQL (wal_level = logical, tests/harness/pgtmp.c) and the
 * development broker, every topic read back: what committed is published
 * and nothing rolled back (also to a savepoint); a kill -9 mid-stream
 * loses nothing; a standby takes the slot over when the active relay
 * dies; a forged 'ferry' message is refused; a quiet database's slot
 * advances; a lost slot is loud and never recreated by the relay, and
 * the operator's recreate reports the window that may have been missed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_http.h"
#include "tu_proc.h"

static kt_broker *broker;

static tu_proc relay_spawn(const char *holder, const char *const *args)
{
    const char *a[48] = {"--source", "wal", "--set", "log_level=debug"};
    int n = 4;
    for (int i = 0; args != NULL && args[i] != NULL && n < 46; i++)
        a[n++] = args[i];
    a[n] = NULL;
    const char *e[2] = {TU_RELAY_ASAN, NULL};
    return tu_relay_start(kt_bootstrap(broker), holder, a, e);
}

static int relay_once(const char *holder, char **log_out)
{
    const char *a[] = {"--once", NULL};
    tu_proc p = relay_spawn(holder, a);
    int st = tu_proc_wait(&p, 120000);
    char *log = tu_proc_log(&p);
    if (st != 0 && log != NULL)
        fprintf(stderr, "relay %s exited %d; its log ends:\n%s\n", holder, st,
                strlen(log) > 4000 ? log + strlen(log) - 4000 : log);
    if (log_out != NULL)
        *log_out = log;
    else
        free(log);
    tu_proc_done(&p);
    return st;
}

static int slot_cmd(const char *action, char **out, char **err)
{
    const char *argv[] = {tu_relay_bin(), "slot", action, "--db", fpg_conninfo(tu_pg), NULL};
    return tu_run(argv, 60000, out, err);
}

/* n messages over k keys of topic in transactions of per_tx. */
static void emit_n(const char *topic, int n, int k, int per_tx)
{
    PGconn *c = tu_connect();
    for (int done = 0; done < n; done += per_tx) {
        char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'key-' || (g %% %d), 'Tested', "
                               "json_build_object('g', g)::text, "
                               "'{\"traceparent\": \"00-t-s-01\"}')) "
                               "FROM generate_series(%d, %d) g", topic, k, done + 1,
                               done + per_tx < n ? done + per_tx : n);
        tu_exec(c, "BEGIN");
        tu_exec(c, sql);
        tu_exec(c, "COMMIT");
        free(sql);
    }
    PQfinish(c);
}

typedef struct topic_check {
    size_t messages, distinct, duplicates, keys;
} topic_check;

/* Every key's positions rise one by one from 1 in its partition; a
 * position seen before is a duplicate (allowed after a crash); never a
 * gap or a step back to something unseen. */
static topic_check check_topic(const char *topic, size_t want, int timeout_ms)
{
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, want, timeout_ms);
    assert_non_null(got);
    topic_check tc = {.messages = got->count};
    enum { MAXKEYS = 256 };
    char *keys[MAXKEYS];
    long last[MAXKEYS];
    int partition[MAXKEYS];
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        const char *seq_text = kt_header(m, "ferry_seq");
        assert_non_null(seq_text);
        long seq = atol(seq_text);
        size_t k = 0;
        while (k < tc.keys && strcmp(keys[k], m->key) != 0)
            k++;
        if (k == tc.keys) {
            assert_true(tc.keys < MAXKEYS);
            keys[k] = m->key;
            last[k] = 0;
            partition[k] = m->partition;
            tc.keys++;
        }
        assert_int_equal(partition[k], m->partition);
        if (seq <= last[k]) {
            tc.duplicates++;
        } else {
            if (seq != last[k] + 1)
                fail_msg("topic %s key %s: position %ld after %ld (a gap or reordering)",
                         topic, m->key, seq, last[k]);
            last[k] = seq;
            tc.distinct++;
        }
    }
    kt_msgs_free(got);
    return tc;
}

/* The slot there and wal mode on, whatever ran before (FERRY_TEST_FILTER
 * runs one test alone): as `ferry-relay slot create` leaves them. */
static void wal_ready(PGconn *c)
{
    if (tu_int(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'") == 0) {
        char *out = NULL;
        assert_int_equal(slot_cmd("create", &out, NULL), 0);
        free(out);
    }
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
}

static char *current_lsn(PGconn *c)
{
    return tu_str(c, "SELECT pg_current_wal_lsn()::text");
}

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
    assert_int_equal(slot_cmd("create", &out, NULL), 0);
    assert_non_null(strstr(out, "created the replication slot \"ferry\""));
    free(out);
    PGconn *c = tu_connect();
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
    emit_n("w.once", 500, 7, 100);
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
    char *end = current_lsn(c);

    char *log = NULL;
    assert_int_equal(relay_once("wal-once", &log), 0);
    assert_non_null(strstr(log, "\"event\":\"wal.streaming\""));
    assert_non_null(strstr(log, "\"delivered\":502"));
    free(log);
    char *sql = tu_sprintf("SELECT confirmed_flush_lsn >= '%s' FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", end);
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT (%s)::int", sql)), 1);
    free(sql);
    free(end);

    kt_msgs *got = kt_consume(kt_bootstrap(broker), "w.once", 503, 5000);
    assert_int_equal(got->count, 502);
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        assert_null(strstr(m->value, "\"no\""));
        assert_string_equal(kt_header(m, "ferry_type"), "Tested");
        assert_string_equal(kt_header(m, "ce_specversion"), "1.0");
        assert_string_equal(kt_header(m, "ce_id"), kt_header(m, "ferry_id"));
        assert_int_equal(strlen(kt_header(m, "ce_time")), strlen("2026-11-22T01:02:03.456789Z"));
        if (strcmp(m->key, "sp") != 0)
            assert_string_equal(kt_header(m, "traceparent"), "00-t-s-01");
    }
    kt_msgs_free(got);
    topic_check tc = check_topic("w.once", 502, 5000);
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
    PGconn *c = tu_connect();
    wal_ready(c);
    char *start = current_lsn(c);
    emit_n("w.kill9", 30000, 40, 1000);
    char *end = current_lsn(c);
    const char *args[] = {"--set", "max_inflight=2000", "--set", "batch_size=1000", NULL};
    tu_proc p = relay_spawn("wal-kill9", args);
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
    assert_int_equal(relay_once("wal-kill9", NULL), 0);
    topic_check tc = check_topic("w.kill9", 0, 8000);
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
    const char *args[] = {"--set", "lease_ttl_ms=2000", NULL};
    tu_proc a = relay_spawn("wal-a", args);
    tu_proc_await_log(&a, "\"event\":\"wal.streaming\"", 30000);
    tu_proc b = relay_spawn("wal-b", args);
    tu_proc_await_log(&b, "\"event\":\"wal.standby\"", 30000);
    PGconn *c = tu_connect();
    char *holder = tu_str(c, "SELECT holder FROM ferry.lease WHERE name = 'wal:ferry'");
    assert_string_equal(holder, "wal-a");
    free(holder);
    emit_n("w.standby", 50, 5, 10);
    topic_check tc = check_topic("w.standby", 50, 20000);
    assert_int_equal(tc.distinct, 50);
    kill(a.pid, SIGKILL);
    assert_int_equal(tu_proc_wait(&a, 10000), 128 + SIGKILL);
    tu_proc_done(&a);
    tu_proc_await_log(&b, "\"event\":\"wal.active\"", 60000);
    holder = tu_str(c, "SELECT holder FROM ferry.lease WHERE name = 'wal:ferry'");
    assert_string_equal(holder, "wal-b");
    free(holder);
    emit_n("w.standby", 50, 5, 10);             /* positions 11..20 of each key */
    tc = check_topic("w.standby", 100, 20000);
    assert_int_equal(tc.distinct, 100);
    assert_int_equal(tu_proc_finish(&b, 30000), 0);
    /* Given back at a clean stop. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name = 'wal:ferry' "
                               "AND holder IS NULL"), 1);
    PQfinish(c);
}

/*
 * A 'ferry' message that emit did not write — pg_logical_emit_message
 * is open to every role — is refused, named by its position, counted;
 * the messages around it are published.
 */
static void a_forged_message_is_refused(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "DO $$ BEGIN CREATE ROLE forger LOGIN; "
               "EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    emit_n("w.forged", 2, 1, 1);
    PGconn *f = tu_connect_as("forger");
    tu_exec(f, "SELECT pg_logical_emit_message(true, 'ferry', "
               "'1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 "
               "1 0 8 1 0 1 2\nw.forgedxT{}{\"evil\": 1}')");
    tu_exec(f, "SELECT pg_logical_emit_message(true, 'ferry', 'garbage')");
    PQfinish(f);
    emit_n("w.forged", 2, 1, 1);
    char *log = NULL;
    assert_int_equal(relay_once("wal-forged", &log), 1);   /* refused: not clean */
    assert_non_null(strstr(log, "not this database's wal_token"));
    assert_non_null(strstr(log, "the header line is cut short"));
    free(log);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), "w.forged", 5, 5000);
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
    PGconn *c = tu_connect();
    tu_exec(c, "DROP DATABASE IF EXISTS busy");
    tu_exec(c, "CREATE DATABASE busy");
    tu_proc p = relay_spawn("wal-quiet", NULL);
    tu_proc_await_log(&p, "\"event\":\"wal.streaming\"", 30000);
    char *ci = fpg_conninfo_for(tu_pg, NULL, "busy");
    PGconn *b = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(b), CONNECTION_OK);
    tu_exec(b, "CREATE TABLE t AS SELECT g, repeat('x', 500) s FROM generate_series(1, 20000) g");
    char *busy_end = current_lsn(b);
    PQfinish(b);
    char *sql = tu_sprintf("SELECT confirmed_flush_lsn >= '%s' FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", busy_end);
    tu_await(c, sql, 30000);
    free(sql);
    free(busy_end);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

/*
 * The slot dropped while the relay is down: the relay says so loudly
 * (log, /healthz 503, ferry_relay_wal_slot_ok 0; --once exits 1) and
 * does not create it; `slot status` exits 4; `slot create` refuses a
 * slot that existed before; `slot recreate` creates it and reports the
 * WAL window whose messages may have been missed, kept in ferry.wal_slot.
 */
static void a_lost_slot_is_loud_and_never_recreated_silently(void **state)
{
    PGconn *c = tu_connect();
    /* The relay has confirmed something (earlier tests): recorded. */
    tu_await(c, "SELECT confirmed_lsn IS NOT NULL FROM ferry.wal_slot WHERE slot_name = 'ferry'",
             30000);
    tu_exec(c, "SELECT pg_drop_replication_slot('ferry')");
    char *log = NULL;
    assert_int_equal(relay_once("wal-lost", &log), 1);
    assert_non_null(strstr(log, "\"event\":\"wal.slot\""));
    assert_non_null(strstr(log, "does not exist"));
    free(log);
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = relay_spawn("wal-lost2", args);
    tu_proc_await_log(&p, "\"event\":\"metrics.listen\"", 30000);
    char *plog = tu_proc_log(&p);
    int port = atoi(strstr(plog, "\"port\":") + strlen("\"port\":"));
    free(plog);
    tu_proc_await_log(&p, "\"event\":\"wal.slot\"", 30000);
    tu_http_reply h = tu_http_get(port, "/healthz");
    assert_int_equal(h.status, 503);
    assert_non_null(strstr(h.body, "does not exist"));
    free(h.raw);
    h = tu_http_get(port, "/metrics");
    double v = -1;
    assert_int_equal(tu_prom_find(h.body, "ferry_relay_wal_slot_ok", &v), 0);
    assert_true(v == 0);
    free(h.raw);
    tu_proc_finish(&p, 30000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_replication_slots"), 0);

    char *out = NULL;
    assert_int_equal(slot_cmd("status", &out, NULL), 4);
    assert_non_null(strstr(out, "MISSING"));
    free(out);
    char *err = NULL;
    assert_int_equal(slot_cmd("create", NULL, &err), 1);
    assert_non_null(strstr(err, "was created before"));
    free(err);
    assert_int_equal(slot_cmd("recreate", &out, NULL), 0);
    assert_non_null(strstr(out, "may never have been published"));
    free(out);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.wal_slot WHERE missed_from_lsn IS "
                               "NOT NULL AND missed_to_lsn > missed_from_lsn AND recreated_at "
                               "IS NOT NULL"), 1);
    assert_int_equal(slot_cmd("status", &out, NULL), 4);      /* inactive: no relay */
    assert_non_null(strstr(out, "INACTIVE"));
    free(out);
    PQfinish(c);
}

/*
 * A message Kafka refuses (too large for message.max.bytes) fails
 * max_attempts times — the stream restarting from the slot each time —
 * and then goes to the dead letters, parking its key: the key's later
 * message, already in WAL, goes to the table at its position, and so does
 * one emitted after; every other key flows. Discarding the dead letter
 * lets the table path publish the key's rest, in order.
 */
static void a_poison_message_parks_its_key_only(void **state)
{
    PGconn *c = tu_connect();
    wal_ready(c);
    tu_exec(c, "BEGIN");
    tu_exec(c, "SELECT ferry.emit('w.poison', 'poison', 'Tested', "
               "json_build_object('big', repeat('x', 200000))::text)");
    tu_exec(c, "SELECT ferry.emit('w.poison', 'poison', 'Tested', '{\"after\": 1}')");
    tu_exec(c, "SELECT ferry.emit('w.poison', 'healthy', 'Tested', '{\"ok\": 1}')");
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);      /* all in WAL */
    const char *args[] = {"--once", "--kafka-prop", "message.max.bytes=100000", "--set",
                          "max_attempts=2", NULL};
    tu_proc p = relay_spawn("wal-poison", args);
    int st = tu_proc_wait(&p, 120000);
    char *log = tu_proc_log(&p);
    tu_proc_done(&p);
    assert_int_equal(st, 1);                        /* something failed on the way */
    assert_non_null(strstr(log, "\"event\":\"wal.restart\""));
    assert_non_null(strstr(log, "\"event\":\"message.dead_lettered\""));
    assert_non_null(strstr(log, "\"event\":\"wal.parked\""));
    free(log);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'w.poison' "
                               "AND aggregateid = 'poison' AND seq = 1 AND attempts = 2 "
                               "AND reason LIKE '%too large%'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'w.poison' "
                               "AND aggregateid = 'poison' AND seq = 2 "
                               "AND payload = '{\"after\": 1}'"), 1);
    tu_exec(c, "SELECT ferry.emit('w.poison', 'poison', 'Tested', '{\"after\": 2}')");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'w.poison' "
                               "AND aggregateid = 'poison' AND seq = 3"), 1);
    /* Only the healthy key went out (more than once: each restart from the
     * slot sends its transaction again). */
    kt_msgs *got = kt_consume(kt_bootstrap(broker), "w.poison", 0, 3000);
    assert_true(got->count >= 1);
    for (size_t i = 0; i < got->count; i++)
        assert_string_equal(got->msgs[i].key, "healthy");
    kt_msgs_free(got);
    /* Discarded: the table path publishes a marker in its place, then the
     * key's rest. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter d WHERE "
                               "ferry.discard_dead_letter(d.id)"), 1);
    const char *targs[] = {"--once", NULL};
    tu_proc t = tu_relay_start(kt_bootstrap(broker), "table-poison", targs,
                               (const char *const[]){TU_RELAY_ASAN, NULL});
    assert_int_equal(tu_proc_wait(&t, 60000), 0);
    tu_proc_done(&t);
    topic_check tc = check_topic("w.poison", 0, 5000);
    assert_int_equal(tc.distinct, 4);                 /* healthy 1; poison 1 (marker), 2, 3 */
    PQfinish(c);
}

static int group_setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    broker = kt_start(1);
    return broker == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    kt_stop(broker);
    return tu_group_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(once_publishes_committed_messages_only),
        cmocka_unit_test(kill9_mid_stream_loses_nothing),
        cmocka_unit_test(a_standby_takes_the_slot_over),
        cmocka_unit_test(a_forged_message_is_refused),
        cmocka_unit_test(a_poison_message_parks_its_key_only),
        cmocka_unit_test(a_quiet_database_does_not_pin_wal),
        cmocka_unit_test(a_lost_slot_is_loud_and_never_recreated_silently),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
