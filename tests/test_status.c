/*
 * test_status.c — `ferry-relay status` against a real PostgreSQL: counts
 * per shard (including a shard beyond shard_count), ages and lease states
 * by the database clock, dead letters, the JSON form, the table's
 * alignment, and the exits for bad usage, no server and no schema.
 *
 * cmd_status runs in this process with its stdout and stderr sent to
 * temporary files.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"
#include "../daemon/status.h"

typedef struct run {
    int rc;
    char *out;     /* what it wrote to stdout; caller frees */
    char *err;     /* ... to stderr */
} run;

static char *slurp(FILE *f)
{
    fflush(f);
    long n = ftell(f);
    assert_true(n >= 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    rewind(f);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* cmd_status("status", args..., NULL) with fds 1 and 2 captured. */
static run run_status(const char *first, ...)
{
    char *argv[16] = {"status"};
    int argc = 1;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a != NULL && argc < 15; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;

    FILE *out = tmpfile(), *err = tmpfile();
    assert_non_null(out);
    assert_non_null(err);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(STDOUT_FILENO), saved_err = dup(STDERR_FILENO);
    assert_true(saved_out >= 0 && saved_err >= 0);
    dup2(fileno(out), STDOUT_FILENO);
    dup2(fileno(err), STDERR_FILENO);
    run r;
    r.rc = cmd_status(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, STDOUT_FILENO);
    dup2(saved_err, STDERR_FILENO);
    close(saved_out);
    close(saved_err);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
}

static json_t *parse_json(const run *r)
{
    json_error_t jerr;
    json_t *root = json_loads(r->out, 0, &jerr);
    if (root == NULL)
        fail_msg("status --json is not JSON (%s at line %d): %s", jerr.text, jerr.line, r->out);
    assert_true(json_is_object(root));
    return root;
}

/* `status --db <the test cluster> --json`, which must exit with rc: its
 * document, for the caller to json_decref. */
static json_t *status_json(int rc)
{
    run r = run_status("--db", fpg_conninfo(tu_pg), "--json", NULL);
    assert_int_equal(r.rc, rc);
    json_t *root = parse_json(&r);
    run_free(&r);
    return root;
}

static json_t *shard_of(json_t *root, long long n)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(root, "shards"), i, s)
        if (json_integer_value(json_object_get(s, "shard")) == n)
            return s;
    fail_msg("shard %lld is not in the output", n);
    return NULL;
}

/* The line of text that starts (after blanks) with prefix and is followed
 * by a blank; NULL if none. Borrowed from text, up to the newline. */
static const char *line_starting(const char *text, const char *prefix, size_t *len)
{
    for (const char *l = text; *l; ) {
        const char *end = strchr(l, '\n');
        size_t n = end ? (size_t)(end - l) : strlen(l);
        const char *p = l;
        while (*p == ' ')
            p++;
        size_t k = strlen(prefix);
        if ((size_t)(p - l) + k < n && strncmp(p, prefix, k) == 0 && p[k] == ' ') {
            *len = n;
            return l;
        }
        l += n + (end != NULL);
    }
    return NULL;
}

/* Each test starts with 16 shards, no rows, no leases, no dead letters. */
static int clean(void **state)
{
    tu_clean_outbox(state);
    PGconn *c = tu_connect();
    tu_exec(c, "TRUNCATE ferry.lease");
    tu_exec(c, "UPDATE ferry.settings SET shard_count = 16");
    PQfinish(c);
    unsetenv("FERRY_DB");
    return 0;
}

/* ------------------------------------------------------------------ */

static void empty_database(void **state)
{
    run r = run_status("--db", fpg_conninfo(tu_pg), "--json", NULL);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.err, "");
    json_t *root = parse_json(&r);
    assert_int_equal(json_integer_value(json_object_get(root, "shard_count")), 16);
    assert_int_equal(json_array_size(json_object_get(root, "shards")), 16);
    assert_int_equal(json_integer_value(json_object_get(root, "unpublished")), 0);
    json_t *s15 = shard_of(root, 15);
    assert_int_equal(json_integer_value(json_object_get(s15, "unpublished")), 0);
    assert_true(json_is_null(json_object_get(s15, "oldest_age_s")));
    json_t *lease = json_object_get(s15, "lease");
    assert_string_equal(json_string_value(json_object_get(lease, "state")), "free");
    assert_string_equal(json_string_value(json_object_get(lease, "name")), "shard:15");
    assert_true(json_is_null(json_object_get(lease, "holder")));
    json_t *dl = json_object_get(root, "dead_letters");
    assert_int_equal(json_integer_value(json_object_get(dl, "total")), 0);
    assert_int_equal(json_array_size(json_object_get(dl, "oldest")), 0);
    /* The database clock, in UTC. */
    const char *now = json_string_value(json_object_get(root, "database_time"));
    assert_non_null(now);
    assert_int_equal(strlen(now), strlen("2025-01-01T00:00:00.000Z"));
    json_decref(root);
    run_free(&r);

    r = run_status("--db", fpg_conninfo(tu_pg), NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "shards: 16"));
    assert_non_null(strstr(r.out, "\ndead letters: 0\n"));
    assert_null(strstr(r.out, "CONSUMER"));
    size_t len;
    /* Empty shards are not listed; nothing ready and no relay is ok. */
    assert_null(line_starting(r.out, "15", &len));
    assert_null(line_starting(r.out, "0", &len));
    assert_int_equal(strncmp(r.out, "ok: ", 4), 0);
    run_free(&r);
}

/* Counts, ready rows, ages and every lease state, in both formats, and
 * against a count computed independently from the table. */
static void shards_and_leases(void **state)
{
    PGconn *c = tu_connect();
    /* shard_count may only grow; status must still show a row left on a
     * shard beyond it (a database set up by hand, say), so step around the
     * guard for this test. */
    tu_exec(c, "ALTER TABLE ferry.settings DISABLE TRIGGER settings_guard");
    tu_exec(c, "UPDATE ferry.settings SET shard_count = 4");
    tu_exec(c, "ALTER TABLE ferry.settings ENABLE TRIGGER settings_guard");
    tu_exec(c, "SELECT ferry.emit('t', 'k' || i, 'T', '{}') FROM generate_series(1, 40) i");
    /* A row of a key first seen under a larger shard count. */
    tu_exec(c, "INSERT INTO ferry.outbox (id, topic, aggregateid, type, payload, seq, shard) "
               "VALUES (gen_random_uuid(), 't', 'old-key', 'T', '{}', 1, 7)");
    /* Published rows do not count; a delayed one is unpublished, not ready;
     * one row is 100 s old by the database clock. */
    tu_exec(c, "UPDATE ferry.outbox SET published_at = now() WHERE aggregateid IN ('k1', 'k2')");
    tu_exec(c, "UPDATE ferry.outbox SET available_at = now() + interval '1 hour' "
               "WHERE aggregateid = 'k3'");
    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '100 seconds' "
               "WHERE aggregateid = 'k4'");
    long long old_shard = tu_int(c, "SELECT shard FROM ferry.outbox WHERE aggregateid = 'k4'");
    long long delayed_shard = tu_int(c, "SELECT shard FROM ferry.outbox WHERE aggregateid = 'k3'");
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) VALUES "
               "('shard:0', 'relay-a:101', 3, now() + interval '1 minute'),"
               "('shard:1', 'relay-b:202', 7, now() - interval '10 seconds'),"
               "('shard:2', NULL, 2, now() - interval '1 second')");

    /* Shard 0's holder has no heartbeat: ready rows nobody serves, exit 4. */
    run r = run_status("--json", "--db", fpg_conninfo(tu_pg), NULL);
    assert_int_equal(r.rc, 4);
    json_t *root = parse_json(&r);
    assert_int_equal(json_integer_value(json_object_get(root, "shard_count")), 4);
    assert_int_equal(json_array_size(json_object_get(root, "shards")), 5);
    assert_int_equal(json_integer_value(json_object_get(root, "unpublished")), 39);
    assert_int_equal(json_integer_value(json_object_get(root, "ready")), 38);
    for (long long n = 0; n < 4; n++) {
        char *sql = tu_sprintf("SELECT count(*) FROM ferry.outbox "
                               "WHERE shard = %lld AND published_at IS NULL", n);
        json_t *s = shard_of(root, n);
        assert_int_equal(json_integer_value(json_object_get(s, "unpublished")), tu_int(c, sql));
        assert_int_equal(json_integer_value(json_object_get(s, "ready")),
                         tu_int(c, sql) - (n == delayed_shard));
        free(sql);
    }
    json_t *s7 = shard_of(root, 7);
    assert_int_equal(json_integer_value(json_object_get(s7, "unpublished")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s7, "lease"), "state")),
                        "free");
    double age = json_real_value(json_object_get(shard_of(root, old_shard), "oldest_age_s"));
    assert_true(age >= 100.0 && age < 200.0);

    json_t *l0 = json_object_get(shard_of(root, 0), "lease");
    assert_string_equal(json_string_value(json_object_get(l0, "state")), "held");
    assert_string_equal(json_string_value(json_object_get(l0, "holder")), "relay-a:101");
    assert_int_equal(json_integer_value(json_object_get(l0, "epoch")), 3);
    double in = json_real_value(json_object_get(l0, "expires_in_s"));
    assert_true(in > 30.0 && in <= 60.0);
    assert_non_null(json_string_value(json_object_get(l0, "expires_at")));
    json_t *l1 = json_object_get(shard_of(root, 1), "lease");
    assert_string_equal(json_string_value(json_object_get(l1, "state")), "expired");
    assert_string_equal(json_string_value(json_object_get(l1, "holder")), "relay-b:202");
    assert_int_equal(json_integer_value(json_object_get(l1, "epoch")), 7);
    assert_true(json_real_value(json_object_get(l1, "expires_in_s")) <= -10.0);
    json_t *l2 = json_object_get(shard_of(root, 2), "lease");
    assert_string_equal(json_string_value(json_object_get(l2, "state")), "free");
    assert_true(json_is_null(json_object_get(l2, "holder")));
    assert_int_equal(json_integer_value(json_object_get(l2, "epoch")), 2);
    json_t *l3 = json_object_get(shard_of(root, 3), "lease");
    assert_string_equal(json_string_value(json_object_get(l3, "state")), "free");
    assert_true(json_is_null(json_object_get(l3, "epoch")));
    json_decref(root);
    run_free(&r);

    /* The table: the same numbers, and columns that line up. */
    r = run_status("--db", fpg_conninfo(tu_pg), NULL);
    assert_int_equal(r.rc, 4);
    size_t hlen, len;
    const char *head = line_starting(r.out, "SHARD", &hlen);
    assert_non_null(head);
    const char *holder_col = strstr(head, "HOLDER");
    const char *lease_col = strstr(head, "LEASE");
    for (long long n = 0; n < 4; n++) {
        char key[8];
        snprintf(key, sizeof key, "%lld", n);
        const char *line = line_starting(r.out, key, &len);
        assert_non_null(line);
        long long shard, unpublished, ready;
        assert_int_equal(sscanf(line, "%lld %lld %lld", &shard, &unpublished, &ready), 3);
        char *sql = tu_sprintf("SELECT count(*) FROM ferry.outbox "
                               "WHERE shard = %lld AND published_at IS NULL", n);
        assert_int_equal(unpublished, tu_int(c, sql));
        free(sql);
        /* Left-aligned text columns start under their heading. */
        static const char *const state_of[] = {"held", "expired", "free", "free"};
        static const char *const holder_of[] = {"relay-a:101", "relay-b:202", "-", "-"};
        assert_memory_equal(line + (lease_col - head), state_of[n], strlen(state_of[n]));
        assert_memory_equal(line + (holder_col - head), holder_of[n], strlen(holder_of[n]));
    }
    const char *line7 = line_starting(r.out, "7", &len);
    assert_non_null(line7);
    assert_int_equal(strtol(line7, NULL, 10), 7);
    const char *total = line_starting(r.out, "total", &len);
    assert_non_null(total);
    long long t_unpub, t_ready;
    assert_int_equal(sscanf(total, " total %lld %lld", &t_unpub, &t_ready), 2);
    assert_int_equal(t_unpub, 39);
    assert_int_equal(t_ready, 38);
    run_free(&r);
    PQfinish(c);
}

/* Counts per consumer, and the 10 oldest with their fields; hostile text
 * does not break the table. */
static void dead_letters(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregateid, type, "
               "  payload, seq, shard, created_at, failed_at, attempts, reason) "
               "SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'billing' ELSE '' END, "
               "  'orders', 'key-' || i, 'T', '{}', 1, 0, now() - interval '1 day', "
               "  now() - (20 - i) * interval '1 minute', i, 'reason-' || i "
               "FROM generate_series(0, 11) i");
    tu_exec(c, "UPDATE ferry.dead_letter SET reason = 'multi\nline ' || repeat('x', 200) "
               "WHERE aggregateid = 'key-1'");

    json_t *root = status_json(0);
    json_t *dl = json_object_get(root, "dead_letters");
    assert_int_equal(json_integer_value(json_object_get(dl, "total")), 12);
    json_t *by = json_object_get(dl, "by_consumer");
    assert_int_equal(json_array_size(by), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(by, 0), "consumer")), "");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(by, 0), "count")), 8);
    assert_string_equal(json_string_value(json_object_get(json_array_get(by, 1), "consumer")),
                        "billing");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(by, 1), "count")), 4);
    json_t *oldest = json_object_get(dl, "oldest");
    assert_int_equal(json_array_size(oldest), 10);
    for (size_t i = 0; i < 10; i++) {
        json_t *d = json_array_get(oldest, i);
        char key[16];
        snprintf(key, sizeof key, "key-%zu", i);
        assert_string_equal(json_string_value(json_object_get(d, "key")), key);
        assert_string_equal(json_string_value(json_object_get(d, "topic")), "orders");
        assert_string_equal(json_string_value(json_object_get(d, "consumer")),
                            i % 3 == 0 ? "billing" : "");
        assert_int_equal(json_integer_value(json_object_get(d, "attempts")), (long long)i);
        char *sql = tu_sprintf("SELECT message_id::text FROM ferry.dead_letter "
                               "WHERE aggregateid = '%s'", key);
        char *id = tu_str(c, sql);
        assert_string_equal(json_string_value(json_object_get(d, "message_id")), id);
        free(id);
        free(sql);
    }
    assert_string_equal(json_string_value(json_object_get(json_array_get(oldest, 0), "reason")),
                        "reason-0");
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(oldest, 1), "reason")),
                           "multi\nline"));
    json_decref(root);

    run r = run_status("--db", fpg_conninfo(tu_pg), NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "\ndead letters: 12\n"));
    size_t len;
    const char *relay = line_starting(r.out, "(relay)", &len);
    assert_non_null(relay);
    assert_int_equal(strtol(relay + strlen("(relay)"), NULL, 10), 8);
    const char *billing = line_starting(r.out, "billing", &len);
    assert_non_null(billing);
    assert_int_equal(strtol(billing + strlen("billing"), NULL, 10), 4);
    assert_non_null(strstr(r.out, "\noldest 10:\n"));
    assert_non_null(strstr(r.out, "reason-0\n"));
    assert_non_null(strstr(r.out, "reason-9\n"));
    assert_null(strstr(r.out, "reason-10"));
    assert_null(strstr(r.out, "reason-11"));
    /* The newline became '?', the long reason was cut. */
    const char *multi = strstr(r.out, "multi?line xxx");
    assert_non_null(multi);
    assert_non_null(strstr(multi, "...\n"));
    assert_null(strstr(r.out, "multi\nline"));
    assert_null(strstr(r.out, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    run_free(&r);
    PQfinish(c);
}

static void usage_and_connection_errors(void **state)
{
    run r = run_status(NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "no database"));
    assert_string_equal(r.out, "");
    run_free(&r);

    r = run_status("--db", fpg_conninfo(tu_pg), "--bogus", NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "usage:"));
    run_free(&r);

    r = run_status("--db", fpg_conninfo(tu_pg), "extra", NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "unexpected argument \"extra\""));
    run_free(&r);

    r = run_status("--db", NULL);
    assert_int_equal(r.rc, 2);
    run_free(&r);

    r = run_status("--help", NULL);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "usage: ferry-relay status"));
    run_free(&r);

    r = run_status("--db", "host=/nonexistent/ferry-test port=1 dbname=x", NULL);
    assert_int_equal(r.rc, 1);
    assert_non_null(strstr(r.err, "could not connect"));
    assert_string_equal(r.out, "");
    run_free(&r);

    r = run_status("--db", "this is not a conninfo", NULL);
    assert_int_equal(r.rc, 1);
    assert_non_null(strstr(r.err, "could not connect"));
    run_free(&r);

    /* FERRY_DB stands in for --db. */
    setenv("FERRY_DB", fpg_conninfo(tu_pg), 1);
    r = run_status("--json", NULL);
    assert_int_equal(r.rc, 0);
    json_decref(parse_json(&r));
    run_free(&r);
    unsetenv("FERRY_DB");

    /* The relay's config file stands in as well (--config or FERRY_CONFIG),
     * below FERRY_DB and --db, as for run; a bad one is refused, placed. */
    char path[] = "/tmp/ferry-test-status-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f, "db: \"%s\"\nkafka: {bootstrap.servers: \"x:1\"}\n", fpg_conninfo(tu_pg));
    assert_int_equal(fclose(f), 0);
    r = run_status("--config", path, "--json", NULL);
    assert_int_equal(r.rc, 0);
    json_decref(parse_json(&r));
    run_free(&r);
    setenv("FERRY_CONFIG", path, 1);
    r = run_status("--json", NULL);
    assert_int_equal(r.rc, 0);
    run_free(&r);
    r = run_status("--db", "host=/nonexistent/ferry-test port=1 dbname=x", NULL);
    assert_int_equal(r.rc, 1);                   /* --db over the file */
    run_free(&r);
    unsetenv("FERRY_CONFIG");
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "db: x\nbatch_size: lots\n");
    assert_int_equal(fclose(f), 0);
    r = run_status("--config", path, NULL);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, ":2:13: batch_size: expected a decimal integer"));
    run_free(&r);
    assert_int_equal(unlink(path), 0);
}

/* The first line of text, NUL-terminated into buf. */
static const char *first_line(const char *text, char *buf, size_t len)
{
    size_t n = strcspn(text, "\n");
    snprintf(buf, len, "%.*s", (int)n, text);
    return buf;
}

/* `status --db <the test cluster>` (with --max-lag max_lag unless that is
 * NULL), which must exit with rc, its first line starting with verdict:
 * the run, for the caller to run_free. */
static run status_verdict(const char *max_lag, int rc, const char *verdict)
{
    run r = max_lag ? run_status("--db", fpg_conninfo(tu_pg), "--max-lag", max_lag, NULL)
                    : run_status("--db", fpg_conninfo(tu_pg), NULL);
    char line[256];
    assert_int_equal(r.rc, rc);
    first_line(r.out, line, sizeof line);
    if (strncmp(line, verdict, strlen(verdict)) != 0)
        fail_msg("verdict: %s", line);
    return r;
}

/* No relay has a live heartbeat and rows are ready: the verdict says so
 * in the first line, the exit is 4 (as `ferry-reconcile check` finding a
 * problem), and no age in the output is negative. */
static void verdict_no_relay(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "SELECT ferry.emit('t', 'k' || i, 'T', '{}') FROM generate_series(1, 4) i");
    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '200 seconds', "
               "  available_at = now() - interval '200 seconds' WHERE aggregateid = 'k1'");
    long long shard = tu_int(c, "SELECT shard FROM ferry.outbox WHERE aggregateid = 'k1'");
    /* Its shard's lease was released long ago: free, expired 300 s back. */
    char *sql = tu_sprintf("INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                           "VALUES ('shard:%lld', NULL, 4, now() - interval '300 seconds')",
                           shard);
    tu_exec(c, sql);
    free(sql);
    /* A relay that stopped: its heartbeat expired. */
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at, renewed_at) VALUES "
               "('relay:gone', 'gone', 1, now() - interval '5 seconds', "
               " now() - interval '15 seconds')");

    run r = status_verdict(NULL, 4, "PROBLEM: no relay is live; 4 rows ready, oldest 20");
    for (const char *m = r.out; (m = strstr(m, " -")) != NULL; m++)   /* no negative number */
        if (m[2] >= '0' && m[2] <= '9')
            fail_msg("a negative number in:\n%s", r.out);
    size_t len;
    char key[24];
    snprintf(key, sizeof key, "%lld", shard);
    assert_non_null(line_starting(r.out, key, &len));
    /* Shards without rows are not listed: 4 rows are on at most 4 shards. */
    int listed = 0;
    for (int n = 0; n < 16; n++) {
        snprintf(key, sizeof key, "%d", n);
        listed += line_starting(r.out, key, &len) != NULL;
    }
    assert_true(listed >= 1 && listed <= 4);
    assert_non_null(strstr(r.out, "gone"));    /* the stopped relay is shown, not live */
    run_free(&r);

    json_t *root = status_json(4);
    json_t *v = json_object_get(root, "verdict");
    assert_true(json_is_false(json_object_get(v, "ok")));
    assert_int_equal(json_integer_value(json_object_get(v, "live_relays")), 0);
    assert_int_equal(json_integer_value(json_object_get(v, "ready")), 4);
    double oldest = json_real_value(json_object_get(v, "oldest_ready_age_s"));
    assert_true(oldest >= 200.0 && oldest < 300.0);
    assert_non_null(strstr(json_string_value(json_object_get(v, "text")), "PROBLEM: no relay"));
    json_t *relays = json_object_get(root, "relays");
    assert_int_equal(json_array_size(relays), 1);
    assert_true(json_is_false(json_object_get(json_array_get(relays, 0), "live")));
    json_decref(root);
    PQfinish(c);
}

/* A live relay holding every shard, rows fresh: ok, exit 0, the relay
 * with its shards. Then one ready row older than --max-lag: behind. */
static void verdict_relay_keeping_up(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at, renewed_at) VALUES "
               "('relay:r1', 'r1', 1, now() + interval '10 seconds', now())");
    tu_exec(c, "INSERT INTO ferry.lease (name, holder, epoch, expires_at, renewed_at) "
               "SELECT 'shard:' || i, 'r1', 1, now() + interval '10 seconds', now() "
               "  FROM generate_series(0, 15) i");
    tu_exec(c, "SELECT ferry.emit('t', 'k' || i, 'T', '{}') FROM generate_series(1, 3) i");

    run r = status_verdict(NULL, 0, "ok: 1 relay live, 16/16 shards served, oldest ready row ");
    size_t len;
    const char *relay = line_starting(r.out, "r1", &len);
    assert_non_null(relay);
    run_free(&r);

    json_t *root = status_json(0);
    json_t *v = json_object_get(root, "verdict");
    assert_true(json_is_true(json_object_get(v, "ok")));
    assert_int_equal(json_integer_value(json_object_get(v, "shards_served")), 16);
    json_t *r1 = json_array_get(json_object_get(root, "relays"), 0);
    assert_string_equal(json_string_value(json_object_get(r1, "holder")), "r1");
    assert_true(json_is_true(json_object_get(r1, "live")));
    assert_int_equal(json_array_size(json_object_get(r1, "shards")), 16);
    json_decref(root);

    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '100 seconds', "
               "  available_at = now() - interval '100 seconds' WHERE aggregateid = 'k1'");
    r = status_verdict("30", 4, "PROBLEM: behind: oldest ready row 10");
    run_free(&r);
    r = run_status("--db", fpg_conninfo(tu_pg), "--max-lag", "300", NULL);
    assert_int_equal(r.rc, 0);
    run_free(&r);

    /* The key's first message a relay dead letter, its next one as old:
     * it waits for a decision on the letter, which the verdict counts, not
     * for a relay that is behind. Before: "PROBLEM: behind", exit 4 (an
     * outside audit). */
    tu_exec(c, "SELECT ferry.emit('t', 'k1', 'T', '{}')");
    tu_exec(c, "UPDATE ferry.outbox SET attempts = 1 WHERE aggregateid = 'k1' AND seq = 1");
    assert_int_equal(tu_int(c, "SELECT count(*) FROM ferry.outbox o, "
                               "ferry.outbox_dead_letter(o.id, 1, false, 'test') d "
                               "WHERE o.aggregateid = 'k1' AND o.seq = 1 "
                               "AND d.outcome = 'moved'"), 1);
    tu_exec(c, "UPDATE ferry.outbox SET created_at = now() - interval '100 seconds', "
               "  available_at = now() - interval '100 seconds' WHERE aggregateid = 'k1'");
    r = status_verdict("30", 0, "ok: 1 relay live");
    if (strstr(r.out, "1 dead letter") == NULL)
        fail_msg("the dead letter is not counted:\n%s", r.out);
    run_free(&r);
    tu_exec(c, "DELETE FROM ferry.dead_letter WHERE topic = 't'");
    PQfinish(c);
}

static void database_without_schema(void **state)
{
    char *ci = tu_fresh_database("plain");
    run r = run_status("--db", ci, NULL);
    assert_int_equal(r.rc, 1);
    assert_non_null(strstr(r.err, "ferry schema not found: run ferry-relay migrate"));
    assert_string_equal(r.out, "");
    run_free(&r);
    r = run_status("--db", ci, "--json", NULL);
    assert_int_equal(r.rc, 1);
    assert_non_null(strstr(r.err, "ferry schema not found: run ferry-relay migrate"));
    run_free(&r);
    free(ci);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(empty_database, clean),
        cmocka_unit_test_setup(shards_and_leases, clean),
        cmocka_unit_test_setup(dead_letters, clean),
        cmocka_unit_test_setup(usage_and_connection_errors, clean),
        cmocka_unit_test_setup(database_without_schema, clean),
        cmocka_unit_test_setup(verdict_no_relay, clean),
        cmocka_unit_test_setup(verdict_relay_keeping_up, clean),
    };
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
