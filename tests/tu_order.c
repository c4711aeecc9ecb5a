/* tu_order.c — see tu_order.h. */
#include "tu_order.h"

#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"

void tu_emit_ledger(PGconn *c, const char *key, const char *payload)
{
    ferry_msg m = {.topic = "ledger", .key = key, .type = "Posted", .payload = payload};
    ferry_error err;
    assert_ferry_ok(ferry_emit(c, &m, NULL, NULL, &err), err);
}

void tu_reverse_commits(PGconn *admin, PGconn **c, int n)
{
    tu_exec(admin, "CREATE TABLE biz (id serial PRIMARY KEY, tx int)");
    for (int i = 0; i < n; i++) {
        c[i] = tu_connect();
        tu_exec(c[i], "BEGIN");
        char *sql = tu_sprintf("INSERT INTO biz (tx) VALUES (%d)", i);
        tu_exec(c[i], sql);
        free(sql);
    }
    for (int i = n - 1; i >= 0; i--) {
        char payload[32];
        snprintf(payload, sizeof payload, "{\"tx\": %d}", i);
        tu_emit_ledger(c[i], "acct-7", payload);
        tu_exec(c[i], "COMMIT");
    }
}

void tu_reverse_commits_done(PGconn *admin, PGconn **c, int n)
{
    for (int i = 0; i < n; i++)
        PQfinish(c[i]);
    tu_exec(admin, "DROP TABLE biz");
}
