/*
 * test_relay.c — ferry-relay against a real PostgreSQL and the development
 * broker (librdkafka's mock cluster in a `ferry-relay devkafka` process),
 * reading every topic back with a consumer.
 *
 * The relay runs as a separate process (the ASan build of ferry-relay), so
 * that tests can kill -9 it, stop it with SIGSTOP, and read its JSON log.
 * Each test uses its own topic, so tests do not see each other's messages.
 */
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_http.h"
#include "tu_kafka.h"
#include "tu_proc.h"
#include "tu_relay.h"

static kt_broker *broker;

/* ------------------------------------------------------------------ processes */

/* Start `ferry-relay run --db ... --kafka ... ARGS` logging at debug into
 * its log file (tu_proc.h). env: one "NAME=VALUE" or NULL. */
static tu_proc relay_spawn(const char *holder, const char *const *args, const char *env)
{
    const char *a[48] = {"--set", "log_level=debug"};
    int n = 2;
    for (int i = 0; args != NULL && args[i] != NULL && n < 46; i++)
        a[n++] = args[i];
    a[n] = NULL;
    /* The relay's own leak report would only repeat libraries' ones. */
    const char *e[3] = {TU_RELAY_ASAN, NULL, NULL};
    if (env != NULL) {
        e[0] = env;
        e[1] = TU_RELAY_ASAN;
    }
    return tu_relay_start(kt_bootstrap(broker), holder, a, e);
}

/* Run --once to completion and return its exit status. */
static int relay_once(const char *holder, const char *const *args, const char *env,
                      char **log_out)
{
    const char *a[40] = {"--once"};
    int n = 1;
    for (int i = 0; args != NULL && args[i] != NULL && n < 38; i++)
        a[n++] = args[i];
    a[n] = NULL;
    tu_proc p = relay_spawn(holder, a, env);
    return tu_relay_once_end(&p, holder, log_out);
}

/* ------------------------------------------------------------------ data */

/* Commit n messages over k keys of topic in one transaction; payload
 * {"g": i}, keys "key-<i % k>". */
static void emit_n(const char *topic, int n, int k)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'key-' || (g %% %d), 'Tested', "
                           "json_build_object('g', g)::text, '{\"traceparent\": \"00-t-s-01\"}')) "
                           "FROM generate_series(1, %d) g", topic, k, n);
    tu_exec(c, "BEGIN");
    tu_exec(c, sql);
    tu_exec(c, "COMMIT");
    free(sql);
    PQfinish(c);
}




/* ------------------------------------------------------------------ tests */

static void once_publishes_committed_only(void **state)
{
    const char *topic = "t.once";
    emit_n(topic, 500, 7);
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    tu_exec(c, "SELECT ferry.emit('t.once', 'rolled-back', 'Tested', '{\"no\": 1}')");
    tu_exec(c, "ROLLBACK");
    PQfinish(c);

    char *log = NULL;
    assert_int_equal(relay_once("once-a", NULL, NULL, &log), 0);
    assert_non_null(strstr(log, "\"event\":\"relay.stop\""));
    assert_non_null(strstr(log, "\"delivered\":500"));
    free(log);
    assert_int_equal(tu_outbox_rows(topic), 0);

    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 0, 10000);    /* all it holds */
    assert_int_equal(got->count, 500);              /* and not the rolled-back one */
    const kt_msg *m = &got->msgs[0];
    /* The published form: key, JSON value, ferry and CloudEvents headers,
     * the caller's traceparent untouched. */
    assert_non_null(strstr(m->value, "\"g\""));
    assert_string_equal(kt_header(m, "ferry_type"), "Tested");
    assert_string_equal(kt_header(m, "ce_specversion"), "1.0");
    assert_string_equal(kt_header(m, "ce_type"), "Tested");
    assert_string_equal(kt_header(m, "ce_id"), kt_header(m, "ferry_id"));
    assert_non_null(kt_header(m, "ce_source"));
    assert_int_equal(strlen(kt_header(m, "ce_time")), strlen("2026-11-22T01:02:03.456789Z"));
    assert_string_equal(kt_header(m, "traceparent"), "00-t-s-01");
    assert_int_equal(strncmp(m->key, "key-", 4), 0);
    for (size_t i = 0; i < got->count; i++)
        assert_null(strstr(got->msgs[i].value, "\"no\""));
    kt_msgs_free(got);

    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 500, 5000, 500);
    assert_int_equal(tc.duplicates, 0);
    assert_int_equal(tc.keys, 7);
}

/*
 * A row the schema's owner wrote by hand with created_at 'infinity' or
 * '-infinity' is published with a ce_time RFC 3339 can hold (9999 and
 * 0001). Before, 'infinity' overflowed on its move to 1970 (undefined
 * behaviour; the sanitized relay stopped) and was published as year
 * -290278 (an outside audit).
 */
static void a_created_at_out_of_range_is_published_within_rfc3339(void **state)
{
    const char *topic = "t.infinity";
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.infinity', 'far', 'Tested', '{}'); "
               "SELECT ferry.emit('t.infinity', 'near', 'Tested', '{}'); "
               "UPDATE ferry.outbox SET created_at = CASE aggregateid WHEN 'far' "
               "  THEN 'infinity'::timestamptz ELSE '-infinity'::timestamptz END "
               "WHERE topic = 't.infinity'");
    PQfinish(c);
    assert_int_equal(relay_once("infinity-a", NULL, NULL, NULL), 0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 2, 10000);
    assert_int_equal(got->count, 2);
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        const char *want = strcmp(m->key, "far") == 0 ? "9999-12-31T23:59:59.999999Z"
                                                      : "0001-01-01T00:00:00.000000Z";
        assert_string_equal(kt_header(m, "ce_time"), want);
    }
    kt_msgs_free(got);
}

/* Only a NOTIFY can wake it: the backstop poll is set to ten minutes. */
static void notify_wakes_the_relay(void **state)
{
    const char *topic = "t.notify";
    const char *args[] = {"--set", "poll_interval_ms=600000", NULL};
    tu_proc p = relay_spawn("notify-a", args, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.lease WHERE holder = 'notify-a' "
                "AND name LIKE 'shard:%'", 30000);
    /* Let it finish its first sweep and go idle. */
    tu_await(c, "SELECT count(*) = 0 FROM ferry.outbox", 30000);
    PQfinish(c);
    emit_n(topic, 3, 3);
    tu_await_outbox_empty(topic, 20000);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    tu_proc_done(&p);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 5000, 3);
}

/* Many writers on a few hot keys while the relay publishes: every key's
 * positions arrive complete and in order, across several partitions. */
static void order_holds_with_concurrent_writers(void **state)
{
    const char *topic = "t.order";
    assert_int_equal(kt_command(broker, "topic-create %s 4 1", topic), 0);
    tu_proc p = relay_spawn("order-a", NULL, NULL);
    enum { W = 6, ROUNDS = 60 };
    tu_hot_writers_join(tu_hot_writers_start(topic, W, ROUNDS));
    tu_await_outbox_empty(topic, 60000);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    tu_proc_done(&p);
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, W * ROUNDS * 3, 10000,
                                        W * ROUNDS * 3);
    assert_int_equal(tc.keys, 5);
}

/* Emit n messages in transactions of per_tx, start a relay named name,
 * and once fewer than below are left in the outbox, send it sig and wait
 * for it to exit with want (it has really been mid-run). The caller reads
 * its log and calls tu_proc_done. */
static tu_proc relay_stopped_mid_run(const char *name, const char *topic, int n, int per_tx,
                                     int below, int sig, int want)
{
    emit_n(topic, n, per_tx);
    tu_proc p = relay_spawn(name, NULL, NULL);
    PGconn *c = tu_connect();
    char *mid = tu_sprintf("SELECT count(*) < %d FROM ferry.outbox WHERE topic = '%s'", below,
                           topic);
    tu_await(c, mid, 60000);
    free(mid);
    PQfinish(c);
    kill(p.pid, sig);
    assert_int_equal(tu_proc_wait(&p, 60000), want);
    return p;
}

/* SIGTERM while publishing: it stops fetching, waits for what is in
 * flight, acknowledges it and exits 0; what it did not take is still in
 * the outbox, and nothing acknowledged is missing from Kafka. */
static void graceful_shutdown_loses_nothing(void **state)
{
    const char *topic = "t.graceful";
    tu_proc p = relay_stopped_mid_run("graceful-a", topic, 20000, 50, 20000, SIGTERM, 0);
    char *log = tu_proc_log(&p);
    assert_non_null(strstr(log, "\"event\":\"relay.stopping\""));
    free(log);
    tu_proc_done(&p);
    long long left = tu_outbox_rows(topic);
    /* Each read goes to the partitions' ends as they are now (want 0), an
     * event: reading until 20,000 had come or 10 s had passed once ended
     * at 16,193 in a loaded make test. */
    tu_topic_check tc = tu_check_topic(kt_bootstrap(broker), topic, 0, 60000);
    assert_int_equal(tc.duplicates, 0);
    assert_true(tc.distinct >= (size_t)(20000 - left));
    /* The rest goes out on the next run. */
    assert_int_equal(relay_once("graceful-b", NULL, NULL, NULL), 0);
    tc = tu_assert_topic(kt_bootstrap(broker), topic, 0, 60000, 20000);
}

/* kill -9 in the middle: the next relay publishes the rest; some messages
 * may go out twice (delivered, not yet acknowledged), none is lost, and
 * every key stays in order. */
static void kill9_mid_batch_loses_nothing(void **state)
{
    const char *topic = "t.kill9";
    tu_proc p = relay_stopped_mid_run("kill9-a", topic, 30000, 40, 25000, SIGKILL, 128 + SIGKILL);
    tu_proc_done(&p);
    long long left = tu_outbox_rows(topic);
    assert_true(left > 0);                          /* it really died mid-way */
    /* Restarted under the same name (as a supervisor would), it takes its
     * unexpired leases back under a new epoch rather than wait for them. */
    char *log = NULL;
    assert_int_equal(relay_once("kill9-a", NULL, NULL, &log), 0);
    assert_non_null(strstr(log, "\"event\":\"lease.reclaimed\""));
    free(log);
    assert_int_equal(tu_outbox_rows(topic), 0);
    /* Read all there is (duplicates included), not just 30000. */
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 0, 60000, 30000);
    print_message("kill -9: %lld rows left, %zu duplicates published\n", left, tc.duplicates);
}

/* Every line of log is a JSON object: nothing (libpq's notices, say)
 * writes raw text between them. */
static void assert_all_json(const char *log)
{
    for (const char *l = log; *l; ) {
        size_t n = strcspn(l, "\n");
        if (n > 0 && (l[0] != '{' || l[n - 1] != '}'))
            fail_msg("a log line that is not JSON: %.*s", (int)n, l);
        l += n + (l[n] == '\n');
    }
}

/* Lines of log holding every one of the NULL-terminated needles. */
static int lines_with(const char *log, ...)
{
    int count = 0;
    for (const char *l = log; *l; ) {
        size_t n = strcspn(l, "\n");
        int all = 1;
        va_list ap;
        va_start(ap, log);
        for (const char *w = va_arg(ap, const char *); w && all; w = va_arg(ap, const char *))
            all = memmem(l, n, w, strlen(w)) != NULL;
        va_end(ap);
        count += all;
        l += n + (l[n] == '\n');
    }
    return count;
}

/* All brokers down: nothing is acknowledged; back up: everything goes.
 * Each connection failure is logged once (kafka.error), not again as
 * librdkafka's own "FAIL" log line above debug. */
static void broker_down_then_up(void **state)
{
    const char *topic = "t.down";
    assert_int_equal(kt_command(broker, "topic-create %s 2 1", topic), 0);
    tu_proc p = relay_spawn("down-a", NULL, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.lease WHERE holder = 'down-a'", 30000);
    PQfinish(c);
    assert_int_equal(kt_command(broker, "down 1"), 0);
    emit_n(topic, 200, 10);
    /* The relay produced them and librdkafka saw the broker gone (the
     * fault fired); nothing could be acknowledged ... */
    tu_proc_await_log(&p, "\"event\":\"batch.produced\"", 30000);
    tu_proc_await_log(&p, "\"event\":\"kafka.error\"", 30000);
    assert_int_equal(tu_outbox_rows(topic), 200);
    /* ... and once it is back they go. */
    assert_int_equal(kt_command(broker, "up 1"), 0);
    tu_await_outbox_empty(topic, 60000);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    char *log = tu_proc_log(&p);
    assert_true(lines_with(log, "\"event\":\"kafka.error\"", NULL) >= 1);
    int twice = lines_with(log, "\"event\":\"kafka.log\"", "\"facility\":\"FAIL\"",
                           "\"level\":\"warn\"", NULL) +
                lines_with(log, "\"event\":\"kafka.log\"", "\"facility\":\"FAIL\"",
                           "\"level\":\"error\"", NULL);
    if (twice != 0)
        fail_msg("%d connection failures logged twice (kafka.log FAIL and kafka.error):\n%s",
                 twice, log);
    free(log);
    tu_proc_done(&p);
    tu_assert_topic(kt_bootstrap(broker), topic, 200, 10000, 200);
}

/* Produce requests fail a few times, and the round trip is slow: the
 * producer retries, nothing is lost or reordered. */
static void produce_errors_and_latency(void **state)
{
    const char *topic = "t.errors";
    assert_int_equal(kt_command(broker, "topic-create %s 1 1", topic), 0);
    assert_int_equal(kt_command(broker, "rtt 1 50"), 0);
    assert_int_equal(kt_command(broker, "produce-errors 4 NOT_ENOUGH_REPLICAS"), 0);
    emit_n(topic, 300, 5);
    char *log = NULL;
    /* One request in flight: librdkafka 2.0.2's mock broker checks an
     * idempotent producer's sequence numbers only for a transactional one
     * (rd_kafka_mock_validate_records returns early without a
     * TransactionalId), so a request sent behind one that gets an injected
     * error is appended ahead of that one's retry: the mock reorders
     * (seen as "position 2 after 0" under load). A real broker refuses
     * the overtaking request with OUT_OF_ORDER_SEQUENCE_NUMBER, and
     * librdkafka resends both in order. */
    const char *args[] = {"--kafka-prop", "debug=msg", "--kafka-prop",
                          "max.in.flight.requests.per.connection=1", NULL};
    assert_int_equal(relay_once("errors-a", args, NULL, &log), 0);
    if (getenv("FERRY_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", log);
    /* The fault fired: librdkafka logged the broker's refusals. */
    assert_non_null(strstr(log, "Not enough in-sync replicas (actions Retry"));
    free(log);
    assert_int_equal(kt_command(broker, "rtt 1 0"), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 300, 10000, 300);
}

/* librdkafka's fatal error (raised on purpose through its test API): the
 * relay rebuilds the producer and resends from the first unacknowledged
 * row of each key. */
static void fatal_error_rebuilds_producer(void **state)
{
    const char *topic = "t.fatal";
    emit_n(topic, 3000, 10);
    char *log = NULL;
    assert_int_equal(relay_once("fatal-a", NULL, "FERRY_RELAY_TEST_FATAL_AFTER=1500", &log), 0);
    assert_non_null(strstr(log, "\"event\":\"kafka.fatal\""));
    free(log);
    assert_int_equal(tu_outbox_rows(topic), 0);
    /* Purged in-flight messages may have been written: read it all. */
    tu_assert_topic(kt_bootstrap(broker), topic, 0, 60000, 3000);
}

/* A producer queue smaller than one message (queue.buffering.max.kbytes
 * of 64 KiB, messages of 100 KB): every message goes out all the same.
 * Before: produce() said "queue full" for ever, which is nobody's fault,
 * so the table source retried the key without counting an attempt: with
 * --once it gave up (exit 1, rows left), running it never ended. */
static void a_message_larger_than_the_producers_queue_is_published(void **state)
{
    const char *topic = "t.smallq";
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT count(ferry.emit('t.smallq', 'big', 'Tested', '{\"n\": ' || g || "
               "', \"b\": \"' || repeat('x', 100000) || '\"}')) FROM generate_series(1, 2) g");
    tu_exec(c, "SELECT ferry.emit('t.smallq', 'small', 'Tested', '{}')");
    const char *args[] = {"--kafka-prop", "queue.buffering.max.kbytes=64", NULL};
    char *log = NULL;
    assert_int_equal(relay_once("smallq", args, NULL, &log), 0);
    assert_non_null(strstr(log, "\"event\":\"kafka.queue_small\""));
    free(log);
    assert_int_equal(tu_outbox_rows(topic), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 10000, 3);    /* each key in order, once */
    PQfinish(c);
}

/* A row whose topic Kafka cannot take (513 bytes; written around emit,
 * which refuses it) fails into a dead letter saying why, and every other
 * row of the sweep is published. Before: every batch ended at it, read as
 * out of memory, and the rows after it waited for ever (an outside audit). */
static void a_row_with_a_topic_kafka_cannot_take_fails_alone(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.badtopic', 'k' || g, 'Tested', '{}') "
               "FROM generate_series(1, 6) g");
    tu_exec(c, "INSERT INTO ferry.outbox (id, topic, aggregateid, type, payload, seq, shard) "
               "VALUES (gen_random_uuid(), repeat('a', 513), 'k', 'T', '{}', 1, 0)");
    const char *args[] = {"--set", "max_attempts=1", NULL};
    char *log = NULL;
    assert_int_equal(relay_once("badtopic-a", args, NULL, &log), 1);
    free(log);
    tu_assert_topic(kt_bootstrap(broker), "t.badtopic", 6, 10000, 6);
    assert_int_equal(tu_outbox_rows("t.badtopic"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE "
                               "length(topic) = 513 AND reason LIKE '%not one Kafka takes%'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE length(topic) = 513"), 0);
    tu_exec(c, "DELETE FROM ferry.dead_letter WHERE length(topic) = 513");
    PQfinish(c);
}

/* Rows from before schema 14 have no wal_lsn (NULL: never held): they are
 * published. Before: the fetch's "waits for a stamp" column was NULL for
 * them, every batch ended at such a row as one "of the wrong size", and
 * after an upgrade from 0.1.0 the relay published nothing on any shard
 * (an outside audit). */
static void a_row_without_a_wal_lsn_is_published(void **state)
{
    const char *topic = "t.nolsn";
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.nolsn', 'k' || g, 'Tested', '{}') FROM generate_series(1, 3) g; "
               "UPDATE ferry.outbox SET wal_lsn = NULL WHERE topic = 't.nolsn'");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.nolsn' "
                               "AND wal_lsn IS NULL"), 3);
    PQfinish(c);
    assert_int_equal(relay_once("nolsn-a", NULL, NULL, NULL), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 10000, 3);
    assert_int_equal(tu_outbox_rows(topic), 0);
}

/* --once that could take no lease because the acquisition failed says so
 * and exits 1: it said "every shard is leased by another relay: nothing
 * to do" and exited 0 with every row left (an outside audit, with epochs
 * at the largest bigint, which the acquisition cannot raise). */
static void once_that_cannot_take_a_lease_fails(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.noepoch', 'k', 'Tested', '{}')");
    tu_exec(c, "CREATE TEMP TABLE saved AS SELECT * FROM ferry.lease WHERE name LIKE 'shard:%'; "
               "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
               "SELECT 'shard:' || s, NULL, 9223372036854775807, '-infinity' "
               "  FROM generate_series(0, 15) s "
               "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, holder = NULL, "
               "  expires_at = EXCLUDED.expires_at");
    char *log = NULL;
    int status = relay_once("noepoch-a", NULL, NULL, &log);
    tu_exec(c, "DELETE FROM ferry.lease WHERE name LIKE 'shard:%'; "
               "INSERT INTO ferry.lease SELECT * FROM saved");
    if (status == 0 || strstr(log, "could not take") == NULL)
        fail_msg("--once exited %d; log:\n%s", status, log);
    free(log);
    assert_int_equal(tu_outbox_rows("t.noepoch"), 1);
    assert_int_equal(relay_once("noepoch-b", NULL, NULL, NULL), 0);
    assert_int_equal(tu_outbox_rows("t.noepoch"), 0);
    PQfinish(c);
}

/* A relay whose environment asks libpq for another client encoding
 * (PGCLIENTENCODING=LATIN1, a Latin-1 host) publishes the key and the
 * payload as they were emitted, UTF-8: it took them converted, so "clé"
 * went to Kafka as Latin-1 bytes (another key, another partition) and the
 * payload was no longer UTF-8 JSON (an outside audit). */
static void a_relay_publishes_utf8_whatever_its_client_encoding(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.latin', 'cl\xc3\xa9', 'Tested', "
               "'{\"name\": \"Jos\xc3\xa9\"}')");
    PQfinish(c);
    assert_int_equal(relay_once("latin-a", NULL, "PGCLIENTENCODING=LATIN1", NULL), 0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), "t.latin", 1, 30000);
    assert_non_null(got);
    assert_int_equal(got->count, 1);
    assert_string_equal(got->msgs[0].key, "cl\xc3\xa9");
    assert_non_null(strstr(got->msgs[0].value, "Jos\xc3\xa9"));
    kt_msgs_free(got);
}

/* Headers written around emit (into the row, by a role that may) whose
 * values are not strings are published as their compact JSON text; headers
 * that are not a JSON object at all cannot be published as given: the row
 * fails, as a message too large does, into a dead letter naming them, and
 * parks its key only. Before: the values that were not strings were left
 * out without a word, and so were headers that were not an object. */
static void headers_written_around_emit_are_published_or_refused(void **state)
{
    const char *topic = "t.rawheaders";
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t.rawheaders', 'typed', 'Tested', '{}'); "
               "SELECT ferry.emit('t.rawheaders', 'array', 'Tested', '{}'); "
               "UPDATE ferry.outbox SET headers = CASE aggregateid WHEN 'typed' "
               "  THEN '{\"n\": 42, \"b\": true, \"z\": null, \"o\": {\"x\": [1]}, "
               "        \"s\": \"str\"}'::jsonb "
               "  ELSE '[1, 2]'::jsonb END WHERE topic = 't.rawheaders'");
    const char *args[] = {"--set", "max_attempts=1", NULL};
    char *log = NULL;
    assert_int_equal(relay_once("rawheaders-a", args, NULL, &log), 1);
    assert_non_null(strstr(log, "\"event\":\"message.dead_lettered\""));
    free(log);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 1, 10000);
    assert_int_equal(got->count, 1);
    const kt_msg *m = &got->msgs[0];
    assert_string_equal(m->key, "typed");
    assert_string_equal(kt_header(m, "n"), "42");
    assert_string_equal(kt_header(m, "b"), "true");
    assert_string_equal(kt_header(m, "z"), "null");
    assert_string_equal(kt_header(m, "o"), "{\"x\":[1]}");
    assert_string_equal(kt_header(m, "s"), "str");
    kt_msgs_free(got);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE "
                               "topic = 't.rawheaders' AND aggregateid = 'array' "
                               "AND reason LIKE '%headers (ferry.outbox.headers) are not a JSON "
                               "object%'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.rawheaders' "
                               "AND published_at IS NULL"), 0);
    tu_exec(c, "DELETE FROM ferry.dead_letter WHERE topic = 't.rawheaders'");
    PQfinish(c);
}

/* A message the broker will never take parks its key: after max_attempts
 * it becomes a dead letter; later messages of that key wait; every other
 * key keeps flowing. Discarding the dead letter lets the key go on. */
static void poison_message_parks_its_key_only(void **state)
{
    const char *topic = "t.poison";
    PGconn *c = tu_connect();
    tu_emit_poison(c, topic, "poison", "healthy");
    const char *args[] = {"--kafka-prop", "message.max.bytes=100000", "--set", "max_attempts=2",
                          NULL};
    char *log = NULL;
    /* Attempt 1, then attempt 2 moves it to the dead letters. */
    assert_int_equal(relay_once("poison-a", args, NULL, &log), 1);
    free(log);
    assert_int_equal(relay_once("poison-a", args, NULL, &log), 1);
    assert_non_null(strstr(log, "\"event\":\"message.dead_lettered\""));
    free(log);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 't.poison' "
                               "AND aggregateid = 'poison' AND reason LIKE '%too large%'"), 1);
    /* The key's next message waits; the other key went out. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.poison' "
                               "AND aggregateid = 'poison'"), 1);
    assert_int_equal(relay_once("poison-a", args, NULL, NULL), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.poison' "
                               "AND aggregateid = 'poison'"), 1);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 1, 5000);
    assert_int_equal(got->count, 1);
    assert_string_equal(got->msgs[0].key, "healthy");
    kt_msgs_free(got);
    /* Discarding releases the key: in the poison's place goes a marker with
     * its position (so consumers see no gap), then the key's next message. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter d WHERE "
                               "ferry.discard_dead_letter(d.id)"), 1);
    assert_int_equal(relay_once("poison-a", args, NULL, NULL), 0);
    got = kt_consume(kt_bootstrap(broker), topic, 3, 5000);
    assert_int_equal(got->count, 3);
    int markers = 0, next = 0;
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        if (strcmp(m->key, "poison") != 0)
            continue;
        const char *seq = kt_header(m, "ferry_seq");
        assert_non_null(seq);
        if (kt_header(m, "ferry_discarded") != NULL) {
            assert_non_null(strstr(kt_header(m, "ferry_discarded"), "too large"));
            assert_string_equal(m->value, "null");
            assert_string_equal(seq, "1");
            markers++;
        } else {
            assert_string_equal(seq, "2");
            next++;
        }
    }
    assert_int_equal(markers, 1);
    assert_int_equal(next, 1);
    kt_msgs_free(got);
    PQfinish(c);
}

/* Two relays split the shards between them and together publish all. */
static void two_relays_share_the_shards(void **state)
{
    const char *topic = "t.share";
    const char *args[] = {"--set", "lease_ttl_ms=3000", NULL};
    tu_proc a = relay_spawn("share-a", args, NULL);
    tu_proc b = relay_spawn("share-b", args, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) = 8 FROM ferry.lease WHERE holder = 'share-a' "
                "AND name LIKE 'shard:%' AND expires_at > now()", 60000);
    tu_await(c, "SELECT count(*) = 8 FROM ferry.lease WHERE holder = 'share-b' "
                "AND name LIKE 'shard:%' AND expires_at > now()", 60000);
    emit_n(topic, 2000, 64);
    tu_await_outbox_empty(topic, 60000);
    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&a, 30000), 0);
    assert_int_equal(tu_proc_wait(&b, 30000), 0);
    tu_proc_done(&a);
    tu_proc_done(&b);
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 2000, 10000, 2000);
    assert_int_equal(tc.duplicates, 0);
    /* Released on the way out: nobody holds a shard now. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name LIKE 'shard:%' "
                               "AND holder IS NOT NULL"), 0);
    PQfinish(c);
}

/*
 * A relay stopped (SIGSTOP) past its lease TTL loses its shards to the
 * other; when it resumes, the acknowledgements it still had pending are
 * refused, because their epoch no longer holds.
 */
static void paused_relay_loses_shards_and_acks(void **state)
{
    const char *topic = "t.pause";
    const char *args[] = {"--set", "lease_ttl_ms=2000", NULL};
    assert_int_equal(kt_command(broker, "topic-create %s 2 1", topic), 0);
    tu_proc a = relay_spawn("pause-a", args, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) = 16 FROM ferry.lease WHERE holder = 'pause-a' "
                "AND name LIKE 'shard:%' AND expires_at > now()", 30000);
    /* Slow deliveries, so that A has messages in flight when it stops. */
    assert_int_equal(kt_command(broker, "rtt 1 1500"), 0);
    emit_n(topic, 100, 4);
    /* A produced them (it cannot ack before the slow broker answers). */
    tu_proc_await_log(&a, "\"event\":\"batch.produced\"", 30000);
    kill(a.pid, SIGSTOP);
    tu_proc b = relay_spawn("pause-b", args, NULL);
    tu_await(c, "SELECT count(*) = 16 FROM ferry.lease WHERE holder = 'pause-b' "
                "AND name LIKE 'shard:%' AND expires_at > now()", 60000);
    assert_int_equal(kt_command(broker, "rtt 1 0"), 0);
    tu_await_outbox_empty(topic, 60000);
    kill(a.pid, SIGCONT);
    /* A wakes up, gets its delivery reports, tries to acknowledge. */
    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    int sa = tu_proc_wait(&a, 60000);
    assert_int_equal(tu_proc_wait(&b, 60000), 0);
    char *log = tu_proc_log(&a);
    if (getenv("FERRY_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", log);
    /* B holding every shard (awaited above) is the lease loss; this is
     * the refusal. */
    if (strstr(log, "\"event\":\"ack.refused\"") == NULL)
        fail_msg("the paused relay's late acknowledgements were not refused (exit %d)", sa);
    assert_int_equal(sa, 1);                  /* it knows not all it sent was its to ack */
    free(log);
    tu_proc_done(&a);
    tu_proc_done(&b);
    /* Duplicates expected (A's deliveries and B's resends): read it all. */
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 0, 60000, 100);
    assert_true(tc.duplicates > 0);
    PQfinish(c);
}

static int count_in(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* utime + stime of a process, in clock ticks. */
static long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');     /* after the command name */
    assert_non_null(p);
    long utime = 0, stime = 0;
    /* fields 14 and 15 of stat; p points at field 2's end */
    assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld",
                            &utime, &stime), 2);
    return utime + stime;
}

/* SIGHUP reloads nothing: the relay says so in its log, and keeps
 * running until SIGTERM. */
static void sighup_is_logged_and_ignored(void **state)
{
    tu_proc p = relay_spawn("hup-a", NULL, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.lease WHERE holder = 'hup-a'", 30000);
    PQfinish(c);
    kill(p.pid, SIGHUP);
    tu_proc_await_log(&p, "\"event\":\"signal.ignored\"", 30000);
    assert_int_equal(tu_proc_poll(&p), -1);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    char *log = tu_proc_log(&p);
    assert_int_equal(lines_with(log, "\"event\":\"signal.ignored\"", "SIGHUP", NULL), 1);
    free(log);
    tu_proc_done(&p);
}

/* The relay's connection is killed, then the whole server restarts: the
 * relay reconnects each time (the faults fired: it logged both losses)
 * and publishes what was committed meanwhile. */
static void database_restart_loses_nothing(void **state)
{
    if (fpg_external(tu_pg))
        skip();
    const char *topic = "t.dbrestart";
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = relay_spawn("db-a", args, NULL);
    int port = tu_proc_metrics_port(&p);
    tu_await_health(port, 200, NULL, 30000);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.lease WHERE holder = 'db-a' "
                "AND name LIKE 'shard:%'", 30000);
    tu_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'ferry-relay db-a'");
    PQfinish(c);
    emit_n(topic, 100, 5);
    tu_proc_await_log(&p, "\"event\":\"db.reconnected\"", 30000);
    tu_await_outbox_empty(topic, 30000);

    /* While the server is down the relay waits; it must not spin. */
    assert_int_equal(fpg_stop(tu_pg, "fast"), 0);
    tu_proc_await_log(&p, "\"event\":\"db.lost\"", 30000);
    /* Not ready, saying why, while the database is away (README, /healthz). */
    tu_await_health(port, 503, "database", 30000);
    long cpu0 = cpu_ticks(p.pid);
    struct timespec two = {2, 0};
    nanosleep(&two, NULL);      /* the window measured, not a synchronisation */
    long busy = cpu_ticks(p.pid) - cpu0;
    if (busy > sysconf(_SC_CLK_TCK) / 2)
        fail_msg("relay used %ld ticks of CPU in 2 s with the database down", busy);
    assert_int_equal(fpg_start_again(tu_pg), 0);
    emit_n(topic, 100, 5);
    tu_await_outbox_empty(topic, 60000);
    tu_await_health(port, 200, NULL, 30000);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    char *log = tu_proc_log(&p);
    assert_true(count_in(log, "\"event\":\"db.lost\"") >= 2);
    assert_true(count_in(log, "\"event\":\"db.reconnected\"") >= 2);
    /* The server's FATAL text reaches the relay as a notice when its
     * connection was idle, as the error of the statement it was running,
     * or not at all when a send hit the closed socket first (a run of the
     * suite saw no notice: the ">= 1" this test had was a race). Wherever
     * it came, it came through the logger: nothing raw lands between the
     * JSON lines. The faults fired: two losses, two reconnections. */
    print_message("server FATAL texts logged: %d as notices, %d in db.lost\n",
                  lines_with(log, "\"event\":\"db.notice\"", "terminating connection", NULL),
                  lines_with(log, "\"event\":\"db.lost\"", "terminating connection", NULL));
    assert_all_json(log);
    free(log);
    tu_proc_done(&p);
    tu_assert_topic(kt_bootstrap(broker), topic, 200, 10000, 200);
}

/* A column type changed under a running relay: its prepared statements
 * now fail ("cached plan must not change result type"); it starts fresh
 * sessions, prepares them again, and publishes everything. */
static void schema_change_under_a_running_relay(void **state)
{
    const char *topic = "t.altered";
    tu_proc p = relay_spawn("alter-a", NULL, NULL);
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.lease WHERE holder = 'alter-a' "
                "AND name LIKE 'shard:%'", 30000);
    emit_n(topic, 50, 5);
    tu_await_outbox_empty(topic, 30000);
    tu_exec(c, "ALTER TABLE ferry.outbox ALTER COLUMN type TYPE varchar(255)");
    emit_n(topic, 50, 5);
    tu_proc_await_log(&p, "\"event\":\"db.reconnected\"", 30000);
    tu_await_outbox_empty(topic, 30000);
    tu_exec(c, "ALTER TABLE ferry.outbox ALTER COLUMN type TYPE text");
    emit_n(topic, 50, 5);
    tu_await_outbox_empty(topic, 30000);
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    char *log = tu_proc_log(&p);
    /* The fault fired: a stale statement, seen as such. */
    assert_non_null(strstr(log, "cached plan must not change result type"));
    free(log);
    tu_proc_done(&p);
    PQfinish(c);
    tu_assert_topic(kt_bootstrap(broker), topic, 150, 10000, 150);
}

/* The metrics endpoint of a running relay counts what it published, and
 * has librdkafka's statistics of the broker it talks to. */
static void metrics_endpoint_counts(void **state)
{
    const char *topic = "t.metrics";
    const char *args[] = {"--metrics", "127.0.0.1:0", "--kafka-prop",
                          "statistics.interval.ms=100", NULL};
    tu_proc p = relay_spawn("metrics-a", args, NULL);
    tu_proc_await_log(&p, "\"event\":\"metrics.listen\"", 30000);
    char *log = tu_proc_log(&p);
    const char *at = strstr(log, "\"port\":");
    assert_non_null(at);
    int port = atoi(at + strlen("\"port\":"));
    /* The address it serves, logged whole. */
    char address[64];
    snprintf(address, sizeof address, "\"address\":\"127.0.0.1:%d\"", port);
    if (!strstr(log, address))
        fail_msg("no %s in the log:\n%s", address, log);
    free(log);
    assert_true(port > 0);
    emit_n(topic, 50, 5);
    tu_await_outbox_empty(topic, 30000);
    tu_http_expect(port, "/healthz", 200, NULL);
    tu_http_reply r = tu_http_get(port, "/metrics");
    assert_int_equal(r.status, 200);
    double published = 0, held = 0, e2e = 0;
    assert_int_equal(tu_prom_find(r.body, "ferry_relay_published_total", &published), 0);
    assert_true(published >= 50);
    assert_int_equal(tu_prom_find(r.body, "ferry_relay_leases_held", &held), 0);
    assert_true(held == 16);
    assert_int_equal(tu_prom_find(r.body, "ferry_relay_end_to_end_seconds_count", &e2e), 0);
    free(r.raw);
    /* Sweeps by the relay's own clock count as polls (the poll interval
     * is 1 s; waited for at most 10 s). Before: always 0. */
    double polls = 0;
    for (int64_t end = clk_mono_ms() + 10000; polls < 1 && clk_mono_ms() < end;) {
        r = tu_http_get(port, "/metrics");
        assert_int_equal(tu_prom_find(r.body, "ferry_relay_wakeups_total{by=\"poll\"}", &polls),
                         0);
        free(r.raw);
        if (polls < 1)
            clk_sleep_ms(50);
    }
    assert_true(polls >= 1);

    /* librdkafka's statistics arrive every 100 ms: within 10 s a document
     * that shows the broker up, with a round-trip time (bounded polls of
     * the endpoint; nothing else says when a document came). */
    /* librdkafka names a broker HOST:PORT/ID, as the metadata says. */
    int is_up = 0, rtt_seen = 0, more = 0;
    double updates = 0, sent = 0;
    /* Until a document that also counts the 50 messages (the first one
     * with the broker up can come before they were sent) and one with a
     * round-trip time: it is an average over the last window, 0 in a
     * window without requests, so a message is emitted now and then to
     * make requests until one shows. */
    for (int tries = 0; tries < 200 && !(is_up && sent >= 50 && rtt_seen); tries++) {
        is_up = 0;
        r = tu_http_get(port, "/metrics");
        assert_int_equal(r.status, 200);
        const char *line = strstr(r.body, "\nferry_kafka_broker_up{broker=\"");
        if (line && strstr(line, "/1\"} 1\n") == strchr(line, '}') - 3) {
            is_up = 1;
            const char *rtt = strstr(r.body, "\nferry_kafka_broker_rtt_seconds{broker=\"");
            assert_non_null(rtt);
            double seconds = atof(strchr(rtt, '}') + 2);
            assert_true(seconds >= 0 && seconds < 10);
            rtt_seen = rtt_seen || seconds > 0;
            assert_int_equal(tu_prom_find(r.body, "ferry_kafka_stats_updates_total", &updates), 0);
            assert_int_equal(tu_prom_find(r.body, "ferry_kafka_sent_messages_total", &sent), 0);
        }
        free(r.raw);
        if (is_up && sent >= 50 && !rtt_seen && tries % 4 == 0) {
            emit_n(topic, 1, 1);
            more++;
        }
        if (!(is_up && sent >= 50 && rtt_seen))
            usleep(50 * 1000);
    }
    if (!is_up)
        fail_msg("no ferry_kafka_broker_up{broker=\"...\"} 1 within 10 s");
    if (!rtt_seen)
        fail_msg("no ferry_kafka_broker_rtt_seconds above 0 after 200 looks (%d messages more)",
                 more);
    assert_true(updates >= 1);
    assert_true(sent >= 50);
    tu_await_outbox_empty(topic, 30000);    /* the messages emitted meanwhile too */
    kill(p.pid, SIGTERM);
    assert_int_equal(tu_proc_wait(&p, 30000), 0);
    tu_proc_done(&p);
}

/* A delayed message holds back the messages after it in its key (order
 * before availability); other keys are not held. */
static void delayed_message_holds_its_key(void **state)
{
    const char *topic = "t.delay";
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg later = {.topic = topic, .key = "held", .type = "Tested",
                       .payload = "{\"n\": 1}", .delay_ms = 3600 * 1000};
    ferry_msg next = {.topic = topic, .key = "held", .type = "Tested", .payload = "{\"n\": 2}"};
    ferry_msg other = {.topic = topic, .key = "free", .type = "Tested", .payload = "{\"n\": 3}"};
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &later, NULL, NULL, &err), err);
    assert_ferry_ok(ferry_emit(c, &next, NULL, NULL, &err), err);
    assert_ferry_ok(ferry_emit(c, &other, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(relay_once("delay-a", NULL, NULL, NULL), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.delay' "
                               "AND aggregateid = 'held'"), 2);
    /* When its time comes, both go, in order. */
    tu_exec(c, "UPDATE ferry.outbox SET available_at = now() WHERE topic = 't.delay'");
    assert_int_equal(relay_once("delay-a", NULL, NULL, NULL), 0);
    assert_int_equal(tu_outbox_rows(topic), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 5000, 3);
    PQfinish(c);
}

/* With retention=mark, acknowledged rows stay, marked published, and are
 * not published again. */
static void retention_marks_instead_of_deleting(void **state)
{
    const char *topic = "t.mark";
    emit_n(topic, 20, 2);
    const char *args[] = {"--set", "retention=mark", NULL};
    assert_int_equal(relay_once("mark-a", args, NULL, NULL), 0);
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.mark' "
                               "AND published_at IS NOT NULL"), 20);
    assert_int_equal(relay_once("mark-a", args, NULL, NULL), 0);
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 0, 60000, 20);
    assert_int_equal(tc.duplicates, 0);
    tu_exec(c, "DELETE FROM ferry.outbox WHERE topic = 't.mark'");
    PQfinish(c);
}

/* Replaying a dead letter puts it back where it was: published next, in
 * its place. */
static void replayed_dead_letter_goes_first(void **state)
{
    const char *topic = "t.replay";
    PGconn *c = tu_connect();
    tu_emit_poison(c, topic, "k", NULL);
    const char *small[] = {"--kafka-prop", "message.max.bytes=100000", "--set", "max_attempts=1",
                           NULL};
    assert_int_equal(relay_once("replay-a", small, NULL, NULL), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 't.replay'"),
                     1);
    /* The broker is fixed (here: the relay may send large messages). */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter d WHERE "
                               "topic = 't.replay' AND ferry.replay_dead_letter(d.id)"), 1);
    assert_int_equal(relay_once("replay-a", NULL, NULL, NULL), 0);
    /* Positions 1 then 2: the replayed one first. */
    tu_assert_topic(kt_bootstrap(broker), topic, 2, 5000, 2);
    PQfinish(c);
}

static void bad_setup_exits_with_a_clear_error(void **state)
{
    const struct {
        const char *holder;
        const char *const *args;
        int status;             /* 1: could not start; 2: a configuration error */
        const char *says;
    } cases[] = {
        {"bad-a", (const char *const[]){"--db", "host=/nonexistent-ferry dbname=x", NULL}, 1,
         "could not connect to the database"},
        {"bad-b", (const char *const[]){"--kafka", "127.0.0.1:1", "--kafka-prop",
                                        "socket.connection.setup.timeout.ms=1000", NULL}, 1,
         "could not reach Kafka"},
        {"bad-c", (const char *const[]){"--set", "batch_size=0", NULL}, 2, "batch_size"},
        /* The settings the order guarantee rests on cannot be turned off;
         * refused with the configuration's other errors: exit 2. */
        {"bad-e", (const char *const[]){"--kafka-prop", "enable.idempotence=false", NULL}, 2,
         "needs enable.idempotence=true"},
        {"bad-f", (const char *const[]){"--kafka-prop", "message.timeout.ms=5000", NULL}, 2,
         "needs message.timeout.ms=0"},
        /* A configuration error (exit 2), caught before any connection. */
        {"bad-d", (const char *const[]){"--kafka-prop", "no.such.property=1", NULL}, 2,
         "no.such.property"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *log = NULL;
        int st = relay_once(cases[i].holder, cases[i].args, NULL, &log);
        if (st != cases[i].status || strstr(log, cases[i].says) == NULL)
            fail_msg("%s: exit %d, want %d saying \"%s\"; log:\n%s", cases[i].holder, st,
                     cases[i].status, cases[i].says, log);
        free(log);
    }

    /* Lowering the shard count would strand keys on unserved shards. */
    PGconn *c = tu_connect();
    tu_assert_sql_error(c, "UPDATE ferry.settings SET shard_count = 4", "22023", NULL, NULL);
    PQfinish(c);
}

static int group_setup(void **state)
{
    return tu_broker_group_setup(state, &broker);
}

static int group_teardown(void **state)
{
    return tu_broker_group_teardown(state, broker);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(once_publishes_committed_only),
        cmocka_unit_test(a_created_at_out_of_range_is_published_within_rfc3339),
        cmocka_unit_test(headers_written_around_emit_are_published_or_refused),
        cmocka_unit_test(a_row_without_a_wal_lsn_is_published),
        cmocka_unit_test(once_that_cannot_take_a_lease_fails),
        cmocka_unit_test(a_relay_publishes_utf8_whatever_its_client_encoding),
        cmocka_unit_test(a_row_with_a_topic_kafka_cannot_take_fails_alone),
        cmocka_unit_test(notify_wakes_the_relay),
        cmocka_unit_test(order_holds_with_concurrent_writers),
        cmocka_unit_test(graceful_shutdown_loses_nothing),
        cmocka_unit_test(kill9_mid_batch_loses_nothing),
        cmocka_unit_test(broker_down_then_up),
        cmocka_unit_test(produce_errors_and_latency),
        cmocka_unit_test(fatal_error_rebuilds_producer),
        cmocka_unit_test(a_message_larger_than_the_producers_queue_is_published),
        cmocka_unit_test(poison_message_parks_its_key_only),
        cmocka_unit_test(two_relays_share_the_shards),
        cmocka_unit_test(paused_relay_loses_shards_and_acks),
        cmocka_unit_test(sighup_is_logged_and_ignored),
        cmocka_unit_test(database_restart_loses_nothing),
        cmocka_unit_test(schema_change_under_a_running_relay),
        cmocka_unit_test(metrics_endpoint_counts),
        cmocka_unit_test(delayed_message_holds_its_key),
        cmocka_unit_test(retention_marks_instead_of_deleting),
        cmocka_unit_test(replayed_dead_letter_goes_first),
        cmocka_unit_test(bad_setup_exits_with_a_clear_error),
    };
    return tu_run_group_tests(tests, group_setup, group_teardown);
}
