/*
 * lang_demo.c — one credit from C through Python and Node.js back to C,
 * each hop exactly once though Kafka delivers every message twice.
 *
 * A narrated walkthrough, four services with a database each:
 *
 *   payments (C, ferry_emit)        --lang.to-python-->
 *   credit_service.py (Python)      --lang.to-node-->
 *   credit_service.js (Node.js)     --lang.to-c-->
 *   account-service (C, the C consumer)
 *
 * The Python and Node.js services (examples/python, examples/node) use
 * the SQL consumer protocol (schema 12): each applies the credit to its
 * own table and, in the same transaction, emits it to the next hop
 * through the outbox. `ferry-relay run --once` publishes each outbox. At
 * every hop the demo publishes an exact copy of the message, as a relay
 * that crashed before its acknowledgement would, and shows the service
 * skipping it. Every step checks what it says, so `make demo` is a smoke
 * test too: the first claim that does not hold exits 1.
 *
 * $FERRY_RELAY_BIN (default build/rel/ferry-relay), $FERRY_ACCOUNT_SERVICE_BIN
 * (build/rel/account-service), $FERRY_PYTHON (/usr/bin/python3, where
 * Debian's python3-psycopg2 and python3-confluent-kafka are) and
 * $FERRY_NODE (node on PATH) name the programs.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "ferry.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"
#include "narrate.h"

enum {
    RELAY_TIMEOUT_MS = 60000,
    WAIT_TIMEOUT_MS = 60000,        /* a service joins its group and deals with both copies */
    STOP_TIMEOUT_MS = 30000,
    CONSUME_TIMEOUT_MS = 30000,
    POLL_INTERVAL_MS = 50,
    LOG_MAX = 1 << 20,
    AMOUNT = 25,
};

/* One hop: a service, its database, the topic it reads and the one it
 * passes the credit on to (NULL: the end of the line). */
typedef struct hop {
    const char *title;          /* "Python", ... */
    const char *db;             /* its database, and its consumer name */
    const char *upstream;       /* the database whose outbox feeds its topic */
    const char *topic, *next;
} hop;

static const hop hops[] = {
    {"Python (psycopg2 + confluent-kafka)", "py", "payments", "lang.to-python", "lang.to-node"},
    {"Node.js (node-postgres + kafkajs)", "node", "py", "lang.to-node", "lang.to-c"},
    {"C (account-service, the C consumer)", "accounts", "node", "lang.to-c", NULL},
};
enum { HOPS = sizeof hops / sizeof hops[0] };

typedef struct demo {
    fpg *pg;
    kt_broker *kb;
    const char *relay_bin, *account_bin, *python, *node;
} demo;

static long stat_of(const char *line, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", name);
    const char *p = strstr(line, pat);
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

/* ------------------------------------------------------------ Kafka */

/* The offset consumer group `group` committed on topic/partition, or -1. */
static int64_t committed(rd_kafka_t *rk, const char *topic, int32_t partition)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    int64_t off = -1;
    if (rd_kafka_committed(rk, l, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        l->elems[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        off = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    return off;
}

static rd_kafka_t *group_reader(const char *bootstrap, const char *group)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        demo_fail("Kafka configuration: %s", errstr);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        demo_fail("could not create a Kafka consumer: %s", errstr);
    }
    return rk;
}

/* ------------------------------------------------------------ the walk */

static PGconn *connect_db(demo *d, const char *db)
{
    char *ci = fpg_conninfo_for(d->pg, NULL, db);
    PGconn *c = ci ? PQconnectdb(ci) : NULL;
    free(ci);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        demo_fail("could not connect to %s: %s", db, c ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int setting_up(demo *d)
{
    demo_step("A throwaway PostgreSQL with one database per service: payments (C), py "
              "(Python), node (Node.js), accounts (C)");
    static const char *const dbs[] = {"payments", "py", "node", "accounts"};
    if ((d->pg = demo_cluster(dbs, 4)) == NULL)
        return -1;
    for (size_t i = 0; i < 4; i++) {
        PGconn *c = connect_db(d, dbs[i]);
        if (c == NULL)
            return -1;
        ferry_error err;
        int version = 0;
        ferry_code rc = ferry_migrate(c, &version, &err);
        PQfinish(c);
        if (rc != FERRY_OK)
            return demo_ferry_failed("ferry_migrate", rc, &err);
        demo_say("%-8s ferry schema version %d", dbs[i], version);
    }
    demo_step("A Kafka-protocol broker (`ferry-relay devkafka`, librdkafka's mock cluster)");
    d->kb = kt_start(1);
    if (d->kb == NULL)
        return demo_fail("could not start the broker (see above)");
    demo_say("bootstrap servers %s", kt_bootstrap(d->kb));
    return 0;
}

static int payments_emits(demo *d)
{
    demo_step("payments (C): debit a wallet and emit a Credited message in one transaction");
    PGconn *c = connect_db(d, "payments");
    if (c == NULL)
        return -1;
    int rc = demo_exec(c, "CREATE TABLE wallet (id text PRIMARY KEY, balance bigint NOT NULL)");
    if (rc == 0)
        rc = demo_exec(c, "INSERT INTO wallet VALUES ('w-ada', 100)");
    if (rc == 0)
        rc = demo_exec(c, "BEGIN");
    if (rc == 0)
        rc = demo_exec(c, "UPDATE wallet SET balance = balance - 25 WHERE id = 'w-ada'");
    if (rc == 0) {
        ferry_msg m = {.topic = "lang.to-python", .key = "acct-1", .type = "Credited",
                       .aggregate_type = "account",
                       .payload = "{\"account\": \"acct-1\", \"amount\": 25}"};
        ferry_uuid id;
        ferry_error err;
        ferry_code fc = ferry_emit(c, &m, NULL, &id, &err);
        if (fc != FERRY_OK)
            rc = demo_ferry_failed("ferry_emit", fc, &err);
        else {
            char text[FERRY_UUID_STRING_SIZE];
            ferry_uuid_format(&id, text);
            demo_say("ferry_emit(lang.to-python, key acct-1, Credited {amount: 25}) -> id %s",
                     text);
        }
    }
    if (rc == 0)
        rc = demo_exec(c, "COMMIT");
    if (rc == 0)
        rc = demo_print_table(c, "SELECT id, balance FROM wallet", NULL, 6, 0);
    PQfinish(c);
    return rc;
}

/* ferry-relay run --once on db's outbox. */
static int relay(demo *d, const char *db)
{
    char *ci = fpg_conninfo_for(d->pg, NULL, db);
    const char *argv[] = {d->relay_bin, "run", "--once", "--db", ci, "--kafka",
                          kt_bootstrap(d->kb), "--holder", "demo-relay", NULL};
    demo_say("$ ferry-relay run --once --db <%s> --kafka %s", db, kt_bootstrap(d->kb));
    char *log = NULL;
    int status = 0;
    int rc = demo_run(argv, RELAY_TIMEOUT_MS, LOG_MAX, &log, &status);
    free(ci);
    if (rc == 0 && status != 0) {
        fprintf(stderr, "%s", log ? log : "");
        rc = demo_fail("the relay exited with status %d", status);
    }
    free(log);
    return rc;
}

static int one_hop(demo *d, const hop *h)
{
    demo_step("Hop to %s: relay %s's outbox to %s, and publish a copy of the message",
              h->title, h->upstream, h->topic);
    if (relay(d, h->upstream) != 0)
        return -1;
    kt_msgs *got = kt_consume(kt_bootstrap(d->kb), h->topic, 1, CONSUME_TIMEOUT_MS);
    if (got == NULL || got->count != 1) {
        kt_msgs_free(got);
        return demo_fail("expected 1 message on %s", h->topic);
    }
    const kt_msg *m = &got->msgs[0];
    demo_say("%s [%d] offset %lld: key %s, %s", h->topic, (int)m->partition,
             (long long)m->offset, m->key ? m->key : "-", m->value ? m->value : "null");
    demo_say("headers: ferry_id %s, ferry_seq %s, ce_source %s",
             kt_header(m, "ferry_id") ? kt_header(m, "ferry_id") : "-",
             kt_header(m, "ferry_seq") ? kt_header(m, "ferry_seq") : "-",
             kt_header(m, "ce_source") ? kt_header(m, "ce_source") : "-");
    demo_delivery copy = {0};
    int rc = demo_publish_copy(kt_bootstrap(d->kb), m, &copy);
    int32_t partition = m->partition;
    kt_msgs_free(got);
    if (rc != 0)
        return -1;
    demo_say("the copy: %s [%d] offset %lld, same key, value and headers (a relay that died "
             "before its acknowledgement sends it again)", h->topic, (int)copy.partition,
             (long long)copy.offset);

    char *ci = fpg_conninfo_for(d->pg, NULL, h->db);
    const char *py[] = {d->python, "examples/python/credit_service.py", "--db", ci, "--kafka",
                        kt_bootstrap(d->kb), "--name", h->db, "--topic", h->topic,
                        "--emit-topic", h->next, NULL};
    const char *js[] = {d->node, "examples/node/credit_service.js", "--db", ci, "--kafka",
                        kt_bootstrap(d->kb), "--name", h->db, "--topic", h->topic,
                        "--emit-topic", h->next, NULL};
    const char *c[] = {d->account_bin, "--db", ci, "--kafka", kt_bootstrap(d->kb), "--name",
                       h->db, "--topic", h->topic, NULL};
    const char *const *argv = strcmp(h->db, "py") == 0 ? py : strcmp(h->db, "node") == 0 ? js : c;
    demo_say("$ %s %s --name %s --topic %s%s%s", argv[0], argv[1][0] == '-' ? "" : argv[1],
             h->db, h->topic, h->next ? " --emit-topic " : "", h->next ? h->next : "");
    demo_service svc;
    rc = demo_service_start(&svc, "the service", argv);
    free(ci);
    if (rc != 0)
        return -1;

    /* Done with both copies when its group committed past the second. */
    rd_kafka_t *reader = group_reader(kt_bootstrap(d->kb), h->db);
    long long t0 = clk_mono_ms();
    int64_t off = -1;
    while (rc == 0 && reader != NULL && (off = committed(reader, h->topic, partition)) <=
                                            copy.offset) {
        if (demo_service_exited(&svc)) {
            rc = demo_fail("the service exited with status %d", svc.status);
            demo_service_show_log(&svc);
        } else if (clk_mono_ms() - t0 > WAIT_TIMEOUT_MS) {
            rc = demo_fail("the service did not get past both copies in %d ms",
                           WAIT_TIMEOUT_MS);
            demo_service_show_log(&svc);
        } else {
            clk_sleep_ms(POLL_INTERVAL_MS);
        }
    }
    if (reader != NULL)
        rd_kafka_destroy(reader);
    else
        rc = -1;
    if (rc == 0)
        demo_say("group %s committed offset %lld after %lld ms: both copies dealt with", h->db,
                 (long long)off, clk_mono_ms() - t0);

    char out[512];
    if (rc == 0 && demo_service_stop(&svc, STOP_TIMEOUT_MS, out, sizeof out) != 0)
        rc = -1;
    if (rc == 0) {
        char *nl = strchr(out, '\n');
        if (nl != NULL)
            *nl = '\0';
        long applied = stat_of(out, "applied"), skipped = stat_of(out, "duplicates") +
                                                          stat_of(out, "late");
        demo_say("SIGTERM; exit %d; %s", svc.status, out);
        if (svc.status != 0 || applied != 1 || skipped != 1) {
            rc = demo_fail("expected exit 0, applied=1 and one copy skipped");
            demo_service_show_log(&svc);
        }
    }
    demo_service_cleanup(&svc);
    if (rc != 0)
        return rc;

    PGconn *db = connect_db(d, h->db);
    if (db == NULL)
        return -1;
    long balance = -1, passed = -1, inbox = -1;
    rc = demo_query_long(db, "SELECT coalesce(sum(balance), 0) FROM account", NULL, &balance);
    if (rc == 0)
        rc = demo_query_long(db, "SELECT count(*) FROM ferry.inbox", NULL, &inbox);
    if (rc == 0)
        rc = demo_query_long(db, "SELECT count(*) FROM ferry.outbox", NULL, &passed);
    PQfinish(db);
    if (rc != 0)
        return -1;
    demo_say("%s: account acct-1 credited %ld, inbox rows %ld, messages passed on %ld",
             h->db, balance, inbox, passed);
    if (balance != AMOUNT || inbox != 1 || passed != (h->next ? 1 : 0))
        return demo_fail("expected %d credited once and %d passed on", AMOUNT,
                         h->next ? 1 : 0);
    return 0;
}

int main(int argc, char **argv)
{
    int args = demo_args(argc, argv,
                         "one credit from C through Python and Node.js back to C, each hop "
                         "exactly once though Kafka delivers every message twice");
    if (args >= 0)
        return args;
    setvbuf(stdout, NULL, _IOLBF, 0);
    demo d = {.relay_bin = demo_relay_bin(),
              .account_bin = demo_env("FERRY_ACCOUNT_SERVICE_BIN", "build/rel/account-service"),
              .python = demo_env("FERRY_PYTHON", "/usr/bin/python3"),
              .node = demo_env("FERRY_NODE", "node")};

    printf("ferry %s: one credit from C through Python and Node.js back to C, each hop exactly once though Kafka delivers every message twice\n",
           ferry_version());
    printf("(Kafka here is librdkafka's mock cluster, run by `ferry-relay devkafka`.)\n");
    int rc = setting_up(&d);
    if (rc == 0)
        rc = payments_emits(&d);
    for (int i = 0; rc == 0 && i < HOPS; i++)
        rc = one_hop(&d, &hops[i]);
    if (rc == 0) {
        demo_step("What happened");
        demo_say("one credit of %d left payments (C) and was applied once in Python, once in "
                 "Node.js and once in C,", AMOUNT);
        demo_say("each service applying it and passing it on in one transaction, through the "
                 "SQL consumer protocol;");
        demo_say("Kafka delivered it twice at every hop, and every service skipped the copy.");
    }
    demo_step("Tearing down the broker and the cluster");
    rc = demo_broker_stop(d.kb, rc);
    fpg_destroy(d.pg);
    return demo_exit(rc);
}
