/*
 * narrate.c — the demos' shared narration and libpq helpers (narrate.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "narrate.h"
#include "../tests/harness/clock.h"

static int g_step;

void demo_step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("\n[%d] ", ++g_step);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

void demo_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("    ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

int demo_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "demo: FAILED at step %d: ", g_step);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return -1;
}

int demo_ferry_failed(const char *what, ferry_code rc, const ferry_error *err)
{
    return demo_fail("%s: %s: %s [sqlstate %s, field %s]", what, ferry_code_name(rc),
                     err->message, err->sqlstate[0] ? err->sqlstate : "-",
                     err->field[0] ? err->field : "-");
}

const char *demo_env(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : fallback;
}

const char *demo_relay_bin(void)
{
    const char *v = getenv("FERRY_RELAY_BIN");
    if (v == NULL || v[0] == '\0') {
        setenv("FERRY_RELAY_BIN", "build/rel/ferry-relay", 1);
        v = getenv("FERRY_RELAY_BIN");
    }
    return v;
}

int demo_broker_stop(kt_broker *kb, int rc)
{
    if (kb == NULL)
        return rc;
    int st = kt_terminate(kb);
    if (st != 0 && rc == 0)
        rc = demo_fail("the broker exited with status %d on SIGTERM, expected 0", st);
    kt_stop(kb);
    return rc;
}

int demo_exit(int rc)
{
    if (rc != 0) {
        fprintf(stderr, "demo: FAILED\n");
        return 1;
    }
    demo_say("done: every step behaved as described");
    return 0;
}

fpg *demo_cluster(const char *const *names, size_t n)
{
    fpg *pg = fpg_start(NULL);
    if (pg == NULL) {
        demo_fail("could not start PostgreSQL (see above)");
        return NULL;
    }
    PGconn *admin = fpg_connect(pg);
    int bad = admin == NULL;
    if (bad)
        demo_fail("could not connect");
    for (size_t i = 0; i < n && !bad; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", names[i]);
        bad = demo_exec(admin, sql) != 0;
    }
    PQfinish(admin);
    if (bad) {
        fpg_destroy(pg);
        return NULL;
    }
    return pg;
}

int demo_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? 0 : demo_fail("%s: %s", sql, PQerrorMessage(conn));
}

int demo_query1(PGconn *conn, const char *sql, int nparams, const char *const *params,
                char *out, size_t size)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = demo_fail("%s: %s", sql, PQerrorMessage(conn));
    else if (PQntuples(res) != 1)
        rc = demo_fail("%s: %d rows, expected 1", sql, PQntuples(res));
    else
        snprintf(out, size, "%s", PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

int demo_query_long(PGconn *conn, const char *sql, const char *param, long *out)
{
    char buf[32];
    const char *params[1] = {param};
    if (demo_query1(conn, sql, param ? 1 : 0, param ? params : NULL, buf, sizeof buf) != 0)
        return -1;
    *out = strtol(buf, NULL, 10);
    return 0;
}

int demo_print_table(PGconn *conn, const char *sql, const char *param, int indent,
                     int with_count)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(conn, sql, param ? 1 : 0, NULL, param ? params : NULL, NULL,
                                 NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = demo_fail("%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
        return rc;
    }
    enum { MAX_COLS = 16 };
    int cols = PQnfields(res) < MAX_COLS ? PQnfields(res) : MAX_COLS;
    int width[MAX_COLS];
    for (int c = 0; c < cols; c++) {
        width[c] = (int)strlen(PQfname(res, c));
        for (int r = 0; r < PQntuples(res); r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    printf("%*s", indent, "");
    for (int c = 0; c < cols; c++)
        printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0, PQfname(res, c));
    printf("\n%*s", indent, "");
    for (int c = 0; c < cols; c++) {
        printf("%s", c ? "-+-" : "");
        for (int i = 0; i < width[c]; i++)
            putchar('-');
    }
    printf("\n");
    for (int r = 0; r < PQntuples(res); r++) {
        printf("%*s", indent, "");
        for (int c = 0; c < cols; c++)
            printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0,
                   PQgetvalue(res, r, c));
        printf("\n");
    }
    if (with_count)
        printf("%*s(%d row%s)\n", indent, "", PQntuples(res), PQntuples(res) == 1 ? "" : "s");
    PQclear(res);
    return 0;
}

pid_t demo_spawn(const char *const *argv, int out_fd, int err_fd)
{
    /* Formatted before the fork: the child makes async-signal-safe calls
     * only until exec. */
    char msg[512];
    int msglen = snprintf(msg, sizeof msg, "could not execute %s\n", argv[0]);
    if (msglen < 0 || (size_t)msglen >= sizeof msg)
        msglen = (int)strlen(msg);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return demo_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent ||
            (out_fd >= 0 && dup2(out_fd, STDOUT_FILENO) < 0) ||
            (err_fd >= 0 && dup2(err_fd, STDERR_FILENO) < 0))
            _exit(127);
        execvp(argv[0], (char *const *)argv);
        ssize_t w = write(STDERR_FILENO, msg, (size_t)msglen);
        (void)w;
        _exit(127);
    }
    return pid;
}

/* Read fd to EOF into buf (at most max bytes kept, *len so far), until the
 * monotonic deadline: 1 if it passed first, else 0. */
static int read_until(int fd, long long deadline, char *buf, size_t max, size_t *len)
{
    for (;;) {
        long long left = deadline - clk_mono_ms();
        if (left <= 0)
            return 1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        char chunk[4096];
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;           /* EOF: the program is exiting */
        size_t keep = max - *len < (size_t)got ? max - *len : (size_t)got;
        memcpy(buf + *len, chunk, keep);
        *len += keep;
    }
}

/* A wait status as an exit status: 128 + N when signal N ended it. */
static int exit_status(int wstatus)
{
    return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

int demo_run(const char *const *argv, int timeout_ms, size_t log_max, char **log_out,
             int *status_out)
{
    char *log = malloc(log_max + 1);
    if (log == NULL)
        return demo_fail("out of memory");
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        free(log);
        return demo_fail("pipe: %s", strerror(errno));
    }
    pid_t pid = demo_spawn(argv, -1, fds[1]);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        free(log);
        return -1;
    }

    size_t len = 0;
    int timed_out = read_until(fds[0], clk_mono_ms() + timeout_ms, log, log_max, &len);
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
        ;
    log[len] = '\0';
    if (timed_out) {
        free(log);
        return demo_fail("%s did not finish within %d ms (killed)", argv[0], timeout_ms);
    }
    *status_out = exit_status(wstatus);
    *log_out = log;
    return 0;
}

/* ------------------------------------------------------------ a service */

int demo_service_start(demo_service *svc, const char *name, const char *const *argv)
{
    memset(svc, 0, sizeof *svc);
    svc->name = name;
    svc->out = -1;
    svc->log = tmpfile();
    if (svc->log == NULL)
        return demo_fail("tmpfile: %s", strerror(errno));
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return demo_fail("pipe: %s", strerror(errno));
    pid_t pid = demo_spawn(argv, fds[1], fileno(svc->log));
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    svc->pid = pid;
    svc->out = fds[0];
    return 0;
}

int demo_service_exited(demo_service *svc)
{
    if (svc->pid == 0)
        return 1;
    int wstatus;
    if (waitpid(svc->pid, &wstatus, WNOHANG) != svc->pid)
        return 0;
    svc->status = exit_status(wstatus);
    svc->pid = 0;
    return 1;
}

void demo_service_show_log(demo_service *svc)
{
    if (svc->log == NULL)
        return;
    fflush(stdout);
    fprintf(stderr, "demo: %s's stderr:\n", svc->name);
    char line[1024];
    rewind(svc->log);
    while (fgets(line, sizeof line, svc->log) != NULL)
        fprintf(stderr, "  | %s%s", line, strchr(line, '\n') ? "" : "\n");
    fseek(svc->log, 0, SEEK_END);
}

int demo_service_stop(demo_service *svc, int timeout_ms, char *out, size_t size)
{
    size_t len = 0;
    if (svc->pid != 0)
        kill(svc->pid, SIGTERM);
    int timed_out = svc->out >= 0 &&
                    read_until(svc->out, clk_mono_ms() + timeout_ms, out, size - 1, &len);
    out[len] = '\0';
    if (svc->out >= 0)
        close(svc->out);
    svc->out = -1;
    if (svc->pid != 0) {
        if (timed_out)
            kill(svc->pid, SIGKILL);
        int wstatus;
        while (waitpid(svc->pid, &wstatus, 0) < 0 && errno == EINTR)
            ;
        svc->status = exit_status(wstatus);
        svc->pid = 0;
    }
    if (timed_out)
        return demo_fail("%s did not exit within %d ms of SIGTERM (killed)", svc->name,
                         timeout_ms);
    return 0;
}

void demo_service_cleanup(demo_service *svc)
{
    if (svc->pid != 0) {
        kill(svc->pid, SIGKILL);
        while (waitpid(svc->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        svc->pid = 0;
    }
    if (svc->out >= 0)
        close(svc->out);
    svc->out = -1;
    if (svc->log != NULL)
        fclose(svc->log);
    svc->log = NULL;
}

/* ------------------------------------------------------------ a duplicate */

static void on_copy_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    demo_delivery *d = m->_private;
    d->err = m->err;
    d->partition = m->partition;
    d->offset = m->offset;
    d->done = 1;
}

rd_kafka_t *demo_kafka_producer(const char *bootstrap,
                                void (*dr)(rd_kafka_t *, const rd_kafka_message_t *, void *))
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        demo_fail("bootstrap.servers: %s", errstr);
        return NULL;
    }
    if (dr != NULL)
        rd_kafka_conf_set_dr_msg_cb(conf, dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        demo_fail("could not create a Kafka producer: %s", errstr);
        return NULL;
    }
    return rk;                  /* conf belongs to rk now */
}

int demo_publish_copy(const char *bootstrap, const kt_msg *m, demo_delivery *copy_out)
{
    rd_kafka_t *rk = demo_kafka_producer(bootstrap, on_copy_delivery);
    if (rk == NULL)
        return -1;
    int rc = 0;
    demo_delivery d = {.err = RD_KAFKA_RESP_ERR_NO_ERROR};
    rd_kafka_headers_t *h = rd_kafka_headers_new(m->header_count ? m->header_count : 1);
    for (size_t i = 0; i < m->header_count; i++)
        rd_kafka_header_add(h, m->headers[i].name, -1, m->headers[i].value,
                            m->headers[i].value ? (ssize_t)m->headers[i].value_len : 0);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(m->topic), RD_KAFKA_V_PARTITION(m->partition),
        RD_KAFKA_V_KEY(m->key, m->key ? m->key_len : 0),
        RD_KAFKA_V_VALUE(m->value, m->value ? m->value_len : 0),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE(&d), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);    /* still ours: producev failed */
        rc = demo_fail("could not produce the copy: %s", rd_kafka_err2str(err));
    } else {
        /* The copy is published when its delivery report says so. */
        rd_kafka_flush(rk, 10000);
        if (!d.done || d.err != RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = demo_fail("the copy was not delivered: %s",
                      d.done ? rd_kafka_err2str(d.err) : "no delivery report within 10 s");
    }
    rd_kafka_destroy(rk);
    if (rc == 0)
        *copy_out = d;
    return rc;
}

int demo_args(int argc, char **argv, const char *what)
{
    if (argc <= 1)
        return -1;
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: %s\n\n%s\n\n"
               "It starts its own throwaway PostgreSQL cluster (initdb/pg_ctl) and a\n"
               "`ferry-relay devkafka` broker, narrates each step and checks it; the\n"
               "first claim that does not hold ends it with exit 1. Environment:\n"
               "FERRY_RELAY_BIN (the relay; build/rel/ferry-relay), and for some demos\n"
               "FERRY_ACCOUNT_SERVICE_BIN, FERRY_RECONCILE_BIN, FERRY_PYTHON, FERRY_NODE.\n"
               "`make demo` runs them all.\n", argv[0], what);
        return 0;
    }
    fprintf(stderr, "%s: takes no arguments (--help says what it does)\n", argv[0]);
    return 2;
}
