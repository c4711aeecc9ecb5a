/*
 * test_reconcile_plan.c — the reconciler's decisions (reconciler/plan.c),
 * pure functions, at their edges: no server. What the sweeps do with them
 * against a real database is test_reconcile_outbox.c's and
 * test_reconcile_saga.c's.
 */
#include <string.h>

#include "testutil.h"
#include "../reconciler/plan.h"

/* ------------------------------------------------ over-attempted rows */

static void check_never_moves_and_repair_moves_only_what_was_found(void **state)
{
    assert_false(rc_over_plan_move(RC_CHECK, 5));
    assert_false(rc_over_plan_move(RC_REPAIR, 0));
    assert_true(rc_over_plan_move(RC_REPAIR, 1));
}

/*
 * What one topic's rows come to. Check does not act, whatever an act
 * would have said. A move that finished leaves only the clashes: rows it
 * reached and neither moved nor found clashing were published or
 * dead-lettered by a relay meanwhile. One that ended early leaves the
 * rows it did not reach, and says why. Rows that turned over-attempted
 * after detection may be moved too (a topic never seen, found 0; more
 * moved than found): never a negative count left.
 */
static void an_over_attempted_topic_comes_to_rows_moved_clashing_and_left(void **state)
{
    static const struct {
        rc_mode mode;
        int64_t found, moved, clash;
        rc_act_end end;
        rc_over_verdict want;
    } cases[] = {
        {RC_CHECK, 7, 3, 2, RC_ACT_BUSY, {.found = 7}},
        {RC_CHECK, 0, 0, 0, RC_ACT_DONE, {.found = 0}},
        {RC_REPAIR, 10, 6, 1, RC_ACT_DONE, {.repaired = 6, .clash = 1}},
        {RC_REPAIR, 10, 4, 1, RC_ACT_BUSY,
         {.repaired = 4, .clash = 1, .left = 5,
          .left_why = "a row stayed locked past the lock timeout"}},
        {RC_REPAIR, 10, 4, 1, RC_ACT_STOPPED,
         {.repaired = 4, .clash = 1, .left = 5, .left_why = "interrupted"}},
        {RC_REPAIR, 10, 0, 0, RC_ACT_FAILED, {.left = 10, .left_why = "an error, above"}},
        {RC_REPAIR, 0, 3, 0, RC_ACT_DONE, {.repaired = 3}},
        {RC_REPAIR, 2, 3, 1, RC_ACT_STOPPED, {.repaired = 3, .clash = 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rc_over_verdict v = rc_over_verdict_of(cases[i].mode, cases[i].found, cases[i].moved,
                                               cases[i].clash, cases[i].end);
        const rc_over_verdict *w = &cases[i].want;
        if (v.found != w->found || v.repaired != w->repaired || v.clash != w->clash ||
            v.left != w->left || (v.left_why == NULL) != (w->left_why == NULL) ||
            (v.left_why != NULL && strcmp(v.left_why, w->left_why) != 0))
            fail_msg("case %zu: found %lld repaired %lld clash %lld left %lld (%s); want "
                     "%lld %lld %lld %lld (%s)", i, (long long)v.found, (long long)v.repaired,
                     (long long)v.clash, (long long)v.left, v.left_why ? v.left_why : "-",
                     (long long)w->found, (long long)w->repaired, (long long)w->clash,
                     (long long)w->left, w->left_why ? w->left_why : "-");
    }
}

/* ------------------------------------------------------ dead letters */

static void dead_letter_targets_are_told_apart_at_their_edges(void **state)
{
    static const struct {
        const char *target;
        rc_dead_target kind;
    } cases[] = {
        {"1", RC_TARGET_ID},
        {"123456789012345678", RC_TARGET_ID},           /* 18 digits: a bigint */
        {"1234567890123456789", RC_TARGET_BAD},         /* 19: could overflow */
        {"", RC_TARGET_BAD},
        {"12a", RC_TARGET_BAD},
        {"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", RC_TARGET_UUID},
        {"0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", RC_TARGET_UUID},
        {"0190a1b2c3d47e5f8a9b0c1d2e3f4a5b", RC_TARGET_UUID},  /* 32 hex digits */
        {"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g", RC_TARGET_BAD},
        {"0190a1b2-c3d4-7e5f-8a9b0-c1d2e3f4a5b", RC_TARGET_BAD}, /* a dash out of place */
        {"orders/42", RC_TARGET_KEY},
        {"orders/a/b", RC_TARGET_KEY},                  /* a key may hold '/' */
        {"/42", RC_TARGET_BAD},                         /* no topic */
        {"orders/", RC_TARGET_BAD},                     /* no key */
        {"orders", RC_TARGET_BAD},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (rc_dead_target_kind(cases[i].target) != cases[i].kind)
            fail_msg("target \"%s\": kind %d, want %d", cases[i].target,
                     rc_dead_target_kind(cases[i].target), cases[i].kind);
    }
}

static void a_decision_records_the_reason_given_or_says_who(void **state)
{
    char buf[64];
    assert_string_equal(rc_dead_reason(1, "ann@h", "fixed the schema", buf, sizeof buf),
                        "fixed the schema");
    assert_string_equal(rc_dead_reason(1, "ann@h", "", buf, sizeof buf), "replayed by ann@h");
    assert_string_equal(rc_dead_reason(0, "ann@h", NULL, buf, sizeof buf),
                        "discarded by ann@h");
    assert_string_equal(rc_dead_reason(0, NULL, NULL, buf, sizeof buf),
                        "discarded by ferry-reconcile");
    /* A long actor is cut to the buffer, never past it. */
    char small[12];
    assert_string_equal(rc_dead_reason(1, "someone-with-a-long-name", NULL, small,
                                       sizeof small), "replayed by");
}

static void a_decision_calls_its_own_sql_function_and_says_what_it_did(void **state)
{
    char buf[400];
    assert_non_null(strstr(rc_dead_action_sql(1), "ferry.replay_dead_letter($1::bigint)"));
    assert_non_null(strstr(rc_dead_action_sql(0), "ferry.discard_dead_letter($1::bigint)"));
    assert_non_null(strstr(rc_dead_effect(1, "", buf, sizeof buf), "replayed into the outbox"));
    assert_non_null(strstr(rc_dead_effect(0, "", buf, sizeof buf), "header ferry_discarded"));
    assert_string_equal(rc_dead_effect(1, "billing", buf, sizeof buf),
                        "handed back to consumer billing, which applies it next; its key is "
                        "released");
    assert_string_equal(rc_dead_effect(0, "billing", buf, sizeof buf),
                        "discarded: consumer billing counts its position as done and its key "
                        "is released");
}

/* -------------------------------------------------------------- sagas */

static void only_repair_fires_and_only_under_the_loaded_hash(void **state)
{
    assert_int_equal(rc_saga_plan(RC_CHECK, "h1", "h1"), RC_SAGA_FOUND);
    assert_int_equal(rc_saga_plan(RC_CHECK, NULL, "h1"), RC_SAGA_FOUND);
    assert_int_equal(rc_saga_plan(RC_REPAIR, NULL, "h1"), RC_SAGA_NOT_LOADED);
    assert_int_equal(rc_saga_plan(RC_REPAIR, "h2", "h1"), RC_SAGA_HASH);
    assert_int_equal(rc_saga_plan(RC_REPAIR, "h1", "h1"), RC_SAGA_FIRE);
}

static void a_firing_result_becomes_a_class(void **state)
{
    int elsewhere = -1;
    /* Gone since it was read: nothing overdue any more, not ours. */
    assert_int_equal(rc_saga_fire_class(FERRY_EINVAL, "saga_id", "", 0, &elsewhere),
                     RC_SAGA_FIRED);
    assert_int_equal(elsewhere, 1);
    assert_int_equal(rc_saga_fire_class(FERRY_EINVAL, "step", "", 0, &elsewhere),
                     RC_SAGA_REFUSED);
    assert_int_equal(elsewhere, 0);
    assert_int_equal(rc_saga_fire_class(FERRY_ESTATE, "", "", 0, &elsewhere), RC_SAGA_REFUSED);
    assert_int_equal(rc_saga_fire_class(FERRY_EDB, "", "55P03", 0, &elsewhere), RC_SAGA_BUSY);
    /* Any other database error is operational, a deadlock too. */
    assert_int_equal(rc_saga_fire_class(FERRY_EDB, "", "40P01", 0, &elsewhere), -1);
    assert_int_equal(rc_saga_fire_class(FERRY_ECONN, "", "", 0, &elsewhere), -1);
    assert_int_equal(rc_saga_fire_class(FERRY_OK, "", "", 1, &elsewhere), RC_SAGA_FIRED);
    assert_int_equal(elsewhere, 0);
    /* Nothing due: the row must be read again. */
    assert_int_equal(rc_saga_fire_class(FERRY_OK, "", "", 0, &elsewhere), RC_SAGA_FIRE);
    assert_int_equal(rc_saga_recheck(1, &elsewhere), RC_SAGA_STILL_DUE);
    assert_int_equal(elsewhere, 0);
    assert_int_equal(rc_saga_recheck(0, &elsewhere), RC_SAGA_FIRED);
    assert_int_equal(elsewhere, 1);
}

static void timers_all_fired_by_workers_are_pending_not_repaired(void **state)
{
    assert_int_equal(rc_saga_outcome(RC_SAGA_FOUND, 3, 0), RC_FOUND);
    assert_int_equal(rc_saga_outcome(RC_SAGA_FIRED, 3, 0), RC_REPAIRED);
    assert_int_equal(rc_saga_outcome(RC_SAGA_FIRED, 3, 2), RC_REPAIRED);
    assert_int_equal(rc_saga_outcome(RC_SAGA_FIRED, 3, 3), RC_PENDING);
    static const rc_saga_class left[] = {RC_SAGA_NOT_LOADED, RC_SAGA_HASH, RC_SAGA_STILL_DUE,
                                         RC_SAGA_BUSY, RC_SAGA_REFUSED};
    for (size_t i = 0; i < sizeof left / sizeof left[0]; i++)
        assert_int_equal(rc_saga_outcome(left[i], 1, 0), RC_LEFT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(check_never_moves_and_repair_moves_only_what_was_found),
        cmocka_unit_test(an_over_attempted_topic_comes_to_rows_moved_clashing_and_left),
        cmocka_unit_test(dead_letter_targets_are_told_apart_at_their_edges),
        cmocka_unit_test(a_decision_records_the_reason_given_or_says_who),
        cmocka_unit_test(a_decision_calls_its_own_sql_function_and_says_what_it_did),
        cmocka_unit_test(only_repair_fires_and_only_under_the_loaded_hash),
        cmocka_unit_test(a_firing_result_becomes_a_class),
        cmocka_unit_test(timers_all_fired_by_workers_are_pending_not_repaired),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
