/*
 * relay.h — the relay proper: move the outbox to Kafka.
 */
#ifndef FERRY_RELAY_RELAY_H
#define FERRY_RELAY_RELAY_H

#include "config.h"
#include "metrics.h"

/* Ask a running relay_run() to stop: stop fetching, wait for what is in
 * flight, acknowledge it, release the leases, return. Async-signal-safe. */
void relay_request_stop(void);

/*
 * Run the relay with cfg until relay_request_stop() (or, with cfg->once,
 * until everything ready at start is published). m may be NULL. Returns
 * the exit status: 0 when everything it produced was delivered and
 * acknowledged, 1 otherwise or on a startup error (written to the log).
 */
int relay_run(const relay_config *cfg, relay_metrics *m);

/* `ferry-relay run ...`: config, signals, metrics endpoint, relay_run. */
int cmd_run(int argc, char **argv);

#endif
