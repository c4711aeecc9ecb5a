/*
 * status.h — `ferry-relay status`: what the outbox, the shard leases and
 * the dead letters look like right now, for an operator or a script.
 */
#ifndef FERRY_RELAY_STATUS_H
#define FERRY_RELAY_STATUS_H

/*
 * `ferry-relay status [--db CONNINFO] [--json]` (argv[0] is "status"; the
 * database defaults to $FERRY_DB).
 *
 * Per shard 0..settings.shard_count-1 (and any shard found in the outbox
 * beyond that): unpublished rows, rows ready now, the age of the oldest
 * unpublished row, and the shard's lease (free, held or expired; holder,
 * epoch, expiry), all by the database clock. Then the dead letters: the
 * count per consumer ('' is the relay) and the 10 oldest. An aligned
 * table on stdout, or with --json one JSON object.
 *
 * Returns the exit status: 0; 1 if the database cannot be reached or read
 * or has no ferry schema; 2 on bad usage. Messages go to stderr.
 */
int cmd_status(int argc, char **argv);

#endif
