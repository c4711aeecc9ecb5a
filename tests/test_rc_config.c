/*
 * test_rc_config.c — ferry-reconcile's settings (reconciler/rc_config.c):
 * every one through the file, the environment and its flag, their
 * precedence, secret references, and errors that name the setting.
 * Needs no server: the errors come before any connection.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "../reconciler/rc_config.h"

enum { ARGS_MAX = 32 };

static int clear_env(void **state)
{
    unsetenv("FERRY_RECONCILE_CONFIG");
    for (const rc_option_doc *d = rc_option_docs(); d->name; d++)
        if (d->env)
            unsetenv(d->env);
    return 0;
}

/* rc_options_parse for cmd with args (NULL-terminated); its status. */
static int parse_v(const char *cmd, rc_options *o, const char *const *args)
{
    char *argv[ARGS_MAX + 2];
    int argc = 0;
    argv[argc++] = (char *)cmd;
    while (*args) {
        assert_true(argc <= ARGS_MAX);
        argv[argc++] = (char *)*args++;
    }
    argv[argc] = NULL;
    return rc_options_parse(cmd, argc, argv, o);
}
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* o's value of a setting, by its file key, as text. */
static void render(const rc_options *o, const char *key, char *buf, size_t len)
{
    const char *s = NULL;
    if (strcmp(key, "db") == 0) s = o->db;
    else if (strcmp(key, "rules") == 0) s = o->rules_file;
    else if (strcmp(key, "sagas") == 0) s = o->sagas_dir;
    else if (strcmp(key, "reply_topic") == 0) s = o->reply_topic;
    else if (strcmp(key, "holder") == 0) s = o->holder;
    else if (strcmp(key, "metrics") == 0) s = o->metrics;
    else if (strcmp(key, "wait") == 0) snprintf(buf, len, "%d", o->wait_s);
    else if (strcmp(key, "lease_ttl") == 0) snprintf(buf, len, "%d", o->lease_ttl_ms);
    else if (strcmp(key, "interval") == 0) snprintf(buf, len, "%g", o->interval_s);
    else if (strcmp(key, "log_level") == 0) snprintf(buf, len, "%d", o->log_level);
    else fail_msg("setting %s: the test cannot render it; add it to render()", key);
    if (s || strchr("drshm", key[0]) != NULL)
        if (strcmp(key, "wait") && strcmp(key, "lease_ttl") && strcmp(key, "interval") &&
            strcmp(key, "log_level"))
            snprintf(buf, len, "%s", s ? s : "(null)");
}

/* A valid value other than the default, and how render shows it. */
static void sample(const char *key, const char **value, const char **shown)
{
    static const struct {
        const char *key, *value, *shown;
    } v[] = {
        {"db", "dbname=sample", "dbname=sample"}, {"rules", "/r.yaml", "/r.yaml"},
        {"sagas", "/sagas", "/sagas"}, {"reply_topic", "replies", "replies"},
        {"holder", "h-1", "h-1"}, {"metrics", "127.0.0.1:0", "127.0.0.1:0"},
        {"wait", "7", "7"}, {"lease_ttl", "4000", "4000"}, {"interval", "0.5", "0.5"},
        {"log_level", "debug", "3"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (strcmp(v[i].key, key) == 0) {
            *value = v[i].value;
            *shown = v[i].shown;
            return;
        }
    }
    fail_msg("setting %s: no sample value; add one", key);
}

static void every_setting_through_file_env_and_flag(void **state)
{
    char path[] = "/tmp/ferry-test-rcconfig-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    size_t n = 0;
    for (const rc_option_doc *d = rc_option_docs(); d->name; d++) {
        if (!d->key)
            continue;
        n++;
        const char *value, *shown;
        sample(d->key, &value, &shown);
        char text[256], got[256], flag[64];
        rc_options o;

        snprintf(text, sizeof text, "%s%s: \"%s\"\n", strcmp(d->key, "db") ? "db: x\n" : "",
                 d->key, value);
        tu_write_file(path, text);
        assert_int_equal(parse_v("run", &o, ARGS("--config", path)), 0);
        render(&o, d->key, got, sizeof got);
        if (strcmp(got, shown) != 0)
            fail_msg("%s from the file: \"%s\", not \"%s\"", d->key, got, shown);
        rc_options_free(&o);

        /* The variable over the file. */
        tu_write_file(path, "db: base\n");
        setenv(d->env, value, 1);
        assert_int_equal(parse_v("run", &o, ARGS("--config", path)), 0);
        render(&o, d->key, got, sizeof got);
        if (strcmp(got, shown) != 0)
            fail_msg("%s from $%s: \"%s\", not \"%s\"", d->key, d->env, got, shown);
        rc_options_free(&o);
        unsetenv(d->env);

        /* The flag over the file, for a command it is for. */
        const char *cmd = rc_option_applies(d, "run") ? "run" : "repair";
        snprintf(flag, sizeof flag, "--%s", d->name);
        assert_int_equal(parse_v(cmd, &o, ARGS("--config", path, flag, value)), 0);
        render(&o, d->key, got, sizeof got);
        if (strcmp(got, shown) != 0)
            fail_msg("%s from %s: \"%s\", not \"%s\"", d->key, flag, got, shown);
        rc_options_free(&o);
    }
    assert_true(n >= 10);
    assert_int_equal(unlink(path), 0);
}

/* The file over the defaults, the variable over the file, the flag over
 * the variable; FERRY_RECONCILE_CONFIG names the file. */
static void precedence_and_the_config_variable(void **state)
{
    char path[] = "/tmp/ferry-test-rcconfig-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tu_write_file(path, "db: from-file\nwait: 5\nholder: ~\n");
    setenv("FERRY_RECONCILE_CONFIG", path, 1);
    rc_options o;
    assert_int_equal(parse_v("repair", &o, ARGS("--lease-ttl", "2000")), 0);
    assert_string_equal(o.db, "from-file");
    assert_int_equal(o.wait_s, 5);
    assert_null(o.holder);
    assert_int_equal(o.lease_ttl_ms, 2000);
    assert_int_equal(o.interval_s, 60);
    rc_options_free(&o);
    setenv("FERRY_DB", "from-env", 1);
    assert_int_equal(parse_v("repair", &o, ARGS("--wait", "6")), 0);
    assert_string_equal(o.db, "from-env");
    assert_int_equal(o.wait_s, 6);
    rc_options_free(&o);
    assert_int_equal(parse_v("check", &o, ARGS("--db", "from-flag")), 0);
    assert_string_equal(o.db, "from-flag");
    rc_options_free(&o);
    assert_int_equal(unlink(path), 0);
}

static void secret_references(void **state)
{
    char *secret = tu_temp_file("p w'\\\n");
    char *path = tu_temp_file("");
    char text[512];
    snprintf(text, sizeof text, "db: \"user=r password=${file:%s}\"\ninterval: ${env:T_IV}\n",
             secret);
    tu_write_file(path, text);
    setenv("T_IV", "2.5", 1);
    rc_options o;
    assert_int_equal(parse_v("run", &o, ARGS("--config", path)), 0);
    /* A value of the connection string is escaped: a space or a quote in
     * a password keeps it one value (libpq's error about a broken string
     * quoted a piece of it: an outside audit). */
    assert_string_equal(o.db, "user=r password=p\\ w\\'\\\\");
    assert_true(o.interval_s == 2.5);
    rc_options_free(&o);
    unsetenv("T_IV");

    /* Missing, through the program: exit 16 and the setting named. */
    char *out = NULL, *err = NULL;
    snprintf(text, sizeof text, "--config=%s", path);
    assert_int_equal(tu_reconcile(ARGS("run", text), 30000, &out, &err), 16);
    char want[512];
    snprintf(want, sizeof want, "%s:2:11: interval: ${env:T_IV}: the variable is not set", path);
    if (!strstr(err, want))
        fail_msg("expected \"%s\" in:\n%s", want, err);
    free(out);
    free(err);
    assert_int_equal(tu_reconcile(ARGS("check", "--db", "${file:/no/such/pw}"), 30000, &out,
                                  &err), 16);
    if (!strstr(err, "--db: ${file:/no/such/pw}: could not open the file: No such file"))
        fail_msg("stderr:\n%s", err);
    free(out);
    free(err);
    assert_int_equal(unlink(secret), 0);
    assert_int_equal(unlink(path), 0);
    free(secret);
    free(path);
}

static void errors_name_the_setting_and_place(void **state)
{
    char path[] = "/tmp/ferry-test-rcconfig-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    static const struct {
        const char *file, *want;
    } cases[] = {
        {"db: x\nwait: soon\n", ":2:7: wait: expected whole seconds, 0..86400, not \"soon\""},
        {"db: x\nlog_level: loud\n", ":2:12: log_level: invalid value \"loud\""},
        {"db: x\nmetrics: \"\"\n", ":2:10: metrics: must not be empty"},
        {"db: x\nintervall: 5\n", ":2:1: "},
        {"db: x\ndb: y\n", ":2:1: "},
        {"db: [x]\n", ":1:5: db: expected a single value"},
        {"- db\n", ":1:1: "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_write_file(path, cases[i].file);
        char arg[128], *out = NULL, *err = NULL, want[256];
        snprintf(arg, sizeof arg, "--config=%s", path);
        int st = tu_reconcile(ARGS("check", arg), 30000, &out, &err);
        snprintf(want, sizeof want, "%s%s", path, cases[i].want);
        if (st != 16 || !strstr(err, want))
            fail_msg("case %zu: exit %d, expected 16 and \"%s\" in:\n%s", i, st, want, err);
        free(out);
        free(err);
    }
    setenv("FERRY_RECONCILE_LEASE_TTL", "5", 1);
    char *out = NULL, *err = NULL;
    assert_int_equal(tu_reconcile(ARGS("run", "--db", "x"), 30000, &out, &err), 16);
    if (!strstr(err, "FERRY_RECONCILE_LEASE_TTL: expected whole milliseconds, 1000..3600000"))
        fail_msg("stderr:\n%s", err);
    free(out);
    free(err);
    /* Opposite decisions on one letter are a usage error (before: the
     * first was carried out and the second found nothing, silently). */
    unsetenv("FERRY_RECONCILE_LEASE_TTL");
    out = err = NULL;
    assert_int_equal(tu_reconcile(ARGS("repair", "--db", "x", "--replay", "t/k", "--discard",
                                       "t/k", "--reason", "r"), 30000, &out, &err), 16);
    if (!strstr(err, "--replay t/k and --discard t/k: one decision per dead letter"))
        fail_msg("stderr:\n%s", err);
    free(out);
    free(err);
    assert_int_equal(unlink(path), 0);
}

/*
 * A bad --metrics address is a bad setting: exit 16 naming the place, as
 * ferry-relay's. It was only found when run bound it (exit 8, "invalid
 * metrics address", no flag, file or variable named). An address that is
 * well formed but cannot be bound (in use) stays run's operational error
 * (test_reconcile_metrics).
 */
static void a_bad_metrics_address_is_refused_naming_the_place(void **state)
{
    char path[] = "/tmp/ferry-test-rcconfig-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    static const struct {
        const char *flag, *env, *file, *want;
    } cases[] = {
        {"127.0.0.1:99999", NULL, NULL,
         "--metrics: the port must be a number from 0 to 65535, not \"127.0.0.1:99999\""},
        {"::1:80", NULL, NULL, "--metrics: an IPv6 host needs brackets"},
        {"[::1]80", NULL, NULL, "--metrics: expected HOST:PORT, with an IPv6 host as"},
        {"127.0.0.1: 80", NULL, NULL, "--metrics: the port must be a number"},
        {NULL, "localhost", NULL, "FERRY_RECONCILE_METRICS: expected HOST:PORT, not "
                                  "\"localhost\""},
        {NULL, NULL, "db: x\nmetrics: \"a b:1\"\n",
         ":2:10: metrics: the host contains a space or a control character"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clear_env(state);
        const char *args[8] = {"run", "--db", "x"};
        int n = 3;
        char arg[128], want[256];
        snprintf(want, sizeof want, "%s", cases[i].want);
        if (cases[i].flag) {
            args[n++] = "--metrics";
            args[n++] = cases[i].flag;
        }
        if (cases[i].env)
            setenv("FERRY_RECONCILE_METRICS", cases[i].env, 1);
        if (cases[i].file) {
            tu_write_file(path, cases[i].file);
            snprintf(arg, sizeof arg, "--config=%s", path);
            args[n++] = arg;
            snprintf(want, sizeof want, "%s%s", path, cases[i].want);
        }
        args[n] = NULL;
        char *out = NULL, *err = NULL;
        int st = tu_reconcile(args, 30000, &out, &err);
        if (st != 16 || !strstr(err, want))
            fail_msg("case %zu: exit %d, expected 16 and \"%s\" in:\n%s", i, st, want, err);
        free(out);
        free(err);
    }
    /* Every form the server takes is taken here too. */
    static const char *const good[] = {"127.0.0.1:0", ":9188", "*:0", "[::1]:0",
                                       "localhost:65535"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        clear_env(state);
        rc_options o;
        assert_int_equal(parse_v("run", &o, ARGS("--db", "x", "--metrics", good[i])), 0);
        assert_string_equal(o.metrics, good[i]);
        rc_options_free(&o);
    }
    clear_env(state);
    assert_int_equal(unlink(path), 0);
}

/*
 * Forms every other setting refuses, and empty or blank values that were
 * taken as given: --interval went through strtod, which takes "0x10",
 * " 1e1", "inf"; --config "" was ignored, the file silently not read;
 * --by "" and --reason " " were recorded in dead_letter_log as an empty
 * actor and a blank reason (while --reason "" was refused). Each is now
 * refused, naming the place, exit 16.
 */
static void odd_numbers_and_blank_words_are_refused(void **state)
{
    static const struct {
        const char *env;
        const char *args[10];
        const char *want;
    } cases[] = {
        {NULL, {"run", "--db", "x", "--interval", "0x10"},
         "--interval: expected seconds, 0.1..86400, not \"0x10\""},
        {NULL, {"run", "--db", "x", "--interval", " 1e1"},
         "--interval: expected seconds, 0.1..86400, not \" 1e1\""},
        {NULL, {"run", "--db", "x", "--interval", "1e1"}, "--interval: expected seconds"},
        {NULL, {"run", "--db", "x", "--interval", "+5"}, "--interval: expected seconds"},
        {NULL, {"run", "--db", "x", "--interval", "5 "}, "--interval: expected seconds"},
        {"FERRY_RECONCILE_INTERVAL=inf", {"run", "--db", "x"},
         "FERRY_RECONCILE_INTERVAL: expected seconds, 0.1..86400, not \"inf\""},
        {NULL, {"check", "--db", "x", "--config", ""}, "--config: must not be empty"},
        {NULL, {"repair", "--db", "x", "--replay", "1", "--by", ""},
         "--by: must not be blank"},
        {NULL, {"repair", "--db", "x", "--replay", "1", "--by", " \t"},
         "--by: must not be blank"},
        {NULL, {"repair", "--db", "x", "--discard", "1", "--reason", " "},
         "--reason: must not be blank"},
        {NULL, {"repair", "--db", "x", "--replay", "1", "--reason", "\n"},
         "--reason: must not be blank"},
        {NULL, {"repair", "--db", "x", "--replay", "1", "--reason", ""},
         "--reason: must not be blank"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clear_env(state);
        if (cases[i].env) {
            char name[64];
            const char *eq = strchr(cases[i].env, '=');
            snprintf(name, sizeof name, "%.*s", (int)(eq - cases[i].env), cases[i].env);
            setenv(name, eq + 1, 1);
        }
        char *out = NULL, *err = NULL;
        int st = tu_reconcile(cases[i].args, 30000, &out, &err);
        if (st != 16 || !strstr(err, cases[i].want))
            fail_msg("case %zu: exit %d, expected 16 and \"%s\" in:\n%s", i, st, cases[i].want,
                     err);
        free(out);
        free(err);
    }
    clear_env(state);
    /* What was taken still is. */
    static const struct {
        const char *text;
        double want;
    } good[] = {{"0.1", 0.1}, {"60", 60}, {"1.5", 1.5}, {"86400", 86400}, {"007", 7}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        rc_options o;
        assert_int_equal(parse_v("run", &o, ARGS("--db", "x", "--interval", good[i].text)), 0);
        assert_true(o.interval_s == good[i].want);
        rc_options_free(&o);
    }
    rc_options o;
    assert_int_equal(parse_v("repair", &o, ARGS("--db", "x", "--discard", "1", "--by",
                                                "alice", "--reason", " drop it")), 0);
    assert_string_equal(o.by, "alice");
    assert_string_equal(o.reason, " drop it");
    rc_options_free(&o);
}

/* The sample make install puts in share/ferry loads, and has every key. */
static void the_sample_reconcile_yaml_loads_and_has_every_setting(void **state)
{
    rc_options o;
    assert_int_equal(parse_v("run", &o, ARGS("--config", "packaging/reconcile.yaml")), 0);
    assert_string_equal(o.metrics, "127.0.0.1:9188");
    assert_int_equal(o.log_level, 2);
    rc_options_free(&o);
    FILE *f = fopen("packaging/reconcile.yaml", "r");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text + 1, 1, sizeof text - 2, f);
    fclose(f);
    text[0] = '\n';
    text[n + 1] = '\0';
    for (const rc_option_doc *d = rc_option_docs(); d->name; d++) {
        char key[64];
        if (!d->key)
            continue;
        snprintf(key, sizeof key, "\n%s:", d->key);
        if (!strstr(text, key))
            fail_msg("packaging/reconcile.yaml has no line for %s", key + 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(every_setting_through_file_env_and_flag, clear_env),
        cmocka_unit_test_setup(precedence_and_the_config_variable, clear_env),
        cmocka_unit_test_setup(secret_references, clear_env),
        cmocka_unit_test_setup(errors_name_the_setting_and_place, clear_env),
        cmocka_unit_test_setup(a_bad_metrics_address_is_refused_naming_the_place, clear_env),
        cmocka_unit_test_setup(odd_numbers_and_blank_words_are_refused, clear_env),
        cmocka_unit_test_setup(the_sample_reconcile_yaml_loads_and_has_every_setting, clear_env),
    };
    tu_filter_from_env();
    return cmocka_run_group_tests(tests, clear_env, clear_env);
}
