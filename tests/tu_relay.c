/* tu_relay.c — see tu_relay.h. */
#include "tu_relay.h"

#include <stdlib.h>
#include <string.h>

#include "harness/kafkatmp.h"
#include "testutil.h"

long long tu_outbox_rows(const char *topic)
{
    PGconn *c = tu_connect();
    long long n = tu_int_of(c, tu_sprintf("SELECT count(*) FROM ferry.outbox "
                                          "WHERE topic = '%s'", topic));
    PQfinish(c);
    return n;
}

void tu_await_outbox_empty(const char *topic, int timeout_ms)
{
    PGconn *c = tu_connect();
    char *sql = tu_sprintf("SELECT count(*) = 0 FROM ferry.outbox WHERE topic = '%s'", topic);
    tu_await(c, sql, timeout_ms);
    free(sql);
    PQfinish(c);
}

tu_topic_check tu_check_topic(const char *bootstrap, const char *topic, size_t want,
                              int timeout_ms)
{
    kt_msgs *got = kt_consume(bootstrap, topic, want, timeout_ms);
    assert_non_null(got);
    tu_topic_check tc = {.messages = got->count};
    enum { MAXKEYS = 256 };
    char *keys[MAXKEYS];
    long last[MAXKEYS];
    int partition[MAXKEYS];
    for (size_t i = 0; i < got->count; i++) {
        const kt_msg *m = &got->msgs[i];
        const char *seq_text = kt_header(m, "ferry_seq");
        assert_non_null(seq_text);
        long seq = atol(seq_text);
        size_t k = 0;
        while (k < tc.keys && strcmp(keys[k], m->key) != 0)
            k++;
        if (k == tc.keys) {
            assert_true(tc.keys < MAXKEYS);
            keys[k] = m->key;
            last[k] = 0;
            partition[k] = m->partition;
            tc.keys++;
        }
        /* One key, one partition. */
        assert_int_equal(partition[k], m->partition);
        if (seq <= last[k]) {
            tc.duplicates++;
        } else {
            if (seq != last[k] + 1)
                fail_msg("topic %s key %s: position %ld after %ld (a gap or reordering)",
                         topic, m->key, seq, last[k]);
            last[k] = seq;
            tc.distinct++;
        }
    }
    kt_msgs_free(got);
    return tc;
}
