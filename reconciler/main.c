/*
 * ferry-reconcile — the sweeper that finds to-dos that never executed and
 * brings the system back into compliance, fsck-style (DESIGN.md,
 * "Reconcile"; README, "Reconciling").
 *
 * Exit status, as fsck(8): the OR of 1 (problems found and repaired),
 * 4 (problems left uncorrected; `check` always, when it finds any) and
 * 8 (operational error: cannot connect, a bad rules file, a rule that
 * failed); 0 when nothing is wrong; 16 for a usage error.
 */
#include <stdio.h>
#include <string.h>

#include "ferry.h"
#include "reconcile.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-reconcile check  --db CONNINFO [--rules FILE] [--sagas DIR] [--json]\n"
            "       ferry-reconcile repair --db CONNINFO [--rules FILE] [--sagas DIR] [--json]\n"
            "                              [--replay ID|UUID|TOPIC/KEY]... [--discard ...] "
            "[--reason TEXT] [--by NAME]\n"
            "       ferry-reconcile run    --db CONNINFO [--rules FILE] [--sagas DIR] "
            "[--interval S] [--metrics HOST:PORT]\n"
            "       ferry-reconcile lint FILE...\n"
            "       ferry-reconcile graph FILE\n"
            "       ferry-reconcile --version\n"
            "       ferry-reconcile COMMAND --help   (every option, with its default)\n"
            "\n"
            "  check   find every problem, change nothing, print a report (--json: one JSON\n"
            "          document). Sweeps: outbox lag and dead relay leases, over-attempted\n"
            "          rows, sagas past their timers, unfinished compensations, dead letters,\n"
            "          inbox and outbox garbage, the rules file's compliance rules, the WAL\n"
            "          source's replication slot\n"
            "  repair  the same sweep, fixing what can be fixed (one reconciler at a time: a\n"
            "          lease); --replay/--discard act on dead letters, recorded with --by\n"
            "          and --reason\n"
            "  run     repair every --interval seconds as a daemon; other instances stand by\n"
            "  lint    check saga definitions and rules files; every error goes to stderr as\n"
            "          FILE:LINE:COLUMN: FIELD: MESSAGE\n"
            "  graph   print a saga definition as a Graphviz digraph (render it with\n"
            "          `dot -Tpng`): the steps, their compensations in reverse, the pivot\n"
            "\n"
            "Exit status, as fsck: the sum of 1 (problems repaired), 4 (problems left; check:\n"
            "found), 8 (operational error); 0 nothing wrong; 16 usage error.\n"
            "--db defaults to $FERRY_DB.\n");
}

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"check", reconcile_check},
    {"repair", reconcile_repair},
    {"run", reconcile_run},
    {"lint", reconcile_lint},
    {"graph", reconcile_graph},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return RC_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("ferry-reconcile %s\n", ferry_version());
        return RC_EXIT_OK;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return RC_EXIT_OK;
    }
    fprintf(stderr, "ferry-reconcile: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return RC_EXIT_USAGE;
}
