/*
 * test_reconcile_outbox.c — ferry-reconcile's sweeps "outbox",
 * "dead_letters" and "garbage" against a real PostgreSQL (and, for the
 * dead relay, real ferry-relay processes and the development broker).
 *
 * Each test seeds a broken state directly in the database, then: `check`
 * finds it (exit 4) and changes nothing; `repair` fixes it (exit 1, or
 * 1|4 where something must be left for a person) and the database shows
 * the fix; a second `check` is clean (exit 0). Findings are read from
 * --json. The reconciler runs as a separate process, the ASan build of
 * ferry-reconcile ($FERRY_RECONCILE_BIN overrides).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_kafka.h"
#include "tu_proc.h"

static kt_broker *broker;       /* started by the one test that needs it */

/* ------------------------------------------------------------ running it */

typedef struct run_result {
    int status;
    char *out, *err;
    json_t *json;           /* the --json report, when it parsed */
} run_result;

static void run_free(run_result *r)
{
    free(r->out);
    free(r->err);
    json_decref(r->json);
    *r = (run_result){0};
}

/*
 * ferry-reconcile CMD --db (as user, NULL: the superuser) [--rules FILE]
 * --json ARGS...; NULL-terminated args. The report is parsed.
 */
static run_result reconcile_as(const char *user, const char *cmd, const char *rules,
                               const char *const *args)
{
    char *conninfo = user ? fpg_conninfo_for(tu_pg, user, NULL) : strdup(fpg_conninfo(tu_pg));
    assert_non_null(conninfo);
    const char *a[40] = {cmd, "--db", conninfo, "--json", "--no-progress"};
    int n = 5;
    if (rules != NULL) {
        a[n++] = "--rules";
        a[n++] = rules;
    }
    for (int i = 0; args != NULL && args[i] != NULL && n < 39; i++)
        a[n++] = args[i];
    a[n] = NULL;
    run_result r = {0};
    r.status = tu_reconcile(a, 60000, &r.out, &r.err);
    r.json = json_loads(r.out, 0, NULL);
    if (getenv("FERRY_TEST_VERBOSE"))
        fprintf(stderr, "ferry-reconcile %s -> %d\n%s\n%s\n", cmd, r.status, r.out, r.err);
    free(conninfo);
    return r;
}

static run_result reconcile(const char *cmd, const char *rules, const char *const *args)
{
    return reconcile_as(NULL, cmd, rules, args);
}

/* Fail with the whole report unless the exit status is want. */
static void expect_status(const run_result *r, int want)
{
    if (r->status != want) {
        /* The whole report, which cmocka's message would cut short. */
        fprintf(stderr, "stdout:\n%s\nstderr:\n%s\n", r->out, r->err);
        fail_msg("ferry-reconcile exited %d, expected %d", r->status, want);
    }
}

/* The findings of one sweep with this problem (and outcome, unless
 * NULL): how many, and *rows the sum of their counts. */
static int findings(const run_result *r, const char *sweep, const char *problem,
                    const char *outcome, long long *rows)
{
    assert_non_null(r->json);
    json_t *list = json_object_get(json_object_get(json_object_get(r->json, "sweeps"), sweep),
                                   "findings");
    assert_true(json_is_array(list));
    int n = 0;
    long long sum = 0;
    size_t i;
    json_t *f;
    json_array_foreach(list, i, f) {
        if (strcmp(json_string_value(json_object_get(f, "problem")), problem) != 0)
            continue;
        if (outcome && strcmp(json_string_value(json_object_get(f, "outcome")), outcome) != 0)
            continue;
        n++;
        sum += json_integer_value(json_object_get(f, "count"));
    }
    if (rows != NULL)
        *rows = sum;
    return n;
}

/* There are n findings of problem with outcome in sweep, of rows rows in
 * all. */
static void expect_findings(const run_result *r, const char *sweep, const char *problem,
                            const char *outcome, int n, long long rows)
{
    long long got_rows = 0;
    int got = findings(r, sweep, problem, outcome, &got_rows);
    if (got != n || got_rows != rows)
        fail_msg("%s: %d %s findings %s, of %lld rows; want %d of %lld", sweep, got, problem,
                 outcome, got_rows, n, rows);
}

/* The finding of sweep about subject (borrowed), or fail. */
static json_t *finding(const run_result *r, const char *sweep, const char *problem,
                       const char *subject)
{
    json_t *list = json_object_get(json_object_get(json_object_get(r->json, "sweeps"), sweep),
                                   "findings");
    size_t i;
    json_t *f;
    json_array_foreach(list, i, f) {
        if (strcmp(json_string_value(json_object_get(f, "problem")), problem) == 0 &&
            strcmp(json_string_value(json_object_get(f, "subject")), subject) == 0)
            return f;
    }
    fail_msg("no %s finding about \"%s\" in sweep %s:\n%s", problem, subject, sweep, r->out);
    return NULL;
}

static const char *message_of(const json_t *f)
{
    return json_string_value(json_object_get(f, "message"));
}

/* ------------------------------------------------------------------ data */

/* A fingerprint of the tables the sweeps may change: check must leave it
 * as it was (the reconciler's own lease aside: repair takes it; and a
 * live relay's heartbeat, which it renews meanwhile, is only whether it
 * is live: a make test run failed dead_relay_shards_go_to_a_live_one when
 * rc-live-b renewed during the check). */
static char *fingerprint(PGconn *c)
{
    return tu_str(c,
                  "SELECT md5(concat_ws('|', "
                  " (SELECT string_agg(concat_ws(',', name, holder, epoch, "
                  "                              CASE WHEN starts_with(name, 'relay:') "
                  "                                   THEN (expires_at > now())::text "
                  "                                   ELSE expires_at::text END), ';' "
                  "         ORDER BY name) FROM ferry.lease WHERE name <> 'reconciler'), "
                  " (SELECT string_agg(concat_ws(',', id, attempts, available_at, published_at), "
                  "         ';' ORDER BY id) FROM ferry.outbox), "
                  " (SELECT string_agg(concat_ws(',', id, message_id, consumer), ';' ORDER BY id) "
                  "    FROM ferry.dead_letter), "
                  " (SELECT count(*) FROM ferry.inbox), "
                  " (SELECT count(*) FROM ferry.inbox_held), "
                  " (SELECT count(*) FROM ferry.dead_letter_log)))");
}

/* check: exit 4, and nothing changed. The report is returned. */
static run_result check_finds(PGconn *c, const char *rules)
{
    char *before = fingerprint(c);
    run_result r = reconcile("check", rules, NULL);
    expect_status(&r, 4);
    char *after = fingerprint(c);
    assert_string_equal(before, after);
    free(before);
    free(after);
    return r;
}

/* A run whose report is not looked at: only its exit status, want. */
static void reconcile_exits(const char *user, const char *cmd, const char *rules,
                            const char *const *args, int want)
{
    run_result r = reconcile_as(user, cmd, rules, args);
    expect_status(&r, want);
    run_free(&r);
}

static void check_clean(const char *rules)
{
    reconcile_exits(NULL, "check", rules, NULL, 0);
}

/* Make rows of topic look created and available an hour ago, ids
 * included (UUIDv7: the id's first 48 bits are its creation time). */
static void backdate(PGconn *c, const char *topic)
{
    char *sql = tu_sprintf(
        "UPDATE ferry.outbox SET created_at = now() - interval '1 hour', "
        "  available_at = now() - interval '1 hour', "
        "  id = (lpad(to_hex(floor(extract(epoch FROM now() - interval '1 hour') * 1000)::bigint), "
        "             12, '0') || substr(replace(id::text, '-', ''), 13))::uuid "
        "WHERE topic = '%s'", topic);
    tu_exec(c, sql);
    free(sql);
}

static void emit_n(PGconn *c, const char *topic, int n, int keys)
{
    char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'k' || (g %% %d), 'Tested', "
                           "json_build_object('g', g)::text)) FROM generate_series(1, %d) g",
                           topic, keys, n);
    tu_exec(c, sql);
    free(sql);
}

static int reset(void **state)
{
    return tu_exec_once("TRUNCATE ferry.outbox, ferry.outbox_key, ferry.dead_letter, "
                        "ferry.dead_letter_log, ferry.inbox, ferry.inbox_key, ferry.inbox_held, "
                        "ferry.inbox_attempt, ferry.reconcile_pass; "
                        "DELETE FROM ferry.lease");
}

/* A connection that looks like a live relay named holder to the sweeps. */
static PGconn *fake_relay_session(const char *holder)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SET application_name = 'ferry-relay %s'", holder);
    tu_exec(c, sql);
    free(sql);
    return c;
}

/* Shard leases from..to for holder, and its heartbeat; an hour left on
 * each unless hb_expired (the heartbeat ran out a minute ago). */
static void seed_leases(PGconn *c, const char *holder, int from, int to, int hb_expired)
{
    char *sql = tu_sprintf(
        "INSERT INTO ferry.lease (name, holder, epoch, expires_at, acquired_at, renewed_at) "
        "SELECT 'shard:' || g, '%s', 7, now() + interval '1 hour', now(), now() "
        "  FROM generate_series(%d, %d) g; "
        "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
        "VALUES ('relay:%s', '%s', 2, now() + %s)",
        holder, from, to, holder, holder,
        hb_expired ? "interval '-1 minute'" : "interval '1 hour'");
    tu_exec(c, sql);
    free(sql);
}

/* ------------------------------------------------------------ dead leases */

/*
 * Holders: "ghost" has no session (dead), "stale-1" has a session but its
 * heartbeat expired (dead), "alive-1" has both (alive). Check
 * names the two dead ones only; repair expires exactly their leases,
 * under the same holder and epoch, heartbeats included; then all clean.
 */
static void dead_leases_are_expired(void **state)
{
    PGconn *c = tu_connect();
    PGconn *alive = fake_relay_session("alive-1");
    PGconn *stale = fake_relay_session("stale-1");
    seed_leases(c, "ghost", 0, 5, 0);
    seed_leases(c, "stale-1", 6, 10, 1);
    seed_leases(c, "alive-1", 11, 15, 0);
    /* A name the server cannot keep in application_name (ASCII only): its
     * session cannot be told, so only its heartbeat may judge it. */
    seed_leases(c, "g\xc3\xabist", 16, 17, 0);
    /* No session, but a heartbeat renewed just now: a relay reconnecting
     * after a database restart, not a dead one. */
    seed_leases(c, "reconnecting", 18, 19, 0);
    tu_exec(c, "UPDATE ferry.lease SET renewed_at = now() WHERE name = 'relay:reconnecting'");

    run_result r = check_finds(c, NULL);
    expect_findings(&r, "outbox", "dead_lease", "found", 2, 11);
    json_t *f = finding(&r, "outbox", "dead_lease", "relay ghost");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 6);
    assert_non_null(strstr(message_of(f), "no session"));
    assert_non_null(strstr(message_of(f), "0, 1, 2, 3, 4, 5"));
    f = finding(&r, "outbox", "dead_lease", "relay stale-1");
    assert_non_null(strstr(message_of(f), "heartbeat lease relay:stale-1 expired"));
    run_free(&r);

    r = reconcile("repair", NULL, NULL);
    expect_status(&r, 1);
    expect_findings(&r, "outbox", "dead_lease", "repaired", 2, 11);
    run_free(&r);
    /* The dead ones' leases ran out now, same holder and epoch; the live
     * one's are untouched. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder IN "
                               "('ghost', 'stale-1') AND starts_with(name, 'shard:') "
                               "AND expires_at <= now() AND epoch = 7"), 11);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name = 'relay:ghost' "
                               "AND expires_at <= now() AND holder = 'ghost'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'alive-1' "
                               "AND expires_at > now() + interval '50 minutes'"), 6);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'g\xc3\xabist' "
                               "AND expires_at > now() + interval '50 minutes'"), 3);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'reconnecting' "
                               "AND expires_at > now() + interval '50 minutes'"), 3);
    check_clean(NULL);
    /* Idempotent: nothing left to do. */
    reconcile_exits(NULL, "repair", NULL, NULL, 0);
    PQfinish(stale);
    PQfinish(alive);
    PQfinish(c);
}

/* holder's heartbeat as a relay with lease_ttl_ms ttl_s * 1000 leaves it
 * when it last renewed silent_s seconds ago. */
static void heartbeat_renewed_ago(PGconn *c, const char *holder, int ttl_s, int silent_s)
{
    char *sql = tu_sprintf("UPDATE ferry.lease SET renewed_at = now() - interval '%d seconds', "
                           "  expires_at = now() + interval '%d seconds' "
                           "WHERE name = 'relay:%s'",
                           silent_s, ttl_s - silent_s, holder);
    tu_exec(c, sql);
    free(sql);
}

/*
 * A relay renews its heartbeat every third of its TTL: with a TTL of 60 s,
 * every 20 s. Without a session (reconnecting), one that renewed 15 s ago
 * is on schedule, not dead; the old rule (silent after 10 s at most)
 * expired its leases (the audit saw all 16 shards expired 0.4 s after a
 * relay's sessions were terminated, its heartbeat 49 s from expiry). One
 * silent past a renewal period and its margin (30 s) is dead.
 */
static void a_long_ttl_relay_without_a_session_is_dead_only_once_silent(void **state)
{
    PGconn *c = tu_connect();
    seed_leases(c, "on-time", 0, 7, 0);
    heartbeat_renewed_ago(c, "on-time", 60, 15);
    seed_leases(c, "silent", 8, 15, 0);
    heartbeat_renewed_ago(c, "silent", 60, 30);

    run_result r = check_finds(c, NULL);
    expect_findings(&r, "outbox", "dead_lease", "found", 1, 8);
    json_t *f = finding(&r, "outbox", "dead_lease", "relay silent");
    assert_non_null(strstr(message_of(f), "no session"));
    run_free(&r);

    r = reconcile("repair", NULL, NULL);
    expect_status(&r, 1);
    expect_findings(&r, "outbox", "dead_lease", "repaired", 1, 8);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'on-time' "
                               "AND expires_at > now() + interval '50 minutes'"), 8);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name = 'relay:on-time' "
                               "AND expires_at > now()"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'silent' "
                               "AND expires_at <= now()"), 9);
    PQfinish(c);
}

/* A writer's session named like the silent relay's ("ferry-relay
 * silent") is not that relay's: it is still dead once silent. Before:
 * "alive but behind", its shards held until its heartbeat expired. */
static void a_session_named_like_a_relay_by_another_role_keeps_no_relay_alive(void **state)
{
    PGconn *c = tu_connect();
    seed_leases(c, "silent", 8, 15, 0);
    heartbeat_renewed_ago(c, "silent", 60, 30);
    tu_exec(c, "DROP ROLE IF EXISTS ro_forger; CREATE ROLE ro_forger LOGIN; "
               "GRANT ferry_writer TO ro_forger");
    char *ci = tu_sprintf("%s user=ro_forger application_name='ferry-relay silent'",
                          fpg_conninfo(tu_pg));
    PGconn *f = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(f), CONNECTION_OK);
    run_result r = check_finds(c, NULL);
    expect_findings(&r, "outbox", "dead_lease", "found", 1, 8);
    run_free(&r);
    PQfinish(f);
    tu_exec(c, "DROP ROLE ro_forger");
    PQfinish(c);
}

/* ------------------------------------------------------- over-attempted */

static void over_attempted_rows_become_dead_letters(void **state)
{
    char *rules = tu_temp_file("budgets: {max_attempts: 3}\n");
    PGconn *c = tu_connect();
    emit_n(c, "t.oa1", 2, 2);       /* k0, k1 */
    emit_n(c, "t.oa2", 1, 1);       /* k0 */
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 5, "
               "last_error = 'Broker: Message size too large' WHERE topic IN ('t.oa1', 't.oa2')");
    /* Under the budget, and published: not over-attempted. */
    emit_n(c, "t.oa3", 2, 2);
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 2 WHERE topic = 't.oa3' AND aggregateid = 'k0'");
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 9, published_at = now() "
               "WHERE topic = 't.oa3' AND aggregateid = 'k1'");

    run_result r = check_finds(c, rules);
    expect_findings(&r, "outbox", "over_attempted", "found", 2, 3);
    json_t *f = finding(&r, "outbox", "over_attempted", "topic t.oa1");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 2);
    assert_int_equal(json_array_size(json_object_get(json_object_get(f, "detail"), "samples")), 2);
    assert_non_null(strstr(message_of(f), "Message size too large"));
    run_free(&r);

    char *before = tu_str(c, "SELECT string_agg(concat_ws(',', id, seq, shard, aggregateid), ';' "
                             "ORDER BY id) FROM ferry.outbox WHERE topic IN ('t.oa1', 't.oa2')");
    /* Repaired, and the dead letters it made are left for a person. */
    r = reconcile("repair", rules, NULL);
    expect_status(&r, 1 | 4);
    expect_findings(&r, "outbox", "over_attempted", "repaired", 2, 3);
    expect_findings(&r, "dead_letters", "dead_letter", "left", 2, 3);
    run_free(&r);
    char *after = tu_str(c, "SELECT string_agg(concat_ws(',', message_id, seq, shard, "
                            "aggregateid), ';' ORDER BY message_id) FROM ferry.dead_letter "
                            "WHERE consumer = '' AND attempts = 5 AND reason = 'reconciler: 5 "
                            "delivery attempts, last error: Broker: Message size too large'");
    assert_non_null(after);
    assert_string_equal(before, after);     /* same messages, positions, shards */
    free(before);
    free(after);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic IN "
                               "('t.oa1', 't.oa2')"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.oa3'"), 2);

    /* A person decides: discard them; then all is clean. */
    const char *discard[] = {"--discard", "t.oa1/k0", "--discard", "t.oa1/k1", "--discard",
                             "t.oa2/k0", "--reason", "payload too large for good", "--by",
                             "ops", NULL};
    r = reconcile("repair", rules, discard);
    expect_status(&r, 1);
    assert_int_equal(findings(&r, "dead_letters", "dead_letter", "repaired", NULL), 3);
    run_free(&r);
    check_clean(rules);
    tu_temp_remove(rules);
    PQfinish(c);
}

/* A row whose id already has a relay dead letter (a service emitted again
 * with an id it used before, after the first was moved): moving it must
 * neither drop the row nor overwrite the letter, on either path — the
 * relay's (its attempt counted) and the reconciler's — and must not stop
 * the rest of the batch. Once a person has removed one of the two, the
 * move goes through. (schemas/009_outbox_dead_letter.sql) */
static void a_dead_letter_clash_keeps_the_row(void **state)
{
    char *rules = tu_temp_file("budgets: {max_attempts: 3}\n");
    PGconn *c = tu_connect();
    emit_n(c, "t.clash", 2, 2);     /* k0, k1 */
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 5, last_error = 'too large' "
               "WHERE topic = 't.clash'");
    tu_exec(c, "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregateid, type, "
               "  payload, seq, shard, created_at, reason) "
               "SELECT id, '', 't.earlier', 'kx', 'Earlier', '{}', 1, shard, created_at, "
               "  'the earlier message' FROM ferry.outbox "
               "WHERE topic = 't.clash' AND aggregateid = 'k0'");
    const char *letter_sql = "SELECT concat_ws(',', topic, aggregateid, type, reason, attempts) "
                             "FROM ferry.dead_letter WHERE topic = 't.earlier'";
    char *letter = tu_str(c, letter_sql);

    /* The relay's path: the attempt is counted, the row stays. */
    char *outcome = tu_str(c, "SELECT outcome FROM ferry.outbox o, "
                              "ferry.outbox_dead_letter(o.id, 3, true, 'broker says no') "
                              "WHERE o.topic = 't.clash' AND o.aggregateid = 'k0'");
    assert_string_equal(outcome, "clash");
    free(outcome);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.clash' "
                               "AND aggregateid = 'k0' AND attempts = 6 "
                               "AND last_error = 'broker says no'"), 1);

    /* The reconciler's: the other row moves, this one is left, said why. */
    run_result r = reconcile("repair", rules, NULL);
    expect_status(&r, 1 | 4);
    expect_findings(&r, "outbox", "over_attempted", "repaired", 1, 1);
    expect_findings(&r, "outbox", "over_attempted", "left", 1, 1);
    json_t *f = finding(&r, "outbox", "over_attempted", "topic t.clash");
    assert_non_null(f);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.clash' "
                               "AND aggregateid = 'k0'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 't.clash' "
                               "AND aggregateid = 'k1'"), 1);
    char *still = tu_str(c, letter_sql);
    assert_string_equal(letter, still);     /* the earlier letter, untouched */
    free(still);
    free(letter);

    /* Two messages share one id: no replay or discard can help (each
     * would write the id into the outbox again), a person picks one.
     * The earlier letter deleted, the next repair moves the row. */
    tu_exec(c, "DELETE FROM ferry.dead_letter WHERE topic = 't.earlier'");
    r = reconcile("repair", rules, NULL);
    expect_findings(&r, "outbox", "over_attempted", "repaired", 1, 1);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.clash'"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 't.clash' "
                               "AND consumer = '' AND attempts = 6"), 1);
    tu_temp_remove(rules);
    PQfinish(c);
}

/* -------------------------------------------------------------------- lag */

/*
 * Rows ready an hour ago are lag, per shard, with the reason; not those
 * waiting behind a delayed message of their key (order before
 * availability), nor those of a key parked behind a dead letter. Lag is
 * not the reconciler's to repair: left, with why.
 */
static void lag_is_reported_per_shard_with_the_reason(void **state)
{
    PGconn *c = tu_connect();
    emit_n(c, "t.lag", 12, 4);
    backdate(c, "t.lag");
    /* Key d: a message delayed an hour ahead of two old ones. */
    emit_n(c, "t.lagd", 3, 1);
    backdate(c, "t.lagd");
    tu_exec(c, "UPDATE ferry.outbox SET available_at = now() + interval '1 hour' "
               "WHERE topic = 't.lagd' AND seq = 1");
    /* Key p: parked behind a relay dead letter. */
    emit_n(c, "t.lagp", 2, 1);
    backdate(c, "t.lagp");
    tu_exec(c, "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregateid, type, "
               "payload, seq, shard, created_at, reason) SELECT gen_random_uuid(), '', 't.lagp', "
               "'k0', 'Tested', '{}', 0, shard, now(), 'poison' FROM ferry.outbox_key "
               "WHERE topic = 't.lagp'");
    /* Fresh rows are not lag. */
    emit_n(c, "t.fresh", 5, 5);

    run_result r = check_finds(c, NULL);
    long long rows = 0;
    int shards = findings(&r, "outbox", "lag", "found", &rows);
    assert_int_equal(rows, 12);
    assert_int_equal(shards, (int)tu_int(c, "SELECT count(DISTINCT shard) FROM ferry.outbox "
                                            "WHERE topic = 't.lag'"));
    char *subject = tu_str(c, "SELECT 'shard ' || shard FROM ferry.outbox "
                              "WHERE topic = 't.lag' LIMIT 1");
    json_t *f = finding(&r, "outbox", "lag", subject);
    assert_non_null(strstr(message_of(f), "no relay is running"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(f, "detail"), "state")),
                        "no_relay");
    run_free(&r);

    r = reconcile("repair", NULL, NULL);
    expect_status(&r, 4);
    expect_findings(&r, "outbox", "lag", "left", shards, 12);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.lag'"), 12);

    /* A live relay holding the shard: alive but behind. */
    PGconn *relay = fake_relay_session("slow-1");
    char *sql = tu_sprintf("INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                           "SELECT 'shard:' || g, 'slow-1', 1, now() + interval '1 hour' "
                           "FROM generate_series(0, 15) g; "
                           "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                           "VALUES ('relay:slow-1', 'slow-1', 1, now() + interval '1 hour')");
    tu_exec(c, sql);
    free(sql);
    r = check_finds(c, NULL);
    f = finding(&r, "outbox", "lag", subject);
    assert_non_null(strstr(message_of(f), "held by relay slow-1, which is alive but behind"));
    assert_int_equal(findings(&r, "outbox", "dead_lease", NULL, NULL), 0);
    run_free(&r);
    free(subject);
    PQfinish(relay);
    PQfinish(c);
}

/*
 * Rows whose caller-given ids are not UUIDv7 of their time (any id is
 * allowed: ferry.emit_with_id) lag as any other. The sweep read only rows
 * whose id sorted before the lag budget's UUIDv7, so a backlog of such ids
 * was reported clean (exit 0) while nothing was published (an outside
 * audit).
 */
static void lag_is_found_whatever_the_ids(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit_with_id(('ffffffff-ffff-4fff-bfff-fffffffff' "
               "  || lpad(g::text, 3, '0'))::uuid, 't.lagv4', 'k' || g, 'Tested', '{}') "
               "FROM generate_series(1, 3) g");
    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '1 hour', "
               "available_at = now() - interval '1 hour' WHERE topic = 't.lagv4'");
    run_result r = check_finds(c, NULL);
    long long rows = 0;
    assert_true(findings(&r, "outbox", "lag", "found", &rows) > 0);
    assert_int_equal(rows, 3);
    run_free(&r);
    PQfinish(c);
}

/* ------------------------------------------------------------ a real relay */

/* `ferry-relay run` as holder, with its lease_ttl_ms set to ttl_ms. */
static tu_proc relay_spawn(const char *holder, const char *ttl_ms)
{
    char set[64];
    snprintf(set, sizeof set, "lease_ttl_ms=%s", ttl_ms);
    const char *args[] = {"--set", set, NULL};
    const char *env[] = {TU_RELAY_ASAN, NULL};
    return tu_relay_start(kt_bootstrap(broker), holder, args, env);
}

/*
 * A relay with a long lease dies (SIGKILL) holding every shard; its rows
 * lag. A second relay runs but cannot take the shards. check finds the
 * dead relay and the lag; repair expires the dead relay's leases, and the
 * live relay takes the shards and publishes the backlog.
 */
static void dead_relay_shards_go_to_a_live_one(void **state)
{
    if (broker == NULL) {
        broker = kt_start(1);
        assert_non_null(broker);
    }
    PGconn *c = tu_connect();
    tu_proc a = relay_spawn("rc-dead-a", "600000");
    tu_await(c, "SELECT count(*) = 16 FROM ferry.lease WHERE holder = 'rc-dead-a' "
                "AND starts_with(name, 'shard:') AND expires_at > now() + interval '5 minutes'",
             30000);
    kill(a.pid, SIGKILL);
    assert_int_equal(tu_proc_wait(&a, 10000), 128 + SIGKILL);
    tu_await(c, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                "WHERE application_name = 'ferry-relay rc-dead-a')", 10000);
    /* No session is not enough: its heartbeat must have gone silent too
     * (a third of its TTL and 5 s without a renewal: 205 s here; a relay
     * reconnecting renews sooner). The heartbeat is moved back by 300 s
     * rather than waited for, and still has 300 s to run. */
    tu_exec(c, "UPDATE ferry.lease SET renewed_at = renewed_at - interval '300 seconds', "
               "  expires_at = expires_at - interval '300 seconds' "
               "WHERE name = 'relay:rc-dead-a'");
    emit_n(c, "t.takeover", 40, 8);
    backdate(c, "t.takeover");

    tu_proc b = relay_spawn("rc-live-b", "3000");
    tu_await(c, "SELECT count(*) = 1 FROM ferry.lease WHERE name = 'relay:rc-live-b' "
                "AND expires_at > now()", 30000);
    tu_await(c, "SELECT count(*) > 0 FROM pg_stat_activity "
                "WHERE application_name = 'ferry-relay rc-live-b'", 10000);

    run_result r = check_finds(c, NULL);
    json_t *f = finding(&r, "outbox", "dead_lease", "relay rc-dead-a");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 16);
    long long rows = 0;
    assert_true(findings(&r, "outbox", "lag", "found", &rows) > 0);
    assert_int_equal(rows, 40);
    char *subject = tu_str(c, "SELECT 'shard ' || shard FROM ferry.outbox LIMIT 1");
    assert_non_null(strstr(message_of(finding(&r, "outbox", "lag", subject)),
                           "held by relay rc-dead-a, which is dead"));
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 40);

    r = reconcile("repair", NULL, NULL);
    expect_status(&r, 1);
    expect_findings(&r, "outbox", "dead_lease", "repaired", 1, 16);
    assert_true(findings(&r, "outbox", "lag", "pending", &rows) > 0);
    assert_int_equal(rows, 40);
    assert_non_null(strstr(message_of(finding(&r, "outbox", "lag", subject)),
                           "takes the shard at its next lease tick"));
    run_free(&r);
    free(subject);

    /* The live relay takes over and publishes the backlog. */
    tu_await(c, "SELECT count(*) = 0 FROM ferry.outbox", 30000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'rc-live-b' "
                               "AND starts_with(name, 'shard:') AND expires_at > now()"), 16);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), "t.takeover", 40, 10000);
    assert_non_null(got);
    assert_int_equal(got->count, 40);
    kt_msgs_free(got);
    check_clean(NULL);

    assert_int_equal(tu_proc_stop(&b, 30000), 0);
    tu_proc_done(&a);
    tu_proc_done(&b);
    PQfinish(c);
}

/* ------------------------------------------------------------ the text report */

/*
 * Any writer may emit a key (or a dead letter's reason) with control
 * characters: emit takes any valid UTF-8 without NUL. The text report
 * printed them raw, so a writer could add lines of its own ("[repaired]
 * forged", "summary: no problems; exit 0") and terminal escapes. Every
 * value from the database is escaped now: \n, \x1b, \\ as in C.
 */
static void the_text_report_escapes_what_writers_wrote(void **state)
{
    PGconn *c = tu_connect();
    static const char forged[] =
        "E'k\\\\1\\n  [repaired] forged: everything is fine\\nsummary: no problems; "
        "exit 0\\n\\x1b[2J\\u009b'";
    char *sql = tu_sprintf("SELECT ferry.emit('orders', %s, 'T', '{}')", forged);
    tu_exec(c, sql);
    free(sql);
    backdate(c, "orders");
    /* A dead letter of the same key, with a reason of the same kind. */
    sql = tu_sprintf(
        "SELECT ferry.emit('orders.dl', %s, 'T', '{}'); "
        "WITH m AS (DELETE FROM ferry.outbox WHERE topic = 'orders.dl' RETURNING *) "
        "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid, "
        "  type, payload, headers, seq, shard, created_at, attempts, reason) "
        "SELECT id, '', topic, aggregatetype, aggregateid, type, payload, headers, seq, shard, "
        "  created_at, 10, E'boom\\n  [repaired] forged reason\\r\\x1b[31m' FROM m",
        forged);
    tu_exec(c, sql);
    free(sql);

    char *conninfo = strdup(fpg_conninfo(tu_pg));
    const char *args[] = {"check", "--db", conninfo, "--no-progress", NULL};
    char *out = NULL, *err = NULL;
    int status = tu_reconcile(args, 60000, &out, &err);
    if (status != 4 || strchr(out, '\x1b') != NULL || strchr(out, '\r') != NULL ||
        strstr(out, "\xc2\x9b") != NULL || strstr(out, "\n  [repaired] forged") != NULL ||
        strstr(out, "\nsummary: no problems; exit 0") != NULL ||
        strstr(out, "k\\\\1\\n  [repaired] forged: everything is fine\\nsummary: no "
                    "problems; exit 0\\n\\x1b[2J\\u009b") == NULL ||
        strstr(out, "boom\\n  [repaired] forged reason\\r\\x1b[31m") == NULL)
        fail_msg("check exited %d; its text report is not escaped:\n%s\nstderr:\n%s", status,
                 out, err);
    free(out);
    free(err);
    free(conninfo);
    PQfinish(c);
}

/* ------------------------------------------------------------ dead letters */

/* A relay dead letter of topic/key at position seq, as the relay makes
 * one: the outbox row moved, with its id, position and shard. */
static void relay_dead_letter(PGconn *c, const char *topic, const char *key, int n)
{
    char *sql = tu_sprintf(
        "SELECT count(ferry.emit('%s', '%s', 'Tested', json_build_object('n', g)::text)) "
        "  FROM generate_series(1, %d) g; "
        "WITH m AS (DELETE FROM ferry.outbox WHERE topic = '%s' AND aggregateid = '%s' "
        "           RETURNING *) "
        "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid, "
        "  type, payload, headers, seq, shard, created_at, attempts, reason) "
        "SELECT id, '', topic, aggregatetype, aggregateid, type, payload, headers, seq, shard, "
        "  created_at, 10, 'Broker: Message size too large' FROM m ORDER BY seq",
        topic, key, n, topic, key);
    tu_exec(c, sql);
    free(sql);
}

/*
 * A relay dead letter's id may be used again once its row left the
 * outbox (emit refuses only an id a waiting row has). Replaying or
 * discarding the letter then found that id taken: the replay put nothing
 * back and the discard wrote no marker, the letter gone either way, and
 * the key's consumers saw a gap at its position for ever (an outside
 * audit). The message (or its marker) now goes back at its position under
 * another id.
 */
static void a_dead_letter_whose_id_was_used_again_goes_back_all_the_same(void **state)
{
    PGconn *c = tu_connect();
    relay_dead_letter(c, "t.reused", "k1", 1);
    relay_dead_letter(c, "t.reused", "k2", 1);
    tu_exec(c, "SELECT ferry.emit_with_id(message_id, 't.reused', 'other-' || aggregateid, "
               "'Tested', '{}') FROM ferry.dead_letter WHERE topic = 't.reused'");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter d "
                               "WHERE topic = 't.reused' AND aggregateid = 'k1' "
                               "AND ferry.replay_dead_letter(d.id)"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter d "
                               "WHERE topic = 't.reused' AND aggregateid = 'k2' "
                               "AND ferry.discard_dead_letter(d.id)"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.reused' "
                               "AND aggregateid = 'k1' AND seq = 1 AND payload = '{\"n\": 1}'"),
                     1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.reused' "
                               "AND aggregateid = 'k2' AND seq = 1 "
                               "AND headers ? 'ferry_discarded'"), 1);
    /* The other keys' messages are as they were. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.reused' "
                               "AND aggregateid LIKE 'other-%' AND payload = '{}'"), 2);
    PQfinish(c);
}

/*
 * Two decisions naming one letter through different targets (its id and
 * its TOPIC/KEY): refused as a usage error naming both flags, nothing
 * done. Once the first was carried out, the second found no letter and
 * was skipped silently (exit 1), and dead_letter_log recorded a replay
 * with the discard's reason.
 */
static void two_decisions_on_one_letter_by_different_names_are_refused(void **state)
{
    PGconn *c = tu_connect();
    relay_dead_letter(c, "t.twice", "K1", 1);
    char *id = tu_str(c, "SELECT id::text FROM ferry.dead_letter WHERE aggregateid = 'K1'");
    char *before = fingerprint(c);
    const char *args[] = {"--replay", "t.twice/K1", "--discard", id, "--reason", "drop it",
                          NULL};
    run_result r = reconcile("repair", NULL, args);
    expect_status(&r, 16);
    char *want = tu_sprintf("--replay t.twice/K1 and --discard %s: one decision per dead "
                            "letter", id);
    if (strstr(r.err, want) == NULL)
        fail_msg("stderr names not both flags (want \"%s\"):\n%s", want, r.err);
    free(want);
    run_free(&r);
    char *after = fingerprint(c);
    assert_string_equal(before, after);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter_log"), 0);
    free(before);
    free(after);
    free(id);
    PQfinish(c);
}

static void dead_letters_replayed_and_discarded(void **state)
{
    PGconn *c = tu_connect();
    /* A target that names nothing: an operational error naming it. */
    const char *none[] = {"--replay", "999999", NULL};
    run_result r = reconcile("repair", NULL, none);
    expect_status(&r, 8);
    assert_non_null(strstr(r.err, "--replay 999999: no such dead letter"));
    run_free(&r);

    relay_dead_letter(c, "t.dl", "a", 1);
    relay_dead_letter(c, "t.dl", "b", 2);
    tu_exec(c, "SELECT ferry.inbox_dead_letter('billing', '01900000-0000-7000-8000-0000000000c1', "
               "'t.dl', 'c', 1, 'Tested', '', '{\"x\": 1}', '{}', 5, 'handler failed: boom')");
    long long a_id = tu_int(c, "SELECT id FROM ferry.dead_letter WHERE aggregateid = 'a'");
    char *a_msg = tu_str(c, "SELECT message_id FROM ferry.dead_letter WHERE aggregateid = 'a'");

    run_result chk = check_finds(c, NULL);
    expect_findings(&chk, "dead_letters", "dead_letter", "found", 2, 4);
    json_t *f = finding(&chk, "dead_letters", "dead_letter", "consumer billing, topic t.dl");
    assert_non_null(strstr(message_of(f), "handler failed: boom"));
    f = finding(&chk, "dead_letters", "dead_letter", "relay, topic t.dl");
    assert_non_null(strstr(message_of(f), "needs a decision"));
    run_free(&chk);

    /* One bad target among good ones: nothing is done. */
    char id[32];
    snprintf(id, sizeof id, "%lld", a_id);
    const char *mixed[] = {"--replay", id, "--replay", "t.dl/no-such-key", NULL};
    char *before = fingerprint(c);
    r = reconcile("repair", NULL, mixed);
    assert_true(r.status & 8);
    assert_non_null(strstr(r.err, "t.dl/no-such-key"));
    run_free(&r);
    char *after = fingerprint(c);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* Replay by id: the message goes back into the outbox, id and
     * position kept; the letter is kept in the log. */
    const char *by_id[] = {"--replay", id, "--by", "alice", NULL};
    r = reconcile("repair", NULL, by_id);
    expect_status(&r, 1 | 4);
    char *subject = tu_sprintf("dead letter %lld", a_id);
    assert_non_null(strstr(message_of(finding(&r, "dead_letters", "dead_letter", subject)),
                           "replayed into the outbox"));
    free(subject);
    run_free(&r);
    char *sql = tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE id = '%s' AND seq = 1 "
                           "AND aggregateid = 'a' AND published_at IS NULL", a_msg);
    assert_int_equal(tu_int(c, sql), 1);
    free(sql);
    sql = tu_sprintf("SELECT count(*) FROM ferry.dead_letter_log WHERE dead_letter_id = %lld "
                     "AND message_id = '%s' AND action = 'replay' AND actor = 'alice' "
                     "AND reason = 'replayed by alice' AND consumer = '' "
                     "AND letter->>'reason' = 'Broker: Message size too large'", a_id, a_msg);
    assert_int_equal(tu_int(c, sql), 1);
    free(sql);

    /* Replay by message id: the consumer's letter is handed back to it
     * (held, applied next) and its key released. */
    const char *by_uuid[] = {"--replay", "01900000-0000-7000-8000-0000000000c1", "--by", "bob",
                             "--reason", "handler fixed", NULL};
    reconcile_exits(NULL, "repair", NULL, by_uuid, 1 | 4);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = 'billing' "
                               "AND message_id = '01900000-0000-7000-8000-0000000000c1' "
                               "AND reason = 'replay'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox_key WHERE consumer = 'billing' "
                               "AND parked_by IS NULL"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter_log WHERE "
                               "consumer = 'billing' AND actor = 'bob' "
                               "AND reason = 'handler fixed' AND action = 'replay'"), 1);

    /* Discard by TOPIC/KEY: every letter of the key, in position order;
     * markers take their places; the letters stay in the log. */
    const char *by_key[] = {"--discard", "t.dl/b", "--reason", "obsolete", "--by", "carol",
                            NULL};
    r = reconcile("repair", NULL, by_key);
    expect_status(&r, 1);
    assert_int_equal(findings(&r, "dead_letters", "dead_letter", "repaired", NULL), 2);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE aggregateid = 'b' "
                               "AND payload = 'null' AND headers ? 'ferry_discarded'"), 2);
    char *order = tu_str(c, "SELECT string_agg(seq::text, ',' ORDER BY id) FROM "
                            "ferry.dead_letter_log WHERE aggregateid = 'b' AND action = 'discard' "
                            "AND actor = 'carol' AND reason = 'obsolete' "
                            "AND letter ? 'payload'");
    assert_non_null(order);
    assert_string_equal(order, "1,2");
    free(order);
    check_clean(NULL);
    free(a_msg);
    PQfinish(c);
}

/* ---------------------------------------------------------------- garbage */

static void garbage_is_collected_in_batches(void **state)
{
    char *rules = tu_temp_file("budgets: {inbox_retention: 1h, outbox_retention: 1h, "
                               "batch: 100}\n");
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, applied_at) "
               "SELECT 'c' || (g % 2), gen_random_uuid(), 't', 'k' || g, g, "
               "       now() - interval '2 hours' FROM generate_series(1, 1050) g");
    tu_exec(c, "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq) "
               "SELECT 'c1', gen_random_uuid(), 't', 'y' || g, g FROM generate_series(1, 10) g");
    emit_n(c, "t.pub", 355, 7);
    tu_exec(c, "UPDATE ferry.outbox SET published_at = now() - interval '2 hours' "
               "WHERE topic = 't.pub' AND seq > 5");
    tu_exec(c, "UPDATE ferry.outbox SET published_at = now() WHERE topic = 't.pub' AND seq <= 5 "
               "AND aggregateid = 'k0'");
    emit_n(c, "t.unpub", 3, 3);
    /* Counts of failed tries: 150 last failed before the window (two
     * batches), 3 inside it. */
    tu_exec(c, "INSERT INTO ferry.inbox_attempt (consumer, message_id, attempts, last_error, "
               "failed_at) SELECT 'c' || (g % 2), gen_random_uuid(), 1, 'x', "
               "now() - interval '2 hours' FROM generate_series(1, 150) g");
    tu_exec(c, "INSERT INTO ferry.inbox_attempt (consumer, message_id, attempts, last_error) "
               "SELECT 'c1', gen_random_uuid(), 2, 'y' FROM generate_series(1, 3) g");

    run_result r = check_finds(c, rules);
    json_t *f = finding(&r, "garbage", "inbox", "ferry.inbox");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 1050);
    assert_non_null(strstr(message_of(f), "1050 inbox rows of 2 consumers past the 1h dedupe window"));
    f = finding(&r, "garbage", "published", "ferry.outbox");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 320);
    f = finding(&r, "garbage", "attempts", "ferry.inbox_attempt");
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 150);
    assert_non_null(strstr(message_of(f), "150 counts of failed attempts of 2 consumers"));
    run_free(&r);

    r = reconcile("repair", rules, NULL);
    expect_status(&r, 1);
    expect_findings(&r, "garbage", "inbox", "repaired", 1, 1050);
    expect_findings(&r, "garbage", "published", "repaired", 1, 320);
    expect_findings(&r, "garbage", "attempts", "repaired", 1, 150);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 10);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox_attempt"), 3);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.pub'"),
                     355 - 320);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.unpub'"), 3);
    check_clean(rules);
    tu_temp_remove(rules);
    PQfinish(c);
}

/* The reconciler's login with DateStyle SQL and a time zone whose
 * abbreviation the parser takes for another zone (CST: China, read back
 * as US Central): a row applied 50 minutes ago stays inside the 1 h
 * window, one applied 2 hours ago goes. Before: the cutoff went to the
 * server as text and came back 14 hours later, and both rows went (an
 * outside audit: a redelivery then applied twice). */
static void garbage_keeps_what_is_young_whatever_the_date_style(void **state)
{
    PGconn *c = tu_connect();
    PGresult *res = PQexec(c, "CREATE ROLE rc_datestyle LOGIN IN ROLE ferry_reconciler");
    PQclear(res);
    tu_exec(c, "ALTER ROLE rc_datestyle SET DateStyle = 'SQL, MDY'");
    tu_exec(c, "ALTER ROLE rc_datestyle SET TimeZone = 'Asia/Shanghai'");
    char *rules = tu_temp_file("budgets: {inbox_retention: 1h}\n");
    tu_exec(c, "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, applied_at) "
               "VALUES ('c', gen_random_uuid(), 't', 'young', 0, now() - interval '50 minutes'), "
               "       ('c', gen_random_uuid(), 't', 'old', 0, now() - interval '2 hours')");
    run_result r = reconcile_as("rc_datestyle", "repair", rules, NULL);
    expect_status(&r, 1);
    expect_findings(&r, "garbage", "inbox", "repaired", 1, 1);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox WHERE key = 'young'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox WHERE key = 'old'"), 0);
    tu_exec(c, "DELETE FROM ferry.inbox WHERE consumer = 'c' AND topic = 't'");
    tu_exec(c, "DROP ROLE rc_datestyle");
    tu_temp_remove(rules);
    PQfinish(c);
}

/* ------------------------------------------------------ least privilege */

/* Everything above as a login role granted ferry_reconciler only: its
 * privileges are enough (and it sees the relays' sessions). */
static void repair_as_the_reconciler_role(void **state)
{
    PGconn *c = tu_connect();
    PGresult *res = PQexec(c, "CREATE ROLE rc_sweeper LOGIN IN ROLE ferry_reconciler");
    PQclear(res);   /* may exist from an earlier run against an external server */
    char *rules = tu_temp_file("budgets: {max_attempts: 3, inbox_retention: 1h, "
                               "outbox_retention: 1h}\n");
    PGconn *alive = fake_relay_session("priv-alive");
    seed_leases(c, "priv-ghost", 0, 7, 0);
    seed_leases(c, "priv-alive", 8, 15, 0);
    emit_n(c, "t.priv", 2, 2);
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 4 WHERE topic = 't.priv' AND aggregateid = 'k0'");
    relay_dead_letter(c, "t.privdl", "x", 1);
    tu_exec(c, "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, applied_at) "
               "SELECT 'c', gen_random_uuid(), 't', 'k' || g, g, now() - interval '2 hours' "
               "FROM generate_series(1, 20) g");
    emit_n(c, "t.privpub", 5, 1);
    tu_exec(c, "UPDATE ferry.outbox SET published_at = now() - interval '2 hours' "
               "WHERE topic = 't.privpub'");
    tu_exec(c, "INSERT INTO ferry.inbox_attempt (consumer, message_id, attempts, last_error, "
               "failed_at) VALUES ('c', gen_random_uuid(), 1, 'x', now() - interval '2 hours')");

    run_result r = reconcile_as("rc_sweeper", "check", rules, NULL);
    expect_status(&r, 4);
    assert_int_equal(findings(&r, "outbox", "dead_lease", "found", NULL), 1);
    finding(&r, "outbox", "dead_lease", "relay priv-ghost");
    run_free(&r);

    const char *replay[] = {"--replay", "t.privdl/x", "--by", "sweeper", NULL};
    r = reconcile_as("rc_sweeper", "repair", rules, replay);
    expect_status(&r, 1 | 4);       /* the new dead letter waits for a person */
    assert_null(strstr(r.err, "permission denied"));
    assert_int_equal(findings(&r, "outbox", "dead_lease", "repaired", NULL), 1);
    assert_int_equal(findings(&r, "outbox", "over_attempted", "repaired", NULL), 1);
    assert_int_equal(findings(&r, "dead_letters", "dead_letter", "repaired", NULL), 1);
    assert_int_equal(findings(&r, "garbage", "inbox", "repaired", NULL), 1);
    assert_int_equal(findings(&r, "garbage", "published", "repaired", NULL), 1);
    assert_int_equal(findings(&r, "garbage", "attempts", "repaired", NULL), 1);
    run_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox_attempt"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'priv-ghost' "
                               "AND expires_at > now()"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'priv-alive' "
                               "AND expires_at > now()"), 9);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 't.priv' "
                               "AND reason LIKE 'reconciler: 4 delivery attempts%'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter_log "
                               "WHERE actor = 'sweeper'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 't.privpub'"), 0);

    const char *discard[] = {"--discard", "t.priv/k0", "--reason", "cannot be sent", NULL};
    reconcile_exits("rc_sweeper", "repair", rules, discard, 1);
    reconcile_exits("rc_sweeper", "check", rules, NULL, 0);
    tu_temp_remove(rules);
    PQfinish(alive);
    PQfinish(c);
}

/* ------------------------------------------------------------------ main */

static int group_teardown(void **state)
{
    return tu_broker_group_teardown(state, broker);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(dead_leases_are_expired, reset),
        cmocka_unit_test_setup(a_long_ttl_relay_without_a_session_is_dead_only_once_silent, reset),
        cmocka_unit_test_setup(a_session_named_like_a_relay_by_another_role_keeps_no_relay_alive,
                               reset),
        cmocka_unit_test_setup(over_attempted_rows_become_dead_letters, reset),
        cmocka_unit_test_setup(a_dead_letter_clash_keeps_the_row, reset),
        cmocka_unit_test_setup(lag_is_reported_per_shard_with_the_reason, reset),
        cmocka_unit_test_setup(lag_is_found_whatever_the_ids, reset),
        cmocka_unit_test_setup(the_text_report_escapes_what_writers_wrote, reset),
        cmocka_unit_test_setup(dead_letters_replayed_and_discarded, reset),
        cmocka_unit_test_setup(two_decisions_on_one_letter_by_different_names_are_refused,
                               reset),
        cmocka_unit_test_setup(a_dead_letter_whose_id_was_used_again_goes_back_all_the_same,
                               reset),
        cmocka_unit_test_setup(garbage_is_collected_in_batches, reset),
        cmocka_unit_test_setup(garbage_keeps_what_is_young_whatever_the_date_style, reset),
        cmocka_unit_test_setup(repair_as_the_reconciler_role, reset),
        cmocka_unit_test_setup(dead_relay_shards_go_to_a_live_one, reset),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_group_setup, group_teardown);
}
