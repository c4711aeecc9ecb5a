/*
 * fuzz_relay_config.c — ferry-relay's config file (daemon/config.c:
 * relay_config_load with --config) on hostile YAML.
 *
 * relay_config_load reads a file by name, so the input goes into a memfd
 * and the loader opens it as /proc/self/fd/N: the same path as a real
 * config file, with no change to the loader and nothing on disk.
 *
 * Promises checked besides the sanitizers: 0 with every setting in its
 * range, db and kafka set, max_inflight >= batch_size, bootstrap.servers
 * (or its alias metadata.broker.list) never among the pass-through
 * properties; or -1 with a message and *cfg zeroed (config.h).
 */
#include "fuzz.h"
#include "../../daemon/config.h"

#include <sys/mman.h>
#include <unistd.h>

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Only the file may set anything. */
    unsetenv("FERRY_CONFIG");
    for (size_t i = 0; i < relay_config_setting_count(); i++)
        unsetenv(relay_config_setting_env(i));
    fd = memfd_create("fuzz-relay-config", MFD_CLOEXEC);
    if (fd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return 0;
}

static bool is_zero(const relay_config *c)
{
    static const relay_config zero;
    return memcmp(c, &zero, sizeof zero) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();

    char *argv[] = {"run", "--config", path, NULL};
    relay_config cfg;
    memset(&cfg, 0xa5, sizeof cfg);            /* "previous contents are ignored" */
    char err[512];
    int rc = relay_config_load(&cfg, 3, argv, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "returned %d", rc);
    FUZZ_CHECK(fuzz_terminated(err, sizeof err), "errbuf unterminated");

    if (rc != 0) {
        FUZZ_CHECK(err[0] != '\0', "failure without a message");
        FUZZ_CHECK(is_zero(&cfg), "cfg not zeroed on failure");
        /* A message quotes hostile bytes escaped (issue 12 item 11). The
         * file's errors come one a line: a newline is only a separator,
         * between two non-empty lines. */
        char lines[sizeof err];
        strcpy(lines, err);
        for (char *nl = strchr(lines, '\n'); nl; nl = strchr(nl + 1, '\n')) {
            FUZZ_CHECK(nl > lines && nl[1] != '\0' && nl[1] != '\n',
                       "an empty error line: %s", err);
            *nl = ' ';
        }
        FUZZ_CHECK(!fuzz_has_control(lines) && fuzz_utf8_ok((const unsigned char *)lines,
                                                             strlen(lines)),
                   "message quotes a control character or invalid UTF-8: %s", err);
    } else {
        FUZZ_CHECK(cfg.db && cfg.db[0] && cfg.kafka && cfg.kafka[0], "db or kafka unset");
        FUZZ_CHECK(cfg.batch_size >= 1 && cfg.batch_size <= 100000, "batch_size %d",
                   cfg.batch_size);
        FUZZ_CHECK(cfg.max_inflight >= cfg.batch_size && cfg.max_inflight <= 1000000,
                   "max_inflight %d", cfg.max_inflight);
        FUZZ_CHECK(cfg.poll_interval_ms >= 10 && cfg.poll_interval_ms <= 3600000,
                   "poll_interval_ms %d", cfg.poll_interval_ms);
        FUZZ_CHECK(cfg.lease_ttl_ms >= 1000 && cfg.lease_ttl_ms <= 3600000, "lease_ttl_ms %d",
                   cfg.lease_ttl_ms);
        FUZZ_CHECK(cfg.max_attempts >= 1 && cfg.max_attempts <= 1000, "max_attempts %d",
                   cfg.max_attempts);
        FUZZ_CHECK(cfg.log_level >= 0 && cfg.log_level <= 3, "log_level %d", cfg.log_level);
        FUZZ_CHECK(cfg.retention == RELAY_RETENTION_DELETE ||
                   cfg.retention == RELAY_RETENTION_MARK, "retention %d", (int)cfg.retention);
        FUZZ_CHECK(cfg.kafka_props_count <= RELAY_KAFKA_PROPS_MAX, "%zu kafka properties",
                   cfg.kafka_props_count);
        for (size_t i = 0; i < cfg.kafka_props_count; i++) {
            const relay_kv *kv = &cfg.kafka_props[i];
            FUZZ_CHECK(kv->name && kv->name[0] && kv->value, "kafka property %zu", i);
            FUZZ_CHECK(strcmp(kv->name, "bootstrap.servers") != 0 &&
                       strcmp(kv->name, "metadata.broker.list") != 0,
                       "%s passed through", kv->name);
            for (size_t j = 0; j < i; j++)
                FUZZ_CHECK(strcmp(cfg.kafka_props[j].name, kv->name) != 0,
                           "kafka property %s twice", kv->name);
        }
    }
    relay_config_free(&cfg);
    return 0;
}
