/*
 * kafka_stats.c — librdkafka's statistics as Prometheus families
 * (kafka_stats.h). The document's fields are librdkafka's STATISTICS.md:
 * at the top msg_cnt, msg_size, txmsgs, tx_bytes; per broker
 * (brokers.NAME) state, nodeid, rtt.{avg,p99} and int_latency.avg in
 * microseconds, outbuf_cnt, waitresp_cnt, tx, txerrs, txretries,
 * req_timeouts, rxerrs, connects, disconnects. Brokers with nodeid < 0 are
 * librdkafka's internal ones and bootstrap placeholders: left out.
 *
 * The document comes from the network's side of things only in the sense
 * that broker names come from metadata: names are escaped as label values,
 * their number is capped (STATS_BROKERS_MAX), and a document that is not
 * an object, or is larger than STATS_JSON_MAX, is refused.
 */
#include "kafka_stats.h"
#include "strbuf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "promtext.h"

enum {
    STATS_JSON_MAX = 8 << 20,         /* bytes of one document */
    STATS_BROKERS_MAX = 256,
};

struct kafka_stats {
    pthread_mutex_t lock;
    char *text;                       /* the families for the latest document */
    unsigned long long updates;
};

kafka_stats *kafka_stats_new(void)
{
    kafka_stats *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->text = strdup("");
    if (!s->text || pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s->text);
        free(s);
        return NULL;
    }
    return s;
}

void kafka_stats_free(kafka_stats *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s->text);
    free(s);
}

static double num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : -1;
}

/* One broker-level family. */
typedef struct broker_family {
    const char *name, *type, *help;
    const char *key, *sub;            /* the field, or key.sub */
    double scale;                     /* times the value: 1e-6 for microseconds */
} broker_family;

static const broker_family broker_families[] = {
    {"ferry_kafka_broker_rtt_seconds", "gauge",
     "Round-trip time to the broker, average over the last statistics window.", "rtt", "avg",
     1e-6},
    {"ferry_kafka_broker_rtt_p99_seconds", "gauge",
     "Round-trip time to the broker, 99th percentile over the last statistics window.", "rtt",
     "p99", 1e-6},
    {"ferry_kafka_broker_internal_latency_seconds", "gauge",
     "Time a message waits in the client before it is sent, average (librdkafka int_latency).",
     "int_latency", "avg", 1e-6},
    {"ferry_kafka_broker_outbuf_requests", "gauge",
     "Requests waiting to be sent to the broker.", "outbuf_cnt", NULL, 1},
    {"ferry_kafka_broker_waitresp_requests", "gauge",
     "Requests sent to the broker and waiting for its answer.", "waitresp_cnt", NULL, 1},
    {"ferry_kafka_broker_requests_total", "counter", "Requests sent to the broker.", "tx", NULL,
     1},
    {"ferry_kafka_broker_tx_errors_total", "counter", "Errors sending to the broker.", "txerrs",
     NULL, 1},
    {"ferry_kafka_broker_rx_errors_total", "counter", "Errors receiving from the broker.",
     "rxerrs", NULL, 1},
    {"ferry_kafka_broker_retries_total", "counter", "Requests sent again to the broker.",
     "txretries", NULL, 1},
    {"ferry_kafka_broker_timeouts_total", "counter", "Requests to the broker that timed out.",
     "req_timeouts", NULL, 1},
    {"ferry_kafka_broker_connects_total", "counter", "Connections made to the broker.",
     "connects", NULL, 1},
    {"ferry_kafka_broker_disconnects_total", "counter", "Connections to the broker lost.",
     "disconnects", NULL, 1},
};

/* The brokers worth showing, in the document's order, at most
 * STATS_BROKERS_MAX: their names and objects. */
static size_t real_brokers(json_t *root, const char **names, json_t **objs)
{
    json_t *brokers = json_object_get(root, "brokers");
    size_t n = 0;
    const char *name;
    json_t *b;
    if (!json_is_object(brokers))
        return 0;
    json_object_foreach(brokers, name, b) {
        if (n == STATS_BROKERS_MAX)
            break;
        if (!json_is_object(b) || num(b, "nodeid") < 0)
            continue;
        names[n] = name;
        objs[n] = b;
        n++;
    }
    return n;
}

static void render(strbuf *b, json_t *root, unsigned long long updates)
{
    char v[32];
    sb_printf(b, "# HELP ferry_kafka_stats_updates_total librdkafka statistics documents taken in "
           "(statistics.interval.ms).\n# TYPE ferry_kafka_stats_updates_total counter\n"
           "ferry_kafka_stats_updates_total %llu\n", updates);

    static const struct {
        const char *name, *type, *help, *key;
    } top[] = {
        {"ferry_kafka_producer_queue_messages", "gauge",
         "Messages in the producer's queues, not yet acknowledged by a broker.", "msg_cnt"},
        {"ferry_kafka_producer_queue_bytes", "gauge",
         "Bytes of the messages in the producer's queues.", "msg_size"},
        {"ferry_kafka_sent_messages_total", "counter", "Messages sent to brokers.", "txmsgs"},
        {"ferry_kafka_sent_bytes_total", "counter", "Bytes sent to brokers.", "tx_bytes"},
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        double x = num(root, top[i].key);
        sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", top[i].name, top[i].help, top[i].name,
            top[i].type);
        if (x >= 0) {
            promtext_double(v, sizeof v, x);
            sb_printf(b, "%s %s\n", top[i].name, v);
        }
    }

    const char *names[STATS_BROKERS_MAX];
    json_t *objs[STATS_BROKERS_MAX];
    size_t n = real_brokers(root, names, objs);
    sb_printf(b, "# HELP ferry_kafka_broker_up 1 when the connection to the broker is up (state UP).\n"
           "# TYPE ferry_kafka_broker_up gauge\n");
    for (size_t i = 0; i < n; i++) {
        const char *state = json_string_value(json_object_get(objs[i], "state"));
        /* A broker the producer has had no need to connect to yet
         * (librdkafka's sparse connections: no partition it leads has had
         * a message) is not down: it read 0, and the README's
         * FerryKafkaBrokerDown fired on a healthy cluster (an outside
         * audit). It gets no series until it is tried. */
        if (state != NULL && strcmp(state, "INIT") == 0)
            continue;
        sb_printf(b, "ferry_kafka_broker_up{broker=\"");
        promtext_label_value(b, names[i]);
        sb_printf(b, "\"} %d\n", state && strcmp(state, "UP") == 0);
    }
    for (size_t f = 0; f < sizeof broker_families / sizeof broker_families[0]; f++) {
        const broker_family *fam = &broker_families[f];
        sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help, fam->name, fam->type);
        for (size_t i = 0; i < n; i++) {
            json_t *holder = fam->sub ? json_object_get(objs[i], fam->key) : objs[i];
            double x = num(holder, fam->sub ? fam->sub : fam->key);
            if (x < 0)
                continue;
            promtext_double(v, sizeof v, x * fam->scale);
            sb_printf(b, "%s{broker=\"", fam->name);
            promtext_label_value(b, names[i]);
            sb_printf(b, "\"} %s\n", v);
        }
    }
}

int kafka_stats_update(kafka_stats *s, const char *json, size_t json_len)
{
    if (!s || !json || json_len > STATS_JSON_MAX)
        return -1;
    json_error_t jerr;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    unsigned long long updates = s->updates + 1;
    pthread_mutex_unlock(&s->lock);
    strbuf b = {.p = malloc(8192), .cap = 8192};
    if (!b.p) {
        json_decref(root);
        return -1;
    }
    b.p[0] = '\0';
    render(&b, root, updates);
    json_decref(root);
    if (b.failed) {
        free(b.p);
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    free(s->text);
    s->text = b.p;
    s->updates = updates;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

char *kafka_stats_render(kafka_stats *s)
{
    if (!s)
        return strdup("");
    pthread_mutex_lock(&s->lock);
    char *copy = strdup(s->text);
    pthread_mutex_unlock(&s->lock);
    return copy;
}
