/*
 * test_saga_sim.c — the saga engine (lib/saga_step.c) under a seeded,
 * deterministic simulation, plus a few scripted cases.
 *
 * Each seed builds a random definition (1..8 steps, maybe a pivot, random
 * timeouts, attempts and backoff, a tight or loose deadline) and random
 * "weather" (fault rates), then drives the real ferry_saga_step() with:
 *
 *   - a simulated database: the stored saga state and its revision. The
 *     orchestrator may crash before its transaction commits (the event
 *     comes back: Kafka redelivers a reply, the reconciler re-fires a
 *     timer, the user repeats a cancel), after it commits but before the
 *     event was acknowledged (the event is processed twice), or after it
 *     stored the state but before the commands went out (they are lost);
 *     and two workers may race on one saga, the loser's UPDATE ... WHERE
 *     revision = old failing (it retries with the fresh state).
 *   - a simulated broker: every message may be duplicated, delayed (some
 *     far beyond any timeout), reordered, or lost.
 *   - simulated participants that follow the participant rule: a command
 *     is processed at most once per idempotency key (saga, step, kind,
 *     round) and its outcome recorded, so a duplicate gets the recorded
 *     answer; compensating a step never run is a no-op that leaves a
 *     tombstone; an action arriving after its step's compensation is
 *     refused. They refuse actions and compensations at random.
 *   - timers that fire early or late (the step function must judge by
 *     now_ms), timers lost with a crashed worker, stale timers firing,
 *     and the reconciler's periodic sweep that fires any deadline due.
 *   - random cancels.
 *
 * After STORM_EVENTS events the weather turns calm (no new faults; what is
 * already in flight still arrives) and the saga must finish within
 * EVENTS_MAX events in all: no livelock. Then everything still in flight
 * is delivered and the invariants are checked against what the
 * participants actually did (see check_outcome()).
 *
 * No rand(), no clock, no pointers in the output: FERRY_SIM_SEED=n replays
 * one seed byte for byte, FERRY_SIM_TRACE=1 prints its trace.
 * FERRY_SIM_SEEDS=n runs seeds 0..n-1 (default 50,000) and stops at the
 * first failure, printing its seed and the command that replays it.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ferry.h"
#include "tu_sim.h"

/* ------------------------------------------------------------ limits */

#define SIM_STEPS_MAX   8
#define SIM_ITEMS_MAX   2048
#define SIM_RECORDS_MAX 2048
#define STORM_EVENTS    100     /* faults are injected up to here */
#define EVENTS_MAX      1500    /* the saga must have finished by here */
#define DRAIN_MAX       20000   /* events in all, late deliveries included */
#define T0              INT64_C(1700000000000)
#define SIM_SEEDS_DEFAULT 50000 /* ~1 s under ASan; `make test` wants >= 10,000 */

_Static_assert(SIM_STEPS_MAX <= FERRY_SAGA_STEPS_MAX, "the engine's limit");
_Static_assert(STORM_EVENTS < EVENTS_MAX && EVENTS_MAX < DRAIN_MAX, "phases in order");

/* -------------------------------------------------------------- PRNG */

/* splitmix64: tiny, and the whole simulation's randomness. */
static uint64_t rnd_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------- world */

typedef enum item_kind { IT_COMMAND, IT_REPLY, IT_TIMER, IT_SWEEP, IT_CANCEL } item_kind;

/* Something in flight: a message in the broker, a timer, a user's call. */
typedef struct item {
    int64_t at;                 /* not before */
    uint8_t kind;               /* item_kind */
    uint8_t command;            /* ferry_saga_command_kind */
    uint8_t ok;                 /* IT_REPLY: applied */
    uint8_t tries;              /* IT_CANCEL: repeats left */
    uint32_t step, round, attempt;
    uint32_t gen;               /* IT_TIMER: the arming it belongs to */
} item;

/* A participant's dedupe record: the outcome of one key. */
typedef struct record {
    uint32_t step, round;
    uint8_t command, ok;
} record;

/* What the participant of one step actually did. */
typedef struct pstep {
    int applied;                /* action effects */
    int undone;                 /* compensations that undid an effect */
    int compensated;            /* compensations executed (undo or no-op) */
    int tombstone;              /* compensated: later actions are refused */
    uint64_t apply_seq, comp_seq;
} pstep;

/* Fault rates, per mille, and time scales, ms; drawn per seed. */
typedef struct weather {
    unsigned dup, loss, late, crash_before, crash_after, partial, conflict, timer_loss,
        early, stale_timer, fail_action, fail_comp, part_crash;
    int64_t delay_max, late_max, reorder, early_max, timer_late_max, sweep_every;
} weather;

/* Fault probes over all seeds: each must fire somewhere in a full run,
 * or the simulator is not testing what it claims. */
#define PROBES(X)                                                                \
    X(dup) X(loss) X(late) X(reordered) X(crash_before) X(crash_after) X(partial) \
    X(conflict) X(timer_loss) X(early_timer) X(stale_timer) X(part_crash)        \
    X(ignored_stale_reply) X(ignored_early) X(ignored_finished)                  \
    X(ignored_compensating) X(dedup_answered) X(refused_after_comp)              \
    X(tombstone_noop) X(action_refused) X(comp_refused) X(forward_retry)        \
    X(comp_retry) X(cancel_applied) X(cancel_refused_pivot)                      \
    X(cancel_refused_retriable) X(cancel_refused_finished) X(why_failed)         \
    X(why_timed_out) X(why_cancelled) X(why_deadline) X(completed)              \
    X(compensated) X(with_pivot) X(sweep_fired) X(calm)

typedef struct probes {
#define P_(name) uint64_t name;
    PROBES(P_)
#undef P_
} probes;

typedef struct sim {
    uint64_t seed, rng;
    int trace, hashing, calm, failed;
    uint64_t trace_hash;
    char why[512];
    weather w;

    ferry_saga_def def;
    ferry_saga_step_def steps[SIM_STEPS_MAX];

    int64_t now;
    uint64_t events;

    /* the database */
    ferry_saga_state db;
    int finishes;
    uint32_t timer_gen;

    item items[SIM_ITEMS_MAX];
    size_t n_items;

    pstep ps[SIM_STEPS_MAX];
    record recs[SIM_RECORDS_MAX];
    size_t n_recs;
    uint64_t seq;
    uint32_t comp_order[SIM_RECORDS_MAX];
    size_t n_comp_order;

    probes p;
} sim;

static sim S;                    /* one world at a time; ~200 KB */
static probes total;
static const char *prog = "build/asan/tests/test_saga_sim";

static uint64_t below(sim *s, uint64_t n) { return n ? rnd_next(&s->rng) % n : 0; }
static int64_t range(sim *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t)below(s, (uint64_t)(hi - lo + 1));
}
/* A fault with this per-mille rate happens now? Never once calm. */
static int fault(sim *s, unsigned permille) { return !s->calm && below(s, 1000) < permille; }
static int chance(sim *s, unsigned permille) { return below(s, 1000) < permille; }

static void trace(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void trace(sim *s, const char *fmt, ...)
{
    if (!s->trace && !s->hashing)
        return;
    char line[512];
    int off = snprintf(line, sizeof line, "%8" PRId64 " ", s->now - T0);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + off, sizeof line - (size_t)off, fmt, ap);
    va_end(ap);
    if (s->trace)
        puts(line);
    /* FNV-1a over the trace, to show that a seed replays byte for byte. */
    for (const char *c = line; *c != '\0'; c++)
        s->trace_hash = (s->trace_hash ^ (unsigned char)*c) * 0x100000001b3ULL;
}

/* Record the first failure of this seed; returns 1 for `return sim_fail(...)`. */
static int sim_fail(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sim_fail(sim *s, const char *fmt, ...)
{
    if (s->failed)
        return 1;
    s->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof s->why, fmt, ap);
    va_end(ap);
    trace(s, "FAILED: %s", s->why);
    return 1;
}

static void enqueue(sim *s, const item *it)
{
    if (s->n_items == SIM_ITEMS_MAX) {
        sim_fail(s, "simulator queue full");
        return;
    }
    s->items[s->n_items++] = *it;
}

/* Hand a message to the broker: maybe duplicated, lost, late. */
static void broker_send(sim *s, item it, int64_t delay)
{
    int copies = 1;
    if (fault(s, s->w.dup)) {
        copies += 1 + (int)below(s, 2);
        s->p.dup++;
    }
    for (int i = 0; i < copies; i++) {
        if (fault(s, s->w.loss)) {
            s->p.loss++;
            trace(s, "  broker: lost a %s", it.kind == IT_COMMAND ? "command" : "reply");
            continue;
        }
        int64_t d = delay + range(s, 0, s->w.delay_max);
        if (fault(s, s->w.late)) {
            d += range(s, 1, s->w.late_max);
            s->p.late++;
        }
        item c = it;
        c.at = s->now + d;
        enqueue(s, &c);
    }
}

/* Take the next item: the earliest, or (reordering) any due within the
 * window after it. */
static item take(sim *s)
{
    size_t first = 0;
    for (size_t i = 1; i < s->n_items; i++)
        if (s->items[i].at < s->items[first].at)
            first = i;
    int64_t limit = s->items[first].at + (s->calm ? 0 : s->w.reorder);
    size_t due = 0;
    for (size_t i = 0; i < s->n_items; i++)
        due += s->items[i].at <= limit;
    size_t k = (size_t)below(s, due), pick = first;
    for (size_t i = 0; i < s->n_items; i++)
        if (s->items[i].at <= limit && k-- == 0) {
            pick = i;
            break;
        }
    if (pick != first)
        s->p.reordered++;
    item it = s->items[pick];
    s->items[pick] = s->items[--s->n_items];
    if (it.at > s->now)
        s->now = it.at;
    return it;
}

static void arm_timer(sim *s, int64_t at, int allow_early)
{
    if (fault(s, s->w.timer_loss)) {
        s->p.timer_loss++;
        trace(s, "  timer lost (worker crashed)");
        return;
    }
    int64_t j = range(s, 0, s->w.timer_late_max);
    if (allow_early && fault(s, s->w.early)) {
        j = -range(s, 1, s->w.early_max);
        s->p.early_timer++;
    }
    item t = {.kind = IT_TIMER, .at = at + j, .gen = s->timer_gen};
    enqueue(s, &t);
}

/* ------------------------------------------------------ participants */

static record *find_record(sim *s, uint32_t step, uint8_t command, uint32_t round)
{
    for (size_t i = 0; i < s->n_recs; i++)
        if (s->recs[i].step == step && s->recs[i].command == command
            && s->recs[i].round == round)
            return &s->recs[i];
    return NULL;
}

static void participate(sim *s, const item *cmd)
{
    if (fault(s, s->w.part_crash)) {
        /* Its transaction rolled back; Kafka delivers the command again. */
        s->p.part_crash++;
        item again = *cmd;
        again.at = s->now + range(s, 1, 50);
        trace(s, "  participant %u crashed, command comes again", cmd->step);
        enqueue(s, &again);
        return;
    }
    const char *kind = ferry_saga_command_name((ferry_saga_command_kind)cmd->command);
    pstep *p = &s->ps[cmd->step];
    record *rec = find_record(s, cmd->step, cmd->command, cmd->round);
    int ok;
    if (rec != NULL) {
        ok = rec->ok;
        s->p.dedup_answered++;
        trace(s, "  participant %u: %s round %u seen before, answers %s", cmd->step, kind,
              cmd->round, ok ? "applied" : "refused");
    } else {
        if (cmd->command == FERRY_SAGA_CMD_ACTION) {
            if (p->tombstone) {
                ok = 0;
                s->p.refused_after_comp++;
                trace(s, "  participant %u: action after compensation, refused", cmd->step);
            } else if (fault(s, s->w.fail_action)) {
                ok = 0;
                s->p.action_refused++;
                trace(s, "  participant %u: refuses action round %u", cmd->step, cmd->round);
            } else {
                ok = 1;
                p->applied++;
                p->apply_seq = ++s->seq;
                trace(s, "  participant %u: APPLIES action round %u", cmd->step, cmd->round);
            }
        } else {
            if (fault(s, s->w.fail_comp)) {
                ok = 0;
                s->p.comp_refused++;
                trace(s, "  participant %u: refuses compensation round %u", cmd->step,
                      cmd->round);
            } else {
                ok = 1;
                p->compensated++;
                p->comp_seq = ++s->seq;
                if (p->applied > p->undone) {
                    p->undone++;
                    trace(s, "  participant %u: COMPENSATES (undoes the action)", cmd->step);
                } else {
                    s->p.tombstone_noop++;
                    trace(s, "  participant %u: COMPENSATES (never ran: tombstone)", cmd->step);
                }
                p->tombstone = 1;
                if (s->n_comp_order < SIM_RECORDS_MAX)
                    s->comp_order[s->n_comp_order++] = cmd->step;
            }
        }
        if (s->n_recs == SIM_RECORDS_MAX) {
            sim_fail(s, "simulator records full");
            return;
        }
        s->recs[s->n_recs++] = (record){.step = cmd->step, .round = cmd->round,
                                        .command = cmd->command, .ok = (uint8_t)ok};
    }
    item reply = {.kind = IT_REPLY, .command = cmd->command, .ok = (uint8_t)ok,
                  .step = cmd->step, .round = cmd->round, .attempt = cmd->attempt};
    broker_send(s, reply, 0);
}

/* ------------------------------------------------------ orchestrator */

static void dispatch(sim *s, const item *it, int depth);

/* The event of origin failed to commit: how it comes back. */
static void redeliver(sim *s, const item *origin)
{
    if (origin == NULL)
        return;
    item again = *origin;
    switch ((item_kind)origin->kind) {
    case IT_REPLY:      /* the offset was not committed: Kafka redelivers */
        again.at = s->now + range(s, 1, 100);
        enqueue(s, &again);
        break;
    case IT_CANCEL:     /* the user's call failed; the user repeats it */
        again.at = s->now + range(s, 1, 300);
        enqueue(s, &again);
        break;
    case IT_TIMER:      /* the worker and its timer are gone: the sweep will do */
    case IT_SWEEP:      /* the next sweep will do */
    case IT_COMMAND:
        break;
    }
}

/* Was refusing this cancel right? (The refusal is an operating error the
 * user sees, not a bug, in exactly these cases.) */
static int cancel_refusal_ok(sim *s, const ferry_saga_state *st, const ferry_error *err)
{
    if (st->status == FERRY_SAGA_COMPLETED || st->status == FERRY_SAGA_COMPENSATED) {
        s->p.cancel_refused_finished++;
        return strstr(err->message, " -> compensating") != NULL && !err->retriable;
    }
    if (st->status != FERRY_SAGA_RUNNING)
        return 0;
    int pivot = s->def.pivot_index;
    if (pivot >= 0 && (int)st->current > pivot) {
        s->p.cancel_refused_pivot++;
        return !err->retriable;
    }
    if (!s->def.steps[st->current].has_compensation) {
        s->p.cancel_refused_retriable++;
        return err->retriable;
    }
    return 0;
}

static int durable_equal(const ferry_saga_state *a, const ferry_saga_state *b)
{
    ferry_saga_state x = *a, y = *b;
    x.ignored = y.ignored = 0;
    return memcmp(&x, &y, sizeof x) == 0;
}

static void orchestrate(sim *s, const ferry_saga_event *ev, const item *origin, int depth)
{
    char line[160];
    ferry_saga_state loaded = s->db;
    ferry_saga_state next;
    ferry_saga_action acts[FERRY_SAGA_ACTIONS_MAX];
    size_t n = 777;
    ferry_error err;
    memset(&next, 0xA5, sizeof next);
    memset(acts, 0xA5, sizeof acts);
    memset(&err, 0, sizeof err);

    ferry_saga_event_format(ev, line, sizeof line);
    ferry_code rc = ferry_saga_step(&s->def, &loaded, ev, s->now, &next, acts,
                                    FERRY_SAGA_ACTIONS_MAX, &n, &err);
    if (rc != FERRY_OK) {
        trace(s, "orchestrator: %s in %s -> %s: %s", line,
              ferry_saga_status_name((ferry_saga_status)loaded.status), ferry_code_name(rc),
              err.message);
        unsigned char pattern[sizeof next];
        memset(pattern, 0xA5, sizeof pattern);
        if (n != 777 || memcmp(&next, pattern, sizeof next) != 0)
            sim_fail(s, "ferry_saga_step wrote its out-parameters on error");
        if (ev->kind == FERRY_SAGA_EV_CANCEL && rc == FERRY_ESTATE
            && cancel_refusal_ok(s, &loaded, &err)) {
            if (err.retriable && origin != NULL && origin->tries > 0) {
                item again = *origin;
                again.tries--;
                again.at = s->now + range(s, 10, 300);
                enqueue(s, &again);
            }
            return;
        }
        sim_fail(s, "ferry_saga_step returned %s on %s in status %s: %s", ferry_code_name(rc), line,
             ferry_saga_status_name((ferry_saga_status)loaded.status), err.message);
        return;
    }
    if (next.ignored != FERRY_SAGA_IGNORED_NONE) {
        trace(s, "orchestrator: %s ignored (%s)", line,
              ferry_saga_ignored_name((ferry_saga_ignored)next.ignored));
        if (n != 0 || !durable_equal(&next, &loaded))
            sim_fail(s, "an ignored event (%s) changed the state or acted", line);
        switch ((ferry_saga_ignored)next.ignored) {
        case FERRY_SAGA_IGNORED_STALE_REPLY: s->p.ignored_stale_reply++; break;
        case FERRY_SAGA_IGNORED_EARLY: s->p.ignored_early++; break;
        case FERRY_SAGA_IGNORED_FINISHED: s->p.ignored_finished++; break;
        case FERRY_SAGA_IGNORED_COMPENSATING: s->p.ignored_compensating++; break;
        case FERRY_SAGA_IGNORED_NONE:
        case FERRY_SAGA_IGNORED_COUNT: break;
        }
        /* The worker whose timer fired early sets it again. */
        if (next.ignored == FERRY_SAGA_IGNORED_EARLY && origin != NULL
            && origin->kind == IT_TIMER && origin->gen == s->timer_gen)
            arm_timer(s, next.wake_ms, 0);
        return;
    }
    trace(s, "orchestrator: %s in %s -> %s (revision %" PRIu64 ")", line,
          ferry_saga_status_name((ferry_saga_status)loaded.status),
          ferry_saga_status_name((ferry_saga_status)next.status), next.revision);
    if (next.revision != loaded.revision + 1 || n < 1 || n > FERRY_SAGA_ACTIONS_MAX)
        sim_fail(s, "applied event %s: revision %" PRIu64 " -> %" PRIu64 ", %zu actions", line,
             loaded.revision, next.revision, n);
    if (next.status == FERRY_SAGA_FAILED || next.status == FERRY_SAGA_NEW)
        sim_fail(s, "the engine entered status %s",
             ferry_saga_status_name((ferry_saga_status)next.status));
    if (s->failed)
        return;

    /* Crash before the transaction commits: nothing happened. */
    if (origin != NULL && fault(s, s->w.crash_before)) {
        s->p.crash_before++;
        trace(s, "  orchestrator crashed before commit");
        redeliver(s, origin);
        return;
    }
    /* Another worker handles another event for this saga meanwhile; our
     * UPDATE ... WHERE revision = loaded.revision then finds no row. */
    if (origin != NULL && depth == 0 && s->n_items > 0 && fault(s, s->w.conflict)) {
        item other = take(s);
        trace(s, "  (meanwhile, another worker:)");
        dispatch(s, &other, depth + 1);
        if (s->failed)
            return;
        if (s->db.revision != loaded.revision) {
            s->p.conflict++;
            trace(s, "  revision moved on: not stored; retried with the fresh state");
            orchestrate(s, ev, origin, depth + 1);
            return;
        }
        if (memcmp(&s->db, &loaded, sizeof loaded) != 0) {
            sim_fail(s, "the stored state changed without a new revision");
            return;
        }
    }

    s->db = next;
    s->db.ignored = 0;
    /* Crash after commit, before the outbox published everything. */
    size_t sends_kept = n;
    if (fault(s, s->w.partial)) {
        s->p.partial++;
        sends_kept = (size_t)below(s, n);
    }
    for (size_t i = 0; i < n; i++) {
        const ferry_saga_action *a = &acts[i];
        ferry_saga_action_format(a, line, sizeof line);
        trace(s, "  -> %s", line);
        switch (a->kind) {
        case FERRY_SAGA_DO_SEND: {
            if (a->step >= s->def.step_count || a->attempt < 1 || a->delay_ms < 0) {
                sim_fail(s, "bad send: %s", line);
                return;
            }
            if (a->command == FERRY_SAGA_CMD_COMPENSATION
                && !s->def.steps[a->step].has_compensation) {
                sim_fail(s, "compensation sent for step %u, which has none", a->step);
                return;
            }
            if (a->command == FERRY_SAGA_CMD_ACTION && a->round > 0)
                s->p.forward_retry++;
            if (a->command == FERRY_SAGA_CMD_COMPENSATION && a->round > 0)
                s->p.comp_retry++;
            if (i >= sends_kept) {
                trace(s, "  crashed: this send never left");
                break;
            }
            item cmd = {.kind = IT_COMMAND, .command = (uint8_t)a->command, .step = a->step,
                        .round = a->round, .attempt = a->attempt};
            broker_send(s, cmd, a->delay_ms);
            break;
        }
        case FERRY_SAGA_DO_SET_DEADLINE:
            if (a->at_ms != next.wake_ms)
                sim_fail(s, "set_deadline %" PRId64 " but wake_ms %" PRId64, a->at_ms,
                     next.wake_ms);
            s->timer_gen++;
            arm_timer(s, a->at_ms, 1);
            break;
        case FERRY_SAGA_DO_FINISH:
            s->finishes++;
            if (a->status != next.status
                || (a->status != FERRY_SAGA_COMPLETED && a->status != FERRY_SAGA_COMPENSATED))
                sim_fail(s, "finish %s in status %s", ferry_saga_status_name(a->status),
                     ferry_saga_status_name((ferry_saga_status)next.status));
            break;
        case FERRY_SAGA_DO_COUNT:
            sim_fail(s, "unknown action kind");
            break;
        }
    }
    if (loaded.status == FERRY_SAGA_RUNNING && next.status != FERRY_SAGA_RUNNING) {
        switch ((ferry_saga_reason)next.reason) {
        case FERRY_SAGA_REASON_FAILED: s->p.why_failed++; break;
        case FERRY_SAGA_REASON_TIMED_OUT: s->p.why_timed_out++; break;
        case FERRY_SAGA_REASON_CANCELLED: s->p.why_cancelled++; break;
        case FERRY_SAGA_REASON_DEADLINE: s->p.why_deadline++; break;
        case FERRY_SAGA_REASON_NONE:
        case FERRY_SAGA_REASON_COUNT: break;
        }
        if (ev->kind == FERRY_SAGA_EV_CANCEL)
            s->p.cancel_applied++;
    }
    /* Crash after commit, before the event was acknowledged: it comes again. */
    if (origin != NULL && fault(s, s->w.crash_after)) {
        s->p.crash_after++;
        trace(s, "  orchestrator crashed before acknowledging the event");
        redeliver(s, origin);
    }
}

static int finished(const sim *s)
{
    return s->db.status == FERRY_SAGA_COMPLETED || s->db.status == FERRY_SAGA_COMPENSATED
           || s->db.status == FERRY_SAGA_FAILED;
}

static void dispatch(sim *s, const item *it, int depth)
{
    switch ((item_kind)it->kind) {
    case IT_COMMAND:
        trace(s, "deliver %s step %u round %u attempt %u",
              ferry_saga_command_name((ferry_saga_command_kind)it->command), it->step,
              it->round, it->attempt);
        participate(s, it);
        break;
    case IT_REPLY: {
        ferry_saga_event ev = {.kind = FERRY_SAGA_EV_REPLY,
                               .command = (ferry_saga_command_kind)it->command,
                               .step = it->step, .round = it->round, .attempt = it->attempt,
                               .succeeded = it->ok};
        orchestrate(s, &ev, it, depth);
        break;
    }
    case IT_TIMER: {
        if (it->gen != s->timer_gen) {
            /* Replaced by a later arming; sometimes it fires anyway. */
            if (!fault(s, s->w.stale_timer))
                break;
            s->p.stale_timer++;
        }
        ferry_saga_event ev = {.kind = FERRY_SAGA_EV_TIMEOUT};
        orchestrate(s, &ev, it, depth);
        break;
    }
    case IT_SWEEP: {
        /* The reconciler: fire any deadline that is due, whoever forgot it. */
        if (!finished(s) && s->db.wake_ms != 0 && s->now >= s->db.wake_ms) {
            s->p.sweep_fired++;
            trace(s, "reconciler: deadline %" PRId64 " is due", s->db.wake_ms - T0);
            ferry_saga_event ev = {.kind = FERRY_SAGA_EV_TIMEOUT};
            orchestrate(s, &ev, it, depth);
        }
        if (!finished(s)) {
            item again = {.kind = IT_SWEEP, .at = s->now + s->w.sweep_every};
            enqueue(s, &again);
        }
        break;
    }
    case IT_CANCEL: {
        ferry_saga_event ev = {.kind = FERRY_SAGA_EV_CANCEL};
        orchestrate(s, &ev, it, depth);
        break;
    }
    }
}

/* --------------------------------------------------------------- setup */

static const char *const step_names[SIM_STEPS_MAX] = {"s0", "s1", "s2", "s3",
                                                      "s4", "s5", "s6", "s7"};

static void make_definition(sim *s)
{
    size_t n = 1 + (size_t)below(s, SIM_STEPS_MAX);
    int pivot = chance(s, 400) ? (int)below(s, n) : -1;
    for (size_t i = 0; i < n; i++) {
        ferry_saga_step_def *d = &s->steps[i];
        memset(d, 0, sizeof *d);
        d->name = (char *)step_names[i];
        d->timeout_ms = range(s, 20, 300);
        d->retry.attempts = 1 + (int)below(s, 4);
        d->retry.backoff_ms = chance(s, 500) ? range(s, 1, 50) : 0;
        d->retry.max_backoff_ms = d->retry.backoff_ms + range(s, 0, 200);
        d->pivot = (int)i == pivot;
        d->has_compensation = (pivot < 0 || (int)i < pivot) ? 1 : chance(s, 500);
    }
    s->def.name = (char *)"sim";
    s->def.version = 1;
    s->def.deadline_ms = chance(s, 300) ? range(s, 50, 1500) : range(s, 5000, 60000);
    s->def.step_count = n;
    s->def.steps = s->steps;
    s->def.pivot_index = pivot;
}

static void make_weather(sim *s)
{
    weather *w = &s->w;
    memset(w, 0, sizeof *w);
    w->delay_max = range(s, 0, 100);
    w->sweep_every = range(s, 200, 2000);
    w->timer_late_max = range(s, 0, 300);
    if (chance(s, 150))
        return;                 /* a fine day */
    w->dup = (unsigned)below(s, 200);
    w->loss = (unsigned)below(s, 150);
    w->late = (unsigned)below(s, 200);
    w->late_max = range(s, 100, 2000);
    w->reorder = range(s, 0, 100);
    w->crash_before = (unsigned)below(s, 100);
    w->crash_after = (unsigned)below(s, 100);
    w->partial = (unsigned)below(s, 50);
    w->conflict = (unsigned)below(s, 100);
    w->timer_loss = (unsigned)below(s, 100);
    w->early = (unsigned)below(s, 300);
    w->early_max = range(s, 1, 200);
    w->stale_timer = (unsigned)below(s, 200);
    w->fail_action = (unsigned)below(s, 300);
    w->fail_comp = (unsigned)below(s, 300);
    w->part_crash = (unsigned)below(s, 50);
}

/* ---------------------------------------------------------------- checks */

/* What must hold once everything in flight has arrived, judged by what the
 * participants did, not by what the orchestrator believes. */
static int check_outcome(sim *s)
{
    ferry_saga_status st = (ferry_saga_status)s->db.status;
    if (st != FERRY_SAGA_COMPLETED && st != FERRY_SAGA_COMPENSATED) {
        return sim_fail(s, "saga ended %s", ferry_saga_status_name(st));
    }
    if (s->finishes != 1)
        return sim_fail(s, "%d finish actions", s->finishes);
    int pivot = s->def.pivot_index;
    for (uint32_t i = 0; i < s->def.step_count; i++) {
        const pstep *p = &s->ps[i];
        if (p->applied > 1)
            return sim_fail(s, "step %u applied %d times", i, p->applied);
        if (p->compensated > 1)
            return sim_fail(s, "step %u compensated %d times", i, p->compensated);
        if (p->applied && p->compensated && p->apply_seq > p->comp_seq)
            return sim_fail(s, "step %u applied after its compensation", i);
        if (pivot >= 0 && (int)i > pivot && p->compensated)
            return sim_fail(s, "step %u, after the pivot, was compensated", i);
        if (st == FERRY_SAGA_COMPLETED) {
            if (p->applied != 1)
                return sim_fail(s, "completed saga, but step %u applied %d times", i, p->applied);
            if (p->compensated)
                return sim_fail(s, "completed saga, but step %u was compensated", i);
        } else {
            if (p->applied && p->undone != 1)
                return sim_fail(s, "compensated saga, but step %u ran and was not compensated",
                            i);
            if (pivot >= 0 && (int)i > pivot && p->applied)
                return sim_fail(s, "compensated saga, but step %u, after the pivot, ran", i);
        }
    }
    for (size_t k = 1; k < s->n_comp_order; k++)
        if (s->comp_order[k] >= s->comp_order[k - 1])
            return sim_fail(s, "compensation of step %u ran after that of step %u",
                        s->comp_order[k], s->comp_order[k - 1]);
    return 0;
}

/* Run one seed; 0 on success, else s->why says what broke. */
static int run_seed(uint64_t seed, int tracing, int hashing)
{
    sim *s = &S;
    memset(s, 0, sizeof *s);
    s->hashing = hashing;
    s->trace_hash = 0xcbf29ce484222325ULL;
    s->seed = seed;
    s->rng = seed * 0x2545f4914f6cdd1dULL + 1;
    s->trace = tracing;
    s->now = T0;
    make_definition(s);
    make_weather(s);

    if (s->trace) {
        printf("seed %" PRIu64 ": %zu steps, pivot %d, deadline %" PRId64 "ms\n", seed,
               s->def.step_count, s->def.pivot_index, s->def.deadline_ms);
        for (size_t i = 0; i < s->def.step_count; i++) {
            const ferry_saga_step_def *d = &s->steps[i];
            printf("  step %zu: timeout %" PRId64 " attempts %d backoff %" PRId64 "..%" PRId64
                   "%s%s\n",
                   i, d->timeout_ms, d->retry.attempts, d->retry.backoff_ms,
                   d->retry.max_backoff_ms, d->has_compensation ? "" : " no-compensation",
                   d->pivot ? " PIVOT" : "");
        }
        const weather *w = &s->w;
        printf("  weather: dup %u loss %u late %u/%" PRId64 " reorder %" PRId64
               " crash %u/%u/%u conflict %u timers lost %u early %u/%" PRId64
               " stale %u refuse %u/%u part-crash %u sweep %" PRId64 "\n",
               w->dup, w->loss, w->late, w->late_max, w->reorder, w->crash_before,
               w->crash_after, w->partial, w->conflict, w->timer_loss, w->early, w->early_max,
               w->stale_timer, w->fail_action, w->fail_comp, w->part_crash, w->sweep_every);
    }
    if (s->def.pivot_index >= 0)
        s->p.with_pivot++;

    ferry_saga_event start = {.kind = FERRY_SAGA_EV_START};
    orchestrate(s, &start, NULL, 0);
    item sweep = {.kind = IT_SWEEP, .at = s->now + s->w.sweep_every};
    enqueue(s, &sweep);
    if (chance(s, 300)) {
        int k = 1 + (int)below(s, 2);
        for (int i = 0; i < k; i++) {
            item c = {.kind = IT_CANCEL, .at = T0 + range(s, 0, 2000), .tries = 3};
            enqueue(s, &c);
        }
    }

    while (!s->failed && s->n_items > 0) {
        s->events++;
        if (!s->calm && s->events > STORM_EVENTS) {
            s->calm = 1;
            s->p.calm++;
            trace(s, "---- calm: no more faults");
        }
        if (!finished(s) && s->events > EVENTS_MAX) {
            sim_fail(s, "saga still %s after %d events: livelock",
                 ferry_saga_status_name((ferry_saga_status)s->db.status), EVENTS_MAX);
            break;
        }
        if (s->events > DRAIN_MAX) {
            sim_fail(s, "messages still in flight after %d events", DRAIN_MAX);
            break;
        }
        item it = take(s);
        dispatch(s, &it, 0);
    }
    if (!s->failed)
        check_outcome(s);
    if (!s->failed) {
        if (s->db.status == FERRY_SAGA_COMPLETED)
            s->p.completed++;
        else
            s->p.compensated++;
        trace(s, "end: %s after %" PRIu64 " events",
              ferry_saga_status_name((ferry_saga_status)s->db.status), s->events);
    }
#define ADD_(name) total.name += s->p.name;
    PROBES(ADD_)
#undef ADD_
    return s->failed;
}

static void simulate(void **state)
{
    tu_sim_seeds range = tu_sim_seeds_from_env(SIM_SEEDS_DEFAULT);
    uint64_t first = range.first, last = range.last;
    uint64_t events = 0, most = 0;
    memset(&total, 0, sizeof total);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t seed = first; seed < last; seed++) {
        if (run_seed(seed, range.tracing, 0)) {
            fflush(stdout);
            fprintf(stderr,
                    "saga sim: seed %" PRIu64 " FAILED: %s\n"
                    "  replay: FERRY_SIM_SEED=%" PRIu64 " FERRY_SIM_TRACE=1 %s\n",
                    seed, S.why, seed, prog);
            fail_msg("saga simulation failed at seed %" PRIu64, seed);
        }
        events += S.events;
        if (S.events > most)
            most = S.events;
    }
    fprintf(stderr,
            "saga sim: %" PRIu64 " seeds passed, %" PRIu64 " events (at most %" PRIu64
            " in one), %.0f seeds/s\n",
            last - first, events, most, tu_sim_rate(&t0, last - first));
    if (range.one)
        return;
    fprintf(stderr, "saga sim: probes:");
#define PRINT_(name) fprintf(stderr, " %s=%" PRIu64, #name, total.name);
    PROBES(PRINT_)
#undef PRINT_
    fprintf(stderr, "\n");
    /* Every fault and every path must have happened somewhere. */
    int missing = 0;
#define CHECK_(name)                                                              \
    if (total.name == 0) {                                                        \
        fprintf(stderr, "saga sim: probe %s never fired\n", #name);               \
        missing++;                                                                \
    }
    PROBES(CHECK_)
#undef CHECK_
    if (range.count >= 10000)
        assert_int_equal(missing, 0);
}

/* The same seed gives the same run, to the byte of its trace. */
static void replay_is_exact(void **state)
{
    for (uint64_t seed = 0; seed < 200; seed++) {
        assert_int_equal(run_seed(seed, 0, 1), 0);
        uint64_t h = S.trace_hash, events = S.events;
        assert_int_equal(run_seed(seed, 0, 1), 0);
        assert_int_equal(S.trace_hash, h);
        assert_int_equal(S.events, events);
    }
}

/* ------------------------------------------------------- scripted cases */

static ferry_saga_step_def tsteps[3];
static ferry_saga_def tdef;

static void three_steps(int pivot)
{
    memset(tsteps, 0, sizeof tsteps);
    for (int i = 0; i < 3; i++) {
        tsteps[i].name = (char *)step_names[i];
        tsteps[i].timeout_ms = 100;
        tsteps[i].retry.attempts = 2;
        tsteps[i].retry.backoff_ms = 10;
        tsteps[i].retry.max_backoff_ms = 15;
        tsteps[i].has_compensation = pivot < 0 || i < pivot;
        tsteps[i].pivot = i == pivot;
    }
    tdef = (ferry_saga_def){.name = (char *)"t", .version = 1, .deadline_ms = 10000,
                            .step_count = 3, .steps = tsteps, .pivot_index = pivot};
}

typedef struct run {
    ferry_saga_state st;
    ferry_saga_action a[FERRY_SAGA_ACTIONS_MAX];
    size_t n;
    ferry_error err;
} run;

static ferry_code feed(run *r, ferry_saga_event ev, int64_t now)
{
    return ferry_saga_step(&tdef, &r->st, &ev, now, &r->st, r->a, FERRY_SAGA_ACTIONS_MAX, &r->n,
                           &r->err);
}

static ferry_saga_event reply(ferry_saga_command_kind k, uint32_t step, uint32_t round,
                              uint32_t attempt, int ok)
{
    return (ferry_saga_event){.kind = FERRY_SAGA_EV_REPLY, .command = k, .step = step,
                              .round = round, .attempt = attempt, .succeeded = ok};
}

static const ferry_saga_event ev_start = {.kind = FERRY_SAGA_EV_START};
static const ferry_saga_event ev_timeout = {.kind = FERRY_SAGA_EV_TIMEOUT};
static const ferry_saga_event ev_cancel = {.kind = FERRY_SAGA_EV_CANCEL};

static void expect_send(const run *r, ferry_saga_command_kind k, uint32_t step, uint32_t attempt)
{
    assert_true(r->n >= 1);
    assert_int_equal(r->a[0].kind, FERRY_SAGA_DO_SEND);
    assert_int_equal(r->a[0].command, k);
    assert_int_equal(r->a[0].step, step);
    assert_int_equal(r->a[0].attempt, attempt);
}

/* The stored names are exactly those of the SQL CHECK constraints. */
static void names_match_sql(void **state)
{
    FILE *f = fopen("schemas/001_ferry.sql", "r");
    assert_non_null(f);
    static char sql[1 << 16];
    size_t len = fread(sql, 1, sizeof sql - 1, f);
    fclose(f);
    sql[len] = '\0';
    const char *check = strstr(sql, "CHECK (state IN (");
    assert_non_null(check);
    const char *end = strstr(check, "))");
    assert_non_null(end);
    int stored = 0;
#define STATUS_(id, name, is_stored, start, reply_, timeout, cancel)               \
    {                                                                              \
        const char *q = strstr(check, "'" name "'");                               \
        assert_int_equal(q != NULL && q < end, is_stored);                         \
        stored += is_stored;                                                       \
    }
    FERRY_SAGA_STATUS_LIST(STATUS_)
#undef STATUS_
    int quoted = 0;
    for (const char *p = check; p < end; p++)
        quoted += *p == '\'';
    assert_int_equal(quoted, 2 * stored);

    const char *kind = strstr(sql, "CHECK (kind IN ('action', 'compensation'))");
    assert_non_null(kind);
    assert_string_equal(ferry_saga_command_name(FERRY_SAGA_CMD_ACTION), "action");
    assert_string_equal(ferry_saga_command_name(FERRY_SAGA_CMD_COMPENSATION), "compensation");
    const char *st = strstr(sql, "CHECK (status IN ('sent', 'succeeded', 'failed', 'timed_out'))");
    assert_non_null(st);
    for (int i = FERRY_SAGA_STEP_SENT; i < FERRY_SAGA_STEP_STATUS_COUNT; i++) {
        char quotedname[40];
        snprintf(quotedname, sizeof quotedname, "'%s'",
                 ferry_saga_step_status_name((ferry_saga_step_status)i));
        assert_non_null(strstr(st, quotedname));
    }
    assert_string_equal(ferry_saga_status_name(FERRY_SAGA_STATUS_COUNT), "?");
}

static void happy_path_and_keys(void **state)
{
    three_steps(-1);
    run r = {0};
    assert_int_equal(feed(&r, ev_start, 1000), FERRY_OK);
    assert_int_equal(r.st.status, FERRY_SAGA_RUNNING);
    assert_int_equal(r.n, 2);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 0, 1);
    assert_int_equal(r.a[1].kind, FERRY_SAGA_DO_SET_DEADLINE);
    assert_int_equal(r.a[1].at_ms, 1100);
    assert_int_equal(r.st.deadline_ms, 11000);
    char key[128];
    ferry_saga_key_format("abc", &r.a[0], key, sizeof key);
    assert_string_equal(key, "abc/0/action/0");
    for (uint32_t i = 0; i < 3; i++) {
        assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_ACTION, i, 0, 1, 1), 1010 + i),
                         FERRY_OK);
        if (i < 2)
            expect_send(&r, FERRY_SAGA_CMD_ACTION, i + 1, 1);
    }
    assert_int_equal(r.st.status, FERRY_SAGA_COMPLETED);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.a[0].kind, FERRY_SAGA_DO_FINISH);
    assert_int_equal(r.st.revision, 4);
    /* A late duplicate is harmless. */
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 1, 1), 2000), FERRY_OK);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.st.ignored, FERRY_SAGA_IGNORED_FINISHED);
    assert_int_equal(r.st.revision, 4);
}

static void refusal_and_timeout_compensate_in_reverse(void **state)
{
    three_steps(-1);
    run r = {0};
    feed(&r, ev_start, 0);
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 1, 1), 20);
    /* Step 2 refused: compensate 1, then 0; 2 never ran. */
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_ACTION, 2, 0, 1, 0), 30), FERRY_OK);
    assert_int_equal(r.st.status, FERRY_SAGA_COMPENSATING);
    assert_int_equal(r.st.reason, FERRY_SAGA_REASON_FAILED);
    expect_send(&r, FERRY_SAGA_CMD_COMPENSATION, 1, 1);
    /* Early timer: nothing. Due timer: resend, same round, with backoff. */
    assert_int_equal(feed(&r, ev_timeout, 100), FERRY_OK);
    assert_int_equal(r.st.ignored, FERRY_SAGA_IGNORED_EARLY);
    assert_int_equal(r.n, 0);
    assert_int_equal(feed(&r, ev_timeout, 130), FERRY_OK);
    expect_send(&r, FERRY_SAGA_CMD_COMPENSATION, 1, 2);
    assert_int_equal(r.a[0].round, 0);
    assert_int_equal(r.a[0].delay_ms, 10);
    /* A refusal: next round (a new key). */
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_COMPENSATION, 1, 0, 2, 0), 140), FERRY_OK);
    expect_send(&r, FERRY_SAGA_CMD_COMPENSATION, 1, 3);
    assert_int_equal(r.a[0].round, 1);
    assert_int_equal(r.a[0].delay_ms, 15);  /* 10 * 2, capped at 15 */
    /* The old round's answer is stale now. */
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_COMPENSATION, 1, 0, 1, 1), 150), FERRY_OK);
    assert_int_equal(r.st.ignored, FERRY_SAGA_IGNORED_STALE_REPLY);
    feed(&r, reply(FERRY_SAGA_CMD_COMPENSATION, 1, 1, 3, 1), 160);
    expect_send(&r, FERRY_SAGA_CMD_COMPENSATION, 0, 1);
    feed(&r, reply(FERRY_SAGA_CMD_COMPENSATION, 0, 0, 1, 1), 170);
    assert_int_equal(r.st.status, FERRY_SAGA_COMPENSATED);

    /* Attempts exhausted: the step is ambiguous and compensated too. */
    run t = {0};
    feed(&t, ev_start, 0);
    feed(&t, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    feed(&t, ev_timeout, 110);                       /* step 1, send 2 */
    expect_send(&t, FERRY_SAGA_CMD_ACTION, 1, 2);
    feed(&t, ev_timeout, 1000);
    assert_int_equal(t.st.status, FERRY_SAGA_COMPENSATING);
    assert_int_equal(t.st.reason, FERRY_SAGA_REASON_TIMED_OUT);
    assert_int_equal(t.st.steps[1].action, FERRY_SAGA_STEP_TIMED_OUT);
    expect_send(&t, FERRY_SAGA_CMD_COMPENSATION, 1, 1);
    /* Its late success changes nothing: it is compensated regardless. */
    assert_int_equal(feed(&t, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 2, 1), 1001), FERRY_OK);
    assert_int_equal(t.st.ignored, FERRY_SAGA_IGNORED_STALE_REPLY);
}

/* A refusal that is retried for ever (a compensation, a step after the
 * pivot) is not resent at once when the step has no backoff: a
 * participant that refuses every time would otherwise be sent the
 * command again as fast as the messages go round, for ever. Such a
 * resend waits FERRY_SAGA_REFUSAL_BACKOFF_MS, doubling to
 * FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS; a timeout's resend, after a wait of
 * its own, keeps the step's backoff of 0. */
static void a_refusal_without_a_backoff_is_resent_after_a_pause(void **state)
{
    three_steps(0);
    for (int i = 0; i < 3; i++)
        tsteps[i].retry.backoff_ms = tsteps[i].retry.max_backoff_ms = 0;
    run r = {0};
    feed(&r, ev_start, 0);
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    /* Step 1, after the pivot, refused: retried in the next round, after a pause. */
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 1, 0), 20), FERRY_OK);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 1, 2);
    assert_int_equal(r.a[0].round, 1);
    assert_int_equal(r.a[0].delay_ms, FERRY_SAGA_REFUSAL_BACKOFF_MS);
    assert_int_equal(feed(&r, reply(FERRY_SAGA_CMD_ACTION, 1, 1, 2, 0), 30), FERRY_OK);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 1, 3);
    assert_int_equal(r.a[0].delay_ms, 2 * FERRY_SAGA_REFUSAL_BACKOFF_MS);
    /* A timeout's resend is not delayed: the timeout was the wait. */
    assert_int_equal(feed(&r, ev_timeout, r.st.timer_ms), FERRY_OK);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 1, 4);
    assert_int_equal(r.a[0].delay_ms, 0);

    /* A compensation refused again and again: the pause doubles to its cap. */
    three_steps(-1);
    for (int i = 0; i < 3; i++)
        tsteps[i].retry.backoff_ms = tsteps[i].retry.max_backoff_ms = 0;
    run t = {0};
    feed(&t, ev_start, 0);
    feed(&t, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 0), 10);   /* refused: nothing to undo */
    assert_int_equal(t.st.status, FERRY_SAGA_COMPENSATED);
    run u = {0};
    feed(&u, ev_start, 0);
    feed(&u, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    feed(&u, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 1, 0), 20);
    expect_send(&u, FERRY_SAGA_CMD_COMPENSATION, 0, 1);
    assert_int_equal(u.a[0].delay_ms, 0);
    int64_t now = 30, want = FERRY_SAGA_REFUSAL_BACKOFF_MS;
    for (uint32_t n = 1; n <= 12; n++) {
        assert_int_equal(feed(&u, reply(FERRY_SAGA_CMD_COMPENSATION, 0, n - 1, n, 0), now),
                         FERRY_OK);
        expect_send(&u, FERRY_SAGA_CMD_COMPENSATION, 0, n + 1);
        assert_int_equal(u.a[0].delay_ms, want);
        want = want * 2 > FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS ? FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS
                                                             : want * 2;
        now += 10;
    }
    assert_int_equal(FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS, 60000);

    /* A step's own backoff, where it has one, is kept. */
    three_steps(-1);
    run v = {0};
    feed(&v, ev_start, 0);
    feed(&v, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    feed(&v, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 1, 0), 20);
    feed(&v, reply(FERRY_SAGA_CMD_COMPENSATION, 0, 0, 1, 0), 30);
    expect_send(&v, FERRY_SAGA_CMD_COMPENSATION, 0, 2);
    assert_int_equal(v.a[0].delay_ms, 10);
}

static void invalid_transitions_refused(void **state)
{
    three_steps(1);
    run r = {0};
    assert_int_equal(feed(&r, ev_timeout, 0), FERRY_ESTATE);
    assert_non_null(strstr(r.err.message, "new -> new on timeout"));
    feed(&r, ev_start, 0);
    run before = r;
    assert_int_equal(feed(&r, ev_start, 5), FERRY_ESTATE);
    assert_non_null(strstr(r.err.message, "running -> running on start"));
    assert_string_equal(r.err.field, "event");
    assert_memory_equal(&before.st, &r.st, sizeof r.st);   /* untouched */
    assert_int_equal(r.n, before.n);

    /* Step 1 is the pivot, without compensation: cancel must wait. */
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    assert_int_equal(feed(&r, ev_cancel, 11), FERRY_ESTATE);
    assert_true(r.err.retriable);
    /* ... and it is never given up on, whatever the timers say. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(feed(&r, ev_timeout, 100000 + i * 1000), FERRY_OK);
        expect_send(&r, FERRY_SAGA_CMD_ACTION, 1, (uint32_t)i + 2);
        assert_int_equal(r.a[0].round, 0);
    }
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 1, 0, 3, 1), 200000);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 2, 1);
    /* After the pivot: cancel refused for good, refusals retried. */
    assert_int_equal(feed(&r, ev_cancel, 200001), FERRY_ESTATE);
    assert_false(r.err.retriable);
    assert_non_null(strstr(r.err.message, "running -> compensating"));
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 2, 0, 1, 0), 200002);
    assert_int_equal(r.st.status, FERRY_SAGA_RUNNING);
    expect_send(&r, FERRY_SAGA_CMD_ACTION, 2, 2);
    assert_int_equal(r.a[0].round, 1);
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 2, 1, 2, 1), 200003);
    assert_int_equal(r.st.status, FERRY_SAGA_COMPLETED);
    assert_int_equal(feed(&r, ev_cancel, 200004), FERRY_ESTATE);
    assert_non_null(strstr(r.err.message, "completed -> compensating on cancel"));
}

static void deadline_and_cancel(void **state)
{
    three_steps(-1);
    run r = {0};
    feed(&r, ev_start, 0);
    feed(&r, reply(FERRY_SAGA_CMD_ACTION, 0, 0, 1, 1), 10);
    /* A timer at the saga's deadline compensates the outstanding step too. */
    assert_int_equal(feed(&r, ev_timeout, 10000), FERRY_OK);
    assert_int_equal(r.st.reason, FERRY_SAGA_REASON_DEADLINE);
    expect_send(&r, FERRY_SAGA_CMD_COMPENSATION, 1, 1);
    assert_int_equal(feed(&r, ev_cancel, 10001), FERRY_OK);
    assert_int_equal(r.st.ignored, FERRY_SAGA_IGNORED_COMPENSATING);

    run c = {0};
    feed(&c, ev_start, 0);
    assert_int_equal(feed(&c, ev_cancel, 1), FERRY_OK);
    assert_int_equal(c.st.reason, FERRY_SAGA_REASON_CANCELLED);
    expect_send(&c, FERRY_SAGA_CMD_COMPENSATION, 0, 1);

    /* A definition that could not end is refused, with nothing written. */
    tsteps[0].has_compensation = 0;
    run d = {0};
    assert_int_equal(feed(&d, ev_start, 0), FERRY_EINVAL);
    assert_string_equal(d.err.field, "definition");
    assert_non_null(strstr(d.err.message, "steps[0].compensation"));
    assert_int_equal(d.st.status, FERRY_SAGA_NEW);
}

int main(int argc, char **argv)
{
    (void)argc;
    prog = argv[0];
    const char *filter = getenv("FERRY_TEST_FILTER");
    if (filter != NULL && filter[0] != '\0')
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_match_sql),
        cmocka_unit_test(happy_path_and_keys),
        cmocka_unit_test(refusal_and_timeout_compensate_in_reverse),
        cmocka_unit_test(a_refusal_without_a_backoff_is_resent_after_a_pause),
        cmocka_unit_test(invalid_transitions_refused),
        cmocka_unit_test(deadline_and_cancel),
        cmocka_unit_test(replay_is_exact),
        cmocka_unit_test(simulate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
