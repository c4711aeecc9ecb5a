/*
 * yaml_walk.h — a checked walk over libyaml's event stream, shared by the
 * YAML loaders: saga definitions (lib/saga_def.c) and the reconciler's
 * rules files (reconciler/rules.c, which links libferry statically).
 * Internal: not in ferry.h, not exported from libferry.so.
 *
 * The contract it keeps for its loaders: every error is reported with its
 * file, line, column and field path (ferry_saga_load_errors), not only the
 * first. Each value is checked where its event carries its position; a bad
 * value is recorded and skipped and the walk goes on. What stops the walk
 * (w->fatal: nothing after it could be trusted): a YAML syntax error
 * (libyaml cannot resume), any anchor or alias (refused outright, so that
 * memory stays linear in the document: no "billion laughs"), nesting
 * deeper than FERRY_YW_DEPTH_MAX, a second document, running out of
 * memory.
 *
 * Functions returning int give -1 when the walk stopped (the caller
 * unwinds at once) and 0 otherwise, whatever they recorded. Events passed
 * in are borrowed: the caller deletes them.
 *
 * Memory: every allocation made here goes through ferry__saga_malloc_
 * (saga_def_hook.h), so that tests can fail the Nth one of either loader;
 * libyaml's own allocations are not covered. Not thread-safe while a test
 * swaps the hook; otherwise walkers share nothing.
 */
#ifndef FERRY_YAML_WALK_H
#define FERRY_YAML_WALK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yaml.h>

#include "internal.h"

#define FERRY_YW_DEPTH_MAX FERRY_SAGA_DEPTH_MAX  /* open collections */
#define FERRY_YW_KEYS_MAX 16                     /* keys of any one mapping read */
#define FERRY_YW_DURATION_MAX_MS FERRY_SAGA_TIMEOUT_MAX_MS  /* 366 days */

typedef struct ferry__yw_place {
    int line, column;                 /* 1-based; 0 when unknown */
} ferry__yw_place;

typedef struct ferry__yw {
    yaml_parser_t parser;
    const unsigned char *text;        /* borrowed, len bytes */
    size_t len;
    const char *file;                 /* borrowed: the name errors carry */
    const char *what;                 /* "the saga definition", for messages */
    ferry_saga_load_errors *errs;     /* borrowed: where errors go */
    /* Required keys found missing: kept apart, and reported only when the
     * whole document was read (a syntax error ends mappings early). */
    ferry_saga_load_errors missing;
    unsigned depth;                   /* open collections */
    bool fatal;                       /* the walk stopped */
    bool oom;
    char path[128];                   /* field path of what is read now */
} ferry__yw;

/* The top of a document: a mapping of these keys. */
typedef int (*ferry__yw_value_fn)(ferry__yw *w, int index, ferry__yw_place key_at,
                                 yaml_event_t *val, void *arg);
typedef struct ferry__yw_doc {
    const char *expected;             /* "a saga definition (a mapping with ...)" */
    const char *one;                  /* "saga definition": "a file holds one %s" */
    const char *const *keys;
    int nkeys;
    const bool *required;             /* NULL: none */
    ferry__yw_value_fn value;
    void *arg;
    /* An empty document (nothing, or comments only) or a null at the top
     * reads as a mapping without keys rather than an error: for files in
     * which every key is optional (the relay's configuration). */
    bool empty_ok;
} ferry__yw_doc;

/* ------------------------------------------------------------ running a walk */

/* Set w up to read text (borrowed, as are file, what and errs; errs is
 * added to, not cleared). No allocation. */
void ferry__yw_init(ferry__yw *w, const char *text, size_t len, const char *file,
                   const char *what, ferry_saga_load_errors *errs);

/* Read the one document of w's text: its top mapping goes through
 * ferry__yw_read_mapping with doc's keys, then the deferred "missing"
 * errors are added unless the walk stopped. 0 when the walk reached the
 * end (errors or not), -1 when it stopped (w->fatal; w->oom says whether
 * for lack of memory). */
int ferry__yw_read_document(ferry__yw *w, const ferry__yw_doc *doc);

/* Read a whole file of at most max bytes (read, not fstat alone: pipes
 * are capped as well) into *buf_out (free()) and *len_out. On failure
 * one error goes to errs ("could not open WHAT: ...", "the document is
 * larger than MAX bytes; ...") and the code is FERRY_EINVAL, or
 * FERRY_ENOMEM; *unreadable tells a file that could not be opened or read
 * at all (an operational error) from one that was refused. The outputs
 * are untouched on failure. */
ferry_code ferry__yw_read_file(const char *path, size_t max, const char *what, char **buf_out,
                              size_t *len_out, bool *unreadable, ferry_saga_load_errors *errs);

/* Errors in document order (stable: equal places keep their order). */
void ferry__yw_sort_errors(ferry_saga_load_errors *e);

/*
 * The entry points a loader shares (ferry_saga_def_parse and _load,
 * rc_rules_parse and _load): errs cleared (a local one when NULL), the
 * arguments checked ("TEXT_ARG is NULL", "out is NULL", ...), a name for
 * a text given none ("<memory>"), a document over max bytes refused
 * unread, the file read (ferry__yw_read_file) for _load, and the errors
 * sorted into document order. In between, a zeroed loader of size bytes
 * (large, a place per possible item: not on the stack), whose first
 * member is its ferry__yw, set up for the text and handed to read.
 */
typedef struct ferry__yw_loader {
    const char *what;                 /* "the saga definition", for messages */
    const char *text_arg;             /* "yaml": said when the text is NULL */
    size_t max;                       /* bytes of a document, at most */
    size_t size;                      /* of the loader: struct { ferry__yw w; ... } */
    /* Walk the text and make the result: on FERRY_OK *out (out is the
     * caller's T **) is set, otherwise nothing is left allocated. */
    ferry_code (*read)(void *loader, void *out);
} ferry__yw_loader;

ferry_code ferry__yw_parse(const ferry__yw_loader *l, const char *text, size_t len,
                          const char *name, void *out, ferry_saga_load_errors *errs);
ferry_code ferry__yw_load(const ferry__yw_loader *l, const char *path, void *out,
                         ferry_saga_load_errors *errs);
/* What a walk that has ended comes to: FERRY_ENOMEM when it ran out of
 * memory, else FERRY_EINVAL when it recorded any error, else FERRY_OK. */
ferry_code ferry__yw_outcome(const ferry__yw *w);

/* ------------------------------------------------------------ errors */

/* Record an error in e; errors past FERRY_SAGA_ERRORS_MAX are counted
 * only. field may be NULL. */
void ferry__yw_add_error(ferry_saga_load_errors *e, const char *file, ferry__yw_place at,
                        const char *field, const char *fmt, ...) FERRY_PRINTF(5, 6);
/* An error about field (NULL or "": none). */
void ferry__yw_error_at(ferry__yw *w, ferry__yw_place at, const char *field, const char *fmt, ...)
    FERRY_PRINTF(4, 5);
/* An error about the field being read now (w->path). */
void ferry__yw_error(ferry__yw *w, ferry__yw_place at, const char *fmt, ...) FERRY_PRINTF(3, 4);
/* "out of memory loading WHAT", once; stops the walk. Always -1. */
int ferry__yw_oom(ferry__yw *w);

/* Append ".key" (or "key" at the top) or "[i]" to w->path; returns the
 * old length for ferry__yw_pop. A path too long for the buffer is cut. */
size_t ferry__yw_push_key(ferry__yw *w, const char *key);
size_t ferry__yw_push_index(ferry__yw *w, size_t i);
void ferry__yw_pop(ferry__yw *w, size_t old);

/* ------------------------------------------------------------ memory */

/* ferry__saga_malloc_, recording an out-of-memory error on failure. */
void *ferry__yw_malloc(ferry__yw *w, size_t n);
/* n bytes of s and a NUL, new; NULL (recorded) when out of memory. */
char *ferry__yw_strndup(ferry__yw *w, const char *s, size_t n);

/* ------------------------------------------------------------ events */

ferry__yw_place ferry__yw_place_of(yaml_mark_t m);
/* The next event; the caller deletes it. -1 stops the walk (a syntax
 * error, an anchor or alias, too deep a nesting); ev then holds nothing.
 * A tag, or a NUL inside a scalar, is recorded but not fatal. */
int ferry__yw_next(ferry__yw *w, yaml_event_t *ev);
/* The next event inside the collection being read: 1 with it in *ev
 * (the caller deletes it), 0 when the collection ended (its end event
 * read and deleted), -1 when the walk stopped (as ferry__yw_next). */
int ferry__yw_next_item(ferry__yw *w, yaml_event_t *ev);
/* Read past the value whose first event is ev. */
int ferry__yw_skip(ferry__yw *w, const yaml_event_t *ev);
/* Read past the rest of the collection being read, up to its end. */
int ferry__yw_skip_rest(ferry__yw *w);

const char *ferry__yw_scalar(const yaml_event_t *ev);
bool ferry__yw_is_plain(const yaml_event_t *ev);
/* YAML 1.2 core schema null: an empty, "~" or "null" plain scalar. */
bool ferry__yw_is_null(const yaml_event_t *ev);
bool ferry__yw_plain_true(const char *v);   /* true, True, TRUE */
bool ferry__yw_plain_false(const char *v);
/* What ev is, for "expected X, not Y" messages, into buf. */
const char *ferry__yw_describe(const yaml_event_t *ev, char *buf, size_t len);
/* "expected WHAT, not THIS" at ev, then skip it. */
int ferry__yw_wrong_type(ferry__yw *w, const yaml_event_t *ev, const char *what);

/* ------------------------------------------------------------ mappings */

/*
 * The pairs of a mapping whose start event was read, up to its end:
 * unknown keys (the message lists the known ones) and duplicate keys are
 * errors and their values skipped, each known one goes to fn with the
 * path extended by the key (fn handles, reads or skips, the value; the
 * walker deletes it). seen[i] tells afterwards which keys were there.
 * nkeys <= FERRY_YW_KEYS_MAX.
 */
int ferry__yw_read_mapping(ferry__yw *w, const char *const *keys, int nkeys, bool *seen,
                          ferry__yw_value_fn fn, void *arg);
/* Errors (deferred to the end of the walk) for the required keys of the
 * mapping at at that were not seen, each "missing: "KEY" is required". */
void ferry__yw_require_keys(ferry__yw *w, ferry__yw_place at, const char *const *keys,
                           const bool *required, const bool *seen, int nkeys);

/* ------------------------------------------------------------ sequences */

/*
 * The items of a sequence whose start event is ev ("expected a sequence
 * of ITEMS" when it is something else), each to fn with its index and the
 * path extended by "[i]" (fn reads the item; the walker deletes it).
 * *count counts the items read, at most max: the first one past that is
 * "more than MAX ITEMS", said once, and the rest of the sequence is
 * skipped. *count is raised before fn reads its item, so that what fn
 * half-filled is freed with the rest.
 */
typedef int (*ferry__yw_item_fn)(ferry__yw *w, yaml_event_t *ev, size_t index, void *arg);
int ferry__yw_read_sequence(ferry__yw *w, const yaml_event_t *ev, const char *items, size_t max,
                           size_t *count, ferry__yw_item_fn fn, void *arg);

/* ------------------------------------------------------------ scalars */

/* Each reads a value, recording what is wrong with it; *ok says whether
 * *out was set. */

/* A non-null scalar copied into *out (new; *out was NULL). what names the
 * expected value: "expected WHAT, not ...". */
int ferry__yw_get_string(ferry__yw *w, yaml_event_t *ev, const char *what, char **out, bool *ok);
/* A plain decimal integer in [min, max] ("12abc" is not 12). */
int ferry__yw_get_int(ferry__yw *w, yaml_event_t *ev, long min, long max, int *out, bool *ok);
int ferry__yw_get_bool(ferry__yw *w, yaml_event_t *ev, int *out, bool *ok);
/* A duration (see ferry__yw_parse_duration), > 0 unless allow_zero. */
int ferry__yw_get_duration(ferry__yw *w, yaml_event_t *ev, bool allow_zero, int64_t *out,
                          bool *ok);

/* A plain integer (milliseconds; only when plain, i.e. unquoted) or one
 * or more NUMBER UNIT terms, units ms, s, m, h, d, at most 366 days.
 * NULL, or why not ("is not a duration", ...). */
const char *ferry__yw_parse_duration(const char *text, bool plain, int64_t *out);
/* "1h30m", "1500ms", "1d2h3m4s5ms": into buf. */
const char *ferry__yw_format_duration(int64_t ms, char *buf, size_t len);

/* Checks of a value already read (ev gives the place). Each records what
 * is wrong and returns false then. */
/* A name: [A-Za-z0-9._-]{1,max}. */
bool ferry__yw_check_name(ferry__yw *w, const yaml_event_t *ev, const char *name, int max);
/* Kafka's rules for a topic name, and a message type, as ferry_emit()
 * applies them (these return -1 only when out of memory). */
int ferry__yw_check_topic(ferry__yw *w, const yaml_event_t *ev, const char *topic, bool *ok);
int ferry__yw_check_type(ferry__yw *w, const yaml_event_t *ev, const char *type, bool *ok);

#endif /* FERRY_YAML_WALK_H */
