/*
 * rules.c — the reconciler's rules file (--rules FILE): budgets for the
 * sweeps and the user's compliance rules, from YAML: load, check, free.
 *
 * The format (examples/rules/shop.yaml is this file):
 *
 *   # ferry-reconcile rules: budgets for the sweeps, and compliance rules.
 *   budgets:                      # every key optional; the defaults are shown
 *     outbox_lag: 60s             # unpublished longer than this is lag
 *     max_attempts: 10            # outbox rows attempted this often are dead-lettered (1..1000)
 *     saga_grace: 30s             # a saga timer overdue by more than this was missed
 *     inbox_retention: 7d         # inbox rows are kept this long (the dedupe window)
 *     outbox_retention: 7d        # published rows kept under the relay's mark retention
 *     statement_timeout: 30s      # each of the reconciler's own statements
 *     batch: 1000                 # rows per repair transaction (1..100000)
 *   rules:
 *     - name: release-stale-reservations        # [A-Za-z0-9._-], 1..128, unique
 *       description: a reservation held for more than 15 minutes with no confirmed order
 *       detect: |
 *         SELECT r.id AS key, jsonb_build_object('reservation_id', r.id) AS payload
 *           FROM shop.reservation r
 *          WHERE r.held_at < now() - interval '15 minutes'
 *            AND NOT EXISTS (SELECT 1 FROM shop.confirmed_order c WHERE c.order_id = r.order_id)
 *       timeout: 2s               # statement timeout of the detect query; default 5s, at most 10m
 *       max_rows: 1000            # rows acted on per pass; default 1000, 1..100000
 *       repeat_after: 10m         # a row still found this long after its message is sent again; default 10m
 *       emit:
 *         topic: shop.inventory   # a valid Kafka topic name: [A-Za-z0-9._-], 1..249, not "." or ".."
 *         type: ReleaseReservation   # 1..255 bytes
 *
 * Both top-level keys are optional, and either may be left empty (null):
 * an empty mapping is a valid rules file, an empty file is not. Durations
 * are as in saga definitions: "250ms", "30s", "5m", "1h30m", "7d", or a
 * plain integer of milliseconds; zero and negative ones are refused.
 * statement_timeout is at most a day (PostgreSQL's own setting is an int
 * of milliseconds). A description is at most 1024 bytes, without control
 * characters other than tabs and newlines.
 *
 * The detect query must be a single read query: after leading whitespace
 * and comments it starts with SELECT, WITH, VALUES or TABLE, and it holds
 * no ';' but trailing ones. A simple scan checks this (it skips quoted
 * strings, E'' strings, dollar quotes, quoted identifiers and comments);
 * it is a lint, not a guard: a WITH may still hide a data-modifying CTE.
 * The real guard is that the reconciler runs the query in a READ ONLY
 * transaction. What is stored ends at the query's last token: trailing
 * ';', whitespace and comments are cut, so that the text can be wrapped
 * ("SELECT ... FROM (detect) q LIMIT n") without a trailing "--" comment
 * swallowing the rest.
 *
 * The walk over the YAML is lib/yaml_walk.c, as for saga definitions, and
 * the errors the same: every one found, with file, line, column and field
 * path (rules[2].emit.topic), in document order.
 */
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "reconcile.h"
#include "saga_def_hook.h"
#include "yaml_walk.h"

#define RC_NAME_MAX 128
#define RC_DESCRIPTION_MAX 1024
#define RC_MAX_ATTEMPTS_MAX 1000
#define RC_BATCH_MAX 100000
#define RC_STATEMENT_TIMEOUT_MAX_MS (24LL * 3600 * 1000)
#define RC_RULE_TIMEOUT_MAX_MS (10LL * 60 * 1000)
#define RC_RULE_MAX_ROWS_MAX 100000

#define RC_RULE_TIMEOUT_DEFAULT_MS 5000
#define RC_RULE_MAX_ROWS_DEFAULT 1000
#define RC_RULE_REPEAT_AFTER_DEFAULT_MS (10LL * 60 * 1000)

_Static_assert(RC_RULES_FILE_MAX <= INT_MAX, "positions fit an int");
_Static_assert(RC_RULES_MAX >= 1 && RC_RULES_MAX <= 4096, "rules limit");
_Static_assert(RC_STATEMENT_TIMEOUT_MAX_MS <= INT_MAX, "PostgreSQL's statement_timeout is an int");
_Static_assert(RC_RULE_TIMEOUT_DEFAULT_MS <= RC_RULE_TIMEOUT_MAX_MS, "default within the limit");

typedef ferry__yw_place place;

static const char rules_what[] = "the rules file";   /* in messages */

/* A walker and what the walk fills in. */
typedef struct rules_loader {
    ferry__yw w;
    rc_rules *r;
    place name_at[RC_RULES_MAX];      /* of each rule's name, for duplicates */
} rules_loader;

void rc_budgets_default(rc_budgets *b)
{
    b->outbox_lag_ms = 60 * 1000;
    b->max_attempts = 10;
    b->saga_grace_ms = 30 * 1000;
    b->inbox_retention_ms = 7LL * 24 * 3600 * 1000;
    b->outbox_retention_ms = 7LL * 24 * 3600 * 1000;
    b->statement_timeout_ms = 30 * 1000;
    b->batch = 1000;
}

void rc_rules_free(rc_rules *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->rules && i < r->count; i++) {
        rc_rule *x = &r->rules[i];
        free(x->name);
        free(x->description);
        free(x->detect);
        free(x->topic);
        free(x->type);
    }
    free(r->rules);
    free(r->file);
    free(r);
}

/* ------------------------------------------------------------ values */

/* A duration in (0, max]. */
static int get_duration_max(ferry__yw *w, yaml_event_t *ev, int64_t max, int64_t *out)
{
    int64_t ms = 0;
    bool ok;
    if (ferry__yw_get_duration(w, ev, false, &ms, &ok) != 0 || !ok)
        return w->fatal ? -1 : 0;
    if (ms > max) {
        char lim[32];
        ferry__yw_error(w, ferry__yw_place_of(ev->start_mark), "\"%.64s\" is longer than the limit "
                       "of %s", ferry__yw_scalar(ev), ferry__yw_format_duration(max, lim, sizeof lim));
        return 0;
    }
    *out = ms;
    return 0;
}

static int get_duration_pos(ferry__yw *w, yaml_event_t *ev, int64_t *out)
{
    return get_duration_max(w, ev, FERRY_YW_DURATION_MAX_MS, out);
}

static int get_int_in(ferry__yw *w, yaml_event_t *ev, long min, long max, int *out)
{
    bool ok;
    return ferry__yw_get_int(w, ev, min, max, out, &ok);
}

/* Offset of the first control character of s (n bytes) that allow does
 * not list, C1 ones (U+0080..U+009F: 0xc2 0x80..0x9f) included, or -1.
 * Names and descriptions end up on terminals: no escape sequences. */
static long control_at(const char *s, size_t n, const char *allow)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 || c == 0x7f) && !(c && strchr(allow, c)))
            return (long)i;
        if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9f)
            return (long)i;
    }
    return -1;
}

/* ------------------------------------------------------------ the detect query */

static bool ident_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '$' || c >= 0x80;
}

static bool ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static bool sql_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* What is wrong with a query, and where (an offset into it). */
typedef struct sql_fault {
    const char *what;                 /* NULL: nothing */
    size_t at;
} sql_fault;

/*
 * If q[i] starts a comment, a quoted string or identifier or a dollar
 * quote, the index past its end; else i. One that does not end is a
 * fault (at its start), and the result is then n.
 */
static size_t skip_opaque(const char *q, size_t n, size_t i, sql_fault *f)
{
    size_t start = i;
    if (q[i] == '-' && i + 1 < n && q[i + 1] == '-') {
        /* As PostgreSQL's lexer (scan.l: comment is "--" then [^\n\r]*):
         * a line comment ends at \r as well, or the query checked and
         * stored would not be the one the server runs. */
        while (i < n && q[i] != '\n' && q[i] != '\r')
            i++;
        return i;
    }
    if (q[i] == '/' && i + 1 < n && q[i + 1] == '*') {
        int depth = 0;                /* PostgreSQL's block comments nest */
        while (i + 1 < n) {
            if (q[i] == '/' && q[i + 1] == '*') {
                depth++;
                i += 2;
            } else if (q[i] == '*' && q[i + 1] == '/') {
                i += 2;
                if (--depth == 0)
                    return i;
            } else {
                i++;
            }
        }
        *f = (sql_fault){"an unterminated /* comment", start};
        return n;
    }
    if (q[i] == '\'' || q[i] == '"') {
        char quote = q[i];
        /* E'...' takes backslash escapes; a plain '' doubles a quote. */
        bool escapes = quote == '\'' && i > 0 && (q[i - 1] == 'E' || q[i - 1] == 'e') &&
                       (i == 1 || !ident_char((unsigned char)q[i - 2]));
        for (i++; i < n; i++) {
            if (escapes && q[i] == '\\') {
                i++;
            } else if (q[i] == quote) {
                if (i + 1 < n && q[i + 1] == quote)
                    i++;
                else
                    return i + 1;
            }
        }
        *f = (sql_fault){quote == '\'' ? "an unterminated quoted string"
                                       : "an unterminated quoted identifier", start};
        return n;
    }
    if (q[i] == '$' && (i == 0 || !ident_char((unsigned char)q[i - 1]))) {
        /* $tag$ ... $tag$, the tag empty or an identifier without '$'. */
        size_t t = i + 1;
        if (t < n && ident_start((unsigned char)q[t]))
            while (t < n && ident_char((unsigned char)q[t]) && q[t] != '$')
                t++;
        if (t >= n || q[t] != '$')
            return i;                 /* $1, a parameter: not a quote */
        size_t tag = t + 1 - i;       /* "$tag$" */
        for (size_t k = t + 1; k + tag <= n; k++)
            if (memcmp(q + k, q + i, tag) == 0)
                return k + tag;
        *f = (sql_fault){"an unterminated dollar-quoted string", start};
        return n;
    }
    return i;
}

/* Index of the first character that is not whitespace or a comment. */
static size_t skip_blank(const char *q, size_t n, size_t i, sql_fault *f)
{
    while (i < n) {
        if (sql_space(q[i])) {
            i++;
            continue;
        }
        bool comment = (q[i] == '-' || q[i] == '/') && i + 1 < n &&
                       q[i + 1] == (q[i] == '-' ? '-' : '*');
        if (!comment)
            break;
        i = skip_opaque(q, n, i, f);
    }
    return i;
}

/*
 * Check that q (n bytes) is one read query. On success *end is where its
 * last token ends (what follows is ';', whitespace and comments); else
 * the fault: "empty", "start" (it does not start with a read keyword),
 * "semicolon" (at the first ';' with more after it), or an unterminated
 * comment, string or identifier, with its offset.
 */
static sql_fault check_query(const char *q, size_t n, size_t *end)
{
    static const char *const starts[] = {"SELECT", "WITH", "VALUES", "TABLE"};
    sql_fault f = {NULL, 0};
    size_t i = skip_blank(q, n, 0, &f);
    if (f.what)
        return f;
    if (i == n)
        return (sql_fault){"empty", 0};
    size_t w = i;
    while (w < n && ident_char((unsigned char)q[w]))
        w++;
    bool read = false;
    for (size_t k = 0; k < sizeof starts / sizeof starts[0] && !read; k++)
        read = w - i == strlen(starts[k]) && strncasecmp(q + i, starts[k], w - i) == 0;
    if (!read)
        return (sql_fault){"start", i};

    size_t last = w;                  /* past the last token seen */
    bool semi = false;
    size_t semi_at = 0;
    for (i = w; i < n;) {
        if (sql_space(q[i])) {
            i++;
            continue;
        }
        if (q[i] == ';') {
            if (!semi)
                semi_at = i;
            semi = true;
            i++;
            continue;
        }
        bool comment = (q[i] == '-' || q[i] == '/') && i + 1 < n &&
                       q[i + 1] == (q[i] == '-' ? '-' : '*');
        size_t j = skip_opaque(q, n, i, &f);
        if (f.what)
            return f;
        if (comment) {
            i = j;
            continue;
        }
        if (semi)                     /* a token after a ';' */
            return (sql_fault){"semicolon", semi_at};
        i = j > i ? j : i + 1;
        last = i;
    }
    *end = last;
    return f;
}

/* Line and column (1-based, in characters) of offset at in q. */
static void query_place(const char *q, size_t at, int *line, int *column)
{
    *line = 1;
    *column = 1;
    for (size_t i = 0; i < at; i++) {
        if (q[i] == '\n') {
            (*line)++;
            *column = 1;
        } else if (((unsigned char)q[i] & 0xc0) != 0x80) {
            (*column)++;
        }
    }
}

/* Check the detect query *q (new, from the document) and cut what
 * follows its last token. */
static void check_detect(ferry__yw *w, const yaml_event_t *ev, char *q)
{
    place at = ferry__yw_place_of(ev->start_mark);
    size_t n = strlen(q), end = n;
    sql_fault f = check_query(q, n, &end);
    int line, column;
    query_place(q, f.at, &line, &column);
    if (!f.what) {
        q[end] = '\0';
    } else if (strcmp(f.what, "empty") == 0) {
        ferry__yw_error(w, at, "the detect query is empty");
    } else if (strcmp(f.what, "start") == 0) {
        /* The word it starts with, in ASCII only: it is echoed. */
        size_t len = 0;
        while (len < 32 && ident_char((unsigned char)q[f.at + len]) &&
               (unsigned char)q[f.at + len] < 0x80)
            len++;
        unsigned char c = (unsigned char)q[f.at];
        if (len > 0)
            ferry__yw_error(w, at, "a detect query must be a single read query, starting with "
                           "SELECT, WITH, VALUES or TABLE, not \"%.*s\"", (int)len, q + f.at);
        else if (c > 0x20 && c < 0x7f)
            ferry__yw_error(w, at, "a detect query must be a single read query, starting with "
                           "SELECT, WITH, VALUES or TABLE, not \"%c\"", c);
        else
            ferry__yw_error(w, at, "a detect query must be a single read query, starting with "
                           "SELECT, WITH, VALUES or TABLE, not byte 0x%02x", c);
    } else if (strcmp(f.what, "semicolon") == 0) {
        ferry__yw_error(w, at, "a detect query must be a single statement: the ';' at line %d, "
                       "column %d of the query is followed by more", line, column);
    } else {
        ferry__yw_error(w, at, "the detect query has %s (at line %d, column %d of the query)",
                       f.what, line, column);
    }
}

/* ------------------------------------------------------------ budgets */

static const char *const budget_keys[] = {"outbox_lag", "max_attempts", "saga_grace",
                                          "inbox_retention", "outbox_retention",
                                          "statement_timeout", "batch"};
enum { B_OUTBOX_LAG, B_MAX_ATTEMPTS, B_SAGA_GRACE, B_INBOX_RETENTION, B_OUTBOX_RETENTION,
       B_STATEMENT_TIMEOUT, B_BATCH, N_BUDGET_KEYS };

static int budget_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    rc_budgets *b = arg;
    switch (index) {
    case B_OUTBOX_LAG:
        return get_duration_pos(w, val, &b->outbox_lag_ms);
    case B_MAX_ATTEMPTS:
        return get_int_in(w, val, 1, RC_MAX_ATTEMPTS_MAX, &b->max_attempts);
    case B_SAGA_GRACE:
        return get_duration_pos(w, val, &b->saga_grace_ms);
    case B_INBOX_RETENTION:
        return get_duration_pos(w, val, &b->inbox_retention_ms);
    case B_OUTBOX_RETENTION:
        return get_duration_pos(w, val, &b->outbox_retention_ms);
    case B_STATEMENT_TIMEOUT:
        return get_duration_max(w, val, RC_STATEMENT_TIMEOUT_MAX_MS, &b->statement_timeout_ms);
    default:
        return get_int_in(w, val, 1, RC_BATCH_MAX, &b->batch);
    }
}

static int read_budgets(ferry__yw *w, yaml_event_t *ev, rc_budgets *b)
{
    if (ferry__yw_is_null(ev))         /* "budgets:" with every line commented out */
        return 0;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return ferry__yw_wrong_type(w, ev, "the budgets (a mapping with outbox_lag, "
                                   "max_attempts, ...)");
    bool seen[N_BUDGET_KEYS];
    return ferry__yw_read_mapping(w, budget_keys, N_BUDGET_KEYS, seen, budget_value, b);
}

/* ------------------------------------------------------------ rules */

static const char *const emit_keys[] = {"topic", "type"};
enum { E_TOPIC, E_TYPE, N_EMIT_KEYS };
static const bool emit_required[N_EMIT_KEYS] = {true, true};

static const char *const rule_keys[] = {"name", "description", "detect", "timeout",
                                        "max_rows", "repeat_after", "emit"};
enum { R_NAME, R_DESCRIPTION, R_DETECT, R_TIMEOUT, R_MAX_ROWS, R_REPEAT_AFTER, R_EMIT,
       N_RULE_KEYS };
static const bool rule_required[N_RULE_KEYS] = {
    [R_NAME] = true, [R_DETECT] = true, [R_EMIT] = true,
};

static const char *const top_keys[] = {"budgets", "rules"};
enum { T_BUDGETS, T_RULES, N_TOP_KEYS };

_Static_assert(N_BUDGET_KEYS <= FERRY_YW_KEYS_MAX && N_RULE_KEYS <= FERRY_YW_KEYS_MAX &&
               N_EMIT_KEYS <= FERRY_YW_KEYS_MAX && N_TOP_KEYS <= FERRY_YW_KEYS_MAX,
               "ferry_yw_read_mapping's table");

typedef struct rule_ctx {
    rules_loader *ld;
    size_t index;
    rc_rule *rule;
} rule_ctx;

static int emit_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    rc_rule *x = arg;
    bool ok;
    if (index == E_TOPIC) {
        if (ferry__yw_get_string(w, val, "a topic name", &x->topic, &ok) != 0 || !ok)
            return w->fatal ? -1 : 0;
        return ferry__yw_check_topic(w, val, x->topic, &ok);
    }
    if (ferry__yw_get_string(w, val, "a message type", &x->type, &ok) != 0 || !ok)
        return w->fatal ? -1 : 0;
    return ferry__yw_check_type(w, val, x->type, &ok);
}

static int read_emit(ferry__yw *w, yaml_event_t *ev, rc_rule *x)
{
    if (ev->type != YAML_MAPPING_START_EVENT)
        return ferry__yw_wrong_type(w, ev, "what to emit (a mapping with topic and type)");
    bool seen[N_EMIT_KEYS];
    if (ferry__yw_read_mapping(w, emit_keys, N_EMIT_KEYS, seen, emit_value, x) != 0)
        return -1;
    ferry__yw_require_keys(w, ferry__yw_place_of(ev->start_mark), emit_keys, emit_required, seen,
                          N_EMIT_KEYS);
    return 0;
}

static void check_rule_name(ferry__yw *w, rule_ctx *rc, const yaml_event_t *ev)
{
    rules_loader *ld = rc->ld;
    const char *name = rc->rule->name;
    place at = ferry__yw_place_of(ev->start_mark);
    long bad = control_at(name, strlen(name), "");
    if (bad >= 0)                     /* not echoed: it could drive a terminal */
        ferry__yw_error(w, at, "a name must not contain control characters (byte 0x%02x at "
                       "offset %ld)", (unsigned)(unsigned char)name[bad], bad);
    else
        ferry__yw_check_name(w, ev, name, RC_NAME_MAX);
    for (size_t i = 0; i < rc->index; i++) {
        if (ld->r->rules[i].name && strcmp(ld->r->rules[i].name, name) == 0) {
            ferry__yw_error(w, at, "duplicate rule name \"%.64s\" (rules[%zu] at line %d)", name, i,
                           ld->name_at[i].line);
            break;
        }
    }
}

static int rule_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    rule_ctx *rc = arg;
    rc_rule *x = rc->rule;
    place at = ferry__yw_place_of(val->start_mark);
    bool ok;
    int err;
    switch (index) {
    case R_NAME:
        rc->ld->name_at[rc->index] = at;
        if ((err = ferry__yw_get_string(w, val, "a rule name", &x->name, &ok)) != 0 || !ok)
            return err;
        check_rule_name(w, rc, val);
        return 0;
    case R_DESCRIPTION: {
        if ((err = ferry__yw_get_string(w, val, "a description", &x->description, &ok)) != 0 || !ok)
            return err;
        size_t n = strlen(x->description);
        long bad = control_at(x->description, n, "\t\n");
        if (n > RC_DESCRIPTION_MAX)
            ferry__yw_error(w, at, "a description must have at most %d bytes, not %zu",
                           RC_DESCRIPTION_MAX, n);
        else if (bad >= 0)
            ferry__yw_error(w, at, "a description must not contain control characters other "
                           "than tabs and newlines (byte 0x%02x at offset %ld)",
                           (unsigned)(unsigned char)x->description[bad], bad);
        return 0;
    }
    case R_DETECT:
        if ((err = ferry__yw_get_string(w, val, "a query", &x->detect, &ok)) != 0 || !ok)
            return err;
        check_detect(w, val, x->detect);
        return 0;
    case R_TIMEOUT:
        return get_duration_max(w, val, RC_RULE_TIMEOUT_MAX_MS, &x->timeout_ms);
    case R_MAX_ROWS:
        return get_int_in(w, val, 1, RC_RULE_MAX_ROWS_MAX, &x->max_rows);
    case R_REPEAT_AFTER:
        return get_duration_pos(w, val, &x->repeat_after_ms);
    default:
        return read_emit(w, val, x);
    }
}

static int read_rule(ferry__yw *w, yaml_event_t *ev, size_t index, void *arg)
{
    rules_loader *ld = arg;
    rule_ctx rc = {ld, index, &ld->r->rules[index]};
    rc.rule->line = ferry__yw_place_of(ev->start_mark).line;
    rc.rule->timeout_ms = RC_RULE_TIMEOUT_DEFAULT_MS;
    rc.rule->max_rows = RC_RULE_MAX_ROWS_DEFAULT;
    rc.rule->repeat_after_ms = RC_RULE_REPEAT_AFTER_DEFAULT_MS;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return ferry__yw_wrong_type(w, ev, "a rule (a mapping with name, detect, emit, ...)");
    bool seen[N_RULE_KEYS];
    if (ferry__yw_read_mapping(w, rule_keys, N_RULE_KEYS, seen, rule_value, &rc) != 0)
        return -1;
    ferry__yw_require_keys(w, ferry__yw_place_of(ev->start_mark), rule_keys, rule_required, seen,
                          N_RULE_KEYS);
    return 0;
}

static int read_rules(rules_loader *ld, yaml_event_t *ev)
{
    if (ferry__yw_is_null(ev))
        return 0;
    return ferry__yw_read_sequence(&ld->w, ev, "rules", RC_RULES_MAX, &ld->r->count, read_rule,
                                  ld);
}

static int top_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    rules_loader *ld = arg;
    if (index == T_BUDGETS)
        return read_budgets(w, val, &ld->r->budgets);
    return read_rules(ld, val);
}

/* ------------------------------------------------------------ entry points */

/* The walk of one text, in the loader ferry__yw_parse made for it. */
static ferry_code read_rules_file(void *arg, void *out)
{
    rules_loader *ld = arg;
    ferry__yw *w = &ld->w;
    ferry_code rc = FERRY_ENOMEM;

    rc_rules *r = ferry__yw_malloc(w, sizeof *r);
    if (!r)
        return rc;
    memset(r, 0, sizeof *r);
    rc_budgets_default(&r->budgets);
    ld->r = r;
    r->rules = ferry__yw_malloc(w, RC_RULES_MAX * sizeof *r->rules);
    if (!r->rules)
        goto out_free_rules;
    memset(r->rules, 0, RC_RULES_MAX * sizeof *r->rules);
    r->file = ferry__yw_strndup(w, w->file, strlen(w->file));
    if (!r->file)
        goto out_free_rules;

    const ferry__yw_doc doc = {
        .expected = "a rules file (a mapping with budgets and rules)",
        .one = "rules document",
        .keys = top_keys,
        .nkeys = N_TOP_KEYS,
        .required = NULL,
        .value = top_value,
        .arg = ld,
    };
    ferry__yw_read_document(w, &doc);
    rc = ferry__yw_outcome(w);
    if (rc != FERRY_OK)
        goto out_free_rules;
    *(rc_rules **)out = r;
    return FERRY_OK;

out_free_rules:
    rc_rules_free(r);
    return rc;
}

_Static_assert(offsetof(rules_loader, w) == 0, "ferry_yw_loader: the walker comes first");
static const ferry__yw_loader rules_file_loader = {
    .what = rules_what,
    .text_arg = "text",
    .max = RC_RULES_FILE_MAX,
    .size = sizeof(rules_loader),
    .read = read_rules_file,
};

ferry_code rc_rules_parse(const char *text, size_t len, const char *name, rc_rules **out,
                          ferry_saga_load_errors *errs)
{
    return ferry__yw_parse(&rules_file_loader, text, len, name, out, errs);
}

/* A file that cannot be read is FERRY_EINVAL too, with its error: the
 * FERRY_EIO that reconcile.h names is not a ferry_code (yet). Callers that
 * must tell it apart read the file with ferry__yw_read_file, as lint does. */
ferry_code rc_rules_load(const char *path, rc_rules **out, ferry_saga_load_errors *errs)
{
    return ferry__yw_load(&rules_file_loader, path, out, errs);
}
