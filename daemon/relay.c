/*
 * relay.c — publish ferry.outbox to Kafka.
 *
 * One thread runs the loop below; librdkafka runs its own threads and
 * hands delivery reports back to this one through rd_kafka_poll().
 *
 *   lease tick   renew the shard leases (database clock), take free ones up
 *                to this relay's share, give extra ones back
 *   sweep        fetch ready rows of the held shards in (shard, topic, key,
 *                position) order, after a cursor, a batch at a time, and
 *                produce them; at the end of the table wait until all that
 *                is in flight is acknowledged, then start again from the
 *                beginning when there is reason to (NOTIFY, poll timer)
 *   deliveries   a delivery report that says "persisted" queues the row for
 *                acknowledgement; anything else ends the sweep early, so
 *                the next sweep resends from the first unacknowledged row
 *                of each key, in order
 *   acks         delete (or mark) acknowledged rows in one statement that
 *                also checks, under FOR SHARE, that the lease and its epoch
 *                still hold; a lost lease's acknowledgements are refused
 *
 * Invariants kept here:
 *   - a row is acknowledged only after its delivery report says it is
 *     persisted, and only while the epoch it was fetched under holds;
 *   - rows of one key are produced in position order, never two sweeps'
 *     worth at once (a sweep starts only when nothing is in flight), so a
 *     resend after a failure starts at the key's first unacknowledged row;
 *   - the producer is idempotent with the gapless guarantee: within a
 *     partition nothing after a lost message is written; if librdkafka
 *     cannot keep that it raises a fatal error and the producer is rebuilt;
 *   - at most max_inflight messages are produced and unacknowledged: a slow
 *     broker slows the relay, it does not grow it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "../lib/internal.h"
#include "relay.h"

#define SHARD_PREFIX "shard:"
#define RELAY_PREFIX "relay:"
#define NOTIFY_CHANNEL "ferry_outbox"
#define MAX_SHARDS 4096
#define FAILURES_MAX 1024

static volatile sig_atomic_t stop_requested;

void relay_request_stop(void) { stop_requested = 1; }

/* One produced message waiting for its delivery report. */
typedef struct slot {
    char id[FERRY_UUID_STRING_SIZE];
    int shard;
    int64_t epoch;
    int64_t created_ms;         /* wall clock, for end-to-end latency */
    unsigned gen;               /* producer generation */
    int next_free;
} slot;

typedef struct ack {
    char id[FERRY_UUID_STRING_SIZE];
    int shard;
    int64_t epoch;
} ack;

typedef struct failure {
    char id[FERRY_UUID_STRING_SIZE];
    int shard;
    int64_t epoch;
    int permanent;
    char reason[256];
} failure;

typedef enum { SWEEP_RUNNING, SWEEP_AT_END } sweep_state;

typedef struct relay {
    const relay_config *cfg;
    relay_metrics *m;
    char holder[256];
    char heartbeat_name[300];

    PGconn *db;
    int db_ok;
    int64_t db_retry_at;
    int db_backoff_ms;
    int shard_count;

    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mock;
    rd_kafka_t *mock_host;
    char bootstrap[512];
    unsigned gen;
    int event_pipe[2];

    /* leases: epoch of each held shard, or 0 */
    int64_t held[MAX_SHARDS];
    int held_count;
    int64_t next_lease_tick;

    /* in flight */
    slot *slots;
    int free_slot;
    int inflight;

    ack *acks;
    int ack_count;
    int64_t first_ack_ms;

    failure failures[FAILURES_MAX];
    int failure_count;

    /* the sweep */
    sweep_state sweep;
    int cursor_shard;
    char *cursor_topic;
    char *cursor_key;
    int64_t cursor_seq;
    char *blocked_topic;        /* a key to skip for the rest of the sweep */
    char *blocked_key;
    int sweep_failed;           /* a delivery failed: end the sweep early */
    int dirty;                  /* reason to sweep again */
    int64_t sweep_started_ms;
    int64_t sweep_fetch_ms;     /* when the current batch was fetched */
    int sweeps_done;            /* complete sweeps; with --once, the retries */
    int wakeups_asked;          /* we set ferry.settings.wake_relays */
    int queue_full;             /* librdkafka's queue refused: wait for reports */
    int sweep_produced;         /* messages produced by the current sweep */
    int failed_sweeps;          /* in a row, for the backoff */
    int64_t sweep_ended_ms;
    int reclaimed;              /* took back our name's leases at start */

    /* outcome, for --once and the exit status */
    uint64_t produced, delivered, undelivered, refused, dead_lettered;
    uint64_t permanent_failures;    /* messages that failed for good this run */
    int64_t next_shard_stats;
    int fatal_test_after;       /* FERRY_RELAY_TEST_FATAL_AFTER, see relay_new */
} relay;

/* ------------------------------------------------------------------ util */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? strdup(src) : NULL;
}

static void count(relay *r, metric_counter c, uint64_t n)
{
    if (r->m != NULL)
        metrics_add(r->m, c, n);
}

static json_t *fields_shard(int shard, int64_t epoch)
{
    return json_pack("{s:i, s:I}", "shard", shard, "epoch", (json_int_t)epoch);
}

/* ------------------------------------------------------------------ database */

static void db_lost(relay *r, const char *what, ferry_error *err)
{
    count(r, M_FAIL_DB, 1);
    if (PQstatus(r->db) == CONNECTION_OK) {
        ferry_log(FERRY_LOG_WARN, "db.error", "%s: %s", what, err->message);
        return;
    }
    if (r->db_ok)
        ferry_log(FERRY_LOG_WARN, "db.lost", "%s: %s; reconnecting", what, err->message);
    r->db_ok = 0;
    if (r->m != NULL)
        metrics_set_health(r->m, 0, "database connection lost");
}

static int db_setup_session(relay *r)
{
    PGresult *res = PQexec(r->db, "SET application_name = 'ferry-relay'; "
                                  "SET statement_timeout = '60s'; SET lock_timeout = '10s'; "
                                  "LISTEN " NOTIFY_CHANNEL);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

/* Reconnect with backoff, without blocking the loop for longer than one
 * connection attempt. */
static void db_maybe_reconnect(relay *r)
{
    if (r->db_ok || ferry_now_ms() < r->db_retry_at)
        return;
    PQreset(r->db);
    if (PQstatus(r->db) == CONNECTION_OK && db_setup_session(r)) {
        r->db_ok = 1;
        r->db_backoff_ms = 100;
        r->dirty = 1;
        r->next_lease_tick = 0;     /* find out at once what we still hold */
        ferry_log(FERRY_LOG_INFO, "db.reconnected", "database connection restored");
        if (r->m != NULL)
            metrics_set_health(r->m, 1, NULL);
        return;
    }
    r->db_retry_at = ferry_now_ms() + r->db_backoff_ms;
    if (r->db_backoff_ms < 5000)
        r->db_backoff_ms *= 2;
}

/* ------------------------------------------------------------------ leases */

static int shard_of_lease(const char *name)
{
    return atoi(name + strlen(SHARD_PREFIX));
}

static void lease_lost(relay *r, int shard)
{
    ferry_log_json(FERRY_LOG_WARN, "lease.lost", fields_shard(shard, r->held[shard]),
                   "lease of shard %d lost; stopping work on it", shard);
    r->held[shard] = 0;
    r->held_count--;
    count(r, M_LEASES_LOST, 1);
}

/* Read shard_count (it may have grown since the last look) and make sure a
 * lease row exists for every shard. Returns 0, or -1 (logged). */
static int refresh_shards(relay *r)
{
    PGresult *res = PQexec(r->db, "SELECT shard_count FROM ferry.settings");
    int count = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                    ? atoi(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    if (count < 1 || count > MAX_SHARDS) {
        ferry_log(FERRY_LOG_ERROR, "db.settings", "could not read ferry.settings.shard_count");
        return -1;
    }
    if (count == r->shard_count)
        return 0;
    ferry_error err;
    char **names = calloc((size_t)count, sizeof *names);
    for (int s = 0; names != NULL && s < count; s++) {
        names[s] = malloc(32);
        if (names[s] != NULL)
            snprintf(names[s], 32, SHARD_PREFIX "%d", s);
    }
    ferry_code rc = names ? ferry_lease_ensure(r->db, (const char *const *)names,
                                               (size_t)count, &err)
                          : FERRY_ENOMEM;
    for (int s = 0; names != NULL && s < count; s++)
        free(names[s]);
    free(names);
    if (rc != FERRY_OK) {
        ferry_log(FERRY_LOG_ERROR, "lease.setup", "%s", err.message);
        return -1;
    }
    if (r->shard_count != 0)
        ferry_log(FERRY_LOG_INFO, "shards.grown", "shard_count grew from %d to %d",
                  r->shard_count, count);
    r->shard_count = count;
    return 0;
}

/* Renew, then move towards this relay's share: ceil(shards / live relays). */
static void lease_tick(relay *r)
{
    const relay_config *cfg = r->cfg;
    ferry_error err;
    if (refresh_shards(r) != 0)
        return;
    ferry_lease *got = malloc((size_t)r->shard_count * sizeof *got);
    if (got == NULL)
        return;
    size_t n = 0;

    if (ferry_lease_heartbeat(r->db, r->heartbeat_name, r->holder, cfg->lease_ttl_ms, NULL,
                              &err) != FERRY_OK && err.code != FERRY_ESTATE) {
        db_lost(r, "heartbeat", &err);
        goto out;
    }
    if (!r->reclaimed) {
        /* Leases still under our name belong to an earlier process of the
         * same name: take them over with a new epoch, or renewing them
         * below would keep them from everyone, us included. */
        if (ferry_lease_reclaim(r->db, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms,
                                (size_t)r->shard_count, got, &n, &err) != FERRY_OK) {
            db_lost(r, "lease reclaim", &err);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            int s = shard_of_lease(got[i].name);
            if (s < 0 || s >= MAX_SHARDS || r->held[s] != 0)
                continue;
            r->held[s] = got[i].epoch;
            r->held_count++;
            r->dirty = 1;
            ferry_log_json(FERRY_LOG_INFO, "lease.reclaimed", fields_shard(s, got[i].epoch),
                           "took back shard %d from an earlier process named %s", s,
                           r->holder);
        }
        r->reclaimed = 1;
    }
    if (ferry_lease_renew(r->db, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms,
                          (size_t)r->shard_count, got, &n, &err) != FERRY_OK) {
        db_lost(r, "lease renewal", &err);
        goto out;
    }
    int64_t still[MAX_SHARDS] = {0};
    for (size_t i = 0; i < n; i++) {
        int s = shard_of_lease(got[i].name);
        if (s >= 0 && s < MAX_SHARDS)
            still[s] = got[i].epoch;
    }
    for (int s = 0; s < MAX_SHARDS; s++)
        if (r->held[s] != 0 && still[s] != r->held[s])
            lease_lost(r, s);

    int live = 1;
    if (ferry_lease_count_live(r->db, RELAY_PREFIX, &live, &err) != FERRY_OK) {
        db_lost(r, "lease count", &err);
        goto out;
    }
    if (live < 1)
        live = 1;
    int target = cfg->once ? r->shard_count : (r->shard_count + live - 1) / live;

    if (r->held_count < target) {
        if (ferry_lease_acquire(r->db, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms,
                                (size_t)(target - r->held_count), got, &n, &err) != FERRY_OK) {
            db_lost(r, "lease acquisition", &err);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            int s = shard_of_lease(got[i].name);
            if (s < 0 || s >= MAX_SHARDS)
                continue;
            if (r->held[s] == 0)
                r->held_count++;
            r->held[s] = got[i].epoch;
            r->dirty = 1;
            count(r, M_LEASES_ACQUIRED, 1);
            ferry_log_json(FERRY_LOG_INFO, "lease.acquired", fields_shard(s, got[i].epoch),
                           "took the lease of shard %d", s);
        }
    } else if (r->held_count > target && r->sweep == SWEEP_AT_END && r->inflight == 0 &&
               r->ack_count == 0) {
        /* Give back the highest shards, only with nothing in flight, so the
         * next holder does not resend what this one is about to ack. */
        for (int s = MAX_SHARDS - 1; s >= 0 && r->held_count > target; s--) {
            if (r->held[s] == 0)
                continue;
            char name[32];
            snprintf(name, sizeof name, SHARD_PREFIX "%d", s);
            if (ferry_lease_release(r->db, name, r->holder, &err) != FERRY_OK) {
                db_lost(r, "lease release", &err);
                goto out;
            }
            ferry_log_json(FERRY_LOG_INFO, "lease.released", fields_shard(s, r->held[s]),
                           "gave the lease of shard %d back (%d relays share %d shards)", s,
                           live, r->shard_count);
            r->held[s] = 0;
            r->held_count--;
        }
    }
out:
    if (r->m != NULL)
        metrics_set(r->m, G_LEASES_HELD, r->held_count);
    free(got);
}

static void leases_release_all(relay *r)
{
    ferry_error err;
    for (int s = 0; s < MAX_SHARDS; s++) {
        if (r->held[s] == 0)
            continue;
        char name[32];
        snprintf(name, sizeof name, SHARD_PREFIX "%d", s);
        if (ferry_lease_release(r->db, name, r->holder, &err) != FERRY_OK)
            break;
        r->held[s] = 0;
        r->held_count--;
    }
    ferry_lease_release(r->db, r->heartbeat_name, r->holder, &err);
}

/* ------------------------------------------------------------------ acks */

/* Append "x" to a growing buffer as one element of an array literal. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static int sbuf_put(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 2 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n + 2)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
    return 0;
}

/*
 * Acknowledge every queued delivery in one statement. The lease rows are
 * read FOR SHARE in the same statement: a takeover that committed first is
 * seen (its epoch differs) and the rows of that shard are left alone; a
 * takeover in progress waits for this statement to commit.
 */
static void flush_acks(relay *r)
{
    if (r->ack_count == 0 || !r->db_ok)
        return;
    sbuf ids = {0}, shards = {0}, epochs = {0}, names = {0};
    char num[48];
    int oom = 0;
    uint64_t seen[MAX_SHARDS / 64] = {0};    /* lease names, each once */
    for (int i = 0; i < r->ack_count && !oom; i++) {
        const char *sep = i == 0 ? "{" : ",";
        int sh = r->acks[i].shard;
        oom |= sbuf_put(&ids, sep) | sbuf_put(&ids, r->acks[i].id);
        snprintf(num, sizeof num, "%s%d", sep, sh);
        oom |= sbuf_put(&shards, num);
        snprintf(num, sizeof num, "%s%" PRId64, sep, r->acks[i].epoch);
        oom |= sbuf_put(&epochs, num);
        if (!(seen[sh / 64] & (UINT64_C(1) << (sh % 64)))) {
            seen[sh / 64] |= UINT64_C(1) << (sh % 64);
            snprintf(num, sizeof num, "%s" SHARD_PREFIX "%d", names.len ? "," : "{", sh);
            oom |= sbuf_put(&names, num);
        }
    }
    oom |= sbuf_put(&ids, "}") | sbuf_put(&shards, "}") | sbuf_put(&epochs, "}") |
           sbuf_put(&names, "}");
    if (oom) {
        ferry_log(FERRY_LOG_ERROR, "ack.oom", "out of memory building acknowledgements");
        goto out;
    }
    /* The rows are found through the primary key (id = ANY (ARRAY(...))),
     * whatever the planner believes about the arrays' sizes. */
    const char *change = r->cfg->retention == RELAY_RETENTION_MARK
        ? "UPDATE ferry.outbox SET published_at = now() "
          "WHERE id = ANY (ARRAY(SELECT id FROM ok)) AND published_at IS NULL RETURNING 1"
        : "DELETE FROM ferry.outbox WHERE id = ANY (ARRAY(SELECT id FROM ok)) RETURNING 1";
    char sql[1536];
    snprintf(sql, sizeof sql,
             "WITH l AS (SELECT substr(name, %d)::int AS shard, epoch FROM ferry.lease "
             "           WHERE name = ANY ($4::text[]) AND holder = $5 AND expires_at > now() "
             "           FOR SHARE), "
             "ok AS (SELECT a.id FROM unnest($1::uuid[], $2::int[], $3::bigint[]) "
             "       AS a(id, shard, epoch) JOIN l ON l.shard = a.shard AND l.epoch = a.epoch), "
             "d AS (%s) "
             "SELECT (SELECT count(*) FROM d), "
             "       cardinality($1::uuid[]) - (SELECT count(*) FROM ok)",
             (int)strlen(SHARD_PREFIX) + 1, change);
    const char *params[5] = {ids.p, shards.p, epochs.p, names.p, r->holder};
    PGresult *res = PQexecParams(r->db, sql, 5, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db, res, "could not acknowledge");
        PQclear(res);
        db_lost(r, "acknowledgement", &err);
        goto out;   /* kept: retried once the database is back */
    }
    long done = atol(PQgetvalue(res, 0, 0));
    long refused = atol(PQgetvalue(res, 0, 1));
    PQclear(res);
    count(r, M_ACKED, (uint64_t)done);
    if (refused > 0) {
        count(r, M_ACK_REFUSED, (uint64_t)refused);
        r->refused += (uint64_t)refused;
        ferry_log_json(FERRY_LOG_WARN, "ack.refused",
                       json_pack("{s:i}", "refused", (int)refused),
                       "%ld acknowledgements refused: their lease epoch no longer holds "
                       "(the new holder publishes those rows again)", refused);
    }
    if (r->m != NULL)
        metrics_observe(r->m, H_BATCH_SECONDS, (double)(ferry_now_ms() - r->sweep_fetch_ms) / 1e3);
    r->ack_count = 0;
out:
    free(ids.p);
    free(shards.p);
    free(epochs.p);
    free(names.p);
}

/* ------------------------------------------------------------------ failures */

static int error_is_permanent(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return 1;
    default:
        return 0;
    }
}

static void note_failure(relay *r, const char *id, int shard, int64_t epoch, int permanent,
                         const char *reason)
{
    r->sweep_failed = 1;
    if (!permanent || r->failure_count >= FAILURES_MAX)
        return;
    r->permanent_failures++;
    failure *f = &r->failures[r->failure_count++];
    snprintf(f->id, sizeof f->id, "%s", id);
    f->shard = shard;
    f->epoch = epoch;
    f->permanent = permanent;
    snprintf(f->reason, sizeof f->reason, "%s", reason);
}

/*
 * A message failed for a reason that will not go away by itself. Count the
 * attempt; at max_attempts move it to the dead letters, which parks its key
 * (the fetch skips keys with a relay dead letter). Both under the lease.
 */
static void record_failures(relay *r)
{
    if (!r->db_ok)
        return;
    while (r->failure_count > 0) {
        failure *f = &r->failures[r->failure_count - 1];
        char shard[16], epoch[24], max[16];
        snprintf(shard, sizeof shard, "%d", f->shard);
        snprintf(epoch, sizeof epoch, "%" PRId64, f->epoch);
        snprintf(max, sizeof max, "%d", r->cfg->max_attempts);
        const char *params[6] = {f->id, shard, epoch, r->holder, max, f->reason};
        PGresult *res = PQexecParams(
            r->db,
            /* The row is either updated (one more attempt) or moved, never
             * both: sub-statements of one statement cannot see each other's
             * changes, so both decide from the same snapshot of it (cur). */
            "WITH l AS (SELECT 1 FROM ferry.lease WHERE name = 'shard:' || $2 "
            "           AND epoch = $3::bigint AND holder = $4 AND expires_at > now() FOR SHARE), "
            "cur AS (SELECT * FROM ferry.outbox WHERE id = $1::uuid AND EXISTS (SELECT 1 FROM l)), "
            "u AS (UPDATE ferry.outbox o SET attempts = o.attempts + 1, last_error = $6 FROM cur "
            "      WHERE o.id = cur.id AND cur.attempts + 1 < $5::int RETURNING o.attempts), "
            "m AS (DELETE FROM ferry.outbox o USING cur WHERE o.id = cur.id "
            "      AND cur.attempts + 1 >= $5::int RETURNING o.*), "
            "dl AS (INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, "
            "         aggregateid, type, payload, headers, seq, shard, created_at, attempts, reason) "
            "       SELECT m.id, '', m.topic, m.aggregatetype, m.aggregateid, m.type, m.payload, "
            "         m.headers, m.seq, m.shard, m.created_at, m.attempts + 1, $6 FROM m "
            "       ON CONFLICT (message_id, consumer) DO NOTHING RETURNING 1) "
            "SELECT (SELECT attempts + 1 FROM cur), (SELECT count(*) FROM dl)",
            6, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            ferry_error err;
            ferry_error_from_pg(&err, r->db, res, "could not record a failed delivery");
            PQclear(res);
            db_lost(r, "failure record", &err);
            return;
        }
        const char *attempts = PQgetisnull(res, 0, 0) ? "?" : PQgetvalue(res, 0, 0);
        int moved = atoi(PQgetvalue(res, 0, 1));
        json_t *fields = json_pack("{s:s, s:i, s:s, s:s}", "id", f->id, "shard", f->shard,
                                   "attempts", attempts, "reason", f->reason);
        if (moved) {
            r->dead_lettered++;
            count(r, M_DEAD_LETTERED, 1);
            ferry_log_json(FERRY_LOG_ERROR, "message.dead_lettered", fields,
                           "message %s moved to ferry.dead_letter after %s attempts: %s; "
                           "its key waits until the dead letter is replayed or discarded",
                           f->id, attempts, f->reason);
        } else {
            ferry_log_json(FERRY_LOG_WARN, "message.failed", fields,
                           "message %s could not be published (attempt %s): %s", f->id,
                           attempts, f->reason);
        }
        PQclear(res);
        r->failure_count--;
    }
}

/* ------------------------------------------------------------------ producer */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    relay *r = opaque;
    int idx = (int)(intptr_t)msg->_private;
    slot *s = &r->slots[idx];
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR && s->gen == r->gen) {
        ack *a = &r->acks[r->ack_count++];
        memcpy(a->id, s->id, sizeof a->id);
        a->shard = s->shard;
        a->epoch = s->epoch;
        if (r->ack_count == 1)
            r->first_ack_ms = ferry_now_ms();
        r->delivered++;
        count(r, M_PUBLISHED, 1);
        if (r->m != NULL)
            metrics_observe(r->m, H_E2E_SECONDS, (double)(wall_ms() - s->created_ms) / 1e3);
    } else {
        char reason[256];
        snprintf(reason, sizeof reason, "delivery failed: %s (%s)", rd_kafka_err2str(msg->err),
                 rd_kafka_err2name(msg->err));
        count(r, M_FAIL_DELIVERY, 1);
        r->undelivered++;
        note_failure(r, s->id, s->shard, s->epoch, error_is_permanent(msg->err), reason);
    }
    s->next_free = r->free_slot;
    r->free_slot = idx;
    r->inflight--;
    r->queue_full = 0;
}

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int lvl = level <= 3 ? FERRY_LOG_ERROR : level <= 5 ? FERRY_LOG_WARN
                                                        : level <= 6 ? FERRY_LOG_INFO
                                                                     : FERRY_LOG_DEBUG;
    ferry_log_json(lvl, "kafka.log", json_pack("{s:s}", "facility", fac), "%s", buf);
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    ferry_log_json(FERRY_LOG_WARN, "kafka.error",
                   json_pack("{s:s}", "error", rd_kafka_err2name((rd_kafka_resp_err_t)err)),
                   "%s", reason);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        ferry_log(FERRY_LOG_ERROR, "kafka.config", "kafka property %s=%s: %s", name, value,
                  errstr);
        return -1;
    }
    return 0;
}

/* Properties that the order guarantee rests on: the kafka: map may not
 * change them. message.timeout.ms is 0 (never) because librdkafka lets a
 * timed-out message leave a gap even under the gapless guarantee, and a
 * later message of the key could then be acknowledged before it. */
static const char *const fixed_props[][2] = {
    {"enable.idempotence", "true"},
    {"enable.gapless.guarantee", "true"},
    {"acks", "all"},
    {"message.timeout.ms", "0"},
};

static int producer_create(relay *r)
{
    const relay_config *cfg = r->cfg;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char num[32];
    snprintf(num, sizeof num, "%d", cfg->max_inflight + 1000);
    /* Defaults first, so that the kafka: map can override any of them. */
    if (conf_set(conf, "bootstrap.servers", r->bootstrap) ||
        conf_set(conf, "partitioner", "murmur2_random") ||
        conf_set(conf, "socket.nagle.disable", "true") ||
        conf_set(conf, "linger.ms", "2") ||
        conf_set(conf, "queue.buffering.max.messages", num) ||
        conf_set(conf, "client.id", "ferry-relay"))
        goto fail;
    for (size_t i = 0; i < cfg->kafka_props_count; i++) {
        for (size_t f = 0; f < sizeof fixed_props / sizeof fixed_props[0]; f++) {
            if (strcmp(cfg->kafka_props[i].name, fixed_props[f][0]) == 0 &&
                strcmp(cfg->kafka_props[i].value, fixed_props[f][1]) != 0) {
                ferry_log(FERRY_LOG_ERROR, "kafka.config",
                          "kafka property %s=%s: ferry-relay needs %s=%s to keep per-key "
                          "order and lose nothing", cfg->kafka_props[i].name,
                          cfg->kafka_props[i].value, fixed_props[f][0], fixed_props[f][1]);
                goto fail;
            }
        }
        if (conf_set(conf, cfg->kafka_props[i].name, cfg->kafka_props[i].value))
            goto fail;
    }
    for (size_t f = 0; f < sizeof fixed_props / sizeof fixed_props[0]; f++)
        if (conf_set(conf, fixed_props[f][0], fixed_props[f][1]))
            goto fail;
    rd_kafka_conf_set_opaque(conf, r);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);

    char errstr[512];
    r->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (r->rk == NULL) {
        ferry_log(FERRY_LOG_ERROR, "kafka.producer", "could not create the producer: %s",
                  errstr);
        goto fail;   /* rd_kafka_new() takes conf only when it succeeds */
    }
    /* Delivery reports wake the loop through this pipe. */
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(r->rk);
    rd_kafka_queue_io_event_enable(q, r->event_pipe[1], "d", 1);
    rd_kafka_queue_destroy(q);
    r->gen++;
    return 0;
fail:
    rd_kafka_conf_destroy(conf);
    return -1;
}

/* Throw the producer away after a fatal error: purge what it holds (their
 * delivery reports come back as failures and free the slots), then build a
 * new one. The sweep then restarts at the first unacknowledged row. */
static int producer_rebuild(relay *r, const char *reason)
{
    count(r, M_FAIL_FATAL, 1);
    ferry_log(FERRY_LOG_ERROR, "kafka.fatal", "fatal producer error: %s; rebuilding the "
              "producer and resending from the first unacknowledged row of each key", reason);
    rd_kafka_purge(r->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (int i = 0; i < 100 && r->inflight > 0; i++)
        rd_kafka_poll(r->rk, 10);
    rd_kafka_destroy(r->rk);
    r->rk = NULL;
    if (r->inflight > 0) {
        /* Reports that never came: the slots are ours again. */
        ferry_log(FERRY_LOG_WARN, "kafka.fatal", "%d messages without a delivery report",
                  r->inflight);
        for (int i = 0; i < r->cfg->max_inflight; i++)
            r->slots[i].next_free = i + 1 < r->cfg->max_inflight ? i + 1 : -1;
        r->free_slot = 0;
        r->inflight = 0;
    }
    r->sweep_failed = 1;
    return producer_create(r);
}

/* Add one header; values are copied by librdkafka. */
static void header(rd_kafka_headers_t *h, const char *name, const char *value)
{
    rd_kafka_header_add(h, name, -1, value, -1);
}

enum {
    C_ID, C_TOPIC, C_KEY, C_AGGTYPE, C_TYPE, C_PAYLOAD, C_HEADERS, C_SEQ, C_SHARD,
    C_CE_TIME, C_CREATED_MS, C_READY
};

/* Produce row i of res. Returns 0, 1 when the producer queue is full (try
 * again later), -1 when this row failed for good (its key is blocked). */
static int produce_row(relay *r, PGresult *res, int i)
{
    const char *id = PQgetvalue(res, i, C_ID);
    const char *topic = PQgetvalue(res, i, C_TOPIC);
    const char *key = PQgetvalue(res, i, C_KEY);
    int shard = atoi(PQgetvalue(res, i, C_SHARD));
    char reason[256];

    rd_kafka_headers_t *h = rd_kafka_headers_new(16);
    header(h, "ferry_id", id);
    header(h, "ferry_type", PQgetvalue(res, i, C_TYPE));
    header(h, "ferry_aggregate_type", PQgetvalue(res, i, C_AGGTYPE));
    header(h, "ferry_seq", PQgetvalue(res, i, C_SEQ));
    header(h, "ce_specversion", "1.0");
    header(h, "ce_id", id);
    header(h, "ce_type", PQgetvalue(res, i, C_TYPE));
    header(h, "ce_source", r->cfg->source);
    header(h, "ce_time", PQgetvalue(res, i, C_CE_TIME));
    header(h, "content-type", "application/json");
    const char *hjson = PQgetvalue(res, i, C_HEADERS);
    if (strcmp(hjson, "{}") != 0) {
        json_error_t jerr;
        json_t *obj = json_loads(hjson, 0, &jerr);
        const char *name;
        json_t *v;
        if (json_is_object(obj)) {
            json_object_foreach(obj, name, v) {
                if (json_is_string(v))
                    header(h, name, json_string_value(v));
            }
        }
        json_decref(obj);
    }

    if (r->free_slot < 0) {
        rd_kafka_headers_destroy(h);
        return 1;
    }
    int idx = r->free_slot;
    slot *s = &r->slots[idx];
    snprintf(s->id, sizeof s->id, "%s", id);
    s->shard = shard;
    s->epoch = r->held[shard];
    s->created_ms = strtoll(PQgetvalue(res, i, C_CREATED_MS), NULL, 10);
    s->gen = r->gen;

    const char *payload = PQgetvalue(res, i, C_PAYLOAD);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        r->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)payload, (size_t)PQgetlength(res, i, C_PAYLOAD)),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE((void *)(intptr_t)idx), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        r->free_slot = s->next_free;
        r->inflight++;
        r->produced++;
        r->sweep_produced++;
        return 0;
    }
    rd_kafka_headers_destroy(h);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        return 1;
    snprintf(reason, sizeof reason, "could not produce: %s (%s)", rd_kafka_err2str(err),
             rd_kafka_err2name(err));
    count(r, M_FAIL_PRODUCE, 1);
    r->undelivered++;
    int failed_before = r->sweep_failed;
    int permanent = error_is_permanent(err);
    note_failure(r, id, shard, r->held[shard], permanent, reason);
    if (permanent)
        r->sweep_failed = failed_before;   /* nothing of this key went out: go on */
    return -1;
}

/* ------------------------------------------------------------------ wake-ups */

/*
 * Emit sends a NOTIFY only while ferry.settings.wake_relays is set (see
 * schemas/001_ferry.sql for why). A relay sets it before it sleeps and
 * then sweeps once more, so that a row committed before the flag was
 * visible is not left waiting for the poll; a relay that fetches full
 * batches clears it, sparing the writers the notification lock while it
 * is busy anyway. What slips between the two (a writer that read the flag
 * clear and committed after the last sweep) waits at most one poll
 * interval.
 */
static void set_wakeups(relay *r, int on)
{
    ferry_error err;
    if (ferry_exec(r->db, on ? "UPDATE ferry.settings SET wake_relays = true "
                               "WHERE NOT wake_relays"
                             : "UPDATE ferry.settings SET wake_relays = false "
                               "WHERE wake_relays",
                   0, NULL, "could not set wake_relays", &err) != FERRY_OK)
        db_lost(r, "wake-ups", &err);
    else
        r->wakeups_asked = on;
}

/* ------------------------------------------------------------------ the sweep */

static void sweep_restart(relay *r)
{
    r->sweep = SWEEP_RUNNING;
    r->cursor_shard = -1;
    set_str(&r->cursor_topic, "");
    set_str(&r->cursor_key, "");
    r->cursor_seq = 0;
    set_str(&r->blocked_topic, NULL);
    set_str(&r->blocked_key, NULL);
    r->sweep_failed = 0;
    r->dirty = 0;
    r->sweep_produced = 0;
    r->sweep_started_ms = ferry_now_ms();
}

static int is_blocked(relay *r, const char *topic, const char *key)
{
    return r->blocked_key != NULL && strcmp(r->blocked_key, key) == 0 &&
           strcmp(r->blocked_topic, topic) == 0;
}

static void fetch_and_produce(relay *r)
{
    /* Delivered but unacknowledged rows hold their place too, so that the
     * ack queue cannot outgrow max_inflight while acks are failing. */
    int room = r->cfg->max_inflight - r->inflight - r->ack_count;
    int limit = room < r->cfg->batch_size ? room : r->cfg->batch_size;
    if (r->held_count == 0) {
        r->sweep = SWEEP_AT_END;
        return;
    }
    if (limit <= 0)
        return;

    sbuf shards = {0};
    char num[16];
    int first = 1;
    for (int s = 0; s < MAX_SHARDS; s++) {
        if (r->held[s] == 0)
            continue;
        snprintf(num, sizeof num, "%s%d", first ? "{" : ",", s);
        sbuf_put(&shards, num);
        first = 0;
    }
    sbuf_put(&shards, "}");
    char cshard[16], cseq[24], lim[16];
    snprintf(cshard, sizeof cshard, "%d", r->cursor_shard);
    snprintf(cseq, sizeof cseq, "%" PRId64, r->cursor_seq);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[6] = {shards.p, cshard, r->cursor_topic, r->cursor_key, cseq, lim};
    r->sweep_fetch_ms = ferry_now_ms();
    PGresult *res = PQexecParams(
        r->db,
        "SELECT o.id, o.topic, o.aggregateid, o.aggregatetype, o.type, o.payload::text, "
        "       o.headers::text, o.seq, o.shard, "
        "       to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
        "       (extract(epoch FROM o.created_at) * 1000)::bigint, "
        "       o.available_at <= now() "
        "FROM ferry.outbox o "
        /* shard + 0: a filter, not an index condition. As a condition,
         * PostgreSQL 15 starts one index scan per listed shard and reads
         * every remaining entry of the shards before the cursor, so a drain
         * got slower the further it went. */
        "WHERE (o.shard + 0) = ANY ($1::int[]) AND o.published_at IS NULL "
        "  AND (o.shard, o.topic, o.aggregateid, o.seq) > ($2::int, $3, $4, $5::bigint) "
        "  AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "
        "                  AND d.topic = o.topic AND d.aggregateid = o.aggregateid) "
        "ORDER BY o.shard, o.topic, o.aggregateid, o.seq "
        "LIMIT $6::int",
        6, NULL, params, NULL, NULL, 0);
    free(shards.p);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db, res, "could not fetch");
        PQclear(res);
        db_lost(r, "fetch", &err);
        return;
    }
    int rows = PQntuples(res);
    int produced_all = 1;
    for (int i = 0; i < rows; i++) {
        const char *topic = PQgetvalue(res, i, C_TOPIC);
        const char *key = PQgetvalue(res, i, C_KEY);
        int shard = atoi(PQgetvalue(res, i, C_SHARD));
        if (r->held[shard] == 0 || is_blocked(r, topic, key))
            goto advance;
        if (strcmp(PQgetvalue(res, i, C_READY), "t") != 0) {
            /* Delayed: it and everything after it in its key wait (order
             * before availability). */
            set_str(&r->blocked_topic, topic);
            set_str(&r->blocked_key, key);
            goto advance;
        }
        int rc = produce_row(r, res, i);
        if (rc == 1) {
            produced_all = 0;
            r->queue_full = 1;   /* resume from this row after some reports */
            break;
        }
        if (rc < 0) {
            set_str(&r->blocked_topic, topic);
            set_str(&r->blocked_key, key);
        }
        if (r->fatal_test_after > 0 && r->produced >= (uint64_t)r->fatal_test_after) {
            /* Test hook: make librdkafka raise the fatal error it raises
             * when it cannot keep the gapless guarantee. */
            rd_kafka_test_fatal_error(r->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                      "injected by FERRY_RELAY_TEST_FATAL_AFTER");
            r->fatal_test_after = 0;
        }
    advance:
        r->cursor_shard = shard;
        set_str(&r->cursor_topic, topic);
        set_str(&r->cursor_key, key);
        r->cursor_seq = strtoll(PQgetvalue(res, i, C_SEQ), NULL, 10);
    }
    PQclear(res);
    if (rows > 0)
        ferry_log_json(FERRY_LOG_DEBUG, "batch.produced",
                       json_pack("{s:i, s:i}", "rows", rows, "inflight", r->inflight),
                       "fetched %d rows", rows);
    if (produced_all && rows < limit)
        r->sweep = SWEEP_AT_END;
    else if (rows > 0 && r->wakeups_asked && !r->cfg->once)
        set_wakeups(r, 0);      /* busy: it will look again without a NOTIFY */
}

/* ------------------------------------------------------------------ metrics */

static void shard_stats(relay *r)
{
    if (r->m == NULL || !r->db_ok)
        return;
    PGresult *res = PQexec(r->db,
                           "SELECT shard, count(*), "
                           "       extract(epoch FROM now() - min(created_at)) "
                           "FROM ferry.outbox WHERE published_at IS NULL GROUP BY shard");
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        metrics_shards_reset(r->m);
        for (int i = 0; i < PQntuples(res); i++)
            metrics_set_shard(r->m, atoi(PQgetvalue(res, i, 0)),
                              strtoll(PQgetvalue(res, i, 1), NULL, 10),
                              strtod(PQgetvalue(res, i, 2), NULL));
    }
    PQclear(res);
}

/* ------------------------------------------------------------------ setup */

static relay *relay_new(const relay_config *cfg, relay_metrics *m)
{
    relay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->cfg = cfg;
    r->m = m;
    r->event_pipe[0] = r->event_pipe[1] = -1;
    r->slots = calloc((size_t)cfg->max_inflight, sizeof *r->slots);
    r->acks = calloc((size_t)cfg->max_inflight, sizeof *r->acks);
    if (r->slots == NULL || r->acks == NULL || pipe2(r->event_pipe, O_NONBLOCK | O_CLOEXEC)) {
        free(r->slots);
        free(r->acks);
        free(r);
        return NULL;
    }
    for (int i = 0; i < cfg->max_inflight; i++)
        r->slots[i].next_free = i + 1 < cfg->max_inflight ? i + 1 : -1;
    r->free_slot = 0;
    r->db_backoff_ms = 100;
    if (cfg->holder != NULL) {
        snprintf(r->holder, sizeof r->holder, "%s", cfg->holder);
    } else {
        char host[128] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(r->holder, sizeof r->holder, "%s:%ld", host, (long)getpid());
    }
    snprintf(r->heartbeat_name, sizeof r->heartbeat_name, RELAY_PREFIX "%s", r->holder);
    const char *fatal = getenv("FERRY_RELAY_TEST_FATAL_AFTER");
    r->fatal_test_after = fatal ? atoi(fatal) : 0;
    sweep_restart(r);
    return r;
}

static void relay_free(relay *r)
{
    if (r == NULL)
        return;
    if (r->rk != NULL)
        rd_kafka_destroy(r->rk);
    if (r->mock != NULL)
        rd_kafka_mock_cluster_destroy(r->mock);
    if (r->mock_host != NULL)
        rd_kafka_destroy(r->mock_host);
    PQfinish(r->db);
    if (r->event_pipe[0] >= 0) {
        close(r->event_pipe[0]);
        close(r->event_pipe[1]);
    }
    free(r->cursor_topic);
    free(r->cursor_key);
    free(r->blocked_topic);
    free(r->blocked_key);
    free(r->slots);
    free(r->acks);
    free(r);
}

/* "--kafka embedded": librdkafka's mock cluster in this process. */
static int start_embedded_kafka(relay *r)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    /* As in devkafka: the mock brokers' sockets take this setting. */
    rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr, sizeof errstr);
    r->mock_host = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (r->mock_host == NULL) {
        rd_kafka_conf_destroy(conf);
        ferry_log(FERRY_LOG_ERROR, "kafka.embedded", "%s", errstr);
        return -1;
    }
    r->mock = rd_kafka_mock_cluster_new(r->mock_host, 3);
    if (r->mock == NULL) {
        ferry_log(FERRY_LOG_ERROR, "kafka.embedded", "could not start the mock cluster");
        return -1;
    }
    snprintf(r->bootstrap, sizeof r->bootstrap, "%s", rd_kafka_mock_cluster_bootstraps(r->mock));
    ferry_log(FERRY_LOG_INFO, "kafka.embedded", "embedded development cluster at %s",
              r->bootstrap);
    return 0;
}

static int relay_start(relay *r)
{
    const relay_config *cfg = r->cfg;
    ferry_error err;
    /* Defaults first, then the user's conninfo (expanded from "dbname"),
     * which overrides them: a black-holed server must not hang the relay
     * for the kernel's TCP timeout. */
    static const char *const keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                                       "keepalives_interval", "keepalives_count",
                                       "tcp_user_timeout", "dbname", NULL};
    const char *values[] = {"10", "1", "10", "5", "3", "30000", cfg->db, NULL};
    r->db = PQconnectdbParams(keys, values, 1);
    if (PQstatus(r->db) != CONNECTION_OK) {
        ferry_log(FERRY_LOG_ERROR, "db.connect", "could not connect to the database: %s",
                  strtok(PQerrorMessage(r->db), "\n"));
        return -1;
    }
    int version = 0;
    if (ferry_schema_version(r->db, &version, &err) != FERRY_OK || version < 1) {
        ferry_log(FERRY_LOG_ERROR, "db.schema", "ferry schema not found (%s): run "
                  "ferry-relay migrate --db ...", version < 1 ? "version 0" : err.message);
        return -1;
    }
    if (!db_setup_session(r)) {
        ferry_log(FERRY_LOG_ERROR, "db.listen", "could not LISTEN: %s",
                  PQerrorMessage(r->db));
        return -1;
    }
    if (refresh_shards(r) != 0)
        return -1;
    r->db_ok = 1;

    if (strcmp(cfg->kafka, "embedded") == 0) {
        if (start_embedded_kafka(r) != 0)
            return -1;
    } else {
        snprintf(r->bootstrap, sizeof r->bootstrap, "%s", cfg->kafka);
    }
    if (producer_create(r) != 0)
        return -1;
    /* The broker must answer before we take leases, or a relay that cannot
     * publish would sit on shards another relay could serve. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t merr = rd_kafka_metadata(r->rk, 0, NULL, &md, 10000);
    if (merr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ferry_log(FERRY_LOG_ERROR, "kafka.connect", "could not reach Kafka at %s: %s",
                  r->bootstrap, rd_kafka_err2str(merr));
        return -1;
    }
    rd_kafka_metadata_destroy(md);
    ferry_log_json(FERRY_LOG_INFO, "relay.start",
                   json_pack("{s:s, s:i, s:s}", "holder", r->holder, "shards", r->shard_count,
                             "kafka", r->bootstrap),
                   "ferry-relay %s started", ferry_version());
    if (r->m != NULL)
        metrics_set_health(r->m, 1, NULL);
    return 0;
}

/* ------------------------------------------------------------------ the loop */

static void drain_notifies(relay *r)
{
    if (!r->db_ok)
        return;
    if (!PQconsumeInput(r->db)) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db, NULL, "connection");
        db_lost(r, "listen", &err);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(r->db)) != NULL) {
        r->dirty = 1;
        count(r, M_WAKEUPS_NOTIFY, 1);
        PQfreemem(n);
    }
}

static void wait_for_events(relay *r, int timeout_ms)
{
    struct pollfd fds[2] = {{.fd = r->event_pipe[0], .events = POLLIN},
                            {.fd = r->db_ok ? PQsocket(r->db) : -1, .events = POLLIN}};
    if (timeout_ms > 0)
        poll(fds, 2, timeout_ms);
    char buf[256];
    while (read(r->event_pipe[0], buf, sizeof buf) > 0)
        ;
}

int relay_run(const relay_config *cfg, relay_metrics *m)
{
    ferry_log_set_level(cfg->log_level);
    relay *r = relay_new(cfg, m);
    if (r == NULL) {
        ferry_log(FERRY_LOG_ERROR, "relay.start", "out of memory");
        return 1;
    }
    int status = 1;
    if (relay_start(r) != 0)
        goto out;

    int stopping = 0;
    int64_t stop_deadline = 0;
    char fatal[512];
    for (;;) {
        int64_t now = ferry_now_ms();
        if (stopping && now >= stop_deadline) {
            /* The database or the broker stayed away: give up waiting.
             * What was not acknowledged stays in the outbox and goes out
             * again later (at least once). */
            ferry_log(FERRY_LOG_ERROR, "relay.stop_timeout",
                      "gave up after 30 s with %d in flight and %d acknowledgements pending",
                      r->inflight, r->ack_count);
            break;
        }
        if (stop_requested && !stopping) {
            stopping = 1;
            stop_deadline = now + 30000;
            ferry_log(FERRY_LOG_INFO, "relay.stopping",
                      "stopping: no more fetches; waiting for %d in-flight deliveries",
                      r->inflight);
        }
        db_maybe_reconnect(r);
        if (r->db_ok && now >= r->next_lease_tick) {
            /* Also while stopping: the leases must hold until the last
             * acknowledgement, or it is refused. */
            lease_tick(r);
            r->next_lease_tick = now + cfg->lease_ttl_ms / 3;
        }

        rd_kafka_poll(r->rk, 0);
        if (rd_kafka_fatal_error(r->rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            flush_acks(r);
            if (producer_rebuild(r, fatal) != 0)
                goto out;
        }
        record_failures(r);
        /* Acknowledge in batches while fetching, at once when the sweep is
         * done: the next sweep waits for these. */
        if (r->ack_count > 0 &&
            (r->ack_count >= cfg->batch_size || r->inflight == 0 ||
             r->sweep == SWEEP_AT_END || now - r->first_ack_ms >= 5))
            flush_acks(r);

        if (r->sweep == SWEEP_RUNNING && r->sweep_failed)
            r->sweep = SWEEP_AT_END;
        if (r->sweep == SWEEP_AT_END && r->sweep_ended_ms < r->sweep_started_ms)
            r->sweep_ended_ms = now;
        if (r->db_ok && !stopping && r->sweep == SWEEP_RUNNING)
            fetch_and_produce(r);

        int idle = r->sweep == SWEEP_AT_END && r->inflight == 0 && r->ack_count == 0 &&
                   r->failure_count == 0;
        if (idle) {
            r->sweeps_done++;
            if (cfg->once) {
                /* Everything ready at start: one sweep, and more only to
                 * resend after transient failures, up to max_attempts. */
                if (r->sweep_failed && r->sweeps_done < cfg->max_attempts) {
                    sweep_restart(r);
                    continue;
                }
                status = !r->sweep_failed && r->refused == 0 && r->permanent_failures == 0
                             ? 0 : 1;
                if (r->held_count == 0)
                    ferry_log(FERRY_LOG_WARN, "relay.once",
                              "every shard is leased by another relay: nothing to do");
                break;
            }
            if (stopping) {
                status = r->refused == 0 ? 0 : 1;
                break;
            }
            if (r->sweep_produced > 0 && !r->sweep_failed) {
                /* Busy: look again at once; writers need not notify. */
                r->dirty = 1;
            } else if (!r->wakeups_asked && r->db_ok && !r->dirty && !r->sweep_failed) {
                /* Nothing came: ask for NOTIFYs, then look once more
                 * before sleeping. */
                set_wakeups(r, 1);
                r->dirty = 1;
            }
            /* After a failed sweep, back off before resending: 100 ms,
             * doubling to 5 s, so a failure that does not pass is not a
             * hot loop. */
            int64_t backoff = 0;
            if (r->sweep_failed) {
                backoff = 100;
                for (int i = 1; i < r->failed_sweeps && backoff < 5000; i++)
                    backoff *= 2;
            }
            if ((r->sweep_failed && now >= r->sweep_ended_ms + backoff) ||
                (!r->sweep_failed && (r->dirty ||
                                      now - r->sweep_started_ms >= cfg->poll_interval_ms))) {
                if (!r->dirty && !r->sweep_failed)
                    count(r, M_WAKEUPS_POLL, 1);
                r->failed_sweeps = r->sweep_failed ? r->failed_sweeps + 1 : 0;
                sweep_restart(r);
                continue;
            }
        }
        if (stopping && r->inflight == 0 && r->ack_count == 0 && r->failure_count == 0) {
            status = r->refused == 0 ? 0 : 1;
            break;
        }
        if (m != NULL) {
            metrics_set(m, G_INFLIGHT, r->inflight);
            metrics_set(m, G_ACK_PENDING, r->ack_count);
            metrics_set(m, G_KAFKA_QUEUE, rd_kafka_outq_len(r->rk));
            if (now >= r->next_shard_stats) {
                shard_stats(r);
                r->next_shard_stats = now + 5000;
            }
        }

        /* Sleep until there is something to do. */
        int timeout;
        if (r->sweep == SWEEP_RUNNING && !stopping && r->db_ok && r->held_count > 0 &&
            !r->queue_full && r->inflight + r->ack_count < cfg->max_inflight)
            timeout = 0;        /* more to fetch, and room for it */
        else if (r->ack_count > 0)
            timeout = 5;
        else if (!r->db_ok)
            timeout = 50;
        else
            timeout = (int)(r->next_lease_tick - now);
        if (idle && !stopping) {
            int64_t next_poll = r->sweep_failed ? 100
                                                : r->sweep_started_ms + cfg->poll_interval_ms - now;
            if (next_poll < timeout)
                timeout = (int)next_poll;
        }
        if (stopping && (timeout > 100 || timeout <= 0))
            timeout = 100;
        if (timeout < 0)
            timeout = 0;
        wait_for_events(r, timeout);
        drain_notifies(r);
    }

    /* Deliver what is still queued, acknowledge it, let others take over. */
    rd_kafka_flush(r->rk, 10000);
    rd_kafka_poll(r->rk, 0);
    record_failures(r);
    flush_acks(r);
    if (r->ack_count > 0 || r->inflight > 0)
        status = 1;
    if (r->db_ok)
        leases_release_all(r);
    ferry_log_json(FERRY_LOG_INFO, "relay.stop",
                   json_pack("{s:I, s:I, s:I, s:I}", "produced", (json_int_t)r->produced,
                             "delivered", (json_int_t)r->delivered, "undelivered",
                             (json_int_t)r->undelivered, "refused", (json_int_t)r->refused),
                   "ferry-relay stopped (%s)", status == 0 ? "everything delivered"
                                                           : "not everything delivered");
out:
    relay_free(r);
    return status;
}

/* ------------------------------------------------------------------ command */

static void on_signal(int sig)
{
    (void)sig;
    relay_request_stop();
}

int cmd_run(int argc, char **argv)
{
    relay_config cfg;
    char errbuf[1024];
    if (relay_config_load(&cfg, argc, argv, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "ferry-relay run: %s\n", errbuf);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    relay_metrics *m = metrics_new();
    int status = 1;
    if (m == NULL)
        goto out;
    if (cfg.metrics != NULL) {
        int port = 0;
        if (metrics_serve(m, cfg.metrics, &port, errbuf, sizeof errbuf) != 0) {
            fprintf(stderr, "ferry-relay run: --metrics %s: %s\n", cfg.metrics, errbuf);
            goto out;
        }
        ferry_log_json(FERRY_LOG_INFO, "metrics.listen", json_pack("{s:i}", "port", port),
                       "serving /metrics and /healthz on %s (port %d)", cfg.metrics, port);
    }
    status = relay_run(&cfg, m);
out:
    metrics_free(m);
    relay_config_free(&cfg);
    return status;
}
