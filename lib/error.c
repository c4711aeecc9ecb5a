/*
 * error.c — the caller-owned error struct, and how server errors map onto
 * it. Nothing here allocates: an error path must work when memory is gone.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

ferry_code ferry_error_set(ferry_error *err, ferry_code code, int retriable, const char *fmt,
                           ...)
{
    if (err == NULL)
        return code;
    ferry_err_clear(err);
    err->code = code;
    err->retriable = retriable != 0;
    char text[FERRY_ERROR_MESSAGE_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ferry_escape_text(err->message, sizeof err->message, text);
    return code;
}

void ferry_err_clear(ferry_error *err)
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

ferry_code ferry_err_set(ferry_error *err, ferry_code code, const char *field,
                         const char *fmt, ...)
{
    if (err == NULL)
        return code;
    long index = err->index;
    ferry_err_clear(err);
    err->index = index;
    err->code = code;
    copy_field(err->field, sizeof err->field, field);
    /* Messages quote input (a topic, a header name, jansson's "near
     * '...'"): escaped, so that no terminal or log reader gets a control
     * sequence from a message. */
    char text[FERRY_ERROR_MESSAGE_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ferry_escape_text(err->message, sizeof err->message, text);
    return code;
}

bool ferry_sqlstate_is_conflict(const char *sqlstate)
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
    if (sqlstate != NULL && ferry_sqlstate_is_conflict(sqlstate)) {
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
    long index = err->index;
    ferry_err_clear(err);
    err->index = index;
    err->code = code;
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
    ferry_escape_text(err->message, sizeof err->message, whole);
    return code;
}

ferry_code ferry_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                      const char *context, ferry_error *err)
{
    PGresult *res = nparams > 0
        ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0)
        : PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    ferry_code rc = FERRY_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = ferry_error_from_pg(err, conn, res, context);
    PQclear(res);
    return rc;
}

ferry_code ferry_conn_check_in_tx(PGconn *conn, const char *what, ferry_error *err)
{
    if (conn == NULL)
        return ferry_err_set(err, FERRY_EINVAL, "conn", "%s: connection is NULL", what);
    if (PQstatus(conn) != CONNECTION_OK) {
        ferry_err_set(err, FERRY_ECONN, NULL, "%s: connection is not open", what);
        if (err != NULL)
            err->retriable = 1;
        return FERRY_ECONN;
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return ferry_err_set(err, FERRY_ESTATE, NULL,
                             "%s: connection is in pipeline mode", what);
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        return FERRY_OK;
    case PQTRANS_IDLE:
        return ferry_err_set(err, FERRY_ESTATE, NULL,
                             "%s: no transaction is open on this connection "
                             "(BEGIN first, so that the message commits with "
                             "the update it belongs to)", what);
    case PQTRANS_INERROR:
        return ferry_err_set(err, FERRY_ESTATE, NULL,
                             "%s: the transaction is aborted by an earlier error; "
                             "roll it back", what);
    case PQTRANS_ACTIVE:
        return ferry_err_set(err, FERRY_ESTATE, NULL,
                             "%s: a command is still in progress on this connection",
                             what);
    case PQTRANS_UNKNOWN:
        break;
    }
    ferry_err_set(err, FERRY_ECONN, NULL, "%s: connection state is unknown", what);
    if (err != NULL)
        err->retriable = 1;
    return FERRY_ECONN;
}

bool ferry_utf8_valid(const char *s, size_t len, size_t *bad_at)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1; min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2; min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3; min = 0x10000;
        } else {
            goto bad;
        }
        if (len - i <= n)
            goto bad;
        unsigned cp = c & (0x3F >> n);
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        i += n + 1;
    }
    return true;
bad:
    if (bad_at != NULL)
        *bad_at = i;
    return false;
}

size_t ferry_escape_text(char *dst, size_t size, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)src;
    size_t used = 0, i = 0;
    if (size == 0)
        return 0;
    while (p[i] != '\0') {
        unsigned c = p[i];
        size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        bool ok = true;
        for (size_t k = 1; k < n && ok; k++)
            ok = p[i + k] != '\0';
        ok = ok && (n == 1 || ferry_utf8_valid(src + i, n, NULL));
        /* C0 controls, DEL, C1 controls (U+0080..U+009F), and bytes that
         * are no UTF-8 character: each byte as \xNN. */
        bool escape = !ok || c < 0x20 || c == 0x7f || (c == 0xC2 && p[i + 1] <= 0x9F);
        if (!ok)
            n = 1;
        size_t need = escape ? 4 * n : n;
        if (used + need >= size)
            break;                    /* never half a character or escape */
        for (size_t k = 0; k < n; k++) {
            if (escape) {
                dst[used++] = '\\';
                dst[used++] = 'x';
                dst[used++] = hex[p[i + k] >> 4];
                dst[used++] = hex[p[i + k] & 0xF];
            } else {
                dst[used++] = (char)p[i + k];
            }
        }
        i += n;
    }
    dst[used] = '\0';
    return used;
}

void ferry_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

int64_t ferry_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
