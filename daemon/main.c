/*
 * ferry-relay — the sidecar that publishes the outbox to Kafka.
 *
 * For now it applies the schema only (`ferry-relay migrate`); publishing
 * comes with the relay proper. The command line is already the one other
 * programs and scripts rely on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "internal.h"
#include "devkafka.h"
#include "relay.h"
#include "relay_wal.h"
#include "status.h"
#include "config.h"
#include "relay_cli.h"

enum { EXIT_USAGE = 2 };

/* The commands; run's options come from daemon/config.c's tables, so the
 * text and the parser cannot disagree. */
static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay [run] --db CONNINFO --kafka BOOTSTRAP [OPTION]...\n"
            "       ferry-relay migrate --db CONNINFO\n"
            "       ferry-relay status --db CONNINFO [--json]\n"
            "       ferry-relay devkafka [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...\n"
            "       ferry-relay slot create|recreate|status --db CONNINFO\n"
            "       ferry-relay --version\n"
            "       ferry-relay COMMAND --help\n"
            "\n"
            "Commands:\n"
            "  run       publish the outbox to Kafka until SIGTERM/SIGINT (the default)\n"
            "  migrate   apply the ferry schema to the database (idempotent)\n"
            "  status    is a relay live and keeping up: a verdict, then relays, shards with\n"
            "            ready rows, dead letters (exit 0 ok, 4 a problem)\n"
            "  slot      the WAL source's replication slot: create it, recreate a lost one\n"
            "            (reports what may have been missed), status (exit 4 a problem)\n"
            "  devkafka  run librdkafka's mock cluster as a development broker; prints its\n"
            "            bootstrap servers first, runs until SIGTERM/SIGINT\n"
            "  --version print the version and the schema version it migrates to\n"
            "\n");
    relay_config_usage(out);
}

static void migrate_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay migrate [--db CONNINFO] [--config FILE]\n"
            "\n"
            "Apply the ferry schema (schemas/NNN_*.sql, built in) in one transaction;\n"
            "running it again changes nothing.\n"
            "\n"
            "  --db CONNINFO   libpq connection string or URI ($FERRY_DB; default: db: of\n"
            "                  the --config file)\n"
            "  --config FILE   ferry-relay run's YAML settings: its db: ($FERRY_CONFIG)\n"
            "  --help          this text\n"
            "\n"
            "Exit status: 0 migrated or already current, 1 failed, 2 usage error.\n");
}

static int cmd_migrate(int argc, char **argv)
{
    static const relay_cli_db_cmd cmd = {
        .name = "migrate",
        .shortopts = "d:h",
        .usage = migrate_usage,
    };
    PGconn *conn;
    int status;
    if (relay_cli_db_command(&cmd, argc, argv, NULL, &conn, &status) != 0)
        return status;
    int before = 0, after = 0;
    ferry_error err;
    /* The version before is read under the migration's lock, held for the
     * whole run: concurrent runs each said "migrated from version 0" when
     * one of them had (an outside audit). The library takes the same lock
     * again for its transaction, which a session holding it may. */
    PGresult *lock = PQexec(conn, "SELECT pg_advisory_lock(" FERRY__MIGRATE_LOCK_KEY ")");
    ferry_code rc = PQresultStatus(lock) == PGRES_TUPLES_OK
                        ? FERRY_OK
                        : ferry_error_from_pg(&err, conn, lock, "could not take the migration "
                                                               "lock");
    PQclear(lock);
    if (rc == FERRY_OK)
        rc = ferry_schema_version(conn, &before, &err);
    if (rc == FERRY_OK)
        rc = ferry_migrate(conn, &after, &err);
    PQfinish(conn);     /* lets the lock go */
    if (rc != FERRY_OK) {
        fprintf(stderr, "ferry-relay migrate: %s (%s%s%s)\n", err.message,
                ferry_code_name(rc), err.sqlstate[0] ? ", SQLSTATE " : "", err.sqlstate);
        return EXIT_FAILURE;
    }
    if (before == after)
        printf("ferry schema is at version %d; nothing to do\n", after);
    else
        printf("ferry schema migrated from version %d to %d\n", before, after);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "devkafka") == 0)
        return cmd_devkafka(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "slot") == 0)
        return cmd_slot(argc - 1, argv + 1);
    if (cmd[0] == '-' && strcmp(cmd, "--version") != 0 && strcmp(cmd, "--help") != 0 &&
        strcmp(cmd, "-h") != 0) {
        /* `ferry-relay --db ... --kafka ...`: run is the default command. */
        argv[0] = "run";
        return cmd_run(argc, argv);
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("ferry-relay %s (schema %d)\n", ferry_version(), ferry_schema_version_known());
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ferry-relay: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
