/*
 * test_config.c — ferry-relay's settings (daemon/config.c): the YAML file,
 * the environment, the flags, their precedence and every error's place.
 * Needs no server.
 *
 * Data-driven, from the repository root:
 *   tests/data/config/valid/NAME.yaml     must load; NAME.expect, if any,
 *                                         lists key=value lines to check
 *   tests/data/config/invalid/NAME.yaml   must fail with an error that
 *                                         contains the text of NAME.err
 */
#include <errno.h>
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "testutil.h"
#include "../daemon/config.h"

#define DATA "tests/data/config"
#define FILE_MAX (1 << 20)            /* CONFIG_FILE_MAX in config.c */

enum { ARGS_MAX = 300 };

/* Every variable the loader reads: FERRY_CONFIG, each setting's, and
 * every FERRY_KAFKA_PROP_*. */
static int clear_env(void **state)
{
    extern char **environ;
    unsetenv("FERRY_CONFIG");
    for (size_t i = 0; i < relay_config_setting_count(); i++)
        unsetenv(relay_config_setting_env(i));
    for (;;) {
        char **e = environ;
        while (e && *e && strncmp(*e, "FERRY_KAFKA_PROP_", 17) != 0)
            e++;
        if (!e || !*e)
            return 0;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(*e, "="), *e);
        unsetenv(name);
    }
}

static bool is_zero(const relay_config *cfg)
{
    static const relay_config zero;
    return memcmp(cfg, &zero, sizeof zero) == 0;
}

/*
 * relay_config_load with argv "run", args..., NULL-terminated. On failure
 * also checks that cfg was left with nothing in it, whatever it held.
 */
static int load_v(relay_config *cfg, char *err, size_t errlen, const char *const *args)
{
    char *argv[ARGS_MAX + 2];
    int argc = 0;
    argv[argc++] = (char *)"run";
    while (*args) {
        assert_true(argc <= ARGS_MAX);
        argv[argc++] = (char *)*args++;
    }
    argv[argc] = NULL;
    memset(cfg, 0xA5, sizeof *cfg);   /* garbage in: the result may not depend on it */
    int rc = relay_config_load(cfg, argc, argv, err, errlen);
    if (rc != 0)
        assert_true(is_zero(cfg));
    return rc;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Load and fail the test with the message if it does not load. */
#define LOAD_OK(cfg, ...)                                                    \
    do {                                                                     \
        char err_[512];                                                      \
        if (load_v((cfg), err_, sizeof err_, ARGS(__VA_ARGS__)) != 0)        \
            fail_msg("expected to load, got: %s", err_);                     \
    } while (0)

/* Load, expect failure with an error containing want. */
#define LOAD_FAILS(want, ...)                                                \
    do {                                                                     \
        relay_config cfg_;                                                   \
        char err_[512];                                                      \
        if (load_v(&cfg_, err_, sizeof err_, ARGS(__VA_ARGS__)) == 0) {      \
            relay_config_free(&cfg_);                                        \
            fail_msg("expected an error containing \"%s\", but it loaded", (want)); \
        }                                                                    \
        if (!strstr(err_, (want)))                                           \
            fail_msg("expected an error containing \"%s\", got \"%s\"", (want), err_); \
    } while (0)

/* ------------------------------------------------------------ rendering */

static const char *const log_levels[] = {"error", "warn", "info", "debug"};

/* cfg's value for an .expect key into buf; false if no such key. */
static bool render(const relay_config *c, const char *key, char *buf, size_t len)
{
    const char *s = NULL;
    long n = 0;
    enum { STR, NUM } kind = STR;

    if (strcmp(key, "db") == 0)
        s = c->db;
    else if (strcmp(key, "kafka") == 0)
        s = c->kafka;
    else if (strcmp(key, "metrics") == 0)
        s = c->metrics;
    else if (strcmp(key, "holder") == 0)
        s = c->holder;
    else if (strcmp(key, "source") == 0)
        s = c->source;
    else if (strcmp(key, "log_level") == 0)
        s = c->log_level >= 0 && c->log_level <= 3 ? log_levels[c->log_level] : "?";
    else if (strcmp(key, "retention") == 0)
        s = c->retention == RELAY_RETENTION_DELETE ? "delete"
            : c->retention == RELAY_RETENTION_MARK ? "mark" : "?";
    else if (strcmp(key, "outbox_source") == 0)
        s = c->outbox_source == RELAY_SOURCE_TABLE ? "table"
            : c->outbox_source == RELAY_SOURCE_WAL ? "wal" : "?";
    else if (strncmp(key, "kafka.", 6) == 0) {
        s = NULL;
        for (size_t i = 0; i < c->kafka_props_count; i++)
            if (strcmp(c->kafka_props[i].name, key + 6) == 0)
                s = c->kafka_props[i].value;
    } else {
        kind = NUM;
        if (strcmp(key, "once") == 0)
            n = c->once;
        else if (strcmp(key, "batch_size") == 0)
            n = c->batch_size;
        else if (strcmp(key, "max_inflight") == 0)
            n = c->max_inflight;
        else if (strcmp(key, "poll_interval_ms") == 0)
            n = c->poll_interval_ms;
        else if (strcmp(key, "lease_ttl_ms") == 0)
            n = c->lease_ttl_ms;
        else if (strcmp(key, "max_attempts") == 0)
            n = c->max_attempts;
        else if (strcmp(key, "stuck_ms") == 0)
            n = c->stuck_ms;
        else if (strcmp(key, "stop_grace_ms") == 0)
            n = c->stop_grace_ms;
        else if (strcmp(key, "kafka_props_count") == 0)
            n = (long)c->kafka_props_count;
        else
            return false;
    }
    if (kind == NUM)
        snprintf(buf, len, "%ld", n);
    else
        snprintf(buf, len, "%s", s ? s : "(null)");
    return true;
}

static void assert_value(const relay_config *c, const char *key, const char *want)
{
    char got[512];
    if (!render(c, key, got, sizeof got))
        fail_msg("no such key \"%s\"", key);
    if (strcmp(got, want) != 0)
        fail_msg("%s: expected \"%s\", got \"%s\"", key, want, got);
}

/* NAME.yaml -> NAME.SUFFIX */
static void sibling(const char *yaml, const char *suffix, char *out, size_t len)
{
    size_t stem = strlen(yaml) - strlen(".yaml");
    snprintf(out, len, "%.*s.%s", (int)stem, yaml, suffix);
}

/* ------------------------------------------------------------ data-driven */

static void valid_files_load(void **state)
{
    glob_t g;
    assert_int_equal(glob(DATA "/valid/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 5);
    int failures = 0;

    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        relay_config cfg;
        char err[512], expect_path[512];
        if (load_v(&cfg, err, sizeof err, ARGS("--config", path)) != 0) {
            print_error("%s: did not load: %s\n", path, err);
            failures++;
            continue;
        }
        sibling(path, "expect", expect_path, sizeof expect_path);
        char *expect = tu_slurp(expect_path, NULL);
        int checked = 0;
        for (char *line = expect ? strtok(expect, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            char *eq = strchr(line, '=');
            char got[512];
            if (!eq) {
                print_error("%s: bad line \"%s\"\n", expect_path, line);
                failures++;
                continue;
            }
            *eq = '\0';
            if (!render(&cfg, line, got, sizeof got)) {
                print_error("%s: unknown key \"%s\"\n", expect_path, line);
                failures++;
            } else if (strcmp(got, eq + 1) != 0) {
                print_error("%s: %s: expected \"%s\", got \"%s\"\n", path, line, eq + 1, got);
                failures++;
            }
            checked++;
        }
        if (expect && checked == 0) {
            print_error("%s: checks nothing\n", expect_path);
            failures++;
        }
        free(expect);
        relay_config_free(&cfg);
        assert_true(is_zero(&cfg));
    }
    globfree(&g);
    assert_int_equal(failures, 0);
}

static void invalid_files_fail(void **state)
{
    glob_t g;
    assert_int_equal(glob(DATA "/invalid/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 20);
    int failures = 0;

    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        char err_path[512], err[512];
        sibling(path, "err", err_path, sizeof err_path);
        char *want = tu_slurp_expected(path, err_path);
        if (!want) {
            failures++;
            continue;
        }
        want[strcspn(want, "\n")] = '\0';

        relay_config cfg;
        if (load_v(&cfg, err, sizeof err, ARGS("--config", path)) == 0) {
            print_error("%s: loaded, expected \"%s\"\n", path, want);
            relay_config_free(&cfg);
            failures++;
        } else if (!strstr(err, want)) {
            print_error("%s: expected \"%s\"\n%*s got \"%s\"\n", path, want,
                        (int)strlen(path), "", err);
            failures++;
        }
        free(want);
    }
    globfree(&g);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------ layers */

static void flags_only_get_defaults(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "dbname=app", "--kafka", "embedded");
    assert_value(&cfg, "db", "dbname=app");
    assert_value(&cfg, "kafka", "embedded");
    assert_value(&cfg, "metrics", "(null)");
    assert_value(&cfg, "holder", "(null)");
    assert_value(&cfg, "source", "(null)");   /* derived from the database */
    assert_value(&cfg, "once", "0");
    assert_value(&cfg, "batch_size", "1000");
    assert_value(&cfg, "max_inflight", "20000");
    assert_value(&cfg, "poll_interval_ms", "1000");
    assert_value(&cfg, "lease_ttl_ms", "10000");
    assert_value(&cfg, "max_attempts", "5");
    assert_value(&cfg, "log_level", "info");
    assert_value(&cfg, "retention", "delete");
    assert_value(&cfg, "kafka_props_count", "0");
    relay_config_free(&cfg);
}

static void file_then_env_then_flags(void **state)
{
    relay_config cfg;
    const char *file = DATA "/valid/full.yaml";

    /* The file alone. */
    LOAD_OK(&cfg, "--config", file);
    assert_value(&cfg, "db", "host=/tmp/x port=5432 dbname=app user=relay");
    assert_value(&cfg, "kafka", "broker1:9092,broker2:9092");
    assert_value(&cfg, "metrics", "127.0.0.1:9187");
    assert_value(&cfg, "holder", "relay-a");
    relay_config_free(&cfg);

    /* The environment over the file; an empty variable counts as unset. */
    setenv("FERRY_DB", "dbname=from-env", 1);
    setenv("FERRY_KAFKA", "env:9092", 1);
    setenv("FERRY_METRICS", "0.0.0.0:1", 1);
    setenv("FERRY_HOLDER", "", 1);
    LOAD_OK(&cfg, "--config", file);
    assert_value(&cfg, "db", "dbname=from-env");
    assert_value(&cfg, "kafka", "env:9092");
    assert_value(&cfg, "metrics", "0.0.0.0:1");
    assert_value(&cfg, "holder", "relay-a");
    assert_value(&cfg, "source", "ferry://orders-service");   /* the file's */
    assert_value(&cfg, "kafka.compression.type", "lz4");
    relay_config_free(&cfg);

    /* Flags over both. */
    setenv("FERRY_HOLDER", "env-holder", 1);
    LOAD_OK(&cfg, "--config", file, "--db", "dbname=from-flag", "--kafka", "embedded",
            "--metrics", ":0", "--holder", "flag-holder", "--once");
    assert_value(&cfg, "db", "dbname=from-flag");
    assert_value(&cfg, "kafka", "embedded");
    assert_value(&cfg, "metrics", ":0");
    assert_value(&cfg, "holder", "flag-holder");
    assert_value(&cfg, "once", "1");
    assert_value(&cfg, "batch_size", "1000");
    relay_config_free(&cfg);

    /* The environment alone, no file. */
    LOAD_OK(&cfg, "--once");
    assert_value(&cfg, "db", "dbname=from-env");
    assert_value(&cfg, "holder", "env-holder");
    assert_value(&cfg, "source", "(null)");   /* derived from the database */
    relay_config_free(&cfg);
}

static void config_file_from_env(void **state)
{
    relay_config cfg;
    setenv("FERRY_CONFIG", DATA "/valid/full.yaml", 1);
    LOAD_OK(&cfg, "--once");
    assert_value(&cfg, "holder", "relay-a");
    relay_config_free(&cfg);

    /* --config wins over FERRY_CONFIG. */
    LOAD_OK(&cfg, "--config", DATA "/valid/minimal.yaml");
    assert_value(&cfg, "holder", "(null)");
    assert_value(&cfg, "kafka", "localhost:9092");
    relay_config_free(&cfg);

    setenv("FERRY_CONFIG", DATA "/no-such-file.yaml", 1);
    LOAD_FAILS(DATA "/no-such-file.yaml: could not open the config file (named by FERRY_CONFIG): "
               "No such file or directory", "--once");
}

static void set_overrides_file(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--config", DATA "/valid/full.yaml", "--set", "batch_size=10",
            "--set", "batch_size=20", "--set", "max_inflight=20", "--set", "poll_interval_ms=10",
            "--set", "lease_ttl_ms=3600000", "--set", "max_attempts=1", "--set", "log_level=debug",
            "--set", "retention=mark", "--set", "log_level=error");
    assert_value(&cfg, "batch_size", "20");
    assert_value(&cfg, "max_inflight", "20");
    assert_value(&cfg, "poll_interval_ms", "10");
    assert_value(&cfg, "lease_ttl_ms", "3600000");
    assert_value(&cfg, "max_attempts", "1");
    assert_value(&cfg, "log_level", "error");
    assert_value(&cfg, "retention", "mark");
    relay_config_free(&cfg);
}

static void set_errors(void **state)
{
#define BASE "--db", "x", "--kafka", "embedded"
    LOAD_FAILS("--set batch_size=0: must be between 1 and 100000", BASE, "--set", "batch_size=0");
    LOAD_FAILS("--set batch_size=100001: must be between 1 and 100000", BASE,
               "--set", "batch_size=100001");
    LOAD_FAILS("--set batch_size=-1: must be between 1 and 100000", BASE, "--set", "batch_size=-1");
    LOAD_FAILS("--set lease_ttl_ms=99999999999999999999: must be between 1000 and 3600000", BASE,
               "--set", "lease_ttl_ms=99999999999999999999");
    LOAD_FAILS("--set batch_size=12abc: expected a decimal integer, not \"12abc\"", BASE,
               "--set", "batch_size=12abc");
    LOAD_FAILS("--set batch_size= 12: expected a decimal integer", BASE, "--set", "batch_size= 12");
    LOAD_FAILS("--set batch_size=: expected a decimal integer", BASE, "--set", "batch_size=");
    LOAD_FAILS("--set batch_size=0x10: expected a decimal integer", BASE, "--set", "batch_size=0x10");
    LOAD_FAILS("--set batch_size: expected NAME=VALUE", BASE, "--set", "batch_size");
    LOAD_FAILS("--set nope=1: unknown setting \"nope\" (one of db, kafka, metrics, holder, "
               "source, batch_size, max_inflight, poll_interval_ms, lease_ttl_ms, max_attempts, "
               "stuck_ms, stop_grace_ms, log_level, retention, outbox_source)",
               BASE, "--set", "nope=1");
    LOAD_FAILS("--set db=: must not be empty", BASE, "--set", "db=");
    LOAD_FAILS("--set retention=keep: invalid value \"keep\" (expected delete or mark)", BASE,
               "--set", "retention=keep");
    LOAD_FAILS("--set log_level=2: invalid value \"2\" (expected error, warn, info or debug)",
               BASE, "--set", "log_level=2");
    LOAD_FAILS("--batch-size: must be between 1 and 100000", BASE, "--batch-size", "0");
    LOAD_FAILS("--log-level: invalid value \"loud\"", BASE, "--log-level", "loud");
    LOAD_FAILS("--max-inflight: must be at least batch_size (1000)", BASE,
               "--max-inflight", "999");
    LOAD_FAILS("--set max_inflight=999: must be at least batch_size (1000)", BASE,
               "--set", "max_inflight=999");
    LOAD_FAILS("--set batch_size=30000: must be at most max_inflight (20000)", BASE,
               "--set", "batch_size=30000");
    /* The file's max_inflight is to blame when a flag raises batch_size past it. */
    LOAD_FAILS("full.yaml:9:15: max_inflight: must be at least batch_size (30000)",
               "--config", DATA "/valid/full.yaml", "--set", "batch_size=30000");
#undef BASE
}

static void kafka_props_from_flags(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--config", DATA "/valid/full.yaml", "--kafka-prop", "compression.type=zstd",
            "--kafka-prop", "linger.ms=5", "--kafka-prop", "ssl.key.password=a=b",
            "--kafka-prop", "client.id=");
    assert_value(&cfg, "kafka_props_count", "8");
    assert_value(&cfg, "kafka.compression.type", "zstd");
    assert_value(&cfg, "kafka.security.protocol", "SASL_SSL");
    assert_value(&cfg, "kafka.linger.ms", "5");
    assert_value(&cfg, "kafka.ssl.key.password", "a=b");
    assert_value(&cfg, "kafka.client.id", "");
    assert_value(&cfg, "kafka", "broker1:9092,broker2:9092");
    relay_config_free(&cfg);

    /* bootstrap.servers is cfg->kafka, never a property; the last flag wins. */
    LOAD_OK(&cfg, "--db", "x", "--kafka", "a:1", "--kafka-prop", "bootstrap.servers=b:2");
    assert_value(&cfg, "kafka", "b:2");
    assert_value(&cfg, "kafka_props_count", "0");
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka-prop", "bootstrap.servers=b:2", "--kafka", "a:1");
    assert_value(&cfg, "kafka", "a:1");
    relay_config_free(&cfg);
}

/* The source: table by default; --outbox-source and --set outbox_source
 * say wal, the last one given winning; anything else is refused. */
static void outbox_source_by_flag_and_setting(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--outbox-source", "wal");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_WAL);
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--outbox-source", "wal", "--set",
            "outbox_source=table");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    relay_config_free(&cfg);
    LOAD_FAILS("expected table or wal", "--db", "x", "--kafka", "embedded",
               "--outbox-source", "WAL");
    LOAD_FAILS("expected table or wal", "--db", "x", "--kafka", "embedded", "--set",
               "outbox_source=x");
}

/* Issue 14's spelling, --source wal and source: wal, chooses the outbox
 * source: "wal" and "table" name no CloudEvents source worth having, and
 * read as one the relay would silently poll the table. Any other value
 * is still ce_source. */
static void source_wal_or_table_chooses_the_outbox_source(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--source", "wal");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_WAL);
    assert_value(&cfg, "source", "(null)");   /* ce_source: still the database's */
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--outbox-source", "wal", "--set",
            "source=table");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--source", "/services/wal");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    assert_value(&cfg, "source", "/services/wal");
    relay_config_free(&cfg);
}

static void kafka_prop_errors(void **state)
{
#define BASE "--db", "x", "--kafka", "embedded"
    LOAD_FAILS("--kafka-prop acks: expected NAME=VALUE", BASE, "--kafka-prop", "acks");
    LOAD_FAILS("--kafka-prop =1: invalid property name", BASE, "--kafka-prop", "=1");
    LOAD_FAILS("--kafka-prop client id=x: invalid property name", BASE,
               "--kafka-prop", "client id=x");
    LOAD_FAILS("--kafka-prop bootstrap.servers=: must not be empty", BASE,
               "--kafka-prop", "bootstrap.servers=");
    /* librdkafka's own check, at load time (exit 2), not at start. */
    LOAD_FAILS("kafka property no.such.prop: No such configuration property", BASE,
               "--kafka-prop", "no.such.prop=1");
    LOAD_FAILS("kafka property linger.ms: ", BASE, "--kafka-prop", "linger.ms=soon");
    /* A transactional producer takes no produce() outside a transaction:
     * every message went to the dead letters (an outside audit). */
    LOAD_FAILS("--kafka-prop transactional.id: kafka property transactional.id: ferry-relay "
               "produces idempotently, not in Kafka transactions", BASE,
               "--kafka-prop", "transactional.id=x");
    /* Fine alone, not with the fixed ones: refused here (exit 2), naming
     * the property and its place, not when the producer is made (exit 1,
     * after the database). */
    LOAD_FAILS("--kafka-prop max.in.flight.requests.per.connection: kafka property "
               "max.in.flight.requests.per.connection: `max.in.flight` must be set <= 5", BASE,
               "--kafka-prop", "linger.ms=1", "--kafka-prop",
               "max.in.flight.requests.per.connection=100");
    LOAD_FAILS("--kafka-prop retries: kafka property retries: ", BASE,
               "--kafka-prop", "retries=0");
    /* The producer made to check them acts on nothing as it starts: no
     * kinit run for GSSAPI (a reviewer: it would have run at every load). */
    char *mark = tu_temp_file("");
    assert_int_equal(unlink(mark), 0);
    char *kinit = tu_sprintf("sasl.kerberos.kinit.cmd=touch %s", mark);
    relay_config cfg0;
    LOAD_OK(&cfg0, BASE, "--kafka-prop", "security.protocol=SASL_PLAINTEXT",
            "--kafka-prop", "sasl.mechanisms=GSSAPI", "--kafka-prop", kinit);
    relay_config_free(&cfg0);
    assert_int_equal(access(mark, F_OK), -1);
    free(kinit);
    free(mark);
#undef BASE

    /* 128 properties fit, the 129th does not. */
    static char props[RELAY_KAFKA_PROPS_MAX + 1][32];
    const char *args[2 * (RELAY_KAFKA_PROPS_MAX + 1) + 8];
    size_t n = 0;
    args[n++] = "--db";
    args[n++] = "x";
    args[n++] = "--kafka";
    args[n++] = "embedded";
    for (int i = 0; i < RELAY_KAFKA_PROPS_MAX; i++) {
        snprintf(props[i], sizeof props[i], "x.prop%d=%d", i, i);
        args[n++] = "--kafka-prop";
        args[n++] = props[i];
    }
    args[n] = NULL;
    /* They are made up: librdkafka's check, past the count, refuses the
     * first. */
    relay_config cfg;
    char err[512];
    assert_int_equal(load_v(&cfg, err, sizeof err, args), -1);
    if (!strstr(err, "kafka property x.prop0: No such configuration property"))
        fail_msg("128 properties: %s", err);

    snprintf(props[RELAY_KAFKA_PROPS_MAX], sizeof props[0], "one.more=1");
    args[n++] = "--kafka-prop";
    args[n++] = props[RELAY_KAFKA_PROPS_MAX];
    args[n] = NULL;
    assert_int_equal(load_v(&cfg, err, sizeof err, args), -1);
    assert_non_null(strstr(err, "--kafka-prop one.more=1: more than 128 kafka properties"));
}

/* A holder longer than its session name can hold is refused: two such
 * names alike in their first 51 bytes were one live relay to the check
 * (an outside audit). */
static void a_holder_too_long_for_its_session_name_is_refused(void **state)
{
    char h[64];
    memset(h, 'h', 51);
    h[51] = '\0';
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "x", "--kafka", "e:1", "--holder", h);
    relay_config_free(&cfg);
    h[51] = 'b';
    h[52] = '\0';
    LOAD_FAILS("--holder: is longer than 51 bytes", "--db", "x", "--kafka", "e:1", "--holder", h);
    LOAD_FAILS("--holder: must be printable ASCII", "--db", "x", "--kafka", "e:1", "--holder",
               "r\xc3\xa9lais");
    /* A refused property's place names it, never its value (a password,
     * mistyped). */
    relay_config cfg2;
    char err[1024];
    assert_int_equal(load_v(&cfg2, err, sizeof err,
                            ARGS("--db", "x", "--kafka", "e:1", "--kafka-prop",
                                 "sasl.pasword=s3cret")), -1);
    if (strstr(err, "s3cret") || !strstr(err, "--kafka-prop sasl.pasword"))
        fail_msg("%s", err);
}

static void bad_flags(void **state)
{
    LOAD_FAILS("unknown or ambiguous option \"--nope\"", "--db", "x", "--nope");
    LOAD_FAILS("unknown or ambiguous option \"--kaf\"", "--db", "x", "--kaf", "embedded");
    LOAD_FAILS("unknown option \"-x\"", "--db", "x", "-x");
    LOAD_FAILS("unexpected argument \"stray\"", "--db", "x", "stray", "--kafka", "embedded");
    LOAD_FAILS("unexpected argument \"stray\"", "--db", "x", "--", "stray");
    LOAD_FAILS("--db: needs a value", "--kafka", "embedded", "--db");
    LOAD_FAILS("--once=yes: --once takes no value", "--db", "x", "--once=yes");
    LOAD_FAILS("--db: must not be empty", "--kafka", "embedded", "--db", "");
    LOAD_FAILS("--holder: must not be empty", "--db", "x", "--kafka", "embedded", "--holder=");
    LOAD_FAILS("--metrics: expected HOST:PORT, not \"localhost\"", "--db", "x", "--kafka",
               "embedded", "--metrics", "localhost");
    LOAD_FAILS("--metrics: the port must be a number from 0 to 65535, not \"h:65536\"", "--db", "x",
               "--kafka", "embedded", "--metrics", "h:65536");
    LOAD_FAILS("--config: must not be empty", "--config", "");
}

static void env_errors(void **state)
{
    setenv("FERRY_METRICS", "nope", 1);
    LOAD_FAILS("FERRY_METRICS: expected HOST:PORT, not \"nope\"", "--db", "x", "--kafka",
               "embedded");
    /* A flag does not excuse a bad variable: it is still an error to fix. */
    LOAD_FAILS("FERRY_METRICS: expected HOST:PORT", "--db", "x", "--kafka", "embedded",
               "--metrics", ":0");
    unsetenv("FERRY_METRICS");
    setenv("FERRY_BATCH_SIZE", "12abc", 1);
    LOAD_FAILS("FERRY_BATCH_SIZE: expected a decimal integer, not \"12abc\"", "--db", "x",
               "--kafka", "embedded");
    unsetenv("FERRY_BATCH_SIZE");
    setenv("FERRY_RETENTION", "keep", 1);
    LOAD_FAILS("FERRY_RETENTION: invalid value \"keep\" (expected delete or mark)", "--db", "x",
               "--kafka", "embedded");
    unsetenv("FERRY_RETENTION");
    setenv("FERRY_KAFKA_PROP_", "x", 1);
    LOAD_FAILS("FERRY_KAFKA_PROP_: expected FERRY_KAFKA_PROP_NAME", "--db", "x", "--kafka",
               "embedded");
}

static void db_and_kafka_required(void **state)
{
    LOAD_FAILS("no database: give --db CONNINFO, set FERRY_DB, or set db: in", "--kafka", "e:1");
    LOAD_FAILS("no Kafka: give --kafka BOOTSTRAP (\"embedded\" for an in-process mock cluster), "
               "set FERRY_KAFKA, or set kafka: bootstrap.servers: in " DATA "/invalid/missing-kafka.yaml",
               "--config", DATA "/invalid/missing-kafka.yaml");
    setenv("FERRY_KAFKA", "embedded", 1);
    setenv("FERRY_DB", "dbname=app", 1);
    relay_config cfg;
    LOAD_OK(&cfg, "--once");
    relay_config_free(&cfg);
}

static void empty_file_is_all_defaults(void **state)
{
    static const char *const files[] = {
        DATA "/invalid/empty.yaml", DATA "/invalid/comments-only.yaml",
        DATA "/invalid/null-document.yaml",
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        relay_config cfg;
        LOAD_OK(&cfg, "--config", files[i], "--db", "x", "--kafka", "embedded");
        assert_value(&cfg, "source", "(null)");   /* derived from the database */
        assert_value(&cfg, "batch_size", "1000");
        assert_value(&cfg, "kafka_props_count", "0");
        relay_config_free(&cfg);
    }
}

static void missing_or_unreadable_file(void **state)
{
    LOAD_FAILS(DATA "/nope.yaml: could not open the config file: No such file or directory",
               "--config", DATA "/nope.yaml", "--db", "x", "--kafka", "embedded");
    LOAD_FAILS(DATA ": could not read the config file: Is a directory",
               "--config", DATA, "--db", "x", "--kafka", "embedded");
}

/* A file of exactly size bytes: valid settings, padded with a comment. */
static void write_padded(const char *path, size_t size)
{
    static const char head[] = "db: dbname=app\nkafka: {bootstrap.servers: embedded}\n#";
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(head, 1, sizeof head - 1, f), sizeof head - 1);
    for (size_t n = sizeof head - 1; n < size - 1; n++)
        assert_int_equal(fputc('x', f), 'x');
    assert_int_equal(fputc('\n', f), '\n');
    assert_int_equal(fclose(f), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((size_t)st.st_size, size);
}

static void file_size_is_capped(void **state)
{
    char path[] = "/tmp/ferry-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);

    relay_config cfg;
    write_padded(path, FILE_MAX);
    LOAD_OK(&cfg, "--config", path);
    assert_value(&cfg, "kafka", "embedded");
    relay_config_free(&cfg);

    write_padded(path, FILE_MAX + 1);
    char want[512];
    snprintf(want, sizeof want, "%s: the config file is larger than %d bytes; refusing to read it",
             path, FILE_MAX);
    LOAD_FAILS(want, "--config", path);

    /* The same through a pipe, where no size is known in advance. */
    char fdpath[64];
    FILE *p = tu_cat_pipe(path, fdpath, sizeof fdpath);
    LOAD_FAILS("is larger than 1048576 bytes", "--config", fdpath);
    pclose(p);

    assert_int_equal(unlink(path), 0);
}

/* getopt's globals, the file pass and the flags all start over each call. */
static void load_twice_in_one_process(void **state)
{
    relay_config a, b;
    LOAD_OK(&a, "--config", DATA "/valid/full.yaml", "--set", "batch_size=7");
    /* A failure midway through argv, and one inside a short option group. */
    LOAD_FAILS("unknown or ambiguous option \"--bad\"", "--db", "x", "--bad", "--once");
    LOAD_FAILS("unknown option \"-q\"", "-qz", "--db", "x");
    LOAD_OK(&b, "--config", DATA "/valid/minimal.yaml", "--holder", "b");
    assert_value(&a, "batch_size", "7");
    assert_value(&a, "holder", "relay-a");
    assert_value(&b, "batch_size", "1000");
    assert_value(&b, "holder", "b");
    assert_value(&b, "once", "0");
    assert_value(&b, "kafka_props_count", "0");
    relay_config_free(&a);
    relay_config_free(&b);
    LOAD_OK(&a, "--db", "y", "--kafka", "embedded", "--once");
    assert_value(&a, "db", "y");
    assert_value(&a, "once", "1");
    relay_config_free(&a);
}

static void free_accepts_zero_and_null(void **state)
{
    relay_config cfg;
    memset(&cfg, 0, sizeof cfg);
    relay_config_free(&cfg);
    relay_config_free(&cfg);
    relay_config_free(NULL);
    assert_true(is_zero(&cfg));

    /* A short error buffer is cut, not overrun; none at all is allowed. */
    char small[8];
    assert_int_equal(load_v(&cfg, small, sizeof small, ARGS("--nope")), -1);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(load_v(&cfg, NULL, 0, ARGS("--nope")), -1);
}

/* ------------------------------------------------------------ three ways */

/* A valid value of setting name other than its default, as text. */
static void sample_value(const char *name, char *buf, size_t len)
{
    static const struct {
        const char *name, *value;
    } fixed[] = {
        {"db", "dbname=sample"}, {"kafka", "sample:9092"}, {"metrics", "127.0.0.1:0"},
        {"holder", "sample-holder"}, {"source", "ferry://sample"}, {"log_level", "debug"},
        {"retention", "mark"}, {"outbox_source", "wal"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(fixed[i].name, name) == 0) {
            snprintf(buf, len, "%s", fixed[i].value);
            return;
        }
    }
    /* A number: its default plus one, which is in range for every one and
     * keeps max_inflight >= batch_size. */
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded");
    char def[64];
    if (!render(&cfg, name, def, sizeof def))
        fail_msg("setting %s: the test cannot render it; add it to render()", name);
    relay_config_free(&cfg);
    snprintf(buf, len, "%ld", strtol(def, NULL, 10) + 1);
}

/* A file with several mistakes: each is reported, one a line, in the
 * order of the file, as "FILE:LINE:COLUMN: KEY: ..." (lib/yaml_walk.c,
 * as for saga definitions and the reconciler's files), not only the
 * first; the good values around them do not hide them. */
static void every_error_in_a_file_is_reported_with_its_place(void **state)
{
    (void)state;
    char path[] = "/tmp/ferry-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tu_write_file(path, "batch_size: 12abc\n"
                     "log_level: loud\n"
                     "db: dbname=app\n"
                     "unknown_thing: 1\n"
                     "kafka:\n"
                     "  compression.type:\n"
                     "  bootstrap.servers: localhost:9092\n"
                     "max_attempts: \"5\"\n"
                     "metrics: [1, 2]\n");
    relay_config cfg;
    char err[2048];
    int rc = load_v(&cfg, err, sizeof err, ARGS("--config", path));
    unlink(path);
    assert_int_not_equal(rc, 0);
    const char *const want[] = {
        ":1:13: batch_size: expected a decimal integer, not \"12abc\"",
        ":2:12: log_level: invalid value \"loud\" (expected error, warn, info or debug)",
        ":4:1: unknown_thing: unknown key \"unknown_thing\"",
        ":6:20: kafka: compression.type: no value",
        ":8:15: max_attempts: expected a decimal integer, not a quoted string",
        ":9:1: metrics: expected a single value, not a sequence",
    };
    const char *line = err;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t n = strcspn(line, "\n");
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%s:", path);
        if (strncmp(line, prefix, strlen(prefix) - 1) != 0 || !strstr(line, want[i]) ||
            (size_t)(strstr(line, want[i]) - line) > n)
            fail_msg("error %zu: expected \"%s%s\" on its own line, got:\n%s", i + 1, path,
                     want[i], err);
        line += n + (line[n] == '\n');
    }
    assert_string_equal(line, "");    /* and nothing else */
}

/* Every setting the loader has (its own list, so that a new one is
 * covered without an edit here), set in the file, by its variable, by
 * its flag and by --set, each time over a base that sets db and kafka. */
static void every_setting_through_file_env_and_flags(void **state)
{
    char path[] = "/tmp/ferry-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char base[] = "/tmp/ferry-test-config-base-XXXXXX";
    fd = mkstemp(base);
    assert_true(fd >= 0);
    close(fd);
    tu_write_file(base, "db: dbname=base\nkafka: {bootstrap.servers: \"base:1\"}\n");

    size_t n = relay_config_setting_count();
    assert_true(n >= 14);
    for (size_t i = 0; i < n; i++) {
        const char *name = relay_config_setting_name(i);
        const char *env = relay_config_setting_env(i);
        const char *flag = relay_config_setting_flag(i);
        char value[128], text[512], set[160];
        sample_value(name, value, sizeof value);
        relay_config cfg;

        /* The file. */
        if (strcmp(name, "kafka") == 0)
            snprintf(text, sizeof text, "db: x\nkafka: {bootstrap.servers: \"%s\"}\n", value);
        else if (strcmp(name, "db") == 0)
            snprintf(text, sizeof text, "db: \"%s\"\nkafka: {bootstrap.servers: e}\n", value);
        else
            snprintf(text, sizeof text, "db: x\nkafka: {bootstrap.servers: e}\n%s: %s\n", name,
                     value);
        tu_write_file(path, text);
        LOAD_OK(&cfg, "--config", path);
        assert_value(&cfg, name, value);
        relay_config_free(&cfg);

        /* The environment, over the file. */
        assert_non_null(env);
        setenv(env, value, 1);
        LOAD_OK(&cfg, "--config", base);
        assert_value(&cfg, name, value);
        relay_config_free(&cfg);
        unsetenv(env);

        /* The flag, and --set, over the file. */
        assert_non_null(flag);
        LOAD_OK(&cfg, "--config", base, flag, value);
        assert_value(&cfg, name, value);
        relay_config_free(&cfg);
        snprintf(set, sizeof set, "%s=%s", name, value);
        LOAD_OK(&cfg, "--config", base, "--set", set);
        assert_value(&cfg, name, value);
        relay_config_free(&cfg);
    }
    assert_int_equal(unlink(path), 0);
    assert_int_equal(unlink(base), 0);
}

/* No key of the file is settable there alone. */
static void every_file_key_is_a_setting(void **state)
{
    size_t n = 0;
    for (const char *key; (key = relay_config_file_key(n)) != NULL; n++)
        if (!relay_config_file_key_is_setting(key))
            fail_msg("the file's key \"%s\" has no variable and no flag", key);
    assert_true(n >= relay_config_setting_count());
}

/* FERRY_KAFKA_PROP_<NAME>, as Confluent's images read CONNECT_<NAME>:
 * "_" a dot, "__" an underscore, "___" a dash. Every property of the
 * librdkafka linked must come back from its variable's name. */
static void kafka_props_from_env(void **state)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    size_t cnt = 0;
    const char **dump = rd_kafka_conf_dump(conf, &cnt);
    assert_true(cnt > 100);
    char bad[128] = "";
    bool underscore = false;
    for (size_t i = 0; i < cnt && !bad[0]; i += 2) {
        if (dump[i + 1][0] == '\0')     /* an empty variable is unset */
            continue;
        char var[160] = "FERRY_KAFKA_PROP_";
        size_t n = strlen(var);
        for (const char *c = dump[i]; *c && n + 4 < sizeof var; c++) {
            const char *put = *c == '.' ? "_" : *c == '_' ? "__" : *c == '-' ? "___" : NULL;
            if (put) {
                memcpy(var + n, put, strlen(put));
                n += strlen(put);
            } else {
                var[n++] = *c >= 'a' && *c <= 'z' ? (char)(*c - 'a' + 'A') : *c;
            }
        }
        var[n] = '\0';
        underscore = underscore || strchr(dump[i], '_');
        /* Its default value, which librdkafka takes back, except for the
         * callbacks: then the error must name the property. */
        setenv(var, dump[i + 1], 1);
        relay_config cfg;
        char err[512], named[160];
        int rc = load_v(&cfg, err, sizeof err, ARGS("--db", "x", "--kafka", "e:1"));
        unsetenv(var);
        snprintf(named, sizeof named, "kafka property %s", dump[i]);
        if (rc != 0 && !strstr(err, named))
            snprintf(bad, sizeof bad, "%s: %s", var, err);
        else if (rc == 0 && !strstr(dump[i], "bootstrap.servers") &&
                 !strstr(dump[i], "metadata.broker.list") &&
                 (cfg.kafka_props_count != 1 || strcmp(cfg.kafka_props[0].name, dump[i]) != 0))
            snprintf(bad, sizeof bad, "%s is not %s", var, dump[i]);
        if (rc == 0)
            relay_config_free(&cfg);
    }
    rd_kafka_conf_dump_free(dump, cnt);
    rd_kafka_conf_destroy(conf);
    if (bad[0])
        fail_msg("%s", bad);
    assert_true(underscore);          /* enabled_events: the case "__" is for */

    relay_config cfg;
    setenv("FERRY_KAFKA_PROP_COMPRESSION_TYPE", "zstd", 1);
    setenv("FERRY_KAFKA_PROP_BOOTSTRAP_SERVERS", "env:1", 1);
    LOAD_OK(&cfg, "--config", DATA "/valid/full.yaml");
    assert_value(&cfg, "kafka.compression.type", "zstd");
    assert_value(&cfg, "kafka", "env:1");
    relay_config_free(&cfg);
    /* The flag over the variable. */
    LOAD_OK(&cfg, "--config", DATA "/valid/full.yaml", "--kafka-prop", "compression.type=lz4");
    assert_value(&cfg, "kafka.compression.type", "lz4");
    relay_config_free(&cfg);
    /* Empty is unset, as for the settings. */
    setenv("FERRY_KAFKA_PROP_CLIENT_ID", "", 1);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "e:1");
    assert_value(&cfg, "kafka.client.id", "(null)");
    assert_value(&cfg, "kafka.compression.type", "zstd");
    relay_config_free(&cfg);
    setenv("FERRY_KAFKA_PROP_ACKS", "1", 1);
    LOAD_FAILS("FERRY_KAFKA_PROP_ACKS: kafka property acks=1: ferry-relay needs acks=all",
               "--db", "x");
    unsetenv("FERRY_KAFKA_PROP_ACKS");
}

/* A Kafka property refused names the place that set it, as every other
 * setting's error does, and every one refused is said, not the first. */
static void kafka_prop_errors_name_their_place(void **state)
{
    LOAD_FAILS("--kafka-prop acks: kafka property acks=1: ferry-relay needs acks=all",
               "--db", "x", "--kafka", "e:1", "--kafka-prop", "acks=1");
    char *yaml = tu_temp_file("db: x\n"
                              "kafka:\n"
                              "  bootstrap.servers: b:1\n"
                              "  partitioner: random\n"
                              "  no.such.prop: 1\n"
                              "  acks: 1\n");
    relay_config cfg;
    char err[2048];
    assert_int_equal(load_v(&cfg, err, sizeof err, ARGS("--config", yaml)), -1);
    char want[3][512];
    snprintf(want[0], sizeof want[0], "%s:4:3: kafka: partitioner: kafka property "
             "partitioner=random: ferry-relay needs a partitioner", yaml);
    snprintf(want[1], sizeof want[1], "\n%s:5:3: kafka: no.such.prop: kafka property "
             "no.such.prop: No such configuration property", yaml);
    snprintf(want[2], sizeof want[2], "\n%s:6:3: kafka: acks: kafka property acks=1: "
             "ferry-relay needs acks=all", yaml);
    for (int i = 0; i < 3; i++)
        if (!strstr(err, want[i]))
            fail_msg("expected \"%s\" in \"%s\"", want[i], err);
    /* A flag that sets it again is the place named. */
    assert_int_equal(load_v(&cfg, err, sizeof err,
                            ARGS("--config", yaml, "--kafka-prop", "acks=0",
                                 "--kafka-prop", "partitioner=murmur2_random",
                                 "--kafka-prop", "no.such.prop=2")), -1);
    if (!strstr(err, "--kafka-prop acks: kafka property acks=0") ||
        !strstr(err, "--kafka-prop no.such.prop: kafka property no.such.prop") ||
        strstr(err, "partitioner"))
        fail_msg("overridden by flags: %s", err);
    tu_temp_remove(yaml);
}

/* ------------------------------------------------------------ references */

static void secret_references_in_any_value(void **state)
{
    char *secret = tu_temp_file("s3cret\n");
    char *yaml = tu_temp_file("");
    char text[1024], ref[256], arg[300];
    snprintf(ref, sizeof ref, "${file:%s}", secret);
    setenv("FERRY_TEST_PW", "envpw", 1);
    setenv("FERRY_TEST_BATCH", "77", 1);

    /* In the file: a string, a number, a name and a kafka property. */
    snprintf(text, sizeof text,
             "db: \"user=relay password=%s\"\n"
             "batch_size: ${env:FERRY_TEST_BATCH}\n"
             "log_level: ${env:FERRY_TEST_LEVEL}\n"
             "holder: \"a $${literal} and $5\"\n"
             "kafka:\n  bootstrap.servers: b:1\n  sasl.password: ${env:FERRY_TEST_PW}\n", ref);
    tu_write_file(yaml, text);
    setenv("FERRY_TEST_LEVEL", "warn", 1);
    relay_config cfg;
    LOAD_OK(&cfg, "--config", yaml);
    assert_value(&cfg, "db", "user=relay password=s3cret");   /* one newline dropped */
    assert_value(&cfg, "batch_size", "77");
    assert_value(&cfg, "log_level", "warn");
    assert_value(&cfg, "holder", "a ${literal} and $5");
    assert_value(&cfg, "kafka.sasl.password", "envpw");
    relay_config_free(&cfg);

    /* In a variable and in flags. */
    setenv("FERRY_HOLDER", ref, 1);
    snprintf(arg, sizeof arg, "ssl.key.password=%s", ref);
    LOAD_OK(&cfg, "--db", "${env:FERRY_TEST_PW}", "--kafka", "e:1", "--kafka-prop", arg);
    assert_value(&cfg, "holder", "s3cret");
    assert_value(&cfg, "db", "envpw");
    assert_value(&cfg, "kafka.ssl.key.password", "s3cret");
    relay_config_free(&cfg);
    unsetenv("FERRY_HOLDER");

    /* Missing: refused, naming the setting and the reference (never a
     * value), wherever the reference is. */
    unsetenv("FERRY_TEST_LEVEL");
    char want[512];
    snprintf(want, sizeof want, "%s:3:12: log_level: ${env:FERRY_TEST_LEVEL}: the variable is "
             "not set", yaml);
    LOAD_FAILS(want, "--config", yaml);
    LOAD_FAILS("--db: ${env:FERRY_NO_SUCH_VAR}: the variable is not set", "--kafka", "e:1",
               "--db", "${env:FERRY_NO_SUCH_VAR}");
    LOAD_FAILS("--set db=${file:/no/such/file}: ${file:/no/such/file}: could not open the file: "
               "No such file or directory", "--kafka", "e:1", "--set", "db=${file:/no/such/file}");
    LOAD_FAILS("--kafka-prop sasl.password=${env:FERRY_NO_SUCH_VAR}: ${env:FERRY_NO_SUCH_VAR}: "
               "the variable is not set", "--db", "x", "--kafka", "e:1",
               "--kafka-prop", "sasl.password=${env:FERRY_NO_SUCH_VAR}");
    setenv("FERRY_KAFKA_PROP_SASL_PASSWORD", "${file:/no/such/file}", 1);
    LOAD_FAILS("FERRY_KAFKA_PROP_SASL_PASSWORD: ${file:/no/such/file}: could not open the file",
               "--db", "x", "--kafka", "e:1");
    unsetenv("FERRY_KAFKA_PROP_SASL_PASSWORD");
    setenv("FERRY_SOURCE", "${file:relative}", 1);
    LOAD_FAILS("FERRY_SOURCE: ${file:relative}: the path must be absolute", "--db", "x",
               "--kafka", "e:1");
    unsetenv("FERRY_SOURCE");
    snprintf(text, sizeof text, "kafka:\n  bootstrap.servers: b:1\n  sasl.password: "
             "${env:FERRY_NO_SUCH_VAR}\n");
    tu_write_file(yaml, text);
    snprintf(want, sizeof want, "%s:3:18: kafka: sasl.password: ${env:FERRY_NO_SUCH_VAR}: the "
             "variable is not set", yaml);
    LOAD_FAILS(want, "--config", yaml, "--db", "x");

    /* Typos are refused, not passed on as a password. */
    LOAD_FAILS("--db: ${nev:X}: expected ${env:NAME} or ${file:/path}", "--kafka", "e:1",
               "--db", "${nev:X}");
    LOAD_FAILS("--db: \"${env:X\": a reference without its closing \"}\"", "--kafka", "e:1",
               "--db", "${env:X");
    LOAD_FAILS("--db: ${env:}: expected ${env:NAME}", "--kafka", "e:1", "--db", "${env:}");
    LOAD_FAILS("--db: ${env:A-B}: not a variable name", "--kafka", "e:1", "--db", "${env:A-B}");

    /* What a reference brings in is not expanded again; a file's size is
     * capped. */
    setenv("FERRY_TEST_PW", "${env:FERRY_TEST_BATCH}", 1);
    LOAD_OK(&cfg, "--db", "${env:FERRY_TEST_PW}", "--kafka", "e:1");
    assert_value(&cfg, "db", "${env:FERRY_TEST_BATCH}");
    relay_config_free(&cfg);
    write_padded(secret, 64 * 1024 + 1);
    LOAD_FAILS("the file is larger than 65536 bytes", "--kafka", "e:1", "--db", ref);

    unsetenv("FERRY_TEST_PW");
    unsetenv("FERRY_TEST_BATCH");
    assert_int_equal(unlink(secret), 0);
    assert_int_equal(unlink(yaml), 0);
    free(secret);
    free(yaml);
}

/* The value of keyword kw in conninfo, as libpq reads it (NULL when it
 * does not parse); the caller frees it. */
static char *conninfo_value(const char *conninfo, const char *kw)
{
    char *perr = NULL;
    PQconninfoOption *o = PQconninfoParse(conninfo, &perr);
    PQfreemem(perr);
    char *v = NULL;
    for (PQconninfoOption *p = o; p && p->keyword; p++)
        if (strcmp(p->keyword, kw) == 0 && p->val)
            v = strdup(p->val);
    PQconninfoFree(o);
    return v;
}

/*
 * What a reference brings into a value of the connection string is
 * escaped, so that a space or a quote in it keeps it one value: before, libpq's error about the broken
 * string quoted a piece of the password into the log (an outside audit:
 * missing "=" after "TOPSECRETPART"). A URI takes it as it is. And
 * status, migrate and slot resolve references in --db and FERRY_DB as run
 * does: they took "${env:X}" as a database name.
 */
static void secrets_stay_one_value_of_the_connection_string(void **state)
{
    char *secret = tu_temp_file("hunter2 TOP'SECRET\\PART\n");
    const char *want = "hunter2 TOP'SECRET\\PART";
    char db[600];
    relay_config cfg;
    for (int i = 0; i < 2; i++) {
        if (i == 0)
            snprintf(db, sizeof db, "user=relay password=${file:%s} host=h", secret);
        else
            snprintf(db, sizeof db, "user=relay password = '${file:%s}' host=h", secret);
        LOAD_OK(&cfg, "--db", db, "--kafka", "e:1");
        char *pw = conninfo_value(cfg.db, "password"), *host = conninfo_value(cfg.db, "host");
        if (pw == NULL || strcmp(pw, want) != 0 || host == NULL || strcmp(host, "h") != 0)
            fail_msg("form %d: %s", i, cfg.db);
        free(pw);
        free(host);
        relay_config_free(&cfg);
    }
    /* Whatever a value holds, and wherever in the value the reference is,
     * it cannot end the value and start another keyword (a reviewer's
     * cases: the password sent to another host). */
    setenv("FERRY_TEST_EVIL", "x host=evil.example", 1);
    setenv("FERRY_TEST_A", "a", 1);
    setenv("FERRY_TEST_EMPTY", "", 1);
    static const struct {
        const char *db, *kw, *want;
    } cases[] = {
        {"host=db password=pre${env:FERRY_TEST_EVIL}", "password", "prex host=evil.example"},
        {"host=db password=pre${env:FERRY_TEST_EVIL}", "host", "db"},
        {"host=db password=${env:FERRY_TEST_A}${env:FERRY_TEST_EVIL}", "password",
         "ax host=evil.example"},
        {"host=db options=\\'x password = ${env:FERRY_TEST_EVIL}", "host", "db"},
        {"host=db password=${env:FERRY_TEST_EMPTY} dbname=d", "password", ""},
        {"host=db password=${env:FERRY_TEST_EMPTY} dbname=d", "dbname", "d"},
        {"postgresql://u:${env:FERRY_TEST_EVIL}@db/app", "password", "x host=evil.example"},
        {"postgresql://u:${env:FERRY_TEST_EVIL}@db/app", "host", "db"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        LOAD_OK(&cfg, "--db", cases[i].db, "--kafka", "e:1");
        char *v = conninfo_value(cfg.db, cases[i].kw);
        if (v == NULL || strcmp(v, cases[i].want) != 0)
            fail_msg("%s: %s is \"%s\" in %s", cases[i].db, cases[i].kw, v ? v : "(none)",
                     cfg.db);
        free(v);
        relay_config_free(&cfg);
    }
    /* A reference that is the whole string is the connection string. */
    setenv("FERRY_TEST_PW", "host=h dbname='a b'", 1);
    LOAD_OK(&cfg, "--db", "${env:FERRY_TEST_PW}", "--kafka", "e:1");
    assert_value(&cfg, "db", "host=h dbname='a b'");
    relay_config_free(&cfg);
    unsetenv("FERRY_TEST_EVIL");
    unsetenv("FERRY_TEST_A");
    unsetenv("FERRY_TEST_EMPTY");
    setenv("FERRY_TEST_PW", "p w", 1);

    unsetenv("FERRY_CONFIG");
    char *got = NULL;
    snprintf(db, sizeof db, "user=relay password=${file:%s} host=h", secret);
    assert_int_equal(relay_config_subcommand_db("status", db, NULL, &got), 0);
    char *pw = conninfo_value(got, "password");
    assert_non_null(pw);
    assert_string_equal(pw, want);
    free(pw);
    free(got);
    setenv("FERRY_DB", "dbname=${env:FERRY_TEST_PW}", 1);
    assert_int_equal(relay_config_subcommand_db("migrate", NULL, NULL, &got), 0);
    assert_string_equal(got, "dbname=p\\ w");
    free(got);
    setenv("FERRY_DB", "dbname=${env:FERRY_NO_SUCH_VAR}", 1);
    assert_int_equal(relay_config_subcommand_db("slot", NULL, NULL, &got), -1);
    unsetenv("FERRY_DB");
    unsetenv("FERRY_TEST_PW");
    assert_int_equal(unlink(secret), 0);
    free(secret);
}

/* ------------------------------------------------------------ README */

/* The README's table of the relay's librdkafka properties is the one in
 * daemon/config.h: a row for each, with its value and kind, and no other. */
static void readme_lists_the_fixed_and_default_kafka_properties(void **state)
{
    char *text = tu_slurp("README.md", NULL);
    assert_non_null(text);
    char *start = strstr(text, "<!-- kafka-props:");
    char *end = start ? strstr(start, "<!-- /kafka-props -->") : NULL;
    if (!start || !end)
        fail_msg("README.md: no <!-- kafka-props: ... --> table");
    *end = '\0';
    size_t want = 0;
    char row[256];
#define X_ROW(kind)                                                             \
    do {                                                                        \
        want++;                                                                 \
        if (!strstr(start, row))                                                \
            fail_msg("README.md's kafka-props table lacks the row \"%s\"", row); \
    } while (0)
#define X_FIXED(name, value) snprintf(row, sizeof row, "| `%s` | `%s` | fixed", name, value); X_ROW(fixed);
    RELAY_FIXED_KAFKA_PROPS(X_FIXED)
#define X_DEFAULT(name, value) snprintf(row, sizeof row, "| `%s` | `%s` | default", name, value); X_ROW(default);
    RELAY_DEFAULT_KAFKA_PROPS(X_DEFAULT)
#define X_DERIVED(name) snprintf(row, sizeof row, "| `%s` | ", name); X_ROW(derived);
    RELAY_DERIVED_KAFKA_PROPS(X_DERIVED)
#undef X_FIXED
#undef X_DEFAULT
#undef X_DERIVED
#undef X_ROW
    size_t rows = 0;
    for (char *p = start; (p = strstr(p, "\n| `")) != NULL; p++)
        rows++;
    if (rows != want)
        fail_msg("README.md's kafka-props table has %zu rows, daemon/config.h %zu", rows, want);
    free(text);
}

/* The sample make install puts in share/ferry loads, and has every key. */
static void the_sample_relay_yaml_loads_and_has_every_setting(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--config", "packaging/relay.yaml");
    assert_value(&cfg, "batch_size", "1000");
    /* The default ce_source (per database), not one name for every
     * service that copies the sample; a role that can log in. */
    assert_value(&cfg, "source", "(null)");
    assert_null(strstr(cfg.db, "user=ferry_relay"));
    relay_config_free(&cfg);
    char *text = tu_slurp("packaging/relay.yaml", NULL);
    assert_non_null(text);
    for (size_t i = 0; i < relay_config_setting_count(); i++) {
        char key[64];
        snprintf(key, sizeof key, "\n%s:", relay_config_setting_name(i));
        if (!strstr(text, key))
            fail_msg("packaging/relay.yaml has no line for %s", key + 1);
    }
    free(text);
}

static int check_data_dir(void **state)
{
    struct stat st;
    if (stat(DATA, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "test_config: run from the repository root (no %s here)\n", DATA);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(valid_files_load, clear_env),
        cmocka_unit_test_setup(invalid_files_fail, clear_env),
        cmocka_unit_test_setup(every_error_in_a_file_is_reported_with_its_place, clear_env),
        cmocka_unit_test_setup(flags_only_get_defaults, clear_env),
        cmocka_unit_test_setup(file_then_env_then_flags, clear_env),
        cmocka_unit_test_setup(config_file_from_env, clear_env),
        cmocka_unit_test_setup(set_overrides_file, clear_env),
        cmocka_unit_test_setup(set_errors, clear_env),
        cmocka_unit_test_setup(kafka_props_from_flags, clear_env),
        cmocka_unit_test_setup(kafka_prop_errors, clear_env),
        cmocka_unit_test_setup(kafka_prop_errors_name_their_place, clear_env),
        cmocka_unit_test_setup(outbox_source_by_flag_and_setting, clear_env),
        cmocka_unit_test_setup(source_wal_or_table_chooses_the_outbox_source, clear_env),
        cmocka_unit_test_setup(bad_flags, clear_env),
        cmocka_unit_test_setup(a_holder_too_long_for_its_session_name_is_refused, clear_env),
        cmocka_unit_test_setup(env_errors, clear_env),
        cmocka_unit_test_setup(db_and_kafka_required, clear_env),
        cmocka_unit_test_setup(empty_file_is_all_defaults, clear_env),
        cmocka_unit_test_setup(missing_or_unreadable_file, clear_env),
        cmocka_unit_test_setup(file_size_is_capped, clear_env),
        cmocka_unit_test_setup(load_twice_in_one_process, clear_env),
        cmocka_unit_test_setup(free_accepts_zero_and_null, clear_env),
        cmocka_unit_test_setup(every_setting_through_file_env_and_flags, clear_env),
        cmocka_unit_test_setup(every_file_key_is_a_setting, clear_env),
        cmocka_unit_test_setup(kafka_props_from_env, clear_env),
        cmocka_unit_test_setup(secret_references_in_any_value, clear_env),
        cmocka_unit_test_setup(secrets_stay_one_value_of_the_connection_string, clear_env),
        cmocka_unit_test(readme_lists_the_fixed_and_default_kafka_properties),
        cmocka_unit_test_setup(the_sample_relay_yaml_loads_and_has_every_setting, clear_env),
    };
    return cmocka_run_group_tests(tests, check_data_dir, clear_env);
}
