/*
 * sweep_outbox.c — the outbox side of the relay (sweep "outbox"): what
 * the relays should have published and did not.
 *
 *   dead_lease      a shard lease, unexpired, whose holder is dead: it has
 *                   no session in the database (a relay names both of its
 *                   sessions "ferry-relay <holder>"), or its heartbeat
 *                   lease "relay:<holder>" expired. Until the lease runs
 *                   out nobody publishes the shard. Repair expires the
 *                   shard leases and the heartbeat, so that a live relay
 *                   takes them at its next lease tick (relays take
 *                   ceil(shards / live heartbeats): the dead heartbeat
 *                   must go too, or the live ones would not take it all).
 *   over_attempted  unpublished rows attempted budgets->max_attempts times
 *                   or more (the relay's own limit may be higher, or the
 *                   relay that counted died). Repair moves them to the
 *                   relay's dead letters through the relay's own path,
 *                   ferry.outbox_dead_letter: the key is parked behind
 *                   the letter until someone replays or discards it.
 *   lag             unpublished rows ready for longer than the lag budget,
 *                   per shard. The reconciler cannot publish (only a
 *                   relay talks to Kafka), so it can only remove a cause:
 *                   lag behind a dead lease expired in this pass (a live
 *                   relay taking over) is pending; anything else is
 *                   left, with the reason.
 *
 * The order matters: dead leases first (lag on their shards is then
 * repaired), over-attempted rows next (their keys are parked, so their
 * lag belongs to the dead-letter sweep and is not counted here).
 *
 * Detection is read-only and indexed: the lease table is small; the
 * over-attempted rows come from the partial index outbox_attempted; lag
 * reads the primary key as a range (ids are UUIDv7, time-ordered), so a
 * large healthy outbox of fresh rows is not read.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "reconcile.h"

#define SHARDS_MAX 4096         /* ferry.settings.shard_count's CHECK */
#define TEXT_MAX 200            /* reasons and errors quoted in findings */

/* What the dead-lease step did, for the lag step. */
typedef struct outbox_pass {
    unsigned char expired[SHARDS_MAX];  /* shard's dead lease expired in this pass */
    int lost;                           /* the reconciler's lease is lost: act no more */
} outbox_pass;

/* ------------------------------------------------------------ dead leases */

/*
 * A holder is dead when no session of the database carries its name (the
 * server keeps 63 bytes of application_name, so compare with the same
 * cut), or when its heartbeat lease exists and expired. pg_stat_activity
 * shows application_name of every role's sessions to every role, so the
 * reconciler's own role suffices. The server keeps printable ASCII only
 * in application_name (others become '?', or escapes, by version): for a
 * holder named otherwise its session cannot be told, so only its
 * heartbeat judges it — never expire a live relay's leases on a guess.
 *
 * Having no session is not enough on its own: a relay reconnecting after
 * a database restart has none for a moment. It must also have stopped
 * renewing its heartbeat. A relay renews every third of its TTL, so
 * silence must outlast that period and a margin: not renewed for half its
 * TTL, or a third of it and 5 s, whichever is shorter (up to a TTL of 30 s
 * that is half of it; beyond, a third and 5 s). A cap shorter than the
 * period (once 10 s, whatever the TTL) counted a relay that lost its
 * session as dead for part of every renewal cycle: with a TTL of 60 s the
 * reconciler expired a reconnecting relay's leases with 49 s left on its
 * heartbeat. A relay killed with kill -9 is seen dead one such silence
 * after its last renewal, or when its heartbeat expires.
 *
 * A session counts only if its role could be a relay's (a member of
 * ferry_relay, or the schema's owner): any role may name its session
 * "ferry-relay NAME", and a writer's so named kept a dead relay's shards
 * held until its heartbeat expired (an outside audit).
 */
#define HOLDER_SESSION(h)                                                                  \
    "(" h " !~ '^[ -~]*$' "                                                                \
    " OR EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "   \
    "            AND a.application_name = left('ferry-relay ' || " h ", 63) "              \
    "            AND (pg_has_role(a.usesysid, 'ferry_relay', 'MEMBER') "                    \
    "                 OR a.usesysid = (SELECT nspowner FROM pg_namespace "                  \
    "                                   WHERE nspname = 'ferry'))))"
#define HOLDER_SILENT(h)                                                                   \
    "NOT EXISTS (SELECT 1 FROM ferry.lease hs WHERE hs.name = 'relay:' || " h              \
    "            AND hs.renewed_at > now() - least((hs.expires_at - hs.renewed_at) / 2, "   \
    "                                                (hs.expires_at - hs.renewed_at) / 3 "  \
    "                                                + interval '5 seconds'))"
#define HOLDER_DEAD(h)                                                                     \
    "((NOT " HOLDER_SESSION(h) " AND " HOLDER_SILENT(h) ") "                               \
    " OR EXISTS (SELECT 1 FROM ferry.lease hb WHERE hb.name = 'relay:' || " h              \
    "            AND hb.expires_at <= now()))"

/* Per dead holder: the leases to expire (its unexpired shard leases, and
 * its heartbeat if still live: names and epochs as array literals, which
 * the server quotes), its shards, whether it has a session, its
 * heartbeat. */
static const char DEAD_LEASES_SQL[] =
    "WITH s AS ("
    "  SELECT l.name, l.holder, l.epoch, l.expires_at, "
    "         " HOLDER_SESSION("l.holder") " AS session "
    "    FROM ferry.lease l "
    "   WHERE starts_with(l.name, 'shard:') AND l.holder IS NOT NULL AND l.expires_at > now()) "
    "SELECT s.holder, count(*), "
    "       array_cat(array_agg(s.name ORDER BY length(s.name), s.name), "
    "                 CASE WHEN hb.holder = s.holder AND hb.expires_at > now() "
    "                      THEN ARRAY[hb.name] ELSE '{}' END)::text, "
    "       array_cat(array_agg(s.epoch ORDER BY length(s.name), s.name), "
    "                 CASE WHEN hb.holder = s.holder AND hb.expires_at > now() "
    "                      THEN ARRAY[hb.epoch] ELSE '{}' END)::text, "
    "       json_agg(CASE WHEN substr(s.name, 7) ~ '^[0-9]{1,9}$' THEN substr(s.name, 7)::int END "
    "                ORDER BY length(s.name), s.name)::text, "
    "       string_agg(substr(s.name, 7), ', ' ORDER BY length(s.name), s.name), "
    "       bool_or(s.session), "
    "       hb.epoch, hb.holder = s.holder AND hb.expires_at > now(), "
    "       CASE WHEN hb.expires_at <= now() "
    "            THEN floor(extract(epoch FROM now() - hb.expires_at) * 1000)::bigint END, "
    "       floor(extract(epoch FROM max(s.expires_at) - now()) * 1000)::bigint "
    "  FROM s LEFT JOIN ferry.lease hb ON hb.name = 'relay:' || s.holder "
    " WHERE (NOT s.session AND " HOLDER_SILENT("s.holder") ") OR hb.expires_at <= now() "
    " GROUP BY s.holder, hb.name, hb.epoch, hb.holder, hb.expires_at "
    " ORDER BY s.holder";

/* Expire the leases listed ($2 names, $3 epochs) while still held by the
 * same holder ($1) under the same epochs, unexpired, and the holder still
 * dead: run twice, or after the relay came back, it changes nothing. */
static const char EXPIRE_SQL[] =
    "UPDATE ferry.lease l SET expires_at = now() "
    "  FROM unnest($2::text[], $3::bigint[]) AS t(name, epoch) "
    " WHERE l.name = t.name AND l.holder = $1 AND l.epoch = t.epoch AND l.expires_at > now() "
    "   AND " HOLDER_DEAD("$1") " "
    "RETURNING l.name";

static int dead_leases(rc_ctx *ctx, outbox_pass *op)
{
    PGresult *res = rc_query(ctx, "could not look for leases held by dead relays",
                             DEAD_LEASES_SQL, 0, NULL);
    if (res == NULL)
        return -1;
    int rc = 0;
    for (int r = 0; r < PQntuples(res) && PQstatus(ctx->conn) == CONNECTION_OK; r++) {
        const char *holder = PQgetvalue(res, r, 0);
        int64_t shards = rc_int_at(res, r, 1);
        const char *shard_list = PQgetvalue(res, r, 5);
        int session = rc_bool_at(res, r, 6);
        int hb_live = rc_bool_at(res, r, 8);
        int64_t hb_expired_ms = PQgetisnull(res, r, 9) ? -1 : rc_int_at(res, r, 9);
        int64_t runs_ms = rc_int_at(res, r, 10);
        char d1[32], d2[32], why[160];
        if (hb_expired_ms >= 0)
            snprintf(why, sizeof why, "its heartbeat lease relay:%s expired %s ago%s", holder,
                     rc_duration(hb_expired_ms, d1, sizeof d1),
                     session ? "" : " and it has no session in the database");
        else
            snprintf(why, sizeof why, "it has no session in the database");
        json_t *detail = json_pack("{s:s, s:I, s:b, s:s, s:I}", "holder", holder, "shards",
                                   (json_int_t)shards, "session", session, "heartbeat",
                                   hb_expired_ms >= 0 ? "expired" : hb_live ? "live" : "none",
                                   "lease_left_ms", (json_int_t)runs_ms);
        json_t *list = rc_json_at(res, r, 4);
        if (detail != NULL && list != NULL)
            json_object_set_new(detail, "shard_ids", list);
        else
            json_decref(list);
        char subject[300];
        snprintf(subject, sizeof subject, "relay %s", holder);

        if (ctx->mode == RC_CHECK) {
            rc_found(ctx, "dead_lease", subject, shards, RC_FOUND, detail,
                     "relay %s is dead (%s) but holds the leases of %" PRId64 " shard%s (%s) "
                     "for up to %s more: nobody publishes them until then",
                     holder, why, shards, shards == 1 ? "" : "s", shard_list,
                     rc_duration(runs_ms, d2, sizeof d2));
            continue;
        }

        int busy = 0;
        int64_t expired = 0;
        int hb_done = 0;
        if (rc_act_begin(ctx, "expiring dead leases", &op->lost) != 0) {
            json_decref(detail);
            rc = -1;
            break;          /* the lease is lost or the connection is gone */
        }
        const char *p[3] = {holder, PQgetvalue(res, r, 2), PQgetvalue(res, r, 3)};
        PGresult *up = rc_act(ctx, "could not expire the leases of a dead relay", EXPIRE_SQL, 3,
                              p, &busy);
        if (up != NULL) {
            if (rc_act_commit(ctx, "expiring dead leases") != 0) {
                PQclear(up);
                json_decref(detail);
                rc = -1;
                continue;
            }
            for (int i = 0; i < PQntuples(up); i++) {
                const char *name = PQgetvalue(up, i, 0);
                if (strncmp(name, "shard:", 6) == 0) {
                    long s = strtol(name + 6, NULL, 10);
                    if (s >= 0 && s < SHARDS_MAX)
                        op->expired[s] = 1;
                    expired++;
                } else {
                    hb_done = 1;
                }
            }
            PQclear(up);
        } else if (!busy) {
            json_decref(detail);
            rc = -1;
            continue;
        }
        if (detail != NULL)
            json_object_set_new(detail, "expired", json_integer(expired));
        if (busy) {
            rc_found(ctx, "dead_lease", subject, shards, RC_LEFT, detail,
                     "relay %s is dead (%s) and holds the leases of %" PRId64 " shard%s (%s); "
                     "they could not be expired now (a lease row stayed locked past the lock "
                     "timeout): run repair again",
                     holder, why, shards, shards == 1 ? "" : "s", shard_list);
        } else if (expired > 0) {
            rc_found(ctx, "dead_lease", subject, expired, RC_REPAIRED, detail,
                     "relay %s was dead (%s) and held the leases of %" PRId64 " shard%s (%s); "
                     "expired %" PRId64 " of them%s: a live relay takes them at its next "
                     "lease tick",
                     holder, why, shards, shards == 1 ? "" : "s", shard_list, expired,
                     hb_done ? " and its heartbeat" : "");
        } else {
            /* Nothing matched any more: it came back, renewed under a new
             * epoch, or another relay took over meanwhile. Not a problem
             * now, so not a finding. */
            json_decref(detail);
        }
    }
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------- over-attempted */

/*
 * Detect (per topic: rows, attempts, keys, samples, the first last error),
 * plan (rc_over_plan_move: repair, and anything found), act (batches of
 * moves, each its own fenced transaction), then the report: each topic's
 * verdict (rc_over_verdict_of) from what was found and what the moves did.
 */

/* One topic's over-attempted rows: what detection found, what the act did. */
typedef struct over_topic {
    char *topic;
    int64_t found;
    int64_t attempts_min, attempts_max, keys;
    char *last_error;           /* the first row's; NULL when none */
    json_t *samples;            /* a few ids; NULL when unread */
    int64_t moved;
    int64_t clash;              /* left: their id already has a relay dead letter */
} over_topic;

typedef struct over_topics {
    over_topic *v;
    size_t n;
} over_topics;

static over_topic *topic_find(over_topics *t, const char *topic, int add)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].topic, topic) == 0)
            return &t->v[i];
    if (!add)
        return NULL;
    over_topic *v = realloc(t->v, (t->n + 1) * sizeof *v);
    if (v == NULL)
        return NULL;
    t->v = v;
    char *name = strdup(topic);
    if (name == NULL)
        return NULL;
    t->v[t->n] = (over_topic){.topic = name};
    return &t->v[t->n++];
}

static void topics_free(over_topics *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].topic);
        free(t->v[i].last_error);
        json_decref(t->v[i].samples);
    }
    free(t->v);
}

/* attempts > 0 spelled out so that the partial index outbox_attempted
 * (attempts > 0 AND published_at IS NULL) applies whatever $1 is. */
static const char OVER_SQL[] =
    "SELECT o.topic, count(*), min(o.attempts), max(o.attempts), "
    "       count(DISTINCT o.aggregateid), "
    "       to_json((array_agg(o.id ORDER BY o.id))[1:5])::text, "   /* samples */
    "       left((array_agg(coalesce(o.last_error, 'none') ORDER BY o.id))[1], $2::int) "
    "  FROM ferry.outbox o "
    " WHERE o.attempts >= $1::int AND o.attempts > 0 AND o.published_at IS NULL "
    " GROUP BY o.topic ORDER BY o.topic";

/* The next batch, after the last id of the previous one: every row is
 * looked at once per pass, so the loop ends. */
static const char OVER_BATCH_SQL[] =
    "SELECT array_agg(id ORDER BY id)::text, (array_agg(id ORDER BY id DESC))[1]::text FROM ("
    "  SELECT o.id FROM ferry.outbox o "
    "   WHERE o.attempts >= $1::int AND o.attempts > 0 AND o.published_at IS NULL "
    "     AND o.id > $2::uuid "
    "   ORDER BY o.id LIMIT $3::int) b";

/* Move the batch to the relay's dead letters through
 * ferry.outbox_dead_letter (schema 9), the path the relay takes at its
 * max_attempts: re-checked under the row's lock, so a row published or
 * moved meanwhile is left alone ('gone'), and a row whose id already has
 * a relay dead letter stays in the outbox ('clash') rather than failing
 * the batch. The rows are not locked here first: FOR UPDATE needs an
 * UPDATE privilege on the outbox, which the role no longer has (schema
 * 29); the function locks each, as the owner, in id order. So the reason
 * quotes the attempts and last error as read just before (a relay's
 * attempt in between is not in it; the letter's attempts column is).
 * Per topic: rows moved, rows left by a clash. */
static const char OVER_MOVE_SQL[] =
    "WITH c AS MATERIALIZED ("
    "  SELECT o.id, o.topic, o.attempts, o.last_error FROM ferry.outbox o "
    "   WHERE o.id = ANY ($1::uuid[]) AND o.attempts >= $2::int AND o.published_at IS NULL "
    "   ORDER BY o.id), "
    "m AS MATERIALIZED ("
    "  SELECT c.topic, d.outcome FROM c, ferry.outbox_dead_letter(c.id, $2::int, false, "
    "         'reconciler: ' || c.attempts || ' delivery attempts, last error: ' "
    "           || coalesce(c.last_error, 'none')) d) "
    "SELECT topic, count(*) FILTER (WHERE outcome = 'moved'), "
    "       count(*) FILTER (WHERE outcome = 'clash') "
    "  FROM m GROUP BY topic";

/* Detect: the over-attempted rows per topic into t. 0, or -1 after rc_error. */
static int over_detect(rc_ctx *ctx, over_topics *t, int64_t *total)
{
    char max[16], textmax[16];
    snprintf(max, sizeof max, "%d", ctx->budgets->max_attempts);
    snprintf(textmax, sizeof textmax, "%d", TEXT_MAX);
    const char *p[2] = {max, textmax};
    PGresult *res = rc_query(ctx, "could not look for over-attempted outbox rows", OVER_SQL, 2,
                             p);
    if (res == NULL)
        return -1;
    *total = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        over_topic *tc = topic_find(t, PQgetvalue(res, r, 0), 1);
        const char *last_error = rc_str_at(res, r, 6);
        if (tc == NULL || (last_error != NULL && (tc->last_error = strdup(last_error)) == NULL)) {
            PQclear(res);
            return rc_error(ctx, "out of memory");
        }
        tc->found = rc_int_at(res, r, 1);
        tc->attempts_min = rc_int_at(res, r, 2);
        tc->attempts_max = rc_int_at(res, r, 3);
        tc->keys = rc_int_at(res, r, 4);
        tc->samples = rc_json_at(res, r, 5);
        *total += tc->found;
    }
    PQclear(res);
    return 0;
}

/* Act: move every over-attempted row, a batch at a time, each batch its
 * own fenced transaction; per topic, rows moved and rows left by a clash
 * (a topic the detection did not see is added). How it ended. */
static rc_act_end over_move(rc_ctx *ctx, outbox_pass *op, over_topics *t, int64_t total)
{
    char max[16], batch[16];
    snprintf(max, sizeof max, "%d", ctx->budgets->max_attempts);
    snprintf(batch, sizeof batch, "%d", ctx->budgets->batch > 0 ? ctx->budgets->batch : 1000);
    char last[64] = "00000000-0000-0000-0000-000000000000";
    int64_t moved = 0;
    for (;;) {
        if (rc_stopping(ctx))
            return RC_ACT_STOPPED;
        const char *bp[3] = {max, last, batch};
        PGresult *b = rc_query(ctx, "could not read a batch of over-attempted rows",
                               OVER_BATCH_SQL, 3, bp);
        if (b == NULL)
            return RC_ACT_FAILED;
        if (PQgetisnull(b, 0, 0)) {
            PQclear(b);
            return RC_ACT_DONE;
        }
        char *ids = strdup(PQgetvalue(b, 0, 0));
        snprintf(last, sizeof last, "%s", PQgetvalue(b, 0, 1));
        PQclear(b);
        if (ids == NULL) {
            rc_error(ctx, "out of memory");
            return RC_ACT_FAILED;
        }
        if (rc_act_begin(ctx, "moving over-attempted rows to the dead letters",
                         &op->lost) != 0) {
            free(ids);
            return RC_ACT_FAILED;
        }
        const char *mp[2] = {ids, max};
        int busy = 0;
        PGresult *m = rc_act(ctx, "could not move over-attempted rows to the dead letters",
                             OVER_MOVE_SQL, 2, mp, &busy);
        free(ids);
        if (m == NULL)
            return busy ? RC_ACT_BUSY : RC_ACT_FAILED;
        if (rc_act_commit(ctx, "moving over-attempted rows to the dead letters") != 0) {
            PQclear(m);
            return RC_ACT_FAILED;
        }
        for (int i = 0; i < PQntuples(m); i++) {
            over_topic *tc = topic_find(t, PQgetvalue(m, i, 0), 1);
            int64_t n = rc_int_at(m, i, 1);
            if (tc != NULL) {
                tc->moved += n;
                tc->clash += rc_int_at(m, i, 2);
            }
            moved += n;
        }
        PQclear(m);
        rc_progress(ctx, "over-attempted: %" PRId64 " of %" PRId64 " rows moved to the dead "
                    "letters", moved, total);
    }
}

/* The report: one topic's verdict as findings. */
static void over_report(rc_ctx *ctx, const over_topic *tc, const rc_over_verdict *v)
{
    const int max_attempts = ctx->budgets->max_attempts;
    const char *last_error = tc->last_error;
    json_t *detail = json_pack("{s:s, s:I, s:i, s:I, s:I, s:I, s:s?}", "topic", tc->topic,
                               "rows", (json_int_t)tc->found, "max_attempts", max_attempts,
                               "attempts_min", (json_int_t)tc->attempts_min, "attempts_max",
                               (json_int_t)tc->attempts_max, "keys", (json_int_t)tc->keys,
                               "last_error", last_error);
    if (detail != NULL && tc->samples != NULL)
        json_object_set(detail, "samples", tc->samples);
    char subject[300];
    snprintf(subject, sizeof subject, "topic %s", tc->topic);
    if (ctx->mode == RC_CHECK) {
        char range[48];
        if (tc->attempts_min == tc->attempts_max)
            snprintf(range, sizeof range, "%" PRId64, tc->attempts_min);
        else
            snprintf(range, sizeof range, "%" PRId64 " to %" PRId64, tc->attempts_min,
                     tc->attempts_max);
        rc_found(ctx, "over_attempted", subject, v->found, RC_FOUND, detail,
                 "%" PRId64 " unpublished row%s of topic %s (%" PRId64 " key%s) failed "
                 "%s delivery attempts, at or over the budget of %d (last error: %s): "
                 "they belong in the dead letters",
                 v->found, v->found == 1 ? "" : "s", tc->topic, tc->keys,
                 tc->keys == 1 ? "" : "s", range, max_attempts,
                 last_error ? last_error : "none");
        return;
    }
    if (detail != NULL) {
        json_object_set_new(detail, "moved", json_integer(tc->moved));
        if (tc->clash > 0)
            json_object_set_new(detail, "clash", json_integer(tc->clash));
    }
    if (v->repaired > 0)
        rc_found(ctx, "over_attempted", subject, v->repaired, RC_REPAIRED, json_incref(detail),
                 "%" PRId64 " unpublished row%s of topic %s failed at least %d delivery "
                 "attempts (last error: %s); moved to ferry.dead_letter with the reason, "
                 "where their keys wait for a replay or a discard",
                 v->repaired, v->repaired == 1 ? "" : "s", tc->topic, max_attempts,
                 last_error ? last_error : "none");
    /* Left by a clash: kept in the outbox, never dropped, until a
     * person removes the letter or the row (schemas/009). */
    if (v->clash > 0)
        rc_found(ctx, "over_attempted", subject, v->clash, RC_LEFT, json_incref(detail),
                 "%" PRId64 " unpublished row%s of topic %s failed at least %d delivery "
                 "attempts but cannot be moved: ferry.dead_letter already holds a relay "
                 "dead letter with the same message id, another message (emitted again "
                 "with an id used before?); a person decides which stands, deletes the "
                 "other, then runs repair again",
                 v->clash, v->clash == 1 ? "" : "s", tc->topic, max_attempts);
    if (v->left > 0)
        rc_found(ctx, "over_attempted", subject, v->left, RC_LEFT, json_incref(detail),
                 "%" PRId64 " unpublished row%s of topic %s failed at least %d delivery "
                 "attempts and could not be moved to the dead letters in this pass (%s): "
                 "run repair again",
                 v->left, v->left == 1 ? "" : "s", tc->topic, max_attempts, v->left_why);
    json_decref(detail);
}

static int over_attempted(rc_ctx *ctx, outbox_pass *op)
{
    over_topics t = {0};
    int64_t total = 0;
    if (over_detect(ctx, &t, &total) != 0) {
        topics_free(&t);
        return -1;
    }
    rc_act_end end = RC_ACT_DONE;
    if (rc_over_plan_move(ctx->mode, total))
        end = over_move(ctx, op, &t, total);
    for (size_t i = 0; i < t.n; i++) {
        const over_topic *tc = &t.v[i];
        rc_over_verdict v = rc_over_verdict_of(ctx->mode, tc->found, tc->moved, tc->clash, end);
        over_report(ctx, tc, &v);
    }
    topics_free(&t);
    return end == RC_ACT_FAILED ? -1 : 0;
}

/* -------------------------------------------------------------------- lag */

/*
 * Rows ready (available and created) longer ago than the budget $1 (ms),
 * per shard. ids are UUIDv7, 48 bits of Unix milliseconds first, and uuid
 * compares bytewise, so every row created before the cutoff has an id
 * below the smallest UUIDv7 of the cutoff's millisecond: the primary key
 * read as a range, and rows newer than the budget never read. Ids a
 * caller gave (ferry.emit_with_id) may be of any kind: those sorting after
 * every UUIDv7 of now (nearly all of them) are read as a second range and
 * judged by created_at; one sorting between the cutoff and now is seen
 * late, as is a row whose id came from a clock running ahead.
 *
 * Not counted: keys parked behind a relay dead letter (the dead-letter
 * sweep reports those), and rows waiting behind an earlier row of their
 * key that is not itself lagging (a delayed message holds its key's later
 * ones: order before availability). That second check probes each key
 * once, up to its last candidate, through outbox_position.
 *
 * Per shard: rows, oldest readiness and its row, the shard's lease and
 * whether its holder is alive; and the live relays overall.
 */
static const char LAG_SQL[] =
    "WITH c AS MATERIALIZED ("
    "  SELECT now() - $1::bigint * interval '1 millisecond' AS at, "
    "         (lpad(to_hex(floor(extract(epoch FROM now() - $1::bigint * interval '1 millisecond') "
    "                                * 1000)::bigint), 12, '0') "
    "          || '70008000000000000000')::uuid AS id), "
    /* One read of the old part of the outbox, through the primary key:
     * the ids before the budget's UUIDv7; and the ids after every UUIDv7
     * of now (ids of another kind a caller gave, which sort there but for
     * a sliver of them, and a clock running ahead), of which the rows
     * created before the budget. That bound is written out, not read from
     * c, so that the planner sees it (folding now()) and expects the few
     * rows it finds: taken as a third of the outbox, the estimate crossed
     * jit_above_cost and JIT compiling doubled the check's time. */
    "cand AS MATERIALIZED ("
    "  SELECT o.shard, o.id, o.topic, o.aggregateid, o.seq, "
    "         greatest(o.created_at, o.available_at) AS ready, "
    "         o.available_at < c.at AND o.created_at < c.at AS is_ready "
    "    FROM ferry.outbox o, c "
    "   WHERE o.id < c.id AND o.published_at IS NULL "
    "     AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "
    "                      AND d.topic = o.topic AND d.aggregateid = o.aggregateid) "
    "  UNION ALL "
    "  SELECT o.shard, o.id, o.topic, o.aggregateid, o.seq, "
    "         greatest(o.created_at, o.available_at), "
    "         o.available_at < c.at AND o.created_at < c.at "
    "    FROM ferry.outbox o, c "
    "   WHERE o.id > (lpad(to_hex(floor(extract(epoch FROM now()) * 1000)::bigint), 12, '0') "
    "                 || 'ffffffffffffffffffff')::uuid "
    "     AND o.created_at < now() - $1::bigint * interval '1 millisecond' "
    "     AND o.published_at IS NULL "
    "     AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "
    "                      AND d.topic = o.topic AND d.aggregateid = o.aggregateid)), "
    /* A row not ready yet (delayed) holds its key's later rows: the first
     * such position per key, from the same read. */
    "held AS (SELECT shard, topic, aggregateid, min(seq) AS from_seq FROM cand "
    "          WHERE NOT is_ready GROUP BY 1, 2, 3), "
    /* Per key, then per shard: hash aggregates, no sort of the backlog. */
    "keys AS ("
    "  SELECT cand.shard, cand.topic, cand.aggregateid, count(*) AS n, "
    "         min(cand.ready) AS oldest, min(cand.id::text)::uuid AS first_id "
    "    FROM cand LEFT JOIN held h USING (shard, topic, aggregateid) "
    "   WHERE cand.is_ready AND (h.from_seq IS NULL OR cand.seq < h.from_seq) "
    "   GROUP BY 1, 2, 3), "
    "agg AS (SELECT shard, sum(n)::bigint AS n, count(*) AS keys, min(oldest) AS oldest "
    "          FROM keys GROUP BY shard), "
    "first AS (SELECT DISTINCT ON (k.shard) k.shard, k.first_id AS id, k.topic, k.aggregateid "
    "            FROM keys k JOIN agg ON agg.shard = k.shard AND k.oldest = agg.oldest "
    "           ORDER BY k.shard, k.first_id), "
    "live AS (SELECT count(*) AS n, min(h.holder) AS one FROM ferry.lease h "
    "          WHERE starts_with(h.name, 'relay:') AND h.holder IS NOT NULL "
    "            AND h.expires_at > now() "
    "            AND " HOLDER_SESSION("h.holder") ") "
    "SELECT agg.shard, agg.n, agg.keys, "
    "       floor(extract(epoch FROM now() - agg.oldest) * 1000)::bigint, "
    "       f.id, f.topic, f.aggregateid, "
    "       l.holder, l.holder IS NOT NULL AND l.expires_at > now(), "
    "       l.holder IS NOT NULL AND NOT " HOLDER_DEAD("l.holder") ", "
    "       live.n, live.one "
    "  FROM agg JOIN first f USING (shard) CROSS JOIN live "
    "  LEFT JOIN ferry.lease l ON l.name = 'shard:' || agg.shard "
    " ORDER BY agg.shard";

static int lag(rc_ctx *ctx, const outbox_pass *op)
{
    char budget[24];
    snprintf(budget, sizeof budget, "%" PRId64, ctx->budgets->outbox_lag_ms);
    const char *p[1] = {budget};
    PGresult *res = rc_query(ctx, "could not look for outbox rows past the lag budget", LAG_SQL,
                             1, p);
    if (res == NULL)
        return -1;
    char bud[32];
    rc_duration(ctx->budgets->outbox_lag_ms, bud, sizeof bud);
    for (int r = 0; r < PQntuples(res); r++) {
        int64_t shard = rc_int_at(res, r, 0), n = rc_int_at(res, r, 1);
        int64_t keys = rc_int_at(res, r, 2);
        int64_t age_ms = rc_int_at(res, r, 3);
        const char *id = PQgetvalue(res, r, 4), *topic = PQgetvalue(res, r, 5);
        const char *key = PQgetvalue(res, r, 6);
        const char *holder = rc_str_at(res, r, 7);
        int held = rc_bool_at(res, r, 8), alive = rc_bool_at(res, r, 9);
        int64_t live = rc_int_at(res, r, 10);
        const char *a_live = rc_str_at(res, r, 11);
        int expired_now = shard >= 0 && shard < SHARDS_MAX && op->expired[shard];

        /* Why it is not published, and whether this pass changed that. */
        char why[512];
        rc_outcome outcome = ctx->mode == RC_CHECK ? RC_FOUND : RC_LEFT;
        const char *state;
        if (expired_now && live > 0) {
            /* Its cause is repaired; the rows are the relay's to publish:
             * pending until it has, and a check right after still sees them. */
            state = "dead_lease_expired";
            if (ctx->mode == RC_REPAIR)
                outcome = RC_PENDING;
            snprintf(why, sizeof why, "the lease of its dead relay %s was expired in this "
                     "pass: a live relay (%s%s) takes the shard at its next lease tick",
                     holder ? holder : "?", a_live ? a_live : "?", live > 1 ? " or another" : "");
        } else if (expired_now) {
            state = "no_relay";
            snprintf(why, sizeof why, "the lease of its dead relay %s was expired in this pass, "
                     "but no relay is running to take the shard", holder ? holder : "?");
        } else if (held && alive) {
            state = "relay_behind";
            snprintf(why, sizeof why, "held by relay %s, which is alive but behind", holder);
        } else if (held) {
            state = "dead_holder";
            snprintf(why, sizeof why, "held by relay %s, which is dead (see dead_lease)%s",
                     holder, live == 0 ? "; and no relay is running" : "");
        } else if (live == 0) {
            state = "no_relay";
            snprintf(why, sizeof why, "no relay is running");
        } else {
            state = "unheld";
            snprintf(why, sizeof why, "no relay holds the shard yet (%" PRId64 " relay%s "
                     "running)", live, live == 1 ? "" : "s");
        }
        json_t *detail = json_pack("{s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:s, s:s?, s:s, s:I}",
                                   "shard", (json_int_t)shard, "rows", (json_int_t)n, "keys",
                                   (json_int_t)keys, "oldest_age_ms", (json_int_t)age_ms,
                                   "budget_ms", (json_int_t)ctx->budgets->outbox_lag_ms,
                                   "oldest_id", id, "oldest_topic", topic, "oldest_key", key,
                                   "holder", holder, "state", state, "live_relays",
                                   (json_int_t)live);
        char subject[32], age[32];
        snprintf(subject, sizeof subject, "shard %" PRId64, shard);
        /* The reconciler cannot publish: only a relay talks to Kafka. Lag
         * is repaired only through its cause, a dead lease expired above. */
        rc_found(ctx, "lag", subject, n, outcome, detail,
                 "shard %" PRId64 ": %" PRId64 " row%s of %" PRId64 " key%s unpublished for up "
                 "to %s (budget %s; oldest: %s key %s, id %s): %s",
                 shard, n, n == 1 ? "" : "s", keys, keys == 1 ? "" : "s",
                 rc_duration(age_ms, age, sizeof age), bud, topic, key, id, why);
    }
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------------ sweep */

int rc_sweep_outbox(rc_ctx *ctx)
{
    outbox_pass *op = calloc(1, sizeof *op);
    if (op == NULL)
        return rc_error(ctx, "out of memory");
    int rc = 0;
    if (dead_leases(ctx, op) != 0)
        rc = -1;
    if (PQstatus(ctx->conn) == CONNECTION_OK && !rc_stopping(ctx) && !op->lost &&
        over_attempted(ctx, op) != 0)
        rc = -1;
    if (PQstatus(ctx->conn) == CONNECTION_OK && !rc_stopping(ctx) && !op->lost &&
        lag(ctx, op) != 0)
        rc = -1;
    free(op);
    return rc;
}
