/*
 * consume_intake.h — the consumer's reading of one message, apart from the
 * database and the broker (lib/consume.c).
 *
 * Private to libferry; here rather than in consume.c so that
 * tests/fuzz/fuzz_consume.c can feed it hostile Kafka messages. What comes
 * out is either a message the transactions may claim (a position, if any,
 * in 1 .. 2^63-2; every name text PostgreSQL can hold) or one that is
 * poison, with the reason it is dead-lettered for.
 */
#ifndef FERRY_CONSUME_INTAKE_H
#define FERRY_CONSUME_INTAKE_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "ferry.h"

enum { CONSUME_REASON_MAX = 1024 };

/*
 * Everything about one message that the transactions need, whether it came
 * from Kafka or from ferry.inbox_held. Strings point into the Kafka
 * message, the PGresult of the held row, or the buffers here; headers is
 * owned.
 */
typedef struct consume_work {
    ferry_message msg;
    json_t *headers;            /* name -> string; owned. From Kafka it is built
                                   only when needed (ensure_headers): most
                                   messages need five headers, not the map */
    rd_kafka_headers_t *kafka_headers;  /* borrowed from rkm; NULL if none */
    json_t *payload;            /* owned; NULL when the payload is not JSON */
    char *payload_copy;         /* owned: a Kafka payload with a NUL after it
                                   (msg.payload_text); NULL from ferry.inbox_held,
                                   whose text PostgreSQL ends with one */
    char id[FERRY_UUID_STRING_SIZE];
    char seq_text[24];          /* "" when the message has no position */
    char type[FERRY_TYPE_MAX + 1];
    char aggregate_type[FERRY_TYPE_MAX + 1];
    char key_text[2 * FERRY_KEY_MAX + 8];   /* the key when it is not text */
    char poison[CONSUME_REASON_MAX];    /* non-empty: cannot be applied, whatever the handler */
    int from_held;
    int payload_is_text;        /* UTF-8 without NUL: PostgreSQL text can hold it */
    int unholdable;             /* a name that text cannot hold: poison at once */
    int key_shown;              /* the key is not text: key_text shows its bytes, a
                                   name a real key may have, so its dead letter
                                   takes no position and parks no key */
    int marker;                 /* a position discarded at the relay */
    int in_batch;               /* being applied with others in one transaction */
    int alone_asked;            /* its handler asked for its own transaction
                                   (ferry_message_alone) */
    int failed_tries;           /* tries that failed at this message (not at a
                                   neighbour in its batch): msg.attempt - 1 */
    rd_kafka_message_t *rkm;    /* borrowed; NULL when from_held */
} consume_work;

/*
 * rkm, read from topic, as work in *w (whatever *w held is overwritten).
 * Borrows rkm (its key, payload, partition and offset), topic and headers
 * (rkm's, NULL when it has none) for as long as *w is used; reads nothing
 * else of rkm, so that rkm need not come from librdkafka. A payload over
 * max_payload bytes is poison. No database, no broker; what it allocates,
 * and what ferry_message_header() on w->msg allocates later,
 * ferry__consume_work_free() frees.
 */
void ferry__consume_intake(consume_work *w, rd_kafka_message_t *rkm, const char *topic,
                           rd_kafka_headers_t *headers, size_t max_payload);

/* Free what *w owns; *w may be used for nothing after but another intake. */
void ferry__consume_work_free(consume_work *w);

/* Move *src into *dst, another slot (a batch closing up the gap a revoked
 * partition's messages left): what src owned, dst owns; the message's
 * strings that pointed into src's own buffers (id, key, type, aggregate
 * type) point into dst's, and its internal_ to dst. src is not to be
 * used or freed after. */
void ferry__consume_work_move(consume_work *dst, const consume_work *src);

#endif
