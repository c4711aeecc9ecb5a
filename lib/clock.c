/*
 * clock.c — the monotonic clock and sleeping, for backoff and timeouts
 * (never for synchronisation).
 */
#include <errno.h>
#include <time.h>

#include "internal.h"

void ferry__sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

int64_t ferry__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
