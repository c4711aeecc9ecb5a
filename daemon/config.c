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
 *   source: "ferry://orders-service"   # CloudEvents ce_source, a URI-reference;
 *                               # default ferry://HOST/DBNAME of the database
 *   batch_size: 1000            # rows per fetch, 1..100000
 *   max_inflight: 20000         # produced, not yet acknowledged: batch_size..1000000
 *   poll_interval_ms: 1000      # backstop poll without NOTIFY, 10..3600000
 *   lease_ttl_ms: 10000         # 1000..3600000
 *   max_attempts: 5             # failed deliveries before a dead letter, 1..1000
 *   log_level: info             # error | warn | info | debug
 *   retention: delete           # delete | mark
 *   outbox_source: table        # table | wal (--outbox-source; also source: wal|table)
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
 * Over that the environment: FERRY_<NAME> for every setting (FERRY_DB,
 * FERRY_BATCH_SIZE, FERRY_LOG_LEVEL, ...; empty means unset) and
 * FERRY_KAFKA_PROP_<NAME> for librdkafka properties; then the flags
 * --<name> for every setting (--db, --batch-size, ...), --set NAME=VALUE,
 * --kafka-prop NAME=VALUE and --once, applied in the order given. All
 * three are generated from one list of settings (settings_table), and
 * every value goes through apply_value(). Any value may hold ${env:NAME}
 * and ${file:/path} references (confref.h), resolved where it is read, so
 * that an error names the setting and the place.
 *
 * The file is read into memory (at most CONFIG_FILE_MAX bytes) and walked
 * once by lib/yaml_walk.c, the reader of every YAML file of ferry's (saga
 * definitions, the reconciler's rules and configuration): every problem
 * in it is reported, not only the first, each as "FILE:LINE:COLUMN: KEY:
 * ..." (one a line, in document order). The walker refuses YAML syntax
 * errors, a second document, anchors and aliases ("billion laughs": so
 * memory stays linear in the file, whose size is capped), tags, nesting
 * deeper than FERRY_YW_DEPTH_MAX, unknown and duplicate keys; each value
 * it reads goes through apply_value(), as a value from the environment or
 * a flag does, and the kafka: map (any property name) is read here.
 *
 * Why not libcyaml, which this file used before: its schema stops at the
 * first error, cannot express the kafka: map, and reads an integer with
 * strtoll(value, &end, 0) without looking at end ("12abc" loaded as 12):
 * it needed an outline pass before it and our checks after it, and the
 * three reported in three styles.
 *
 * relay_config_load is not thread-safe: getopt_long keeps its state in
 * globals. Call it at start-up.
 */
#include "config.h"
#include "confref.h"
#include "httpd.h"
#include "../lib/internal.h"
#include "../lib/yaml_walk.h"

#include <librdkafka/rdkafka.h>
#include <yaml.h>

#include <assert.h>
#include <ctype.h>
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
};

/*
 * ce_source must be a URI-reference (RFC 3986, section 4.1): CloudEvents
 * SDKs refuse an event whose source is not one ("orders service" was
 * published, and the JavaScript SDK threw). Checked by characters, which
 * is what a reader's parser trips on: only unreserved, reserved and
 * percent-encoded octets, and a scheme, when there is one, of a letter
 * followed by letters, digits, "+", "-" or ".".
 */
const char *relay_source_problem(const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return "must not be empty";
    if (n > RELAY_SOURCE_MAX)
        return "is longer than 1024 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '%') {
            if (!isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2]))
                return "has a \"%\" that is not followed by two hex digits";
            i += 2;
        } else if (!(isalnum(ch) || strchr("-._~:/?#[]@!$&'()*+,;=", ch))) {
            return "is not a URI-reference (RFC 3986): a space, a quote, \"<>\\^`{|}\", a "
                   "control or a non-ASCII character must be percent-encoded";
        }
    }
    /* Before the first ":" of the first segment is a scheme: it must look
     * like one (a relative reference cannot have a ":" there). */
    size_t seg = strcspn(s, "/?#");
    const char *colon = memchr(s, ':', seg);
    if (colon != NULL) {
        if (colon == s || !isalpha((unsigned char)s[0]))
            return "has a \":\" in its first segment that does not end a scheme";
        for (const char *p = s; p < colon; p++)
            if (!(isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.'))
                return "has a \":\" in its first segment that does not end a scheme";
    }
    return NULL;
}

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

typedef struct int_setting {
    const char *name;
    size_t cfg_offset;                /* int in relay_config */
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
    [INT_##name] = {#name, offsetof(relay_config, name), def, lo, hi, doc},
    INT_SETTINGS(X_ROW)
#undef X_ROW
};

static int *int_slot(relay_config *c, const int_setting *s)
{
    return (int *)(void *)((char *)c + s->cfg_offset);
}

/* A name a setting takes, and its value. */
typedef struct name_value {
    const char *str;
    int val;
} name_value;
#define N_NAMES(a) ((unsigned)(sizeof(a) / sizeof((a)[0])))

static const name_value log_level_names[] = {
    {"error", 0}, {"warn", 1}, {"info", 2}, {"debug", 3},
};
static const name_value retention_names[] = {
    {"delete", RELAY_RETENTION_DELETE}, {"mark", RELAY_RETENTION_MARK},
};
static const name_value outbox_source_names[] = {
    {"table", RELAY_SOURCE_TABLE}, {"wal", RELAY_SOURCE_WAL},
};

typedef struct enum_setting {
    const char *name;
    const name_value *names;
    unsigned count;
    int def;                          /* a value of names */
    const char *doc;                  /* for --help */
} enum_setting;

enum { ENUM_LOG_LEVEL, ENUM_RETENTION, ENUM_OUTBOX_SOURCE, N_ENUM_SETTINGS };
static const enum_setting enum_settings[N_ENUM_SETTINGS] = {
    [ENUM_LOG_LEVEL] = {"log_level", log_level_names, N_NAMES(log_level_names), 2,
                        "the least severe log event written"},
    [ENUM_RETENTION] = {"retention", retention_names, N_NAMES(retention_names),
                        RELAY_RETENTION_DELETE,
                        "an acknowledged row is deleted, or marked published_at"},
    [ENUM_OUTBOX_SOURCE] = {"outbox_source", outbox_source_names,
                            N_NAMES(outbox_source_names), RELAY_SOURCE_TABLE,
                            "poll the outbox table, or stream the WAL slot (README, Two sources)"},
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

/*
 * The settings that are text: name (the file's key, --set name and
 * relay_config member), the default --help shows, what it means. kafka is
 * `kafka: bootstrap.servers:` in the file.
 */
#define STRING_SETTINGS(X)                                                                  \
    X(db, "none", "libpq connection string or URI (required)")                              \
    X(kafka, "none", "Kafka bootstrap servers (required; file: kafka: bootstrap.servers:); "  \
      "\"embedded\": a mock cluster in process")                                             \
    X(metrics, "off", "HOST:PORT of /metrics and /healthz (port 0 picks one, logged)")       \
    X(holder, "host:pid", "this relay's name in the leases, at most 51 bytes")               \
    X(source, "ferry://HOST/DBNAME", "CloudEvents ce_source of every message, a URI-reference; "  \
      "\"wal\" or \"table\" choose outbox_source instead")

enum {
#define X_INDEX(name, def, doc) STR_##name,
    STRING_SETTINGS(X_INDEX)
#undef X_INDEX
    N_STRING_SETTINGS
};

static const struct string_setting {
    const char *name;
    size_t cfg_offset;                /* char * in relay_config */
    const char *def;                  /* for --help */
    const char *doc;
} string_settings[N_STRING_SETTINGS] = {
#define X_ROW(name, def, doc) [STR_##name] = {#name, offsetof(relay_config, name), def, doc},
    STRING_SETTINGS(X_ROW)
#undef X_ROW
};

/*
 * Every setting, text, number or name, in one list: the file's key, the
 * environment variable FERRY_<KEY> and the flag --<key> (dashes for
 * underscores) are all derived from the name, so that a setting added to
 * any of the three tables above is settable the three ways, and --help
 * lists it with its default and variable, without a further edit.
 */
typedef enum setting_kind { SETTING_STRING, SETTING_INT, SETTING_ENUM } setting_kind;

enum { N_SETTINGS = N_STRING_SETTINGS + N_INT_SETTINGS + N_ENUM_SETTINGS };

typedef struct setting {
    const char *name;
    setting_kind kind;
    int index;                        /* into string_, int_ or enum_settings */
    char env[48];                     /* FERRY_BATCH_SIZE */
    char flag[48];                    /* --batch-size */
} setting;

static setting settings[N_SETTINGS];

static const setting *settings_table(void)
{
    static bool built;
    if (built)
        return settings;
    size_t k = 0;
    for (int i = 0; i < N_STRING_SETTINGS; i++)
        settings[k++] = (setting){.name = string_settings[i].name, .kind = SETTING_STRING, .index = i};
    for (int i = 0; i < N_INT_SETTINGS; i++)
        settings[k++] = (setting){.name = int_settings[i].name, .kind = SETTING_INT, .index = i};
    for (int i = 0; i < N_ENUM_SETTINGS; i++)
        settings[k++] = (setting){.name = enum_settings[i].name, .kind = SETTING_ENUM, .index = i};
    for (k = 0; k < N_SETTINGS; k++) {
        setting *s = &settings[k];
        size_t n = strlen(s->name);
        assert(n + sizeof "FERRY_" <= sizeof s->env && n + 3 <= sizeof s->flag);
        memcpy(s->env, "FERRY_", 6);
        memcpy(s->flag, "--", 2);
        for (size_t i = 0; i < n; i++) {
            char c = s->name[i];
            s->env[6 + i] = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
            s->flag[2 + i] = c == '_' ? '-' : c;
        }
        s->env[6 + n] = '\0';
        s->flag[2 + n] = '\0';
    }
    built = true;
    return settings;
}

static int setting_by_name(const char *name, size_t n)
{
    const setting *t = settings_table();
    for (int k = 0; k < N_SETTINGS; k++)
        if (strlen(t[k].name) == n && memcmp(t[k].name, name, n) == 0)
            return k;
    return -1;
}

/* The keys of the file, in the settings' order (kafka: is the map of
 * librdkafka properties, its bootstrap.servers the kafka setting). */
static const char *const *file_keys(void)
{
    static const char *keys[N_SETTINGS];
    const setting *t = settings_table();
    for (int k = 0; k < N_SETTINGS; k++)
        keys[k] = t[k].name;
    return keys;
}
_Static_assert(N_SETTINGS <= FERRY_YW_KEYS_MAX, "ferry_yw_read_mapping's table");

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

/* Where a value came from: for its messages, which name the place, and
 * for the cross-checks. */
typedef struct where {
    enum { FROM_DEFAULT, FROM_FILE, FROM_ENV, FROM_FLAG } kind;
    place at;                         /* FROM_FILE: the value's place */
    const char *label;                /* FROM_ENV: the variable; FROM_FLAG: the flag */
    const char *arg;                  /* FROM_FLAG: --set's NAME=VALUE, or NULL */
} where;

typedef struct loader {
    relay_config cfg;                 /* being built; the caller's on success */
    where from[N_INT_SETTINGS];
    char *err;
    size_t errlen;
    const char *path;                 /* the config file, or NULL */
    bool path_from_env;               /* named by FERRY_CONFIG */
    ferry__yw *walk;                   /* while the file is walked: where its errors go */
    bool oom;
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
    ferry__escape_text(ld->err + used, ld->errlen - used, raw);
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

/* The message, after the place w names: "FILE:LINE:COLUMN: KEY: ",
 * "FERRY_KEY: ", "--key: " or "--set KEY=VALUE: ". */
__attribute__((format(printf, 4, 5)))
static int fail_in(loader *ld, const where *w, const char *key, const char *fmt, ...)
{
    va_list ap;
    if (w->kind == FROM_FILE && ld->walk) {
        /* One of the file's errors; the walk goes on to find the others. */
        char msg[512];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        ferry__yw_error_at(ld->walk, (ferry__yw_place){(int)w->at.line, (int)w->at.column}, key,
                          "%s", msg);
        return -1;
    }
    if (w->kind == FROM_FILE)
        fail_at(ld, w->at, "%s: ", key);
    else
        fail(ld, "%s%s%s: ", w->label, w->arg ? " " : "", w->arg ? w->arg : "");
    va_start(ap, fmt);
    append_v(ld, fmt, ap);
    va_end(ap);
    return -1;
}

static int out_of_memory(loader *ld)
{
    ld->oom = true;
    return fail(ld, "out of memory reading the configuration");
}

/* "a, b or c" */
static void format_names(const name_value *names, unsigned count, char *buf, size_t len)
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

/* The value named text: 0 with it in *out, or -1 if e has no such name. */
static int lookup_name(const enum_setting *e, const char *text, int *out)
{
    for (unsigned i = 0; i < e->count; i++) {
        if (strcmp(e->names[i].str, text) == 0) {
            *out = (int)e->names[i].val;
            return 0;
        }
    }
    return -1;
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
    switch (ferry__parse_long(text, min, max, &v)) {
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

/* Bytes 0x20 .. 0x7e only. */
static bool printable_ascii(const char *t)
{
    for (; *t; t++)
        if ((unsigned char)*t < 0x20 || (unsigned char)*t > 0x7e)
            return false;
    return true;
}

/*
 * One setting's value from any layer, w saying which: its references
 * resolved (confref.h), checked, stored. The only way a setting is set
 * after its default, so that the file, the environment and the flags
 * accept the same values and refuse them with the same words.
 */
static int apply_value(loader *ld, int k, const char *raw, const where *w)
{
    const setting *s = &settings_table()[k];
    char why[512];
    char *text = NULL;
    int rc = -1;
    int expanded = s->kind == SETTING_STRING && s->index == STR_db
                       ? confref_expand_conninfo(raw, &text, why, sizeof why)
                       : confref_expand(raw, &text, why, sizeof why);
    if (expanded != 0)
        return fail_in(ld, w, s->name, "%s", why);
    switch (s->kind) {
    case SETTING_STRING: {
        const char *problem = NULL;
        if (s->index == STR_source && (strcmp(text, "wal") == 0 || strcmp(text, "table") == 0)) {
            /* Issue 14 spells the outbox source `--source wal` / `source:
             * wal`, while source is CloudEvents' ce_source: as a ce_source
             * these two words would be relative references naming nothing,
             * so they choose the outbox source (as outbox_source does) and
             * ce_source keeps its default. */
            set_enum(&ld->cfg, ENUM_OUTBOX_SOURCE,
                     text[0] == 'w' ? RELAY_SOURCE_WAL : RELAY_SOURCE_TABLE);
            rc = 0;
            break;
        }
        if (!text[0])
            problem = "must not be empty";
        else if (s->index == STR_metrics)
            problem = httpd_address_problem(text);
        else if (s->index == STR_source)
            problem = relay_source_problem(text);
        else if (s->index == STR_holder && strlen(text) > RELAY_HOLDER_MAX)
            problem = "is longer than " RELAY_HOLDER_MAX_TEXT " bytes (the session name "
                      "\"ferry-relay HOLDER\" must fit PostgreSQL's 63, by which a live relay "
                      "is known)";
        else if (s->index == STR_holder && !printable_ascii(text))
            problem = "must be printable ASCII (PostgreSQL rewrites other bytes of the session "
                      "name, \"ferry-relay HOLDER\", by which a live relay is known)";
        if (problem && s->index == STR_metrics && text[0])
            fail_in(ld, w, s->name, "%s, not \"%.64s\"", problem, text);
        else if (problem)
            fail_in(ld, w, s->name, "%s", problem);
        else
            rc = set_string(ld, (char **)(void *)((char *)&ld->cfg +
                                                  string_settings[s->index].cfg_offset), text);
        break;
    }
    case SETTING_INT: {
        const int_setting *is = &int_settings[s->index];
        if (parse_int(text, is->min, is->max, int_slot(&ld->cfg, is), why, sizeof why) != 0) {
            fail_in(ld, w, s->name, "%s", why);
            break;
        }
        ld->from[s->index] = *w;
        rc = 0;
        break;
    }
    case SETTING_ENUM: {
        const enum_setting *es = &enum_settings[s->index];
        int v;
        if (lookup_name(es, text, &v) != 0) {
            format_names(es->names, es->count, why, sizeof why);
            fail_in(ld, w, s->name, "invalid value \"%.64s\" (expected %s)", text, why);
            break;
        }
        set_enum(&ld->cfg, s->index, v);
        rc = 0;
        break;
    }
    }
    free(text);
    return rc;
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

/* Append a property the caller has checked is new and fits; place: where
 * it was set (relay_kv). */
static int append_prop(loader *ld, const char *name, size_t n, const char *value,
                       const char *set_at)
{
    relay_config *c = &ld->cfg;
    char *name_copy = strndup(name, n);
    char *value_copy = strdup(value);
    char *place_copy = strdup(set_at);
    if (!name_copy || !value_copy || !place_copy) {
        free(name_copy);
        free(value_copy);
        free(place_copy);
        return out_of_memory(ld);
    }
    c->kafka_props[c->kafka_props_count].name = name_copy;
    c->kafka_props[c->kafka_props_count].value = value_copy;
    c->kafka_props[c->kafka_props_count].place = place_copy;
    c->kafka_props_count++;
    return 0;
}

/* ------------------------------------------------------------ the file */

typedef struct file_walk {
    loader *ld;
    ferry__yw_place prop_at[RELAY_KAFKA_PROPS_MAX];  /* parallel to cfg.kafka_props */
    ferry__yw_place bootstrap_at;
    bool too_many;                    /* "more than N properties" said */
} file_walk;

static ferry__yw_place at_of(const yaml_event_t *ev)
{
    return ferry__yw_place_of(ev->start_mark);
}

static place place_from(ferry__yw_place p)
{
    return (place){(unsigned long)p.line, (unsigned long)p.column};
}

/* The value of one NAME: VALUE of the kafka: map, whose name event is key
 * (the caller deletes it). Errors about the name are "kafka: ...", about
 * the value "kafka: NAME: ...", as the relay has always said them. */
static int read_kafka_prop(file_walk *fw, ferry__yw *w, const yaml_event_t *key)
{
    loader *ld = fw->ld;
    ferry__yw_place key_at = at_of(key);
    char buf[96];
    const char *name = NULL;
    size_t n = 0;
    if (key->type != YAML_SCALAR_EVENT) {
        ferry__yw_error(w, key_at, "a property name must be a string, not %s",
                       ferry__yw_describe(key, buf, sizeof buf));
        if (ferry__yw_skip(w, key) != 0)
            return -1;
    } else {
        name = ferry__yw_scalar(key);
        n = strlen(name);
        const relay_kv *dup = find_prop(&ld->cfg, name, n);
        if (!valid_prop_name(name, n)) {
            ferry__yw_error(w, key_at, "invalid property name \"%.64s\": expected printable "
                           "characters without spaces", name);
            name = NULL;
        } else if (dup) {
            ferry__yw_error(w, key_at, "duplicate property \"%s\" (first at line %d)", name,
                           fw->prop_at[dup - ld->cfg.kafka_props].line);
            name = NULL;
        } else if (is_bootstrap(name, n) && ld->cfg.kafka) {
            ferry__yw_error(w, key_at, "duplicate property \"%s\": the bootstrap servers are set "
                           "at line %d already", name, fw->bootstrap_at.line);
            name = NULL;
        }
    }

    size_t old = strlen(w->path);
    if (name)
        snprintf(w->path + old, sizeof w->path - old, ": %s", name);
    yaml_event_t val;
    if (ferry__yw_next(w, &val) != 0) {
        w->path[old] = '\0';
        return -1;
    }
    int rc = 0;
    char *value = NULL;
    char why[512];
    if (!name) {
        rc = ferry__yw_skip(w, &val);
    } else if (val.type != YAML_SCALAR_EVENT) {
        ferry__yw_error(w, key_at, "expected a single value, not %s",
                       ferry__yw_describe(&val, buf, sizeof buf));
        rc = ferry__yw_skip(w, &val);
    } else if (ferry__yw_is_null(&val)) {
        ferry__yw_error(w, at_of(&val), "no value");
    } else if (confref_expand(ferry__yw_scalar(&val), &value, why, sizeof why) != 0) {
        ferry__yw_error(w, at_of(&val), "%s", why);
    } else if (is_bootstrap(name, n)) {
        if (value[0] == '\0')
            ferry__yw_error(w, at_of(&val), "must not be empty");
        else if (set_string(ld, &ld->cfg.kafka, value) == 0)
            fw->bootstrap_at = key_at;
    } else if (ld->cfg.kafka_props_count == RELAY_KAFKA_PROPS_MAX) {
        w->path[old] = '\0';
        if (!fw->too_many)
            ferry__yw_error(w, key_at, "more than %d properties", RELAY_KAFKA_PROPS_MAX);
        fw->too_many = true;
    } else {
        fw->prop_at[ld->cfg.kafka_props_count] = key_at;
        char set_at[RELAY_PLACE_MAX];
        snprintf(set_at, sizeof set_at, "%s:%d:%d: kafka: %s", ld->path, key_at.line,
                 key_at.column, name);
        append_prop(ld, name, n, value, set_at);
    }
    free(value);
    yaml_event_delete(&val);
    w->path[old] = '\0';
    return ld->oom ? ferry__yw_oom(w) : rc;
}

/* The value of kafka:, its first event ev (the walker deletes it). */
static int read_kafka(file_walk *fw, ferry__yw *w, const yaml_event_t *ev)
{
    char buf[96];
    if (ev->type == YAML_SCALAR_EVENT) {
        if (!ferry__yw_is_null(ev))
            ferry__yw_error(w, at_of(ev), "expected a mapping of librdkafka properties "
                           "(NAME: VALUE), not \"%.64s\"", ferry__yw_scalar(ev));
        return 0;
    }
    if (ev->type != YAML_MAPPING_START_EVENT) {
        ferry__yw_error(w, at_of(ev), "expected a mapping of librdkafka properties (NAME: VALUE), "
                       "not %s", ferry__yw_describe(ev, buf, sizeof buf));
        return ferry__yw_skip(w, ev);
    }
    yaml_event_t key;
    int more;
    while ((more = ferry__yw_next_item(w, &key)) > 0) {
        int rc = read_kafka_prop(fw, w, &key);
        yaml_event_delete(&key);
        if (rc != 0)
            return -1;
    }
    return more;
}

/* One setting of the file: its value applied where it is read. */
static int file_value(ferry__yw *w, int index, ferry__yw_place key_at, yaml_event_t *val,
                      void *arg)
{
    file_walk *fw = arg;
    const setting *s = &settings_table()[index];
    char buf[96];
    if (s->kind == SETTING_STRING && s->index == STR_kafka)
        return read_kafka(fw, w, val);
    if (val->type != YAML_SCALAR_EVENT) {
        /* At the key: a block collection starts on the line after it. */
        ferry__yw_error(w, key_at, "expected a single value, not %s",
                       ferry__yw_describe(val, buf, sizeof buf));
        return ferry__yw_skip(w, val);
    }
    if (ferry__yw_is_null(val))
        return 0;                     /* not set here */
    if (s->kind == SETTING_INT && !ferry__yw_is_plain(val)) {
        ferry__yw_error(w, at_of(val), "expected a decimal integer, not a quoted string");
        return 0;
    }
    where from = {.kind = FROM_FILE, .at = place_from(at_of(val))};
    apply_value(fw->ld, index, ferry__yw_scalar(val), &from);
    return fw->ld->oom ? ferry__yw_oom(w) : 0;
}

/* The walker's errors into the caller's buffer, one a line (the texts
 * are escaped already: ferry__yw_add_error). The first is always there,
 * cut between characters if it must be; a later one only whole. */
static int report_errors(loader *ld, const ferry_saga_load_errors *errs)
{
    for (size_t i = 0; i < errs->count && ld->err && ld->errlen; i++) {
        const ferry_saga_load_error *e = &errs->errors[i];
        char line[sizeof e->file + sizeof e->field + sizeof e->message + 64];
        int n;
        if (e->line > 0)
            n = snprintf(line, sizeof line, "%s%s:%d:%d: %s%s%s", i ? "\n" : "", e->file, e->line,
                         e->column, e->field, e->field[0] ? ": " : "", e->message);
        else
            n = snprintf(line, sizeof line, "%s%s: %s%s%s", i ? "\n" : "", e->file, e->field,
                         e->field[0] ? ": " : "", e->message);
        if (i == 0) {
            fail(ld, "%s", line);
            continue;
        }
        size_t used = strlen(ld->err);
        if (n < 0 || used + (size_t)n >= ld->errlen)
            break;
        memcpy(ld->err + used, line, (size_t)n + 1);
    }
    return -1;
}

static int walk_file(loader *ld, const char *text, size_t len)
{
    /* Large (an error list, a place per kafka property): not on the
     * stack; they live and go together, so in one allocation. */
    struct {
        ferry__yw w;
        file_walk fw;
        ferry_saga_load_errors errs;
    } *walk = calloc(1, sizeof *walk);
    if (!walk) {
        out_of_memory(ld);
        return -1;
    }
    ferry__yw *w = &walk->w;
    ferry_saga_load_errors *errs = &walk->errs;
    walk->fw.ld = ld;
    ferry__yw_init(w, text, len, ld->path, "the configuration file", errs);
    const ferry__yw_doc doc = {
        .expected = "a mapping of settings (NAME: VALUE)",
        .one = "configuration",
        .keys = file_keys(),
        .nkeys = N_SETTINGS,
        .value = file_value,
        .arg = &walk->fw,
        .empty_ok = true,
    };
    ld->walk = w;
    ferry__yw_read_document(w, &doc);
    ld->walk = NULL;
    int rc = -1;
    if (ld->oom || w->oom) {
        out_of_memory(ld);
    } else if (errs->total > 0) {
        ferry__yw_sort_errors(errs);
        report_errors(ld, errs);
    } else {
        rc = 0;
    }
    free(walk);
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
    if (ferry__read_capped(fd, (char *)buf, CONFIG_FILE_MAX, &used) != 0) {
        fail(ld, "%s: could not read the config file%s: %s", ld->path, named,
             strerror_r(errno, ebuf, sizeof ebuf));
        free(buf);
        close(fd);
        return -1;
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
    unsigned char *text = NULL;
    size_t len = 0;
    int rc = read_file(ld, &text, &len);
    if (rc == 0)
        rc = walk_file(ld, (const char *)text, len);
    free(text);
    return rc;
}

/* ------------------------------------------------------------ kafka properties */

/*
 * One librdkafka property from the environment or a flag: adds it or
 * replaces the file's; bootstrap.servers is cfg->kafka. label names the
 * place in messages ("--kafka-prop NAME=VALUE", "FERRY_KAFKA_PROP_X").
 */
static int apply_prop(loader *ld, const char *label, const char *set_at, const char *name,
                      size_t n, const char *raw)
{
    relay_config *c = &ld->cfg;
    char why[512];
    char *value = NULL;
    if (!valid_prop_name(name, n))
        return fail(ld, "%s: invalid property name: expected printable characters without "
                    "spaces", label);
    if (confref_expand(raw, &value, why, sizeof why) != 0)
        return fail(ld, "%s: %s", label, why);
    int rc;
    relay_kv *kv;
    if (is_bootstrap(name, n)) {
        rc = value[0] ? set_string(ld, &c->kafka, value)
                      : fail(ld, "%s: must not be empty", label);
    } else if ((kv = find_prop(c, name, n)) != NULL) {
        rc = set_string(ld, &kv->value, value);
        if (rc == 0)
            rc = set_string(ld, &kv->place, set_at);
    } else if (c->kafka_props_count == RELAY_KAFKA_PROPS_MAX) {
        rc = fail(ld, "%s: more than %d kafka properties", label, RELAY_KAFKA_PROPS_MAX);
    } else {
        rc = append_prop(ld, name, n, value, set_at);
    }
    free(value);
    return rc;
}

/* --kafka-prop NAME=VALUE */
static int apply_kafka_prop(loader *ld, const char *arg)
{
    char label[160];
    snprintf(label, sizeof label, "--kafka-prop %s", arg);
    const char *eq = strchr(arg, '=');
    if (!eq)
        return fail(ld, "%s: expected NAME=VALUE", label);
    /* The place kept for a later error names the property, not its value:
     * a value librdkafka refuses may be a password. */
    char set_at[160];
    snprintf(set_at, sizeof set_at, "--kafka-prop %.*s", (int)(eq - arg), arg);
    return apply_prop(ld, label, set_at, arg, (size_t)(eq - arg), eq + 1);
}

/* ------------------------------------------------------------ environment */

#define KAFKA_PROP_ENV "FERRY_KAFKA_PROP_"

/*
 * FERRY_<SETTING> for every setting (empty means unset), then each
 * FERRY_KAFKA_PROP_<NAME>, NAME spelt as Confluent's Kafka images read
 * CONNECT_<NAME>: in capitals, "_" for a dot, "__" for an underscore
 * (librdkafka has enabled_events), "___" for a dash; e.g.
 * FERRY_KAFKA_PROP_SASL_PASSWORD is sasl.password. tests/test_config.c
 * checks every librdkafka property comes back from its spelling. In the
 * order of environ, so that the outcome does not depend on a sort.
 */
static int apply_env(loader *ld)
{
    extern char **environ;
    const setting *t = settings_table();
    for (int k = 0; k < N_SETTINGS; k++) {
        const char *value = getenv(t[k].env);
        if (!value || !value[0])
            continue;
        where w = {.kind = FROM_ENV, .label = t[k].env};
        if (apply_value(ld, k, value, &w) != 0)
            return -1;
    }
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, KAFKA_PROP_ENV, sizeof KAFKA_PROP_ENV - 1) != 0)
            continue;
        const char *name = *e + sizeof KAFKA_PROP_ENV - 1;
        const char *eq = strchr(name, '=');
        if (!eq || eq[1] == '\0')       /* empty: unset, as for the settings */
            continue;
        char label[128], prop[96];
        size_t n = (size_t)(eq - name);
        snprintf(label, sizeof label, "%.*s", (int)(eq - *e), *e);
        if (n == 0 || n >= sizeof prop)
            return fail(ld, "%s: expected %sNAME, NAME a librdkafka property in capitals",
                        label, KAFKA_PROP_ENV);
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            char c = name[i];
            if (c != '_') {
                prop[m++] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
                continue;
            }
            size_t run = strspn(name + i, "_");
            if (run > 3 || i + run >= n)
                return fail(ld, "%s: expected %sNAME, NAME a librdkafka property in capitals "
                            "with _ for a dot, __ for an underscore, ___ for a dash", label,
                            KAFKA_PROP_ENV);
            prop[m++] = run == 1 ? '.' : run == 2 ? '_' : '-';
            i += run - 1;
        }
        if (apply_prop(ld, label, label, prop, m, eq + 1) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ flags */

/*
 * The flags that are not settings: name, argument (NULL: none), and the
 * help line. Each setting has a flag of its own besides (settings_table);
 * the getopt table and --help are both generated from the two lists.
 */
#define RUN_FLAGS(X)                                                                      \
    X(OPT_CONFIG, "config", "FILE", "YAML settings (README: ferry-relay); flags override it") \
    X(OPT_ONCE, "once", NULL,                                                             \
      "publish what is ready, wait for every delivery report, exit (1 if any failed)")   \
    X(OPT_SET, "set", "NAME=VALUE", "any setting below, by its name (repeatable)")        \
    X(OPT_KAFKA_PROP, "kafka-prop", "NAME=VALUE",                                         \
      "a librdkafka property, passed through (TLS, SASL, ...; repeatable)")              \
    X(OPT_HELP, "help", NULL, "this text")

enum {
    OPT_BASE_ = 255,
#define X_ENUM(id, name, arg, doc) id,
    RUN_FLAGS(X_ENUM)
#undef X_ENUM
    OPT_SETTING_ = 1024,              /* + the setting's index in settings_table() */
};

static const struct flag_doc {
    const char *name, *arg, *doc;
} flag_docs[] = {
#define X_DOC(id, name, arg, doc) {name, arg, doc},
    RUN_FLAGS(X_DOC)
#undef X_DOC
};
enum { N_RUN_FLAGS = sizeof flag_docs / sizeof flag_docs[0] };

static struct option long_options[N_RUN_FLAGS + N_SETTINGS + 1];

const struct option *relay_config_options(void)
{
    if (long_options[0].name)
        return long_options;
    static const int ids[] = {
#define X_ID(id, name, arg, doc) id,
        RUN_FLAGS(X_ID)
#undef X_ID
    };
    size_t n = 0;
    for (size_t i = 0; i < N_RUN_FLAGS; i++)
        long_options[n++] = (struct option){flag_docs[i].name,
                                            flag_docs[i].arg ? required_argument : no_argument,
                                            NULL, ids[i]};
    const setting *t = settings_table();
    for (int k = 0; k < N_SETTINGS; k++)
        long_options[n++] = (struct option){t[k].flag + 2, required_argument, NULL,
                                            OPT_SETTING_ + k};
    long_options[n] = (struct option){NULL, 0, NULL, 0};
    return long_options;
}

size_t relay_config_setting_count(void)
{
    return N_SETTINGS;
}

const char *relay_config_setting_name(size_t i)
{
    return i < N_SETTINGS ? settings_table()[i].name : NULL;
}

const char *relay_config_setting_env(size_t i)
{
    return i < N_SETTINGS ? settings_table()[i].env : NULL;
}

const char *relay_config_setting_flag(size_t i)
{
    return i < N_SETTINGS ? settings_table()[i].flag : NULL;
}

bool relay_config_file_key_is_setting(const char *key)
{
    return strcmp(key, "kafka") == 0 || setting_by_name(key, strlen(key)) >= 0;
}

const char *relay_config_file_key(size_t i)
{
    return i < N_SETTINGS ? file_keys()[i] : NULL;
}

/* "DEFAULT (RANGE)" of setting k, for --help. */
static void describe_default(const setting *s, char *buf, size_t len)
{
    switch (s->kind) {
    case SETTING_STRING:
        snprintf(buf, len, "%s", string_settings[s->index].def);
        return;
    case SETTING_INT: {
        const int_setting *is = &int_settings[s->index];
        snprintf(buf, len, "%ld (%ld..%ld)", is->def, is->min, is->max);
        return;
    }
    case SETTING_ENUM: {
        const enum_setting *es = &enum_settings[s->index];
        const char *def = "?";
        for (unsigned i = 0; i < es->count; i++)
            if ((int)es->names[i].val == es->def)
                def = es->names[i].str;
        size_t used = (size_t)snprintf(buf, len, "%s (", def);
        for (unsigned i = 0; i < es->count && used < len; i++)
            used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? "|" : "",
                                     es->names[i].str);
        if (used < len)
            snprintf(buf + used, len - used, ")");
        return;
    }
    }
}

void relay_config_usage(FILE *out)
{
    const setting *t = settings_table();
    fprintf(out, "Options (defaults < file < environment < flags):\n");
    for (size_t i = 0; i < N_RUN_FLAGS; i++) {
        const struct flag_doc *f = &flag_docs[i];
        char left[40];
        snprintf(left, sizeof left, "--%s%s%s", f->name, f->arg ? " " : "", f->arg ? f->arg : "");
        fprintf(out, "  %-24s %s\n", left, f->doc);
        if (strcmp(f->name, "config") == 0)
            fprintf(out, "  %-24s $FERRY_CONFIG\n", "");
        if (strcmp(f->name, "kafka-prop") == 0)
            fprintf(out, "  %-24s $" KAFKA_PROP_ENV "NAME: _ for a dot, __ for _, ___ for -\n"
                    "  %-24s (sasl.password: $" KAFKA_PROP_ENV "SASL_PASSWORD)\n", "", "");
    }
    fprintf(out, "\nSettings: NAME: in the file, $FERRY_NAME, --name VALUE or --set NAME=VALUE.\n"
                 "  NAME              DEFAULT (RANGE)              MEANING\n");
    for (int k = 0; k < N_SETTINGS; k++) {
        const char *doc = t[k].kind == SETTING_STRING ? string_settings[t[k].index].doc
                          : t[k].kind == SETTING_INT  ? int_settings[t[k].index].doc
                                                      : enum_settings[t[k].index].doc;
        char def[160];
        describe_default(&t[k], def, sizeof def);
        fprintf(out, "  %-17s %-28s %s\n", t[k].name, def, doc);
        fprintf(out, "  %-17s %s VALUE, $%s\n", "", t[k].flag, t[k].env);
    }
    fprintf(out, "\nAny value may hold ${env:NAME} (a variable) or ${file:/path} (a file's\n"
                 "contents, one trailing newline dropped), e.g. for passwords; $${ is a\n"
                 "literal ${. An empty variable counts as unset.\n"
                 "\nExit status: 0 stopped cleanly (--once: all published), 1 an operational\n"
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
    const struct option *options = relay_config_options();
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:h", options, NULL)) != -1) {
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
    const setting *t = settings_table();
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < N_SETTINGS && used < len; k++) {
        int n = snprintf(buf + used, len - used, "%s%s", k ? ", " : "", t[k].name);
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
    int k = setting_by_name(arg, n);
    if (k < 0) {
        char names[512];
        list_settings(names, sizeof names);
        return fail(ld, "--set %s: unknown setting \"%.*s\" (one of %s)", arg, (int)n, arg,
                    names);
    }
    where w = {.kind = FROM_FLAG, .label = "--set", .arg = arg};
    return apply_value(ld, k, eq + 1, &w);
}

static int apply_flags(loader *ld, const flag *list, size_t count)
{
    relay_config *c = &ld->cfg;
    for (size_t i = 0; i < count; i++) {
        const char *arg = list[i].arg;
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
        default:
            break;
        }
        int k = list[i].id - OPT_SETTING_;
        if (k < 0 || k >= N_SETTINGS)
            return fail(ld, "internal error: flag %d not handled", list[i].id);
        where w = {.kind = FROM_FLAG, .label = settings_table()[k].flag};
        if (apply_value(ld, k, arg, &w) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ load */

/* Another error after the one begun (fail): on a line of its own (the
 * newline raw, the text escaped as fail's is), when it fits whole. */
__attribute__((format(printf, 2, 3)))
static void another(loader *ld, const char *fmt, ...)
{
    if (!ld->err || ld->errlen == 0)
        return;
    size_t used = strlen(ld->err);
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    char raw[1024];
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    ferry__escape_text(line, sizeof line, raw);
    size_t n = strlen(line);
    if (used + 1 + n >= ld->errlen)
        return;
    ld->err[used] = '\n';
    memcpy(ld->err + used + 1, line, n + 1);
}

/* 0 when kv may be given to librdkafka; else why not, in why. scratch: a
 * configuration librdkafka checks the value on (any value it takes is
 * set in it, to no effect). */
static int kafka_prop_problem(rd_kafka_conf_t *scratch, const relay_kv *kv, char *why,
                              size_t size)
{
#define X_FIXED(name, value) {name, value},
    static const char *const fixed[][2] = {RELAY_FIXED_KAFKA_PROPS(X_FIXED)};
#undef X_FIXED
#define X_NAME(name) #name,
    static const char *const keyed[] = {RELAY_KEYED_PARTITIONERS(X_NAME)};
#undef X_NAME
    for (size_t f = 0; f < sizeof fixed / sizeof fixed[0]; f++)
        if (strcmp(kv->name, fixed[f][0]) == 0 && strcmp(kv->value, fixed[f][1]) != 0) {
            snprintf(why, size, "kafka property %s=%s: ferry-relay needs %s=%s to keep per-key "
                     "order and lose nothing", kv->name, kv->value, fixed[f][0], fixed[f][1]);
            return -1;
        }
    if (strcmp(kv->name, "partitioner") == 0) {
        for (size_t k = 0; k < sizeof keyed / sizeof keyed[0]; k++)
            if (strcmp(kv->value, keyed[k]) == 0)
                return 0;
#define X_LIST(name) " " #name
        snprintf(why, size, "kafka property partitioner=%s: ferry-relay needs a partitioner "
                 "that keeps a key on one partition (one of" RELAY_KEYED_PARTITIONERS(X_LIST) ")",
                 kv->value);
#undef X_LIST
        return -1;
    }
    if (strcmp(kv->name, "transactional.id") == 0) {
        /* A transactional producer refuses every produce() outside a
         * transaction the relay never begins: each message failed and went
         * to the dead letters while /healthz said ok (an outside audit). */
        snprintf(why, size, "kafka property transactional.id: ferry-relay produces "
                 "idempotently, not in Kafka transactions; leave it unset");
        return -1;
    }
    if (strcmp(kv->name, "plugin.library.paths") == 0)
        return 0;
    char errstr[256];
    if (rd_kafka_conf_set(scratch, kv->name, kv->value, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        snprintf(why, size, "kafka property %s: %s", kv->name, errstr);
        return -1;
    }
    return 0;
}

/* max_inflight against batch_size. */
static int check_batch(loader *ld)
{
    const relay_config *c = &ld->cfg;

    if (c->max_inflight < c->batch_size) {
        /* Blame the one that was set; max_inflight if both were. */
        bool inflight = ld->from[INT_max_inflight].kind != FROM_DEFAULT;
        const where *o = &ld->from[inflight ? INT_max_inflight : INT_batch_size];
        const char *key = inflight ? "max_inflight" : "batch_size";
        char what[64];
        if (inflight)
            snprintf(what, sizeof what, "must be at least batch_size (%d)", c->batch_size);
        else
            snprintf(what, sizeof what, "must be at most max_inflight (%d)", c->max_inflight);
        return fail_in(ld, o, key, "%s", what);
    }
    return 0;
}

/* Properties the probe leaves out: what loads code (plugins), and what
 * makes a producer act on the world as it starts (GSSAPI runs kinit, an
 * OIDC oauthbearer asks its token endpoint, SSL reads its files) or
 * reaches a broker. Their values were each checked alone; the probe is
 * for what is refused together with the fixed properties. */
static bool probe_skips(const char *name)
{
    return strcmp(name, "plugin.library.paths") == 0 || strncmp(name, "sasl.", 5) == 0 ||
           strncmp(name, "ssl.", 4) == 0 || strncmp(name, "ssl_", 4) == 0 ||
           strcmp(name, "security.protocol") == 0 || strcmp(name, "bootstrap.servers") == 0 ||
           strcmp(name, "metadata.broker.list") == 0;
}

/*
 * Makes a producer of c's Kafka properties but the one at skip (-1: none),
 * with the fixed ones, no brokers and nothing logged, and destroys it:
 * whether librdkafka takes them together. 0 it does; 1 it does not (why
 * in errstr); -1 out of memory. plugin.library.paths is left out, as in
 * the check of each (it loads the plugins).
 */
static int kafka_probe(const relay_config *c, long skip, char *errstr, size_t size)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf)
        return -1;
    for (size_t i = 0; i < c->kafka_props_count; i++)
        if ((long)i != skip && !probe_skips(c->kafka_props[i].name))
            rd_kafka_conf_set(conf, c->kafka_props[i].name, c->kafka_props[i].value, errstr,
                              size);
#define X_SET(name, value) rd_kafka_conf_set(conf, name, value, errstr, size);
    RELAY_FIXED_KAFKA_PROPS(X_SET)
    X_SET("bootstrap.servers", "")
    X_SET("log_level", "0")         /* its warnings are the real producer's to log */
    X_SET("statistics.interval.ms", "0")
#undef X_SET
    errstr[0] = '\0';
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, size);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_destroy(rk);
    return 0;
}

/* What no single layer can check: required settings, max_inflight. */
static int check_final(loader *ld)
{
    const relay_config *c = &ld->cfg;
    const char *file = ld->path ? ld->path : "the config file";
    if (!c->db)
        return fail(ld, "no database: give --db CONNINFO, set FERRY_DB, or set db: in %s", file);
    if (!c->kafka)
        return fail(ld, "no Kafka: give --kafka BOOTSTRAP (\"embedded\" for an in-process mock "
                    "cluster), set FERRY_KAFKA, or set kafka: bootstrap.servers: in %s", file);

    /* Kafka properties: those the order guarantee rests on
     * (daemon/relay_kafka.c says why each), then every other by
     * librdkafka's own check on a scratch configuration, so that an
     * unknown name or a bad value is a configuration error (exit 2) here
     * rather than a failure (exit 1) at start. Each error names where the
     * property was set, and all of them are said, one a line, as the
     * file's own errors are. plugin.library.paths is left to the producer:
     * setting it loads the plugins. A value librdkafka refuses is not
     * quoted: it may be a password. */
    rd_kafka_conf_t *scratch = rd_kafka_conf_new();
    if (!scratch)
        return out_of_memory(ld);
    int bad = 0;
    for (size_t i = 0; i < c->kafka_props_count; i++) {
        const relay_kv *kv = &c->kafka_props[i];
        char why[512];
        if (kafka_prop_problem(scratch, kv, why, sizeof why) == 0)
            continue;
        if (bad == 0)
            fail(ld, "%s: %s", kv->place ? kv->place : "kafka", why);
        else
            another(ld, "%s: %s", kv->place ? kv->place : "kafka", why);
        bad++;
    }
    rd_kafka_conf_destroy(scratch);
    if (bad > 0)
        return -1;
    if (check_batch(ld) != 0)
        return -1;

    /* Properties each fine alone may not be together, with the fixed ones
     * (max.in.flight.requests.per.connection=100, or retries=0, beside
     * enable.idempotence): librdkafka says so only when it makes the
     * producer, which used to be after the database (exit 1, or hidden
     * behind a database error). A producer is made here on a scratch
     * configuration, without brokers, and destroyed at once; when it
     * cannot be, the property without which it can is blamed, by its
     * place. */
    char errstr[512];
    int probe = kafka_probe(c, -1, errstr, sizeof errstr);
    if (probe == 0)
        return 0;
    if (probe < 0)
        return out_of_memory(ld);
    for (size_t i = 0; i < c->kafka_props_count; i++) {
        char other[512];
        if (kafka_probe(c, (long)i, other, sizeof other) == 0) {
            const relay_kv *kv = &c->kafka_props[i];
            return fail(ld, "%s: kafka property %s: %s", kv->place ? kv->place : "kafka",
                        kv->name, errstr);
        }
    }
    return fail(ld, "kafka properties: %s", errstr);
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

int relay_config_file_db(const char *path, int path_from_env, char **db, char *errbuf,
                         size_t errlen)
{
    loader *ld = calloc(1, sizeof *ld);
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!ld) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "out of memory reading the configuration");
        return -1;
    }
    ld->err = errbuf;
    ld->errlen = errlen;
    ld->path = path;
    ld->path_from_env = path_from_env != 0;
    /* The whole file is checked as run checks it, but only db is kept:
     * the cross-checks of check_final are run's. */
    for (size_t k = 0; k < N_INT_SETTINGS; k++)
        *int_slot(&ld->cfg, &int_settings[k]) = (int)int_settings[k].def;
    int rc = path[0] ? load_file(ld) : fail(ld, "--config: must not be empty");
    if (rc == 0) {
        *db = ld->cfg.db;
        ld->cfg.db = NULL;
    }
    relay_config_free(&ld->cfg);
    free(ld);
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
        free(cfg->kafka_props[i].place);
    }
    memset(cfg, 0, sizeof *cfg);
}

int relay_config_subcommand_db(const char *cmd, const char *flag_db, const char *config,
                               char **db)
{
    char *file_db = NULL;
    const char *path = config ? config : getenv("FERRY_CONFIG");
    if (path != NULL && path[0] != '\0') {
        char errbuf[1024];
        if (relay_config_file_db(path, config == NULL, &file_db, errbuf, sizeof errbuf) != 0) {
            fprintf(stderr, "ferry-relay %s: %s\n", cmd, errbuf);
            return -1;
        }
    }
    const char *env = getenv("FERRY_DB");
    const char *use = flag_db ? flag_db : env && env[0] ? env : file_db;
    if (use == NULL || use[0] == '\0') {
        fprintf(stderr, "ferry-relay %s: no database: give --db CONNINFO, set FERRY_DB, "
                "or db: in the --config file\n", cmd);
        free(file_db);
        return -1;
    }
    if (use == file_db) {       /* resolved where the file was read */
        *db = file_db;
        return 0;
    }
    /* --db and FERRY_DB may hold references as run's do: resolved here
     * too (they were taken as they were written, "${env:X}" and all). */
    free(file_db);
    char why[512];
    if (confref_expand_conninfo(use, db, why, sizeof why) != 0) {
        fprintf(stderr, "ferry-relay %s: %s: %s\n", cmd, flag_db ? "--db" : "FERRY_DB", why);
        return -1;
    }
    return 0;
}
