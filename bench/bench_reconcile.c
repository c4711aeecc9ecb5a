/*
 * bench_reconcile.c — how long does `ferry-reconcile check` take on a big
 * ferry database, and does it get in the writers' way?
 *
 * A throwaway cluster with the server's durable defaults, migrated, then
 * seeded with set-based SQL (INSERT ... SELECT generate_series):
 *
 *   ferry.outbox      N rows (FERRY_BENCH_RECONCILE_OUTBOX, default
 *                     1,000,000), all unpublished, on 10,000 keys over the
 *                     16 shards. Ids are UUIDv7-shaped and time-ordered,
 *                     built in SQL from the row's time, as the lag check
 *                     finds old rows by primary-key range. The first 1,000
 *                     are 2-3 hours old (lag); the rest were emitted over
 *                     the last 5 minutes, 20 of them tried max_attempts
 *                     times (over-attempted).
 *   ferry.saga        N sagas (_SAGAS, default 100,000) of definition
 *                     "order", created over the last 7 days: 100 running
 *                     and 100 compensating sagas an hour past their timer;
 *                     of the rest a third open with their timer tomorrow,
 *                     the others finished (completed, compensated, failed).
 *   ferry.inbox       N rows (_INBOX, default 1,000,000) of four consumers,
 *                     inserted in applied_at order as a live inbox grows:
 *                     the first 10,000 are 8 days old (past the 7-day
 *                     dedupe window), the rest from the last 6 days.
 *   ferry.dead_letter 6 relay and 4 consumer dead letters.
 *
 * then VACUUM ANALYZE (autovacuum's job on a live database, which the
 * bench does not wait for) and a CHECKPOINT. check runs with a rules file
 * holding the default budgets except outbox_lag: 1h, so that the healthy
 * rows stay younger than the budget however long the run takes, rather
 * than being dated in the future.
 *
 * Figures:
 *   reconcile_check_s              `ferry-reconcile check --json` (the
 *                                  release build, FERRY_RECONCILE_BIN, as a
 *                                  child process: start, connect, every
 *                                  sweep, report), median of
 *                                  FERRY_BENCH_ROUNDS (default 3) runs.
 *   reconcile_check_vs_scan_ratio  that / the baseline: a plain full scan
 *                                  of the same data, count(*) of outbox,
 *                                  saga and inbox with index paths turned
 *                                  off (three sequential scans), median of
 *                                  as many runs, interleaved with the
 *                                  checks. Well under 1 means detection
 *                                  reads indexes, not tables.
 *   reconcile_writer_p99_ratio     writers: 4 threads, a connection each,
 *                                  short transactions BEGIN; SELECT
 *                                  ferry.emit(...); INSERT into a table of
 *                                  the thread's own; COMMIT, back to back.
 *                                  p99 transaction latency (BEGIN sent ->
 *                                  COMMIT answered) while check runs in a
 *                                  loop / p99 with no check, windows of
 *                                  FERRY_BENCH_SECONDS (default 10), in the
 *                                  order base, check, check, base, each
 *                                  after a CHECKPOINT; samples pooled per
 *                                  kind.
 *   reconcile_writer_max_ms        the slowest writer transaction during
 *                                  check.
 *   reconcile_writers_blocked      writer transactions that took over 1 s
 *                                  during check (expected: 0).
 * Beside them: the baseline figures themselves, and a sampler that looks
 * at pg_stat_activity every 20 ms for writers waiting on a lock. When the
 * server has pg_stat_statements, where check's time goes in the server:
 * its statements by total time over the timed runs (check connects as its
 * own role, bench_reconcile, so its statements are told apart).
 *
 * A benchmark, not a test: timings never fail it. It exits 1 when
 * something did not work: seeding, a check that did not exit 4 (problems
 * found) or whose report does not find exactly what was seeded (checked
 * on every run, the ones under writer load too), a writer error.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ferry.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/pgtmp.h"
#include "benchutil.h"

enum {
    DEFAULT_OUTBOX = 1000000,
    DEFAULT_SAGAS = 100000,
    DEFAULT_INBOX = 1000000,
    DEFAULT_SECONDS = 10,
    SECONDS_MAX = 600,
    DEFAULT_ROUNDS = 3,
    ROUNDS_MAX = 15,

    /* What is seeded as a problem; the rest is healthy. */
    OLD_OUTBOX = 1000,              /* older than outbox_lag */
    OVER_ATTEMPTED = 20,            /* recent, attempts = max_attempts */
    OUTBOX_KEYS = 10000,
    SHARDS = 16,                    /* ferry.settings.shard_count's default */
    OVERDUE_SAGAS = 100,            /* running, and as many compensating */
    OLD_INBOX = 10000,              /* older than inbox_retention */
    INBOX_KEYS = 10000,
    DEAD_RELAY = 6,
    DEAD_CONSUMER = 4,
    MAX_ATTEMPTS = 10,              /* the budget, written into the rules file */

    WRITERS = 4,
    WRITER_KEYS = 64,               /* keys per writer, each writer its own */
    BLOCKED_MS = 1000,              /* a writer transaction this slow was blocked */
    SAMPLE_MS = 20,                 /* the lock-wait sampler's period */
    CHECK_TIMEOUT_MS = 900000,      /* one check run; past this it is killed */
    TOP_STATEMENTS = 8,
};
_Static_assert(ROUNDS_MAX <= BENCH_SAMPLES_MAX, "rounds fit bench_median");
_Static_assert(OLD_OUTBOX >= SHARDS && OLD_OUTBOX <= OUTBOX_KEYS,
               "the lagging rows: one per key, on every shard");

static const char ROLE[] = "bench_reconcile";
static const char WRITER_APP[] = "bench-writer";

/* The budgets check runs with: the defaults, except outbox_lag (see the
 * top of the file). Written out whole so that what is seeded as a problem
 * does not depend on defaults that may change. */
static const char rules_yaml[] =
    "# bench-reconcile: the default budgets, except outbox_lag (bench/bench_reconcile.c)\n"
    "budgets:\n"
    "  outbox_lag: 1h\n"
    "  max_attempts: 10\n"
    "  saga_grace: 30s\n"
    "  inbox_retention: 7d\n"
    "  outbox_retention: 7d\n"
    "  statement_timeout: 30s\n"
    "  batch: 1000\n";

typedef struct bench {
    fpg *pg;
    PGconn *admin;
    const char *bin;            /* ferry-reconcile */
    char *check_db;             /* conninfo of the check's role */
    char rules_path[64];
    long outbox, sagas, inbox;
    long seconds;
    int rounds;
    int have_pgss;              /* pg_stat_statements is there */
} bench;

/* ---------------------------------------------------------------- util */

/* ---------------------------------------------------------------- seeding */

/* A UUIDv7-shaped id from a time and a serial: 48 bits of Unix ms, version
 * 7, rand_a 0, variant 10, then the serial where the random bits go. Ids
 * sort by time, and by serial within a millisecond, as ferry's own do. */
static const char uuid_fn_sql[] =
    "CREATE FUNCTION bench_uuid7(ts timestamptz, n bigint) RETURNS uuid "
    "LANGUAGE sql IMMUTABLE STRICT AS $$ "
    "SELECT (lpad(to_hex(floor(extract(epoch FROM ts) * 1000)::bigint), 12, '0') "
    "|| '7000' || '8' || lpad(to_hex(n), 15, '0'))::uuid $$";

static const char seed_outbox_sql[] =
    "WITH p AS (SELECT $1::timestamptz AS t0, $2::bigint AS n, $3::bigint AS old, "
    "                  $4::bigint AS keys, $5::bigint AS over, $6::int AS shards) "
    "INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload, seq, shard, "
    "                          created_at, available_at, attempts, last_error) "
    "SELECT bench_uuid7(t, i), 'orders', 'order', 'o-' || (i - 1) % keys, 'OrderPlaced', "
    "       jsonb_build_object('order_id', 'o-' || (i - 1) % keys, 'line', i, "
    "                          'amount', i % 997, 'currency', 'EUR'), "
    "       (i - 1) / keys + 1, ((i - 1) % keys % shards)::int, t, t, "
    "       CASE WHEN tried THEN 10 ELSE 0 END, "
    "       CASE WHEN tried THEN 'broker: Message size too large' END "
    "  FROM (SELECT i, keys, shards, "
    "               CASE WHEN i <= old "
    "                    THEN t0 - interval '3 hours' + i * interval '1 second' "
    "                    ELSE t0 - interval '5 minutes' "
    "                         + (i - old) * (interval '5 minutes' / (n - old)::float8) END AS t, "
    "               i > old AND (i - old) % ((n - old) / over) = 0 "
    "                   AND (i - old) / ((n - old) / over) <= over AS tried "
    "          FROM p, generate_series(1, p.n) AS i) s";

static const char seed_saga_sql[] =
    "WITH p AS (SELECT $1::timestamptz AS t0, $2::bigint AS n, $3::bigint AS overdue) "
    "INSERT INTO ferry.saga (id, definition, definition_hash, state, current_step, context, "
    "                        deadline, version, created_at, updated_at) "
    "SELECT bench_uuid7(c, i), 'order', encode(sha256('bench order v1'::bytea), 'hex'), st, "
    "       (i % 3)::int, jsonb_build_object('order_id', 'o-' || i, 'amount', i % 997), "
    "       CASE WHEN i <= 2 * overdue "
    "            THEN t0 - interval '1 hour' - i * interval '1 second' "
    "            WHEN st IN ('running', 'compensating') "
    "            THEN t0 + interval '1 day' + i * interval '1 millisecond' END, "
    "       3, c, c + interval '2 seconds' "
    "  FROM (SELECT i, t0, overdue, "
    "               t0 - interval '7 days' + i * (interval '7 days' / n::float8) AS c, "
    "               CASE WHEN i <= overdue THEN 'running' "
    "                    WHEN i <= 2 * overdue THEN 'compensating' "
    "                    ELSE (ARRAY['running', 'running', 'compensating', 'compensated', "
    "                                'failed', 'completed', 'completed', 'completed', "
    "                                'completed', 'completed'])[1 + i % 10] END AS st "
    "          FROM p, generate_series(1, p.n) AS i) s";

static const char seed_inbox_sql[] =
    "WITH p AS (SELECT $1::timestamptz AS t0, $2::bigint AS n, $3::bigint AS old, "
    "                  $4::bigint AS keys) "
    "INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, applied_at) "
    "SELECT (ARRAY['billing', 'shipping', 'ledger', 'mailer'])[1 + i % 4], bench_uuid7(a, i), "
    "       'orders', 'o-' || (i / 4) % keys, (i / 4) / keys + 1, a "
    "  FROM (SELECT i, keys, "
    "               CASE WHEN i <= old "
    "                    THEN t0 - interval '8 days' + i * interval '1 second' "
    "                    ELSE t0 - interval '6 days' "
    "                         + (i - old) * (interval '6 days' / (n - old)::float8) END AS a "
    "          FROM p, generate_series(1, p.n) AS i) s";

static const char seed_dead_sql[] =
    "WITH p AS (SELECT $1::timestamptz AS t0, $2::int AS relay, $3::int AS consumer) "
    "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregateid, type, payload, "
    "                               seq, shard, created_at, failed_at, attempts, reason) "
    "SELECT bench_uuid7(t0 - interval '2 hours', 900000000 + k), '', 'bench.dead', "
    "       'dead-' || k, 'OrderPlaced', '{}'::jsonb, 1, k % 16, t0 - interval '2 hours', "
    "       t0 - interval '1 hour', 10, 'broker: Message size too large' "
    "  FROM p, generate_series(1, p.relay) AS k "
    "UNION ALL "
    "SELECT bench_uuid7(t0 - interval '3 hours', 910000000 + k), 'billing', 'orders', "
    "       'o-x' || k, 'OrderPlaced', '{}'::jsonb, 1, -1, t0 - interval '3 hours', "
    "       t0 - interval '2 hours', 5, 'handler failed: no account o-x' || k "
    "  FROM p, generate_series(1, p.consumer) AS k";

/* One seeding statement, timed: "seeded ROWS rows of TABLE in S s" on
 * stderr; 0, or -1 with the reason there. */
static int seed_table(PGconn *conn, const char *table, long rows, const char *sql, int n,
                      const char *const *params)
{
    int64_t t = clk_mono_us();
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (ok)
        fprintf(stderr, "bench: seeded %ld rows of %s in %.1f s\n", rows, table,
                (double)(clk_mono_us() - t) / 1e6);
    else
        fprintf(stderr, "bench: seeding %s failed: %s", table, PQerrorMessage(conn));
    PQclear(res);
    return ok ? 0 : -1;
}

static int seed(bench *b)
{
    static const char *const setup[] = {
        "SET synchronous_commit = off",    /* the seeding session only */
        /* A relay with a million rows to go is busy, and a busy relay
         * turns the emit NOTIFY off: it holds every shard's busy lock
         * (ferry.wake_shard_lock), as this session does from now on. */
        "SELECT pg_advisory_lock(l.classid, l.objid) FROM ferry.settings, "
        "generate_series(0, shard_count - 1) s, ferry.wake_shard_lock(s) l",
        "CREATE TABLE bench_writer_0 (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "n bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE bench_writer_1 (LIKE bench_writer_0 INCLUDING ALL)",
        "CREATE TABLE bench_writer_2 (LIKE bench_writer_0 INCLUDING ALL)",
        "CREATE TABLE bench_writer_3 (LIKE bench_writer_0 INCLUDING ALL)",
    };
    _Static_assert(WRITERS == 4, "one table per writer");
    if (bench_exec_all(b->admin, setup, sizeof setup / sizeof setup[0]) != 0 ||
        bench_exec(b->admin, uuid_fn_sql) != 0)
        return -1;
    /* The shape of the ids: version 7, variant 10, and ordered against the
     * ids ferry.uuid_v7() makes now. */
    char ok[16];
    if (bench_query_text(b->admin,
                         "SELECT bench_uuid7(now() - interval '1 second', 999999)::text "
                         "  ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7000-8[0-9a-f]{3}-[0-9a-f]{12}$' "
                         "AND bench_uuid7(now() - interval '1 second', 999999) < ferry.uuid_v7() "
                         "AND bench_uuid7(now(), 5) < bench_uuid7(now() + interval '1 ms', 1)",
                         0, NULL, ok, sizeof ok) != 0)
        return -1;
    if (strcmp(ok, "t") != 0) {
        fprintf(stderr, "bench: bench_uuid7() does not make time-ordered UUIDv7s\n");
        return -1;
    }

    char t0[64];
    if (bench_query_text(b->admin, "SELECT now()::text", 0, NULL, t0, sizeof t0) != 0)
        return -1;
    char n[24], old[24], keys[24], over[24], shards[24], overdue[24], relay[24], consumer[24];
    snprintf(n, sizeof n, "%ld", b->outbox);
    snprintf(old, sizeof old, "%d", OLD_OUTBOX);
    snprintf(keys, sizeof keys, "%d", OUTBOX_KEYS);
    snprintf(over, sizeof over, "%d", OVER_ATTEMPTED);
    snprintf(shards, sizeof shards, "%d", SHARDS);
    const char *po[6] = {t0, n, old, keys, over, shards};
    if (seed_table(b->admin, "ferry.outbox", b->outbox, seed_outbox_sql, 6, po) != 0)
        return -1;

    snprintf(n, sizeof n, "%ld", b->sagas);
    snprintf(overdue, sizeof overdue, "%d", OVERDUE_SAGAS);
    const char *ps[3] = {t0, n, overdue};
    if (seed_table(b->admin, "ferry.saga", b->sagas, seed_saga_sql, 3, ps) != 0)
        return -1;

    snprintf(n, sizeof n, "%ld", b->inbox);
    snprintf(old, sizeof old, "%d", OLD_INBOX);
    snprintf(keys, sizeof keys, "%d", INBOX_KEYS);
    const char *pi[4] = {t0, n, old, keys};
    if (seed_table(b->admin, "ferry.inbox", b->inbox, seed_inbox_sql, 4, pi) != 0)
        return -1;

    snprintf(relay, sizeof relay, "%d", DEAD_RELAY);
    snprintf(consumer, sizeof consumer, "%d", DEAD_CONSUMER);
    const char *pd[3] = {t0, relay, consumer};
    if (seed_table(b->admin, "ferry.dead_letter", DEAD_RELAY + DEAD_CONSUMER, seed_dead_sql, 3,
                   pd) != 0)
        return -1;

    /* On a live database autovacuum keeps the statistics and the
     * visibility map; here the bench does it rather than wait for it. */
    int64_t t = clk_mono_us();
    if (bench_exec(b->admin, "VACUUM (ANALYZE) ferry.outbox, ferry.saga, ferry.inbox, "
                             "ferry.dead_letter, ferry.lease") != 0 ||
        bench_exec(b->admin, "CHECKPOINT") != 0 ||
        bench_exec(b->admin, "SET synchronous_commit = on") != 0)
        return -1;
    fprintf(stderr, "bench: VACUUM ANALYZE + CHECKPOINT in %.1f s\n",
            (double)(clk_mono_us() - t) / 1e6);

    long long got[3];
    if (bench_query_ll(b->admin, "SELECT count(*) FROM ferry.outbox", NULL, &got[0]) != 0 ||
        bench_query_ll(b->admin, "SELECT count(*) FROM ferry.saga", NULL, &got[1]) != 0 ||
        bench_query_ll(b->admin, "SELECT count(*) FROM ferry.inbox", NULL, &got[2]) != 0)
        return -1;
    if (got[0] != b->outbox || got[1] != b->sagas || got[2] != b->inbox) {
        fprintf(stderr, "bench: seeded %lld/%lld/%lld rows, wanted %ld/%ld/%ld\n", got[0],
                got[1], got[2], b->outbox, b->sagas, b->inbox);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- check */

typedef struct check_run {
    int status;                 /* exit status; 128 + N for signal N */
    double seconds;             /* fork -> exit */
    char *out;                  /* stdout, NUL-terminated; the caller frees */
    size_t len;
} check_run;

/* Run `ferry-reconcile check --json` to its end, stdout captured, stderr
 * ours. 0 when it ran (whatever its status), -1 when it could not be run
 * or did not end within CHECK_TIMEOUT_MS (then it is killed). */
static int run_check(const bench *b, check_run *r)
{
    const char *argv[] = {b->bin, "check", "--db", b->check_db, "--rules", b->rules_path,
                          "--json", "--no-progress", NULL};
    memset(r, 0, sizeof *r);
    size_t cap = 1 << 16;
    if ((r->out = malloc(cap)) == NULL)
        return -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "bench: pipe: %s\n", strerror(errno));
        return -1;
    }
    int64_t t0 = clk_mono_us();
    pid_t pid = bench_spawn(argv, fds[1], -1);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    int rc = 0;
    int64_t deadline = t0 + (int64_t)CHECK_TIMEOUT_MS * 1000;
    for (;;) {
        int64_t left = deadline - clk_mono_us();
        if (left <= 0) {
            fprintf(stderr, "bench: ferry-reconcile check ran for over %d s; killed\n",
                    CHECK_TIMEOUT_MS / 1000);
            kill(pid, SIGKILL);
            rc = -1;
            break;
        }
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&p, 1, (int)(left / 1000 + 1));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            fprintf(stderr, "bench: poll: %s\n", strerror(errno));
            kill(pid, SIGKILL);
            rc = -1;
            break;
        }
        if (pr == 0)
            continue;
        if (cap - r->len < 4096) {
            char *grown = realloc(r->out, cap * 2);
            if (grown == NULL) {
                kill(pid, SIGKILL);
                rc = -1;
                break;
            }
            r->out = grown;
            cap *= 2;
        }
        ssize_t got = read(fds[0], r->out + r->len, cap - r->len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;              /* EOF: the child closed its stdout */
        r->len += (size_t)got;
    }
    close(fds[0]);
    r->out[r->len] = '\0';
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            fprintf(stderr, "bench: waitpid: %s\n", strerror(errno));
            return -1;
        }
    r->seconds = (double)(clk_mono_us() - t0) / 1e6;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r->status == 127) {
        fprintf(stderr, "bench: could not run %s\n", b->bin);
        return -1;
    }
    return rc;
}

/* What check must find: exactly what was seeded. */
typedef struct expected {
    long lag, over_attempted, past_deadline, compensations, dead_letters, garbage;
} expected;

static const expected seeded = {
    .lag = OLD_OUTBOX,
    .over_attempted = OVER_ATTEMPTED,
    .past_deadline = OVERDUE_SAGAS,
    .compensations = OVERDUE_SAGAS,
    .dead_letters = DEAD_RELAY + DEAD_CONSUMER,
    .garbage = OLD_INBOX,
};

/* The rows of one sweep's findings: rows[i] for the findings of
 * problems[i] (problems NULL: every finding into rows[0]); findings of
 * any other problem are counted in *others. -1 when the sweep is
 * missing, did not run, had errors or dropped findings. */
static int tally(json_t *sweeps, const char *sweep, const char *const *problems, long *rows,
                 long *others)
{
    json_t *s = json_object_get(sweeps, sweep);
    json_t *findings = json_object_get(s, "findings");
    if (!json_is_true(json_object_get(s, "ran")) || !json_is_array(findings) ||
        json_integer_value(json_object_get(s, "errors")) != 0 ||
        json_integer_value(json_object_get(s, "more")) != 0) {
        fprintf(stderr, "bench: the report's sweep %s did not run whole (ran %s, errors %lld, "
                "findings left out %lld)\n", sweep,
                json_is_true(json_object_get(s, "ran")) ? "true" : "false",
                (long long)json_integer_value(json_object_get(s, "errors")),
                (long long)json_integer_value(json_object_get(s, "more")));
        return -1;
    }
    size_t i;
    json_t *f;
    json_array_foreach(findings, i, f) {
        const char *pb = json_string_value(json_object_get(f, "problem"));
        long count = (long)json_integer_value(json_object_get(f, "count"));
        int k = 0;
        if (problems != NULL)
            for (k = 0; problems[k] != NULL; k++)
                if (pb != NULL && strcmp(pb, problems[k]) == 0)
                    break;
        if (problems == NULL || problems[k] != NULL)
            rows[k] += count;
        else
            *others += 1;
    }
    return 0;
}

static void print_findings(json_t *sweeps)
{
    const char *name;
    json_t *s;
    json_object_foreach(sweeps, name, s) {
        size_t i;
        json_t *f;
        json_array_foreach(json_object_get(s, "findings"), i, f)
            fprintf(stderr, "  %s: %s: %s\n", name,
                    json_string_value(json_object_get(f, "problem")),
                    json_string_value(json_object_get(f, "message")));
    }
}

/* 0 when check exited 4 and its report found exactly what was seeded. The
 * problem names of the outbox and saga sweeps are the README's; dead
 * letters and garbage are counted whatever their findings are called. */
static int verify_report(const check_run *r)
{
    static const char *const outbox_problems[] = {"lag", "over_attempted", NULL};
    static const char *const saga_problems[] = {"past_deadline", NULL};
    static const char *const comp_problems[] = {"compensation_unfinished", NULL};
    json_error_t jerr;
    json_t *doc = json_loadb(r->out, r->len, 0, &jerr);
    if (doc == NULL) {
        fprintf(stderr, "bench: check (exit %d) printed no JSON report: %s (line %d)\n",
                r->status, jerr.text, jerr.line);
        return -1;
    }
    int rc = -1;
    json_t *sweeps = json_object_get(doc, "sweeps");
    json_t *errors = json_object_get(doc, "errors");
    if (r->status != 4 || json_integer_value(json_object_get(doc, "status")) != 4 ||
        !json_is_array(errors) || json_array_size(errors) != 0) {
        fprintf(stderr, "bench: check exited %d (report status %lld, %zu errors); wanted 4: "
                "problems found, no operational error\n", r->status,
                (long long)json_integer_value(json_object_get(doc, "status")),
                json_array_size(errors));
        size_t i;
        json_t *e;
        json_array_foreach(errors, i, e)
            fprintf(stderr, "  %s: %s\n", json_string_value(json_object_get(e, "sweep")),
                    json_string_value(json_object_get(e, "message")));
        goto out;
    }
    long outbox[2] = {0, 0}, rules = 0, others = 0;
    expected got = {0};
    if (tally(sweeps, "outbox", outbox_problems, outbox, &others) != 0 ||
        tally(sweeps, "sagas", saga_problems, &got.past_deadline, &others) != 0 ||
        tally(sweeps, "compensations", comp_problems, &got.compensations, &others) != 0 ||
        tally(sweeps, "dead_letters", NULL, &got.dead_letters, &others) != 0 ||
        tally(sweeps, "garbage", NULL, &got.garbage, &others) != 0 ||
        tally(sweeps, "rules", NULL, &rules, &others) != 0)
        goto out;
    got.lag = outbox[0];
    got.over_attempted = outbox[1];
    if (memcmp(&got, &seeded, sizeof got) != 0 || others != 0 || rules != 0) {
        fprintf(stderr, "bench: check's report does not match what was seeded:\n"
                "  lag %ld (seeded %ld), over_attempted %ld (%ld), past_deadline %ld (%ld), "
                "compensation_unfinished %ld (%ld), dead letters %ld (%ld), garbage %ld (%ld), "
                "rules %ld (0), findings of other problems %ld (0); the findings:\n",
                got.lag, seeded.lag, got.over_attempted, seeded.over_attempted,
                got.past_deadline, seeded.past_deadline, got.compensations,
                seeded.compensations, got.dead_letters, seeded.dead_letters, got.garbage,
                seeded.garbage, rules, others);
        print_findings(sweeps);
        goto out;
    }
    rc = 0;
out:
    json_decref(doc);
    return rc;
}

/* One check, run and verified; *seconds its wall time. */
static int check_once(const bench *b, double *seconds)
{
    check_run r;
    int rc = run_check(b, &r);
    if (rc == 0)
        rc = verify_report(&r);
    if (rc == 0)
        *seconds = r.seconds;
    free(r.out);
    return rc;
}

/* ---------------------------------------------------------------- baseline */

static PGconn *scan_conn(const bench *b)
{
    PGconn *conn = fpg_connect(b->pg);
    if (conn == NULL)
        return NULL;
    if (bench_exec(conn, "SET enable_indexscan = off") != 0 ||
        bench_exec(conn, "SET enable_indexonlyscan = off") != 0 ||
        bench_exec(conn, "SET enable_bitmapscan = off") != 0) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* The baseline: every row of the three big tables read once. */
static int full_scan(const bench *b, PGconn *conn, double *seconds)
{
    static const char *const sql[3] = {"SELECT count(*) FROM ferry.outbox",
                                       "SELECT count(*) FROM ferry.saga",
                                       "SELECT count(*) FROM ferry.inbox"};
    const long want[3] = {b->outbox, b->sagas, b->inbox};
    int64_t t0 = clk_mono_us();
    for (int i = 0; i < 3; i++) {
        long long n;
        if (bench_query_ll(conn, sql[i], NULL, &n) != 0)
            return -1;
        if (n != want[i]) {
            fprintf(stderr, "bench: %s: %lld rows, wanted %ld\n", sql[i], n, want[i]);
            return -1;
        }
    }
    *seconds = (double)(clk_mono_us() - t0) / 1e6;
    return 0;
}

/* ---------------------------------------------------------------- writers */

typedef struct writer {
    int index;
    PGconn *conn;
    long serial;                /* transactions so far, over all phases */
    double *lat_ms;             /* this phase's latencies */
    size_t n, cap;
    pthread_t thread;
} writer;

static atomic_int g_stop;       /* the phase is over */
static atomic_int g_failed;     /* a writer or the sampler failed */

static int writer_connect(const bench *b, writer *w)
{
    if ((w->conn = fpg_connect(b->pg)) == NULL)
        return -1;
    char insert[128];
    snprintf(insert, sizeof insert, "INSERT INTO bench_writer_%d (n) VALUES ($1::bigint)",
             w->index);
    char app[64];
    snprintf(app, sizeof app, "SET application_name = '%s'", WRITER_APP);
    if (bench_exec(w->conn, app) != 0 ||
        bench_result_ok(w->conn, PQprepare(w->conn, "w_emit",
                                           "SELECT ferry.emit('bench.w', $1::text, 'WriterEvent', "
                                           "'{}'::jsonb)", 0, NULL),
                        PGRES_COMMAND_OK, "PREPARE w_emit") != 0 ||
        bench_result_ok(w->conn, PQprepare(w->conn, "w_insert", insert, 0, NULL),
                        PGRES_COMMAND_OK, "PREPARE w_insert") != 0)
        return -1;
    return 0;
}

/* One short transaction, as a service writes them: its latency in ms, or
 * -1 on failure. */
static double writer_txn(writer *w)
{
    char key[32], n[24];
    snprintf(key, sizeof key, "w%d-%ld", w->index, w->serial % WRITER_KEYS);
    snprintf(n, sizeof n, "%ld", w->serial);
    const char *pe[1] = {key}, *pn[1] = {n};
    int64_t t0 = clk_mono_us();
    if (bench_result_ok(w->conn, PQexec(w->conn, "BEGIN"), PGRES_COMMAND_OK, "BEGIN") != 0)
        return -1;
    if (bench_result_ok(w->conn, PQexecPrepared(w->conn, "w_emit", 1, pe, NULL, NULL, 0),
                        PGRES_TUPLES_OK, "ferry.emit") != 0 ||
        bench_result_ok(w->conn, PQexecPrepared(w->conn, "w_insert", 1, pn, NULL, NULL, 0),
                        PGRES_COMMAND_OK, "INSERT") != 0) {
        PQclear(PQexec(w->conn, "ROLLBACK"));
        return -1;
    }
    if (bench_result_ok(w->conn, PQexec(w->conn, "COMMIT"), PGRES_COMMAND_OK, "COMMIT") != 0)
        return -1;
    w->serial++;
    return (double)(clk_mono_us() - t0) / 1000.0;
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    while (!atomic_load(&g_stop) && !atomic_load(&g_failed)) {
        double ms = writer_txn(w);
        if (ms < 0) {
            atomic_store(&g_failed, 1);
            break;
        }
        if (w->n == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 4096;
            double *v = realloc(w->lat_ms, cap * sizeof *v);
            if (v == NULL) {
                fprintf(stderr, "bench: out of memory\n");
                atomic_store(&g_failed, 1);
                break;
            }
            w->lat_ms = v;
            w->cap = cap;
        }
        w->lat_ms[w->n++] = ms;
    }
    return NULL;
}

/* Looks every SAMPLE_MS at the writers' sessions for one waiting on a
 * heavyweight lock. */
typedef struct sampler {
    PGconn *conn;
    long samples, waiting;      /* looks, and looks that saw a writer waiting */
    char what[128];             /* the first wait seen: wait_event, and the query */
    pthread_t thread;
} sampler;

static void *sampler_main(void *arg)
{
    sampler *s = arg;
    const char *p[1] = {WRITER_APP};
    while (!atomic_load(&g_stop) && !atomic_load(&g_failed)) {
        PGresult *res = bench_query(
            s->conn, "sampler",
            "SELECT count(*), min(wait_event || ': ' || left(query, 60)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND wait_event_type = 'Lock'", 1, p);
        if (res == NULL) {
            atomic_store(&g_failed, 1);
            break;
        }
        s->samples++;
        if (strtol(PQgetvalue(res, 0, 0), NULL, 10) > 0) {
            if (s->waiting++ == 0)
                snprintf(s->what, sizeof s->what, "%s", PQgetvalue(res, 0, 1));
        }
        PQclear(res);
        clk_sleep_ms(SAMPLE_MS);
    }
    return NULL;
}

/* One phase's outcome. */
typedef struct phase {
    int with_check;
    double seconds;             /* first BEGIN -> the writers stopped */
    size_t n;                   /* writer transactions */
    double *lat_ms;             /* all of them; freed by phases_free */
    long samples, waiting;
    char what[128];
    int checks;                 /* check runs during the phase */
    double check_total_s;       /* ... their wall time, summed */
} phase;

/*
 * Writers for FERRY_BENCH_SECONDS; with_check: check runs back to back
 * meanwhile, and the writers go on until the last check ends, so that
 * every check runs under load.
 */
static int run_phase(bench *b, writer *w, int with_check, phase *ph)
{
    memset(ph, 0, sizeof *ph);
    ph->with_check = with_check;
    if (bench_exec(b->admin, "CHECKPOINT") != 0)
        return -1;
    sampler s = {0};
    if ((s.conn = fpg_connect(b->pg)) == NULL)
        return -1;
    atomic_store(&g_stop, 0);
    int started = 0, sampling = 0, rc = -1;
    for (int i = 0; i < WRITERS; i++)
        w[i].n = 0;
    int64_t t0 = clk_mono_us();
    for (; started < WRITERS; started++)
        if (pthread_create(&w[started].thread, NULL, writer_main, &w[started]) != 0) {
            fprintf(stderr, "bench: pthread_create failed\n");
            goto stop;
        }
    if (pthread_create(&s.thread, NULL, sampler_main, &s) != 0) {
        fprintf(stderr, "bench: pthread_create failed\n");
        goto stop;
    }
    sampling = 1;
    int64_t end = t0 + (int64_t)b->seconds * 1000000;
    if (with_check) {
        do {
            double sec;
            if (check_once(b, &sec) != 0)
                goto stop;
            ph->checks++;
            ph->check_total_s += sec;
        } while (clk_mono_us() < end && !atomic_load(&g_failed));
    } else {
        while (clk_mono_us() < end && !atomic_load(&g_failed))
            clk_sleep_ms(50);
    }
    rc = 0;
stop:
    atomic_store(&g_stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(w[i].thread, NULL);
    if (sampling)
        pthread_join(s.thread, NULL);
    ph->seconds = (double)(clk_mono_us() - t0) / 1e6;
    PQfinish(s.conn);
    if (atomic_load(&g_failed))
        rc = -1;
    if (rc != 0)
        return -1;
    ph->samples = s.samples;
    ph->waiting = s.waiting;
    snprintf(ph->what, sizeof ph->what, "%s", s.what);
    for (int i = 0; i < WRITERS; i++)
        ph->n += w[i].n;
    if (ph->n == 0 || (ph->lat_ms = malloc(ph->n * sizeof *ph->lat_ms)) == NULL) {
        fprintf(stderr, "bench: no writer transactions to count\n");
        return -1;
    }
    size_t k = 0;
    for (int i = 0; i < WRITERS; i++) {
        memcpy(ph->lat_ms + k, w[i].lat_ms, w[i].n * sizeof *ph->lat_ms);
        k += w[i].n;
    }
    return 0;
}

/* The latencies of every phase of one kind, pooled and sorted. */
typedef struct pooled {
    double *v;
    size_t n;
    double seconds;
    long samples, waiting;
    const char *what;           /* the first lock wait seen, or "" */
    int checks;
    double check_total_s;
} pooled;

static int pool(const phase *ph, int nph, int with_check, pooled *out)
{
    memset(out, 0, sizeof *out);
    out->what = "";
    for (int i = 0; i < nph; i++)
        if (ph[i].with_check == with_check)
            out->n += ph[i].n;
    if ((out->v = malloc(out->n * sizeof *out->v)) == NULL)
        return -1;
    size_t k = 0;
    for (int i = 0; i < nph; i++) {
        if (ph[i].with_check != with_check)
            continue;
        memcpy(out->v + k, ph[i].lat_ms, ph[i].n * sizeof *out->v);
        k += ph[i].n;
        out->seconds += ph[i].seconds;
        out->samples += ph[i].samples;
        out->waiting += ph[i].waiting;
        out->checks += ph[i].checks;
        out->check_total_s += ph[i].check_total_s;
        if (out->what[0] == '\0')
            out->what = ph[i].what;
    }
    qsort(out->v, out->n, sizeof *out->v, bench_cmp_double);
    return 0;
}

static long over_ms(const pooled *p, double ms)
{
    long n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += p->v[i] > ms;
    return n;
}

/* ---------------------------------------------------------------- statements */

/* Where check's time goes in the server, from pg_stat_statements (its
 * statements are those of its own role), over the timed runs: a table
 * into a new string (the caller frees), to be printed with the rest; NULL
 * when the extension is not there or could not be read. */
static char *collect_statements(const bench *b)
{
    if (!b->have_pgss)
        return NULL;
    char top[16];
    snprintf(top, sizeof top, "%d", TOP_STATEMENTS);
    const char *p[2] = {ROLE, top};
    PGresult *res = bench_query(
        b->admin, "pg_stat_statements",
        "SELECT calls, round(total_exec_time::numeric, 1), rows, "
        "       (shared_blks_hit + shared_blks_read) / greatest(calls, 1), "
        "       left(regexp_replace(query, '\\s+', ' ', 'g'), 200), "
        "       round((sum(total_exec_time) OVER ())::numeric, 1) "
        "  FROM pg_stat_statements "
        " WHERE userid = $1::regrole "
        " ORDER BY total_exec_time DESC LIMIT $2::int", 2, p);
    if (res == NULL)
        return NULL;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL) {
        PQclear(res);
        return NULL;
    }
    int n = PQntuples(res);
    fprintf(f, "\nwhere check's time goes in the server (pg_stat_statements over the %d timed "
            "runs, per run):\n", b->rounds);
    if (n > 0)
        fprintf(f, "  all its statements: %.1f ms\n",
                strtod(PQgetvalue(res, 0, 5), NULL) / b->rounds);
    fprintf(f, "  %6s %9s %8s %12s  %s\n", "calls", "ms", "rows", "blocks/call", "statement");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %6.0f %9.1f %8.0f %12s  %s\n",
                strtod(PQgetvalue(res, i, 0), NULL) / b->rounds,
                strtod(PQgetvalue(res, i, 1), NULL) / b->rounds,
                strtod(PQgetvalue(res, i, 2), NULL) / b->rounds, PQgetvalue(res, i, 3),
                PQgetvalue(res, i, 4));
    PQclear(res);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* ---------------------------------------------------------------- report */

typedef struct figures {
    double check_s[ROUNDS_MAX];
    double scan_s[ROUNDS_MAX];
    pooled base, during;
    char *statements;           /* collect_statements(), or NULL */
    double backlog_s;           /* one check with every unpublished row lagging */
} figures;

static void print_report(const bench *b, const figures *f, const char *server,
                         const char *fsync_s)
{
    int n = b->rounds;
    double check = bench_median(f->check_s, n), scan = bench_median(f->scan_s, n);
    double p99_base = bench_percentile(f->base.v, f->base.n, 99);
    double p99_check = bench_percentile(f->during.v, f->during.n, 99);
    double max_check = f->during.v[f->during.n - 1];
    long blocked = over_ms(&f->during, BLOCKED_MS);

    printf("ferry-reconcile check benchmark (libferry %s)\n", ferry_version());
    printf("server: PostgreSQL %s, fsync=%s (durable defaults), after VACUUM ANALYZE\n", server,
           fsync_s);
    printf("data: ferry.outbox %ld unpublished rows (%d older than outbox_lag, %d "
           "over-attempted), ferry.saga %ld\n  (%d running and %d compensating past their "
           "timer), ferry.inbox %ld rows (%d past inbox_retention), %d dead letters\n",
           b->outbox, OLD_OUTBOX, OVER_ATTEMPTED, b->sagas, OVERDUE_SAGAS, OVERDUE_SAGAS,
           b->inbox, OLD_INBOX, DEAD_RELAY + DEAD_CONSUMER);
    printf("check: %s check --json (a child process, start to exit), budgets the defaults "
           "but outbox_lag 1h;\n  every run exited 4 and reported exactly the seeded "
           "problems\n", b->bin);
    printf("baseline: count(*) of outbox, saga and inbox with index paths off (full scans), "
           "interleaved with the checks\n");

    bench_rounds_head(26, n);
    bench_rounds_row(26, "check s", f->check_s, n, 3);
    bench_rounds_row(26, "full scan s", f->scan_s, n, 3);
    printf("check / full scan %.3f\n", check / scan);

    printf("\nwriters: %d threads, a connection each: BEGIN; SELECT ferry.emit(...); INSERT "
           "into its own table; COMMIT;\n  %ld s windows in the order base, check, check, "
           "base (check: runs back to back, writers on until the last ends)\n",
           WRITERS, b->seconds);
    printf("  %-6s %8s %8s %8s %8s %9s %9s %8s %14s\n", "", "txns", "txn/s", "p50 ms",
           "p99 ms", "max ms", "> 1 s", "checks", "lock waits");
    const pooled *ps[2] = {&f->base, &f->during};
    for (int i = 0; i < 2; i++) {
        const pooled *p = ps[i];
        char waits[32];
        snprintf(waits, sizeof waits, "%ld/%ld", p->waiting, p->samples);
        printf("  %-6s %8zu %8.0f %8.2f %8.2f %9.2f %9ld %8d %14s\n", i ? "check" : "base",
               p->n, (double)p->n / p->seconds, bench_percentile(p->v, p->n, 50),
               bench_percentile(p->v, p->n, 99), p->v[p->n - 1], over_ms(p, BLOCKED_MS), p->checks,
               waits);
    }
    printf("  lock waits: looks at pg_stat_activity every %d ms that saw a writer waiting on "
           "a lock%s%s\n", SAMPLE_MS, f->during.what[0] ? "; first seen: " : "",
           f->during.what);
    printf("  checks under load: %d, %.3f s each on average; p99 during check / p99 base %.2f; "
           "writers blocked (> 1 s) during check: %ld\n", f->during.checks,
           f->during.check_total_s / f->during.checks, p99_check / p99_base, blocked);

    if (f->statements != NULL)
        fputs(f->statements, stdout);

    printf("\n");
    printf("bench reconcile_check_s %.3f s\n", check);
    printf("bench reconcile_scan_s %.3f s\n", scan);
    printf("bench reconcile_check_vs_scan_ratio %.3f ratio\n", check / scan);
    printf("bench reconcile_check_backlog_s %.3f s\n", f->backlog_s);
    printf("bench reconcile_check_backlog_vs_scan_ratio %.3f ratio\n", f->backlog_s / scan);
    printf("bench reconcile_writer_p99_base_ms %.2f ms\n", p99_base);
    printf("bench reconcile_writer_p99_check_ms %.2f ms\n", p99_check);
    printf("bench reconcile_writer_p99_ratio %.2f ratio\n", p99_check / p99_base);
    printf("bench reconcile_writer_max_ms %.2f ms\n", max_check);
    printf("bench reconcile_writers_blocked %ld count\n", blocked);
}

/* ---------------------------------------------------------------- main */

static int pgss_available(void)
{
    const char *ext = getenv("FERRY_TEST_PG");
    if (ext != NULL && ext[0] != '\0')
        return 0;               /* not ours to configure */
    glob_t g;
    int found = glob("/usr/lib/postgresql/*/lib/pg_stat_statements.so", 0, NULL, &g) == 0;
    if (found)
        globfree(&g);
    return found;
}

static int setup_roles(bench *b)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN "
             "CREATE ROLE %s LOGIN SUPERUSER; END IF; END $$", ROLE, ROLE);
    if (bench_exec(b->admin, sql) != 0)
        return -1;
    if ((b->check_db = fpg_conninfo_for(b->pg, ROLE, NULL)) == NULL)
        return -1;
    if (b->have_pgss && bench_exec(b->admin, "CREATE EXTENSION IF NOT EXISTS "
                                             "pg_stat_statements") != 0)
        b->have_pgss = 0;
    return 0;
}

static int write_rules(bench *b, const char *yaml)
{
    snprintf(b->rules_path, sizeof b->rules_path, "/tmp/ferry-bench-rules-XXXXXX");
    int fd = mkstemp(b->rules_path);
    if (fd < 0) {
        fprintf(stderr, "bench: mkstemp: %s\n", strerror(errno));
        b->rules_path[0] = '\0';
        return -1;
    }
    size_t len = strlen(yaml);
    int ok = write(fd, yaml, len) == (ssize_t)len;
    if (close(fd) != 0 || !ok) {
        fprintf(stderr, "bench: cannot write %s\n", b->rules_path);
        return -1;
    }
    return 0;
}

int main(void)
{
    static bench b;
    static figures f;
    static writer w[WRITERS];
    static phase ph[4];
    long rounds;
    if (bench_env_long("FERRY_BENCH_RECONCILE_OUTBOX", DEFAULT_OUTBOX, 10000, 50000000,
                       &b.outbox) != 0 ||
        bench_env_long("FERRY_BENCH_RECONCILE_SAGAS", DEFAULT_SAGAS, 2000, 10000000,
                       &b.sagas) != 0 ||
        bench_env_long("FERRY_BENCH_RECONCILE_INBOX", DEFAULT_INBOX, 20000, 50000000,
                       &b.inbox) != 0 ||
        bench_env_long("FERRY_BENCH_SECONDS", DEFAULT_SECONDS, 1, SECONDS_MAX, &b.seconds) != 0 ||
        bench_env_long("FERRY_BENCH_ROUNDS", DEFAULT_ROUNDS, 1, ROUNDS_MAX, &rounds) != 0)
        return 1;
    b.rounds = (int)rounds;
    setvbuf(stdout, NULL, _IOLBF, 0);
    ferry_log_level_set(FERRY_LOG_LEVEL_WARN);
    if ((b.bin = bench_program("FERRY_RECONCILE_BIN", "build/rel/ferry-reconcile")) == NULL)
        return 1;

    int status = 1, nph = 0;
    for (int i = 0; i < WRITERS; i++)
        w[i].index = i;
    b.have_pgss = pgss_available();
    static const char *const pgss_conf[] = {"shared_preload_libraries = 'pg_stat_statements'",
                                            NULL};
    fpg_opts opts = {.conf = b.have_pgss ? pgss_conf : NULL, .fsync = 1};
    if ((b.pg = fpg_start(&opts)) == NULL || (b.admin = fpg_connect(b.pg)) == NULL)
        goto out;
    int version = 0;
    if (bench_migrate(b.admin, &version) != 0)
        goto out;
    char server[64], fsync_s[16];
    if (bench_query_text(b.admin, "SHOW server_version", 0, NULL, server, sizeof server) != 0 ||
        bench_query_text(b.admin, "SHOW fsync", 0, NULL, fsync_s, sizeof fsync_s) != 0)
        goto out;
    fprintf(stderr, "bench: PostgreSQL %s (fsync=%s), schema %d%s\n", server, fsync_s, version,
            b.have_pgss ? ", pg_stat_statements" : "");
    if (setup_roles(&b) != 0 || write_rules(&b, rules_yaml) != 0 || seed(&b) != 0)
        goto out;

    /* Warm-up, untimed: one of each, and the first look at the report. */
    PGconn *scan = scan_conn(&b);
    if (scan == NULL)
        goto out;
    double warm;
    if (full_scan(&b, scan, &warm) != 0 || check_once(&b, &warm) != 0) {
        PQfinish(scan);
        goto out;
    }
    fprintf(stderr, "bench: warm-up check %.3f s\n", warm);
    if (b.have_pgss && bench_exec(b.admin, "SELECT pg_stat_statements_reset()") != 0)
        b.have_pgss = 0;
    for (int r = 0; r < b.rounds; r++) {
        for (int k = 0; k < 2; k++) {
            int is_check = (r + k) % 2 == 0;    /* the order swapped every round */
            int rc = is_check ? check_once(&b, &f.check_s[r])
                              : full_scan(&b, scan, &f.scan_s[r]);
            if (rc != 0) {
                PQfinish(scan);
                goto out;
            }
        }
        fprintf(stderr, "bench: round %d/%d check %.3f s, full scan %.3f s\n", r + 1, b.rounds,
                f.check_s[r], f.scan_s[r]);
    }
    PQfinish(scan);
    f.statements = collect_statements(&b);

    for (int i = 0; i < WRITERS; i++)
        if (writer_connect(&b, &w[i]) != 0)
            goto out;
    static const int order[4] = {0, 1, 1, 0};
    for (nph = 0; nph < 4; nph++) {
        if (run_phase(&b, w, order[nph], &ph[nph]) != 0)
            goto out;
        fprintf(stderr, "bench: writers %-5s %zu txns in %.1f s%s\n",
                order[nph] ? "check" : "base", ph[nph].n, ph[nph].seconds,
                order[nph] ? ", check running" : "");
    }
    if (pool(ph, nph, 0, &f.base) != 0 || pool(ph, nph, 1, &f.during) != 0)
        goto out;

    /* The worst case for the lag check: the relay fell behind by the whole
     * outbox, so every unpublished row is past a 1 s budget. */
    unlink(b.rules_path);
    if (write_rules(&b, "budgets:\n  outbox_lag: 1s\n  inbox_retention: 7d\n") != 0)
        goto out;
    check_run backlog;
    if (run_check(&b, &backlog) != 0 || backlog.status != 4) {
        fprintf(stderr, "bench: the backlog check exited %d, want 4\n", backlog.status);
        free(backlog.out);
        goto out;
    }
    f.backlog_s = backlog.seconds;
    free(backlog.out);
    fprintf(stderr, "bench: check with the whole outbox lagging: %.3f s\n", f.backlog_s);
    print_report(&b, &f, server, fsync_s);
    status = 0;

out:
    for (int i = 0; i < nph; i++)
        free(ph[i].lat_ms);
    free(f.base.v);
    free(f.during.v);
    free(f.statements);
    for (int i = 0; i < WRITERS; i++) {
        PQfinish(w[i].conn);
        free(w[i].lat_ms);
    }
    if (b.rules_path[0])
        unlink(b.rules_path);
    free(b.check_db);
    return bench_end(status, NULL, b.admin, b.pg);
}
