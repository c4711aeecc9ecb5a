/*
 * metrics.c — the relay's Prometheus metrics and its /metrics and /healthz
 * endpoints.
 *
 * Who touches what:
 *   - The relay's threads update counters, gauges, histograms and shard
 *     gauges. Every update is one or a few relaxed atomic operations on
 *     memory allocated by metrics_new(): no lock, no allocation, no
 *     system call, so a slow scrape can never stall the hot path.
 *   - libmicrohttpd's internal thread renders a snapshot per request. The
 *     snapshot is not taken atomically across metrics (Prometheus does not
 *     need that); within one histogram, _count is derived from the buckets
 *     so that it always equals the +Inf bucket.
 *   - The health state and its reason are the only data behind a mutex:
 *     set rarely, read once per /healthz request.
 */
/* metrics.h uses size_t without including <stddef.h>; until it does,
 * include it first. */
#include <stddef.h>

#include "metrics.h"

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "ferry.h"

/* Updates must never fall back to a lock inside the atomics library. */
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free");
_Static_assert(sizeof(double) == sizeof(uint64_t), "a double's bits fit a uint64_t");

/* ------------------------------------------------------------------ */
/* What is rendered: one descriptor per enum value                      */

/* Samples of one family are rendered together, so the enum values that
 * share a family must be contiguous in metrics.h (they are); HELP and TYPE
 * are written when the family changes from one value to the next. */
typedef struct metric_desc {
    const char *family;
    const char *labels;     /* e.g. kind="delivery", or NULL */
    const char *help;
} metric_desc;

static const metric_desc counter_desc[] = {
    [M_PUBLISHED] = {"ferry_relay_published_total", NULL,
                     "Messages Kafka confirmed delivered (delivery report)."},
    [M_ACKED] = {"ferry_relay_acknowledged_total", NULL,
                 "Delivered messages acknowledged in the outbox."},
    [M_ACK_REFUSED] = {"ferry_relay_ack_refused_total", NULL,
                       "Acknowledgements refused because the shard's lease was lost."},
    [M_DEAD_LETTERED] = {"ferry_relay_dead_lettered_total", NULL,
                         "Messages moved to the dead letters."},
#define FAILURES_HELP                                                              \
    "Failures by kind: delivery (failed delivery report), produce (refused "       \
    "before sending), fatal (producer rebuilt), database."
    [M_FAIL_DELIVERY] = {"ferry_relay_failures_total", "kind=\"delivery\"", FAILURES_HELP},
    [M_FAIL_PRODUCE] = {"ferry_relay_failures_total", "kind=\"produce\"", FAILURES_HELP},
    [M_FAIL_FATAL] = {"ferry_relay_failures_total", "kind=\"fatal\"", FAILURES_HELP},
    [M_FAIL_DB] = {"ferry_relay_failures_total", "kind=\"database\"", FAILURES_HELP},
#undef FAILURES_HELP
    [M_LEASES_ACQUIRED] = {"ferry_relay_leases_acquired_total", NULL,
                           "Shard leases acquired."},
    [M_LEASES_LOST] = {"ferry_relay_leases_lost_total", NULL,
                       "Shard leases lost (expired or taken over)."},
#define WAKEUPS_HELP "Relay loop wakeups, by LISTEN/NOTIFY or by the backstop poll."
    [M_WAKEUPS_NOTIFY] = {"ferry_relay_wakeups_total", "by=\"notify\"", WAKEUPS_HELP},
    [M_WAKEUPS_POLL] = {"ferry_relay_wakeups_total", "by=\"poll\"", WAKEUPS_HELP},
#undef WAKEUPS_HELP
};
/* A value added to the enum without a descriptor shortens this table. */
_Static_assert(sizeof counter_desc / sizeof counter_desc[0] == M_COUNTER_COUNT,
               "one descriptor per metric_counter");

static const metric_desc gauge_desc[] = {
    [G_LEASES_HELD] = {"ferry_relay_leases_held", NULL, "Shard leases this relay holds."},
#define QUEUE_HELP                                                                 \
    "Messages queued: inflight (produced, not yet acknowledged), ack "             \
    "(delivered, acknowledgement pending), kafka (librdkafka's out queue)."
    [G_INFLIGHT] = {"ferry_relay_queue_depth", "queue=\"inflight\"", QUEUE_HELP},
    [G_ACK_PENDING] = {"ferry_relay_queue_depth", "queue=\"ack\"", QUEUE_HELP},
    [G_KAFKA_QUEUE] = {"ferry_relay_queue_depth", "queue=\"kafka\"", QUEUE_HELP},
#undef QUEUE_HELP
};
_Static_assert(sizeof gauge_desc / sizeof gauge_desc[0] == G_GAUGE_COUNT,
               "one descriptor per metric_gauge");

static const metric_desc histogram_desc[] = {
    [H_BATCH_SECONDS] = {"ferry_relay_batch_seconds", NULL,
                         "Time from fetching a batch to acknowledging its last message."},
    [H_E2E_SECONDS] = {"ferry_relay_end_to_end_seconds", NULL,
                       "Time from a message's created_at to its delivery report."},
};
_Static_assert(sizeof histogram_desc / sizeof histogram_desc[0] == H_HISTOGRAM_COUNT,
               "one descriptor per metric_histogram");

/* Upper bounds in seconds, ascending; the +Inf bucket comes after them. */
static const double bucket_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define BUCKETS ((int)(sizeof bucket_bounds / sizeof bucket_bounds[0]))

/* ------------------------------------------------------------------ */
/* State                                                                */

typedef struct histogram {
    /* Per bucket, not cumulative: buckets[i] counts observations in
     * (bound[i-1], bound[i]]; buckets[BUCKETS] those above the last bound.
     * Rendering accumulates them. */
    _Atomic uint64_t buckets[BUCKETS + 1];
    _Atomic uint64_t sum_bits;              /* a double, updated by CAS */
} histogram;

typedef struct shard_gauges {
    _Atomic int64_t unpublished;
    _Atomic uint64_t oldest_bits;           /* a double */
    atomic_bool set;                        /* written last, read first */
} shard_gauges;

#define HEALTH_REASON_SIZE 256
#define START_ERROR_SIZE 256

struct relay_metrics {
    /* Zeroed by calloc: with lock-free atomics (asserted above) all-zero
     * bytes are the value 0, so no atomic_init is needed. */
    _Atomic uint64_t counters[M_COUNTER_COUNT];
    _Atomic int64_t gauges[G_GAUGE_COUNT];
    histogram histograms[H_HISTOGRAM_COUNT];
    shard_gauges shards[METRICS_SHARDS_MAX];

    struct MHD_Daemon *daemon;              /* NULL until metrics_serve */

    pthread_mutex_t lock;                   /* guards everything below */
    int healthy;
    char reason[HEALTH_REASON_SIZE];
    /* While metrics_serve starts the daemon, libmicrohttpd's log lines go
     * here, so that a failure can say why (the bind error). */
    int capture_log;
    char start_error[START_ERROR_SIZE];
};

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

relay_metrics *metrics_new(void)
{
    relay_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    /* A relay that has not said otherwise is healthy: it is running. */
    m->healthy = 1;
    return m;
}

void metrics_free(relay_metrics *m)
{
    if (!m)
        return;
    /* Joins the HTTP thread: no request can read m after this. */
    if (m->daemon)
        MHD_stop_daemon(m->daemon);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ------------------------------------------------------------------ */
/* Updates: lock-free, allocation-free                                  */

void metrics_add(relay_metrics *m, metric_counter c, uint64_t n)
{
    assert(m && (unsigned)c < M_COUNTER_COUNT);
    atomic_fetch_add_explicit(&m->counters[c], n, memory_order_relaxed);
}

void metrics_set(relay_metrics *m, metric_gauge g, int64_t v)
{
    assert(m && (unsigned)g < G_GAUGE_COUNT);
    atomic_store_explicit(&m->gauges[g], v, memory_order_relaxed);
}

void metrics_observe(relay_metrics *m, metric_histogram h, double seconds)
{
    assert(m && (unsigned)h < H_HISTOGRAM_COUNT);
    /* A NaN or infinity would poison _sum for the life of the process. */
    if (!isfinite(seconds))
        return;
    /* end_to_end compares the database's clock with ours: a little skew
     * can make it negative, which a histogram of durations cannot hold. */
    if (seconds < 0)
        seconds = 0;
    histogram *hg = &m->histograms[h];
    int i = 0;
    while (i < BUCKETS && seconds > bucket_bounds[i])     /* le is inclusive */
        i++;
    atomic_fetch_add_explicit(&hg->buckets[i], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&hg->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&hg->sum_bits, &old,
                                                  double_bits(bits_double(old) + seconds),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void metrics_shards_reset(relay_metrics *m)
{
    assert(m);
    for (int i = 0; i < METRICS_SHARDS_MAX; i++)
        atomic_store_explicit(&m->shards[i].set, false, memory_order_relaxed);
}

void metrics_set_shard(relay_metrics *m, int shard, int64_t unpublished, double oldest_seconds)
{
    assert(m);
    /* Shard numbers come from the outbox's rows, not from validated
     * configuration: one out of range is data to skip, not a bug. */
    if (shard < 0 || shard >= METRICS_SHARDS_MAX)
        return;
    shard_gauges *s = &m->shards[shard];
    atomic_store_explicit(&s->unpublished, unpublished, memory_order_relaxed);
    atomic_store_explicit(&s->oldest_bits, double_bits(oldest_seconds), memory_order_relaxed);
    /* Release: a renderer that sees the flag sees the values above. */
    atomic_store_explicit(&s->set, true, memory_order_release);
}

void metrics_set_health(relay_metrics *m, int healthy, const char *reason)
{
    assert(m);
    pthread_mutex_lock(&m->lock);
    m->healthy = healthy != 0;
    snprintf(m->reason, sizeof m->reason, "%s", reason ? reason : "");
    pthread_mutex_unlock(&m->lock);
}

uint64_t metrics_get(const relay_metrics *m, metric_counter c)
{
    assert(m && (unsigned)c < M_COUNTER_COUNT);
    /* C11 declares atomic_load with a pointer to non-const (C17 fixed
     * that); the cast drops only the const. */
    return atomic_load_explicit((_Atomic uint64_t *)&m->counters[c], memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* Rendering                                                            */

/* A growable string. The first failed allocation sets failed and every
 * later append is a no-op, so callers check once at the end. */
typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

__attribute__((format(printf, 2, 3)))
static void sb_printf(strbuf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2;
        if (cap < b->len + (size_t)n + 1)
            cap = b->len + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* A label value: backslash, double quote and newline are escaped. */
static void sb_label_value(strbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '\\': sb_printf(b, "\\\\"); break;
        case '"':  sb_printf(b, "\\\""); break;
        case '\n': sb_printf(b, "\\n"); break;
        default:   sb_printf(b, "%c", *s); break;
        }
    }
}

/* The shortest of %.15g and %.17g that reads back as the same double, as
 * Prometheus' own clients print floats ("0.25", not "0.25000000000000000"). */
static void format_double(char *out, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(out, size, "NaN");
    } else if (isinf(v)) {
        snprintf(out, size, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, size, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, size, "%.17g", v);
    }
}

static void sb_header(strbuf *b, const char *family, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", family, help, family, type);
}

/* Samples of families described by a table; HELP/TYPE once per family. */
static void render_table(strbuf *b, const metric_desc *desc, int count, const char *type,
                         const relay_metrics *m, int counters)
{
    const char *family = NULL;
    for (int i = 0; i < count; i++) {
        const metric_desc *d = &desc[i];
        assert(d->family);
        if (!family || strcmp(family, d->family) != 0) {
            family = d->family;
            sb_header(b, d->family, type, d->help);
        }
        sb_printf(b, "%s", d->family);
        if (d->labels)
            sb_printf(b, "{%s}", d->labels);
        if (counters)
            sb_printf(b, " %" PRIu64 "\n",
                      atomic_load_explicit((_Atomic uint64_t *)&m->counters[i],
                                           memory_order_relaxed));
        else
            sb_printf(b, " %" PRId64 "\n",
                      atomic_load_explicit((_Atomic int64_t *)&m->gauges[i],
                                           memory_order_relaxed));
    }
}

static void render_histogram(strbuf *b, const metric_desc *d, histogram *h)
{
    char num[32];
    uint64_t cumulative = 0;
    sb_header(b, d->family, "histogram", d->help);
    for (int i = 0; i <= BUCKETS; i++) {
        cumulative += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < BUCKETS)
            format_double(num, sizeof num, bucket_bounds[i]);
        else
            snprintf(num, sizeof num, "+Inf");
        sb_printf(b, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", d->family, num, cumulative);
    }
    format_double(num, sizeof num,
                  bits_double(atomic_load_explicit(&h->sum_bits, memory_order_relaxed)));
    sb_printf(b, "%s_sum %s\n", d->family, num);
    /* The +Inf bucket, not a counter of its own: the two always agree. */
    sb_printf(b, "%s_count %" PRIu64 "\n", d->family, cumulative);
}

static void render_shards(strbuf *b, relay_metrics *m)
{
    char num[32];
    sb_header(b, "ferry_relay_unpublished_rows", "gauge", "Rows not yet published, per shard.");
    for (int i = 0; i < METRICS_SHARDS_MAX; i++) {
        shard_gauges *s = &m->shards[i];
        if (!atomic_load_explicit(&s->set, memory_order_acquire))
            continue;
        sb_printf(b, "ferry_relay_unpublished_rows{shard=\"%d\"} %" PRId64 "\n", i,
                  atomic_load_explicit(&s->unpublished, memory_order_relaxed));
    }
    sb_header(b, "ferry_relay_oldest_unpublished_seconds", "gauge",
              "Age of the oldest unpublished row, per shard.");
    for (int i = 0; i < METRICS_SHARDS_MAX; i++) {
        shard_gauges *s = &m->shards[i];
        if (!atomic_load_explicit(&s->set, memory_order_acquire))
            continue;
        format_double(num, sizeof num,
                      bits_double(atomic_load_explicit(&s->oldest_bits, memory_order_relaxed)));
        sb_printf(b, "ferry_relay_oldest_unpublished_seconds{shard=\"%d\"} %s\n", i, num);
    }
}

char *metrics_render(relay_metrics *m)
{
    assert(m);
    strbuf b = {.p = malloc(16384), .cap = 16384};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';

    sb_header(&b, "ferry_relay_up", "gauge", "1 while the relay runs.");
    sb_printf(&b, "ferry_relay_up 1\n");
    sb_header(&b, "ferry_relay_info", "gauge", "The relay's version, as a label.");
    sb_printf(&b, "ferry_relay_info{version=\"");
    sb_label_value(&b, ferry_version());
    sb_printf(&b, "\"} 1\n");

    render_table(&b, counter_desc, M_COUNTER_COUNT, "counter", m, 1);
    render_table(&b, gauge_desc, G_GAUGE_COUNT, "gauge", m, 0);
    for (int h = 0; h < H_HISTOGRAM_COUNT; h++)
        render_histogram(&b, &histogram_desc[h], &m->histograms[h]);
    render_shards(&b, m);

    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                 */

#define TEXT_PLAIN "text/plain; charset=utf-8"
#define PROMETHEUS_TEXT "text/plain; version=0.0.4; charset=utf-8"

/* Queue a response with body (len bytes). With owned, body was malloc'd
 * and this call takes it over, whatever happens; else it is copied. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             char *body, size_t len, int owned, const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE
                                                         : MHD_RESPMEM_MUST_COPY);
    if (!resp) {
        /* libmicrohttpd takes the buffer only with the response. */
        if (owned)
            free(body);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_YES;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
        (allow && MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES))
        ret = MHD_NO;
    if (ret == MHD_YES)
        ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *text, const char *allow)
{
    return reply(conn, status, TEXT_PLAIN, (char *)text, strlen(text), 0, allow);
}

static enum MHD_Result serve_healthz(relay_metrics *m, struct MHD_Connection *conn)
{
    char body[HEALTH_REASON_SIZE + 2];
    pthread_mutex_lock(&m->lock);
    int healthy = m->healthy;
    snprintf(body, sizeof body, "%s\n", m->reason[0] ? m->reason : "unhealthy");
    pthread_mutex_unlock(&m->lock);
    if (healthy)
        return reply_text(conn, MHD_HTTP_OK, "ok\n", NULL);
    return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, body, NULL);
}

static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    relay_metrics *m = cls;
    int is_metrics = strcmp(url, "/metrics") == 0;
    int is_healthz = strcmp(url, "/healthz") == 0;
    /* Answered on the first call, before any request body: neither
     * endpoint takes one, and a refusal needs none. */
    if (!is_metrics && !is_healthz)
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n", NULL);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n",
                          "GET, HEAD");
    if (is_healthz)
        return serve_healthz(m, conn);
    char *text = metrics_render(m);
    if (!text)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL);
    return reply(conn, MHD_HTTP_OK, PROMETHEUS_TEXT, text, strlen(text), 1, NULL);
}

/* libmicrohttpd's log: kept while metrics_serve starts the daemon (to
 * explain a failure), dropped afterwards — the relay's log is structured
 * and this module has no seam into it. Runs on either thread, hence the
 * lock. */
__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    relay_metrics *m = cls;
    pthread_mutex_lock(&m->lock);
    if (m->capture_log) {
        vsnprintf(m->start_error, sizeof m->start_error, fmt, ap);
        size_t n = strlen(m->start_error);
        while (n > 0 && (m->start_error[n - 1] == '\n' || m->start_error[n - 1] == '\r'))
            m->start_error[--n] = '\0';
    }
    pthread_mutex_unlock(&m->lock);
}

__attribute__((format(printf, 3, 4)))
static void set_error(char *errbuf, size_t errlen, const char *fmt, ...)
{
    if (!errbuf || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

/*
 * HOST:PORT into a socket address. HOST is a name, an IPv4 address, an
 * IPv6 address in brackets, or "*" or nothing for every IPv4 interface.
 * PORT is 0..65535 (0: the kernel picks).
 */
static int parse_address(const char *host_port, struct sockaddr_storage *ss, int *ipv6,
                         char *errbuf, size_t errlen)
{
    char host[256];
    const char *port_text;
    int bracketed = 0;

    if (!host_port || !*host_port) {
        set_error(errbuf, errlen, "invalid metrics address \"\": expected HOST:PORT");
        return -1;
    }
    if (host_port[0] == '[') {
        const char *close = strchr(host_port, ']');
        if (!close || close[1] != ':') {
            set_error(errbuf, errlen,
                      "invalid metrics address \"%s\": expected [IPV6]:PORT", host_port);
            return -1;
        }
        size_t n = (size_t)(close - host_port - 1);
        if (n == 0 || n >= sizeof host) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": bad IPv6 host",
                      host_port);
            return -1;
        }
        memcpy(host, host_port + 1, n);
        host[n] = '\0';
        port_text = close + 2;
        bracketed = 1;
    } else {
        const char *colon = strrchr(host_port, ':');
        if (!colon) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": expected HOST:PORT",
                      host_port);
            return -1;
        }
        if (memchr(host_port, ':', (size_t)(colon - host_port))) {
            set_error(errbuf, errlen,
                      "invalid metrics address \"%s\": an IPv6 host needs brackets, "
                      "as in [::1]:9100", host_port);
            return -1;
        }
        size_t n = (size_t)(colon - host_port);
        if (n >= sizeof host) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": host too long",
                      host_port);
            return -1;
        }
        memcpy(host, host_port, n);
        host[n] = '\0';
        port_text = colon + 1;
    }

    /* Digits only: strtol would take a sign, spaces and "0x". */
    long port = 0;
    size_t digits = strspn(port_text, "0123456789");
    if (digits == 0 || digits > 5 || port_text[digits] != '\0' ||
        (port = strtol(port_text, NULL, 10)) > 65535) {
        set_error(errbuf, errlen, "invalid metrics address \"%s\": bad port \"%s\"",
                  host_port, port_text);
        return -1;
    }

    memset(ss, 0, sizeof *ss);
    if (!bracketed && (host[0] == '\0' || strcmp(host, "*") == 0)) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port);
        *ipv6 = 0;
        return 0;
    }

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
    if (bracketed)
        hints.ai_flags |= AI_NUMERICHOST;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port_text, &hints, &res);
    if (rc != 0 || !res) {
        set_error(errbuf, errlen, "could not resolve metrics address \"%s\": %s", host_port,
                  rc != 0 ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    /* The first answer, as most servers do for a name with several. */
    if (res->ai_addrlen > sizeof *ss ||
        (res->ai_family != AF_INET && res->ai_family != AF_INET6)) {
        set_error(errbuf, errlen, "could not use metrics address \"%s\": not IPv4 or IPv6",
                  host_port);
        freeaddrinfo(res);
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *ipv6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

int metrics_serve(relay_metrics *m, const char *host_port, int *bound_port,
                  char *errbuf, size_t errlen)
{
    assert(m);
    if (m->daemon) {
        set_error(errbuf, errlen, "could not serve metrics on \"%s\": already serving",
                  host_port ? host_port : "");
        return -1;
    }
    struct sockaddr_storage ss;
    int ipv6 = 0;
    if (parse_address(host_port, &ss, &ipv6, errbuf, errlen) != 0)
        return -1;
    uint16_t port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);

    pthread_mutex_lock(&m->lock);
    m->capture_log = 1;
    m->start_error[0] = '\0';
    pthread_mutex_unlock(&m->lock);

    /* Without MHD_USE_DUAL_STACK an IPv6 socket is IPV6_V6ONLY: "[::]"
     * means IPv6 only, as written. The logger must be the first option to
     * see every message. */
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ipv6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, handle_request, m,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, m,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_END);

    char why[START_ERROR_SIZE];
    pthread_mutex_lock(&m->lock);
    m->capture_log = 0;
    snprintf(why, sizeof why, "%s", m->start_error);
    pthread_mutex_unlock(&m->lock);

    if (!d) {
        set_error(errbuf, errlen, "could not serve metrics on \"%s\": %s", host_port,
                  why[0] ? why : "libmicrohttpd did not start");
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || info->port == 0) {
        MHD_stop_daemon(d);
        set_error(errbuf, errlen,
                  "could not serve metrics on \"%s\": the bound port is unknown", host_port);
        return -1;
    }
    m->daemon = d;
    if (bound_port)
        *bound_port = info->port;
    return 0;
}
