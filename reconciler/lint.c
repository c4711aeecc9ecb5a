/*
 * lint.c — `ferry-reconcile lint FILE...`: load every saga definition and
 * rules file and report every error of every file, not only the first, in
 * the form compilers use (FILE:LINE:COLUMN: ...), so that editors can jump
 * to it.
 *
 * Which kind a file is, its document's top-level keys say: a rules file
 * has `rules` and/or `budgets` at the top and no `steps`. Anything else,
 * a file that is not YAML at all included, is taken for a saga definition,
 * so that a broken one gets the saga loader's messages as it always did.
 *
 * Exit status, as fsck's (reconcile.h), the OR of: 4 when a file was
 * refused, 8 when one could not be read at all (or memory ran out);
 * 0 when every file is valid.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "reconcile.h"
#include "yaml_walk.h"

#define LINT_FILE_MAX (FERRY_SAGA_FILE_MAX > RC_RULES_FILE_MAX ? FERRY_SAGA_FILE_MAX \
                                                                : RC_RULES_FILE_MAX)

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

/*
 * Is text a rules file? Reads the keys of the top mapping only, and stops
 * at the first thing that is not one (a syntax error included: the loader
 * reports it). Anchors and aliases are events like any other here; no
 * value is built, so nothing can expand. Nesting deeper than the loaders
 * allow (FERRY_YW_DEPTH_MAX) stops it as well: libyaml's scanner spends
 * time in the depth on every token, so walking a deep flow collection to
 * its end is quadratic (80,000 levels took 17 s), and either loader
 * refuses the nesting anyway, naming its place.
 */
static bool is_rules_file(const char *text, size_t len)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return false;                 /* the saga loader will say "out of memory" */
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    bool rules = false, steps = false, is_key = true, done = false;
    int depth = 0;                    /* open collections */
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev))
            break;
        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (depth == 0 && ev.type != YAML_MAPPING_START_EVENT)
                done = true;          /* a sequence at the top */
            if (depth == 1)
                is_key = !is_key;
            if (++depth > FERRY_YW_DEPTH_MAX)
                done = true;          /* the loader says "nested more than ..." */
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            done = --depth == 0;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_ALIAS_EVENT:
            if (depth == 0)
                done = true;          /* a scalar at the top */
            else if (depth == 1) {
                if (is_key && ev.type == YAML_SCALAR_EVENT) {
                    const char *k = (const char *)ev.data.scalar.value;
                    rules = rules || strcmp(k, "rules") == 0 || strcmp(k, "budgets") == 0;
                    steps = steps || strcmp(k, "steps") == 0;
                }
                is_key = !is_key;
            }
            break;
        case YAML_DOCUMENT_END_EVENT:
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return rules && !steps;
}

/* The exit status bits for a load that failed with rc. */
static int refused(ferry_code rc)
{
    return rc == FERRY_ENOMEM ? RC_EXIT_ERROR : RC_EXIT_LEFT;
}

/* lint_saga, lint_rules: the file's summary on stdout when it loads, else
 * its errors in errs (lint_file prints them). */
static ferry_code lint_saga(const char *path, const char *text, size_t len,
                            ferry_saga_load_errors *errs)
{
    ferry_saga_def *def = NULL;
    ferry_code rc = ferry_saga_def_parse(text, len, path, &def, errs);
    if (rc != FERRY_OK)
        return rc;
    printf("%s: OK: saga %s version %d, %zu step%s, hash %s\n", path, def->name, def->version,
           def->step_count, def->step_count == 1 ? "" : "s", def->hash);
    ferry_saga_def_destroy(def);
    return FERRY_OK;
}

static ferry_code lint_rules(const char *path, const char *text, size_t len,
                             ferry_saga_load_errors *errs)
{
    rc_rules *r = NULL;
    ferry_code rc = rc_rules_parse(text, len, path, &r, errs);
    if (rc != FERRY_OK)
        return rc;
    const rc_budgets *b = &r->budgets;
    char lag[32], grace[32], inbox[32], outbox[32], stmt[32];
    printf("%s: OK: rules file, %zu rule%s, budgets: outbox_lag %s, max_attempts %d, "
           "saga_grace %s, inbox_retention %s, outbox_retention %s, statement_timeout %s, "
           "batch %d\n", path, r->count, r->count == 1 ? "" : "s",
           ferry__yw_format_duration(b->outbox_lag_ms, lag, sizeof lag), b->max_attempts,
           ferry__yw_format_duration(b->saga_grace_ms, grace, sizeof grace),
           ferry__yw_format_duration(b->inbox_retention_ms, inbox, sizeof inbox),
           ferry__yw_format_duration(b->outbox_retention_ms, outbox, sizeof outbox),
           ferry__yw_format_duration(b->statement_timeout_ms, stmt, sizeof stmt), b->batch);
    rc_rules_free(r);
    return FERRY_OK;
}

static int lint_file(const char *path)
{
    ferry_saga_load_errors errs;
    memset(&errs, 0, sizeof errs);
    char *text;
    size_t len;
    bool unreadable = false;
    /* Its kind is not known yet: a file that cannot be read is said to be
     * a saga definition, as it always was. */
    ferry_code rc = ferry__yw_read_file(path, LINT_FILE_MAX, "the saga definition", &text, &len,
                                       &unreadable, &errs);
    if (rc == FERRY_OK) {
        rc = is_rules_file(text, len) ? lint_rules(path, text, len, &errs)
                                      : lint_saga(path, text, len, &errs);
        free(text);
    }
    if (rc != FERRY_OK) {
        reconcile_print_errors(stderr, path, &errs);
        return unreadable ? RC_EXIT_ERROR : refused(rc);
    }
    return RC_EXIT_OK;
}

static void lint_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-reconcile lint FILE...\n"
            "       ferry-reconcile lint -- FILE...   (names that start with -)\n"
            "\n"
            "Check saga definitions and rules files (told apart by their content) without\n"
            "a database. Every error goes to stderr as FILE:LINE:COLUMN: FIELD: MESSAGE.\n"
            "\n"
            "  --help   this text\n"
            "  --       the arguments after it are files, even if they start with -\n"
            "\n"
            "Exit status, the sum of: 4 a file was refused, 8 a file could not be read;\n"
            "0 every file is valid; 16 usage error.\n");
}

int reconcile_lint(int argc, char **argv)
{
    int first = 1;
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        lint_usage(stdout);
        return fflush(stdout) == 0 ? RC_EXIT_OK : RC_EXIT_ERROR;
    }
    if (argc > 1 && strcmp(argv[1], "--") == 0)
        first = 2;
    else
        for (int i = 1; i < argc; i++)
            if (argv[i][0] == '-' && argv[i][1] != '\0') {
                fprintf(stderr, "ferry-reconcile lint: unknown option \"%s\"\n", argv[i]);
                lint_usage(stderr);
                return RC_EXIT_USAGE;
            }
    if (first >= argc) {
        lint_usage(stderr);
        return RC_EXIT_USAGE;
    }

    int status = RC_EXIT_OK;
    for (int i = first; i < argc; i++)
        status |= lint_file(argv[i]);
    return status;
}
