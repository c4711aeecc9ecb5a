/*
 * relay_wal_track.c — what the WAL source may confirm to its slot: the
 * longest prefix of the stream whose every message Kafka acknowledged
 * (relay_wal.h says why). Pure: no I/O, no clock; tests/test_wal_sim.c
 * drives it through seeded interleavings of receipts, reports, failures
 * and crashes, and catches the broken variants below.
 *
 * The transactions not yet confirmed sit in a ring, oldest first; entry i
 * is transaction serial base + i. A message's ticket is its transaction's
 * serial, so a report finds its entry in O(1), and a report whose serial
 * is below base (confirmed already, or from before a reset) is ignored.
 */
#include <stdbool.h>
#include <stdlib.h>

#include "relay_wal.h"

typedef struct wal_tx {
    uint64_t end_lsn;           /* 0 while open */
    uint32_t messages;          /* produced */
    uint32_t acked;
    int failed;
} wal_tx;

struct wal_track {
    wal_tx *ring;
    int cap, head, count;       /* count includes the open one */
    int open;                   /* the newest entry has no COMMIT yet */
    uint64_t base;              /* serial of ring[head] */
    uint64_t confirmed;
    uint64_t last_end;          /* the newest COMMIT's end, for the order check */
    int64_t inflight;
    int failed;
#ifdef FERRY_TEST_HOOKS
    wal_track_broken broken;
#endif
};

wal_track *wal_track_new(int capacity)
{
    if (capacity < 1)
        return NULL;
    wal_track *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ring = calloc((size_t)capacity, sizeof *t->ring);
    if (t->ring == NULL) {
        free(t);
        return NULL;
    }
    t->cap = capacity;
    t->base = 1;                /* ticket 0 means "none" */
    return t;
}

void wal_track_free(wal_track *t)
{
    if (t == NULL)
        return;
    free(t->ring);
    free(t);
}

static wal_tx *entry(wal_track *t, int i)
{
    return &t->ring[(t->head + i) % t->cap];
}

int wal_track_begin(wal_track *t)
{
    if (t->open || t->count == t->cap)
        return -1;
    *entry(t, t->count) = (wal_tx){0};
    t->count++;
    t->open = 1;
    return 0;
}

uint64_t wal_track_message(wal_track *t)
{
    if (!t->open)
        return 0;
    entry(t, t->count - 1)->messages++;
    t->inflight++;
    return t->base + (uint64_t)(t->count - 1);
}

int wal_track_commit(wal_track *t, uint64_t end_lsn)
{
    if (!t->open || end_lsn == 0 || end_lsn < t->last_end)
        return -1;
    entry(t, t->count - 1)->end_lsn = end_lsn;
    t->last_end = end_lsn;
    t->open = 0;
    return 0;
}

void wal_track_report(wal_track *t, uint64_t ticket, int ok)
{
    if (ticket < t->base || ticket >= t->base + (uint64_t)t->count)
        return;
    wal_tx *x = entry(t, (int)(ticket - t->base));
    if (x->acked >= x->messages)
        return;                 /* more reports than messages: not ours */
    t->inflight--;
#ifdef FERRY_TEST_HOOKS
    if (!ok && t->broken == WAL_TRACK_SKIP_FAILED)
        ok = 1;
#endif
    if (ok) {
        x->acked++;
    } else {
        /* Counted as reported, never as acknowledged: the transaction
         * stays incomplete, and so does everything after it. */
        x->failed = 1;
        t->failed = 1;
        x->acked++;
    }
}

void wal_track_idle(wal_track *t, uint64_t lsn)
{
    /* Only with nothing pending: a transaction received, even complete
     * but not yet popped, is confirmed through confirmable(). */
    if (t->count == 0 && !t->failed && lsn > t->confirmed)
        t->confirmed = lsn;
}

static bool complete(const wal_tx *x)
{
    return x->end_lsn != 0 && !x->failed && x->acked == x->messages;
}

uint64_t wal_track_confirmable(wal_track *t)
{
#ifdef FERRY_TEST_HOOKS
    if (t->broken == WAL_TRACK_CONFIRM_ON_WRITE) {
        /* Confirms every received COMMIT, acknowledged or not. */
        if (t->last_end > t->confirmed)
            t->confirmed = t->last_end;
    } else if (t->broken == WAL_TRACK_ANY_ORDER) {
        /* The newest complete transaction wins, whatever came before. */
        for (int i = t->count - 1; i >= 0; i--) {
            wal_tx *x = entry(t, i);
            if (complete(x) && x->end_lsn > t->confirmed) {
                t->confirmed = x->end_lsn;
                break;
            }
        }
    }
#endif
    while (t->count > 0 && complete(entry(t, 0))) {
        uint64_t end = entry(t, 0)->end_lsn;
        if (end > t->confirmed)
            t->confirmed = end;
        t->head = (t->head + 1) % t->cap;
        t->count--;
        t->base++;
    }
    return t->confirmed;
}

bool wal_track_failed(const wal_track *t)
{
    return t->failed;
}

int64_t wal_track_inflight(const wal_track *t)
{
    return t->inflight;
}

bool wal_track_full(const wal_track *t)
{
    return t->count >= t->cap;
}

void wal_track_reset(wal_track *t)
{
    t->base += (uint64_t)t->count;
    t->head = 0;
    t->count = 0;
    t->open = 0;
    t->inflight = 0;
    t->failed = 0;
    /* The server resends from the slot's position, in order — which may
     * be before what we confirmed: PostgreSQL writes a slot's confirmed
     * position to disk only at checkpoints, so after a crash it resends
     * from the last checkpointed one. Those transactions were all
     * acknowledged (duplicates, never confirmed backwards: confirmed
     * only rises); the order check starts afresh with the new stream. */
    t->last_end = 0;
}

#ifdef FERRY_TEST_HOOKS
void wal_track_set_broken(wal_track *t, wal_track_broken b)
{
    t->broken = b;
}
#endif
