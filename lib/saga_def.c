/*
 * saga_def.c — saga definitions from YAML: load, check, free.
 *
 * The format (schemas/saga.schema.json documents every field):
 *
 *   saga: order-checkout            # [A-Za-z0-9._-]{1,128}
 *   version: 1                      # integer >= 1
 *   deadline: 10m                   # the whole saga, from its start
 *   steps:                          # 1..FERRY_SAGA_STEPS_MAX, run in order
 *     - name: reserve-payment       # unique, [A-Za-z0-9._-]{1,128}
 *       topic: payments.commands    # the participant's command topic
 *       action:       {type: ReservePayment, payload: {order: "${context.order_id}"}}
 *       compensation: {type: ReleasePayment, payload: {order: "${context.order_id}"}}
 *       timeout: 30s                # for one send of the action to be answered
 *       retry: {attempts: 3, backoff: 1s, max_backoff: 10s}   # optional
 *       pivot: false                # optional; at most one step is the pivot
 *
 * Durations are "500ms", "30s", "5m", "2h", "1d" or sums such as "1h30m",
 * or plain integers counting milliseconds. A payload is any YAML value,
 * turned into JSON: quoted scalars are strings; plain ones follow the YAML
 * 1.2 core schema (null, true/false, integers, floats), everything else is
 * a string. A string holding "${" must be exactly "${context.PATH}".
 *
 * Why our own reader over libyaml's events, not libcyaml. The contract is
 * to report every error with its line, column and field. libcyaml stops
 * at the first error, knows no positions past its log lines, cannot
 * express a payload (any JSON value) or a duration that is either a
 * string or an integer, and (1.3.1) reads integers with an unchecked
 * strtoll ("12abc" is 12). daemon/config.c therefore needs three passes
 * around it. Here one recursive walk over the event stream does it all:
 * each value is checked where its event carries its position, a bad value
 * is recorded and skipped, and the walk goes on. Checks across fields
 * (pivot, compensations, timeouts against the deadline) run afterwards on
 * positions remembered during the walk.
 *
 * What stops the walk (nothing after it could be trusted or is worth
 * reading): a YAML syntax error (libyaml cannot resume), any anchor or
 * alias (refused outright: no "billion laughs", memory stays linear in
 * the document), nesting deeper than FERRY_SAGA_DEPTH_MAX, a second
 * document, and running out of memory. Documents over FERRY_SAGA_FILE_MAX
 * bytes are not parsed at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <yaml.h>

#include "internal.h"
#include "saga_def_hook.h"

_Static_assert(FERRY_SAGA_STEPS_MAX >= 1 && FERRY_SAGA_STEPS_MAX <= 1024, "steps limit");
_Static_assert(FERRY_SAGA_DEPTH_MAX >= 8, "payloads need some nesting");
_Static_assert(FERRY_SAGA_TIMEOUT_MAX_MS < INT64_MAX / FERRY_SAGA_ATTEMPTS_MAX / 4,
               "timeout x attempts + backoffs cannot overflow");
_Static_assert(FERRY_SAGA_FILE_MAX <= INT_MAX, "positions fit an int");

void *(*ferry_saga_malloc_)(size_t size) = malloc;

/* ------------------------------------------------------------ places and errors */

typedef struct place {
    int line, column;                 /* 1-based; 0 when unknown */
} place;

static place place_of(yaml_mark_t m)
{
    return (place){(int)m.line + 1, (int)m.column + 1};
}

/* Where each step's parts were, for the checks after the walk. */
typedef struct step_places {
    place at;                         /* the step's mapping */
    place name, timeout, compensation, retry, attempts, backoff, max_backoff;
    bool is_mapping;                  /* else only "expected a step" was said */
    bool timeout_ok;                  /* timeout read and valid */
    bool retry_ok;                    /* retry absent, or read and valid */
    bool compensation_given;          /* the key is there (valid or not) */
    bool backoff_given, max_backoff_given;
} step_places;

typedef struct loader {
    yaml_parser_t parser;
    const unsigned char *text;
    size_t len;
    const char *file;
    ferry_saga_load_errors *errs;
    /* Required keys found missing: kept apart, and reported only when the
     * whole document was read (a syntax error ends mappings early). */
    ferry_saga_load_errors missing;
    unsigned depth;                   /* open collections */
    bool fatal;                       /* the walk stopped */
    bool oom;
    char path[128];                   /* field path of what is read now */
    ferry_saga_def *def;
    place deadline_at;
    bool deadline_ok;
    step_places sp[FERRY_SAGA_STEPS_MAX];
} loader;

/* Record an error; errors past FERRY_SAGA_ERRORS_MAX are counted only. */
FERRY_PRINTF(4, 0)
static void add_error_to(ferry_saga_load_errors *e, const char *file, place at,
                         const char *field, const char *fmt, va_list ap)
{
    e->total++;
    if (e->count == FERRY_SAGA_ERRORS_MAX)
        return;
    ferry_saga_load_error *x = &e->errors[e->count++];
    snprintf(x->file, sizeof x->file, "%s", file);
    x->line = at.line;
    x->column = at.column;
    snprintf(x->field, sizeof x->field, "%s", field ? field : "");
    vsnprintf(x->message, sizeof x->message, fmt, ap);
}

FERRY_PRINTF(4, 0)
static void add_error_v(loader *ld, place at, const char *field, const char *fmt, va_list ap)
{
    add_error_to(ld->errs, ld->file, at, field, fmt, ap);
}

FERRY_PRINTF(4, 5)
static void error_field(loader *ld, place at, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(ld, at, field, fmt, ap);
    va_end(ap);
}

/* An error about the field being read now. */
FERRY_PRINTF(3, 4)
static void error_here(loader *ld, place at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(ld, at, ld->path, fmt, ap);
    va_end(ap);
}

/* Always -1, so that callers can `return out_of_memory(ld)`. */
static int out_of_memory(loader *ld)
{
    if (!ld->oom)
        error_field(ld, (place){0, 0}, "", "out of memory loading the saga definition");
    ld->oom = true;
    ld->fatal = true;
    return -1;
}

/* Append ".key" (or "key" at the top) or "[i]" to the path; returns the
 * old length for path_pop. A path too long for the buffer is cut short. */
static size_t path_push_key(loader *ld, const char *key)
{
    size_t old = strlen(ld->path);
    snprintf(ld->path + old, sizeof ld->path - old, "%s%s", old ? "." : "", key);
    return old;
}

static size_t path_push_index(loader *ld, size_t i)
{
    size_t old = strlen(ld->path);
    snprintf(ld->path + old, sizeof ld->path - old, "[%zu]", i);
    return old;
}

static void path_pop(loader *ld, size_t old)
{
    ld->path[old] = '\0';
}

/* ------------------------------------------------------------ memory */

static char *copy_string(loader *ld, const char *s, size_t n)
{
    char *c = ferry_saga_malloc_(n + 1);
    if (!c) {
        out_of_memory(ld);
        return NULL;
    }
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

static void command_free(ferry_saga_command *c)
{
    free(c->type);
    json_decref(c->payload);
    c->type = NULL;
    c->payload = NULL;
}

void ferry_saga_def_free(ferry_saga_def *def)
{
    if (!def)
        return;
    for (size_t i = 0; def->steps && i < def->step_count; i++) {
        ferry_saga_step_def *s = &def->steps[i];
        free(s->name);
        free(s->topic);
        command_free(&s->action);
        command_free(&s->compensation);
    }
    free(def->steps);
    free(def->name);
    free(def->file);
    free(def);
}

/* ------------------------------------------------------------ events */

static int syntax_error(loader *ld)
{
    const yaml_parser_t *p = &ld->parser;
    ld->fatal = true;
    if (p->error == YAML_MEMORY_ERROR)
        return out_of_memory(ld);
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_READER_ERROR) {
        /* The reader knows a byte offset only. */
        place at = {1, 1};
        for (size_t i = 0; i < p->problem_offset && i < ld->len; i++) {
            if (ld->text[i] == '\n') {
                at.line++;
                at.column = 1;
            } else if ((ld->text[i] & 0xc0) != 0x80) {
                at.column++;
            }
        }
        if (p->problem_value != -1)
            error_field(ld, at, "", "invalid YAML: %s (byte 0x%02x)", problem,
                        (unsigned)p->problem_value & 0xffu);
        else
            error_field(ld, at, "", "invalid YAML: %s", problem);
    } else if (p->context) {
        place ctx = place_of(p->context_mark);
        error_field(ld, place_of(p->problem_mark), "", "invalid YAML: %s (%s at line %d, column %d)",
                    problem, p->context, ctx.line, ctx.column);
    } else {
        error_field(ld, place_of(p->problem_mark), "", "invalid YAML: %s", problem);
    }
    return -1;
}

/*
 * The next event. -1 stops the walk (a syntax error, an anchor or alias,
 * too deep a nesting); ev then holds nothing. Otherwise the caller
 * deletes ev.
 */
static int next(loader *ld, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&ld->parser, ev))
        return syntax_error(ld);
    const yaml_char_t *anchor = NULL, *tag = NULL;
    place at = place_of(ev->start_mark);
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        error_here(ld, at, "aliases are not allowed (*%.64s): anchors and aliases are refused "
                   "so that no document can expand beyond its size", ev->data.alias.anchor);
        yaml_event_delete(ev);
        ld->fatal = true;
        return -1;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        /* A double-quoted "\0" would cut every string we copy short. */
        if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
            error_here(ld, at, "a value contains a NUL character");
            ev->data.scalar.length = strlen((const char *)ev->data.scalar.value);
        }
        break;
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        if (ev->type == YAML_MAPPING_START_EVENT) {
            anchor = ev->data.mapping_start.anchor;
            tag = ev->data.mapping_start.tag;
        } else {
            anchor = ev->data.sequence_start.anchor;
            tag = ev->data.sequence_start.tag;
        }
        if (++ld->depth > FERRY_SAGA_DEPTH_MAX) {
            error_here(ld, at, "nested more than %d levels deep", FERRY_SAGA_DEPTH_MAX);
            yaml_event_delete(ev);
            ld->fatal = true;
            return -1;
        }
        break;
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        ld->depth--;
        break;
    default:
        break;
    }
    if (anchor) {
        error_here(ld, at, "anchors are not allowed (&%.64s): anchors and aliases are refused "
                   "so that no document can expand beyond its size", anchor);
        yaml_event_delete(ev);
        ld->fatal = true;
        return -1;
    }
    if (tag)
        error_here(ld, at, "tags are not supported (%.64s)", tag);
    return 0;
}

static bool is_collection(const yaml_event_t *ev)
{
    return ev->type == YAML_MAPPING_START_EVENT || ev->type == YAML_SEQUENCE_START_EVENT;
}

/* Read past the value whose first event is ev (not deleted here). */
static int skip_value(loader *ld, const yaml_event_t *ev)
{
    if (!is_collection(ev))
        return 0;
    unsigned level = ld->depth - 1;
    while (ld->depth > level) {
        yaml_event_t e;
        if (next(ld, &e) != 0)
            return -1;
        yaml_event_delete(&e);
    }
    return 0;
}

static const char *scalar(const yaml_event_t *ev)
{
    return (const char *)ev->data.scalar.value;
}

static bool is_plain(const yaml_event_t *ev)
{
    return ev->type == YAML_SCALAR_EVENT && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* YAML 1.2 core schema null: an empty, "~" or "null" plain scalar. */
static bool is_null(const yaml_event_t *ev)
{
    const char *v = scalar(ev);
    return is_plain(ev) && (v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
                            strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0);
}

/* What ev is, for "expected X, not Y" messages, into buf. */
static const char *describe(const yaml_event_t *ev, char *buf, size_t len)
{
    if (ev->type == YAML_MAPPING_START_EVENT)
        return "a mapping";
    if (ev->type == YAML_SEQUENCE_START_EVENT)
        return "a sequence";
    if (is_null(ev))
        return "null";
    snprintf(buf, len, "%s\"%.64s\"", is_plain(ev) ? "" : "the quoted string ", scalar(ev));
    return buf;
}

/* "expected WHAT, not THIS" at ev, then skip it. */
static int wrong_type(loader *ld, const yaml_event_t *ev, const char *what)
{
    char buf[96];
    error_here(ld, place_of(ev->start_mark), "expected %s, not %s", what, describe(ev, buf, sizeof buf));
    return skip_value(ld, ev);
}

/* ------------------------------------------------------------ mappings */

/* Called with the value of keys[index]; handles (reads or skips) it. The
 * caller deletes val. */
typedef int (*value_fn)(loader *ld, int index, place key_at, yaml_event_t *val, void *arg);

#define KEYS_MAX 8                    /* keys of any one mapping of ours */

static void list_keys(const char *const *keys, int n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", keys[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/*
 * The pairs of a mapping whose start event was read, up to its end:
 * unknown and duplicate keys are errors (and their values skipped), each
 * known one goes to fn with the path extended by the key. seen[i] tells
 * afterwards which keys were there.
 */
static int read_mapping(loader *ld, const char *const *keys, int nkeys, bool *seen,
                        value_fn fn, void *arg)
{
    place first[KEYS_MAX];
    for (int i = 0; i < nkeys; i++)
        seen[i] = false;
    for (;;) {
        yaml_event_t key, val;
        if (next(ld, &key) != 0)
            return -1;
        if (key.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key);
            return 0;
        }
        place key_at = place_of(key.start_mark);
        int index = -1;
        if (key.type != YAML_SCALAR_EVENT) {
            char buf[96];
            error_here(ld, key_at, "a key must be a string, not %s", describe(&key, buf, sizeof buf));
            int rc = skip_value(ld, &key);
            yaml_event_delete(&key);
            if (rc != 0)
                return -1;
        } else {
            for (int i = 0; i < nkeys && index < 0; i++)
                if (strcmp(keys[i], scalar(&key)) == 0)
                    index = i;
            size_t old = path_push_key(ld, scalar(&key));
            if (index < 0) {
                char names[160];
                list_keys(keys, nkeys, names, sizeof names);
                error_here(ld, key_at, "unknown key \"%.64s\" (expected %s)", scalar(&key), names);
            } else if (seen[index]) {
                error_here(ld, key_at, "duplicate key \"%s\" (first at line %d)", keys[index],
                           first[index].line);
                index = -1;
            } else {
                seen[index] = true;
                first[index] = key_at;
            }
            yaml_event_delete(&key);
            if (next(ld, &val) != 0)
                return -1;
            int rc = index < 0 ? skip_value(ld, &val) : fn(ld, index, key_at, &val, arg);
            yaml_event_delete(&val);
            path_pop(ld, old);
            if (rc != 0)
                return -1;
            continue;
        }
        /* A non-string key: skip its value too. */
        if (next(ld, &val) != 0)
            return -1;
        int rc = skip_value(ld, &val);
        yaml_event_delete(&val);
        if (rc != 0)
            return -1;
    }
}

FERRY_PRINTF(4, 5)
static void error_missing(loader *ld, place at, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_to(&ld->missing, ld->file, at, field, fmt, ap);
    va_end(ap);
}

/* Errors (deferred) for the required keys of a mapping at at that were
 * not there. */
static void require_keys(loader *ld, place at, const char *const *keys, const bool *required,
                         const bool *seen, int nkeys)
{
    for (int i = 0; i < nkeys; i++) {
        if (required[i] && !seen[i]) {
            size_t old = path_push_key(ld, keys[i]);
            error_missing(ld, at, ld->path, "missing: \"%s\" is required", keys[i]);
            path_pop(ld, old);
        }
    }
}

/* ------------------------------------------------------------ scalars */

/* A non-null scalar, copied into *out (replacing nothing: *out is NULL). */
static int get_string(loader *ld, yaml_event_t *ev, const char *what, char **out, bool *ok)
{
    *ok = false;
    if (ev->type != YAML_SCALAR_EVENT || is_null(ev))
        return wrong_type(ld, ev, what);
    *out = copy_string(ld, scalar(ev), ev->data.scalar.length);
    if (!*out)
        return -1;
    *ok = true;
    return 0;
}

/* Names of sagas and steps: [A-Za-z0-9._-]{1,FERRY_SAGA_NAME_MAX}. */
static void check_name(loader *ld, const yaml_event_t *ev, const char *name)
{
    size_t n = strlen(name);
    place at = place_of(ev->start_mark);
    if (n == 0 || n > FERRY_SAGA_NAME_MAX) {
        error_here(ld, at, "a name must have 1 to %d characters, not %zu", FERRY_SAGA_NAME_MAX, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            error_here(ld, at, "invalid name \"%.64s\": only letters, digits, \".\", \"_\" and "
                       "\"-\" are allowed", name);
            return;
        }
    }
}

/* A plain decimal integer in [min, max]: "0" or -?[1-9][0-9]*. */
static int get_int(loader *ld, yaml_event_t *ev, long min, long max, int *out, bool *ok)
{
    *ok = false;
    if (!is_plain(ev) || is_null(ev))
        return wrong_type(ld, ev, "an integer");
    const char *text = scalar(ev);
    place at = place_of(ev->start_mark);
    long v = 0;
    switch (ferry_parse_long(text, min, max, &v)) {
    case FERRY_INT_SYNTAX:
        error_here(ld, at, "expected an integer, not \"%.64s\"", text);
        return 0;
    case FERRY_INT_RANGE:
        error_here(ld, at, "must be between %ld and %ld, not %.64s", min, max, text);
        return 0;
    case FERRY_INT_OK:
        break;
    }
    *out = (int)v;
    *ok = true;
    return 0;
}

static bool plain_true(const char *v)
{
    return strcmp(v, "true") == 0 || strcmp(v, "True") == 0 || strcmp(v, "TRUE") == 0;
}

static bool plain_false(const char *v)
{
    return strcmp(v, "false") == 0 || strcmp(v, "False") == 0 || strcmp(v, "FALSE") == 0;
}

static int get_bool(loader *ld, yaml_event_t *ev, int *out, bool *ok)
{
    *ok = false;
    if (is_plain(ev) && plain_true(scalar(ev)))
        *out = 1;
    else if (is_plain(ev) && plain_false(scalar(ev)))
        *out = 0;
    else
        return wrong_type(ld, ev, "true or false");
    *ok = true;
    return 0;
}

/* "1h30m", "1500ms", "1d2h3m4s5ms": into buf. */
static const char *format_duration(int64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
    size_t used = 0;
    buf[0] = '\0';
    if (ms == 0)
        snprintf(buf, len, "0s");
    for (size_t i = 0; i < sizeof units / sizeof units[0] && ms > 0 && used < len; i++) {
        if (ms < units[i].ms)
            continue;
        int w = snprintf(buf + used, len - used, "%lld%s", (long long)(ms / units[i].ms),
                         units[i].unit);
        if (w < 0)
            break;
        used += (size_t)w;
        ms %= units[i].ms;
    }
    return buf;
}

/*
 * Parse a duration: a plain integer (milliseconds) or one or more
 * NUMBER UNIT terms, units ms, s, m, h, d. Returns NULL, or why not.
 */
static const char *parse_duration(const char *text, bool plain, int64_t *out)
{
    const char *p = text;
    int64_t total = 0;
    bool any = false;
    if (*p == '-')
        return "must not be negative";
    if (plain && *p && strspn(p, "0123456789") == strlen(p)) {
        if (strlen(p) > 15)
            return "is longer than 366 days";
        *out = strtoll(p, NULL, 10);
        return *out > FERRY_SAGA_TIMEOUT_MAX_MS ? "is longer than 366 days" : NULL;
    }
    while (*p) {
        size_t digits = strspn(p, "0123456789");
        if (digits == 0)
            return "is not a duration";
        if (digits > 15)
            return "is longer than 366 days";
        int64_t n = 0;
        for (size_t i = 0; i < digits; i++)
            n = n * 10 + (p[i] - '0');
        p += digits;
        int64_t unit;
        if (strncmp(p, "ms", 2) == 0)
            unit = 1, p += 2;
        else if (*p == 's')
            unit = 1000, p++;
        else if (*p == 'm')
            unit = 60000, p++;
        else if (*p == 'h')
            unit = 3600000, p++;
        else if (*p == 'd')
            unit = 86400000, p++;
        else if (*p == '.')
            return "fractions are not supported (write 1500ms, not 1.5s)";
        else if (*p == '\0')
            return "needs a unit (ms, s, m, h or d), or no quotes for milliseconds";
        else
            return "is not a duration";
        if (n > FERRY_SAGA_TIMEOUT_MAX_MS / unit)
            return "is longer than 366 days";
        total += n * unit;
        if (total > FERRY_SAGA_TIMEOUT_MAX_MS)
            return "is longer than 366 days";
        any = true;
    }
    if (!any)
        return "is not a duration";
    *out = total;
    return NULL;
}

/* A duration, > 0 unless allow_zero. */
static int get_duration(loader *ld, yaml_event_t *ev, bool allow_zero, int64_t *out, bool *ok)
{
    *ok = false;
    if (ev->type != YAML_SCALAR_EVENT || is_null(ev))
        return wrong_type(ld, ev, "a duration such as \"30s\", \"5m\" or \"1h30m\"");
    int64_t ms = 0;
    const char *why = parse_duration(scalar(ev), is_plain(ev), &ms);
    place at = place_of(ev->start_mark);
    if (why && strcmp(why, "is not a duration") == 0)
        error_here(ld, at, "\"%.64s\" is not a duration: expected a number and a unit (ms, s, m, "
                   "h, d) such as \"30s\", \"5m\" or \"1h30m\", or an integer of milliseconds",
                   scalar(ev));
    else if (why)
        error_here(ld, at, "\"%.64s\" %s", scalar(ev), why);
    else if (ms == 0 && !allow_zero)
        error_here(ld, at, "must be positive, not \"%.64s\"", scalar(ev));
    else {
        *out = ms;
        *ok = true;
    }
    return 0;
}

/* ------------------------------------------------------------ payloads */

/* "${context.PATH}" and nothing else, PATH of [A-Za-z0-9_-] segments. */
static bool valid_template(const char *s)
{
    static const char head[] = "${context.";
    size_t n = strlen(s);
    if (strncmp(s, head, sizeof head - 1) != 0 || n < sizeof head || s[n - 1] != '}')
        return false;
    bool segment = false;
    for (size_t i = sizeof head - 1; i < n - 1; i++) {
        char c = s[i];
        if (c == '.') {
            if (!segment)
                return false;
            segment = false;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '-') {
            segment = true;
        } else {
            return false;
        }
    }
    return segment;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? with a '.' or an e. */
static bool is_float(const char *s)
{
    const char *p = s + (*s == '-' || *s == '+');
    size_t lead = strspn(p, "0123456789");
    bool frac = false;
    p += lead;
    if (*p == '.') {
        size_t f = strspn(p + 1, "0123456789");
        if (lead == 0 && f == 0)
            return false;
        p += 1 + f;
        frac = true;
    } else if (lead == 0) {
        return false;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        p += (*p == '-' || *p == '+');
        size_t e = strspn(p, "0123456789");
        if (e == 0)
            return false;
        p += e;
        frac = true;
    }
    return *p == '\0' && frac;
}

/* A scalar as JSON: *out NULL after an error. */
static int json_scalar(loader *ld, const yaml_event_t *ev, json_t **out)
{
    const char *v = scalar(ev);
    size_t len = ev->data.scalar.length;
    place at = place_of(ev->start_mark);
    *out = NULL;
    if (is_plain(ev)) {
        const char *digits = v + (*v == '-' || *v == '+');
        size_t nd = strspn(digits, "0123456789");
        if (is_null(ev)) {
            *out = json_null();
            return 0;
        }
        if (plain_true(v) || plain_false(v)) {
            *out = json_boolean(plain_true(v));
            return 0;
        }
        if (nd > 0 && digits[nd] == '\0') {
            if (digits[0] == '0' && nd > 1) {
                error_here(ld, at, "ambiguous number \"%.64s\": quote it to keep a string, or "
                           "drop the leading zeros", v);
                return 0;
            }
            errno = 0;
            long long n = strtoll(v, NULL, 10);
            if (errno == ERANGE) {
                error_here(ld, at, "integer %.64s is out of range (quote it to keep a string)", v);
                return 0;
            }
            *out = json_integer(n);
            return *out ? 0 : out_of_memory(ld);
        }
        if (is_float(v)) {
            double d = strtod(v, NULL);
            if (!isfinite(d)) {
                error_here(ld, at, "number %.64s is out of range", v);
                return 0;
            }
            *out = json_real(d);
            return *out ? 0 : out_of_memory(ld);
        }
        if (digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'o') && digits[2] &&
            strspn(digits + 2, "0123456789abcdefABCDEF") == strlen(digits + 2)) {
            error_here(ld, at, "ambiguous number \"%.64s\": quote it to keep a string, or write "
                       "it in decimal", v);
            return 0;
        }
        if (strcasecmp(v, ".inf") == 0 || strcasecmp(v, "-.inf") == 0 ||
            strcasecmp(v, "+.inf") == 0 || strcasecmp(v, ".nan") == 0) {
            error_here(ld, at, "%s has no JSON value (quote it to keep a string)", v);
            return 0;
        }
    }
    if (strstr(v, "${") && !valid_template(v)) {
        error_here(ld, at, "\"%.64s\" is not a template: a template is a whole string "
                   "\"${context.PATH}\", PATH being names separated by dots", v);
        return 0;
    }
    *out = json_stringn(v, len);
    return *out ? 0 : out_of_memory(ld);
}

/*
 * Any YAML value as JSON, its first event in ev (deleted by the caller).
 * *out is NULL after an error in it (recorded) or when the walk stopped.
 */
static int read_json(loader *ld, yaml_event_t *ev, json_t **out)
{
    *out = NULL;
    if (ev->type == YAML_SCALAR_EVENT)
        return json_scalar(ld, ev, out);

    bool mapping = ev->type == YAML_MAPPING_START_EVENT;
    json_t *c = mapping ? json_object() : json_array();
    bool bad = false;
    if (!c)
        return out_of_memory(ld);
    for (size_t i = 0;; i++) {
        yaml_event_t item, val;
        if (next(ld, &item) != 0)
            goto out_fatal;
        if (item.type == YAML_MAPPING_END_EVENT || item.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&item);
            break;
        }
        json_t *v = NULL;
        int rc;
        if (!mapping) {
            size_t old = path_push_index(ld, i);
            rc = read_json(ld, &item, &v);
            yaml_event_delete(&item);
            path_pop(ld, old);
            if (rc != 0)
                goto out_fatal;
            if (!v)
                bad = true;
            else if (json_array_append_new(c, v) != 0) {
                out_of_memory(ld);
                goto out_fatal;
            }
            continue;
        }
        if (item.type != YAML_SCALAR_EVENT) {
            char buf[96];
            error_here(ld, place_of(item.start_mark), "a key must be a string, not %s",
                       describe(&item, buf, sizeof buf));
            bad = true;
            rc = skip_value(ld, &item);
            yaml_event_delete(&item);
            if (rc != 0 || next(ld, &val) != 0)
                goto out_fatal;
            rc = skip_value(ld, &val);
            yaml_event_delete(&val);
            if (rc != 0)
                goto out_fatal;
            continue;
        }
        size_t old = path_push_key(ld, scalar(&item));
        bool dup = json_object_get(c, scalar(&item)) != NULL;
        if (dup) {
            error_here(ld, place_of(item.start_mark), "duplicate key \"%.64s\"", scalar(&item));
            bad = true;
        }
        if (next(ld, &val) != 0) {
            yaml_event_delete(&item);
            goto out_fatal;
        }
        rc = dup ? skip_value(ld, &val) : read_json(ld, &val, &v);
        yaml_event_delete(&val);
        path_pop(ld, old);
        if (rc == 0 && v && json_object_set_new(c, scalar(&item), v) != 0)
            rc = out_of_memory(ld);
        yaml_event_delete(&item);
        if (rc != 0)
            goto out_fatal;
        if (!dup && !v)
            bad = true;
    }
    if (bad) {
        json_decref(c);
        return 0;
    }
    *out = c;
    return 0;

out_fatal:
    json_decref(c);
    return -1;
}

/* ------------------------------------------------------------ commands */

static const char *const command_keys[] = {"type", "payload"};
enum { CMD_TYPE, CMD_PAYLOAD, N_CMD_KEYS };
static const bool command_required[N_CMD_KEYS] = {[CMD_TYPE] = true};

static int command_value(loader *ld, int index, place key_at, yaml_event_t *val, void *arg)
{
    ferry_saga_command *cmd = arg;
    if (index == CMD_PAYLOAD) {
        json_t *payload = NULL;
        if (read_json(ld, val, &payload) != 0)
            return -1;
        cmd->payload = payload;
        return 0;
    }
    bool ok;
    if (get_string(ld, val, "an event type", &cmd->type, &ok) != 0 || !ok)
        return ld->fatal ? -1 : 0;
    /* The type becomes the message's type: check it as ferry_emit will. */
    ferry_msg msg = {.topic = "t", .key = "k", .type = cmd->type, .payload = "null"};
    ferry_error err;
    if (ferry_msg_check(&msg, NULL, &err) == FERRY_OK)
        return 0;
    if (strcmp(err.field, "type") != 0)
        return out_of_memory(ld);     /* parsing the payload "null" can only fail so */
    error_here(ld, place_of(val->start_mark), "%s", err.message);
    return 0;
}

/* action: or compensation: — a mapping of type and payload (default {}). */
static int read_command(loader *ld, yaml_event_t *ev, ferry_saga_command *cmd, bool *ok)
{
    *ok = false;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return wrong_type(ld, ev, "a command (a mapping with type and payload)");
    bool seen[N_CMD_KEYS];
    size_t before = ld->errs->total;
    if (read_mapping(ld, command_keys, N_CMD_KEYS, seen, command_value, cmd) != 0)
        return -1;
    require_keys(ld, place_of(ev->start_mark), command_keys, command_required, seen, N_CMD_KEYS);
    if (!seen[CMD_PAYLOAD]) {
        cmd->payload = json_object();
        if (!cmd->payload)
            return out_of_memory(ld);
    }
    *ok = ld->errs->total == before;
    return 0;
}

/* ------------------------------------------------------------ retry */

static const char *const retry_keys[] = {"attempts", "backoff", "max_backoff"};
enum { RETRY_ATTEMPTS, RETRY_BACKOFF, RETRY_MAX_BACKOFF, N_RETRY_KEYS };

typedef struct step_ctx {
    size_t index;
    ferry_saga_step_def *step;
    step_places *sp;
} step_ctx;

static int retry_value(loader *ld, int index, place key_at, yaml_event_t *val, void *arg)
{
    step_ctx *sc = arg;
    ferry_saga_retry *r = &sc->step->retry;
    bool ok;
    int rc;
    place at = place_of(val->start_mark);
    switch (index) {
    case RETRY_ATTEMPTS:
        sc->sp->attempts = at;
        rc = get_int(ld, val, 1, FERRY_SAGA_ATTEMPTS_MAX, &r->attempts, &ok);
        break;
    case RETRY_BACKOFF:
        sc->sp->backoff = at;
        rc = get_duration(ld, val, true, &r->backoff_ms, &ok);
        sc->sp->backoff_given = ok;
        break;
    default:
        sc->sp->max_backoff = at;
        rc = get_duration(ld, val, true, &r->max_backoff_ms, &ok);
        sc->sp->max_backoff_given = ok;
        break;
    }
    if (rc == 0 && !ok)
        sc->sp->retry_ok = false;
    return rc;
}

static int read_retry(loader *ld, yaml_event_t *ev, step_ctx *sc)
{
    if (is_null(ev))
        return 0;
    if (ev->type != YAML_MAPPING_START_EVENT) {
        sc->sp->retry_ok = false;
        return wrong_type(ld, ev, "a retry policy (a mapping with attempts, backoff, max_backoff)");
    }
    bool seen[N_RETRY_KEYS];
    return read_mapping(ld, retry_keys, N_RETRY_KEYS, seen, retry_value, sc);
}

/* ------------------------------------------------------------ steps */

static const char *const step_keys[] = {"name", "topic", "action", "compensation",
                                        "timeout", "retry", "pivot"};
enum { STEP_NAME, STEP_TOPIC, STEP_ACTION, STEP_COMPENSATION, STEP_TIMEOUT, STEP_RETRY,
       STEP_PIVOT, N_STEP_KEYS };
static const bool step_required[N_STEP_KEYS] = {
    [STEP_NAME] = true, [STEP_TOPIC] = true, [STEP_ACTION] = true, [STEP_TIMEOUT] = true,
};

/* Kafka's rules for a topic name, as ferry_emit() applies them. */
static int check_topic(loader *ld, const yaml_event_t *ev, const char *topic)
{
    ferry_msg msg = {.topic = topic, .key = "k", .type = "t", .payload = "null"};
    ferry_error err;
    if (ferry_msg_check(&msg, NULL, &err) == FERRY_OK)
        return 0;
    if (strcmp(err.field, "topic") != 0)
        return out_of_memory(ld);     /* parsing the payload "null" can only fail so */
    error_here(ld, place_of(ev->start_mark), "%s", err.message);
    return 0;
}

static int step_value(loader *ld, int index, place key_at, yaml_event_t *val, void *arg)
{
    step_ctx *sc = arg;
    ferry_saga_step_def *s = sc->step;
    ferry_saga_def *def = ld->def;
    place at = place_of(val->start_mark);
    bool ok;
    int rc = 0;
    switch (index) {
    case STEP_NAME:
        sc->sp->name = at;
        rc = get_string(ld, val, "a step name", &s->name, &ok);
        if (rc != 0 || !ok)
            break;
        check_name(ld, val, s->name);
        for (size_t i = 0; i < sc->index; i++) {
            if (def->steps[i].name && strcmp(def->steps[i].name, s->name) == 0) {
                error_here(ld, at, "duplicate step name \"%.64s\" (steps[%zu] at line %d)",
                           s->name, i, ld->sp[i].name.line);
                break;
            }
        }
        break;
    case STEP_TOPIC:
        rc = get_string(ld, val, "a topic name", &s->topic, &ok);
        if (rc == 0 && ok)
            rc = check_topic(ld, val, s->topic);
        break;
    case STEP_ACTION:
        rc = read_command(ld, val, &s->action, &ok);
        break;
    case STEP_COMPENSATION:
        if (is_null(val))             /* "none", said explicitly */
            break;
        sc->sp->compensation_given = true;
        sc->sp->compensation = key_at;
        rc = read_command(ld, val, &s->compensation, &ok);
        s->has_compensation = rc == 0 && ok;
        break;
    case STEP_TIMEOUT:
        sc->sp->timeout = at;
        rc = get_duration(ld, val, false, &s->timeout_ms, &sc->sp->timeout_ok);
        break;
    case STEP_RETRY:
        sc->sp->retry = key_at;
        rc = read_retry(ld, val, sc);
        break;
    case STEP_PIVOT:
        rc = get_bool(ld, val, &s->pivot, &ok);
        if (rc != 0 || !ok || !s->pivot)
            break;
        if (def->pivot_index >= 0) {
            error_here(ld, at, "a second pivot: steps[%d] at line %d is the pivot already; a saga "
                       "has at most one", def->pivot_index, ld->sp[def->pivot_index].at.line);
            s->pivot = 0;
        } else {
            def->pivot_index = (int)sc->index;
        }
        break;
    }
    return rc;
}

static int read_step(loader *ld, yaml_event_t *ev, size_t index)
{
    step_ctx sc = {index, &ld->def->steps[index], &ld->sp[index]};
    sc.sp->at = place_of(ev->start_mark);
    sc.sp->retry_ok = true;
    sc.step->retry.attempts = 1;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return wrong_type(ld, ev, "a step (a mapping with name, topic, action, compensation, "
                          "timeout, ...)");
    sc.sp->is_mapping = true;
    bool seen[N_STEP_KEYS];
    if (read_mapping(ld, step_keys, N_STEP_KEYS, seen, step_value, &sc) != 0)
        return -1;
    require_keys(ld, sc.sp->at, step_keys, step_required, seen, N_STEP_KEYS);
    return 0;
}

static int read_steps(loader *ld, yaml_event_t *ev)
{
    if (ev->type != YAML_SEQUENCE_START_EVENT)
        return wrong_type(ld, ev, "a sequence of steps");
    ferry_saga_def *def = ld->def;
    for (;;) {
        yaml_event_t item;
        if (next(ld, &item) != 0)
            return -1;
        if (item.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&item);
            break;
        }
        if (def->step_count == FERRY_SAGA_STEPS_MAX) {
            /* Say so once and read no further steps. */
            error_here(ld, place_of(item.start_mark), "more than %d steps", FERRY_SAGA_STEPS_MAX);
            int rc = skip_value(ld, &item);
            yaml_event_delete(&item);
            if (rc != 0)
                return -1;
            unsigned level = ld->depth - 1;
            while (ld->depth > level) {
                if (next(ld, &item) != 0)
                    return -1;
                yaml_event_delete(&item);
            }
            return 0;
        }
        size_t old = path_push_index(ld, def->step_count);
        def->step_count++;            /* counted now: freed with the def on error */
        int rc = read_step(ld, &item, def->step_count - 1);
        yaml_event_delete(&item);
        path_pop(ld, old);
        if (rc != 0)
            return -1;
    }
    if (def->step_count == 0)
        error_here(ld, place_of(ev->start_mark), "a saga needs at least one step");
    return 0;
}

/* ------------------------------------------------------------ the document */

static const char *const saga_keys[] = {"saga", "version", "deadline", "steps"};
enum { SAGA_NAME, SAGA_VERSION, SAGA_DEADLINE, SAGA_STEPS, N_SAGA_KEYS };
_Static_assert(N_SAGA_KEYS <= KEYS_MAX && N_STEP_KEYS <= KEYS_MAX && N_RETRY_KEYS <= KEYS_MAX &&
               N_CMD_KEYS <= KEYS_MAX, "read_mapping's table");
static const bool saga_required[N_SAGA_KEYS] = {true, true, true, true};

static int saga_value(loader *ld, int index, place key_at, yaml_event_t *val, void *arg)
{
    ferry_saga_def *def = ld->def;
    bool ok;
    switch (index) {
    case SAGA_NAME: {
        int rc = get_string(ld, val, "a saga name", &def->name, &ok);
        if (rc == 0 && ok)
            check_name(ld, val, def->name);
        return rc;
    }
    case SAGA_VERSION:
        return get_int(ld, val, 1, INT_MAX, &def->version, &ok);
    case SAGA_DEADLINE:
        ld->deadline_at = place_of(val->start_mark);
        return get_duration(ld, val, false, &def->deadline_ms, &ld->deadline_ok);
    default:
        return read_steps(ld, val);
    }
}

static int read_document(loader *ld)
{
    yaml_event_t ev;
    if (next(ld, &ev) != 0)                   /* STREAM-START */
        return -1;
    yaml_event_delete(&ev);
    if (next(ld, &ev) != 0)
        return -1;
    if (ev.type == YAML_STREAM_END_EVENT) {   /* empty, or comments only */
        error_field(ld, place_of(ev.start_mark), "", "empty document: expected a saga "
                    "definition (a mapping with saga, version, deadline and steps)");
        yaml_event_delete(&ev);
        return -1;
    }
    yaml_event_delete(&ev);                   /* DOCUMENT-START */

    if (next(ld, &ev) != 0)
        return -1;
    if (ev.type != YAML_MAPPING_START_EVENT) {
        error_field(ld, place_of(ev.start_mark), "", "expected a saga definition (a mapping with "
                    "saga, version, deadline and steps) at the top");
        int rc = skip_value(ld, &ev);
        yaml_event_delete(&ev);
        if (rc != 0)
            return -1;
        ld->fatal = true;                     /* nothing more to check */
    } else {
        bool seen[N_SAGA_KEYS];
        place at = place_of(ev.start_mark);
        yaml_event_delete(&ev);
        if (read_mapping(ld, saga_keys, N_SAGA_KEYS, seen, saga_value, NULL) != 0)
            return -1;
        require_keys(ld, at, saga_keys, saga_required, seen, N_SAGA_KEYS);
    }

    if (next(ld, &ev) != 0)                   /* DOCUMENT-END */
        return -1;
    yaml_event_delete(&ev);
    if (next(ld, &ev) != 0)
        return -1;
    if (ev.type != YAML_STREAM_END_EVENT) {
        error_field(ld, place_of(ev.start_mark), "", "a second YAML document; a file holds one "
                    "saga definition");
        yaml_event_delete(&ev);
        ld->fatal = true;
        return -1;
    }
    yaml_event_delete(&ev);
    return 0;
}

/* ------------------------------------------------------------ checks across fields */

/* The longest one step can take: every send timing out, every backoff. */
static int64_t step_budget(const ferry_saga_step_def *s, int64_t *backoffs)
{
    int64_t wait = s->retry.backoff_ms, total = 0;
    for (int k = 1; k < s->retry.attempts; k++) {
        total += wait < s->retry.max_backoff_ms ? wait : s->retry.max_backoff_ms;
        if (wait < FERRY_SAGA_TIMEOUT_MAX_MS)
            wait *= 2;
    }
    *backoffs = total;
    return s->timeout_ms * s->retry.attempts + total;
}

static void check_steps(loader *ld)
{
    ferry_saga_def *def = ld->def;
    char field[64];
    for (size_t i = 0; i < def->step_count; i++) {
        ferry_saga_step_def *s = &def->steps[i];
        step_places *sp = &ld->sp[i];
        bool before_pivot = def->pivot_index < 0 || (int)i < def->pivot_index;
        if (!sp->is_mapping)
            continue;

        snprintf(field, sizeof field, "steps[%zu].compensation", i);
        if (before_pivot && !sp->compensation_given)
            error_field(ld, sp->at, field, "missing: %s",
                        def->pivot_index < 0
                            ? "every step needs a compensation when the saga has no pivot"
                            : "every step before the pivot needs a compensation");
        if (def->pivot_index >= 0 && (int)i > def->pivot_index && sp->compensation_given)
            error_field(ld, sp->compensation, field, "a step after the pivot (steps[%d]) is never "
                        "compensated: remove the compensation", def->pivot_index);

        if (!sp->retry_ok)
            continue;
        if (!sp->max_backoff_given)
            s->retry.max_backoff_ms = ld->deadline_ok ? def->deadline_ms : FERRY_SAGA_TIMEOUT_MAX_MS;
        else if (sp->backoff_given && s->retry.backoff_ms > s->retry.max_backoff_ms) {
            char a[32], b[32];
            snprintf(field, sizeof field, "steps[%zu].retry.max_backoff", i);
            error_field(ld, sp->max_backoff, field, "max_backoff %s is shorter than backoff %s",
                        format_duration(s->retry.max_backoff_ms, a, sizeof a),
                        format_duration(s->retry.backoff_ms, b, sizeof b));
            continue;
        }
        if (!sp->timeout_ok || !ld->deadline_ok)
            continue;
        int64_t backoffs, budget = step_budget(s, &backoffs);
        if (budget > def->deadline_ms) {
            char t[32], bo[48], all[32], dl[32], how[160];
            snprintf(field, sizeof field, "steps[%zu].timeout", i);
            if (s->retry.attempts == 1)
                snprintf(how, sizeof how, "timeout %s",
                         format_duration(s->timeout_ms, t, sizeof t));
            else
                snprintf(how, sizeof how, "timeout %s x %d attempts%s%s = %s",
                         format_duration(s->timeout_ms, t, sizeof t), s->retry.attempts,
                         backoffs ? " + backoff " : "",
                         backoffs ? format_duration(backoffs, bo, sizeof bo) : "",
                         format_duration(budget, all, sizeof all));
            error_field(ld, sp->timeout, field, "%s is longer than the saga's deadline of %s "
                        "(line %d)", how, format_duration(def->deadline_ms, dl, sizeof dl),
                        ld->deadline_at.line);
        }
    }
}

/* Errors in document order (stable: equal places keep their order). */
static void sort_errors(ferry_saga_load_errors *e)
{
    for (size_t i = 1; i < e->count; i++) {
        ferry_saga_load_error x = e->errors[i];
        size_t j = i;
        while (j > 0 && (e->errors[j - 1].line > x.line ||
                         (e->errors[j - 1].line == x.line && e->errors[j - 1].column > x.column))) {
            e->errors[j] = e->errors[j - 1];
            j--;
        }
        e->errors[j] = x;
    }
}

static void fnv1a_hex(const unsigned char *p, size_t n, char out[17])
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ------------------------------------------------------------ entry points */

static ferry_code parse(const char *yaml, size_t len, const char *name, ferry_saga_def **out,
                        ferry_saga_load_errors *errs)
{
    if (len > FERRY_SAGA_FILE_MAX) {
        loader small = {.file = name, .errs = errs};
        error_field(&small, (place){0, 0}, "", "the document is larger than %d bytes; refusing "
                    "to read it", FERRY_SAGA_FILE_MAX);
        return FERRY_EINVAL;
    }
    /* Large (a place per possible step): not on the stack. */
    loader *ld = ferry_saga_malloc_(sizeof *ld);
    if (!ld) {
        loader small = {.file = name, .errs = errs};
        out_of_memory(&small);
        return FERRY_ENOMEM;
    }
    memset(ld, 0, sizeof *ld);
    ld->text = (const unsigned char *)yaml;
    ld->len = len;
    ld->file = name;
    ld->errs = errs;
    ferry_code rc = FERRY_ENOMEM;

    ferry_saga_def *def = ferry_saga_malloc_(sizeof *def);
    ferry_saga_step_def *steps = ferry_saga_malloc_(FERRY_SAGA_STEPS_MAX * sizeof *steps);
    if (!def || !steps) {
        free(def);
        free(steps);
        out_of_memory(ld);
        goto out_free_loader;
    }
    memset(def, 0, sizeof *def);
    memset(steps, 0, FERRY_SAGA_STEPS_MAX * sizeof *steps);
    def->steps = steps;
    def->pivot_index = -1;
    ld->def = def;
    def->file = copy_string(ld, name, strlen(name));
    if (!def->file)
        goto out_free_def;

    if (!yaml_parser_initialize(&ld->parser)) {
        out_of_memory(ld);
        goto out_free_def;
    }
    yaml_parser_set_input_string(&ld->parser, ld->text, ld->len);
    read_document(ld);
    yaml_parser_delete(&ld->parser);
    if (!ld->fatal) {
        for (size_t i = 0; i < ld->missing.count; i++) {
            const ferry_saga_load_error *m = &ld->missing.errors[i];
            error_field(ld, (place){m->line, m->column}, m->field, "%s", m->message);
        }
        errs->total += ld->missing.total - ld->missing.count;
        check_steps(ld);
    }
    if (ld->oom)
        goto out_free_def;
    if (errs->total > 0) {
        rc = FERRY_EINVAL;
        goto out_free_def;
    }
    fnv1a_hex(ld->text, ld->len, def->hash);
    *out = def;
    rc = FERRY_OK;
    goto out_free_loader;

out_free_def:
    ferry_saga_def_free(def);
out_free_loader:
    free(ld);
    return rc;
}

ferry_code ferry_saga_def_parse(const char *yaml, size_t len, const char *name,
                                ferry_saga_def **out, ferry_saga_load_errors *errs)
{
    ferry_saga_load_errors local;
    if (!errs)
        errs = &local;
    memset(errs, 0, sizeof *errs);
    if (!name)
        name = "<memory>";
    if (!yaml || !out) {
        loader small = {.file = name, .errs = errs};
        error_field(&small, (place){0, 0}, "", "%s is NULL", yaml ? "out" : "yaml");
        return FERRY_EINVAL;
    }
    ferry_code rc = parse(yaml, len, name, out, errs);
    sort_errors(errs);
    return rc;
}

ferry_code ferry_saga_def_load(const char *path, ferry_saga_def **out,
                               ferry_saga_load_errors *errs)
{
    ferry_saga_load_errors local;
    if (!errs)
        errs = &local;
    memset(errs, 0, sizeof *errs);
    loader small = {.file = path ? path : "(null)", .errs = errs};
    if (!path || !out) {
        error_field(&small, (place){0, 0}, "", "%s is NULL", path ? "out" : "path");
        return FERRY_EINVAL;
    }

    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_field(&small, (place){0, 0}, "", "could not open the saga definition: %s",
                    strerror_r(errno, ebuf, sizeof ebuf));
        return FERRY_EINVAL;
    }
    /* One byte more than the limit tells a full file from a longer one;
     * read, not fstat, so that pipes are capped as well. */
    char *buf = ferry_saga_malloc_((size_t)FERRY_SAGA_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        out_of_memory(&small);
        return FERRY_ENOMEM;
    }
    size_t used = 0;
    ferry_code rc;
    struct stat st;
    bool too_big = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > FERRY_SAGA_FILE_MAX;
    while (!too_big && used <= FERRY_SAGA_FILE_MAX) {
        ssize_t n = read(fd, buf + used, (size_t)FERRY_SAGA_FILE_MAX + 1 - used);
        if (n == 0)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            error_field(&small, (place){0, 0}, "", "could not read the saga definition: %s",
                        strerror_r(errno, ebuf, sizeof ebuf));
            rc = FERRY_EINVAL;
            goto out;
        }
        used += (size_t)n;
    }
    if (too_big || used > FERRY_SAGA_FILE_MAX) {
        error_field(&small, (place){0, 0}, "", "the document is larger than %d bytes; refusing "
                    "to read it", FERRY_SAGA_FILE_MAX);
        rc = FERRY_EINVAL;
        goto out;
    }
    rc = ferry_saga_def_parse(buf, used, path, out, errs);
out:
    free(buf);
    close(fd);
    return rc;
}
