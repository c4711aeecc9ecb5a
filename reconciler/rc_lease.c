/*
 * rc_lease.c — the reconciler's lease (rc_lease.h). pass.c takes and
 * releases it; rc_tx.c renews it before each repair transaction and
 * fences the transaction with it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "lease.h"
#include "rc_lease.h"

/* (The lease functions take a name prefix; no other lease name starts
 * with "reconciler".) */
int rc_lease_try(PGconn *conn, rc_lease *l, const char *holder, int ttl_ms, ferry_error *err)
{
    const char *names[1] = {RC_LEASE_NAME};
    if (ferry__lease_ensure(conn, names, 1, err) != FERRY_OK)
        return -1;
    ferry__lease got;
    size_t n = 0;
    if (ferry__lease_acquire(conn, RC_LEASE_NAME, holder, ttl_ms, 1, &got, &n, err) != FERRY_OK)
        return -1;
    if (n == 0)
        return 0;
    *l = (rc_lease){.holder = holder, .ttl_ms = ttl_ms, .epoch = got.epoch,
                    .renewed_at = ferry__now_ms()};
    return 1;
}

bool rc_lease_due(const rc_lease *l, int64_t now_ms)
{
    return now_ms - l->renewed_at >= l->ttl_ms / 3;
}

ferry_code rc_lease_keep(PGconn *conn, rc_lease *l, ferry_error *err)
{
    ferry__err_clear(err);
    if (!rc_lease_due(l, ferry__now_ms()))
        return FERRY_OK;
    /* Extended under the same holder and epoch, even if it ran out
     * meanwhile (a long detect query). */
    ferry_code rc = ferry__lease_extend(conn, RC_LEASE_NAME, l->holder, l->epoch, l->ttl_ms,
                                        "the reconciler's lease", err);
    if (rc == FERRY_ESTATE)   /* who took it, for the operator */
        ferry__error_set(err, FERRY_ESTATE, NULL, "the reconciler's lease was lost "
                         "(epoch %" PRId64 "): another reconciler took it over", l->epoch);
    if (rc == FERRY_OK)
        l->renewed_at = ferry__now_ms();
    return rc;
}

void rc_lease_holder(PGconn *conn, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    const char *p[1] = {RC_LEASE_NAME};
    PGresult *res = PQexecParams(conn, "SELECT holder || ' (until ' || "
                                 "to_char(expires_at, 'HH24:MI:SS') || ')' FROM ferry.lease "
                                 "WHERE name = $1 AND expires_at > now()",
                                 1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(buf, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

void rc_lease_release(PGconn *conn, const rc_lease *l)
{
    ferry_error err;
    ferry__lease_release(conn, RC_LEASE_NAME, l->holder, &err);
}
