/*
 * reconcile.h — the parts of ferry-reconcile. main.c only dispatches; each
 * command and each sweep is its own file:
 *
 *   lint.c, graph.c     offline checks of saga definitions and rules files
 *   rules.c             the rules file: budgets and compliance rules
 *   pass.c              check / repair / run: options, connection, one
 *                       pass over every sweep
 *   report.c            findings, the report (text or JSON), progress
 *                       (report.h; no libpq)
 *   rc_ctx.c            a sweep's findings, errors and progress, in its name
 *   rc_tx.c             fenced repair transactions, statements, columns
 *   rc_lease.c          the reconciler's lease (rc_lease.h)
 *   plan.c              the sweeps' decisions, pure functions (plan.h)
 *   sweep_*.c           one sweep each: detect -> plan -> act
 *
 * A sweep finds problems and, in repair mode, fixes the ones it can, each
 * action idempotent and in a short transaction of its own that is fenced
 * by the reconciler's lease (rc_begin). It tells the report what it found
 * with rc_found(), and never prints itself.
 *
 * Exit status follows fsck(8): the OR of the conditions met.
 */
#ifndef FERRY_RECONCILE_H
#define FERRY_RECONCILE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "ferry.h"
#include "report.h"

/* Exit statuses: RC_EXIT_* (report.h). */

/* lint, graph (kept for their callers: lint exits 0, or 4 when a file is
 * refused, 8 when one cannot be read). */
#define RECONCILE_EXIT_OK RC_EXIT_OK
#define RECONCILE_EXIT_INVALID RC_EXIT_LEFT
#define RECONCILE_EXIT_USAGE RC_EXIT_USAGE

/* ------------------------------------------------------------ rules file */

/* The sweeps' budgets: the rules file's `budgets:` map, else these
 * defaults (rc_budgets_default). */
typedef struct rc_budgets {
    int64_t outbox_lag_ms;         /* unpublished longer than this: lag. 60s */
    int max_attempts;              /* outbox rows attempted this often: dead letter. 10 */
    int64_t saga_grace_ms;         /* a saga's timer overdue by more than this is
                                      one the workers missed. 30s */
    int64_t inbox_retention_ms;    /* inbox rows kept this long (the dedupe window). 7d */
    int64_t outbox_retention_ms;   /* published rows kept under mark retention. 7d */
    int64_t statement_timeout_ms;  /* each of the reconciler's own statements. 30s */
    int batch;                     /* rows per repair transaction. 1000 */
} rc_budgets;

void rc_budgets_default(rc_budgets *b);

/* One compliance rule: for every row the read-only detect query returns,
 * emit one message (topic, type) keyed by the row's `key` column, whose
 * payload is the row's `payload` column if it has one, else the whole row
 * as a JSON object. */
typedef struct rc_rule {
    char *name;                    /* [A-Za-z0-9._-]{1,128}, unique in the file */
    char *description;             /* NULL when not given */
    char *detect;                  /* SQL: one SELECT (or WITH ... SELECT) */
    int64_t timeout_ms;            /* statement timeout of detect. 5s */
    int max_rows;                  /* rows acted on per pass. 1000 */
    int64_t repeat_after_ms;       /* a row still found this long after its
                                      message is sent again. 10m */
    char *topic;                   /* emit: a valid Kafka topic name */
    char *type;                    /* emit: the message type */
    int line;                      /* where the rule starts in the file */
} rc_rule;

typedef struct rc_rules {
    char *file;
    rc_budgets budgets;
    rc_rule *rules;
    size_t count;
} rc_rules;

#define RC_RULES_FILE_MAX (1024 * 1024)
#define RC_RULES_MAX 256

/*
 * Load and check a rules file. On success *out is new (rc_rules_free).
 * On failure every error found goes into errs (file:line:column, field
 * path, message, as for saga definitions) and the code is FERRY_EINVAL
 * (also when the file cannot be read). Checks the YAML, the keys,
 * the types and ranges, the names, and that each detect query is a single
 * SELECT or WITH statement (no ';' except at the end).
 */
ferry_code rc_rules_load(const char *path, rc_rules **out, ferry_saga_load_errors *errs);
ferry_code rc_rules_parse(const char *text, size_t len, const char *name, rc_rules **out,
                          ferry_saga_load_errors *errs);
void rc_rules_free(rc_rules *r);

/* ------------------------------------------------------------------ pass */

typedef enum rc_dead_action { RC_REPLAY = 0, RC_DISCARD = 1 } rc_dead_action;

/* One --replay / --discard of the repair command line. target is a dead
 * letter id (digits), a message id (UUID: every dead letter of that
 * message), or TOPIC/KEY (every dead letter of that key, in position
 * order). */
typedef struct rc_dead_request {
    rc_dead_action action;
    const char *target;
} rc_dead_request;

struct rc_lease;

typedef struct rc_ctx {
    PGconn *conn;                  /* autocommit; sweeps run their own transactions */
    rc_mode mode;
    const rc_budgets *budgets;
    const rc_rules *rules;         /* NULL: no --rules */
    const ferry_saga_registry *sagas;  /* NULL: no --sagas */
    const char *actor;             /* who, for the records: --by, else user@host */
    const char *reason;            /* --reason, for discards (required with --discard) */
    const rc_dead_request *requests;
    size_t n_requests;
    struct rc_lease *lease;        /* repair: the reconciler's lease, renewed and
                                      checked by rc_begin; NULL: not held (check,
                                      or dead-letter decisions before taking it) */
    volatile sig_atomic_t *stop;   /* set by SIGINT/SIGTERM: finish the batch, return */
    rc_report *report;
    rc_sweep_id sweep;             /* the sweep running now (set by pass.c) */
    int lease_lost;                /* rc_begin found the lease gone: act no more */
    int backend_pid;               /* the session the settings were made on (rc_tx.c) */
} rc_ctx;

/* Each sweep: 0 when it ran to its end (whatever it found), -1 after an
 * operational error it reported with rc_error(); the pass goes on with
 * the next sweep unless the connection is gone. */
int rc_sweep_outbox(rc_ctx *ctx);
int rc_sweep_sagas(rc_ctx *ctx);           /* state running */
int rc_sweep_compensations(rc_ctx *ctx);   /* state compensating */
int rc_sweep_dead_letters(rc_ctx *ctx);
int rc_sweep_garbage(rc_ctx *ctx);
int rc_sweep_rules(rc_ctx *ctx);
int rc_sweep_wal_slot(rc_ctx *ctx);        /* sweep_slot.c */
/* Only the --replay / --discard requests of the dead-letter sweep (which
 * repair carries out first, without the lease), findings in its name.
 * 0, -1 after rc_error, or RC_EXIT_USAGE with refused (len bytes)
 * written and nothing done: two opposite decisions name one letter. */
int rc_dead_letter_requests(rc_ctx *ctx, char *refused, size_t len);

/*
 * Record a finding of the current sweep: a problem (a short code such as
 * "lag", "dead_lease", "past_deadline"), its subject ("shard 3",
 * "saga 0190…", "rule release-stale"), the rows it covers, what became of
 * it, and a sentence for people (printf-style). detail (may be NULL) is
 * any JSON object for --json; the report takes it over.
 */
void rc_found(rc_ctx *ctx, const char *problem, const char *subject, int64_t count,
              rc_outcome outcome, json_t *detail, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* An operational error in the current sweep (printed to stderr at once as
 * "ferry-reconcile: SWEEP: message"; the exit status gets 8). Returns -1. */
int rc_error(rc_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Progress on a terminal ("outbox: 12000 of 50000 rows"): shown on stderr
 * only when it is a terminal (or --progress), at most ten times a second,
 * and overwritten by the next; never in logs. */
void rc_progress(rc_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * A repair transaction: BEGIN, SET LOCAL statement_timeout (the budget)
 * and lock_timeout (a second: a sweep never queues behind writers), then
 * the fence: the reconciler's lease must still be ours under our epoch,
 * held FOR SHARE to the end of the transaction. FERRY_ESTATE when the
 * lease is lost (the pass must stop acting). Check mode may use it too:
 * then it is BEGIN READ ONLY, without the fence.
 */
ferry_code rc_begin(rc_ctx *ctx, ferry_error *err);
ferry_code rc_commit(rc_ctx *ctx, ferry_error *err);
void rc_rollback(rc_ctx *ctx);

/* Run one statement on ctx->conn; a failure becomes rc_error() with what
 * ("could not count lagging rows") and returns NULL. The caller PQclears. */
PGresult *rc_query(rc_ctx *ctx, const char *what, const char *sql, int nparams,
                   const char *const *params);

/* SQLSTATEs of a race that the next pass may win: lock_timeout (a relay
 * or worker held the row), deadlock, serialization failure. */
bool rc_is_busy(const PGresult *res);

/* rc_error "WHAT: MESSAGE", MESSAGE the server's error message of res
 * without its trailing newline. Returns -1. */
int rc_result_error(rc_ctx *ctx, const char *what, const PGresult *res);

/* One statement of a repair transaction. NULL on failure, the transaction
 * rolled back: *busy set and nothing reported for a race (rc_is_busy;
 * busy may be NULL: then a race is an error too), otherwise
 * rc_result_error naming what. The caller PQclears. */
PGresult *rc_act(rc_ctx *ctx, const char *what, const char *sql, int n,
                 const char *const *params, int *busy);

/* rc_begin, with the failure reported ("stopped before WHAT: ...",
 * "could not begin WHAT: ..."): -1 then (and no transaction); *lost set
 * when the reconciler's lease is gone (nothing more may act). */
int rc_act_begin(rc_ctx *ctx, const char *what, int *lost);
/* rc_commit, with the failure reported ("could not commit WHAT: ...")
 * and the transaction rolled back: -1 then. */
int rc_act_commit(rc_ctx *ctx, const char *what);

/* A signal asked the pass to stop: finish the batch, return. */
bool rc_stopping(const rc_ctx *ctx);

/* Column col of row: a number (0 when NULL), a boolean ('t'), text
 * (NULL when NULL; res owns it), JSON (new; NULL when NULL or not JSON:
 * the finding goes on without it). */
int64_t rc_int_at(const PGresult *res, int row, int col);
bool rc_bool_at(const PGresult *res, int row, int col);
const char *rc_str_at(const PGresult *res, int row, int col);
json_t *rc_json_at(const PGresult *res, int row, int col);

/* ---------------------------------------------------------- commands */

int reconcile_lint(int argc, char **argv);
int reconcile_graph(int argc, char **argv);
int reconcile_check(int argc, char **argv);
int reconcile_repair(int argc, char **argv);
int reconcile_run(int argc, char **argv);

/* Every error of errs to out, one per line, in the lint format. */
void reconcile_print_errors(FILE *out, const char *file, const ferry_saga_load_errors *errs);

#endif
