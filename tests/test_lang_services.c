/*
 * test_lang_services.c — the reference services in Python and Node.js
 * (examples/python, examples/node) against a real PostgreSQL and the
 * development broker: each applies a stream of credits through the SQL
 * consumer protocol, is killed with SIGKILL in the middle of it,
 * restarted, and must end with every credit applied exactly once and
 * passed on through its outbox exactly once.
 *
 * The chain: this test emits CREDITS credits in its own database and a
 * relay publishes them to lang.py; the Python service (database py)
 * applies them and emits to lang.node; a relay publishes py's outbox; the
 * Node.js service (database node) applies them and emits to lang.c.
 *
 * The interpreters come from Debian (scripts/deps.sh: python3-psycopg2,
 * python3-confluent-kafka, nodejs, npm) and the Node modules from
 * examples/node/package-lock.json (`npm ci`, run by make before the
 * tests). $FERRY_PYTHON (default /usr/bin/python3) and $FERRY_NODE
 * (default node on PATH) name them.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_kafka.h"
#include "tu_proc.h"

enum {
    CREDITS = 400,
    ACCOUNTS = 7,
    KILL_AFTER = 60,            /* applied credits before the SIGKILL */
    APPLY_TIMEOUT_MS = 120000,
};

static kt_broker *broker;

/* The offsets group `group` committed on topic, summed over its
 * partitions: how many messages Kafka will not hand a restarted member
 * again. */
static long committed_total(const char *group, const char *topic)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", kt_bootstrap(broker), errstr,
                          sizeof errstr) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        fail_msg("%s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL)
        fail_msg("%s", errstr);
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    if (rd_kafka_metadata(rk, 0, t, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        md->topic_cnt != 1)
        fail_msg("no metadata for %s", topic);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < md->topics[0].partition_cnt; i++)
        rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    if (rd_kafka_committed(rk, l, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_msg("could not read %s's committed offsets", group);
    long total = 0;
    for (int i = 0; i < l->cnt; i++)
        if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && l->elems[i].offset > 0)
            total += (long)l->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return total;
}

static long count_of(const char *text, const char *needle)
{
    long n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static int group_setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    broker = kt_start(1);
    if (broker == NULL)
        return -1;
    tu_exec_once("CREATE DATABASE py");
    tu_exec_once("CREATE DATABASE node");
    for (int i = 0; i < 2; i++) {
        char *ci = fpg_conninfo_for(tu_pg, NULL, i == 0 ? "py" : "node");
        PGconn *c = PQconnectdb(ci);
        free(ci);
        ferry_error err;
        int version;
        if (PQstatus(c) != CONNECTION_OK || ferry_migrate(c, &version, &err) != FERRY_OK) {
            fprintf(stderr, "could not migrate database %d: %s\n", i, PQerrorMessage(c));
            PQfinish(c);
            return -1;
        }
        PQfinish(c);
    }
    return 0;
}

static int group_teardown(void **state)
{
    return tu_broker_group_teardown(state, broker);
}

static PGconn *connect_db(const char *db)
{
    char *ci = fpg_conninfo_for(tu_pg, NULL, db);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("could not connect to %s: %s", db, PQerrorMessage(c));
    return c;
}

/* `ferry-relay run --once` on database db: everything in its outbox goes
 * out. */
static void relay_once(const char *db)
{
    char *ci = fpg_conninfo_for(tu_pg, NULL, db);
    const char *argv[] = {tu_relay_bin(), "run", "--once", "--db", ci, "--kafka",
                          kt_bootstrap(broker), "--holder", "lang-relay", NULL};
    char *err = NULL;
    int status = tu_run(argv, 60000, NULL, &err);
    if (status != 0)
        fail_msg("the relay on %s exited %d:\n%s", db, status, err);
    free(err);
    free(ci);
    PGconn *c = connect_db(db);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
}

/* name's path on $PATH, into buf; name itself when it is not there. */
static const char *on_path(const char *name, char *buf, size_t size)
{
    const char *path = getenv("PATH");
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, size, "%.*s/%s", (int)n, path, name);
        if (n > 0 && access(buf, X_OK) == 0)
            return buf;
        path += n + (path[n] == ':');
    }
    return name;
}

static tu_proc start_service(const char *lang, const char *topic, const char *emit_topic)
{
    char *ci = fpg_conninfo_for(tu_pg, NULL, lang);
    const char *py = getenv("FERRY_PYTHON");
    const char *node = getenv("FERRY_NODE");
    char found[4096];
    /* Debian's python3, where python3-psycopg2 is, whatever else comes
     * first on PATH (a pyenv shim, say); node wherever it is. */
    const char *interp = strcmp(lang, "py") == 0
                             ? (py && *py ? py : "/usr/bin/python3")
                             : (node && *node ? node : on_path("node", found, sizeof found));
    const char *script = strcmp(lang, "py") == 0 ? "examples/python/credit_service.py"
                                                 : "examples/node/credit_service.js";
    if (access(interp, X_OK) != 0)
        fail_msg("%s is not there: run scripts/deps.sh (or set FERRY_PYTHON/FERRY_NODE)",
                 interp);
    const char *argv[] = {interp, script, "--db", ci, "--kafka", kt_bootstrap(broker),
                          "--name", lang, "--topic", topic, "--emit-topic", emit_topic, NULL};
    /* The child's ASan options mean nothing to an interpreter; the test's
     * LD_PRELOAD-free environment is passed on as it is. */
    tu_proc p = tu_proc_start(argv, NULL);
    free(ci);
    return p;
}

/* Wait until the service's database shows at least want applied
 * credits; the count. Fails, showing its log, if it dies first. */
static long await_applied(tu_proc *p, PGconn *c, const char *consumer, long want)
{
    char *sql = tu_sprintf("SELECT count(*) FROM ferry.inbox WHERE consumer = '%s'", consumer);
    long long deadline = clk_mono_ms() + APPLY_TIMEOUT_MS;
    long got;
    while ((got = (long)tu_int(c, sql)) < want) {
        if (tu_proc_poll(p) >= 0)
            tu_proc_fail(p, "%s exited (%d) with %ld of %ld credits applied", consumer,
                         p->status, got, want);
        if (clk_mono_ms() > deadline)
            tu_proc_fail(p, "%ld of %ld credits applied after %d ms", got, want,
                         APPLY_TIMEOUT_MS);
        clk_sleep_ms(5);
    }
    free(sql);
    return got;
}

/* The service `lang` reads `topic`: killed mid-stream, restarted, and at
 * the end every credit applied once, and passed on once. */
static void killed_mid_stream_applies_each_credit_once(const char *lang, const char *topic,
                                                        const char *emit_topic)
{
    PGconn *c = connect_db(lang);
    tu_proc p = start_service(lang, topic, emit_topic);
    long at_kill = await_applied(&p, c, lang, KILL_AFTER);
    kill(p.pid, SIGKILL);
    assert_int_equal(tu_proc_wait(&p, 10000), 128 + SIGKILL);
    tu_proc_done(&p);
    /* The kill fired in the middle of the stream, not after it. */
    if (at_kill >= CREDITS)
        fail_msg("%s applied all %d credits before it could be killed", lang, CREDITS);
    long after_kill = (long)tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.inbox "
                                                    "WHERE consumer = '%s'", lang));
    assert_true(after_kill < CREDITS);
    /* What it applied but Kafka had not heard of comes again: each must
     * be skipped, not applied twice (the totals below), and said so. */
    long committed = committed_total(lang, topic);
    assert_true(committed <= after_kill);

    tu_proc again = start_service(lang, topic, emit_topic);
    await_applied(&again, c, lang, CREDITS);
    /* Exactly once: every credit's amount once, each passed on once, and
     * nothing dead-lettered or left held. */
    assert_int_equal(tu_int(c, "SELECT sum(balance) FROM account"),
                     (long long)CREDITS * (CREDITS + 1) / 2);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM account"), ACCOUNTS);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), CREDITS);
    assert_int_equal(tu_int(c, "SELECT count(DISTINCT (payload->>'amount')) FROM ferry.outbox"),
                     CREDITS);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox_held"), 0);
    /* Per-account order survived the kill: positions 1..n in the order
     * the source committed them, and the outbox in that order too. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT aggregateid, "
                               "array_agg((payload->>'amount')::int ORDER BY seq) AS a "
                               "FROM ferry.outbox GROUP BY aggregateid) x "
                               "WHERE a <> (SELECT array_agg(v ORDER BY v) FROM unnest(a) v)"),
                     0);
    char *log = tu_proc_log(&again);
    long skipped = count_of(log, "\"consumer.skipped\"");
    free(log);
    fprintf(stderr, "%s: killed with %ld applied, %ld committed in Kafka; the restart skipped "
            "%ld\n", lang, after_kill, committed, skipped);
    if (skipped < after_kill - committed)
        fail_msg("%ld redelivered messages were applied before, but only %ld were skipped",
                 after_kill - committed, skipped);
    assert_int_equal(tu_proc_finish(&again, 30000), 0);
    PQfinish(c);
}

static void python_service_killed_mid_stream_applies_each_credit_once(void **state)
{
    /* CREDITS credits of 1..CREDITS over ACCOUNTS accounts, in order. */
    PGconn *src = tu_connect();
    tu_exec(src, "BEGIN");
    char *sql = tu_sprintf("SELECT ferry.emit_message(topic => 'lang.py', key => 'acct-' || "
                           "(i %% %d), type => 'Credited', aggregatetype => 'account', "
                           "payload => json_build_object('account', 'acct-' || (i %% %d), "
                           "'amount', i)::text) FROM generate_series(1, %d) i",
                           ACCOUNTS, ACCOUNTS, CREDITS);
    tu_exec(src, sql);
    free(sql);
    tu_exec(src, "COMMIT");
    PQfinish(src);
    relay_once("postgres");
    killed_mid_stream_applies_each_credit_once("py", "lang.py", "lang.node");
}

static void node_service_killed_mid_stream_applies_each_credit_once(void **state)
{
    relay_once("py");
    killed_mid_stream_applies_each_credit_once("node", "lang.node", "lang.c");
    relay_once("node");
    kt_msgs *out = kt_consume(kt_bootstrap(broker), "lang.c", CREDITS, 30000);
    assert_non_null(out);
    assert_int_equal(out->count, CREDITS);
    kt_msgs_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(python_service_killed_mid_stream_applies_each_credit_once),
        cmocka_unit_test(node_service_killed_mid_stream_applies_each_credit_once),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
