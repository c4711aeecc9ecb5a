/*
 * lease.h — the lease protocol of ferry's programs (common/lease.c): the
 * relay's shard and heartbeat leases, the reconciler's lease, and the
 * session names by which the reconciler tells a live holder from a dead
 * one. The programs link it (libcommon.a); libferry, which services link,
 * does not hold it.
 */
#ifndef FERRY_LEASE_H
#define FERRY_LEASE_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* "<program> <name>", cut to the 63 bytes the server keeps, before a
 * character rather than inside one (the server refuses invalid UTF-8):
 * the application_name of a session (a connection parameter, which
 * PQreset keeps, or set by the next function). */
void ferry__application_name(char out[64], const char *program, const char *name);
/* Name this session so in pg_stat_activity. The relay's name is how
 * ferry-reconcile tells a live lease holder from a dead one. */
ferry_code ferry__set_application_name(PGconn *conn, const char *program, const char *name,
                                      ferry_error *err);

/*
 * Leases (ferry.lease), always judged by the database clock. A lease is
 * held by holder until expires_at; every change of holder raises epoch,
 * the fencing token that acknowledgements check in the same statement.
 */
typedef struct ferry__lease {
    char name[64];
    int64_t epoch;
} ferry__lease;

/* Make sure rows exist for every name (no-op for existing ones). */
ferry_code ferry__lease_ensure(PGconn *conn, const char *const *names, size_t n,
                              ferry_error *err);
/* Take up to max free or expired leases whose name starts with prefix;
 * out (room for max) gets the ones taken, *n_out how many. */
ferry_code ferry__lease_acquire(PGconn *conn, const char *prefix, const char *holder,
                               int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                               ferry_error *err);
/* Extend every unexpired lease of holder under prefix; out (room for max)
 * gets those still held — any other one this holder thought it had is
 * lost. */
ferry_code ferry__lease_renew(PGconn *conn, const char *prefix, const char *holder,
                             int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                             ferry_error *err);
/* Take back, under a new epoch, unexpired leases that a previous
 * incarnation of this holder (same name, e.g. a restarted pod) still has:
 * its late acknowledgements are then refused like anyone else's. */
ferry_code ferry__lease_reclaim(PGconn *conn, const char *prefix, const char *holder,
                               int ttl_ms, size_t max, ferry__lease *out, size_t *n_out,
                               ferry_error *err);
/* Give a lease up at once (so another holder need not wait for the TTL). */
ferry_code ferry__lease_release(PGconn *conn, const char *name, const char *holder,
                               ferry_error *err);
/* Take or extend a named lease for holder whatever its state when it is
 * free, expired or already ours (used for heartbeats); *epoch_out set. */
ferry_code ferry__lease_heartbeat(PGconn *conn, const char *name, const char *holder,
                                 int ttl_ms, int64_t *epoch_out, ferry_error *err);
/* Extend the lease name for holder under the epoch it holds it by, even
 * if it ran out meanwhile (nobody took it then: a takeover raises the
 * epoch); FERRY_ESTATE when it is no longer so held. what names it in
 * messages ("the reconciler's lease"). */
ferry_code ferry__lease_extend(PGconn *conn, const char *name, const char *holder, int64_t epoch,
                              int ttl_ms, const char *what, ferry_error *err);
/* Unexpired leases under prefix. */
ferry_code ferry__lease_count_live(PGconn *conn, const char *prefix, int *count_out,
                                  ferry_error *err);

#endif /* FERRY_LEASE_H */
