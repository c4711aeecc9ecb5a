/*
 * test_privileges.c — what each shipped role may do, as one table.
 *
 * FUNCS and TABLES below say, for every function, table and sequence of
 * the ferry schema and every shipped role, what the role may do. The test
 * generates the checks from them and runs each as a login role that is a
 * member of that one role only (and of nothing, for "nobody"): an allowed
 * cell must work, a refused one must fail with 42501. It also reads the
 * schema's objects from pg_catalog and fails on any the tables do not
 * list (or list but the schema lacks): a new function, table or column
 * cannot be forgotten — whoever adds one says here who may use it.
 *
 * Beyond the object level, the rows: a consumer is confined to the names
 * its role owns (ferry.consumer_owner), no one uses the relay's empty
 * name through the inbox, and the relay and the reconciler make relay
 * dead letters only (issue 12, item 6).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* The shipped roles, and a login role in none of them. */
enum { R_WRITER, R_CONSUMER, R_RELAY, R_RECONCILER, R_NOBODY, R_COUNT };
#define W (1u << R_WRITER)
#define C (1u << R_CONSUMER)
#define R (1u << R_RELAY)
#define X (1u << R_RECONCILER)
#define NONE 0u

static const char *const role_of[R_COUNT] = {"ferry_writer", "ferry_consumer", "ferry_relay",
                                             "ferry_reconciler", NULL};
/* The login role of each column: a member of that role only. */
static const char *const login_of[R_COUNT] = {"pv_writer", "pv_consumer", "pv_relay",
                                              "pv_reconciler", "pv_nobody"};

/* The consumer name pv_consumer owns; another role's; a name no one owns. */
#define OWN "pv-own"
#define OTHERS "pv-others"
#define UNOWNED "pv-unowned"

/* A saga and a participant step that exist (fixtures), for the calls
 * that need one. */
#define SAGA "'00000000-0000-7000-8000-0000000000aa'::uuid"

typedef struct fn_cell {
    const char *fn;         /* as regprocedure prints it */
    unsigned may;           /* the roles that may call it */
    const char *call;       /* a call that works for them; @C: a consumer name */
    int confined;           /* its first argument is a consumer name, checked */
} fn_cell;

static const fn_cell FUNCS[] = {
    {"ferry.uuid_v7()", W | C | X, "SELECT ferry.uuid_v7()", 0},
    {"ferry.wake_lock()", W | C | R | X, "SELECT * FROM ferry.wake_lock()", 0},
    {"ferry.wake_shard_lock(integer)", W | C | R | X, "SELECT * FROM ferry.wake_shard_lock(0)", 0},   /* schema 26 */
    {"ferry.settings_guard()", NONE, "SELECT ferry.settings_guard()", 0},
    {"ferry.lease_guard()", NONE, "SELECT ferry.lease_guard()", 0},            /* schema 41 */
    {"ferry.header_name_fold(text)", NONE, "SELECT ferry.header_name_fold('x')", 0},
    {"ferry.settings_emit_mode_guard()", NONE, "SELECT ferry.settings_emit_mode_guard()", 0},
    {"ferry.settings_wal_turn()", NONE, "SELECT ferry.settings_wal_turn()", 0},   /* schema 22 */
    {"ferry.emit(text,text,text,jsonb,jsonb)", W | C | X,
     "SELECT ferry.emit('pv', 'k', 'T', '{}'::jsonb)", 0},
    {"ferry.emit(text,text,text,text,text)", W | C,
     "SELECT ferry.emit('pv', 'k', 'T', '{}'::text)", 0},
    {"ferry.emit_with_id(uuid,text,text,text,text,text,text,bigint)", W | C | X,
     "SELECT ferry.emit_with_id(gen_random_uuid(), 'pv', 'k', 'T', '{}')", 0},
    {"ferry.wal_park(uuid,text,text,text,text,jsonb,jsonb,bigint,timestamp with time zone)", R,
     "SELECT ferry.wal_park(gen_random_uuid(), 'pv', 'nokey', '', 'T', '{}', '{}', 1, now())", 0},
    {"ferry.outbox_wal_stamp(uuid[])", R,
     "SELECT ferry.outbox_wal_stamp(ARRAY[gen_random_uuid()])", 0},    /* schema 36 */
    {"ferry.replay_dead_letter(bigint)", X, "SELECT ferry.replay_dead_letter(-1)", 0},
    {"ferry.discard_dead_letter(bigint)", X, "SELECT ferry.discard_dead_letter(-1)", 0},
    {"ferry.outbox_dead_letter(uuid,integer,boolean,text)", R | X,
     "SELECT * FROM ferry.outbox_dead_letter(gen_random_uuid(), 1, false, 'pv')", 0},
    {"ferry.outbox_purge_published(timestamp with time zone,timestamp with time zone,uuid,"
     "integer)", X,
     "SELECT * FROM ferry.outbox_purge_published(now() - interval '1 day', '-infinity', "
     "gen_random_uuid(), 1)", 0},       /* schema 27 */
    {"ferry.inbox_claim(text,uuid,text,text,bigint,boolean)", C,
     "SELECT ferry.inbox_claim('@C', gen_random_uuid(), 'pv', 'k', 1)", 1},
    {"ferry.inbox_hold(text,uuid,text,text,bigint,text,text,text,jsonb,integer,bigint,text)", C,
     "SELECT ferry.inbox_hold('@C', gen_random_uuid(), 'pv', 'k', 2, 'T', '', '{}', '{}', "
     "0, 0, 'gap')", 1},
    {"ferry.inbox_dead_letter(text,uuid,text,text,bigint,text,text,text,jsonb,integer,text)", C,
     "SELECT ferry.inbox_dead_letter('@C', gen_random_uuid(), 'pv', 'k', 1, 'T', '', '{}', "
     "'{}', 1, 'test')", 1},
    {"ferry.inbox_ready(text,integer)", C, "SELECT count(*) FROM ferry.inbox_ready('@C', 5)", 1},
    {"ferry.inbox_ready_key(text,text,text,integer)", C,
     "SELECT count(*) FROM ferry.inbox_ready_key('@C', 'pv', 'k', 5)", 1},
    {"ferry.inbox_unhold(text,uuid)", C, "SELECT ferry.inbox_unhold('@C', gen_random_uuid())",
     1},
    /* The consumer protocol, version 1 (schema 12). */
    {"ferry.consume_protocol()", C, "SELECT ferry.consume_protocol()", 0},
    {"ferry.consume_claim(text,uuid,text,text,bigint,text,jsonb,text,text,integer,bigint,"
     "boolean)", C,
     "SELECT * FROM ferry.consume_claim('@C', gen_random_uuid(), 'pv', 'k', 1)", 1},
    {"ferry.consume_finish(text,uuid)", C,
     "SELECT ferry.consume_finish('@C', gen_random_uuid())", 1},
    {"ferry.consume_fail(text,uuid,text,text,text,bigint,text,jsonb,text,text,integer,"
     "boolean)", C,
     "SELECT * FROM ferry.consume_fail('@C', gen_random_uuid(), 'pv', 'k', 'test')", 1},
    {"ferry.consume_ready(text,text,text,integer)", C,
     "SELECT count(*) FROM ferry.consume_ready('@C')", 1},
    {"ferry.consume_skip_gap(text,text,text)", C,
     "SELECT ferry.consume_skip_gap('@C', 'pv', 'k')", 1},
    /* Version 1.1 (schema 16). */
    {"ferry.consume_finish_many(text,uuid[])", C,
     "SELECT ferry.consume_finish_many('@C', ARRAY[gen_random_uuid()])", 1},
    /* Version 1.2 (schema 20). */
    {"ferry.consume_claim_many(text,uuid[],text[],text[],bigint[],text[],jsonb[],text[],text[],"
     "integer[],bigint[],boolean)", C,
     "SELECT count(*) FROM ferry.consume_claim_many('@C', ARRAY[gen_random_uuid()], "
     "ARRAY['pv'], ARRAY['k'], ARRAY[NULL::bigint])", 1},
    /* Version 1.3 (schema 25). */
    {"ferry.consume_claim_next(text,uuid[],text[],text[],bigint[],boolean[],boolean)", C,
     "SELECT count(*) FROM ferry.consume_claim_next('@C', ARRAY[gen_random_uuid()], "
     "ARRAY['pv'], ARRAY['k'], ARRAY[NULL::bigint])", 1},
    {"ferry.emit_message(text,text,text,text,text,text,bigint,uuid)", W | C,
     "SELECT ferry.emit_message('pv', 'k', 'T', '{}')", 0},
    /* The reconciler's, for any consumer (an operator's repair). */
    {"ferry.inbox_skip_gap(text,text,text)", X, "SELECT ferry.inbox_skip_gap('@C', 'pv', 'k')",
     0},
    {"ferry.inbox_repark_(text,text,text,bigint)", NONE,
     "SELECT ferry.inbox_repark_('@C', 'pv', 'k', -1)", 0},
    {"ferry.consumer_guard_(text)", NONE, "SELECT ferry.consumer_guard_('@C')", 0},
    {"ferry.inbox_settle_(text,text,text)", NONE,
     "SELECT ferry.inbox_settle_('@C', 'pv', 'k')", 0},
    /* Schema 34: a message's own place when another holds its id. */
    {"ferry.inbox_other_id_(text,uuid,text,text,bigint)", NONE,
     "SELECT ferry.inbox_other_id_('@C', gen_random_uuid(), 'pv', 'k', 1)", 0},
    {"ferry.inbox_hold_row_(text,uuid,text,text,bigint,text,text,text,jsonb,integer,bigint,text)",
     NONE,
     "SELECT ferry.inbox_hold_row_('@C', gen_random_uuid(), 'pv', 'k', 1, '', '', '{}', '{}', "
     "-1, -1, 'gap')", 0},
    {"ferry.saga_create(uuid,text,text,text,integer,jsonb,bigint,bigint,jsonb)", W | C,
     "SELECT ferry.saga_create(gen_random_uuid(), 'd', 'h', 'running', 0, '{}', 0, 0, '{}')", 0},
    {"ferry.saga_lock(uuid)", W | C | X, "SELECT count(*) FROM ferry.saga_lock(" SAGA ")", 0},
    {"ferry.saga_next_due(bigint)", W | C | X, "SELECT count(*) FROM ferry.saga_next_due(0)", 0},
    {"ferry.saga_next_due(bigint,uuid[])", W | C | X,
     "SELECT count(*) FROM ferry.saga_next_due(0, '{}')", 0},
    {"ferry.saga_save(uuid,bigint,bigint,text,integer,bigint,jsonb)", W | C | X,
     "SELECT ferry.saga_save(" SAGA ", 0, 1, 'running', 0, 0, '{}')", 0},
    {"ferry.saga_audit(uuid,text,text,text,integer,uuid,jsonb)", W | C | X,
     "SELECT ferry.saga_audit(" SAGA ", 's', 'action', 'sent', 1, NULL, NULL)", 0},
    {"ferry.participant_begin(text,uuid,integer,text,integer)", W | C,
     "SELECT count(*) FROM ferry.participant_begin('p', " SAGA ", 0, 'action', 0)", 0},
    {"ferry.participant_record(text,uuid,integer,text,integer,text,text,uuid)", W | C,
     "SELECT ferry.participant_record('p', " SAGA ", 0, 'action', 7, 'applied', NULL, NULL)", 0},
    /* Schema 013: an event's store, audit rows and commands in one call. */
    {"ferry.saga_record(uuid,jsonb,jsonb)", NONE,
     "SELECT ferry.saga_record(" SAGA ", '[]', '[]')", 0},
    {"ferry.saga_begin(uuid,text,text,text,integer,jsonb,bigint,bigint,jsonb,jsonb,jsonb)",
     W | C,
     "SELECT ferry.saga_begin(gen_random_uuid(), 'd', 'h', 'running', 0, '{}', 0, 0, '{}', "
     "'[]', '[]')", 0},
    {"ferry.saga_store(uuid,bigint,bigint,text,integer,bigint,jsonb,jsonb,jsonb)", W | C | X,
     "SELECT ferry.saga_store(" SAGA ", 0, 1, 'running', 0, 0, '{}', '[]', '[]')", 0},
    {"ferry.saga_lock_next_due(bigint,uuid[])", W | C | X,
     "SELECT count(*) FROM ferry.saga_lock_next_due(0, '{}')", 0},
    {"ferry.saga_lock_next_due(bigint,uuid[],text[],text[])", W | C | X,
     "SELECT count(*) FROM ferry.saga_lock_next_due(0, '{}', '{}', '{}')", 0},   /* schema 37 */
    {"ferry.participant_finish(text,uuid,integer,text,integer,boolean,text,text,uuid,uuid,"
     "text,text,text,text,text)", W | C,
     "SELECT ferry.participant_finish('p', " SAGA ", 0, 'action', 9, true, 'applied', NULL, "
     "NULL, gen_random_uuid(), 'pv', 'k', 'T', '{}', '{}')", 0},
};

/* Per table: who may SELECT, INSERT, DELETE; and per role the columns it
 * may UPDATE ("*": all of them, a comma-separated list, NULL: none).
 * TRUNCATE, REFERENCES and TRIGGER: no one. Sequences: no one, for
 * anything (identity columns need no sequence privilege). */
typedef struct tab_cell {
    const char *table;
    char kind;              /* 'r' table, 'S' sequence */
    unsigned sel, ins, del;
    const char *upd[R_COUNT];
} tab_cell;

static const tab_cell TABLES[] = {
    {"schema_version", 'r', W | C | R | X, NONE, NONE, {0}},
    {"settings", 'r', R | X, NONE, NONE, {[R_RELAY] = "wake_relays"}},
    /* The reconciler moves and purges rows by function (schemas 27, 29). */
    {"outbox", 'r', R | X, NONE, R, {[R_RELAY] = "attempts,last_error,published_at"}},
    {"outbox_key", 'r', R | X, NONE, NONE, {0}},
    /* Row-confined by policy: see the dead letter tests below. */
    {"dead_letter", 'r', R | X, R, R | X, {[R_RELAY] = "*", [R_RECONCILER] = "*"}},
    {"dead_letter_id_seq", 'S', NONE, NONE, NONE, {0}},
    {"inbox", 'r', X, NONE, X, {0}},
    {"inbox_key", 'r', X, NONE, NONE, {0}},
    {"inbox_held", 'r', X, NONE, X, {0}},
    {"lease", 'r', R | X, R | X, R | X, {[R_RELAY] = "*", [R_RECONCILER] = "*"}},
    {"saga", 'r', X, X, X, {[R_RECONCILER] = "*"}},
    {"saga_step", 'r', X, X, X, {[R_RECONCILER] = "*"}},
    {"participant_step", 'r', X, NONE, NONE, {0}},
    {"participant_command", 'r', X, NONE, NONE, {0}},
    {"dead_letter_log", 'r', X, X, NONE, {0}},
    {"dead_letter_log_id_seq", 'S', NONE, NONE, NONE, {0}},
    {"reconcile_action", 'r', X, X, X, {[R_RECONCILER] = "*"}},
    {"reconcile_pass", 'r', X, X, X, {0}},
    {"reconcile_pass_id_seq", 'S', NONE, NONE, NONE, {0}},
    {"consumer_owner", 'r', X, NONE, NONE, {0}},
    {"inbox_attempt", 'r', X, NONE, X, {0}},      /* the garbage sweep (schema 16) */
    /* Schema 21: the relay's role records the slot it creates. */
    {"wal_slot", 'r', R | X, R, NONE, {[R_RELAY] = "*"}},
    /* Schema 41: its lock is the emit mode lock; no role may take it. */
    {"mode_gate", 'r', NONE, NONE, NONE, {0}},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static PGconn *as[R_COUNT];
static int checks;          /* how many cells were asserted */

static int setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    PGconn *admin = tu_connect();
    for (int r = 0; r < R_COUNT; r++) {
        char *sql = role_of[r]
                        ? tu_sprintf("CREATE ROLE %s LOGIN IN ROLE %s", login_of[r], role_of[r])
                        : tu_sprintf("CREATE ROLE %s LOGIN", login_of[r]);
        tu_exec(admin, sql);
        free(sql);
    }
    tu_exec(admin, "CREATE ROLE pv_other LOGIN IN ROLE ferry_consumer; "
                   "INSERT INTO ferry.consumer_owner (consumer, role) VALUES "
                   "('" OWN "', 'pv_consumer'), ('" OTHERS "', 'pv_other'); "
                   "SELECT ferry.saga_create(" SAGA ", 'd', 'h', 'running', 0, '{}', 0, 0, "
                   "'{}'); "
                   "SELECT ferry.participant_begin('p', " SAGA ", 0, 'action', 0)");
    PQfinish(admin);
    for (int r = 0; r < R_COUNT; r++)
        as[r] = tu_connect_as(login_of[r]);
    return 0;
}

static int teardown(void **state)
{
    for (int r = 0; r < R_COUNT; r++)
        PQfinish(as[r]);
    return tu_group_teardown(state);
}

/* Run sql as role r in a transaction rolled back after: NULL if it
 * worked, else its SQLSTATE and message in buf. */
static const char *try_as(int r, const char *sql, char *buf, size_t size)
{
    tu_exec(as[r], "BEGIN");
    PGresult *res = PQexec(as[r], sql);
    const char *out = NULL;
    if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        snprintf(buf, size, "%s %s", st ? st : "?????", PQresultErrorMessage(res));
        out = buf;
    }
    PQclear(res);
    tu_exec(as[r], "ROLLBACK");
    return out;
}

/* One cell, both ways: allowed works, refused is 42501. */
static void cell(int r, int allowed, const char *what, const char *sql)
{
    char buf[1024];
    const char *got = try_as(r, sql, buf, sizeof buf);
    checks++;
    if (allowed && got != NULL)
        fail_msg("%s should be allowed %s, but: %s\n  (%s)", login_of[r], what, got, sql);
    if (!allowed && got == NULL)
        fail_msg("%s should be refused %s, but it worked\n  (%s)", login_of[r], what, sql);
    if (!allowed && strncmp(got, "42501", 5) != 0)
        fail_msg("%s refused %s with %s, not 42501\n  (%s)", login_of[r], what, got, sql);
}

/* call with each @C replaced by name: malloc'd. */
static char *with_name(const char *call, const char *name)
{
    size_t n = strlen(call) + 1;
    for (const char *p = call; (p = strstr(p, "@C")) != NULL; p += 2)
        n += strlen(name);
    char *out = malloc(n);
    assert_non_null(out);
    char *o = out;
    for (const char *p = call; *p != '\0';) {
        if (p[0] == '@' && p[1] == 'C') {
            o = stpcpy(o, name);
            p += 2;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------ coverage */

static int listed_fn(const char *fn)
{
    for (size_t i = 0; i < COUNT(FUNCS); i++)
        if (strcmp(FUNCS[i].fn, fn) == 0)
            return 1;
    return 0;
}

static const tab_cell *listed_tab(const char *name)
{
    for (size_t i = 0; i < COUNT(TABLES); i++)
        if (strcmp(TABLES[i].table, name) == 0)
            return &TABLES[i];
    return NULL;
}

/* Every function and relation of the schema is in the matrix, and every
 * row of the matrix is in the schema. */
static void matrix_covers_the_whole_schema(void **state)
{
    PGconn *c = tu_connect();
    PGresult *res = PQexec(c, "SELECT p.oid::regprocedure::text FROM pg_proc p "
                              "WHERE p.pronamespace = 'ferry'::regnamespace ORDER BY 1");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    char missing[4096] = "";
    for (int i = 0; i < PQntuples(res); i++)
        if (!listed_fn(PQgetvalue(res, i, 0)))
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "\n  %s",
                     PQgetvalue(res, i, 0));
    if (missing[0] != '\0')
        fail_msg("functions of the ferry schema missing from FUNCS (say who may call "
                 "them):%s", missing);
    assert_int_equal(PQntuples(res), (int)COUNT(FUNCS));   /* and none listed that is gone */
    PQclear(res);

    res = PQexec(c, "SELECT relname, relkind FROM pg_class "
                    "WHERE relnamespace = 'ferry'::regnamespace "
                    "  AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 1");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res); i++) {
        const tab_cell *t = listed_tab(PQgetvalue(res, i, 0));
        if (t == NULL || t->kind != PQgetvalue(res, i, 1)[0])
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing),
                     "\n  %s (relkind %s)", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    }
    if (missing[0] != '\0')
        fail_msg("relations of the ferry schema missing from TABLES (say who may use "
                 "them):%s", missing);
    assert_int_equal(PQntuples(res), (int)COUNT(TABLES));
    PQclear(res);
    /* A function whose first argument is a consumer name is confined,
     * unless the matrix says why not (the reconciler's skip_gap, the
     * internal helpers, granted to no one). */
    res = PQexec(c, "SELECT p.oid::regprocedure::text FROM pg_proc p "
                    "WHERE p.pronamespace = 'ferry'::regnamespace "
                    "  AND p.proargnames[1] = 'p_consumer' ORDER BY 1");
    for (int i = 0; i < PQntuples(res); i++)
        for (size_t f = 0; f < COUNT(FUNCS); f++)
            if (strcmp(FUNCS[f].fn, PQgetvalue(res, i, 0)) == 0 && !FUNCS[f].confined &&
                (FUNCS[f].may & (W | C)) != 0)
                fail_msg("%s takes a consumer name and a service may call it, but it is not "
                         "marked confined", FUNCS[f].fn);
    PQclear(res);
    PQfinish(c);
}

/* ------------------------------------------------------------ the cells */

static void functions_as_the_matrix_says(void **state)
{
    checks = 0;
    for (size_t f = 0; f < COUNT(FUNCS); f++) {
        char *sql = with_name(FUNCS[f].call, OWN);
        for (int r = 0; r < R_COUNT; r++)
            cell(r, (FUNCS[f].may >> r) & 1, FUNCS[f].fn, sql);
        free(sql);
    }
    assert_int_equal(checks, (int)COUNT(FUNCS) * R_COUNT);
}

/* Is column col in the list ("*" is every column)? */
static int in_list(const char *list, const char *col)
{
    if (list == NULL)
        return 0;
    if (strcmp(list, "*") == 0)
        return 1;
    size_t n = strlen(col);
    for (const char *p = list; *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, col, n) == 0)
            return 1;
        p += len + (end != NULL);
    }
    return 0;
}

static void tables_as_the_matrix_says(void **state)
{
    PGconn *c = tu_connect();
    checks = 0;
    int want = 0;
    for (size_t t = 0; t < COUNT(TABLES); t++) {
        const tab_cell *tc = &TABLES[t];
        char *sql;
        if (tc->kind == 'S') {
            for (int r = 0; r < R_COUNT; r++) {
                sql = tu_sprintf("SELECT nextval('ferry.%s')", tc->table);
                cell(r, 0, "nextval", sql);
                free(sql);
                sql = tu_sprintf("SELECT last_value FROM ferry.%s", tc->table);
                cell(r, 0, "to read the sequence", sql);
                free(sql);
                want += 2;
            }
            continue;
        }
        /* The columns, from the catalog: a new column is checked too. */
        sql = tu_sprintf("SELECT attname, attidentity = '' AND attgenerated = '' "
                         "FROM pg_attribute WHERE attrelid = 'ferry.%s'::regclass "
                         "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", tc->table);
        PGresult *cols = PQexec(c, sql);
        free(sql);
        assert_int_equal(PQresultStatus(cols), PGRES_TUPLES_OK);
        const char *plain = NULL;   /* a column INSERT may name; none: a table of none */
        for (int i = 0; i < PQntuples(cols) && plain == NULL; i++)
            if (strcmp(PQgetvalue(cols, i, 1), "t") == 0)
                plain = PQgetvalue(cols, i, 0);
        assert_true(plain != NULL || PQntuples(cols) == 0);

        for (int r = 0; r < R_COUNT; r++) {
            char what[160];
            sql = tu_sprintf("SELECT 1 FROM ferry.%s LIMIT 0", tc->table);
            snprintf(what, sizeof what, "SELECT on %s", tc->table);
            cell(r, (tc->sel >> r) & 1, what, sql);
            free(sql);
            sql = plain != NULL ? tu_sprintf("INSERT INTO ferry.%s (%s) SELECT NULL WHERE false",
                                             tc->table, plain)
                                : tu_sprintf("INSERT INTO ferry.%s SELECT WHERE false", tc->table);
            snprintf(what, sizeof what, "INSERT on %s", tc->table);
            cell(r, (tc->ins >> r) & 1, what, sql);
            free(sql);
            sql = tu_sprintf("DELETE FROM ferry.%s WHERE false", tc->table);
            snprintf(what, sizeof what, "DELETE on %s", tc->table);
            cell(r, (tc->del >> r) & 1, what, sql);
            free(sql);
            sql = tu_sprintf("TRUNCATE ferry.%s", tc->table);
            snprintf(what, sizeof what, "TRUNCATE on %s", tc->table);
            cell(r, 0, what, sql);
            free(sql);
            want += 4;
            for (int i = 0; i < PQntuples(cols); i++) {
                const char *col = PQgetvalue(cols, i, 0);
                sql = tu_sprintf("UPDATE ferry.%s SET %s = DEFAULT WHERE false", tc->table, col);
                snprintf(what, sizeof what, "UPDATE on %s.%s", tc->table, col);
                cell(r, in_list(tc->upd[r], col), what, sql);
                free(sql);
                want++;
            }
            /* And what no check above can show. */
            if (role_of[r] != NULL) {
                sql = tu_sprintf("SELECT has_table_privilege('%s', 'ferry.%s', "
                                 "'REFERENCES, TRIGGER')", login_of[r], tc->table);
                assert_int_equal(tu_int_of(c, sql), 0);
            }
        }
        PQclear(cols);
    }
    assert_int_equal(checks, want);
    /* Each list names columns that exist (a typo would refuse silently). */
    for (size_t t = 0; t < COUNT(TABLES); t++)
        for (int r = 0; r < R_COUNT; r++) {
            const char *l = TABLES[t].upd[r];
            if (l == NULL || strcmp(l, "*") == 0)
                continue;
            char *sql = tu_sprintf("SELECT count(*) FROM pg_attribute WHERE attrelid = "
                                   "'ferry.%s'::regclass AND attname = ANY "
                                   "(string_to_array('%s', ','))", TABLES[t].table, l);
            long long n = tu_int_of(c, sql);
            int listed = 1;
            for (const char *p = l; (p = strchr(p, ',')) != NULL; p++)
                listed++;
            assert_int_equal(n, listed);
        }
    PQfinish(c);
}

/* ------------------------------------------------------------ the rows */

/* Every function a consumer may call refuses a name its role does not
 * own (another service's, or no one's) and the relay's empty name. */
static void consumer_confined_to_its_own_names(void **state)
{
    char buf[1024];
    int n = 0;
    for (size_t f = 0; f < COUNT(FUNCS); f++) {
        if (!FUNCS[f].confined)
            continue;
        static const char *const foreign[] = {OTHERS, UNOWNED};
        for (size_t i = 0; i < COUNT(foreign); i++) {
            char *sql = with_name(FUNCS[f].call, foreign[i]);
            const char *got = try_as(R_CONSUMER, sql, buf, sizeof buf);
            if (got == NULL || strncmp(got, "42501", 5) != 0)
                fail_msg("%s as consumer \"%s\": %s, not 42501", FUNCS[f].fn, foreign[i],
                         got ? got : "allowed");
            assert_non_null(strstr(got, foreign[i]));   /* the message names it */
            free(sql);
        }
        char *sql = with_name(FUNCS[f].call, "");
        const char *got = try_as(R_CONSUMER, sql, buf, sizeof buf);
        if (got == NULL || strncmp(got, "22023", 5) != 0)
            fail_msg("%s as consumer \"\": %s, not 22023", FUNCS[f].fn, got ? got : "allowed");
        free(sql);
        /* The other service may use its own name. */
        PGconn *other = tu_connect_as("pv_other");
        sql = with_name(FUNCS[f].call, OTHERS);
        tu_exec(other, "BEGIN");
        tu_exec(other, sql);
        tu_exec(other, "ROLLBACK");
        free(sql);
        PQfinish(other);
        n++;
    }
    assert_int_equal(n, 14);      /* 6 inbox_*, 5 consume_* (schema 12), 1 (16), 1 (20), 1 (25) */
}

/* SET ROLE narrows: a session that set a role is judged as that role. */
static void consumer_name_judged_by_the_role_set(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "CREATE ROLE pv_both LOGIN IN ROLE pv_consumer, pv_other");
    PQfinish(admin);
    PGconn *c = tu_connect_as("pv_both");
    tu_exec(c, "BEGIN; SELECT ferry.inbox_claim('" OWN "', gen_random_uuid(), 'pv', 'k', 1); "
               "SELECT ferry.inbox_claim('" OTHERS "', gen_random_uuid(), 'pv', 'k', 1); "
               "ROLLBACK");
    tu_exec(c, "SET ROLE pv_other");
    tu_assert_sql_error(c, "SELECT ferry.inbox_claim('" OWN "', gen_random_uuid(), 'pv', 'k', 1)",
                        "42501", NULL, NULL);
    PQfinish(c);
}

/* Item 6: a writer cannot make a relay dead letter (consumer '', shard
 * -1) through the inbox, nor claim under any consumer's name. */
static void writer_cannot_forge_relay_dead_letters(void **state)
{
    PGconn *admin = tu_connect();
    long long before = tu_int(admin, "SELECT count(*) FROM ferry.dead_letter");
    static const char forge[] = "SELECT ferry.inbox_dead_letter('', gen_random_uuid(), 't', "
                                "'k', 1, 'T', '', '{}', '{}', 1, 'forged')";
    tu_assert_sql_error(as[R_WRITER], forge, "42501", NULL, NULL);
    tu_assert_sql_error(as[R_WRITER], "SELECT ferry.inbox_claim('" OWN "', gen_random_uuid(), "
                                      "'t', 'k', 1)", "42501", NULL, NULL);
    /* Not even the schema's owner makes one through the inbox. */
    tu_assert_sql_error(admin, forge, "22023", NULL, NULL);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.dead_letter"), before);
    PQfinish(admin);
}

#define DL_INSERT(consumer, shard)                                                          \
    "INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregateid, type, "       \
    "payload, seq, shard, created_at, reason) VALUES (gen_random_uuid(), '" consumer "', " \
    "'pv-dl', 'k', 'T', '{}', 1, " shard ", now(), 'test')"

/* The relay writes relay dead letters only (the reconciler none: schema
 * 27); neither turns one into a consumer's; the relay cannot touch a
 * consumer's, nor hand one back to a consumer. */
static void relay_makes_relay_dead_letters_only(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl'");
    /* Position 1 of key k handed out, in shard 0 (schema 39: the relay
     * writes its dead letters at positions emit handed out). */
    tu_exec(admin, "INSERT INTO ferry.outbox_key (topic, key, shard, seq) "
                   "VALUES ('pv-dl', 'k', 0, 1) "
                   "ON CONFLICT (topic, key) DO UPDATE SET shard = 0, seq = 1");
    long long mine = tu_int(admin, "SELECT ferry.inbox_dead_letter('" OWN "', "
                                   "gen_random_uuid(), 'pv-dl', 'k', 1, 'T', '', '{}', '{}', "
                                   "1, 'test')");
    char buf[1024];
    static const int roles[] = {R_RELAY, R_RECONCILER};
    for (size_t i = 0; i < COUNT(roles); i++) {
        int r = roles[i];
        const char *got = try_as(r, DL_INSERT("", "0"), buf, sizeof buf);
        if (r == R_RELAY && got != NULL)
            fail_msg("%s could not write a relay dead letter: %s", login_of[r], got);
        got = try_as(r, DL_INSERT(OWN, "-1"), buf, sizeof buf);
        if (got == NULL || strncmp(got, "42501", 5) != 0)
            fail_msg("%s wrote a consumer dead letter: %s", login_of[r], got ? got : "allowed");
        got = try_as(r, DL_INSERT("", "-1"), buf, sizeof buf);
        if (got == NULL || strncmp(got, "42501", 5) != 0)
            fail_msg("%s wrote a relay dead letter on shard -1: %s", login_of[r],
                     got ? got : "allowed");
        /* Nor at a position emit has not handed out, nor in another
         * shard than its key's: a replay would publish it (schema 39). */
        if (r == R_RELAY) {
            static const struct {
                const char *key, *seq, *shard, *what;
            } forged[] = {{"k", "2", "0", "at position 2"},
                          {"k", "1", "3", "in another shard"},
                          {"nokey", "1", "0", "of a key never emitted"}};
            for (size_t f = 0; f < COUNT(forged); f++) {
                char *sql = tu_sprintf("INSERT INTO ferry.dead_letter (message_id, consumer, "
                                       "topic, aggregateid, type, payload, seq, shard, "
                                       "created_at, reason) VALUES (gen_random_uuid(), '', "
                                       "'pv-dl', '%s', 'Forged', '{}', %s, %s, now(), 'x')",
                                       forged[f].key, forged[f].seq, forged[f].shard);
                got = try_as(r, sql, buf, sizeof buf);
                free(sql);
                if (got == NULL || strncmp(got, "42501", 5) != 0)
                    fail_msg("the relay forged a dead letter %s: %s", forged[f].what,
                             got ? got : "allowed");
            }
        }
        /* Nor turns one into a consumer's. */
        tu_exec(admin, DL_INSERT("", "0"));
        got = try_as(r, "UPDATE ferry.dead_letter SET consumer = '" OWN "' "
                        "WHERE topic = 'pv-dl' AND consumer = ''", buf, sizeof buf);
        if (got == NULL || strncmp(got, "42501", 5) != 0)
            fail_msg("%s turned a relay dead letter into a consumer's: %s", login_of[r],
                     got ? got : "allowed");
        tu_exec(admin, "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl' AND consumer = ''");
    }
    /* The relay does not see a consumer's to change or delete it ... */
    tu_exec(as[R_RELAY], "UPDATE ferry.dead_letter SET reason = 'x' WHERE topic = 'pv-dl'; "
                         "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.dead_letter "
                                   "WHERE topic = 'pv-dl' AND reason = 'test'"), 1);
    /* ... but reads it (its status page counts every dead letter). */
    assert_int_equal(tu_int(as[R_RELAY], "SELECT count(*) FROM ferry.dead_letter "
                                         "WHERE topic = 'pv-dl'"), 1);
    /* ... and cannot replay it into the consumer; the reconciler can. */
    char *sql = tu_sprintf("SELECT ferry.replay_dead_letter(%lld)", mine);
    tu_assert_sql_error(as[R_RELAY], sql, "42501", NULL, NULL);
    /* (tu_assert_str_of frees sql) */
    tu_assert_str_of(as[R_RECONCILER], sql, "t");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.inbox_held "
                                   "WHERE topic = 'pv-dl' AND reason = 'replay'"), 1);
    tu_exec(admin, "DELETE FROM ferry.inbox_held WHERE topic = 'pv-dl'; "
                   "DELETE FROM ferry.inbox_key WHERE topic = 'pv-dl'");
    PQfinish(admin);
}

/*
 * ferry.wal_park is the relay's, for the messages of a parked key that it
 * read from WAL: it puts a row only at a position emit handed out. Before,
 * the relay's role could write a message at any position (999 of a key at
 * 1): a message nobody emitted, and a gap (an outside audit, schema 35).
 */
static void relay_parks_only_positions_emit_handed_out(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.outbox WHERE topic = 'pv-park'; "
                   "SELECT ferry.emit('pv-park', 'k', 'T', '{}')");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox_key "
                                   "WHERE topic = 'pv-park' AND seq = 1"), 1);
    tu_assert_str(as[R_RELAY], "SELECT ferry.wal_park(gen_random_uuid(), 'pv-park', 'k', '', "
                               "'Forged', '{\"evil\": 1}', '{}', 999, now())", "f");
    tu_assert_str(as[R_RELAY], "SELECT ferry.wal_park(gen_random_uuid(), 'pv-park', 'k', '', "
                               "'Forged', '{\"evil\": 1}', '{}', 0, now())", "f");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pv-park' "
                                   "AND type = 'Forged'"), 0);
    tu_exec(admin, "DELETE FROM ferry.outbox WHERE topic = 'pv-park'");
    PQfinish(admin);
}

/* The relay stamps a row's WAL gate only where emit left it to be
 * stamped (schema 36): a gate it could move would let it release any row
 * held for the WAL source before its time. */
static void relay_stamps_only_gates_left_to_be_stamped(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.outbox WHERE topic = 'pv-stamp'; "
                   "SELECT ferry.emit('pv-stamp', 'k', 'T', '{}')");
    tu_exec(admin, "UPDATE ferry.outbox SET wal_lsn = 'FFFFFFFF/FFFFFFF0' "
                   "WHERE topic = 'pv-stamp'");
    tu_assert_str(as[R_RELAY], "SELECT ferry.outbox_wal_stamp(array_agg(id)) FROM ferry.outbox "
                               "WHERE topic = 'pv-stamp'", "0");
    tu_exec(admin, "UPDATE ferry.outbox SET wal_lsn = 'FFFFFFFF/FFFFFFFF' "
                   "WHERE topic = 'pv-stamp'");
    tu_assert_str(as[R_RELAY], "SELECT ferry.outbox_wal_stamp(array_agg(id)) FROM ferry.outbox "
                               "WHERE topic = 'pv-stamp'", "1");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pv-stamp' "
                                   "AND wal_lsn <= pg_current_wal_insert_lsn()"), 1);
    tu_exec(admin, "DELETE FROM ferry.outbox WHERE topic = 'pv-stamp'");
    PQfinish(admin);
}

/* The relay writes the relays' leases (shards, heartbeats, the WAL slot's)
 * and no other: before schema 38 it could take the reconciler's for an
 * hour and so stop every repair (an outside audit). */
static void relay_writes_only_the_relays_leases(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('reconciler', 'shard:9999', "
                   "'relay:pv-r', 'wal:pv')");
    tu_exec(admin, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                   "VALUES ('reconciler', 'rc', 1, now() + interval '1 minute')");
    char buf[1024];
    /* Committed, each: the rows it may not touch it does not see to write. */
    tu_exec(as[R_RELAY], "UPDATE ferry.lease SET holder = 'evil', "
                         "expires_at = now() + interval '1 hour' WHERE name = 'reconciler'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'reconciler' "
                                   "AND holder = 'rc'"), 1);
    tu_exec(as[R_RELAY], "DELETE FROM ferry.lease WHERE name = 'reconciler'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'reconciler'"),
                     1);
    const char *got;
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name = 'reconciler'");
    got = try_as(R_RELAY, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                          "VALUES ('reconciler', 'evil', 1, now() + interval '1 hour')",
                 buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the relay took the reconciler's lease: %s", got ? got : "allowed");
    /* Its own it writes, and it reads every one. */
    tu_exec(as[R_RELAY], "INSERT INTO ferry.lease (name, holder, epoch, expires_at) VALUES "
                         "('shard:9999', 'pv-r', 1, now()), ('relay:pv-r', 'pv-r', 1, now()), "
                         "('wal:pv', 'pv-r', 1, now())");
    tu_exec(admin, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                   "VALUES ('reconciler', 'rc', 1, now() + interval '1 minute')");
    tu_assert_str(as[R_RELAY], "SELECT count(*) FROM ferry.lease WHERE name IN ('reconciler', "
                               "'shard:9999', 'relay:pv-r', 'wal:pv')", "4");
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('reconciler', 'shard:9999', "
                   "'relay:pv-r', 'wal:pv')");
    PQfinish(admin);
}

/* The reconciler expires a relay's lease and takes none: before schema 39
 * it could give itself every shard lease until 'infinity', and no relay
 * published anything (an outside audit). */
static void reconciler_expires_relay_leases_and_takes_none(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('shard:9998', 'shard:9997')");
    tu_exec(admin, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                   "VALUES ('shard:9998', 'pv-r', 1, now() + interval '1 minute')");
    char buf[1024];
    const char *got = try_as(R_RECONCILER, "INSERT INTO ferry.lease (name, holder, epoch, "
                                           "expires_at) VALUES ('shard:9997', 'evil', 1, "
                                           "'infinity')", buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler took a shard lease: %s", got ? got : "allowed");
    got = try_as(R_RECONCILER, "UPDATE ferry.lease SET holder = 'evil', expires_at = 'infinity' "
                               "WHERE name = 'shard:9998'", buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler took over a shard lease: %s", got ? got : "allowed");
    tu_exec(as[R_RECONCILER], "DELETE FROM ferry.lease WHERE name = 'shard:9998'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'shard:9998' "
                                   "AND holder = 'pv-r' AND expires_at > now()"), 1);
    /* Expiring it, its job, it may. */
    tu_exec(as[R_RECONCILER], "UPDATE ferry.lease SET expires_at = now() "
                              "WHERE name = 'shard:9998'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'shard:9998' "
                                   "AND expires_at <= now()"), 1);
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('shard:9998', 'shard:9997')");
    PQfinish(admin);
}

/* A role with no ferry grant holds every advisory lock emit used to wait
 * for, exclusively: the mode lock (schema 32), the wake-up lock and every
 * shard's busy lock (so that a writer takes the busy path). An emit still
 * ends at once (before schema 41 it waited for as long as they were held). */
static void no_role_stops_an_emit_with_advisory_locks(void **state)
{
    PGconn *nobody = as[R_NOBODY];
    tu_exec(nobody, "SELECT pg_advisory_lock(1718903419, 0), pg_advisory_lock(1718903417, 1)");
    tu_exec(nobody, "SELECT pg_advisory_lock(1718903418, s) FROM generate_series(0, 255) s");
    PGconn *w = as[R_WRITER];
    tu_exec(w, "SET statement_timeout = '10s'");
    char buf[1024];
    const char *got = try_as(R_WRITER, "SELECT ferry.emit('pv.locks', 'k', 'T', '{}'::jsonb)",
                             buf, sizeof buf);
    tu_exec(w, "RESET statement_timeout");
    tu_exec(nobody, "SELECT pg_advisory_unlock_all()");
    if (got != NULL)
        fail_msg("an emit waited for a lock another role held: %s", got);
    /* Nor can that role take the lock that now is the mode lock. */
    got = try_as(R_NOBODY, "LOCK TABLE ferry.mode_gate IN ACCESS EXCLUSIVE MODE", buf,
                 sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("a role with no grant locked the mode gate: %s", got ? got : "allowed");
}

/* The reconciler may expire a relay's lease and change nothing else of
 * it: the policies of schema 39 were ORed, so it could set the epoch to
 * the largest bigint (every relay then failed every acquisition) or
 * rename the row (a delete) as long as the expiry had come. */
static void reconciler_changes_nothing_of_a_relay_lease_but_its_expiry(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name = 'shard:9996'");
    tu_exec(admin, "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                   "VALUES ('shard:9996', 'pv-r', 7, now() + interval '1 minute')");
    static const char *const forged[] = {
        "UPDATE ferry.lease SET epoch = 9223372036854775807, expires_at = now() "
        "WHERE name = 'shard:9996'",
        "UPDATE ferry.lease SET holder = 'x', expires_at = now() WHERE name = 'shard:9996'",
        "UPDATE ferry.lease SET name = 'junk:shard:9996', expires_at = now() "
        "WHERE name = 'shard:9996'",
        "UPDATE ferry.lease SET renewed_at = 'infinity', expires_at = now() "
        "WHERE name = 'shard:9996'",
    };
    char buf[1024];
    for (size_t i = 0; i < COUNT(forged); i++) {
        const char *got = try_as(R_RECONCILER, forged[i], buf, sizeof buf);
        if (got == NULL || strncmp(got, "42501", 5) != 0)
            fail_msg("the reconciler rewrote a relay lease (%s): %s", forged[i],
                     got ? got : "allowed");
    }
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'shard:9996' "
                                   "AND holder = 'pv-r' AND epoch = 7 AND expires_at > now()"), 1);
    /* Nor make one of a row of its own, renamed (schema 44: the guard of
     * schema 41 looked only at the old name). */
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('pv-own-lease', 'shard:9995')");
    tu_exec(as[R_RECONCILER], "INSERT INTO ferry.lease (name, holder, epoch, expires_at) "
                              "VALUES ('pv-own-lease', 'evil', 9223372036854775807, "
                              "now() - interval '1 second')");
    const char *got = try_as(R_RECONCILER, "UPDATE ferry.lease SET name = 'shard:9995' "
                                           "WHERE name = 'pv-own-lease'", buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler renamed its own lease into a relay's: %s",
                 got ? got : "allowed");
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name IN ('pv-own-lease', 'shard:9995')");
    /* Its own lease it writes as before; and the relay its own. */
    tu_exec(as[R_RECONCILER], "UPDATE ferry.lease SET expires_at = now() "
                              "WHERE name = 'shard:9996'");
    tu_exec(as[R_RELAY], "UPDATE ferry.lease SET holder = 'pv-r2', epoch = epoch + 1, "
                         "expires_at = now() + interval '1 minute' WHERE name = 'shard:9996'");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.lease WHERE name = 'shard:9996' "
                                   "AND holder = 'pv-r2' AND epoch = 8"), 1);
    tu_exec(admin, "DELETE FROM ferry.lease WHERE name = 'shard:9996'");
    PQfinish(admin);
}

/* A reserved header name is refused in every spelling a consumer might
 * take for it: Java's equalsIgnoreCase takes "ı" (dotless i) for "I" and
 * "ſ" (long s) for "S", Python's upper() "ﬁ" for "FI"; lower() mapped
 * none of them to ASCII, and the database's locale decided the rest. */
static void reserved_header_names_are_refused_in_every_spelling(void **state)
{
    static const char *const refused[] = {
        "{\"ce_\u0131d\": \"x\"}",           /* ce_ıd */
        "{\"ce_\u017fource\": \"x\"}",       /* ce_ſource */
        "{\"CE_T\u0130ME\": \"x\"}",          /* CE_TİME */
        "{\"ce_\ufb01d\": \"x\"}",            /* ce_ﬁd: no, "fid" */
        "{\"\u212aerry\": \"x\"}",            /* Kerry: allowed, below */
        "{\"ferry_\u0131d\": \"x\"}",        /* the prefix, any rest */
        "{\"CE_SPECVERS\u0130ON\": \"x\"}",
    };
    static const int want_refused[] = {1, 1, 1, 0, 0, 1, 1};
    char buf[1024];
    for (size_t i = 0; i < COUNT(refused); i++) {
        char *sql = tu_sprintf("SELECT ferry.emit('pv.hdr', 'k', 'T', '{}'::jsonb, '%s'::jsonb)",
                               refused[i]);
        const char *got = try_as(R_WRITER, sql, buf, sizeof buf);
        free(sql);
        if (want_refused[i] && (got == NULL || strncmp(got, "22023", 5) != 0))
            fail_msg("header %s: want 22023, got %s", refused[i], got ? got : "accepted");
        if (!want_refused[i] && got != NULL)
            fail_msg("header %s: want it accepted, got %s", refused[i], got);
    }
}

/* The reconciler moves over-attempted outbox rows to the relay's dead
 * letters and purges published ones, through functions that do only that:
 * it writes no dead letter itself (one it made could be replayed into the
 * outbox as a message nobody emitted, at a position a real one then takes
 * too) and deletes no row that was not published (schema 27). */
static void reconciler_forges_no_message_and_deletes_no_unsent_one(void **state)
{
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl'; "
                   "DELETE FROM ferry.outbox WHERE topic = 'pv-forge'");
    char buf[1024];
    const char *got = try_as(R_RECONCILER, DL_INSERT("", "0"), buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler wrote a relay dead letter of its own: %s",
                 got ? got : "allowed");
    tu_exec(admin, "SELECT ferry.emit('pv-forge', 'k', 'T', '{}'::jsonb)");
    char *id = tu_str(admin, "SELECT id::text FROM ferry.outbox WHERE topic = 'pv-forge'");
    char *sql = tu_sprintf("DELETE FROM ferry.outbox WHERE id = '%s'", id);
    got = try_as(R_RECONCILER, sql, buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler deleted a message nobody published: %s", got ? got : "allowed");
    free(sql);
    /* Nor moves a message that never failed, which would park its key:
     * not by asking for no attempt, nor by counting one as the relay does
     * (schema 29), nor by raising its attempts first (schema 29). */
    sql = tu_sprintf("SELECT outcome FROM ferry.outbox_dead_letter('%s', 0, false, 'pv')", id);
    tu_assert_str_of(as[R_RECONCILER], sql, "gone");
    sql = tu_sprintf("SELECT outcome FROM ferry.outbox_dead_letter('%s', 0, true, 'pv')", id);
    got = try_as(R_RECONCILER, sql, buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler counted a delivery attempt: %s", got ? got : "allowed");
    free(sql);
    sql = tu_sprintf("UPDATE ferry.outbox SET attempts = 100 WHERE id = '%s'", id);
    got = try_as(R_RECONCILER, sql, buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler raised a row's attempts: %s", got ? got : "allowed");
    free(sql);
    sql = tu_sprintf("SELECT deleted FROM ferry.outbox_purge_published(now() + interval '1 day', "
                     "'-infinity', '00000000-0000-0000-0000-000000000000', 100)");
    tu_assert_str_of(as[R_RECONCILER], sql, "0");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pv-forge'"),
                     1);
    /* What it may do, it does: a published row past retention goes. */
    tu_exec(admin, "UPDATE ferry.outbox SET published_at = now() - interval '1 hour' "
                   "WHERE topic = 'pv-forge'");
    tu_assert_str_of(as[R_RECONCILER],
                     tu_sprintf("SELECT deleted FROM ferry.outbox_purge_published(now(), "
                                "'-infinity', '00000000-0000-0000-0000-000000000000', 100)"),
                     "1");
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.outbox WHERE topic = 'pv-forge'"),
                     0);
    free(id);
    PQfinish(admin);
}

/* The reconciler locks any dead letter, as `ferry-reconcile repair
 * --replay/--discard` does before the definer function acts on it, but
 * rewrites none, takes no consumer's for the relay's and deletes none
 * behind dead_letter_log's back (README, "Schema and roles"). */
static void reconciler_rewrites_and_takes_no_dead_letter(void **state)
{
    (void)state;
    PGconn *admin = tu_connect();
    tu_exec(admin, "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl'");
    long long ids[2];
    ids[0] = tu_int(admin, "SELECT ferry.inbox_dead_letter('" OWN "', gen_random_uuid(), "
                           "'pv-dl', 'k', 1, 'T', '', '{}', '{}', 1, 'test')");
    ids[1] = tu_int(admin, DL_INSERT("", "0") " RETURNING id");
    char buf[1024];
    char *sql = tu_sprintf("UPDATE ferry.dead_letter SET consumer = '', shard = 0 "
                           "WHERE id = %lld", ids[0]);
    const char *got = try_as(R_RECONCILER, sql, buf, sizeof buf);
    if (got == NULL || strncmp(got, "42501", 5) != 0)
        fail_msg("the reconciler turned a consumer's dead letter into the relay's: %s",
                 got ? got : "allowed");
    free(sql);
    for (int i = 0; i < 2; i++) {
        sql = tu_sprintf("UPDATE ferry.dead_letter SET payload = '{\"forged\": true}' "
                         "WHERE id = %lld", ids[i]);
        got = try_as(R_RECONCILER, sql, buf, sizeof buf);
        if (got == NULL || strncmp(got, "42501", 5) != 0)
            fail_msg("the reconciler rewrote %s dead letter: %s", i ? "a relay" : "a consumer's",
                     got ? got : "allowed");
        free(sql);
        sql = tu_sprintf("WITH d AS (DELETE FROM ferry.dead_letter WHERE id = %lld "
                         "RETURNING 1) SELECT count(*) FROM d", ids[i]);
        assert_int_equal(tu_int(as[R_RECONCILER], sql), 0);
        free(sql);
        sql = tu_sprintf("SELECT count(*) FROM (SELECT 1 FROM ferry.dead_letter WHERE id = %lld "
                         "FOR UPDATE) l", ids[i]);
        tu_exec(as[R_RECONCILER], "BEGIN");
        assert_int_equal(tu_int(as[R_RECONCILER], sql), 1);
        tu_exec(as[R_RECONCILER], "ROLLBACK");
        free(sql);
    }
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'pv-dl' "
                                   "AND reason = 'test' AND payload = '{}'"), 2);
    assert_int_equal(tu_int(admin, "SELECT count(*) FROM ferry.dead_letter WHERE topic = 'pv-dl' "
                                   "AND consumer = '" OWN "'"), 1);
    tu_exec(admin, "DELETE FROM ferry.dead_letter WHERE topic = 'pv-dl'; "
                   "DELETE FROM ferry.inbox_key WHERE topic = 'pv-dl'");
    PQfinish(admin);
}

/*
 * The WAL token proves a 'ferry' logical message is emit's: only the
 * relay (and the owner) read it. The reconciler read it through its
 * SELECT on every table, and could then write messages the WAL relay
 * published with any id, position and headers (an outside audit, schema
 * 34); it still reads every other column of the settings.
 */
static void only_the_relay_reads_the_wal_token(void **state)
{
    for (int r = 0; r < R_COUNT; r++) {
        cell(r, r == R_RELAY, "SELECT on settings.wal_token",
             "SELECT wal_token FROM ferry.settings");
        cell(r, r == R_RELAY || r == R_RECONCILER, "SELECT on the other settings",
             "SELECT shard_count, max_payload_bytes, emit_mode, wal_slot, wal_until_lsn "
             "FROM ferry.settings");
    }
}

/* Item 7, the SQL half: every shipped role reads the schema version, as
 * every program does first (the programs themselves: test_roles_run.c),
 * and a role that may not says so rather than "version 0". */
static void every_role_reads_the_schema_version(void **state)
{
    ferry_error err;
    for (int r = 0; r < R_COUNT; r++) {
        int version = -1;
        ferry_code rc = ferry_schema_version(as[r], &version, &err);
        if (role_of[r] != NULL) {
            assert_ferry_ok(rc, err);
            assert_int_equal(version, ferry_schema_version_known());
        } else {
            assert_int_not_equal(rc, FERRY_OK);
            assert_int_equal(version, -1);      /* untouched on failure */
            assert_string_equal(err.sqlstate, "42501");
            assert_non_null(strstr(err.message, "permission denied"));
        }
    }
}

int main(void)
{
    tu_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matrix_covers_the_whole_schema),
        cmocka_unit_test(functions_as_the_matrix_says),
        cmocka_unit_test(tables_as_the_matrix_says),
        cmocka_unit_test(consumer_confined_to_its_own_names),
        cmocka_unit_test(consumer_name_judged_by_the_role_set),
        cmocka_unit_test(writer_cannot_forge_relay_dead_letters),
        cmocka_unit_test(relay_makes_relay_dead_letters_only),
        cmocka_unit_test(relay_parks_only_positions_emit_handed_out),
        cmocka_unit_test(relay_stamps_only_gates_left_to_be_stamped),
        cmocka_unit_test(relay_writes_only_the_relays_leases),
        cmocka_unit_test(reconciler_expires_relay_leases_and_takes_none),
        cmocka_unit_test(reconciler_rewrites_and_takes_no_dead_letter),
        cmocka_unit_test(reconciler_forges_no_message_and_deletes_no_unsent_one),
        cmocka_unit_test(every_role_reads_the_schema_version),
        cmocka_unit_test(no_role_stops_an_emit_with_advisory_locks),
        cmocka_unit_test(reconciler_changes_nothing_of_a_relay_lease_but_its_expiry),
        cmocka_unit_test(reserved_header_names_are_refused_in_every_spelling),
        cmocka_unit_test(only_the_relay_reads_the_wal_token),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
