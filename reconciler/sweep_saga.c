/*
 * sweep_saga.c — sagas the workers left behind (sweeps "sagas" and
 * "compensations").
 *
 * A saga's next timer is ferry.saga.deadline (the engine's wake_ms); any
 * worker fires it with ferry_saga_fire_timers(). One overdue by more than
 * the saga_grace budget is one the workers missed (none running, all
 * stuck, a definition nobody serves any more):
 *
 *   past_deadline            running, timer overdue: a step's reply never
 *                            came and nobody resent it, or the saga's own
 *                            deadline passed and nobody compensated;
 *   compensation_unfinished  compensating, timer overdue: a compensation
 *                            command was never answered and never resent;
 *   no_timer                 running or compensating without any timer:
 *                            nothing will ever move it.
 *
 * Repair fires the missed timer the way a worker would
 * (ferry_saga_fire_timer, with the definitions of --sagas): the engine
 * decides, as always, from the stored state and the database clock —
 * resend the step under the same idempotency key, give it up and
 * compensate, or resend the compensation under its key. Each firing is
 * its own transaction (the saga's row lock, the state, the audit and the
 * commands commit together) and is idempotent: a timer that a worker
 * fired meanwhile is no longer due and the engine ignores it. Those
 * transactions are ferry_tx_run's, not rc_begin's, so the lease is
 * checked (and kept) by an rc_begin of its own just before each firing,
 * not inside it: a reconciler that lost its lease between the two could
 * fire one timer more, which is harmless (the saga's row lock orders the
 * firings, and the second finds nothing due). The firings run
 * under a lock_timeout of a second: a saga a worker holds is left for the
 * next pass rather than waited for.
 *
 * Detection reads the partial index saga_open_deadline (deadline, where
 * state is running or compensating) in deadline order, a batch at a time,
 * with keyset paging on (deadline, id), up to a cutoff (now - grace) fixed
 * when the sweep starts: a timer fired here is set after the cutoff, so
 * every saga is looked at at most once per pass and repair ends however
 * fast the sagas it fires fall due again. Findings are aggregated per
 * definition (and, when left, per reason), never one per saga, with the
 * count, the most overdue and a few sample ids in the detail.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "reconcile.h"

#define SAMPLES_MAX 5

/* One finding in the making: sagas of one definition with one fate. */
typedef struct agg {
    char *definition;
    rc_saga_class cls;
    char *hash;                 /* RC_SAGA_HASH: the stored hash */
    char *why;                  /* RC_SAGA_REFUSED: the first refusal */
    int64_t count;
    int64_t elsewhere;          /* RC_SAGA_FIRED: of count, found fired by a worker meanwhile */
    int64_t max_overdue_ms;
    json_t *samples;            /* up to SAMPLES_MAX saga ids */
    json_t *steps;              /* compensations: step name -> sagas */
    int64_t max_attempts;       /* compensations: most sends of one compensation */
} agg;

typedef struct aggs {
    agg *v;
    size_t n, cap;
} aggs;

static void aggs_free(aggs *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].definition);
        free(a->v[i].hash);
        free(a->v[i].why);
        json_decref(a->v[i].samples);
        json_decref(a->v[i].steps);
    }
    free(a->v);
    *a = (aggs){0};
}

static bool streq_null(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The aggregate of (definition, cls, hash), made on first sight; NULL when
 * memory is short. */
static agg *aggs_get(aggs *a, const char *definition, rc_saga_class cls, const char *hash)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].cls == cls && strcmp(a->v[i].definition, definition) == 0
            && streq_null(a->v[i].hash, hash))
            return &a->v[i];
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        agg *v = realloc(a->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        a->v = v;
        a->cap = cap;
    }
    agg *g = &a->v[a->n];
    *g = (agg){.cls = cls, .definition = strdup(definition),
               .hash = hash ? strdup(hash) : NULL, .samples = json_array(),
               .steps = json_object()};
    if (g->definition == NULL || (hash && g->hash == NULL) || g->samples == NULL
        || g->steps == NULL) {
        free(g->definition);
        free(g->hash);
        json_decref(g->samples);
        json_decref(g->steps);
        return NULL;
    }
    a->n++;
    return g;
}

/* ------------------------------------------------------------ the kinds */

/* What differs between the two sweeps. The state is a constant of the
 * SQL (not a parameter) so that the planner can prove the partial index's
 * predicate and use saga_open_deadline. */
typedef struct saga_kind {
    const char *state;          /* "running" | "compensating" */
    const char *problem;        /* past_deadline | compensation_unfinished */
    const char *one, *what;     /* "running saga(s)", for sentences */
    const char *cause;          /* what a check says went wrong */
    const char *overdue_sql;    /* $1 cutoff, $2 after deadline, $3 after id, $4 limit */
    const char *recheck_sql;    /* $1 id, $2 grace ms: still overdue? */
    const char *no_timer_sql;   /* per definition: count, samples, oldest update */
} saga_kind;

#define OVERDUE_SQL(state)                                                                     \
    "SELECT s.id::text, s.definition, s.definition_hash, s.deadline::text,"                   \
    "       floor(extract(epoch FROM now() - s.deadline) * 1000)::bigint,"                    \
    "       s.current_step,"                                                                   \
    "       coalesce((s.engine->'steps'->s.current_step->>'compensation_attempts')::bigint, 0)" \
    "  FROM ferry.saga s"                                                                      \
    " WHERE s.state = '" state "'"                                                             \
    "   AND s.deadline < $1::timestamptz"                                                      \
    "   AND s.deadline >= $2::timestamptz"                                                     \
    "   AND (s.deadline > $2::timestamptz OR s.id > $3::uuid)"                                 \
    " ORDER BY s.deadline, s.id"                                                               \
    " LIMIT $4::int"

#define RECHECK_SQL(state)                                                                     \
    "SELECT count(*) FROM ferry.saga"                                                          \
    " WHERE id = $1::uuid AND state = '" state "'"                                             \
    "   AND deadline < now() - $2::bigint * interval '1 millisecond'"

#define NO_TIMER_SQL(state)                                                                    \
    "SELECT definition, count(*),"                                                             \
    "       (array_agg(id::text ORDER BY updated_at))[1:5]::text,"                             \
    "       floor(extract(epoch FROM now() - min(updated_at)) * 1000)::bigint"                 \
    "  FROM ferry.saga"                                                                        \
    " WHERE state = '" state "' AND deadline IS NULL"                                          \
    " GROUP BY definition ORDER BY definition"

/* One kind from its state: the state in the SQL and in .state cannot
 * drift apart. */
#define SAGA_KIND(st, prob, one_, what_, cause_)                                               \
    {.state = st, .problem = prob, .one = one_, .what = what_, .cause = cause_,                \
     .overdue_sql = OVERDUE_SQL(st), .recheck_sql = RECHECK_SQL(st),                           \
     .no_timer_sql = NO_TIMER_SQL(st)}

static const saga_kind running_kind =
    SAGA_KIND("running", "past_deadline", "running saga", "running sagas",
              "a step's timeout or the saga's deadline the workers never fired");

static const saga_kind compensating_kind =
    SAGA_KIND("compensating", "compensation_unfinished", "compensating saga",
              "compensating sagas", "a compensation command went unanswered and was never "
              "resent");

/* ------------------------------------------------------------ no timer */

/* A postgres text array of ids, "{a,b}", into a JSON array (ids need no
 * quoting). A new reference. */
static json_t *ids_from_pg_array(const char *text)
{
    json_t *a = json_array();
    if (a == NULL || text == NULL || text[0] != '{')
        return a;
    const char *p = text + 1;
    while (*p && *p != '}') {
        size_t n = strcspn(p, ",}");
        json_array_append_new(a, json_stringn(p, n));
        p += n;
        if (*p == ',')
            p++;
    }
    return a;
}

static int sweep_no_timer(rc_ctx *ctx, const saga_kind *k)
{
    PGresult *res = rc_query(ctx, "could not look for open sagas without a timer",
                             k->no_timer_sql, 0, NULL);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *def = PQgetvalue(res, i, 0);
        int64_t n = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        int64_t age = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        char subject[300], d[32];
        snprintf(subject, sizeof subject, "definition %s", def);
        json_t *detail = json_pack("{s:s, s:s, s:I, s:I, s:o}", "definition", def, "state",
                                   k->state, "count", (json_int_t)n, "oldest_update_ms",
                                   (json_int_t)age, "samples",
                                   ids_from_pg_array(PQgetvalue(res, i, 2)));
        rc_found(ctx, "no_timer", subject, n, ctx->mode == RC_CHECK ? RC_FOUND : RC_LEFT,
                 detail,
                 "definition %s: %" PRId64 " %s without a timer (ferry.saga.deadline is NULL; "
                 "the oldest untouched for %s): nothing will ever move %s%s", def, n,
                 n == 1 ? k->one : k->what, rc_duration(age, d, sizeof d),
                 n == 1 ? "it" : "them",
                 ctx->mode == RC_CHECK ? "" : "; left: cancel (ferry_saga_cancel) or mend "
                                              "by hand");
    }
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------ overdue */

/* The name of step i of the saga's definition, when that definition is
 * loaded under the saga's hash; else "#i". */
static const char *step_name(const ferry_saga_def *def, const char *hash, long i, char *buf,
                             size_t len)
{
    if (def != NULL && strcmp(def->hash, hash) == 0 && i >= 0 && (size_t)i < def->step_count)
        return def->steps[i].name;
    snprintf(buf, len, "#%ld", i);
    return buf;
}

static void agg_add(agg *g, const char *id, int64_t overdue_ms, const char *step,
                    int64_t attempts)
{
    g->count++;
    if (overdue_ms > g->max_overdue_ms)
        g->max_overdue_ms = overdue_ms;
    if (json_array_size(g->samples) < SAMPLES_MAX)
        json_array_append_new(g->samples, json_string(id));
    if (step != NULL) {
        json_t *c = json_object_get(g->steps, step);
        json_object_set_new(g->steps, step,
                            json_integer((c ? json_integer_value(c) : 0) + 1));
        if (attempts > g->max_attempts)
            g->max_attempts = attempts;
    }
}

/* Act: fire one saga's timer. Returns its class (plan.c reads the
 * result), or -1 after an operational error (reported; the sweep stops).
 * *elsewhere: a worker got there first. *why (RC_SAGA_REFUSED): the
 * engine's or driver's message. */
static int fire(rc_ctx *ctx, const saga_kind *k, const char *id, int *elsewhere,
                char *why, size_t why_len)
{
    int fired = 0;
    ferry_error err;
    ferry_code rc = ferry_saga_fire_timer(ctx->conn, ctx->sagas, id, 0, &fired, &err);
    int cls = rc_saga_fire_class(rc, err.field, err.sqlstate, fired, elsewhere);
    if (cls == RC_SAGA_REFUSED)
        snprintf(why, why_len, "%s", err.message);
    if (cls < 0)
        return rc_error(ctx, "could not fire the timer of saga %s: %s", id, err.message);
    if (cls != RC_SAGA_FIRE)
        return cls;
    /* The engine found nothing due. Fine if a worker fired it meanwhile
     * (then it is no longer overdue); not if the row still says overdue. */
    char grace[24];
    snprintf(grace, sizeof grace, "%" PRId64, ctx->budgets->saga_grace_ms);
    const char *p[2] = {id, grace};
    PGresult *res = rc_query(ctx, "could not re-read a saga after firing its timer",
                             k->recheck_sql, 2, p);
    if (res == NULL)
        return -1;
    int still = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
    PQclear(res);
    return rc_saga_recheck(still, elsewhere);
}

/* "1 running saga", "3 running sagas". */
static const char *sagas_word(const saga_kind *k, int64_t n)
{
    return n == 1 ? k->one : k->what;
}

/* The report: every aggregate as one finding, "definition D: N sagas
 * past their timer (most overdue by T[; compensating ...])" and its fate,
 * its outcome rc_saga_outcome's. */
static void report(rc_ctx *ctx, const saga_kind *k, aggs *a)
{
    int comp = k == &compensating_kind;
    for (size_t i = 0; i < a->n; i++) {
        agg *g = &a->v[i];
        char subject[300], od[32], gr[32], steps[512] = "", head[1024];
        snprintf(subject, sizeof subject, "definition %s", g->definition);
        rc_duration(g->max_overdue_ms, od, sizeof od);
        rc_duration(ctx->budgets->saga_grace_ms, gr, sizeof gr);
        if (comp && json_object_size(g->steps) > 0) {
            /* "; compensating inventory x2, payment x1, up to 4 attempts so far" */
            const char *name;
            json_t *v;
            size_t used = 0;
            json_object_foreach(g->steps, name, v) {
                int n = snprintf(steps + used, sizeof steps - used, "%s%s x%" JSON_INTEGER_FORMAT,
                                 used ? ", " : "; compensating ", name, json_integer_value(v));
                if (n < 0 || (size_t)n >= sizeof steps - used)
                    break;
                used += (size_t)n;
            }
            snprintf(steps + used, sizeof steps - used, ", up to %" PRId64 " %s so far",
                     g->max_attempts, g->max_attempts == 1 ? "attempt" : "attempts");
        }
        snprintf(head, sizeof head, "definition %s: %" PRId64 " %s past %s timer (most overdue "
                 "by %s%s)", g->definition, g->count, sagas_word(k, g->count),
                 g->count == 1 ? "its" : "their", od, steps);
        json_t *detail = json_pack("{s:s, s:s, s:I, s:I, s:O}", "definition", g->definition,
                                   "state", k->state, "count", (json_int_t)g->count,
                                   "most_overdue_ms", (json_int_t)g->max_overdue_ms,
                                   "samples", g->samples);
        if (detail && comp) {
            json_object_set(detail, "steps", g->steps);
            json_object_set_new(detail, "max_attempts", json_integer(g->max_attempts));
        }
        const ferry_saga_def *def = ferry_saga_registry_find(ctx->sagas, g->definition);
        const rc_outcome outcome = rc_saga_outcome(g->cls, g->count, g->elsewhere);
        switch (g->cls) {
        case RC_SAGA_FOUND:
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s, beyond the %s grace: %s", head, gr, k->cause);
            break;
        case RC_SAGA_FIRED:
            if (detail)
                json_object_set_new(detail, "fired_by_a_worker",
                                    json_integer(g->elsewhere));
            if (outcome == RC_PENDING)      /* not ours: not counted as a repair */
                rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                         "%s: a worker fired %s meanwhile", head,
                         g->count == 1 ? "it" : "them");
            else if (g->elsewhere > 0)
                rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                         "%s: fired the missed %s (%" PRId64 " of them a worker fired "
                         "meanwhile)", head, g->count == 1 ? "timer" : "timers", g->elsewhere);
            else
                rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                         "%s: fired the missed %s", head, g->count == 1 ? "timer" : "timers");
            break;
        case RC_SAGA_NOT_LOADED:
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s left: definition %s not loaded: pass --sagas DIR", head,
                     g->definition);
            break;
        case RC_SAGA_HASH:
            if (detail)
                json_object_set_new(detail, "stored_hash", json_string(g->hash));
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s left: stored under definition hash %s, the loaded %s has hash %s",
                     head, g->hash, g->definition, def ? def->hash : "?");
            break;
        case RC_SAGA_STILL_DUE:
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s left: the engine found no timeout due, so ferry.saga.deadline "
                     "disagrees with the stored engine state (ferry.saga.engine)", head);
            break;
        case RC_SAGA_BUSY:
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s left: another session held the saga's row; the next pass tries "
                     "again", head);
            break;
        case RC_SAGA_FIRE:          /* a plan, never what became of a saga */
            json_decref(detail);
            break;
        case RC_SAGA_REFUSED:
            if (detail)
                json_object_set_new(detail, "error", json_string(g->why ? g->why : ""));
            rc_found(ctx, k->problem, subject, g->count, outcome, detail,
                     "%s left: the timeout was refused: %s", head, g->why ? g->why : "?");
            break;
        }
    }
}

/* lock_timeout for the firings (a sweep never queues behind a worker
 * that holds a saga), restored afterwards. */
static int set_lock_timeout(rc_ctx *ctx, const char *value)
{
    const char *p[1] = {value};
    PGresult *res = rc_query(ctx, "could not set lock_timeout",
                             "SELECT set_config('lock_timeout', $1, false)", 1, p);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* The fence: the reconciler's lease must still be ours (rc_begin renews
 * it when due), checked before every firing (FENCE_EVERY). 0, or -1 after
 * rc_error: stop acting. */
#define FENCE_EVERY 1

static int fence(rc_ctx *ctx)
{
    ferry_error err;
    if (rc_begin(ctx, &err) != FERRY_OK)
        return rc_error(ctx, "stopped firing saga timers: %s", err.message);
    rc_rollback(ctx);
    return 0;
}

static int sweep_overdue(rc_ctx *ctx, const saga_kind *k)
{
    aggs a = {0};
    int status = 0;
    char grace[24], limit[16], cutoff[64], after_deadline[64] = "-infinity";
    char saved_lock[64] = "", after_id[FERRY_UUID_STRING_SIZE] = "";
    snprintf(grace, sizeof grace, "%" PRId64, ctx->budgets->saga_grace_ms);
    int batch = ctx->budgets->batch > 0 ? ctx->budgets->batch : 1000;
    snprintf(limit, sizeof limit, "%d", batch);
    int repair = ctx->mode == RC_REPAIR;
    /* Overdue means a timer before this cutoff, fixed for the whole sweep:
     * a timer fired here is set after it, so no saga is taken twice and
     * the sweep ends however fast the sagas it fires fall due again. */
    const char *gp[1] = {grace};
    PGresult *res = rc_query(ctx, "could not read the clock",
                             "SELECT (now() - $1::bigint * interval '1 millisecond')::text", 1,
                             gp);
    if (res == NULL)
        return -1;
    snprintf(cutoff, sizeof cutoff, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (repair) {
        res = rc_query(ctx, "could not read lock_timeout",
                       "SELECT current_setting('lock_timeout')", 0, NULL);
        if (res == NULL)
            return -1;
        snprintf(saved_lock, sizeof saved_lock, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        if (set_lock_timeout(ctx, "1s") != 0)
            return -1;
    }
    int64_t seen = 0;
    int since_fence = FENCE_EVERY;
    while (!rc_stopping(ctx) && status == 0) {
        const char *p[4] = {cutoff, after_deadline, after_id[0] ? after_id : NULL, limit};
        res = rc_query(ctx, "could not look for sagas past their timer", k->overdue_sql, 4, p);
        if (res == NULL) {
            status = -1;
            break;
        }
        int n = PQntuples(res);
        for (int i = 0; i < n && status == 0 && !(repair && rc_stopping(ctx)); i++) {
            const char *id = PQgetvalue(res, i, 0), *def_name = PQgetvalue(res, i, 1),
                       *hash = PQgetvalue(res, i, 2);
            int64_t overdue = strtoll(PQgetvalue(res, i, 4), NULL, 10);
            long cur = strtol(PQgetvalue(res, i, 5), NULL, 10);
            int64_t attempts = strtoll(PQgetvalue(res, i, 6), NULL, 10);
            const ferry_saga_def *def = ferry_saga_registry_find(ctx->sagas, def_name);
            char buf[24], why[FERRY_ERROR_MESSAGE_SIZE] = "";
            const char *step = k == &compensating_kind
                                   ? step_name(def, hash, cur, buf, sizeof buf) : NULL;
            int elsewhere = 0;
            /* Plan (plan.c), then act on what the plan says to fire. */
            int cls = rc_saga_plan(ctx->mode, def ? def->hash : NULL, hash);
            if (cls == RC_SAGA_FIRE) {
                if (since_fence >= FENCE_EVERY) {
                    if ((status = fence(ctx)) != 0)
                        break;
                    since_fence = 0;
                }
                since_fence++;
                if ((cls = fire(ctx, k, id, &elsewhere, why, sizeof why)) < 0) {
                    status = -1;
                    break;
                }
            }
            agg *g = aggs_get(&a, def_name, (rc_saga_class)cls, cls == RC_SAGA_HASH ? hash : NULL);
            if (g == NULL) {
                status = rc_error(ctx, "out of memory");
                break;
            }
            if (cls == RC_SAGA_REFUSED && g->why == NULL)
                g->why = strdup(why);
            g->elsewhere += elsewhere;
            agg_add(g, id, overdue, step, attempts);
            seen++;
            snprintf(after_deadline, sizeof after_deadline, "%s", PQgetvalue(res, i, 3));
            snprintf(after_id, sizeof after_id, "%s", id);
        }
        PQclear(res);
        rc_progress(ctx, "%" PRId64 " %s past their timer %s", seen, k->what,
                    repair ? "fired or looked at" : "found");
        if (n < batch)
            break;
    }
    if (repair && PQstatus(ctx->conn) == CONNECTION_OK) {
        rc_rollback(ctx);
        set_lock_timeout(ctx, saved_lock);
    }
    report(ctx, k, &a);
    aggs_free(&a);
    return status;
}

static int sweep(rc_ctx *ctx, const saga_kind *k)
{
    int status = sweep_overdue(ctx, k);
    if (PQstatus(ctx->conn) != CONNECTION_OK)
        return -1;
    if (!rc_stopping(ctx) && sweep_no_timer(ctx, k) != 0)
        status = -1;
    return status;
}

int rc_sweep_sagas(rc_ctx *ctx)
{
    return sweep(ctx, &running_kind);
}

int rc_sweep_compensations(rc_ctx *ctx)
{
    return sweep(ctx, &compensating_kind);
}
