/*
 * ferry.h — transactional outbox and sagas for services on PostgreSQL and
 * Kafka. This is the only public header of libferry.
 *
 * Conventions, as in libpq and jansson:
 *   - Commands return a ferry_code (FERRY_OK is 0). Details of a failure go
 *     into a caller-owned ferry_error; nothing is allocated on the error
 *     path. Branch on err->code, err->retriable, err->sqlstate and
 *     err->field, never on the message text.
 *   - Out-parameters are written only on success.
 *   - Strings and connections passed in are borrowed for the duration of
 *     the call; the library keeps no pointer to them afterwards.
 *   - The library never begins, commits or rolls back the caller's
 *     transaction, except inside ferry_tx_run() and ferry_migrate(), whose
 *     whole purpose is to run one.
 *   - Thread safety: all functions are reentrant; a PGconn is used by one
 *     thread at a time, as libpq requires.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(FERRY_BUILDING) && defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0
#define FERRY_VERSION_STRING "0.1.0"

/* The version of the library actually linked, e.g. "0.1.0". */
FERRY_API const char *ferry_version(void);

/* ------------------------------------------------------------------ */
/* Errors                                                               */

typedef enum ferry_code {
    FERRY_OK = 0,
    FERRY_EINVAL,           /* an argument was refused; err->field names it */
    FERRY_ESTATE,           /* the connection is not in a state for this call */
    FERRY_EDB,              /* the server refused; see err->sqlstate */
    FERRY_ECONN,            /* the connection to the server failed */
    FERRY_ECOMMIT_UNKNOWN,  /* COMMIT was sent, the reply was lost, and its
                               fate could not be learned: err->xid names the
                               transaction for pg_xact_status() */
    FERRY_ESCHEMA,          /* the ferry schema is missing, newer than this
                               library, or differs from what was shipped */
    FERRY_ENOMEM,
    FERRY_EUSER,            /* a caller's callback failed (ferry_tx_run) */
    FERRY_EKAFKA            /* the Kafka client refused or failed */
} ferry_code;

#define FERRY_ERROR_MESSAGE_SIZE 512
#define FERRY_ERROR_FIELD_SIZE   32

typedef struct ferry_error {
    ferry_code code;
    int retriable;              /* 1: the same call may succeed if repeated */
    char sqlstate[6];           /* "" when the server did not say */
    char field[FERRY_ERROR_FIELD_SIZE]; /* offending field ("topic", "key",
                                  "type", "aggregatetype", "payload",
                                  "headers", "delay_ms") or "" */
    uint64_t xid;               /* with FERRY_ECOMMIT_UNKNOWN, else 0 */
    long index;                 /* ferry_emit_batch: the message refused, or -1 */
    char message[FERRY_ERROR_MESSAGE_SIZE];
} ferry_error;

/* A static name for a code, e.g. "FERRY_EINVAL". */
FERRY_API const char *ferry_code_name(ferry_code code);

/*
 * Fill err from a failed PGresult (or from the connection when res is
 * NULL) so that a ferry_tx_run() callback can report the server's SQLSTATE
 * and let the helper decide whether to retry. context prefixes the
 * message ("could not update account"). Returns err->code.
 */
FERRY_API ferry_code ferry_error_from_pg(ferry_error *err, const PGconn *conn,
                                         const PGresult *res, const char *context);

/*
 * Fill err for a failure of the caller's own (a ferry_tx_fn, a consumer's
 * handler): code, whether repeating may succeed, and a printf-style
 * message. Returns code, so that a callback can `return ferry_error_set(...)`.
 */
FERRY_API ferry_code ferry_error_set(ferry_error *err, ferry_code code, int retriable,
                                     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------------ */
/* Logs                                                                 */

/* The library and its programs log one JSON object per line on stderr
 * (librdkafka's own messages included); events below the level are not
 * written. The default is FERRY_LOG_LEVEL_INFO. Not thread-safe: set it
 * before starting work. */
typedef enum ferry_log_level {
    FERRY_LOG_LEVEL_ERROR = 0,
    FERRY_LOG_LEVEL_WARN,
    FERRY_LOG_LEVEL_INFO,
    FERRY_LOG_LEVEL_DEBUG
} ferry_log_level;

FERRY_API void ferry_log_level_set(ferry_log_level level);

/* ------------------------------------------------------------------ */
/* Message ids                                                          */

/* A UUID, network byte order. ferry makes version 7: 48 bits of Unix
 * milliseconds, then a counter that keeps ids made by one thread in the
 * same millisecond increasing, then random bits. */
typedef struct ferry_uuid {
    uint8_t bytes[16];
} ferry_uuid;

#define FERRY_UUID_STRING_SIZE 37   /* 36 characters and the NUL */

FERRY_API ferry_code ferry_uuid_v7(ferry_uuid *out);
FERRY_API void ferry_uuid_format(const ferry_uuid *id, char out[FERRY_UUID_STRING_SIZE]);
/* Returns FERRY_OK or FERRY_EINVAL; accepts upper and lower case. */
FERRY_API ferry_code ferry_uuid_parse(const char *text, ferry_uuid *out);
/* Unix milliseconds held in a version 7 id. */
FERRY_API uint64_t ferry_uuid_v7_millis(const ferry_uuid *id);

/* ------------------------------------------------------------------ */
/* Emit                                                                 */

/* Limits shared with the SQL checks in schemas/001_ferry.sql. */
#define FERRY_TOPIC_MAX           249       /* Kafka's own limit */
#define FERRY_KEY_MAX             1024      /* bytes */
#define FERRY_TYPE_MAX            255
#define FERRY_HEADERS_MAX         65536     /* bytes of header JSON */
#define FERRY_DEFAULT_MAX_PAYLOAD (1024 * 1024)
#define FERRY_BATCH_MAX           100000    /* messages in one ferry_emit_batch */
#define FERRY_DELAY_MAX_MS        31536000000LL /* one year */

/*
 * One message. Strings are UTF-8 and NUL-terminated unless a length is
 * given: key_len and payload_len of 0 mean "use strlen"; a non-zero length
 * that runs past a NUL byte is refused, as PostgreSQL text cannot hold one.
 */
typedef struct ferry_msg {
    const char *topic;          /* Kafka topic: [A-Za-z0-9._-], 1..249 bytes */
    const char *key;            /* partition key, usually the aggregate id */
    size_t key_len;
    const char *type;           /* event type, e.g. "OrderPlaced" */
    const char *aggregate_type; /* optional: NULL means "" */
    const char *payload;        /* JSON text, any JSON value */
    size_t payload_len;
    const char *headers;        /* optional: a JSON object of strings, NULL means {} */
    int64_t delay_ms;           /* deliver no earlier than this after the
                                   transaction started; 0 = at once */
} ferry_msg;

typedef struct ferry_emit_opts {
    size_t max_payload;         /* bytes; 0 = FERRY_DEFAULT_MAX_PAYLOAD. Keep it
                                   no larger than ferry.settings.max_payload_bytes,
                                   which the server enforces as a backstop. */
} ferry_emit_opts;

/*
 * Write msg into the outbox inside the caller's open transaction on conn.
 * Its position among the messages of the same (topic, key) follows the
 * commit order of the emitting transactions; the emitting transaction holds
 * a lock on the key until it ends, so keep transactions that emit short.
 *
 * The message is checked on the client first: a refused message returns
 * FERRY_EINVAL with err->field set, sends nothing, and leaves the caller's
 * transaction usable. A transaction must be open (FERRY_ESTATE otherwise):
 * an emit outside one would commit on its own, apart from the update it
 * belongs with. opts may be NULL. On success *id_out (if not NULL) holds the
 * message id.
 */
FERRY_API ferry_code ferry_emit(PGconn *conn, const ferry_msg *msg,
                                const ferry_emit_opts *opts,
                                ferry_uuid *id_out, ferry_error *err);

/*
 * Emit n messages (1..FERRY_BATCH_MAX) in one pipelined round trip. Every
 * message is checked before anything is sent: one bad message refuses the
 * whole batch with err->index naming it, and nothing is written. ids_out,
 * if not NULL, has room for n ids, given in array order.
 *
 * Messages of one key take positions in array order. Across keys, the
 * batch is sent sorted by (topic, key), so that every batch takes its key
 * locks in one global order and concurrent batches never deadlock with
 * each other. (Single ferry_emit() calls lock keys in the order you emit
 * them: emit several keys in a consistent order, or use a batch.)
 */
FERRY_API ferry_code ferry_emit_batch(PGconn *conn, const ferry_msg *msgs, size_t n,
                                      const ferry_emit_opts *opts,
                                      ferry_uuid *ids_out, ferry_error *err);

/* Check msg as ferry_emit would, without a connection. */
FERRY_API ferry_code ferry_msg_check(const ferry_msg *msg, const ferry_emit_opts *opts,
                                     ferry_error *err);

/* ------------------------------------------------------------------ */
/* Transactions                                                         */

typedef enum ferry_isolation {
    FERRY_READ_COMMITTED = 0,
    FERRY_REPEATABLE_READ,
    FERRY_SERIALIZABLE
} ferry_isolation;

typedef struct ferry_tx_opts {
    ferry_isolation isolation;
    int max_attempts;        /* 0 = 10 */
    int backoff_base_ms;     /* first retry waits up to this, doubling; 0 = 5 */
    int backoff_max_ms;      /* 0 = 1000 */
    int resolve_timeout_ms;  /* how long to try to learn a lost COMMIT's
                                fate; 0 = 30000 */
} ferry_tx_opts;

/* What happened inside one ferry_tx_run(), for logs, metrics and tests. */
typedef struct ferry_tx_report {
    int attempts;            /* times fn was called */
    int retries_conflict;    /* serialization failures, deadlocks, and an emit
                                statement the session lost (SQLSTATE 26000) */
    int retries_connection;  /* connection lost before COMMIT, or during a
                                COMMIT then found aborted */
    int commit_unknown;      /* COMMITs whose reply was lost */
    int resolved_committed;  /* ... then found committed */
    int resolved_aborted;    /* ... then found aborted (and retried) */
    uint64_t last_xid;
} ferry_tx_report;

/*
 * The caller's function: run its statements on conn inside the open
 * transaction. Return FERRY_OK to commit; anything else rolls back. Fill
 * err (ferry_error_from_pg helps) so that a serialization failure or a
 * deadlock is retried; other failures end the run with that error. fn may
 * run several times, so it must not keep effects outside the database
 * from one attempt to the next.
 */
typedef ferry_code (*ferry_tx_fn)(PGconn *conn, void *arg, ferry_error *err);

/*
 * Run fn in a transaction on conn (which must be idle: not in a transaction,
 * not in pipeline mode) and commit. Retries on serialization failure and
 * deadlock, on a connection lost before COMMIT (after PQreset()), and when
 * the session lost ferry's prepared emit statement (DISCARD ALL, a
 * transaction-pooling proxy), with jittered exponential backoff, up to
 * max_attempts. Any other error ends the run and comes back as it is.
 *
 * The transaction id is taken in the same round trip as BEGIN, so every
 * run assigns one (even a read-only one), the snapshot of a REPEATABLE READ
 * or SERIALIZABLE transaction is taken before fn starts (fn cannot SET
 * TRANSACTION SNAPSHOT), and the helper does not work on a hot standby.
 *
 * If the connection dies after COMMIT was sent, the outcome is unknown to
 * the client. The helper then reconnects and asks pg_xact_status() about
 * the transaction: committed gives FERRY_OK; aborted retries fn; if it
 * cannot find out within resolve_timeout_ms it returns
 * FERRY_ECOMMIT_UNKNOWN with err->xid set, and the caller must find out
 * before repeating the work. A reset connection loses its session state
 * (SET, prepared statements, temporary tables). resolve_timeout_ms bounds
 * the retrying, not a single connection attempt: set connect_timeout in
 * the conninfo to bound those. A commit found committed while it waited
 * for a synchronous standby is FERRY_OK, as PostgreSQL itself treats it.
 *
 * opts and report may be NULL.
 */
FERRY_API ferry_code ferry_tx_run(PGconn *conn, const ferry_tx_opts *opts,
                                  ferry_tx_fn fn, void *arg,
                                  ferry_tx_report *report, ferry_error *err);

/* ------------------------------------------------------------------ */
/* Schema                                                               */

/*
 * Bring the ferry schema of conn's database up to this library's version:
 * every migration not yet applied, in order, in one transaction, under an
 * advisory lock so concurrent callers wait rather than race. A migration
 * already applied is checked against its checksum and not run again.
 * conn must be idle (not in a transaction). On success *version_out (if
 * not NULL) holds the schema version now in place.
 */
FERRY_API ferry_code ferry_migrate(PGconn *conn, int *version_out, ferry_error *err);

/* The newest schema version this library knows. */
FERRY_API int ferry_schema_version_known(void);

/* The schema version applied to conn's database; 0 when none. Reads only. */
FERRY_API ferry_code ferry_schema_version(PGconn *conn, int *version_out, ferry_error *err);

/* ------------------------------------------------------------------ */
/* Consume: apply each message once in effect (the inbox)               */

/*
 * The guarantee. For every message a consumer receives it opens a
 * transaction on the service's database, records (consumer name, message
 * id) in ferry.inbox, runs the handler on that same connection, commits,
 * and only then lets Kafka's offset move past the message. A crash
 * anywhere repeats the message, and the inbox (checked under the key's
 * row lock) makes the repeat a no-op: each message's effect is applied
 * exactly once per consumer name, and anything the handler emits through
 * the outbox commits together with that effect. Messages of one key are
 * applied in the order of their per-key positions (the relay's ferry_seq
 * header); a position at or behind the last one applied is a late
 * duplicate and is skipped; a position that jumps ahead is held in
 * ferry.inbox_held, not applied, until the positions before it arrive,
 * are discarded at the relay (a marker message accounts for them) or are
 * skipped by an operator (ferry.inbox_skip_gap). A message whose handler
 * keeps failing goes to ferry.dead_letter with the consumer's name and the
 * reason, and its key is parked: later messages of that key are held,
 * every other key keeps flowing; ferry.replay_dead_letter(id) hands it
 * back (applied next), ferry.discard_dead_letter(id) drops it; either
 * releases the key. Messages without a ferry_seq header (not published by
 * a ferry relay) are deduplicated by id only, in arrival order.
 */

typedef struct ferry_consumer ferry_consumer;

/* A read-only view of one message, valid for the duration of the handler
 * call only. Strings are NUL-terminated. */
typedef struct ferry_message {
    const char *topic;
    int32_t partition;
    int64_t offset;             /* -1 when applied from ferry.inbox_held */
    const char *key;            /* "" when the message had no key */
    size_t key_len;
    const char *id;             /* message id, a UUID in text form */
    const char *type;           /* event type; "" when not given */
    const char *aggregate_type; /* "" when not given */
    int64_t position;           /* per-key position; 0 when it has none */
    const json_t *payload;      /* parsed; borrowed, do not keep */
    const char *payload_text;   /* as received */
    size_t payload_len;
    int attempt;                /* 1 on the first try of this message by this
                                   consumer, 2 on the next (after any failure) */
    const void *internal_;      /* for ferry_message_header() */
} ferry_message;

/* The value of header name as a NUL-terminated string (its last occurrence),
 * or NULL when the message has no such header. Borrowed, like the message. */
FERRY_API const char *ferry_message_header(const ferry_message *msg, const char *name);

/*
 * Apply msg on conn, inside the transaction the consumer opened. May run
 * statements and emit messages on conn; must not begin, commit or roll
 * back. Return FERRY_OK to commit. Anything else rolls back, and then:
 *   - err->retriable set (ferry_error_from_pg() sets it for serialization
 *     failures, deadlocks and lost connections): the message is retried
 *     after a backoff, without counting an attempt;
 *   - FERRY_EINVAL: the message itself is refused (bad content that no
 *     retry will change): dead-lettered at once;
 *   - anything else counts one attempt towards max_attempts, after which
 *     the message is dead-lettered.
 * Fill err with ferry_error_set() or ferry_error_from_pg(); its message
 * becomes the dead letter's reason. A handler may run several times for
 * one message, so it must keep no effect outside the database from one
 * try to the next.
 */
typedef ferry_code (*ferry_handler_fn)(PGconn *conn, const ferry_message *msg, void *arg,
                                       ferry_error *err);

typedef struct ferry_consumer_conf {
    const char *name;           /* required: the inbox's namespace; [A-Za-z0-9._-],
                                   1..200 bytes. Two processes with the same
                                   name share the work and the dedupe. */
    const char *db;             /* required: libpq conninfo of the service's database */
    const char *kafka;          /* required: bootstrap servers */
    const char *group;          /* Kafka consumer group; NULL = name */
    const char *const *topics;  /* required: topic_count topic names */
    size_t topic_count;
    const char *const *kafka_props; /* optional: NULL-terminated "name=value"
                                   librdkafka properties, e.g. TLS or SASL */
    ferry_handler_fn handler;   /* required */
    void *handler_arg;
    ferry_isolation isolation;  /* of the applying transaction */
    int max_attempts;           /* handler failures before the dead letter; 0 = 5 */
    int backoff_base_ms;        /* retry waits up to this, doubling; 0 = 10 */
    int backoff_max_ms;         /* 0 = 2000 */
    int held_scan_ms;           /* how often held messages are looked at
                                   without a reason to; 0 = 1000 */
    int first_position_any;     /* 1: a key this consumer never saw starts at
                                   the first position that arrives, not at 1 */
    size_t max_payload;         /* bytes; 0 = FERRY_DEFAULT_MAX_PAYLOAD; a
                                   larger message is dead-lettered unread */
} ferry_consumer_conf;

/* What a consumer did since it was made; for logs, metrics and tests. */
typedef struct ferry_consumer_stats {
    uint64_t received;          /* messages from Kafka */
    uint64_t applied;           /* handler ran and committed */
    uint64_t duplicates;        /* skipped: id already in the inbox */
    uint64_t late;              /* skipped: position already applied */
    uint64_t held_gap;          /* held: positions missing before it */
    uint64_t held_parked;       /* held: key parked behind a dead letter */
    uint64_t drained;           /* applied from ferry.inbox_held */
    uint64_t discard_markers;   /* positions discarded at the relay, accounted for */
    uint64_t dead_lettered;
    uint64_t handler_failures;  /* handler returned a non-retriable error */
    uint64_t transient_retries; /* rolled back on a retriable error and retried */
    uint64_t reconnects;        /* database connection reset */
    uint64_t assigned;          /* partitions assigned, summed over rebalances */
    uint64_t revoked;           /* partitions revoked */
    uint64_t offsets_stored;
} ferry_consumer_stats;

/*
 * Make a consumer: connect to the database (its ferry schema must be at
 * this library's version: run ferry_migrate() first) and subscribe to the
 * topics. conf and what it points to are borrowed for this call only.
 * Returns FERRY_EINVAL (err->field names the setting), FERRY_ECONN,
 * FERRY_ESCHEMA or FERRY_EKAFKA; *out is set only on success.
 */
FERRY_API ferry_code ferry_consumer_new(const ferry_consumer_conf *conf, ferry_consumer **out,
                                        ferry_error *err);

/*
 * Wait up to timeout_ms for one message and apply it (retrying transient
 * failures, dead-lettering a poison message), then apply any held
 * messages that became ready. Returns FERRY_OK also when nothing came.
 * Fails only when it cannot go on: FERRY_EKAFKA on a fatal Kafka error,
 * FERRY_ESTATE after ferry_consumer_close(). When a stop was requested
 * while a message was being retried, that message is left to be
 * delivered again and FERRY_OK is returned.
 */
FERRY_API ferry_code ferry_consumer_poll(ferry_consumer *c, int timeout_ms, ferry_error *err);

/* ferry_consumer_poll() until ferry_consumer_stop(), then close. */
FERRY_API ferry_code ferry_consumer_run(ferry_consumer *c, ferry_error *err);

/* Ask the consumer to stop: the message in hand is finished (or left for
 * redelivery if it is waiting to be retried) and run() returns.
 * Async-signal-safe and thread-safe: a SIGTERM handler may call it on a
 * consumer it reaches through a global, as long as the global is set
 * before the handler is installed and cleared before destroy. */
FERRY_API void ferry_consumer_stop(ferry_consumer *c);

/* Leave the group cleanly: commit the offsets of what was applied, hand
 * the partitions back, close the database connection. Further polls
 * return FERRY_ESTATE. */
FERRY_API ferry_code ferry_consumer_close(ferry_consumer *c, ferry_error *err);

/* Close (if not closed) and free. Accepts NULL. */
FERRY_API void ferry_consumer_destroy(ferry_consumer *c);

/* A copy of the counters. Call it from the thread that polls: the
 * counters are plain integers updated by ferry_consumer_poll(). Messages
 * applied = applied + drained; held = held_gap + held_parked. */
FERRY_API void ferry_consumer_stats_get(const ferry_consumer *c, ferry_consumer_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
