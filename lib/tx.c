/*
 * tx.c — run a caller's function in a transaction, retry what can be
 * retried, and find out what happened to a COMMIT whose reply was lost.
 *
 * The transaction's id is fetched in the same round trip as BEGIN
 * (pg_current_xact_id() assigns one at once), so that when the connection
 * dies during COMMIT the helper knows which transaction to ask about,
 * without a round trip of its own before COMMIT.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"

enum {
    DEFAULT_ATTEMPTS = 10,
    DEFAULT_BACKOFF_BASE_MS = 5,
    DEFAULT_BACKOFF_MAX_MS = 1000,
    DEFAULT_RESOLVE_TIMEOUT_MS = 30000,
    MAX_ATTEMPTS = 1000,
};

typedef struct tx_settings {
    ferry_isolation isolation;
    int max_attempts, base_ms, max_ms, resolve_ms;
} tx_settings;

static tx_settings settings_from(const ferry_tx_opts *o)
{
    tx_settings s = {FERRY_READ_COMMITTED, DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_BASE_MS,
                     DEFAULT_BACKOFF_MAX_MS, DEFAULT_RESOLVE_TIMEOUT_MS};
    if (o == NULL)
        return s;
    s.isolation = o->isolation;
    if (o->max_attempts > 0)
        s.max_attempts = o->max_attempts < MAX_ATTEMPTS ? o->max_attempts : MAX_ATTEMPTS;
    if (o->backoff_base_ms > 0)
        s.base_ms = o->backoff_base_ms;
    if (o->backoff_max_ms > 0)
        s.max_ms = o->backoff_max_ms;
    if (o->resolve_timeout_ms > 0)
        s.resolve_ms = o->resolve_timeout_ms;
    return s;
}

const char *ferry__begin_sql(ferry_isolation iso, bool with_xid)
{
#define XID_ "; SELECT pg_current_xact_id()::text"
    static const char *const sql[3][2] = {
        {"BEGIN ISOLATION LEVEL READ COMMITTED", "BEGIN ISOLATION LEVEL READ COMMITTED" XID_},
        {"BEGIN ISOLATION LEVEL REPEATABLE READ", "BEGIN ISOLATION LEVEL REPEATABLE READ" XID_},
        {"BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN ISOLATION LEVEL SERIALIZABLE" XID_},
    };
#undef XID_
    /* Any other value is read committed, the server's default. */
    int i = iso == FERRY_REPEATABLE_READ ? 1 : iso == FERRY_SERIALIZABLE ? 2 : 0;
    return sql[i][with_xid];
}

void ferry__backoff_sleep(long base_ms, long max_ms, int attempt)
{
    long cap = base_ms;
    for (int i = 1; i < attempt && cap < max_ms; i++)
        cap *= 2;
    if (cap > max_ms)
        cap = max_ms;
    unsigned r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned)ferry__now_ms();
    ferry__sleep_ms((long)(r % (unsigned)(cap + 1)));
}

static void backoff(const tx_settings *s, int attempt)
{
    ferry__backoff_sleep(s->base_ms, s->max_ms, attempt);
}

void ferry__rollback_quietly(PGconn *conn)
{
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
}

/* Reconnect with backoff until resolve_ms runs out. */
static bool reconnect(PGconn *conn, const tx_settings *s, int64_t deadline)
{
    for (int i = 1;; i++) {
        PQreset(conn);
        if (PQstatus(conn) == CONNECTION_OK)
            return true;
        if (ferry__now_ms() >= deadline)
            return false;
        backoff(s, i);
    }
}

typedef enum { FATE_COMMITTED, FATE_ABORTED, FATE_UNKNOWN } commit_fate;

/*
 * The COMMIT of xid was sent and the connection died before its reply.
 * Ask a fresh session. "in progress" means the old backend has not
 * finished ending yet (it aborts, or completes its commit, on its way
 * out), so ask again until the deadline.
 */
static commit_fate resolve_commit(PGconn *conn, const tx_settings *s, uint64_t xid,
                                  ferry_error *err)
{
    int64_t deadline = ferry__now_ms() + s->resolve_ms;
    char xid_text[24];
    snprintf(xid_text, sizeof xid_text, "%" PRIu64, xid);
    const char *params[1] = {xid_text};

    for (int i = 1;; i++) {
        if (PQstatus(conn) != CONNECTION_OK && !reconnect(conn, s, deadline))
            break;
        PGresult *res = PQexecParams(conn, "SELECT pg_xact_status($1::xid8)", 1, NULL,
                                     params, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
            const char *st = PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0);
            commit_fate fate = FATE_UNKNOWN;
            bool pending = strcmp(st, "in progress") == 0;
            if (strcmp(st, "committed") == 0)
                fate = FATE_COMMITTED;
            else if (strcmp(st, "aborted") == 0)
                fate = FATE_ABORTED;
            PQclear(res);
            if (fate != FATE_UNKNOWN)
                return fate;
            if (!pending) {
                /* NULL: so old that its status was truncated away. */
                ferry__error_set(err, FERRY_ECOMMIT_UNKNOWN, NULL,
                              "COMMIT of transaction %s: the server no longer knows "
                              "its status", xid_text);
                return FATE_UNKNOWN;
            }
        } else {
            PQclear(res);
        }
        if (ferry__now_ms() >= deadline)
            break;
        backoff(s, i);
    }
    ferry__error_set(err, FERRY_ECOMMIT_UNKNOWN, NULL,
                  "the connection was lost during COMMIT of transaction %s and its "
                  "outcome could not be learned within %d ms: check "
                  "pg_xact_status('%s') before repeating the work",
                  xid_text, s->resolve_ms, xid_text);
    return FATE_UNKNOWN;
}

/*
 * fn returned with conn in pipeline mode, which ferry.h forbids: end it as
 * a caller would (a sync, then every result up to it, dropped), so that
 * the transaction can be judged and rolled back. A sync inside the
 * transaction block commits nothing. false when pipeline mode could not be
 * left (the connection broke, or results stopped coming).
 */
static bool leave_pipeline(PGconn *conn)
{
    if (!PQpipelineSync(conn))
        return PQexitPipelineMode(conn) == 1;
    /* The sync just sent is the last thing queued, so once everything is
     * read pipeline mode can be left. Between results PQgetResult says
     * NULL once; twice in a row means nothing more will come. */
    int nulls = 0;
    while (!PQexitPipelineMode(conn)) {
        PGresult *res = PQgetResult(conn);
        if (res == NULL) {
            if (++nulls > 1 || PQstatus(conn) != CONNECTION_OK)
                return false;
            continue;
        }
        nulls = 0;
        PQclear(res);
    }
    return true;
}

/*
 * fn ended the transaction itself (COMMIT, ROLLBACK, END) and the helper
 * finds the connection idle. Which one it was is the server's to say:
 * after a COMMIT fn's work is in the database, and the run must not be
 * repeated (a retry would do it twice), whatever fn returned. The
 * outcome goes into err; *retry_ok says whether fn's own failure, if it
 * returned one, may still be retried (its transaction was rolled back).
 */
static ferry_code fn_ended_tx(PGconn *conn, uint64_t xid, ferry_code fn_rc, bool piped,
                              ferry_error *err, bool *retry_ok)
{
    char xid_text[24];
    snprintf(xid_text, sizeof xid_text, "%" PRIu64, xid);
    const char *params[1] = {xid_text};
    PGresult *res = PQexecParams(conn, "SELECT pg_xact_status($1::xid8)", 1, NULL, params,
                                 NULL, NULL, 0);
    const char *st = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                             !PQgetisnull(res, 0, 0)
                         ? PQgetvalue(res, 0, 0) : "";
    bool committed = strcmp(st, "committed") == 0, aborted = strcmp(st, "aborted") == 0;
    PQclear(res);
    const char *how = piped ? " (in pipeline mode, which it left on)" : "";
    *retry_ok = false;
    if (aborted && fn_rc != FERRY_OK) {
        /* Rolled back: nothing was done, and fn's error stands. */
        *retry_ok = true;
        return fn_rc;
    }
    if (committed)
        return ferry__error_set(err, FERRY_EUSER, NULL,
                             "the transaction function ended transaction %s itself%s, and it "
                             "committed: its work is in the database; not retried, as that "
                             "would do it again", xid_text, how);
    if (aborted)
        return ferry__error_set(err, FERRY_EUSER, NULL,
                             "the transaction function ended transaction %s itself%s, and it "
                             "was rolled back: nothing was committed", xid_text, how);
    return ferry__error_set(err, FERRY_EUSER, NULL,
                         "the transaction function ended transaction %s itself%s, and its "
                         "outcome could not be read: its work may be committed; check "
                         "pg_xact_status('%s') before repeating it", xid_text, how, xid_text);
}

ferry_code ferry_tx_run(PGconn *conn, const ferry_tx_opts *opts, ferry_tx_fn fn,
                        void *arg, ferry_tx_report *report, ferry_error *err)
{
    ferry_tx_report rep = {0};
    ferry_error local;
    ferry_error *e = err ? err : &local;
    ferry__err_clear(e);
    ferry_code rc;

    if (conn == NULL || fn == NULL) {
        rc = ferry__error_set(e, FERRY_EINVAL, conn ? "fn" : "conn",
                           "ferry_tx_run: %s is NULL", conn ? "fn" : "conn");
        goto out;
    }
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        rc = ferry__error_set(e, FERRY_ESTATE, NULL,
                           "ferry_tx_run: the connection is already in a transaction");
        goto out;
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
        rc = ferry__error_set(e, FERRY_ESTATE, NULL,
                           "ferry_tx_run: the connection is in pipeline mode");
        goto out;
    }
    tx_settings s = settings_from(opts);

    for (int attempt = 1;; attempt++) {
        ferry__err_clear(e);
        if (PQstatus(conn) != CONNECTION_OK) {
            PQreset(conn);
            if (PQstatus(conn) != CONNECTION_OK) {
                rc = ferry_error_from_pg(e, conn, NULL, "could not reconnect");
                goto retry_or_fail;
            }
        }

        PGresult *res = PQexec(conn, ferry__begin_sql(s.isolation, true));
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            rc = ferry_error_from_pg(e, conn, res, "could not begin transaction");
            PQclear(res);
            ferry__rollback_quietly(conn);
            goto retry_or_fail;
        }
        uint64_t xid = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        rep.last_xid = xid;
        rep.attempts++;

        rc = fn(conn, arg, e);
        bool piped = PQstatus(conn) == CONNECTION_OK &&
                     PQpipelineStatus(conn) != PQ_PIPELINE_OFF;
        if (piped && !leave_pipeline(conn)) {
            /* Nothing else can end the transaction now: a new session
             * rolls it back. */
            PQreset(conn);
            rc = ferry__error_set(e, FERRY_EUSER, NULL,
                               "the transaction function left the connection in pipeline "
                               "mode, which could not be left; the session was reset, "
                               "rolling its transaction back");
            goto out;
        }
        if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE) {
            bool retry_ok;
            rc = fn_ended_tx(conn, xid, rc, piped, e, &retry_ok);
            if (retry_ok)
                goto retry_or_fail;
            goto out;
        }
        if (piped) {
            rc = ferry__error_set(e, FERRY_EUSER, NULL,
                               "the transaction function returned with the connection in "
                               "pipeline mode (end it with PQpipelineSync, read the results, "
                               "then PQexitPipelineMode); its results were dropped and its "
                               "transaction rolled back");
            ferry__rollback_quietly(conn);
            goto out;
        }
        if (rc != FERRY_OK || PQtransactionStatus(conn) != PQTRANS_INTRANS) {
            if (rc == FERRY_OK) {
                /* fn swallowed an error: COMMIT would quietly roll back. */
                rc = PQstatus(conn) != CONNECTION_OK
                         ? ferry_error_from_pg(e, conn, NULL, "connection lost in transaction")
                         : ferry__error_set(e, FERRY_EUSER, NULL,
                                         "the transaction function returned success "
                                         "but left the transaction %s",
                                         PQtransactionStatus(conn) == PQTRANS_INERROR
                                             ? "aborted" : "with a command in progress");
            } else if (e->code == FERRY_OK) {
                /* fn failed without saying why: keep its code, give a reason. */
                ferry__error_set(e, rc, NULL, "the transaction function failed (%s)",
                              ferry_code_name(rc));
            }
            ferry__rollback_quietly(conn);
            goto retry_or_fail;
        }

        res = PQexec(conn, "COMMIT");
        if (PQresultStatus(res) == PGRES_COMMAND_OK &&
            strcmp(PQcmdStatus(res), "COMMIT") == 0) {
            PQclear(res);
            rc = FERRY_OK;
            goto out;
        }
        if (PQstatus(conn) == CONNECTION_OK) {
            /* The server answered: a deferred constraint or a serialization
             * failure at commit. The transaction is over either way. */
            rc = PQresultStatus(res) == PGRES_COMMAND_OK
                     ? ferry__error_set(e, FERRY_EDB, NULL, "COMMIT rolled back")
                     : ferry_error_from_pg(e, conn, res, "could not commit");
            PQclear(res);
            goto retry_or_fail;
        }
        PQclear(res);

        rep.commit_unknown++;
        switch (resolve_commit(conn, &s, xid, e)) {
        case FATE_COMMITTED:
            rep.resolved_committed++;
            ferry__err_clear(e);
            rc = FERRY_OK;
            goto out;
        case FATE_ABORTED:
            rep.resolved_aborted++;
            rc = ferry__error_set(e, FERRY_ECONN, NULL,
                               "the connection was lost during COMMIT and the "
                               "transaction was rolled back");
            e->retriable = 1;
            goto retry_or_fail;
        case FATE_UNKNOWN:
            e->xid = xid;
            rc = FERRY_ECOMMIT_UNKNOWN;
            goto out;
        }

    retry_or_fail:
        /* Only what ferry.h promises: conflicts, a lost connection, and an
         * emit statement the session lost. Other "retriable" errors (lock
         * timeouts, too many connections) are the caller's to judge. */
        if (attempt >= s.max_attempts)
            goto out;
        if (ferry__sqlstate_is_conflict(e->sqlstate) || strcmp(e->sqlstate, "26000") == 0)
            rep.retries_conflict++;
        else if (rc == FERRY_ECONN || PQstatus(conn) != CONNECTION_OK)
            rep.retries_connection++;
        else
            goto out;
        backoff(&s, attempt);
    }

out:
    if (report != NULL)
        *report = rep;
    return rc;
}
