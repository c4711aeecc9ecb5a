/*
 * ferry-reconcile — the sweeper that finds to-dos that never executed and
 * brings the system back into compliance (DESIGN.md, "Reconcile"). It
 * starts with the saga definitions it needs to drive stuck sagas: `lint`
 * checks them and `graph` draws one. check/repair/run come next.
 *
 * Exit status: 0 all good, 1 a definition was refused, 2 usage error.
 */
#include <stdio.h>
#include <string.h>

#include "ferry.h"
#include "reconcile.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-reconcile lint FILE...\n"
            "       ferry-reconcile graph FILE\n"
            "       ferry-reconcile --version\n"
            "\n"
            "  lint   load and check saga definitions; every error goes to stderr as\n"
            "         FILE:LINE:COLUMN: FIELD: MESSAGE. Exit 0 when every file is valid,\n"
            "         1 when any is not\n"
            "  graph  print a saga definition as a Graphviz digraph (render it with\n"
            "         `dot -Tpng`): the steps, their compensations in reverse, the pivot\n");
}

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"lint", reconcile_lint},
    {"graph", reconcile_graph},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return RECONCILE_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("ferry-reconcile %s\n", ferry_version());
        return RECONCILE_EXIT_OK;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return RECONCILE_EXIT_OK;
    }
    fprintf(stderr, "ferry-reconcile: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return RECONCILE_EXIT_USAGE;
}
