/*
 * bench_saga.c — how many three-step sagas does ferry finish per second,
 * and how long does one take?
 *
 * The setup is tests/test_saga.c's and the demo's: a throwaway PostgreSQL
 * with the server's durable defaults (fsync, synchronous_commit on), a
 * `ferry-relay devkafka` broker (librdkafka's mock cluster), one
 * `ferry-relay run` child publishing the outbox, and ferry consumers in
 * this process: the orchestrator's (replies, ferry_saga_reply_handler) and
 * one per participant (payment, inventory, shipping, each through
 * ferry_participant_handle with callbacks that do nothing else), here each
 * polled in its own thread, as four services would. All share the one
 * database. The saga is examples/sagas/order.yaml's shape: three steps,
 * the last the pivot, with timeouts long enough that no timer fires.
 *
 * A saga is timed from before the BEGIN of the transaction that starts it
 * (ferry_saga_start + COMMIT) to the moment the orchestrator's consumer
 * has committed the reply that completes it (its handler notes the
 * completion; the time is taken when ferry_consumer_poll returns, after
 * the commit). Between the two: six messages (three commands, three
 * replies), each written to the outbox, published by the relay and applied
 * by a consumer in a transaction of its own, plus the start.
 *
 * Figures:
 *   saga_completed_per_s   a burst of N sagas (FERRY_BENCH_SAGAS, default
 *                          400) started back to back on one connection,
 *                          each in its own transaction: N / (first BEGIN ->
 *                          last completion).
 *   saga_latency_p50/p99   start -> completion at a steady start rate, a
 *                          quarter of the first burst's rate (at most 50/s),
 *                          for FERRY_BENCH_SECONDS (default 6) per round.
 *   saga_hop_latency_*     the baseline: one message emitted in a
 *                          transaction (ferry_emit + COMMIT) -> applied by a
 *                          consumer through its inbox, timed the same way,
 *                          at six times the saga start rate (the messages
 *                          per second the saga run puts through the relay).
 *                          A saga is six such hops in a row, so
 *                          saga_vs_hop_p50_ratio near 6 means the saga
 *                          machinery adds little beyond its messages.
 *
 * FERRY_BENCH_CONSUMERS=N (1..4, default 1) runs N consumers per role,
 * in one group each (the topics have four partitions): how far more
 * orchestrators and participants, whose commits the server then flushes
 * together, carry the rate. The figures' names do not change; the report
 * says how many ran.
 *
 * FERRY_BENCH_STARTERS=N (1..16, default 1) starts a burst's sagas from
 * N connections at once: one connection, each saga in its own
 * transaction, waits for a WAL flush per saga and can set the pace
 * itself. FERRY_BENCH_BATCH_MAX=N gives every consumer batch_max N (0,
 * the default: the library's); the report prints messages per
 * transaction by consumer.
 *
 * FERRY_BENCH_STATEMENTS=1 loads pg_stat_statements and prints, at the
 * end, the statements that took the server the most time (calls/plans:
 * a prepared statement planned once shows few plans) and the tables read
 * sequentially, and after every burst what the server counted per saga:
 * commits, WAL syncs (flushes), WAL records and bytes, top-level
 * statements (a profile of the path, not a figure).
 *
 * FERRY_BENCH_TRACE=1 prints, for every latency run, where a hop's time
 * went (medians): the starting transaction, then per hop the transport
 * (the previous commit to the handler being called: wake-up, relay fetch
 * and produce, broker, consumer fetch, the batch's claims), the handler
 * and the rest up to the commit; saga hops split into commands and
 * replies; and the hop baseline's transport split again by an observer
 * (a plain consumer of the hop topic in a group of its own) at the
 * relay's produce (the message's CreateTime) and the observer's receipt.
 * FERRY_BENCH_RELAY_PGOPTIONS sets libpq's PGOPTIONS for the
 * relay alone (a server setting of its sessions, tried against the
 * defaults).
 *
 * Noise: FERRY_BENCH_ROUNDS rounds (default 3) of (burst, saga latency,
 * hop latency), the two latency runs swapped every round; figures are
 * medians over the rounds.
 *
 * A benchmark, not a test: timings never fail it. It exits 1 only when
 * something did not work: a consumer error, a saga not completed within a
 * minute of the last start, anything dead-lettered.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ferry.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/pgtmp.h"
#include "benchutil.h"

enum {
    DEFAULT_SAGAS = 400,
    SAGAS_MAX = 20000,
    DEFAULT_SECONDS = 6,
    SECONDS_MAX = 600,
    DEFAULT_ROUNDS = 3,
    ROUNDS_MAX = 15,
    STEADY_RATE_MAX = 50,           /* sagas/s */
    HOPS = 6,                       /* messages per three-step saga */
    LAST_STEP = 2,                  /* the pivot: its success completes the saga */
    POLL_MS = 50,
    STALL_TIMEOUT_MS = 60000,       /* nothing completed for this long: give up */
    /* Completions noted in one poll: a poll applies a batch (up to the
     * consumer's batch_max, 1000 at most) and may drain held messages, so
     * the list grows; this only bounds it. With a fixed 64 here a batch
     * of 100 replies that completed more than 64 sagas lost the rest from
     * sight: the sagas completed in the database, the bench waited for
     * them for a minute and failed -- the "stuck sagas" of batch_max 100. */
    PENDING_MAX = 1 << 20,
    CONSUMERS_MAX = 4,              /* per role: the topics have 4 partitions */
    STARTERS_MAX = 16,              /* connections starting a burst's sagas */
};

static const char saga_yaml[] =
    "saga: order\n"
    "version: 1\n"
    "deadline: 10m\n"
    "steps:\n"
    "  - name: payment\n"
    "    topic: payments.commands\n"
    "    action: {type: ReservePayment, payload: {order: \"${context.order_id}\",\n"
    "             amount: \"${context.total}\"}}\n"
    "    compensation: {type: ReleasePayment, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 60s\n"
    "  - name: inventory\n"
    "    topic: inventory.commands\n"
    "    action: {type: ReserveStock, payload: {order: \"${context.order_id}\"}}\n"
    "    compensation: {type: ReleaseStock, payload: {order: \"${context.order_id}\"}}\n"
    "    timeout: 60s\n"
    "  - name: shipping\n"
    "    topic: shipping.commands\n"
    "    action: {type: ShipOrder, payload: {order: \"${context.order_id}\"}}\n"
    "    pivot: true\n"
    "    timeout: 60s\n";

static const char HOP_TOPIC[] = "bench.hop";

enum { C_ORCH, C_PAYMENT, C_INVENTORY, C_SHIPPING, C_HOP, C_COUNT };
static const char *const topic_of[C_COUNT] = {
    [C_ORCH] = FERRY_SAGA_REPLY_TOPIC_DEFAULT, [C_PAYMENT] = "payments.commands",
    [C_INVENTORY] = "inventory.commands", [C_SHIPPING] = "shipping.commands",
    [C_HOP] = HOP_TOPIC,
};
static const char *const name_of[C_COUNT] = {
    [C_ORCH] = "orchestrator", [C_PAYMENT] = "payment", [C_INVENTORY] = "inventory",
    [C_SHIPPING] = "shipping", [C_HOP] = "hop",
};

typedef struct idslot {
    _Atomic uint64_t hi, lo;        /* the saga's id; hi 0: free */
    atomic_long seq;
} idslot;

/* One measured run: what was started when, and when it completed. The
 * main thread writes start_us, a consumer thread done_us; done counts the
 * completions (release), so the main thread may read done_us[0..n) once
 * it has seen done == n (acquire). */
typedef struct run {
    long id;                        /* in the context / payload; others are ignored */
    long n;
    int64_t *start_us;
    int64_t *done_us;
    atomic_long done;
    /* Saga id -> seq, written by the starting thread before the saga's
     * COMMIT, read by the orchestrator's thread once the saga's last
     * reply came: open addressing, never more than half full. */
    idslot *ids;
    size_t ids_mask;
    /* FERRY_BENCH_TRACE=1 (saga and hop latency runs): per item, when the
     * starting transaction's COMMIT returned, and per hop when a consumer
     * called the handler (in_us), when the handler returned (out_us) and
     * when the poll that applied it returned, committed (done_us). Written
     * once each, by one thread; read after the run. */
    int64_t *committed_us;
    _Atomic int64_t (*hop_in_us)[HOPS], (*hop_out_us)[HOPS], (*hop_done_us)[HOPS];
    /* And for the hop baseline, what a plain Kafka consumer of the topic
     * (the observer, a group of its own) saw: the message's CreateTime,
     * stamped by the relay's producer when it produced it (ms, on the
     * monotonic clock here), and when the observer received it. */
    _Atomic int64_t *produced_us, *observed_us;
} run;

static void id_split(const ferry_uuid *u, uint64_t *hi, uint64_t *lo)
{
    *hi = *lo = 0;
    for (int i = 0; i < 8; i++) {
        *hi = (*hi << 8) | u->bytes[i];
        *lo = (*lo << 8) | u->bytes[8 + i];
    }
    *hi |= 1;       /* never 0, the free mark; lo is compared too */
}

static size_t id_hash(uint64_t hi, uint64_t lo)
{
    uint64_t h = (hi ^ (lo * 0x9e3779b97f4a7c15u)) * 0xff51afd7ed558ccdu;
    return (size_t)(h ^ (h >> 29));
}

static pthread_mutex_t ids_lock = PTHREAD_MUTEX_INITIALIZER;  /* starters put */

static void id_put(run *r, const ferry_uuid *u, long seq)
{
    pthread_mutex_lock(&ids_lock);
    uint64_t hi, lo;
    id_split(u, &hi, &lo);
    size_t i = id_hash(hi, lo) & r->ids_mask;
    while (atomic_load_explicit(&r->ids[i].hi, memory_order_relaxed) != 0)
        i = (i + 1) & r->ids_mask;
    atomic_store_explicit(&r->ids[i].lo, lo, memory_order_relaxed);
    atomic_store_explicit(&r->ids[i].seq, seq, memory_order_relaxed);
    atomic_store_explicit(&r->ids[i].hi, hi, memory_order_release);
    pthread_mutex_unlock(&ids_lock);
}

/* The seq of saga u in r, or -1. */
static long id_get(run *r, const ferry_uuid *u)
{
    uint64_t hi, lo;
    id_split(u, &hi, &lo);
    for (size_t i = id_hash(hi, lo) & r->ids_mask;; i = (i + 1) & r->ids_mask) {
        uint64_t h = atomic_load_explicit(&r->ids[i].hi, memory_order_acquire);
        if (h == 0)
            return -1;
        if (h == hi && atomic_load_explicit(&r->ids[i].lo, memory_order_relaxed) == lo)
            return atomic_load_explicit(&r->ids[i].seq, memory_order_relaxed);
    }
}

static run *_Atomic current;        /* the run in progress, or NULL */

typedef struct worker {
    int which;
    ferry_consumer *c;
    pthread_t thread;
    int started;                    /* thread is running */
    atomic_int assigned;            /* has had partitions assigned */
    long *pending;                  /* completions seen in the transactions being applied */
    size_t n_pending, cap_pending;
    int overflow;
    _Atomic int64_t **tpending;     /* trace: hop_done_us slots to stamp after the poll */
    size_t n_tpending, cap_tpending;
    ferry_error err;
    ferry_code rc;
    ferry_consumer_stats stats;     /* at the end, for the report */
} worker;

static ferry_saga_registry *bench_reg;
static long bench_starters = 1;    /* FERRY_BENCH_STARTERS: connections starting a burst */
static long bench_batch_max;       /* FERRY_BENCH_BATCH_MAX; 0: the library's default */
static int bench_trace;            /* FERRY_BENCH_TRACE=1: where a hop's time goes */
static atomic_int stop_flag;
static atomic_int failed;

static void sleep_until_us(int64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000), (long)(t % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* ---------------------------------------------------------------- handlers */

/* A completion of (run_id, seq) in the transaction being applied: noted,
 * stamped once the poll that applied it has returned (committed). */
static void note(worker *w, long run_id, long seq)
{
    run *r = atomic_load(&current);
    if (r == NULL || run_id != r->id || seq < 0 || seq >= r->n)
        return;
    if (w->n_pending == w->cap_pending) {
        size_t cap = w->cap_pending ? w->cap_pending * 2 : 256;
        long *p = cap <= PENDING_MAX ? realloc(w->pending, cap * sizeof *p) : NULL;
        if (p == NULL) {
            w->overflow = 1;        /* consumers_stop says so and the bench fails */
            return;
        }
        w->pending = p;
        w->cap_pending = cap;
    }
    w->pending[w->n_pending++] = seq;
}

/* Trace (FERRY_BENCH_TRACE=1): hop of item seq of the current run was
 * handed to a handler at t_in and the handler returned at t_out; its
 * commit is stamped when the poll returns. A redelivered message keeps
 * its first times. */
static void trace_hop(worker *w, long seq, int hop, int64_t t_in, int64_t t_out)
{
    run *r = atomic_load(&current);
    if (!bench_trace || r == NULL || r->hop_in_us == NULL || seq < 0 || seq >= r->n ||
        hop < 0 || hop >= HOPS || atomic_load_explicit(&r->hop_in_us[seq][hop],
                                                       memory_order_relaxed) != 0)
        return;
    if (w->n_tpending == w->cap_tpending) {
        size_t cap = w->cap_tpending ? w->cap_tpending * 2 : 256;
        _Atomic int64_t **p = cap <= PENDING_MAX ? realloc(w->tpending, cap * sizeof *p)
                                                 : NULL;
        if (p == NULL)
            return;                 /* a trace only: this hop goes untimed */
        w->tpending = p;
        w->cap_tpending = cap;
    }
    atomic_store_explicit(&r->hop_in_us[seq][hop], t_in, memory_order_relaxed);
    atomic_store_explicit(&r->hop_out_us[seq][hop], t_out, memory_order_relaxed);
    w->tpending[w->n_tpending++] = &r->hop_done_us[seq][hop];
}

static void stamp(worker *w)
{
    run *r = atomic_load(&current);
    int64_t t = clk_mono_us();
    for (size_t i = 0; r != NULL && i < w->n_tpending; i++)
        if (atomic_load_explicit(w->tpending[i], memory_order_relaxed) == 0)
            atomic_store_explicit(w->tpending[i], t, memory_order_relaxed);
    w->n_tpending = 0;
    for (size_t i = 0; r != NULL && i < w->n_pending; i++)
        if (r->done_us[w->pending[i]] == 0) {
            r->done_us[w->pending[i]] = t;
            atomic_fetch_add_explicit(&r->done, 1, memory_order_release);
        }
    w->n_pending = 0;
}

static ferry_code orchestrate(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    worker *w = arg;
    int64_t t_in = bench_trace ? clk_mono_us() : 0;
    ferry_code rc = ferry_saga_reply_handler(conn, m, bench_reg, err);
    const char *id = ferry_message_header(m, "saga_id");
    if (rc != FERRY_OK || id == NULL)
        return rc;
    if (bench_trace) {
        const json_t *st = json_object_get(m->payload, "step");
        const char *k = json_string_value(json_object_get(m->payload, "kind"));
        run *r = atomic_load(&current);
        ferry_uuid u;
        if (r != NULL && json_is_integer(st) && k != NULL && strcmp(k, "action") == 0 &&
            ferry_uuid_parse(id, &u) == FERRY_OK)
            trace_hop(w, id_get(r, &u), 2 * (int)json_integer_value(st) + 1, t_in,
                      clk_mono_us());
    }
    /* Only the reply that completes the saga (the last step's action, the
     * pivot's, succeeded: after the pivot a saga only goes forward) is
     * noted, by the saga's id as its start recorded it: no look-up in the
     * orchestrator's transaction, which a real orchestrator does not make
     * and the hop baseline does not pay (it was one more round trip per
     * saga on the busiest consumer). The database still has the last
     * word: main() checks that every saga is completed there. */
    const json_t *step = json_object_get(m->payload, "step");
    const char *kind = json_string_value(json_object_get(m->payload, "kind"));
    if (!json_is_integer(step) || json_integer_value(step) != LAST_STEP || kind == NULL ||
        strcmp(kind, "action") != 0 || !json_is_true(json_object_get(m->payload, "succeeded")))
        return FERRY_OK;
    ferry_uuid u;
    run *r = atomic_load(&current);
    long seq;
    if (r != NULL && ferry_uuid_parse(id, &u) == FERRY_OK && (seq = id_get(r, &u)) >= 0)
        note(w, r->id, seq);
    return FERRY_OK;
}

/* The participants' callbacks: the step itself costs nothing here. */
static ferry_code nothing(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    return FERRY_OK;
}

static ferry_participant parts[C_COUNT] = {
    [C_PAYMENT] = {.name = "payment", .action = nothing, .compensation = nothing},
    [C_INVENTORY] = {.name = "inventory", .action = nothing, .compensation = nothing},
    [C_SHIPPING] = {.name = "shipping", .action = nothing},
};

static ferry_code participate(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    worker *w = arg;
    int64_t t_in = bench_trace ? clk_mono_us() : 0;
    ferry_code rc = ferry_participant_handle(conn, m, &parts[w->which], NULL, err);
    const char *id = ferry_message_header(m, "saga_id"),
               *st = ferry_message_header(m, "saga_step"),
               *k = ferry_message_header(m, "saga_kind");
    run *r = atomic_load(&current);
    ferry_uuid u;
    if (bench_trace && rc == FERRY_OK && r != NULL && id != NULL && st != NULL && k != NULL &&
        strcmp(k, "action") == 0 && ferry_uuid_parse(id, &u) == FERRY_OK)
        trace_hop(w, id_get(r, &u), 2 * atoi(st), t_in, clk_mono_us());
    return rc;
}

/* The baseline's consumer: the message is applied (the inbox claims it in
 * this transaction); the handler notes it. */
static ferry_code hop(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    long run_id = (long)json_integer_value(json_object_get(m->payload, "run")),
         seq = (long)json_integer_value(json_object_get(m->payload, "seq"));
    run *r = atomic_load(&current);
    if (bench_trace && r != NULL && r->id == run_id) {
        int64_t t = clk_mono_us();
        trace_hop(arg, seq, 0, t, t);
    }
    note(arg, run_id, seq);
    return FERRY_OK;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    while (!atomic_load(&stop_flag)) {
        w->rc = ferry_consumer_poll(w->c, POLL_MS, &w->err);
        if (w->rc != FERRY_OK) {
            atomic_store(&failed, 1);
            break;
        }
        stamp(w);
        if (!atomic_load(&w->assigned)) {
            ferry_consumer_stats s;
            ferry_consumer_stats_get(w->c, &s);
            if (s.assigned > 0)
                atomic_store(&w->assigned, 1);
        }
    }
    return NULL;
}

/*
 * The observer (FERRY_BENCH_TRACE=1): a plain librdkafka consumer of the
 * hop topic in a group of its own, so that a hop's transport splits into
 * the relay's part (the emitting COMMIT -> the message's CreateTime, set
 * by the relay's producer at produce time, in whole ms: +0.5 ms taken
 * for the truncation) and the rest (broker and consumer fetch, then the
 * consumer's claims up to the handler).
 */
static rd_kafka_t *observer;
static pthread_t observer_thread;
static int64_t real_minus_mono_us;  /* CLOCK_REALTIME - clk_mono_us(), at start */

static void *observer_main(void *arg)
{
    while (!atomic_load(&stop_flag)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(observer, POLL_MS);
        if (m == NULL)
            continue;
        int64_t now = clk_mono_us();
        rd_kafka_timestamp_type_t tt;
        int64_t ts = rd_kafka_message_timestamp(m, &tt);
        run *r = atomic_load(&current);
        json_t *doc = m->err == RD_KAFKA_RESP_ERR_NO_ERROR
                          ? json_loadb(m->payload, m->len, 0, NULL) : NULL;
        long run_id = (long)json_integer_value(json_object_get(doc, "run")),
             seq = (long)json_integer_value(json_object_get(doc, "seq"));
        if (r != NULL && r->produced_us != NULL && doc != NULL && run_id == r->id && seq >= 0 &&
            seq < r->n && tt == RD_KAFKA_TIMESTAMP_CREATE_TIME) {
            atomic_store(&r->produced_us[seq], ts * 1000 + 500 - real_minus_mono_us);
            atomic_store(&r->observed_us[seq], now);
        }
        json_decref(doc);
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static int observer_start(const char *bootstrap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    real_minus_mono_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - clk_mono_us();
    static const char *const props[] = {"enable.auto.commit", "false",
                                        "auto.offset.reset", "latest",
                                        "fetch.wait.max.ms", "1",
                                        NULL};
    if ((observer = bench_consumer_new(bootstrap, "bench-observer", props)) == NULL)
        return -1;
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, HOP_TOPIC, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(observer, t);
    rd_kafka_topic_partition_list_destroy(t);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR ||
        pthread_create(&observer_thread, NULL, observer_main, NULL) != 0) {
        fprintf(stderr, "bench: observer: could not start\n");
        rd_kafka_destroy(observer);
        observer = NULL;
        return -1;
    }
    return 0;
}

/* After consumers_stop (which raises stop_flag). */
static void observer_stop(void)
{
    if (observer == NULL)
        return;
    pthread_join(observer_thread, NULL);
    rd_kafka_consumer_close(observer);
    rd_kafka_destroy(observer);
    observer = NULL;
}

/* ---------------------------------------------------------------- runs */

typedef struct bench {
    fpg *pg;
    PGconn *conn;
    kt_broker *kb;
    pid_t relay_pid;
    worker w[C_COUNT * CONSUMERS_MAX];
    int n_workers;                  /* C_COUNT * consumers per role */
    long next_run_id;
} bench;

static int run_init(run *r, bench *b, long n)
{
    memset(r, 0, sizeof *r);
    r->id = ++b->next_run_id;
    r->n = n;
    r->start_us = calloc((size_t)n, sizeof *r->start_us);
    r->done_us = calloc((size_t)n, sizeof *r->done_us);
    size_t cap = 16;
    while (cap < 2 * (size_t)n)
        cap *= 2;
    r->ids = calloc(cap, sizeof *r->ids);
    r->ids_mask = cap - 1;
    atomic_init(&r->done, 0);
    if (bench_trace) {
        r->committed_us = calloc((size_t)n, sizeof *r->committed_us);
        r->hop_in_us = calloc((size_t)n, sizeof *r->hop_in_us);
        r->hop_out_us = calloc((size_t)n, sizeof *r->hop_out_us);
        r->hop_done_us = calloc((size_t)n, sizeof *r->hop_done_us);
        r->produced_us = calloc((size_t)n, sizeof *r->produced_us);
        r->observed_us = calloc((size_t)n, sizeof *r->observed_us);
    }
    if (r->start_us == NULL || r->done_us == NULL || r->ids == NULL ||
        (bench_trace && (r->committed_us == NULL || r->hop_in_us == NULL ||
                         r->hop_out_us == NULL || r->hop_done_us == NULL ||
                         r->produced_us == NULL || r->observed_us == NULL))) {
        fprintf(stderr, "bench: out of memory\n");
        return -1;
    }
    atomic_store(&current, r);
    return 0;
}

static void run_free(run *r)
{
    atomic_store(&current, NULL);
    free(r->start_us);
    free(r->done_us);
    free(r->ids);
    free(r->committed_us);
    free(r->hop_in_us);
    free(r->hop_out_us);
    free(r->hop_done_us);
    free((void *)r->produced_us);
    free((void *)r->observed_us);
    r->produced_us = r->observed_us = NULL;
    r->start_us = r->done_us = r->committed_us = NULL;
    r->ids = NULL;
    r->hop_in_us = r->hop_out_us = r->hop_done_us = NULL;
}

/* Item seq of run r: a saga started, or (hop) a message emitted, in a
 * transaction of its own. */
static int start_one(PGconn *conn, run *r, long seq, int is_hop)
{
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\": \"o-%ld-%ld\", \"total\": 42, \"run\": %ld, "
                                "\"seq\": %ld}", r->id, seq, r->id, seq);
    r->start_us[seq] = clk_mono_us();
    if (bench_exec(conn, "BEGIN") != 0)
        return -1;
    ferry_error err;
    ferry_code rc;
    if (is_hop) {
        char key[32];
        snprintf(key, sizeof key, "k-%ld", seq % 64);
        ferry_msg m = {.topic = HOP_TOPIC, .key = key, .key_len = strlen(key),
                       .type = "Hop", .payload = body, .payload_len = strlen(body)};
        rc = ferry_emit(conn, &m, NULL, NULL, &err);
    } else {
        ferry_uuid id;
        rc = ferry_saga_start(conn, bench_reg, "order", body, &id, &err);
        if (rc == FERRY_OK)
            id_put(r, &id, seq);    /* before the COMMIT: before any reply */
    }
    if (rc != FERRY_OK) {
        fprintf(stderr, "bench: %s: %s: %s\n", is_hop ? "ferry_emit" : "ferry_saga_start",
                ferry_code_name(rc), err.message);
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    if (bench_exec(conn, "COMMIT") != 0)
        return -1;
    if (r->committed_us != NULL)
        r->committed_us[seq] = clk_mono_us();
    return 0;
}

/* Wait until every item of r is done; fail after STALL_TIMEOUT_MS without
 * progress or when a consumer failed. */
static int await_all(run *r)
{
    long seen = -1;
    int64_t progress = clk_mono_us();
    for (;;) {
        long done = atomic_load_explicit(&r->done, memory_order_acquire);
        if (done == r->n)
            return 0;
        if (atomic_load(&failed))
            return -1;
        int64_t t = clk_mono_us();
        if (done != seen) {
            seen = done;
            progress = t;
        } else if (t - progress > (int64_t)STALL_TIMEOUT_MS * 1000) {
            fprintf(stderr, "bench: run %ld: %ld of %ld done, none for %d ms\n", r->id, done,
                    r->n, STALL_TIMEOUT_MS);
            return -1;
        }
        /* Not synchronisation: how often we look at a counter. */
        sleep_until_us(t + 1000);
    }
}

/* FERRY_BENCH_STATEMENTS=1: what the server counted, for the per-saga
 * figures of a burst. Statistics reach the views up to a second after a
 * backend's transaction (PostgreSQL 15), so a snapshot waits that long
 * first; a profile, not a figure. */
typedef struct server_counts {
    double commits, rollbacks, wal_syncs, wal_records, wal_bytes, statements;
} server_counts;

static int server_counts_get(PGconn *conn, server_counts *c)
{
    sleep_until_us(clk_mono_us() + 1200 * 1000);
    PGresult *res = bench_query(
        conn, "server counters",
        "SELECT d.xact_commit, d.xact_rollback, w.wal_sync, w.wal_records, w.wal_bytes, "
        "(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE toplevel) "
        "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
        0, NULL);
    if (res == NULL)
        return -1;
    double *f[6] = {&c->commits, &c->rollbacks, &c->wal_syncs, &c->wal_records, &c->wal_bytes,
                    &c->statements};
    for (int i = 0; i < 6; i++)
        *f[i] = PQntuples(res) == 1 ? strtod(PQgetvalue(res, 0, i), NULL) : 0;
    PQclear(res);
    return 0;
}

static int bench_statements;       /* FERRY_BENCH_STATEMENTS=1 */

/* Burst: n sagas back to back. *rate gets n / (first BEGIN -> last done). */
/* One starting connection of a burst: items k, k + step, ... of r. */
typedef struct starter {
    bench *b;
    run *r;
    PGconn *conn;
    long k, step;
    int rc;
    pthread_t thread;
} starter;

static void *starter_main(void *arg)
{
    starter *st = arg;
    st->rc = 0;
    for (long i = st->k; i < st->r->n && st->rc == 0; i += st->step)
        st->rc = start_one(st->conn, st->r, i, 0);
    return NULL;
}

/* Burst: n sagas back to back, from starters connections at once (1 by
 * default: FERRY_BENCH_STARTERS). *rate gets n / (first BEGIN -> last
 * done). */
static int run_burst(bench *b, long n, long starters, double *rate)
{
    server_counts before = {0}, after = {0};
    if (bench_statements && server_counts_get(b->conn, &before) != 0)
        return -1;
    run r;
    if (run_init(&r, b, n) != 0)
        return -1;
    int rc = -1;
    starter st[STARTERS_MAX];
    long made = 0;
    int64_t t0 = clk_mono_us();
    if (starters <= 1) {
        for (long i = 0; i < n; i++)
            if (start_one(b->conn, &r, i, 0) != 0)
                goto out;
    } else {
        for (; made < starters; made++) {
            st[made] = (starter){.b = b, .r = &r, .k = made, .step = starters};
            if ((st[made].conn = fpg_connect(b->pg)) == NULL)
                break;
        }
        int started = 0;
        for (long k = 0; made == starters && k < starters; k++, started++)
            if (pthread_create(&st[k].thread, NULL, starter_main, &st[k]) != 0)
                break;
        int failed_start = started < starters;
        for (int k = 0; k < started; k++) {
            pthread_join(st[k].thread, NULL);
            failed_start |= st[k].rc != 0;
        }
        if (failed_start)
            goto out;
    }
    /* Whether the starting connections, not the pipeline, set the pace. */
    fprintf(stderr, "bench: burst of %ld started in %.0f ms (%ld connection%s)\n", n,
            (double)(clk_mono_us() - t0) / 1e3, starters, starters > 1 ? "s" : "");
    if (await_all(&r) != 0)
        goto out;
    int64_t first = r.start_us[0], last = 0;
    for (long i = 0; i < n; i++) {
        if (r.done_us[i] > last)
            last = r.done_us[i];
        if (r.start_us[i] < first)
            first = r.start_us[i];
    }
    *rate = (double)n / ((double)(last - first) / 1e6);
    if (bench_statements && server_counts_get(b->conn, &after) == 0 && n >= 100)
        fprintf(stderr, "bench: burst per saga (server, everything running): %.2f commits, "
                        "%.2f rollbacks, %.2f WAL syncs, %.1f WAL records, %.0f WAL bytes, "
                        "%.1f top-level statements\n",
                (after.commits - before.commits) / (double)n,
                (after.rollbacks - before.rollbacks) / (double)n,
                (after.wal_syncs - before.wal_syncs) / (double)n,
                (after.wal_records - before.wal_records) / (double)n,
                (after.wal_bytes - before.wal_bytes) / (double)n,
                (after.statements - before.statements) / (double)n);
    rc = 0;
out:
    for (long k = 0; k < made; k++)
        PQfinish(st[k].conn);
    run_free(&r);
    return rc;
}

static double percentile(const double *sorted, long n, double p)
{
    long i = (long)(p * (double)(n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* The median of v[0..n) in ms (v in us; sorts v); 0 when n is 0. */
static double median_ms(double *v, long n)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return percentile(v, n, 0.50) / 1e3;
}

/*
 * FERRY_BENCH_TRACE=1: where the time of a steady run went, on stderr, as
 * medians over its items: the starting transaction (BEGIN .. COMMIT
 * returned), and per hop the transport (the previous commit -- the
 * start's or the last hop's consumer's -- to the handler being called:
 * NOTIFY, relay fetch and produce, broker, consumer fetch, the batch's
 * claims), the handler itself, and the rest up to the consumer's poll
 * returning (the batch's other handlers and its COMMIT). Saga hops are
 * split into the participants' (commands) and the orchestrator's
 * (replies).
 */
static void trace_print(const run *r, int is_hop, int round)
{
    long n = r->n, hops = is_hop ? 1 : HOPS;
    double *v[7];
    long nv[7] = {0};
    for (int i = 0; i < 7; i++)
        if ((v[i] = malloc((size_t)(n * hops + 1) * sizeof *v[i])) == NULL) {
            for (int j = 0; j < i; j++)
                free(v[j]);
            return;
        }
    /* 0 start tx; 1/2 transport to participants/orchestrator; 3/4 handler;
     * 5/6 handler return -> committed. */
    for (long i = 0; i < n; i++) {
        v[0][nv[0]++] = (double)(r->committed_us[i] - r->start_us[i]);
        int64_t prev = r->committed_us[i];
        for (long k = 0; k < hops; k++) {
            int64_t in = atomic_load(&r->hop_in_us[i][k]), out = atomic_load(&r->hop_out_us[i][k]),
                    done = atomic_load(&r->hop_done_us[i][k]);
            if (in == 0 || done == 0 || prev == 0)
                break;
            int o = (int)(k % 2);
            v[1 + o][nv[1 + o]++] = (double)(in - prev);
            v[3 + o][nv[3 + o]++] = (double)(out - in);
            v[5 + o][nv[5 + o]++] = (double)(done - out);
            prev = done;
        }
    }
    double m[7];
    for (int i = 0; i < 7; i++)
        m[i] = median_ms(v[i], nv[i]);
    /* The hop's transport split at the relay's produce and the observer's
     * receipt; v[0..2] reused. */
    long no = 0;
    for (long i = 0; is_hop && i < n; i++) {
        int64_t p = atomic_load(&r->produced_us[i]), o = atomic_load(&r->observed_us[i]),
                in = atomic_load(&r->hop_in_us[i][0]);
        if (p == 0 || o == 0 || in == 0 || r->committed_us[i] == 0)
            continue;
        v[0][no] = (double)(p - r->committed_us[i]);
        v[1][no] = (double)(o - p);
        v[2][no] = (double)(in - o);
        no++;
    }
    if (is_hop)
        fprintf(stderr, "bench: trace round %d hop: start tx %.2f ms; transport %.2f, handler "
                        "%.2f, to commit %.2f (p50s over %ld); transport split (p50s over %ld): "
                        "commit -> produced %.2f, produced -> observed %.2f, observed -> "
                        "handler %.2f\n", round, m[0], m[1], m[3], m[5], nv[1], no,
                median_ms(v[0], no), median_ms(v[1], no), median_ms(v[2], no));
    else
        fprintf(stderr, "bench: trace round %d saga: start tx %.2f ms; per command hop: "
                        "transport %.2f, handler %.2f, to commit %.2f; per reply hop: "
                        "transport %.2f, handler %.2f, to commit %.2f (p50s over %ld+%ld)\n",
                round, m[0], m[1], m[3], m[5], m[2], m[4], m[6], nv[1], nv[2]);
    for (int i = 0; i < 7; i++)
        free(v[i]);
}

/* Steady: rate per second for seconds; p50/p99/max latency in ms. */
static int run_steady(bench *b, int is_hop, double rate, long seconds, int round,
                      double out[3])
{
    long n = (long)(rate * (double)seconds);
    if (n < 10)
        n = 10;
    run r;
    if (run_init(&r, b, n) != 0)
        return -1;
    int rc = -1;
    double *lat = NULL;
    int64_t t0 = clk_mono_us(), step = (int64_t)(1e6 / rate);
    for (long i = 0; i < n; i++) {
        sleep_until_us(t0 + i * step);      /* pacing, not synchronisation */
        if (start_one(b->conn, &r, i, is_hop) != 0)
            goto out;
    }
    if (await_all(&r) != 0)
        goto out;
    if ((lat = malloc((size_t)n * sizeof *lat)) == NULL)
        goto out;
    for (long i = 0; i < n; i++)
        lat[i] = (double)(r.done_us[i] - r.start_us[i]) / 1e3;
    qsort(lat, (size_t)n, sizeof *lat, bench_cmp_double);
    out[0] = percentile(lat, n, 0.50);
    out[1] = percentile(lat, n, 0.99);
    out[2] = lat[n - 1];
    if (bench_trace)
        trace_print(&r, is_hop, round);
    rc = 0;
out:
    free(lat);
    run_free(&r);
    return rc;
}

/* ---------------------------------------------------------------- setup */

static int relay_start(bench *b, const char *bin)
{
    const char *argv[] = {bin, "run", "--db", fpg_conninfo(b->pg), "--kafka",
                          kt_bootstrap(b->kb), "--holder", "bench-saga", "--set",
                          "log_level=warn", NULL};
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent || devnull < 0 ||
            dup2(devnull, STDOUT_FILENO) < 0)
            _exit(127);
        /* FERRY_BENCH_RELAY_PGOPTIONS: libpq's PGOPTIONS for the relay
         * alone (e.g. "-c plan_cache_mode=force_generic_plan"), to measure
         * a server setting of the relay's sessions against the same run's
         * defaults; an experiment, not a figure. */
        const char *relay_opts = getenv("FERRY_BENCH_RELAY_PGOPTIONS");
        if (relay_opts != NULL && setenv("PGOPTIONS", relay_opts, 1) != 0)
            _exit(127);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    b->relay_pid = pid;
    return 0;
}

static int consumers_start(bench *b)
{
    static const char *const props[] = {
        "session.timeout.ms=6000", "heartbeat.interval.ms=500", "max.poll.interval.ms=20000",
        /* The mock holds an empty fetch for the whole wait even when data
         * arrives meanwhile: the default 500 ms would measure the mock. */
        "fetch.wait.max.ms=1", NULL,
    };
    for (int k = 0; k < b->n_workers; k++) {
        worker *w = &b->w[k];
        int i = k % C_COUNT;
        w->which = i;
        atomic_init(&w->assigned, 0);
        const char *topics[1] = {topic_of[i]};
        ferry_consumer_conf conf = {
            .name = name_of[i],
            .db = fpg_conninfo(b->pg),
            .kafka = kt_bootstrap(b->kb),
            .topics = topics,
            .topic_count = 1,
            .kafka_props = props,
            .handler = i == C_ORCH ? orchestrate : i == C_HOP ? hop : participate,
            .handler_arg = w,
            .batch_max = (int)bench_batch_max,
        };
        ferry_error err;
        ferry_code rc = ferry_consumer_new(&conf, &w->c, &err);
        if (rc != FERRY_OK) {
            fprintf(stderr, "bench: consumer %s: %s: %s\n", name_of[i], ferry_code_name(rc),
                    err.message);
            return -1;
        }
    }
    for (int k = 0; k < b->n_workers; k++)
        if (pthread_create(&b->w[k].thread, NULL, worker_main, &b->w[k]) != 0) {
            fprintf(stderr, "bench: pthread_create failed\n");
            return -1;
        } else {
            b->w[k].started = 1;
        }
    /* Every consumer in its group before anything is timed: with more
     * than one per group, a late joiner's rebalance would stall a run. */
    int64_t t0 = clk_mono_us();
    for (int k = 0; k < b->n_workers; k++)
        while (!atomic_load(&b->w[k].assigned)) {
            if (atomic_load(&failed) || clk_mono_us() - t0 > (int64_t)STALL_TIMEOUT_MS * 1000) {
                fprintf(stderr, "bench: consumer %s got no partitions\n",
                        name_of[b->w[k].which]);
                return -1;
            }
            sleep_until_us(clk_mono_us() + 1000);   /* looking at a flag, not a wait */
        }
    return 0;
}

/* Stop the threads, check what the consumers counted, destroy them. */
static int consumers_stop(bench *b)
{
    atomic_store(&stop_flag, 1);
    int rc = 0;
    for (int k = 0; k < b->n_workers; k++) {
        worker *w = &b->w[k];
        int i = w->which;
        if (w->c == NULL)
            continue;
        if (w->started)
            pthread_join(w->thread, NULL);
        if (w->rc != FERRY_OK) {
            fprintf(stderr, "bench: consumer %s: %s: %s\n", name_of[i], ferry_code_name(w->rc),
                    w->err.message);
            rc = -1;
        }
        ferry_consumer_stats s;
        ferry_consumer_stats_get(w->c, &s);
        w->stats = s;
        if (s.dead_lettered != 0 || s.handler_failures != 0 || w->overflow) {
            fprintf(stderr, "bench: consumer %s: %llu dead-lettered, %llu handler failures%s\n",
                    name_of[i], (unsigned long long)s.dead_lettered,
                    (unsigned long long)s.handler_failures,
                    w->overflow ? ", completions lost from sight (the bench's list is full)"
                                : "");
            rc = -1;
        }
        ferry_consumer_destroy(w->c);
        w->c = NULL;
        free(w->pending);
        w->pending = NULL;
        free(w->tpending);
        w->tpending = NULL;
    }
    return rc;
}

static int registry_setup(void)
{
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    if (ferry_saga_def_parse(saga_yaml, strlen(saga_yaml), "bench-order.yaml", &def, &errs) !=
        FERRY_OK) {
        fprintf(stderr, "bench: saga: %s: %s\n", errs.errors[0].field, errs.errors[0].message);
        return -1;
    }
    ferry_error err;
    if (ferry_saga_registry_new(NULL, &bench_reg, &err) != FERRY_OK ||
        ferry_saga_registry_add(bench_reg, def, &err) != FERRY_OK) {
        ferry_saga_def_destroy(def);
        fprintf(stderr, "bench: registry: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

/* The 30 statements that took the most server time, on stderr. */
static void print_statements(PGconn *conn)
{
    PGresult *q = PQexec(conn, "SELECT calls || '/' || plans, "
                               "round((total_exec_time + total_plan_time)::numeric, 1), "
                               "round(mean_exec_time::numeric, 3) || '/' || "
                               "round(mean_plan_time::numeric, 3), "
                               "left(regexp_replace(query, '\\s+', ' ', 'g'), 100) "
                               "FROM pg_stat_statements "
                               "ORDER BY total_exec_time + total_plan_time DESC LIMIT 30");
    if (PQresultStatus(q) != PGRES_TUPLES_OK)
        fprintf(stderr, "bench: pg_stat_statements: %s", PQerrorMessage(conn));
    else
        fprintf(stderr, "bench: statements by server time (wall, on a shared machine)\n"
                        "%13s %10s %12s %s\n", "calls/plans", "total ms", "exec/plan ms",
                "query");
    for (int i = 0; PQresultStatus(q) == PGRES_TUPLES_OK && i < PQntuples(q); i++)
        fprintf(stderr, "%13s %10s %12s %s\n", PQgetvalue(q, i, 0), PQgetvalue(q, i, 1),
                PQgetvalue(q, i, 2), PQgetvalue(q, i, 3));
    PQclear(q);
    /* Which tables were read whole, and how often: a sequential scan on a
     * path that runs per message shows here. */
    q = PQexec(conn, "SELECT relname, seq_scan, seq_tup_read, idx_scan, n_live_tup, n_dead_tup "
                     "FROM pg_stat_user_tables WHERE schemaname = 'ferry' AND seq_scan > 0 "
                     "ORDER BY seq_tup_read DESC LIMIT 12");
    if (PQresultStatus(q) == PGRES_TUPLES_OK)
        fprintf(stderr, "bench: tables read sequentially\n%-24s %10s %12s %10s %8s %8s\n",
                "table", "seq_scan", "seq_tup_read", "idx_scan", "live", "dead");
    for (int i = 0; PQresultStatus(q) == PGRES_TUPLES_OK && i < PQntuples(q); i++)
        fprintf(stderr, "%-24s %10s %12s %10s %8s %8s\n", PQgetvalue(q, i, 0),
                PQgetvalue(q, i, 1), PQgetvalue(q, i, 2), PQgetvalue(q, i, 3),
                PQgetvalue(q, i, 4), PQgetvalue(q, i, 5));
    PQclear(q);
}

typedef struct figures {
    int rounds;
    double rate[ROUNDS_MAX];
    double saga[3][ROUNDS_MAX];     /* p50, p99, max */
    double hop[3][ROUNDS_MAX];
} figures;

static void print_report(const figures *f, long sagas, long seconds, double steady,
                         long per_role, const char *server, const char *fsync_s,
                         const worker *w, int nw)
{
    int n = f->rounds;
    printf("ferry saga benchmark (libferry %s)\n", ferry_version());
    printf("server: PostgreSQL %s, fsync=%s (durable defaults); broker: ferry-relay devkafka "
           "(librdkafka's mock cluster);\none ferry-relay run; %ld consumer%s (one thread "
           "each) per role: orchestrator, payment, inventory, shipping, hop\n", server, fsync_s,
           per_role, per_role > 1 ? "s" : "");
    printf("saga: three steps (the last the pivot), participants that do nothing but "
           "ferry_participant_handle;\n  start = BEGIN; ferry_saga_start; COMMIT on one "
           "connection; done = the completing reply committed\n");
    printf("method: %d rounds of (burst of %ld sagas from %ld connection%s, %ld s at %.1f "
           "sagas/s, %ld s of hops\n  at %.1f msgs/s), the two steady runs swapped every "
           "round; medians over the rounds\n", n, sagas, bench_starters,
           bench_starters > 1 ? "s" : "", seconds, steady, seconds, steady * HOPS);
    bench_rounds_head(34, n);
    bench_rounds_row(34, "sagas completed per second", f->rate, n, 1);
    static const char *const pn[3] = {"p50", "p99", "max"};
    for (int p = 0; p < 3; p++) {
        char label[64];
        snprintf(label, sizeof label, "saga start -> completed %s ms", pn[p]);
        bench_rounds_row(34, label, f->saga[p], n, 1);
    }
    for (int p = 0; p < 3; p++) {
        char label[64];
        snprintf(label, sizeof label, "hop emit -> applied %s ms", pn[p]);
        bench_rounds_row(34, label, f->hop[p], n, 1);
    }
    double s50 = bench_median(f->saga[0], n), h50 = bench_median(f->hop[0], n);
    printf("\na saga is %d hops (3 commands, 3 replies): saga p50 / hop p50 = %.2f "
           "(%.2f per hop)\n", HOPS, s50 / h50, s50 / h50 / HOPS);
    printf("check: every saga completed, every hop applied, nothing dead-lettered\n");
    printf("batches (batch_max %s): messages per transaction, by consumer:",
           bench_batch_max ? "from FERRY_BENCH_BATCH_MAX" : "the library's default");
    for (int k = 0; k < nw; k++) {
        const ferry_consumer_stats *st = &w[k].stats;
        uint64_t msgs = st->applied + st->duplicates + st->late;
        uint64_t tx = msgs > st->batch_messages ? msgs - st->batch_messages + st->batches
                                                : st->batches;
        printf(" %s %.1f", name_of[w[k].which], tx ? (double)msgs / (double)tx : 0.0);
    }
    printf("\n\n");
    printf("bench saga_completed_per_s %.1f sagas/s\n", bench_median(f->rate, n));
    printf("bench saga_latency_p50_ms %.1f ms\n", s50);
    printf("bench saga_latency_p99_ms %.1f ms\n", bench_median(f->saga[1], n));
    printf("bench saga_hop_latency_p50_ms %.1f ms\n", h50);
    printf("bench saga_hop_latency_p99_ms %.1f ms\n", bench_median(f->hop[1], n));
    printf("bench saga_vs_hop_p50_ratio %.2f ratio\n", s50 / h50);
}

int main(void)
{
    long sagas, seconds, rounds, per_role, starters;
    if (bench_env_long("FERRY_BENCH_SAGAS", DEFAULT_SAGAS, 10, SAGAS_MAX, &sagas) != 0 ||
        bench_env_long("FERRY_BENCH_CONSUMERS", 1, 1, CONSUMERS_MAX, &per_role) != 0 ||
        bench_env_long("FERRY_BENCH_SECONDS", DEFAULT_SECONDS, 1, SECONDS_MAX, &seconds) != 0 ||
        bench_env_long("FERRY_BENCH_ROUNDS", DEFAULT_ROUNDS, 1, ROUNDS_MAX, &rounds) != 0 ||
        bench_env_long("FERRY_BENCH_BATCH_MAX", 0, 0, 1000, &bench_batch_max) != 0 ||
        bench_env_long("FERRY_BENCH_STARTERS", 1, 1, STARTERS_MAX, &starters) != 0)
        return 1;
    bench_starters = starters;
    bench_trace = getenv("FERRY_BENCH_TRACE") != NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    ferry_log_level_set(FERRY_LOG_LEVEL_WARN);
    const char *relay_bin = bench_program("FERRY_RELAY_BIN", "build/rel/ferry-relay");
    if (relay_bin == NULL)      /* kt_start runs it too */
        return 1;

    int status = 1;
    static bench b;
    static figures f;
    f.rounds = (int)rounds;
    b.n_workers = C_COUNT * (int)per_role;
    double steady = 0;
    char server[64], fsync_s[16];
        /* FERRY_BENCH_STATEMENTS=1: where the server's time went, by statement
     * (pg_stat_statements, nested statements included), printed on
     * stderr at the end. A profile, not a figure: off by default. */
    static const char *const statements_conf[] = {
        "shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all",
        "pg_stat_statements.track_planning = on", NULL};
    int statements = bench_statements = getenv("FERRY_BENCH_STATEMENTS") != NULL;
    fpg_opts opts = {.conf = statements ? statements_conf : NULL, .fsync = 1};
    if ((b.pg = fpg_start(&opts)) == NULL || (b.conn = fpg_connect(b.pg)) == NULL)
        goto out;
    int version = 0;
    if (bench_migrate(b.conn, &version) != 0)
        goto out;
    if (statements && bench_exec(b.conn, "CREATE EXTENSION pg_stat_statements") != 0)
        goto out;
    if (bench_query_text(b.conn, "SHOW server_version", 0, NULL, server, sizeof server) != 0 ||
        bench_query_text(b.conn, "SHOW fsync", 0, NULL, fsync_s, sizeof fsync_s) != 0)
        goto out;
    if (registry_setup() != 0 || (b.kb = kt_start(1)) == NULL)
        goto out;
    for (int i = 0; i < C_COUNT; i++)
        if (kt_command(b.kb, "topic-create %s 4 1", topic_of[i]) != 0)
            goto out;
    if (relay_start(&b, relay_bin) != 0 || consumers_start(&b) != 0 ||
        (bench_trace && observer_start(kt_bootstrap(b.kb)) != 0))
        goto out;
    fprintf(stderr, "bench: PostgreSQL %s (fsync=%s), broker at %s\n", server, fsync_s,
            kt_bootstrap(b.kb));
    /* Warm-up, untimed: the consumers join their groups. */
    double warm = 0;
    if (run_burst(&b, 10, 1, &warm) != 0)
        goto out;

    for (int r = 0; r < f.rounds; r++) {
        if (run_burst(&b, sagas, starters, &f.rate[r]) != 0)
            goto out;
        fprintf(stderr, "bench: round %d/%d burst %8.1f sagas/s\n", r + 1, f.rounds, f.rate[r]);
        if (r == 0) {
            steady = f.rate[0] / 4;
            if (steady > STEADY_RATE_MAX)
                steady = STEADY_RATE_MAX;
            if (steady < 1)
                steady = 1;
        }
        for (int k = 0; k < 2; k++) {
            int is_hop = (r + k) % 2;
            double v[3];
            if (run_steady(&b, is_hop, is_hop ? steady * HOPS : steady, seconds, r + 1, v) != 0)
                goto out;
            for (int p = 0; p < 3; p++)
                (is_hop ? f.hop : f.saga)[p][r] = v[p];
            fprintf(stderr, "bench: round %d/%d %-4s p50 %.1f ms p99 %.1f ms max %.1f ms\n",
                    r + 1, f.rounds, is_hop ? "hop" : "saga", v[0], v[1], v[2]);
        }
    }
    long open = -1;
    char buf[32];
    if (bench_query_text(b.conn, "SELECT count(*) FROM ferry.saga WHERE state <> 'completed'",
                         0, NULL, buf, sizeof buf) != 0)
        goto out;
    open = strtol(buf, NULL, 10);
    if (open != 0) {
        fprintf(stderr, "bench: %ld sagas not completed\n", open);
        goto out;
    }
    status = 0;
    if (statements)
        print_statements(b.conn);

out:
    if (status != 0 && b.conn != NULL) {
        /* What the database says, beside what the consumers reported: a
         * saga the bench lost sight of is not one the library left. */
        PGresult *res = PQexec(b.conn, "SELECT state, count(*) FROM ferry.saga GROUP BY 1 "
                                       "ORDER BY 1");
        for (int i = 0; PQresultStatus(res) == PGRES_TUPLES_OK && i < PQntuples(res); i++)
            fprintf(stderr, "bench: sagas %s: %s\n", PQgetvalue(res, i, 0),
                    PQgetvalue(res, i, 1));
        PQclear(res);
    }
    if (consumers_stop(&b) != 0)
        status = 1;
    observer_stop();
    if (status == 0)
        print_report(&f, sagas, seconds, steady, per_role, server, fsync_s, b.w, b.n_workers);
    if (b.relay_pid > 0) {
        kill(b.relay_pid, SIGTERM);
        int st;
        while (waitpid(b.relay_pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bench: ferry-relay exited with status %d\n", st);
            status = 1;
        }
    }
    ferry_saga_registry_destroy(bench_reg);
    return bench_end(status, b.kb, b.conn, b.pg);
}
