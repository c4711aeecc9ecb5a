/* Self-test for the pgtmp harness: lifecycle, restart, and cleanup after the
 * owning process crashes.  Exit 0 on success. */
#include "pgtmp.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "selftest: %s:%d: check failed: %s\n", __FILE__,     \
                    __LINE__, #cond);                                            \
            goto out;                                                            \
        }                                                                        \
    } while (0)

/* Returns a malloc'd single value, or NULL (message on stderr). */
static char *query1(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    char *v = NULL;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = strdup(PQgetvalue(r, 0, 0));
    else
        fprintf(stderr, "selftest: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return v;
}

static int query_is(PGconn *c, const char *sql, const char *want)
{
    char *v = query1(c, sql);
    int ok = v && strcmp(v, want) == 0;
    if (v && !ok) fprintf(stderr, "selftest: %s returned '%s', want '%s'\n", sql, v, want);
    free(v);
    return ok;
}

/* Zombies count as gone: in containers nobody may reap the orphaned postmaster. */
static int process_gone(long pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

static int dir_gone(const char *dir)
{
    struct stat st;
    return stat(dir, &st) != 0 && errno == ENOENT;
}

static void dirname_of(const char *datadir, char *out, size_t len)
{
    snprintf(out, len, "%s", datadir);
    char *slash = strrchr(out, '/');
    if (slash) *slash = '\0';
}

static int lifecycle(void)
{
    int ok = 0;
    PGconn *c = NULL;
    char *ci = NULL;
    static const char *const conf[] = {"work_mem = '7MB'", NULL};
    fpg_opts opts = {conf, 0};
    fpg *pg = fpg_start(&opts);
    CHECK(pg);
    CHECK(!fpg_external(pg));
    char tmpdir[PATH_MAX];
    dirname_of(fpg_datadir(pg), tmpdir, sizeof tmpdir);
    printf("selftest: started %s (%s)\n", tmpdir, fpg_conninfo(pg));

    CHECK((c = fpg_connect(pg)));
    CHECK(query_is(c, "SELECT 1", "1"));
    CHECK(query_is(c, "SHOW wal_level", "logical"));
    CHECK(query_is(c, "SHOW fsync", "off"));
    CHECK(query_is(c, "SHOW work_mem", "7MB"));
    PQfinish(c);
    c = NULL;

    long pid1 = fpg_postmaster_pid(pg);
    CHECK(pid1 > 0);
    CHECK(fpg_restart(pg, "fast") == 0);
    long pid2 = fpg_postmaster_pid(pg);
    printf("selftest: restarted, postmaster pid %ld -> %ld\n", pid1, pid2);
    CHECK(pid2 > 0 && pid2 != pid1);
    CHECK((c = fpg_connect(pg)));
    CHECK(query_is(c, "SELECT 1", "1"));
    PQfinish(c);
    c = NULL;

    CHECK((ci = fpg_conninfo_for(pg, NULL, "template1")));
    c = PQconnectdb(ci);
    CHECK(PQstatus(c) == CONNECTION_OK);
    CHECK(query_is(c, "SELECT current_database()", "template1"));
    PQfinish(c);
    c = NULL;

    fpg_destroy(pg);
    pg = NULL;
    CHECK(dir_gone(tmpdir));
    CHECK(process_gone(pid2));
    printf("selftest: destroyed, %s removed, postmaster %ld gone\n", tmpdir, pid2);
    ok = 1;
out:
    PQfinish(c);
    free(ci);
    fpg_destroy(pg);
    return ok;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int crash_cleanup(void)
{
    int ok = 0, fds[2] = {-1, -1};
    char buf[PATH_MAX + 64] = "";
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        close(fds[0]);
        fpg *pg = fpg_start(NULL);
        if (!pg) _exit(1);
        dprintf(fds[1], "%s\n%ld\n", fpg_datadir(pg), fpg_postmaster_pid(pg));
        abort(); /* no fpg_destroy: the watchdog must clean up */
    }
    close(fds[1]);
    fds[1] = -1;
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR) continue;
        CHECK(r > 0);
        n += (size_t)r;
    }
    buf[n] = '\0';
    int st;
    while (waitpid(child, &st, 0) < 0) CHECK(errno == EINTR);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);

    char *nl = strchr(buf, '\n');
    CHECK(nl);
    *nl = '\0';
    long pid = strtol(nl + 1, NULL, 10);
    CHECK(pid > 0);
    char tmpdir[PATH_MAX];
    dirname_of(buf, tmpdir, sizeof tmpdir);
    printf("selftest: child aborted holding %s (postmaster %ld)\n", tmpdir, pid);

    double t0 = now_s(), deadline = t0 + 30;
    while (!(dir_gone(tmpdir) && process_gone(pid)) && now_s() < deadline) {
        struct timespec tick = {0, 50 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
    CHECK(dir_gone(tmpdir));
    CHECK(process_gone(pid));
    printf("selftest: watchdog cleaned up after %.2f s\n", now_s() - t0);
    ok = 1;
out:
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
    return ok;
}

static int file_exists(const char *dir, const char *name)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static int rm_tree(const char *dir)
{
    const char *argv0 = "rm";
    pid_t pid = fork();
    if (pid == 0) {
        execlp(argv0, argv0, "-rf", "--", dir, (char *)NULL);
        _exit(127);
    }
    int st;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* With FERRY_PGTMP_TEMPLATE, the first cluster runs initdb and keeps a copy;
 * the next is copied from it (no initdb), and shares nothing with the first. */
static int template_copy(void)
{
    int ok = 0;
    PGconn *c = NULL;
    fpg *a = NULL, *b = NULL;
    char tpl[] = "/tmp/ferry-pgtpl-XXXXXX";
    char *old = getenv("FERRY_PGTMP_TEMPLATE") ? strdup(getenv("FERRY_PGTMP_TEMPLATE")) : NULL;
    CHECK(mkdtemp(tpl));
    CHECK(setenv("FERRY_PGTMP_TEMPLATE", tpl, 1) == 0);

    CHECK((a = fpg_start(NULL)));
    char adir[PATH_MAX], bdir[PATH_MAX];
    dirname_of(fpg_datadir(a), adir, sizeof adir);
    CHECK(file_exists(adir, "initdb.log")); /* the first made the template */
    CHECK((c = fpg_connect(a)));
    CHECK(query_is(c, "CREATE TABLE only_in_a(x int) ; SELECT 'made'", "made"));
    PQfinish(c);
    c = NULL;

    CHECK((b = fpg_start(NULL)));
    dirname_of(fpg_datadir(b), bdir, sizeof bdir);
    CHECK(!file_exists(bdir, "initdb.log")); /* copied, not initdb'd */
    CHECK(file_exists(bdir, "template.log"));
    CHECK((c = fpg_connect(b)));
    CHECK(query_is(c, "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'", "0"));
    CHECK(query_is(c, "SHOW wal_level", "logical")); /* its own settings, appended to its copy */
    PQfinish(c);
    c = NULL;
    printf("selftest: %s initdb'd into template %s, %s copied from it\n", adir, tpl, bdir);
    ok = 1;
out:
    PQfinish(c);
    fpg_destroy(a);
    fpg_destroy(b);
    rm_tree(tpl);
    if (old) setenv("FERRY_PGTMP_TEMPLATE", old, 1);
    else unsetenv("FERRY_PGTMP_TEMPLATE");
    free(old);
    return ok;
}

int main(void)
{
    /* this tests the throwaway cluster, never an external server */
    unsetenv("FERRY_TEST_PG");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!lifecycle()) return 1;
    if (!crash_cleanup()) return 1;
    if (!template_copy()) return 1;
    printf("selftest: OK\n");
    return 0;
}
