/*
 * readfile.c — reading a file to its end under a size cap, for every file
 * ferry reads whole (saga definitions, rules and config files, the
 * ${file:} references in config values).
 */
#include <errno.h>
#include <unistd.h>

#include "internal.h"

int ferry__read_capped(int fd, char *buf, size_t max, size_t *used)
{
    size_t n = 0;
    /* One byte more than the limit tells a full file from a longer one;
     * read, not fstat, so that pipes are capped as well. */
    while (n <= max) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r == 0)
            break;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *used = n;
            return -1;
        }
        n += (size_t)r;
    }
    *used = n;
    return 0;
}
