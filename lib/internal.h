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
void ferry_err_clear(ferry_error *err);

/* Set err (if not NULL) to code with a printf-style message; field may be
 * NULL. Returns code so that callers can `return ferry_err_set(...)`. */
ferry_code ferry_err_set(ferry_error *err, ferry_code code, const char *field,
                         const char *fmt, ...) FERRY_PRINTF(4, 5);

/* SQLSTATEs that mean "run the same transaction again". */
bool ferry_sqlstate_is_conflict(const char *sqlstate);

/* Check that conn holds an open, healthy transaction block and is not in
 * pipeline mode; what names the caller in the message. */
ferry_code ferry_conn_check_in_tx(PGconn *conn, const char *what, ferry_error *err);

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF)? On failure
 * *bad_at is the offset of the first bad byte. */
bool ferry_utf8_valid(const char *s, size_t len, size_t *bad_at);

/* Sleep for ms milliseconds (not used for synchronisation: backoff only). */
void ferry_sleep_ms(long ms);

/* Monotonic clock in milliseconds. */
int64_t ferry_now_ms(void);

/* Embedded migrations, generated from schemas/NNN_*.sql at build time. */
typedef struct ferry_migration {
    int version;
    const char *name;
    const char *sql;
    size_t len;
} ferry_migration;

extern const ferry_migration ferry_migrations[];
extern const size_t ferry_migrations_count;

#endif /* FERRY_INTERNAL_H */
