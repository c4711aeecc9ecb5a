/*
 * rc_ctx.c — a sweep's voice: its findings, operational errors and
 * progress, in the name of the sweep running now (ctx->sweep), into the
 * pass's report; and whether a signal asked it to stop.
 */
#include <stdarg.h>
#include <stdbool.h>

#include "internal.h"
#include "reconcile.h"

void rc_found(rc_ctx *ctx, const char *problem, const char *subject, int64_t count,
              rc_outcome outcome, json_t *detail, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rc_report_vfound(ctx->report, ctx->sweep, problem, subject, count, outcome, detail, fmt,
                     ap);
    va_end(ap);
}

int rc_error(rc_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rc_report_verror(ctx->report, ctx->sweep, fmt, ap);
    va_end(ap);
    return -1;
}

void rc_progress(rc_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rc_report_vprogress(ctx->report, ctx->sweep, ferry__now_ms(), fmt, ap);
    va_end(ap);
}

bool rc_stopping(const rc_ctx *ctx)
{
    return ctx->stop != NULL && *ctx->stop;
}
