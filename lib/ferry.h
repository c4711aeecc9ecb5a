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
 *   - What a *_new, *_load or *_parse call makes is freed by the matching
 *     *_destroy, which accepts NULL and cannot fail (rd_kafka_new and
 *     rd_kafka_destroy). A *_close ends an object's work and may fail
 *     (ferry_consumer_close commits, and says if it could not); it frees
 *     nothing, so *_destroy still follows it.
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

/* A name kept for one release after it was renamed (CHANGELOG.md says
 * which): it still links, and a caller's compiler says what replaces it.
 * Not inside ferry's own build, which may keep old callers for a while. */
#if defined(__GNUC__) && !defined(FERRY_BUILDING)
#define FERRY_DEPRECATED(use) __attribute__((deprecated(use)))
#else
#define FERRY_DEPRECATED(use)
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
    char field[FERRY_ERROR_FIELD_SIZE]; /* offending field or argument, or "":
                                  a message's ("topic", "key", "type",
                                  "aggregatetype", "payload", "headers",
                                  "delay_ms"), a call's ("msg", "msgs",
                                  "n", "conn", "fn", ...), or the COLUMN
                                  of a server's refusal */
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
 * written. Until ferry_log_level_set is called, the level is the
 * environment's FERRY_LOG_LEVEL (error, warn, info or debug), else
 * FERRY_LOG_LEVEL_INFO; a bad value is logged once as a warning. Not
 * thread-safe: set it before starting work. */
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
 * belongs with. The connection's client_encoding must be UTF8 (or
 * SQL_ASCII): ferry's text is UTF-8, and the server would convert it from
 * any other encoding into other text (another key, another partition).
 * Any other is FERRY_ESTATE, field "conn", before anything is sent; the
 * setting is the caller's and is left as it is. opts may be NULL. On
 * success *id_out (if not NULL) holds the message id. A database without the ferry schema, or with one older than
 * this library (no ferry.emit_with_id), is FERRY_ESCHEMA with the server's
 * SQLSTATE (3F000, 42883) in err->sqlstate: run ferry-relay migrate. That
 * refusal comes from the server, so it aborts the caller's transaction.
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
 *
 * fn must not end the transaction (COMMIT, ROLLBACK) nor return with conn
 * in pipeline mode. Pipeline mode left on is left (its results dropped)
 * and the transaction rolled back: FERRY_EUSER, not retriable. A
 * transaction fn ended itself is looked up: committed, the run ends with
 * FERRY_EUSER, not retried (fn's work is in the database, whatever fn
 * returned); rolled back, with fn's own failure if it returned one
 * (retried as usual when retriable), else with FERRY_EUSER saying nothing
 * was committed. Not seen: COMMIT AND CHAIN, or a ROLLBACK followed by
 * more statements in a pipeline (those the helper's COMMIT then commits).
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
 * conn must be idle (not in a transaction); a NULL conn is FERRY_EINVAL,
 * field "conn". On success *version_out (if not NULL) holds the schema
 * version now in place.
 */
FERRY_API ferry_code ferry_migrate(PGconn *conn, int *version_out, ferry_error *err);

/* The newest schema version this library knows. */
FERRY_API int ferry_schema_version_known(void);

/* The schema version applied to conn's database; 0 when none. Reads only.
 * A NULL conn is FERRY_EINVAL, field "conn". */
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
    const char *payload_text;   /* as received, payload_len bytes and a NUL after
                                   them (a payload may hold a NUL of its own) */
    size_t payload_len;
    int attempt;                /* 1 on the first try of this message by this
                                   consumer, 2 on the next (after a try that
                                   failed at it: a batch rolled back for a
                                   neighbour's failure does not count) */
    const void *internal_;      /* for ferry_message_header() */
} ferry_message;

/* The value of header name as a NUL-terminated string (its last occurrence),
 * or NULL when the message has no such header. Borrowed, like the message. */
FERRY_API const char *ferry_message_header(const ferry_message *msg, const char *name);

/*
 * For a handler that must not share its transaction with other messages
 * (it changes the transaction's settings, holds locks that must be let go
 * soon, or calls something that may not run twice in one transaction):
 *
 *     ferry_code rc = ferry_message_alone(msg, err);
 *     if (rc != FERRY_OK)
 *         return rc;
 *
 * first thing, before it touches conn. Inside a batch it returns
 * FERRY_ESTATE (err filled): the handler returns that, the batch is
 * rolled back, and this message is applied again in a transaction of its
 * own (the others in batches before and after it, in their order); there
 * the call returns FERRY_OK. Asking costs no attempt. A consumer whose
 * every message must run alone sets batch_max = 1 instead.
 */
FERRY_API ferry_code ferry_message_alone(const ferry_message *msg, ferry_error *err);

/*
 * Apply msg on conn, inside the transaction the consumer opened. May run
 * statements and emit messages on conn; must not begin, commit or roll
 * back. The transaction may hold other messages too (a batch, see
 * batch_max): the handler sees what earlier messages of the batch did, as
 * if they had committed, and a failure rolls back the batch, after which
 * the message is applied apart from the others — so a handler keeps its
 * effects in the database, sets nothing that outlives one message
 * (SET LOCAL, a temporary table, advisory locks taken for the
 * transaction), and calls ferry_message_alone() when it must run alone. Return FERRY_OK to commit. Anything else rolls back, and then:
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
    const char *group;          /* Kafka consumer group; NULL = name. One
                                   group, one name: two names in a group split
                                   its partitions between two inboxes, and a
                                   partition that moves applies its messages
                                   again (or holds them for ever). */
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
    int batch_max;              /* messages applied in one transaction, at
                                   most; 0 = 100, 1 = each in its own
                                   (no batches); up to 1000 */
    int batch_ms;               /* how long a batch waits for more messages
                                   after its first; 0 (the default) = none:
                                   a batch is what has already arrived */
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
    uint64_t batches;           /* transactions that applied a batch */
    uint64_t batch_messages;    /* messages those transactions applied, held
                                   or skipped */
    uint64_t batch_fallbacks;   /* batches rolled back and applied apart */
    uint64_t batch_dropped;     /* messages let go from a batch being gathered
                                   when their partition was revoked */
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
 * FERRY_ESTATE after ferry_consumer_close(), and FERRY_ECONN or FERRY_EDB
 * when the database stays unreachable or keeps refusing the claims
 * through their bounded retries (about a minute and a half with the
 * default backoff): nothing of the message is stored, so calling poll
 * again (or restarting) takes it up where it was. When a stop was requested
 * while a message was being retried, that message is left to be
 * delivered again and FERRY_OK is returned.
 */
FERRY_API ferry_code ferry_consumer_poll(ferry_consumer *c, int timeout_ms, ferry_error *err);

/* ferry_consumer_poll() until ferry_consumer_stop(), then close; or until
 * poll fails (above), with its error: a service that should outlast a long
 * database outage calls poll in its own loop, or is restarted by its
 * supervisor. */
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

/* One partition a consumer holds. */
typedef struct ferry_partition {
    char topic[FERRY_TOPIC_MAX + 1];
    int32_t partition;
} ferry_partition;

/*
 * The partitions c holds now (its assignment in the group), sorted by
 * topic and partition: the first max of them into out (NULL when max is
 * 0). Returns how many it holds — more than max means out was too short —
 * or -1 when c is closed or librdkafka cannot say. Call it from the
 * thread that polls. Every change is also logged, as one JSON event
 * (consumer.assigned, consumer.revoked or consumer.lost) with the
 * partitions that moved and those held after.
 */
FERRY_API int ferry_consumer_partitions(ferry_consumer *c, ferry_partition *out, size_t max);

/* A copy of the counters. Call it from the thread that polls: the
 * counters are plain integers updated by ferry_consumer_poll(). Messages
 * applied = applied + drained; held = held_gap + held_parked. */
FERRY_API void ferry_consumer_stats_get(const ferry_consumer *c, ferry_consumer_stats *out);

/* ------------------------------------------------------------------ */
/* Saga definitions (YAML)                                              */

/* Limits on a definition; documents beyond them are refused on load. */
#define FERRY_SAGA_STEPS_MAX      64
#define FERRY_SAGA_NAME_MAX       128       /* saga and step names: [A-Za-z0-9._-] */
#define FERRY_SAGA_FILE_MAX       (1024 * 1024)  /* bytes of YAML */
#define FERRY_SAGA_DEPTH_MAX      32        /* nesting of YAML collections */
#define FERRY_SAGA_TIMEOUT_MAX_MS (366LL * 24 * 3600 * 1000)
#define FERRY_SAGA_ATTEMPTS_MAX   1000

/* A command sent to a participant: its event type and a payload template,
 * a JSON value whose strings "${context.a.b}" (the whole string) are
 * replaced by that value of the saga's context when the command is built. */
typedef struct ferry_saga_command {
    char *type;
    json_t *payload;            /* owned by the definition */
} ferry_saga_command;

typedef struct ferry_saga_retry {
    int attempts;               /* sends of the action before it is given up; >= 1 */
    int64_t backoff_ms;         /* wait before the 2nd send, doubling ... */
    int64_t max_backoff_ms;     /* ... up to this */
} ferry_saga_retry;

typedef struct ferry_saga_step_def {
    char *name;                 /* unique within the saga */
    char *topic;                /* the participant's command topic */
    ferry_saga_command action;
    ferry_saga_command compensation; /* required unless the step is the pivot
                                        or comes after it */
    int has_compensation;
    int64_t timeout_ms;         /* for one send of the action to be answered */
    ferry_saga_retry retry;
    int pivot;                  /* after this step the saga only goes forward */
} ferry_saga_step_def;

/*
 * A loaded definition, read-only for callers. Not opaque (yet): the pure
 * engine, the driver, the reconciler, the simulator and the tests read its
 * fields in some 130 places, and the saga engine is still being changed;
 * accessors will replace the fields before 1.0 (README, Layout). Until
 * then, to keep the ABI change to additions: only ferry_saga_def_load and
 * _parse make one (the library allocates it, with more behind it), so
 * never declare, allocate, copy or embed a ferry_saga_def or a
 * ferry_saga_step_def, never write a field, and free it with
 * ferry_saga_def_destroy; new fields are only ever appended.
 */
typedef struct ferry_saga_def {
    char *name;
    int version;                /* >= 1 */
    int64_t deadline_ms;        /* the whole saga, from start */
    size_t step_count;          /* 1..FERRY_SAGA_STEPS_MAX */
    ferry_saga_step_def *steps;
    int pivot_index;            /* index of the pivot step, or -1 */
    char hash[17];              /* FNV-1a 64 of the document's bytes, hex */
    char *file;                 /* where it was loaded from, for messages */
} ferry_saga_def;

/* Where and why a document was refused. Each error names the file, line
 * and column (1-based; 0 when unknown) and the offending field path
 * ("steps[2].timeout"). */
#define FERRY_SAGA_ERRORS_MAX 32
typedef struct ferry_saga_load_error {
    char file[256];
    int line, column;
    char field[128];
    char message[256];
} ferry_saga_load_error;

typedef struct ferry_saga_load_errors {
    size_t count;               /* errors found, up to FERRY_SAGA_ERRORS_MAX kept */
    size_t total;               /* errors found in all */
    ferry_saga_load_error errors[FERRY_SAGA_ERRORS_MAX];
} ferry_saga_load_errors;

/*
 * Load and check one saga definition from a YAML file. On success *out is
 * a new definition (free with ferry_saga_def_destroy). On failure returns
 * FERRY_EINVAL with every error found in errs (not only the first):
 * syntax errors, unknown keys, wrong types, duplicate step names, a
 * missing compensation, impossible timeouts (a step's timeout times its
 * attempts longer than the saga's deadline, zero or negative durations),
 * and documents too large, too deep or with aliases. errs may be NULL.
 */
FERRY_API ferry_code ferry_saga_def_load(const char *path, ferry_saga_def **out,
                                         ferry_saga_load_errors *errs);
/* The same from memory; name is used in error messages as the file. */
FERRY_API ferry_code ferry_saga_def_parse(const char *yaml, size_t len, const char *name,
                                          ferry_saga_def **out, ferry_saga_load_errors *errs);
FERRY_API void ferry_saga_def_destroy(ferry_saga_def *def);
/* Deprecated: the name of ferry_saga_def_destroy until 0.1; removed in the
 * release after the next. */
FERRY_API void ferry_saga_def_free(ferry_saga_def *def)
    FERRY_DEPRECATED("use ferry_saga_def_destroy");

/* ------------------------------------------------------------------ */
/* Saga engine (pure)                                                   */

/*
 * The orchestrator's core is one pure function, ferry_saga_step(): given a
 * definition, the stored state of one saga, an event and the time, it
 * computes the next state and the actions the shell must take. It does no
 * I/O, reads no clock and allocates nothing; the same inputs always give
 * the same outputs. The shell (the driver) loads the saga row, calls it,
 * and in one transaction stores the next state (UPDATE ... WHERE revision
 * = old revision) together with the commands it emits through the outbox.
 *
 * Statuses. Every status change is checked against one table, generated
 * with the enum and the names from FERRY_SAGA_STATUS_LIST below. Columns:
 * the status, its name (the stored ones are exactly those of the CHECK on
 * ferry.saga.state), whether it is stored, then for each event kind (in
 * ferry_saga_event_kind order: start, reply, timeout, cancel) the set of
 * statuses that event may lead to from here; 0 means the event is refused
 * in this status. "new" is the zeroed state before start and is never
 * stored: the driver inserts the row with the state start returns.
 * "failed" is reserved: the engine never enters it (it refuses a
 * definition that could not run to an end, see ferry_saga_step); the
 * driver may write it for a saga whose definition is gone. Finished
 * sagas take replies and timeouts as harmless no-ops (late messages,
 * late timers) and refuse start and cancel.
 */
#define FERRY_SAGA_TO(s) (1u << FERRY_SAGA_##s)
#define FERRY_SAGA_STATUS_LIST(X)                                                        \
    /* id           name           stored start              reply / timeout / cancel */ \
    X(NEW,          "new",          0, FERRY_SAGA_TO(RUNNING), 0, 0, 0)                  \
    X(RUNNING,      "running",      1, 0,                                                \
      FERRY_SAGA_TO(RUNNING) | FERRY_SAGA_TO(COMPENSATING) | FERRY_SAGA_TO(COMPLETED)    \
          | FERRY_SAGA_TO(COMPENSATED),                                                  \
      FERRY_SAGA_TO(RUNNING) | FERRY_SAGA_TO(COMPENSATING),                              \
      FERRY_SAGA_TO(COMPENSATING))                                                       \
    X(COMPENSATING, "compensating", 1, 0,                                                \
      FERRY_SAGA_TO(COMPENSATING) | FERRY_SAGA_TO(COMPENSATED),                          \
      FERRY_SAGA_TO(COMPENSATING), FERRY_SAGA_TO(COMPENSATING))                          \
    X(COMPLETED,    "completed",    1, 0, FERRY_SAGA_TO(COMPLETED),                      \
      FERRY_SAGA_TO(COMPLETED), 0)                                                       \
    X(COMPENSATED,  "compensated",  1, 0, FERRY_SAGA_TO(COMPENSATED),                    \
      FERRY_SAGA_TO(COMPENSATED), 0)                                                     \
    X(FAILED,       "failed",       1, 0, FERRY_SAGA_TO(FAILED), FERRY_SAGA_TO(FAILED), 0)

typedef enum ferry_saga_status {
#define FERRY_SAGA_STATUS_ENUM_(id, name, stored, start, reply, timeout, cancel) \
    FERRY_SAGA_##id,
    FERRY_SAGA_STATUS_LIST(FERRY_SAGA_STATUS_ENUM_)
#undef FERRY_SAGA_STATUS_ENUM_
    FERRY_SAGA_STATUS_COUNT
} ferry_saga_status;

/* What is known of one command (a step's action or its compensation). The
 * names are those of ferry.saga_step.status, plus "pending" (not sent). */
#define FERRY_SAGA_STEP_STATUS_LIST(X) \
    X(PENDING,   "pending")   /* not sent */                                   \
    X(SENT,      "sent")      /* outstanding: it may run, or have run */       \
    X(SUCCEEDED, "succeeded") /* the participant applied it */                 \
    X(FAILED,    "failed")    /* the participant refused it: never applied */  \
    X(TIMED_OUT, "timed_out") /* given up without an answer: may have run */

typedef enum ferry_saga_step_status {
#define FERRY_SAGA_STEP_STATUS_ENUM_(id, name) FERRY_SAGA_STEP_##id,
    FERRY_SAGA_STEP_STATUS_LIST(FERRY_SAGA_STEP_STATUS_ENUM_)
#undef FERRY_SAGA_STEP_STATUS_ENUM_
    FERRY_SAGA_STEP_STATUS_COUNT
} ferry_saga_step_status;

/* The two commands of a step; names as in ferry.saga_step.kind. */
typedef enum ferry_saga_command_kind {
    FERRY_SAGA_CMD_ACTION = 0,
    FERRY_SAGA_CMD_COMPENSATION = 1
} ferry_saga_command_kind;

/* Why a saga compensates (state.reason). */
#define FERRY_SAGA_REASON_LIST(X) \
    X(NONE,      "none")                                                  \
    X(FAILED,    "failed")    /* step reason_step refused its action */   \
    X(TIMED_OUT, "timed_out") /* its sends were all unanswered */         \
    X(CANCELLED, "cancelled") /* a cancel event */                        \
    X(DEADLINE,  "deadline")  /* the saga's deadline passed */

typedef enum ferry_saga_reason {
#define FERRY_SAGA_REASON_ENUM_(id, name) FERRY_SAGA_REASON_##id,
    FERRY_SAGA_REASON_LIST(FERRY_SAGA_REASON_ENUM_)
#undef FERRY_SAGA_REASON_ENUM_
    FERRY_SAGA_REASON_COUNT
} ferry_saga_reason;

/* Why an event changed nothing (state.ignored). None of these is a bug:
 * at-least-once delivery, lost replies and early timers make them normal. */
#define FERRY_SAGA_IGNORED_LIST(X) \
    X(NONE,        "none")        /* the event was applied */                      \
    X(STALE_REPLY, "stale_reply") /* a reply to no outstanding command: another */ \
                                  /* step or kind, an older round, an attempt   */ \
                                  /* not sent, or a step already settled         */ \
    X(EARLY,       "early")       /* a timeout before any stored deadline */       \
    X(FINISHED,    "finished")    /* a reply or timeout after the saga ended */    \
    X(COMPENSATING, "compensating") /* a cancel while already compensating */

typedef enum ferry_saga_ignored {
#define FERRY_SAGA_IGNORED_ENUM_(id, name) FERRY_SAGA_IGNORED_##id,
    FERRY_SAGA_IGNORED_LIST(FERRY_SAGA_IGNORED_ENUM_)
#undef FERRY_SAGA_IGNORED_ENUM_
    FERRY_SAGA_IGNORED_COUNT
} ferry_saga_ignored;

/* One step of one saga. Attempts count sends (resends included) over all
 * rounds; the round is the idempotency-key part that changes only after a
 * definite refusal (see "Keys" below). Counters saturate at UINT32_MAX. */
typedef struct ferry_saga_step_state {
    uint8_t action;                  /* ferry_saga_step_status */
    uint8_t compensation;            /* pending, sent or succeeded */
    uint8_t reserved_[2];            /* zero */
    uint32_t action_attempts;
    uint32_t action_round;
    uint32_t compensation_attempts;
    uint32_t compensation_round;
} ferry_saga_step_state;

/*
 * The whole state of one saga: fixed size, no pointers, no padding, so the
 * driver may store it as bytes or as columns. A zeroed struct is a "new"
 * saga, ready for start. Times are in the caller's milliseconds (now_ms).
 */
typedef struct ferry_saga_state {
    uint64_t revision;               /* +1 on every event applied; the
                                        optimistic lock (ferry.saga.version) */
    int64_t started_ms;              /* now_ms of start */
    int64_t deadline_ms;             /* started_ms + def->deadline_ms */
    int64_t timer_ms;                /* the outstanding command is answered by
                                        then (its send delay included); 0: none */
    int64_t wake_ms;                 /* the earliest time a timeout event can
                                        change anything: the timer, or the
                                        deadline while it still matters; 0 once
                                        finished. Store it as ferry.saga.deadline */
    uint8_t status;                  /* ferry_saga_status */
    uint8_t reason;                  /* ferry_saga_reason: why compensating */
    uint8_t ignored;                 /* ferry_saga_ignored, of the last call
                                        only: not durable, never read */
    uint8_t reserved_;               /* zero */
    uint32_t step_count;             /* def->step_count, fixed at start */
    uint32_t current;                /* the step whose action (running) or
                                        compensation (compensating) is out */
    uint32_t reason_step;            /* the step the reason is about */
    ferry_saga_step_state steps[FERRY_SAGA_STEPS_MAX];
} ferry_saga_state;

#define FERRY_SAGA_EVENT_LIST(X) \
    X(START,   "start")                                                      \
    X(REPLY,   "reply")   /* a participant answered a command */             \
    X(TIMEOUT, "timeout") /* a stored deadline (state.wake_ms) may be due */ \
    X(CANCEL,  "cancel")  /* a user asked to undo the saga */

typedef enum ferry_saga_event_kind {
#define FERRY_SAGA_EVENT_ENUM_(id, name) FERRY_SAGA_EV_##id,
    FERRY_SAGA_EVENT_LIST(FERRY_SAGA_EVENT_ENUM_)
#undef FERRY_SAGA_EVENT_ENUM_
    FERRY_SAGA_EV_COUNT
} ferry_saga_event_kind;

typedef struct ferry_saga_event {
    ferry_saga_event_kind kind;
    /* REPLY only, copied from the command answered: */
    ferry_saga_command_kind command;
    uint32_t step;                   /* < def->step_count */
    uint32_t round;
    uint32_t attempt;
    int succeeded;                   /* 1: applied; 0: refused, not applied */
} ferry_saga_event;

#define FERRY_SAGA_ACTION_LIST(X) \
    X(SEND,         "send")         /* publish a command to the step's topic */ \
    X(SET_DEADLINE, "set_deadline") /* store at_ms; fire a timeout then */      \
    X(FINISH,       "finish")       /* the saga ended with status */

typedef enum ferry_saga_action_kind {
#define FERRY_SAGA_ACTION_ENUM_(id, name) FERRY_SAGA_DO_##id,
    FERRY_SAGA_ACTION_LIST(FERRY_SAGA_ACTION_ENUM_)
#undef FERRY_SAGA_ACTION_ENUM_
    FERRY_SAGA_DO_COUNT
} ferry_saga_action_kind;

/* Room the caller must give ferry_saga_step() for actions. */
#define FERRY_SAGA_ACTIONS_MAX 4

typedef struct ferry_saga_action {
    ferry_saga_action_kind kind;
    ferry_saga_status status;        /* FINISH: completed or compensated */
    ferry_saga_command_kind command; /* SEND */
    uint32_t step;                   /* SEND */
    uint32_t round;                  /* SEND: key part */
    uint32_t attempt;                /* SEND: 1, 2, ... (for replies and logs) */
    int64_t delay_ms;                /* SEND: publish no earlier than now + this
                                        (the retry backoff; emit's delay_ms) */
    int64_t at_ms;                   /* SET_DEADLINE: = next->wake_ms */
} ferry_saga_action;

/* The pause before a command refused is sent again, for a step whose
 * retry policy has no backoff (see Backoff under ferry_saga_step). */
#define FERRY_SAGA_REFUSAL_BACKOFF_MS     1000
#define FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS 60000

/* The largest now_ms taken (year 9999), so that no deadline overflows. */
#define FERRY_SAGA_NOW_MAX_MS 253402300799999LL

/*
 * ferry_saga_step — apply one event to one saga.
 *
 * def is borrowed and checked on every call (FERRY_EINVAL, field
 * "definition", if it could not run to an end: no steps or too many, a
 * duration <= 0 or above FERRY_SAGA_TIMEOUT_MAX_MS, attempts outside
 * 1..FERRY_SAGA_ATTEMPTS_MAX, max_backoff < backoff, pivot_index not the
 * one step marked pivot, or a step before the pivot -- every step when
 * there is none -- without a compensation). state must come from an
 * earlier call with the same definition (or be zeroed, for start), else
 * FERRY_EINVAL, field "state"; a malformed event (a reply to a step index
 * out of range) is FERRY_EINVAL, field "event". now_ms is the caller's
 * clock, 0..FERRY_SAGA_NOW_MAX_MS. actions must have room for
 * FERRY_SAGA_ACTIONS_MAX (actions_cap is checked). next may be state.
 * On any error nothing is written (next, actions, *n_actions untouched).
 *
 * Keys. A command's idempotency key is (saga id, step, command kind,
 * round); the saga id is the driver's. A resend after a timeout keeps the
 * key, so the participant applies it at most once however many copies
 * arrive. Participants record the outcome of every key they process,
 * refusals included, so a refusal is final for its key; a command that
 * must be tried again after a refusal (a step after the pivot, a
 * compensation) is sent in the next round, i.e. under a new key. Before
 * the pivot a refusal is never retried, so actions there stay in round 0.
 * Any attempt of the current round answers the command (they share the
 * key, hence the outcome); other replies are stale.
 *
 * Backoff. Send n (n >= 2) of a command is delayed by backoff_ms *
 * 2^(n-2), at most max_backoff_ms (the step's retry policy, also used for
 * its compensation). A step with no backoff (backoff_ms 0) still pauses
 * a send that follows a refusal -- of a compensation, or of a step after
 * the pivot, both retried for ever -- by FERRY_SAGA_REFUSAL_BACKOFF_MS *
 * 2^(n-2), at most FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS, so that a
 * participant refusing every time is not sent the command again as fast
 * as messages go round; a resend after a timeout is not delayed then. The
 * command's timer is now + delay + timeout_ms.
 *
 * Events, by status (anything not listed is refused as an invalid
 * transition, FERRY_ESTATE, "invalid saga transition <from> -> <to> on
 * <event>", field "event"):
 *
 *   new, start: running; send step 0's action (attempt 1, round 0); the
 *     timer is now + its timeout; deadline_ms = now + def->deadline_ms.
 *
 *   running, reply to the current step's action:
 *     success: the step succeeded; send the next step's action, or finish
 *       completed after the last. If the deadline has passed and the pivot
 *       has not succeeded, compensate (reason deadline) instead of
 *       starting the next step.
 *     refusal, at or before the pivot (or with no pivot): the step failed
 *       and never ran; compensate the steps before it (reason failed).
 *     refusal after the pivot: resend in the next round, with backoff;
 *       such steps are never compensated (the saga only goes forward).
 *
 *   running, timeout: judged by now_ms against the stored times, so an
 *     early timer changes nothing (ignored "early").
 *     now >= deadline_ms, while the deadline matters (the pivot has not
 *       succeeded and the current step has a compensation): the current
 *       step may have run (timed_out); compensate it and those before it
 *       (reason deadline).
 *     now >= timer_ms: if the step has sends left, or can never be given
 *       up (it comes after the pivot, or has no compensation -- the pivot
 *       may lack one), resend it in the same round (same key) with
 *       backoff. Otherwise it is ambiguous (timed_out): compensate it and
 *       those before it (reason timed_out).
 *
 *   running, cancel: the current step may have run; compensate it and
 *     those before it (reason cancelled). Refused, with nothing changed
 *     and FERRY_ESTATE: after the pivot succeeded (not retriable: the saga
 *     only goes forward), and while a step without compensation (a pivot
 *     that has none) is outstanding (retriable: its answer decides).
 *
 *   compensating: the steps to compensate are those whose action
 *     succeeded or timed out (ran or may have run), highest index first;
 *     one compensation is outstanding at a time. A compensation's success
 *     moves to the next lower such step, or finishes compensated when none
 *     is left (at once, from running, when none was needed). A refusal
 *     resends it in the next round, a timeout (now >= timer_ms) in the
 *     same round, both with backoff and without limit: compensations must
 *     eventually succeed. The deadline no longer matters. A cancel is
 *     ignored ("compensating").
 *
 *   completed, compensated, failed: replies and timeouts are ignored
 *     ("finished"); start and cancel are refused.
 *
 * Replies that answer no outstanding command (duplicates, late or stale:
 * another step or kind, an older round, an unsent attempt, a settled
 * step) are ignored ("stale_reply"). An ignored event returns FERRY_OK
 * with no actions and next equal to *state but for next->ignored; the
 * driver need not store it. An applied event sets next->ignored to none,
 * raises the revision by one and returns one or two actions: a SEND and
 * then a SET_DEADLINE with the new wake_ms, or a FINISH (which clears
 * the deadline: a finished saga has none).
 *
 * A saga thus ends completed or compensated: never "failed", and never
 * running past its deadline unless its pivot succeeded or is outstanding
 * without a compensation.
 */
FERRY_API ferry_code ferry_saga_step(const ferry_saga_def *def, const ferry_saga_state *state,
                                     const ferry_saga_event *event, int64_t now_ms,
                                     ferry_saga_state *next, ferry_saga_action *actions,
                                     size_t actions_cap, size_t *n_actions, ferry_error *err);

/* Static names for logs, "?" when out of range: "running", "timed_out",
 * "compensation", "reply", "send", "deadline", "stale_reply". */
FERRY_API const char *ferry_saga_status_name(ferry_saga_status s);
FERRY_API const char *ferry_saga_step_status_name(ferry_saga_step_status s);
FERRY_API const char *ferry_saga_command_name(ferry_saga_command_kind k);
FERRY_API const char *ferry_saga_event_name(ferry_saga_event_kind k);
FERRY_API const char *ferry_saga_action_name(ferry_saga_action_kind k);
FERRY_API const char *ferry_saga_reason_name(ferry_saga_reason r);
FERRY_API const char *ferry_saga_ignored_name(ferry_saga_ignored i);

/* One line for a log, e.g. "reply action step 2 round 0 attempt 1 refused"
 * or "send compensation step 1 round 1 attempt 3 delay 200ms". Returns
 * what snprintf returns. */
FERRY_API int ferry_saga_event_format(const ferry_saga_event *ev, char *buf, size_t size);
FERRY_API int ferry_saga_action_format(const ferry_saga_action *a, char *buf, size_t size);

/* The idempotency key of a SEND: "<saga_id>/<step>/<action|compensation>/<round>". */
FERRY_API int ferry_saga_key_format(const char *saga_id, const ferry_saga_action *send,
                                    char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* Saga driver and participants                                         */

/*
 * The driver is the shell around ferry_saga_step(): it keeps each saga in
 * ferry.saga (the engine state as JSON in ferry.saga.engine, the revision
 * in ferry.saga.version, the next timer in ferry.saga.deadline), appends
 * the audit trail to ferry.saga_step, and turns SEND actions into commands
 * through ferry_emit() in the same transaction as the state they follow
 * from. Time is the database clock (now() of the transaction).
 *
 * A command goes to the step's topic with the saga id as its key (one
 * saga's commands keep their order), the step's action or compensation
 * type, the payload template with every "${context.PATH}" string replaced
 * from the saga's context, delay_ms from the engine (retry backoff), and
 * these headers:
 *   saga_id, saga_name, saga_step (index), saga_step_name,
 *   saga_kind ("action" | "compensation"), saga_round, saga_attempt,
 *   saga_key (ferry_saga_key_format: the idempotency key),
 *   saga_reply_to (the registry's reply topic).
 * Participants answer on saga_reply_to with a FERRY_SAGA_REPLY_TYPE
 * message (see ferry_participant_handle) keyed "<saga id>/<participant>".
 */

#define FERRY_SAGA_REPLY_TOPIC_DEFAULT "ferry.saga.replies"
#define FERRY_SAGA_REPLY_TYPE          "ferry.saga.reply"

/* The definitions a driver knows, by name. */
typedef struct ferry_saga_registry ferry_saga_registry;

/* A new, empty registry whose commands ask for replies on reply_topic
 * (NULL: FERRY_SAGA_REPLY_TOPIC_DEFAULT; copied). */
FERRY_API ferry_code ferry_saga_registry_new(const char *reply_topic, ferry_saga_registry **out,
                                             ferry_error *err);

/* Add def. Takes ownership of def on success only (the registry frees it);
 * a second definition of the same name is refused (FERRY_EINVAL, field
 * "definition"), as is one the engine could not run. */
FERRY_API ferry_code ferry_saga_registry_add(ferry_saga_registry *reg, ferry_saga_def *def,
                                             ferry_error *err);

/* The definition called name, borrowed from the registry; NULL if none. */
FERRY_API const ferry_saga_def *ferry_saga_registry_find(const ferry_saga_registry *reg,
                                                         const char *name);

/* The topic replies are asked for on; borrowed. */
FERRY_API const char *ferry_saga_registry_reply_topic(const ferry_saga_registry *reg);

/* Free the registry and its definitions. Accepts NULL. */
FERRY_API void ferry_saga_registry_destroy(ferry_saga_registry *reg);

/*
 * Start a saga of definition def_name inside the caller's open transaction
 * on conn (FERRY_ESTATE outside one, or when conn's client_encoding is
 * not UTF8, as ferry_emit): insert its row, the
 * audit row of the first command, and emit that command. The saga exists,
 * and its first command is published, iff the caller commits.
 * context_json is a JSON object; every "${context.PATH}" of the
 * definition's templates must resolve in it (FERRY_EINVAL, field
 * "context", naming the path and the step, checked before anything is
 * written). On success *id_out (if not NULL) holds the saga id.
 */
FERRY_API ferry_code ferry_saga_start(PGconn *conn, const ferry_saga_registry *reg,
                                      const char *def_name, const char *context_json,
                                      ferry_uuid *id_out, ferry_error *err);

/*
 * A ferry_handler_fn for the consumer of the reply topic; arg is the
 * registry. In the consumer's transaction: lock the saga row, run the
 * engine on the reply, then in one statement store the next state
 * (UPDATE ... WHERE version = the one loaded), add the audit rows and emit
 * the next commands (nothing of it when the revision is stale). A reply
 * the engine ignores (duplicate, stale, after the end) changes nothing. A
 * malformed reply, or one for a saga stored under another definition hash
 * than the registry's, is FERRY_EINVAL (the consumer dead-letters it); a
 * reply to a saga this database does not have is logged and skipped.
 */
FERRY_API ferry_code ferry_saga_reply_handler(PGconn *conn, const ferry_message *msg,
                                              void *registry, ferry_error *err);

/*
 * Fire due timers: up to max sagas whose ferry.saga.deadline <= now_ms
 * (Unix milliseconds; 0 = the database clock), up to 32 to a transaction
 * (ferry_tx_run: conn must be idle), each under a savepoint of its own,
 * taken FOR UPDATE SKIP LOCKED so that any number of workers and the
 * reconciler may run this at once (a batch holds its sagas' locks until
 * it commits). *fired (if not NULL) counts the timeouts the engine
 * applied. A saga whose timer cannot be fired (its definition changed or
 * is not in reg, ...) is rolled back to its savepoint, logged (event
 * saga_timer_failed), left as it is for the reconciler
 * to report, and passed by for the rest of the call: one such saga does
 * not stop the others' timers, nor count against max. Errors not about
 * one saga (a lost connection, or more than FIRE_SKIP_MAX = 64 sagas
 * failing in one call) are returned; in the second case what was fired
 * before is committed and counted in *fired. Only sagas whose definition
 * and hash reg holds are taken (schema 37).
 */
FERRY_API ferry_code ferry_saga_fire_timers(PGconn *conn, const ferry_saga_registry *reg,
                                            int64_t now_ms, int max, int *fired,
                                            ferry_error *err);

/*
 * Fire the timer of one saga, saga_id (text UUID), if it is due by now_ms
 * (Unix milliseconds; 0 = the database clock): in a transaction of its own
 * (ferry_tx_run: conn must be idle), lock the row and give the engine a
 * timeout, which it judges against the stored timer as any worker's would.
 * *fired (if not NULL) is 1 when the engine applied the timeout (resent a
 * command, or began or went on compensating), 0 when nothing was due (not
 * yet, or no longer: a worker got there first, or the saga has finished).
 * The reconciler uses it on sagas the workers left past their timer.
 * FERRY_EINVAL, field "saga_id": a malformed id or no such saga; field
 * "definition": the saga's definition is not in reg, or reg's has another
 * hash than the one the saga was started with (the message names the
 * definition, and both hashes); field "registry": reg is NULL. Anything
 * else comes from ferry_tx_run() or the engine, as for
 * ferry_saga_fire_timers().
 */
FERRY_API ferry_code ferry_saga_fire_timer(PGconn *conn, const ferry_saga_registry *reg,
                                           const char *saga_id, int64_t now_ms, int *fired,
                                           ferry_error *err);

/*
 * Cancel saga saga_id (text UUID) inside the caller's open transaction:
 * the engine compensates what ran or may have run. FERRY_ESTATE from the
 * engine when the saga can no longer be cancelled (finished, past its
 * pivot; err->retriable while a step without compensation is out);
 * FERRY_EINVAL, field "saga_id", when there is no such saga. Cancelling a
 * saga that is already compensating is a no-op (FERRY_OK).
 */
FERRY_API ferry_code ferry_saga_cancel(PGconn *conn, const ferry_saga_registry *reg,
                                       const char *saga_id, ferry_error *err);

/*
 * A participant's callback: apply (action) or undo (compensation) the
 * command msg on conn, in the consumer's transaction, under a savepoint.
 * Return FERRY_OK when done; FERRY_EINVAL for a business refusal (the
 * savepoint is rolled back, the refusal recorded and answered as a
 * failure); any other code rolls the whole message back and goes to the
 * consumer as it is (retried when err->retriable, else counted towards
 * its dead letter). Must not begin, commit or roll back.
 */
typedef ferry_code (*ferry_participant_fn)(PGconn *conn, const ferry_message *msg, void *arg,
                                           ferry_error *err);

typedef struct ferry_participant {
    const char *name;                  /* the outcomes' namespace, 1..200 bytes */
    ferry_participant_fn action;       /* required */
    ferry_participant_fn compensation; /* NULL: compensations only tombstone
                                          (for steps that cannot be undone) */
    void *arg;
} ferry_participant;

/* What ferry_participant_handle did with one command. */
typedef enum ferry_participant_outcome {
    FERRY_PARTICIPANT_APPLIED = 0,     /* ran the callback, which succeeded */
    FERRY_PARTICIPANT_REFUSED,         /* the callback refused (FERRY_EINVAL) */
    FERRY_PARTICIPANT_TOMBSTONE,       /* compensation of a step never run: no-op */
    FERRY_PARTICIPANT_TOO_LATE,        /* action after its step's compensation */
    FERRY_PARTICIPANT_DUPLICATE        /* key seen before: its outcome answered again */
} ferry_participant_outcome;

/*
 * Handle one saga command inside a consumer handler (conn and msg as the
 * handler got them): at most once per idempotency key (participant, saga,
 * step, kind, round), recorded in ferry.participant_command with refusals;
 * a key seen before is answered again with its recorded outcome. A
 * compensation of a step whose action never ran is a recorded no-op (the
 * tombstone); an action after its step's compensation is refused. The
 * reply (success for applied and tombstone, failure for refused and too
 * late) is emitted to the command's saga_reply_to in the same transaction.
 * A message without the saga headers is FERRY_EINVAL; conn outside a
 * transaction, or in pipeline mode, is FERRY_ESTATE before anything runs.
 * Two round trips besides the callback's (libpq pipeline mode, left
 * before it returns). *outcome (may be NULL) says what happened.
 */
FERRY_API ferry_code ferry_participant_handle(PGconn *conn, const ferry_message *msg,
                                              const ferry_participant *participant,
                                              ferry_participant_outcome *outcome,
                                              ferry_error *err);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_H */
