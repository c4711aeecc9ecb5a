/*
 * consume_plan.c — the consumer's batch planner: a pure function of what
 * it was told (see consume_plan.h). lib/consume.c's apply_batch() carries
 * its steps out; tests/test_consume_sim.c drives it through failures by
 * the thousand, with the broken variants below, which exist only in that
 * build.
 */
#include <stddef.h>

#include "consume_plan.h"

#ifdef FERRY_CPLAN_TEST
#define BROKEN(p, v) ((p)->broken == (v))
void ferry__cplan_set_broken(cplan *p, cplan_broken b) { p->broken = b; }
#else
#define BROKEN(p, v) 0
#endif

void ferry__cplan_init(cplan *p, int n, const bool *poison)
{
    *p = (cplan){.n = n > 0 ? n : 0, .poison = poison, .failed = -1,
                 .phase = CPLAN_P_START};
}

static cplan_step step(cplan *p, cplan_do what, int from, int to, bool first,
                       enum cplan_phase phase)
{
    p->last = (cplan_step){what, from, to, first};
    p->phase = phase;
    return p->last;
}

static cplan_step end(cplan *p)
{
    return step(p, CPLAN_END, p->next, p->next, false, CPLAN_P_END);
}

/* [p->next, upto) are done: they and everything before may be acknowledged. */
static void done_upto(cplan *p, int upto)
{
    if (upto > p->next)
        p->next = upto;
    if (p->next > p->acked)
        p->acked = p->next;
}

/* What to do next, after the last step went as r said. */
typedef enum go { GO_START, GO_BEFORE, GO_ONE_BEFORE, GO_ONE_RUN, GO_ALONE, GO_END } go;

static go absorb(cplan *p, const cplan_result *r)
{
    const cplan_step *l = &p->last;
    int len = l->to - l->from;
    if (r == NULL)
        return GO_END;          /* a step without its result: done is not known */
    switch (p->phase) {
    case CPLAN_P_RUN:
        if (r->ok) {
            done_upto(p, l->to);
            return GO_START;
        }
        if (BROKEN(p, CPLAN_BROKEN_ACK_FAILED))
            p->acked = l->to;
        if (r->failed_at < 0 || r->failed_at >= len)
            return GO_ONE_RUN;
        if (BROKEN(p, CPLAN_BROKEN_WHOLE_AGAIN))
            return GO_START;
        p->failed = l->from + r->failed_at;
        return GO_BEFORE;
    case CPLAN_P_BEFORE:
        if (r->ok) {
            done_upto(p, l->to);
            return GO_ALONE;
        }
        return GO_ONE_BEFORE;
    case CPLAN_P_ONE: {
        int d = r->done < 0 ? 0 : r->done > len ? len : r->done;
        done_upto(p, l->from + d);
        if (d < len)
            return GO_END;
        return p->failed >= 0 ? GO_ALONE : GO_START;
    }
    case CPLAN_P_ALONE:
        if (!r->ok)
            return GO_END;
        done_upto(p, l->from + 1);
        p->failed = -1;
        return GO_START;
    default:
        return GO_END;
    }
}

/* The next run from p->next: known poison goes alone, and so does a lone
 * message before one, or at the end. */
static cplan_step start(cplan *p, bool stop)
{
    if (stop || p->next >= p->n)
        return end(p);
    int j = p->next;
    while (j < p->n && (!p->poison[j] || BROKEN(p, CPLAN_BROKEN_POISON_BATCHED)))
        j++;
    if (j - p->next <= 1)
        return step(p, CPLAN_ONE_BY_ONE, p->next, p->next + 1, false, CPLAN_P_ONE);
    p->run_end = j;
    return step(p, CPLAN_BATCH, p->next, j, true, CPLAN_P_RUN);
}

cplan_step ferry__cplan_next(cplan *p, const cplan_result *result, bool stop, int *ack_to)
{
    go g = GO_START;
    if (p->phase == CPLAN_P_END)
        g = GO_END;
    else if (p->phase != CPLAN_P_START)
        g = absorb(p, result);
    *ack_to = p->acked;

    switch (g) {
    case GO_START:
        return start(p, stop);
    case GO_BEFORE: {
        /* The messages before the failing one, as a batch again (or alone,
         * if one), then the failing one alone; the rest after it. */
        int k = p->failed;
        if (k - p->next >= 2)
            return step(p, CPLAN_BATCH, p->next, k, false, CPLAN_P_BEFORE);
        if (k - p->next == 1)
            return step(p, CPLAN_ONE_BY_ONE, p->next, k, false, CPLAN_P_ONE);
        return step(p, CPLAN_FAILED_ALONE, k, k + 1, false, CPLAN_P_ALONE);
    }
    case GO_ONE_BEFORE:
        return step(p, CPLAN_ONE_BY_ONE, p->next, p->failed, false, CPLAN_P_ONE);
    case GO_ONE_RUN:
        return step(p, CPLAN_ONE_BY_ONE, p->next, p->run_end, false, CPLAN_P_ONE);
    case GO_ALONE:
        if (BROKEN(p, CPLAN_BROKEN_SKIP_FAILED)) {
            done_upto(p, p->failed + 1);    /* passed over, as if done */
            p->failed = -1;
            return start(p, stop);
        }
        return step(p, CPLAN_FAILED_ALONE, p->failed, p->failed + 1, false, CPLAN_P_ALONE);
    case GO_END:
    default:
        return end(p);
    }
}
