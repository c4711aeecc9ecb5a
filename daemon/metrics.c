/*
 * metrics.c — the relay's Prometheus metrics and what its /metrics and
 * /healthz endpoints answer (httpd.c serves them).
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
#include "strbuf.h"
#include "kafka_stats.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "httpd.h"
#include "promtext.h"

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
    [M_WAL_DECODED] = {"ferry_relay_wal_messages_decoded_total", NULL,
                       "WAL source: 'ferry' logical messages decoded from the slot."},
    [M_WAL_REFUSED] = {"ferry_relay_wal_messages_refused_total", NULL,
                       "WAL source: 'ferry' messages refused (no valid token or content)."},
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
    [G_STUCK_PARTITIONS] = {"ferry_relay_stuck_partitions", NULL,
                            "Partitions whose oldest message in flight has waited longer than "
                            "stuck_ms; their keys wait, every other key goes on."},
    [G_STUCK_KEYS] = {"ferry_relay_stuck_keys", NULL,
                      "Keys whose deliveries have failed for longer than stuck_ms."},
    [G_OLDEST_INFLIGHT_MS] = {"ferry_relay_oldest_inflight_seconds", NULL,
                              "Age of the oldest message produced and not yet reported."},
    [G_INFLIGHT_BYTES] = {"ferry_relay_inflight_bytes", NULL,
                          "Bytes of messages produced and not yet reported (payloads and keys; "
                          "headers too in the table source); the relay reads no more at its "
                          "budget (64 MiB at most), so this is at most that and one message."},
    [G_WAKE_FOREIGN] = {"ferry_relay_wake_foreign_lock", NULL,
                        "Table source: 1 while another session holds the busy lock of a shard "
                        "this relay serves and it would have writers notify: they do not, and "
                        "it looks by itself."},
    [G_WAL_SLOT_OK] = {"ferry_relay_wal_slot_ok", NULL,
                       "WAL source: 1 while the replication slot exists and is valid, 0 when "
                       "it is missing or lost (never recreated by the relay)."},
    [G_WAL_RETAINED_BYTES] = {"ferry_relay_wal_retained_bytes", NULL,
                              "WAL source: WAL the slot keeps (current position - restart_lsn)."},
    [G_WAL_LAG_BYTES] = {"ferry_relay_wal_confirmed_lag_bytes", NULL,
                         "WAL source: current position - the slot's confirmed flush position."},
    [G_WAL_LAG_MS] = {"ferry_relay_wal_confirmed_lag_seconds", NULL,
                      "WAL source: how long the confirmed position has not moved while "
                      "messages were in flight."},
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

struct relay_metrics {
    /* Zeroed by calloc: with lock-free atomics (asserted above) all-zero
     * bytes are the value 0, so no atomic_init is needed. */
    _Atomic uint64_t counters[M_COUNTER_COUNT];
    _Atomic int64_t gauges[G_GAUGE_COUNT];
    histogram histograms[H_HISTOGRAM_COUNT];
    shard_gauges shards[METRICS_SHARDS_MAX];

    httpd *server;                          /* NULL until metrics_serve */
    kafka_stats *kafka;                     /* librdkafka's statistics, latest */

    pthread_mutex_t lock;                   /* guards everything below */
    int healthy;
    char reason[HEALTH_REASON_SIZE];
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
    if ((m->kafka = kafka_stats_new()) == NULL) {
        free(m);
        return NULL;
    }
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        kafka_stats_free(m->kafka);
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
    httpd_stop(m->server);
    pthread_mutex_destroy(&m->lock);
    kafka_stats_free(m->kafka);
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

void metrics_clear_shard(relay_metrics *m, int shard)
{
    assert(m);
    if (shard < 0 || shard >= METRICS_SHARDS_MAX)
        return;
    atomic_store_explicit(&m->shards[shard].set, false, memory_order_relaxed);
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
        else if (i == G_OLDEST_INFLIGHT_MS || i == G_WAL_LAG_MS) {
            char num[32];
            promtext_double(num, sizeof num,
                            (double)atomic_load_explicit((_Atomic int64_t *)&m->gauges[i],
                                                         memory_order_relaxed) / 1e3);
            sb_printf(b, " %s\n", num);
        } else
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
            promtext_double(num, sizeof num, bucket_bounds[i]);
        else
            snprintf(num, sizeof num, "+Inf");
        sb_printf(b, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", d->family, num, cumulative);
    }
    promtext_double(num, sizeof num,
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
        promtext_double(num, sizeof num,
                        bits_double(atomic_load_explicit(&s->oldest_bits,
                                                         memory_order_relaxed)));
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
    promtext_label_value(&b, ferry_version());
    sb_printf(&b, "\"} 1\n");

    render_table(&b, counter_desc, M_COUNTER_COUNT, "counter", m, 1);
    render_table(&b, gauge_desc, G_GAUGE_COUNT, "gauge", m, 0);
    for (int h = 0; h < H_HISTOGRAM_COUNT; h++)
        render_histogram(&b, &histogram_desc[h], &m->histograms[h]);
    render_shards(&b, m);
    char *kafka = kafka_stats_render(m->kafka);
    if (kafka)
        sb_printf(&b, "%s", kafka);
    else
        b.failed = 1;
    free(kafka);
    char process[2048];
    if (promtext_process(process, sizeof process) < (int)sizeof process)
        sb_printf(&b, "%s", process);
    else
        b.failed = 1;

    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int metrics_kafka_stats(relay_metrics *m, const char *json, size_t len)
{
    assert(m);
    return kafka_stats_update(m->kafka, json, len);
}

/* ------------------------------------------------------------------ */
/* HTTP: httpd.c serves, these two answer                               */

static char *render_cb(void *arg)
{
    return metrics_render(arg);
}

static int health_cb(void *arg, char *reason, size_t len)
{
    relay_metrics *m = arg;
    pthread_mutex_lock(&m->lock);
    int healthy = m->healthy;
    snprintf(reason, len, "%s", m->reason);
    pthread_mutex_unlock(&m->lock);
    return healthy;
}

int metrics_serve(relay_metrics *m, const char *host_port, int *bound_port,
                  char *errbuf, size_t errlen)
{
    assert(m);
    if (m->server) {
        if (errbuf && errlen > 0)
            snprintf(errbuf, errlen, "could not serve metrics on \"%s\": already serving",
                     host_port ? host_port : "");
        return -1;
    }
    m->server = httpd_start(host_port, render_cb, health_cb, m, bound_port, errbuf, errlen);
    return m->server ? 0 : -1;
}
