/*
 * fuzz_rules.c — ferry-reconcile's rules loader (reconciler/rules.c over
 * lib/yaml_walk.c) on hostile YAML.
 *
 * Promises checked besides the sanitizers: success or FERRY_EINVAL; on
 * success at most RC_RULES_MAX rules, each named, unique, with a detect
 * query and an emit topic and type, and budgets within their ranges; on
 * failure *out untouched and at least one well-formed error.
 */
#include "fuzz.h"
#include "../../reconciler/reconcile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_load_input in = fuzz_load_input_new(data, size);
    rc_rules *rules = NULL;
    ferry_code rc = rc_rules_parse(in.text, size, "fuzz-rules.yaml", &rules, in.errs);
    fuzz_check_load(rc, in.errs, rules != NULL);
    if (rc == FERRY_OK) {
        FUZZ_CHECK(rules->count <= RC_RULES_MAX, "%zu rules", rules->count);
        const rc_budgets *b = &rules->budgets;
        FUZZ_CHECK(b->outbox_lag_ms > 0 && b->saga_grace_ms > 0 && b->inbox_retention_ms > 0 &&
                   b->outbox_retention_ms > 0 && b->statement_timeout_ms > 0,
                   "a duration budget is not positive");
        FUZZ_CHECK(b->max_attempts >= 1 && b->batch >= 1, "max_attempts %d, batch %d",
                   b->max_attempts, b->batch);
        for (size_t i = 0; i < rules->count; i++) {
            const rc_rule *r = &rules->rules[i];
            FUZZ_CHECK(r->name && r->name[0] && strlen(r->name) <= 128, "rule %zu name", i);
            FUZZ_CHECK(r->detect && r->detect[0], "rule %s: no detect query", r->name);
            FUZZ_CHECK(r->topic && r->topic[0] && r->type && r->type[0],
                       "rule %s: no emit topic or type", r->name);
            FUZZ_CHECK(r->timeout_ms > 0 && r->max_rows >= 1 && r->repeat_after_ms > 0,
                       "rule %s: a limit out of range", r->name);
            for (size_t j = 0; j < i; j++)
                FUZZ_CHECK(strcmp(rules->rules[j].name, r->name) != 0, "rule %s twice",
                           r->name);
        }
    }
    rc_rules_free(rules);
    fuzz_load_input_free(&in);
    return 0;
}
