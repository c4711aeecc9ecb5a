/*
 * emit.c — write messages into the outbox inside the caller's transaction.
 *
 * Both paths call ferry.emit_with_id(), the one writer of ferry.outbox, so
 * the C API and the SQL API cannot disagree on how a position is assigned
 * (see ferry.outbox_key in schemas/001_ferry.sql). The statement is a bare
 * function call: PostgreSQL's PL/pgSQL caches the plans of the statements
 * inside it per session, so there is nothing worth preparing on the
 * client, and the API can stay stateless over the caller's PGconn.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char emit_sql[] =
    "SELECT ferry.emit_with_id($1::uuid, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8::bigint)";

enum { EMIT_NPARAMS = 8 };

/* The key and the payload go as binary text (raw bytes with a length), so
 * that a caller's buffer need not end in a NUL at key_len / payload_len;
 * the rest are NUL-terminated text parameters. */
#define TEXT_OID 25
static const Oid emit_types[EMIT_NPARAMS] = {0, 0, TEXT_OID, 0, TEXT_OID, 0, 0, 0};
static const int emit_formats[EMIT_NPARAMS] = {0, 0, 1, 0, 1, 0, 0, 0};

/* Parameters of one message; the buffers live in the struct so that a
 * batch needs no allocation per message. */
typedef struct emit_params {
    char id[FERRY_UUID_STRING_SIZE];
    char delay[24];
    const char *values[EMIT_NPARAMS];
    int lengths[EMIT_NPARAMS];
} emit_params;

static void params_fill(emit_params *p, const ferry_msg *m, const ferry_uuid *id)
{
    ferry_uuid_format(id, p->id);
    snprintf(p->delay, sizeof p->delay, "%" PRId64, m->delay_ms);
    p->values[0] = p->id;
    p->values[1] = m->topic;
    p->values[2] = m->key;
    p->values[3] = m->type;
    p->values[4] = m->payload;
    p->values[5] = m->headers ? m->headers : "{}";
    p->values[6] = m->aggregate_type ? m->aggregate_type : "";
    p->values[7] = p->delay;
    for (int i = 0; i < EMIT_NPARAMS; i++)
        p->lengths[i] = 0;
    /* ferry_msg_check() bounded both lengths far below INT_MAX. */
    p->lengths[2] = (int)(m->key_len ? m->key_len : strlen(m->key));
    p->lengths[4] = (int)(m->payload_len ? m->payload_len : strlen(m->payload));
}

ferry_code ferry_emit(PGconn *conn, const ferry_msg *msg, const ferry_emit_opts *opts,
                      ferry_uuid *id_out, ferry_error *err)
{
    ferry_err_clear(err);
    ferry_code rc = ferry_msg_check(msg, opts, err);
    if (rc != FERRY_OK)
        return rc;
    if ((rc = ferry_conn_check_in_tx(conn, "could not emit", err)) != FERRY_OK)
        return rc;

    ferry_uuid id;
    if (ferry_uuid_v7(&id) != FERRY_OK)
        return ferry_err_set(err, FERRY_EDB, NULL, "could not emit: no random bytes");
    emit_params p;
    params_fill(&p, msg, &id);

    PGresult *res = PQexecParams(conn, emit_sql, EMIT_NPARAMS, emit_types, p.values,
                                 p.lengths, emit_formats, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char context[128];
        snprintf(context, sizeof context, "could not emit message %s", p.id);
        rc = ferry_error_from_pg(err, conn, res, context);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    if (id_out != NULL)
        *id_out = id;
    return FERRY_OK;
}

/* Read what the pipeline sent back: one result and a NULL per message,
 * then the sync. Keeps the first error; drains the rest so that the
 * connection leaves pipeline mode clean. */
static ferry_code batch_collect(PGconn *conn, size_t n, ferry_error *err)
{
    ferry_code rc = FERRY_OK;
    for (size_t i = 0; i < n; i++) {
        PGresult *res = PQgetResult(conn);
        if (res == NULL) {
            /* Only a broken connection ends the stream early. */
            if (rc == FERRY_OK) {
                rc = ferry_error_from_pg(err, conn, NULL, "could not emit batch");
                if (err != NULL)
                    err->index = (long)i;
            }
            return rc;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_TUPLES_OK && rc == FERRY_OK) {
            char context[64];
            snprintf(context, sizeof context, "could not emit message %zu of the batch", i);
            if (err != NULL)
                err->index = (long)i;
            rc = ferry_error_from_pg(err, conn, st == PGRES_PIPELINE_ABORTED ? NULL : res,
                                     context);
        }
        PQclear(res);
        res = PQgetResult(conn);     /* the NULL that ends this query */
        PQclear(res);
    }
    PGresult *sync = PQgetResult(conn);
    if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC && rc == FERRY_OK)
        rc = ferry_error_from_pg(err, conn, sync, "could not emit batch");
    PQclear(sync);
    return rc;
}

ferry_code ferry_emit_batch(PGconn *conn, const ferry_msg *msgs, size_t n,
                            const ferry_emit_opts *opts, ferry_uuid *ids_out,
                            ferry_error *err)
{
    ferry_err_clear(err);
    if (msgs == NULL || n == 0 || n > FERRY_BATCH_MAX)
        return ferry_err_set(err, FERRY_EINVAL, "n",
                             "a batch holds 1 to %d messages, not %zu", FERRY_BATCH_MAX,
                             msgs == NULL ? 0 : n);
    for (size_t i = 0; i < n; i++) {
        ferry_code rc = ferry_msg_check(&msgs[i], opts, err);
        if (rc != FERRY_OK) {
            if (err != NULL) {
                err->index = (long)i;
                char inner[FERRY_ERROR_MESSAGE_SIZE];
                memcpy(inner, err->message, sizeof inner);
                snprintf(err->message, sizeof err->message, "message %zu of the batch: %s",
                         i, inner);
            }
            return rc;
        }
    }
    ferry_code rc = ferry_conn_check_in_tx(conn, "could not emit batch", err);
    if (rc != FERRY_OK)
        return rc;

    if (!PQenterPipelineMode(conn))
        return ferry_error_from_pg(err, conn, NULL, "could not enter pipeline mode");

    /* Ids are made in array order, so a batch's ids sort in that order
     * too; they reach ids_out only once the whole batch is in. */
    ferry_uuid *ids = malloc(n * sizeof *ids);
    if (ids == NULL) {
        PQexitPipelineMode(conn);
        return ferry_err_set(err, FERRY_ENOMEM, NULL, "could not emit batch: out of memory");
    }
    size_t sent = 0;
    for (; sent < n; sent++) {
        if (ferry_uuid_v7(&ids[sent]) != FERRY_OK) {
            rc = ferry_err_set(err, FERRY_EDB, NULL, "could not emit: no random bytes");
            break;
        }
        emit_params p;
        params_fill(&p, &msgs[sent], &ids[sent]);
        if (!PQsendQueryParams(conn, emit_sql, EMIT_NPARAMS, emit_types, p.values,
                               p.lengths, emit_formats, 0)) {
            rc = ferry_error_from_pg(err, conn, NULL, "could not send batch");
            if (err != NULL)
                err->index = (long)sent;
            break;
        }
    }
    if (PQpipelineSync(conn)) {
        ferry_code collected = batch_collect(conn, sent, err);
        if (rc == FERRY_OK)
            rc = collected;
    } else if (rc == FERRY_OK) {
        rc = ferry_error_from_pg(err, conn, NULL, "could not send batch");
    }
    if (!PQexitPipelineMode(conn) && rc == FERRY_OK)
        rc = ferry_error_from_pg(err, conn, NULL, "could not leave pipeline mode");
    if (rc == FERRY_OK && ids_out != NULL)
        memcpy(ids_out, ids, n * sizeof *ids);
    free(ids);
    return rc;
}
