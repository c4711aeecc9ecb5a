/*
 * rc_tx.c — the kit a sweep acts with: statements that report their own
 * failure, fenced repair transactions (rc_begin: the reconciler's lease
 * renewed when due and re-checked under its epoch in the transaction that
 * acts), and the columns of a result.
 *
 * It depends on the report (rc_error) and on the lease (rc_lease.c),
 * never on pass.c: the pass hands both in through the context.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "rc_lease.h"
#include "reconcile.h"

/* A library call (ferry_tx_run) may have reset the connection after a
 * loss: the new session gets the statement timeout again. 0, or -1 when
 * it could not (tried again at the next call): a query outside a
 * transaction must not run without its bound. */
static int session_keep(rc_ctx *ctx)
{
    int pid = PQbackendPID(ctx->conn);
    if (pid == 0 || pid == ctx->backend_pid)
        return 0;
    if (ctx->backend_pid != 0 && PQtransactionStatus(ctx->conn) == PQTRANS_IDLE) {
        char sql[64];
        snprintf(sql, sizeof sql, "SET statement_timeout = %" PRId64,
                 ctx->budgets->statement_timeout_ms);
        PGresult *res = PQexec(ctx->conn, sql);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok)
            return -1;
    }
    ctx->backend_pid = pid;
    return 0;
}

PGresult *rc_query(rc_ctx *ctx, const char *what, const char *sql, int nparams,
                   const char *const *params)
{
    if (session_keep(ctx) != 0) {
        rc_error(ctx, "%s: could not set the statement timeout of a new session", what);
        return NULL;
    }
    PGresult *res = PQexecParams(ctx->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (msg == NULL)
        msg = PQerrorMessage(ctx->conn);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    rc_error(ctx, "%s: %.*s%s%s%s", what, (int)len, msg, state ? " (SQLSTATE " : "",
             state ? state : "", state ? ")" : "");
    PQclear(res);
    return NULL;
}

ferry_code rc_begin(rc_ctx *ctx, ferry_error *err)
{
    ferry__err_clear(err);
    /* the transaction sets its own timeouts below, failing or not */
    (void)session_keep(ctx);
    if (ctx->mode == RC_REPAIR && ctx->lease != NULL) {
        ferry_code rc = rc_lease_keep(ctx->conn, ctx->lease, err);
        if (rc == FERRY_ESTATE)
            ctx->lease_lost = 1;
        if (rc != FERRY_OK)
            return rc;
    }
    char sql[160];
    snprintf(sql, sizeof sql,
             "BEGIN%s; SET LOCAL statement_timeout = %" PRId64 "; SET LOCAL lock_timeout = 1000",
             ctx->mode == RC_CHECK ? " READ ONLY" : "", ctx->budgets->statement_timeout_ms);
    PGresult *res = PQexec(ctx->conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ferry_code rc = ferry_error_from_pg(err, ctx->conn, res, "could not begin");
        PQclear(res);
        rc_rollback(ctx);
        return rc;
    }
    PQclear(res);
    if (ctx->mode != RC_REPAIR || ctx->lease == NULL)
        return FERRY_OK;
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%" PRId64, ctx->lease->epoch);
    const char *p[3] = {RC_LEASE_NAME, ctx->lease->holder, epoch};
    res = PQexecParams(ctx->conn,
                       "SELECT 1 FROM ferry.lease WHERE name = $1 AND holder = $2 "
                       "AND epoch = $3::bigint AND expires_at > now() FOR SHARE",
                       3, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, ctx->conn, res, "could not check the lease");
        PQclear(res);
        rc_rollback(ctx);
        return rc;
    }
    int held = PQntuples(res) == 1;
    PQclear(res);
    if (!held) {
        ctx->lease_lost = 1;
        rc_rollback(ctx);
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "the reconciler's lease was lost (epoch %" PRId64 "): another "
                             "reconciler acts now", ctx->lease->epoch);
    }
    return FERRY_OK;
}

ferry_code rc_commit(rc_ctx *ctx, ferry_error *err)
{
    ferry__err_clear(err);
    PGresult *res = PQexec(ctx->conn, "COMMIT");
    ferry_code rc = FERRY_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ferry_error_from_pg(err, ctx->conn, res, "could not commit");
    else if (strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
        rc = ferry__error_set(err, FERRY_ESTATE, NULL, "could not commit: the transaction had "
                           "failed and was rolled back");
    PQclear(res);
    return rc;
}

void rc_rollback(rc_ctx *ctx)
{
    if (PQtransactionStatus(ctx->conn) == PQTRANS_IDLE)
        return;
    PQclear(PQexec(ctx->conn, "ROLLBACK"));
}

bool rc_is_busy(const PGresult *res)
{
    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return s != NULL && (strcmp(s, "55P03") == 0 || strcmp(s, "40P01") == 0 ||
                         strcmp(s, "40001") == 0);
}

int rc_result_error(rc_ctx *ctx, const char *what, const PGresult *res)
{
    const char *m = PQresultErrorMessage(res);
    size_t len = strlen(m);
    while (len > 0 && (m[len - 1] == '\n' || m[len - 1] == ' '))
        len--;
    return rc_error(ctx, "%s: %.*s", what, (int)len, m);
}

PGresult *rc_act(rc_ctx *ctx, const char *what, const char *sql, int n,
                 const char *const *params, int *busy)
{
    PGresult *res = PQexecParams(ctx->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    if (busy != NULL && rc_is_busy(res))
        *busy = 1;
    else
        rc_result_error(ctx, what, res);
    PQclear(res);
    rc_rollback(ctx);
    return NULL;
}

int rc_act_begin(rc_ctx *ctx, const char *what, int *lost)
{
    ferry_error err;
    ferry_code rc = rc_begin(ctx, &err);
    if (rc == FERRY_OK)
        return 0;
    rc_rollback(ctx);
    if (rc == FERRY_ESTATE) {
        *lost = 1;
        return rc_error(ctx, "stopped before %s: %s", what, err.message);
    }
    return rc_error(ctx, "could not begin %s: %s", what, err.message);
}

int rc_act_commit(rc_ctx *ctx, const char *what)
{
    ferry_error err;
    if (rc_commit(ctx, &err) == FERRY_OK)
        return 0;
    rc_rollback(ctx);
    return rc_error(ctx, "could not commit %s: %s", what, err.message);
}

/* ------------------------------------------------------------ rows */

int64_t rc_int_at(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

bool rc_bool_at(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

const char *rc_str_at(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

json_t *rc_json_at(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return json_loads(PQgetvalue(res, row, col), JSON_DECODE_ANY, NULL);
}
