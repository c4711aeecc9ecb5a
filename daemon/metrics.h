/*
 * metrics.h — ferry-relay's counters, gauges and histograms, rendered in
 * the Prometheus text format and served with /healthz over HTTP
 * (libmicrohttpd). Updates are lock-free (atomics) so the relay's hot path
 * never waits on a scrape.
 */
#ifndef FERRY_RELAY_METRICS_H
#define FERRY_RELAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_SHARDS_MAX 4096

typedef enum metric_counter {
    M_PUBLISHED,              /* ferry_relay_published_total */
    M_ACKED,                  /* ferry_relay_acknowledged_total */
    M_ACK_REFUSED,            /* ferry_relay_ack_refused_total (lease lost) */
    M_DEAD_LETTERED,          /* ferry_relay_dead_lettered_total */
    M_FAIL_DELIVERY,          /* ferry_relay_failures_total{kind="delivery"} */
    M_FAIL_PRODUCE,           /* ...{kind="produce"} (refused before sending) */
    M_FAIL_FATAL,             /* ...{kind="fatal"} (producer rebuilt) */
    M_FAIL_DB,                /* ...{kind="database"} */
    M_LEASES_ACQUIRED,        /* ferry_relay_leases_acquired_total */
    M_LEASES_LOST,            /* ferry_relay_leases_lost_total */
    M_WAKEUPS_NOTIFY,         /* ferry_relay_wakeups_total{by="notify"} */
    M_WAKEUPS_POLL,           /* ...{by="poll"} */
    M_WAL_DECODED,            /* ferry_relay_wal_messages_decoded_total (WAL source) */
    M_WAL_REFUSED,            /* ferry_relay_wal_messages_refused_total */
    M_COUNTER_COUNT
} metric_counter;

typedef enum metric_gauge {
    G_LEASES_HELD,            /* ferry_relay_leases_held */
    G_INFLIGHT,               /* ferry_relay_queue_depth{queue="inflight"} */
    G_ACK_PENDING,            /* ferry_relay_queue_depth{queue="ack"} */
    G_KAFKA_QUEUE,            /* ferry_relay_queue_depth{queue="kafka"} */
    G_STUCK_PARTITIONS,       /* ferry_relay_stuck_partitions */
    G_STUCK_KEYS,             /* ferry_relay_stuck_keys */
    G_OLDEST_INFLIGHT_MS,     /* ferry_relay_oldest_inflight_seconds (rendered in s) */
    G_INFLIGHT_BYTES,         /* ferry_relay_inflight_bytes */
    G_WAKE_FOREIGN,           /* ferry_relay_wake_foreign_lock: 1 or 0 */
    G_WAL_SLOT_OK,            /* ferry_relay_wal_slot_ok: 1, or 0 missing/lost (WAL source) */
    G_WAL_RETAINED_BYTES,     /* ferry_relay_wal_retained_bytes: WAL the slot pins */
    G_WAL_LAG_BYTES,          /* ferry_relay_wal_confirmed_lag_bytes */
    G_WAL_LAG_MS,             /* ferry_relay_wal_confirmed_lag_seconds (rendered in s) */
    G_GAUGE_COUNT
} metric_gauge;

typedef enum metric_histogram {
    H_BATCH_SECONDS,          /* ferry_relay_batch_seconds: fetch to last ack */
    H_E2E_SECONDS,            /* ferry_relay_end_to_end_seconds: created_at to delivery */
    H_HISTOGRAM_COUNT
} metric_histogram;

typedef struct relay_metrics relay_metrics;

relay_metrics *metrics_new(void);
void metrics_free(relay_metrics *m);              /* stops the server too; NULL ok */

void metrics_add(relay_metrics *m, metric_counter c, uint64_t n);
void metrics_set(relay_metrics *m, metric_gauge g, int64_t v);
void metrics_observe(relay_metrics *m, metric_histogram h, double seconds);
/* Per shard: ferry_relay_unpublished_rows{shard="N"} and
 * ferry_relay_oldest_unpublished_seconds{shard="N"}; shards not set since
 * metrics_shards_reset() are not rendered. */
void metrics_shards_reset(relay_metrics *m);
void metrics_set_shard(relay_metrics *m, int shard, int64_t unpublished, double oldest_seconds);
/* One shard's series not rendered any more (its shard is not held). */
void metrics_clear_shard(relay_metrics *m, int shard);
/* Healthy: /healthz answers 200 "ok", else 503 with the reason. */
void metrics_set_health(relay_metrics *m, int healthy, const char *reason);

uint64_t metrics_get(const relay_metrics *m, metric_counter c);

/* librdkafka's statistics document (statistics.interval.ms; borrowed),
 * rendered as the ferry_kafka_* families from now on (kafka_stats.h).
 * Returns -1, keeping the last, for a document that is not one. */
int metrics_kafka_stats(relay_metrics *m, const char *json, size_t len);

/* The Prometheus text exposition; malloc'd, caller frees. */
char *metrics_render(relay_metrics *m);

/* Serve GET /metrics and GET /healthz on host:port (":0" or "host:0" picks
 * a free port; *bound_port tells which). Returns 0, or -1 with errbuf. */
int metrics_serve(relay_metrics *m, const char *host_port, int *bound_port,
                  char *errbuf, size_t errlen);

#endif
