/*
 * devkafka.h — `ferry-relay devkafka`: librdkafka's mock cluster run as a
 * standalone development broker, with a line protocol on stdin that the
 * test suite uses to inject faults (tests/harness/kafkatmp.h drives it).
 */
#ifndef FERRY_RELAY_DEVKAFKA_H
#define FERRY_RELAY_DEVKAFKA_H

/*
 * `ferry-relay devkafka [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...`
 *
 * argv[0] is "devkafka". Prints the bootstrap servers as the first line of
 * stdout, then answers one control command per stdin line with one line,
 * "ok", "ok VALUE" or "error: REASON", until SIGTERM, SIGINT or `quit`.
 * The end of stdin does not stop it. Returns the exit status: 0 after a
 * clean shutdown, 1 if the cluster could not be started, 2 on bad usage.
 */
int cmd_devkafka(int argc, char **argv);

#endif
