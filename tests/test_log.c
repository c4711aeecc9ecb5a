/*
 * test_log.c — the library's log level (lib/log.c): FERRY_LOG_LEVEL for
 * every program and service that links libferry, and the call that
 * overrides it. The level is read once per process, so each case runs in
 * a child of its own, its stderr captured. Needs no server.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "internal.h"

/* In a child with FERRY_LOG_LEVEL=env (NULL: unset), after set (-1: no
 * call to ferry_log_level_set), one event of each level; what the child
 * wrote on stderr (caller frees). */
static char *log_of(const char *env, int set)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[1], STDERR_FILENO);
        close(p[0]);
        close(p[1]);
        if (env)
            setenv("FERRY_LOG_LEVEL", env, 1);
        else
            unsetenv("FERRY_LOG_LEVEL");
        if (set >= 0)
            ferry_log_level_set((ferry_log_level)set);
        ferry__log(FERRY_LOG_ERROR, "t.error", "e");
        ferry__log(FERRY_LOG_WARN, "t.warn", "w");
        ferry__log(FERRY_LOG_INFO, "t.info", "i");
        ferry__log(FERRY_LOG_DEBUG, "t.debug", "d");
        _exit(0);
    }
    close(p[1]);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    ssize_t n;
    while ((n = read(p[0], buf + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    close(p[0]);
    buf[len] = '\0';
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return buf;
}

/* Exactly the events from "t.error" to the one of level `through`. */
static void assert_levels(const char *log, int through)
{
    static const char *const events[] = {"\"t.error\"", "\"t.warn\"", "\"t.info\"", "\"t.debug\""};
    for (int i = 0; i < 4; i++) {
        int shown = strstr(log, events[i]) != NULL;
        if (shown != (i <= through))
            fail_msg("%s %s, expected otherwise; log:\n%s", events[i],
                     shown ? "written" : "missing", log);
    }
}

static void ferry_log_level_from_the_environment(void **state)
{
    char *log = log_of(NULL, -1);
    assert_levels(log, FERRY_LOG_INFO);
    free(log);
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        log = log_of(names[i], -1);
        assert_levels(log, i);
        free(log);
    }
    log = log_of("", -1);                 /* empty: unset */
    assert_levels(log, FERRY_LOG_INFO);
    free(log);
}

static void a_bad_level_is_said_once_and_info_applies(void **state)
{
    char *log = log_of("loud", -1);
    assert_levels(log, FERRY_LOG_INFO);
    const char *said = strstr(log, "FERRY_LOG_LEVEL=loud: expected error, warn, info or debug");
    assert_non_null(said);
    assert_null(strstr(said + 1, "FERRY_LOG_LEVEL=loud"));
    assert_non_null(strstr(log, "\"level\":\"warn\",\"event\":\"log.level\""));
    free(log);
}

static void the_call_overrides_the_environment(void **state)
{
    char *log = log_of("debug", FERRY_LOG_LEVEL_WARN);
    assert_levels(log, FERRY_LOG_WARN);
    free(log);
    log = log_of("error", FERRY_LOG_LEVEL_DEBUG);
    assert_levels(log, FERRY_LOG_DEBUG);
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ferry_log_level_from_the_environment),
        cmocka_unit_test(a_bad_level_is_said_once_and_info_applies),
        cmocka_unit_test(the_call_overrides_the_environment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
