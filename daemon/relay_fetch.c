/*
 * relay_fetch.c — the sweep's fetch, and the produce of every row the
 * scheduler admits; failed messages counted in the database.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "relay_int.h"

/* Bytes a fetch may bring at most, beside its rows: payload, key and
 * headers of each row (the headers as the text the fetch returns: jsonb's
 * stored size would count a compressible 64 KiB as almost nothing). The
 * first row always comes, whatever its size. */
#define FETCH_BYTES (8 * 1024 * 1024)
/* Rows this relay has out that the fetch leaves out ($9), at most: at
 * 2,000 rows/s some tens. More go unlisted (and are read, then skipped,
 * as before): every row the fetch reads is compared with each listed id
 * (a prepared statement's generic plan does not hash the array), and a
 * drain's thousands would make that, and the parameters, cost more than
 * the rows saved. */
#define FETCH_EXCLUDE_MAX 128

/*
 * The fetch: rows of the served shards ($1) after the cursor ($2..$5), in
 * (shard, topic, key, position) order, at most $6 rows and, counting each
 * payload as its published size (payload_bytes, or $7 for rows written
 * before it was kept), at most $8 bytes after the first row; the columns
 * are C_ID ... C_READY below, and come in binary. Prepared once per
 * session.
 *
 * shard + 0: a filter, not an index condition. As a condition, PostgreSQL
 * 15 starts one index scan per listed shard and reads every remaining
 * entry of the shards before the cursor, so a drain got slower the further
 * it went.
 *
 * $9 lists the rows this relay has out (sched_fetch_exclude): the sweep
 * would skip them (their keys are busy), and at 2,000 rows/s, when every
 * sweep came 1 ms after the last, the tens of rows whose acknowledgement
 * was in flight were most of what each fetch read, turned into text and
 * sent. A key's later rows are still read, and skipped for its busy key.
 *
 * The window runs over the ordered index scan with its LIMIT, and only the
 * rows within the byte budget have their payload turned into text: a
 * backlog of 1 MiB payloads is fetched a few at a time, not 1,000 at once.
 *
 * enable_sort is off on this session: the planner estimates the rows past
 * the cursor from the row comparison's first column and the shard filter
 * from a default, and where that came out low it read every remaining row
 * of the held shards and sorted them instead: 20 to 35 times the work, on
 * a fifth of the batches of a 200,000-row drain, which alone halved its
 * rate. With sorting off, the ordered index scan is the only plan without
 * a penalty.
 */
/*
 * In wal mode a row is ready only once the WAL source's slot is confirmed
 * past the row's wal_lsn: every earlier message of its key that went
 * through WAL is then in Kafka, so a delayed row cannot overtake one
 * (schemas/014_wal_gate.sql says why that holds). Likewise in table mode
 * until the slot is confirmed past the turn from wal mode (wal_until_lsn,
 * schemas/022_wal_until.sql): messages emitted before it may still be in
 * WAL only. A row emit put there in wal mode waits first for a stamp,
 * given once it is seen (stamp_rows, schemas/036_...): the WAL messages
 * of its own transaction are decoded past its insert, at the commit.
 * Not ready, it waits as a delayed row does: its key blocked,
 * every other key flowing. NULL (no slot, a lost one, table mode with the
 * WAL source past the turn): no wait. One InitPlan per fetch
 * (RELAY_WAL_CONFIRMED_SQL, relay_int.h: the lag gauges' look shares it).
 */
#define FETCH_STATEMENT "ferry_relay_fetch"
#define FETCH_SQL                                                                          \
    "SELECT s.id, s.topic, s.aggregateid, s.aggregatetype, s.type, s.payload::text, "      \
    "       s.headers::text, s.seq, s.shard, s.created_at, "                               \
    "       s.available_at <= now() "                                                      \
    "       AND coalesce(s.wal_lsn <= (" RELAY_WAL_CONFIRMED_SQL "), true), "                 \
    "       s.run, coalesce(s.wal_lsn = 'FFFFFFFF/FFFFFFFF'::pg_lsn, false) "             \
    "FROM (SELECT o.id, o.topic, o.aggregateid, o.aggregatetype, o.type, o.payload, "      \
    "             o.headers, o.seq, o.shard, o.created_at, o.available_at, o.wal_lsn, "    \
    "             coalesce(o.payload_bytes, $7) + octet_length(o.aggregateid) "            \
    "             + octet_length(o.headers::text) AS size, "                               \
    "             sum(coalesce(o.payload_bytes, $7) + octet_length(o.aggregateid) "        \
    "                 + octet_length(o.headers::text)) "                                   \
    "               OVER (ORDER BY o.shard, o.topic, o.aggregateid, o.seq "                \
    "                     ROWS UNBOUNDED PRECEDING) AS run "                               \
    "      FROM ferry.outbox o "                                                           \
    "      WHERE (o.shard + 0) = ANY ($1) AND o.published_at IS NULL "                     \
    "        AND (o.shard, o.topic, o.aggregateid, o.seq) > ($2, $3, $4, $5) "             \
    "        AND o.id <> ALL ($9) "                                                         \
    "        AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "     \
    "                        AND d.topic = o.topic AND d.aggregateid = o.aggregateid) "    \
    "      ORDER BY o.shard, o.topic, o.aggregateid, o.seq "                               \
    "      LIMIT $6) s "                                                                   \
    "WHERE s.run - s.size < $8 "                                                           \
    "ORDER BY s.shard, s.topic, s.aggregateid, s.seq"

int relay_fetch_prepare(relay *r)
{
    static const Oid types[9] = {1007 /* int4[] */, 23 /* int4 */, 25 /* text */,
                                 25 /* text */, 20 /* int8 */, 23 /* int4 */, 23 /* int4 */,
                                 20 /* int8 */, 2951 /* uuid[] */};
    PGresult *res = PQprepare(r->db.main, FETCH_STATEMENT, FETCH_SQL, 9, types);
    if (relay_db_result(res, PGRES_COMMAND_OK, FERRY_LOG_ERROR, "db.prepare",
                        "could not prepare the fetch") != 0)
        return -1;
    PQclear(res);
    return 0;
}

enum {
    C_ID, C_TOPIC, C_KEY, C_AGGTYPE, C_TYPE, C_PAYLOAD, C_HEADERS, C_SEQ, C_SHARD,
    C_CREATED_AT, C_READY, C_RUN, C_UNSTAMPED, C_COUNT
};

typedef relay_row row;

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

/* One fetched row. The fetch returns binary results, which saves the
 * server formatting the uuid, the numbers and the time; text columns come
 * as they are, each ending in a NUL. Returns 0, or -1 for a row whose
 * fixed-size columns are not of their size (not from this statement). */
static int row_read(const PGresult *res, int i, row *out)
{
    if (PQgetlength(res, i, C_ID) != 16 || PQgetlength(res, i, C_SEQ) != 8 ||
        PQgetlength(res, i, C_SHARD) != 4 || PQgetlength(res, i, C_CREATED_AT) != 8 ||
        PQgetlength(res, i, C_READY) != 1 || PQgetlength(res, i, C_UNSTAMPED) != 1)
        return -1;
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
    /* created_at as PostgreSQL sends it (microseconds since 2000), held to
     * the years ce_time's RFC 3339 can write, 0001 to 9999: a row written
     * by hand may say 'infinity' (INT64_MAX), whose move to 1970
     * overflowed (and ce_time read year -290278). */
    const int64_t first_us = INT64_C(-62135596800000000) - PG_EPOCH_UNIX_US;
    const int64_t last_us = INT64_C(253402300799999999) - PG_EPOCH_UNIX_US;
    int64_t created = (int64_t)get64(PQgetvalue(res, i, C_CREATED_AT));
    created = created < first_us ? first_us : created > last_us ? last_us : created;
    out->created_us = created + PG_EPOCH_UNIX_US;
    out->ready = PQgetvalue(res, i, C_READY)[0] != 0;
    out->unstamped = PQgetvalue(res, i, C_UNSTAMPED)[0] != 0;
    return 0;
}

/* ce_time: RFC 3339 in UTC with microseconds, 2026-11-22T01:02:03.456789Z.
 * The messages of a sweep or a transaction share their second, so the
 * date and time are formatted once per second (cache) and only the
 * microseconds per message: a sixth of the relay's own CPU per message
 * went to snprintf and gmtime_r (perf, bench-wal's drain). */
typedef struct time_cache {
    int64_t sec;
    int valid;
    size_t len;
    char text[24];              /* "2026-11-22T01:02:03" */
} time_cache;

static void format_time(time_cache *tc, int64_t unix_us, char out[40])
{
    int64_t sec = unix_us / 1000000, us = unix_us % 1000000;
    if (us < 0) {
        us += 1000000;
        sec--;
    }
    if (!tc->valid || tc->sec != sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(tc->text, sizeof tc->text, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        tc->len = strlen(tc->text);
        tc->sec = sec;
        tc->valid = 1;
    }
    size_t n = tc->len;
    memcpy(out, tc->text, n);
    out[n++] = '.';
    for (int i = 5; i >= 0; i--) {
        out[n + (size_t)i] = (char)('0' + us % 10);
        us /= 10;
    }
    n += 6;
    out[n++] = 'Z';
    out[n] = '\0';
}

/* A position in decimal (1 .. 2^63-1; 0 and negatives too, for safety). */
static void format_seq(int64_t v, char out[24])
{
    char tmp[24];
    int n = 0, neg = v < 0;
    uint64_t u = neg ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    int o = 0;
    if (neg)
        out[o++] = '-';
    while (n > 0)
        out[o++] = tmp[--n];
    out[o] = '\0';
}

/* Add one header; values are copied by librdkafka. */
static void header(rd_kafka_headers_t *h, const char *name, const char *value)
{
    rd_kafka_header_add(h, name, -1, value, -1);
}

/*
 * The names the relay sets itself (relay_headers_of, below). A row's header of
 * such a name is dropped, not published beside the relay's: readers see one
 * value (kafkajs returned both content-type headers, and the CloudEvents SDK
 * threw). ferry.emit refuses these ferry_* and ce_* names already;
 * content-type it accepts (schema 1), so the relay's value wins here,
 * whatever the case of the caller's name — and a row written around emit
 * by another role is hostile input all the same. Other ferry_* names are
 * not dropped: ferry_discarded on a discard marker comes from the row.
 */
bool relay_header_reserved(const char *name)
{
    static const char *const set[] = {"ferry_id", "ferry_type", "ferry_aggregate_type",
                                      "ferry_seq", "ce_specversion", "ce_id", "ce_type",
                                      "ce_source", "ce_time"};
    if (strcasecmp(name, "content-type") == 0)
        return true;
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        if (strcmp(name, set[i]) == 0)
            return true;
    return false;
}

/* The WAL source (relay_wal.c) sends the same headers: one function.
 * The row's own headers are a JSON object whose values emit made strings;
 * a row written around emit may hold others, published as their compact
 * JSON text (42 as "42", null as "null", an object as its text) rather
 * than left out unsaid. Headers that are not an object at all cannot be
 * published as given: *bad is set (when not NULL) and only the relay's
 * own headers are in what is returned. */
rd_kafka_headers_t *relay_headers_of(relay *r, const relay_row *w, const char *id, int *bad)
{
    static _Thread_local time_cache tc;
    char seq[24], ce_time[40];
    format_seq(w->seq, seq);
    format_time(&tc, w->created_us, ce_time);
    rd_kafka_headers_t *h = rd_kafka_headers_new(16);
    header(h, "ferry_id", id);
    header(h, "ferry_type", w->type);
    header(h, "ferry_aggregate_type", w->aggtype);
    header(h, "ferry_seq", seq);
    header(h, "ce_specversion", "1.0");
    header(h, "ce_id", id);
    header(h, "ce_type", w->type);
    header(h, "ce_source", r->source);
    header(h, "ce_time", ce_time);
    header(h, "content-type", "application/json");
    if (bad != NULL)
        *bad = 0;
    if (strcmp(w->headers, "{}") != 0) {
        json_error_t jerr;
        json_t *obj = json_loads(w->headers, JSON_DECODE_ANY, &jerr);
        const char *name;
        json_t *v;
        if (json_is_object(obj)) {
            json_object_foreach(obj, name, v) {
                if (relay_header_reserved(name))
                    continue;
                if (json_is_string(v)) {
                    header(h, name, json_string_value(v));
                    continue;
                }
                char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
                if (text != NULL)
                    header(h, name, text);
                else if (bad != NULL)
                    *bad = RELAY_HEADERS_UNREAD;    /* out of memory: this attempt fails */
                free(text);
            }
        } else if (bad != NULL) {
            /* jsonb holds numbers jansson cannot read (beyond a double's
             * range): such headers are unread, not "not an object". */
            *bad = obj == NULL ? RELAY_HEADERS_UNREAD : RELAY_HEADERS_NOT_OBJECT;
        }
        json_decref(obj);
    }
    return h;
}

/* Produce an admitted row. Returns 0, or -1 when the producer refused it
 * (the scheduler has it failed; a refusal that is the message's own is
 * counted in the database). */
static int produce_row(relay *r, const row *w, relay_topic *t, int partition, int64_t now)
{
    char id[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&w->id, id);
    int slot = sched_produced(r->s, w->shard, w->topic, w->key, partition, w->id.bytes,
                              w->created_us / 1000,
                              w->payload_len + strlen(w->key) + strlen(w->headers), r->k.gen,
                              now);
    if (slot < 0) {
        sched_produce_failed(r->s, w->topic, w->key, now);
        return -1;
    }
    int bad_headers;
    rd_kafka_headers_t *h = relay_headers_of(r, w, id, &bad_headers);
    if (bad_headers) {
        /* The row's own fault, counted towards its dead letter as a
         * message too large is. */
        rd_kafka_headers_destroy(h);
        sched_delivered(r->s, slot, 0, now);
        relay_count(r, M_FAIL_PRODUCE, 1);
        r->undelivered++;
        relay_note_failure(r, w->id.bytes, w->shard, sched_lease_epoch(r->s, w->shard),
                           bad_headers == RELAY_HEADERS_NOT_OBJECT
                               ? "could not produce: its headers (ferry.outbox.headers) are "
                                 "not a JSON object"
                               : "could not produce: its headers (ferry.outbox.headers) could "
                                 "not be read (a number beyond a double's range, say)");
        return -1;
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        r->k.rk, RD_KAFKA_V_RKT(t->rkt), RD_KAFKA_V_KEY(w->key, strlen(w->key)),
        RD_KAFKA_V_VALUE((void *)w->payload, w->payload_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE(relay_kafka_opaque(r, slot)), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        r->produced++;
        return 0;
    }
    rd_kafka_headers_destroy(h);
    /* Not produced: the slot goes back as a failure, and the key waits for
     * its retry time. A full queue is nobody's fault, nor is a message the
     * producer is too small for since max_payload_bytes grew (the producer
     * is made again); anything else is the message's (too large, say),
     * counted towards its dead letter. */
    int lost = err == RD_KAFKA_RESP_ERR__QUEUE_FULL || err == RD_KAFKA_RESP_ERR__FATAL ||
               (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && relay_kafka_too_small(r, r->db.main));
    sched_delivered(r->s, slot, lost ? -1 : 0, now);
    if (lost || relay_kafka_topic_refused(err)) {
        if (!lost)
            relay_count(r, M_FAIL_PRODUCE, 1);
        return -1;      /* the producer's state, or the topic's: not the message's */
    }
    char reason[256];
    snprintf(reason, sizeof reason, "could not produce: %s (%s)", rd_kafka_err2str(err),
             rd_kafka_err2name(err));
    relay_count(r, M_FAIL_PRODUCE, 1);
    r->undelivered++;
    relay_note_failure(r, w->id.bytes, w->shard, sched_lease_epoch(r->s, w->shard), reason);
    return -1;
}

/* $9: a one-dimensional uuid[] in the binary format (array_recv), possibly
 * empty. Returns its length in out (room for 20 + n * 20 bytes). */
static int exclude_array(const relay *r, unsigned char *out, unsigned char (*ids)[16])
{
    int n = sched_fetch_exclude(r->s, ids, FETCH_EXCLUDE_MAX);
    unsigned char *p = relay_put_array_header(out, 2950 /* uuid */, n);
    for (int i = 0; i < n; i++) {
        p = relay_put32(p, 16);
        memcpy(p, ids[i], 16);
        p += 16;
    }
    return (int)(p - out);
}

/* Kafka's rules for a topic's name, which emit checks: 1 to 249 bytes of
 * [A-Za-z0-9._-], not "." or "..". */
static bool topic_name_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return false;
    return strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/*
 * A row whose topic Kafka cannot take, written around emit (which refuses
 * such names): it fails as a message the broker refuses does, counted
 * towards its dead letter, its key waiting; the sweep goes on past it.
 * Before, librdkafka's refusal of the topic handle read as "out of
 * memory: resume from this row", and every later row of the sweep waited
 * for ever behind it (an outside audit: a 513-byte topic).
 */
static void refuse_row(relay *r, const row *w, int64_t now)
{
    sched_admit a = sched_admit_row(r->s, w->shard, w->topic, w->key, -1, w->ready, now, NULL);
    if (a == ADMIT_PRODUCE) {
        sched_produce_failed(r->s, w->topic, w->key, now);
        relay_count(r, M_FAIL_PRODUCE, 1);
        r->undelivered++;
        relay_note_failure(r, w->id.bytes, w->shard, sched_lease_epoch(r->s, w->shard),
                           "could not produce: its topic is not one Kafka takes (1 to 249 "
                           "bytes of [A-Za-z0-9._-], not . or ..)");
    }
    sched_advance(r->s, w->shard, w->topic, w->key, w->seq);
}

/*
 * Rows that emit put into the table in wal mode wait for a stamp of where
 * WAL is once their transaction has committed (schemas/036_...): stamp
 * those this fetch saw held back. buf has room for the array's header (20
 * bytes) and n elements of 20 (length and uuid) of which the uuids are
 * filled in. A row stamped waits for the slot to be confirmed past the
 * stamp and is fetched again as a delayed one is. Returns 0, or -1 with
 * the connection lost.
 */
static int stamp_rows(relay *r, unsigned char *buf, int n)
{
    unsigned char *p = relay_put_array_header(buf, 2950 /* uuid */, n);
    for (int i = 0; i < n; i++) {
        p = relay_put32(p, 16);
        p += 16;
    }
    const char *params[1] = {(const char *)buf};
    const int lengths[1] = {(int)(p - buf)};
    static const int formats[1] = {1};
    PGresult *res = PQexecParams(r->db.main, "SELECT ferry.outbox_wal_stamp($1)", 1,
                                 (const Oid[]){2951 /* uuid[] */}, params, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.main, res, "could not stamp rows held for the WAL source");
        PQclear(res);
        if (PQstatus(r->db.main) != CONNECTION_OK) {
            relay_db_lost(r, "fetch", &err);
            return -1;
        }
        /* A lock or a deadlock with another writer of those rows (the
         * reconciler's repair): they stay unstamped, their keys held, and
         * the next fetch stamps them. The session is fine. */
        ferry__log(FERRY_LOG_WARN, "fetch.stamp", "%s; tried again at the next fetch",
                   err.message);
        return 0;
    }
    ferry__log(FERRY_LOG_DEBUG, "fetch.stamped", "stamped %s of %d rows held for the WAL source",
               PQgetvalue(res, 0, 0), n);
    PQclear(res);
    return 0;
}

int relay_fetch_and_produce(relay *r, int limit)
{
    char *shards = malloc(16 + (size_t)MAX_SHARDS * 6);
    if (shards == NULL)
        return -1;  /* out of memory: the plan asks again */
    size_t n = 0;
    shards[n++] = '{';
    for (int s = 0; s < MAX_SHARDS; s++)
        if (sched_lease_epoch(r->s, s) != 0 && !sched_shard_draining(r->s, s))
            n += (size_t)sprintf(shards + n, "%s%d", n > 1 ? "," : "", s);
    shards[n++] = '}';
    shards[n] = '\0';

    int cshard;
    const char *ctopic, *ckey;
    int64_t cseq;
    sched_cursor(r->s, &cshard, &ctopic, &ckey, &cseq);
    char scshard[16], scseq[24], slim[16], smaxp[16], sbytes[24];
    snprintf(scshard, sizeof scshard, "%d", cshard);
    snprintf(scseq, sizeof scseq, "%" PRId64, cseq);
    snprintf(slim, sizeof slim, "%d", limit);
    snprintf(smaxp, sizeof smaxp, "%d", r->db.max_payload > 0 ? r->db.max_payload : 1048576);
    snprintf(sbytes, sizeof sbytes, "%d", FETCH_BYTES);
    unsigned char(*ids)[16] = malloc(FETCH_EXCLUDE_MAX * sizeof *ids);
    unsigned char *excl = malloc(20 + FETCH_EXCLUDE_MAX * 20);
    if (ids == NULL || excl == NULL) {
        free(ids);
        free(excl);
        free(shards);
        return -1;  /* out of memory: the plan asks again */
    }
    int excl_len = exclude_array(r, excl, ids);
    const char *params[9] = {shards, scshard, ctopic, ckey, scseq, slim, smaxp, sbytes,
                             (const char *)excl};
    const int lengths[9] = {0, 0, 0, 0, 0, 0, 0, 0, excl_len};
    static const int formats[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    PGresult *res = PQexecPrepared(r->db.main, FETCH_STATEMENT, 9, params, lengths, formats, 1);
    free(shards);
    free(ids);
    free(excl);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != C_COUNT) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.main, res, "could not fetch");
        PQclear(res);
        relay_db_lost(r, "fetch", &err);
        return -1;
    }
    int rows = PQntuples(res);
    int stopped = 0;
    int64_t now = ferry__now_ms();
    relay_topic *t = NULL;
    row w;
    unsigned char *stamp = NULL;
    int stamps = 0;
    for (int i = 0; i < rows; i++) {
        if (row_read(res, i, &w) != 0) {
            ferry__log(FERRY_LOG_ERROR, "fetch.row", "a fetched row has columns of the wrong "
                      "size; ending this batch");
            stopped = 1;
            break;
        }
        if (!w.ready && w.unstamped) {
            if (stamp == NULL)
                stamp = malloc(20 + (size_t)rows * 20);
            if (stamp != NULL) {
                memcpy(stamp + 20 + (size_t)stamps * 20 + 4, w.id.bytes, 16);
                stamps++;
            }
        }
        if (t == NULL || strcmp(t->name, w.topic) != 0) {
            /* Checked once per topic of the batch: a handle's name passed. */
            if (!topic_name_ok(w.topic)) {
                refuse_row(r, &w, now);
                continue;
            }
            t = relay_kafka_topic(r, w.topic);
        }
        if (t == NULL) {
            stopped = 1;        /* out of memory: resume from this row */
            break;
        }
        int partition = relay_kafka_partition(r, t, w.key);
        sched_admit a = sched_admit_row(r->s, w.shard, w.topic, w.key, partition, w.ready, now,
                                        NULL);
        if (a == ADMIT_NO_ROOM) {
            stopped = 1;
            break;
        }
        if (a == ADMIT_PRODUCE) {
            produce_row(r, &w, t, partition, now);
#ifdef FERRY_TEST_HOOKS
            if (r->k.fatal_test_after > 0 && r->produced >= (uint64_t)r->k.fatal_test_after) {
                /* Test hook: make librdkafka raise the fatal error it raises
                 * when it cannot keep the gapless guarantee. */
                rd_kafka_test_fatal_error(r->k.rk,
                                          RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                          "injected by FERRY_RELAY_TEST_FATAL_AFTER");
                r->k.fatal_test_after = 0;
            }
#endif
        }
        sched_advance(r->s, w.shard, w.topic, w.key, w.seq);
    }
    if (rows > 0)
        ferry__log_json(FERRY_LOG_DEBUG, "batch.produced",
                       json_pack("{s:i, s:i}", "rows", rows, "inflight", sched_inflight(r->s)),
                       "fetched %d rows", rows);
    /* Fewer rows than asked for is the end of the sweep, unless we stopped
     * early or the byte budget cut the batch: then the last row's running
     * total reached the budget, and more rows may follow. */
    int full = stopped || rows == limit;
    if (!full && rows > 0 && PQgetlength(res, rows - 1, C_RUN) == 8)
        full = (int64_t)get64(PQgetvalue(res, rows - 1, C_RUN)) >= FETCH_BYTES;
    PQclear(res);
    sched_fetched(r->s, full ? limit : rows, limit, now);
    int rc = stamps > 0 ? stamp_rows(r, stamp, stamps) : 0;
    free(stamp);
    return rc;
}

/* ------------------------------------------------------------------ failures */

void relay_note_failure(relay *r, const unsigned char id[16], int shard, int64_t epoch,
                        const char *reason)
{
    if (r->fail.count >= FAILURES_MAX)
        return;     /* counted next time it fails */
    r->permanent_failures++;
    failure *f = &r->fail.list[r->fail.count++];
    ferry_uuid u;
    memcpy(u.bytes, id, 16);
    ferry_uuid_format(&u, f->id);
    f->shard = shard;
    f->epoch = epoch;
    snprintf(f->reason, sizeof f->reason, "%s", reason);
}

/*
 * A message failed for a reason of its own. Count the attempt; at
 * max_attempts move it to the dead letters, which parks its key (the fetch
 * skips keys with a relay dead letter). Both under the lease.
 */
int relay_record_failures(relay *r)
{
    if (!r->db.ok)
        return -1;
    while (r->fail.count > 0) {
        failure *f = &r->fail.list[r->fail.count - 1];
        char shard[16], epoch[24], max[16];
        snprintf(shard, sizeof shard, "%d", f->shard);
        snprintf(epoch, sizeof epoch, "%" PRId64, f->epoch);
        snprintf(max, sizeof max, "%d", r->cfg->max_attempts);
        const char *params[6] = {f->id, shard, epoch, r->holder, max, f->reason};
        PGresult *res = PQexecParams(
            r->db.main,
            /* The row is either updated (one more attempt) or moved, never
             * both: sub-statements of one statement cannot see each other's
             * changes, so both decide from the same snapshot of it (cur).
             * The move is ferry.outbox_dead_letter (schema 9), the one path
             * from the outbox to the dead letters, which rechecks the row
             * under its lock and never drops it on a clash. */
            "WITH l AS (SELECT 1 FROM ferry.lease WHERE name = 'shard:' || $2 "
            "           AND epoch = $3::bigint AND holder = $4 AND expires_at > now() FOR SHARE), "
            "cur AS (SELECT id, attempts FROM ferry.outbox "
            "         WHERE id = $1::uuid AND EXISTS (SELECT 1 FROM l)), "
            "u AS (UPDATE ferry.outbox o SET attempts = o.attempts + 1, last_error = $6 FROM cur "
            "      WHERE o.id = cur.id AND cur.attempts + 1 < $5::int RETURNING o.attempts), "
            "m AS (SELECT d.outcome FROM cur, ferry.outbox_dead_letter(cur.id, $5::int, true, $6) d "
            "      WHERE cur.attempts + 1 >= $5::int) "
            "SELECT (SELECT attempts + 1 FROM cur), (SELECT outcome FROM m)",
            6, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            ferry_error err;
            ferry_error_from_pg(&err, r->db.main, res, "could not record a failed delivery");
            PQclear(res);
            relay_db_lost(r, "failure record", &err);
            if (r->db.ok)
                r->fail.count--;    /* not the connection: drop it rather than loop */
            return -1;
        }
        const char *attempts = PQgetisnull(res, 0, 0) ? "?" : PQgetvalue(res, 0, 0);
        const char *outcome = PQgetisnull(res, 0, 1) ? "" : PQgetvalue(res, 0, 1);
        int moved = strcmp(outcome, "moved") == 0;
        json_t *fields = json_pack("{s:s, s:i, s:s, s:s}", "id", f->id, "shard", f->shard,
                                   "attempts", attempts, "reason", f->reason);
        if (moved) {
            r->dead_lettered++;
            relay_count(r, M_DEAD_LETTERED, 1);
            ferry__log_json(FERRY_LOG_ERROR, "message.dead_lettered", fields,
                           "message %s moved to ferry.dead_letter after %s attempts: %s; "
                           "its key waits until the dead letter is replayed or discarded",
                           f->id, attempts, f->reason);
        } else if (strcmp(outcome, "clash") == 0) {
            /* Left in the outbox, never dropped: see schemas/009. */
            ferry__log_json(FERRY_LOG_ERROR, "message.dead_letter_clash", fields,
                           "message %s failed %s attempts (%s) but cannot be moved to "
                           "ferry.dead_letter, which already holds a relay dead letter with its "
                           "id (another message): it stays in the outbox until a person removes "
                           "one of the two", f->id, attempts, f->reason);
        } else {
            ferry__log_json(FERRY_LOG_WARN, "message.failed", fields,
                           "message %s could not be published (attempt %s): %s", f->id,
                           attempts, f->reason);
        }
        PQclear(res);
        r->fail.count--;
    }
    return 0;
}
