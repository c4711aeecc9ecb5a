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
 *                still hold; a lost lease's acknowledgements are refused.
 *                It runs on a second connection and the loop does not wait
 *                for it: deleting one batch overlaps with fetching and
 *                producing the next. One is in flight at a time; what is
 *                delivered meanwhile goes with the next
 *
 * Invariants kept here:
 *   - a row is acknowledged only after its delivery report says it is
 *     persisted, and only while the epoch it was fetched under holds;
 *   - rows of one key are produced in position order, never two sweeps'
 *     worth at once (a sweep starts only when nothing is in flight or
 *     waiting for its acknowledgement, which also keeps a sweep from
 *     fetching a row whose DELETE is still on its way), so a resend after
 *     a failure starts at the key's first unacknowledged row;
 *   - the producer is idempotent with the gapless guarantee: within a
 *     partition nothing after a lost message is written; if librdkafka
 *     cannot keep that it raises a fatal error and the producer is rebuilt;
 *   - at most max_inflight messages are produced and unacknowledged: a slow
 *     broker slows the relay, it does not grow it.
 */
#include <assert.h>
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
/* Busy this long (every sweep finding rows) before writers are told to
 * stop notifying: while it lasts, the relay looks again without being
 * woken, and a NOTIFY would only serialize the writers' commits. */
#define BUSY_QUIET_MS 100
/* Sweeps that find nothing this soon after one that produced are a gap in
 * a busy stream, not its end: the relay looks again a few times before it
 * asks writers to notify. */
#define IDLE_GRACE_MS 50
/* After an acknowledgement failed with the connection still up (a lock
 * timeout, say), wait this long before the next. */
#define ACK_RETRY_MS 100

static volatile sig_atomic_t stop_requested;

void relay_request_stop(void) { stop_requested = 1; }

/* One produced message waiting for its delivery report. */
typedef struct slot {
    ferry_uuid id;
    int shard;
    int64_t epoch;
    int64_t created_ms;         /* wall clock, for end-to-end latency */
    unsigned gen;               /* producer generation */
    int next_free;
} slot;

typedef struct ack {
    ferry_uuid id;              /* binary: it goes out as a binary uuid[] */
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

    /* Two sessions, usable only together (db_ok): db for leases, fetches,
     * failures and LISTEN, in blocking calls; ackdb for acknowledgements
     * only, non-blocking, so the loop never waits for a DELETE. */
    PGconn *db;
    PGconn *ackdb;
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
    char *known_topic;          /* see topic_know() */

    /* leases: epoch of each held shard, or 0 */
    int64_t held[MAX_SHARDS];
    int held_count;
    int64_t next_lease_tick;

    /* in flight */
    slot *slots;
    int free_slot;
    int inflight;

    /* Delivered, to acknowledge. acks[0 .. ack_sent) are in the statement
     * in flight on ackdb (0: none), the rest wait for the next one. */
    ack *acks;
    int ack_count;
    int ack_sent;
    int ack_flushing;           /* ackdb has not taken the whole statement yet */
    PGresult *ack_res;          /* its result, until the statement's end */
    int64_t first_ack_ms;       /* when the oldest unsent one came */
    int64_t ack_retry_at;       /* after a failed one */

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
    int64_t busy_since_ms;      /* busy (see IDLE_GRACE_MS) since; 0: idle */
    int64_t last_busy_ms;       /* the last sweep that produced ended */
    int empty_sweeps;           /* in a row */
    int64_t next_look_ms;       /* in a gap: sweep again then; 0: not in one */
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
    /* A prepared statement gone (26000), or planned for columns that have
     * changed since (0A000, "cached plan must not change result type"):
     * fresh sessions prepare them again. */
    int stale = strcmp(err->sqlstate, "26000") == 0 || strcmp(err->sqlstate, "0A000") == 0;
    if (PQstatus(r->db) == CONNECTION_OK && PQstatus(r->ackdb) == CONNECTION_OK && !stale) {
        ferry_log(FERRY_LOG_WARN, "db.error", "%s: %s", what, err->message);
        return;
    }
    if (r->db_ok)
        ferry_log(FERRY_LOG_WARN, "db.lost", "%s: %s; reconnecting", what, err->message);
    r->db_ok = 0;
    if (r->m != NULL)
        metrics_set_health(r->m, 0, "database connection lost");
}

static int exec_ok(PGconn *conn, const char *sql)
{
    ferry_error err;
    return ferry_exec(conn, sql, 0, NULL, "could not set up the session", &err) == FERRY_OK;
}

static int ack_prepare(relay *r);

/* Both sessions are named "ferry-relay <holder>" in pg_stat_activity, so
 * that ferry-reconcile can tell a lease holder with no session left (a
 * dead relay) from a live one. */
static int set_app_name(relay *r, PGconn *conn)
{
    ferry_error err;
    return ferry_set_application_name(conn, "ferry-relay", r->holder, &err) == FERRY_OK;
}

/*
 * The fetch: ready rows of the held shards ($1) after the cursor ($2..$5),
 * in (shard, topic, key, position) order, at most $6; the columns are
 * C_ID ... C_READY below, and come in binary. Prepared once per session.
 *
 * shard + 0: a filter, not an index condition. As a condition, PostgreSQL
 * 15 starts one index scan per listed shard and reads every remaining
 * entry of the shards before the cursor, so a drain got slower the further
 * it went.
 */
#define FETCH_STATEMENT "ferry_relay_fetch"
#define FETCH_SQL                                                                          \
    "SELECT o.id, o.topic, o.aggregateid, o.aggregatetype, o.type, o.payload::text, "      \
    "       o.headers::text, o.seq, o.shard, o.created_at, o.available_at <= now() "       \
    "FROM ferry.outbox o "                                                                 \
    "WHERE (o.shard + 0) = ANY ($1) AND o.published_at IS NULL "                           \
    "  AND (o.shard, o.topic, o.aggregateid, o.seq) > ($2, $3, $4, $5) "                   \
    "  AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "           \
    "                  AND d.topic = o.topic AND d.aggregateid = o.aggregateid) "          \
    "ORDER BY o.shard, o.topic, o.aggregateid, o.seq "                                     \
    "LIMIT $6"

/*
 * The main session. enable_sort is off for the fetch: it must walk
 * outbox_position in order and stop at its LIMIT, and the planner cannot
 * see that. It estimates the rows past the cursor from the row
 * comparison's first column and the held-shards filter from a default, and
 * where that came out low it read every remaining row of the held shards
 * and sorted them instead: 20 to 35 times the work, on a fifth of the
 * batches of a 200,000-row drain (bench/bench_relay.c), which alone halved
 * the drain's rate. With sorting off, the ordered index scan is the only
 * plan without a penalty. Nothing else on this session sorts more than the
 * lease rows, but the lease takeover's ORDER BY random() now carries the
 * penalty in its cost, which would start JIT compilation for a 16-row
 * sort: hence jit = off (nothing the relay runs is long enough for it).
 */
static int db_setup_main(relay *r)
{
    static const Oid types[6] = {1007 /* int4[] */, 23 /* int4 */, 25 /* text */,
                                 25 /* text */, 20 /* int8 */, 23 /* int4 */};
    if (!set_app_name(r, r->db) ||
        !exec_ok(r->db, "SET statement_timeout = '60s'; SET lock_timeout = '10s'; "
                        "SET enable_sort = off; SET jit = off; "
                        "LISTEN " NOTIFY_CHANNEL))
        return 0;
    PGresult *res = PQprepare(r->db, FETCH_STATEMENT, FETCH_SQL, 6, types);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

/* The acknowledging session: the statement prepared once, then
 * non-blocking (PQreset keeps that flag, and PQprepare wants it off). */
static int db_setup_ack(relay *r)
{
    return PQsetnonblocking(r->ackdb, 0) == 0 &&
           set_app_name(r, r->ackdb) &&
           exec_ok(r->ackdb, "SET statement_timeout = '60s'; SET lock_timeout = '10s'") &&
           ack_prepare(r) && PQsetnonblocking(r->ackdb, 1) == 0;
}

/* Reconnect with backoff, without blocking the loop for longer than one
 * connection attempt per session. Both sessions start afresh: after a lost
 * one the other is rarely healthy (a restarted server, a terminated relay),
 * and an acknowledgement in flight on it is simply sent again (deleting a
 * deleted row changes nothing). */
static void db_maybe_reconnect(relay *r)
{
    if (r->db_ok || ferry_now_ms() < r->db_retry_at)
        return;
    r->ack_sent = 0;
    r->ack_flushing = 0;
    PQclear(r->ack_res);
    r->ack_res = NULL;
    PQreset(r->db);
    PQreset(r->ackdb);
    if (PQstatus(r->db) == CONNECTION_OK && PQstatus(r->ackdb) == CONNECTION_OK &&
        db_setup_main(r) && db_setup_ack(r)) {
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
 * The acknowledgement: delete (or mark) the rows $1 whose shard ($2) and
 * epoch ($3) still hold. The lease rows are read FOR SHARE in the same
 * statement: a takeover that committed first is seen (its epoch differs)
 * and the rows of that shard are left alone; a takeover in progress waits
 * for this statement to commit. The rows are found through the primary key
 * (id = ANY (ARRAY(...))), whatever the planner believes about the
 * arrays' sizes. Returns (rows changed, acknowledgements refused).
 */
#define ACK_STATEMENT "ferry_relay_ack"
#define ACK_SQL(change)                                                                    \
    "WITH l AS (SELECT substr(name, 7)::int AS shard, epoch FROM ferry.lease "             \
    "           WHERE name = ANY ($4::text[]) AND holder = $5 AND expires_at > now() "     \
    "           FOR SHARE), "                                                             \
    "ok AS (SELECT a.id FROM unnest($1::uuid[], $2::int[], $3::bigint[]) "                 \
    "       AS a(id, shard, epoch) JOIN l ON l.shard = a.shard AND l.epoch = a.epoch), "   \
    "d AS (" change ") "                                                                   \
    "SELECT (SELECT count(*) FROM d), cardinality($1::uuid[]) - (SELECT count(*) FROM ok)"
_Static_assert(sizeof SHARD_PREFIX == 7, "substr(name, 7) skips the lease names' prefix");

static int ack_prepare(relay *r)
{
    static const Oid types[5] = {2951 /* uuid[] */, 1007 /* int4[] */, 1016 /* int8[] */,
                                 1009 /* text[] */, 25 /* text */};
    const char *sql = r->cfg->retention == RELAY_RETENTION_MARK
        ? ACK_SQL("UPDATE ferry.outbox SET published_at = now() "
                  "WHERE id = ANY (ARRAY(SELECT id FROM ok)) AND published_at IS NULL "
                  "RETURNING 1")
        : ACK_SQL("DELETE FROM ferry.outbox WHERE id = ANY (ARRAY(SELECT id FROM ok)) "
                  "RETURNING 1");
    PGresult *res = PQprepare(r->ackdb, ACK_STATEMENT, sql, 5, types);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

/* Big-endian, as PostgreSQL's binary formats are. */
static unsigned char *put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

static unsigned char *put64(unsigned char *p, uint64_t v)
{
    return put32(put32(p, (uint32_t)(v >> 32)), (uint32_t)v);
}

/* The header of a one-dimensional array of n elements without NULLs in
 * the binary format (array_recv); each element follows as its length and
 * its bytes. */
enum { ARRAY_HEADER = 20 };
static unsigned char *put_array_header(unsigned char *p, uint32_t elem_type, int n)
{
    p = put32(p, 1);                /* dimensions */
    p = put32(p, 0);                /* no NULLs */
    p = put32(p, elem_type);
    p = put32(p, (uint32_t)n);
    return put32(p, 1);             /* lower bound */
}

/*
 * Send one statement acknowledging every queued delivery, on ackdb,
 * without waiting for it; ack_poll() collects the outcome. The ids, shards
 * and epochs go in binary: as text, parsing them took the server about
 * 1.2 ms per 1,000 rows, more than a tenth of the statement. Only one
 * acknowledgement is in flight at a time: what is
 * delivered meanwhile goes with the next, so a slow database makes them
 * larger, not more numerous.
 */
static void ack_send(relay *r)
{
    if (r->ack_sent > 0 || r->ack_count == 0 || !r->db_ok || ferry_now_ms() < r->ack_retry_at)
        return;
    int n = r->ack_count;
    size_t id_len = ARRAY_HEADER + (size_t)n * (4 + 16);
    size_t shard_len = ARRAY_HEADER + (size_t)n * (4 + 4);
    size_t epoch_len = ARRAY_HEADER + (size_t)n * (4 + 8);
    unsigned char *buf = malloc(id_len + shard_len + epoch_len);
    sbuf names = {0};
    if (buf == NULL) {
        ferry_log(FERRY_LOG_ERROR, "ack.oom", "out of memory building acknowledgements");
        return;     /* kept: tried again on the next turn of the loop */
    }
    unsigned char *ids = buf, *shards = ids + id_len, *epochs = shards + shard_len;
    unsigned char *pi = put_array_header(ids, 2950 /* uuid */, n);
    unsigned char *ps = put_array_header(shards, 23 /* int4 */, n);
    unsigned char *pe = put_array_header(epochs, 20 /* int8 */, n);
    uint64_t seen[MAX_SHARDS / 64] = {0};    /* lease names, each once */
    char num[48];
    int oom = 0;
    for (int i = 0; i < n; i++) {
        const ack *a = &r->acks[i];
        pi = put32(pi, 16);
        memcpy(pi, a->id.bytes, 16);
        pi += 16;
        ps = put32(put32(ps, 4), (uint32_t)a->shard);
        pe = put64(put32(pe, 8), (uint64_t)a->epoch);
        if (!(seen[a->shard / 64] & (UINT64_C(1) << (a->shard % 64)))) {
            seen[a->shard / 64] |= UINT64_C(1) << (a->shard % 64);
            snprintf(num, sizeof num, "%s" SHARD_PREFIX "%d", names.len ? "," : "{", a->shard);
            oom |= sbuf_put(&names, num);
        }
    }
    oom |= sbuf_put(&names, "}");
    if (oom) {
        ferry_log(FERRY_LOG_ERROR, "ack.oom", "out of memory building acknowledgements");
        goto out;
    }
    const char *params[5] = {(const char *)ids, (const char *)shards, (const char *)epochs,
                             names.p, r->holder};
    const int lengths[5] = {(int)id_len, (int)shard_len, (int)epoch_len, 0, 0};
    static const int formats[5] = {1, 1, 1, 0, 0};
    if (!PQsendQueryPrepared(r->ackdb, ACK_STATEMENT, 5, params, lengths, formats, 0)) {
        ferry_error err;
        ferry_error_from_pg(&err, r->ackdb, NULL, "could not acknowledge");
        db_lost(r, "acknowledgement", &err);
        goto out;   /* kept: sent again once the database is back */
    }
    r->ack_sent = n;
    r->ack_flushing = 1;
out:
    free(buf);
    free(names.p);
}

/* The acknowledgement in flight is over: forget what it covered, or, when
 * it failed, keep everything for the next. */
static void ack_done(relay *r, PGresult *res)
{
    int sent = r->ack_sent;
    r->ack_sent = 0;
    r->ack_flushing = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->ackdb, res, "could not acknowledge");
        db_lost(r, "acknowledgement", &err);
        r->ack_retry_at = ferry_now_ms() + ACK_RETRY_MS;   /* not a hot loop */
        return;
    }
    long done = atol(PQgetvalue(res, 0, 0));
    long refused = atol(PQgetvalue(res, 0, 1));
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
    r->ack_count -= sent;
    memmove(r->acks, r->acks + sent, (size_t)r->ack_count * sizeof *r->acks);
}

/* Push the statement out and collect its result if it has come, without
 * blocking; or, with wait, until it is over. */
static void ack_poll(relay *r, int wait)
{
    ferry_error err;
    while (r->ack_sent > 0) {
        if (r->ack_flushing) {
            int rc = PQflush(r->ackdb);
            if (rc < 0)
                goto lost;
            r->ack_flushing = rc;
        }
        if (!PQconsumeInput(r->ackdb))
            goto lost;
        if (PQisBusy(r->ackdb)) {
            if (!wait)
                return;
            struct pollfd pfd = {.fd = PQsocket(r->ackdb),
                                 .events = POLLIN | (r->ack_flushing ? POLLOUT : 0)};
            poll(&pfd, 1, 1000);
            continue;
        }
        PGresult *res = PQgetResult(r->ackdb);
        if (res != NULL) {
            /* Keep the statement's one result until its end (NULL). */
            if (r->ack_res == NULL)
                r->ack_res = res;
            else
                PQclear(res);
            continue;
        }
        if (r->ack_res == NULL)
            goto lost;      /* an end without a result: not from this server */
        ack_done(r, r->ack_res);
        PQclear(r->ack_res);
        r->ack_res = NULL;
    }
    return;
lost:
    ferry_error_from_pg(&err, r->ackdb, NULL, "could not acknowledge");
    PQclear(r->ack_res);
    r->ack_res = NULL;
    r->ack_sent = 0;
    r->ack_flushing = 0;
    db_lost(r, "acknowledgement", &err);
}

/* Acknowledge everything delivered so far and wait for it: before the
 * leases are given back, at the end. */
static void ack_all_and_wait(relay *r)
{
    for (int tries = 0; tries < 3 && r->ack_count > 0 && r->db_ok; tries++) {
        ack_poll(r, 1);
        r->ack_retry_at = 0;    /* the last chance: no waiting */
        ack_send(r);
        ack_poll(r, 1);
    }
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
        a->id = s->id;
        a->shard = s->shard;
        a->epoch = s->epoch;
        if (r->ack_count - r->ack_sent == 1)
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
        char id[FERRY_UUID_STRING_SIZE];
        ferry_uuid_format(&s->id, id);
        note_failure(r, id, s->shard, s->epoch, error_is_permanent(msg->err), reason);
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
    /* The relay turns enable.gapless.guarantee on knowingly (the ordering
     * guarantee rests on it); librdkafka's "experimental" warning about it,
     * on every start, would teach operators to ignore warnings. */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "enable.gapless.guarantee") != NULL)
        lvl = FERRY_LOG_DEBUG;
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
    set_str(&r->known_topic, NULL);
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

/*
 * One fetched row. The fetch returns its results in binary, which saves
 * the server formatting the uuid, the numbers and the time (to_char() and
 * extract() were a fifth of the fetch) and saves us parsing them; the text
 * columns come as they are, and libpq ends every value with a NUL.
 */
enum {
    C_ID, C_TOPIC, C_KEY, C_AGGTYPE, C_TYPE, C_PAYLOAD, C_HEADERS, C_SEQ, C_SHARD,
    C_CREATED_AT, C_READY, C_COUNT
};

typedef struct row {
    ferry_uuid id;
    const char *topic, *key, *aggtype, *type, *payload, *headers;
    size_t payload_len;
    int64_t seq;
    int shard;
    int64_t created_us;         /* Unix microseconds */
    int ready;                  /* available_at has come */
} row;

static uint64_t get64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u[i];
    return v;
}

static uint32_t get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* PostgreSQL's timestamps count microseconds from 2000-01-01 UTC. */
#define PG_EPOCH_UNIX_US INT64_C(946684800000000)

static void row_read(const PGresult *res, int i, row *out)
{
    /* The statement fixes the types, so the lengths are the types'. */
    assert(PQgetlength(res, i, C_ID) == 16 && PQgetlength(res, i, C_SEQ) == 8 &&
           PQgetlength(res, i, C_SHARD) == 4 && PQgetlength(res, i, C_CREATED_AT) == 8 &&
           PQgetlength(res, i, C_READY) == 1);
    memcpy(out->id.bytes, PQgetvalue(res, i, C_ID), 16);
    out->topic = PQgetvalue(res, i, C_TOPIC);
    out->key = PQgetvalue(res, i, C_KEY);
    out->aggtype = PQgetvalue(res, i, C_AGGTYPE);
    out->type = PQgetvalue(res, i, C_TYPE);
    out->payload = PQgetvalue(res, i, C_PAYLOAD);
    out->payload_len = (size_t)PQgetlength(res, i, C_PAYLOAD);
    out->headers = PQgetvalue(res, i, C_HEADERS);
    out->seq = (int64_t)get64(PQgetvalue(res, i, C_SEQ));
    out->shard = (int32_t)get32(PQgetvalue(res, i, C_SHARD));
    out->created_us = (int64_t)get64(PQgetvalue(res, i, C_CREATED_AT)) + PG_EPOCH_UNIX_US;
    out->ready = PQgetvalue(res, i, C_READY)[0] != 0;
}

/* ce_time: RFC 3339 in UTC with microseconds, 2026-11-22T01:02:03.456789Z. */
static void format_time(int64_t unix_us, char out[40])
{
    int64_t sec = unix_us / 1000000, us = unix_us % 1000000;
    if (us < 0) {
        us += 1000000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 40, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
}

/* Produce row w. Returns 0, 1 when the producer queue is full (try again
 * later), -1 when this row failed for good (its key is blocked). */
static int produce_row(relay *r, const row *w)
{
    if (r->free_slot < 0)
        return 1;
    char id[FERRY_UUID_STRING_SIZE], seq[24], ce_time[40], reason[256];
    ferry_uuid_format(&w->id, id);
    snprintf(seq, sizeof seq, "%" PRId64, w->seq);
    format_time(w->created_us, ce_time);

    rd_kafka_headers_t *h = rd_kafka_headers_new(16);
    header(h, "ferry_id", id);
    header(h, "ferry_type", w->type);
    header(h, "ferry_aggregate_type", w->aggtype);
    header(h, "ferry_seq", seq);
    header(h, "ce_specversion", "1.0");
    header(h, "ce_id", id);
    header(h, "ce_type", w->type);
    header(h, "ce_source", r->cfg->source);
    header(h, "ce_time", ce_time);
    header(h, "content-type", "application/json");
    if (strcmp(w->headers, "{}") != 0) {
        json_error_t jerr;
        json_t *obj = json_loads(w->headers, 0, &jerr);
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

    int idx = r->free_slot;
    slot *s = &r->slots[idx];
    s->id = w->id;
    s->shard = w->shard;
    s->epoch = r->held[w->shard];
    s->created_ms = w->created_us / 1000;
    s->gen = r->gen;

    rd_kafka_resp_err_t err = rd_kafka_producev(
        r->rk, RD_KAFKA_V_TOPIC(w->topic), RD_KAFKA_V_KEY(w->key, strlen(w->key)),
        RD_KAFKA_V_VALUE((void *)w->payload, w->payload_len),
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
    note_failure(r, id, w->shard, r->held[w->shard], permanent, reason);
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
    r->empty_sweeps = r->sweep_produced == 0 && !r->sweep_failed ? r->empty_sweeps + 1 : 0;
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

/*
 * Make sure the producer knows topic before the first message to it. A
 * topic that librdkafka first meets in produce() waits for its once-a-second
 * scan before its metadata is asked for, so the first messages of each
 * topic after a start sat up to a second in the queue; rd_kafka_topic_new()
 * asks at once. Rows come in (shard, topic, ...) order, so this runs when
 * the topic changes, a few times a sweep.
 */
static void topic_know(relay *r, const char *topic)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(r->rk, topic, NULL);
    if (t != NULL)
        rd_kafka_topic_destroy(t);     /* the producer keeps the topic itself */
    set_str(&r->known_topic, topic);
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
    PGresult *res = PQexecPrepared(r->db, FETCH_STATEMENT, 6, params, NULL, NULL, 1);
    free(shards.p);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != C_COUNT) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db, res, "could not fetch");
        PQclear(res);
        db_lost(r, "fetch", &err);
        return;
    }
    int rows = PQntuples(res);
    int produced_all = 1;
    row w;
    int last = -1;      /* the last row dealt with: the cursor moves past it */
    for (int i = 0; i < rows; i++) {
        row_read(res, i, &w);
        if (r->held[w.shard] == 0 || is_blocked(r, w.topic, w.key))
            goto advance;
        if (!w.ready) {
            /* Delayed: it and everything after it in its key wait (order
             * before availability). */
            set_str(&r->blocked_topic, w.topic);
            set_str(&r->blocked_key, w.key);
            goto advance;
        }
        if (r->known_topic == NULL || strcmp(r->known_topic, w.topic) != 0)
            topic_know(r, w.topic);
        int rc = produce_row(r, &w);
        if (rc == 1) {
            produced_all = 0;
            r->queue_full = 1;   /* resume from this row after some reports */
            break;
        }
        if (rc < 0) {
            set_str(&r->blocked_topic, w.topic);
            set_str(&r->blocked_key, w.key);
        }
        if (r->fatal_test_after > 0 && r->produced >= (uint64_t)r->fatal_test_after) {
            /* Test hook: make librdkafka raise the fatal error it raises
             * when it cannot keep the gapless guarantee. */
            rd_kafka_test_fatal_error(r->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                      "injected by FERRY_RELAY_TEST_FATAL_AFTER");
            r->fatal_test_after = 0;
        }
    advance:
        last = i;
    }
    if (last >= 0) {
        row_read(res, last, &w);
        r->cursor_shard = w.shard;
        set_str(&r->cursor_topic, w.topic);
        set_str(&r->cursor_key, w.key);
        r->cursor_seq = w.seq;
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
    PQclear(r->ack_res);
    PQfinish(r->ackdb);
    PQfinish(r->db);
    if (r->event_pipe[0] >= 0) {
        close(r->event_pipe[0]);
        close(r->event_pipe[1]);
    }
    free(r->known_topic);
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
    if (PQstatus(r->db) == CONNECTION_OK)
        r->ackdb = PQconnectdbParams(keys, values, 1);
    PGconn *failed = PQstatus(r->db) != CONNECTION_OK ? r->db : r->ackdb;
    if (PQstatus(failed) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(failed);
        ferry_log(FERRY_LOG_ERROR, "db.connect", "could not connect to the database: %.*s",
                  (int)strcspn(msg, "\n"), msg);
        return -1;
    }
    int version = 0;
    if (ferry_schema_version(r->db, &version, &err) != FERRY_OK || version < 1) {
        ferry_log(FERRY_LOG_ERROR, "db.schema", "ferry schema not found (%s): run "
                  "ferry-relay migrate --db ...", version < 1 ? "version 0" : err.message);
        return -1;
    }
    if (!db_setup_main(r)) {
        ferry_log(FERRY_LOG_ERROR, "db.listen", "could not LISTEN: %s",
                  PQerrorMessage(r->db));
        return -1;
    }
    if (!db_setup_ack(r)) {
        ferry_log(FERRY_LOG_ERROR, "db.setup", "could not prepare the acknowledgement: %s",
                  PQerrorMessage(r->ackdb));
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

/* Delivery reports, NOTIFYs and the acknowledgement's result wake us. */
static void wait_for_events(relay *r, int timeout_ms)
{
    struct pollfd fds[3] = {
        {.fd = r->event_pipe[0], .events = POLLIN},
        {.fd = r->db_ok ? PQsocket(r->db) : -1, .events = POLLIN},
        {.fd = r->ack_sent > 0 ? PQsocket(r->ackdb) : -1,
         .events = POLLIN | (r->ack_flushing ? POLLOUT : 0)}};
    if (timeout_ms > 0)
        poll(fds, 3, timeout_ms);
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
             * acknowledgement, or it is refused. Not beside one, though:
             * the acknowledgement reads the lease rows FOR SHARE in its
             * own order, which a renewal updating several of them in
             * another could deadlock with. */
            ack_poll(r, 1);
            lease_tick(r);
            r->next_lease_tick = now + cfg->lease_ttl_ms / 3;
        }

        rd_kafka_poll(r->rk, 0);
        if (rd_kafka_fatal_error(r->rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            ack_send(r);
            if (producer_rebuild(r, fatal) != 0)
                goto out;
        }
        record_failures(r);
        /* Acknowledge in batches while fetching, at once when the sweep is
         * done: the next sweep waits for these. */
        ack_poll(r, 0);
        int unsent = r->ack_count - r->ack_sent;
        if (r->ack_sent == 0 && unsent > 0 &&
            (unsent >= cfg->batch_size || r->inflight == 0 || r->sweep == SWEEP_AT_END ||
             now - r->first_ack_ms >= 5))
            ack_send(r);

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
            r->next_look_ms = 0;
            if (r->sweep_produced > 0 && !r->sweep_failed) {
                /* Busy: look again at once; writers need not notify. Tell
                 * them so once it has lasted BUSY_QUIET_MS, not at the
                 * first row: a trickle would flip the flag (an UPDATE
                 * each way) for every message. */
                r->dirty = 1;
                if (r->busy_since_ms == 0)
                    r->busy_since_ms = now;
                r->last_busy_ms = now;
                if (r->wakeups_asked && r->db_ok && now - r->busy_since_ms >= BUSY_QUIET_MS)
                    set_wakeups(r, 0);
            } else if (!r->wakeups_asked && !r->sweep_failed && r->busy_since_ms != 0 &&
                       now - r->last_busy_ms < IDLE_GRACE_MS) {
                /* Busy a moment ago, and writers are not notifying: a gap
                 * in the stream is likelier than its end. Look again after
                 * 1, 2, 4 ... ms before asking for NOTIFYs, or every gap
                 * would have the writers notify for BUSY_QUIET_MS. */
                r->next_look_ms = r->sweep_ended_ms + ((int64_t)1 << (r->empty_sweeps < 6
                                                                         ? r->empty_sweeps : 6));
                if (now >= r->next_look_ms)
                    r->dirty = 1;
            } else {
                r->busy_since_ms = 0;
                if (!r->wakeups_asked && r->db_ok && !r->dirty && !r->sweep_failed) {
                    /* Nothing came: ask for NOTIFYs, then look once more
                     * before sleeping. */
                    set_wakeups(r, 1);
                    r->dirty = 1;
                }
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
            if (r->next_look_ms != 0 && r->next_look_ms - now < next_poll)
                next_poll = r->next_look_ms - now;
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
    ack_all_and_wait(r);
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
