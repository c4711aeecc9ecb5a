/*
 * test_metrics.c — the relay's metrics without a database: the Prometheus
 * text, lock-free updates from several threads, and the HTTP endpoints
 * over a real socket with a tiny HTTP/1.0 client.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_http.h"
#include "../daemon/metrics.h"
#include "promtext.h"
#include "httpd.h"

/* ------------------------------------------------------------------ */
/* Reading the exposition                                               */

/* Occurrences of needle in text. */
static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The value of the sample named exactly `series` (name plus labels),
 * failing the test unless it is there exactly once. */
static double sample(const char *text, const char *series)
{
    double v;
    if (tu_prom_find(text, series, &v) != 0)
        fail_msg("no single well-formed sample %s in:\n%s", series, text);
    return v;
}

/* HELP and TYPE exactly once each, and TYPE as expected. */
static void assert_family(const char *text, const char *family, const char *type)
{
    char help[160], typeline[160], anytype[160];
    snprintf(help, sizeof help, "\n# HELP %s ", family);
    snprintf(typeline, sizeof typeline, "\n# TYPE %s %s\n", family, type);
    snprintf(anytype, sizeof anytype, "\n# TYPE %s ", family);
    /* The first line has no newline before it. */
    char *padded = malloc(strlen(text) + 2);
    assert_non_null(padded);
    padded[0] = '\n';
    strcpy(padded + 1, text);
    if (count_of(padded, help) != 1 || count_of(padded, typeline) != 1 ||
        count_of(padded, anytype) != 1) {
        free(padded);
        fail_msg("family %s: want one HELP and one TYPE %s", family, type);
    }
    free(padded);
}

static const char *const bounds[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                     "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                     "1",      "2.5",   "5",      "10",    "+Inf"};
enum { NBOUNDS = sizeof bounds / sizeof bounds[0] };

static double bucket(const char *text, const char *family, const char *le)
{
    char series[160];
    snprintf(series, sizeof series, "%s_bucket{le=\"%s\"}", family, le);
    return sample(text, series);
}

/* ------------------------------------------------------------------ */
/* Rendering                                                            */

static void render_every_family_once(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    char *t = metrics_render(m);
    assert_non_null(t);

    static const struct { const char *family, *type; } families[] = {
        {"ferry_relay_up", "gauge"},
        {"ferry_relay_info", "gauge"},
        {"ferry_relay_published_total", "counter"},
        {"ferry_relay_acknowledged_total", "counter"},
        {"ferry_relay_ack_refused_total", "counter"},
        {"ferry_relay_dead_lettered_total", "counter"},
        {"ferry_relay_failures_total", "counter"},
        {"ferry_relay_leases_acquired_total", "counter"},
        {"ferry_relay_leases_lost_total", "counter"},
        {"ferry_relay_wakeups_total", "counter"},
        {"ferry_relay_leases_held", "gauge"},
        {"ferry_relay_queue_depth", "gauge"},
        {"ferry_relay_stuck_partitions", "gauge"},
        {"ferry_relay_stuck_keys", "gauge"},
        {"ferry_relay_oldest_inflight_seconds", "gauge"},
        {"ferry_relay_inflight_bytes", "gauge"},
        {"ferry_relay_wake_foreign_lock", "gauge"},
        {"ferry_relay_wal_messages_decoded_total", "counter"},
        {"ferry_relay_wal_messages_refused_total", "counter"},
        {"ferry_relay_wal_slot_ok", "gauge"},
        {"ferry_relay_wal_retained_bytes", "gauge"},
        {"ferry_relay_wal_confirmed_lag_bytes", "gauge"},
        {"ferry_relay_wal_confirmed_lag_seconds", "gauge"},
        {"ferry_relay_batch_seconds", "histogram"},
        {"ferry_relay_end_to_end_seconds", "histogram"},
        {"ferry_relay_unpublished_rows", "gauge"},
        {"ferry_relay_oldest_unpublished_seconds", "gauge"},
        {"process_cpu_seconds_total", "counter"},
        {"process_resident_memory_bytes", "gauge"},
        {"process_virtual_memory_bytes", "gauge"},
        {"process_start_time_seconds", "gauge"},
        {"process_open_fds", "gauge"},
        {"process_max_fds", "gauge"},
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        assert_family(t, families[i].family, families[i].type);
    /* Thirty-three families, no more. */
    assert_int_equal(count_of(t, "# HELP "), 33);
    assert_int_equal(count_of(t, "# TYPE "), 33);

    assert_true(sample(t, "ferry_relay_up") == 1);
    char info[128];
    snprintf(info, sizeof info, "ferry_relay_info{version=\"%s\"}", ferry_version());
    assert_true(sample(t, info) == 1);
    /* Everything starts at zero, and every line ends. */
    assert_true(sample(t, "ferry_relay_published_total") == 0);
    assert_true(sample(t, "ferry_relay_failures_total{kind=\"database\"}") == 0);
    assert_true(sample(t, "ferry_relay_queue_depth{queue=\"kafka\"}") == 0);
    assert_true(sample(t, "ferry_relay_batch_seconds_count") == 0);
    /* The process, from /proc/self: this test process's own figures. */
    assert_true(sample(t, "process_cpu_seconds_total") > 0);
    assert_true(sample(t, "process_resident_memory_bytes") > 1e6);
    assert_true(sample(t, "process_virtual_memory_bytes") >= sample(t, "process_resident_memory_bytes"));
    assert_true(sample(t, "process_open_fds") >= 3);
    assert_true(sample(t, "process_max_fds") >= sample(t, "process_open_fds"));
    double started = sample(t, "process_start_time_seconds");
    assert_true(started > (double)time(NULL) - 3600 && started <= (double)time(NULL) + 1);
    assert_int_equal(t[strlen(t) - 1], '\n');
    assert_null(strstr(t, "\n\n"));
    free(t);
    metrics_free(m);
}

static void counters_and_gauges_render_their_values(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    /* Distinct values, so that a counter rendered under the wrong name
     * shows. */
    for (int c = 0; c < M_COUNTER_COUNT; c++)
        metrics_add(m, (metric_counter)c, (uint64_t)(100 + c));
    metrics_add(m, M_PUBLISHED, 5);
    metrics_set(m, G_LEASES_HELD, 7);
    metrics_set(m, G_INFLIGHT, 20000);
    metrics_set(m, G_ACK_PENDING, 3);
    metrics_set(m, G_KAFKA_QUEUE, -1);       /* gauges go down, even below 0 */
    metrics_set(m, G_ACK_PENDING, 4);        /* the last set wins */

    assert_int_equal(metrics_get(m, M_PUBLISHED), 105);
    assert_int_equal(metrics_get(m, M_WAKEUPS_POLL), 100 + M_WAKEUPS_POLL);

    char *t = metrics_render(m);
    assert_non_null(t);
    static const struct { metric_counter c; const char *series; } want[] = {
        {M_PUBLISHED, "ferry_relay_published_total"},
        {M_ACKED, "ferry_relay_acknowledged_total"},
        {M_ACK_REFUSED, "ferry_relay_ack_refused_total"},
        {M_DEAD_LETTERED, "ferry_relay_dead_lettered_total"},
        {M_FAIL_DELIVERY, "ferry_relay_failures_total{kind=\"delivery\"}"},
        {M_FAIL_PRODUCE, "ferry_relay_failures_total{kind=\"produce\"}"},
        {M_FAIL_FATAL, "ferry_relay_failures_total{kind=\"fatal\"}"},
        {M_FAIL_DB, "ferry_relay_failures_total{kind=\"database\"}"},
        {M_LEASES_ACQUIRED, "ferry_relay_leases_acquired_total"},
        {M_LEASES_LOST, "ferry_relay_leases_lost_total"},
        {M_WAKEUPS_NOTIFY, "ferry_relay_wakeups_total{by=\"notify\"}"},
        {M_WAKEUPS_POLL, "ferry_relay_wakeups_total{by=\"poll\"}"},
        {M_WAL_DECODED, "ferry_relay_wal_messages_decoded_total"},
        {M_WAL_REFUSED, "ferry_relay_wal_messages_refused_total"},
    };
    assert_int_equal(sizeof want / sizeof want[0], M_COUNTER_COUNT);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_true(sample(t, want[i].series) == (double)metrics_get(m, want[i].c));
    assert_true(sample(t, "ferry_relay_published_total") == 105);
    assert_true(sample(t, "ferry_relay_leases_held") == 7);
    assert_true(sample(t, "ferry_relay_queue_depth{queue=\"inflight\"}") == 20000);
    assert_true(sample(t, "ferry_relay_queue_depth{queue=\"ack\"}") == 4);
    assert_true(sample(t, "ferry_relay_queue_depth{queue=\"kafka\"}") == -1);
    free(t);
    metrics_free(m);
}

static void histogram_buckets_are_cumulative(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    metrics_observe(m, H_BATCH_SECONDS, 0.0001);  /* le 0.0005 */
    metrics_observe(m, H_BATCH_SECONDS, 0.001);   /* le 0.001: bounds are inclusive */
    metrics_observe(m, H_BATCH_SECONDS, 0.003);   /* le 0.005 */
    metrics_observe(m, H_BATCH_SECONDS, 0.3);     /* le 0.5 */
    metrics_observe(m, H_BATCH_SECONDS, 0.3);
    metrics_observe(m, H_BATCH_SECONDS, 7);       /* le 10 */
    metrics_observe(m, H_BATCH_SECONDS, 60);      /* +Inf only */
    metrics_observe(m, H_BATCH_SECONDS, NAN);     /* dropped */
    metrics_observe(m, H_BATCH_SECONDS, INFINITY);/* dropped */
    metrics_observe(m, H_E2E_SECONDS, -0.5);      /* clock skew: counted as 0 */
    metrics_observe(m, H_E2E_SECONDS, 2);

    char *t = metrics_render(m);
    assert_non_null(t);
    const char *f = "ferry_relay_batch_seconds";
    static const double want[NBOUNDS] = {1, 2, 2, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 6, 7};
    double prev = 0;
    for (int i = 0; i < NBOUNDS; i++) {
        double v = bucket(t, f, bounds[i]);
        if (v != want[i])
            fail_msg("%s le=%s: %g, want %g", f, bounds[i], v, want[i]);
        assert_true(v >= prev);
        prev = v;
    }
    assert_true(sample(t, "ferry_relay_batch_seconds_count") == 7);
    double sum = sample(t, "ferry_relay_batch_seconds_sum");
    assert_true(fabs(sum - (0.0001 + 0.001 + 0.003 + 0.3 + 0.3 + 7 + 60)) < 1e-9);
    /* Buckets in ascending order of le. */
    assert_true(strstr(t, "ferry_relay_batch_seconds_bucket{le=\"0.0005\"}") <
                strstr(t, "ferry_relay_batch_seconds_bucket{le=\"10\"}"));
    assert_true(strstr(t, "ferry_relay_batch_seconds_bucket{le=\"10\"}") <
                strstr(t, "ferry_relay_batch_seconds_bucket{le=\"+Inf\"}"));

    const char *e = "ferry_relay_end_to_end_seconds";
    assert_true(bucket(t, e, "0.0005") == 1);
    assert_true(bucket(t, e, "1") == 1);
    assert_true(bucket(t, e, "2.5") == 2);
    assert_true(bucket(t, e, "+Inf") == 2);
    assert_true(sample(t, "ferry_relay_end_to_end_seconds_count") == 2);
    assert_true(sample(t, "ferry_relay_end_to_end_seconds_sum") == 2);
    free(t);
    metrics_free(m);
}

static void shard_gauges_only_when_set(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    char *t = metrics_render(m);
    assert_non_null(t);
    assert_null(strstr(t, "ferry_relay_unpublished_rows{"));
    assert_null(strstr(t, "ferry_relay_oldest_unpublished_seconds{"));
    free(t);

    metrics_set_shard(m, 0, 12, 1.5);
    metrics_set_shard(m, 17, 0, 0);
    metrics_set_shard(m, METRICS_SHARDS_MAX - 1, 3, 0.25);
    metrics_set_shard(m, 17, 40, 9.75);               /* the last set wins */
    metrics_set_shard(m, -1, 1, 1);                   /* out of range: skipped */
    metrics_set_shard(m, METRICS_SHARDS_MAX, 1, 1);
    t = metrics_render(m);
    assert_non_null(t);
    assert_true(sample(t, "ferry_relay_unpublished_rows{shard=\"0\"}") == 12);
    assert_true(sample(t, "ferry_relay_oldest_unpublished_seconds{shard=\"0\"}") == 1.5);
    assert_true(sample(t, "ferry_relay_unpublished_rows{shard=\"17\"}") == 40);
    assert_true(sample(t, "ferry_relay_oldest_unpublished_seconds{shard=\"17\"}") == 9.75);
    assert_true(sample(t, "ferry_relay_unpublished_rows{shard=\"4095\"}") == 3);
    assert_true(sample(t, "ferry_relay_oldest_unpublished_seconds{shard=\"4095\"}") == 0.25);
    assert_int_equal(count_of(t, "ferry_relay_unpublished_rows{"), 3);
    assert_int_equal(count_of(t, "ferry_relay_oldest_unpublished_seconds{"), 3);
    assert_null(strstr(t, "shard=\"-1\""));
    assert_null(strstr(t, "shard=\"4096\""));
    free(t);

    metrics_shards_reset(m);
    t = metrics_render(m);
    assert_non_null(t);
    assert_null(strstr(t, "ferry_relay_unpublished_rows{"));
    assert_null(strstr(t, "ferry_relay_oldest_unpublished_seconds{"));
    free(t);

    /* Set again after the reset: back, with the new value only. */
    metrics_set_shard(m, 17, 1, 2);
    t = metrics_render(m);
    assert_non_null(t);
    assert_int_equal(count_of(t, "ferry_relay_unpublished_rows{"), 1);
    assert_true(sample(t, "ferry_relay_unpublished_rows{shard=\"17\"}") == 1);
    free(t);
    metrics_free(m);
}

/* ------------------------------------------------------------------ */
/* Concurrency                                                          */

enum { THREADS = 4, PER_THREAD = 100000 };

static void *hammer(void *arg)
{
    relay_metrics *m = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_add(m, M_PUBLISHED, 1);
        metrics_add(m, M_WAKEUPS_NOTIFY, 2);
        /* 0.5 and 0.25 are exact in binary: the sum must be exact too. */
        metrics_observe(m, H_E2E_SECONDS, (i & 1) ? 0.5 : 0.25);
        metrics_set_shard(m, i % 64, i, 1.0);
    }
    return NULL;
}

static void *scrape(void *arg)
{
    relay_metrics *m = arg;
    /* No cmocka assertion here: cmocka fails only on the test's thread.
     * While the writers run, every snapshot must stay well-formed: the
     * +Inf bucket and _count agree, and nothing goes backwards. */
    double last = 0;
    for (int i = 0; i < 50; i++) {
        char *t = metrics_render(m);
        if (!t)
            return "render failed";
        double inf, count, published;
        int bad = tu_prom_find(t, "ferry_relay_end_to_end_seconds_bucket{le=\"+Inf\"}", &inf) ||
                  tu_prom_find(t, "ferry_relay_end_to_end_seconds_count", &count) ||
                  tu_prom_find(t, "ferry_relay_published_total", &published);
        free(t);
        if (bad)
            return "a sample is missing or malformed";
        if (inf != count)
            return "+Inf bucket and _count differ";
        if (published < last)
            return "a counter went backwards";
        last = published;
    }
    return NULL;
}

static void concurrent_updates_are_exact(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    pthread_t th[THREADS], reader;
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, m), 0);
    assert_int_equal(pthread_create(&reader, NULL, scrape, m), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    void *why = NULL;
    assert_int_equal(pthread_join(reader, &why), 0);
    if (why)
        fail_msg("scrape during updates: %s", (const char *)why);

    assert_int_equal(metrics_get(m, M_PUBLISHED), THREADS * PER_THREAD);
    assert_int_equal(metrics_get(m, M_WAKEUPS_NOTIFY), 2 * THREADS * PER_THREAD);
    char *t = metrics_render(m);
    assert_non_null(t);
    assert_true(sample(t, "ferry_relay_end_to_end_seconds_count") == THREADS * PER_THREAD);
    assert_true(bucket(t, "ferry_relay_end_to_end_seconds", "0.25") ==
                THREADS * PER_THREAD / 2);
    assert_true(bucket(t, "ferry_relay_end_to_end_seconds", "0.5") == THREADS * PER_THREAD);
    assert_true(sample(t, "ferry_relay_end_to_end_seconds_sum") ==
                THREADS * (PER_THREAD / 2) * 0.75);
    assert_int_equal(count_of(t, "ferry_relay_unpublished_rows{"), 64);
    free(t);
    metrics_free(m);
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                 */

/* The value of header name (case-insensitive) in raw headers, copied. */
static void header(const tu_http_reply *r, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = strstr(r->raw, "\r\n"); p && p + 2 < r->body; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ')
                v++;
            size_t len = strcspn(v, "\r");
            snprintf(out, size, "%.*s", (int)len, v);
            return;
        }
    }
}

/* Serve m's endpoint at address, which must work: the port it took. */
static int serve_at(relay_metrics *m, const char *address)
{
    char err[256] = "";
    int port = -1;
    if (metrics_serve(m, address, &port, err, sizeof err) != 0)
        fail_msg("metrics_serve %s: %s", address, err);
    assert_true(port > 0 && port < 65536);
    return port;
}

static void serve_metrics_and_health(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    int port = serve_at(m, "127.0.0.1:0");

    metrics_add(m, M_ACKED, 42);
    metrics_observe(m, H_BATCH_SECONDS, 0.02);
    tu_http_reply r = tu_http_get(port, "/metrics");
    assert_int_equal(r.status, 200);
    char ctype[128];
    header(&r, "Content-Type", ctype, sizeof ctype);
    assert_string_equal(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert_true(sample(r.body, "ferry_relay_acknowledged_total") == 42);
    assert_true(sample(r.body, "ferry_relay_batch_seconds_count") == 1);
    assert_true(sample(r.body, "ferry_relay_up") == 1);
    free(r.raw);

    /* Query strings are not part of the path. */
    tu_http_expect(port, "/metrics?name[]=x", 200, NULL);

    tu_http_expect(port, "/healthz", 200, "ok\n");

    metrics_set_health(m, 0, "database unreachable");
    tu_http_expect(port, "/healthz", 503, "database unreachable\n");

    /* A reason longer than the buffer is cut, not overrun. */
    char longer[2000];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    metrics_set_health(m, 0, longer);
    r = tu_http_get(port, "/healthz");
    assert_int_equal(r.status, 503);
    assert_true(strlen(r.body) > 100 && strlen(r.body) < sizeof longer);
    free(r.raw);

    metrics_set_health(m, 1, NULL);
    tu_http_expect(port, "/healthz", 200, "ok\n");

    tu_http_expect(port, "/nope", 404, NULL);
    tu_http_expect(port, "/", 404, NULL);

    r = tu_http_raw(AF_INET, "127.0.0.1", port,
                    "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
    assert_int_equal(r.status, 405);
    char allow[64];
    header(&r, "Allow", allow, sizeof allow);
    assert_string_equal(allow, "GET, HEAD");
    free(r.raw);
    r = tu_http_raw(AF_INET, "127.0.0.1", port, "DELETE /healthz HTTP/1.0\r\n\r\n");
    assert_int_equal(r.status, 405);
    free(r.raw);

    /* HEAD: the headers of GET, no body. */
    r = tu_http_raw(AF_INET, "127.0.0.1", port, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    free(r.raw);

    /* One server per handle. */
    char err2[256] = "";
    int port2 = -1;
    assert_int_equal(metrics_serve(m, "127.0.0.1:0", &port2, err2, sizeof err2), -1);
    assert_int_equal(port2, -1);
    assert_non_null(strstr(err2, "already"));

    metrics_free(m);       /* stops the server */
}

static char *fixed_metrics(void *arg)
{
    return strdup("x 1\n");
}

/* A connection to 127.0.0.1:port from source address src ("127.0.0.2"):
 * its socket, or -1. */
static int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in from = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &from.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    to.sin_port = htons((uint16_t)port);
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/*
 * Connections from one address that send a header line now and then are
 * never idle long enough to time out. Seventy of them from 127.0.0.1, the
 * server has taken what it takes of them, and /healthz asked from
 * 127.0.0.2 is answered while they are open. Before: 64 of them held
 * every slot, and the probe was answered only when they went (an outside
 * audit; a liveness probe would have restarted the relay).
 */
static void slow_connections_from_one_address_leave_room_for_others(void **state)
{
    int port = -1;
    char err[256] = "";
    httpd *h = httpd_start("127.0.0.1:0", fixed_metrics, NULL, NULL, &port, err, sizeof err);
    if (h == NULL)
        fail_msg("%s", err);
    enum { SLOW = 70 };
    int fds[SLOW];
    static const char partial[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < SLOW; i++) {
        fds[i] = connect_from("127.0.0.1", port);
        assert_true(fds[i] >= 0);
        assert_int_equal(send(fds[i], partial, sizeof partial - 1, MSG_NOSIGNAL),
                         (ssize_t)(sizeof partial - 1));
    }
    /* The server has taken at least 8 of them (64 before). */
    for (int waited = 0; httpd_connections(h) < 8; waited++) {
        if (waited > 10000)
            fail_msg("the server took %d connections in 10 s", httpd_connections(h));
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);     /* polling the server */
    }
    int probe = connect_from("127.0.0.2", port);
    assert_true(probe >= 0);
    static const char get[] = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_int_equal(send(probe, get, sizeof get - 1, MSG_NOSIGNAL), (ssize_t)(sizeof get - 1));
    char reply[256] = "";
    ssize_t got = recv(probe, reply, sizeof reply - 1, MSG_WAITALL);
    if (got <= 0 || strstr(reply, " 200 ") == NULL)
        fail_msg("the probe from another address got %zd bytes: %s", got, reply);
    /* Answered while the first slow connection is still open: not once
     * the server had timed them out (it does after 10 s idle, and a client
     * that sends a byte now and then is never idle). */
    char byte;
    ssize_t open = recv(fds[0], &byte, 1, MSG_DONTWAIT);
    if (open >= 0)
        fail_msg("the first slow connection was closed: the probe was answered only once the "
                 "server had timed the slow ones out");
    close(probe);
    for (int i = 0; i < SLOW; i++)
        close(fds[i]);
    httpd_stop(h);
}

static void serve_all_interfaces_and_ipv6(void **state)
{
    static const char *const any[] = {"*:0", ":0"};
    for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) {
        relay_metrics *m = metrics_new();
        assert_non_null(m);
        /* 127.0.0.1 is one of all. */
        tu_http_expect(serve_at(m, any[i]), "/healthz", 200, NULL);
        metrics_free(m);
    }

    /* IPv6 only where the kernel has ::1. */
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof a) == 0;
    if (probe >= 0)
        close(probe);
    if (!have_v6) {
        print_message("no IPv6 loopback here: [::1] not tested\n");
        return;
    }
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    int port = serve_at(m, "[::1]:0");
    tu_http_reply r = tu_http_raw(AF_INET6, "::1", port, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    free(r.raw);
    metrics_free(m);
}

static void bad_addresses_are_refused(void **state)
{
    static const char *const bad[] = {
        "",                 /* nothing */
        "127.0.0.1",        /* no port */
        "127.0.0.1:",       /* empty port */
        "127.0.0.1:65536",  /* too big */
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:80x",
        "127.0.0.1:0x50",
        "::1:80",           /* IPv6 without brackets */
        "[::1]",            /* no port */
        "[::1:80",          /* no closing bracket */
        "[]:80",
        "[127.0.0.1]:80",   /* brackets are for IPv6 */
        "[::zz]:80",
    };
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        int port = -7;
        if (metrics_serve(m, bad[i], &port, err, sizeof err) != -1)
            fail_msg("address \"%s\" was accepted", bad[i]);
        assert_int_equal(port, -7);                     /* untouched */
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i]);
        if (!strstr(err, quoted))
            fail_msg("error for \"%s\" does not name it: %s", bad[i], err);
    }
    /* NULL, and no errbuf at all, are refused without a crash. */
    assert_int_equal(metrics_serve(m, NULL, NULL, NULL, 0), -1);
    assert_int_equal(metrics_serve(m, "nonsense", NULL, NULL, 0), -1);

    /* Refusals left nothing half-done: the same handle still serves. */
    tu_http_expect(serve_at(m, "127.0.0.1:0"), "/healthz", 200, NULL);
    metrics_free(m);
}

static void port_in_use_is_refused(void **state)
{
    relay_metrics *first = metrics_new(), *second = metrics_new();
    assert_non_null(first);
    assert_non_null(second);
    int port = serve_at(first, "127.0.0.1:0");
    char err[256] = "";

    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    int port2 = -7;
    assert_int_equal(metrics_serve(second, address, &port2, err, sizeof err), -1);
    assert_int_equal(port2, -7);
    char quoted[80];
    snprintf(quoted, sizeof quoted, "\"%s\"", address);
    if (!strstr(err, quoted))
        fail_msg("error does not name %s: %s", address, err);
    if (!strstr(err, "in use"))
        fail_msg("error does not say why: %s", err);

    /* The first server is unharmed. */
    tu_http_expect(port, "/healthz", 200, NULL);
    metrics_free(second);
    metrics_free(first);
}

static void free_accepts_null(void **state)
{
    metrics_free(NULL);
    /* And a handle that never served. */
    metrics_free(metrics_new());
}

/* ------------------------------------------------------------------ */
/* librdkafka's statistics                                              */

/* A document as librdkafka sends it, cut to what is read: an internal
 * broker (nodeid -1, left out) and a real one whose name needs escaping. */
static const char stats_doc[] =
    "{\"name\":\"rdkafka#producer-1\",\"msg_cnt\":7,\"msg_size\":700,\"txmsgs\":50,"
    "\"tx_bytes\":12345,\"brokers\":{"
    "\":0/internal\":{\"name\":\":0/internal\",\"nodeid\":-1,\"state\":\"UP\"},"
    "\"b\\\"1:9092/1\":{\"nodeid\":1,\"state\":\"UP\",\"outbuf_cnt\":2,\"waitresp_cnt\":3,"
    "\"tx\":10,\"txerrs\":1,\"txretries\":4,\"req_timeouts\":5,\"rxerrs\":6,\"connects\":2,"
    "\"disconnects\":1,\"rtt\":{\"avg\":1500,\"p99\":9000},\"int_latency\":{\"avg\":250}},"
    "\"idle:9092/2\":{\"nodeid\":2,\"state\":\"INIT\",\"connects\":0},"
    "\"gone:9092/3\":{\"nodeid\":3,\"state\":\"CONNECT\",\"connects\":1}}}";

static void kafka_statistics_become_families(void **state)
{
    relay_metrics *m = metrics_new();
    assert_non_null(m);
    char *before = metrics_render(m);
    assert_null(strstr(before, "ferry_kafka_"));        /* nothing until a document */
    free(before);

    assert_int_equal(metrics_kafka_stats(m, stats_doc, strlen(stats_doc)), 0);
    char *text = metrics_render(m);
    assert_non_null(text);
    assert_family(text, "ferry_kafka_broker_up", "gauge");
    assert_family(text, "ferry_kafka_broker_rtt_seconds", "gauge");
    assert_family(text, "ferry_kafka_broker_timeouts_total", "counter");
    assert_family(text, "ferry_kafka_stats_updates_total", "counter");
    const char *b = "{broker=\"b\\\"1:9092/1\"}";
    char series[128];
    static const struct {
        const char *family;
        double want;
    } want[] = {
        {"ferry_kafka_broker_up", 1}, {"ferry_kafka_broker_rtt_seconds", 0.0015},
        {"ferry_kafka_broker_rtt_p99_seconds", 0.009},
        {"ferry_kafka_broker_internal_latency_seconds", 0.00025},
        {"ferry_kafka_broker_outbuf_requests", 2}, {"ferry_kafka_broker_waitresp_requests", 3},
        {"ferry_kafka_broker_requests_total", 10}, {"ferry_kafka_broker_tx_errors_total", 1},
        {"ferry_kafka_broker_retries_total", 4}, {"ferry_kafka_broker_timeouts_total", 5},
        {"ferry_kafka_broker_rx_errors_total", 6}, {"ferry_kafka_broker_connects_total", 2},
        {"ferry_kafka_broker_disconnects_total", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(series, sizeof series, "%s%s", want[i].family, b);
        assert_true(fabs(sample(text, series) - want[i].want) < 1e-12);
    }
    assert_true(sample(text, "ferry_kafka_producer_queue_messages") == 7);
    assert_true(sample(text, "ferry_kafka_producer_queue_bytes") == 700);
    assert_true(sample(text, "ferry_kafka_sent_messages_total") == 50);
    assert_true(sample(text, "ferry_kafka_stats_updates_total") == 1);
    assert_null(strstr(text, ":0/internal"));
    /* A broker not tried yet (sparse connections) is not down: no series.
     * One being connected to is not up. */
    assert_null(strstr(text, "ferry_kafka_broker_up{broker=\"idle:9092/2\"}"));
    assert_true(sample(text, "ferry_kafka_broker_up{broker=\"gone:9092/3\"}") == 0);
    free(text);

    /* Not a document: refused, and the last one stays. */
    assert_int_equal(metrics_kafka_stats(m, "[1]", 3), -1);
    assert_int_equal(metrics_kafka_stats(m, "{\"msg_cnt\":", 11), -1);
    text = metrics_render(m);
    assert_true(sample(text, "ferry_kafka_producer_queue_messages") == 7);
    free(text);
    /* A second one replaces the first. */
    assert_int_equal(metrics_kafka_stats(m, "{\"msg_cnt\":1}", 13), 0);
    text = metrics_render(m);
    assert_true(sample(text, "ferry_kafka_producer_queue_messages") == 1);
    assert_true(sample(text, "ferry_kafka_stats_updates_total") == 2);
    assert_null(strstr(text, "ferry_kafka_broker_up{"));
    free(text);
    metrics_free(m);
}

/* The one escaping every exporter uses (common/promtext.c): a broker name
 * or a version from outside cannot end the quoted value or the line. */
static void a_label_value_escapes_quotes_backslashes_and_newlines_and_drops_controls(void **state)
{
    (void)state;
    strbuf b = {0};
    promtext_label_value(&b, "a\\b\"c\nd\te\x01" "f");
    assert_false(b.failed);
    assert_string_equal(b.p, "a\\\\b\\\"c\\nd" "ef");
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_label_value_escapes_quotes_backslashes_and_newlines_and_drops_controls),
        cmocka_unit_test(render_every_family_once),
        cmocka_unit_test(counters_and_gauges_render_their_values),
        cmocka_unit_test(histogram_buckets_are_cumulative),
        cmocka_unit_test(shard_gauges_only_when_set),
        cmocka_unit_test(concurrent_updates_are_exact),
        cmocka_unit_test(serve_metrics_and_health),
        cmocka_unit_test(slow_connections_from_one_address_leave_room_for_others),
        cmocka_unit_test(serve_all_interfaces_and_ipv6),
        cmocka_unit_test(bad_addresses_are_refused),
        cmocka_unit_test(port_in_use_is_refused),
        cmocka_unit_test(free_accepts_null),
        cmocka_unit_test(kafka_statistics_become_families),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
