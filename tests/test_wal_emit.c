/*
 * test_wal_emit.c — emit in wal mode (schemas/011_wal.sql): a message is
 * a transactional logical message with prefix 'ferry', read here straight
 * from the slot through SQL (tu_wal_msgs(), pgoutput as the relay reads
 * it), and no outbox row; positions keep their meaning; what rolls back
 * (also to a savepoint) leaves nothing in WAL; bad input is refused as in
 * table mode; commit order is the stream's order and the positions'; and
 * what must wait goes to the table.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tu_order.h"
#include "tu_wal.h"

static int wal_setup(void **state)
{
    tu_clean_outbox(state);
    PGconn *c = tu_connect();
    tu_wal_prepare(c);
    tu_wal_mode(c, "wal");
    PQfinish(c);
    return 0;
}

/* The slot must exist before emit may write to WAL: a message no slot
 * decodes is lost. Back to table is always allowed (the fall-back). */
static void wal_mode_is_refused_without_its_slot(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT pg_drop_replication_slot('ferry') FROM pg_replication_slots "
               "WHERE slot_name = 'ferry'");
    tu_wal_mode(c, "table");
    tu_assert_sql_error(c, "UPDATE ferry.settings SET emit_mode = 'wal'", "55000", "emit_mode",
                        "ferry-relay slot create");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.settings WHERE emit_mode = 'table'"),
                     1);
    /* With the slot it is allowed. */
    tu_wal_prepare(c);
    tu_wal_mode(c, "wal");
    tu_wal_mode(c, "table");
    PQfinish(c);
}

/*
 * Both paths — the C API and ferry.emit() — write a logical message and
 * no row; every field comes back out of the slot byte for byte, hostile
 * strings included; the key's position row counts on as in table mode.
 */
static void wal_emit_writes_a_message_and_no_row(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg m = {.topic = "orders", .key = "o-1 \"quoted\"\n'; DROP TABLE x; --\xc3\xa9",
                   .type = "Order Placed", .aggregate_type = "Order",
                   .payload = "{\"total\": 42, \"items\": [1,2]}",
                   .headers = "{\"traceparent\": \"00-ab-cd-01\", \"x\": \"a b\\nc\"}"};
    ferry_error err;
    ferry_uuid id;
    assert_ferry_ok(ferry_emit(c, &m, NULL, &id, &err), err);
    tu_exec(c, "SELECT ferry.emit('orders', 'o-2', 'T', '[1, \"\\u00e9\"]'::jsonb)");
    tu_exec(c, "COMMIT");
    char text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&id, text);

    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM tu_wal_msgs()"), 2);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox_key WHERE seq = 1"), 2);
    char *sql = tu_sprintf("SELECT count(*) FROM tu_wal_msgs() w, ferry.settings s "
                           "WHERE w.ord = (SELECT min(ord) FROM tu_wal_msgs()) "
                           "AND w.id = '%s' AND w.token = s.wal_token AND w.seq = 1 "
                           "AND w.topic = 'orders' AND w.key = $k$%s$k$ "
                           "AND w.aggtype = 'Order' AND w.type = 'Order Placed' "
                           "AND w.payload = '{\"total\": 42, \"items\": [1, 2]}' "
                           "AND w.headers = '{\"traceparent\": \"00-ab-cd-01\", "
                           "\"x\": \"a b\\nc\"}' "
                           "AND abs(w.created_us - extract(epoch FROM now()) * 1e6) < 60e6",
                           text, m.key);
    assert_int_equal(tu_int_of(c, sql), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM tu_wal_msgs() WHERE key = 'o-2' "
                               "AND payload = '[1, \"\\u00e9\"]'::jsonb AND aggtype = '' "
                               "AND headers = '{}'"), 1);
    PQfinish(c);
}

/*
 * What rolls back publishes nothing: a whole transaction, and the part of
 * one rolled back to a savepoint — whose position is given back too, so
 * that the next message of the key takes it and no gap is left.
 */
static void rolled_back_messages_and_savepoints_leave_nothing_in_wal(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    tu_emit_ledger(c, "acct-1", "{\"n\": 0}");
    tu_exec(c, "ROLLBACK");
    tu_exec(c, "BEGIN");
    tu_emit_ledger(c, "acct-1", "{\"n\": 1}");
    tu_exec(c, "SAVEPOINT s");
    tu_emit_ledger(c, "acct-1", "{\"n\": 2}");
    tu_emit_ledger(c, "acct-2", "{\"n\": 3}");
    tu_exec(c, "ROLLBACK TO SAVEPOINT s");
    tu_emit_ledger(c, "acct-1", "{\"n\": 4}");
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM tu_wal_msgs()"), 2);
    tu_assert_str(c, "SELECT string_agg(key || ':' || seq || ':' || (payload->>'n'), ',' "
                     "ORDER BY ord) FROM tu_wal_msgs()",
                  "acct-1:1:1,acct-1:2:4");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox_key WHERE key = 'acct-2'"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
}

/* A sample of table mode's bad inputs (test_emit.c has them all): the
 * checks come before the mode is read, so they refuse the same way, and
 * nothing reaches WAL or the positions. */
static const struct {
    const char *topic, *key, *type, *payload, *headers, *field;
} bad[] = {
    {"", "k", "T", "{}", "{}", "topic"},
    {"a/b", "k", "T", "{}", "{}", "topic"},
    {"t'; DROP TABLE ferry.outbox; --", "k", "T", "{}", "{}", "topic"},
    {"t", "", "T", "{}", "{}", "key"},
    {"t", "k", "", "{}", "{}", "type"},
    {"t", "k", "T", "not json", "{}", "payload"},
    {"t", "k", "T", "\"a\\u0000b\"", "{}", "payload"},
    {"t", "k", "T", "{}", "[\"a\"]", "headers"},
    {"t", "k", "T", "{}", "{\"a\": 1}", "headers"},
    {"t", "k", "T", "{}", "{\"ferry_id\": \"x\"}", "headers"},
    {"t", "k", "T", "{}", "{\"ce_id\": \"x\"}", "headers"},
};

static void bad_input_is_refused_in_wal_mode_as_in_table_mode(void **state)
{
    PGconn *c = tu_connect();
    const char *modes[2] = {"table", "wal"};
    char *msgs[2][sizeof bad / sizeof bad[0]];
    for (int mo = 0; mo < 2; mo++) {
        tu_wal_mode(c, modes[mo]);
        tu_exec(c, "BEGIN");
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            tu_exec(c, "SAVEPOINT s");
            const char *p[5] = {bad[i].topic, bad[i].key, bad[i].type, bad[i].payload,
                                bad[i].headers};
            PGresult *res = PQexecParams(c, "SELECT ferry.emit($1, $2, $3, $4, $5)", 5, NULL,
                                         p, NULL, NULL, 0);
            const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *col = PQresultErrorField(res, PG_DIAG_COLUMN_NAME);
            if (st == NULL || strcmp(st, "22023") != 0 || col == NULL ||
                strcmp(col, bad[i].field) != 0)
                fail_msg("%s mode, case %zu: want 22023 on %s, got %s on %s: %s", modes[mo], i,
                         bad[i].field, st ? st : "-", col ? col : "-",
                         PQresultErrorMessage(res));
            msgs[mo][i] = strdup(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
            PQclear(res);
            tu_exec(c, "ROLLBACK TO SAVEPOINT s");
            /* The C path refuses before the server is asked. */
            ferry_msg m = {.topic = bad[i].topic, .key = bad[i].key, .type = bad[i].type,
                           .payload = bad[i].payload, .headers = bad[i].headers};
            ferry_error err;
            assert_int_equal(ferry_emit(c, &m, NULL, NULL, &err), FERRY_EINVAL);
            assert_string_equal(err.field, bad[i].field);
        }
        tu_exec(c, "COMMIT");
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_string_equal(msgs[0][i], msgs[1][i]);
        free(msgs[0][i]);
        free(msgs[1][i]);
    }
    assert_int_equal(tu_int(c, "SELECT count(*) FROM tu_wal_msgs()"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox_key"), 0);
    PQfinish(c);
}

/*
 * test_order.c's proof in wal mode: N transactions write in order 1..N
 * and commit N..1, each emitting just before its COMMIT. The stream
 * carries them in commit order, and the positions follow it: the k-th
 * message of the stream has position k and came from transaction N - k.
 */
static void reverse_commit_order_is_the_stream_order_and_the_positions(void **state)
{
    enum { N = 5 };
    PGconn *admin = tu_connect();
    PGconn *c[N];
    tu_reverse_commits(admin, c, N);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM tu_wal_msgs()"), N);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM (SELECT seq, payload, "
                                   "row_number() OVER (ORDER BY ord) k FROM tu_wal_msgs()) s "
                                   "WHERE seq <> k OR (payload->>'tx')::int <> 5 - k"), 0);
    tu_reverse_commits_done(admin, c, N);
    PQfinish(admin);
}

typedef struct writer {
    int n, id;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    PGconn *c = tu_connect();
    for (int i = 0; i < w->n; i++) {
        char key[16], payload[48];
        snprintf(key, sizeof key, "k%d", i % 3);
        snprintf(payload, sizeof payload, "{\"w\": %d, \"i\": %d}", w->id, i);
        tu_exec(c, "BEGIN");
        tu_emit_ledger(c, key, payload);
        tu_exec(c, "COMMIT");
    }
    PQfinish(c);
    return NULL;
}

/* Concurrent writers on three keys: in the stream, each key's positions
 * are 1, 2, 3, ... in order, without a gap or a repeat. */
static void concurrent_writers_give_each_key_gapless_positions_in_stream_order(void **state)
{
    enum { W = 4, EACH = 100 };
    pthread_t th[W];
    writer w[W];
    for (int i = 0; i < W; i++) {
        w[i] = (writer){.n = EACH, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < W; i++)
        pthread_join(th[i], NULL);
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM tu_wal_msgs()"), W * EACH);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT seq, row_number() OVER "
                               "(PARTITION BY key ORDER BY ord) k FROM tu_wal_msgs()) s "
                               "WHERE seq <> k"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
}

/*
 * What must wait goes to the table in wal mode: a delayed message; the
 * later messages of its key while it waits (they may not overtake it);
 * the messages of a key parked behind a relay dead letter. Every other
 * key goes on in WAL, and positions count on across both.
 */
static void what_must_wait_goes_to_the_table(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg m = {.topic = "ledger", .key = "late", .type = "T", .payload = "{\"n\": 1}",
                   .delay_ms = 60000};
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_emit_ledger(c, "late", "{\"n\": 2}");
    tu_emit_ledger(c, "free", "{\"n\": 3}");
    tu_exec(c, "COMMIT");
    tu_exec(c, "INSERT INTO ferry.dead_letter (message_id, topic, aggregateid, type, payload, "
               "seq, shard, created_at, reason) VALUES (gen_random_uuid(), 'ledger', 'parked', "
               "'T', '{}', 1, 0, now(), 'test')");
    tu_exec(c, "SELECT ferry.emit('ledger', 'parked', 'T', '{\"n\": 4}'::jsonb)");

    tu_assert_str(c, "SELECT string_agg(aggregateid || ':' || seq || ':' || "
                     "(payload->>'n') || ':' || (available_at > now()), ',' "
                     "ORDER BY aggregateid, seq) FROM ferry.outbox",
                  "late:1:1:true,late:2:2:false,parked:1:4:false");
    tu_assert_str(c, "SELECT string_agg(key || ':' || seq, ',') FROM tu_wal_msgs()",
                  "free:1");
    /* Once the table has published the key's rows, it is back in WAL. */
    tu_exec(c, "DELETE FROM ferry.outbox WHERE aggregateid = 'late'");
    tu_exec(c, "BEGIN");
    tu_emit_ledger(c, "late", "{\"n\": 5}");
    tu_exec(c, "COMMIT");
    tu_assert_str(c, "SELECT string_agg(key || ':' || seq, ',' ORDER BY ord) FROM tu_wal_msgs()",
                  "free:1,late:3");
    PQfinish(c);
}

/* The SQL path's messages carry the same fields as the C path's, and a
 * writer role (which cannot read the token) emits in wal mode. */
static void a_writer_role_emits_in_wal_mode_without_reading_the_token(void **state)
{
    PGconn *admin = tu_connect();
    PGconn *w = tu_connect_as_new(admin, "wal_writer", "ferry_writer");
    tu_exec(w, "SELECT ferry.emit('orders', 'o-9', 'T', '{\"a\": 1}'::jsonb)");
    tu_assert_sql_error(w, "SELECT wal_token FROM ferry.settings", "42501", NULL, NULL);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM tu_wal_msgs() w, ferry.settings s "
                                   "WHERE w.key = 'o-9' AND w.token = s.wal_token"), 1);
    PQfinish(w);
    PQfinish(admin);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(wal_mode_is_refused_without_its_slot, tu_clean_outbox),
        cmocka_unit_test_setup(wal_emit_writes_a_message_and_no_row, wal_setup),
        cmocka_unit_test_setup(rolled_back_messages_and_savepoints_leave_nothing_in_wal,
                               wal_setup),
        cmocka_unit_test_setup(bad_input_is_refused_in_wal_mode_as_in_table_mode, wal_setup),
        cmocka_unit_test_setup(reverse_commit_order_is_the_stream_order_and_the_positions,
                               wal_setup),
        cmocka_unit_test_setup(
            concurrent_writers_give_each_key_gapless_positions_in_stream_order, wal_setup),
        cmocka_unit_test_setup(what_must_wait_goes_to_the_table, wal_setup),
        cmocka_unit_test_setup(a_writer_role_emits_in_wal_mode_without_reading_the_token,
                               wal_setup),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
