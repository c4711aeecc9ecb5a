/*
 * benchutil.h — what the benchmarks share: medians, ranges and
 * percentiles over rounds, and the libpq calls every bench makes (the
 * clock is tests/harness/clock.h). A bench fails (exit 1) only
 * when something did not work, never on a timing; these helpers print why
 * on stderr and return -1.
 */
#ifndef FERRY_BENCH_BENCHUTIL_H
#define FERRY_BENCH_BENCHUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"

/* Up to this many samples per figure (rounds); more are an error of ours. */
#define BENCH_SAMPLES_MAX 64

/* qsort() order for doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);

/* Median, minimum and maximum of v[0..n-1], 1 <= n <= BENCH_SAMPLES_MAX. */
double bench_median(const double *v, int n);
double bench_min(const double *v, int n);
double bench_max(const double *v, int n);

/* Nearest-rank percentile of sorted v[0..n-1], n >= 1: the smallest value
 * with at least p% of the values at or below it. */
double bench_percentile(const double *v, size_t n, double p);

/* The server's settings the benches name in their headers, as SHOW
 * prints them. */
typedef struct bench_server {
    char version[64];           /* server_version */
    char fsync[16];
    char sync_commit[16];       /* synchronous_commit */
    char sync_method[32];       /* wal_sync_method */
    char shared_buffers[16];
} bench_server;
/* Read them from conn: 0, or -1 with the reason on stderr. */
int bench_server_read(PGconn *conn, bench_server *out);

/* A table of one figure per round and their median (bench_saga's and
 * bench_reconcile's): the head names the columns ("round 1" ... "median"),
 * each row is label in label_width characters, v[0..n-1] and their median
 * with prec decimals. */
void bench_rounds_head(int label_width, int n);
void bench_rounds_row(int label_width, const char *label, const double *v, int n, int prec);

/* The environment variable name as a whole number in [lo, hi], def when it
 * is unset or empty; -1 with the reason on stderr when it is anything else. */
int bench_env_long(const char *name, long def, long lo, long hi, long *out);
/* The same for any number in [lo, hi]. */
int bench_env_double(const char *name, double def, double lo, double hi, double *out);

/* Every bench's end, whatever it got to: the broker kb stopped, admin
 * closed and the cluster pg removed (each NULL: never started); returns
 * status, after "bench: FAILED" on stderr when it is not 0. */
int bench_end(int status, kt_broker *kb, PGconn *admin, fpg *pg);

/* Run sql (no parameters); 0, or -1 with the reason on stderr. */
int bench_exec(PGconn *conn, const char *sql);
/* bench_exec each of sql[0..n-1] in turn, up to the first failure. */
int bench_exec_all(PGconn *conn, const char *const *sql, size_t n);
/* ferry_migrate, the schema version into *version; 0, or -1 with the
 * reason on stderr. */
int bench_migrate(PGconn *conn, int *version);
/* Takes res (and PQclears it): 0 when its status is want, else -1 with
 * "bench: WHAT failed: ..." on stderr. */
int bench_result_ok(PGconn *conn, PGresult *res, ExecStatusType want, const char *what);
/* The rows of sql with nparams params: the caller PQclears them; NULL
 * with "bench: WHAT: ..." on stderr when the query failed. */
PGresult *bench_query(PGconn *conn, const char *what, const char *sql, int nparams,
                      const char *const *params);
/* The first column of the only row of sql ("" for NULL) into out. */
int bench_query_text(PGconn *conn, const char *sql, int nparams, const char *const *params,
                     char *out, size_t size);
/* The same as a number; param, when not NULL, is $1. */
int bench_query_ll(PGconn *conn, const char *sql, const char *param, long long *out);

/* The program $env names, else fallback, which is then exported as $env
 * (for kt_start and child processes); NULL, with why on stderr, when it
 * cannot be run. */
const char *bench_program(const char *env, const char *fallback);

/* Fork and exec argv (argv[0] a path) as a child that dies with the bench,
 * its stdout on out_fd (-1: /dev/null, so that nothing a child prints
 * mixes into the bench's report) and its stderr on err_fd (-1: the
 * bench's own). Its pid, or -1 with why on stderr. */
pid_t bench_spawn(const char *const *argv, int out_fd, int err_fd);

/* rd_kafka_conf_set, with "bench: kafka property ..." on stderr: 0 or -1. */
int bench_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value);
/* A consumer of bootstrap in group, with the properties props (name,
 * value, ..., NULL), its messages read with rd_kafka_consumer_poll; NULL,
 * with why on stderr. */
rd_kafka_t *bench_consumer_new(const char *bootstrap, const char *group,
                               const char *const *props);
/* A producer that produces as the relay does (idempotent, acks=all,
 * Java's partitioner) with linger.ms linger, delivery reports to dr with
 * opaque; NULL, with why on stderr. */
rd_kafka_t *bench_relay_like_producer(const char *bootstrap, const char *linger,
                                      void (*dr)(rd_kafka_t *, const rd_kafka_message_t *,
                                                 void *),
                                      void *opaque);

#endif
