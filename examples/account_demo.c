/*
 * account_demo.c — two services, two databases, one Kafka topic between
 * them, and not a cent created or lost.
 *
 * A narrated walkthrough. The first service, payments, moves money out of
 * its wallets: each transfer debits a wallet and emits a "Credited"
 * message in the same transaction (ferry_tx_run + ferry_emit). The second
 * service, account-service (examples/account_service.c, a separate
 * program with its own database), consumes the topic through ferry's
 * inbox and credits the receiving accounts. `ferry-relay run --once` sits
 * in between. The money is conserved across both databases:
 *
 *   sum(payments.wallet.balance) + sum(accounts.account.balance) == 1000
 *
 * and stays so when Kafka delivers a message twice: the demo publishes an
 * exact copy of one credit, as a relay that crashed before its
 * acknowledgement would, and shows the service skipping it. Every step
 * checks that what it says happened did happen, so `make demo` is also a
 * smoke test: it exits 1 on the first step that does not behave as
 * described.
 *
 * $FERRY_RELAY_BIN is the relay (by default build/rel/ferry-relay; it also
 * runs the dev broker), $FERRY_ACCOUNT_SERVICE_BIN the second service (by
 * default build/rel/account-service).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "ferry.h"
#include "../tests/harness/clock.h"
#include "../tests/harness/kafkatmp.h"
#include "../tests/harness/pgtmp.h"
#include "narrate.h"

enum {
    RELAY_TIMEOUT_MS = 60000,       /* `run --once` of a few messages takes well under 1 s */
    WAIT_TIMEOUT_MS = 30000,        /* for the service to apply what was published */
    POLL_INTERVAL_MS = 20,          /* between looks at the accounts database */
    STOP_TIMEOUT_MS = 30000,        /* for the service to exit after SIGTERM */
    CONSUME_TIMEOUT_MS = 30000,     /* kt_consume returns as soon as the messages are in */
    LOG_MAX = 1 << 20,              /* bytes of a child's log we keep */
    TRANSFERS = 20,
    INITIAL_TOTAL = 1000,
    WALLETS = 3,
    ACCOUNTS = 4,
};

static const char TOPIC[] = "ledger.credits";
static const char CONSUMER[] = "accounts";     /* the service's consumer name (its default) */

static const char *const wallet_ids[WALLETS] = {"w-ada", "w-bob", "w-cy"};
static const long wallet_start[WALLETS] = {500, 300, 200};
static const char *const account_ids[ACCOUNTS] = {"acct-1", "acct-2", "acct-3", "acct-4"};

/* ------------------------------------------------------------ the second service */

typedef demo_service service;

static int service_start(service *svc, const char *bin, const char *db, const char *bootstrap)
{
    const char *argv[] = {bin, "--db", db, "--kafka", bootstrap, "--name", CONSUMER,
                          "--topic", TOPIC, NULL};
    return demo_service_start(svc, "account-service", argv);
}

/* The service died on its own: that is a failure of the step waiting on it. */
static int service_died(service *svc)
{
    int rc = demo_fail("account-service exited with status %d", svc->status);
    demo_service_show_log(svc);
    return rc;
}

/* Poll sql (one number) on conn until it equals want, at most
 * WAIT_TIMEOUT_MS; fail early if the service dies. *waited_ms gets the
 * time it took. */
static int await_value(PGconn *conn, service *svc, const char *sql, const char *param,
                       long want, long long *waited_ms)
{
    long long t0 = clk_mono_ms();
    long got = -1;
    for (;;) {
        if (demo_query_long(conn, sql, param, &got) != 0)
            return -1;
        if (got == want)
            break;
        if (demo_service_exited(svc))
            return service_died(svc);
        if (clk_mono_ms() - t0 > WAIT_TIMEOUT_MS) {
            int rc = demo_fail("waited %d ms for \"%s\" to reach %ld; it is %ld", WAIT_TIMEOUT_MS,
                          sql, want, got);
            demo_service_show_log(svc);
            return rc;
        }
        clk_sleep_ms(POLL_INTERVAL_MS);
    }
    *waited_ms = clk_mono_ms() - t0;
    return 0;
}

/* ------------------------------------------------------------ the relay */

/* `ferry-relay run --once` on db: publish what is ready, exit. Its JSON log
 * is read for the relay.stop line's count of delivered messages; warnings
 * and errors are shown. */
static int run_relay(const char *bin, const char *db, const char *bootstrap,
                     long long *delivered_out)
{
    const char *argv[] = {bin, "run", "--once", "--db", db, "--kafka", bootstrap,
                          "--holder", "demo-relay", NULL};
    char *log = NULL;
    int status = 0;
    if (demo_run(argv, RELAY_TIMEOUT_MS, LOG_MAX, &log, &status) != 0)
        return -1;

    long long delivered = -1;
    for (char *line = strtok(log, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        const char *event = json_string_value(json_object_get(o, "event"));
        const char *level = json_string_value(json_object_get(o, "level"));
        const char *msg = json_string_value(json_object_get(o, "msg"));
        if (level != NULL && (strcmp(level, "warn") == 0 || strcmp(level, "error") == 0))
            demo_say("  relay log, %s %s: %.90s", level, event ? event : "-", msg ? msg : "");
        if (event != NULL && strcmp(event, "relay.stop") == 0 &&
            json_is_integer(json_object_get(o, "delivered")))
            delivered = (long long)json_integer_value(json_object_get(o, "delivered"));
        json_decref(o);
    }
    free(log);
    if (status != 0 || delivered < 0)
        return demo_fail("the relay exited with status %d%s", status,
                    delivered < 0 ? " and no relay.stop line" : "");
    *delivered_out = delivered;
    return 0;
}

/* Relay the outbox of payments and check that it published `want` messages
 * and left the outbox empty. */
static int relay_all(const char *bin, const char *db, PGconn *payments, const char *bootstrap,
                     long want)
{
    demo_say("$ ferry-relay run --once --db <payments> --kafka %s", bootstrap);
    long long delivered = 0;
    long left = -1;
    if (run_relay(bin, db, bootstrap, &delivered) != 0 ||
        demo_query_long(payments, "SELECT count(*) FROM ferry.outbox", NULL, &left) != 0)
        return -1;
    demo_say("delivered %lld message%s; the outbox of payments now holds %ld", delivered,
        delivered == 1 ? "" : "s", left);
    if (delivered != want || left != 0)
        return demo_fail("expected %ld delivered and an empty outbox", want);
    return 0;
}

/* ------------------------------------------------------------ the first service */

/* One transfer: money leaves a wallet in payments and is promised, by a
 * Credited message, to an account in the other service. ferry_tx_run may
 * call the function more than once; each attempt overwrites id. */
typedef struct transfer {
    const char *wallet;
    const char *account;
    long amount;
    ferry_uuid id;              /* of the Credited message */
    int emitted;                /* this attempt got as far as the emit */
} transfer;

/*
 * The transaction body. The credit is emitted before the debit only to
 * make step 7's point: when the debit is refused, the message already
 * written goes with it. Either order commits the same thing.
 */
static ferry_code transfer_fn(PGconn *conn, void *arg, ferry_error *err)
{
    transfer *t = arg;
    t->emitted = 0;
    char payload[160], amount[24];
    snprintf(amount, sizeof amount, "%ld", t->amount);
    snprintf(payload, sizeof payload, "{\"account\": \"%s\", \"amount\": %ld}", t->account,
             t->amount);
    /* Keyed by the receiving account: its credits arrive in the order
     * they were committed here. */
    ferry_msg credit = {.topic = TOPIC, .key = t->account, .type = "Credited",
                        .aggregate_type = "account", .payload = payload};
    ferry_code rc = ferry_emit(conn, &credit, NULL, &t->id, err);
    if (rc != FERRY_OK)
        return rc;
    t->emitted = 1;

    const char *params[2] = {t->wallet, amount};
    PGresult *res = PQexecParams(conn,
                                 "UPDATE wallet SET balance = balance - $2::bigint "
                                 "WHERE id = $1 RETURNING balance",
                                 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = ferry_error_from_pg(err, conn, res, "could not debit the wallet");
        PQclear(res);
        return rc == FERRY_OK ? FERRY_EUSER : rc;
    }
    PQclear(res);
    return FERRY_OK;
}

/* Sum of one table's balances. */
static int total_of(PGconn *conn, const char *table, long *out)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT coalesce(sum(balance), 0) FROM %s", table);
    return demo_query_long(conn, sql, NULL, out);
}

/* Show both sides and check that the money is all there: the total, and
 * each account against what the demo sent it. */
static int check_books(PGconn *payments, PGconn *accounts, const long expect[ACCOUNTS])
{
    long wallets = 0, credited = 0;
    demo_say("payments.wallet:");
    if (demo_print_table(payments, "SELECT id, balance FROM wallet ORDER BY id", NULL, 6, 0) != 0)
        return -1;
    demo_say("accounts.account:");
    if (demo_print_table(accounts, "SELECT id, balance FROM account ORDER BY id", NULL, 6, 0) != 0)
        return -1;
    if (total_of(payments, "wallet", &wallets) != 0 ||
        total_of(accounts, "account", &credited) != 0)
        return -1;
    demo_say("sum(wallet) %ld + sum(account) %ld = %ld (started with %d)", wallets, credited,
        wallets + credited, INITIAL_TOTAL);
    if (wallets + credited != INITIAL_TOTAL)
        return demo_fail("the books do not balance: %ld, expected %d", wallets + credited,
                    INITIAL_TOTAL);
    for (int a = 0; a < ACCOUNTS; a++) {
        long bal = 0;
        if (demo_query_long(accounts, "SELECT coalesce(sum(balance), 0) FROM account WHERE id = $1",
                       account_ids[a], &bal) != 0)
            return -1;
        if (bal != expect[a])
            return demo_fail("%s holds %ld, but was sent %ld", account_ids[a], bal, expect[a]);
    }
    return 0;
}

/* ------------------------------------------------------------ the duplicate */

/* ------------------------------------------------------------ the walk */

typedef struct demo {
    fpg *pg;
    char *payments_db, *accounts_db;    /* conninfo; malloc'd */
    PGconn *payments, *accounts;
    kt_broker *kb;
    const char *relay_bin, *service_bin;
    service svc;
} demo;

/* Steps 1-3: two databases, migrated, and the broker with the topic. */
static int setting_up(demo *d)
{
    ferry_error err;
    ferry_code rc;
    demo_step("Starting a throwaway PostgreSQL with two databases: payments (the first service) "
         "and accounts (the second)");
    static const char *const dbs[] = {"payments", "accounts"};
    if ((d->pg = demo_cluster(dbs, 2)) == NULL)
        return -1;
    d->payments_db = fpg_conninfo_for(d->pg, NULL, "payments");
    d->accounts_db = fpg_conninfo_for(d->pg, NULL, "accounts");
    if (d->payments_db == NULL || d->accounts_db == NULL)
        return demo_fail("could not make the conninfo strings");
    d->payments = PQconnectdb(d->payments_db);
    d->accounts = PQconnectdb(d->accounts_db);
    if (PQstatus(d->payments) != CONNECTION_OK || PQstatus(d->accounts) != CONNECTION_OK)
        return demo_fail("could not connect: %s%s", PQerrorMessage(d->payments),
                    PQerrorMessage(d->accounts));
    demo_say("payments: %s", d->payments_db);
    demo_say("accounts: %s", d->accounts_db);

    demo_step("ferry_migrate() on both: payments needs the outbox, accounts the inbox");
    PGconn *both[2] = {d->payments, d->accounts};
    static const char *const names[2] = {"payments", "accounts"};
    for (int i = 0; i < 2; i++) {
        int version = 0;
        if ((rc = ferry_migrate(both[i], &version, &err)) != FERRY_OK)
            return demo_ferry_failed("ferry_migrate", rc, &err);
        demo_say("%s: ferry schema version %d", names[i], version);
        if (version != ferry_schema_version_known())
            return demo_fail("migrated to version %d, expected %d", version,
                        ferry_schema_version_known());
    }

    demo_step("Starting a Kafka-protocol broker (`ferry-relay devkafka`, librdkafka's mock "
         "cluster) and creating topic %s", TOPIC);
    d->kb = kt_start(1);
    if (d->kb == NULL)
        return demo_fail("could not start the broker (see above)");
    /* As an operator would, before any service uses it (the mock would
     * also create it on first use). */
    if (kt_command(d->kb, "topic-create %s 4 1", TOPIC) != 0)
        return demo_fail("could not create topic %s (see above)", TOPIC);
    demo_say("bootstrap servers %s; %s has 4 partitions", kt_bootstrap(d->kb), TOPIC);
    return 0;
}

/* Steps 4-5: the wallets, and the second service up. */
static int services_up(demo *d)
{
    demo_step("payments: table wallet, holding %d in all", INITIAL_TOTAL);
    if (demo_exec(d->payments, "CREATE TABLE wallet (id text PRIMARY KEY, "
                              "balance bigint NOT NULL CHECK (balance >= 0))") != 0)
        return -1;
    for (int w = 0; w < WALLETS; w++) {
        char amount[24];
        snprintf(amount, sizeof amount, "%ld", wallet_start[w]);
        const char *p[2] = {wallet_ids[w], amount};
        PGresult *res = PQexecParams(d->payments, "INSERT INTO wallet VALUES ($1, $2::bigint)",
                                     2, NULL, p, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok)
            return demo_fail("INSERT INTO wallet: %s", PQerrorMessage(d->payments));
    }
    long total = 0;
    if (demo_print_table(d->payments, "SELECT id, balance FROM wallet ORDER BY id", NULL, 6,
                         0) != 0 ||
        total_of(d->payments, "wallet", &total) != 0)
        return -1;
    if (total != INITIAL_TOTAL)
        return demo_fail("the wallets hold %ld, expected %d", total, INITIAL_TOTAL);

    demo_step("Starting the second service: account-service, on database accounts");
    demo_say("$ account-service --db <accounts> --kafka %s --name %s --topic %s",
        kt_bootstrap(d->kb), CONSUMER, TOPIC);
    if (service_start(&d->svc, d->service_bin, d->accounts_db, kt_bootstrap(d->kb)) != 0)
        return -1;
    long long waited = 0;
    if (await_value(d->accounts, &d->svc,
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename = 'account'", NULL, 1, &waited) != 0)
        return -1;
    demo_say("pid %ld; up after %lld ms: it created its table account (balance >= 0 enforced "
        "by a CHECK) and is joining consumer group %s", (long)d->svc.pid, waited, CONSUMER);
    return 0;
}

/* Steps 6-9: transfers, one refused, relayed, applied once. expect gets
 * what each account was sent. */
static int transfers(demo *d, long expect[ACCOUNTS])
{
    ferry_error err;
    ferry_code rc;
    long n = 0;

    demo_step("%d transfers in payments, each one ferry_tx_run(): ferry_emit() a Credited "
         "message to %s (keyed by the receiving account) and debit the wallet, in one "
         "transaction", TRANSFERS, TOPIC);
    long sent = 0;
    for (int i = 0; i < TRANSFERS; i++) {
        transfer t = {.wallet = wallet_ids[i % WALLETS],
                      .account = account_ids[(i * 3 + i / ACCOUNTS) % ACCOUNTS],
                      .amount = 5 + (i * 7) % 23};
        if ((rc = ferry_tx_run(d->payments, NULL, transfer_fn, &t, NULL, &err)) != FERRY_OK)
            return demo_ferry_failed("transfer", rc, &err);
        for (int a = 0; a < ACCOUNTS; a++)
            if (strcmp(account_ids[a], t.account) == 0)
                expect[a] += t.amount;
        sent += t.amount;
        if (i < 3 || i == TRANSFERS - 1)
            demo_say("%2d: %-5s -> %-6s %3ld", i + 1, t.wallet, t.account, t.amount);
        else if (i == 3)
            demo_say("...");
    }
    if (demo_query_long(d->payments, "SELECT count(*) FROM ferry.outbox", NULL, &n) != 0)
        return -1;
    demo_say("committed: %ld moved out of the wallets; the outbox holds %ld Credited messages",
        sent, n);
    if (n != TRANSFERS)
        return demo_fail("the outbox holds %ld messages, expected %d", n, TRANSFERS);

    demo_step("A transfer the wallet cannot pay: w-cy -> acct-2, 1000. The message is emitted, "
         "then the debit trips wallet's CHECK");
    transfer t = {.wallet = "w-cy", .account = "acct-2", .amount = 1000};
    rc = ferry_tx_run(d->payments, NULL, transfer_fn, &t, NULL, &err);
    char doomed[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&t.id, doomed);
    demo_say("ferry_tx_run -> %s [sqlstate %s]: %s", ferry_code_name(rc), err.sqlstate,
             err.message);
    if (rc != FERRY_EDB || strcmp(err.sqlstate, "23514") != 0 || !t.emitted)
        return demo_fail("expected FERRY_EDB with SQLSTATE 23514 after the emit");
    const char *doomed_param[1] = {doomed};
    char gone[8];
    if (demo_query1(d->payments, "SELECT count(*) FROM ferry.outbox WHERE id = $1::uuid", 1,
               doomed_param, gone, sizeof gone) != 0 ||
        demo_query_long(d->payments, "SELECT count(*) FROM ferry.outbox", NULL, &n) != 0)
        return -1;
    demo_say("rolled back: its message %s is not in the outbox (%s), which still holds %ld",
        doomed, strcmp(gone, "0") == 0 ? "gone" : "STILL THERE", n);
    if (strcmp(gone, "0") != 0 || n != TRANSFERS)
        return demo_fail("the rolled-back credit is in the outbox");

    demo_step("ferry-relay run --once publishes the outbox of payments to %s", TOPIC);
    if (relay_all(d->relay_bin, d->payments_db, d->payments, kt_bootstrap(d->kb),
                  TRANSFERS) != 0)
        return -1;

    demo_step("account-service applies them: waiting until ferry.inbox of accounts holds all %d",
         TRANSFERS);
    long long waited = 0;
    if (await_value(d->accounts, &d->svc,
                    "SELECT count(*) FROM ferry.inbox WHERE consumer = $1", CONSUMER,
                    TRANSFERS, &waited) != 0)
        return -1;
    if (demo_query1(d->accounts, "SELECT count(*) FROM ferry.inbox WHERE message_id = $1::uuid", 1,
               doomed_param, gone, sizeof gone) != 0)
        return -1;
    demo_say("all %d applied, %lld ms after the relay finished; the rolled-back credit never "
        "arrived (%s in the inbox)", TRANSFERS, waited, gone);
    if (strcmp(gone, "0") != 0)
        return demo_fail("the rolled-back credit was applied");
    return check_books(d->payments, d->accounts, expect);
}

/* The message Kafka got twice: its key and id, and where the copy landed. */
typedef struct copied {
    char key[64];
    char id[FERRY_UUID_STRING_SIZE];
    char seq[24];               /* its position, ferry_seq */
    demo_delivery copy;
} copied;

/* Step 10: publish an exact copy of one message already applied. */
static int publish_duplicate(demo *d, copied *out)
{
    const char *bootstrap = kt_bootstrap(d->kb);
    demo_step("Kafka delivers a message twice: a relay that crashed after publishing, before "
         "deleting the outbox row, publishes it again. We publish that copy by hand");
    kt_msgs *got = kt_consume(bootstrap, TOPIC, TRANSFERS, CONSUME_TIMEOUT_MS);
    if (got == NULL)
        return demo_fail("could not read %s back (see above)", TOPIC);
    int rc = -1;
    if (got->count != TRANSFERS) {
        demo_fail("read %zu messages back from %s, expected %d", got->count, TOPIC, TRANSFERS);
        goto out;
    }
    /* The last message of the first partition: a copy of it lands after
     * everything already there, so the service meets it next. */
    const kt_msg *orig = &got->msgs[0];
    for (size_t i = 1; i < got->count && got->msgs[i].partition == orig->partition; i++)
        orig = &got->msgs[i];
    const char *id = kt_header(orig, "ferry_id");
    const char *seq = kt_header(orig, "ferry_seq");
    if (orig->key == NULL || id == NULL || seq == NULL) {
        demo_fail("the message at %s [%d] offset %lld has no key, ferry_id or ferry_seq", TOPIC,
             (int)orig->partition, (long long)orig->offset);
        goto out;
    }
    demo_say("original: %s [%d] offset %lld, key %s, ferry_id %s, ferry_seq %s", TOPIC,
        (int)orig->partition, (long long)orig->offset, orig->key, id, seq);
    demo_say("          value %s, %zu headers", orig->value ? orig->value : "(null)",
        orig->header_count);
    if (demo_publish_copy(bootstrap, orig, &out->copy) != 0)
        goto out;
    demo_say("copy:     %s [%d] offset %lld, the same key, value and headers", TOPIC,
        (int)out->copy.partition, (long long)out->copy.offset);
    if (out->copy.partition != orig->partition || out->copy.offset <= orig->offset) {
        demo_fail("the copy landed at [%d] offset %lld", (int)out->copy.partition,
             (long long)out->copy.offset);
        goto out;
    }
    snprintf(out->key, sizeof out->key, "%s", orig->key);
    snprintf(out->id, sizeof out->id, "%s", id);
    snprintf(out->seq, sizeof out->seq, "%s", seq);
    rc = 0;
out:
    kt_msgs_free(got);
    return rc;
}

/*
 * Step 11. A skipped copy writes nothing in the accounts database, so there
 * is nothing there to wait for. Instead: one more real credit on the same
 * key, which the relay puts on the same partition, after the copy. Once it
 * is applied, the copy has been dealt with.
 */
static int follow_the_copy(demo *d, const copied *c, long expect[ACCOUNTS])
{
    const char *bootstrap = kt_bootstrap(d->kb);
    demo_step("To know when the service has dealt with the copy: one more real transfer to %s, "
         "relayed to the same partition, after the copy", c->key);
    transfer t = {.wallet = "w-ada", .account = NULL, .amount = 1};
    int a = 0;
    while (a < ACCOUNTS && strcmp(account_ids[a], c->key) != 0)
        a++;
    if (a == ACCOUNTS)
        return demo_fail("key %s is not one of the demo's accounts", c->key);
    t.account = account_ids[a];
    ferry_error err;
    ferry_code frc = ferry_tx_run(d->payments, NULL, transfer_fn, &t, NULL, &err);
    if (frc != FERRY_OK)
        return demo_ferry_failed("transfer", frc, &err);
    expect[a] += t.amount;
    char id[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&t.id, id);
    demo_say("w-ada -> %s, 1: message %s", t.account, id);
    if (relay_all(d->relay_bin, d->payments_db, d->payments, bootstrap, 1) != 0)
        return -1;
    long long waited = 0;
    if (await_value(d->accounts, &d->svc,
                    "SELECT count(*) FROM ferry.inbox WHERE message_id = $1::uuid", id, 1,
                    &waited) != 0)
        return -1;
    demo_say("applied %lld ms after the relay finished", waited);

    /* The premise: it really is behind the copy. */
    kt_msgs *all = kt_consume(bootstrap, TOPIC, TRANSFERS + 2, CONSUME_TIMEOUT_MS);
    if (all == NULL)
        return demo_fail("could not read %s back (see above)", TOPIC);
    const kt_msg *last = NULL;
    for (size_t i = 0; i < all->count; i++) {
        const char *mid = kt_header(&all->msgs[i], "ferry_id");
        if (mid != NULL && strcmp(mid, id) == 0)
            last = &all->msgs[i];
    }
    int rc = 0;
    if (last == NULL || last->partition != c->copy.partition ||
        last->offset <= c->copy.offset)
        rc = demo_fail("the new credit is not after the copy on [%d] (%s)", (int)c->copy.partition,
                  last == NULL ? "not found" : "elsewhere");
    else
        demo_say("it sits at %s [%d] offset %lld, after the copy at offset %lld; the topic now "
            "holds %zu messages", TOPIC, (int)last->partition, (long long)last->offset,
            (long long)c->copy.offset, all->count);
    kt_msgs_free(all);
    return rc;
}

/* Step 12: the inbox has one row per real credit, in order, and the books
 * still balance. */
static int copy_changed_nothing(demo *d, const copied *c, const long expect[ACCOUNTS])
{
    demo_step("The copy changed nothing");
    long inbox = 0;
    if (demo_query_long(d->accounts, "SELECT count(*) FROM ferry.inbox WHERE consumer = $1",
                   CONSUMER, &inbox) != 0)
        return -1;
    demo_say("ferry.inbox holds %ld rows: one per real credit (%d), none for the copy", inbox,
        TRANSFERS + 1);
    if (inbox != TRANSFERS + 1)
        return demo_fail("expected %d inbox rows", TRANSFERS + 1);
    demo_say("key %s in the inbox; position %s, the message copied, is there once:", c->key,
        c->seq);
    if (demo_print_table(d->accounts, "SELECT seq AS position, message_id, "
                                 "to_char(applied_at, 'HH24:MI:SS.MS') AS applied_at "
                                 "FROM ferry.inbox WHERE key = $1 ORDER BY seq", c->key, 6, 0) != 0)
        return -1;
    /* Every account: positions 1..n each applied once, in that order (one
     * consumer applies a key's messages one transaction after another, so
     * applied_at, the transaction's start, rises with the position). */
    long disorder = -1;
    if (demo_query_long(d->accounts,
                   "SELECT count(*) FROM (SELECT seq, row_number() OVER w AS n, "
                   "applied_at < lag(applied_at) OVER w AS before_prev "
                   "FROM ferry.inbox WHERE consumer = $1 "
                   "WINDOW w AS (PARTITION BY topic, key ORDER BY seq)) x "
                   "WHERE seq <> n OR before_prev", CONSUMER, &disorder) != 0)
        return -1;
    demo_say("every account likewise: positions 1, 2, 3 ... each applied once, in order "
        "(%ld out of place)", disorder);
    if (disorder != 0)
        return demo_fail("%ld inbox rows out of place", disorder);
    return check_books(d->payments, d->accounts, expect);
}

static long stat_of(const char *line, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", name);
    const char *p = strstr(line, pat);
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

/* Step 13: stop the service and read what it counted. */
static int stop_service(demo *d)
{
    demo_step("SIGTERM to account-service: it finishes, commits its offsets, prints its stats");
    char out[512];
    if (demo_service_stop(&d->svc, STOP_TIMEOUT_MS, out, sizeof out) != 0) {
        demo_service_show_log(&d->svc);
        return -1;
    }
    char *nl = strchr(out, '\n');
    if (nl != NULL)
        *nl = '\0';
    demo_say("exit status %d; stdout: %s", d->svc.status, out);
    if (d->svc.status != 0 || strncmp(out, "stats ", 6) != 0) {
        int rc = demo_fail("expected exit status 0 and a stats line");
        demo_service_show_log(&d->svc);
        return rc;
    }
    long applied = stat_of(out, "applied"), dup = stat_of(out, "duplicates"),
         late = stat_of(out, "late"), held = stat_of(out, "held"),
         dead = stat_of(out, "dead_lettered");
    demo_say("applied %ld (the %d credits); skipped %ld (duplicates %ld + late %ld: the copy, "
        "its position already applied); held %ld, dead-lettered %ld", applied,
        TRANSFERS + 1, dup + late, dup, late, held, dead);
    if (applied != TRANSFERS + 1 || dup + late != 1 || held != 0 || dead != 0)
        return demo_fail("expected applied=%d, duplicates + late = 1, held=0, dead_lettered=0",
                    TRANSFERS + 1);
    return 0;
}

int main(int argc, char **argv)
{
    int args = demo_args(argc, argv,
                         "two services, two databases, one Kafka topic between them, and not a "
                         "cent created or lost");
    if (args >= 0)
        return args;
    setvbuf(stdout, NULL, _IOLBF, 0);
    demo d = {.relay_bin = demo_relay_bin(),
              .service_bin = demo_env("FERRY_ACCOUNT_SERVICE_BIN", "build/rel/account-service")};
    d.svc.out = -1;

    printf("ferry %s: two services, one ledger, every credit applied once\n",
           ferry_version());
    printf("(Kafka here is librdkafka's mock cluster, run by `ferry-relay devkafka`, "
           "standing in for a real broker.)\n");

    long expect[ACCOUNTS] = {0};
    int rc = setting_up(&d);
    if (rc == 0)
        rc = services_up(&d);
    if (rc == 0)
        rc = transfers(&d, expect);
    copied dup = {.copy = {.partition = -1, .offset = -1}};
    if (rc == 0)
        rc = publish_duplicate(&d, &dup);
    if (rc == 0)
        rc = follow_the_copy(&d, &dup, expect);
    if (rc == 0)
        rc = copy_changed_nothing(&d, &dup, expect);
    if (rc == 0)
        rc = stop_service(&d);

    if (rc == 0) {
        demo_step("What happened");
        demo_say("payments committed %d transfers; each debit and its Credited message in one "
            "transaction;", TRANSFERS + 1);
        demo_say("the one it rolled back took its message with it, and it never reached Kafka;");
        demo_say("account-service applied each credit once, in per-account order, though Kafka "
            "delivered one twice;");
        demo_say("money moved between two databases through Kafka, and the total stayed %d.",
            INITIAL_TOTAL);
    }

    demo_step("Tearing down the service, the broker and the cluster");
    demo_service_cleanup(&d.svc);
    rc = demo_broker_stop(d.kb, rc);
    PQfinish(d.payments);
    PQfinish(d.accounts);
    free(d.payments_db);
    free(d.accounts_db);
    fpg_destroy(d.pg);
    return demo_exit(rc);
}
