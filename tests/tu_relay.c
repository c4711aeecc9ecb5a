/* tu_relay.c — see tu_relay.h. */
#include "tu_relay.h"

#include <pthread.h>
#include <stdio.h>
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

tu_topic_check tu_assert_topic(const char *bootstrap, const char *topic, size_t want,
                               int timeout_ms, size_t distinct)
{
    tu_topic_check tc = tu_check_topic(bootstrap, topic, want, timeout_ms);
    if (tc.distinct != distinct)
        fail_msg("%s: %zu distinct messages, want %zu", topic, tc.distinct, distinct);
    return tc;
}

typedef struct hot_writer {
    const char *topic;
    int id, rounds;
    pthread_t thread;
    ferry_code rc;
    ferry_error err;
} hot_writer;

struct tu_hot_writers {
    int count;
    hot_writer w[];
};

static ferry_code hot_writer_fn(PGconn *conn, void *arg, ferry_error *err)
{
    hot_writer *w = arg;
    char payload[64], keys[3][16];
    ferry_msg m[3];
    snprintf(payload, sizeof payload, "{\"writer\": %d}", w->id);
    for (int i = 0; i < 3; i++) {
        snprintf(keys[i], sizeof keys[i], "key-%d", (w->id + i) % 5);
        m[i] = (ferry_msg){.topic = w->topic, .key = keys[i], .type = "Tested",
                           .payload = payload};
    }
    return ferry_emit_batch(conn, m, 3, NULL, NULL, err);
}

/* A thread: no cmocka calls here; the result is checked at the join. */
static void *hot_writer_main(void *arg)
{
    hot_writer *w = arg;
    PGconn *c = fpg_connect(tu_pg);
    for (int i = 0; i < w->rounds && w->rc == FERRY_OK; i++)
        w->rc = ferry_tx_run(c, NULL, hot_writer_fn, w, NULL, &w->err);
    PQfinish(c);
    return NULL;
}

tu_hot_writers *tu_hot_writers_start(const char *topic, int writers, int rounds)
{
    tu_hot_writers *hw = calloc(1, sizeof *hw + (size_t)writers * sizeof hw->w[0]);
    assert_non_null(hw);
    hw->count = writers;
    for (int i = 0; i < writers; i++) {
        hw->w[i] = (hot_writer){.topic = topic, .id = i, .rounds = rounds};
        assert_int_equal(pthread_create(&hw->w[i].thread, NULL, hot_writer_main, &hw->w[i]), 0);
    }
    return hw;
}

void tu_hot_writers_join(tu_hot_writers *hw)
{
    for (int i = 0; i < hw->count; i++)
        pthread_join(hw->w[i].thread, NULL);
    for (int i = 0; i < hw->count; i++) {
        if (hw->w[i].rc != FERRY_OK) {
            ferry_error err = hw->w[i].err;
            ferry_code rc = hw->w[i].rc;
            free(hw);
            assert_ferry_ok(rc, err);
        }
    }
    free(hw);
}

void tu_emit_poison(PGconn *conn, const char *topic, const char *key, const char *healthy)
{
    tu_exec(conn, "BEGIN");
    tu_exec_of(conn, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', "
                                "json_build_object('big', repeat('x', 200000))::text)",
                                topic, key));
    tu_exec_of(conn, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', '{\"after\": 1}')",
                                topic, key));
    if (healthy != NULL)
        tu_exec_of(conn, tu_sprintf("SELECT ferry.emit('%s', '%s', 'Tested', '{\"ok\": 1}')",
                                    topic, healthy));
    tu_exec(conn, "COMMIT");
}
