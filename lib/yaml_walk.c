/*
 * yaml_walk.c — a checked walk over libyaml's event stream (yaml_walk.h),
 * the part of the saga definition loader that any YAML file of ours needs:
 * places and field paths, error collection, the event reader with its
 * refusals (syntax errors, anchors and aliases, depth), mappings with
 * known keys, and the scalars (strings, strict integers, durations).
 *
 * Why our own reader over libyaml's events rather than libcyaml:
 * saga_def.c says it (every error with its place, values that are either
 * strings or integers, strict integers).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "saga_def_hook.h"
#include "yaml_walk.h"

_Static_assert(FERRY_YW_DEPTH_MAX >= 8, "payloads need some nesting");
_Static_assert(FERRY_YW_DURATION_MAX_MS < INT64_MAX / 1000, "durations cannot overflow");

void *(*ferry__saga_malloc_)(size_t size) = malloc;

typedef ferry__yw_place place;

/* ------------------------------------------------------------ places and errors */

place ferry__yw_place_of(yaml_mark_t m)
{
    return (place){(int)m.line + 1, (int)m.column + 1};
}

FERRY_PRINTF(5, 0)
static void add_error_v(ferry_saga_load_errors *e, const char *file, place at,
                        const char *field, const char *fmt, va_list ap)
{
    e->total++;
    if (e->count == FERRY_SAGA_ERRORS_MAX)
        return;
    ferry_saga_load_error *x = &e->errors[e->count++];
    /* Messages and field paths quote the document (keys, values), and
     * lint prints them on terminals: control characters and what is not
     * UTF-8 are escaped, in the file name too. */
    char text[sizeof x->message];
    ferry__escape_text(x->file, sizeof x->file, file);
    x->line = at.line;
    x->column = at.column;
    ferry__escape_text(x->field, sizeof x->field, field ? field : "");
    vsnprintf(text, sizeof text, fmt, ap);
    ferry__escape_text(x->message, sizeof x->message, text);
}

void ferry__yw_add_error(ferry_saga_load_errors *e, const char *file, place at,
                        const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(e, file, at, field, fmt, ap);
    va_end(ap);
}

void ferry__yw_error_at(ferry__yw *w, place at, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(w->errs, w->file, at, field, fmt, ap);
    va_end(ap);
}

void ferry__yw_error(ferry__yw *w, place at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(w->errs, w->file, at, w->path, fmt, ap);
    va_end(ap);
}

int ferry__yw_oom(ferry__yw *w)
{
    if (!w->oom)
        ferry__yw_error_at(w, (place){0, 0}, "", "out of memory loading %s", w->what);
    w->oom = true;
    w->fatal = true;
    return -1;
}

size_t ferry__yw_push_key(ferry__yw *w, const char *key)
{
    size_t old = strlen(w->path);
    snprintf(w->path + old, sizeof w->path - old, "%s%s", old ? "." : "", key);
    return old;
}

size_t ferry__yw_push_index(ferry__yw *w, size_t i)
{
    size_t old = strlen(w->path);
    snprintf(w->path + old, sizeof w->path - old, "[%zu]", i);
    return old;
}

void ferry__yw_pop(ferry__yw *w, size_t old)
{
    w->path[old] = '\0';
}

void ferry__yw_sort_errors(ferry_saga_load_errors *e)
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

/* ------------------------------------------------------------ memory */

void *ferry__yw_malloc(ferry__yw *w, size_t n)
{
    void *p = ferry__saga_malloc_(n);
    if (!p)
        ferry__yw_oom(w);
    return p;
}

char *ferry__yw_strndup(ferry__yw *w, const char *s, size_t n)
{
    char *c = ferry__yw_malloc(w, n + 1);
    if (!c)
        return NULL;
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

/* ------------------------------------------------------------ events */

void ferry__yw_init(ferry__yw *w, const char *text, size_t len, const char *file,
                   const char *what, ferry_saga_load_errors *errs)
{
    memset(w, 0, sizeof *w);
    w->text = (const unsigned char *)text;
    w->len = len;
    w->file = file;
    w->what = what;
    w->errs = errs;
}

static int syntax_error(ferry__yw *w)
{
    const yaml_parser_t *p = &w->parser;
    w->fatal = true;
    if (p->error == YAML_MEMORY_ERROR)
        return ferry__yw_oom(w);
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_READER_ERROR) {
        /* The reader knows a byte offset only. */
        place at = {1, 1};
        for (size_t i = 0; i < p->problem_offset && i < w->len; i++) {
            if (w->text[i] == '\n') {
                at.line++;
                at.column = 1;
            } else if ((w->text[i] & 0xc0) != 0x80) {
                at.column++;
            }
        }
        if (p->problem_value != -1)
            ferry__yw_error_at(w, at, "", "invalid YAML: %s (byte 0x%02x)", problem,
                              (unsigned)p->problem_value & 0xffu);
        else
            ferry__yw_error_at(w, at, "", "invalid YAML: %s", problem);
    } else if (p->context) {
        place ctx = ferry__yw_place_of(p->context_mark);
        ferry__yw_error_at(w, ferry__yw_place_of(p->problem_mark), "",
                          "invalid YAML: %s (%s at line %d, column %d)", problem, p->context,
                          ctx.line, ctx.column);
    } else {
        ferry__yw_error_at(w, ferry__yw_place_of(p->problem_mark), "", "invalid YAML: %s", problem);
    }
    return -1;
}

int ferry__yw_next(ferry__yw *w, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&w->parser, ev))
        return syntax_error(w);
    const yaml_char_t *anchor = NULL, *tag = NULL;
    place at = ferry__yw_place_of(ev->start_mark);
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        ferry__yw_error(w, at, "aliases are not allowed (*%.64s): anchors and aliases are refused "
                       "so that no document can expand beyond its size", ev->data.alias.anchor);
        yaml_event_delete(ev);
        w->fatal = true;
        return -1;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        /* A double-quoted "\0" would cut every string we copy short. */
        if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
            ferry__yw_error(w, at, "a value contains a NUL character");
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
        if (++w->depth > FERRY_YW_DEPTH_MAX) {
            ferry__yw_error(w, at, "nested more than %d levels deep", FERRY_YW_DEPTH_MAX);
            yaml_event_delete(ev);
            w->fatal = true;
            return -1;
        }
        break;
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        w->depth--;
        break;
    default:
        break;
    }
    if (anchor) {
        ferry__yw_error(w, at, "anchors are not allowed (&%.64s): anchors and aliases are refused "
                       "so that no document can expand beyond its size", anchor);
        yaml_event_delete(ev);
        w->fatal = true;
        return -1;
    }
    if (tag)
        ferry__yw_error(w, at, "tags are not supported (%.64s)", tag);
    return 0;
}

int ferry__yw_next_item(ferry__yw *w, yaml_event_t *ev)
{
    if (ferry__yw_next(w, ev) != 0)
        return -1;
    /* libyaml nests ends as it nests starts: an end here is ours. */
    if (ev->type == YAML_MAPPING_END_EVENT || ev->type == YAML_SEQUENCE_END_EVENT) {
        yaml_event_delete(ev);
        return 0;
    }
    return 1;
}

static bool is_collection(const yaml_event_t *ev)
{
    return ev->type == YAML_MAPPING_START_EVENT || ev->type == YAML_SEQUENCE_START_EVENT;
}

int ferry__yw_skip_rest(ferry__yw *w)
{
    unsigned level = w->depth - 1;
    while (w->depth > level) {
        yaml_event_t e;
        if (ferry__yw_next(w, &e) != 0)
            return -1;
        yaml_event_delete(&e);
    }
    return 0;
}

int ferry__yw_skip(ferry__yw *w, const yaml_event_t *ev)
{
    if (!is_collection(ev))
        return 0;
    return ferry__yw_skip_rest(w);
}

const char *ferry__yw_scalar(const yaml_event_t *ev)
{
    return (const char *)ev->data.scalar.value;
}

bool ferry__yw_is_plain(const yaml_event_t *ev)
{
    return ev->type == YAML_SCALAR_EVENT && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

bool ferry__yw_is_null(const yaml_event_t *ev)
{
    const char *v = ferry__yw_scalar(ev);
    return ferry__yw_is_plain(ev) &&
           (v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
            strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0);
}

bool ferry__yw_plain_true(const char *v)
{
    return strcmp(v, "true") == 0 || strcmp(v, "True") == 0 || strcmp(v, "TRUE") == 0;
}

bool ferry__yw_plain_false(const char *v)
{
    return strcmp(v, "false") == 0 || strcmp(v, "False") == 0 || strcmp(v, "FALSE") == 0;
}

const char *ferry__yw_describe(const yaml_event_t *ev, char *buf, size_t len)
{
    if (ev->type == YAML_MAPPING_START_EVENT)
        return "a mapping";
    if (ev->type == YAML_SEQUENCE_START_EVENT)
        return "a sequence";
    if (ferry__yw_is_null(ev))
        return "null";
    snprintf(buf, len, "%s\"%.64s\"", ferry__yw_is_plain(ev) ? "" : "the quoted string ",
             ferry__yw_scalar(ev));
    return buf;
}

int ferry__yw_wrong_type(ferry__yw *w, const yaml_event_t *ev, const char *what)
{
    char buf[96];
    ferry__yw_error(w, ferry__yw_place_of(ev->start_mark), "expected %s, not %s", what,
                   ferry__yw_describe(ev, buf, sizeof buf));
    return ferry__yw_skip(w, ev);
}

/* ------------------------------------------------------------ mappings */

static void list_keys(const char *const *keys, int n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++) {
        int wr = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", keys[i]);
        if (wr < 0)
            break;
        used += (size_t)wr;
    }
}

int ferry__yw_read_mapping(ferry__yw *w, const char *const *keys, int nkeys, bool *seen,
                          ferry__yw_value_fn fn, void *arg)
{
    place first[FERRY_YW_KEYS_MAX];
    for (int i = 0; i < nkeys; i++)
        seen[i] = false;
    yaml_event_t key, val;
    int more;
    while ((more = ferry__yw_next_item(w, &key)) > 0) {
        place key_at = ferry__yw_place_of(key.start_mark);
        int index = -1;
        if (key.type != YAML_SCALAR_EVENT) {
            char buf[96];
            ferry__yw_error(w, key_at, "a key must be a string, not %s",
                           ferry__yw_describe(&key, buf, sizeof buf));
            int rc = ferry__yw_skip(w, &key);
            yaml_event_delete(&key);
            if (rc != 0)
                return -1;
        } else {
            const char *name = ferry__yw_scalar(&key);
            for (int i = 0; i < nkeys && index < 0; i++)
                if (strcmp(keys[i], name) == 0)
                    index = i;
            size_t old = ferry__yw_push_key(w, name);
            if (index < 0) {
                char names[400];
                list_keys(keys, nkeys, names, sizeof names);
                ferry__yw_error(w, key_at, "unknown key \"%.64s\" (expected %s)", name, names);
            } else if (seen[index]) {
                ferry__yw_error(w, key_at, "duplicate key \"%s\" (first at line %d)", keys[index],
                               first[index].line);
                index = -1;
            } else {
                seen[index] = true;
                first[index] = key_at;
            }
            yaml_event_delete(&key);
            if (ferry__yw_next(w, &val) != 0)
                return -1;
            int rc = index < 0 ? ferry__yw_skip(w, &val) : fn(w, index, key_at, &val, arg);
            yaml_event_delete(&val);
            ferry__yw_pop(w, old);
            if (rc != 0)
                return -1;
            continue;
        }
        /* A non-string key: skip its value too. */
        if (ferry__yw_next(w, &val) != 0)
            return -1;
        int rc = ferry__yw_skip(w, &val);
        yaml_event_delete(&val);
        if (rc != 0)
            return -1;
    }
    return more;
}

FERRY_PRINTF(4, 5)
static void error_missing(ferry__yw *w, place at, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(&w->missing, w->file, at, field, fmt, ap);
    va_end(ap);
}

void ferry__yw_require_keys(ferry__yw *w, place at, const char *const *keys, const bool *required,
                           const bool *seen, int nkeys)
{
    for (int i = 0; i < nkeys; i++) {
        if (required[i] && !seen[i]) {
            size_t old = ferry__yw_push_key(w, keys[i]);
            error_missing(w, at, w->path, "missing: \"%s\" is required", keys[i]);
            ferry__yw_pop(w, old);
        }
    }
}

/* ------------------------------------------------------------ sequences */

int ferry__yw_read_sequence(ferry__yw *w, const yaml_event_t *ev, const char *items, size_t max,
                           size_t *count, ferry__yw_item_fn fn, void *arg)
{
    if (ev->type != YAML_SEQUENCE_START_EVENT) {
        char what[64];
        snprintf(what, sizeof what, "a sequence of %s", items);
        return ferry__yw_wrong_type(w, ev, what);
    }
    yaml_event_t item;
    int more;
    while ((more = ferry__yw_next_item(w, &item)) > 0) {
        if (*count == max) {
            /* Say so once and read no further items. */
            ferry__yw_error(w, ferry__yw_place_of(item.start_mark), "more than %zu %s", max, items);
            int rc = ferry__yw_skip(w, &item);
            yaml_event_delete(&item);
            if (rc != 0)
                return -1;
            return ferry__yw_skip_rest(w);
        }
        size_t old = ferry__yw_push_index(w, *count);
        (*count)++;                   /* counted now: freed with the rest on error */
        int rc = fn(w, &item, *count - 1, arg);
        yaml_event_delete(&item);
        ferry__yw_pop(w, old);
        if (rc != 0)
            return -1;
    }
    return more;
}

/* ------------------------------------------------------------ the document */

static int read_stream(ferry__yw *w, const ferry__yw_doc *doc)
{
    yaml_event_t ev;
    if (ferry__yw_next(w, &ev) != 0)           /* STREAM-START */
        return -1;
    yaml_event_delete(&ev);
    if (ferry__yw_next(w, &ev) != 0)
        return -1;
    if (ev.type == YAML_STREAM_END_EVENT && doc->empty_ok) {
        yaml_event_delete(&ev);
        return 0;
    }
    if (ev.type == YAML_STREAM_END_EVENT) {   /* empty, or comments only */
        ferry__yw_error_at(w, ferry__yw_place_of(ev.start_mark), "", "empty document: expected %s",
                          doc->expected);
        yaml_event_delete(&ev);
        return -1;
    }
    yaml_event_delete(&ev);                   /* DOCUMENT-START */

    if (ferry__yw_next(w, &ev) != 0)
        return -1;
    if (doc->empty_ok && ferry__yw_is_null(&ev)) {
        yaml_event_delete(&ev);
    } else if (ev.type != YAML_MAPPING_START_EVENT) {
        ferry__yw_error_at(w, ferry__yw_place_of(ev.start_mark), "", "expected %s at the top",
                          doc->expected);
        int rc = ferry__yw_skip(w, &ev);
        yaml_event_delete(&ev);
        if (rc != 0)
            return -1;
        w->fatal = true;                      /* nothing more to check */
    } else {
        bool seen[FERRY_YW_KEYS_MAX];
        place at = ferry__yw_place_of(ev.start_mark);
        yaml_event_delete(&ev);
        if (ferry__yw_read_mapping(w, doc->keys, doc->nkeys, seen, doc->value, doc->arg) != 0)
            return -1;
        if (doc->required)
            ferry__yw_require_keys(w, at, doc->keys, doc->required, seen, doc->nkeys);
    }

    if (ferry__yw_next(w, &ev) != 0)           /* DOCUMENT-END */
        return -1;
    yaml_event_delete(&ev);
    if (ferry__yw_next(w, &ev) != 0)
        return -1;
    if (ev.type != YAML_STREAM_END_EVENT) {
        ferry__yw_error_at(w, ferry__yw_place_of(ev.start_mark), "", "a second YAML document; a "
                          "file holds one %s", doc->one);
        yaml_event_delete(&ev);
        w->fatal = true;
        return -1;
    }
    yaml_event_delete(&ev);
    return 0;
}

int ferry__yw_read_document(ferry__yw *w, const ferry__yw_doc *doc)
{
    if (!yaml_parser_initialize(&w->parser))
        return ferry__yw_oom(w);
    yaml_parser_set_input_string(&w->parser, w->text, w->len);
    /* Its result only said where to stop reading: an empty document is
     * an error but not fatal (the loader's own checks still run). */
    read_stream(w, doc);
    yaml_parser_delete(&w->parser);
    if (w->fatal)
        return -1;
    for (size_t i = 0; i < w->missing.count; i++) {
        const ferry_saga_load_error *m = &w->missing.errors[i];
        ferry__yw_error_at(w, (place){m->line, m->column}, m->field, "%s", m->message);
    }
    w->errs->total += w->missing.total - w->missing.count;
    return 0;
}

/* ------------------------------------------------------------ files */

ferry_code ferry__yw_read_file(const char *path, size_t max, const char *what, char **buf_out,
                              size_t *len_out, bool *unreadable, ferry_saga_load_errors *errs)
{
    static const place nowhere = {0, 0};
    *unreadable = false;
    char ebuf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ferry__yw_add_error(errs, path, nowhere, "", "could not open %s: %s", what,
                           strerror_r(errno, ebuf, sizeof ebuf));
        *unreadable = true;
        return FERRY_EINVAL;
    }
    /* One byte more than the limit (ferry__read_capped). */
    char *buf = ferry__saga_malloc_(max + 1);
    if (!buf) {
        close(fd);
        ferry__yw_add_error(errs, path, nowhere, "", "out of memory loading %s", what);
        return FERRY_ENOMEM;
    }
    size_t used = 0;
    ferry_code rc = FERRY_OK;
    struct stat st;
    bool too_big = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uintmax_t)st.st_size > max;
    if (!too_big && ferry__read_capped(fd, buf, max, &used) != 0) {
        ferry__yw_add_error(errs, path, nowhere, "", "could not read %s: %s", what,
                           strerror_r(errno, ebuf, sizeof ebuf));
        *unreadable = true;
        rc = FERRY_EINVAL;
        goto out;
    }
    if (too_big || used > max) {
        ferry__yw_add_error(errs, path, nowhere, "", "the document is larger than %zu bytes; "
                           "refusing to read it", max);
        rc = FERRY_EINVAL;
        goto out;
    }
    *buf_out = buf;
    *len_out = used;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* ------------------------------------------------------------ loaders */

ferry_code ferry__yw_outcome(const ferry__yw *w)
{
    if (w->oom)
        return FERRY_ENOMEM;
    return w->errs->total > 0 ? FERRY_EINVAL : FERRY_OK;
}

static ferry_code parse(const ferry__yw_loader *l, const char *text, size_t len,
                        const char *name, void *out, ferry_saga_load_errors *errs)
{
    static const place nowhere = {0, 0};
    if (len > l->max) {
        ferry__yw_add_error(errs, name, nowhere, "", "the document is larger than %zu bytes; "
                           "refusing to read it", l->max);
        return FERRY_EINVAL;
    }
    void *loader = ferry__saga_malloc_(l->size);
    if (!loader) {
        ferry__yw_add_error(errs, name, nowhere, "", "out of memory loading %s", l->what);
        return FERRY_ENOMEM;
    }
    memset(loader, 0, l->size);
    ferry__yw_init(loader, text, len, name, l->what, errs);   /* its first member */
    ferry_code rc = l->read(loader, out);
    free(loader);
    return rc;
}

ferry_code ferry__yw_parse(const ferry__yw_loader *l, const char *text, size_t len,
                          const char *name, void *out, ferry_saga_load_errors *errs)
{
    ferry_saga_load_errors local;
    if (!errs)
        errs = &local;
    memset(errs, 0, sizeof *errs);
    if (!name)
        name = "<memory>";
    if (!text || !out) {
        ferry__yw_add_error(errs, name, (place){0, 0}, "", "%s is NULL",
                           text ? "out" : l->text_arg);
        return FERRY_EINVAL;
    }
    ferry_code rc = parse(l, text, len, name, out, errs);
    ferry__yw_sort_errors(errs);
    return rc;
}

ferry_code ferry__yw_load(const ferry__yw_loader *l, const char *path, void *out,
                         ferry_saga_load_errors *errs)
{
    ferry_saga_load_errors local;
    if (!errs)
        errs = &local;
    memset(errs, 0, sizeof *errs);
    if (!path || !out) {
        ferry__yw_add_error(errs, path ? path : "(null)", (place){0, 0}, "", "%s is NULL",
                           path ? "out" : "path");
        return FERRY_EINVAL;
    }
    char *buf;
    size_t len;
    bool unreadable;
    ferry_code rc = ferry__yw_read_file(path, l->max, l->what, &buf, &len, &unreadable, errs);
    if (rc != FERRY_OK)
        return rc;
    rc = ferry__yw_parse(l, buf, len, path, out, errs);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------ scalars */

int ferry__yw_get_string(ferry__yw *w, yaml_event_t *ev, const char *what, char **out, bool *ok)
{
    *ok = false;
    if (ev->type != YAML_SCALAR_EVENT || ferry__yw_is_null(ev))
        return ferry__yw_wrong_type(w, ev, what);
    *out = ferry__yw_strndup(w, ferry__yw_scalar(ev), ev->data.scalar.length);
    if (!*out)
        return -1;
    *ok = true;
    return 0;
}

bool ferry__yw_check_name(ferry__yw *w, const yaml_event_t *ev, const char *name, int max)
{
    size_t n = strlen(name);
    place at = ferry__yw_place_of(ev->start_mark);
    if (n == 0 || n > (size_t)max) {
        ferry__yw_error(w, at, "a name must have 1 to %d characters, not %zu", max, n);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            ferry__yw_error(w, at, "invalid name \"%.64s\": only letters, digits, \".\", \"_\" "
                           "and \"-\" are allowed", name);
            return false;
        }
    }
    return true;
}

int ferry__yw_get_int(ferry__yw *w, yaml_event_t *ev, long min, long max, int *out, bool *ok)
{
    *ok = false;
    if (!ferry__yw_is_plain(ev) || ferry__yw_is_null(ev))
        return ferry__yw_wrong_type(w, ev, "an integer");
    const char *text = ferry__yw_scalar(ev);
    place at = ferry__yw_place_of(ev->start_mark);
    long v = 0;
    switch (ferry__parse_long(text, min, max, &v)) {
    case FERRY_INT_SYNTAX:
        ferry__yw_error(w, at, "expected an integer, not \"%.64s\"", text);
        return 0;
    case FERRY_INT_RANGE:
        ferry__yw_error(w, at, "must be between %ld and %ld, not %.64s", min, max, text);
        return 0;
    case FERRY_INT_OK:
        break;
    }
    *out = (int)v;
    *ok = true;
    return 0;
}

int ferry__yw_get_bool(ferry__yw *w, yaml_event_t *ev, int *out, bool *ok)
{
    *ok = false;
    if (ferry__yw_is_plain(ev) && ferry__yw_plain_true(ferry__yw_scalar(ev)))
        *out = 1;
    else if (ferry__yw_is_plain(ev) && ferry__yw_plain_false(ferry__yw_scalar(ev)))
        *out = 0;
    else
        return ferry__yw_wrong_type(w, ev, "true or false");
    *ok = true;
    return 0;
}

const char *ferry__yw_format_duration(int64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
    size_t used = 0;
    buf[0] = '\0';
    if (ms <= 0)
        snprintf(buf, len, "0s");
    for (size_t i = 0; i < sizeof units / sizeof units[0] && ms > 0 && used < len; i++) {
        if (ms < units[i].ms)
            continue;
        int wr = snprintf(buf + used, len - used, "%lld%s", (long long)(ms / units[i].ms),
                          units[i].unit);
        if (wr < 0)
            break;
        used += (size_t)wr;
        ms %= units[i].ms;
    }
    return buf;
}

const char *ferry__yw_parse_duration(const char *text, bool plain, int64_t *out)
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
        return *out > FERRY_YW_DURATION_MAX_MS ? "is longer than 366 days" : NULL;
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
        if (n > FERRY_YW_DURATION_MAX_MS / unit)
            return "is longer than 366 days";
        total += n * unit;
        if (total > FERRY_YW_DURATION_MAX_MS)
            return "is longer than 366 days";
        any = true;
    }
    if (!any)
        return "is not a duration";
    *out = total;
    return NULL;
}

int ferry__yw_get_duration(ferry__yw *w, yaml_event_t *ev, bool allow_zero, int64_t *out, bool *ok)
{
    *ok = false;
    if (ev->type != YAML_SCALAR_EVENT || ferry__yw_is_null(ev))
        return ferry__yw_wrong_type(w, ev, "a duration such as \"30s\", \"5m\" or \"1h30m\"");
    int64_t ms = 0;
    const char *text = ferry__yw_scalar(ev);
    const char *why = ferry__yw_parse_duration(text, ferry__yw_is_plain(ev), &ms);
    place at = ferry__yw_place_of(ev->start_mark);
    if (why && strcmp(why, "is not a duration") == 0)
        ferry__yw_error(w, at, "\"%.64s\" is not a duration: expected a number and a unit (ms, s, "
                       "m, h, d) such as \"30s\", \"5m\" or \"1h30m\", or an integer of "
                       "milliseconds", text);
    else if (why)
        ferry__yw_error(w, at, "\"%.64s\" %s", text, why);
    else if (ms == 0 && !allow_zero)
        ferry__yw_error(w, at, "must be positive, not \"%.64s\"", text);
    else {
        *out = ms;
        *ok = true;
    }
    return 0;
}

/* ferry_msg_check on a message whose only questionable field is field. */
static int check_msg_field(ferry__yw *w, const yaml_event_t *ev, const ferry_msg *msg,
                           const char *field, bool *ok)
{
    ferry_error err;
    *ok = false;
    if (ferry_msg_check(msg, NULL, &err) == FERRY_OK) {
        *ok = true;
        return 0;
    }
    if (strcmp(err.field, field) != 0)
        return ferry__yw_oom(w);       /* parsing the payload "null" can only fail so */
    ferry__yw_error(w, ferry__yw_place_of(ev->start_mark), "%s", err.message);
    return 0;
}

int ferry__yw_check_topic(ferry__yw *w, const yaml_event_t *ev, const char *topic, bool *ok)
{
    ferry_msg msg = {.topic = topic, .key = "k", .type = "t", .payload = "null"};
    return check_msg_field(w, ev, &msg, "topic", ok);
}

int ferry__yw_check_type(ferry__yw *w, const yaml_event_t *ev, const char *type, bool *ok)
{
    ferry_msg msg = {.topic = "t", .key = "k", .type = type, .payload = "null"};
    return check_msg_field(w, ev, &msg, "type", ok);
}
