/*
 * relay_wal_slot.c — `ferry-relay slot create|recreate|status`: the
 * operator's commands for the WAL source's replication slot.
 *
 * The relay never creates a slot: a slot made silently after one was lost
 * would start at the present, and every message of the WAL the old one
 * lost would be skipped without a word (the data loss of Debezium and
 * others). So creating is explicit, once (`create` refuses when
 * ferry.wal_slot says a slot of that name existed before), and
 * recreating is a separate command that says what may have been missed
 * — the WAL between the last position the relay confirmed and the new
 * slot's start, with their times — and records that window in
 * ferry.wal_slot for the reconciler and the operator.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "relay_cli.h"
#include "relay_int.h"
#include "relay_wal.h"

static void slot_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay slot create|recreate|status [--db CONNINFO] [--config FILE]\n"
            "\n"
            "The WAL source's logical replication slot (ferry.settings.wal_slot, pgoutput).\n"
            "\n"
            "  create     create it; refused if it exists, or existed before (use recreate)\n"
            "  recreate   drop a lost (invalidated) or missing slot and create it again;\n"
            "             reports and records the WAL window whose messages may have been\n"
            "             missed\n"
            "  status     the slot: exists, wal_status, active, WAL retained, lag\n"
            "\n"
            "  --db CONNINFO   libpq connection string or URI ($FERRY_DB; default: db: of\n"
            "                  the --config file); the role needs REPLICATION (or\n"
            "                  superuser) to create a slot\n"
            "  --config FILE   ferry-relay run's YAML settings: its db: ($FERRY_CONFIG)\n"
            "\n"
            "Exit status: 0 done / slot healthy, 1 failed, 2 usage error, 4 status found a\n"
            "problem (missing, lost, inactive).\n");
}

static PGresult *q(PGconn *c, const char *sql, int n, const char *const *p)
{
    return PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
}

static int fail_res(const char *what, PGresult *res)
{
    fprintf(stderr, "ferry-relay slot: %s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return 1;
}

/* The slot as create and recreate judge it. */
typedef struct slot_info {
    char name[64];
    int exists;
    char status[32];            /* wal_status; "" when it does not exist */
} slot_info;

static int read_slot(PGconn *c, slot_info *s)
{
    PGresult *res = q(c, "SELECT s.wal_slot, p.slot_name IS NOT NULL, "
                         "       coalesce(p.wal_status, '') "
                         "  FROM ferry.settings s LEFT JOIN pg_replication_slots p "
                         "    ON p.slot_name = s.wal_slot", 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return fail_res("could not read the slot", res);
    snprintf(s->name, sizeof s->name, "%s", PQgetvalue(res, 0, 0));
    s->exists = PQgetvalue(res, 0, 1)[0] == 't';
    snprintf(s->status, sizeof s->status, "%s", PQgetvalue(res, 0, 2));
    PQclear(res);
    return 0;
}

static int create(PGconn *c, const char *name, char *lsn, size_t lsnlen)
{
    const char *p[1] = {name};
    PGresult *res = q(c, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, "
                         "'pgoutput')", 1, p);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_res("could not create the slot", res);
    snprintf(lsn, lsnlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/* Whether this role may record the slot in ferry.wal_slot: asked before
 * the slot is made, which no transaction takes back (a slot made and
 * then not recorded, and the next try says it exists already). */
static int may_record(PGconn *c, const char *cmd)
{
    PGresult *res = q(c, "SELECT has_table_privilege('ferry.wal_slot', 'INSERT') AND "
                         "       has_table_privilege('ferry.wal_slot', 'UPDATE')", 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return fail_res("could not read this role's privileges", res);
    int ok = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!ok)
        fprintf(stderr, "ferry-relay slot %s: this role may not record the slot in "
                "ferry.wal_slot (schema 21 grants INSERT and UPDATE there to ferry_relay: "
                "`ferry-relay migrate`, and run this as a member of ferry_relay); nothing "
                "was created\n", cmd);
    return ok ? 0 : 1;
}

static int cmd_create(PGconn *c)
{
    slot_info s;
    if (read_slot(c, &s) != 0)
        return 1;
    if (s.exists) {
        fprintf(stderr, "ferry-relay slot create: the slot \"%s\" exists already%s%s\n",
                s.name, s.status[0] ? ", wal_status " : "", s.status);
        return 1;
    }
    const char *p[1] = {s.name};
    PGresult *res = q(c, "SELECT created_at::text, coalesce(confirmed_lsn::text, '?') "
                         "FROM ferry.wal_slot WHERE slot_name = $1", 1, p);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_res("could not read ferry.wal_slot", res);
    if (PQntuples(res) > 0) {
        fprintf(stderr, "ferry-relay slot create: a slot \"%s\" was created before (%s) and "
                "is gone, last confirmed at %s; messages may have been missed: use `ferry-relay "
                "slot recreate`, which reports them\n", s.name, PQgetvalue(res, 0, 0),
                PQgetvalue(res, 0, 1));
        PQclear(res);
        return 1;
    }
    PQclear(res);
    if (may_record(c, "create") != 0)
        return 1;
    char lsn[32];
    if (create(c, s.name, lsn, sizeof lsn) != 0)
        return 1;
    const char *p2[2] = {s.name, lsn};
    res = q(c, "INSERT INTO ferry.wal_slot (slot_name, created_lsn) VALUES ($1, $2::pg_lsn)",
            2, p2);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return fail_res("created the slot, but could not record it in ferry.wal_slot", res);
    PQclear(res);
    printf("created the replication slot \"%s\" (pgoutput) at %s\n"
           "emit in wal mode: UPDATE ferry.settings SET emit_mode = 'wal'\n", s.name, lsn);
    return 0;
}

static int cmd_recreate(PGconn *c)
{
    slot_info s;
    if (read_slot(c, &s) != 0)
        return 1;
    if (s.exists && strcmp(s.status, "lost") != 0) {
        fprintf(stderr, "ferry-relay slot recreate: the slot \"%s\" exists and is not lost "
                "(wal_status %s): nothing to recreate\n", s.name, s.status);
        return 1;
    }
    if (may_record(c, "recreate") != 0)
        return 1;
    const char *p[1] = {s.name};
    if (s.exists) {
        PGresult *res = q(c, "SELECT pg_drop_replication_slot($1)", 1, p);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            return fail_res("could not drop the lost slot", res);
        PQclear(res);
    }
    char lsn[32];
    if (create(c, s.name, lsn, sizeof lsn) != 0)
        return 1;
    const char *p2[2] = {s.name, lsn};
    /* A window recorded by an earlier recreate and not yet cleared by an
     * operator is kept: the new one starts where the earlier one did (or
     * at the last confirmed position, if earlier; least() passes over a
     * NULL, the cleared window). Overwritten, it went without a word,
     * with the messages in it (an outside audit). */
    PGresult *res = q(
        c,
        "WITH old AS (SELECT missed_from_lsn FROM ferry.wal_slot WHERE slot_name = $1) "
        "INSERT INTO ferry.wal_slot AS w (slot_name, created_lsn) VALUES ($1, $2::pg_lsn) "
        "ON CONFLICT (slot_name) DO UPDATE SET "
        "  missed_from_lsn = least(w.missed_from_lsn, coalesce(w.confirmed_lsn, w.created_lsn)), "
        "  missed_from_at = least(w.missed_from_at, coalesce(w.confirmed_at, w.created_at)), "
        "  missed_to_lsn = $2::pg_lsn, recreated_at = now(), "
        "  created_lsn = $2::pg_lsn, created_at = now(), "
        "  confirmed_lsn = NULL, confirmed_at = NULL "
        "RETURNING coalesce(missed_from_lsn::text, '?'), coalesce(missed_from_at::text, '?'), "
        "          now()::text, (SELECT missed_from_lsn::text FROM old)",
        2, p2);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_res("recreated the slot, but could not record it in ferry.wal_slot", res);
    printf("recreated the replication slot \"%s\" at %s.\n"
           "Messages emitted in wal mode between WAL %s (%s, %s) and %s (%s)\n"
           "may never have been published: that WAL was %s. Consumers see them as gaps in\n"
           "each key's positions (ferry-reconcile check); the window is kept in\n"
           "ferry.wal_slot (missed_from_lsn .. missed_to_lsn).\n",
           s.name, lsn, PQgetvalue(res, 0, 0),
           PQgetisnull(res, 0, 3) ? "last confirmed" : "where an earlier window not yet cleared began",
           PQgetvalue(res, 0, 1), lsn, PQgetvalue(res, 0, 2),
           s.exists ? "invalidated with the slot" : "not decoded while the slot was missing");
    if (!PQgetisnull(res, 0, 3))
        printf("The earlier window, from %s, was not cleared: it is part of this one.\n",
               PQgetvalue(res, 0, 3));
    PQclear(res);
    return 0;
}

static int cmd_status(PGconn *c)
{
    PGresult *res = q(c,
                      "SELECT s.wal_slot, s.emit_mode, p.slot_name IS NOT NULL, "
                      "       coalesce(p.wal_status, ''), p.active, "
                      "       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), p.restart_lsn)"
                      "                ::bigint::text, 'no'), "
                      "       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                      "                                p.confirmed_flush_lsn)::bigint::text, '?'), "
                      "       coalesce(p.confirmed_flush_lsn::text, 'nothing') "
                      "  FROM ferry.settings s LEFT JOIN pg_replication_slots p "
                      "    ON p.slot_name = s.wal_slot",
                      0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return fail_res("could not read the slot", res);
    const char *name = PQgetvalue(res, 0, 0), *mode = PQgetvalue(res, 0, 1);
    int exists = PQgetvalue(res, 0, 2)[0] == 't';
    int rc = 0;
    if (!exists) {
        printf("slot %s: MISSING (emit_mode %s)%s\n", name, mode,
               strcmp(mode, "wal") == 0 ? ": messages emitted now are not decoded; set "
                                          "emit_mode = 'table' and see `slot recreate`" : "");
        rc = strcmp(mode, "wal") == 0 ? 4 : 0;
    } else {
        const char *ws = PQgetvalue(res, 0, 3);
        int active = PQgetvalue(res, 0, 4)[0] == 't';
        printf("slot %s: wal_status %s, %s, retains %s bytes of WAL, confirmed %s (%s bytes "
               "behind), emit_mode %s\n", name, ws, active ? "active" : "INACTIVE",
               PQgetvalue(res, 0, 5), PQgetvalue(res, 0, 7), PQgetvalue(res, 0, 6), mode);
        if (strcmp(ws, "lost") == 0 || !active)
            rc = 4;
    }
    PQclear(res);
    return rc;
}

int cmd_slot(int argc, char **argv)
{
    static const char *const actions[] = {"create", "recreate", "status", NULL};
    static int (*const run[])(PGconn *) = {cmd_create, cmd_recreate, cmd_status};
    static const relay_cli_db_cmd cmd = {
        .name = "slot",
        .shortopts = "d:h",
        .usage = slot_usage,
        .actions = actions,
    };
    /* as migrate and status: --db, else $FERRY_DB, else the config's db: */
    PGconn *conn;
    int action, status;
    if (relay_cli_db_command(&cmd, argc, argv, &action, &conn, &status) != 0)
        return status;
    int rc = run[action](conn);
    PQfinish(conn);
    return rc;
}
