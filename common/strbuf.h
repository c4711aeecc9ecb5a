/*
 * strbuf.h — a growable string for rendering text (the relay's /metrics
 * and the librdkafka statistics it turns into metrics), and formatted
 * strings of their own (sb_format). The first failed
 * allocation sets failed and every later append is a no-op, so callers
 * check once at the end. Start with {0} or a malloc'd p and its cap.
 */
#ifndef FERRY_STRBUF_H
#define FERRY_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

__attribute__((format(printf, 2, 3)))
void sb_printf(strbuf *b, const char *fmt, ...);

/* fmt and its arguments as a new string (the caller frees it); NULL when
 * out of memory. For a piece of text kept on its own (a table cell, a
 * report's finding) rather than appended. */
__attribute__((format(printf, 1, 2)))
char *sb_format(const char *fmt, ...);
__attribute__((format(printf, 1, 0)))
char *sb_vformat(const char *fmt, va_list ap);

#endif
