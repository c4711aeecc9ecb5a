/*
 * tu_proc.h — a program under test running beside the test as a child
 * process (a relay, a reconciler daemon), its stderr in a log file that
 * the test reads; for tests that kill, stop or restart it, or read what it
 * logged. Programs run to their end are tu_run's (testutil.h).
 *
 * Every wait polls up to a deadline; none sleeps blind. Every helper fails
 * the running cmocka test on error.
 */
#ifndef FERRY_TU_PROC_H
#define FERRY_TU_PROC_H

#include <sys/types.h>

typedef struct tu_proc {
    pid_t pid;
    int status;                 /* exit status once collected (128+N for
                                   signal N), else -1 */
    char name[32];              /* argv[0]'s last part, for messages */
    char log[64];               /* the file its stderr goes to */
} tu_proc;

/* Start argv (argv[0] a path, NULL-terminated) with stdin and stdout on
 * /dev/null and stderr into a new temporary file, p.log. env: "NAME=VALUE"
 * strings put into the child's environment in order (NULL-terminated, may
 * be NULL). The kernel kills the child when the test process dies
 * (PR_SET_PDEATHSIG): a failed test leaves none behind. */
tu_proc tu_proc_start(const char *const *argv, const char *const *env);

/* Collect the exit status if it has exited; the status, or -1. */
int tu_proc_poll(tu_proc *p);
/* Wait up to timeout_ms for it to exit; the status, or -1. */
int tu_proc_wait(tu_proc *p, int timeout_ms);
/* SIGTERM, then tu_proc_wait; the status. */
int tu_proc_stop(tu_proc *p, int timeout_ms);

/* What it logged so far: malloc'd, caller frees. */
char *tu_proc_log(const tu_proc *p);
/* Wait until it logged needle; fail the test, showing its log, if it
 * exits first or timeout_ms passes. */
void tu_proc_await_log(tu_proc *p, const char *needle, int timeout_ms);
/* Fail the test with the printf-style message, showing its log first. */
void tu_proc_fail(const tu_proc *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* SIGKILL if it still runs, collect it, remove its log. */
void tu_proc_done(tu_proc *p);
/* The end of a program that must stop cleanly: tu_proc_stop, its status
 * and log on stderr unless it exited 0, then tu_proc_done. The status. */
int tu_proc_finish(tu_proc *p, int timeout_ms);

/* The ASan options a relay child runs under where the test says so: the
 * test's own (scripts/run-tests.sh) replaced by leak detection only. */
#define TU_RELAY_ASAN "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1"

/* `ferry-relay run --db <the test cluster> --kafka KAFKA --holder HOLDER
 * ARGS...` (tu_relay_bin(); args NULL-terminated, may be NULL), started as
 * tu_proc_start does with env. */
tu_proc tu_relay_start(const char *kafka, const char *holder, const char *const *args,
                       const char *const *env);

/* The end of a relay run with --once: wait up to 120 s for it to exit; if
 * it did not exit 0, the end of its log on stderr; its log into *log_out
 * (the caller frees it) or freed; then tu_proc_done. Its exit status. */
int tu_relay_once_end(tu_proc *p, const char *holder, char **log_out);

/* The port of a program's metrics endpoint (started with --metrics
 * 127.0.0.1:0), from its metrics.listen log event; fails the test when it
 * does not come within 30 s. */
int tu_proc_metrics_port(tu_proc *p);

#endif
