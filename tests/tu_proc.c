/* tu_proc.c — see tu_proc.h. */
#include "tu_proc.h"

#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

tu_proc tu_proc_start(const char *const *argv, const char *const *env)
{
    tu_proc p = {.status = -1};
    char *path = strdup(argv[0]);
    assert_non_null(path);
    snprintf(p.name, sizeof p.name, "%s", basename(path));
    free(path);
    snprintf(p.log, sizeof p.log, "/tmp/ferry-test-%.20s-XXXXXX", p.name);
    int fd = mkstemp(p.log);
    assert_true(fd >= 0);
    p.pid = fork();
    assert_true(p.pid >= 0);
    if (p.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, 2);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        for (size_t i = 0; env != NULL && env[i] != NULL; i++)
            putenv((char *)env[i]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd);
    return p;
}

int tu_proc_poll(tu_proc *p)
{
    int st;
    if (p->status < 0 && waitpid(p->pid, &st, WNOHANG) == p->pid)
        p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return p->status;
}

int tu_proc_wait(tu_proc *p, int timeout_ms)
{
    for (int64_t end = clk_mono_ms() + timeout_ms; tu_proc_poll(p) < 0 && clk_mono_ms() < end;)
        clk_sleep_ms(10);
    return tu_proc_poll(p);
}

int tu_proc_stop(tu_proc *p, int timeout_ms)
{
    if (tu_proc_poll(p) < 0)
        kill(p->pid, SIGTERM);
    return tu_proc_wait(p, timeout_ms);
}

char *tu_proc_log(const tu_proc *p)
{
    char *log = tu_slurp(p->log, NULL);
    if (log == NULL)
        fail_msg("the log of %s %d, %s, is gone", p->name, (int)p->pid, p->log);
    return log;
}

void tu_proc_fail(const tu_proc *p, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char *log = tu_slurp(p->log, NULL);
    print_error("--- log of %s %d:\n%s\n", p->name, (int)p->pid, log ? log : "(none)");
    free(log);
    fail_msg("%s", what);
    abort();    /* fail_msg does not return; this tells the compiler */
}

void tu_proc_await_log(tu_proc *p, const char *needle, int timeout_ms)
{
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        char *log = tu_proc_log(p);
        int found = strstr(log, needle) != NULL;
        free(log);
        if (found)
            return;
        if (tu_proc_poll(p) >= 0)
            tu_proc_fail(p, "%s exited with %d before logging %s", p->name, p->status, needle);
        if (clk_mono_ms() >= end)
            tu_proc_fail(p, "%s %d did not log %s within %d ms", p->name, (int)p->pid, needle,
                         timeout_ms);
        clk_sleep_ms(10);
    }
}

void tu_proc_done(tu_proc *p)
{
    if (tu_proc_poll(p) < 0) {
        kill(p->pid, SIGKILL);
        tu_proc_wait(p, 10000);
    }
    unlink(p->log);
}

int tu_proc_finish(tu_proc *p, int timeout_ms)
{
    int st = tu_proc_stop(p, timeout_ms);
    if (st != 0) {
        char *log = tu_slurp(p->log, NULL);
        fprintf(stderr, "%s %d exited with status %d; its log:\n%s\n", p->name, (int)p->pid, st,
                log ? log : "(none)");
        free(log);
    }
    tu_proc_done(p);
    return st;
}

int tu_relay_once_end(tu_proc *p, const char *holder, char **log_out)
{
    int st = tu_proc_wait(p, 120000);
    char *log = tu_proc_log(p);
    if (st != 0 && log != NULL)     /* a failing run says why */
        fprintf(stderr, "relay %s exited %d; its log ends:\n%s\n", holder, st,
                strlen(log) > 4000 ? log + strlen(log) - 4000 : log);
    if (log_out != NULL)
        *log_out = log;
    else
        free(log);
    tu_proc_done(p);
    return st;
}

tu_proc tu_relay_start(const char *kafka, const char *holder, const char *const *args,
                       const char *const *env)
{
    enum { MAX = 48 };
    const char *argv[MAX + 1] = {tu_relay_bin(), "run", "--db", fpg_conninfo(tu_pg),
                                 "--kafka", kafka, "--holder", holder};
    size_t n = 8;
    for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
        assert_true(n < MAX);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    return tu_proc_start(argv, env);
}

int tu_proc_metrics_port(tu_proc *p)
{
    tu_proc_await_log(p, "\"event\":\"metrics.listen\"", 30000);
    char *log = tu_proc_log(p);
    const char *at = strstr(log, "\"port\":");
    assert_non_null(at);
    int port = atoi(at + strlen("\"port\":"));
    free(log);
    assert_true(port > 0);
    return port;
}
