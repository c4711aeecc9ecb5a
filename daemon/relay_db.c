/*
 * relay_db.c — the relay's two database sessions: connecting, setting
 * them up, noticing a loss, reconnecting with backoff, and the settings
 * they read.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "relay_int.h"

void relay_db_lost(relay *r, const char *what, ferry_error *err)
{
    relay_count(r, M_FAIL_DB, 1);
    /* A prepared statement gone (26000), or planned for columns that have
     * changed since (0A000, "cached plan must not change result type"):
     * fresh sessions prepare them again. */
    int stale = strcmp(err->sqlstate, "26000") == 0 || strcmp(err->sqlstate, "0A000") == 0;
    if (PQstatus(r->db.main) == CONNECTION_OK && PQstatus(r->db.ack) == CONNECTION_OK &&
        !stale) {
        ferry__log(FERRY_LOG_WARN, "db.error", "%s: %s", what, err->message);
        return;
    }
    if (r->db.ok)
        ferry__log(FERRY_LOG_WARN, "db.lost", "%s: %s; reconnecting", what, err->message);
    r->db.ok = 0;
    relay_ack_forget(r);
    sched_db_state(r->s, 0);
}

/* The setup steps below return 0, or -1 with the reason in err (or, for
 * libpq's own steps, in the connection's error message). */
static int setup_exec(PGconn *conn, const char *sql, ferry_error *err)
{
    return ferry__exec(conn, sql, 0, NULL, "could not set up the session", err) == FERRY_OK
               ? 0
               : -1;
}

/*
 * The main session. enable_sort is off for the fetch: it must walk
 * outbox_position in order and stop at its LIMIT, and the planner cannot
 * see that (relay_fetch.c says more). jit is off: nothing the relay runs
 * is long enough for it.
 */
static int setup_main(relay *r, ferry_error *err)
{
    if (ferry__set_application_name(r->db.main, "ferry-relay", r->holder, err) != FERRY_OK ||
        setup_exec(r->db.main, "SET statement_timeout = '60s'; SET lock_timeout = '10s'; "
                               "SET enable_sort = off; SET jit = off; "
                               "LISTEN " NOTIFY_CHANNEL, err) != 0 ||
        relay_fetch_prepare(r) != 0)
        return -1;
    return 0;
}

/* The acknowledging session: the statement prepared once, then
 * non-blocking (PQreset keeps that flag, and PQprepare wants it off). */
static int setup_ack(relay *r, ferry_error *err)
{
    if (PQsetnonblocking(r->db.ack, 0) != 0 ||
        ferry__set_application_name(r->db.ack, "ferry-relay", r->holder, err) != FERRY_OK ||
        setup_exec(r->db.ack, "SET statement_timeout = '60s'; SET lock_timeout = '10s'",
                   err) != 0 ||
        relay_ack_prepare(r) != 0 || PQsetnonblocking(r->db.ack, 1) != 0)
        return -1;
    return 0;
}

/* Another process already relaying under our name: a live session named
 * "ferry-relay <holder>" besides ours, on this database (a relay of
 * another database of the cluster may bear the name: it is another
 * relay). A process of that name killed a moment ago may leave its
 * sessions for a few milliseconds, so look a few times before refusing.
 * Returns 1 if one is live, 0 if not, -1 on error. */
static int holder_live(PGconn *conn)
{
    for (int tries = 0; tries < 20; tries++) {
        PGresult *res = PQexec(conn,
                               "SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = current_setting('application_name') "
                               "  AND datname = current_database() "
                               "  AND pid <> pg_backend_pid() "
                               /* Only a session that could be a relay's:
                                * any role may name its session so, and
                                * stopped every relay of that name from
                                * starting (an outside audit). */
                               "  AND (usesysid = (SELECT oid FROM pg_roles "
                               "                    WHERE rolname = current_user) "
                               "       OR pg_has_role(usesysid, 'ferry_relay', 'MEMBER'))");
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
        long n = ok ? atol(PQgetvalue(res, 0, 0)) : -1;
        PQclear(res);
        if (n <= 0)
            return n < 0 ? -1 : 0;
        ferry__sleep_ms(100);
    }
    return 1;
}

/* s with every octet but RFC 3986's unreserved ones percent-encoded,
 * appended at out (room for size bytes, NUL included); the new end. */
static char *uri_encode(char *out, size_t size, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s && size > 4; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            *out++ = (char)ch;
            size--;
        } else {
            *out++ = '%';
            *out++ = hex[ch >> 4];
            *out++ = hex[ch & 15];
            size -= 3;
        }
    }
    *out = '\0';
    return out;
}

/*
 * The default ce_source, ferry://HOST[:PORT]/DBNAME: each service has its
 * database, so this tells them apart where one fixed name ("ferry", as
 * before) made every service's events look alike. A Unix socket is
 * "localhost"; an IPv6 address is bracketed; anything else unusual is
 * percent-encoded, so the result is always a URI.
 */
static void default_source(PGconn *conn, char *out, size_t size)
{
    const char *host = PQhost(conn), *port = PQport(conn), *db = PQdb(conn);
    int socket = host == NULL || host[0] == '\0' || host[0] == '/' || host[0] == '@';
    char *p = out + snprintf(out, size, "ferry://");
    if (socket)
        p += snprintf(p, size - (size_t)(p - out), "localhost");
    else if (strchr(host, ':') != NULL && strspn(host, "0123456789abcdefABCDEF:.") == strlen(host))
        p += snprintf(p, size - (size_t)(p - out), "[%s]", host);
    else
        p = uri_encode(p, size - (size_t)(p - out), host);
    if (!socket && port != NULL && port[0] != '\0' && strcmp(port, "5432") != 0 &&
        strspn(port, "0123456789") == strlen(port))
        p += snprintf(p, size - (size_t)(p - out), ":%s", port);
    p += snprintf(p, size - (size_t)(p - out), "/");
    uri_encode(p, size - (size_t)(p - out), db ? db : "");
}

void relay_set_source(relay *r, PGconn *conn)
{
    if (r->cfg->source != NULL)
        snprintf(r->source, sizeof r->source, "%s", r->cfg->source);
    else
        default_source(conn, r->source, sizeof r->source);
}

int relay_db_limit_grew(relay *r, PGconn *conn)
{
    PGresult *res = PQexec(conn, "SELECT max_payload_bytes FROM ferry.settings");
    int limit = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                    ? atoi(PQgetvalue(res, 0, 0))
                    : 0;
    PQclear(res);
    if (limit <= r->db.max_payload)
        return 0;
    r->db.max_payload = limit;
    return 1;
}

int relay_refuse_live_holder(relay *r, PGconn *conn)
{
    int live = holder_live(conn);
    if (live == 0)
        return 0;
    ferry__log_json(FERRY_LOG_ERROR, "relay.holder_live", json_pack("{s:s}", "holder", r->holder),
                   live > 0 ? "another relay named %s is already live (a session named "
                              "'ferry-relay %s' is connected): refusing to start; give "
                              "each relay its own --holder"
                            : "could not check whether a relay named %s is live%s",
                   r->holder, live > 0 ? r->holder : "");
    return -1;
}

int relay_db_connect(relay *r)
{
    /* Zeroed: not every setup step fills it (the prepares don't), and the
     * log lines below read its message. */
    ferry_error err = {0};
    /* Defaults first, then the user's conninfo (expanded from "dbname"),
     * which overrides them: a black-holed server must not hang the relay
     * for the kernel's TCP timeout. */
    static const char *const keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                                       "keepalives_interval", "keepalives_count",
                                       "tcp_user_timeout", "dbname", "client_encoding", NULL};
    /* UTF8 last, over the conninfo and PGCLIENTENCODING: what the relay
     * reads it publishes byte for byte. */
    const char *values[] = {"10", "1", "10", "5", "3", "30000", r->cfg->db, "UTF8", NULL};
    r->db.main = PQconnectdbParams(keys, values, 1);
    ferry__log_pq_notices(r->db.main, "main");
    if (PQstatus(r->db.main) == CONNECTION_OK) {
        r->db.ack = PQconnectdbParams(keys, values, 1);
        ferry__log_pq_notices(r->db.ack, "ack");
    }
    PGconn *failed = PQstatus(r->db.main) != CONNECTION_OK ? r->db.main : r->db.ack;
    if (PQstatus(failed) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(failed);
        ferry__log(FERRY_LOG_ERROR, "db.connect", "could not connect to the database: %.*s",
                  (int)strcspn(msg, "\n"), msg);
        return -1;
    }
    relay_set_source(r, r->db.main);
    int version = 0;
    if (ferry_schema_version(r->db.main, &version, &err) != FERRY_OK) {
        /* Say what went wrong: a role without the grant on schema_version
         * is not an unmigrated database. */
        ferry__log(FERRY_LOG_ERROR, "db.schema", "could not read the ferry schema's version: %s",
                  err.message);
        return -1;
    }
    if (version < 1) {
        ferry__log(FERRY_LOG_ERROR, "db.schema", "ferry schema not found (version 0): run "
                  "ferry-relay migrate --db ...");
        return -1;
    }
    if (version < RELAY_SCHEMA_MIN) {
        /* Its wake-ups (relay_wake.c) need ferry.wake_shard_lock. */
        ferry__log(FERRY_LOG_ERROR, "db.schema", "ferry schema version %d is older than this "
                  "relay needs (%d): run ferry-relay migrate --db ...", version,
                  RELAY_SCHEMA_MIN);
        return -1;
    }
    if (setup_main(r, &err) != 0) {
        ferry__log(FERRY_LOG_ERROR, "db.setup", "could not set up the session: %s",
                  err.message[0] ? err.message : PQerrorMessage(r->db.main));
        return -1;
    }
    if (relay_refuse_live_holder(r, r->db.main) != 0)
        return -1;
    if (setup_ack(r, &err) != 0) {
        ferry__log(FERRY_LOG_ERROR, "db.setup", "could not prepare the acknowledgement: %s",
                  err.message[0] ? err.message : PQerrorMessage(r->db.ack));
        return -1;
    }
    if (relay_db_refresh_settings(r) != 0)
        return -1;
    r->db.ok = 1;
    r->db.backoff_ms = 100;
    return 0;
}

/* Reconnect with backoff, without blocking the loop for longer than one
 * connection attempt per session. Both sessions start afresh: after a lost
 * one the other is rarely healthy (a restarted server, a terminated relay),
 * and an acknowledgement in flight on it is simply sent again (deleting a
 * deleted row changes nothing). */
int relay_db_maybe_reconnect(relay *r)
{
    if (r->db.ok)
        return 0;
    if (ferry__now_ms() < r->db.retry_at)
        return -1;
    ferry_error err = {0};
    relay_ack_forget(r);
    relay_wake_forget(r);
    PQreset(r->db.main);
    PQreset(r->db.ack);
    if (PQstatus(r->db.main) == CONNECTION_OK && PQstatus(r->db.ack) == CONNECTION_OK &&
        setup_main(r, &err) == 0 && setup_ack(r, &err) == 0) {
        r->db.ok = 1;
        r->db.backoff_ms = 100;
        r->next_lease_tick = 0;     /* find out at once what we still hold */
        sched_db_state(r->s, 1);
        ferry__log(FERRY_LOG_INFO, "db.reconnected", "database connection restored");
        return 0;
    }
    r->db.retry_at = ferry__now_ms() + r->db.backoff_ms;
    if (r->db.backoff_ms < 5000)
        r->db.backoff_ms *= 2;
    return -1;
}

/* Read shard_count (it may have grown since the last look) and
 * max_payload_bytes, and make sure a lease row exists for every shard.
 * Returns 0, or -1 (logged). */
int relay_db_refresh_settings(relay *r)
{
    PGresult *res = PQexec(r->db.main, "SELECT shard_count, max_payload_bytes FROM ferry.settings");
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    int count = ok ? atoi(PQgetvalue(res, 0, 0)) : 0;
    int max_payload = ok ? atoi(PQgetvalue(res, 0, 1)) : 0;
    if (!ok) {
        ferry__log(FERRY_LOG_ERROR, "db.settings", "could not read ferry.settings: %s",
                  PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    PQclear(res);
    if (count < 1 || count > MAX_SHARDS) {
        ferry__log(FERRY_LOG_ERROR, "db.settings", "ferry.settings.shard_count %d is out of range",
                  count);
        return -1;
    }
    r->db.max_payload = max_payload;
    if (count == r->db.shard_count)
        return 0;
    ferry_error err;
    char **names = calloc((size_t)count, sizeof *names);
    for (int s = 0; names != NULL && s < count; s++) {
        names[s] = malloc(32);
        if (names[s] != NULL)
            snprintf(names[s], 32, SHARD_PREFIX "%d", s);
    }
    ferry_code rc = names ? ferry__lease_ensure(r->db.main, (const char *const *)names,
                                               (size_t)count, &err)
                          : FERRY_ENOMEM;
    for (int s = 0; names != NULL && s < count; s++)
        free(names[s]);
    free(names);
    if (rc != FERRY_OK) {
        ferry__log(FERRY_LOG_ERROR, "lease.setup", "%s", rc == FERRY_ENOMEM ? "out of memory"
                                                                           : err.message);
        return -1;
    }
    if (r->db.shard_count != 0)
        ferry__log(FERRY_LOG_INFO, "shards.grown", "shard_count grew from %d to %d",
                  r->db.shard_count, count);
    r->db.shard_count = count;
    return 0;
}

int relay_db_drain_notifies(relay *r)
{
    if (!r->db.ok)
        return -1;
    if (!PQconsumeInput(r->db.main)) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.main, NULL, "connection");
        relay_db_lost(r, "listen", &err);
        return -1;
    }
    PGnotify *n;
    while ((n = PQnotifies(r->db.main)) != NULL) {
        sched_dirty(r->s);
        relay_count(r, M_WAKEUPS_NOTIFY, 1);
        PQfreemem(n);
    }
    return 0;
}

int relay_db_result(PGresult *res, ExecStatusType want, int level, const char *event,
                    const char *fmt, ...)
{
    if (PQresultStatus(res) == want)
        return 0;
    /* The log keeps 1023 bytes of a message: so many of the prefix are
     * as many as it would have shown. */
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    ferry__log(level, event, "%s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return -1;
}
