/*
 * rc_lease.h — the reconciler's lease: one active reconciler per
 * database, through the row "reconciler" of ferry.lease (common/lease.c's
 * protocol, judged by the database clock). Who holds it and under which
 * epoch is the state of its holder, passed in: no file-global.
 */
#ifndef FERRY_RECONCILE_LEASE_H
#define FERRY_RECONCILE_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"

#define RC_LEASE_NAME "reconciler"

typedef struct rc_lease {
    const char *holder;         /* borrowed; our name in the lease */
    int ttl_ms;
    int64_t epoch;              /* the fencing token we hold it under */
    int64_t renewed_at;         /* monotonic ms of the last take or renewal */
} rc_lease;

/* Take the lease if it is free or expired: 1 taken (*l filled), 0 held by
 * another, -1 error (err). */
int rc_lease_try(PGconn *conn, rc_lease *l, const char *holder, int ttl_ms, ferry_error *err);

/* Whether a renewal is due at now_ms: a third of the TTL since the last. */
bool rc_lease_due(const rc_lease *l, int64_t now_ms);

/* Renew the lease when due; FERRY_ESTATE when it was lost (another
 * reconciler took it over), FERRY_OK when not due. */
ferry_code rc_lease_keep(PGconn *conn, rc_lease *l, ferry_error *err);

/* Who holds it now, "holder (until HH:MM:SS)", or "?": for messages. */
void rc_lease_holder(PGconn *conn, char *buf, size_t len);

/* Give it up at once, so that a standby need not wait for the TTL. */
void rc_lease_release(PGconn *conn, const rc_lease *l);

#endif
