/*
 * relay_cli.h — what ferry-relay's subcommands (migrate, status, slot,
 * devkafka) do alike on their command lines: --help and usage errors,
 * unexpected operands, and, for those that need the database alone, the
 * whole line read one way and the connection made.
 */
#ifndef FERRY_RELAY_CLI_H
#define FERRY_RELAY_CLI_H

#include <stdio.h>

#include <libpq-fe.h>

struct option;

/*
 * The two ends of a subcommand's command line that every ferry-relay
 * subcommand answers alike (2 is the usage error's exit status):
 *
 * relay_cli_option: an option the subcommand's getopt loop does not take
 * itself. 'h' (--help) prints the usage on stdout and returns 0; any
 * other (getopt said what is wrong) prints it on stderr and returns 2.
 *
 * relay_cli_unexpected: an operand where the subcommand takes none.
 * "ferry-relay CMD: unexpected argument "ARG"" on stderr, then the usage
 * when usage is not NULL; returns 2.
 */
int relay_cli_option(int c, void (*usage)(FILE *));
int relay_cli_unexpected(const char *cmd, const char *arg, void (*usage)(FILE *));

/*
 * A subcommand that needs the database alone (migrate, status, slot):
 * --db, --config and --help, the subcommand's own options, its operand,
 * the database found as relay_config_subcommand_db finds it, and the
 * connection to it.
 */
enum { RELAY_CLI_OWN_MAX = 8 };   /* own long options, at most */
typedef struct relay_cli_db_cmd {
    const char *name;                 /* "status": messages say "ferry-relay status: " */
    const char *shortopts;            /* getopt_long's, with "d:h" */
    /* The subcommand's own long options ({NULL}-ended; NULL: none), each
     * handed to own_option with its argument: 0, or -1 after saying why
     * (a usage error). */
    const struct option *own;
    int (*own_option)(int c, const char *arg, void *ctx);
    void *ctx;
    void (*usage)(FILE *);
    /* Its operand: one of actions ({NULL}-ended: slot's create, ...;
     * the usage when there is not exactly one, "unknown action" when it
     * is none of them), or, when actions is NULL, none ("unexpected
     * argument", then unexpected_usage's text unless that is NULL). */
    const char *const *actions;
    void (*unexpected_usage)(FILE *);
    /* The session's fallback_application_name (the conninfo may name
     * its own); NULL: the conninfo alone, as PQconnectdb takes it. */
    const char *app_name;
} relay_cli_db_cmd;

/* 0: go on, connected (*conn, the caller PQfinishes it) and, when the
 * subcommand takes an action, its index in cmd->actions in *action.
 * -1: end now with the exit status *status: 0 after --help, 2 after a
 * usage error, 1 when the database could not be reached, each said on
 * stderr. */
int relay_cli_db_command(const relay_cli_db_cmd *cmd, int argc, char **argv, int *action,
                         PGconn **conn, int *status);

#endif
