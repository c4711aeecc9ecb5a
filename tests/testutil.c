/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <inttypes.h>
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
    ferry_code rc = ferry_migrate(conn, NULL, &err);     /* the version is not wanted */
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
    return tu_exec_once("TRUNCATE ferry.outbox, ferry.outbox_key, ferry.dead_letter");
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

void tu_login_role(PGconn *admin, const char *name, const char *in_role)
{
    tu_exec_of(admin, tu_sprintf("DO $$ BEGIN CREATE ROLE %s LOGIN%s%s; "
                                 "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
                                 name, in_role ? " IN ROLE " : "", in_role ? in_role : ""));
}

PGconn *tu_connect_as_new(PGconn *admin, const char *name, const char *in_role)
{
    tu_login_role(admin, name, in_role);
    return tu_connect_as(name);
}

char *tu_fresh_database(const char *name)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "SET client_min_messages = warning");    /* "does not exist, skipping" */
    tu_exec_of(admin, tu_sprintf("DROP DATABASE IF EXISTS %s", name));
    tu_exec_of(admin, tu_sprintf("CREATE DATABASE %s", name));
    PQfinish(admin);
    char *ci = fpg_conninfo_for(tu_pg, NULL, name);
    assert_non_null(ci);
    return ci;
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

void tu_exec_of(PGconn *conn, char *sql)
{
    tu_exec(conn, sql);
    free(sql);
}

int tu_exec_once(const char *sql)
{
    PGconn *conn = tu_connect();
    tu_exec(conn, sql);
    PQfinish(conn);
    return 0;
}

/* sql's result, which must have a row; n text parameters $1..$n (0: a
 * plain PQexec, so that sql may hold several statements). */
static PGresult *one_row_p(PGconn *conn, const char *sql, int n, const char *const *params)
{
    PGresult *res = n == 0 ? PQexec(conn, sql)
                           : PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("SQL returned no row: %s\n  %s", sql, msg);
    }
    return res;
}

static PGresult *one_row(PGconn *conn, const char *sql)
{
    return one_row_p(conn, sql, 0, NULL);
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
    return tu_str_p(conn, sql, 0, NULL);
}

char *tu_str_p(PGconn *conn, const char *sql, int n, const char *const *params)
{
    PGresult *res = one_row_p(conn, sql, n, params);
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

long long tu_int_of(PGconn *conn, char *sql)
{
    long long n = tu_int(conn, sql);
    free(sql);
    return n;
}

char *tu_str_of(PGconn *conn, char *sql)
{
    char *v = tu_str(conn, sql);
    free(sql);
    return v;
}

void tu_assert_str(PGconn *conn, const char *sql, const char *want)
{
    char *got = tu_str(conn, sql);
    if (got == NULL || strcmp(got, want) != 0)
        fail_msg("got \"%s\", want \"%s\" from %s", got ? got : "(null)", want, sql);
    free(got);
}

void tu_assert_str_of(PGconn *conn, char *sql, const char *want)
{
    tu_assert_str(conn, sql, want);
    free(sql);
}

void tu_assert_sql_error(PGconn *conn, const char *sql, const char *sqlstate,
                         const char *column, const char *in_message)
{
    tu_assert_sql_error_p(conn, sql, 0, NULL, sqlstate, column, in_message);
}

void tu_assert_sql_error_p(PGconn *conn, const char *sql, int n, const char *const *params,
                           const char *sqlstate, const char *column, const char *in_message)
{
    /* PQexec without parameters, so that sql may hold several statements
     * as the callers' fixtures do. */
    PGresult *res = n == 0 ? PQexec(conn, sql)
                           : PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *col = PQresultErrorField(res, PG_DIAG_COLUMN_NAME);
    /* Checked in full before failing, so that the message can say what
     * came instead and res is freed either way. */
    int ok = PQresultStatus(res) == PGRES_FATAL_ERROR && st != NULL &&
             strncmp(st, sqlstate, strlen(sqlstate)) == 0 &&
             (column == NULL || (col != NULL && strcmp(col, column) == 0)) &&
             (in_message == NULL || strstr(PQresultErrorMessage(res), in_message) != NULL);
    if (!ok) {
        char why[1024];
        snprintf(why, sizeof why, "%s: want %s on %s (\"%s\" in its message), got %s %s on %s: %s",
                 sql, sqlstate, column ? column : "-", in_message ? in_message : "",
                 PQresStatus(PQresultStatus(res)), st ? st : "-", col ? col : "-",
                 PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("%s", why);
    }
    PQclear(res);
}

void tu_await(PGconn *conn, const char *sql, int timeout_ms)
{
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        char *v = tu_str(conn, sql);
        int done = v != NULL && strcmp(v, "t") == 0;
        free(v);
        if (done)
            return;
        if (clk_mono_ms() > end)
            fail_msg("timed out after %d ms waiting for: %s", timeout_ms, sql);
        clk_sleep_ms(2);   /* polling interval of the condition */
    }
}

void tu_filter_from_env(void)
{
    const char *f = getenv("FERRY_TEST_FILTER");
    if (f != NULL && f[0] != '\0')
        cmocka_set_test_filter(f);
}

size_t tu_shard(struct CMUnitTest *tests, size_t count)
{
    const char *v = getenv("FERRY_TEST_SHARD");
    if (v == NULL || v[0] == '\0')
        return count;
    unsigned i = 0, n = 0;
    int end = 0;
    if (sscanf(v, "%u/%u%n", &i, &n, &end) != 2 || v[end] != '\0' || n == 0 || i >= n) {
        fprintf(stderr, "FERRY_TEST_SHARD=%s: expected i/n with 0 <= i < n\n", v);
        exit(2);
    }
    size_t kept = 0;
    for (size_t t = 0; t < count; t++)
        if (t % n == i)
            tests[kept++] = tests[t];
    fprintf(stderr, "FERRY_TEST_SHARD=%s: %zu of %zu tests\n", v, kept, count);
    return kept;
}

int tu_run_group(const char *name, const struct CMUnitTest *tests, size_t count,
                 CMFixtureFunction setup, CMFixtureFunction teardown)
{
    struct CMUnitTest *mine = malloc((count ? count : 1) * sizeof *mine);
    assert_non_null(mine);
    memcpy(mine, tests, count * sizeof *mine);
    tu_filter_from_env();
    int failed = _cmocka_run_group_tests(name, mine, tu_shard(mine, count), setup, teardown);
    free(mine);
    return failed;
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

tu_child tu_start(const char *const *argv)
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
    return (tu_child){.pid = pid, .out = po[0], .err = pe[0], .name = argv[0]};
}

int tu_finish(tu_child ch, int timeout_ms, char **out, char **err)
{
    char *b[2] = {NULL, NULL};
    size_t len[2] = {0, 0}, cap[2] = {0, 0};
    int open_fds[2] = {ch.out, ch.err};
    int64_t t0 = clk_mono_ms();
    for (int i = 0; i < 2; i++) {
        cap[i] = 8192;
        b[i] = calloc(1, cap[i]);
        assert_non_null(b[i]);
    }
    while (open_fds[0] >= 0 || open_fds[1] >= 0) {
        struct pollfd fds[2] = {{open_fds[0], POLLIN, 0}, {open_fds[1], POLLIN, 0}};
        int r = poll(fds, 2, 200);
        if (clk_mono_ms() - t0 > timeout_ms) {
            kill(ch.pid, SIGKILL);
            waitpid(ch.pid, NULL, 0);
            fail_msg("%s ran longer than %d ms; stderr so far:\n%s", ch.name, timeout_ms,
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
    assert_int_equal(waitpid(ch.pid, &status, 0), ch.pid);
    if (!WIFEXITED(status))
        fail_msg("%s died of signal %d; stderr:\n%s", ch.name, WTERMSIG(status), b[1]);
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

int tu_run(const char *const *argv, int timeout_ms, char **out, char **err)
{
    return tu_finish(tu_start(argv), timeout_ms, out, err);
}

static const char *program(const char *env, const char *def)
{
    const char *b = getenv(env);
    b = b && b[0] ? b : def;
    if (access(b, X_OK) != 0)
        fail_msg("%s is not there: build it, or set %s", b, env);
    return b;
}

const char *tu_relay_bin(void)
{
    return program("FERRY_RELAY_BIN", "build/asan/ferry-relay");
}

const char *tu_reconcile_bin(void)
{
    return program("FERRY_RECONCILE_BIN", "build/asan/ferry-reconcile");
}

int tu_reconcile(const char *const *args, int timeout_ms, char **out, char **err)
{
    enum { MAX = 60 };
    const char *argv[MAX + 2] = {tu_reconcile_bin()};
    size_t n = 1;
    for (; args[n - 1] != NULL; n++) {
        assert_true(n <= MAX);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    return tu_run(argv, timeout_ms, out, err);
}

void tu_output_free(tu_output *o)
{
    free(o->out);
    free(o->err);
    *o = (tu_output){0};
}

char *tu_slurp(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT)
            fail_msg("could not open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    assert_false(ferror(f));
    fclose(f);
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return buf;
}

char *tu_slurp_expected(const char *case_path, const char *expect_path)
{
    char *text = tu_slurp(expect_path, NULL);
    if (!text || !text[0]) {
        print_error("%s: nothing expected (%s)\n", case_path, expect_path);
        free(text);
        return NULL;
    }
    return text;
}

char *tu_temp_file(const char *text)
{
    char *path = strdup("/tmp/ferry-test-XXXXXX.yaml");
    assert_non_null(path);
    int fd = mkstemps(path, 5);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

void tu_temp_remove(char *path)
{
    unlink(path);
    free(path);
}

void tu_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

FILE *tu_cat_pipe(const char *path, char *name, size_t size)
{
    char *cmd = tu_sprintf("cat %s", path);
    FILE *p = popen(cmd, "r");
    free(cmd);
    assert_non_null(p);
    snprintf(name, size, "/dev/fd/%d", fileno(p));
    return p;
}

/* A session of 3 s, six heartbeats: librdkafka 2.0.2's mock broker waits
 * session.timeout.ms - 1 s for the members of a group to rejoin when one
 * joins, and the whole session before it drops a member killed with
 * SIGKILL. At 6 s, each crash and rebalance test of the consumer and the
 * saga waited about 10 s for that; now about 5. */
const char *const tu_group_props[] = {
    "session.timeout.ms=3000", "heartbeat.interval.ms=500", "max.poll.interval.ms=20000",
    NULL,
};

const char *tu_consumer_db;

ferry_consumer *tu_consumer_new(const char *name, const char *kafka, const char *topic,
                                ferry_handler_fn handler, void *arg,
                                const char *const *kafka_props, int max_attempts)
{
    const char *topics[1] = {topic};
    ferry_consumer_conf conf = {
        .name = name,
        .db = tu_consumer_db ? tu_consumer_db : fpg_conninfo(tu_pg),
        .kafka = kafka,
        .topics = topics,
        .topic_count = 1,
        .handler = handler,
        .handler_arg = arg,
        .kafka_props = kafka_props ? kafka_props : tu_group_props,
        .max_attempts = max_attempts,
        .backoff_base_ms = 5,
        .backoff_max_ms = 50,
        .held_scan_ms = 50,
    };
    ferry_consumer *c = NULL;
    ferry_error err;
    assert_ferry_ok(ferry_consumer_new(&conf, &c, &err), err);
    return c;
}

ferry_code tu_handler_exec(PGconn *conn, const char *sql, int n, const char *const *params,
                           const char *what, ferry_error *err)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ferry_code rc = FERRY_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ferry_error_from_pg(err, conn, res, what);
    PQclear(res);
    return rc;
}

void tu_poll_until(ferry_consumer *c, int (*holds)(ferry_consumer *c, void *arg), void *arg,
                   int poll_ms, const char *what)
{
    int64_t deadline = (int64_t)time(NULL) + 60;
    while (!holds(c, arg)) {
        if ((int64_t)time(NULL) > deadline) {
            ferry_consumer_stats s;
            ferry_consumer_stats_get(c, &s);
            fail_msg("waited 60 s for %s; applied %" PRIu64 " drained %" PRIu64 " dup %" PRIu64
                     " late %" PRIu64 " gap %" PRIu64 " parked %" PRIu64 " dead %" PRIu64,
                     what, s.applied, s.drained, s.duplicates, s.late, s.held_gap,
                     s.held_parked, s.dead_lettered);
        }
        ferry_error err;
        assert_ferry_ok(ferry_consumer_poll(c, poll_ms, &err), err);
    }
}

void tu_consumer_done(ferry_consumer *c)
{
    ferry_error err;
    assert_ferry_ok(ferry_consumer_close(c, &err), err);
    ferry_consumer_destroy(c);
}

pid_t tu_unbatched_pass_start(const char *name)
{
    if (getenv("FERRY_CONSUMER_TEST_BATCH_MAX") != NULL || getenv("FERRY_TEST_ONE_PASS") != NULL)
        return -1;
    /* What is buffered would be written twice. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("FERRY_CONSUMER_TEST_BATCH_MAX", "1", 1);
        execl("/proc/self/exe", name, (char *)NULL);
        _exit(127);
    }
    return pid;
}

int tu_unbatched_pass_wait(pid_t pid, const char *name)
{
    if (pid <= 0)
        return 0;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    fprintf(stderr, "%s: the pass without batches failed (status %d)\n", name, st);
    return 1;
}
