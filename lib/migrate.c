/*
 * migrate.c — apply the embedded schemas/NNN_*.sql migrations.
 *
 * All pending migrations run in one transaction, after
 * pg_advisory_xact_lock() on a key of ferry's own: a second migrator (a
 * second relay starting at the same time) waits, then finds the work done.
 * Each applied migration is recorded with a SHA-256 of its text, computed
 * by the server; a recorded migration whose text has changed since is an
 * error, not something to paper over.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MIGRATE_LOCK_KEY FERRY__MIGRATE_LOCK_KEY

static const char bootstrap_sql[] =
    "CREATE SCHEMA IF NOT EXISTS ferry;"
    "REVOKE ALL ON SCHEMA ferry FROM PUBLIC;"
    "CREATE TABLE ferry.schema_version ("
    "  version    integer     PRIMARY KEY,"
    "  name       text        NOT NULL,"
    "  checksum   text        NOT NULL,"
    "  applied_at timestamptz NOT NULL DEFAULT now());"
    "REVOKE ALL ON ferry.schema_version FROM PUBLIC;";

int ferry_schema_version_known(void)
{
    return ferry__migrations[ferry__migrations_count - 1].version;
}

/* The line of sql holding the 1-based character position pos. */
static int line_of(const char *sql, const char *pos_text)
{
    long pos = pos_text ? strtol(pos_text, NULL, 10) : 0;
    int line = 1;
    for (long i = 0; i < pos - 1 && sql[i] != '\0'; i++)
        if (sql[i] == '\n')
            line++;
    return line;
}

static ferry_code apply_one(PGconn *conn, const ferry__migration *m, ferry_error *err)
{
    PGresult *res = PQexec(conn, m->sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        char context[160];
        snprintf(context, sizeof context, "could not apply migration %s (line %d)", m->name,
                 line_of(m->sql, PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION)));
        ferry_code rc = ferry_error_from_pg(err, conn, res, context);
        PQclear(res);
        return rc;
    }
    PQclear(res);

    char version[16];
    snprintf(version, sizeof version, "%d", m->version);
    const char *params[3] = {version, m->name, m->sql};
    return ferry__exec(conn,
                      "INSERT INTO ferry.schema_version (version, name, checksum) "
                      "VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'))",
                      3, params, "could not record migration", err);
}

/* Which migrations are recorded, and do they still match their text?
 * applied[i] is set for ferry__migrations[i]. */
static ferry_code read_applied(PGconn *conn, bool *applied, ferry_error *err)
{
    PGresult *res = PQexec(conn, "SELECT version, name, checksum FROM ferry.schema_version "
                                 "ORDER BY version");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not read schema version");
        PQclear(res);
        return rc;
    }
    ferry_code rc = FERRY_OK;
    for (int r = 0; r < PQntuples(res) && rc == FERRY_OK; r++) {
        int version = atoi(PQgetvalue(res, r, 0));
        size_t i = 0;
        while (i < ferry__migrations_count && ferry__migrations[i].version != version)
            i++;
        if (i == ferry__migrations_count) {
            rc = ferry__error_set(err, FERRY_ESCHEMA, NULL,
                               "the database has ferry schema migration %d (%s), which "
                               "this library (schema %d) does not know: upgrade libferry",
                               version, PQgetvalue(res, r, 1), ferry_schema_version_known());
            break;
        }
        const ferry__migration *m = &ferry__migrations[i];
        const char *params[2] = {m->sql, PQgetvalue(res, r, 2)};
        PGresult *cmp = PQexecParams(conn,
                                     "SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') = $2",
                                     2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(cmp) != PGRES_TUPLES_OK)
            rc = ferry_error_from_pg(err, conn, cmp, "could not check migration checksum");
        else if (strcmp(PQgetvalue(cmp, 0, 0), "t") != 0)
            rc = ferry__error_set(err, FERRY_ESCHEMA, NULL,
                               "migration %s was applied with a different text than this "
                               "library ships (checksum %.16s...): the schema was edited "
                               "after it was released", m->name, PQgetvalue(res, r, 2));
        PQclear(cmp);
        applied[i] = true;
    }
    PQclear(res);
    return rc;
}

/*
 * What ferry needs of the database before it writes anything, each refused
 * with what to do (outside audits):
 *
 *   - UTF8: messages are JSON in any language, keys and topics text that
 *     emit checks as UTF-8; in another encoding a migration failed half
 *     way (EUC_JP), or a LATIN1 database migrated once and could then not
 *     be upgraded from a UTF-8 client.
 *   - A ferry schema, if there is one already, owned by the migrating
 *     role. The ferry functions run with their owner's rights (SECURITY
 *     DEFINER) and call one another by name: whoever owns the schema can
 *     replace one they call, and a schema made beforehand by a lesser role
 *     let that role become superuser through emit.
 */
static ferry_code check_database(PGconn *conn, ferry_error *err)
{
    PGresult *res = PQexec(conn,
                           "SELECT pg_encoding_to_char(d.encoding), "
                           "       (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n "
                           "         WHERE n.nspname = 'ferry'), current_user "
                           "  FROM pg_database d WHERE d.datname = current_database()");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not read the database's "
                                                          "encoding");
        PQclear(res);
        return rc;
    }
    ferry_code rc = FERRY_OK;
    const char *enc = PQgetvalue(res, 0, 0);
    if (strcmp(enc, "UTF8") != 0)
        rc = ferry__error_set(err, FERRY_ESCHEMA, NULL,
                           "could not migrate: the database's encoding is %s; ferry needs a UTF8 "
                           "database (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)",
                           enc);
    else if (!PQgetisnull(res, 0, 1) &&
             strcmp(PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2)) != 0)
        rc = ferry__error_set(err, FERRY_ESCHEMA, NULL,
                           "could not migrate: schema ferry is owned by role \"%s\", not by "
                           "\"%s\", which migrates it; its functions run with the rights of "
                           "the role that makes them, and the schema's owner could replace what "
                           "they call: migrate as \"%s\", or have a superuser run ALTER SCHEMA "
                           "ferry OWNER TO \"%s\" first", PQgetvalue(res, 0, 1),
                           PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    PQclear(res);
    return rc;
}

ferry_code ferry_migrate(PGconn *conn, int *version_out, ferry_error *err)
{
    ferry__err_clear(err);
    if (conn == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "conn", "could not migrate: connection is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return ferry_error_from_pg(err, conn, NULL, "could not migrate");
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "could not migrate: the connection is in a transaction");

    bool applied[64] = {false};
    _Static_assert(sizeof applied / sizeof applied[0] >= 64, "room for migrations");
    if (ferry__migrations_count > sizeof applied / sizeof applied[0])
        return ferry__error_set(err, FERRY_ESCHEMA, NULL, "too many migrations");

    /* The migrations are UTF-8 text, sent and checksummed as such whatever
     * the client's encoding (PGCLIENTENCODING) says. */
    ferry_code rc = ferry__exec(conn, "BEGIN; SET LOCAL client_min_messages = warning; "
                                  "SET LOCAL client_encoding = 'UTF8'; "
                                  "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", 0, NULL,
                            "could not begin migration", err);
    if (rc != FERRY_OK)
        goto out_rollback;
    if ((rc = check_database(conn, err)) != FERRY_OK)
        goto out_rollback;

    PGresult *res = PQexec(conn, "SELECT to_regclass('ferry.schema_version') IS NULL");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = ferry_error_from_pg(err, conn, res, "could not read schema version");
        PQclear(res);
        goto out_rollback;
    }
    bool fresh = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (fresh && (rc = ferry__exec(conn, bootstrap_sql, 0, NULL, "could not create the ferry schema",
                               err)) != FERRY_OK)
        goto out_rollback;

    if ((rc = read_applied(conn, applied, err)) != FERRY_OK)
        goto out_rollback;
    int version = 0;
    for (size_t i = 0; i < ferry__migrations_count; i++) {
        if (!applied[i] && (rc = apply_one(conn, &ferry__migrations[i], err)) != FERRY_OK)
            goto out_rollback;
        version = ferry__migrations[i].version;
    }
    if ((rc = ferry__exec(conn, "COMMIT", 0, NULL, "could not commit migration", err)) != FERRY_OK)
        goto out_rollback;
    if (version_out != NULL)
        *version_out = version;
    return FERRY_OK;

out_rollback:
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    return rc;
}

ferry_code ferry_schema_version(PGconn *conn, int *version_out, ferry_error *err)
{
    ferry__err_clear(err);
    if (conn == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "conn",
                             "could not read schema version: connection is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return ferry_error_from_pg(err, conn, NULL, "could not read schema version");
    /* Two statements: a query naming a missing table fails at parse time,
     * whatever a CASE around it says. */
    PGresult *res = PQexec(conn, "SELECT to_regclass('ferry.schema_version') IS NULL");
    if (PQresultStatus(res) == PGRES_TUPLES_OK && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        PQclear(res);
        if (version_out != NULL)
            *version_out = 0;
        return FERRY_OK;
    }
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        PQclear(res);
        res = PQexec(conn, "SELECT coalesce(max(version), 0) FROM ferry.schema_version");
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not read schema version");
        PQclear(res);
        return rc;
    }
    if (version_out != NULL)
        *version_out = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return FERRY_OK;
}
