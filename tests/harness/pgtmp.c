/* pgtmp: see pgtmp.h.  Everything runs through fork/execvp with argv arrays,
 * so temp paths never pass through a shell. */
#include "pgtmp.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define FPG_PORT "5432" /* safe to hard-code: the socket lives in our own dir */

struct fpg {
    int external;
    int as_root;        /* server binaries must run as "postgres" via runuser */
    char *conninfo;
    pid_t watchdog;     /* 0 when none */
    int wd_fd;          /* write end of the watchdog pipe, -1 when none */
    char tmpdir[128];   /* short: the socket path inside must fit sun_path */
    char datadir[PATH_MAX];
    char bindir[PATH_MAX];
};

static const char *runuser_path(void)
{
    /* root's PATH in containers/CI often lacks the sbin dirs */
    if (access("/usr/sbin/runuser", X_OK) == 0) return "/usr/sbin/runuser";
    if (access("/sbin/runuser", X_OK) == 0) return "/sbin/runuser";
    return "runuser";
}

/* Runs argv to completion with stdin from /dev/null and stdout/stderr on the
 * given fds (-1: /dev/null).  Returns the exit code, 128+signal, or -1. */
static int run(const char *const argv[], int as_pg, int out_fd, int err_fd, const char *cwd)
{
    const char *full[48];
    size_t n = 0;
    if (as_pg) {
        full[n++] = runuser_path();
        full[n++] = "-u";
        full[n++] = "postgres";
        full[n++] = "--";
    }
    for (size_t i = 0; argv[i]; i++) {
        if (n + 1 >= sizeof full / sizeof full[0]) return -1;
        full[n++] = argv[i];
    }
    full[n] = NULL;

    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull < 0) _exit(126);
        dup2(devnull, STDIN_FILENO);
        dup2(out_fd >= 0 ? out_fd : devnull, STDOUT_FILENO);
        dup2(err_fd >= 0 ? err_fd : devnull, STDERR_FILENO);
        /* as postgres, the test's cwd may be unreadable, which initdb dislikes */
        if (cwd && chdir(cwd) != 0) _exit(126);
        execvp(full[0], (char *const *)full);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Like run() for a pg binary, output appended to <tmpdir>/<logname>. */
static int run_pg(const fpg *pg, const char *const args[], const char *logname)
{
    char log[PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/%s", pg->tmpdir, logname);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "pgtmp: cannot open %s: %s\n", log, strerror(errno));
        return -1;
    }
    int rc = run(args, pg->as_root, fd, fd, pg->tmpdir);
    close(fd);
    return rc;
}

static int has_initdb(const char *dir)
{
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/initdb", dir);
    return access(p, X_OK) == 0;
}

static int find_bindir(char *out, size_t len)
{
    int rc = -1, fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
        const char *argv[] = {"pg_config", "--bindir", NULL};
        /* output is one short line, far below the pipe buffer, so no deadlock */
        int st = run(argv, 0, fds[1], -1, NULL);
        close(fds[1]);
        char buf[PATH_MAX];
        ssize_t r = st == 0 ? read(fds[0], buf, sizeof buf - 1) : -1;
        close(fds[0]);
        if (r > 0) {
            buf[r] = '\0';
            buf[strcspn(buf, "\r\n")] = '\0';
            if (has_initdb(buf) && strlen(buf) < len) {
                strcpy(out, buf);
                return 0;
            }
        }
    }

    /* Debian keeps initdb out of PATH; prefer the newest installed major */
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) == 0) {
        double best = -1;
        for (size_t i = 0; i < g.gl_pathc; i++) {
            double v = strtod(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"), NULL);
            size_t dl = strlen(g.gl_pathv[i]) - strlen("/initdb");
            if (v > best && access(g.gl_pathv[i], X_OK) == 0 && dl < len) {
                best = v;
                memcpy(out, g.gl_pathv[i], dl);
                out[dl] = '\0';
                rc = 0;
            }
        }
        globfree(&g);
        if (rc == 0) return 0;
    }

    const char *path = getenv("PATH");
    while (path && *path) {
        size_t dl = strcspn(path, ":");
        if (dl > 0 && dl < len && path[0] == '/') {
            memcpy(out, path, dl);
            out[dl] = '\0';
            if (has_initdb(out)) return 0;
        }
        path += dl + (path[dl] == ':');
    }
    fprintf(stderr, "pgtmp: cannot find initdb (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)\n");
    return -1;
}

static void print_tail(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    char buf[8192];
    long start = 0;
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) > (long)sizeof buf - 1)
        start = ftell(f) - (long)(sizeof buf - 1);
    fseek(f, start, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = buf + n;
    for (int seen = 0; p > buf; p--)
        if (p[-1] == '\n' && p != buf + n && ++seen >= lines) break;
    fprintf(stderr, "pgtmp: --- last lines of %s ---\n%s%s", path, p,
            (n && buf[n - 1] != '\n') ? "\n" : "");
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    if (remove(path) != 0 && errno != ENOENT)
        fprintf(stderr, "pgtmp: cannot remove %s: %s\n", path, strerror(errno));
    return 0; /* keep going: leave as little behind as possible */
}

/* Used by the watchdog and as fpg_destroy's fallback when the watchdog died. */
static void teardown(const fpg *pg)
{
    char pidfile[PATH_MAX + 32], ctl[PATH_MAX + 16];
    snprintf(pidfile, sizeof pidfile, "%s/postmaster.pid", pg->datadir);
    if (access(pidfile, F_OK) == 0) {
        snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg->bindir);
        const char *argv[] = {ctl, "stop", "-D", pg->datadir, "-m", "immediate", "-w", "-t", "60", NULL};
        int rc = run(argv, pg->as_root, -1, -1, pg->tmpdir);
        if (rc != 0)
            fprintf(stderr, "pgtmp: pg_ctl stop -m immediate failed (exit %d) for %s\n", rc, pg->datadir);
    }
    nftw(pg->tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static _Noreturn void watchdog_main(const fpg *pg, int rfd)
{
    /* own session: a ^C aimed at the test's process group must not reach us */
    setsid();
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL); /* the test may ignore it, which breaks waitpid */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO); /* stderr stays, for teardown failures */
    }
    /* Inherited fds would keep other clusters' pipes (and the test's sockets)
     * open, so another watchdog would never see EOF. */
    if (rfd != 3) {
        dup3(rfd, 3, O_CLOEXEC); /* pg_ctl stop need not inherit it */
        rfd = 3;
    }
    int closed = 0;
#ifdef SYS_close_range
    closed = syscall(SYS_close_range, 4U, ~0U, 0U) == 0;
#endif
    if (!closed) {
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 4; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close((int)fd);
    }
    if (chdir("/") != 0) { /* not fatal: only avoids pinning the cwd */ }

    char c;
    ssize_t r;
    while ((r = read(rfd, &c, 1)) != 0)
        if (r < 0 && errno != EINTR) break;
    teardown(pg);
    _exit(0); /* never run the test's atexit handlers or flush its stdio */
}

static int start_watchdog(fpg *pg)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "pgtmp: pipe: %s\n", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "pgtmp: fork watchdog: %s\n", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[1]);
        watchdog_main(pg, fds[0]);
    }
    close(fds[0]);
    pg->watchdog = pid;
    pg->wd_fd = fds[1];
    return 0;
}

static const char *const initdb_args[] = {"-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
                                          "--locale=C", NULL};

static int initdb_here(const fpg *pg)
{
    char initdb[PATH_MAX + 16];
    snprintf(initdb, sizeof initdb, "%s/initdb", pg->bindir);
    const char *argv[16] = {initdb, "-D", pg->datadir};
    size_t n = 3;
    for (const char *const *a = initdb_args; *a; a++) argv[n++] = *a;
    argv[n] = NULL;
    int rc = run_pg(pg, argv, "initdb.log");
    if (rc != 0) {
        fprintf(stderr, "pgtmp: initdb failed (exit %d), see %s/initdb.log%s\n", rc, pg->tmpdir,
                pg->as_root ? " (ran as 'postgres' via runuser: can it reach TMPDIR?)" : "");
        char log[PATH_MAX + 32];
        snprintf(log, sizeof log, "%s/initdb.log", pg->tmpdir);
        print_tail(log, 20);
        return -1;
    }
    return 0;
}

/* cp -a as this process: as root it keeps the files' owner, "postgres". */
static int copy_tree(const fpg *pg, const char *from, const char *to)
{
    const char *argv[] = {"cp", "-a", "--", from, to, NULL};
    char log[PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/template.log", pg->tmpdir);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int rc = run(argv, 0, fd, fd, NULL);
    if (fd >= 0) close(fd);
    if (rc != 0) {
        fprintf(stderr, "pgtmp: cp -a %s %s failed (exit %d), see %s\n", from, to, rc, log);
        print_tail(log, 20);
    }
    return rc == 0 ? 0 : -1;
}

/* What makes one template differ from another: the server binaries (path,
 * size, time, inode of initdb and postgres), initdb's arguments and who runs
 * them. FNV-1a, as a name: a collision costs a wrong template, never a
 * crash, and needs two installs at one path with equal stat. */
static void template_key(const fpg *pg, char out[17])
{
    uint64_t h = 14695981039346656037ULL;
#define MIX(p, n) for (size_t i_ = 0; i_ < (n); i_++) h = (h ^ ((const unsigned char *)(p))[i_]) * 1099511628211ULL
    MIX(pg->bindir, strlen(pg->bindir) + 1);
    for (const char *const *a = initdb_args; *a; a++) MIX(*a, strlen(*a) + 1);
    MIX(&pg->as_root, sizeof pg->as_root);
    static const char *const bins[] = {"initdb", "postgres"};
    for (size_t b = 0; b < 2; b++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/%s", pg->bindir, bins[b]);
        struct stat st;
        if (stat(path, &st) != 0) memset(&st, 0, sizeof st);
        int64_t v[4] = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec,
                        (int64_t)st.st_ino};
        MIX(v, sizeof v);
    }
#undef MIX
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* The cluster's data directory: initdb's, or, with FERRY_PGTMP_TEMPLATE set
 * (make test sets build/pg-template), a copy of the one the first cluster
 * made. initdb costs 1.2 s of CPU and cp -a of its output 0.4 s (measured
 * here, 2 cores); make test starts some fifty clusters and is CPU-bound, so
 * that is about 20 s of its wall time. The copy is byte for byte a fresh
 * initdb, system identifier included (nothing in ferry reads it); each
 * cluster's settings are appended to its own copy afterwards. The first
 * cluster builds the template under a lock, so jobs starting together run
 * one initdb, not ten; a template is moved into place whole (rename), so a
 * crash leaves none half-made. */
static int make_datadir(const fpg *pg)
{
    const char *dir = getenv("FERRY_PGTMP_TEMPLATE");
    if (!dir || !*dir) return initdb_here(pg);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "pgtmp: mkdir FERRY_PGTMP_TEMPLATE %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char key[17], tpl[PATH_MAX], data[PATH_MAX + 8], lock[PATH_MAX + 8], version[PATH_MAX + 24];
    template_key(pg, key);
    if ((size_t)snprintf(tpl, sizeof tpl, "%s/%s", dir, key) >= sizeof tpl) {
        fprintf(stderr, "pgtmp: FERRY_PGTMP_TEMPLATE %s is too long\n", dir);
        return -1;
    }
    snprintf(data, sizeof data, "%s/data", tpl);
    snprintf(version, sizeof version, "%s/PG_VERSION", data);
    if (access(version, F_OK) == 0) return copy_tree(pg, data, pg->datadir);

    snprintf(lock, sizeof lock, "%s.lock", tpl);
    int fd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) { /* flock restarts after signals (SA_RESTART) */
        fprintf(stderr, "pgtmp: lock %s: %s\n", lock, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    int rc;
    if (access(version, F_OK) == 0) {
        rc = copy_tree(pg, data, pg->datadir); /* another job made it while we waited */
    } else if ((rc = initdb_here(pg)) == 0) {
        char tmp[PATH_MAX + 32], tmpdata[PATH_MAX + 40];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", tpl, (long)getpid());
        snprintf(tmpdata, sizeof tmpdata, "%s/data", tmp);
        nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* a crashed maker's, with our pid */
        /* the cluster is made either way: a template that cannot be kept
         * only means the next one runs initdb too */
        if (mkdir(tmp, 0700) != 0 || copy_tree(pg, pg->datadir, tmpdata) != 0 || rename(tmp, tpl) != 0) {
            fprintf(stderr, "pgtmp: could not keep a template in %s: %s\n", tpl, strerror(errno));
            nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
    close(fd);
    return rc;
}

static int write_conf(const fpg *pg, const fpg_opts *opts)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/postgresql.conf", pg->datadir);
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, "pgtmp: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    fputs("\n# pgtmp\nlisten_addresses = ''\nunix_socket_directories = '", f);
    for (const char *p = pg->tmpdir; *p; p++) {
        if (*p == '\'') fputc('\'', f);
        fputc(*p, f);
    }
    fputs("'\nport = " FPG_PORT "\n"
          "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n"
          "max_connections = 200\nlog_min_messages = warning\nlogging_collector = off\n", f);
    if (!opts->fsync) fputs("fsync = off\nfull_page_writes = off\n", f);
    for (const char *const *l = opts->conf; l && *l; l++) fprintf(f, "%s\n", *l);
    if (fclose(f) != 0) {
        fprintf(stderr, "pgtmp: writing %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int pg_ctl_start(const fpg *pg)
{
    char ctl[PATH_MAX + 16], log[PATH_MAX + 32];
    snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg->bindir);
    snprintf(log, sizeof log, "%s/server.log", pg->tmpdir);
    const char *argv[] = {ctl, "start", "-D", pg->datadir, "-l", log, "-w", "-t", "60", NULL};
    int rc = run_pg(pg, argv, "pg_ctl.log");
    if (rc != 0) {
        fprintf(stderr, "pgtmp: pg_ctl start failed (exit %d), see %s/pg_ctl.log and %s\n",
                rc, pg->tmpdir, log);
        print_tail(log, 20);
        return -1;
    }
    return 0;
}

static fpg *start_external(fpg *pg, const char *conninfo)
{
    pg->external = 1;
    pg->conninfo = strdup(conninfo);
    PGconn *c = pg->conninfo ? fpg_connect(pg) : NULL;
    if (!c) {
        fprintf(stderr, "pgtmp: FERRY_TEST_PG server is not usable\n");
        fpg_destroy(pg);
        return NULL;
    }
    PQfinish(c);
    return pg;
}

fpg *fpg_start(const fpg_opts *opts)
{
    static const fpg_opts defaults = {NULL, 0};
    if (!opts) opts = &defaults;
    fpg *pg = calloc(1, sizeof *pg);
    if (!pg) return NULL;
    pg->wd_fd = -1;

    const char *ext = getenv("FERRY_TEST_PG");
    if (ext && *ext) return start_external(pg, ext);

    pg->as_root = geteuid() == 0;
    if (find_bindir(pg->bindir, sizeof pg->bindir) != 0) goto fail;

    /* FERRY_PGTMP_DIR: where clusters live when not TMPDIR (make test
     * picks a tmpfs: scripts/run-tests.sh says why) */
    const char *tmp = getenv("FERRY_PGTMP_DIR");
    if (!tmp || !*tmp) tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    size_t tl = strlen(tmp);
    while (tl > 1 && tmp[tl - 1] == '/') tl--;
    /* the socket path must fit sockaddr_un.sun_path */
    if (tl + sizeof "/ferry-pg-XXXXXX/.s.PGSQL." FPG_PORT > sizeof ((struct sockaddr_un *)0)->sun_path) {
        fprintf(stderr, "pgtmp: TMPDIR %s is too long for a unix socket path\n", tmp);
        goto fail;
    }
    snprintf(pg->tmpdir, sizeof pg->tmpdir, "%.*s/ferry-pg-XXXXXX", (int)tl, tmp);
    if (!mkdtemp(pg->tmpdir)) {
        fprintf(stderr, "pgtmp: mkdtemp %s: %s\n", pg->tmpdir, strerror(errno));
        pg->tmpdir[0] = '\0';
        goto fail;
    }
    snprintf(pg->datadir, sizeof pg->datadir, "%s/data", pg->tmpdir);
    /* before anything slow, so a crash from here on is cleaned up too */
    if (start_watchdog(pg) != 0) goto fail;

    if (pg->as_root) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw) {
            fprintf(stderr, "pgtmp: running as root but there is no 'postgres' user for initdb\n");
            goto fail;
        }
        if (chown(pg->tmpdir, pw->pw_uid, pw->pw_gid) != 0 || chmod(pg->tmpdir, 0700) != 0) {
            fprintf(stderr, "pgtmp: chown/chmod %s: %s\n", pg->tmpdir, strerror(errno));
            goto fail;
        }
    }

    if (make_datadir(pg) != 0) goto fail;
    if (write_conf(pg, opts) != 0 || pg_ctl_start(pg) != 0) goto fail;

    pg->conninfo = fpg_conninfo_for(pg, "postgres", "postgres");
    if (!pg->conninfo) goto fail;
    return pg;

fail:
    fpg_destroy(pg);
    return NULL;
}

const char *fpg_conninfo(const fpg *pg) { return pg->conninfo; }
int fpg_external(const fpg *pg) { return pg->external; }
const char *fpg_datadir(const fpg *pg) { return pg->external ? NULL : pg->datadir; }

static void put_value(FILE *f, const char *key, const char *val)
{
    fprintf(f, "%s='", key);
    for (; *val; val++) {
        if (*val == '\'' || *val == '\\') fputc('\\', f);
        fputc(*val, f);
    }
    fputs("' ", f);
}

char *fpg_conninfo_for(const fpg *pg, const char *user, const char *dbname)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f) return NULL;
    if (!pg->conninfo) { /* only while fpg_start builds the first one */
        put_value(f, "host", pg->tmpdir);
        put_value(f, "port", FPG_PORT);
        put_value(f, "user", user ? user : "postgres");
        put_value(f, "dbname", dbname ? dbname : "postgres");
    } else {
        /* parse rather than append, so URI-style FERRY_TEST_PG works too */
        char *err = NULL;
        PQconninfoOption *opts = PQconninfoParse(pg->conninfo, &err);
        if (!opts) {
            fprintf(stderr, "pgtmp: bad conninfo: %s", err ? err : "out of memory\n");
            PQfreemem(err);
            fclose(f);
            free(out);
            return NULL;
        }
        for (PQconninfoOption *o = opts; o->keyword; o++) {
            const char *v = o->val;
            if (user && strcmp(o->keyword, "user") == 0) v = user;
            if (dbname && strcmp(o->keyword, "dbname") == 0) v = dbname;
            if (v && *v) put_value(f, o->keyword, v);
        }
        PQconninfoFree(opts);
    }
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    if (len > 0) out[len - 1] = '\0'; /* drop the trailing space */
    return out;
}

PGconn *fpg_connect(const fpg *pg)
{
    PGconn *c = PQconnectdb(pg->conninfo);
    if (!c) {
        fprintf(stderr, "pgtmp: PQconnectdb: out of memory\n");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pgtmp: cannot connect (%s): %s", pg->conninfo, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

int fpg_stop(fpg *pg, const char *mode)
{
    if (pg->external) return -1;
    if (!mode) mode = "fast";
    char ctl[PATH_MAX + 16];
    snprintf(ctl, sizeof ctl, "%s/pg_ctl", pg->bindir);
    const char *argv[] = {ctl, "stop", "-D", pg->datadir, "-m", mode, "-w", "-t", "60", NULL};
    int rc = run_pg(pg, argv, "pg_ctl.log");
    if (rc != 0) {
        fprintf(stderr, "pgtmp: pg_ctl stop -m %s failed (exit %d), see %s/pg_ctl.log\n",
                mode, rc, pg->tmpdir);
        return -1;
    }
    return 0;
}

int fpg_start_again(fpg *pg)
{
    return pg->external ? -1 : pg_ctl_start(pg);
}

int fpg_restart(fpg *pg, const char *mode)
{
    return fpg_stop(pg, mode) == 0 ? fpg_start_again(pg) : -1;
}

long fpg_postmaster_pid(const fpg *pg)
{
    if (pg->external) return -1;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/postmaster.pid", pg->datadir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long pid = -1;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 0) pid = -1;
    fclose(f);
    /* a crashed server leaves a stale pid file behind */
    if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) pid = -1;
    return pid;
}

void fpg_destroy(fpg *pg)
{
    if (!pg) return;
    if (pg->wd_fd >= 0) close(pg->wd_fd); /* EOF tells the watchdog to tear down */
    if (pg->watchdog > 0) {
        while (waitpid(pg->watchdog, NULL, 0) < 0 && errno == EINTR) {}
    }
    /* watchdog killed, or never started: do its job here */
    if (!pg->external && pg->tmpdir[0] && access(pg->tmpdir, F_OK) == 0) teardown(pg);
    free(pg->conninfo);
    free(pg);
}
