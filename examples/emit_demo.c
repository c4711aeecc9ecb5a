/*
 * emit_demo.c — ferry's transactional outbox, end to end, in one minute.
 *
 * A narrated walkthrough on a throwaway PostgreSQL: migrate, update an
 * account and emit messages in the same transaction (through
 * ferry_tx_run), roll one back, emit through the SQL function that any
 * language can call, and watch a bad message being refused without
 * spoiling the transaction. Every step checks that what it says happened
 * did happen, so `make demo` is also a smoke test: it exits 1 on the first
 * step that does not behave as described.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "../tests/harness/pgtmp.h"

static int g_step;

/* A new step of the walkthrough. */
static void step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("\n[%d] ", ++g_step);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* A detail of the current step. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("    ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* The walkthrough did not go as described: say so and return -1. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "demo: FAILED at step %d: ", g_step);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return -1;
}

static int ferry_failed(const char *what, ferry_code rc, const ferry_error *err)
{
    return fail("%s: %s: %s [sqlstate %s, field %s]", what, ferry_code_name(rc),
                err->message, err->sqlstate[0] ? err->sqlstate : "-",
                err->field[0] ? err->field : "-");
}

/* Run a statement that returns no rows. */
static int exec_cmd(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? 0 : fail("%s: %s", sql, PQerrorMessage(conn));
}

/* Run sql with text parameters; it must return one row: copy its first
 * column into out. */
static int query1(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  char *out, size_t size)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = fail("%s: %s", sql, PQerrorMessage(conn));
    else if (PQntuples(res) != 1)
        rc = fail("%s: %d rows, expected 1", sql, PQntuples(res));
    else
        snprintf(out, size, "%s", PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

static int query_long(PGconn *conn, const char *sql, const char *param, long *out)
{
    char buf[32];
    const char *params[1] = {param};
    if (query1(conn, sql, param ? 1 : 0, param ? params : NULL, buf, sizeof buf) != 0)
        return -1;
    *out = strtol(buf, NULL, 10);
    return 0;
}

static int balance_of(PGconn *conn, const char *account, long *out)
{
    return query_long(conn, "SELECT balance FROM accounts WHERE id = $1", account, out);
}

static int outbox_count(PGconn *conn, long *out)
{
    return query_long(conn, "SELECT count(*) FROM ferry.outbox", NULL, out);
}

/* The position ferry gave message id (its seq within topic and key). */
static int position_of(PGconn *conn, const char *id, long *out)
{
    return query_long(conn, "SELECT seq FROM ferry.outbox WHERE id = $1::uuid", id, out);
}

/* Print a query's result as an aligned table, as psql would. */
static int print_table(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = fail("%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
        return rc;
    }
    enum { MAX_COLS = 16 };
    int cols = PQnfields(res) < MAX_COLS ? PQnfields(res) : MAX_COLS;
    int width[MAX_COLS];
    for (int c = 0; c < cols; c++) {
        width[c] = (int)strlen(PQfname(res, c));
        for (int r = 0; r < PQntuples(res); r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    printf("    ");
    for (int c = 0; c < cols; c++)
        printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0, PQfname(res, c));
    printf("\n    ");
    for (int c = 0; c < cols; c++) {
        printf("%s", c ? "-+-" : "");
        for (int i = 0; i < width[c]; i++)
            putchar('-');
    }
    printf("\n");
    for (int r = 0; r < PQntuples(res); r++) {
        printf("    ");
        for (int c = 0; c < cols; c++)
            printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0,
                   PQgetvalue(res, r, c));
        printf("\n");
    }
    printf("    (%d row%s)\n", PQntuples(res), PQntuples(res) == 1 ? "" : "s");
    PQclear(res);
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

static int walkthrough(fpg *pg, PGconn *conn)
{
    char buf[128];
    ferry_error err;
    ferry_code rc;
    long n, bal, bal_before, pos;

    if (query1(conn, "SHOW server_version", 0, NULL, buf, sizeof buf) != 0)
        return -1;
    say("PostgreSQL %s, connected as %s", buf, fpg_conninfo(pg));

    /* ---------------------------------------------------------- migrate */
    step("ferry_migrate() creates the ferry schema (outbox, inbox, leases, sagas ...)");
    int version = 0;
    if ((rc = ferry_migrate(conn, &version, &err)) != FERRY_OK)
        return ferry_failed("ferry_migrate", rc, &err);
    say("schema version %d in place (this library knows version %d)", version,
        ferry_schema_version_known());
    if (version != ferry_schema_version_known())
        return fail("migrated to version %d, expected %d", version,
                    ferry_schema_version_known());

    /* ---------------------------------------------------------- accounts */
    step("The service's own table: accounts, with acct-1 (balance 100) and acct-2 (20)");
    if (exec_cmd(conn, "CREATE TABLE accounts (id text PRIMARY KEY, owner text NOT NULL, "
                       "balance bigint NOT NULL)") != 0 ||
        exec_cmd(conn, "INSERT INTO accounts VALUES ('acct-1', 'Ada', 100), "
                       "('acct-2', 'Grace', 20)") != 0)
        return -1;
    if (print_table(conn, "SELECT id, owner, balance FROM accounts ORDER BY id") != 0)
        return -1;

    /* ---------------------------------------------------------- commit */
    step("ferry_tx_run(): debit acct-1 by 30 and ferry_emit() two messages, "
         "all in one transaction");
    debit_tx t = {.account = "acct-1", .amount = 30};
    ferry_tx_report report;
    if ((rc = ferry_tx_run(conn, NULL, debit_and_emit, &t, &report, &err)) != FERRY_OK)
        return ferry_failed("ferry_tx_run", rc, &err);
    say("committed after %d attempt%s", report.attempts, report.attempts == 1 ? "" : "s");
    static const char *const kinds[2] = {"Debited", "BalanceChanged"};
    for (int i = 0; i < 2; i++) {
        char id[FERRY_UUID_STRING_SIZE];
        ferry_uuid_format(&t.ids[i], id);
        if (position_of(conn, id, &pos) != 0)
            return -1;
        say("message %d: %-14s id %s  position %ld of key acct-1", i + 1, kinds[i], id, pos);
        if (pos != i + 1)
            return fail("message %d has position %ld, expected %d", i + 1, pos, i + 1);
    }
    if (outbox_count(conn, &n) != 0 || balance_of(conn, "acct-1", &bal) != 0)
        return -1;
    if (n != 2 || bal != 70)
        return fail("outbox holds %ld messages and acct-1 %ld, expected 2 and 70", n, bal);
    say("the outbox now holds what the relay will publish:");
    if (print_table(conn, outbox_sql) != 0)
        return -1;

    /* ---------------------------------------------------------- rollback */
    step("BEGIN; debit acct-1 by 1000; ferry_emit() one message; ROLLBACK");
    if (balance_of(conn, "acct-1", &bal_before) != 0 || exec_cmd(conn, "BEGIN") != 0 ||
        exec_cmd(conn, "UPDATE accounts SET balance = balance - 1000 WHERE id = 'acct-1'") != 0)
        return -1;
    ferry_msg doomed = {.topic = "accounts", .key = "acct-1", .type = "Debited",
                        .payload = "{\"amount\": 1000, \"currency\": \"EUR\"}"};
    ferry_uuid doomed_id;
    if ((rc = ferry_emit(conn, &doomed, NULL, &doomed_id, &err)) != FERRY_OK)
        return ferry_failed("ferry_emit", rc, &err);
    char doomed_text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&doomed_id, doomed_text);
    if (balance_of(conn, "acct-1", &bal) != 0)
        return -1;
    say("inside the transaction: emitted %s, acct-1 balance reads %ld", doomed_text, bal);
    if (exec_cmd(conn, "ROLLBACK") != 0)
        return -1;
    const char *doomed_param[1] = {doomed_text};
    if (outbox_count(conn, &n) != 0 || balance_of(conn, "acct-1", &bal) != 0 ||
        query1(conn, "SELECT count(*) FROM ferry.outbox WHERE id = $1::uuid", 1,
               doomed_param, buf, sizeof buf) != 0)
        return -1;
    say("after ROLLBACK: the outbox holds %ld messages (the rolled-back one: %s), "
        "acct-1 balance %ld (was %ld)", n, strcmp(buf, "0") == 0 ? "gone" : "STILL THERE",
        bal, bal_before);
    if (n != 2 || strcmp(buf, "0") != 0)
        return fail("the rolled-back message is in the outbox");
    if (bal != bal_before)
        return fail("acct-1 balance changed from %ld to %ld", bal_before, bal);

    /* ---------------------------------------------------------- SQL path */
    step("The universal path, plain SQL from any language: credit acct-1 by 5 and "
         "SELECT ferry.emit(...)");
    static const char sql_emit[] =
        "SELECT ferry.emit('accounts', 'acct-1', 'Credited', '{\"amount\": 5}')";
    say("BEGIN; UPDATE accounts SET balance = balance + 5 WHERE id = 'acct-1';");
    say("%s; COMMIT;", sql_emit);
    char sql_id[64];
    if (exec_cmd(conn, "BEGIN") != 0 ||
        exec_cmd(conn, "UPDATE accounts SET balance = balance + 5 WHERE id = 'acct-1'") != 0 ||
        query1(conn, sql_emit, 0, NULL, sql_id, sizeof sql_id) != 0 ||
        exec_cmd(conn, "COMMIT") != 0)
        return -1;
    if (position_of(conn, sql_id, &pos) != 0 || balance_of(conn, "acct-1", &bal) != 0)
        return -1;
    say("ferry.emit returned id %s, at position %ld of key acct-1 (no gap: the rolled-back "
        "message took no position); acct-1 balance %ld", sql_id, pos, bal);
    if (pos != 3 || bal != 75)
        return fail("position %ld and balance %ld, expected 3 and 75", pos, bal);

    /* ---------------------------------------------------------- refused */
    step("A bad message is refused before anything is sent, and the transaction "
         "stays usable");
    if (exec_cmd(conn, "BEGIN") != 0 ||
        exec_cmd(conn, "UPDATE accounts SET balance = balance + 10 WHERE id = 'acct-2'") != 0)
        return -1;
    ferry_msg bad = {.topic = "bad topic!", .key = "acct-2", .type = "Credited",
                     .payload = "{\"amount\": 10}"};
    rc = ferry_emit(conn, &bad, NULL, NULL, &err);
    say("ferry_emit(topic \"bad topic!\") -> %s, field \"%s\"", ferry_code_name(rc), err.field);
    say("  message: %s", err.message);
    if (rc != FERRY_EINVAL || strcmp(err.field, "topic") != 0)
        return fail("expected FERRY_EINVAL on field \"topic\", got %s on \"%s\"",
                    ferry_code_name(rc), err.field);
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return fail("the transaction is no longer usable after the refusal");
    bad.topic = "accounts";
    ferry_uuid fixed_id;
    if ((rc = ferry_emit(conn, &bad, NULL, &fixed_id, &err)) != FERRY_OK)
        return ferry_failed("ferry_emit (corrected)", rc, &err);
    if (exec_cmd(conn, "COMMIT") != 0)
        return -1;
    char fixed_text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&fixed_id, fixed_text);
    if (position_of(conn, fixed_text, &pos) != 0 || balance_of(conn, "acct-2", &bal) != 0)
        return -1;
    say("same transaction, topic corrected: emitted %s at position %ld of key acct-2, "
        "committed with acct-2's credit (balance %ld)", fixed_text, pos, bal);
    if (pos != 1 || bal != 30)
        return fail("position %ld and balance %ld, expected 1 and 30", pos, bal);

    /* ---------------------------------------------------------- the end */
    step("Where it ended: every committed message in the outbox, in per-key order, "
         "nothing else");
    if (outbox_count(conn, &n) != 0)
        return -1;
    if (n != 4)
        return fail("the outbox holds %ld messages, expected 4", n);
    if (print_table(conn, outbox_sql) != 0 ||
        print_table(conn, "SELECT id, owner, balance FROM accounts ORDER BY id") != 0)
        return -1;
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ferry %s: the transactional outbox, step by step\n", ferry_version());

    step("Starting a throwaway PostgreSQL cluster (private temp dir, removed at exit)");
    fpg *pg = fpg_start(NULL);
    if (pg == NULL) {
        fail("could not start PostgreSQL (see above)");
        return 1;
    }
    int rc = -1;
    PGconn *conn = fpg_connect(pg);
    if (conn == NULL)
        fail("could not connect");
    else
        rc = walkthrough(pg, conn);
    PQfinish(conn);

    step("Tearing the cluster down");
    fpg_destroy(pg);
    if (rc != 0) {
        fprintf(stderr, "demo: FAILED\n");
        return 1;
    }
    say("done: every step behaved as described");
    return 0;
}
