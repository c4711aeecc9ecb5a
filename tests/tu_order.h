/*
 * tu_order.h — the commit-order fixture that the outbox (test_order.c)
 * and the WAL path (test_wal_emit.c) both run: the positions must follow
 * the commits, whichever way the messages travel.
 */
#ifndef FERRY_TU_ORDER_H
#define FERRY_TU_ORDER_H

#include <libpq-fe.h>

/* ferry_emit of one message of key (topic "ledger", type "Posted") in c's
 * open transaction, or on its own; fails the test on error. */
void tu_emit_ledger(PGconn *c, const char *key, const char *payload);

/* n connections (into c[0..n)) begin and write to a new table biz in the
 * order 0..n-1, then each emits {"tx": i} for key acct-7 just before its
 * COMMIT, in the order n-1..0. tu_reverse_commits_done closes them and
 * drops biz. */
void tu_reverse_commits(PGconn *admin, PGconn **c, int n);
void tu_reverse_commits_done(PGconn *admin, PGconn **c, int n);

#endif
