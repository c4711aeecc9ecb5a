/*
 * confref.c — `${env:NAME}` and `${file:/path}` in setting values
 * (confref.h says what and why).
 */
#include "confref.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A growing result, capped at CONFREF_VALUE_MAX. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static int put(buf *b, const char *s, size_t n, char *why, size_t whylen)
{
    if (n > CONFREF_VALUE_MAX - b->len) {
        snprintf(why, whylen, "the value would be longer than %d bytes", CONFREF_VALUE_MAX);
        return -1;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static bool valid_env_name(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

/* The file's contents appended to b; the reference text is ref (n bytes)
 * for the messages. One trailing "\n" or "\r\n" is dropped: secret files
 * written by editors, `echo` and Kubernetes often end with one. */
static int put_file(buf *b, const char *path, const char *ref, int n, char *why, size_t whylen)
{
    char ebuf[128];
    if (path[0] != '/') {
        snprintf(why, whylen, "%.*s: the path must be absolute", n, ref);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(why, whylen, "%.*s: could not open the file: %s", n, ref,
                 strerror_r(errno, ebuf, sizeof ebuf));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%.*s: not a regular file", n, ref);
        close(fd);
        return -1;
    }
    char *text = malloc((size_t)CONFREF_FILE_MAX + 1);
    if (!text) {
        close(fd);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    size_t used = 0;
    if (ferry__read_capped(fd, text, CONFREF_FILE_MAX, &used) != 0) {
        snprintf(why, whylen, "%.*s: could not read the file: %s", n, ref,
                 strerror_r(errno, ebuf, sizeof ebuf));
        goto fail;
    }
    if (used > CONFREF_FILE_MAX) {
        snprintf(why, whylen, "%.*s: the file is larger than %d bytes", n, ref, CONFREF_FILE_MAX);
        goto fail;
    }
    if (memchr(text, '\0', used)) {
        snprintf(why, whylen, "%.*s: the file contains a NUL byte", n, ref);
        goto fail;
    }
    if (used > 0 && text[used - 1] == '\n')
        used--;
    if (used > 0 && text[used - 1] == '\r')
        used--;
    int rc = put(b, text, used, why, whylen);
    free(text);
    close(fd);
    return rc;
fail:
    free(text);
    close(fd);
    return -1;
}

/* A reference's argument (what follows its "env:" or "file:", len bytes
 * at arg) into dst as a string; -1, why "REF...: the WHAT is too long",
 * when it does not fit. */
static int ref_arg(const char *arg, size_t len, char *dst, size_t size, const char *ref,
                   const char *what, char *why, size_t whylen)
{
    if (len >= size) {
        snprintf(why, whylen, "%.80s...: the %s is too long", ref, what);
        return -1;
    }
    memcpy(dst, arg, len);
    dst[len] = '\0';
    return 0;
}

/*
 * Where a keyword=value connection string is, as libpq's parser reads it
 * (conninfo_parse): a keyword, then '=' (spaces around it allowed), then a
 * value, unquoted up to a space or in quotes; a backslash escapes the next
 * character inside quotes and out.
 */
typedef enum ci_state {
    CI_START,           /* before a keyword */
    CI_KEY,             /* in a keyword */
    CI_AFTER_KEY,       /* a keyword ended by a space: '=' to come */
    CI_BEFORE_VALUE,    /* after '=', before the value */
    CI_VALUE,           /* in an unquoted value */
    CI_QUOTED,          /* in a quoted value */
} ci_state;

/* The state after the raw text from..to, from state st. */
static ci_state ci_scan(const char *from, const char *to, ci_state st)
{
    for (const char *c = from; c < to; c++) {
        bool space = *c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' || *c == '\f' ||
                     *c == '\v';
        switch (st) {
        case CI_START:
            st = *c == '=' ? CI_BEFORE_VALUE : space ? CI_START : CI_KEY;
            break;
        case CI_KEY:
            st = *c == '=' ? CI_BEFORE_VALUE : space ? CI_AFTER_KEY : CI_KEY;
            break;
        case CI_AFTER_KEY:
            st = *c == '=' ? CI_BEFORE_VALUE : space ? CI_AFTER_KEY : CI_KEY;
            break;
        case CI_BEFORE_VALUE:
            st = space ? CI_BEFORE_VALUE : *c == '\'' ? CI_QUOTED : CI_VALUE;
            if (*c == '\\' && c + 1 < to)
                c++;
            break;
        case CI_VALUE:
            if (*c == '\\' && c + 1 < to)
                c++;
            else if (space)
                st = CI_START;
            break;
        case CI_QUOTED:
            if (*c == '\\' && c + 1 < to)
                c++;
            else if (*c == '\'')
                st = CI_START;
            break;
        }
    }
    return st;
}

/* s (n bytes) into b so that a connection string's parser reads it as
 * part of one value: each space, backslash and quote after a backslash
 * (libpq takes such escapes in quoted and unquoted values alike); empty
 * where a value must start, '' (else the next keyword=value would be
 * taken for the value). */
static int put_escaped(buf *b, const char *s, size_t n, bool starts_value, char *why,
                       size_t whylen)
{
    if (n == 0 && starts_value)
        return put(b, "''", 2, why, whylen);
    for (size_t i = 0; i < n; i++) {
        bool special = s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' ||
                       s[i] == '\f' || s[i] == '\v' || s[i] == '\\' || s[i] == '\'';
        if ((special && put(b, "\\", 1, why, whylen) != 0) || put(b, s + i, 1, why, whylen) != 0)
            return -1;
    }
    return 0;
}

/* s (n bytes) into b percent-encoded but for RFC 3986's unreserved
 * characters: one component of a postgresql:// URI. */
static int put_percent(buf *b, const char *s, size_t n, char *why, size_t whylen)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~';
        char enc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
        if (put(b, plain ? (const char *)s + i : enc, plain ? 1 : 3, why, whylen) != 0)
            return -1;
    }
    return 0;
}

enum { EXPAND_PLAIN, EXPAND_CONNINFO, EXPAND_URI };

static int expand(const char *in, int how, char **out, char *why, size_t whylen);

int confref_expand(const char *in, char **out, char *why, size_t whylen)
{
    return expand(in, EXPAND_PLAIN, out, why, whylen);
}

int confref_expand_conninfo(const char *in, char **out, char *why, size_t whylen)
{
    bool uri = strncmp(in, "postgresql://", 13) == 0 || strncmp(in, "postgres://", 11) == 0;
    return expand(in, uri ? EXPAND_URI : EXPAND_CONNINFO, out, why, whylen);
}

static int expand(const char *in, int how, char **out, char *why, size_t whylen)
{
    buf b = {0};
    int refs = 0;
    const char *p = in;
    ci_state st = CI_START;         /* EXPAND_CONNINFO: where the raw text has got to */
    if (put(&b, "", 0, why, whylen) != 0)
        return -1;
    for (;;) {
        const char *dollar = strchr(p, '$');
        if (!dollar) {
            if (put(&b, p, strlen(p), why, whylen) != 0)
                goto fail;
            break;
        }
        if (put(&b, p, (size_t)(dollar - p), why, whylen) != 0)
            goto fail;
        if (how == EXPAND_CONNINFO)
            st = ci_scan(p, dollar, st);
        if (strncmp(dollar, "$${", 3) == 0) {       /* a literal "${" */
            if (put(&b, "${", 2, why, whylen) != 0)
                goto fail;
            p = dollar + 3;
            if (how == EXPAND_CONNINFO)
                st = ci_scan(dollar, p, st);
            continue;
        }
        if (dollar[1] != '{') {                     /* a lone '$' is itself */
            if (put(&b, "$", 1, why, whylen) != 0)
                goto fail;
            p = dollar + 1;
            if (how == EXPAND_CONNINFO)
                st = ci_scan(dollar, p, st);
            continue;
        }
        const char *close = strchr(dollar, '}');
        const char *body = dollar + 2;
        if (!close) {
            snprintf(why, whylen, "\"%.32s\": a reference without its closing \"}\" "
                     "(write $${ for a literal ${)", dollar);
            goto fail;
        }
        int reflen = (int)(close - dollar + 1);
        if (++refs > CONFREF_MAX) {
            snprintf(why, whylen, "more than %d references in one value", CONFREF_MAX);
            goto fail;
        }
        size_t n = (size_t)(close - body);
        /* What a reference brings into a value of a connection string is
         * escaped (percent-encoded in a URI), so that it stays that value
         * whatever it holds: a password with a space broke the string
         * (and libpq's error quoted a piece of it), and one holding
         * " host=elsewhere" could send the password there. A reference
         * where a keyword goes (the whole string, say) is put in as it
         * is: it is the connection string, not a value in one. */
        bool quote = how == EXPAND_URI ||
                     (how == EXPAND_CONNINFO && (st == CI_BEFORE_VALUE || st == CI_VALUE ||
                                                 st == CI_QUOTED));
        buf v = {0};
        buf *dst = quote ? &v : &b;
        if (n > 4 && strncmp(body, "env:", 4) == 0) {
            if (!valid_env_name(body + 4, n - 4)) {
                snprintf(why, whylen, "%.*s: not a variable name", reflen > 80 ? 80 : reflen,
                         dollar);
                goto fail;
            }
            char name[256];
            if (ref_arg(body + 4, n - 4, name, sizeof name, dollar, "variable name", why,
                        whylen) != 0)
                goto fail;
            const char *value = getenv(name);
            if (!value) {
                snprintf(why, whylen, "%.*s: the variable is not set", reflen, dollar);
                goto fail;
            }
            if (put(dst, value, strlen(value), why, whylen) != 0) {
                free(v.p);
                goto fail;
            }
        } else if (n > 5 && strncmp(body, "file:", 5) == 0) {
            char path[4096];
            if (ref_arg(body + 5, n - 5, path, sizeof path, dollar, "path", why, whylen) != 0)
                goto fail;
            if (put_file(dst, path, dollar, reflen > 300 ? 300 : reflen, why, whylen) != 0) {
                free(v.p);
                goto fail;
            }
        } else {
            snprintf(why, whylen, "%.*s: expected ${env:NAME} or ${file:/path} "
                     "(write $${ for a literal ${)", reflen > 80 ? 80 : reflen, dollar);
            goto fail;
        }
        if (quote) {
            int qrc = how == EXPAND_URI
                          ? put_percent(&b, v.p ? v.p : "", v.len, why, whylen)
                          : put_escaped(&b, v.p ? v.p : "", v.len, st == CI_BEFORE_VALUE, why,
                                        whylen);
            free(v.p);
            if (qrc != 0)
                goto fail;
            if (st == CI_BEFORE_VALUE)
                st = CI_VALUE;
        }
        p = close + 1;
    }
    *out = b.p;
    return 0;
fail:
    free(b.p);
    return -1;
}
