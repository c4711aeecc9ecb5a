/* pgtmp: throwaway PostgreSQL clusters for tests, the demo and benchmarks.
 *
 * fpg_start() runs initdb + pg_ctl in a private mkdtemp() directory (unix
 * socket only, no TCP) under FERRY_PGTMP_DIR, else TMPDIR, else /tmp (with
 * FERRY_PGTMP_TEMPLATE set, it copies the data directory instead of running
 * initdb: pgtmp.c, make_datadir) and forks a watchdog that stops the server and removes
 * the directory as soon as the creating process goes away, so a crashed test
 * (abort, ASan report, SIGKILL) leaves nothing behind.  When running as root
 * the server binaries run as the "postgres" OS user via runuser.
 *
 * If FERRY_TEST_PG is set to a non-empty conninfo, nothing is started: that
 * server is used as is, and stop/start calls fail with -1. */
#ifndef FERRY_TESTS_HARNESS_PGTMP_H
#define FERRY_TESTS_HARNESS_PGTMP_H

#include <libpq-fe.h>

typedef struct fpg fpg;                 /* one throwaway cluster (or an external server) */

typedef struct fpg_opts {
    const char *const *conf;            /* extra postgresql.conf lines, NULL-terminated array, may be NULL */
    int fsync;                          /* 0: fsync=off etc. for speed (tests); 1: server defaults for durability settings (bench) */
} fpg_opts;

/* NULL opts = defaults. Prints a clear reason to stderr and returns NULL on failure. */
fpg *fpg_start(const fpg_opts *opts);
/* libpq conninfo for the superuser on database "postgres" (external: FERRY_TEST_PG as given). */
const char *fpg_conninfo(const fpg *pg);
/* malloc'd, caller frees; NULL user/dbname = keep the default. NULL on error. */
char *fpg_conninfo_for(const fpg *pg, const char *user, const char *dbname);
/* New connection; NULL + message on stderr on failure. */
PGconn *fpg_connect(const fpg *pg);
/* 1 when FERRY_TEST_PG named the server (stop/start unsupported). */
int fpg_external(const fpg *pg);
/* pg_ctl stop -m mode ("fast", "immediate", "smart"); 0 ok, -1 error or external. */
int fpg_stop(fpg *pg, const char *mode);
/* pg_ctl start -w after fpg_stop; 0 ok, -1 error or external. */
int fpg_start_again(fpg *pg);
/* Stop with mode, then start; 0 ok, -1 error or external. */
int fpg_restart(fpg *pg, const char *mode);
/* From postmaster.pid; -1 if not running or external. */
long fpg_postmaster_pid(const fpg *pg);
/* Data directory; NULL for an external server. */
const char *fpg_datadir(const fpg *pg);
/* Stop immediately and remove the temp dir; when it returns both are gone. Accepts NULL. */
void fpg_destroy(fpg *pg);

#endif
