/*
 * error.c — the caller-owned error struct, and how server errors map onto
 * it. Nothing here allocates: an error path must work when memory is gone.
 * (Statements are exec.c's, the text checks utf8.c's, time clock.c's.)
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

const char *ferry_version(void) { return FERRY_VERSION_STRING; }

const char *ferry_code_name(ferry_code code)
{
    switch (code) {
    case FERRY_OK: return "FERRY_OK";
    case FERRY_EINVAL: return "FERRY_EINVAL";
    case FERRY_ESTATE: return "FERRY_ESTATE";
    case FERRY_EDB: return "FERRY_EDB";
    case FERRY_ECONN: return "FERRY_ECONN";
    case FERRY_ECOMMIT_UNKNOWN: return "FERRY_ECOMMIT_UNKNOWN";
    case FERRY_ESCHEMA: return "FERRY_ESCHEMA";
    case FERRY_ENOMEM: return "FERRY_ENOMEM";
    case FERRY_EUSER: return "FERRY_EUSER";
    case FERRY_EKAFKA: return "FERRY_EKAFKA";
    }
    return "FERRY_E?";
}

/* Messages quote input (a topic, a header name, jansson's "near
 * '...'"): escaped, so that no terminal or log reader gets a control
 * sequence from a message. */
FERRY_PRINTF(2, 0)
static void set_message(ferry_error *err, const char *fmt, va_list ap)
{
    char text[FERRY_ERROR_MESSAGE_SIZE];
    vsnprintf(text, sizeof text, fmt, ap);
    ferry__escape_text(err->message, sizeof err->message, text);
}

ferry_code ferry_error_set(ferry_error *err, ferry_code code, int retriable, const char *fmt,
                           ...)
{
    if (err == NULL)
        return code;
    ferry__err_clear(err);
    err->code = code;
    err->retriable = retriable != 0;
    va_list ap;
    va_start(ap, fmt);
    set_message(err, fmt, ap);
    va_end(ap);
    return code;
}

void ferry__err_clear(ferry_error *err)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof *err);
    err->index = -1;
}

static void copy_field(char *dst, size_t size, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    snprintf(dst, size, "%s", src);
}

/* err cleared for a new error of code, keeping the batch index a caller
 * set (which item of a batch failed). */
static void renew(ferry_error *err, ferry_code code)
{
    long index = err->index;
    ferry__err_clear(err);
    err->index = index;
    err->code = code;
}

ferry_code ferry__error_set(ferry_error *err, ferry_code code, const char *field,
                         const char *fmt, ...)
{
    if (err == NULL)
        return code;
    renew(err, code);
    copy_field(err->field, sizeof err->field, field);
    va_list ap;
    va_start(ap, fmt);
    set_message(err, fmt, ap);
    va_end(ap);
    return code;
}

bool ferry__sqlstate_is_conflict(const char *sqlstate)
{
    return sqlstate != NULL &&
           (strcmp(sqlstate, "40001") == 0 ||   /* serialization_failure */
            strcmp(sqlstate, "40P01") == 0);    /* deadlock_detected */
}

/* Server errors after which the same work may succeed once the server or
 * the connection is back: connection exceptions (08), operator
 * intervention (57P01-57P03: shutdown, crash, starting up), too many
 * connections, lock timeouts. */
static bool sqlstate_is_transient(const char *s)
{
    return strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 ||
           strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
           strcmp(s, "53300") == 0 || strcmp(s, "55P03") == 0;
}

/* libpq's connection messages end in a newline and sometimes hold two
 * lines; keep the first, which says what happened. */
static void copy_first_line(char *dst, size_t size, const char *src)
{
    size_t n = strcspn(src, "\n");
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

ferry_code ferry_error_from_pg(ferry_error *err, const PGconn *conn,
                               const PGresult *res, const char *context)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *column = res ? PQresultErrorField(res, PG_DIAG_COLUMN_NAME) : NULL;
    bool conn_bad = conn == NULL || PQstatus(conn) == CONNECTION_BAD;
    char text[FERRY_ERROR_MESSAGE_SIZE];

    if (primary != NULL)
        copy_first_line(text, sizeof text, primary);
    else if (res != NULL && PQresultErrorMessage(res)[0] != '\0')
        copy_first_line(text, sizeof text, PQresultErrorMessage(res));
    else if (conn != NULL)
        copy_first_line(text, sizeof text, PQerrorMessage(conn));
    else
        snprintf(text, sizeof text, "no connection");
    if (text[0] == '\0')
        snprintf(text, sizeof text, "unexpected result %s",
                 res ? PQresStatus(PQresultStatus(res)) : "(none)");

    ferry_code code;
    bool retriable = false;
    if (sqlstate != NULL && ferry__sqlstate_is_conflict(sqlstate)) {
        code = FERRY_EDB;
        retriable = true;
    } else if (conn_bad || (sqlstate != NULL && sqlstate_is_transient(sqlstate))) {
        code = (sqlstate != NULL && strncmp(sqlstate, "08", 2) != 0 && !conn_bad)
                   ? FERRY_EDB : FERRY_ECONN;
        retriable = true;
    } else if (sqlstate != NULL && strcmp(sqlstate, "22023") == 0 && column != NULL) {
        /* ferry.emit_with_id(): the same refusal as the client-side check */
        code = FERRY_EINVAL;
    } else {
        code = FERRY_EDB;
    }

    if (err == NULL)
        return code;
    renew(err, code);
    err->retriable = retriable;
    if (sqlstate != NULL)
        copy_field(err->sqlstate, sizeof err->sqlstate, sqlstate);
    copy_field(err->field, sizeof err->field, column);
    /* The server's message may quote the input ("invalid input syntax
     * for type json: ..."): escaped as ours are. */
    char whole[FERRY_ERROR_MESSAGE_SIZE];
    if (context != NULL)
        snprintf(whole, sizeof whole, "%s: %s", context, text);
    else
        snprintf(whole, sizeof whole, "%s", text);
    ferry__escape_text(err->message, sizeof err->message, whole);
    return code;
}
