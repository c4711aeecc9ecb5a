/*
 * exec.c — statements on a caller's connection: one run with its failure
 * turned into a ferry_error, a pipeline's sync and the reading of its
 * results (consume.c and participant.c), and the check that a connection
 * holds an open, healthy transaction before the library writes in it.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

ferry_code ferry__query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       const char *context, PGresult **out, ferry_error *err)
{
    PGresult *res = nparams > 0
        ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0)
        : PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, context);
        PQclear(res);
        return rc;
    }
    *out = res;
    return FERRY_OK;
}

ferry_code ferry__exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                      const char *context, ferry_error *err)
{
    PGresult *res;
    ferry_code rc = ferry__query(conn, sql, nparams, params, context, &res, err);
    if (rc == FERRY_OK)
        PQclear(res);
    return rc;
}

bool ferry__pipeline_sync(PGconn *conn, ferry_code *rc, const char *context, ferry_error *err)
{
    if (PQpipelineSync(conn))
        return true;
    /* The connection is gone: nothing will come back. */
    if (*rc == FERRY_OK)
        *rc = ferry_error_from_pg(err, conn, NULL, context);
    PQexitPipelineMode(conn);
    return false;
}

ferry_code ferry__pipeline_read(PGconn *conn, int sent, ferry_code rc,
                               ferry__pipe_result_fn on_result, void *ctx, const char *ended,
                               ferry_error *err)
{
    /* Each query sent: its result, then a NULL; then the sync. */
    for (int q = 0; q < sent; q++) {
        PGresult *res = PQgetResult(conn);
        if (res == NULL) {
            if (rc == FERRY_OK)
                rc = ferry_error_from_pg(err, conn, NULL, ended);
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        bool keep = false;
        if (rc == FERRY_OK)
            rc = on_result(ctx, q, res, &keep, err);
        if (!keep)
            PQclear(res);
        /* A sync is never followed by a NULL: the next PQgetResult then
         * answers NULL, and results ended early. */
        if (st != PGRES_PIPELINE_SYNC)
            PQclear(PQgetResult(conn));     /* the NULL after the query's result */
    }
    /* Up to the sync (read above if results ended early: then NULL). */
    PGresult *sync;
    while ((sync = PQgetResult(conn)) != NULL) {
        bool done = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
        PQclear(sync);
        if (done)
            break;
    }
    PQexitPipelineMode(conn);
    if (rc == FERRY_OK && PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        rc = ferry__error_set(err, FERRY_ECONN, NULL, "the connection is stuck in pipeline mode");
    return rc;
}

ferry_code ferry__conn_check_in_tx(PGconn *conn, const char *what, ferry_error *err)
{
    if (conn == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "conn", "%s: connection is NULL", what);
    if (PQstatus(conn) != CONNECTION_OK) {
        ferry__error_set(err, FERRY_ECONN, NULL, "%s: connection is not open", what);
        if (err != NULL)
            err->retriable = 1;
        return FERRY_ECONN;
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "%s: connection is in pipeline mode", what);
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        /* Every call that writes in the caller's transaction sends text. */
        return ferry__conn_check_utf8(conn, what, err);
    case PQTRANS_IDLE:
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "%s: no transaction is open on this connection "
                             "(BEGIN first, so that the message commits with "
                             "the update it belongs to)", what);
    case PQTRANS_INERROR:
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "%s: the transaction is aborted by an earlier error; "
                             "roll it back", what);
    case PQTRANS_ACTIVE:
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "%s: a command is still in progress on this connection",
                             what);
    case PQTRANS_UNKNOWN:
        break;
    }
    ferry__error_set(err, FERRY_ECONN, NULL, "%s: connection state is unknown", what);
    if (err != NULL)
        err->retriable = 1;
    return FERRY_ECONN;
}

ferry_code ferry__conn_check_utf8(PGconn *conn, const char *what, ferry_error *err)
{
    const char *enc = pg_encoding_to_char(PQclientEncoding(conn));
    if (strcmp(enc, "UTF8") == 0 || strcmp(enc, "SQL_ASCII") == 0)
        return FERRY_OK;
    /* Refused rather than changed: SET client_encoding is the caller's
     * session setting, and its other statements are read under it. */
    return ferry__error_set(err, FERRY_ESTATE, "conn",
                         "%s: the connection's client_encoding is %s, but ferry sends UTF-8 "
                         "text; use UTF8 on this connection (client_encoding=UTF8 in its "
                         "conninfo, or PQsetClientEncoding)", what,
                         enc[0] != '\0' ? enc : "unknown");
}

/* A connection of ferry's own (a consumer's, a relay's, the reconciler's)
 * to conninfo, always in UTF-8: keys and payloads are UTF-8 text, and a
 * client_encoding from the environment (PGCLIENTENCODING) or the
 * conninfo would have the server convert them on the way in and out. */
PGconn *ferry__connect_utf8(const char *conninfo)
{
    const char *const keys[] = {"dbname", "client_encoding", NULL};
    const char *const values[] = {conninfo, "UTF8", NULL};
    return PQconnectdbParams(keys, values, 1);
}
