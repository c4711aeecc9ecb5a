/*
 * tu_kafka.h — the mock broker of a test binary, and the plain producer
 * the consumer tests write their input with. The setup and teardown
 * helpers run in cmocka group fixtures, so they report failure by
 * returning; tu_produce_one fails the running test.
 */
#ifndef FERRY_TU_KAFKA_H
#define FERRY_TU_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "harness/kafkatmp.h"

/* cmocka group setup and teardown of a binary with one mock broker:
 * tu_group_setup, then a one-broker mock cluster into *broker; kt_stop,
 * then tu_group_teardown. */
int tu_broker_group_setup(void **state, kt_broker **broker);
int tu_broker_group_teardown(void **state, kt_broker *broker);

/* An idempotent producer to the brokers at bootstrap (idempotent so that
 * a retried send cannot put a message twice into a test's input), with
 * props (name, value pairs ended by a NULL name; NULL for none) set after
 * those. NULL, with the reason on stderr, when it cannot be made. */
rd_kafka_t *tu_producer_new(const char *bootstrap, const char *const *props);
/* Flush (bounded) and destroy; NULL is a no-op. */
void tu_producer_destroy(rd_kafka_t *producer);

/* Enqueue one message (value copied) with headers h, which it takes;
 * fails the test if it cannot. The caller flushes. */
void tu_produce_one(rd_kafka_t *producer, const char *topic, const char *key, const void *value,
                    size_t len, rd_kafka_headers_t *h);

#endif
