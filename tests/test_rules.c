/*
 * test_rules.c — the reconciler's rules file (reconciler/rules.c) and
 * `ferry-reconcile lint` on rules files. Needs no server.
 *
 * Data-driven, from the repository root, as test_saga_def.c (the cases'
 * format is tu_load.h's): tests/data/rules/{valid,invalid}/CASE/rules.yaml.
 * Cases too large to commit (too many rules, too many bytes, too many
 * errors) are generated here. The program runs $FERRY_RECONCILE_BIN
 * (default build/asan/ferry-reconcile) for the command-line tests.
 */
#include <glob.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_load.h"
#include "../reconciler/reconcile.h"

#define DATA "tests/data/rules"
#define EXAMPLES "examples/rules"

/* ------------------------------------------------------------ helpers */

/* s with newlines and tabs as \n and \t, so that it fits one line. */
static void sb_escaped(tu_sbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            tu_sb_printf(b, "\\n");
        else if (*s == '\t')
            tu_sb_printf(b, "\\t");
        else
            tu_sb_printf(b, "%c", *s);
    }
}

/* Every field, one KEY=VALUE per line after a first newline: what
 * expected files check. */
static char *summary(const void *obj)
{
    const rc_rules *r = obj;
    tu_sbuf b = {0};
    const rc_budgets *g = &r->budgets;
    tu_sb_printf(&b, "\nbudgets.outbox_lag_ms=%lld\nbudgets.max_attempts=%d\n"
                 "budgets.saga_grace_ms=%lld\nbudgets.inbox_retention_ms=%lld\n"
                 "budgets.outbox_retention_ms=%lld\nbudgets.statement_timeout_ms=%lld\n"
                 "budgets.batch=%d\ncount=%zu\n", (long long)g->outbox_lag_ms, g->max_attempts,
                 (long long)g->saga_grace_ms, (long long)g->inbox_retention_ms,
                 (long long)g->outbox_retention_ms, (long long)g->statement_timeout_ms, g->batch,
                 r->count);
    for (size_t i = 0; i < r->count; i++) {
        const rc_rule *x = &r->rules[i];
        tu_sb_printf(&b, "rules[%zu].name=%s\nrules[%zu].line=%d\nrules[%zu].description=", i,
                     x->name, i, x->line, i);
        sb_escaped(&b, x->description ? x->description : "(null)");
        tu_sb_printf(&b, "\nrules[%zu].detect=", i);
        sb_escaped(&b, x->detect);
        tu_sb_printf(&b, "\nrules[%zu].timeout_ms=%lld\nrules[%zu].max_rows=%d\n"
                     "rules[%zu].repeat_after_ms=%lld\nrules[%zu].topic=%s\nrules[%zu].type=%s\n",
                     i, (long long)x->timeout_ms, i, x->max_rows, i, (long long)x->repeat_after_ms,
                     i, x->topic, i, x->type);
    }
    return b.s;
}

/* What holds for every rules file that loads. */
static void check_invariants(const void *obj)
{
    const rc_rules *r = obj;
    const rc_budgets *g = &r->budgets;
    assert_non_null(r->file);
    assert_true(g->outbox_lag_ms > 0 && g->saga_grace_ms > 0 && g->inbox_retention_ms > 0 &&
                g->outbox_retention_ms > 0 && g->statement_timeout_ms > 0);
    assert_true(g->max_attempts >= 1 && g->max_attempts <= 1000);
    assert_true(g->batch >= 1 && g->batch <= 100000);
    assert_true(r->count <= RC_RULES_MAX);
    for (size_t i = 0; i < r->count; i++) {
        const rc_rule *x = &r->rules[i];
        assert_non_null(x->name);
        assert_non_null(x->detect);
        assert_non_null(x->topic);
        assert_non_null(x->type);
        assert_true(strlen(x->name) >= 1 && strlen(x->name) <= 128);
        assert_true(x->timeout_ms > 0 && x->timeout_ms <= 600000);
        assert_true(x->max_rows >= 1 && x->max_rows <= 100000);
        assert_true(x->repeat_after_ms > 0);
        assert_true(x->line >= 1);
        /* The stored query ends at its last token. */
        size_t n = strlen(x->detect);
        assert_true(n > 0);
        assert_true(x->detect[n - 1] != ';' && x->detect[n - 1] != ' ' &&
                    x->detect[n - 1] != '\n');
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(r->rules[j].name, x->name);
    }
}

/* ------------------------------------------------------------ data-driven */

/* rc_rules through tu_load.h's void pointers; *out passed through. */
static ferry_code load(const char *path, const char *text, size_t len, void **out,
                       ferry_saga_load_errors *errs)
{
    rc_rules *r = *out;
    ferry_code rc = text ? rc_rules_parse(text, len, path, &r, errs)
                         : rc_rules_load(path, &r, errs);
    *out = r;
    return rc;
}

static void free_rules(void *r)
{
    rc_rules_free(r);
}

static const char *file_of(const void *r)
{
    return ((const rc_rules *)r)->file;
}

static const tu_loader rules = {
    .file = "rules.yaml", .load = load, .free = free_rules,
    .file_of = file_of, .summary = summary, .check = check_invariants,
};

static void valid_cases_load(void **state)
{
    tu_load_valid_cases(&rules, DATA, 8);
}

static void invalid_cases_fail(void **state)
{
    tu_load_invalid_cases(&rules, DATA, 20);
}

/* Every refusal the loader promises, each in a case of its own at least. */
static void every_refusal_is_covered(void **state)
{
    static const char *const cases[] = {
        "syntax", "two-documents", "anchor", "alias", "unknown-keys", "duplicate-keys",
        "wrong-types", "out-of-range", "bad-durations", "missing-keys", "duplicate-rule-name",
        "hostile-names", "bad-descriptions", "bad-emit", "detect-not-a-read",
        "detect-two-statements", "detect-empty-or-unterminated", "empty-document",
        "top-sequence", "several-errors", "too-deep", "tag",
    };
    tu_load_cases_exist(&rules, DATA, cases, sizeof cases / sizeof cases[0]);
    /* The several-errors case reports all of them. */
    rc_rules *r = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(rc_rules_load(DATA "/invalid/several-errors/rules.yaml", &r, &errs),
                     FERRY_EINVAL);
    assert_null(r);
    assert_true(errs.total >= 10);
    assert_int_equal(errs.count, errs.total);
}

/* ------------------------------------------------------------ defaults */

/* Field by field: the struct has padding. */
static void assert_budgets_equal(const rc_budgets *a, const rc_budgets *b)
{
    assert_int_equal(a->outbox_lag_ms, b->outbox_lag_ms);
    assert_int_equal(a->max_attempts, b->max_attempts);
    assert_int_equal(a->saga_grace_ms, b->saga_grace_ms);
    assert_int_equal(a->inbox_retention_ms, b->inbox_retention_ms);
    assert_int_equal(a->outbox_retention_ms, b->outbox_retention_ms);
    assert_int_equal(a->statement_timeout_ms, b->statement_timeout_ms);
    assert_int_equal(a->batch, b->batch);
}

static void defaults_are_applied(void **state)
{
    rc_budgets d;
    memset(&d, 0xa5, sizeof d);
    rc_budgets_default(&d);
    assert_int_equal(d.outbox_lag_ms, 60000);
    assert_int_equal(d.max_attempts, 10);
    assert_int_equal(d.saga_grace_ms, 30000);
    assert_int_equal(d.inbox_retention_ms, 7LL * 24 * 3600 * 1000);
    assert_int_equal(d.outbox_retention_ms, 7LL * 24 * 3600 * 1000);
    assert_int_equal(d.statement_timeout_ms, 30000);
    assert_int_equal(d.batch, 1000);

    /* One budget given: the others keep their defaults. */
    static const char doc[] = "budgets: {batch: 7}\n"
                              "rules:\n"
                              "  - name: a\n"
                              "    detect: SELECT 1\n"
                              "    emit: {topic: t, type: T}\n";
    rc_rules *r = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(rc_rules_parse(doc, sizeof doc - 1, "d.yaml", &r, &errs), FERRY_OK);
    assert_int_equal(r->budgets.batch, 7);
    d.batch = 7;
    assert_budgets_equal(&r->budgets, &d);
    assert_int_equal(r->count, 1);
    assert_string_equal(r->file, "d.yaml");
    assert_string_equal(r->rules[0].name, "a");
    assert_null(r->rules[0].description);
    assert_string_equal(r->rules[0].detect, "SELECT 1");
    assert_int_equal(r->rules[0].timeout_ms, 5000);
    assert_int_equal(r->rules[0].max_rows, 1000);
    assert_int_equal(r->rules[0].repeat_after_ms, 600000);
    assert_string_equal(r->rules[0].topic, "t");
    assert_string_equal(r->rules[0].type, "T");
    assert_int_equal(r->rules[0].line, 3);
    rc_rules_free(r);

    /* No name: "<memory>". */
    assert_int_equal(rc_rules_parse("{}", 2, NULL, &r, NULL), FERRY_OK);
    assert_string_equal(r->file, "<memory>");
    assert_int_equal(r->count, 0);
    rc_budgets_default(&d);
    assert_budgets_equal(&r->budgets, &d);
    rc_rules_free(r);
}

/* ------------------------------------------------------------ generated cases */

static void add_rule(tu_sbuf *b, int i)
{
    tu_sb_printf(b, "  - name: rule-%d\n    detect: SELECT %d\n    emit: {topic: t, type: T}\n",
                 i, i);
}

static void too_many_rules(void **state)
{
    tu_sbuf b = {0};
    tu_sb_printf(&b, "rules:\n");
    for (int i = 0; i < RC_RULES_MAX; i++)
        add_rule(&b, i);

    rc_rules *r = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(rc_rules_parse(b.s, b.len, "many.yaml", &r, &errs), FERRY_OK);
    assert_int_equal(r->count, RC_RULES_MAX);
    check_invariants(r);
    assert_int_equal(r->rules[RC_RULES_MAX - 1].line, 2 + 3 * (RC_RULES_MAX - 1));
    rc_rules_free(r);

    /* One more, and an error in the one after it, which is not read. */
    int line = 2 + 3 * RC_RULES_MAX;
    add_rule(&b, RC_RULES_MAX);
    tu_sb_printf(&b, "  - name: bad name\n");
    r = NULL;
    assert_int_equal(rc_rules_parse(b.s, b.len, "many.yaml", &r, &errs), FERRY_EINVAL);
    assert_null(r);
    char want[128];
    snprintf(want, sizeof want, "many.yaml:%d:5: rules: more than %d rules", line, RC_RULES_MAX);
    tu_load_assert_one_error(&errs, want, "too many rules");
    free(b.s);
}

/* A valid rules file, to be padded with a comment (tu_load_padded). */
static const char padded_head[] = "rules:\n  - {name: a, detect: SELECT 1, emit: {topic: t, "
                                  "type: T}}\n#";

static void too_large(void **state)
{
    char want[128];
    snprintf(want, sizeof want, "the document is larger than %d bytes", RC_RULES_FILE_MAX);
    tu_load_size_limit(&rules, padded_head, RC_RULES_FILE_MAX, want);
}

static void errors_are_capped_and_counted(void **state)
{
    tu_sbuf b = {0};
    tu_sb_printf(&b, "rules: []\n");
    for (int i = 0; i < 40; i++)
        tu_sb_printf(&b, "unknown%d: 1\n", i);
    rc_rules *r = NULL;
    ferry_saga_load_errors errs;
    assert_int_equal(rc_rules_parse(b.s, b.len, "many-errors.yaml", &r, &errs), FERRY_EINVAL);
    assert_int_equal(errs.count, FERRY_SAGA_ERRORS_MAX);
    assert_int_equal(errs.total, 40);
    assert_true(tu_load_has_error(&errs, "many-errors.yaml:2:1: unknown0: unknown key \"unknown0\" "
                                  "(expected budgets, rules)"));
    free(b.s);
}

/* ------------------------------------------------------------ values */

/* A one-rule file whose detect is the YAML text query. */
static ferry_code load_detect(const char *query, rc_rules **r, ferry_saga_load_errors *errs)
{
    char doc[1024];
    int n = snprintf(doc, sizeof doc, "rules:\n  - name: q\n    emit: {topic: t, type: T}\n"
                     "    detect: %s\n", query);
    assert_true(n > 0 && (size_t)n < sizeof doc);
    return rc_rules_parse(doc, (size_t)n, "q.yaml", r, errs);
}

static void detect_queries(void **state)
{
    static const struct {
        const char *yaml, *stored;
    } good[] = {
        {"SELECT 1", "SELECT 1"},
        {"select 1", "select 1"},
        {"Values (1)", "Values (1)"},
        {"table t", "table t"},
        {"WITH a AS (SELECT 1) SELECT * FROM a", "WITH a AS (SELECT 1) SELECT * FROM a"},
        {"\"SELECT 1;\"", "SELECT 1"},
        {"\"SELECT 1 ; ; \\n\\n\"", "SELECT 1"},
        {"\"SELECT 1; -- done\"", "SELECT 1"},
        {"\"SELECT 1 /* ; */;\"", "SELECT 1"},
        {"\"SELECT 1 -- trailing comment, cut\\n\"", "SELECT 1"},
        {"\"-- lead\\n/* x */ SELECT 2\"", "-- lead\n/* x */ SELECT 2"},
        {"\"  \\tSELECT 3\"", "  \tSELECT 3"},
        {"\"SELECT ';' AS k\"", "SELECT ';' AS k"},
        {"\"SELECT 'it''s;' AS k\"", "SELECT 'it''s;' AS k"},
        {"\"SELECT E'\\\\';' AS k\"", "SELECT E'\\';' AS k"},
        {"\"SELECT \\\"a;\\\"\\\"b\\\" FROM t\"", "SELECT \"a;\"\"b\" FROM t"},
        {"\"SELECT $$;$$, $x$ $$; $x$\"", "SELECT $$;$$, $x$ $$; $x$"},
        {"\"SELECT $1, a$b FROM t\"", "SELECT $1, a$b FROM t"},
        {"\"SELECT /* /* ; */ ; */ 1\"", "SELECT /* /* ; */ ; */ 1"},
        {"\"SELECT 1 - -1\"", "SELECT 1 - -1"},
        {"\"SELECT 1--x;\\n\"", "SELECT 1"},
        /* PostgreSQL's lexer ends a "--" comment at \r as at \n. */
        {"\"SELECT 'k' AS key --c\\r FROM no_such_table WHERE false\"",
         "SELECT 'k' AS key --c\r FROM no_such_table WHERE false"},
        {"\"-- lead\\rSELECT 4\"", "-- lead\rSELECT 4"},
    };
    static const struct {
        const char *yaml, *error;
    } bad[] = {
        {"DELETE FROM t", "not \"DELETE\""},
        {"\"-- SELECT\\nUPDATE t SET a = 1\"", "not \"UPDATE\""},
        {"\"/* SELECT */ insert into t values (1)\"", "not \"insert\""},
        {"SELECTED", "not \"SELECTED\""},
        {"(SELECT 1)", "not \"(\""},
        {"\"\\e[31mSELECT\"", "not byte 0x1b"},
        {"\"\\u009b31mSELECT\"", "not byte 0xc2"},
        {"\"\\u00c4SELECT\"", "not byte 0xc3"},
        {"\"SELECT 1; DROP TABLE t\"", "the ';' at line 1, column 9 of the query is followed "
                                       "by more"},
        {"\"SELECT 1;\\n  SELECT 2;\"", "the ';' at line 1, column 9"},
        {"\"SELECT (1;)\"", "the ';' at line 1, column 10"},
        {"\"SELECT 1;;x\"", "the ';' at line 1, column 9"},
        {"\"SELECT 1 --c\\r; DROP TABLE t\"", "the ';' at line 1, column 14"},
        {"\"-- SELECT\\rDELETE FROM t\"", "not \"DELETE\""},
        {"\"SELECT 1; 'x'\"", "the ';' at line 1, column 9"},
        {"\"SELECT 'x\"", "an unterminated quoted string (at line 1, column 8 of the query)"},
        {"\"SELECT \\\"x\"", "an unterminated quoted identifier"},
        {"\"SELECT 1 /* x\"", "an unterminated /* comment"},
        {"\"SELECT 1 /* /* x */\"", "an unterminated /* comment"},
        {"\"SELECT $a$ x $b$\"", "an unterminated dollar-quoted string"},
        {"\"SELECT E'\\\\'\"", "an unterminated quoted string"},
        {"\"/* unterminated\"", "an unterminated /* comment"},
        {"\"\"", "the detect query is empty"},
        {"\"  -- only a comment\\n\"", "the detect query is empty"},
        {"\";\"", "not \";\""},
        {"~", "expected a query, not null"},
        {"{a: 1}", "expected a query, not a mapping"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        rc_rules *r = NULL;
        ferry_saga_load_errors errs;
        if (load_detect(good[i].yaml, &r, &errs) != FERRY_OK) {
            tu_load_print_errors(&errs);
            fail_msg("detect %s: refused", good[i].yaml);
        }
        if (strcmp(r->rules[0].detect, good[i].stored) != 0)
            fail_msg("detect %s: stored as \"%s\", expected \"%s\"", good[i].yaml,
                     r->rules[0].detect, good[i].stored);
        rc_rules_free(r);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc_rules *r = NULL;
        ferry_saga_load_errors errs;
        if (load_detect(bad[i].yaml, &r, &errs) == FERRY_OK) {
            rc_rules_free(r);
            fail_msg("detect %s: loaded", bad[i].yaml);
        }
        tu_load_assert_one_error(&errs, "q.yaml:4:13: rules[0].detect: ", bad[i].yaml);
        tu_load_assert_one_error(&errs, bad[i].error, bad[i].yaml);
    }
}

/* A budget given as text. */
static ferry_code load_budget(const char *key, const char *text, rc_rules **r,
                              ferry_saga_load_errors *errs)
{
    char doc[512];
    int n = snprintf(doc, sizeof doc, "budgets:\n  %s: %s\n", key, text);
    return rc_rules_parse(doc, (size_t)n, "b.yaml", r, errs);
}

static void budget_values(void **state)
{
    static const struct {
        const char *key, *text;
        int64_t value;
    } good[] = {
        {"outbox_lag", "1", 1}, {"outbox_lag", "250ms", 250}, {"outbox_lag", "1h30m", 5400000},
        {"saga_grace", "'2m'", 120000}, {"inbox_retention", "366d", 366LL * 86400000},
        {"statement_timeout", "1d", 86400000}, {"statement_timeout", "86400000", 86400000},
        {"max_attempts", "1", 1}, {"max_attempts", "1000", 1000}, {"batch", "100000", 100000},
    };
    static const struct {
        const char *key, *text, *error;
    } bad[] = {
        {"outbox_lag", "0", "must be positive"}, {"outbox_lag", "0s", "must be positive"},
        {"saga_grace", "-5s", "must not be negative"}, {"saga_grace", "-1", "must not be negative"},
        {"inbox_retention", "1.5d", "fractions are not supported"},
        {"inbox_retention", "1w", "is not a duration"},
        {"outbox_retention", "\"30\"", "needs a unit"},
        {"outbox_retention", "367d", "longer than 366 days"},
        {"statement_timeout", "1d1ms", "\"1d1ms\" is longer than the limit of 1d"},
        {"statement_timeout", "~", "expected a duration such as \"30s\", \"5m\" or \"1h30m\", "
                                   "not null"},
        {"max_attempts", "0", "must be between 1 and 1000, not 0"},
        {"max_attempts", "1001", "must be between 1 and 1000, not 1001"},
        {"max_attempts", "12abc", "expected an integer, not \"12abc\""},
        {"max_attempts", "\"10\"", "expected an integer, not the quoted string \"10\""},
        {"max_attempts", "1e3", "expected an integer, not \"1e3\""},
        {"batch", "100001", "must be between 1 and 100000, not 100001"},
        {"batch", "-1", "must be between 1 and 100000, not -1"},
        {"batch", "99999999999999999999", "must be between 1 and 100000"},
        {"batch", "[1]", "expected an integer, not a sequence"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        rc_rules *r = NULL;
        ferry_saga_load_errors errs;
        if (load_budget(good[i].key, good[i].text, &r, &errs) != FERRY_OK) {
            tu_load_print_errors(&errs);
            fail_msg("%s: %s: refused", good[i].key, good[i].text);
        }
        const rc_budgets *b = &r->budgets;
        int64_t got = strcmp(good[i].key, "outbox_lag") == 0 ? b->outbox_lag_ms
                      : strcmp(good[i].key, "saga_grace") == 0 ? b->saga_grace_ms
                      : strcmp(good[i].key, "inbox_retention") == 0 ? b->inbox_retention_ms
                      : strcmp(good[i].key, "statement_timeout") == 0 ? b->statement_timeout_ms
                      : strcmp(good[i].key, "max_attempts") == 0 ? b->max_attempts
                      : b->batch;
        if (got != good[i].value)
            fail_msg("%s: %s: %lld, expected %lld", good[i].key, good[i].text, (long long)got,
                     (long long)good[i].value);
        rc_rules_free(r);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc_rules *r = NULL;
        ferry_saga_load_errors errs;
        if (load_budget(bad[i].key, bad[i].text, &r, &errs) == FERRY_OK) {
            rc_rules_free(r);
            fail_msg("%s: %s: loaded", bad[i].key, bad[i].text);
        }
        char want[128];
        snprintf(want, sizeof want, "b.yaml:2:%zu: budgets.%s: ", 5 + strlen(bad[i].key),
                 bad[i].key);
        tu_load_assert_one_error(&errs, want, bad[i].text);
        tu_load_assert_one_error(&errs, bad[i].error, bad[i].text);
    }
}

static void null_arguments_and_missing_files(void **state)
{
    rc_rules *r = NULL;
    ferry_saga_load_errors errs;
    rc_rules_free(NULL);
    assert_int_equal(rc_rules_parse(NULL, 0, "x", &r, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, "x: text is NULL", "NULL text");
    assert_int_equal(rc_rules_parse("{}", 2, "x", NULL, NULL), FERRY_EINVAL);
    assert_int_equal(rc_rules_load(NULL, &r, NULL), FERRY_EINVAL);
    assert_int_equal(rc_rules_load("x", NULL, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, "x: out is NULL", "NULL out");
    assert_int_equal(rc_rules_load(DATA "/nope.yaml", &r, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, DATA "/nope.yaml: could not open the rules file: No such "
                             "file or directory", "missing file");
    assert_int_equal(rc_rules_load(DATA, &r, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, "could not read the rules file: Is a directory", "directory");
    assert_null(r);
    /* Bytes after a NUL in memory are part of the document, not its end. */
    static const char nul[] = "rules: []\0x\n";
    assert_int_equal(rc_rules_parse(nul, sizeof nul - 1, "nul", &r, &errs), FERRY_EINVAL);
    assert_true(tu_load_has_error(&errs, "invalid YAML"));
    assert_null(r);
}

/* ------------------------------------------------------------ allocation failures */

/* Every allocation failed in turn (tu_load_alloc_failures), through
 * rc_rules_load too, whose file buffer is the first allocation. */
static void allocation_failures(void **state)
{
    static const char *const files[] = {
        EXAMPLES "/shop.yaml", DATA "/valid/full/rules.yaml", DATA "/valid/detect-forms/rules.yaml",
        DATA "/invalid/several-errors/rules.yaml",
    };
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++)
        for (int from_file = 0; from_file < 2; from_file++)
            tu_load_alloc_failures(&rules, files[f], from_file,
                                   "out of memory loading the rules file", 5);
}

/* ------------------------------------------------------------ the program */

static void lint_command(void **state)
{
    char *out, *err;

    assert_int_equal(tu_lint(&out, &err, "lint " EXAMPLES "/shop.yaml"), 0);
    assert_string_equal(err, "");
    assert_string_equal(out,
        EXAMPLES "/shop.yaml: OK: rules file, 1 rule, budgets: outbox_lag 1m, max_attempts 10, "
        "saga_grace 30s, inbox_retention 7d, outbox_retention 7d, statement_timeout 30s, "
        "batch 1000\n");
    free(out);
    free(err);

    /* Rules files and saga definitions on one command line. */
    assert_int_equal(tu_lint(&out, &err, "lint " EXAMPLES "/shop.yaml examples/sagas/order.yaml "
                         DATA "/valid/budgets-only/rules.yaml " DATA "/valid/full/rules.yaml"),
                     0);
    assert_string_equal(err, "");
    assert_int_equal(tu_count_lines(out), 4);
    assert_non_null(strstr(out, "examples/sagas/order.yaml: OK: saga order version 1, 3 steps"));
    assert_non_null(strstr(out, DATA "/valid/budgets-only/rules.yaml: OK: rules file, 0 rules, "
                           "budgets: outbox_lag 2m, max_attempts 5, saga_grace 250ms, "
                           "inbox_retention 14d, outbox_retention 1d12h, statement_timeout 10s, "
                           "batch 50\n"));
    assert_non_null(strstr(out, DATA "/valid/full/rules.yaml: OK: rules file, 2 rules, "));
    free(out);
    free(err);

    /* A refused rules file: every error, the good files still said OK, exit 4. */
    assert_int_equal(tu_lint(&out, &err, "lint examples/sagas/order.yaml "
                         DATA "/invalid/duplicate-rule-name/rules.yaml " EXAMPLES "/shop.yaml"),
                     4);
    assert_int_equal(tu_count_lines(out), 2);
    char *want = tu_slurp(DATA "/invalid/duplicate-rule-name/expected", NULL);
    assert_non_null(want);
    tu_sbuf b = {0};
    for (char *line = strtok(want, "\n"); line; line = strtok(NULL, "\n"))
        tu_sb_printf(&b, DATA "/invalid/duplicate-rule-name/%s\n", line);
    assert_string_equal(err, b.s);
    free(b.s);
    free(want);
    free(out);
    free(err);

    /* A rules file and a saga definition refused on one command line. */
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/invalid/bad-emit/rules.yaml "
                         "tests/data/saga/invalid/zero-timeout/saga.yaml"), 4);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, DATA "/invalid/bad-emit/rules.yaml:"));
    assert_non_null(strstr(err, "tests/data/saga/invalid/zero-timeout/saga.yaml:3:11: deadline: "
                           "must be positive, not \"0\"\n"));
    free(out);
    free(err);

    /* What is not a rules file is a saga definition: its messages. */
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/invalid/empty-document/rules.yaml"), 4);
    assert_non_null(strstr(err, "empty document: expected a saga definition"));
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/invalid/syntax/rules.yaml"), 4);
    assert_non_null(strstr(err, DATA "/invalid/syntax/rules.yaml:5:4: invalid YAML: "));
    free(out);
    free(err);

    /* A file that cannot be read: 8; with a refused one as well: 4 | 8. */
    assert_int_equal(tu_lint(&out, &err, "lint " DATA "/nope.yaml " EXAMPLES "/shop.yaml"), 8);
    assert_string_equal(err, DATA "/nope.yaml: could not open the saga definition: No such file "
                        "or directory\n");
    assert_int_equal(tu_count_lines(out), 1);
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "lint " DATA " " DATA "/invalid/bad-emit/rules.yaml"), 12);
    assert_non_null(strstr(err, DATA ": could not read the saga definition: Is a directory\n"));
    free(out);
    free(err);

    /* Too large: refused, not unreadable. */
    char path[] = "/tmp/ferry-test-lint-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char *big = tu_load_padded(padded_head, RC_RULES_FILE_MAX + 1);
    assert_int_equal(write(fd, big, RC_RULES_FILE_MAX + 1), RC_RULES_FILE_MAX + 1);
    close(fd);
    free(big);
    char args[128];
    snprintf(args, sizeof args, "lint %s", path);
    assert_int_equal(tu_lint(&out, &err, args), 4);
    assert_non_null(strstr(err, "the document is larger than"));
    unlink(path);
    free(out);
    free(err);

    /* Usage. */
    assert_int_equal(tu_lint(&out, &err, "lint"), 16);
    assert_non_null(strstr(err, "usage: ferry-reconcile lint FILE..."));
    free(out);
    free(err);
    assert_int_equal(tu_lint(&out, &err, "lint --rules " EXAMPLES "/shop.yaml"), 16);
    free(out);
    free(err);
    /* "--" ends the options. */
    assert_int_equal(tu_lint(&out, &err, "lint -- " EXAMPLES "/shop.yaml"), 0);
    free(out);
    free(err);
}

/* Every example under examples/rules loads, by the library and the program. */
static void examples_load(void **state)
{
    glob_t g;
    assert_int_equal(glob(EXAMPLES "/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 1);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        rc_rules *r = NULL;
        ferry_saga_load_errors errs;
        if (rc_rules_load(g.gl_pathv[i], &r, &errs) != FERRY_OK) {
            tu_load_print_errors(&errs);
            fail_msg("%s does not load", g.gl_pathv[i]);
        }
        check_invariants(r);
        rc_rules_free(r);
        char *out, *err, args[600];
        snprintf(args, sizeof args, "lint %s", g.gl_pathv[i]);
        assert_int_equal(tu_lint(&out, &err, args), 0);
        assert_string_equal(err, "");
        assert_non_null(strstr(out, ": OK: rules file, "));
        free(out);
        free(err);
    }
    globfree(&g);

    /* shop.yaml is the format's documentation: every key, each at its default
     * but the rule's timeout. */
    rc_rules *r = NULL;
    assert_int_equal(rc_rules_load(EXAMPLES "/shop.yaml", &r, NULL), FERRY_OK);
    rc_budgets d;
    rc_budgets_default(&d);
    assert_budgets_equal(&r->budgets, &d);
    assert_int_equal(r->count, 1);
    const rc_rule *x = &r->rules[0];
    assert_string_equal(x->name, "release-stale-reservations");
    assert_int_equal(x->line, 11);
    assert_int_equal(x->timeout_ms, 2000);
    assert_int_equal(x->max_rows, 1000);
    assert_int_equal(x->repeat_after_ms, 600000);
    assert_string_equal(x->topic, "shop.inventory");
    assert_string_equal(x->type, "ReleaseReservation");
    assert_int_equal(strncmp(x->detect, "SELECT r.id AS key", 18), 0);
    assert_non_null(strstr(x->detect, "c.order_id = r.order_id)"));
    assert_int_equal(x->detect[strlen(x->detect) - 1], ')');
    rc_rules_free(r);
}

/* Write a file of head then n bytes of fill (a temporary path into path). */
static void write_nested(char *path, const char *head, char fill, size_t n)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t hl = strlen(head);
    char *buf = malloc(hl + n);
    assert_non_null(buf);
    memcpy(buf, head, hl);
    memset(buf + hl, fill, n);
    assert_int_equal(write(fd, buf, hl + n), (ssize_t)(hl + n));
    close(fd);
    free(buf);
}

/*
 * Deep flow collections: lint tells a rules file from a saga definition
 * by a walk of its own over the top keys, which had no depth limit, and
 * libyaml's scanner costs time in the depth for every token (80,000
 * levels took 17 s, a 1 MiB file over ten minutes). Now every walk stops
 * at FERRY_YW_DEPTH_MAX and the loader says where. The errors are
 * asserted here; how fast is the bench's business.
 */
static void deep_nesting_is_refused_where_it_is(void **state)
{
    static const struct {
        const char *head;
        char fill;
        size_t n;
        const char *error;            /* after "PATH:" */
    } cases[] = {
        {"", '[', 80000, ":1:33: nested more than 32 levels deep\n"},
        {"", '{', 80000, ":1:33: nested more than 32 levels deep\n"},
        {"", '{', 1024 * 1024, ":1:33: nested more than 32 levels deep\n"},
        /* A rules file, then its rules' values nested deep. */
        {"rules: ", '[', 80000, ":1:39: rules[0]: nested more than 32 levels deep\n"},
        {"budgets: {}\nrules:\n  - ", '[', 80000, ":3:35: rules[0]: nested more than 32 levels deep\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[] = "/tmp/ferry-test-deep-XXXXXX";
        write_nested(path, cases[i].head, cases[i].fill, cases[i].n - strlen(cases[i].head));
        char args[128], *out, *err;
        snprintf(args, sizeof args, "lint %s", path);
        assert_int_equal(tu_lint(&out, &err, args), 4);
        char want[256];
        snprintf(want, sizeof want, "%s%s", path, cases[i].error);
        if (strstr(err, want) == NULL)
            fail_msg("case %zu: lint said \"%.300s\", expected \"%s...\"", i, err, want);
        assert_non_null(strstr(err, "nested more than 32 levels deep"));
        assert_string_equal(out, "");
        unlink(path);
        free(out);
        free(err);
    }
}

static int check_cwd(void **state)
{
    return tu_load_need_dir(DATA, "test_rules");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_cases_load),
        cmocka_unit_test(invalid_cases_fail),
        cmocka_unit_test(every_refusal_is_covered),
        cmocka_unit_test(defaults_are_applied),
        cmocka_unit_test(too_many_rules),
        cmocka_unit_test(too_large),
        cmocka_unit_test(errors_are_capped_and_counted),
        cmocka_unit_test(detect_queries),
        cmocka_unit_test(budget_values),
        cmocka_unit_test(null_arguments_and_missing_files),
        cmocka_unit_test(allocation_failures),
        cmocka_unit_test(lint_command),
        cmocka_unit_test(deep_nesting_is_refused_where_it_is),
        cmocka_unit_test(examples_load),
    };
    return cmocka_run_group_tests(tests, check_cwd, NULL);
}
