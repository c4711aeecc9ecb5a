/*
 * tu_load.h — what the tests of ferry's YAML loaders share (saga
 * definitions, lib/saga_def.c; the reconciler's rules files,
 * reconciler/rules.c): both report ferry_saga_load_errors, and both are
 * tested the same ways (jansson's suite, SQLite's fault simulator):
 *
 *   DIR/valid/CASE/FILE     must load; CASE/expected lists KEY=VALUE lines
 *                           that the loaded object's summary must hold
 *   DIR/invalid/CASE/FILE   must be refused; every line of CASE/expected
 *                           must be part of one reported error, formatted
 *                           FILE:LINE:COLUMN: FIELD: MESSAGE, no other
 *                           error may come, and errors come in document
 *                           order
 *
 * plus the size limit (from memory, a file and a pipe), every allocation
 * failed in turn, and `ferry-reconcile lint`. Every helper fails the
 * running cmocka test on error.
 */
#ifndef FERRY_TU_LOAD_H
#define FERRY_TU_LOAD_H

#include <stdbool.h>
#include <stddef.h>

#include "ferry.h"

/* ------------------------------------------------------------ errors */

/* One error as lint prints it, leaving out the position and the field
 * where they are unknown. */
void tu_load_format(const ferry_saga_load_error *e, char *buf, size_t len);
/* Every kept error, indented, through cmocka's print_error. */
void tu_load_print_errors(const ferry_saga_load_errors *errs);
/* Does some kept error, formatted, contain want? */
bool tu_load_has_error(const ferry_saga_load_errors *errs, const char *want);
/* Exactly one error, containing want; what names the case in the failure. */
void tu_load_assert_one_error(const ferry_saga_load_errors *errs, const char *want,
                              const char *what);

/* ------------------------------------------------------------ text */

/* printf output appended to a growing, malloc'd string; start from {0}. */
typedef struct tu_sbuf {
    char *s;
    size_t len, cap;
} tu_sbuf;
void tu_sb_printf(tu_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* head, then a comment of x's up to exactly size bytes, the last a
 * newline: malloc'd. head ends with "#". */
char *tu_load_padded(const char *head, size_t size);

size_t tu_count_lines(const char *s);

/* ------------------------------------------------------------ a loader */

/* A loader seen through void pointers. load reads the file at path or,
 * when text is not NULL, parses text[0..len-1] under the name path. It
 * must leave *out alone when it fails (the adapter passes the caller's
 * pointer through, so that the runners can check that). */
typedef struct tu_loader {
    const char *file;           /* the name of every case's file: "saga.yaml" */
    ferry_code (*load)(const char *path, const char *text, size_t len, void **out,
                       ferry_saga_load_errors *errs);
    void (*free)(void *obj);
    const char *(*file_of)(const void *obj);
    char *(*summary)(const void *obj);  /* "\nKEY=VALUE\n...", malloc'd */
    void (*check)(const void *obj);     /* what holds for every object that loads */
} tu_loader;

/* Every case of DIR/valid (at least at_least of them), as above. */
void tu_load_valid_cases(const tu_loader *l, const char *dir, size_t at_least);
/* Every case of DIR/invalid (at least at_least of them), as above. */
void tu_load_invalid_cases(const tu_loader *l, const char *dir, size_t at_least);
/* Each of the n names is a case of DIR/invalid. */
void tu_load_cases_exist(const tu_loader *l, const char *dir, const char *const *names,
                         size_t n);

/* A document of max bytes (head, padded) loads; one of max + 1 is refused
 * with one error, containing want, at no line: from memory, from a file,
 * and through a pipe (whose size is unknown). */
void tu_load_size_limit(const tu_loader *l, const char *head, size_t max, const char *want);

/* ferry__saga_malloc_'s stand-in: fails the allocation tu_alloc_countdown
 * allocations on (0: the next), once; tu_alloc_failed counts the failures.
 * For jansson too: json_set_alloc_funcs(tu_failing_malloc, free). */
void *tu_failing_malloc(size_t n);

/* Load path (from_file) or its text (parse) with the 1st allocation
 * failing, then the 2nd, ... until a load in which none failed, which must
 * come out as a clean load does. Each failing load returns FERRY_ENOMEM
 * with an error containing oom, leaves *out alone and leaks nothing
 * (LeakSanitizer checks). More than more_than allocations must have been
 * failed, each in its own round. libyaml's own allocations are not
 * covered. */
void tu_load_alloc_failures(const tu_loader *l, const char *path, int from_file,
                            const char *oom, long more_than);

/* ------------------------------------------------------------ the program */

/* `ferry-reconcile ARGS` (split at spaces: no quoting) to its end; stdout
 * and stderr into *out and *err (malloc'd); its exit status. */
int tu_lint(char **out, char **err, const char *args);

/* cmocka group setup of the loader tests: 0 when dir is there (they run
 * from the repository root), else -1 saying so for prog. */
int tu_load_need_dir(const char *dir, const char *prog);

#endif
