/*
 * test_consume.c — the consumer and its inbox (lib/consume.c) against a
 * real PostgreSQL and the development broker (librdkafka's mock cluster in
 * a `ferry-relay devkafka` process).
 *
 * Most tests produce hand-made messages straight to the broker, with the
 * headers a ferry relay would put on them, so that duplicates, gaps and
 * markers can be made on purpose; one test goes the whole way (emit ->
 * ferry-relay -> consumer). Crash and rebalance tests run consumers as
 * child processes: this same binary started with --child (see main()).
 *
 * The handler (apply_credit) adds the message's amount to an account
 * row and records the application in t_applied (with the id of the
 * transaction that applied it); a message applied twice would show there
 * and in the account total, which must equal the sum of the distinct
 * messages' amounts.
 *
 * The binary runs its tests twice, at the same time, each pass with its
 * own cluster and broker: with batches (batch_max 100, the library's default) and with one message
 * per transaction (FERRY_CONSUMER_TEST_BATCH_MAX=1, a test hook of the
 * library, inherited by the child consumers). The tests of batches
 * themselves run in the first pass only.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_kafka.h"
#include "tu_proc.h"

/* Message tables below give only the fields that matter. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

static kt_broker *broker;
static rd_kafka_t *producer;

/* ------------------------------------------------------------------ the handler */

static int accept_poison;           /* flipped by tests before a replay */
static int probe_attempt_max;       /* the highest attempt a {"probe": true} message saw */
static long handler_calls;
static long kill_at_call;           /* child mode: SIGKILL inside the transaction */

/* Is this pass the one with batches? */
static int batches_on(void)
{
    const char *b = getenv("FERRY_CONSUMER_TEST_BATCH_MAX");
    return b == NULL || strcmp(b, "1") != 0;
}

/*
 * Payload {"amount": N} credits N to account <key>. {"fail": true} fails
 * (not retriable) unless accept_poison; {"retriable": N} fails retriably
 * on the first N attempts; {"alone": true} asks for a transaction of its
 * own (ferry_message_alone).
 */
static ferry_code apply_credit(PGconn *conn, const ferry_message *m, void *arg,
                               ferry_error *err)
{
    handler_calls++;
    if (json_is_true(json_object_get(m->payload, "probe")) && m->attempt > probe_attempt_max)
        probe_attempt_max = m->attempt;
    if (json_is_true(json_object_get(m->payload, "alone"))) {
        ferry_code arc = ferry_message_alone(m, err);
        if (arc != FERRY_OK)
            return arc;
    }
    const json_t *fail = json_object_get(m->payload, "fail");
    if (json_is_true(fail) && !accept_poison)
        return ferry_error_set(err, FERRY_EUSER, 0, "refused: this one always fails");
    if (json_is_true(json_object_get(m->payload, "invalid")))
        return ferry_error_set(err, FERRY_EINVAL, 0, "refused: amount %s is not a number",
                               "\"ten\"");
    if (json_is_true(json_object_get(m->payload, "swallow"))) {
        /* A failed statement whose error the handler drops: it returns
         * success over an aborted transaction. */
        PQclear(PQexec(conn, "SELECT 1 / 0"));
        return FERRY_OK;
    }
    if (json_is_true(json_object_get(m->payload, "deferred"))) {
        /* A row the deferred unique constraint of t_deferred refuses at
         * COMMIT (the test puts 1 there first). */
        ferry_code drc = tu_handler_exec(conn, "INSERT INTO t_deferred VALUES (1)", 0, NULL,
                                         "could not insert", err);
        if (drc != FERRY_OK)
            return drc;
    }
    json_int_t retriable = json_integer_value(json_object_get(m->payload, "retriable"));
    if (retriable > 0 && m->attempt <= retriable)
        return ferry_error_set(err, FERRY_EDB, 1, "simulated serialization failure");

    char amount[32], seq[32];
    snprintf(amount, sizeof amount, "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(m->payload, "amount")));
    snprintf(seq, sizeof seq, "%" PRId64, m->position);
    const char *p[6] = {(const char *)arg, m->topic, m->key, seq, m->id, amount};
    ferry_code rc = tu_handler_exec(conn,
                                    "WITH a AS (INSERT INTO t_account AS a (id, balance) "
                                    "  VALUES ($3, $6::bigint) ON CONFLICT (id) DO UPDATE "
                                    "  SET balance = a.balance + EXCLUDED.balance) "
                                    "INSERT INTO t_applied (consumer, topic, key, seq, id, "
                                    "amount) VALUES ($1, $2, $3, $4::bigint, $5::uuid, "
                                    "$6::bigint)",
                                    6, p, "could not credit", err);
    if (kill_at_call > 0 && handler_calls == kill_at_call)
        raise(SIGKILL);     /* inside the transaction, before COMMIT */
    return rc;
}

/* The tests' group settings (tu_group_props) with the cooperative-sticky
 * assignor, which a service may choose: rebalances then move only some
 * partitions (incremental assign and unassign). */
static const char *const cooperative_props[] = {
    "session.timeout.ms=3000", "heartbeat.interval.ms=500", "max.poll.interval.ms=20000",
    "partition.assignment.strategy=cooperative-sticky", NULL,
};

/* ------------------------------------------------------------------ producing */

typedef struct pmsg {
    const char *key;
    long seq;                   /* 0: no ferry_seq header */
    const char *payload;        /* NULL: {"amount": 1} */
    const char *id;             /* NULL: a fresh UUIDv7 */
    const char *extra_name;     /* one more header, or NULL */
    const char *extra_value;
} pmsg;

/* Produce msgs to topic and wait until the broker has them all. ids_out
 * (room for n) gets the ids used, when not NULL. */
static void produce(const char *topic, const pmsg *msgs, size_t n,
                    char (*ids_out)[FERRY_UUID_STRING_SIZE])
{
    for (size_t i = 0; i < n; i++) {
        const pmsg *m = &msgs[i];
        char id[FERRY_UUID_STRING_SIZE];
        if (m->id != NULL) {
            snprintf(id, sizeof id, "%s", m->id);
        } else {
            ferry_uuid u;
            assert_int_equal(ferry_uuid_v7(&u), FERRY_OK);
            ferry_uuid_format(&u, id);
        }
        if (ids_out != NULL)
            memcpy(ids_out[i], id, sizeof id);
        rd_kafka_headers_t *h = rd_kafka_headers_new(8);
        rd_kafka_header_add(h, "ferry_id", -1, id, -1);
        rd_kafka_header_add(h, "ferry_type", -1, "Credited", -1);
        if (m->seq > 0) {
            char seq[24];
            snprintf(seq, sizeof seq, "%ld", m->seq);
            rd_kafka_header_add(h, "ferry_seq", -1, seq, -1);
        }
        if (m->extra_name != NULL)     /* a NULL extra_value: a header without a value */
            rd_kafka_header_add(h, m->extra_name, -1, m->extra_value, m->extra_value ? -1 : 0);
        const char *payload = m->payload ? m->payload : "{\"amount\": 1}";
        tu_produce_one(producer, topic, m->key, payload, strlen(payload), h);
    }
    assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* ------------------------------------------------------------------ consuming */

static ferry_consumer *consumer_new(const char *name, const char *topic, int max_attempts)
{
    return tu_consumer_new(name, kt_bootstrap(broker), topic, apply_credit, (void *)name, NULL,
                           max_attempts);
}

typedef int (*stats_pred)(const ferry_consumer_stats *s, long want);

static int applied_at_least(const ferry_consumer_stats *s, long want)
{
    return (long)(s->applied + s->drained) >= want;
}

static int applied_and_one_late(const ferry_consumer_stats *s, long want)
{
    return applied_at_least(s, want) && s->late >= 1;
}

/* want applied (or drained), and one dead letter. */
static int applied_and_dead(const ferry_consumer_stats *s, long want)
{
    return (long)(s->applied + s->drained) >= want && s->dead_lettered >= 1;
}

static int seen_at_least(const ferry_consumer_stats *s, long want)
{
    return (long)(s->applied + s->drained + s->duplicates + s->late + s->held_gap +
                  s->held_parked + s->dead_lettered + s->discard_markers) >= want;
}

typedef struct stats_wait {
    stats_pred pred;
    long want;
    ferry_consumer_stats s;     /* the last read */
} stats_wait;

static int stats_hold(ferry_consumer *c, void *arg)
{
    stats_wait *w = arg;
    ferry_consumer_stats_get(c, &w->s);
    return w->pred(&w->s, w->want);
}

/* Poll until pred holds (bounded: fails the test after 60 s); the
 * statistics that made it hold, which are those of now, since they change
 * only inside ferry_consumer_poll. */
static ferry_consumer_stats poll_until(ferry_consumer *c, stats_pred pred, long want)
{
    stats_wait w = {pred, want};
    char what[64];
    snprintf(what, sizeof what, "the counts to reach %ld", want);
    tu_poll_until(c, stats_hold, &w, 100, what);
    return w.s;
}

/* The positions of key as consumer applied them, in the order applied:
 * "1,2,3". Caller frees. */
static char *applied_order(PGconn *conn, const char *consumer, const char *key)
{
    char *sql = tu_sprintf("SELECT coalesce(string_agg(seq::text, ',' ORDER BY n), '') "
                           "FROM t_applied WHERE consumer = '%s' AND key = '%s'",
                           consumer, key);
    char *s = tu_str(conn, sql);
    free(sql);
    return s;
}

static void assert_order(PGconn *conn, const char *consumer, const char *key,
                         const char *want)
{
    char *got = applied_order(conn, consumer, key);
    if (strcmp(got, want) != 0)
        fail_msg("%s/%s applied %s, want %s", consumer, key, got, want);
    free(got);
}

#define count(conn, fmt, arg) tu_int_of((conn), tu_sprintf((fmt), (arg)))

/* How many rows of ferry.table (dead_letter or inbox_held, as d) belong
 * to consumer and meet cond. */
static long long rows_of(PGconn *conn, const char *table, const char *consumer, const char *cond)
{
    return tu_int_of(conn, tu_sprintf("SELECT count(*) FROM ferry.%s d WHERE consumer = '%s' "
                                      "AND (%s)", table, consumer, cond));
}

static long applied_by(PGconn *conn, const char *consumer)
{
    return (long)tu_int_of(conn, tu_sprintf("SELECT count(*) FROM t_applied "
                                            "WHERE consumer = '%s'", consumer));
}

/* How many of consumer's applications do not follow the one before of
 * their key (position + 1), in the order applied. */
static long long out_of_order(PGconn *conn, const char *consumer)
{
    return tu_int_of(conn, tu_sprintf("SELECT count(*) FROM (SELECT seq, lag(seq) OVER "
                                      "(PARTITION BY key ORDER BY n) AS prev FROM t_applied "
                                      "WHERE consumer = '%s') x "
                                      "WHERE prev IS NOT NULL AND seq <> prev + 1", consumer));
}

/* Each of the n credits (one each, to the accounts prefix<digit>) was
 * applied by consumer exactly once: n applications of n distinct
 * messages, and n credited. */
static void assert_each_applied_once(PGconn *conn, const char *consumer, const char *prefix,
                                     long n)
{
    assert_int_equal(applied_by(conn, consumer), n);
    assert_int_equal(tu_int_of(conn, tu_sprintf("SELECT count(DISTINCT id) FROM t_applied "
                                                "WHERE consumer = '%s'", consumer)), n);
    assert_int_equal(tu_int_of(conn, tu_sprintf("SELECT sum(balance) FROM t_account "
                                                "WHERE id LIKE '%s_'", prefix)), n);
}

/* ------------------------------------------------------------------ tests */

/* Bad configuration is refused with the setting named, before anything
 * is started; a database without the schema is refused too. */
static void bad_configuration_is_refused(void **state)
{
    const char *topics[1] = {"t.ok"};
    ferry_consumer_conf good = {.name = "c-conf", .db = fpg_conninfo(tu_pg),
                                .kafka = kt_bootstrap(broker), .topics = topics,
                                .topic_count = 1, .handler = apply_credit};
    struct { const char *field; ferry_consumer_conf conf; } cases[8];
    for (int i = 0; i < 8; i++)
        cases[i].conf = good;
    cases[0].field = "name";        cases[0].conf.name = "bad name";
    cases[1].field = "name";        cases[1].conf.name = NULL;
    cases[2].field = "topics";      cases[2].conf.topic_count = 0;
    cases[3].field = "handler";     cases[3].conf.handler = NULL;
    cases[4].field = "kafka";       cases[4].conf.kafka = "";
    cases[5].field = "max_attempts"; cases[5].conf.max_attempts = -1;
    static const char *const fixed[] = {"enable.auto.offset.store=true", NULL};
    cases[6].field = "kafka_props"; cases[6].conf.kafka_props = fixed;
    static const char *const nonsense[] = {"no.such.property=1", NULL};
    cases[7].field = "kafka_props"; cases[7].conf.kafka_props = nonsense;
    for (int i = 0; i < 8; i++) {
        ferry_consumer *c = (ferry_consumer *)&c;
        ferry_error err;
        assert_int_equal(ferry_consumer_new(&cases[i].conf, &c, &err), FERRY_EINVAL);
        assert_string_equal(err.field, cases[i].field);
        assert_ptr_equal(c, (ferry_consumer *)&c);      /* untouched */
    }

    ferry_consumer_conf nodb = good;
    nodb.db = "host=/nonexistent dbname=x connect_timeout=2";
    ferry_consumer *c = NULL;
    ferry_error err;
    assert_int_equal(ferry_consumer_new(&nodb, &c, &err), FERRY_ECONN);
    assert_non_null(strstr(err.message, "could not connect"));

    char *ci = tu_fresh_database("c_unmigrated");
    ferry_consumer_conf bare = good;
    bare.db = ci;
    assert_int_equal(ferry_consumer_new(&bare, &c, &err), FERRY_ESCHEMA);
    assert_null(c);
    free(ci);
}

/* Several keys, in order; the same message twice (as after a relay
 * crash) and an old position again are skipped; the total is exact. */
static void applies_once_in_order(void **state)
{
    const char *topic = "c.order";
    char ids[6][FERRY_UUID_STRING_SIZE];
    pmsg first[6] = {{"a", 1}, {"b", 1}, {"a", 2}, {"b", 2}, {"a", 3}, {"b", 3}};
    produce(topic, first, 6, ids);
    pmsg again[3] = {
        {"a", 2, NULL, ids[2]},         /* the same message again */
        {"b", 3, NULL, ids[5]},
        {"a", 1, "{\"amount\": 100}"},  /* a position already applied, another id */
    };
    produce(topic, again, 3, NULL);

    ferry_consumer *c = consumer_new("c-order", topic, 0);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 9);
    assert_int_equal(s.applied, 6);
    assert_int_equal(s.late + s.duplicates, 3);
    assert_int_equal(s.offsets_stored, 9);
    tu_consumer_done(c);

    PGconn *conn = tu_connect();
    assert_order(conn, "c-order", "a", "1,2,3");
    assert_order(conn, "c-order", "b", "1,2,3");
    assert_int_equal(tu_int(conn, "SELECT balance FROM t_account WHERE id = 'a'"), 3);
    assert_int_equal(count(conn, "SELECT count(*) FROM ferry.inbox WHERE consumer = '%s'",
                           "c-order"), 6);
    PQfinish(conn);
}

/* A position that jumps ahead is held, not applied, until the missing one
 * arrives; then the held ones follow in order. */
static void gap_is_held_until_filled(void **state)
{
    const char *topic = "c.gap";
    pmsg m1[3] = {{"g", 1}, {"g", 3}, {"g", 4}};
    produce(topic, m1, 3, NULL);
    ferry_consumer *c = consumer_new("c-gap", topic, 0);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 3);
    assert_int_equal(s.applied, 1);
    assert_int_equal(s.held_gap, 2);
    PGconn *conn = tu_connect();
    assert_int_equal(count(conn, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = '%s' "
                                 "AND reason = 'gap'", "c-gap"), 2);
    assert_order(conn, "c-gap", "g", "1");

    pmsg m2[1] = {{"g", 2}};
    produce(topic, m2, 1, NULL);
    s = poll_until(c, applied_at_least, 4);
    assert_int_equal(s.drained, 2);
    tu_consumer_done(c);
    assert_order(conn, "c-gap", "g", "1,2,3,4");
    assert_int_equal(count(conn, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = '%s'",
                           "c-gap"), 0);
    PQfinish(conn);
}

/* A gap nobody will fill: an operator skips it and the held messages go. */
static void gap_skipped_by_an_operator(void **state)
{
    const char *topic = "c.skip";
    pmsg m[2] = {{"s", 1}, {"s", 5}};
    produce(topic, m, 2, NULL);
    ferry_consumer *c = consumer_new("c-skip", topic, 0);
    poll_until(c, seen_at_least, 2);
    PGconn *conn = tu_connect();
    assert_int_equal(tu_int(conn, "SELECT ferry.inbox_skip_gap('c-skip', 'c.skip', 's')"), 3);
    assert_int_equal(tu_int(conn, "SELECT ferry.inbox_skip_gap('c-skip', 'c.skip', 's')"), 0);
    poll_until(c, applied_at_least, 2);
    tu_consumer_done(c);
    assert_order(conn, "c-skip", "s", "1,5");
    PQfinish(conn);
}

/* A position discarded at the relay arrives as a marker: accounted for,
 * handler not called, no gap. */
static void discard_marker_fills_its_position(void **state)
{
    const char *topic = "c.marker";
    pmsg m[3] = {{"m", 1}, {"m", 2, "null", NULL, "ferry_discarded", "too large"}, {"m", 3}};
    produce(topic, m, 3, NULL);
    ferry_consumer *c = consumer_new("c-marker", topic, 0);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 3);
    assert_int_equal(s.applied, 2);
    assert_int_equal(s.discard_markers, 1);
    assert_int_equal(s.held_gap, 0);
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    assert_order(conn, "c-marker", "m", "1,3");
    PQfinish(conn);
}

/* A handler that keeps failing: after max_attempts the message is a dead
 * letter with the consumer and reason, its key is parked (its later
 * messages held), other keys flow. Replaying releases the key. */
static void poison_parks_its_key_only(void **state)
{
    const char *topic = "c.poison";
    pmsg m[5] = {{"p", 1}, {"p", 2, "{\"fail\": true, \"amount\": 10}"}, {"p", 3},
                 {"ok", 1}, {"ok", 2}};
    produce(topic, m, 5, NULL);
    accept_poison = 0;
    ferry_consumer *c = consumer_new("c-poison", topic, 3);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 5);
    assert_int_equal(s.dead_lettered, 1);
    assert_int_equal(s.handler_failures, 3);
    assert_int_equal(s.held_parked, 1);
    PGconn *conn = tu_connect();
    assert_int_equal(rows_of(conn, "dead_letter", "c-poison",
                             "aggregateid = 'p' AND seq = 2 AND attempts = 3 AND reason LIKE "
                             "'%always fails%'"), 1);
    assert_order(conn, "c-poison", "p", "1");
    assert_order(conn, "c-poison", "ok", "1,2");

    accept_poison = 1;
    assert_int_equal(rows_of(conn, "dead_letter", "c-poison", "ferry.replay_dead_letter(d.id)"), 1);
    poll_until(c, applied_at_least, 5);
    accept_poison = 0;
    tu_consumer_done(c);
    assert_order(conn, "c-poison", "p", "1,2,3");
    assert_int_equal(tu_int(conn, "SELECT balance FROM t_account WHERE id = 'p'"), 12);
    PQfinish(conn);
}

/* Discarding a consumer's dead letter counts its position as done. */
static void discarded_dead_letter_releases_the_key(void **state)
{
    const char *topic = "c.discard";
    pmsg m[3] = {{"d", 1, "{\"fail\": true}"}, {"d", 2}, {"d", 3}};
    produce(topic, m, 3, NULL);
    accept_poison = 0;
    ferry_consumer *c = consumer_new("c-discard", topic, 2);
    poll_until(c, seen_at_least, 3);
    PGconn *conn = tu_connect();
    assert_int_equal(rows_of(conn, "inbox_held", "c-discard", "reason = 'parked'"), 2);
    assert_int_equal(rows_of(conn, "dead_letter", "c-discard",
                             "ferry.discard_dead_letter(d.id)"), 1);
    poll_until(c, applied_at_least, 2);
    tu_consumer_done(c);
    assert_order(conn, "c-discard", "d", "2,3");
    PQfinish(conn);
}

/* Payloads that are not JSON, or not text, are dead-lettered at their
 * turn without calling the handler; nothing else is held up for long. */
static void bad_payloads_are_dead_lettered(void **state)
{
    const char *topic = "c.badjson";
    pmsg m[5] = {{"j", 1, "{not json"}, {"k", 1, "{\"amount\": 5}"},
                 {"n", 0, "[1, 2"}, {"k", 2, "{\"amount\": 5}"},
                 {"v", 1, "{\"invalid\": true}"}};
    produce(topic, m, 5, NULL);
    long calls = handler_calls;
    ferry_consumer *c = consumer_new("c-badjson", topic, 0);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 5);
    assert_int_equal(s.dead_lettered, 3);
    assert_int_equal(s.applied, 2);
    /* The handler's FERRY_EINVAL refuses the message at once: one call. */
    assert_int_equal(s.handler_failures, 1);
    assert_int_equal(handler_calls - calls, 3);
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    /* One try each, as ferry.consume_fail counts a permanent failure (the
     * handler never saw them). */
    assert_int_equal(rows_of(conn, "dead_letter", "c-badjson",
                             "attempts = 1 AND reason LIKE 'payload is not valid JSON%'"), 2);
    assert_int_equal(rows_of(conn, "dead_letter", "c-badjson",
                             "aggregateid = 'v' AND attempts = 1 AND "
                             "reason LIKE '%is not a number'"), 1);
    /* Kept as received, as a JSON string. */
    assert_int_equal(rows_of(conn, "dead_letter", "c-badjson",
                             "payload = to_jsonb('{not json'::text)"), 1);
    PQfinish(conn);
}

/* Transient failures roll back and retry the same message, without
 * counting towards the dead letter. */
static void transient_failures_are_retried(void **state)
{
    const char *topic = "c.transient";
    pmsg m[2] = {{"t", 1, "{\"retriable\": 4, \"amount\": 7}"}, {"t", 2}};
    produce(topic, m, 2, NULL);
    ferry_consumer *c = consumer_new("c-transient", topic, 2);
    ferry_consumer_stats s = poll_until(c, applied_at_least, 2);
    assert_int_equal(s.transient_retries, 4);
    assert_int_equal(s.handler_failures, 0);
    assert_int_equal(s.dead_lettered, 0);
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    assert_int_equal(tu_int(conn, "SELECT balance FROM t_account WHERE id = 't'"), 8);
    PQfinish(conn);
}

/* The database restarts under a running consumer: it reconnects, and
 * every message is applied once. */
static void database_restart_mid_stream(void **state)
{
    const char *topic = "c.restart";
    enum { N = 300 };
    pmsg *m = calloc(N, sizeof *m);
    char keys[8][8];
    for (int k = 0; k < 8; k++)
        snprintf(keys[k], sizeof keys[k], "r%d", k);
    for (int i = 0; i < N; i++)
        m[i] = (pmsg){keys[i % 8], i / 8 + 1};
    produce(topic, m, N, NULL);
    free(m);
    ferry_consumer *c = consumer_new("c-restart", topic, 0);
    poll_until(c, applied_at_least, 50);
    assert_int_equal(fpg_restart(tu_pg, "fast"), 0);
    ferry_consumer_stats s = poll_until(c, applied_at_least, N);
    assert_true(s.reconnects >= 1);         /* the restart was felt */
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    assert_each_applied_once(conn, "c-restart", "r", N);
    PQfinish(conn);
}

/* ------------------------------------------------------------------ child consumers */

typedef struct child {
    pid_t pid;
    int out;                    /* read end of its stdout */
} child;

/* Start this binary as a consumer process (see child_main). env:
 * "NAME=VALUE" settings separated by spaces, or NULL. */
static child child_start(const char *name, const char *topic, const char *env)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        if (env != NULL) {
            char *all = strdup(env);        /* the environment keeps it */
            for (char *save = NULL, *one = strtok_r(all, " ", &save); one != NULL;
                 one = strtok_r(NULL, " ", &save))
                putenv(one);
        }
        execl("/proc/self/exe", "test_consume", "--child", name, topic, fpg_conninfo(tu_pg),
              kt_bootstrap(broker), (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    return (child){pid, fds[0]};
}

/* Wait for it; its exit status, or 128+N for signal N. out (if not NULL)
 * gets its stdout (malloc'd). */
static int child_wait(child *ch, char **out)
{
    char *buf = calloc(1, 4096);
    size_t len = 0;
    ssize_t r;
    while ((r = read(ch->out, buf + len, 4095 - len)) > 0 && len < 4095)
        len += (size_t)r;
    close(ch->out);
    int st;
    while (waitpid(ch->pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (out != NULL)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static volatile sig_atomic_t child_stop;
static ferry_consumer *child_consumer;
static void on_term(int sig)
{
    (void)sig;
    if (child_consumer)
        ferry_consumer_stop(child_consumer);
    child_stop = 1;
}

/* --child NAME TOPIC CONNINFO BOOTSTRAP: consume with apply_credit until
 * SIGTERM, then print the stats on stdout and exit 0. Env:
 * FERRY_TEST_HANDLER_KILL_AT=N dies inside the Nth handler call;
 * FERRY_TEST_BATCH_MS=N sets batch_ms; FERRY_TEST_COOPERATIVE=1 joins the
 * group with the cooperative-sticky assignor. */
static int child_main(char **argv)
{
    const char *kill_at = getenv("FERRY_TEST_HANDLER_KILL_AT");
    kill_at_call = kill_at ? strtol(kill_at, NULL, 10) : 0;
    const char *topics[1] = {argv[3]};
    ferry_consumer_conf conf = {.name = argv[2], .db = argv[4], .kafka = argv[5],
                                .topics = topics, .topic_count = 1,
                                .handler = apply_credit, .handler_arg = argv[2],
                                .kafka_props = tu_group_props,
                                .backoff_base_ms = 5, .backoff_max_ms = 50,
                                .held_scan_ms = 50};
    if (getenv("FERRY_TEST_COOPERATIVE") != NULL)
        conf.kafka_props = cooperative_props;
    const char *batch_ms = getenv("FERRY_TEST_BATCH_MS");
    if (batch_ms != NULL)
        conf.batch_ms = (int)strtol(batch_ms, NULL, 10);
    ferry_error err;
    if (ferry_consumer_new(&conf, &child_consumer, &err) != FERRY_OK) {
        fprintf(stderr, "child: %s\n", err.message);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    ferry_code rc = ferry_consumer_run(child_consumer, &err);
    ferry_consumer_stats s;
    ferry_consumer_stats_get(child_consumer, &s);
    printf("applied=%" PRIu64 " duplicates=%" PRIu64 " late=%" PRIu64 " assigned=%" PRIu64
           " revoked=%" PRIu64 " batches=%" PRIu64 " batch_dropped=%" PRIu64 "\n", s.applied,
           s.duplicates, s.late, s.assigned, s.revoked, s.batches, s.batch_dropped);
    fflush(stdout);
    ferry_consumer_destroy(child_consumer);
    if (rc != FERRY_OK) {
        fprintf(stderr, "child: %s\n", err.message);
        return 3;
    }
    return 0;
}

static long stat_of(const char *out, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, "%s=", name);
    const char *p = strstr(out, pat);
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

static void produce_credits(const char *topic, int n, int keys, const char *prefix)
{
    pmsg *m = calloc((size_t)n, sizeof *m);
    char (*k)[16] = calloc((size_t)keys, 16);
    for (int i = 0; i < keys; i++)
        snprintf(k[i], 16, "%s%d", prefix, i);
    for (int i = 0; i < n; i++)
        m[i] = (pmsg){k[i % keys], i / keys + 1};
    produce(topic, m, (size_t)n, NULL);
    free(m);
    free(k);
}

/* Run the consumer name as a child whose test hooks (env) must kill it
 * with SIGKILL; how many messages it had applied by then. */
static long applied_before_the_kill(PGconn *conn, const char *name, const char *topic,
                                    const char *env)
{
    child ch = child_start(name, topic, env);
    assert_int_equal(child_wait(&ch, NULL), 128 + SIGKILL);
    return applied_by(conn, name);
}

/* Killed (SIGKILL) between the database commit and the offset store: the
 * message comes again and is skipped; the effect is there once. */
static void crash_between_commit_and_offset(void **state)
{
    const char *topic = "c.crash1";
    enum { N = 40 };
    produce_credits(topic, N, 4, "x");
    /* With batches (of at most 8 here), the third commit is still inside
     * the 40 messages. */
    PGconn *conn = tu_connect();
    long done = applied_before_the_kill(conn, "c-crash1", topic,
                                        batches_on() ? "FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT=3 "
                                                       "FERRY_CONSUMER_TEST_BATCH_MAX=8"
                                                     : "FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT=10");
    /* It died right after its 10th commit (one message each), or its
     * third (batches). */
    if (batches_on())
        assert_true(done >= 3 && done < N);
    else
        assert_int_equal(done, 10);
    ferry_consumer *c = consumer_new("c-crash1", topic, 0);
    /* The rest applied, and the last committed come again and skipped: it
     * may be the last of its partition, so it can arrive after all the
     * others. */
    ferry_consumer_stats s = poll_until(c, applied_and_one_late, N - done);
    assert_true(s.late >= 1);               /* the last came again, and was skipped */
    assert_int_equal(s.applied, N - done);
    tu_consumer_done(c);
    assert_each_applied_once(conn, "c-crash1", "x", N);
    PQfinish(conn);
}

/* Killed inside the transaction (in the handler, before COMMIT): nothing
 * of it stays; the next run applies it once. */
static void crash_inside_the_transaction(void **state)
{
    const char *topic = "c.crash2";
    enum { N = 40 };
    produce_credits(topic, N, 4, "y");
    PGconn *conn = tu_connect();
    long done = applied_before_the_kill(conn, "c-crash2", topic, "FERRY_TEST_HANDLER_KILL_AT=7");
    /* One message per transaction: the 6 before it committed. With
     * batches, its batch rolled back with it: those of earlier batches. */
    if (batches_on())
        assert_true(done < 7);
    else
        assert_int_equal(done, 6);
    ferry_consumer *c = consumer_new("c-crash2", topic, 0);
    poll_until(c, applied_at_least, N - done);
    tu_consumer_done(c);
    assert_each_applied_once(conn, "c-crash2", "y", N);
    PQfinish(conn);
}

/* One message for each of keys keys prefix0..: the round-th of each. */
static void produce_round(const char *topic, int keys, const char *prefix, long round)
{
    pmsg m[64];
    char k[64][16];
    assert_true(keys <= 64);
    for (int i = 0; i < keys; i++) {
        snprintf(k[i], sizeof k[i], "%s%d", prefix, i);
        m[i] = (pmsg){k[i], round};
    }
    produce(topic, m, (size_t)keys, NULL);
}

/*
 * Two consumers of topic in the group name, each child started with env,
 * the second joining mid-stream; the keys start with prefix. Messages go
 * out a round (one per key) at a time, each awaited, until the second
 * consumer applies some (its rows come from another database session):
 * the rebalance then happened with messages on both sides of it, however
 * long the group took to settle.
 */
static void two_consumers_apply_each_once(const char *name, const char *topic,
                                          const char *prefix, const char *env)
{
    enum { KEYS = 64, FIRST_ROUNDS = 5, AFTER_ROUNDS = 5, ROUNDS_MAX = 400 };
    PGconn *conn = tu_connect();
    long rounds = 0;
    child a = child_start(name, topic, env);
    child b = {.pid = -1};
    for (;;) {
        produce_round(topic, KEYS, prefix, ++rounds);
        char *all = tu_sprintf("SELECT count(DISTINCT id) = %ld FROM t_applied "
                               "WHERE consumer = '%s'", rounds * KEYS, name);
        tu_await(conn, all, 60000);
        free(all);
        if (rounds == FIRST_ROUNDS)
            b = child_start(name, topic, env);
        if (rounds > FIRST_ROUNDS &&
            tu_int_of(conn, tu_sprintf("SELECT count(DISTINCT pid) FROM t_applied "
                                       "WHERE consumer = '%s'", name)) == 2)
            break;
        assert_true(rounds < ROUNDS_MAX);
    }
    for (int i = 0; i < AFTER_ROUNDS; i++)
        produce_round(topic, KEYS, prefix, ++rounds);
    long n = rounds * KEYS;
    char *all = tu_sprintf("SELECT count(DISTINCT id) = %ld FROM t_applied "
                           "WHERE consumer = '%s'", n, name);
    tu_await(conn, all, 60000);
    free(all);
    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    char *out_a = NULL, *out_b = NULL;
    assert_int_equal(child_wait(&a, &out_a), 0);
    assert_int_equal(child_wait(&b, &out_b), 0);
    fprintf(stderr, "%s: %ld rounds; a: %sb: %s", name, rounds, out_a, out_b);
    assert_true(stat_of(out_a, "revoked") >= 1);    /* the rebalance happened */
    assert_true(stat_of(out_b, "assigned") >= 1);
    assert_int_equal(stat_of(out_a, "applied") + stat_of(out_b, "applied"), n);
    free(out_a);
    free(out_b);
    assert_int_equal(applied_by(conn, name), n);
    assert_int_equal(tu_int_of(conn, tu_sprintf("SELECT sum(balance) FROM t_account "
                                                "WHERE id LIKE '%s%%'", prefix)), n);
    /* And in order per key. */
    assert_int_equal(out_of_order(conn, name), 0);
    PQfinish(conn);
}

/* Two consumers in one group, the second joining mid-stream: the
 * partitions move, and still every message is applied exactly once. */
static void rebalance_applies_each_once(void **state)
{
    two_consumers_apply_each_once("c-rebalance", "c.rebalance", "z", NULL);
}

/* The same under the cooperative-sticky assignor, which a service may
 * configure (kafka_props): the first member keeps what it is not asked
 * to give up and hands over only the moved partitions, through
 * incremental assign and unassign; a plain assign() there is an error
 * in librdkafka. */
static void a_cooperative_rebalance_applies_each_once(void **state)
{
    two_consumers_apply_each_once("c-coop", "c.coop", "u", "FERRY_TEST_COOPERATIVE=1");
}

/* The whole way: emit in the service's transaction, ferry-relay publishes
 * (with a fatal producer error injected half-way, after which it resends
 * from the first unacknowledged row, so part may go out twice), the
 * consumer applies each message once. */
static void end_to_end_through_the_relay(void **state)
{
    const char *topic = "c.e2e";
    enum { N = 2000 };
    PGconn *conn = tu_connect();
    char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'e' || (g %% 16), 'Credited', "
                           "'{\"amount\": 1}')) FROM generate_series(1, %d) g", topic, N);
    tu_exec(conn, "BEGIN");
    tu_exec(conn, sql);
    tu_exec(conn, "COMMIT");
    free(sql);
    const char *once[] = {"--once", NULL};
    const char *fatal[] = {"FERRY_RELAY_TEST_FATAL_AFTER=1000", NULL};
    tu_proc relay = tu_relay_start(kt_bootstrap(broker), "c-e2e-relay", once, fatal);
    if (tu_proc_wait(&relay, 120000) != 0)
        tu_proc_fail(&relay, "ferry-relay run --once exited with %d", relay.status);
    /* The injected fatal error fired: the relay rebuilt its producer. */
    char *log = tu_proc_log(&relay);
    assert_non_null(strstr(log, "\"event\":\"kafka.fatal\""));
    free(log);
    tu_proc_done(&relay);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.outbox WHERE topic = 'c.e2e'"), 0);

    /* Every emitted message applied first; only then count what the topic
     * holds. Counting first with kt_consume(..., N, ...) stopped at N
     * messages, so with the fatal error's resends in the topic the
     * consumer could reach "seen N" with some originals still to come,
     * and the test failed now and then (applied 1875, late 125). */
    ferry_consumer *c = consumer_new("c-e2e", topic, 0);
    poll_until(c, applied_at_least, N);
    kt_msgs *got = kt_consume(kt_bootstrap(broker), topic, 0, 60000);
    size_t published = got->count;
    kt_msgs_free(got);
    assert_true(published >= N);
    ferry_consumer_stats s = poll_until(c, seen_at_least, (long)published);
    fprintf(stderr, "e2e: %zu published for %d emitted; %" PRIu64 " late, %" PRIu64
            " duplicates\n", published, N, s.late, s.duplicates);
    assert_int_equal(s.applied, N);
    assert_int_equal(s.late + s.duplicates, published - N);
    assert_int_equal(s.held_gap, 0);
    tu_consumer_done(c);
    assert_int_equal(tu_int(conn, "SELECT sum(balance) FROM t_account WHERE id LIKE 'e%'"), N);
    PQfinish(conn);
}


/* A consumer named name of topic, with the Kafka settings props (NULL:
 * the tests'), says through the API which partitions it holds, and logs
 * every change as one JSON event naming what moved and what is held
 * after. */
static void assignment_known_and_logged(const char *name, const char *topic,
                                        const char *const *props)
{
    char first[64];
    snprintf(first, sizeof first, "%s[0]", topic);
    pmsg m[1] = {{"as", 1}};
    produce(topic, m, 1, NULL);         /* the topic, with the broker's 4 partitions */
    /* The log goes to stderr: to a file while the consumer joins. */
    char path[] = "/tmp/ferry-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    ferry_consumer *c = tu_consumer_new(name, kt_bootstrap(broker), topic, apply_credit,
                                        (void *)name, props, 0);
    ferry_partition none[1];
    assert_int_equal(ferry_consumer_partitions(c, none, 0), 0);   /* not yet in the group */
    poll_until(c, applied_at_least, 1);
    ferry_partition held[8];
    int n = ferry_consumer_partitions(c, held, 8);
    assert_int_equal(ferry_consumer_partitions(c, NULL, 0), n);
    assert_int_equal(ferry_consumer_partitions(c, held, 2), n);     /* says how many */
    tu_consumer_done(c);
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fd);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) {
        assert_string_equal(held[i].topic, topic);
        assert_int_equal(held[i].partition, i);
    }
    size_t len = 0;
    char *log = tu_slurp(path, &len);
    unlink(path);
    fprintf(stderr, "%s", log);
    /* The join, then the close's revocation: one event each, as JSON. */
    int assigned = 0, revoked = 0;
    for (char *line = strtok(log, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        if (j == NULL)
            continue;
        const char *ev = json_string_value(json_object_get(j, "event"));
        const char *who = json_string_value(json_object_get(j, "consumer"));
        if (ev != NULL && who != NULL && strcmp(who, name) == 0) {
            if (strcmp(ev, "consumer.assigned") == 0) {
                assigned++;
                assert_int_equal(json_array_size(json_object_get(j, "partitions")), 4);
                assert_int_equal(json_integer_value(json_object_get(j, "held_count")), 4);
                assert_string_equal(json_string_value(json_array_get(
                                        json_object_get(j, "held"), 0)), first);
            } else if (strcmp(ev, "consumer.revoked") == 0) {
                revoked++;
                assert_int_equal(json_integer_value(json_object_get(j, "held_count")), 0);
            }
        }
        json_decref(j);
    }
    free(log);
    assert_int_equal(assigned, 1);
    assert_int_equal(revoked, 1);
}

/* The API says which partitions a consumer holds, and every change is
 * one JSON log event naming what moved and what is held after. */
static void the_assignment_is_known_and_logged(void **state)
{
    assignment_known_and_logged("c-assign", "c.assign", NULL);
}

/* The same under the cooperative protocol, where a change moves only some
 * partitions: what is held after it is what the consumer held, plus or
 * minus those (it was left out of the log, held_count -1). */
static void the_assignment_is_logged_under_the_cooperative_protocol(void **state)
{
    assignment_known_and_logged("c-assign-coop", "c.assigncoop", cooperative_props);
}

/* ------------------------------------------------------------------ batches */

/* A topic of one partition, so that what is produced comes in order and
 * in one fetch: a batch holds all of it. */
static void one_partition_topic(const char *topic)
{
    assert_int_equal(kt_command(broker, "topic-create %s 1 1", topic), 0);
}

/* A poison message in the middle of a batch: the batch rolls back, the
 * messages before it commit as a batch, the poison is tried alone and
 * dead-lettered (its key parked, its later message held), and the rest
 * commit as a batch — in their order. */
static void poison_in_a_batch_parks_only_its_key(void **state)
{
    const char *topic = "c.bpoison";
    one_partition_topic(topic);
    pmsg m[8] = {{"a", 1}, {"a", 2}, {"b", 1}, {"p", 1, "{\"fail\": true, \"amount\": 10}"},
                 {"c", 1}, {"a", 3}, {"p", 2}, {"c", 2}};
    produce(topic, m, 8, NULL);
    accept_poison = 0;
    ferry_consumer *c = consumer_new("c-bpoison", topic, 3);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 8);
    assert_true(s.batch_fallbacks >= 1);        /* the poison was in a batch */
    assert_true(s.batches >= 1);
    assert_int_equal(s.dead_lettered, 1);
    assert_int_equal(s.handler_failures, 3);    /* the batch's try counts */
    assert_int_equal(s.held_parked, 1);
    assert_int_equal(s.applied, 6);
    assert_int_equal(s.offsets_stored, 8);
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    assert_int_equal(rows_of(conn, "dead_letter", "c-bpoison",
                             "aggregateid = 'p' AND seq = 1 AND attempts = 3"), 1);
    assert_order(conn, "c-bpoison", "a", "1,2,3");
    assert_order(conn, "c-bpoison", "b", "1");
    assert_order(conn, "c-bpoison", "c", "1,2");
    assert_order(conn, "c-bpoison", "p", "");
    /* The others shared transactions: fewer transactions than messages. */
    assert_true(tu_int(conn, "SELECT count(DISTINCT xid) FROM t_applied "
                             "WHERE consumer = 'c-bpoison'") < 6);
    PQfinish(conn);
}

/*
 * A message whose transaction PostgreSQL refuses at COMMIT (a deferred
 * unique constraint) or whose handler returns success over a transaction
 * it left aborted is the message's failure: counted against it,
 * dead-lettered at max_attempts, its key parked; the partition's other
 * keys flow, in batches and one by one.
 *
 * Before: both were taken for the database's failure, tried ten times
 * without counting an attempt, and the poll failed; the next poll came
 * back to the same message, for ever (an outside audit: 34 poll errors
 * in 20 s, nothing dead-lettered, the key behind it never applied).
 */
static void a_message_whose_commit_is_refused_is_dead_lettered(void **state)
{
    const char *topic = "c.commitfail";
    one_partition_topic(topic);
    PGconn *conn = tu_connect();
    tu_exec(conn, "CREATE TABLE t_deferred (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)");
    tu_exec(conn, "INSERT INTO t_deferred VALUES (1)");
    pmsg m[6] = {{"z", 1, "{\"deferred\": true, \"amount\": 1}"}, {"y", 1},
                 {"w", 1, "{\"swallow\": true, \"amount\": 1}"}, {"y", 2}, {"z", 2},
                 {"y", 3}};
    produce(topic, m, 6, NULL);
    ferry_consumer *c = consumer_new("c-commitfail", topic, 3);
    ferry_consumer_stats s = poll_until(c, seen_at_least, 6);
    assert_int_equal(s.dead_lettered, 2);
    assert_int_equal(s.held_parked, 1);          /* z's 2, behind its dead letter */
    assert_int_equal(s.applied, 3);
    tu_consumer_done(c);
    assert_order(conn, "c-commitfail", "y", "1,2,3");
    assert_int_equal(rows_of(conn, "dead_letter", "c-commitfail",
                             "aggregateid = 'z' AND seq = 1 AND attempts = 3 "
                             "AND reason LIKE '%t_deferred%'"), 1);
    assert_int_equal(rows_of(conn, "dead_letter", "c-commitfail",
                             "aggregateid = 'w' AND seq = 1 AND attempts = 3 "
                             "AND reason LIKE '%aborted%'"), 1);
    tu_exec(conn, "DROP TABLE t_deferred");
    PQfinish(conn);
}

/*
 * A message id used again by a later message (ids are the producer's to
 * keep unique): the later message is skipped, a duplicate, and its
 * position consumed, whether it comes at its key's turn (u: 2 reuses 1's
 * id) or ahead of it (w: 3 reuses 1's id and arrives before 2; v: 2
 * reuses 1's id and arrives before 1): held, then skipped in its turn;
 * the key's later messages are applied. Before: the
 * key stayed before that position, and everything after it was held as a
 * gap for ever (an outside audit).
 */
static void a_reused_id_is_skipped_and_its_key_goes_on(void **state)
{
    const char *topic = "c.reused";
    one_partition_topic(topic);
    const char *a = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a01";
    const char *b = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a03";
    const char *d = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a04";
    pmsg m[11] = {{"u", 1, NULL, a}, {"u", 2, NULL, a}, {"u", 3}, {"u", 4},
                  {"w", 1, NULL, b}, {"w", 3, NULL, b}, {"w", 2}, {"w", 4},
                  {"v", 2, NULL, d}, {"v", 1, NULL, d}, {"v", 3}};
    produce(topic, m, 11, NULL);
    ferry_consumer *c = consumer_new("c-reused", topic, 3);
    ferry_consumer_stats s = poll_until(c, applied_at_least, 8);
    tu_consumer_done(c);
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(s.duplicates, 3);
    PGconn *conn = tu_connect();
    assert_order(conn, "c-reused", "u", "1,3,4");
    assert_order(conn, "c-reused", "w", "1,2,4");
    assert_order(conn, "c-reused", "v", "1,3");
    assert_int_equal(rows_of(conn, "inbox_held", "c-reused", "true"), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key WHERE consumer = 'c-reused' "
                                  "AND (seq = 4 AND key IN ('u', 'w') OR seq = 3 AND key = 'v')"),
                     3);
    PQfinish(conn);
}

/*
 * A ferry_discarded header without a value, or with one that is not
 * UTF-8, is no discard marker: the header map the claim is sent leaves
 * such values out, so the server answers 'apply', and the handler runs.
 * Before: the client took the message for a marker and skipped the
 * handler although the server had answered 'apply' (a message held first
 * was applied instead: it depended on timing; an outside audit).
 */
static void a_discard_header_without_text_is_no_marker(void **state)
{
    const char *topic = "c.nomarker";
    one_partition_topic(topic);
    pmsg m[3] = {{"n", 1, NULL, NULL, "ferry_discarded", NULL},
                 {"n", 2, NULL, NULL, "ferry_discarded", "\xff\xfe"}, {"n", 3}};
    produce(topic, m, 3, NULL);
    ferry_consumer *c = consumer_new("c-nomarker", topic, 3);
    ferry_consumer_stats s = poll_until(c, applied_at_least, 3);
    tu_consumer_done(c);
    assert_int_equal(s.discard_markers, 0);
    PGconn *conn = tu_connect();
    assert_order(conn, "c-nomarker", "n", "1,2,3");
    assert_int_equal(tu_int(conn, "SELECT balance FROM t_account WHERE id = 'n'"), 3);
    PQfinish(conn);
}

/* Killed (SIGKILL) right after a batch's commit, before its offsets are
 * stored: the whole batch comes again, and every message of it is
 * skipped; nothing is applied twice. */
static void crash_after_a_batch_commit_repeats_the_batch(void **state)
{
    const char *topic = "c.bcrash";
    enum { N = 40 };
    one_partition_topic(topic);
    produce_credits(topic, N, 4, "v");
    PGconn *conn = tu_connect();
    long done = applied_before_the_kill(conn, "c-bcrash", topic,
                                        "FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT=1 "
                                        "FERRY_CONSUMER_TEST_BATCH_MAX=8");
    assert_true(done >= 2 && done <= 8);        /* one commit, a batch */
    assert_int_equal(tu_int(conn, "SELECT count(DISTINCT xid) FROM t_applied "
                                  "WHERE consumer = 'c-bcrash'"), 1);
    ferry_consumer *c = consumer_new("c-bcrash", topic, 0);
    ferry_consumer_stats s = poll_until(c, seen_at_least, N);
    assert_int_equal(s.late, done);             /* the batch again, all skipped */
    assert_int_equal(s.applied, N - done);
    tu_consumer_done(c);
    assert_each_applied_once(conn, "c-bcrash", "v", N);
    PQfinish(conn);
}

/* A handler that may not share its transaction says so: the batch rolls
 * back, that message is applied in a transaction of its own, the others
 * in batches, in order, and no attempt is counted against it. */
static void a_handler_that_must_run_alone_gets_its_own_transaction(void **state)
{
    const char *topic = "c.balone";
    one_partition_topic(topic);
    pmsg m[6] = {{"k", 1}, {"m", 1}, {"k", 2, "{\"alone\": true, \"amount\": 1}"}, {"k", 3},
                 {"m", 2}, {"k", 4}};
    char ids[6][FERRY_UUID_STRING_SIZE];
    produce(topic, m, 6, ids);
    ferry_consumer *c = consumer_new("c-balone", topic, 0);
    ferry_consumer_stats s = poll_until(c, applied_at_least, 6);
    assert_true(s.batch_fallbacks >= 1);        /* it asked, inside a batch */
    assert_int_equal(s.handler_failures, 0);
    assert_int_equal(s.dead_lettered, 0);
    tu_consumer_done(c);
    PGconn *conn = tu_connect();
    assert_order(conn, "c-balone", "k", "1,2,3,4");
    assert_order(conn, "c-balone", "m", "1,2");
    /* Alone in its transaction; the others shared theirs. */
    assert_int_equal(tu_int_of(conn, tu_sprintf("SELECT count(*) FROM t_applied WHERE xid = "
                                                "(SELECT xid FROM t_applied WHERE id = '%s')",
                                                ids[2])), 1);
    assert_true(tu_int(conn, "SELECT count(DISTINCT xid) FROM t_applied "
                             "WHERE consumer = 'c-balone'") < 6);
    PQfinish(conn);
}

/* The C consumer is a client of the SQL consumer protocol: a login role
 * granted the protocol's functions (1.1's consume_finish_many included)
 * and nothing else of ferry's (no inbox function, no ferry role) applies,
 * holds and drains, and dead-letters after attempts counted by
 * consume_fail. */
static void a_role_with_only_the_protocol_runs_the_consumer(void **state)
{
    const char *topic = "c.protoonly";
    PGconn *conn = tu_connect();
    PQclear(PQexec(conn, "CREATE ROLE c_proto_only LOGIN"));    /* this pass's cluster */
    tu_exec(conn, "GRANT USAGE ON SCHEMA ferry TO c_proto_only; "
                  "GRANT SELECT ON ferry.schema_version TO c_proto_only; "
                  "GRANT EXECUTE ON FUNCTION "
                  "  ferry.consume_claim(text, uuid, text, text, bigint, text, jsonb, text, text, "
                  "                      integer, bigint, boolean), "
                  "  ferry.consume_finish(text, uuid), "
                  "  ferry.consume_fail(text, uuid, text, text, text, bigint, text, jsonb, text, "
                  "                     text, integer, boolean), "
                  "  ferry.consume_ready(text, text, text, integer), "
                  "  ferry.consume_finish_many(text, uuid[]) TO c_proto_only; "
                  "GRANT SELECT, INSERT, UPDATE ON t_account, t_applied TO c_proto_only; "
                  "GRANT USAGE ON SEQUENCE t_applied_n_seq TO c_proto_only; "
                  "INSERT INTO ferry.consumer_owner (consumer, role) "
                  "VALUES ('c-protoonly', 'c_proto_only') ON CONFLICT DO NOTHING");
    assert_int_equal(tu_int(conn, "SELECT has_function_privilege('c_proto_only', "
                                  "'ferry.inbox_claim(text,uuid,text,text,bigint,boolean)', "
                                  "'EXECUTE')::int + pg_has_role('c_proto_only', "
                                  "'ferry_writer', 'MEMBER')::int"), 0);
    pmsg m[4] = {{"a", 1}, {"a", 3}, {"a", 2}, {"p", 1, "{\"fail\": true, \"amount\": 1}"}};
    produce(topic, m, 4, NULL);
    accept_poison = 0;
    char *db = fpg_conninfo_for(tu_pg, "c_proto_only", NULL);
    tu_consumer_db = db;
    ferry_consumer *c = consumer_new("c-protoonly", topic, 2);
    tu_consumer_db = NULL;
    free(db);
    assert_non_null(c);
    ferry_consumer_stats s = poll_until(c, applied_and_dead, 3);
    /* The poison's batch, if any, rolled back once; no batch failed for
     * want of a privilege (consume_finish_many's, say). */
    assert_true(s.batch_fallbacks <= 1);
    tu_consumer_done(c);
    assert_order(conn, "c-protoonly", "a", "1,2,3");
    assert_int_equal(rows_of(conn, "dead_letter", "c-protoonly",
                             "aggregateid = 'p' AND attempts = 2"), 1);
    assert_int_equal(rows_of(conn, "inbox_held", "c-protoonly", "true"), 0);
    PQfinish(conn);
}

/* A message whose batch rolled back because a neighbour failed is tried
 * again as if for the first time: msg->attempt counts the tries that
 * failed at the message itself (the neighbour's own retry sees 2). */
static void a_neighbours_failure_costs_a_message_no_attempt(void **state)
{
    const char *topic = "c.battempt";
    one_partition_topic(topic);
    pmsg m[2] = {{"q", 1, "{\"probe\": true, \"amount\": 1}"},
                 {"r", 1, "{\"retriable\": 1, \"amount\": 1}"}};
    produce(topic, m, 2, NULL);
    probe_attempt_max = 0;
    ferry_consumer *c = consumer_new("c-battempt", topic, 0);
    ferry_consumer_stats s = poll_until(c, applied_at_least, 2);
    assert_true(s.batch_fallbacks >= 1);        /* r's failure rolled q's batch back */
    assert_int_equal(s.dead_lettered, 0);
    tu_consumer_done(c);
    assert_int_equal(probe_attempt_max, 1);
    PGconn *conn = tu_connect();
    assert_order(conn, "c-battempt", "q", "1");
    assert_order(conn, "c-battempt", "r", "1");     /* at its attempt 2 */
    PQfinish(conn);
}

/* A second member joins while the first is gathering a batch (it holds
 * up to 1000 and waits 8 s for more): the first lets go of the messages
 * of the partitions it lost, unapplied, and the new owner applies them.
 * Every message once, in order per key. */
static void a_rebalance_while_a_batch_is_gathered(void **state)
{
    const char *topic = "c.brebalance";
    enum { N = 400 };
    PGconn *conn = tu_connect();
    produce_credits(topic, N, 8, "w");
    char note[] = "/tmp/ferry-test-gather-XXXXXX";
    int fd = mkstemp(note);
    assert_true(fd >= 0);
    close(fd);
    unlink(note);
    char *env_a = tu_sprintf("FERRY_CONSUMER_TEST_BATCH_MAX=1000 FERRY_TEST_BATCH_MS=8000 "
                             "FERRY_CONSUMER_TEST_GATHER_FILE=%s", note);
    child a = child_start("c-brebalance", topic, env_a);
    /* The hook's file: a holds a batch and waits for more. */
    int64_t deadline = (int64_t)time(NULL) + 60;
    while (access(note, F_OK) != 0) {
        if ((int64_t)time(NULL) > deadline)
            fail_msg("the first consumer never gathered a batch");
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    unlink(note);
    child b = child_start("c-brebalance", topic,
                          "FERRY_CONSUMER_TEST_BATCH_MAX=1000 FERRY_TEST_BATCH_MS=8000");
    char *sql = tu_sprintf("SELECT count(DISTINCT id) = %d FROM t_applied "
                           "WHERE consumer = 'c-brebalance'", N);
    tu_await(conn, sql, 120000);
    free(sql);
    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    char *out_a = NULL, *out_b = NULL;
    assert_int_equal(child_wait(&a, &out_a), 0);
    assert_int_equal(child_wait(&b, &out_b), 0);
    fprintf(stderr, "batch rebalance: a: %sb: %s", out_a, out_b);
    assert_true(stat_of(out_a, "revoked") >= 1);
    assert_true(stat_of(out_a, "batch_dropped") >= 1);     /* mid-batch, and let go */
    assert_int_equal(stat_of(out_a, "applied") + stat_of(out_b, "applied"), N);
    free(out_a);
    free(out_b);
    free(env_a);
    assert_int_equal(applied_by(conn, "c-brebalance"), N);
    assert_int_equal(out_of_order(conn, "c-brebalance"), 0);
    PQfinish(conn);
}

/* ------------------------------------------------------------------ setup */

static int group_setup(void **state)
{
    if (tu_broker_group_setup(state, &broker) != 0)
        return -1;
    tu_exec_once("CREATE TABLE t_account (id text PRIMARY KEY, balance bigint NOT NULL); "
                 "CREATE TABLE t_applied (n bigserial, consumer text, topic text, key text, "
                 "seq bigint, id uuid, amount bigint, xid xid8 DEFAULT pg_current_xact_id(), "
                 "pid int DEFAULT pg_backend_pid())");
    static const char *const props[] = {"partitioner", "murmur2_random", NULL};
    producer = tu_producer_new(kt_bootstrap(broker), props);
    return producer == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    tu_producer_destroy(producer);
    return tu_broker_group_teardown(state, broker);
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--child") == 0)
        return child_main(argv);
    pid_t unbatched = tu_unbatched_pass_start("test_consume");
    /* Batches are the default (lib/consume.c, DEFAULT_BATCH_MAX = 100):
     * this pass says so through the hook too, so that its consumers batch
     * whatever a test's configuration asks. */
    if (getenv("FERRY_CONSUMER_TEST_BATCH_MAX") == NULL)
        setenv("FERRY_CONSUMER_TEST_BATCH_MAX", "100", 1);
    fprintf(stderr, "test_consume: the pass %s batches (pid %d)\n",
            batches_on() ? "with" : "without", (int)getpid());
    const struct CMUnitTest batch_tests[] = {
        /* In this order so that make test's three shards (every third
         * test of tests[] then these) take about as long: 39, 44 and 42 s
         * of the pass with batches, measured one test at a time. */
        cmocka_unit_test(poison_in_a_batch_parks_only_its_key),
        cmocka_unit_test(a_message_whose_commit_is_refused_is_dead_lettered),
        cmocka_unit_test(a_reused_id_is_skipped_and_its_key_goes_on),
        cmocka_unit_test(a_discard_header_without_text_is_no_marker),
        cmocka_unit_test(crash_after_a_batch_commit_repeats_the_batch),
        cmocka_unit_test(a_rebalance_while_a_batch_is_gathered),
        cmocka_unit_test(a_neighbours_failure_costs_a_message_no_attempt),
        cmocka_unit_test(a_handler_that_must_run_alone_gets_its_own_transaction),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_configuration_is_refused),
        cmocka_unit_test(applies_once_in_order),
        cmocka_unit_test(gap_is_held_until_filled),
        cmocka_unit_test(gap_skipped_by_an_operator),
        cmocka_unit_test(discard_marker_fills_its_position),
        cmocka_unit_test(poison_parks_its_key_only),
        cmocka_unit_test(discarded_dead_letter_releases_the_key),
        cmocka_unit_test(bad_payloads_are_dead_lettered),
        cmocka_unit_test(transient_failures_are_retried),
        cmocka_unit_test(crash_between_commit_and_offset),
        cmocka_unit_test(crash_inside_the_transaction),
        cmocka_unit_test(rebalance_applies_each_once),
        cmocka_unit_test(a_cooperative_rebalance_applies_each_once),
        cmocka_unit_test(end_to_end_through_the_relay),
        cmocka_unit_test(database_restart_mid_stream),
        cmocka_unit_test(the_assignment_is_known_and_logged),
        cmocka_unit_test(the_assignment_is_logged_under_the_cooperative_protocol),
        cmocka_unit_test(a_role_with_only_the_protocol_runs_the_consumer),
    };
    tu_filter_from_env();
    /* One group (one cluster, one broker): the batch tests join it in the
     * pass with batches. */
    enum { NT = sizeof tests / sizeof tests[0], NB = sizeof batch_tests / sizeof batch_tests[0] };
    struct CMUnitTest all[NT + NB];
    memcpy(all, tests, sizeof tests);
    size_t n = NT;
    if (batches_on()) {
        memcpy(all + NT, batch_tests, sizeof batch_tests);
        n += NB;
    }
    n = tu_shard(all, n);
    int failed = _cmocka_run_group_tests(batches_on() ? "test_consume, with batches"
                                                      : "test_consume, one per transaction",
                                         all, n, group_setup, group_teardown);
    return failed + tu_unbatched_pass_wait(unbatched, "test_consume");
}
