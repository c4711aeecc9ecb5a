/*
 * test_emit.c — the emit path against a real PostgreSQL: what commits is
 * there, what rolls back is not, batches, concurrent writers, every kind
 * of bad input through both the C and the SQL path, and the roles.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static ferry_msg msg(const char *topic, const char *key, const char *payload)
{
    return (ferry_msg){.topic = topic, .key = key, .type = "Tested", .payload = payload};
}

static void emit_commit_is_visible(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg m = msg("orders", "order-1", "{\"total\": 42, \"items\": [1, 2]}");
    m.aggregate_type = "Order";
    m.headers = "{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}";
    ferry_error err;
    ferry_uuid id;
    assert_ferry_ok(ferry_emit(c, &m, NULL, &id, &err), err);
    tu_exec(c, "COMMIT");

    char text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&id, text);
    PGconn *other = tu_connect();
    tu_assert_str_of(other,
                     tu_sprintf("SELECT topic || '|' || aggregateid || '|' || aggregatetype || "
                                "'|' || type || '|' || (payload->>'total') || '|' || seq || '|' "
                                "|| (headers->>'traceparent') || '|' || (shard BETWEEN 0 AND 15) "
                                "FROM ferry.outbox WHERE id = '%s'", text),
                     "orders|order-1|Order|Tested|42|1|"
                     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01|true");
    /* The id is a version 7 UUID made now. */
    assert_int_equal(id.bytes[6] >> 4, 7);
    assert_int_equal(id.bytes[8] >> 6, 2);
    PQfinish(other);
    PQfinish(c);
}

static void emit_rollback_leaves_nothing(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg m = msg("orders", "order-2", "{}");
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "ROLLBACK");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    /* The position rolled back too: the next message of the key is 1. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox_key"), 0);
    tu_exec(c, "BEGIN");
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT seq FROM ferry.outbox"), 1);
    PQfinish(c);
}

static void emit_needs_open_transaction(void **state)
{
    PGconn *c = tu_connect();
    ferry_msg m = msg("orders", "k", "{}");
    ferry_error err;
    assert_int_equal(ferry_emit(c, &m, NULL, NULL, &err), FERRY_ESTATE);
    assert_int_equal(ferry_emit_batch(c, &m, 1, NULL, NULL, &err), FERRY_ESTATE);
    /* An aborted transaction is refused without another round trip. */
    tu_exec(c, "BEGIN");
    PQclear(PQexec(c, "SELECT 1/0"));
    assert_int_equal(ferry_emit(c, &m, NULL, NULL, &err), FERRY_ESTATE);
    tu_exec(c, "ROLLBACK");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
}

static void batch_of_10000(void **state)
{
    enum { N = 10000, KEYS = 100 };
    ferry_msg *msgs = calloc(N, sizeof *msgs);
    ferry_uuid *ids = calloc(N, sizeof *ids);
    char (*keys)[16] = calloc(KEYS, sizeof *keys);
    char (*payloads)[48] = calloc(N, sizeof *payloads);
    for (int k = 0; k < KEYS; k++)
        snprintf(keys[k], sizeof keys[k], "acct-%d", k);
    for (int i = 0; i < N; i++) {
        snprintf(payloads[i], sizeof payloads[i], "{\"i\": %d}", i);
        msgs[i] = msg("accounts", keys[i % KEYS], payloads[i]);
    }
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_error err;
    assert_ferry_ok(ferry_emit_batch(c, msgs, N, NULL, ids, &err), err);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    tu_exec(c, "COMMIT");

    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), N);
    /* Within each key, positions 1..100 follow array order. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox "
                               "WHERE seq <> (payload->>'i')::int / 100 + 1"), 0);
    assert_int_equal(tu_int(c, "SELECT count(DISTINCT aggregateid) FROM ferry.outbox "
                               "WHERE seq = 100"), KEYS);
    /* The ids handed back are the rows' ids, and they increase. */
    for (int i = 1; i < N; i++)
        assert_true(memcmp(&ids[i - 1], &ids[i], sizeof ids[i]) < 0);
    char text[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&ids[N - 1], text);
    char *sql = tu_sprintf("SELECT (payload->>'i')::int FROM ferry.outbox WHERE id = '%s'", text);
    assert_int_equal(tu_int(c, sql), N - 1);
    free(sql);
    PQfinish(c);
    free(payloads);
    free(keys);
    free(ids);
    free(msgs);
}

static void batch_refused_whole(void **state)
{
    ferry_msg msgs[3] = {msg("t", "a", "{}"), msg("t", "b", "{not json"), msg("t", "c", "{}")};
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_error err;
    assert_int_equal(ferry_emit_batch(c, msgs, 3, NULL, NULL, &err), FERRY_EINVAL);
    assert_int_equal(err.index, 1);
    assert_string_equal(err.field, "payload");
    assert_non_null(strstr(err.message, "message 1"));
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    assert_int_equal(ferry_emit_batch(c, msgs, 0, NULL, NULL, &err), FERRY_EINVAL);
    PQfinish(c);
}

/* A batch that the server refuses part way (its payload limit is lower
 * than the client's) fails as a whole and leaves the connection usable
 * once the caller rolls back. */
static void batch_server_refusal_mid_pipeline(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "UPDATE ferry.settings SET max_payload_bytes = 20");
    ferry_msg msgs[3] = {msg("t", "a", "{}"), msg("t", "b", "{\"x\": \"0123456789012345\"}"),
                         msg("t", "c", "{}")};
    tu_exec(c, "BEGIN");
    ferry_error err;
    ferry_code rc = ferry_emit_batch(c, msgs, 3, NULL, NULL, &err);
    assert_int_equal(rc, FERRY_EINVAL);
    assert_int_equal(err.index, 1);
    assert_string_equal(err.field, "payload");
    assert_string_equal(err.sqlstate, "22023");
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    tu_exec(c, "ROLLBACK");
    tu_exec(c, "UPDATE ferry.settings SET max_payload_bytes = 1048576");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
}

/* ---------------------------------------------------------------- writers */

enum { WRITERS = 8, TXNS = 60, SHARED_KEYS = 5 };

typedef struct writer {
    int n;
    int emitted;
    int retries;
    ferry_code rc;
    ferry_error err;
} writer;

typedef struct writer_tx {
    writer *w;
    int t;
} writer_tx;

/*
 * Each transaction emits to 1-3 of the shared keys, in a scrambled key
 * order. Even writers emit one by one in ascending key order, as a careful
 * service would; odd writers hand the scrambled order to ferry_emit_batch(),
 * which takes the key locks in (topic, key) order itself. Both orders
 * agree, so no two writers ever deadlock on the key locks.
 */
static ferry_code writer_fn(PGconn *conn, void *arg, ferry_error *err)
{
    writer_tx *x = arg;
    enum { MAX = 3 };
    char keys[MAX][16], payloads[MAX][64];
    ferry_msg m[MAX];
    int count = 1 + (x->w->n + x->t) % MAX;
    for (int i = 0; i < count; i++) {
        /* Steps of 2 modulo 5: distinct keys, often descending. */
        int k = (x->t * 7 + x->w->n + 2 * i) % SHARED_KEYS;
        snprintf(keys[i], sizeof keys[i], "shared-%d", k);
        snprintf(payloads[i], sizeof payloads[i], "{\"writer\": %d, \"t\": %d}", x->w->n,
                 x->t);
        m[i] = msg("shared", keys[i], payloads[i]);
    }
    ferry_code rc = FERRY_OK;
    if (x->w->n % 2 == 1) {
        rc = ferry_emit_batch(conn, m, (size_t)count, NULL, NULL, err);
    } else {
        for (int done = 0; done < count && rc == FERRY_OK; done++) {
            int lo = -1;                      /* the smallest key not yet sent */
            for (int i = 0; i < count; i++)
                if (m[i].key != NULL && (lo < 0 || strcmp(m[i].key, m[lo].key) < 0))
                    lo = i;
            rc = ferry_emit(conn, &m[lo], NULL, NULL, err);
            m[lo].key = NULL;
        }
    }
    if (rc == FERRY_OK)
        x->w->emitted += count;
    return rc;
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    PGconn *c = fpg_connect(tu_pg);
    if (c == NULL) {
        w->rc = FERRY_ECONN;
        return NULL;
    }
    for (int t = 0; t < TXNS && w->rc == FERRY_OK; t++) {
        writer_tx x = {w, t};
        int before = w->emitted;
        ferry_tx_report rep;
        w->rc = ferry_tx_run(c, NULL, writer_fn, &x, &rep, &w->err);
        w->retries += rep.retries_conflict;
        if (w->rc != FERRY_OK)
            w->emitted = before;
    }
    PQfinish(c);
    return NULL;
}

static void concurrent_writers(void **state)
{
    pthread_t th[WRITERS];
    writer w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (writer){.n = i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    int total = 0, deadlocks = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        assert_ferry_ok(w[i].rc, w[i].err);
        total += w[i].emitted;
        deadlocks += w[i].retries;
    }
    assert_int_equal(deadlocks, 0);
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), total);
    /* Each key's positions are exactly 1..n: no gap, no duplicate. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT aggregateid, count(*) n, "
                               "max(seq) m, count(DISTINCT seq) d FROM ferry.outbox "
                               "GROUP BY aggregateid) s WHERE n <> m OR n <> d"), 0);
    /* A writer's own messages of a key keep the order it committed them in. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM (SELECT payload, seq, lag(payload) OVER "
                               "(PARTITION BY aggregateid, payload->'writer' ORDER BY seq) p "
                               "FROM ferry.outbox) s WHERE p IS NOT NULL AND "
                               "(p->>'t')::int >= (payload->>'t')::int"), 0);
    PQfinish(c);
}

/* ---------------------------------------------------------------- bad input */

typedef struct bad_case {
    const char *name;
    ferry_msg m;
    const char *field;          /* expected err.field */
    int sql;                    /* 1: also send it through ferry.emit() */
} bad_case;

static char long_topic[FERRY_TOPIC_MAX + 2];
static char long_key[FERRY_KEY_MAX + 2];
static char long_type[FERRY_TYPE_MAX + 2];
static char *big_payload;

static void fill_long_strings(void)
{
    memset(long_topic, 'a', sizeof long_topic - 1);
    memset(long_key, 'k', sizeof long_key - 1);
    memset(long_type, 't', sizeof long_type - 1);
    size_t n = FERRY_DEFAULT_MAX_PAYLOAD + 1;
    big_payload = malloc(n + 1);
    big_payload[0] = '"';
    memset(big_payload + 1, 'x', n - 2);
    big_payload[n - 1] = '"';
    big_payload[n] = '\0';
}

#define OK_MSG .topic = "t", .key = "k", .type = "T", .payload = "{}"

static const bad_case bad_cases[] = {
    {"null topic", {.key = "k", .type = "T", .payload = "{}"}, "topic", 1},
    {"empty topic", {.topic = "", .key = "k", .type = "T", .payload = "{}"}, "topic", 1},
    {"topic with space", {.topic = "my topic", .key = "k", .type = "T", .payload = "{}"},
     "topic", 1},
    {"topic with slash", {.topic = "a/b", .key = "k", .type = "T", .payload = "{}"}, "topic", 1},
    {"topic injection", {.topic = "t'; DROP TABLE ferry.outbox; --", .key = "k", .type = "T",
                         .payload = "{}"}, "topic", 1},
    {"topic dot", {.topic = ".", .key = "k", .type = "T", .payload = "{}"}, "topic", 1},
    {"topic dotdot", {.topic = "..", .key = "k", .type = "T", .payload = "{}"}, "topic", 1},
    {"topic non-ascii", {.topic = "z\xc3\xbcrich", .key = "k", .type = "T", .payload = "{}"},
     "topic", 1},
    {"topic too long", {.topic = long_topic, .key = "k", .type = "T", .payload = "{}"},
     "topic", 1},
    {"null key", {.topic = "t", .type = "T", .payload = "{}"}, "key", 1},
    {"empty key", {.topic = "t", .key = "", .type = "T", .payload = "{}"}, "key", 1},
    {"key too long", {.topic = "t", .key = long_key, .type = "T", .payload = "{}"}, "key", 1},
    {"key with NUL", {.topic = "t", .key = "ab\0cd", .key_len = 5, .type = "T",
                      .payload = "{}"}, "key", 0},
    {"key not UTF-8", {.topic = "t", .key = "ab\xff", .type = "T", .payload = "{}"}, "key", 0},
    {"key overlong UTF-8", {.topic = "t", .key = "\xc0\xaf", .type = "T", .payload = "{}"},
     "key", 0},
    {"null type", {.topic = "t", .key = "k", .payload = "{}"}, "type", 1},
    {"empty type", {.topic = "t", .key = "k", .type = "", .payload = "{}"}, "type", 1},
    {"type too long", {.topic = "t", .key = "k", .type = long_type, .payload = "{}"}, "type", 1},
    {"aggregate type too long", {OK_MSG, .aggregate_type = long_type}, "aggregatetype", 0},
    {"null payload", {.topic = "t", .key = "k", .type = "T"}, "payload", 1},
    {"payload not JSON", {.topic = "t", .key = "k", .type = "T", .payload = "not json"},
     "payload", 1},
    {"payload truncated", {.topic = "t", .key = "k", .type = "T", .payload = "{\"a\": "},
     "payload", 1},
    {"payload trailing garbage", {.topic = "t", .key = "k", .type = "T", .payload = "{} x"},
     "payload", 1},
    {"payload NUL escape", {.topic = "t", .key = "k", .type = "T", .payload = "\"a\\u0000b\""},
     "payload", 1},
    {"payload NUL byte", {.topic = "t", .key = "k", .type = "T", .payload = "{}\0{}",
                          .payload_len = 5}, "payload", 0},
    {"payload too big", {.topic = "t", .key = "k", .type = "T"}, "payload", 1},
    {"headers array", {OK_MSG, .headers = "[\"a\"]"}, "headers", 1},
    {"headers number value", {OK_MSG, .headers = "{\"a\": 1}"}, "headers", 1},
    {"headers not JSON", {OK_MSG, .headers = "{a: b}"}, "headers", 1},
    {"headers reserved ferry_", {OK_MSG, .headers = "{\"ferry_id\": \"x\"}"}, "headers", 1},
    {"headers reserved ce_id", {OK_MSG, .headers = "{\"ce_id\": \"x\"}"}, "headers", 1},
    /* In any case (schema 30): before, both paths took these. */
    {"headers reserved FERRY_ID", {OK_MSG, .headers = "{\"FERRY_ID\": \"x\"}"}, "headers", 1},
    {"headers reserved Ce_Id", {OK_MSG, .headers = "{\"Ce_Id\": \"x\"}"}, "headers", 1},
    {"headers empty name", {OK_MSG, .headers = "{\"\": \"x\"}"}, "headers", 1},
    {"negative delay", {OK_MSG, .delay_ms = -1}, "delay_ms", 0},
};

/* Send the case through ferry.emit() inside a savepoint; return the
 * error's SQLSTATE and COLUMN. */
static void sql_emit_refused(PGconn *c, const bad_case *bc)
{
    tu_exec(c, "SAVEPOINT s");
    const char *params[5] = {bc->m.topic, bc->m.key, bc->m.type,
                             bc->m.payload == NULL && strcmp(bc->name, "payload too big") == 0
                                 ? big_payload : bc->m.payload,
                             bc->m.headers ? bc->m.headers : "{}"};
    /* Untyped parameters, as any client library would send them. */
    PGresult *res = PQexecParams(c, "SELECT ferry.emit($1, $2, $3, $4, $5)", 5, NULL, params,
                                 NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        fail_msg("SQL path accepted bad case \"%s\"", bc->name);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *column = PQresultErrorField(res, PG_DIAG_COLUMN_NAME);
    if (state == NULL || strcmp(state, "22023") != 0 || column == NULL ||
        strcmp(column, bc->field) != 0)
        fail_msg("SQL path, case \"%s\": want 22023 on %s, got %s on %s: %s", bc->name,
                 bc->field, state ? state : "-", column ? column : "-",
                 PQresultErrorMessage(res));
    PQclear(res);
    tu_exec(c, "ROLLBACK TO SAVEPOINT s");
}

static void bad_input_refused_naming_field(void **state)
{
    fill_long_strings();
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    tu_exec(c, "CREATE TEMP TABLE witness (x int)");
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *bc = &bad_cases[i];
        ferry_msg m = bc->m;
        if (strcmp(bc->name, "payload too big") == 0)
            m.payload = big_payload;
        ferry_error err;
        ferry_uuid id = {{0xAB}};
        ferry_code rc = ferry_emit(c, &m, NULL, &id, &err);
        if (rc != FERRY_EINVAL || strcmp(err.field, bc->field) != 0)
            fail_msg("case \"%s\": want FERRY_EINVAL on %s, got %s on \"%s\": %s", bc->name,
                     bc->field, ferry_code_name(rc), err.field, err.message);
        assert_true(strlen(err.message) > 0);
        assert_int_equal(id.bytes[0], 0xAB);             /* out-param untouched */
        ferry_msg batch[2] = {msg("t", "k", "{}"), m};
        rc = ferry_emit_batch(c, batch, 2, NULL, NULL, &err);
        assert_int_equal(rc, FERRY_EINVAL);
        assert_int_equal(err.index, 1);
        assert_string_equal(err.field, bc->field);
        /* The caller's transaction is still usable. */
        assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
        tu_exec(c, "INSERT INTO witness VALUES (1)");
        if (bc->sql)
            sql_emit_refused(c, bc);
    }
    assert_int_equal(tu_int(c, "SELECT count(*) FROM witness"),
                     (long long)(sizeof bad_cases / sizeof bad_cases[0]));
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox_key"), 0);
    PQfinish(c);
    free(big_payload);
}

/* ------------------------------------------------------------ jsonb as the oracle */

/* text repeated: head, n times fill, tail (new). */
static char *repeated(const char *head, const char *fill, size_t n, const char *tail)
{
    size_t hl = strlen(head), fl = strlen(fill), tl = strlen(tail);
    char *s = malloc(hl + fl * n + tl + 1);
    assert_non_null(s);
    memcpy(s, head, hl);
    for (size_t i = 0; i < n; i++)
        memcpy(s + hl + i * fl, fill, fl);
    memcpy(s + hl + fl * n, tail, tl + 1);
    return s;
}

/* Does PostgreSQL's jsonb take text? In a savepoint of c's transaction. */
static bool jsonb_accepts(PGconn *c, const char *text)
{
    tu_exec(c, "SAVEPOINT oracle");
    const char *p[1] = {text};
    PGresult *res = PQexecParams(c, "SELECT $1::jsonb IS NOT NULL", 1, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok) {
        /* A data error, nothing else (not a lost connection). */
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state == NULL || strncmp(state, "22", 2) != 0)
            fail_msg("jsonb oracle: %s", PQresultErrorMessage(res));
    }
    PQclear(res);
    tu_exec(c, "ROLLBACK TO SAVEPOINT oracle");
    return ok;
}

/*
 * The client-side check refuses exactly the payloads jsonb refuses, so a
 * refusal never aborts the caller's transaction (22003 from the server
 * did: issue 12 item 5). PostgreSQL itself decides each case: tricky
 * numbers at and past numeric's limits (16,383 digits after the point,
 * weight 32,767 in base 10,000, exponents of INT_MAX/2), JSON's grammar,
 * strings and escapes. Each refused one is also sent through the SQL
 * ferry.emit(), which must refuse it with a clean data error.
 */
static void payload_check_agrees_with_jsonb(void **state)
{
    char *gen[8];
    size_t ng = 0;
    gen[ng++] = repeated("0.", "0", 16383, "");              /* 16,383 after the point */
    gen[ng++] = repeated("0.", "0", 16384, "");
    gen[ng++] = repeated("0.", "0", 16382, "1");
    gen[ng++] = repeated("-0.", "0", 16383, "1");
    gen[ng++] = repeated("1", "0", 131071, "");             /* 10^131071 */
    gen[ng++] = repeated("9", "9", 131071, ".5");            /* just under 10^131072 */
    gen[ng++] = repeated("1", "0", 131072, "");
    gen[ng++] = repeated("[", "1,", 1000, "1e-16384]");
    const char *const fixed[] = {
        /* numbers near numeric's limits */
        "0", "-0", "1e131071", "1e131072", "9.9e131071", "-9.9e131071", "0.00001e131076",
        "0.0001e131076", "10e131070", "100e131070", "1e-16383", "1e-16384", "-1e-16383",
        "1.5e-16383", "0.0e-16383", "0e-16383", "0e-16384", "-0e-16384", "1e-16382",
        "15e-16384", "10e-16384", "0e1073741822", "0e1073741823", "0e-1073741822",
        "0e-1073741823", "1e1073741823", "0E+1073741822", "1e0000000000000000000000005",
        "1e99999999999999999999", "0e99999999999999999999", "1e-99999999999999999999",
        "1e400", "-1e-400", "1e-400", "1e308", "123456789012345678901234567890",
        "-123456789012345678901234567890.123456789", "0.1", "1E+5", "1e-5", "2.5E-3",
        "{\"n\": 1e-16384}", "[0e1073741823]", "{\"a\": [1, {\"b\": 1e131072}]}",
        /* JSON's number grammar, as PostgreSQL's lexer reads it */
        "01", "-01", "00", "1.", ".5", "-", "+1", "1e", "1e+", "1e-", "0x10", "NaN",
        "Infinity", "-Infinity", "1.5.3", "1x", "1e5x", "- 1", "--1", "1_000", "1.e5",
        "-.5", "1ee5", "1e5.5",
        /* the rest of the grammar */
        "\"\\u0000\"", "\"a\\u0000b\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\udc00\"",
        "\"\\ud800x\"", "\"\\ud800\\u0041\"", "\"\\uDBFF\\uDFFF\"", "\"\\u00e9\"",
        "\"\\u00E9\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\x\"", "\"\\'\"", "\"\\/\"",
        "\"a\tb\"", "\"a\x7f" "b\"", "\"\xc3\xa9\"", "\"\\b\\f\\n\\r\\t\\\"\\\\\"",
        "\"unterminated", "\"", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":}",
        "{1: 2}", "{\"a\":1,\"a\":2}", "{'a': 1}", "[]", "{}", "[[[]]]", "[1 2]", "1 2",
        "tru", "true", "truex", "True", "null", "nul", "false", " 1 ", "\t\r\n1\n",
        "\f1", "\v1", "", " ", "[", "]", "{", "}", "{\"a\":[1,2,{\"b\":null}],\"c\":\"d\"}",
        "[1]]", "{}}", "\"a\"\"b\"", "[true false]", "/* c */ 1", "1 // c",
    };
    size_t total = ng + sizeof fixed / sizeof fixed[0];
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    size_t refused = 0;
    for (size_t i = 0; i < total; i++) {
        const char *text = i < ng ? gen[i] : fixed[i - ng];
        bool pg = jsonb_accepts(c, text);
        ferry_msg m = msg("t", "k", text);
        ferry_error err;
        ferry_code rc = ferry_msg_check(&m, NULL, &err);
        if ((rc == FERRY_OK) != pg)
            fail_msg("payload \"%.60s\" (%zu bytes): jsonb %s it, ferry_msg_check %s it%s%s",
                     text, strlen(text), pg ? "takes" : "refuses", rc == FERRY_OK ? "takes"
                     : "refuses", rc == FERRY_OK ? "" : ": ", rc == FERRY_OK ? "" : err.message);
        if (pg)
            continue;
        refused++;
        /* ferry_emit refuses it before sending: the transaction goes on. */
        assert_int_equal(ferry_emit(c, &m, NULL, NULL, &err), FERRY_EINVAL);
        assert_string_equal(err.field, "payload");
        assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
        tu_exec(c, "SELECT 1");
        /* The SQL path: a clean data error, the connection still usable. */
        tu_exec(c, "SAVEPOINT sql");
        const char *p[1] = {text};
        PGresult *res = PQexecParams(c, "SELECT ferry.emit('t', 'k', 'T', $1)", 1, NULL, p,
                                     NULL, NULL, 0);
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (PQresultStatus(res) != PGRES_FATAL_ERROR || st == NULL ||
            strncmp(st, "22", 2) != 0)
            fail_msg("SQL ferry.emit(\"%.60s\"): want a data error (class 22), got %s %s: %s",
                     text, PQresStatus(PQresultStatus(res)), st ? st : "-",
                     PQresultErrorMessage(res));
        PQclear(res);
        tu_exec(c, "ROLLBACK TO SAVEPOINT sql");
    }
    tu_exec(c, "COMMIT");
    assert_true(refused > 40);            /* the table does test refusals */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 0);
    PQfinish(c);
    for (size_t i = 0; i < ng; i++)
        free(gen[i]);
}

/* Limits are inclusive: the largest allowed values are accepted. */
static void limits_inclusive(void **state)
{
    fill_long_strings();
    long_topic[FERRY_TOPIC_MAX] = '\0';
    long_key[FERRY_KEY_MAX] = '\0';
    long_type[FERRY_TYPE_MAX] = '\0';
    big_payload[FERRY_DEFAULT_MAX_PAYLOAD - 1] = '"';
    big_payload[FERRY_DEFAULT_MAX_PAYLOAD] = '\0';
    ferry_msg m = {.topic = long_topic, .key = long_key, .type = long_type,
                   .aggregate_type = long_type, .payload = big_payload};
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT octet_length(payload #>> '{}') + 2 FROM ferry.outbox"),
                     FERRY_DEFAULT_MAX_PAYLOAD);
    /* The limit is on what will be published: jsonb's canonical text. A
     * compact array under the limit as written, whose canonical text
     * ("[1, 1, ...]") is half as long again, is refused by the client,
     * which measures the canonical text as the server does (issue 13;
     * before, it passed the client and the server's refusal aborted the
     * transaction), and by the server, naming the field: the relay could
     * not have published it (issue 11). */
    size_t n = FERRY_DEFAULT_MAX_PAYLOAD - 1;
    char *compact = malloc(n + 1);
    compact[0] = '[';
    for (size_t i = 1; i < n - 1; i += 2) {
        compact[i] = '1';
        compact[i + 1] = ',';
    }
    compact[n - 2] = '1';
    compact[n - 1] = ']';
    compact[n] = '\0';
    ferry_msg arr = msg("t", "compact", compact);
    tu_exec(c, "BEGIN");
    assert_int_equal(ferry_msg_check(&arr, NULL, &err), FERRY_EINVAL);
    assert_int_equal(ferry_emit(c, &arr, NULL, NULL, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "payload");
    assert_non_null(strstr(err.message, "as it will be published"));
    assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
    const char *p[1] = {compact};
    tu_assert_sql_error_p(c, "SELECT ferry.emit('t', 'compact', 'T', $1)", 1, p, "22023",
                          "payload", "as it will be published");
    tu_exec(c, "ROLLBACK");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE aggregateid = 'compact'"),
                     0);
    free(compact);

    /* A caller may set a lower limit of its own. */
    ferry_emit_opts opts = {.max_payload = 10};
    ferry_msg small = msg("t", "k", "{\"abc\": 12345}");
    assert_int_equal(ferry_msg_check(&small, &opts, &err), FERRY_EINVAL);
    assert_string_equal(err.field, "payload");
    PQfinish(c);
    free(big_payload);
}

/* Injection-shaped names are data: stored and read back byte for byte. */
static void hostile_strings_stored_verbatim(void **state)
{
    static const char *const keys[] = {
        "'; DROP TABLE ferry.outbox; --",
        "Robert'); DELETE FROM ferry.outbox_key; --",
        "$1 $2 \\x00 %s %n",
        "key\twith\nnewlines\r and \"quotes\" and \\backslashes\\",
        "\xf0\x9f\x9a\xa2 ferry \xe2\x9b\xb4",
    };
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_error err;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        ferry_msg m = msg("t", keys[i], "{\"q\": \"'\\\"; DROP TABLE x; --\"}");
        m.type = keys[i];
        m.headers = "{\"x-evil\": \"'); DROP TABLE ferry.outbox; --\"}";
        assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    }
    tu_exec(c, "COMMIT");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *params[1] = {keys[i]};
        char *n = tu_str_p(c, "SELECT count(*) FROM ferry.outbox WHERE "
                              "aggregateid = $1 AND type = $1 AND payload->>'q' = "
                              "'''\"; DROP TABLE x; --' AND headers->>'x-evil' = "
                              "'''); DROP TABLE ferry.outbox; --'",
                           1, params);
        assert_string_equal(n, "1");
        free(n);
    }
    PQfinish(c);
}

/*
 * A database without the ferry schema (3F000), or with one too old to
 * have ferry.emit_with_id (42883): FERRY_ESCHEMA, as ferry.h documents,
 * saying to migrate. Before: FERRY_EDB with the server's words only (an
 * outside audit).
 */
static void emit_without_the_schema_is_a_schema_error(void **state)
{
    char *ci = tu_fresh_database("e_unmigrated");
    PGconn *c = PQconnectdb(ci);
    free(ci);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    ferry_msg m = msg("t", "k", "{}");
    for (int old_schema = 0; old_schema < 2; old_schema++) {
        if (old_schema)
            tu_exec(c, "CREATE SCHEMA ferry");
        const char *want_state = old_schema ? "42883" : "3F000";
        for (int batch = 0; batch < 2; batch++) {
            tu_exec(c, "BEGIN");
            ferry_error err;
            ferry_code rc = batch ? ferry_emit_batch(c, &m, 1, NULL, NULL, &err)
                                  : ferry_emit(c, &m, NULL, NULL, &err);
            if (rc != FERRY_ESCHEMA)
                fail_msg("%s, %s: want FERRY_ESCHEMA, got %s: %s", want_state,
                         batch ? "batch" : "emit", ferry_code_name(rc), err.message);
            assert_string_equal(err.sqlstate, want_state);
            assert_int_equal(err.retriable, 0);
            assert_non_null(strstr(err.message, "ferry-relay migrate"));
            tu_exec(c, "ROLLBACK");
        }
    }
    PQfinish(c);
}

/*
 * ferry sends keys, payloads and headers as UTF-8, and the server reads
 * them in the session's client_encoding. Under LATIN1 the key "clé" was
 * stored converted, as "clÃ©" (another Kafka key, partition and order),
 * and a key of 500 "é" passed the client's 1024-byte check but not the
 * server's (2000 bytes once converted), aborting the caller's
 * transaction (an outside audit). Now refused before anything is sent,
 * FERRY_ESTATE on "conn", the transaction usable and the setting as it
 * was; SQL_ASCII, which the server passes through unconverted, is fine.
 */
static void emit_refuses_a_client_encoding_other_than_utf8(void **state)
{
    static const char e_acute[] = "\xc3\xa9";
    char wide_key[500 * 2 + 1];
    for (int i = 0; i < 500; i++)
        memcpy(wide_key + 2 * i, e_acute, 2);
    wide_key[1000] = '\0';
    PGconn *c = tu_connect();
    tu_exec(c, "SET client_encoding = 'LATIN1'");
    tu_exec(c, "BEGIN");
    tu_exec(c, "CREATE TEMP TABLE witness (x int)");
    const char *keys[2] = {"cl\xc3\xa9", wide_key};
    for (int k = 0; k < 2; k++) {
        ferry_msg m = msg("t", keys[k], "{}");
        ferry_error err;
        ferry_code rc = ferry_emit(c, &m, NULL, NULL, &err);
        if (rc != FERRY_ESTATE) {
            PQfinish(c);        /* its locks would hold up the next test */
            fail_msg("key %d: want FERRY_ESTATE, got %s: %s", k, ferry_code_name(rc),
                     rc == FERRY_OK ? "(written)" : err.message);
        }
        assert_string_equal(err.field, "conn");
        assert_non_null(strstr(err.message, "LATIN1"));
        assert_non_null(strstr(err.message, "UTF8"));
        assert_int_equal(ferry_emit_batch(c, &m, 1, NULL, NULL, &err), FERRY_ESTATE);
        assert_string_equal(err.field, "conn");
        assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
        tu_exec(c, "INSERT INTO witness VALUES (1)");
    }
    assert_int_equal(tu_int(c, "SELECT count(*) FROM witness"), 2);
    tu_exec(c, "COMMIT");
    tu_assert_str(c, "SHOW client_encoding", "LATIN1");
    tu_exec(c, "SET client_encoding = 'SQL_ASCII'");
    tu_exec(c, "BEGIN");
    ferry_msg m = msg("t", keys[0], "{}");
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    PQfinish(c);
    c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox "
                               "WHERE aggregateid = 'cl\xc3\xa9'"), 1);
    PQfinish(c);
}

/* ---------------------------------------------------------------- SQL path */

static void sql_emit_any_language(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    char *id = tu_str(c, "SELECT ferry.emit('orders', 'o-9', 'OrderPlaced', "
                         "'{\"total\": 5}')");
    char *id2 = tu_str(c, "SELECT ferry.emit('orders', 'o-9', 'OrderPaid', "
                          "'{\"total\": 5}'::jsonb, '{\"h\": \"v\"}'::jsonb)");
    /* The C path on the same key continues the same positions. */
    ferry_msg m = msg("orders", "o-9", "{}");
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(id[14], '7');                        /* UUID version 7 */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT seq FROM ferry.outbox WHERE id = '%s'",
                                             id2)),
                     2);
    assert_int_equal(tu_int(c, "SELECT max(seq) FROM ferry.outbox WHERE aggregateid = 'o-9'"),
                     3);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE headers->>'h' = 'v'"),
                     1);
    /* Time-ordered: the later id sorts after the earlier. */
    assert_int_equal(tu_int_of(c, tu_sprintf("SELECT ('%s'::uuid < '%s'::uuid)::int", id, id2)),
                     1);
    free(id);
    free(id2);
    PQfinish(c);
}

/* ---------------------------------------------------------------- roles */

static void writer_role_can_only_emit(void **state)
{
    PGconn *admin = tu_connect();
    PGconn *w = tu_connect_as_new(admin, "svc_writer", "ferry_writer");
    tu_exec(w, "BEGIN");
    ferry_msg m = msg("orders", "o-1", "{}");
    ferry_error err;
    assert_ferry_ok(ferry_emit(w, &m, NULL, NULL, &err), err);
    assert_ferry_ok(ferry_emit_batch(w, &m, 1, NULL, NULL, &err), err);
    tu_exec(w, "SELECT ferry.emit('orders', 'o-1', 'T', '{}')");
    tu_exec(w, "COMMIT");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox"), 3);

    static const char *const denied[] = {
        "SELECT * FROM ferry.outbox",
        "DELETE FROM ferry.outbox",
        "UPDATE ferry.outbox SET attempts = 0",
        "INSERT INTO ferry.outbox (id, topic, aggregateid, type, payload, seq, shard) "
        "VALUES (gen_random_uuid(), 't', 'k', 'T', '{}', 99, 0)",
        "TRUNCATE ferry.outbox",
        "SELECT * FROM ferry.outbox_key",
        "UPDATE ferry.outbox_key SET seq = 0",
        "SELECT * FROM ferry.inbox",
        "SELECT * FROM ferry.lease",
        "UPDATE ferry.settings SET max_payload_bytes = 1",
        "INSERT INTO ferry.outbox_key VALUES ('t', 'k', 0, 99)",
    };
    for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++) {
        PGresult *res = PQexec(w, denied[i]);
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (st == NULL || strcmp(st, "42501") != 0)
            fail_msg("writer was not denied (%s): %s", st ? st : "allowed", denied[i]);
        PQclear(res);
    }
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox"), 3);
    PQfinish(w);
    PQfinish(admin);
}

/*
 * A session that has ferry's emit statement already, as a server session
 * behind a transaction-pooling proxy has it from an earlier client (or
 * one with something else under its name): emit uses it, or replaces it,
 * rather than fail its PREPARE with 42P05, which aborted the caller's
 * transaction and was not retried (an outside audit, through PgBouncer).
 */
static void a_session_that_has_the_statement_already_emits(void **state)
{
    static const char sql[] =
        "SELECT ferry.emit_with_id($1::uuid, $2, $3, $4, $5, $6, $7, $8::bigint)";
    static const Oid types[8] = {0, 25, 25, 25, 25, 25, 25, 0};
    for (int other_text = 0; other_text < 2; other_text++) {
        PGconn *c = tu_connect();
        PGresult *res = other_text
                            ? PQexec(c, "PREPARE ferry_emit_with_id_v1 AS SELECT 1")
                            : PQprepare(c, "ferry_emit_with_id_v1", sql, 8, types);
        assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
        PQclear(res);
        tu_exec(c, "BEGIN");
        ferry_msg m = msg("pooled", other_text ? "b" : "a", "{}");
        ferry_error err;
        assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
        tu_exec(c, "COMMIT");
        PQfinish(c);
    }
    PGconn *c = tu_connect();
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pooled'"), 2);
    /* The statement deallocated behind its back (DISCARD ALL), with no
     * error struct given: the failed emit still forgets it, so the next
     * transaction's emit prepares it again. Before: every emit without an
     * error struct failed until one was called with one. */
    ferry_msg m = msg("pooled", "c", "{}");
    ferry_error err;
    tu_exec(c, "BEGIN");
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    tu_exec(c, "DISCARD ALL");
    tu_exec(c, "BEGIN");
    assert_int_equal(ferry_emit(c, &m, NULL, NULL, NULL), FERRY_EDB);
    tu_exec(c, "ROLLBACK");
    tu_exec(c, "BEGIN");
    assert_int_equal(ferry_emit(c, &m, NULL, NULL, NULL), FERRY_OK);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pooled'"), 4);
    PQfinish(c);
}

static void relay_and_reconciler_roles(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "SELECT ferry.emit('t', 'k', 'T', '{}')");
    PGconn *r = tu_connect_as_new(admin, "svc_relay", "ferry_relay");
    assert_int_equal(tu_int(r, "SELECT count(*) FROM ferry.outbox"), 1);
    tu_exec(r, "UPDATE ferry.outbox SET attempts = attempts + 1");
    tu_assert_sql_error(r, "SELECT ferry.emit('t', 'k', 'T', '{}')", "42501", NULL, NULL);
    tu_assert_sql_error(r, "UPDATE ferry.outbox SET payload = '{}'", "42501", NULL, NULL);
    tu_exec(r, "DELETE FROM ferry.outbox");

    PGconn *rc = tu_connect_as_new(admin, "svc_recon", "ferry_reconciler");
    assert_int_equal(tu_int(rc, "SELECT count(*) FROM ferry.saga"), 0);
    tu_exec(rc, "DELETE FROM ferry.inbox WHERE applied_at < now() - interval '7 days'");
    /* It moves over-attempted rows to the dead letters and purges
     * published ones through functions (schema 27), and never writes,
     * rewrites or deletes a message itself. */
    tu_assert_sql_error(rc, "UPDATE ferry.outbox SET payload = '{}'", "42501", NULL, NULL);
    tu_assert_sql_error(rc, "INSERT INTO ferry.outbox (id, topic, aggregateid, type, payload, "
                            "seq, shard) VALUES (gen_random_uuid(), 't', 'k', 'T', '{}', 9, 0)",
                        "42501", NULL, NULL);
    tu_assert_sql_error(rc, "DELETE FROM ferry.outbox WHERE false", "42501", NULL, NULL);
    PQfinish(rc);
    PQfinish(r);
    PQfinish(admin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(emit_commit_is_visible, tu_clean_outbox),
        cmocka_unit_test_setup(a_session_that_has_the_statement_already_emits, tu_clean_outbox),
        cmocka_unit_test_setup(emit_rollback_leaves_nothing, tu_clean_outbox),
        cmocka_unit_test_setup(emit_needs_open_transaction, tu_clean_outbox),
        cmocka_unit_test(emit_without_the_schema_is_a_schema_error),
        cmocka_unit_test_setup(emit_refuses_a_client_encoding_other_than_utf8, tu_clean_outbox),
        cmocka_unit_test_setup(batch_of_10000, tu_clean_outbox),
        cmocka_unit_test_setup(batch_refused_whole, tu_clean_outbox),
        cmocka_unit_test_setup(batch_server_refusal_mid_pipeline, tu_clean_outbox),
        cmocka_unit_test_setup(concurrent_writers, tu_clean_outbox),
        cmocka_unit_test_setup(bad_input_refused_naming_field, tu_clean_outbox),
        cmocka_unit_test_setup(payload_check_agrees_with_jsonb, tu_clean_outbox),
        cmocka_unit_test_setup(limits_inclusive, tu_clean_outbox),
        cmocka_unit_test_setup(hostile_strings_stored_verbatim, tu_clean_outbox),
        cmocka_unit_test_setup(sql_emit_any_language, tu_clean_outbox),
        cmocka_unit_test_setup(writer_role_can_only_emit, tu_clean_outbox),
        cmocka_unit_test_setup(relay_and_reconciler_roles, tu_clean_outbox),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
