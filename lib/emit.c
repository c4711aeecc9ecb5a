/*
 * emit.c — write messages into the outbox inside the caller's transaction.
 *
 * Both the C API and the SQL API go through ferry.emit_with_id(), the one
 * writer of ferry.outbox, so they cannot disagree on how a position is
 * assigned (see ferry.outbox_key in schemas/001_ferry.sql).
 *
 * The call is a prepared statement, prepared once per connection: parsing
 * and planning even a one-function SELECT costs more than the INSERT it
 * runs. Whether the caller's PGconn has it is kept in libpq's per-connection
 * instance data, which libpq's event system clears on PQreset() and frees
 * on PQfinish(), so the API stays a plain function of the caller's PGconn.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-events.h>

#include "internal.h"

#define EMIT_STMT "ferry_emit_with_id_v1"

static const char emit_sql[] =
    "SELECT ferry.emit_with_id($1::uuid, $2, $3, $4, $5, $6, $7, $8::bigint)";

enum { EMIT_NPARAMS = 8 };

/* The key and the payload go as binary text (raw bytes with a length), so
 * that a caller's buffer need not end in a NUL at key_len / payload_len;
 * the rest are NUL-terminated text parameters. */
#define TEXT_OID 25
static const Oid emit_types[EMIT_NPARAMS] = {0, TEXT_OID, TEXT_OID, TEXT_OID,
                                             TEXT_OID, TEXT_OID, TEXT_OID, 0};
static const int emit_formats[EMIT_NPARAMS] = {0, 0, 1, 0, 1, 0, 0, 0};

/* ---------------------------------------------------------------- per connection */

typedef struct conn_state {
    int prepared;       /* EMIT_STMT exists in this session */
} conn_state;

static int conn_event(PGEventId id, void *info, void *pass_through)
{
    switch (id) {
    case PGEVT_CONNRESET: {
        /* A new session: its prepared statements are gone. */
        conn_state *st = PQinstanceData(((PGEventConnReset *)info)->conn, conn_event);
        if (st != NULL)
            st->prepared = 0;
        break;
    }
    case PGEVT_CONNDESTROY:
        free(PQinstanceData(((PGEventConnDestroy *)info)->conn, conn_event));
        break;
    default:
        break;
    }
    return 1;
}

static conn_state *conn_state_of(PGconn *conn)
{
    conn_state *st = PQinstanceData(conn, conn_event);
    if (st != NULL)
        return st;
    st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    /* Registering fails when a failed earlier attempt left the procedure
     * registered without data; setting the data then still works. */
    PQregisterEventProc(conn, conn_event, "ferry", NULL);
    if (!PQsetInstanceData(conn, conn_event, st)) {
        free(st);
        return NULL;
    }
    return st;
}

/* The server's refusal of the emit statement into err, as
 * ferry_error_from_pg() maps it, except that a schema ferry lacks
 * (3F000, invalid_schema_name) or a ferry.emit_with_id it lacks (42883,
 * undefined_function) is FERRY_ESCHEMA, as ferry.h documents: the
 * database was never migrated, or is older than this library. The
 * server's SQLSTATE stays in err->sqlstate. */
static ferry_code emit_error(ferry_error *err, PGconn *conn, const PGresult *res,
                             const char *context)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL || (strcmp(state, "3F000") != 0 && strcmp(state, "42883") != 0))
        return ferry_error_from_pg(err, conn, res, context);
    char schema_context[160];
    snprintf(schema_context, sizeof schema_context,
             "%s: the ferry schema is missing or older than this library "
             "(run ferry-relay migrate)", context);
    ferry_error_from_pg(err, conn, res, schema_context);
    if (err != NULL)
        err->code = FERRY_ESCHEMA;
    return FERRY_ESCHEMA;
}

/* Make sure EMIT_STMT exists on conn. A failure here aborts the caller's
 * transaction, as any failed statement does (the schema is missing, say). */
static ferry_code ensure_prepared(PGconn *conn, ferry_error *err)
{
    conn_state *st = conn_state_of(conn);
    if (st == NULL)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not emit: out of memory");
    if (st->prepared)
        return FERRY_OK;
    /* The session may have the statement already: another client's,
     * through a transaction-pooling proxy (PgBouncer gives each
     * transaction a server session that earlier clients prepared in), or
     * ours from before a reset. Asked first, so that PREPARE never fails
     * with 42P05 (already exists), which would abort the caller's
     * transaction for nothing: the same text is used as it is; another
     * text under our name is deallocated first (it exists, so that cannot
     * fail). */
    const char *q[2] = {EMIT_STMT, emit_sql};
    PGresult *res = PQexecParams(conn,
                                 "SELECT statement = $2 FROM pg_catalog.pg_prepared_statements "
                                 "WHERE name = $1", 2, NULL, q, NULL, NULL, 0);
    ferry_code rc = FERRY_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = ferry_error_from_pg(err, conn, res, "could not prepare emit");
        PQclear(res);
        return rc;
    }
    int exists = PQntuples(res) == 1, same = exists && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (same) {
        st->prepared = 1;
        return FERRY_OK;
    }
    if (exists) {
        res = PQexec(conn, "DEALLOCATE " EMIT_STMT);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            rc = ferry_error_from_pg(err, conn, res, "could not prepare emit");
        PQclear(res);
        if (rc != FERRY_OK)
            return rc;
    }
    res = PQprepare(conn, EMIT_STMT, emit_sql, EMIT_NPARAMS, emit_types);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = emit_error(err, conn, res, "could not prepare emit");
    else
        st->prepared = 1;
    PQclear(res);
    return rc;
}

/* The statement was deallocated behind our back (DISCARD ALL, DEALLOCATE,
 * a transaction-pooling proxy): forget it, and say the transaction may be
 * retried, which will prepare it again. From the result, not from err,
 * which the caller may not have given. */
static void note_result_error(PGconn *conn, const PGresult *res, ferry_error *err)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL || strcmp(state, "26000") != 0)
        return;
    conn_state *st = PQinstanceData(conn, conn_event);
    if (st != NULL)
        st->prepared = 0;
    if (err != NULL)
        err->retriable = 1;
}

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
    ferry__err_clear(err);
    ferry_code rc = ferry_msg_check(msg, opts, err);
    if (rc != FERRY_OK)
        return rc;
    if ((rc = ferry__conn_check_in_tx(conn, "could not emit", err)) != FERRY_OK)
        return rc;

    ferry_uuid id;
    if (ferry_uuid_v7(&id) != FERRY_OK)
        return ferry__error_set(err, FERRY_EDB, NULL, "could not emit: no random bytes");
    emit_params p;
    params_fill(&p, msg, &id);

    if ((rc = ensure_prepared(conn, err)) != FERRY_OK)
        return rc;
    PGresult *res = PQexecPrepared(conn, EMIT_STMT, EMIT_NPARAMS, p.values, p.lengths,
                                   emit_formats, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char context[128];
        snprintf(context, sizeof context, "could not emit message %s", p.id);
        rc = emit_error(err, conn, res, context);
        note_result_error(conn, res, err);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    if (id_out != NULL)
        *id_out = id;
    return FERRY_OK;
}

/* The order a batch is sent in: by (topic, key), and within a key by
 * array index. Same-key messages keep their order, so positions are as if
 * sent in array order; and every batch takes its key locks in the same
 * global order, so two batches never deadlock on each other. */
typedef struct batch_slot {
    const ferry_msg *msg;
    size_t key_len;
    size_t index;
} batch_slot;

static int slot_cmp(const void *a, const void *b)
{
    const batch_slot *x = a, *y = b;
    int c = strcmp(x->msg->topic, y->msg->topic);
    if (c != 0)
        return c;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    c = memcmp(x->msg->key, y->msg->key, n);
    if (c != 0)
        return c;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Read what the pipeline sent back: one result and a NULL per message,
 * then the sync. Keeps the first error (err->index is the array index);
 * drains the rest so that the connection leaves pipeline mode clean. */
static ferry_code batch_collect(PGconn *conn, const batch_slot *slots, size_t n,
                                ferry_error *err)
{
    ferry_code rc = FERRY_OK;
    for (size_t i = 0; i < n; i++) {
        PGresult *res = PQgetResult(conn);
        if (res == NULL) {
            /* Only a broken connection ends the stream early. */
            if (rc == FERRY_OK) {
                rc = ferry_error_from_pg(err, conn, NULL, "could not emit batch");
                if (err != NULL)
                    err->index = (long)slots[i].index;
            }
            return rc;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_TUPLES_OK && rc == FERRY_OK) {
            char context[64];
            snprintf(context, sizeof context, "could not emit message %zu of the batch",
                     slots[i].index);
            if (err != NULL)
                err->index = (long)slots[i].index;
            rc = emit_error(err, conn, st == PGRES_PIPELINE_ABORTED ? NULL : res, context);
            note_result_error(conn, res, err);
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
    ferry__err_clear(err);
    if (msgs == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "msgs", "the message array is NULL");
    if (n == 0 || n > FERRY_BATCH_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "n",
                             "a batch holds 1 to %d messages, not %zu", FERRY_BATCH_MAX, n);
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
    ferry_code rc = ferry__conn_check_in_tx(conn, "could not emit batch", err);
    if (rc != FERRY_OK || (rc = ensure_prepared(conn, err)) != FERRY_OK)
        return rc;

    /* Ids are made in array order, so a batch's ids sort in that order
     * too; they reach ids_out only once the whole batch is in. */
    ferry_uuid *ids = malloc(n * sizeof *ids);
    batch_slot *slots = malloc(n * sizeof *slots);
    if (ids == NULL || slots == NULL) {
        free(ids);
        free(slots);
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not emit batch: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (ferry_uuid_v7(&ids[i]) != FERRY_OK) {
            free(ids);
            free(slots);
            return ferry__error_set(err, FERRY_EDB, NULL, "could not emit: no random bytes");
        }
        slots[i] = (batch_slot){&msgs[i], msgs[i].key_len ? msgs[i].key_len
                                                          : strlen(msgs[i].key), i};
    }
    qsort(slots, n, sizeof *slots, slot_cmp);

    if (!PQenterPipelineMode(conn)) {
        free(ids);
        free(slots);
        return ferry_error_from_pg(err, conn, NULL, "could not enter pipeline mode");
    }
    size_t sent = 0;
    for (; sent < n; sent++) {
        emit_params p;
        params_fill(&p, slots[sent].msg, &ids[slots[sent].index]);
        if (!PQsendQueryPrepared(conn, EMIT_STMT, EMIT_NPARAMS, p.values, p.lengths,
                                 emit_formats, 0)) {
            rc = ferry_error_from_pg(err, conn, NULL, "could not send batch");
            if (err != NULL)
                err->index = (long)slots[sent].index;
            break;
        }
    }
    if (PQpipelineSync(conn)) {
        ferry_code collected = batch_collect(conn, slots, sent, err);
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
    free(slots);
    return rc;
}
