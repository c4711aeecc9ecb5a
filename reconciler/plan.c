/*
 * plan.c — the sweeps' decisions (plan.h): pure functions of what
 * detection found and what an act returned.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "plan.h"

/* ------------------------------------------------ over-attempted rows */

bool rc_over_plan_move(rc_mode mode, int64_t found)
{
    return mode == RC_REPAIR && found > 0;
}

rc_over_verdict rc_over_verdict_of(rc_mode mode, int64_t found, int64_t moved, int64_t clash,
                                   rc_act_end end)
{
    if (mode == RC_CHECK)
        return (rc_over_verdict){.found = found};
    rc_over_verdict v = {.repaired = moved, .clash = clash};
    int64_t left = end != RC_ACT_DONE ? found - moved - clash : 0;
    if (left > 0) {
        v.left = left;
        v.left_why = end == RC_ACT_BUSY      ? "a row stayed locked past the lock timeout"
                     : end == RC_ACT_STOPPED ? "interrupted"
                                             : "an error, above";
    }
    return v;
}

/* ------------------------------------------------------ dead letters */

static bool is_hex_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

rc_dead_target rc_dead_target_kind(const char *t)
{
    size_t len = strlen(t);
    if (len > 0 && len <= 18 && strspn(t, "0123456789") == len)
        return RC_TARGET_ID;
    if (len == 36 && t[8] == '-' && t[13] == '-' && t[18] == '-' && t[23] == '-' &&
        is_hex_run(t, 8) && is_hex_run(t + 9, 4) && is_hex_run(t + 14, 4) &&
        is_hex_run(t + 19, 4) && is_hex_run(t + 24, 12))
        return RC_TARGET_UUID;
    if (len == 32 && is_hex_run(t, 32))
        return RC_TARGET_UUID;
    const char *slash = strchr(t, '/');
    if (slash != NULL && slash > t && slash[1] != '\0')
        return RC_TARGET_KEY;
    return RC_TARGET_BAD;
}

const char *rc_dead_reason(int replay, const char *actor, const char *given, char *buf,
                           size_t len)
{
    if (given != NULL && given[0] != '\0')
        return given;
    snprintf(buf, len, "%s by %s", replay ? "replayed" : "discarded",
             actor ? actor : "ferry-reconcile");
    return buf;
}

const char *rc_dead_action_sql(int replay)
{
    return replay ? "SELECT ferry.replay_dead_letter($1::bigint)"
                  : "SELECT ferry.discard_dead_letter($1::bigint)";
}

const char *rc_dead_effect(int replay, const char *consumer, char *buf, size_t len)
{
    int relay = consumer[0] == '\0';
    if (replay && relay)
        return "replayed into the outbox with its id and position: the relay publishes it "
               "next, ahead of its key's later messages";
    if (replay) {
        snprintf(buf, len, "handed back to consumer %s, which applies it next; its key is "
                 "released", consumer);
        return buf;
    }
    if (relay)
        return "discarded: a marker with its position (payload null, header ferry_discarded) "
               "is published in its place so that consumers see no gap, and its key is "
               "released";
    snprintf(buf, len, "discarded: consumer %s counts its position as done and its key is "
             "released", consumer);
    return buf;
}

/* -------------------------------------------------------------- sagas */

rc_saga_class rc_saga_plan(rc_mode mode, const char *loaded_hash, const char *stored_hash)
{
    if (mode != RC_REPAIR)
        return RC_SAGA_FOUND;
    if (loaded_hash == NULL)
        return RC_SAGA_NOT_LOADED;
    if (strcmp(loaded_hash, stored_hash) != 0)
        return RC_SAGA_HASH;
    return RC_SAGA_FIRE;
}

int rc_saga_fire_class(ferry_code code, const char *field, const char *sqlstate, int fired,
                       int *elsewhere)
{
    *elsewhere = 0;
    if (code == FERRY_EINVAL && strcmp(field, "saga_id") == 0) {
        *elsewhere = 1;
        return RC_SAGA_FIRED;
    }
    if (code == FERRY_EINVAL || code == FERRY_ESTATE)
        return RC_SAGA_REFUSED;
    if (code == FERRY_EDB && strcmp(sqlstate, "55P03") == 0)
        return RC_SAGA_BUSY;
    if (code != FERRY_OK)
        return -1;
    return fired ? RC_SAGA_FIRED : RC_SAGA_FIRE;
}

rc_saga_class rc_saga_recheck(int still_overdue, int *elsewhere)
{
    *elsewhere = !still_overdue;
    return still_overdue ? RC_SAGA_STILL_DUE : RC_SAGA_FIRED;
}

rc_outcome rc_saga_outcome(rc_saga_class cls, int64_t count, int64_t elsewhere)
{
    switch (cls) {
    case RC_SAGA_FOUND:
        return RC_FOUND;
    case RC_SAGA_FIRED:
        return elsewhere == count ? RC_PENDING : RC_REPAIRED;
    default:
        return RC_LEFT;
    }
}
