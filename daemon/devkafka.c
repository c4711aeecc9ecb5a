/*
 * devkafka.c — `ferry-relay devkafka`: librdkafka's mock cluster as a
 * standalone development broker and the test suite's fault-injection
 * channel.
 *
 * The mock cluster speaks the real Kafka wire protocol on localhost
 * listeners (idempotent producer, consumer groups, auto-created topics),
 * so any client can use it through the bootstrap string printed first.
 * Its control API (rdkafka_mock.h) is in-process only; this command
 * exposes it as a line protocol on stdin:
 *
 *   request:  one command per line, at most DK_LINE_MAX bytes
 *   reply:    exactly one line per request: "ok", "ok VALUE" or
 *             "error: REASON", flushed at once
 *
 * What librdkafka 2.0.2's mock cannot do, and what we do instead:
 *   - The partition count of auto-created topics is fixed at 4 (and the
 *     replication factor of every topic at min(3, brokers): the mock's
 *     topic creation ignores the one it is given); there is no setter. So
 *     `--partitions` and `partitions` accept only 4, and other counts are
 *     made with `--topic NAME:P` or `topic-create`.
 *   - topic-error only affects Metadata (and AddPartitionsToTxn) replies.
 *   - The cluster-wide error stack (request-errors, produce-errors) cannot
 *     be inspected; the per-broker one can (broker-errors, errors-left),
 *     which is how a test proves that an injected error was consumed.
 *   - Setting the leader of a partition of a topic that does not exist
 *     creates the topic with PARTITION+1 partitions.
 *   - Sequence numbers are checked only for transactional producers, so
 *     with an injected produce error and several requests in flight a
 *     later request is appended ahead of the failed one's retry (a real
 *     broker refuses it, OUT_OF_ORDER_SEQUENCE_NUMBER). Order tests that
 *     inject produce errors set max.in.flight.requests.per.connection=1.
 */
#include "relay_cli.h"
#include "devkafka.h"
#include "internal.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

enum {
    DK_EXIT_USAGE = 2,
    DK_LINE_MAX = 1024,              /* bytes of a command, without the newline */
    DK_ARGS_MAX = DK_LINE_MAX / 2 + 1, /* words a line of DK_LINE_MAX can hold */
    DK_BROKERS_MAX = 32,
    DK_PARTITIONS_MAX = 10000,
    DK_ERRORS_MAX = 100000,          /* injected errors per command */
    DK_RTT_MAX_MS = 3600 * 1000,
    DK_TOPICS_MAX = 64,              /* --topic flags */
    DK_MOCK_DEFAULT_PARTITIONS = 4,  /* fixed in librdkafka 2.0.2's mock */
    DK_TICK_MS = 1000,               /* longest sleep between checks */
};
_Static_assert(DK_LINE_MAX >= 64, "commands must fit a line");

static volatile sig_atomic_t dk_stop_signal;

static void dk_on_signal(int sig)
{
    dk_stop_signal = sig;
}

typedef struct dk_state {
    rd_kafka_mock_cluster_t *mc;
    int brokers;
    bool quit;
} dk_state;

static void dk_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay devkafka [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...\n"
            "\n"
            "Runs librdkafka's mock Kafka cluster on localhost until SIGTERM, SIGINT\n"
            "or `quit`. The first line of stdout is the bootstrap servers. Commands\n"
            "on stdin, one per line, each answered with \"ok\", \"ok VALUE\" or\n"
            "\"error: REASON\" (the end of stdin does not stop the broker):\n"
            "\n"
            "  ping                               ok\n"
            "  bootstrap                          ok SERVERS\n"
            "  down BROKER | up BROKER            take a broker down / bring it back\n"
            "  rtt BROKER MS                      delay the broker's responses\n"
            "  produce-errors COUNT ERR...        fail the next COUNT Produce requests\n"
            "  request-errors API COUNT ERR...    ... of any request type (name or key)\n"
            "  broker-errors BROKER API COUNT ERR...  ... on one broker only\n"
            "  errors-left BROKER API             ok N: broker errors not yet consumed\n"
            "  clear-errors API                   drop the cluster's pending errors\n"
            "  topic-create NAME PARTITIONS REPLICATION\n"
            "  topic-error NAME ERR               error in the topic's metadata\n"
            "  leader TOPIC PARTITION BROKER      move a leader (-1: none)\n"
            "  partitions N                       only 4: see below\n"
            "  quit\n"
            "\n"
            "ERR is a number or a name with or without RD_KAFKA_RESP_ERR_, e.g.\n"
            "NOT_ENOUGH_REPLICAS; fewer ERRs than COUNT repeat in turn. Brokers are\n"
            "numbered from 1. Auto-created topics get 4 partitions and a replication\n"
            "factor of min(3, brokers), fixed by librdkafka's mock cluster: make other\n"
            "partition counts with --topic or topic-create. Every topic has min(3,\n"
            "brokers) replicas: REPLICATION is checked (1..brokers) but the mock does\n"
            "not take it.\n"
            "\n"
            "  --brokers N      number of brokers, 1..%d (default 1)\n"
            "  --partitions 4   accepted for scripts; no other value can be set\n"
            "  --topic NAME:PARTITIONS[:REPLICATION]   create a topic at start\n",
            DK_BROKERS_MAX);
}

/* ------------------------------------------------------------------ */
/* Parsing words                                                        */
/* Each parser returns 0 with its result in *out (or name...), or -1
 * leaving them untouched; dk_broker_arg also replies why. */

/* A whole decimal number in [min, max]. */
static int dk_parse_long(const char *s, long min, long max, long *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* An error code by number or by name ("NOT_ENOUGH_REPLICAS",
 * "RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS", "_TRANSPORT"), any case.
 * Only codes librdkafka knows are accepted. */
static int dk_parse_err(const char *s, rd_kafka_resp_err_t *out)
{
    const struct rd_kafka_err_desc *descs;
    size_t n;
    rd_kafka_get_err_descs(&descs, &n);
    long num;
    bool numeric = dk_parse_long(s, INT_MIN, INT_MAX, &num) == 0;
    static const char prefix[] = "RD_KAFKA_RESP_ERR_";
    if (!numeric && strncasecmp(s, prefix, sizeof prefix - 1) == 0)
        s += sizeof prefix - 1;
    for (size_t i = 0; i < n; i++) {
        if (descs[i].name == NULL)
            continue;
        if (numeric ? (long)descs[i].code == num : strcasecmp(descs[i].name, s) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

/* Kafka protocol request types by name; a number 0..999 is taken as is. */
static const struct {
    const char *name;
    int16_t key;
} dk_apis[] = {
    {"Produce", 0},         {"Fetch", 1},           {"ListOffsets", 2},
    {"Metadata", 3},        {"OffsetCommit", 8},    {"OffsetFetch", 9},
    {"FindCoordinator", 10}, {"JoinGroup", 11},     {"Heartbeat", 12},
    {"LeaveGroup", 13},     {"SyncGroup", 14},      {"ApiVersions", 18},
    {"InitProducerId", 22}, {"AddPartitionsToTxn", 24}, {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},         {"TxnOffsetCommit", 28},
};

static int dk_parse_api(const char *s, int16_t *out)
{
    long num;
    if (dk_parse_long(s, 0, 999, &num) == 0) {
        *out = (int16_t)num;
        return 0;
    }
    for (size_t i = 0; i < sizeof dk_apis / sizeof dk_apis[0]; i++)
        if (strcasecmp(dk_apis[i].name, s) == 0) {
            *out = dk_apis[i].key;
            return 0;
        }
    return -1;
}

/* "NAME:PARTITIONS[:REPLICATION]" of --topic; replication 0 = default. */
static int dk_parse_topic_spec(const char *spec, int brokers, char *name, size_t namelen,
                               int *partitions, int *replication)
{
    const char *c1 = strchr(spec, ':');
    if (c1 == NULL || (size_t)(c1 - spec) >= namelen)
        return -1;
    memcpy(name, spec, (size_t)(c1 - spec));
    name[c1 - spec] = '\0';
    if (!ferry__topic_valid(name, strlen(name)))
        return -1;
    char num[32];
    const char *c2 = strchr(c1 + 1, ':');
    size_t plen = c2 ? (size_t)(c2 - c1 - 1) : strlen(c1 + 1);
    if (plen >= sizeof num)
        return -1;
    memcpy(num, c1 + 1, plen);
    num[plen] = '\0';
    long p, r = brokers < 3 ? brokers : 3;
    if (dk_parse_long(num, 1, DK_PARTITIONS_MAX, &p) != 0)
        return -1;
    if (c2 != NULL && dk_parse_long(c2 + 1, 1, brokers, &r) != 0)
        return -1;
    *partitions = (int)p;
    *replication = (int)r;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Commands                                                             */

/* Replies go to stdout, one line each, flushed so that a reader blocked
 * on the pipe sees them. A vanished reader is not our problem: SIGPIPE
 * is ignored while we run and write errors are dropped. */
static void dk_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void dk_reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static void dk_reply_err(rd_kafka_resp_err_t err)
{
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
        dk_reply("ok");
    else
        dk_reply("error: %s (%s)", rd_kafka_err2name(err), rd_kafka_err2str(err));
}

static int dk_broker_arg(const dk_state *st, const char *s, int32_t *out)
{
    long b;
    if (dk_parse_long(s, 1, st->brokers, &b) != 0) {
        dk_reply("error: no broker \"%s\": brokers are 1..%d", s, st->brokers);
        return -1;
    }
    *out = (int32_t)b;
    return 0;
}

/* A topic name as Kafka takes them; -1 after replying the error. */
static int dk_topic_arg(const char *s)
{
    if (!ferry__topic_valid(s, strlen(s))) {
        dk_reply("error: \"%s\" is not a valid topic name", s);
        return -1;
    }
    return 0;
}

/* A request type by name or number; -1 after replying the error. */
static int dk_api_arg(const char *s, int16_t *out)
{
    if (dk_parse_api(s, out) != 0) {
        dk_reply("error: unknown request type \"%s\"", s);
        return -1;
    }
    return 0;
}

/* COUNT ERR... into a malloc'd array of COUNT codes, the ERRs repeated in
 * turn. NULL after replying the error. */
static rd_kafka_resp_err_t *dk_error_list(const char *count_s, int nerr, char **errs,
                                          size_t *countp)
{
    long count;
    if (dk_parse_long(count_s, 1, DK_ERRORS_MAX, &count) != 0) {
        dk_reply("error: COUNT \"%s\" is not a number in 1..%d", count_s, DK_ERRORS_MAX);
        return NULL;
    }
    if (nerr > count) {
        dk_reply("error: %d errors listed for a COUNT of %ld", nerr, count);
        return NULL;
    }
    rd_kafka_resp_err_t *codes = malloc((size_t)nerr * sizeof *codes);
    rd_kafka_resp_err_t *list = malloc((size_t)count * sizeof *list);
    if (codes == NULL || list == NULL) {
        free(codes);
        free(list);
        dk_reply("error: out of memory");
        return NULL;
    }
    for (int i = 0; i < nerr; i++) {
        if (dk_parse_err(errs[i], &codes[i]) != 0) {
            dk_reply("error: unknown error code \"%s\"", errs[i]);
            free(codes);
            free(list);
            return NULL;
        }
    }
    for (long i = 0; i < count; i++)
        list[i] = codes[i % nerr];
    free(codes);
    *countp = (size_t)count;
    return list;
}

static void dk_cmd_ping(dk_state *st, int argc, char **argv)
{
    dk_reply("ok");
}

static void dk_cmd_bootstrap(dk_state *st, int argc, char **argv)
{
    dk_reply("ok %s", rd_kafka_mock_cluster_bootstraps(st->mc));
}

static void dk_cmd_down(dk_state *st, int argc, char **argv)
{
    int32_t b;
    if (dk_broker_arg(st, argv[1], &b) == 0)
        dk_reply_err(rd_kafka_mock_broker_set_down(st->mc, b));
}

static void dk_cmd_up(dk_state *st, int argc, char **argv)
{
    int32_t b;
    if (dk_broker_arg(st, argv[1], &b) == 0)
        dk_reply_err(rd_kafka_mock_broker_set_up(st->mc, b));
}

static void dk_cmd_rtt(dk_state *st, int argc, char **argv)
{
    int32_t b;
    long ms;
    if (dk_broker_arg(st, argv[1], &b) != 0)
        return;
    if (dk_parse_long(argv[2], 0, DK_RTT_MAX_MS, &ms) != 0) {
        dk_reply("error: MS \"%s\" is not a number in 0..%d", argv[2], DK_RTT_MAX_MS);
        return;
    }
    dk_reply_err(rd_kafka_mock_broker_set_rtt(st->mc, b, (int)ms));
}

static void dk_push_errors(dk_state *st, int16_t api, const char *count_s, int nerr,
                           char **errs)
{
    size_t count;
    rd_kafka_resp_err_t *list = dk_error_list(count_s, nerr, errs, &count);
    if (list == NULL)
        return;
    rd_kafka_mock_push_request_errors_array(st->mc, api, count, list);
    free(list);
    dk_reply("ok");
}

static void dk_cmd_produce_errors(dk_state *st, int argc, char **argv)
{
    dk_push_errors(st, 0 /* Produce */, argv[1], argc - 2, argv + 2);
}

static void dk_cmd_request_errors(dk_state *st, int argc, char **argv)
{
    int16_t api;
    if (dk_api_arg(argv[1], &api) != 0)
        return;
    dk_push_errors(st, api, argv[2], argc - 3, argv + 3);
}

static void dk_cmd_broker_errors(dk_state *st, int argc, char **argv)
{
    int32_t b;
    int16_t api;
    if (dk_broker_arg(st, argv[1], &b) != 0 || dk_api_arg(argv[2], &api) != 0)
        return;
    size_t count;
    rd_kafka_resp_err_t *list = dk_error_list(argv[3], argc - 4, argv + 4, &count);
    if (list == NULL)
        return;
    /* The broker stack takes (error, rtt) pairs through varargs only: push
     * them one at a time; the stack is first in, first out. */
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (size_t i = 0; i < count && err == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
        err = rd_kafka_mock_broker_push_request_error_rtts(st->mc, b, api, 1, list[i], 0);
    free(list);
    dk_reply_err(err);
}

static void dk_cmd_errors_left(dk_state *st, int argc, char **argv)
{
    int32_t b;
    int16_t api;
    if (dk_broker_arg(st, argv[1], &b) != 0 || dk_api_arg(argv[2], &api) != 0)
        return;
    size_t cnt = 0;
    rd_kafka_resp_err_t err = rd_kafka_mock_broker_error_stack_cnt(st->mc, b, api, &cnt);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        dk_reply_err(err);
    else
        dk_reply("ok %zu", cnt);
}

static void dk_cmd_clear_errors(dk_state *st, int argc, char **argv)
{
    int16_t api;
    if (dk_api_arg(argv[1], &api) != 0)
        return;
    rd_kafka_mock_clear_request_errors(st->mc, api);
    dk_reply("ok");
}

static void dk_cmd_topic_create(dk_state *st, int argc, char **argv)
{
    long p, r;
    if (dk_topic_arg(argv[1]) != 0)
        return;
    if (dk_parse_long(argv[2], 1, DK_PARTITIONS_MAX, &p) != 0) {
        dk_reply("error: PARTITIONS \"%s\" is not a number in 1..%d", argv[2],
                 DK_PARTITIONS_MAX);
        return;
    }
    if (dk_parse_long(argv[3], 1, st->brokers, &r) != 0) {
        dk_reply("error: REPLICATION \"%s\" is not a number in 1..%d (the brokers)", argv[3],
                 st->brokers);
        return;
    }
    dk_reply_err(rd_kafka_mock_topic_create(st->mc, argv[1], (int)p, (int)r));
}

static void dk_cmd_topic_error(dk_state *st, int argc, char **argv)
{
    rd_kafka_resp_err_t err;
    if (dk_topic_arg(argv[1]) != 0)
        return;
    if (dk_parse_err(argv[2], &err) != 0) {
        dk_reply("error: unknown error code \"%s\"", argv[2]);
        return;
    }
    rd_kafka_mock_topic_set_error(st->mc, argv[1], err);
    dk_reply("ok");
}

static void dk_cmd_leader(dk_state *st, int argc, char **argv)
{
    long part, b;
    if (dk_topic_arg(argv[1]) != 0)
        return;
    if (dk_parse_long(argv[2], 0, DK_PARTITIONS_MAX - 1, &part) != 0) {
        dk_reply("error: PARTITION \"%s\" is not a number in 0..%d", argv[2],
                 DK_PARTITIONS_MAX - 1);
        return;
    }
    if (dk_parse_long(argv[3], -1, st->brokers, &b) != 0 || b == 0) {
        dk_reply("error: no broker \"%s\": brokers are 1..%d, or -1 for none", argv[3],
                 st->brokers);
        return;
    }
    dk_reply_err(rd_kafka_mock_partition_set_leader(st->mc, argv[1], (int32_t)part,
                                                    (int32_t)b));
}

static void dk_cmd_partitions(dk_state *st, int argc, char **argv)
{
    long n;
    if (dk_parse_long(argv[1], 1, DK_PARTITIONS_MAX, &n) == 0 && n == DK_MOCK_DEFAULT_PARTITIONS)
        dk_reply("ok");
    else
        dk_reply("error: librdkafka's mock cluster always auto-creates topics with %d "
                 "partitions; use topic-create NAME PARTITIONS REPLICATION",
                 DK_MOCK_DEFAULT_PARTITIONS);
}

static void dk_cmd_quit(dk_state *st, int argc, char **argv)
{
    st->quit = true;
    dk_reply("ok");
}

/* The command table: name, word counts including the name (max -1 =
 * unbounded up to DK_ARGS_MAX), the usage shown on a wrong count. */
static const struct dk_command {
    const char *name;
    int min_words, max_words;
    const char *usage;
    void (*run)(dk_state *st, int argc, char **argv);
} dk_commands[] = {
    {"ping", 1, 1, "ping", dk_cmd_ping},
    {"bootstrap", 1, 1, "bootstrap", dk_cmd_bootstrap},
    {"down", 2, 2, "down BROKER", dk_cmd_down},
    {"up", 2, 2, "up BROKER", dk_cmd_up},
    {"rtt", 3, 3, "rtt BROKER MS", dk_cmd_rtt},
    {"produce-errors", 3, -1, "produce-errors COUNT ERR [ERR...]", dk_cmd_produce_errors},
    {"request-errors", 4, -1, "request-errors API COUNT ERR [ERR...]", dk_cmd_request_errors},
    {"broker-errors", 5, -1, "broker-errors BROKER API COUNT ERR [ERR...]",
     dk_cmd_broker_errors},
    {"errors-left", 3, 3, "errors-left BROKER API", dk_cmd_errors_left},
    {"clear-errors", 2, 2, "clear-errors API", dk_cmd_clear_errors},
    {"topic-create", 4, 4, "topic-create NAME PARTITIONS REPLICATION", dk_cmd_topic_create},
    {"topic-error", 3, 3, "topic-error NAME ERR", dk_cmd_topic_error},
    {"leader", 4, 4, "leader TOPIC PARTITION BROKER", dk_cmd_leader},
    {"partitions", 2, 2, "partitions N", dk_cmd_partitions},
    {"quit", 1, 1, "quit", dk_cmd_quit},
};

/* One complete line, NUL-terminated, without its newline. Exactly one
 * reply, whatever the line holds. */
static void dk_run_line(dk_state *st, char *line)
{
    char *words[DK_ARGS_MAX];
    int n = 0;
    for (char *save = NULL, *w = strtok_r(line, " \t\r", &save); w != NULL;
         w = strtok_r(NULL, " \t\r", &save)) {
        if (n == DK_ARGS_MAX) {   /* cannot happen within DK_LINE_MAX; stay safe */
            dk_reply("error: too many words");
            return;
        }
        words[n++] = w;
    }
    if (n == 0) {
        dk_reply("error: empty command");
        return;
    }
    for (size_t i = 0; i < sizeof dk_commands / sizeof dk_commands[0]; i++) {
        const struct dk_command *c = &dk_commands[i];
        if (strcmp(c->name, words[0]) != 0)
            continue;
        if (n < c->min_words || (c->max_words >= 0 && n > c->max_words)) {
            dk_reply("error: usage: %s", c->usage);
            return;
        }
        c->run(st, n, words);
        return;
    }
    dk_reply("error: unknown command \"%.64s\"", words[0]);
}

/* ------------------------------------------------------------------ */
/* The line reader: bytes from stdin, commands out. Lines longer than
 * DK_LINE_MAX are refused as a whole (one reply at their newline) and
 * the reader stays in step with the sender. */

typedef struct dk_reader {
    char buf[DK_LINE_MAX + 1];
    size_t len;
    bool overlong;
    bool has_nul;
} dk_reader;

static void dk_reader_end_line(dk_state *st, dk_reader *r)
{
    if (r->overlong)
        dk_reply("error: command longer than %d bytes", DK_LINE_MAX);
    else if (r->has_nul)
        dk_reply("error: NUL byte in command");
    else {
        r->buf[r->len] = '\0';
        dk_run_line(st, r->buf);
    }
    r->len = 0;
    r->overlong = false;
    r->has_nul = false;
}

static void dk_reader_feed(dk_state *st, dk_reader *r, const char *data, size_t n)
{
    for (size_t i = 0; i < n && !st->quit; i++) {
        char c = data[i];
        if (c == '\n')
            dk_reader_end_line(st, r);
        else if (r->overlong)
            continue;
        else if (r->len == DK_LINE_MAX)
            r->overlong = true;
        else {
            r->has_nul |= c == '\0';
            r->buf[r->len++] = c;
        }
    }
}

/* ------------------------------------------------------------------ */

static int dk_serve(dk_state *st, const sigset_t *wait_mask)
{
    dk_reader reader = {.len = 0};
    bool stdin_open = true;
    while (!st->quit && !dk_stop_signal) {
        /* SIGTERM and SIGINT are blocked except inside ppoll, so a signal
         * either set the flag before the check above or interrupts this
         * wait: none is lost in between. */
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        struct timespec tick = {DK_TICK_MS / 1000, (DK_TICK_MS % 1000) * 1000000L};
        int rc = ppoll(&pfd, stdin_open ? 1 : 0, &tick, wait_mask);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ferry-relay devkafka: poll: %s\n", strerror(errno));
            return 1;
        }
        if (rc == 0 || !stdin_open)
            continue;
        if (pfd.revents & POLLNVAL) {
            stdin_open = false;
            continue;
        }
        char chunk[4096];
        ssize_t got = read(STDIN_FILENO, chunk, sizeof chunk);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0) {
            /* End of input (or an unreadable stdin): keep serving Kafka
             * until a signal. A last line without its newline still counts. */
            if (got < 0)
                fprintf(stderr, "ferry-relay devkafka: stdin: %s; ignoring it from now on\n",
                        strerror(errno));
            if (reader.len > 0 || reader.overlong)
                dk_reader_end_line(st, &reader);
            stdin_open = false;
            continue;
        }
        dk_reader_feed(st, &reader, chunk, (size_t)got);
    }
    return 0;
}

int cmd_devkafka(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"partitions", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long brokers = 1;
    const char *topic_specs[DK_TOPICS_MAX];
    int ntopics = 0;
    int c;
    optind = 0;   /* full reset: we may be called more than once in a process */
    while ((c = getopt_long(argc, argv, "+b:p:t:h", longopts, NULL)) != -1) {
        long n;
        switch (c) {
        case 'b':
            if (dk_parse_long(optarg, 1, DK_BROKERS_MAX, &brokers) != 0) {
                fprintf(stderr, "ferry-relay devkafka: --brokers \"%s\" is not a number in 1..%d\n",
                        optarg, DK_BROKERS_MAX);
                return DK_EXIT_USAGE;
            }
            break;
        case 'p':
            if (dk_parse_long(optarg, 1, DK_PARTITIONS_MAX, &n) != 0 ||
                n != DK_MOCK_DEFAULT_PARTITIONS) {
                fprintf(stderr,
                        "ferry-relay devkafka: --partitions %s: librdkafka's mock cluster "
                        "auto-creates every topic with %d partitions and cannot be told "
                        "otherwise; use --topic NAME:PARTITIONS\n",
                        optarg, DK_MOCK_DEFAULT_PARTITIONS);
                return DK_EXIT_USAGE;
            }
            break;
        case 't':
            if (ntopics == DK_TOPICS_MAX) {
                fprintf(stderr, "ferry-relay devkafka: more than %d --topic flags\n",
                        DK_TOPICS_MAX);
                return DK_EXIT_USAGE;
            }
            topic_specs[ntopics++] = optarg;
            break;
        default:
            return relay_cli_option(c, dk_usage);
        }
    }
    if (optind != argc)
        return relay_cli_unexpected("devkafka", argv[optind], dk_usage);
    /* Check every --topic before starting anything. */
    struct {
        char name[256];
        int partitions, replication;
    } topics[DK_TOPICS_MAX];
    for (int i = 0; i < ntopics; i++) {
        if (dk_parse_topic_spec(topic_specs[i], (int)brokers, topics[i].name,
                                 sizeof topics[i].name, &topics[i].partitions,
                                 &topics[i].replication) != 0) {
            fprintf(stderr,
                    "ferry-relay devkafka: --topic \"%s\": expected NAME:PARTITIONS[:REPLICATION] "
                    "with a valid topic name, 1..%d partitions and 1..%ld replicas\n",
                    topic_specs[i], DK_PARTITIONS_MAX, brokers);
            return DK_EXIT_USAGE;
        }
    }

    /* Signals: the handlers only set dk_stop_signal. SIGTERM and SIGINT
     * are blocked from here on (so the threads librdkafka and the mock
     * cluster start inherit the block and never take them) and unblocked
     * only while dk_serve waits. SIGPIPE is ignored so that a reader going
     * away cannot kill the broker. Everything is restored on return. */
    struct sigaction sa = {.sa_handler = dk_on_signal}, old_term, old_int, old_pipe;
    sigemptyset(&sa.sa_mask);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigset_t block, old_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    dk_stop_signal = 0;
    pthread_sigmask(SIG_BLOCK, &block, &old_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGPIPE, &ign, &old_pipe);
    sigset_t wait_mask = old_mask;
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    int status = 1;
    char errstr[512];
    /* The mock cluster needs a client instance for its bookkeeping; this
     * one never connects anywhere. */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* log_level 4: warnings and errors; not the notice that this client
     * has no bootstrap.servers, which is the point. */
    if (rd_kafka_conf_set(conf, "client.id", "ferry-devkafka", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr) != RD_KAFKA_CONF_OK ||
        /* The mock brokers' sockets take this client's settings: without
         * it, Nagle holds back a response now and then by ~40 ms, which a
         * real broker (TCP_NODELAY) never does. */
        rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
        fprintf(stderr, "ferry-relay devkafka: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        goto out_restore_signals;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {   /* conf is still ours on failure */
        fprintf(stderr, "ferry-relay devkafka: could not create the client: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        goto out_restore_signals;
    }
    dk_state st = {.brokers = (int)brokers};
    st.mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
    if (st.mc == NULL) {
        fprintf(stderr, "ferry-relay devkafka: could not start the mock cluster "
                        "(see librdkafka's log above)\n");
        goto out_destroy_rk;
    }
    for (int i = 0; i < ntopics; i++) {
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(
            st.mc, topics[i].name, topics[i].partitions, topics[i].replication);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "ferry-relay devkafka: could not create topic %s: %s\n",
                    topics[i].name, rd_kafka_err2str(err));
            goto out_destroy_cluster;
        }
    }

    printf("%s\n", rd_kafka_mock_cluster_bootstraps(st.mc));
    fflush(stdout);
    status = dk_serve(&st, &wait_mask);

out_destroy_cluster:
    rd_kafka_mock_cluster_destroy(st.mc);
out_destroy_rk:
    rd_kafka_destroy(rk);
out_restore_signals:
    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    return status;
}
