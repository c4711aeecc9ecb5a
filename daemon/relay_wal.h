/*
 * relay_wal.h — the WAL source (issue 14): the relay reads the outbox
 * through logical decoding instead of polling the table.
 *
 *   relay_wal_track.c  what may be confirmed to the slot: a pure function
 *                      of what was received and what Kafka acknowledged
 *   relay_wal_msg.c    reading the stream: CopyData frames, pgoutput's
 *                      messages, and emit's content (schemas/011_wal.sql);
 *                      pure, every input hostile
 *   relay_wal.c        the shell: the replication session, the producer,
 *                      feedback to the server, the slot's health
 *   relay_wal_slot.c   `ferry-relay slot create|recreate|status`
 */
#ifndef FERRY_RELAY_WAL_H
#define FERRY_RELAY_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../lib/ferry.h"

/* ------------------------------------------------------------------ track */

/*
 * The confirm decision. The stream is a sequence of transactions in commit
 * order; each holds zero or more messages, produced to Kafka as they
 * arrive. The slot's flush position may be confirmed past a transaction
 * only when it and every transaction before it are complete (their COMMIT
 * received) and every one of their messages was acknowledged by Kafka:
 * the longest acknowledged prefix. Never the write (received) position,
 * never past a failure: after a crash the server resends from the
 * confirmed position, so anything past it is sent again (duplicates,
 * never loss), and anything before it must already be in Kafka.
 *
 * A message's ticket is its transaction's serial number; tickets are
 * never reused, also across wal_track_reset(), so that a delivery report
 * from before a restart is recognised and ignored.
 */
typedef struct wal_track wal_track;

/* capacity: transactions at most open or unconfirmed at once (the shell
 * stops reading at wal_track_full()). NULL when out of memory. */
wal_track *wal_track_new(int capacity);
void wal_track_free(wal_track *t);          /* NULL ok */

/* A BEGIN. Returns 0, or -1 if a transaction is already open or the
 * track is full (a protocol error or the shell's bug). */
int wal_track_begin(wal_track *t);
/* A message of the open transaction; its ticket, or 0 when none is open. */
uint64_t wal_track_message(wal_track *t);
/* The COMMIT of the open transaction; end_lsn is where it ends in WAL
 * (the position past which the slot may be confirmed). -1 if none open
 * or end_lsn goes backwards. */
int wal_track_commit(wal_track *t, uint64_t end_lsn);
/* Kafka's report on a message: ok 1 acknowledged, 0 failed. Reports for
 * tickets from before the last reset are ignored. */
void wal_track_report(wal_track *t, uint64_t ticket, int ok);
/* The server says everything before lsn has been sent (a keepalive's
 * WAL end): with nothing open or unacknowledged, that much may be
 * confirmed too — a quiet slot advances. */
void wal_track_idle(wal_track *t, uint64_t lsn);
/* The position that may be confirmed now (0: nothing yet); never goes
 * backwards. Drops the transactions it passes. */
uint64_t wal_track_confirmable(wal_track *t);
/* A message failed: nothing past it can ever be confirmed until the
 * stream is restarted from the slot. */
bool wal_track_failed(const wal_track *t);
/* Messages produced and not yet reported. */
int64_t wal_track_inflight(const wal_track *t);
bool wal_track_full(const wal_track *t);
/* Forget everything (a restart from the slot); the confirmed position is
 * kept as the starting point. */
void wal_track_reset(wal_track *t);

#ifdef FERRY_TEST_HOOKS
/* The simulator's deliberately broken decisions (tests/test_wal_sim.c). */
typedef enum wal_track_broken {
    WAL_TRACK_CORRECT = 0,
    WAL_TRACK_CONFIRM_ON_WRITE,     /* confirm each COMMIT when received */
    WAL_TRACK_SKIP_FAILED,          /* a failed message counts as done */
    WAL_TRACK_ANY_ORDER,            /* a later complete transaction confirms
                                       past an earlier incomplete one */
} wal_track_broken;
void wal_track_set_broken(wal_track *t, wal_track_broken b);
#endif

/* ------------------------------------------------------------------ stream */

/* A CopyData frame of the replication stream. */
typedef struct wal_frame {
    char kind;                  /* 'w' XLogData, 'k' keepalive */
    uint64_t start;             /* 'w': where the data starts in WAL */
    uint64_t wal_end;           /* the server's end of WAL (as sent) */
    int reply;                  /* 'k': the server asks for feedback now */
    const char *data;           /* 'w': pgoutput's message */
    size_t len;
} wal_frame;

/* pgoutput's logical replication message (protocol version 1). */
typedef struct wal_pgout {
    char tag;                   /* 'B', 'C', 'M', or another (ignored) */
    uint64_t commit_lsn;        /* 'C' */
    uint64_t end_lsn;           /* 'C' */
    int64_t commit_us;          /* 'B', 'C': Unix microseconds */
    uint32_t xid;               /* 'B' */
    int transactional;          /* 'M' */
    uint64_t lsn;               /* 'M' */
    const char *prefix;         /* 'M': NUL-terminated, inside the data */
    const char *content;        /* 'M' */
    size_t content_len;
} wal_pgout;

/* The fields of a ferry message (emit's content). The strings point into
 * scratch (NUL-terminated copies), valid until the next parse. */
typedef struct wal_msg {
    ferry_uuid id;
    int64_t seq;
    int64_t created_us;
    const char *topic, *key, *aggtype, *type, *headers, *payload;
    size_t payload_len;
} wal_msg;

typedef struct wal_scratch {
    char *buf;
    size_t cap;
} wal_scratch;

/* Each returns 0, or -1 with why (lower case, naming the field) filled. */
int wal_frame_parse(const char *buf, size_t len, wal_frame *out, char *why, size_t whylen);
int wal_pgout_parse(const char *data, size_t len, wal_pgout *out, char *why, size_t whylen);
/* token: the database's wal_token, which the content must carry;
 * max_payload: settings.max_payload_bytes. */
int wal_msg_parse(const char *content, size_t len, const char *token, long max_payload,
                  wal_scratch *scratch, wal_msg *out, char *why, size_t whylen);
void wal_scratch_free(wal_scratch *s);

/* `ferry-relay slot ...` (relay_wal_slot.c). */
int cmd_slot(int argc, char **argv);

/* "X/Y", PostgreSQL's text form of an LSN; out holds 32. And back: 0, or
 * -1 when text is not one. */
void wal_lsn_format(uint64_t lsn, char out[32]);
int wal_lsn_parse(const char *text, uint64_t *out);

#endif
