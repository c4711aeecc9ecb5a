/*
 * testutil.h — what the integration tests share: one throwaway PostgreSQL
 * per test binary (tests/harness/pgtmp.c), migrated, small assertions
 * over libpq, the programs under test run to their end, temporary files,
 * and consumers. Every helper fails the running cmocka test on error.
 * Beside it: tu_proc.h (programs running beside a test), tu_http.h
 * (metrics endpoints), tu_load.h (the YAML loaders' cases), tu_saga.h
 * (the saga tests' participants).
 */
#ifndef FERRY_TESTUTIL_H
#define FERRY_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <cmocka.h>

#include "ferry.h"
#include "harness/clock.h"
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
/* A login role name, a member of in_role (NULL: of none), made unless
 * it is there already. */
void tu_login_role(PGconn *admin, const char *name, const char *in_role);
/* tu_login_role, then a connection as that role. */
PGconn *tu_connect_as_new(PGconn *admin, const char *name, const char *in_role);
/* A new, empty database name in the test cluster (no ferry schema;
 * dropped first if a run before left it): its conninfo, malloc'd. */
char *tu_fresh_database(const char *name);
void tu_exec(PGconn *conn, const char *sql);
/* tu_exec of sql, which it then frees: for SQL that tu_sprintf made. */
void tu_exec_of(PGconn *conn, char *sql);
/* tu_exec on a connection of its own, for fixtures; returns 0. */
int tu_exec_once(const char *sql);
/* Fail the test unless sql returns the text want. */
void tu_assert_str(PGconn *conn, const char *sql, const char *want);
/* Run sql and return the first column of the first row as an integer. */
long long tu_int(PGconn *conn, const char *sql);
/* ... as a string: malloc'd, caller frees; NULL for SQL NULL. */
char *tu_str(PGconn *conn, const char *sql);
/* ... of sql with n text parameters $1..$n. */
char *tu_str_p(PGconn *conn, const char *sql, int n, const char *const *params);
/* printf-style SQL into a static-free buffer: caller frees. */
char *tu_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* tu_int and tu_str of sql, which they then free: for SQL that tu_sprintf
 * made, so that -Wformat checks the format where it is written. */
long long tu_int_of(PGconn *conn, char *sql);
char *tu_str_of(PGconn *conn, char *sql);
/* Fail the test unless sql (freed after) returns the text want. */
void tu_assert_str_of(PGconn *conn, char *sql, const char *want);

/* Fail the test unless sql fails with sqlstate (two characters: any of
 * that class), on column when it is not NULL, and with in_message in its
 * message when that is not NULL. */
void tu_assert_sql_error(PGconn *conn, const char *sql, const char *sqlstate,
                         const char *column, const char *in_message);
/* The same for sql with n text parameters $1..$n. */
void tu_assert_sql_error_p(PGconn *conn, const char *sql, int n, const char *const *params,
                           const char *sqlstate, const char *column, const char *in_message);

/* Wait (bounded, polling the server, never a blind sleep) until sql
 * returns true; fails the test after timeout_ms. */
void tu_await(PGconn *conn, const char *sql, int timeout_ms);

/* Run argv (argv[0] a path) to its end with stdout and stderr captured
 * (*out, *err: malloc'd, NUL-terminated; either may be NULL if unwanted)
 * and return its exit status; fails the test if it died of a signal or
 * ran longer than timeout_ms (then it is killed). */
int tu_run(const char *const *argv, int timeout_ms, char **out, char **err);

/* The same in two halves, for children that must run at the same time:
 * tu_start forks argv with stdout and stderr on pipes; tu_finish reads
 * both to EOF and reaps it, as tu_run does (timeout_ms counted from the
 * call). tu_run(argv, ...) is tu_finish(tu_start(argv), ...). */
typedef struct tu_child {
    pid_t pid;
    int out, err;               /* read ends of its stdout and stderr */
    const char *name;           /* argv[0], borrowed */
} tu_child;
tu_child tu_start(const char *const *argv);
int tu_finish(tu_child ch, int timeout_ms, char **out, char **err);

/* The programs under test: $FERRY_RELAY_BIN and $FERRY_RECONCILE_BIN, by
 * default the ASan builds build/asan/ferry-relay and
 * build/asan/ferry-reconcile (relative to the repository root, where make
 * runs the tests). Fail the test when the file is not executable. */
const char *tu_relay_bin(void);
const char *tu_reconcile_bin(void);

/* tu_run of `ferry-reconcile ARGS...` (args NULL-terminated, at most 60). */
int tu_reconcile(const char *const *args, int timeout_ms, char **out, char **err);

/* What a program run left: its exit status and what it wrote to stdout
 * and stderr (malloc'd, NUL-terminated); tu_output_free frees both. */
typedef struct tu_output {
    int status;
    char *out, *err;
} tu_output;
void tu_output_free(tu_output *o);

/* The whole file, NUL-terminated and malloc'd, its length into *len when
 * len is not NULL; NULL when it does not exist. Other errors fail the test. */
char *tu_slurp(const char *path, size_t *len);
/* A data-driven case's expectation file (jansson's suite layout): its
 * text, malloc'd; or NULL, having said through print_error that the case
 * at case_path expects nothing, when the file is missing or empty (a case
 * that checks nothing is a failure of its own). */
char *tu_slurp_expected(const char *case_path, const char *expect_path);

/* A new temporary file /tmp/ferry-test-XXXXXX.yaml holding text: its
 * path, malloc'd, for tu_temp_remove to unlink and free. */
char *tu_temp_file(const char *text);
void tu_temp_remove(char *path);
/* Replace the file at path with text. */
void tu_write_file(const char *path, const char *text);
/* The file at path through a pipe (`cat path`), whose size a reader
 * cannot know in advance; its name, /dev/fd/N, into name. pclose it. */
FILE *tu_cat_pipe(const char *path, char *name, size_t size);

/* The group settings of the consumers the tests make: a member that dies
 * (kill -9) stays in the group until its session times out, and a
 * rebalance waits for it, so the session is short. NULL-terminated. */
extern const char *const tu_group_props[];

/* A consumer named name of one topic, applying to the test cluster's
 * database from the broker at kafka, with retry backoffs (5 to 50 ms) and
 * held-message scans (every 50 ms) short enough for tests. kafka_props
 * NULL means tu_group_props; max_attempts 0 the default. Fails the test if
 * it cannot be made. */
/* The conninfo tu_consumer_new's consumers apply with: NULL (the default)
 * for the test cluster's, as its superuser; a test that runs consumers as
 * a role sets it (test_roles_run.c). Borrowed. */
extern const char *tu_consumer_db;
ferry_consumer *tu_consumer_new(const char *name, const char *kafka, const char *topic,
                                ferry_handler_fn handler, void *arg,
                                const char *const *kafka_props, int max_attempts);

/* For a consumer's handler: run sql with n text parameters, which must
 * succeed as a command; else the server's error into err, prefixed with
 * what ("could not credit"), and its code. Calls no cmocka function: the
 * consumer reports what the handler returns. */
ferry_code tu_handler_exec(PGconn *conn, const char *sql, int n, const char *const *params,
                           const char *what, ferry_error *err);

/* Poll c, poll_ms a call, until holds(c, arg) (asked before every poll)
 * is true; fails the test after 60 s with what and the consumer's counts.
 * A poll that fails fails the test too. */
void tu_poll_until(ferry_consumer *c, int (*holds)(ferry_consumer *c, void *arg), void *arg,
                   int poll_ms, const char *what);
/* Close c (which must succeed) and destroy it. */
void tu_consumer_done(ferry_consumer *c);

/* The consumer binaries (test_consume, test_consume_hostile, test_saga)
 * run their tests twice at the same time, each pass with its own cluster:
 * with batches and with one message a transaction. Called first in main:
 * unless FERRY_CONSUMER_TEST_BATCH_MAX (this is that second pass) or
 * FERRY_TEST_ONE_PASS is set, start this binary (name, for argv[0]) again
 * with FERRY_CONSUMER_TEST_BATCH_MAX=1; its pid, or -1 when not started. */
pid_t tu_unbatched_pass_start(const char *name);
/* Wait for that pass (pid -1: none): 0 when it passed, else 1 after
 * saying so. */
int tu_unbatched_pass_wait(pid_t pid, const char *name);

/* Run only the tests whose names match $FERRY_TEST_FILTER (a cmocka
 * glob), when it is set; for working on one test at a time. */
void tu_filter_from_env(void);

/* FERRY_TEST_SHARD=i/n: keep of tests[0..count) only those whose index
 * is i modulo n (0 <= i < n), in place, and return how many; all of them
 * when it is unset. A binary that spends its run waiting (consumer-group
 * joins) runs as n jobs of the suite at once, each with its own cluster
 * (the Makefile's SHARD_JOBS). Exits with 2 on a malformed value rather
 * than run the wrong tests. */
size_t tu_shard(struct CMUnitTest *tests, size_t count);

/* cmocka_run_group_tests with $FERRY_TEST_FILTER and $FERRY_TEST_SHARD
 * applied (a copy of tests is sharded, tests itself is left alone). */
int tu_run_group(const char *name, const struct CMUnitTest *tests, size_t count,
                 CMFixtureFunction setup, CMFixtureFunction teardown);
#define tu_run_group_tests(tests, setup, teardown)                                        \
    tu_run_group(#tests, tests, sizeof(tests) / sizeof((tests)[0]), setup, teardown)

/* Fail the test with the ferry error unless rc is FERRY_OK. */
#define assert_ferry_ok(rc, err)                                                   \
    do {                                                                           \
        ferry_code rc_ = (rc);                                                     \
        if (rc_ != FERRY_OK)                                                       \
            fail_msg("%s: %s [%s] field=%s", ferry_code_name(rc_), (err).message,  \
                     (err).sqlstate, (err).field);                                 \
    } while (0)

#endif
