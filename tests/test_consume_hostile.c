/*
 * test_consume_hostile.c — anything the consumer reads from Kafka is
 * hostile (issue 12): every message, however malformed its headers,
 * position, encodings or payload, ends applied, skipped, held or
 * dead-lettered within bounded attempts, and never takes a neighbour with
 * it. Also the discard rule (a discarded dead letter consumes exactly its
 * own position, in order) and a replayed dead letter that was not JSON.
 *
 * Messages are produced raw to the development broker (librdkafka's mock
 * cluster in a `ferry-relay devkafka` process), with header values given
 * as bytes so that NULs and invalid UTF-8 can be sent.
 *
 * A consumer that loops for ever inside ferry_consumer_poll() would hang
 * this binary; a watchdog (alarm) turns that into a failure.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_kafka.h"

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

enum { WATCHDOG_S = 240 };

static kt_broker *broker;
static rd_kafka_t *producer;
static long handler_calls;
static long payload_unterminated;   /* calls whose payload_text had no NUL after it */

/* Payload {"amount": N} credits N to account <key> and records the
 * application in t_applied; {"fail": true} is refused (not retriable). */
static ferry_code apply_credit(PGconn *conn, const ferry_message *m, void *arg,
                               ferry_error *err)
{
    handler_calls++;
    if (m->payload_text[m->payload_len] != '\0')
        payload_unterminated++;
    if (!json_is_object(m->payload))
        return ferry_error_set(err, FERRY_EINVAL, 0, "refused: the payload is not an object");
    if (json_is_true(json_object_get(m->payload, "fail")))
        return ferry_error_set(err, FERRY_EUSER, 0, "refused: this one always fails");
    char amount[32], seq[32];
    snprintf(amount, sizeof amount, "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(m->payload, "amount")));
    snprintf(seq, sizeof seq, "%" PRId64, m->position);
    const char *p[5] = {(const char *)arg, m->topic, m->key, seq, amount};
    return tu_handler_exec(conn,
                           "INSERT INTO t_applied (consumer, topic, key, seq, amount) "
                           "VALUES ($1, $2, $3, $4::bigint, $5::bigint)",
                           5, p, "could not credit", err);
}

/* ------------------------------------------------------------------ producing */

typedef struct hdr {
    const char *name;
    const char *value;          /* NULL ends the list */
    size_t len;                 /* 0: strlen(value) */
    size_t name_len;            /* 0: strlen(name) */
} hdr;

typedef struct rawmsg {
    const char *key;
    const char *seq;            /* ferry_seq's bytes, or NULL for none */
    const char *payload;        /* NULL: {"amount": 1} */
    size_t payload_len;         /* 0: strlen(payload) */
    hdr extra[4];               /* more headers, ended by a NULL value */
    int no_type;                /* leave out ferry_type */
} rawmsg;

static void produce_raw(const char *topic, const rawmsg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const rawmsg *m = &msgs[i];
        ferry_uuid u;
        char id[FERRY_UUID_STRING_SIZE];
        assert_int_equal(ferry_uuid_v7(&u), FERRY_OK);
        ferry_uuid_format(&u, id);
        rd_kafka_headers_t *h = rd_kafka_headers_new(8);
        rd_kafka_header_add(h, "ferry_id", -1, id, -1);
        if (!m->no_type)
            rd_kafka_header_add(h, "ferry_type", -1, "Credited", -1);
        if (m->seq != NULL)
            rd_kafka_header_add(h, "ferry_seq", -1, m->seq, -1);
        for (int j = 0; j < 4 && m->extra[j].value != NULL; j++)
            rd_kafka_header_add(h, m->extra[j].name,
                                m->extra[j].name_len ? (ssize_t)m->extra[j].name_len : -1,
                                m->extra[j].value,
                                m->extra[j].len ? (ssize_t)m->extra[j].len : -1);
        const char *payload = m->payload ? m->payload : "{\"amount\": 1}";
        size_t plen = m->payload_len ? m->payload_len : strlen(payload);
        tu_produce_one(producer, topic, m->key, payload, plen, h);
    }
    assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* ------------------------------------------------------------------ consuming */

static ferry_consumer *consumer_new(const char *name, const char *topic, int max_attempts)
{
    return tu_consumer_new(name, kt_bootstrap(broker), topic, apply_credit, (void *)name, NULL,
                           max_attempts);
}

typedef struct sql_wait {
    PGconn *conn;
    const char *cond;
} sql_wait;

static int sql_holds(ferry_consumer *c, void *arg)
{
    sql_wait *w = arg;
    char *v = tu_str(w->conn, w->cond);
    int holds = strcmp(v, "t") == 0;
    free(v);
    return holds;
}

/* Poll until the SQL condition (a boolean query) holds (bounded: fails after 60 s). Every
 * poll must return: a poll that does not is caught by the watchdog. */
static void poll_until_sql(ferry_consumer *c, PGconn *conn, const char *cond)
{
    sql_wait w = {conn, cond};
    tu_poll_until(c, sql_holds, &w, 50, cond);
}

static void assert_order(PGconn *conn, const char *consumer, const char *key,
                         const char *want)
{
    char *got = tu_str_of(conn, tu_sprintf("SELECT coalesce(string_agg(seq::text, ',' ORDER "
                                           "BY n), '') FROM t_applied WHERE consumer = '%s' "
                                           "AND key = '%s'", consumer, key));
    if (strcmp(got, want) != 0)
        fail_msg("%s/%s applied %s, want %s", consumer, key, got, want);
    free(got);
}

/* ------------------------------------------------------------------ tests */

/* Issue 12, item 1. Key k: 1 applied; 2 refused (dead letter, key parked);
 * 3 held; 4 not UTF-8 (dead letter too). Discarding 2 consumes position 2
 * and nothing else: 3 is applied, and the key then waits behind 4.
 * Discarding 4 consumes 4; 5 follows. Key g: 1 applied, 4 not UTF-8 while
 * 2 and 3 are missing; discarding 4 leaves the gap: 2 and 3 are applied
 * when they come, then 4 counts as done and 5 follows. */
static void discard_consumes_exactly_its_own_position(void **state)
{
    const char *topic = "h.discard";
    rawmsg m[6] = {
        {"k", "1"}, {"k", "2", "{\"fail\": true}"}, {"k", "3"},
        {"k", "4", "\xff\xfe not text", 12},
        {"g", "1"}, {"g", "4", "\xff\xfe not text", 12},
    };
    produce_raw(topic, m, 6);
    ferry_consumer *c = consumer_new("h-discard", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 3 FROM ferry.dead_letter "
                            "WHERE consumer = 'h-discard'");
    assert_order(conn, "h-discard", "k", "1");
    assert_order(conn, "h-discard", "g", "1");

    assert_int_equal(tu_int(conn, "SELECT ferry.discard_dead_letter(id)::int FROM "
                                  "ferry.dead_letter WHERE consumer = 'h-discard' AND "
                                  "aggregateid = 'k' AND seq = 2"), 1);
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM t_applied WHERE consumer = 'h-discard' "
                            "AND key = 'k' AND seq = 3");
    /* The key now waits behind 4, the other dead letter. */
    assert_int_equal(tu_int(conn, "SELECT seq FROM ferry.inbox_key WHERE consumer = "
                                  "'h-discard' AND key = 'k'"), 3);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key k JOIN "
                                  "ferry.dead_letter d ON d.id = k.parked_by WHERE "
                                  "k.consumer = 'h-discard' AND k.key = 'k' AND d.seq = 4"), 1);
    assert_int_equal(tu_int(conn, "SELECT ferry.discard_dead_letter(id)::int FROM "
                                  "ferry.dead_letter WHERE consumer = 'h-discard' AND "
                                  "aggregateid = 'k' AND seq = 4"), 1);

    /* Ahead of a gap: the gap stays. */
    assert_int_equal(tu_int(conn, "SELECT ferry.discard_dead_letter(id)::int FROM "
                                  "ferry.dead_letter WHERE consumer = 'h-discard' AND "
                                  "aggregateid = 'g' AND seq = 4"), 1);
    assert_int_equal(tu_int(conn, "SELECT seq FROM ferry.inbox_key WHERE consumer = "
                                  "'h-discard' AND key = 'g'"), 1);
    rawmsg more[4] = {{"k", "5"}, {"g", "2"}, {"g", "3"}, {"g", "5"}};
    produce_raw(topic, more, 4);
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM t_applied WHERE consumer = 'h-discard' "
                            "AND seq = 5");
    tu_consumer_done(c);
    assert_order(conn, "h-discard", "k", "1,3,5");
    assert_order(conn, "h-discard", "g", "1,2,3,5");
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_held "
                                  "WHERE consumer = 'h-discard'"), 0);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter "
                                  "WHERE consumer = 'h-discard'"), 0);
    PQfinish(conn);
}

/*
 * A discard marker is told by its headers as the claim sees them (the
 * header map: a name up to its first NUL), alike one by one and in a
 * batch: "ferry_discarded\0x" is a ferry_discarded header, so the
 * message is applied as a marker, without the handler.
 *
 * Before (the batched pass): the batch's claim asked librdkafka for the
 * header by its exact length, missed it, and the handler ran: "m/1 went
 * to the handler".
 */
static void a_discard_marker_is_told_alike_in_a_batch(void **state)
{
    const char *topic = "h.marker";
    rawmsg m[3] = {
        {"m", "1", NULL, 0, {{"ferry_discarded\0x", "1", 0, 17}}},
        {"m", "2"},
        {"n", "1"},
    };
    produce_raw(topic, m, 3);
    ferry_consumer *c = consumer_new("h-marker", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM ferry.inbox_key WHERE consumer = "
                            "'h-marker' AND seq = CASE key WHEN 'm' THEN 2 ELSE 1 END");
    tu_consumer_done(c);
    if (tu_int(conn, "SELECT count(*) FROM t_applied WHERE consumer = 'h-marker' "
                     "AND key = 'm' AND seq = 1") != 0)
        fail_msg("m/1 went to the handler");
    assert_order(conn, "h-marker", "m", "2");
    assert_order(conn, "h-marker", "n", "1");
    PQfinish(conn);
}

/* A long string cut inside a character by jansson's error text. */
static char cut_payload[1 + 3 * 120 + 1];

/*
 * One message of each hostile kind, each on its own key, each followed
 * by a good message of that key: every one ends dead-lettered (or held
 * and then applied), the consumer never stops, and the good neighbours
 * are all applied.
 */
static void hostile_messages_end_and_neighbours_flow(void **state)
{
    const char *topic = "h.hostile";
    cut_payload[0] = '"';
    for (int i = 0; i < 120; i++)
        memcpy(cut_payload + 1 + 3 * i, "\xe2\x82\xac", 3);     /* U+20AC, unterminated */
    static const char nul_value[] = {'a', '\0', 'b'};
    rawmsg bad[] = {
        /* positions that are not positions: dead-lettered without one */
        {"p-max", "9223372036854775807"},
        {"p-huge", "99999999999999999999"},
        {"p-space", " +07"},
        {"p-zero", "007"},
        {"p-bytes", "\xff" "1"},
        /* held (a gap), with a header PostgreSQL text cannot hold */
        {"nul-held", "2", NULL, 0, {{"x-bin", nul_value, 3}, {"x-ok", "kept"}}},
        /* dead-lettered by the handler, with that header */
        {"nul-dead", "1", "{\"fail\": true}", 0, {{"x-bin", nul_value, 3}, {"x-ok", "kept"}}},
        /* types that are not UTF-8, arriving ahead of their turn */
        {"t-type", "2", NULL, 0, {{"ferry_type", "\xc3\x28"}}, 1},
        {"t-ce", "2", NULL, 0, {{"ce_type", "\xff"}}, 1},
        {"t-agg", "2", NULL, 0, {{"ferry_aggregate_type", "\xe2\x82"}}},
        /* jansson's error text cut inside a character */
        {"j-cut", "1", cut_payload},
        /* a number jsonb refuses, in a payload the handler refuses */
        {"n-tiny", "1", "{\"fail\": true, \"x\": 1e-16384}"},
    };
    enum { NBAD = sizeof bad / sizeof bad[0] };
    produce_raw(topic, bad, NBAD);

    ferry_consumer *c = consumer_new("h-hostile", topic, 1);
    PGconn *conn = tu_connect();
    /* Held: nul-held. Dead letters: all the others. */
    char *all_dead = tu_sprintf("SELECT count(*) = %d FROM ferry.dead_letter "
                                "WHERE consumer = 'h-hostile'", NBAD - 1);
    poll_until_sql(c, conn, all_dead);
    free(all_dead);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_held "
                                  "WHERE consumer = 'h-hostile' AND key = 'nul-held'"), 1);

    /* Every reason and text column is valid text; the dead letter kept
     * the header it could keep. */
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-hostile' AND aggregateid LIKE 'p-%' AND seq = 0 AND "
                                  "reason LIKE 'header ferry_seq is %not a position'"), 5);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-hostile' AND aggregateid = 'nul-dead' AND "
                                  "headers->>'x-ok' = 'kept' AND NOT headers ? 'x-bin'"), 1);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-hostile' AND aggregateid LIKE 't-%' AND seq = 2 AND "
                                  "reason LIKE '%not UTF-8%'"), 3);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-hostile' AND aggregateid = 'j-cut' AND "
                                  "reason LIKE 'payload is not valid JSON%'"), 1);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-hostile' AND aggregateid = 'n-tiny' AND "
                                  "reason LIKE '%always fails%'"), 1);

    /* The neighbours: each key's good messages. */
    rawmsg good[] = {
        {"p-max", "1"}, {"p-huge", "1"}, {"p-space", "1"}, {"p-zero", "1"}, {"p-bytes", "1"},
        {"nul-held", "1"}, {"t-type", "1"}, {"t-ce", "1"}, {"t-agg", "1"}, {"other", "1"},
    };
    enum { NGOOD = sizeof good / sizeof good[0] };
    produce_raw(topic, good, NGOOD);
    poll_until_sql(c, conn, "SELECT count(*) = 11 FROM t_applied WHERE consumer = 'h-hostile'");
    tu_consumer_done(c);
    /* nul-held was held, then applied after 1 (its kept header and all). */
    assert_order(conn, "h-hostile", "nul-held", "1,2");
    assert_order(conn, "h-hostile", "t-type", "1");
    assert_order(conn, "h-hostile", "p-max", "1");
    assert_order(conn, "h-hostile", "other", "1");
    PQfinish(conn);
}

/*
 * A key that is not text is shown (and dead-lettered) as "\x" and its
 * bytes in hex, a name a real key may have too. Its dead letter parks no
 * key: no message can follow it under that name (every one of the bad key
 * is poison as well), and a real key so named must not wait behind it.
 * Before, the letter kept the message's position and parked the real key
 * "\xfffe" at 1: its messages were held for ever (an outside audit).
 */
static void a_key_that_is_not_text_parks_no_other_key(void **state)
{
    const char *topic = "h.badkey";
    rawmsg bad[] = {{"\xff\xfe", "1"}};
    rawmsg good[] = {{"\\xfffe", "1"}, {"\\xfffe", "2"}};
    produce_raw(topic, bad, 1);
    ferry_consumer *c = consumer_new("h-badkey", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM ferry.dead_letter "
                            "WHERE consumer = 'h-badkey'");
    produce_raw(topic, good, 2);
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM t_applied WHERE consumer = 'h-badkey'");
    tu_consumer_done(c);
    assert_order(conn, "h-badkey", "\\xfffe", "1,2");
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-badkey' AND seq = 0 AND reason LIKE '%key is not UTF-8%'"),
                     1);
    PQfinish(conn);
}

/* A key that is not text (or is longer than a key may be) is dead-lettered
 * at once and without a position whatever its ferry_seq says: held at its
 * position under its escaped name, it was applied later as the message of
 * the real key of that name (a forged payload at position 2) and the real
 * message 2 was skipped as late; and its later messages waited for ever. */
static void a_key_that_is_not_text_is_never_held(void **state)
{
    const char *topic = "h.badkeyheld";
    char longkey[FERRY_KEY_MAX + 77];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    rawmsg bad[] = {{"\xff\xfe", "2", "{\"amount\": 666}"}, {longkey, "2"}};
    rawmsg good[] = {{"\\xfffe", "1", "{\"amount\": 1}"}, {"\\xfffe", "2", "{\"amount\": 2}"}};
    produce_raw(topic, bad, 2);
    ferry_consumer *c = consumer_new("h-badkeyheld", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM ferry.dead_letter "
                            "WHERE consumer = 'h-badkeyheld'");
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-badkeyheld' AND seq = 0 AND reason LIKE '%key is not UTF-8%'"),
                     2);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_held WHERE consumer = "
                                  "'h-badkeyheld'"), 0);
    produce_raw(topic, good, 2);
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM t_applied WHERE consumer = 'h-badkeyheld'");
    tu_consumer_done(c);
    assert_order(conn, "h-badkeyheld", "\\xfffe", "1,2");
    assert_int_equal(tu_int(conn, "SELECT sum(amount) FROM t_applied WHERE consumer = "
                                  "'h-badkeyheld'"), 3);
    PQfinish(conn);
}

/* The id is ferry_id, else ce_id, else the message's coordinates: a
 * ferry_id that is not a UUID counts as absent. It did not, and a
 * CloudEvents producer's redelivery at another offset was applied twice
 * (deduplicated by coordinates, not by its ce_id). */
static void a_ferry_id_that_is_not_a_uuid_falls_back_to_ce_id(void **state)
{
    const char *topic = "h.ceid";
    const char *ce = "01a25270-80b6-76db-b6db-8c5106aab091";
    rawmsg m[] = {
        {"c", NULL, "{\"amount\": 1}", 0, {{"ferry_id", "not-a-uuid"}, {"ce_id", ce}}},
        {"c", NULL, "{\"amount\": 1}", 0, {{"ferry_id", "not-a-uuid"}, {"ce_id", ce}}},
        {"c", NULL, "{\"amount\": 7}"},
    };
    produce_raw(topic, m, 3);
    ferry_consumer *c = consumer_new("h-ceid", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM t_applied WHERE consumer = 'h-ceid' "
                            "AND amount = 7");
    tu_consumer_done(c);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM t_applied WHERE consumer = 'h-ceid'"), 2);
    char *sql = tu_sprintf("SELECT count(*) FROM ferry.inbox WHERE consumer = 'h-ceid' "
                           "AND message_id = '%s'", ce);
    assert_int_equal(tu_int(conn, sql), 1);
    free(sql);
    PQfinish(conn);
}

/* A consumer whose environment asks libpq for another client encoding
 * (PGCLIENTENCODING=LATIN1) keeps its keys as they came, UTF-8: its
 * connection took them as Latin-1 and stored "cl\u00c3\u00a9" for "cl\u00e9"
 * (another key, with positions of its own). */
static void a_consumer_keeps_utf8_whatever_its_client_encoding(void **state)
{
    const char *topic = "h.latin";
    rawmsg m[] = {{"cl\xc3\xa9", "1"}};
    produce_raw(topic, m, 1);
    setenv("PGCLIENTENCODING", "LATIN1", 1);
    ferry_consumer *c = consumer_new("h-latin", topic, 1);
    unsetenv("PGCLIENTENCODING");
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM t_applied WHERE consumer = 'h-latin'");
    tu_consumer_done(c);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key WHERE consumer = "
                                  "'h-latin' AND key = 'cl\xc3\xa9' AND seq = 1"), 1);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM t_applied WHERE consumer = 'h-latin' "
                                  "AND key = 'cl\xc3\xa9'"), 1);
    PQfinish(conn);
}

/* The claim refuses a position whose successor bigint cannot hold, with a
 * data error (class 22) rather than an internal failure: a consumer in
 * any language then knows the message is at fault. */
static void claim_refuses_the_last_bigint_as_data(void **state)
{
    PGconn *conn = tu_connect();
    tu_assert_sql_error(conn, "SELECT ferry.inbox_claim('h-sql', gen_random_uuid(), 't', "
                              "'k', 9223372036854775807)", "22", NULL, NULL);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.inbox_key WHERE consumer = "
                                  "'h-sql'"), 0);
    PQfinish(conn);
}

/* A failure that is not the message's (the claim function is missing):
 * poll gives up after bounded attempts and returns the error, and the
 * message is not lost: once the function is back, it is applied. */
static void claim_failure_is_bounded_and_loses_nothing(void **state)
{
    const char *topic = "h.broken";
    rawmsg m[1] = {{"b", "1"}};
    produce_raw(topic, m, 1);
    PGconn *conn = tu_connect();
    ferry_consumer *c = consumer_new("h-broken", topic, 1);
    tu_exec(conn, "ALTER FUNCTION ferry.inbox_claim(text, uuid, text, text, bigint, boolean) "
                  "RENAME TO inbox_claim_away");
    ferry_error err;
    ferry_code rc = FERRY_OK;
    int64_t deadline = (int64_t)time(NULL) + 60;
    while (rc == FERRY_OK && (int64_t)time(NULL) < deadline)
        rc = ferry_consumer_poll(c, 50, &err);
    assert_int_not_equal(rc, FERRY_OK);
    assert_string_equal(err.sqlstate, "42883");
    tu_exec(conn, "ALTER FUNCTION ferry.inbox_claim_away(text, uuid, text, text, bigint, "
                  "boolean) RENAME TO inbox_claim");
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM t_applied WHERE consumer = 'h-broken'");
    tu_consumer_done(c);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-broken'"), 0);
    PQfinish(conn);
}

/* Issue 12, item 12 (second half): a dead letter whose payload was not
 * JSON is replayed as it was received, not as a JSON string of it: the
 * handler is not called with a string; the message is poison again. */
static void replayed_non_json_is_as_received(void **state)
{
    const char *topic = "h.replay";
    rawmsg m[1] = {{"r", "1", "{not json"}};
    produce_raw(topic, m, 1);
    ferry_consumer *c = consumer_new("h-replay", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM ferry.dead_letter "
                            "WHERE consumer = 'h-replay'");
    long calls = handler_calls;
    assert_int_equal(tu_int(conn, "SELECT ferry.replay_dead_letter(id)::int FROM "
                                  "ferry.dead_letter WHERE consumer = 'h-replay'"), 1);
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM ferry.dead_letter WHERE consumer = "
                            "'h-replay' AND reason LIKE 'payload is not valid JSON%'");
    tu_consumer_done(c);
    assert_int_equal(handler_calls, calls);
    assert_order(conn, "h-replay", "r", "");
    PQfinish(conn);
}

/* A dead letter fixed by the operator and replayed goes as fixed, even
 * when a copy of the message arrived again meanwhile (a resend, a crash
 * before the offset store) and was held at its position behind the
 * letter: the replay kept that stale copy (a position held already keeps
 * its first copy), so the fix was dropped and the message was poison
 * again. */
static void a_replayed_dead_letter_goes_as_fixed_not_as_a_held_copy(void **state)
{
    const char *topic = "h.fixed";
    const char *id = "01a25270-0000-7000-8000-00000000f1f1";
    rawmsg m[] = {{"f", "1", "{bad", 0, {{"ferry_id", id}}},
                  {"f", "1", "{bad", 0, {{"ferry_id", id}}},
                  {"f", "2", "{\"amount\": 2}"}};
    produce_raw(topic, m, 3);
    ferry_consumer *c = consumer_new("h-fixed", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM ferry.dead_letter WHERE consumer = "
                            "'h-fixed'");
    poll_until_sql(c, conn, "SELECT count(*) = 1 FROM ferry.inbox_held WHERE consumer = "
                            "'h-fixed' AND seq = 2");
    /* The copy of 1 that came again: held behind its letter, or known as
     * a duplicate; either way the fix must win. */
    tu_exec(conn, "UPDATE ferry.dead_letter SET payload = '{\"amount\": 5}', payload_text = NULL "
                  "WHERE consumer = 'h-fixed'");
    assert_int_equal(tu_int(conn, "SELECT ferry.replay_dead_letter(id)::int FROM "
                                  "ferry.dead_letter WHERE consumer = 'h-fixed'"), 1);
    poll_until_sql(c, conn, "SELECT count(*) = 2 FROM t_applied WHERE consumer = 'h-fixed'");
    tu_consumer_done(c);
    assert_order(conn, "h-fixed", "f", "1,2");
    assert_int_equal(tu_int(conn, "SELECT amount FROM t_applied WHERE consumer = 'h-fixed' "
                                  "AND seq = 1"), 5);
    assert_int_equal(tu_int(conn, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = "
                                  "'h-fixed'"), 0);
    PQfinish(conn);
}

/* ferry.h: "Strings are NUL-terminated" — payload_text too, though a Kafka
 * record's value is followed by its headers in librdkafka's buffer, not
 * by a NUL (an outside audit's handler stored the headers' bytes with the
 * payload). */
static void payload_text_ends_with_a_nul(void **state)
{
    const char *topic = "h.nul";
    rawmsg m[3] = {{"n1", "1", NULL, 0, {{"x-trace", "abcdef"}}},
                   {"n1", "2", "{\"amount\": 2}", 0, {{"x-trace", "ghijkl"}}},
                   {"n2", "1", "{\"amount\":3}", 0, {{"x-trace", "mnopqr"}}}};
    produce_raw(topic, m, 3);
    long calls = handler_calls;
    payload_unterminated = 0;
    ferry_consumer *c = consumer_new("h-nul", topic, 1);
    PGconn *conn = tu_connect();
    poll_until_sql(c, conn, "SELECT count(*) = 3 FROM t_applied WHERE consumer = 'h-nul'");
    tu_consumer_done(c);
    assert_true(handler_calls - calls >= 3);
    assert_int_equal(payload_unterminated, 0);
    PQfinish(conn);
}

/* ------------------------------------------------------------------ setup */

static int group_setup(void **state)
{
    alarm(WATCHDOG_S);      /* a poll that never returns fails the run */
    if (tu_broker_group_setup(state, &broker) != 0)
        return -1;
    tu_exec_once("CREATE TABLE t_applied (n bigserial, consumer text, topic text, key text, "
                 "seq bigint, amount bigint)");
    producer = tu_producer_new(kt_bootstrap(broker), NULL);
    return producer == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    tu_producer_destroy(producer);
    return tu_broker_group_teardown(state, broker);
}

/*
 * The tests run twice, at the same time, each pass with its own cluster
 * and broker: with batches (batch_max 100, the library's default) and with one message per
 * transaction (FERRY_CONSUMER_TEST_BATCH_MAX=1, a test hook of the
 * library).
 */
int main(void)
{
    pid_t unbatched = tu_unbatched_pass_start("test_consume_hostile");
    /* Batches are the default (lib/consume.c, DEFAULT_BATCH_MAX = 100):
     * this pass says so through the hook too, so that its consumers batch
     * whatever a test's configuration asks. */
    if (getenv("FERRY_CONSUMER_TEST_BATCH_MAX") == NULL)
        setenv("FERRY_CONSUMER_TEST_BATCH_MAX", "100", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(discard_consumes_exactly_its_own_position),
        cmocka_unit_test(a_discard_marker_is_told_alike_in_a_batch),
        cmocka_unit_test(hostile_messages_end_and_neighbours_flow),
        cmocka_unit_test(a_key_that_is_not_text_parks_no_other_key),
        cmocka_unit_test(a_key_that_is_not_text_is_never_held),
        cmocka_unit_test(a_ferry_id_that_is_not_a_uuid_falls_back_to_ce_id),
        cmocka_unit_test(a_consumer_keeps_utf8_whatever_its_client_encoding),
        cmocka_unit_test(claim_refuses_the_last_bigint_as_data),
        cmocka_unit_test(claim_failure_is_bounded_and_loses_nothing),
        cmocka_unit_test(replayed_non_json_is_as_received),
        cmocka_unit_test(a_replayed_dead_letter_goes_as_fixed_not_as_a_held_copy),
        cmocka_unit_test(payload_text_ends_with_a_nul),
    };
    tu_filter_from_env();
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    return failed + tu_unbatched_pass_wait(unbatched, "test_consume_hostile");
}
