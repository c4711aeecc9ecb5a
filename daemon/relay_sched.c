/*
 * relay_sched.c — the relay's decisions; see relay_sched.h.
 *
 * Keys and partitions live in glibc's search trees (tsearch), keyed by
 * "topic\x1fkey" and "topic\x1fpartition": a topic is [A-Za-z0-9._-]+
 * (ferry.emit_with_id checks it), so the separator cannot occur in it and
 * the names cannot collide. Only keys with something to remember (in
 * flight, unacknowledged, failing) have an entry, so the tree holds at
 * most max_inflight entries plus the failing keys.
 *
 * Why a stuck partition cannot reorder a key. The producer never times a
 * message out (message.timeout.ms = 0, relay.c): a message for a partition
 * without a leader waits in librdkafka's queue, in order, until the
 * partition is back, and the gapless guarantee turns every other loss into
 * a fatal error, after which everything in flight fails and each key
 * restarts at its first unacknowledged row. What this file adds is that
 * waiting no longer stops anyone else: a new sweep does not wait for what
 * is in flight, it skips the keys that have anything in flight or
 * unacknowledged; and a partition whose messages stopped coming back is
 * held, so that no further key is produced into it and the slots it takes
 * stay bounded (half of max_inflight split among the partitions in flight,
 * at least an eighth; an eighth of the byte budget: so that several
 * partitions stuck at once, a broker's, leave the others room).
 */
#include "relay_sched.h"

#include <assert.h>
#include <search.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEP '\x1f'
/* A partition with messages in flight and no report for this long (or
 * stuck_ms, if shorter) takes no new keys. */
#define HOLD_MS 1000
/* Rows a second at which writers are asked not to notify (BUSY_RATE),
 * and below which they are asked again (IDLE_RATE): below those a NOTIFY
 * costs them little and saves the relay from looking.
 *
 * Why 500 and not more: PostgreSQL serializes notifying commits through
 * their WAL flush, so while wake-ups are on the writers cannot commit
 * faster than one flush after another, and the relay never sees a rate
 * above that. On a disk whose flush takes ~1 ms that is ~1,000 a second:
 * at 1,000 (as before) a step from idle to 2,000 a second held the
 * writers at ~900 with 25-35 ms commits for ~0.2 s, until a burst of
 * late commits crossed it (bench-relay's worst 1 % at 2,000/s). Why two:
 * at one rate, rows arriving at random cross it every other window, and
 * each turn costs the relay two statements and the writers a handshake. */
#define BUSY_RATE 500
#define IDLE_RATE 250
#define RATE_WINDOW_MS 100
/* The window so far counts once it is this long, at twice the busy rate:
 * a step to thousands a second turns wake-ups off within ~20 ms, and
 * short bursts at lower rates do not. */
#define RATE_MIN_SPAN_MS 20
/* While busy, an empty sweep is looked at again this soon, for this long
 * before the relay counts itself idle. */
#define BUSY_LOOK_MS 1
#define IDLE_GRACE_MS 50
#define SKIPPY_LOOK_MS 8
/* Retry of a failed key: 100 ms doubling to 5 s. */
#define RETRY_BASE_MS 100
#define RETRY_MAX_MS 5000
/* An acknowledgement that failed is sent again after this. */
#define ACK_RETRY_MS 100
/* The handshake is tried again after 1, 2, 4 ... this many ms. */
#define HANDSHAKE_MAX_MS 32

enum { SLOT_FREE, SLOT_INFLIGHT, SLOT_DELIVERED };

/* The deliberately broken variants the simulator must catch exist only in
 * its build (-DFERRY_SCHED_TEST, the Makefile's test_relay_sim rule): the
 * relay itself has no switch that could turn one on. */
#ifdef FERRY_SCHED_TEST
#define BROKEN(s, v) ((s)->broken == (v))
#else
#define BROKEN(s, v) 0
#endif

typedef struct skey skey;
typedef struct spart spart;

struct skey {
    char *name;
    int inflight, unacked;
    int64_t sweep;              /* the sweep that produced what is in flight */
    int64_t failed_sweep;       /* the last sweep in which it failed */
    int sweep_rows;             /* rows produced by that sweep */
    int failures;               /* in a row */
    int64_t retry_at;
    int failing;                /* in the failing list */
    int64_t failing_since;
    int stuck;                  /* EV_KEY_STUCK told */
    int skipped;                /* a sweep skipped it: free means look again */
    skey *fprev, *fnext;        /* the failing list */
};

struct spart {
    char *name;
    int partition;
    int inflight;
    size_t bytes;               /* its in-flight slots' */
    int head, tail;             /* its in-flight slots, oldest first */
    int64_t last_report;
    int stuck;                  /* EV_PARTITION_STUCK told */
    int skipped;
    spart *aprev, *anext;       /* the list of partitions with anything in flight */
};

typedef struct stopic {
    char *name;
    int partitions;
} stopic;

typedef struct sslot {
    unsigned char id[16];
    skey *key;
    spart *part;
    int shard;
    int64_t epoch;
    int64_t produced_ms, created_ms;
    size_t bytes;               /* what the producer holds for it in flight */
    unsigned gen;
    int state;
    int prev, next;             /* partition list, or the free list */
} sslot;

struct sched {
    sched_config cfg;
#ifdef FERRY_SCHED_TEST
    sched_broken broken;
#endif

    /* keys and partitions */
    void *keys, *parts, *topics;
    skey *failing;
    spart *active;
    int active_count;           /* partitions with anything in flight */
    int stuck_keys, stuck_parts;

    /* slots */
    sslot *slots;
    int free_slot;
    int used;                   /* slots not free */
    int inflight;
    size_t inflight_bytes;      /* the in-flight slots' bytes */
    size_t bytes_limit;         /* no row admitted at or past it; 0: none */

    /* acks: slot numbers in delivery order; the first ack_sent are in the
     * statement in flight */
    int *acks;
    int ack_count, ack_sent;
    int64_t ack_retry_at;

    /* leases */
    int64_t held[SCHED_SHARDS_MAX];
    unsigned char draining[SCHED_SHARDS_MAX];
    unsigned char quiet[SCHED_SHARDS_MAX];  /* quiet_shards(), as of quiet_at */
    int64_t quiet_at;
    int busy[SCHED_SHARDS_MAX];     /* slots per shard */
    int held_count;
    int draining_count;
    int64_t drain_since;
    int drain_last;                 /* the shard that did not settle last */
    int target;                     /* -1: no target */

    /* the sweep */
    int running;
    int64_t sweep_id;
    int cur_shard;
    char *cur_topic, *cur_key;
    int64_t cur_seq;
    char *blocked;                  /* the key skipped last, for this sweep */
    int blocked_acking;             /* ... only because its acknowledgement is pending */
    int dirty;
    int sweep_produced;
    int sweep_skipped;
    int sweep_acking;               /* of those, rows of keys waiting only for their ack */
    int last_produced, last_skipped;    /* of the last complete sweep */
    int last_acking;
    int sweep_failed;               /* a message lost (not failed) since the sweep began */
    int sweep_held;                 /* the sweep skipped rows for a held partition */
    int64_t sweep_started;
    int sweeps;
    int held_sweeps;                /* --once: sweeps made again for held rows */
    int64_t next_look;              /* 0: none */

    /* the rate, for wake-ups */
    int64_t win_start;
    int win_rows;
    int rate;                       /* rows a second, last window */
    int64_t last_rows_ms;           /* a sweep last produced */

    /* wake-ups */
    int db_ok;
    int wake_on;                    /* as the flag is in the database */
    int wake_known;
    int handshake;                  /* pending */
    int handshake_tries;
    int64_t handshake_at;

    /* stopping */
    int stopping;
    int64_t stop_deadline;

    sched_event events[SCHED_EVENTS_MAX];
    int event_count;
};

/* ------------------------------------------------------------------ names */

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *key_name(const char *topic, const char *key)
{
    size_t t = strlen(topic), k = strlen(key);
    char *n = malloc(t + k + 2);
    if (n == NULL)
        return NULL;
    memcpy(n, topic, t);
    n[t] = SEP;
    memcpy(n + t + 1, key, k + 1);
    return n;
}

static char *part_name(const char *topic, int partition)
{
    char num[16], *p = num + sizeof num;
    unsigned v = partition < 0 ? 0u - (unsigned)partition : (unsigned)partition;
    *--p = '\0';
    do
        *--p = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    if (partition < 0)
        *--p = '-';
    return key_name(topic, p);
}

static void *find(void *root, const char *name)
{
    void *p = tfind(&name, &root, cmp_name);
    return p ? *(void **)p : NULL;
}

/* The entry named name in the tree at *root, made if need be: size
 * bytes, zeroed, with name in its first field (where cmp_name reads it),
 * and *made set. Takes name, which may be NULL (out of memory); NULL when
 * memory runs out. */
static void *entry_make(void **root, char *name, size_t size, int *made)
{
    if (name == NULL)
        return NULL;
    void *e = find(*root, name);
    if (e != NULL) {
        free(name);
        return e;
    }
    e = calloc(1, size);
    if (e == NULL) {
        free(name);
        return NULL;
    }
    *(char **)e = name;
    if (tsearch(e, root, cmp_name) == NULL) {
        free(name);
        free(e);
        return NULL;
    }
    *made = 1;
    return e;
}

/* ------------------------------------------------------------------ events */

static void event(sched *s, sched_event_kind kind, const char *name, int partition,
                  int64_t age)
{
    if (s->event_count >= SCHED_EVENTS_MAX)
        return;     /* the log is behind; the gauges still tell */
    sched_event *e = &s->events[s->event_count++];
    e->kind = kind;
    const char *sep = strchr(name, SEP);
    size_t tl = sep ? (size_t)(sep - name) : strlen(name);
    snprintf(e->topic, sizeof e->topic, "%.*s", (int)tl, name);
    snprintf(e->key, sizeof e->key, "%s", sep ? sep + 1 : "");
    e->partition = partition;
    e->age_ms = age;
}

int sched_events(sched *s, sched_event *out, int max)
{
    int n = s->event_count < max ? s->event_count : max;
    memcpy(out, s->events, (size_t)n * sizeof *out);
    memmove(s->events, s->events + n, (size_t)(s->event_count - n) * sizeof *out);
    s->event_count -= n;
    return n;
}

/* ------------------------------------------------------------------ keys */

/* Look a name up without allocating, for names that fit on the stack
 * (every name the outbox allows: topic 249, key 1024 bytes). */
static void *find2(void *root, const char *a, const char *b)
{
    char buf[1400];
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb + 2 > sizeof buf) {
        char *n = key_name(a, b);
        void *r = n ? find(root, n) : NULL;
        free(n);
        return r;
    }
    memcpy(buf, a, la);
    buf[la] = SEP;
    memcpy(buf + la + 1, b, lb + 1);
    return find(root, buf);
}

static skey *key_get(sched *s, const char *topic, const char *key)
{
    return find2(s->keys, topic, key);
}

/* The entry of a key, made if need be. */
static skey *key_make(sched *s, const char *topic, const char *key)
{
    int made = 0;
    return entry_make(&s->keys, key_name(topic, key), sizeof(skey), &made);
}

static void failing_unlink(sched *s, skey *k)
{
    if (!k->failing)
        return;
    k->failing = 0;
    if (k->fprev)
        k->fprev->fnext = k->fnext;
    else
        s->failing = k->fnext;
    if (k->fnext)
        k->fnext->fprev = k->fprev;
    k->fprev = k->fnext = NULL;
    k->failing_since = 0;
    if (k->stuck) {
        k->stuck = 0;
        s->stuck_keys--;
    }
}

/* Forget a key with nothing left to remember. Returns whether a sweep
 * skipped it (so that one should look again). */
static int key_release(sched *s, skey *k)
{
    if (k->inflight > 0 || k->unacked > 0 || k->failing)
        return 0;
    int skipped = k->skipped;
    tdelete(k, &s->keys, cmp_name);
    free(k->name);
    free(k);
    return skipped;
}

/* ------------------------------------------------------------------ partitions */

static spart *part_make(sched *s, const char *topic, int partition)
{
    int made = 0;
    spart *p = entry_make(&s->parts, part_name(topic, partition), sizeof *p, &made);
    if (made) {
        p->partition = partition;
        p->head = p->tail = -1;
    }
    return p;
}

static spart *part_find(sched *s, const char *topic, int partition)
{
    char num[16];
    snprintf(num, sizeof num, "%d", partition);
    return find2(s->parts, topic, num);
}

static int hold_ms(const sched *s)
{
    return s->cfg.stuck_ms < HOLD_MS ? s->cfg.stuck_ms : HOLD_MS;
}

/* How long partition p, with something in flight, has not answered: since
 * its oldest message in flight was produced, or its last report, whichever
 * came later. What holding it (part_held), keeping its shards
 * (quiet_shards) and calling it stuck (check_stuck) go by. */
static int64_t part_silent_ms(const sched *s, const spart *p, int64_t now)
{
    int64_t since = s->slots[p->head].produced_ms;
    if (p->last_report > since)
        since = p->last_report;
    return now - since;
}

/* A partition's share of the slots and of the producer's byte budget:
 * half of each, split among the partitions with anything in flight (and
 * of the bytes never more than an eighth: at 64 MiB, 8 MiB, plenty for
 * one partition's pace). A single partition has half the slots (one
 * stuck then leaves the other half), and however many stop answering at
 * once (a broker that leads them goes down while every partition is
 * busy), together they hold at most half of either: the ones that answer
 * keep the rest. (At least an eighth each, as before, let eight such
 * partitions take every slot and the whole byte budget; half of every
 * partition, at least batch_size, let two: the simulator's seed 52467.)
 * With 20,000 slots and a hundred partitions busy, a hundred each: far
 * more than a partition's round trip needs. */
static int part_active(const sched *s)
{
    return s->active_count > 1 ? s->active_count : 1;
}

static int part_cap(const sched *s)
{
    int cap = s->cfg.max_inflight / (2 * part_active(s));
    return cap > 1 ? cap : 1;
}

#define PART_BYTES_SHARE 8
static size_t part_bytes_cap(const sched *s)
{
    size_t active = (size_t)part_active(s);
    return s->bytes_limit / (2 * active > PART_BYTES_SHARE ? 2 * active : PART_BYTES_SHARE);
}

/* --once: sweeps made again for rows held back, at most. */
#define ONCE_HELD_SWEEPS_MAX 10000

/* Held: messages in it have had no answer for hold_ms, or it has its
 * share of the slots or of the producer's byte budget (part_cap), so that
 * partitions that stop answering leave the rest to the others. No new key
 * goes in until it answers. */
static bool part_held(const sched *s, const spart *p, int64_t now)
{
    if (p == NULL || p->inflight == 0)
        return false;
    if (p->inflight >= part_cap(s) ||
        (s->bytes_limit > 0 && p->bytes >= part_bytes_cap(s)))
        return true;
    return part_silent_ms(s, p, now) >= hold_ms(s);
}

static void part_link(sched *s, spart *p, int slot)
{
    sslot *x = &s->slots[slot];
    x->prev = p->tail;
    x->next = -1;
    if (p->tail >= 0)
        s->slots[p->tail].next = slot;
    else
        p->head = slot;
    p->tail = slot;
    p->bytes += x->bytes;
    if (p->inflight++ == 0) {
        s->active_count++;
        p->aprev = NULL;
        p->anext = s->active;
        if (s->active)
            s->active->aprev = p;
        s->active = p;
    }
}

/* Take a slot out of its partition; forget the partition when idle.
 * Returns whether a sweep skipped the partition (look again). */
static int part_unlink(sched *s, spart *p, int slot)
{
    sslot *x = &s->slots[slot];
    if (x->prev >= 0)
        s->slots[x->prev].next = x->next;
    else
        p->head = x->next;
    if (x->next >= 0)
        s->slots[x->next].prev = x->prev;
    else
        p->tail = x->prev;
    x->prev = x->next = -1;
    p->bytes -= x->bytes;
    if (--p->inflight > 0)
        return 0;
    s->active_count--;
    if (p->aprev)
        p->aprev->anext = p->anext;
    else
        s->active = p->anext;
    if (p->anext)
        p->anext->aprev = p->aprev;
    int skipped = p->skipped;
    if (p->stuck) {
        s->stuck_parts--;
        event(s, EV_PARTITION_RECOVERED, p->name, p->partition, 0);
    }
    tdelete(p, &s->parts, cmp_name);
    free(p->name);
    free(p);
    return skipped;
}

/* ------------------------------------------------------------------ life */

sched *sched_new(const sched_config *cfg)
{
    assert(cfg->max_inflight >= 1 && cfg->batch_size >= 1 && cfg->stuck_ms >= 1);
    sched *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->cfg = *cfg;
    s->slots = calloc((size_t)cfg->max_inflight, sizeof *s->slots);
    s->acks = calloc((size_t)cfg->max_inflight, sizeof *s->acks);
    s->cur_topic = strdup("");
    s->cur_key = strdup("");
    if (s->slots == NULL || s->acks == NULL || s->cur_topic == NULL || s->cur_key == NULL) {
        sched_free(s);
        return NULL;
    }
    for (int i = 0; i < cfg->max_inflight; i++) {
        s->slots[i].next = i + 1 < cfg->max_inflight ? i + 1 : -1;
        s->slots[i].prev = -1;
    }
    s->target = -1;
    s->drain_last = -1;
    s->db_ok = 1;
    s->cur_shard = -1;
    s->dirty = 1;
    return s;
}

static void free_key(void *p)
{
    skey *k = p;
    free(k->name);
    free(k);
}

static void free_part(void *p)
{
    spart *x = p;
    free(x->name);
    free(x);
}

static void free_topic(void *p)
{
    stopic *t = p;
    free(t->name);
    free(t);
}

void sched_free(sched *s)
{
    if (s == NULL)
        return;
    tdestroy(s->keys, free_key);
    tdestroy(s->parts, free_part);
    tdestroy(s->topics, free_topic);
    free(s->slots);
    free(s->acks);
    free(s->cur_topic);
    free(s->cur_key);
    free(s->blocked);
    free(s);
}

#ifdef FERRY_SCHED_TEST
void sched_set_broken(sched *s, sched_broken b) { s->broken = b; }
#endif

/* ------------------------------------------------------------------ leases */

void sched_lease_set(sched *s, int shard, int64_t epoch)
{
    assert(shard >= 0 && shard < SCHED_SHARDS_MAX && epoch > 0);
    if (s->held[shard] == 0)
        s->held_count++;
    s->held[shard] = epoch;
    s->draining_count -= s->draining[shard];
    s->draining[shard] = 0;
    s->dirty = 1;
}

void sched_lease_lost(sched *s, int shard)
{
    assert(shard >= 0 && shard < SCHED_SHARDS_MAX);
    if (s->held[shard] != 0)
        s->held_count--;
    s->held[shard] = 0;
    s->draining_count -= s->draining[shard];
    s->draining[shard] = 0;
}

int64_t sched_lease_epoch(const sched *s, int shard)
{
    return shard >= 0 && shard < SCHED_SHARDS_MAX ? s->held[shard] : 0;
}

int sched_leases_held(const sched *s) { return s->held_count; }

bool sched_shard_draining(const sched *s, int shard)
{
    return shard >= 0 && shard < SCHED_SHARDS_MAX && s->draining[shard];
}

int sched_shard_busy(const sched *s, int shard)
{
    return shard >= 0 && shard < SCHED_SHARDS_MAX ? s->busy[shard] : 0;
}

void sched_lease_target(sched *s, int target)
{
    s->target = target;
}

static void drain(sched *s, int shard, int on, int64_t now)
{
    if (s->draining[shard] == on)
        return;
    s->draining[shard] = (unsigned char)on;
    s->draining_count += on ? 1 : -1;
    s->drain_since = now;
    if (!on)
        s->dirty = 1;
}

/* Mark in s->quiet the shards with a message in flight in a partition
 * that has not answered for half of stuck_ms (2.5 s by default: a slow
 * broker's partition answers sooner): such a shard does not settle until
 * the partition answers. Walks the slots of such partitions (up to half
 * of max_inflight each), so at most every QUIET_EVERY_MS. */
#define QUIET_EVERY_MS 50
static void quiet_shards(sched *s, int64_t now)
{
    if (s->quiet_at > 0 && now - s->quiet_at < QUIET_EVERY_MS && now >= s->quiet_at)
        return;
    s->quiet_at = now;
    unsigned char *quiet = s->quiet;
    memset(quiet, 0, SCHED_SHARDS_MAX);
    for (const spart *p = s->active; p != NULL; p = p->anext) {   /* all in flight */
        if (part_silent_ms(s, p, now) < s->cfg.stuck_ms / 2)
            continue;
        for (int i = p->head; i >= 0; i = s->slots[i].next)
            quiet[s->slots[i].shard] = 1;
    }
}

/*
 * Over the target (a relay joined), give one shard back per plan: one with
 * nothing in flight or unacknowledged if there is one, at once; else stop
 * fetching the least busy one and give it back once it has settled. A
 * shard with a message in a partition that has not answered for half of
 * stuck_ms
 * is not drained (it would not settle, and its healthy keys would wait
 * meanwhile), and one that becomes so, or does not settle within
 * stuck_ms, is taken up again and another one tried: a stuck partition
 * never stalls a whole shard. Under the target, nothing drains.
 */
static int pick_release(sched *s, int64_t now)
{
    if (s->target < 0 || s->held_count <= s->target) {
        for (int i = 0; i < SCHED_SHARDS_MAX && s->draining_count > 0; i++)
            if (s->draining[i])
                drain(s, i, 0, now);
        return -1;
    }
    quiet_shards(s, now);
    const unsigned char *quiet = s->quiet;
    int best = -1;
    for (int i = 0; i < SCHED_SHARDS_MAX; i++) {
        if (!s->held[i])
            continue;
        if (s->busy[i] == 0)
            return i;
        if (!s->draining[i] && !quiet[i] && i != s->drain_last &&
            (best < 0 || s->busy[i] < s->busy[best]))
            best = i;
    }
    for (int i = 0; i < SCHED_SHARDS_MAX && s->draining_count > 0; i++)
        if (s->draining[i] && (quiet[i] || now - s->drain_since >= s->cfg.stuck_ms)) {
            drain(s, i, 0, now);
            s->drain_last = i;
        }
    if (s->draining_count == 0 && best >= 0)
        drain(s, best, 1, now);
    return -1;
}

/* ------------------------------------------------------------------ the sweep */

static void set_str(char **dst, const char *src)
{
    char *c = strdup(src);
    if (c == NULL)
        return;     /* keep the old one: a stale cursor repeats, never skips */
    free(*dst);
    *dst = c;
}

static bool blocked(const sched *s, const char *topic, const char *key);

static void sweep_start(sched *s, int64_t now)
{
    s->running = 1;
    s->sweep_id++;
    s->cur_shard = -1;
    set_str(&s->cur_topic, "");
    set_str(&s->cur_key, "");
    s->cur_seq = 0;
    free(s->blocked);
    s->blocked = NULL;
    s->dirty = 0;
    s->sweep_produced = 0;
    s->sweep_skipped = 0;
    s->sweep_acking = 0;
    s->blocked_acking = 0;
    s->sweep_failed = 0;
    s->sweep_held = 0;
    s->sweep_started = now;
    s->next_look = 0;
}

void sched_cursor(const sched *s, int *shard, const char **topic, const char **key,
                  int64_t *seq)
{
    *shard = s->cur_shard;
    *topic = s->cur_topic;
    *key = s->cur_key;
    *seq = s->cur_seq;
}

void sched_advance(sched *s, int shard, const char *topic, const char *key, int64_t seq)
{
    /* Past a skipped key at once: the rest of its rows, however many, are
     * skipped too, so the next batch starts at the next key instead of
     * bringing them (a stuck partition's backlog would otherwise be read
     * again by every sweep). */
    if (blocked(s, topic, key))
        seq = INT64_MAX;
    s->cur_shard = shard;
    /* Mostly the same key as before, a position further: no copies. */
    if (strcmp(s->cur_topic, topic) != 0)
        set_str(&s->cur_topic, topic);
    if (strcmp(s->cur_key, key) != 0)
        set_str(&s->cur_key, key);
    s->cur_seq = seq;
}

static void rate_count(sched *s, int rows, int64_t now)
{
    if (now - s->win_start >= RATE_WINDOW_MS) {
        int64_t span = now - s->win_start;
        /* A long quiet spell is a rate of zero, not of the last window. */
        s->rate = span > 2 * RATE_WINDOW_MS ? 0 : (int)((int64_t)s->win_rows * 1000 / span);
        s->win_start = now;
        s->win_rows = 0;
    }
    s->win_rows += rows;
}

void sched_fetched(sched *s, int rows, int limit, int64_t now)
{
    if (rows < limit) {
        s->running = 0;
        s->sweeps++;
        s->last_produced = s->sweep_produced;
        s->last_skipped = s->sweep_skipped;
        s->last_acking = s->sweep_acking;
        if (s->sweep_produced > 0)
            s->last_rows_ms = now;
    }
}

int sched_fetch_exclude(const sched *s, unsigned char (*ids)[16], int max)
{
    if (s->used > max)
        return 0;
    int n = 0;
    /* In flight: the partitions' lists; delivered: the ack queue (a
     * delivered slot has left its partition's list). */
    for (const spart *p = s->active; p != NULL; p = p->anext)
        for (int i = p->head; i >= 0 && n < max; i = s->slots[i].next)
            memcpy(ids[n++], s->slots[i].id, 16);
    for (int j = 0; j < s->ack_count && n < max; j++)
        memcpy(ids[n++], s->slots[s->acks[j]].id, 16);
    return n;
}

void sched_dirty(sched *s) { s->dirty = 1; }

int sched_sweeps(const sched *s) { return s->sweeps; }

/* ------------------------------------------------------------------ topics */

void sched_topic_partitions(sched *s, const char *topic, int count)
{
    int made = 0;
    stopic *t = entry_make(&s->topics, strdup(topic), sizeof *t, &made);
    if (t != NULL)
        t->partitions = count;
}

int sched_topic_partition_count(const sched *s, const char *topic)
{
    stopic *t = find(s->topics, topic);
    return t ? t->partitions : 0;
}

/* ------------------------------------------------------------------ admission */

static bool blocked(const sched *s, const char *topic, const char *key)
{
    if (s->blocked == NULL)
        return false;
    size_t t = strlen(topic);
    return strncmp(s->blocked, topic, t) == 0 && s->blocked[t] == SEP &&
           strcmp(s->blocked + t + 1, key) == 0;
}

static void block(sched *s, const char *topic, const char *key)
{
    char *n = key_name(topic, key);
    if (n == NULL)
        return;
    free(s->blocked);
    s->blocked = n;
    s->blocked_acking = 0;
}

/* The producer holds as many bytes in flight as it may: no more rows
 * until reports free some. Never with nothing in flight, so that a row
 * larger than the limit goes out alone. */
static bool bytes_full(const sched *s)
{
    return s->bytes_limit > 0 && s->inflight_bytes > 0 && s->inflight_bytes >= s->bytes_limit;
}

sched_admit sched_admit_row(sched *s, int shard, const char *topic, const char *key,
                            int partition, int ready, int64_t now, sched_skip *why)
{
    sched_skip w = SKIP_NONE;
    sched_admit a = ADMIT_SKIP;
    skey *k = NULL;
    if (shard < 0 || shard >= SCHED_SHARDS_MAX || s->held[shard] == 0 || s->draining[shard]) {
        /* Blocked like any other skip: a shard served again before the
         * sweep ends must not resume its keys halfway. */
        w = SKIP_SHARD;
        block(s, topic, key);
        goto out;
    }
    if (blocked(s, topic, key)) {
        w = SKIP_BLOCKED;
        s->sweep_acking += s->blocked_acking;
        goto out;
    }
    k = key_get(s, topic, key);
    if (k != NULL && k->inflight + k->unacked > 0 && k->sweep != s->sweep_id) {
        w = SKIP_BUSY;
        k->skipped = 1;
        block(s, topic, key);
        /* Delivered, only its acknowledgement pending: gone within a
         * commit, not a reason to look again less often (see
         * sched_plan_next, SKIPPY_LOOK_MS). */
        if (k->inflight == 0 && k->failures == 0) {
            s->blocked_acking = 1;
            s->sweep_acking++;
        }
        goto out;
    }
    if (k != NULL && (k->retry_at > now || k->failed_sweep == s->sweep_id) &&
        !(BROKEN(s, SCHED_BROKEN_RESEND_AHEAD) && k->sweep == s->sweep_id)) {
        w = SKIP_FAILING;
        goto skip_key;
    }
    /* At most batch_size rows of one key a sweep: a key with a long
     * backlog must not hold every key after it in the sweep's order back
     * until it has drained (the simulator found that at 10x its seeds).
     * Its rest goes with the next sweep, from its first unacknowledged
     * row. Not with --once, which sweeps once. */
    if (!s->cfg.once && k != NULL && k->sweep == s->sweep_id &&
        k->sweep_rows >= s->cfg.batch_size) {
        w = SKIP_BLOCKED;
        goto skip_key;
    }
    if (!ready) {
        w = SKIP_DELAYED;
        block(s, topic, key);
        goto out;
    }
    spart *p = part_find(s, topic, partition);
    /* Also a key already in flight in this sweep: its rest waits for a
     * later sweep, which resumes it at its first unacknowledged row. */
    if (part_held(s, p, now)) {
        p->skipped = 1;
        s->sweep_held = 1;
        w = SKIP_PARTITION;
        block(s, topic, key);
        goto out;
    }
    if (s->used >= s->cfg.max_inflight || s->free_slot < 0 || bytes_full(s)) {
        a = ADMIT_NO_ROOM;
        goto out;
    }
    a = ADMIT_PRODUCE;
    goto out;
skip_key:
    k->skipped = 1;
    block(s, topic, key);
out:
    if (a == ADMIT_SKIP)
        s->sweep_skipped++;
    if (why != NULL)
        *why = w;
    return a;
}

int sched_produced(sched *s, int shard, const char *topic, const char *key, int partition,
                   const unsigned char id[16], int64_t created_ms, size_t bytes, unsigned gen,
                   int64_t now)
{
    if (s->free_slot < 0)
        return -1;
    skey *k = key_make(s, topic, key);
    spart *p = k ? part_make(s, topic, partition) : NULL;
    if (p == NULL) {
        if (k != NULL)
            key_release(s, k);
        return -1;
    }
    int i = s->free_slot;
    sslot *x = &s->slots[i];
    s->free_slot = x->next;
    memcpy(x->id, id, 16);
    x->key = k;
    x->part = p;
    x->shard = shard;
    x->epoch = s->held[shard];
    x->produced_ms = now;
    x->created_ms = created_ms;
    x->bytes = bytes;
    x->gen = gen;
    x->state = SLOT_INFLIGHT;
    s->inflight_bytes += bytes;
    k->inflight++;
    if (k->sweep != s->sweep_id)
        k->sweep_rows = 0;
    k->sweep = s->sweep_id;
    k->sweep_rows++;
    part_link(s, p, i);
    s->busy[shard]++;
    s->used++;
    s->inflight++;
    s->sweep_produced++;
    rate_count(s, 1, now);
    if (BROKEN(s, SCHED_BROKEN_ACK_ON_PRODUCE)) {
        /* Deliberately wrong: the ack is queued before any report. */
        s->acks[s->ack_count++] = i;
        k->unacked++;
    }
    return i;
}

static int64_t retry_after(int failures)
{
    int64_t d = RETRY_BASE_MS;
    for (int i = 1; i < failures && d < RETRY_MAX_MS; i++)
        d *= 2;
    return d < RETRY_MAX_MS ? d : RETRY_MAX_MS;
}

/* A message of k failed. Its later rows may already be behind the cursor
 * or in the next batch of this sweep: none of them goes out before it. The
 * retry time grows once per sweep that fails, not per message (a purge
 * fails a whole run of a key at once); lost (a purge: nobody's fault) is
 * retried at once. */
static void key_failed(sched *s, skey *k, int lost, int64_t now)
{
    int again = k->failed_sweep == s->sweep_id && k->failures > 0;
    if (!BROKEN(s, SCHED_BROKEN_RESEND_AHEAD))
        k->failed_sweep = s->sweep_id;
    if (!lost && !again)
        k->failures++;
    int64_t at = lost ? now : now + retry_after(k->failures > 0 ? k->failures : 1);
    if (at > k->retry_at)
        k->retry_at = at;
    k->skipped = 1;
    if (!k->failing) {
        k->failing = 1;
        k->failing_since = now;
        k->fprev = NULL;
        k->fnext = s->failing;
        if (s->failing)
            s->failing->fprev = k;
        s->failing = k;
    }
    /* With --once, a lost message is sent again by another sweep; one
     * that failed for its own reason is counted in the database and waits
     * for the next run (ferry-relay's exit status says so). */
    if (lost)
        s->sweep_failed = 1;
}

void sched_produce_failed(sched *s, const char *topic, const char *key, int64_t now)
{
    block(s, topic, key);
    skey *k = key_make(s, topic, key);
    if (k != NULL)
        key_failed(s, k, 0, now);
}

/* ------------------------------------------------------------------ reports */

static void slot_free(sched *s, int i)
{
    sslot *x = &s->slots[i];
    s->busy[x->shard]--;
    x->state = SLOT_FREE;
    x->key = NULL;
    x->part = NULL;
    x->next = s->free_slot;
    x->prev = -1;
    s->free_slot = i;
    s->used--;
}

void sched_delivered(sched *s, int i, int ok, int64_t now)
{
    assert(i >= 0 && i < s->cfg.max_inflight);
    sslot *x = &s->slots[i];
    if (x->state != SLOT_INFLIGHT)
        return;     /* a report after sched_inflight_lost(): already failed */
    skey *k = x->key;
    spart *p = x->part;
    s->inflight--;
    if (ok > 0 || !BROKEN(s, SCHED_BROKEN_BYTES_KEPT))
        s->inflight_bytes -= x->bytes;
    k->inflight--;
    int again = 0;
    if (ok > 0) {
        /* The partition answered: it is neither stuck nor held now, and
         * the keys a sweep skipped for it may go. */
        p->last_report = now;
        if (p->stuck) {
            p->stuck = 0;
            s->stuck_parts--;
            event(s, EV_PARTITION_RECOVERED, p->name, p->partition, 0);
        }
        again |= p->skipped;
        p->skipped = 0;
    }
    again |= part_unlink(s, p, i);     /* p may be gone now */
    if (ok > 0) {
        k->failures = 0;
        k->retry_at = 0;
        if (k->stuck)
            event(s, EV_KEY_RECOVERED, k->name, -1, now - k->failing_since);
        failing_unlink(s, k);
        x->state = SLOT_DELIVERED;
        if (!BROKEN(s, SCHED_BROKEN_ACK_ON_PRODUCE)) {
            k->unacked++;
            s->acks[s->ack_count++] = i;
        }
    } else {
        key_failed(s, k, ok < 0, now);
        if (BROKEN(s, SCHED_BROKEN_ACK_ON_PRODUCE)) {
            x->state = SLOT_DELIVERED;      /* its ack is queued already */
        } else {
            slot_free(s, i);
            again |= key_release(s, k);
        }
    }
    if (again)
        s->dirty = 1;
}

void sched_inflight_lost(sched *s, int64_t now)
{
    for (int i = 0; i < s->cfg.max_inflight; i++)
        if (s->slots[i].state == SLOT_INFLIGHT)
            sched_delivered(s, i, -1, now);
}

int sched_inflight(const sched *s) { return s->inflight; }

void sched_bytes_limit(sched *s, size_t limit) { s->bytes_limit = limit; }

size_t sched_inflight_bytes(const sched *s) { return s->inflight_bytes; }

int sched_slot_info(const sched *s, int i, unsigned char id[16], int *shard, int64_t *epoch,
                    unsigned *gen, int64_t *created_ms)
{
    if (i < 0 || i >= s->cfg.max_inflight || s->slots[i].state == SLOT_FREE)
        return -1;
    const sslot *x = &s->slots[i];
    if (id)
        memcpy(id, x->id, 16);
    if (shard)
        *shard = x->shard;
    if (epoch)
        *epoch = x->epoch;
    if (gen)
        *gen = x->gen;
    if (created_ms)
        *created_ms = x->created_ms;
    return 0;
}

/* ------------------------------------------------------------------ acks */

int sched_ack_pending(const sched *s) { return s->ack_count - s->ack_sent; }
int sched_ack_in_flight(const sched *s) { return s->ack_sent; }

void sched_ack_item(const sched *s, int i, unsigned char id[16], int *shard, int64_t *epoch)
{
    assert(i >= 0 && i < s->ack_count);
    const sslot *x = &s->slots[s->acks[i]];
    memcpy(id, x->id, 16);
    *shard = x->shard;
    *epoch = x->epoch;
}

void sched_ack_sent(sched *s, int n, int64_t now)
{
    assert(s->ack_sent == 0 && n <= s->ack_count);
    s->ack_sent = n;
}

void sched_ack_done(sched *s, int ok, int64_t now)
{
    int n = s->ack_sent;
    s->ack_sent = 0;
    if (!ok) {
        s->ack_retry_at = now + ACK_RETRY_MS;
        return;
    }
    int again = 0;
    for (int j = 0; j < n; j++) {
        int i = s->acks[j];
        sslot *x = &s->slots[i];
        skey *k = x->key;
        k->unacked--;
        if (BROKEN(s, SCHED_BROKEN_ACK_ON_PRODUCE) && x->state == SLOT_INFLIGHT) {
            /* Acknowledged before its report: the report finds it gone. */
            s->inflight--;
            s->inflight_bytes -= x->bytes;
            k->inflight--;
            part_unlink(s, x->part, i);
        }
        slot_free(s, i);
        again |= key_release(s, k);
    }
    s->ack_count -= n;
    memmove(s->acks, s->acks + n, (size_t)s->ack_count * sizeof *s->acks);
    if (again)
        s->dirty = 1;
}

/* ------------------------------------------------------------------ db, wake-ups */

void sched_db_state(sched *s, int ok)
{
    if (ok && !s->db_ok) {
        s->dirty = 1;
        s->wake_known = 0;      /* a restarted server may have another flag */
        s->handshake = 0;
    }
    s->db_ok = ok;
    if (!ok && s->ack_sent > 0)
        sched_ack_done(s, 0, 0);
}

void sched_wake_set(sched *s, int on)
{
    s->wake_on = on;
    s->wake_known = 1;
    s->handshake = on;
    s->handshake_tries = 0;
    s->handshake_at = 0;
}

void sched_handshake(sched *s, int got, int64_t now)
{
    if (!s->handshake)
        return;
    if (got) {
        /* No writer that read the flag off is still open: one last look
         * sees all of them, and every later one notifies. */
        s->handshake = 0;
        s->dirty = 1;
        return;
    }
    int64_t d = (int64_t)1 << (s->handshake_tries < 5 ? s->handshake_tries : 5);
    s->handshake_tries++;
    s->handshake_at = now + (d < HANDSHAKE_MAX_MS ? d : HANDSHAKE_MAX_MS);
    s->dirty = 1;       /* and look meanwhile: the writer may have committed */
}

void sched_stop(sched *s, int64_t now)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->stop_deadline = now + s->cfg.stop_grace_ms;
}

/* ------------------------------------------------------------------ stuck */

static void check_stuck(sched *s, int64_t now)
{
    for (spart *p = s->active; p != NULL; p = p->anext) {
        int64_t age = now - s->slots[p->head].produced_ms;
        if (!p->stuck && part_silent_ms(s, p, now) >= s->cfg.stuck_ms) {
            p->stuck = 1;
            s->stuck_parts++;
            event(s, EV_PARTITION_STUCK, p->name, p->partition, age);
        }
    }
    for (skey *k = s->failing; k != NULL; k = k->fnext) {
        if (!k->stuck && now - k->failing_since >= s->cfg.stuck_ms) {
            k->stuck = 1;
            s->stuck_keys++;
            event(s, EV_KEY_STUCK, k->name, -1, now - k->failing_since);
        }
    }
}

/* Failing keys whose retry time has come, and whose entries can go: a key
 * with nothing in flight is forgotten once it is due again, so that a key
 * whose rows went away (dead-lettered, discarded) does not stay for ever;
 * its next failure starts its count again, bounded by max_attempts in the
 * database. Returns the next retry time, or 0. */
static int64_t retries_due(sched *s, int64_t now)
{
    int64_t next = 0;
    for (skey *k = s->failing, *n; k != NULL; k = n) {
        n = k->fnext;
        if (k->retry_at > now) {
            if (next == 0 || k->retry_at < next)
                next = k->retry_at;
            continue;
        }
        if (k->skipped) {
            s->dirty = 1;
            k->skipped = 0;
        }
        if (k->inflight == 0 && k->unacked == 0 && !s->running &&
            now - k->retry_at >= s->cfg.poll_interval_ms) {
            /* Due for a whole poll interval and not seen again: its rows
             * went away. Not "recovered": a dead-lettered message parks
             * its key, which is then anything but (an outside audit). */
            if (k->stuck)
                event(s, EV_KEY_LEFT, k->name, -1, now - k->failing_since);
            failing_unlink(s, k);
            key_release(s, k);
        }
    }
    return next;
}

/* ------------------------------------------------------------------ the plan */

static bool settled(const sched *s)
{
    return s->used == 0 && s->ack_count == 0;
}

/* Something is in flight, and only in partitions check_stuck() has found
 * stuck (no answer for stuck_ms); nothing delivered waits to be
 * acknowledged. */
static bool only_stuck_in_flight(const sched *s)
{
    if (s->inflight == 0 || s->used != s->inflight)
        return false;
    for (const spart *p = s->active; p != NULL; p = p->anext)   /* all in flight */
        if (!p->stuck)
            return false;
    return true;
}

static void at_most(int *timeout, int64_t at, int64_t now)
{
    if (at <= 0)
        return;
    int64_t d = at - now;
    if (d < 0)
        d = 0;
    if (d < *timeout)
        *timeout = (int)d;
}

void sched_plan_next(sched *s, int64_t now, sched_plan *out)
{
    memset(out, 0, sizeof *out);
    out->release_shard = -1;
    out->timeout_ms = 1000;
    check_stuck(s, now);
    int64_t next_retry = retries_due(s, now);
    rate_count(s, 0, now);

    /* Acknowledge what is delivered: one statement at a time, so a slow
     * database makes them larger, not more numerous. */
    if (s->db_ok && s->ack_sent == 0 && s->ack_count > 0) {
        if (now >= s->ack_retry_at)
            out->send_ack = 1;
        else
            at_most(&out->timeout_ms, s->ack_retry_at, now);
    }

    if (s->stopping) {
        if (settled(s)) {
            out->stop = 1;
            out->stop_clean = 1;
        } else if (now >= s->stop_deadline) {
            out->stop = 1;
        }
        at_most(&out->timeout_ms, s->stop_deadline, now);
        if (out->timeout_ms > 100)
            out->timeout_ms = 100;
        return;
    }

    if (s->db_ok)
        out->release_shard = pick_release(s, now);

    if (!s->db_ok) {
        out->timeout_ms = 50;
        return;
    }

    /* Wake-ups: writers notify unless the relay is busy enough to look
     * again at once; see relay_wake.c. */
    int64_t quiet = now - s->last_rows_ms;
    if (!s->cfg.once) {
        /* Rows at rate or more: in the last whole window, in the window
         * so far, or at twice it over 20 ms or more of it. Whatever is at
         * BUSY_RATE is at IDLE_RATE: a turn off is never undone in the
         * same instant. */
        int64_t span = now - s->win_start;
        int64_t rate = !s->wake_known || s->wake_on ? BUSY_RATE : IDLE_RATE;
        int busy = (s->rate >= rate || s->win_rows * 1000 >= rate * RATE_WINDOW_MS ||
                    (span >= RATE_MIN_SPAN_MS && s->win_rows * 1000 >= 2 * rate * span)) &&
                   quiet < IDLE_GRACE_MS;
        if (!s->wake_known)
            out->wake = busy ? -1 : 1;
        else if (busy && s->wake_on)
            out->wake = -1;
        else if (!busy && !s->wake_on)
            out->wake = 1;
    }

    if (s->cfg.once) {
        if (s->running) {
            /* nothing */
        } else if (settled(s)) {
            if (s->sweep_failed && s->sweeps - s->held_sweeps < s->cfg.max_attempts) {
                if (next_retry == 0)
                    sweep_start(s, now);      /* every failed key is due */
            } else if (s->sweep_held && !s->sweep_failed && s->last_produced > 0 &&
                       s->held_sweeps < ONCE_HELD_SWEEPS_MAX) {
                /* Rows skipped only because their partition had its share
                 * of the slots or bytes, or had not answered for a while:
                 * nothing is in flight now, so the next sweep takes at
                 * least the first of each (and so --once ends). Not
                 * counted as a retry of lost messages; bounded, for
                 * writers that feed such a partition as fast as it goes. */
                s->held_sweeps++;
                sweep_start(s, now);
            } else if (s->sweeps > 0) {
                out->stop = 1;
                out->stop_clean = !s->sweep_failed && !s->sweep_held;
                return;
            } else {
                sweep_start(s, now);
            }
        } else if (s->ack_count == 0 && only_stuck_in_flight(s)) {
            /* Everything left is in flight in partitions that have not
             * answered for stuck_ms (message.timeout.ms is 0: they would
             * wait for ever). --once does what is ready and ends: it gives
             * up on them, unclean; their rows stay in the outbox for the
             * next run, which sends them again (duplicates, never a loss). */
            out->stop = 1;
            out->stop_stuck = 1;
            return;
        }
    } else if (!s->running) {
        int look = s->dirty, timed = 0;
        /* Not when this plan turns wake-ups off: that ends the handshake. */
        if (s->handshake && now >= s->handshake_at && out->wake >= 0) {
            out->try_handshake = 1;
        }
        if (!s->wake_on || s->handshake) {
            /* Writers may not notify (or one that read the flag off may
             * still be open): look again soon, every BUSY_LOOK_MS while
             * rows came lately, then less often. */
            if (s->next_look == 0) {
                int64_t d = BUSY_LOOK_MS;
                for (int64_t q = quiet; q >= IDLE_GRACE_MS && d < HANDSHAKE_MAX_MS; q /= 2)
                    d *= 2;
                /* A sweep that mostly reads rows it must skip (a stuck
                 * partition's keys) is not worth repeating every
                 * millisecond: the database's time is the writers'. Rows
                 * whose key waits only for its acknowledgement do not
                 * count: at 2,000 rows/s every sweep reads the tens of
                 * rows of the statement in flight, and once that took
                 * over ~30 ms every look came 8 ms late. */
                if (s->last_skipped - s->last_acking > 8 * (s->last_produced + 8) &&
                    d < SKIPPY_LOOK_MS)
                    d = SKIPPY_LOOK_MS;
                s->next_look = now + d;
            }
            if (now >= s->next_look)
                timed = 1;
            else
                at_most(&out->timeout_ms, s->next_look, now);
        }
        if (now - s->sweep_started >= s->cfg.poll_interval_ms)
            timed = 1;
        if (timed && !look) {
            look = 1;
            out->polled = 1;
        }
        if (BROKEN(s, SCHED_BROKEN_WAIT_ALL) && !settled(s))
            look = out->polled = 0;
        if (look)
            sweep_start(s, now);
        else
            at_most(&out->timeout_ms, s->sweep_started + s->cfg.poll_interval_ms, now);
    }

    if (s->running) {
        int room = s->cfg.max_inflight - s->used;
        if (s->held_count == 0) {
            sched_fetched(s, 0, 1, now);
        } else if (room > 0 && !bytes_full(s)) {
            out->fetch = 1;
            out->limit = room < s->cfg.batch_size ? room : s->cfg.batch_size;
            out->timeout_ms = 0;
        }
        /* else: no room (slots, or the producer's bytes); a report or an
         * ack frees some and wakes us. */
    }
    /* The handshake's time, when it can be tried then (not during a
     * sweep, which a report or an ack moves on; never with --once): a
     * wait cut to a time at which nothing is done spun the loop. */
    if (s->handshake && !s->running && !s->cfg.once)
        at_most(&out->timeout_ms, s->handshake_at > 0 ? s->handshake_at : now, now);
    at_most(&out->timeout_ms, next_retry, now);
    /* Stuck checks once a second while anything is out. */
    if (s->inflight > 0 && out->timeout_ms > 250)
        out->timeout_ms = 250;
}

/* ------------------------------------------------------------------ stats */

void sched_stats_get(const sched *s, int64_t now, sched_stats *out)
{
    memset(out, 0, sizeof *out);
    out->inflight = s->inflight;
    out->unacked = s->used - s->inflight;
    out->stuck_partitions = s->stuck_parts;
    out->stuck_keys = s->stuck_keys;
    for (const spart *p = s->active; p != NULL; p = p->anext) {
        int64_t age = now - s->slots[p->head].produced_ms;
        if (age > out->oldest_inflight_ms)
            out->oldest_inflight_ms = age;
        if (p->stuck && out->stuck_reason[0] == '\0') {
            const char *sep = strchr(p->name, SEP);
            int tl = sep ? (int)(sep - p->name) : (int)strlen(p->name);
            if (p->partition >= 0)
                snprintf(out->stuck_reason, sizeof out->stuck_reason,
                         "partition %.*s/%d stuck for %lld s (%d in flight)", tl, p->name,
                         p->partition, (long long)(age / 1000), p->inflight);
            else
                snprintf(out->stuck_reason, sizeof out->stuck_reason,
                         "topic %.*s stuck for %lld s (%d in flight, partitions unknown)", tl,
                         p->name, (long long)(age / 1000), p->inflight);
        }
    }
    for (const skey *k = s->failing; k != NULL && out->stuck_reason[0] == '\0'; k = k->fnext)
        if (k->stuck) {
            const char *sep = strchr(k->name, SEP);
            int tl = sep ? (int)(sep - k->name) : (int)strlen(k->name);
            snprintf(out->stuck_reason, sizeof out->stuck_reason,
                     "key %.*s/%.80s stuck for %lld s (failing)", tl, k->name,
                     sep ? sep + 1 : "", (long long)((now - k->failing_since) / 1000));
        }
}
