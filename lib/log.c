/*
 * log.c — structured logs for ferry's programs: one JSON object per line
 * on stderr, {"ts": ..., "level": ..., "event": ..., "msg": ..., fields}.
 * A line is written with one write(2), so lines from several threads do
 * not interleave.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "internal.h"

static int log_threshold = FERRY_LOG_INFO;

void ferry_log_set_level(int level) { log_threshold = level; }
void ferry_log_level_set(ferry_log_level level) { log_threshold = (int)level; }
int ferry_log_threshold(void) { return log_threshold; }

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void ferry_log_json(int level, const char *event, json_t *fields, const char *fmt, ...)
{
    if (level > log_threshold) {
        json_decref(fields);
        return;
    }
    json_t *o = json_object();
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%06ldZ", (long)tv.tv_usec);
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level < 0 ? 0 : level > 3 ? 3 : level]));
    json_object_set_new(o, "event", json_string(event));
    if (fmt != NULL) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        /* json_string refuses invalid UTF-8; keep the line rather than lose it. */
        json_t *m = json_string(msg);
        json_object_set_new(o, "msg", m ? m : json_string("(message not UTF-8)"));
    }
    if (fields != NULL) {
        json_object_update(o, fields);
        json_decref(fields);
    }
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (line == NULL)
        return;
    size_t len = strlen(line);
    char *out = malloc(len + 2);
    if (out != NULL) {
        memcpy(out, line, len);
        out[len] = '\n';
        ssize_t w = write(STDERR_FILENO, out, len + 1);
        (void)w;
        free(out);
    }
    free(line);
}
