/*
 * relay_wal.c — the WAL source: stream the logical slot with pgoutput,
 * produce every 'ferry' message, confirm the slot only past what Kafka
 * acknowledged.
 *
 * One thread runs the loop; librdkafka's delivery reports come back
 * through rd_kafka_poll() (relay_kafka.c hands them to
 * relay_wal_delivered). Each turn:
 *
 *   stream     start it if it is not running: check the slot (missing or
 *              lost: loud, and never recreated here), START_REPLICATION
 *              from the slot's confirmed position; a refusal because
 *              another relay reads the slot makes this one a standby,
 *              which tries again every second
 *   reports    delivery reports to the track (relay_wal_track.c)
 *   read       frames while fewer than max_inflight messages are in
 *              flight: BEGIN, each 'ferry' message produced at once,
 *              COMMIT; keepalives
 *   confirm    the track says how far; feedback to the server with that
 *              as the flush position, at once when it moved, else every
 *              second
 *   health     every second: the slot's state and the WAL it retains
 *
 * Invariants:
 *   - the slot is confirmed only past transactions whose every message
 *     Kafka acknowledged, and all before them (relay_wal_track.c);
 *   - after a failed message the stream restarts from the slot: the
 *     server sends again everything not confirmed (duplicates, never a
 *     loss), in commit order;
 *   - messages are produced in stream order, which is commit order, with
 *     the table source's idempotent, gapless producer, partitioner and
 *     headers (relay_kafka.c, relay_fetch.c): a key's messages reach its
 *     partition in the order their transactions committed;
 *   - memory is bounded by max_inflight messages (the server keeps what
 *     we do not read yet, and spills a large transaction to disk itself).
 *
 * Table rows are not published here: the publication carries the
 * outbox's inserts, which this loop skips; a table-source relay beside it
 * publishes them (README, "Two sources").
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "relay_int.h"
#include "relay_wal.h"

#define FEEDBACK_MS 1000
#define HEALTH_MS 1000
#define STANDBY_RETRY_MS 1000
#define RETRY_MAX_MS 30000
#define TRACK_TXS 65536
#define PUBLICATION "ferry_outbox"
#define PREFIX "ferry"

struct relay_wal {
    PGconn *sql;                /* settings, the slot's state, heartbeats */
    PGconn *repl;               /* the replication stream; NULL: not running */
    wal_track *t;
    wal_scratch scratch;
    char token[128];
    char slot[64];
    int64_t heartbeat_ms;

    uint64_t confirmed_sent;    /* the flush position last sent */
    uint64_t wal_end;           /* the server's end of WAL, last heard */
    uint64_t once_target;       /* --once: the WAL end at start */
    int64_t next_feedback, next_health, next_heartbeat, retry_at, last_data;
    int backoff_ms;
    int standby;                /* another relay reads the slot */
    int slot_problem;           /* missing or lost: told once */
    int unreserved;             /* wal_status = unreserved: told once, not ready */
    char unreserved_why[256];
    uint64_t decoded, refused, restarts;
    int64_t confirmed_at_ms;    /* when confirmed_sent last moved */
    int64_t lease_epoch;        /* of the lease wal:<slot>; 0: not held */
    int64_t next_lease;

    /* Poison: the message that failed last, how often in a row, why. At
     * max_attempts it goes to the dead letters when it comes again. */
    ferry_uuid poison;
    int poison_fails;
    char poison_reason[256];
    /* Keys parked behind a relay dead letter, or behind a row of theirs
     * waiting in the table when the stream started: a tsearch tree of
     * struct parked_key. Their messages from the row on go to the table. */
    void *parked;
    size_t parked_count;
    /* More keys are parked than parked[] may hold: a key not in it is
     * looked up in ferry.dead_letter and ferry.outbox (is_parked). */
    int parked_overflow;
};

#define PARKED_MAX 100000

/* ------------------------------------------------------------------ poison */

static void note_failure(relay_wal *w, const ferry_uuid *id, const char *reason)
{
    if (memcmp(w->poison.bytes, id->bytes, 16) == 0) {
        w->poison_fails++;
    } else {
        w->poison = *id;
        w->poison_fails = 1;
    }
    snprintf(w->poison_reason, sizeof w->poison_reason, "%s", reason);
}

/* A parked key: its messages positioned at `from` or after go to the
 * table. Behind a dead letter every one does (INT64_MIN); behind a row
 * waiting in the table, those from the row's position on (one at its
 * position is that row's message decoded again: a discarded relay dead
 * letter's, whose marker holds the position; wal_park leaves it out),
 * while the key's earlier messages still in WAL go to Kafka ahead of it
 * as usual. */
struct parked_key {
    int64_t from;
    char name[];                /* "topic\x1fkey": a topic has no \x1f */
};

static int cmp_parked(const void *a, const void *b)
{
    return strcmp(((const struct parked_key *)a)->name, ((const struct parked_key *)b)->name);
}

static struct parked_key *parked_key_new(const char *topic, const char *key, int64_t from)
{
    size_t tl = strlen(topic), kl = strlen(key);
    struct parked_key *k = malloc(sizeof *k + tl + 1 + kl + 1);
    if (k == NULL)
        return NULL;
    k->from = from;
    memcpy(k->name, topic, tl);
    k->name[tl] = '\x1f';
    memcpy(k->name + tl + 1, key, kl + 1);
    return k;
}

/* The most keys parked[] holds: a key takes its name and a tree node,
 * and the table may hold dead letters without end. */
static size_t parked_max(void)
{
#ifdef FERRY_TEST_HOOKS
    const char *v = getenv("FERRY_RELAY_TEST_PARKED_MAX");
    if (v != NULL && atol(v) > 0)
        return (size_t)atol(v);
#endif
    return PARKED_MAX;
}

static void parked_overflowed(relay_wal *w)
{
    if (!w->parked_overflow)
        ferry__log_json(FERRY_LOG_WARN, "wal.parked_limit",
                       json_pack("{s:I}", "limit", (json_int_t)parked_max()),
                       "more than %zu keys are parked: each message of a key not among them "
                       "is now looked up in ferry.dead_letter and ferry.outbox", parked_max());
    w->parked_overflow = 1;
}

/* Whether the key's message at position seq must go to the table: 1 or
 * 0, -1 when the table could not be read. Past the limit, a key parked[]
 * does not hold may still be parked: its later messages must not overtake
 * the dead letter or the row waiting in the table, so the table answers. */
static int is_parked(relay_wal *w, const char *topic, const char *key, int64_t seq)
{
    if (w->parked != NULL) {
        struct parked_key *n = parked_key_new(topic, key, 0);
        if (n == NULL)
            return -1;
        void *found = tfind(n, &w->parked, cmp_parked);
        free(n);
        if (found != NULL && seq >= (*(struct parked_key **)found)->from)
            return 1;
        if (found != NULL)
            return 0;
    }
    if (!w->parked_overflow)
        return 0;
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, seq);
    const char *p[3] = {topic, key, s};
    PGresult *res = PQexecParams(w->sql,
                                 "SELECT EXISTS (SELECT 1 FROM ferry.dead_letter "
                                 " WHERE consumer = '' AND topic = $1 AND aggregateid = $2) "
                                 "    OR EXISTS (SELECT 1 FROM ferry.outbox o "
                                 " WHERE o.shard = (SELECT k.shard FROM ferry.outbox_key k "
                                 "                   WHERE k.topic = $1 AND k.key = $2) "
                                 "   AND o.topic = $1 AND o.aggregateid = $2 "
                                 "   AND o.seq <= $3::bigint AND o.published_at IS NULL)",
                                 3, NULL, p, NULL, NULL, 0);
    int parked = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                     ? strcmp(PQgetvalue(res, 0, 0), "t") == 0
                     : -1;
    if (parked < 0)
        ferry__log(FERRY_LOG_ERROR, "wal.parked", "could not look up whether %s/%s is parked: %s",
                  topic, key, PQresultErrorMessage(res));
    PQclear(res);
    return parked;
}

/* Parks the key for its messages from position `from` on (INT64_MIN: all
 * of them), or lowers the position of a key already parked. */
static void park(relay_wal *w, const char *topic, const char *key, int64_t from)
{
    struct parked_key *n = parked_key_new(topic, key, from);
    void *found = n != NULL ? tfind(n, &w->parked, cmp_parked) : NULL;
    if (found != NULL) {
        struct parked_key *k = *(struct parked_key **)found;
        if (from < k->from)
            k->from = from;
        free(n);
        return;
    }
    if (w->parked_count >= parked_max()) {
        free(n);
        parked_overflowed(w);
        return;
    }
    found = n != NULL ? tsearch(n, &w->parked, cmp_parked) : NULL;
    if (found == NULL) {
        free(n);
        parked_overflowed(w);       /* out of memory: the table answers for it */
    } else {
        w->parked_count++;
    }
}

/* The keys parked now, as the table says (at every stream start): 0, or
 * -1 when they could not be read, and the stream must not start. Parked
 * are the keys behind a relay dead letter (every message of theirs), and
 * the keys with a row waiting in the table (delayed, failing, put back, or
 * put there by ferry.wal_park in an earlier run), for their messages
 * positioned at the first such row or after: none may overtake it. emit sends a
 * key's message to the table when it sees such a row, but not one it
 * could not see yet: a message that an earlier run put in the table while
 * the key was parked, after this one was emitted, and whose dead letter
 * was discarded before this run. The table path publishes them in
 * position order. A key stays parked until the next stream start. */
static int load_parked(relay *r)
{
    relay_wal *w = r->wal;
    tdestroy(w->parked, free);
    w->parked = NULL;
    w->parked_count = 0;
    w->parked_overflow = 0;
    char limit[24];
    snprintf(limit, sizeof limit, "%zu", parked_max() + 1);
    const char *p[1] = {limit};
    PGresult *res = PQexecParams(w->sql,
                                 "SELECT topic, aggregateid, min(from_seq) FROM ("
                                 "  SELECT topic, aggregateid, "
                                 "         (-9223372036854775807 - 1)::bigint AS from_seq "
                                 "    FROM ferry.dead_letter WHERE consumer = '' "
                                 "  UNION ALL "
                                 "  SELECT topic, aggregateid, seq FROM ferry.outbox "
                                 "   WHERE published_at IS NULL) w "
                                 " GROUP BY topic, aggregateid LIMIT $1::bigint",
                                 1, NULL, p, NULL, NULL, 0);
    if (relay_db_result(res, PGRES_TUPLES_OK, FERRY_LOG_ERROR, "wal.parked",
                        "could not read the parked keys") != 0)
        return -1;
    for (int i = 0; i < PQntuples(res); i++)
        park(w, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
             strtoll(PQgetvalue(res, i, 2), NULL, 10));
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------------ reports */

void relay_wal_delivered(relay *r, const rd_kafka_message_t *msg)
{
    relay_wal *w = r->wal;
    uint64_t ticket = (uint64_t)(uintptr_t)msg->_private;
    /* Whichever stream sent it: the producer holds it until now. */
    size_t took = msg->len + msg->key_len;
    r->k.inflight_bytes = r->k.inflight_bytes > took ? r->k.inflight_bytes - took : 0;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_store(&r->k.down, 0);
        r->delivered++;
        relay_count(r, M_PUBLISHED, 1);
        wal_track_report(w->t, ticket, 1);
        return;
    }
    int ours = msg->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
               msg->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
    if (!ours) {
        r->undelivered++;
        relay_count(r, M_FAIL_DELIVERY, 1);
        rd_kafka_headers_t *hdrs = NULL;
        const void *val = NULL;
        size_t size = 0;
        char idtext[FERRY_UUID_STRING_SIZE];
        ferry_uuid id;
        if (msg->err != RD_KAFKA_RESP_ERR__FATAL && !relay_kafka_topic_refused(msg->err) &&
            rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            rd_kafka_header_get_last(hdrs, "ferry_id", &val, &size) ==
                RD_KAFKA_RESP_ERR_NO_ERROR &&
            size == FERRY_UUID_STRING_SIZE - 1) {
            memcpy(idtext, val, size);
            idtext[size] = '\0';
            char reason[256];
            snprintf(reason, sizeof reason, "delivery failed: %s (%s)",
                     rd_kafka_err2str(msg->err), rd_kafka_err2name(msg->err));
            if (ferry_uuid_parse(idtext, &id) == FERRY_OK)
                note_failure(w, &id, reason);
        }
        ferry__log_json(FERRY_LOG_ERROR, "wal.delivery_failed",
                       json_pack("{s:s}", "error", rd_kafka_err2name(msg->err)),
                       "delivery failed: %s; the stream restarts from the slot's confirmed "
                       "position", rd_kafka_err2str(msg->err));
    }
    wal_track_report(w->t, ticket, 0);
}

/* ------------------------------------------------------------------ sessions */

/* A session of the WAL source. The settings session bears the relay's
 * name, "ferry-relay <holder>", as the table source's do: what a second
 * relay of the name looks for (relay_refuse_live_holder). As a connection
 * parameter, so that PQreset keeps it. The replication session is
 * "ferry-relay-wal <holder>": not "ferry-relay wal", the name of a relay
 * called wal, which beside any WAL relay would be refused as live. */
static PGconn *connect_db(relay *r, int replication)
{
    char name[64];
    ferry__application_name(name, replication ? "ferry-relay-wal" : "ferry-relay", r->holder);
    /* expand_dbname: conninfo may be a URI or key=value pairs; the later
     * keywords override what it says. */
    const char *keys[] = {"dbname", "client_encoding", "replication", "application_name", NULL};
    const char *vals[] = {r->cfg->db, "UTF8", replication ? "database" : NULL, name, NULL};
    if (!replication) {
        keys[2] = "application_name";
        vals[2] = name;
        keys[3] = NULL;
    }
    return PQconnectdbParams(keys, vals, 1);
}

/* The settings the source needs: the token, the slot's name, the payload
 * limit. 0, or -1 (logged). */
static int read_settings(relay *r)
{
    relay_wal *w = r->wal;
    PGresult *res = PQexec(w->sql, "SELECT wal_token, wal_slot, max_payload_bytes "
                                   "FROM ferry.settings");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ferry__log(FERRY_LOG_ERROR, "wal.settings", "could not read ferry.settings (is the "
                  "schema at version 11, and may this role read it?): %s",
                  PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    snprintf(w->token, sizeof w->token, "%s", PQgetvalue(res, 0, 0));
    snprintf(w->slot, sizeof w->slot, "%s", PQgetvalue(res, 0, 1));
    r->db.max_payload = atoi(PQgetvalue(res, 0, 2));
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------------ the slot */

typedef enum slot_state { SLOT_OK, SLOT_MISSING, SLOT_LOST, SLOT_WRONG, SLOT_ERROR } slot_state;

/* The slot as the server sees it; why says what is wrong. */
static slot_state check_slot(relay *r, char *why, size_t whylen)
{
    relay_wal *w = r->wal;
    const char *p[1] = {w->slot};
    PGresult *res = PQexecParams(
        w->sql,
        "SELECT s.plugin, s.database = current_database(), coalesce(s.wal_status, ''), "
        "       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
        "       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, "
        "       pg_current_wal_lsn()::text "
        "  FROM pg_replication_slots s WHERE s.slot_name = $1",
        1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        snprintf(why, whylen, "could not read pg_replication_slots: %s",
                 PQresultErrorMessage(res));
        PQclear(res);
        return SLOT_ERROR;
    }
    slot_state st = SLOT_OK;
    if (PQntuples(res) == 0) {
        snprintf(why, whylen, "the replication slot \"%s\" does not exist: messages emitted "
                 "in wal mode since it went are not decoded; it is never recreated "
                 "silently: see `ferry-relay slot recreate`, and set emit_mode = 'table' "
                 "meanwhile", w->slot);
        st = SLOT_MISSING;
    } else if (strcmp(PQgetvalue(res, 0, 0), "pgoutput") != 0 ||
               strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        snprintf(why, whylen, "the replication slot \"%s\" is not a pgoutput slot of this "
                 "database", w->slot);
        st = SLOT_WRONG;
    } else if (strcmp(PQgetvalue(res, 0, 2), "lost") == 0) {
        snprintf(why, whylen, "the replication slot \"%s\" is invalidated (wal_status = "
                 "lost: it passed max_slot_wal_keep_size); messages in the WAL it lost may "
                 "not have been published: see `ferry-relay slot recreate`", w->slot);
        st = SLOT_LOST;
    } else {
        /* Past max_slot_wal_keep_size, not yet invalidated: streamable,
         * and catching up is the cure, but the next checkpoint makes it
         * lost. Said once when it starts and once when it ends; not ready
         * meanwhile (health()). */
        int unreserved = strcmp(PQgetvalue(res, 0, 2), "unreserved") == 0;
        if (unreserved && !w->unreserved) {
            snprintf(w->unreserved_why, sizeof w->unreserved_why, "the replication slot \"%s\" "
                     "retains %s bytes of WAL, more than max_slot_wal_keep_size (wal_status = "
                     "unreserved): the next checkpoint invalidates it", w->slot,
                     PQgetvalue(res, 0, 3));
            ferry__log_json(FERRY_LOG_ERROR, "wal.slot_unreserved",
                            json_pack("{s:s}", "slot", w->slot), "%s; catching up",
                            w->unreserved_why);
        } else if (!unreserved && w->unreserved) {
            ferry__log_json(FERRY_LOG_INFO, "wal.slot_reserved",
                            json_pack("{s:s}", "slot", w->slot),
                            "the replication slot \"%s\" retains its WAL again", w->slot);
        }
        w->unreserved = unreserved;
    }
    if (st == SLOT_OK && r->m != NULL) {
        metrics_set(r->m, G_WAL_RETAINED_BYTES,
                    PQgetisnull(res, 0, 3) ? 0 : atoll(PQgetvalue(res, 0, 3)));
        metrics_set(r->m, G_WAL_LAG_BYTES,
                    PQgetisnull(res, 0, 4) ? 0 : atoll(PQgetvalue(res, 0, 4)));
    }
    if (st == SLOT_OK && w->once_target == 0 && r->cfg->once)
        wal_lsn_parse(PQgetvalue(res, 0, 5), &w->once_target);
    PQclear(res);
    if (r->m != NULL)
        metrics_set(r->m, G_WAL_SLOT_OK, st == SLOT_OK && !w->unreserved);
    return st;
}

/* ------------------------------------------------------------------ the stream */

static void stop_stream(relay *r)
{
    relay_wal *w = r->wal;
    if (w->repl == NULL)
        return;
    PQfinish(w->repl);
    w->repl = NULL;
}

/* ------------------------------------------------------------------ the lease */

/*
 * The lease wal:<slot> in ferry.lease says who streams the slot, for
 * `ferry-relay status` and for the standbys, which try the slot only once
 * it has expired (or was given back). It is not the fence: PostgreSQL
 * lets one session stream a slot and refuses the next (55006), so a
 * relay paused past its lease and a standby that took the lease cannot
 * both stream; the paused one, on waking, finds its lease gone and stops.
 * Taken or renewed as every lease of a holder's is (common/lease.c, one
 * statement judged by the database clock): the epoch rises with every
 * change of holder and when the lease had run out. Returns the epoch, 0
 * when another holds it, -1 on error.
 */
static int64_t lease_take(relay *r)
{
    relay_wal *w = r->wal;
    char name[80];
    snprintf(name, sizeof name, "wal:%s", w->slot);
    int64_t epoch = 0;
    ferry_error err;
    ferry_code rc = ferry__lease_heartbeat(w->sql, name, r->holder, r->cfg->lease_ttl_ms, &epoch,
                                           &err);
    if (rc == FERRY_OK)
        return epoch;
    if (rc == FERRY_ESTATE)
        return 0;       /* held by another (a database error is never FERRY_ESTATE) */
    ferry__log(FERRY_LOG_WARN, "wal.lease", "could not take the lease %s: %s", name, err.message);
    return -1;
}

/* 0, or -1 when the lease could not be given back: it then expires
 * after its TTL, and a standby waits that long. */
static int lease_release(relay *r)
{
    relay_wal *w = r->wal;
    if (w->lease_epoch <= 0)
        return 0;
    char name[80];
    snprintf(name, sizeof name, "wal:%s", w->slot);
    ferry_error err;
    int ok = ferry__lease_release(w->sql, name, r->holder, &err) == FERRY_OK;
    if (!ok)
        ferry__log(FERRY_LOG_WARN, "wal.lease", "could not give the lease %s back (it expires "
                  "by itself): %s", name, err.message);
    w->lease_epoch = 0;
    return ok ? 0 : -1;
}

/* Start streaming from the slot's confirmed position. 0 running; -1 not
 * (logged, retried later). */
static int start_stream(relay *r)
{
    relay_wal *w = r->wal;
    char why[512];
    slot_state st = check_slot(r, why, sizeof why);
    if (st != SLOT_OK) {
        if (!w->slot_problem || st == SLOT_ERROR)
            ferry__log_json(FERRY_LOG_ERROR, st == SLOT_ERROR ? "wal.db" : "wal.slot",
                           json_pack("{s:s}", "slot", w->slot), "%s", why);
        w->slot_problem = st != SLOT_ERROR;
        relay_set_health(r, 0, why);
        return -1;
    }
    if (w->slot_problem)
        ferry__log(FERRY_LOG_INFO, "wal.slot", "the replication slot \"%s\" is back", w->slot);
    w->slot_problem = 0;

    int64_t epoch = lease_take(r);
    if (epoch == 0) {
        if (!w->standby)
            ferry__log_json(FERRY_LOG_INFO, "wal.standby", json_pack("{s:s}", "slot", w->slot),
                           "standing by: another relay holds the lease wal:%s", w->slot);
        w->standby = 1;
        relay_set_health(r, 1, "");
        return -1;
    }
    if (epoch < 0)
        return -1;
    w->lease_epoch = epoch;
    w->next_lease = ferry__now_ms() + r->cfg->lease_ttl_ms / 3;

    w->repl = connect_db(r, 1);
    if (PQstatus(w->repl) != CONNECTION_OK) {
        ferry__log(FERRY_LOG_ERROR, "wal.connect", "could not open a replication session (the "
                  "role needs REPLICATION): %s", PQerrorMessage(w->repl));
        relay_set_health(r, 0, "database unreachable: reconnecting");
        stop_stream(r);
        return -1;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "START_REPLICATION SLOT \"%s\" LOGICAL 0/0 (proto_version '1', "
             "publication_names '\"" PUBLICATION "\"', messages 'true')", w->slot);
    PGresult *res = PQexec(w->repl, cmd);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "55006") == 0) {
            /* PostgreSQL lets one session read a slot: the fence. */
            if (!w->standby)
                ferry__log_json(FERRY_LOG_INFO, "wal.standby", json_pack("{s:s}", "slot", w->slot),
                               "standing by: %s", PQresultErrorMessage(res));
            w->standby = 1;
            relay_set_health(r, 1, "");
        } else {
            ferry__log(FERRY_LOG_ERROR, "wal.start", "could not start streaming the slot "
                      "\"%s\": %s", w->slot, PQresultErrorMessage(res));
            relay_set_health(r, 0, "could not start streaming the replication slot");
        }
        PQclear(res);
        stop_stream(r);
        return -1;
    }
    PQclear(res);
    if (w->standby)
        ferry__log(FERRY_LOG_INFO, "wal.active", "took over the slot \"%s\"", w->slot);
    w->standby = 0;
    wal_track_reset(w->t);
    w->confirmed_sent = wal_track_confirmable(w->t);
    /* Without them, a parked key's later message would go to Kafka while
     * the earlier one sits in the dead letters. */
    if (load_parked(r) != 0) {
        relay_set_health(r, 0, "could not read the parked keys");
        stop_stream(r);
        return -1;
    }
    w->backoff_ms = 100;
    relay_set_health(r, 1, "");
    ferry__log_json(FERRY_LOG_INFO, "wal.streaming", json_pack("{s:s}", "slot", w->slot),
                   "streaming the slot \"%s\" from its confirmed position", w->slot);
    return 0;
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

/* Standby status update: written, flushed and applied all at the
 * confirmed position; the server takes flushed as the slot's. */
static int send_feedback(relay *r, int reply)
{
    relay_wal *w = r->wal;
    uint64_t c = wal_track_confirmable(w->t);
    unsigned char buf[34];
    buf[0] = 'r';
    put64(buf + 1, c);
    put64(buf + 9, c);
    put64(buf + 17, c);
    int64_t now_us = relay_wall_ms() * 1000 - INT64_C(946684800000000);
    put64(buf + 25, (uint64_t)now_us);
    buf[33] = (unsigned char)(reply != 0);
    if (PQputCopyData(w->repl, (const char *)buf, sizeof buf) != 1 || PQflush(w->repl) != 0) {
        ferry__log(FERRY_LOG_WARN, "wal.feedback", "could not send feedback: %s",
                  PQerrorMessage(w->repl));
        return -1;
    }
    if (c > w->confirmed_sent) {
        w->confirmed_sent = c;
        w->confirmed_at_ms = ferry__now_ms();
    }
    w->next_feedback = ferry__now_ms() + FEEDBACK_MS;
    return 0;
}

/* A restart from the slot: after a failed message, a protocol error or a
 * lost session. What was not confirmed comes again. */
static void restart_stream(relay *r, const char *why)
{
    relay_wal *w = r->wal;
    w->restarts++;
    ferry__log_json(FERRY_LOG_WARN, "wal.restart", json_pack("{s:s}", "reason", why),
                   "restarting the stream from the slot: %s", why);
    stop_stream(r);
    wal_track_reset(w->t);
    w->retry_at = ferry__now_ms() + w->backoff_ms;
    w->backoff_ms = w->backoff_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : w->backoff_ms * 2;
}

/* Produce one 'ferry' message of the open transaction. */
/* 0, or -1 when the message could not be produced: reported to the
 * tracker as failed, which restarts the stream from the slot. */
static int produce(relay *r, const wal_msg *m)
{
    relay_wal *w = r->wal;
    relay_topic *t = relay_kafka_topic(r, m->topic);
    uint64_t ticket = wal_track_message(w->t);
    if (t == NULL || ticket == 0) {
        wal_track_report(w->t, ticket, 0);
        return -1;
    }
    char id[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&m->id, id);
    relay_row row = {.id = m->id, .topic = m->topic, .key = m->key, .aggtype = m->aggtype,
                     .type = m->type, .payload = m->payload, .headers = m->headers,
                     .payload_len = m->payload_len, .seq = m->seq, .shard = -1,
                     .created_us = m->created_us, .ready = 1};
    rd_kafka_headers_t *h = relay_headers_of(r, &row, id, NULL);  /* emit's: an object */
    rd_kafka_resp_err_t err = rd_kafka_producev(
        r->k.rk, RD_KAFKA_V_RKT(t->rkt), RD_KAFKA_V_KEY(m->key, strlen(m->key)),
        RD_KAFKA_V_VALUE((void *)m->payload, m->payload_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)ticket), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);
        /* A producer too small since max_payload_bytes grew: the message
         * is not at fault; the stream restarts from the slot once the
         * producer is made again (relay_wal_run). */
        if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && relay_kafka_too_small(r, w->sql)) {
            wal_track_report(w->t, ticket, 0);
            return -1;
        }
        relay_count(r, M_FAIL_PRODUCE, 1);
        r->undelivered++;
        ferry__log(FERRY_LOG_ERROR, "wal.produce", "could not produce message %s: %s", id,
                  rd_kafka_err2str(err));
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL && err != RD_KAFKA_RESP_ERR__FATAL &&
            !relay_kafka_topic_refused(err)) {
            char reason[256];
            snprintf(reason, sizeof reason, "could not produce: %s (%s)", rd_kafka_err2str(err),
                     rd_kafka_err2name(err));
            note_failure(w, &m->id, reason);
        }
        wal_track_report(w->t, ticket, 0);
        return -1;
    }
    r->produced++;
    r->k.inflight_bytes += m->payload_len + strlen(m->key);
    if (r->m != NULL)
        metrics_observe(r->m, H_E2E_SECONDS, (double)(relay_wall_ms() - m->created_us / 1000) / 1e3);
    return 0;
}

/* A message done without Kafka (dead-lettered, or put in the table): its
 * transaction may be confirmed past it. */
static void done_without_kafka(relay_wal *w)
{
    wal_track_report(w->t, wal_track_message(w->t), 1);
}

static void msg_params(const wal_msg *m, char id[FERRY_UUID_STRING_SIZE], char seq[24],
                       char created[40])
{
    ferry_uuid_format(&m->id, id);
    snprintf(seq, 24, "%" PRId64, m->seq);
    snprintf(created, 40, "%.6f", (double)m->created_us / 1e6);
}

/*
 * The message failed max_attempts times in a row: a relay dead letter,
 * which parks its key (its later messages go to the table, and emit sends
 * the key's new ones there too) until the dead letter is replayed or
 * discarded. Under the lease, as the table source's are under theirs.
 */
static int dead_letter(relay *r, const wal_msg *m)
{
    relay_wal *w = r->wal;
    char id[FERRY_UUID_STRING_SIZE], seq[24], created[40], attempts[16];
    msg_params(m, id, seq, created);
    snprintf(attempts, sizeof attempts, "%d", w->poison_fails);
    const char *p[11] = {id, m->topic, m->aggtype, m->key, m->type, m->payload, m->headers,
                         seq, created, attempts, w->poison_reason};
    PGresult *res = PQexecParams(
        w->sql,
        "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, "
        "  aggregateid, type, payload, headers, seq, shard, created_at, attempts, reason) "
        "SELECT $1::uuid, '', $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::bigint, k.shard, "
        "       to_timestamp($9::float8), $10::int, $11 "
        "  FROM ferry.outbox_key k WHERE k.topic = $2 AND k.key = $4 "
        "ON CONFLICT (message_id, consumer) DO NOTHING",
        11, NULL, p, NULL, NULL, 0);
    if (relay_db_result(res, PGRES_COMMAND_OK, FERRY_LOG_ERROR, "wal.dead_letter",
                        "could not move message %s to the dead letters", id) != 0)
        return -1;
    bool written = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    if (!written) {
        /* Nothing inserted: a letter for it is there already (decoded
         * again), or its key row is not visible yet (the key's first
         * message, its transaction committing). Only the first may go on. */
        const char *q[1] = {id};
        res = PQexecParams(w->sql, "SELECT count(*) FROM ferry.dead_letter "
                                   "WHERE message_id = $1::uuid AND consumer = ''",
                           1, NULL, q, NULL, NULL, 0);
        bool there = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                     strcmp(PQgetvalue(res, 0, 0), "1") == 0;
        PQclear(res);
        if (!there) {
            char why[256];
            snprintf(why, sizeof why, "message %s could not be made a dead letter: its key "
                     "is not visible yet", id);
            restart_stream(r, why);
            return -1;
        }
    }
    park(w, m->topic, m->key, INT64_MIN);
    r->dead_lettered++;
    relay_count(r, M_DEAD_LETTERED, 1);
    ferry__log_json(FERRY_LOG_ERROR, "message.dead_lettered",
                   json_pack("{s:s, s:s, s:s, s:i, s:s}", "id", id, "topic", m->topic, "key",
                             m->key, "attempts", w->poison_fails, "reason", w->poison_reason),
                   "message %s moved to ferry.dead_letter after %d attempts: %s; its key's "
                   "later messages wait in the table until the dead letter is replayed or "
                   "discarded", id, w->poison_fails, w->poison_reason);
    w->poison_fails = 0;
    done_without_kafka(w);
    return 0;
}

/* A later message of a parked key: into the table, at its position. */
static int to_table(relay *r, const wal_msg *m)
{
    relay_wal *w = r->wal;
    char id[FERRY_UUID_STRING_SIZE], seq[24], created[40];
    msg_params(m, id, seq, created);
    const char *p[9] = {id, m->topic, m->key, m->aggtype, m->type, m->payload, m->headers, seq,
                        created};
    PGresult *res = PQexecParams(w->sql,
                                 "SELECT ferry.wal_park($1::uuid, $2, $3, $4, $5, $6::jsonb, "
                                 "$7::jsonb, $8::bigint, to_timestamp($9::float8))",
                                 9, NULL, p, NULL, NULL, 0);
    if (relay_db_result(res, PGRES_TUPLES_OK, FERRY_LOG_ERROR, "wal.park",
                        "could not put message %s of the parked key %s/%s in the table", id,
                        m->topic, m->key) != 0)
        return -1;
    bool parked = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!parked) {
        /* Its position is not one the database shows handed out yet: the
         * stream decodes a commit before the committing transaction is
         * visible (a synchronous standby can keep it waiting), and
         * wal_park waited a few seconds for it. Going past the message
         * would lose it (it did: an outside audit); from the slot, it
         * comes again. */
        char why[256];
        snprintf(why, sizeof why, "message %s of the parked key's position %s is not visible "
                 "yet (its transaction is committing)", id, seq);
        restart_stream(r, why);
        return -1;
    }
    ferry__log_json(FERRY_LOG_INFO, "wal.parked",
                   json_pack("{s:s, s:s, s:s}", "id", id, "topic", m->topic, "key", m->key),
                   "message %s waits in the outbox behind its key's dead letter or earlier "
                   "row", id);
    done_without_kafka(w);
    return 0;
}

/* One XLogData frame. 0, or -1 when the stream was restarted. */
static int on_data(relay *r, const wal_frame *f)
{
    relay_wal *w = r->wal;
    wal_pgout p;
    char why[256];
    if (wal_pgout_parse(f->data, f->len, &p, why, sizeof why) != 0) {
        restart_stream(r, why);
        return -1;
    }
    switch (p.tag) {
    case 'B':
        if (wal_track_begin(w->t) != 0) {
            restart_stream(r, "BEGIN inside a transaction, or too many unconfirmed "
                              "transactions");
            return -1;
        }
        break;
    case 'C':
        if (wal_track_commit(w->t, p.end_lsn) != 0) {
            restart_stream(r, "COMMIT outside a transaction, or before the last one");
            return -1;
        }
        break;
    case 'M': {
        if (strcmp(p.prefix, PREFIX) != 0)
            break;              /* heartbeats, other programs' messages */
        w->decoded++;
        relay_count(r, M_WAL_DECODED, 1);
        wal_msg m;
        char lsn[32];
        wal_lsn_format(p.lsn, lsn);
        if (!p.transactional) {
            snprintf(why, sizeof why, "a non-transactional message (emit writes only "
                     "transactional ones)");
        } else if (wal_msg_parse(p.content, p.content_len, w->token, r->db.max_payload,
                                 &w->scratch, &m, why, sizeof why) == 0 ||
                   (relay_db_limit_grew(r, w->sql) &&
                    wal_msg_parse(p.content, p.content_len, w->token, r->db.max_payload,
                                  &w->scratch, &m, why, sizeof why) == 0)) {
            if (w->poison_fails >= r->cfg->max_attempts &&
                memcmp(m.id.bytes, w->poison.bytes, 16) == 0) {
                if (dead_letter(r, &m) != 0) {
                    restart_stream(r, "could not write a dead letter");
                    return -1;
                }
                break;
            }
            int parked = is_parked(w, m.topic, m.key, m.seq);
            if (parked < 0) {
                restart_stream(r, "could not look up whether a key is parked");
                return -1;
            }
            if (parked && to_table(r, &m) != 0) {
                restart_stream(r, "could not put a parked key's message in the table");
                return -1;
            }
            /* A message that could not be produced is reported to the
             * tracker as failed; the loop restarts the stream for it. */
            if (!parked)
                (void)produce(r, &m);
            break;
        }
        /* Refused, never guessed at: it is not a message of ferry.emit. */
        w->refused++;
        relay_count(r, M_WAL_REFUSED, 1);
        ferry__log_json(FERRY_LOG_ERROR, "wal.refused", json_pack("{s:s, s:s}", "lsn", lsn,
                                                                 "reason", why),
                       "refused the 'ferry' message at %s: %s", lsn, why);
        break;
    }
    default:
        break;                  /* outbox rows: the table path's */
    }
    return 0;
}

/* Whether another message may be read: fewer than max_inflight in
 * flight, and (unless the producer holds nothing) few enough bytes in the
 * producer that the largest message still fits in librdkafka's queue
 * (relay_kafka.c, inflight_bytes_budget), so that produce() does not find
 * it full: a full queue failed the message, and the stream restarted from
 * the slot and sent everything unconfirmed again, the same queue filling
 * again. The bytes are the producer's, not the stream's: after a restart
 * the messages of the stream before are still in it until their reports
 * come, and the new stream waits for them. */
static int room(const relay *r)
{
    const relay_wal *w = r->wal;
    if (wal_track_inflight(w->t) >= r->cfg->max_inflight || wal_track_full(w->t))
        return 0;
    return r->k.inflight_bytes == 0 || r->k.inflight_bytes < r->k.inflight_bytes_budget;
}

/* Read what the server sent, while there is room. 0, or -1 when the
 * stream ended (restarted). */
static int read_stream(relay *r)
{
    relay_wal *w = r->wal;
    for (int n = 0; n < 10000 && w->repl != NULL; n++) {
        if (!room(r))
            return 0;
        /* After a failure nothing more is produced: a key's later message
         * must not go out before the one that failed; the stream restarts
         * from the slot. */
        if (wal_track_failed(w->t))
            return 0;
        char *buf = NULL;
        int len = PQgetCopyData(w->repl, &buf, 1);
        if (len == 0)
            return 0;
        if (len < 0) {
            char why[512];
            PGresult *res = PQgetResult(w->repl);
            snprintf(why, sizeof why, "the server ended the stream: %s",
                     len == -2 ? PQerrorMessage(w->repl)
                               : res ? PQresultErrorMessage(res) : "no reason given");
            PQclear(res);
            restart_stream(r, why);
            return -1;
        }
        wal_frame f;
        char why[256];
        if (wal_frame_parse(buf, (size_t)len, &f, why, sizeof why) != 0) {
            PQfreemem(buf);
            restart_stream(r, why);
            return -1;
        }
        if (f.wal_end > w->wal_end)
            w->wal_end = f.wal_end;
        w->last_data = ferry__now_ms();
        if (f.kind == 'w') {
            if (on_data(r, &f) != 0) {
                PQfreemem(buf);
                return -1;
            }
        } else {
            wal_track_idle(w->t, f.wal_end);
            if (f.reply)
                send_feedback(r, 0);
        }
        PQfreemem(buf);
    }
    return 0;
}

/* Whether what is done every `every` ms is due at now; when it is, the
 * next time is set. */
static bool due(int64_t now, int64_t *next, int64_t every)
{
    if (now < *next)
        return false;
    *next = now + every;
    return true;
}

/* A heartbeat on a quiet database: a non-transactional message of its
 * own prefix, which the loop skips, gives the server something of ours
 * to decode, and the keepalive after it a position to confirm. */
static int heartbeat(relay *r, int64_t now)
{
    relay_wal *w = r->wal;
    if (!due(now, &w->next_heartbeat, w->heartbeat_ms))
        return 0;
    if (now - w->last_data < w->heartbeat_ms)
        return 0;
    PGresult *res = PQexec(w->sql, "SELECT pg_logical_emit_message(false, 'ferry-heartbeat', '')");
    if (relay_db_result(res, PGRES_TUPLES_OK, FERRY_LOG_WARN, "wal.heartbeat",
                        "could not write a heartbeat") != 0)
        return -1;
    PQclear(res);
    return 0;
}

/* Renew the lease while streaming; stand by when another relay took it
 * (we were paused past it). 0, or -1 when the database could not be
 * asked (the stream will say). */
static int lease_tick(relay *r, int64_t now)
{
    relay_wal *w = r->wal;
    if (w->repl == NULL || now < w->next_lease)
        return 0;
    w->next_lease = now + r->cfg->lease_ttl_ms / 3;
    int64_t epoch = lease_take(r);
    if (epoch == w->lease_epoch)
        return 0;
    if (epoch < 0)
        return -1;
    if (epoch > 0)
        ferry__log(FERRY_LOG_WARN, "wal.lease_lapsed", "the lease wal:%s ran out before it was "
                  "renewed (epoch %lld, ours %lld): taken again, streaming on; the slot let "
                  "no other relay stream meanwhile", w->slot, (long long)epoch,
                  (long long)w->lease_epoch);
    else
        ferry__log(FERRY_LOG_WARN, "wal.lease_lost", "the lease wal:%s went to another relay "
                  "(ours was epoch %lld): stopping the stream, standing by", w->slot,
                  (long long)w->lease_epoch);
    w->lease_epoch = epoch > 0 ? epoch : 0;
    if (epoch == 0) {
        stop_stream(r);
        wal_track_reset(w->t);
        w->standby = 1;
        w->retry_at = now + STANDBY_RETRY_MS;
    }
    return 0;
}

/* The confirmed position in ferry.wal_slot, for `slot recreate` to
 * report from should the slot be lost. */
static int record_confirmed(relay *r)
{
    relay_wal *w = r->wal;
    if (w->confirmed_sent == 0)
        return 0;
    char lsn[32];
    wal_lsn_format(w->confirmed_sent, lsn);
    const char *p[2] = {w->slot, lsn};
    PGresult *res = PQexecParams(w->sql,
                                 "UPDATE ferry.wal_slot SET confirmed_lsn = $2::pg_lsn, "
                                 "confirmed_at = now() WHERE slot_name = $1 "
                                 "AND confirmed_lsn IS DISTINCT FROM $2::pg_lsn",
                                 2, NULL, p, NULL, NULL, 0);
    if (relay_db_result(res, PGRES_COMMAND_OK, FERRY_LOG_WARN, "wal.slot",
                        "could not record the confirmed position %s in ferry.wal_slot",
                        lsn) != 0)
        return -1;
    PQclear(res);
    return 0;
}

/* Every second: the slot's state, the gauges, and the confirmed position
 * for `ferry-relay slot recreate` to report from. */
/* Metrics, the slot's state and /healthz, every HEALTH_MS. 0, or -1
 * when the slot is lost (the stream stopped) or its position could not be
 * recorded. */
static int health(relay *r, int64_t now)
{
    relay_wal *w = r->wal;
    if (!due(now, &w->next_health, HEALTH_MS))
        return 0;
    if (PQstatus(w->sql) != CONNECTION_OK)
        PQreset(w->sql);
    if (r->m != NULL) {
        metrics_set(r->m, G_INFLIGHT, wal_track_inflight(w->t));
        metrics_set(r->m, G_INFLIGHT_BYTES, (int64_t)r->k.inflight_bytes);
        metrics_set(r->m, G_KAFKA_QUEUE, r->k.rk ? rd_kafka_outq_len(r->k.rk) : 0);
        int64_t behind = wal_track_inflight(w->t) > 0 && w->confirmed_at_ms > 0
                             ? now - w->confirmed_at_ms : 0;
        metrics_set(r->m, G_WAL_LAG_MS, behind);
    }
    if (w->repl == NULL)
        return 0;
    char why[512];
    slot_state st = check_slot(r, why, sizeof why);
    if (st == SLOT_LOST) {
        ferry__log_json(FERRY_LOG_ERROR, "wal.slot", json_pack("{s:s}", "slot", w->slot), "%s",
                       why);
        w->slot_problem = 1;
        relay_set_health(r, 0, why);
        stop_stream(r);
        w->retry_at = now + 5000;
        return -1;
    }
    int rc = st == SLOT_OK ? record_confirmed(r) : 0;
    if (atomic_load(&r->k.down))
        relay_set_health(r, 0, "kafka unreachable: every broker is down");
    else if (w->unreserved)
        relay_set_health(r, 0, w->unreserved_why);
    else
        relay_set_health(r, 1, "");
    return rc;
}

static void wait_for_events(relay *r, int timeout_ms)
{
    relay_wal *w = r->wal;
    struct pollfd fds[2] = {
        {.fd = r->k.event_pipe[0], .events = POLLIN},
        {.fd = w->repl != NULL && room(r) ? PQsocket(w->repl) : -1,
         .events = POLLIN}};
    poll(fds, 2, timeout_ms);
    if (fds[1].revents & POLLIN)
        PQconsumeInput(w->repl);
    char buf[256];
    while (read(r->k.event_pipe[0], buf, sizeof buf) > 0)
        ;
}

int relay_wal_run(relay *r, volatile sig_atomic_t *stop)
{
    relay_wal *w = calloc(1, sizeof *w);
    int status = 1;
    if (w == NULL)
        return 1;
    w->t = wal_track_new(TRACK_TXS);
    w->backoff_ms = 100;
    w->heartbeat_ms = 10000;
    w->sql = connect_db(r, 0);
    if (w->t == NULL || PQstatus(w->sql) != CONNECTION_OK) {
        ferry__log(FERRY_LOG_ERROR, "wal.connect", "could not connect: %s",
                  w->sql ? PQerrorMessage(w->sql) : "out of memory");
        goto out;
    }
    r->wal = w;
    if (relay_refuse_live_holder(r, w->sql) != 0)
        goto out;
    relay_set_source(r, w->sql);
    if (read_settings(r) != 0)
        goto out;
    int waited = relay_kafka_start(r) != 0 ? -1 : relay_await_kafka(r);
    if (waited == 1) {
        status = 0;         /* stopped while waiting for Kafka: nothing decoded */
        relay_log_stop(r, status, "decoded", w->decoded, w->refused);
    }
    if (waited != 0)
        goto out;
    ferry__log_json(FERRY_LOG_INFO, "relay.start",
                   json_pack("{s:s, s:s, s:s}", "holder", r->holder, "source", "wal", "slot",
                             w->slot),
                   "ferry-relay %s started, streaming the WAL", ferry_version());

    int stopping = 0, clean = 0;
    int64_t stop_by = 0;
    for (;;) {
        int64_t now = ferry__now_ms();
        if (*stop && !stopping) {
            stopping = 1;
            stop_by = now + r->cfg->stop_grace_ms;
            ferry__log(FERRY_LOG_INFO, "relay.stopping", "stopping: waiting up to %d ms for "
                      "%" PRId64 " in-flight deliveries", r->cfg->stop_grace_ms,
                      wal_track_inflight(w->t));
        }
        if (w->repl == NULL && !stopping && !r->k.resize && now >= w->retry_at) {
            if (start_stream(r) != 0) {
                /* --once publishes what is there now, or says it cannot
                 * (the slot missing, or another relay streaming it). */
                if (r->cfg->once) {
                    if (w->standby)
                        ferry__log(FERRY_LOG_WARN, "relay.once", "another relay streams the "
                                  "slot \"%s\": nothing to do", w->slot);
                    break;
                }
                w->retry_at = now + (w->standby ? STANDBY_RETRY_MS : w->backoff_ms);
                if (!w->standby)
                    w->backoff_ms = w->backoff_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                                                      : w->backoff_ms * 2;
            }
        }
        rd_kafka_poll(r->k.rk, 0);
        char fatal[512];
        if (rd_kafka_fatal_error(r->k.rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            restart_stream(r, fatal);
            if (relay_kafka_rebuild(r, fatal) != 0)
                goto out;
        }
        if (wal_track_failed(w->t) && w->repl != NULL)
            restart_stream(r, "a message failed");
        /* A producer too small for a grown limit is made again once the
         * producer has delivered what it holds (or RESIZE_WAIT_MS passed:
         * what it held goes out again from the slot); the stream,
         * restarted above for the message it refused, waits for it. */
        if (!stopping && relay_kafka_resize_if_due(r, now) != 0)
            goto out;
        if (w->repl != NULL && !stopping)
            read_stream(r);
        if (w->repl != NULL) {
            uint64_t c = wal_track_confirmable(w->t);
            if (c > w->confirmed_sent || now >= w->next_feedback)
                if (send_feedback(r, 0) != 0)
                    restart_stream(r, "the replication session is gone");
        }
        /* Each logs its own failure and is tried again at its next tick;
         * the stream's own errors restart it. */
        if (w->repl != NULL && !stopping)
            (void)heartbeat(r, now);
        (void)lease_tick(r, now);
        (void)health(r, now);
        if (stopping && wal_track_inflight(w->t) == 0) {
            clean = 1;
            break;
        }
        if (stopping && now >= stop_by)
            break;
        if (r->cfg->once && w->repl != NULL && w->once_target > 0 &&
            w->confirmed_sent >= w->once_target && wal_track_inflight(w->t) == 0) {
            clean = 1;
            break;
        }
        wait_for_events(r, w->repl != NULL && wal_track_inflight(w->t) == 0 ? 100 : 20);
    }
    if (w->repl != NULL) {
        wal_track_confirmable(w->t);
        send_feedback(r, 0);
        PQputCopyEnd(w->repl, NULL);
        PQflush(w->repl);
    }
    PQfinish(w->repl);
    w->repl = NULL;
    /* both log their failure; the slot itself is confirmed, the lease
     * expires */
    (void)record_confirmed(r);
    (void)lease_release(r);
    /* --once: 0 only when everything went out the first time (no message
     * refused, none failed), as the table source says. */
    status = clean && r->cfg->once ? (w->refused > 0 || r->undelivered > 0 ? 1 : 0)
                                   : clean ? 0 : 1;
    if (r->cfg->once && w->slot_problem)
        status = 1;
    relay_log_stop(r, status, "decoded", w->decoded, w->refused);
out:
    if (r->k.rk != NULL)
        relay_kafka_stop(r, 200);
    PQfinish(w->repl);
    r->wal = NULL;
    PQfinish(w->sql);
    wal_track_free(w->t);
    wal_scratch_free(&w->scratch);
    tdestroy(w->parked, free);
    free(w);
    return status;
}
