/*
 * lease.c — leases in ferry.lease, judged by the database clock.
 *
 * Every time comparison happens in SQL against now(), never against the
 * caller's clock, so relays on hosts whose clocks disagree still agree on
 * who holds what. A takeover raises epoch; acknowledgements name the epoch
 * they were fetched under and are refused once it moved (see
 * daemon/relay.c). And the session name (application_name) a program
 * runs under, by which ferry-reconcile tells a live holder from a dead one.
 *
 * Shared by the two programs (common/), not part of libferry.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"

static ferry_code leases_from(PGresult *res, size_t max, ferry__lease *out, size_t *n_out)
{
    size_t n = 0;
    for (int r = 0; r < PQntuples(res) && n < max; r++, n++) {
        snprintf(out[n].name, sizeof out[n].name, "%s", PQgetvalue(res, r, 0));
        out[n].epoch = strtoll(PQgetvalue(res, r, 1), NULL, 10);
    }
    *n_out = n;
    return FERRY_OK;
}

/* A lease under prefix $1 is the prefix itself, or the prefix and a
 * number as the relay writes it (no sign, no leading zero, at most nine
 * digits): a row named otherwise ('shard:-0', 'shard:00'), which a role
 * with INSERT on ferry.lease can add, is nobody's to take or renew. */
#define LEASE_NAMED                                                                        \
    "(name = $1 OR substr(name, length($1) + 1) ~ '^(0|[1-9][0-9]{0,8})$') AND "

/* Run a statement returning (name, epoch) rows. */
static ferry_code lease_query(PGconn *conn, const char *sql, int nparams,
                              const char *const *params, size_t max, ferry__lease *out,
                              size_t *n_out, const char *context, ferry_error *err)
{
    PGresult *res;
    ferry_code rc = ferry__query(conn, sql, nparams, params, context, &res, err);
    if (rc != FERRY_OK)
        return rc;
    rc = leases_from(res, max, out, n_out);
    PQclear(res);
    return rc;
}

ferry_code ferry__lease_ensure(PGconn *conn, const char *const *names, size_t n,
                              ferry_error *err)
{
    /* One array literal: names are ours ("shard:12", "relay:host:pid"),
     * but quoted anyway. */
    ferry__alit names_lit = {0};
    for (size_t i = 0; i < n; i++)
        ferry__alit_str(&names_lit, names[i]);
    const char *arr = ferry__alit_end(&names_lit);
    if (arr == NULL) {
        free(names_lit.p);
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not ensure leases: out of memory");
    }
    const char *params[1] = {arr};
    ferry_code rc = ferry__exec(conn,
                               "INSERT INTO ferry.lease (name) SELECT unnest($1::text[]) "
                               "ON CONFLICT (name) DO NOTHING",
                               1, params, "could not create lease rows", err);
    free(names_lit.p);
    return rc;
}

ferry_code ferry__lease_acquire(PGconn *conn, const char *prefix, const char *holder,
                               int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                               ferry_error *err)
{
    char ttl[24], limit[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    snprintf(limit, sizeof limit, "%zu", max);
    const char *params[4] = {prefix, holder, ttl, limit};
    /* SKIP LOCKED: two relays acquiring at once each get different rows
     * rather than waiting on each other. The free ones are taken in
     * random order so that starting relays do not all contend for the
     * lowest shards. */
    return lease_query(conn,
                       "UPDATE ferry.lease l SET holder = $2, epoch = l.epoch + 1, "
                       "  expires_at = now() + $3::int * interval '1 millisecond', "
                       "  acquired_at = now(), renewed_at = now() "
                       "WHERE l.name IN (SELECT name FROM ferry.lease "
                       "  WHERE starts_with(name, $1) AND " LEASE_NAMED
                       "    (holder IS NULL OR expires_at <= now()) "
                       "  ORDER BY random() LIMIT $4::int FOR UPDATE SKIP LOCKED) "
                       "RETURNING l.name, l.epoch",
                       4, params, max, out, n_out, "could not acquire leases", err);
}

/* Extend holder's unexpired leases under prefix; with bump, under a new
 * epoch (a takeover from an earlier process of the same name). */
static ferry_code extend(PGconn *conn, const char *prefix, const char *holder, int ttl_ms,
                         int bump, size_t max, ferry__lease *out, size_t *n_out,
                         ferry_error *err)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *params[3] = {prefix, holder, ttl};
    return lease_query(conn,
                       bump ? "UPDATE ferry.lease SET epoch = epoch + 1, acquired_at = now(), "
                              "  expires_at = now() + $3::int * interval '1 millisecond', "
                              "  renewed_at = now() "
                              "WHERE starts_with(name, $1) AND " LEASE_NAMED
                              "  holder = $2 AND expires_at > now() "
                              "RETURNING name, epoch"
                            : "UPDATE ferry.lease SET "
                              "  expires_at = now() + $3::int * interval '1 millisecond', "
                              "  renewed_at = now() "
                              "WHERE starts_with(name, $1) AND " LEASE_NAMED
                              "  holder = $2 AND expires_at > now() "
                              "RETURNING name, epoch",
                       3, params, max, out, n_out,
                       bump ? "could not reclaim leases" : "could not renew leases", err);
}

ferry_code ferry__lease_renew(PGconn *conn, const char *prefix, const char *holder,
                             int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                             ferry_error *err)
{
    return extend(conn, prefix, holder, ttl_ms, 0, max, out, n_out, err);
}

ferry_code ferry__lease_reclaim(PGconn *conn, const char *prefix, const char *holder,
                               int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                               ferry_error *err)
{
    return extend(conn, prefix, holder, ttl_ms, 1, max, out, n_out, err);
}

ferry_code ferry__lease_release(PGconn *conn, const char *name, const char *holder,
                               ferry_error *err)
{
    const char *params[2] = {name, holder};
    return ferry__exec(conn,
                      "UPDATE ferry.lease SET holder = NULL, expires_at = now() "
                      "WHERE name = $1 AND holder = $2",
                      2, params, "could not release lease", err);
}

ferry_code ferry__lease_heartbeat(PGconn *conn, const char *name, const char *holder,
                                 int ttl_ms, int64_t *epoch_out, ferry_error *err)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *params[3] = {name, holder, ttl};
    ferry__lease l;
    size_t n = 0;
    ferry_code rc = lease_query(
        conn,
        "INSERT INTO ferry.lease AS l (name, holder, epoch, expires_at, acquired_at, renewed_at) "
        "VALUES ($1, $2, 1, now() + $3::int * interval '1 millisecond', now(), now()) "
        "ON CONFLICT (name) DO UPDATE SET "
        "  epoch = CASE WHEN l.holder IS DISTINCT FROM $2 OR l.expires_at <= now() "
        "               THEN l.epoch + 1 ELSE l.epoch END, "
        "  holder = $2, expires_at = EXCLUDED.expires_at, renewed_at = now(), "
        "  acquired_at = CASE WHEN l.holder IS DISTINCT FROM $2 OR l.expires_at <= now() "
        "                     THEN now() ELSE l.acquired_at END "
        "  WHERE l.holder IS NULL OR l.holder = $2 OR l.expires_at <= now() "
        "RETURNING l.name, l.epoch",
        3, params, 1, &l, &n, "could not renew heartbeat", err);
    if (rc != FERRY_OK)
        return rc;
    if (n == 0)
        return ferry__error_set(err, FERRY_ESTATE, NULL,
                             "lease %s is held by another holder", name);
    if (epoch_out != NULL)
        *epoch_out = l.epoch;
    return FERRY_OK;
}

ferry_code ferry__lease_extend(PGconn *conn, const char *name, const char *holder, int64_t epoch,
                              int ttl_ms, const char *what, ferry_error *err)
{
    char epoch_text[24], ttl[24], context[96];
    snprintf(context, sizeof context, "could not renew %s", what);
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, epoch);
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *params[4] = {name, holder, epoch_text, ttl};
    ferry__lease kept;
    size_t n = 0;
    ferry_code rc = lease_query(conn,
                                "UPDATE ferry.lease SET renewed_at = now(), "
                                "  expires_at = now() + $4::int * interval '1 millisecond' "
                                "WHERE name = $1 AND holder = $2 AND epoch = $3::bigint "
                                "RETURNING name, epoch",
                                4, params, 1, &kept, &n, context, err);
    if (rc == FERRY_OK && n == 0)
        rc = ferry__error_set(err, FERRY_ESTATE, NULL, "%s was lost (epoch %" PRId64 ")", what,
                              epoch);
    return rc;
}

ferry_code ferry__lease_count_live(PGconn *conn, const char *prefix, int *count_out,
                                  ferry_error *err)
{
    const char *params[1] = {prefix};
    PGresult *res;
    ferry_code rc = ferry__query(conn,
                                 "SELECT count(*) FROM ferry.lease "
                                 "WHERE starts_with(name, $1) AND holder IS NOT NULL "
                                 "AND expires_at > now()",
                                 1, params, "could not count live leases", &res, err);
    if (rc != FERRY_OK)
        return rc;
    if (count_out != NULL)
        *count_out = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return FERRY_OK;
}

void ferry__application_name(char out[64], const char *program, const char *name)
{
    /* Cut after the whole text is there: the byte the cut drops says
     * whether it falls inside a character (a continuation byte). */
    size_t plen = strlen(program), nlen = strlen(name), len = plen + 1 + nlen;
    char full[64 + 4];
    snprintf(full, sizeof full, "%s %s", program, name);
    if (len > 63) {
        len = 63;
        while (len > 0 && ((unsigned char)full[len] & 0xC0) == 0x80)
            len--;
    }
    memcpy(out, full, len);
    out[len] = '\0';
}

ferry_code ferry__set_application_name(PGconn *conn, const char *program, const char *name,
                                      ferry_error *err)
{
    char text[64];
    ferry__application_name(text, program, name);
    const char *p[1] = {text};
    return ferry__exec(conn, "SELECT set_config('application_name', $1, false)", 1, p,
                      "could not set application_name", err);
}
