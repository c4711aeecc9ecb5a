/*
 * kafka_stats.h — librdkafka's statistics (the JSON document its stats
 * callback hands over every statistics.interval.ms) as Prometheus
 * families: what an operator of Kafka clients watches — brokers up,
 * round-trip times, requests waiting, errors, timeouts, retries,
 * reconnects, and the producer's queue. Each document replaces the last;
 * a scrape copies the text made from the latest, so it never parses.
 */
#ifndef FERRY_KAFKA_STATS_H
#define FERRY_KAFKA_STATS_H

#include <stddef.h>

typedef struct kafka_stats kafka_stats;

kafka_stats *kafka_stats_new(void);
void kafka_stats_free(kafka_stats *s);           /* NULL ok */

/* Take in one statistics document (borrowed, json_len bytes, not
 * NUL-terminated). Returns 0, or -1 when it is not what librdkafka
 * sends (then the last good one stays). Safe on any thread. */
int kafka_stats_update(kafka_stats *s, const char *json, size_t json_len);

/* The families for the latest document, with HELP and TYPE, malloc'd
 * (caller frees); "" before the first. NULL when out of memory. */
char *kafka_stats_render(kafka_stats *s);

#endif
