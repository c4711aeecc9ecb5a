/*
 * status.c — `ferry-relay status`: is a relay running, and is it keeping
 * up? A verdict first, then the live relays (their `relay:NAME`
 * heartbeat leases) with the shards each holds, the shards with
 * unpublished rows, and the dead letters.
 *
 * The verdict is a PROBLEM (exit 4, as `ferry-reconcile check` finding
 * one) when ready rows wait on a shard that no live relay serves (a shard
 * is served when its lease is held, unexpired, by a holder whose heartbeat
 * is unexpired), or when the oldest ready row has waited longer than
 * --max-lag (60 s, the reconciler's outbox_lag default). Dead letters are
 * counted in the verdict line but need a person, not a relay: they do not
 * make it a problem.
 *
 * Everything is read in one REPEATABLE READ READ ONLY transaction, so the
 * shard table, the totals and the dead letters describe the same instant,
 * and every age and expiry is measured against that transaction's now():
 * the database clock, as for leases everywhere else. The outbox is read
 * once, by one GROUP BY over its unpublished rows; the rest are small
 * tables.
 *
 * The results go into one jansson object, which is printed as is with
 * --json or rendered as aligned tables otherwise, so that the two formats
 * cannot disagree.
 */
#include "status.h"
#include "relay_cli.h"
#include "strbuf.h"

#include <assert.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

enum {
    ST_EXIT_FAIL = 1,
    ST_EXIT_PROBLEM = 4,          /* as ferry-reconcile's "problems left" */
    ST_DEAD_LETTERS_SHOWN = 10,   /* the oldest ones listed */
    ST_CELL_MAX = 48,             /* characters of a text cell in the table */
    ST_REASON_MAX = 80,           /* ... of a dead letter's reason */
};

#define ST_ISO_UTC(expr) \
    "to_char((" expr ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

static const char st_sql_schema[] =
    "SELECT to_regclass('ferry.settings') IS NOT NULL AND to_regclass('ferry.outbox') IS NOT NULL"
    "   AND to_regclass('ferry.lease') IS NOT NULL"
    "   AND to_regclass('ferry.dead_letter') IS NOT NULL";

static const char st_sql_clock[] =
    "SELECT " ST_ISO_UTC("now()") ", (SELECT shard_count FROM ferry.settings)";

/* One pass over the outbox; shards with no unpublished rows come from
 * the series, shards beyond shard_count (rows of a key first seen under a
 * larger count) from the outbox itself. */
static const char st_sql_shards[] =
    "WITH o AS ("
    "    SELECT shard, count(*) AS unpublished,"
    "           count(*) FILTER (WHERE available_at <= now() AND NOT parked) AS ready,"
    "           min(created_at) AS oldest,"
    /* A delayed row is waiting only since it became available; a row of a
     * key parked behind a relay dead letter waits for a decision, which
     * the dead letters' count asks for, not for a relay ("behind" said so
     * of a relay that kept up: an outside audit). */
    "           min(greatest(created_at, available_at))"
    "             FILTER (WHERE available_at <= now() AND NOT parked) AS oldest_ready"
    "      FROM (SELECT ob.shard, ob.created_at, ob.available_at,"
    "                   EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = ''"
    "                            AND d.topic = ob.topic AND d.aggregateid = ob.aggregateid)"
    "                     AS parked"
    "              FROM ferry.outbox ob WHERE ob.published_at IS NULL) u"
    "     GROUP BY shard),"
    " sh AS ("
    "    SELECT generate_series(0, (SELECT shard_count FROM ferry.settings) - 1) AS shard"
    "    UNION SELECT shard FROM o)"
    "SELECT sh.shard, coalesce(o.unpublished, 0), coalesce(o.ready, 0),"
    "       CASE WHEN o.oldest IS NOT NULL"   /* greatest() would turn NULL into 0 */
    "            THEN round(greatest(0, extract(epoch FROM now() - o.oldest))::numeric, 3) END,"
    "       CASE WHEN l.name IS NULL OR l.holder IS NULL THEN 'free'"
    "            WHEN l.expires_at <= now() THEN 'expired' ELSE 'held' END,"
    "       l.holder, l.epoch,"
    "       CASE WHEN isfinite(l.expires_at) THEN " ST_ISO_UTC("l.expires_at") " END,"
    "       CASE WHEN isfinite(l.expires_at)"
    "            THEN round(extract(epoch FROM l.expires_at - now())::numeric, 3) END,"
    "       CASE WHEN o.oldest_ready IS NOT NULL"
    "            THEN round(greatest(0, extract(epoch FROM now() - o.oldest_ready))::numeric, 3)"
    "       END,"
    "       l.holder IS NOT NULL AND l.expires_at > now()"
    "       AND EXISTS (SELECT 1 FROM ferry.lease hb WHERE hb.name = 'relay:' || l.holder"
    "                      AND hb.holder = l.holder AND hb.expires_at > now())"
    "  FROM sh LEFT JOIN o USING (shard)"
    "  LEFT JOIN ferry.lease l ON l.name = 'shard:' || sh.shard"
    " ORDER BY sh.shard";

/* Every relay that has not released its heartbeat, live or not, with the
 * shards it holds unexpired. */
static const char st_sql_relays[] =
    "SELECT substr(h.name, 7), h.holder, h.epoch, h.expires_at > now(),"
    "       CASE WHEN isfinite(h.expires_at)"
    "            THEN round(extract(epoch FROM h.expires_at - now())::numeric, 3) END,"
    "       CASE WHEN h.renewed_at IS NOT NULL"
    "            THEN round(greatest(0, extract(epoch FROM now() - h.renewed_at))::numeric, 3)"
    "       END,"
    "       coalesce((SELECT json_agg(substr(s.name, 7)::int ORDER BY substr(s.name, 7)::int)"
    "                   FROM ferry.lease s"
    "                  WHERE starts_with(s.name, 'shard:') AND substr(s.name, 7) ~ '^[0-9]{1,9}$'"
    "                    AND s.holder = h.holder AND s.expires_at > now()), '[]')::text"
    "  FROM ferry.lease h"
    " WHERE starts_with(h.name, 'relay:') AND h.holder IS NOT NULL"
    " ORDER BY h.name";

/* The WAL source (schema 11 on): the emit mode and the slot, as the
 * server sees it. A database in wal mode whose slot is missing or lost
 * (wal_status = lost) loses every message emitted since: a PROBLEM. */
static const char st_sql_has_wal[] =
    "SELECT to_regclass('ferry.wal_slot') IS NOT NULL, "
    "       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'ferry.settings'::regclass "
    "                  AND attname = 'wal_until_lsn' AND NOT attisdropped)";

/* Schema 22: back in table mode, the table path holds rows until the
 * slot is confirmed past the turn; an older schema has no such column
 * (WAL_UNTIL false). Named, not read through the whole row: the
 * reconciler's role may not read settings.wal_token (schema 34). */
#define ST_SQL_WAL(WAL_UNTIL)                                                              \
    "SELECT s.emit_mode, s.wal_slot, r.slot_name IS NOT NULL, r.wal_status, r.active,"       \
    "       CASE WHEN NOT pg_is_in_recovery()"                                               \
    "            THEN pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn)::bigint END,"     \
    "       CASE WHEN NOT pg_is_in_recovery()"                                               \
    "            THEN pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn)::bigint END," \
    "       coalesce(s.emit_mode = 'table' AND r.wal_status IS DISTINCT FROM 'lost'"         \
    "                AND r.confirmed_flush_lsn < " WAL_UNTIL ", false)"                      \
    "  FROM ferry.settings s"                                                                \
    "  LEFT JOIN pg_replication_slots r"                                                     \
    "    ON r.slot_name = s.wal_slot AND r.database = current_database()"
static const char st_sql_wal[] = ST_SQL_WAL("s.wal_until_lsn");
static const char st_sql_wal_21[] = ST_SQL_WAL("NULL::pg_lsn");

static const char st_sql_dead_by_consumer[] =
    "SELECT consumer, count(*) FROM ferry.dead_letter GROUP BY consumer ORDER BY consumer";

static const char st_sql_dead_oldest[] =
    "SELECT id, message_id, consumer, topic, aggregateid, type, attempts,"
    "       " ST_ISO_UTC("failed_at") ","
    "       round(greatest(0, extract(epoch FROM now() - failed_at))::numeric, 3), reason"
    "  FROM ferry.dead_letter ORDER BY failed_at, id LIMIT 10";
_Static_assert(ST_DEAD_LETTERS_SHOWN == 10, "keep the LIMIT above in step");

static void st_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry-relay status [--db CONNINFO] [--config FILE] [--json] [--max-lag SECONDS]\n"
            "\n"
            "Is a relay running, and is it keeping up? The first line is the verdict\n"
            "(\"ok: ...\" or \"PROBLEM: ...\"); then the relays with a heartbeat lease and\n"
            "the shards each holds, the shards with unpublished rows (count, ready,\n"
            "oldest, lease), and the dead letters (per consumer, the 10 oldest), all by\n"
            "the database clock.\n"
            "\n"
            "  --db CONNINFO      libpq connection string or URI ($FERRY_DB; default: db:\n"
            "                     of the --config file)\n"
            "  --config FILE      ferry-relay run's YAML settings: its db: ($FERRY_CONFIG)\n"
            "  --json             one JSON object (with \"verdict\") instead of tables\n"
            "  --max-lag SECONDS  a ready row waiting longer is a problem (default 60)\n"
            "  --help             this text\n"
            "\n"
            "Exit status: 0 ok; 4 a problem (ready rows on a shard no live relay serves,\n"
            "or older than --max-lag; emit_mode = 'wal' with its replication slot\n"
            "missing or lost; the slot unreserved (past max_slot_wal_keep_size); back\n"
            "in table mode with the slot not yet past the turn and no relay reading\n"
            "it); 1 could not read (connection, schema); 2 usage error. The same\n"
            "with --json.\n");
}

/* ------------------------------------------------------------------ */
/* From query results to the model. Building JSON can only fail for lack
 * of memory; that is recorded once in *oom and checked at the end.    */

typedef struct st_build {
    bool oom;
} st_build;

static json_t *st_keep(st_build *b, json_t *v)
{
    if (v == NULL)
        b->oom = true;
    return v;
}

static void st_set(st_build *b, json_t *obj, const char *key, json_t *v)
{
    if (v == NULL || obj == NULL || json_object_set_new(obj, key, v) != 0)
        b->oom = true;
}

static void st_append(st_build *b, json_t *arr, json_t *v)
{
    if (v == NULL || arr == NULL || json_array_append_new(arr, v) != 0)
        b->oom = true;
}

/* A column as JSON: NULL as null, else text, integer or number. */
static json_t *st_text(st_build *b, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return st_keep(b, json_null());
    return st_keep(b, json_stringn(PQgetvalue(res, row, col),
                                   (size_t)PQgetlength(res, row, col)));
}

static json_t *st_int(st_build *b, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return st_keep(b, json_null());
    return st_keep(b, json_integer(strtoll(PQgetvalue(res, row, col), NULL, 10)));
}

static json_t *st_real(st_build *b, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return st_keep(b, json_null());
    return st_keep(b, json_real(strtod(PQgetvalue(res, row, col), NULL)));
}

/* Run sql; NULL after printing why. */
static PGresult *st_query(PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    fprintf(stderr, "ferry-relay status: could not read %s: %s", what,
            PQresultErrorMessage(res));
    PQclear(res);
    return NULL;
}

static json_t *st_shards(st_build *b, const PGresult *res, long long *unpublished,
                         long long *ready)
{
    json_t *shards = st_keep(b, json_array());
    *unpublished = *ready = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *s = st_keep(b, json_object());
        json_t *lease = st_keep(b, json_object());
        st_set(b, s, "shard", st_int(b, res, r, 0));
        st_set(b, s, "unpublished", st_int(b, res, r, 1));
        st_set(b, s, "ready", st_int(b, res, r, 2));
        st_set(b, s, "oldest_age_s", st_real(b, res, r, 3));
        st_set(b, lease, "name", st_keep(b, json_sprintf("shard:%s", PQgetvalue(res, r, 0))));
        st_set(b, lease, "state", st_text(b, res, r, 4));
        st_set(b, lease, "holder", st_text(b, res, r, 5));
        st_set(b, lease, "epoch", st_int(b, res, r, 6));
        st_set(b, lease, "expires_at", st_text(b, res, r, 7));
        st_set(b, lease, "expires_in_s", st_real(b, res, r, 8));
        st_set(b, s, "oldest_ready_age_s", st_real(b, res, r, 9));
        st_set(b, s, "served", st_keep(b, json_boolean(PQgetvalue(res, r, 10)[0] == 't')));
        st_set(b, s, "lease", lease);
        st_append(b, shards, s);
        *unpublished += strtoll(PQgetvalue(res, r, 1), NULL, 10);
        *ready += strtoll(PQgetvalue(res, r, 2), NULL, 10);
    }
    return shards;
}

static json_t *st_relays(st_build *b, const PGresult *res)
{
    json_t *list = st_keep(b, json_array());
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = st_keep(b, json_object());
        st_set(b, o, "name", st_text(b, res, r, 0));
        st_set(b, o, "holder", st_text(b, res, r, 1));
        st_set(b, o, "epoch", st_int(b, res, r, 2));
        st_set(b, o, "live", st_keep(b, json_boolean(PQgetvalue(res, r, 3)[0] == 't')));
        st_set(b, o, "expires_in_s", st_real(b, res, r, 4));
        st_set(b, o, "heartbeat_age_s", st_real(b, res, r, 5));
        st_set(b, o, "shards", st_keep(b, json_loads(PQgetvalue(res, r, 6), 0, NULL)));
        st_append(b, list, o);
    }
    return list;
}

/* The WAL source's part: null before schema 11 (wal NULL). */
static json_t *st_wal(st_build *b, const PGresult *res)
{
    if (res == NULL || PQntuples(res) != 1)
        return st_keep(b, json_null());
    json_t *w = st_keep(b, json_object());
    st_set(b, w, "emit_mode", st_text(b, res, 0, 0));
    st_set(b, w, "slot", st_text(b, res, 0, 1));
    st_set(b, w, "slot_exists", st_keep(b, json_boolean(PQgetvalue(res, 0, 2)[0] == 't')));
    st_set(b, w, "wal_status", st_text(b, res, 0, 3));
    st_set(b, w, "active", st_keep(b, json_boolean(PQgetvalue(res, 0, 4)[0] == 't')));
    st_set(b, w, "retained_bytes", st_int(b, res, 0, 5));
    st_set(b, w, "confirmed_lag_bytes", st_int(b, res, 0, 6));
    st_set(b, w, "held_for_wal", st_keep(b, json_boolean(PQgetvalue(res, 0, 7)[0] == 't')));
    return w;
}

/* The verdict, from the model: see the top of the file. */
static json_t *st_verdict(st_build *b, const json_t *root, double max_lag_s)
{
    long long shard_count = json_integer_value(json_object_get(root, "shard_count"));
    long long ready = json_integer_value(json_object_get(root, "ready"));
    long long dead = json_integer_value(
        json_object_get(json_object_get(root, "dead_letters"), "total"));
    long long live = 0, served = 0;
    double oldest = -1;
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(root, "relays"), i, x)
        live += json_is_true(json_object_get(x, "live"));
    json_t *unserved = st_keep(b, json_array());
    json_array_foreach(json_object_get(root, "shards"), i, x) {
        long long n = json_integer_value(json_object_get(x, "shard"));
        bool is_served = json_is_true(json_object_get(x, "served"));
        served += is_served && n < shard_count;
        const json_t *age = json_object_get(x, "oldest_ready_age_s");
        if (json_is_real(age) && json_real_value(age) > oldest)
            oldest = json_real_value(age);
        if (!is_served && json_integer_value(json_object_get(x, "ready")) > 0)
            st_append(b, unserved, st_keep(b, json_integer(n)));
    }

    char text[512], tail[64] = "";
    bool ok = false;
    if (dead > 0)
        snprintf(tail, sizeof tail, "; %lld dead letter%s", dead, dead == 1 ? "" : "s");
    const char *rows = ready == 1 ? "row" : "rows";
    /* First, as the worst: in wal mode, a slot gone or invalidated means
     * messages emitted meanwhile are not decoded by anyone. */
    const json_t *wal = json_object_get(root, "wal");
    const char *mode = json_string_value(json_object_get(wal, "emit_mode"));
    const char *slot = json_string_value(json_object_get(wal, "slot"));
    const char *wal_status = json_string_value(json_object_get(wal, "wal_status"));
    bool wal_mode = mode != NULL && strcmp(mode, "wal") == 0;
    if (wal_mode && !json_is_true(json_object_get(wal, "slot_exists"))) {
        snprintf(text, sizeof text, "PROBLEM: emit_mode is 'wal' but the replication slot "
                 "\"%s\" does not exist: messages emitted since it went are not published; "
                 "set emit_mode = 'table', then see `ferry-relay slot recreate`%s",
                 slot ? slot : "?", tail);
    } else if (wal_mode && wal_status != NULL && strcmp(wal_status, "lost") == 0) {
        snprintf(text, sizeof text, "PROBLEM: emit_mode is 'wal' but the replication slot "
                 "\"%s\" is lost (wal_status = lost, past max_slot_wal_keep_size): messages "
                 "in the WAL it lost may not have been published; set emit_mode = 'table', "
                 "then see `ferry-relay slot recreate`%s", slot ? slot : "?", tail);
    } else if (json_is_true(json_object_get(wal, "held_for_wal")) &&
               !json_is_true(json_object_get(wal, "active"))) {
        snprintf(text, sizeof text, "PROBLEM: emit_mode turned from 'wal' to 'table', and no "
                 "relay reads the replication slot \"%s\": the table path holds its rows back "
                 "until a WAL relay (--outbox-source wal) has published what was emitted "
                 "before the turn; run one, or drop the slot if those messages are given up%s",
                 slot ? slot : "?", tail);
    } else if (wal_status != NULL && strcmp(wal_status, "unreserved") == 0) {
        snprintf(text, sizeof text, "PROBLEM: the replication slot \"%s\" retains more WAL "
                 "than max_slot_wal_keep_size (wal_status = unreserved): the next checkpoint "
                 "invalidates it, and messages in the WAL it loses may never be published; "
                 "a WAL relay must catch up now%s", slot ? slot : "?", tail);
    } else if (ready > 0 && live == 0) {
        snprintf(text, sizeof text, "PROBLEM: no relay is live; %lld %s ready, oldest %.1f s%s",
                 ready, rows, oldest, tail);
    } else if (json_array_size(unserved) > 0) {
        char list[160] = "";
        size_t used = 0;
        json_array_foreach(unserved, i, x)
            if (used < sizeof list)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%lld",
                                         i ? ", " : "", (long long)json_integer_value(x));
        snprintf(text, sizeof text,
                 "PROBLEM: ready rows on %zu shard%s no live relay serves (%s); %lld relay%s live, "
                 "%lld %s ready, oldest %.1f s%s",
                 json_array_size(unserved), json_array_size(unserved) == 1 ? "" : "s", list,
                 live, live == 1 ? "" : "s", ready, rows, oldest, tail);
    } else if (oldest > max_lag_s) {
        snprintf(text, sizeof text,
                 "PROBLEM: behind: oldest ready row %.1f s, over --max-lag %g s; %lld %s ready, "
                 "%lld relay%s live%s", oldest, max_lag_s, ready, rows, live,
                 live == 1 ? "" : "s", tail);
    } else if (live == 0 && wal_mode && !json_is_true(json_object_get(wal, "active"))) {
        /* Not "nothing ready": what wal mode emits waits in the WAL, where
         * this cannot count it, until a WAL relay reads the slot. */
        ok = true;
        const json_t *lag = json_object_get(wal, "confirmed_lag_bytes");
        char bytes[48] = "an unknown number of";
        if (json_is_integer(lag))
            snprintf(bytes, sizeof bytes, "%lld", (long long)json_integer_value(lag));
        snprintf(text, sizeof text, "ok: nothing ready in the outbox table; no relay is live, "
                 "and emit_mode is 'wal' with no relay reading the replication slot \"%s\" "
                 "(%s bytes of WAL past its confirmed position): messages emitted in wal mode "
                 "wait there until one does%s", slot ? slot : "?", bytes, tail);
    } else if (live == 0) {
        ok = true;
        snprintf(text, sizeof text, "ok: nothing ready to publish; no relay is live%s", tail);
    } else {
        ok = true;
        char age[48] = "nothing ready";
        if (oldest >= 0)
            snprintf(age, sizeof age, "oldest ready row %.1f s", oldest);
        snprintf(text, sizeof text, "ok: %lld relay%s live, %lld/%lld shards served, %s%s", live,
                 live == 1 ? "" : "s", served, shard_count, age, tail);
    }

    json_t *v = st_keep(b, json_object());
    st_set(b, v, "ok", st_keep(b, json_boolean(ok)));
    st_set(b, v, "text", st_keep(b, json_string(text)));
    st_set(b, v, "live_relays", st_keep(b, json_integer(live)));
    st_set(b, v, "shards_served", st_keep(b, json_integer(served)));
    st_set(b, v, "ready", st_keep(b, json_integer(ready)));
    st_set(b, v, "oldest_ready_age_s", st_keep(b, oldest >= 0 ? json_real(oldest) : json_null()));
    st_set(b, v, "max_lag_s", st_keep(b, json_real(max_lag_s)));
    st_set(b, v, "unserved_shards_with_ready_rows", unserved);
    return v;
}

static json_t *st_dead_letters(st_build *b, const PGresult *by_consumer,
                               const PGresult *oldest)
{
    json_t *dl = st_keep(b, json_object());
    json_t *counts = st_keep(b, json_array());
    long long total = 0;
    for (int r = 0; r < PQntuples(by_consumer); r++) {
        json_t *c = st_keep(b, json_object());
        st_set(b, c, "consumer", st_text(b, by_consumer, r, 0));
        st_set(b, c, "count", st_int(b, by_consumer, r, 1));
        st_append(b, counts, c);
        total += strtoll(PQgetvalue(by_consumer, r, 1), NULL, 10);
    }
    json_t *list = st_keep(b, json_array());
    static const char *const names[] = {"id",      "message_id", "consumer", "topic",
                                        "key",     "type",       "attempts", "failed_at",
                                        "age_s",   "reason"};
    for (int r = 0; r < PQntuples(oldest); r++) {
        json_t *d = st_keep(b, json_object());
        for (int c = 0; c < (int)(sizeof names / sizeof names[0]); c++) {
            json_t *v = c == 0 || c == 6 ? st_int(b, oldest, r, c)
                        : c == 8         ? st_real(b, oldest, r, c)
                                         : st_text(b, oldest, r, c);
            st_set(b, d, names[c], v);
        }
        st_append(b, list, d);
    }
    st_set(b, dl, "total", st_keep(b, json_integer(total)));
    st_set(b, dl, "by_consumer", counts);
    st_set(b, dl, "oldest", list);
    return dl;
}

/* Read everything into one object; NULL after printing why. */
static json_t *st_collect(PGconn *conn, double max_lag_s, bool *no_schema)
{
    json_t *root = NULL;
    PGresult *begin = NULL, *schema = NULL, *clock = NULL, *shards = NULL, *by_consumer = NULL,
             *oldest = NULL, *relays = NULL, *has_wal = NULL, *wal = NULL;
    *no_schema = false;

    begin = st_query(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "the database");
    if (begin == NULL)
        goto out;
    schema = st_query(conn, st_sql_schema, "the catalog");
    if (schema == NULL)
        goto out;
    if (strcmp(PQgetvalue(schema, 0, 0), "t") != 0) {
        *no_schema = true;
        goto out;
    }
    if ((clock = st_query(conn, st_sql_clock, "ferry.settings")) == NULL ||
        (shards = st_query(conn, st_sql_shards, "the outbox and the leases")) == NULL ||
        (relays = st_query(conn, st_sql_relays, "the relays' heartbeats")) == NULL ||
        (by_consumer = st_query(conn, st_sql_dead_by_consumer, "the dead letters")) == NULL ||
        (oldest = st_query(conn, st_sql_dead_oldest, "the dead letters")) == NULL ||
        (has_wal = st_query(conn, st_sql_has_wal, "the catalog")) == NULL)
        goto out;
    if (strcmp(PQgetvalue(has_wal, 0, 0), "t") == 0 &&
        (wal = st_query(conn, strcmp(PQgetvalue(has_wal, 0, 1), "t") == 0 ? st_sql_wal
                                                                            : st_sql_wal_21,
                        "the replication slot")) == NULL)
        goto out;

    st_build b = {.oom = false};
    long long unpublished, ready;
    root = st_keep(&b, json_object());
    /* The verdict first; filled in once the rest is there. */
    st_set(&b, root, "verdict", st_keep(&b, json_null()));
    st_set(&b, root, "database_time", st_text(&b, clock, 0, 0));
    st_set(&b, root, "shard_count", st_int(&b, clock, 0, 1));
    json_t *shard_list = st_shards(&b, shards, &unpublished, &ready);
    st_set(&b, root, "unpublished", st_keep(&b, json_integer(unpublished)));
    st_set(&b, root, "ready", st_keep(&b, json_integer(ready)));
    st_set(&b, root, "shards", shard_list);
    st_set(&b, root, "relays", st_relays(&b, relays));
    st_set(&b, root, "dead_letters", st_dead_letters(&b, by_consumer, oldest));
    st_set(&b, root, "wal", st_wal(&b, wal));
    if (!b.oom)
        st_set(&b, root, "verdict", st_verdict(&b, root, max_lag_s));
    if (b.oom) {
        fprintf(stderr, "ferry-relay status: out of memory\n");
        json_decref(root);
        root = NULL;
    }

out:
    PQclear(wal);
    PQclear(has_wal);
    PQclear(relays);
    PQclear(oldest);
    PQclear(by_consumer);
    PQclear(shards);
    PQclear(clock);
    PQclear(schema);
    PQclear(begin);
    return root;
}

/* ------------------------------------------------------------------ */
/* Tables for people                                                   */

typedef struct st_table {
    int ncols;
    const char *const *heads;
    unsigned right;          /* bit i: column i is right-aligned (numbers) */
    char **cells;            /* nrows * ncols, malloc'd */
    size_t nrows, cap;
    bool oom;
} st_table;

/* Display width of UTF-8 text: code points, not bytes. */
static size_t st_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

/* A cell from untrusted text: control characters become '?', and text
 * beyond max code points is cut with "...". NULL text is "-". */
static char *st_cell_text(const char *s, size_t max)
{
    if (s == NULL)
        return strdup("-");
    size_t n = strlen(s);
    /* Keep max code points, or max - 3 and the dots if it is longer. */
    size_t keep = st_width(s) <= max ? max : (max > 3 ? max - 3 : 0);
    char *out = malloc(n + 4);
    if (out == NULL)
        return NULL;
    size_t o = 0, points = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) != 0x80 && points++ == keep) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[o] = '\0';
    return out;
}

/* JSON values as cells. */
static char *st_cell_json(const json_t *v, size_t max)
{
    if (json_is_integer(v))
        return sb_format("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    if (json_is_real(v))
        return sb_format("%.1f", json_real_value(v));
    return st_cell_text(json_string_value(v), max);
}

/* Add a row of t->ncols cells, taking ownership of them (NULL = out of
 * memory, recorded). */
static void st_row(st_table *t, char **cells)
{
    for (int i = 0; i < t->ncols; i++)
        t->oom |= cells[i] == NULL;
    if (!t->oom && t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 32;
        char **grown = realloc(t->cells, cap * (size_t)t->ncols * sizeof *grown);
        if (grown == NULL)
            t->oom = true;
        else {
            t->cells = grown;
            t->cap = cap;
        }
    }
    if (t->oom) {
        for (int i = 0; i < t->ncols; i++)
            free(cells[i]);
        return;
    }
    memcpy(t->cells + t->nrows * (size_t)t->ncols, cells, (size_t)t->ncols * sizeof *cells);
    t->nrows++;
}

/* Columns two blanks apart, each as wide as its widest cell; blanks are
 * written only before text, so no line ends in blanks. */
static void st_table_print(const st_table *t, FILE *out)
{
    size_t width[16] = {0};
    assert(t->ncols <= 16);
    for (int c = 0; c < t->ncols; c++) {
        width[c] = st_width(t->heads[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t w = st_width(t->cells[r * (size_t)t->ncols + (size_t)c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        size_t blanks = 0;
        for (int c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->heads[c] : t->cells[(r - 1) * (size_t)t->ncols + (size_t)c];
            size_t pad = width[c] - st_width(s);
            bool right = t->right & (1u << c);
            if (c > 0)
                blanks += 2;
            if (right)
                blanks += pad;
            if (s[0] != '\0') {
                fprintf(out, "%*s%s", (int)blanks, "", s);
                blanks = 0;
            }
            if (!right)
                blanks += pad;
        }
        fputc('\n', out);
    }
}

static void st_table_free(st_table *t)
{
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* A filled table printed, unless memory ran out while filling it (*oom
 * then set), and freed. */
static void st_table_done(st_table *t, FILE *out, bool *oom)
{
    if (!t->oom)
        st_table_print(t, out);
    *oom |= t->oom;
    st_table_free(t);
}

/* Shard numbers as ranges: [0,1,2,3,7] -> "0-3, 7"; "-" when none. */
static char *st_cell_ranges(const json_t *list)
{
    char buf[256] = "";
    size_t used = 0, n = json_array_size(list);
    for (size_t i = 0; i < n && used < sizeof buf;) {
        json_int_t lo = json_integer_value(json_array_get(list, i)), hi = lo;
        size_t j = i + 1;
        while (j < n && json_integer_value(json_array_get(list, j)) == hi + 1)
            hi = json_integer_value(json_array_get(list, j++));
        int w = hi == lo ? snprintf(buf + used, sizeof buf - used, "%s%" JSON_INTEGER_FORMAT,
                                    i ? ", " : "", lo)
                         : snprintf(buf + used, sizeof buf - used,
                                    "%s%" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT,
                                    i ? ", " : "", lo, hi);
        if (w < 0)
            break;
        used += (size_t)w;
        i = j;
    }
    return strdup(used ? buf : "-");
}

static int st_print_tables(const json_t *root, FILE *out)
{
    bool oom = false;
    const json_t *count = json_object_get(root, "shard_count");
    fprintf(out, "%s\n\n", json_string_value(json_object_get(json_object_get(root, "verdict"),
                                                             "text")));
    fprintf(out, "ferry status at %s (database clock)\n",
            json_string_value(json_object_get(root, "database_time")));
    if (json_is_integer(count))
        fprintf(out, "shards: %" JSON_INTEGER_FORMAT " (ferry.settings.shard_count)\n\n",
                json_integer_value(count));
    else
        fprintf(out, "shards: unknown (ferry.settings has no row)\n\n");
    const json_t *wal = json_object_get(root, "wal");
    if (json_is_object(wal)) {
        const char *mode = json_string_value(json_object_get(wal, "emit_mode"));
        char *slot = st_cell_text(json_string_value(json_object_get(wal, "slot")), ST_CELL_MAX);
        if (!json_is_true(json_object_get(wal, "slot_exists")))
            fprintf(out, "emit mode: %s; replication slot \"%s\": missing\n\n",
                    mode ? mode : "-", slot ? slot : "-");
        else
            fprintf(out, "emit mode: %s; replication slot \"%s\": %s, wal_status %s, retains "
                    "%" JSON_INTEGER_FORMAT " bytes of WAL, confirmed %" JSON_INTEGER_FORMAT
                    " bytes behind\n\n", mode ? mode : "-", slot ? slot : "-",
                    json_is_true(json_object_get(wal, "active")) ? "active" : "inactive",
                    json_string_value(json_object_get(wal, "wal_status"))
                        ? json_string_value(json_object_get(wal, "wal_status")) : "-",
                    json_integer_value(json_object_get(wal, "retained_bytes")),
                    json_integer_value(json_object_get(wal, "confirmed_lag_bytes")));
        free(slot);
    }

    size_t i;
    json_t *s;
    const json_t *relays = json_object_get(root, "relays");
    if (json_array_size(relays) == 0) {
        fprintf(out, "relays: none (no relay:NAME heartbeat lease is held)\n\n");
    } else {
        fprintf(out, "relays: %" JSON_INTEGER_FORMAT " live\n",
                json_integer_value(json_object_get(json_object_get(root, "verdict"),
                                                   "live_relays")));
        static const char *const relay_heads[] = {"RELAY", "LIVE", "HEARTBEAT_AGE_S",
                                                  "EXPIRES_IN_S", "SHARDS"};
        st_table tr = {.ncols = 5, .heads = relay_heads, .right = 0x4 | 0x8};
        json_array_foreach(relays, i, s) {
            bool live = json_is_true(json_object_get(s, "live"));
            char *cells[5] = {
                st_cell_json(json_object_get(s, "holder"), ST_CELL_MAX),
                strdup(live ? "yes" : "no"),
                st_cell_json(json_object_get(s, "heartbeat_age_s"), ST_CELL_MAX),
                live ? st_cell_json(json_object_get(s, "expires_in_s"), ST_CELL_MAX)
                     : strdup("-"),
                st_cell_ranges(json_object_get(s, "shards")),
            };
            st_row(&tr, cells);
        }
        st_table_done(&tr, out, &oom);
        fputc('\n', out);
    }

    /* Only the shards with unpublished rows: sixteen rows of zeros tell an
     * operator nothing. --json has every shard. */
    static const char *const shard_heads[] = {"SHARD", "UNPUBLISHED", "READY", "OLDEST_READY_S",
                                              "OLDEST_AGE_S", "LEASE", "HOLDER", "EPOCH",
                                              "EXPIRES_IN_S"};
    st_table t = {.ncols = 9, .heads = shard_heads,
                  .right = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80 | 0x100};
    json_array_foreach(json_object_get(root, "shards"), i, s) {
        if (json_integer_value(json_object_get(s, "unpublished")) == 0)
            continue;
        const json_t *l = json_object_get(s, "lease");
        /* An expired or released lease's expiry is history, not a countdown. */
        bool held = strcmp(json_string_value(json_object_get(l, "state")) ?: "", "held") == 0;
        char *cells[9] = {
            st_cell_json(json_object_get(s, "shard"), ST_CELL_MAX),
            st_cell_json(json_object_get(s, "unpublished"), ST_CELL_MAX),
            st_cell_json(json_object_get(s, "ready"), ST_CELL_MAX),
            st_cell_json(json_object_get(s, "oldest_ready_age_s"), ST_CELL_MAX),
            st_cell_json(json_object_get(s, "oldest_age_s"), ST_CELL_MAX),
            st_cell_json(json_object_get(l, "state"), ST_CELL_MAX),
            st_cell_json(json_object_get(l, "holder"), ST_CELL_MAX),
            st_cell_json(json_object_get(l, "epoch"), ST_CELL_MAX),
            held ? st_cell_json(json_object_get(l, "expires_in_s"), ST_CELL_MAX) : strdup("-"),
        };
        st_row(&t, cells);
    }
    if (t.nrows == 0 && !t.oom) {
        fprintf(out, "unpublished rows: none\n");
    } else {
        char *total[9] = {strdup("total"),
                          st_cell_json(json_object_get(root, "unpublished"), ST_CELL_MAX),
                          st_cell_json(json_object_get(root, "ready"), ST_CELL_MAX),
                          strdup(""), strdup(""), strdup(""), strdup(""), strdup(""), strdup("")};
        st_row(&t, total);
        if (!t.oom)
            st_table_print(&t, out);
    }
    oom |= t.oom;
    st_table_free(&t);

    const json_t *dl = json_object_get(root, "dead_letters");
    json_int_t dl_total = json_integer_value(json_object_get(dl, "total"));
    fprintf(out, "\ndead letters: %" JSON_INTEGER_FORMAT "\n", dl_total);
    if (dl_total > 0) {
        static const char *const count_heads[] = {"CONSUMER", "COUNT"};
        st_table tc = {.ncols = 2, .heads = count_heads, .right = 0x2};
        json_t *c;
        json_array_foreach(json_object_get(dl, "by_consumer"), i, c) {
            const char *name = json_string_value(json_object_get(c, "consumer"));
            char *cells[2] = {name && name[0] ? st_cell_text(name, ST_CELL_MAX)
                                              : strdup("(relay)"),
                              st_cell_json(json_object_get(c, "count"), ST_CELL_MAX)};
            st_row(&tc, cells);
        }
        st_table_done(&tc, out, &oom);

        const json_t *list = json_object_get(dl, "oldest");
        fprintf(out, "\noldest %zu:\n", json_array_size(list));
        static const char *const dl_heads[] = {"FAILED_AT", "MESSAGE_ID", "CONSUMER", "TOPIC",
                                               "KEY",       "ATTEMPTS",   "REASON"};
        st_table td = {.ncols = 7, .heads = dl_heads, .right = 0x20};
        json_t *d;
        json_array_foreach(list, i, d) {
            const char *name = json_string_value(json_object_get(d, "consumer"));
            char *cells[7] = {
                st_cell_json(json_object_get(d, "failed_at"), ST_CELL_MAX),
                st_cell_json(json_object_get(d, "message_id"), ST_CELL_MAX),
                name && name[0] ? st_cell_text(name, ST_CELL_MAX) : strdup("(relay)"),
                st_cell_json(json_object_get(d, "topic"), ST_CELL_MAX),
                st_cell_json(json_object_get(d, "key"), ST_CELL_MAX),
                st_cell_json(json_object_get(d, "attempts"), ST_CELL_MAX),
                st_cell_json(json_object_get(d, "reason"), ST_REASON_MAX),
            };
            st_row(&td, cells);
        }
        st_table_done(&td, out, &oom);
    }
    if (oom) {
        fprintf(stderr, "ferry-relay status: out of memory\n");
        return ST_EXIT_FAIL;
    }
    return 0;
}

/* ------------------------------------------------------------------ */

/* status's own options: --json and --max-lag. */
typedef struct st_options {
    bool as_json;
    double max_lag_s;
} st_options;

static int st_option(int c, const char *arg, void *ctx)
{
    st_options *o = ctx;
    char *end;
    if (c == 'j') {
        o->as_json = true;
        return 0;
    }
    assert(c == 'm');
    o->max_lag_s = strtod(arg, &end);
    if (end == arg || *end != '\0' || !(o->max_lag_s >= 0 && o->max_lag_s <= 86400)) {
        fprintf(stderr, "ferry-relay status: --max-lag wants seconds, 0..86400, not \"%s\"\n",
                arg);
        return -1;
    }
    return 0;
}

int cmd_status(int argc, char **argv)
{
    static const struct option own[] = {
        {"json", no_argument, NULL, 'j'},
        {"max-lag", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    st_options o = {.as_json = false, .max_lag_s = 60};
    const relay_cli_db_cmd cmd = {
        .name = "status",
        .shortopts = "+d:jh",
        .own = own,
        .own_option = st_option,
        .ctx = &o,
        .usage = st_usage,
        .unexpected_usage = st_usage,
        .app_name = "ferry-relay status",
    };
    PGconn *conn;
    int early;
    if (relay_cli_db_command(&cmd, argc, argv, NULL, &conn, &early) != 0)
        return early;   /* 0 after --help, 2 a usage error, 1 (ST_EXIT_FAIL) no connection */
    bool no_schema;
    json_t *root = st_collect(conn, o.max_lag_s, &no_schema);
    PQfinish(conn);
    if (no_schema) {
        fprintf(stderr, "ferry-relay status: ferry schema not found: run ferry-relay migrate\n");
        return ST_EXIT_FAIL;
    }
    if (root == NULL)
        return ST_EXIT_FAIL;

    int status = 0;
    if (o.as_json) {
        /* Ages are rounded to milliseconds in SQL; 15 significant digits
         * print them without binary noise. */
        if (json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                         JSON_REAL_PRECISION(15)) != 0 ||
            fputc('\n', stdout) == EOF) {
            fprintf(stderr, "ferry-relay status: could not write the output\n");
            status = ST_EXIT_FAIL;
        }
    } else {
        status = st_print_tables(root, stdout);
    }
    if (status == 0 && !json_is_true(json_object_get(json_object_get(root, "verdict"), "ok")))
        status = ST_EXIT_PROBLEM;
    json_decref(root);
    if (fflush(stdout) != 0 && status == 0) {
        fprintf(stderr, "ferry-relay status: could not write the output\n");
        status = ST_EXIT_FAIL;
    }
    return status;
}
