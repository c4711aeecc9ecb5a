/*
 * pass.h — between pass.c (the commands) and report.c (what a pass found).
 * Sweeps use reconcile.h only.
 */
#ifndef FERRY_RECONCILE_PASS_H
#define FERRY_RECONCILE_PASS_H

#include "reconcile.h"

/* The reconciler's lease in ferry.lease: one active per database. */
#define RC_LEASE_NAME "reconciler"

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
    int lease_lost;                     /* a fence or renewal found it gone */
    int backend_pid;                    /* the session the settings were made on */
    int log_json;                       /* run: errors as JSON log lines */
    int progress;                       /* show progress on stderr */
    int progress_tty;                   /* ... redrawn in place: stderr is a terminal */
    int progress_shown;
    int64_t progress_at;
} rc_report;

rc_report *rc_report_new(int progress);
void rc_report_free(rc_report *r);
/* fsck's exit status for what the report holds. */
int rc_report_status(const rc_report *r);
void rc_report_print(FILE *out, const rc_report *r, rc_mode mode);
json_t *rc_report_json(const rc_report *r, rc_mode mode);
const char *rc_outcome_name(rc_outcome o);
/* End of a sweep: the progress line gives way to the sweep's verdict. */
void rc_progress_done(rc_ctx *ctx);

/* Renew the reconciler's lease when a third of its time has gone by
 * (pass.c); FERRY_ESTATE when it was lost. */
ferry_code rc_lease_keep(rc_ctx *ctx, ferry_error *err);

#endif
