/*
 * log.c — structured logs for ferry's programs: one JSON object per line
 * on stderr, {"ts": ..., "level": ..., "event": ..., "msg": ..., fields}.
 * A line is written with one write(2), so lines from several threads do
 * not interleave.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "internal.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/*
 * The threshold: -1 until a program or service sets one, and until then
 * FERRY_LOG_LEVEL's (error, warn, info, debug; default info), read once,
 * so that every program and every service linking the library honours
 * the variable without a line of its own (the relay and the reconciler
 * also take it as their log_level setting, where a bad value is refused).
 * A bad value cannot be refused here: it is logged once, as a warning,
 * and info applies.
 */
static int log_threshold = -1;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static int env_threshold = FERRY_LOG_INFO;
static char env_bad[40];                /* the bad value, cut; "" if none */
static int env_bad_said;

static void read_env(void)
{
    const char *v = getenv("FERRY_LOG_LEVEL");
    if (v == NULL || v[0] == '\0')
        return;
    for (int i = 0; i < 4; i++) {
        if (strcmp(v, level_names[i]) == 0) {
            env_threshold = i;
            return;
        }
    }
    snprintf(env_bad, sizeof env_bad, "%s", v);
}

void ferry_log_level_set(ferry_log_level level) { log_threshold = (int)level; }

int ferry__log_threshold(void)
{
    if (log_threshold >= 0)
        return log_threshold;
    pthread_once(&env_once, read_env);
    /* Said after pthread_once returns: ferry__log_json calls us. */
    if (env_bad[0] && !__atomic_exchange_n(&env_bad_said, 1, __ATOMIC_SEQ_CST))
        ferry__log_json(FERRY_LOG_WARN, "log.level",
                       json_pack("{s:s}", "variable", "FERRY_LOG_LEVEL"),
                       "FERRY_LOG_LEVEL=%s: expected error, warn, info or debug; logging at info",
                       env_bad);
    return env_threshold;
}

void ferry__log_json(int level, const char *event, json_t *fields, const char *fmt, ...)
{
    if (level > ferry__log_threshold()) {
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

/* libpq hands the notice processor the whole formatted message, e.g.
 * "FATAL:  terminating connection due to administrator command\n": the
 * severity before the first ":  ", then the text. */
static void pq_notice(void *arg, const char *message)
{
    static const struct {
        const char *name;
        int level;
    } severities[] = {
        {"PANIC", FERRY_LOG_ERROR}, {"FATAL", FERRY_LOG_ERROR}, {"ERROR", FERRY_LOG_ERROR},
        {"WARNING", FERRY_LOG_WARN}, {"NOTICE", FERRY_LOG_INFO}, {"INFO", FERRY_LOG_INFO},
        {"LOG", FERRY_LOG_INFO},     {"DEBUG", FERRY_LOG_DEBUG},
    };
    const char *session = arg ? arg : "?";
    const char *text = message;
    const char *severity = "NOTICE";
    int level = FERRY_LOG_INFO;
    const char *sep = strstr(message, ":  ");
    char sev[16] = "";
    if (sep != NULL && (size_t)(sep - message) < sizeof sev) {
        memcpy(sev, message, (size_t)(sep - message));
        sev[sep - message] = '\0';
        for (size_t i = 0; i < sizeof severities / sizeof severities[0]; i++) {
            if (strncmp(sev, severities[i].name, strlen(severities[i].name)) == 0) {
                severity = sev;
                level = severities[i].level;
                text = sep + 3;
                break;
            }
        }
    }
    size_t len = strlen(text);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
        len--;
    ferry__log_json(level, "db.notice", json_pack("{s:s, s:s}", "session", session,
                                                 "severity", severity),
                   "%.*s", (int)len, text);
}

void ferry__log_pq_notices(PGconn *conn, const char *session)
{
    if (conn != NULL)
        PQsetNoticeProcessor(conn, pq_notice, (void *)(uintptr_t)session);
}
