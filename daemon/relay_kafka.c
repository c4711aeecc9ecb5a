/*
 * relay_kafka.c — the producer: its configuration, the partitioner, the
 * delivery reports, and rebuilding it after a fatal error.
 *
 * Partitions. The relay needs to know which partition a key goes to
 * before it produces, so that a partition that stops answering holds only
 * its own keys (relay_sched.c). So it partitions the way librdkafka would,
 * with the same function: each topic handle gets a partitioner callback
 * that calls the configured keyed partitioner (murmur2_random by default,
 * Kafka's Java default for keyed messages) and notes the topic's partition
 * count, which the loop then uses to place keys ahead of producing. Until
 * the count is known (a topic's first messages), its keys count as one
 * group, "partition -1" of the topic.
 */
#include <fcntl.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "relay_int.h"

/* ------------------------------------------------------------------ reports */

/* Each message's opaque: its slot and the producer generation, so that a
 * report from a producer thrown away never touches a slot reused since. */
static void *opaque_of(int slot, unsigned gen)
{
    return (void *)(uintptr_t)(((uint64_t)gen << 32) | (uint32_t)slot);
}

bool relay_kafka_topic_refused(rd_kafka_resp_err_t err)
{
    /* Not TOPIC_AUTHORIZATION_FAILED: a Produce refused so is a fatal
     * error under the gapless guarantee, the producer is made again and
     * sends again, and only max_attempts bounds that loop
     * (test_relay_faults a_broker_that_refuses_every_produce_...). A topic
     * not there yet is waited for, as a leaderless partition is: the
     * delivery fails once librdkafka's metadata wait is over, and again
     * after the key's backoff, without rebuilding anything. */
    return err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
           err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    relay *r = opaque;
    if (r->wal != NULL) {
        relay_wal_delivered(r, msg);
        return;
    }
    uint64_t v = (uint64_t)(uintptr_t)msg->_private;
    int slot = (int)(uint32_t)v;
    unsigned gen = (unsigned)(v >> 32);
    if (gen != r->k.gen)
        return;     /* the slot was given up with its producer */
    unsigned slot_gen;
    int shard;
    int64_t epoch, created_ms;
    unsigned char id[16];
    if (sched_slot_info(r->s, slot, id, &shard, &epoch, &slot_gen, &created_ms) != 0 ||
        slot_gen != gen)
        return;
    int64_t now = ferry__now_ms();
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_store(&r->k.down, 0);
        r->delivered++;
        relay_count(r, M_PUBLISHED, 1);
        if (r->m != NULL)
            metrics_observe(r->m, H_E2E_SECONDS, (double)(relay_wall_ms() - created_ms) / 1e3);
        sched_delivered(r->s, slot, 1, now);
        return;
    }
    char reason[256];
    snprintf(reason, sizeof reason, "delivery failed: %s (%s)", rd_kafka_err2str(msg->err),
             rd_kafka_err2name(msg->err));
    relay_count(r, M_FAIL_DELIVERY, 1);
    r->undelivered++;
    /* A purge is ours (a rebuild or a stop), and a fatal error the
     * producer's: not the message's fault, and not counted against it. A
     * topic the broker does not know or lets the relay not write is not
     * the message's fault either: the key retries after its backoff, and
     * waits as long as the topic does (before, every key of a topic
     * created late was dead-lettered: an outside audit). */
    int lost = msg->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
               msg->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT ||
               msg->err == RD_KAFKA_RESP_ERR__FATAL;
    sched_delivered(r->s, slot, lost ? -1 : 0, now);
    if (!lost && !relay_kafka_topic_refused(msg->err))
        relay_note_failure(r, id, shard, epoch, reason);
}

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int lvl = level <= 3 ? FERRY_LOG_ERROR : level <= 5 ? FERRY_LOG_WARN
                                                        : level <= 6 ? FERRY_LOG_INFO
                                                                     : FERRY_LOG_DEBUG;
    /* The relay turns enable.gapless.guarantee on knowingly (the ordering
     * guarantee rests on it); librdkafka's "experimental" warning about it,
     * on every start, would teach operators to ignore warnings. */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "enable.gapless.guarantee") != NULL)
        lvl = FERRY_LOG_DEBUG;
    /* A broker connection failure reaches us twice: as this "FAIL" log
     * line and, with the same text, through the error callback, which
     * logs it as kafka.error with the error's name. One event per cause:
     * the log line is kept for debug only. */
    if (strcmp(fac, "FAIL") == 0 && lvl < FERRY_LOG_DEBUG)
        lvl = FERRY_LOG_DEBUG;
    ferry__log_json(lvl, "kafka.log", json_pack("{s:s}", "facility", fac), "%s", buf);
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    relay *r = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&r->k.down, 1);
    ferry__log_json(FERRY_LOG_WARN, "kafka.error",
                   json_pack("{s:s}", "error", rd_kafka_err2name((rd_kafka_resp_err_t)err)),
                   "%s", reason);
}

/* librdkafka's statistics, every statistics.interval.ms, from the thread
 * that polls: to the metrics. 0: librdkafka frees json. */
static int on_kafka_stats(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
    relay *r = opaque;
    if (r->m && metrics_kafka_stats(r->m, json, json_len) != 0)
        ferry__log(FERRY_LOG_WARN, "kafka.stats", "librdkafka's statistics could not be read; "
                  "the ferry_kafka_* metrics keep the last ones");
    return 0;
}

/* ------------------------------------------------------------------ partitions */

#define X_ROW(name) {#name, rd_kafka_msg_partitioner_##name},
static const struct {
    const char *name;
    relay_partitioner fn;
} partitioners[] = {RELAY_KEYED_PARTITIONERS(X_ROW)};
#undef X_ROW

static int cmp_topic(const void *a, const void *b)
{
    return strcmp(((const relay_topic *)a)->name, ((const relay_topic *)b)->name);
}

/* The configured partitioner: set with the producer, read by librdkafka's
 * threads through keyed_cb, one relay per process. */
static relay_partitioner chosen = rd_kafka_msg_partitioner_murmur2_random;

static int32_t keyed_cb(const rd_kafka_topic_t *rkt, const void *key, size_t keylen,
                        int32_t partition_cnt, void *rkt_opaque, void *msg_opaque)
{
    relay_topic *t = rkt_opaque;
    atomic_store(&t->partitions, partition_cnt);
    return chosen(rkt, key, keylen, partition_cnt, NULL, msg_opaque);
}

/* The topic's handle, made (and kept for the producer's life) on first
 * use: creating it also asks the broker for its metadata at once, where a
 * topic first met in produce() waited for the once-a-second scan. */
relay_topic *relay_kafka_topic(relay *r, const char *name)
{
    relay_topic probe = {.name = (char *)name};
    void *found = tfind(&probe, &r->k.topics, cmp_topic);
    if (found != NULL)
        return *(relay_topic **)found;
    relay_topic *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->name = strdup(name);
    /* A copy of the producer's default topic configuration, where the
     * topic-level properties of the configuration went (the fixed ones
     * among them: message.timeout.ms 0, acks all). A topic handle made
     * with a fresh rd_kafka_topic_conf_new() takes none of them: its
     * messages timed out after librdkafka's 300 s, which can leave a gap
     * a later message of the key is acknowledged past. */
    rd_kafka_topic_conf_t *tc = rd_kafka_default_topic_conf_dup(r->k.rk);
    if (t->name == NULL || tc == NULL)
        goto fail;
    rd_kafka_topic_conf_set_partitioner_cb(tc, keyed_cb);
    rd_kafka_topic_conf_set_opaque(tc, t);
    char timeout[32] = "?", acks[32] = "?";
    size_t n = sizeof timeout;
    rd_kafka_topic_conf_get(tc, "message.timeout.ms", timeout, &n);
    n = sizeof acks;
    rd_kafka_topic_conf_get(tc, "acks", acks, &n);
    ferry__log_json(FERRY_LOG_DEBUG, "kafka.topic",
                   json_pack("{s:s, s:s, s:s}", "topic", name, "message.timeout.ms", timeout,
                             "acks", acks),
                   "topic %s: message.timeout.ms %s, acks %s", name, timeout, acks);
    t->rkt = rd_kafka_topic_new(r->k.rk, name, tc);     /* takes tc */
    tc = NULL;
    if (t->rkt == NULL || tsearch(t, &r->k.topics, cmp_topic) == NULL)
        goto fail;
    return t;
fail:
    if (tc != NULL)
        rd_kafka_topic_conf_destroy(tc);
    if (t->rkt != NULL)
        rd_kafka_topic_destroy(t->rkt);
    free(t->name);
    free(t);
    return NULL;
}

/* The partition the producer will give key, or -1 while the topic's
 * partition count is not known. */
int relay_kafka_partition(relay *r, relay_topic *t, const char *key)
{
    int n = t ? atomic_load(&t->partitions) : 0;
    if (n <= 0)
        return -1;
    return chosen(t->rkt, key, strlen(key), n, NULL, NULL);
}

static void free_topic(void *p)
{
    relay_topic *t = p;
    if (t->rkt != NULL)
        rd_kafka_topic_destroy(t->rkt);
    free(t->name);
    free(t);
}

/* ------------------------------------------------------------------ the producer */

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        ferry__log(FERRY_LOG_ERROR, "kafka.config", "kafka property %s=%s: %s", name, value,
                  errstr);
        return -1;
    }
    return 0;
}

/* The properties the order guarantee rests on (RELAY_FIXED_KAFKA_PROPS;
 * config.c refuses any other value at load time, exit 2). message.timeout.ms
 * is 0 (never) because librdkafka lets a timed-out message leave a gap
 * even under the gapless guarantee, and a later message of the key could
 * then be acknowledged before it; a partition that does not answer is held
 * instead (relay_sched.c). The partitioner is ours (keyed_cb): the
 * "partitioner" property only chooses which keyed function it calls. */
#define X_FIXED(name, value) {name, value},
static const char *const fixed_props[][2] = {RELAY_FIXED_KAFKA_PROPS(X_FIXED)};
#undef X_FIXED

/* The bytes in flight at most, either source (relay_wal.c, room; the
 * table source through sched_bytes_limit): plenty for the throughput
 * (20,000 messages of 3 kB), and the memory bounded whatever the
 * messages' size. */
#define INFLIGHT_BYTES_MAX (64LL * 1024 * 1024)

/* A number property of the producer's configuration, or -1 (logged). */
static long long conf_number(const rd_kafka_conf_t *conf, const char *name)
{
    char v[32] = "";
    size_t n = sizeof v;
    if (rd_kafka_conf_get(conf, name, v, &n) != RD_KAFKA_CONF_OK || v[0] == '\0') {
        ferry__log(FERRY_LOG_WARN, "kafka.conf", "could not read the producer's %s", name);
        return -1;
    }
    return atoll(v);
}

int relay_kafka_create(relay *r)
{
    const relay_config *cfg = r->cfg;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char num[32], maxbytes[32];
    snprintf(num, sizeof num, "%d", cfg->max_inflight + 1000);
    /* The largest message ferry can ask for: the payload limit, a key of
     * 1024 bytes, 64 KiB of caller headers, ferry's own headers and
     * Kafka's record overhead. librdkafka's default (1,000,000) refused
     * payloads that emit accepted. */
    r->k.built_max_payload = r->db.max_payload > 0 ? r->db.max_payload : 1048576;
    r->k.resize = 0;            /* made for the limit known now */
    long max = (long)r->k.built_max_payload + 1024 + 65536 + 4096;
    if (max > 1000000000)
        max = 1000000000;
    snprintf(maxbytes, sizeof maxbytes, "%ld", max);
    chosen = partitioners[0].fn;
    /* Defaults first (RELAY_DEFAULT_KAFKA_PROPS), so that the kafka: map
     * can override any of them. A broker that was away is tried again
     * within a second of its return (librdkafka's default backoff grows to
     * 10 s); no Nagle, and no linger: the relay batches at the source (a
     * sweep produces its rows in one burst, and under load they queue
     * behind the requests in flight anyway), so a linger only held the
     * last message of each burst back, 2 ms at a low rate;
     * statistics every 15 s feed the ferry_kafka_* metrics. */
#define X_DEFAULT(name, value) {name, value},
    static const char *const defaults[][2] = {RELAY_DEFAULT_KAFKA_PROPS(X_DEFAULT)};
#undef X_DEFAULT
    if (conf_set(conf, "bootstrap.servers", r->k.bootstrap) ||
        conf_set(conf, "queue.buffering.max.messages", num) ||
        conf_set(conf, "message.max.bytes", maxbytes))
        goto fail;
    for (size_t d = 0; d < sizeof defaults / sizeof defaults[0]; d++)
        if (conf_set(conf, defaults[d][0], defaults[d][1]))
            goto fail;
    for (size_t i = 0; i < cfg->kafka_props_count; i++) {
        const relay_kv *kv = &cfg->kafka_props[i];
        if (strcmp(kv->name, "partitioner") == 0) {
            /* config.c accepted only names of this table. */
            for (size_t p = 0; p < sizeof partitioners / sizeof partitioners[0]; p++)
                if (strcmp(kv->value, partitioners[p].name) == 0)
                    chosen = partitioners[p].fn;
            continue;
        }
        if (conf_set(conf, kv->name, kv->value))
            goto fail;
    }
    for (size_t f = 0; f < sizeof fixed_props / sizeof fixed_props[0]; f++)
        if (conf_set(conf, fixed_props[f][0], fixed_props[f][1]))
            goto fail;
    /* A message larger than the producer's queue is refused by produce()
     * as "queue full" however long it waits: the queue is made to hold
     * the largest message the relay can send, whatever a kafka: setting
     * says (librdkafka's default, 1 GiB, does). */
    long long queue = conf_number(conf, "queue.buffering.max.kbytes") * 1024;
    long long largest = conf_number(conf, "message.max.bytes");
    if (queue >= 0 && largest > queue) {
        char kb[32];
        snprintf(kb, sizeof kb, "%lld", (largest + 1023) / 1024);
        ferry__log(FERRY_LOG_WARN, "kafka.queue_small",
                   "queue.buffering.max.kbytes (%lld bytes) is smaller than message.max.bytes "
                   "(%lld bytes), so a message that large could never be produced: raised to "
                   "%s KiB; such a message then goes out alone",
                   queue, largest, kb);
        if (conf_set(conf, "queue.buffering.max.kbytes", kb))
            goto fail;
        queue = conf_number(conf, "queue.buffering.max.kbytes") * 1024;
    }
    rd_kafka_conf_set_opaque(conf, r);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_stats_cb(conf, on_kafka_stats);

    char errstr[512];
    r->k.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (r->k.rk == NULL) {
        ferry__log(FERRY_LOG_ERROR, "kafka.producer", "could not create the producer: %s",
                  errstr);
        goto fail;   /* rd_kafka_new() takes conf only when it succeeds */
    }
    /* What the WAL source may have in the producer (relay_wal.c, room):
     * the queue's size (librdkafka's default is 1 GiB, and a kafka:
     * setting may change it), less the largest message as configured, at
     * most INFLIGHT_BYTES_MAX so that the relay's memory stays small. */
    long long budget = queue - largest;
    if (queue < 0 || largest < 0)
        budget = 0;     /* said by conf_number: one message at a time */
    if (budget > INFLIGHT_BYTES_MAX)
        budget = INFLIGHT_BYTES_MAX;
    r->k.inflight_bytes_budget = budget > 0 ? (size_t)budget : 0;
    /* The table source by the same budget (1: one message at a time). */
    sched_bytes_limit(r->s, budget > 0 ? (size_t)budget : 1);
    r->k.inflight_bytes = 0;
    /* Delivery reports wake the loop through this pipe. */
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(r->k.rk);
    rd_kafka_queue_io_event_enable(q, r->k.event_pipe[1], "d", 1);
    rd_kafka_queue_destroy(q);
    r->k.gen++;
    return 0;
fail:
    rd_kafka_conf_destroy(conf);
    return -1;
}

void *relay_kafka_opaque(relay *r, int slot)
{
    return opaque_of(slot, r->k.gen);
}

/* Throw the producer away: purge what it holds (failed reports for all of
 * it), wait at most wait_ms for them, destroy it. Whatever it still held
 * the scheduler counts as failed: each key restarts at its first
 * unacknowledged row. */
void relay_kafka_stop(relay *r, int wait_ms)
{
    if (r->k.rk == NULL)
        return;
    rd_kafka_purge(r->k.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                            RD_KAFKA_PURGE_F_NON_BLOCKING);
    int64_t until = ferry__now_ms() + wait_ms;
    do
        rd_kafka_poll(r->k.rk, 10);
    while (sched_inflight(r->s) > 0 && ferry__now_ms() < until);
    tdestroy(r->k.topics, free_topic);
    r->k.topics = NULL;
    r->k.gen++;     /* reports from here on belong to nobody */
    rd_kafka_destroy(r->k.rk);
    r->k.rk = NULL;
    sched_inflight_lost(r->s, ferry__now_ms());
}

int relay_kafka_rebuild(relay *r, const char *reason)
{
    relay_count(r, M_FAIL_FATAL, 1);
    ferry__log(FERRY_LOG_ERROR, "kafka.fatal", "fatal producer error: %s; rebuilding the "
              "producer and resending from the first unacknowledged row of each key", reason);
    relay_kafka_stop(r, 1000);
    return relay_kafka_create(r);
}

int relay_kafka_too_small(relay *r, PGconn *conn)
{
    if (r->k.resize)
        return 1;
    if (conn != NULL)
        (void)relay_db_limit_grew(r, conn);
    if (r->db.max_payload <= r->k.built_max_payload)
        return 0;
    r->k.resize = 1;
    r->k.resize_since = ferry__now_ms();
    return 1;
}

#define RESIZE_WAIT_MS 5000

int relay_kafka_resize_if_due(relay *r, int64_t now)
{
    if (!r->k.resize || r->k.rk == NULL)
        return 0;
    int held = r->wal != NULL ? rd_kafka_outq_len(r->k.rk) > 0 : sched_inflight(r->s) > 0;
    if (held && now - r->k.resize_since < RESIZE_WAIT_MS)
        return 0;
    int was = r->k.built_max_payload;
    relay_kafka_stop(r, 1000);
    if (relay_kafka_create(r) != 0)
        return -1;
    ferry__log_json(FERRY_LOG_INFO, "kafka.resized",
                   json_pack("{s:i, s:i}", "max_payload_bytes", r->k.built_max_payload,
                             "was", was),
                   "ferry.settings.max_payload_bytes grew from %d to %d bytes: the producer "
                   "is made again for it (message.max.bytes); the messages it refused go "
                   "out now, their tries not counted", was, r->k.built_max_payload);
    return 0;
}

/* "--kafka embedded": librdkafka's mock cluster in this process. */
static int start_embedded(relay *r)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    /* As in devkafka: the mock brokers' sockets take this setting. */
    rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr, sizeof errstr);
    r->k.mock_host = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (r->k.mock_host == NULL) {
        rd_kafka_conf_destroy(conf);
        ferry__log(FERRY_LOG_ERROR, "kafka.embedded", "%s", errstr);
        return -1;
    }
    r->k.mock = rd_kafka_mock_cluster_new(r->k.mock_host, 3);
    if (r->k.mock == NULL) {
        ferry__log(FERRY_LOG_ERROR, "kafka.embedded", "could not start the mock cluster");
        return -1;
    }
    snprintf(r->k.bootstrap, sizeof r->k.bootstrap, "%s",
             rd_kafka_mock_cluster_bootstraps(r->k.mock));
    ferry__log(FERRY_LOG_INFO, "kafka.embedded", "embedded development cluster at %s",
              r->k.bootstrap);
    return 0;
}

int relay_kafka_start(relay *r)
{
    if (pipe2(r->k.event_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        ferry__log(FERRY_LOG_ERROR, "relay.start", "pipe: out of descriptors");
        return -1;
    }
    if (strcmp(r->cfg->kafka, "embedded") == 0) {
        if (start_embedded(r) != 0)
            return -1;
    } else {
        snprintf(r->k.bootstrap, sizeof r->k.bootstrap, "%s", r->cfg->kafka);
    }
#ifdef FERRY_TEST_HOOKS
    /* Test hook (tests/test_relay.c, test_consume.c): after N rows
     * produced, inject librdkafka's fatal error (relay_fetch.c). Only the
     * test build (-DFERRY_TEST_HOOKS) reads it; the shipped relay does not
     * even hold the name (tests/install_check.sh). */
    const char *fatal = getenv("FERRY_RELAY_TEST_FATAL_AFTER");
    r->k.fatal_test_after = fatal ? atoi(fatal) : 0;
#endif
    return relay_kafka_create(r);
}

/* Whether a broker answers a metadata request within timeout_ms. */
bool relay_kafka_reachable(relay *r, int timeout_ms, char *why, size_t whylen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(r->k.rk, 0, NULL, &md, timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(why, whylen, "%s", rd_kafka_err2str(err));
        return false;
    }
    rd_kafka_metadata_destroy(md);
    atomic_store(&r->k.down, 0);
    return true;
}

void relay_kafka_free(relay *r)
{
    if (r->k.rk != NULL) {
        tdestroy(r->k.topics, free_topic);
        r->k.topics = NULL;
        rd_kafka_destroy(r->k.rk);
        r->k.rk = NULL;
    }
    if (r->k.mock != NULL)
        rd_kafka_mock_cluster_destroy(r->k.mock);
    if (r->k.mock_host != NULL)
        rd_kafka_destroy(r->k.mock_host);
    if (r->k.event_pipe[0] >= 0) {
        close(r->k.event_pipe[0]);
        close(r->k.event_pipe[1]);
    }
}
