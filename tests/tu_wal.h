/*
 * tu_wal.h — what the WAL-source tests share (tests/test_wal*.c): the
 * slot, emit mode, and reading the 'ferry' logical messages a slot holds
 * without consuming them, through SQL (pg_logical_slot_peek_binary_changes
 * with pgoutput, the plugin the relay streams with).
 */
#ifndef FERRY_TU_WAL_H
#define FERRY_TU_WAL_H

#include <libpq-fe.h>

/* Create the slot "ferry" (pgoutput) if it is missing, skip it to the end
 * of WAL (nothing from earlier tests left in it), and create
 * tu_wal_msgs(): rows (ord, lsn, xid, token, id, seq, created_us, topic,
 * key, aggtype, type, headers, payload) of the slot's 'ferry' messages,
 * in stream (commit) order, peeked, not consumed. */
void tu_wal_prepare(PGconn *c);
/* UPDATE ferry.settings SET emit_mode = mode. */
void tu_wal_mode(PGconn *c, const char *mode);

#endif
