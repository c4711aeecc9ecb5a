/*
 * test_saga_def.c — saga definitions from YAML (lib/saga_def.c) and the
 * `ferry-reconcile lint` and `graph` commands. Needs no server.
 *
 * Data-driven, from the repository root (the cases' format is
 * tu_load.h's): tests/data/saga/{valid,invalid}/CASE/saga.yaml.
 * Cases too large to commit (too many steps, too many bytes, too many
 * errors) are generated here. The program runs $FERRY_RECONCILE_BIN
 * (default build/asan/ferry-reconcile) for the command-line tests.
 */
#include <glob.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "saga_tmpl.h"
#include "testutil.h"
#include "tu_load.h"

#define DATA "tests/data/saga"
#define EXAMPLES "examples/sagas"

/* ------------------------------------------------------------ helpers */

static void sb_json(tu_sbuf *b, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    assert_non_null(text);
    tu_sb_printf(b, "%s", text);
    free(text);
}

/* The payload's JSON text as the driver sends it (lib/saga_tmpl.h), each
 * context reference shown as its "${context.PATH}" string. */
static void sb_tmpl(tu_sbuf *b, const ferry_saga_def *def, size_t step,
                    ferry_saga_command_kind kind)
{
    char *text;
    const char *missing;
    assert_int_equal(ferry__tmpl_render(ferry__saga_def_tmpl(def, step, kind), NULL, 0, &text,
                                       &missing), 0);
    tu_sb_printf(b, "%s", text);
    free(text);
}

/* Every field of def, one KEY=VALUE per line after a first newline:
 * what expected files check. ".payload" is the public jansson value,
 * ".json" the text with the numbers as written. */
static char *summary(const void *obj)
{
    const ferry_saga_def *def = obj;
    tu_sbuf b = {0};
    tu_sb_printf(&b, "\nsaga=%s\nversion=%d\ndeadline_ms=%lld\nstep_count=%zu\npivot_index=%d\n",
                 def->name, def->version, (long long)def->deadline_ms, def->step_count,
                 def->pivot_index);
    for (size_t i = 0; i < def->step_count; i++) {
        const ferry_saga_step_def *s = &def->steps[i];
        tu_sb_printf(&b, "steps[%zu].name=%s\nsteps[%zu].topic=%s\nsteps[%zu].action.type=%s\n",
                     i, s->name, i, s->topic, i, s->action.type);
        tu_sb_printf(&b, "steps[%zu].action.payload=", i);
        sb_json(&b, s->action.payload);
        tu_sb_printf(&b, "\nsteps[%zu].action.json=", i);
        sb_tmpl(&b, def, i, FERRY_SAGA_CMD_ACTION);
        tu_sb_printf(&b, "\nsteps[%zu].has_compensation=%d\n", i, s->has_compensation);
        if (s->has_compensation) {
            tu_sb_printf(&b, "steps[%zu].compensation.type=%s\nsteps[%zu].compensation.payload=", i,
                         s->compensation.type, i);
            sb_json(&b, s->compensation.payload);
            tu_sb_printf(&b, "\nsteps[%zu].compensation.json=", i);
            sb_tmpl(&b, def, i, FERRY_SAGA_CMD_COMPENSATION);
            tu_sb_printf(&b, "\n");
        }
        tu_sb_printf(&b, "steps[%zu].timeout_ms=%lld\nsteps[%zu].retry=%d/%lld/%lld\n"
                     "steps[%zu].pivot=%d\n", i, (long long)s->timeout_ms, i, s->retry.attempts,
                     (long long)s->retry.backoff_ms, (long long)s->retry.max_backoff_ms, i,
                     s->pivot);
    }
    return b.s;
}

/* What holds for every definition that loads. */
static void check_invariants(const void *obj)
{
    const ferry_saga_def *def = obj;
    assert_non_null(def->name);
    assert_non_null(def->file);
    assert_true(def->version >= 1);
    assert_true(def->deadline_ms > 0);
    assert_true(def->step_count >= 1 && def->step_count <= FERRY_SAGA_STEPS_MAX);
    assert_int_equal(strlen(def->hash), 16);
    assert_int_equal(strspn(def->hash, "0123456789abcdef"), 16);
    int pivots = 0;
    for (size_t i = 0; i < def->step_count; i++) {
        const ferry_saga_step_def *s = &def->steps[i];
        assert_non_null(s->name);
        assert_non_null(s->topic);
        assert_non_null(s->action.type);
        assert_non_null(s->action.payload);
        /* What the driver will send is JSON that ferry_emit takes. */
        for (int k = 0; k < 1 + !!s->has_compensation; k++) {
            char *text;
            const char *missing;
            ferry_error err;
            assert_int_equal(ferry__tmpl_render(ferry__saga_def_tmpl(def, i,
                                                                   (ferry_saga_command_kind)k),
                                               NULL, 0, &text, &missing), 0);
            ferry_msg m = {.topic = "t", .key = "k", .type = "T", .payload = text};
            if (ferry_msg_check(&m, NULL, &err) != FERRY_OK)
                fail_msg("steps[%zu] %d: %s: %s", i, k, err.message, text);
            free(text);
        }
        assert_true(s->timeout_ms > 0);
        assert_true(s->retry.attempts >= 1);
        assert_true(s->retry.backoff_ms <= s->retry.max_backoff_ms);
        if (s->has_compensation)
            assert_non_null(s->compensation.type);
        else
            assert_true(def->pivot_index >= 0 && (int)i >= def->pivot_index);
        if (s->pivot) {
            pivots++;
            assert_int_equal(def->pivot_index, (int)i);
        }
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(def->steps[j].name, s->name);
    }
    assert_int_equal(pivots, def->pivot_index >= 0);
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ------------------------------------------------------------ data-driven */

/* ferry_saga_def through tu_load.h's void pointers; *out passed through. */
static ferry_code load(const char *path, const char *text, size_t len, void **out,
                       ferry_saga_load_errors *errs)
{
    ferry_saga_def *def = *out;
    ferry_code rc = text ? ferry_saga_def_parse(text, len, path, &def, errs)
                         : ferry_saga_def_load(path, &def, errs);
    *out = def;
    return rc;
}

static void free_def(void *def)
{
    ferry_saga_def_destroy(def);
}

static const char *file_of(const void *def)
{
    return ((const ferry_saga_def *)def)->file;
}

static const tu_loader sagas = {
    .file = "saga.yaml", .load = load, .free = free_def,
    .file_of = file_of, .summary = summary, .check = check_invariants,
};

static void valid_cases_load(void **state)
{
    tu_load_valid_cases(&sagas, DATA, 8);
}

static void invalid_cases_fail(void **state)
{
    tu_load_invalid_cases(&sagas, DATA, 20);
}

/* The lint format, and the classes the issue names, each at least once. */
static void every_error_class_is_covered(void **state)
{
    static const char *const cases[] = {
        "syntax", "syntax-flow", "unknown-top-key", "unknown-step-key", "wrong-type-scalars",
        "wrong-type-steps", "duplicate-step-name", "duplicate-key", "missing-compensation",
        "two-pivots", "zero-timeout", "timeout-beyond-deadline", "too-deep", "alias-bomb",
        "bad-names", "bad-topics", "several-errors", "backoff-above-max", "negative-duration",
        "compensation-after-pivot",
    };
    tu_load_cases_exist(&sagas, DATA, cases, sizeof cases / sizeof cases[0]);
    /* The several-errors case reports all of them, in document order. */
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(ferry_saga_def_load(DATA "/invalid/several-errors/saga.yaml", &def, &errs),
                     FERRY_EINVAL);
    assert_true(errs.total >= 10);
    assert_int_equal(errs.count, errs.total);
    for (size_t i = 1; i < errs.count; i++)
        assert_true(errs.errors[i - 1].line < errs.errors[i].line ||
                    (errs.errors[i - 1].line == errs.errors[i].line &&
                     errs.errors[i - 1].column <= errs.errors[i].column));
}

/* ------------------------------------------------------------ generated cases */

static void add_step(tu_sbuf *b, int i)
{
    tu_sb_printf(b, "  - name: step-%d\n    topic: t\n    action: {type: Do}\n"
                 "    compensation: {type: Undo}\n    timeout: 1s\n", i);
}

static void too_many_steps(void **state)
{
    tu_sbuf b = {0};
    tu_sb_printf(&b, "saga: many\nversion: 1\ndeadline: 1h\nsteps:\n");
    for (int i = 0; i < FERRY_SAGA_STEPS_MAX; i++)
        add_step(&b, i);

    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(ferry_saga_def_parse(b.s, b.len, "many.yaml", &def, &errs), FERRY_OK);
    assert_int_equal(def->step_count, FERRY_SAGA_STEPS_MAX);
    check_invariants(def);
    ferry_saga_def_destroy(def);

    /* One more, and an error in the one after it, which is not read. */
    int line = 5 + 5 * FERRY_SAGA_STEPS_MAX;
    add_step(&b, FERRY_SAGA_STEPS_MAX);
    tu_sb_printf(&b, "  - name: bad name\n");
    def = NULL;
    assert_int_equal(ferry_saga_def_parse(b.s, b.len, "many.yaml", &def, &errs), FERRY_EINVAL);
    assert_null(def);
    char want[128];
    snprintf(want, sizeof want, "many.yaml:%d:5: steps: more than %d steps", line,
             FERRY_SAGA_STEPS_MAX);
    if (!tu_load_has_error(&errs, want) || errs.total != 1) {
        tu_load_print_errors(&errs);
        fail_msg("expected only \"%s\"", want);
    }
    free(b.s);
}

/* A valid definition, to be padded with a comment (tu_load_padded). */
static const char padded_head[] = "saga: big\nversion: 1\ndeadline: 1m\nsteps:\n"
                                  "  - {name: a, topic: t, action: {type: A}, "
                                  "compensation: {type: B}, timeout: 1s}\n#";

static void too_large(void **state)
{
    char want[128];
    snprintf(want, sizeof want, "the document is larger than %d bytes", FERRY_SAGA_FILE_MAX);
    tu_load_size_limit(&sagas, padded_head, FERRY_SAGA_FILE_MAX, want);
}

static void errors_are_capped_and_counted(void **state)
{
    tu_sbuf b = {0};
    tu_sb_printf(&b, "saga: s\nversion: 1\ndeadline: 1m\nsteps:\n");
    add_step(&b, 0);
    for (int i = 0; i < 40; i++)
        tu_sb_printf(&b, "unknown%d: 1\n", i);
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(ferry_saga_def_parse(b.s, b.len, "many-errors.yaml", &def, &errs),
                     FERRY_EINVAL);
    assert_int_equal(errs.count, FERRY_SAGA_ERRORS_MAX);
    assert_int_equal(errs.total, 40);
    assert_true(tu_load_has_error(&errs, "many-errors.yaml:10:1: unknown0: unknown key "
                                         "\"unknown0\""));
    free(b.s);
}

/* ------------------------------------------------------------ values */

/* A definition whose deadline is text, and a 1 ms step. */
static ferry_code load_deadline(const char *text, ferry_saga_def **def,
                                ferry_saga_load_errors *errs)
{
    char doc[512];
    int n = snprintf(doc, sizeof doc, "saga: d\nversion: 1\ndeadline: %s\nsteps:\n"
                     "  - {name: a, topic: t, action: {type: A}, compensation: {type: B}, "
                     "timeout: 1}\n", text);
    return ferry_saga_def_parse(doc, (size_t)n, "d.yaml", def, errs);
}

static void durations(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {
        {"1", 1}, {"1500", 1500}, {"500ms", 500}, {"30s", 30000}, {"5m", 300000},
        {"2h", 7200000}, {"1d", 86400000}, {"1h30m", 5400000}, {"1m30s500ms", 90500},
        {"\"45s\"", 45000}, {"'2m'", 120000}, {"366d", FERRY_SAGA_TIMEOUT_MAX_MS},
        {"31622400000", FERRY_SAGA_TIMEOUT_MAX_MS},
    };
    static const struct {
        const char *text, *error;
    } bad[] = {
        {"0", "must be positive"}, {"0s", "must be positive"}, {"0h0m", "must be positive"},
        {"-1s", "must not be negative"}, {"-1", "must not be negative"},
        {"1.5s", "fractions are not supported"}, {"\"30\"", "needs a unit"},
        {"30 s", "is not a duration"}, {"s", "is not a duration"}, {"1w", "is not a duration"},
        {"1S", "is not a duration"}, {"367d", "longer than 366 days"},
        {"31622400001", "longer than 366 days"},
        {"9999999999999999999999ms", "longer than 366 days"},
        {"~", "expected a duration such as \"30s\", \"5m\" or \"1h30m\", not null"},
        {"[1s]", "not a sequence"}, {"true", "is not a duration"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        if (load_deadline(good[i].text, &def, &errs) != FERRY_OK) {
            tu_load_print_errors(&errs);
            fail_msg("deadline %s: refused", good[i].text);
        }
        if (def->deadline_ms != good[i].ms)
            fail_msg("deadline %s: %lld ms, expected %lld", good[i].text,
                     (long long)def->deadline_ms, (long long)good[i].ms);
        ferry_saga_def_destroy(def);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        if (load_deadline(bad[i].text, &def, &errs) == FERRY_OK) {
            ferry_saga_def_destroy(def);
            fail_msg("deadline %s: loaded", bad[i].text);
        }
        char want[256];
        snprintf(want, sizeof want, "d.yaml:3:11: deadline: ");
        if (!tu_load_has_error(&errs, want) || !tu_load_has_error(&errs, bad[i].error) ||
            errs.total != 1) {
            tu_load_print_errors(&errs);
            fail_msg("deadline %s: expected one error \"%s...%s\"", bad[i].text, want,
                     bad[i].error);
        }
    }
}

/* Backoffs double up to max_backoff and count against the deadline. */
static void retry_budget(void **state)
{
    static const struct {
        const char *deadline, *retry;
        bool ok;
    } cases[] = {
        /* 4 x 10s + 1s + 2s + 4s = 47s */
        {"47s", "{attempts: 4, backoff: 1s}", true},
        {"46999", "{attempts: 4, backoff: 1s}", false},
        /* 4 x 10s + 1s + 2s + 2s = 45s */
        {"45s", "{attempts: 4, backoff: 1s, max_backoff: 2s}", true},
        {"44s", "{attempts: 4, backoff: 1s, max_backoff: 2s}", false},
        {"10s", "{attempts: 1, backoff: 1h}", true},
        {"10s", "{}", true},
        {"10s", "~", true},
        /* 1000 x 10s: 2h46m40s, without a backoff */
        {"2h46m40s", "{attempts: 1000}", true},
        {"2h46m39s", "{attempts: 1000}", false},
        /* Doubling 999 times stays finite. */
        {"366d", "{attempts: 1000, backoff: 366d}", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char doc[512];
        int n = snprintf(doc, sizeof doc, "saga: r\nversion: 1\ndeadline: %s\nsteps:\n"
                         "  - {name: a, topic: t, action: {type: A}, compensation: {type: B}, "
                         "timeout: 10s, retry: %s}\n", cases[i].deadline, cases[i].retry);
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        ferry_code rc = ferry_saga_def_parse(doc, (size_t)n, "r.yaml", &def, &errs);
        if ((rc == FERRY_OK) != cases[i].ok) {
            tu_load_print_errors(&errs);
            fail_msg("deadline %s, retry %s: expected %s", cases[i].deadline, cases[i].retry,
                     cases[i].ok ? "to load" : "an error");
        }
        if (!cases[i].ok)
            assert_true(tu_load_has_error(&errs, "steps[0].timeout: timeout 10s"));
        ferry_saga_def_destroy(def);
    }
}

static void hash_is_fnv1a_of_the_bytes(void **state)
{
    size_t len;
    char *text = tu_slurp(EXAMPLES "/order.yaml", &len);
    assert_non_null(text);
    ferry_saga_def *a = NULL, *b = NULL;
    assert_int_equal(ferry_saga_def_load(EXAMPLES "/order.yaml", &a, NULL), FERRY_OK);
    assert_int_equal(ferry_saga_def_parse(text, len, NULL, &b, NULL), FERRY_OK);
    char want[17];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fnv1a(text, len));
    assert_string_equal(a->hash, want);
    assert_string_equal(b->hash, want);
    assert_string_equal(b->file, "<memory>");
    ferry_saga_def_destroy(b);

    /* A comment changes the bytes, so the hash. */
    char *more = malloc(len + 3);
    assert_non_null(more);
    memcpy(more, text, len);
    memcpy(more + len, "#\n", 3);
    assert_int_equal(ferry_saga_def_parse(more, len + 2, "x", &b, NULL), FERRY_OK);
    assert_string_not_equal(a->hash, b->hash);
    ferry_saga_def_destroy(a);
    ferry_saga_def_destroy(b);
    free(more);
    free(text);
    /* Known vectors of FNV-1a 64. */
    assert_true(fnv1a("", 0) == 0xcbf29ce484222325ULL);
    assert_true(fnv1a("a", 1) == 0xaf63dc4c8601ec8cULL);
}

static void null_arguments_and_missing_files(void **state)
{
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    ferry_saga_def_destroy(NULL);
    assert_int_equal(ferry_saga_def_parse(NULL, 0, "x", &def, &errs), FERRY_EINVAL);
    assert_int_equal(errs.total, 1);
    assert_int_equal(ferry_saga_def_parse("saga: x", 7, "x", NULL, NULL), FERRY_EINVAL);
    assert_int_equal(ferry_saga_def_load(NULL, &def, NULL), FERRY_EINVAL);
    assert_int_equal(ferry_saga_def_load(DATA "/nope.yaml", &def, &errs), FERRY_EINVAL);
    assert_true(tu_load_has_error(&errs, DATA "/nope.yaml: could not open the saga definition: "
                                  "No such file or directory"));
    assert_int_equal(ferry_saga_def_load(DATA, &def, &errs), FERRY_EINVAL);
    assert_true(tu_load_has_error(&errs, "could not read the saga definition: Is a directory"));
    /* errs may be NULL either way. */
    assert_int_equal(ferry_saga_def_load(DATA "/invalid/syntax/saga.yaml", &def, NULL),
                     FERRY_EINVAL);
    assert_null(def);
    assert_int_equal(ferry_saga_def_load(EXAMPLES "/order.yaml", &def, NULL), FERRY_OK);
    ferry_saga_def_destroy(def);
    /* Bytes after a NUL in memory are part of the document, not its end. */
    static const char nul[] = "saga: s\0x\n";
    assert_int_equal(ferry_saga_def_parse(nul, sizeof nul - 1, "nul", &def, &errs), FERRY_EINVAL);
    assert_true(tu_load_has_error(&errs, "invalid YAML"));
}

/* ------------------------------------------------------------ allocation failures */

/* Every allocation failed in turn (tu_load_alloc_failures), payload
 * templates' (jansson's) included. */
static void allocation_failures(void **state)
{
    static const char *const files[] = {
        EXAMPLES "/order.yaml", DATA "/valid/payload-types/saga.yaml",
        DATA "/invalid/several-errors/saga.yaml",
    };
    json_set_alloc_funcs(tu_failing_malloc, free);
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++)
        tu_load_alloc_failures(&sagas, files[f], 0, "out of memory", 10);
    json_set_alloc_funcs(malloc, free);
}

/* ------------------------------------------------------------ the program */

static void lint_command(void **state)
{
    char *out, *err;

    assert_int_equal(tu_lint(&out, &err, "lint " EXAMPLES "/order.yaml "
                             DATA "/valid/minimal/saga.yaml"), 0);
    assert_string_equal(err, "");
    assert_int_equal(tu_count_lines(out), 2);
    assert_non_null(strstr(out, EXAMPLES "/order.yaml: OK: saga order version 1, 3 steps, hash "));
    assert_non_null(strstr(out, DATA "/valid/minimal/saga.yaml: OK: saga minimal"));
    free(out);
    free(err);

    /* One bad file makes the run fail; the good one is still said OK. */
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/valid/minimal/saga.yaml "
                         DATA "/invalid/two-pivots/saga.yaml " DATA "/invalid/zero-timeout/saga.yaml"),
                     4);
    assert_int_equal(tu_count_lines(out), 1);
    assert_string_equal(err,
        DATA "/invalid/two-pivots/saga.yaml:18:12: steps[2].pivot: a second pivot: steps[1] at "
        "line 10 is the pivot already; a saga has at most one\n"
        DATA "/invalid/zero-timeout/saga.yaml:3:11: deadline: must be positive, not \"0\"\n"
        DATA "/invalid/zero-timeout/saga.yaml:9:14: steps[0].timeout: must be positive, not \"0ms\"\n");
    free(out);
    free(err);

    /* Errors without a place or a field leave those parts out. */
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/nope.yaml"), 8);
    assert_string_equal(err, DATA "/nope.yaml: could not open the saga definition: No such file "
                        "or directory\n");
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/invalid/syntax/saga.yaml"), 4);
    assert_non_null(strstr(err, "saga.yaml:7:4: invalid YAML: did not find expected '-' indicator"));
    free(out);
    free(err);

    /* More errors than are kept: said so. */
    char path[] = "/tmp/ferry-test-lint-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "saga: s\nversion: 1\ndeadline: 1m\nsteps: []\n");
    for (int i = 0; i < 40; i++)
        fprintf(f, "k%d: 1\n", i);
    fclose(f);
    char args[128];
    snprintf(args, sizeof args, "lint %s", path);
    assert_int_equal(tu_lint(&out, &err, args), 4);
    assert_int_equal(tu_count_lines(err), FERRY_SAGA_ERRORS_MAX + 1);
    char want[128];
    snprintf(want, sizeof want, "%s: 9 more errors not shown\n", path);
    assert_non_null(strstr(err, want));
    unlink(path);
    free(out);
    free(err);

    /* Usage. */
    static const char *const usage_errors[] = {"", "bogus", "lint", "lint --strict x.yaml",
                                               "--bogus"};
    for (size_t i = 0; i < sizeof usage_errors / sizeof usage_errors[0]; i++) {
        if (tu_lint(&out, &err, usage_errors[i]) != 16)
            fail_msg("\"%s\": expected exit 16", usage_errors[i]);
        assert_non_null(strstr(err, "usage: ferry-reconcile"));
        free(out);
        free(err);
    }
    assert_int_equal(tu_lint(&out, &err, "--help"), 0);
    assert_non_null(strstr(out, "ferry-reconcile lint FILE..."));
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "--version"), 0);
    assert_string_equal(out, "ferry-reconcile " FERRY_VERSION_STRING "\n");
    free(out);
    free(err);
}

/* The position of needle in hay, failing the test when absent. */
static size_t at(const char *hay, const char *needle)
{
    const char *p = strstr(hay, needle);
    if (!p)
        fail_msg("no \"%s\" in:\n%s", needle, hay);
    return (size_t)(p - hay);
}

static void graph_command(void **state)
{
    char *out, *err;

    /* Shipping is the pivot and last: no failure edge leaves it forward. */
    assert_int_equal(tu_lint(&out, &err, "graph " EXAMPLES "/order.yaml"), 0);
    assert_string_equal(err, "");
    assert_int_equal(at(out, "digraph \"order\" {"), 0);
    at(out, "start -> s0;");
    at(out, "s2 [shape=doubleoctagon");
    assert_null(strstr(strstr(out, "doubleoctagon") + 1, "doubleoctagon"));   /* one pivot */
    at(out, "label=\"shipping (pivot)\\nShipOrder -> shipping.commands\\ntimeout 1m x 5");
    at(out, "label=\"payment\\nReservePayment -> payments.commands");
    at(out, "label=\"inventory\\nReserveStock -> inventory.commands");
    at(out, "label=\"undo payment\\nReleasePayment");
    at(out, "label=\"undo inventory\\nReleaseStock");
    assert_null(strstr(out, "c2 ["));                       /* the pivot has no undo */
    at(out, "s2 -> completed");
    /* The pivot refused undoes the rest; unanswered, it is resent instead. */
    at(out, "s2 -> c1 [xlabel=\"refused\"");
    assert_null(strstr(out, "s2 -> c1 [xlabel=\"times out\""));
    /* A step that times out may have run: its own undo first. One that is
     * refused did not: the undo of the steps before it (issue 16: inventory
     * refused was drawn going to "undo inventory"). */
    at(out, "s1 -> c1 [xlabel=\"times out\"");
    at(out, "s1 -> c0 [xlabel=\"refused\"");
    at(out, "s0 -> c0 [xlabel=\"times out\"");
    at(out, "s0 -> compensated [xlabel=\"refused\"");
    assert_null(strstr(out, "fails or times out"));
    assert_null(strstr(out, "s1 -> c1 [xlabel=\"refused"));
    /* Labels beside the edges; the title in the nodes' font. */
    at(out, "forcelabels=true;");
    at(out, "    fontname=\"Helvetica\";\n");
    /* Compensations go back in reverse order. */
    assert_true(at(out, "c1 -> c0 [") < at(out, "c0 -> compensated ["));
    assert_int_equal(out[strlen(out) - 2], '}');
    free(out);
    free(err);

    /* No pivot: every step undoable, the undo chain covers all three. */
    assert_int_equal(tu_lint(&out, &err, "graph " EXAMPLES "/transfer.yaml"), 0);
    assert_null(strstr(out, "doubleoctagon"));
    assert_true(at(out, "c2 -> c1 [") < at(out, "c1 -> c0 [") &&
                at(out, "c1 -> c0 [") < at(out, "c0 -> compensated ["));
    at(out, "s2 -> c2 [xlabel=\"times out\"");
    at(out, "s2 -> c1 [xlabel=\"refused\"");
    free(out);
    free(err);

    /* A pivot in the middle: the steps after it have no failure edges. */
    assert_int_equal(tu_lint(&out, &err, "graph " DATA "/valid/pivot-middle/saga.yaml"), 0);
    at(out, "s1 [shape=doubleoctagon");
    assert_null(strstr(out, "s2 -> c0"));
    assert_null(strstr(out, "s2 -> c1"));
    assert_null(strstr(out, "s2 -> compensated"));
    at(out, "s2 -> completed");
    at(out, "s1 -> c1 [");
    at(out, "c1 -> c0 [");
    free(out);
    free(err);

    assert_int_equal(tu_lint(&out, &err, "graph " DATA "/invalid/two-pivots/saga.yaml"), 4);
    assert_string_equal(out, "");
    at(err, "saga.yaml:18:12: steps[2].pivot: a second pivot");
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "graph"), 16);
    free(out);
    free(err);
    /* A file that cannot be read is 8, as lint says it (an outside audit:
     * graph said 4, refused). */
    assert_int_equal(tu_lint(&out, &err, "graph /nonexistent/saga.yaml"), 8);
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "graph a.yaml b.yaml"), 16);
    free(out);
    free(err);
}

/* Every example under examples/sagas lints clean, by the library and the program. */
static void examples_lint_clean(void **state)
{
    glob_t g;
    assert_int_equal(glob(EXAMPLES "/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 2);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        ferry_saga_def *def = NULL;
        ferry_saga_load_errors errs;
        if (ferry_saga_def_load(g.gl_pathv[i], &def, &errs) != FERRY_OK) {
            tu_load_print_errors(&errs);
            fail_msg("%s does not load", g.gl_pathv[i]);
        }
        check_invariants(def);
        ferry_saga_def_destroy(def);
        char *out, *err, args[600];
        snprintf(args, sizeof args, "lint %s", g.gl_pathv[i]);
        assert_int_equal(tu_lint(&out, &err, args), 0);
        assert_string_equal(err, "");
        free(out);
        free(err);
    }
    globfree(&g);
}

/* ------------------------------------------------------------ the schema */

static void assert_keys(const json_t *props, const char *const *keys, size_t n, const char *what)
{
    if (!json_is_object(props))
        fail_msg("%s: no properties", what);
    if (json_object_size(props) != n)
        fail_msg("%s: %zu properties, the loader knows %zu", what, json_object_size(props), n);
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_object_get(props, keys[i]);
        if (!p)
            fail_msg("%s: no property \"%s\"", what, keys[i]);
        const json_t *d = json_object_get(p, "description");
        if (!json_is_string(d) || json_string_length(d) < 10)
            fail_msg("%s.%s: no description", what, keys[i]);
    }
}

/* The schema names exactly the keys the loader accepts, each described. */
static void schema_matches_the_loader(void **state)
{
    json_error_t jerr;
    json_t *s = json_load_file("schemas/saga.schema.json", 0, &jerr);
    if (!s)
        fail_msg("schemas/saga.schema.json: %s at line %d", jerr.text, jerr.line);
    assert_string_equal(json_string_value(json_object_get(s, "$schema")),
                        "https://json-schema.org/draft/2020-12/schema");
    static const char *const top[] = {"saga", "version", "deadline", "steps"};
    static const char *const step[] = {"name", "topic", "action", "compensation", "timeout",
                                       "retry", "pivot"};
    static const char *const command[] = {"type", "payload"};
    static const char *const retry[] = {"attempts", "backoff", "max_backoff"};
    const json_t *defs = json_object_get(s, "$defs");
    assert_keys(json_object_get(s, "properties"), top, 4, "saga");
    assert_keys(json_object_get(json_object_get(defs, "step"), "properties"), step, 7, "step");
    assert_keys(json_object_get(json_object_get(defs, "command"), "properties"), command, 2,
                "command");
    assert_keys(json_object_get(json_object_get(defs, "retry"), "properties"), retry, 3, "retry");
    assert_true(json_is_false(json_object_get(s, "additionalProperties")));
    const json_t *steps = json_object_get(json_object_get(s, "properties"), "steps");
    assert_int_equal(json_integer_value(json_object_get(steps, "maxItems")), FERRY_SAGA_STEPS_MAX);
    json_decref(s);
}

/* The driver fills templates in from the context's JSON text (jsonb's,
 * or the caller's at start), copying each value byte for byte: escaped
 * keys match, the last of repeated keys counts (as in jsonb), a path
 * through a non-object or to a key that is not there is missing. */
static void templates_fill_in_from_context_text(void **state)
{
    static const char yaml[] =
        "saga: s\nversion: 1\ndeadline: 1m\nsteps:\n"
        "  - name: a\n    topic: t\n    timeout: 1s\n    compensation: {type: B}\n"
        "    action:\n      type: A\n"
        "      payload: {n: 0.1, v: [\"${context.a.b}\", \"${context.ab}\", \"${context.x}\"],\n"
        "                s: \"${context.s}\", k: 1e-400}\n";
    ferry_saga_def *def = NULL;
    assert_int_equal(ferry_saga_def_parse(yaml, strlen(yaml), "t.yaml", &def, NULL), FERRY_OK);
    const ferry__tmpl *t = ferry__saga_def_tmpl(def, 0, FERRY_SAGA_CMD_ACTION);
    static const char ctx[] = " {\"a\" : {\"b\":[1e-400, 0.1,{\"]\":\"}\"}], \"c\": 1},\n"
                              "\"a\\u0062\": 123456789012345678901234567890, \"x\": 1, "
                              "\"s\": \"q\\\"}\", \"x\": 2.50}";
    char *out;
    const char *missing = "unset";
    assert_int_equal(ferry__tmpl_render(t, ctx, strlen(ctx), &out, &missing), 0);
    assert_null(missing);
    assert_string_equal(out, "{\"n\":0.1,\"v\":[[1e-400, 0.1,{\"]\":\"}\"}],"
                             "123456789012345678901234567890,2.50],\"s\":\"q\\\"}\","
                             "\"k\":1e-400}");
    free(out);
    static const struct {
        const char *ctx, *missing;
    } gone[] = {
        {"{}", "a.b"},
        {"{\"a\": 1, \"ab\": 1, \"x\": 1, \"s\": 1}", "a.b"},
        {"{\"a\": {\"bb\": 1}, \"ab\": 1, \"x\": 1, \"s\": 1}", "a.b"},
        {"{\"a\": {\"b\": 1}, \"a\\u00e2\": 1, \"x\": 1, \"s\": 1}", "ab"},
        {"{\"a\": {\"b\": 1}, \"ab\": 1, \"s\": 1, \"y\": {\"x\": 1}}", "x"},
        /* not JSON (never given: the text is jsonb's, or checked) */
        {"{\"a\": {\"b\": 1}, \"ab\": 1, \"x\": 1, \"s\"", "a.b"},
    };
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        out = NULL;
        assert_int_equal(ferry__tmpl_render(t, gone[i].ctx, strlen(gone[i].ctx), &out, &missing),
                         -1);
        assert_null(out);
        assert_non_null(missing);
        assert_string_equal(missing, gone[i].missing);
    }
    /* Cut inside a string, after an escape: whatever comes out, nothing is
     * read beyond the text (ASan watches). */
    static const char cut[] = "{\"a\": {\"b\": 1}, \"ab\": 1, \"x\": 1, \"s\": \"\\";
    out = NULL;
    if (ferry__tmpl_render(t, cut, strlen(cut), &out, &missing) == 0)
        free(out);
    ferry_saga_def_destroy(def);
}

static int check_cwd(void **state)
{
    return tu_load_need_dir(DATA, "test_saga_def");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_cases_load),
        cmocka_unit_test(invalid_cases_fail),
        cmocka_unit_test(every_error_class_is_covered),
        cmocka_unit_test(too_many_steps),
        cmocka_unit_test(too_large),
        cmocka_unit_test(errors_are_capped_and_counted),
        cmocka_unit_test(durations),
        cmocka_unit_test(retry_budget),
        cmocka_unit_test(hash_is_fnv1a_of_the_bytes),
        cmocka_unit_test(null_arguments_and_missing_files),
        cmocka_unit_test(allocation_failures),
        cmocka_unit_test(lint_command),
        cmocka_unit_test(graph_command),
        cmocka_unit_test(examples_lint_clean),
        cmocka_unit_test(schema_matches_the_loader),
        cmocka_unit_test(templates_fill_in_from_context_text),
    };
    return cmocka_run_group_tests(tests, check_cwd, NULL);
}
