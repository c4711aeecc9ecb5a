/*
 * rc_config.h — the settings and options of `check`, `repair` and `run`:
 * built-in defaults, then a YAML file (--config FILE or
 * $FERRY_RECONCILE_CONFIG), then the environment, then flags, each
 * overriding the last, as for ferry-relay (daemon/config.h).
 *
 * Every setting has a key in the file, a variable and a flag, all three
 * from one table (rc_config.c): db (FERRY_DB, shared with ferry-relay),
 * rules, sagas, reply_topic, holder, wait, lease_ttl, interval, metrics
 * (FERRY_RECONCILE_<NAME>) and log_level (FERRY_LOG_LEVEL, shared with
 * every program and the library). Any value may hold ${env:NAME} and
 * ${file:/path} references (common/confref.h). What a single invocation
 * asks (--json, --progress, --replay, --discard, --reason, --by) is a
 * flag only.
 */
#ifndef FERRY_RC_CONFIG_H
#define FERRY_RC_CONFIG_H

#include <stddef.h>

#include "reconcile.h"

enum { RC_FOR_CHECK = 1, RC_FOR_REPAIR = 2, RC_FOR_RUN = 4, RC_FOR_ALL = 7 };

typedef struct rc_options {
    rc_mode mode;
    int daemon;                 /* run */
    const char *db;
    const char *rules_file;
    const char *sagas_dir;
    const char *reply_topic;
    int json;
    int progress;               /* -1: when stderr is a terminal */
    const char *by;
    const char *reason;
    const char *holder;
    int wait_s;                 /* repair: wait this long for the lease */
    int lease_ttl_ms;
    double interval_s;          /* run */
    const char *metrics;        /* run: HOST:PORT */
    int log_level;              /* -1: not set (the library's FERRY_LOG_LEVEL) */
    rc_dead_request *requests;
    size_t n_requests;
    char *owned[16];            /* the settings' values, by setting (rc_config.c) */
} rc_options;

/*
 * Fill o for cmd ("check", "repair" or "run") from argv (argv[0] the
 * command). Returns 0; or the exit status to end with, after saying why
 * on stderr: RC_EXIT_USAGE (16) for a bad flag, file or variable,
 * RC_EXIT_ERROR (8) when out of memory. --help prints the help on stdout
 * and exits the process (0). o is rc_options_free'd in every case.
 */
int rc_options_parse(const char *cmd, int argc, char **argv, rc_options *o);
void rc_options_free(rc_options *o);

/* The options of check, repair and run, as --help shows them: name,
 * argument (NULL: none), the commands it is for, what it does; for a
 * setting also its file key, variable and default (else NULL). The list
 * ends with a NULL name. rc_pass_options() is the getopt table parsed. */
typedef struct rc_option_doc {
    const char *name, *arg;
    int commands;
    const char *doc;
    const char *key, *env, *def;
} rc_option_doc;
struct option;
const rc_option_doc *rc_option_docs(void);
const struct option *rc_pass_options(void);
/* d is for cmd ("check", "repair", "run"). */
int rc_option_applies(const rc_option_doc *d, const char *cmd);

#endif
