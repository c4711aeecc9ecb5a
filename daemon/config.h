/*
 * config.h — ferry-relay's settings: defaults, then the YAML file, then
 * the environment, then command-line flags, each overriding the last.
 */
#ifndef FERRY_RELAY_CONFIG_H
#define FERRY_RELAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct option;

typedef enum relay_retention {
    RELAY_RETENTION_DELETE = 0,   /* acknowledged rows are deleted */
    RELAY_RETENTION_MARK          /* acknowledged rows get published_at */
} relay_retention;

/* Where the relay reads the outbox from (README, "Two sources"). */
typedef enum relay_outbox_source {
    RELAY_SOURCE_TABLE = 0,       /* poll ferry.outbox */
    RELAY_SOURCE_WAL              /* stream the logical slot (relay_wal.c) */
} relay_outbox_source;

/* One librdkafka property, passed through as is. */
typedef struct relay_kv {
    char *name;
    char *value;
    char *place;        /* where it was set, for errors: "FILE:LINE:COLUMN: kafka:
                           NAME", "FERRY_KAFKA_PROP_X", "--kafka-prop NAME=VALUE" */
} relay_kv;

#define RELAY_KAFKA_PROPS_MAX 128
/* A holder's bytes at most: its session is named "ferry-relay HOLDER"
 * (application_name), which PostgreSQL cuts at 63 bytes, and a live
 * relay is found by that name: two longer names alike in their first 51
 * bytes would be one relay to it. */
#define RELAY_HOLDER_MAX 51
#define RELAY_HOLDER_MAX_TEXT "51"
#define RELAY_PLACE_MAX 512     /* relay_kv.place, at most */ 

/* Kafka properties the per-key order rests on, each with the only value
 * the relay accepts (daemon/relay_kafka.c says why each): the kafka: map
 * may not change them. One list, for the check at load time (config.c)
 * and for the producer (relay_kafka.c). */
#define RELAY_FIXED_KAFKA_PROPS(X)            \
    X("enable.idempotence", "true")           \
    X("enable.gapless.guarantee", "true")     \
    X("acks", "all")                          \
    X("message.timeout.ms", "0")

/* The relay's own defaults, set before the kafka: map, which may change
 * any of them (daemon/relay_kafka.c says why each). Besides these, two
 * follow from other settings: queue.buffering.max.messages (max_inflight
 * + 1000) and message.max.bytes (the database's payload limit plus
 * key, headers and record overhead). The README's table is checked
 * against both lists (tests/test_config.c). */
#define RELAY_DEFAULT_KAFKA_PROPS(X)          \
    X("client.id", "ferry-relay")             \
    X("linger.ms", "0")                       \
    X("socket.nagle.disable", "true")         \
    X("reconnect.backoff.ms", "50")           \
    X("reconnect.backoff.max.ms", "1000")     \
    X("statistics.interval.ms", "15000")
#define RELAY_DERIVED_KAFKA_PROPS(X) \
    X("queue.buffering.max.messages") X("message.max.bytes")

/* The partitioners that keep a key on one partition, by their librdkafka
 * names (rd_kafka_msg_partitioner_NAME); the first is the default. */
#define RELAY_KEYED_PARTITIONERS(X) \
    X(murmur2_random) X(murmur2) X(consistent_random) X(consistent) X(fnv1a_random) X(fnv1a)

typedef struct relay_config {
    char *db;                 /* libpq conninfo (--db, FERRY_DB, db:) */
    char *kafka;              /* bootstrap servers (--kafka, FERRY_KAFKA,
                                 kafka: bootstrap.servers); "embedded" starts
                                 librdkafka's mock cluster in process */
    char *metrics;            /* HOST:PORT for /metrics and /healthz, or NULL */
    char *holder;             /* this relay's name in leases; NULL = host:pid */
    char *source;             /* CloudEvents ce_source, a URI-reference
                                 (--set source=, FERRY_SOURCE, source:);
                                 NULL: the relay derives
                                 ferry://HOST/DBNAME from its connection */
    int once;                 /* --once */
    int batch_size;           /* rows per fetch; default 1000, 1..100000 */
    int max_inflight;         /* produced, not yet acknowledged; default
                                 20000, batch_size..1000000 */
    int poll_interval_ms;     /* backstop poll when no NOTIFY; default 1000,
                                 10..3600000 */
    int lease_ttl_ms;         /* default 10000, 1000..3600000 */
    int max_attempts;         /* failed deliveries before a dead letter;
                                 default 5, 1..1000 */
    int stuck_ms;             /* a partition or key waiting this long is
                                 stuck; default 5000, 100..3600000 */
    int stop_grace_ms;        /* SIGTERM waits at most this for deliveries;
                                 default 20000, 0..3600000 */
    int log_level;            /* 0 error, 1 warn, 2 info (default), 3 debug */
    relay_retention retention;
    relay_outbox_source outbox_source;  /* --source, outbox_source: */
    relay_kv kafka_props[RELAY_KAFKA_PROPS_MAX];  /* the kafka: map */
    size_t kafka_props_count;
} relay_config;

/*
 * Fill cfg for `ferry-relay run`: defaults; the file named by --config (or
 * FERRY_CONFIG), if any; the environment; then the flags in argv (argv[0]
 * is the command name), in the order given. Every setting (db, kafka,
 * metrics, holder, source, the numbers, log_level, retention) has a file
 * key NAME, a variable FERRY_NAME and a flag --name (dashes for
 * underscores), and --set NAME=VALUE; librdkafka properties come from
 * the file's kafka: map, FERRY_KAFKA_PROP_<NAME> and --kafka-prop
 * NAME=VALUE (repeatable; bootstrap.servers sets cfg->kafka). Any value
 * may hold ${env:NAME} and ${file:/path} references (confref.h). Not
 * thread-safe: it uses getopt_long.
 *
 * Returns 1 (cfg zeroed, nothing else read) when argv has --help or -h:
 * print relay_config_usage() then. Returns 0, or -1 with a message in errbuf that names the place: the
 * file, line and column and the key for a bad file; the variable for a
 * bad environment value; the flag for a bad flag. Validates every limit
 * and that db and kafka are set. *cfg's previous contents are ignored, not
 * freed; on failure *cfg is zeroed (relay_config_free is then a no-op).
 */
int relay_config_load(relay_config *cfg, int argc, char **argv, char *errbuf, size_t errlen);

/* The options, every setting with its default and range, and the
 * environment, generated from the tables the parser uses. */
void relay_config_usage(FILE *out);
/* The getopt table relay_config_load parses, NULL-terminated (for tests). */
const struct option *relay_config_options(void);
/* The settings: count, and the i-th's name (the file's key and the --set
 * name), variable and flag (NULL past the end). */
size_t relay_config_setting_count(void);
const char *relay_config_setting_name(size_t i);
const char *relay_config_setting_env(size_t i);
const char *relay_config_setting_flag(size_t i);
/* The file's keys, the i-th (NULL past the end), and whether a key is a
 * setting of the list above (or the kafka: map): for the test that keeps
 * a key from being settable in the file alone. */
const char *relay_config_file_key(size_t i);
bool relay_config_file_key_is_setting(const char *key);

/* For `migrate` and `status`, which need the database alone: the file at
 * path (named by FERRY_CONFIG when path_from_env), checked as `run` checks
 * it, and its db: into *db (new, the caller frees; NULL when the file has
 * none). Returns 0, or -1 with the place in errbuf. */
int relay_config_file_db(const char *path, int path_from_env, char **db, char *errbuf,
                         size_t errlen);

/* The database of `migrate`, `status` and `slot`, found as `run` finds
 * it: the --db flag (flag_db), else FERRY_DB, else db: in the --config
 * file (config, or FERRY_CONFIG's). Into *db (new, the caller frees): 0;
 * or -1 after saying why on stderr as "ferry-relay CMD: ...". */
int relay_config_subcommand_db(const char *cmd, const char *flag_db, const char *config,
                               char **db);

/* Why s is not an RFC 3986 URI-reference of at most RELAY_SOURCE_MAX
 * bytes (CloudEvents requires one for ce_source), or NULL when it is. */
enum { RELAY_SOURCE_MAX = 1024 };
const char *relay_source_problem(const char *s);

/* Free what relay_config_load allocated; accepts a zeroed cfg. */
void relay_config_free(relay_config *cfg);

#endif
