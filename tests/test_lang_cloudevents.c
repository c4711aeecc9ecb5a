/*
 * test_lang_cloudevents.c — what a reader in another language sees of a
 * published message's headers: one content-type, the relay's; a ce_source
 * that is a URI-reference, by default different per database, settable
 * by flag, environment and file, and refused at start when it is not one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness/kafkatmp.h"
#include "testutil.h"
#include "tu_kafka.h"

static kt_broker *broker;

static int group_setup(void **state)
{
    return tu_broker_group_setup(state, &broker);
}

static int group_teardown(void **state)
{
    return tu_broker_group_teardown(state, broker);
}

/* Emit one message to topic (headers: a JSON object), run the relay
 * --once with extra arguments, read the message back. */
static kt_msgs *publish(const char *topic, const char *headers, const char *const *extra)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT ferry.emit('%s', 'k', 'T', '{}'::text, '%s')", topic,
                           headers);
    tu_exec(c, sql);
    free(sql);
    PQfinish(c);
    const char *argv[20] = {tu_relay_bin(), "run", "--once", "--db", fpg_conninfo(tu_pg),
                            "--kafka", kt_bootstrap(broker), "--holder", "ce-relay"};
    int n = 9;
    for (; extra && *extra; extra++)
        argv[n++] = *extra;
    argv[n] = NULL;
    char *err = NULL;
    int status = tu_run(argv, 60000, NULL, &err);
    if (status != 0)
        fail_msg("the relay exited %d:\n%s", status, err);
    free(err);
    kt_msgs *m = kt_consume(kt_bootstrap(broker), topic, 1, 30000);
    assert_non_null(m);
    assert_int_equal(m->count, 1);
    return m;
}

static void a_callers_content_type_is_dropped_for_the_relays_own(void **state)
{
    kt_msgs *m = publish("ce.content", "{\"content-type\": \"text/plain\", "
                         "\"Content-Type\": \"text/html\", \"traceparent\": \"00-ab-cd-01\"}",
                         NULL);
    const kt_msg *msg = &m->msgs[0];
    int seen = 0;
    for (size_t i = 0; i < msg->header_count; i++)
        if (strcasecmp(msg->headers[i].name, "content-type") == 0)
            seen++;
    assert_int_equal(seen, 1);
    assert_string_equal(kt_header(msg, "content-type"), "application/json");
    /* Other headers of the caller pass through. */
    assert_string_equal(kt_header(msg, "traceparent"), "00-ab-cd-01");
    kt_msgs_free(m);
}

/* A row whose headers were written around emit (an owner's UPDATE) does
 * not forge what the relay sets: one ferry_seq, one ce_source, the real
 * ones. */
static void a_row_written_around_emit_cannot_forge_the_relays_headers(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    tu_exec(c, "SELECT ferry.emit('ce.forged', 'k', 'T', '{}'::text)");
    tu_exec(c, "UPDATE ferry.outbox SET headers = '{\"ferry_seq\": \"999\", "
               "\"ce_source\": \"forged\", \"x-kept\": \"yes\"}' "
               "WHERE topic = 'ce.forged'");
    tu_exec(c, "COMMIT");
    PQfinish(c);
    const char *argv[] = {tu_relay_bin(), "run", "--once", "--db", fpg_conninfo(tu_pg),
                          "--kafka", kt_bootstrap(broker), "--holder", "ce-relay", NULL};
    assert_int_equal(tu_run(argv, 60000, NULL, NULL), 0);
    kt_msgs *m = kt_consume(kt_bootstrap(broker), "ce.forged", 1, 30000);
    assert_non_null(m);
    assert_int_equal(m->count, 1);
    int seqs = 0, sources = 0;
    for (size_t i = 0; i < m->msgs[0].header_count; i++) {
        seqs += strcmp(m->msgs[0].headers[i].name, "ferry_seq") == 0;
        sources += strcmp(m->msgs[0].headers[i].name, "ce_source") == 0;
    }
    assert_int_equal(seqs, 1);
    assert_int_equal(sources, 1);
    assert_string_equal(kt_header(&m->msgs[0], "ferry_seq"), "1");
    assert_string_equal(kt_header(&m->msgs[0], "x-kept"), "yes");
    kt_msgs_free(m);
}

static void the_default_source_tells_databases_apart(void **state)
{
    kt_msgs *m = publish("ce.default", "{}", NULL);
    /* The test cluster listens on a Unix socket only; its database is
     * "postgres". */
    assert_string_equal(kt_header(&m->msgs[0], "ce_source"), "ferry://localhost/postgres");
    kt_msgs_free(m);
}

static void the_source_is_set_by_flag_environment_and_file(void **state)
{
    setenv("FERRY_SOURCE", "/services/orders", 1);
    kt_msgs *m = publish("ce.env", "{}", NULL);
    assert_string_equal(kt_header(&m->msgs[0], "ce_source"), "/services/orders");
    kt_msgs_free(m);

    /* The flag over the environment. */
    const char *flag[] = {"--set", "source=urn:example:orders", NULL};
    m = publish("ce.flag", "{}", flag);
    assert_string_equal(kt_header(&m->msgs[0], "ce_source"), "urn:example:orders");
    kt_msgs_free(m);
    unsetenv("FERRY_SOURCE");

    char *file = tu_temp_file("source: \"https://orders.example.com/ferry\"\n");
    const char *cfg[] = {"--config", file, NULL};
    m = publish("ce.file", "{}", cfg);
    assert_string_equal(kt_header(&m->msgs[0], "ce_source"),
                        "https://orders.example.com/ferry");
    kt_msgs_free(m);
    tu_temp_remove(file);
}

static void a_source_that_is_not_a_uri_reference_is_refused_at_start(void **state)
{
    static const struct {
        const char *flag, *env, *want;
    } cases[] = {
        {"source=orders service", NULL, "--set source=orders service: is not a URI-reference"},
        {"source=", NULL, "--set source=: must not be empty"},
        {"source=50%off", NULL, "--set source=50%off: has a \"%\" that is not followed"},
        {"source=1x:y", NULL, "--set source=1x:y: has a \":\" in its first segment"},
        {NULL, "caf\xc3\xa9", "FERRY_SOURCE: is not a URI-reference"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].env)
            setenv("FERRY_SOURCE", cases[i].env, 1);
        const char *argv[] = {tu_relay_bin(), "run", "--once", "--db", "dbname=x", "--kafka",
                              "embedded", cases[i].flag ? "--set" : NULL, cases[i].flag, NULL};
        char *err = NULL;
        int status = tu_run(argv, 30000, NULL, &err);
        unsetenv("FERRY_SOURCE");
        if (status != 2 || strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: exit %d, expected 2 and \"%s\" in:\n%s", i, status,
                     cases[i].want, err);
        free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_callers_content_type_is_dropped_for_the_relays_own),
        cmocka_unit_test(a_row_written_around_emit_cannot_forge_the_relays_headers),
        cmocka_unit_test(the_default_source_tells_databases_apart),
        cmocka_unit_test(the_source_is_set_by_flag_environment_and_file),
        cmocka_unit_test(a_source_that_is_not_a_uri_reference_is_refused_at_start),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
