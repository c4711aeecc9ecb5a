/*
 * sweep_garbage.c — rows kept past their use (sweep "garbage").
 *
 *   inbox      ferry.inbox rows applied before the dedupe window
 *              (budgets->inbox_retention_ms): a redelivery that old is
 *              not expected, so the dedupe record only takes space.
 *   published  ferry.outbox rows the relay marked published (retention
 *              mode "mark") longer ago than budgets->outbox_retention_ms.
 *   attempts   ferry.inbox_attempt rows (a consumer's count of failed
 *              tries of a message, schema 12) whose last failure is older
 *              than the dedupe window: the message was not tried since,
 *              so it was applied or dead-lettered by a client that did
 *              not say so (consume_finish and consume_fail delete the
 *              row), or it never comes again. A message that does come
 *              again after that starts counting anew.
 *
 * Repair deletes them in batches of budgets->batch rows, each batch its
 * own short fenced transaction (rc_begin: lock_timeout, statement
 * timeout, the reconciler's lease), re-checking the age in the statement
 * that deletes, so that a repeated or concurrent run deletes nothing
 * twice and nothing young. The cutoff is taken once, at the start: rows
 * that age past it during the pass wait for the next one, and the loop
 * ends.
 *
 * Each batch starts where the previous one stopped, so a pass reads the
 * garbage once however much there is (rescanning from the start would
 * re-read the dead rows of every earlier batch: quadratic):
 *
 *   inbox      a moving lower bound on ctid (a TID range scan, PG 14+):
 *              the rows are in the heap roughly in applied_at order, and
 *              the BRIN index on applied_at has no order to page by. The
 *              pass stops once it deleted as many rows as it counted, so
 *              it does not read the young rest of the table.
 *   published  keyset paging on (published_at, id) through the partial
 *              index outbox_published.
 *   attempts   keyset paging on (consumer, message_id), the primary key.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "reconcile.h"

#define SHOW_MAX 10             /* consumers / topics named in a finding's detail */

/* Why a batch loop ended. */
typedef enum batch_end { B_DONE = 0, B_STOPPED, B_BUSY, B_LOST, B_ERROR } batch_end;

/*
 * One batch in its own fenced transaction: setup (may be NULL) then sql,
 * whose one row is (deleted, scanned, next bound...). *out gets the
 * result; B_DONE on success (the caller reads *out and PQclears it).
 */
static batch_end batch(rc_ctx *ctx, const char *what, const char *setup, const char *sql,
                       int n, const char *const *params, PGresult **out)
{
    *out = NULL;
    int lost = 0;
    if (rc_act_begin(ctx, what, &lost) != 0)
        return lost ? B_LOST : B_ERROR;
    if (setup != NULL) {
        PGresult *s = PQexec(ctx->conn, setup);
        int ok = PQresultStatus(s) == PGRES_COMMAND_OK;
        PQclear(s);
        if (!ok) {
            rc_rollback(ctx);
            rc_error(ctx, "could not prepare %s: %s", what, PQerrorMessage(ctx->conn));
            return B_ERROR;
        }
    }
    PGresult *res = PQexecParams(ctx->conn, sql, n, NULL, params, NULL, NULL, 0);
    char doing[160];
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        int busy = rc_is_busy(res);
        if (!busy) {
            snprintf(doing, sizeof doing, "could not delete %s", what);
            rc_result_error(ctx, doing, res);
        }
        PQclear(res);
        rc_rollback(ctx);
        return busy ? B_BUSY : B_ERROR;
    }
    snprintf(doing, sizeof doing, "the deletion of %s", what);
    if (rc_act_commit(ctx, doing) != 0) {
        PQclear(res);
        return B_ERROR;
    }
    *out = res;
    return B_DONE;
}

static const char *end_reason(batch_end e)
{
    switch (e) {
    case B_STOPPED: return "interrupted";
    case B_BUSY: return "a row stayed locked past the lock timeout";
    case B_LOST: return "the reconciler's lease was lost";
    case B_ERROR: return "an error, above";
    case B_DONE: break;
    }
    return "";
}

/* A retention as people write it: "7d", "36h", "90m" when whole, else
 * rc_duration's "1h30m". */
static const char *window_text(int64_t ms, char *buf, size_t len)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(buf, len, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return buf;
        }
    return rc_duration(ms, buf, len);
}

/* The rows past a retention, counted per group (consumer, topic). */
typedef struct past {
    char cutoff[64];            /* now() - retention, read once: the cutoff of the whole pass */
    char keep[32];              /* the retention as people write it (window_text) */
    int64_t total, groups;      /* rows, summed over all groups; groups */
    json_t *by;                 /* new: the first SHOW_MAX groups, name: rows */
} past;

/* Fill in *p: the cutoff of retention ms, then count_sql ($1 the cutoff;
 * one row (name, rows) per group) run. 1 when rows are past it (p->by is
 * the caller's), 0 when none are (nothing to free), -1 after rc_error. */
static int count_past(rc_ctx *ctx, int64_t ms, const char *what, const char *count_sql,
                      past *p)
{
    char budget[24];
    snprintf(budget, sizeof budget, "%" PRId64, ms);
    const char *bp[1] = {budget};
    PGresult *res = rc_query(ctx, "could not read the database clock",
                             "SELECT (now() - $1::bigint * interval '1 millisecond')::text", 1, bp);
    if (res == NULL)
        return -1;
    snprintf(p->cutoff, sizeof p->cutoff, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    window_text(ms, p->keep, sizeof p->keep);
    const char *cp[1] = {p->cutoff};
    res = rc_query(ctx, what, count_sql, 1, cp);
    if (res == NULL)
        return -1;
    p->by = json_object();
    p->total = 0;
    p->groups = PQntuples(res);
    for (int r = 0; r < PQntuples(res); r++) {
        int64_t n = rc_int_at(res, r, 1);
        p->total += n;
        if (r < SHOW_MAX)
            json_object_set_new(p->by, PQgetvalue(res, r, 0), json_integer(n));
    }
    PQclear(res);
    if (p->total == 0) {
        json_decref(p->by);
        return 0;
    }
    return 1;
}

/*
 * A kind of garbage: how to count it and delete it in batches, and the
 * words its findings use. The three kinds differ only in these; the pass
 * over them is one (sweep).
 *
 * batch_sql takes $1 the cutoff, then the keys of the last row of the
 * previous batch ($2, or $2 and $3), then the batch size; it returns one
 * row (deleted, scanned, the keys of the last row scanned).
 */
typedef struct words {
    /* "<n> <row>s<row_of> of <g> <group>s <past> the <keep> <window>
     * (<when>before <cutoff>)" */
    const char *row, *row_of, *group, *past, *window, *when;
    const char *groups_key, *by_key;        /* the finding's detail */
} words;

typedef struct garbage {
    const char *problem;        /* the finding's problem, and the progress line's */
    const char *subject;        /* the table */
    int outbox_retention;       /* budgets->outbox_retention_ms, else inbox_retention_ms */
    const char *what;           /* "could not count <what>", "could not delete <what>" */
    const char *count_sql, *setup_sql, *batch_sql;
    int nkeys;                  /* 1 or 2 */
    const char *first[2];       /* keys before every row */
    int stop_at_count;          /* stop once as many rows are deleted as were counted */
    words w;
} garbage;

#define KEY_MAX 256             /* a key's text: a tid, a timestamp, a uuid, a consumer's name */

/* ------------------------------------------------------------------ inbox */

/* Counted through the BRIN index inbox_applied_at, at most 10,000,000
 * rows (a few seconds): a bigger backlog (a first run on an old inbox) is
 * taken that much per pass, so that the count never runs into the
 * statement timeout and the repair always gets going. */
static const char INBOX_COUNT_SQL[] =
    "SELECT consumer, count(*) FROM "
    "  (SELECT consumer FROM ferry.inbox WHERE applied_at < $1::timestamptz LIMIT 10000000) x "
    " GROUP BY consumer ORDER BY count(*) DESC, consumer";

/*
 * The next batch after the ctid bound $2, deleted. Plain scans and bitmap
 * scans are off for it: either would read the table from its start on
 * every batch (a bitmap heap scan filters ctid, it does not seek), so
 * the TID range scan from the bound is the plan, and each batch reads on
 * from where the last stopped. The DELETE re-checks the age: a slot
 * reused by a young row since the scan is left alone.
 */
static const char INBOX_SETUP_SQL[] = "SET LOCAL enable_seqscan = off; "
                                      "SET LOCAL enable_bitmapscan = off";
static const char INBOX_BATCH_SQL[] =
    "WITH b AS MATERIALIZED ("
    "  SELECT ctid AS t FROM ferry.inbox "
    "   WHERE ctid > $2::tid AND applied_at < $1::timestamptz LIMIT $3::int), "
    "d AS (DELETE FROM ferry.inbox i WHERE i.ctid = ANY (ARRAY(SELECT t FROM b)) "
    "        AND i.applied_at < $1::timestamptz RETURNING 1) "
    "SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM b), (SELECT max(t) FROM b)::text";

static const garbage INBOX = {
    .problem = "inbox", .subject = "ferry.inbox", .what = "inbox rows past the dedupe window",
    .count_sql = INBOX_COUNT_SQL, .setup_sql = INBOX_SETUP_SQL, .batch_sql = INBOX_BATCH_SQL,
    .nkeys = 1, .first = {"(0,0)"}, .stop_at_count = 1,
    .w = {"inbox row", "", "consumer", "past", "dedupe window", "applied ", "consumers",
          "by_consumer"},
};

/* -------------------------------------------------------------- published */

/* Counted through the partial index outbox_published. */
static const char PUBLISHED_COUNT_SQL[] =
    "SELECT topic, count(*) FROM ferry.outbox "
    " WHERE published_at IS NOT NULL AND published_at < $1::timestamptz "
    " GROUP BY topic ORDER BY count(*) DESC, topic";

/* The next batch after ($2, $3) in (published_at, id) order, deleted, by
 * ferry.outbox_purge_published (schema 27), which deletes published rows
 * only: the role has no DELETE on the outbox. */
static const char PUBLISHED_BATCH_SQL[] =
    "SELECT deleted, looked, last_at, last_id FROM ferry.outbox_purge_published("
    "$1::timestamptz, $2::timestamptz, $3::uuid, $4::int)";

static const garbage PUBLISHED = {
    .problem = "published", .subject = "ferry.outbox", .outbox_retention = 1,
    .what = "published outbox rows past retention", .count_sql = PUBLISHED_COUNT_SQL,
    .batch_sql = PUBLISHED_BATCH_SQL,
    .nkeys = 2, .first = {"-infinity", "00000000-0000-0000-0000-000000000000"},
    .w = {"published outbox row", "", "topic", "kept past", "retention", "published ",
          "topics", "by_topic"},
};

/* --------------------------------------------------------------- attempts */

static const char ATTEMPTS_COUNT_SQL[] =
    "SELECT consumer, count(*) FROM ferry.inbox_attempt WHERE failed_at < $1::timestamptz "
    " GROUP BY consumer ORDER BY count(*) DESC, consumer";

/* The next batch after ($2, $3) in primary-key order, deleted, the age
 * checked again as it is deleted (a try that failed since keeps its row). */
static const char ATTEMPTS_BATCH_SQL[] =
    "WITH b AS MATERIALIZED ("
    "  SELECT consumer, message_id FROM ferry.inbox_attempt "
    "   WHERE failed_at < $1::timestamptz AND (consumer, message_id) > ($2, $3::uuid) "
    "   ORDER BY consumer, message_id LIMIT $4::int), "
    "d AS (DELETE FROM ferry.inbox_attempt a USING b "
    "       WHERE a.consumer = b.consumer AND a.message_id = b.message_id "
    "         AND a.failed_at < $1::timestamptz RETURNING 1), "
    "last AS (SELECT consumer, message_id FROM b ORDER BY consumer DESC, message_id DESC "
    "         LIMIT 1) "
    "SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM b), "
    "       last.consumer, last.message_id::text "
    "  FROM (SELECT 1) one LEFT JOIN last ON true";

/* Names are never empty (consumer_guard_), so ('', the nil uuid) comes
 * before every key. */
static const garbage ATTEMPTS = {
    .problem = "attempts", .subject = "ferry.inbox_attempt",
    .what = "failed attempts past the dedupe window", .count_sql = ATTEMPTS_COUNT_SQL,
    .batch_sql = ATTEMPTS_BATCH_SQL,
    .nkeys = 2, .first = {"", "00000000-0000-0000-0000-000000000000"},
    .w = {"count", " of failed attempts", "consumer", "last failed before", "dedupe window", "",
          "consumers", "by_consumer"},
};

/* ------------------------------------------------------------- the sweep */

/* "<n> <rows> of <groups> <past> the <keep> <window> (<when>before
 * <cutoff>)": what a finding found or deleted, whole. */
static const char *whole_text(const garbage *k, const past *g, int64_t n, char *buf,
                              size_t len)
{
    snprintf(buf, len, "%" PRId64 " %s%s%s of %" PRId64 " %s%s %s the %s %s (%sbefore %s)", n,
             k->w.row, n == 1 ? "" : "s", k->w.row_of, g->groups, k->w.group,
             g->groups == 1 ? "" : "s", k->w.past, g->keep, k->w.window, k->w.when,
             g->cutoff);
    return buf;
}

/* One kind of garbage: count it (check mode reports it), else delete it
 * batch after batch and report what was deleted and what was left. 0, or
 * -1 after an error; *lost when the lease was lost. */
static int sweep(rc_ctx *ctx, const garbage *k, int *lost)
{
    int64_t ms = k->outbox_retention ? ctx->budgets->outbox_retention_ms
                                     : ctx->budgets->inbox_retention_ms;
    past g;
    char what[128];
    snprintf(what, sizeof what, "could not count %s", k->what);
    int found = count_past(ctx, ms, what, k->count_sql, &g);
    if (found <= 0)
        return found;
    json_t *detail = json_pack("{s:I, s:I, s:s, s:I, s:o}", "rows", (json_int_t)g.total,
                               k->w.groups_key, (json_int_t)g.groups, "cutoff", g.cutoff,
                               "retention_ms", (json_int_t)ms, k->w.by_key, g.by);
    char text[512];
    if (ctx->mode == RC_CHECK) {
        rc_found(ctx, k->problem, k->subject, g.total, RC_FOUND, detail,
                 "%s: garbage to delete", whole_text(k, &g, g.total, text, sizeof text));
        return 0;
    }

    char keys[2][KEY_MAX], size[16];
    for (int i = 0; i < k->nkeys; i++)
        snprintf(keys[i], sizeof keys[i], "%s", k->first[i]);
    snprintf(size, sizeof size, "%d", ctx->budgets->batch > 0 ? ctx->budgets->batch : 1000);
    int64_t deleted = 0;
    batch_end end = B_DONE;
    while (!k->stop_at_count || deleted < g.total) {
        if (rc_stopping(ctx)) {
            end = B_STOPPED;
            break;
        }
        const char *p[4] = {g.cutoff, keys[0], keys[1], size};
        p[k->nkeys + 1] = size;
        PGresult *b;
        end = batch(ctx, k->what, k->setup_sql, k->batch_sql, k->nkeys + 2, p, &b);
        if (end != B_DONE)
            break;
        deleted += rc_int_at(b, 0, 0);
        int64_t scanned = rc_int_at(b, 0, 1);
        if (scanned > 0)
            for (int i = 0; i < k->nkeys; i++)
                snprintf(keys[i], sizeof keys[i], "%s", PQgetvalue(b, 0, 2 + i));
        PQclear(b);
        rc_progress(ctx, "%s: %" PRId64 " of %" PRId64 " rows deleted", k->problem, deleted,
                    g.total);
        if (scanned == 0)
            break;      /* the end of the table, or of the rows past the cutoff */
    }
    *lost = end == B_LOST;
    json_object_set_new(detail, "deleted", json_integer(deleted));
    if (end == B_DONE && deleted == 0) {
        json_decref(detail);        /* all gone meanwhile: nothing was ours to do */
        return 0;
    }
    if (end == B_DONE) {
        /* Rows counted and gone before we reached them (another
         * reconciler's pass) are not ours to report as left. */
        rc_found(ctx, k->problem, k->subject, deleted, RC_REPAIRED, detail, "deleted %s",
                 whole_text(k, &g, deleted, text, sizeof text));
        return 0;
    }
    if (deleted > 0)
        rc_found(ctx, k->problem, k->subject, deleted, RC_REPAIRED, json_incref(detail),
                 "deleted %" PRId64 " of %" PRId64 " %ss%s past the %s %s", deleted, g.total,
                 k->w.row, k->w.row_of, g.keep, k->w.window);
    int64_t left = g.total > deleted ? g.total - deleted : 0;
    rc_found(ctx, k->problem, k->subject, left, RC_LEFT, detail,
             "%" PRId64 " %s%s%s past the %s %s not deleted in this pass (%s): the next pass "
             "goes on",
             left, k->w.row, left == 1 ? "" : "s", k->w.row_of, g.keep, k->w.window,
             end_reason(end));
    return end == B_STOPPED || end == B_BUSY ? 0 : -1;
}

/* The reconciler's own records, in repair: passes older than 30 days,
 * and rule actions not renewed for 30 days (a row still found is sent
 * again every repeat_after, which renews its action; one not renewed
 * means the row went away). Housekeeping, not a problem of the system:
 * no finding. Small tables, one short fenced statement each. */
/* An action is kept 30 days, or its rule's repeat_after where that is
 * longer ($1 the rules' names, $2 their repeat_after in ms): deleted
 * sooner, the rule found no record, and sent again before its
 * repeat_after (an outside audit: a 60-day rule's message went again
 * after 31 days, and check said it was pending). */
static const char RECORDS_SQL[] =
    "WITH p AS (DELETE FROM ferry.reconcile_pass WHERE finished_at < now() - interval '30 days' "
    "           RETURNING 1), "
    "a AS (DELETE FROM ferry.reconcile_action a "
    "       WHERE a.emitted_at < now() - greatest(interval '30 days', "
    "               coalesce((SELECT r.ms FROM unnest($1::text[], $2::bigint[]) AS r (name, ms) "
    "                          WHERE r.name = a.rule), 0) * interval '1 millisecond') "
    "      RETURNING 1) "
    "SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM a)";

static int records(rc_ctx *ctx, int *lost)
{
    if (ctx->mode != RC_REPAIR)
        return 0;
    ferry_error err;
    if (rc_begin(ctx, &err) != FERRY_OK) {
        *lost = err.code == FERRY_ESTATE;
        return rc_error(ctx, "could not purge the reconciler's old records: %s", err.message);
    }
    /* The rules' names and repeat_after, as array literals (pgarray.c). */
    ferry__alit names = {0}, ms = {0};
    for (size_t i = 0; ctx->rules != NULL && i < ctx->rules->count; i++) {
        const rc_rule *rule = &ctx->rules->rules[i];
        char v[24];
        snprintf(v, sizeof v, "%lld", (long long)rule->repeat_after_ms);
        ferry__alit_str(&names, rule->name);
        ferry__alit_str(&ms, v);
    }
    const char *params[2] = {ferry__alit_end(&names), ferry__alit_end(&ms)};
    PGresult *res = NULL;
    if (params[0] == NULL || params[1] == NULL)
        rc_error(ctx, "could not purge the reconciler's old records: out of memory");
    else
        res = rc_query(ctx, "could not purge the reconciler's old records", RECORDS_SQL, 2,
                       params);
    free(names.p);
    free(ms.p);
    if (res == NULL) {
        rc_rollback(ctx);
        return -1;
    }
    PQclear(res);
    if (rc_commit(ctx, &err) != FERRY_OK)
        return rc_error(ctx, "could not purge the reconciler's old records: %s", err.message);
    return 0;
}

int rc_sweep_garbage(rc_ctx *ctx)
{
    int rc = 0, lost = 0;
    if (sweep(ctx, &INBOX, &lost) != 0)
        rc = -1;
    if (PQstatus(ctx->conn) == CONNECTION_OK && !rc_stopping(ctx) && !lost &&
        sweep(ctx, &PUBLISHED, &lost) != 0)
        rc = -1;
    if (PQstatus(ctx->conn) == CONNECTION_OK && !rc_stopping(ctx) && !lost &&
        sweep(ctx, &ATTEMPTS, &lost) != 0)
        rc = -1;
    if (PQstatus(ctx->conn) == CONNECTION_OK && !rc_stopping(ctx) && !lost &&
        records(ctx, &lost) != 0)
        rc = -1;
    return rc;
}
