/*
 * plan.h — the sweeps' decisions as pure functions: no database, no
 * clock, no report. A sweep detects (reads rows into findings), asks these
 * what to do, acts, and asks them again what its acts amount to for the
 * report. tests/test_reconcile_plan.c holds each to its edge cases.
 */
#ifndef FERRY_RECONCILE_PLAN_H
#define FERRY_RECONCILE_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "report.h"

/* How an act ended: it went through every row it meant to, or it stopped
 * early, and why. */
typedef enum rc_act_end {
    RC_ACT_DONE = 0,
    RC_ACT_BUSY,                /* a row stayed locked past the lock timeout */
    RC_ACT_STOPPED,             /* a signal */
    RC_ACT_FAILED,              /* an operational error (reported) */
} rc_act_end;

/* ------------------------------------------------ over-attempted rows */

/* Move over-attempted rows to the dead letters? Only in repair, and only
 * when detection found any. */
bool rc_over_plan_move(rc_mode mode, int64_t found);

/* What the rows of one topic come to: found by detection, moved and left
 * by a clash (their id already has a relay dead letter) by the act. */
typedef struct rc_over_verdict {
    int64_t found;              /* check: the rows found (RC_FOUND) */
    int64_t repaired;           /* repair: moved to the dead letters (RC_REPAIRED) */
    int64_t clash;              /* repair: kept in the outbox by a clash (RC_LEFT) */
    int64_t left;               /* repair: not reached, the act ended early (RC_LEFT) */
    const char *left_why;       /* why not, for the sentence; NULL when left is 0 */
} rc_over_verdict;

/* Rows the act reached and neither moved nor found clashing were
 * published or dead-lettered by a relay meanwhile: nothing left. Rows it
 * did not reach (it ended early) are left. Rows that became over-attempted
 * after detection may be moved too: moved + clash > found leaves none. */
rc_over_verdict rc_over_verdict_of(rc_mode mode, int64_t found, int64_t moved, int64_t clash,
                                   rc_act_end end);

/* ------------------------------------------------------ dead letters */

typedef enum rc_dead_target {
    RC_TARGET_ID = 0,           /* digits (at most 18): a dead letter id */
    RC_TARGET_UUID,             /* 8-4-4-4-12 hex, or 32 hex digits: a message id */
    RC_TARGET_KEY,              /* TOPIC/KEY, split at the first '/' */
    RC_TARGET_BAD,
} rc_dead_target;

/* What a --replay / --discard target names. A Kafka topic name cannot
 * hold a '/', a key can: the first '/' splits. */
rc_dead_target rc_dead_target_kind(const char *target);

/* The reason recorded with a decision: the one given (--reason), else
 * "replayed by ACTOR" / "discarded by ACTOR" written into buf. */
const char *rc_dead_reason(int replay, const char *actor, const char *given, char *buf,
                           size_t len);

/* The SQL function that carries out the decision on one letter ($1 its id). */
const char *rc_dead_action_sql(int replay);

/* What the decision did, for the finding: on the relay's side (consumer
 * "") or a consumer's, replayed or discarded. */
const char *rc_dead_effect(int replay, const char *consumer, char *buf, size_t len);

/* -------------------------------------------------------------- sagas */

/* What became of one overdue saga, in the order the findings are listed. */
typedef enum rc_saga_class {
    RC_SAGA_FOUND = 0,          /* check: found */
    RC_SAGA_FIRED,              /* repair: timer fired (by us, or a worker meanwhile) */
    RC_SAGA_NOT_LOADED,         /* left: its definition is not in --sagas */
    RC_SAGA_HASH,               /* left: stored under another hash than the loaded one */
    RC_SAGA_STILL_DUE,          /* left: fired, the engine found nothing due, still overdue */
    RC_SAGA_BUSY,               /* left: another session held the row past lock_timeout */
    RC_SAGA_REFUSED,            /* left: the engine or the driver refused the timeout */
    RC_SAGA_FIRE,               /* plan only: fire its timer, then it is one of the above */
} rc_saga_class;

/* Before acting on an overdue saga: report it (check), leave it (its
 * definition not loaded, or loaded under another hash), or fire its timer.
 * loaded_hash: the hash of the loaded definition of its name, NULL when
 * none is loaded. */
rc_saga_class rc_saga_plan(rc_mode mode, const char *loaded_hash, const char *stored_hash);

/* After firing: what ferry_saga_fire_timer's result (code, err's field
 * and sqlstate, its out-parameter fired) means. RC_SAGA_FIRE: the engine
 * found nothing due, re-read the row (rc_saga_recheck decides); -1: an
 * operational error. *elsewhere set when the saga was found gone since it
 * was read (deleted: nothing overdue any more). */
int rc_saga_fire_class(ferry_code code, const char *field, const char *sqlstate, int fired,
                       int *elsewhere);
/* The re-read after nothing was due: still overdue, or fired elsewhere. */
rc_saga_class rc_saga_recheck(int still_overdue, int *elsewhere);

/* The outcome of a finding of count sagas of one class, elsewhere of
 * them fired by a worker meanwhile: a firing that was all the workers'
 * is pending, not a repair of ours. */
rc_outcome rc_saga_outcome(rc_saga_class cls, int64_t count, int64_t elsewhere);

#endif
