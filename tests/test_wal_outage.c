/*
 * test_wal_outage.c — the WAL source through outages (issue 14's fault
 * tests, beside test_wal_faults.c so that they run in parallel with it):
 * every broker down and back while the relay streams; PostgreSQL
 * restarted (pg_ctl restart -m immediate) under it; the slot invalidated
 * past max_slot_wal_keep_size while the relay is down. Each proves its
 * fault fired, and that nothing committed is missing afterwards.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "harness/clock.h"
#include "harness/kafkatmp.h"
#include "harness/pgtmp.h"
#include "testutil.h"
#include "tu_http.h"
#include "tu_proc.h"
#include "tu_wal.h"

static double metric(int port, const char *series)
{
    double v = -1;
    tu_http_reply h = tu_http_get(port, "/metrics");
    if (h.status == 200)
        tu_prom_find(h.body, series, &v);
    free(h.raw);
    return v;
}

/* Whether the slot's confirmed position is at or past lsn (text). */
static int confirmed_past(PGconn *c, const char *lsn)
{
    char *sql = tu_sprintf("SELECT (confirmed_flush_lsn >= '%s')::int FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", lsn);
    return (int)tu_int_of(c, sql);
}

/* `ferry-reconcile check --json` with an outbox lag budget of lag (as the
 * rules file spells it): its exit status, stdout into *out (caller
 * frees). */
static int reconcile_check_lag(char **out, const char *lag)
{
    char *yaml = tu_sprintf("budgets: {outbox_lag: %s}\n", lag);
    char *rules = tu_temp_file(yaml);
    free(yaml);
    const char *args[] = {"check", "--json", "--db", fpg_conninfo(tu_pg), "--rules", rules, NULL};
    int st = tu_reconcile(args, 60000, out, NULL);
    tu_temp_remove(rules);
    return st;
}

/* The same with a budget of 1 s. */
static int reconcile_check(char **out)
{
    return reconcile_check_lag(out, "1s");
}

/* The wal_slot sweep's finding of problem in a check's --json output, as
 * compact JSON text ("" when none). Caller frees. */
static char *slot_finding(const char *out, const char *problem)
{
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    if (j == NULL)
        fail_msg("check --json is not JSON (%s): %s", jerr.text, out);
    json_t *f, *found = NULL;
    size_t i;
    json_t *sweep = json_object_get(json_object_get(j, "sweeps"), "wal_slot");
    assert_true(json_is_true(json_object_get(sweep, "ran")));
    json_array_foreach(json_object_get(sweep, "findings"), i, f)
        if (strcmp(json_string_value(json_object_get(f, "problem")), problem) == 0)
            found = f;
    char *text = found ? json_dumps(found, JSON_COMPACT) : strdup("");
    json_decref(j);
    return text;
}

/*
 * Slot hygiene in `ferry-reconcile check` (sweep wal_slot): a slot no
 * relay reads, past the lag budget, is a finding (exit 4) naming the WAL
 * it pins; with a WAL relay streaming it, none.
 */
static void reconcile_check_reports_an_inactive_slot_and_the_wal_it_pins(void **state)
{
    PGconn *c = tu_wal_connect();
    tu_wal_emit_n("wo.hygiene", 10, 2, 5);
    /* Past the budget of 1 s since the relay (or `slot create`) last
     * confirmed: a relay restarting would not be a finding. */
    tu_exec(c, "UPDATE ferry.wal_slot SET confirmed_at = now() - interval '2 s', "
               "created_at = now() - interval '2 s'");
    char *out = NULL;
    assert_int_equal(reconcile_check(&out), 4);
    char *f = slot_finding(out, "inactive");
    assert_non_null(strstr(f, "\"subject\":\"slot ferry\""));
    assert_non_null(strstr(f, "pins"));
    assert_non_null(strstr(f, "\"retained_bytes\":"));
    assert_null(strstr(f, "\"retained_bytes\":0,"));
    free(f);
    free(out);

    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = tu_wal_relay_start("wal-hygiene", args);
    tu_wal_topic tc = tu_wal_check_topic("wo.hygiene", 10, 30000);
    assert_int_equal(tc.distinct, 10);
    tu_await(c, "SELECT active FROM pg_replication_slots WHERE slot_name = 'ferry'", 30000);
    /* Confirmed recently by the running relay: clean. */
    tu_await(c, "SELECT confirmed_at > now() - interval '1 s' FROM ferry.wal_slot "
                "WHERE slot_name = 'ferry'", 30000);
    assert_int_equal(reconcile_check(&out), 0);
    f = slot_finding(out, "inactive");
    assert_string_equal(f, "");
    free(f);
    free(out);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

/*
 * Every broker down while the relay streams, with 100 messages emitted
 * meanwhile, then back. The fault fired: the producer reported it
 * (kafka.error) and, 3 s into the outage, none of the 100 is in Kafka and
 * the slot is not confirmed past them (Kafka acknowledged nothing). Once
 * the broker is back every message arrives, each key in order, and the
 * slot moves past them.
 */
static void a_broker_outage_while_streaming_loses_nothing(void **state)
{
    PGconn *c = tu_wal_connect();
    const char *topic = "wo.outage";
    assert_int_equal(kt_command(tu_wal_broker, "topic-create %s 4 1", topic), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = tu_wal_relay_start("wal-outage", args);
    int port = tu_proc_metrics_port(&p);
    tu_proc_await_log(&p, "\"event\":\"wal.streaming\"", 30000);
    tu_wal_emit_n(topic, 1, 1, 1);           /* connected: one through before */
    tu_wal_topic tc = tu_wal_check_topic(topic, 1, 20000);
    assert_int_equal(tc.distinct, 1);

    assert_int_equal(kt_command(tu_wal_broker, "down 1"), 0);
    int64_t down_at = clk_mono_ms();
    tu_wal_emit_n(topic, 100, 10, 5);
    char *end = tu_wal_lsn(c);
    tu_proc_await_log(&p, "\"event\":\"kafka.error\"", 20000);
    int64_t left = down_at + 3000 - clk_mono_ms();
    if (left > 0)
        clk_sleep_ms((long)left);
    assert_int_equal(confirmed_past(c, end), 0);
    assert_true(metric(port, "ferry_relay_published_total") <= 1);
    /* Stuck behind Kafka past the lag budget: the reconciler says so. */
    char *out = NULL;
    assert_int_equal(reconcile_check(&out), 4);
    char *f = slot_finding(out, "lagging");
    assert_non_null(strstr(f, "confirmed nothing for"));
    free(f);
    free(out);
    assert_int_equal(kt_command(tu_wal_broker, "up 1"), 0);

    /* Confirmed past them: Kafka acknowledged every one. Then the topic,
     * read whole (duplicates may be there: a count of 101 would stop
     * short of the distinct ones). */
    char *sql = tu_sprintf("SELECT (confirmed_flush_lsn >= '%s') FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", end);
    tu_await(c, sql, 90000);
    free(sql);
    tc = tu_wal_check_topic(topic, 0, 60000);
    assert_int_equal(tc.distinct, 101);
    assert_int_equal(tc.keys, 10);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    free(end);
    PQfinish(c);
}

/*
 * PostgreSQL restarted with `pg_ctl restart -m immediate` (a crash: no
 * shutdown checkpoint, the walsender killed) while the relay streams and
 * writers emit. The fault fired: the postmaster is a new process and the
 * relay saw its stream end (wal.restart). Everything committed before and
 * after the crash is published, each key in order; the relay streams on
 * by itself.
 */
static void postgres_restarted_mid_stream_loses_nothing(void **state)
{
    enum { BEFORE = 400, AFTER = 400 };
    PGconn *c = tu_wal_connect();
    const char *topic = "wo.pgcrash";
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = tu_wal_relay_start("wal-pgcrash", args);
    int port = tu_proc_metrics_port(&p);
    tu_proc_await_log(&p, "\"event\":\"wal.streaming\"", 30000);
    tu_wal_emit_n(topic, BEFORE, 20, 4);
    /* Streaming when the server goes: the slot is active, and some of it
     * is already in Kafka. */
    double published = 0;
    for (int i = 0; i < 300 && published < 1; i++) {
        published = metric(port, "ferry_relay_published_total");
        if (published < 1)
            clk_sleep_ms(50);
    }
    assert_true(published >= 1);
    assert_int_equal(tu_int(c, "SELECT active::int FROM pg_replication_slots "
                               "WHERE slot_name = 'ferry'"), 1);
    PQfinish(c);
    long pid_before = fpg_postmaster_pid(tu_pg);
    assert_int_equal(fpg_restart(tu_pg, "immediate"), 0);
    assert_true(fpg_postmaster_pid(tu_pg) != pid_before);
    tu_proc_await_log(&p, "\"event\":\"wal.restart\"", 30000);
    c = tu_connect();
    tu_wal_emit_n(topic, AFTER, 20, 4);
    /* Confirmed past them all, then the topic read whole: the crash
     * makes duplicates, so a count of BEFORE + AFTER messages would stop
     * short of the distinct ones (656 of 800, once). */
    char *end = tu_wal_lsn(c);
    char *sql = tu_sprintf("SELECT (confirmed_flush_lsn >= '%s') FROM pg_replication_slots "
                           "WHERE slot_name = 'ferry'", end);
    tu_await(c, sql, 90000);
    free(sql);
    free(end);
    tu_wal_topic tc = tu_wal_check_topic(topic, 0, 60000);
    assert_int_equal(tc.distinct, BEFORE + AFTER);
    assert_int_equal(tc.keys, 20);
    print_message("restart at %.0f published: %zu duplicates\n", published, tc.duplicates);
    /* The server resent from its last checkpointed slot position, before
     * what the relay had confirmed: taken as duplicates, not refused as
     * a COMMIT going backwards (which restarted the stream again, with
     * backoff; relay_wal_track.c, wal_track_reset). */
    char *log = tu_proc_log(&p);
    assert_null(strstr(log, "before the last one"));
    free(log);
    tu_await(c, "SELECT active FROM pg_replication_slots WHERE slot_name = 'ferry'", 30000);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

/* `ferry-relay status --db <the test cluster>`: its exit status, stdout
 * into *out (caller frees). */
static int relay_status(char **out)
{
    const char *argv[] = {tu_relay_bin(), "status", "--db", fpg_conninfo(tu_pg), NULL};
    return tu_run(argv, 60000, out, NULL);
}

/* `ferry-relay run --once` of the table source, to its end: its status. */
static int table_relay_once(const char *holder)
{
    const char *args[] = {"--once", NULL};
    tu_proc t = tu_relay_start(kt_bootstrap(tu_wal_broker), holder, args,
                               (const char *const[]){TU_RELAY_ASAN, NULL});
    int st = tu_proc_wait(&t, 60000);
    tu_proc_done(&t);
    return st;
}

/* With max_slot_wal_keep_size at 1 MB, write WAL segments past the slot
 * (and checkpoint them away when it is to be lost) until its wal_status
 * is want, "unreserved" or "lost": the fault, proven fired. The limit
 * stays until reset_slot_limit(): wal_status is judged against it. */
static void push_slot_past_its_limit(PGconn *c, const char *want)
{
    tu_exec(c, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    tu_exec(c, "SELECT pg_reload_conf()");
    tu_exec(c, "CREATE TABLE wo_filler (b text)");
    char *sql = tu_sprintf("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry' "
                           "AND wal_status = '%s'", want);
    int got = 0;
    for (int i = 0; i < 8 && !got; i++) {
        tu_exec(c, "INSERT INTO wo_filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)");
        tu_exec(c, "SELECT pg_switch_wal()");
        if (strcmp(want, "lost") == 0)
            tu_exec(c, "CHECKPOINT");
        got = tu_int(c, sql) == 1;
    }
    free(sql);
    tu_exec(c, "DROP TABLE wo_filler");
    assert_true(got);
}

static void reset_slot_limit(PGconn *c)
{
    tu_exec(c, "ALTER SYSTEM RESET max_slot_wal_keep_size");
    tu_exec(c, "SELECT pg_reload_conf()");
}

/*
 * A slot past max_slot_wal_keep_size but not yet invalidated (wal_status
 * = unreserved: the next checkpoint would lose it) is loud before it is
 * lost: `ferry-relay status` says PROBLEM (4), `ferry-reconcile check`
 * finds it, and a WAL relay says so as it starts, then catches up and
 * publishes everything (no checkpoint came in between).
 */
static void a_slot_past_its_wal_limit_is_loud_before_it_is_lost(void **state)
{
    PGconn *c = tu_wal_connect();
    tu_wal_emit_n("wo.unres", 3, 1, 1);
    assert_int_equal(tu_wal_relay_once("wal-unres-before", NULL), 0);
    tu_wal_emit_n("wo.unres", 5, 1, 1);                /* the relay is down */
    push_slot_past_its_limit(c, "unreserved");
    char *out = NULL;
    assert_int_equal(relay_status(&out), 4);
    assert_non_null(strstr(out, "PROBLEM"));
    assert_non_null(strstr(out, "unreserved"));
    free(out);
    assert_int_equal(reconcile_check(&out), 4);
    char *f = slot_finding(out, "unreserved");
    assert_non_null(strstr(f, "max_slot_wal_keep_size"));
    free(f);
    free(out);
    tu_wal_relay_once_says("wal-unres-once", 0, "\"event\":\"wal.slot_unreserved\"",
                           "the next checkpoint invalidates it");
    reset_slot_limit(c);
    assert_int_equal(tu_wal_check_topic("wo.unres", 8, 20000).distinct, 8);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
                               "'ferry' AND wal_status = 'lost'"), 0);
    PQfinish(c);
}

/*
 * The slot invalidated while the relay is down: max_slot_wal_keep_size
 * of 1 MB and a few WAL segments written past it (the fault fired:
 * pg_replication_slots says wal_status = lost). The relay says so loudly
 * (a wal.slot error naming it, --once exit 1, /healthz 503,
 * ferry_relay_wal_slot_ok 0) and creates no slot; `ferry-relay status`
 * exits 4 naming the lost slot; `slot recreate` replaces it and reports
 * the window that may have been missed, which covers the messages
 * emitted while it was down.
 */
static void a_slot_invalidated_while_the_relay_is_down_is_loud(void **state)
{
    PGconn *c = tu_wal_connect();
    char *out = NULL;
    assert_int_equal(relay_status(&out), 0);           /* healthy: not a problem yet */
    /* ... but not "nothing ready to publish": in wal mode what is emitted
     * waits in the WAL, which status cannot count (an outside audit). */
    if (strstr(out, "nothing ready to publish") ||
        !strstr(out, "no relay reading the replication slot \"ferry\""))
        fail_msg("status in wal mode with no relay: %s", out);
    free(out);
    tu_wal_emit_n("wo.lost", 3, 1, 1);
    assert_int_equal(tu_wal_relay_once("wal-lost-before", NULL), 0);
    char *confirmed = tu_str(c, "SELECT confirmed_lsn::text FROM ferry.wal_slot "
                                "WHERE slot_name = 'ferry'");
    /* Down: these are in the WAL the slot will lose. */
    char *from = tu_wal_lsn(c);
    tu_wal_emit_n("wo.lost", 5, 1, 1);
    push_slot_past_its_limit(c, "lost");
    reset_slot_limit(c);

    tu_wal_relay_once_says("wal-lost-once", 1, "\"event\":\"wal.slot\"", "wal_status = lost");
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc p = tu_wal_relay_start("wal-lost-run", args);
    int port = tu_proc_metrics_port(&p);
    tu_proc_await_log(&p, "\"event\":\"wal.slot\"", 30000);
    /* Awaited, not read once: the relay logs wal.slot, then marks itself
     * not ready (a fresh-clone run read 200 in between). */
    tu_await_health(port, 503, "invalidated", 10000);
    assert_true(metric(port, "ferry_relay_wal_slot_ok") == 0);
    tu_proc_finish(&p, 30000);
    /* Not recreated behind anyone's back: still the lost one. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
                               "'ferry' AND wal_status = 'lost'"), 1);

    assert_int_equal(relay_status(&out), 4);
    assert_non_null(strstr(out, "PROBLEM"));
    assert_non_null(strstr(out, "is lost"));
    free(out);
    /* `slot status` says so, every figure filled in. Before: "retains
     * bytes of WAL", the number missing (an outside audit). */
    assert_int_equal(tu_wal_slot_cmd("status", &out, NULL), 4);
    if (strstr(out, "wal_status lost") == NULL || strstr(out, "retains no bytes") == NULL ||
        strstr(out, "  ") != NULL)
        fail_msg("slot status of a lost slot: %s", out);
    free(out);

    /* Meanwhile emit falls back to the table, which nothing holds back:
     * the lost slot will never confirm. */
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'table'");
    /* ... and cannot be turned back to a slot that will never decode what
     * emit writes (schema 31; before: taken, as only a missing slot was
     * refused). */
    tu_assert_sql_error(c, "UPDATE ferry.settings SET emit_mode = 'wal'", "55000", "emit_mode",
                        "is lost");
    tu_wal_emit_n("wo.fallback", 4, 2, 2);
    assert_int_equal(table_relay_once("lost-table"), 0);
    assert_int_equal(tu_wal_check_topic("wo.fallback", 4, 30000).distinct, 4);

    assert_int_equal(tu_wal_slot_cmd("recreate", &out, NULL), 0);
    assert_non_null(strstr(out, "may never have been published"));
    free(out);
    /* The window reported starts at what the relay last confirmed, before
     * the messages emitted while it was down. */
    char *sql = tu_sprintf("SELECT (missed_from_lsn = '%s' AND missed_from_lsn <= '%s' AND "
                           "missed_to_lsn > '%s')::int FROM ferry.wal_slot "
                           "WHERE slot_name = 'ferry'", confirmed, from, from);
    assert_int_equal(tu_int_of(c, sql), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
                               "'ferry' AND wal_status IS DISTINCT FROM 'lost'"), 1);
    /* The reconciler reports the window until an operator clears it. */
    assert_int_equal(reconcile_check(&out), 4);
    char *f = slot_finding(out, "recreated");
    assert_non_null(strstr(f, "may never have been published"));
    assert_non_null(strstr(f, confirmed));
    free(f);
    free(out);
    tu_exec(c, "UPDATE ferry.wal_slot SET missed_from_lsn = NULL, missed_to_lsn = NULL, "
               "missed_from_at = NULL WHERE slot_name = 'ferry'");
    /* With a budget no run takes: the recreated slot has no reader, and a
     * loaded machine can take more than 1 s from `slot recreate` to here
     * (a make test run found it "inactive"). */
    assert_int_equal(reconcile_check_lag(&out, "1h"), 0);
    f = slot_finding(out, "recreated");
    assert_string_equal(f, "");
    free(f);
    free(out);
    free(confirmed);
    free(from);
    PQfinish(c);
}

/*
 * `ferry-relay status` in wal mode with the slot missing: exit 4, the
 * verdict naming it; in table mode the same missing slot is no problem
 * (nothing is written to WAL for it).
 */
static void status_is_a_problem_when_wal_mode_has_no_slot(void **state)
{
    PGconn *c = tu_wal_connect();
    char *out = NULL;
    assert_int_equal(relay_status(&out), 0);
    assert_non_null(strstr(out, "emit mode: wal; replication slot \"ferry\": "));
    free(out);
    tu_exec(c, "SELECT pg_drop_replication_slot('ferry')");
    assert_int_equal(relay_status(&out), 4);
    assert_non_null(strstr(out, "PROBLEM: emit_mode is 'wal' but the replication slot "
                                "\"ferry\" does not exist"));
    free(out);
    const char *argv[] = {tu_relay_bin(), "status", "--json", "--db", fpg_conninfo(tu_pg), NULL};
    assert_int_equal(tu_run(argv, 60000, &out, NULL), 4);
    assert_non_null(strstr(out, "\"slot_exists\": false"));
    free(out);
    tu_wal_mode(c, "table");
    assert_int_equal(relay_status(&out), 0);
    free(out);
    assert_int_equal(tu_wal_slot_cmd("recreate", &out, NULL), 0);
    free(out);
    PQfinish(c);
}

/*
 * In wal mode a delayed message goes to the table, and the table path
 * publishes it when due. While the WAL relay lags (here: is down) with
 * an earlier message of the same key still unpublished, the table path
 * must not publish the delayed one first: the key's order would break
 * (position 2 in Kafka before position 1). The fault fired: position 1
 * is in WAL and position 2 a due row of the table when the table relay
 * runs. Today (before the fix): the topic holds 2 then 1.
 */
/* Key "k" of topic: position 1 in WAL, position 2 a due row of the table
 * (delayed by 1 ms, and awaited), as wal mode writes them. */
static void delayed_behind_wal(PGconn *c, const char *topic)
{
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', 'k', 'Tested', '{\"n\": 1}')", topic));
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit_with_id(gen_random_uuid(), '%s', 'k', "
                             "'Tested', '{\"n\": 2}', '{}', '', 1)", topic));
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox "
                                             "WHERE topic = '%s' AND seq = 2", topic)), 1);
    char *sql = tu_sprintf("SELECT available_at < now() FROM ferry.outbox WHERE topic = '%s'",
                           topic);
    tu_await(c, sql, 10000);
    free(sql);
}

static void a_delayed_message_never_overtakes_a_lagging_wal_message_of_its_key(void **state)
{
    PGconn *c = tu_wal_connect();
    const char *topic = "wo.delay";
    delayed_behind_wal(c, topic);
    assert_int_equal(table_relay_once("delay-table-1"), 0);
    /* Position 2 waits for the WAL path, which has not published 1. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.delay' "
                               "AND published_at IS NULL"), 1);
    assert_int_equal(tu_wal_relay_once("delay-wal", NULL), 0);
    assert_int_equal(table_relay_once("delay-table-2"), 0);
    tu_wal_topic tc = tu_wal_check_topic(topic, 2, 30000);    /* 1 before 2, or it fails */
    assert_int_equal(tc.distinct, 2);
    assert_int_equal(tc.duplicates, 0);
    PQfinish(c);
}

/*
 * The same, with both messages in one transaction: position 1 to WAL,
 * then position 2 delayed into the table. The row was held back until
 * the slot was confirmed past where WAL was when it was inserted; but
 * position 1 is decoded at the transaction's commit, further on, and the
 * WAL relay confirms past other transactions' commits in between. The
 * fault fired: the slot is confirmed past the row's insert while the
 * transaction is still open, and the WAL relay is down when the table
 * relay runs. Before schema 36 the topic held 2 then 1 (an outside audit
 * reproduced it): now the row's gate is stamped only once the row is
 * seen, after its commit.
 */
static void a_delayed_message_never_overtakes_a_wal_message_of_its_own_transaction(void **state)
{
    PGconn *a = tu_wal_connect();
    PGconn *c = tu_connect();
    tu_exec(a, "BEGIN");
    tu_exec(a, "SELECT ferry.emit('wo.sametx', 'k', 'Tested', '{\"n\": 1}')");
    tu_exec(a, "SELECT ferry.emit_with_id(gen_random_uuid(), 'wo.sametx', 'k', "
               "'Tested', '{\"n\": 2}', '{}', '', 1)");
    char *inserted = tu_str(a, "SELECT pg_current_wal_insert_lsn()::text");
    tu_exec(c, "SELECT ferry.emit('wo.sametx.other', 'o', 'Tested', '{}')");
    assert_int_equal(tu_wal_relay_once("sametx-wal-1", NULL), 0);
    char *sql = tu_sprintf("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry' "
                           "AND confirmed_flush_lsn > '%s'::pg_lsn", inserted);
    assert_int_equal(tu_int(c, sql), 1);        /* the fault: confirmed past the insert */
    free(sql);
    free(inserted);
    tu_exec(a, "COMMIT");
    tu_await(c, "SELECT available_at < now() FROM ferry.outbox WHERE topic = 'wo.sametx'", 10000);
    assert_int_equal(table_relay_once("sametx-table-1"), 0);
    /* Position 2 waits for the WAL path, which has not published 1. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.sametx' "
                               "AND published_at IS NULL"), 1);
    assert_int_equal(tu_wal_relay_once("sametx-wal-2", NULL), 0);
    assert_int_equal(table_relay_once("sametx-table-2"), 0);
    tu_wal_topic tc = tu_wal_check_topic("wo.sametx", 2, 30000);    /* 1 before 2, or it fails */
    assert_int_equal(tc.distinct, 2);
    assert_int_equal(tc.duplicates, 0);
    PQfinish(a);
    PQfinish(c);
}

/*
 * Leaving wal mode with a message of a key still in WAL only (the WAL
 * relay is down): the key's next message, emitted in table mode, waits
 * in the table until the WAL relay has published the first and confirmed
 * past the turn; then it goes. The fault fired: position 1 is in WAL and
 * position 2 a ready row of the table when the table relay runs. Before
 * schema 22 the topic held 2 then 1.
 */
static void leaving_wal_mode_keeps_each_keys_order(void **state)
{
    PGconn *c = tu_wal_connect();
    const char *topic = "wo.turn";
    tu_exec(c, "SELECT ferry.emit('wo.turn', 'k', 'Tested', '{\"n\": 1}')");
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'table'");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.settings WHERE wal_until_lsn IS NOT NULL"),
                     1);
    tu_exec(c, "SELECT ferry.emit('wo.turn', 'k', 'Tested', '{\"n\": 2}')");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.turn' "
                               "AND seq = 2"), 1);
    assert_int_equal(table_relay_once("turn-table-1"), 0);
    /* Position 2 waits for the WAL path, which has not published 1; and
     * with no WAL relay reading the slot, status says why. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.turn' "
                               "AND published_at IS NULL"), 1);
    char *out = NULL;
    assert_int_equal(relay_status(&out), 4);
    assert_non_null(strstr(out, "holds its rows back"));
    free(out);
    assert_int_equal(tu_wal_relay_once("turn-wal", NULL), 0);
    assert_int_equal(table_relay_once("turn-table-2"), 0);
    tu_wal_topic tc = tu_wal_check_topic(topic, 2, 30000);    /* 1 before 2, or it fails */
    assert_int_equal(tc.distinct, 2);
    assert_int_equal(tc.duplicates, 0);
    assert_int_equal(relay_status(&out), 0);
    free(out);
    /* Past the turn, table mode waits for nothing. */
    tu_exec(c, "SELECT ferry.emit('wo.turn', 'k', 'Tested', '{\"n\": 3}')");
    assert_int_equal(table_relay_once("turn-table-3"), 0);
    assert_int_equal(tu_wal_check_topic(topic, 3, 30000).distinct, 3);
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.settings WHERE wal_until_lsn IS NULL"),
                     1);
    PQfinish(c);
}

/*
 * Leaving wal mode while a transaction that emitted in it is open: the
 * turn waits for that transaction to end (its message commits before the
 * point the table path waits for), and an emit that comes during the turn
 * waits for it and goes to the table.
 *
 * Before: the turn recorded its point at once, before the open
 * transaction's commit; the WAL relay, with nothing decoded to wait for,
 * could confirm past it, and the key's next message, emitted in table mode
 * once the transaction ended, went out before it (an outside audit
 * reproduced position 2 in Kafka before 1).
 */
static void leaving_wal_mode_waits_for_a_transaction_that_emitted_in_it(void **state)
{
    PGconn *a = tu_wal_connect();
    PGconn *b = tu_connect();
    PGconn *d = tu_connect();
    PGconn *c = tu_connect();
    tu_exec(a, "BEGIN");
    tu_exec(a, "SELECT ferry.emit('wo.open', 'k', 'Tested', '{\"n\": 1}')");
    long long bpid = tu_int(b, "SELECT pg_backend_pid()");
    long long dpid = tu_int(d, "SELECT pg_backend_pid()");
    assert_int_equal(PQsendQuery(b, "UPDATE ferry.settings SET emit_mode = 'table'"), 1);
    char *sql = tu_sprintf("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %lld AND NOT granted) "
                           "    OR EXISTS (SELECT 1 FROM pg_stat_activity "
                           "                WHERE pid = %lld AND state = 'idle')", bpid, bpid);
    tu_await(c, sql, 30000);
    free(sql);
    assert_int_equal(PQconsumeInput(b), 1);
    assert_int_equal(PQisBusy(b), 1);           /* the turn waits */
    /* An emit during the turn waits for it too. */
    assert_int_equal(PQsendQuery(d, "SELECT ferry.emit('wo.open', 'k2', 'Tested', '{\"n\": 1}')"), 1);
    sql = tu_sprintf("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %lld AND NOT granted)", dpid);
    tu_await(c, sql, 30000);
    free(sql);
    tu_exec(a, "COMMIT");
    PGresult *r;
    int results = 0;
    while ((r = PQgetResult(b)) != NULL) {
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        results++;
        PQclear(r);
    }
    while ((r = PQgetResult(d)) != NULL) {
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        results++;
        PQclear(r);
    }
    assert_int_equal(results, 2);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.settings WHERE emit_mode = 'table' "
                               "AND wal_until_lsn IS NOT NULL"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.open' "
                               "AND aggregateid = 'k2'"), 1);
    /* Position 1 went through WAL, 2 through the table: 1 before 2. */
    tu_exec(a, "SELECT ferry.emit('wo.open', 'k', 'Tested', '{\"n\": 2}')");
    assert_int_equal(tu_wal_relay_once("open-wal", NULL), 0);
    assert_int_equal(table_relay_once("open-table"), 0);
    tu_wal_topic tc = tu_wal_check_topic("wo.open", 3, 30000);
    assert_int_equal(tc.distinct, 3);
    PQfinish(a);
    PQfinish(b);
    PQfinish(c);
    PQfinish(d);
}

/*
 * A REPEATABLE READ transaction whose snapshot is from before a turn out
 * of wal mode read 'wal' in it and kept writing to WAL after the turn.
 * Now its emit fails with serialization_failure, to be retried; the retry
 * goes to the table.
 */
static void a_repeatable_read_transaction_from_before_leaving_wal_mode_is_retried(void **state)
{
    PGconn *a = tu_wal_connect();
    PGconn *b = tu_connect();
    tu_exec(a, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    tu_exec(a, "SELECT count(*) FROM ferry.outbox_key");      /* the snapshot */
    tu_exec(b, "UPDATE ferry.settings SET emit_mode = 'table'");
    tu_assert_sql_error(a, "SELECT ferry.emit('wo.rr', 'k', 'Tested', '{\"n\": 1}')", "40001",
                        NULL, NULL);
    tu_exec(a, "ROLLBACK");
    tu_exec(a, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    tu_exec(a, "SELECT ferry.emit('wo.rr', 'k', 'Tested', '{\"n\": 1}')");
    tu_exec(a, "COMMIT");
    assert_int_equal(tu_int(b, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.rr'"), 1);
    /* In wal mode with no turn since its snapshot, it writes to WAL. */
    tu_wal_ready(b);
    tu_exec(a, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    tu_exec(a, "SELECT ferry.emit('wo.rr', 'k2', 'Tested', '{\"n\": 1}')");
    tu_exec(a, "COMMIT");
    assert_int_equal(tu_int(b, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.rr'"), 1);
    assert_int_equal(tu_wal_relay_once("rr-wal", NULL), 0);
    assert_int_equal(table_relay_once("rr-table"), 0);
    assert_int_equal(tu_wal_check_topic("wo.rr", 2, 30000).distinct, 2);
    PQfinish(a);
    PQfinish(b);
}

/*
 * A due row that waits for the WAL slot (here: a delayed message of a key
 * whose earlier message is in WAL, with no WAL relay running) waits for
 * ever if nobody reads the slot; the scheduler sees only a row not ready
 * yet, as a delayed one is. The table relay says so: /healthz 503 naming
 * the WAL slot once it waited past stuck_ms, 200 again once a WAL relay
 * confirmed past it and the row went. The fault fired: the row is due and
 * unpublished while the relay answers 503. Before: 200 throughout.
 */
static void a_table_relay_is_not_ready_while_rows_wait_for_the_slot(void **state)
{
    PGconn *c = tu_wal_connect();
    const char *topic = "wo.gate";
    delayed_behind_wal(c, topic);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "stuck_ms=500", NULL};
    tu_proc p = tu_relay_start(kt_bootstrap(tu_wal_broker), "gate-table", args,
                               (const char *const[]){TU_RELAY_ASAN, NULL});
    int port = tu_proc_metrics_port(&p);
    tu_await_health(port, 503, "for the WAL slot", 30000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'wo.gate' "
                               "AND published_at IS NULL AND available_at < now()"), 1);
    assert_int_equal(tu_wal_relay_once("gate-wal", NULL), 0);
    tu_wal_topic tc = tu_wal_check_topic(topic, 2, 30000);    /* 1 before 2, or it fails */
    assert_int_equal(tc.distinct, 2);
    tu_await_health(port, 200, NULL, 30000);
    assert_int_equal(tu_proc_finish(&p, 30000), 0);
    PQfinish(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reconcile_check_reports_an_inactive_slot_and_the_wal_it_pins),
        cmocka_unit_test(a_delayed_message_never_overtakes_a_lagging_wal_message_of_its_key),
        cmocka_unit_test(a_delayed_message_never_overtakes_a_wal_message_of_its_own_transaction),
        cmocka_unit_test(leaving_wal_mode_keeps_each_keys_order),
        cmocka_unit_test(leaving_wal_mode_waits_for_a_transaction_that_emitted_in_it),
        cmocka_unit_test(a_repeatable_read_transaction_from_before_leaving_wal_mode_is_retried),
        cmocka_unit_test(a_table_relay_is_not_ready_while_rows_wait_for_the_slot),
        cmocka_unit_test(a_broker_outage_while_streaming_loses_nothing),
        cmocka_unit_test(postgres_restarted_mid_stream_loses_nothing),
        cmocka_unit_test(a_slot_past_its_wal_limit_is_loud_before_it_is_lost),
        cmocka_unit_test(a_slot_invalidated_while_the_relay_is_down_is_loud),
        cmocka_unit_test(status_is_a_problem_when_wal_mode_has_no_slot),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_wal_group_setup, tu_wal_group_teardown);
}
