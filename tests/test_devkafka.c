/*
 * test_devkafka.c — `ferry-relay devkafka` and the kafkatmp harness: a
 * round trip through librdkafka's mock cluster with keys, headers and
 * per-key order, every fault-injection command proven to have fired, the
 * control protocol's edge cases, and the process's exits. No PostgreSQL.
 *
 * Needs a ferry-relay that knows `devkafka`: $FERRY_RELAY_BIN or
 * build/asan/ferry-relay.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "testutil.h"
#include "harness/kafkatmp.h"

/* ------------------------------------------------------------------ */
/* A plain producer that records what its delivery reports and
 * statistics said. */

typedef struct prod {
    rd_kafka_t *rk;
    int delivered;
    int failed;
    rd_kafka_resp_err_t last_err;
    int stats_seen;                 /* statistics callbacks so far */
    long long produce_requests;     /* sum of brokers[].req.Produce in the last ones */
} prod;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    prod *p = opaque;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        p->delivered++;
    } else {
        p->failed++;
        p->last_err = m->err;
    }
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    prod *p = opaque;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (root == NULL)
        return 0;
    long long sum = 0;
    const char *name;
    json_t *broker;
    json_object_foreach(json_object_get(root, "brokers"), name, broker)
        sum += json_integer_value(json_object_get(json_object_get(broker, "req"), "Produce"));
    json_decref(root);
    p->produce_requests = sum;
    p->stats_seen++;
    return 0;   /* we did not keep json */
}

/* An idempotent acks=all producer; message_timeout_ms bounds each message. */
static void prod_open(prod *p, const char *bootstrap, int message_timeout_ms, int with_stats)
{
    memset(p, 0, sizeof *p);
    char timeout[16], errstr[512];
    snprintf(timeout, sizeof timeout, "%d", message_timeout_ms);
    const char *props[][2] = {
        {"bootstrap.servers", bootstrap},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"message.timeout.ms", timeout},
        {"retry.backoff.ms", "50"},
        {"reconnect.backoff.ms", "50"},
        {"reconnect.backoff.max.ms", "300"},
        {"statistics.interval.ms", with_stats ? "100" : "0"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
        if (rd_kafka_conf_set(conf, props[i][0], props[i][1], errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK)
            fail_msg("%s: %s", props[i][0], errstr);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    if (with_stats)
        rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (p->rk == NULL)
        fail_msg("producer: %s", errstr);
}

static void prod_close(prod *p)
{
    rd_kafka_flush(p->rk, 5000);
    rd_kafka_destroy(p->rk);
    p->rk = NULL;
}

/* Enqueue one message with up to two headers (NULL name = none). */
static void prod_send(prod *p, const char *topic, const char *key, const char *value,
                      const char *h1, const char *v1, const char *h2, const char *v2)
{
    rd_kafka_resp_err_t err;
    if (h1 != NULL && h2 != NULL)
        err = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic),
                                RD_KAFKA_V_KEY(key, strlen(key)),
                                RD_KAFKA_V_VALUE((void *)value, strlen(value)),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_HEADER(h1, v1, (ssize_t)strlen(v1)),
                                RD_KAFKA_V_HEADER(h2, v2, (ssize_t)strlen(v2)), RD_KAFKA_V_END);
    else
        err = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic),
                                RD_KAFKA_V_KEY(key, strlen(key)),
                                RD_KAFKA_V_VALUE((void *)value, strlen(value)),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_msg("produce to %s: %s", topic, rd_kafka_err2str(err));
}

/* Serve delivery reports until none is outstanding or timeout_ms passed. */
static void prod_drain(prod *p, int timeout_ms)
{
    rd_kafka_flush(p->rk, timeout_ms);
}

/* Send value (key k, no headers), serve delivery reports for up to
 * timeout_ms, and then p must count delivered deliveries in all. */
static void send_k(prod *p, const char *topic, const char *value, int timeout_ms,
                   int delivered)
{
    prod_send(p, topic, "k", value, NULL, NULL, NULL, NULL);
    prod_drain(p, timeout_ms);
    assert_int_equal(p->delivered, delivered);
}

/* Open a producer, send one message of key k, and wait for its delivery
 * report, which must be a success. */
static void send_delivered(kt_broker *kb, const char *topic, const char *value)
{
    prod p;
    prod_open(&p, kt_bootstrap(kb), 10000, 0);
    send_k(&p, topic, value, 10000, 1);
    prod_close(&p);
}

/* kt_consume of at most max messages (0: to the watermarks), which must
 * be n, with these values in order when values is not NULL. The caller
 * frees them. */
static kt_msgs *consumed(kt_broker *kb, const char *topic, int max, int timeout_ms, int n,
                         const char *const *values)
{
    kt_msgs *got = kt_consume(kt_bootstrap(kb), topic, max, timeout_ms);
    assert_non_null(got);
    assert_int_equal(got->count, n);
    for (int i = 0; values != NULL && i < n; i++)
        assert_string_equal(got->msgs[i].value, values[i]);
    return got;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The topic's partition count as the cluster reports it. */
static int partition_count(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
    int n = -1;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 && md->topics[0].err == 0)
        n = md->topics[0].partition_cnt;
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return n;
}

/* Each test's broker lives in *state so that the teardown stops it even
 * when the test fails half way. */
static kt_broker *start_or_fail(void **state, int brokers)
{
    kt_broker *kb = kt_start(brokers);
    if (kb == NULL)
        fail_msg("could not start devkafka (is FERRY_RELAY_BIN or build/asan/ferry-relay "
                 "a ferry-relay with the devkafka command?)");
    *state = kb;
    return kb;
}

static int stop_broker(void **state)
{
    kt_stop(*state);
    *state = NULL;
    return 0;
}

/* ------------------------------------------------------------------ */

/* 10 keys x 5 messages across 3 brokers: everything comes back once,
 * with its key, value and headers, each key in one partition and in the
 * order produced, and the keys spread over the 4 partitions that the mock
 * gives an auto-created topic. */
static void round_trip_keys_headers_order(void **state)
{
    enum { KEYS = 10, PER_KEY = 5, N = KEYS * PER_KEY };
    kt_broker *kb = start_or_fail(state, 3);
    prod p;
    prod_open(&p, kt_bootstrap(kb), 10000, 0);
    for (int i = 0; i < PER_KEY; i++)
        for (int k = 0; k < KEYS; k++) {
            char key[16], value[32], seq[16], trace[32];
            snprintf(key, sizeof key, "key-%d", k);
            snprintf(value, sizeof value, "%s:%d", key, i);
            snprintf(seq, sizeof seq, "%d", i);
            snprintf(trace, sizeof trace, "trace-%d", k);
            prod_send(&p, "orders", key, value, "seq", seq, "trace", trace);
        }
    prod_drain(&p, 10000);
    assert_int_equal(p.delivered, N);
    assert_int_equal(p.failed, 0);
    assert_int_equal(partition_count(p.rk, "orders"), 4);
    prod_close(&p);

    /* All the topic holds (to its watermarks), proving there is no extra. */
    kt_msgs *got = consumed(kb, "orders", 0, 10000, N, NULL);
    int partition_of[KEYS], last_seq[KEYS], used[4] = {0};
    for (int k = 0; k < KEYS; k++)
        partition_of[k] = last_seq[k] = -1;
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        int k, s;
        assert_string_equal(m->topic, "orders");
        assert_non_null(m->key);
        assert_int_equal(sscanf(m->key, "key-%d", &k), 1);
        assert_in_range(k, 0, KEYS - 1);
        assert_int_equal(m->key_len, strlen(m->key));
        char expect[48];
        snprintf(expect, sizeof expect, "%s:", m->key);
        assert_non_null(m->value);
        assert_memory_equal(m->value, expect, strlen(expect));
        s = atoi(m->value + strlen(expect));
        assert_int_equal(m->value_len, strlen(m->value));
        assert_int_equal(m->header_count, 2);
        assert_string_equal(m->headers[0].name, "seq");
        assert_int_equal(atoi(kt_header(m, "seq")), s);
        snprintf(expect, sizeof expect, "trace-%d", k);
        assert_string_equal(kt_header(m, "trace"), expect);
        assert_null(kt_header(m, "absent"));
        assert_true(m->timestamp > 1600000000000LL);
        /* Per key: one partition, positions in produce order. */
        if (partition_of[k] < 0)
            partition_of[k] = m->partition;
        assert_int_equal(m->partition, partition_of[k]);
        assert_int_equal(s, last_seq[k] + 1);
        last_seq[k] = s;
        assert_in_range(m->partition, 0, 3);
        used[m->partition] = 1;
        if (i > 0 && got->msgs[i - 1].partition == m->partition)
            assert_true(got->msgs[i - 1].offset < m->offset);
    }
    for (int k = 0; k < KEYS; k++)
        assert_int_equal(last_seq[k], PER_KEY - 1);
    assert_true(used[0] + used[1] + used[2] + used[3] >= 2);
    kt_msgs_free(got);
}

/* The partition's leader goes down: a message for it times out; back up,
 * the next one is delivered, and only the two delivered are in the log. */
static void broker_down_then_up(void **state)
{
    kt_broker *kb = start_or_fail(state, 3);
    assert_int_equal(kt_command(kb, "topic-create fault 1 3"), 0);
    assert_int_equal(kt_command(kb, "leader fault 0 2"), 0);
    prod p;
    prod_open(&p, kt_bootstrap(kb), 2000, 0);
    assert_int_equal(partition_count(p.rk, "fault"), 1);
    send_k(&p, "fault", "before", 5000, 1);

    assert_int_equal(kt_command(kb, "down 2"), 0);
    prod_send(&p, "fault", "k", "while-down", NULL, NULL, NULL, NULL);
    prod_drain(&p, 6000);
    /* The fault fired: the message failed, and it was the broker's fault. */
    assert_int_equal(p.delivered, 1);
    assert_int_equal(p.failed, 1);
    assert_int_equal(p.last_err, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT);

    assert_int_equal(kt_command(kb, "up 2"), 0);
    send_k(&p, "fault", "after", 10000, 2);
    assert_int_equal(p.failed, 1);
    prod_close(&p);

    kt_msgs_free(consumed(kb, "fault", 3, 1500, 2, (const char *const[]){"before", "after"}));
}

/* Produce requests that fail with a retriable error are retried: the
 * message is delivered once, the client sent more Produce requests than
 * it had batches (its statistics), and the mock consumed the errors (its
 * per-broker error stack). */
static void produce_errors_are_retried(void **state)
{
    kt_broker *kb = start_or_fail(state, 1);
    prod p;
    prod_open(&p, kt_bootstrap(kb), 20000, 1);
    send_k(&p, "retried", "m0", 10000, 1);
    /* A baseline from statistics made after the first delivery. */
    int seen = p.stats_seen;
    long long t0 = now_ms();
    while (p.stats_seen < seen + 2 && now_ms() - t0 < 5000)
        rd_kafka_poll(p.rk, 50);
    assert_true(p.stats_seen >= seen + 2);
    long long before = p.produce_requests;
    assert_true(before >= 1);

    /* Cluster-wide errors, named every accepted way. */
    assert_int_equal(kt_command(kb, "produce-errors 3 NOT_ENOUGH_REPLICAS "
                                    "RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS 19"), 0);
    send_k(&p, "retried", "m1", 15000, 2);
    assert_int_equal(p.failed, 0);
    seen = p.stats_seen;
    t0 = now_ms();
    while ((p.stats_seen < seen + 2 || p.produce_requests < before + 4) && now_ms() - t0 < 5000)
        rd_kafka_poll(p.rk, 50);
    /* One batch, three refusals: at least four requests. */
    assert_true(p.produce_requests >= before + 4);

    /* Per-broker errors can be counted down in the mock itself. */
    char reply[64];
    assert_int_equal(kt_command(kb, "broker-errors 1 Produce 2 NOT_ENOUGH_REPLICAS"), 0);
    assert_int_equal(kt_command_reply(kb, reply, sizeof reply, "errors-left 1 Produce"), 0);
    assert_string_equal(reply, "ok 2");
    send_k(&p, "retried", "m2", 15000, 3);
    assert_int_equal(p.failed, 0);
    assert_int_equal(kt_command_reply(kb, reply, sizeof reply, "errors-left 1 Produce"), 0);
    assert_string_equal(reply, "ok 0");
    prod_close(&p);

    /* Retries did not duplicate anything. */
    kt_msgs_free(consumed(kb, "retried", 4, 1500, 3, (const char *const[]){"m0", "m1", "m2"}));
}

/* rtt delays every response of the broker. */
static void rtt_delays_responses(void **state)
{
    enum { RTT = 600 };
    kt_broker *kb = start_or_fail(state, 1);
    prod p;
    prod_open(&p, kt_bootstrap(kb), 20000, 0);
    send_k(&p, "slow", "warm", 10000, 1);

    assert_int_equal(kt_command(kb, "rtt 1 %d", RTT), 0);
    long long t0 = now_ms();
    prod_send(&p, "slow", "k", "delayed", NULL, NULL, NULL, NULL);
    prod_drain(&p, 10000);
    long long took = now_ms() - t0;
    assert_int_equal(p.delivered, 2);
    assert_true(took >= RTT - 20);   /* the mock's timer tick */

    assert_int_equal(kt_command(kb, "rtt 1 0"), 0);
    t0 = now_ms();
    send_k(&p, "slow", "fast", 10000, 3);
    assert_true(now_ms() - t0 < RTT);
    prod_close(&p);
}

/* topic-error shows in the topic's metadata, and a producer cannot
 * deliver to the topic until it is cleared. */
static void topic_error_in_metadata(void **state)
{
    kt_broker *kb = start_or_fail(state, 1);
    assert_int_equal(kt_command(kb, "topic-error secret TOPIC_AUTHORIZATION_FAILED"), 0);
    prod p;
    prod_open(&p, kt_bootstrap(kb), 1500, 0);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p.rk, "secret", NULL);
    const struct rd_kafka_metadata *md = NULL;
    assert_int_equal(rd_kafka_metadata(p.rk, 0, rkt, &md, 5000), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(md->topic_cnt, 1);
    assert_int_equal(md->topics[0].err, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    send_k(&p, "secret", "refused", 5000, 0);
    assert_int_equal(p.failed, 1);
    prod_close(&p);

    assert_int_equal(kt_command(kb, "topic-error secret NO_ERROR"), 0);
    send_delivered(kb, "secret", "accepted");
    kt_msgs_free(consumed(kb, "secret", 2, 1500, 1, (const char *const[]){"accepted"}));
}

/* Every bad line gets exactly one error line, and the channel stays in
 * step: partial writes, several lines in one write, overlong lines. */
static void control_protocol(void **state)
{
    kt_broker *kb = start_or_fail(state, 2);
    char reply[256];
    static const char *const bad[] = {
        "bogus",
        "down",
        "down 1 2",
        "down x",
        "down 3",
        "up 0",
        "rtt 1 -5",
        "rtt 1 many",
        "produce-errors 0 NOT_ENOUGH_REPLICAS",
        "produce-errors 1 NOT_ENOUGH_REPLICAS NOT_ENOUGH_REPLICAS",
        "produce-errors 2 NO_SUCH_ERROR",
        "produce-errors 2",
        "request-errors Nonsense 1 NOT_ENOUGH_REPLICAS",
        "errors-left 9 Produce",
        "topic-create bad/name 4 1",
        "topic-create t 0 1",
        "topic-create t 4 3",
        "topic-error t NOPE",
        "leader t 0 0",
        "partitions 8",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (kt_command_reply(kb, reply, sizeof reply, "%s", bad[i]) != -1)
            fail_msg("\"%s\" was accepted: %s", bad[i], reply);
        assert_memory_equal(reply, "error: ", 7);
    }
    assert_int_equal(kt_command(kb, "topic-create t 2 2"), 0);
    assert_int_equal(kt_command_reply(kb, reply, sizeof reply, "topic-create t 2 2"), -1);
    assert_non_null(strstr(reply, "TOPIC_ALREADY_EXISTS"));
    assert_int_equal(kt_command(kb, "leader t 1 1"), 0);
    assert_int_equal(kt_command(kb, "partitions 4"), 0);
    assert_int_equal(kt_command(kb, "request-errors Metadata 1 _TRANSPORT"), 0);
    assert_int_equal(kt_command(kb, "clear-errors Metadata"), 0);
    assert_int_equal(kt_command_reply(kb, reply, sizeof reply, "bootstrap"), 0);
    assert_string_equal(reply + 3, kt_bootstrap(kb));

    /* An empty line is a (bad) command too. */
    assert_int_equal(kt_send_raw(kb, "\n", 1), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "error: empty command");

    /* A line in two writes. */
    assert_int_equal(kt_send_raw(kb, "pi", 2), 0);
    sleep_ms(50);
    assert_int_equal(kt_send_raw(kb, "ng\n", 3), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "ok");

    /* Two lines in one write, in order. */
    assert_int_equal(kt_send_raw(kb, "ping\nnope\n", 10), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "ok");
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "error: unknown command \"nope\"");

    /* 1024 bytes is the limit: 1025 is refused as a whole, with one reply,
     * and the next line is read normally. */
    char line[3000];
    memset(line, ' ', 1024);
    memcpy(line + 1024 - 4, "ping", 4);
    line[1024] = '\n';
    assert_int_equal(kt_send_raw(kb, line, 1025), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "ok");
    memset(line, 'x', sizeof line);
    line[1025] = '\n';
    assert_int_equal(kt_send_raw(kb, line, 1026), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "error: command longer than 1024 bytes");
    memset(line, 'x', sizeof line);
    line[sizeof line - 1] = '\n';
    assert_int_equal(kt_send_raw(kb, line, sizeof line), 0);
    assert_int_equal(kt_read_line(kb, reply, sizeof reply, 10000), 0);
    assert_string_equal(reply, "error: command longer than 1024 bytes");
    assert_int_equal(kt_command(kb, "ping"), 0);

    assert_int_equal(kt_terminate(kb), 0);
}

static void exits_zero_on_sigterm_and_sigint(void **state)
{
    kt_broker *kb = start_or_fail(state, 1);
    assert_int_equal(kt_command(kb, "ping"), 0);
    assert_int_equal(kt_terminate(kb), 0);
    stop_broker(state);

    kb = start_or_fail(state, 2);
    assert_int_equal(kill(kt_pid(kb), SIGINT), 0);
    assert_int_equal(kt_wait(kb, 10000), 0);
}

static void exits_zero_on_quit(void **state)
{
    kt_broker *kb = start_or_fail(state, 1);
    assert_int_equal(kt_command(kb, "quit"), 0);
    assert_int_equal(kt_wait(kb, 10000), 0);
    /* Nothing reads the channel any more. */
    assert_int_equal(kt_command(kb, "ping"), -1);
}

/* The end of stdin is not a reason to stop serving Kafka. */
static void survives_closed_stdin(void **state)
{
    kt_broker *kb = start_or_fail(state, 1);
    kt_close_stdin(kb);
    sleep_ms(300);
    assert_int_equal(kt_wait(kb, 0), -1);   /* still running */
    send_delivered(kb, "after-eof", "v");
    kt_msgs *got = consumed(kb, "after-eof", 1, 10000, 1, NULL);
    assert_string_equal(got->msgs[0].key, "k");
    kt_msgs_free(got);
    assert_int_equal(kt_terminate(kb), 0);
}

/* Run the binary with args, output discarded: its exit status. */
static int run_relay(char *const args[])
{
    const char *bin = getenv("FERRY_RELAY_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = "build/asan/ferry-relay";
    char *argv[16] = {(char *)bin};
    int n = 1;
    for (; args[n - 1] != NULL && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        fail_msg("spawn %s: %s", bin, strerror(rc));
    int wstatus;
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    return WEXITSTATUS(wstatus);
}

static void bad_usage_exits_2(void **state)
{
    assert_int_equal(run_relay((char *[]){"devkafka", "--brokers", "0", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--brokers", "33", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--brokers", "two", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--bogus", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "extra", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--partitions", "8", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--topic", "noparts", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--topic", "t:4:2", NULL}), 2);
    assert_int_equal(run_relay((char *[]){"devkafka", "--help", NULL}), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(round_trip_keys_headers_order, stop_broker),
        cmocka_unit_test_teardown(broker_down_then_up, stop_broker),
        cmocka_unit_test_teardown(produce_errors_are_retried, stop_broker),
        cmocka_unit_test_teardown(rtt_delays_responses, stop_broker),
        cmocka_unit_test_teardown(topic_error_in_metadata, stop_broker),
        cmocka_unit_test_teardown(control_protocol, stop_broker),
        cmocka_unit_test_teardown(exits_zero_on_sigterm_and_sigint, stop_broker),
        cmocka_unit_test_teardown(exits_zero_on_quit, stop_broker),
        cmocka_unit_test_teardown(survives_closed_stdin, stop_broker),
        cmocka_unit_test_teardown(bad_usage_exits_2, stop_broker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
