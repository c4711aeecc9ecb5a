/*
 * testutil.h — what the integration tests share: one throwaway PostgreSQL
 * per test binary (tests/harness/pgtmp.c), migrated, and small assertions
 * over libpq. Every helper fails the running cmocka test on error.
 */
#ifndef FERRY_TESTUTIL_H
#define FERRY_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ferry.h"
#include "harness/pgtmp.h"

/* The cluster of this test binary, started by tu_group_setup. */
extern fpg *tu_pg;

/* cmocka group setup/teardown: start the cluster (extra postgresql.conf
 * lines in tu_conf, NULL-terminated, may be left NULL) and migrate. */
extern const char *const *tu_conf;
int tu_group_setup(void **state);
int tu_group_teardown(void **state);

/* Per-test setup: empty the outbox and the per-key positions. */
int tu_clean_outbox(void **state);

PGconn *tu_connect(void);
PGconn *tu_connect_as(const char *user);
void tu_exec(PGconn *conn, const char *sql);
/* Run sql and return the first column of the first row as an integer. */
long long tu_int(PGconn *conn, const char *sql);
/* ... as a string: malloc'd, caller frees; NULL for SQL NULL. */
char *tu_str(PGconn *conn, const char *sql);
/* printf-style SQL into a static-free buffer: caller frees. */
char *tu_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Wait (bounded, polling the server, never a blind sleep) until sql
 * returns true; fails the test after timeout_ms. */
void tu_await(PGconn *conn, const char *sql, int timeout_ms);

/* Run argv (argv[0] a path) to its end with stdout and stderr captured
 * (*out, *err: malloc'd, NUL-terminated; either may be NULL if unwanted)
 * and return its exit status; fails the test if it died of a signal or
 * ran longer than timeout_ms (then it is killed). */
int tu_run(const char *const *argv, int timeout_ms, char **out, char **err);

/* Run only the tests whose names match $FERRY_TEST_FILTER (a cmocka
 * glob), when it is set; for working on one test at a time. */
void tu_filter_from_env(void);

/* Fail the test with the ferry error unless rc is FERRY_OK. */
#define assert_ferry_ok(rc, err)                                                   \
    do {                                                                           \
        ferry_code rc_ = (rc);                                                     \
        if (rc_ != FERRY_OK)                                                       \
            fail_msg("%s: %s [%s] field=%s", ferry_code_name(rc_), (err).message,  \
                     (err).sqlstate, (err).field);                                 \
    } while (0)

#endif
