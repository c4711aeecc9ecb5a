/*
 * ferry-relay — the sidecar that publishes the outbox to Kafka.
 *
 * For now it applies the schema only (`ferry-relay migrate`); publishing
 * comes with the relay proper. The command line is already the one other
 * programs and scripts rely on.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

enum { EXIT_USAGE = 2 };

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay migrate --db CONNINFO\n"
            "       ferry-relay --version\n"
            "\n"
            "  migrate   apply the ferry schema to the database (idempotent)\n"
            "\n"
            "  --db CONNINFO   libpq connection string or URI (default: $FERRY_DB)\n");
}

static int cmd_migrate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *db = getenv("FERRY_DB");
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            db = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "ferry-relay migrate: unexpected argument \"%s\"\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (db == NULL || db[0] == '\0') {
        fprintf(stderr, "ferry-relay migrate: no database: give --db CONNINFO or set FERRY_DB\n");
        return EXIT_USAGE;
    }

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "ferry-relay migrate: could not connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return EXIT_FAILURE;
    }
    int before = 0, after = 0;
    ferry_error err;
    ferry_code rc = ferry_schema_version(conn, &before, &err);
    if (rc == FERRY_OK)
        rc = ferry_migrate(conn, &after, &err);
    PQfinish(conn);
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
