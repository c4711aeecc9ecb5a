/*
 * relay_sched.h — the relay's decisions, as pure functions of its state
 * and the time.
 *
 * The relay (relay.c) is a thin shell around this: it fetches rows,
 * produces them, collects delivery reports and acknowledges, and asks the
 * scheduler at every step what to do. The scheduler does no I/O and reads
 * no clock: every call that depends on the time takes `now` (milliseconds,
 * any monotonic origin). So a seeded simulator (tests/test_relay_sim.c)
 * drives exactly this code through stuck partitions, failed deliveries,
 * fatal producer errors, lost acknowledgements, takeovers and pauses, by
 * the thousand, and replays any failure from its seed.
 *
 * The state, by stage:
 *   keys        per (topic, key) with anything in flight, unacknowledged,
 *               failing or delayed: the per-key scheduling
 *   partitions  per (topic, partition) with anything in flight: holds and
 *               stuck detection
 *   slots       one per message produced and not yet acknowledged
 *   acks        delivered slots, in delivery order, waiting for the
 *               acknowledging statement
 *   leases      the epoch of each shard this relay serves, and which ones
 *               it is handing over
 *   sweep       the cursor through the outbox and why to sweep again
 *   wake        whether writers are asked to NOTIFY, and the handshake
 *               that makes turning it on lose no commit
 *
 * Invariants kept here (and checked by the simulator):
 *   - a slot is acknowledged only after its delivery report said
 *     persisted, under the epoch it was produced under;
 *   - a key is produced by one sweep at a time: a sweep skips a key that
 *     has anything in flight or unacknowledged from an earlier sweep, that
 *     is failing (until its retry time), or whose next row is delayed;
 *     rows of a key come in position order within a sweep, so after any
 *     failure the key resumes at its first unacknowledged row;
 *   - a partition that stops answering holds only its own keys;
 *   - at most max_inflight slots are taken, and no row is admitted while
 *     the in-flight slots' bytes are at the limit (sched_bytes_limit).
 */
#ifndef FERRY_RELAY_SCHED_H
#define FERRY_RELAY_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCHED_SHARDS_MAX 4096
#define SCHED_EVENTS_MAX 64

typedef struct sched_config {
    int max_inflight;       /* slots: produced and not yet acknowledged */
    int batch_size;         /* rows per fetch */
    int stuck_ms;           /* a partition or key waiting this long is stuck */
    int poll_interval_ms;   /* backstop sweep */
    int stop_grace_ms;      /* how long a stop waits for deliveries */
    int once;               /* publish what is ready, then stop */
    int max_attempts;       /* with once: sweeps to retry transient failures */
} sched_config;

/* What sched_admit() says about one fetched row. */
typedef enum sched_admit {
    ADMIT_PRODUCE,          /* produce it now */
    ADMIT_SKIP,             /* skip it (and the rest of its key this sweep) */
    ADMIT_NO_ROOM,          /* no slot: end this batch before the row */
} sched_admit;

/* Why a row was skipped, for tests and the debug log. */
typedef enum sched_skip {
    SKIP_NONE,
    SKIP_SHARD,             /* not a shard this relay serves (any more) */
    SKIP_BLOCKED,           /* its key was skipped earlier in this sweep */
    SKIP_BUSY,              /* in flight or unacknowledged from an earlier sweep */
    SKIP_FAILING,           /* failed; waiting for its retry time */
    SKIP_DELAYED,           /* available_at has not come */
    SKIP_PARTITION,         /* its partition is held */
} sched_skip;

/* Events for the log, one per change (not one per retry). */
typedef enum sched_event_kind {
    EV_PARTITION_STUCK,
    EV_PARTITION_RECOVERED,
    EV_KEY_STUCK,
    EV_KEY_RECOVERED,           /* its message went out */
    EV_KEY_LEFT,                /* its rows went away (dead-lettered, discarded) */
} sched_event_kind;

typedef struct sched_event {
    sched_event_kind kind;
    char topic[256];
    char key[128];          /* cut for the log */
    int partition;
    int64_t age_ms;
} sched_event;

/* What the shell should do next; sched_plan() fills it. */
typedef struct sched_plan {
    int fetch;              /* fetch the next batch of the sweep (limit rows) */
    int limit;              /* rows for that fetch */
    int send_ack;           /* send the acknowledgement statement */
    int wake;               /* 1: ask writers to notify (and start the
                               handshake), -1: ask them to stop, 0: nothing */
    int try_handshake;      /* try to take the wake-up lock exclusively */
    int release_shard;      /* give this shard's lease back, or -1 */
    int stop;               /* leave the loop */
    int stop_clean;         /* with stop: everything produced was settled */
    int stop_stuck;         /* with stop (--once): what is left is in flight in
                               partitions that have not answered for stuck_ms */
    int polled;             /* a sweep started by the relay's own clock (the
                               look-again or the poll interval), no wake-up
                               having asked for it: ferry_relay_wakeups_total
                               {by="poll"} */
    int timeout_ms;         /* then wait for events at most this long */
} sched_plan;

typedef struct sched sched;

/* NULL when out of memory. cfg is copied. */
sched *sched_new(const sched_config *cfg);
void sched_free(sched *s);

/* ---- leases */
void sched_lease_set(sched *s, int shard, int64_t epoch);   /* acquired/adopted */
void sched_lease_lost(sched *s, int shard);                 /* no longer ours */
int64_t sched_lease_epoch(const sched *s, int shard);       /* 0: not held */
int sched_leases_held(const sched *s);
/* Start handing shards over until this relay holds target: it stops
 * fetching them; sched_plan() releases each once nothing of it is in
 * flight or unacknowledged. */
void sched_lease_target(sched *s, int target);
bool sched_shard_draining(const sched *s, int shard);
/* Slots (in flight or unacknowledged) of a shard. */
int sched_shard_busy(const sched *s, int shard);

/* ---- the sweep */
/* The cursor the next fetch starts after: (shard, topic, key, seq). */
void sched_cursor(const sched *s, int *shard, const char **topic, const char **key,
                  int64_t *seq);
/* The ids of the rows this relay has out (in flight, or delivered and not
 * yet acknowledged), for the fetch to leave out: the sweep would skip each
 * of them anyway (its key is busy), and at a high rate they were most of
 * what every fetch read. Writes them to ids (room for max) and returns how
 * many; 0 when there are more than max (the fetch then leaves none out). */
int sched_fetch_exclude(const sched *s, unsigned char (*ids)[16], int max);
/* The fetch of a batch came back with rows rows of limit. */
void sched_fetched(sched *s, int rows, int limit, int64_t now);
/* Move the cursor past a row that was dealt with (produced or skipped). */
void sched_advance(sched *s, int shard, const char *topic, const char *key, int64_t seq);
/* Something that may make rows ready: a NOTIFY, a lease gained. */
void sched_dirty(sched *s);
/* The number of complete sweeps so far. */
int sched_sweeps(const sched *s);

/* ---- admission and production */
/* A topic's partition count, once the producer knows it (0: unknown). */
void sched_topic_partitions(sched *s, const char *topic, int count);
int sched_topic_partition_count(const sched *s, const char *topic);
/* Decide about a fetched row; partition is the key's partition, or -1
 * when the topic's partition count is not known yet. why may be NULL. */
sched_admit sched_admit_row(sched *s, int shard, const char *topic, const char *key,
                            int partition, int ready, int64_t now, sched_skip *why);
/* The row was produced into slot (returned), or -1 when no slot is free
 * (sched_admit_row() said there was). id is 16 bytes, kept for the ack;
 * bytes, what the producer holds for it until its report. */
int sched_produced(sched *s, int shard, const char *topic, const char *key, int partition,
                   const unsigned char id[16], int64_t created_ms, size_t bytes, unsigned gen,
                   int64_t now);
/* produce() refused the row (queue full aside): the key waits for the rest
 * of the sweep and for a retry time. */
void sched_produce_failed(sched *s, const char *topic, const char *key, int64_t now);

/* ---- delivery reports and acknowledgements */
/* A delivery report. ok > 0: persisted, so the slot joins the ack queue;
 * 0: failed (the key retries after a backoff); < 0: lost without fault of
 * its own (purged with its producer: the key retries at once). */
void sched_delivered(sched *s, int slot, int ok, int64_t now);
/* The producer was thrown away: every slot still in flight failed. */
void sched_inflight_lost(sched *s, int64_t now);
/* Slots with no report yet, and their bytes. */
int sched_inflight(const sched *s);
size_t sched_inflight_bytes(const sched *s);
/* The bytes the producer may hold in flight: once the in-flight slots'
 * bytes reach it, no row is admitted and nothing fetched until reports
 * bring them below (a row goes out alone whatever its size). 0: no limit.
 * The producer's own queue, and the relay's memory, stay bounded. */
void sched_bytes_limit(sched *s, size_t limit);
int sched_slot_info(const sched *s, int slot, unsigned char id[16], int *shard, int64_t *epoch,
                    unsigned *gen, int64_t *created_ms);
/* The acks to send: the first n of the queue (shard, epoch, id each). */
int sched_ack_pending(const sched *s);
int sched_ack_in_flight(const sched *s);
void sched_ack_item(const sched *s, int i, unsigned char id[16], int *shard, int64_t *epoch);
void sched_ack_sent(sched *s, int n, int64_t now);
/* The statement in flight ended: ok (committed; rows deleted or refused)
 * frees its slots; not ok keeps them for the next one. */
void sched_ack_done(sched *s, int ok, int64_t now);

/* ---- the database and the broker */
void sched_db_state(sched *s, int ok);
/* Wake-ups as the database has them now: writers read the flag. */
void sched_wake_set(sched *s, int on);
/* The handshake after turning wake-ups on: got is whether the exclusive
 * lock was taken (so no writer that read the flag off is still open). */
void sched_handshake(sched *s, int got, int64_t now);

/* ---- stopping */
void sched_stop(sched *s, int64_t now);

/* ---- the decision */
void sched_plan_next(sched *s, int64_t now, sched_plan *out);

/* Events since the last call, oldest first; returns how many (<= max). */
int sched_events(sched *s, sched_event *out, int max);

/* ---- what the metrics and /healthz show */
typedef struct sched_stats {
    int inflight;           /* produced, no report yet */
    int unacked;            /* delivered, not acknowledged yet */
    int stuck_partitions;
    int stuck_keys;
    int64_t oldest_inflight_ms;     /* age; 0 when nothing is in flight */
    char stuck_reason[256];         /* "" or why the relay is not ready */
} sched_stats;
void sched_stats_get(const sched *s, int64_t now, sched_stats *out);

/* The simulator's deliberately broken variants: compiled in only with
 * -DFERRY_SCHED_TEST (tests/test_relay_sim.c's build). */
typedef enum sched_broken {
    SCHED_OK = 0,
    SCHED_BROKEN_ACK_ON_PRODUCE,    /* queues the ack when produced */
    SCHED_BROKEN_RESEND_AHEAD,      /* a key that failed goes on with its
                                       next rows in the same sweep */
    SCHED_BROKEN_WAIT_ALL,          /* a new sweep waits for everything
                                       in flight, as the old relay did */
    SCHED_BROKEN_BYTES_KEPT,        /* a failed slot's bytes stay counted
                                       in flight */
    SCHED_BROKEN_COUNT
} sched_broken;
#ifdef FERRY_SCHED_TEST
void sched_set_broken(sched *s, sched_broken b);
#endif

#endif
