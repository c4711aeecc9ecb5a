/*
 * bench_relay.c — what does ferry-relay cost, against the simplest thing
 * that could do its job?
 *
 * On a throwaway cluster with the server's durable defaults (fsync,
 * synchronous_commit, full_page_writes on) and a `ferry-relay devkafka`
 * broker (librdkafka's mock cluster), these figures, each beside a
 * baseline measured in the same run (targets are issue 11's):
 *
 *   throughput  N rows (FERRY_BENCH_ROWS, default 1,000,000; 1000 keys,
 *               ~100-byte payloads) preloaded into ferry.outbox through
 *               ferry.emit(), then copied into bench_copy: the same
 *               columns, indexes and physical order. Baseline: a plain
 *               loop that deletes bench_copy's ready rows 1000 a statement,
 *               in the relay's order (through the same partial index), FOR
 *               UPDATE SKIP LOCKED, RETURNING * — what a hand-written
 *               poller does with no Kafka at all. Relay: `ferry-relay run
 *               --once` draining ferry.outbox to the broker, wall time from
 *               fork to exit; then the relay must have exited 0, the outbox
 *               must be empty and exactly N messages must have been
 *               appended to the topic. Target: relay / raw >= 1.0.
 *   memory      the drain's peak RSS (wait4's ru_maxrss), beside the peak
 *               RSS of an idle relay on an empty outbox. Target: < 20 MiB.
 *   latency     on the outbox vacuumed after the drain, with a relay
 *               daemon running, one emitter thread commits one message per
 *               transaction on a warm pool of connections (each has run
 *               ferry.emit() once and rolled it back, as a running
 *               service's have), scheduled at 100 messages/s for 1.2 x
 *               FERRY_BENCH_SECONDS (default 10: 1,200 messages, enough for
 *               a p99), then at 2,000 messages/s for FERRY_BENCH_SECONDS, by
 *               absolute deadlines; a consumer assigned to the topic from
 *               its beginning records receipt time minus the time the
 *               payload carries. Baseline (the floor): a producer writing
 *               straight to the broker on the same schedule, with the
 *               relay's producer settings, right after each relay run.
 *               Target at both rates: p50 <= 3 ms, p99 <= 10 ms, read
 *               from COMMIT acknowledged (below: "Which figure").
 *   leaderless  a relay daemon, writers at 2,000 messages/s over 1,000 keys
 *               for 5 s; once with partition 0 of the topic without a
 *               leader (devkafka `leader T 0 -1`) from before the first
 *               write, once without. Figure: the healthy keys' (those on
 *               other partitions, by murmur2, checked against where the
 *               clean run's messages went) messages received per second,
 *               fault over no fault (target >= 0.9); missing ones count
 *               against it, waited for 1 s after the last send. Then the
 *               leader comes back and every message must arrive.
 *   scale-out   relay A holds every shard, writers at 1,000 messages/s;
 *               relay B starts; time until B holds ceil(shard_count / 2)
 *               live shard leases, both relays at lease_ttl_ms=3000 (target:
 *               a few lease periods; waited for 20 s).
 *   outage      a relay, writers trickling 50 messages/s, every devkafka
 *               broker down for 10 s, then up; time from their return to
 *               the first row acknowledged (deleted after its delivery
 *               report) of those waiting then (target < 1 s; waited for
 *               30 s), and to the consumer's first receipt.
 *
 * Every message of every run must arrive exactly once, each key's
 * ferry_seq positions one after the other; the consumers reconnect within
 * 0.1 s, so an outage times the relay, not them.
 *
 * A benchmark, not a test: timings never fail it, and a wait that runs
 * out is reported as its bound with a line on stderr. It exits 1 only when
 * something did not work — a relay that exits non-zero or logs an error
 * (except while a fault is injected), rows left behind, messages missing,
 * duplicated or out of key order. Progress goes to
 * stderr, results to stdout: a table, then one `bench <name> <value>
 * <unit>` line per figure.
 *
 * The emitter. A durable commit waits for a WAL flush, so one connection
 * cannot commit 2,000 transactions a second on most disks: the emitter
 * thread drives a pool of connections asynchronously, one transaction per
 * message, and their commits share WAL flushes as a busy service's do. The
 * time in each payload is taken just before BEGIN; SELECT ferry.emit(...);
 * COMMIT goes out in one round trip, so the figure includes the COMMIT
 * itself and is an upper bound of commit -> consumer receipt, itself an
 * upper bound of commit -> delivery report. The emitter also notes when
 * each COMMIT's reply came back, and the consumer each message's Kafka
 * CreateTime (when the relay called produce()), which splits the figure
 * into the COMMIT round trip, the relay's pickup, and the trip through the
 * broker. If every connection is busy when a message is due, it goes out
 * late; the schedule still ends on time, and the table says how many were
 * sent and how late.
 *
 * Which figure do the latency targets (issue 11: commit -> consumer
 * receipt, p50 <= 3 ms and p99 <= 10 ms at 100 and 2,000 messages/s,
 * within a few ms of the floor) apply to? The part after COMMIT's reply
 * ("after it", relay_after_commit_latency_*): a commit is acknowledged
 * when its reply comes, the relay cannot see a row before its transaction
 * has committed, and the floor likewise starts when the message exists
 * (its produce() call), not before. "total" (relay_latency_*) adds the
 * writer's own statement and COMMIT round trip, WAL flush included: work
 * the relay does not do, though it can slow it (a relay that kept writers
 * sending NOTIFYs would serialize their commits), which is why the COMMIT
 * round trip is printed as a figure of its own too.
 *
 * The disk. On shared virtual disks the cost of a flush moves by orders of
 * magnitude from one minute to the next, which moves every figure here; an
 * 8 kB write + fdatasync() is timed just before each measurement and
 * printed beside it.
 *
 * The broker. The consumers ask for an empty fetch to be answered after
 * 1 ms (fetch.wait.max.ms): librdkafka's mock cluster holds an empty fetch
 * for the whole wait even when data arrives meanwhile, so the default
 * 500 ms would measure the mock, not the relay. The mock also keeps only
 * the newest few MB of each partition, so the drain is counted by high
 * watermarks, not by reading it back.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
    DRAIN_KEYS = 1000,              /* the preloaded rows spread over this many keys */
    PRELOAD_TX_ROWS = 50000,        /* rows per preload transaction */
    PRELOAD_CONNS = 2,              /* preload transactions at a time */
    RAW_BATCH = 1000,               /* rows per DELETE of the baseline loop */
    RELAY_BATCH = 1000,             /* --set batch_size for the drain */
    LAT_RATE_LOW = 100,             /* messages per second, the first pair of latency runs */
    LAT_RATE_HIGH = 2000,           /* ... and the second; the unsuffixed names are this one's */
    LAT_LOW_MIN_MSGS = 1000,        /* messages at the low rate for a p99 worth printing */
    LAT_KEYS = 1000,
    EMIT_CONNS = 32,                /* the emitter thread's connection pool */
    IDLE_SETTLE_MS = 1500,          /* the idle relay runs this long holding its leases */
    LEASE_WAIT_MS = 20000,
    DRAIN_TIMEOUT_MS = 600000,
    STOP_TIMEOUT_MS = 30000,        /* a SIGTERM'd relay must be gone by then */
    ARRIVAL_TIMEOUT_MS = 30000,     /* the last latency message must arrive by then */
    LL_RATE = 2000,                 /* leaderless runs: messages/s over LAT_KEYS keys */
    LL_SECONDS = 5,                 /* ... for this long */
    LL_PARTITION = 0,               /* ... the partition left without a leader */
    LL_GRACE_MS = 1000,             /* ... healthy keys may arrive this long after the sends */
    LL_CLEAN_BOUND_MS = 60000,      /* ... without the fault, everything must arrive by then */
    LL_RECOVER_BOUND_MS = 60000,    /* ... and everything once the leader is back */
    SCALE_RATE = 1000,              /* scale-out: messages/s while relay B starts */
    SCALE_LEASE_TTL_MS = 3000,      /* ... both relays' lease_ttl_ms */
    SCALE_WARM_MS = 2000,           /* ... load before B starts */
    SCALE_BOUND_MS = 20000,         /* ... B's share is waited for this long */
    SCALE_TAIL_MS = 1000,           /* ... load after B got it */
    OUTAGE_RATE = 50,               /* outage: the trickle, messages/s */
    OUTAGE_WARM_MS = 2000,
    OUTAGE_MS = 10000,              /* ... every broker down this long */
    OUTAGE_BOUND_MS = 30000,        /* ... the first publish after is waited for this long */
    OUTAGE_TAIL_MS = 1000,
    OUTAGE_DRAIN_BOUND_MS = 60000,
    KAFKA_BROKERS = 1,              /* devkafka's brokers (kt_start) */
    LOG_LINES_SHOWN = 3,
    FSYNC_PROBES = 21,
};

static const char DRAIN_TOPIC[] = "bench.drain";
static const char LAT_TOPIC_FMT[] = "bench.latency.%d";     /* per rate */
static const char DIRECT_TOPIC_FMT[] = "bench.direct.%d";
enum { TOPIC_PARTITIONS = 4 };  /* what the mock gives auto-created topics; ours alike */
/* Pads a latency payload to about 100 bytes, like the drained ones. */
static const char PAD[] = "padding-to-one-hundred-bytes-xxxxxxxxxxxxxxxx";

static const char *g_relay_bin;
static char g_log_path[64];         /* the relays' stderr, one run at a time */
static int g_log_fd = -1;

/* ---------------------------------------------------------------- util */

/* Wall clock: compared across processes (emitter, relay, consumer). */
static int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_until_mono_us(int64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000), (long)(t % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* What a durable commit costs on this disk right now: the median of
 * FSYNC_PROBES 8 kB writes each followed by fdatasync(), in ms, or -1. On
 * shared virtual disks this moves by orders of magnitude from one minute
 * to the next, so it is measured before each figure and printed beside it. */
static double fsync_probe_ms(void)
{
    char path[] = "/tmp/ferry-bench-fsync-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    char buf[8192];
    memset(buf, 'x', sizeof buf);
    double v[FSYNC_PROBES];
    for (int i = 0; i < FSYNC_PROBES; i++) {
        int64_t t = clk_mono_us();
        if (pwrite(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf || fdatasync(fd) != 0) {
            close(fd);
            return -1;
        }
        v[i] = (double)(clk_mono_us() - t) / 1000.0;
    }
    close(fd);
    qsort(v, FSYNC_PROBES, sizeof v[0], bench_cmp_double);
    return v[FSYNC_PROBES / 2];
}

/* ---------------------------------------------------------------- relay processes */

typedef struct proc_result {
    int status;                 /* exit status, 128 + N for signal N, -1 if still running */
    double wall_s;              /* spawn to exit */
    double cpu_s;               /* user + system */
    long maxrss_kib;            /* wait4's ru_maxrss */
    long hwm_kib;               /* last VmHWM seen in /proc/PID/status while it ran */
} proc_result;

/* Start `FERRY_RELAY_BIN run ARGS...` with its stderr in the log file
 * (emptied first unless keep_log: a second relay beside a running one)
 * and its stdout on /dev/null. */
static pid_t spawn_relay_log(const char *const *args, int keep_log)
{
    const char *argv[40];
    int n = 0;
    argv[n++] = g_relay_bin;
    argv[n++] = "run";
    for (int i = 0; args[i] != NULL && n < 39; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    if (!keep_log && (ftruncate(g_log_fd, 0) != 0 || lseek(g_log_fd, 0, SEEK_SET) != 0)) {
        fprintf(stderr, "bench: cannot empty %s: %s\n", g_log_path, strerror(errno));
        return -1;
    }
    return bench_spawn(argv, -1, g_log_fd);
}

/* A long-running relay, as every run but the drain starts one: holder on
 * pg and bootstrap, logging warnings and errors, with one more setting
 * (set: NULL for none); *spawned is when it started (for stop_relay). Its
 * pid, or -1. */
static pid_t spawn_holder(fpg *pg, const char *bootstrap, const char *holder, const char *set,
                          int keep_log, int64_t *spawned)
{
    const char *args[] = {"--db", fpg_conninfo(pg), "--kafka", bootstrap, "--holder", holder,
                          "--set", "log_level=warn", set ? "--set" : NULL, set, NULL};
    *spawned = clk_mono_us();
    return spawn_relay_log(args, keep_log);
}

static long vm_hwm_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    fclose(f);
    return kib;
}

/* Wait up to timeout_ms for pid to exit (polling, 2 ms apart, so that the
 * wall time is exact to that), sampling its VmHWM every 100 ms. On timeout
 * out->status is -1 and the process is left running. */
static void wait_relay(pid_t pid, int64_t spawned_us, int timeout_ms, proc_result *out)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    out->hwm_kib = -1;
    int64_t deadline = spawned_us + (int64_t)timeout_ms * 1000, next_sample = 0;
    for (;;) {
        int64_t now = clk_mono_us();
        if (now >= next_sample) {
            long h = vm_hwm_kib(pid);
            if (h > 0)
                out->hwm_kib = h;
            next_sample = now + 100000;
        }
        int wstatus;
        struct rusage ru;
        pid_t r = wait4(pid, &wstatus, WNOHANG, &ru);
        if (r == pid) {
            out->wall_s = (double)(clk_mono_us() - spawned_us) / 1e6;
            out->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
            out->maxrss_kib = ru.ru_maxrss;
            out->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
            return;
        }
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "bench: wait4 %ld: %s\n", (long)pid, strerror(errno));
            return;
        }
        if (now >= deadline)
            return;
        clk_sleep_ms(2);
    }
}

/* SIGTERM, then wait for a clean stop; SIGKILL if it will not go. */
static void stop_relay(pid_t pid, int64_t spawned_us, proc_result *out)
{
    kill(pid, SIGTERM);
    int64_t waited_from = clk_mono_us();
    wait_relay(pid, waited_from, STOP_TIMEOUT_MS, out);
    if (out->status < 0) {
        fprintf(stderr, "bench: relay %ld ignored SIGTERM for %d ms; killing it\n", (long)pid,
                STOP_TIMEOUT_MS);
        kill(pid, SIGKILL);
        wait_relay(pid, clk_mono_us(), STOP_TIMEOUT_MS, out);
    }
    out->wall_s += (double)(waited_from - spawned_us) / 1e6;
}

/* Show the warnings and errors the last relay logged (a few, cut short);
 * returns how many were errors. */
static int relay_log_report(const char *what)
{
    struct stat st;
    if (fstat(g_log_fd, &st) != 0 || st.st_size == 0)
        return 0;
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (buf == NULL)
        return 0;
    ssize_t got = pread(g_log_fd, buf, size, 0);
    buf[got > 0 ? (size_t)got : 0] = '\0';
    int warns = 0, errors = 0, shown = 0;
    for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        int is_err = strstr(line, "\"level\":\"error\"") != NULL;
        int is_warn = strstr(line, "\"level\":\"warn\"") != NULL;
        errors += is_err;
        warns += is_warn;
        if ((is_err || is_warn) && shown++ < LOG_LINES_SHOWN)
            fprintf(stderr, "bench:   %s relay log: %.180s%s\n", what, line,
                    strlen(line) > 180 ? " ..." : "");
    }
    if (warns + errors > LOG_LINES_SHOWN)
        fprintf(stderr, "bench:   %s relay log: %d warnings and %d errors in all\n", what,
                warns, errors);
    free(buf);
    return errors;
}

/* How many live shard leases holder holds, into *n; 0 or -1. */
static int lease_count(PGconn *conn, const char *holder, long *n)
{
    long long v = -1;
    if (bench_query_ll(conn,
                       "SELECT count(*) FROM ferry.lease WHERE name LIKE 'shard:%' "
                       "AND holder = $1 AND expires_at > now()",
                       holder, &v) != 0)
        return -1;
    *n = (long)v;
    return 0;
}

/* Rows of topic still in ferry.outbox once they are gone or timeout_ms
 * passed (-1 if the count failed). */
static long long await_outbox_empty(PGconn *conn, const char *topic, int timeout_ms)
{
    long long left = -1;
    int64_t deadline = clk_mono_us() + (int64_t)timeout_ms * 1000;
    while (bench_query_ll(conn, "SELECT count(*) FROM ferry.outbox WHERE topic = $1", topic,
                          &left) == 0 &&
           left > 0 && clk_mono_us() < deadline)
        clk_sleep_ms(20);
    return left;
}

/* Wait until holder holds all the shard leases. */
static int await_leases(PGconn *conn, const char *holder, int shards)
{
    const char *params[1] = {holder};
    char buf[32] = "";
    int64_t deadline = clk_mono_us() + (int64_t)LEASE_WAIT_MS * 1000;
    while (clk_mono_us() < deadline) {
        if (bench_query_text(conn,
                       "SELECT count(*) FROM ferry.lease WHERE name LIKE 'shard:%' "
                       "AND holder = $1 AND expires_at > now()",
                       1, params, buf, sizeof buf) != 0)
            return -1;
        if (atoi(buf) >= shards)
            return 0;
        clk_sleep_ms(20);
    }
    fprintf(stderr, "bench: relay %s holds %s of %d shard leases after %d ms\n", holder, buf,
            shards, LEASE_WAIT_MS);
    return -1;
}

/* spawn_holder, then wait until the relay holds every shard's lease, as
 * each run that times a running relay begins. A relay that does not get
 * there is stopped and its log shown: -1 then. */
static pid_t start_holder(fpg *pg, PGconn *admin, const char *bootstrap, const char *holder,
                          const char *set, int shards, int64_t *spawned)
{
    pid_t pid = spawn_holder(pg, bootstrap, holder, set, 0, spawned);
    if (pid < 0)
        return -1;
    if (await_leases(admin, holder, shards) == 0)
        return pid;
    proc_result pr;
    stop_relay(pid, *spawned, &pr);
    relay_log_report(holder);
    return -1;
}

/* ---------------------------------------------------------------- Kafka */

/* Messages ever appended to topic: the sum of its partitions' high
 * watermarks (the topic is new, so its offsets start at 0). Not high - low:
 * the mock moves the low watermark past what it drops. */
static long long topic_appended(const char *bootstrap, const char *topic)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (bench_kconf_set(conf, "bootstrap.servers", bootstrap) != 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        fprintf(stderr, "bench: kafka client: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    long long total = -1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 && md->topics[0].err == 0) {
        total = 0;
        for (int p = 0; p < md->topics[0].partition_cnt && total >= 0; p++) {
            int64_t lo, hi;
            err = rd_kafka_query_watermark_offsets(rk, topic, md->topics[0].partitions[p].id,
                                                   &lo, &hi, 10000);
            (void)lo;
            total = err == RD_KAFKA_RESP_ERR_NO_ERROR ? total + hi : -1;
        }
    }
    if (total < 0)
        fprintf(stderr, "bench: could not count the messages of %s: %s\n", topic,
                rd_kafka_err2str(err != 0 ? err : md ? md->topics[0].err : err));
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return total;
}

/* A consumer thread that timestamps every latency message on receipt.
 * Payloads are {"n": N, "pad": ..., "t_us": T}; n = -1 is the probe that
 * primes the path before the measurement. */
typedef struct consumer {
    const char *bootstrap;
    const char *topic;
    long expected;              /* measured messages, numbered 0 .. expected-1 */
    int64_t *sent_us;           /* per message number: the time in its payload */
    int64_t *recv_us;           /* ... and when it arrived; 0 until then */
    int64_t *create_us;         /* ... and its Kafka timestamp (CreateTime: when the
                                   producer was handed it), in whole ms */
    int32_t *part;              /* ... and the partition it came from */
    long nkeys;                 /* keys "k-0" .. "k-(nkeys-1)" are order-checked */
    int64_t *last_seq;          /* per key: the last ferry_seq header seen, 0 = none */
    atomic_long received;
    atomic_long per_part[TOPIC_PARTITIONS];   /* measured messages per partition */
    atomic_int primed;          /* the probe arrived */
    atomic_int stop;
    long duplicates, strays;
    long order_errors;          /* a key's ferry_seq not one more than the last one seen */
    long errors_seen;           /* consumer errors (broker down, no leader): shown up to 3 */
    char error[512];
} consumer;

/* librdkafka's log lines of the consumers: during an injected fault they
 * come by the dozen (each also arrives as an error event, counted); show
 * the first few of the whole run. */
static atomic_int g_consumer_log_lines;

static void consumer_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    int n = atomic_fetch_add(&g_consumer_log_lines, 1);
    if (n < 3)
        fprintf(stderr, "bench: consumer log %d %s: %s\n", level, fac, buf);
    else if (n == 3)
        fprintf(stderr, "bench: consumer log: more lines not shown\n");
}

static void *consumer_main(void *arg)
{
    consumer *c = arg;
    char errstr[512], group[64];
    snprintf(group, sizeof group, "bench-%ld-%s", (long)getpid(), c->topic);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (bench_kconf_set(conf, "bootstrap.servers", c->bootstrap) ||
        bench_kconf_set(conf, "group.id", group) || bench_kconf_set(conf, "enable.auto.commit", "false") ||
        bench_kconf_set(conf, "enable.partition.eof", "false") ||
        bench_kconf_set(conf, "fetch.wait.max.ms", "1") ||
        /* Back after an outage as soon as the relay is: the default backoff
         * grows to 10 s, which would time the consumer, not the relay. */
        bench_kconf_set(conf, "reconnect.backoff.ms", "10") ||
        bench_kconf_set(conf, "reconnect.backoff.max.ms", "100")) {
        rd_kafka_conf_destroy(conf);
        snprintf(c->error, sizeof c->error, "consumer configuration refused");
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, consumer_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(c->error, sizeof c->error, "could not create the consumer: %.400s", errstr);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *parts =
        rd_kafka_topic_partition_list_new(TOPIC_PARTITIONS);
    for (int p = 0; p < TOPIC_PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(parts, c->topic, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(c->error, sizeof c->error, "assign: %s", rd_kafka_err2str(err));
        atomic_store(&c->stop, 1);
    }
    while (!atomic_load(&c->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 10);
        int64_t now = real_us();
        if (m == NULL)
            continue;
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            /* Expected while a fault is injected: show a few, count all. */
            if (c->errors_seen++ < 3)
                fprintf(stderr, "bench: consumer of %s: %s\n", c->topic,
                        rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        rd_kafka_timestamp_type_t tstype;
        int64_t created_ms = rd_kafka_message_timestamp(m, &tstype);
        int32_t partition = m->partition;
        /* The key's position: ferry_seq, present on the relay's messages. */
        long key = -1;
        int64_t seq = 0;
        if (m->key != NULL && m->key_len > 2 && m->key_len < 24 &&
            memcmp(m->key, "k-", 2) == 0) {
            char kbuf[24];
            memcpy(kbuf, m->key, m->key_len);
            kbuf[m->key_len] = '\0';
            char *end;
            key = strtol(kbuf + 2, &end, 10);
            if (*end != '\0' || key < 0 || key >= c->nkeys)
                key = -1;
        }
        rd_kafka_headers_t *hdrs = NULL;
        const void *hv = NULL;
        size_t hlen = 0;
        if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            rd_kafka_header_get_last(hdrs, "ferry_seq", &hv, &hlen) ==
                RD_KAFKA_RESP_ERR_NO_ERROR &&
            hv != NULL && hlen > 0 && hlen < 24) {
            char sbuf[24];
            memcpy(sbuf, hv, hlen);
            sbuf[hlen] = '\0';
            seq = strtoll(sbuf, NULL, 10);
        }
        char text[256];
        size_t len = m->len < sizeof text - 1 ? m->len : sizeof text - 1;
        memcpy(text, m->payload ? m->payload : "", m->payload ? len : 0);
        text[m->payload ? len : 0] = '\0';
        rd_kafka_message_destroy(m);
        const char *pn = strstr(text, "\"n\": "), *pt = strstr(text, "\"t_us\": ");
        if (pn == NULL || pt == NULL) {
            c->strays++;
            continue;
        }
        long n = strtol(pn + 5, NULL, 10);
        long long t = strtoll(pt + 8, NULL, 10);
        int dup = n >= 0 && n < c->expected && c->recv_us[n] != 0;
        /* Per-key order: a key's positions arrive one after the other,
         * none skipped, none repeated (a duplicate is counted as such). */
        if (key >= 0 && seq > 0 && !dup) {
            if (c->last_seq[key] != 0 && seq != c->last_seq[key] + 1) {
                if (c->order_errors++ < 3)
                    fprintf(stderr, "bench: consumer of %s: key k-%ld position %lld after %lld\n",
                            c->topic, key, (long long)seq, (long long)c->last_seq[key]);
            }
            c->last_seq[key] = seq;
        }
        if (n == -1) {
            atomic_store(&c->primed, 1);
        } else if (n < 0 || n >= c->expected) {
            c->strays++;
        } else if (dup) {
            c->duplicates++;
        } else {
            c->sent_us[n] = t;
            c->recv_us[n] = now;
            c->create_us[n] = tstype == RD_KAFKA_TIMESTAMP_CREATE_TIME ? created_ms * 1000 : 0;
            c->part[n] = partition;
            if (partition >= 0 && partition < TOPIC_PARTITIONS)
                atomic_fetch_add(&c->per_part[partition], 1);
            atomic_fetch_add(&c->received, 1);
        }
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return NULL;
}

static void consumer_free(consumer *c)
{
    free(c->sent_us);
    free(c->recv_us);
    free(c->create_us);
    free(c->part);
    free(c->last_seq);
    c->sent_us = c->recv_us = c->create_us = NULL;
    c->part = NULL;
    c->last_seq = NULL;
}

static int consumer_start(consumer *c, pthread_t *tid, const char *bootstrap,
                          const char *topic, long expected, long nkeys)
{
    memset(c, 0, sizeof *c);
    c->bootstrap = bootstrap;
    c->topic = topic;
    c->expected = expected;
    c->nkeys = nkeys;
    c->sent_us = calloc((size_t)expected, sizeof *c->sent_us);
    c->recv_us = calloc((size_t)expected, sizeof *c->recv_us);
    c->create_us = calloc((size_t)expected, sizeof *c->create_us);
    c->part = calloc((size_t)expected, sizeof *c->part);
    c->last_seq = calloc((size_t)nkeys, sizeof *c->last_seq);
    if (c->sent_us == NULL || c->recv_us == NULL || c->create_us == NULL || c->part == NULL ||
        c->last_seq == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        consumer_free(c);
        return -1;
    }
    if (pthread_create(tid, NULL, consumer_main, c) != 0) {
        fprintf(stderr, "bench: pthread_create failed\n");
        consumer_free(c);
        return -1;
    }
    return 0;
}

/* Wait (bounded) until flag is set or the consumer gave up. */
static int await_flag(consumer *c, atomic_int *flag, int timeout_ms, const char *what)
{
    int64_t deadline = clk_mono_us() + (int64_t)timeout_ms * 1000;
    while (!atomic_load(flag) && c->error[0] == '\0' && clk_mono_us() < deadline)
        clk_sleep_ms(5);
    if (atomic_load(flag))
        return 0;
    fprintf(stderr, "bench: %s: %s\n", what, c->error[0] ? c->error : "timed out");
    return -1;
}

/* Wait (bounded) until want messages arrived. */
static int await_all(consumer *c, long want, int timeout_ms)
{
    int64_t deadline = clk_mono_us() + (int64_t)timeout_ms * 1000;
    while (atomic_load(&c->received) < want && clk_mono_us() < deadline)
        clk_sleep_ms(5);
    return atomic_load(&c->received) >= want ? 0 : -1;
}

/* ---------------------------------------------------------------- latency */

/* A distribution of latencies, in ms. */
typedef struct dist {
    double p50, p90, p99, p999, max, mean;
} dist;

typedef struct lat_result {
    long scheduled, sent, received, duplicates, strays, order_errors;
    int rate;                   /* messages per second offered */
    dist total;                 /* the time in the payload -> receipt */
    dist commit;                /* relay only: that time -> COMMIT acknowledged */
    dist after;                 /* relay only: COMMIT acknowledged -> receipt */
    dist pickup;                /* relay only: COMMIT acknowledged -> produce() */
    dist produced;              /* produce() -> receipt (CreateTime, ms resolution) */
    double emit_max_lag_ms;     /* how far the sender fell behind its schedule */
    long late_sends;            /* sends more than 1 ms behind it */
    double seconds;             /* first send to last send */
} lat_result;

/* Sorts v. */
static dist dist_of(double *v, size_t n)
{
    dist d = {0, 0, 0, 0, 0, 0};
    if (n == 0)
        return d;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    qsort(v, n, sizeof *v, bench_cmp_double);
    d.p50 = bench_percentile(v, n, 50);
    d.p90 = bench_percentile(v, n, 90);
    d.p99 = bench_percentile(v, n, 99);
    d.p999 = bench_percentile(v, n, 99.9);
    d.max = v[n - 1];
    d.mean = sum / (double)n;
    return d;
}

/* Over every message received; with ack_us (per message: when its COMMIT
 * was acknowledged to the emitter), also the two parts. */
static int lat_summarize(const consumer *c, const int64_t *ack_us, lat_result *r)
{
    r->received = atomic_load(&c->received);
    r->duplicates = c->duplicates;
    r->strays = c->strays;
    r->order_errors = c->order_errors;
    size_t cap = (size_t)(r->received > 0 ? r->received : 1);
    double *tot = malloc(cap * sizeof *tot), *com = malloc(cap * sizeof *com),
           *aft = malloc(cap * sizeof *aft), *pick = malloc(cap * sizeof *pick),
           *prod = malloc(cap * sizeof *prod);
    int rc = -1;
    if (tot == NULL || com == NULL || aft == NULL || pick == NULL || prod == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        goto out;
    }
    size_t n = 0, np = 0;
    for (long i = 0; i < c->expected; i++) {
        if (c->recv_us[i] == 0)
            continue;
        tot[n] = (double)(c->recv_us[i] - c->sent_us[i]) / 1000.0;
        if (ack_us != NULL) {
            com[n] = (double)(ack_us[i] - c->sent_us[i]) / 1000.0;
            aft[n] = (double)(c->recv_us[i] - ack_us[i]) / 1000.0;
        }
        n++;
        if (c->create_us[i] != 0) {
            if (ack_us != NULL)
                pick[np] = (double)(c->create_us[i] - ack_us[i]) / 1000.0;
            prod[np++] = (double)(c->recv_us[i] - c->create_us[i]) / 1000.0;
        }
    }
    r->total = dist_of(tot, n);
    r->produced = dist_of(prod, np);
    if (ack_us != NULL) {
        r->commit = dist_of(com, n);
        r->after = dist_of(aft, n);
        r->pickup = dist_of(pick, np);
    }
    rc = 0;
out:
    free(tot);
    free(com);
    free(aft);
    free(pick);
    free(prod);
    return rc;
}

/* The emitter thread's pool: each connection carries at most one
 * transaction at a time. */
typedef struct emitter {
    PGconn *conns[EMIT_CONNS];
    int busy[EMIT_CONNS];
    long cur[EMIT_CONNS];       /* the message each busy connection carries */
    int nbusy;
    int failed;
    int64_t *ack_us;            /* per message: when its COMMIT was acknowledged */
    long total;
    const char *topic;
    int rate;                   /* messages per second emit_paced offers */
    atomic_int stop;            /* emit_paced ends early when set (another thread) */
} emitter;

/* Collect finished transactions, waiting up to timeout_us (-1: until one
 * finishes) for the first. */
static void emitter_collect(emitter *em, int64_t timeout_us)
{
    struct pollfd pfds[EMIT_CONNS];
    int idx[EMIT_CONNS], n = 0;
    for (int i = 0; i < EMIT_CONNS; i++)
        if (em->busy[i]) {
            pfds[n] = (struct pollfd){.fd = PQsocket(em->conns[i]), .events = POLLIN};
            idx[n++] = i;
        }
    if (n == 0) {
        if (timeout_us > 0)
            sleep_until_mono_us(clk_mono_us() + timeout_us);
        return;
    }
    struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
    if (ppoll(pfds, (nfds_t)n, timeout_us < 0 ? NULL : &ts, NULL) < 0 && errno != EINTR) {
        fprintf(stderr, "bench: ppoll: %s\n", strerror(errno));
        em->failed = 1;
        return;
    }
    for (int k = 0; k < n; k++) {
        if (pfds[k].revents == 0)
            continue;
        PGconn *conn = em->conns[idx[k]];
        if (!PQconsumeInput(conn)) {
            fprintf(stderr, "bench: emitter connection: %s", PQerrorMessage(conn));
            em->failed = 1;
            return;
        }
        while (!PQisBusy(conn)) {
            PGresult *res = PQgetResult(conn);
            if (res == NULL) {
                long msg = em->cur[idx[k]];
                if (msg >= 0 && msg < em->total)
                    em->ack_us[msg] = real_us();
                em->busy[idx[k]] = 0;
                em->nbusy--;
                break;
            }
            ExecStatusType st = PQresultStatus(res);
            if ((st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) ||
                strcmp(PQcmdStatus(res), "ROLLBACK") == 0) {
                fprintf(stderr, "bench: emit transaction failed: %s",
                        st == PGRES_COMMAND_OK ? "rolled back\n" : PQresultErrorMessage(res));
                em->failed = 1;
            }
            PQclear(res);
        }
    }
}

/* One message n in its own transaction, on a free connection of the pool:
 * BEGIN, emit, COMMIT in one round trip, t_us taken just before. */
static int emitter_send(emitter *em, long n)
{
    int i = 0;
    while (i < EMIT_CONNS && em->busy[i])
        i++;
    if (i == EMIT_CONNS)
        return 1;
    char sql[512];
    long long t = (long long)real_us();
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT ferry.emit('%s', 'k-%ld', 'BenchLatency', "
             "'{\"n\": %ld, \"pad\": \"%s\", \"t_us\": %lld}'); COMMIT",
             em->topic, n < 0 ? 0 : n % LAT_KEYS, n, PAD, t);
    if (!PQsendQuery(em->conns[i], sql)) {
        fprintf(stderr, "bench: emit: %s", PQerrorMessage(em->conns[i]));
        em->failed = 1;
        return -1;
    }
    em->busy[i] = 1;
    em->cur[i] = n;
    em->nbusy++;
    return 0;
}

/* Send messages 0 .. total-1 at em->rate per second, by absolute
 * deadlines: message i is due at t0 + i / rate. The schedule ends at
 * t0 + total / rate whatever happened: a sender that fell behind (all
 * its connections busy) sends fewer than total messages, and says so.
 * Setting em->stop ends it early. */
static int emit_paced(emitter *em, long total, lat_result *r)
{
    const double period_us = 1e6 / em->rate;
    int64_t t0 = clk_mono_us() + 1000, last = t0, end = t0 + (int64_t)((double)total * period_us);
    long i = 0;
    double max_lag = 0;
    while (i < total && !em->failed && !atomic_load(&em->stop)) {
        int64_t due = t0 + (int64_t)((double)i * period_us), now = clk_mono_us();
        if (now >= end)
            break;
        if (now < due) {
            emitter_collect(em, due - now);
            continue;
        }
        int rc = emitter_send(em, i);
        if (rc < 0)
            break;
        if (rc == 1) {          /* every connection busy: wait for one */
            emitter_collect(em, end - now);
            continue;
        }
        double lag = (double)(now - due) / 1000.0;
        max_lag = lag > max_lag ? lag : max_lag;
        r->late_sends += lag > 1.0;
        last = now;
        i++;
    }
    while (em->nbusy > 0 && !em->failed)
        emitter_collect(em, 1000000);
    r->scheduled = total;
    r->sent = i;
    r->emit_max_lag_ms = max_lag;
    r->seconds = (double)(last - t0) / 1e6;
    return em->failed ? -1 : 0;
}

static void consumer_stop(consumer *c, pthread_t tid)
{
    atomic_store(&c->stop, 1);
    pthread_join(tid, NULL);
}

/* An emitter of messages 0 .. total-1 to topic at rate per second, its
 * pool connected; emitter_close frees it (also after a failure here). */
static int emitter_open(emitter *em, fpg *pg, const char *topic, int rate, long total)
{
    memset(em, 0, sizeof *em);
    em->total = total;
    em->topic = topic;
    em->rate = rate;
    em->ack_us = calloc((size_t)(total > 0 ? total : 1), sizeof *em->ack_us);
    if (em->ack_us == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        return -1;
    }
    for (int i = 0; i < EMIT_CONNS; i++)
        if ((em->conns[i] = fpg_connect(pg)) == NULL)
            return -1;
    /* Warm the pool as a running service's is: a backend's first
     * ferry.emit() compiles it and fills the backend's caches, and 32 new
     * backends doing that within the first 16 ms at 2,000/s held every
     * commit (and the relay's CPU) for ~0.4 s on 2 cores, which then read
     * as the relay's latency. Each connection emits once and rolls back:
     * nothing reaches the outbox or Kafka. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT ferry.emit('%s', 'k-0', 'BenchLatency', '{\"n\": -2}'); ROLLBACK",
             topic);
    for (int i = 0; i < EMIT_CONNS; i++)
        if (bench_exec(em->conns[i], sql) != 0)
            return -1;
    return 0;
}

static void emitter_close(emitter *em)
{
    for (int i = 0; i < EMIT_CONNS; i++)
        PQfinish(em->conns[i]);
    memset(em->conns, 0, sizeof em->conns);
    free(em->ack_us);
    em->ack_us = NULL;
}

/* Prime the whole path (the relay's topic metadata, the consumer's fetch
 * loop) with one probe message (n = -1, key k-0), not measured. */
static int emit_probe(emitter *em, consumer *c, const char *what)
{
    if (emitter_send(em, -1) != 0)
        return -1;
    while (em->nbusy > 0 && !em->failed)
        emitter_collect(em, 1000000);
    if (em->failed || await_flag(c, &c->primed, ARRIVAL_TIMEOUT_MS, what) != 0)
        return -1;
    return 0;
}

/* The end of either latency run, read by c (started as tid): unless the
 * sending failed (sent_ok 0), wait (bounded) for the r->sent messages sent
 * (how: the path they took, for the note when some did not come); then
 * stop and free the consumer, and summarize what it saw into r (ack_us:
 * each message's COMMIT acknowledged, NULL for the direct producer).
 * 0, or -1 when the sending failed or the summary could not be made. */
static int lat_collect(consumer *c, pthread_t tid, const int64_t *ack_us, lat_result *r,
                       int sent_ok, const char *how)
{
    if (sent_ok && await_all(c, r->sent, ARRIVAL_TIMEOUT_MS) != 0)
        fprintf(stderr, "bench: only %ld of %ld messages arrived %s within %d s\n",
                atomic_load(&c->received), r->sent, how, ARRIVAL_TIMEOUT_MS / 1000);
    consumer_stop(c, tid);
    int rc = sent_ok ? lat_summarize(c, ack_us, r) : -1;
    consumer_free(c);
    return rc;
}

/* FERRY_BENCH_DUMP=prefix: every message of the run at rate, one line
 * each in prefix.<rate> once all arrived (or the wait ran out): its number,
 * then the wall-clock us at which it was sent, its COMMIT acknowledged, the
 * relay produced it (CreateTime, whole ms) and it was received (0: not).
 * For seeing when in a run the slow ones came (a diagnostic: the first
 * 0.2 s of the 2,000/s run held most of its worst 1 %). */
static void lat_dump(consumer *c, const int64_t *ack_us, long total, int rate)
{
    char path[512];
    snprintf(path, sizeof path, "%s.%d", getenv("FERRY_BENCH_DUMP"), rate);
    await_all(c, total, ARRIVAL_TIMEOUT_MS);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
        return;
    }
    for (long i = 0; i < total; i++)
        fprintf(f, "%ld %lld %lld %lld %lld\n", i, (long long)c->sent_us[i],
                (long long)ack_us[i], (long long)c->create_us[i], (long long)c->recv_us[i]);
    if (fclose(f) != 0)
        fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
}

/* Latency through the relay at rate messages/s: a relay daemon, the
 * consumer, the emitter. */
static int latency_relay(fpg *pg, PGconn *admin, const char *bootstrap, int shards, int rate,
                         double seconds, lat_result *r, proc_result *relay_pr)
{
    memset(r, 0, sizeof *r);
    r->rate = rate;
    long total = (long)(seconds * rate);
    char topic[64];
    snprintf(topic, sizeof topic, LAT_TOPIC_FMT, rate);
    emitter em;
    memset(&em, 0, sizeof em);
    consumer c;
    pthread_t tid;
    int rc = -1;

    int64_t spawned;
    pid_t pid = start_holder(pg, admin, bootstrap, "bench-latency", NULL, shards, &spawned);
    if (pid < 0)
        return -1;
    if (emitter_open(&em, pg, topic, rate, total) != 0)
        goto out_conns;
    if (consumer_start(&c, &tid, bootstrap, topic, total, LAT_KEYS) != 0)
        goto out_conns;
    if (emit_probe(&em, &c, "probe via the relay") != 0)
        goto out_consumer;

    fprintf(stderr, "bench: latency via the relay: %ld messages at %d/s on %d connections\n",
            total, rate, EMIT_CONNS);
    if (emit_paced(&em, total, r) != 0)
        goto out_consumer;
    rc = 0;
out_consumer:
    if (getenv("FERRY_BENCH_DUMP") != NULL && rc == 0)
        lat_dump(&c, em.ack_us, total, rate);
    rc = lat_collect(&c, tid, em.ack_us, r, rc == 0, "through the relay");
out_conns:
    emitter_close(&em);
    /* Everything delivered must also be acknowledged. */
    if (rc == 0) {
        long long left = -1;
        int64_t deadline = clk_mono_us() + 10000000;
        while (bench_query_ll(admin, "SELECT count(*) FROM ferry.outbox", NULL, &left) == 0 &&
               left > 0 && clk_mono_us() < deadline)
            clk_sleep_ms(20);
        if (left != 0) {
            fprintf(stderr, "bench: %lld rows left in ferry.outbox after the latency run\n",
                    left);
            rc = -1;
        }
    }
    stop_relay(pid, spawned, relay_pr);
    if (relay_log_report("latency") > 0 && rc == 0)
        rc = -1;
    if (relay_pr->status != 0) {
        fprintf(stderr, "bench: the latency relay exited with status %d\n", relay_pr->status);
        rc = -1;
    }
    return rc;
}

static void on_direct_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        (*(long *)opaque)++;
}

static int produce_direct(rd_kafka_t *rk, const char *topic, long n)
{
    char key[24], value[256];
    snprintf(key, sizeof key, "k-%ld", n < 0 ? 0 : n % LAT_KEYS);
    int len = snprintf(value, sizeof value, "{\"n\": %ld, \"pad\": \"%s\", \"t_us\": %lld}", n,
                       PAD, (long long)real_us());
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_KEY(key, strlen(key)),
                                    RD_KAFKA_V_VALUE(value, (size_t)len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)) ==
           RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 1);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "bench: produce: %s\n", rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* The baseline: a producer writing straight to the broker at the same
 * rate, with the relay's producer settings (idempotent, acks=all,
 * linger.ms=0), so that the difference is what the database path adds. */
static int latency_direct(const char *bootstrap, int rate, double seconds, lat_result *r)
{
    memset(r, 0, sizeof *r);
    r->rate = rate;
    long total = (long)(seconds * rate), failed = 0;
    char topic[64];
    snprintf(topic, sizeof topic, DIRECT_TOPIC_FMT, rate);
    /* As the relay produces: idempotent, acks=all, Java's partitioner. */
    rd_kafka_t *rk = bench_relay_like_producer(bootstrap, "0", on_direct_delivery, &failed);
    if (rk == NULL)
        return -1;
    int rc = -1;
    consumer c;
    pthread_t tid;
    if (consumer_start(&c, &tid, bootstrap, topic, total, LAT_KEYS) != 0)
        goto out_producer;
    if (produce_direct(rk, topic, -1) != 0 || rd_kafka_flush(rk, 10000) != 0 ||
        await_flag(&c, &c.primed, ARRIVAL_TIMEOUT_MS, "probe via the direct producer") != 0)
        goto out_consumer;

    fprintf(stderr, "bench: latency of the direct producer: %ld messages at %d/s\n", total,
            rate);
    const double period_us = 1e6 / rate;
    int64_t t0 = clk_mono_us() + 1000, last = t0, end = t0 + (int64_t)((double)total * period_us);
    double max_lag = 0;
    r->scheduled = total;
    for (long i = 0; i < total; i++) {
        int64_t due = t0 + (int64_t)((double)i * period_us);
        rd_kafka_poll(rk, 0);
        if (clk_mono_us() < due)
            sleep_until_mono_us(due);
        int64_t now = clk_mono_us();
        if (now >= end)
            break;
        if (produce_direct(rk, topic, i) != 0)
            goto out_consumer;
        double lag = (double)(now - due) / 1000.0;
        max_lag = lag > max_lag ? lag : max_lag;
        r->late_sends += lag > 1.0;
        last = now;
        r->sent++;
    }
    r->emit_max_lag_ms = max_lag;
    r->seconds = (double)(last - t0) / 1e6;
    if (rd_kafka_flush(rk, ARRIVAL_TIMEOUT_MS) != 0 || failed > 0) {
        fprintf(stderr, "bench: the direct producer lost %ld messages\n", failed);
        goto out_consumer;
    }
    rc = 0;
out_consumer:
    rc = lat_collect(&c, tid, NULL, r, rc == 0, "from the direct producer");
out_producer:
    rd_kafka_destroy(rk);
    return rc;
}

/* ---------------------------------------------------------------- faults and scale-out */

/* A writer thread: emit_paced on its own emitter until its schedule ends
 * or em.stop is set. */
typedef struct writer {
    emitter em;
    lat_result r;
    pthread_t tid;
    int rc;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    w->rc = emit_paced(&w->em, w->em.total, &w->r);
    return NULL;
}

/* Which partition the relay's partitioner (murmur2_random: murmur2 for a
 * key, as Java's client) puts key on. */
static int32_t key_partition(const char *key)
{
    return rd_kafka_msg_partitioner_murmur2(NULL, key, strlen(key), TOPIC_PARTITIONS, NULL,
                                            NULL);
}

/* Check a finished run read by c: every one of want messages arrived once,
 * each key's positions in order. 0, or -1 with the reason on stderr. */
static int check_delivery(const consumer *c, long want, const char *what)
{
    long got = atomic_load(&c->received);
    if (got == want && c->duplicates == 0 && c->order_errors == 0 && c->strays == 0)
        return 0;
    fprintf(stderr, "bench: %s: %ld of %ld messages arrived, %ld duplicates, %ld strays, "
                    "%ld out of key order\n", what, got, want, c->duplicates, c->strays,
            c->order_errors);
    return -1;
}

/* A relay under a steady load, as the scale-out and outage runs put it:
 * writers emitting in a thread of their own, a consumer reading the topic
 * back. Both runs start it, disturb the relay, and finish it the same way;
 * load_close undoes whatever load_start got to, also after a failure. */
typedef struct load {
    writer w;
    consumer c;
    pthread_t ctid;
    int writing, consuming;
} load;

/* Writers of total messages at rate per second to topic, after the probe
 * (named probe) went through: 0, or -1 with the reason on stderr. l is
 * zeroed by the caller, so that load_close may follow any failure before. */
static int load_start(load *l, fpg *pg, const char *bootstrap, const char *topic, int rate,
                      long total, const char *probe)
{
    if (emitter_open(&l->w.em, pg, topic, rate, total) != 0)
        return -1;
    if (consumer_start(&l->c, &l->ctid, bootstrap, topic, total, LAT_KEYS) != 0)
        return -1;
    l->consuming = 1;
    if (emit_probe(&l->w.em, &l->c, probe) != 0)
        return -1;
    if (pthread_create(&l->w.tid, NULL, writer_main, &l->w) != 0) {
        fprintf(stderr, "bench: pthread_create failed\n");
        return -1;
    }
    l->writing = 1;
    return 0;
}

/* Stops the writers and waits (up to timeout_ms) for what they sent; then
 * every message must have arrived once, in key order, and topic's rows
 * must leave ferry.outbox. 0, or -1 with the reason on stderr; what the
 * writers and the consumer measured stays in l until load_close. */
static int load_finish(load *l, PGconn *admin, const char *topic, int timeout_ms,
                       const char *what)
{
    atomic_store(&l->w.em.stop, 1);
    pthread_join(l->w.tid, NULL);
    l->writing = 0;
    if (l->w.rc != 0)
        return -1;
    if (await_all(&l->c, l->w.r.sent, timeout_ms) != 0)
        fprintf(stderr, "bench: %s: not every message arrived within %d s\n", what,
                timeout_ms / 1000);
    consumer_stop(&l->c, l->ctid);
    l->consuming = 0;
    int rc = check_delivery(&l->c, l->w.r.sent, what);
    long long left = await_outbox_empty(admin, topic, ARRIVAL_TIMEOUT_MS);
    if (left != 0) {
        fprintf(stderr, "bench: %s: %lld rows left in ferry.outbox\n", what, left);
        rc = -1;
    }
    return rc;
}

static void load_close(load *l)
{
    if (l->writing) {
        atomic_store(&l->w.em.stop, 1);
        pthread_join(l->w.tid, NULL);
        l->writing = 0;
    }
    if (l->consuming) {
        consumer_stop(&l->c, l->ctid);
        l->consuming = 0;
    }
    consumer_free(&l->c);
    emitter_close(&l->w.em);
}

/* The leaderless-partition runs: writers emit LL_RATE msgs/s over LAT_KEYS
 * keys for LL_SECONDS to a running relay; once without a fault, once with
 * partition LL_PARTITION leaderless from before the first write. Healthy
 * keys: those on the other partitions. Steady writes, not a preloaded
 * backlog: rows committed while a partition is stuck are what a relay
 * that waits for "nothing in flight" never fetches. */
typedef struct ll_result {
    long healthy[2];            /* messages of healthy keys sent ([0] no fault, [1] fault) */
    long healthy_got[2];        /* ... of those received within the window */
    double window_s[2];         /* first send -> the last of them received, or the end of
                                   the sends + LL_GRACE_MS when they did not all arrive */
    double healthy_rate[2];     /* healthy_got / window_s */
    long sent[2];
    int complete_fault;         /* every healthy message arrived within the window */
    double recover_s;           /* leader restored -> every message arrived (or -1) */
} ll_result;

static int leaderless_one(fpg *pg, PGconn *admin, kt_broker *kb, const char *bootstrap,
                          int fault, int32_t *key_part, ll_result *res)
{
    char topic[64];
    snprintf(topic, sizeof topic, "bench.leaderless.%s", fault ? "fault" : "clean");
    if (kt_command(kb, "topic-create %s %d 1", topic, TOPIC_PARTITIONS) != 0)
        return -1;
    long total = (long)LL_RATE * LL_SECONDS;
    emitter em;
    consumer c;
    memset(&c, 0, sizeof c);
    pthread_t tid;
    int rc = -1, leaderless = 0, consuming = 0;
    lat_result r;
    memset(&r, 0, sizeof r);
    if (emitter_open(&em, pg, topic, LL_RATE, total) != 0)
        goto out;
    if (consumer_start(&c, &tid, bootstrap, topic, total, LAT_KEYS) != 0)
        goto out;
    consuming = 1;
    /* The probe (key k-0, on a healthy partition: checked below) lets the
     * relay learn the topic and its leaders before the fault. */
    if (emit_probe(&em, &c, "leaderless probe") != 0)
        goto out;
    if (fault && kt_command(kb, "leader %s %d -1", topic, LL_PARTITION) != 0) {
        fprintf(stderr, "bench: devkafka refused to take the leader of %s/%d away\n", topic,
                LL_PARTITION);
        goto out;
    }
    leaderless = fault;

    fprintf(stderr, "bench: leaderless: %ld messages at %d/s over %d keys, %s\n", total,
            LL_RATE, LAT_KEYS, fault ? "partition 0 without a leader" : "no fault");
    int64_t started = real_us();
    if (emit_paced(&em, total, &r) != 0)
        goto out;
    int64_t ended_mono = clk_mono_us();
    long healthy = 0;
    for (long n = 0; n < r.sent; n++)
        healthy += key_part[n % LAT_KEYS] != LL_PARTITION;
    res->healthy[fault] = healthy;
    res->sent[fault] = r.sent;

    /* Healthy keys' messages, bounded: missing ones count against the rate. */
    int64_t deadline = ended_mono + (int64_t)(fault ? LL_GRACE_MS : LL_CLEAN_BOUND_MS) * 1000;
    long got = 0;
    for (;;) {
        got = 0;
        for (int p = 0; p < TOPIC_PARTITIONS; p++)
            if (p != LL_PARTITION)
                got += atomic_load(&c.per_part[p]);
        if (got >= healthy || clk_mono_us() >= deadline)
            break;
        clk_sleep_ms(5);
    }
    int complete = got >= healthy;
    int64_t last = started;
    for (long n = 0; n < r.sent; n++)
        if (c.recv_us[n] != 0 && c.part[n] != LL_PARTITION && c.recv_us[n] > last)
            last = c.recv_us[n];
    double window = complete ? (double)(last - started) / 1e6
                             : r.seconds + (fault ? LL_GRACE_MS : LL_CLEAN_BOUND_MS) / 1000.0;
    if (window <= 0)
        window = 1e-6;
    res->healthy_got[fault] = got;
    res->window_s[fault] = window;
    res->healthy_rate[fault] = (double)got / window;
    if (!complete)
        fprintf(stderr, "bench: leaderless (%s): only %ld of %ld healthy-key messages arrived "
                        "within %.1f s of the last send\n", fault ? "fault" : "no fault", got,
                healthy, (fault ? LL_GRACE_MS : LL_CLEAN_BOUND_MS) / 1000.0);
    if (fault) {
        res->complete_fault = complete;
        int64_t restored = real_us();
        if (kt_command(kb, "leader %s %d 1", topic, LL_PARTITION) != 0)
            goto out;
        leaderless = 0;
        fprintf(stderr, "bench: leaderless: leader restored; waiting for every message\n");
        if (await_all(&c, r.sent, LL_RECOVER_BOUND_MS) == 0) {
            int64_t t = restored;
            for (long n = 0; n < r.sent; n++)
                t = c.recv_us[n] > t ? c.recv_us[n] : t;
            res->recover_s = (double)(t - restored) / 1e6;
        } else {
            res->recover_s = -1;
            fprintf(stderr, "bench: leaderless: not every message arrived within %d s of the "
                            "leader's return\n", LL_RECOVER_BOUND_MS / 1000);
        }
    } else if (await_all(&c, r.sent, LL_CLEAN_BOUND_MS) != 0) {
        fprintf(stderr, "bench: leaderless (no fault): not every message arrived within %d s\n",
                LL_CLEAN_BOUND_MS / 1000);
    }
    consumer_stop(&c, tid);
    consuming = 0;
    rc = check_delivery(&c, r.sent, fault ? "leaderless (fault)" : "leaderless (no fault)");
    /* The keys' partitions are murmur2's by the relay's configuration; if
     * they are not, say so and count healthy keys by where they went. */
    long moved = 0;
    for (long n = 0; n < r.sent; n++)
        if (c.recv_us[n] != 0 && c.part[n] != key_part[n % LAT_KEYS]) {
            moved++;
            key_part[n % LAT_KEYS] = c.part[n];
        }
    if (moved > 0)
        fprintf(stderr, "bench: leaderless: %ld messages were not on murmur2's partition%s\n",
                moved, fault ? "; this run's healthy count is off" : "");
    long long left = await_outbox_empty(admin, topic, ARRIVAL_TIMEOUT_MS);
    if (left != 0) {
        fprintf(stderr, "bench: leaderless: %lld rows of %s left in ferry.outbox\n", left, topic);
        rc = -1;
    }
out:
    if (leaderless)
        kt_command(kb, "leader %s %d 1", topic, LL_PARTITION);
    if (consuming)
        consumer_stop(&c, tid);
    consumer_free(&c);
    emitter_close(&em);
    return rc;
}

static int leaderless_relay(fpg *pg, PGconn *admin, kt_broker *kb, const char *bootstrap,
                            int shards, ll_result *res)
{
    memset(res, 0, sizeof *res);
    int32_t key_part[LAT_KEYS];
    for (int k = 0; k < LAT_KEYS; k++) {
        char key[24];
        snprintf(key, sizeof key, "k-%d", k);
        key_part[k] = key_partition(key);
    }
    if (key_part[0] == LL_PARTITION) {  /* the probe's key must stay healthy */
        fprintf(stderr, "bench: leaderless: key k-0 is on partition %d\n", LL_PARTITION);
        return -1;
    }
    int64_t spawned;
    pid_t pid = start_holder(pg, admin, bootstrap, "bench-leaderless", NULL, shards, &spawned);
    if (pid < 0)
        return -1;
    int rc = leaderless_one(pg, admin, kb, bootstrap, 0, key_part, res);
    if (rc == 0)
        rc = leaderless_one(pg, admin, kb, bootstrap, 1, key_part, res);
    proc_result pr;
    stop_relay(pid, spawned, &pr);
    relay_log_report("leaderless");     /* errors while a fault lasts are no failure */
    if (pr.status != 0) {
        fprintf(stderr, "bench: the leaderless relay exited with status %d\n", pr.status);
        rc = -1;
    }
    return rc;
}

/* Scale-out: relay A holds every shard, writers emit SCALE_RATE msgs/s;
 * then relay B starts. How long until B holds its share? */
typedef struct scale_result {
    double share_s;             /* B's start -> B holds its share (or the bound) */
    int happened;
    long want, b_final, a_final;
    long sent;
    double emit_rate;
} scale_result;

static int scaleout_relays(fpg *pg, PGconn *admin, const char *bootstrap, int shards,
                           scale_result *res)
{
    memset(res, 0, sizeof *res);
    res->want = (shards + 1) / 2;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "lease_ttl_ms=%d", SCALE_LEASE_TTL_MS);
    static const char topic[] = "bench.scaleout";
    long total = (long)SCALE_RATE * (SCALE_WARM_MS + SCALE_BOUND_MS + SCALE_TAIL_MS) / 1000;
    load l;
    memset(&l, 0, sizeof l);
    int rc = -1;
    pid_t pid_b = -1;
    int64_t spawned_b = 0;

    int64_t spawned_a;
    pid_t pid_a = start_holder(pg, admin, bootstrap, "bench-scale-a", ttl, shards, &spawned_a);
    if (pid_a < 0)
        return -1;
    if (load_start(&l, pg, bootstrap, topic, SCALE_RATE, total, "scale-out probe") != 0)
        goto out;
    fprintf(stderr, "bench: scale-out: relay A holds %d shards, writers at %d msgs/s; relay B "
                    "starts in %.1f s (lease TTL %d ms)\n", shards, SCALE_RATE,
            SCALE_WARM_MS / 1000.0, SCALE_LEASE_TTL_MS);
    clk_sleep_ms(SCALE_WARM_MS);         /* the load, steady before B comes */
    pid_b = spawn_holder(pg, bootstrap, "bench-scale-b", ttl, 1, &spawned_b);
    if (pid_b < 0)
        goto out;
    int64_t deadline = spawned_b + (int64_t)SCALE_BOUND_MS * 1000;
    long held = 0;
    for (;;) {
        if (lease_count(admin, "bench-scale-b", &held) != 0)
            goto out;
        if (held >= res->want) {
            res->happened = 1;
            res->share_s = (double)(clk_mono_us() - spawned_b) / 1e6;
            break;
        }
        if (clk_mono_us() >= deadline || l.w.em.failed)
            break;
        clk_sleep_ms(20);
    }
    if (!res->happened) {
        res->share_s = SCALE_BOUND_MS / 1000.0;
        fprintf(stderr, "bench: scale-out: relay B did not get its share within %d s (holds %ld "
                        "of the %ld it should)\n", SCALE_BOUND_MS / 1000, held, res->want);
    } else {
        fprintf(stderr, "bench: scale-out: relay B holds %ld shards %.2f s after its start\n",
                held, res->share_s);
        clk_sleep_ms(SCALE_TAIL_MS);     /* both relays publishing under the load */
    }
    rc = load_finish(&l, admin, topic, ARRIVAL_TIMEOUT_MS, "scale-out");
    if (l.w.rc != 0)
        goto out;
    res->sent = l.w.r.sent;
    res->emit_rate = l.w.r.seconds > 0 ? (double)l.w.r.sent / l.w.r.seconds : 0;
    if (lease_count(admin, "bench-scale-a", &res->a_final) != 0 ||
        lease_count(admin, "bench-scale-b", &res->b_final) != 0)
        rc = -1;
out:
    load_close(&l);
    proc_result pr_a, pr_b;
    if (pid_b > 0) {
        stop_relay(pid_b, spawned_b, &pr_b);
        if (pr_b.status != 0) {
            fprintf(stderr, "bench: scale-out relay B exited with status %d\n", pr_b.status);
            rc = -1;
        }
    }
    stop_relay(pid_a, spawned_a, &pr_a);
    if (pr_a.status != 0) {
        fprintf(stderr, "bench: scale-out relay A exited with status %d\n", pr_a.status);
        rc = -1;
    }
    if (relay_log_report("scale-out") > 0)
        rc = -1;
    return rc;
}

/* Broker outage: a relay with a trickle of writes, every broker down for
 * OUTAGE_MS, then back. How long from their return to the first publish? */
typedef struct outage_result {
    double resume_s;            /* brokers up -> the first row acknowledged (deleted) after */
    double resume_consumer_s;   /* brokers up -> the consumer's first receipt after */
    int happened;
    long queued;                /* rows waiting when the brokers came back */
    long sent;
} outage_result;

static int outage_relay(fpg *pg, PGconn *admin, kt_broker *kb, const char *bootstrap,
                        int shards, outage_result *res)
{
    memset(res, 0, sizeof *res);
    static const char topic[] = "bench.outage";
    long total = (long)OUTAGE_RATE *
                 (OUTAGE_WARM_MS + OUTAGE_MS + OUTAGE_BOUND_MS + OUTAGE_TAIL_MS) / 1000;
    load l;
    memset(&l, 0, sizeof l);
    int rc = -1, down = 0;

    int64_t spawned;
    pid_t pid = start_holder(pg, admin, bootstrap, "bench-outage", NULL, shards, &spawned);
    if (pid < 0)
        return -1;
    if (load_start(&l, pg, bootstrap, topic, OUTAGE_RATE, total, "outage probe") != 0)
        goto out;
    clk_sleep_ms(OUTAGE_WARM_MS);
    fprintf(stderr, "bench: outage: all %d broker(s) down for %.1f s, writers at %d msgs/s\n",
            KAFKA_BROKERS, OUTAGE_MS / 1000.0, OUTAGE_RATE);
    for (int b = 1; b <= KAFKA_BROKERS; b++) {
        if (kt_command(kb, "down %d", b) != 0)
            goto out;
        down = b;
    }
    clk_sleep_ms(OUTAGE_MS);             /* the outage itself */
    /* The rows committed so far (created by then; a later commit with an
     * earlier created_at only adds to the count): one of them gone or
     * marked = acknowledged after delivery = published. */
    char upto[64] = "";
    if (bench_query_text(admin, "SELECT coalesce(max(created_at), now())::text FROM ferry.outbox",
                         0, NULL, upto, sizeof upto) != 0)
        goto out;
    static const char waiting_sql[] =
        "SELECT count(*) FROM ferry.outbox WHERE topic = 'bench.outage' "
        "AND created_at <= $1::timestamptz AND published_at IS NULL";
    long long queued = -1, now_left = -1;
    if (bench_query_ll(admin, waiting_sql, upto, &queued) != 0)
        goto out;
    res->queued = (long)queued;
    int64_t up_real = real_us(), up_mono = clk_mono_us();
    for (int b = 1; b <= KAFKA_BROKERS; b++) {
        if (kt_command(kb, "up %d", b) != 0)
            goto out;
    }
    down = 0;
    int64_t deadline = up_mono + (int64_t)OUTAGE_BOUND_MS * 1000;
    for (;;) {
        if (bench_query_ll(admin, waiting_sql, upto, &now_left) != 0)
            goto out;
        if (now_left < queued) {
            res->happened = 1;
            res->resume_s = (double)(clk_mono_us() - up_mono) / 1e6;
            break;
        }
        if (clk_mono_us() >= deadline)
            break;
        clk_sleep_ms(5);
    }
    if (queued == 0)
        fprintf(stderr, "bench: outage: no row was waiting when the brokers came back\n");
    if (!res->happened) {
        res->resume_s = OUTAGE_BOUND_MS / 1000.0;
        fprintf(stderr, "bench: outage: nothing was published within %d s of the brokers' "
                        "return\n", OUTAGE_BOUND_MS / 1000);
    } else {
        fprintf(stderr, "bench: outage: first publish %.3f s after the brokers' return\n",
                res->resume_s);
        clk_sleep_ms(OUTAGE_TAIL_MS);
    }
    rc = load_finish(&l, admin, topic, OUTAGE_DRAIN_BOUND_MS, "outage");
    if (l.w.rc != 0)
        goto out;
    res->sent = l.w.r.sent;
    int64_t first = 0;
    for (long n = 0; n < l.c.expected; n++)
        if (l.c.recv_us[n] >= up_real && (first == 0 || l.c.recv_us[n] < first))
            first = l.c.recv_us[n];
    res->resume_consumer_s = first != 0 ? (double)(first - up_real) / 1e6 : -1;
out:
    for (int b = 1; b <= down; b++)
        kt_command(kb, "up %d", b);
    load_close(&l);
    proc_result pr;
    stop_relay(pid, spawned, &pr);
    relay_log_report("outage");         /* errors while the brokers are away are no failure */
    if (pr.status != 0) {
        fprintf(stderr, "bench: the outage relay exited with status %d\n", pr.status);
        rc = -1;
    }
    return rc;
}

/* ---------------------------------------------------------------- throughput */

/* rows messages into ferry.outbox through ferry.emit(), PRELOAD_TX_ROWS a
 * transaction, over DRAIN_KEYS keys, payloads of about 100 bytes. Two
 * connections at a time, each on its own half of the keys so that neither
 * waits for the other's key locks. */
static int preload(fpg *pg, long rows)
{
    static const char sql[] =
        "SELECT count(ferry.emit($3, 'key-' || ($5::int + g % $4::int), 'BenchDrained', "
        "  json_build_object('n', g, 'account', 'acct-' || ($5::int + g % $4::int), "
        "                    'amount', g % 9973, 'currency', 'EUR', "
        "                    'note', 'preloaded by bench_relay')::text)) "
        "FROM generate_series($1::bigint, $2::bigint) AS g";
    _Static_assert(DRAIN_KEYS % PRELOAD_CONNS == 0, "keys split evenly");
    PGconn *conns[PRELOAD_CONNS] = {NULL};
    int rc = -1;
    for (int j = 0; j < PRELOAD_CONNS; j++)
        if ((conns[j] = fpg_connect(pg)) == NULL)
            goto out;
    int64_t t0 = clk_mono_us(), next_report = t0 + 5000000;
    char keys[16];
    snprintf(keys, sizeof keys, "%d", DRAIN_KEYS / PRELOAD_CONNS);
    for (long a = 1; a <= rows;) {
        long want[PRELOAD_CONNS] = {0};
        for (int j = 0; j < PRELOAD_CONNS && a <= rows; j++, a += PRELOAD_TX_ROWS) {
            long b = a + PRELOAD_TX_ROWS - 1 < rows ? a + PRELOAD_TX_ROWS - 1 : rows;
            char from[24], to[24], offset[16];
            snprintf(from, sizeof from, "%ld", a);
            snprintf(to, sizeof to, "%ld", b);
            snprintf(offset, sizeof offset, "%d", j * (DRAIN_KEYS / PRELOAD_CONNS));
            const char *params[5] = {from, to, DRAIN_TOPIC, keys, offset};
            if (!PQsendQueryParams(conns[j], sql, 5, NULL, params, NULL, NULL, 0)) {
                fprintf(stderr, "bench: preload: %s", PQerrorMessage(conns[j]));
                goto out;
            }
            want[j] = b - a + 1;
        }
        for (int j = 0; j < PRELOAD_CONNS && want[j] > 0; j++) {
            PGresult *res;
            int ok = 1;
            while ((res = PQgetResult(conns[j])) != NULL) {
                if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
                    strtol(PQgetvalue(res, 0, 0), NULL, 10) != want[j]) {
                    fprintf(stderr, "bench: preload of %ld rows failed: %s", want[j],
                            PQresultStatus(res) == PGRES_TUPLES_OK ? "wrong count\n"
                                                                   : PQerrorMessage(conns[j]));
                    ok = 0;
                }
                PQclear(res);
            }
            if (!ok)
                goto out;
        }
        if (clk_mono_us() >= next_report) {
            fprintf(stderr, "bench: preloaded %ld of %ld rows\n", a - 1 < rows ? a - 1 : rows,
                    rows);
            next_report += 5000000;
        }
    }
    double secs = (double)(clk_mono_us() - t0) / 1e6;
    fprintf(stderr, "bench: preloaded %ld rows through ferry.emit() in %.1f s (%.0f rows/s)\n",
            rows, secs, (double)rows / secs);
    rc = 0;
out:
    for (int j = 0; j < PRELOAD_CONNS; j++)
        PQfinish(conns[j]);
    return rc;
}

/* bench_copy: ferry.outbox's columns, defaults and indexes, and its rows in
 * the same physical order (no synchronized scan starting mid-table). */
static int copy_outbox(PGconn *conn, long rows)
{
    long long n = -1;
    if (bench_exec(conn, "CREATE TABLE bench_copy (LIKE ferry.outbox INCLUDING ALL)") != 0 ||
        bench_exec(conn, "SET synchronize_seqscans = off") != 0 ||
        bench_exec(conn, "INSERT INTO bench_copy SELECT * FROM ferry.outbox") != 0 ||
        bench_exec(conn, "RESET synchronize_seqscans") != 0 ||
        bench_query_ll(conn, "SELECT count(*) FROM bench_copy", NULL, &n) != 0)
        return -1;
    if (n != rows) {
        fprintf(stderr, "bench: bench_copy holds %lld rows, expected %ld\n", n, rows);
        return -1;
    }
    return 0;
}

/* The baseline drain: delete RAW_BATCH rows a statement, in the relay's
 * order, and read them back, until the table is empty. */
static int raw_delete_loop(PGconn *conn, long rows, double *seconds)
{
    static const char sql[] =
        "DELETE FROM bench_copy WHERE id IN ("
        "  SELECT id FROM bench_copy WHERE published_at IS NULL "
        "  ORDER BY shard, topic, aggregateid, seq "
        "  FOR UPDATE SKIP LOCKED LIMIT 1000) "
        "RETURNING *";
    _Static_assert(RAW_BATCH == 1000, "the statement's LIMIT");
    long deleted = 0;
    int64_t t0 = clk_mono_us(), next_report = t0 + 5000000;
    for (;;) {
        PGresult *res = PQexec(conn, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            fprintf(stderr, "bench: %s\n  failed: %s", sql, PQerrorMessage(conn));
            PQclear(res);
            return -1;
        }
        int n = PQntuples(res);
        PQclear(res);
        if (n == 0)
            break;
        deleted += n;
        if (clk_mono_us() >= next_report) {
            fprintf(stderr, "bench: raw loop: %ld of %ld rows deleted\n", deleted, rows);
            next_report += 5000000;
        }
    }
    *seconds = (double)(clk_mono_us() - t0) / 1e6;
    long long left = -1;
    if (bench_query_ll(conn, "SELECT count(*) FROM bench_copy", NULL, &left) != 0)
        return -1;
    if (deleted != rows || left != 0) {
        fprintf(stderr, "bench: raw loop deleted %ld rows of %ld, %lld left\n", deleted, rows,
                left);
        return -1;
    }
    return 0;
}

/* The idle relay: holding every lease, nothing to publish. */
static int idle_relay(fpg *pg, PGconn *admin, const char *bootstrap, int shards,
                      proc_result *pr)
{
    int64_t spawned;
    pid_t pid = start_holder(pg, admin, bootstrap, "bench-idle", NULL, shards, &spawned);
    if (pid < 0)
        return -1;
    clk_sleep_ms(IDLE_SETTLE_MS);
    int rc = 0;
    stop_relay(pid, spawned, pr);
    if (relay_log_report("idle") > 0 || pr->status != 0) {
        fprintf(stderr, "bench: the idle relay exited with status %d\n", pr->status);
        rc = -1;
    }
    return rc;
}

/* The measured drain: `run --once` over the preloaded outbox. */
static int drain_relay(fpg *pg, PGconn *admin, const char *bootstrap, long rows,
                       proc_result *pr)
{
    char batch[32];
    snprintf(batch, sizeof batch, "batch_size=%d", RELAY_BATCH);
    const char *args[] = {"--once", "--db", fpg_conninfo(pg), "--kafka", bootstrap,
                          "--holder", "bench-drain", "--set", "log_level=warn",
                          "--set", batch, NULL};
    int64_t spawned = clk_mono_us();
    pid_t pid = spawn_relay_log(args, 0);
    if (pid < 0)
        return -1;
    wait_relay(pid, spawned, DRAIN_TIMEOUT_MS, pr);
    if (pr->status < 0) {
        fprintf(stderr, "bench: the drain did not finish within %d s; killing the relay\n",
                DRAIN_TIMEOUT_MS / 1000);
        kill(pid, SIGKILL);
        proc_result ignored;
        wait_relay(pid, clk_mono_us(), STOP_TIMEOUT_MS, &ignored);
        return -1;
    }
    int rc = 0;
    if (relay_log_report("drain") > 0)
        rc = -1;
    if (pr->status != 0) {
        fprintf(stderr, "bench: ferry-relay run --once exited with status %d\n", pr->status);
        rc = -1;
    }
    long long left = -1, published = topic_appended(bootstrap, DRAIN_TOPIC);
    if (bench_query_ll(admin, "SELECT count(*) FROM ferry.outbox", NULL, &left) != 0 || left != 0) {
        fprintf(stderr, "bench: %lld rows left in ferry.outbox after the drain\n", left);
        rc = -1;
    }
    if (published != rows) {
        fprintf(stderr, "bench: %lld messages were appended to topic %s, expected %ld\n",
                published, DRAIN_TOPIC, rows);
        rc = -1;
    }
    return rc;
}

/* ---------------------------------------------------------------- main */

static double mib(long kib)
{
    return (double)kib / 1024.0;
}

static double dist_field(const dist *d, size_t off)
{
    return *(const double *)(const void *)((const char *)d + off);
}

/* The latency table of one rate: via the relay r, direct d. */
static void print_latency_table(const lat_result *r, const lat_result *d, const proc_result *pr,
                                double fsync_ms)
{
    printf("\nlatency in ms: commit -> consumer receipt (an upper bound of commit -> delivery "
           "report)\n");
    printf("  one message per transaction, offered at %d messages/s for %.1f s by one emitter "
           "thread\n  (%d connections); the time in the payload is taken just before BEGIN; "
           "SELECT ferry.emit(...);\n  COMMIT goes out in one round trip, so \"total\" "
           "includes the COMMIT, and splits into the\n  COMMIT round trip (until the emitter "
           "has the reply) and what follows it (the relay's share).\n  The target, commit -> "
           "delivery report, is read against \"after it\": a commit is acknowledged\n  when "
           "its reply comes, and no relay can see the row sooner. \"total\" adds the "
           "writer's statement\n  and COMMIT (WAL flush included), which the relay can only "
           "slow down: watch \"COMMIT rt\" for that.\n", r->rate, r->seconds, EMIT_CONNS);
    printf("  baseline: a producer writing straight to the broker at the same rate, with the "
           "relay's\n  producer settings: produce -> receipt. Disk: an 8 kB write + fdatasync "
           "took %.2f ms just before.\n", fsync_ms);
    printf("  %-7s %41s %27s\n", "", "------------- via the relay -------------",
           "-------- direct ---------");
    printf("  %-7s %8s %10s %10s %10s %10s %13s %13s\n", "", "total", "COMMIT rt",
           "after it", "= pickup", "+ to cons.", "total", "to consumer");
    const struct {
        const char *name;
        size_t off;
    } rows_[] = {{"p50", offsetof(dist, p50)}, {"p90", offsetof(dist, p90)},
                 {"p99", offsetof(dist, p99)}, {"p99.9", offsetof(dist, p999)},
                 {"max", offsetof(dist, max)}, {"mean", offsetof(dist, mean)}};
    for (size_t i = 0; i < sizeof rows_ / sizeof rows_[0]; i++)
        printf("  %-7s %8.2f %10.2f %10.2f %10.2f %10.2f %13.2f %13.2f%s\n", rows_[i].name,
               dist_field(&r->total, rows_[i].off),
               dist_field(&r->commit, rows_[i].off),
               dist_field(&r->after, rows_[i].off),
               dist_field(&r->pickup, rows_[i].off),
               dist_field(&r->produced, rows_[i].off),
               dist_field(&d->total, rows_[i].off),
               dist_field(&d->produced, rows_[i].off),
               rows_[i].off == offsetof(dist, p50)   ? "  (target: after it <= 3)"
               : rows_[i].off == offsetof(dist, p99) ? "  (target: after it <= 10)"
                                                     : "");
    printf("  total: the time in the payload -> receipt. COMMIT rt: that time -> the emitter "
           "has COMMIT's reply.\n  after it: COMMIT's reply -> receipt, = pickup: -> the "
           "relay's produce() call, + to cons.: produce()\n  -> receipt (both by the message's "
           "Kafka CreateTime, whole ms, so each is +-1 ms).\n");
    printf("  received/sent/scheduled: via the relay %ld/%ld/%ld, direct %ld/%ld/%ld\n",
           r->received, r->sent, r->scheduled, d->received,
           d->sent, d->scheduled);
    printf("  sending: %.0f msgs/s achieved via the relay (%ld sends more than 1 ms behind "
           "schedule, at most %.1f ms),\n           %.0f msgs/s direct (%ld late, at most "
           "%.1f ms)\n", (double)r->sent / r->seconds, r->late_sends,
           r->emit_max_lag_ms, (double)d->sent / d->seconds,
           d->late_sends, d->emit_max_lag_ms);
    printf("  relay CPU while serving it: %.1f s user+system over %.1f s\n", pr->cpu_s,
           pr->wall_s);
}

/* A run starts from a vacuumed table (sql: "VACUUM ANALYZE table") and
 * after a checkpoint, so that it neither reads past the dead rows of the
 * run before nor pays for its checkpoint; *fsync_ms is then how long the
 * disk takes to flush, printed beside the run's figures. */
static int settle(PGconn *admin, const char *sql, double *fsync_ms)
{
    if (bench_exec(admin, sql) != 0 || bench_exec(admin, "CHECKPOINT") != 0)
        return -1;
    *fsync_ms = fsync_probe_ms();
    return 0;
}

/* The bench lines of one latency rate, the same in a full run and with
 * FERRY_BENCH_ONLY=latency; the latter (detail) adds the p99 of the COMMIT
 * round trip and of the pickup. */
static void print_rate_lines(int rate, const lat_result *relay, const lat_result *direct,
                             int detail)
{
    printf("bench relay_latency_p50_ms_%d %.2f ms\n", rate, relay->total.p50);
    printf("bench relay_latency_p99_ms_%d %.2f ms\n", rate, relay->total.p99);
    printf("bench floor_latency_p50_ms_%d %.2f ms\n", rate, direct->total.p50);
    printf("bench floor_latency_p99_ms_%d %.2f ms\n", rate, direct->total.p99);
    printf("bench relay_after_commit_latency_p50_ms_%d %.2f ms\n", rate, relay->after.p50);
    printf("bench relay_after_commit_latency_p99_ms_%d %.2f ms\n", rate, relay->after.p99);
    if (!detail)
        return;
    printf("bench relay_commit_roundtrip_p99_ms_%d %.2f ms\n", rate, relay->commit.p99);
    printf("bench relay_pickup_p99_ms_%d %.2f ms\n", rate, relay->pickup.p99);
}

int main(void)
{
    double rows_d, seconds;
    if (bench_env_double("FERRY_BENCH_ROWS", 1000000, 1000, 1e8, &rows_d) != 0 ||
        bench_env_double("FERRY_BENCH_SECONDS", 10, 0.5, 600, &seconds) != 0)
        return 1;
    long rows = (long)rows_d;
    /* FERRY_BENCH_ONLY=latency: the latency runs alone (no drain, no
     * faults), for working on latency without a minute of the rest. */
    const char *only = getenv("FERRY_BENCH_ONLY");
    int latency_only = only != NULL && strcmp(only, "latency") == 0;
    if (only != NULL && only[0] != '\0' && !latency_only) {
        fprintf(stderr, "bench: FERRY_BENCH_ONLY: expected \"latency\", not \"%s\"\n", only);
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_relay_bin = bench_program("FERRY_RELAY_BIN", "build/rel/ferry-relay");  /* kt_start's too */
    if (g_relay_bin == NULL)
        return 1;
    snprintf(g_log_path, sizeof g_log_path, "/tmp/ferry-bench-relay-XXXXXX");
    g_log_fd = mkstemp(g_log_path);
    if (g_log_fd < 0) {
        fprintf(stderr, "bench: mkstemp: %s\n", strerror(errno));
        return 1;
    }
    fcntl(g_log_fd, F_SETFD, FD_CLOEXEC);
    unlink(g_log_path);          /* the open descriptor is all we need */

    int status = 1, checks_ok = 1;
    PGconn *admin = NULL;
    kt_broker *kb = NULL;
    proc_result idle_pr = {0}, drain_pr = {0}, lat_pr[2];
    lat_result lat_relay[2], lat_direct[2];   /* [0] at LAT_RATE_LOW, [1] at LAT_RATE_HIGH */
    const int lat_rates[2] = {LAT_RATE_LOW, LAT_RATE_HIGH};
    double raw_s = 0, fsync_raw = 0, fsync_drain = 0, fsync_lat[2] = {0, 0};

    /* FERRY_BENCH_DISK=off: a diagnostic, not the benchmark. The server
     * commits without waiting for the WAL flush (synchronous_commit=off),
     * so that on a shared disk whose flushes take tens or hundreds of ms
     * the relay's own share can still be seen; every figure printed is
     * then not a durable one, and the header says so. */
    const char *disk = getenv("FERRY_BENCH_DISK");
    int disk_off = disk != NULL && strcmp(disk, "off") == 0;
    if (disk != NULL && disk[0] != '\0' && !disk_off) {
        fprintf(stderr, "bench: FERRY_BENCH_DISK: expected \"off\", not \"%s\"\n", disk);
        return 1;
    }
    static const char *const no_flush_wait[] = {"synchronous_commit = off", NULL};
    fpg_opts opts = {.conf = disk_off ? no_flush_wait : NULL, .fsync = 1};
    fpg *pg = fpg_start(&opts);
    if (pg == NULL)
        goto out;
    if ((admin = fpg_connect(pg)) == NULL)
        goto out;
    int version = 0;
    if (bench_migrate(admin, &version) != 0)
        goto out;
    bench_server srv;
    char shards_s[16];
    if (bench_server_read(admin, &srv) != 0 ||
        bench_query_text(admin, "SELECT shard_count FROM ferry.settings", 0, NULL, shards_s,
                   sizeof shards_s) != 0)
        goto out;
    int shards = atoi(shards_s);

    if ((kb = kt_start(KAFKA_BROKERS)) == NULL)
        goto out;
    const char *bootstrap = kt_bootstrap(kb);
    for (int i = 0; i < 2; i++) {
        char lt[64], dt[64];
        snprintf(lt, sizeof lt, LAT_TOPIC_FMT, lat_rates[i]);
        snprintf(dt, sizeof dt, DIRECT_TOPIC_FMT, lat_rates[i]);
        if (kt_command(kb, "topic-create %s %d 1", lt, TOPIC_PARTITIONS) != 0 ||
            kt_command(kb, "topic-create %s %d 1", dt, TOPIC_PARTITIONS) != 0)
            goto out;
    }
    fprintf(stderr, "bench: PostgreSQL %s (fsync=%s), broker at %s, relay %s\n", srv.version,
            srv.fsync, bootstrap, g_relay_bin);
    if (disk_off)
        printf("DIAGNOSTIC RUN (FERRY_BENCH_DISK=off): synchronous_commit=%s, commits do not wait "
               "for the WAL flush; not durable figures\n", srv.sync_commit);

    /* ------------------------------------------------------------ memory baseline */
    if (latency_only)
        goto latency;
    fprintf(stderr, "bench: idle relay on an empty outbox (%.1f s holding its leases)\n",
            IDLE_SETTLE_MS / 1000.0);
    if (idle_relay(pg, admin, bootstrap, shards, &idle_pr) != 0)
        goto out;

    /* ------------------------------------------------------------ throughput */
    if (preload(pg, rows) != 0 || copy_outbox(admin, rows) != 0)
        goto out;
    char payload_avg[32];
    if (bench_query_text(admin, "SELECT round(avg(octet_length(payload::text))) FROM ferry.outbox",
                   0, NULL, payload_avg, sizeof payload_avg) != 0)
        goto out;

    fprintf(stderr, "bench: baseline: raw DELETE ... RETURNING * loop over bench_copy\n");
    if (settle(admin, "VACUUM ANALYZE bench_copy", &fsync_raw) != 0)
        goto out;
    if (raw_delete_loop(admin, rows, &raw_s) != 0 ||
        bench_exec(admin, "DROP TABLE bench_copy") != 0)
        goto out;
    fprintf(stderr, "bench: raw loop: %ld rows in %.2f s\n", rows, raw_s);

    fprintf(stderr, "bench: ferry-relay run --once draining ferry.outbox\n");
    if (settle(admin, "VACUUM ANALYZE ferry.outbox", &fsync_drain) != 0)
        goto out;
    if (drain_relay(pg, admin, bootstrap, rows, &drain_pr) != 0)
        goto out;
    fprintf(stderr, "bench: relay drain: %ld messages in %.2f s\n", rows, drain_pr.wall_s);

    /* ------------------------------------------------------------ latency */
latency:
    /* From a vacuumed outbox, as the drain starts from one: the drain
     * leaves every one of its rows dead in outbox_position until
     * autovacuum comes by, and every sweep of the latency run would read
     * past them (about 10 ms a sweep after 1,000,000 rows), which measures
     * autovacuum's schedule rather than the relay at a steady rate. */
    /* At the low rate, long enough for LAT_LOW_MIN_MSGS messages at the
     * default FERRY_BENCH_SECONDS, scaled with it. */
    double lat_seconds[2] = {seconds * 1.2, seconds};
    if (lat_seconds[0] * LAT_RATE_LOW < LAT_LOW_MIN_MSGS)
        fprintf(stderr, "bench: note: %.0f messages at %d/s (FERRY_BENCH_SECONDS=%g); its p99 "
                        "wants at least %d\n", lat_seconds[0] * LAT_RATE_LOW, LAT_RATE_LOW,
                seconds, LAT_LOW_MIN_MSGS);
    for (int i = 0; i < 2; i++) {
        if (settle(admin, "VACUUM ANALYZE ferry.outbox", &fsync_lat[i]) != 0)
            goto out;
        if (latency_relay(pg, admin, bootstrap, shards, lat_rates[i], lat_seconds[i],
                          &lat_relay[i], &lat_pr[i]) != 0 ||
            latency_direct(bootstrap, lat_rates[i], lat_seconds[i], &lat_direct[i]) != 0)
            goto out;
        const lat_result *lr[2] = {&lat_relay[i], &lat_direct[i]};
        for (int j = 0; j < 2; j++)
            if (lr[j]->received != lr[j]->sent || lr[j]->duplicates != 0 || lr[j]->strays != 0 ||
                lr[j]->order_errors != 0) {
                fprintf(stderr, "bench: %s latency run at %d/s: %ld sent, %ld received, %ld "
                                "duplicates, %ld strays, %ld out of key order\n",
                        j == 0 ? "relay" : "direct", lat_rates[i], lr[j]->sent,
                        lr[j]->received, lr[j]->duplicates, lr[j]->strays,
                        lr[j]->order_errors);
                checks_ok = 0;
            }
    }

    if (latency_only) {
        for (int i = 0; i < 2; i++)
            print_latency_table(&lat_relay[i], &lat_direct[i], &lat_pr[i], fsync_lat[i]);
        for (int i = 0; i < 2; i++)
            print_rate_lines(lat_rates[i], &lat_relay[i], &lat_direct[i], 1);
        status = checks_ok ? 0 : 1;
        goto out;
    }

    /* ------------------------------------------------------------ faults, scale-out */
    /* Each says on stderr what went wrong; the figures of the others still
     * count, so a failure here marks the run failed and goes on. */
    ll_result ll;
    scale_result so;
    outage_result ou;
    if (leaderless_relay(pg, admin, kb, bootstrap, shards, &ll) != 0)
        checks_ok = 0;
    if (scaleout_relays(pg, admin, bootstrap, shards, &so) != 0)
        checks_ok = 0;
    if (outage_relay(pg, admin, kb, bootstrap, shards, &ou) != 0)
        checks_ok = 0;
    double ll_ratio = ll.healthy_rate[0] > 0 ? ll.healthy_rate[1] / ll.healthy_rate[0] : 0;

    /* ------------------------------------------------------------ results */
    double relay_rate = (double)rows / drain_pr.wall_s, raw_rate = (double)rows / raw_s;
    printf("ferry-relay benchmark (ferry %s, schema %d)\n", ferry_version(), version);
    printf("server: PostgreSQL %s, fsync=%s, synchronous_commit=%s, shared_buffers=%s "
           "(durable defaults); broker: ferry-relay devkafka (librdkafka's mock cluster, "
           "1 broker)\n", srv.version, srv.fsync, srv.sync_commit, srv.shared_buffers);

    printf("\nthroughput: %ld rows over %d keys, payloads of %s bytes on average, "
           "preloaded through ferry.emit()\n", rows, DRAIN_KEYS, payload_avg);
    printf("  %-44s %12.0f msgs/s  (%.2f s; exit 0, outbox empty, N appended)\n",
           "relay: ferry-relay run --once -> broker", relay_rate, drain_pr.wall_s);
    printf("  %-44s %12.0f rows/s  (%.2f s; the same rows in an identical table)\n",
           "baseline: raw DELETE loop, no Kafka", raw_rate, raw_s);
    printf("  %-44s %12.3f         (target >= 1.0)\n", "relay / raw", relay_rate / raw_rate);
    printf("  baseline statement, %d rows at a time until the table is empty (the ready rows "
           "in the\n  relay's order, through the same partial index):\n"
           "    DELETE FROM t WHERE id IN (SELECT id FROM t WHERE published_at IS NULL\n"
           "      ORDER BY shard, topic, aggregateid, seq FOR UPDATE SKIP LOCKED LIMIT %d) "
           "RETURNING *\n", RAW_BATCH, RAW_BATCH);
    printf("  relay CPU during the drain: %.1f s user+system (%.1f us per message)\n",
           drain_pr.cpu_s, drain_pr.cpu_s * 1e6 / (double)rows);
    printf("  disk: an 8 kB write + fdatasync took %.2f ms (median of %d) just before the "
           "relay's drain,\n        %.2f ms just before the raw loop\n", fsync_drain,
           FSYNC_PROBES, fsync_raw);

    printf("\nmemory: peak RSS (wait4 ru_maxrss)\n");
    printf("  %-44s %12.1f MiB    (target < 20; VmHWM seen while running: %.1f MiB)\n",
           "relay: run --once draining the outbox", mib(drain_pr.maxrss_kib),
           mib(drain_pr.hwm_kib));
    printf("  %-44s %12.1f MiB    (%d leases held, %.1f s)\n",
           "baseline: idle relay, empty outbox", mib(idle_pr.maxrss_kib), shards,
           IDLE_SETTLE_MS / 1000.0);

    print_latency_table(&lat_relay[0], &lat_direct[0], &lat_pr[0], fsync_lat[0]);
    print_latency_table(&lat_relay[1], &lat_direct[1], &lat_pr[1], fsync_lat[1]);
    printf("\nlatency against the floor, both rates (target at both: p50 <= 3 ms and p99 <= 10 ms "
           "from COMMIT\nacknowledged to consumer receipt, \"after it\" above, beside the floor, "
           "produce() -> receipt;\n\"total\" adds the writer's own COMMIT round trip, WAL "
           "flush included)\n");
    printf("  %-8s %9s %9s %9s %9s %9s %9s %9s %9s\n", "msgs/s", "after p50", "after p99",
           "floor p50", "floor p99", "total p50", "total p99", "COMMIT99", "messages");
    for (int i = 0; i < 2; i++)
        printf("  %-8d %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9ld\n", lat_relay[i].rate,
               lat_relay[i].after.p50, lat_relay[i].after.p99, lat_direct[i].total.p50,
               lat_direct[i].total.p99, lat_relay[i].total.p50, lat_relay[i].total.p99,
               lat_relay[i].commit.p99, lat_relay[i].received);

    printf("\nleaderless partition: writers emit %d msgs/s over %d keys for %d s to a running "
           "relay; healthy keys:\n  those not on partition %d. Their throughput: healthy "
           "messages received / (first send -> the last\n  of them received), or -> %.0f s "
           "after the last send when they did not all arrive by then.\n", LL_RATE, LAT_KEYS,
           LL_SECONDS, LL_PARTITION, LL_GRACE_MS / 1000.0);
    printf("  %-44s %12.0f msgs/s  (%ld of %ld in %.2f s)\n", "no fault", ll.healthy_rate[0],
           ll.healthy_got[0], ll.healthy[0], ll.window_s[0]);
    printf("  %-44s %12.0f msgs/s  (%ld of %ld in %.2f s%s)\n",
           "partition 0 leaderless (leader T 0 -1)", ll.healthy_rate[1], ll.healthy_got[1],
           ll.healthy[1], ll.window_s[1], ll.complete_fault ? "" : ": did NOT all arrive");
    printf("  %-44s %12.3f         (target >= 0.9)\n", "fault / no fault", ll_ratio);
    printf("  writers sent %ld of %ld messages without the fault, %ld with it (all connections "
           "busy = fewer)\n", ll.sent[0], (long)LL_RATE * LL_SECONDS, ll.sent[1]);
    if (ll.recover_s >= 0)
        printf("  after the leader's return every message arrived in %.2f s, each key in "
               "order\n", ll.recover_s);
    else
        printf("  after the leader's return NOT every message arrived within %d s\n",
               LL_RECOVER_BOUND_MS / 1000);

    printf("\nscale-out: relay A holds all %d shards, writers emit %d msgs/s (achieved %.0f); "
           "relay B starts.\n  Both run with lease_ttl_ms=%d. B's share: %ld shard leases.\n",
           shards, SCALE_RATE, so.emit_rate, SCALE_LEASE_TTL_MS, so.want);
    if (so.happened)
        printf("  %-44s %12.2f s       (%.1f lease periods; target: a few)\n",
               "B's start -> B holds its share", so.share_s,
               so.share_s * 1000.0 / SCALE_LEASE_TTL_MS);
    else
        printf("  %-44s %12.2f s       (did NOT happen within %d s; target: a few lease "
               "periods)\n", "B's start -> B holds its share", so.share_s,
               SCALE_BOUND_MS / 1000);
    printf("  leases at the end: A %ld, B %ld; %ld messages, all delivered once in key order "
           "unless stderr says otherwise\n", so.a_final, so.b_final, so.sent);

    printf("\nbroker outage: a relay, writers trickling %d msgs/s, all %d broker(s) down for "
           "%.0f s, then up\n  (%ld rows waiting when they came back)\n", OUTAGE_RATE,
           KAFKA_BROKERS, OUTAGE_MS / 1000.0, ou.queued);
    if (ou.happened)
        printf("  %-44s %12.3f s       (target < 1)\n",
               "brokers up -> first row acknowledged", ou.resume_s);
    else
        printf("  %-44s %12.3f s       (did NOT happen within %d s; target < 1)\n",
               "brokers up -> first row acknowledged", ou.resume_s, OUTAGE_BOUND_MS / 1000);
    printf("  %-44s %12.3f s       (the consumer reconnects within 0.1 s)\n",
           "brokers up -> first message received", ou.resume_consumer_s);

    printf("\n");
    printf("bench relay_drain_msgs_per_s %.0f msgs/s\n", relay_rate);
    printf("bench raw_delete_loop_rows_per_s %.0f rows/s\n", raw_rate);
    printf("bench relay_vs_raw_ratio %.3f ratio\n", relay_rate / raw_rate);
    printf("bench relay_peak_rss_mib %.1f MiB\n", mib(drain_pr.maxrss_kib));
    printf("bench relay_idle_rss_mib %.1f MiB\n", mib(idle_pr.maxrss_kib));
    printf("bench relay_latency_p50_ms %.2f ms\n", lat_relay[1].total.p50);
    printf("bench relay_latency_p99_ms %.2f ms\n", lat_relay[1].total.p99);
    printf("bench relay_latency_max_ms %.2f ms\n", lat_relay[1].total.max);
    printf("bench relay_after_commit_latency_p50_ms %.2f ms\n", lat_relay[1].after.p50);
    printf("bench relay_after_commit_latency_p99_ms %.2f ms\n", lat_relay[1].after.p99);
    printf("bench relay_after_commit_latency_max_ms %.2f ms\n", lat_relay[1].after.max);
    printf("bench relay_commit_roundtrip_p50_ms %.2f ms\n", lat_relay[1].commit.p50);
    printf("bench relay_commit_roundtrip_p99_ms %.2f ms\n", lat_relay[1].commit.p99);
    printf("bench relay_pickup_p99_ms %.2f ms\n", lat_relay[1].pickup.p99);
    printf("bench relay_latency_emit_rate_msgs_per_s %.0f msgs/s\n",
           (double)lat_relay[1].sent / lat_relay[1].seconds);
    printf("bench kafka_direct_latency_p50_ms %.2f ms\n", lat_direct[1].total.p50);
    printf("bench kafka_direct_latency_p99_ms %.2f ms\n", lat_direct[1].total.p99);
    printf("bench kafka_direct_latency_max_ms %.2f ms\n", lat_direct[1].total.max);
    for (int i = 0; i < 2; i++)
        print_rate_lines(lat_rates[i], &lat_relay[i], &lat_direct[i], 0);
    printf("bench relay_leaderless_healthy_ratio %.3f ratio\n", ll_ratio);
    printf("bench relay_leaderless_healthy_msgs_per_s %.0f msgs/s\n", ll.healthy_rate[1]);
    printf("bench relay_leaderless_baseline_msgs_per_s %.0f msgs/s\n", ll.healthy_rate[0]);
    printf("bench relay_leaderless_recover_s %.2f s\n",
           ll.recover_s >= 0 ? ll.recover_s : LL_RECOVER_BOUND_MS / 1000.0);
    printf("bench relay_scaleout_s %.2f s\n", so.share_s);
    printf("bench relay_scaleout_lease_ttl_ms %d ms\n", SCALE_LEASE_TTL_MS);
    printf("bench relay_outage_resume_s %.3f s\n", ou.resume_s);
    printf("bench relay_outage_resume_consumer_s %.3f s\n", ou.resume_consumer_s);
    printf("bench disk_fdatasync_before_raw_ms %.2f ms\n", fsync_raw);
    printf("bench disk_fdatasync_before_drain_ms %.2f ms\n", fsync_drain);
    printf("bench disk_fdatasync_before_latency_ms %.2f ms\n", fsync_lat[1]);
    status = checks_ok ? 0 : 1;

out:
    close(g_log_fd);
    return bench_end(status, kb, admin, pg);
}
