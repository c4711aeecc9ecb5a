/*
 * narrate.h — what the demos share: narrated steps that check themselves,
 * and the few libpq calls a demo makes. A demo prints what it does and
 * verifies that it happened; the first claim that does not hold ends it
 * with exit 1 (demo_fail), so `make demo` is a smoke test too.
 */
#ifndef FERRY_EXAMPLES_NARRATE_H
#define FERRY_EXAMPLES_NARRATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "ferry.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"

/* The demo's arguments: none, or --help (what it shows, and the
 * environment it reads, on stdout). Returns -1 to go on, else the exit
 * status to end with (0 after --help, 2 for anything else). */
int demo_args(int argc, char **argv, const char *what);

/* A new step of the walkthrough: "[N] ...". */
void demo_step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A detail of the current step, indented. */
void demo_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The walkthrough did not go as described: say so on stderr, return -1. */
int demo_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* demo_fail() with a ferry error's code, message, SQLSTATE and field. */
int demo_ferry_failed(const char *what, ferry_code rc, const ferry_error *err);

/* $name, or fallback when it is unset or empty. */
const char *demo_env(const char *name, const char *fallback);
/* The relay binary: $FERRY_RELAY_BIN, which is set to build/rel/ferry-relay
 * when unset or empty, as kt_start() runs $FERRY_RELAY_BIN too: one binary
 * for both. */
const char *demo_relay_bin(void);
/* The end of every demo: SIGTERM to the broker kb (NULL: none started),
 * which must exit 0, and the broker gone; returns rc, or -1 through
 * demo_fail() when rc was 0 and the broker did not exit cleanly. */
int demo_broker_stop(kt_broker *kb, int rc);
/* The demo's exit status for rc: 1 with "demo: FAILED" on stderr, or 0
 * with the closing line. */
int demo_exit(int rc);

/* A throwaway PostgreSQL cluster with the databases names[0..n-1] made
 * (one per service: each service owns its database); NULL through
 * demo_fail(). */
fpg *demo_cluster(const char *const *names, size_t n);

/* Run a statement that returns no rows: 0, or -1 through demo_fail(). */
int demo_exec(PGconn *conn, const char *sql);
/* Run sql with text parameters; it must return one row: its first column
 * (or "NULL") into out. */
int demo_query1(PGconn *conn, const char *sql, int nparams, const char *const *params,
                char *out, size_t size);
/* The same for one optional parameter and an integer answer. */
int demo_query_long(PGconn *conn, const char *sql, const char *param, long *out);
/* Print a query's result (one optional parameter) as an aligned table, as
 * psql would, indented by indent spaces; with_count adds "(N rows)". */
int demo_print_table(PGconn *conn, const char *sql, const char *param, int indent,
                     int with_count);

/* Fork and exec argv (argv[0] a path or a name in PATH) with its stdout
 * on out_fd and its stderr on err_fd (-1: the demo's own). The child dies
 * with the demo (PR_SET_PDEATHSIG). Its pid, or -1 through demo_fail();
 * the caller closes its descriptors either way. */
pid_t demo_spawn(const char *const *argv, int out_fd, int err_fd);

/* Run argv[0] (a path) with argv, its stderr captured, and wait at most
 * timeout_ms for it to exit (then it is killed). On 0, *log_out holds up
 * to log_max bytes of its stderr, NUL-terminated (caller frees), and
 * *status_out its exit status, or 128 + N when signal N ended it. -1
 * through demo_fail() when it could not be run or did not finish. */
int demo_run(const char *const *argv, int timeout_ms, size_t log_max, char **log_out,
             int *status_out);

/* A service the demo runs as a child (account-service, the Python and
 * Node.js services): its stdout (the stats line) through a pipe, its
 * stderr (its log) into a temporary file, shown when something goes
 * wrong. It dies with the demo (PR_SET_PDEATHSIG). */
typedef struct demo_service {
    const char *name;           /* for messages: "account-service" */
    pid_t pid;                  /* 0 once collected */
    int out;                    /* read end of its stdout */
    FILE *log;                  /* its stderr */
    int status;                 /* exit status once collected; 128 + N for signal N */
} demo_service;

/* Start argv (argv[0] a path, or a name looked up in PATH). 0, or -1
 * through demo_fail(); either way demo_service_cleanup() may follow. */
int demo_service_start(demo_service *svc, const char *name, const char *const *argv);
/* Collect the child if it has exited (without waiting): 1 if it has. */
int demo_service_exited(demo_service *svc);
/* Its log so far, indented, for a failure report (on stderr). */
void demo_service_show_log(demo_service *svc);
/* SIGTERM, then its stdout to EOF into out (size bytes, NUL-terminated),
 * then collect it; SIGKILL and -1 after timeout_ms. */
int demo_service_stop(demo_service *svc, int timeout_ms, char *out, size_t size);
/* Whatever state it is in: gone, and its files closed. */
void demo_service_cleanup(demo_service *svc);

/* Where a message landed, from its delivery report. */
typedef struct demo_delivery {
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
    int done;
} demo_delivery;

/* A Kafka producer of bootstrap, its delivery reports to dr (NULL: none);
 * NULL through demo_fail(). */
rd_kafka_t *demo_kafka_producer(const char *bootstrap,
                                void (*dr)(rd_kafka_t *, const rd_kafka_message_t *, void *));

/* Publish an exact copy of m — key, value, every header in order — to the
 * partition it came from, as a relay resending it would (same key, same
 * partitioner), and wait up to 10 s for its delivery report. 0 with
 * *copy_out where the copy landed, or -1 through demo_fail(). */
int demo_publish_copy(const char *bootstrap, const kt_msg *m, demo_delivery *copy_out);

#endif
