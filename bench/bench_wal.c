/*
 * bench_wal.c — the WAL source against the table source, in one run
 * (issue 14), on a throwaway cluster with the server's durable defaults
 * and a `ferry-relay devkafka` broker:
 *
 *   emit      transactions/s of UPDATE + emit in table mode and in wal
 *             mode, against UPDATE + a bare INSERT into an outbox-shaped
 *             table (the baseline), 1 and 4 clients
 *   wal       WAL bytes per message all-in: emit, the relay's side (the
 *             table source's DELETE and the VACUUM after it; the WAL
 *             source's none), less what the UPDATE alone writes
 *   drain     a backlog of 1,000,000 messages (the issue's;
 *             FERRY_BENCH_WAL_BACKLOG, a multiple of 1,000) drained by
 *             `ferry-relay run --once`, table source against WAL source,
 *             beside the server's decoding of the wal backlog alone (pgoutput,
 *             peeked in SQL): the WAL source cannot drain faster than that.
 *             Its first 20,000 messages are written by ferry.emit(), the
 *             rest in bulk in the same shapes (drain_backlog)
 *   rss       the WAL relay's peak RSS draining one transaction of
 *             100,000 messages (FERRY_BENCH_WAL_BIGTX)
 *   latency   commit -> consumer receipt, p50 and p99, at 100 and 2,000
 *             messages/s offered (a transaction every 10 ms), each source
 *             with its relay running, beside the floor: the same rate
 *             produced straight to the broker with the relay's producer
 *             settings and read by the same consumer (no database)
 *
 * Every ratio compares figures of this run.
 *
 * A bench fails (exit 1) only when something did not work, never on a
 * timing. Lines `bench NAME VALUE UNIT` are for machines.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"
#include "benchutil.h"

enum {
    ROUNDS = 3,
    MAX_CLIENTS = 4,
    WAL_MSGS = 3000,
    DRAIN_ROUNDS = 3,
    DRAIN_EMITTED = 20000,      /* of the drain's backlog: the rest in bulk */
};

static fpg *g_pg;
static const char *g_steps;     /* FERRY_BENCH_WAL_STEPS, NULL: all */
static int g_lat_round;

/* Whether the step name is to run (FERRY_BENCH_WAL_STEPS, a list such as
 * "latency" or "emit,drain"; unset: every step). */
static int step(const char *name)
{
    if (g_steps == NULL || *g_steps == '\0')
        return 1;
    size_t n = strlen(name);
    for (const char *p = g_steps; (p = strstr(p, name)) != NULL; p += n)
        if ((p == g_steps || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    return 0;
}
static const char *g_relay;
static kt_broker *g_kb;

typedef enum workload { WL_INSERT, WL_TABLE, WL_WAL, WL_COUNT } workload;
static const char *const wl_name[WL_COUNT] = {"insert", "table", "wal"};

typedef struct client {
    int id;
    workload wl;
    double seconds;
    long count;
    int failed;
    pthread_barrier_t *start;
} client;

/* Wait (up to 10 s) until no session holds the slot: a relay that exits
 * closes its replication connection without waiting for the server, which
 * lets the slot go a moment later. 0, or -1 when it is still held. */
static int slot_released(PGconn *c, const char *slot)
{
    for (int i = 0; i < 1000; i++) {
        long long active = -1;
        if (bench_query_ll(c, "SELECT count(*) FROM pg_replication_slots "
                              "WHERE slot_name = $1 AND active", slot, &active))
            return -1;
        if (active == 0)
            return 0;
        usleep(10 * 1000);
    }
    fprintf(stderr, "bench: the slot \"%s\" is still active 10 s after its relay exited\n",
            slot);
    return -1;
}

/* The slot 'ferry' moved past all WAL written so far (after what), as it
 * would be in steady state: what a step wrote for the table (rows, the
 * drains' DELETEs and rows put back) is not decoded again by the next
 * step's WAL relay. Moving its confirmed position is not enough: decoding
 * restarts from the slot's restart_lsn, which moves only past a snapshot
 * of running transactions (the server logs one every 15 s while busy, and
 * at a checkpoint) decoded after the confirmed position; without one the
 * WAL relay decoded the whole table backlog again, and the relay's DELETEs
 * of it, before its first message (pg_recvlogical on the same slot: 1.36 s
 * instead of 0.46 s for 200,000 messages; the big transaction after the
 * drain of 1,000,000 took 14 s instead of 2). So: advance, CHECKPOINT,
 * advance again, as a running server would be 15 s on. */
static int slot_to_now(PGconn *c, const char *what)
{
    if (slot_released(c, "ferry"))
        return -1;
    /* The snapshot a CHECKPOINT logs moves restart_lsn only if no older
     * transaction was running then (a relay that had just exited, an
     * autovacuum): a few tries, half a second apart. One run in a loaded
     * session ended 6 MB behind after one. */
    long long behind = -1;
    for (int tries = 1; tries <= 5; tries++) {
        if ((tries > 1 && bench_exec(c, "SELECT pg_sleep(0.5)")) ||
            bench_exec(c, "SELECT pg_replication_slot_advance('ferry', pg_current_wal_lsn())") ||
            bench_exec(c, "CHECKPOINT") ||
            bench_exec(c, "SELECT pg_replication_slot_advance('ferry', pg_current_wal_lsn())"))
            return -1;
        if (bench_query_ll(c, "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)::bigint "
                              "FROM pg_replication_slots WHERE slot_name = 'ferry'", NULL,
                           &behind))
            return -1;
        fprintf(stderr, "bench: past %s, the slot's restart_lsn is %lld bytes behind its "
                "confirmed position (try %d)\n", what, behind, tries);
        if (behind <= 1024 * 1024)
            return 0;
    }
    fprintf(stderr, "bench: restart_lsn did not follow the slot past %s\n", what);
    return -1;
}

static int set_mode(PGconn *c, const char *mode)
{
    char sql[96];
    snprintf(sql, sizeof sql, "UPDATE ferry.settings SET emit_mode = '%s'", mode);
    if (bench_exec(c, sql) != 0)
        return -1;
    /* Back in table mode, the table path holds rows until the slot is
     * past the turn (schema 22), and no WAL relay runs between the steps
     * here: every message the steps emitted in wal mode was published by
     * that step's WAL relay, or is not wanted (emit's throughput), so the
     * slot is moved past the turn as an operator who knows that would. */
    if (strcmp(mode, "table") == 0 &&
        (slot_released(c, "ferry") ||
         bench_exec(c, "SELECT pg_replication_slot_advance(slot_name, pg_current_wal_lsn()) "
                       "FROM pg_replication_slots WHERE slot_name = 'ferry' AND NOT active")))
        return -1;
    return 0;
}

/* One client's loop: BEGIN; UPDATE its account; emit or INSERT; COMMIT. */
static void *client_main(void *arg)
{
    client *cl = arg;
    PGconn *c = fpg_connect(g_pg);
    char key[24], payload[300];
    snprintf(key, sizeof key, "acct-%d", cl->id);
    long seq = 1000000L * (cl->id + 1);
    PGresult *res = PQprepare(c, "upd", "UPDATE bench_account SET balance = balance + 1 "
                                        "WHERE id = $1", 1, NULL);
    PQclear(res);
    res = PQprepare(c, "ins",
                    "INSERT INTO bench_outbox (id, topic, aggregateid, type, payload, seq, "
                    "shard) VALUES (gen_random_uuid(), 'bench.wal', $1, 'T', $2::jsonb, $3, 0)",
                    3, NULL);
    PQclear(res);
    char idtext[16];
    snprintf(idtext, sizeof idtext, "%d", cl->id);
    pthread_barrier_wait(cl->start);
    int64_t until = clk_mono_us() + (int64_t)(cl->seconds * 1e6), t0 = clk_mono_us();
    while (clk_mono_us() < until && !cl->failed) {
        snprintf(payload, sizeof payload, "{\"account\": %d, \"n\": %ld, \"pad\": \"%0200d\"}",
                 cl->id, cl->count, 0);
        PQclear(PQexec(c, "BEGIN"));
        const char *p1[1] = {idtext};
        res = PQexecPrepared(c, "upd", 1, p1, NULL, NULL, 0);
        cl->failed |= PQresultStatus(res) != PGRES_COMMAND_OK;
        PQclear(res);
        if (cl->wl == WL_INSERT) {
            char s[24];
            snprintf(s, sizeof s, "%ld", seq++);
            const char *p3[3] = {key, payload, s};
            res = PQexecPrepared(c, "ins", 3, p3, NULL, NULL, 0);
            cl->failed |= PQresultStatus(res) != PGRES_COMMAND_OK;
            PQclear(res);
        } else {
            ferry_msg m = {.topic = "bench.wal", .key = key, .type = "T", .payload = payload};
            ferry_error err;
            if (ferry_emit(c, &m, NULL, NULL, &err) != FERRY_OK) {
                fprintf(stderr, "bench: emit: %s\n", err.message);
                cl->failed = 1;
            }
        }
        res = PQexec(c, "COMMIT");
        cl->failed |= PQresultStatus(res) != PGRES_COMMAND_OK;
        PQclear(res);
        cl->count++;
    }
    cl->seconds = (double)(clk_mono_us() - t0) / 1e6;
    PQfinish(c);
    return NULL;
}

/* Transactions per second of workload wl with n clients. */
static double measure(PGconn *admin, workload wl, int n, double seconds)
{
    if (wl != WL_INSERT && set_mode(admin, wl == WL_WAL ? "wal" : "table") != 0)
        return -1;
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    client cl[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    for (int i = 0; i < n; i++) {
        cl[i] = (client){.id = i + 1, .wl = wl, .seconds = seconds, .start = &start};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    double tps = 0;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        tps += (double)cl[i].count / cl[i].seconds;
        failed |= cl[i].failed;
    }
    pthread_barrier_destroy(&start);
    /* Keep the tables small between rounds: what is measured is the
     * write, not a growing backlog. */
    bench_exec(admin, "TRUNCATE bench_outbox, ferry.outbox");
    bench_exec(admin, "SELECT pg_replication_slot_advance('ferry', pg_current_wal_lsn())");
    return failed ? -1 : tps;
}

/* ------------------------------------------------------------------ the relay */

typedef struct run_result {
    int status;
    double wall_s;
    double cpu_s;               /* the relay's user + system CPU */
    long maxrss_kib;
} run_result;

static int run_relay(const char *source, run_result *out)
{
    const char *argv[] = {g_relay, "run", "--db", fpg_conninfo(g_pg), "--kafka",
                          kt_bootstrap(g_kb), "--once", "--outbox-source", source, "--set",
                          "log_level=warn", NULL};
    int64_t t0 = clk_mono_us();
    pid_t pid = bench_spawn(argv, -1, -1);
    if (pid < 0)
        return -1;
    int ws;
    struct rusage ru;
    if (wait4(pid, &ws, 0, &ru) != pid)
        return -1;
    out->wall_s = (double)(clk_mono_us() - t0) / 1e6;
    out->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    out->maxrss_kib = ru.ru_maxrss;
    out->cpu_s = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    if (out->status != 0)
        fprintf(stderr, "bench: ferry-relay --source %s --once exited %d\n", source,
                out->status);
    return out->status == 0 ? 0 : -1;
}

/* n messages over 100 keys in transactions of per_tx, by ferry.emit(). */
static int backlog(PGconn *c, long n, long per_tx)
{
    char sql[512];
    for (long done = 0; done < n; done += per_tx) {
        long hi = done + per_tx < n ? done + per_tx : n;
        snprintf(sql, sizeof sql,
                 "SELECT count(ferry.emit('bench.drain', 'k' || (g %% 100), 'T', "
                 "json_build_object('g', g, 'pad', repeat('x', 200))::text)) "
                 "FROM generate_series(%ld, %ld) g", done + 1, hi);
        if (bench_exec(c, "BEGIN") || bench_exec(c, sql) || bench_exec(c, "COMMIT"))
            return -1;
    }
    return 0;
}

/*
 * The drain's backlog: its first DRAIN_EMITTED messages by ferry.emit(),
 * the rest written in bulk as ferry.emit() would have written them in the
 * mode set, 1,000 a transaction: in table mode outbox rows, in wal mode
 * transactional logical messages with emit's content (schemas/017_emit.sql;
 * the relay refuses any other, and --once then exits 1, failing the
 * bench). The same keys, positions, payloads and sizes; only faster to
 * write, at some 10 us a message instead of emit's 100: the issue's
 * 1,000,000 messages, written by emit in each mode, took 4 minutes.
 * Message g (1-based) has key k(g % 100) and, past the emitted part,
 * position base + (g - lo) / 100 + 1 of it in a transaction of the
 * messages lo.., lo - 1 a multiple of 100; each transaction then moves
 * every key's position by what it wrote (per_tx / 100).
 */
static int drain_backlog(PGconn *c, int wal, long n)
{
    long emitted = n < DRAIN_EMITTED ? n : DRAIN_EMITTED;
    if (backlog(c, emitted, 1000))
        return -1;
    static const char payload[] = "json_build_object('g', g, 'pad', repeat('x', 200))::jsonb";
    char sql[2048];
    for (long lo = emitted + 1; lo <= n; lo += 1000) {
        long hi = lo + 999 < n ? lo + 999 : n;
        if (wal)
            snprintf(sql, sizeof sql,
                     "SELECT count(pg_logical_emit_message(true, 'ferry', "
                     "  '1 ' || s.wal_token || ' ' || gen_random_uuid()::text || ' ' "
                     "  || (k.seq + (g - %ld) / 100 + 1)::text || ' ' "
                     "  || (extract(epoch FROM now()) * 1000000)::bigint::text || ' ' "
                     "  || octet_length(k.topic)::text || ' ' || octet_length(k.key)::text "
                     "  || ' 0 1 2' || E'\n' || k.topic || k.key || 'T{}' || (%s)::text)) "
                     /* The messages in g's order, whatever the plan: each
                      * key's row looked up per g (LATERAL), not joined. */
                     "  FROM ferry.settings s, generate_series(%ld, %ld) g "
                     "  CROSS JOIN LATERAL (SELECT o.topic, o.key, o.seq FROM ferry.outbox_key o "
                     "                       WHERE o.topic = 'bench.drain' "
                     "                         AND o.key = 'k' || (g %% 100)) k",
                     lo, payload, lo, hi);
        else
            snprintf(sql, sizeof sql,
                     "INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, "
                     "                          payload, headers, seq, shard, available_at, "
                     "                          payload_bytes) "
                     "SELECT gen_random_uuid(), k.topic, '', k.key, 'T', p.p, '{}', "
                     "       k.seq + (g - %ld) / 100 + 1, k.shard, now(), octet_length(p.p::text) "
                     "  FROM generate_series(%ld, %ld) g "
                     "  CROSS JOIN LATERAL (SELECT %s AS p) p "
                     "  JOIN ferry.outbox_key k ON k.topic = 'bench.drain' "
                     "   AND k.key = 'k' || (g %% 100)",
                     lo, lo, hi, payload);
        char moved[256];
        snprintf(moved, sizeof moved,
                 "UPDATE ferry.outbox_key SET seq = seq + %ld WHERE topic = 'bench.drain'",
                 (hi - lo + 1) / 100);
        if (bench_exec(c, "BEGIN") || bench_exec(c, sql) || bench_exec(c, moved) ||
            bench_exec(c, "COMMIT"))
            return -1;
    }
    return 0;
}

static long long wal_lsn(PGconn *c)
{
    long long v = -1;
    bench_query_ll(c, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", NULL, &v);
    return v;
}

/* WAL bytes of n transactions of workload (bare UPDATE when emit is 0),
 * one client, plus the relay's drain and a VACUUM. */
static double wal_bytes(PGconn *c, const char *mode, int emit, long n)
{
    if (mode && set_mode(c, mode) != 0)
        return -1;
    bench_exec(c, "CHECKPOINT");
    long long a = wal_lsn(c);
    char sql[512];
    snprintf(sql, sizeof sql,
             "DO $$ BEGIN FOR i IN 1..%ld LOOP "
             "UPDATE bench_account SET balance = balance + 1 WHERE id = 1 + i %% 4; %s "
             "COMMIT; END LOOP; END $$",
             n, emit ? "PERFORM ferry.emit('bench.walbytes', 'k' || (i % 4), 'T', "
                       "json_build_object('i', i, 'pad', repeat('x', 200))::text);" : "");
    if (bench_exec(c, sql) != 0)
        return -1;
    if (emit) {
        run_result rr;
        if (run_relay(strcmp(mode, "wal") == 0 ? "wal" : "table", &rr) != 0)
            return -1;
        bench_exec(c, "VACUUM ferry.outbox");
    }
    long long b = wal_lsn(c);
    return (double)(b - a) / (double)n;
}

/* ------------------------------------------------------------------ latency */

/*
 * What the latency step counts, and why it is built this way (the last
 * session's runs received 493 of 500 and 9,729 of 10,000 and nobody knew
 * why; see the README's bench table):
 *
 *   - receipt is recorded by message number and compared with the send
 *     time only after the consumer stopped: the consumer may see a
 *     message before the sender, back from COMMIT, wrote its send time
 *     (the relay can be that fast), which the old harness counted as
 *     never received;
 *   - each message is counted once: duplicates (allowed, at least once)
 *     are counted apart, never as receipts of others;
 *   - a message still missing when the wait ends is looked for in the
 *     topic itself, every partition read from the beginning to its high
 *     watermark, so the report says whether it was never published or
 *     published and missed by the consumer; the run then fails.
 *
 * The sender offers the rate on an absolute monotonic schedule
 * (clock_nanosleep TIMER_ABSTIME): the floor one message at a time at
 * its own instant, a source one transaction every LAT_TX_US (of
 * rate * LAT_TX_US / 1e6 messages, at least one), so that a message
 * waits at most that long to be offered. The transactions go round
 * LAT_SENDERS connections: one connection with durable commits managed
 * about 100 a second here, so alone it fell 20 s behind a 2,000/s
 * schedule; a sender that still falls behind is reported.
 */
enum { LAT_SECONDS = 5, LAT_MAX = 2000 * LAT_SECONDS, LAT_PARTITIONS = 4,
       LAT_TX_US = 5000, LAT_SENDERS = 4, LAT_WAIT_MS = 15000, LAT_LATE_MS = 30000 };

typedef struct lat_run {
    const char *topic;
    long expected;
    int64_t sent_us[LAT_MAX];   /* by message number: when it was committed (or produced) */
    _Atomic int64_t recv_us[LAT_MAX]; /* by message number: first receipt, 0: none */
    double lat_ms[LAT_MAX];
    _Atomic long got;           /* distinct messages received */
    _Atomic long dups, strays;  /* received again; not one of ours */
    _Atomic int stop, ready;
    _Atomic int warm;           /* warm-up messages ("{}") received */
    /* The senders' part (sources): transaction j of per_tx messages at
     * t0 + j * tx_us, by sender j % LAT_SENDERS. */
    long per_tx;
    int64_t tx_us, t0;
    _Atomic int failed;
    _Atomic int64_t behind_us;
} lat_run;

typedef struct lat_sender {
    lat_run *L;
    int index;
} lat_sender;

/* The topic's partitions are assigned from the start (lat_assign), no
 * group to join: a rebalance would delay the first messages by seconds,
 * which is the consumer's, not the path's. An empty fetch is answered
 * after 1 ms, as bench_relay's consumers ask: librdkafka's mock cluster
 * holds an empty fetch for the whole wait even when data arrives, so the
 * 5 ms asked before added up to 5 ms to every figure, the floor's too. */
static rd_kafka_t *lat_new_consumer(const char *group)
{
    static const char *const props[] = {"auto.offset.reset", "earliest",
                                        "fetch.wait.max.ms", "1",
                                        "enable.auto.commit", "false",
                                        "enable.partition.eof", "false",
                                        NULL};
    return bench_consumer_new(kt_bootstrap(g_kb), group, props);
}

static void lat_assign(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(LAT_PARTITIONS);
    for (int p = 0; p < LAT_PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(t, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, t);
    rd_kafka_topic_partition_list_destroy(t);
}

/* The message number in a payload {"n": N}; -1 when it has none. */
static long lat_number(const rd_kafka_message_t *m)
{
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || m->payload == NULL)
        return -1;
    char buf[64];
    size_t n = m->len < sizeof buf - 1 ? m->len : sizeof buf - 1;
    memcpy(buf, m->payload, n);
    buf[n] = '\0';
    const char *at = strstr(buf, "\"n\": ");
    return at ? atol(at + 5) : -1;
}

/* A consumer of its own group reads the topic and records when each
 * message number first arrived. */
static void *lat_consumer(void *arg)
{
    lat_run *L = arg;
    char group[96];
    snprintf(group, sizeof group, "bench-wal-%s", L->topic);
    rd_kafka_t *rk = lat_new_consumer(group);
    if (rk == NULL) {
        L->ready = 1;           /* and gets nothing: the run fails */
        return NULL;
    }
    lat_assign(rk, L->topic);
    L->ready = 1;
    while (!L->stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
        if (m == NULL)
            continue;
        int64_t now = clk_mono_us();
        long i = lat_number(m);
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "bench: consumer: %s\n", rd_kafka_message_errstr(m));
        } else if (i >= 0 && i < L->expected) {
            int64_t none = 0;
            if (atomic_compare_exchange_strong(&L->recv_us[i], &none, now))
                L->got++;
            else
                L->dups++;
        } else if (m->payload != NULL && m->len > 2) {
            L->strays++;        /* the warm-up "{}" is not counted */
        } else {
            L->warm++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return NULL;
}

/* A "{}" to every partition of topic, then wait (10 s at most) until
 * the consumer has them all: it is fetching each. 0, or -1. */
static int lat_warm(lat_run *L, const char *topic)
{
    rd_kafka_t *p = bench_relay_like_producer(kt_bootstrap(g_kb), "0", NULL, NULL);
    if (p == NULL)
        return -1;
    int base = L->warm;
    for (int part = 0; part < LAT_PARTITIONS; part++)
        rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(part),
                          RD_KAFKA_V_VALUE("{}", 2), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    rd_kafka_flush(p, 5000);
    rd_kafka_destroy(p);
    for (int64_t until = clk_mono_ms() + 10000; L->warm - base < LAT_PARTITIONS;) {
        if (clk_mono_ms() > until) {
            fprintf(stderr, "bench: latency: the consumer did not fetch every partition of %s "
                    "within 10 s\n", topic);
            return -1;
        }
        clk_sleep_ms(5);
    }
    return 0;
}

/* The topic's whole contents, read by a fresh consumer from the beginning
 * of every partition to its high watermark: which message numbers are in
 * it (in_topic[n] set). 0, or -1 when the topic could not be read. */
static int lat_audit(const char *topic, long expected, unsigned char *in_topic)
{
    char group[96];
    snprintf(group, sizeof group, "bench-wal-audit-%s", topic);
    rd_kafka_t *rk = lat_new_consumer(group);
    if (rk == NULL)
        return -1;
    int64_t high[LAT_PARTITIONS], lo;
    int rc = 0;
    for (int p = 0; p < LAT_PARTITIONS && rc == 0; p++)
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &high[p], 5000) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = -1;
    if (rc == 0) {
        lat_assign(rk, topic);
        int64_t pos[LAT_PARTITIONS] = {0};
        int64_t until = clk_mono_us() + 30 * 1000000LL;
        for (;;) {
            int done = 1;
            for (int p = 0; p < LAT_PARTITIONS; p++)
                done &= pos[p] >= high[p];
            if (done)
                break;
            if (clk_mono_us() > until) {
                rc = -1;
                break;
            }
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
            if (m == NULL)
                continue;
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->partition >= 0 &&
                m->partition < LAT_PARTITIONS) {
                pos[m->partition] = m->offset + 1;
                long i = lat_number(m);
                if (i >= 0 && i < expected)
                    in_topic[i] = 1;
            }
            rd_kafka_message_destroy(m);
        }
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}

/* The topic read back whole and checked against every message number
 * sent: each one the consumer has not received, or that is not in the
 * topic, is printed; their count returned (-1: the topic could not be
 * read). Run after every run, also a clean one, so that "nothing was
 * lost" is checked against the topic itself, not only the consumer. */
static long lat_explain(lat_run *L, const char *label, long rate)
{
    unsigned char *in_topic = calloc((size_t)L->expected, 1);
    long missing = 0, published = 0;
    if (in_topic == NULL || lat_audit(L->topic, L->expected, in_topic) != 0) {
        fprintf(stderr, "bench: latency %s at %ld/s: could not read the topic back\n", label,
                rate);
        free(in_topic);
        return -1;
    }
    for (long i = 0; i < L->expected; i++) {
        if (L->recv_us[i] != 0 && in_topic[i])
            continue;
        missing++;
        published += in_topic[i];
        if (missing <= 20)
            fprintf(stderr, "bench: latency %s at %ld/s: message %ld %s\n", label, rate, i,
                    L->sent_us[i] == 0 ? "was never sent (its transaction failed)"
                    : in_topic[i]      ? "is in the topic but the consumer did not receive it"
                    : L->recv_us[i] != 0 ? "was received but is not in the topic (read back)"
                                         : "is not in the topic");
    }
    free(in_topic);
    if (missing > 0)
        fprintf(stderr, "bench: latency %s at %ld/s: %ld of %ld messages missing, %ld of them "
                "in the topic\n", label, rate, missing, L->expected, published);
    return missing;
}

static void floor_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
}

static void sleep_until_us(int64_t mono_us)
{
    struct timespec ts = {(time_t)(mono_us / 1000000), (long)(mono_us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void lat_behind(lat_run *L, int64_t at)
{
    int64_t late = clk_mono_us() - at, was = L->behind_us;
    while (late > was && !atomic_compare_exchange_weak(&L->behind_us, &was, late))
        ;
}

/* One of the LAT_SENDERS connections: its transactions, each at its
 * instant, of per_tx ferry.emit() calls; the send time of a message is
 * when its COMMIT came back. */
static void *lat_sender_main(void *arg)
{
    lat_sender *S = arg;
    lat_run *L = S->L;
    PGconn *c = fpg_connect(g_pg);
    if (c == NULL) {
        L->failed = 1;
        return NULL;
    }
    static _Thread_local char sql[8192];
    long ntx = (L->expected + L->per_tx - 1) / L->per_tx;
    for (long j = S->index; j < ntx && !L->failed; j += LAT_SENDERS) {
        int64_t at = L->t0 + j * L->tx_us;
        sleep_until_us(at);
        lat_behind(L, at);
        long n = j * L->per_tx, k_end = n + L->per_tx < L->expected ? n + L->per_tx : L->expected;
        size_t used = (size_t)snprintf(sql, sizeof sql, "BEGIN;");
        for (long k = n; k < k_end && used < sizeof sql; k++)
            used += (size_t)snprintf(sql + used, sizeof sql - used,
                                     "SELECT ferry.emit('%s', 'k%ld', 'T', '{\"n\": %ld}');",
                                     L->topic, k % 20, k);
        if (used >= sizeof sql - 16) {
            L->failed = 1;
            break;
        }
        snprintf(sql + used, sizeof sql - used, "COMMIT");
        if (bench_exec(c, sql) != 0) {
            L->failed = 1;
            break;
        }
        int64_t now = clk_mono_us();
        for (long k = n; k < k_end; k++)
            L->sent_us[k] = now;
    }
    PQfinish(c);
    return NULL;
}

/* Offer rate messages/s for LAT_SECONDS (source NULL: produce straight to
 * the broker). p50 and p99 of commit -> receipt into out[0..1]. -1 when
 * any message is missing (each one named: never published, published
 * late, or missed by the consumer) or a transaction failed. */
static int latency(PGconn *c, const char *source, long rate, double out[2])
{
    lat_run *L = calloc(1, sizeof *L);
    if (L == NULL)
        return -1;
    const char *label = source ? source : "floor";
    char topic[64];
    if (g_lat_round == 0)
        snprintf(topic, sizeof topic, "bench.lat.%s.%ld", label, rate);
    else
        snprintf(topic, sizeof topic, "bench.lat.%s.%ld.r%d", label, rate, g_lat_round);
    L->topic = topic;
    L->expected = rate * LAT_SECONDS;
    L->per_tx = (long)((int64_t)rate * LAT_TX_US / 1000000);
    if (L->per_tx < 1)
        L->per_tx = 1;
    L->tx_us = (int64_t)L->per_tx * 1000000 / rate;
    pid_t relay = -1;
    if (L->expected > LAT_MAX || kt_command(g_kb, "topic-create %s %d 1", topic,
                                            LAT_PARTITIONS) != 0) {
        free(L);
        return -1;
    }
    rd_kafka_t *prod = NULL;
    int rc = -1;
    if (source != NULL) {
        if (set_mode(c, strcmp(source, "wal") == 0 ? "wal" : "table") != 0)
            goto out;
        const char *argv[] = {g_relay, "run", "--db", fpg_conninfo(g_pg), "--kafka",
                              kt_bootstrap(g_kb), "--outbox-source", source, "--set",
                              "log_level=warn", NULL};
        relay = bench_spawn(argv, -1, -1);
        clk_sleep_ms(1500);     /* its start-up, not part of what is measured */
    } else {
        /* No linger, as the relay's producer (relay_kafka.c) and
         * bench_relay's floor: the floor is the broker's path alone. */
        prod = bench_relay_like_producer(kt_bootstrap(g_kb), "0", floor_dr, NULL);
        if (prod == NULL)
            goto out;
        /* Warm: the producer's metadata and connection, as a running
         * relay's are (the consumer skips this message: no "n"). */
        rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE("{}", 2),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        rd_kafka_flush(prod, 5000);
    }
    pthread_t th;
    pthread_create(&th, NULL, lat_consumer, L);
    while (!L->ready)
        clk_sleep_ms(10);
    /* The consumer fetches every partition before the clock starts: a
     * "{}" to each (skipped by number), received. Without it the first
     * ~0.2 s of every run waited for the consumer's first fetches and
     * arrived together, which was the p99 of 140 ms of every source and
     * of the floor (messages sent in the first 0.19 s, 1 to 3 % of them). */
    if (lat_warm(L, topic) != 0) {
        L->stop = 1;
        pthread_join(th, NULL);
        goto out;
    }
    char payload[64];
    int failed = 0;
    L->t0 = clk_mono_us();
    if (prod == NULL) {
        pthread_t st[LAT_SENDERS];
        lat_sender ss[LAT_SENDERS];
        for (int i = 0; i < LAT_SENDERS; i++) {
            ss[i] = (lat_sender){.L = L, .index = i};
            pthread_create(&st[i], NULL, lat_sender_main, &ss[i]);
        }
        for (int i = 0; i < LAT_SENDERS; i++)
            pthread_join(st[i], NULL);
        failed = L->failed;
    } else {
        for (long n = 0; n < L->expected; n++) {
            int64_t at = L->t0 + n * 1000000 / rate;
            sleep_until_us(at);
            lat_behind(L, at);
            char key[16];
            snprintf(key, sizeof key, "k%ld", n % 20);
            snprintf(payload, sizeof payload, "{\"n\": %ld}", n);
            L->sent_us[n] = clk_mono_us();
            if (rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topic),
                                  RD_KAFKA_V_KEY(key, strlen(key)),
                                  RD_KAFKA_V_VALUE(payload, strlen(payload)),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
                failed = 1;
                break;
            }
            rd_kafka_poll(prod, 0);
        }
    }
    int64_t behind_us = L->behind_us;
    double offered_s = (double)(clk_mono_us() - L->t0) / 1e6;
    int64_t wait_until = clk_mono_ms() + LAT_WAIT_MS;
    while (!failed && L->got < L->expected && clk_mono_ms() < wait_until) {
        if (prod != NULL)
            rd_kafka_poll(prod, 10);
        clk_sleep_ms(20);
    }
    long got_in_time = L->got;
    if (!failed && got_in_time < L->expected) {
        /* Late or lost? The relay keeps running: wait longer, then look
         * in the topic for what the consumer still has not. */
        wait_until = clk_mono_ms() + LAT_LATE_MS;
        while (L->got < L->expected && clk_mono_ms() < wait_until) {
            if (prod != NULL)
                rd_kafka_poll(prod, 10);
            clk_sleep_ms(20);
        }
        fprintf(stderr, "bench: latency %s at %ld/s: %ld of %ld messages within %d s of the "
                "last send, %ld within %d s more\n", label, rate, got_in_time, L->expected,
                LAT_WAIT_MS / 1000, (long)L->got, LAT_LATE_MS / 1000);
    }
    L->stop = 1;
    pthread_join(th, NULL);
    long missing = failed ? -1 : lat_explain(L, label, rate);
    if (missing == 0)
        printf("latency %s at %ld/s: all %ld messages received, and in the topic when read "
               "back whole\n", label, rate, L->expected);
    long early = 0;
    for (long i = 0; i < L->expected; i++)
        early += L->recv_us[i] != 0 && L->sent_us[i] != 0 && L->recv_us[i] < L->sent_us[i];
    if (early > 0)
        printf("latency %s at %ld/s: %ld messages received before the sender was back from "
               "COMMIT (counted as 0 ms)\n", label, rate, early);
    printf("bench wal_latency_%s_%ld_early %ld count\n", label, rate, early);
    if (L->dups > 0 || L->strays > 0)
        printf("latency %s at %ld/s: %ld duplicates, %ld messages not of this run\n", label,
               rate, (long)L->dups, (long)L->strays);
    if (behind_us > 20000)
        printf("latency %s at %ld/s: the sender fell up to %.0f ms behind its schedule "
               "(offered in %.2f s instead of %d s)\n", label, rate, (double)behind_us / 1e3,
               offered_s, LAT_SECONDS);
    if (failed) {
        fprintf(stderr, "bench: latency %s at %ld/s: sending failed\n", label, rate);
    } else if (missing == 0 && got_in_time == L->expected && L->strays == 0) {
        long n = 0;
        for (long i = 0; i < L->expected; i++) {
            double ms = (double)(L->recv_us[i] - L->sent_us[i]) / 1e3;
            /* Received before the sender was back from COMMIT: the
             * relay was quicker than the commit's reply. */
            L->lat_ms[n++] = ms > 0 ? ms : 0;
        }
        qsort(L->lat_ms, (size_t)n, sizeof L->lat_ms[0], bench_cmp_double);
        out[0] = bench_percentile(L->lat_ms, (size_t)n, 50);
        out[1] = bench_percentile(L->lat_ms, (size_t)n, 99);
        rc = 0;
    } else {
        fprintf(stderr, "bench: latency %s at %ld/s: FAILED: %ld of %ld messages received "
                "in time, %ld in all\n", label, rate, got_in_time, L->expected, (long)L->got);
    }
out:
    if (prod != NULL) {
        rd_kafka_flush(prod, 5000);
        rd_kafka_destroy(prod);
    }
    if (relay > 0) {
        kill(relay, SIGTERM);
        waitpid(relay, NULL, 0);
    }
    free(L);
    return rc;
}

int main(void)
{
    long backlog_n, bigtx_n, secs, lat_rounds;
    g_steps = getenv("FERRY_BENCH_WAL_STEPS");
    if (bench_env_long("FERRY_BENCH_WAL_BACKLOG", 1000000, 1000, 10000000, &backlog_n) ||
        bench_env_long("FERRY_BENCH_WAL_LAT_ROUNDS", 1, 1, 100, &lat_rounds) ||
        bench_env_long("FERRY_BENCH_WAL_BIGTX", 100000, 1000, 10000000, &bigtx_n) ||
        bench_env_long("FERRY_BENCH_SECONDS", 2, 1, 600, &secs))
        return 1;
    if (backlog_n % 1000 != 0) {
        fprintf(stderr, "bench: FERRY_BENCH_WAL_BACKLOG: expected a multiple of 1000, not %ld\n",
                backlog_n);
        return 1;
    }
    g_relay = bench_program("FERRY_RELAY_BIN", "build/rel/ferry-relay");
    if (g_relay == NULL)
        return 1;
    fpg_opts opts = {.fsync = 1};
    if ((g_pg = fpg_start(&opts)) == NULL)
        return 1;
    int rc = 1;
    PGconn *c = fpg_connect(g_pg);
    int version;
    if (c == NULL || bench_migrate(c, &version) != 0)
        goto out;
    if ((g_kb = kt_start(1)) == NULL)
        goto out;
    if (bench_exec(c, "SELECT pg_create_logical_replication_slot('ferry', 'pgoutput')") ||
        bench_exec(c, "INSERT INTO ferry.wal_slot (slot_name) VALUES ('ferry')") ||
        bench_exec(c, "CREATE TABLE bench_account (id int PRIMARY KEY, balance bigint) "
                      "WITH (fillfactor = 50)") ||
        bench_exec(c, "INSERT INTO bench_account SELECT g, 0 FROM generate_series(1, 8) g") ||
        bench_exec(c, "CREATE TABLE bench_outbox (LIKE ferry.outbox INCLUDING ALL)") ||
        bench_exec(c, "CREATE UNIQUE INDEX ON bench_outbox (shard, topic, aggregateid, seq)"))
        goto out;

    printf("ferry WAL-source benchmark (ferry %s, schema %d); PostgreSQL with durable "
           "defaults, broker: ferry-relay devkafka\n", ferry_version(), version);

    /* Emit transactions/s. */
    static const int clients[2] = {1, 4};
    for (int ci = 0; ci < 2 && step("emit"); ci++) {
        double v[WL_COUNT][ROUNDS];
        for (int r = 0; r < ROUNDS; r++)
            for (int k = 0; k < WL_COUNT; k++) {
                workload wl = (workload)((k + r) % WL_COUNT);
                if ((v[wl][r] = measure(c, wl, clients[ci], (double)secs)) < 0)
                    goto out;
            }
        double med[WL_COUNT];
        for (int w = 0; w < WL_COUNT; w++)
            med[w] = bench_median(v[w], ROUNDS);
        printf("emit, %d client%s (median of %d x %ld s): UPDATE+INSERT %.0f tx/s, "
               "UPDATE+emit table %.0f tx/s (%.2fx), UPDATE+emit wal %.0f tx/s (%.2fx)\n",
               clients[ci], clients[ci] > 1 ? "s" : "", ROUNDS, secs, med[WL_INSERT],
               med[WL_TABLE], med[WL_TABLE] / med[WL_INSERT], med[WL_WAL],
               med[WL_WAL] / med[WL_INSERT]);
        for (int w = 0; w < WL_COUNT; w++)
            printf("bench wal_emit_%s_%dc %.0f tx/s\n", wl_name[w], clients[ci], med[w]);
        printf("bench wal_emit_wal_vs_insert_%dc %.3f ratio\n", clients[ci],
               med[WL_WAL] / med[WL_INSERT]);
        printf("bench wal_emit_table_vs_insert_%dc %.3f ratio\n", clients[ci],
               med[WL_TABLE] / med[WL_INSERT]);
    }

    /* WAL bytes per message, all-in. */
    if (step("bytes")) {
    double bare = wal_bytes(c, NULL, 0, WAL_MSGS);
    double tbl = wal_bytes(c, "table", 1, WAL_MSGS);
    double wal = wal_bytes(c, "wal", 1, WAL_MSGS);
    if (bare < 0 || tbl < 0 || wal < 0)
        goto out;
    printf("WAL per message, all-in (emit + relay + VACUUM, less the UPDATE's %.0f B), "
           "%d messages: table %.0f B, wal %.0f B (%.2fx)\n", bare, WAL_MSGS, tbl - bare,
           wal - bare, (wal - bare) / (tbl - bare));
    printf("bench wal_bytes_per_msg_table %.0f B\n", tbl - bare);
    printf("bench wal_bytes_per_msg_wal %.0f B\n", wal - bare);
    }

    /* Drain a backlog. */
    if (step("drain")) {
    /* Each backlog is written once and drained DRAIN_ROUNDS times: the
     * table backlog's rows are kept aside and put back before each later
     * table drain; the wal backlog is kept in a copy of the slot made
     * before its first drain, copied back before each later one. A
     * drain takes about a second, so one figure was at the mercy of
     * whatever else the shared machine did that second; medians of the
     * rounds are less so. */
    run_result rt[DRAIN_ROUNDS], rw[DRAIN_ROUNDS];
    /* How long writing each backlog takes is printed too: it, not the
     * drains, is what keeps the 1,000,000 from being the default. */
    int64_t w0 = clk_mono_us();
    if (set_mode(c, "table") || drain_backlog(c, 0, backlog_n))
        goto out;
    double write_table_s = (double)(clk_mono_us() - w0) / 1e6;
    if (bench_exec(c, "CREATE TABLE bench_drain_rows AS SELECT * FROM ferry.outbox") ||
        bench_exec(c, "VACUUM ferry.outbox") || run_relay("table", &rt[0]))
        goto out;
    /* The slot starts past the table backlog, as it would in steady
     * state (its rows would be decoded, and skipped, otherwise). */
    if (slot_to_now(c, "the table backlog") || set_mode(c, "wal"))
        goto out;
    w0 = clk_mono_us();
    if (drain_backlog(c, 1, backlog_n))
        goto out;
    double write_wal_s = (double)(clk_mono_us() - w0) / 1e6;
    if (bench_exec(c, "SELECT pg_copy_logical_replication_slot('ferry', 'bench_drain_copy')"))
        goto out;
    /* The server's share alone: the same backlog decoded by pgoutput, with
     * the relay's options, peeked (the slot does not move) and counted in
     * the server. The WAL source cannot drain faster than its walsender
     * decodes; this says how near it comes. */
    long long decoded = -1;
    w0 = clk_mono_us();
    if (bench_query_ll(c, "SELECT count(*) FROM pg_logical_slot_peek_binary_changes("
                          "'ferry', NULL, NULL, 'proto_version', '1', 'publication_names', "
                          "'ferry_outbox', 'messages', 'true')", NULL, &decoded))
        goto out;
    double decode_s = (double)(clk_mono_us() - w0) / 1e6;
    /* The wal drains, then the rest of the table's: a table drain writes
     * WAL (its DELETEs, the rows put back), which a later wal drain would
     * have to read to its end, more each round. */
    for (int round = 0; round < DRAIN_ROUNDS; round++) {
        if ((round > 0 && (slot_released(c, "ferry") ||
                           bench_exec(c, "SELECT pg_drop_replication_slot('ferry')") ||
                           bench_exec(c, "SELECT pg_copy_logical_replication_slot("
                                         "'bench_drain_copy', 'ferry')"))) ||
            run_relay("wal", &rw[round]))
            goto out;
        fprintf(stderr, "bench: wal drain %d/%d: %.2f s\n", round + 1, DRAIN_ROUNDS,
                rw[round].wall_s);
    }
    for (int round = 1; round < DRAIN_ROUNDS; round++) {
        /* Table mode (set_mode moves the slot past the turn), the rows
         * put back. */
        /* The table as the first drain found it: without the dead rows
         * and index entries of the drains before, which the fetch's index
         * scan would otherwise walk past. */
        if (set_mode(c, "table") || bench_exec(c, "VACUUM ferry.outbox") ||
            bench_exec(c, "INSERT INTO ferry.outbox SELECT * FROM bench_drain_rows") ||
            run_relay("table", &rt[round]))
            goto out;
        fprintf(stderr, "bench: table drain %d/%d: %.2f s\n", round + 1, DRAIN_ROUNDS,
                rt[round].wall_s);
    }
    if (bench_exec(c, "SELECT pg_drop_replication_slot('bench_drain_copy')") ||
        bench_exec(c, "DROP TABLE bench_drain_rows"))
        goto out;
    double tw[DRAIN_ROUNDS], ww[DRAIN_ROUNDS], tc[DRAIN_ROUNDS], wc[DRAIN_ROUNDS],
        ratio[DRAIN_ROUNDS];
    long trss = 0, wrss = 0;
    for (int i = 0; i < DRAIN_ROUNDS; i++) {
        tw[i] = rt[i].wall_s;
        ww[i] = rw[i].wall_s;
        tc[i] = rt[i].cpu_s * 1e6 / (double)backlog_n;
        wc[i] = rw[i].cpu_s * 1e6 / (double)backlog_n;
        ratio[i] = rt[i].wall_s / rw[i].wall_s;
        trss = rt[i].maxrss_kib > trss ? rt[i].maxrss_kib : trss;
        wrss = rw[i].maxrss_kib > wrss ? rw[i].maxrss_kib : wrss;
    }
    double t_s = bench_median(tw, DRAIN_ROUNDS), w_s = bench_median(ww, DRAIN_ROUNDS);
    printf("writing the %ld-message backlogs, 1,000 a transaction (the first %ld by "
           "ferry.emit(), the rest in bulk): table mode %.1f s, wal mode %.1f s\n", backlog_n,
           backlog_n < DRAIN_EMITTED ? backlog_n : (long)DRAIN_EMITTED, write_table_s,
           write_wal_s);
    printf("bench wal_drain_write_table %.1f s\n", write_table_s);
    printf("bench wal_drain_write_wal %.1f s\n", write_wal_s);
    printf("drain of a %ld-message backlog (ferry-relay --once), median of %d drains each: "
           "table %.2f s (%.0f msg/s), wal %.2f s (%.0f msg/s): %.2fx (per round: ",
           backlog_n, DRAIN_ROUNDS, t_s, (double)backlog_n / t_s, w_s, (double)backlog_n / w_s,
           t_s / w_s);
    for (int i = 0; i < DRAIN_ROUNDS; i++)
        printf("%s%.2f", i ? ", " : "", ratio[i]);
    printf(")\n");
    printf("bench wal_drain_table %.0f msg/s\n", (double)backlog_n / t_s);
    printf("bench wal_drain_wal %.0f msg/s\n", (double)backlog_n / w_s);
    printf("bench wal_drain_ratio %.3f ratio\n", t_s / w_s);
    printf("the server decoding the wal backlog alone (pgoutput, peeked in SQL: %lld changes, "
           "its transactions' BEGIN and COMMIT included): %.2f s (%.0f msg/s); the WAL source "
           "drained it in %.2f times that\n", decoded, decode_s, (double)backlog_n / decode_s,
           w_s / decode_s);
    printf("bench wal_decode_only %.0f msg/s\n", (double)backlog_n / decode_s);
    printf("bench wal_drain_vs_decode_ratio %.3f ratio\n", decode_s / w_s);
    /* CPU, less at the mercy of a shared machine than wall time: the
     * relay's own per message, each source. */
    double tcm = bench_median(tc, DRAIN_ROUNDS), wcm = bench_median(wc, DRAIN_ROUNDS);
    printf("relay CPU per message (user + system, all threads; median): table %.2f us, "
           "wal %.2f us\n", tcm, wcm);
    printf("bench wal_drain_cpu_us_table %.2f us\n", tcm);
    printf("bench wal_drain_cpu_us_wal %.2f us\n", wcm);
    printf("bench wal_drain_rss_table %.1f MiB\n", (double)trss / 1024);
    printf("bench wal_drain_rss_wal %.1f MiB\n", (double)wrss / 1024);
    }

    /* One large transaction. */
    if (step("bigtx")) {
    run_result rb;
    /* In wal mode whatever step ran before (the drain ends in table
     * mode): the transaction must go to WAL, not to the table. */
    long long waiting = -1;
    if (slot_to_now(c, "the steps before") || set_mode(c, "wal") ||
        backlog(c, bigtx_n, bigtx_n) ||
        bench_query_ll(c, "SELECT count(*) FROM ferry.outbox WHERE published_at IS NULL", NULL,
                       &waiting))
        goto out;
    if (waiting != 0) {
        fprintf(stderr, "bench: bigtx: %lld messages went to the outbox table, not to WAL\n",
                waiting);
        goto out;
    }
    if (run_relay("wal", &rb) || slot_released(c, "ferry"))
        goto out;
    printf("one transaction of %ld messages, WAL source: drained in %.2f s, relay peak RSS "
           "%.1f MiB (a relay of 0 messages: see wal_drain_rss_*)\n", bigtx_n, rb.wall_s,
           (double)rb.maxrss_kib / 1024);
    printf("bench wal_bigtx_rss %.1f MiB\n", (double)rb.maxrss_kib / 1024);
    printf("bench wal_bigtx_seconds %.2f s\n", rb.wall_s);
    }

    /* Commit -> consumer. */
    static const long rates[2] = {100, 2000};
    for (g_lat_round = 0; g_lat_round < lat_rounds && step("latency"); g_lat_round++)
    for (int ri = 0; ri < 2; ri++) {
        double fl[2], tb[2], wl[2];
        if (latency(c, NULL, rates[ri], fl) || latency(c, "table", rates[ri], tb) ||
            latency(c, "wal", rates[ri], wl))
            goto out;
        printf("commit -> consumer at %ld msg/s, p50/p99: floor (produce -> consume) "
               "%.1f/%.1f ms, table %.1f/%.1f ms, wal %.1f/%.1f ms\n", rates[ri], fl[0], fl[1],
               tb[0], tb[1], wl[0], wl[1]);
        printf("bench wal_latency_floor_%ld_p50 %.1f ms\nbench wal_latency_floor_%ld_p99 %.1f ms\n",
               rates[ri], fl[0], rates[ri], fl[1]);
        printf("bench wal_latency_table_%ld_p50 %.1f ms\nbench wal_latency_table_%ld_p99 %.1f ms\n",
               rates[ri], tb[0], rates[ri], tb[1]);
        printf("bench wal_latency_wal_%ld_p50 %.1f ms\nbench wal_latency_wal_%ld_p99 %.1f ms\n",
               rates[ri], wl[0], rates[ri], wl[1]);
    }
    rc = 0;
out:
    return bench_end(rc, g_kb, c, g_pg);
}
