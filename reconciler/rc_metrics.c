/*
 * rc_metrics.c — `ferry-reconcile run --metrics`: the daemon's figures
 * (rc_metrics.h lists them), rendered in the Prometheus text format as
 * the relay renders its own (daemon/metrics.c) and served by the
 * programs' HTTP server (common/httpd.c).
 *
 * Who touches what: the run loop updates a few times per pass, the HTTP
 * thread renders once per scrape. Neither is a hot path, so one mutex
 * guards every figure, and a scrape sees one pass's figures together
 * (never the problems of one pass beside the status of another).
 */
#include "rc_metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "httpd.h"
#include "promtext.h"
#include "internal.h"

#include <jansson.h>

/* run only repairs, so found stays 0; rendered all the same, so that a
 * series never appears from nowhere should run ever check. */
#define RC_OUTCOMES (RC_PENDING + 1)
_Static_assert(sizeof ((rc_sweep_stats *)0)->findings == RC_OUTCOMES * sizeof(int64_t),
               "a sweep's findings are one int64_t per outcome");

struct rc_metrics {
    httpd *server;

    pthread_mutex_t lock;                   /* guards everything below */
    int active;
    uint64_t passes, errors;
    uint64_t repaired[RC_SWEEP_COUNT];
    /* The last pass; have_pass is 0 until the first ends, and until then
     * these series are not rendered (their HELP and TYPE are). */
    int have_pass;
    int64_t problems[RC_SWEEP_COUNT][RC_OUTCOMES];
    int last_status;
    double last_seconds, last_timestamp;
    int last_error_count;
    /* An operational error outside any pass that still holds (the
     * database unreachable, the lease not taken): "" when none. While
     * it holds no pass runs, so the last pass cannot say it. */
    char trouble[200];
};

/* ------------------------------------------------------------------ */
/* Rendering                                                            */

static void header(FILE *f, const char *family, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", family, help, family, type);
}

/* Sweep and outcome names are fixed identifiers ("garbage", "left"): no
 * label value needs escaping. */
static void render(FILE *f, const rc_metrics *m)
{
    char num[32];
    header(f, "ferry_reconcile_active", "gauge",
           "1 while this instance holds the reconciler's lease.");
    fprintf(f, "ferry_reconcile_active %d\n", m->active);
    header(f, "ferry_reconcile_passes_total", "counter", "Passes run.");
    fprintf(f, "ferry_reconcile_passes_total %" PRIu64 "\n", m->passes);
    header(f, "ferry_reconcile_errors_total", "counter",
           "Operational errors, in passes or connecting and taking the lease.");
    fprintf(f, "ferry_reconcile_errors_total %" PRIu64 "\n", m->errors);
    header(f, "ferry_reconcile_repaired_total", "counter", "Problems repaired, by sweep.");
    for (int s = 0; s < RC_SWEEP_COUNT; s++)
        fprintf(f, "ferry_reconcile_repaired_total{sweep=\"%s\"} %" PRIu64 "\n",
                rc_sweep_name((rc_sweep_id)s), m->repaired[s]);

    header(f, "ferry_reconcile_problems", "gauge",
           "The last pass's findings, by sweep and outcome.");
    if (m->have_pass)
        for (int s = 0; s < RC_SWEEP_COUNT; s++)
            for (int o = 0; o < RC_OUTCOMES; o++)
                fprintf(f, "ferry_reconcile_problems{sweep=\"%s\",outcome=\"%s\"} %" PRId64 "\n",
                        rc_sweep_name((rc_sweep_id)s), rc_outcome_name((rc_outcome)o),
                        m->problems[s][o]);
    header(f, "ferry_reconcile_last_pass_status", "gauge",
           "The last pass's exit status (fsck's: 1 repaired, 4 left, 8 error).");
    if (m->have_pass)
        fprintf(f, "ferry_reconcile_last_pass_status %d\n", m->last_status);
    header(f, "ferry_reconcile_last_pass_seconds", "gauge", "The last pass's duration.");
    if (m->have_pass) {
        promtext_double(num, sizeof num, m->last_seconds);
        fprintf(f, "ferry_reconcile_last_pass_seconds %s\n", num);
    }
    header(f, "ferry_reconcile_last_pass_timestamp_seconds", "gauge",
           "When the last pass ended, in Unix time.");
    if (m->have_pass) {
        promtext_double(num, sizeof num, m->last_timestamp);
        fprintf(f, "ferry_reconcile_last_pass_timestamp_seconds %s\n", num);
    }
    char process[2048];
    if (promtext_process(process, sizeof process) < (int)sizeof process)
        fputs(process, f);
}

/* On the HTTP thread. */
static char *render_cb(void *arg)
{
    rc_metrics *m = arg;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    pthread_mutex_lock(&m->lock);
    render(f, m);
    pthread_mutex_unlock(&m->lock);
    int failed = ferror(f);
    /* fclose writes the final size and terminator into text. */
    if (fclose(f) != 0 || failed) {
        free(text);
        return NULL;
    }
    return text;
}

/* On the HTTP thread. */
static int health_cb(void *arg, char *reason, size_t len)
{
    rc_metrics *m = arg;
    pthread_mutex_lock(&m->lock);
    int errors = m->have_pass ? m->last_error_count : 0;
    if (m->trouble[0] != '\0')
        snprintf(reason, len, "%s", m->trouble);
    else if (errors > 0)
        snprintf(reason, len, "last pass had %d operational errors", errors);
    int healthy = m->trouble[0] == '\0' && errors == 0;
    pthread_mutex_unlock(&m->lock);
    return healthy;
}

/* ------------------------------------------------------------------ */
/* Life and updates                                                     */

rc_metrics *rc_metrics_start(const char *host_port)
{
    rc_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        fprintf(stderr, "ferry-reconcile: could not serve metrics on \"%s\": out of memory\n",
                host_port ? host_port : "");
        return NULL;
    }
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        fprintf(stderr, "ferry-reconcile: could not serve metrics on \"%s\": no mutex\n",
                host_port ? host_port : "");
        goto out_free;
    }
    char err[512] = "";
    int port = 0;
    m->server = httpd_start(host_port, render_cb, health_cb, m, &port, err, sizeof err);
    if (!m->server) {
        fprintf(stderr, "ferry-reconcile: %s\n", err);
        goto out_destroy_lock;
    }
    httpd_log_listen(host_port, port);     /* as the relay does */
    return m;

out_destroy_lock:
    pthread_mutex_destroy(&m->lock);
out_free:
    free(m);
    return NULL;
}

void rc_metrics_stop(rc_metrics *m)
{
    if (!m)
        return;
    /* Joins the HTTP thread first: no scrape reads m after this. */
    httpd_stop(m->server);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void rc_metrics_set_active(rc_metrics *m, int active)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->active = active != 0;
    pthread_mutex_unlock(&m->lock);
}

void rc_metrics_trouble(rc_metrics *m, const char *why)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->errors++;
    /* One line: a libpq message may run on over several. */
    snprintf(m->trouble, sizeof m->trouble, "%.*s", (int)strcspn(why, "\r\n"), why);
    if (m->trouble[0] == '\0')
        snprintf(m->trouble, sizeof m->trouble, "operational error");
    pthread_mutex_unlock(&m->lock);
}

void rc_metrics_trouble_over(rc_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->trouble[0] = '\0';
    pthread_mutex_unlock(&m->lock);
}

void rc_metrics_pass(rc_metrics *m, const rc_report *r, int status, double seconds)
{
    if (!m)
        return;
    assert(r);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&m->lock);
    m->passes++;
    for (int s = 0; s < RC_SWEEP_COUNT; s++) {
        const int64_t *found = r->sweep[s].findings;
        /* A negative count would be a bug in a sweep; a counter must
         * never go down for it. */
        if (found[RC_REPAIRED] > 0)
            m->repaired[s] += (uint64_t)found[RC_REPAIRED];
        memcpy(m->problems[s], found, sizeof m->problems[s]);
    }
    if (r->error_count > 0)
        m->errors += (uint64_t)r->error_count;
    m->last_error_count = r->error_count;
    m->last_status = status;
    m->last_seconds = seconds;
    m->last_timestamp = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    m->have_pass = 1;
    pthread_mutex_unlock(&m->lock);
}
