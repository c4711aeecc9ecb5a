/*
 * narrate.c — the demos' shared narration and libpq helpers (narrate.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "narrate.h"

static int g_step;

void demo_step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("\n[%d] ", ++g_step);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

void demo_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("    ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

int demo_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "demo: FAILED at step %d: ", g_step);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return -1;
}

int demo_ferry_failed(const char *what, ferry_code rc, const ferry_error *err)
{
    return demo_fail("%s: %s: %s [sqlstate %s, field %s]", what, ferry_code_name(rc),
                     err->message, err->sqlstate[0] ? err->sqlstate : "-",
                     err->field[0] ? err->field : "-");
}

int demo_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? 0 : demo_fail("%s: %s", sql, PQerrorMessage(conn));
}

int demo_query1(PGconn *conn, const char *sql, int nparams, const char *const *params,
                char *out, size_t size)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = demo_fail("%s: %s", sql, PQerrorMessage(conn));
    else if (PQntuples(res) != 1)
        rc = demo_fail("%s: %d rows, expected 1", sql, PQntuples(res));
    else
        snprintf(out, size, "%s", PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

int demo_query_long(PGconn *conn, const char *sql, const char *param, long *out)
{
    char buf[32];
    const char *params[1] = {param};
    if (demo_query1(conn, sql, param ? 1 : 0, param ? params : NULL, buf, sizeof buf) != 0)
        return -1;
    *out = strtol(buf, NULL, 10);
    return 0;
}

int demo_print_table(PGconn *conn, const char *sql, const char *param, int indent,
                     int with_count)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(conn, sql, param ? 1 : 0, NULL, param ? params : NULL, NULL,
                                 NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = demo_fail("%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
        return rc;
    }
    enum { MAX_COLS = 16 };
    int cols = PQnfields(res) < MAX_COLS ? PQnfields(res) : MAX_COLS;
    int width[MAX_COLS];
    for (int c = 0; c < cols; c++) {
        width[c] = (int)strlen(PQfname(res, c));
        for (int r = 0; r < PQntuples(res); r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    printf("%*s", indent, "");
    for (int c = 0; c < cols; c++)
        printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0, PQfname(res, c));
    printf("\n%*s", indent, "");
    for (int c = 0; c < cols; c++) {
        printf("%s", c ? "-+-" : "");
        for (int i = 0; i < width[c]; i++)
            putchar('-');
    }
    printf("\n");
    for (int r = 0; r < PQntuples(res); r++) {
        printf("%*s", indent, "");
        for (int c = 0; c < cols; c++)
            printf("%s%-*s", c ? " | " : "", c + 1 < cols ? width[c] : 0,
                   PQgetvalue(res, r, c));
        printf("\n");
    }
    if (with_count)
        printf("%*s(%d row%s)\n", indent, "", PQntuples(res), PQntuples(res) == 1 ? "" : "s");
    PQclear(res);
    return 0;
}
