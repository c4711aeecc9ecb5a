/*
 * test_emit_modes.c — checks of emit that must not depend on the mode or
 * on the path (issue 13 item 3):
 *
 *   - the payload limit: the client measures what the server measures,
 *     jsonb's canonical text, so that a payload over the limit only
 *     canonically is refused before anything is sent and the caller's
 *     transaction goes on (before, the server refused it and aborted the
 *     transaction);
 *   - a message id emitted again: refused alike in table and wal mode
 *     while a message with that id waits in the outbox table, and what
 *     neither mode promises beyond that.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tu_wal.h"
#include "../lib/internal.h"

/* ------------------------------------------------------------ canonical size */

/*
 * ferry__json_canonical_len() gives the length of jsonb's text of each
 * payload, PostgreSQL deciding: numbers whose canonical form is longer or
 * shorter than written (exponents, signs of zero, trailing zeros kept as
 * scale), escapes that print shorter, longer or the same, separators and
 * whitespace, UTF-8 of every length.
 */
static void the_client_measures_a_payload_as_jsonb_prints_it(void **state)
{
    static const char *const cases[] = {
        "0", "-0", "-0.0", "0.000", "0e5", "0.0e-3", "-0e-2", "1", "-1", "1.50", "1.5e3",
        "15e-4", "1e-5", "1E+5", "2.5E-3", "100e-5", "123.45e1", "123.45e-1", "-9.9e10",
        "0.00001", "0.5e0", "1e20", "-0.5", "12345678901234567890.123",
        "true", "false", "null", "\"\"", "\"abc\"", "\"a b\"",
        "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u0001\\u001f\\u0008\\u000a\"", "\"\\u0041\"",
        "\"\\u0022\\u005c\"", "\"\\u007f\x7f\"", "\"\\u00e9\\u00E9\xc3\xa9\"",
        "\"\\u20ac\xe2\x82\xac\"", "\"\\ud83d\\ude00\xf0\x9f\x98\x80\"", "\"\\u0800\\uffff\"",
        "[]", "{}", "[ ]", "{ }", "[1,2,3]", "[1, 2, 3]", " [ 1 , 2 ] ",
        "{\"a\":1,\"b\":[true,null,{\"c\":\"d\"}]}", "\t{\r\n\"k\" :\n\"v\" }\n",
        "[[[[]]],{},[{}]]", "{\"z\":1,\"a\":2}", "[1e2,-0,0.10,\"x\"]",
    };
    PGconn *c = tu_connect();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = 0;
        if (!ferry__json_canonical_len(cases[i], strlen(cases[i]), &got))
            fail_msg("case %zu (%s): the client refuses it", i, cases[i]);
        const char *p[1] = {cases[i]};
        PGresult *res = PQexecParams(c, "SELECT octet_length($1::jsonb::text)", 1, NULL, p,
                                     NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            fail_msg("case %zu (%s): %s", i, cases[i], PQresultErrorMessage(res));
        size_t want = strtoul(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        if (got != want)
            fail_msg("case %zu (%s): the client counts %zu bytes, jsonb prints %zu", i,
                     cases[i], got, want);
    }
    /* Duplicate keys are the one place the client counts more than jsonb
     * prints (jsonb keeps the last): it errs on the side of refusing. */
    size_t dup = 0;
    assert_true(ferry__json_canonical_len("{\"a\":1,\"a\":2}", 13, &dup));
    assert_int_equal(dup, strlen("{\"a\": 1, \"a\": 2}"));
    assert_int_equal(tu_int(c, "SELECT octet_length('{\"a\":1,\"a\":2}'::jsonb::text)"),
                     strlen("{\"a\": 2}"));
    PQfinish(c);
}

/*
 * A payload under the limit as written but over it as jsonb prints it
 * (a compact array gains a space after every comma; "1e5" is "100000"):
 * the server refuses it (the relay could not publish it), and now so does
 * the client, before sending, so the caller's transaction goes on. One
 * byte less canonically and both take it. The limit is the caller's
 * (opts) on the client and ferry.settings' on the server; both are set
 * to the same here.
 */
static void a_payload_over_the_limit_only_canonically_is_refused_by_the_client(void **state)
{
    enum { LIMIT = 64 };
    /* [1,1,...,1] of 61 bytes written: 31 ones, 30 commas; canonically 91. */
    char compact[LIMIT];
    size_t n = 0;
    compact[n++] = '[';
    for (int i = 0; i < 31; i++) {
        if (i > 0)
            compact[n++] = ',';
        compact[n++] = '1';
    }
    compact[n++] = ']';
    compact[n] = '\0';
    assert_true(n <= LIMIT);
    const char *const over[] = {compact, "[1e70]", "{\"n\":15e-70}"};

    PGconn *c = tu_connect();
    char *sql = tu_sprintf("UPDATE ferry.settings SET max_payload_bytes = %d", LIMIT);
    tu_exec(c, sql);
    free(sql);
    ferry_emit_opts opts = {.max_payload = LIMIT};
    tu_exec(c, "BEGIN");
    for (size_t i = 0; i < sizeof over / sizeof over[0]; i++) {
        ferry_msg m = {.topic = "t", .key = "k", .type = "T", .payload = over[i]};
        ferry_error err;
        assert_true(strlen(over[i]) <= LIMIT);
        assert_int_equal(ferry_emit(c, &m, &opts, NULL, &err), FERRY_EINVAL);
        assert_string_equal(err.field, "payload");
        assert_non_null(strstr(err.message, "as it will be published"));
        /* Refused before sending: the transaction is as it was. */
        assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
        tu_exec(c, "SELECT 1");
        /* The server agrees, naming the same field. */
        tu_exec(c, "SAVEPOINT s");
        const char *p[1] = {over[i]};
        tu_assert_sql_error_p(c, "SELECT ferry.emit('t', 'k', 'T', $1)", 1, p, "22023", "payload",
                              NULL);
        tu_exec(c, "ROLLBACK TO SAVEPOINT s");
    }
    /* At the limit exactly, canonically: both take it. "[10, 1, ..., 1]"
     * with 20 ones is 64 bytes (44 written). */
    char at[LIMIT];
    n = 0;
    at[n++] = '[';
    at[n++] = '1';
    at[n++] = '0';
    for (int i = 0; i < 20; i++) {
        at[n++] = ',';
        at[n++] = '1';
    }
    at[n++] = ']';
    at[n] = '\0';
    ferry_msg m = {.topic = "t", .key = "k", .type = "T", .payload = at};
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, &opts, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT octet_length(payload::text) FROM ferry.outbox"), LIMIT);
    assert_int_equal(tu_int(c, "SELECT payload_bytes FROM ferry.outbox"), LIMIT);
    tu_exec(c, "UPDATE ferry.settings SET max_payload_bytes = 1048576");
    PQfinish(c);
}

/* --------------------------------------------------------------- message ids */

/* Emit id under key, delayed by delay_ms, with ferry.emit_message in a
 * transaction of its own: the SQLSTATE of the refusal, or NULL if it
 * committed (caller frees). A unique violation must name the outbox's
 * primary key, as table mode's does. */
static char *emit_id(PGconn *c, const char *id, const char *key, const char *delay_ms)
{
    const char *p[3] = {id, key, delay_ms};
    PGresult *res = PQexecParams(c, "SELECT ferry.emit_message(topic => 'ids', key => $2, "
                                    "type => 'T', payload => '{}', delay_ms => $3::bigint, "
                                    "id => $1::uuid)", 3, NULL, p, NULL, NULL, 0);
    char *st = NULL;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        st = strdup(PQresultErrorField(res, PG_DIAG_SQLSTATE));
        const char *cons = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        if (strcmp(st, "23505") == 0)
            assert_string_equal(cons ? cons : "-", "outbox_pkey");
    }
    PQclear(res);
    return st;
}

static void want_refused(char *st, const char *mode, const char *what)
{
    if (st == NULL || strcmp(st, "23505") != 0)
        fail_msg("%s mode, %s: want 23505, got %s", mode, what, st ? st : "a commit");
    free(st);
}

/*
 * A message id is the consumers' dedupe key, so an id emitted again is a
 * mistake the caller should hear of. Table mode refuses it by the
 * outbox's primary key, which holds only while the first message waits
 * in the table: once the relay has published and deleted it, the id is
 * taken again. wal mode now refuses it the same way, with the same
 * error, while a message with that id waits in the table (a delayed one,
 * one of a parked key) — before, a second message under another key
 * went to WAL beside it. A message that went to WAL left no row, and
 * finding its id again would need the very row wal mode exists to avoid,
 * so a second one is written (README, "What is refused": ids are the caller's to
 * keep unique). The test pins all of it down in both modes.
 */
static void an_id_emitted_again_is_refused_alike_in_both_modes_while_one_waits_in_the_table(
    void **state)
{
    PGconn *c = tu_connect();
    tu_wal_prepare(c);
    static const char *const modes[2] = {"table", "wal"};
    static const char *const ids[2] = {"0190a5c0-0000-7000-8000-000000000001",
                                       "0190a5c0-0000-7000-8000-000000000002"};
    for (int mo = 0; mo < 2; mo++) {
        tu_exec(c, "DELETE FROM ferry.outbox");       /* published, as by a relay */
        tu_wal_mode(c, modes[mo]);
        const char *id = ids[mo];
        /* The first waits in the table (delayed, in either mode). */
        assert_null(emit_id(c, id, "k", "600000"));
        /* Again under another key, which has nothing waiting (so in wal
         * mode it would go to WAL): refused. */
        want_refused(emit_id(c, id, "k2", "0"), modes[mo], "another key");
        /* Again under the same key, delayed or not: refused. */
        want_refused(emit_id(c, id, "k", "0"), modes[mo], "same key");
        want_refused(emit_id(c, id, "k", "600000"), modes[mo], "same key, delayed");
        /* Published and deleted, as the relay does: the id is free again. */
        char *sql = tu_sprintf("DELETE FROM ferry.outbox WHERE id = '%s'", id);
        tu_exec(c, sql);
        free(sql);
        assert_null(emit_id(c, id, "k2", "0"));
        /* In table mode a row; in wal mode a logical message. */
        assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox "
                                                 "WHERE id = '%s'", id)), mo == 0 ? 1 : 0);
        assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM tu_wal_msgs() "
                                                 "WHERE id = '%s'", id)), mo == 0 ? 0 : 1);
    }
    /* One more in wal mode is not refused: two messages with one id
     * reach WAL. */
    assert_null(emit_id(c, ids[1], "k2", "0"));
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT count(*) FROM tu_wal_msgs() WHERE id = '%s'",
                                             ids[1])), 2);
    /* The refused ones gave their positions back: k has one committed
     * message per mode, k2 one in table mode and two in wal mode. */
    assert_int_equal(tu_int(c, "SELECT seq FROM ferry.outbox_key WHERE topic = 'ids' "
                               "AND key = 'k'"), 2);
    assert_int_equal(tu_int(c, "SELECT seq FROM ferry.outbox_key WHERE topic = 'ids' "
                               "AND key = 'k2'"), 3);
    tu_wal_mode(c, "table");
    PQfinish(c);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_client_measures_a_payload_as_jsonb_prints_it),
        cmocka_unit_test_setup(
            a_payload_over_the_limit_only_canonically_is_refused_by_the_client,
            tu_clean_outbox),
        cmocka_unit_test_setup(
            an_id_emitted_again_is_refused_alike_in_both_modes_while_one_waits_in_the_table,
            tu_clean_outbox),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
