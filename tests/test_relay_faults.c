/*
 * test_relay_faults.c — the relay under the faults of issue 11, each item
 * one test: a stuck partition or a refused topic, stopping with a stuck
 * partition, the lost wake-up, a lease renewed but not served, sizes,
 * partitioners, lag metrics, two relays with one name, scale-out under
 * load, recovery after a broker outage, starting before Kafka.
 *
 * Like test_relay.c: a real PostgreSQL (tests/harness/pgtmp.c), the
 * development broker (`ferry-relay devkafka`, tests/harness/kafkatmp.c)
 * with its fault commands, the relay as a child process (tu_proc.h), its
 * /metrics and /healthz through tu_http.h. Each test has its own topics;
 * after each, whatever it left (relays, faults, rows, leases, settings) is
 * cleared, so that a failing test does not fail the next.
 *
 * These tests were written against the relay of issue 11 before it was
 * built (the interface in its spec: stuck_ms, stop_grace_ms, /healthz
 * reasons, partition.stuck, kafka.waiting, ...); each says what the relay
 * before it did instead ("Today: ..."). That relay refused the new
 * settings (`--set stuck_ms=...`: exit 2); FERRY_TEST_TODAY=1 leaves them
 * out, to see where such a relay fails on behaviour. The items are the
 * issue's: 1 stuck partitions and keys, 2 latency at a low rate (its test
 * is test_relay_sim's, the figure bench-relay's), 3 the lost wake-up, 4 a
 * lease nobody serves, 5 sizes, 6 partitioners, 7 lag metrics, 8 two
 * relays with one name, 9 scale-out, 10 recovery after an outage, 11
 * starting before Kafka.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "harness/clock.h"
#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_http.h"
#include "tu_kafka.h"
#include "tu_load.h"          /* tu_sbuf */
#include "tu_proc.h"
#include "tu_relay.h"

static kt_broker *broker;

enum { PARTITIONS = 4, SHARDS = 16 };

/* ------------------------------------------------------------------ processes */

/* Every relay a test starts, so that the teardown stops what a failed
 * test left running (it would hold leases and publish the next test's
 * rows). */
enum { MAX_PROCS = 8 };
static tu_proc procs[MAX_PROCS];
static int nprocs;

/* Settings today's relay does not know, left out under FERRY_TEST_TODAY. */
static int new_setting(const char *arg)
{
    static const char *const names[] = {"stuck_ms=", "stop_grace_ms=", NULL};
    for (int i = 0; names[i] != NULL; i++)
        if (strncmp(arg, names[i], strlen(names[i])) == 0)
            return 1;
    return 0;
}

/* `ferry-relay run --db ... --kafka ... --holder HOLDER ARGS` logging at
 * debug into its log file; owned by the registry above. */
static tu_proc *relay_spawn(const char *holder, const char *const *args)
{
    const char *a[48] = {"--set", "log_level=debug"};
    int n = 2;
    int today = getenv("FERRY_TEST_TODAY") != NULL;
    for (int i = 0; args != NULL && args[i] != NULL && n < 46; i++) {
        if (today && strcmp(args[i], "--set") == 0 && args[i + 1] != NULL &&
            new_setting(args[i + 1])) {
            i++;
            continue;
        }
        a[n++] = args[i];
    }
    a[n] = NULL;
    const char *e[2] = {TU_RELAY_ASAN, NULL};
    assert_true(nprocs < MAX_PROCS);
    procs[nprocs] = tu_relay_start(kt_bootstrap(broker), holder, a, e);
    return &procs[nprocs++];
}

/* Run --once to completion: its exit status and log. */
static int relay_once(const char *holder, const char *const *args, char **log_out)
{
    const char *a[40] = {"--once"};
    int n = 1;
    for (int i = 0; args != NULL && args[i] != NULL && n < 38; i++)
        a[n++] = args[i];
    a[n] = NULL;
    tu_proc *p = relay_spawn(holder, a);
    int st = tu_proc_wait(p, 60000);
    if (st < 0)
        tu_proc_fail(p, "ferry-relay --once did not finish within 60 s");
    if (log_out != NULL)
        *log_out = tu_proc_log(p);
    return st;
}

static int count_in(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static int log_count(const tu_proc *p, const char *event)
{
    char *needle = tu_sprintf("\"event\":\"%s\"", event);
    char *log = tu_proc_log(p);
    int n = count_in(log, needle);
    free(log);
    free(needle);
    return n;
}

/* SIGTERM and wait for the exit; the status (fails if it does not exit). */
static int relay_stop(tu_proc *p, int timeout_ms)
{
    int st = tu_proc_stop(p, timeout_ms);
    if (st < 0)
        tu_proc_fail(p, "%s did not exit within %d ms of SIGTERM", p->name, timeout_ms);
    return st;
}

/* ------------------------------------------------------------------ health, metrics */

/* /metrics: malloc'd reply (free raw). */
static tu_http_reply metrics_get(int port)
{
    tu_http_reply r = tu_http_get(port, "/metrics");
    assert_int_equal(r.status, 200);
    return r;
}

/* The value of one series, or fail. */
static double metric(int port, const char *series)
{
    tu_http_reply r = metrics_get(port);
    double v = 0;
    if (tu_prom_find(r.body, series, &v) != 0) {
        print_error("%s\n", r.body);
        free(r.raw);
        fail_msg("metric %s is missing (or repeated)", series);
    }
    free(r.raw);
    return v;
}

/* Wait until the series reads at least lo and at most hi. */
static void await_metric(int port, const char *series, double lo, double hi, int timeout_ms)
{
    double v = -1;
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        v = metric(port, series);
        if (v >= lo && v <= hi)
            return;
        if (clk_mono_ms() > end)
            fail_msg("%s stayed %g, not in [%g, %g], for %d ms", series, v, lo, hi, timeout_ms);
        clk_sleep_ms(50);
    }
}

/* ------------------------------------------------------------------ data */

/* The partition librdkafka's murmur2 (and murmur2_random, for keys: Java's
 * default) gives key among PARTITIONS. */
static int partition_of(const char *key)
{
    return rd_kafka_msg_partitioner_murmur2(NULL, key, strlen(key), PARTITIONS, NULL, NULL);
}

/* Commit per_key messages for each of the keys PREFIX0 .. PREFIX<nkeys-1>
 * of topic in one transaction; payload {"g": i}. */
static void emit_keys(const char *topic, const char *prefix, int nkeys, int per_key)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT count(ferry.emit('%s', '%s' || (g %% %d), 'Tested', "
                           "json_build_object('g', g)::text)) "
                           "FROM generate_series(0, %d) g", topic, prefix, nkeys,
                           nkeys * per_key - 1);
    tu_exec(c, "BEGIN");
    tu_exec(c, sql);
    tu_exec(c, "COMMIT");
    free(sql);
    PQfinish(c);
}

/* The keys PREFIX0 .. PREFIX<nkeys-1> that go to partition part, as an SQL
 * array literal '{a,b}' (malloc'd); their number into *n. */
static char *keys_on_partition(const char *prefix, int nkeys, int part, int *n)
{
    size_t cap = 16 + (size_t)nkeys * (strlen(prefix) + 12);
    char *arr = malloc(cap);
    assert_non_null(arr);
    size_t o = (size_t)snprintf(arr, cap, "'{");
    *n = 0;
    for (int i = 0; i < nkeys; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s%d", prefix, i);
        if (partition_of(key) != part)
            continue;
        o += (size_t)snprintf(arr + o, cap - o, "%s%s", *n ? "," : "", key);
        (*n)++;
    }
    snprintf(arr + o, cap - o, "}'");
    return arr;
}



/* Wait until holder has n live shard leases; fail at once, with its log,
 * if the relay p exits first. */
static void await_leases(tu_proc *p, const char *holder, int n, int timeout_ms)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT count(*) FROM ferry.lease WHERE holder = '%s' "
                           "AND name LIKE 'shard:%%' AND expires_at > now()", holder);
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        long long got = tu_int(c, sql);
        if (got == n)
            break;
        if (tu_proc_poll(p) >= 0)
            tu_proc_fail(p, "%s exited with %d while holding %lld of the %d leases awaited",
                         p->name, p->status, got, n);
        if (clk_mono_ms() > end)
            tu_proc_fail(p, "%s held %lld shard leases, not %d, for %d ms", holder, got, n,
                         timeout_ms);
        clk_sleep_ms(10);
    }
    free(sql);
    PQfinish(c);
}


/* A new database of the test cluster, migrated by ferry-relay migrate:
 * its conninfo (caller frees). */
static char *migrated_database(const char *name)
{
    char *ci = tu_fresh_database(name);
    const char *migrate[] = {tu_relay_bin(), "migrate", "--db", ci, NULL};
    tu_proc m = tu_proc_start(migrate, NULL);
    assert_int_equal(tu_proc_wait(&m, 60000), 0);
    tu_proc_done(&m);
    return ci;
}

/* Partition 0 of topic (PARTITIONS partitions) without a leader while
 * relay p (holder) holds every shard and is given per_key messages on
 * each of keys prefix0..prefix<keys-1>: returns once every key of the
 * other partitions is published, partition 0's in flight. Its keys, as a
 * text[] literal (caller frees); *nstuck of them. */
static char *stall_partition_zero(tu_proc *p, const char *holder, const char *topic,
                                  const char *prefix, int keys, int per_key, int *nstuck)
{
    await_leases(p, holder, SHARDS, 30000);
    assert_int_equal(kt_command(broker, "leader %s 0 -1", topic), 0);
    char *stuck = keys_on_partition(prefix, keys, 0, nstuck);
    assert_true(*nstuck > 0 && *nstuck < keys);
    emit_keys(topic, prefix, keys, per_key);
    PGconn *c = tu_connect();
    char *healthy_left = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE topic = '%s' "
                                    "AND aggregateid <> ALL (%s::text[])", topic, stuck);
    tu_await(c, healthy_left, 15000);
    free(healthy_left);
    PQfinish(c);
    return stuck;
}

/* ------------------------------------------------------------------ 1. stuck */

/*
 * Item 1. Partition 0 of a 4-partition topic loses its leader while the
 * relay publishes: the keys of partitions 1-3 keep flowing, the relay
 * says it is stuck (/healthz 503 "stuck", one partition.stuck, the
 * gauges), and once the leader is back everything arrives in per-key
 * order, with one partition.recovered.
 *
 * Today: the first round's messages for partition 0 stay in flight for
 * ever (message.timeout.ms=0) and a new sweep starts only when nothing is
 * in flight, so the second round of the healthy keys stays in the outbox:
 * "timed out after 15000 ms waiting for: ... count(*) = 0 ... <> ALL".
 * (/healthz would answer 200 and nothing would be logged.)
 */
static void a_leaderless_partition_stalls_only_its_keys(void **state)
{
    const char *topic = "f.leaderless";
    enum { KEYS = 40 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "stuck_ms=500", NULL};
    tu_proc *p = relay_spawn("stuck-a", args);
    int port = tu_proc_metrics_port(p);
    await_leases(p, "stuck-a", SHARDS, 30000);
    tu_await_health(port, 200, NULL, 10000);

    int nstuck = 0;
    char *stuck = keys_on_partition("k", KEYS, 0, &nstuck);
    assert_true(nstuck > 0 && nstuck < KEYS);
    assert_int_equal(kt_command(broker, "leader %s 0 -1", topic), 0);
    PGconn *c = tu_connect();
    char *healthy_left = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE topic = '%s' "
                                    "AND aggregateid <> ALL (%s::text[])", topic, stuck);
    /* Round 1: one message per key; the relay takes them all (the healthy
     * ones are delivered, partition 0's stay in flight) ... */
    emit_keys(topic, "k", KEYS, 1);
    tu_await(c, healthy_left, 15000);
    /* ... round 2 comes while they are in flight: the healthy keys flow. */
    emit_keys(topic, "k", KEYS, 2);
    tu_await(c, healthy_left, 15000);
    /* The fault held: partition 0's keys are all still there. */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE "
                                             "topic = '%s' AND aggregateid = ANY (%s::text[])",
                                             topic, stuck)),
                     3 * nstuck);

    /* Seen and said: not ready, stuck, the gauges. */
    tu_await_health(port, 503, "stuck", 10000);
    await_metric(port, "ferry_relay_stuck_partitions", 1, 1e9, 10000);
    /* Stuck means in flight for stuck_ms (0.5 s) at least. */
    await_metric(port, "ferry_relay_oldest_inflight_seconds", 0.5, 1e9, 10000);
    tu_proc_await_log(p, "\"event\":\"partition.stuck\"", 10000);

    /* The leader comes back: everything goes, in order, and it says so. */
    assert_int_equal(kt_command(broker, "leader %s 0 1", topic), 0);
    tu_await_outbox_empty(topic, 30000);
    tu_await_health(port, 200, NULL, 10000);
    await_metric(port, "ferry_relay_stuck_partitions", 0, 0, 10000);
    tu_proc_await_log(p, "\"event\":\"partition.recovered\"", 10000);
    /* Once each, not once per retry or per look. */
    assert_int_equal(log_count(p, "partition.stuck"), 1);
    assert_int_equal(log_count(p, "partition.recovered"), 1);
    assert_int_equal(relay_stop(p, 30000), 0);

    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, KEYS * 3, 10000, KEYS * 3);
    assert_int_equal(tc.keys, KEYS);
    free(healthy_left);
    free(stuck);
    PQfinish(c);
}

/*
 * Item 1, a key: a message the producer refuses (larger than
 * message.max.bytes) keeps failing and is retried (max_attempts is high);
 * past stuck_ms its key is said stuck once (key.stuck), counted
 * (ferry_relay_stuck_keys), and /healthz is not ready naming it, while the
 * other key goes out. Mended (the operator shrinks the row), it goes out,
 * and the key is said recovered once.
 */
static void a_failing_key_is_said_stuck_once_and_recovered_once(void **state)
{
    const char *topic = "f.failing";
    PGconn *c = tu_connect();
    tu_emit_poison(c, topic, "bad", "good");
    const char *args[] = {"--metrics", "127.0.0.1:0", "--kafka-prop", "message.max.bytes=100000",
                          "--set", "stuck_ms=300", "--set", "max_attempts=1000", NULL};
    tu_proc *p = relay_spawn("failing-a", args);
    int port = tu_proc_metrics_port(p);
    tu_await(c, "SELECT count(*) = 0 FROM ferry.outbox WHERE topic = 'f.failing' "
                "AND aggregateid = 'good'", 15000);
    tu_proc_await_log(p, "\"event\":\"key.stuck\"", 15000);
    await_metric(port, "ferry_relay_stuck_keys", 1, 1, 10000);
    tu_await_health(port, 503, "key f.failing/bad stuck", 10000);
    /* The fault held: the key's two rows wait, retried. */
    assert_true(tu_int(c, "SELECT min(attempts) FROM ferry.outbox WHERE topic = 'f.failing' "
                          "AND aggregateid = 'bad' AND payload ? 'big'") >= 1);
    tu_exec(c, "UPDATE ferry.outbox SET payload = '{\"mended\": true}' "
               "WHERE topic = 'f.failing' AND aggregateid = 'bad' AND payload ? 'big'");
    tu_await_outbox_empty(topic, 30000);
    tu_proc_await_log(p, "\"event\":\"key.recovered\"", 10000);
    await_metric(port, "ferry_relay_stuck_keys", 0, 0, 10000);
    tu_await_health(port, 200, NULL, 10000);
    assert_int_equal(log_count(p, "key.stuck"), 1);
    assert_int_equal(log_count(p, "key.recovered"), 1);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 10000, 3);
    PQfinish(c);
}

/*
 * A failing key whose message goes to the dead letters is said stuck
 * once, then "left" once, never "recovered": its later message stays
 * parked behind the letter, which is anything but a recovery (an outside
 * audit read key.recovered, "no longer failing", 2.5 s after the dead
 * letter). Before: no key.left, and key.recovered once.
 */
static void a_dead_lettered_key_is_said_left_not_recovered(void **state)
{
    const char *topic = "f.left";
    PGconn *c = tu_connect();
    tu_emit_poison(c, topic, "bad", "good");
    const char *args[] = {"--kafka-prop", "message.max.bytes=100000", "--set", "stuck_ms=300",
                          "--set", "max_attempts=5", NULL};
    tu_proc *p = relay_spawn("left-a", args);
    tu_await(c, "SELECT count(*) = 1 FROM ferry.dead_letter WHERE consumer = '' "
                "AND topic = 'f.left' AND aggregateid = 'bad'", 30000);
    tu_proc_await_log(p, "\"event\":\"key.left\"", 15000);
    /* The fault held: the key's later message waits behind the letter. */
    assert_true(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'f.left' "
                          "AND aggregateid = 'bad'") == 1);
    assert_int_equal(log_count(p, "key.stuck"), 1);
    assert_int_equal(log_count(p, "key.left"), 1);
    assert_int_equal(log_count(p, "key.recovered"), 0);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_exec(c, "DELETE FROM ferry.outbox WHERE topic = 'f.left'");
    tu_exec(c, "DELETE FROM ferry.dead_letter WHERE topic = 'f.left'");
    PQfinish(c);
}

/*
 * Item 1, the other half: a topic the broker refuses (its metadata says
 * TOPIC_AUTHORIZATION_FAILED; devkafka's topic-error affects Metadata
 * replies only) stops only its own keys; another topic keeps flowing.
 * max_attempts is high, so that the refused messages stay failing rather
 * than become dead letters during the test.
 *
 * Today: librdkafka cannot place the refused topic's messages ("f.refused
 * [0] is unknown (partition_cnt 0)") and, with message.timeout.ms=0,
 * keeps them for ever; the relay counts them in flight and starts no new
 * sweep, so the allowed topic's second round stays in the outbox:
 * "timed out after 15000 ms waiting for: SELECT count(*) = 0 FROM
 * ferry.outbox WHERE topic = 'f.allowed'". (Nothing is dead-lettered:
 * no delivery report ever comes.)
 */
static void a_refused_topic_stalls_only_its_keys(void **state)
{
    const char *refused = "f.refused", *allowed = "f.allowed";
    enum { KEYS = 8 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", refused, PARTITIONS), 0);
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", allowed, PARTITIONS), 0);
    assert_int_equal(kt_command(broker, "topic-error %s TOPIC_AUTHORIZATION_FAILED", refused),
                     0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "stuck_ms=500",
                          "--set", "max_attempts=1000", NULL};
    tu_proc *p = relay_spawn("refused-a", args);
    int port = tu_proc_metrics_port(p);
    await_leases(p, "refused-a", SHARDS, 30000);

    PGconn *c = tu_connect();
    char *allowed_left = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox "
                                    "WHERE topic = '%s'", allowed);
    emit_keys(refused, "r", KEYS, 1);
    emit_keys(allowed, "a", KEYS, 1);
    tu_await(c, allowed_left, 15000);
    emit_keys(allowed, "a", KEYS, 2);
    tu_await(c, allowed_left, 15000);
    /* The fault held: nothing of the refused topic was acknowledged or
     * dead-lettered. */
    assert_int_equal(tu_outbox_rows(refused), KEYS);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter"), 0);

    tu_await_health(port, 503, "stuck", 10000);
    /* Said once per partition or key, not once per retry: at most one
     * event per refused key (KEYS) or partition (PARTITIONS). */
    for (int64_t end = clk_mono_ms() + 10000;
         log_count(p, "partition.stuck") + log_count(p, "key.stuck") == 0;) {
        if (clk_mono_ms() > end)
            tu_proc_fail(p, "neither partition.stuck nor key.stuck was logged");
        clk_sleep_ms(50);
    }

    /* Authorised again: everything arrives, in order. */
    assert_int_equal(kt_command(broker, "topic-error %s NO_ERROR", refused), 0);
    tu_await_outbox_empty(refused, 30000);
    tu_await_health(port, 200, NULL, 10000);
    int stuck = log_count(p, "partition.stuck") + log_count(p, "key.stuck");
    int recovered = log_count(p, "partition.recovered") + log_count(p, "key.recovered");
    assert_true(stuck >= 1 && stuck <= KEYS + PARTITIONS);
    assert_true(recovered >= 1 && recovered <= stuck);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), refused, KEYS, 10000, KEYS);
    tu_assert_topic(kt_bootstrap(broker), allowed, KEYS * 3, 10000, KEYS * 3);
    free(allowed_left);
    PQfinish(c);
}

/*
 * A topic the broker does not know (not created yet, auto-creation off):
 * librdkafka fails its messages with "Unknown topic" once the metadata
 * wait is over (topic.metadata.propagation.max.ms, short here). That is
 * the topic's fault, not the messages': they are held and retried, not
 * counted towards a dead letter, even with max_attempts 1; once the topic
 * exists, they go, each key in order. Before: every key of the topic was
 * dead-lettered within a second of the first failure (an outside audit).
 */
static void an_unknown_topic_holds_its_messages_and_dead_letters_none(void **state)
{
    const char *topic = "f.later";
    enum { KEYS = 4 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    assert_int_equal(kt_command(broker, "topic-error %s UNKNOWN_TOPIC_OR_PART", topic), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "max_attempts=1",
                          "--kafka-prop", "topic.metadata.propagation.max.ms=200", NULL};
    tu_proc *p = relay_spawn("later-a", args);
    int port = tu_proc_metrics_port(p);
    await_leases(p, "later-a", SHARDS, 30000);
    emit_keys(topic, "k", KEYS, 2);
    /* The fault fired: deliveries (or produce() calls) failed. */
    for (int64_t end = clk_mono_ms() + 20000;;) {
        double d = 0, pr = 0;
        tu_http_reply r = tu_http_get(port, "/metrics");
        tu_prom_find(r.body, "ferry_relay_failures_total{kind=\"delivery\"}", &d);
        tu_prom_find(r.body, "ferry_relay_failures_total{kind=\"produce\"}", &pr);
        free(r.raw);
        if (d + pr >= 2)
            break;
        if (clk_mono_ms() > end)
            tu_proc_fail(p, "no delivery to the unknown topic failed within 20 s");
        clk_sleep_ms(50);
    }
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'f.later'"),
                     0);
    assert_int_equal(tu_outbox_rows(topic), KEYS * 2);
    assert_int_equal(kt_command(broker, "topic-error %s NO_ERROR", topic), 0);
    tu_await_outbox_empty(topic, 30000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'f.later'"),
                     0);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, KEYS * 2, 10000, KEYS * 2);   /* in order */
    PQfinish(c);
}

/* ------------------------------------------------------------------ 2. stop */

/*
 * Item 1, stopping. SIGTERM with messages in flight to a leaderless partition: the
 * relay exits within stop_grace_ms (2 s; we wait 10 s, today's relay
 * takes 30 s and more), with status 1 (not everything it produced was
 * delivered), and the stuck rows stay in the outbox.
 *
 * Today: it waits 30 s ("gave up after 30 s with N in flight"):
 * "did not exit within 10000 ms of SIGTERM".
 */
static void sigterm_finishes_within_the_grace_with_a_stuck_partition(void **state)
{
    const char *topic = "f.grace";
    enum { KEYS = 12 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--set", "stop_grace_ms=2000", NULL};
    tu_proc *p = relay_spawn("grace-a", args);
    int nstuck = 0;
    char *stuck = stall_partition_zero(p, "grace-a", topic, "g", KEYS, 2, &nstuck);
    PGconn *c = tu_connect();
    tu_proc_await_log(p, "\"event\":\"batch.produced\"", 10000);

    kill(p->pid, SIGTERM);
    int st = tu_proc_wait(p, 10000);
    if (st < 0)
        tu_proc_fail(p, "did not exit within 10000 ms of SIGTERM (stop_grace_ms=2000)");
    assert_int_equal(st, 1);
    /* Not acknowledged: still there, for the next relay. */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE "
                                             "topic = '%s' AND aggregateid = ANY (%s::text[]) "
                                             "AND published_at IS NULL", topic, stuck)),
                     2 * nstuck);
    assert_int_equal(kt_command(broker, "leader %s 0 1", topic), 0);
    free(stuck);
    PQfinish(c);
}

/*
 * SIGTERM with the database hung: the relay's own sessions stopped
 * (SIGSTOP of their server processes: the sockets stay open, nothing
 * answers, no statement_timeout fires). Whatever the relay waits on then
 * (its lease renewal, the last acknowledgement, the lease release, the lag
 * gauges' session), it must exit within stop_grace_ms plus its 5 s for
 * the final phase, exit 1, saying so; what it had not acknowledged stays
 * in the outbox for the next relay.
 *
 * Before: the final lease release waited on the stopped session for ever
 * (the audit saw 47 s, until the processes were continued): "did not exit
 * within 9000 ms of SIGTERM".
 */
static pid_t hung[8];
static int nhung;

static void hang_sessions(PGconn *c, const char *holder)
{
    char *sql = tu_sprintf("SELECT pid FROM pg_stat_activity WHERE application_name IN "
                           "('ferry-relay %s', 'ferry-relay-lag %s')", holder, holder);
    PGresult *res = PQexec(c, sql);
    free(sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res) && nhung < 8; i++) {
        pid_t pid = (pid_t)atol(PQgetvalue(res, i, 0));
        assert_int_equal(kill(pid, SIGSTOP), 0);
        hung[nhung++] = pid;
    }
    PQclear(res);
}

static void release_sessions(void)
{
    for (int i = 0; i < nhung; i++)
        kill(hung[i], SIGCONT);
    nhung = 0;
}

static void sigterm_is_bounded_when_the_database_hangs(void **state)
{
    const char *topic = "f.hung";
    enum { GRACE_MS = 1000, FINAL_MS = 5000 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "stop_grace_ms=1000", NULL};
    tu_proc *p = relay_spawn("hung-a", args);
    await_leases(p, "hung-a", SHARDS, 30000);
    emit_keys(topic, "h", 8, 1);
    tu_await_outbox_empty(topic, 15000);
    PGconn *c = tu_connect();
    /* main, acknowledgement and lag sessions */
    tu_await(c, "SELECT count(*) = 3 FROM pg_stat_activity WHERE application_name IN "
                "('ferry-relay hung-a', 'ferry-relay-lag hung-a')", 15000);
    hang_sessions(c, "hung-a");
    assert_int_equal(nhung, 3);
    emit_keys(topic, "k", 8, 1);    /* not fetched: the main session is stopped */

    int64_t t0 = clk_mono_ms();
    kill(p->pid, SIGTERM);
    int st = tu_proc_wait(p, GRACE_MS + FINAL_MS + 3000);
    int64_t took = clk_mono_ms() - t0;
    release_sessions();
    if (st < 0)
        tu_proc_fail(p, "did not exit within %d ms of SIGTERM (stop_grace_ms=%d, the database "
                     "hung)", GRACE_MS + FINAL_MS + 3000, GRACE_MS);
    assert_int_equal(st, 1);
    assert_true(took >= GRACE_MS + FINAL_MS - 500);     /* the watchdog's deadline */
    assert_int_equal(log_count(p, "relay.stop_forced"), 1);
    /* Nothing lost: once its leases expired (their TTL passing, made
     * short here), the next relay publishes what is left. */
    assert_int_equal(tu_int(c, "WITH e AS (UPDATE ferry.lease SET expires_at = now() "
                               "WHERE holder = 'hung-a' RETURNING 1) SELECT count(*) FROM e"),
                     SHARDS + 1);
    assert_int_equal(relay_once("hung-b", NULL, NULL), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 16, 10000, 16);
    PQfinish(c);
}

/* ------------------------------------------------------------------ 3. wake-up */

/* The interleaving of the lost wake-up: a writer begins (under
 * REPEATABLE READ, taking its snapshot, when repeatable) while c holds
 * every shard's busy lock, as a busy relay does; with read committed it
 * emits then, so its emit finds its shard busy and does not NOTIFY. The
 * busy locks go, the relay (holder) starts, finds nothing, asks to be
 * woken and takes its last look; only then does the writer commit (and,
 * when repeatable, emit). Its message must go within 15 s, the poll
 * being a minute away. */
static void lost_wakeup_interleaving(const char *topic, const char *holder, int repeatable)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT pg_advisory_lock(l.classid, l.objid) "
               "FROM generate_series(0, 15) s, ferry.wake_shard_lock(s) l");
    PGconn *w = tu_connect();
    char *emit = tu_sprintf("SELECT ferry.emit('%s', 'w', 'Tested', '{\"n\": 1}')", topic);
    if (repeatable) {
        tu_exec(w, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        tu_exec(w, "SELECT count(*) FROM ferry.settings");        /* the snapshot */
    } else {
        tu_exec(w, "BEGIN");
        tu_exec(w, emit);
    }
    tu_exec(c, "SELECT pg_advisory_unlock_all()");
    const char *args[] = {"--set", "poll_interval_ms=60000", NULL};
    tu_proc *p = relay_spawn(holder, args);
    await_leases(p, holder, SHARDS, 30000);
    /* The interleaving needs the commit after the relay's last look. The
     * relay of issue 11 takes that look only once it gets the lock the
     * writer holds, i.e. after the commit, so there is nothing of it to
     * await; the relay before it took it within milliseconds of asking
     * to be woken. This window lets it: a way to force the interleaving,
     * not a synchronisation (without it, the commit sometimes came first
     * and the test passed by luck on that relay). */
    clk_sleep_ms(500);
    assert_int_equal(tu_proc_poll(p), -1);
    if (repeatable)
        tu_exec(w, emit);
    tu_exec(w, "COMMIT");
    tu_await_outbox_empty(topic, 15000);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 1, 10000, 1);
    free(emit);
    PQfinish(w);
    PQfinish(c);
}

/*
 * Item 3, the interleaving of the lost wake-up, made to happen: a writer
 * emits while its shard is busy (here c holds every shard's busy lock, as
 * a busy relay does), so its emit will not NOTIFY, and keeps its
 * transaction open; the busy locks go, the relay starts, finds nothing,
 * asks to be woken and takes its last look; only then does the writer
 * commit. The backstop poll is a minute away: the message must still go
 * within 15 s.
 *
 * Before issue 11: the relay's last look came before the commit and no
 * NOTIFY was sent, so the row waited for the 60 s poll: "timed out after
 * 15000 ms waiting for: SELECT count(*) = 0 FROM ferry.outbox WHERE
 * topic = 'f.wake'".
 */
static void a_commit_is_never_left_for_the_poll(void **state)
{
    lost_wakeup_interleaving("f.wake", "wake-a", 0);
}

/*
 * The same interleaving with a writer under REPEATABLE READ: its snapshot
 * is taken while every shard is busy, before the relay starts and asks to
 * be woken; its emit comes after the relay's last look. The relay is then
 * asleep until a NOTIFY or the poll a minute away: the message must go
 * within 15 s.
 *
 * Before migration 26: emit read ferry.settings.wake_relays, and read it
 * again under the wake-up lock, both times through the transaction's
 * snapshot, which had the flag off: no NOTIFY, and "timed out after
 * 15000 ms waiting for: SELECT count(*) = 0 FROM ferry.outbox WHERE
 * topic = 'f.wake.rr'".
 */
static void a_repeatable_read_commit_is_never_left_for_the_poll(void **state)
{
    lost_wakeup_interleaving("f.wake.rr", "wake-rr", 1);
}

/*
 * Two relays, 8 shards each. A's shards get bursts of 200 rows, so that A
 * looks again by itself and asks writers of its shards not to notify; B's
 * get none, so B sleeps until a NOTIFY (its poll is a minute away). A
 * message for one of B's shards, written right after a burst while A is
 * busy, must reach B through a NOTIFY: published within 15 s.
 *
 * Before migration 26: one flag for the database, which A had cleared
 * while B (idle, having set it) slept; A set it again once idle, with no
 * writer left to notify: "timed out after 15000 ms waiting for: SELECT
 * count(*) = 0 FROM ferry.outbox WHERE topic = 'f.idle'".
 */
static void an_idle_relay_beside_a_busy_one_is_woken(void **state)
{
    const char *args[] = {"--set", "poll_interval_ms=60000", NULL};
    tu_proc *a = relay_spawn("wake-busy", args);
    await_leases(a, "wake-busy", SHARDS, 30000);
    tu_proc *b = relay_spawn("wake-idle", args);
    await_leases(b, "wake-idle", SHARDS / 2, 30000);
    await_leases(a, "wake-busy", SHARDS / 2, 30000);
    PGconn *c = tu_connect();
    char *idle_key = tu_str(c, "SELECT k FROM (SELECT 'i' || g AS k FROM generate_series(1, 4000) g) x "
                               "WHERE 'shard:' || ((hashtextextended(k, 0) & 2147483647) % 16) IN "
                               "(SELECT name FROM ferry.lease WHERE holder = 'wake-idle') LIMIT 1");
    /* A burst for A's shards, then a look for 100 ms whether A is busy,
     * i.e. holds the busy lock of its shards; until it is. */
    int bursts = 0, busy = 0;
    while (!busy) {
        if (++bursts > 50)
            fail_msg("relay A was not busy after 50 bursts of 200 rows");
        tu_exec(c, "SELECT count(ferry.emit('f.busy', k, 'Tested', '{}')) FROM "
                   "(SELECT 'b' || g AS k FROM generate_series(1, 4000) g "
                   " WHERE 'shard:' || ((hashtextextended('b' || g, 0) & 2147483647) % 16) IN "
                   " (SELECT name FROM ferry.lease WHERE holder = 'wake-busy') LIMIT 200) x");
        for (int64_t end = clk_mono_ms() + 100; !busy && clk_mono_ms() < end;)
            busy = tu_int(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                             "AND classid = 1718903418 AND mode = 'ExclusiveLock' AND granted "
                             "AND pid IN (SELECT pid FROM pg_stat_activity "
                             "            WHERE application_name = 'ferry-relay wake-busy')") > 0;
    }
    char *sql = tu_sprintf("SELECT ferry.emit('f.idle', '%s', 'Tested', '{\"n\": 1}')", idle_key);
    tu_exec(c, sql);
    print_message("%d bursts of 200 rows for the busy relay\n", bursts);
    tu_await_outbox_empty("f.idle", 15000);
    tu_await_outbox_empty("f.busy", 60000);
    assert_int_equal(relay_stop(a, 30000), 0);
    assert_int_equal(relay_stop(b, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), "f.idle", 1, 10000, 1);
    free(sql);
    free(idle_key);
    PQfinish(c);
}

/*
 * A busy lock that another session takes while the relay sleeps, its
 * handshake long done: a relay that was stopped (SIGSTOP, a frozen VM)
 * while busy keeps its shards' busy locks through its session after its
 * leases went to this relay, and a role that may connect can take them
 * too. Writers of those shards then do not notify. The relay must notice
 * at its next lease tick (every 8 s here) and then look by itself for as
 * long as the lock is held: the second message goes within a tick and a
 * half, and the third, written once the second is out, within 4 s, half
 * a tick (the poll is a minute away).
 *
 * Before: the relay checked for such a lock only when it asked to be
 * woken, so the second message waited for the poll: "timed out after
 * 12000 ms waiting for: SELECT count(*) = 0 FROM ferry.outbox WHERE
 * topic = 'f.foreign'". Without the check in the handshake (the relay
 * looking once per tick only), the third one waits for the next tick.
 */
static void a_busy_lock_taken_behind_a_sleeping_relay_is_noticed(void **state)
{
    const char *topic = "f.foreign";
    const char *args[] = {"--set", "poll_interval_ms=60000", "--set", "lease_ttl_ms=24000",
                          "--metrics", "127.0.0.1:0", NULL};
    tu_proc *p = relay_spawn("foreign-a", args);
    int port = tu_proc_metrics_port(p);
    await_leases(p, "foreign-a", SHARDS, 30000);
    assert_true(metric(port, "ferry_relay_wake_foreign_lock") == 0);
    PGconn *c = tu_connect();
    /* Awake, woken by a NOTIFY: its handshake is done. */
    tu_exec(c, "SELECT ferry.emit('f.foreign', 'k', 'Tested', '{\"n\": 1}')");
    tu_await_outbox_empty(topic, 15000);
    PGconn *o = tu_connect();
    tu_exec(o, "SELECT pg_advisory_lock(l.classid, l.objid) "
               "FROM generate_series(0, 15) s, ferry.wake_shard_lock(s) l");
    tu_exec(c, "SELECT ferry.emit('f.foreign', 'k', 'Tested', '{\"n\": 2}')");
    tu_await_outbox_empty(topic, 12000);
    tu_exec(c, "SELECT ferry.emit('f.foreign', 'k', 'Tested', '{\"n\": 3}')");
    tu_await_outbox_empty(topic, 4000);
    tu_proc_await_log(p, "\"event\":\"wake.foreign_lock\"", 15000);
    await_metric(port, "ferry_relay_wake_foreign_lock", 1, 1, 15000);
    tu_exec(o, "SELECT pg_advisory_unlock_all()");
    /* Said once when seen, once when gone; not at every try. */
    tu_proc_await_log(p, "\"event\":\"wake.foreign_lock_gone\"", 15000);
    await_metric(port, "ferry_relay_wake_foreign_lock", 0, 0, 15000);
    assert_int_equal(log_count(p, "wake.foreign_lock"), 1);
    assert_int_equal(log_count(p, "wake.foreign_lock_gone"), 1);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 3, 10000, 3);
    PQfinish(o);
    PQfinish(c);
}

/*
 * A relay newer than its database's schema refuses to start, naming the
 * version it needs, rather than failing its wake-up statements (they need
 * ferry.wake_shard_lock, schema 26) on every turn of its loop.
 */
static void a_schema_older_than_the_relay_is_refused(void **state)
{
    char *ci = migrated_database("old_schema_db");
    PGconn *o = PQconnectdb(ci);
    assert_int_equal(PQstatus(o), CONNECTION_OK);
    tu_exec(o, "DELETE FROM ferry.schema_version WHERE version >= 26");
    PQfinish(o);
    const char *args[] = {"--db", ci, NULL};
    char *log = NULL;
    assert_int_equal(relay_once("old-schema", args, &log), 1);
    if (strstr(log, "ferry schema version 25 is older than this relay needs (26)") == NULL)
        fail_msg("no word of the schema's version in the log:\n%s", log);
    free(log);
    free(ci);
    PGconn *c = tu_connect();
    tu_exec(c, "DROP DATABASE old_schema_db");
    PQfinish(c);
}

/* ------------------------------------------------------------------ 4. leases */

/*
 * Item 4. The state an acquire leaves when its UPDATE committed but its
 * reply was lost: a shard lease under the relay's name that the relay
 * does not know it holds. It must serve it (or release it, and then take
 * it like any free shard): its rows get published.
 *
 * So that the relay does not hold every shard, shards 0-7 are held for an
 * hour by "lease-other", which has no heartbeat: it counts as no relay,
 * so the relay's share stays all 16 and a released shard is free for it
 * to acquire again (with a live other relay, a release would leave the
 * shard to nobody, since the relay would be at its share of 8).
 *
 * Today: renewal extends the injected lease for ever but the relay only
 * serves the shards in its held[]: "timed out after 15000 ms waiting for:
 * SELECT count(*) = 0 FROM ferry.outbox WHERE shard = N".
 */
static void a_lease_renewed_but_not_served_is_served(void **state)
{
    const char *topic = "f.lease";
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.lease (name) SELECT 'shard:' || s "
               "FROM generate_series(0, 15) s ON CONFLICT (name) DO NOTHING");
    tu_exec(c, "UPDATE ferry.lease SET holder = 'lease-other', epoch = epoch + 1, "
               "expires_at = now() + interval '1 hour', acquired_at = now(), "
               "renewed_at = now() "
               "WHERE name IN (SELECT 'shard:' || s FROM generate_series(0, 7) s)");
    const char *args[] = {"--set", "lease_ttl_ms=3000", NULL};
    tu_proc *p = relay_spawn("lease-a", args);
    await_leases(p, "lease-a", SHARDS / 2, 30000);
    /* Rows in every shard: the relay's go, shards 0-7's stay. */
    emit_keys(topic, "l", 64, 2);
    tu_await(c, "SELECT count(*) = 0 FROM ferry.outbox o JOIN ferry.lease l "
                "ON l.name = 'shard:' || o.shard WHERE l.holder = 'lease-a'", 15000);
    long long n = tu_int(c, "SELECT min(shard) FROM ferry.outbox WHERE topic = 'f.lease'");
    assert_true(n >= 0 && n < SHARDS / 2);
    long long rows = tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox "
                                             "WHERE shard = %lld", n));
    assert_true(rows > 0);
    /* The lost reply's state: ours by name, unknown to the relay. */
    assert_int_equal(tu_int_of(c, tu_sprintf("WITH u AS (UPDATE ferry.lease SET "
                                             "holder = 'lease-a', epoch = epoch + 1, "
                                             "expires_at = now() + interval '3 s', "
                                             "acquired_at = now(), renewed_at = now() "
                                             "WHERE name = 'shard:%lld' RETURNING 1) "
                                             "SELECT count(*) FROM u", n)),
                     1);
    char *sql = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE shard = %lld", n);
    tu_await(c, sql, 15000);
    free(sql);
    /* The other holder's shards were not touched. */
    assert_true(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE shard <> %lld",
                                        n)) > 0);
    assert_int_equal(relay_stop(p, 30000), 0);
    PQfinish(c);
}

/*
 * A lease row whose name is not a shard's as the relay writes it
 * ('shard:-0', '+0', '00': rows a role with INSERT on ferry.lease can
 * add) is not a shard's: the relay read 'shard:-0' as shard 0, served
 * shard 0 under it while another relay held 'shard:0', and its
 * acknowledgements were refused (an outside audit). Here the other holder
 * keeps shard:0 for an hour and 'shard:-0' is ours by name: shard 0's
 * rows stay, and --once ends without a refused acknowledgement.
 */
static void a_lease_name_that_is_not_a_shards_serves_nothing(void **state)
{
    const char *topic = "f.leasename";
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.lease (name) SELECT 'shard:' || s "
               "FROM generate_series(0, 15) s ON CONFLICT (name) DO NOTHING");
    tu_exec(c, "UPDATE ferry.lease SET holder = 'leasename-other', epoch = epoch + 1, "
               "expires_at = now() + interval '1 hour' WHERE name = 'shard:0'");
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) VALUES "
               "('shard:-0', 'leasename-a', 1, now() + interval '1 hour'), "
               "('shard:00', 'leasename-a', 1, now() + interval '1 hour'), "
               "('shard:+0', 'leasename-a', 1, now() + interval '1 hour')");
    emit_keys(topic, "n", 64, 1);
    long long in0 = tu_int(c, "SELECT count(*) FROM ferry.outbox "
                              "WHERE topic = 'f.leasename' AND shard = 0");
    assert_true(in0 > 0);
    char *log = NULL;
    int st = relay_once("leasename-a", NULL, &log);
    int refused = strstr(log, "\"event\":\"ack.refused\"") != NULL;
    free(log);
    tu_exec(c, "DELETE FROM ferry.lease WHERE name IN ('shard:-0', 'shard:00', 'shard:+0'); "
               "UPDATE ferry.lease SET holder = NULL, expires_at = now() WHERE name = 'shard:0'");
    if (st != 0 || refused)
        fail_msg("--once beside a lease 'shard:-0': exit %d, acknowledgements refused: %d",
                 st, refused);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox "
                               "WHERE topic = 'f.leasename' AND shard = 0"), in0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox "
                               "WHERE topic = 'f.leasename' AND shard <> 0"), 0);
    PQfinish(c);
}

/* ------------------------------------------------------------------ 5. sizes */

/* A compact JSON array of n ones: 2n + 1 bytes; as jsonb's canonical text
 * ("[1, 1, ...]") 3n bytes. malloc'd. */
static char *ones(int n)
{
    tu_sbuf b = {0};
    tu_sb_printf(&b, "[");
    for (int i = 0; i < n; i++)
        tu_sb_printf(&b, i > 0 ? ",1" : "1");
    tu_sb_printf(&b, "]");
    return b.s;
}

/*
 * Item 5. With max_payload_bytes = 1000: a compact array of 801 bytes
 * whose canonical text (what the relay publishes) is 1200 bytes is
 * refused by ferry.emit() and by ferry_emit(), naming the field payload;
 * one of 601 bytes (canonical 900) is accepted and published.
 *
 * Today: the server checks the input's size, so the 801-byte array is
 * accepted: "ferry.emit() accepted a payload whose canonical text is
 * 1200 bytes".
 */
static void oversized_canonical_payloads_are_refused_at_emit(void **state)
{
    const char *topic = "f.size";
    PGconn *c = tu_connect();
    tu_exec(c, "UPDATE ferry.settings SET max_payload_bytes = 1000");
    char *big = ones(400), *fits = ones(300);
    assert_int_equal(strlen(big), 801);
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT octet_length('%s'::jsonb::text)", big)),
                     1200);

    /* SQL: the text overload (an untyped literal), as a service would. */
    const char *params[1] = {big};
    /* Refused: its canonical text is 1200 bytes. */
    tu_assert_sql_error_p(c, "SELECT ferry.emit('f.size', 'big', 'Tested', $1)", 1, params,
                          "22023", "payload", NULL);

    /* The C API, in a transaction of the caller's. */
    ferry_error err;
    tu_exec(c, "BEGIN");
    ferry_msg m = {.topic = topic, .key = "big", .type = "Tested", .payload = big};
    ferry_code rc = ferry_emit(c, &m, NULL, NULL, &err);
    if (rc == FERRY_OK)
        fail_msg("ferry_emit() accepted a payload whose canonical text is 1200 bytes");
    assert_string_equal(err.field, "payload");
    tu_exec(c, "ROLLBACK");

    /* What fits as published goes, both ways. */
    params[0] = fits;
    PGresult *res = PQexecParams(c, "SELECT ferry.emit('f.size', 'fits', 'Tested', $1)", 1,
                                 NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("ferry.emit() refused a payload of 900 canonical bytes: %s",
                 PQresultErrorMessage(res));
    PQclear(res);
    tu_exec(c, "BEGIN");
    m.key = "fits";
    m.payload = fits;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_outbox_rows(topic), 2);
    assert_int_equal(relay_once("size-a", NULL, NULL), 0);
    assert_int_equal(tu_outbox_rows(topic), 0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 2, 10000);
    assert_non_null(got);
    assert_int_equal(got->count, 2);
    for (size_t i = 0; i < got->count; i++)
        assert_int_equal(got->msgs[i].value_len, 900);
    kt_msgs_free(got);
    free(big);
    free(fits);
    PQfinish(c);
}

/*
 * Item 5, the other end: a payload at the default limit (1 MiB of
 * canonical JSON), with 60 KiB of headers and a long key, is published
 * whole: the relay's producer takes messages up to the limit plus key and
 * header room (message.max.bytes is derived from max_payload_bytes;
 * librdkafka's default, 1,000,000, refused them, and the message became a
 * dead letter after five attempts).
 */
static void a_payload_at_the_limit_is_published_whole(void **state)
{
    const char *topic = "f.limit";
    PGconn *c = tu_connect();
    long limit = tu_int(c, "SELECT max_payload_bytes FROM ferry.settings");
    long pad = limit - (long)strlen("{\"b\": \"\"}");
    char key[1001];
    memset(key, 'k', 1000);
    key[1000] = '\0';
    /* Written as jsonb prints it, so that the input is the canonical text. */
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', "
                             "'{\"b\": \"' || repeat('x', %ld) || '\"}', "
                             "'{\"h\": \"' || repeat('y', 60000) || '\"}')",
                             topic, key, pad));
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT octet_length(payload::text) FROM "
                                             "ferry.outbox WHERE topic = '%s'", topic)),
                     limit);
    assert_int_equal(relay_once("limit-a", NULL, NULL), 0);
    assert_int_equal(tu_outbox_rows(topic), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'f.limit'"),
                     0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 1, 10000);
    assert_non_null(got);
    assert_int_equal(got->count, 1);
    assert_int_equal(got->msgs[0].value_len, limit);
    assert_int_equal(got->msgs[0].key_len, 1000);
    assert_int_equal(strlen(kt_header(&got->msgs[0], "h")), 60000);
    kt_msgs_free(got);
    PQfinish(c);
}

/*
 * Item 5, the limit raised while the relay runs: the producer was sized
 * for the limit the relay started with, and a payload emit now accepts is
 * larger. The relay sizes its producer again (once what is in flight is
 * settled) and publishes it, its key's next message after it; nothing is
 * dead-lettered, and the producer's refusal counts no attempt.
 *
 * Before: librdkafka refused the message at once (MSG_SIZE_TOO_LARGE),
 * each try counted, and after max_attempts it was dead-lettered and its
 * key parked, the next message waiting behind it: "timed out after 20000
 * ms waiting for: SELECT count(*) = 0 FROM ferry.outbox WHERE topic =
 * 'f.grown'".
 */
static void a_limit_raised_while_running_is_published(void **state)
{
    const char *topic = "f.grown";
    enum { GROWN = 3 * 1048576, BIG = 2 * 1048576 };
    PGconn *c = tu_connect();
    const char *args[] = {"--set", "max_attempts=2", NULL};
    tu_proc *p = relay_spawn("grown-a", args);
    await_leases(p, "grown-a", SHARDS, 30000);
    tu_exec_of(c, tu_sprintf("UPDATE ferry.settings SET max_payload_bytes = %d", GROWN));
    tu_exec(c, "BEGIN");
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', 'g', 'Tested', "
                             "'{\"b\": \"' || repeat('x', %d) || '\"}')", topic, BIG));
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', 'g', 'Tested', '{\"n\": 2}')", topic));
    tu_exec(c, "COMMIT");
    tu_await_outbox_empty(topic, 20000);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'f.grown'"),
                     0);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 2, 10000);
    assert_non_null(got);
    assert_int_equal(got->count, 2);
    assert_true(got->msgs[0].value_len > BIG);          /* in order: the big one first */
    assert_int_equal(got->msgs[1].value_len, strlen("{\"n\": 2}"));
    kt_msgs_free(got);
    /* The fault fired: the producer had been too small for it. */
    assert_int_equal(log_count(p, "kafka.resized"), 1);
    assert_int_equal(relay_stop(p, 30000), 0);
    PQfinish(c);
}

/*
 * The same, with a partition that does not answer: its messages stay in
 * flight (message.timeout.ms 0), so "once nothing is in flight" never
 * comes. The producer is made again after at most 5 s all the same (what
 * it held goes out again from each key's first unacknowledged row, as
 * after a fatal error), and every other key flows meanwhile.
 *
 * Before the fix: the relay waited for in flight to reach 0, fetching
 * nothing for any key (and spinning): "timed out after 20000 ms waiting
 * for: SELECT count(*) = 0 FROM ferry.outbox WHERE ... aggregateid = 'b...'".
 */
static void a_resize_is_not_held_for_ever_by_a_stuck_partition(void **state)
{
    const char *topic = "f.grownstuck";
    enum { KEYS = 12, GROWN = 3 * 1048576, BIG = 2 * 1048576 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--set", "max_attempts=2", NULL};
    tu_proc *p = relay_spawn("grownstuck-a", args);
    int nstuck = 0;
    char *stuck = stall_partition_zero(p, "grownstuck-a", topic, "s", KEYS, 1, &nstuck);
    PGconn *c = tu_connect();
    /* A key of a partition that answers, for the grown payload. */
    char big[16] = "";
    for (int i = 0; big[0] == '\0'; i++) {
        char k[16];
        snprintf(k, sizeof k, "b%d", i);
        if (partition_of(k) != 0)
            snprintf(big, sizeof big, "%s", k);
    }
    tu_exec_of(c, tu_sprintf("UPDATE ferry.settings SET max_payload_bytes = %d", GROWN));
    tu_exec(c, "BEGIN");
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', "
                             "'{\"b\": \"' || repeat('x', %d) || '\"}')", topic, big, BIG));
    tu_exec_of(c, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', '{\"n\": 2}')", topic,
                             big));
    tu_exec(c, "COMMIT");
    char *big_left = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE topic = '%s' "
                                "AND aggregateid = '%s'", topic, big);
    tu_await(c, big_left, 20000);
    free(big_left);
    assert_int_equal(log_count(p, "kafka.resized"), 1);
    /* The stuck keys still wait; then their partition answers again. */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE "
                                             "topic = '%s'", topic)), nstuck);
    assert_int_equal(kt_command(broker, "leader %s 0 1", topic), 0);
    tu_await_outbox_empty(topic, 30000);
    tu_assert_topic(kt_bootstrap(broker), topic, KEYS + 2, 10000, KEYS + 2);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter "
                               "WHERE topic = 'f.grownstuck'"), 0);
    assert_int_equal(relay_stop(p, 30000), 0);
    free(stuck);
    PQfinish(c);
}

/*
 * Item 5, the fetch: bounded by bytes as well as rows, headers included
 * (up to 64 KiB a row, where payloads are small): 200 rows with
 * 60,000-byte headers are 12 MB, more than one fetch may bring (8 MiB), so
 * they come in more than one batch. (Over 32 keys and 16 partitions: the
 * mock broker keeps only the last 5 MB of a partition.)
 *
 * Before the fix: the budget counted payload and key only, and all 200
 * came in one fetch of 1,000 rows at most.
 */
static void a_fetch_counts_headers_in_its_byte_budget(void **state)
{
    const char *topic = "f.hdrbytes";
    assert_int_equal(kt_command(broker, "topic-create f.hdrbytes 16 1"), 0);
    PGconn *c = tu_connect();
    tu_exec_of(c, tu_sprintf("SELECT count(ferry.emit('%s', 'k' || (g %% 32), 'Tested', '{}', "
                             "'{\"h\": \"' || repeat('y', 60000) || '\"}')) "
                             "FROM generate_series(1, 200) g", topic));
    char *log = NULL;
    assert_int_equal(relay_once("hdr-a", NULL, &log), 0);
    int batches = 0, most = 0;
    for (const char *at = log; (at = strstr(at, "\"event\":\"batch.produced\"")) != NULL;
         at++) {
        const char *rows = strstr(at, "\"rows\":");
        assert_non_null(rows);
        int n = atoi(rows + strlen("\"rows\":"));
        most = n > most ? n : most;
        batches++;
    }
    free(log);
    if (most > 8 * 1024 * 1024 / 60000 + 1)
        fail_msg("a fetch brought %d rows of 60,000-byte headers (%d batches)", most, batches);
    assert_true(batches >= 2);
    assert_int_equal(tu_outbox_rows(topic), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 200, 10000, 200);
    PQfinish(c);
}

/* ------------------------------------------------------------------ 6. partitioner */

/*
 * Item 6. A partitioner that does not keep a key on one partition is a
 * configuration error (exit 2, naming the property); murmur2 is fine.
 *
 * Today: partitioner=random is accepted and the relay exits 0:
 * "0 != 2".
 */
static void a_partitioner_that_moves_keys_is_refused(void **state)
{
    char *log = NULL;
    const char *random_[] = {"--kafka-prop", "partitioner=random", NULL};
    int st = relay_once("part-a", random_, &log);
    if (st != 2)
        fail_msg("--kafka-prop partitioner=random: exit %d, not 2; log:\n%s", st, log);
    assert_non_null(strstr(log, "partitioner"));
    free(log);
    const char *murmur2[] = {"--kafka-prop", "partitioner=murmur2", NULL};
    assert_int_equal(relay_once("part-b", murmur2, NULL), 0);
}

/* ------------------------------------------------------------------ 7. lag */

/* Does the exposition hold a sample of ferry_relay_unpublished_rows for
 * shard s? Its value into *v. 1 yes, 0 no; repeated or malformed fails. */
static int shard_series(const char *text, const char *name, int s, double *v)
{
    char series[96];
    snprintf(series, sizeof series, "%s{shard=\"%d\"}", name, s);
    char line[112];
    snprintf(line, sizeof line, "\n%s ", series);
    if (strstr(text, line) == NULL && strncmp(text, line + 1, strlen(line + 1)) != 0)
        return 0;
    if (tu_prom_find(text, series, v) != 0)
        fail_msg("%s is repeated or malformed", series);
    return 1;
}

/*
 * Item 7. Two relays share the 16 shards, each with a metrics endpoint.
 * Some rows are stuck on a leaderless partition (unpublished, counted);
 * some are delayed by an hour and made to look an hour old (not lag: not
 * counted, not making the oldest age large). Then, eventually and
 * steadily: every shard's ferry_relay_unpublished_rows appears in exactly
 * one relay's /metrics, its lease holder's, zeros included, with the
 * count of ready unpublished rows; ferry_relay_oldest_unpublished_seconds
 * stays under 10 minutes.
 *
 * Today: each relay exports the shards that have rows, every relay the
 * same ones, and counts delayed rows (an hour old): the shards without
 * rows are missing and the others are in both: "shard N: in 2 relays'
 * /metrics (want exactly its holder's)" / "... missing".
 */
static void lag_metrics_come_once_per_shard_without_delayed_rows(void **state)
{
    const char *topic = "f.lag", *delayed = "f.lag.delayed";
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "lease_ttl_ms=3000", NULL};
    tu_proc *a = relay_spawn("lag-a", args);
    tu_proc *b = relay_spawn("lag-b", args);
    int port[2] = {tu_proc_metrics_port(a), tu_proc_metrics_port(b)};
    const char *holder[2] = {"lag-a", "lag-b"};
    await_leases(a, "lag-a", SHARDS / 2, 30000);
    await_leases(b, "lag-b", SHARDS / 2, 30000);

    /* Stuck rows (ready, unpublished) and delayed ones, backdated. */
    assert_int_equal(kt_command(broker, "leader %s 0 -1", topic), 0);
    emit_keys(topic, "s", 32, 1);
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    for (int i = 0; i < 32; i++) {
        char key[16];
        snprintf(key, sizeof key, "d%d", i);
        ferry_msg m = {.topic = delayed, .key = key, .type = "Tested", .payload = "{}",
                       .delay_ms = 3600 * 1000};
        ferry_error err;
        assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    }
    tu_exec(c, "COMMIT");
    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '1 hour' "
               "WHERE topic = 'f.lag.delayed'");
    /* The healthy keys went out. */
    int nstuck = 0;
    char *stuck = keys_on_partition("s", 32, 0, &nstuck);
    assert_true(nstuck > 0);
    char *healthy_left = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE topic = '%s' "
                                    "AND aggregateid <> ALL (%s::text[])", topic, stuck);
    tu_await(c, healthy_left, 15000);
    free(healthy_left);
    free(stuck);

    char why[256] = "";
    for (int64_t end = clk_mono_ms() + 20000;; clk_sleep_ms(200)) {
        if (clk_mono_ms() > end)
            fail_msg("lag metrics never came right within 20 s: %s", why);
        /* The truth, from the database. */
        long long want[SHARDS] = {0};
        int held_by[SHARDS];
        PGresult *res = PQexec(c, "SELECT shard, count(*) FROM ferry.outbox "
                                  "WHERE published_at IS NULL AND available_at <= now() "
                                  "GROUP BY shard");
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        for (int i = 0; i < PQntuples(res); i++)
            want[atoi(PQgetvalue(res, i, 0))] = atoll(PQgetvalue(res, i, 1));
        PQclear(res);
        for (int s = 0; s < SHARDS; s++) {
            char *h = tu_str_of(c, tu_sprintf("SELECT holder FROM ferry.lease "
                                              "WHERE name = 'shard:%d' AND expires_at > now()",
                                              s));
            held_by[s] = h == NULL ? -1 : strcmp(h, holder[0]) == 0 ? 0
                                          : strcmp(h, holder[1]) == 0 ? 1 : -1;
            free(h);
        }
        tu_http_reply r[2] = {metrics_get(port[0]), metrics_get(port[1])};
        int good = 1;
        for (int s = 0; s < SHARDS && good; s++) {
            double v[2] = {-1, -1}, age[2] = {-1, -1};
            int in[2], in_age[2];
            for (int k = 0; k < 2; k++) {
                in[k] = shard_series(r[k].body, "ferry_relay_unpublished_rows", s, &v[k]);
                in_age[k] = shard_series(r[k].body, "ferry_relay_oldest_unpublished_seconds", s,
                                         &age[k]);
            }
            int h = held_by[s];
            if (h < 0) {
                snprintf(why, sizeof why, "shard %d has no live holder", s);
                good = 0;
            } else if (in[0] + in[1] != 1 || in_age[0] + in_age[1] != 1) {
                snprintf(why, sizeof why, "shard %d: in %d relays' /metrics (want exactly its "
                         "holder's, %s)", s, in[0] + in[1], holder[h]);
                good = 0;
            } else if (!in[h] || !in_age[h]) {
                snprintf(why, sizeof why, "shard %d: exported by %s, not by its holder %s", s,
                         holder[1 - h], holder[h]);
                good = 0;
            } else if (v[h] != (double)want[s]) {
                snprintf(why, sizeof why, "shard %d: ferry_relay_unpublished_rows %g, the "
                         "outbox has %lld ready", s, v[h], want[s]);
                good = 0;
            } else if (age[h] >= 600) {
                snprintf(why, sizeof why, "shard %d: ferry_relay_oldest_unpublished_seconds %g "
                         "(delayed rows counted as lag)", s, age[h]);
                good = 0;
            }
        }
        free(r[0].raw);
        free(r[1].raw);
        if (good)
            break;
    }
    /* The stuck rows were counted (want above), the delayed ones not. */
    assert_int_equal(kt_command(broker, "leader %s 0 1", topic), 0);
    tu_await_outbox_empty(topic, 30000);
    assert_int_equal(relay_stop(a, 30000), 0);
    assert_int_equal(relay_stop(b, 30000), 0);
    PQfinish(c);
}

/* The shards whose ferry_relay_unpublished_rows series port's /metrics
 * shows, as bits; -1 if it did not answer. */
static long long shard_series_bits(int port)
{
    tu_http_reply h = tu_http_get(port, "/metrics");
    if (h.status != 200) {
        free(h.raw);
        return -1;
    }
    long long bits = 0;
    static const char pfx[] = "\nferry_relay_unpublished_rows{shard=\"";
    for (const char *q = h.body; (q = strstr(q, pfx)) != NULL; q++) {
        int s = atoi(q + strlen(pfx));
        if (s >= 0 && s < 63)
            bits |= 1LL << s;
    }
    free(h.raw);
    return bits;
}

/* How many shards' series port's /metrics shows; -1 if it did not answer. */
static int shard_series_count(int port)
{
    long long bits = shard_series_bits(port);
    return bits < 0 ? -1 : __builtin_popcountll((unsigned long long)bits);
}

/* Wait (up to timeout_ms) until p's lag series are those of the shards
 * its holder leases, by the lease table. */
static void await_series_of_leases(tu_proc *p, int port, const char *holder, int timeout_ms)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT coalesce(sum(1::bigint << substr(name, 7)::int), 0) "
                           "FROM ferry.lease WHERE holder = '%s' AND name LIKE 'shard:%%' "
                           "AND expires_at > now()", holder);
    long long want = -1, got = -1;
    for (int64_t end = clk_mono_ms() + timeout_ms;; clk_sleep_ms(20)) {
        want = tu_int(c, sql);
        got = shard_series_bits(port);
        if (got == want && want != 0)
            break;
        if (clk_mono_ms() > end)
            tu_proc_fail(p, "%s exports the lag series of shards %#llx, not those it leases "
                         "(%#llx), for %d ms", holder, got, want, timeout_ms);
    }
    free(sql);
    PQfinish(c);
}

/*
 * The lag gauges follow the leases at once: a relay exports a shard's
 * series from when it takes the shard until it gives it back (README: a
 * sum() over relays reads the truth once), not from its next measurement.
 * A test hook stretches the measurements' period to ten minutes, so that
 * only a change of the shards held can bring one.
 *
 * Before: a change signalled the lag thread, whose wait woke and waited
 * again until its 5 s period ended. From outside: a shard exported by
 * both relays for ~1.3 s around a handover, by neither for ~3 s after one
 * stopped. Here, after the handover: "lagfollow-a exports the lag series
 * of shards 0xffff, not those it leases (0xff00)".
 */
static void the_lag_series_follow_the_leases_at_once(void **state)
{
    const char *a[] = {"--set", "log_level=debug", "--set", "lease_ttl_ms=3000",
                       "--metrics", "127.0.0.1:0", NULL};
    const char *e[] = {TU_RELAY_ASAN, "FERRY_RELAY_TEST_LAG_PERIOD_MS=600000", NULL};
    assert_true(nprocs + 2 <= MAX_PROCS);
    tu_proc *pa = &procs[nprocs];
    procs[nprocs++] = tu_relay_start(kt_bootstrap(broker), "lagfollow-a", a, e);
    int port_a = tu_proc_metrics_port(pa);
    await_leases(pa, "lagfollow-a", SHARDS, 30000);
    await_series_of_leases(pa, port_a, "lagfollow-a", 5000);
    /* The hook took: no measurement comes by the clock. */
    assert_int_equal(log_count(pa, "lag.test_period"), 1);
    /* A second relay: half the shards go over to it. */
    tu_proc *pb = &procs[nprocs];
    procs[nprocs++] = tu_relay_start(kt_bootstrap(broker), "lagfollow-b", a, e);
    int port_b = tu_proc_metrics_port(pb);
    await_leases(pb, "lagfollow-b", SHARDS / 2, 30000);
    await_leases(pa, "lagfollow-a", SHARDS / 2, 30000);
    await_series_of_leases(pa, port_a, "lagfollow-a", 5000);
    await_series_of_leases(pb, port_b, "lagfollow-b", 5000);
    /* It stops: the first takes them back. */
    assert_int_equal(relay_stop(pb, 30000), 0);
    await_leases(pa, "lagfollow-a", SHARDS, 30000);
    await_series_of_leases(pa, port_a, "lagfollow-a", 5000);
    /* The hook took: no measurement comes by the clock. */
    assert_int_equal(log_count(pa, "lag.test_period"), 1);
    assert_int_equal(relay_stop(pa, 30000), 0);
}

/* ------------------------------------------------------------------ 8. one name */


/*
 * A scrape that comes while the lag gauges are being measured sees every
 * held shard's series (issue 11: zero series present, never missing). A
 * test hook makes each measurement pause after its first shard, for
 * scrapes to land inside it.
 *
 * Before the fix: a measurement cleared every series, then set them shard
 * by shard, so a scrape in between missed some (16 of 2,449 scrapes of a
 * 16-shard relay, seen from outside; here all but one, every time).
 */
static void a_scrape_during_a_lag_measurement_sees_every_shard(void **state)
{
    const char *a[] = {"--set", "log_level=debug", "--metrics", "127.0.0.1:0", NULL};
    const char *e[] = {TU_RELAY_ASAN, "FERRY_RELAY_TEST_LAG_PAUSE_MS=1500", NULL};
    assert_true(nprocs < MAX_PROCS);
    procs[nprocs] = tu_relay_start(kt_bootstrap(broker), "lagscrape", a, e);
    tu_proc *p = &procs[nprocs++];
    int port = tu_proc_metrics_port(p);
    await_leases(p, "lagscrape", SHARDS, 30000);
    int n = 0;
    for (int64_t end = clk_mono_ms() + 20000; (n = shard_series_count(port)) != SHARDS;
         clk_sleep_ms(20))
        if (clk_mono_ms() > end)
            fail_msg("never %d shard series within 20 s (last %d)", SHARDS, n);
    /* A measurement's period and its pause: one whole measurement at
     * least (every 5 s, each pausing 1.5 s after its first shard). */
    int scrapes = 0;
    for (int64_t end = clk_mono_ms() + 6600; clk_mono_ms() < end; scrapes++) {
        n = shard_series_count(port);
        if (n != SHARDS)
            fail_msg("scrape %d saw %d shard series, not %d", scrapes, n, SHARDS);
        clk_sleep_ms(5);
    }
    assert_true(scrapes > 100);
    /* The fault fired: a measurement paused while the scrapes ran. */
    assert_true(log_count(p, "lag.test_pause") >= 2);
    assert_int_equal(relay_stop(p, 30000), 0);
}

/*
 * Item 8. A second relay under a holder name that a live relay uses
 * refuses to start (exit 1 at once, saying "already" and the name); the
 * first keeps its shards and keeps publishing.
 *
 * Today: the second takes every shard over (reclaim) and runs on:
 * "the second relay named same did not exit within 10 s".
 */
static void a_second_relay_with_the_same_name_refuses_to_start(void **state)
{
    const char *topic = "f.samename";
    tu_proc *a = relay_spawn("same", NULL);
    await_leases(a, "same", SHARDS, 30000);
    tu_proc *b = relay_spawn("same", NULL);
    int st = tu_proc_wait(b, 10000);
    if (st < 0)
        tu_proc_fail(b, "the second relay named same did not exit within 10 s");
    assert_int_equal(st, 1);
    char *log = tu_proc_log(b);
    /* One line says both: "already" and the name. */
    const char *at = strstr(log, "already");
    const char *bol = at, *eol = at ? strchr(at, '\n') : NULL;
    while (bol != NULL && bol > log && bol[-1] != '\n')
        bol--;
    int named = 0;
    for (const char *q = bol; q != NULL && (q = strstr(q, "same")) != NULL &&
                              (eol == NULL || q < eol); q++)
        named = 1;
    if (at == NULL || !named)
        tu_proc_fail(b, "no message with \"already\" and the holder name");
    assert_non_null(strstr(log, "\"event\":\"relay.holder_live\""));
    free(log);
    /* The first one is unharmed. */
    assert_int_equal(tu_proc_poll(a), -1);
    emit_keys(topic, "n", 8, 2);
    tu_await_outbox_empty(topic, 15000);
    assert_int_equal(tu_proc_poll(a), -1);
    assert_int_equal(log_count(a, "lease.lost"), 0);
    assert_int_equal(relay_stop(a, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 16, 10000, 16);
}

/*
 * A session named like a relay ("ferry-relay forged") by a role that is
 * neither a relay's nor the relay's own (here a writer) is not a live
 * relay of that name. Before: the relay refused to start, and any role
 * that may connect could stop it so (an outside audit).
 */
static void a_session_named_like_a_relay_by_another_role_does_not_stop_it(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DROP ROLE IF EXISTS rf_forger; CREATE ROLE rf_forger LOGIN; "
                   "GRANT ferry_writer TO rf_forger");
    char *ci = tu_sprintf("%s user=rf_forger application_name='ferry-relay forged'",
                          fpg_conninfo(tu_pg));
    PGconn *f = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(f), CONNECTION_OK);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM pg_stat_activity "
                                   "WHERE application_name = 'ferry-relay forged'"), 1);
    char *log = NULL;
    assert_int_equal(relay_once("forged", NULL, &log), 0);
    assert_null(strstr(log, "relay.holder_live"));
    free(log);
    PQfinish(f);
    tu_exec(admin, "DROP ROLE rf_forger");
    PQfinish(admin);
}

/*
 * The lag gauges' session of another relay is not a live relay named
 * "lag": its session name carries its own relay's name.
 *
 * Before: it was named 'ferry-relay lag', the name a relay "lag" takes, so
 * beside any relay with --metrics a relay named lag refused to start:
 * "ferry-relay exited with 1 before logging "event":"relay.start"".
 */
static void a_relay_named_lag_starts_beside_one_with_metrics(void **state)
{
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc *a = relay_spawn("lagger", args);
    await_leases(a, "lagger", SHARDS, 30000);
    PGconn *c = tu_connect();
    /* main, acknowledgement and lag sessions, whatever their names */
    tu_await(c, "SELECT count(*) = 3 FROM pg_stat_activity "
                "WHERE application_name LIKE 'ferry-relay%'", 15000);
    tu_proc *b = relay_spawn("lag", NULL);
    /* Past the look for a live namesake: started (its shards come later,
     * as the first gives them up). */
    tu_proc_await_log(b, "\"event\":\"relay.start\"", 30000);
    if (tu_proc_poll(b) != -1)
        tu_proc_fail(b, "the relay named lag exited (status %d)", tu_proc_poll(b));
    assert_int_equal(relay_stop(b, 30000), 0);
    assert_int_equal(relay_stop(a, 30000), 0);
    PQfinish(c);
}

/*
 * The name is a relay's within its database: two services on one cluster,
 * each with its own database and a relay named alike (a Deployment's name,
 * say), are not one relay twice. The look for a live holder is confined
 * to the database.
 *
 * Before the fix: the second was refused (relay.holder_live) because a
 * session of that name was connected to the other database.
 */
static void the_same_name_on_another_database_is_another_relay(void **state)
{
    char *ci = migrated_database("twin_db");
    tu_proc *a = relay_spawn("twin", NULL);
    await_leases(a, "twin", SHARDS, 30000);
    const char *args[] = {"--db", ci, NULL};
    tu_proc *b = relay_spawn("twin", args);
    tu_proc_await_log(b, "\"event\":\"relay.start\"", 30000);
    assert_int_equal(log_count(b, "relay.holder_live"), 0);
    assert_int_equal(tu_proc_poll(b), -1);
    assert_int_equal(relay_stop(b, 30000), 0);
    assert_int_equal(relay_stop(a, 30000), 0);
    free(ci);
}

/* ------------------------------------------------------------------ 9. scale-out */

typedef struct load_writer {
    const char *topic;
    int keys;
    atomic_int stop;
    atomic_long committed;
    ferry_code rc;
    ferry_error err;
    long n;                 /* the transaction being written (the writer's thread only) */
} load_writer;

static ferry_code load_fn(PGconn *conn, void *arg, ferry_error *err)
{
    const load_writer *w = arg;
    char key[32], payload[48];
    snprintf(key, sizeof key, "w%ld", w->n % w->keys);
    snprintf(payload, sizeof payload, "{\"n\": %ld}", w->n);
    ferry_msg m = {.topic = w->topic, .key = key, .type = "Tested", .payload = payload};
    return ferry_emit(conn, &m, NULL, NULL, err);
}

/* One transaction of one message after another, about 300 a second
 * (paced, so that the load is steady rather than as fast as the machine
 * allows), until told to stop. */
static void *load_main(void *arg)
{
    load_writer *w = arg;
    PGconn *c = fpg_connect(tu_pg);
    int64_t start = clk_mono_us();
    for (w->n = 0; !atomic_load(&w->stop) && w->rc == FERRY_OK; w->n++) {
        w->rc = ferry_tx_run(c, NULL, load_fn, w, NULL, &w->err);
        if (w->rc == FERRY_OK)
            atomic_fetch_add(&w->committed, 1);
        int64_t due = start + (w->n + 1) * 3333;    /* 300/s */
        int64_t now = clk_mono_us();
        if (due > now)
            clk_sleep_ms((long)((due - now) / 1000));
    }
    PQfinish(c);
    return NULL;
}

/*
 * Item 9. Relay A publishes a steady load (~300 transactions/s over 64
 * keys, each delivery taking 300 ms, so that A always has something in
 * flight); relay B starts while the writer writes and must hold its
 * share, 8 of the 16 shards, within 8 s (four lease periods of 2 s), the
 * writer still writing; at the end everything arrives, every key in order.
 *
 * Today: A gives shards back only when its sweep is at its end with
 * nothing in flight and nothing to acknowledge at a lease tick, which
 * under this load is rare (with 100 ms deliveries and 15 s it still
 * happened after 9-12 s): "relay B held 0 of 8 shards after 8 s of load".
 */
static void scale_out_under_load_takes_a_share(void **state)
{
    const char *topic = "f.scale";
    const char *args[] = {"--set", "lease_ttl_ms=2000", NULL};
    tu_proc *a = relay_spawn("scale-a", args);
    await_leases(a, "scale-a", SHARDS, 30000);
    load_writer w = {.topic = topic, .keys = 64};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, load_main, &w), 0);
    /* Under load: A is publishing. */
    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) > 0 FROM ferry.outbox_key WHERE topic = 'f.scale'", 10000);
    /* Every delivery takes 300 ms, so that something is nearly always in
     * flight (the load is steady whatever the speed of the machine). */
    assert_int_equal(kt_command(broker, "rtt 1 300"), 0);
    tu_proc *b = relay_spawn("scale-b", args);
    long before = atomic_load(&w.committed);
    int64_t t0 = clk_mono_ms();
    for (;;) {
        long long got = tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'scale-b' "
                                  "AND name LIKE 'shard:%' AND expires_at > now()");
        if (got == SHARDS / 2)
            break;
        if (clk_mono_ms() - t0 > 8000 || w.rc != FERRY_OK) {
            atomic_store(&w.stop, 1);
            pthread_join(th, NULL);
            fail_msg("relay B held %lld of %d shards after 8 s of load (writer: %s)", got,
                     SHARDS / 2, ferry_code_name(w.rc));
        }
        clk_sleep_ms(20);
    }
    /* It was under load the whole time. */
    long during = atomic_load(&w.committed) - before;
    atomic_store(&w.stop, 1);
    pthread_join(th, NULL);
    assert_ferry_ok(w.rc, w.err);
    assert_int_equal(kt_command(broker, "rtt 1 0"), 0);
    print_message("B held its share after %lld ms, %ld transactions meanwhile\n",
                  (long long)(clk_mono_ms() - t0), during);
    assert_true(during > 0);
    await_leases(a, "scale-a", SHARDS / 2, 15000);
    tu_await_outbox_empty(topic, 60000);
    assert_int_equal(relay_stop(a, 30000), 0);
    assert_int_equal(relay_stop(b, 30000), 0);
    long total = atomic_load(&w.committed);
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, (size_t)total, 20000, total);
    assert_int_equal(tc.keys, 64);
    PQfinish(c);
}

/* ------------------------------------------------------------------ 10. outage */

/*
 * Item 10. Every broker down for a while (at least 4 s) while the relay
 * has messages to publish, then back: the rows are published within 3 s
 * of the brokers' return (reconnect.backoff.max.ms defaults to 1000).
 *
 * When a reconnect attempt falls relative to the return is chance, so the
 * broker comes back just after one (librdkafka's debug=broker log shows
 * each "Connecting to"): the next attempt is then a whole backoff away,
 * at most ~1.5 s with the new default (1 s, jitter +50%), ~5 s or more
 * with librdkafka's own (100 ms doubling up to 10 s) after 4 s of outage.
 * (Without that, a single outage of 10 s let today's relay through in
 * 0.8 s once in four runs.)
 *
 * Today: "timed out after 3000 ms waiting for: SELECT count(*) = 0 FROM
 * ferry.outbox WHERE topic = 'f.outage'" (it resumes 5-10 s later).
 */
static void publishing_resumes_promptly_after_a_broker_outage(void **state)
{
    const char *topic = "f.outage";
    static const char attempt[] = "Connecting to ipv4#";
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--kafka-prop", "debug=broker", NULL};
    tu_proc *p = relay_spawn("outage-a", args);
    await_leases(p, "outage-a", SHARDS, 30000);
    /* Connected: one message through before the outage. */
    emit_keys(topic, "o", 1, 1);
    tu_await_outbox_empty(topic, 15000);
    int64_t down_at = clk_mono_ms();
    assert_int_equal(kt_command(broker, "down 1"), 0);
    emit_keys(topic, "o", 10, 10);
    /* The relay saw the outage (its producer lost the broker) ... */
    tu_proc_await_log(p, "\"event\":\"kafka.error\"", 15000);
    /* ... which lasts long enough for the backoff to grow: the fault's
     * duration, not a synchronisation ... */
    int64_t left = down_at + 4000 - clk_mono_ms();
    if (left > 0)
        clk_sleep_ms((long)left);
    assert_int_equal(tu_outbox_rows(topic), 100);
    /* ... and ends right after a reconnect attempt. */
    char *log = tu_proc_log(p);
    int attempts = count_in(log, attempt);
    free(log);
    int seen = 0;
    for (int64_t end = clk_mono_ms() + 15000; !seen && clk_mono_ms() < end;) {
        clk_sleep_ms(5);
        log = tu_proc_log(p);
        seen = count_in(log, attempt) > attempts;
        free(log);
    }
    if (!seen)
        print_message("no reconnect attempt logged within 15 s; bringing the broker back\n");
    assert_int_equal(kt_command(broker, "up 1"), 0);
    int64_t up_at = clk_mono_ms();
    tu_await_outbox_empty(topic, 3000);
    print_message("published %lld ms after the brokers' return\n",
                  (long long)(clk_mono_ms() - up_at));
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 101, 10000, 101);
}

/* ------------------------------------------------------------------ fixed properties */

/*
 * The fixed producer properties reach every topic the relay produces to:
 * message.timeout.ms 0 (a message never times out, so none can leave a
 * gap a later message of its key is acknowledged past) and acks all.
 * Topic-level properties go to the producer's default topic
 * configuration, which a topic handle made with its own configuration
 * does not take.
 *
 * Before the fix: each topic had librdkafka's defaults (300 s): a
 * partition leaderless for 5 minutes timed its messages out, counted an
 * attempt each, and dead-lettered and parked their keys in the end.
 */
static void every_topic_takes_the_fixed_properties(void **state)
{
    const char *topic = "f.fixed";
    tu_proc *p = relay_spawn("fixed-a", NULL);
    emit_keys(topic, "x", 2, 1);
    tu_await_outbox_empty(topic, 20000);
    tu_proc_await_log(p, "\"event\":\"kafka.topic\"", 5000);
    char *log = tu_proc_log(p);
    const char *at = strstr(log, "\"event\":\"kafka.topic\"");
    const char *eol = at ? strchr(at, '\n') : NULL;
    char line[1024] = "";
    if (at != NULL)
        snprintf(line, sizeof line, "%.*s", (int)(eol ? eol - at : (long)strlen(at)), at);
    if (strstr(line, "\"message.timeout.ms\":\"0\"") == NULL ||
        strstr(line, "\"acks\":\"-1\"") == NULL)
        fail_msg("the topic does not take the fixed properties: %s", line);
    free(log);
    assert_int_equal(relay_stop(p, 30000), 0);
}

/* ------------------------------------------------------------------ 11. before Kafka */

/*
 * Item 11. Started while every broker is down, the relay waits: it says
 * so (kafka.waiting, /healthz 503 "kafka"), holds no shard, stays up;
 * when the broker comes it starts publishing and /healthz turns 200.
 *
 * Today: it gives up after 10 s of metadata requests and exits 1 ("could
 * not reach Kafka"): "ferry-relay exited with 1 before logging
 * "event":"kafka.waiting"".
 */
static void a_relay_started_before_kafka_waits_for_it(void **state)
{
    const char *topic = "f.early";
    assert_int_equal(kt_command(broker, "down 1"), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc *p = relay_spawn("early-a", args);
    int port = tu_proc_metrics_port(p);
    tu_proc_await_log(p, "\"event\":\"kafka.waiting\"", 15000);
    tu_await_health(port, 503, "kafka", 10000);
    /* Still waiting a little later: it did not give up. (A bounded wait
     * for something that must not happen.) */
    assert_int_equal(tu_proc_wait(p, 2000), -1);
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'early-a' "
                               "AND name LIKE 'shard:%' AND expires_at > now()"),
                     0);
    emit_keys(topic, "e", 4, 2);
    assert_int_equal(tu_outbox_rows(topic), 8);
    assert_int_equal(log_count(p, "kafka.waiting"), 1);
    /* The broker comes: it takes its shards and publishes. */
    assert_int_equal(kt_command(broker, "up 1"), 0);
    tu_await_outbox_empty(topic, 20000);
    tu_await_health(port, 200, NULL, 10000);
    assert_true(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE holder = 'early-a' "
                          "AND name LIKE 'shard:%' AND expires_at > now()") > 0);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 8, 10000, 8);
    PQfinish(c);
}

/*
 * --once with a partition that has no leader: it publishes every other
 * key and ends, exit 1 (not everything could be published) with
 * relay.once_stuck, once what is left has been in flight for stuck_ms;
 * partition 0's rows stay in the outbox, and the next --once, with the
 * leader back, publishes them in order.
 *
 * Before: --once never ended (message.timeout.ms is 0: the messages wait
 * in the producer for ever); an outside audit killed it after 60 s.
 */
static void once_with_a_leaderless_partition_ends(void **state)
{
    const char *topic = "f.oncestuck";
    enum { KEYS = 24 };
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    int nstuck = 0;
    char *stuck = keys_on_partition("o", KEYS, 0, &nstuck);
    assert_true(nstuck > 0 && nstuck < KEYS);
    assert_int_equal(kt_command(broker, "leader %s 0 -1", topic), 0);
    emit_keys(topic, "o", KEYS, 2);
    const char *args[] = {"--set", "stuck_ms=500", NULL};
    char *log = NULL;
    int st = relay_once("oncestuck-a", args, &log);
    assert_int_equal(kt_command(broker, "leader %s 0 1", topic), 0);
    if (st != 1 || !strstr(log, "\"event\":\"relay.once_stuck\""))
        fail_msg("--once with a leaderless partition: exit %d, want 1 and relay.once_stuck", st);
    free(log);
    PGconn *c = tu_connect();
    /* The healthy keys went; partition 0's all stayed. */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE topic = "
                                             "'%s' AND aggregateid <> ALL (%s::text[])", topic,
                                             stuck)), 0);
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox WHERE topic = "
                                             "'%s' AND aggregateid = ANY (%s::text[])", topic,
                                             stuck)), 2 * nstuck);
    assert_int_equal(relay_once("oncestuck-b", NULL, NULL), 0);
    assert_int_equal(tu_outbox_rows(topic), 0);
    tu_topic_check tc = tu_assert_topic(kt_bootstrap(broker), topic, 0, 30000, KEYS * 2);
    assert_int_equal(tc.keys, KEYS);
    free(stuck);
    PQfinish(c);
}

/*
 * Stopped while it waits for Kafka, the relay stops cleanly: it holds no
 * shard and has produced nothing, so exit 0 with relay.stop, as a
 * supervisor's stop of a relay waiting for its broker is not a failure.
 *
 * Before: exit 1 and no log line (an outside audit), which a unit with
 * Restart=on-failure records as a failure.
 */
static void a_relay_stopped_while_waiting_for_kafka_exits_0(void **state)
{
    assert_int_equal(kt_command(broker, "down 1"), 0);
    tu_proc *p = relay_spawn("early-stop", NULL);
    tu_proc_await_log(p, "\"event\":\"kafka.waiting\"", 15000);
    int st = relay_stop(p, 30000);
    assert_int_equal(kt_command(broker, "up 1"), 0);
    if (st != 0)
        tu_proc_fail(p, "stopped while waiting for Kafka: exit %d, want 0", st);
    assert_int_equal(log_count(p, "relay.stopping"), 1);
    assert_int_equal(log_count(p, "relay.stop"), 1);
}

/*
 * After an outage with nothing to publish, /healthz turns 200 again once a
 * broker is back. librdkafka reports every broker going down but not one
 * coming back, and an idle relay has no delivery report to tell it.
 *
 * Before the fix: /healthz stayed 503 "kafka unreachable" for as long as
 * nothing was published.
 */
static void an_idle_relay_is_healthy_again_after_an_outage(void **state)
{
    const char *args[] = {"--metrics", "127.0.0.1:0", NULL};
    tu_proc *p = relay_spawn("idle-a", args);
    int port = tu_proc_metrics_port(p);
    await_leases(p, "idle-a", SHARDS, 30000);
    tu_await_health(port, 200, NULL, 10000);
    assert_int_equal(kt_command(broker, "down 1"), 0);
    tu_await_health(port, 503, "kafka", 30000);
    assert_int_equal(kt_command(broker, "up 1"), 0);
    tu_await_health(port, 200, NULL, 15000);
    assert_int_equal(relay_stop(p, 30000), 0);
}

/* ------------------------------------------------------------------ refusals */

/*
 * A broker that refuses a produce for good (every Produce request answered
 * TOPIC_AUTHORIZATION_FAILED, a permanent error): under the gapless
 * guarantee librdkafka makes that a fatal error, the relay rebuilds its
 * producer and sends the row again. That must end: the row counts an
 * attempt each time and becomes a dead letter after max_attempts, naming
 * the broker's error, and the relay keeps publishing once the broker
 * accepts again. (Nothing from outside may keep a retry loop going for
 * ever.)
 */
static void a_broker_that_refuses_every_produce_ends_in_a_dead_letter(void **state)
{
    const char *topic = "f.denied";
    assert_int_equal(kt_command(broker, "topic-create %s %d 1", topic, PARTITIONS), 0);
    const char *args[] = {"--metrics", "127.0.0.1:0", "--set", "max_attempts=3", NULL};
    tu_proc *p = relay_spawn("denied-a", args);
    await_leases(p, "denied-a", SHARDS, 30000);
    assert_int_equal(kt_command(broker, "produce-errors 100000 TOPIC_AUTHORIZATION_FAILED"), 0);
    emit_keys(topic, "d", 1, 1);

    PGconn *c = tu_connect();
    tu_await(c, "SELECT count(*) = 1 FROM ferry.dead_letter WHERE topic = 'f.denied' "
                "AND consumer = '' AND reason LIKE '%TOPIC_AUTHORIZATION_FAILED%'", 30000);
    assert_int_equal(tu_outbox_rows(topic), 0);
    /* Bounded: the producer was rebuilt a few times, not for ever. */
    int fatal = log_count(p, "kafka.fatal");
    assert_true(fatal <= 3 + 1);

    /* The broker accepts again: the next message goes out. */
    assert_int_equal(kt_command(broker, "clear-errors Produce"), 0);
    emit_keys(topic, "e", 1, 1);
    tu_await_outbox_empty(topic, 20000);
    assert_int_equal(relay_stop(p, 30000), 0);
    tu_assert_topic(kt_bootstrap(broker), topic, 1, 10000, 1);
    PQfinish(c);
}

/* ------------------------------------------------------------------ setup */

/* After each test, whatever it leaves: relays, a broker down, rows,
 * leases and settings. */
static int cleanup(void **state)
{
    release_sessions();
    for (int i = 0; i < nprocs; i++) {
        if (getenv("FERRY_TEST_VERBOSE") != NULL) {
            char *log = tu_slurp(procs[i].log, NULL);
            fprintf(stderr, "---- %s %d (status %d):\n%s\n", procs[i].name, (int)procs[i].pid,
                    procs[i].status, log ? log : "");
            free(log);
        }
        tu_proc_done(&procs[i]);
    }
    nprocs = 0;
    kt_command(broker, "up 1");
    kt_command(broker, "rtt 1 0");
    kt_command(broker, "clear-errors Produce");
    tu_exec_once("UPDATE ferry.settings SET max_payload_bytes = 1048576");
    tu_exec_once("UPDATE ferry.lease SET holder = NULL, expires_at = now()");
    return tu_clean_outbox(state);
}

static int group_setup(void **state)
{
    return tu_broker_group_setup(state, &broker);
}

static int group_teardown(void **state)
{
    return tu_broker_group_teardown(state, broker);
}

#define T(f) cmocka_unit_test_teardown(f, cleanup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(a_leaderless_partition_stalls_only_its_keys),
        T(a_failing_key_is_said_stuck_once_and_recovered_once),
        T(a_refused_topic_stalls_only_its_keys),
        T(sigterm_finishes_within_the_grace_with_a_stuck_partition),
        T(sigterm_is_bounded_when_the_database_hangs),
        T(a_commit_is_never_left_for_the_poll),
        T(a_repeatable_read_commit_is_never_left_for_the_poll),
        T(an_idle_relay_beside_a_busy_one_is_woken),
        T(a_busy_lock_taken_behind_a_sleeping_relay_is_noticed),
        T(a_schema_older_than_the_relay_is_refused),
        T(a_lease_renewed_but_not_served_is_served),
        T(a_lease_name_that_is_not_a_shards_serves_nothing),
        T(oversized_canonical_payloads_are_refused_at_emit),
        T(a_payload_at_the_limit_is_published_whole),
        T(a_limit_raised_while_running_is_published),
        T(a_resize_is_not_held_for_ever_by_a_stuck_partition),
        T(a_fetch_counts_headers_in_its_byte_budget),
        T(a_partitioner_that_moves_keys_is_refused),
        T(lag_metrics_come_once_per_shard_without_delayed_rows),
        T(a_scrape_during_a_lag_measurement_sees_every_shard),
        T(the_lag_series_follow_the_leases_at_once),
        T(a_dead_lettered_key_is_said_left_not_recovered),
        T(a_second_relay_with_the_same_name_refuses_to_start),
        T(a_session_named_like_a_relay_by_another_role_does_not_stop_it),
        T(an_unknown_topic_holds_its_messages_and_dead_letters_none),
        T(the_same_name_on_another_database_is_another_relay),
        T(a_relay_named_lag_starts_beside_one_with_metrics),
        T(scale_out_under_load_takes_a_share),
        T(publishing_resumes_promptly_after_a_broker_outage),
        T(every_topic_takes_the_fixed_properties),
        T(a_relay_started_before_kafka_waits_for_it),
        T(a_relay_stopped_while_waiting_for_kafka_exits_0),
        T(once_with_a_leaderless_partition_ends),
        T(an_idle_relay_is_healthy_again_after_an_outage),
        T(a_broker_that_refuses_every_produce_ends_in_a_dead_letter),
    };
    return tu_run_group_tests(tests, group_setup, group_teardown);
}
