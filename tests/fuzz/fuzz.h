/*
 * fuzz.h — what the libFuzzer targets in tests/fuzz/ share.
 *
 * A target is tests/fuzz/fuzz_NAME.c defining LLVMFuzzerTestOneInput, with
 * its seeds in tests/fuzz/corpus/NAME/ and, optionally, a dictionary in
 * tests/fuzz/NAME.dict; the Makefile and scripts/run-fuzz.sh find it by
 * those names alone. Besides the sanitizers (ASan, UBSan, LeakSanitizer)
 * and libFuzzer's -timeout, each target checks the contract of the call it
 * fuzzes with FUZZ_CHECK: a broken promise aborts like a crash, so that
 * libFuzzer keeps the input and prints its path.
 *
 * Checks for bugs that are known and being fixed in someone else's file
 * are compiled in but run only when FERRY_FUZZ_PENDING names them, so that
 * `make test` stays deterministic until the fix lands: FERRY_FUZZ_PENDING=5,11
 * runs those of issue 12's items 5 and 11, FERRY_FUZZ_PENDING=all every
 * one. Once the item is fixed, drop the fuzz_pending() condition.
 */
#ifndef FERRY_FUZZ_H
#define FERRY_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                 \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: broken promise: %s: ", __FILE__, __LINE__, \
                    #cond);                                                   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* Is the check waiting for issue 12's item `item` switched on? */
static inline bool fuzz_pending(int item)
{
    const char *v = getenv("FERRY_FUZZ_PENDING");
    if (!v)
        return false;
    if (strcmp(v, "all") == 0)
        return true;
    while (*v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (end != v && n == item)
            return true;
        v = end + strspn(end, ", ");
        if (end == v && *v)
            v++;
    }
    return false;
}

/* A heap copy of data[0..size) with a NUL after it: a buffer exactly as
 * long as the input, so that ASan sees a read past its end. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* UTF-8 as PostgreSQL's pg_utf8_islegal takes it: no overlongs, no
 * surrogates, nothing above U+10FFFF. Written apart from lib/ on purpose,
 * from the Unicode standard's table of well-formed sequences (Table 3-7):
 * a lead byte fixes the length and the range of the second byte; every
 * later byte is 80..BF. */
static inline bool fuzz_utf8_ok(const unsigned char *s, size_t n)
{
    static const struct {
        unsigned char first, last;  /* lead bytes */
        unsigned char len, lo, hi;  /* the sequence's length, its second byte's range */
    } lead[] = {
        {0xc2, 0xdf, 2, 0x80, 0xbf},
        {0xe0, 0xe0, 3, 0xa0, 0xbf},    /* no overlongs */
        {0xe1, 0xec, 3, 0x80, 0xbf},
        {0xed, 0xed, 3, 0x80, 0x9f},    /* no surrogates */
        {0xee, 0xef, 3, 0x80, 0xbf},
        {0xf0, 0xf0, 4, 0x90, 0xbf},    /* no overlongs */
        {0xf1, 0xf3, 4, 0x80, 0xbf},
        {0xf4, 0xf4, 4, 0x80, 0x8f},    /* nothing above U+10FFFF */
    };
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t r = 0;
        while (r < sizeof lead / sizeof lead[0] && !(c >= lead[r].first && c <= lead[r].last))
            r++;
        if (r == sizeof lead / sizeof lead[0])
            return false;
        size_t len = lead[r].len;
        if (n - i < len)
            return false;
        if (s[i + 1] < lead[r].lo || s[i + 1] > lead[r].hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += len;
    }
    return true;
}

/* NUL-terminated within n bytes? */
static inline bool fuzz_terminated(const char *s, size_t n)
{
    return memchr(s, '\0', n) != NULL;
}

/* A C0 control character or DEL, other than tab and newline: what must
 * never reach a terminal from a message that quotes hostile input. */
static inline bool fuzz_has_control(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f)
            return true;
    }
    return false;
}

/* The promises of ferry_saga_load_errors (ferry.h), after a call that
 * returned rc: success leaves no error; failure leaves at least one, every
 * one of them terminated and pointing at a sane place. */
static inline void fuzz_check_load_errors(ferry_code rc, const ferry_saga_load_errors *e)
{
    if (rc == FERRY_OK) {
        FUZZ_CHECK(e->count == 0 && e->total == 0, "success with %zu errors", e->total);
        return;
    }
    FUZZ_CHECK(e->count >= 1, "%s with no error recorded", ferry_code_name(rc));
    FUZZ_CHECK(e->count <= FERRY_SAGA_ERRORS_MAX && e->count <= e->total,
               "count %zu, total %zu", e->count, e->total);
    for (size_t i = 0; i < e->count; i++) {
        const ferry_saga_load_error *x = &e->errors[i];
        FUZZ_CHECK(fuzz_terminated(x->file, sizeof x->file) &&
                   fuzz_terminated(x->field, sizeof x->field) &&
                   fuzz_terminated(x->message, sizeof x->message), "error %zu unterminated", i);
        FUZZ_CHECK(x->message[0] != '\0', "error %zu has no message", i);
        FUZZ_CHECK(x->line >= 0 && x->column >= 0, "error %zu at %d:%d", i, x->line,
                   x->column);
        /* Hostile bytes quoted escaped (issue 12 item 11). */
        FUZZ_CHECK(!fuzz_has_control(x->message) && !fuzz_has_control(x->field) &&
                   fuzz_utf8_ok((const unsigned char *)x->message, strlen(x->message)),
                   "error %zu quotes a control character or invalid UTF-8: %s", i,
                   x->message);
    }
}

/* What a YAML loader is given: data[0..size) copied to the heap exactly as
 * long as it is, with no NUL after it (a loader takes a length and must
 * not look past it; ASan sees it if it does), and a zeroed error list.
 * fuzz_load_input_free frees both. */
typedef struct fuzz_load_input {
    char *text;
    ferry_saga_load_errors *errs;
} fuzz_load_input;

static inline fuzz_load_input fuzz_load_input_new(const uint8_t *data, size_t size)
{
    fuzz_load_input in = {malloc(size ? size : 1), calloc(1, sizeof *in.errs)};
    if (!in.text || !in.errs)
        abort();
    if (size)
        memcpy(in.text, data, size);
    return in;
}

static inline void fuzz_load_input_free(fuzz_load_input *in)
{
    free(in->errs);
    free(in->text);
}

/* The promises of a load that returned rc (made: it wrote its out-
 * parameter): FERRY_OK or FERRY_EINVAL and nothing else, the error
 * list's promises, and the out-parameter written exactly on success. */
static inline void fuzz_check_load(ferry_code rc, const ferry_saga_load_errors *errs, bool made)
{
    FUZZ_CHECK(rc == FERRY_OK || rc == FERRY_EINVAL, "returned %s", ferry_code_name(rc));
    fuzz_check_load_errors(rc, errs);
    if (rc != FERRY_OK)
        FUZZ_CHECK(!made, "out written on failure");
    else
        FUZZ_CHECK(made, "success without a result");
}

#endif
