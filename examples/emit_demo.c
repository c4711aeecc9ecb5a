/*
 * emit_demo.c — ferry's transactional outbox, end to end, in one minute.
 *
 * A narrated walkthrough on a throwaway PostgreSQL: migrate, update an
 * account and emit messages in the same transaction (through
 * ferry_tx_run), roll one back, emit through the SQL function that any
 * language can call, and watch a bad message being refused without
 * spoiling the transaction. Then the relay takes over: `ferry-relay run
 * --once` publishes the outbox to a Kafka-protocol broker (librdkafka's
 * mock cluster, run as `ferry-relay devkafka`), the outbox empties, and a
 * fresh consumer reads the topic back: the committed messages, with
 * ferry's and CloudEvents' headers, in per-key order, and not the
 * rolled-back one. Every step checks that what it says happened did
 * happen, so `make demo` is also a smoke test: it exits 1 on the first
 * step that does not behave as described.
 *
 * The relay binary is $FERRY_RELAY_BIN (make sets it), by default
 * build/rel/ferry-relay.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "ferry.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"
#include "narrate.h"

enum {
    RELAY_TIMEOUT_MS = 60000,     /* `run --once` of four messages takes well under 1 s */
    RELAY_LOG_MAX = 1 << 20,      /* bytes of the relay's log we keep */
    CONSUME_TIMEOUT_MS = 30000,   /* returns as soon as the messages are in */
    EXPECTED_MAX = 16,            /* outbox rows the demo can follow */
};

static const char TOPIC[] = "accounts";

static int balance_of(PGconn *conn, const char *account, long *out)
{
    return demo_query_long(conn, "SELECT balance FROM accounts WHERE id = $1", account, out);
}

static int outbox_count(PGconn *conn, long *out)
{
    return demo_query_long(conn, "SELECT count(*) FROM ferry.outbox", NULL, out);
}

/* The position ferry gave message id (its seq within topic and key). */
static int position_of(PGconn *conn, const char *id, long *out)
{
    return demo_query_long(conn, "SELECT seq FROM ferry.outbox WHERE id = $1::uuid", id, out);
}

/* Message id committed with a credit to account: say so (what: how it was
 * emitted; why: why at that position) with id's position and account's
 * balance, which must be want_pos and want_bal. */
static int committed_with_credit(PGconn *conn, const char *what, const char *id,
                                 const char *account, const char *why, long want_pos,
                                 long want_bal)
{
    long pos, bal;
    if (position_of(conn, id, &pos) != 0 || balance_of(conn, account, &bal) != 0)
        return -1;
    demo_say("%s %s, at position %ld of key %s%s; %s balance %ld", what, id, pos, account, why,
             account, bal);
    if (pos != want_pos || bal != want_bal)
        return demo_fail("position %ld and balance %ld, expected %ld and %ld", pos, bal,
                         want_pos, want_bal);
    return 0;
}

static const char outbox_sql[] =
    "SELECT topic, aggregateid AS key, seq, type, payload, headers "
    "FROM ferry.outbox ORDER BY topic, aggregateid, seq";

/* ------------------------------------------------------------ step 4 */

/* What the transaction of step 4 emitted. ferry_tx_run may call the
 * function more than once (after a deadlock, say); each attempt overwrites
 * these, so they always describe the attempt that committed. */
typedef struct debit_tx {
    const char *account;
    long amount;
    ferry_uuid ids[2];
} debit_tx;

static ferry_code debit_and_emit(PGconn *conn, void *arg, ferry_error *err)
{
    debit_tx *t = arg;
    char amount[24], payload[128];
    snprintf(amount, sizeof amount, "%ld", t->amount);
    const char *params[2] = {t->account, amount};
    PGresult *res = PQexecParams(conn,
                                 "UPDATE accounts SET balance = balance - $2::bigint "
                                 "WHERE id = $1 RETURNING balance",
                                 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not debit the account");
        PQclear(res);
        return rc == FERRY_OK ? FERRY_EUSER : rc;
    }
    long balance = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);

    /* Two messages about the same account: same topic and key, so the
     * relay will deliver them in this order. */
    snprintf(payload, sizeof payload, "{\"amount\": %ld, \"currency\": \"EUR\"}", t->amount);
    ferry_msg debited = {.topic = "accounts", .key = t->account, .type = "Debited",
                         .aggregate_type = "account", .payload = payload,
                         .headers = "{\"trace_id\": \"demo-trace-1\"}"};
    ferry_code rc = ferry_emit(conn, &debited, NULL, &t->ids[0], err);
    if (rc != FERRY_OK)
        return rc;

    snprintf(payload, sizeof payload, "{\"balance\": %ld}", balance);
    ferry_msg changed = {.topic = "accounts", .key = t->account, .type = "BalanceChanged",
                         .aggregate_type = "account", .payload = payload};
    return ferry_emit(conn, &changed, NULL, &t->ids[1], err);
}

/* ------------------------------------------------------------ the walk */

/* Steps 1-8: the outbox side. doomed_out receives the id of the message
 * that was rolled back, for the relay steps to look for. */
static int walkthrough(fpg *pg, PGconn *conn, char doomed_out[FERRY_UUID_STRING_SIZE])
{
    char buf[128];
    ferry_error err;
    ferry_code rc;
    long n, bal, bal_before, pos;

    if (demo_query1(conn, "SHOW server_version", 0, NULL, buf, sizeof buf) != 0)
        return -1;
    demo_say("PostgreSQL %s, connected as %s", buf, fpg_conninfo(pg));

    /* ---------------------------------------------------------- migrate */
    demo_step("ferry_migrate() creates the ferry schema (outbox, inbox, leases, sagas ...)");
    int version = 0;
    if ((rc = ferry_migrate(conn, &version, &err)) != FERRY_OK)
        return demo_ferry_failed("ferry_migrate", rc, &err);
    demo_say("schema version %d in place (this library knows version %d)", version,
        ferry_schema_version_known());
    if (version != ferry_schema_version_known())
        return demo_fail("migrated to version %d, expected %d", version,
                    ferry_schema_version_known());

    /* ---------------------------------------------------------- accounts */
    demo_step("The service's own table: accounts, with acct-1 (balance 100) and acct-2 (20)");
    if (demo_exec(conn, "CREATE TABLE accounts (id text PRIMARY KEY, owner text NOT NULL, "
                       "balance bigint NOT NULL)") != 0 ||
        demo_exec(conn, "INSERT INTO accounts VALUES ('acct-1', 'Ada', 100), "
                       "('acct-2', 'Grace', 20)") != 0)
        return -1;
    if (demo_print_table(conn, "SELECT id, owner, balance FROM accounts ORDER BY id", NULL, 4,
                         1) != 0)
        return -1;

    /* ---------------------------------------------------------- commit */
    demo_step("ferry_tx_run(): debit acct-1 by 30 and ferry_emit() two messages, "
         "all in one transaction");
    debit_tx t = {.account = "acct-1", .amount = 30};
    ferry_tx_report report;
    if ((rc = ferry_tx_run(conn, NULL, debit_and_emit, &t, &report, &err)) != FERRY_OK)
        return demo_ferry_failed("ferry_tx_run", rc, &err);
    demo_say("committed after %d attempt%s", report.attempts, report.attempts == 1 ? "" : "s");
    static const char *const kinds[2] = {"Debited", "BalanceChanged"};
    for (int i = 0; i < 2; i++) {
        char id[FERRY_UUID_STRING_SIZE];
        ferry_uuid_format(&t.ids[i], id);
        if (position_of(conn, id, &pos) != 0)
            return -1;
        demo_say("message %d: %-14s id %s  position %ld of key acct-1", i + 1, kinds[i], id, pos);
        if (pos != i + 1)
            return demo_fail("message %d has position %ld, expected %d", i + 1, pos, i + 1);
    }
    if (outbox_count(conn, &n) != 0 || balance_of(conn, "acct-1", &bal) != 0)
        return -1;
    if (n != 2 || bal != 70)
        return demo_fail("outbox holds %ld messages and acct-1 %ld, expected 2 and 70", n, bal);
    demo_say("the outbox now holds what the relay will publish:");
    if (demo_print_table(conn, outbox_sql, NULL, 4, 1) != 0)
        return -1;

    /* ---------------------------------------------------------- rollback */
    demo_step("BEGIN; debit acct-1 by 1000; ferry_emit() one message; ROLLBACK");
    if (balance_of(conn, "acct-1", &bal_before) != 0 || demo_exec(conn, "BEGIN") != 0 ||
        demo_exec(conn, "UPDATE accounts SET balance = balance - 1000 WHERE id = 'acct-1'") != 0)
        return -1;
    ferry_msg doomed = {.topic = "accounts", .key = "acct-1", .type = "Debited",
                        .payload = "{\"amount\": 1000, \"currency\": \"EUR\"}"};
    ferry_uuid doomed_id;
    if ((rc = ferry_emit(conn, &doomed, NULL, &doomed_id, &err)) != FERRY_OK)
        return demo_ferry_failed("ferry_emit", rc, &err);
    char doomed_text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&doomed_id, doomed_text);
    memcpy(doomed_out, doomed_text, FERRY_UUID_STRING_SIZE);
    if (balance_of(conn, "acct-1", &bal) != 0)
        return -1;
    demo_say("inside the transaction: emitted %s, acct-1 balance reads %ld", doomed_text, bal);
    if (demo_exec(conn, "ROLLBACK") != 0)
        return -1;
    const char *doomed_param[1] = {doomed_text};
    if (outbox_count(conn, &n) != 0 || balance_of(conn, "acct-1", &bal) != 0 ||
        demo_query1(conn, "SELECT count(*) FROM ferry.outbox WHERE id = $1::uuid", 1,
               doomed_param, buf, sizeof buf) != 0)
        return -1;
    demo_say("after ROLLBACK: the outbox holds %ld messages (the rolled-back one: %s), "
        "acct-1 balance %ld (was %ld)", n, strcmp(buf, "0") == 0 ? "gone" : "STILL THERE",
        bal, bal_before);
    if (n != 2 || strcmp(buf, "0") != 0)
        return demo_fail("the rolled-back message is in the outbox");
    if (bal != bal_before)
        return demo_fail("acct-1 balance changed from %ld to %ld", bal_before, bal);

    /* ---------------------------------------------------------- SQL path */
    demo_step("The universal path, plain SQL from any language: credit acct-1 by 5 and "
         "SELECT ferry.emit(...)");
    static const char sql_emit[] =
        "SELECT ferry.emit('accounts', 'acct-1', 'Credited', '{\"amount\": 5}')";
    demo_say("BEGIN; UPDATE accounts SET balance = balance + 5 WHERE id = 'acct-1';");
    demo_say("%s; COMMIT;", sql_emit);
    char sql_id[64];
    if (demo_exec(conn, "BEGIN") != 0 ||
        demo_exec(conn, "UPDATE accounts SET balance = balance + 5 WHERE id = 'acct-1'") != 0 ||
        demo_query1(conn, sql_emit, 0, NULL, sql_id, sizeof sql_id) != 0 ||
        demo_exec(conn, "COMMIT") != 0)
        return -1;
    if (committed_with_credit(conn, "ferry.emit returned id", sql_id, "acct-1",
                              " (no gap: the rolled-back message took no position)", 3, 75) != 0)
        return -1;

    /* ---------------------------------------------------------- refused */
    demo_step("A bad message is refused before anything is sent, and the transaction "
         "stays usable");
    if (demo_exec(conn, "BEGIN") != 0 ||
        demo_exec(conn, "UPDATE accounts SET balance = balance + 10 WHERE id = 'acct-2'") != 0)
        return -1;
    ferry_msg bad = {.topic = "bad topic!", .key = "acct-2", .type = "Credited",
                     .payload = "{\"amount\": 10}"};
    rc = ferry_emit(conn, &bad, NULL, NULL, &err);
    demo_say("ferry_emit(topic \"bad topic!\") -> %s, field \"%s\"", ferry_code_name(rc),
             err.field);
    demo_say("  message: %s", err.message);
    if (rc != FERRY_EINVAL || strcmp(err.field, "topic") != 0)
        return demo_fail("expected FERRY_EINVAL on field \"topic\", got %s on \"%s\"",
                    ferry_code_name(rc), err.field);
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return demo_fail("the transaction is no longer usable after the refusal");
    bad.topic = "accounts";
    ferry_uuid fixed_id;
    if ((rc = ferry_emit(conn, &bad, NULL, &fixed_id, &err)) != FERRY_OK)
        return demo_ferry_failed("ferry_emit (corrected)", rc, &err);
    if (demo_exec(conn, "COMMIT") != 0)
        return -1;
    char fixed_text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&fixed_id, fixed_text);
    if (committed_with_credit(conn, "same transaction, topic corrected: emitted", fixed_text,
                              "acct-2", ", committed with acct-2's credit", 1, 30) != 0)
        return -1;

    /* ---------------------------------------------------------- the end */
    demo_step("Where it ended: every committed message in the outbox, in per-key order, "
         "nothing else");
    if (outbox_count(conn, &n) != 0)
        return -1;
    if (n != 4)
        return demo_fail("the outbox holds %ld messages, expected 4", n);
    if (demo_print_table(conn, outbox_sql, NULL, 4, 1) != 0 ||
        demo_print_table(conn, "SELECT id, owner, balance FROM accounts ORDER BY id", NULL,
                         4, 1) != 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------ the relay */

/* One outbox row, as the relay is expected to publish it. */
typedef struct expected {
    char id[FERRY_UUID_STRING_SIZE];
    char key[64];
    char type[64];
    long seq;
    char payload[256];          /* jsonb's text of the payload */
    char headers[256];          /* jsonb's text of the caller's headers */
    const kt_msg *got;          /* the message read back for it */
} expected;

/* What the outbox holds for TOPIC, in per-key order. */
static int snapshot_outbox(PGconn *conn, expected *out, int max, int *n_out)
{
    static const char sql[] =
        "SELECT id, aggregateid, type, seq, payload::text, headers::text "
        "FROM ferry.outbox WHERE topic = $1 ORDER BY aggregateid, seq";
    const char *params[1] = {TOPIC};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = demo_fail("%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
        return rc;
    }
    int n = PQntuples(res);
    if (n > max) {
        PQclear(res);
        return demo_fail("the outbox holds %d messages, more than the %d this demo follows", n,
                             max);
    }
    for (int i = 0; i < n; i++) {
        expected *e = &out[i];
        memset(e, 0, sizeof *e);
        snprintf(e->id, sizeof e->id, "%s", PQgetvalue(res, i, 0));
        snprintf(e->key, sizeof e->key, "%s", PQgetvalue(res, i, 1));
        snprintf(e->type, sizeof e->type, "%s", PQgetvalue(res, i, 2));
        e->seq = strtol(PQgetvalue(res, i, 3), NULL, 10);
        snprintf(e->payload, sizeof e->payload, "%s", PQgetvalue(res, i, 4));
        snprintf(e->headers, sizeof e->headers, "%s", PQgetvalue(res, i, 5));
    }
    PQclear(res);
    *n_out = n;
    return 0;
}

/* How `ferry-relay run --once` went. */
typedef struct relay_outcome {
    int status;                 /* exit status; 128 + N when signal N killed it */
    int stopped;                /* its log has a relay.stop line */
    long long produced, delivered, undelivered, refused;
    char stop_msg[256];
    int errors;                 /* log lines at level error */
} relay_outcome;

static long long json_count(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

/* Read the relay's JSON log lines: the counts of its relay.stop line and
 * the number of errors. Shows warnings and errors, cut to one line. */
static void read_relay_log(char *log, relay_outcome *out)
{
    for (char *line = strtok(log, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        if (!json_is_object(o)) {
            json_decref(o);
            continue;
        }
        const char *event = json_string_value(json_object_get(o, "event"));
        const char *level = json_string_value(json_object_get(o, "level"));
        if (level != NULL && (strcmp(level, "warn") == 0 || strcmp(level, "error") == 0)) {
            const char *msg = json_string_value(json_object_get(o, "msg"));
            out->errors += strcmp(level, "error") == 0;
            demo_say("  relay log, %s %s: %.90s%s", level, event ? event : "-", msg ? msg : "",
                msg && strlen(msg) > 90 ? " ..." : "");
        }
        if (event != NULL && strcmp(event, "relay.stop") == 0) {
            out->stopped = 1;
            out->produced = json_count(o, "produced");
            out->delivered = json_count(o, "delivered");
            out->undelivered = json_count(o, "undelivered");
            out->refused = json_count(o, "refused");
            const char *msg = json_string_value(json_object_get(o, "msg"));
            snprintf(out->stop_msg, sizeof out->stop_msg, "%s", msg ? msg : "");
        }
        json_decref(o);
    }
}

/* Run argv (a ferry-relay command) as a child with its stderr collected;
 * wait for it to exit, at most RELAY_TIMEOUT_MS. */
static int run_relay(const char *const *argv, relay_outcome *out)
{
    memset(out, 0, sizeof *out);
    char *log = NULL;
    if (demo_run(argv, RELAY_TIMEOUT_MS, RELAY_LOG_MAX, &log, &out->status) != 0)
        return -1;
    read_relay_log(log, out);
    free(log);
    return 0;
}

/* How many messages the topic holds: the sum over its partitions of high
 * minus low watermark, asked of the broker. */
static int topic_size(const char *bootstrap, const char *topic, long long *out)
{
    rd_kafka_t *rk = demo_kafka_producer(bootstrap, NULL);
    if (rk == NULL)
        return -1;
    int rc = 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && (md->topic_cnt != 1 || md->topics[0].err))
        err = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = demo_fail("metadata of topic %s: %s", topic, rd_kafka_err2str(err));
    } else {
        long long total = 0;
        for (int p = 0; p < md->topics[0].partition_cnt && rc == 0; p++) {
            int64_t lo, hi;
            err = rd_kafka_query_watermark_offsets(rk, topic, md->topics[0].partitions[p].id,
                                                   &lo, &hi, 10000);
            if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
                rc = demo_fail("watermarks of %s [%d]: %s", topic, (int)p, rd_kafka_err2str(err));
            total += hi - lo;
        }
        *out = total;
    }
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return rc;
}

/* 0: ferry's own headers, 1: CloudEvents attributes, 2: the rest. */
static int header_group(const char *name)
{
    return strncmp(name, "ferry_", 6) == 0 ? 0 : strncmp(name, "ce_", 3) == 0 ? 1 : 2;
}

/* Every header of m as name=value, indented under the message: a line per
 * group (ferry_*, ce_*, others), wrapped when long. */
static void print_headers(const kt_msg *m)
{
    char line[160] = "";
    size_t used = 0;
    int group = -1;
    for (size_t i = 0; i < m->header_count; i++) {
        char item[160];
        snprintf(item, sizeof item, "%s=%s", m->headers[i].name,
                 m->headers[i].value ? m->headers[i].value : "(null)");
        int g = header_group(m->headers[i].name);
        if (used > 0 && (g != group || used + 2 + strlen(item) > 92)) {
            demo_say("      %s", line);
            used = 0;
        }
        group = g;
        used += (size_t)snprintf(line + used, sizeof line - used, "%s%s", used ? "  " : "",
                                 item);
        if (used >= sizeof line)
            used = sizeof line - 1;
    }
    if (used > 0)
        demo_say("      %s", line);
}

/* The message read back for e must be e as the relay promises to publish
 * it: key, value, type and position, the CloudEvents attributes, and the
 * caller's own headers untouched. */
static int check_message(const expected *e, const kt_msg *m)
{
    const char *seq = kt_header(m, "ferry_seq");
    const char *ce_source = kt_header(m, "ce_source");
    const char *ce_time = kt_header(m, "ce_time");
    const char *spec = kt_header(m, "ce_specversion");
    const char *ce_id = kt_header(m, "ce_id");
    const char *ce_type = kt_header(m, "ce_type");
    const char *type = kt_header(m, "ferry_type");
    if (m->key == NULL || strcmp(m->key, e->key) != 0)
        return demo_fail("message %s: key %s, expected %s", e->id, m->key ? m->key : "(null)",
                    e->key);
    if (m->value == NULL || strcmp(m->value, e->payload) != 0)
        return demo_fail("message %s: value %s, expected the outbox payload %s", e->id,
                    m->value ? m->value : "(null)", e->payload);
    if (type == NULL || strcmp(type, e->type) != 0 || seq == NULL ||
        strtol(seq, NULL, 10) != e->seq)
        return demo_fail("message %s: ferry_type %s, ferry_seq %s; expected %s and %ld", e->id,
                    type ? type : "-", seq ? seq : "-", e->type, e->seq);
    if (spec == NULL || strcmp(spec, "1.0") != 0 || ce_id == NULL ||
        strcmp(ce_id, e->id) != 0 || ce_type == NULL || strcmp(ce_type, e->type) != 0 ||
        ce_source == NULL || ce_source[0] == '\0' || ce_time == NULL ||
        strlen(ce_time) != strlen("2025-01-02T03:04:05.678901Z"))
        return demo_fail("message %s: CloudEvents headers missing or wrong", e->id);
    json_error_t jerr;
    json_t *h = json_loads(e->headers, 0, &jerr);
    const char *name;
    json_t *v;
    int rc = 0;
    json_object_foreach(h, name, v) {
        const char *got = kt_header(m, name);
        if (rc == 0 && (got == NULL || strcmp(got, json_string_value(v)) != 0))
            rc = demo_fail("message %s: caller header %s is %s, expected %s", e->id, name,
                      got ? got : "missing", json_string_value(v));
    }
    json_decref(h);
    return rc;
}

/* Step 12: read the topic back and hold every message against the outbox
 * row it came from (exp, in per-key order); print them in that order. */
static int read_back(const char *bootstrap, expected *exp, int n_exp, const char *doomed)
{
    long long in_topic = -1;
    if (topic_size(bootstrap, TOPIC, &in_topic) != 0)
        return -1;
    kt_msgs *got = kt_consume(bootstrap, TOPIC, (size_t)n_exp, CONSUME_TIMEOUT_MS);
    if (got == NULL)
        return demo_fail("could not set up the consumer (see above)");
    int rc = -1;
    demo_say("the topic holds %lld messages (its partitions' watermarks); the consumer got %zu; "
        "the outbox held %d", in_topic, got->count, n_exp);
    if (in_topic != n_exp || got->count != (size_t)n_exp) {
        demo_fail("expected exactly the %d committed messages", n_exp);
        goto out;
    }
    for (size_t i = 0; i < got->count; i++) {
        const char *id = kt_header(&got->msgs[i], "ferry_id");
        expected *e = NULL;
        for (int k = 0; id != NULL && k < n_exp; k++)
            if (strcmp(exp[k].id, id) == 0)
                e = &exp[k];
        if (id != NULL && strcmp(id, doomed) == 0) {
            demo_fail("the rolled-back message %s was published", doomed);
            goto out;
        }
        if (e == NULL || e->got != NULL) {
            demo_fail("message %s at %s [%d] offset %lld is %s", id ? id : "without ferry_id",
                 TOPIC, (int)got->msgs[i].partition, (long long)got->msgs[i].offset,
                 e == NULL ? "not one the outbox held" : "a duplicate");
            goto out;
        }
        e->got = &got->msgs[i];
    }
    demo_say("in per-key order (each key on one partition, offsets rising with ferry_seq):");
    for (int k = 0; k < n_exp; k++) {
        const expected *e = &exp[k];
        const kt_msg *m = e->got;
        if (check_message(e, m) != 0)
            goto out;
        if (k > 0 && strcmp(exp[k - 1].key, e->key) == 0 &&
            (exp[k - 1].got->partition != m->partition ||
             exp[k - 1].got->offset >= m->offset)) {
            demo_fail("key %s: position %ld is at [%d] offset %lld, after [%d] offset %lld", e->key,
                 e->seq, (int)m->partition, (long long)m->offset,
                 (int)exp[k - 1].got->partition, (long long)exp[k - 1].got->offset);
            goto out;
        }
        if (k == 0 || strcmp(exp[k - 1].key, e->key) != 0)
            demo_say("key %s:", e->key);
        demo_say("  %s [%d] offset %lld  key %s  value %s", TOPIC, (int)m->partition,
            (long long)m->offset, m->key, m->value);
        print_headers(m);
    }
    demo_say("the rolled-back message (%s) is not among them", doomed);
    rc = 0;
out:
    kt_msgs_free(got);
    return rc;
}

/* Steps 9-12: the relay publishes the outbox to Kafka. *kb_out receives
 * the broker it starts, for the caller to stop. */
static int publish(fpg *pg, PGconn *conn, const char *relay_bin, const char *doomed,
                   kt_broker **kb_out)
{
    expected exp[EXPECTED_MAX];
    int n_exp = 0;
    long n;
    if (snapshot_outbox(conn, exp, EXPECTED_MAX, &n_exp) != 0)
        return -1;

    /* ---------------------------------------------------------- broker */
    demo_step("Starting a Kafka-protocol broker: `ferry-relay devkafka` (librdkafka's mock "
         "cluster)");
    kt_broker *kb = kt_start(1);
    if (kb == NULL)
        return demo_fail("could not start the broker (see above)");
    *kb_out = kb;
    const char *bootstrap = kt_bootstrap(kb);
    demo_say("bootstrap servers %s (pid %ld); topics are created on first use, 4 partitions each",
        bootstrap, (long)kt_pid(kb));

    /* ---------------------------------------------------------- relay */
    demo_step("ferry-relay run --once: publish every ready message, wait for each delivery "
         "report, delete what was delivered, exit");
    demo_say("$ ferry-relay run --once --db \"%s\" --kafka %s", fpg_conninfo(pg), bootstrap);
    const char *argv[] = {relay_bin, "run", "--once", "--db", fpg_conninfo(pg),
                          "--kafka", bootstrap, "--holder", "demo-relay", NULL};
    relay_outcome ro;
    if (run_relay(argv, &ro) != 0)
        return -1;
    demo_say("exit status %d; its relay.stop log line: produced %lld, delivered %lld, "
        "undelivered %lld, refused %lld", ro.status, ro.produced, ro.delivered,
        ro.undelivered, ro.refused);
    demo_say("  \"%s\"", ro.stop_msg);
    if (ro.status != 0 || !ro.stopped)
        return demo_fail("the relay exited with status %d%s", ro.status,
                    ro.stopped ? "" : " and no relay.stop line");
    if (ro.delivered != n_exp || ro.produced != n_exp || ro.undelivered != 0 ||
        ro.refused != 0 || ro.errors != 0)
        return demo_fail("the relay published %lld of %d messages (%lld undelivered, %lld refused, "
                    "%d errors logged)", ro.delivered, n_exp, ro.undelivered, ro.refused,
                    ro.errors);

    /* ---------------------------------------------------------- empty */
    demo_step("The outbox is empty: each row was deleted once its delivery report came back");
    if (outbox_count(conn, &n) != 0)
        return -1;
    demo_say("SELECT count(*) FROM ferry.outbox -> %ld", n);
    if (n != 0)
        return demo_fail("the outbox still holds %ld messages", n);

    /* ---------------------------------------------------------- read back */
    demo_step("A fresh consumer reads topic \"%s\" from the beginning", TOPIC);
    return read_back(bootstrap, exp, n_exp, doomed);
}

/* The WAL source: the operator creates the slot, emit writes logical
 * messages instead of rows, `ferry-relay run --outbox-source wal` publishes them
 * and confirms the slot. */
static int wal_source(fpg *pg, PGconn *conn, const char *relay_bin, kt_broker *kb)
{
    static const char topic[] = "demo.wal";
    demo_step("The WAL source: `ferry-relay slot create` makes the logical replication slot "
              "(the relay never does), then emit_mode = 'wal'");
    const char *create[] = {relay_bin, "slot", "create", "--db", fpg_conninfo(pg), NULL};
    char *out = NULL;
    int st = -1;
    if (demo_run(create, RELAY_TIMEOUT_MS, RELAY_LOG_MAX, &out, &st) != 0)
        return -1;
    free(out);
    if (st != 0)
        return demo_fail("ferry-relay slot create exited %d", st);
    PGresult *res = PQexec(conn, "UPDATE ferry.settings SET emit_mode = 'wal'");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok)
        return demo_fail("could not set emit_mode = 'wal': %s", PQerrorMessage(conn));

    demo_step("Three messages in wal mode: no outbox row, a logical message each");
    res = PQexec(conn, "BEGIN; "
                       "SELECT ferry.emit('demo.wal', 'acct-1', 'Credited', '{\"amount\": 1}'); "
                       "SELECT ferry.emit('demo.wal', 'acct-1', 'Credited', '{\"amount\": 2}'); "
                       "SELECT ferry.emit('demo.wal', 'acct-2', 'Credited', '{\"amount\": 3}'); "
                       "COMMIT");
    ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok)
        return demo_fail("emit in wal mode: %s", PQerrorMessage(conn));
    long n;
    if (outbox_count(conn, &n) != 0)
        return -1;
    demo_say("SELECT count(*) FROM ferry.outbox -> %ld", n);
    if (n != 0)
        return demo_fail("wal mode wrote %ld outbox rows", n);

    demo_step("ferry-relay run --once --outbox-source wal: stream the slot, publish, confirm the slot "
              "past what Kafka acknowledged");
    const char *argv[] = {relay_bin, "run", "--once", "--outbox-source", "wal", "--db",
                          fpg_conninfo(pg), "--kafka", kt_bootstrap(kb), NULL};
    relay_outcome ro;
    if (run_relay(argv, &ro) != 0)
        return -1;
    demo_say("exit status %d; delivered %lld", ro.status, ro.delivered);
    if (ro.status != 0 || ro.delivered != 3)
        return demo_fail("the WAL relay exited %d having delivered %lld of 3", ro.status,
                         ro.delivered);
    kt_msgs *got = kt_consume(kt_bootstrap(kb), topic, 3, CONSUME_TIMEOUT_MS);
    if (got == NULL)
        return demo_fail("could not set up the consumer");
    demo_say("topic %s holds %zu messages", topic, got->count);
    for (size_t i = 0; i < got->count; i++)
        demo_say("  key %s, ferry_seq %s: %s", got->msgs[i].key,
                 kt_header(&got->msgs[i], "ferry_seq"), got->msgs[i].value);
    int rc = got->count == 3 ? 0 : demo_fail("expected 3 messages in %s", topic);
    kt_msgs_free(got);
    return rc;
}

int main(int argc, char **argv)
{
    int args = demo_args(argc, argv,
                         "ferry's transactional outbox, end to end, in one minute");
    if (args >= 0)
        return args;
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *relay_bin = demo_relay_bin();
    printf("ferry %s: the transactional outbox, step by step\n", ferry_version());
    printf("(Kafka here is librdkafka's mock cluster, run by `ferry-relay devkafka`, standing "
           "in for a real broker; `ferry-relay run --kafka HOST:PORT` works with any Kafka "
           "cluster.)\n");

    demo_step("Starting a throwaway PostgreSQL cluster (private temp dir, removed at exit)");
    fpg *pg = fpg_start(NULL);
    if (pg == NULL) {
        demo_fail("could not start PostgreSQL (see above)");
        return 1;
    }
    int rc = -1;
    char doomed[FERRY_UUID_STRING_SIZE] = "";
    PGconn *conn = fpg_connect(pg);
    if (conn == NULL)
        demo_fail("could not connect");
    else
        rc = walkthrough(pg, conn, doomed);
    kt_broker *kb = NULL;
    if (rc == 0)
        rc = publish(pg, conn, relay_bin, doomed, &kb);
    if (rc == 0)
        rc = wal_source(pg, conn, relay_bin, kb);
    PQfinish(conn);

    demo_step("Tearing the broker and the cluster down");
    rc = demo_broker_stop(kb, rc);
    fpg_destroy(pg);
    return demo_exit(rc);
}
