/*
 * uuid.c — time-ordered message ids (UUID version 7, RFC 9562).
 *
 * Layout: 48 bits of Unix milliseconds, 4 bits of version, 12 bits of
 * counter (rand_a, used as RFC 9562's "fixed-length dedicated counter",
 * method 1), 2 bits of variant, 62 random bits.
 *
 * Ids made by one thread strictly increase: within a millisecond the
 * counter rises; if it runs out, or the wall clock steps back, the
 * timestamp is carried forward instead of going back. Across threads ids
 * are ordered by millisecond only, which is all a message id needs: the
 * delivery order of a key comes from its position (ferry.outbox.seq), not
 * from ids.
 *
 * The state is per thread and per process: a child of fork() inherits its
 * parent's thread-local state byte for byte, and two children would make
 * the same ids from it. Hence the pid kept with it.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct uuid_state {
    pid_t pid;                  /* whose state this is; 0 before the first id */
    uint64_t last_ms;
    uint32_t counter;           /* 12 bits used */
    uint8_t pool[256];          /* random bytes, refilled in one syscall */
    size_t pool_left;
} uuid_state;

static _Thread_local uuid_state tls;

/* A state made by another process is its parent's (copied by fork()):
 * start afresh, so that no two processes draw the same random bytes or
 * continue the same counter. getpid() each time, not a pthread_atfork
 * handler: it also holds for a child of a raw clone(), and costs a
 * syscall next to the clock read (glibc no longer caches the pid). */
static void own_state(void)
{
    pid_t pid = getpid();
    if (tls.pid != pid) {
        memset(&tls, 0, sizeof tls);
        tls.pid = pid;
    }
}

static ferry_code take_random(uint8_t *out, size_t n)
{
    if (tls.pool_left < n) {
        size_t got = 0;
        while (got < sizeof tls.pool) {
            ssize_t r = getrandom(tls.pool + got, sizeof tls.pool - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                return FERRY_EDB;   /* mapped by the caller */
            }
            got += (size_t)r;
        }
        tls.pool_left = sizeof tls.pool;
    }
    memcpy(out, tls.pool + sizeof tls.pool - tls.pool_left, n);
    tls.pool_left -= n;
    return FERRY_OK;
}

ferry_code ferry_uuid_v7(ferry_uuid *out)
{
    uint8_t rnd[10];
    own_state();
    if (out == NULL || take_random(rnd, sizeof rnd) != FERRY_OK)
        return FERRY_EINVAL;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;

    if (ms > tls.last_ms) {
        tls.last_ms = ms;
        /* Start each millisecond at a random counter in the lower half, so
         * that ids stay unguessable yet leave room to count up. */
        tls.counter = ((uint32_t)rnd[8] << 8 | rnd[9]) & 0x7FF;
    } else if (++tls.counter > 0xFFF) {
        tls.last_ms++;
        tls.counter = 0;
    }
    ms = tls.last_ms;

    uint8_t *b = out->bytes;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | ((tls.counter >> 8) & 0x0F));
    b[7] = (uint8_t)(tls.counter & 0xFF);
    b[8] = (uint8_t)(0x80 | (rnd[0] & 0x3F));
    memcpy(b + 9, rnd + 1, 7);
    return FERRY_OK;
}

uint64_t ferry_uuid_v7_millis(const ferry_uuid *id)
{
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | id->bytes[i];
    return ms;
}

void ferry_uuid_format(const ferry_uuid *id, char out[FERRY_UUID_STRING_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[id->bytes[i] >> 4];
        out[o++] = hex[id->bytes[i] & 0xF];
    }
    out[o] = '\0';
}

ferry_code ferry_uuid_parse(const char *text, ferry_uuid *out)
{
    if (text == NULL || out == NULL || strlen(text) != 36)
        return FERRY_EINVAL;
    ferry_uuid id;
    size_t p = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            if (text[p++] != '-')
                return FERRY_EINVAL;
        }
        int hi = ferry__hex_digit(text[p]), lo = ferry__hex_digit(text[p + 1]);
        if (hi < 0 || lo < 0)
            return FERRY_EINVAL;
        id.bytes[i] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    *out = id;
    return FERRY_OK;
}
