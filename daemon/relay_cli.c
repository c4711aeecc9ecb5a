/* relay_cli.c — see relay_cli.h. */
#include "relay_cli.h"

#include <assert.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int relay_cli_option(int c, void (*usage)(FILE *))
{
    usage(c == 'h' ? stdout : stderr);
    return c == 'h' ? 0 : 2;
}

int relay_cli_unexpected(const char *cmd, const char *arg, void (*usage)(FILE *))
{
    fprintf(stderr, "ferry-relay %s: unexpected argument \"%s\"\n", cmd, arg);
    if (usage != NULL)
        usage(stderr);
    return 2;
}

/* The operand of argv from optind on: 0, with the index of the action
 * in *action when the command takes one; or the usage error's status. */
static int operand(const relay_cli_db_cmd *cmd, int argc, char **argv, int *action)
{
    if (cmd->actions == NULL) {
        if (optind != argc)
            return relay_cli_unexpected(cmd->name, argv[optind], cmd->unexpected_usage);
        return 0;
    }
    if (optind + 1 != argc) {
        cmd->usage(stderr);
        return 2;
    }
    int i = 0;
    while (cmd->actions[i] != NULL && strcmp(cmd->actions[i], argv[optind]) != 0)
        i++;
    if (cmd->actions[i] == NULL) {
        fprintf(stderr, "ferry-relay %s: unknown action \"%s\"\n", cmd->name, argv[optind]);
        cmd->usage(stderr);
        return 2;
    }
    *action = i;
    return 0;
}

static PGconn *connect_to(const relay_cli_db_cmd *cmd, const char *db)
{
    if (cmd->app_name == NULL)
        return PQconnectdb(db);
    const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *const values[] = {db, cmd->app_name, NULL};
    return PQconnectdbParams(keys, values, 1);
}

int relay_cli_db_command(const relay_cli_db_cmd *cmd, int argc, char **argv, int *action,
                         PGconn **conn, int *status)
{
    /* --db, --config and --help first, then the subcommand's own. */
    struct option longopts[3 + RELAY_CLI_OWN_MAX + 1] = {
        {"db", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
    };
    size_t n = 3;
    for (size_t i = 0; cmd->own != NULL && cmd->own[i].name != NULL; i++) {
        assert(n < 3 + RELAY_CLI_OWN_MAX);
        longopts[n++] = cmd->own[i];
    }
    const char *flag_db = NULL, *config = NULL;
    int c;
    optind = 0;   /* full reset: tests call a subcommand more than once in a process */
    while ((c = getopt_long(argc, argv, cmd->shortopts, longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            flag_db = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'h':
        case '?':
        case ':':
            *status = relay_cli_option(c, cmd->usage);
            return -1;
        default:
            if (cmd->own_option(c, optarg, cmd->ctx) != 0) {
                *status = 2;
                return -1;
            }
        }
    }
    if ((*status = operand(cmd, argc, argv, action)) != 0)
        return -1;
    /* Only a command line that is right asks for the database. */
    char *db = NULL;
    if (relay_config_subcommand_db(cmd->name, flag_db, config, &db) != 0) {
        *status = 2;
        return -1;
    }
    PGconn *cn = connect_to(cmd, db);
    free(db);   /* not needed past the connection */
    if (PQstatus(cn) != CONNECTION_OK) {
        fprintf(stderr, "ferry-relay %s: could not connect: %s", cmd->name, PQerrorMessage(cn));
        PQfinish(cn);
        *status = 1;
        return -1;
    }
    *conn = cn;
    return 0;
}
