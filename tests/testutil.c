/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

fpg *tu_pg;
const char *const *tu_conf;

int tu_group_setup(void **state)
{
    fpg_opts opts = {.conf = tu_conf, .fsync = 0};
    tu_pg = fpg_start(&opts);
    if (tu_pg == NULL)
        return -1;
    PGconn *conn = fpg_connect(tu_pg);
    if (conn == NULL)
        return -1;
    ferry_error err;
    int version = 0;
    ferry_code rc = ferry_migrate(conn, &version, &err);
    PQfinish(conn);
    if (rc != FERRY_OK) {
        fprintf(stderr, "tu_group_setup: migrate: %s\n", err.message);
        return -1;
    }
    return 0;
}

int tu_group_teardown(void **state)
{
    fpg_destroy(tu_pg);
    tu_pg = NULL;
    return 0;
}

int tu_clean_outbox(void **state)
{
    PGconn *conn = tu_connect();
    tu_exec(conn, "TRUNCATE ferry.outbox, ferry.outbox_key, ferry.dead_letter");
    PQfinish(conn);
    return 0;
}

PGconn *tu_connect(void)
{
    PGconn *conn = fpg_connect(tu_pg);
    if (conn == NULL)
        fail_msg("could not connect to the test cluster");
    return conn;
}

PGconn *tu_connect_as(const char *user)
{
    char *ci = fpg_conninfo_for(tu_pg, user, NULL);
    assert_non_null(ci);
    PGconn *conn = PQconnectdb(ci);
    free(ci);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("could not connect as %s: %s", user, PQerrorMessage(conn));
    return conn;
}

void tu_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("SQL failed: %s\n  %s", sql, msg);
    }
    PQclear(res);
}

static PGresult *one_row(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        PQclear(res);
        fail_msg("SQL returned no row: %s\n  %s", sql, msg);
    }
    return res;
}

long long tu_int(PGconn *conn, const char *sql)
{
    PGresult *res = one_row(conn, sql);
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

char *tu_str(PGconn *conn, const char *sql)
{
    PGresult *res = one_row(conn, sql);
    char *v = PQgetisnull(res, 0, 0) ? NULL : strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

char *tu_sprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    assert_non_null(s);
    return s;
}

void tu_await(PGconn *conn, const char *sql, int timeout_ms)
{
    struct timespec t0, now, tick = {0, 2 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        char *v = tu_str(conn, sql);
        int done = v != NULL && strcmp(v, "t") == 0;
        free(v);
        if (done)
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > timeout_ms)
            fail_msg("timed out after %d ms waiting for: %s", timeout_ms, sql);
        nanosleep(&tick, NULL);   /* polling interval of the condition */
    }
}

void tu_filter_from_env(void)
{
    const char *f = getenv("FERRY_TEST_FILTER");
    if (f != NULL && f[0] != '\0')
        cmocka_set_test_filter(f);
}
