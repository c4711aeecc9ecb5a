/*
 * test_reconcile_metrics.c — `ferry-reconcile run --metrics`: the daemon's
 * /metrics and /healthz as Prometheus would scrape them, against a real
 * throwaway PostgreSQL: passes counted, a repair counted per sweep, and
 * the lease handed from one instance to a standby, seen in each one's
 * ferry_reconcile_active.
 *
 * Every wait polls (the endpoint, the database or the process) up to a
 * deadline; none sleeps blind.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define LEASE_TTL_MS 2000
#define LEASE_TTL "2000"
/* Generous: the daemon is an ASan build, connecting to a fresh cluster. */
#define STARTUP_MS 60000

static const char *const sweeps[] = {"outbox", "sagas", "compensations", "dead_letters",
                                     "garbage", "rules"};
static const char *const outcomes[] = {"found", "repaired", "left", "pending"};

static const char *bin(void)
{
    const char *b = getenv("FERRY_RECONCILE_BIN");
    b = b && b[0] ? b : "build/asan/ferry-reconcile";
    if (access(b, X_OK) != 0)
        fail_msg("%s is not there: build it, or set FERRY_RECONCILE_BIN", b);
    return b;
}

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void tick(void)
{
    struct timespec t = {0, 20 * 1000 * 1000};
    nanosleep(&t, NULL);
}

/* A port nobody listens on now: the kernel's pick for a socket bound to
 * port 0, closed again. The daemon does not say which port it bound, so
 * it must be told one; another process could take it in between, which
 * the daemon would report as "in use" (and the test would show). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ------------------------------------------------------------------ */
/* The daemon                                                           */

typedef struct daemon_proc {
    pid_t pid;
    int status;             /* exit status once collected, else -1 */
    int port;               /* its --metrics port */
    char log[64];           /* its stderr */
} daemon_proc;

static daemon_proc spawn_run(const char *holder)
{
    daemon_proc p = {.status = -1, .port = free_port()};
    snprintf(p.log, sizeof p.log, "/tmp/ferry-rcmetrics-test-XXXXXX");
    int fd = mkstemp(p.log);
    assert_true(fd >= 0);
    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", p.port);
    const char *argv[] = {bin(), "run", "--db", fpg_conninfo(tu_pg), "--interval", "0.2",
                          "--lease-ttl", LEASE_TTL, "--holder", holder, "--metrics", address,
                          NULL};
    p.pid = fork();
    assert_true(p.pid >= 0);
    if (p.pid == 0) {
        /* A failed test must not leave daemons behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, 2);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd);
    return p;
}

static char *read_log(const daemon_proc *p)
{
    FILE *f = fopen(p->log, "r");
    assert_non_null(f);
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    assert_non_null(mem);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    fclose(mem);
    return buf;
}

/* Fail the test, with the daemon's log to say what it did. */
__attribute__((format(printf, 2, 3), noreturn))
static void fail_with_log(const daemon_proc *p, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char *log = read_log(p);
    print_error("--- log of ferry-reconcile %d (port %d):\n%s\n", (int)p->pid, p->port,
                log ? log : "");
    free(log);
    fail_msg("%s", what);
    abort();    /* fail_msg does not return; this tells the compiler */
}

/* Collect the exit status if the daemon has exited; the status or -1. */
static int poll_exit(daemon_proc *p)
{
    int st;
    if (p->status < 0 && waitpid(p->pid, &st, WNOHANG) == p->pid)
        p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return p->status;
}

static int await_exit(daemon_proc *p, int timeout_ms)
{
    for (int64_t end = mono_ms() + timeout_ms; poll_exit(p) < 0 && mono_ms() < end;)
        tick();
    return poll_exit(p);
}

static void await_log(daemon_proc *p, const char *needle, int timeout_ms)
{
    for (int64_t end = mono_ms() + timeout_ms;;) {
        char *log = read_log(p);
        int found = log && strstr(log, needle);
        free(log);
        if (found)
            return;
        if (poll_exit(p) >= 0)
            fail_with_log(p, "ferry-reconcile exited with %d before logging %s", p->status,
                          needle);
        if (mono_ms() >= end)
            fail_with_log(p, "ferry-reconcile did not log %s within %d ms", needle, timeout_ms);
        tick();
    }
}

static void daemon_done(daemon_proc *p)
{
    if (poll_exit(p) < 0) {
        kill(p->pid, SIGKILL);
        await_exit(p, 10000);
    }
    unlink(p->log);
}

/* ------------------------------------------------------------------ */
/* Scraping                                                             */

typedef struct http_reply {
    int status;             /* -1: nobody listening (yet) */
    char *raw;              /* the whole response, NUL-terminated */
    const char *body;       /* into raw */
} http_reply;

/* GET path from 127.0.0.1:port over HTTP/1.0 (the server closes after one
 * response). status -1 when the connection is refused: a daemon that has
 * not started serving yet. Other failures fail the test. */
static http_reply http_get(int port, const char *path)
{
    http_reply rep = {.status = -1};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    /* A server that never answers fails the test instead of hanging it. */
    struct timeval tv = {.tv_sec = 10};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        if (e == ECONNREFUSED)
            return rep;
        fail_msg("connect to port %d: %s", port, strerror(e));
    }
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    size_t n = strlen(req);
    for (size_t off = 0; off < n;) {
        ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            fail_msg("send: %s", strerror(errno));
        off += (size_t)w;
    }
    size_t cap = 8192, got = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (cap - got < 1024) {
            cap *= 2;
            char *p = realloc(buf, cap);
            assert_non_null(p);
            buf = p;
        }
        ssize_t r = recv(fd, buf + got, cap - got - 1, 0);
        if (r < 0) {
            free(buf);
            close(fd);
            fail_msg("recv: %s", strerror(errno));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    rep.raw = buf;
    int minor;
    if (sscanf(buf, "HTTP/1.%d %d ", &minor, &rep.status) != 2)
        fail_msg("not an HTTP response: %.80s", buf);
    const char *sep = strstr(buf, "\r\n\r\n");
    assert_non_null(sep);
    rep.body = sep + 4;
    return rep;
}

/* The value of the sample named exactly `series` (name plus labels) into
 * *v: 0, or -1 when it is missing, repeated or malformed. */
static int find_sample(const char *text, const char *series, double *v)
{
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(text, key);
    if (!p || strstr(p + 1, key))
        return -1;
    p += strlen(key);
    char *end;
    *v = strtod(p, &end);
    return end == p || *end != '\n' ? -1 : 0;
}

static double sample(const daemon_proc *p, const char *text, const char *series)
{
    double v;
    if (find_sample(text, series, &v) != 0)
        fail_with_log(p, "no single well-formed sample %s in:\n%s", series, text);
    return v;
}

/* /metrics of p, once it serves: malloc'd body. */
static char *scrape(daemon_proc *p)
{
    for (int64_t end = mono_ms() + STARTUP_MS;;) {
        http_reply r = http_get(p->port, "/metrics");
        if (r.status == 200) {
            char *body = strdup(r.body);
            assert_non_null(body);
            free(r.raw);
            return body;
        }
        if (r.status != -1)
            fail_with_log(p, "/metrics answered %d:\n%s", r.status, r.body);
        if (poll_exit(p) >= 0)
            fail_with_log(p, "ferry-reconcile exited with %d", p->status);
        if (mono_ms() >= end)
            fail_with_log(p, "nothing listens on port %d after %d ms", p->port, STARTUP_MS);
        tick();
    }
}

/* Scrape until series is at least min (bounded); its value. */
static double await_sample(daemon_proc *p, const char *series, double min, int timeout_ms)
{
    for (int64_t end = mono_ms() + timeout_ms;;) {
        char *text = scrape(p);
        double v;
        int ok = find_sample(text, series, &v) == 0;
        if (ok && v >= min) {
            free(text);
            return v;
        }
        if (mono_ms() >= end)
            fail_with_log(p, "%s did not reach %g within %d ms; last scrape:\n%s", series,
                          min, timeout_ms, text);
        free(text);
        tick();
    }
}

static int healthz(daemon_proc *p)
{
    http_reply r = http_get(p->port, "/healthz");
    int status = r.status;
    if (status == 200 && strcmp(r.body, "ok\n") != 0)
        fail_with_log(p, "/healthz 200 with body \"%s\"", r.body);
    free(r.raw);
    return status;
}

/* ------------------------------------------------------------------ */
/* The test                                                             */

static void run_serves_metrics_and_hands_over(void **state)
{
    PGconn *c = tu_connect();
    daemon_proc a = spawn_run("rcm-first");

    /* Two passes: the loop runs, and the figures follow it. */
    await_sample(&a, "ferry_reconcile_passes_total", 2, STARTUP_MS);
    char *t = scrape(&a);
    assert_true(sample(&a, t, "ferry_reconcile_active") == 1);
    assert_true(sample(&a, t, "ferry_reconcile_errors_total") == 0);
    /* A clean database, repaired: the last pass's status is fsck's 0. */
    assert_true(sample(&a, t, "ferry_reconcile_last_pass_status") == 0);
    assert_true(sample(&a, t, "ferry_reconcile_last_pass_seconds") >= 0);
    assert_true(sample(&a, t, "ferry_reconcile_last_pass_timestamp_seconds") >
                (double)time(NULL) - 600);
    for (size_t s = 0; s < sizeof sweeps / sizeof sweeps[0]; s++) {
        char series[160];
        snprintf(series, sizeof series, "ferry_reconcile_repaired_total{sweep=\"%s\"}",
                 sweeps[s]);
        assert_true(sample(&a, t, series) == 0);
        for (size_t o = 0; o < sizeof outcomes / sizeof outcomes[0]; o++) {
            snprintf(series, sizeof series,
                     "ferry_reconcile_problems{sweep=\"%s\",outcome=\"%s\"}", sweeps[s],
                     outcomes[o]);
            assert_true(sample(&a, t, series) == 0);
        }
    }
    /* Every family has its HELP and TYPE. */
    static const char *const families[] = {
        "ferry_reconcile_active gauge", "ferry_reconcile_passes_total counter",
        "ferry_reconcile_errors_total counter", "ferry_reconcile_repaired_total counter",
        "ferry_reconcile_problems gauge", "ferry_reconcile_last_pass_status gauge",
        "ferry_reconcile_last_pass_seconds gauge",
        "ferry_reconcile_last_pass_timestamp_seconds gauge",
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "# TYPE %s\n", families[i]);
        if (!strstr(t, line))
            fail_with_log(&a, "no \"%.*s\" in:\n%s", (int)strlen(line) - 1, line, t);
    }
    free(t);
    assert_int_equal(healthz(&a), 200);

    /* An inbox row past the 7-day retention: the garbage sweep deletes it
     * and the repair is counted under its sweep. */
    tu_exec(c, "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, applied_at) "
               "VALUES ('rcm', '0190aaaa-0000-7000-8000-000000000001', 't', 'k', 1, "
               "now() - interval '30 days')");
    await_sample(&a, "ferry_reconcile_repaired_total{sweep=\"garbage\"}", 1, 30000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox WHERE consumer = 'rcm'"), 0);
    t = scrape(&a);
    assert_true(sample(&a, t, "ferry_reconcile_repaired_total{sweep=\"outbox\"}") == 0);
    free(t);
    assert_int_equal(healthz(&a), 200);

    /* A second instance stands by while the first holds the lease: it
     * serves, inactive, and runs no pass while the first runs two more. */
    daemon_proc b = spawn_run("rcm-second");
    await_log(&b, "reconcile.standby", STARTUP_MS);
    t = scrape(&a);
    double a_passes = sample(&a, t, "ferry_reconcile_passes_total");
    free(t);
    await_sample(&a, "ferry_reconcile_passes_total", a_passes + 2, 30000);
    t = scrape(&b);
    assert_true(sample(&b, t, "ferry_reconcile_active") == 0);
    assert_true(sample(&b, t, "ferry_reconcile_passes_total") == 0);
    free(t);
    assert_int_equal(healthz(&b), 200);

    /* The first stops (releasing the lease): the second takes over within
     * the lease's time, and its passes begin. */
    assert_int_equal(kill(a.pid, SIGTERM), 0);
    int st = await_exit(&a, 30000);
    if (st != 0)
        fail_with_log(&a, "the first instance exited with %d on SIGTERM, want 0", st);
    int64_t stopped = mono_ms();
    await_sample(&b, "ferry_reconcile_active", 1, LEASE_TTL_MS);
    int64_t took = mono_ms() - stopped;
    await_sample(&b, "ferry_reconcile_passes_total", 2, 30000);
    print_message("standby took over %lld ms after the first instance exited\n",
                  (long long)took);

    assert_int_equal(kill(b.pid, SIGTERM), 0);
    st = await_exit(&b, 30000);
    if (st != 0)
        fail_with_log(&b, "the second instance exited with %d on SIGTERM, want 0", st);
    daemon_done(&a);
    daemon_done(&b);
    PQfinish(c);
}

/* An address it cannot serve on: refused at start, before any database
 * work, with the reason on stderr. */
static void bad_metrics_address_is_refused(void **state)
{
    /* A port in use. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char taken[64];
    snprintf(taken, sizeof taken, "127.0.0.1:%d", ntohs(a.sin_port));

    static const struct { const char *address, *why; } cases[] = {
        {"127.0.0.1:99999", "bad port"},
        {"::1:80", "needs brackets"},
        {NULL, "in use"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *address = cases[i].address ? cases[i].address : taken;
        const char *argv[] = {bin(), "run", "--db", fpg_conninfo(tu_pg), "--metrics",
                              address, NULL};
        char *err = NULL;
        int rc = tu_run(argv, 60000, NULL, &err);
        if (rc != 8 || !strstr(err, "ferry-reconcile: ") || !strstr(err, cases[i].why) ||
            !strstr(err, address))
            fail_msg("--metrics %s: exit %d, stderr:\n%s", address, rc, err);
        free(err);
    }
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(run_serves_metrics_and_hands_over),
        cmocka_unit_test(bad_metrics_address_is_refused),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
