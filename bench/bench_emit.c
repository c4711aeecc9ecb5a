/*
 * bench_emit.c — what does ferry_emit() add to a service's transaction?
 *
 * Three workloads, each transaction BEGIN; ...; COMMIT on the client's own
 * connection, against a throwaway cluster running with the server's durable
 * defaults (fsync, synchronous_commit, full_page_writes all on):
 *
 *   (a) bare    UPDATE bench_account SET balance = balance + 1 WHERE id = $1
 *   (b) emit    the same UPDATE + one ferry_emit() keyed by the account id
 *   (c) insert  the same UPDATE + one bare INSERT into bench_outbox, a table
 *               shaped like ferry.outbox (same columns and types, uuid key
 *               made on the client, the same unique index on the position),
 *               i.e. what "just one more INSERT" costs
 *
 * at 1 and at 8 concurrent clients (one thread and one connection each;
 * every client has its own account row and therefore its own ferry key, so
 * neither the row lock nor ferry's per-key lock is ever contended). The
 * bare statements are prepared, so the comparison is not tilted against
 * them.
 *
 * This is a benchmark, not a test: timings never fail it. It fails (exit 1)
 * only when something did not work — a failed emit, a lost row.
 *
 * Noise: the machines this runs on are shared, so absolute tps drift from
 * one second to the next. The workloads therefore run interleaved in rounds
 * (the order rotated every round so none always runs first), each figure is
 * the median over the rounds, and every ratio compares figures of the same
 * run. FERRY_BENCH_SECONDS sets the length of one measurement.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry.h"
#include "../tests/harness/pgtmp.h"
#include "benchutil.h"

enum {
    ROUNDS = 5,
    MAX_CLIENTS = 8,
    BATCH_N = 10000,
    BATCH_ROUNDS = 3,
    BATCH_KEYS = 100,           /* the 10k messages spread over this many keys */
    SHARDS = 16,                /* bench_outbox.shard, as ferry's default */
    PAYLOAD_SIZE = 256,
};

static const char TOPIC[] = "bench.accounts";
static const char EVENT_TYPE[] = "BalanceChanged";

typedef enum workload { WL_BARE, WL_EMIT, WL_INSERT, WL_COUNT } workload;
static const char *const wl_name[WL_COUNT] = {"bare", "emit", "insert"};
static const char *const wl_what[WL_COUNT] = {
    "UPDATE one account row",
    "UPDATE + ferry_emit (one message)",
    "UPDATE + bare INSERT into an outbox-shaped table",
};

/* One client: a thread's connection and what it counts. */
typedef struct client {
    long account_id;
    char key[24];               /* the account id as text: the ferry key */
    PGconn *conn;
    int64_t seq;                /* bench_outbox position of this key */
    uint64_t serial;            /* makes each payload distinct */
    uint64_t committed[WL_COUNT]; /* over the whole run, for the final check */

    /* one measurement */
    workload wl;
    double seconds;
    pthread_barrier_t *start;
    long count;
    double elapsed;
    char error[FERRY_ERROR_MESSAGE_SIZE + 128];
} client;

/* Set by the first client that fails, so that the others stop early. */
static atomic_int g_failed;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A realistic event body of about 200 bytes, different every time. */
static int make_payload(char *buf, size_t size, const char *key, uint64_t serial)
{
    int n = snprintf(buf, size,
                     "{\"account_id\":\"%s\",\"delta\":{\"amount\":1,\"currency\":\"EUR\"},"
                     "\"reason\":\"card payment\",\"merchant\":\"Corner Bakery Ltd\","
                     "\"request_id\":\"req-%012" PRIu64 "\","
                     "\"occurred_at\":\"2024-05-17T09:41:07.123Z\",\"source\":\"bench_emit\"}",
                     key, serial);
    return n > 0 && (size_t)n < size ? n : -1;
}

static const char update_sql[] =
    "UPDATE bench_account SET balance = balance + 1 WHERE id = $1::bigint";
static const char insert_sql[] =
    "INSERT INTO bench_outbox (id, topic, aggregatetype, aggregateid, type, payload, "
    "headers, seq, shard) "
    "VALUES ($1::uuid, $2, '', $3, $4, $5::jsonb, '{}'::jsonb, $6::bigint, $7::integer)";

static int prepare(client *c)
{
    PGresult *res = PQprepare(c->conn, "bench_update", update_sql, 0, NULL);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (ok) {
        res = PQprepare(c->conn, "bench_insert", insert_sql, 0, NULL);
        ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
    }
    if (!ok)
        fprintf(stderr, "bench: could not prepare statements: %s", PQerrorMessage(c->conn));
    return ok ? 0 : -1;
}

/* Run one command whose result has no rows; on failure describe it in
 * c->error. */
static int command_ok(client *c, PGresult *res, const char *what)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    snprintf(c->error, sizeof c->error, "%s failed: %s", what, PQerrorMessage(c->conn));
    PQclear(res);
    return -1;
}

/* One transaction of workload wl. 0 when committed. */
static int one_tx(client *c, workload wl)
{
    char acct[24];
    snprintf(acct, sizeof acct, "%ld", c->account_id);
    char payload[PAYLOAD_SIZE];
    if (make_payload(payload, sizeof payload, c->key, ++c->serial) < 0) {
        snprintf(c->error, sizeof c->error, "payload does not fit its buffer");
        return -1;
    }

    if (command_ok(c, PQexec(c->conn, "BEGIN"), "BEGIN") != 0)
        return -1;
    const char *upd[1] = {acct};
    if (command_ok(c, PQexecPrepared(c->conn, "bench_update", 1, upd, NULL, NULL, 0),
                   "UPDATE") != 0)
        goto rollback;

    if (wl == WL_EMIT) {
        ferry_msg m = {.topic = TOPIC, .key = c->key, .type = EVENT_TYPE,
                       .payload = payload};
        ferry_error err;
        ferry_code rc = ferry_emit(c->conn, &m, NULL, NULL, &err);
        if (rc != FERRY_OK) {
            snprintf(c->error, sizeof c->error, "ferry_emit failed: %s: %s [%s]",
                     ferry_code_name(rc), err.message, err.sqlstate);
            goto rollback;
        }
    } else if (wl == WL_INSERT) {
        ferry_uuid id;
        char id_text[FERRY_UUID_STRING_SIZE], seq[24], shard[16];
        if (ferry_uuid_v7(&id) != FERRY_OK) {
            snprintf(c->error, sizeof c->error, "ferry_uuid_v7 failed");
            goto rollback;
        }
        ferry_uuid_format(&id, id_text);
        /* The position goes up only when the row commits, as ferry's does. */
        snprintf(seq, sizeof seq, "%" PRId64, c->seq + 1);
        snprintf(shard, sizeof shard, "%ld", c->account_id % SHARDS);
        const char *ins[7] = {id_text, TOPIC, c->key, EVENT_TYPE, payload, seq, shard};
        if (command_ok(c, PQexecPrepared(c->conn, "bench_insert", 7, ins, NULL, NULL, 0),
                       "INSERT") != 0)
            goto rollback;
    }

    PGresult *res = PQexec(c->conn, "COMMIT");
    if (PQresultStatus(res) != PGRES_COMMAND_OK || strcmp(PQcmdStatus(res), "COMMIT") != 0) {
        snprintf(c->error, sizeof c->error, "COMMIT failed: %s", PQerrorMessage(c->conn));
        PQclear(res);
        return -1;
    }
    PQclear(res);
    if (wl == WL_INSERT)
        c->seq++;
    c->committed[wl]++;
    return 0;

rollback:
    PQclear(PQexec(c->conn, "ROLLBACK"));
    return -1;
}

static void *client_main(void *arg)
{
    client *c = arg;
    c->count = 0;
    c->elapsed = 0;
    pthread_barrier_wait(c->start);
    double t0 = now_s(), end = t0 + c->seconds, t = t0;
    while (t < end && !atomic_load(&g_failed)) {
        if (one_tx(c, c->wl) != 0) {
            atomic_store(&g_failed, 1);
            break;
        }
        c->count++;
        t = now_s();
    }
    c->elapsed = t - t0;
    return NULL;
}

/* Run wl on the first n clients for `seconds`; returns the summed rate of
 * the clients (each one's transactions over its own elapsed time), or -1. */
static double measure(client *clients, int n, workload wl, double seconds)
{
    pthread_barrier_t start;
    pthread_t tid[MAX_CLIENTS];
    if (pthread_barrier_init(&start, NULL, (unsigned)n) != 0) {
        fprintf(stderr, "bench: pthread_barrier_init failed\n");
        return -1;
    }
    int started = 0;
    for (; started < n; started++) {
        client *c = &clients[started];
        c->wl = wl;
        c->seconds = seconds;
        c->start = &start;
        c->error[0] = '\0';
        if (pthread_create(&tid[started], NULL, client_main, c) != 0)
            break;
    }
    if (started < n) {
        /* The barrier would never open: nothing sensible to do but stop. */
        fprintf(stderr, "bench: pthread_create failed\n");
        exit(1);
    }
    for (int i = 0; i < n; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&start);

    double tps = 0;
    for (int i = 0; i < n; i++) {
        if (clients[i].error[0] != '\0') {
            fprintf(stderr, "bench: client %d (%s, %d clients): %s\n", i, wl_name[wl], n,
                    clients[i].error);
            return -1;
        }
        if (clients[i].elapsed > 0)
            tps += (double)clients[i].count / clients[i].elapsed;
    }
    if (atomic_load(&g_failed))
        return -1;
    return tps;
}

typedef struct level_result {
    int clients;
    double tps[WL_COUNT][ROUNDS];
    double med[WL_COUNT];
} level_result;

static int run_level(client *clients, int n, double seconds, level_result *out)
{
    out->clients = n;
    double warm = seconds / 2 < 0.2 ? 0.2 : seconds / 2;
    for (int w = 0; w < WL_COUNT; w++)
        if (measure(clients, n, (workload)w, warm) < 0)
            return -1;
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < WL_COUNT; k++) {
            workload w = (workload)((r + k) % WL_COUNT);   /* rotated order */
            double tps = measure(clients, n, w, seconds);
            if (tps < 0)
                return -1;
            out->tps[w][r] = tps;
        }
        fprintf(stderr, "bench: %d client%s, round %d/%d done\n", n, n == 1 ? "" : "s",
                r + 1, ROUNDS);
    }
    for (int w = 0; w < WL_COUNT; w++)
        out->med[w] = bench_median(out->tps[w], ROUNDS);
    return 0;
}

/* ---------------------------------------------------------- batch vs single */

typedef struct batch_data {
    ferry_msg msgs[BATCH_N];
    char keys[BATCH_KEYS][16];
    char payloads[BATCH_N][PAYLOAD_SIZE];
} batch_data;

/* One transaction of BATCH_N messages, by one ferry_emit_batch() or by
 * BATCH_N ferry_emit() calls; returns its milliseconds, BEGIN to COMMIT,
 * or -1. */
static double time_batch(PGconn *conn, const batch_data *b, int batched)
{
    double t0 = now_s();
    if (bench_exec(conn, "BEGIN") != 0)
        return -1;
    ferry_error err;
    ferry_code rc = FERRY_OK;
    if (batched) {
        rc = ferry_emit_batch(conn, b->msgs, BATCH_N, NULL, NULL, &err);
    } else {
        for (int i = 0; i < BATCH_N && rc == FERRY_OK; i++)
            rc = ferry_emit(conn, &b->msgs[i], NULL, NULL, &err);
    }
    if (rc != FERRY_OK) {
        fprintf(stderr, "bench: %s failed: %s: %s [%s] (message %ld)\n",
                batched ? "ferry_emit_batch" : "ferry_emit", ferry_code_name(rc),
                err.message, err.sqlstate, err.index);
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    if (bench_exec(conn, "COMMIT") != 0)
        return -1;
    return (now_s() - t0) * 1000;
}

static int run_batch(PGconn *conn, double *batch_ms, double *single_ms, uint64_t *emitted)
{
    batch_data *b = calloc(1, sizeof *b);
    if (b == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        return -1;
    }
    int rc = -1;
    for (int k = 0; k < BATCH_KEYS; k++)
        snprintf(b->keys[k], sizeof b->keys[k], "batch-%03d", k);
    for (int i = 0; i < BATCH_N; i++) {
        const char *key = b->keys[i % BATCH_KEYS];
        if (make_payload(b->payloads[i], sizeof b->payloads[i], key, (uint64_t)i) < 0)
            goto out;
        b->msgs[i] = (ferry_msg){.topic = TOPIC, .key = key, .type = EVENT_TYPE,
                                 .payload = b->payloads[i]};
    }
    /* Warm-up: the keys' first emits insert their position rows. */
    if (time_batch(conn, b, 1) < 0)
        goto out;
    *emitted += BATCH_N;
    for (int r = 0; r < BATCH_ROUNDS; r++) {
        for (int k = 0; k < 2; k++) {
            int batched = (r + k) % 2 == 0;
            double ms = time_batch(conn, b, batched);
            if (ms < 0)
                goto out;
            *emitted += BATCH_N;
            (batched ? batch_ms : single_ms)[r] = ms;
        }
    }
    rc = 0;
out:
    free(b);
    return rc;
}

/* ---------------------------------------------------------------- main */

static int setup_schema(PGconn *conn)
{
    static const char *const sql[] = {
        "CREATE TABLE bench_account (id bigint PRIMARY KEY, balance bigint NOT NULL)",
        "INSERT INTO bench_account SELECT g, 0 FROM generate_series(1, 8) AS g",
        /* ferry.outbox's columns, types, defaults and indexes, nothing else. */
        "CREATE TABLE bench_outbox ("
        "  id uuid PRIMARY KEY,"
        "  topic text NOT NULL,"
        "  aggregatetype text NOT NULL DEFAULT '',"
        "  aggregateid text NOT NULL,"
        "  type text NOT NULL,"
        "  payload jsonb NOT NULL,"
        "  headers jsonb NOT NULL DEFAULT '{}',"
        "  seq bigint NOT NULL,"
        "  shard integer NOT NULL,"
        "  created_at timestamptz NOT NULL DEFAULT now(),"
        "  available_at timestamptz NOT NULL DEFAULT now(),"
        "  attempts integer NOT NULL DEFAULT 0,"
        "  last_error text,"
        "  published_at timestamptz,"
        "  CONSTRAINT bench_outbox_position UNIQUE (shard, topic, aggregateid, seq))",
        "VACUUM ANALYZE bench_account",
        "CHECKPOINT",
    };
    return bench_exec_all(conn, sql, sizeof sql / sizeof sql[0]);
}

static void print_level(const level_result *lr)
{
    printf("\n%d client%s (tps, one column per round; median, min-max):\n", lr->clients,
           lr->clients == 1 ? "" : "s");
    printf("  %-7s", "");
    for (int r = 0; r < ROUNDS; r++)
        printf(" %9s%d", "round ", r + 1);
    printf(" %10s %21s\n", "median", "min - max");
    for (int w = 0; w < WL_COUNT; w++) {
        printf("  %-7s", wl_name[w]);
        for (int r = 0; r < ROUNDS; r++)
            printf(" %10.1f", lr->tps[w][r]);
        printf(" %10.1f %10.1f - %-10.1f\n", lr->med[w], bench_min(lr->tps[w], ROUNDS),
               bench_max(lr->tps[w], ROUNDS));
    }
    /* The same ratio taken within each round, as a check on the medians:
     * rounds see the same noise across their three workloads. */
    double pe[ROUNDS], pi[ROUNDS], pv[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        pe[r] = lr->tps[WL_BARE][r] / lr->tps[WL_EMIT][r];
        pi[r] = lr->tps[WL_BARE][r] / lr->tps[WL_INSERT][r];
        pv[r] = lr->tps[WL_INSERT][r] / lr->tps[WL_EMIT][r];
    }
    double me = lr->med[WL_BARE] / lr->med[WL_EMIT];
    double mi = lr->med[WL_BARE] / lr->med[WL_INSERT];
    double mv = lr->med[WL_INSERT] / lr->med[WL_EMIT];
    printf("  cost ratios (from the medians; median of the per-round ratios, min-max):\n");
    printf("    emit   vs bare   %6.3f  (%+5.1f%% time)   per round %.3f, %.3f - %.3f\n", me,
           (me - 1) * 100, bench_median(pe, ROUNDS), bench_min(pe, ROUNDS), bench_max(pe, ROUNDS));
    printf("    insert vs bare   %6.3f  (%+5.1f%% time)   per round %.3f, %.3f - %.3f\n", mi,
           (mi - 1) * 100, bench_median(pi, ROUNDS), bench_min(pi, ROUNDS), bench_max(pi, ROUNDS));
    printf("    emit   vs insert %6.3f  (%+5.1f%% time)   per round %.3f, %.3f - %.3f\n", mv,
           (mv - 1) * 100, bench_median(pv, ROUNDS), bench_min(pv, ROUNDS), bench_max(pv, ROUNDS));
}

static void print_figures(const level_result *lr)
{
    const char *sfx = lr->clients == 1 ? "1c" : "8c";
    printf("bench emit_tps_%s %.1f tps\n", sfx, lr->med[WL_EMIT]);
    printf("bench bare_tps_%s %.1f tps\n", sfx, lr->med[WL_BARE]);
    printf("bench insert_tps_%s %.1f tps\n", sfx, lr->med[WL_INSERT]);
    printf("bench emit_cost_ratio_%s %.3f ratio\n", sfx, lr->med[WL_BARE] / lr->med[WL_EMIT]);
    printf("bench insert_cost_ratio_%s %.3f ratio\n", sfx,
           lr->med[WL_BARE] / lr->med[WL_INSERT]);
    printf("bench emit_vs_insert_%s %.3f ratio\n", sfx, lr->med[WL_INSERT] / lr->med[WL_EMIT]);
}

/* Every committed emit must be in ferry.outbox, every committed insert in
 * bench_outbox: a benchmark that loses rows measures nothing. */
static int check_counts(PGconn *conn, uint64_t emits, uint64_t inserts)
{
    char a[32], b[32];
    if (bench_query_text(conn, "SELECT count(*) FROM ferry.outbox", 0, NULL, a, sizeof a) != 0 ||
        bench_query_text(conn, "SELECT count(*) FROM bench_outbox", 0, NULL, b, sizeof b) != 0)
        return -1;
    uint64_t got_e = strtoull(a, NULL, 10), got_i = strtoull(b, NULL, 10);
    if (got_e != emits || got_i != inserts) {
        fprintf(stderr, "bench: row count mismatch: ferry.outbox %" PRIu64 " (want %" PRIu64
                        "), bench_outbox %" PRIu64 " (want %" PRIu64 ")\n",
                got_e, emits, got_i, inserts);
        return -1;
    }
    printf("\ncheck: ferry.outbox holds all %" PRIu64 " committed emits, bench_outbox all %"
           PRIu64 " committed inserts\n", emits, inserts);
    return 0;
}

int main(void)
{
    double seconds;
    if (bench_env_double("FERRY_BENCH_SECONDS", 1.5, 0.05, 600, &seconds) != 0)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    int status = 1;
    client clients[MAX_CLIENTS];
    memset(clients, 0, sizeof clients);
    PGconn *admin = NULL, *busy = NULL;
    level_result levels[2];
    double batch_ms[BATCH_ROUNDS], single_ms[BATCH_ROUNDS];
    uint64_t batch_emitted = 0;

    fpg_opts opts = {.conf = NULL, .fsync = 1};
    fpg *pg = fpg_start(&opts);
    if (pg == NULL)
        return 1;
    if ((admin = fpg_connect(pg)) == NULL)
        goto out;
    int version = 0;
    if (bench_migrate(admin, &version) != 0)
        goto out;
    if (setup_schema(admin) != 0)
        goto out;
    /* As with a running relay that is busy: a session of its own holds
     * every shard's busy lock (ferry.wake_shard_lock) for the whole run,
     * so emit sends no NOTIFY. Notifying commits serialize on one lock in
     * PostgreSQL; what that costs is a property of LISTEN/NOTIFY, measured
     * by bench-relay's latency run, not of the emit path. */
    if ((busy = fpg_connect(pg)) == NULL ||
        bench_exec(busy, "SELECT pg_advisory_lock(l.classid, l.objid) FROM ferry.settings, "
                         "generate_series(0, shard_count - 1) s, "
                         "ferry.wake_shard_lock(s) l") != 0)
        goto out;

    bench_server srv;
    if (bench_server_read(admin, &srv) != 0)
        goto out;

    for (int i = 0; i < MAX_CLIENTS; i++) {
        client *c = &clients[i];
        c->account_id = i + 1;
        snprintf(c->key, sizeof c->key, "%ld", c->account_id);
        if ((c->conn = fpg_connect(pg)) == NULL || prepare(c) != 0)
            goto out;
    }

    printf("ferry emit-overhead benchmark (libferry %s, schema %d)\n", ferry_version(),
           version);
    printf("server: PostgreSQL %s, fsync=%s, synchronous_commit=%s, wal_sync_method=%s, "
           "shared_buffers=%s (durable defaults)\n",
           srv.version, srv.fsync, srv.sync_commit, srv.sync_method, srv.shared_buffers);
    printf("workloads, each one transaction BEGIN; ...; COMMIT per client connection:\n");
    for (int w = 0; w < WL_COUNT; w++)
        printf("  (%c) %-6s %s\n", 'a' + w, wl_name[w], wl_what[w]);
    printf("each client updates its own account and emits under its own key: no lock "
           "is contended\n");
    printf("method: per client count, a warm-up of each workload, then %d rounds of "
           "(a, b, c) in rotated order, %.2f s each; figures are medians over the rounds\n",
           ROUNDS, seconds);
    printf("cost ratio X vs Y = tps(Y) / tps(X) = time per transaction of X over that of "
           "Y\n  (1.25 = a transaction takes 25%% longer). The same definition for all "
           "three:\n  emit_cost_ratio = (b) vs (a) = bare_tps / emit_tps, "
           "insert_cost_ratio = (c) vs (a) = bare_tps / insert_tps,\n"
           "  emit_vs_insert = (b) vs (c) = insert_tps / emit_tps\n");

    static const int counts[2] = {1, 8};
    for (int l = 0; l < 2; l++) {
        if (run_level(clients, counts[l], seconds, &levels[l]) != 0)
            goto out;
        print_level(&levels[l]);
    }

    fprintf(stderr, "bench: batch vs single emits\n");
    if (run_batch(admin, batch_ms, single_ms, &batch_emitted) != 0)
        goto out;
    double bm = bench_median(batch_ms, BATCH_ROUNDS), sm = bench_median(single_ms, BATCH_ROUNDS);
    printf("\n%d messages in one transaction (%d keys; ms BEGIN to COMMIT, median of %d, "
           "min-max):\n", BATCH_N, BATCH_KEYS, BATCH_ROUNDS);
    printf("  ferry_emit_batch  %9.1f ms   %.1f - %.1f   (%.1f us per message)\n", bm,
           bench_min(batch_ms, BATCH_ROUNDS), bench_max(batch_ms, BATCH_ROUNDS),
           bm * 1000 / BATCH_N);
    printf("  ferry_emit x %d %9.1f ms   %.1f - %.1f   (%.1f us per message)\n", BATCH_N, sm,
           bench_min(single_ms, BATCH_ROUNDS), bench_max(single_ms, BATCH_ROUNDS),
           sm * 1000 / BATCH_N);
    printf("  batch speedup     %9.2f x\n", sm / bm);

    uint64_t emits = batch_emitted, inserts = 0;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        emits += clients[i].committed[WL_EMIT];
        inserts += clients[i].committed[WL_INSERT];
    }
    if (check_counts(admin, emits, inserts) != 0)
        goto out;

    printf("\n");
    for (int l = 0; l < 2; l++)
        print_figures(&levels[l]);
    printf("bench emit_batch_10k_ms %.1f ms\n", bm);
    printf("bench emit_single_10k_ms %.1f ms\n", sm);
    printf("bench batch_speedup %.2f ratio\n", sm / bm);
    status = 0;

out:
    for (int i = 0; i < MAX_CLIENTS; i++)
        PQfinish(clients[i].conn);
    PQfinish(busy);
    return bench_end(status, NULL, admin, pg);
}
