/*
 * saga_tmpl.h — a saga command's payload as JSON text, its numbers as
 * written; private to saga_def.c (which builds templates) and
 * saga_driver.c (which fills them in).
 *
 * Why text and not jansson values (issue 12): jansson keeps a number as
 * an int64 or a double, so 0.1 went out as 0.10000000000000001, 1e-400
 * as 0.0, and an integer beyond int64 could not be read at all — in a
 * definition it was refused, in a saga's context it made the context
 * "not a JSON object". JSON_REAL_PRECISION(17) is what printed
 * 0.10000000000000001; fewer digits lose other doubles, and no precision
 * brings back 1e-400 or 30 integer digits once a double holds them. The
 * payload goes into a jsonb column, whose numeric keeps every digit. So
 * the definition's numbers travel as the text they were written with
 * (checked at load against what numeric can hold), and a context value
 * is copied from the context's own JSON text, never parsed into a double.
 *
 * A template is that text with every "${context.PATH}" string cut out,
 * and the list of places where a context value goes in.
 */
#ifndef FERRY_SAGA_TMPL_H
#define FERRY_SAGA_TMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "ferry.h"

typedef struct ferry__tmpl_ref {
    size_t at;                  /* offset in text where the value goes */
    char *path;                 /* "a.b" of "${context.a.b}", owned */
} ferry__tmpl_ref;

typedef struct ferry__tmpl {
    char *text;                 /* owned; NUL-terminated once built */
    size_t len, cap;
    ferry__tmpl_ref *refs;       /* owned, in order of at */
    size_t n_refs, refs_cap;
} ferry__tmpl;

/* ------------------------------------------------------------ building */

/* Append to t: raw JSON text; s[0..n) as a JSON string; a context
 * reference to path[0..n). Every allocation goes through the loader's
 * seam (saga_def_hook.h). 0, or -1 when memory ran out: t then holds
 * what it held, ready for ferry__tmpl_free. */
int ferry__tmpl_append(ferry__tmpl *t, const char *s, size_t n);
int ferry__tmpl_append_string(ferry__tmpl *t, const char *s, size_t n);
int ferry__tmpl_append_ref(ferry__tmpl *t, const char *path, size_t n);
/* Frees what t owns and zeroes it; t may be zeroed already. */
void ferry__tmpl_free(ferry__tmpl *t);

/* The template of def's step's action or compensation. def must come from
 * ferry_saga_def_load/parse (the templates live beside it). */
const ferry__tmpl *ferry__saga_def_tmpl(const ferry_saga_def *def, size_t step,
                                      ferry_saga_command_kind kind);

/* ------------------------------------------------------------ filling in */

/*
 * t with every reference replaced by the value at its path in ctx (JSON
 * text of ctx_len bytes, trusted to be valid JSON: jsonb's output, or
 * checked by ferry_msg_check), copied byte for byte. When keys repeat,
 * the last one counts, as in jsonb. ctx NULL shows each reference as its
 * "${context.PATH}" string instead.
 * Returns 0 with *out (malloc'd, NUL-terminated; caller frees); or -1
 * with *missing the path of the first reference ctx has no value for
 * (borrowed from t), or *missing NULL when memory ran out.
 */
int ferry__tmpl_render(const ferry__tmpl *t, const char *ctx, size_t ctx_len, char **out,
                      const char **missing);

#endif
