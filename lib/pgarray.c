/*
 * pgarray.c — PostgreSQL array literals written as text ({"a","b",NULL}),
 * for a whole list in one parameter: the consumer's batched claims and
 * finishes, the relay's lease rows. Every element is quoted, so that any
 * text goes through; memory grows as needed, and the first allocation
 * that fails makes every later call a no-op, checked once at the end.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void put(ferry__alit *a, const char *s, size_t len)
{
    if (a->failed)
        return;
    if (a->len + len + 2 > a->cap) {
        size_t cap = a->cap ? a->cap : 256;
        while (a->len + len + 2 > cap)
            cap *= 2;
        char *p = realloc(a->p, cap);
        if (p == NULL) {
            a->failed = 1;
            return;
        }
        a->p = p;
        a->cap = cap;
    }
    memcpy(a->p + a->len, s, len);
    a->len += len;
    a->p[a->len] = '\0';
}

void ferry__alit_elem(ferry__alit *a, const char *s, size_t len)
{
    put(a, a->n++ == 0 ? "{" : ",", 1);
    if (s == NULL) {
        put(a, "NULL", 4);
        return;
    }
    put(a, "\"", 1);
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            put(a, s + from, i - from);
            put(a, "\\", 1);
            from = i;
        }
    }
    put(a, s + from, len - from);
    put(a, "\"", 1);
}

void ferry__alit_str(ferry__alit *a, const char *s)
{
    ferry__alit_elem(a, s, s ? strlen(s) : 0);
}

const char *ferry__alit_end(ferry__alit *a)
{
    put(a, a->n == 0 ? "{}" : "}", a->n == 0 ? 2 : 1);
    return a->failed ? NULL : a->p;
}
