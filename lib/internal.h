/*
 * internal.h — what the parts of libferry share and do not export.
 */
#ifndef FERRY_INTERNAL_H
#define FERRY_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>

#include "ferry.h"

#define FERRY_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Reset err to "no error". err may be NULL. */
void ferry__err_clear(ferry_error *err);

/* Set err (if not NULL) to code with a printf-style message; field may be
 * NULL. Returns code so that callers can `return ferry__error_set(...)`. */
ferry_code ferry__error_set(ferry_error *err, ferry_code code, const char *field,
                         const char *fmt, ...) FERRY_PRINTF(4, 5);

/* Read fd to its end into buf, which has room for max + 1 bytes,
 * retrying interrupted reads; *used gets how many were read, max + 1 when
 * the file is longer than max. 0, or -1 with errno (readfile.c). */
int ferry__read_capped(int fd, char *buf, size_t max, size_t *used);

/* End what was sent in pipeline mode with a sync. false when it could not
 * be sent (the connection is gone, and so is any transaction): pipeline
 * mode is left, and *rc, unless it already holds an error, is one with
 * context; the caller then returns *rc, there being no results to read. */
bool ferry__pipeline_sync(PGconn *conn, ferry_code *rc, const char *context, ferry_error *err);

/* One result of a pipeline: query q's, handed over while nothing failed
 * yet; returns FERRY_OK or the failure (in err). The result is borrowed
 * (cleared after the call) unless the function sets *keep, which hands
 * it over. */
typedef ferry_code (*ferry__pipe_result_fn)(void *ctx, int q, PGresult *res, bool *keep,
                                           ferry_error *err);

/*
 * After ferry__pipeline_sync: the results of the sent queries, in order,
 * each to on_result while rc is FERRY_OK (after a failure the rest come
 * back PGRES_PIPELINE_ABORTED and are dropped), then everything up to the
 * sync; leaves pipeline mode. rc is what sending already failed with, or
 * FERRY_OK; ended is the error when results are missing ("the claims'
 * results ended early"). Returns the first failure, or FERRY_OK.
 */
ferry_code ferry__pipeline_read(PGconn *conn, int sent, ferry_code rc,
                               ferry__pipe_result_fn on_result, void *ctx, const char *ended,
                               ferry_error *err);

/* BEGIN at isolation iso (any unknown value: read committed); with_xid,
 * followed by "SELECT pg_current_xact_id()::text" in the same string, for
 * the simple protocol only (PQexec), one round trip. */
const char *ferry__begin_sql(ferry_isolation iso, bool with_xid);

/* Run a statement with text parameters (nparams may be 0) and require it
 * to succeed; otherwise fill err with context. Results are discarded. */
ferry_code ferry__exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                      const char *context, ferry_error *err);
/* The same, handing the result to the caller (who PQclears it) in *out;
 * *out is untouched on failure. */
ferry_code ferry__query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       const char *context, PGresult **out, ferry_error *err);

/* A PostgreSQL array literal being written, {"a","b",NULL} (pgarray.c):
 * start from {0}, add elements, end it, free(p). */
typedef struct ferry__alit {
    char *p;
    size_t len, cap;
    int n;                          /* elements so far */
    int failed;                     /* out of memory: later calls do nothing */
} ferry__alit;
/* One element: s[0..len) quoted (a backslash before " and \), or NULL. */
void ferry__alit_elem(ferry__alit *a, const char *s, size_t len);
void ferry__alit_str(ferry__alit *a, const char *s);   /* s: a string or NULL */
/* Close it: the literal ("{}" when empty), or NULL when memory ran out. */
const char *ferry__alit_end(ferry__alit *a);

/* SQLSTATEs that mean "run the same transaction again". */
bool ferry__sqlstate_is_conflict(const char *sqlstate);

/* Check that conn holds an open, healthy transaction block, is not in
 * pipeline mode and passes UTF-8 through (ferry__conn_check_utf8); what
 * names the caller in the message. */
ferry_code ferry__conn_check_in_tx(PGconn *conn, const char *what, ferry_error *err);

/* Check that conn's client_encoding passes UTF-8 text through as it is
 * (UTF8, or SQL_ASCII, which the server takes unconverted): the library
 * sends every key, payload and header as UTF-8, and under another
 * encoding the server would convert them into other text. FERRY_ESTATE,
 * field "conn", otherwise; conn's settings are left alone. conn must be
 * open; what names the caller in the message. */
ferry_code ferry__conn_check_utf8(PGconn *conn, const char *what, ferry_error *err);
PGconn *ferry__connect_utf8(const char *conninfo);

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF)? On failure
 * *bad_at is the offset of the first bad byte. */
bool ferry__utf8_valid(const char *s, size_t len, size_t *bad_at);

/* Whether text[0..len) is JSON that jsonb takes (validate.c), and if so
 * the length in bytes of jsonb's canonical text of it into *out — exact
 * in a UTF-8 database but for objects with duplicate keys, where jsonb
 * keeps the last and the length given is that of all of them (an upper
 * bound). Saturates at SIZE_MAX / 2. */
bool ferry__json_canonical_len(const char *text, size_t len, size_t *out);

/* src into dst (size bytes, NUL-terminated, cut only between characters)
 * with each byte of a control character (C0, DEL, C1) or of what is not
 * UTF-8 written as \xNN: for every message that quotes input, so that
 * none carries a terminal escape sequence. Returns the length written.
 * Allocates nothing. */
size_t ferry__escape_text(char *dst, size_t size, const char *src);

/* A strict decimal integer, as config files and saga definitions take
 * them: "0" or -?[1-9][0-9]* and nothing else. */
typedef enum ferry__int_parse {
    FERRY_INT_OK = 0,
    FERRY_INT_SYNTAX,           /* not such an integer */
    FERRY_INT_RANGE             /* an integer outside [min, max] (or a long) */
} ferry__int_parse;
ferry__int_parse ferry__parse_long(const char *text, long min, long max, long *out);

/* Kafka's rule for topic names: 1..FERRY_TOPIC_MAX bytes of [A-Za-z0-9._-],
 * not "." or "..". ferry__topic_char_ok: one byte of that alphabet (which
 * consumer and group names keep to as well). */
bool ferry__topic_valid(const char *s, size_t n);
bool ferry__topic_char_ok(char c);

/* The value of the hex digit c (either case), or -1: for \uXXXX escapes
 * and UUIDs. */
int ferry__hex_digit(unsigned char c);

/* Sleep for ms milliseconds (not used for synchronisation: backoff only). */
void ferry__sleep_ms(long ms);

/* Monotonic clock in milliseconds. */
int64_t ferry__now_ms(void);
/* Full jitter: sleep a random time in [0, min(max_ms, base_ms * 2^(attempt-1))]. */
void ferry__backoff_sleep(long base_ms, long max_ms, int attempt);
/* ROLLBACK if a transaction is open on a live connection; errors ignored. */
void ferry__rollback_quietly(PGconn *conn);

/* Embedded migrations, generated from schemas/NNN_*.sql at build time. */
typedef struct ferry__migration {
    int version;
    const char *name;
    const char *sql;
    size_t len;
} ferry__migration;

extern const ferry__migration ferry__migrations[];
extern const size_t ferry__migrations_count;

/* ---------------------------------------------------------------- logs */

enum {
    FERRY_LOG_ERROR = FERRY_LOG_LEVEL_ERROR,
    FERRY_LOG_WARN = FERRY_LOG_LEVEL_WARN,
    FERRY_LOG_INFO = FERRY_LOG_LEVEL_INFO,
    FERRY_LOG_DEBUG = FERRY_LOG_LEVEL_DEBUG
};

struct json_t;
/* The threshold is set with the public ferry_log_level_set. */
int ferry__log_threshold(void);
/* One JSON line on stderr. Takes ownership of fields (a JSON object of
 * extra fields, or NULL). */
void ferry__log_json(int level, const char *event, struct json_t *fields, const char *fmt, ...)
    FERRY_PRINTF(4, 5);
#define ferry__log(level, event, ...) ferry__log_json((level), (event), NULL, __VA_ARGS__)

/* Route conn's notices and asynchronous errors (a FATAL sent to an idle
 * session, say), which libpq would print raw on stderr, through
 * ferry__log_json as "db.notice" events, each naming session (a static
 * string: "main", "ack", "lag", "reconciler"). For the programs, whose
 * stderr is JSON lines; the library never installs it on a caller's
 * connection. */
void ferry__log_pq_notices(PGconn *conn, const char *session);

/* "ferry" in ASCII: the advisory lock key of schema migration (lib/migrate.c
 * takes it for its transaction; ferry-relay migrate for its whole run, so
 * that what it says it did is what it did). */
#define FERRY__MIGRATE_LOCK_KEY "418464928377"

#endif /* FERRY_INTERNAL_H */
