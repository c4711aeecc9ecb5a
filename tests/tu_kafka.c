/* tu_kafka.c — see tu_kafka.h. */
#include "tu_kafka.h"

#include <stdio.h>

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

rd_kafka_t *tu_producer_new(const char *bootstrap, const char *const *props)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK)
        goto out_conf;
    for (size_t i = 0; props != NULL && props[i] != NULL; i += 2)
        if (rd_kafka_conf_set(conf, props[i], props[i + 1], errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK)
            goto out_conf;
    /* rd_kafka_new takes the conf only when it succeeds. */
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        fprintf(stderr, "producer: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
out_conf:
    fprintf(stderr, "producer conf: %s\n", errstr);
    rd_kafka_conf_destroy(conf);
    return NULL;
}

void tu_producer_destroy(rd_kafka_t *producer)
{
    if (producer == NULL)
        return;
    rd_kafka_flush(producer, 10000);
    rd_kafka_destroy(producer);
}
