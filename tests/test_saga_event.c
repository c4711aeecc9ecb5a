/*
 * test_saga_event.c — what one saga event writes, and that writing it in
 * one statement (ferry.saga_begin / ferry.saga_store, schema 013) keeps
 * the driver's guarantees: the state over the revision loaded or nothing,
 * the audit rows numbered after the saga's last one in the order they
 * happened, each "sent" row naming the outbox message it sent, and a
 * reply applied a second time (a redelivery: a crash after the commit and
 * before the offset was stored, with or without an inbox in front) writing
 * nothing at all.
 *
 * A real PostgreSQL, no broker: the reply handler reads only the message's
 * id and payload, so the test hands it replies directly, each in a
 * transaction of its own as a consumer would, or several in one as a
 * consumer's batch does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tu_saga.h"

static const char yaml[] =
    "saga: t13\nversion: 1\ndeadline: 1h\nsteps:\n"
    "  - {name: a, topic: t13.a, action: {type: DoA, payload: {o: \"${context.o}\"}},\n"
    "     compensation: {type: UndoA}, timeout: 1m}\n"
    "  - {name: b, topic: t13.b, action: {type: DoB}, compensation: {type: UndoB},\n"
    "     timeout: 1m}\n";

static ferry_saga_registry *reg;

/* tu_assert_str_of with a wanted text that tu_sprintf made. */
static void assert_str_of(PGconn *conn, char *sql, char *want)
{
    tu_assert_str_of(conn, sql, want);
    free(want);
}

static ferry_saga_registry *registry_new(void)
{
    return tu_saga_registry(yaml, "t13.yaml");
}

static void start(PGconn *conn, char id[FERRY_UUID_STRING_SIZE])
{
    ferry_error err;
    ferry_uuid uid;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, reg, "t13", "{\"o\": 0.10}", &uid, &err), err);
    tu_exec(conn, "COMMIT");
    ferry_uuid_format(&uid, id);
}

/* The reply a participant would send to the step's latest command, as
 * the consumer hands it over, applied in the transaction open on conn
 * (a consumer's batch applies several in one). */
static void reply_in_tx(PGconn *conn, const char *id, int step, int succeeded)
{
    long long round = tu_int_of(conn, tu_sprintf(
        "SELECT (headers->>'saga_round')::int FROM ferry.outbox WHERE aggregateid = '%s' "
        "AND headers->>'saga_step' = '%d' ORDER BY seq DESC LIMIT 1", id, step));
    long long attempt = tu_int_of(conn, tu_sprintf(
        "SELECT (headers->>'saga_attempt')::int FROM ferry.outbox WHERE aggregateid = '%s' "
        "AND headers->>'saga_step' = '%d' ORDER BY seq DESC LIMIT 1", id, step));
    json_t *payload = json_pack("{s:s, s:i, s:s, s:I, s:I, s:b}", "saga_id", id, "step", step,
                                "kind", "action", "round", (json_int_t)round, "attempt",
                                (json_int_t)attempt, "succeeded", succeeded);
    assert_non_null(payload);
    ferry_uuid mid;
    char mids[FERRY_UUID_STRING_SIZE];
    ferry_error err;
    assert_ferry_ok(ferry_uuid_v7(&mid), err);
    ferry_uuid_format(&mid, mids);
    ferry_message m = {.topic = FERRY_SAGA_REPLY_TOPIC_DEFAULT, .key = "", .id = mids,
                       .type = FERRY_SAGA_REPLY_TYPE, .aggregate_type = "", .payload = payload,
                       .offset = -1, .attempt = 1};
    ferry_code rc = ferry_saga_reply_handler(conn, &m, reg, &err);
    json_decref(payload);
    assert_ferry_ok(rc, err);
}

/* As reply_in_tx, in a transaction of its own. */
static void reply(PGconn *conn, const char *id, int step, int succeeded)
{
    tu_exec(conn, "BEGIN");
    reply_in_tx(conn, id, step, succeeded);
    tu_exec(conn, "COMMIT");
}

/* The audit trail as "n:step:status", and whether every "sent" row names
 * an outbox message of the saga with its command's type. */
#define TRAIL "SELECT string_agg(n || ':' || step || ':' || status, ',' ORDER BY n) " \
              "FROM ferry.saga_step WHERE saga_id = '%s'"
#define SENT_MATCH "SELECT count(*) FROM ferry.saga_step s JOIN ferry.outbox o " \
                   "ON o.id = s.message_id WHERE s.saga_id = '%s' AND s.status = 'sent' " \
                   "AND o.aggregateid = s.saga_id::text AND o.headers->>'saga_key' = " \
                   "s.detail->>'key'"
#define COUNT_OUT "SELECT count(*) FROM ferry.outbox WHERE aggregateid = '%s'"
#define VERSION "SELECT version FROM ferry.saga WHERE id = '%s'"

/* Start, a reply, the same reply again: the second changes nothing. */
static void a_reply_applied_twice_writes_nothing_the_second_time(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent");
    assert_int_equal(tu_int_of(conn, tu_sprintf(SENT_MATCH, id)), 1);
    /* The command's payload kept its digits through the one statement. */
    tu_assert_str_of(conn, tu_sprintf("SELECT payload->>'o' FROM ferry.outbox WHERE "
                                      "aggregateid = '%s'", id), "0.10");

    reply(conn, id, 0, 1);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent,2:a:succeeded,3:b:sent");
    assert_int_equal(tu_int_of(conn, tu_sprintf(SENT_MATCH, id)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, id)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(VERSION, id)), 2);

    /* Redelivered (a new message id: no inbox would catch it). */
    reply(conn, id, 0, 1);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent,2:a:succeeded,3:b:sent");
    assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, id)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(VERSION, id)), 2);

    /* The failure of b, twice: a's compensation is sent once. */
    reply(conn, id, 1, 0);
    reply(conn, id, 1, 0);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id),
                     "1:a:sent,2:a:succeeded,3:b:sent,4:b:failed,5:a:sent");
    tu_assert_str_of(conn, tu_sprintf("SELECT string_agg(type, ',' ORDER BY seq) FROM "
                                      "ferry.outbox WHERE aggregateid = '%s'", id),
                     "DoA,DoB,UndoA");
    assert_int_equal(tu_int_of(conn, tu_sprintf(SENT_MATCH, id)), 3);
    assert_int_equal(tu_int_of(conn, tu_sprintf(VERSION, id)), 3);
    PQfinish(conn);
}

/*
 * Several events of two sagas in one transaction, as a consumer's batch
 * applies them: each event sees the one before it on its saga (the row
 * locked and updated again in the same transaction, the revision check
 * passing on the revision the first stored), a repeat in the same
 * transaction writes nothing, and a rollback takes every event back at
 * once -- after which the same events apply again, the way a batch
 * applied apart does.
 */
static void events_of_two_sagas_in_one_transaction_see_each_other(void **state)
{
    PGconn *conn = tu_connect();
    char s1[FERRY_UUID_STRING_SIZE], s2[FERRY_UUID_STRING_SIZE];
    start(conn, s1);
    start(conn, s2);
    for (int pass = 0; pass < 2; pass++) {
        tu_exec(conn, "BEGIN");
        reply_in_tx(conn, s1, 0, 1);
        reply_in_tx(conn, s2, 0, 1);
        reply_in_tx(conn, s1, 0, 1);        /* the same reply again */
        reply_in_tx(conn, s1, 1, 1);        /* b succeeded: s1 completes */
        tu_assert_str_of(conn, tu_sprintf("SELECT state || ' ' || version FROM ferry.saga "
                                          "WHERE id = '%s'", s1), "completed 3");
        tu_exec(conn, pass == 0 ? "ROLLBACK" : "COMMIT");
        if (pass == 0) {
            /* Nothing of it stays. */
            for (int k = 0; k < 2; k++) {
                const char *id = k ? s2 : s1;
                tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent");
                assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, id)), 1);
                assert_int_equal(tu_int_of(conn, tu_sprintf(VERSION, id)), 1);
            }
        }
    }
    tu_assert_str_of(conn, tu_sprintf(TRAIL, s1),
                     "1:a:sent,2:a:succeeded,3:b:sent,4:b:succeeded");
    tu_assert_str_of(conn, tu_sprintf(TRAIL, s2), "1:a:sent,2:a:succeeded,3:b:sent");
    tu_assert_str_of(conn, tu_sprintf("SELECT state FROM ferry.saga WHERE id = '%s'", s1),
                     "completed");
    tu_assert_str_of(conn, tu_sprintf("SELECT state FROM ferry.saga WHERE id = '%s'", s2),
                     "running");
    assert_int_equal(tu_int_of(conn, tu_sprintf(SENT_MATCH, s1)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(SENT_MATCH, s2)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, s1)), 2);
    assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, s2)), 2);
    PQfinish(conn);
}

/* A store over a revision that is no longer current writes nothing: not
 * the state, not the audit rows, not the commands. */
static void a_store_over_a_stale_revision_writes_nothing(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
    long long version = tu_int_of(conn, tu_sprintf(VERSION, id));
    tu_assert_str_of(conn, tu_sprintf(
        "SELECT ferry.saga_store('%s', %lld, %lld, 'compensating', 0, 0, '{}', "
        "'[{\"step\": \"a\", \"kind\": \"compensation\", \"status\": \"sent\", "
        "\"attempt\": 1}]', "
        "'[{\"id\": \"00000000-0000-7000-8000-000000000013\", \"topic\": \"t13.a\", "
        "\"key\": \"%s\", \"type\": \"UndoA\", \"aggregate_type\": \"t13\", "
        "\"payload\": \"{}\", \"headers\": \"{}\", \"delay_ms\": 0}]')::text",
        id, version + 5, version + 6, id), "false");
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent");
    assert_int_equal(tu_int_of(conn, tu_sprintf(COUNT_OUT, id)), 1);
    assert_str_of(conn, tu_sprintf("SELECT state || ' ' || version FROM ferry.saga WHERE "
                                   "id = '%s'", id),
                  tu_sprintf("running %lld", version));
    PQfinish(conn);
}

/* Rows an older library wrote one at a time (ferry.saga_audit) and the
 * rows of an event written at once share one numbering: no gap, no
 * number taken twice. */
static void audit_rows_follow_those_of_an_older_library(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
    tu_exec_of(conn, tu_sprintf("SELECT ferry.saga_audit('%s', 'a', 'action', 'sent', 1, NULL, "
                                "'{\"by\": \"an older library\"}')", id));
    reply(conn, id, 0, 1);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id),
                     "1:a:sent,2:a:sent,3:a:succeeded,4:b:sent");
    PQfinish(conn);
}

/* The next due saga is found, locked and loaded in one statement, by the
 * transaction's clock when no time is given; a saga another worker holds
 * is passed by. */
static void next_due_is_loaded_with_it_by_the_database_clock(void **state)
{
    PGconn *conn = tu_connect(), *other = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
    /* Out of the way: every other saga of this binary. */
    tu_exec_of(conn, tu_sprintf("UPDATE ferry.saga SET state = 'completed' WHERE id <> '%s'", id));
    const char *due = "SELECT count(*) FROM ferry.saga_lock_next_due(NULL, '{}')";
    assert_int_equal(tu_int(conn, due), 0);       /* its timer is a minute away */
    tu_exec_of(conn, tu_sprintf("UPDATE ferry.saga SET deadline = now() - interval '1 second' "
                                "WHERE id = '%s'", id));
    assert_str_of(conn, tu_sprintf("SELECT id::text || ' ' || definition || ' ' || version "
                                   "|| ' ' || (engine::jsonb->>'status') FROM "
                                   "ferry.saga_lock_next_due(NULL, '{}')"),
                  tu_sprintf("%s t13 1 running", id));
    /* Held by another worker: skipped, not waited for. */
    tu_exec(other, "BEGIN");
    assert_int_equal(tu_int_of(other, tu_sprintf("SELECT count(*) FROM "
                                                 "ferry.saga_lock_next_due(NULL, '{}')")), 1);
    assert_int_equal(tu_int(conn, due), 0);
    tu_exec(other, "ROLLBACK");
    /* Skipped when named. */
    assert_int_equal(tu_int_of(conn, tu_sprintf("SELECT count(*) FROM "
                                                "ferry.saga_lock_next_due(NULL, '{%s}')", id)),
                     0);
    tu_exec_of(conn, tu_sprintf("UPDATE ferry.saga SET state = 'completed' WHERE id = '%s'", id));
    PQfinish(other);
    PQfinish(conn);
}

/* The ferry functions this transaction called, by name, and how often
 * (track_functions = 'pl' set in it): "name:calls,..." for names. */
#define CALLS "SELECT coalesce(string_agg(funcname || ':' || calls, ',' ORDER BY funcname), '') " \
              "FROM pg_stat_xact_user_functions WHERE schemaname = 'ferry' AND funcname IN (%s)"

/*
 * What a reply and a participant's answer cost the server, in calls of
 * ferry functions: a reply its lock and its store (and the store its
 * emits), an answer its look-up and its finish -- no helper called in
 * between (schema 19). Each call of a SECURITY DEFINER function with a
 * SET clause saves and restores the settings and recomputes the search
 * path; bench-saga's profile counted them among the server time a saga
 * costs.
 */
static void a_reply_and_an_answer_call_no_helper_function(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "SET LOCAL track_functions = 'pl'");
    reply_in_tx(conn, id, 0, 1);
    /* Read in the transaction (the view is its own), compared after it
     * ended: a failed comparison must not leave the saga's row locked for
     * the tests after this one. */
    char *got = tu_str_of(conn, tu_sprintf(CALLS, "'saga_lock', 'saga_store', 'saga_record', "
                                                  "'saga_audit', 'saga_save'"));
    tu_exec(conn, "COMMIT");
    assert_string_equal(got, "saga_lock:1,saga_store:1");
    free(got);
    tu_assert_str_of(conn, tu_sprintf(TRAIL, id), "1:a:sent,2:a:succeeded,3:b:sent");

    tu_exec(conn, "BEGIN");
    tu_exec(conn, "SET LOCAL track_functions = 'pl'");
    tu_exec_of(conn, tu_sprintf("SELECT * FROM ferry.participant_begin('t19', '%s', 0, 'action', "
                                "0)", id));
    tu_exec_of(conn, tu_sprintf("SELECT ferry.participant_finish('t19', '%s', 0, 'action', 0, "
                                "true, 'applied', NULL, NULL, gen_random_uuid(), '%s', '%s/t19', "
                                "'%s', '{}', '{}')", id, FERRY_SAGA_REPLY_TOPIC_DEFAULT, id,
                                FERRY_SAGA_REPLY_TYPE));
    got = tu_str_of(conn, tu_sprintf(CALLS, "'participant_begin', 'participant_finish', "
                                            "'participant_record'"));
    tu_exec(conn, "COMMIT");
    assert_string_equal(got, "participant_begin:1,participant_finish:1");
    free(got);
    tu_assert_str_of(conn, tu_sprintf("SELECT outcome FROM ferry.participant_command WHERE "
                                      "participant = 't19' AND saga_id = '%s'", id), "applied");
    PQfinish(conn);
}

/*
 * What ferry.participant_begin answers, whether it made the step's row
 * or found it: a new step's first key is new, nothing ran, nothing is
 * compensated; a key recorded is answered with its outcome; another key
 * of the step sees the action applied. The outcome of a key is the key's
 * own: with the step's row gone (removed by hand), a key processed
 * before is still not new.
 */
static void a_participant_look_up_answers_alike_for_a_new_and_a_known_step(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, id);
#define BEGIN_OF "SELECT coalesce(outcome, '-') || ' ' || action_applied || ' ' || compensated " \
                 "FROM ferry.participant_begin('t19b', '%s', 0, '%s', 0)"
    tu_exec(conn, "BEGIN");
    tu_assert_str_of(conn, tu_sprintf(BEGIN_OF, id, "action"), "- false false");
    tu_exec_of(conn, tu_sprintf("SELECT ferry.participant_finish('t19b', '%s', 0, 'action', 0, "
                                "true, 'applied', NULL, NULL, gen_random_uuid(), '%s', '%s/t19b', "
                                "'%s', '{}', '{}')", id, FERRY_SAGA_REPLY_TOPIC_DEFAULT, id,
                                FERRY_SAGA_REPLY_TYPE));
    tu_exec(conn, "COMMIT");
    tu_exec(conn, "BEGIN");
    tu_assert_str_of(conn, tu_sprintf(BEGIN_OF, id, "action"), "applied true false");
    tu_assert_str_of(conn, tu_sprintf(BEGIN_OF, id, "compensation"), "- true false");
    tu_exec(conn, "COMMIT");
    tu_exec_of(conn, tu_sprintf("DELETE FROM ferry.participant_step WHERE participant = 't19b' "
                                "AND saga_id = '%s'", id));
    tu_exec(conn, "BEGIN");
    tu_assert_str_of(conn, tu_sprintf(BEGIN_OF, id, "action"), "applied false false");
    tu_exec(conn, "ROLLBACK");
#undef BEGIN_OF
    PQfinish(conn);
}

static int calls;

static ferry_code count_call(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    calls++;
    return FERRY_OK;
}

/* A participant called outside a transaction is refused before anything
 * runs: its callback would otherwise apply in autocommit, with no reply
 * and no record to go with it. */
static void a_participant_outside_a_transaction_is_refused_first(void **state)
{
    PGconn *conn = tu_connect();
    ferry_participant p = {.name = "t13-p", .action = count_call, .compensation = count_call};
    ferry_message m = {.topic = "t13.a", .key = "", .id = "00000000-0000-7000-8000-000000000001",
                       .type = "DoA", .aggregate_type = "", .offset = -1, .attempt = 1};
    ferry_error err;
    calls = 0;
    assert_int_equal(ferry_participant_handle(conn, &m, &p, NULL, &err), FERRY_ESTATE);
    assert_non_null(strstr(err.message, "no transaction is open"));
    assert_int_equal(calls, 0);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    PQfinish(conn);
}

/* Timers due together fire in batches, each batch one transaction (its
 * sagas share one updated_at, the transaction's now()), not one
 * transaction -- one commit, one flush -- per saga; each saga's timeout is
 * applied once. */
static void timers_due_together_fire_in_a_few_transactions(void **state)
{
    enum { N = 40 };
    PGconn *conn = tu_connect(), *idle = tu_connect();
    tu_exec_of(conn, tu_sprintf("UPDATE ferry.saga SET state = 'completed'"));
    tu_exec(conn, "CREATE TABLE t_batch (id uuid)");
    for (int i = 0; i < N; i++) {
        char id[FERRY_UUID_STRING_SIZE];
        start(conn, id);
        tu_exec_of(conn, tu_sprintf("INSERT INTO t_batch VALUES ('%s')", id));
    }
    long long now_ms = tu_int(conn, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint");
    int fired = -1;
    ferry_error err;
    assert_ferry_ok(ferry_saga_fire_timers(idle, reg, now_ms + 120000, 1000, &fired, &err),
                    err);
    assert_int_equal(fired, N);
    /* Step a never answered: it may have run, so it is compensated. */
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga s JOIN t_batch b USING (id) "
                                  "WHERE s.state = 'compensating' AND s.version = 2"), N);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.outbox o JOIN t_batch b ON "
                                  "o.aggregateid = b.id::text WHERE o.type = 'UndoA'"), N);
    /* 40 sagas, batches of 32: two transactions (one per saga before). */
    assert_int_equal(tu_int(conn, "SELECT count(DISTINCT s.updated_at) FROM ferry.saga s "
                                  "JOIN t_batch b USING (id)"), 2);
    /* Nothing is due any more: a second call fires nothing. */
    assert_ferry_ok(ferry_saga_fire_timers(idle, reg, now_ms + 120000, 1000, &fired, &err),
                    err);
    assert_int_equal(fired, 0);
    assert_int_equal(PQtransactionStatus(idle), PQTRANS_IDLE);
    tu_exec(conn, "UPDATE ferry.saga SET state = 'completed'");
    PQfinish(idle);
    PQfinish(conn);
}

static int setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    reg = registry_new();
    return 0;
}

static int teardown(void **state)
{
    ferry_saga_registry_destroy(reg);
    return tu_group_teardown(state);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_reply_applied_twice_writes_nothing_the_second_time),
        cmocka_unit_test(a_store_over_a_stale_revision_writes_nothing),
        cmocka_unit_test(events_of_two_sagas_in_one_transaction_see_each_other),
        cmocka_unit_test(audit_rows_follow_those_of_an_older_library),
        cmocka_unit_test(a_reply_and_an_answer_call_no_helper_function),
        cmocka_unit_test(a_participant_look_up_answers_alike_for_a_new_and_a_known_step),
        cmocka_unit_test(next_due_is_loaded_with_it_by_the_database_clock),
        cmocka_unit_test(a_participant_outside_a_transaction_is_refused_first),
        cmocka_unit_test(timers_due_together_fire_in_a_few_transactions),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
