/*
 * relay_int.h — the relay's shell, shared by its stage files:
 *
 *   relay.c        the loop: ask relay_sched what to do, do it, wait
 *   relay_db.c     the two database sessions, reconnecting
 *   relay_lease.c  shard leases: renew what we hold, adopt, take our share
 *   relay_fetch.c  the fetch and the produce of each admitted row
 *   relay_ack.c    the acknowledging statement, sent without waiting
 *   relay_kafka.c  the producer: configuration, partitioning, reports,
 *                  rebuilding after a fatal error
 *
 * Each stage keeps its state in its own part of struct relay; the
 * decisions (what to fetch, when to ack, which shard to give back, wake-ups,
 * when to stop) are relay_sched's.
 */
#ifndef FERRY_RELAY_INT_H
#define FERRY_RELAY_INT_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "../lib/internal.h"
#include "config.h"
#include "lease.h"
#include "metrics.h"
#include "relay_sched.h"

#define SHARD_PREFIX "shard:"
#define RELAY_PREFIX "relay:"
#define NOTIFY_CHANNEL "ferry_outbox"
#define MAX_SHARDS SCHED_SHARDS_MAX
/* The oldest ferry schema the relay runs against (26: ferry.wake_shard_lock). */
#define RELAY_SCHEMA_MIN 26
#define FAILURES_MAX 1024

/* The two sessions, usable only together (ok): main for leases, fetches,
 * failures and LISTEN, in blocking calls; ack for acknowledgements only,
 * non-blocking, so the loop never waits for a DELETE. */
typedef struct relay_db {
    PGconn *main;
    PGconn *ack;
    int ok;
    int64_t retry_at;
    int backoff_ms;
    int shard_count;
    int max_payload;            /* ferry.settings.max_payload_bytes */
} relay_db;

/* Wake-ups (relay_wake.c): the shards whose busy lock the main session
 * holds, those tried since wake-ups went off, and whether they are off. */
typedef struct relay_wake {
    unsigned char locked[MAX_SHARDS];
    unsigned char tried[MAX_SHARDS];
    int off;
    int64_t retry_at;           /* after a failed statement, none before */
    int foreign_told;           /* wake.foreign_lock logged, not yet ..._gone */
} relay_wake;

/* What the broker knows of a topic: its partition count, written by the
 * partitioner (any librdkafka thread), read by the loop. */
typedef struct relay_topic {
    char *name;
    rd_kafka_topic_t *rkt;
    atomic_int partitions;
} relay_topic;

typedef int32_t (*relay_partitioner)(const rd_kafka_topic_t *rkt, const void *key,
                                     size_t keylen, int32_t partition_cnt, void *rkt_opaque,
                                     void *msg_opaque);

typedef struct relay_kafka {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mock;
    rd_kafka_t *mock_host;
    char bootstrap[512];
    unsigned gen;               /* producer generation, in every message's opaque */
    int event_pipe[2];
    void *topics;               /* tsearch tree of relay_topic */
    relay_partitioner partition;
    atomic_int down;            /* every broker down, as librdkafka last said */
    int built_max_payload;      /* the payload limit its message.max.bytes was made for */
    /* Bytes (payloads and keys) the WAL source may have in the producer:
     * what queue.buffering.max.kbytes leaves beside the largest message
     * (message.max.bytes), at most INFLIGHT_BYTES_MAX; 0: one message at
     * a time. inflight_bytes: what it has, produced and not reported,
     * 0 when the producer is made. */
    size_t inflight_bytes_budget;
    size_t inflight_bytes;
    int resize;                 /* the limit grew past it: make it again when idle */
    int64_t resize_since;       /* when resize was set */
#ifdef FERRY_TEST_HOOKS
    int fatal_test_after;       /* FERRY_RELAY_TEST_FATAL_AFTER, test build only */
#endif
} relay_kafka;

/* The acknowledgement in flight on the ack session. */
typedef struct relay_ack {
    int sent;                   /* acks in the statement; 0: none */
    int flushing;               /* the session has not taken it all yet */
    PGresult *res;              /* its result, until the statement's end */
    int64_t sent_ms;
} relay_ack;

/* A failed message, to count in the database (and maybe dead-letter). */
typedef struct failure {
    char id[FERRY_UUID_STRING_SIZE];
    int shard;
    int64_t epoch;
    char reason[256];
} failure;

typedef struct relay_failures {
    failure list[FAILURES_MAX];
    int count;
} relay_failures;

typedef struct relay_lag relay_lag;
typedef struct relay_wal relay_wal;

/* A message to publish, from a fetched row (relay_fetch.c) or from the
 * WAL (relay_wal.c); the strings are NUL-terminated. */
typedef struct relay_row {
    ferry_uuid id;
    const char *topic, *key, *aggtype, *type, *payload, *headers;
    size_t payload_len;
    int64_t seq;
    int shard;
    int64_t created_us;         /* Unix microseconds */
    int ready;                  /* available_at has come, and the WAL gate is open */
    int unstamped;              /* its WAL gate waits for a stamp (schemas/036_...) */
} relay_row;

typedef struct relay {
    const relay_config *cfg;
    relay_metrics *m;
    char holder[256];
    char heartbeat_name[300];
    /* ce_source: cfg->source, or ferry://HOST/DBNAME of the database
     * (relay_set_source), so that services are told apart by default. */
    char source[RELAY_SOURCE_MAX + 1];
    sched *s;

    relay_db db;
    relay_kafka k;
    relay_ack ack;
    relay_failures fail;
    relay_wake wake;
    relay_lag *lag;
    relay_wal *wal;             /* the WAL source's state; NULL: the table source */
    int64_t next_lease_tick;
    int reclaimed;              /* took back our name's leases at start */

    /* outcome, for --once and the exit status */
    uint64_t produced, delivered, undelivered, refused, dead_lettered, permanent_failures;
    uint64_t lease_failures;    /* lease ticks that failed */
    int lease_last_failed;      /* the last one did (--once: why no lease was held) */
    int64_t next_stats;
    int64_t next_kafka_probe;   /* while every broker seemed down */
    int healthy;                /* as last told to /healthz */
    char health_reason[256];
} relay;

/* relay.c */
void relay_count(relay *r, metric_counter c, uint64_t n);
/* The relay.stop line, as both sources end: what was produced and
 * delivered, the source's own count (name: n), what it refused, and
 * whether everything went out (status 0). */
void relay_log_stop(const relay *r, int status, const char *name, uint64_t n, uint64_t refused);
int64_t relay_wall_ms(void);
/* Wait until a broker answers: a sidecar may start before its broker, and
 * must then wait (not exit), visibly, taking no lease: a relay that cannot
 * publish must not sit on shards (or a slot) another could serve. Not
 * ready meanwhile; --once gives up at once. Returns 0 when a broker
 * answered, -1 when asked to stop first or --once (both sources). */
int relay_await_kafka(relay *r);

/* The loop's stages (relay_db_maybe_reconnect, relay_db_drain_notifies,
 * relay_lease_tick, relay_ack_send, relay_ack_poll,
 * relay_fetch_and_produce, relay_record_failures) return 0, or -1 when
 * they could not do their part: the database was or became lost (then
 * relay_db_lost has logged it and told the scheduler, whose next plan is
 * what the loop acts on) or memory ran out (logged where it matters,
 * tried again on the next turn). */

/* relay_wake.c */
/* Wake-ups on (let the busy locks go; the handshake follows) or off (take
 * the busy lock of every shard served), as the scheduler asked. */
void relay_wake_set(relay *r, int on);
/* After the leases changed: let go of the busy lock of a shard no longer
 * served; while off, take that of a shard gained. */
void relay_wake_sync(relay *r);
/* Before a shard's lease goes back: let go of its busy lock first, so
 * that its next holder never finds it held by a relay that left. */
void relay_wake_drop(relay *r, int shard);
void relay_wake_drop_all(relay *r);
/* After a lease tick, with wake-ups on: do the handshake again, so that a
 * shard gained, or a busy lock another session took since (a relay that
 * stopped before it knew it lost the shard), is seen: while one is held
 * the relay looks by itself. */
void relay_wake_recheck(relay *r);
/* The main session is being reset: its locks go with it. */
void relay_wake_forget(relay *r);
/* The handshake's try (relay_sched.h, sched_handshake); 0, or -1 with the
 * database lost. */
int relay_wake_handshake(relay *r);

/* relay_db.c */
int relay_db_connect(relay *r);
/* 0, or -1 (logged: relay.holder_live) when another relay of r's holder
 * name is live on conn's database; conn's session bears the name already
 * (both sources). */
int relay_refuse_live_holder(relay *r, PGconn *conn);
/* r->source, ce_source: the setting, else the default of conn's database
 * (both sources, from their first connection). */
void relay_set_source(relay *r, PGconn *conn);
/* ferry.settings.max_payload_bytes read again on conn: 1 when it is larger
 * than r->db.max_payload, which then takes it; else 0 (a failed read too).
 * For a message over the known limit only (both sources). */
int relay_db_limit_grew(relay *r, PGconn *conn);
/* Is a caller's header called name dropped? The relay sets it
 * (relay_fetch.c says why). */
bool relay_header_reserved(const char *name);
void relay_db_lost(relay *r, const char *what, ferry_error *err);
int relay_db_maybe_reconnect(relay *r);
int relay_db_refresh_settings(relay *r);
int relay_db_drain_notifies(relay *r);
/* A statement's result that must have status want: 0 when it has (res
 * stays the caller's); otherwise "MESSAGE: the server's error" logged at
 * level as event, res cleared, -1. */
int relay_db_result(PGresult *res, ExecStatusType want, int level, const char *event,
                    const char *fmt, ...) FERRY_PRINTF(5, 6);

/* relay_lease.c */
int relay_lease_tick(relay *r);
void relay_lease_release(relay *r, int shard);
void relay_leases_release_all(relay *r);

/* relay_ack.c */
int relay_ack_prepare(relay *r);    /* 0, or -1 (the reason in the connection's error) */
int relay_ack_send(relay *r);
int relay_ack_poll(relay *r, int wait);
void relay_ack_forget(relay *r);

/* relay_fetch.c */
int relay_fetch_prepare(relay *r);  /* 0, or -1 (logged) */
int relay_fetch_and_produce(relay *r, int limit);
int relay_record_failures(relay *r);
void relay_note_failure(relay *r, const unsigned char id[16], int shard, int64_t epoch,
                        const char *reason);
enum { RELAY_HEADERS_OK, RELAY_HEADERS_NOT_OBJECT, RELAY_HEADERS_UNREAD };
/* The headers a message goes out with; *bad (may be NULL) says whether the
 * row's own could not be published as given (RELAY_HEADERS_*). */
rd_kafka_headers_t *relay_headers_of(relay *r, const relay_row *w, const char *id, int *bad);

/* relay_wal.c: the WAL source's loop (instead of relay.c's), and its
 * delivery reports (relay_kafka.c hands them over while r->wal is set). */
int relay_wal_run(relay *r, volatile sig_atomic_t *stop);
void relay_wal_delivered(relay *r, const rd_kafka_message_t *msg);

/* The WAL gate (relay_fetch.c): the slot's confirmed position while the
 * table path must wait for it, else no row: a row whose wal_lsn is past
 * it waits. */
#define RELAY_WAL_CONFIRMED_SQL                                                            \
    "SELECT r.confirmed_flush_lsn FROM ferry.settings st "                                 \
    "  JOIN pg_replication_slots r ON r.slot_name = st.wal_slot "                          \
    "   AND r.database = current_database() "                                              \
    " WHERE (st.emit_mode = 'wal' OR r.confirmed_flush_lsn < st.wal_until_lsn) "           \
    "   AND r.wal_status IS DISTINCT FROM 'lost'"

/* relay_lag.c */
relay_lag *relay_lag_start(const char *conninfo, const char *holder, relay_metrics *m,
                           int stuck_ms);                              /* NULL: none */
/* Why the relay is not ready because rows of its shards have waited for
 * the WAL slot longer than stuck_ms (into why, and 1), or 0. */
int relay_lag_gate_held(relay_lag *l, char *why, size_t size);
void relay_lag_sync(relay_lag *l, const sched *s);
void relay_lag_stop(relay_lag *l);

/* relay_kafka.c */
int relay_kafka_start(relay *r);
int relay_kafka_create(relay *r);
int relay_kafka_rebuild(relay *r, const char *reason);
/* A message librdkafka refused as too large for message.max.bytes: 1 when
 * ferry.settings.max_payload_bytes (read again now, on conn) has grown
 * past what the producer was made for, so that the producer, not the
 * message, is at fault; r->db.max_payload is then the new limit and
 * r->k.resize is set. */
int relay_kafka_too_small(relay *r, PGconn *conn);
/* An error about the message's topic, not the message: the topic unknown
 * to the broker (not created yet, auto-creation off). Its messages are
 * held, as a leaderless partition's are, not counted towards a dead
 * letter (README, "When things fail"). */
bool relay_kafka_topic_refused(rd_kafka_resp_err_t err);
/* A pending resize (r->k.resize), once due: the producer holds nothing, or
 * it has waited RESIZE_WAIT_MS (a partition that does not answer would
 * hold it, and every other key with it, for ever). The producer is made
 * again for the grown limit; what it still held is counted as lost and
 * goes out again from the first unacknowledged row of each key, as after
 * a fatal error. 0 (done, or not due), or -1 (could not: said). */
int relay_kafka_resize_if_due(relay *r, int64_t now);
void relay_kafka_stop(relay *r, int wait_ms);
relay_topic *relay_kafka_topic(relay *r, const char *name);
int relay_kafka_partition(relay *r, relay_topic *t, const char *key);
void *relay_kafka_opaque(relay *r, int slot);
void relay_kafka_free(relay *r);
/* Does a broker answer a metadata request within timeout_ms? If not, why
 * says what librdkafka said. */
bool relay_kafka_reachable(relay *r, int timeout_ms, char *why, size_t whylen);

/* relay.c: /healthz's verdict and reason, changed only when they change
 * (both sources call it). */
void relay_set_health(relay *r, int healthy, const char *reason);

/* PostgreSQL's binary formats (array_recv) for the uuid[], int4[] and
 * int8[] parameters of the fetch and the acknowledgement: big-endian
 * numbers, and a one-dimensional array's header of at most ARRAY_HEADER
 * bytes, each element then following as its length and its bytes. */
enum { ARRAY_HEADER = 20 };
static inline unsigned char *relay_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

static inline unsigned char *relay_put64(unsigned char *p, uint64_t v)
{
    return relay_put32(relay_put32(p, (uint32_t)(v >> 32)), (uint32_t)v);
}

/* An empty array has no dimensions, so no length or lower bound. */
static inline unsigned char *relay_put_array_header(unsigned char *p, uint32_t elem_type, int n)
{
    p = relay_put32(p, n > 0 ? 1 : 0);      /* dimensions */
    p = relay_put32(p, 0);                  /* no NULLs */
    p = relay_put32(p, elem_type);
    if (n == 0)
        return p;
    p = relay_put32(p, (uint32_t)n);
    return relay_put32(p, 1);               /* lower bound */
}

#endif
