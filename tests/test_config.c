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

#include "testutil.h"
#include "../daemon/config.h"

#define DATA "tests/data/config"
#define FILE_MAX (1 << 20)            /* CONFIG_FILE_MAX in config.c */

enum { ARGS_MAX = 300 };

static const char *const env_vars[] = {
    "FERRY_DB", "FERRY_KAFKA", "FERRY_METRICS", "FERRY_HOLDER", "FERRY_CONFIG",
};

static int clear_env(void **state)
{
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++)
        unsetenv(env_vars[i]);
    return 0;
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

/* The whole file, NUL-terminated, or NULL if it does not exist. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        assert_int_equal(errno, ENOENT);
        return NULL;
    }
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    assert_false(ferror(f));
    assert_true(feof(f));
    fclose(f);
    buf[n] = '\0';
    return buf;
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
        char *expect = slurp(expect_path);
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
        char *want = slurp(err_path);
        if (!want || !want[0]) {
            print_error("%s: no expected error (%s)\n", path, err_path);
            failures++;
            free(want);
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
    assert_value(&cfg, "source", "ferry");
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
    assert_value(&cfg, "source", "ferry://orders-service");   /* file only */
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
    assert_value(&cfg, "source", "ferry");
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
    LOAD_FAILS("--set nope=1: unknown setting \"nope\" (one of batch_size, max_inflight, "
               "poll_interval_ms, lease_ttl_ms, max_attempts, stuck_ms, stop_grace_ms, log_level, retention, outbox_source)",
               BASE, "--set", "nope=1");
    LOAD_FAILS("--set db=x: unknown setting \"db\"", BASE, "--set", "db=x");
    LOAD_FAILS("--set retention=keep: expected delete or mark", BASE, "--set", "retention=keep");
    LOAD_FAILS("--set log_level=2: expected error, warn, info or debug", BASE, "--set", "log_level=2");
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
    assert_value(&cfg, "kafka_props_count", "5");
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

/* The source: table by default; --source and --set outbox_source say
 * wal, the last one given winning; anything else is refused. The YAML
 * source: key stays CloudEvents' ce_source. */
static void outbox_source_by_flag_and_setting(void **state)
{
    relay_config cfg;
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--source", "wal");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_WAL);
    assert_string_equal(cfg.source, "ferry");
    relay_config_free(&cfg);
    LOAD_OK(&cfg, "--db", "x", "--kafka", "embedded", "--source", "wal", "--set",
            "outbox_source=table");
    assert_int_equal(cfg.outbox_source, RELAY_SOURCE_TABLE);
    relay_config_free(&cfg);
    LOAD_FAILS("--source WAL: expected table or wal", "--db", "x", "--kafka", "embedded",
               "--source", "WAL");
    LOAD_FAILS("--set outbox_source=x: expected table or wal", "--db", "x", "--kafka",
               "embedded", "--set", "outbox_source=x");
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
    relay_config cfg;
    char err[512];
    if (load_v(&cfg, err, sizeof err, args) != 0)
        fail_msg("128 properties: %s", err);
    assert_int_equal(cfg.kafka_props_count, RELAY_KAFKA_PROPS_MAX);
    relay_config_free(&cfg);

    snprintf(props[RELAY_KAFKA_PROPS_MAX], sizeof props[0], "one.more=1");
    args[n++] = "--kafka-prop";
    args[n++] = props[RELAY_KAFKA_PROPS_MAX];
    args[n] = NULL;
    assert_int_equal(load_v(&cfg, err, sizeof err, args), -1);
    assert_non_null(strstr(err, "--kafka-prop one.more=1: more than 128 kafka properties"));
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
    LOAD_FAILS("--metrics localhost: expected HOST:PORT", "--db", "x", "--kafka", "embedded",
               "--metrics", "localhost");
    LOAD_FAILS("--metrics h:65536: the port must be a number from 0 to 65535", "--db", "x",
               "--kafka", "embedded", "--metrics", "h:65536");
    LOAD_FAILS("--config: must not be empty", "--config", "");
}

static void env_errors(void **state)
{
    setenv("FERRY_METRICS", "nope", 1);
    LOAD_FAILS("FERRY_METRICS=nope: expected HOST:PORT", "--db", "x", "--kafka", "embedded");
    /* A flag does not excuse a bad variable: it is still an error to fix. */
    LOAD_FAILS("FERRY_METRICS=nope", "--db", "x", "--kafka", "embedded", "--metrics", ":0");
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
        assert_value(&cfg, "source", "ferry");
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
        cmocka_unit_test_setup(flags_only_get_defaults, clear_env),
        cmocka_unit_test_setup(file_then_env_then_flags, clear_env),
        cmocka_unit_test_setup(config_file_from_env, clear_env),
        cmocka_unit_test_setup(set_overrides_file, clear_env),
        cmocka_unit_test_setup(set_errors, clear_env),
        cmocka_unit_test_setup(kafka_props_from_flags, clear_env),
        cmocka_unit_test_setup(kafka_prop_errors, clear_env),
        cmocka_unit_test_setup(outbox_source_by_flag_and_setting, clear_env),
        cmocka_unit_test_setup(bad_flags, clear_env),
        cmocka_unit_test_setup(env_errors, clear_env),
        cmocka_unit_test_setup(db_and_kafka_required, clear_env),
        cmocka_unit_test_setup(empty_file_is_all_defaults, clear_env),
        cmocka_unit_test_setup(missing_or_unreadable_file, clear_env),
        cmocka_unit_test_setup(file_size_is_capped, clear_env),
        cmocka_unit_test_setup(load_twice_in_one_process, clear_env),
        cmocka_unit_test_setup(free_accepts_zero_and_null, clear_env),
    };
    return cmocka_run_group_tests(tests, check_data_dir, clear_env);
}
