/*
 * sweep_rules.c — the rules file's compliance rules (sweep "rules").
 *
 * A rule is a detect query (the rule author's SQL, from a trusted config
 * file: the only SQL here that is not parameterised) and a repair message:
 * for every row the query returns, the service that owns the row is sent
 * one message (the rule's topic and type, keyed by the row's `key`
 * column, with the row's `payload` column, or else the whole row, as its
 * payload, and a "reconcile_rule" header naming the rule) and is trusted
 * to deal with it. ferry.reconcile_action remembers, per (rule, key), when
 * the last message went out: a row found again within the rule's
 * repeat_after is *pending* (the service has not got to it yet), not a
 * new problem, so a second pass right after a repair changes nothing.
 *
 * Detection runs in a REPEATABLE READ READ ONLY transaction of its own
 * under the rule's statement timeout, which is what guards the database
 * against a detect query that writes or runs away (the rules file's lint
 * only looks at the text). The query is wrapped twice over one snapshot:
 *
 *   the rows to act on: not pending, at most max_rows + 1 of them (the
 *     extra one says "more next pass"). Pending rows are left out here so
 *     that they never take up the max_rows of a pass: a backlog larger
 *     than max_rows is worked through pass after pass;
 *   the pending rows: counted, up to PENDING_COUNT_MAX + 1.
 *
 * Repair emits through the outbox and records reconcile_action in the
 * same fenced transaction (rc_begin), budgets->batch rows at a time: a
 * message goes out iff its record commits, so a crash between batches
 * neither loses nor repeats one.
 *
 * Findings, one per rule and what befell it:
 *   rule_rows     the rows found: new ones (found, or repaired: messages
 *                 sent) and pending ones (pending when there is no new one)
 *   rule_more     more than max_rows new rows: the next pass goes on
 *   rule_refused  rows that cannot be a message (ferry_msg_check: an empty
 *                 or oversized key, an oversized payload): left
 *   rule_unsent   rows not sent because the pass stopped (an error, a signal)
 * A detect query that fails is an operational error (rc_error) naming
 * the rule and its place in the rules file; the next rule still runs.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "reconcile.h"

#define SAMPLES_MAX 5
/* Pending rows are counted up to this many (and "more than" beyond). */
#define PENDING_COUNT_MAX 100000

/* One row to act on: borrowed from the detect's result. */
typedef struct rule_row {
    const char *key;
    const char *payload;
} rule_row;

static int row_cmp(const void *a, const void *b)
{
    return strcmp(((const rule_row *)a)->key, ((const rule_row *)b)->key);
}

/* Characters (not bytes) of UTF-8 text: error positions count characters. */
static long utf8_chars(const char *s, size_t len)
{
    long n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* The wrapped queries. The detect text is put on lines of its own, so
 * that a trailing "--" comment could not swallow the wrapper. *start and
 * *end: the detect's span in characters, 1-based like error positions. */
static char *wrap(const char *head, const char *detect, const char *tail, long *start,
                  long *end)
{
    char *sql = NULL;
    if (asprintf(&sql, "%s\n%s\n%s", head, detect, tail) < 0)
        return NULL;
    if (start) {
        *start = utf8_chars(head, strlen(head)) + 2;
        *end = *start + utf8_chars(detect, strlen(detect));
    }
    return sql;
}

static const char act_head[] =
    "SELECT q.key::text,"
    " CASE WHEN to_jsonb(q) ? 'payload' THEN to_jsonb(q)->'payload' ELSE to_jsonb(q) END"
    " FROM (";
static const char act_tail[] =
    ") q"
    " WHERE NOT EXISTS (SELECT 1 FROM ferry.reconcile_action ra"
    "                    WHERE ra.rule = $1 AND ra.key = q.key::text"
    "                      AND ra.emitted_at > now() - $2::bigint * interval '1 millisecond')"
    " LIMIT $3::bigint";
static const char pending_head[] = "SELECT count(*) FROM (SELECT 1 FROM (";
static const char pending_tail[] =
    ") q"
    " JOIN ferry.reconcile_action ra ON ra.rule = $1 AND ra.key = q.key::text"
    "  AND ra.emitted_at > now() - $2::bigint * interval '1 millisecond'"
    " LIMIT $3::bigint) p";

/* Why the detect failed, as a sentence, from its error: written into buf.
 * May run the bare detect once more (see below). */
static void explain_failure(rc_ctx *ctx, const rc_rule *r, const PGresult *res, long start,
                            long end, char *buf, size_t len)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
    char d[32];
    if (state == NULL || primary == NULL) {
        const char *m = PQerrorMessage(ctx->conn);
        size_t n = strcspn(m, "\n");
        snprintf(buf, len, "%.*s", (int)n, m);
        return;
    }
    if (strcmp(state, "25006") == 0) {
        snprintf(buf, len, "the detect query tried to write; detect queries must be read-only "
                 "(%s)", primary);
        return;
    }
    if (strcmp(state, "57014") == 0) {
        snprintf(buf, len, "the detect query ran longer than its timeout (%s)",
                 rc_duration(r->timeout_ms, d, sizeof d));
        return;
    }
    if (strcmp(state, "42703") == 0 && pos != NULL) {
        long at = strtol(pos, NULL, 10);
        if (at < start || at >= end) {
            snprintf(buf, len, "the detect query returned no key column");
            return;
        }
    }
    snprintf(buf, len, "%s", primary);
    if (strcmp(state, "0A000") != 0)
        return;
    /* PostgreSQL refuses a data-modifying WITH below the top level before
     * the read-only check can: run the detect bare, at the top level (in
     * a READ ONLY transaction, LIMIT 0: nothing is read or written), to
     * learn whether it writes. */
    char ms[24];
    snprintf(ms, sizeof ms, "%" PRId64, r->timeout_ms);
    const char *p[1] = {ms};
    rc_rollback(ctx);
    PGresult *b = PQexec(ctx->conn, "BEGIN TRANSACTION READ ONLY");
    int ok = PQresultStatus(b) == PGRES_COMMAND_OK;
    PQclear(b);
    if (!ok)
        return;
    PQclear(PQexecParams(ctx->conn, "SELECT set_config('statement_timeout', $1, true)", 1,
                         NULL, p, NULL, NULL, 0));
    char *bare = wrap("", r->detect, "LIMIT 0", NULL, NULL);
    PGresult *pr = bare ? PQexec(ctx->conn, bare) : NULL;
    const char *ps = pr ? PQresultErrorField(pr, PG_DIAG_SQLSTATE) : NULL;
    if (ps != NULL && strcmp(ps, "25006") == 0)
        snprintf(buf, len, "the detect query tried to write; detect queries must be read-only "
                 "(%s)", PQresultErrorField(pr, PG_DIAG_MESSAGE_PRIMARY));
    PQclear(pr);
    free(bare);
    rc_rollback(ctx);
}

/* Rows to act on, and the pending count, of rule r over one snapshot.
 * On success *act is the result (the caller PQclears) and *pending set;
 * else -1 after rc_error. */
static int detect(rc_ctx *ctx, const rc_rule *r, PGresult **act, int64_t *pending)
{
    const char *file = ctx->rules->file ? ctx->rules->file : "rules";
    char ms[24], repeat[24], lim[24], plim[24];
    snprintf(ms, sizeof ms, "%" PRId64, r->timeout_ms);
    snprintf(repeat, sizeof repeat, "%" PRId64, r->repeat_after_ms);
    snprintf(lim, sizeof lim, "%lld", (long long)r->max_rows + 1);
    snprintf(plim, sizeof plim, "%d", PENDING_COUNT_MAX + 1);
    long start = 0, end = 0;
    char *act_sql = wrap(act_head, r->detect, act_tail, &start, &end);
    char *pending_sql = wrap(pending_head, r->detect, pending_tail, NULL, NULL);
    if (act_sql == NULL || pending_sql == NULL) {
        free(act_sql);
        free(pending_sql);
        return rc_error(ctx, "rule %s (%s:%d): out of memory", r->name, file, r->line);
    }
    const char *tp[1] = {ms};
    const char *qp[3] = {r->name, repeat, lim}, *pp[3] = {r->name, repeat, plim};
    PGresult *res = PQexec(ctx->conn, "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ "
                                      "READ ONLY");
    int status = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto failed;
    PQclear(res);
    res = PQexecParams(ctx->conn, "SELECT set_config('statement_timeout', $1, true)", 1, NULL,
                       tp, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto failed;
    PQclear(res);
    res = PQexecParams(ctx->conn, act_sql, 3, NULL, qp, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto failed;
    *act = res;
    res = PQexecParams(ctx->conn, pending_sql, 3, NULL, pp, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(*act);
        *act = NULL;
        goto failed;
    }
    *pending = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    res = PQexec(ctx->conn, "COMMIT");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(*act);
        *act = NULL;
        goto failed;
    }
    PQclear(res);
    goto out;
failed: {
    char why[1024];
    explain_failure(ctx, r, res, start, end, why, sizeof why);
    PQclear(res);
    if (PQstatus(ctx->conn) == CONNECTION_OK)
        rc_rollback(ctx);
    status = rc_error(ctx, "rule %s (%s:%d): %s", r->name, file, r->line, why);
}
out:
    free(act_sql);
    free(pending_sql);
    return status;
}

/* Emit one repair message per row and record it, budgets->batch rows per
 * fenced transaction. *emitted counts the messages committed; *refused
 * the rows ferry_msg_check refused (first reason into why). 0, or -1
 * after rc_error (what was committed before stays, and is counted). */
static int repair(rc_ctx *ctx, const rc_rule *r, const rule_row *rows, size_t n,
                  int64_t *emitted, int64_t *refused, char *why, size_t why_len)
{
    const char *file = ctx->rules->file ? ctx->rules->file : "rules";
    size_t batch = ctx->budgets->batch > 0 ? (size_t)ctx->budgets->batch : 1000;
    json_t *h = json_pack("{s:s}", "reconcile_rule", r->name);
    char *headers = h ? json_dumps(h, JSON_COMPACT) : NULL;
    json_decref(h);
    ferry_msg *msgs = malloc((n < batch ? n : batch) * sizeof *msgs + 1);
    ferry_uuid *ids = malloc((n < batch ? n : batch) * sizeof *ids + 1);
    int status = 0;
    if (headers == NULL || msgs == NULL || ids == NULL) {
        status = rc_error(ctx, "rule %s (%s:%d): out of memory", r->name, file, r->line);
        goto out;
    }
    for (size_t off = 0; off < n && !rc_stopping(ctx); off += batch) {
        size_t m = 0;
        for (size_t i = off; i < n && i < off + batch; i++) {
            ferry_msg msg = {.topic = r->topic, .key = rows[i].key, .type = r->type,
                             .payload = rows[i].payload, .headers = headers};
            ferry_error err;
            if (ferry_msg_check(&msg, NULL, &err) != FERRY_OK) {
                if ((*refused)++ == 0)
                    snprintf(why, why_len, "key %.64s: %s", rows[i].key, err.message);
                continue;
            }
            msgs[m++] = msg;
        }
        if (m == 0)
            continue;
        ferry_error err;
        if (rc_begin(ctx, &err) != FERRY_OK) {
            status = rc_error(ctx, "rule %s (%s:%d): could not begin a repair transaction: %s",
                              r->name, file, r->line, err.message);
            goto out;
        }
        if (ferry_emit_batch(ctx->conn, msgs, m, NULL, ids, &err) != FERRY_OK) {
            rc_rollback(ctx);
            status = rc_error(ctx, "rule %s (%s:%d): could not emit its repair messages: %s",
                              r->name, file, r->line, err.message);
            goto out;
        }
        /* [[key, message id], ...]: one parameter for the whole batch. */
        json_t *rec = json_array();
        for (size_t i = 0; rec != NULL && i < m; i++) {
            char id[FERRY_UUID_STRING_SIZE];
            ferry_uuid_format(&ids[i], id);
            if (json_array_append_new(rec, json_pack("[s, s]", msgs[i].key, id)) != 0) {
                json_decref(rec);
                rec = NULL;
            }
        }
        char *rec_text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        json_decref(rec);
        if (rec_text == NULL) {
            rc_rollback(ctx);
            status = rc_error(ctx, "rule %s (%s:%d): out of memory", r->name, file, r->line);
            goto out;
        }
        const char *p[2] = {r->name, rec_text};
        PGresult *res = rc_query(
            ctx, "could not record the repair messages in ferry.reconcile_action",
            "INSERT INTO ferry.reconcile_action (rule, key, message_id)"
            " SELECT $1, e->>0, (e->>1)::uuid FROM jsonb_array_elements($2::jsonb) e"
            " ON CONFLICT (rule, key) DO UPDATE SET message_id = EXCLUDED.message_id,"
            "   emitted_at = now(), times = reconcile_action.times + 1",
            2, p);
        free(rec_text);
        if (res == NULL) {
            rc_rollback(ctx);
            status = -1;
            goto out;
        }
        PQclear(res);
        if (rc_commit(ctx, &err) != FERRY_OK) {
            rc_rollback(ctx);
            status = rc_error(ctx, "rule %s (%s:%d): could not commit its repair messages: %s",
                              r->name, file, r->line, err.message);
            goto out;
        }
        *emitted += (int64_t)m;
        rc_progress(ctx, "rule %s: %" PRId64 " of %zu repair messages emitted", r->name,
                    *emitted, n);
    }
out:
    free(headers);
    free(msgs);
    free(ids);
    return status;
}

static int run_rule(rc_ctx *ctx, const rc_rule *r)
{
    const char *file = ctx->rules->file ? ctx->rules->file : "rules";
    PGresult *act = NULL;
    int64_t pending = 0;
    if (detect(ctx, r, &act, &pending) != 0)
        return -1;
    int truncated = PQntuples(act) > r->max_rows;
    size_t n = (size_t)(truncated ? r->max_rows : PQntuples(act));
    rule_row *rows = malloc(n * sizeof *rows + 1);
    if (rows == NULL) {
        PQclear(act);
        return rc_error(ctx, "rule %s (%s:%d): out of memory", r->name, file, r->line);
    }
    for (size_t i = 0; i < n; i++) {
        if (PQgetisnull(act, (int)i, 0)) {
            free(rows);
            PQclear(act);
            return rc_error(ctx, "rule %s (%s:%d): the detect query returned no key column "
                            "(a row with a NULL key)", r->name, file, r->line);
        }
        rows[i] = (rule_row){PQgetvalue(act, (int)i, 0), PQgetvalue(act, (int)i, 1)};
    }
    /* One message per key, however often the query returns it. */
    qsort(rows, n, sizeof *rows, row_cmp);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(rows[u - 1].key, rows[i].key) != 0)
            rows[u++] = rows[i];
    int64_t emitted = 0, refused = 0;
    char why[FERRY_ERROR_MESSAGE_SIZE + 80] = "";
    int status = 0;
    if (ctx->mode == RC_REPAIR && u > 0)
        status = repair(ctx, r, rows, u, &emitted, &refused, why, sizeof why);

    char subject[160], rep[32], pend[64];
    snprintf(subject, sizeof subject, "rule %s", r->name);
    rc_duration(r->repeat_after_ms, rep, sizeof rep);
    int pending_more = pending > PENDING_COUNT_MAX;
    snprintf(pend, sizeof pend, "%s%" PRId64, pending_more ? "more than " : "",
             pending_more ? (int64_t)PENDING_COUNT_MAX : pending);
    int64_t rows_n = (int64_t)u + pending;
    json_t *samples = json_array();
    for (size_t i = 0; i < u && i < SAMPLES_MAX; i++)
        json_array_append_new(samples, json_string(rows[i].key));
    json_t *detail = json_pack("{s:s, s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:o}", "rule", r->name,
                               "file", file, "line", r->line, "topic", r->topic, "type", r->type,
                               "rows", (json_int_t)rows_n, "new", (json_int_t)u, "pending",
                               (json_int_t)pending, "sample_keys", samples);
    if (u == 0 && pending > 0)
        rc_found(ctx, "rule_rows", subject, pending, RC_PENDING, detail,
                 "rule %s: %s %s, all awaiting the earlier repair message (sent again if "
                 "still found %s after it)", r->name, pend, pending == 1 ? "row" : "rows", rep);
    else if (u > 0 && ctx->mode == RC_CHECK)
        rc_found(ctx, "rule_rows", subject, (int64_t)u, RC_FOUND, detail,
                 "rule %s: %" PRId64 " %s: %zu %s a repair message (%s \u2192 %s), %s awaiting "
                 "the earlier one", r->name, rows_n, rows_n == 1 ? "row" : "rows", u,
                 u == 1 ? "needs" : "need", r->type, r->topic, pend);
    else if (emitted > 0) {
        json_object_set_new(detail, "emitted", json_integer(emitted));
        rc_found(ctx, "rule_rows", subject, emitted, RC_REPAIRED, detail,
                 "rule %s: %" PRId64 " %s: %" PRId64 " repair %s (%s \u2192 %s) emitted, %s "
                 "awaiting the earlier one", r->name, rows_n, rows_n == 1 ? "row" : "rows",
                 emitted, emitted == 1 ? "message" : "messages", r->type, r->topic, pend);
    } else
        json_decref(detail);
    int64_t unsent = ctx->mode == RC_REPAIR ? (int64_t)u - emitted - refused : 0;
    if (unsent > 0)
        rc_found(ctx, "rule_unsent", subject, unsent, RC_LEFT,
                 json_pack("{s:s, s:I}", "rule", r->name, "unsent", (json_int_t)unsent),
                 "rule %s: %" PRId64 " %s left without a repair message: the pass %s", r->name,
                 unsent, unsent == 1 ? "row" : "rows",
                 status != 0 ? "failed (see the error)" : "was interrupted");
    if (refused > 0)
        rc_found(ctx, "rule_refused", subject, refused, RC_LEFT,
                 json_pack("{s:s, s:I, s:s}", "rule", r->name, "refused", (json_int_t)refused,
                           "error", why),
                 "rule %s: %" PRId64 " %s could not be sent as a message: %s", r->name, refused,
                 refused == 1 ? "row" : "rows", why);
    if (truncated)
        rc_found(ctx, "rule_more", subject, 1, ctx->mode == RC_CHECK ? RC_FOUND : RC_LEFT,
                 json_pack("{s:s, s:i}", "rule", r->name, "max_rows", r->max_rows),
                 "rule %s: more than %d rows; the next pass goes on", r->name, r->max_rows);
    free(rows);
    PQclear(act);
    return status;
}

int rc_sweep_rules(rc_ctx *ctx)
{
    if (ctx->rules == NULL)
        return 0;
    int status = 0;
    for (size_t i = 0; i < ctx->rules->count && !rc_stopping(ctx); i++) {
        rc_progress(ctx, "rule %zu of %zu: %s", i + 1, ctx->rules->count,
                    ctx->rules->rules[i].name);
        if (run_rule(ctx, &ctx->rules->rules[i]) != 0)
            status = -1;
        if (PQstatus(ctx->conn) != CONNECTION_OK)
            break;
    }
    return status;
}
