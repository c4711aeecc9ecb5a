/*
 * test_help.c — every program and subcommand answers --help: a usage text
 * on stdout, nothing on stderr, exit 0, and in it every option the
 * command parses (taken from the parsers' own tables where they are
 * exposed, so a new option without help fails here), the defaults an
 * operator needs (--interval 60, --wait 30, --lease-ttl 30000, each --set
 * name with its default and range) and the environment variables.
 *
 * The programs run as subprocesses; no database is needed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "../daemon/config.h"
#include "../reconciler/rc_config.h"

/* Run PROGRAM ARGS... --help; its stdout (caller frees), after checking
 * exit 0 and an empty stderr. */
static char *help_of(const char *program, const char *const *args)
{
    const char *argv[16] = {program};
    size_t n = 1;
    for (; args[n - 1] != NULL; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    char *out = NULL, *err = NULL;
    int rc = tu_run(argv, 30000, &out, &err);
    if (rc != 0 || err[0] != '\0' || strstr(out, "usage:") == NULL)
        fail_msg("%s %s %s: exit %d\nstdout:\n%s\nstderr:\n%s", program, args[0],
                 args[1] ? args[1] : "", rc, out, err);
    free(err);
    return out;
}

/* needle appears in text, at the start of a word ("--db" not inside
 * "--dbx" is not checked: the option names have no such prefixes). */
static void must_mention(const char *what, const char *text, const char *needle)
{
    if (strstr(text, needle) == NULL)
        fail_msg("%s: the help does not mention \"%s\":\n%s", what, needle, text);
}

/* must_mention of each of needles, a NULL-terminated list. */
static void must_mention_all(const char *what, const char *text, const char *const *needles)
{
    for (size_t i = 0; needles[i] != NULL; i++)
        must_mention(what, text, needles[i]);
}

/* The line of text that contains needle; NULL if none. Borrowed, up to
 * the newline (len). */
static const char *line_with(const char *text, const char *needle, size_t *len)
{
    const char *hit = strstr(text, needle);
    if (hit == NULL)
        return NULL;
    const char *start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    const char *end = strchr(hit, '\n');
    *len = end ? (size_t)(end - start) : strlen(start);
    return start;
}

/* The line that mentions option also says each of words. */
static void line_says(const char *what, const char *text, const char *option,
                      const char *const *words)
{
    size_t len;
    const char *line = line_with(text, option, &len);
    if (line == NULL)
        fail_msg("%s: no line mentions %s:\n%s", what, option, text);
    for (size_t i = 0; words[i] != NULL; i++) {
        const char *w = strstr(line, words[i]);
        if (w == NULL || w >= line + len)
            fail_msg("%s: the line of %s does not say \"%s\": %.*s", what, option, words[i],
                     (int)len, line);
    }
}

/* ------------------------------------------------------------------ relay */

static void relay_run_help_lists_every_option_and_setting(void **state)
{
    (void)state;
    char *run = help_of(tu_relay_bin(), (const char *const[]){"run", "--help", NULL});
    char *top = help_of(tu_relay_bin(), (const char *const[]){"--help", NULL});
    char *dash_h = help_of(tu_relay_bin(), (const char *const[]){"run", "-h", NULL});
    assert_string_equal(run, dash_h);

    /* Every flag the parser takes, in both helps. */
    const struct option *opts = relay_config_options();
    size_t n_opts = 0;
    for (; opts[n_opts].name != NULL; n_opts++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", opts[n_opts].name);
        must_mention("ferry-relay run --help", run, flag);
        must_mention("ferry-relay --help", top, flag);
    }
    assert_true(n_opts >= 9);

    /* Every --set name, with its default and range, on its own line. */
    line_says("run", run, "  batch_size ", (const char *const[]){"1000", "1..100000", NULL});
    line_says("run", run, "  max_inflight ", (const char *const[]){"20000", "1..1000000", NULL});
    line_says("run", run, "  poll_interval_ms ", (const char *const[]){"1000", "10..3600000", NULL});
    line_says("run", run, "  lease_ttl_ms ", (const char *const[]){"10000", "1000..3600000", NULL});
    line_says("run", run, "  max_attempts ", (const char *const[]){"5", "1..1000", NULL});
    line_says("run", run, "  stuck_ms ", (const char *const[]){"5000", "100..3600000", NULL});
    line_says("run", run, "  stop_grace_ms ", (const char *const[]){"20000", "0..3600000", NULL});
    line_says("run", run, "  log_level ", (const char *const[]){"info", "error", "debug", NULL});
    line_says("run", run, "  retention ", (const char *const[]){"delete", "mark", NULL});
    line_says("run", run, "  db ", (const char *const[]){"none", NULL});
    line_says("run", run, "  source ", (const char *const[]){"ferry", NULL});
    /* Every setting, with its flag and its variable on the line below its
     * default. */
    for (size_t i = 0; i < relay_config_setting_count(); i++) {
        char name[64], vars[128];
        snprintf(name, sizeof name, "\n  %s ", relay_config_setting_name(i));
        must_mention("run: settings", run, name);
        snprintf(vars, sizeof vars, "%s VALUE, $%s\n", relay_config_setting_flag(i),
                 relay_config_setting_env(i));
        const char *at = strstr(run, name);
        const char *next = strchr(at + 1, '\n');
        if (next == NULL || strncmp(strchr(next + 1, '-'), vars, strlen(vars)) != 0)
            fail_msg("run: %s is not followed by a line \"%s\":\n%s", name + 1, vars, run);
    }
    must_mention_all("run", run, (const char *const[]){"${env:NAME}", "${file:/path}",
                                                       "FERRY_KAFKA_PROP_", NULL});

    /* The environment. */
    static const char *const env[] = {"FERRY_DB", "FERRY_KAFKA", "FERRY_CONFIG", "FERRY_METRICS",
                                      "FERRY_HOLDER", "FERRY_LOG_LEVEL", "FERRY_BATCH_SIZE"};
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) {
        must_mention("run", run, env[i]);
        must_mention("top", top, env[i]);
    }
    /* The top-level help names every command. */
    static const char *const cmds[] = {"run", "migrate", "status", "slot", "devkafka",
                                       "--version"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        must_mention("top", top, cmds[i]);
    free(run);
    free(top);
    free(dash_h);
}

static void relay_subcommands_answer_help(void **state)
{
    (void)state;
    char *st = help_of(tu_relay_bin(), (const char *const[]){"status", "--help", NULL});
    must_mention_all("status", st, (const char *const[]){"--db", "--json", "FERRY_DB", "--config",
                                                         "FERRY_CONFIG", "Exit status", NULL});
    free(st);
    char *mig = help_of(tu_relay_bin(), (const char *const[]){"migrate", "--help", NULL});
    must_mention_all("migrate", mig, (const char *const[]){"--db", "FERRY_DB", "--config",
                                                           "FERRY_CONFIG", NULL});
    free(mig);
    char *dk = help_of(tu_relay_bin(), (const char *const[]){"devkafka", "--help", NULL});
    must_mention("devkafka", dk, "--brokers");
    free(dk);
}

/* -------------------------------------------------------------- reconciler */

static void reconcile_commands_list_their_options_and_defaults(void **state)
{
    (void)state;
    static const char *const cmds[] = {"check", "repair", "run"};
    for (size_t c = 0; c < 3; c++) {
        char *h = help_of(tu_reconcile_bin(), (const char *const[]){cmds[c], "--help", NULL});
        size_t n = 0;
        for (const rc_option_doc *d = rc_option_docs(); d->name != NULL; d++) {
            if (!rc_option_applies(d, cmds[c]))
                continue;
            char flag[64];
            snprintf(flag, sizeof flag, "--%s", d->name);
            must_mention(cmds[c], h, flag);
            n++;
        }
        assert_true(n >= 6);
        /* Every setting: its default, then its variable and file key. */
        for (const rc_option_doc *d = rc_option_docs(); d->name != NULL; d++) {
            if (!d->key || !rc_option_applies(d, cmds[c]))
                continue;
            char flag[64], vars[128];
            snprintf(flag, sizeof flag, "  --%s ", d->name);
            line_says(cmds[c], h, flag, (const char *const[]){"default", NULL});
            snprintf(vars, sizeof vars, "$%s, file: %s\n", d->env, d->key);
            const char *next = strchr(strstr(h, flag), '\n');
            next += strspn(next, "\n ");
            if (strncmp(next, vars, strlen(vars)) != 0)
                fail_msg("%s: %s is not followed by \"%s\":\n%s", cmds[c], flag, vars, h);
        }
        must_mention_all(cmds[c], h, (const char *const[]){"--config", "FERRY_RECONCILE_CONFIG",
                                                           "FERRY_LOG_LEVEL", "${file:/path}",
                                                           "FERRY_DB", "Exit status", NULL});
        if (strcmp(cmds[c], "run") == 0) {
            line_says("run", h, "  --interval", (const char *const[]){"60", NULL});
            line_says("run", h, "  --lease-ttl", (const char *const[]){"30000", NULL});
            line_says("run", h, "  --metrics", (const char *const[]){"HOST:PORT", NULL});
        }
        if (strcmp(cmds[c], "repair") == 0) {
            line_says("repair", h, "  --wait", (const char *const[]){"30", NULL});
            line_says("repair", h, "  --lease-ttl", (const char *const[]){"30000", NULL});
        }
        free(h);
    }
    /* Every option the parser takes is documented for some command. */
    for (const struct option *o = rc_pass_options(); o->name != NULL; o++) {
        const rc_option_doc *d = rc_option_docs();
        while (d->name != NULL && strcmp(d->name, o->name) != 0)
            d++;
        if (d->name == NULL && strcmp(o->name, "help") != 0)
            fail_msg("--%s is parsed but has no help", o->name);
    }
}

static void lint_and_graph_answer_help(void **state)
{
    (void)state;
    char *lint = help_of(tu_reconcile_bin(), (const char *const[]){"lint", "--help", NULL});
    must_mention("lint", lint, "FILE");
    /* lint's own exit codes, as they are (0, 4, 8, 16). */
    must_mention("lint", lint, "Exit status");
    line_says("lint", lint, "16", (const char *const[]){"usage", NULL});
    free(lint);
    char *graph = help_of(tu_reconcile_bin(), (const char *const[]){"graph", "--help", NULL});
    must_mention("graph", graph, "dot");
    free(graph);
    char *top = help_of(tu_reconcile_bin(), (const char *const[]){"--help", NULL});
    static const char *const cmds[] = {"check", "repair", "run", "lint", "graph", "--version"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        must_mention("top", top, cmds[i]);
    must_mention("top", top, "FERRY_DB");
    free(top);

    /* A usage error still exits 16, with the usage on stderr. */
    char *out = NULL, *err = NULL;
    int rc = tu_reconcile((const char *const[]){"lint", "--bogus", NULL}, 30000, &out, &err);
    assert_int_equal(rc, 16);
    assert_non_null(strstr(err, "usage:"));
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(relay_run_help_lists_every_option_and_setting),
        cmocka_unit_test(relay_subcommands_answer_help),
        cmocka_unit_test(reconcile_commands_list_their_options_and_defaults),
        cmocka_unit_test(lint_and_graph_answer_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
