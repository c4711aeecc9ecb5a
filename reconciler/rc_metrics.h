/*
 * rc_metrics.h — `ferry-reconcile run --metrics HOST:PORT`: the daemon's
 * figures in the Prometheus text format on /metrics, and /healthz, served
 * by the programs' HTTP server (common/httpd.c, libmicrohttpd).
 *
 *   ferry_reconcile_active                      1 while this instance holds the lease
 *   ferry_reconcile_passes_total                passes run
 *   ferry_reconcile_errors_total                operational errors (in passes, or
 *                                               connecting / taking the lease)
 *   ferry_reconcile_repaired_total{sweep}       problems repaired, since start
 *   ferry_reconcile_problems{sweep,outcome}     the last pass's findings: outcome
 *                                               repaired | left | pending
 *   ferry_reconcile_last_pass_status            its exit status (fsck's)
 *   ferry_reconcile_last_pass_seconds           its duration
 *   ferry_reconcile_last_pass_timestamp_seconds when it ended (Unix time)
 *
 * /healthz answers 200 "ok" unless the last pass had an operational error,
 * or one outside any pass still holds (the database unreachable): 503
 * with the reason. Every function accepts m == NULL (no --metrics).
 */
#ifndef FERRY_RC_METRICS_H
#define FERRY_RC_METRICS_H

#include "report.h"

typedef struct rc_metrics rc_metrics;

/* Serve on host_port; NULL after printing why to stderr. */
rc_metrics *rc_metrics_start(const char *host_port);
void rc_metrics_stop(rc_metrics *m);
void rc_metrics_set_active(rc_metrics *m, int active);
/* An operational error outside a pass (why: borrowed, its first line
 * kept): counted, and /healthz answers 503 with why until
 * rc_metrics_trouble_over (the database is reachable again). */
void rc_metrics_trouble(rc_metrics *m, const char *why);
void rc_metrics_trouble_over(rc_metrics *m);
/* A pass ended with this report, exit status and duration. */
void rc_metrics_pass(rc_metrics *m, const rc_report *r, int status, double seconds);

#endif
