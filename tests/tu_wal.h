/*
 * tu_wal.h — what the WAL-source tests share (tests/test_wal*.c): the
 * slot, emit mode, and reading the 'ferry' logical messages a slot holds
 * without consuming them, through SQL (pg_logical_slot_peek_binary_changes
 * with pgoutput, the plugin the relay streams with).
 */
#ifndef FERRY_TU_WAL_H
#define FERRY_TU_WAL_H

#include <stddef.h>

#include <libpq-fe.h>

#include "harness/kafkatmp.h"
#include "tu_proc.h"
#include "tu_relay.h"

/* Create the slot "ferry" (pgoutput) if it is missing, skip it to the end
 * of WAL (nothing from earlier tests left in it), and create
 * tu_wal_msgs(): rows (ord, lsn, xid, token, id, seq, created_us, topic,
 * key, aggtype, type, headers, payload) of the slot's 'ferry' messages,
 * in stream (commit) order, peeked, not consumed. */
void tu_wal_prepare(PGconn *c);
/* UPDATE ferry.settings SET emit_mode = mode. */
void tu_wal_mode(PGconn *c, const char *mode);

/* The relay tests' broker (test_wal_relay.c, test_wal_faults.c). */
extern kt_broker *tu_wal_broker;

/* cmocka group setup and teardown of the WAL tests: the cluster (with
 * wal_level = logical, tu_group_setup) and one broker, tu_wal_broker. */
int tu_wal_group_setup(void **state);
int tu_wal_group_teardown(void **state);

/* `ferry-relay run --outbox-source wal --set log_level=debug ARGS` as holder. */
tu_proc tu_wal_relay_start(const char *holder, const char *const *args);
/* The same with --once, to its end: the exit status; its log into
 * *log_out (caller frees) when not NULL, and on stderr when it failed. */
int tu_wal_relay_once(const char *holder, char **log_out);
/* tu_wal_relay_once, which must exit with status and log both said and
 * also (when not NULL). */
void tu_wal_relay_once_says(const char *holder, int status, const char *said, const char *also);
/* `ferry-relay slot ACTION --db <the test cluster>`: the exit status. */
int tu_wal_slot_cmd(const char *action, char **out, char **err);
/* n messages over k keys ("key-N") of topic, in transactions of per_tx,
 * through ferry.emit(). */
void tu_wal_emit_n(const char *topic, int n, int k, int per_tx);

/* What a topic holds, checked as every relay test checks it
 * (tu_relay.h): every key's positions rise one by one from 1 in one
 * partition; a position seen before is a duplicate (allowed after a
 * crash); a gap or a step back fails the test. */
typedef tu_topic_check tu_wal_topic;
tu_wal_topic tu_wal_check_topic(const char *topic, size_t want, int timeout_ms);

/* The slot there and wal mode on (`slot create` if it is missing). */
void tu_wal_ready(PGconn *c);
/* A connection to the test database with the slot there and wal mode on,
 * as almost every wal test begins; PQfinish it. */
PGconn *tu_wal_connect(void);
/* pg_current_wal_lsn() as text; caller frees. */
char *tu_wal_lsn(PGconn *c);

#endif
