/*
 * benchutil.h — what the benchmarks share: medians and ranges over rounds,
 * and the two libpq calls every bench makes. A bench fails (exit 1) only
 * when something did not work, never on a timing; these helpers print why
 * on stderr and return -1.
 */
#ifndef FERRY_BENCH_BENCHUTIL_H
#define FERRY_BENCH_BENCHUTIL_H

#include <stddef.h>

#include <libpq-fe.h>

/* Up to this many samples per figure (rounds); more are an error of ours. */
#define BENCH_SAMPLES_MAX 64

/* qsort() order for doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);

/* Median, minimum and maximum of v[0..n-1], 1 <= n <= BENCH_SAMPLES_MAX. */
double bench_median(const double *v, int n);
double bench_min(const double *v, int n);
double bench_max(const double *v, int n);

/* The environment variable name as a whole number in [lo, hi], def when it
 * is unset or empty; -1 with the reason on stderr when it is anything else. */
int bench_env_long(const char *name, long def, long lo, long hi, long *out);

/* Run sql (no parameters); 0, or -1 with the reason on stderr. */
int bench_exec(PGconn *conn, const char *sql);
/* The first column of the only row of sql ("" for NULL) into out. */
int bench_query_text(PGconn *conn, const char *sql, int nparams, const char *const *params,
                     char *out, size_t size);

#endif
