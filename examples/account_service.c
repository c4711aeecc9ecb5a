/*
 * account_service.c — the second service: it keeps account balances and
 * learns about money from the first service only through Kafka.
 *
 *   account-service --db CONNINFO --kafka BOOTSTRAP [--name accounts]
 *                   [--topic ledger.credits] [--kafka-prop NAME=VALUE ...]
 *
 * A small but complete ferry consumer, meant to be copied. It owns one
 * table in its own database,
 *
 *   account (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))
 *
 * and applies two event types, keyed by account id, payload
 * {"account": "<id>", "amount": N} with N a positive integer:
 *
 *   Credited   balance += N (the account is created on its first credit)
 *   Debited    balance -= N (the account must exist)
 *
 * The contract, as ferry's consumer (ferry.h, "Consume") gives it:
 *
 *   - Exactly once in effect. Each message's balance change commits in the
 *     same transaction as its ferry.inbox row, and Kafka's offset moves
 *     only after that commit. A message delivered again — a relay that
 *     crashed before its acknowledgement, this service killed between the
 *     commit and the offset, a rebalance — finds its row and changes
 *     nothing. So each credit is applied once, however often it arrives.
 *   - Per-account order. Messages of one key are applied in the order the
 *     emitting service committed them (their ferry_seq positions), so an
 *     account sees its credits and debits in the order they happened. This
 *     holds only if the key is the account, which is why a message whose
 *     key and "account" differ is refused rather than applied.
 *   - Order before availability. A message that cannot be applied is not
 *     retried forever and not skipped: an unknown event type or a
 *     malformed payload goes to ferry.dead_letter at once (the handler
 *     says FERRY_EINVAL), a debit that would take a balance below zero
 *     (the CHECK refuses it) or names no account after max_attempts; its
 *     account is then parked; later messages of that account wait in
 *     ferry.inbox_held until an operator replays or discards the dead
 *     letter. Other accounts keep flowing.
 *   - Conflicts are not failures. Database errors are reported through
 *     ferry_error_from_pg(), which marks serialization failures, deadlocks
 *     and lost connections retriable: those are retried without counting
 *     an attempt. A CHECK violation is not retriable, so it counts.
 *
 * SIGTERM or SIGINT asks the consumer to stop: the message in hand is
 * finished (or left for redelivery), offsets are committed, and the
 * service prints one line on stdout and exits 0:
 *
 *   stats applied=N duplicates=N late=N held=N dead_lettered=N
 *
 * Bad flags exit 2; a database it cannot reach, a ferry schema that is
 * missing (run `ferry-relay migrate` first) or a Kafka client that cannot
 * be made exit 1, with the reason on stderr. ferry's own log lines are
 * JSON on stderr.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "ferry.h"

enum {
    KAFKA_PROPS_MAX = 64,           /* --kafka-prop given at most this often */
    EXIT_USAGE = 2,
    EXIT_FAILURE_RUN = 1,
};

static const char PROG[] = "account-service";

/* ------------------------------------------------------------------ signals */

/* Set by the signal handler; the consumer pointer is published before the
 * handler can need it (see main), so the handler reads it and calls the
 * async-signal-safe ferry_consumer_stop(), nothing else. */
static volatile sig_atomic_t g_stop;
static ferry_consumer *volatile g_consumer;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_consumer != NULL)
        ferry_consumer_stop(g_consumer);
}

/* ------------------------------------------------------------------ the handler */

/* A message this service refuses for what it says (an unknown type, a
 * malformed payload): FERRY_EINVAL, which the consumer dead-letters at
 * once, as no retry would change the answer. */
static ferry_code refuse(ferry_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static ferry_code refuse(ferry_error *err, const char *fmt, ...)
{
    char reason[FERRY_ERROR_MESSAGE_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return ferry_error_set(err, FERRY_EINVAL, 0, "%s", reason);
}

/* Read {"account": "<id>", "amount": N}; the account must be the key. */
static ferry_code read_payload(const ferry_message *m, const char **account_out,
                               json_int_t *amount_out, ferry_error *err)
{
    const json_t *account = json_object_get(m->payload, "account");
    const json_t *amount = json_object_get(m->payload, "amount");
    if (!json_is_string(account) || json_string_length(account) == 0)
        return refuse(err, "%s %s: payload has no \"account\" string", m->type, m->id);
    if (!json_is_integer(amount) || json_integer_value(amount) <= 0)
        return refuse(err, "%s %s: \"amount\" must be a positive integer", m->type, m->id);
    /* Per-account order is per-key order: a key that is not the account
     * would order this message among some other account's messages. */
    if (strcmp(json_string_value(account), m->key) != 0)
        return refuse(err, "%s %s: keyed by \"%.100s\" but names account \"%.100s\"; "
                      "messages about an account must be keyed by its id",
                      m->type, m->id, m->key, json_string_value(account));
    *account_out = json_string_value(account);
    *amount_out = json_integer_value(amount);
    return FERRY_OK;
}

/*
 * Apply one message inside the consumer's transaction (a ferry_handler_fn).
 * Runs its statements on conn, which also holds the message's inbox row:
 * both commit or neither does. It may run more than once for one message,
 * and keeps nothing outside the database between tries.
 */
static ferry_code apply_event(PGconn *conn, const ferry_message *m, void *arg,
                              ferry_error *err)
{
    (void)arg;
    int credit = strcmp(m->type, "Credited") == 0;
    if (!credit && strcmp(m->type, "Debited") != 0)
        return refuse(err, "message %s has type \"%.100s\"; this service applies "
                      "\"Credited\" and \"Debited\" only", m->id, m->type);
    const char *account = NULL;
    json_int_t amount = 0;
    ferry_code rc = read_payload(m, &account, &amount, err);
    if (rc != FERRY_OK)
        return rc;

    char amount_text[32];
    snprintf(amount_text, sizeof amount_text, "%" JSON_INTEGER_FORMAT, amount);
    const char *params[2] = {account, amount_text};
    /* A debit is a plain UPDATE: an upsert of a negative row would trip the
     * CHECK before it found the existing row. The CHECK (balance >= 0) is
     * what refuses an overdraft: SQLSTATE 23514, not retriable. */
    PGresult *res = PQexecParams(
        conn,
        credit ? "INSERT INTO account AS a (id, balance) VALUES ($1, $2::bigint) "
                 "ON CONFLICT (id) DO UPDATE SET balance = a.balance + EXCLUDED.balance "
                 "RETURNING balance"
               : "UPDATE account SET balance = balance - $2::bigint WHERE id = $1 "
                 "RETURNING balance",
        2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char context[160];
        snprintf(context, sizeof context, "could not %s account %.64s by %s",
                 credit ? "credit" : "debit", account, amount_text);
        rc = ferry_error_from_pg(err, conn, res, context);
    } else if (PQntuples(res) != 1) {
        /* Not the message's fault alone (the account may be opened by a
         * message still on its way elsewhere): counted attempts. */
        rc = ferry_error_set(err, FERRY_EUSER, 0, "could not debit account %.100s: no such "
                             "account", account);
    }
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------------ start-up */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: %s --db CONNINFO --kafka BOOTSTRAP [options]\n"
            "Applies Credited/Debited events from Kafka to table account, each once.\n"
            "\n"
            "  --db CONNINFO        libpq conninfo of this service's database (its ferry\n"
            "                       schema must be migrated: `ferry-relay migrate`)\n"
            "  --kafka BOOTSTRAP    Kafka bootstrap servers\n"
            "  --name NAME          consumer name and group (default accounts)\n"
            "  --topic TOPIC        topic to read (default ledger.credits)\n"
            "  --kafka-prop K=V     a librdkafka property, e.g. TLS or SASL (repeatable,\n"
            "                       up to %d)\n"
            "  --help               this text\n"
            "\n"
            "Stops on SIGTERM or SIGINT and prints one stats line on stdout.\n",
            PROG, KAFKA_PROPS_MAX);
}

typedef struct options {
    const char *db;
    const char *kafka;
    const char *name;
    const char *topic;
    const char *props[KAFKA_PROPS_MAX + 1];     /* NULL-terminated */
    int prop_count;
} options;

/* 0 on success, else the exit code. */
static int parse_args(int argc, char **argv, options *o)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"kafka", required_argument, NULL, 'k'},
        {"name", required_argument, NULL, 'n'},
        {"topic", required_argument, NULL, 't'},
        {"kafka-prop", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->name = "accounts";
    o->topic = "ledger.credits";
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'd': o->db = optarg; break;
        case 'k': o->kafka = optarg; break;
        case 'n': o->name = optarg; break;
        case 't': o->topic = optarg; break;
        case 'p':
            if (o->prop_count == KAFKA_PROPS_MAX) {
                fprintf(stderr, "%s: more than %d --kafka-prop options\n", PROG,
                        KAFKA_PROPS_MAX);
                return EXIT_USAGE;
            }
            if (strchr(optarg, '=') == NULL || optarg[0] == '=') {
                fprintf(stderr, "%s: --kafka-prop \"%s\" is not NAME=VALUE\n", PROG, optarg);
                return EXIT_USAGE;
            }
            o->props[o->prop_count++] = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            if (optopt != 0)
                fprintf(stderr, "%s: option --%s needs a value\n", PROG,
                        argv[optind - 1] + 2);
            else
                fprintf(stderr, "%s: unknown option %s\n", PROG, argv[optind - 1]);
            fprintf(stderr, "Try `%s --help'.\n", PROG);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument \"%s\"\n", PROG, argv[optind]);
        return EXIT_USAGE;
    }
    if (o->db == NULL || o->kafka == NULL || o->kafka[0] == '\0') {
        fprintf(stderr, "%s: --db and --kafka are required; try `%s --help'.\n", PROG, PROG);
        return EXIT_USAGE;
    }
    return 0;
}

/* Create the service's table if missing. The advisory lock keeps two
 * instances starting at once from racing in CREATE TABLE IF NOT EXISTS
 * (which is not safe against itself). The ferry schema is checked first,
 * so that a database nobody migrated fails with that reason. */
static int prepare_schema(const char *conninfo)
{
    int rc = -1;
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "%s: could not connect to the database: %s", PROG,
                PQerrorMessage(conn));
        goto out;
    }
    int version = 0;
    ferry_error err;
    ferry_code fc = ferry_schema_version(conn, &version, &err);
    if (fc != FERRY_OK) {
        fprintf(stderr, "%s: could not read the ferry schema version: %s\n", PROG, err.message);
        goto out;
    }
    if (version != ferry_schema_version_known()) {
        fprintf(stderr, "%s: the database's ferry schema is at version %d, this service "
                "needs %d: run `ferry-relay migrate --db ...` first\n", PROG, version,
                ferry_schema_version_known());
        goto out;
    }
    static const char *const ddl[] = {
        "BEGIN",
        "SELECT pg_advisory_xact_lock(hashtext('account-service schema'))",
        "SET LOCAL client_min_messages = warning",     /* no "already exists" NOTICE */
        "CREATE TABLE IF NOT EXISTS account (id text PRIMARY KEY, "
        "balance bigint NOT NULL CHECK (balance >= 0))",
        "COMMIT",
    };
    for (size_t i = 0; i < sizeof ddl / sizeof ddl[0]; i++) {
        PGresult *res = PQexec(conn, ddl[i]);
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            fprintf(stderr, "%s: could not create table account: %s", PROG,
                    PQerrorMessage(conn));
            goto out;
        }
    }
    rc = 0;
out:
    PQfinish(conn);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    int code = parse_args(argc, argv, &o);
    if (code != 0)
        return code;

    /* Before anything slow, so that an early SIGTERM is not lost: it sets
     * g_stop, and the consumer is stopped as soon as it exists. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (prepare_schema(o.db) != 0)
        return EXIT_FAILURE_RUN;

    const char *topics[1] = {o.topic};
    ferry_consumer_conf conf = {
        .name = o.name,
        .db = o.db,
        .kafka = o.kafka,
        .topics = topics,
        .topic_count = 1,
        .kafka_props = o.props,
        .handler = apply_event,
        .isolation = FERRY_READ_COMMITTED,  /* each change is one row-locking statement */
    };
    ferry_consumer *c = NULL;
    ferry_error err;
    ferry_code rc = ferry_consumer_new(&conf, &c, &err);
    if (rc != FERRY_OK) {
        fprintf(stderr, "%s: could not start the consumer: %s: %s\n", PROG,
                ferry_code_name(rc), err.message);
        return rc == FERRY_EINVAL ? EXIT_USAGE : EXIT_FAILURE_RUN;
    }
    g_consumer = c;
    if (g_stop)
        ferry_consumer_stop(c);
    fprintf(stderr, "%s: consumer %s reading %s\n", PROG, o.name, o.topic);

    rc = ferry_consumer_run(c, &err);

    ferry_consumer_stats s;
    ferry_consumer_stats_get(c, &s);
    /* applied counts held messages applied later (drained) too: every
     * message whose effect is in the table. */
    printf("stats applied=%" PRIu64 " duplicates=%" PRIu64 " late=%" PRIu64 " held=%" PRIu64
           " dead_lettered=%" PRIu64 "\n",
           s.applied + s.drained, s.duplicates, s.late, s.held_gap + s.held_parked,
           s.dead_lettered);
    fflush(stdout);
    g_consumer = NULL;
    ferry_consumer_destroy(c);
    if (rc != FERRY_OK) {
        fprintf(stderr, "%s: stopped on an error: %s: %s\n", PROG, ferry_code_name(rc),
                err.message);
        return EXIT_FAILURE_RUN;
    }
    return 0;
}
