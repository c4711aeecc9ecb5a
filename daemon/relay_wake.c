/*
 * relay_wake.c — wake-ups: whether writers NOTIFY, per shard, and the
 * handshake that makes turning them on lose no commit.
 *
 * Emit sends a NOTIFY unless its key's shard is busy: PostgreSQL
 * serializes the commits of every notifying transaction of a database on
 * one lock held through the commit's WAL flush, and a relay busy enough to
 * look again by itself needs no wake-up. The scheduler decides
 * (relay_sched.c): off once rows arrive at BUSY_RATE or more, on again
 * once they slow below IDLE_RATE. "Off" is a session lock per shard this relay serves,
 * ferry.wake_shard_lock(shard), held exclusively; emit tries it shared and
 * notifies when it gets it (schemas/026_wake_per_shard.sql). A lock, not a
 * flag in a table: a writer under REPEATABLE READ read the flag of its
 * snapshot, and one flag for the database was whichever relay set it
 * last, so an idle relay beside a busy one waited for its poll.
 *
 * Turning wake-ups on must lose no commit: a writer that found its shard
 * busy a moment before does not notify, and a relay that looked once more
 * and went to sleep would leave its row for the poll. So every writer
 * holds the wake-up lock (ferry.wake_lock()) shared from before it looks
 * until it ends, and the relay, after letting its busy locks go, takes
 * that lock exclusively (trying, and looking again meanwhile) before it
 * sleeps: every writer that found a shard busy has then ended, and its row
 * was seen by the look that followed. The same try also checks that no
 * other session holds the busy lock of a shard this relay serves (a relay
 * that has not yet learnt it lost the shard): while one does, writers of
 * that shard do not notify, so the relay goes on looking by itself.
 *
 * The busy locks go with the main session: a relay that dies or loses its
 * connection leaves its shards notifying, which costs the writers a little
 * and loses nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_int.h"

/* "{1,2,3}" of the shards for which want(r, shard) holds; returns how
 * many. buf has room for MAX_SHARDS numbers. */
static int shard_array(const relay *r, int (*want)(const relay *, int), char *buf,
                       size_t size)
{
    size_t len = 0;
    int n = 0;
    buf[len++] = '{';
    for (int s = 0; s < r->db.shard_count && s < MAX_SHARDS; s++) {
        if (!want(r, s))
            continue;
        int w = snprintf(buf + len, size - len, "%s%d", n > 0 ? "," : "", s);
        if (w < 0 || (size_t)w >= size - len)
            break;
        len += (size_t)w;
        n++;
    }
    snprintf(buf + len, size - len, "}");
    return n;
}

static int served(const relay *r, int s) { return sched_lease_epoch(r->s, s) > 0; }
static int to_lock(const relay *r, int s) { return served(r, s) && !r->wake.tried[s]; }
static int to_unlock(const relay *r, int s) { return r->wake.locked[s] && !served(r, s); }

#define SHARD_ARRAY_SIZE (MAX_SHARDS * 6 + 4)
/* After a failed wake-up statement, none is tried for this long. */
#define WAKE_RETRY_MS 100

/* A wake-up statement failed on a session that may live on (relay_db_lost
 * keeps a connection that still answers): locks a failed statement took
 * stay with the session, so let every advisory lock of the session go
 * (the relay holds no other), and try no wake-up statement for a while. */
static void wake_failed(relay *r, const char *what, ferry_error *err)
{
    if (PQstatus(r->db.main) == CONNECTION_OK) {
        PGresult *res = PQexec(r->db.main, "SELECT pg_advisory_unlock_all()");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            memset(r->wake.locked, 0, sizeof r->wake.locked);
        PQclear(res);
    }
    r->wake.retry_at = ferry__now_ms() + WAKE_RETRY_MS;
    relay_db_lost(r, what, err);
}

/* Try the busy lock of every shard served and not tried since wake-ups
 * went off; remember which were taken. 0, or -1 (wake_failed). */
static int lock_served(relay *r)
{
    char shards[SHARD_ARRAY_SIZE];
    if (shard_array(r, to_lock, shards, sizeof shards) == 0)
        return 0;
    for (int s = 0; s < r->db.shard_count && s < MAX_SHARDS; s++)
        r->wake.tried[s] |= served(r, s);
    const char *params[1] = {shards};
    PGresult *res = PQexecParams(r->db.main,
                                 "SELECT s FROM unnest($1::integer[]) s, ferry.wake_shard_lock(s) l "
                                 "WHERE pg_try_advisory_lock(l.classid, l.objid)",
                                 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.main, res, "could not take the shards' busy locks");
        PQclear(res);
        wake_failed(r, "wake-ups", &err);
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        int s = atoi(PQgetvalue(res, i, 0));
        if (s >= 0 && s < MAX_SHARDS)
            r->wake.locked[s] = 1;
    }
    PQclear(res);
    return 0;
}

/* Let go of the busy locks of the shards in the array literal shards.
 * 0, or -1 (wake_failed). */
static int unlock_shards(relay *r, const char *shards)
{
    const char *params[1] = {shards};
    ferry_error err;
    if (ferry__exec(r->db.main,
                    "SELECT pg_advisory_unlock(l.classid, l.objid) "
                    "FROM unnest($1::integer[]) s, ferry.wake_shard_lock(s) l",
                    1, params, "could not let the shards' busy locks go", &err) != FERRY_OK) {
        wake_failed(r, "wake-ups", &err);
        return -1;
    }
    return 0;
}

/* Let go of the busy locks of the shards for which which(r, shard) holds.
 * 0, or -1 (wake_failed). */
static int unlock(relay *r, int (*which)(const relay *, int))
{
    char shards[SHARD_ARRAY_SIZE];
    if (shard_array(r, which, shards, sizeof shards) == 0)
        return 0;
    if (unlock_shards(r, shards) != 0)
        return -1;
    for (int s = 0; s < r->db.shard_count && s < MAX_SHARDS; s++)
        if (which(r, s))
            r->wake.locked[s] = 0;
    return 0;
}

/* Let go of every busy lock: all of the session's advisory locks (it
 * holds no other), so that none is kept that locked[] lost track of (a
 * failed statement's, whose own unlock_all failed too): a lock held by
 * the relay's own session is invisible to its handshake. 0, or -1
 * (wake_failed). */
static int unlock_all(relay *r)
{
    ferry_error err;
    if (ferry__exec(r->db.main, "SELECT pg_advisory_unlock_all()", 0, NULL,
                    "could not let the shards' busy locks go", &err) != FERRY_OK) {
        wake_failed(r, "wake-ups", &err);
        return -1;
    }
    memset(r->wake.locked, 0, sizeof r->wake.locked);
    return 0;
}

void relay_wake_set(relay *r, int on)
{
    if (ferry__now_ms() < r->wake.retry_at)
        return;                 /* as it is: the scheduler asks again */
    if (on) {
        /* Still busy as far as writers can tell if this fails: the
         * scheduler keeps looking by itself and asks again. */
        if (unlock_all(r) != 0)
            return;
        memset(r->wake.tried, 0, sizeof r->wake.tried);
    } else {
        /* Busy even where a lock was not taken: its writers notify,
         * which costs them a little and loses nothing. */
        lock_served(r);
    }
    r->wake.off = !on;
    sched_wake_set(r->s, on);
}

void relay_wake_sync(relay *r)
{
    if (!r->db.ok || ferry__now_ms() < r->wake.retry_at)
        return;
    /* A shard no longer served: its new holder may want wake-ups. */
    if (unlock(r, to_unlock) != 0)
        return;
    for (int s = 0; s < r->db.shard_count && s < MAX_SHARDS; s++)
        if (!served(r, s))
            r->wake.tried[s] = 0;
    /* A shard gained while busy: its writers need not notify either. */
    if (r->wake.off)
        lock_served(r);
}

void relay_wake_drop(relay *r, int shard)
{
    if (shard < 0 || shard >= MAX_SHARDS || !r->wake.locked[shard] || !r->db.ok)
        return;
    char arg[16];
    snprintf(arg, sizeof arg, "{%d}", shard);
    if (unlock_shards(r, arg) == 0)
        r->wake.locked[shard] = 0;
}

void relay_wake_drop_all(relay *r)
{
    if (r->db.ok && unlock_all(r) == 0)
        r->wake.off = 0;
}

void relay_wake_recheck(relay *r)
{
    if (!r->wake.off && r->db.ok && !r->cfg->once)
        sched_wake_set(r->s, 1);
}

void relay_wake_forget(relay *r)
{
    memset(r->wake.locked, 0, sizeof r->wake.locked);
    memset(r->wake.tried, 0, sizeof r->wake.tried);
    r->wake.off = 0;
    r->wake.retry_at = 0;
}

int relay_wake_handshake(relay *r)
{
    char shards[SHARD_ARRAY_SIZE];
    shard_array(r, served, shards, sizeof shards);
    const char *params[1] = {shards};
    /* In this order (CASE evaluates its branches in turn): first that no
     * other session holds the busy lock of a shard served, then the
     * wake-up lock. A writer that found such a shard busy took the
     * wake-up lock before that session let the shard go, so it is seen
     * by the second try; the other way round, one could find the shard
     * busy between the two tries and be missed. */
    PGresult *res = PQexecParams(
        r->db.main,
        "SELECT CASE WHEN EXISTS (SELECT FROM unnest($1::integer[]) s, ferry.wake_shard_lock(s) l "
        "                          WHERE NOT CASE WHEN pg_try_advisory_lock_shared(l.classid, l.objid) "
        "                                         THEN pg_advisory_unlock_shared(l.classid, l.objid) "
        "                                         ELSE false END) THEN 'foreign' "
        "            WHEN CASE WHEN pg_try_advisory_lock(w.classid, w.objid) "
        "                      THEN pg_advisory_unlock(w.classid, w.objid) ELSE false END "
        "            THEN 'got' ELSE 'writer' END "
        "FROM ferry.wake_lock() w",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.main, res, "could not take the wake-up lock");
        PQclear(res);
        /* Not got: the scheduler looks meanwhile and tries again later.
         * The wake-up lock may be held if the statement failed between
         * its try and its unlock: wake_failed lets it go. */
        sched_handshake(r->s, 0, ferry__now_ms());
        wake_failed(r, "wake-up handshake", &err);
        return -1;
    }
    const char *v = PQgetvalue(res, 0, 0);
    int got = strcmp(v, "got") == 0, foreign = strcmp(v, "foreign") == 0;
    PQclear(res);
    /* Told once each way, not at every try. */
    if (foreign && !r->wake.foreign_told) {
        r->wake.foreign_told = 1;
        ferry__log(FERRY_LOG_WARN, "wake.foreign_lock",
                   "another session holds the busy lock of a shard this relay serves (a relay "
                   "stopped while busy?): its writers do not notify, so this relay looks by "
                   "itself until the lock goes");
    } else if (got && r->wake.foreign_told) {
        r->wake.foreign_told = 0;
        ferry__log(FERRY_LOG_INFO, "wake.foreign_lock_gone",
                   "no other session holds a busy lock of this relay's shards: wake-ups again");
    }
    sched_handshake(r->s, got, ferry__now_ms());
    return 0;
}
