/*
 * tu_wal.c — see tu_wal.h.
 */
#include "tu_wal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "harness/kafkatmp.h"
#include "tu_proc.h"

#include "testutil.h"

/* pgoutput's Message ('M'): flags (1 byte), LSN (8), the prefix as a
 * C string, the content's length (4), the content. With the prefix
 * "ferry" the content starts at byte 21 (1-based). The content is emit's
 * (schemas/011_wal.sql): a header line, then the fields back to back. */
static const char msgs_fn[] =
    "CREATE OR REPLACE FUNCTION public.tu_wal_msgs() RETURNS TABLE ("
    "  ord bigint, lsn pg_lsn, xid xid, token text, id uuid, seq bigint, created_us bigint,"
    "  topic text, key text, aggtype text, type text, headers jsonb, payload jsonb) "
    "LANGUAGE sql AS $$ "
    "WITH c AS (SELECT row_number() OVER () AS ord, c.lsn, c.xid, c.data "
    "             FROM pg_logical_slot_peek_binary_changes('ferry', NULL, NULL, "
    "                  'proto_version', '1', 'publication_names', 'ferry_outbox', "
    "                  'messages', 'true') c), "
    "m AS (SELECT ord, lsn, xid, substring(data FROM 21) AS content FROM c "
    "       WHERE get_byte(data, 0) = 77 "
    "         AND substring(data FROM 11 FOR 6) = '\\x666572727900'::bytea), "
    "h AS (SELECT ord, lsn, xid, content, position('\\x0a'::bytea IN content) AS nl FROM m), "
    "f AS (SELECT ord, lsn, xid, content, nl + 1 AS b, "
    "             string_to_array(convert_from(substring(content FROM 1 FOR nl - 1), 'UTF8'), ' ') a "
    "        FROM h) "
    "SELECT ord, lsn, xid, a[2], a[3]::uuid, a[4]::bigint, a[5]::bigint, "
    "  convert_from(substring(content FROM b FOR a[6]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int FOR a[7]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int FOR a[8]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int "
    "                         FOR a[9]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int + a[9]::int "
    "                         FOR a[10]::int), 'UTF8')::jsonb, "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int + a[9]::int "
    "                         + a[10]::int), 'UTF8')::jsonb "
    "  FROM f ORDER BY ord $$";

void tu_wal_prepare(PGconn *c)
{
    tu_exec(c, "SELECT pg_create_logical_replication_slot('ferry', 'pgoutput') "
               "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'ferry')");
    tu_exec(c, "SELECT pg_replication_slot_advance('ferry', pg_current_wal_lsn())");
    tu_exec(c, msgs_fn);
}

void tu_wal_mode(PGconn *c, const char *mode)
{
    tu_exec_of(c, tu_sprintf("UPDATE ferry.settings SET emit_mode = '%s'", mode));
}

kt_broker *tu_wal_broker;

int tu_wal_group_setup(void **state)
{
    if (tu_group_setup(state) != 0)
        return -1;
    tu_wal_broker = kt_start(1);
    return tu_wal_broker == NULL ? -1 : 0;
}

int tu_wal_group_teardown(void **state)
{
    kt_stop(tu_wal_broker);
    return tu_group_teardown(state);
}

tu_proc tu_wal_relay_start(const char *holder, const char *const *args)
{
    const char *a[48] = {"--outbox-source", "wal", "--set", "log_level=debug"};
    int n = 4;
    for (int i = 0; args != NULL && args[i] != NULL && n < 46; i++)
        a[n++] = args[i];
    a[n] = NULL;
    const char *e[2] = {TU_RELAY_ASAN, NULL};
    return tu_relay_start(kt_bootstrap(tu_wal_broker), holder, a, e);
}

int tu_wal_relay_once(const char *holder, char **log_out)
{
    const char *a[] = {"--once", NULL};
    tu_proc p = tu_wal_relay_start(holder, a);
    return tu_relay_once_end(&p, holder, log_out);
}

void tu_wal_relay_once_says(const char *holder, int status, const char *said, const char *also)
{
    char *log = NULL;
    assert_int_equal(tu_wal_relay_once(holder, &log), status);
    if (strstr(log, said) == NULL || (also != NULL && strstr(log, also) == NULL))
        fail_msg("%s: the log lacks %s%s%s", holder, said, also ? " or " : "", also ? also : "");
    free(log);
}

int tu_wal_slot_cmd(const char *action, char **out, char **err)
{
    const char *argv[] = {tu_relay_bin(), "slot", action, "--db", fpg_conninfo(tu_pg), NULL};
    return tu_run(argv, 60000, out, err);
}

/* n messages over k keys of topic in transactions of per_tx. */
void tu_wal_emit_n(const char *topic, int n, int k, int per_tx)
{
    PGconn *c = tu_connect();
    for (int done = 0; done < n; done += per_tx) {
        char *sql = tu_sprintf("SELECT count(ferry.emit('%s', 'key-' || (g %% %d), 'Tested', "
                               "json_build_object('g', g)::text, "
                               "'{\"traceparent\": \"00-t-s-01\"}')) "
                               "FROM generate_series(%d, %d) g", topic, k, done + 1,
                               done + per_tx < n ? done + per_tx : n);
        tu_exec(c, "BEGIN");
        tu_exec(c, sql);
        tu_exec(c, "COMMIT");
        free(sql);
    }
    PQfinish(c);
}

/* How many messages the topic holds now: the sum over its partitions of
 * high watermark less low; 0 when it cannot be told. */
static size_t topic_size(const char *topic, int timeout_ms)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", kt_bootstrap(tu_wal_broker), errstr,
                          sizeof errstr) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return 0;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return 0;
    }
    size_t total = 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    if (rkt != NULL && rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) ==
                           RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1) {
        for (int p = 0; p < md->topics[0].partition_cnt; p++) {
            int64_t lo = 0, hi = 0;
            if (rd_kafka_query_watermark_offsets(rk, topic, md->topics[0].partitions[p].id, &lo,
                                                 &hi, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
                total += (size_t)(hi - lo);
        }
    }
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    if (rkt != NULL)
        rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return total;
}

/* want 0: everything the topic holds now, by its watermarks — not "what
 * arrives within timeout_ms", which on a loaded machine read 22,230 of a
 * topic's 30,000+ messages in 8 s and looked like a loss. */
tu_wal_topic tu_wal_check_topic(const char *topic, size_t want, int timeout_ms)
{
    if (want == 0)
        want = topic_size(topic, timeout_ms);
    return tu_check_topic(kt_bootstrap(tu_wal_broker), topic, want,
                          want > 0 && timeout_ms < 60000 ? 60000 : timeout_ms);
}

/* The slot there and wal mode on, whatever ran before (FERRY_TEST_FILTER
 * runs one test alone): as `ferry-relay slot create` leaves them. */
void tu_wal_ready(PGconn *c)
{
    if (tu_int(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'") == 0) {
        char *out = NULL;
        assert_int_equal(tu_wal_slot_cmd("create", &out, NULL), 0);
        free(out);
    }
    tu_exec(c, "UPDATE ferry.settings SET emit_mode = 'wal'");
}

PGconn *tu_wal_connect(void)
{
    PGconn *c = tu_connect();
    tu_wal_ready(c);
    return c;
}

char *tu_wal_lsn(PGconn *c)
{
    return tu_str(c, "SELECT pg_current_wal_lsn()::text");
}

