/*
 * test_roles_run.c — every program runs as its role (issue 12, item 7).
 *
 * Each program logs in as a role that is a member of its ferry role and
 * nothing else, as an operator would set it up (README, "Schema and
 * roles"): ferry-relay as a ferry_relay member, ferry-reconcile as a
 * ferry_reconciler member, a consumer and a saga worker (orchestrator,
 * participants, timers) as ferry_consumer members owning their consumer
 * names. And a program whose role may not do something says why.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "testutil.h"
#include "tu_proc.h"
#include "tu_relay.h"
#include "tu_saga.h"

static kt_broker *broker;
static char *relay_db, *recon_db, *svc_db, *saga_db, *nobody_db;

static const char *const topic_of[TU_C_COUNT] = {
    [TU_C_ORCH] = FERRY_SAGA_REPLY_TOPIC_DEFAULT, [TU_C_PAYMENT] = "rr.payments",
    [TU_C_INVENTORY] = "rr.inventory", [TU_C_SHIPPING] = "rr.shipping",
};

static const char order_yaml[] =
    "saga: order\n"
    "version: 1\n"
    "deadline: 2m\n"
    "steps:\n"
    "  - name: payment\n"
    "    topic: rr.payments\n"
    "    action: {type: ReservePayment, payload: {order: \"${context.order_id}\"}}\n"
    "    compensation: {type: ReleasePayment, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 30s\n"
    "  - name: inventory\n"
    "    topic: rr.inventory\n"
    "    action: {type: ReserveStock, payload: {order: \"${context.order_id}\"}}\n"
    "    compensation: {type: ReleaseStock, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 30s\n"
    "  - name: shipping\n"
    "    topic: rr.shipping\n"
    "    action: {type: ShipOrder, payload: {order: \"${context.order_id}\"}}\n"
    "    pivot: true\n"
    "    timeout: 30s\n";

static int group_setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    PGconn *c = tu_connect();
    /* Login roles in one ferry role each; the consumer names they own. */
    tu_exec(c, "CREATE ROLE rr_relay LOGIN IN ROLE ferry_relay; "
               "CREATE ROLE rr_recon LOGIN IN ROLE ferry_reconciler; "
               "CREATE ROLE rr_svc LOGIN IN ROLE ferry_consumer; "
               "CREATE ROLE rr_saga LOGIN IN ROLE ferry_consumer; "
               "CREATE ROLE rr_nobody LOGIN; "
               "INSERT INTO ferry.consumer_owner (consumer, role) VALUES "
               "  ('rr-acct', 'rr_svc'), ('orchestrator', 'rr_saga'), "
               "  ('payment', 'rr_saga'), ('inventory', 'rr_saga'), ('shipping', 'rr_saga'); "
               /* The services' own tables, theirs to write. */
               "CREATE TABLE rr_applied (key text, payload text); "
               "GRANT INSERT, SELECT ON rr_applied TO rr_svc");
    if ((broker = tu_saga_setup(c, topic_of)) == NULL)
        return -1;
    tu_exec(c, "GRANT INSERT ON t_effect TO rr_saga; "
               "GRANT USAGE ON SEQUENCE t_effect_n_seq TO rr_saga");
    PQfinish(c);
    relay_db = fpg_conninfo_for(tu_pg, "rr_relay", NULL);
    recon_db = fpg_conninfo_for(tu_pg, "rr_recon", NULL);
    svc_db = fpg_conninfo_for(tu_pg, "rr_svc", NULL);
    saga_db = fpg_conninfo_for(tu_pg, "rr_saga", NULL);
    nobody_db = fpg_conninfo_for(tu_pg, "rr_nobody", NULL);
    return 0;
}

static int group_teardown(void **state)
{
    kt_stop(broker);
    free(relay_db);
    free(recon_db);
    free(svc_db);
    free(saga_db);
    free(nobody_db);
    return tu_group_teardown(state);
}

/* `ferry-relay run ...` as rr_relay (db), started. */
static tu_proc relay_start(const char *db, const char *holder, int once)
{
    const char *argv[] = {tu_relay_bin(), "run", "--db", db, "--kafka", kt_bootstrap(broker),
                          "--holder", holder, "--set", "poll_interval_ms=50",
                          once ? "--once" : NULL, NULL};
    const char *env[] = {TU_RELAY_ASAN, NULL};
    return tu_proc_start(argv, env);
}

static void emit_n(const char *topic, int n)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'k-' || (g %% 3), 'T', "
                           "json_build_object('g', g)::jsonb)) FROM generate_series(1, %d) g",
                           topic, n);
    tu_exec(c, sql);
    free(sql);
    PQfinish(c);
}

static long long unpublished(const char *topic)
{
    PGconn *c = tu_connect();
    long long n = tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox "
                                          "WHERE topic = '%s' AND published_at IS NULL", topic));
    PQfinish(c);
    return n;
}

/* ------------------------------------------------------------ the relay */

static void relay_publishes_as_a_relay_member(void **state)
{
    emit_n("rr.relay", 7);
    tu_proc p = relay_start(relay_db, "rr-once", 1);
    int st = tu_proc_wait(&p, 120000);
    if (st != 0)
        tu_proc_fail(&p, "ferry-relay run --once as rr_relay exited %d", st);
    tu_proc_done(&p);
    assert_int_equal(unpublished("rr.relay"), 0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), "rr.relay", 7, 10000);
    assert_non_null(got);
    assert_int_equal(got->count, 7);
    kt_msgs_free(got);
}

/* `ferry-relay slot create` as the role of conninfo db: what it said is
 * printed, for a failure. */
static tu_output slot_create_as(const char *db)
{
    const char *create[] = {tu_relay_bin(), "slot", "create", "--db", db, NULL};
    tu_output o = {0};
    o.status = tu_run(create, 60000, &o.out, &o.err);
    fprintf(stderr, "slot create: %d\n%s%s", o.status, o.out, o.err);
    return o;
}

/* A role that may read the schema but not record the slot (not a
 * ferry_relay member) is refused before the slot is made: nothing to
 * clean up, and the next try by the right role is not told the slot
 * exists already. */
static void slot_create_refuses_a_role_that_cannot_record_it(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "CREATE ROLE rr_wal_ro LOGIN REPLICATION; "
               "GRANT USAGE ON SCHEMA ferry TO rr_wal_ro; "
               "GRANT SELECT ON ferry.settings, ferry.wal_slot TO rr_wal_ro");
    char *db = fpg_conninfo_for(tu_pg, "rr_wal_ro", NULL);
    tu_output o = slot_create_as(db);
    assert_int_equal(o.status, 1);
    assert_non_null(strstr(o.err, "may not record the slot in ferry.wal_slot"));
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_replication_slots"), 0);
    tu_output_free(&o);
    free(db);
    PQfinish(c);
}

/*
 * The WAL source as its role (README, "Two sources"): a login role with
 * REPLICATION, a member of ferry_relay and nothing else, no superuser,
 * creates the slot (`ferry-relay slot create`), streams it and publishes.
 * The operator turns wal mode on, and back off for the tests after this
 * before the relay runs.
 */
static void wal_relay_publishes_as_a_relay_member_with_replication(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "CREATE ROLE rr_wal LOGIN REPLICATION IN ROLE ferry_relay");
    char *db = fpg_conninfo_for(tu_pg, "rr_wal", NULL);
    tu_output o = slot_create_as(db);
    assert_int_equal(o.status, 0);
    tu_output_free(&o);
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
    emit_n("rr.wal", 7);
    assert_int_equal(unpublished("rr.wal"), 0);          /* in WAL, not in the table */
    /* Back to table mode for the tests after this one, before the WAL
     * relay runs: it then confirms past the turn, and the table path
     * holds nothing back (README, "Leaving wal mode"). */
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'table'");
    const char *argv[] = {tu_relay_bin(), "run", "--db", db, "--kafka", kt_bootstrap(broker),
                          "--holder", "rr-wal", "--outbox-source", "wal", "--once", NULL};
    const char *env[] = {TU_RELAY_ASAN, NULL};
    tu_proc p = tu_proc_start(argv, env);
    int st = tu_proc_wait(&p, 120000);
    if (st != 0)
        tu_proc_fail(&p, "ferry-relay run --outbox-source wal --once as rr_wal exited %d", st);
    tu_proc_done(&p);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.settings s JOIN pg_replication_slots "
                               "r ON r.slot_name = s.wal_slot "
                               "WHERE r.confirmed_flush_lsn >= s.wal_until_lsn"), 1);
    tu_assert_topic(kt_bootstrap(broker), "rr.wal", 7, 10000, 7);   /* and in order per key */
    free(db);
    PQfinish(c);
}

/* ------------------------------------------------------- the reconciler */

static void reconciler_checks_and_repairs_as_a_reconciler_member(void **state)
{
    /* Something to find and to repair: a message past its attempts, which
     * repair moves to the relay's dead letters. */
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('rr.recon', 'k', 'T', '{}'::jsonb); "
               "UPDATE ferry.outbox SET attempts = 1000, last_error = 'test' "
               "WHERE topic = 'rr.recon'");
    char *out = NULL, *err = NULL;
    const char *check[] = {"check", "--db", recon_db, NULL};
    int st = tu_reconcile(check, 60000, &out, &err);
    if (st != 4)
        fail_msg("ferry-reconcile check as rr_recon: exit %d (want 4)\n%s%s", st, out, err);
    free(out);
    free(err);
    /* Moves the row to the relay's dead letters (1) and leaves the letter
     * for a decision (4). */
    const char *repair[] = {"repair", "--db", recon_db, NULL};
    st = tu_reconcile(repair, 60000, &out, &err);
    if (st != 5)
        fail_msg("ferry-reconcile repair as rr_recon: exit %d (want 5)\n%s%s", st, out, err);
    free(out);
    free(err);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter "
                               "WHERE topic = 'rr.recon' AND consumer = '' AND shard >= 0"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'rr.recon'"), 0);
    /* The decision: discard it, recorded. */
    const char *discard[] = {"repair", "--db", recon_db, "--discard", "rr.recon/k",
                             "--reason", "test", "--by", "rr", NULL};
    st = tu_reconcile(discard, 60000, &out, &err);
    if (st != 1)
        fail_msg("ferry-reconcile repair --discard as rr_recon: exit %d (want 1)\n%s%s", st,
                 out, err);
    free(out);
    free(err);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter "
                               "WHERE topic = 'rr.recon'"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter_log "
                               "WHERE topic = 'rr.recon' AND action = 'discard'"), 1);
    tu_exec(c, "DELETE FROM ferry.outbox WHERE topic = 'rr.recon'");
    PQfinish(c);
}

/* A role without ferry's privileges is told so, not "version 0". */
static void reconciler_names_a_permission_error(void **state)
{
    char *out = NULL, *err = NULL;
    const char *check[] = {"check", "--db", nobody_db, NULL};
    int st = tu_reconcile(check, 60000, &out, &err);
    assert_int_equal(st, 8);
    if (strstr(err, "permission denied") == NULL)
        fail_msg("the reconciler did not name the cause: %s", err);
    free(out);
    free(err);
}

/* --------------------------------------------------------- the consumer */

static ferry_code record(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    char *payload = json_dumps(m->payload, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *p[2] = {m->key, payload};
    PGresult *res = PQexecParams(conn, "INSERT INTO rr_applied VALUES ($1, $2)", 2, NULL, p,
                                 NULL, NULL, 0);
    free(payload);
    ferry_code rc = PQresultStatus(res) == PGRES_COMMAND_OK
                        ? FERRY_OK : ferry_error_from_pg(err, conn, res, "record");
    PQclear(res);
    return rc;
}

static void consumer_applies_as_a_consumer_member(void **state)
{
    emit_n("rr.acct", 6);
    tu_proc p = relay_start(relay_db, "rr-acct", 1);
    assert_int_equal(tu_proc_wait(&p, 120000), 0);
    tu_proc_done(&p);

    tu_consumer_db = svc_db;
    ferry_consumer *cons = tu_consumer_new("rr-acct", kt_bootstrap(broker), "rr.acct", record,
                                           NULL, NULL, 0);
    PGconn *c = tu_connect();
    ferry_error err;
    for (int i = 0; i < 600 && tu_int(c, "SELECT count(*) FROM rr_applied") < 6; i++)
        assert_ferry_ok(ferry_consumer_poll(cons, 50, &err), err);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM rr_applied"), 6);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox WHERE consumer = 'rr-acct'"), 6);
    ferry_consumer_destroy(cons);

    /* Under a name its role does not own it does not even start. */
    const char *topics[1] = {"rr.acct"};
    ferry_consumer_conf conf = {
        .name = "orchestrator", .db = svc_db, .kafka = kt_bootstrap(broker),
        .topics = topics, .topic_count = 1, .handler = record, .kafka_props = tu_group_props,
    };
    ferry_consumer *other = NULL;
    assert_int_not_equal(ferry_consumer_new(&conf, &other, &err), FERRY_OK);
    assert_null(other);
    assert_string_equal(err.sqlstate, "42501");
    if (strstr(err.message, "permission denied for consumer \"orchestrator\"") == NULL)
        fail_msg("the error does not name the cause: %s", err.message);
    tu_consumer_db = NULL;
    PQfinish(c);
}

/* ------------------------------------------------------- a saga worker */

static ferry_code participant_handler(PGconn *conn, const ferry_message *m, void *arg,
                                      ferry_error *err)
{
    ferry_participant_outcome oc;
    return ferry_participant_handle(conn, m, arg, &oc, err);
}

static void saga_worker_runs_as_a_consumer_member(void **state)
{
    tu_proc relay = relay_start(relay_db, "rr-saga", 0);
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    if (ferry_saga_def_parse(order_yaml, strlen(order_yaml), "order.yaml", &def, &errs) !=
        FERRY_OK)
        fail_msg("order yaml: %s: %s", errs.errors[0].field, errs.errors[0].message);
    ferry_saga_registry *reg = NULL;
    ferry_error err;
    assert_ferry_ok(ferry_saga_registry_new(NULL, &reg, &err), err);
    assert_ferry_ok(ferry_saga_registry_add(reg, def, &err), err);

    tu_consumer_db = saga_db;
    ferry_consumer *cons[TU_C_COUNT];
    for (int i = 0; i < TU_C_COUNT; i++)
        cons[i] = tu_saga_consumer_new(i, broker, topic_of[i], reg, participant_handler, NULL);
    tu_consumer_db = NULL;

    PGconn *w = PQconnectdb(saga_db);     /* the worker's own connection */
    assert_int_equal(PQstatus(w), CONNECTION_OK);
    char id[FERRY_UUID_STRING_SIZE];
    tu_saga_start(w, reg, "order", "{\"order_id\": \"o-rr\"}", id);

    PGconn *admin = tu_connect();
    char *done = tu_sprintf("SELECT count(*) FROM ferry.saga WHERE id = '%s' "
                            "AND state = 'completed'", id);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (tu_int(admin, done) == 0) {
        for (int i = 0; i < TU_C_COUNT; i++)
            assert_ferry_ok(ferry_consumer_poll(cons[i], 10, &err), err);
        int fired = 0;
        assert_ferry_ok(ferry_saga_fire_timers(w, reg, 0, 16, &fired, &err), err);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 60)
            tu_proc_fail(&relay, "saga %s did not complete as rr_saga", id);
    }
    free(done);
    tu_assert_str_of(admin, tu_sprintf("SELECT string_agg(participant || ':' || what, ',' "
                                       "ORDER BY n) FROM t_effect WHERE saga = '%s'", id),
                     "payment:do,inventory:do,shipping:do");
    PQfinish(admin);
    PQfinish(w);
    tu_saga_teardown(cons, reg, &relay, NULL);
}

int main(void)
{
    /* The consumers' tests run a second time at once, one message per
     * transaction (FERRY_CONSUMER_TEST_BATCH_MAX=1, a test hook of the
     * library, inherited by the programs), as every consumer test does. */
    pid_t unbatched = tu_unbatched_pass_start("test_roles_run");
    tu_filter_from_env();
    const char *hook = getenv("FERRY_CONSUMER_TEST_BATCH_MAX");
    if (hook != NULL && strcmp(hook, "1") == 0 && getenv("FERRY_TEST_FILTER") == NULL)
        cmocka_set_test_filter("*_as_a_consumer_member");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(relay_publishes_as_a_relay_member),
        cmocka_unit_test(slot_create_refuses_a_role_that_cannot_record_it),
        cmocka_unit_test(wal_relay_publishes_as_a_relay_member_with_replication),
        cmocka_unit_test(reconciler_checks_and_repairs_as_a_reconciler_member),
        cmocka_unit_test(reconciler_names_a_permission_error),
        cmocka_unit_test(consumer_applies_as_a_consumer_member),
        cmocka_unit_test(saga_worker_runs_as_a_consumer_member),
    };
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    return failed + tu_unbatched_pass_wait(unbatched, "test_roles_run");
}
