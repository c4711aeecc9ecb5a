/*
 * rc_config.c — the settings of `check`, `repair` and `run` from the file,
 * the environment and the flags (rc_config.h says which and in what
 * order).
 *
 * The file, every key optional (a null value means "not set here"):
 *
 *   db: "host=/run/postgresql dbname=app user=ferry_reconciler password=${file:/run/secrets/pg}"
 *   rules: /etc/ferry/rules.yaml
 *   sagas: /etc/ferry/sagas
 *   reply_topic: ferry.saga.replies
 *   holder: reconciler-a
 *   wait: 30              # seconds, 0..86400 (repair)
 *   lease_ttl: 30000      # milliseconds, 1000..3600000 (repair, run)
 *   interval: 60          # seconds, 0.1..86400 (run)
 *   metrics: 127.0.0.1:9188   # (run)
 *   log_level: info
 *
 * A file is shared by the three commands: a setting another command uses
 * is checked, then left alone. A flag that the command does not take is a
 * usage error, as before.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "yaml_walk.h"
#include "confref.h"
#include "httpd.h"
#include "rc_config.h"

#define RC_CONFIG_FILE_MAX (64 * 1024)
#define CONFIG_ENV "FERRY_RECONCILE_CONFIG"

typedef enum rc_kind { K_TEXT, K_INT, K_SECONDS, K_LEVEL } rc_kind;

/*
 * The settings: id, file key, flag, variable, argument, kind, commands,
 * range (K_INT, K_SECONDS), default as --help shows it, what it does.
 * The getopt table, the file's keys, the environment and --help all come
 * from this list.
 */
#define RC_SETTINGS(X)                                                                       \
    X(S_DB, "db", "db", "FERRY_DB", "CONNINFO", K_TEXT, RC_FOR_ALL, 0, 0, "none",             \
      "libpq connection string or URI (required)")                                          \
    X(S_RULES, "rules", "rules", "FERRY_RECONCILE_RULES", "FILE", K_TEXT, RC_FOR_ALL, 0, 0,   \
      "none", "the rules file: budgets and compliance rules")                                \
    X(S_SAGAS, "sagas", "sagas", "FERRY_RECONCILE_SAGAS", "DIR", K_TEXT, RC_FOR_ALL, 0, 0,    \
      "none", "saga definitions (*.yaml), to fire missed timers; without: reported only")    \
    X(S_REPLY, "reply_topic", "reply-topic", "FERRY_RECONCILE_REPLY_TOPIC", "TOPIC", K_TEXT,  \
      RC_FOR_ALL, 0, 0, "ferry.saga.replies", "the sagas' reply topic")                       \
    X(S_HOLDER, "holder", "holder", "FERRY_RECONCILE_HOLDER", "NAME", K_TEXT,                 \
      RC_FOR_REPAIR | RC_FOR_RUN, 0, 0, "host:pid", "this reconciler's name in the lease")     \
    X(S_WAIT, "wait", "wait", "FERRY_RECONCILE_WAIT", "SECONDS", K_INT, RC_FOR_REPAIR, 0,     \
      86400, "30, 0..86400", "wait this long for another reconciler's lease")                 \
    X(S_TTL, "lease_ttl", "lease-ttl", "FERRY_RECONCILE_LEASE_TTL", "MS", K_INT,              \
      RC_FOR_REPAIR | RC_FOR_RUN, 1000, 3600000, "30000, 1000..3600000",                      \
      "the reconciler lease's time to live, in milliseconds")                                 \
    X(S_INTERVAL, "interval", "interval", "FERRY_RECONCILE_INTERVAL", "SECONDS", K_SECONDS,   \
      RC_FOR_RUN, 0, 86400, "60, 0.1..86400", "seconds between passes")                       \
    X(S_METRICS, "metrics", "metrics", "FERRY_RECONCILE_METRICS", "HOST:PORT", K_TEXT,        \
      RC_FOR_RUN, 0, 0, "off", "serve /metrics and /healthz (port 0 picks one, logged)")      \
    X(S_LOG_LEVEL, "log_level", "log-level", "FERRY_LOG_LEVEL", "LEVEL", K_LEVEL, RC_FOR_ALL, \
      0, 0, "info; error|warn|info|debug", "the least severe log event written")

/* The flags that are not settings: id, flag, argument, commands, doc. */
#define RC_FLAGS(X)                                                                          \
    X(O_CONFIG, "config", "FILE", RC_FOR_ALL,                                                \
      "YAML file of the settings above, by their names ($" CONFIG_ENV ")")                   \
    X(O_JSON, "json", NULL, RC_FOR_CHECK | RC_FOR_REPAIR,                                    \
      "the report as one JSON document on stdout")                                          \
    X(O_PROGRESS, "progress", NULL, RC_FOR_CHECK | RC_FOR_REPAIR,                            \
      "show progress on stderr (default: only when stderr is a terminal)")                  \
    X(O_NO_PROGRESS, "no-progress", NULL, RC_FOR_CHECK | RC_FOR_REPAIR, "never show progress") \
    X(O_REPLAY, "replay", "ID|UUID|TOPIC/KEY", RC_FOR_REPAIR,                                \
      "put dead letters back in their place (repeatable)")                                  \
    X(O_DISCARD, "discard", "ID|UUID|TOPIC/KEY", RC_FOR_REPAIR,                              \
      "drop dead letters, recorded with --reason (repeatable)")                             \
    X(O_REASON, "reason", "TEXT", RC_FOR_REPAIR, "why, recorded with each --discard")        \
    X(O_BY, "by", "NAME", RC_FOR_REPAIR, "who, recorded with each decision (default user@host)") \
    X(O_HELP, "help", NULL, RC_FOR_ALL, "this text")

enum {
    S_BASE_ = 255,
#define X_ID(id, ...) id,
    RC_SETTINGS(X_ID)
    S_END_,
    RC_FLAGS(X_ID)
#undef X_ID
};
enum { N_SETTINGS = S_END_ - S_DB };
_Static_assert(N_SETTINGS <= FERRY_YW_KEYS_MAX, "ferry_yw_read_mapping's table");
_Static_assert(N_SETTINGS <= sizeof ((rc_options *)0)->owned / sizeof(char *),
               "rc_options.owned: one per setting");

typedef struct rc_setting {
    const char *key, *flag, *env, *arg;
    rc_kind kind;
    int commands;
    long lo, hi;
    const char *def, *doc;
} rc_setting;

static const rc_setting settings[N_SETTINGS] = {
#define X_ROW(id, key, flag, env, arg, kind, cmds, lo, hi, def, doc) \
    [id - S_DB] = {key, flag, env, arg, kind, cmds, lo, hi, def, doc},
    RC_SETTINGS(X_ROW)
#undef X_ROW
};

static const char *const setting_keys[N_SETTINGS] = {
#define X_KEY(id, key, ...) [id - S_DB] = key,
    RC_SETTINGS(X_KEY)
#undef X_KEY
};

static const struct option rc_longs[] = {
#define X_SOPT(id, key, flag, ...) {flag, required_argument, NULL, id},
    RC_SETTINGS(X_SOPT)
#undef X_SOPT
#define X_FOPT(id, flag, arg, cmds, doc) {flag, (arg) ? required_argument : no_argument, NULL, id},
    RC_FLAGS(X_FOPT)
#undef X_FOPT
    {NULL, 0, NULL, 0},
};

static const rc_option_doc rc_docs[] = {
#define X_SDOC(id, key, flag, env, arg, kind, cmds, lo, hi, def, doc) \
    {flag, arg, cmds, doc, key, env, def},
    RC_SETTINGS(X_SDOC)
#undef X_SDOC
#define X_FDOC(id, flag, arg, cmds, doc) {flag, arg, cmds, doc, NULL, NULL, NULL},
    RC_FLAGS(X_FDOC)
#undef X_FDOC
    {NULL, NULL, 0, NULL, NULL, NULL, NULL},
};

const struct option *rc_pass_options(void)
{
    return rc_longs;
}

const rc_option_doc *rc_option_docs(void)
{
    return rc_docs;
}

static int rc_for(const char *cmd)
{
    return strcmp(cmd, "check") == 0 ? RC_FOR_CHECK
           : strcmp(cmd, "repair") == 0 ? RC_FOR_REPAIR : RC_FOR_RUN;
}

int rc_option_applies(const rc_option_doc *d, const char *cmd)
{
    return (d->commands & rc_for(cmd)) != 0;
}

/* ------------------------------------------------------------ help */

static void usage_of(FILE *out, const char *cmd)
{
    static const char *const what[] = {
        [RC_FOR_CHECK] = "Find every problem and change nothing; print a report.",
        [RC_FOR_REPAIR] = "Find every problem and fix what can be fixed (one reconciler at a\n"
                          "time: it takes the lease \"reconciler\" in ferry.lease).",
        [RC_FOR_RUN] = "Repair every --interval seconds as a daemon until SIGTERM/SIGINT;\n"
                       "other instances stand by and take over when it stops or dies.",
    };
    int for_cmd = rc_for(cmd);
    fprintf(out, "usage: ferry-reconcile %s [--db CONNINFO] [OPTION]...\n\n%s\n\n"
                 "Settings (defaults < --config file < environment < flags; in the file by\n"
                 "the name after \"file:\"):\n", cmd, what[for_cmd]);
    int flags_header = 0;
    for (const rc_option_doc *d = rc_docs; d->name != NULL; d++) {
        if (!(d->commands & for_cmd))
            continue;
        if (!d->key && !flags_header) {
            fprintf(out, "\nOptions:\n");
            flags_header = 1;
        }
        char left[48];
        snprintf(left, sizeof left, "--%s%s%s", d->name, d->arg ? " " : "", d->arg ? d->arg : "");
        if (d->key) {
            fprintf(out, "  %-28s %s (default %s)\n", left, d->doc, d->def);
            fprintf(out, "  %-28s $%s, file: %s\n", "", d->env, d->key);
        } else {
            fprintf(out, "  %-28s %s\n", left, d->doc);
        }
    }
    fprintf(out, "\nAny setting's value may hold ${env:NAME} (a variable) or ${file:/path} (a\n"
                 "file's contents, one trailing newline dropped); $${ is a literal ${. An\n"
                 "empty variable counts as unset.\n"
                 "Exit status, as fsck, the sum of: 1 problems repaired, 4 problems left (check:\n"
                 "found), 8 operational error; 0 nothing wrong; 16 usage or configuration "
                 "error.\n");
}

/* "ferry-reconcile CMD: MESSAGE" on stderr; RC_EXIT_USAGE. A configuration
 * error gives its place first and no usage text; a usage error is followed
 * by the usage text (parse's out_usage). */
__attribute__((format(printf, 2, 3)))
static int cmd_error(const char *cmd, const char *fmt, ...)
{
    fprintf(stderr, "ferry-reconcile %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return RC_EXIT_USAGE;
}

/* ------------------------------------------------------------ values */

/*
 * Setting k's value, from where (for messages: "FILE:LINE:COL: KEY",
 * "FERRY_DB", "--wait"): its references resolved, checked, stored in o.
 * Returns 0 or an exit status, said.
 */
static int apply_value(const char *cmd, rc_options *o, int k, const char *raw, const char *where)
{
    const rc_setting *s = &settings[k];
    char why[512];
    char *text = NULL;
    /* The connection string's references go in as its values, quoted
     * (common/confref.h), as the relay's do. */
    int expanded = k == S_DB - S_DB ? confref_expand_conninfo(raw, &text, why, sizeof why)
                                    : confref_expand(raw, &text, why, sizeof why);
    if (expanded != 0)
        return cmd_error(cmd, "%s: %s", where, why);
    int rc = 0;
    long v;
    switch (s->kind) {
    case K_TEXT: {
        if (text[0] == '\0') {
            rc = cmd_error(cmd, "%s: must not be empty", where);
            break;
        }
        const char *problem = k == S_METRICS - S_DB ? httpd_address_problem(text) : NULL;
        if (problem != NULL) {
            rc = cmd_error(cmd, "%s: %s, not \"%.64s\"", where, problem, text);
            break;
        }
        free(o->owned[k]);
        o->owned[k] = text;
        text = NULL;
        const char **slot = k == S_DB - S_DB ? &o->db
                            : k == S_RULES - S_DB ? &o->rules_file
                            : k == S_SAGAS - S_DB ? &o->sagas_dir
                            : k == S_REPLY - S_DB ? &o->reply_topic
                            : k == S_HOLDER - S_DB ? &o->holder : &o->metrics;
        *slot = o->owned[k];
        break;
    }
    case K_INT:
        if (ferry__parse_long(text, s->lo, s->hi, &v) != FERRY_INT_OK) {
            rc = cmd_error(cmd, "%s: expected whole %s, %ld..%ld, not \"%.64s\"", where,
                           k == S_WAIT - S_DB ? "seconds" : "milliseconds", s->lo, s->hi,
                           text);
            break;
        }
        if (k == S_WAIT - S_DB)
            o->wait_s = (int)v;
        else
            o->lease_ttl_ms = (int)v;
        break;
    case K_SECONDS: {
        /* DIGITS[.DIGITS] and nothing else: strtod alone would take
         * blanks before, a sign, "0x10", "1e1", "inf", which every other
         * number here refuses. */
        size_t whole = strspn(text, "0123456789");
        const char *rest = text + whole;
        if (whole > 0 && rest[0] == '.')
            rest += 1 + strspn(rest + 1, "0123456789");
        char *end;
        double d = strtod(text, &end);
        if (whole == 0 || rest[0] != '\0' || rest[-1] == '.' || end != rest ||
            !(d >= 0.1 && d <= 86400)) {
            rc = cmd_error(cmd, "%s: expected seconds, 0.1..86400, not \"%.64s\"", where,
                           text);
            break;
        }
        o->interval_s = d;
        break;
    }
    case K_LEVEL: {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        int level = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(text, names[i]) == 0)
                level = i;
        if (level < 0) {
            rc = cmd_error(cmd, "%s: invalid value \"%.64s\" (expected error, warn, info or "
                           "debug)", where, text);
            break;
        }
        o->log_level = level;
        break;
    }
    }
    free(text);
    /* A flag's value is the command line's: the usage follows, as for
     * any usage error. */
    if (rc == RC_EXIT_USAGE && strncmp(where, "--", 2) == 0)
        usage_of(stderr, cmd);
    return rc;
}

/* ------------------------------------------------------------ the file */

typedef struct file_values {
    char *text[N_SETTINGS];           /* NULL: not in the file, or null */
    ferry__yw_place at[N_SETTINGS];
} file_values;

typedef struct file_loader {
    ferry__yw w;                       /* first: ferry__yw_loader */
    file_values *v;
} file_loader;

static int file_value(ferry__yw *w, int index, ferry__yw_place key_at, yaml_event_t *val,
                      void *arg)
{
    file_loader *ld = arg;
    if (val->type == YAML_SCALAR_EVENT && ferry__yw_is_null(val))
        return 0;
    bool ok;
    ld->v->at[index] = ferry__yw_place_of(val->start_mark);
    if (ferry__yw_get_string(w, val, "a single value", &ld->v->text[index], &ok) != 0)
        return -1;
    return 0;
}

static void file_values_free(file_values *v)
{
    if (!v)
        return;
    for (int k = 0; k < N_SETTINGS; k++)
        free(v->text[k]);
    free(v);
}

static ferry_code read_config_file(void *arg, void *out)
{
    file_loader *ld = arg;
    ferry__yw *w = &ld->w;
    ld->v = ferry__yw_malloc(w, sizeof *ld->v);
    if (!ld->v)
        return FERRY_ENOMEM;
    memset(ld->v, 0, sizeof *ld->v);
    const ferry__yw_doc doc = {
        .expected = "a mapping of settings (NAME: VALUE)",
        .one = "configuration",
        .keys = setting_keys,
        .nkeys = N_SETTINGS,
        .required = NULL,
        .value = file_value,
        .arg = ld,
    };
    ferry__yw_read_document(w, &doc);
    ferry_code rc = ferry__yw_outcome(w);
    if (rc != FERRY_OK) {
        file_values_free(ld->v);
        return rc;
    }
    *(file_values **)out = ld->v;
    return FERRY_OK;
}

_Static_assert(offsetof(file_loader, w) == 0, "ferry_yw_loader: the walker comes first");
static const ferry__yw_loader config_file_loader = {
    .what = "the configuration file",
    .text_arg = "text",
    .max = RC_CONFIG_FILE_MAX,
    .size = sizeof(file_loader),
    .read = read_config_file,
};

static int apply_file(const char *cmd, rc_options *o, const char *path)
{
    ferry_saga_load_errors errs;
    file_values *v = NULL;
    ferry_code code = ferry__yw_load(&config_file_loader, path, &v, &errs);
    if (code != FERRY_OK) {
        reconcile_print_errors(stderr, path, &errs);
        fprintf(stderr, "ferry-reconcile %s: the configuration file %s was refused\n", cmd, path);
        return code == FERRY_ENOMEM ? RC_EXIT_ERROR : RC_EXIT_USAGE;
    }
    int rc = 0;
    for (int k = 0; k < N_SETTINGS && rc == 0; k++) {
        if (!v->text[k])
            continue;
        char where[512];
        snprintf(where, sizeof where, "%s:%d:%d: %s", path, v->at[k].line, v->at[k].column,
                 settings[k].key);
        rc = apply_value(cmd, o, k, v->text[k], where);
    }
    file_values_free(v);
    return rc;
}

/* ------------------------------------------------------------ parse */

/* Nothing but blanks (or nothing): no word to record. */
static bool blank(const char *s)
{
    return s[strspn(s, " \t\n\r\v\f")] == '\0';
}

static int add_request(rc_options *o, rc_dead_action action, const char *target)
{
    rc_dead_request *r = realloc(o->requests, (o->n_requests + 1) * sizeof *r);
    if (r == NULL)
        return -1;
    o->requests = r;
    r[o->n_requests++] = (rc_dead_request){.action = action, .target = target};
    return 0;
}

void rc_options_free(rc_options *o)
{
    if (!o)
        return;
    free(o->requests);
    for (size_t k = 0; k < sizeof o->owned / sizeof o->owned[0]; k++)
        free(o->owned[k]);
    memset(o, 0, sizeof *o);
}

static int parse(const char *cmd, int argc, char **argv, rc_options *o)
{
    const int for_cmd = rc_for(cmd);
    const int is_check = for_cmd == RC_FOR_CHECK, is_run = for_cmd == RC_FOR_RUN;
    typedef struct flag {
        int id;
        const char *arg;
    } flag;
    flag *flags = calloc(argc > 0 ? (size_t)argc : 1, sizeof *flags);
    size_t n = 0;
    int c, rc = 0;
    if (!flags)
        return RC_EXIT_ERROR;

    /* Every flag first: --help and --config are answered before the rest. */
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", rc_longs, NULL)) != -1) {
        if (c == 'h' || c == O_HELP) {
            usage_of(stdout, cmd);
            free(flags);
            rc_options_free(o);
            exit(fflush(stdout) == 0 ? RC_EXIT_OK : RC_EXIT_ERROR);
        }
        if (c == '?' || c == ':') {
            rc = cmd_error(cmd, "unknown or incomplete option \"%s\"", argv[optind - 1]);
            goto out_usage;
        }
        flags[n++] = (flag){c, optarg};
    }
    if (optind < argc) {
        rc = cmd_error(cmd, "unexpected argument \"%s\"", argv[optind]);
        goto out_usage;
    }

    /* The file: the last --config, else $FERRY_RECONCILE_CONFIG. */
    const char *path = getenv(CONFIG_ENV);
    for (size_t i = 0; i < n; i++)
        if (flags[i].id == O_CONFIG) {
            /* The variable empty is unset (as every variable); the flag
             * empty was ignored, the file one meant silently not read. */
            if (flags[i].arg[0] == '\0') {
                rc = cmd_error(cmd, "--config: must not be empty");
                goto out_usage;
            }
            path = flags[i].arg;
        }
    if (path && path[0] && (rc = apply_file(cmd, o, path)) != 0)
        goto out;

    for (int k = 0; k < N_SETTINGS; k++) {
        const char *v = getenv(settings[k].env);
        if (v && v[0] && (rc = apply_value(cmd, o, k, v, settings[k].env)) != 0)
            goto out;
    }

    for (size_t i = 0; i < n; i++) {
        const char *arg = flags[i].arg;
        int id = flags[i].id;
        if (id >= S_DB && id < S_END_) {
            const rc_setting *s = &settings[id - S_DB];
            char where[64];
            if (!(s->commands & for_cmd)) {
                rc = cmd_error(cmd, "--%s is not for %s", s->flag, cmd);
                goto out_usage;
            }
            snprintf(where, sizeof where, "--%s", s->flag);
            if ((rc = apply_value(cmd, o, id - S_DB, arg, where)) != 0)
                goto out;
            continue;
        }
        switch (id) {
        case O_CONFIG:
            break;
        case O_JSON:
            if (is_run) {
                rc = cmd_error(cmd, "--json is for check and repair");
                goto out_usage;
            }
            o->json = 1;
            break;
        case O_PROGRESS: o->progress = 1; break;
        case O_NO_PROGRESS: o->progress = 0; break;
        case O_REPLAY:
        case O_DISCARD:
            if (is_check || is_run) {
                rc = cmd_error(cmd, "%s is for repair only (check changes nothing)",
                               id == O_REPLAY ? "--replay" : "--discard");
                goto out_usage;
            }
            if (arg[0] == '\0') {
                rc = cmd_error(cmd, "%s needs an ID, a message UUID or TOPIC/KEY",
                               id == O_REPLAY ? "--replay" : "--discard");
                goto out_usage;
            }
            if (add_request(o, id == O_REPLAY ? RC_REPLAY : RC_DISCARD, arg) != 0) {
                rc = RC_EXIT_ERROR;
                goto out;
            }
            break;
        case O_REASON:
        case O_BY:
            /* Recorded in ferry.dead_letter_log: an empty actor or a blank
             * reason records nothing (unset, each has its default). */
            if (blank(arg)) {
                rc = cmd_error(cmd, "--%s: must not be blank", id == O_BY ? "by" : "reason");
                goto out_usage;
            }
            if (id == O_REASON)
                o->reason = arg;
            else
                o->by = arg;
            break;
        default:
            rc = cmd_error(cmd, "internal error: option %d not handled", id);
            goto out_usage;
        }
    }
    if (o->db == NULL || o->db[0] == '\0') {
        rc = cmd_error(cmd, "--db CONNINFO (or $FERRY_DB, or db: in --config) is required");
        goto out_usage;
    }
    /* Two opposite decisions on the same letter: which one was meant? The
     * first was carried out and the second found nothing, silently. Here
     * the same name twice; two names of one letter (its id and its
     * TOPIC/KEY) only the database tells: sweep_dead.c refuses those. */
    for (size_t i = 0; i < o->n_requests; i++)
        for (size_t j = i + 1; j < o->n_requests; j++)
            if (o->requests[i].action != o->requests[j].action &&
                strcmp(o->requests[i].target, o->requests[j].target) == 0) {
                rc = cmd_error(cmd, "--replay %s and --discard %s: one decision per dead letter",
                               o->requests[i].target, o->requests[j].target);
                goto out_usage;
            }
    for (size_t i = 0; i < o->n_requests; i++) {
        if (o->requests[i].action == RC_DISCARD && (o->reason == NULL || o->reason[0] == '\0')) {
            rc = cmd_error(cmd, "--discard needs --reason TEXT: a discard is recorded with "
                           "who and why");
            goto out_usage;
        }
    }
out:
    free(flags);
    return rc;
out_usage:
    usage_of(stderr, cmd);
    free(flags);
    return rc;
}

int rc_options_parse(const char *cmd, int argc, char **argv, rc_options *o)
{
    *o = (rc_options){
        .mode = strcmp(cmd, "check") == 0 ? RC_CHECK : RC_REPAIR,
        .daemon = strcmp(cmd, "run") == 0,
        .progress = -1,
        .wait_s = 30,
        .lease_ttl_ms = 30000,
        .interval_s = 60,
        .log_level = -1,
    };
    int rc = parse(cmd, argc, argv, o);
    if (rc != 0) {
        rc_options_free(o);
        return rc;
    }
    /* Unset, the library reads FERRY_LOG_LEVEL itself (lib/log.c). */
    if (o->log_level >= 0)
        ferry_log_level_set((ferry_log_level)o->log_level);
    return 0;
}
