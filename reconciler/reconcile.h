/*
 * reconcile.h — the commands of ferry-reconcile, each its own file;
 * main.c only dispatches. Each takes the arguments after the command name
 * (argv[0] is the command) and returns the process's exit status.
 */
#ifndef FERRY_RECONCILE_H
#define FERRY_RECONCILE_H

#include <stdio.h>

#include "ferry.h"

enum {
    RECONCILE_EXIT_OK = 0,
    RECONCILE_EXIT_INVALID = 1,       /* lint, graph: a definition was refused */
    RECONCILE_EXIT_USAGE = 2,
};

/* lint FILE...: load every file, print each error to stderr as
 * FILE:LINE:COLUMN: FIELD: MESSAGE and one OK line per valid file. */
int reconcile_lint(int argc, char **argv);

/* graph FILE: the definition as a Graphviz DOT digraph on stdout. */
int reconcile_graph(int argc, char **argv);

/* Every error of errs to out, one per line, in the lint format. */
void reconcile_print_errors(FILE *out, const char *file, const ferry_saga_load_errors *errs);

#endif
