/*
 * strbuf.h — a growable string for rendering text (the relay's /metrics
 * and the librdkafka statistics it turns into metrics). The first failed
 * allocation sets failed and every later append is a no-op, so callers
 * check once at the end. Start with {0} or a malloc'd p and its cap.
 */
#ifndef FERRY_STRBUF_H
#define FERRY_STRBUF_H

#include <stddef.h>

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

__attribute__((format(printf, 2, 3)))
void sb_printf(strbuf *b, const char *fmt, ...);

#endif
