/*
 * config.c — ferry-relay's settings for `ferry-relay run`: built-in
 * defaults, then one YAML file, then the environment, then flags, each
 * overriding the last.
 *
 * The file (--config FILE, else $FERRY_CONFIG), every key optional:
 *
 *   db: "host=/tmp/x port=5432 dbname=app user=relay"   # libpq conninfo
 *   metrics: "127.0.0.1:9187"   # HOST:PORT of /metrics and /healthz
 *   holder: "relay-a"           # this relay's name in leases; default host:pid
 *   source: "ferry://orders-service"   # CloudEvents ce_source; default "ferry"
 *   batch_size: 1000            # rows per fetch, 1..100000
 *   max_inflight: 20000         # produced, not yet acknowledged: batch_size..1000000
 *   poll_interval_ms: 1000      # backstop poll without NOTIFY, 10..3600000
 *   lease_ttl_ms: 10000         # 1000..3600000
 *   max_attempts: 5             # failed deliveries before a dead letter, 1..1000
 *   log_level: info             # error | warn | info | debug
 *   retention: delete           # delete | mark
 *   outbox_source: table        # table | wal (--source; "source" is ce_source)
 *   kafka:                      # librdkafka properties, passed through as is
 *     bootstrap.servers: "broker1:9092,broker2:9092"   # or "embedded"
 *     compression.type: lz4
 *     security.protocol: SASL_SSL
 *
 * A null or empty value (`holder:`, `metrics: ~`) means "not set here".
 * Numbers are plain decimal integers: no quotes, sign, "0x", fraction or
 * leading zeros. kafka: bootstrap.servers ends up in cfg->kafka, never in
 * cfg->kafka_props, so that it is not given to librdkafka twice.
 *
 * Over that: FERRY_DB, FERRY_KAFKA, FERRY_METRICS, FERRY_HOLDER (empty
 * means unset), then the flags --db, --kafka, --metrics, --holder, --once,
 * --set NAME=VALUE (a number or log_level/retention by its YAML name) and
 * --kafka-prop NAME=VALUE, applied in the order given.
 *
 * The file is read into memory (at most CONFIG_FILE_MAX bytes) and passed
 * over three times; each pass reports the first problem it finds, as
 * "FILE:LINE:COLUMN: KEY: ...":
 *
 *  1. The outline, from libyaml's events: YAML syntax, one document, a
 *     mapping at the top, no aliases, no duplicate keys, no key that the
 *     libcyaml schema does not name, and the kafka: map (any property name,
 *     which a libcyaml schema cannot express). It remembers where every key
 *     and value is, for the messages of the later passes.
 *  2. libcyaml with file_schema: each setting is a single value, and the
 *     names of log_level and retention. Its errors arrive as log lines; we
 *     keep the message and the backtrace's field and put the place first.
 *  3. Ours: numbers and their ranges, HOST:PORT.
 *
 * Numbers pass through libcyaml as text: libcyaml 1.3.1 reads an integer
 * with strtoll(value, &end, 0) and never looks at end, so "12abc" loads
 * as 12, "1.5" as 1 and "010" as 8. They go through parse_int() instead,
 * the same parser --set uses.
 *
 * Aliases ("billion laughs"): libyaml's event parser never expands them;
 * the outline refuses every alias event and libcyaml runs with
 * CYAML_CFG_NO_ALIAS as well, so memory stays linear in the file, whose
 * size is capped, and nesting is capped at YAML_DEPTH_MAX.
 *
 * relay_config_load is not thread-safe: getopt_long keeps its state in
 * globals. Call it at start-up.
 */
#include "config.h"
#include "../lib/internal.h"

#include <cyaml/cyaml.h>
#include <yaml.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    CONFIG_FILE_MAX = 1 << 20,        /* bytes of YAML we read at most */
    YAML_DEPTH_MAX = 16,              /* nested mappings and sequences */
};

#define DEFAULT_SOURCE "ferry"

/* ------------------------------------------------------------ settings */

/*
 * The numeric settings: YAML name (also the relay_config member and the
 * --set name), default, minimum, maximum, and what it means (for --help).
 * max_inflight must also be >= batch_size, checked once every layer is
 * applied. config.h gives no range for poll_interval_ms; 10 ms .. 1 h is
 * ours. The defaults, the parser, the file schema and the help text are
 * all generated from this one list.
 */
#define INT_SETTINGS(X)                                                              \
    X(batch_size,        1000,    1,  100000, "rows per fetch")                     \
    X(max_inflight,     20000,    1, 1000000, "produced, not yet acknowledged (>= batch_size)") \
    X(poll_interval_ms,  1000,   10, 3600000, "backstop poll when no NOTIFY arrives") \
    X(lease_ttl_ms,     10000, 1000, 3600000, "shard lease time to live; renewed every third") \
    X(max_attempts,         5,    1,    1000, "failed deliveries before a dead letter") \
    X(stuck_ms,          5000,  100, 3600000, "a partition or key waiting longer is stuck") \
    X(stop_grace_ms,    20000,    0, 3600000, "how long SIGTERM waits for deliveries")

/* What libcyaml loads the file into; every pointer is NULL when unset. */
typedef struct file_settings {
    char *db;
    char *metrics;
    char *holder;
    char *source;
#define X_MEMBER(name, def, lo, hi, doc) char *name;   /* text: see parse_int() */
    INT_SETTINGS(X_MEMBER)
#undef X_MEMBER
    int *log_level;
    int *retention;
    int *outbox_source;
} file_settings;

typedef struct int_setting {
    const char *name;
    size_t cfg_offset;                /* int in relay_config */
    size_t file_offset;               /* char * in file_settings */
    long def, min, max;
    const char *doc;
} int_setting;

enum {
#define X_INDEX(name, def, lo, hi, doc) INT_##name,
    INT_SETTINGS(X_INDEX)
#undef X_INDEX
    N_INT_SETTINGS
};

static const int_setting int_settings[N_INT_SETTINGS] = {
#define X_ROW(name, def, lo, hi, doc) \
    [INT_##name] = {#name, offsetof(relay_config, name), offsetof(file_settings, name), \
                    def, lo, hi, doc},
    INT_SETTINGS(X_ROW)
#undef X_ROW
};

static int *int_slot(relay_config *c, const int_setting *s)
{
    return (int *)(void *)((char *)c + s->cfg_offset);
}

static const char *file_text(const file_settings *fs, const int_setting *s)
{
    return *(char *const *)(const void *)((const char *)fs + s->file_offset);
}

static const cyaml_strval_t log_level_names[] = {
    {"error", 0}, {"warn", 1}, {"info", 2}, {"debug", 3},
};
static const cyaml_strval_t retention_names[] = {
    {"delete", RELAY_RETENTION_DELETE}, {"mark", RELAY_RETENTION_MARK},
};
static const cyaml_strval_t outbox_source_names[] = {
    {"table", RELAY_SOURCE_TABLE}, {"wal", RELAY_SOURCE_WAL},
};

typedef struct enum_setting {
    const char *name;
    const cyaml_strval_t *names;
    unsigned count;
    int def;                          /* a value of names */
    const char *doc;                  /* for --help */
} enum_setting;

enum { ENUM_LOG_LEVEL, ENUM_RETENTION, ENUM_OUTBOX_SOURCE, N_ENUM_SETTINGS };
static const enum_setting enum_settings[N_ENUM_SETTINGS] = {
    [ENUM_LOG_LEVEL] = {"log_level", log_level_names, CYAML_ARRAY_LEN(log_level_names), 2,
                        "the least severe log event written"},
    [ENUM_RETENTION] = {"retention", retention_names, CYAML_ARRAY_LEN(retention_names),
                        RELAY_RETENTION_DELETE,
                        "an acknowledged row is deleted, or marked published_at"},
    [ENUM_OUTBOX_SOURCE] = {"outbox_source", outbox_source_names,
                            CYAML_ARRAY_LEN(outbox_source_names), RELAY_SOURCE_TABLE,
                            "poll the outbox table, or stream the WAL slot (--source)"},
};

static void set_enum(relay_config *c, int which, int value)
{
    if (which == ENUM_LOG_LEVEL)
        c->log_level = value;
    else if (which == ENUM_RETENTION)
        c->retention = (relay_retention)value;
    else
        c->outbox_source = (relay_outbox_source)value;
}

#define STRING_FLAGS (CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR)
#define ENUM_FLAGS (CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR | CYAML_FLAG_STRICT)

/* The keys of the file: the outline refuses any other. */
static const cyaml_schema_field_t file_fields[] = {
    CYAML_FIELD_STRING_PTR("db", STRING_FLAGS, file_settings, db, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("metrics", STRING_FLAGS, file_settings, metrics, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("holder", STRING_FLAGS, file_settings, holder, 0, CYAML_UNLIMITED),
    CYAML_FIELD_STRING_PTR("source", STRING_FLAGS, file_settings, source, 0, CYAML_UNLIMITED),
#define X_FIELD(name, def, lo, hi, doc) \
    CYAML_FIELD_STRING_PTR(#name, STRING_FLAGS, file_settings, name, 0, CYAML_UNLIMITED),
    INT_SETTINGS(X_FIELD)
#undef X_FIELD
    CYAML_FIELD_ENUM_PTR("log_level", ENUM_FLAGS, file_settings, log_level, log_level_names,
                         CYAML_ARRAY_LEN(log_level_names)),
    CYAML_FIELD_ENUM_PTR("retention", ENUM_FLAGS, file_settings, retention, retention_names,
                         CYAML_ARRAY_LEN(retention_names)),
    CYAML_FIELD_ENUM_PTR("outbox_source", ENUM_FLAGS, file_settings, outbox_source,
                         outbox_source_names, CYAML_ARRAY_LEN(outbox_source_names)),
    /* Read by the outline: librdkafka property names are open-ended. */
    CYAML_FIELD_IGNORE("kafka", CYAML_FLAG_OPTIONAL),
    CYAML_FIELD_END,
};
enum { N_FIELDS = sizeof file_fields / sizeof file_fields[0] - 1 };

static const cyaml_schema_value_t file_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, file_settings, file_fields),
};

static int field_index(const char *key)
{
    for (int i = 0; i < N_FIELDS; i++)
        if (strcmp(file_fields[i].key, key) == 0)
            return i;
    return -1;
}

/* librdkafka's two names for the bootstrap servers. */
static bool is_bootstrap(const char *name, size_t n)
{
    return (n == strlen("bootstrap.servers") && memcmp(name, "bootstrap.servers", n) == 0) ||
           (n == strlen("metadata.broker.list") && memcmp(name, "metadata.broker.list", n) == 0);
}

/* ------------------------------------------------------------ errors */

/* A place in the file, 1-based; line 0 when unknown. */
typedef struct place {
    unsigned long line, column;
} place;

/* Where a numeric setting's value came from, for the cross-checks. */
typedef struct origin {
    enum { FROM_DEFAULT, FROM_FILE, FROM_FLAG } kind;
    place at;                         /* FROM_FILE */
    const char *arg;                  /* FROM_FLAG: the --set argument */
} origin;

typedef struct loader {
    relay_config cfg;                 /* being built; the caller's on success */
    origin from[N_INT_SETTINGS];
    char *err;
    size_t errlen;
    const char *path;                 /* the config file, or NULL */
    bool path_from_env;               /* named by FERRY_CONFIG */
} loader;

__attribute__((format(printf, 2, 0)))
static void append_v(loader *ld, const char *fmt, va_list ap)
{
    if (!ld->err || ld->errlen == 0)
        return;
    size_t used = strlen(ld->err);
    if (used + 1 >= ld->errlen)
        return;
    /* Messages quote the input (keys, values, flags), cut at a length that
     * can fall inside a character: escaped, so that every message is
     * valid UTF-8 without control characters (the fuzz target checks). */
    char raw[2048];
    vsnprintf(raw, sizeof raw, fmt, ap);
    ferry_escape_text(ld->err + used, ld->errlen - used, raw);
}

__attribute__((format(printf, 2, 3)))
static int fail(loader *ld, const char *fmt, ...)
{
    va_list ap;
    if (ld->err && ld->errlen)
        ld->err[0] = '\0';
    va_start(ap, fmt);
    append_v(ld, fmt, ap);
    va_end(ap);
    return -1;
}

/* "FILE:LINE:COLUMN: " and the message; "FILE: " when at is unknown. */
__attribute__((format(printf, 3, 4)))
static int fail_at(loader *ld, place at, const char *fmt, ...)
{
    va_list ap;
    if (at.line)
        fail(ld, "%s:%lu:%lu: ", ld->path, at.line, at.column);
    else
        fail(ld, "%s: ", ld->path);
    va_start(ap, fmt);
    append_v(ld, fmt, ap);
    va_end(ap);
    return -1;
}

static int out_of_memory(loader *ld)
{
    return fail(ld, "out of memory reading the configuration");
}

/* "a, b or c" */
static void format_names(const cyaml_strval_t *names, unsigned count, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < count && used < len; i++) {
        const char *sep = i == 0 ? "" : i + 1 == count ? " or " : ", ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, names[i].str);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static bool lookup_name(const enum_setting *e, const char *text, int *out)
{
    for (unsigned i = 0; i < e->count; i++) {
        if (strcmp(e->names[i].str, text) == 0) {
            *out = (int)e->names[i].val;
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------ values */

static int set_string(loader *ld, char **slot, const char *value)
{
    char *copy = strdup(value);
    if (!copy)
        return out_of_memory(ld);
    free(*slot);
    *slot = copy;
    return 0;
}

/*
 * A plain decimal integer in [min, max]: "0" or -?[1-9][0-9]*. Returns 0,
 * or -1 with why (lower case, no place) in why.
 */
static int parse_int(const char *text, long min, long max, int *out, char *why, size_t whylen)
{
    long v = 0;
    switch (ferry_parse_long(text, min, max, &v)) {
    case FERRY_INT_SYNTAX:
        snprintf(why, whylen, "expected a decimal integer, not \"%.64s\"", text);
        return -1;
    case FERRY_INT_RANGE:
        snprintf(why, whylen, "must be between %ld and %ld", min, max);
        return -1;
    case FERRY_INT_OK:
        break;
    }
    _Static_assert(INT_MAX >= 1000000, "every maximum fits an int");
    *out = (int)v;
    return 0;
}

/*
 * The grammar metrics_serve() accepts: HOST:PORT, HOST empty or "*" (every
 * IPv4 interface), a name, an IPv4 address, or an IPv6 address in
 * brackets; PORT 0..65535 (0: the kernel picks). NULL, or what is wrong.
 */
static const char *metrics_problem(const char *s)
{
    const char *port;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1 || close[1] != ':')
            return "expected HOST:PORT, with an IPv6 host as [ADDRESS]:PORT";
        hostlen = (size_t)(close - s - 1);
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return "expected HOST:PORT";
        if (memchr(s, ':', (size_t)(colon - s)))
            return "an IPv6 host needs brackets, as in [::1]:9187";
        hostlen = (size_t)(colon - s);
        port = colon + 1;
    }
    if (hostlen > 255)
        return "host name too long";
    for (const char *h = s; h < port - 1; h++)
        if ((unsigned char)*h <= ' ' || (unsigned char)*h >= 0x7f)
            return "the host contains a space or a control character";
    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || digits > 5 || port[digits] != '\0' || strtol(port, NULL, 10) > 65535)
        return "the port must be a number from 0 to 65535";
    return NULL;
}

/* Non-empty, printable ASCII, no spaces: librdkafka's names are like that. */
static bool valid_prop_name(const char *name, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= ' ' || (unsigned char)name[i] >= 0x7f)
            return false;
    return true;
}

static relay_kv *find_prop(relay_config *c, const char *name, size_t n)
{
    for (size_t i = 0; i < c->kafka_props_count; i++)
        if (strlen(c->kafka_props[i].name) == n && memcmp(c->kafka_props[i].name, name, n) == 0)
            return &c->kafka_props[i];
    return NULL;
}

/* Append a property the caller has checked is new and fits. */
static int append_prop(loader *ld, const char *name, size_t n, const char *value)
{
    relay_config *c = &ld->cfg;
    char *name_copy = strndup(name, n);
    char *value_copy = strdup(value);
    if (!name_copy || !value_copy) {
        free(name_copy);
        free(value_copy);
        return out_of_memory(ld);
    }
    c->kafka_props[c->kafka_props_count].name = name_copy;
    c->kafka_props[c->kafka_props_count].value = value_copy;
    c->kafka_props_count++;
    return 0;
}

/* ------------------------------------------------------------ pass 1: outline */

typedef struct outline {
    loader *ld;
    yaml_parser_t parser;
    const unsigned char *text;
    size_t len;
    unsigned depth;
    const char *in_key;               /* top-level key being read, or NULL */
    const char *in_prop;              /* kafka property being read, or NULL */
    bool any;                         /* the top is a mapping with keys */
    bool seen[N_FIELDS];
    bool quoted[N_FIELDS];            /* the value is a quoted scalar */
    place key_at[N_FIELDS];
    place value_at[N_FIELDS];
    place prop_at[RELAY_KAFKA_PROPS_MAX];   /* parallel to cfg.kafka_props */
    place bootstrap_at;
} outline;

static place place_of(yaml_mark_t m)
{
    return (place){(unsigned long)m.line + 1, (unsigned long)m.column + 1};
}

/* libyaml's reader errors come with a byte offset only. */
static place place_of_offset(const unsigned char *text, size_t len, size_t offset)
{
    place at = {1, 1};
    for (size_t i = 0; i < offset && i < len; i++) {
        if (text[i] == '\n') {
            at.line++;
            at.column = 1;
        } else {
            at.column++;
        }
    }
    return at;
}

/* The message, after "FILE:LINE:COLUMN: " and the key we are in. */
__attribute__((format(printf, 3, 4)))
static int outline_fail(outline *o, place at, const char *fmt, ...)
{
    va_list ap;
    fail_at(o->ld, at, "%s%s%s%s", o->in_key ? o->in_key : "", o->in_key ? ": " : "",
            o->in_prop ? o->in_prop : "", o->in_prop ? ": " : "");
    va_start(ap, fmt);
    append_v(o->ld, fmt, ap);
    va_end(ap);
    return -1;
}

static int syntax_error(outline *o)
{
    const yaml_parser_t *p = &o->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return out_of_memory(o->ld);
    const char *problem = p->problem ? p->problem : "unknown error";
    o->in_key = o->in_prop = NULL;    /* a syntax error is often past the value */
    if (p->error == YAML_READER_ERROR) {
        place at = place_of_offset(o->text, o->len, p->problem_offset);
        if (p->problem_value != -1)
            return outline_fail(o, at, "invalid YAML: %s (byte 0x%02x)", problem,
                                (unsigned)p->problem_value & 0xffu);
        return outline_fail(o, at, "invalid YAML: %s", problem);
    }
    if (p->context) {
        place ctx = place_of(p->context_mark);
        return outline_fail(o, place_of(p->problem_mark), "invalid YAML: %s (%s at line %lu, column %lu)",
                            problem, p->context, ctx.line, ctx.column);
    }
    return outline_fail(o, place_of(p->problem_mark), "invalid YAML: %s", problem);
}

/*
 * The next event, or -1 after a syntax error, an alias, too deep a nesting
 * or a NUL in a scalar. On 0 the caller deletes the event.
 */
static int next_event(outline *o, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&o->parser, ev))
        return syntax_error(o);
    switch (ev->type) {
    case YAML_ALIAS_EVENT: {
        outline_fail(o, place_of(ev->start_mark), "aliases are not allowed (*%.64s)",
                     (const char *)ev->data.alias.anchor);
        yaml_event_delete(ev);
        return -1;
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        if (++o->depth > YAML_DEPTH_MAX) {
            outline_fail(o, place_of(ev->start_mark), "nested more than %d levels deep",
                         YAML_DEPTH_MAX);
            yaml_event_delete(ev);
            return -1;
        }
        break;
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        o->depth--;
        break;
    case YAML_SCALAR_EVENT:
        /* A double-quoted "\0" would cut every string we copy short. */
        if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
            outline_fail(o, place_of(ev->start_mark), "a value contains a NUL character");
            yaml_event_delete(ev);
            return -1;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Read to the end of the collection whose start event was just read. */
static int skip_collection(outline *o)
{
    unsigned level = o->depth - 1;
    while (o->depth > level) {
        yaml_event_t ev;
        if (next_event(o, &ev) != 0)
            return -1;
        yaml_event_delete(&ev);
    }
    return 0;
}

/* YAML's null: an empty, "~" or "null" plain scalar. */
static bool is_null(const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    return ev->type == YAML_SCALAR_EVENT && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
            strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0);
}

static const char *kind_of(const yaml_event_t *ev)
{
    return ev->type == YAML_MAPPING_START_EVENT ? "a mapping" : "a sequence";
}

/* One NAME: VALUE of the kafka: map; the name event is consumed. */
static int read_kafka_prop(outline *o, yaml_event_t *key)
{
    loader *ld = o->ld;
    place key_at = place_of(key->start_mark);
    if (key->type != YAML_SCALAR_EVENT) {
        outline_fail(o, key_at, "a property name must be a string, not %s", kind_of(key));
        yaml_event_delete(key);
        return -1;
    }
    const char *name = (const char *)key->data.scalar.value;
    size_t n = key->data.scalar.length;
    int rc = -1;
    yaml_event_t val;
    const relay_kv *dup = find_prop(&ld->cfg, name, n);

    if (!valid_prop_name(name, n)) {
        outline_fail(o, key_at, "invalid property name \"%.64s\": expected printable characters "
                     "without spaces", name);
        goto out_key;
    }
    if (dup) {
        outline_fail(o, key_at, "duplicate property \"%s\" (first at line %lu)", name,
                     o->prop_at[dup - ld->cfg.kafka_props].line);
        goto out_key;
    }
    if (is_bootstrap(name, n) && ld->cfg.kafka) {
        outline_fail(o, key_at, "duplicate property \"%s\": the bootstrap servers are set at "
                     "line %lu already", name, o->bootstrap_at.line);
        goto out_key;
    }
    o->in_prop = name;
    if (next_event(o, &val) != 0)
        goto out_key;
    if (val.type != YAML_SCALAR_EVENT) {
        outline_fail(o, key_at, "expected a single value, not %s", kind_of(&val));
    } else if (is_null(&val)) {
        outline_fail(o, place_of(val.start_mark), "no value");
    } else if (is_bootstrap(name, n)) {
        if (val.data.scalar.length == 0) {
            outline_fail(o, place_of(val.start_mark), "must not be empty");
        } else if (set_string(ld, &ld->cfg.kafka, (const char *)val.data.scalar.value) == 0) {
            o->bootstrap_at = key_at;
            rc = 0;
        }
    } else if (ld->cfg.kafka_props_count == RELAY_KAFKA_PROPS_MAX) {
        o->in_prop = NULL;
        outline_fail(o, key_at, "more than %d properties", RELAY_KAFKA_PROPS_MAX);
    } else {
        o->prop_at[ld->cfg.kafka_props_count] = key_at;
        rc = append_prop(ld, name, n, (const char *)val.data.scalar.value);
    }
    yaml_event_delete(&val);
out_key:
    o->in_prop = NULL;                /* name dies with the key event */
    yaml_event_delete(key);
    return rc;
}

/* The value of kafka:, its first event in ev (consumed). */
static int read_kafka(outline *o, yaml_event_t *ev)
{
    if (ev->type == YAML_SCALAR_EVENT) {
        bool null = is_null(ev);
        if (!null)
            outline_fail(o, place_of(ev->start_mark),
                         "expected a mapping of librdkafka properties (NAME: VALUE), not \"%.64s\"",
                         (const char *)ev->data.scalar.value);
        yaml_event_delete(ev);
        return null ? 0 : -1;
    }
    if (ev->type != YAML_MAPPING_START_EVENT) {
        outline_fail(o, place_of(ev->start_mark),
                     "expected a mapping of librdkafka properties (NAME: VALUE), not %s",
                     kind_of(ev));
        yaml_event_delete(ev);
        return -1;
    }
    yaml_event_delete(ev);
    for (;;) {
        yaml_event_t key;
        if (next_event(o, &key) != 0)
            return -1;
        if (key.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key);
            return 0;
        }
        if (read_kafka_prop(o, &key) != 0)
            return -1;
    }
}

/* The pairs of the top-level mapping, up to and including its end. */
static int read_settings(outline *o)
{
    for (;;) {
        yaml_event_t key, val;
        if (next_event(o, &key) != 0)
            return -1;
        if (key.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key);
            return 0;
        }
        place key_at = place_of(key.start_mark);
        if (key.type != YAML_SCALAR_EVENT) {
            outline_fail(o, key_at, "a setting's name must be a string, not %s", kind_of(&key));
            yaml_event_delete(&key);
            return -1;
        }
        int i = field_index((const char *)key.data.scalar.value);
        if (i < 0) {
            outline_fail(o, key_at, "unknown setting \"%.64s\"", (const char *)key.data.scalar.value);
            yaml_event_delete(&key);
            return -1;
        }
        yaml_event_delete(&key);
        o->in_key = file_fields[i].key;
        if (o->seen[i])
            return outline_fail(o, key_at, "duplicate setting (first at line %lu)",
                                o->key_at[i].line);
        o->seen[i] = true;
        o->any = true;
        o->key_at[i] = key_at;

        if (next_event(o, &val) != 0)
            return -1;
        o->value_at[i] = place_of(val.start_mark);
        if (strcmp(file_fields[i].key, "kafka") == 0) {
            if (read_kafka(o, &val) != 0)
                return -1;
        } else if (val.type == YAML_SCALAR_EVENT) {
            o->quoted[i] = val.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            yaml_event_delete(&val);
        } else {
            /* Wrong, but libcyaml says so in pass 2. */
            yaml_event_delete(&val);
            if (skip_collection(o) != 0)
                return -1;
        }
        o->in_key = NULL;
    }
}

/* Stream, at most one document, whose top is a mapping or null. */
static int read_outline(outline *o)
{
    yaml_event_t ev;
    if (next_event(o, &ev) != 0)              /* STREAM-START */
        return -1;
    yaml_event_delete(&ev);
    if (next_event(o, &ev) != 0)
        return -1;
    if (ev.type == YAML_STREAM_END_EVENT) {   /* empty, or comments only */
        yaml_event_delete(&ev);
        return 0;
    }
    yaml_event_delete(&ev);                   /* DOCUMENT-START */

    if (next_event(o, &ev) != 0)
        return -1;
    if (ev.type == YAML_MAPPING_START_EVENT) {
        yaml_event_delete(&ev);
        if (read_settings(o) != 0)
            return -1;
    } else if (is_null(&ev)) {
        yaml_event_delete(&ev);
    } else {
        outline_fail(o, place_of(ev.start_mark),
                     "expected a mapping of settings (NAME: VALUE) at the top");
        yaml_event_delete(&ev);
        return -1;
    }

    if (next_event(o, &ev) != 0)              /* DOCUMENT-END */
        return -1;
    yaml_event_delete(&ev);
    if (next_event(o, &ev) != 0)
        return -1;
    if (ev.type != YAML_STREAM_END_EVENT) {
        outline_fail(o, place_of(ev.start_mark), "a second YAML document; only one is allowed");
        yaml_event_delete(&ev);
        return -1;
    }
    yaml_event_delete(&ev);
    return 0;
}

static int outline_file(outline *o)
{
    if (!yaml_parser_initialize(&o->parser))
        return out_of_memory(o->ld);
    yaml_parser_set_input_string(&o->parser, o->text, o->len);
    int rc = read_outline(o);
    yaml_parser_delete(&o->parser);
    return rc;
}

/* ------------------------------------------------------------ pass 2: libcyaml */

/* libcyaml's first error line and the innermost field of its backtrace. */
typedef struct cyaml_capture {
    char message[256];
    char field[64];
} cyaml_capture;

__attribute__((format(printf, 3, 0)))
static void capture_cyaml_log(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    static const char field_prefix[] = "  in mapping field";
    cyaml_capture *cap = ctx;
    char line[512];
    if (level < CYAML_LOG_ERROR)
        return;
    vsnprintf(line, sizeof line, fmt, args);
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, "Load: ", 6) == 0 && strcmp(line + 6, "Backtrace:") != 0) {
        if (!cap->message[0])
            snprintf(cap->message, sizeof cap->message, "%s", line + 6);
    } else if (strncmp(line, field_prefix, sizeof field_prefix - 1) == 0 && !cap->field[0]) {
        /* 1.3: "  in mapping field 'KEY' (line: L, column: C)"; older: ": KEY" */
        const char *key = line + sizeof field_prefix - 1;
        key += strspn(key, " :'");
        snprintf(cap->field, sizeof cap->field, "%.*s", (int)strcspn(key, "' "), key);
    }
}

static int cyaml_failure(outline *o, cyaml_err_t err, const cyaml_capture *cap)
{
    loader *ld = o->ld;
    if (err == CYAML_ERR_OOM)
        return out_of_memory(ld);
    const char *what = cap->message[0] ? cap->message : cyaml_strerror(err);
    int i = cap->field[0] ? field_index(cap->field) : -1;
    if (i < 0)
        return fail(ld, "%s: %s", ld->path, what);

    const char *key = file_fields[i].key;
    place at = o->value_at[i];
    static const char bad_enum[] = "Invalid ENUM value: ";
    /* A block collection starts on the line after its key: point at the key. */
    if (strncmp(what, "Expecting ", 10) == 0 && strstr(what, "MAPPING_START"))
        return fail_at(ld, o->key_at[i], "%s: expected a single value, not a mapping", key);
    if (strncmp(what, "Expecting ", 10) == 0 && strstr(what, "SEQUENCE_START"))
        return fail_at(ld, o->key_at[i], "%s: expected a single value, not a sequence", key);
    for (int e = 0; e < N_ENUM_SETTINGS; e++) {
        if (strcmp(enum_settings[e].name, key) == 0 &&
            strncmp(what, bad_enum, sizeof bad_enum - 1) == 0) {
            char names[128];
            format_names(enum_settings[e].names, enum_settings[e].count, names, sizeof names);
            return fail_at(ld, at, "%s: invalid value \"%s\" (expected %s)", key,
                           what + sizeof bad_enum - 1, names);
        }
    }
    return fail_at(ld, at, "%s: %s", key, what);
}

/* ------------------------------------------------------------ pass 3: values */

static int apply_file_string(loader *ld, const outline *o, const char *key, char **slot,
                             const char *value)
{
    if (!value)
        return 0;
    if (strcmp(key, "metrics") == 0) {
        const char *why = metrics_problem(value);
        if (why)
            return fail_at(ld, o->value_at[field_index(key)], "metrics: %s, not \"%.64s\"", why,
                           value);
    }
    return set_string(ld, slot, value);
}

static int apply_file(loader *ld, const outline *o, const file_settings *fs)
{
    relay_config *c = &ld->cfg;
    if (apply_file_string(ld, o, "db", &c->db, fs->db) != 0 ||
        apply_file_string(ld, o, "metrics", &c->metrics, fs->metrics) != 0 ||
        apply_file_string(ld, o, "holder", &c->holder, fs->holder) != 0 ||
        apply_file_string(ld, o, "source", &c->source, fs->source) != 0)
        return -1;

    for (size_t k = 0; k < N_INT_SETTINGS; k++) {
        const int_setting *s = &int_settings[k];
        const char *text = file_text(fs, s);
        if (!text)
            continue;
        int i = field_index(s->name);
        char why[128];
        if (o->quoted[i])
            return fail_at(ld, o->value_at[i], "%s: expected a decimal integer, not a quoted "
                           "string", s->name);
        if (parse_int(text, s->min, s->max, int_slot(c, s), why, sizeof why) != 0)
            return fail_at(ld, o->value_at[i], "%s: %s", s->name, why);
        ld->from[k] = (origin){.kind = FROM_FILE, .at = o->value_at[i]};
    }
    if (fs->log_level)
        set_enum(c, ENUM_LOG_LEVEL, *fs->log_level);
    if (fs->retention)
        set_enum(c, ENUM_RETENTION, *fs->retention);
    if (fs->outbox_source)
        set_enum(c, ENUM_OUTBOX_SOURCE, *fs->outbox_source);
    return 0;
}

static int load_settings(outline *o)
{
    cyaml_capture cap = {{0}, {0}};
    const cyaml_config_t config = {
        .log_fn = capture_cyaml_log,
        .log_ctx = &cap,
        .mem_fn = cyaml_mem,
        .log_level = CYAML_LOG_ERROR,
        .flags = CYAML_CFG_NO_ALIAS,
    };
    cyaml_data_t *data = NULL;
    cyaml_err_t err = cyaml_load_data(o->text, o->len, &config, &file_schema, &data, NULL);
    if (err != CYAML_OK)
        return cyaml_failure(o, err, &cap);
    if (!data)                        /* only kafka: */
        return 0;
    int rc = apply_file(o->ld, o, data);
    cyaml_free(&config, &file_schema, data, 0);
    return rc;
}

/* The whole file, at most CONFIG_FILE_MAX bytes, into *text (caller frees). */
static int read_file(loader *ld, unsigned char **text, size_t *len)
{
    const char *named = ld->path_from_env ? " (named by FERRY_CONFIG)" : "";
    char ebuf[128];
    int fd = open(ld->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(ld, "%s: could not open the config file%s: %s", ld->path, named,
                    strerror_r(errno, ebuf, sizeof ebuf));

    struct stat st;
    unsigned char *buf = NULL;
    size_t used = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > CONFIG_FILE_MAX)
        goto out_too_big;
    buf = malloc((size_t)CONFIG_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        return out_of_memory(ld);
    }
    /* One byte more than the limit tells a full file from a longer one. */
    while (used <= CONFIG_FILE_MAX) {
        ssize_t n = read(fd, buf + used, (size_t)CONFIG_FILE_MAX + 1 - used);
        if (n == 0)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail(ld, "%s: could not read the config file%s: %s", ld->path, named,
                 strerror_r(errno, ebuf, sizeof ebuf));
            free(buf);
            close(fd);
            return -1;
        }
        used += (size_t)n;
    }
    if (used > CONFIG_FILE_MAX)
        goto out_too_big;
    close(fd);
    *text = buf;
    *len = used;
    return 0;

out_too_big:
    free(buf);
    close(fd);
    return fail(ld, "%s: the config file is larger than %d bytes; refusing to read it",
                ld->path, CONFIG_FILE_MAX);
}

static int load_file(loader *ld)
{
    /* Large (per-key places, one per kafka property): not on the stack. */
    outline *o = calloc(1, sizeof *o);
    if (!o)
        return out_of_memory(ld);
    o->ld = ld;
    unsigned char *text = NULL;
    int rc = read_file(ld, &text, &o->len);
    if (rc == 0) {
        o->text = text;
        rc = outline_file(o);
    }
    if (rc == 0 && o->any)
        rc = load_settings(o);
    free(text);
    free(o);
    return rc;
}

/* ------------------------------------------------------------ environment */

/* The variables, in the order they are applied; --help lists them. */
static const struct env_var {
    const char *name;
    size_t offset;                    /* char * in relay_config */
    const char *flag;                 /* the flag that overrides it */
} env_vars[] = {
    {"FERRY_DB", offsetof(relay_config, db), "--db"},
    {"FERRY_KAFKA", offsetof(relay_config, kafka), "--kafka"},
    {"FERRY_METRICS", offsetof(relay_config, metrics), "--metrics"},
    {"FERRY_HOLDER", offsetof(relay_config, holder), "--holder"},
};
enum { N_ENV_VARS = sizeof env_vars / sizeof env_vars[0] };

static int apply_env(loader *ld)
{
    const struct env_var *vars = env_vars;
    for (size_t i = 0; i < N_ENV_VARS; i++) {
        const char *value = getenv(vars[i].name);
        if (!value || !value[0])
            continue;
        if (vars[i].offset == offsetof(relay_config, metrics)) {
            const char *why = metrics_problem(value);
            if (why)
                return fail(ld, "FERRY_METRICS=%.64s: %s", value, why);
        }
        char **slot = (char **)(void *)((char *)&ld->cfg + vars[i].offset);
        if (set_string(ld, slot, value) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ flags */

/*
 * The flags: name, argument (NULL: none), and the help line. The getopt
 * table and --help are both generated from this list.
 */
#define RUN_FLAGS(X)                                                                      \
    X(OPT_DB, "db", "CONNINFO", "libpq connection string or URI")                         \
    X(OPT_KAFKA, "kafka", "BOOTSTRAP",                                                    \
      "Kafka bootstrap servers; \"embedded\" starts librdkafka's mock cluster in process") \
    X(OPT_CONFIG, "config", "FILE", "YAML settings (README: ferry-relay); flags override it") \
    X(OPT_ONCE, "once", NULL,                                                             \
      "publish what is ready, wait for every delivery report, exit (1 if any failed)")   \
    X(OPT_METRICS, "metrics", "HOST:PORT",                                                \
      "serve /metrics and /healthz (port 0 picks one, logged); default: off")            \
    X(OPT_HOLDER, "holder", "NAME", "this relay's name in the leases (default host:pid)")  \
    X(OPT_SOURCE, "source", "table|wal",                                                  \
      "where to read the outbox: the table, or the WAL slot (outbox_source)")           \
    X(OPT_SET, "set", "NAME=VALUE", "a setting, as in the file (below; repeatable)")      \
    X(OPT_KAFKA_PROP, "kafka-prop", "NAME=VALUE",                                         \
      "a librdkafka property, passed through (TLS, SASL, ...; repeatable)")              \
    X(OPT_HELP, "help", NULL, "this text")

enum {
    OPT_BASE_ = 255,
#define X_ENUM(id, name, arg, doc) id,
    RUN_FLAGS(X_ENUM)
#undef X_ENUM
};

static const struct option long_options[] = {
#define X_OPT(id, name, arg, doc) {name, (arg) ? required_argument : no_argument, NULL, id},
    RUN_FLAGS(X_OPT)
#undef X_OPT
    {NULL, 0, NULL, 0},
};

static const struct flag_doc {
    const char *name, *arg, *doc;
} flag_docs[] = {
#define X_DOC(id, name, arg, doc) {name, arg, doc},
    RUN_FLAGS(X_DOC)
#undef X_DOC
};

const struct option *relay_config_options(void)
{
    return long_options;
}

size_t relay_config_setting_count(void)
{
    return N_INT_SETTINGS + N_ENUM_SETTINGS;
}

const char *relay_config_setting_name(size_t i)
{
    if (i < N_INT_SETTINGS)
        return int_settings[i].name;
    if (i < N_INT_SETTINGS + N_ENUM_SETTINGS)
        return enum_settings[i - N_INT_SETTINGS].name;
    return NULL;
}

static const char *env_of(const char *flag_name)
{
    for (size_t i = 0; i < N_ENV_VARS; i++)
        if (strcmp(env_vars[i].flag + 2, flag_name) == 0)
            return env_vars[i].name;
    return strcmp(flag_name, "config") == 0 ? "FERRY_CONFIG" : NULL;
}

void relay_config_usage(FILE *out)
{
    fprintf(out, "Options (defaults < file < environment < flags):\n");
    for (size_t i = 0; i < sizeof flag_docs / sizeof flag_docs[0]; i++) {
        const struct flag_doc *f = &flag_docs[i];
        char left[40];
        snprintf(left, sizeof left, "--%s%s%s", f->name, f->arg ? " " : "", f->arg ? f->arg : "");
        const char *env = env_of(f->name);
        fprintf(out, "  %-24s %s%s%s%s\n", left, f->doc, env ? " ($" : "", env ? env : "",
                env ? ")" : "");
    }
    fprintf(out, "\nSettings (--set NAME=VALUE, or NAME: in the file): default (range)\n");
    for (size_t k = 0; k < N_INT_SETTINGS; k++) {
        const int_setting *s = &int_settings[k];
        char range[48];
        snprintf(range, sizeof range, "%ld (%ld..%ld)", s->def, s->min, s->max);
        fprintf(out, "  %-17s %-28s %s\n", s->name, range, s->doc);
    }
    for (int e = 0; e < N_ENUM_SETTINGS; e++) {
        const enum_setting *s = &enum_settings[e];
        char range[160];
        const char *def = "?";
        size_t used = 0;
        for (unsigned i = 0; i < s->count; i++)
            if ((int)s->names[i].val == s->def)
                def = s->names[i].str;
        used = (size_t)snprintf(range, sizeof range, "%s (", def);
        for (unsigned i = 0; i < s->count && used < sizeof range; i++)
            used += (size_t)snprintf(range + used, sizeof range - used, "%s%s", i ? "|" : "",
                                     s->names[i].str);
        if (used < sizeof range)
            snprintf(range + used, sizeof range - used, ")");
        fprintf(out, "  %-17s %-28s %s\n", s->name, range, s->doc);
    }
    fprintf(out, "  %-17s %-28s %s\n", "source", "ferry", "CloudEvents ce_source (file only)");
    fprintf(out, "\nEnvironment, each standing in for its flag (empty means unset):\n"
                 "  FERRY_CONFIG");
    for (size_t i = 0; i < N_ENV_VARS; i++)
        fprintf(out, ", %s", env_vars[i].name);
    fprintf(out, "\n\nExit status: 0 stopped cleanly (--once: all published), 1 an operational\n"
                 "failure, 2 a configuration or usage error.\n");
}

typedef struct flag {
    int id;
    const char *arg;                  /* borrowed from argv */
} flag;

/* Every flag of argv, in order, into list (room for argc entries). */
static int parse_flags(loader *ld, int argc, char **argv, flag *list, size_t *count)
{
    /*
     * getopt_long keeps its position in globals. optind = 0, not 1, makes
     * glibc (and musl) start over completely, also in the middle of a
     * "-abc" group a failed call left behind. "+": stop at the first
     * non-option instead of permuting argv; ":": report a missing value
     * as ':'. opterr = 0: the messages are ours, in errbuf.
     */
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:h", long_options, NULL)) != -1) {
        if (c == 'h')
            c = OPT_HELP;
        const char *arg = argv[optind - 1];
        if (c == ':')
            return fail(ld, "%s: needs a value", arg);
        if (c == '?') {
            if (optopt == OPT_ONCE)
                return fail(ld, "%s: --once takes no value", arg);
            if (optopt > 0 && optopt < 256)
                return fail(ld, "unknown option \"-%c\"", optopt);
            return fail(ld, "unknown or ambiguous option \"%s\"", arg);
        }
        list[(*count)++] = (flag){c, optarg};
    }
    if (optind < argc)
        return fail(ld, "unexpected argument \"%s\"", argv[optind]);
    return 0;
}

static void list_settings(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < N_INT_SETTINGS + N_ENUM_SETTINGS && used < len; k++) {
        const char *name = k < N_INT_SETTINGS ? int_settings[k].name
                                              : enum_settings[k - N_INT_SETTINGS].name;
        int n = snprintf(buf + used, len - used, "%s%s", k ? ", " : "", name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* --set NAME=VALUE */
static int apply_set(loader *ld, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq)
        return fail(ld, "--set %s: expected NAME=VALUE", arg);
    size_t n = (size_t)(eq - arg);
    const char *value = eq + 1;
    char why[128];

    for (size_t k = 0; k < N_INT_SETTINGS; k++) {
        const int_setting *s = &int_settings[k];
        if (strlen(s->name) != n || memcmp(s->name, arg, n) != 0)
            continue;
        if (parse_int(value, s->min, s->max, int_slot(&ld->cfg, s), why, sizeof why) != 0)
            return fail(ld, "--set %s: %s", arg, why);
        ld->from[k] = (origin){.kind = FROM_FLAG, .arg = arg};
        return 0;
    }
    for (int e = 0; e < N_ENUM_SETTINGS; e++) {
        const enum_setting *s = &enum_settings[e];
        int v;
        if (strlen(s->name) != n || memcmp(s->name, arg, n) != 0)
            continue;
        if (!lookup_name(s, value, &v)) {
            format_names(s->names, s->count, why, sizeof why);
            return fail(ld, "--set %s: expected %s", arg, why);
        }
        set_enum(&ld->cfg, e, v);
        return 0;
    }
    char names[256];
    list_settings(names, sizeof names);
    return fail(ld, "--set %s: unknown setting \"%.*s\" (one of %s)", arg, (int)n, arg, names);
}

/* --kafka-prop NAME=VALUE: adds a property or replaces the file's. */
static int apply_kafka_prop(loader *ld, const char *arg)
{
    relay_config *c = &ld->cfg;
    const char *eq = strchr(arg, '=');
    if (!eq)
        return fail(ld, "--kafka-prop %s: expected NAME=VALUE", arg);
    size_t n = (size_t)(eq - arg);
    const char *value = eq + 1;
    if (!valid_prop_name(arg, n))
        return fail(ld, "--kafka-prop %s: invalid property name: expected printable "
                    "characters without spaces", arg);
    if (is_bootstrap(arg, n)) {
        if (!value[0])
            return fail(ld, "--kafka-prop %s: must not be empty", arg);
        return set_string(ld, &c->kafka, value);
    }
    relay_kv *kv = find_prop(c, arg, n);
    if (kv)
        return set_string(ld, &kv->value, value);
    if (c->kafka_props_count == RELAY_KAFKA_PROPS_MAX)
        return fail(ld, "--kafka-prop %s: more than %d kafka properties", arg,
                    RELAY_KAFKA_PROPS_MAX);
    return append_prop(ld, arg, n, value);
}

static int apply_flags(loader *ld, const flag *list, size_t count)
{
    relay_config *c = &ld->cfg;
    for (size_t i = 0; i < count; i++) {
        const char *arg = list[i].arg;
        char **slot = NULL;
        const char *name = NULL;
        switch (list[i].id) {
        case OPT_CONFIG:              /* read already */
        case OPT_HELP:                /* answered before loading */
            continue;
        case OPT_ONCE:
            c->once = 1;
            continue;
        case OPT_SET:
            if (apply_set(ld, arg) != 0)
                return -1;
            continue;
        case OPT_KAFKA_PROP:
            if (apply_kafka_prop(ld, arg) != 0)
                return -1;
            continue;
        case OPT_SOURCE: {
            int v;
            if (!lookup_name(&enum_settings[ENUM_OUTBOX_SOURCE], arg, &v))
                return fail(ld, "--source %s: expected table or wal", arg);
            set_enum(c, ENUM_OUTBOX_SOURCE, v);
            continue;
        }
        case OPT_DB:
            slot = &c->db, name = "--db";
            break;
        case OPT_KAFKA:
            slot = &c->kafka, name = "--kafka";
            break;
        case OPT_HOLDER:
            slot = &c->holder, name = "--holder";
            break;
        case OPT_METRICS: {
            slot = &c->metrics, name = "--metrics";
            const char *why = arg[0] ? metrics_problem(arg) : NULL;
            if (why)
                return fail(ld, "--metrics %s: %s", arg, why);
            break;
        }
        default:
            return fail(ld, "internal error: flag %d not handled", list[i].id);
        }
        if (!arg[0])
            return fail(ld, "%s: must not be empty", name);
        if (set_string(ld, slot, arg) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ load */

/* What no single layer can check: required settings, max_inflight. */
static int check_final(loader *ld)
{
    const relay_config *c = &ld->cfg;
    const char *where = ld->path ? ld->path : "the config file";
    if (!c->db)
        return fail(ld, "no database: give --db CONNINFO, set FERRY_DB, or set db: in %s", where);
    if (!c->kafka)
        return fail(ld, "no Kafka: give --kafka BOOTSTRAP (\"embedded\" for an in-process mock "
                    "cluster), set FERRY_KAFKA, or set kafka: bootstrap.servers: in %s", where);

    /* Kafka properties the order guarantee rests on (daemon/relay_kafka.c
     * says why each): refused here, with the other configuration errors. */
#define X_FIXED(name, value) {name, value},
    static const char *const fixed[][2] = {RELAY_FIXED_KAFKA_PROPS(X_FIXED)};
#undef X_FIXED
#define X_NAME(name) #name,
    static const char *const keyed[] = {RELAY_KEYED_PARTITIONERS(X_NAME)};
#undef X_NAME
    for (size_t i = 0; i < c->kafka_props_count; i++) {
        const relay_kv *kv = &c->kafka_props[i];
        for (size_t f = 0; f < sizeof fixed / sizeof fixed[0]; f++)
            if (strcmp(kv->name, fixed[f][0]) == 0 && strcmp(kv->value, fixed[f][1]) != 0)
                return fail(ld, "kafka property %s=%s: ferry-relay needs %s=%s to keep per-key "
                            "order and lose nothing", kv->name, kv->value, fixed[f][0],
                            fixed[f][1]);
        if (strcmp(kv->name, "partitioner") == 0) {
            bool ok = false;
            for (size_t k = 0; k < sizeof keyed / sizeof keyed[0]; k++)
                ok = ok || strcmp(kv->value, keyed[k]) == 0;
            if (!ok)
#define X_LIST(name) " " #name
                return fail(ld, "kafka property partitioner=%s: ferry-relay needs a partitioner "
                            "that keeps a key on one partition (one of"
                            RELAY_KEYED_PARTITIONERS(X_LIST) ")", kv->value);
#undef X_LIST
        }
    }

    if (c->max_inflight < c->batch_size) {
        /* Blame the one that was set; max_inflight if both were. */
        bool inflight = ld->from[INT_max_inflight].kind != FROM_DEFAULT;
        const origin *o = &ld->from[inflight ? INT_max_inflight : INT_batch_size];
        const char *key = inflight ? "max_inflight" : "batch_size";
        char what[64];
        if (inflight)
            snprintf(what, sizeof what, "must be at least batch_size (%d)", c->batch_size);
        else
            snprintf(what, sizeof what, "must be at most max_inflight (%d)", c->max_inflight);
        if (o->kind == FROM_FILE)
            return fail_at(ld, o->at, "%s: %s", key, what);
        return fail(ld, "--set %s: %s", o->arg, what);
    }
    return 0;
}

int relay_config_load(relay_config *cfg, int argc, char **argv, char *errbuf, size_t errlen)
{
    loader *ld = calloc(1, sizeof *ld);
    flag *flags = calloc(argc > 0 ? (size_t)argc : 1, sizeof *flags);
    size_t nflags = 0;
    int rc = -1;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!ld || !flags) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "out of memory reading the configuration");
        goto out;
    }
    ld->err = errbuf;
    ld->errlen = errlen;
    for (size_t k = 0; k < N_INT_SETTINGS; k++)
        *int_slot(&ld->cfg, &int_settings[k]) = (int)int_settings[k].def;
    for (int e = 0; e < N_ENUM_SETTINGS; e++)
        set_enum(&ld->cfg, e, enum_settings[e].def);
    if (set_string(ld, &ld->cfg.source, DEFAULT_SOURCE) != 0)
        goto out;

    if (parse_flags(ld, argc, argv, flags, &nflags) != 0)
        goto out;
    for (size_t i = 0; i < nflags; i++) {
        if (flags[i].id == OPT_HELP) {
            rc = 1;
            goto out;
        }
    }
    for (size_t i = 0; i < nflags; i++)
        if (flags[i].id == OPT_CONFIG)
            ld->path = flags[i].arg;
    if (!ld->path) {
        const char *env = getenv("FERRY_CONFIG");
        if (env && env[0]) {
            ld->path = env;
            ld->path_from_env = true;
        }
    }
    if (ld->path && !ld->path[0]) {
        fail(ld, "--config: must not be empty");
        goto out;
    }
    if (ld->path && load_file(ld) != 0)
        goto out;
    if (apply_env(ld) != 0 || apply_flags(ld, flags, nflags) != 0 || check_final(ld) != 0)
        goto out;

    *cfg = ld->cfg;
    memset(&ld->cfg, 0, sizeof ld->cfg);
    rc = 0;
out:
    if (ld)
        relay_config_free(&ld->cfg);
    free(ld);
    free(flags);
    if (rc != 0)
        memset(cfg, 0, sizeof *cfg);
    return rc;
}

void relay_config_free(relay_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->db);
    free(cfg->kafka);
    free(cfg->metrics);
    free(cfg->holder);
    free(cfg->source);
    for (size_t i = 0; i < cfg->kafka_props_count; i++) {
        free(cfg->kafka_props[i].name);
        free(cfg->kafka_props[i].value);
    }
    memset(cfg, 0, sizeof *cfg);
}
