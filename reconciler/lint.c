/*
 * lint.c — `ferry-reconcile lint FILE...`: load every saga definition and
 * report every error of every file, not only the first, in the form
 * compilers use (FILE:LINE:COLUMN: ...), so that editors can jump to it.
 */
#include <string.h>

#include "reconcile.h"

void reconcile_print_errors(FILE *out, const char *file, const ferry_saga_load_errors *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        const ferry_saga_load_error *e = &errs->errors[i];
        if (e->line > 0)
            fprintf(out, "%s:%d:%d: ", e->file, e->line, e->column);
        else
            fprintf(out, "%s: ", e->file);
        if (e->field[0])
            fprintf(out, "%s: ", e->field);
        fprintf(out, "%s\n", e->message);
    }
    if (errs->total > errs->count)
        fprintf(out, "%s: %zu more error%s not shown\n", file, errs->total - errs->count,
                errs->total - errs->count == 1 ? "" : "s");
}

int reconcile_lint(int argc, char **argv)
{
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "--") == 0)
        first = 2;
    else
        for (int i = 1; i < argc; i++)
            if (argv[i][0] == '-' && argv[i][1] != '\0') {
                fprintf(stderr, "ferry-reconcile lint: unknown option \"%s\"\n"
                        "usage: ferry-reconcile lint FILE...\n", argv[i]);
                return RECONCILE_EXIT_USAGE;
            }
    if (first >= argc) {
        fprintf(stderr, "usage: ferry-reconcile lint FILE...\n");
        return RECONCILE_EXIT_USAGE;
    }

    int status = RECONCILE_EXIT_OK;
    for (int i = first; i < argc; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        if (ferry_saga_def_load(argv[i], &def, &errs) != FERRY_OK) {
            reconcile_print_errors(stderr, argv[i], &errs);
            status = RECONCILE_EXIT_INVALID;
            continue;
        }
        printf("%s: OK: saga %s version %d, %zu step%s, hash %s\n", argv[i], def->name,
               def->version, def->step_count, def->step_count == 1 ? "" : "s", def->hash);
        ferry_saga_def_free(def);
    }
    return status;
}
