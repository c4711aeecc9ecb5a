/*
 * report.h — what a pass found: findings, operational errors, progress on
 * a terminal, and the report made of them (text for people, one JSON
 * document with --json) with fsck's exit status.
 *
 * No libpq here: the report knows sweeps and outcomes, not how a sweep
 * found them. Sweeps speak to it through their context (rc_found,
 * rc_error, rc_progress in reconcile.h); pass.c makes, prints and frees it.
 */
#ifndef FERRY_RECONCILE_REPORT_H
#define FERRY_RECONCILE_REPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* Exit status, fsck(8)'s: the OR of the conditions met. */
enum {
    RC_EXIT_OK = 0,          /* nothing wrong */
    RC_EXIT_REPAIRED = 1,    /* problems found and repaired */
    RC_EXIT_LEFT = 4,        /* problems left uncorrected (check: any found) */
    RC_EXIT_ERROR = 8,       /* operational error: connection, bad rules file, a rule failed */
    RC_EXIT_USAGE = 16,      /* usage or syntax error on the command line */
};

typedef enum rc_mode { RC_CHECK = 0, RC_REPAIR = 1 } rc_mode;

typedef enum rc_sweep_id {
    RC_SWEEP_OUTBOX = 0,           /* lag, dead relay leases, over-attempted rows */
    RC_SWEEP_SAGAS,                /* running sagas past their timer */
    RC_SWEEP_COMPENSATIONS,        /* compensating sagas past their timer */
    RC_SWEEP_DEAD_LETTERS,         /* report; replay / discard on request */
    RC_SWEEP_GARBAGE,              /* inbox past retention, published outbox rows */
    RC_SWEEP_RULES,                /* the rules file's compliance rules */
    RC_SWEEP_WAL_SLOT,             /* the WAL source's slot: missing, lost, inactive, lagging */
    RC_SWEEP_COUNT
} rc_sweep_id;

const char *rc_sweep_name(rc_sweep_id s);  /* "outbox", "sagas", ... */

/* What became of a finding. */
typedef enum rc_outcome {
    RC_FOUND = 0,      /* check: found, nothing done                  -> 4 */
    RC_REPAIRED,       /* repair: fixed in this pass                  -> 1 */
    RC_LEFT,           /* repair: could not be fixed here (why: text) -> 4 */
    RC_PENDING,        /* a repair sent earlier has not taken effect yet,
                          within its time: reported, not a problem    -> 0 */
} rc_outcome;

const char *rc_outcome_name(rc_outcome o);

typedef struct rc_finding {
    rc_sweep_id sweep;
    char *problem;
    char *subject;
    int64_t count;
    rc_outcome outcome;
    char *text;
    json_t *detail;
} rc_finding;

typedef struct rc_sweep_stats {
    int64_t findings[RC_PENDING + 1];   /* by outcome */
    int64_t rows[RC_PENDING + 1];       /* the rows those findings cover */
    int64_t kept, dropped;              /* findings kept for the report, and not */
    int errors;
} rc_sweep_stats;

typedef struct rc_report {
    rc_finding *f;
    size_t n, cap;
    rc_sweep_stats sweep[RC_SWEEP_COUNT];
    int ran[RC_SWEEP_COUNT];
    int error_count;
    json_t *errors;                     /* [{sweep, message}] */
    int log_json;                       /* run: errors as JSON log lines */
    int progress;                       /* show progress on stderr */
    int progress_tty;                   /* ... redrawn in place: stderr is a terminal */
    int progress_shown;
    int64_t progress_at;
} rc_report;

rc_report *rc_report_new(int progress);
void rc_report_free(rc_report *r);

/* A finding of sweep (see rc_found, reconcile.h); the report takes detail
 * over. A sweep or outcome out of range is an internal error, recorded as
 * an operational error. */
void rc_report_vfound(rc_report *r, rc_sweep_id sweep, const char *problem,
                      const char *subject, int64_t count, rc_outcome outcome, json_t *detail,
                      const char *fmt, va_list ap) __attribute__((format(printf, 8, 0)));
/* An operational error of sweep (RC_SWEEP_COUNT: of the pass), printed to
 * stderr at once, or logged as JSON under log_json. Returns -1. */
int rc_report_verror(rc_report *r, rc_sweep_id sweep, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
int rc_report_error(rc_report *r, rc_sweep_id sweep, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Progress of sweep on stderr (see rc_progress); now_ms is a monotonic
 * clock, for the rate limit. */
void rc_report_vprogress(rc_report *r, rc_sweep_id sweep, int64_t now_ms, const char *fmt,
                         va_list ap) __attribute__((format(printf, 4, 0)));
/* End of a sweep: the progress line gives way to the sweep's verdict. */
void rc_report_progress_done(rc_report *r, rc_sweep_id sweep);

/* fsck's exit status for what the report holds. */
int rc_report_status(const rc_report *r);
void rc_report_print(FILE *out, const rc_report *r, rc_mode mode);
json_t *rc_report_json(const rc_report *r, rc_mode mode);

/* "5m12s"-style text of a duration in milliseconds. */
const char *rc_duration(int64_t ms, char *buf, size_t len);

#endif
