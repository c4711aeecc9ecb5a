#include "testutil.h"
static void smoke(void **state)
{
    PGconn *c = tu_connect();
    tu_exec(c, "BEGIN");
    ferry_msg m = {.topic = "orders", .key = "k1", .type = "T", .payload = "{\"a\":1}"};
    ferry_error err; ferry_uuid id;
    assert_ferry_ok(ferry_emit(c, &m, NULL, &id, &err), err);
    ferry_msg b[3] = {m, m, m};
    assert_ferry_ok(ferry_emit_batch(c, b, 3, NULL, NULL, &err), err);
    tu_exec(c, "COMMIT");
    assert_int_equal(tu_int(c, "SELECT max(seq) FROM ferry.outbox"), 4);
    tu_exec(c, "SELECT ferry.emit('orders','k2','T','{}')");
    PQfinish(c);
}
int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(smoke)};
    return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
