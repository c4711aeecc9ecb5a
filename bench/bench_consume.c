/*
 * bench_consume.c — what does the inbox cost a consumer?
 *
 * One consumer, one transaction per message, against a throwaway cluster
 * running with the server's durable defaults (fsync, synchronous_commit,
 * full_page_writes on) and a `ferry-relay devkafka` broker (librdkafka's
 * mock cluster). A topic is preloaded once with N messages
 * (FERRY_BENCH_CONSUME_MSGS, default 20,000) spread at random over 1000
 * keys, produced straight to the broker with the headers a ferry relay
 * puts on them (ferry_id a UUIDv7, ferry_type, ferry_seq the per-key
 * position 1, 2, 3 ..., the CloudEvents ones) and a ~200-byte JSON payload
 * {"account_id": ..., "amount": A, ...}. Then two workloads read the whole
 * topic, each time as a new consumer group:
 *
 *   (a) inbox  ferry_consumer_poll() until N messages are applied: per
 *              message BEGIN and the prepared SELECT ferry.consume_claim(...)
 *              (one pipelined round trip), the handler, the prepared
 *              SELECT ferry.consume_finish(...) and COMMIT (one pipelined
 *              round trip), then the offset stored. A new consumer
 *              name every round, so the inbox never skips a message; so
 *              each key's first message in a run (1000 of N) also makes
 *              the key's ferry.inbox_key row, and ferry.inbox keeps the
 *              rows of the runs before, as a live inbox keeps its recent
 *              past.
 *   (b) bare   a plain librdkafka consumer loop with the ferry consumer's
 *              Kafka settings (manual offset store, auto-commit every
 *              second, earliest, no EOF events): per message the payload
 *              parsed as JSON, the same ferry_message view filled in, then
 *              ferry_tx_run() of the same handler — BEGIN + xid, handler,
 *              COMMIT — then rd_kafka_offsets_store() of offset + 1. That
 *              is everything the ferry consumer does except the claim and
 *              the finish and its client-side bookkeeping: building the header map,
 *              UTF-8 checks of key and payload, parsing ferry_id and
 *              ferry_seq, and the once-a-second look for held messages.
 *
 * The handler (both): one prepared statement,
 *   UPDATE bench_account SET balance = balance + $2, applied = applied + 1
 *    WHERE id = $1
 * with the message key as id and the payload's amount; prepared the first
 * time it runs on a connection.
 *
 * Figures: messages applied per second from the first applied message to
 * the last (so the group join and the first fetch are left out; they are
 * shown apart as "start"), and the ratio inbox / bare (target >= 0.75:
 * the inbox costs at most 25%). Beside them, per message: this process's
 * CPU (all threads, librdkafka's too), the CPU of the database backend
 * that applied the messages (from /proc, when the server is local), and
 * the WAL written — where the inbox's cost goes.
 *
 * Batches (issue 13): (a) runs the consumer as configured by default,
 * applying the messages that have arrived in batches of up to 100 per
 * transaction; beside it (a1) "inbox1", the same consumer with batch_max
 * 1 (one message per transaction, the path before batches), and (b2)
 * "bareB", the bare loop with one transaction per batch of what has
 * arrived (up to 100). Ratios: inbox / inbox1 (target >= 5), inbox /
 * bareB (target >= 0.9), and inbox1 / bare as before (the inbox's cost
 * per message; consume_inbox_vs_bare_ratio keeps that meaning).
 *
 * Then, apart from the ratio, where the inbox's time goes: the statements
 * the consumer sends for one message (BEGIN + xid, the claim, the
 * handler's UPDATE, COMMIT) replayed on one connection without Kafka,
 * timed one by one, with no claim, with the claim unprepared
 * (PQexecParams: parsed and planned for every message), and with the
 * claim as a prepared statement (as lib/consume.c has it, which moreover
 * sends it in BEGIN's round trip); the three interleaved message by
 * message.
 *
 * After the held drain (below), a pipeline figure: writers, one relay, one
 * consumer, end to end, beside the relay's drain rate alone (see
 * run_pipeline).
 *
 * Noise: the workloads run interleaved, FERRY_BENCH_ROUNDS rounds (default
 * 3), the order swapped every round; a CHECKPOINT and a VACUUM of the
 * account table before every run give each the same start; figures are
 * medians over the rounds and the ratio compares figures of the same run.
 *
 * A benchmark, not a test: timings never fail it. It exits 1 only when
 * something did not work: a consumer error, a message not applied or
 * applied twice (each account's balance and count must be exactly what
 * the topic holds for its key, times the runs so far; the inbox must hold
 * N rows for the run's consumer, and nothing held or dead-lettered), or a
 * topic the broker did not keep whole. Progress (and the consumer's own
 * info logs) go to stderr; results to stdout: tables, then one `bench
 * <name> <value> <unit>` line per figure.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "ferry.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/pgtmp.h"
#include "benchutil.h"

enum {
    DEFAULT_MSGS = 20000,
    MSGS_MIN = 1000,
    MSGS_MAX = 200000,
    DEFAULT_ROUNDS = 3,
    ROUNDS_MAX = 15,
    KEYS = 1000,
    /* The mock keeps only the newest few MB of a partition: keep each one
     * well under that (checked by watermarks after the preload). */
    MSGS_PER_PARTITION = 5000,
    PARTITIONS_MIN = 4,
    PARTITIONS_MAX = 64,
    PAYLOAD_SIZE = 256,
    POLL_MS = 100,
    START_TIMEOUT_MS = 60000,       /* consumer made -> first message applied */
    STALL_TIMEOUT_MS = 60000,       /* no message applied for this long: give up */
    FLUSH_TIMEOUT_MS = 60000,
    ANATOMY_MSGS = 3000,            /* per variant, after a first message per key */
};
_Static_assert((MSGS_MAX + MSGS_PER_PARTITION - 1) / MSGS_PER_PARTITION <= PARTITIONS_MAX,
               "enough partitions for the largest topic");

static const char TOPIC[] = "bench.consume";
static const char EVENT_TYPE[] = "PaymentApplied";

/* inbox: the ferry consumer as configured by default (batches); inbox1:
 * batch_max 1, one message per transaction (the path before batches);
 * bare: the plain loop, one message per transaction; bareB: the plain
 * loop, one transaction per batch of what has arrived (BARE_BATCH_MAX,
 * the consumer's default batch_max). */
typedef enum workload { WL_INBOX, WL_INBOX1, WL_BARE, WL_BAREB, WL_COUNT } workload;
static const char *const wl_name[WL_COUNT] = {"inbox", "inbox1", "bare", "bareB"};
enum { BARE_BATCH_MAX = 100 };

static const char update_sql[] =
    "UPDATE bench_account SET balance = balance + $2::bigint, applied = applied + 1 "
    "WHERE id = $1";

/* One measured run. */
typedef struct run_result {
    double rate;                /* msgs/s, first applied -> last applied */
    double seconds;             /* that window */
    double start_s;             /* consumer made -> first applied (join, first fetch) */
    double client_cpu_us;       /* per message, this process, during the window */
    double backend_cpu_us;      /* per message, the applying backend; -1 unknown */
    double wal_bytes;           /* per message, the whole run */
    uint64_t retries;           /* transient failures retried (inbox only) */
    double msgs_per_tx;         /* messages per applying transaction, mean */
} run_result;

typedef struct bench {
    fpg *pg;
    PGconn *admin;
    const char *bootstrap;
    long msgs;
    int partitions;
    long key_msgs[KEYS];        /* messages of each key in the topic */
    long long key_sum[KEYS];    /* ... and the sum of their amounts */
    int keys_used;
    int runs_done;              /* runs whose effect is in bench_account */
} bench;

/* ---------------------------------------------------------------- util */

/* CPU seconds of this process so far, all threads. */
static double process_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds of process pid so far, from /proc (the backend of a local
 * server); -1 when it cannot be read. */
static double pid_cpu_s(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after "(comm)": state is field 3, utime 14, stime 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                            &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The server's WAL position as bytes since 0/0. */
static int wal_lsn(PGconn *conn, long long *out)
{
    return bench_query_ll(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", NULL,
                    out);
}

/* ---------------------------------------------------------------- the handler */

typedef struct handler_state {
    PGconn *prepared_on;        /* the connection bench_apply is prepared on */
} handler_state;

static ferry_code handler_fail(ferry_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The handler's own failure: not retriable, so the consumer counts it. */
static ferry_code handler_fail(ferry_error *err, const char *fmt, ...)
{
    memset(err, 0, sizeof *err);
    err->code = FERRY_EUSER;
    err->index = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return FERRY_EUSER;
}

/*
 * A handler's one statement: the UPDATE sql as name, prepared the first
 * time the handler sees a connection (prepared statements outlive the
 * transaction they were made in), run with p (p[0] is m's key). It must
 * update the row of m's account: an account that is not there fails the
 * message, as the topics name only accounts that are. what says what the
 * statement does, for its error.
 */
static ferry_code apply_prepared(handler_state *h, PGconn *conn, const char *name,
                                 const char *sql, int nparams, const char *const *p,
                                 const ferry_message *m, const char *what, ferry_error *err)
{
    if (h->prepared_on != conn) {
        PGresult *res = PQprepare(conn, name, sql, 0, NULL);
        ferry_code rc = PQresultStatus(res) == PGRES_COMMAND_OK
                            ? FERRY_OK
                            : ferry_error_from_pg(err, conn, res, "could not prepare");
        PQclear(res);
        if (rc != FERRY_OK)
            return rc;
        h->prepared_on = conn;
    }
    PGresult *res = PQexecPrepared(conn, name, nparams, p, NULL, NULL, 0);
    ferry_code rc = FERRY_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ferry_error_from_pg(err, conn, res, what);
    else if (strcmp(PQcmdTuples(res), "1") != 0)
        rc = handler_fail(err, "no account %s", m->key);
    PQclear(res);
    return rc;
}

/* The service's effect, the same in both workloads: credit the payload's
 * amount to the account named by the key, one prepared UPDATE. */
static ferry_code apply_payment(PGconn *conn, const ferry_message *m, void *arg,
                                ferry_error *err)
{
    json_int_t amount = json_integer_value(json_object_get(m->payload, "amount"));
    if (amount <= 0)
        return handler_fail(err, "message %s has no positive amount", m->id);
    char amount_text[32];
    snprintf(amount_text, sizeof amount_text, "%" JSON_INTEGER_FORMAT, amount);
    const char *p[2] = {m->key, amount_text};
    return apply_prepared(arg, conn, "bench_apply", update_sql, 2, p, m,
                          "could not credit the account", err);
}

/* ---------------------------------------------------------------- Kafka */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        (*(long *)opaque)++;
}

/* xorshift64*: the preload's keys and amounts, the same every run. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void key_name(char *out, size_t size, int k)
{
    snprintf(out, size, "acct-%04d", k);
}

/* One message, with the headers a ferry relay puts on what it publishes. */
static int produce_one(rd_kafka_t *rk, const char *key, long seq, long amount, long serial,
                       const char *ce_time)
{
    ferry_uuid u;
    if (ferry_uuid_v7(&u) != FERRY_OK) {
        fprintf(stderr, "bench: ferry_uuid_v7 failed\n");
        return -1;
    }
    char id[FERRY_UUID_STRING_SIZE], seq_text[24], payload[PAYLOAD_SIZE];
    ferry_uuid_format(&u, id);
    snprintf(seq_text, sizeof seq_text, "%ld", seq);
    int len = snprintf(payload, sizeof payload,
                       "{\"account_id\":\"%s\",\"amount\":%ld,\"currency\":\"EUR\","
                       "\"reason\":\"card payment\",\"merchant\":\"Corner Bakery Ltd\","
                       "\"request_id\":\"req-%012ld\","
                       "\"occurred_at\":\"2024-05-17T09:41:07.123Z\"}",
                       key, amount, serial);
    if (len < 0 || (size_t)len >= sizeof payload) {
        fprintf(stderr, "bench: payload does not fit its buffer\n");
        return -1;
    }
    rd_kafka_headers_t *h = rd_kafka_headers_new(10);
    rd_kafka_header_add(h, "ferry_id", -1, id, -1);
    rd_kafka_header_add(h, "ferry_type", -1, EVENT_TYPE, -1);
    rd_kafka_header_add(h, "ferry_aggregate_type", -1, "Account", -1);
    rd_kafka_header_add(h, "ferry_seq", -1, seq_text, -1);
    rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
    rd_kafka_header_add(h, "ce_id", -1, id, -1);
    rd_kafka_header_add(h, "ce_type", -1, EVENT_TYPE, -1);
    rd_kafka_header_add(h, "ce_source", -1, "bench_consume", -1);
    rd_kafka_header_add(h, "ce_time", -1, ce_time, -1);
    rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(TOPIC),
                                    RD_KAFKA_V_KEY(key, strlen(key)),
                                    RD_KAFKA_V_VALUE(payload, (size_t)len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END)) ==
           RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 10);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);        /* not taken on failure */
        fprintf(stderr, "bench: produce: %s\n", rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* The topic's N messages, keys and amounts at random (seeded), positions
 * 1, 2, 3 ... per key in produce order, which is their order in the
 * key's partition (idempotent producer). Notes what each key should add
 * up to. */
static int preload(bench *b)
{
    long failed = 0;
    /* As the relay produces: idempotent, acks=all, Java's partitioner. */
    rd_kafka_t *rk = bench_relay_like_producer(b->bootstrap, "5", on_delivery, &failed);
    if (rk == NULL)
        return -1;
    char ce_time[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ce_time, sizeof ce_time, "%Y-%m-%dT%H:%M:%SZ", &tm);

    int rc = -1;
    uint64_t rnd = 0x9E3779B97F4A7C15ULL;
    int64_t t0 = clk_mono_us();
    for (long i = 0; i < b->msgs; i++) {
        int k = (int)(next_random(&rnd) % KEYS);
        long amount = 1 + (long)(next_random(&rnd) % 997);
        char key[16];
        key_name(key, sizeof key, k);
        long seq = ++b->key_msgs[k];
        b->key_sum[k] += amount;
        if (produce_one(rk, key, seq, amount, i, ce_time) != 0)
            goto out;
        rd_kafka_poll(rk, 0);
    }
    if (rd_kafka_flush(rk, FLUSH_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR || failed > 0) {
        fprintf(stderr, "bench: preload: %ld messages not delivered, %d still queued\n", failed,
                rd_kafka_outq_len(rk));
        goto out;
    }
    b->keys_used = 0;
    for (int k = 0; k < KEYS; k++)
        b->keys_used += b->key_msgs[k] > 0;
    fprintf(stderr, "bench: preloaded %ld messages over %d keys in %.1f s\n", b->msgs,
            b->keys_used, (double)(clk_mono_us() - t0) / 1e6);
    rc = 0;
out:
    rd_kafka_destroy(rk);
    return rc;
}

/* The broker must hold the whole topic: every partition from offset 0 (the
 * mock drops the oldest data of a partition past a few MB), N in all. */
static int check_topic(bench *b)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (bench_kconf_set(conf, "bootstrap.servers", b->bootstrap) != 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "bench: kafka client: %s\n", errstr);
        return -1;
    }
    long long total = 0;
    int rc = 0;
    for (int p = 0; p < b->partitions; p++) {
        int64_t lo = -1, hi = -1;
        rd_kafka_resp_err_t err =
            rd_kafka_query_watermark_offsets(rk, TOPIC, p, &lo, &hi, 10000);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR || lo != 0) {
            fprintf(stderr, "bench: partition %d of %s: %s, low watermark %" PRId64
                            " (the broker did not keep the whole partition: fewer "
                            "messages, please)\n", p, TOPIC, rd_kafka_err2str(err), lo);
            rc = -1;
        }
        total += hi;
    }
    if (rc == 0 && total != b->msgs) {
        fprintf(stderr, "bench: %s holds %lld messages, expected %ld\n", TOPIC, total, b->msgs);
        rc = -1;
    }
    rd_kafka_destroy(rk);
    return rc;
}

/* ---------------------------------------------------------------- checks */

/* After runs_done complete runs, each account holds exactly runs_done
 * times what the topic holds for its key: no message lost, none applied
 * twice. */
static int check_accounts(bench *b)
{
    PGresult *res = PQexec(b->admin, "SELECT id, balance, applied FROM bench_account");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != KEYS) {
        fprintf(stderr, "bench: reading bench_account failed: %s", PQerrorMessage(b->admin));
        PQclear(res);
        return -1;
    }
    int bad = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        int k = atoi(PQgetvalue(res, i, 0) + 5);    /* "acct-NNNN" */
        long long balance = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        long long applied = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        if (k < 0 || k >= KEYS || balance != b->runs_done * b->key_sum[k] ||
            applied != (long long)b->runs_done * b->key_msgs[k]) {
            if (bad++ < 5)
                fprintf(stderr, "bench: account %s: balance %lld, %lld messages applied; "
                                "after %d runs want %lld and %lld\n", PQgetvalue(res, i, 0),
                        balance, applied, b->runs_done,
                        k >= 0 && k < KEYS ? b->runs_done * b->key_sum[k] : -1LL,
                        k >= 0 && k < KEYS ? (long long)b->runs_done * b->key_msgs[k] : -1LL);
        }
    }
    PQclear(res);
    if (bad > 0)
        fprintf(stderr, "bench: %d accounts are wrong: messages lost or applied twice\n", bad);
    return bad ? -1 : 0;
}

/* The inbox of consumer name holds the run: N messages, every key at its
 * last position, nothing held, nothing dead-lettered. */
static int check_inbox(bench *b, const char *name)
{
    long long rows = -1, keys = -1, seq_sum = -1, held = -1, dead = -1;
    if (bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox WHERE consumer = $1", name,
                 &rows) != 0 ||
        bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox_key WHERE consumer = $1", name,
                 &keys) != 0 ||
        bench_query_ll(b->admin, "SELECT coalesce(sum(seq), 0) FROM ferry.inbox_key "
                           "WHERE consumer = $1", name, &seq_sum) != 0 ||
        bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = $1", name,
                 &held) != 0 ||
        bench_query_ll(b->admin, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = $1", name,
                 &dead) != 0)
        return -1;
    if (rows != b->msgs || keys != b->keys_used || seq_sum != b->msgs || held != 0 ||
        dead != 0) {
        fprintf(stderr, "bench: inbox of %s: %lld rows (want %ld), %lld keys (want %d), "
                        "positions summing to %lld (want %ld), %lld held, %lld dead letters\n",
                name, rows, b->msgs, keys, b->keys_used, seq_sum, b->msgs, held, dead);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- runs */

/* What a run samples at its first and its last applied message. */
typedef struct window {
    int64_t t_made, t_first, t_last;
    double cpu_first, cpu_last;
    double be_first, be_last;
    long backend_pid;
    long long wal_before;       /* the WAL position when the run began */
} window;

static void window_mark(window *w, int first)
{
    int64_t now = clk_mono_us();
    double cpu = process_cpu_s(), be = pid_cpu_s(w->backend_pid);
    if (first) {
        w->t_first = now;
        w->cpu_first = cpu;
        w->be_first = be;
    } else {
        w->t_last = now;
        w->cpu_last = cpu;
        w->be_last = be;
    }
}

static void window_result(const window *w, long msgs, long long wal_after, run_result *out)
{
    /* Messages 2 .. N were applied inside the window. */
    double n = (double)(msgs - 1);
    out->seconds = (double)(w->t_last - w->t_first) / 1e6;
    out->rate = out->seconds > 0 ? n / out->seconds : 0;
    out->start_s = (double)(w->t_first - w->t_made) / 1e6;
    out->client_cpu_us = (w->cpu_last - w->cpu_first) * 1e6 / n;
    out->backend_cpu_us = w->be_first >= 0 && w->be_last >= 0
                              ? (w->be_last - w->be_first) * 1e6 / n
                              : -1;
    out->wal_bytes = (double)(wal_after - w->wal_before) / (double)msgs;
}

/* The same start for every run: no dirty buffers waiting for a
 * checkpoint, no dead account versions left from the run before. */
static int before_run(bench *b)
{
    return bench_exec(b->admin, "VACUUM bench_account") || bench_exec(b->admin, "CHECKPOINT") ? -1
                                                                                          : 0;
}

/* Both workloads' runs begin and end alike: from the same start
 * (before_run), with the WAL position noted, the clock running from
 * here; at the end the run counts (check_accounts expects its effect) and
 * its figures come from the window and the WAL written since. */
static int window_open(bench *b, window *w)
{
    memset(w, 0, sizeof *w);
    if (before_run(b) != 0 || wal_lsn(b->admin, &w->wal_before) != 0)
        return -1;
    w->t_made = clk_mono_us();
    return 0;
}

static int window_close(bench *b, const window *w, run_result *out)
{
    long long wal_after;
    b->runs_done++;
    if (wal_lsn(b->admin, &wal_after) != 0)
        return -1;
    window_result(w, b->msgs, wal_after, out);
    return 0;
}

static long backend_of(PGconn *admin, const char *application_name)
{
    long long pid = -1;
    if (bench_query_ll(admin, "SELECT coalesce(max(pid), -1) FROM pg_stat_activity "
                        "WHERE application_name = $1", application_name, &pid) != 0)
        return -1;
    return (long)pid;
}

/* (a) ferry_consumer until N messages are applied; batch_max as in its
 * configuration (0: the default, batches; 1: one message per
 * transaction, the path before batches). */
static int run_inbox(bench *b, int round, int batch_max, run_result *out)
{
    char name[64];
    snprintf(name, sizeof name, "bench-inbox%s-%d", batch_max == 1 ? "-unbatched" : "", round);
    handler_state h = {NULL};
    const char *topics[1] = {TOPIC};
    ferry_consumer_conf conf = {
        .name = name,
        .db = fpg_conninfo(b->pg),
        .kafka = b->bootstrap,
        .topics = topics,
        .topic_count = 1,
        .handler = apply_payment,
        .handler_arg = &h,
        .isolation = FERRY_READ_COMMITTED,
        .batch_max = batch_max,
    };
    window w;
    if (window_open(b, &w) != 0)
        return -1;
    /* The consumer's connection is libpq's to make: name it, to find its
     * backend. */
    setenv("PGAPPNAME", name, 1);
    ferry_consumer *c = NULL;
    ferry_error err;
    ferry_code frc = ferry_consumer_new(&conf, &c, &err);
    unsetenv("PGAPPNAME");
    if (frc != FERRY_OK) {
        fprintf(stderr, "bench: ferry_consumer_new: %s: %s\n", ferry_code_name(frc),
                err.message);
        return -1;
    }
    w.backend_pid = fpg_external(b->pg) ? -1 : backend_of(b->admin, name);

    int rc = -1;
    ferry_consumer_stats s;
    memset(&s, 0, sizeof s);
    int64_t last_progress = w.t_made;
    while (s.applied < (uint64_t)b->msgs) {
        frc = ferry_consumer_poll(c, POLL_MS, &err);
        if (frc != FERRY_OK) {
            fprintf(stderr, "bench: ferry_consumer_poll: %s: %s\n", ferry_code_name(frc),
                    err.message);
            goto out;
        }
        uint64_t before = s.applied;
        ferry_consumer_stats_get(c, &s);
        if (s.applied != before) {
            if (before == 0)
                window_mark(&w, 1);
            last_progress = clk_mono_us();
        } else if (clk_mono_us() - last_progress >
                   (int64_t)(before == 0 ? START_TIMEOUT_MS : STALL_TIMEOUT_MS) * 1000) {
            fprintf(stderr, "bench: %s: %" PRIu64 " of %ld messages applied, then nothing "
                            "for %d s\n", name, s.applied, b->msgs, STALL_TIMEOUT_MS / 1000);
            goto out;
        }
        if (s.dead_lettered + s.handler_failures + s.duplicates + s.late + s.held_gap +
                s.held_parked > 0)
            break;      /* reported below */
    }
    window_mark(&w, 0);
    rc = 0;
out:
    if (c != NULL) {
        ferry_code crc = ferry_consumer_close(c, &err);
        if (crc != FERRY_OK) {
            fprintf(stderr, "bench: ferry_consumer_close: %s: %s\n", ferry_code_name(crc),
                    err.message);
            rc = -1;
        }
        ferry_consumer_stats_get(c, &s);
        ferry_consumer_destroy(c);
    }
    if (rc != 0)
        return -1;
    if (s.received != (uint64_t)b->msgs || s.applied != (uint64_t)b->msgs ||
        s.duplicates + s.late + s.held_gap + s.held_parked + s.drained + s.dead_lettered +
                s.handler_failures != 0) {
        fprintf(stderr, "bench: %s: received %" PRIu64 ", applied %" PRIu64 " (want %ld), "
                        "duplicates %" PRIu64 ", late %" PRIu64 ", held %" PRIu64 "+%" PRIu64
                        ", drained %" PRIu64 ", dead-lettered %" PRIu64 ", handler failures %"
                        PRIu64 "\n", name, s.received, s.applied, b->msgs, s.duplicates, s.late,
                s.held_gap, s.held_parked, s.drained, s.dead_lettered, s.handler_failures);
        return -1;
    }
    if (window_close(b, &w, out) != 0 || check_inbox(b, name) != 0 || check_accounts(b) != 0)
        return -1;
    out->retries = s.transient_retries;
    /* Each message applied in a batch's transaction, or in its own. */
    out->msgs_per_tx = (double)b->msgs /
                       (double)(s.batches + ((uint64_t)b->msgs - s.batch_messages));
    fprintf(stderr, "bench: %s: %" PRIu64 " batches (%.1f messages a transaction), %" PRIu64
                    " fallbacks\n", name, s.batches, out->msgs_per_tx, s.batch_fallbacks);
    return 0;
}

/* (b)'s transaction body: the handler on each message, as the ferry
 * consumer shows it (the payload parsed, the view filled in). */
typedef struct bare_ctx {
    handler_state *h;
    rd_kafka_message_t **rkms;
    int n;
} bare_ctx;

static ferry_code bare_apply(PGconn *conn, void *arg, ferry_error *err)
{
    bare_ctx *bc = arg;
    for (int i = 0; i < bc->n; i++) {
        const rd_kafka_message_t *rkm = bc->rkms[i];
        char key[64];
        size_t klen = rkm->key_len < sizeof key - 1 ? rkm->key_len : sizeof key - 1;
        memcpy(key, rkm->key ? rkm->key : "", rkm->key ? klen : 0);
        key[rkm->key ? klen : 0] = '\0';
        json_error_t jerr;
        json_t *payload = json_loadb(rkm->payload ? rkm->payload : "null",
                                     rkm->payload ? rkm->len : 4,
                                     JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        ferry_message m = {
            .topic = rd_kafka_topic_name(rkm->rkt),
            .partition = rkm->partition,
            .offset = rkm->offset,
            .key = key,
            .key_len = strlen(key),
            .id = "",
            .type = "",
            .aggregate_type = "",
            .position = 0,
            .payload = payload ? payload : json_null(),
            .payload_text = rkm->payload ? rkm->payload : "null",
            .payload_len = rkm->payload ? rkm->len : 4,
            .attempt = 1,
            .internal_ = NULL,
        };
        ferry_code rc = apply_payment(conn, &m, bc->h, err);
        json_decref(payload);
        if (rc != FERRY_OK)
            return rc;
    }
    return FERRY_OK;
}

/* (b) a plain consumer loop: the same handler in a transaction per
 * message (batch_max 1), or per batch of what has arrived, no inbox. */
static int run_bare(bench *b, int round, int batch_max, run_result *out)
{
    char name[64];
    snprintf(name, sizeof name, "bench-bare%s-%d", batch_max > 1 ? "-batched" : "", round);
    window w;
    if (window_open(b, &w) != 0)
        return -1;
    PGconn *conn = fpg_connect(b->pg);
    if (conn == NULL)
        return -1;
    w.backend_pid = fpg_external(b->pg) ? -1 : PQbackendPID(conn);

    /* The ferry consumer's settings (lib/consume.c, kafka_new). */
    const char *const props[] = {"enable.auto.offset.store", "false",
                                 "enable.auto.commit", "true",
                                 "auto.commit.interval.ms", "1000",
                                 "auto.offset.reset", "earliest",
                                 "enable.partition.eof", "false",
                                 "client.id", name,
                                 NULL};
    rd_kafka_t *rk = bench_consumer_new(b->bootstrap, name, props);
    if (rk == NULL) {
        PQfinish(conn);
        return -1;
    }
    int rc = -1;
    int64_t next_offset[PARTITIONS_MAX] = {0};
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, TOPIC, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "bench: subscribe: %s\n", rd_kafka_err2str(kerr));
        goto out;
    }

    handler_state h = {NULL};
    ferry_tx_opts tx = {.isolation = FERRY_READ_COMMITTED, .max_attempts = 1};
    long applied = 0;
    int64_t last_progress = w.t_made;
    rd_kafka_message_t *rkms[BARE_BATCH_MAX];
    while (applied < b->msgs) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, POLL_MS);
        if (rkm == NULL) {
            if (clk_mono_us() - last_progress >
                (int64_t)(applied == 0 ? START_TIMEOUT_MS : STALL_TIMEOUT_MS) * 1000) {
                fprintf(stderr, "bench: %s: %ld of %ld messages applied, then nothing for "
                                "%d s\n", name, applied, b->msgs, STALL_TIMEOUT_MS / 1000);
                goto out;
            }
            continue;
        }
        /* A batch: this one and what else has arrived, as the ferry
         * consumer gathers with batch_ms 0. */
        int n = 0;
        int failed = 0;
        while (rkm != NULL) {
            if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                char fatal[512];
                int is_fatal = rd_kafka_fatal_error(rk, fatal, sizeof fatal) != 0;
                fprintf(stderr, "bench: %s: %s\n", name,
                        is_fatal ? fatal : rd_kafka_message_errstr(rkm));
                rd_kafka_message_destroy(rkm);
                failed = is_fatal;
                break;
            }
            /* One consumer, no rebalance: every partition in order, once. */
            if (rkm->partition < 0 || rkm->partition >= b->partitions ||
                rkm->offset != next_offset[rkm->partition]) {
                fprintf(stderr, "bench: %s: got partition %" PRId32 " offset %" PRId64 " out of "
                                "order\n", name, rkm->partition, rkm->offset);
                rd_kafka_message_destroy(rkm);
                failed = 1;
                break;
            }
            next_offset[rkm->partition]++;
            rkms[n++] = rkm;
            if (n >= batch_max)
                break;
            rkm = rd_kafka_consumer_poll(rk, 0);
        }
        if (n > 0) {
            bare_ctx bc = {&h, rkms, n};
            ferry_error err;
            ferry_code frc = ferry_tx_run(conn, &tx, bare_apply, &bc, NULL, &err);
            if (frc != FERRY_OK) {
                fprintf(stderr, "bench: %s: %s: %s\n", name, ferry_code_name(frc), err.message);
                failed = 1;
            }
            /* Committed: Kafka may move past them. */
            for (int i = 0; i < n && !failed; i++) {
                rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(rkms[i]->rkt),
                                                  rkms[i]->partition)->offset =
                    rkms[i]->offset + 1;
                kerr = rd_kafka_offsets_store(rk, l);
                if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR)
                    kerr = l->elems[0].err;
                rd_kafka_topic_partition_list_destroy(l);
                if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
                    fprintf(stderr, "bench: %s: offsets_store: %s\n", name,
                            rd_kafka_err2str(kerr));
                    failed = 1;
                }
            }
            for (int i = 0; i < n; i++)
                rd_kafka_message_destroy(rkms[i]);
            if (!failed) {
                if (applied == 0)
                    window_mark(&w, 1);
                applied += n;
                last_progress = clk_mono_us();
            }
        }
        if (failed)
            goto out;
    }
    window_mark(&w, 0);
    rc = 0;
out:
    kerr = rd_kafka_consumer_close(rk);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "bench: %s: consumer_close: %s\n", name, rd_kafka_err2str(kerr));
        rc = -1;
    }
    rd_kafka_destroy(rk);
    PQfinish(conn);
    if (rc != 0)
        return -1;
    if (window_close(b, &w, out) != 0 || check_accounts(b) != 0)
        return -1;
    out->retries = 0;
    return 0;
}

/* ---------------------------------------------------------------- anatomy */

/*
 * Where the time of one applied message goes, statement by statement: the
 * statements the consumer sends, replayed on one connection without Kafka,
 * the three variants interleaved message by message so that they share
 * the noise. Every key's first message is left out (the steady state has
 * the key's row in ferry.inbox_key).
 */
enum { AN_BARE, AN_CLAIM, AN_PREPARED, AN_COUNT };
enum { ST_BEGIN, ST_CLAIM, ST_UPDATE, ST_COMMIT, ST_TOTAL, ST_COUNT };

static const char *const an_name[AN_COUNT] = {
    "bare: no claim",
    "claim, unprepared",
    "claim, prepared (as lib/consume.c)",
};
static const char begin_sql[] =
    "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_current_xact_id()::text";
/* Sent both ways: PQexecParams (planned every time) and prepared. The
 * claim column times the claim and the finish (lib/consume.c sends the
 * finish in the round trip of the COMMIT). */
static const char claim_sql[] =
    "SELECT verdict FROM ferry.consume_claim($1, $2::uuid, $3, $4, $5::bigint, "
    "first_any => $6::boolean)";
static const char finish_sql[] = "SELECT ferry.consume_finish($1, $2::uuid)";

typedef struct anatomy {
    long n;                             /* timed messages per variant */
    double *t[AN_COUNT][ST_COUNT];      /* us, per message */
    double med[AN_COUNT][ST_COUNT];
} anatomy;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* One message of variant v in its own transaction; t gets each step's us. */
static int an_message(PGconn *conn, int v, const char *consumer, int k, long seq,
                      double t[ST_COUNT])
{
    char key[16], seq_text[24], id[FERRY_UUID_STRING_SIZE];
    ferry_uuid u;
    if (ferry_uuid_v7(&u) != FERRY_OK)
        return -1;
    ferry_uuid_format(&u, id);
    key_name(key, sizeof key, k);
    snprintf(seq_text, sizeof seq_text, "%ld", seq);
    const char *cp[6] = {consumer, id, TOPIC, key, seq_text, "f"};
    const char *up[2] = {key, "1"};

    int64_t t0 = mono_ns();
    if (bench_result_ok(conn, PQexec(conn, begin_sql), PGRES_TUPLES_OK, "BEGIN") != 0)
        return -1;
    int64_t t1 = mono_ns();
    if (v != AN_BARE) {
        PGresult *res = v == AN_CLAIM
                            ? PQexecParams(conn, claim_sql, 6, NULL, cp, NULL, NULL, 0)
                            : PQexecPrepared(conn, "bench_claim", 6, cp, NULL, NULL, 0);
        int applied = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                      strncmp(PQgetvalue(res, 0, 0), "apply", 5) == 0;
        if (!applied)
            fprintf(stderr, "bench: anatomy: claim of %s position %ld: %s\n", key, seq,
                    PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                        ? PQgetvalue(res, 0, 0) : PQerrorMessage(conn));
        PQclear(res);
        if (!applied)
            goto rollback;
    }
    int64_t t2 = mono_ns();
    if (bench_result_ok(conn, PQexecPrepared(conn, "bench_apply", 2, up, NULL, NULL, 0),
                        PGRES_COMMAND_OK, "UPDATE") != 0)
        goto rollback;
    int64_t t3 = mono_ns();
    if (v != AN_BARE &&
        bench_result_ok(conn,
                        v == AN_CLAIM ? PQexecParams(conn, finish_sql, 2, NULL, cp, NULL, NULL, 0)
                                      : PQexecPrepared(conn, "bench_finish", 2, cp, NULL, NULL, 0),
                        PGRES_TUPLES_OK, "finish") != 0)
        goto rollback;
    int64_t t3f = mono_ns();
    if (bench_result_ok(conn, PQexec(conn, "COMMIT"), PGRES_COMMAND_OK, "COMMIT") != 0)
        return -1;
    int64_t t4 = mono_ns();
    t[ST_BEGIN] = (double)(t1 - t0) / 1e3;
    t[ST_CLAIM] = (double)(t2 - t1 + t3f - t3) / 1e3;
    t[ST_UPDATE] = (double)(t3 - t2) / 1e3;
    t[ST_COMMIT] = (double)(t4 - t3f) / 1e3;
    t[ST_TOTAL] = (double)(t4 - t0) / 1e3;
    return 0;

rollback:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}

/* Sorts v. */
static double median_of_sorted(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void anatomy_free(anatomy *an)
{
    for (int v = 0; v < AN_COUNT; v++)
        for (int st = 0; st < ST_COUNT; st++) {
            free(an->t[v][st]);
            an->t[v][st] = NULL;
        }
}

static int run_anatomy(bench *b, long n, anatomy *an)
{
    static const char *const consumer[AN_COUNT] = {"", "bench-anatomy-params",
                                                   "bench-anatomy-prepared"};
    memset(an, 0, sizeof *an);
    an->n = n;
    for (int v = 0; v < AN_COUNT; v++)
        for (int st = 0; st < ST_COUNT; st++)
            if ((an->t[v][st] = calloc((size_t)n, sizeof(double))) == NULL) {
                fprintf(stderr, "bench: out of memory\n");
                anatomy_free(an);
                return -1;
            }
    if (before_run(b) != 0)
        goto fail;
    PGconn *conn = fpg_connect(b->pg);
    if (conn == NULL)
        goto fail;
    if (bench_result_ok(conn, PQprepare(conn, "bench_apply", update_sql, 0, NULL),
                        PGRES_COMMAND_OK, "PREPARE bench_apply") != 0 ||
        bench_result_ok(conn, PQprepare(conn, "bench_claim", claim_sql, 0, NULL),
                        PGRES_COMMAND_OK, "PREPARE bench_claim") != 0 ||
        bench_result_ok(conn, PQprepare(conn, "bench_finish", finish_sql, 0, NULL),
                        PGRES_COMMAND_OK, "PREPARE bench_finish") != 0)
        goto fail_conn;
    double scratch[ST_COUNT];
    for (int k = 0; k < KEYS; k++)
        for (int v = AN_CLAIM; v < AN_COUNT; v++)
            if (an_message(conn, v, consumer[v], k, 1, scratch) != 0)
                goto fail_conn;
    for (long i = 0; i < n; i++) {
        int k = (int)(i % KEYS);
        long seq = i / KEYS + 2;
        for (int j = 0; j < AN_COUNT; j++) {
            int v = (int)((i + j) % AN_COUNT);      /* rotated */
            double t[ST_COUNT];
            if (an_message(conn, v, consumer[v], k, seq, t) != 0)
                goto fail_conn;
            for (int st = 0; st < ST_COUNT; st++)
                an->t[v][st][i] = t[st];
        }
    }
    PQfinish(conn);
    for (int v = 0; v < AN_COUNT; v++)
        for (int st = 0; st < ST_COUNT; st++)
            an->med[v][st] = median_of_sorted(an->t[v][st], n);
    anatomy_free(an);
    return 0;

fail_conn:
    PQfinish(conn);
fail:
    anatomy_free(an);
    return -1;
}

/* ---------------------------------------------------------------- report */

typedef struct figures {
    int rounds;
    run_result r[WL_COUNT][ROUNDS_MAX];
} figures;

static void column(const figures *f, workload wl, size_t off, double *out)
{
    for (int i = 0; i < f->rounds; i++)
        out[i] = *(const double *)(const void *)((const char *)&f->r[wl][i] + off);
}

static double med_of(const figures *f, workload wl, size_t off)
{
    double v[ROUNDS_MAX];
    column(f, wl, off, v);
    return bench_median(v, f->rounds);
}

static void print_report(const bench *b, const figures *f, const anatomy *an,
                         const bench_server *srv, int version)
{
    int n = f->rounds;
    printf("ferry consumer-inbox benchmark (libferry %s, schema %d)\n", ferry_version(),
           version);
    printf("server: PostgreSQL %s, fsync=%s, synchronous_commit=%s, shared_buffers=%s "
           "(durable defaults); broker: ferry-relay devkafka (librdkafka's mock cluster, "
           "1 broker)\n", srv->version, srv->fsync, srv->sync_commit, srv->shared_buffers);
    printf("topic %s: %ld messages over %d keys, %d partitions, ~200-byte JSON payloads, "
           "the headers a ferry relay sets\n(ferry_id UUIDv7, ferry_type, ferry_seq per key, "
           "CloudEvents); one consumer, one transaction per message:\n", TOPIC, b->msgs,
           b->keys_used, b->partitions);
    printf("  (a) inbox  ferry_consumer_poll(): BEGIN + the prepared SELECT "
           "ferry.consume_claim(...) in one round trip; handler; consume_finish + COMMIT in "
           "one round trip; store offsets\n");
    printf("  (b) bare   rd_kafka_consumer_poll(); parse payload; ferry_tx_run(BEGIN + xid; "
           "handler; COMMIT); store offset\n");
    printf("  handler, both: one prepared UPDATE bench_account SET balance = balance + $2, "
           "applied = applied + 1 WHERE id = $1\n");
    printf("method: %d rounds of (a, b), order swapped every round, a new consumer group "
           "(and inbox name) per run,\n  CHECKPOINT + VACUUM before each; the clock runs "
           "from the first applied message to the last\n  (group join and first fetch "
           "excluded, shown as start); figures are medians over the rounds\n", n);

    printf("\nmessages applied per second (one column per round; median, min-max):\n");
    printf("  %-7s", "");
    for (int r = 0; r < n; r++)
        printf(" %8s%d", "round ", r + 1);
    printf(" %9s %19s\n", "median", "min - max");
    double v[ROUNDS_MAX];
    for (int wl = 0; wl < WL_COUNT; wl++) {
        column(f, (workload)wl, offsetof(run_result, rate), v);
        printf("  %-7s", wl_name[wl]);
        for (int r = 0; r < n; r++)
            printf(" %9.0f", v[r]);
        printf(" %9.0f %9.0f - %-9.0f\n", bench_median(v, n), bench_min(v, n), bench_max(v, n));
    }
    double mi = med_of(f, WL_INBOX, offsetof(run_result, rate));
    double mi1 = med_of(f, WL_INBOX1, offsetof(run_result, rate));
    double mb = med_of(f, WL_BARE, offsetof(run_result, rate));
    double mbb = med_of(f, WL_BAREB, offsetof(run_result, rate));
    double pr[ROUNDS_MAX];
    for (int r = 0; r < n; r++)
        pr[r] = f->r[WL_INBOX1][r].rate / f->r[WL_BARE][r].rate;
    printf("  inbox1 / bare   %.3f  (one message per transaction: the inbox's cost; target "
           ">= 0.75;\n                  per round: median %.3f, %.3f - %.3f)\n",
           mi1 / mb, bench_median(pr, n), bench_min(pr, n), bench_max(pr, n));
    for (int r = 0; r < n; r++)
        pr[r] = f->r[WL_INBOX][r].rate / f->r[WL_INBOX1][r].rate;
    printf("  inbox / inbox1  %.3f  (batches against one message per transaction; target "
           ">= 5;\n                  per round: median %.3f, %.3f - %.3f)\n",
           mi / mi1, bench_median(pr, n), bench_min(pr, n), bench_max(pr, n));
    for (int r = 0; r < n; r++)
        pr[r] = f->r[WL_INBOX][r].rate / f->r[WL_BAREB][r].rate;
    printf("  inbox / bareB   %.3f  (batches, with and without the inbox; target >= 0.9;\n"
           "                  per round: median %.3f, %.3f - %.3f)\n",
           mi / mbb, bench_median(pr, n), bench_min(pr, n), bench_max(pr, n));
    printf("  time per message: inbox1 %.1f us, bare %.1f us, the inbox adds %.1f us "
           "(%+.1f%%);\n  batched: inbox %.1f us, bareB %.1f us\n", 1e6 / mi1, 1e6 / mb,
           1e6 / mi1 - 1e6 / mb, (mb / mi1 - 1) * 100, 1e6 / mi, 1e6 / mbb);

    printf("\nper message (medians over the rounds):\n");
    printf("  %-7s %14s %14s %12s %9s %9s\n", "", "client CPU us", "backend CPU us",
           "WAL bytes", "start s", "retries");
    for (int wl = 0; wl < WL_COUNT; wl++) {
        double be = med_of(f, (workload)wl, offsetof(run_result, backend_cpu_us));
        double retries[ROUNDS_MAX];
        for (int r = 0; r < n; r++)
            retries[r] = (double)f->r[wl][r].retries;
        char be_text[32];
        if (be >= 0)
            snprintf(be_text, sizeof be_text, "%.1f", be);
        else
            snprintf(be_text, sizeof be_text, "n/a");
        printf("  %-7s %14.1f %14s %12.0f %9.2f %9.0f\n", wl_name[wl],
               med_of(f, (workload)wl, offsetof(run_result, client_cpu_us)), be_text,
               med_of(f, (workload)wl, offsetof(run_result, wal_bytes)),
               med_of(f, (workload)wl, offsetof(run_result, start_s)), bench_median(retries, n));
    }
    printf("  client CPU: this process, all threads (librdkafka's too); backend CPU: the "
           "applying connection's\n  server process, from /proc (n/a for a server that is "
           "not local); WAL: bytes written per message\n");

    printf("\nwhere the time goes: the consumer's statements replayed on one connection, "
           "no Kafka, the three\n  interleaved message by message, %ld messages each "
           "(median us per message):\n", an->n);
    printf("  %-33s %10s %8s %8s %8s %8s\n", "", "BEGIN+xid", "claim", "UPDATE", "COMMIT",
           "total");
    for (int a = 0; a < AN_COUNT; a++)
        printf("  %-33s %10.1f %8.1f %8.1f %8.1f %8.1f\n", an_name[a], an->med[a][ST_BEGIN],
               an->med[a][ST_CLAIM], an->med[a][ST_UPDATE], an->med[a][ST_COMMIT],
               an->med[a][ST_TOTAL]);
    printf("  (%s: PQexecParams, parsed and planned every message; claim: consume_claim "
           "and consume_finish;\n   lib/consume.c sends the prepared claim in the same round "
           "trip as BEGIN and the finish in\n   the COMMIT's, so its BEGIN, claim and COMMIT "
           "columns overlap)\n", an_name[AN_CLAIM]);

    printf("\ncheck: every run applied each of the %ld messages exactly once (account "
           "balances and counts; the\n  inbox's rows and positions; nothing held or "
           "dead-lettered)\n", b->msgs);

    printf("\n");
    printf("bench consume_inbox_msgs_per_s %.0f msgs/s\n", mi);
    printf("bench consume_bare_msgs_per_s %.0f msgs/s\n", mb);
    printf("bench consume_inbox_vs_bare_ratio %.3f ratio\n", mi1 / mb);
    printf("bench consume_inbox_unbatched_msgs_per_s %.0f msgs/s\n", mi1);
    printf("bench consume_bare_batched_msgs_per_s %.0f msgs/s\n", mbb);
    printf("bench consume_batch_vs_unbatched_ratio %.3f ratio\n", mi / mi1);
    printf("bench consume_inbox_vs_bare_batched_ratio %.3f ratio\n", mi / mbb);
}

/* ---------------------------------------------------------------- held drain */

/*
 * What does draining held messages cost per message, and does it grow
 * with the held backlog (issue 12, item 13)? A consumer starts with
 * HELD_READY messages held and ready — HELD_READY_KEYS keys whose
 * position 1 is applied and 2, 3 ... held — beside (held - HELD_READY)
 * held messages that are not ready (a gap before each of their keys, 100
 * per key), written straight into ferry.inbox_held. Timed: from the first
 * ferry_consumer_poll() until the HELD_READY are drained (the handler does
 * nothing, so this is the drain's own cost). The figure is the cost per
 * message at HELD_BIG held over the cost at HELD_SMALL held, medians of
 * FERRY_BENCH_ROUNDS runs each, interleaved; target <= 1.5.
 */
enum {
    HELD_READY = 2000, HELD_READY_KEYS = 20, HELD_SMALL = 2000, HELD_BIG = 50000,
    HELD_PER_KEY = 100,
};
_Static_assert(HELD_READY % HELD_READY_KEYS == 0 && HELD_SMALL >= HELD_READY &&
               (HELD_BIG - HELD_READY) % HELD_PER_KEY == 0, "whole keys");
static const char HELD_TOPIC[] = "bench.held";

static ferry_code held_handler(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    return FERRY_OK;
}

/* One run: held messages in all, of which HELD_READY ready; the drain's
 * time per message into *us. */
static int run_held(bench *b, long held, int round, double *us)
{
    char name[64];
    snprintf(name, sizeof name, "bench-held-%ld-%d", held, round);
    const char *p[5];
    char ready_keys[16], per_ready[16], blocked_keys[16], per_blocked[16];
    snprintf(ready_keys, sizeof ready_keys, "%d", HELD_READY_KEYS);
    snprintf(per_ready, sizeof per_ready, "%d", HELD_READY / HELD_READY_KEYS);
    snprintf(blocked_keys, sizeof blocked_keys, "%ld", (held - HELD_READY) / HELD_PER_KEY);
    snprintf(per_blocked, sizeof per_blocked, "%d", HELD_PER_KEY);
    p[0] = name;
    p[1] = ready_keys;
    p[2] = per_ready;
    p[3] = blocked_keys;
    p[4] = per_blocked;
    /* Ready keys r<k>: position 1 applied, 2 .. per+1 held. Blocked keys
     * b<k>: nothing applied, 2 .. per+1 held (position 1 never came). */
    PGresult *res = PQexecParams(
        b->admin,
        "WITH k AS (INSERT INTO ferry.inbox_key (consumer, topic, key, seq) "
        "  SELECT $1, 'bench.held', 'r' || g, 1 FROM generate_series(1, $2::int) g "
        "  UNION ALL SELECT $1, 'bench.held', 'b' || g, 0 FROM generate_series(1, $4::int) g) "
        "INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, payload, reason) "
        "SELECT $1, 'bench.held', 'r' || g, s, gen_random_uuid(), '{\"amount\": 1}', 'gap' "
        "  FROM generate_series(1, $2::int) g, generate_series(2, $3::int + 1) s "
        "UNION ALL "
        "SELECT $1, 'bench.held', 'b' || g, s, gen_random_uuid(), '{\"amount\": 1}', 'gap' "
        "  FROM generate_series(1, $4::int) g, generate_series(2, $5::int + 1) s",
        5, NULL, p, NULL, NULL, 0);
    if (bench_result_ok(b->admin, res, PGRES_COMMAND_OK, "held backlog") != 0)
        return -1;
    /* Written straight into the tables: each key's ready flag (schema 10)
     * as the protocol's functions would have left it. */
    res = PQexecParams(b->admin, "SELECT count(ferry.inbox_settle_(consumer, topic, key)) "
                                 "FROM ferry.inbox_key WHERE consumer = $1",
                       1, NULL, p, NULL, NULL, 0);
    if (bench_result_ok(b->admin, res, PGRES_TUPLES_OK, "ready flags") != 0 ||
        bench_exec(b->admin, "VACUUM ANALYZE ferry.inbox_held, ferry.inbox_key") != 0 ||
        bench_exec(b->admin, "CHECKPOINT") != 0)    /* the backlog's writes not in the timing */
        return -1;

    const char *topics[1] = {HELD_TOPIC};
    ferry_consumer_conf conf = {.name = name, .db = fpg_conninfo(b->pg), .kafka = b->bootstrap,
                                .topics = topics, .topic_count = 1,
                                .handler = held_handler};
    ferry_consumer *c = NULL;
    ferry_error err;
    ferry_code frc = ferry_consumer_new(&conf, &c, &err);
    if (frc != FERRY_OK) {
        fprintf(stderr, "bench: ferry_consumer_new: %s: %s\n", ferry_code_name(frc),
                err.message);
        return -1;
    }
    int status = -1;
    ferry_consumer_stats s = {0};
    int64_t t0 = clk_mono_us(), deadline = t0 + 600 * 1000000LL;
    while (s.drained < HELD_READY) {
        if ((frc = ferry_consumer_poll(c, 10, &err)) != FERRY_OK) {
            fprintf(stderr, "bench: ferry_consumer_poll: %s: %s\n", ferry_code_name(frc),
                    err.message);
            goto out;
        }
        ferry_consumer_stats_get(c, &s);
        if (clk_mono_us() > deadline) {
            fprintf(stderr, "bench: %s: %" PRIu64 " of %d held messages drained in 600 s\n",
                    name, s.drained, HELD_READY);
            goto out;
        }
    }
    *us = (double)(clk_mono_us() - t0) / HELD_READY;
    long long left = -1;
    if (bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = $1",
                       name, &left) != 0)
        goto out;
    if (left != held - HELD_READY || s.drained != HELD_READY) {
        fprintf(stderr, "bench: %s: drained %" PRIu64 ", %lld left held (want %d, %ld)\n",
                name, s.drained, left, HELD_READY, held - HELD_READY);
        goto out;
    }
    status = 0;
out:
    ferry_consumer_destroy(c);
    /* The next run starts with only its own backlog. */
    if (bench_exec(b->admin, "TRUNCATE ferry.inbox_held") != 0)
        status = -1;
    return status;
}

/* The held-drain figure: per-message cost at HELD_BIG over HELD_SMALL. */
static int run_held_drain(bench *b, kt_broker *kb, int rounds, double *ratio)
{
    double small[ROUNDS_MAX], big[ROUNDS_MAX];
    if (kt_command(kb, "topic-create %s 1 1", HELD_TOPIC) != 0)
        return -1;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 2; k++) {
            int is_big = (r + k) % 2;       /* order swapped every round */
            long held = is_big ? HELD_BIG : HELD_SMALL;
            double *out = is_big ? &big[r] : &small[r];
            if (run_held(b, held, r + 1, out) != 0)
                return -1;
            fprintf(stderr, "bench: round %d/%d held drain at %ld held: %.1f us/msg\n", r + 1,
                    rounds, held, *out);
        }
    }
    *ratio = bench_median(big, rounds) / bench_median(small, rounds);
    printf("\nheld drain: %d ready held messages drained by a new consumer, beside a "
           "backlog of held ones\nthat are not ready (a gap before each key), median of %d "
           "rounds:\n", HELD_READY, rounds);
    printf("  at %6d held  %8.1f us per message\n", HELD_SMALL, bench_median(small, rounds));
    printf("  at %6d held  %8.1f us per message\n", HELD_BIG, bench_median(big, rounds));
    printf("bench consume_held_drain_ratio %.3f ratio\n", *ratio);
    return 0;
}

/* ---------------------------------------------------------------- pipeline */

/*
 * The whole way, end to end (issue 13): PIPE_WRITERS writer threads emit
 * (ferry.emit, PIPE_PER_TX messages per transaction, keys at random over
 * the 1000 accounts) for PIPE_SECONDS; one `ferry-relay run` publishes;
 * one ferry consumer (the default configuration: batches) applies each
 * message to bench_pipe. Sampled every 100 ms: emitted (committed
 * messages the writers counted) and applied (the consumer's counter); the
 * lag is their difference. Two phases:
 *
 *   flood      the writers as fast as they go: how fast the consumer
 *              applies while it falls behind, how far behind it falls,
 *              and how long it takes to catch up once they stop;
 *   sustained  the writers held to a rate, for PIPE_STEP_SECONDS a step:
 *              first PIPE_SUSTAIN of the flood's apply rate, then
 *              PIPE_STEP_UP times more while the lag stays bounded, up to
 *              PIPE_STEPS steps (down instead while it does not). The
 *              figure is the highest rate whose lag stayed bounded, and
 *              the largest lag then. Bounded: the consumer applied what
 *              the writers emitted (within 5 %), and in the step's second
 *              half the lag never passed PIPE_BOUND_S of messages at that
 *              rate (plus one transaction per writer). In the flood the
 *              writers take most of both cores, so the flood's apply rate
 *              says little of what the consumer sustains beside writers
 *              that leave it room.
 *
 * Beside them, the relay's drain rate alone: as many messages emitted in
 * one transaction and drained by `ferry-relay run --once`, no consumer.
 * Checked: the consumer's inbox holds exactly every emitted message.
 */
enum {
    PIPE_WRITERS = 4, PIPE_PER_TX = 10, PIPE_SECONDS = 10, PIPE_CATCHUP_S = 120,
    PIPE_STEP_SECONDS = 6, PIPE_STEPS = 5,
};
#define PIPE_SUSTAIN 0.8
#define PIPE_STEP_UP 1.5
#define PIPE_BOUND_S 0.25
static const char PIPE_TOPIC[] = "bench.pipe";

typedef struct pipe_writer {
    pthread_t tid;
    const char *conninfo;
    unsigned seed;
    double rate;                /* messages/s for this writer; 0: no limit */
    atomic_long emitted;
    atomic_int *stop;
    int failed;
} pipe_writer;

static void *pipe_write(void *arg)
{
    pipe_writer *w = arg;
    PGconn *conn = PQconnectdb(w->conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "bench: writer: %s", PQerrorMessage(conn));
        w->failed = 1;
        PQfinish(conn);
        return NULL;
    }
    char sql[512];
    int64_t t0 = clk_mono_us();
    long mine = 0;
    while (!atomic_load(w->stop)) {
        if (w->rate > 0) {
            /* Held to the rate: the next transaction when it is due. */
            int64_t due = t0 + (int64_t)((double)mine / w->rate * 1e6);
            int64_t now = clk_mono_us();
            if (due > now) {
                int64_t us = due - now < 50000 ? due - now : 50000;
                struct timespec ts = {0, (long)us * 1000};
                nanosleep(&ts, NULL);
                continue;
            }
        }
        int k = (int)(rand_r(&w->seed) % KEYS);
        /* One transaction of PIPE_PER_TX messages, each key's positions in
         * commit order (ferry.emit). */
        snprintf(sql, sizeof sql,
                 "SELECT count(ferry.emit('%s', 'acct-' || lpad(((%d + g * 37) %% %d)::text, 4, "
                 "'0'), 'PaymentApplied', '{\"amount\": 1}'::jsonb)) "
                 "FROM generate_series(1, %d) g", PIPE_TOPIC, k, KEYS, PIPE_PER_TX);
        PGresult *res = PQexec(conn, sql);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        if (!ok)
            fprintf(stderr, "bench: writer: %s", PQerrorMessage(conn));
        PQclear(res);
        if (!ok) {
            w->failed = 1;
            break;
        }
        mine += PIPE_PER_TX;
        atomic_fetch_add(&w->emitted, PIPE_PER_TX);
    }
    PQfinish(conn);
    return NULL;
}

static ferry_code pipe_apply(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    const char *p[1] = {m->key};
    return apply_prepared(arg, conn, "bench_pipe_apply",
                          "UPDATE bench_pipe SET n = n + 1 WHERE id = $1", 1, p, m,
                          "could not count", err);
}

static pid_t pipe_spawn_relay(bench *b, int once)
{
    const char *relay = bench_program("FERRY_RELAY_BIN", "build/rel/ferry-relay");
    const char *argv[16];
    int n = 0;
    argv[n++] = relay;
    argv[n++] = "run";
    if (once)
        argv[n++] = "--once";
    argv[n++] = "--db";
    argv[n++] = fpg_conninfo(b->pg);
    argv[n++] = "--kafka";
    argv[n++] = b->bootstrap;
    argv[n++] = "--holder";
    argv[n++] = once ? "bench-pipe-drain" : "bench-pipe";
    argv[n++] = "--set";
    argv[n++] = "log_level=warn";
    argv[n] = NULL;
    return bench_spawn(argv, -1, -1);
}

static int pipe_wait(pid_t pid, int *status)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

/* What one phase measured. */
typedef struct pipe_result {
    double rate;                    /* the writers' target; 0: no limit */
    long emitted;
    double window_s;
    double emit_rate, apply_rate;   /* over the window */
    long max_lag, end_lag;
    long late_max_lag;              /* the largest in the window's second half */
    double catchup_s;               /* writers stopped -> all applied */
} pipe_result;

/* Writers at rate messages/s in all (0: no limit) for seconds, the
 * consumer c applying meanwhile, then until it has caught up. */
static int pipe_phase(bench *b, ferry_consumer *c, double rate, int seconds, pipe_result *r)
{
    memset(r, 0, sizeof *r);
    r->rate = rate;
    atomic_int stop = 0;
    static pipe_writer ws[PIPE_WRITERS];
    ferry_consumer_stats s;
    ferry_error err;
    ferry_consumer_stats_get(c, &s);
    uint64_t base = s.applied;
    int rc = -1, started = 0;
    for (int i = 0; i < PIPE_WRITERS; i++) {
        ws[i].conninfo = fpg_conninfo(b->pg);
        ws[i].seed = 0x5eed + (unsigned)i + (rate > 0 ? 100u : 0u);
        ws[i].rate = rate / PIPE_WRITERS;
        ws[i].stop = &stop;
        ws[i].failed = 0;
        atomic_store(&ws[i].emitted, 0);
        if (pthread_create(&ws[i].tid, NULL, pipe_write, &ws[i]) != 0)
            goto out;
        started++;
    }
    int64_t t0 = clk_mono_us(), t_end = t0 + seconds * 1000000LL, next_sample = t0;
    int64_t t_half = t0 + seconds * 500000LL;
    long emitted = 0;
    for (;;) {
        if (ferry_consumer_poll(c, 10, &err) != FERRY_OK) {
            fprintf(stderr, "bench: pipeline consumer: %s\n", err.message);
            goto out;
        }
        int64_t now = clk_mono_us();
        if (now >= next_sample) {
            emitted = 0;
            for (int i = 0; i < PIPE_WRITERS; i++)
                emitted += atomic_load(&ws[i].emitted);
            ferry_consumer_stats_get(c, &s);
            r->end_lag = emitted - (long)(s.applied - base);
            if (r->end_lag > r->max_lag)
                r->max_lag = r->end_lag;
            if (now >= t_half && r->end_lag > r->late_max_lag)
                r->late_max_lag = r->end_lag;
            next_sample = now + 100000;
        }
        if (now >= t_end)
            break;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].tid, NULL);
    started = 0;
    r->emitted = 0;
    for (int i = 0; i < PIPE_WRITERS; i++) {
        r->emitted += atomic_load(&ws[i].emitted);
        if (ws[i].failed)
            goto out;
    }
    ferry_consumer_stats_get(c, &s);
    r->window_s = (double)(clk_mono_us() - t0) / 1e6;
    r->emit_rate = (double)r->emitted / r->window_s;
    r->apply_rate = (double)(s.applied - base) / r->window_s;
    int64_t t_stop = clk_mono_us();
    while (s.applied - base < (uint64_t)r->emitted) {
        if (clk_mono_us() - t_stop > PIPE_CATCHUP_S * 1000000LL) {
            fprintf(stderr, "bench: pipeline: %" PRIu64 " of %ld applied %d s after the "
                            "writers stopped\n", s.applied - base, r->emitted, PIPE_CATCHUP_S);
            goto out;
        }
        if (ferry_consumer_poll(c, 10, &err) != FERRY_OK) {
            fprintf(stderr, "bench: pipeline consumer: %s\n", err.message);
            goto out;
        }
        ferry_consumer_stats_get(c, &s);
    }
    r->catchup_s = (double)(clk_mono_us() - t_stop) / 1e6;
    rc = 0;
out:
    atomic_store(&stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].tid, NULL);
    return rc;
}

/* Whether the consumer kept up in phase r: see the sustained phase above. */
static int pipe_bounded(const pipe_result *r)
{
    return r->apply_rate >= 0.95 * r->emit_rate &&
           (double)r->late_max_lag <= r->rate * PIPE_BOUND_S + PIPE_WRITERS * PIPE_PER_TX;
}

/* The sustained phase: steps from PIPE_SUSTAIN of flood_rate, up while
 * bounded, down while not, at most PIPE_STEPS; the steps into steps[] and
 * *n, the highest bounded one into *best (the lowest step when none
 * was), the messages emitted added to *total. A step whose writers fell
 * short of their rate ends the climb: the writers, not the consumer,
 * were the limit. */
static int pipe_sustain(bench *b, ferry_consumer *c, double flood_rate, pipe_result *steps,
                        int *n, pipe_result *best, long *total)
{
    double rate = PIPE_SUSTAIN * flood_rate;
    int best_i = -1, lowest_i = 0;
    *n = 0;
    if (!(rate > 0)) {              /* 0 would be "no limit": another flood */
        fprintf(stderr, "bench: pipeline: the flood applied nothing\n");
        return -1;
    }
    for (int i = 0; i < PIPE_STEPS; i++) {
        fprintf(stderr, "bench: pipeline: the writers held to %.0f msgs/s for %d s\n", rate,
                PIPE_STEP_SECONDS);
        if (pipe_phase(b, c, rate, PIPE_STEP_SECONDS, &steps[i]) != 0)
            return -1;
        *n = i + 1;
        *total += steps[i].emitted;
        if (steps[i].rate < steps[lowest_i].rate)
            lowest_i = i;
        int ok = pipe_bounded(&steps[i]);
        if (ok && (best_i < 0 || steps[i].apply_rate > steps[best_i].apply_rate))
            best_i = i;
        if (ok && steps[i].emit_rate < 0.95 * rate)
            break;                      /* the writers' limit, not the consumer's */
        if (!ok && best_i >= 0)
            break;                      /* the step above the highest bounded one */
        if (ok && i > 0 && steps[i - 1].rate > rate)
            break;                      /* down to the first bounded one: the one above was not */
        rate = ok ? rate * PIPE_STEP_UP : rate / PIPE_STEP_UP;
    }
    *best = steps[best_i >= 0 ? best_i : lowest_i];
    return 0;
}

static int run_pipeline(bench *b, kt_broker *kb)
{
    if (kt_command(kb, "topic-create %s 8 1", PIPE_TOPIC) != 0 ||
        bench_exec(b->admin, "CREATE TABLE bench_pipe (id text PRIMARY KEY, "
                             "n bigint NOT NULL DEFAULT 0)") != 0 ||
        bench_exec(b->admin, "INSERT INTO bench_pipe (id) SELECT id FROM bench_account") != 0)
        return -1;

    handler_state h = {NULL};
    const char *topics[1] = {PIPE_TOPIC};
    /* librdkafka's mock cluster holds an empty fetch for the whole
     * fetch.wait.max.ms even when data arrives meanwhile (a real broker
     * answers as soon as there is data): with the default 500 ms the
     * sustained phase measured the mock, the consumer idle half the time
     * and up to 1,000 messages waiting in the broker at 2,000 msgs/s. */
    static const char *const props[] = {"fetch.wait.max.ms=1", NULL};
    ferry_consumer_conf conf = {.name = "bench-pipe", .db = fpg_conninfo(b->pg),
                                .kafka = b->bootstrap, .topics = topics, .topic_count = 1,
                                .kafka_props = props, .handler = pipe_apply,
                                .handler_arg = &h, .batch_max = BARE_BATCH_MAX};
    ferry_consumer *c = NULL;
    ferry_error err;
    if (ferry_consumer_new(&conf, &c, &err) != FERRY_OK) {
        fprintf(stderr, "bench: pipeline consumer: %s\n", err.message);
        return -1;
    }
    pid_t relay = pipe_spawn_relay(b, 0);
    if (relay < 0) {
        ferry_consumer_destroy(c);
        return -1;
    }
    int rc = -1, st;
    pipe_result flood, steps[PIPE_STEPS], sustained;
    int n_steps = 0;
    fprintf(stderr, "bench: pipeline: the writers unthrottled for %d s\n", PIPE_SECONDS);
    if (pipe_phase(b, c, 0, PIPE_SECONDS, &flood) != 0)
        goto out;
    long total = flood.emitted;
    if (pipe_sustain(b, c, flood.apply_rate, steps, &n_steps, &sustained, &total) != 0)
        goto out;
    long long inbox = -1;
    ferry_consumer_stats s;
    ferry_consumer_stats_get(c, &s);
    if (bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox WHERE consumer = $1",
                       "bench-pipe", &inbox) != 0 || inbox != total ||
        s.applied != (uint64_t)total) {
        fprintf(stderr, "bench: pipeline: %ld emitted, %" PRIu64 " applied, %lld in the inbox\n",
                total, s.applied, inbox);
        goto out;
    }

    /* The relay alone: as many messages as the flood, one transaction,
     * one --once drain. */
    kill(relay, SIGTERM);
    if (pipe_wait(relay, &st) != 0)
        goto out;
    relay = -1;
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(ferry.emit('%s', 'acct-' || lpad((g %% %d)::text, 4, '0'), "
             "'PaymentApplied', '{\"amount\": 1}'::jsonb)) FROM generate_series(1, %ld) g",
             PIPE_TOPIC, KEYS, flood.emitted);
    if (bench_exec(b->admin, sql) != 0 || bench_exec(b->admin, "CHECKPOINT") != 0)
        goto out;
    int64_t r0 = clk_mono_us();
    pid_t once = pipe_spawn_relay(b, 1);
    if (once < 0 || pipe_wait(once, &st) != 0 || st != 0) {
        fprintf(stderr, "bench: ferry-relay run --once: status %d\n", st);
        goto out;
    }
    double relay_s = (double)(clk_mono_us() - r0) / 1e6;
    long long left = -1;
    if (bench_query_ll(b->admin, "SELECT count(*) FROM ferry.outbox WHERE topic = $1",
                       PIPE_TOPIC, &left) != 0 || left != 0) {
        fprintf(stderr, "bench: ferry-relay --once left %lld rows\n", left);
        goto out;
    }
    double relay_rate = (double)flood.emitted / relay_s;

    printf("\npipeline: %d writers emitting (%d messages a transaction), one ferry-relay, one "
           "consumer (batches):\n", PIPE_WRITERS, PIPE_PER_TX);
    printf("  flood      %d s: emitted %7.0f msgs/s, applied %7.0f msgs/s; lag up to %ld messages, "
           "caught up %.2f s after\n", PIPE_SECONDS, flood.emit_rate, flood.apply_rate,
           flood.max_lag, flood.catchup_s);
    printf("  sustained  the writers held to a rate, %d s a step (from %.0f%% of the flood's apply "
           "rate, x%.1f while the lag\n             stays bounded: applied within 5%% of "
           "emitted, under %.2f s of messages in the second half):\n",
           PIPE_STEP_SECONDS, PIPE_SUSTAIN * 100, PIPE_STEP_UP, PIPE_BOUND_S);
    for (int i = 0; i < n_steps; i++)
        printf("             held to %7.0f: emitted %7.0f msgs/s, applied %7.0f msgs/s, lag up "
               "to %6ld (%6ld in the second half) %s\n", steps[i].rate, steps[i].emit_rate,
               steps[i].apply_rate, steps[i].max_lag, steps[i].late_max_lag,
               pipe_bounded(&steps[i]) ? "bounded" : "NOT bounded");
    int bounded = pipe_bounded(&sustained);
    int topped = bounded && n_steps == PIPE_STEPS && pipe_bounded(&steps[n_steps - 1]) &&
                 steps[n_steps - 1].rate >= steps[0].rate;
    printf("             the highest bounded: applied %.0f msgs/s, lag up to %ld messages%s\n",
           sustained.apply_rate, sustained.max_lag,
           !bounded ? " (none was bounded: the lowest step's figures)"
           : topped ? " (every step was: the limit is higher)" : "");
    printf("  the relay alone: %ld messages drained by ferry-relay run --once in %.2f s "
           "(%.0f msgs/s, start-up included)\n", flood.emitted, relay_s, relay_rate);
    printf("  check: the consumer's inbox holds each of the %ld emitted messages once\n",
           total);
    printf("bench consume_pipeline_msgs_per_s %.0f msgs/s\n", sustained.apply_rate);
    printf("bench consume_pipeline_bounded %d bool\n", bounded);
    printf("bench consume_pipeline_max_lag_msgs %ld msgs\n", sustained.max_lag);
    printf("bench consume_pipeline_flood_msgs_per_s %.0f msgs/s\n", flood.apply_rate);
    printf("bench consume_pipeline_flood_emit_msgs_per_s %.0f msgs/s\n", flood.emit_rate);
    printf("bench consume_pipeline_flood_catchup_s %.2f s\n", flood.catchup_s);
    printf("bench consume_pipeline_relay_alone_msgs_per_s %.0f msgs/s\n", relay_rate);
    printf("bench consume_pipeline_vs_relay_ratio %.3f ratio\n",
           sustained.apply_rate / relay_rate);
    rc = 0;
out:
    if (relay > 0) {
        kill(relay, SIGTERM);
        pipe_wait(relay, &st);
    }
    ferry_consumer_destroy(c);
    return rc;
}

/* ---------------------------------------------------------------- main */

static int setup_schema(bench *b)
{
    static const char *const sql[] = {
        "CREATE TABLE bench_account (id text PRIMARY KEY, balance bigint NOT NULL DEFAULT 0, "
        "applied bigint NOT NULL DEFAULT 0)",
        "INSERT INTO bench_account (id) SELECT 'acct-' || lpad(g::text, 4, '0') "
        "FROM generate_series(0, 999) AS g",
        "VACUUM ANALYZE bench_account",
    };
    _Static_assert(KEYS == 1000, "the INSERT's series");
    return bench_exec_all(b->admin, sql, sizeof sql / sizeof sql[0]);
}

int main(void)
{
    long msgs, rounds;
    if (bench_env_long("FERRY_BENCH_CONSUME_MSGS", DEFAULT_MSGS, MSGS_MIN, MSGS_MAX, &msgs) != 0 ||
        bench_env_long("FERRY_BENCH_ROUNDS", DEFAULT_ROUNDS, 1, ROUNDS_MAX, &rounds) != 0)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (bench_program("FERRY_RELAY_BIN", "build/rel/ferry-relay") == NULL)  /* kt_start's */
        return 1;

    int status = 1;
    static bench b;
    static figures f;
    static anatomy an;
    kt_broker *kb = NULL;
    b.msgs = msgs;
    b.partitions = (int)((msgs + MSGS_PER_PARTITION - 1) / MSGS_PER_PARTITION);
    if (b.partitions < PARTITIONS_MIN)
        b.partitions = PARTITIONS_MIN;
    f.rounds = (int)rounds;

    fpg_opts opts = {.conf = NULL, .fsync = 1};
    if ((b.pg = fpg_start(&opts)) == NULL)
        goto out;
    if ((b.admin = fpg_connect(b.pg)) == NULL)
        goto out;
    int version = 0;
    if (bench_migrate(b.admin, &version) != 0)
        goto out;
    if (setup_schema(&b) != 0)
        goto out;
    bench_server srv;
    if (bench_server_read(b.admin, &srv) != 0)
        goto out;

    if ((kb = kt_start(1)) == NULL)
        goto out;
    b.bootstrap = kt_bootstrap(kb);
    if (kt_command(kb, "topic-create %s %d 1", TOPIC, b.partitions) != 0)
        goto out;
    fprintf(stderr, "bench: PostgreSQL %s (fsync=%s), broker at %s\n", srv.version, srv.fsync,
            b.bootstrap);
    if (preload(&b) != 0 || check_topic(&b) != 0)
        goto out;

    for (int r = 0; r < f.rounds; r++) {
        for (int k = 0; k < WL_COUNT; k++) {
            workload wl = (workload)((r + k) % WL_COUNT);     /* swapped every round */
            run_result *res = &f.r[wl][r];
            int rc = wl == WL_INBOX    ? run_inbox(&b, r + 1, BARE_BATCH_MAX, res)
                     : wl == WL_INBOX1 ? run_inbox(&b, r + 1, 1, res)
                     : wl == WL_BARE   ? run_bare(&b, r + 1, 1, res)
                                       : run_bare(&b, r + 1, BARE_BATCH_MAX, res);
            if (rc != 0)
                goto out;
            fprintf(stderr, "bench: round %d/%d %-5s %8.0f msgs/s (%.2f s; start %.2f s)\n",
                    r + 1, f.rounds, wl_name[wl], res->rate, res->seconds, res->start_s);
        }
    }
    fprintf(stderr, "bench: anatomy: %ld messages of each variant\n", (long)ANATOMY_MSGS);
    if (run_anatomy(&b, ANATOMY_MSGS, &an) != 0)
        goto out;
    print_report(&b, &f, &an, &srv, version);
    double held_ratio;
    if (run_held_drain(&b, kb, f.rounds, &held_ratio) != 0)
        goto out;
    if (run_pipeline(&b, kb) != 0)
        goto out;
    status = 0;

out:
    return bench_end(status, kb, b.admin, b.pg);
}
