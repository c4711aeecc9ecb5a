/*
 * test_reconcile_saga.c — ferry-reconcile's saga sweeps ("sagas",
 * "compensations") and compliance rules ("rules"), through the real
 * program (build/asan/ferry-reconcile, or $FERRY_RECONCILE_BIN) against a
 * real PostgreSQL, with a `ferry-relay run` child publishing the outbox to
 * the development broker (retention "mark": published rows stay in
 * ferry.outbox, where the tests read what was sent).
 *
 * Nothing in this file fires saga timers but the reconciler: no worker
 * calls ferry_saga_fire_timers. The per-sweep tests poll no consumer
 * either, so a saga moves only when the reconciler moves it; they make a
 * saga's timers fall due by moving its clock back (age(): the stored
 * engine times and ferry.saga.deadline together, as if it had started
 * that long ago). The end-to-end test runs the participants and the
 * reply consumer in this thread and lets real time pass.
 *
 * The definitions are the YAML files of tests/data/reconcile/sagas (the reconciler
 * loads the same files with --sagas, so the hashes match); the rules
 * files those of tests/data/reconcile/rules. The reconciler connects as a
 * login role in ferry_reconciler, so its privileges are tested too.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "tu_saga.h"

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define DATA "tests/data/reconcile"
#define SAGAS DATA "/sagas"
#define RULES DATA "/rules"

static kt_broker *broker;
static tu_proc relay;
static ferry_saga_registry *reg;
static char *rc_conninfo;          /* the reconciler's: role rc_reconciler */
static char *last_out, *last_err;  /* of the last ferry-reconcile run */

static ferry_consumer *cons[TU_C_COUNT];

static void relay_start(void);

static const char *const topic_of[TU_C_COUNT] = {
    [TU_C_ORCH] = FERRY_SAGA_REPLY_TOPIC_DEFAULT, [TU_C_PAYMENT] = "rc.payments.commands",
    [TU_C_INVENTORY] = "rc.inventory.commands", [TU_C_SHIPPING] = "rc.shipping.commands",
};

/* ------------------------------------------------------------ the program */

/* Run `ferry-reconcile CMD --db <ours> ARGS... --no-progress` (ARGS
 * NULL-terminated); its output stays in last_out / last_err. */
static int reconcile(const char *cmd, ...)
{
    const char *args[32] = {cmd, "--db", rc_conninfo};
    int n = 3;
    va_list ap;
    va_start(ap, cmd);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 30)
        args[n++] = a;
    va_end(ap);
    args[n++] = "--no-progress";
    args[n] = NULL;
    free(last_out);
    free(last_err);
    last_out = last_err = NULL;
    int st = tu_reconcile(args, 120000, &last_out, &last_err);
    if (getenv("FERRY_TEST_VERBOSE"))
        fprintf(stderr, "--- ferry-reconcile %s: exit %d\n%s%s", cmd, st, last_out, last_err);
    return st;
}

#define assert_exit(st, want)                                                               \
    do {                                                                                    \
        int st_ = (st);                                                                     \
        if (st_ != (want))                                                                  \
            fail_msg("ferry-reconcile exited %d, want %d\n-- stdout:\n%s-- stderr:\n%s",    \
                     st_, (want), last_out ? last_out : "", last_err ? last_err : "");     \
    } while (0)

static void assert_said(const char *where, const char *text, const char *want)
{
    if (text == NULL || strstr(text, want) == NULL)
        fail_msg("ferry-reconcile's %s lacks \"%s\"\n-- stdout:\n%s-- stderr:\n%s", where, want,
                 last_out ? last_out : "", last_err ? last_err : "");
}
#define assert_out(want) assert_said("stdout", last_out, (want))
#define assert_err(want) assert_said("stderr", last_err, (want))

/* ------------------------------------------------------------ participants */

/* Commands lost on the way: an action whose payload says behave "silent",
 * the first send of a compensation whose payload says undo "lose-first".
 * Neither applied nor answered; kept in t_swallowed with their key. */
static ferry_code participant_handler(PGconn *conn, const ferry_message *m, void *arg,
                                      ferry_error *err)
{
    const ferry_participant *p = arg;
    const char *kind = ferry_message_header(m, "saga_kind");
    const char *attempt = ferry_message_header(m, "saga_attempt");
    const char *behave = json_string_value(json_object_get(m->payload, "behave"));
    const char *undo = json_string_value(json_object_get(m->payload, "undo"));
    int lose = kind != NULL
               && ((strcmp(kind, "action") == 0 && behave && strcmp(behave, "silent") == 0)
                   || (strcmp(kind, "compensation") == 0 && undo
                       && strcmp(undo, "lose-first") == 0 && attempt
                       && strcmp(attempt, "1") == 0));
    if (lose) {
        const char *pp[5] = {p->name, ferry_message_header(m, "saga_id"), kind,
                             ferry_message_header(m, "saga_key"), attempt};
        PGresult *res = PQexecParams(conn, "INSERT INTO t_swallowed (participant, saga, kind, "
                                           "key, attempt) VALUES ($1, $2, $3, $4, $5)",
                                     5, NULL, pp, NULL, NULL, 0);
        ferry_code rc = PQresultStatus(res) == PGRES_COMMAND_OK
                            ? FERRY_OK : ferry_error_from_pg(err, conn, res, "swallow");
        PQclear(res);
        return rc;
    }
    ferry_participant_outcome oc;
    return ferry_participant_handle(conn, m, p, &oc, err);
}

/* max.poll.interval longer than tu_group_props': the consumers are not
 * polled while a ferry-reconcile run goes on. */
static const char *const group_props[] = {
    "session.timeout.ms=6000", "heartbeat.interval.ms=500", "max.poll.interval.ms=60000",
    NULL,
};

static ferry_consumer *consumer_new(int which)
{
    return tu_saga_consumer_new(which, broker, topic_of[which], reg, participant_handler,
                                group_props);
}

/* Poll every consumer for about ms milliseconds. Timers are not fired. */
static void pump(int ms)
{
    for (int64_t end = clk_mono_ms() + ms; clk_mono_ms() < end;) {
        ferry_error err;
        for (int i = 0; i < TU_C_COUNT; i++)
            assert_ferry_ok(ferry_consumer_poll(cons[i], 5, &err), err);
    }
}

/* ------------------------------------------------------------ sagas */

static void start(PGconn *conn, const char *def, const char *order, const char *payment,
                  const char *undo, char id[FERRY_UUID_STRING_SIZE])
{
    char *ctx = tu_sprintf("{\"order_id\": \"%s\", \"payment\": \"%s\", \"inventory\": \"ok\", "
                           "\"shipping\": \"ok\", \"undo\": \"%s\"}", order, payment, undo);
    tu_saga_start(conn, reg, def, ctx, id);
    free(ctx);
}

/* Move saga id's clock back by ms: as if it had started that long ago
 * and no timer had fired since. */
static void age(PGconn *conn, const char *id, long long ms)
{
    char *sql = tu_sprintf(
        "UPDATE ferry.saga SET deadline = deadline - %lld * interval '1 millisecond', "
        "engine = engine || jsonb_build_object("
        "  'started_ms', (engine->>'started_ms')::bigint - %lld,"
        "  'deadline_ms', (engine->>'deadline_ms')::bigint - %lld,"
        "  'timer_ms', greatest((engine->>'timer_ms')::bigint - %lld, 0),"
        "  'wake_ms', greatest((engine->>'wake_ms')::bigint - %lld, 0)) "
        "WHERE id = '%s'", ms, ms, ms, ms, ms, id);
    tu_exec(conn, sql);
    free(sql);
}

/* Formats go through tu_sprintf, so that -Wformat checks them. */
#define q(conn, ...) tu_int_of((conn), tu_sprintf(__VA_ARGS__))
#define qs(conn, ...) tu_str_of((conn), tu_sprintf(__VA_ARGS__))
#define assert_qs(conn, fmt, id, want) tu_assert_str_of((conn), tu_sprintf((fmt), (id)), (want))
#define assert_str(conn, sql, want) tu_assert_str_of((conn), tu_sprintf("%s", (sql)), (want))

/* Everything a check must leave as it was: every saga's state, version
 * and audit trail, every message ever emitted (the per-key positions),
 * the reconciler's own records. malloc'd. */
#define SNAPSHOT                                                                             \
    "SELECT coalesce((SELECT string_agg(s.id || ':' || s.state || ':' || s.version || ':' ||" \
    "  (SELECT count(*) FROM ferry.saga_step t WHERE t.saga_id = s.id), ',' ORDER BY s.id)"   \
    "  FROM ferry.saga s), '') || '|' || (SELECT coalesce(sum(seq), 0) FROM ferry.outbox_key)" \
    "  || '|' || (SELECT count(*) || ':' || coalesce(sum(times), 0)"                          \
    "  FROM ferry.reconcile_action) || '|' || (SELECT count(*) FROM t_reservation)"

/* Fail unless SNAPSHOT reads as before did. */
static void assert_unchanged(PGconn *conn, const char *before)
{
    char *after = tu_str(conn, SNAPSHOT);
    assert_string_equal(after, before);
    free(after);
}

/* The idempotency keys of a saga's sends of one step and kind, in order,
 * from the outbox (the relay marks published rows, it does not delete). */
#define KEYS "SELECT string_agg(headers->>'saga_key' || '#' || (headers->>'saga_attempt'), ',' " \
             "ORDER BY seq) FROM ferry.outbox WHERE aggregateid = '%s' AND type = '%s'"

static int clean(void **state)
{
    return tu_exec_once("DELETE FROM ferry.saga; "
                        "TRUNCATE ferry.reconcile_action, ferry.reconcile_pass, t_reservation, "
                        "t_log");
}

/* ------------------------------------------------------------ tests: sagas */

/* A step's reply never came and no worker resent it: check reports it and
 * changes nothing; repair fires the timer, and the engine resends the step
 * under the same key; a check right after is clean. */
static void missed_step_timeout_is_resent(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "order", "o-step", "silent", "ok", id);
    age(conn, id, 2 * 60 * 1000);   /* payment's 30s timer passed; the 10m deadline did not */
    char *before = tu_str(conn, SNAPSHOT);

    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 4);
    assert_out("past_deadline");
    assert_out("definition order: 1 running saga past its timer");
    assert_unchanged(conn, before);     /* check changed nothing */

    /* --json: per definition, with the overdue saga among the samples. */
    assert_exit(reconcile("check", "--sagas", SAGAS, "--json", NULL), 4);
    json_error_t jerr;
    json_t *doc = json_loads(last_out, 0, &jerr);
    if (doc == NULL)
        fail_msg("--json output is not JSON: %s\n%s", jerr.text, last_out);
    json_t *f = json_array_get(json_object_get(json_object_get(json_object_get(doc, "sweeps"),
                                                               "sagas"), "findings"), 0);
    assert_string_equal(json_string_value(json_object_get(f, "problem")), "past_deadline");
    assert_string_equal(json_string_value(json_object_get(f, "outcome")), "found");
    json_t *detail = json_object_get(f, "detail");
    assert_int_equal(json_integer_value(json_object_get(detail, "count")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(detail, "samples"), 0)),
                        id);
    assert_true(json_integer_value(json_object_get(detail, "most_overdue_ms")) >= 89000);
    json_decref(doc);

    assert_exit(reconcile("repair", "--sagas", SAGAS, NULL), 1);
    assert_out("[repaired] past_deadline");
    /* The engine resent payment's action: same key, second attempt. */
    assert_qs(conn, "SELECT state || ':' || version || ':' || current_step FROM ferry.saga "
                    "WHERE id = '%s'", id, "running:2:0");
    char *keys = qs(conn, KEYS, id, "ReservePayment");
    char *want = tu_sprintf("%s/0/action/0#1,%s/0/action/0#2", id, id);
    assert_string_equal(keys, want);
    free(keys);
    free(want);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 0);
    free(before);
    PQfinish(conn);
}

/* The saga's own deadline passed and nobody fired it: repair makes the
 * engine give up the step that may have run and compensate. */
static void missed_deadline_compensates(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "order", "o-deadline", "silent", "ok", id);
    age(conn, id, 60 * 60 * 1000);
    char *before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 4);
    assert_unchanged(conn, before);
    free(before);

    assert_exit(reconcile("repair", "--sagas", SAGAS, NULL), 1);
    assert_qs(conn, "SELECT state || ':' || (engine->>'reason') FROM ferry.saga WHERE id = '%s'",
              id, "compensating:deadline");
    /* The timeout is in the audit trail, and the compensation went out. */
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s' AND "
                             "step = 'payment' AND kind = 'action' AND status = 'timed_out' "
                             "AND detail->>'reason' = 'deadline'", id), 1);
    char *keys = qs(conn, KEYS, id, "ReleasePayment");
    char *want = tu_sprintf("%s/0/compensation/0#1", id);
    assert_string_equal(keys, want);
    free(keys);
    free(want);
    /* The repair pass is on record. */
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.reconcile_pass WHERE status = 1 "
                                  "AND report->'sweeps'->'sagas'->'counts'->>'repaired' = '1'"),
                     1);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 0);
    PQfinish(conn);
}

/* A compensation that was never answered: repair resends it under the
 * same idempotency key, as many times as it takes. */
static void unanswered_compensation_is_resent(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "order", "o-comp", "silent", "ok", id);
    ferry_error err;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_cancel(conn, reg, id, &err), err);
    tu_exec(conn, "COMMIT");
    age(conn, id, 2 * 60 * 1000);   /* the compensation's 30s timer passed */
    char *before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 4);
    assert_out("compensation_unfinished");
    assert_out("compensating payment x1, up to 1 attempt so far");
    assert_unchanged(conn, before);
    free(before);

    for (int round = 2; round <= 3; round++) {
        assert_exit(reconcile("repair", "--sagas", SAGAS, NULL), 1);
        assert_out("[repaired] compensation_unfinished");
        assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 0);
        age(conn, id, 2 * 60 * 1000);
    }
    char *keys = qs(conn, KEYS, id, "ReleasePayment");
    char *want = tu_sprintf("%s/0/compensation/0#1,%s/0/compensation/0#2,"
                            "%s/0/compensation/0#3", id, id, id);
    assert_string_equal(keys, want);
    free(keys);
    free(want);
    assert_qs(conn, "SELECT state || ':' || (engine->'steps'->0->>'compensation_attempts') FROM "
                    "ferry.saga WHERE id = '%s'", id, "compensating:3");
    PQfinish(conn);
}

/* Without the definition the reconciler cannot run the engine: the sagas
 * are left, and the message says what to pass. A definition changed since
 * the sagas started is refused too. */
static void missing_or_changed_definition_leaves_them(void **state)
{
    PGconn *conn = tu_connect();
    char a[FERRY_UUID_STRING_SIZE], b[FERRY_UUID_STRING_SIZE];
    start(conn, "order", "o-nodef-1", "silent", "ok", a);
    start(conn, "order", "o-nodef-2", "silent", "ok", b);
    age(conn, a, 60 * 60 * 1000);
    age(conn, b, 60 * 60 * 1000);
    char *before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("repair", NULL), 4);
    assert_out("[left] past_deadline: definition order: 2 running sagas past their timer");
    assert_out("definition order not loaded: pass --sagas DIR");
    assert_unchanged(conn, before);

    assert_exit(reconcile("repair", "--sagas", DATA "/sagas-edited", NULL), 4);
    char *h = qs(conn, "SELECT definition_hash FROM ferry.saga WHERE id = '%s'", a);
    char *want = tu_sprintf("stored under definition hash %s, the loaded order has hash", h);
    assert_out(want);
    free(want);
    free(h);
    assert_unchanged(conn, before);
    free(before);

    /* With the definition, both are fired in one pass. */
    assert_exit(reconcile("repair", "--sagas", SAGAS, NULL), 1);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga WHERE state = 'compensating'"),
                     2);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 0);
    PQfinish(conn);
}

/* Saga ORDER of the order definition, broken by sql, is one the
 * reconciler must leave: check and repair both find it (exit 4), saying
 * check_says (unless NULL) and repair_says, and nothing changes. */
static void assert_left(const char *order, const char *sql, const char *check_says,
                        const char *repair_says)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "order", order, "silent", "ok", id);
    tu_exec(conn, sql);
    char *before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("check", "--sagas", SAGAS, NULL), 4);
    if (check_says != NULL)
        assert_out(check_says);
    assert_exit(reconcile("repair", "--sagas", SAGAS, NULL), 4);
    assert_out(repair_says);
    assert_unchanged(conn, before);
    free(before);
    PQfinish(conn);
}

/* An open saga without a timer cannot be moved by any timer: reported,
 * left, and nothing is done to it. */
static void saga_without_timer_is_left(void **state)
{
    assert_left("o-notimer", "UPDATE ferry.saga SET deadline = NULL",
                "[found] no_timer: definition order: 1 running saga without a timer",
                "[left] no_timer");
}

/* ferry.saga.deadline moved back by hand, the engine's own timer not: the
 * engine finds nothing due, and the reconciler says so instead of
 * claiming a repair (and changes nothing). */
static void deadline_out_of_step_with_engine_is_left(void **state)
{
    assert_left("o-skew", "UPDATE ferry.saga SET deadline = now() - interval '1 hour'", NULL,
                "left: the engine found no timeout due, so ferry.saga.deadline disagrees with "
                "the stored engine state");
}

/* The end to end: the relay and every saga worker stop; sagas run
 * out of time meanwhile; then only the relay, the participants and the
 * reply consumer come back — no worker fires timers — and
 * `ferry-reconcile repair`, repeated, is what fires them. Every saga ends
 * compensated. Half the sagas never get payment's answer (only a timer
 * moves them); the other half lose their first compensation (only a
 * timer resends it, under the same key). */
static void reconciler_alone_brings_every_saga_home(void **state)
{
    enum { N = 6 };
    PGconn *conn = tu_connect();
    /* The relay goes down; no consumer runs. Once it is up: when this test
     * runs first (alone, or in the pass without batches), SIGTERM could
     * otherwise reach it before its handler, an exit of 143. */
    tu_proc_await_log(&relay, "\"event\":\"relay.start\"", 30000);
    int st = tu_proc_finish(&relay, 30000);
    if (st != 0)
        fail_msg("ferry-relay exited with status %d (its log is above)", st);
    char ids[N][FERRY_UUID_STRING_SIZE];
    for (int i = 0; i < N; i++) {
        char order[32];
        snprintf(order, sizeof order, "o-e2e-%d", i);
        start(conn, "quick", order, i % 2 ? "ok" : "silent", i % 2 ? "lose-first" : "ok",
              ids[i]);
    }
    /* Their deadlines pass while nobody runs. */
    tu_await(conn, "SELECT bool_and(to_timestamp((engine->>'deadline_ms')::bigint / 1000.0) "
                   "< now() - interval '200 milliseconds') FROM ferry.saga", 10000);
    assert_exit(reconcile("check", "--sagas", SAGAS, "--rules", RULES "/grace.yaml", NULL), 4);
    assert_out("definition quick: 6 running sagas past their timer");

    /* The relay, the participants and the reply consumer come back. */
    relay_start();
    for (int i = 0; i < TU_C_COUNT; i++)
        cons[i] = consumer_new(i);
    int passes = 0, repaired = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pump(300);
        int rc = reconcile("repair", "--sagas", SAGAS, "--rules", RULES "/grace.yaml", NULL);
        if (rc != 0 && rc != 1 && rc != 4)
            assert_exit(rc, 1);
        passes++;
        repaired += rc & 1;
        if (tu_int(conn, "SELECT count(*) FROM ferry.saga WHERE state <> 'compensated'") == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 60)
            fail_msg("after %d passes, sagas still open:\n%s", passes,
                     tu_str(conn, "SELECT string_agg(id || ' ' || state || ' ' || engine::text, "
                                  "E'\\n') FROM ferry.saga WHERE state <> 'compensated'"));
    }
    /* The reconciler fired the timers: the unanswered payments were given
     * up at the deadline, the lost compensations resent under their key. */
    assert_true(repaired >= 2);
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0) {
            assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s' "
                                     "AND step = 'payment' AND kind = 'action' AND "
                                     "status = 'timed_out'", ids[i]), 1);
            assert_qs(conn, "SELECT engine->>'reason' FROM ferry.saga WHERE id = '%s'", ids[i],
                      "deadline");
        } else {
            /* The first compensation was lost (the fault fired); the
             * resend carried the same key and was applied once. */
            char *lost = qs(conn, "SELECT key FROM t_swallowed WHERE saga = '%s' AND "
                                  "kind = 'compensation'", ids[i]);
            char *want = tu_sprintf("%s/0/compensation/0", ids[i]);
            assert_non_null(lost);
            assert_string_equal(lost, want);
            free(lost);
            free(want);
            assert_qs(conn, "SELECT string_agg(kind || ':' || round || ':' || outcome, ',') "
                            "FROM ferry.participant_command WHERE saga_id = '%s' AND "
                            "participant = 'payment'", ids[i],
                      "action:0:applied,compensation:0:applied");
            assert_qs(conn, "SELECT string_agg(what, ',' ORDER BY n) FROM t_effect WHERE "
                            "saga = '%s'", ids[i], "do,undo");
        }
    }
    assert_exit(reconcile("check", "--sagas", SAGAS, "--rules", RULES "/grace.yaml", NULL), 0);
    for (int i = 0; i < TU_C_COUNT; i++) {
        ferry_consumer_destroy(cons[i]);
        cons[i] = NULL;
    }
    PQfinish(conn);
}

/* ------------------------------------------------------------ tests: rules */

#define MESSAGES "SELECT count(*) FROM ferry.outbox WHERE topic = 'rc.shop.inventory' AND " \
                 "type = '%s'"

/* Three reservations held too long, max_rows 2: repair sends two, then the
 * third; nothing again while they are pending; all again after
 * repeat_after. */
static void rule_emits_one_message_per_row(void **state)
{
    PGconn *conn = tu_connect();
    tu_exec(conn, "INSERT INTO t_reservation VALUES ('r1', 'sku-1', now() - interval '1 hour'),"
                  " ('r2', 'sku-2', now() - interval '1 hour'),"
                  " ('r3', 'sku-3', now() - interval '1 hour'),"
                  " ('r4', 'sku-4', now())");
    long long base = q(conn, MESSAGES, "ReleaseReservation");
    char *before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("check", "--rules", RULES "/release.yaml", NULL), 4);
    assert_out("rule release-stale: 2 rows: 2 need a repair message");
    assert_out("more than 2 rows; the next pass goes on");
    assert_unchanged(conn, before);
    free(before);

    /* Two now (max_rows), and "more" left for the next pass. */
    assert_exit(reconcile("repair", "--rules", RULES "/release.yaml", NULL), 1 | 4);
    assert_out("2 repair messages (ReleaseReservation \u2192 rc.shop.inventory) emitted");
    assert_int_equal(q(conn, MESSAGES, "ReleaseReservation") - base, 2);
    /* The next pass takes the third: the pending two do not count. */
    assert_exit(reconcile("repair", "--rules", RULES "/release.yaml", NULL), 1);
    assert_out("3 rows: 1 repair message (ReleaseReservation \u2192 rc.shop.inventory) "
               "emitted, 2 awaiting the earlier one");
    assert_int_equal(q(conn, MESSAGES, "ReleaseReservation") - base, 3);
    /* Each message: the row's key, its payload column, the rule's header. */
    assert_str(conn, "SELECT string_agg(aggregateid || ' ' || payload::text || "
                                     "' ' || (headers->>'reconcile_rule'), ',' ORDER BY "
                                     "aggregateid) FROM ferry.outbox WHERE topic = "
                                     "'rc.shop.inventory'",
                        "r1 {\"sku\": \"sku-1\", \"reservation\": \"r1\"} release-stale,"
                        "r2 {\"sku\": \"sku-2\", \"reservation\": \"r2\"} release-stale,"
                        "r3 {\"sku\": \"sku-3\", \"reservation\": \"r3\"} release-stale");
    assert_str(conn, "SELECT string_agg(r.key || ':' || r.times || ':' || "
                                     "(r.message_id = o.id), ',' ORDER BY r.key) FROM "
                                     "ferry.reconcile_action r JOIN ferry.outbox o ON "
                                     "o.id = r.message_id WHERE r.rule = 'release-stale'",
                        "r1:1:true,r2:1:true,r3:1:true");

    /* Pending now: a check is clean and a repair sends nothing. */
    before = tu_str(conn, SNAPSHOT);
    assert_exit(reconcile("check", "--rules", RULES "/release.yaml", NULL), 0);
    assert_out("[pending] rule_rows: rule release-stale: 3 rows, all awaiting");
    assert_exit(reconcile("repair", "--rules", RULES "/release.yaml", NULL), 0);
    assert_unchanged(conn, before);
    free(before);

    /* The service dealt with r2; repeat_after passes for the others. */
    tu_exec(conn, "DELETE FROM t_reservation WHERE id = 'r2'");
    tu_exec(conn, "UPDATE ferry.reconcile_action SET emitted_at = emitted_at - interval '2 hours'");
    assert_exit(reconcile("repair", "--rules", RULES "/release.yaml", NULL), 1);
    assert_int_equal(q(conn, MESSAGES, "ReleaseReservation") - base, 5);
    assert_str(conn, "SELECT string_agg(key || ':' || times, ',' ORDER BY key) "
                                     "FROM ferry.reconcile_action",
                        "r1:2,r2:1,r3:2");
    assert_exit(reconcile("check", "--rules", RULES "/release.yaml", NULL), 0);
    PQfinish(conn);
}

/* A rule with repeat_after longer than the 30 days the reconciler keeps
 * its records: the record of its message stays as long as repeat_after,
 * and the message is not sent again sooner. Before: the garbage sweep
 * dropped the record at 30 days, and the next pass sent it again (an
 * outside audit: a 60-day rule's message went again after 31 days). */
static void a_long_repeat_after_keeps_its_record(void **state)
{
    PGconn *conn = tu_connect();
    char *rules = tu_temp_file(
        "rules:\n"
        "  - name: release-long\n"
        "    detect: SELECT 'r-long' AS key, '{}'::jsonb AS payload\n"
        "    repeat_after: 60d\n"
        "    emit: {topic: rc.shop.inventory, type: ReleaseLong}\n");
    long long base = q(conn, MESSAGES, "ReleaseLong");
    assert_exit(reconcile("repair", "--rules", rules, NULL), 1);
    assert_int_equal(q(conn, MESSAGES, "ReleaseLong") - base, 1);
    tu_exec(conn, "UPDATE ferry.reconcile_action SET emitted_at = now() - interval '31 days' "
                  "WHERE rule = 'release-long'");
    assert_exit(reconcile("repair", "--rules", rules, NULL), 0);
    assert_int_equal(q(conn, MESSAGES, "ReleaseLong") - base, 1);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.reconcile_action "
                                  "WHERE rule = 'release-long'"), 1);
    /* Past its repeat_after it goes again. */
    tu_exec(conn, "UPDATE ferry.reconcile_action SET emitted_at = now() - interval '61 days' "
                  "WHERE rule = 'release-long'");
    assert_exit(reconcile("repair", "--rules", rules, NULL), 1);
    assert_int_equal(q(conn, MESSAGES, "ReleaseLong") - base, 2);
    tu_exec(conn, "DELETE FROM ferry.reconcile_action WHERE rule = 'release-long'");
    tu_temp_remove(rules);
    PQfinish(conn);
}

/* Detect queries that write, run too long or have no key are refused,
 * naming the rule, and change nothing; the pass goes on with the next. */
static void bad_rules_are_refused(void **state)
{
    PGconn *conn = tu_connect();
    tu_exec(conn, "INSERT INTO t_reservation VALUES ('b1', 'sku-1', now())");
    char *before = tu_str(conn, SNAPSHOT);
    static const struct {
        const char *file, *says;
    } cases[] = {
        {RULES "/writes-cte.yaml", "rule sneaky-delete (" RULES "/writes-cte.yaml:2): the "
                                   "detect query tried to write; detect queries must be "
                                   "read-only"},
        {RULES "/writes-function.yaml", "rule sneaky-insert (" RULES "/writes-function.yaml:2): "
                                        "the detect query tried to write; detect queries must "
                                        "be read-only"},
        {RULES "/too-slow.yaml", "rule too-slow (" RULES "/too-slow.yaml:2): the detect query "
                                 "ran longer than its timeout (200ms)"},
        {RULES "/no-key.yaml", "rule no-key (" RULES "/no-key.yaml:2): the detect query "
                               "returned no key column"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int repair = 0; repair < 2; repair++) {
            assert_exit(reconcile(repair ? "repair" : "check", "--rules", cases[i].file, NULL),
                        8);
            assert_err(cases[i].says);
        }
    }
    assert_unchanged(conn, before);   /* the reservation is still there, nothing logged */
    free(before);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM t_log"), 0);

    /* Two bad rules, then a good one: the good one still runs. */
    assert_exit(reconcile("check", "--rules", RULES "/mixed.yaml", NULL), 8 | 4);
    assert_err("rule no-key (" RULES "/mixed.yaml:3): the detect query returned no key column");
    assert_err("rule null-key (" RULES "/mixed.yaml:6): the detect query returned no key column");
    assert_out("rule any-reservation: 1 row: 1 needs a repair message");
    PQfinish(conn);
}

/* ------------------------------------------------------------ setup */

/* The relay marks published rows instead of deleting them: the tests
 * read what was sent from ferry.outbox. */
static void relay_start(void)
{
    const char *args[] = {"--set", "poll_interval_ms=50", "--set", "retention=mark", NULL};
    relay = tu_relay_start(kt_bootstrap(broker), "rcsaga-relay", args, NULL);
}

static ferry_saga_registry *registry_load(void)
{
    ferry_saga_registry *r = NULL;
    ferry_error err;
    if (ferry_saga_registry_new(NULL, &r, &err) != FERRY_OK)
        return NULL;
    static const char *const files[] = {SAGAS "/order.yaml", SAGAS "/quick.yaml"};
    for (size_t i = 0; i < 2; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        if (ferry_saga_def_load(files[i], &def, &errs) != FERRY_OK
            || ferry_saga_registry_add(r, def, &err) != FERRY_OK) {
            fprintf(stderr, "%s: could not load\n", files[i]);
            ferry_saga_def_destroy(def);
            ferry_saga_registry_destroy(r);
            return NULL;
        }
    }
    return r;
}

static int group_setup(void **state)
{
    PGconn *c = tu_saga_group_setup(state, topic_of, &broker);
    if (c == NULL)
        return -1;
    tu_exec(c, "CREATE TABLE t_swallowed (n bigserial, participant text, saga uuid, kind text, "
               "key text, attempt text)");
    tu_exec(c, "CREATE TABLE t_reservation (id text PRIMARY KEY, sku text, held_at timestamptz)");
    tu_exec(c, "CREATE TABLE t_log (n int)");
    tu_exec(c, "CREATE FUNCTION t_sneaky() RETURNS SETOF text LANGUAGE plpgsql AS $$ "
               "BEGIN INSERT INTO t_log VALUES (1); RETURN NEXT 'x'; END $$");
    /* The reconciler logs in as a member of ferry_reconciler, nothing more
     * (and may read the table its rules look at). */
    tu_login_role(c, "rc_reconciler", "ferry_reconciler");
    tu_exec(c, "GRANT SELECT ON t_reservation TO rc_reconciler");
    tu_exec(c, "GRANT SELECT, INSERT ON t_log TO rc_reconciler");
    PQfinish(c);
    rc_conninfo = fpg_conninfo_for(tu_pg, "rc_reconciler", NULL);
    if (rc_conninfo == NULL)
        return -1;
    if (kt_command(broker, "topic-create rc.shop.inventory 1 1") != 0)
        return -1;
    relay_start();
    reg = registry_load();
    return reg ? 0 : -1;
}

static int group_teardown(void **state)
{
    tu_saga_teardown(cons, reg, &relay, broker);
    free(rc_conninfo);
    free(last_out);
    free(last_err);
    return tu_group_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(missed_step_timeout_is_resent, clean),
        cmocka_unit_test_setup(missed_deadline_compensates, clean),
        cmocka_unit_test_setup(unanswered_compensation_is_resent, clean),
        cmocka_unit_test_setup(missing_or_changed_definition_leaves_them, clean),
        cmocka_unit_test_setup(saga_without_timer_is_left, clean),
        cmocka_unit_test_setup(deadline_out_of_step_with_engine_is_left, clean),
        cmocka_unit_test_setup(rule_emits_one_message_per_row, clean),
        cmocka_unit_test_setup(a_long_repeat_after_keeps_its_record, clean),
        cmocka_unit_test_setup(bad_rules_are_refused, clean),
        cmocka_unit_test_setup(reconciler_alone_brings_every_saga_home, clean),
    };
    /* The one test with consumers runs a second time at once, one message
     * per transaction (FERRY_CONSUMER_TEST_BATCH_MAX=1, a test hook of the
     * library), as every consumer test does. */
    pid_t unbatched = tu_unbatched_pass_start("test_reconcile_saga");
    tu_filter_from_env();
    const char *hook = getenv("FERRY_CONSUMER_TEST_BATCH_MAX");
    if (hook != NULL && strcmp(hook, "1") == 0 && getenv("FERRY_TEST_FILTER") == NULL)
        cmocka_set_test_filter("reconciler_alone_brings_every_saga_home");
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    return failed + tu_unbatched_pass_wait(unbatched, "test_reconcile_saga");
}
