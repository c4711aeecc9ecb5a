/*
 * test_saga.c — the saga driver (lib/saga_driver.c) and the participant
 * helper (lib/participant.c) the whole way: a real PostgreSQL, the
 * development broker, a `ferry-relay run` child publishing the outbox, and
 * four consumers polled in this thread: the orchestrator's (replies,
 * ferry_saga_reply_handler) and one per participant (payment, inventory,
 * shipping, each through ferry_participant_handle).
 *
 * The saga is examples/sagas/order.yaml's shape (shipping is the pivot)
 * with short timeouts. Each command's payload carries "behave" from the
 * saga's context, telling the test participant what to do with the action:
 *   ok       apply it (a row in t_effect)
 *   refuse   refuse it (FERRY_EINVAL from the callback: a business refusal)
 *   silent   swallow it: no effect, no reply (kept in t_swallowed, so that
 *            it can be delivered again later as a late action)
 * Compensations always apply (an 'undo' row), through the helper, which
 * turns the compensation of a step that never ran into a tombstone.
 *
 * Every test runs twice, at the same time: with the consumers' batches
 * (the default) and with one message per transaction (see main).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_saga.h"

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

static const char order_yaml[] =
    "saga: order\n"
    "version: 1\n"
    "deadline: 2m\n"
    "steps:\n"
    "  - name: payment\n"
    "    topic: payments.commands\n"
    "    action: {type: ReservePayment, payload: {order: \"${context.order_id}\",\n"
    "             amount: \"${context.total}\", behave: \"${context.payment}\"}}\n"
    "    compensation: {type: ReleasePayment, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 30s\n"
    "  - name: inventory\n"
    "    topic: inventory.commands\n"
    "    action: {type: ReserveStock, payload: {order: \"${context.order_id}\",\n"
    "             behave: \"${context.inventory}\"}}\n"
    "    compensation: {type: ReleaseStock, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 2s\n"
    "    retry: {attempts: 2, backoff: 100ms}\n"
    "  - name: shipping\n"
    "    topic: shipping.commands\n"
    "    action: {type: ShipOrder, payload: {order: \"${context.order_id}\",\n"
    "             behave: \"${context.shipping}\"}}\n"
    "    pivot: true\n"
    "    timeout: 30s\n";

static kt_broker *broker;
static tu_proc relay;
static ferry_saga_registry *reg;
static PGconn *timer_conn;          /* idle: ferry_saga_fire_timers runs its own transactions */
static long timers_fired;

static ferry_consumer *cons[TU_C_COUNT];
static int timers_off;              /* pump() leaves timers to someone else */

/* ------------------------------------------------------------------ participants */

static ferry_code participant_handler(PGconn *conn, const ferry_message *m, void *arg,
                                      ferry_error *err)
{
    const ferry_participant *p = arg;
    const char *behave = json_string_value(json_object_get(m->payload, "behave"));
    const char *kind = ferry_message_header(m, "saga_kind");
    if (behave != NULL && strcmp(behave, "silent") == 0 && kind != NULL
        && strcmp(kind, "action") == 0 && ferry_message_header(m, "test_replay") == NULL) {
        /* Lost: neither applied nor answered. Kept for a late delivery. */
        const char *names[] = {"saga_id", "saga_name", "saga_step", "saga_step_name",
                               "saga_kind", "saga_round", "saga_attempt", "saga_key",
                               "saga_reply_to"};
        json_t *h = json_object();
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            json_object_set_new(h, names[i], json_string(ferry_message_header(m, names[i])));
        json_object_set_new(h, "test_replay", json_string("1"));
        char *ht = json_dumps(h, JSON_COMPACT);
        json_decref(h);
        char *pt = json_dumps(m->payload, JSON_COMPACT | JSON_ENCODE_ANY);
        const char *pp[6] = {p->name, ferry_message_header(m, "saga_id"), m->topic, m->type,
                             pt, ht};
        PGresult *res = PQexecParams(conn, "INSERT INTO t_swallowed (participant, saga, topic, "
                                           "type, payload, headers) VALUES ($1, $2, $3, $4, "
                                           "$5, $6)", 6, NULL, pp, NULL, NULL, 0);
        free(ht);
        free(pt);
        ferry_code rc = PQresultStatus(res) == PGRES_COMMAND_OK
                            ? FERRY_OK : ferry_error_from_pg(err, conn, res, "swallow");
        PQclear(res);
        return rc;
    }
    ferry_participant_outcome oc;
    return ferry_participant_handle(conn, m, p, &oc, err);
}

/* ------------------------------------------------------------------ consumers */

static const char *const topic_of[TU_C_COUNT] = {
    [TU_C_ORCH] = FERRY_SAGA_REPLY_TOPIC_DEFAULT, [TU_C_PAYMENT] = "payments.commands",
    [TU_C_INVENTORY] = "inventory.commands", [TU_C_SHIPPING] = "shipping.commands",
};

static ferry_consumer *consumer_new(int which)
{
    return tu_saga_consumer_new(which, broker, topic_of[which], reg, participant_handler, NULL);
}

static ferry_saga_registry *registry_new(const char *yaml)
{
    return tu_saga_registry(yaml, "order-test.yaml");
}

/* Poll the consumers in mask and fire due timers until sql (over conn) is
 * true; fails the test after timeout_ms. */
static void pump(PGconn *conn, unsigned mask, const char *sql, int timeout_ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        ferry_error err;
        for (int i = 0; i < TU_C_COUNT; i++)
            if (mask & (1u << i))
                assert_ferry_ok(ferry_consumer_poll(cons[i], 10, &err), err);
        int fired = 0;
        /* reg NULL: the orchestrator is down, and its timer worker too */
        if (reg != NULL && !timers_off)
            assert_ferry_ok(ferry_saga_fire_timers(timer_conn, reg, 0, 16, &fired, &err), err);
        timers_fired += fired;
        char *check = tu_sprintf("SELECT coalesce((%s), false)::int", sql);
        long long ok = tu_int(conn, check);
        free(check);
        if (ok)
            return;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > timeout_ms)
            fail_msg("waited %d ms for: %s", timeout_ms, sql);
    }
}
#define ALL ((1u << TU_C_COUNT) - 1)

/* Start a saga in a transaction of our own; its id into id. */
static void start(PGconn *conn, const char *order, const char *payment, const char *inventory,
                  const char *shipping, char id[FERRY_UUID_STRING_SIZE])
{
    char *ctx = tu_sprintf("{\"order_id\": \"%s\", \"total\": 42, \"payment\": \"%s\", "
                           "\"inventory\": \"%s\", \"shipping\": \"%s\"}",
                           order, payment, inventory, shipping);
    tu_saga_start(conn, reg, "order", ctx, id);
    free(ctx);
}

/* Formats go through tu_sprintf, so that -Wformat checks them. */
#define q(conn, fmt, id) tu_int_of((conn), tu_sprintf((fmt), (id)))
#define assert_qs(conn, fmt, id, want) tu_assert_str_of((conn), tu_sprintf((fmt), (id)), (want))

static void await_state(PGconn *conn, unsigned mask, const char *id, const char *state,
                        int timeout_ms)
{
    char *sql = tu_sprintf("SELECT count(*) = 1 FROM ferry.saga WHERE id = '%s' AND state = '%s'",
                           id, state);
    pump(conn, mask, sql, timeout_ms);
    free(sql);
}

/* The effects, "payment:do,payment:undo,...", in the order applied. */
#define EFFECTS "SELECT coalesce(string_agg(participant || ':' || what, ',' ORDER BY n), '') " \
                "FROM t_effect WHERE saga = '%s'"
/* Compensations the orchestrator saw succeed, in order. */
#define COMPENSATED "SELECT coalesce(string_agg(step, ',' ORDER BY n), '') FROM ferry.saga_step " \
                    "WHERE saga_id = '%s' AND kind = 'compensation' AND status = 'succeeded'"
#define OUTCOMES "SELECT coalesce(string_agg(participant || ':' || kind || ':' || outcome, ',' " \
                 "ORDER BY at, participant), '') FROM ferry.participant_command " \
                 "WHERE saga_id = '%s'"

/* ------------------------------------------------------------------ tests */

/* Refused before anything reaches the database or the broker. */
static void misuse_is_refused(void **state)
{
    PGconn *conn = tu_connect();
    ferry_error err;
    ferry_uuid id;
    /* Outside a transaction: the saga row and its command must commit together. */
    assert_int_equal(ferry_saga_start(conn, reg, "order", "{}", &id, &err), FERRY_ESTATE);
    tu_exec(conn, "BEGIN");
    assert_int_equal(ferry_saga_start(conn, reg, "nope", "{}", &id, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "definition");
    assert_int_equal(ferry_saga_start(conn, reg, "order", "{\"order_id\": 1}", &id, &err),
                     FERRY_EINVAL);
    assert_string_equal(err.field, "context");
    assert_non_null(strstr(err.message, "${context."));
    assert_int_equal(ferry_saga_start(conn, reg, "order", "[1]", &id, &err), FERRY_EINVAL);
    tu_exec(conn, "ROLLBACK");
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga"), 0);

    /* A saga started under one definition is not run by another one of the
     * same name. */
    char sid[FERRY_UUID_STRING_SIZE];
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, reg, "order", "{\"order_id\": \"m\", \"total\": 1, "
                                     "\"payment\": \"ok\", \"inventory\": \"ok\", "
                                     "\"shipping\": \"ok\"}", &id, &err), err);
    ferry_uuid_format(&id, sid);
    char *other_yaml = tu_sprintf("%s# edited\n", order_yaml);
    ferry_saga_registry *other = registry_new(other_yaml);
    free(other_yaml);
    assert_int_equal(ferry_saga_cancel(conn, other, sid, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "definition");
    assert_non_null(strstr(err.message, "hash"));
    ferry_saga_registry_destroy(other);
    tu_exec(conn, "ROLLBACK");
    /* Duplicate names are refused; the registry keeps the first. */
    ferry_saga_def *def = NULL;
    assert_int_equal(ferry_saga_def_parse(order_yaml, strlen(order_yaml), "dup", &def, NULL),
                     FERRY_OK);
    assert_int_equal(ferry_saga_registry_add(reg, def, &err), FERRY_EINVAL);
    ferry_saga_def_destroy(def);
    PQfinish(conn);
}

static void happy_path_completes(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-happy", "ok", "ok", "ok", id);
    /* Committed together: the saga row and its first command. */
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s'", id), 1);
    await_state(conn, ALL, id, "completed", 30000);
    assert_qs(conn, EFFECTS, id, "payment:do,inventory:do,shipping:do");
    assert_qs(conn, "SELECT string_agg(step || ':' || kind || ':' || status, ',' ORDER BY n) "
                    "FROM ferry.saga_step WHERE saga_id = '%s'", id,
              "payment:action:sent,payment:action:succeeded,inventory:action:sent,"
              "inventory:action:succeeded,shipping:action:sent,shipping:action:succeeded");
    assert_qs(conn, OUTCOMES, id,
              "payment:action:applied,inventory:action:applied,shipping:action:applied");
    /* Every command carried its idempotency key; every message a message id. */
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s' AND "
                             "status = 'sent' AND message_id IS NOT NULL AND detail->>'key' "
                             "LIKE saga_id || '/%%/action/0'", id), 3);
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga WHERE id = '%s' AND deadline IS "
                             "NULL AND version = 4 AND engine->>'status' = 'completed'", id), 1);
    PQfinish(conn);
}

/* Shipping (step 3, the pivot) refuses: it never ran, so inventory (2)
 * and payment (1) are compensated, in that order. */
static void refusal_at_step_3_compensates_2_then_1(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-refuse", "ok", "ok", "refuse", id);
    await_state(conn, ALL, id, "compensated", 30000);
    /* The fault fired: shipping refused, and says why. */
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.participant_command WHERE saga_id = "
                             "'%s' AND participant = 'shipping' AND outcome = 'refused' AND "
                             "reason LIKE 'shipping refused%%'", id), 1);
    assert_qs(conn, EFFECTS, id,
              "payment:do,inventory:do,inventory:undo,payment:undo");
    assert_qs(conn, COMPENSATED, id, "inventory,payment");
    assert_qs(conn, "SELECT engine->>'reason' FROM ferry.saga WHERE id = '%s'", id, "failed");
    PQfinish(conn);
}

/* Run a saga whose inventory never answers until it is compensated. */
static void run_silent_inventory(PGconn *conn, const char *order, char id[FERRY_UUID_STRING_SIZE])
{
    long before = timers_fired;
    start(conn, order, "ok", "silent", "ok", id);
    await_state(conn, ALL, id, "compensated", 30000);
    /* The fault fired: both sends of the action were swallowed, under one
     * key (a resend is the same command), and the timers did fire. */
    assert_int_equal(q(conn, "SELECT count(*) FROM t_swallowed WHERE saga = '%s'", id), 2);
    assert_int_equal(q(conn, "SELECT count(DISTINCT headers->>'saga_key') FROM t_swallowed "
                             "WHERE saga = '%s'", id), 1);
    assert_true(timers_fired - before >= 2);
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s' AND "
                             "step = 'inventory' AND kind = 'action' AND status = 'timed_out'",
                       id), 1);
    assert_qs(conn, "SELECT engine->>'reason' FROM ferry.saga WHERE id = '%s'", id, "timed_out");
}

/* Inventory may have run (its reply never came): it is compensated too —
 * a tombstone, since it never did — and then payment. */
static void timeout_compensates_the_ambiguous_step(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    run_silent_inventory(conn, "o-timeout", id);
    assert_qs(conn, COMPENSATED, id, "inventory,payment");
    assert_qs(conn, EFFECTS, id, "payment:do,payment:undo");
    assert_qs(conn, OUTCOMES, id,
              "payment:action:applied,inventory:compensation:tombstone,"
              "payment:compensation:applied");
    PQfinish(conn);
}

/* The swallowed action arrives after all: the participant refuses it (its
 * step was compensated), applies nothing, and the finished saga ignores
 * the answer. */
static void late_action_after_compensation_is_refused(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    run_silent_inventory(conn, "o-late", id);
    long long applied_before = 0;
    ferry_consumer_stats s;
    ferry_consumer_stats_get(cons[TU_C_ORCH], &s);
    applied_before = (long long)(s.applied + s.drained);
    char *sql = tu_sprintf("SELECT count(ferry.emit(topic, saga, type, payload, headers::text)) "
                           "FROM (SELECT * FROM t_swallowed WHERE saga = '%s' LIMIT 1) s", id);
    tu_exec(conn, "BEGIN");
    assert_int_equal(tu_int(conn, sql), 1);
    tu_exec(conn, "COMMIT");
    free(sql);
    char *done = tu_sprintf("SELECT count(*) = 1 FROM ferry.participant_command WHERE saga_id = "
                            "'%s' AND participant = 'inventory' AND kind = 'action'", id);
    pump(conn, ALL, done, 30000);
    free(done);
    assert_qs(conn, "SELECT outcome FROM ferry.participant_command WHERE saga_id = '%s' AND "
                    "participant = 'inventory' AND kind = 'action'", id, "too_late");
    assert_qs(conn, EFFECTS, id, "payment:do,payment:undo");
    /* Its failure reply reaches the orchestrator, which changes nothing. */
    for (int i = 0;; i++) {
        ferry_consumer_stats_get(cons[TU_C_ORCH], &s);
        if ((long long)(s.applied + s.drained) > applied_before)
            break;
        if (i == 3000)
            fail_msg("the orchestrator never got the late action's reply");
        pump(conn, 1u << TU_C_ORCH, "SELECT true", 1000);
    }
    assert_qs(conn, "SELECT state || ':' || version FROM ferry.saga WHERE id = '%s'", id,
              "compensated:6");
    PQfinish(conn);
}

/* Cancelled while inventory is out: inventory (may have run) and payment
 * are compensated. */
static void cancel_compensates(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-cancel", "ok", "silent", "ok", id);
    char *out = tu_sprintf("SELECT count(*) >= 1 FROM t_swallowed WHERE saga = '%s'", id);
    pump(conn, ALL, out, 30000);
    free(out);
    ferry_error err;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_cancel(conn, reg, id, &err), err);
    tu_exec(conn, "COMMIT");
    assert_qs(conn, "SELECT state || ':' || (engine->>'reason') FROM ferry.saga WHERE id = '%s'",
              id, "compensating:cancelled");
    /* A second cancel while compensating changes nothing. */
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_cancel(conn, reg, id, &err), err);
    tu_exec(conn, "COMMIT");
    await_state(conn, ALL, id, "compensated", 30000);
    assert_qs(conn, COMPENSATED, id, "inventory,payment");
    assert_qs(conn, EFFECTS, id, "payment:do,payment:undo");
    /* Finished: a cancel is refused now. */
    tu_exec(conn, "BEGIN");
    assert_int_equal(ferry_saga_cancel(conn, reg, id, &err), FERRY_ESTATE);
    tu_exec(conn, "ROLLBACK");
    PQfinish(conn);
}

/* The orchestrator goes away mid-saga (its consumer and its registry
 * dropped, as a process that died would lose them) while payment's command
 * is out; payment answers with nobody there to hear it; a new
 * orchestrator, with the definition loaded afresh, carries the saga on from
 * the database. (Killed at step 1, whose timeout is long: a restart takes
 * a group rejoin, longer than inventory's 2 s timeout, which would then
 * rightly compensate instead.) */
static void orchestrator_killed_mid_saga_resumes(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-kill", "ok", "ok", "ok", id);
    /* Killed: nothing of the old orchestrator is left in this process. */
    ferry_consumer_destroy(cons[TU_C_ORCH]);
    cons[TU_C_ORCH] = NULL;
    ferry_saga_registry_destroy(reg);
    reg = NULL;
    char *sql = tu_sprintf("SELECT count(*) = 1 FROM ferry.participant_command WHERE saga_id = "
                           "'%s' AND participant = 'payment'", id);
    pump(conn, ALL & ~(1u << TU_C_ORCH), sql, 30000);
    free(sql);
    /* The fault held: payment answered, the saga did not move. */
    assert_qs(conn, "SELECT state || ':' || current_step || ':' || version FROM ferry.saga "
                    "WHERE id = '%s'", id, "running:0:1");
    /* A new orchestrator. */
    reg = registry_new(order_yaml);
    cons[TU_C_ORCH] = consumer_new(TU_C_ORCH);
    await_state(conn, ALL, id, "completed", 30000);
    ferry_consumer_stats s;
    ferry_consumer_stats_get(cons[TU_C_ORCH], &s);
    assert_true(s.applied + s.drained >= 3);    /* the three replies, the first one late */
    assert_qs(conn, EFFECTS, id, "payment:do,inventory:do,shipping:do");
    assert_qs(conn, OUTCOMES, id,
              "payment:action:applied,inventory:action:applied,shipping:action:applied");
    PQfinish(conn);
}

/* --orchestrator CONNINFO BOOTSTRAP: the orchestrator as a process of its
 * own (replies and timers) until it is killed. */
static int orchestrator_main(char **argv)
{
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    ferry_saga_registry *r = NULL;
    ferry_error err;
    if (ferry_saga_def_parse(order_yaml, strlen(order_yaml), "order-test.yaml", &def,
                             &errs) != FERRY_OK ||
        ferry_saga_registry_new(NULL, &r, &err) != FERRY_OK ||
        ferry_saga_registry_add(r, def, &err) != FERRY_OK)
        return 2;
    const char *topics[1] = {FERRY_SAGA_REPLY_TOPIC_DEFAULT};
    ferry_consumer_conf conf = {
        .name = tu_saga_name_of[TU_C_ORCH], .db = argv[2], .kafka = argv[3], .topics = topics,
        .topic_count = 1, .handler = ferry_saga_reply_handler, .handler_arg = r,
        .kafka_props = tu_group_props, .backoff_base_ms = 5, .backoff_max_ms = 50,
        .held_scan_ms = 50,
    };
    ferry_consumer *c = NULL;
    PGconn *tconn = PQconnectdb(argv[2]);
    if (ferry_consumer_new(&conf, &c, &err) != FERRY_OK || PQstatus(tconn) != CONNECTION_OK) {
        fprintf(stderr, "orchestrator: %s\n", err.message);
        return 2;
    }
    for (;;) {
        int fired = 0;
        if (ferry_consumer_poll(c, 20, &err) != FERRY_OK ||
            ferry_saga_fire_timers(tconn, r, 0, 16, &fired, &err) != FERRY_OK)
            fprintf(stderr, "orchestrator: %s\n", err.message);
    }
}

/* The orchestrator as a separate process, killed with SIGKILL after it
 * moved the saga to its second step: the saga waits in the database, and
 * a new orchestrator carries it on to the end, each step applied once. */
static void orchestrator_process_killed_resumes(void **state)
{
    PGconn *conn = tu_connect();
    /* This process stops being the orchestrator. */
    ferry_consumer_destroy(cons[TU_C_ORCH]);
    cons[TU_C_ORCH] = NULL;
    timers_off = 1;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl("/proc/self/exe", "test_saga", "--orchestrator", fpg_conninfo(tu_pg),
              kt_bootstrap(broker), (char *)NULL);
        _exit(127);
    }
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-kill9", "ok", "ok", "ok", id);
    /* The child applied payment's reply and sent inventory's command. */
    char *sql = tu_sprintf("SELECT count(*) = 1 FROM ferry.saga WHERE id = '%s' AND "
                           "current_step = 1", id);
    pump(conn, ALL & ~(1u << TU_C_ORCH), sql, 60000);
    free(sql);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);    /* the fault fired */
    long long version = q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id);

    /* Inventory answers into the void: nobody moves the saga. */
    sql = tu_sprintf("SELECT count(*) = 1 FROM ferry.participant_command WHERE saga_id = '%s' "
                     "AND participant = 'inventory'", id);
    pump(conn, ALL & ~(1u << TU_C_ORCH), sql, 30000);
    free(sql);
    assert_int_equal(q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id), version);

    /* A new orchestrator; its timers wait until it holds the reply topic
     * (the dead member leaves the group only when its session times out). */
    cons[TU_C_ORCH] = consumer_new(TU_C_ORCH);
    ferry_consumer_stats s = {0};
    for (int i = 0; i < 3000 && s.assigned == 0; i++) {
        ferry_error err;
        assert_ferry_ok(ferry_consumer_poll(cons[TU_C_ORCH], 10, &err), err);
        ferry_consumer_stats_get(cons[TU_C_ORCH], &s);
    }
    assert_true(s.assigned > 0);
    timers_off = 0;
    await_state(conn, ALL, id, "completed", 60000);
    assert_qs(conn, EFFECTS, id, "payment:do,inventory:do,shipping:do");
    PQfinish(conn);
}

/* ferry_saga_fire_timer: one saga's timer, by id, judged by the engine at
 * now_ms. (No consumer is polled: the saga only moves when fired here.) */
static void fire_timer_fires_one_saga(void **state)
{
    PGconn *conn = tu_connect();
    char id[FERRY_UUID_STRING_SIZE];
    start(conn, "o-fire1", "silent", "ok", "ok", id);
    ferry_error err;
    int fired = -1;
    /* Not due yet by the database clock: nothing happens. */
    assert_ferry_ok(ferry_saga_fire_timer(timer_conn, reg, id, 0, &fired, &err), err);
    assert_int_equal(fired, 0);
    assert_int_equal(q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id), 1);
    /* Due by now_ms: payment's only send went unanswered, so it is given
     * up and compensated, as a worker's timer would have done. */
    long long due = q(conn, "SELECT (engine->>'timer_ms')::bigint FROM ferry.saga WHERE id = "
                            "'%s'", id);
    assert_ferry_ok(ferry_saga_fire_timer(timer_conn, reg, id, due, &fired, &err), err);
    assert_int_equal(fired, 1);
    assert_qs(conn, "SELECT state || ':' || version FROM ferry.saga WHERE id = '%s'", id,
              "compensating:2");
    assert_int_equal(q(conn, "SELECT count(*) FROM ferry.saga_step WHERE saga_id = '%s' AND "
                             "step = 'payment' AND kind = 'compensation' AND status = 'sent'",
                       id), 1);
    /* Fired again at the same time: nothing due any more (a worker got
     * there first, as far as the engine can tell). */
    assert_ferry_ok(ferry_saga_fire_timer(timer_conn, reg, id, due, &fired, &err), err);
    assert_int_equal(fired, 0);
    assert_int_equal(q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id), 2);
    /* Refusals: a malformed id, no such saga, another definition hash, a
     * registry without the definition. */
    assert_int_equal(ferry_saga_fire_timer(timer_conn, reg, "nope", 0, &fired, &err),
                     FERRY_EINVAL);
    assert_string_equal(err.field, "saga_id");
    assert_int_equal(ferry_saga_fire_timer(timer_conn, reg,
                                           "01890000-0000-7000-8000-000000000000", 0, &fired,
                                           &err), FERRY_EINVAL);
    assert_string_equal(err.field, "saga_id");
    char *other_yaml = tu_sprintf("%s# edited\n", order_yaml);
    ferry_saga_registry *other = registry_new(other_yaml);
    free(other_yaml);
    assert_int_equal(ferry_saga_fire_timer(timer_conn, other, id, due, &fired, &err),
                     FERRY_EINVAL);
    assert_string_equal(err.field, "definition");
    assert_non_null(strstr(err.message, "hash"));
    ferry_saga_registry_destroy(other);
    ferry_saga_registry *empty = NULL;
    assert_ferry_ok(ferry_saga_registry_new(NULL, &empty, &err), err);
    assert_int_equal(ferry_saga_fire_timer(timer_conn, empty, id, due, &fired, &err),
                     FERRY_EINVAL);
    assert_string_equal(err.field, "definition");
    assert_non_null(strstr(err.message, "\"order\""));
    ferry_saga_registry_destroy(empty);
    /* Nothing changed by the refusals; the connection is idle again. */
    assert_int_equal(q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id), 2);
    assert_int_equal(PQtransactionStatus(timer_conn), PQTRANS_IDLE);
    /* Out of the way of the tests that pump timers. */
    assert_int_equal(q(conn, "WITH d AS (DELETE FROM ferry.saga WHERE id = '%s' RETURNING 1) "
                             "SELECT count(*) FROM d", id), 1);
    PQfinish(conn);
}

/* ------------------------------------------------------------------ setup */

static int group_setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    PGconn *c = tu_connect();
    tu_exec(c, "CREATE TABLE t_swallowed (n bigserial, participant text, saga text, topic text, "
               "type text, payload text, headers jsonb)");
    timer_conn = c;
    if ((broker = tu_saga_setup(c, topic_of)) == NULL)
        return -1;
    const char *args[] = {"--set", "poll_interval_ms=50", NULL};
    const char *env[] = {TU_RELAY_ASAN, NULL};
    relay = tu_relay_start(kt_bootstrap(broker), "saga-relay", args, env);
    reg = registry_new(order_yaml);
    for (int i = 0; i < TU_C_COUNT; i++)
        cons[i] = consumer_new(i);
    return 0;
}

static int group_teardown(void **state)
{
    PQfinish(timer_conn);
    tu_saga_teardown(cons, reg, &relay, broker);
    return tu_group_teardown(state);
}

/* A saga whose definition changed under it (a worker cannot run it) and
 * one it can, both due: the first, due earlier, used to stop every call
 * of ferry_saga_fire_timers (saga_next_due handed back the same row, and
 * the call returned at the first error), so no timer of any saga fired.
 * Now it is logged and skipped, the good one fires, and the call ends. */
static void one_bad_saga_does_not_block_the_timers(void **state)
{
    static const char bad_v1[] = "saga: t8-bad\nversion: 1\ndeadline: 1h\nsteps:\n"
                                 "  - {name: a, topic: payments.commands, action: {type: A}, "
                                 "compensation: {type: B}, timeout: 1s}\n";
    static const char bad_v2[] = "saga: t8-bad\nversion: 1\ndeadline: 1h\nsteps:\n"
                                 "  - {name: a, topic: payments.commands, action: {type: A}, "
                                 "compensation: {type: C}, timeout: 1s}\n";
    static const char good[] = "saga: t8-good\nversion: 1\ndeadline: 1h\nsteps:\n"
                               "  - {name: a, topic: payments.commands, action: {type: A}, "
                               "compensation: {type: B}, timeout: 2s}\n";
    ferry_error err;
    ferry_saga_registry *r1 = NULL, *r2 = NULL;
    assert_ferry_ok(ferry_saga_registry_new(NULL, &r1, &err), err);
    assert_ferry_ok(ferry_saga_registry_new(NULL, &r2, &err), err);
    const struct {
        ferry_saga_registry *r;
        const char *yaml;
    } adds[] = {{r1, bad_v1}, {r1, good}, {r2, bad_v2}, {r2, good}};
    for (size_t i = 0; i < sizeof adds / sizeof adds[0]; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        assert_int_equal(ferry_saga_def_parse(adds[i].yaml, strlen(adds[i].yaml), "t8.yaml",
                                              &def, &errs), FERRY_OK);
        assert_ferry_ok(ferry_saga_registry_add(adds[i].r, def, &err), err);
    }
    PGconn *conn = tu_connect();
    char bad_id[FERRY_UUID_STRING_SIZE], good_id[FERRY_UUID_STRING_SIZE];
    ferry_uuid uid;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, r1, "t8-bad", "{}", &uid, &err), err);
    ferry_uuid_format(&uid, bad_id);
    assert_ferry_ok(ferry_saga_start(conn, r1, "t8-good", "{}", &uid, &err), err);
    ferry_uuid_format(&uid, good_id);
    tu_exec(conn, "COMMIT");
    /* Both due a minute from now; the bad one first (1s against 2s). */
    long long now_ms = tu_int(conn, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint");
    char q[256];
    snprintf(q, sizeof q, "SELECT version FROM ferry.saga WHERE id = '%s'", good_id);
    long long good_version = tu_int(conn, q);
    snprintf(q, sizeof q, "SELECT version FROM ferry.saga WHERE id = '%s'", bad_id);
    long long bad_version = tu_int(conn, q);

    int fired = -1;
    for (int round = 0; round < 2; round++) {
        ferry_code rc = ferry_saga_fire_timers(timer_conn, r2, now_ms + 60000, 16, &fired, &err);
        if (rc != FERRY_OK)
            fail_msg("round %d: %s", round, err.message);
        /* The good saga's timer fired in the first round, not again. */
        assert_int_equal(fired, round == 0 ? 1 : 0);
    }
    snprintf(q, sizeof q, "SELECT version FROM ferry.saga WHERE id = '%s'", good_id);
    assert_true(tu_int(conn, q) > good_version);
    /* The bad one is untouched, still due: the reconciler reports it. */
    snprintf(q, sizeof q, "SELECT version FROM ferry.saga WHERE id = '%s'", bad_id);
    assert_int_equal(tu_int(conn, q), bad_version);
    snprintf(q, sizeof q, "SELECT count(*) FROM ferry.saga WHERE id = '%s' AND deadline <= "
             "now() + interval '1 minute'", bad_id);
    assert_int_equal(tu_int(conn, q), 1);
    /* Cancel both out of the way of the other tests' timers. */
    tu_exec(conn, "UPDATE ferry.saga SET state = 'completed' WHERE definition LIKE 't8-%'");
    PQfinish(conn);
    ferry_saga_registry_destroy(r1);
    ferry_saga_registry_destroy(r2);
}

/*
 * A context value that only a compensation uses, and that would make it
 * too large (over max_payload_bytes' default) or too deep (over 2048
 * levels) to send: refused at the start, naming the command, with the
 * transaction still usable. Before, only that every reference resolved
 * was checked: the saga started, and could then never compensate (an
 * outside audit: stuck in compensating, resending its last command).
 */
static void a_context_that_makes_a_command_unsendable_is_refused_at_start(void **state)
{
    static const char yaml[] = "saga: t10-big\nversion: 1\ndeadline: 1h\nsteps:\n"
                               "  - name: a\n    topic: payments.commands\n    timeout: 1s\n"
                               "    action: {type: A, payload: {id: \"${context.id}\"}}\n"
                               "    compensation: {type: B, payload: {x: {y: {note: "
                               "\"${context.note}\"}}}}\n";
    ferry_saga_registry *r = tu_saga_registry(yaml, "t10.yaml");
    size_t big = 1048576 + 16;
    char *huge = malloc(big + 64);
    assert_non_null(huge);
    int n = snprintf(huge, 64, "{\"id\": \"o-1\", \"note\": \"");
    memset(huge + n, 'x', big);
    strcpy(huge + n + big, "\"}");
    /* 2046 arrays in an object: the context is 2047 deep, within what a
     * payload may be (2048); in the compensation they are 2049. */
    enum { NEST = 2046 };
    char *deep = malloc(64 + 2 * NEST);
    assert_non_null(deep);
    n = snprintf(deep, 64, "{\"id\": \"o-1\", \"note\": ");
    memset(deep + n, '[', NEST);
    memset(deep + n + NEST, ']', NEST);
    strcpy(deep + n + 2 * NEST, "}");
    const char *ctxs[2] = {huge, deep};
    const char *why[2] = {"over the limit", "levels deep"};
    PGconn *conn = tu_connect();
    for (int i = 0; i < 2; i++) {
        ferry_error err;
        ferry_uuid uid;
        tu_exec(conn, "BEGIN");
        assert_int_equal(ferry_saga_start(conn, r, "t10-big", ctxs[i], &uid, &err), FERRY_EINVAL);
        assert_string_equal(err.field, "context");
        if (strstr(err.message, "steps[0].compensation.payload") == NULL ||
            strstr(err.message, why[i]) == NULL)
            fail_msg("context %d: %s", i, err.message);
        /* The transaction is still usable. */
        assert_int_equal(tu_int(conn, "SELECT 1"), 1);
        tu_exec(conn, "ROLLBACK");
    }
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga WHERE definition = 't10-big'"),
                     0);
    PQfinish(conn);
    free(huge);
    free(deep);
    ferry_saga_registry_destroy(r);
}

/* A saga started on a connection whose client_encoding is not UTF-8 is
 * refused before anything is sent, as ferry_emit refuses it: its context
 * ("Jos\u00e9") went to the server as Latin-1 and was stored converted. */
static void a_start_on_a_connection_not_in_utf8_is_refused(void **state)
{
    static const char yaml[] = "saga: t11-enc\nversion: 1\ndeadline: 1h\nsteps:\n"
                               "  - name: a\n    topic: payments.commands\n    timeout: 1s\n"
                               "    action: {type: A, payload: {id: \"${context.id}\"}}\n"
                               "    compensation: {type: B, payload: {id: \"${context.id}\"}}\n";
    ferry_saga_registry *r = tu_saga_registry(yaml, "t11.yaml");
    PGconn *conn = tu_connect();
    tu_exec(conn, "SET client_encoding = 'LATIN1'");
    tu_exec(conn, "BEGIN");
    ferry_error err;
    ferry_uuid uid;
    assert_int_equal(ferry_saga_start(conn, r, "t11-enc", "{\"id\": \"Jos\xc3\xa9\"}", &uid,
                                      &err), FERRY_ESTATE);
    assert_string_equal(err.field, "conn");
    assert_int_equal(tu_int(conn, "SELECT 1"), 1);       /* still usable */
    /* And the other calls that send text on the caller's connection. */
    assert_int_equal(ferry_saga_cancel(conn, r, "00000000-0000-7000-8000-000000000001", &err),
                     FERRY_ESTATE);
    assert_string_equal(err.field, "conn");
    tu_exec(conn, "ROLLBACK");
    int fired = -1;
    assert_int_equal(ferry_saga_fire_timers(conn, r, 0, 10, &fired, &err), FERRY_ESTATE);
    assert_int_equal(ferry_saga_fire_timer(conn, r, "00000000-0000-7000-8000-000000000001", 0,
                                           &fired, &err), FERRY_ESTATE);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga WHERE definition = 't11-enc'"),
                     0);
    PQfinish(conn);
    ferry_saga_registry_destroy(r);
}

/*
 * Many due sagas a worker cannot run, all due before its own: twenty
 * started under an edited definition and five of a definition it does
 * not hold at all (another service's, in a shared database). One call
 * with max 16 fires the worker's own saga and leaves the others as they
 * are (the reconciler reports them). Before schema 37 each of them was
 * taken, failed, and counted against max: the call fired nothing, and so
 * did every later one (an outside audit: with 70 of them every call
 * failed, FERRY_EINVAL).
 */
static void timers_of_sagas_the_worker_cannot_run_do_not_stop_its_own(void **state)
{
    static const char old_v[] = "saga: t9-edited\nversion: 1\ndeadline: 1h\nsteps:\n"
                                "  - {name: a, topic: payments.commands, action: {type: A}, "
                                "compensation: {type: B}, timeout: 1s}\n";
    static const char new_v[] = "saga: t9-edited\nversion: 1\ndeadline: 1h\nsteps:\n"
                                "  - {name: a, topic: payments.commands, action: {type: A}, "
                                "compensation: {type: C}, timeout: 1s}\n";
    static const char other[] = "saga: t9-other\nversion: 1\ndeadline: 1h\nsteps:\n"
                                "  - {name: a, topic: payments.commands, action: {type: A}, "
                                "compensation: {type: B}, timeout: 1s}\n";
    static const char own[] = "saga: t9-own\nversion: 1\ndeadline: 1h\nsteps:\n"
                              "  - {name: a, topic: payments.commands, action: {type: A}, "
                              "compensation: {type: B}, timeout: 2s}\n";
    ferry_error err;
    ferry_saga_registry *theirs = NULL, *mine = NULL;
    assert_ferry_ok(ferry_saga_registry_new(NULL, &theirs, &err), err);
    assert_ferry_ok(ferry_saga_registry_new(NULL, &mine, &err), err);
    const struct {
        ferry_saga_registry *r;
        const char *yaml;
    } adds[] = {{theirs, old_v}, {theirs, other}, {theirs, own}, {mine, new_v}, {mine, own}};
    for (size_t i = 0; i < sizeof adds / sizeof adds[0]; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        assert_int_equal(ferry_saga_def_parse(adds[i].yaml, strlen(adds[i].yaml), "t9.yaml",
                                              &def, &errs), FERRY_OK);
        assert_ferry_ok(ferry_saga_registry_add(adds[i].r, def, &err), err);
    }
    PGconn *conn = tu_connect();
    ferry_uuid uid;
    tu_exec(conn, "BEGIN");
    for (int i = 0; i < 25; i++)
        assert_ferry_ok(ferry_saga_start(conn, theirs, i < 20 ? "t9-edited" : "t9-other", "{}",
                                         &uid, &err), err);
    assert_ferry_ok(ferry_saga_start(conn, theirs, "t9-own", "{}", &uid, &err), err);
    char own_id[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&uid, own_id);
    tu_exec(conn, "COMMIT");
    long long now_ms = tu_int(conn, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint");
    char *q = tu_sprintf("SELECT version FROM ferry.saga WHERE id = '%s'", own_id);
    long long own_version = tu_int(conn, q);
    const char *theirs_sql = "SELECT sum(version) FROM ferry.saga "
                             "WHERE definition IN ('t9-edited', 't9-other') "
                             "AND deadline <= now() + interval '1 minute'";
    long long theirs_versions = tu_int(conn, theirs_sql);
    int fired = -1;
    ferry_code rc = ferry_saga_fire_timers(timer_conn, mine, now_ms + 60000, 16, &fired, &err);
    if (rc != FERRY_OK)
        fail_msg("%s", err.message);
    assert_int_equal(fired, 1);
    assert_true(tu_int(conn, q) > own_version);
    free(q);
    /* The others untouched, still due. */
    assert_int_equal(tu_int(conn, theirs_sql), theirs_versions);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.saga WHERE definition IN "
                                  "('t9-edited', 't9-other') "
                                  "AND deadline <= now() + interval '1 minute'"), 25);
    tu_exec(conn, "UPDATE ferry.saga SET state = 'completed' WHERE definition LIKE 't9-%'");
    PQfinish(conn);
    ferry_saga_registry_destroy(theirs);
    ferry_saga_registry_destroy(mine);
}

/*
 * More of the worker's own sagas failing in one call than the skip list
 * holds (65: their stored state is not a saga state document): the call
 * ends with an error, but the timer it fired before them, of a healthy
 * saga due first, stays fired and is counted. Before: the whole batch was
 * rolled back with it (a review).
 */
static void sagas_failing_past_the_skip_list_keep_what_the_call_fired(void **state)
{
    static const char yaml[] = "saga: t12\nversion: 1\ndeadline: 1h\nsteps:\n"
                               "  - {name: a, topic: payments.commands, action: {type: A}, "
                               "compensation: {type: B}, timeout: 1s}\n";
    ferry_saga_registry *r = tu_saga_registry(yaml, "t12.yaml");
    PGconn *conn = tu_connect();
    ferry_error err;
    ferry_uuid uid;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, r, "t12", "{}", &uid, &err), err);
    char healthy[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&uid, healthy);
    for (int i = 0; i < 65; i++)
        assert_ferry_ok(ferry_saga_start(conn, r, "t12", "{}", &uid, &err), err);
    tu_exec(conn, "COMMIT");
    char *q = tu_sprintf("UPDATE ferry.saga SET deadline = deadline - interval '1 second' "
                         "WHERE id = '%s'", healthy);
    tu_exec(conn, q);
    free(q);
    q = tu_sprintf("UPDATE ferry.saga SET engine = '{\"junk\": 1}' "
                   "WHERE definition = 't12' AND id <> '%s'", healthy);
    tu_exec(conn, q);
    free(q);
    q = tu_sprintf("SELECT version FROM ferry.saga WHERE id = '%s'", healthy);
    long long before = tu_int(conn, q);
    long long now_ms = tu_int(conn, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint");
    int fired = -1;
    ferry_code rc = ferry_saga_fire_timers(timer_conn, r, now_ms + 60000, 100, &fired, &err);
    assert_int_not_equal(rc, FERRY_OK);
    assert_int_equal(fired, 1);
    assert_true(tu_int(conn, q) > before);
    free(q);
    tu_exec(conn, "UPDATE ferry.saga SET state = 'completed' WHERE definition = 't12'");
    PQfinish(conn);
    ferry_saga_registry_destroy(r);
}

/*
 * Issue 12: numbers in a saga's payloads and context keep their digits.
 * They used to go through jansson's doubles: 0.1 went out as
 * 0.10000000000000001 and 1e-400 as 0.0, integers beyond int64 were
 * refused in a definition and made the context "not a JSON object", and
 * a context number jsonb cannot hold (1e-16384) was taken as 0.
 *
 * All in one transaction that is rolled back, so no command reaches the
 * broker: the start (the definition's numbers, the context stored), then
 * a cancel, which reads the context back from its jsonb column and
 * builds the compensation from it. The outbox and the context column are
 * jsonb, so what is compared is jsonb's own text of the expected value:
 * the same numeric values with the same scale ("2.50" stays "2.50";
 * jsonb spells 1e-400 with 400 digits after the point).
 */
static void saga_numbers_keep_their_digits(void **state)
{
    static const char yaml[] =
        "saga: t12-numbers\nversion: 1\ndeadline: 1h\nsteps:\n"
        "  - name: quote\n"
        "    topic: t12.commands\n"
        "    action:\n"
        "      type: Quote\n"
        "      payload:\n"
        "        tenth: 0.1\n"
        "        tiny: 1e-400\n"
        "        big: 123456789012345678901234567890\n"
        "        huge: 1e400\n"
        "        small: -0.0000001234\n"
        "        scale: 2.50\n"
        "        list: [0.1, 1e-400, +7, .5]\n"
        "        amount: \"${context.amount}\"\n"
        "        nested: \"${context.nested}\"\n"
        "    compensation:\n"
        "      type: Unquote\n"
        "      payload: {amount: \"${context.amount}\", tiny: \"${context.tiny}\",\n"
        "                big: \"${context.big}\", nested: \"${context.nested}\"}\n"
        "    timeout: 1s\n";
    static const char ctx[] = "{\"amount\": 0.1, \"tiny\": 1e-400, "
                              "\"big\": 123456789012345678901234567890, "
                              "\"nested\": {\"x\": [1e400, 2.50, -0.0000001234]}}";
    static const char want_action[] =
        "{\"tenth\": 0.1, \"tiny\": 1e-400, \"big\": 123456789012345678901234567890, "
        "\"huge\": 1e400, \"small\": -0.0000001234, \"scale\": 2.50, "
        "\"list\": [0.1, 1e-400, 7, 0.5], \"amount\": 0.1, "
        "\"nested\": {\"x\": [1e400, 2.50, -0.0000001234]}}";
    static const char want_compensation[] =
        "{\"amount\": 0.1, \"tiny\": 1e-400, \"big\": 123456789012345678901234567890, "
        "\"nested\": {\"x\": [1e400, 2.50, -0.0000001234]}}";

    ferry_saga_registry *r = registry_new(yaml);
    PGconn *conn = tu_connect();
    ferry_error err;
    ferry_uuid uid;
    char id[FERRY_UUID_STRING_SIZE];
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, r, "t12-numbers", ctx, &uid, &err), err);
    ferry_uuid_format(&uid, id);

    /* The context as given. */
    char *stored = tu_str_of(conn, tu_sprintf("SELECT context::text FROM ferry.saga WHERE "
                                              "id = '%s'", id));
    char *want_ctx = tu_str_of(conn, tu_sprintf("SELECT '%s'::jsonb::text", ctx));
    assert_string_equal(stored, want_ctx);
    free(want_ctx);

    /* The action: the definition's numbers and the context's. */
    char *want_text = tu_str_of(conn, tu_sprintf("SELECT '%s'::jsonb::text", want_action));
    tu_assert_str_of(conn, tu_sprintf("SELECT payload::text FROM ferry.outbox WHERE "
                                      "aggregateid = '%s' AND type = 'Quote'", id), want_text);
    free(want_text);
    tu_assert_str_of(conn, tu_sprintf("SELECT (payload->>'tenth') || ' ' || (payload->>'big') "
                                      "FROM ferry.outbox WHERE aggregateid = '%s' AND type = "
                                      "'Quote'", id), "0.1 123456789012345678901234567890");

    /* A cancel: the context read back from the database, the
     * compensation built from it, the state saved. */
    assert_ferry_ok(ferry_saga_cancel(conn, r, id, &err), err);
    want_text = tu_str_of(conn, tu_sprintf("SELECT '%s'::jsonb::text", want_compensation));
    tu_assert_str_of(conn, tu_sprintf("SELECT payload::text FROM ferry.outbox WHERE "
                                      "aggregateid = '%s' AND type = 'Unquote'", id), want_text);
    free(want_text);
    /* Saved again, the context unchanged. */
    assert_true(q(conn, "SELECT version FROM ferry.saga WHERE id = '%s'", id) >= 2);
    tu_assert_str_of(conn, tu_sprintf("SELECT context::text FROM ferry.saga WHERE id = '%s'", id),
                     stored);
    free(stored);

    /* A context number jsonb cannot hold is refused on the client, naming
     * the context, and the transaction stays usable. */
    assert_int_equal(ferry_saga_start(conn, r, "t12-numbers",
                                      "{\"amount\": 1e-16384, \"tiny\": 0, \"big\": 0, "
                                      "\"nested\": 0}", &uid, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "context");
    assert_non_null(strstr(err.message, "1e-16384"));
    assert_int_equal(tu_int(conn, "SELECT 1"), 1);
    tu_exec(conn, "ROLLBACK");
    PQfinish(conn);
    ferry_saga_registry_destroy(r);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--orchestrator") == 0)
        return orchestrator_main(argv);
    /* The tests run twice at once, the second pass with one message per
     * transaction (FERRY_CONSUMER_TEST_BATCH_MAX=1, a test hook of the
     * library, inherited by the orchestrator process). */
    pid_t unbatched = tu_unbatched_pass_start("test_saga");
    const char *hook = getenv("FERRY_CONSUMER_TEST_BATCH_MAX");
    int batched = hook == NULL || strtol(hook, NULL, 10) != 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(misuse_is_refused),
        cmocka_unit_test(happy_path_completes),
        cmocka_unit_test(refusal_at_step_3_compensates_2_then_1),
        cmocka_unit_test(timeout_compensates_the_ambiguous_step),
        cmocka_unit_test(late_action_after_compensation_is_refused),
        cmocka_unit_test(cancel_compensates),
        cmocka_unit_test(orchestrator_killed_mid_saga_resumes),
        cmocka_unit_test(orchestrator_process_killed_resumes),
        cmocka_unit_test(fire_timer_fires_one_saga),
        cmocka_unit_test(one_bad_saga_does_not_block_the_timers),
        cmocka_unit_test(timers_of_sagas_the_worker_cannot_run_do_not_stop_its_own),
        cmocka_unit_test(a_context_that_makes_a_command_unsendable_is_refused_at_start),
        cmocka_unit_test(a_start_on_a_connection_not_in_utf8_is_refused),
        cmocka_unit_test(sagas_failing_past_the_skip_list_keep_what_the_call_fired),
        cmocka_unit_test(saga_numbers_keep_their_digits),
    };
    int failed = tu_run_group(batched ? "test_saga, with batches"
                                      : "test_saga, one message per transaction",
                              tests, sizeof tests / sizeof tests[0], group_setup, group_teardown);
    return failed + tu_unbatched_pass_wait(unbatched, "test_saga");
}
