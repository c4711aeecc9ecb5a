/*
 * saga_driver.c — the shell around the pure saga engine (saga_step.c).
 *
 * Every event goes the same way (drive()): lock the saga row, rebuild the
 * engine state from ferry.saga.engine, run ferry_saga_step(), and in the
 * same transaction store the next state over the revision that was loaded,
 * append the audit rows and emit the commands the engine asked for. So a
 * saga's state and the commands that follow from it commit together or not
 * at all, and a crash anywhere repeats the event (a redelivered reply, a
 * timer still due), which the engine then finds already applied or applies
 * afresh. The engine gets the database clock (now() of the transaction),
 * never this machine's.
 *
 * The state is stored as JSON (names for the enums), not as the struct's
 * bytes: portable between builds and readable with ->> in psql.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "saga_tmpl.h"

/* ---------------------------------------------------------------- registry */

struct ferry_saga_registry {
    char *reply_topic;
    ferry_saga_def **defs;
    size_t n, cap;
};

ferry_code ferry_saga_registry_new(const char *reply_topic, ferry_saga_registry **out,
                                   ferry_error *err)
{
    ferry__err_clear(err);
    if (out == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "out", "saga registry: out is NULL");
    if (reply_topic == NULL)
        reply_topic = FERRY_SAGA_REPLY_TOPIC_DEFAULT;
    /* Checked as ferry_emit would check it, so that a bad topic shows now
     * rather than at the first command. */
    ferry_msg probe = {.topic = reply_topic, .key = "k", .type = "t", .payload = "{}"};
    ferry_code rc = ferry_msg_check(&probe, NULL, err);
    if (rc != FERRY_OK)
        return rc;
    ferry_saga_registry *r = calloc(1, sizeof *r);
    if (r == NULL || (r->reply_topic = strdup(reply_topic)) == NULL) {
        free(r);
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "saga registry: out of memory");
    }
    *out = r;
    return FERRY_OK;
}

const ferry_saga_def *ferry_saga_registry_find(const ferry_saga_registry *reg, const char *name)
{
    if (reg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->defs[i]->name, name) == 0)
            return reg->defs[i];
    return NULL;
}

ferry_code ferry_saga_registry_add(ferry_saga_registry *reg, ferry_saga_def *def,
                                   ferry_error *err)
{
    ferry__err_clear(err);
    if (reg == NULL || def == NULL || def->name == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "saga registry: registry or definition is NULL");
    if (ferry_saga_registry_find(reg, def->name) != NULL)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "saga registry: a definition called \"%s\" is already there",
                             def->name);
    /* Let the engine judge the definition once now (a start on a zeroed
     * state checks it) rather than at the first saga. */
    ferry_saga_state zero, next;
    memset(&zero, 0, sizeof zero);
    ferry_saga_event start = {.kind = FERRY_SAGA_EV_START};
    ferry_saga_action acts[FERRY_SAGA_ACTIONS_MAX];
    size_t n_acts;
    ferry_code rc = ferry_saga_step(def, &zero, &start, 0, &next, acts, FERRY_SAGA_ACTIONS_MAX,
                                    &n_acts, err);
    if (rc != FERRY_OK)
        return rc;
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 4;
        ferry_saga_def **d = realloc(reg->defs, cap * sizeof *d);
        if (d == NULL)
            return ferry__error_set(err, FERRY_ENOMEM, NULL, "saga registry: out of memory");
        reg->defs = d;
        reg->cap = cap;
    }
    reg->defs[reg->n++] = def;
    return FERRY_OK;
}

const char *ferry_saga_registry_reply_topic(const ferry_saga_registry *reg)
{
    return reg ? reg->reply_topic : NULL;
}

void ferry_saga_registry_destroy(ferry_saga_registry *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->n; i++)
        ferry_saga_def_destroy(reg->defs[i]);
    free(reg->defs);
    free(reg->reply_topic);
    free(reg);
}

/* ---------------------------------------------------------------- state as JSON */

static int name_index(const char *(*name_of)(int), int count, const char *name)
{
    for (int i = 0; name != NULL && i < count; i++)
        if (strcmp(name_of(i), name) == 0)
            return i;
    return -1;
}

/* Adapters: the name functions take their own enum types. */
static const char *status_name_i(int i) { return ferry_saga_status_name((ferry_saga_status)i); }
static const char *step_status_name_i(int i)
{
    return ferry_saga_step_status_name((ferry_saga_step_status)i);
}
static const char *reason_name_i(int i) { return ferry_saga_reason_name((ferry_saga_reason)i); }

/* A new reference, or NULL when memory is short. */
static json_t *state_to_json(const ferry_saga_state *st)
{
    json_t *steps = json_array();
    for (uint32_t i = 0; steps != NULL && i < st->step_count; i++) {
        const ferry_saga_step_state *s = &st->steps[i];
        json_t *o = json_pack(
            "{s:s, s:s, s:I, s:I, s:I, s:I}",
            "action", ferry_saga_step_status_name((ferry_saga_step_status)s->action),
            "compensation", ferry_saga_step_status_name((ferry_saga_step_status)s->compensation),
            "action_attempts", (json_int_t)s->action_attempts, "action_round",
            (json_int_t)s->action_round, "compensation_attempts",
            (json_int_t)s->compensation_attempts, "compensation_round",
            (json_int_t)s->compensation_round);
        if (o == NULL || json_array_append_new(steps, o) != 0) {
            json_decref(steps);
            return NULL;
        }
    }
    if (steps == NULL)
        return NULL;
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:I, s:I, s:I, s:o}",
                     "revision", (json_int_t)st->revision, "started_ms",
                     (json_int_t)st->started_ms, "deadline_ms", (json_int_t)st->deadline_ms,
                     "timer_ms", (json_int_t)st->timer_ms, "wake_ms", (json_int_t)st->wake_ms,
                     "status", ferry_saga_status_name((ferry_saga_status)st->status), "reason",
                     ferry_saga_reason_name((ferry_saga_reason)st->reason), "step_count",
                     (json_int_t)st->step_count, "current", (json_int_t)st->current,
                     "reason_step", (json_int_t)st->reason_step, "steps", steps);
}

static int get_u32(const json_t *o, const char *k, uint32_t *out)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0
        || json_integer_value(v) > (json_int_t)UINT32_MAX)
        return -1;
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int get_i64(const json_t *o, const char *k, int64_t *out)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        return -1;
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static int get_enum(const json_t *o, const char *k, const char *(*name_of)(int), int count,
                    uint8_t *out)
{
    int i = name_index(name_of, count, json_string_value(json_object_get(o, k)));
    if (i < 0)
        return -1;
    *out = (uint8_t)i;
    return 0;
}

/* The engine checks the result against the definition on every call; here
 * only the shape. */
static ferry_code state_from_json(const char *text, ferry_saga_state *st, ferry_error *err)
{
    json_error_t jerr;
    json_t *doc = text ? json_loads(text, 0, &jerr) : NULL;
    memset(st, 0, sizeof *st);
    int64_t rev = 0;
    int bad = doc == NULL || get_i64(doc, "revision", &rev) || rev < 0
              || get_i64(doc, "started_ms", &st->started_ms)
              || get_i64(doc, "deadline_ms", &st->deadline_ms)
              || get_i64(doc, "timer_ms", &st->timer_ms) || get_i64(doc, "wake_ms", &st->wake_ms)
              || get_enum(doc, "status", status_name_i, FERRY_SAGA_STATUS_COUNT, &st->status)
              || get_enum(doc, "reason", reason_name_i, FERRY_SAGA_REASON_COUNT, &st->reason)
              || get_u32(doc, "step_count", &st->step_count)
              || get_u32(doc, "current", &st->current)
              || get_u32(doc, "reason_step", &st->reason_step);
    st->revision = (uint64_t)rev;
    const json_t *steps = doc ? json_object_get(doc, "steps") : NULL;
    if (!bad && (!json_is_array(steps) || st->step_count > FERRY_SAGA_STEPS_MAX
                 || json_array_size(steps) != st->step_count))
        bad = 1;
    for (uint32_t i = 0; !bad && i < st->step_count; i++) {
        const json_t *o = json_array_get(steps, i);
        ferry_saga_step_state *s = &st->steps[i];
        bad = get_enum(o, "action", step_status_name_i, FERRY_SAGA_STEP_STATUS_COUNT, &s->action)
              || get_enum(o, "compensation", step_status_name_i, FERRY_SAGA_STEP_STATUS_COUNT,
                          &s->compensation)
              || get_u32(o, "action_attempts", &s->action_attempts)
              || get_u32(o, "action_round", &s->action_round)
              || get_u32(o, "compensation_attempts", &s->compensation_attempts)
              || get_u32(o, "compensation_round", &s->compensation_round);
    }
    json_decref(doc);
    if (bad)
        return ferry__error_set(err, FERRY_EINVAL, "state",
                             "could not read the stored saga state: not a saga state document");
    return FERRY_OK;
}

/* ---------------------------------------------------------------- commands */

static const ferry_saga_command *command_of(const ferry_saga_def *def, uint32_t step,
                                            ferry_saga_command_kind kind)
{
    const ferry_saga_step_def *s = &def->steps[step];
    return kind == FERRY_SAGA_CMD_ACTION ? &s->action : &s->compensation;
}

/* Every template of def must resolve in ctx, into a payload emit takes
 * (within max_payload_bytes' default and 2048 levels deep, as
 * ferry_msg_check says): checked at start, so that no saga stalls later on
 * a command it cannot build. The context never changes after the start,
 * so what renders now renders the same then. Before, only the resolving
 * was checked: a context value that made a compensation too large or too
 * deep was taken, and the saga could then never compensate. */
static ferry_code check_templates(const ferry_saga_def *def, const char *ctx, size_t ctx_len,
                                  ferry_error *err)
{
    for (size_t i = 0; i < def->step_count; i++) {
        for (int k = 0; k < 2; k++) {
            if (k == 1 && !def->steps[i].has_compensation)
                continue;
            const char *missing;
            char *p;
            if (ferry__tmpl_render(ferry__saga_def_tmpl(def, i, (ferry_saga_command_kind)k), ctx,
                                  ctx_len, &p, &missing) != 0)
                return missing ? ferry__error_set(err, FERRY_EINVAL, "context",
                                               "could not start saga %s: the context has no "
                                               "value for \"${context.%s}\" "
                                               "(steps[%zu].%s.payload)", def->name, missing, i,
                                               k ? "compensation" : "action")
                               : ferry__error_set(err, FERRY_ENOMEM, NULL,
                                               "could not start saga: out of memory");
            const ferry_saga_command *cmd = command_of(def, (uint32_t)i,
                                                       (ferry_saga_command_kind)k);
            ferry_msg probe = {.topic = def->steps[i].topic, .key = "k", .type = cmd->type,
                               .payload = p};
            ferry_error why;
            ferry_code rc = ferry_msg_check(&probe, NULL, &why);
            free(p);
            if (rc != FERRY_OK)
                return ferry__error_set(err, FERRY_EINVAL, "context",
                                     "could not start saga %s: with this context "
                                     "steps[%zu].%s.payload could not be sent: %s", def->name,
                                     i, k ? "compensation" : "action", why.message);
        }
    }
    return FERRY_OK;
}

/* ---------------------------------------------------------------- one event */

/* The context stays JSON text from the caller (at start) or from jsonb
 * (ferry.saga.context, at every event), never parsed into jansson values:
 * its numbers keep their digits (saga_tmpl.h). */
typedef struct saga_ctx {
    const ferry_saga_registry *reg;
    const ferry_saga_def *def;
    char id[FERRY_UUID_STRING_SIZE];
    const char *context;             /* borrowed JSON text, an object */
    size_t context_len;
} saga_ctx;

/*
 * What one event writes besides the saga row, gathered in memory and sent
 * with it in one statement (ferry.saga_begin / ferry.saga_store, schema
 * 013): the audit rows and the commands, each in the order it was added.
 * So an event costs two round trips (lock and load, then store) whatever
 * it sends, instead of one per audit row and per command; on a busy
 * machine every round trip is a wake-up of the backend and of this
 * thread. The commands still reach the outbox through ferry.emit_with_id,
 * checked here first as ferry_emit checks them.
 */
typedef struct saga_writes {
    json_t *audit;      /* array of {step, kind, status, attempt, message_id, detail} */
    json_t *commands;   /* array of {id, topic, key, type, aggregate_type, payload,
                           headers, delay_ms} */
} saga_writes;

static ferry_code writes_init(saga_writes *w, ferry_error *err)
{
    w->audit = json_array();
    w->commands = json_array();
    if (w->audit == NULL || w->commands == NULL) {
        json_decref(w->audit);
        json_decref(w->commands);
        w->audit = w->commands = NULL;
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not store saga: out of memory");
    }
    return FERRY_OK;
}

static void writes_free(saga_writes *w)
{
    json_decref(w->audit);
    json_decref(w->commands);
    w->audit = w->commands = NULL;
}

static ferry_code audit(saga_writes *w, const saga_ctx *s, uint32_t step,
                        ferry_saga_command_kind kind, const char *status, uint32_t attempt,
                        const char *message_id, json_t *detail /* stolen */, ferry_error *err)
{
    json_t *row = json_pack("{s:s, s:s, s:s, s:I, s:s*, s:o*}", "step",
                            s->def->steps[step].name, "kind", ferry_saga_command_name(kind),
                            "status", status, "attempt", (json_int_t)attempt, "message_id",
                            message_id, "detail", detail);
    if (row == NULL || json_array_append_new(w->audit, row) != 0)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not record a saga step: out of "
                                                      "memory");
    return FERRY_OK;
}

static ferry_code send_command(saga_writes *w, const saga_ctx *s, const ferry_saga_action *a,
                               ferry_error *err)
{
    const ferry_saga_step_def *step = &s->def->steps[a->step];
    const ferry_saga_command *cmd = command_of(s->def, a->step, a->command);
    const char *missing;
    char *ptext = NULL;
    if (ferry__tmpl_render(ferry__saga_def_tmpl(s->def, a->step, a->command), s->context,
                          s->context_len, &ptext, &missing) != 0)
        return missing ? ferry__error_set(err, FERRY_EINVAL, "context",
                                       "could not build %s of step %s of saga %s: the context "
                                       "has no value for \"${context.%s}\"",
                                       ferry_saga_command_name(a->command), step->name, s->id,
                                       missing)
                       : ferry__error_set(err, FERRY_ENOMEM, NULL, "could not build a command: "
                                                                "out of memory");
    char key[FERRY_UUID_STRING_SIZE + 64], num[3][24];
    ferry_saga_key_format(s->id, a, key, sizeof key);
    snprintf(num[0], sizeof num[0], "%" PRIu32, a->step);
    snprintf(num[1], sizeof num[1], "%" PRIu32, a->round);
    snprintf(num[2], sizeof num[2], "%" PRIu32, a->attempt);
    json_t *headers = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "saga_id", s->id,
                                "saga_name", s->def->name, "saga_step", num[0], "saga_step_name",
                                step->name, "saga_kind", ferry_saga_command_name(a->command),
                                "saga_round", num[1], "saga_attempt", num[2], "saga_key", key,
                                "saga_reply_to", s->reg->reply_topic);
    char *htext = headers ? json_dumps(headers, JSON_COMPACT) : NULL;
    json_decref(headers);
    ferry_code rc;
    if (ptext == NULL || htext == NULL) {
        rc = ferry__error_set(err, FERRY_ENOMEM, NULL, "could not build a command: out of memory");
        goto out;
    }
    ferry_msg m = {.topic = step->topic, .key = s->id, .type = cmd->type,
                   .aggregate_type = s->def->name, .payload = ptext, .headers = htext,
                   .delay_ms = a->delay_ms};
    /* ferry_emit's own check, so that a refusal names its field here,
     * before anything is sent. */
    if ((rc = ferry_msg_check(&m, NULL, err)) != FERRY_OK)
        goto out;
    ferry_uuid mid;
    if (ferry_uuid_v7(&mid) != FERRY_OK) {
        rc = ferry__error_set(err, FERRY_EDB, NULL, "could not emit: no random bytes");
        goto out;
    }
    char mids[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&mid, mids);
    /* The payload travels as a JSON string holding its text: its numbers
     * keep their digits (saga_tmpl.h). */
    json_t *c = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "id", mids, "topic",
                          m.topic, "key", m.key, "type", m.type, "aggregate_type",
                          m.aggregate_type, "payload", ptext, "headers", htext, "delay_ms",
                          (json_int_t)a->delay_ms);
    if (c == NULL || json_array_append_new(w->commands, c) != 0) {
        rc = ferry__error_set(err, FERRY_ENOMEM, NULL, "could not build a command: out of memory");
        goto out;
    }
    rc = audit(w, s, a->step, a->command, "sent", a->attempt, mids,
               json_pack("{s:I, s:s, s:I}", "round", (json_int_t)a->round, "key", key,
                         "delay_ms", (json_int_t)a->delay_ms),
               err);
    ferry__log(FERRY_LOG_DEBUG, "saga_send", "saga %s: send %s of step %s round %" PRIu32
              " attempt %" PRIu32, s->id, ferry_saga_command_name(a->command), step->name,
              a->round, a->attempt);
out:
    free(ptext);
    free(htext);
    return rc;
}

/* What changed between state and next, in the audit trail: the answer
 * an applied reply brought, and the steps given up without one. */
static ferry_code audit_changes(saga_writes *w, const saga_ctx *s, const ferry_saga_event *ev,
                                const ferry_saga_state *state, const ferry_saga_state *next,
                                ferry_error *err)
{
    ferry_code rc;
    if (ev->kind == FERRY_SAGA_EV_REPLY
        && (rc = audit(w, s, ev->step, ev->command, ev->succeeded ? "succeeded" : "failed",
                       ev->attempt, NULL,
                       json_pack("{s:I, s:s}", "round", (json_int_t)ev->round, "event", "reply"),
                       err)) != FERRY_OK)
        return rc;
    for (uint32_t i = 0; i < next->step_count; i++) {
        if (next->steps[i].action == FERRY_SAGA_STEP_TIMED_OUT
            && state->steps[i].action != FERRY_SAGA_STEP_TIMED_OUT
            && (rc = audit(w, s, i, FERRY_SAGA_CMD_ACTION, "timed_out",
                           next->steps[i].action_attempts, NULL,
                           json_pack("{s:s, s:s}", "event", ferry_saga_event_name(ev->kind),
                                     "reason",
                                     ferry_saga_reason_name((ferry_saga_reason)next->reason)),
                           err)) != FERRY_OK)
            return rc;
    }
    return FERRY_OK;
}

/* Store next (insert when state is the zeroed "new") with its audit rows
 * and commands, in one statement. */
static ferry_code apply_event(PGconn *conn, const saga_ctx *s, const ferry_saga_event *ev,
                              const ferry_saga_state *state, const ferry_saga_state *next,
                              const ferry_saga_action *acts, size_t n_acts, ferry_error *err)
{
    saga_writes w;
    ferry_code rc = writes_init(&w, err);
    if (rc != FERRY_OK)
        return rc;
    char *engine = NULL, *audit_text = NULL, *cmd_text = NULL;
    rc = audit_changes(&w, s, ev, state, next, err);
    for (size_t i = 0; rc == FERRY_OK && i < n_acts; i++) {
        if (acts[i].kind == FERRY_SAGA_DO_SEND)
            rc = send_command(&w, s, &acts[i], err);
        /* SET_DEADLINE is next->wake_ms, stored below as ferry.saga.deadline;
         * FINISH is logged once the store went through. */
    }
    if (rc != FERRY_OK)
        goto out;
    json_t *doc = state_to_json(next);
    engine = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    audit_text = json_dumps(w.audit, JSON_COMPACT);
    cmd_text = json_dumps(w.commands, JSON_COMPACT);
    if (engine == NULL || audit_text == NULL || cmd_text == NULL) {
        rc = ferry__error_set(err, FERRY_ENOMEM, NULL, "could not store saga: out of memory");
        goto out;
    }
    char cur[16], wake[24], ver[24], old[24];
    snprintf(cur, sizeof cur, "%" PRIu32, next->current);
    snprintf(wake, sizeof wake, "%" PRId64, next->wake_ms);
    snprintf(ver, sizeof ver, "%" PRIu64, next->revision);
    snprintf(old, sizeof old, "%" PRIu64, state->revision);
    const char *status = ferry_saga_status_name((ferry_saga_status)next->status);
    if (ev->kind == FERRY_SAGA_EV_START) {
        /* The caller's text as it is (checked by ferry_saga_start): jsonb
         * keeps its numbers' digits. The context is written only here. */
        const char *p[11] = {s->id, s->def->name, s->def->hash, status, cur, s->context, wake,
                             ver, engine, audit_text, cmd_text};
        rc = ferry__exec(conn, "SELECT ferry.saga_begin($1, $2, $3, $4, $5, $6, $7, $8, $9, "
                              "$10, $11)", 11, p, "could not insert saga", err);
    } else {
        const char *p[9] = {s->id, old, ver, status, cur, wake, engine, audit_text, cmd_text};
        PGresult *res = PQexecParams(conn,
                                     "SELECT ferry.saga_store($1, $2, $3, $4, $5, $6, $7, $8, "
                                     "$9)", 9, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            rc = ferry_error_from_pg(err, conn, res, "could not store saga");
        else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            /* The row is locked while loaded, so this is another writer
             * that did not lock: retry the event on the newer revision. */
            rc = ferry__error_set(err, FERRY_EDB, "version",
                               "could not store saga %s: revision %s is no longer current",
                               s->id, old);
            if (err != NULL) {
                err->retriable = 1;
                memcpy(err->sqlstate, "40001", 6);
            }
        }
        PQclear(res);
    }
    for (size_t i = 0; rc == FERRY_OK && i < n_acts; i++)
        if (acts[i].kind == FERRY_SAGA_DO_FINISH)
            ferry__log(FERRY_LOG_INFO, "saga_finished", "saga %s (%s) %s", s->id, s->def->name,
                      ferry_saga_status_name(acts[i].status));
out:
    free(engine);
    free(audit_text);
    free(cmd_text);
    writes_free(&w);
    return rc;
}

/*
 * Run ev on the saga loaded and locked in row 0 of res from column c0 on
 * (definition, definition_hash, context, version, engine, now_ms: what
 * ferry.saga_lock returns), store the result. now_ms <= 0: the
 * transaction's time. *applied (may be NULL) is 1 when the engine applied
 * the event. Takes res.
 */
static ferry_code drive_loaded(PGconn *conn, const ferry_saga_registry *reg, const char *id,
                               PGresult *res, int c0, const ferry_saga_event *ev,
                               int64_t now_ms, int *applied, ferry_error *err)
{
    if (applied)
        *applied = 0;
    saga_ctx s = {.reg = reg};
    snprintf(s.id, sizeof s.id, "%s", id);
    const char *name = PQgetvalue(res, 0, c0 + 0), *hash = PQgetvalue(res, 0, c0 + 1);
    ferry_code rc;
    s.def = ferry_saga_registry_find(reg, name);
    if (s.def == NULL) {
        rc = ferry__error_set(err, FERRY_EINVAL, "definition",
                           "saga %s runs definition \"%s\", which this registry does not have",
                           id, name);
        goto out;
    }
    if (strcmp(s.def->hash, hash) != 0) {
        rc = ferry__error_set(err, FERRY_EINVAL, "definition",
                           "saga %s was started with definition \"%s\" hash %s, but the "
                           "registry's has hash %s: refusing to run it on another definition",
                           id, name, hash, s.def->hash);
        goto out;
    }
    s.context = PQgetvalue(res, 0, c0 + 2);
    s.context_len = (size_t)PQgetlength(res, 0, c0 + 2);
    ferry_saga_state state, next;
    if ((rc = state_from_json(PQgetisnull(res, 0, c0 + 4) ? NULL
                                                          : PQgetvalue(res, 0, c0 + 4),
                              &state, err)) != FERRY_OK)
        goto out;
    if (state.revision != strtoull(PQgetvalue(res, 0, c0 + 3), NULL, 10)) {
        rc = ferry__error_set(err, FERRY_EINVAL, "state",
                           "saga %s: stored state revision %" PRIu64 " differs from version %s",
                           id, state.revision, PQgetvalue(res, 0, c0 + 3));
        goto out;
    }
    if (now_ms <= 0)
        now_ms = strtoll(PQgetvalue(res, 0, c0 + 5), NULL, 10);
    ferry_saga_action acts[FERRY_SAGA_ACTIONS_MAX];
    size_t n_acts = 0;
    if ((rc = ferry_saga_step(s.def, &state, ev, now_ms, &next, acts, FERRY_SAGA_ACTIONS_MAX,
                              &n_acts, err)) != FERRY_OK)
        goto out;
    char line[160];
    ferry_saga_event_format(ev, line, sizeof line);
    if (next.ignored != FERRY_SAGA_IGNORED_NONE) {
        ferry__log(FERRY_LOG_DEBUG, "saga_ignored", "saga %s: %s ignored (%s)", id, line,
                  ferry_saga_ignored_name((ferry_saga_ignored)next.ignored));
        goto out;
    }
    ferry__log(FERRY_LOG_DEBUG, "saga_event", "saga %s: %s: %s -> %s", id, line,
              ferry_saga_status_name((ferry_saga_status)state.status),
              ferry_saga_status_name((ferry_saga_status)next.status));
    rc = apply_event(conn, &s, ev, &state, &next, acts, n_acts, err);
    if (rc == FERRY_OK && applied)
        *applied = 1;
out:
    PQclear(res);
    return rc;
}

/*
 * Lock saga id, run ev on it, store the result. now_ms <= 0: the
 * transaction's time. *applied (may be NULL) is 1 when the engine applied
 * the event; *found 0 when there is no such saga (then FERRY_OK).
 */
static ferry_code drive(PGconn *conn, const ferry_saga_registry *reg, const char *id,
                        const ferry_saga_event *ev, int64_t now_ms, int *applied, int *found,
                        ferry_error *err)
{
    if (applied)
        *applied = 0;
    const char *p[1] = {id};
    PGresult *res = PQexecParams(conn, "SELECT * FROM ferry.saga_lock($1)", 1, NULL, p, NULL,
                                 NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not load saga");
        PQclear(res);
        return rc;
    }
    *found = PQntuples(res) == 1;
    if (!*found) {
        PQclear(res);
        return FERRY_OK;
    }
    return drive_loaded(conn, reg, id, res, 0, ev, now_ms, applied, err);
}

/* ---------------------------------------------------------------- API */

/*
 * A context must be a JSON object that jsonb stores as it is: checked as
 * ferry_emit checks a payload (the one place that knows what jsonb takes,
 * numbers numeric cannot hold included), so that a bad context is
 * refused here, with the transaction still usable, not by the server. Up
 * to SAGA_CONTEXT_MAX bytes.
 */
#define SAGA_CONTEXT_MAX ((size_t)16 * 1024 * 1024)
static ferry_code context_check(const ferry_saga_def *def, const char *context_json,
                                ferry_error *err)
{
    if (context_json == NULL)
        return FERRY_OK;
    ferry_msg probe = {.topic = "t", .key = "k", .type = "t", .payload = context_json};
    ferry_emit_opts opts = {.max_payload = SAGA_CONTEXT_MAX};
    ferry_error why;
    if (ferry_msg_check(&probe, &opts, &why) != FERRY_OK)
        return ferry__error_set(err, FERRY_EINVAL, "context",
                             "could not start saga %s: the context, checked as a payload: %s",
                             def->name, why.message);
    if (context_json[strspn(context_json, " \t\r\n")] != '{')
        return ferry__error_set(err, FERRY_EINVAL, "context",
                             "could not start saga %s: the context must be a JSON object",
                             def->name);
    return FERRY_OK;
}

ferry_code ferry_saga_start(PGconn *conn, const ferry_saga_registry *reg, const char *def_name,
                            const char *context_json, ferry_uuid *id_out, ferry_error *err)
{
    ferry__err_clear(err);
    ferry_code rc = ferry__conn_check_in_tx(conn, "could not start saga", err);
    if (rc != FERRY_OK)
        return rc;
    saga_ctx s = {.reg = reg, .def = ferry_saga_registry_find(reg, def_name)};
    if (s.def == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "definition",
                             "could not start saga: no definition called \"%s\"",
                             def_name ? def_name : "(null)");
    if ((rc = context_check(s.def, context_json, err)) != FERRY_OK)
        return rc;
    s.context = context_json ? context_json : "{}";
    s.context_len = strlen(s.context);
    ferry_uuid id;
    if ((rc = check_templates(s.def, s.context, s.context_len, err)) != FERRY_OK
        || (rc = ferry_uuid_v7(&id)) != FERRY_OK) {
        if (rc != FERRY_OK && err != NULL && err->code == FERRY_OK)
            ferry__error_set(err, rc, NULL, "could not start saga: no id");
        goto out;
    }
    ferry_uuid_format(&id, s.id);
    PGresult *res = PQexec(conn, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = ferry_error_from_pg(err, conn, res, "could not start saga: no time");
        PQclear(res);
        goto out;
    }
    int64_t now_ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    ferry_saga_state zero, next;
    memset(&zero, 0, sizeof zero);
    ferry_saga_event ev = {.kind = FERRY_SAGA_EV_START};
    ferry_saga_action acts[FERRY_SAGA_ACTIONS_MAX];
    size_t n_acts;
    if ((rc = ferry_saga_step(s.def, &zero, &ev, now_ms, &next, acts, FERRY_SAGA_ACTIONS_MAX,
                              &n_acts, err)) != FERRY_OK
        || (rc = apply_event(conn, &s, &ev, &zero, &next, acts, n_acts, err)) != FERRY_OK)
        goto out;
    ferry__log(FERRY_LOG_DEBUG, "saga_started", "saga %s (%s) started", s.id, s.def->name);
    if (id_out)
        *id_out = id;
out:
    return rc;
}

/* saga_id in its canonical form into canon; else FERRY_EINVAL, "<doing>:
 * "X" is not a saga id". */
static ferry_code saga_id_canon(const char *saga_id, const char *doing,
                                char canon[FERRY_UUID_STRING_SIZE], ferry_error *err)
{
    ferry_uuid id;
    if (saga_id == NULL || ferry_uuid_parse(saga_id, &id) != FERRY_OK)
        return ferry__error_set(err, FERRY_EINVAL, "saga_id", "%s: \"%s\" is not a saga id",
                             doing, saga_id ? saga_id : "(null)");
    ferry_uuid_format(&id, canon);
    return FERRY_OK;
}

ferry_code ferry_saga_cancel(PGconn *conn, const ferry_saga_registry *reg, const char *saga_id,
                             ferry_error *err)
{
    ferry__err_clear(err);
    ferry_code rc = ferry__conn_check_in_tx(conn, "could not cancel saga", err);
    if (rc != FERRY_OK)
        return rc;
    char canon[FERRY_UUID_STRING_SIZE];
    if ((rc = saga_id_canon(saga_id, "could not cancel saga", canon, err)) != FERRY_OK)
        return rc;
    ferry_saga_event ev = {.kind = FERRY_SAGA_EV_CANCEL};
    int found;
    if ((rc = drive(conn, reg, canon, &ev, 0, NULL, &found, err)) != FERRY_OK)
        return rc;
    if (!found)
        return ferry__error_set(err, FERRY_EINVAL, "saga_id", "could not cancel saga %s: no such "
                             "saga", canon);
    return FERRY_OK;
}

ferry_code ferry_saga_reply_handler(PGconn *conn, const ferry_message *msg, void *registry,
                                    ferry_error *err)
{
    const ferry_saga_registry *reg = registry;
    const json_t *p = msg->payload;
    const char *id = json_string_value(json_object_get(p, "saga_id"));
    const char *kind = json_string_value(json_object_get(p, "kind"));
    const json_t *step = json_object_get(p, "step"), *round = json_object_get(p, "round"),
                 *attempt = json_object_get(p, "attempt"),
                 *ok = json_object_get(p, "succeeded");
    ferry_uuid uid;
    if (id == NULL || ferry_uuid_parse(id, &uid) != FERRY_OK || kind == NULL
        || (strcmp(kind, "action") != 0 && strcmp(kind, "compensation") != 0)
        || !json_is_integer(step) || json_integer_value(step) < 0
        || json_integer_value(step) >= FERRY_SAGA_STEPS_MAX || !json_is_integer(round)
        || json_integer_value(round) < 0 || json_integer_value(round) > (json_int_t)UINT32_MAX
        || !json_is_integer(attempt) || json_integer_value(attempt) < 0
        || json_integer_value(attempt) > (json_int_t)UINT32_MAX || !json_is_boolean(ok))
        return ferry__error_set(err, FERRY_EINVAL, "payload",
                             "saga reply %s is malformed: want saga_id, step, kind, round, "
                             "attempt, succeeded", msg->id);
    char canon[FERRY_UUID_STRING_SIZE];
    ferry_uuid_format(&uid, canon);
    ferry_saga_event ev = {
        .kind = FERRY_SAGA_EV_REPLY,
        .command = strcmp(kind, "action") == 0 ? FERRY_SAGA_CMD_ACTION
                                               : FERRY_SAGA_CMD_COMPENSATION,
        .step = (uint32_t)json_integer_value(step),
        .round = (uint32_t)json_integer_value(round),
        .attempt = (uint32_t)json_integer_value(attempt),
        .succeeded = json_is_true(ok),
    };
    int found;
    ferry_code rc = drive(conn, reg, canon, &ev, 0, NULL, &found, err);
    if (rc == FERRY_OK && !found)
        ferry__log(FERRY_LOG_WARN, "saga_reply_unknown", "saga reply %s: no saga %s here; "
                  "skipped", msg->id, canon);
    return rc;
}

/* One timer firing, in ferry_tx_run's transaction: the next due saga
 * (ferry_saga_fire_timers) or the one named (ferry_saga_fire_timer). Reset
 * at every attempt: ferry_tx_run may call fire_one more than once. */
#define FIRE_SKIP_MAX 64 /* sagas one ferry_saga_fire_timers call gets past */

typedef struct fire_arg {
    const ferry_saga_registry *reg;
    int64_t now_ms;
    const char *id; /* the saga to fire, canonical; NULL: the next one due */
    int none;       /* no due saga left (next due), or no such saga (named) */
    int applied;
    char picked[FERRY_UUID_STRING_SIZE]; /* the next due one taken ("" if none) */
    const char *skip; /* "{id,...}": due sagas this call failed on, passed by */
    const char *names, *hashes; /* the registry's definitions, as text[] literals */
} fire_arg;

/* reg's definitions as two text[] literals (pgarray.c), names and hashes
 * in one order, for ferry.saga_lock_next_due: a worker takes only the
 * timers of sagas it can run (schema 37). Returns 0, or -1 out of memory;
 * the caller frees both p. */
static int registry_arrays(const ferry_saga_registry *reg, ferry__alit *names,
                           ferry__alit *hashes)
{
    for (size_t i = 0; i < reg->n; i++) {
        ferry__alit_str(names, reg->defs[i]->name);
        ferry__alit_str(hashes, reg->defs[i]->hash);
    }
    return ferry__alit_end(names) != NULL && ferry__alit_end(hashes) != NULL ? 0 : -1;
}

static ferry_code fire_one(PGconn *conn, void *arg, ferry_error *err)
{
    fire_arg *f = arg;
    f->none = 0;
    f->applied = 0;
    f->picked[0] = '\0';
    ferry_saga_event ev = {.kind = FERRY_SAGA_EV_TIMEOUT};
    int found;
    if (f->id != NULL) {
        /* drive() takes the time from the row's lock when now_ms is 0, and
         * the engine decides whether anything is due. */
        ferry_code rc = drive(conn, f->reg, f->id, &ev, f->now_ms, &f->applied, &found, err);
        f->none = !found;
        return rc;
    }
    /* The next due saga found, locked and loaded in one statement
     * (ferry.saga_lock_next_due); a NULL time is the transaction's. */
    char now[24];
    if (f->now_ms > 0)
        snprintf(now, sizeof now, "%" PRId64, f->now_ms);
    const char *p[4] = {f->now_ms > 0 ? now : NULL, f->skip, f->names, f->hashes};
    PGresult *res = PQexecParams(conn, "SELECT * FROM ferry.saga_lock_next_due($1, "
                                       "$2::uuid[], $3::text[], $4::text[])", 4, NULL, p, NULL,
                                 NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not find due saga timers");
        PQclear(res);
        return rc;
    }
    if (PQntuples(res) == 0) {
        f->none = 1;
        PQclear(res);
        return FERRY_OK;
    }
    snprintf(f->picked, sizeof f->picked, "%s", PQgetvalue(res, 0, 0));
    return drive_loaded(conn, f->reg, f->picked, res, 1, &ev, f->now_ms, &f->applied, err);
}


/* The timers' calls run transactions of their own on an idle conn, so
 * ferry__conn_check_in_tx does not apply; its encoding check does. A
 * NULL or broken conn is left to the steps that use it, which say so. */
static ferry_code timer_conn_check_utf8(PGconn *conn, const char *what, ferry_error *err)
{
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
        return FERRY_OK;
    return ferry__conn_check_utf8(conn, what, err);
}

/*
 * Timers fire in batches: up to FIRE_BATCH due sagas in one transaction,
 * each under a savepoint, so that many timers due at once (a participant
 * or the broker away for a while) cost one commit -- one flush of the
 * log -- per batch instead of one per saga. A batch holds its sagas' row
 * locks until it commits, so replies to them wait that long at most.
 *
 * One saga a worker cannot run (its definition changed, its context is
 * refused, ...) must not stop the timers of every other saga: the due
 * saga that failed is rolled back to its savepoint, logged, left as it is
 * (still due, so the reconciler reports it) and passed by for the rest of
 * this call (saga_lock_next_due's skip list), at most FIRE_SKIP_MAX of
 * them. A retriable error (a serialization failure, a deadlock) rolls the
 * whole batch back for ferry_tx_run to run again. What is not about one
 * saga ends the call with its error: a connection lost, the query for
 * the next due saga refused, or one more saga failed than the skip list
 * holds (then something is wrong with all of them; what the batch fired
 * before is committed, and counted in *fired).
 */
#define FIRE_BATCH 32 /* due sagas fired in one transaction */
#define FIRE_LIST_TEXT ((FIRE_SKIP_MAX + FIRE_BATCH) * (FERRY_UUID_STRING_SIZE + 1) + 2)
_Static_assert(FIRE_LIST_TEXT < 4096, "skip list text");

typedef struct fire_batch_arg {
    fire_arg f;
    int want;                   /* sagas to take in this batch */
    int taken, fired, none;     /* this attempt's */
    char failed[FIRE_SKIP_MAX][FERRY_UUID_STRING_SIZE];
    size_t n_failed;            /* over the whole call */
    char taken_ids[FIRE_BATCH][FERRY_UUID_STRING_SIZE];
    char list[FIRE_LIST_TEXT];  /* "{failed..., taken...}" for saga_lock_next_due */
    int gave_up;                /* one more failed past FIRE_SKIP_MAX: the call ends */
    ferry_error why;            /* that failure */
} fire_batch_arg;

static void fire_list(fire_batch_arg *b)
{
    size_t used = 0;
    b->list[used++] = '{';
    for (size_t i = 0; i < b->n_failed + (size_t)b->taken; i++) {
        const char *id = i < b->n_failed ? b->failed[i] : b->taken_ids[i - b->n_failed];
        used += (size_t)snprintf(b->list + used, sizeof b->list - used, "%s%s", i ? "," : "",
                                 id);
    }
    snprintf(b->list + used, sizeof b->list - used, "}");
}

static ferry_code fire_batch(PGconn *conn, void *arg, ferry_error *err)
{
    fire_batch_arg *b = arg;
    b->taken = b->fired = b->none = b->gave_up = 0;
    ferry_code rc = FERRY_OK;
    int open = 0;               /* a savepoint is open */
    while (b->taken < b->want) {
        fire_list(b);
        b->f.skip = b->list;
        /* The last saga's savepoint released and the next one's taken in
         * one round trip (two statements in one simple query). */
        if ((rc = ferry__exec(conn, open ? "RELEASE SAVEPOINT ferry_timer; "
                                          "SAVEPOINT ferry_timer" : "SAVEPOINT ferry_timer",
                             0, NULL, "could not fire saga timers", err)) != FERRY_OK)
            return rc;
        open = 1;
        rc = fire_one(conn, &b->f, err);
        if (rc != FERRY_OK) {
            if (b->f.picked[0] == '\0' || (err != NULL && err->retriable) ||
                PQstatus(conn) != CONNECTION_OK)
                return rc;
            ferry_error why = err ? *err : (ferry_error){.code = rc};
            ferry__err_clear(err);
            if ((rc = ferry__exec(conn, "ROLLBACK TO SAVEPOINT ferry_timer", 0, NULL,
                                 "could not fire saga timers", err)) != FERRY_OK)
                return rc;
            ferry__log(FERRY_LOG_ERROR, "saga_timer_failed", "saga %s: could not fire its "
                      "timer, passed by until the next call: %s", b->f.picked,
                      why.message[0] ? why.message : ferry_code_name(why.code));
            if (b->n_failed == FIRE_SKIP_MAX) {
                /* As many failed as the skip list holds: something is wrong
                 * with all of them, and the call ends with this one's error
                 * -- after committing what this batch fired (it rolled the
                 * batch back, the healthy sagas' timers with it: a review). */
                b->gave_up = 1;
                b->why = why;
                b->none = 1;
                break;
            }
            snprintf(b->failed[b->n_failed++], FERRY_UUID_STRING_SIZE, "%s", b->f.picked);
            continue;           /* not against max: the healthy ones get their turn */
        }
        if (b->f.none) {
            b->none = 1;
            break;
        }
        snprintf(b->taken_ids[b->taken++], FERRY_UUID_STRING_SIZE, "%s", b->f.picked);
        b->fired += b->f.applied;
    }
    if (open)
        rc = ferry__exec(conn, "RELEASE SAVEPOINT ferry_timer", 0, NULL,
                        "could not fire saga timers", err);
    return rc;
}

ferry_code ferry_saga_fire_timers(PGconn *conn, const ferry_saga_registry *reg, int64_t now_ms,
                                  int max, int *fired, ferry_error *err)
{
    ferry__err_clear(err);
    if (reg == NULL || max < 0 || now_ms < 0 || now_ms > FERRY_SAGA_NOW_MAX_MS)
        return ferry__error_set(err, FERRY_EINVAL, reg ? "max" : "registry",
                             "could not fire saga timers: bad arguments");
    if (timer_conn_check_utf8(conn, "could not fire saga timers", err) != FERRY_OK)
        return FERRY_ESTATE;
    fire_batch_arg *b = calloc(1, sizeof *b);
    if (b == NULL)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not fire saga timers: out of "
                                                      "memory");
    ferry__alit names = {0}, hashes = {0};
    if (registry_arrays(reg, &names, &hashes) != 0) {
        free(names.p);
        free(hashes.p);
        free(b);
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "could not fire saga timers: out of "
                                                      "memory");
    }
    b->f = (fire_arg){.reg = reg, .now_ms = now_ms, .names = names.p, .hashes = hashes.p};
    int n = 0, left = max;
    ferry_code rc = FERRY_OK;
    while (left > 0) {
        b->want = left < FIRE_BATCH ? left : FIRE_BATCH;
        if ((rc = ferry_tx_run(conn, NULL, fire_batch, b, NULL, err)) != FERRY_OK)
            break;
        n += b->fired;
        left -= b->taken;
        if (b->none)
            break;
    }
    free(names.p);
    free(hashes.p);
    if (rc == FERRY_OK && b->gave_up) {
        if (fired)
            *fired = n;
        if (err != NULL)
            *err = b->why;
        rc = b->why.code != FERRY_OK ? b->why.code : FERRY_EINVAL;
    }
    free(b);
    if (rc == FERRY_OK && fired)
        *fired = n;
    return rc;
}

ferry_code ferry_saga_fire_timer(PGconn *conn, const ferry_saga_registry *reg,
                                 const char *saga_id, int64_t now_ms, int *fired,
                                 ferry_error *err)
{
    ferry__err_clear(err);
    if (reg == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "registry",
                             "could not fire saga timer: the registry is NULL");
    if (now_ms < 0 || now_ms > FERRY_SAGA_NOW_MAX_MS)
        return ferry__error_set(err, FERRY_EINVAL, "now_ms",
                             "could not fire saga timer: now_ms %" PRId64 " is out of range",
                             now_ms);
    if (timer_conn_check_utf8(conn, "could not fire saga timer", err) != FERRY_OK)
        return FERRY_ESTATE;
    char canon[FERRY_UUID_STRING_SIZE];
    ferry_code rc = saga_id_canon(saga_id, "could not fire saga timer", canon, err);
    if (rc != FERRY_OK)
        return rc;
    fire_arg f = {.reg = reg, .now_ms = now_ms, .id = canon};
    rc = ferry_tx_run(conn, NULL, fire_one, &f, NULL, err);
    if (rc != FERRY_OK)
        return rc;
    if (f.none)
        return ferry__error_set(err, FERRY_EINVAL, "saga_id",
                             "could not fire saga timer: no saga %s", canon);
    if (fired)
        *fired = f.applied;
    return FERRY_OK;
}
