/*
 * test_tx.c — ferry_tx_run() against a real PostgreSQL: commit, rollback on
 * the caller's error, swallowed server errors, the idle-connection rule,
 * retry of serialization failures, deadlocks and lost connections, the
 * retry limit, and a COMMIT whose reply is lost: resolved committed,
 * resolved aborted (and retried), and not resolvable in time.
 *
 * Every fault is made to happen at a known point and proven through the
 * ferry_tx_report counters. Nothing waits on a clock: sessions meet at a
 * pthread barrier or condition variable, or poll the server for the state
 * they need (pg_stat_activity wait events).
 *
 * Where a worker thread blocks inside ferry_tx_run() (in COMMIT), the main
 * thread plays the killer. cmocka's failure longjmp only works on the test's
 * own thread, so assertions are made there, after the worker is joined; a
 * killer that gives up first releases the worker (rescue) and only then
 * fails the test, so that no thread is left using a dead stack frame.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

enum { WAIT_MS = 10000 };

/* The cluster: sessions commit with synchronous_commit = local, so that the
 * standby named here (which never connects) is waited for only by a
 * transaction that asks for it with SET LOCAL synchronous_commit = on. */
static const char *const conf[] = {
    "synchronous_standby_names = 'ferry_never_connects'",
    "synchronous_commit = local",
    "deadlock_timeout = '50ms'",
    NULL,
};

/* ------------------------------------------------------------------ */
/* Helpers                                                              */

static void quiet_notices(void *arg, const char *message) { (void)arg; (void)message; }

/* A connection for ferry_tx_run: server notices (the WARNING of a
 * cancelled synchronous-replication wait) stay off the test output. */
static PGconn *tx_connect(void)
{
    PGconn *c = tu_connect();
    PQsetNoticeProcessor(c, quiet_notices, NULL);
    return c;
}

static void fresh_table(PGconn *c, const char *name, const char *columns)
{
    char *sql = tu_sprintf("DROP TABLE IF EXISTS %s CASCADE; CREATE TABLE %s (%s)", name,
                           name, columns);
    /* Without "table ... does not exist, skipping" on the output. */
    PQnoticeProcessor was = PQsetNoticeProcessor(c, quiet_notices, NULL);
    tu_exec(c, sql);
    PQsetNoticeProcessor(c, was, NULL);
    free(sql);
}

static long long count_rows(PGconn *c, const char *table)
{
    char *sql = tu_sprintf("SELECT count(*) FROM %s", table);
    long long n = tu_int(c, sql);
    free(sql);
    return n;
}

/* Run sql inside fn; on failure fill err from the server's answer. */
static bool exec_ok(PGconn *conn, const char *sql, ferry_error *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        ferry_error_from_pg(err, conn, res, sql);
    PQclear(res);
    return ok;
}

static ferry_code user_error(ferry_error *err, const char *message)
{
    memset(err, 0, sizeof *err);
    err->code = FERRY_EUSER;
    err->index = -1;
    snprintf(err->message, sizeof err->message, "%s", message);
    return FERRY_EUSER;
}

typedef struct runner runner;
static bool runner_done(runner *r);

/* Like tu_await, but says false on timeout (or as soon as the worker r has
 * returned, since then the state awaited will never come) instead of
 * failing the test, so that the caller can release the worker first.
 * Polling the server is the synchronisation; the pause only spaces the
 * polls. */
static bool await_sql(PGconn *c, const char *sql, int timeout_ms, runner *r)
{
    struct timespec tick = {0, 2 * 1000 * 1000};
    int64_t end = 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    end = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + timeout_ms;
    for (;;) {
        PGresult *res = PQexec(c, sql);
        bool done = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                    strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (done)
            return true;
        if (runner_done(r))
            return false;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 > end)
            return false;
        nanosleep(&tick, NULL);
    }
}

static bool terminate(PGconn *admin, int pid)
{
    char *sql = tu_sprintf("SELECT pg_terminate_backend(%d)", pid);
    PGresult *res = PQexec(admin, sql);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
              strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    free(sql);
    return ok;
}

/* ferry_tx_run on a thread of its own. */
struct runner {
    pthread_t thread;
    atomic_bool done;           /* ferry_tx_run has returned */
    PGconn *conn;
    ferry_tx_opts opts;
    ferry_tx_fn fn;
    void *arg;
    ferry_code rc;
    ferry_tx_report rep;
    ferry_error err;
};

static void *runner_main(void *p)
{
    runner *r = p;
    r->rc = ferry_tx_run(r->conn, &r->opts, r->fn, r->arg, &r->rep, &r->err);
    atomic_store(&r->done, true);
    return NULL;
}

static bool runner_done(runner *r) { return atomic_load(&r->done); }

static void runner_start(runner *r)
{
    assert_int_equal(pthread_create(&r->thread, NULL, runner_main, r), 0);
}

/* ------------------------------------------------------------------ */
/* A transaction that inserts one row and tells the killer its backend.  */

#define VICTIM_CALLS_MAX 8

typedef struct victim {
    const char *insert_sql;
    bool sync_on;                   /* make this COMMIT wait for the standby */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;                      /* times fn ran */
    int pid[VICTIM_CALLS_MAX];      /* backend of each call */
} victim;

static void victim_init(victim *v, const char *insert_sql, bool sync_on)
{
    memset(v, 0, sizeof *v);
    v->insert_sql = insert_sql;
    v->sync_on = sync_on;
    pthread_mutex_init(&v->mu, NULL);
    pthread_cond_init(&v->cv, NULL);
}

static void victim_destroy(victim *v)
{
    pthread_mutex_destroy(&v->mu);
    pthread_cond_destroy(&v->cv);
}

static ferry_code victim_fn(PGconn *conn, void *arg, ferry_error *err)
{
    victim *v = arg;
    if (v->sync_on && !exec_ok(conn, "SET LOCAL synchronous_commit = on", err))
        return err->code;
    if (!exec_ok(conn, v->insert_sql, err))
        return err->code;
    pthread_mutex_lock(&v->mu);
    if (v->calls < VICTIM_CALLS_MAX)
        v->pid[v->calls] = PQbackendPID(conn);
    v->calls++;
    pthread_cond_broadcast(&v->cv);
    pthread_mutex_unlock(&v->mu);
    return FERRY_OK;
}

/* The backend pid of fn's call n (1-based), once fn got that far; 0 if it
 * did not within timeout_ms. */
static int victim_await_call(victim *v, int n, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int pid = 0, rc = 0;
    pthread_mutex_lock(&v->mu);
    while (v->calls < n && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&v->cv, &v->mu, &until);
    if (v->calls >= n)
        pid = v->pid[n - 1];
    pthread_mutex_unlock(&v->mu);
    return pid;
}

/* The killer gave up: free the worker (kill its backend, drop the lock it
 * waits for), join it, then fail. */
static void rescue_and_fail(PGconn *admin, int pid, PGconn *holder, runner *r,
                            const char *why)
{
    if (pid != 0)
        terminate(admin, pid);
    if (holder != NULL)
        PQclear(PQexec(holder, "SELECT pg_advisory_unlock_all()"));
    pthread_join(r->thread, NULL);
    fail_msg("%s (ferry_tx_run said %s: %s)", why, ferry_code_name(r->rc), r->err.message);
}

/* Wait until fn has run and its backend waits inside COMMIT, as wait_pred
 * (a condition on pg_stat_activity) says; return the backend's pid. On
 * timeout, free the runner and fail the test with why. */
static int await_victim_in_commit(PGconn *admin, victim *v, runner *r, PGconn *holder,
                                  const char *wait_pred, const char *why)
{
    int pid = victim_await_call(v, 1, WAIT_MS);
    if (pid == 0)
        rescue_and_fail(admin, 0, holder, r, "fn never ran");
    char *sql = tu_sprintf("SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                           "WHERE pid = %d AND %s)", pid, wait_pred);
    bool waiting = await_sql(admin, sql, WAIT_MS, r);
    free(sql);
    if (!waiting)
        rescue_and_fail(admin, pid, holder, r, why);
    return pid;
}

/* ------------------------------------------------------------------ */
/* 1. Commit                                                            */

static ferry_code insert_one(PGconn *conn, void *arg, ferry_error *err)
{
    int *calls = arg;
    (*calls)++;
    return exec_ok(conn, "INSERT INTO tx_commit VALUES (1, 'hello')", err) ? FERRY_OK
                                                                            : err->code;
}

static void commit_is_visible(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_commit", "id int PRIMARY KEY, note text");
    int calls = 0;
    ferry_tx_report rep;
    memset(&rep, 0x55, sizeof rep);
    ferry_error err;
    assert_ferry_ok(ferry_tx_run(c, NULL, insert_one, &calls, &rep, &err), err);

    assert_int_equal(calls, 1);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(rep.retries_conflict, 0);
    assert_int_equal(rep.retries_connection, 0);
    assert_int_equal(rep.commit_unknown, 0);
    assert_int_equal(rep.resolved_committed, 0);
    assert_int_equal(rep.resolved_aborted, 0);
    assert_true(rep.last_xid != 0);
    assert_int_equal(err.code, FERRY_OK);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);

    /* Another session sees the row, written by the transaction the report
     * names, which the server knows as committed. */
    PGconn *other = tu_connect();
    assert_int_equal(count_rows(other, "tx_commit"), 1);
    char *sql = tu_sprintf("SELECT (SELECT xmin::text::bigint FROM tx_commit) = %" PRIu64
                           " %% 4294967296 AND pg_xact_status('%" PRIu64
                           "'::xid8) = 'committed'",
                           rep.last_xid, rep.last_xid);
    char *ok = tu_str(other, sql);
    assert_string_equal(ok, "t");
    free(ok);
    free(sql);
    PQfinish(other);
    PQfinish(c);
}

/* opts, report and err may all be NULL. */
static ferry_code insert_two(PGconn *conn, void *arg, ferry_error *err)
{
    return exec_ok(conn, "INSERT INTO tx_nulls VALUES (2)", err) ? FERRY_OK : err->code;
}

static void commit_without_report_or_error(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_nulls", "id int");
    assert_int_equal(ferry_tx_run(c, NULL, insert_two, NULL, NULL, NULL), FERRY_OK);
    assert_int_equal(count_rows(c, "tx_nulls"), 1);
    PQfinish(c);
}

/* The isolation asked for is the one fn runs in. */
static ferry_code read_isolation(PGconn *conn, void *arg, ferry_error *err)
{
    PGresult *res = PQexec(conn, "SELECT current_setting('transaction_isolation')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "isolation");
        PQclear(res);
        return rc;
    }
    snprintf(arg, 32, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return FERRY_OK;
}

static void isolation_level_is_applied(void **state)
{
    static const struct {
        ferry_isolation level;
        const char *name;
    } cases[] = {{FERRY_READ_COMMITTED, "read committed"},
                 {FERRY_REPEATABLE_READ, "repeatable read"},
                 {FERRY_SERIALIZABLE, "serializable"}};
    PGconn *c = tx_connect();
    /* A session default that ferry must override. */
    tu_exec(c, "SET default_transaction_isolation = 'serializable'");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char seen[32] = "";
        ferry_tx_opts opts = {.isolation = cases[i].level};
        ferry_error err;
        assert_ferry_ok(ferry_tx_run(c, &opts, read_isolation, seen, NULL, &err), err);
        assert_string_equal(seen, cases[i].name);
    }
    PQfinish(c);
}

static void null_arguments_are_refused(void **state)
{
    PGconn *c = tx_connect();
    ferry_tx_report rep;
    ferry_error err;
    memset(&rep, 0x55, sizeof rep);
    assert_int_equal(ferry_tx_run(NULL, NULL, insert_two, NULL, &rep, &err), FERRY_EINVAL);
    assert_int_equal(err.code, FERRY_EINVAL);
    assert_string_equal(err.field, "conn");
    assert_int_equal(rep.attempts, 0);
    assert_int_equal(ferry_tx_run(c, NULL, NULL, NULL, &rep, &err), FERRY_EINVAL);
    assert_int_equal(err.code, FERRY_EINVAL);
    assert_string_equal(err.field, "fn");
    assert_int_equal(rep.attempts, 0);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 2. fn fails: rolled back, its error returned                         */

static ferry_code insert_then_refuse(PGconn *conn, void *arg, ferry_error *err)
{
    int *calls = arg;
    (*calls)++;
    if (!exec_ok(conn, "INSERT INTO tx_refuse VALUES (1)", err))
        return err->code;
    return user_error(err, "insufficient funds in account 7");
}

static void fn_error_rolls_back(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_refuse", "id int");
    int calls = 0;
    ferry_tx_report rep;
    ferry_error err;
    ferry_code rc = ferry_tx_run(c, NULL, insert_then_refuse, &calls, &rep, &err);

    assert_int_equal(rc, FERRY_EUSER);
    assert_int_equal(err.code, FERRY_EUSER);
    assert_string_equal(err.message, "insufficient funds in account 7");
    assert_int_equal(err.retriable, 0);
    assert_int_equal(calls, 1);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(rep.retries_conflict + rep.retries_connection, 0);

    /* Rolled back, and the connection is idle and usable. */
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(tu_int(c, "SELECT 41 + 1"), 42);
    PGconn *other = tu_connect();
    assert_int_equal(count_rows(other, "tx_refuse"), 0);
    PQfinish(other);
    PQfinish(c);
}

/* fn fails without saying why: the helper says it for fn. */
static ferry_code refuse_silently(PGconn *conn, void *arg, ferry_error *err)
{
    return exec_ok(conn, "INSERT INTO tx_silent VALUES (1)", err) ? FERRY_EUSER : err->code;
}

static void fn_error_without_details(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_silent", "id int");
    ferry_tx_report rep;
    ferry_error err;
    assert_int_equal(ferry_tx_run(c, NULL, refuse_silently, NULL, &rep, &err), FERRY_EUSER);
    assert_int_equal(err.code, FERRY_EUSER);
    assert_int_equal(err.retriable, 0);
    assert_non_null(strstr(err.message, "FERRY_EUSER"));
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(count_rows(c, "tx_silent"), 0);
    PQfinish(c);
}

/* A server error that fn reports and that is not a conflict ends the run
 * at once, with the server's SQLSTATE. */
static ferry_code insert_duplicate(PGconn *conn, void *arg, ferry_error *err)
{
    int *calls = arg;
    (*calls)++;
    if (!exec_ok(conn, "INSERT INTO tx_dup VALUES (2)", err) ||
        !exec_ok(conn, "INSERT INTO tx_dup VALUES (1)", err))
        return err->code;
    return FERRY_OK;
}

static void server_error_is_not_retried(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_dup", "id int PRIMARY KEY");
    tu_exec(c, "INSERT INTO tx_dup VALUES (1)");
    int calls = 0;
    ferry_tx_report rep;
    ferry_error err;
    assert_int_equal(ferry_tx_run(c, NULL, insert_duplicate, &calls, &rep, &err), FERRY_EDB);
    assert_int_equal(err.code, FERRY_EDB);
    assert_string_equal(err.sqlstate, "23505");
    assert_int_equal(err.retriable, 0);
    assert_int_equal(calls, 1);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(rep.retries_conflict + rep.retries_connection, 0);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(count_rows(c, "tx_dup"), 1);
    PQfinish(c);
}

/* The server refuses the COMMIT itself (a deferred unique check): the
 * error comes back, the transaction is over, nothing is retried. */
static ferry_code insert_deferred_duplicate(PGconn *conn, void *arg, ferry_error *err)
{
    int *calls = arg;
    (*calls)++;
    return exec_ok(conn, "INSERT INTO tx_deferred VALUES (1)", err) ? FERRY_OK : err->code;
}

static void commit_refused_by_server(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_deferred", "id int UNIQUE DEFERRABLE INITIALLY DEFERRED");
    tu_exec(c, "INSERT INTO tx_deferred VALUES (1)");
    int calls = 0;
    ferry_tx_report rep;
    ferry_error err;
    assert_int_equal(ferry_tx_run(c, NULL, insert_deferred_duplicate, &calls, &rep, &err),
                     FERRY_EDB);
    assert_string_equal(err.sqlstate, "23505");
    assert_int_equal(err.retriable, 0);
    assert_int_equal(calls, 1);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(rep.commit_unknown, 0);
    assert_int_equal(rep.retries_conflict + rep.retries_connection, 0);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(count_rows(c, "tx_deferred"), 1);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 3. fn swallows a server error                                         */

static ferry_code swallow_error(PGconn *conn, void *arg, ferry_error *err)
{
    int *failed = arg;
    if (!exec_ok(conn, "INSERT INTO tx_swallow VALUES (1)", err))
        return err->code;
    PGresult *res = PQexec(conn, "SELECT 1 / 0");
    *failed = PQresultStatus(res) == PGRES_FATAL_ERROR;
    PQclear(res);
    return FERRY_OK; /* as if nothing happened */
}

static void swallowed_error_is_not_committed(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_swallow", "id int");
    int failed = 0;
    ferry_tx_report rep;
    ferry_error err;
    assert_int_equal(ferry_tx_run(c, NULL, swallow_error, &failed, &rep, &err), FERRY_EUSER);
    assert_true(failed); /* the fault fired */
    assert_int_equal(err.code, FERRY_EUSER);
    assert_int_equal(err.retriable, 0);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(tu_int(c, "SELECT 7"), 7);
    PGconn *other = tu_connect();
    assert_int_equal(count_rows(other, "tx_swallow"), 0);
    PQfinish(other);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 4. The connection is already in a transaction                         */

static ferry_code must_not_run(PGconn *conn, void *arg, ferry_error *err)
{
    int *calls = arg;
    (*calls)++;
    return FERRY_OK;
}

static void busy_connection_is_refused(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_busy", "id int");
    int calls = 0;
    ferry_tx_report rep;
    ferry_error err;

    /* An open transaction of the caller's. */
    tu_exec(c, "BEGIN");
    tu_exec(c, "INSERT INTO tx_busy VALUES (1)");
    assert_int_equal(ferry_tx_run(c, NULL, must_not_run, &calls, &rep, &err), FERRY_ESTATE);
    assert_int_equal(err.code, FERRY_ESTATE);
    assert_int_equal(calls, 0);
    assert_int_equal(rep.attempts, 0);
    /* Untouched: still open, still healthy, and it commits what it did. */
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
    tu_exec(c, "INSERT INTO tx_busy VALUES (2)");
    PGconn *other = tu_connect();
    assert_int_equal(count_rows(other, "tx_busy"), 0);
    tu_exec(c, "COMMIT");
    assert_int_equal(count_rows(other, "tx_busy"), 2);

    /* An aborted transaction of the caller's stays the caller's to end. */
    tu_exec(c, "BEGIN");
    PQclear(PQexec(c, "SELECT 1 / 0"));
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INERROR);
    assert_int_equal(ferry_tx_run(c, NULL, must_not_run, &calls, &rep, &err), FERRY_ESTATE);
    assert_int_equal(calls, 0);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INERROR);
    tu_exec(c, "ROLLBACK");
    PQfinish(other);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 4b. fn leaves pipeline mode on, or ends the transaction itself        */

/* How a pipelined fn leaves the connection: its INSERT sent and never
 * synced; synced but its result unread; or followed by a COMMIT of its
 * own in the pipeline. */
typedef enum { PIPE_UNSYNCED, PIPE_UNREAD, PIPE_COMMITTED } pipe_way;

static ferry_code insert_in_pipeline(PGconn *conn, void *arg, ferry_error *err)
{
    pipe_way way = *(pipe_way *)arg;
    if (!PQenterPipelineMode(conn) ||
        !PQsendQueryParams(conn, "INSERT INTO tx_pipe VALUES (1)", 0, NULL, NULL, NULL, NULL, 0))
        return ferry_error_from_pg(err, conn, NULL, "could not pipeline");
    if (way == PIPE_COMMITTED &&
        !PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
        return ferry_error_from_pg(err, conn, NULL, "could not pipeline");
    if (way != PIPE_UNSYNCED && !PQpipelineSync(conn))
        return ferry_error_from_pg(err, conn, NULL, "could not sync");
    return FERRY_OK;
}

/*
 * A fn that returns with the connection in pipeline mode misused it: the
 * run fails with FERRY_EUSER, the pipeline is ended (its results read and
 * dropped), and the work is rolled back; the connection is idle. Before,
 * COMMIT failed ("synchronous command execution functions are not allowed
 * in pipeline mode", FERRY_EDB) and left it in the transaction, in
 * pipeline mode, with the work pending (an outside audit). A pipeline
 * that ran COMMIT itself is the case below: its work is committed.
 */
static void fn_left_in_pipeline_mode_is_rolled_back(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_pipe", "id int");
    for (pipe_way way = PIPE_UNSYNCED; way <= PIPE_COMMITTED; way++) {
        ferry_tx_report rep;
        ferry_error err;
        ferry_code rc = ferry_tx_run(c, NULL, insert_in_pipeline, &way, &rep, &err);
        PGpipelineStatus pipe = PQpipelineStatus(c);
        PGTransactionStatusType tx = PQtransactionStatus(c);
        if (pipe != PQ_PIPELINE_OFF || tx != PQTRANS_IDLE) {
            PQfinish(c);        /* its lock on tx_pipe would hold up the next test */
            fail_msg("way %d: the connection was left in pipeline mode %d, transaction "
                     "status %d: %s: %s", (int)way, (int)pipe, (int)tx, ferry_code_name(rc),
                     err.message);
        }
        assert_int_equal(rc, FERRY_EUSER);
        assert_int_equal(err.retriable, 0);
        assert_int_equal(rep.attempts, 1);
        if (way == PIPE_COMMITTED)
            assert_non_null(strstr(err.message, "committed"));
        else
            assert_non_null(strstr(err.message, "pipeline mode"));
        assert_int_equal(tu_int(c, "SELECT 7"), 7);
        assert_int_equal(count_rows(c, "tx_pipe"), way == PIPE_COMMITTED ? 1 : 0);
    }
    PQfinish(c);
}

/* How fn ends the transaction it was given, and what it returns. */
typedef struct ender {
    const char *end;        /* "COMMIT" or "ROLLBACK" */
    bool report_conflict;   /* return a serialization failure after it */
    int calls;
} ender;

static ferry_code insert_then_end(PGconn *conn, void *arg, ferry_error *err)
{
    ender *e = arg;
    e->calls++;
    if (!exec_ok(conn, "INSERT INTO tx_ended VALUES (1)", err) || !exec_ok(conn, e->end, err))
        return err->code;
    if (!e->report_conflict)
        return FERRY_OK;
    ferry_error_set(err, FERRY_EDB, 1, "a conflict of its own");
    snprintf(err->sqlstate, sizeof err->sqlstate, "40001");
    return FERRY_EDB;
}

/*
 * A fn that ends the transaction itself. After a COMMIT its work is in
 * the database: the run fails with FERRY_EUSER saying so, and is never
 * retried, even when fn reports a conflict (a retry would do the work a
 * second time). Before, the message said "left the transaction aborted or
 * closed", and a conflict reported after fn's own COMMIT was retried, the
 * work committed once per attempt (an outside audit). After a ROLLBACK
 * nothing is committed: a success is refused saying so; a conflict is
 * retried as before, since nothing was done twice.
 */
static void fn_that_ends_the_transaction_itself(void **state)
{
    PGconn *c = tx_connect();
    fresh_table(c, "tx_ended", "id int");
    ferry_tx_opts opts = {.max_attempts = 3, .backoff_base_ms = 1, .backoff_max_ms = 1};
    ferry_tx_report rep;
    ferry_error err;

    ender commit = {"COMMIT", false, 0};
    assert_int_equal(ferry_tx_run(c, &opts, insert_then_end, &commit, &rep, &err), FERRY_EUSER);
    assert_int_equal(err.retriable, 0);
    assert_non_null(strstr(err.message, "committed"));
    assert_int_equal(commit.calls, 1);
    assert_int_equal(count_rows(c, "tx_ended"), 1);

    ender commit_conflict = {"COMMIT", true, 0};
    assert_int_equal(ferry_tx_run(c, &opts, insert_then_end, &commit_conflict, &rep, &err),
                     FERRY_EUSER);
    assert_int_equal(err.retriable, 0);
    assert_non_null(strstr(err.message, "committed"));
    assert_int_equal(commit_conflict.calls, 1);
    assert_int_equal(rep.attempts, 1);
    assert_int_equal(count_rows(c, "tx_ended"), 2);

    ender rollback = {"ROLLBACK", false, 0};
    assert_int_equal(ferry_tx_run(c, &opts, insert_then_end, &rollback, &rep, &err),
                     FERRY_EUSER);
    assert_int_equal(err.retriable, 0);
    assert_non_null(strstr(err.message, "rolled back"));
    assert_int_equal(rollback.calls, 1);
    assert_int_equal(count_rows(c, "tx_ended"), 2);

    ender rollback_conflict = {"ROLLBACK", true, 0};
    assert_int_equal(ferry_tx_run(c, &opts, insert_then_end, &rollback_conflict, &rep, &err),
                     FERRY_EDB);
    assert_string_equal(err.sqlstate, "40001");
    assert_int_equal(rollback_conflict.calls, 3);
    assert_int_equal(count_rows(c, "tx_ended"), 2);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 5 and 7. Serialization failures                                       */

/*
 * Read the counter, have another session (autocommit) change it, then
 * update it: under REPEATABLE READ the update fails with 40001, because the
 * row changed after this transaction's snapshot. The interference happens
 * on the first `conflicts` calls.
 */
typedef struct counter_arg {
    PGconn *other;
    int conflicts;
    int calls;
    int interfered;
    char sqlstate[6];       /* of the last failed update */
} counter_arg;

static ferry_code bump_counter(PGconn *conn, void *arg, ferry_error *err)
{
    counter_arg *a = arg;
    a->calls++;
    if (!exec_ok(conn, "SELECT v FROM tx_counter WHERE id = 1", err))
        return err->code;
    if (a->calls <= a->conflicts) {
        PGresult *res = PQexec(a->other, "UPDATE tx_counter SET v = v + 100 WHERE id = 1");
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(res), "1") == 0;
        PQclear(res);
        if (!ok)
            return user_error(err, "the interfering update failed");
        a->interfered++;
    }
    PGresult *res = PQexec(conn, "UPDATE tx_counter SET v = v + 1 WHERE id = 1");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not update the counter");
        snprintf(a->sqlstate, sizeof a->sqlstate, "%s", err->sqlstate);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    return FERRY_OK;
}

static void serialization_failure_is_retried(void **state)
{
    PGconn *c = tx_connect();
    PGconn *other = tu_connect();
    fresh_table(c, "tx_counter", "id int PRIMARY KEY, v int NOT NULL");
    tu_exec(c, "INSERT INTO tx_counter VALUES (1, 0)");
    counter_arg a = {.other = other, .conflicts = 1};
    ferry_tx_opts opts = {.isolation = FERRY_REPEATABLE_READ};
    ferry_tx_report rep;
    ferry_error err;
    assert_ferry_ok(ferry_tx_run(c, &opts, bump_counter, &a, &rep, &err), err);

    assert_int_equal(a.interfered, 1);
    assert_string_equal(a.sqlstate, "40001"); /* the fault fired */
    assert_int_equal(a.calls, 2);
    assert_int_equal(rep.attempts, 2);
    assert_int_equal(rep.retries_conflict, 1);
    assert_int_equal(rep.retries_connection, 0);
    assert_int_equal(rep.commit_unknown, 0);
    /* The interfering +100 and exactly one +1. */
    assert_int_equal(tu_int(other, "SELECT v FROM tx_counter WHERE id = 1"), 101);
    PQfinish(other);
    PQfinish(c);
}

static void retries_are_bounded(void **state)
{
    PGconn *c = tx_connect();
    PGconn *other = tu_connect();
    fresh_table(c, "tx_counter", "id int PRIMARY KEY, v int NOT NULL");
    tu_exec(c, "INSERT INTO tx_counter VALUES (1, 0)");
    counter_arg a = {.other = other, .conflicts = 1000};
    ferry_tx_opts opts = {.isolation = FERRY_REPEATABLE_READ, .max_attempts = 2};
    ferry_tx_report rep;
    ferry_error err;
    ferry_code rc = ferry_tx_run(c, &opts, bump_counter, &a, &rep, &err);

    assert_int_equal(rc, FERRY_EDB);
    assert_int_equal(err.code, FERRY_EDB);
    assert_int_equal(err.retriable, 1);
    assert_string_equal(err.sqlstate, "40001");
    assert_int_equal(a.interfered, 2);
    assert_int_equal(a.calls, 2);
    assert_int_equal(rep.attempts, 2);
    assert_int_equal(rep.retries_conflict, 1);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    /* Only the interfering updates committed. */
    assert_int_equal(tu_int(other, "SELECT v FROM tx_counter WHERE id = 1"), 200);
    PQfinish(other);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 6. Deadlock                                                          */

typedef struct deadlock_arg {
    runner run;
    pthread_barrier_t *barrier;
    int first, second;          /* rows, locked in this order */
    int calls;
    char sqlstate[6];           /* of the last failed statement */
} deadlock_arg;

static ferry_code lock_two_rows(PGconn *conn, void *arg, ferry_error *err)
{
    deadlock_arg *a = arg;
    a->calls++;
    char sql[96];
    snprintf(sql, sizeof sql, "UPDATE tx_dl SET v = v + 1 WHERE id = %d", a->first);
    bool ok = exec_ok(conn, sql, err);
    /* Both sessions hold their first row before either asks for its
     * second, so the cycle is certain. Wait even after a failure, or the
     * other thread would wait forever. */
    if (a->calls == 1)
        pthread_barrier_wait(a->barrier);
    if (!ok)
        goto failed;
    snprintf(sql, sizeof sql, "UPDATE tx_dl SET v = v + 1 WHERE id = %d", a->second);
    if (!exec_ok(conn, sql, err))
        goto failed;
    return FERRY_OK;
failed:
    snprintf(a->sqlstate, sizeof a->sqlstate, "%s", err->sqlstate);
    return err->code;
}

static void deadlock_is_retried(void **state)
{
    PGconn *c = tu_connect();
    fresh_table(c, "tx_dl", "id int PRIMARY KEY, v int NOT NULL");
    tu_exec(c, "INSERT INTO tx_dl VALUES (1, 0), (2, 0)");
    pthread_barrier_t barrier;
    assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
    deadlock_arg a[2] = {{.barrier = &barrier, .first = 1, .second = 2},
                         {.barrier = &barrier, .first = 2, .second = 1}};
    for (int i = 0; i < 2; i++) {
        a[i].run.conn = tx_connect();
        a[i].run.fn = lock_two_rows;
        a[i].run.arg = &a[i];
        runner_start(&a[i].run);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(a[i].run.thread, NULL);
    pthread_barrier_destroy(&barrier);

    int retries = 0, deadlocks = 0;
    for (int i = 0; i < 2; i++) {
        assert_ferry_ok(a[i].run.rc, a[i].run.err);
        assert_int_equal(a[i].run.rep.attempts, a[i].calls);
        assert_int_equal(a[i].run.rep.attempts, 1 + a[i].run.rep.retries_conflict);
        assert_int_equal(a[i].run.rep.retries_connection, 0);
        retries += a[i].run.rep.retries_conflict;
        deadlocks += strcmp(a[i].sqlstate, "40P01") == 0;
        PQfinish(a[i].run.conn);
    }
    assert_true(retries >= 1);
    assert_true(deadlocks >= 1); /* the fault fired, and it was a deadlock */
    /* Both transactions' increments, once each. */
    assert_int_equal(tu_int(c, "SELECT v FROM tx_dl WHERE id = 1"), 2);
    assert_int_equal(tu_int(c, "SELECT v FROM tx_dl WHERE id = 2"), 2);
    PQfinish(c);
}

/* ------------------------------------------------------------------ */
/* 8. COMMIT's reply lost, the transaction committed                     */

/* Does the server hold back a COMMIT with synchronous_commit = on? Only
 * the cluster this binary started is known to. */
static bool sync_standby_configured(void)
{
    if (fpg_external(tu_pg))
        return false;
    PGconn *c = tu_connect();
    char *names = tu_str(c, "SELECT current_setting('synchronous_standby_names')");
    bool yes = names != NULL && strcmp(names, "ferry_never_connects") == 0;
    free(names);
    PQfinish(c);
    return yes;
}

static void commit_unknown_resolved_committed(void **state)
{
    if (!sync_standby_configured())
        skip();
    PGconn *admin = tu_connect();
    fresh_table(admin, "tx_sync", "id int");
    victim v;
    victim_init(&v, "INSERT INTO tx_sync VALUES (1)", true);
    runner r = {.conn = tx_connect(), .fn = victim_fn, .arg = &v};
    runner_start(&r);

    /* COMMIT waits for the standby: the commit record is written and
     * flushed locally, only the reply is held back. Kill the backend. */
    int pid = await_victim_in_commit(admin, &v, &r, NULL, "wait_event = 'SyncRep'",
                                     "COMMIT never waited for the standby");
    if (!terminate(admin, pid))
        rescue_and_fail(admin, pid, NULL, &r, "pg_terminate_backend failed");
    pthread_join(r.thread, NULL);

    assert_ferry_ok(r.rc, r.err);
    assert_int_equal(r.rep.commit_unknown, 1); /* the fault fired */
    assert_int_equal(r.rep.resolved_committed, 1);
    assert_int_equal(r.rep.resolved_aborted, 0);
    assert_int_equal(r.rep.attempts, 1);
    assert_int_equal(v.calls, 1);
    assert_int_equal(r.err.code, FERRY_OK);
    assert_int_equal(r.err.xid, 0);
    /* The helper's connection was replaced, and works. */
    assert_int_equal(PQstatus(r.conn), CONNECTION_OK);
    assert_int_not_equal(PQbackendPID(r.conn), pid);
    assert_int_equal(PQtransactionStatus(r.conn), PQTRANS_IDLE);
    assert_int_equal(count_rows(admin, "tx_sync"), 1);
    char *st = tu_sprintf("SELECT pg_xact_status('%" PRIu64 "'::xid8)", r.rep.last_xid);
    char *status = tu_str(admin, st);
    assert_string_equal(status, "committed");
    free(status);
    free(st);

    PQfinish(r.conn);
    victim_destroy(&v);
    PQfinish(admin);
}

/* ------------------------------------------------------------------ */
/* 9. COMMIT's reply lost, the transaction aborted: retried              */

static void commit_unknown_resolved_aborted(void **state)
{
    PGconn *admin = tu_connect();
    PGconn *holder = tu_connect();
    fresh_table(admin, "tx_gate", "id int");
    /* COMMIT runs the deferred trigger, which waits for an advisory lock
     * the holder keeps: the transaction cannot commit until released. */
    tu_exec(admin, "CREATE OR REPLACE FUNCTION tx_gate_wait() RETURNS trigger "
                   "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(90909); "
                   "RETURN NULL; END $$");
    tu_exec(admin, "CREATE CONSTRAINT TRIGGER tx_gate_wait AFTER INSERT ON tx_gate "
                   "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tx_gate_wait()");
    tu_exec(holder, "SELECT pg_advisory_lock(90909)");

    victim v;
    victim_init(&v, "INSERT INTO tx_gate VALUES (1)", false);
    runner r = {.conn = tx_connect(), .fn = victim_fn, .arg = &v};
    runner_start(&r);

    int pid = await_victim_in_commit(admin, &v, &r, holder,
                                     "wait_event_type = 'Lock' AND wait_event = 'advisory'",
                                     "COMMIT never waited for the advisory lock");
    if (!terminate(admin, pid))
        rescue_and_fail(admin, pid, holder, &r, "pg_terminate_backend failed");
    tu_exec(holder, "SELECT pg_advisory_unlock(90909)");
    pthread_join(r.thread, NULL);

    assert_ferry_ok(r.rc, r.err);
    assert_int_equal(r.rep.commit_unknown, 1); /* the fault fired */
    assert_int_equal(r.rep.resolved_aborted, 1);
    assert_int_equal(r.rep.resolved_committed, 0);
    assert_int_equal(r.rep.attempts, 2);
    assert_int_equal(v.calls, 2);
    /* The retry ran on a new backend. */
    assert_int_not_equal(v.pid[1], pid);
    assert_int_equal(PQbackendPID(r.conn), v.pid[1]);
    assert_int_equal(count_rows(admin, "tx_gate"), 1);

    PQfinish(r.conn);
    victim_destroy(&v);
    PQfinish(holder);
    PQfinish(admin);
}

/* ------------------------------------------------------------------ */
/* 10. COMMIT's reply lost, and the server gone                          */

static void commit_unknown_unresolvable(void **state)
{
    if (!sync_standby_configured())
        skip();
    PGconn *admin = tu_connect();
    fresh_table(admin, "tx_crash", "id int");
    victim v;
    victim_init(&v, "INSERT INTO tx_crash VALUES (1)", true);
    runner r = {.conn = tx_connect(), .fn = victim_fn, .arg = &v,
                .opts = {.resolve_timeout_ms = 1500}};
    runner_start(&r);

    int pid = await_victim_in_commit(admin, &v, &r, NULL, "wait_event = 'SyncRep'",
                                     "COMMIT never waited for the standby");
    /* The server stays down until the helper has given up. */
    if (fpg_stop(tu_pg, "immediate") != 0)
        rescue_and_fail(admin, pid, NULL, &r, "could not stop the server");
    PQfinish(admin);
    pthread_join(r.thread, NULL);
    int restarted = fpg_start_again(tu_pg);

    assert_int_equal(r.rc, FERRY_ECOMMIT_UNKNOWN);
    assert_int_equal(r.err.code, FERRY_ECOMMIT_UNKNOWN);
    assert_int_equal(r.err.retriable, 0);
    assert_true(r.err.xid != 0);
    assert_true(r.err.xid == r.rep.last_xid);
    assert_int_equal(r.rep.commit_unknown, 1); /* the fault fired */
    assert_int_equal(r.rep.resolved_committed + r.rep.resolved_aborted, 0);
    assert_int_equal(r.rep.attempts, 1);
    assert_int_equal(v.calls, 1);
    assert_int_equal(restarted, 0);

    /* Crash recovery replayed the commit record written before the wait. */
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT pg_xact_status('%" PRIu64 "'::xid8)", r.err.xid);
    char *status = tu_str(c, sql);
    assert_string_equal(status, "committed");
    free(status);
    free(sql);
    assert_int_equal(count_rows(c, "tx_crash"), 1);
    PQfinish(c);
    PQfinish(r.conn);
    victim_destroy(&v);
}

/* ------------------------------------------------------------------ */
/* 11. Connection lost before COMMIT                                     */

typedef struct lost_arg {
    PGconn *admin;
    int calls;
    int pid[2];
    ferry_code seen;            /* what fn made of the lost connection */
    int killed;
} lost_arg;

static ferry_code lose_connection_once(PGconn *conn, void *arg, ferry_error *err)
{
    lost_arg *a = arg;
    if (a->calls < 2)
        a->pid[a->calls] = PQbackendPID(conn);
    a->calls++;
    char sql[64];
    snprintf(sql, sizeof sql, "INSERT INTO tx_lost VALUES (%d)", a->calls);
    if (!exec_ok(conn, sql, err))
        return err->code;
    if (a->calls > 1)
        return FERRY_OK;

    /* Terminate this backend and wait (server side) until it is gone. */
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d, %d)", PQbackendPID(conn),
             WAIT_MS);
    PGresult *res = PQexec(a->admin, sql);
    a->killed = PQresultStatus(res) == PGRES_TUPLES_OK &&
                strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!a->killed)
        return user_error(err, "could not terminate the backend");

    res = PQexec(conn, "SELECT 1");
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        PQclear(res);
        return user_error(err, "the terminated backend answered");
    }
    a->seen = ferry_error_from_pg(err, conn, res, "could not read the balance");
    PQclear(res);
    return a->seen;
}

static void lost_connection_is_retried(void **state)
{
    PGconn *admin = tu_connect();
    fresh_table(admin, "tx_lost", "id int");
    PGconn *c = tx_connect();
    lost_arg a = {.admin = admin};
    ferry_tx_report rep;
    ferry_error err;
    assert_ferry_ok(ferry_tx_run(c, NULL, lose_connection_once, &a, &rep, &err), err);

    assert_true(a.killed);
    assert_int_equal(a.seen, FERRY_ECONN); /* the fault fired */
    assert_int_equal(a.calls, 2);
    assert_int_equal(rep.attempts, 2);
    assert_int_equal(rep.retries_connection, 1);
    assert_int_equal(rep.retries_conflict, 0);
    assert_int_equal(rep.commit_unknown, 0);
    assert_int_not_equal(a.pid[1], a.pid[0]);
    assert_int_equal(PQbackendPID(c), a.pid[1]);
    /* Exactly one row: the one of the second attempt. */
    assert_int_equal(count_rows(admin, "tx_lost"), 1);
    assert_int_equal(tu_int(admin, "SELECT id FROM tx_lost"), 2);
    PQfinish(c);
    PQfinish(admin);
}

int main(void)
{
    tu_conf = conf;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(commit_is_visible),
        cmocka_unit_test(commit_without_report_or_error),
        cmocka_unit_test(isolation_level_is_applied),
        cmocka_unit_test(null_arguments_are_refused),
        cmocka_unit_test(fn_error_rolls_back),
        cmocka_unit_test(fn_error_without_details),
        cmocka_unit_test(server_error_is_not_retried),
        cmocka_unit_test(commit_refused_by_server),
        cmocka_unit_test(swallowed_error_is_not_committed),
        cmocka_unit_test(busy_connection_is_refused),
        cmocka_unit_test(fn_left_in_pipeline_mode_is_rolled_back),
        cmocka_unit_test(fn_that_ends_the_transaction_itself),
        cmocka_unit_test(serialization_failure_is_retried),
        cmocka_unit_test(retries_are_bounded),
        cmocka_unit_test(deadlock_is_retried),
        cmocka_unit_test(commit_unknown_resolved_committed),
        cmocka_unit_test(commit_unknown_resolved_aborted),
        cmocka_unit_test(lost_connection_is_retried),
        /* Last: it stops and restarts the server. */
        cmocka_unit_test(commit_unknown_unresolvable),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
