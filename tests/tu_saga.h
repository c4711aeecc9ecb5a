/*
 * tu_saga.h — what the saga tests share (test_saga.c, the driver;
 * test_reconcile_saga.c, the reconciler's saga sweeps): an order saga run
 * the whole way, through the development broker and a `ferry-relay run`
 * child, by four consumers polled in the test's thread: the
 * orchestrator's (replies, ferry_saga_reply_handler) and one per
 * participant (payment, inventory, shipping, through
 * ferry_participant_handle). Shipping is the pivot.
 *
 * Each action or compensation a participant applies is a row of t_effect
 * (participant, saga, what: "do" or "undo"), in the order applied. An
 * action whose payload says behave "refuse" writes its row and then
 * refuses (FERRY_EINVAL from the callback: a business refusal), so the
 * row stays only if the refusal was not rolled back. How a command gets lost on the way
 * is each test's own participant handler.
 */
#ifndef FERRY_TU_SAGA_H
#define FERRY_TU_SAGA_H

#include "ferry.h"
#include "harness/kafkatmp.h"
#include "tu_proc.h"

enum { TU_C_ORCH, TU_C_PAYMENT, TU_C_INVENTORY, TU_C_SHIPPING, TU_C_COUNT };

/* The consumers' names: "orchestrator", "payment", ... */
extern const char *const tu_saga_name_of[TU_C_COUNT];
/* The participants (no entry for the orchestrator). */
extern ferry_participant tu_saga_parts[TU_C_COUNT];

/* Make t_effect over c, start the broker and make the four topics (the
 * orchestrator's first; two partitions each): the broker, or NULL with the
 * reason on stderr. */
kt_broker *tu_saga_setup(PGconn *c, const char *const topics[TU_C_COUNT]);
/* A new registry holding the one definition yaml, parsed under the file
 * name name; fails the test if it does not load. */
ferry_saga_registry *tu_saga_registry(const char *yaml, const char *name);
/* cmocka group setup of a saga binary: tu_group_setup, then
 * tu_saga_setup on a new connection, the broker into *broker. That
 * connection, for the binary's own fixtures (the caller finishes it), or
 * NULL when something failed. */
PGconn *tu_saga_group_setup(void **state, const char *const topics[TU_C_COUNT],
                            kt_broker **broker);

/* The consumer `which` of topic: the orchestrator's applies replies to
 * reg; a participant's runs handler with &tu_saga_parts[which]. props as
 * tu_consumer_new's. */
ferry_consumer *tu_saga_consumer_new(int which, const kt_broker *broker, const char *topic,
                                     ferry_saga_registry *reg, ferry_handler_fn handler,
                                     const char *const *props);

/* Start saga def with context ctx (JSON) in a transaction of its own; its
 * id into id. */
void tu_saga_start(PGconn *conn, ferry_saga_registry *reg, const char *def, const char *ctx,
                   char id[FERRY_UUID_STRING_SIZE]);

/* The end of a group: destroy the consumers and the registry (either may
 * be NULL), stop the relay, if it runs, as tu_proc_finish does, then the
 * broker. */
void tu_saga_teardown(ferry_consumer *cons[TU_C_COUNT], ferry_saga_registry *reg,
                      tu_proc *relay, kt_broker *broker);

#endif
