/*
 * test_migrate.c — the schema is applied once, idempotently, safely under
 * concurrency, all or nothing, and refuses a database it does not
 * understand. Also `ferry-relay migrate`.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"     /* ferry__migrations_count */
#include "testutil.h"

/* A new, empty database; returns a connection to it. */
static PGconn *fresh_db(const char *name)
{
    char *ci = tu_fresh_database(name);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    return c;
}

/* Everything migration could have touched: catalog rows of the schema's
 * relations, functions and the version table, with their xmin. */
static char *fingerprint(PGconn *c)
{
    return tu_str(c, "SELECT (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid) "
                     "        FROM pg_class WHERE relnamespace = 'ferry'::regnamespace) || '|' || "
                     "       (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid) "
                     "        FROM pg_proc WHERE pronamespace = 'ferry'::regnamespace) || '|' || "
                     "       (SELECT string_agg(version || ':' || applied_at || ':' || xmin::text, "
                     "        ',') FROM ferry.schema_version)");
}

static void fresh_then_noop(void **state)
{
    PGconn *c = fresh_db("m_fresh");
    ferry_error err;
    int version = -1;
    assert_ferry_ok(ferry_schema_version(c, &version, &err), err);
    assert_int_equal(version, 0);
    assert_ferry_ok(ferry_migrate(c, &version, &err), err);
    assert_int_equal(version, ferry_schema_version_known());
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry' AND "
                               "tablename IN ('outbox', 'outbox_key', 'inbox', 'dead_letter', "
                               "'lease', 'saga', 'saga_step', 'schema_version', 'settings')"), 9);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_roles WHERE rolname IN "
                               "('ferry_writer', 'ferry_relay', 'ferry_reconciler')"), 3);
    char *before = fingerprint(c);
    version = -1;
    assert_ferry_ok(ferry_migrate(c, &version, &err), err);
    assert_int_equal(version, ferry_schema_version_known());
    char *after = fingerprint(c);
    assert_string_equal(before, after);
    /* One row per embedded migration: versions may have gaps (a number
     * kept for a change not merged yet), so count them, not the last. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.schema_version"),
                     (long long)ferry__migrations_count);
    free(before);
    free(after);
    PQfinish(c);
}

typedef struct migrator {
    char *conninfo;
    pthread_barrier_t *start;
    ferry_code rc;
    ferry_error err;
} migrator;

static void *migrator_main(void *arg)
{
    migrator *m = arg;
    PGconn *c = PQconnectdb(m->conninfo);
    pthread_barrier_wait(m->start);
    m->rc = ferry_migrate(c, NULL, &m->err);
    PQfinish(c);
    return NULL;
}

static void concurrent_migrators(void **state)
{
    enum { N = 4 };
    PQfinish(fresh_db("m_race"));
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    migrator m[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        m[i] = (migrator){.conninfo = fpg_conninfo_for(tu_pg, NULL, "m_race"), .start = &start};
        assert_int_equal(pthread_create(&th[i], NULL, migrator_main, &m[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_ferry_ok(m[i].rc, m[i].err);
        free(m[i].conninfo);
    }
    pthread_barrier_destroy(&start);
    char *ci = fpg_conninfo_for(tu_pg, NULL, "m_race");
    PGconn *c = PQconnectdb(ci);
    free(ci);
    /* One row per embedded migration: versions may have gaps (a number
     * kept for a change not merged yet), so count them, not the last. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.schema_version"),
                     (long long)ferry__migrations_count);
    PQfinish(c);
}

/* A fresh database db, migrated, then changed by sql: migrating again is
 * refused (FERRY_ESCHEMA) with in_message in the error. The connection,
 * for the caller's further checks. */
static PGconn *migrate_refused_after(const char *db, const char *sql, const char *in_message)
{
    PGconn *c = fresh_db(db);
    ferry_error err;
    assert_ferry_ok(ferry_migrate(c, NULL, &err), err);
    tu_exec(c, sql);
    assert_int_equal(ferry_migrate(c, NULL, &err), FERRY_ESCHEMA);
    assert_non_null(strstr(err.message, in_message));
    return c;
}

static void tampered_checksum_refused(void **state)
{
    PGconn *c = migrate_refused_after("m_tamper", "UPDATE ferry.schema_version SET checksum = "
                                      "'deadbeef' WHERE version = 1", "001_ferry.sql");
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    PQfinish(c);
}

static void newer_schema_refused(void **state)
{
    PGconn *c = migrate_refused_after("m_newer", "INSERT INTO ferry.schema_version VALUES "
                                      "(999, '999_future.sql', 'x')", "999");
    ferry_error err;
    int version = 0;
    assert_ferry_ok(ferry_schema_version(c, &version, &err), err);
    assert_int_equal(version, 999);
    PQfinish(c);
}

static void refused_inside_transaction(void **state)
{
    PGconn *c = fresh_db("m_intx");
    tu_exec(c, "BEGIN");
    tu_exec(c, "CREATE TABLE mine (x int)");
    ferry_error err;
    assert_int_equal(ferry_migrate(c, NULL, &err), FERRY_ESTATE);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'"), 0);
    PQfinish(c);
}

/* No connection is the caller's mistake, as ferry_emit says
 * (FERRY_EINVAL, field "conn"), not a lost connection to retry: before,
 * both calls said FERRY_ECONN, retriable (an outside audit). */
static void a_null_connection_is_refused_as_an_argument(void **state)
{
    ferry_error err;
    int version = 7;
    assert_int_equal(ferry_migrate(NULL, &version, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "conn");
    assert_int_equal(err.retriable, 0);
    assert_int_equal(ferry_schema_version(NULL, &version, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "conn");
    assert_int_equal(err.retriable, 0);
    assert_int_equal(version, 7);
    assert_int_equal(ferry_migrate(NULL, NULL, NULL), FERRY_EINVAL);
}

/* A migration that fails part way leaves nothing: not the schema, not the
 * version table, not half of the tables. */
static void failure_is_all_or_nothing(void **state)
{
    PGconn *c = fresh_db("m_fail");
    tu_exec(c, "CREATE SCHEMA ferry; CREATE TABLE ferry.lease (squatter int)");
    ferry_error err;
    assert_int_equal(ferry_migrate(c, NULL, &err), FERRY_EDB);
    assert_string_equal(err.sqlstate, "42P07");                   /* duplicate_table */
    assert_non_null(strstr(err.message, "001_ferry.sql (line "));
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry'"), 1);
    PQfinish(c);
}

/* ---------------------------------------------------------------- CLI */

/* The relay run to its end (tu_run): its exit status, what it wrote to
 * stdout and then to stderr into out (cut to outsize). */
static int run_relay(const char *const argv[], char *out, size_t outsize)
{
    char *o = NULL, *e = NULL;
    int rc = tu_run(argv, 60000, &o, &e);
    snprintf(out, outsize, "%s%s", o, e);
    free(o);
    free(e);
    return rc;
}

/*
 * A ferry schema made beforehand by another role is refused, nothing
 * written: its owner could replace a function the SECURITY DEFINER ones
 * call and become whoever migrated (an outside audit: superuser through
 * ferry.emit). Likewise a database that is not UTF8 (a migration failed
 * half way in EUC_JP; a LATIN1 one could not be upgraded from a UTF-8
 * client).
 */
static void a_schema_of_another_role_or_a_database_not_utf8_is_refused(void **state)
{
    PGconn *c = fresh_db("m_owned");
    tu_exec(c, "DROP ROLE IF EXISTS m_mallory; CREATE ROLE m_mallory; "
               "CREATE SCHEMA ferry AUTHORIZATION m_mallory");
    ferry_error err;
    int version = -1;
    assert_int_equal(ferry_migrate(c, &version, &err), FERRY_ESCHEMA);
    if (strstr(err.message, "schema ferry is owned by role \"m_mallory\"") == NULL)
        fail_msg("%s", err.message);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_class "
                               "WHERE relnamespace = 'ferry'::regnamespace"), 0);
    /* Given to the migrating role, it migrates. */
    tu_exec(c, "ALTER SCHEMA ferry OWNER TO current_user");
    assert_ferry_ok(ferry_migrate(c, &version, &err), err);
    assert_int_equal(version, ferry_schema_version_known());
    PQfinish(c);

    PGconn *admin = tu_connect();
    tu_exec(admin, "SET client_min_messages = warning");
    tu_exec(admin, "DROP DATABASE IF EXISTS m_latin1");
    tu_exec(admin, "CREATE DATABASE m_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                   "TEMPLATE template0");
    tu_exec(admin, "DROP OWNED BY m_mallory; DROP ROLE m_mallory");
    PQfinish(admin);
    char *ci = fpg_conninfo_for(tu_pg, NULL, "m_latin1");
    c = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_int_equal(ferry_migrate(c, &version, &err), FERRY_ESCHEMA);
    if (strstr(err.message, "encoding is LATIN1; ferry needs a UTF8 database") == NULL)
        fail_msg("%s", err.message);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'"), 0);
    PQfinish(c);
}

static void relay_migrate_command(void **state)
{
    const char *relay = tu_relay_bin();
    PQfinish(fresh_db("m_cli"));
    char *ci = fpg_conninfo_for(tu_pg, NULL, "m_cli");
    char out[4096];

    const char *first[] = {relay, "migrate", "--db", ci, NULL};
    assert_int_equal(run_relay(first, out, sizeof out), 0);
    char want[64];
    snprintf(want, sizeof want, "migrated from version 0 to %d", ferry_schema_version_known());
    assert_non_null(strstr(out, want));
    assert_int_equal(run_relay(first, out, sizeof out), 0);
    assert_non_null(strstr(out, "nothing to do"));

    const char *nodb[] = {relay, "migrate", NULL};
    unsetenv("FERRY_DB");
    assert_int_equal(run_relay(nodb, out, sizeof out), 2);
    assert_non_null(strstr(out, "--db"));

    const char *bad[] = {relay, "migrate", "--db", "host=/nonexistent-ferry dbname=x", NULL};
    assert_int_equal(run_relay(bad, out, sizeof out), 1);
    assert_non_null(strstr(out, "could not connect"));

    const char *unknown[] = {relay, "frobnicate", NULL};
    assert_int_equal(run_relay(unknown, out, sizeof out), 2);
    assert_non_null(strstr(out, "unknown command \"frobnicate\""));
    free(ci);
}

/* Three `ferry-relay migrate` runs at once on an empty database: one
 * says it migrated from version 0, the others that there was nothing to
 * do. Before: each said "migrated from version 0 to N" (it read the
 * version before the others had finished: an outside audit). */
static void concurrent_migrate_commands_say_what_each_did(void **state)
{
    PQfinish(fresh_db("m_cli3"));
    char *ci = fpg_conninfo_for(tu_pg, NULL, "m_cli3");
    char dir[] = "/tmp/ferry-migrate-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = tu_sprintf("for i in 1 2 3; do '%s' migrate --db '%s' > \"%s/out.$i\" 2>&1 & "
                           "done; wait", tu_relay_bin(), ci, dir);
    assert_int_equal(system(cmd), 0);
    int migrated = 0, nothing = 0;
    for (int i = 1; i <= 3; i++) {
        char *path = tu_sprintf("%s/out.%d", dir, i);
        char *out = tu_slurp(path, NULL);
        assert_non_null(out);
        migrated += strstr(out, "migrated from version 0") != NULL;
        nothing += strstr(out, "nothing to do") != NULL;
        free(out);
        unlink(path);
        free(path);
    }
    assert_int_equal(migrated, 1);
    assert_int_equal(nothing, 2);
    rmdir(dir);
    free(cmd);
    free(ci);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fresh_then_noop),
        cmocka_unit_test(concurrent_migrators),
        cmocka_unit_test(tampered_checksum_refused),
        cmocka_unit_test(newer_schema_refused),
        cmocka_unit_test(refused_inside_transaction),
        cmocka_unit_test(a_null_connection_is_refused_as_an_argument),
        cmocka_unit_test(failure_is_all_or_nothing),
        cmocka_unit_test(a_schema_of_another_role_or_a_database_not_utf8_is_refused),
        cmocka_unit_test(relay_migrate_command),
        cmocka_unit_test(concurrent_migrate_commands_say_what_each_did),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
