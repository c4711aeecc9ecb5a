/* tu_saga.c — see tu_saga.h. */
#include "tu_saga.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

const char *const tu_saga_name_of[TU_C_COUNT] = {
    [TU_C_ORCH] = "orchestrator", [TU_C_PAYMENT] = "payment", [TU_C_INVENTORY] = "inventory",
    [TU_C_SHIPPING] = "shipping",
};

static ferry_code effect(PGconn *conn, const ferry_message *m, const char *who,
                         const char *what, ferry_error *err)
{
    const char *p[3] = {who, ferry_message_header(m, "saga_id"), what};
    PGresult *res = PQexecParams(conn, "INSERT INTO t_effect (participant, saga, what) "
                                       "VALUES ($1, $2, $3)", 3, NULL, p, NULL, NULL, 0);
    ferry_code rc = PQresultStatus(res) == PGRES_COMMAND_OK
                        ? FERRY_OK : ferry_error_from_pg(err, conn, res, "effect");
    PQclear(res);
    return rc;
}

static ferry_code do_action(PGconn *conn, const ferry_message *m, void *arg, ferry_error *err)
{
    const char *behave = json_string_value(json_object_get(m->payload, "behave"));
    ferry_code rc = effect(conn, m, arg, "do", err);
    /* A refusal after the callback wrote: ferry_participant_handle must
     * roll the write back (to its savepoint), so no 'do' row stays. */
    if (rc == FERRY_OK && behave != NULL && strcmp(behave, "refuse") == 0)
        return ferry_error_set(err, FERRY_EINVAL, 0, "%s refused: out of stock", (char *)arg);
    return rc;
}

static ferry_code do_compensation(PGconn *conn, const ferry_message *m, void *arg,
                                  ferry_error *err)
{
    return effect(conn, m, arg, "undo", err);
}

ferry_participant tu_saga_parts[TU_C_COUNT] = {
    [TU_C_PAYMENT] = {.name = "payment", .action = do_action, .compensation = do_compensation,
                      .arg = "payment"},
    [TU_C_INVENTORY] = {.name = "inventory", .action = do_action,
                        .compensation = do_compensation, .arg = "inventory"},
    /* The pivot: nothing to undo. */
    [TU_C_SHIPPING] = {.name = "shipping", .action = do_action, .arg = "shipping"},
};

kt_broker *tu_saga_setup(PGconn *c, const char *const topics[TU_C_COUNT])
{
    tu_exec(c, "CREATE TABLE t_effect (n bigserial, participant text, saga uuid, what text)");
    kt_broker *broker = kt_start(1);
    if (broker == NULL)
        return NULL;
    for (int i = 0; i < TU_C_COUNT; i++)
        if (kt_command(broker, "topic-create %s 2 1", topics[i]) != 0) {
            kt_stop(broker);
            return NULL;
        }
    return broker;
}

ferry_consumer *tu_saga_consumer_new(int which, const kt_broker *broker, const char *topic,
                                     ferry_saga_registry *reg, ferry_handler_fn handler,
                                     const char *const *props)
{
    int orch = which == TU_C_ORCH;
    return tu_consumer_new(tu_saga_name_of[which], kt_bootstrap(broker), topic,
                           orch ? ferry_saga_reply_handler : handler,
                           orch ? (void *)reg : (void *)&tu_saga_parts[which], props, 0);
}

void tu_saga_start(PGconn *conn, ferry_saga_registry *reg, const char *def, const char *ctx,
                   char id[FERRY_UUID_STRING_SIZE])
{
    ferry_error err;
    ferry_uuid uid;
    tu_exec(conn, "BEGIN");
    assert_ferry_ok(ferry_saga_start(conn, reg, def, ctx, &uid, &err), err);
    tu_exec(conn, "COMMIT");
    ferry_uuid_format(&uid, id);
}

void tu_saga_teardown(ferry_consumer *cons[TU_C_COUNT], ferry_saga_registry *reg,
                      tu_proc *relay, kt_broker *broker)
{
    for (int i = 0; i < TU_C_COUNT; i++) {
        ferry_consumer_destroy(cons[i]);
        cons[i] = NULL;
    }
    ferry_saga_registry_destroy(reg);
    if (relay->pid > 0)
        tu_proc_finish(relay, 30000);
    kt_stop(broker);
}

PGconn *tu_saga_group_setup(void **state, const char *const topics[TU_C_COUNT],
                            kt_broker **broker)
{
    if (tu_group_setup(state) != 0)
        return NULL;
    PGconn *c = tu_connect();
    if ((*broker = tu_saga_setup(c, topics)) == NULL) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

ferry_saga_registry *tu_saga_registry(const char *yaml, const char *name)
{
    ferry_saga_def *def = NULL;
    ferry_saga_load_errors errs;
    if (ferry_saga_def_parse(yaml, strlen(yaml), name, &def, &errs) != FERRY_OK)
        fail_msg("%s: %s: %s", name, errs.errors[0].field, errs.errors[0].message);
    ferry_saga_registry *r = NULL;
    ferry_error err;
    assert_ferry_ok(ferry_saga_registry_new(NULL, &r, &err), err);
    assert_ferry_ok(ferry_saga_registry_add(r, def, &err), err);
    return r;
}
