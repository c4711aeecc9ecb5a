/*
 * fuzz_saga_def.c — the saga loader (lib/saga_def.c over lib/yaml_walk.c)
 * on hostile YAML.
 *
 * Promises checked besides the sanitizers: success or FERRY_EINVAL and
 * nothing else (the loader makes no I/O here; FERRY_ENOMEM would mean a
 * leak of memory budget, not bad input); on success a definition within
 * the documented limits whose hash is a function of the bytes alone; on
 * failure *out untouched and at least one well-formed error.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_load_input in = fuzz_load_input_new(data, size);
    ferry_saga_def *def = NULL;
    ferry_code rc = ferry_saga_def_parse(in.text, size, "fuzz.yaml", &def, in.errs);
    fuzz_check_load(rc, in.errs, def != NULL);
    if (rc == FERRY_OK) {
        FUZZ_CHECK(def->name && def->name[0], "no name");
        FUZZ_CHECK(def->version >= 1, "version %d", def->version);
        FUZZ_CHECK(def->deadline_ms > 0, "deadline %lld", (long long)def->deadline_ms);
        FUZZ_CHECK(def->step_count >= 1 && def->step_count <= FERRY_SAGA_STEPS_MAX,
                   "%zu steps", def->step_count);
        FUZZ_CHECK(def->pivot_index >= -1 && def->pivot_index < (int)def->step_count,
                   "pivot %d", def->pivot_index);
        FUZZ_CHECK(strlen(def->hash) == 16, "hash \"%s\"", def->hash);
        for (size_t i = 0; i < def->step_count; i++) {
            const ferry_saga_step_def *s = &def->steps[i];
            FUZZ_CHECK(s->name && s->name[0] && s->topic && s->topic[0], "step %zu unnamed", i);
            FUZZ_CHECK(s->timeout_ms > 0, "step %zu timeout %lld", i, (long long)s->timeout_ms);
            FUZZ_CHECK(s->has_compensation || (def->pivot_index >= 0 &&
                                               (int)i >= def->pivot_index),
                       "step %zu before the pivot without a compensation", i);
            for (size_t j = 0; j < i; j++)
                FUZZ_CHECK(strcmp(def->steps[j].name, s->name) != 0,
                           "steps %zu and %zu both named %s", j, i, s->name);
        }

        /* Same bytes, same definition hash. */
        ferry_saga_def *again = NULL;
        FUZZ_CHECK(ferry_saga_def_parse(in.text, size, "fuzz.yaml", &again, NULL) == FERRY_OK,
                   "second parse of the same bytes failed");
        FUZZ_CHECK(strcmp(again->hash, def->hash) == 0, "hash %s, then %s", def->hash,
                   again->hash);
        ferry_saga_def_destroy(again);
    }
    ferry_saga_def_destroy(def);
    fuzz_load_input_free(&in);
    return 0;
}
