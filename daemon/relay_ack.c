/*
 * relay_ack.c — the acknowledgement: delete (or mark) delivered rows, in
 * one statement that also checks, under FOR SHARE, that each row's shard
 * lease and the epoch it was produced under still hold; a lost lease's
 * acknowledgements are refused. It runs on the second session and the
 * loop does not wait for it: deleting one batch overlaps with fetching and
 * producing the next. One is in flight at a time; what is delivered
 * meanwhile goes with the next (relay_sched.c decides when).
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "relay_int.h"

/* The lease rows are read FOR SHARE in the same statement: a takeover that
 * committed first is seen (its epoch differs) and the rows of that shard
 * are left alone; a takeover in progress waits for this statement to
 * commit. The rows are found through the primary key (id = ANY
 * (ARRAY(...))), whatever the planner believes about the arrays' sizes.
 * Returns (rows changed, acknowledgements refused). */
#define ACK_STATEMENT "ferry_relay_ack"
#define ACK_SQL(change)                                                                    \
    "WITH l AS (SELECT substr(name, 7)::int AS shard, epoch FROM ferry.lease "             \
    "           WHERE name = ANY ($4::text[]) AND holder = $5 AND expires_at > now() "     \
    "           FOR SHARE), "                                                             \
    "ok AS (SELECT a.id FROM unnest($1::uuid[], $2::int[], $3::bigint[]) "                 \
    "       AS a(id, shard, epoch) JOIN l ON l.shard = a.shard AND l.epoch = a.epoch), "   \
    "d AS (" change ") "                                                                   \
    "SELECT (SELECT count(*) FROM d), cardinality($1::uuid[]) - (SELECT count(*) FROM ok)"
_Static_assert(sizeof SHARD_PREFIX == 7, "substr(name, 7) skips the lease names' prefix");

int relay_ack_prepare(relay *r)
{
    static const Oid types[5] = {2951 /* uuid[] */, 1007 /* int4[] */, 1016 /* int8[] */,
                                 1009 /* text[] */, 25 /* text */};
    const char *sql = r->cfg->retention == RELAY_RETENTION_MARK
        ? ACK_SQL("UPDATE ferry.outbox SET published_at = now() "
                  "WHERE id = ANY (ARRAY(SELECT id FROM ok)) AND published_at IS NULL "
                  "RETURNING 1")
        : ACK_SQL("DELETE FROM ferry.outbox WHERE id = ANY (ARRAY(SELECT id FROM ok)) "
                  "RETURNING 1");
    PGresult *res = PQprepare(r->db.ack, ACK_STATEMENT, sql, 5, types);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? 0 : -1;
}

/*
 * Send one statement acknowledging every queued delivery, without waiting
 * for it; relay_ack_poll() collects the outcome. The ids, shards and epochs
 * go in binary: as text, parsing them took the server about 1.2 ms per
 * 1,000 rows, more than a tenth of the statement.
 */
int relay_ack_send(relay *r)
{
    int n = sched_ack_pending(r->s);
    if (r->ack.sent > 0 || n == 0)
        return 0;
    if (!r->db.ok)
        return -1;
    int rc = -1;
    size_t id_len = ARRAY_HEADER + (size_t)n * (4 + 16);
    size_t shard_len = ARRAY_HEADER + (size_t)n * (4 + 4);
    size_t epoch_len = ARRAY_HEADER + (size_t)n * (4 + 8);
    unsigned char *buf = malloc(id_len + shard_len + epoch_len);
    /* Lease names, each once: at most MAX_SHARDS of "shard:NNNN,". */
    size_t names_cap = 16 + (size_t)MAX_SHARDS * 12;
    char *names = malloc(names_cap);
    if (buf == NULL || names == NULL) {
        ferry__log(FERRY_LOG_ERROR, "ack.oom", "out of memory building acknowledgements");
        goto out;     /* kept: tried again on the next turn of the loop */
    }
    unsigned char *ids = buf, *shards = ids + id_len, *epochs = shards + shard_len;
    unsigned char *pi = relay_put_array_header(ids, 2950 /* uuid */, n);
    unsigned char *ps = relay_put_array_header(shards, 23 /* int4 */, n);
    unsigned char *pe = relay_put_array_header(epochs, 20 /* int8 */, n);
    uint64_t seen[MAX_SHARDS / 64] = {0};
    size_t nl = 0;
    names[nl++] = '{';
    for (int i = 0; i < n; i++) {
        unsigned char id[16];
        int shard;
        int64_t epoch;
        sched_ack_item(r->s, i, id, &shard, &epoch);
        pi = relay_put32(pi, 16);
        memcpy(pi, id, 16);
        pi += 16;
        ps = relay_put32(relay_put32(ps, 4), (uint32_t)shard);
        pe = relay_put64(relay_put32(pe, 8), (uint64_t)epoch);
        if (!(seen[shard / 64] & (UINT64_C(1) << (shard % 64)))) {
            seen[shard / 64] |= UINT64_C(1) << (shard % 64);
            nl += (size_t)snprintf(names + nl, names_cap - nl, "%s" SHARD_PREFIX "%d",
                                   nl > 1 ? "," : "", shard);
        }
    }
    names[nl++] = '}';
    names[nl] = '\0';
    const char *params[5] = {(const char *)ids, (const char *)shards, (const char *)epochs,
                             names, r->holder};
    const int lengths[5] = {(int)id_len, (int)shard_len, (int)epoch_len, 0, 0};
    static const int formats[5] = {1, 1, 1, 0, 0};
    if (!PQsendQueryPrepared(r->db.ack, ACK_STATEMENT, 5, params, lengths, formats, 0)) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.ack, NULL, "could not acknowledge");
        relay_db_lost(r, "acknowledgement", &err);
        goto out;   /* kept: sent again once the database is back */
    }
    r->ack.sent = n;
    r->ack.flushing = 1;
    r->ack.sent_ms = ferry__now_ms();
    sched_ack_sent(r->s, n, r->ack.sent_ms);
    rc = 0;
out:
    free(buf);
    free(names);
    return rc;
}

/* The statement in flight is over: forget what it covered, or, when it
 * failed, keep everything for the next. */
static void ack_done(relay *r, PGresult *res)
{
    int64_t now = ferry__now_ms();
    r->ack.sent = 0;
    r->ack.flushing = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_error err;
        ferry_error_from_pg(&err, r->db.ack, res, "could not acknowledge");
        sched_ack_done(r->s, 0, now);
        relay_db_lost(r, "acknowledgement", &err);
        return;
    }
    long done = atol(PQgetvalue(res, 0, 0));
    long refused = atol(PQgetvalue(res, 0, 1));
    relay_count(r, M_ACKED, (uint64_t)done);
    if (refused > 0) {
        relay_count(r, M_ACK_REFUSED, (uint64_t)refused);
        r->refused += (uint64_t)refused;
        ferry__log_json(FERRY_LOG_WARN, "ack.refused",
                       json_pack("{s:i}", "refused", (int)refused),
                       "%ld acknowledgements refused: their lease epoch no longer holds "
                       "(the new holder publishes those rows again)", refused);
    }
    if (r->m != NULL)
        metrics_observe(r->m, H_BATCH_SECONDS, (double)(now - r->ack.sent_ms) / 1e3);
    sched_ack_done(r->s, 1, now);
}

/* The statement is lost with its session: the scheduler keeps its acks. */
void relay_ack_forget(relay *r)
{
    if (r->ack.sent > 0)
        sched_ack_done(r->s, 0, ferry__now_ms());
    r->ack.sent = 0;
    r->ack.flushing = 0;
    PQclear(r->ack.res);
    r->ack.res = NULL;
}

/* Push the statement out and collect its result if it has come, without
 * blocking; or, with wait, until it is over (at most a second a try). */
int relay_ack_poll(relay *r, int wait)
{
    ferry_error err;
    int tries = 0;
    while (r->ack.sent > 0) {
        if (r->ack.flushing) {
            int rc = PQflush(r->db.ack);
            if (rc < 0)
                goto lost;
            r->ack.flushing = rc;
        }
        if (!PQconsumeInput(r->db.ack))
            goto lost;
        if (PQisBusy(r->db.ack)) {
            if (!wait || tries++ >= 60)
                return 0;   /* still in flight: collected on a later call */
            struct pollfd pfd = {.fd = PQsocket(r->db.ack),
                                 .events = POLLIN | (r->ack.flushing ? POLLOUT : 0)};
            poll(&pfd, 1, 1000);
            continue;
        }
        PGresult *res = PQgetResult(r->db.ack);
        if (res != NULL) {
            /* Keep the statement's one result until its end (NULL). */
            if (r->ack.res == NULL)
                r->ack.res = res;
            else
                PQclear(res);
            continue;
        }
        if (r->ack.res == NULL)
            goto lost;      /* an end without a result: not from this server */
        PGresult *done = r->ack.res;
        r->ack.res = NULL;
        ack_done(r, done);
        PQclear(done);
    }
    return 0;
lost:
    ferry_error_from_pg(&err, r->db.ack, NULL, "could not acknowledge");
    relay_ack_forget(r);
    relay_db_lost(r, "acknowledgement", &err);
    return -1;
}
