/* tu_load.c — see tu_load.h. */
#include "tu_load.h"

#include <glob.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "../lib/saga_def_hook.h"

/* ------------------------------------------------------------ errors */

void tu_load_format(const ferry_saga_load_error *e, char *buf, size_t len)
{
    int n = e->line > 0 ? snprintf(buf, len, "%s:%d:%d: ", e->file, e->line, e->column)
                        : snprintf(buf, len, "%s: ", e->file);
    if (e->field[0])
        n += snprintf(buf + n, len - (size_t)n, "%s: ", e->field);
    snprintf(buf + n, len - (size_t)n, "%s", e->message);
}

void tu_load_print_errors(const ferry_saga_load_errors *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        char line[1024];
        tu_load_format(&errs->errors[i], line, sizeof line);
        print_error("    %s\n", line);
    }
}

bool tu_load_has_error(const ferry_saga_load_errors *errs, const char *want)
{
    for (size_t i = 0; i < errs->count; i++) {
        char line[1024];
        tu_load_format(&errs->errors[i], line, sizeof line);
        if (strstr(line, want))
            return true;
    }
    return false;
}

void tu_load_assert_one_error(const ferry_saga_load_errors *errs, const char *want,
                              const char *what)
{
    if (errs->total != 1 || !tu_load_has_error(errs, want)) {
        tu_load_print_errors(errs);
        fail_msg("%s: expected one error containing \"%s\", got %zu", what, want, errs->total);
    }
}

/* ------------------------------------------------------------ text */

void tu_sb_printf(tu_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
}

char *tu_load_padded(const char *head, size_t size)
{
    size_t n = strlen(head);
    assert_true(n + 1 < size);
    char *buf = malloc(size + 1);
    assert_non_null(buf);
    memcpy(buf, head, n);
    memset(buf + n, 'x', size - n - 1);
    buf[size - 1] = '\n';
    buf[size] = '\0';
    return buf;
}

size_t tu_count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ------------------------------------------------------------ cases */

/* DIR/KIND/WHO/FILE into buf: the case's file or, with FILE "expected",
 * its expectations. */
static void case_file(char *buf, size_t len, const char *case_path, const char *file,
                      const char *name)
{
    snprintf(buf, len, "%.*s/%s", (int)(strlen(case_path) - strlen(file) - 1), case_path, name);
}

static glob_t cases(const tu_loader *l, const char *dir, const char *kind, size_t at_least)
{
    char pattern[512];
    snprintf(pattern, sizeof pattern, "%s/%s/*/%s", dir, kind, l->file);
    glob_t g;
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    if (g.gl_pathc < at_least)
        fail_msg("%s: %zu cases, expected at least %zu", pattern, g.gl_pathc, at_least);
    return g;
}

void tu_load_valid_cases(const tu_loader *l, const char *dir, size_t at_least)
{
    glob_t g = cases(l, dir, "valid", at_least);
    int failures = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        void *obj = NULL;
        ferry_saga_load_errors errs;
        if (l->load(path, NULL, 0, &obj, &errs) != FERRY_OK) {
            print_error("%s: did not load:\n", path);
            tu_load_print_errors(&errs);
            failures++;
            continue;
        }
        assert_int_equal(errs.total, 0);
        assert_string_equal(l->file_of(obj), path);
        l->check(obj);

        char expect_path[512];
        case_file(expect_path, sizeof expect_path, path, l->file, "expected");
        char *expect = tu_slurp(expect_path, NULL);
        char *got = l->summary(obj);
        int checked = 0, bad = 0;
        for (char *line = expect ? strtok(expect, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            char want[4096];
            snprintf(want, sizeof want, "\n%s\n", line);
            if (!strstr(got, want)) {
                print_error("%s: expected the line \"%s\"\n", path, line);
                bad++;
            }
            checked++;
        }
        if (!expect || checked == 0) {
            print_error("%s: checks nothing\n", expect_path);
            bad++;
        }
        if (bad)
            print_error("%s: the summary is:%s", path, got);
        failures += bad;
        free(got);
        free(expect);
        l->free(obj);
    }
    globfree(&g);
    assert_int_equal(failures, 0);
}

void tu_load_invalid_cases(const tu_loader *l, const char *dir, size_t at_least)
{
    glob_t g = cases(l, dir, "invalid", at_least);
    int failures = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        char expect_path[512];
        case_file(expect_path, sizeof expect_path, path, l->file, "expected");
        char *expect = tu_slurp_expected(path, expect_path);
        if (!expect) {
            failures++;
            continue;
        }
        void *obj = &obj;           /* must stay untouched */
        ferry_saga_load_errors errs;
        ferry_code rc = l->load(path, NULL, 0, &obj, &errs);
        if (rc == FERRY_OK) {
            print_error("%s: loaded\n", path);
            l->free(obj);
            failures++;
            free(expect);
            continue;
        }
        assert_int_equal(rc, FERRY_EINVAL);
        assert_ptr_equal(obj, &obj);
        size_t lines = 0;
        bool bad = false;
        for (char *line = strtok(expect, "\n"); line; line = strtok(NULL, "\n")) {
            lines++;
            if (!tu_load_has_error(&errs, line)) {
                print_error("%s: expected an error containing\n    %s\n", path, line);
                bad = true;
            }
        }
        if (errs.total != lines) {
            print_error("%s: %zu errors expected, %zu reported\n", path, lines, errs.total);
            bad = true;
        }
        for (size_t k = 0; k < errs.count; k++) {
            /* Every error names the file; positions are 1-based or unknown;
             * errors come in document order. */
            assert_string_equal(errs.errors[k].file, path);
            assert_true(errs.errors[k].line >= 0 && errs.errors[k].column >= 0);
            assert_true(errs.errors[k].message[0] != '\0');
            if (k > 0)
                assert_true(errs.errors[k - 1].line < errs.errors[k].line ||
                            (errs.errors[k - 1].line == errs.errors[k].line &&
                             errs.errors[k - 1].column <= errs.errors[k].column));
        }
        if (bad) {
            print_error("%s: reported:\n", path);
            tu_load_print_errors(&errs);
            failures++;
        }
        free(expect);
    }
    globfree(&g);
    assert_int_equal(failures, 0);
}

void tu_load_cases_exist(const tu_loader *l, const char *dir, const char *const *names,
                         size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char path[512];
        struct stat st;
        snprintf(path, sizeof path, "%s/invalid/%s/%s", dir, names[i], l->file);
        if (stat(path, &st) != 0)
            fail_msg("missing case %s", path);
    }
}

/* ------------------------------------------------------------ the size limit */

void tu_load_size_limit(const tu_loader *l, const char *head, size_t max, const char *want)
{
    void *obj = NULL;
    ferry_saga_load_errors errs;
    char *ok = tu_load_padded(head, max);
    assert_int_equal(l->load("big.yaml", ok, max, &obj, &errs), FERRY_OK);
    l->free(obj);
    free(ok);

    char *big = tu_load_padded(head, max + 1);
    obj = NULL;
    assert_int_equal(l->load("big.yaml", big, max + 1, &obj, &errs), FERRY_EINVAL);
    assert_null(obj);
    tu_load_assert_one_error(&errs, want, "too large");
    assert_int_equal(errs.errors[0].line, 0);

    /* The same from a file, and through a pipe, whose size is unknown. */
    char path[] = "/tmp/ferry-test-load-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, big, max + 1), (ssize_t)(max + 1));
    close(fd);
    assert_int_equal(l->load(path, NULL, 0, &obj, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, want, "too large, file");
    char fdpath[64];
    FILE *p = tu_cat_pipe(path, fdpath, sizeof fdpath);
    assert_int_equal(l->load(fdpath, NULL, 0, &obj, &errs), FERRY_EINVAL);
    tu_load_assert_one_error(&errs, want, "too large, pipe");
    pclose(p);
    assert_null(obj);
    unlink(path);
    free(big);
}

/* ------------------------------------------------------------ allocation failures */

static long countdown = -1;           /* allocations left before failing; -1: never */
static long failed;

void *tu_failing_malloc(size_t n)
{
    if (countdown == 0) {             /* fail this one only: the loader must cope
                                         with the allocations after it succeeding */
        countdown = -1;
        failed++;
        return NULL;
    }
    if (countdown > 0)
        countdown--;
    return malloc(n);
}

void tu_load_alloc_failures(const tu_loader *l, const char *path, int from_file,
                            const char *oom, long more_than)
{
    size_t len;
    char *text = tu_slurp(path, &len);
    assert_non_null(text);
    ferry_saga_load_errors errs;
    void *obj = NULL;
    const char *name = from_file ? path : "x.yaml";
    const char *from = from_file ? NULL : text;
    ferry_code clean = l->load(name, from, len, &obj, &errs);
    if (obj != NULL)
        l->free(obj);
    size_t clean_total = errs.total;

    long n = 0;
    failed = 0;
    ferry__saga_malloc_ = tu_failing_malloc;
    for (;; n++) {
        countdown = n;
        obj = NULL;
        long before = failed;
        ferry_code rc = l->load(name, from, len, &obj, &errs);
        bool fired = failed > before;
        countdown = -1;
        if (!fired) {
            assert_int_equal(rc, clean);
            assert_int_equal(errs.total, clean_total);
            if (obj != NULL)
                l->free(obj);
            break;
        }
        if (rc != FERRY_ENOMEM) {
            tu_load_print_errors(&errs);
            fail_msg("%s: allocation %ld failed: %s, expected FERRY_ENOMEM", path, n,
                     ferry_code_name(rc));
        }
        assert_null(obj);
        assert_true(tu_load_has_error(&errs, oom));
    }
    ferry__saga_malloc_ = malloc;
    assert_true(n > more_than);
    assert_int_equal(failed, n);  /* the fault fired in every round but the last */
    free(text);
}

/* ------------------------------------------------------------ the program */

int tu_lint(char **out, char **err, const char *args)
{
    enum { MAX = 32 };
    char *copy = strdup(args);
    assert_non_null(copy);
    const char *argv[MAX + 1];
    size_t n = 0;
    char *save = NULL;
    for (char *a = strtok_r(copy, " ", &save); a; a = strtok_r(NULL, " ", &save)) {
        assert_true(n < MAX);
        argv[n++] = a;
    }
    argv[n] = NULL;
    int st = tu_reconcile(argv, 60000, out, err);
    free(copy);
    return st;
}

int tu_load_need_dir(const char *dir, const char *prog)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: run from the repository root (no %s here)\n", prog, dir);
        return -1;
    }
    return 0;
}
