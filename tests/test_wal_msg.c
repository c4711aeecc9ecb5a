/*
 * test_wal_msg.c — reading the replication stream (daemon/relay_wal_msg.c)
 * apart from any server: frames, pgoutput's messages and emit's content,
 * good and hostile. Every refusal names what is wrong; nothing reads past
 * what it was given (ASan would say).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "../daemon/relay_int.h"
#include "../daemon/relay_wal.h"

static const char TOKEN[] = "0123456789abcdef0123456789abcdef";
static const char ID[] = "01a24a4a-a1d7-7203-bdf6-f51ededc77e9";

/* emit's content for these fields (schemas/011_wal.sql). */
static char *content(const char *token, const char *topic, const char *key, const char *agg,
                     const char *type, const char *headers, const char *payload)
{
    return tu_sprintf("1 %s %s 7 1796542734807536 %zu %zu %zu %zu %zu\n%s%s%s%s%s%s", token, ID,
                      strlen(topic), strlen(key), strlen(agg), strlen(type), strlen(headers),
                      topic, key, agg, type, headers, payload);
}

static int parse(const char *c, wal_scratch *s, wal_msg *m, char *why)
{
    return wal_msg_parse(c, strlen(c), TOKEN, 1048576, s, m, why, 256);
}

static void emit_content_reads_back_field_by_field(void **state)
{
    wal_scratch s = {0};
    wal_msg m;
    char why[256];
    /* A key with spaces, a newline and digits: lengths, not separators. */
    char *c = content(TOKEN, "orders", "k 1\n2 3", "Order", "Placed", "{\"h\": \"v\"}",
                      "{\"a\": 1}");
    assert_int_equal(parse(c, &s, &m, why), 0);
    assert_string_equal(m.topic, "orders");
    assert_string_equal(m.key, "k 1\n2 3");
    assert_string_equal(m.aggtype, "Order");
    assert_string_equal(m.type, "Placed");
    assert_string_equal(m.headers, "{\"h\": \"v\"}");
    assert_string_equal(m.payload, "{\"a\": 1}");
    assert_int_equal(m.payload_len, 8);
    assert_int_equal(m.seq, 7);
    assert_true(m.created_us == 1796542734807536LL);
    char idtext[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&m.id, idtext);
    assert_string_equal(idtext, ID);
    free(c);
    /* No headers: "{}". */
    c = content(TOKEN, "t", "k", "", "T", "", "[]");
    assert_int_equal(parse(c, &s, &m, why), 0);
    assert_string_equal(m.headers, "{}");
    assert_string_equal(m.aggtype, "");
    free(c);
    wal_scratch_free(&s);
}

static void hostile_content_is_refused_naming_the_field(void **state)
{
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"", "cut short"},
        {"garbage", "cut short"},
        {"2 x", "cut short"},
        {"2 a b c d e f g h i\n", "version"},
        {"1 0123456789abcdef0123456789abcdee 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 1 0 1 0\n"
         "tkT{}", "token"},
        {"1 0123456789abcdef0123456789abcdef not-a-uuid 1 0 1 1 0 1 0\ntkT{}", "id"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 0 0 1 1 0 1 0\n"
         "tkT{}", "seq"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 -1 0 1 1 0 1 0\n"
         "tkT{}", "seq"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 99 1 0 1 0\n"
         "tkT{}", "need"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 300 1 0 1 0\n"
         "tkT{}", "topic"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 "
         "99999999999999999999 1 0 1 0\ntkT{}", "topic"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 1 0 1 0\n"
         "/kT{}", "Kafka topic"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 0 0 1 0\n"
         "tT{}", "key is empty"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 1 0 1 3\n"
         "tkT[1]{}", "headers"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 2 0 1 0\n"
         "t\xff\xfeT{}", "UTF-8"},
        {"1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 1 0 1 0 "
         "\ntkT{}", "cut short"},
    };
    wal_scratch s = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wal_msg m;
        char why[256] = "";
        /* An exact-size copy, so that ASan sees any read past the end. */
        size_t n = strlen(bad[i].text);
        char *copy = malloc(n ? n : 1);
        memcpy(copy, bad[i].text, n);
        int rc = wal_msg_parse(copy, n, TOKEN, 1048576, &s, &m, why, sizeof why);
        free(copy);
        if (rc == 0 || strstr(why, bad[i].why) == NULL)
            fail_msg("case %zu: want a refusal naming \"%s\", got %d \"%s\"", i, bad[i].why, rc,
                     why);
    }
    /* A NUL inside the fields. */
    char nul[] = "1 0123456789abcdef0123456789abcdef 01a24a4a-a1d7-7203-bdf6-f51ededc77e9 1 0 1 1 "
                 "0 1 0\ntkT{\0}";
    wal_msg m;
    char why[256];
    assert_int_equal(wal_msg_parse(nul, sizeof nul - 1, TOKEN, 1048576, &s, &m, why, sizeof why),
                     -1);
    assert_non_null(strstr(why, "NUL"));
    /* Over the payload limit. */
    char *c = content(TOKEN, "t", "k", "", "T", "", "\"xxxxxxxxxx\"");
    assert_int_equal(wal_msg_parse(c, strlen(c), TOKEN, 5, &s, &m, why, sizeof why), -1);
    assert_non_null(strstr(why, "over the limit"));
    free(c);
    wal_scratch_free(&s);
}

static void frames_and_pgoutput_messages_are_length_checked(void **state)
{
    wal_frame f;
    wal_pgout p;
    char why[256];
    assert_int_equal(wal_frame_parse("", 0, &f, why, sizeof why), -1);
    assert_int_equal(wal_frame_parse("w123", 4, &f, why, sizeof why), -1);
    assert_non_null(strstr(why, "XLogData"));
    assert_int_equal(wal_frame_parse("k1234567", 8, &f, why, sizeof why), -1);
    assert_int_equal(wal_frame_parse("x", 1, &f, why, sizeof why), -1);
    unsigned char k[18] = {'k', 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(wal_frame_parse((char *)k, sizeof k, &f, why, sizeof why), 0);
    assert_int_equal(f.kind, 'k');
    assert_int_equal(f.wal_end, 256);
    assert_int_equal(f.reply, 1);

    assert_int_equal(wal_pgout_parse("B12", 3, &p, why, sizeof why), -1);
    assert_int_equal(wal_pgout_parse("C12", 3, &p, why, sizeof why), -1);
    /* COMMIT ending before it starts. */
    unsigned char c[26] = {'C', 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(wal_pgout_parse((char *)c, sizeof c, &p, why, sizeof why), -1);
    c[17] = 10;
    assert_int_equal(wal_pgout_parse((char *)c, sizeof c, &p, why, sizeof why), 0);
    assert_int_equal(p.end_lsn, 10);
    /* A commit time past what Unix microseconds hold in int64 (found by
     * fuzz_wal: a signed overflow, which UBSan aborts on). */
    c[18] = 0x7f;
    memset(c + 19, 0xff, 7);
    assert_int_equal(wal_pgout_parse((char *)c, sizeof c, &p, why, sizeof why), -1);
    assert_non_null(strstr(why, "out of range"));
    unsigned char b[21] = {'B'};
    b[9] = 0x7f;
    memset(b + 10, 0xff, 7);
    assert_int_equal(wal_pgout_parse((char *)b, sizeof b, &p, why, sizeof why), -1);
    b[9] = 0;
    assert_int_equal(wal_pgout_parse((char *)b, sizeof b, &p, why, sizeof why), 0);
    /* 'M': a prefix without its end; a length that disagrees. */
    unsigned char m1[14] = {'M', 1, 0, 0, 0, 0, 0, 0, 0, 5, 'f', 'e', 'r', 'r'};
    assert_int_equal(wal_pgout_parse((char *)m1, sizeof m1, &p, why, sizeof why), -1);
    assert_non_null(strstr(why, "prefix"));
    unsigned char m2[] = {'M', 1, 0, 0, 0, 0, 0, 0, 0, 5, 'f', 0, 0, 0, 0, 9, 'a', 'b'};
    assert_int_equal(wal_pgout_parse((char *)m2, sizeof m2, &p, why, sizeof why), -1);
    assert_non_null(strstr(why, "content length"));
    m2[15] = 2;
    assert_int_equal(wal_pgout_parse((char *)m2, sizeof m2, &p, why, sizeof why), 0);
    assert_string_equal(p.prefix, "f");
    assert_int_equal(p.content_len, 2);
    assert_int_equal(p.transactional, 1);

    uint64_t lsn;
    char text[32];
    wal_lsn_format(0x16B374D848ULL, text);
    assert_string_equal(text, "16/B374D848");
    assert_int_equal(wal_lsn_parse(text, &lsn), 0);
    assert_true(lsn == 0x16B374D848ULL);
    assert_int_equal(wal_lsn_parse("16/B374D848x", &lsn), -1);
    assert_int_equal(wal_lsn_parse("nope", &lsn), -1);
}

/* One header's value as text, from what relay_headers_of made. */
static const char *hval(rd_kafka_headers_t *h, const char *name, char *buf, size_t size)
{
    const void *v;
    size_t n;
    assert_int_equal(rd_kafka_header_get_last(h, name, &v, &n), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_true(n < size);
    memcpy(buf, v, n);
    buf[n] = '\0';
    return buf;
}

/*
 * The headers both sources publish (relay_headers_of): ce_time is RFC 3339
 * with microseconds for every instant, also one after another within a
 * second and across seconds (the formatting keeps the last second), and
 * before 1970; ferry_seq is the position in decimal.
 */
static void headers_carry_time_and_position_exactly(void **state)
{
    (void)state;
    static relay r;
    snprintf(r.source, sizeof r.source, "ferry://h/db");
    static const struct {
        int64_t us;
        int64_t seq;
        const char *time, *seqtext;
    } cases[] = {
        {INT64_C(1796542734807536), 1, "2026-12-06T07:38:54.807536Z", "1"},
        {INT64_C(1796542734000001), 10, "2026-12-06T07:38:54.000001Z", "10"},
        {INT64_C(1796542735000000), 9223372036854775806, "2026-12-06T07:38:55.000000Z",
         "9223372036854775806"},
        {INT64_C(1796542734999999), 42, "2026-12-06T07:38:54.999999Z", "42"},
        {0, 7, "1970-01-01T00:00:00.000000Z", "7"},
        {-1, 8, "1969-12-31T23:59:59.999999Z", "8"},
        {INT64_C(-1000000), 9, "1969-12-31T23:59:59.000000Z", "9"},
        {INT64_C(951782400123456), 100, "2000-02-29T00:00:00.123456Z", "100"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        relay_row row = {.type = "T", .aggtype = "", .headers = "{}", .seq = cases[i].seq,
                         .created_us = cases[i].us};
        rd_kafka_headers_t *h = relay_headers_of(&r, &row, ID, NULL);
        assert_string_equal(hval(h, "ce_time", buf, sizeof buf), cases[i].time);
        assert_string_equal(hval(h, "ferry_seq", buf, sizeof buf), cases[i].seqtext);
        assert_string_equal(hval(h, "ce_source", buf, sizeof buf), "ferry://h/db");
        rd_kafka_headers_destroy(h);
    }
}

/* Headers "{}" (emit's none) read back as none; anything else is still
 * checked to be a JSON object of strings. */
static void empty_headers_need_no_parse_and_others_are_checked(void **state)
{
    (void)state;
    wal_scratch s = {0};
    wal_msg m;
    char why[256];
    char *c = content(TOKEN, "t", "k", "", "T", "{}", "{}");
    assert_int_equal(parse(c, &s, &m, why), 0);
    assert_string_equal(m.headers, "{}");
    free(c);
    c = content(TOKEN, "t", "k", "", "T", "{ }", "{}");
    assert_int_equal(parse(c, &s, &m, why), 0);
    free(c);
    static const char *const bad[] = {"{]", "[]", "{\"a\":1}", "{}x", "{", "}{"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = content(TOKEN, "t", "k", "", "T", bad[i], "{}");
        assert_int_equal(parse(c, &s, &m, why), -1);
        assert_non_null(strstr(why, "headers"));
        free(c);
    }
    free(s.buf);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(emit_content_reads_back_field_by_field),
        cmocka_unit_test(hostile_content_is_refused_naming_the_field),
        cmocka_unit_test(frames_and_pgoutput_messages_are_length_checked),
        cmocka_unit_test(headers_carry_time_and_position_exactly),
        cmocka_unit_test(empty_headers_need_no_parse_and_others_are_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
