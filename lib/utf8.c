/*
 * utf8.c — UTF-8 validation, and the escaping of what is not UTF-8 or is
 * a control character in every message that quotes input. Nothing here
 * allocates.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

bool ferry__utf8_valid(const char *s, size_t len, size_t *bad_at)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII eight bytes at a time: most of a JSON payload. */
        while (len - i >= 8) {
            uint64_t word;
            memcpy(&word, p + i, 8);
            if (word & UINT64_C(0x8080808080808080))
                break;
            i += 8;
        }
        if (i >= len)
            break;
        unsigned c = p[i];
        size_t n;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1; min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2; min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3; min = 0x10000;
        } else {
            goto bad;
        }
        if (len - i <= n)
            goto bad;
        unsigned cp = c & (0x3F >> n);
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        i += n + 1;
    }
    return true;
bad:
    if (bad_at != NULL)
        *bad_at = i;
    return false;
}

size_t ferry__escape_text(char *dst, size_t size, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)src;
    size_t used = 0, i = 0;
    if (size == 0)
        return 0;
    while (p[i] != '\0') {
        unsigned c = p[i];
        size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        bool ok = true;
        for (size_t k = 1; k < n && ok; k++)
            ok = p[i + k] != '\0';
        ok = ok && (n == 1 || ferry__utf8_valid(src + i, n, NULL));
        /* C0 controls, DEL, C1 controls (U+0080..U+009F), and bytes that
         * are no UTF-8 character: each byte as \xNN. */
        bool escape = !ok || c < 0x20 || c == 0x7f || (c == 0xC2 && p[i + 1] <= 0x9F);
        if (!ok)
            n = 1;
        size_t need = escape ? 4 * n : n;
        if (used + need >= size)
            break;                    /* never half a character or escape */
        for (size_t k = 0; k < n; k++) {
            if (escape) {
                dst[used++] = '\\';
                dst[used++] = 'x';
                dst[used++] = hex[p[i + k] >> 4];
                dst[used++] = hex[p[i + k] & 0xF];
            } else {
                dst[used++] = (char)p[i + k];
            }
        }
        i += n;
    }
    dst[used] = '\0';
    return used;
}
