/*
 * test_reconcile.c — ferry-reconcile as a command: usage, exit statuses,
 * the report (text and JSON), progress, refusals (no database, an old
 * schema, a bad rules file), and two reconcilers started at once, against
 * a real throwaway PostgreSQL. The sweeps themselves are tested in
 * test_reconcile_outbox.c and test_reconcile_saga.c.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"

/* The test cluster's conninfo, for --db (the harness owns it). */
static const char *db(void)
{
    return fpg_conninfo(tu_pg);
}

/* What `ferry-reconcile ARGS` left (tu_output_free it). */
static tu_output rc(const char *const *args)
{
    tu_output o;
    o.status = tu_reconcile(args, 120000, &o.out, &o.err);
    return o;
}

/* rc(args), which must exit with want: else the test fails with its
 * output. */
static tu_output rc_exits(int want, const char *const *args)
{
    tu_output o = rc(args);
    if (o.status != want)
        fail_msg("ferry-reconcile %s: exit %d, want %d; stdout:\n%s\nstderr:\n%s", args[0],
                 o.status, want, o.out, o.err);
    return o;
}

static void contains(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL)
        fail_msg("no \"%s\" in:\n%s", needle, hay);
}

/* Every ferry table empty, no leases: a database with nothing wrong. */
static int clean(void **state)
{
    return tu_exec_once("TRUNCATE ferry.outbox, ferry.outbox_key, ferry.dead_letter, ferry.inbox, "
                        "ferry.inbox_key, ferry.inbox_held, ferry.saga CASCADE; "
                        "TRUNCATE ferry.lease, ferry.dead_letter_log, ferry.reconcile_action, "
                        "ferry.reconcile_pass, ferry.participant_step, "
                        "ferry.participant_command; "
                        "DROP TABLE IF EXISTS public.hold");
}

/* n inbox rows applied a month ago: garbage past the default 7-day window. */
static void seed_inbox_garbage(PGconn *c, int n)
{
    tu_exec_of(c, tu_sprintf("INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq, "
                             "applied_at) SELECT 'svc', gen_random_uuid(), 't', 'k' || i, 1, "
                             "now() - interval '30 days' FROM generate_series(1, %d) i", n));
}

/* ---------------------------------------------------------------- usage */

static void usage_errors(void **state)
{
    const char *const cases[][6] = {
        {"check", NULL},                                    /* no --db, no $FERRY_DB */
        {"check", "--db", db(), "--replay", "1", NULL},     /* check changes nothing */
        {"repair", "--db", db(), "--discard", "1", NULL},   /* a discard needs a reason */
        {"check", "--db", db(), "--bogus", NULL},
        {"run", "--db", db(), "--json", NULL},
        {"repair", "--db", db(), "--wait", "soon", NULL},
        {"run", "--db", db(), "--interval", "0", NULL},
        {"check", "--db", db(), "extra", NULL},
        {"frobnicate", NULL},
    };
    unsetenv("FERRY_DB");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_output r = rc(cases[i]);
        if (r.status != 16)
            fail_msg("case %zu (%s %s): exit %d, want 16; stderr:\n%s", i, cases[i][0],
                     cases[i][1] ? cases[i][1] : "", r.status, r.err);
        contains(r.err, "usage: ferry-reconcile");
        tu_output_free(&r);
    }
}

/* ------------------------------------------------------- refusals: 8 */

static void cannot_connect_is_8(void **state)
{
    const char *args[] = {"check", "--db", "host=/nonexistent-ferry-dir dbname=x "
                          "connect_timeout=2", NULL};
    tu_output r = rc_exits(8, args);
    contains(r.err, "cannot connect to the database");
    assert_string_equal(r.out, "");
    tu_output_free(&r);
}

static void unmigrated_database_is_8(void **state)
{
    char *ci = tu_fresh_database("r_plain");
    const char *args[] = {"check", "--db", ci, NULL};
    tu_output r = rc_exits(8, args);
    contains(r.err, "ferry schema version 0; the reconciler needs 27");
    tu_output_free(&r);
    free(ci);
}

/* A saga directory or rules file set by a variable is named as the
 * setting, not as the flag the message used to name (--sagas), which an
 * operator who never passed it could not find. */
static void a_refused_input_is_named_in_every_spelling(void **state)
{
    setenv("FERRY_RECONCILE_SAGAS", "/nonexistent-ferry-sagas", 1);
    const char *args[] = {"check", "--db", db(), NULL};
    tu_output r = rc_exits(8, args);
    unsetenv("FERRY_RECONCILE_SAGAS");
    contains(r.err, "/nonexistent-ferry-sagas");
    contains(r.err, "FERRY_RECONCILE_SAGAS");
    tu_output_free(&r);
    setenv("FERRY_RECONCILE_RULES", "/nonexistent-ferry-rules.yaml", 1);
    r = rc_exits(8, args);
    unsetenv("FERRY_RECONCILE_RULES");
    contains(r.err, "/nonexistent-ferry-rules.yaml");
    contains(r.err, "FERRY_RECONCILE_RULES");
    tu_output_free(&r);
}

static void bad_rules_file_is_8(void **state)
{
    char *path = tu_temp_file("rules:\n  - name: x\n    detect: [unclosed\n");
    const char *args[] = {"check", "--db", db(), "--rules", path, NULL};
    tu_output r = rc_exits(8, args);
    char *where = tu_sprintf("%s:", path);
    contains(r.err, where);
    contains(r.err, "was refused; nothing was checked");
    assert_string_equal(r.out, "");
    free(where);
    tu_output_free(&r);
    tu_temp_remove(path);

    /* A saga directory with a broken definition: refused the same way. */
    char dir[] = "/tmp/ferry-test-sagas-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *def = tu_sprintf("%s/broken.yaml", dir);
    FILE *f = fopen(def, "w");
    assert_non_null(f);
    fputs("saga: broken\nversion: 1\n", f);
    fclose(f);
    const char *args2[] = {"check", "--db", db(), "--sagas", dir, NULL};
    r = rc_exits(8, args2);
    contains(r.err, def);
    tu_output_free(&r);
    tu_temp_remove(def);
    rmdir(dir);
}

/* ------------------------------------------------------------ reports */

static void clean_database_is_0(void **state)
{
    const char *args[] = {"check", "--db", db(), NULL};
    tu_output r = rc_exits(0, args);
    const char *sweeps[] = {"outbox", "sagas", "compensations", "dead_letters", "garbage",
                            "rules"};
    for (size_t i = 0; i < 6; i++) {
        char *line = tu_sprintf("%-14s clean\n", sweeps[i]);
        contains(r.out, line);
        free(line);
    }
    contains(r.out, "summary: no problems; exit 0");
    /* Not a terminal: no progress. */
    assert_null(strstr(r.err, "\033[K"));
    tu_output_free(&r);
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (j == NULL)
        fail_msg("not JSON (%s at line %d):\n%s", e.text, e.line, text);
    return j;
}

/* check finds (4) and changes nothing; repair fixes (1); check again: 0.
 * Through the JSON report. */
static void json_report_and_exit_statuses(void **state)
{
    PGconn *c = tu_connect();
    seed_inbox_garbage(c, 25);

    const char *check[] = {"check", "--db", db(), "--json", NULL};
    tu_output r = rc_exits(4, check);
    json_t *j = parse(r.out);
    assert_string_equal(json_string_value(json_object_get(j, "mode")), "check");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 4);
    json_t *g = json_object_get(json_object_get(j, "sweeps"), "garbage");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(g, "counts"), "found")),
                     1);
    json_t *f = json_array_get(json_object_get(g, "findings"), 0);
    assert_int_equal(json_integer_value(json_object_get(f, "count")), 25);
    assert_string_equal(json_string_value(json_object_get(f, "outcome")), "found");
    json_decref(j);
    tu_output_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 25);   /* unchanged */

    /* The reconciler's own records older than 30 days go with a repair,
     * without being a problem of their own. */
    tu_exec(c, "INSERT INTO ferry.reconcile_pass (holder, actor, started_at, finished_at, "
               "status, report) VALUES ('old', 'old', now() - interval '40 days', "
               "now() - interval '40 days', 0, '{}'); "
               "INSERT INTO ferry.reconcile_action (rule, key, message_id, emitted_at) VALUES "
               "('gone', 'k', gen_random_uuid(), now() - interval '40 days'), "
               "('kept', 'k', gen_random_uuid(), now() - interval '1 day')");
    const char *repair[] = {"repair", "--db", db(), "--json", "--by", "tester", NULL};
    r = rc_exits(1, repair);
    j = parse(r.out);
    assert_string_equal(json_string_value(json_object_get(j, "mode")), "repair");
    g = json_object_get(json_object_get(j, "sweeps"), "garbage");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(g, "counts"), "repaired")), 1);
    json_decref(j);
    tu_output_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 0);
    /* The pass is on record, with who ran it, and the lease is free again. */
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.reconcile_pass WHERE actor = "
                               "'tester' AND status = 1 AND report->>'mode' = 'repair'"),
                     1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.lease WHERE name = 'reconciler' "
                               "AND expires_at > now()"),
                     0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.reconcile_pass WHERE actor = 'old'"),
                     0);
    assert_int_equal(tu_int(c, "SELECT (string_agg(rule, ',') = 'kept')::int FROM "
                               "ferry.reconcile_action"),
                     1);

    const char *again[] = {"check", "--db", db(), NULL};
    r = rc_exits(0, again);
    tu_output_free(&r);
    PQfinish(c);
}

/* Progress shows on request (as on a terminal), with counts as they go,
 * and never in a pipe by default. */
static void progress_only_when_asked(void **state)
{
    PGconn *c = tu_connect();
    seed_inbox_garbage(c, 3000);
    char *rules = tu_temp_file("budgets:\n  batch: 100\n");
    const char *quiet[] = {"check", "--db", db(), "--rules", rules, NULL};
    tu_output r = rc_exits(4, quiet);
    assert_null(strstr(r.err, "\033[K"));
    tu_output_free(&r);
    /* Forced into a pipe: plain lines, no control sequences. */
    const char *loud[] = {"repair", "--db", db(), "--rules", rules, "--progress", NULL};
    r = rc_exits(1, loud);
    contains(r.err, "garbage: ");
    contains(r.err, "garbage        problems found\n");
    contains(r.err, "outbox         clean\n");
    assert_null(strchr(r.err, '\033'));
    assert_null(strchr(r.err, '\r'));
    tu_output_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 0);
    tu_temp_remove(rules);
    PQfinish(c);
}

/* Run argv with stderr on a pseudo-terminal (stdout and stdin on
 * /dev/null): its exit status, and as err what it wrote to the terminal
 * (out is empty). */
static tu_output run_on_tty(const char *const *argv)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(m >= 0);
    assert_int_equal(grantpt(m), 0);
    assert_int_equal(unlockpt(m), 0);
    char *name = ptsname(m);
    assert_non_null(name);
    int slave = open(name, O_RDWR | O_NOCTTY);
    assert_true(slave >= 0);
    /* Raw: the terminal must not turn "\n" into "\r\n" for us. */
    struct termios tio;
    assert_int_equal(tcgetattr(slave, &tio), 0);
    cfmakeraw(&tio);
    assert_int_equal(tcsetattr(slave, TCSANOW, &tio), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(slave, 2);
        close(m);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(slave);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {                       /* until EIO: the child closed the terminal */
        if (cap - len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t n = read(m, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(m);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    tu_output o = {.status = WEXITSTATUS(status), .out = strdup(""), .err = buf};
    assert_non_null(o.out);
    return o;
}

/* On a terminal, progress redraws one line and is erased at the end of
 * each sweep: nothing of it stays on screen beside the report. */
static void progress_on_a_terminal_is_erased(void **state)
{
    PGconn *c = tu_connect();
    seed_inbox_garbage(c, 3000);
    char *rules = tu_temp_file("budgets:\n  batch: 100\n");
    const char *argv[] = {tu_reconcile_bin(), "repair", "--db", db(), "--rules", rules, NULL};
    tu_output r = run_on_tty(argv);
    assert_int_equal(r.status, 1);
    contains(r.err, "\r\033[Kgarbage: ");
    /* What a terminal shows once it has applied the erasures: nothing. */
    const char *last = strrchr(r.err, '\r');
    assert_non_null(last);
    assert_string_equal(last, "\r\033[K");
    assert_null(strstr(r.err, "problems found"));
    assert_null(strstr(r.err, "clean\n"));
    assert_null(strchr(r.err, '\n'));
    tu_output_free(&r);
    tu_temp_remove(rules);
    PQfinish(c);
}

/* ------------------------------------------------------- one at a time */

/* While another reconciler holds the lease, repair waits (--wait) and
 * then gives up with 8; check needs no lease. */
static void repair_waits_for_the_lease(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) VALUES "
               "('reconciler', 'someone-else', 7, now() + interval '1 hour')");
    seed_inbox_garbage(c, 3);
    const char *repair[] = {"repair", "--db", db(), "--wait", "1", NULL};
    tu_output r = rc_exits(8, repair);
    contains(r.err, "waiting for the reconciler's lease, held by someone-else");
    contains(r.err, "another reconciler is repairing this database (someone-else");
    tu_output_free(&r);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 3);   /* untouched */
    const char *check[] = {"check", "--db", db(), NULL};
    r = rc_exits(4, check);
    tu_output_free(&r);

    /* A decision on a dead letter needs no lease: it is carried out, the
     * sweeps are left to the holder. */
    long long id = tu_int(c, "INSERT INTO ferry.dead_letter (message_id, topic, aggregateid, "
                             "type, payload, seq, shard, created_at, reason) VALUES "
                             "(gen_random_uuid(), 'orders', 'k1', 'T', '{}', 1, 0, now(), "
                             "'broker refused') RETURNING id");
    char *ids = tu_sprintf("%lld", id);
    const char *replay[] = {"repair", "--db", db(), "--wait", "0", "--replay", ids, "--by", "ops",
                            NULL};
    r = rc_exits(1, replay);
    contains(r.err, "the sweeps are left to it");
    contains(r.out, "[repaired] dead_letter");
    contains(r.out, "garbage        skipped");
    tu_output_free(&r);
    free(ids);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE aggregateid = 'k1'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter_log WHERE actor = 'ops' "
                               "AND action = 'replay'"), 1);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 3);   /* still untouched */
    PQfinish(c);
}

/* Two repairs started at once on a database with problems of several
 * kinds: every problem is acted on exactly once. The rule's detect query
 * is slowed down so that the first pass is sure to still hold the lease
 * when the second asks for it (the second says it waited). */
static void two_reconcilers_at_once_act_once(void **state)
{
    PGconn *c = tu_connect();
    seed_inbox_garbage(c, 2000);
    tu_exec(c, "INSERT INTO ferry.outbox (id, topic, aggregateid, type, payload, seq, shard, "
               "attempts, last_error) SELECT gen_random_uuid(), 'orders', 'k' || i, 'T', "
               "'{}', 1, 0, 12, 'broker said no' FROM generate_series(1, 20) i");
    tu_exec(c, "CREATE TABLE public.hold (id int PRIMARY KEY); "
               "INSERT INTO public.hold SELECT generate_series(1, 40); "
               "GRANT SELECT ON public.hold TO PUBLIC");
    char *rules = tu_temp_file(
        "rules:\n"
        "  - name: stale-holds\n"
        "    detect: SELECT id AS key, pg_sleep(0.03) AS slow FROM public.hold\n"
        "    emit: {topic: shop.inventory, type: ReleaseHold}\n");
    const char *argv[] = {tu_reconcile_bin(), "repair", "--db", db(), "--rules", rules,
                          "--wait", "60", NULL};
    tu_child a = tu_start(argv), b = tu_start(argv);
    char *oa, *ea, *ob, *eb;
    int sa = tu_finish(a, 120000, &oa, &ea), sb = tu_finish(b, 120000, &ob, &eb);
    char *ta = tu_sprintf("%s%s", oa, ea), *tb = tu_sprintf("%s%s", ob, eb);
    /* One found everything and repaired it (1), leaving the 20 new dead
     * letters for a person to decide on (4); the other waited for it, then
     * found only those dead letters, and repaired nothing. */
    if (!((sa == 5 && sb == 4) || (sa == 4 && sb == 5)))
        fail_msg("exits %d and %d, want 5 and 4:\n--- a\n%s\n--- b\n%s", sa, sb, ta, tb);
    const char *second = sa == 4 ? ta : tb;
    contains(second, "waiting for the reconciler's lease");
    contains(second, "summary: 1 problem found, 0 repaired, 1 left; exit 4");
    contains(second, "[left] dead_letter");

    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.inbox"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.dead_letter WHERE consumer = '' "
                               "AND topic = 'orders'"),
                     20);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE topic = 'orders'"), 0);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox WHERE type = 'ReleaseHold'"),
                     40);
    assert_int_equal(tu_int(c, "SELECT count(DISTINCT aggregateid) FROM ferry.outbox "
                               "WHERE type = 'ReleaseHold'"),
                     40);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.reconcile_action "
                               "WHERE rule = 'stale-holds' AND times = 1"),
                     40);
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.reconcile_pass"), 2);
    assert_int_equal(tu_int(c, "SELECT count(DISTINCT holder) FROM ferry.reconcile_pass"), 2);
    free(ta);
    free(tb);
    free(oa);
    free(ea);
    free(ob);
    free(eb);
    tu_temp_remove(rules);
    PQfinish(c);
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(usage_errors),
        cmocka_unit_test(cannot_connect_is_8),
        cmocka_unit_test(unmigrated_database_is_8),
        cmocka_unit_test_setup(bad_rules_file_is_8, clean),
        cmocka_unit_test_setup(a_refused_input_is_named_in_every_spelling, clean),
        cmocka_unit_test_setup(clean_database_is_0, clean),
        cmocka_unit_test_setup(json_report_and_exit_statuses, clean),
        cmocka_unit_test_setup(progress_only_when_asked, clean),
        cmocka_unit_test_setup(progress_on_a_terminal_is_erased, clean),
        cmocka_unit_test_setup(repair_waits_for_the_lease, clean),
        cmocka_unit_test_setup(two_reconcilers_at_once_act_once, clean),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
