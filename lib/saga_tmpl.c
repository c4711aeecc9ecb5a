/*
 * saga_tmpl.c — payload templates as JSON text (saga_tmpl.h says why):
 * building one, finding a value in a context's JSON text, filling in.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "saga_def_hook.h"
#include "saga_tmpl.h"

/* ------------------------------------------------------------ building */

/* Room for need more elements of size elem in *p (*cap of them). The seam
 * only has malloc, so growing is malloc, copy, free. */
static int grow(void **p, size_t *cap, size_t used, size_t need, size_t elem)
{
    if (need <= *cap - used)
        return 0;
    size_t want = *cap ? *cap : 64;
    while (want - used < need) {
        if (want > SIZE_MAX / 2 / elem)
            return -1;
        want *= 2;
    }
    void *q = ferry__saga_malloc_(want * elem);
    if (q == NULL)
        return -1;
    if (used)
        memcpy(q, *p, used * elem);
    free(*p);
    *p = q;
    *cap = want;
    return 0;
}

int ferry__tmpl_append(ferry__tmpl *t, const char *s, size_t n)
{
    /* + 1: the text always ends in a NUL */
    if (grow((void **)&t->text, &t->cap, t->len, n + 1, 1) != 0)
        return -1;
    memcpy(t->text + t->len, s, n);
    t->len += n;
    t->text[t->len] = '\0';
    return 0;
}

int ferry__tmpl_append_string(ferry__tmpl *t, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (ferry__tmpl_append(t, "\"", 1) != 0)
        return -1;
    size_t run = 0;        /* bytes of s[..i) not yet appended */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t elen = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            if (c >= 0x20) {
                run++;
                continue;
            }
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (ferry__tmpl_append(t, s + i - run, run) != 0 || ferry__tmpl_append(t, esc, elen) != 0)
            return -1;
        run = 0;
    }
    if (ferry__tmpl_append(t, s + n - run, run) != 0)
        return -1;
    return ferry__tmpl_append(t, "\"", 1);
}

int ferry__tmpl_append_ref(ferry__tmpl *t, const char *path, size_t n)
{
    if (grow((void **)&t->refs, &t->refs_cap, t->n_refs, 1, sizeof *t->refs) != 0)
        return -1;
    char *p = ferry__saga_malloc_(n + 1);
    if (p == NULL)
        return -1;
    memcpy(p, path, n);
    p[n] = '\0';
    t->refs[t->n_refs++] = (ferry__tmpl_ref){.at = t->len, .path = p};
    return 0;
}

void ferry__tmpl_free(ferry__tmpl *t)
{
    for (size_t i = 0; i < t->n_refs; i++)
        free(t->refs[i].path);
    free(t->refs);
    free(t->text);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------ finding a value */

/*
 * A scan over JSON text that is valid already (so: no recursion, no
 * checks beyond staying inside the buffer; malformed text ends in "not
 * found", never out of bounds).
 */

static size_t skip_space(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Past the string that starts at s[i] == '"'. */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n;
}

/* Past the value that starts at s[i]. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return n;
    if (s[i] == '"')
        return skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < n) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, n, i);
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return n;
    }
    /* a number, true, false or null */
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

/* Does the string at s[i] == '"', unescaped, equal seg[0..m)? *end past
 * it. Segments are [A-Za-z0-9_-], so an escape that stands for anything
 * beyond ASCII never matches. */
static bool key_is(const char *s, size_t n, size_t i, const char *seg, size_t m, size_t *end)
{
    size_t k = 0;
    bool same = true;
    for (i++; i < n && s[i] != '"'; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            switch (c) {
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                int v = 0;
                for (int d = 1; d <= 4; d++) {
                    int h = i + (size_t)d < n ? ferry__hex_digit(s[i + (size_t)d]) : -1;
                    v = h < 0 || v < 0 ? -1 : v * 16 + h;
                }
                i += i + 4 < n ? 4 : 0;
                c = v > 0 && v < 0x80 ? (char)v : '\0';   /* '\0': in no segment */
                break;
            }
            default:            /* '"', '\\', '/' stand for themselves */
                break;
            }
        }
        if (!same || k >= m || seg[k] != c)
            same = false;
        else
            k++;
    }
    *end = i < n ? i + 1 : n;
    return same && k == m && i < n;
}

/* The value at path (dot-separated keys) in JSON text s: [*vb, *ve). */
static bool find(const char *s, size_t n, const char *path, size_t *vb, size_t *ve)
{
    size_t b = skip_space(s, n, 0), e = skip_value(s, n, b);
    const char *p = path, *end = path + strlen(path);
    while (p < end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t m = dot ? (size_t)(dot - p) : (size_t)(end - p);
        if (b >= n || s[b] != '{')
            return false;
        bool found = false;
        size_t i = skip_space(s, n, b + 1);
        while (i < n && s[i] == '"') {
            size_t after;
            bool match = key_is(s, n, i, p, m, &after);
            i = skip_space(s, n, after);
            if (i >= n || s[i] != ':')
                return false;
            i = skip_space(s, n, i + 1);
            size_t v_end = skip_value(s, n, i);
            if (match) {        /* the last one counts, as in jsonb */
                found = true;
                b = i;
                e = v_end;
            }
            i = skip_space(s, n, v_end);
            if (i >= n || s[i] != ',')
                break;
            i = skip_space(s, n, i + 1);
        }
        if (!found)
            return false;
        p += m + (dot ? 1 : 0);
    }
    *vb = b;
    *ve = e;
    return b < e;
}

/* ------------------------------------------------------------ filling in */

static const char ref_head[] = "\"${context.", ref_tail[] = "}\"";

/* The text that goes in for ref r: a span of ctx, or the reference
 * itself (ctx NULL). */
static bool value_of(const ferry__tmpl_ref *r, const char *ctx, size_t ctx_len,
                     const char **v, size_t *vlen)
{
    if (ctx == NULL) {
        *v = r->path;
        *vlen = sizeof ref_head - 1 + strlen(r->path) + sizeof ref_tail - 1;
        return true;
    }
    size_t b, e;
    if (!find(ctx, ctx_len, r->path, &b, &e))
        return false;
    *v = ctx + b;
    *vlen = e - b;
    return true;
}

int ferry__tmpl_render(const ferry__tmpl *t, const char *ctx, size_t ctx_len, char **out,
                      const char **missing)
{
    *missing = NULL;
    size_t total = t->len;
    for (size_t i = 0; i < t->n_refs; i++) {
        const char *v;
        size_t vlen;
        if (!value_of(&t->refs[i], ctx, ctx_len, &v, &vlen)) {
            *missing = t->refs[i].path;
            return -1;
        }
        if (vlen > SIZE_MAX - 1 - total)
            return -1;
        total += vlen;
    }
    char *buf = malloc(total + 1), *w = buf;
    if (buf == NULL)
        return -1;
    size_t from = 0;
    for (size_t i = 0; i < t->n_refs; i++) {
        const ferry__tmpl_ref *r = &t->refs[i];
        const char *v;
        size_t vlen;
        value_of(r, ctx, ctx_len, &v, &vlen);   /* found above */
        memcpy(w, t->text + from, r->at - from);
        w += r->at - from;
        from = r->at;
        if (ctx == NULL) {
            size_t plen = strlen(r->path);
            memcpy(w, ref_head, sizeof ref_head - 1);
            memcpy(w + sizeof ref_head - 1, r->path, plen);
            memcpy(w + sizeof ref_head - 1 + plen, ref_tail, sizeof ref_tail - 1);
        } else {
            memcpy(w, v, vlen);
        }
        w += vlen;
    }
    memcpy(w, t->text + from, t->len - from);
    w += t->len - from;
    *w = '\0';
    *out = buf;
    return 0;
}
