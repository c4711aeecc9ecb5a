/*
 * saga_step.c — the saga orchestrator's pure core: (definition, state,
 * event, now) -> (next state, actions). No I/O, no clock, no allocation;
 * the contract is documented above ferry_saga_step() in ferry.h, and
 * tests/test_saga_sim.c drives this very code through a seeded simulation
 * of crashes, lost, duplicated and reordered messages and early timers.
 *
 * Deliberately broken variants, for proving that the simulator catches
 * each (tests/saga_sim_broken.sh). Build with -DFERRY_SAGA_BROKEN=N; the
 * default (0) has none:
 *   1  a step whose sends all timed out is taken as refused (never ran), so
 *      an ambiguous step that did run is not compensated;
 *   2  compensations run in forward order (lowest step first);
 *   3  a late action reply of a timed-out step, while compensating, marks
 *      the step succeeded and sends the next step's action;
 *   4  a compensation whose reply never came is not resent on timeout (the
 *      timer is only re-armed), so a lost compensation stalls the saga;
 *   5  compensation not idempotent: a compensation resent after a timeout
 *      gets a new key (next round), so the participant may apply it twice;
 *   6  action not idempotent: an action resent after a timeout gets a new
 *      key, so the participant may apply it twice.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#ifndef FERRY_SAGA_BROKEN
#define FERRY_SAGA_BROKEN 0
#endif
#define FERRY_SAGA_BROKEN_VARIANTS 6 /* tests/saga_sim_broken.sh reads this line */
#if FERRY_SAGA_BROKEN < 0 || FERRY_SAGA_BROKEN > FERRY_SAGA_BROKEN_VARIANTS
#error "no such FERRY_SAGA_BROKEN variant"
#endif
#define BROKEN(n) (FERRY_SAGA_BROKEN == (n))

/* ---------------------------------------------------------------- limits */

_Static_assert(FERRY_SAGA_STEPS_MAX >= 1 && FERRY_SAGA_STEPS_MAX <= 1024,
               "a saga state holds every step inline");
_Static_assert(FERRY_SAGA_STATUS_COUNT <= 32, "transition sets are bits of an unsigned");
_Static_assert(FERRY_SAGA_STATUS_COUNT <= UINT8_MAX && FERRY_SAGA_STEP_STATUS_COUNT <= UINT8_MAX
                   && FERRY_SAGA_REASON_COUNT <= UINT8_MAX
                   && FERRY_SAGA_IGNORED_COUNT <= UINT8_MAX,
               "stored in uint8_t fields");
_Static_assert(FERRY_SAGA_ACTIONS_MAX >= 2, "a step emits a send and a deadline");
_Static_assert(FERRY_SAGA_ATTEMPTS_MAX < UINT32_MAX, "attempts fit the counters");
/* now + send delay + timeout, and now + deadline, cannot overflow. */
_Static_assert(FERRY_SAGA_NOW_MAX_MS <= INT64_MAX - 3 * FERRY_SAGA_TIMEOUT_MAX_MS,
               "deadlines fit int64_t");
/* No padding, so that two states compare with memcmp and store as bytes. */
_Static_assert(sizeof(ferry_saga_step_state) == 20, "step state has no padding");
_Static_assert(sizeof(ferry_saga_state)
                   == 5 * sizeof(int64_t) + 4 + 3 * sizeof(uint32_t)
                          + FERRY_SAGA_STEPS_MAX * sizeof(ferry_saga_step_state),
               "saga state has no padding");

/* ------------------------------------------------------ names and table */

static const char *const status_names[] = {
#define NAME_(id, name, stored, start, reply, timeout, cancel) [FERRY_SAGA_##id] = name,
    FERRY_SAGA_STATUS_LIST(NAME_)
#undef NAME_
};

/* The transition table: for each status and event, the statuses it may
 * lead to. Every status change ferry_saga_step() makes is checked here. */
static const unsigned transitions[FERRY_SAGA_STATUS_COUNT][FERRY_SAGA_EV_COUNT] = {
#define ROW_(id, name, stored, start, reply, timeout, cancel)                          \
    [FERRY_SAGA_##id] = {[FERRY_SAGA_EV_START] = (start), [FERRY_SAGA_EV_REPLY] = (reply), \
                         [FERRY_SAGA_EV_TIMEOUT] = (timeout),                          \
                         [FERRY_SAGA_EV_CANCEL] = (cancel)},
    FERRY_SAGA_STATUS_LIST(ROW_)
#undef ROW_
};

/* ferry.h makes each of these enums from its list, in the list's order
 * and from 0, so a name's place in the list is its value: one NAME_
 * serves every table. */
#define NAME_(id, name) name,
static const char *const step_status_names[] = {FERRY_SAGA_STEP_STATUS_LIST(NAME_)};
static const char *const event_names[] = {FERRY_SAGA_EVENT_LIST(NAME_)};
static const char *const action_names[] = {FERRY_SAGA_ACTION_LIST(NAME_)};
static const char *const reason_names[] = {FERRY_SAGA_REASON_LIST(NAME_)};
static const char *const ignored_names[] = {FERRY_SAGA_IGNORED_LIST(NAME_)};
#undef NAME_

#define NAME_OF(table, i) \
    ((unsigned)(i) < sizeof(table) / sizeof((table)[0]) ? (table)[(unsigned)(i)] : "?")

const char *ferry_saga_status_name(ferry_saga_status s) { return NAME_OF(status_names, s); }
const char *ferry_saga_step_status_name(ferry_saga_step_status s)
{
    return NAME_OF(step_status_names, s);
}
const char *ferry_saga_event_name(ferry_saga_event_kind k) { return NAME_OF(event_names, k); }
const char *ferry_saga_action_name(ferry_saga_action_kind k) { return NAME_OF(action_names, k); }
const char *ferry_saga_reason_name(ferry_saga_reason r) { return NAME_OF(reason_names, r); }
const char *ferry_saga_ignored_name(ferry_saga_ignored i) { return NAME_OF(ignored_names, i); }
const char *ferry_saga_command_name(ferry_saga_command_kind k)
{
    switch (k) {
    case FERRY_SAGA_CMD_ACTION: return "action";
    case FERRY_SAGA_CMD_COMPENSATION: return "compensation";
    }
    return "?";
}

int ferry_saga_event_format(const ferry_saga_event *ev, char *buf, size_t size)
{
    if (ev->kind != FERRY_SAGA_EV_REPLY)
        return snprintf(buf, size, "%s", ferry_saga_event_name(ev->kind));
    return snprintf(buf, size, "reply %s step %" PRIu32 " round %" PRIu32 " attempt %" PRIu32
                    " %s",
                    ferry_saga_command_name(ev->command), ev->step, ev->round, ev->attempt,
                    ev->succeeded ? "succeeded" : "refused");
}

int ferry_saga_action_format(const ferry_saga_action *a, char *buf, size_t size)
{
    switch (a->kind) {
    case FERRY_SAGA_DO_SEND:
        return snprintf(buf, size, "send %s step %" PRIu32 " round %" PRIu32
                        " attempt %" PRIu32 " delay %" PRId64 "ms",
                        ferry_saga_command_name(a->command), a->step, a->round, a->attempt,
                        a->delay_ms);
    case FERRY_SAGA_DO_SET_DEADLINE:
        return snprintf(buf, size, "set_deadline %" PRId64, a->at_ms);
    case FERRY_SAGA_DO_FINISH:
        return snprintf(buf, size, "finish %s", ferry_saga_status_name(a->status));
    case FERRY_SAGA_DO_COUNT:
        break;
    }
    return snprintf(buf, size, "?");
}

int ferry_saga_key_format(const char *saga_id, const ferry_saga_action *send, char *buf,
                          size_t size)
{
    return snprintf(buf, size, "%s/%" PRIu32 "/%s/%" PRIu32, saga_id, send->step,
                    ferry_saga_command_name(send->command), send->round);
}

/* ------------------------------------------------------------- checks */

static ferry_code check_def(const ferry_saga_def *def, ferry_error *err)
{
    if (def == NULL || def->steps == NULL || def->step_count < 1
        || def->step_count > FERRY_SAGA_STEPS_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "saga definition must have 1 to %d steps", FERRY_SAGA_STEPS_MAX);
    if (def->deadline_ms <= 0 || def->deadline_ms > FERRY_SAGA_TIMEOUT_MAX_MS)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "saga definition: deadline out of range: %" PRId64,
                             def->deadline_ms);
    if (def->pivot_index < -1 || def->pivot_index >= (long)def->step_count)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "saga definition: pivot_index out of range: %d", def->pivot_index);
    for (size_t i = 0; i < def->step_count; i++) {
        const ferry_saga_step_def *s = &def->steps[i];
        const char *bad = NULL;
        if (s->timeout_ms <= 0 || s->timeout_ms > FERRY_SAGA_TIMEOUT_MAX_MS)
            bad = "timeout";
        else if (s->retry.attempts < 1 || s->retry.attempts > FERRY_SAGA_ATTEMPTS_MAX)
            bad = "retry.attempts";
        else if (s->retry.backoff_ms < 0 || s->retry.backoff_ms > FERRY_SAGA_TIMEOUT_MAX_MS)
            bad = "retry.backoff";
        else if (s->retry.max_backoff_ms < s->retry.backoff_ms
                 || s->retry.max_backoff_ms > FERRY_SAGA_TIMEOUT_MAX_MS)
            bad = "retry.max_backoff";
        else if ((s->pivot != 0) != ((long)i == def->pivot_index))
            bad = "pivot";
        else if (!s->has_compensation && (def->pivot_index < 0 || (long)i < def->pivot_index))
            bad = "compensation";
        if (bad != NULL)
            return ferry__error_set(err, FERRY_EINVAL, "definition",
                                 "saga definition: steps[%zu].%s is invalid", i, bad);
    }
    return FERRY_OK;
}

static ferry_code check_state(const ferry_saga_def *def, const ferry_saga_state *st,
                              ferry_error *err)
{
    if (st->status >= FERRY_SAGA_STATUS_COUNT)
        return ferry__error_set(err, FERRY_EINVAL, "state", "saga state: bad status %u",
                             (unsigned)st->status);
    if (st->status == FERRY_SAGA_NEW)
        return FERRY_OK;            /* start rebuilds everything */
    if (st->step_count != def->step_count || st->current >= st->step_count)
        return ferry__error_set(err, FERRY_EINVAL, "state",
                             "saga state does not match its definition: %" PRIu32
                             " steps, current %" PRIu32 ", definition has %zu steps",
                             st->step_count, st->current, def->step_count);
    for (uint32_t i = 0; i < st->step_count; i++)
        if (st->steps[i].action >= FERRY_SAGA_STEP_STATUS_COUNT
            || st->steps[i].compensation >= FERRY_SAGA_STEP_STATUS_COUNT)
            return ferry__error_set(err, FERRY_EINVAL, "state", "saga state: bad step %" PRIu32,
                                 i);
    return FERRY_OK;
}

/* ------------------------------------------------------------- engine */

typedef struct step_ctx {
    const ferry_saga_def *def;
    ferry_saga_state st;            /* becomes *next on success */
    int64_t now;
    ferry_saga_action acts[FERRY_SAGA_ACTIONS_MAX];
    size_t n;
    ferry_error *err;
} step_ctx;

static uint32_t sat_inc(uint32_t v) { return v == UINT32_MAX ? v : v + 1; }

/* After the pivot succeeded the saga only goes forward: the steps past it
 * are retried, never given up or compensated. */
static int forward_only(const step_ctx *c, uint32_t s)
{
    return c->def->pivot_index >= 0 && (long)s > c->def->pivot_index;
}

/* May the saga stop waiting for step s's action and compensate it? */
static int can_give_up(const step_ctx *c, uint32_t s)
{
    return !forward_only(c, s) && c->def->steps[s].has_compensation;
}

/* Does the saga's deadline still decide anything? Only while running,
 * before the pivot succeeded, with a current step that can be undone. */
static int deadline_matters(const step_ctx *c)
{
    return c->st.status == FERRY_SAGA_RUNNING && can_give_up(c, c->st.current);
}

/* base * 2^(n-2) for send n >= 2, at most cap; 0 for the first send. */
static int64_t doubled(int64_t base, int64_t cap, uint32_t n)
{
    if (n < 2 || base == 0)
        return 0;
    int64_t b = base;
    /* Doubling ends within 63 rounds: b grows until it meets the cap. */
    for (uint32_t k = 2; k < n && b < cap; k++)
        b = b > cap / 2 ? cap : b * 2;
    return b < cap ? b : cap;
}

/* The delay before send n (1-based) of a command of step s. */
static int64_t backoff(const step_ctx *c, uint32_t s, uint32_t n)
{
    const ferry_saga_retry *r = &c->def->steps[s].retry;
    return doubled(r->backoff_ms, r->max_backoff_ms, n);
}

/* The delay before send n of a command of step s that follows a refusal
 * (a compensation, a step after the pivot: retried for ever). A step
 * without a backoff still pauses here, or a participant that refuses
 * every time would be sent the command again as fast as messages go
 * round, for ever; after a timeout the timeout was the wait. */
static int64_t refusal_backoff(const step_ctx *c, uint32_t s, uint32_t n)
{
    if (c->def->steps[s].retry.backoff_ms > 0)
        return backoff(c, s, n);
    return doubled(FERRY_SAGA_REFUSAL_BACKOFF_MS, FERRY_SAGA_REFUSAL_BACKOFF_MAX_MS, n);
}

static void push(step_ctx *c, const ferry_saga_action *a)
{
    /* Bounded by construction: at most a SEND and a SET_DEADLINE, or a
     * FINISH, per event; ACTIONS_MAX leaves room. */
    if (c->n < FERRY_SAGA_ACTIONS_MAX)
        c->acts[c->n++] = *a;
}

/* Send (or resend) a command of step s; delay is the backoff. */
static void send(step_ctx *c, uint32_t s, ferry_saga_command_kind kind, int64_t delay)
{
    ferry_saga_step_state *ss = &c->st.steps[s];
    uint32_t attempt, round;
    if (kind == FERRY_SAGA_CMD_ACTION) {
        ss->action = FERRY_SAGA_STEP_SENT;
        attempt = ss->action_attempts = sat_inc(ss->action_attempts);
        round = ss->action_round;
    } else {
        ss->compensation = FERRY_SAGA_STEP_SENT;
        attempt = ss->compensation_attempts = sat_inc(ss->compensation_attempts);
        round = ss->compensation_round;
    }
    c->st.current = s;
    c->st.timer_ms = c->now + delay + c->def->steps[s].timeout_ms;
    ferry_saga_action a = {.kind = FERRY_SAGA_DO_SEND, .command = kind, .step = s,
                           .round = round, .attempt = attempt, .delay_ms = delay};
    push(c, &a);
}

/* Store and announce when the next timeout event can matter. */
static void arm(step_ctx *c)
{
    int64_t wake = c->st.timer_ms;
    if (deadline_matters(c) && c->st.deadline_ms < wake)
        wake = c->st.deadline_ms;
    c->st.wake_ms = wake;
    ferry_saga_action a = {.kind = FERRY_SAGA_DO_SET_DEADLINE, .at_ms = wake};
    push(c, &a);
}

/* Send a command of step s once more, after the backoff its next attempt
 * waits, and arm the timer for it. */
static ferry_code resend_after(step_ctx *c, uint32_t s, ferry_saga_command_kind kind,
                               int refused)
{
    const ferry_saga_step_state *ss = &c->st.steps[s];
    uint32_t n = sat_inc(kind == FERRY_SAGA_CMD_ACTION ? ss->action_attempts
                                                       : ss->compensation_attempts);
    send(c, s, kind, refused ? refusal_backoff(c, s, n) : backoff(c, s, n));
    arm(c);
    return FERRY_OK;
}

/* Send a command again after its timer ran out. */
static ferry_code resend(step_ctx *c, uint32_t s, ferry_saga_command_kind kind)
{
    return resend_after(c, s, kind, 0);
}

/* Send a command again, in its next round, after it was refused. */
static ferry_code resend_refused(step_ctx *c, uint32_t s, ferry_saga_command_kind kind)
{
    return resend_after(c, s, kind, 1);
}

static void finish(step_ctx *c, ferry_saga_status status)
{
    c->st.status = (uint8_t)status;
    c->st.timer_ms = 0;
    c->st.wake_ms = 0;
    ferry_saga_action a = {.kind = FERRY_SAGA_DO_FINISH, .status = status};
    push(c, &a);
}

/* Did step s run, or may it have? Then it needs its compensation. */
static int needs_compensation(const step_ctx *c, uint32_t s)
{
    const ferry_saga_step_state *ss = &c->st.steps[s];
    return (ss->action == FERRY_SAGA_STEP_SUCCEEDED || ss->action == FERRY_SAGA_STEP_TIMED_OUT)
           && ss->compensation != FERRY_SAGA_STEP_SUCCEEDED;
}

/* The next step to compensate: the highest that needs it (reverse order
 * of application, since steps run one after another), or -1. */
static long next_compensation(const step_ctx *c)
{
#if BROKEN(2)
    for (uint32_t s = 0; s < c->st.step_count; s++)
        if (needs_compensation(c, s))
            return s;
#else
    for (uint32_t s = c->st.step_count; s-- > 0;)
        if (needs_compensation(c, s))
            return s;
#endif
    return -1;
}

/* Send the next compensation, or finish compensated when none is left. */
static ferry_code compensate_next(step_ctx *c)
{
    long s = next_compensation(c);
    if (s < 0) {
        finish(c, FERRY_SAGA_COMPENSATED);
        return FERRY_OK;
    }
    /* check_def() makes every step that can reach here compensable: the
     * pivot without a compensation is never given up, and the steps after
     * it never run before it succeeded. */
    if (!c->def->steps[s].has_compensation)
        return ferry__error_set(c->err, FERRY_ESTATE, "definition",
                             "saga step %ld (%s) may have run but has no compensation", s,
                             c->def->steps[s].name ? c->def->steps[s].name : "?");
    send(c, (uint32_t)s, FERRY_SAGA_CMD_COMPENSATION, 0);
    arm(c);
    return FERRY_OK;
}

static ferry_code start_compensating(step_ctx *c, ferry_saga_reason why, uint32_t s)
{
    c->st.status = FERRY_SAGA_COMPENSATING;
    c->st.reason = (uint8_t)why;
    c->st.reason_step = s;
    return compensate_next(c);
}

/* Stop waiting for the current step's action: it may have run. */
static ferry_code give_up(step_ctx *c, ferry_saga_reason why)
{
    uint32_t s = c->st.current;
#if BROKEN(1)
    c->st.steps[s].action = why == FERRY_SAGA_REASON_TIMED_OUT ? FERRY_SAGA_STEP_FAILED
                                                               : FERRY_SAGA_STEP_TIMED_OUT;
#else
    c->st.steps[s].action = FERRY_SAGA_STEP_TIMED_OUT;
#endif
    return start_compensating(c, why, s);
}

static ferry_code ignore(step_ctx *c, ferry_saga_ignored why)
{
    c->st.ignored = (uint8_t)why;
    return FERRY_OK;
}

/* Does ev answer the command now outstanding? Any attempt of the current
 * round does: they share the key, hence the participant's outcome. */
static int answers_current(const step_ctx *c, const ferry_saga_event *ev,
                           ferry_saga_command_kind kind)
{
    const ferry_saga_step_state *ss = &c->st.steps[c->st.current];
    if (ev->command != kind || ev->step != c->st.current || ev->attempt == 0)
        return 0;
    if (kind == FERRY_SAGA_CMD_ACTION)
        return ss->action == FERRY_SAGA_STEP_SENT && ev->round == ss->action_round
               && ev->attempt <= ss->action_attempts;
    return ss->compensation == FERRY_SAGA_STEP_SENT && ev->round == ss->compensation_round
           && ev->attempt <= ss->compensation_attempts;
}

static ferry_code on_start(step_ctx *c)
{
    uint64_t revision = c->st.revision;
    memset(&c->st, 0, sizeof c->st);
    c->st.revision = revision;
    c->st.status = FERRY_SAGA_RUNNING;
    c->st.step_count = (uint32_t)c->def->step_count;
    c->st.started_ms = c->now;
    c->st.deadline_ms = c->now + c->def->deadline_ms;
    send(c, 0, FERRY_SAGA_CMD_ACTION, 0);
    arm(c);
    return FERRY_OK;
}

static ferry_code on_reply_running(step_ctx *c, const ferry_saga_event *ev)
{
    if (!answers_current(c, ev, FERRY_SAGA_CMD_ACTION))
        return ignore(c, FERRY_SAGA_IGNORED_STALE_REPLY);
    uint32_t s = c->st.current;
    ferry_saga_step_state *ss = &c->st.steps[s];
    if (ev->succeeded) {
        ss->action = FERRY_SAGA_STEP_SUCCEEDED;
        if (s + 1 == c->st.step_count) {
            finish(c, FERRY_SAGA_COMPLETED);
            return FERRY_OK;
        }
        /* Past the deadline, start nothing more that must then be undone. */
        if (c->now >= c->st.deadline_ms && !forward_only(c, s + 1))
            return start_compensating(c, FERRY_SAGA_REASON_DEADLINE, s);
        send(c, s + 1, FERRY_SAGA_CMD_ACTION, 0);
        arm(c);
        return FERRY_OK;
    }
    if (forward_only(c, s)) {
        /* A refusal is final for its key: try again under the next one. */
        ss->action_round = sat_inc(ss->action_round);
        return resend_refused(c, s, FERRY_SAGA_CMD_ACTION);
    }
    ss->action = FERRY_SAGA_STEP_FAILED;
    return start_compensating(c, FERRY_SAGA_REASON_FAILED, s);
}

static ferry_code on_reply_compensating(step_ctx *c, const ferry_saga_event *ev)
{
#if BROKEN(3)
    if (ev->command == FERRY_SAGA_CMD_ACTION && ev->succeeded && ev->step < c->st.step_count
        && c->st.steps[ev->step].action == FERRY_SAGA_STEP_TIMED_OUT
        && ev->round == c->st.steps[ev->step].action_round) {
        uint32_t cur = c->st.current;
        int64_t timer = c->st.timer_ms;
        c->st.steps[ev->step].action = FERRY_SAGA_STEP_SUCCEEDED;
        if (ev->step + 1 < c->st.step_count) {
            send(c, ev->step + 1, FERRY_SAGA_CMD_ACTION, 0);
            c->st.current = cur;
            c->st.timer_ms = timer;
        }
        return FERRY_OK;
    }
#endif
    if (!answers_current(c, ev, FERRY_SAGA_CMD_COMPENSATION))
        return ignore(c, FERRY_SAGA_IGNORED_STALE_REPLY);
    uint32_t s = c->st.current;
    ferry_saga_step_state *ss = &c->st.steps[s];
    if (ev->succeeded) {
        ss->compensation = FERRY_SAGA_STEP_SUCCEEDED;
        return compensate_next(c);
    }
    ss->compensation_round = sat_inc(ss->compensation_round);
    return resend_refused(c, s, FERRY_SAGA_CMD_COMPENSATION);
}

static ferry_code on_timeout_running(step_ctx *c)
{
    uint32_t s = c->st.current;
    ferry_saga_step_state *ss = &c->st.steps[s];
    if (deadline_matters(c) && c->now >= c->st.deadline_ms)
        return give_up(c, FERRY_SAGA_REASON_DEADLINE);
    if (c->now < c->st.timer_ms)
        return ignore(c, FERRY_SAGA_IGNORED_EARLY);
    if (can_give_up(c, s) && ss->action_attempts >= (uint32_t)c->def->steps[s].retry.attempts)
        return give_up(c, FERRY_SAGA_REASON_TIMED_OUT);
#if BROKEN(6)
    ss->action_round = sat_inc(ss->action_round);
#endif
    return resend(c, s, FERRY_SAGA_CMD_ACTION);
}

static ferry_code on_timeout_compensating(step_ctx *c)
{
    uint32_t s = c->st.current;
    if (c->now < c->st.timer_ms)
        return ignore(c, FERRY_SAGA_IGNORED_EARLY);
#if BROKEN(4)
    c->st.timer_ms = c->now + c->def->steps[s].timeout_ms;
    arm(c);
    return FERRY_OK;
#endif
#if BROKEN(5)
    c->st.steps[s].compensation_round = sat_inc(c->st.steps[s].compensation_round);
#endif
    return resend(c, s, FERRY_SAGA_CMD_COMPENSATION);
}

static ferry_code on_cancel_running(step_ctx *c)
{
    uint32_t s = c->st.current;
    const char *name = c->def->steps[s].name ? c->def->steps[s].name : "?";
    if (forward_only(c, s))
        return ferry__error_set(c->err, FERRY_ESTATE, "event",
                             "cannot cancel saga: running -> compensating refused: the pivot "
                             "step %d succeeded and the saga only goes forward",
                             c->def->pivot_index);
    if (!can_give_up(c, s)) {
        ferry__error_set(c->err, FERRY_ESTATE, "event",
                      "cannot cancel saga yet: running -> compensating refused: step %" PRIu32
                      " (%s) has no compensation and its answer has not come",
                      s, name);
        if (c->err != NULL)
            c->err->retriable = 1;
        return FERRY_ESTATE;
    }
    return give_up(c, FERRY_SAGA_REASON_CANCELLED);
}

static ferry_code invalid(step_ctx *c, ferry_saga_status from, ferry_saga_status to,
                          ferry_saga_event_kind ev)
{
    return ferry__error_set(c->err, FERRY_ESTATE, "event",
                         "invalid saga transition %s -> %s on %s", ferry_saga_status_name(from),
                         ferry_saga_status_name(to), ferry_saga_event_name(ev));
}

ferry_code ferry_saga_step(const ferry_saga_def *def, const ferry_saga_state *state,
                           const ferry_saga_event *event, int64_t now_ms, ferry_saga_state *next,
                           ferry_saga_action *actions, size_t actions_cap, size_t *n_actions,
                           ferry_error *err)
{
    if (state == NULL || event == NULL || next == NULL || actions == NULL || n_actions == NULL)
        return ferry__error_set(err, FERRY_EINVAL, NULL, "ferry_saga_step: NULL argument");
    if (actions_cap < FERRY_SAGA_ACTIONS_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "actions_cap",
                             "ferry_saga_step needs room for %d actions, got %zu",
                             FERRY_SAGA_ACTIONS_MAX, actions_cap);
    if (now_ms < 0 || now_ms > FERRY_SAGA_NOW_MAX_MS)
        return ferry__error_set(err, FERRY_EINVAL, "now_ms", "now_ms out of range: %" PRId64,
                             now_ms);
    ferry_code rc = check_def(def, err);
    if (rc != FERRY_OK)
        return rc;
    if ((rc = check_state(def, state, err)) != FERRY_OK)
        return rc;
    if ((unsigned)event->kind >= FERRY_SAGA_EV_COUNT
        || (event->kind == FERRY_SAGA_EV_REPLY
            && ((unsigned)event->command > FERRY_SAGA_CMD_COMPENSATION
                || event->step >= def->step_count)))
        return ferry__error_set(err, FERRY_EINVAL, "event", "malformed saga event");

    /* Work on a copy: on error nothing the caller owns is written, and
     * next may alias state. The copy is ~1.3 KB, on the stack. */
    step_ctx c = {.def = def, .st = *state, .now = now_ms, .err = err};
    c.st.ignored = FERRY_SAGA_IGNORED_NONE;
    ferry_saga_status from = (ferry_saga_status)state->status;
    ferry_saga_event_kind ev = event->kind;

    if (transitions[from][ev] == 0) {
        ferry_saga_status to = ev == FERRY_SAGA_EV_START    ? FERRY_SAGA_RUNNING
                               : ev == FERRY_SAGA_EV_CANCEL ? FERRY_SAGA_COMPENSATING
                                                            : from;
        return invalid(&c, from, to, ev);
    }

    switch (from) {
    case FERRY_SAGA_NEW:
        rc = on_start(&c);          /* the table admits only start here */
        break;
    case FERRY_SAGA_RUNNING:
        rc = ev == FERRY_SAGA_EV_REPLY     ? on_reply_running(&c, event)
             : ev == FERRY_SAGA_EV_TIMEOUT ? on_timeout_running(&c)
                                           : on_cancel_running(&c);
        break;
    case FERRY_SAGA_COMPENSATING:
        rc = ev == FERRY_SAGA_EV_REPLY     ? on_reply_compensating(&c, event)
             : ev == FERRY_SAGA_EV_TIMEOUT ? on_timeout_compensating(&c)
                                           : ignore(&c, FERRY_SAGA_IGNORED_COMPENSATING);
        break;
    case FERRY_SAGA_COMPLETED:
    case FERRY_SAGA_COMPENSATED:
    case FERRY_SAGA_FAILED:
        rc = ignore(&c, FERRY_SAGA_IGNORED_FINISHED);
        break;
    case FERRY_SAGA_STATUS_COUNT:
        break;
    }
    if (rc != FERRY_OK)
        return rc;

    ferry_saga_status to = (ferry_saga_status)c.st.status;
    if ((transitions[from][ev] & (1u << to)) == 0)
        return invalid(&c, from, to, ev);       /* a bug in this file */

    if (c.st.ignored != FERRY_SAGA_IGNORED_NONE) {
        /* Nothing but the flag changes, not even the revision. */
        *next = *state;
        next->ignored = c.st.ignored;
        *n_actions = 0;
        return FERRY_OK;
    }
    c.st.revision = state->revision + 1;
    *next = c.st;
    memcpy(actions, c.acts, c.n * sizeof c.acts[0]);
    *n_actions = c.n;
    return FERRY_OK;
}
