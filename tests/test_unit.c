/*
 * test_unit.c — the parts that need no server: message ids, UTF-8, the
 * client-side checks, error mapping.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "../lib/internal.h"
#include "../common/lease.h"

static void uuid_v7_layout_and_order(void **state)
{
    enum { N = 20000 };
    static ferry_uuid ids[N];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    for (int i = 0; i < N; i++)
        assert_int_equal(ferry_uuid_v7(&ids[i]), FERRY_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(ids[i].bytes[6] >> 4, 7);        /* version */
        assert_int_equal(ids[i].bytes[8] >> 6, 2);        /* RFC 9562 variant */
        if (i > 0)
            assert_true(memcmp(&ids[i - 1], &ids[i], sizeof ids[i]) < 0);
    }
    /* The timestamp is now (20,000 ids may carry it a few ms ahead). */
    uint64_t ms = ferry_uuid_v7_millis(&ids[0]);
    assert_true(ms + 1000 > now && ms < now + 1000);
}

static void uuid_format_parse_roundtrip(void **state)
{
    ferry_uuid id, back;
    char text[FERRY_UUID_STRING_SIZE];
    assert_int_equal(ferry_uuid_v7(&id), FERRY_OK);
    ferry_uuid_format(&id, text);
    assert_int_equal(strlen(text), 36);
    assert_int_equal(text[14], '7');
    assert_int_equal(ferry_uuid_parse(text, &back), FERRY_OK);
    assert_memory_equal(&id, &back, sizeof id);
    assert_int_equal(ferry_uuid_parse("0189D5F2-3C4B-7A8E-9ABC-DEF012345678", &back), FERRY_OK);
    assert_int_equal(back.bytes[0], 0x01);
    assert_int_equal(back.bytes[15], 0x78);

    static const char *const bad[] = {
        "", "0189d5f2-3c4b-7a8e-9abc-def01234567", "0189d5f2-3c4b-7a8e-9abc-def0123456789",
        "0189d5f2x3c4b-7a8e-9abc-def012345678", "0189d5f2-3c4b-7a8e-9abc-def01234567g",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&back, 0xEE, sizeof back);
        assert_int_equal(ferry_uuid_parse(bad[i], &back), FERRY_EINVAL);
        assert_int_equal(back.bytes[0], 0xEE);          /* untouched on failure */
    }
    assert_int_equal(ferry_uuid_parse(NULL, &back), FERRY_EINVAL);
}

static void *uuid_thread(void *arg)
{
    ferry_uuid *out = arg;
    for (int i = 0; i < 1000; i++)
        ferry_uuid_v7(&out[i]);
    return NULL;
}

static void uuid_unique_across_threads(void **state)
{
    enum { T = 4, N = 1000 };
    static ferry_uuid ids[T][N];
    pthread_t th[T];
    for (int t = 0; t < T; t++)
        pthread_create(&th[t], NULL, uuid_thread, ids[t]);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    /* Each thread's ids increase, and no id appears twice. */
    for (int t = 0; t < T; t++)
        for (int i = 1; i < N; i++)
            assert_true(memcmp(&ids[t][i - 1], &ids[t][i], 16) < 0);
    for (int t = 0; t < T; t++)
        for (int u = t + 1; u < T; u++)
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++)
                    assert_true(memcmp(&ids[t][i], &ids[u][j], 16) != 0);
}

/* Ids from one child: made after the fork, written whole to fd. */
static void uuid_child(int fd, int n)
{
    for (int i = 0; i < n; i++) {
        ferry_uuid id;
        if (ferry_uuid_v7(&id) != FERRY_OK || write(fd, &id, sizeof id) != (ssize_t)sizeof id)
            _exit(1);
    }
    _exit(0);
}

/*
 * Two processes forked from a parent that had made an id: before, both
 * inherited its thread's random pool, millisecond and counter, and made
 * byte-identical ids in the same millisecond (an outside audit: a 23505
 * on ferry.outbox, or a consumer skipping the second as a duplicate).
 * The clock cannot be forced to one millisecond, so the random part (the
 * last 8 bytes) is compared too: it must differ whatever the time.
 */
static void uuid_unique_across_fork(void **state)
{
    enum { C = 2, N = 64 };
    ferry_uuid parent;
    assert_int_equal(ferry_uuid_v7(&parent), FERRY_OK);
    int fds[C][2];
    pid_t pids[C];
    for (int c = 0; c < C; c++) {
        assert_int_equal(pipe(fds[c]), 0);
        pids[c] = fork();
        assert_true(pids[c] >= 0);
        if (pids[c] == 0) {
            close(fds[c][0]);
            uuid_child(fds[c][1], N);
        }
        close(fds[c][1]);
    }
    static ferry_uuid ids[C][N];
    for (int c = 0; c < C; c++) {
        size_t got = 0;
        while (got < sizeof ids[c]) {
            ssize_t r = read(fds[c][0], (char *)ids[c] + got, sizeof ids[c] - got);
            assert_true(r > 0);
            got += (size_t)r;
        }
        close(fds[c][0]);
        int status;
        assert_int_equal(waitpid(pids[c], &status, 0), pids[c]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    for (int i = 0; i < N; i++) {
        assert_true(memcmp(&ids[0][i], &parent, 16) != 0);
        for (int j = 0; j < N; j++) {
            if (memcmp(&ids[0][i], &ids[1][j], 16) == 0)
                fail_msg("children made the same id (%d, %d)", i, j);
            if (memcmp(ids[0][i].bytes + 8, ids[1][j].bytes + 8, 8) == 0)
                fail_msg("children share random bits (%d, %d)", i, j);
        }
    }
}

static void utf8_validation(void **state)
{
    static const struct {
        const char *s;
        int ok;
        size_t bad_at;
    } cases[] = {
        {"plain ascii", 1, 0},
        {"z\xc3\xbcrich", 1, 0},
        {"\xe2\x82\xac", 1, 0},                 /* euro sign */
        {"\xf0\x9f\x9a\xa2", 1, 0},             /* ship */
        {"ab\xff", 0, 2},
        {"\xc0\xaf", 0, 0},                     /* overlong '/' */
        {"\xe0\x80\xaf", 0, 0},                 /* overlong, three bytes */
        {"\xed\xa0\x80", 0, 0},                 /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 0, 0},             /* beyond U+10FFFF */
        {"ok\xe2\x82", 0, 2},                   /* truncated sequence */
        {"\x80", 0, 0},                         /* lone continuation */
        /* Past and across the eight-byte ASCII steps. */
        {"0123456789abcdefg", 1, 0},
        {"01234567\xff", 0, 8},
        {"0123456789abcde\xff", 0, 15},
        {"0123456\xc3\xbc" "89abcdef\xc3", 0, 17},  /* a sequence across a step, one cut */
        {"0123456789abcdef\xed\xa0\x80" "xyz", 0, 16},
        {"\xe2\x82\xac" "0123456789abcdef\xf0\x9f\x9a\xa2", 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t bad = 999;
        bool ok = ferry__utf8_valid(cases[i].s, strlen(cases[i].s), &bad);
        if ((int)ok != cases[i].ok)
            fail_msg("case %zu: want %d", i, cases[i].ok);
        if (!ok)
            assert_int_equal(bad, cases[i].bad_at);
    }
}

static void msg_check_accepts_and_refuses(void **state)
{
    ferry_error err;
    ferry_msg ok = {.topic = "orders.v1_eu-west", .key = "o-1", .type = "Placed",
                    .payload = "[1, \"two\", {\"three\": 3.0e10}, null, true]",
                    .headers = "{\"traceparent\": \"00-abc-def-01\", \"ce_subject\": \"x\"}"};
    assert_int_equal(ferry_msg_check(&ok, NULL, &err), FERRY_OK);

    /* Explicit lengths: the buffers need not end in a NUL there. */
    ferry_msg sliced = ok;
    sliced.key = "o-1TRAILING";
    sliced.key_len = 3;
    sliced.payload = "{}garbage";
    sliced.payload_len = 2;
    assert_int_equal(ferry_msg_check(&sliced, NULL, &err), FERRY_OK);

    /* Deep nesting is refused, not a stack overflow. */
    static char deep[8192];
    memset(deep, '[', sizeof deep - 1);
    ferry_msg nested = ok;
    nested.payload = deep;
    assert_int_equal(ferry_msg_check(&nested, NULL, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "payload");

    /* Numbers are judged as jsonb's numeric judges them (test_emit.c
     * asks PostgreSQL): beyond a double is fine, beyond numeric is not. */
    ferry_msg huge = ok;
    huge.payload = "{\"n\": 1e400}";
    assert_int_equal(ferry_msg_check(&huge, NULL, &err), FERRY_OK);
    huge.payload = "{\"n\":\n 1e-16384}";
    assert_int_equal(ferry_msg_check(&huge, NULL, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "payload");
    assert_string_equal(err.message, "payload has a number PostgreSQL's numeric cannot hold "
                        "(more than 16383 digits after the decimal point) at line 2, column 2: "
                        "\"1e-16384\"");

    /* No limit at all (an outside audit): max + 1 wrapped to 0, and every
     * payload was refused as empty, invalid JSON. */
    ferry_emit_opts unlimited = {.max_payload = SIZE_MAX};
    assert_int_equal(ferry_msg_check(&ok, &unlimited, &err), FERRY_OK);
    assert_int_equal(ferry_msg_check(&sliced, &unlimited, &err), FERRY_OK);
    ferry_msg not_json = ok;
    not_json.payload = "{\"a\": }";
    assert_int_equal(ferry_msg_check(&not_json, &unlimited, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "payload");

    assert_int_equal(ferry_msg_check(NULL, NULL, &err), FERRY_EINVAL);
    /* err may be NULL: the code still comes back. */
    ferry_msg bad = ok;
    bad.topic = "no spaces";
    assert_int_equal(ferry_msg_check(&bad, NULL, NULL), FERRY_EINVAL);
}

/*
 * Reserved header names are judged after the server's FOLD: U+0130 and
 * U+0131 to "i", U+212A (Kelvin) to "k", U+017F (long s) to "s", the
 * ligatures U+FB00..U+FB06 to their letters, then A-Z to a-z, no locale.
 * Before, only ASCII case was folded, and a name the server refuses
 * ("ce_İd") passed the client and aborted the caller's transaction.
 */
static void header_names_reserved_after_folding(void **state)
{
    static const struct {
        const char *name;       /* as JSON text, escapes allowed */
        int reserved;
    } cases[] = {
        {"", 1},
        {"ferry_id", 1},
        {"FERRY_X", 1},
        {"Ferry_", 1},
        {"Ce_Id", 1},
        {"ce_\xc4\xb0" "d", 1},                 /* ce_İd */
        {"CE_\xc4\xb1" "D", 1},                 /* CE_ıD */
        {"ce_\\u0131d", 1},                     /* the same, escaped */
        {"ce_\xc5\xbf" "ource", 1},             /* ce_ſource */
        {"ce_\xc5\xbf" "pecver\xc5\xbf" "ion", 1},
        {"ce_t\xc4\xb0" "me", 1},               /* ce_tİme */
        {"\xc4\xb0" "d", 0},                    /* "id": not reserved */
        {"f\xc4\xb1" "rry_x", 0},               /* "firry_x" */
        {"\xef\xac\x80" "erry_x", 0},           /* ﬀerry_x folds to "fferry_x" */
        {"\xe2\x84\xaa" "ey", 0},               /* Kelvin sign: "key" */
        {"ce_ti\xcc\x87" "me", 0},              /* a combining dot is not folded */
        {"ce_ids", 0},
        {"ce_subject", 0},
        {"xferry_", 0},
        {"ferry", 0},
        {"ce_\xc4\xb0" "dentity", 0},
        {"\xef\xac\x81", 0},                    /* ﬁ */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char headers[128];
        snprintf(headers, sizeof headers, "{\"%s\": \"v\"}", cases[i].name);
        ferry_msg m = {.topic = "t", .key = "k", .type = "T", .payload = "{}",
                       .headers = headers};
        ferry_error err = {0};
        ferry_code rc = ferry_msg_check(&m, NULL, &err);
        if (rc != (cases[i].reserved ? FERRY_EINVAL : FERRY_OK))
            fail_msg("case %zu (%s): want %s, got %s: %s", i, cases[i].name,
                     cases[i].reserved ? "reserved" : "allowed", ferry_code_name(rc),
                     err.message);
        if (cases[i].reserved) {
            assert_string_equal(err.field, "headers");
            assert_non_null(strstr(err.message, "empty or reserved"));
        }
    }
}

/* No control character (C0, DEL, C1) and nothing that is not UTF-8. */
static void assert_printable(const char *s, const char *what)
{
    size_t bad;
    if (!ferry__utf8_valid(s, strlen(s), &bad))
        fail_msg("%s: not UTF-8 at %zu: %s", what, bad, s);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
            fail_msg("%s: control character at %zu", what, (size_t)(p - (const unsigned char *)s));
}

/* Messages that quote input escape its control characters and its bytes
 * that are not UTF-8: they end up on terminals and in logs. */
static void error_messages_escape_what_they_quote(void **state)
{
    static const struct {
        ferry_msg m;
        const char *field, *quoted;
    } cases[] = {
        {{.topic = "a\x1b[2Jb", .key = "k", .type = "T", .payload = "{}"}, "topic",
         "\"a\\x1b[2Jb\""},
        {{.topic = "a\xc2\x9b" "2J", .key = "k", .type = "T", .payload = "{}"}, "topic",
         "\"a\\xc2\\x9b2J\""},
        {{.topic = "a\xff\xfe", .key = "k", .type = "T", .payload = "{}"}, "topic",
         "\"a\\xff\\xfe\""},
        {{.topic = "t", .key = "k", .type = "T", .payload = "{}",
          .headers = "{\"\\u001b]0;pwn\\u0007\": 1}"}, "headers", "\"\\x1b]0;pwn\\x07\""},
        {{.topic = "t", .key = "k", .type = "T", .payload = "{}",
          .headers = "{\"ferry_\\u001b[5m\": \"x\"}"}, "headers", "\"ferry_\\x1b[5m\""},
        {{.topic = "t", .key = "k", .type = "T", .payload = "[1, \x1b[31m]"}, "payload",
         "line 1, column 5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ferry_error err;
        assert_int_equal(ferry_msg_check(&cases[i].m, NULL, &err), FERRY_EINVAL);
        assert_string_equal(err.field, cases[i].field);
        assert_printable(err.message, cases[i].field);
        if (strstr(err.message, cases[i].quoted) == NULL)
            fail_msg("case %zu: \"%s\" does not quote %s", i, err.message, cases[i].quoted);
    }
    /* A server's message is escaped as well: it may quote the input. */
    ferry_error err;
    ferry__error_set(&err, FERRY_EINVAL, "x", "value \"%s\" refused", "\x1b[2J\x9b");
    assert_string_equal(err.message, "value \"\\x1b[2J\\x9b\" refused");
}

static void error_mapping(void **state)
{
    ferry_error err;
    assert_int_equal(ferry_error_from_pg(&err, NULL, NULL, "could not frobnicate"), FERRY_ECONN);
    assert_int_equal(err.retriable, 1);
    assert_non_null(strstr(err.message, "could not frobnicate: "));
    assert_string_equal(ferry_code_name(FERRY_ECOMMIT_UNKNOWN), "FERRY_ECOMMIT_UNKNOWN");
    assert_true(ferry__sqlstate_is_conflict("40001"));
    assert_true(ferry__sqlstate_is_conflict("40P01"));
    assert_false(ferry__sqlstate_is_conflict("23505"));
    assert_string_equal(ferry_version(), FERRY_VERSION_STRING);
}

/* The strict integers of config files and saga definitions. */
static void strict_integers(void **state)
{
    long v = 99;
    assert_int_equal(ferry__parse_long("0", 0, 10, &v), FERRY_INT_OK);
    assert_int_equal(v, 0);
    assert_int_equal(ferry__parse_long("-7", -10, 10, &v), FERRY_INT_OK);
    assert_int_equal(v, -7);
    assert_int_equal(ferry__parse_long("9223372036854775807", 0, LONG_MAX, &v), FERRY_INT_OK);
    assert_true(v == LONG_MAX);
    v = 99;
    static const char *const syntax[] = {"", "-", "007", "1x", " 1", "1 ", "+1", "1.0", "0x10"};
    for (size_t i = 0; i < sizeof syntax / sizeof syntax[0]; i++)
        assert_int_equal(ferry__parse_long(syntax[i], -100, 100, &v), FERRY_INT_SYNTAX);
    assert_int_equal(ferry__parse_long("9223372036854775808", 0, LONG_MAX, &v), FERRY_INT_RANGE);
    assert_int_equal(ferry__parse_long("11", 0, 10, &v), FERRY_INT_RANGE);
    assert_int_equal(ferry__parse_long("-1", 0, 10, &v), FERRY_INT_RANGE);
    assert_int_equal(v, 99);        /* untouched on failure */
}

/* A session's name is cut to the 63 bytes the server keeps, before a
 * character, never inside one (the server refuses invalid UTF-8). */
static void application_names_are_cut_before_a_character(void **state)
{
    (void)state;
    char name[64], holder[80];
    /* "ferry-relay " and 50 bytes, then a 2-byte character at bytes 62-63. */
    memset(holder, 'a', 50);
    strcpy(holder + 50, "\xc3\xa9tail");
    ferry__application_name(name, "ferry-relay", holder);
    assert_int_equal(strlen(name), 62);
    assert_true(ferry__utf8_valid(name, strlen(name), NULL));
    /* Short names are whole. */
    ferry__application_name(name, "ferry-relay", "h\xc3\xa9");
    assert_string_equal(name, "ferry-relay h\xc3\xa9");
    /* Exactly 63 bytes stay whole. */
    memset(holder, 'b', 51);
    holder[51] = '\0';
    ferry__application_name(name, "ferry-relay", holder);
    assert_int_equal(strlen(name), 63);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uuid_v7_layout_and_order),
        cmocka_unit_test(uuid_format_parse_roundtrip),
        cmocka_unit_test(uuid_unique_across_threads),
        cmocka_unit_test(uuid_unique_across_fork),
        cmocka_unit_test(utf8_validation),
        cmocka_unit_test(msg_check_accepts_and_refuses),
        cmocka_unit_test(header_names_reserved_after_folding),
        cmocka_unit_test(error_messages_escape_what_they_quote),
        cmocka_unit_test(error_mapping),
        cmocka_unit_test(strict_integers),
        cmocka_unit_test(application_names_are_cut_before_a_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
