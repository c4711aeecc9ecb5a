/*
 * pass.c — `check`, `repair` and `run`: the options, the connection, the
 * reconciler's lease, and one pass over every sweep.
 *
 *   check   a dry run: every sweep detects, nothing is changed, no lease
 *           is needed (any number may run at once).
 *   repair  the same sweeps, acting. Takes the lease "reconciler" in
 *           ferry.lease first (waiting up to --wait seconds for another
 *           reconciler to finish), and every repair transaction re-checks
 *           it under its epoch (rc_begin), so two reconcilers never act at
 *           once even if one of them stalls past its lease.
 *   run     repair every --interval seconds as a daemon. Instances that do
 *           not hold the lease stand by and take over when it expires.
 *
 * Exit status, fsck's: the OR of 1 (problems repaired), 4 (problems left;
 * for check, problems found), 8 (operational error); 16 for usage.
 */
#include <getopt.h>
#include <glob.h>
#include <inttypes.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "lease.h"
#include "rc_config.h"
#include "rc_lease.h"
#include "rc_metrics.h"
#include "reconcile.h"

/* Schema 27: the garbage sweep purges published rows through
 * ferry.outbox_purge_published, the role having no DELETE on the outbox. */
#define SCHEMA_NEEDED 27

/* The settings and flags (rc_config.c: file, environment, flags). */
typedef rc_options options;

static volatile sig_atomic_t stop_flag;
/* SIGHUP, in run: the reconciler reloads nothing (its settings are read
 * at start); the loop says so, as the relay does, rather than dying of
 * the default action with its lease held until the TTL. */
static volatile sig_atomic_t hup_flag;

static void on_signal(int sig)
{
    if (sig == SIGHUP) {
        hup_flag = 1;
        return;
    }
    stop_flag = 1;
}

/* A SIGHUP since the last call: logged. */
static void say_hup(void)
{
    if (!hup_flag)
        return;
    hup_flag = 0;
    ferry__log_json(FERRY_LOG_WARN, "signal.ignored", json_pack("{s:s}", "signal", "SIGHUP"),
                   "SIGHUP ignored: ferry-reconcile reloads nothing; restart it to apply new "
                   "settings");
}

/* ---------------------------------------------------------------- inputs */

/* A refused input is named as the setting in every spelling it may have
 * come from: an operator who set a variable never passed the flag. */
#define RULES_SETTING "--rules, FERRY_RECONCILE_RULES or rules: in the --config file"
#define SAGAS_SETTING "--sagas, FERRY_RECONCILE_SAGAS or sagas: in the --config file"

static int load_rules(const options *o, rc_rules **out)
{
    *out = NULL;
    if (o->rules_file == NULL)
        return 0;
    ferry_saga_load_errors errs;
    if (rc_rules_load(o->rules_file, out, &errs) != FERRY_OK) {
        reconcile_print_errors(stderr, o->rules_file, &errs);
        fprintf(stderr, "ferry-reconcile: the rules file %s (" RULES_SETTING ") was refused; "
                "nothing was checked\n", o->rules_file);
        return -1;
    }
    return 0;
}

/* Every *.yaml and *.yml in dir, into a registry asking for replies on
 * the reply topic the services use. */
static int load_sagas(const options *o, ferry_saga_registry **out)
{
    *out = NULL;
    if (o->sagas_dir == NULL)
        return 0;
    ferry_error err;
    if (ferry_saga_registry_new(o->reply_topic, out, &err) != FERRY_OK) {
        fprintf(stderr, "ferry-reconcile: %s\n", err.message);
        return -1;
    }
    glob_t g = {0};
    char pattern[4096];
    int found = 0, bad = 0;
    static const char *const exts[] = {"*.yaml", "*.yml"};
    for (size_t e = 0; e < 2; e++) {
        snprintf(pattern, sizeof pattern, "%s/%s", o->sagas_dir, exts[e]);
        int rc = glob(pattern, 0, NULL, &g);
        if (rc == GLOB_NOMATCH)
            continue;
        if (rc != 0) {
            fprintf(stderr, "ferry-reconcile: the saga directory %s (" SAGAS_SETTING "): "
                    "could not list it\n", o->sagas_dir);
            bad = 1;
            break;
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            ferry_saga_def *def = NULL;
            ferry_saga_load_errors errs;
            found++;
            if (ferry_saga_def_load(g.gl_pathv[i], &def, &errs) != FERRY_OK) {
                reconcile_print_errors(stderr, g.gl_pathv[i], &errs);
                bad = 1;
                continue;
            }
            if (ferry_saga_registry_add(*out, def, &err) != FERRY_OK) {
                fprintf(stderr, "%s: %s\n", g.gl_pathv[i], err.message);
                ferry_saga_def_destroy(def);
                bad = 1;
            }
        }
        globfree(&g);
    }
    if (!bad && found == 0) {
        fprintf(stderr, "ferry-reconcile: the saga directory %s (" SAGAS_SETTING "): no *.yaml "
                "or *.yml saga definitions there\n", o->sagas_dir);
        bad = 1;
    }
    if (bad) {
        ferry_saga_registry_destroy(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

static PGconn *connect_db(const options *o, const char *holder)
{
    PGconn *conn = ferry__connect_utf8(o->db);
    ferry__log_pq_notices(conn, "reconciler");
    if (PQstatus(conn) != CONNECTION_OK) {
        const char *m = PQerrorMessage(conn);
        size_t len = strlen(m);
        while (len > 0 && m[len - 1] == '\n')
            len--;
        fprintf(stderr, "ferry-reconcile: cannot connect to the database: %.*s\n", (int)len, m);
        PQfinish(conn);
        return NULL;
    }
    int version = 0;
    ferry_error err;
    ferry__set_application_name(conn, "ferry-reconcile", holder, &err);  /* a courtesy */
    /* The sweeps send times back to the server as text (cutoffs, paging
     * cursors): in ISO and UTC, as the server reads them back. Under a
     * DateStyle of SQL with a TimeZone whose abbreviation means another
     * zone to the parser (CST in Asia/Shanghai read as US Central), the
     * garbage sweep's cutoff moved 14 hours and it deleted inbox rows
     * inside the dedupe window: a redelivery was applied twice (an
     * outside audit). A role's or database's own settings, PGDATESTYLE
     * and options= all gave them. */
    PGresult *set = PQexec(conn, "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; "
                                 "SET IntervalStyle = 'postgres'");
    if (PQresultStatus(set) != PGRES_COMMAND_OK) {
        fprintf(stderr, "ferry-reconcile: could not set the session's date style: %s",
                PQerrorMessage(conn));
        PQclear(set);
        PQfinish(conn);
        return NULL;
    }
    PQclear(set);
    if (ferry_schema_version(conn, &version, &err) != FERRY_OK) {
        fprintf(stderr, "ferry-reconcile: could not read the ferry schema version: %s\n",
                err.message);
        PQfinish(conn);
        return NULL;
    }
    if (version < SCHEMA_NEEDED) {
        fprintf(stderr, "ferry-reconcile: the database has ferry schema version %d; the "
                "reconciler needs %d (run `ferry-relay migrate`)\n", version, SCHEMA_NEEDED);
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* Every statement of the session, detection included, under the budget's
 * statement timeout (repair transactions set it again, locally). */
static int set_timeout(PGconn *conn, const rc_budgets *b)
{
    char sql[64];
    snprintf(sql, sizeof sql, "SET statement_timeout = %" PRId64, b->statement_timeout_ms);
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "ferry-reconcile: could not set the statement timeout: %s",
                PQerrorMessage(conn));
    PQclear(res);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------ pass */

typedef int (*sweep_fn)(rc_ctx *ctx);

static const sweep_fn sweeps[RC_SWEEP_COUNT] = {
    [RC_SWEEP_OUTBOX] = rc_sweep_outbox,
    [RC_SWEEP_SAGAS] = rc_sweep_sagas,
    [RC_SWEEP_COMPENSATIONS] = rc_sweep_compensations,
    [RC_SWEEP_DEAD_LETTERS] = rc_sweep_dead_letters,
    [RC_SWEEP_GARBAGE] = rc_sweep_garbage,
    [RC_SWEEP_RULES] = rc_sweep_rules,
    [RC_SWEEP_WAL_SLOT] = rc_sweep_wal_slot,
};

/* Every sweep in turn; stops early when the connection is gone, the lease
 * is lost, or a signal asked to stop. 0, or -1 when it stopped for the
 * connection or the lease (the report says which). */
static int one_pass(rc_ctx *ctx)
{
    int rc = 0;
    for (int s = 0; s < RC_SWEEP_COUNT && !*ctx->stop; s++) {
        ctx->sweep = (rc_sweep_id)s;
        ferry_error err;
        if (ctx->mode == RC_REPAIR && ctx->lease != NULL &&
            rc_lease_keep(ctx->conn, ctx->lease, &err) != FERRY_OK) {
            ctx->sweep = RC_SWEEP_COUNT;
            rc = rc_error(ctx, "%s; the pass stopped before %s", err.message,
                          rc_sweep_name((rc_sweep_id)s));
            break;
        }
        ctx->report->ran[s] = 1;
        sweeps[s](ctx);
        rc_report_progress_done(ctx->report, ctx->sweep);
        rc_rollback(ctx);   /* a sweep that returned inside a transaction */
        if (PQstatus(ctx->conn) != CONNECTION_OK) {
            ctx->sweep = RC_SWEEP_COUNT;
            rc = rc_error(ctx, "lost the database connection; the pass stopped after %s",
                          rc_sweep_name((rc_sweep_id)s));
            break;
        }
        if (ctx->lease_lost) {
            ctx->sweep = RC_SWEEP_COUNT;
            rc = rc_error(ctx, "the reconciler's lease was lost; the pass stopped after %s",
                          rc_sweep_name((rc_sweep_id)s));
            break;
        }
    }
    ctx->sweep = RC_SWEEP_COUNT;
    return rc;
}

/* Keep a record of a repair pass in ferry.reconcile_pass: 0, or -1
 * (logged; the pass itself stands). */
static int record_pass(rc_ctx *ctx, const char *started, int status)
{
    json_t *j = rc_report_json(ctx->report, ctx->mode);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    const char *p[5] = {ctx->lease ? ctx->lease->holder : NULL, ctx->actor, started, st,
                        text ? text : "{}"};
    PGresult *res = PQexecParams(ctx->conn,
                                 "INSERT INTO ferry.reconcile_pass (holder, actor, started_at, "
                                 "status, report) VALUES ($1, $2, $3, $4::int, $5::jsonb)",
                                 5, NULL, p, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ferry__log(FERRY_LOG_WARN, "reconcile.record_failed", "could not record the pass: %s",
                  PQresultErrorMessage(res));
        rc = -1;
    }
    PQclear(res);
    free(text);
    return rc;
}

static void db_now(PGconn *conn, char *buf, size_t len)
{
    snprintf(buf, len, "now");
    PGresult *res = PQexec(conn, "SELECT now()::text");
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(buf, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

static void default_names(const options *o, char *holder, size_t hlen, char *actor,
                          size_t alen)
{
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    if (o->holder)
        snprintf(holder, hlen, "%s", o->holder);
    else
        snprintf(holder, hlen, "%s:%ld", host, (long)getpid());
    if (o->by) {
        snprintf(actor, alen, "%s", o->by);
        return;
    }
    const char *user = getenv("SUDO_USER");
    if (user == NULL || user[0] == '\0') {
        struct passwd *pw = getpwuid(geteuid());
        user = pw ? pw->pw_name : "unknown";
    }
    snprintf(actor, alen, "%s@%s", user, host);
}

/* SIGINT and SIGTERM stop; with hup (run), SIGHUP is said and ignored.
 * check and repair keep SIGHUP's default: a terminal that hangs up ends
 * them, as any command. */
static void install_signals(int hup)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (hup)
        sigaction(SIGHUP, &sa, NULL);
}

/* What check, repair and run start from. */
typedef struct session {
    options o;
    char holder[256], actor[256];
    rc_budgets budgets;             /* the rules file's, else the defaults */
    rc_rules *rules;                /* NULL: no --rules */
    ferry_saga_registry *reg;       /* NULL: no --sagas */
    PGconn *conn;                   /* NULL until session_connect */
} session;

/* The options, the names, the rules file and the saga definitions. 0, or
 * the exit status (usage, or RC_EXIT_ERROR when an input was refused,
 * said on stderr). session_end in either case. */
static int session_open(session *s, const char *cmd, int argc, char **argv)
{
    memset(s, 0, sizeof *s);
    int rc = rc_options_parse(cmd, argc, argv, &s->o);
    if (rc != 0)
        return rc;
    rc_budgets_default(&s->budgets);
    default_names(&s->o, s->holder, sizeof s->holder, s->actor, sizeof s->actor);
    if (load_rules(&s->o, &s->rules) != 0 || load_sagas(&s->o, &s->reg) != 0)
        return RC_EXIT_ERROR;
    if (s->rules)
        s->budgets = s->rules->budgets;
    return 0;
}

/* Signals handled, then the database, under the budgets' statement
 * timeout. -1 when it failed (said on stderr). */
static int session_connect(session *s)
{
    install_signals(s->o.daemon);
    s->conn = connect_db(&s->o, s->holder);
    if (s->conn == NULL || set_timeout(s->conn, &s->budgets) != 0)
        return -1;
    return 0;
}

static void session_end(session *s)
{
    PQfinish(s->conn);
    ferry_saga_registry_destroy(s->reg);
    rc_rules_free(s->rules);
    rc_options_free(&s->o);
}

/* check and repair: one pass, the report on stdout. */
static int one_shot(const char *cmd, int argc, char **argv)
{
    session s;
    int rc = session_open(&s, cmd, argc, argv);
    if (rc != 0) {
        session_end(&s);
        return rc;
    }
    const options *o = &s.o;
    PGconn *conn = NULL;
    rc_report *report = NULL;
    int status = RC_EXIT_ERROR;
    if (session_connect(&s) != 0)
        goto out;
    conn = s.conn;
    int progress = o->progress >= 0 ? o->progress : !o->json && isatty(STDERR_FILENO);
    if ((report = rc_report_new(progress)) != NULL)
        report->progress_tty = isatty(STDERR_FILENO);
    if (report == NULL)
        goto out;

    rc_ctx ctx = {
        .conn = conn,
        .mode = o->mode,
        .budgets = &s.budgets,
        .rules = s.rules,
        .sagas = s.reg,
        .actor = s.actor,
        .reason = o->reason,
        .requests = o->requests,
        .n_requests = o->n_requests,
        .stop = &stop_flag,
        .report = report,
        .sweep = RC_SWEEP_COUNT,
    };
    char started[64];
    db_now(conn, started, sizeof started);
    int leased = 0;
    rc_lease lease = {0};
    if (o->mode == RC_REPAIR && o->n_requests > 0) {
        /* Decisions on dead letters first, without the lease: each locks
         * its letter, which is all they need, so that an operator's
         * --replay works while a `run` daemon holds the lease. */
        ctx.sweep = RC_SWEEP_DEAD_LETTERS;
        char refused[700];
        if (rc_dead_letter_requests(&ctx, refused, sizeof refused) == RC_EXIT_USAGE) {
            fprintf(stderr, "ferry-reconcile %s: %s\n", cmd, refused);
            status = RC_EXIT_USAGE;
            goto out;
        }
        rc_rollback(&ctx);
        ctx.requests = NULL;
        ctx.n_requests = 0;
        ctx.sweep = RC_SWEEP_COUNT;
    }
    if (o->mode == RC_REPAIR) {
        ferry_error err;
        int64_t deadline = ferry__now_ms() + (int64_t)o->wait_s * 1000;
        int said = 0;
        for (;;) {
            int got = rc_lease_try(conn, &lease, s.holder, o->lease_ttl_ms, &err);
            if (got < 0) {
                fprintf(stderr, "ferry-reconcile: could not take the reconciler's lease: %s\n",
                        err.message);
                goto out;
            }
            if (got) {
                leased = 1;
                break;
            }
            char who[256];
            rc_lease_holder(conn, who, sizeof who);
            if (ferry__now_ms() >= deadline || stop_flag) {
                if (o->n_requests > 0) {
                    /* The decisions were carried out; the sweeps are the
                     * other reconciler's. */
                    fprintf(stderr, "ferry-reconcile: another reconciler is repairing this "
                            "database (%s): the sweeps are left to it\n", who);
                    break;
                }
                fprintf(stderr, "ferry-reconcile: another reconciler is repairing this "
                        "database (%s); gave up after --wait %d s\n", who, o->wait_s);
                goto out;
            }
            if (!said) {
                fprintf(stderr, "ferry-reconcile: waiting for the reconciler's lease, held by "
                        "%s\n", who);
                said = 1;
            }
            struct timespec t = {0, 200 * 1000000L};
            nanosleep(&t, NULL);
        }
        if (leased)
            ctx.lease = &lease;
    }
    if (o->mode == RC_CHECK || leased)
        one_pass(&ctx);
    else
        report->ran[RC_SWEEP_DEAD_LETTERS] = 1;     /* its requests, at least */
    status = rc_report_status(report);
    if (leased) {
        record_pass(&ctx, started, status);
        rc_lease_release(conn, &lease);
    }
    if (o->json) {
        json_t *j = rc_report_json(report, o->mode);
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    } else {
        rc_report_print(stdout, report, o->mode);
    }
    if (stop_flag)
        fprintf(stderr, "ferry-reconcile: interrupted; the report covers what was done\n");
out:
    rc_report_free(report);
    session_end(&s);
    return status;
}

int reconcile_check(int argc, char **argv)
{
    return one_shot("check", argc, argv);
}

int reconcile_repair(int argc, char **argv)
{
    return one_shot("repair", argc, argv);
}

/* ------------------------------------------------------------------- run */

/* Sleep up to ms, waking early on a signal. */
static void nap(int64_t ms)
{
    int64_t until = ferry__now_ms() + ms;
    while (!stop_flag) {
        say_hup();
        int64_t left = until - ferry__now_ms();
        if (left <= 0)
            break;
        if (left > 200)
            left = 200;
        struct timespec t = {(time_t)(left / 1000), (long)(left % 1000) * 1000000L};
        nanosleep(&t, NULL);
    }
}

/* The pass's outcome as one log line, with the counts per sweep. */
static void log_pass(const rc_report *r, int status, double seconds)
{
    json_t *f = json_object();
    int64_t repaired = 0, left = 0, pending = 0;
    for (int s = 0; s < RC_SWEEP_COUNT; s++) {
        const rc_sweep_stats *st = &r->sweep[s];
        repaired += st->findings[RC_REPAIRED];
        left += st->findings[RC_LEFT];
        pending += st->findings[RC_PENDING];
        json_object_set_new(f, rc_sweep_name(s),
                            json_pack("{s:I, s:I, s:I, s:i}", "repaired",
                                      (json_int_t)st->findings[RC_REPAIRED], "left",
                                      (json_int_t)st->findings[RC_LEFT], "pending",
                                      (json_int_t)st->findings[RC_PENDING], "errors",
                                      st->errors));
    }
    json_object_set_new(f, "status", json_integer(status));
    json_object_set_new(f, "seconds", json_real(seconds));
    ferry__log_json(status & (RC_EXIT_LEFT | RC_EXIT_ERROR) ? FERRY_LOG_WARN : FERRY_LOG_INFO,
                   "reconcile.pass", f,
                   "pass done: %" PRId64 " repaired, %" PRId64 " left, %" PRId64 " pending, "
                   "%d errors, exit status %d",
                   repaired, left, pending, r->error_count, status);
    for (size_t i = 0; i < r->n; i++) {
        const rc_finding *fd = &r->f[i];
        if (fd->outcome == RC_PENDING)
            continue;
        ferry__log_json(fd->outcome == RC_LEFT ? FERRY_LOG_WARN : FERRY_LOG_INFO,
                       "reconcile.finding",
                       json_pack("{s:s, s:s, s:s, s:s, s:I}", "sweep", rc_sweep_name(fd->sweep),
                                 "problem", fd->problem, "subject", fd->subject, "outcome",
                                 rc_outcome_name(fd->outcome), "count", (json_int_t)fd->count),
                       "%s", fd->text ? fd->text : fd->subject);
    }
}

int reconcile_run(int argc, char **argv)
{
    session s;
    int rc = session_open(&s, "run", argc, argv);
    if (rc != 0) {
        session_end(&s);
        return rc;
    }
    const options *o = &s.o;
    const char *holder = s.holder;
    rc_metrics *metrics = NULL;
    PGconn *conn = NULL;
    int status = RC_EXIT_ERROR;
    if (o->metrics && (metrics = rc_metrics_start(o->metrics)) == NULL)
        goto out;
    signal(SIGPIPE, SIG_IGN);
    if (session_connect(&s) != 0)
        goto out;
    conn = s.conn;
    ferry__log_json(FERRY_LOG_INFO, "reconcile.start",
                   json_pack("{s:s, s:f}", "holder", holder, "interval_s", o->interval_s),
                   "ferry-reconcile %s running as %s, a pass every %.1f s", ferry_version(),
                   holder, o->interval_s);

    int active = 0, said_standby = 0;
    rc_lease lease = {0};
    while (!stop_flag) {
        say_hup();
        if (PQstatus(conn) != CONNECTION_OK) {
            PQreset(conn);
            if (PQstatus(conn) != CONNECTION_OK) {
                char why[200];
                snprintf(why, sizeof why, "cannot reach the database: %s",
                         PQerrorMessage(conn));
                /* Before the log line: who reads it finds /healthz 503. */
                rc_metrics_trouble(metrics, why);
                ferry__log(FERRY_LOG_WARN, "reconcile.db_lost", "database unreachable: %s",
                          PQerrorMessage(conn));
                nap(2000);
                continue;
            }
            set_timeout(conn, &s.budgets);
            rc_metrics_trouble_over(metrics);
            ferry__log(FERRY_LOG_INFO, "reconcile.db_reconnected", "reconnected");
        }
        ferry_error err;
        if (!active) {
            int got = rc_lease_try(conn, &lease, holder, o->lease_ttl_ms, &err);
            if (got < 0) {
                char why[200];
                snprintf(why, sizeof why, "could not take the reconciler's lease: %s",
                         err.message);
                rc_metrics_trouble(metrics, why);
                ferry__log(FERRY_LOG_WARN, "reconcile.lease_error", "could not take the "
                          "reconciler's lease: %s", err.message);
                nap(2000);
                continue;
            }
            rc_metrics_trouble_over(metrics);
            if (!got) {
                if (!said_standby) {
                    char who[256];
                    rc_lease_holder(conn, who, sizeof who);
                    ferry__log(FERRY_LOG_INFO, "reconcile.standby", "standing by: %s holds the "
                              "reconciler's lease", who);
                    said_standby = 1;
                }
                rc_metrics_set_active(metrics, 0);
                nap(o->lease_ttl_ms / 3);
                continue;
            }
            active = 1;
            said_standby = 0;
            rc_metrics_set_active(metrics, 1);
            ferry__log(FERRY_LOG_INFO, "reconcile.active", "holding the reconciler's lease "
                      "(epoch %" PRId64 "): repairing", lease.epoch);
        }

        rc_report *report = rc_report_new(0);
        if (report == NULL)
            break;
        report->log_json = 1;
        rc_ctx ctx = {
            .conn = conn, .mode = RC_REPAIR, .budgets = &s.budgets, .rules = s.rules,
            .sagas = s.reg, .actor = s.actor, .lease = &lease,
            .stop = &stop_flag, .report = report, .sweep = RC_SWEEP_COUNT,
        };
        char started[64];
        db_now(conn, started, sizeof started);
        int64_t t0 = ferry__now_ms();
        one_pass(&ctx);
        int st = rc_report_status(report);
        double seconds = (double)(ferry__now_ms() - t0) / 1000.0;
        if (PQstatus(conn) == CONNECTION_OK)
            record_pass(&ctx, started, st);
        log_pass(report, st, seconds);
        rc_metrics_pass(metrics, report, st, seconds);
        rc_report_free(report);

        /* Between passes, keep the lease; lose it and we stand by. */
        int64_t next = ferry__now_ms() + (int64_t)(o->interval_s * 1000);
        while (!stop_flag && ferry__now_ms() < next) {
            if (rc_lease_keep(conn, &lease, &err) != FERRY_OK) {
                ferry__log(FERRY_LOG_WARN, "reconcile.lease_lost", "%s", err.message);
                active = 0;
                rc_metrics_set_active(metrics, 0);
                break;
            }
            int64_t left = next - ferry__now_ms();
            nap(left < o->lease_ttl_ms / 6 ? left : o->lease_ttl_ms / 6);
        }
    }
    if (active)
        rc_lease_release(conn, &lease);
    ferry__log(FERRY_LOG_INFO, "reconcile.stop", "stopped");
    status = RC_EXIT_OK;
out:
    rc_metrics_stop(metrics);
    session_end(&s);
    return status;
}
