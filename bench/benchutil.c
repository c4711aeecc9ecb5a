/*
 * benchutil.c — the benchmarks' shared helpers (benchutil.h).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "ferry.h"
#include "benchutil.h"

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, int n)
{
    assert(n >= 1 && n <= BENCH_SAMPLES_MAX);
    double s[BENCH_SAMPLES_MAX];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, bench_cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

double bench_min(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

double bench_max(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

double bench_percentile(const double *v, size_t n, double p)
{
    double exact = p / 100.0 * (double)n;
    size_t rank = (size_t)exact;
    if ((double)rank < exact)
        rank++;
    return v[rank == 0 ? 0 : rank - 1];
}

void bench_rounds_head(int label_width, int n)
{
    printf("\n%-*s", label_width, "");
    for (int r = 0; r < n; r++)
        printf(" %7s%d", "round ", r + 1);
    printf(" %9s\n", "median");
}

void bench_rounds_row(int label_width, const char *label, const double *v, int n, int prec)
{
    printf("%-*s", label_width, label);
    for (int r = 0; r < n; r++)
        printf(" %8.*f", prec, v[r]);
    printf(" %9.*f\n", prec, bench_median(v, n));
}

int bench_env_long(const char *name, long def, long lo, long hi, long *out)
{
    const char *s = getenv(name);
    *out = def;
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "bench: %s=%s: want a whole number from %ld to %ld\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int bench_env_double(const char *name, double def, double lo, double hi, double *out)
{
    const char *s = getenv(name);
    *out = def;
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "bench: %s=%s: want a number from %g to %g\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int bench_end(int status, kt_broker *kb, PGconn *admin, fpg *pg)
{
    kt_stop(kb);
    PQfinish(admin);
    fpg_destroy(pg);
    if (status != 0)
        fprintf(stderr, "bench: FAILED\n");
    return status;
}

int bench_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "bench: %s\n  failed: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    return ok ? 0 : -1;
}

int bench_exec_all(PGconn *conn, const char *const *sql, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (bench_exec(conn, sql[i]) != 0)
            return -1;
    return 0;
}

int bench_migrate(PGconn *conn, int *version)
{
    ferry_error err;
    ferry_code rc = ferry_migrate(conn, version, &err);
    if (rc != FERRY_OK) {
        fprintf(stderr, "bench: ferry_migrate: %s: %s\n", ferry_code_name(rc), err.message);
        return -1;
    }
    return 0;
}

int bench_result_ok(PGconn *conn, PGresult *res, ExecStatusType want, const char *what)
{
    int ok = PQresultStatus(res) == want;
    if (!ok)
        fprintf(stderr, "bench: %s failed: %s", what, PQerrorMessage(conn));
    PQclear(res);
    return ok ? 0 : -1;
}

PGresult *bench_query(PGconn *conn, const char *what, const char *sql, int nparams,
                      const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    fprintf(stderr, "bench: %s: %s", what, PQerrorMessage(conn));
    PQclear(res);
    return NULL;
}

int bench_query_text(PGconn *conn, const char *sql, int nparams, const char *const *params,
                     char *out, size_t size)
{
    PGresult *res = bench_query(conn, sql, sql, nparams, params);
    if (res == NULL)
        return -1;
    int ok = PQntuples(res) == 1;
    if (ok)
        snprintf(out, size, "%s", PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
    else
        fprintf(stderr, "bench: %s\n  returned %d rows, not 1\n", sql, PQntuples(res));
    PQclear(res);
    return ok ? 0 : -1;
}

int bench_query_ll(PGconn *conn, const char *sql, const char *param, long long *out)
{
    char buf[64];
    const char *params[1] = {param};
    if (bench_query_text(conn, sql, param ? 1 : 0, param ? params : NULL, buf, sizeof buf) != 0)
        return -1;
    *out = strtoll(buf, NULL, 10);
    return 0;
}

int bench_server_read(PGconn *conn, bench_server *out)
{
    if (bench_query_text(conn, "SHOW server_version", 0, NULL, out->version,
                         sizeof out->version) != 0 ||
        bench_query_text(conn, "SHOW fsync", 0, NULL, out->fsync, sizeof out->fsync) != 0 ||
        bench_query_text(conn, "SHOW synchronous_commit", 0, NULL, out->sync_commit,
                         sizeof out->sync_commit) != 0 ||
        bench_query_text(conn, "SHOW wal_sync_method", 0, NULL, out->sync_method,
                         sizeof out->sync_method) != 0 ||
        bench_query_text(conn, "SHOW shared_buffers", 0, NULL, out->shared_buffers,
                         sizeof out->shared_buffers) != 0)
        return -1;
    return 0;
}

pid_t bench_spawn(const char *const *argv, int out_fd, int err_fd)
{
    int devnull = -1;
    if (out_fd < 0) {
        devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (devnull < 0) {
            fprintf(stderr, "bench: /dev/null: %s\n", strerror(errno));
            return -1;
        }
        out_fd = devnull;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* Die with the bench; async-signal-safe calls only until exec. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent ||
            dup2(out_fd, STDOUT_FILENO) < 0 || (err_fd >= 0 && dup2(err_fd, STDERR_FILENO) < 0))
            _exit(127);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (devnull >= 0)
        close(devnull);
    if (pid < 0)
        fprintf(stderr, "bench: fork: %s\n", strerror(errno));
    return pid;
}

const char *bench_program(const char *env, const char *fallback)
{
    const char *bin = getenv(env);
    if (bin == NULL || bin[0] == '\0') {
        setenv(env, fallback, 1);
        bin = getenv(env);
    }
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "bench: cannot run %s: %s\n", bin, strerror(errno));
        return NULL;
    }
    return bin;
}

int bench_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "bench: kafka property %s=%s: %s\n", name, value, errstr);
        return -1;
    }
    return 0;
}

rd_kafka_t *bench_consumer_new(const char *bootstrap, const char *group,
                               const char *const *props)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int bad = bench_kconf_set(conf, "bootstrap.servers", bootstrap) != 0 ||
              bench_kconf_set(conf, "group.id", group) != 0;
    for (size_t i = 0; !bad && props[i] != NULL; i += 2)
        bad = bench_kconf_set(conf, props[i], props[i + 1]) != 0;
    if (bad) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "bench: consumer %s: %s\n", group, errstr);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

rd_kafka_t *bench_relay_like_producer(const char *bootstrap, const char *linger,
                                      void (*dr)(rd_kafka_t *, const rd_kafka_message_t *,
                                                 void *),
                                      void *opaque)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (bench_kconf_set(conf, "bootstrap.servers", bootstrap) ||
        bench_kconf_set(conf, "enable.idempotence", "true") ||
        bench_kconf_set(conf, "acks", "all") || bench_kconf_set(conf, "linger.ms", linger) ||
        bench_kconf_set(conf, "partitioner", "murmur2_random")) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_conf_set_dr_msg_cb(conf, dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "bench: producer: %s\n", errstr);
    }
    return rk;
}
