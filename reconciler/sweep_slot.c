/*
 * sweep_slot.c — the WAL source's replication slot (sweep "wal_slot").
 *
 * A logical slot keeps every WAL segment from its restart position until
 * its reader confirms past it: a slot nobody reads, or whose reader is
 * stuck, pins WAL until the disk fills or max_slot_wal_keep_size
 * invalidates it (and the messages in the WAL it loses are never
 * published). So this sweep reports, for ferry's slot
 * (ferry.settings.wal_slot):
 *
 *   missing    emit_mode is 'wal' and the slot does not exist: messages
 *              emitted since are decoded by nobody
 *   lost       the slot is invalidated (wal_status = lost)
 *   unreserved it retains more WAL than max_slot_wal_keep_size allows
 *              (wal_status = unreserved): the next checkpoint makes it lost
 *   inactive   no session reads it, and the relay has confirmed nothing
 *              for longer than the outbox lag budget (a relay restarting
 *              is not a finding)
 *   lagging    read, but the confirmed position has not moved for longer
 *              than the outbox lag budget while WAL was written past it
 *              (the relay is stuck: Kafka down, a message failing)
 *   recreated  `ferry-relay slot recreate` left a window of WAL whose
 *              messages may never have been published (ferry.wal_slot's
 *              missed_* columns), until an operator who has dealt with it
 *              clears the window
 *
 * each with the WAL bytes it retains. When the relay last confirmed comes
 * from ferry.wal_slot.confirmed_at, which the WAL relay writes every
 * second while its position moves (daemon/relay_wal.c); without that row
 * (a slot made by hand) an inactive slot is a finding at once.
 *
 * Only a relay or an operator can repair any of these (start the relay,
 * `ferry-relay slot recreate`), so the outcome is never "repaired": found
 * in check, left in repair. Nothing is written.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "reconcile.h"

#define SLOT_SQL                                                                               \
    "SELECT s.wal_slot, s.emit_mode = 'wal', r.slot_name IS NOT NULL, "                       \
    "       coalesce(r.wal_status, ''), coalesce(r.active, false), "                           \
    "       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn), 0)::bigint, "       \
    "       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn), 0)::bigint, " \
    "       w.slot_name IS NOT NULL, "                                                         \
    "       floor(extract(epoch FROM now() - coalesce(w.confirmed_at, w.created_at))"          \
    "             * 1000)::bigint, "                                                           \
    "       w.missed_from_lsn IS NOT NULL, coalesce(w.missed_from_lsn::text, ''), "            \
    "       coalesce(w.missed_to_lsn::text, ''), coalesce(w.missed_from_at::text, ''), "       \
    "       coalesce(w.recreated_at::text, '') "                                              \
    "  FROM ferry.settings s "                                                                 \
    "  LEFT JOIN pg_replication_slots r "                                                      \
    "         ON r.slot_name = s.wal_slot AND r.database = current_database() "                \
    "  LEFT JOIN ferry.wal_slot w ON w.slot_name = s.wal_slot "                                \
    " WHERE NOT pg_is_in_recovery()"

int rc_sweep_wal_slot(rc_ctx *ctx)
{
    PGresult *res = rc_query(ctx, "could not read the replication slot", SLOT_SQL, 0, NULL);
    if (res == NULL)
        return -1;
    if (PQntuples(res) != 1) {
        PQclear(res);           /* a standby, or no settings row: nothing to judge */
        return 0;
    }
    const char *slot = PQgetvalue(res, 0, 0);
    int wal_mode = rc_bool_at(res, 0, 1), exists = rc_bool_at(res, 0, 2);
    const char *wal_status = PQgetvalue(res, 0, 3);
    int active = rc_bool_at(res, 0, 4);
    int64_t retained = rc_int_at(res, 0, 5), lag_bytes = rc_int_at(res, 0, 6);
    int recorded = rc_bool_at(res, 0, 7);
    int64_t quiet_ms = rc_int_at(res, 0, 8);
    int64_t budget = ctx->budgets->outbox_lag_ms;
    rc_outcome outcome = ctx->mode == RC_CHECK ? RC_FOUND : RC_LEFT;
    char subject[96], bud[32], quiet[32];
    snprintf(subject, sizeof subject, "slot %s", slot);
    rc_duration(budget, bud, sizeof bud);
    rc_duration(quiet_ms, quiet, sizeof quiet);

    const char *problem = NULL;
    char why[512];
    if (!exists) {
        if (wal_mode) {
            problem = "missing";
            snprintf(why, sizeof why, "emit_mode is 'wal' but the replication slot does not "
                     "exist: messages emitted since it went are decoded by nobody; set "
                     "emit_mode = 'table', then `ferry-relay slot recreate`");
        }
    } else if (strcmp(wal_status, "lost") == 0) {
        problem = "lost";
        snprintf(why, sizeof why, "the replication slot is invalidated (wal_status = lost, past "
                 "max_slot_wal_keep_size): messages in the WAL it lost may never have been "
                 "published; set emit_mode = 'table', then `ferry-relay slot recreate`");
    } else if (strcmp(wal_status, "unreserved") == 0) {
        problem = "unreserved";
        snprintf(why, sizeof why, "the replication slot retains %" PRId64 " bytes of WAL, more "
                 "than max_slot_wal_keep_size (wal_status = unreserved): the next checkpoint "
                 "invalidates it and messages in the WAL it loses may never be published; a "
                 "WAL relay must catch up now", retained);
    } else if (!active && (!recorded || quiet_ms > budget)) {
        problem = "inactive";
        char since[96] = "";
        if (recorded)
            snprintf(since, sizeof since, " and none confirmed for %s (budget %s)", quiet, bud);
        snprintf(why, sizeof why, "no relay reads the replication slot%s: it pins %" PRId64
                 " bytes of WAL (%" PRId64 " past its confirmed position) until a WAL relay "
                 "streams it", since, retained, lag_bytes);
    } else if (active && recorded && lag_bytes > 0 && quiet_ms > budget) {
        problem = "lagging";
        snprintf(why, sizeof why, "the relay reading the replication slot has confirmed "
                 "nothing for %s (budget %s) while %" PRId64 " bytes of WAL were written past "
                 "its position: it is stuck (Kafka down, or a message failing); the slot pins "
                 "%" PRId64 " bytes of WAL", quiet, bud, lag_bytes, retained);
    }
    if (problem != NULL) {
        json_t *detail = json_pack("{s:s, s:b, s:b, s:s, s:b, s:I, s:I, s:I, s:I}", "slot", slot,
                                   "wal_mode", wal_mode, "exists", exists, "wal_status",
                                   wal_status, "active", active, "retained_bytes",
                                   (json_int_t)retained, "confirmed_lag_bytes",
                                   (json_int_t)lag_bytes, "since_confirmed_ms",
                                   (json_int_t)quiet_ms, "budget_ms", (json_int_t)budget);
        rc_found(ctx, problem, subject, 1, outcome, detail, "%s: %s", subject, why);
    }
    /* A window `slot recreate` reported stays a finding until cleared:
     * what was in it cannot be read back, only its consequences (each
     * consumer holds a key's later messages behind the gap), so only an
     * operator can say it was dealt with. */
    if (rc_bool_at(res, 0, 9)) {
        const char *from = PQgetvalue(res, 0, 10), *to = PQgetvalue(res, 0, 11);
        const char *from_at = PQgetvalue(res, 0, 12), *at = PQgetvalue(res, 0, 13);
        json_t *detail = json_pack("{s:s, s:s, s:s, s:s, s:s}", "slot", slot, "missed_from_lsn",
                                   from, "missed_to_lsn", to, "missed_from_at", from_at,
                                   "recreated_at", at);
        rc_found(ctx, "recreated", subject, 1, outcome, detail,
                 "%s: recreated at %s; messages emitted in wal mode between WAL %s (%s) and %s "
                 "may never have been published: consumers see them as gaps in their keys' "
                 "positions and hold what follows; once that is dealt with, clear the window: "
                 "UPDATE ferry.wal_slot SET missed_from_lsn = NULL, missed_to_lsn = NULL, "
                 "missed_from_at = NULL WHERE slot_name = '%s'",
                 subject, at, from, from_at, to, slot);
    }
    PQclear(res);
    return 0;
}
