/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

fpg *tu_pg;
const char *const *tu_conf;

int tu_group_setup(void **state)
{
    fpg_opts opts = {.conf = tu_conf, .fsync = 0};
    tu_pg = fpg_start(&opts);
    if (tu_pg == NULL)
        return -1;
    PGconn *conn = fpg_connect(tu_pg);
    if (conn == NULL)
        return -1;
    ferry_error err;
    int version = 0;
    ferry_code rc = ferry_migrate(conn, &version, &err);
    PQfinish(conn);
    if (rc != FERRY_OK) {
        fprintf(stderr, "tu_group_setup: migrate: %s\n", err.message);
        return -1;
    }
    return 0;
}

int tu_group_teardown(void **state)
{
    fpg_destroy(tu_pg);
    tu_pg = NULL;
    return 0;
}

int tu_clean_outbox(void **state)
{
    PGconn *conn = tu_connect();
    tu_exec(conn, "TRUNCATE ferry.outbox, ferry.outbox_key, ferry.dead_letter");
    PQfinish(conn);
    return 0;
}

PGconn *tu_connect(void)
{
    PGconn *conn = fpg_connect(tu_pg);
    if (conn == NULL)
        fail_msg("could not connect to the test cluster");
    return conn;
}

PGconn *tu_connect_as(const char *user)
{
    char *ci = fpg_conninfo_for(tu_pg, user, NULL);
    assert_non_null(ci);
    PGconn *conn = PQconnectdb(ci);
    free(ci);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("could not connect as %s: %s", user, PQerrorMessage(conn));
    return conn;
}

void tu_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("SQL failed: %s\n  %s", sql, msg);
    }
    PQclear(res);
}

static PGresult *one_row(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("SQL returned no row: %s\n  %s", sql, msg);
    }
    return res;
}

long long tu_int(PGconn *conn, const char *sql)
{
    PGresult *res = one_row(conn, sql);
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

char *tu_str(PGconn *conn, const char *sql)
{
    PGresult *res = one_row(conn, sql);
    char *v = PQgetisnull(res, 0, 0) ? NULL : strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

char *tu_sprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    assert_non_null(s);
    return s;
}

void tu_await(PGconn *conn, const char *sql, int timeout_ms)
{
    struct timespec t0, now, tick = {0, 2 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        char *v = tu_str(conn, sql);
        int done = v != NULL && strcmp(v, "t") == 0;
        free(v);
        if (done)
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > timeout_ms)
            fail_msg("timed out after %d ms waiting for: %s", timeout_ms, sql);
        nanosleep(&tick, NULL);   /* polling interval of the condition */
    }
}

void tu_filter_from_env(void)
{
    const char *f = getenv("FERRY_TEST_FILTER");
    if (f != NULL && f[0] != '\0')
        cmocka_set_test_filter(f);
}

/* Read what is there on fd into *buf (growing it); 0 at EOF. */
static int drain_fd(int fd, char **buf, size_t *len, size_t *cap)
{
    if (*cap - *len < 4097) {
        *cap = *cap * 2 + 8192;
        *buf = realloc(*buf, *cap);
        assert_non_null(*buf);
    }
    ssize_t n = read(fd, *buf + *len, *cap - *len - 1);
    if (n > 0)
        *len += (size_t)n;
    (*buf)[*len] = '\0';
    return n > 0 || (n < 0 && errno == EINTR);
}

int tu_run(const char *const *argv, int timeout_ms, char **out, char **err)
{
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        close(po[1]);
        close(pe[1]);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "tu_run: could not run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    char *b[2] = {NULL, NULL};
    size_t len[2] = {0, 0}, cap[2] = {0, 0};
    int open_fds[2] = {po[0], pe[0]};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 2; i++) {
        cap[i] = 8192;
        b[i] = calloc(1, cap[i]);
        assert_non_null(b[i]);
    }
    while (open_fds[0] >= 0 || open_fds[1] >= 0) {
        struct pollfd fds[2] = {{open_fds[0], POLLIN, 0}, {open_fds[1], POLLIN, 0}};
        int r = poll(fds, 2, 200);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            fail_msg("%s ran longer than %d ms; stderr so far:\n%s", argv[0], timeout_ms,
                     b[1]);
        }
        if (r <= 0)
            continue;
        for (int i = 0; i < 2; i++)
            if (open_fds[i] >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
                && !drain_fd(open_fds[i], &b[i], &len[i], &cap[i])) {
                close(open_fds[i]);
                open_fds[i] = -1;
            }
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("%s died of signal %d; stderr:\n%s", argv[0], WTERMSIG(status), b[1]);
    if (out)
        *out = b[0];
    else
        free(b[0]);
    if (err)
        *err = b[1];
    else
        free(b[1]);
    return WEXITSTATUS(status);
}
