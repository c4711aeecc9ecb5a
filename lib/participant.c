/*
 * participant.c — the participant's side of a saga: apply each command at
 * most once per idempotency key, and answer through the outbox.
 *
 * The rule (the one tests/test_saga_sim.c simulates):
 *   - the outcome of every key processed is recorded, refusals included,
 *     and a key seen again is answered with that outcome, never re-run;
 *   - a compensation of a step whose action never ran is a recorded no-op
 *     (a tombstone): the orchestrator sends it when the action's reply was
 *     lost, and the action may still be on its way;
 *   - an action that arrives after its step's compensation is refused, so
 *     that a late action can never stay applied with nobody to undo it.
 * All of it, the callback's effect and the reply, happens in the consumer's
 * transaction: under the step's row lock (ferry.participant_begin), so that
 * an action and a compensation of one step never interleave.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PARTICIPANT_NAME_MAX 200

static const char *const outcome_names[] = {
    [FERRY_PARTICIPANT_APPLIED] = "applied",
    [FERRY_PARTICIPANT_REFUSED] = "refused",
    [FERRY_PARTICIPANT_TOMBSTONE] = "tombstone",
    [FERRY_PARTICIPANT_TOO_LATE] = "too_late",
};

static int outcome_of(const char *name)
{
    for (int i = 0; i < (int)(sizeof outcome_names / sizeof outcome_names[0]); i++)
        if (strcmp(outcome_names[i], name) == 0)
            return i;
    return -1;
}

/* A header that must be there, as a non-negative integer below limit. */
static int header_u32(const ferry_message *msg, const char *name, uint64_t limit, uint32_t *out)
{
    const char *v = ferry_message_header(msg, name);
    if (v == NULL || *v < '0' || *v > '9')
        return -1;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end != '\0' || n >= limit)
        return -1;
    *out = (uint32_t)n;
    return 0;
}

/*
 * A few statements in one round trip (libpq's pipeline mode), stopping at
 * the first that fails: the participant's look-up and its savepoint go
 * together, and so do the release and the answer. On a busy machine every
 * round trip is a wake-up of the backend and of this thread, and the
 * statements do not depend on each other's results. *keep (may be NULL)
 * gets the result of statement keep_index when all went well.
 */
typedef struct pipe_stmt {
    const char *sql;
    int nparams;
    const char *const *params;
} pipe_stmt;

typedef struct pipe_read_ctx {
    PGconn *conn;
    int keep_index;
    PGresult **keep;
    const char *context;
} pipe_read_ctx;

/* Each statement must succeed; the one at keep_index is kept. */
static ferry_code pipe_result(void *ctx, int q, PGresult *res, bool *keep, ferry_error *err)
{
    const pipe_read_ctx *pr = ctx;
    ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
        return ferry_error_from_pg(err, pr->conn, res, pr->context);
    if (q == pr->keep_index && pr->keep != NULL) {
        *pr->keep = res;
        *keep = true;
    }
    return FERRY_OK;
}

static ferry_code pipe_exec(PGconn *conn, const pipe_stmt *st, int n, int keep_index,
                            PGresult **keep, const char *context, ferry_error *err)
{
    if (keep != NULL)
        *keep = NULL;
    /* Not inside a caller's pipeline: leaving ours would end theirs. */
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return ferry__error_set(err, FERRY_ESTATE, NULL, "%s: the connection is in pipeline mode",
                             context);
    if (!PQenterPipelineMode(conn))
        return ferry_error_from_pg(err, conn, NULL, context);
    ferry_code rc = FERRY_OK;
    int sent = 0;
    for (; sent < n; sent++)
        if (!PQsendQueryParams(conn, st[sent].sql, st[sent].nparams, NULL, st[sent].params,
                               NULL, NULL, 0))
            break;
    if (sent < n)
        rc = ferry_error_from_pg(err, conn, NULL, context);
    if (!ferry__pipeline_sync(conn, &rc, context, err))
        return rc;
    /* A statement after a failed one comes back PGRES_PIPELINE_ABORTED. */
    pipe_read_ctx pr = {conn, keep_index, keep, context};
    rc = ferry__pipeline_read(conn, sent, rc, pipe_result, &pr, context, err);
    if (rc != FERRY_OK && keep != NULL && *keep != NULL) {
        PQclear(*keep);
        *keep = NULL;
    }
    return rc;
}

/* The reply's payload and headers, as JSON text (free both); -1 when
 * memory is short. */
static int reply_text(const ferry_participant *p, const char *saga_id, const char *kind,
                      uint32_t step, uint32_t round, uint32_t attempt, int outcome,
                      const char *reason, char **ptext, char **htext)
{
    int ok = outcome == FERRY_PARTICIPANT_APPLIED || outcome == FERRY_PARTICIPANT_TOMBSTONE;
    json_t *payload = json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:s, s:s, s:s*}", "saga_id",
                                saga_id, "step", (json_int_t)step, "kind", kind, "round",
                                (json_int_t)round, "attempt", (json_int_t)attempt, "succeeded",
                                ok, "outcome", outcome_names[outcome], "participant", p->name,
                                "reason", reason);
    json_t *headers = json_pack("{s:s, s:s, s:s}", "saga_id", saga_id, "saga_kind", kind,
                                "saga_outcome", outcome_names[outcome]);
    *ptext = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    *htext = headers ? json_dumps(headers, JSON_COMPACT) : NULL;
    json_decref(payload);
    json_decref(headers);
    if (*ptext == NULL || *htext == NULL) {
        free(*ptext);
        free(*htext);
        *ptext = *htext = NULL;
        return -1;
    }
    return 0;
}

/* Run cb under the savepoint ferry_participant_handle took. FERRY_OK:
 * applied, or a business refusal (FERRY_EINVAL, not retriable: *refused
 * set, reason copied; the caller rolls back to the savepoint). Anything
 * else comes back as it is. */
static ferry_code run_callback(PGconn *conn, const ferry_message *msg, ferry_participant_fn cb,
                               void *arg, int *refused, char *reason, size_t reason_size,
                               ferry_error *err)
{
    *refused = 0;
    ferry_error cerr;
    memset(&cerr, 0, sizeof cerr);
    ferry_code rc = cb(conn, msg, arg, &cerr);
    if (rc == FERRY_OK)
        return FERRY_OK;
    if (rc == FERRY_EINVAL && !cerr.retriable) {
        *refused = 1;
        snprintf(reason, reason_size, "%s", cerr.message[0] ? cerr.message : "refused");
        return FERRY_OK;
    }
    if (err != NULL)
        *err = cerr;
    if (err != NULL && err->code == FERRY_OK)
        err->code = rc;
    return rc;
}

ferry_code ferry_participant_handle(PGconn *conn, const ferry_message *msg,
                                    const ferry_participant *p,
                                    ferry_participant_outcome *outcome_out, ferry_error *err)
{
    ferry__err_clear(err);
    if (p == NULL || p->name == NULL || p->name[0] == '\0'
        || strlen(p->name) > PARTICIPANT_NAME_MAX || p->action == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "participant",
                             "saga participant: a name (1..%d bytes) and an action are required",
                             PARTICIPANT_NAME_MAX);
    if (msg == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "msg", "saga participant: msg is NULL");
    /* In the consumer's transaction, as ferry_emit would insist at the
     * reply: checked first, before the callback could run outside one. */
    ferry_code rc = ferry__conn_check_in_tx(conn, "could not apply a saga command", err);
    if (rc != FERRY_OK)
        return rc;
    const char *saga_id = ferry_message_header(msg, "saga_id");
    const char *kind = ferry_message_header(msg, "saga_kind");
    const char *reply_to = ferry_message_header(msg, "saga_reply_to");
    uint32_t step, round, attempt;
    ferry_uuid uid;
    if (saga_id == NULL || ferry_uuid_parse(saga_id, &uid) != FERRY_OK || kind == NULL
        || (strcmp(kind, "action") != 0 && strcmp(kind, "compensation") != 0)
        || reply_to == NULL || header_u32(msg, "saga_step", FERRY_SAGA_STEPS_MAX, &step)
        || header_u32(msg, "saga_round", UINT32_MAX, &round)
        || header_u32(msg, "saga_attempt", UINT32_MAX, &attempt))
        return ferry__error_set(err, FERRY_EINVAL, "headers",
                             "message %s is not a saga command: it lacks saga_id, saga_kind, "
                             "saga_step, saga_round, saga_attempt or saga_reply_to",
                             msg->id ? msg->id : "?");
    int is_action = strcmp(kind, "action") == 0;
    char sstep[16], sround[16];
    snprintf(sstep, sizeof sstep, "%" PRIu32, step);
    snprintf(sround, sizeof sround, "%" PRIu32, round);

    /* The look-up (which takes the step's lock) and the savepoint a
     * callback runs under, in one round trip; the savepoint is released
     * unused when no callback runs. */
    const char *bp[5] = {p->name, saga_id, sstep, kind, sround};
    const pipe_stmt begin[2] = {
        {"SELECT * FROM ferry.participant_begin($1, $2, $3, $4, $5)", 5, bp},
        {"SAVEPOINT ferry_participant", 0, NULL},
    };
    PGresult *res;
    rc = pipe_exec(conn, begin, 2, 0, &res, "could not look up a saga command", err);
    if (rc != FERRY_OK)
        return rc;
    if (PQntuples(res) != 1 || PQnfields(res) < 4) {
        PQclear(res);
        return ferry__error_set(err, FERRY_ESCHEMA, NULL, "ferry.participant_begin gave an "
                             "answer this library does not know");
    }
    int seen = !PQgetisnull(res, 0, 0);
    int outcome = seen ? outcome_of(PQgetvalue(res, 0, 0)) : -1;
    char reason[FERRY_ERROR_MESSAGE_SIZE] = "";
    if (seen && !PQgetisnull(res, 0, 1))
        snprintf(reason, sizeof reason, "%s", PQgetvalue(res, 0, 1));
    int action_applied = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    int compensated = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
    PQclear(res);
    if (seen && outcome < 0)
        return ferry__error_set(err, FERRY_EINVAL, "outcome", "saga participant %s: unknown "
                             "recorded outcome for %s/%s/%s/%s", p->name, saga_id, sstep, kind,
                             sround);

    int refused = 0;
    if (!seen) {
        if (is_action && compensated) {
            outcome = FERRY_PARTICIPANT_TOO_LATE;
            snprintf(reason, sizeof reason, "the step was compensated before this action came");
        } else if (is_action) {
            rc = run_callback(conn, msg, p->action, p->arg, &refused, reason, sizeof reason, err);
            if (rc != FERRY_OK)
                return rc;
            outcome = refused ? FERRY_PARTICIPANT_REFUSED : FERRY_PARTICIPANT_APPLIED;
        } else if (!action_applied || p->compensation == NULL) {
            outcome = FERRY_PARTICIPANT_TOMBSTONE;
        } else {
            rc = run_callback(conn, msg, p->compensation, p->arg, &refused, reason,
                              sizeof reason, err);
            if (rc != FERRY_OK)
                return rc;
            outcome = refused ? FERRY_PARTICIPANT_REFUSED : FERRY_PARTICIPANT_APPLIED;
        }
    }

    /* Then, in one round trip: undo a refused callback's effects, let the
     * savepoint go, record the outcome of a new key and emit the reply. */
    char *ptext, *htext;
    if (reply_text(p, saga_id, kind, step, round, attempt, outcome, reason[0] ? reason : NULL,
                   &ptext, &htext) != 0)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not reply to a saga: out of memory");
    /* Keyed per (saga, participant): positions are per (topic, key) of the
     * emitting database, and participants may each have their own. */
    char key[FERRY_UUID_STRING_SIZE + PARTICIPANT_NAME_MAX + 2];
    snprintf(key, sizeof key, "%s/%s", saga_id, p->name);
    ferry_msg m = {.topic = reply_to, .key = key, .type = FERRY_SAGA_REPLY_TYPE,
                   .aggregate_type = p->name, .payload = ptext, .headers = htext};
    ferry_uuid rid;
    char rids[FERRY_UUID_STRING_SIZE];
    /* ferry_emit's own check first: a bad reply topic is refused here,
     * naming its field, before anything is sent. */
    if ((rc = ferry_msg_check(&m, NULL, err)) != FERRY_OK)
        goto out;
    if (ferry_uuid_v7(&rid) != FERRY_OK) {
        rc = ferry__error_set(err, FERRY_EDB, NULL, "could not reply to a saga: no random bytes");
        goto out;
    }
    ferry_uuid_format(&rid, rids);
    const char *fp[15] = {p->name, saga_id, sstep, kind, sround, seen ? "f" : "t",
                          outcome_names[outcome], reason[0] ? reason : NULL, msg->id,
                          rids, reply_to, key, FERRY_SAGA_REPLY_TYPE, ptext, htext};
    pipe_stmt finish[3];
    int n = 0;
    if (refused)
        finish[n++] = (pipe_stmt){"ROLLBACK TO SAVEPOINT ferry_participant", 0, NULL};
    finish[n++] = (pipe_stmt){"RELEASE SAVEPOINT ferry_participant", 0, NULL};
    finish[n++] = (pipe_stmt){"SELECT ferry.participant_finish($1, $2, $3, $4, $5, $6, $7, $8, "
                              "$9::uuid, $10, $11, $12, $13, $14, $15)", 15, fp};
    if ((rc = pipe_exec(conn, finish, n, -1, NULL, "could not answer a saga command",
                        err)) != FERRY_OK)
        goto out;
    if (!seen)
        ferry__log(FERRY_LOG_DEBUG, "saga_participant", "%s: saga %s step %s %s round %s: %s",
                  p->name, saga_id, sstep, kind, sround, outcome_names[outcome]);
    if (outcome_out != NULL)
        *outcome_out = seen ? FERRY_PARTICIPANT_DUPLICATE : (ferry_participant_outcome)outcome;
out:
    free(ptext);
    free(htext);
    return rc;
}
