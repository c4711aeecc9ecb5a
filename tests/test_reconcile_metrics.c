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
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_http.h"
#include "tu_proc.h"

#define LEASE_TTL_MS 2000
#define LEASE_TTL "2000"
/* Generous: the daemon is an ASan build, connecting to a fresh cluster. */
#define STARTUP_MS 60000

static const char *const sweeps[] = {"outbox", "sagas", "compensations", "dead_letters",
                                     "garbage", "rules"};
static const char *const outcomes[] = {"found", "repaired", "left", "pending"};

/* ------------------------------------------------------------------ */
/* The daemon                                                           */

typedef struct daemon_proc {
    tu_proc proc;           /* its stderr in proc.log */
    int port;               /* its --metrics port */
} daemon_proc;

/* ferry-reconcile run, a pass every interval seconds. */
static daemon_proc spawn_run_every(const char *holder, const char *interval)
{
    /* Port 0: the kernel picks one, and the daemon must say which. */
    daemon_proc d = {.port = 0};
    const char *argv[] = {tu_reconcile_bin(), "run", "--db", fpg_conninfo(tu_pg),
                          "--interval", interval, "--lease-ttl", LEASE_TTL, "--holder", holder,
                          "--metrics", "127.0.0.1:0", NULL};
    d.proc = tu_proc_start(argv, NULL);
    tu_proc_await_log(&d.proc, "\"event\":\"metrics.listen\"", STARTUP_MS);
    char *log = tu_proc_log(&d.proc);
    const char *at = strstr(log, "\"event\":\"metrics.listen\"");
    const char *port = at ? strstr(at, "\"port\":") : NULL;
    if (port == NULL || (d.port = atoi(port + strlen("\"port\":"))) <= 0)
        tu_proc_fail(&d.proc, "metrics.listen names no port");
    free(log);
    return d;
}

static daemon_proc spawn_run(const char *holder)
{
    return spawn_run_every(holder, "0.2");
}

/* ------------------------------------------------------------------ */
/* Scraping                                                             */

static double sample(const daemon_proc *d, const char *text, const char *series)
{
    double v;
    if (tu_prom_find(text, series, &v) != 0)
        tu_proc_fail(&d->proc, "no single well-formed sample %s in:\n%s", series, text);
    return v;
}

/* /metrics of d, once it serves: malloc'd body. */
static char *scrape(daemon_proc *d)
{
    for (int64_t end = clk_mono_ms() + STARTUP_MS;;) {
        tu_http_reply r = tu_http_get(d->port, "/metrics");
        if (r.status == 200) {
            char *body = strdup(r.body);
            assert_non_null(body);
            free(r.raw);
            return body;
        }
        if (r.status != -1)
            tu_proc_fail(&d->proc, "/metrics answered %d:\n%s", r.status, r.body);
        if (tu_proc_poll(&d->proc) >= 0)
            tu_proc_fail(&d->proc, "ferry-reconcile exited with %d", d->proc.status);
        if (clk_mono_ms() >= end)
            tu_proc_fail(&d->proc, "nothing listens on port %d after %d ms", d->port,
                         STARTUP_MS);
        clk_sleep_ms(20);
    }
}

/* Scrape until series is at least min (bounded); its value. */
static double await_sample(daemon_proc *d, const char *series, double min, int timeout_ms)
{
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        char *text = scrape(d);
        double v;
        int ok = tu_prom_find(text, series, &v) == 0;
        if (ok && v >= min) {
            free(text);
            return v;
        }
        if (clk_mono_ms() >= end)
            tu_proc_fail(&d->proc, "%s did not reach %g within %d ms; last scrape:\n%s", series,
                         min, timeout_ms, text);
        free(text);
        clk_sleep_ms(20);
    }
}

static int healthz(daemon_proc *d)
{
    tu_http_reply r = tu_http_get(d->port, "/healthz");
    int status = r.status;
    if (status == 200 && strcmp(r.body, "ok\n") != 0)
        tu_proc_fail(&d->proc, "/healthz 200 with body \"%s\"", r.body);
    free(r.raw);
    return status;
}

/* /healthz of d: its status, and its body in *body (malloc'd). */
static int healthz_body(daemon_proc *d, char **body)
{
    tu_http_reply r = tu_http_get(d->port, "/healthz");
    *body = strdup(r.body ? r.body : "");
    assert_non_null(*body);
    free(r.raw);
    return r.status;
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
    /* The process's own, as Prometheus' clients export them. */
    assert_true(sample(&a, t, "process_cpu_seconds_total") > 0);
    assert_true(sample(&a, t, "process_resident_memory_bytes") > 1e6);
    assert_true(sample(&a, t, "process_open_fds") >= 3);
    double started = sample(&a, t, "process_start_time_seconds");
    assert_true(started > (double)time(NULL) - 600 && started <= (double)time(NULL) + 1);
    static const char *const process_families[] = {
        "process_cpu_seconds_total counter", "process_resident_memory_bytes gauge",
        "process_virtual_memory_bytes gauge", "process_start_time_seconds gauge",
        "process_open_fds gauge", "process_max_fds gauge",
    };
    for (size_t i = 0; i < sizeof process_families / sizeof process_families[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "# TYPE %s\n", process_families[i]);
        if (!strstr(t, line))
            tu_proc_fail(&a.proc, "no \"%.*s\" in:\n%s", (int)strlen(line) - 1, line, t);
    }
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "# TYPE %s\n", families[i]);
        if (!strstr(t, line))
            tu_proc_fail(&a.proc, "no \"%.*s\" in:\n%s", (int)strlen(line) - 1, line, t);
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
    tu_proc_await_log(&b.proc, "reconcile.standby", STARTUP_MS);
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
    assert_int_equal(kill(a.proc.pid, SIGTERM), 0);
    int st = tu_proc_wait(&a.proc, 30000);
    if (st != 0)
        tu_proc_fail(&a.proc, "the first instance exited with %d on SIGTERM, want 0", st);
    int64_t stopped = clk_mono_ms();
    await_sample(&b, "ferry_reconcile_active", 1, LEASE_TTL_MS);
    int64_t took = clk_mono_ms() - stopped;
    await_sample(&b, "ferry_reconcile_passes_total", 2, 30000);
    print_message("standby took over %lld ms after the first instance exited\n",
                  (long long)took);

    assert_int_equal(kill(b.proc.pid, SIGTERM), 0);
    st = tu_proc_wait(&b.proc, 30000);
    if (st != 0)
        tu_proc_fail(&b.proc, "the second instance exited with %d on SIGTERM, want 0", st);
    tu_proc_done(&a.proc);
    tu_proc_done(&b.proc);
    PQfinish(c);
}

/* Another reconciler takes the lease while this one waits between
 * passes: it notices at its next renewal, says so, and stands by (once,
 * this wrote into the last pass's freed report: ASan stopped it here). */
static void run_that_loses_its_lease_between_passes_stands_by(void **state)
{
    PGconn *c = tu_connect();
    daemon_proc d = spawn_run("rcm-robbed");
    await_sample(&d, "ferry_reconcile_active", 1, STARTUP_MS);
    await_sample(&d, "ferry_reconcile_passes_total", 1, STARTUP_MS);
    tu_exec(c, "UPDATE ferry.lease SET holder = 'rcm-thief', epoch = epoch + 1, "
               "expires_at = now() + interval '1 hour' WHERE name = 'reconciler'");
    tu_proc_await_log(&d.proc, "\"event\":\"reconcile.lease_lost\"", 30000);
    tu_proc_await_log(&d.proc, "rcm-thief", 30000);      /* "standing by: rcm-thief holds" */
    char *t = scrape(&d);
    assert_true(sample(&d, t, "ferry_reconcile_active") == 0);
    free(t);
    assert_int_equal(kill(d.proc.pid, SIGTERM), 0);
    int st = tu_proc_wait(&d.proc, 30000);
    if (st != 0)
        tu_proc_fail(&d.proc, "exited with %d on SIGTERM, want 0", st);
    tu_proc_done(&d.proc);
    tu_exec(c, "UPDATE ferry.lease SET expires_at = now() WHERE name = 'reconciler'");
    PQfinish(c);
}

/*
 * The database goes away between passes (the daemon waits a minute
 * between them, so no pass runs into the outage): /healthz answers 503,
 * naming the database, while it cannot reach it; once it is back and a
 * pass ran, 200 again. Once, no pass ran while the database was away, so
 * the last pass's error count stayed 0 and /healthz said 200 throughout.
 */
static void run_is_unhealthy_while_its_database_is_unreachable(void **state)
{
    if (fpg_external(tu_pg))
        skip();             /* the server cannot be stopped */
    daemon_proc d = spawn_run_every("rcm-cut-off", "60");
    await_sample(&d, "ferry_reconcile_passes_total", 1, STARTUP_MS);
    assert_int_equal(healthz(&d), 200);

    assert_int_equal(fpg_stop(tu_pg, "fast"), 0);
    tu_proc_await_log(&d.proc, "\"event\":\"reconcile.db_lost\"", 30000);
    char *body = NULL;
    int status = healthz_body(&d, &body);
    if (status != 503 || strstr(body, "database") == NULL)
        tu_proc_fail(&d.proc, "/healthz answered %d \"%s\" with the database unreachable, "
                     "want 503 naming the database", status, body);
    free(body);
    char *t = scrape(&d);
    double passes = sample(&d, t, "ferry_reconcile_passes_total");
    assert_true(sample(&d, t, "ferry_reconcile_errors_total") >= 1);
    free(t);

    assert_int_equal(fpg_start_again(tu_pg), 0);
    await_sample(&d, "ferry_reconcile_passes_total", passes + 1, 30000);
    t = scrape(&d);
    assert_true(sample(&d, t, "ferry_reconcile_last_pass_status") == 0);
    free(t);
    assert_int_equal(healthz(&d), 200);

    assert_int_equal(kill(d.proc.pid, SIGTERM), 0);
    int st = tu_proc_wait(&d.proc, 30000);
    if (st != 0)
        tu_proc_fail(&d.proc, "exited with %d on SIGTERM, want 0", st);
    tu_proc_done(&d.proc);
}

/* SIGHUP: run reloads nothing, says so and goes on holding its lease.
 * Once it died of the default action (exit 129, no log line), keeping the
 * lease until its TTL ran out. */
static void run_ignores_sighup_and_says_so(void **state)
{
    daemon_proc d = spawn_run_every("rcm-hangup", "60");
    await_sample(&d, "ferry_reconcile_passes_total", 1, STARTUP_MS);
    assert_int_equal(kill(d.proc.pid, SIGHUP), 0);
    tu_proc_await_log(&d.proc, "\"event\":\"signal.ignored\"", 30000);
    if (tu_proc_poll(&d.proc) >= 0)
        tu_proc_fail(&d.proc, "exited with %d on SIGHUP", d.proc.status);
    char *t = scrape(&d);
    assert_true(sample(&d, t, "ferry_reconcile_active") == 1);
    free(t);
    assert_int_equal(kill(d.proc.pid, SIGTERM), 0);
    int st = tu_proc_wait(&d.proc, 30000);
    if (st != 0)
        tu_proc_fail(&d.proc, "exited with %d on SIGTERM, want 0", st);
    tu_proc_done(&d.proc);
}

/* An address it cannot serve on: refused at start, before any database
 * work, with the reason on stderr. One that is not an address at all is
 * a bad setting, refused when the settings are read (exit 16, the place
 * named: test_rc_config); one in use is run's operational error. */
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

    static const struct { const char *address, *why; int status; } cases[] = {
        {"127.0.0.1:99999", "--metrics: the port must be a number", 16},
        {"::1:80", "--metrics: an IPv6 host needs brackets", 16},
        {NULL, "in use", 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *address = cases[i].address ? cases[i].address : taken;
        const char *args[] = {"run", "--db", fpg_conninfo(tu_pg), "--metrics", address, NULL};
        char *err = NULL;
        int rc = tu_reconcile(args, 60000, NULL, &err);
        if (rc != cases[i].status || !strstr(err, "ferry-reconcile") ||
            !strstr(err, cases[i].why) || !strstr(err, address))
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
        cmocka_unit_test(run_that_loses_its_lease_between_passes_stands_by),
        cmocka_unit_test(run_is_unhealthy_while_its_database_is_unreachable),
        cmocka_unit_test(run_ignores_sighup_and_says_so),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
