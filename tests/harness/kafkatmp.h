/* kafkatmp: a throwaway Kafka-protocol broker for tests and benchmarks, and
 * a consumer that reads a topic back.
 *
 * kt_start() runs `ferry-relay devkafka` (librdkafka's mock cluster) as a
 * child process; its stdin is the fault-injection channel (kt_command:
 * "down 1", "rtt 1 200", "produce-errors 3 NOT_ENOUGH_REPLICAS", ... see
 * daemon/devkafka.c). The child is killed by the kernel if the test
 * process dies (PR_SET_PDEATHSIG), so a crashed test leaves nothing behind.
 *
 * The binary is $FERRY_RELAY_BIN, by default build/asan/ferry-relay
 * relative to the working directory (the repository root under make).
 *
 * Every function prints a clear reason to stderr when it fails. */
#ifndef FERRY_TESTS_HARNESS_KAFKATMP_H
#define FERRY_TESTS_HARNESS_KAFKATMP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct kt_broker kt_broker;     /* one devkafka child process */

/* Start a cluster of `brokers` brokers (1..32) and wait up to 30 s for its
 * bootstrap string. NULL on failure (nothing left running). */
kt_broker *kt_start(int brokers);
/* "127.0.0.1:PORT[,...]"; owned by the broker, valid until kt_stop. */
const char *kt_bootstrap(const kt_broker *kb);
pid_t kt_pid(const kt_broker *kb);

/* Send one command line (printf-style, no newline) and wait up to 30 s for
 * its reply: 0 on "ok" (or "ok VALUE"), -1 otherwise, with the reply or the
 * failure printed to stderr. */
int kt_command(kt_broker *kb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same, also copying the whole reply line (without newline, cut to
 * len - 1 bytes) into reply whatever it was; reply may be NULL. */
int kt_command_reply(kt_broker *kb, char *reply, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Low-level access to the control channel, for tests of the protocol
 * itself: write raw bytes (0 or -1), read one reply line (0, or -1 on
 * timeout, EOF or error), close the child's stdin (the broker must keep
 * running). */
int kt_send_raw(kt_broker *kb, const void *data, size_t len);
int kt_read_line(kt_broker *kb, char *line, size_t len, int timeout_ms);
void kt_close_stdin(kt_broker *kb);

/* Wait up to timeout_ms for the child to exit on its own (after "quit"):
 * its exit status, 128 + N if signal N killed it, or -1 if it is still
 * running. Once collected, the status is kept and returned again. */
int kt_wait(kt_broker *kb, int timeout_ms);
/* SIGTERM, then wait up to 10 s (SIGKILL after that): the exit status as
 * kt_wait reports it; the status already collected if it had exited. */
int kt_terminate(kt_broker *kb);
/* kt_terminate if still running, then free. Accepts NULL. */
void kt_stop(kt_broker *kb);

/* ------------------------------------------------------------------ */
/* Reading a topic back                                                 */

typedef struct kt_hdr {
    char *name;            /* NUL-terminated */
    char *value;           /* NUL-terminated copy; NULL for a null value */
    size_t value_len;
} kt_hdr;

typedef struct kt_msg {
    char *topic;
    int32_t partition;
    int64_t offset;
    char *key;             /* NUL-terminated copy; NULL for a null key */
    size_t key_len;
    char *value;           /* NUL-terminated copy; NULL for a null value */
    size_t value_len;
    kt_hdr *headers;       /* in the message's order; NULL when none */
    size_t header_count;
    int64_t timestamp;     /* milliseconds since the epoch, -1 if none */
} kt_msg;

typedef struct kt_msgs {
    size_t count;
    kt_msg *msgs;          /* sorted by partition, then offset */
} kt_msgs;

/* Read `topic` from the beginning of every partition with a fresh consumer
 * (its own group, no commits) until `want` messages arrived or timeout_ms
 * passed; then stop. Waits for the topic to exist within the timeout. The
 * result may hold fewer than `want` (on timeout). If `want` is 0: every
 * message the topic holds when the read begins (up to each partition's
 * high watermark, then it stops), or, if the broker cannot tell the
 * watermarks, what arrived within the timeout. NULL only if the consumer
 * could not be set up. The caller frees it with kt_msgs_free. */
kt_msgs *kt_consume(const char *bootstrap, const char *topic, size_t want, int timeout_ms);
/* Accepts NULL. */
void kt_msgs_free(kt_msgs *msgs);
/* The value of the message's first header called name, or NULL if there is
 * none (or its value is null). Borrowed from the message. */
const char *kt_header(const kt_msg *msg, const char *name);

#endif
