/* tu_kafka.c — see tu_kafka.h. */
#include "tu_kafka.h"

#include <stdio.h>
#include <string.h>

#include "testutil.h"

int tu_broker_group_setup(void **state, kt_broker **broker)
{
    if (tu_group_setup(state) != 0)
        return -1;
    *broker = kt_start(1);
    return *broker == NULL ? -1 : 0;
}

int tu_broker_group_teardown(void **state, kt_broker *broker)
{
    kt_stop(broker);
    return tu_group_teardown(state);
}

/* Set the (name, value) pairs of props, ended by a NULL name: 0, or -1
 * with the reason on stderr. */
static int conf_set_all(rd_kafka_conf_t *conf, const char *const *props)
{
    char errstr[512];
    for (size_t i = 0; props != NULL && props[i] != NULL; i += 2)
        if (rd_kafka_conf_set(conf, props[i], props[i + 1], errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
            fprintf(stderr, "producer conf: %s\n", errstr);
            return -1;
        }
    return 0;
}

rd_kafka_t *tu_producer_new(const char *bootstrap, const char *const *props)
{
    const char *const base[] = {"bootstrap.servers", bootstrap, "enable.idempotence", "true",
                                NULL};
    char errstr[512] = "";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    /* rd_kafka_new takes the conf only when it succeeds. */
    if (conf_set_all(conf, base) != 0 || conf_set_all(conf, props) != 0 ||
        (rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr)) == NULL) {
        if (errstr[0] != '\0')
            fprintf(stderr, "producer: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

void tu_producer_destroy(rd_kafka_t *producer)
{
    if (producer == NULL)
        return;
    rd_kafka_flush(producer, 10000);
    rd_kafka_destroy(producer);
}

void tu_produce_one(rd_kafka_t *producer, const char *topic, const char *key, const void *value,
                    size_t len, rd_kafka_headers_t *h)
{
    rd_kafka_resp_err_t e = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);    /* producev takes them only on success */
        fail_msg("produce: %s", rd_kafka_err2str(e));
    }
}
