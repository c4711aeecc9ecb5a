/*
 * tu_relay.h — what the relay tests ask of the outbox and of a topic:
 * how many rows wait, waiting for none, and the per-key order check every
 * publishing test ends with. Every helper fails the running cmocka test on
 * error.
 */
#ifndef FERRY_TU_RELAY_H
#define FERRY_TU_RELAY_H

#include <stddef.h>

#include <libpq-fe.h>

/* Rows of topic in ferry.outbox now. */
long long tu_outbox_rows(const char *topic);
/* Wait up to timeout_ms until no row of topic is left in ferry.outbox. */
void tu_await_outbox_empty(const char *topic, int timeout_ms);

/* In one transaction on conn: a message of key that the broker will
 * refuse (200 kB, over the message.max.bytes=100000 the poison tests give
 * the relay), a small one after it, {"after": 1}, and unless healthy is
 * NULL one of key healthy, {"ok": 1}. */
void tu_emit_poison(PGconn *conn, const char *topic, const char *key, const char *healthy);

/* What a topic holds, checked: every key on one partition, its positions
 * (ferry_seq) rising one by one from 1 in partition order; a position seen
 * before is a duplicate (allowed after a crash, counted), never a gap,
 * never a step back to something unseen. Reads until want messages or
 * timeout_ms; want 0: all the topic holds (kt_consume). */
typedef struct tu_topic_check {
    size_t messages, distinct, duplicates, keys;
} tu_topic_check;

tu_topic_check tu_check_topic(const char *bootstrap, const char *topic, size_t want,
                              int timeout_ms);
/* Writers on a few hot keys, for the order tests of both relays: writers
 * threads, each running rounds transactions of three messages to topic on
 * the keys key-0..key-4 (ferry_emit_batch). tu_hot_writers_join waits for
 * them, fails the test if one failed, and frees. */
typedef struct tu_hot_writers tu_hot_writers;
tu_hot_writers *tu_hot_writers_start(const char *topic, int writers, int rounds);
void tu_hot_writers_join(tu_hot_writers *hw);

/* tu_check_topic, failing the test unless it found distinct distinct
 * messages; the check, for more assertions. */
tu_topic_check tu_assert_topic(const char *bootstrap, const char *topic, size_t want,
                               int timeout_ms, size_t distinct);

#endif
