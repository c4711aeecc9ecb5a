/*
 * sweep_dead.c — dead letters (sweep "dead_letters").
 *
 * A dead letter is a message that failed for good, on the relay side
 * (consumer '') or in a consumer; its key is parked behind it, so every
 * later message of the key waits too. Only a person can say whether the
 * cause is fixed (replay) or the message must go (discard), so this sweep
 * never decides: it carries out the decisions given on the command line
 * (repair --replay / --discard), then reports what remains, grouped per
 * (consumer, topic), as needing a decision.
 *
 * Each decision is one fenced transaction per letter: the letter is
 * locked, handed to ferry.replay_dead_letter() or
 * ferry.discard_dead_letter() (schemas/002_consumer.sql: both sides), and
 * recorded whole in ferry.dead_letter_log with who and why. A letter
 * already gone when locked was handled by someone else: skipped, so a
 * repeated or concurrent request changes nothing.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "reconcile.h"

#define TEXT_MAX 200            /* reasons quoted in findings */

/* ------------------------------------------------------------- targets */

static const char *action_flag(rc_dead_action a)
{
    return a == RC_REPLAY ? "--replay" : "--discard";
}

/* rc_query for the ids a target names: NULL after rc_error, or when it
 * names none (*none set, nothing said: the caller says how). */
static PGresult *lookup(rc_ctx *ctx, const char *what, const char *sql, int n,
                        const char *const *params, int *none)
{
    PGresult *res = rc_query(ctx, what, sql, n, params);
    *none = res != NULL && PQntuples(res) == 0;
    if (*none) {
        PQclear(res);
        return NULL;
    }
    return res;
}

/* The ids of the dead letters a target names, in the order to handle
 * them; NULL after rc_error (no such letter, or a failed query). */
static PGresult *resolve(rc_ctx *ctx, const rc_dead_request *rq)
{
    const char *flag = action_flag(rq->action);
    PGresult *res = NULL;
    int none;
    char *topic = NULL;
    switch (rc_dead_target_kind(rq->target)) {
    case RC_TARGET_ID: {
        const char *p[1] = {rq->target};
        res = lookup(ctx, "could not look up a dead letter",
                     "SELECT id FROM ferry.dead_letter WHERE id = $1::bigint", 1, p, &none);
        if (none)
            rc_error(ctx, "%s %s: no such dead letter", flag, rq->target);
        return res;
    }
    case RC_TARGET_UUID: {
        const char *p[1] = {rq->target};
        res = lookup(ctx, "could not look up the dead letters of a message",
                     "SELECT id FROM ferry.dead_letter WHERE message_id = $1::uuid "
                     "ORDER BY id", 1, p, &none);
        if (none)
            rc_error(ctx, "%s %s: no dead letter of that message id", flag, rq->target);
        return res;
    }
    case RC_TARGET_KEY: {
        topic = strdup(rq->target);
        if (topic == NULL) {
            rc_error(ctx, "out of memory");
            return NULL;
        }
        char *key = strchr(topic, '/');
        *key++ = '\0';
        const char *p[2] = {topic, key};
        res = lookup(ctx, "could not look up the dead letters of a key",
                     "SELECT id FROM ferry.dead_letter WHERE topic = $1 AND aggregateid = $2 "
                     "ORDER BY seq, consumer, id", 2, p, &none);
        if (none)
            rc_error(ctx, "%s %s: no dead letter of topic \"%s\", key \"%s\"", flag,
                     rq->target, topic, key);
        free(topic);
        return res;
    }
    case RC_TARGET_BAD:
        break;
    }
    rc_error(ctx, "%s %s: not a dead letter id (digits), a message id (UUID) or TOPIC/KEY",
             flag, rq->target);
    return NULL;
}

/* ------------------------------------------------------------ decisions */

static const char LOCK_SQL[] =
    "SELECT to_jsonb(d)::text, d.consumer, d.topic, d.aggregateid, d.message_id, d.seq, "
    "       left(d.reason, $2::int) "
    "  FROM ferry.dead_letter d WHERE d.id = $1::bigint FOR UPDATE";

static const char LOG_SQL[] =
    "INSERT INTO ferry.dead_letter_log (dead_letter_id, message_id, consumer, topic, "
    "                                   aggregateid, seq, action, actor, reason, letter) "
    "SELECT (l->>'id')::bigint, (l->>'message_id')::uuid, l->>'consumer', l->>'topic', "
    "       l->>'aggregateid', (l->>'seq')::bigint, $2, $3, $4, l "
    "  FROM (SELECT $1::jsonb AS l) s";

/* The report of a decision carried out: letter is the locked row
 * (LOCK_SQL's columns). */
static void decided(rc_ctx *ctx, const rc_dead_request *rq, const char *id,
                    const PGresult *letter, const char *reason)
{
    const int replay = rq->action == RC_REPLAY;
    const char *consumer = PQgetvalue(letter, 0, 1), *topic = PQgetvalue(letter, 0, 2);
    const char *key = PQgetvalue(letter, 0, 3), *message = PQgetvalue(letter, 0, 4);
    int64_t seq = rc_int_at(letter, 0, 5);
    const char *why = PQgetvalue(letter, 0, 6);
    char side[300], effect_buf[400], subject[64];
    if (consumer[0] == '\0')
        snprintf(side, sizeof side, "the relay's");
    else
        snprintf(side, sizeof side, "consumer %s's", consumer);
    const char *effect = rc_dead_effect(replay, consumer, effect_buf, sizeof effect_buf);
    snprintf(subject, sizeof subject, "dead letter %s", id);
    json_t *detail = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s}", "id", id,
                               "action", replay ? "replay" : "discard", "message_id", message,
                               "consumer", consumer, "topic", topic, "seq", (json_int_t)seq,
                               "key", key, "actor", ctx->actor ? ctx->actor : "", "reason",
                               reason, "failed_because", why);
    rc_found(ctx, "dead_letter", subject, 1, RC_REPAIRED, detail,
             "dead letter %s (%s, message %s, topic %s key %s, position %" PRId64 ", failed: "
             "%s) %s; by %s (\"%s\"); the letter is kept in ferry.dead_letter_log",
             id, side, message, topic, key, seq, why, effect, ctx->actor ? ctx->actor : "?",
             reason);
}

/*
 * Carry out one decision on one letter, in one fenced transaction: detect
 * (lock the letter: gone means someone else handled it), plan (the SQL
 * function and the reason to record: plan.c), act (the function, the
 * record in ferry.dead_letter_log, commit), report. 0 done or nothing to
 * do, -1 after rc_error; *lost when the reconciler's lease is gone.
 */
static int decide(rc_ctx *ctx, const rc_dead_request *rq, const char *id, int *lost)
{
    const int replay = rq->action == RC_REPLAY;
    const char *verb = replay ? "replay" : "discard";
    char reason_buf[512];
    const char *reason = rc_dead_reason(replay, ctx->actor, ctx->reason, reason_buf,
                                        sizeof reason_buf);
    char deed[96];                    /* "the replay of dead letter 12" */
    snprintf(deed, sizeof deed, "the %s of dead letter %s", verb, id);
    if (rc_act_begin(ctx, deed, lost) != 0)
        return -1;
    char textmax[16];
    snprintf(textmax, sizeof textmax, "%d", TEXT_MAX);
    const char *lp[2] = {id, textmax};
    int busy = 0;
    char what[160];
    snprintf(what, sizeof what, "could not lock dead letter %s", id);
    PGresult *letter = rc_act(ctx, what, LOCK_SQL, 2, lp, &busy);
    if (letter == NULL) {
        if (!busy)
            return -1;
        char subject[64];
        snprintf(subject, sizeof subject, "dead letter %s", id);
        rc_found(ctx, "dead_letter", subject, 1, RC_LEFT,
                 json_pack("{s:s, s:s, s:s}", "id", id, "action", verb, "target", rq->target),
                 "dead letter %s was not %s: another session held it past the lock timeout; "
                 "run repair %s %s again", id, replay ? "replayed" : "discarded",
                 action_flag(rq->action), rq->target);
        return 0;
    }
    if (PQntuples(letter) == 0) {
        /* Replayed or discarded by someone else (or an earlier request of
         * this pass) since we looked it up: done already. */
        PQclear(letter);
        rc_rollback(ctx);
        return 0;
    }

    const char *fp[1] = {id};
    snprintf(what, sizeof what, "could not %s dead letter %s", verb, id);
    PGresult *done = rc_act(ctx, what, rc_dead_action_sql(replay), 1, fp, NULL);
    if (done == NULL) {
        PQclear(letter);
        return -1;
    }
    int did = PQntuples(done) == 1 && PQgetvalue(done, 0, 0)[0] == 't';
    PQclear(done);
    if (!did) {             /* cannot happen under the row lock; harmless */
        PQclear(letter);
        rc_rollback(ctx);
        return 0;
    }
    const char *gp[4] = {PQgetvalue(letter, 0, 0), verb, ctx->actor ? ctx->actor : "", reason};
    snprintf(what, sizeof what, "could not record the %s of dead letter %s", verb, id);
    PGresult *logged = rc_act(ctx, what, LOG_SQL, 4, gp, NULL);
    if (logged == NULL) {
        PQclear(letter);
        return -1;
    }
    PQclear(logged);
    if (rc_act_commit(ctx, deed) != 0) {
        PQclear(letter);
        return -1;
    }
    decided(ctx, rq, id, letter, reason);
    PQclear(letter);
    return 0;
}

/*
 * Two opposite decisions that name one letter, by whatever names (its id,
 * its message id, its TOPIC/KEY): which one was meant? rc_config.c refuses
 * the same name twice; only the letters tell the rest. 1 with why
 * written, naming both flags; else 0.
 */
static int two_decisions(const rc_dead_request *rq, PGresult *const *ids, size_t n, char *why,
                         size_t len)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            if (rq[i].action == rq[j].action)
                continue;       /* the same decision twice: the second finds it done */
            for (int a = 0; a < PQntuples(ids[i]); a++)
                for (int b = 0; b < PQntuples(ids[j]); b++) {
                    const char *id = PQgetvalue(ids[i], a, 0);
                    if (strcmp(id, PQgetvalue(ids[j], b, 0)) != 0)
                        continue;
                    snprintf(why, len, "%s %s and %s %s: one decision per dead letter (both "
                             "name dead letter %s)", action_flag(rq[i].action), rq[i].target,
                             action_flag(rq[j].action), rq[j].target, id);
                    return 1;
                }
        }
    return 0;
}

/*
 * Every target is looked up before anything is done: a mistyped one (no
 * such letter, not a target at all) stops the whole set, because the
 * person who typed it may have meant something else by the others too;
 * so do two opposite decisions on one letter (RC_EXIT_USAGE, refused
 * written, when refused is not NULL; else an error of the sweep).
 */
static int requests(rc_ctx *ctx, int *lost, char *refused, size_t len)
{
    PGresult **ids = calloc(ctx->n_requests, sizeof *ids);
    if (ids == NULL)
        return rc_error(ctx, "out of memory");
    int bad = 0;
    for (size_t i = 0; i < ctx->n_requests; i++)
        if ((ids[i] = resolve(ctx, &ctx->requests[i])) == NULL)
            bad++;
    int rc = 0;
    char why[600];
    if (bad == 0 && two_decisions(ctx->requests, ids, ctx->n_requests, why, sizeof why)) {
        if (refused != NULL) {
            snprintf(refused, len, "%s", why);
            rc = RC_EXIT_USAGE;
        } else {
            rc = rc_error(ctx, "no dead letter was replayed or discarded: %s", why);
        }
    } else if (bad > 0) {
        rc = rc_error(ctx, "no dead letter was replayed or discarded: %d of the %zu targets "
                      "given could not be used (above)", bad, ctx->n_requests);
    } else {
        for (size_t i = 0; i < ctx->n_requests && !*lost; i++) {
            const rc_dead_request *rq = &ctx->requests[i];
            int n = PQntuples(ids[i]);
            for (int r = 0; r < n && !*lost; r++) {
                if (rc_stopping(ctx))
                    break;
                if (decide(ctx, rq, PQgetvalue(ids[i], r, 0), lost) != 0)
                    rc = -1;
                if (n > 1)
                    rc_progress(ctx, "%s %s: %d of %d dead letters", action_flag(rq->action),
                                rq->target, r + 1, n);
            }
        }
    }
    for (size_t i = 0; i < ctx->n_requests; i++)
        PQclear(ids[i]);
    free(ids);
    return rc;
}

/* ------------------------------------------------------------ remaining */

/*
 * Per (consumer, topic): letters, keys, the oldest, a few ids (oldest
 * first), the oldest one's reason; and how many messages wait behind the
 * parked keys (relay side: the key's unpublished rows, through
 * outbox_position with the letter's shard; consumer side: its held
 * messages of the key). Dead letters are few; the table is read whole.
 */
static const char REMAINING_SQL[] =
    "WITH g AS ("
    "  SELECT consumer, topic, count(*) AS n, count(DISTINCT aggregateid) AS keys, "
    "         min(failed_at) AS oldest, "
    "         to_json((array_agg(id ORDER BY failed_at, id))[1:5])::text AS samples, "
    "         left((array_agg(reason ORDER BY failed_at, id))[1], $1::int) AS reason "
    "    FROM ferry.dead_letter GROUP BY consumer, topic), "
    "k AS (SELECT DISTINCT consumer, topic, aggregateid, shard FROM ferry.dead_letter), "
    "w AS ("
    "  SELECT k.consumer, k.topic, sum(CASE WHEN k.consumer = '' THEN "
    "           (SELECT count(*) FROM ferry.outbox o WHERE o.shard = k.shard "
    "              AND o.topic = k.topic AND o.aggregateid = k.aggregateid "
    "              AND o.published_at IS NULL) "
    "         ELSE (SELECT count(*) FROM ferry.inbox_held h WHERE h.consumer = k.consumer "
    "                 AND h.topic = k.topic AND h.key = k.aggregateid) END) AS waiting "
    "    FROM k GROUP BY k.consumer, k.topic) "
    "SELECT g.consumer, g.topic, g.n, g.keys, "
    "       floor(extract(epoch FROM now() - g.oldest) * 1000)::bigint, g.samples, g.reason, "
    "       coalesce(w.waiting, 0) "
    "  FROM g LEFT JOIN w USING (consumer, topic) "
    " ORDER BY g.consumer, g.topic";

static int remaining(rc_ctx *ctx)
{
    char textmax[16];
    snprintf(textmax, sizeof textmax, "%d", TEXT_MAX);
    const char *p[1] = {textmax};
    PGresult *res = rc_query(ctx, "could not list the dead letters", REMAINING_SQL, 1, p);
    if (res == NULL)
        return -1;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *consumer = PQgetvalue(res, r, 0), *topic = PQgetvalue(res, r, 1);
        int64_t n = rc_int_at(res, r, 2), keys = rc_int_at(res, r, 3);
        int64_t age = rc_int_at(res, r, 4);
        const char *reason = PQgetvalue(res, r, 6);
        int64_t waiting = rc_int_at(res, r, 7);
        int relay = consumer[0] == '\0';
        json_t *samples = json_loads(PQgetvalue(res, r, 5), 0, NULL);
        json_t *detail = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:I}", "consumer",
                                   relay ? "relay" : consumer, "topic", topic, "letters",
                                   (json_int_t)n, "keys", (json_int_t)keys, "oldest_age_ms",
                                   (json_int_t)age, "oldest_reason", reason, "waiting",
                                   (json_int_t)waiting);
        if (detail != NULL && samples != NULL)
            json_object_set_new(detail, "samples", samples);
        else
            json_decref(samples);
        /* The ids, for the sentence: "3, 4, 9". */
        char ids[128] = "";
        size_t used = 0;
        json_t *s = detail ? json_object_get(detail, "samples") : NULL;
        for (size_t i = 0; i < json_array_size(s) && used < sizeof ids; i++) {
            int w = snprintf(ids + used, sizeof ids - used, "%s%" JSON_INTEGER_FORMAT,
                             i ? ", " : "", json_integer_value(json_array_get(s, i)));
            if (w < 0)
                break;
            used += (size_t)w;
        }
        char who[300], subject[600], d[32];
        if (relay)
            snprintf(who, sizeof who, "relay");
        else
            snprintf(who, sizeof who, "consumer %s", consumer);
        snprintf(subject, sizeof subject, "%s, topic %s", who, topic);
        char behind[96] = "";
        if (waiting > 0)
            snprintf(behind, sizeof behind, "; %" PRId64 " later message%s wait%s behind them",
                     waiting, waiting == 1 ? "" : "s", waiting == 1 ? "s" : "");
        rc_found(ctx, "dead_letter", subject, n, ctx->mode == RC_CHECK ? RC_FOUND : RC_LEFT,
                 detail,
                 "%s, topic %s: %" PRId64 " dead letter%s on %" PRId64 " key%s, the oldest %s "
                 "old (id%s %s%s; its reason: %s)%s: needs a decision: repair --replay "
                 "ID|TOPIC/KEY, or --discard ID|TOPIC/KEY --reason WHY",
                 who, topic, n, n == 1 ? "" : "s", keys, keys == 1 ? "" : "s",
                 rc_duration(age, d, sizeof d), n == 1 ? "" : "s", ids, n > 5 ? ", ..." : "",
                 reason, behind);
    }
    PQclear(res);
    return 0;
}

int rc_dead_letter_requests(rc_ctx *ctx, char *refused, size_t len)
{
    int lost = 0;
    if (ctx->mode != RC_REPAIR || ctx->n_requests == 0)
        return 0;
    int rc = requests(ctx, &lost, refused, len);
    if (rc == RC_EXIT_USAGE)
        return rc;
    return rc != 0 || lost ? -1 : 0;
}

int rc_sweep_dead_letters(rc_ctx *ctx)
{
    int rc = 0, lost = 0;
    if (ctx->mode == RC_REPAIR && ctx->n_requests > 0 && requests(ctx, &lost, NULL, 0) != 0)
        rc = -1;
    if (lost || PQstatus(ctx->conn) != CONNECTION_OK)
        return -1;
    if (remaining(ctx) != 0)
        rc = -1;
    return rc;
}
