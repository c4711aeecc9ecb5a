/*
 * report.c — what a pass found: findings, operational errors, progress on
 * a terminal, and the report made of them.
 *
 * A sweep never prints. It records findings here (through its context,
 * rc_ctx.c); pass.c prints the report at the end (text for people, one
 * JSON document with --json) and derives the exit status from it, fsck's
 * way: the OR of 1 (something repaired), 4 (something left) and 8 (an
 * operational error). Nothing here talks to the database.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "report.h"
#include "strbuf.h"

/* Findings kept per sweep for the report; beyond that only counted. */
#define KEEP_PER_SWEEP 100

static const char *const sweep_names[RC_SWEEP_COUNT] = {
    [RC_SWEEP_OUTBOX] = "outbox",
    [RC_SWEEP_SAGAS] = "sagas",
    [RC_SWEEP_COMPENSATIONS] = "compensations",
    [RC_SWEEP_DEAD_LETTERS] = "dead_letters",
    [RC_SWEEP_GARBAGE] = "garbage",
    [RC_SWEEP_RULES] = "rules",
    [RC_SWEEP_WAL_SLOT] = "wal_slot",
};

static const char *const outcome_names[] = {
    [RC_FOUND] = "found", [RC_REPAIRED] = "repaired", [RC_LEFT] = "left",
    [RC_PENDING] = "pending",
};

const char *rc_sweep_name(rc_sweep_id s)
{
    return (unsigned)s < RC_SWEEP_COUNT ? sweep_names[s] : "?";
}

const char *rc_outcome_name(rc_outcome o)
{
    return (unsigned)o <= RC_PENDING ? outcome_names[o] : "?";
}

rc_report *rc_report_new(int progress)
{
    rc_report *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->progress = progress;
    r->errors = json_array();
    if (r->errors == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void rc_report_free(rc_report *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->f[i].problem);
        free(r->f[i].subject);
        free(r->f[i].text);
        json_decref(r->f[i].detail);
    }
    free(r->f);
    json_decref(r->errors);
    free(r);
}

/*
 * Progress on stderr. On a terminal, one line redrawn in place ("\r" and
 * erase-line) and erased when its sweep ends: the report on stdout names
 * every sweep, so nothing of the progress stays on screen. Into a file or
 * a pipe (--progress), plain lines, at most one a second, and a line when
 * a sweep ends: no control sequences in a log.
 */

/* Erase a progress line before anything else goes to stderr. */
static void progress_clear(rc_report *r)
{
    if (r->progress_shown && r->progress_tty) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        r->progress_shown = 0;
    }
}

void rc_report_vfound(rc_report *r, rc_sweep_id sweep, const char *problem,
                      const char *subject, int64_t count, rc_outcome outcome, json_t *detail,
                      const char *fmt, va_list ap)
{
    if ((unsigned)sweep >= RC_SWEEP_COUNT || (unsigned)outcome > RC_PENDING) {
        json_decref(detail);
        rc_report_error(r, sweep, "internal: a finding (%s) outside a sweep",
                        problem ? problem : "?");
        return;
    }
    rc_sweep_stats *st = &r->sweep[sweep];
    st->findings[outcome]++;
    st->rows[outcome] += count;
    if (st->kept >= KEEP_PER_SWEEP) {
        st->dropped++;
        json_decref(detail);
        return;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 32;
        rc_finding *f = realloc(r->f, cap * sizeof *f);
        if (f == NULL) {
            st->dropped++;
            json_decref(detail);
            return;
        }
        r->f = f;
        r->cap = cap;
    }
    char *text = sb_vformat(fmt, ap);
    char *p = strdup(problem ? problem : ""), *subj = strdup(subject ? subject : "");
    if (p == NULL || subj == NULL) {
        free(p);
        free(subj);
        free(text);
        json_decref(detail);
        st->dropped++;
        return;
    }
    rc_finding *f = &r->f[r->n++];
    *f = (rc_finding){
        .sweep = sweep,
        .problem = p,
        .subject = subj,
        .count = count,
        .outcome = outcome,
        .text = text,
        .detail = detail,
    };
    st->kept++;
}

int rc_report_verror(rc_report *r, rc_sweep_id sweep, const char *fmt, va_list ap)
{
    char *text = sb_vformat(fmt, ap);
    progress_clear(r);
    const char *name = sweep < RC_SWEEP_COUNT ? rc_sweep_name(sweep) : "pass";
    if (r->log_json)
        ferry__log_json(FERRY_LOG_ERROR, "reconcile.error", json_pack("{s:s}", "sweep", name),
                       "%s", text ? text : fmt);
    else
        fprintf(stderr, "ferry-reconcile: %s: %s\n", name, text ? text : fmt);
    if (sweep < RC_SWEEP_COUNT)
        r->sweep[sweep].errors++;
    r->error_count++;
    json_array_append_new(r->errors, json_pack("{s:s, s:s}", "sweep", name, "message",
                                               text ? text : fmt));
    free(text);
    return -1;
}

int rc_report_error(rc_report *r, rc_sweep_id sweep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rc_report_verror(r, sweep, fmt, ap);
    va_end(ap);
    return -1;
}

void rc_report_vprogress(rc_report *r, rc_sweep_id sweep, int64_t now_ms, const char *fmt,
                         va_list ap)
{
    if (!r->progress)
        return;
    if (r->progress_shown && now_ms - r->progress_at < (r->progress_tty ? 100 : 1000))
        return;
    r->progress_at = now_ms;
    char *text = sb_vformat(fmt, ap);
    if (r->progress_tty)
        fprintf(stderr, "\r\033[K%s: %s", rc_sweep_name(sweep), text ? text : "");
    else
        fprintf(stderr, "%s: %s\n", rc_sweep_name(sweep), text ? text : "");
    fflush(stderr);
    r->progress_shown = 1;
    free(text);
}

void rc_report_progress_done(rc_report *r, rc_sweep_id sweep)
{
    if (!r->progress)
        return;
    progress_clear(r);
    r->progress_shown = 0;
    if (r->progress_tty)
        return;               /* the report says how the sweep went */
    const rc_sweep_stats *st = &r->sweep[sweep];
    int64_t problems = st->findings[RC_FOUND] + st->findings[RC_REPAIRED] + st->findings[RC_LEFT];
    fprintf(stderr, "%-14s %s\n", rc_sweep_name(sweep),
            st->errors ? "error" : problems == 0 ? "clean" : "problems found");
    fflush(stderr);
}

/* ------------------------------------------------------------ durations */

const char *rc_duration(int64_t ms, char *buf, size_t len)
{
    if (ms < 0)
        ms = 0;
    if (ms < 1000) {
        snprintf(buf, len, "%" PRId64 "ms", ms);
        return buf;
    }
    int64_t s = ms / 1000;
    int64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
    if (d > 0)
        snprintf(buf, len, "%" PRId64 "d%" PRId64 "h", d, h);
    else if (h > 0)
        snprintf(buf, len, "%" PRId64 "h%" PRId64 "m", h, m);
    else if (m > 0)
        snprintf(buf, len, "%" PRId64 "m%" PRId64 "s", m, sec);
    else
        snprintf(buf, len, "%" PRId64 "s", sec);
    return buf;
}

/* ------------------------------------------------------------ the report */

int rc_report_status(const rc_report *r)
{
    int status = RC_EXIT_OK;
    for (int s = 0; s < RC_SWEEP_COUNT; s++) {
        const rc_sweep_stats *st = &r->sweep[s];
        if (st->findings[RC_FOUND] || st->findings[RC_LEFT])
            status |= RC_EXIT_LEFT;
        if (st->findings[RC_REPAIRED])
            status |= RC_EXIT_REPAIRED;
    }
    if (r->error_count)
        status |= RC_EXIT_ERROR;
    return status;
}

/*
 * Text from the database as one line of the report, escaped as in C. Any
 * writer can emit a key with control characters (emit takes any valid
 * UTF-8 without NUL): printed raw, a newline forged report lines of its
 * own ("[repaired] ...", "summary: no problems; exit 0") and ESC drove
 * the terminal. So C0 controls and DEL become \n, \r, \t or \xHH, the C1
 * controls (U+0080..U+009F; some terminals act on U+009B as CSI) \u00HH,
 * and the backslash \\, so that an escape cannot be forged either. The
 * findings' sentences are written whole through this: the sweeps' own
 * words hold no control character and no backslash, and the values they
 * quote from the database (keys, topics, consumers, reasons, holders,
 * rule output) are all escaped in one place. ferry-relay status turns
 * controls into '?' in its cells (daemon/status.c); a report line is not
 * a cell, and a key printed unambiguously can be told apart and looked up.
 */
static void put_line_text(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        unsigned char c = *p;
        if (c == '\\')
            fputs("\\\\", out);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\r')
            fputs("\\r", out);
        else if (c == '\t')
            fputs("\\t", out);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\x%02x", c);
        else if (c == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            fprintf(out, "\\u%04x", (unsigned)*++p);
        else
            fputc(c, out);
    }
}

static const char *plural(int64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

void rc_report_print(FILE *out, const rc_report *r, rc_mode mode)
{
    int64_t total[RC_PENDING + 1] = {0};
    for (int s = 0; s < RC_SWEEP_COUNT; s++) {
        const rc_sweep_stats *st = &r->sweep[s];
        int64_t problems = st->findings[RC_FOUND] + st->findings[RC_REPAIRED]
                           + st->findings[RC_LEFT];
        for (int o = 0; o <= RC_PENDING; o++)
            total[o] += st->findings[o];
        if (!r->ran[s]) {
            fprintf(out, "%-14s skipped\n", rc_sweep_name(s));
            continue;
        }
        if (problems == 0 && st->findings[RC_PENDING] == 0 && st->errors == 0) {
            fprintf(out, "%-14s clean\n", rc_sweep_name(s));
            continue;
        }
        fprintf(out, "%-14s", rc_sweep_name(s));
        if (problems == 0)
            fprintf(out, " no problems");
        else if (mode == RC_CHECK)
            fprintf(out, " %" PRId64 " %s", problems, plural(problems, "problem", "problems"));
        else
            fprintf(out, " %" PRId64 " %s: %" PRId64 " repaired, %" PRId64 " left", problems,
                    plural(problems, "problem", "problems"), st->findings[RC_REPAIRED],
                    st->findings[RC_LEFT]);
        if (st->findings[RC_PENDING])
            fprintf(out, "; %" PRId64 " pending", st->findings[RC_PENDING]);
        if (st->errors)
            fprintf(out, "; %d %s", st->errors, plural(st->errors, "error", "errors"));
        fputc('\n', out);
        for (size_t i = 0; i < r->n; i++) {
            const rc_finding *f = &r->f[i];
            if (f->sweep != (rc_sweep_id)s)
                continue;
            fprintf(out, "  [%s] ", rc_outcome_name(f->outcome));
            put_line_text(out, f->problem);
            fputs(": ", out);
            put_line_text(out, f->text ? f->text : f->subject);
            fputc('\n', out);
        }
        if (st->dropped)
            fprintf(out, "  ... and %" PRId64 " more %s\n", st->dropped,
                    plural(st->dropped, "finding", "findings"));
    }
    int64_t problems = total[RC_FOUND] + total[RC_REPAIRED] + total[RC_LEFT];
    int status = rc_report_status(r);
    if (problems == 0)
        fprintf(out, "summary: no problems");
    else if (mode == RC_CHECK)
        fprintf(out, "summary: %" PRId64 " %s found, nothing changed (check)", problems,
                plural(problems, "problem", "problems"));
    else
        fprintf(out, "summary: %" PRId64 " %s found, %" PRId64 " repaired, %" PRId64 " left",
                problems, plural(problems, "problem", "problems"), total[RC_REPAIRED],
                total[RC_LEFT]);
    if (r->error_count)
        fprintf(out, "; %d operational %s", r->error_count,
                plural(r->error_count, "error", "errors"));
    fprintf(out, "; exit %d\n", status);
}

json_t *rc_report_json(const rc_report *r, rc_mode mode)
{
    json_t *sweeps = json_object();
    for (int s = 0; s < RC_SWEEP_COUNT; s++) {
        const rc_sweep_stats *st = &r->sweep[s];
        json_t *findings = json_array();
        for (size_t i = 0; i < r->n; i++) {
            const rc_finding *f = &r->f[i];
            if (f->sweep != (rc_sweep_id)s)
                continue;
            json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:s}", "problem", f->problem,
                                  "subject", f->subject, "count", (json_int_t)f->count,
                                  "outcome", rc_outcome_name(f->outcome), "message",
                                  f->text ? f->text : "");
            if (j && f->detail)
                json_object_set(j, "detail", f->detail);
            json_array_append_new(findings, j);
        }
        json_t *counts = json_object();
        for (int o = 0; o <= RC_PENDING; o++)
            json_object_set_new(counts, rc_outcome_name(o), json_integer(st->findings[o]));
        json_object_set_new(sweeps, rc_sweep_name(s),
                            json_pack("{s:b, s:o, s:o, s:I, s:i}", "ran", r->ran[s],
                                      "counts", counts, "findings", findings, "more",
                                      (json_int_t)st->dropped, "errors", st->errors));
    }
    return json_pack("{s:s, s:i, s:o, s:O}", "mode", mode == RC_CHECK ? "check" : "repair",
                     "status", rc_report_status(r), "sweeps", sweeps, "errors", r->errors);
}
