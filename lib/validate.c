/*
 * validate.c — the client-side checks of a message.
 *
 * These run before anything is sent, so that a refused message leaves the
 * caller's transaction usable (a server-side refusal would abort it). The
 * server repeats the same checks in ferry.emit_with_id() for the SQL path
 * and as a backstop; the limits are the FERRY_*_MAX constants of ferry.h
 * and the literals of schemas/001_ferry.sql, and tests/test_emit.c runs
 * every bad input through both paths to keep them in step.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "internal.h"

_Static_assert(FERRY_TOPIC_MAX == 249, "Kafka's topic name limit");
_Static_assert(FERRY_KEY_MAX < 2000, "keys must fit a btree index entry");

bool ferry__topic_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool ferry__topic_valid(const char *s, size_t n)
{
    if (n == 0 || n > FERRY_TOPIC_MAX || (n == 1 && s[0] == '.') ||
        (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!ferry__topic_char_ok(s[i]))
            return false;
    return true;
}

static ferry_code check_topic(const char *topic, ferry_error *err)
{
    if (topic == NULL || topic[0] == '\0')
        return ferry__error_set(err, FERRY_EINVAL, "topic", "topic must not be empty");
    size_t len = strlen(topic);
    if (len > FERRY_TOPIC_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "topic",
                             "topic is %zu bytes, longer than %d", len, FERRY_TOPIC_MAX);
    for (size_t i = 0; i < len; i++) {
        if (!ferry__topic_char_ok(topic[i]))
            return ferry__error_set(err, FERRY_EINVAL, "topic",
                                 "topic \"%.64s\" is not a valid Kafka topic name "
                                 "(letters, digits, \".\", \"_\", \"-\"): bad byte at %zu",
                                 topic, i);
    }
    if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
        return ferry__error_set(err, FERRY_EINVAL, "topic",
                             "topic \"%s\" is not a valid Kafka topic name", topic);
    return FERRY_OK;
}

/* How far to look for the NUL of a string given without a length: one
 * byte past max, to tell "too long" from "exactly max"; no further than
 * SIZE_MAX, where max + 1 would wrap to 0 (max_payload = SIZE_MAX, "no
 * limit", then measured every payload as empty). */
static size_t nul_scan_limit(size_t len, size_t max)
{
    if (len != 0)
        return len;
    return max < SIZE_MAX ? max + 1 : SIZE_MAX;
}

/* A text field: given length (0 = strlen), no NUL inside, valid UTF-8,
 * within max bytes; empty refused when required. */
static ferry_code check_text(const char *field, const char *what, const char *s,
                             size_t len, size_t max, bool required, ferry_error *err)
{
    if (s == NULL) {
        if (required)
            return ferry__error_set(err, FERRY_EINVAL, field, "%s must not be empty", what);
        return FERRY_OK;
    }
    size_t slen = strnlen(s, nul_scan_limit(len, max));
    if (len == 0)
        len = slen;
    else if (slen < len)
        return ferry__error_set(err, FERRY_EINVAL, field,
                             "%s contains a NUL byte at offset %zu", what, slen);
    if (len == 0 && required)
        return ferry__error_set(err, FERRY_EINVAL, field, "%s must not be empty", what);
    if (len > max)
        return ferry__error_set(err, FERRY_EINVAL, field, "%s is longer than %zu bytes",
                             what, max);
    size_t bad;
    if (!ferry__utf8_valid(s, len, &bad))
        return ferry__error_set(err, FERRY_EINVAL, field,
                             "%s is not valid UTF-8 (bad byte at offset %zu)", what, bad);
    return FERRY_OK;
}

/* ------------------------------------------------------------ JSON as jsonb takes it */

/*
 * The payload is checked against what PostgreSQL's jsonb input takes
 * (PostgreSQL 15's jsonapi.c lexer and numeric.c's numeric_in), not
 * against jansson's reading: jansson refused numbers jsonb stores (1e400)
 * and took ones it refuses (1e-16384, 0e1073741823, 16,384 digits after
 * the point), and a server-side refusal aborts the caller's transaction.
 * tests/test_emit.c (payload_check_agrees_with_jsonb) runs a table of
 * tricky inputs through both, PostgreSQL deciding.
 *
 * numeric's limits (numeric.c): an exponent of at least INT_MAX / 2 in
 * absolute value is refused outright; the display scale (digits after
 * the point, trailing zeros included, less the exponent) is at most
 * NUMERIC_DSCALE_MAX, 16383; the weight of the first non-zero digit in
 * base 10,000 fits an int16, i.e. its decimal exponent is below 131072.
 *
 * Depth is the one place where ferry refuses more than jsonb: jsonb's
 * limit is the server's stack, ours a constant (jansson's, as before).
 */
#define JSON_DEPTH_MAX 2048
#define NUMERIC_EXPONENT_LIMIT 1073741823L   /* INT_MAX / 2 */
#define NUMERIC_DSCALE_MAX 16383
#define NUMERIC_DECIMAL_WEIGHT_MAX 131071    /* 4 * (PG_INT16_MAX + 1) - 1 */
_Static_assert(NUMERIC_EXPONENT_LIMIT == INT_MAX / 2, "numeric.c's exponent bound");

typedef struct jscan {
    const unsigned char *s;
    size_t n, i;
    const char *why;              /* the fault, static text */
    size_t at;                    /* where */
    bool number;                  /* why is about the number at at */
    size_t canon;                 /* bytes of jsonb's canonical text so far */
} jscan;

/* canon saturates rather than wraps: a number's canonical text can be
 * 16,000 times its written length ("1e131071"), and only "over the limit"
 * matters. */
static void jcanon(jscan *j, size_t add)
{
    j->canon = add > SIZE_MAX / 2 - j->canon ? SIZE_MAX / 2 : j->canon + add;
}

static bool jfault(jscan *j, size_t at, const char *why)
{
    j->why = why;
    j->at = at;
    return false;
}

static bool jdigit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* What PostgreSQL's lexer reads as part of a word or number. */
static bool jalnum(unsigned char c)
{
    return jdigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           c >= 0x80;
}

static void jspace(jscan *j)
{
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' ||
                           j->s[j->i] == '\r'))
        j->i++;
}

/* Four hex digits at i into *cp. */
static bool jhex4(const jscan *j, size_t i, unsigned *cp)
{
    *cp = 0;
    if (j->n - i < 4)
        return false;
    for (size_t k = 0; k < 4; k++) {
        int h = ferry__hex_digit(j->s[i + k]);
        if (h < 0)
            return false;
        *cp = *cp << 4 | (unsigned)h;
    }
    return true;
}

/* Bytes of code point cp in jsonb's text: jsonb stores a string decoded
 * (escapes resolved, in a UTF-8 database as UTF-8) and prints it through
 * escape_json(): '"', '\\' and \b \f \n \r \t as two-byte escapes, other
 * control characters as \u00XX, the rest as UTF-8. */
static size_t jcp_canon(unsigned cp)
{
    if (cp == '"' || cp == '\\' || cp == '\b' || cp == '\f' || cp == '\n' || cp == '\r' ||
        cp == '\t')
        return 2;
    if (cp < 0x20)
        return 6;
    return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

static bool jstring(jscan *j)
{
    size_t start = j->i++;
    jcanon(j, 2);                                   /* the quotes */
    while (j->i < j->n) {
        unsigned char c = j->s[j->i];
        if (c == '"') {
            j->i++;
            return true;
        }
        if (c < 0x20)
            return jfault(j, j->i, "a control character in a string must be escaped");
        if (c >= 0x80) {
            size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            if (len > j->n - j->i || !ferry__utf8_valid((const char *)j->s + j->i, len, NULL))
                return jfault(j, j->i, "not valid UTF-8");
            j->i += len;
            jcanon(j, len);
            continue;
        }
        if (c != '\\') {
            j->i++;
            jcanon(j, 1);
            continue;
        }
        size_t esc = j->i++;
        if (j->i >= j->n)
            break;
        c = j->s[j->i];
        if (strchr("\"\\/bfnrt", c) != NULL && c != '\0') {
            j->i++;
            jcanon(j, c == '/' ? 1 : 2);          /* "\/" is printed "/" */
            continue;
        }
        unsigned cp, lo;
        if (c != 'u' || !jhex4(j, j->i + 1, &cp))
            return jfault(j, esc, "an invalid escape sequence");
        j->i += 5;
        if (cp == 0)
            return jfault(j, esc, "\\u0000, which jsonb cannot store");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return jfault(j, esc, "a Unicode low surrogate without a high one");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (j->n - j->i < 2 || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u' ||
                !jhex4(j, j->i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return jfault(j, esc, "a Unicode high surrogate not followed by a low one");
            j->i += 6;
            cp = 0x10000;                           /* a pair is one 4-byte character */
        }
        jcanon(j, jcp_canon(cp));
    }
    return jfault(j, start, "an unterminated string");
}

/* Bytes of numeric_out()'s text for a number (jsonb stores numbers as
 * numeric): a '-' unless zero, the digits before the point or "0", and
 * the display scale's digits after a '.', where the scale is the digits
 * written after the point less the exponent (numeric_in: "1.50" keeps
 * two, "1.5e3" is "1500", "15e-4" is "0.0015", "-0.0" is "0.0"). */
static void jnumber_canon(jscan *j, bool negative, size_t before, size_t frac_len, long exp)
{
    int64_t scale = (int64_t)frac_len - exp;
    size_t n = (negative ? 1 : 0) + (before > 0 ? before : 1);
    if (scale > 0)
        n += 1 + (size_t)scale;
    jcanon(j, n);
}

/* A number by JSON's grammar, within numeric's limits. */
static bool jnumber(jscan *j)
{
    const unsigned char *s = j->s;
    size_t start = j->i, i = j->i, n = j->n;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n || !jdigit(s[i]))
        return jfault(j, start, "an invalid number");
    size_t int_at = i;
    if (s[i] == '0')
        i++;
    else
        while (i < n && jdigit(s[i]))
            i++;
    size_t int_len = i - int_at, frac_at = i, frac_len = 0;
    if (i < n && s[i] == '.') {
        frac_at = ++i;
        while (i < n && jdigit(s[i]))
            i++;
        frac_len = i - frac_at;
        if (frac_len == 0)
            return jfault(j, start, "an invalid number");
    }
    long exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool neg = i < n && s[i] == '-';
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        if (i >= n || !jdigit(s[i]))
            return jfault(j, start, "an invalid number");
        for (; i < n && jdigit(s[i]); i++)
            if (exp < NUMERIC_EXPONENT_LIMIT)   /* saturates: no overflow */
                exp = exp * 10 + (s[i] - '0');
        if (neg)
            exp = -exp;
    }
    if (i < n && jalnum(s[i]))
        return jfault(j, start, "an invalid number");
    j->i = i;
    j->number = true;
    if (exp >= NUMERIC_EXPONENT_LIMIT || exp <= -NUMERIC_EXPONENT_LIMIT)
        return jfault(j, start, "an exponent of 1073741823 or more in absolute value");
    if ((int64_t)frac_len - exp > NUMERIC_DSCALE_MAX)
        return jfault(j, start, "more than 16383 digits after the decimal point");
    /* The decimal exponent of the first non-zero digit. */
    size_t k = 0;
    while (k < int_len && s[int_at + k] == '0')
        k++;
    if (k == int_len) {
        size_t f = 0;
        while (f < frac_len && s[frac_at + f] == '0')
            f++;
        if (f == frac_len) {
            j->number = false;
            jnumber_canon(j, false, 0, frac_len, exp);   /* zero */
            return true;
        }
        k += f;
    }
    if ((int64_t)int_len - 1 - (int64_t)k + exp > NUMERIC_DECIMAL_WEIGHT_MAX)
        return jfault(j, start, "more than 131072 digits before the decimal point");
    j->number = false;
    /* digits before the point as numeric prints them: from the first
     * non-zero digit (k into int and frac digits) to where the exponent
     * puts the point */
    int64_t before = (int64_t)int_len + exp - (int64_t)k;
    jnumber_canon(j, s[start] == '-', before > 0 ? (size_t)before : 0, frac_len, exp);
    return true;
}

static bool jword(jscan *j)
{
    size_t start = j->i;
    while (j->i < j->n && jalnum(j->s[j->i]))
        j->i++;
    size_t len = j->i - start;
    const char *w = (const char *)j->s + start;
    if ((len == 4 && memcmp(w, "true", 4) == 0) || (len == 5 && memcmp(w, "false", 5) == 0) ||
        (len == 4 && memcmp(w, "null", 4) == 0)) {
        jcanon(j, len);
        return true;
    }
    return jfault(j, start, "an invalid token");
}

/* A key and its ':' (after a '{' or a ','). */
static bool jkey(jscan *j)
{
    jspace(j);
    if (j->i >= j->n || j->s[j->i] != '"')
        return jfault(j, j->i, "expected a string as the key");
    if (!jstring(j))
        return false;
    jspace(j);
    if (j->i >= j->n || j->s[j->i] != ':')
        return jfault(j, j->i, "expected ':' after the key");
    j->i++;
    jcanon(j, 2);                                   /* ": " */
    return true;
}

/* One JSON text: a value, whitespace around it, nothing else. No
 * recursion: the open containers are a stack of JSON_DEPTH_MAX. */
static bool json_check(jscan *j)
{
    char open[JSON_DEPTH_MAX];
    size_t depth = 0;
    for (;;) {
        /* a value */
        jspace(j);
        if (j->i >= j->n)
            return jfault(j, j->i, "the input ends where a value was expected");
        unsigned char c = j->s[j->i];
        if (c == '{' || c == '[') {
            if (depth == JSON_DEPTH_MAX)
                return jfault(j, j->i, "nested more than 2048 levels deep");
            open[depth++] = (char)c;
            j->i++;
            jcanon(j, 1);
            jspace(j);
            char close = c == '{' ? '}' : ']';
            if (j->i < j->n && j->s[j->i] == close) {
                depth--;
                j->i++;
                jcanon(j, 1);
            } else {
                if (c == '{' && !jkey(j))
                    return false;
                continue;
            }
        } else if (c == '"') {
            if (!jstring(j))
                return false;
        } else if (c == '-' || jdigit(c)) {
            if (!jnumber(j))
                return false;
        } else if (jalnum(c)) {
            if (!jword(j))
                return false;
        } else {
            return jfault(j, j->i, "an unexpected character");
        }
        /* after a value: close what ends here, or go on after a ',' */
        for (;;) {
            jspace(j);
            if (depth == 0) {
                if (j->i != j->n)
                    return jfault(j, j->i, "more after the end of the value");
                return true;
            }
            if (j->i >= j->n)
                return jfault(j, j->i, "the input ends inside an array or object");
            char top = open[depth - 1];
            c = j->s[j->i];
            if ((top == '[' && c == ']') || (top == '{' && c == '}')) {
                depth--;
                j->i++;
                jcanon(j, 1);
                continue;
            }
            if (c != ',')
                return jfault(j, j->i, top == '[' ? "expected ',' or ']'"
                                                  : "expected ',' or '}'");
            j->i++;
            jcanon(j, 2);                           /* ", " */
            if (top == '{' && !jkey(j))
                return false;
            break;
        }
    }
}

static ferry_code check_payload(const char *payload, size_t len, size_t max,
                                ferry_error *err)
{
    if (payload == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "payload",
                             "payload must not be NULL (use the JSON text \"null\")");
    size_t slen = strnlen(payload, nul_scan_limit(len, max));
    if (len == 0)
        len = slen;
    else if (slen < len)
        return ferry__error_set(err, FERRY_EINVAL, "payload",
                             "payload contains a NUL byte at offset %zu", slen);
    if (len > max)
        return ferry__error_set(err, FERRY_EINVAL, "payload",
                             "payload is over the limit of %zu bytes", max);
    jscan j = {.s = (const unsigned char *)payload, .n = len};
    if (json_check(&j)) {
        /* The server checks both: the text as sent and what the relay will
         * publish, jsonb's canonical text, which can be longer ("[1,2]" is
         * "[1, 2]", "1e5" is "100000"). Checking only the first here let a
         * payload through that the server then refused, aborting the
         * caller's transaction. */
        if (j.canon > max)
            return ferry__error_set(err, FERRY_EINVAL, "payload",
                                 "payload is over the limit of %zu bytes as it will be "
                                 "published: %zu%s bytes of canonical JSON", max, j.canon,
                                 j.canon == SIZE_MAX / 2 ? " or more" : "");
        return FERRY_OK;
    }
    int line = 1, column = 1;
    for (size_t i = 0; i < j.at; i++) {
        if (j.s[i] == '\n') {
            line++;
            column = 1;
        } else if ((j.s[i] & 0xC0) != 0x80) {
            column++;
        }
    }
    if (j.number) {
        size_t nlen = j.i - j.at;
        return ferry__error_set(err, FERRY_EINVAL, "payload",
                             "payload has a number PostgreSQL's numeric cannot hold (%s) at "
                             "line %d, column %d: \"%.*s%s\"", j.why, line, column,
                             (int)(nlen > 40 ? 40 : nlen), payload + j.at,
                             nlen > 40 ? "..." : "");
    }
    return ferry__error_set(err, FERRY_EINVAL, "payload",
                         "payload is not valid JSON: %s at line %d, column %d", j.why, line,
                         column);
}

bool ferry__json_canonical_len(const char *text, size_t len, size_t *out)
{
    jscan j = {.s = (const unsigned char *)text, .n = len};
    if (!json_check(&j))
        return false;
    *out = j.canon;
    return true;
}

/*
 * FOLD, as the server has it for header names (ferry.emit_with_id): the
 * characters that lower() or a consumer's case-insensitive compare may
 * take for ASCII letters become those letters -- U+0130 and U+0131 "i",
 * U+212A (Kelvin) "k", U+017F (long s) "s", the ligatures U+FB00..U+FB06
 * their letters -- then A-Z become a-z. Nothing else, and no locale:
 * the client must refuse exactly the names the server refuses, or a name
 * it lets through aborts the caller's transaction there.
 *
 * Only the first size - 1 bytes of the fold are written (NUL-terminated);
 * *whole says whether that was all of it.
 */
static void header_name_fold(const char *name, char *out, size_t size, bool *whole)
{
    static const struct {
        const char *from, *to;
    } special[] = {
        {"\xc4\xb0", "i"}, {"\xc4\xb1", "i"},             /* U+0130, U+0131 */
        {"\xe2\x84\xaa", "k"},                           /* U+212A */
        {"\xc5\xbf", "s"},                                /* U+017F */
        {"\xef\xac\x80", "ff"}, {"\xef\xac\x81", "fi"},   /* U+FB00.. */
        {"\xef\xac\x82", "fl"}, {"\xef\xac\x83", "ffi"},
        {"\xef\xac\x84", "ffl"}, {"\xef\xac\x85", "st"},
        {"\xef\xac\x86", "st"},                          /* ..U+FB06 */
    };
    size_t o = 0;
    *whole = true;
    for (const char *p = name; *p != '\0';) {
        const char *to = NULL;
        size_t from_len = 1;
        for (size_t k = 0; k < sizeof special / sizeof special[0]; k++) {
            size_t n = strlen(special[k].from);
            if (strncmp(p, special[k].from, n) == 0) {
                to = special[k].to;
                from_len = n;
                break;
            }
        }
        char one[2] = {*p >= 'A' && *p <= 'Z' ? (char)(*p - 'A' + 'a') : *p, '\0'};
        if (to == NULL)
            to = one;
        for (; *to != '\0'; to++) {
            if (o + 1 >= size) {
                *whole = false;
                out[o] = '\0';
                return;
            }
            out[o++] = *to;
        }
        p += from_len;
    }
    out[o] = '\0';
}

/* The empty name, and names whose FOLD starts "ferry_" or is one of the
 * CloudEvents attributes the relay sets (schema 30 made it any ASCII
 * case: a consumer reading names without regard to case would take
 * FERRY_ID for the relay's ferry_id). */
static bool header_name_reserved(const char *name)
{
    static const char *const ce[] = {"ce_specversion", "ce_id", "ce_type",
                                     "ce_source", "ce_time"};
    if (name[0] == '\0')
        return true;
    char folded[16];
    _Static_assert(sizeof "ce_specversion" < sizeof folded, "room for the longest name");
    bool whole;
    header_name_fold(name, folded, sizeof folded, &whole);
    if (strncmp(folded, "ferry_", 6) == 0)
        return true;
    for (size_t i = 0; whole && i < sizeof ce / sizeof ce[0]; i++)
        if (strcmp(folded, ce[i]) == 0)
            return true;
    return false;
}

static ferry_code check_headers(const char *headers, ferry_error *err)
{
    if (headers == NULL)
        return FERRY_OK;
    size_t len = strnlen(headers, FERRY_HEADERS_MAX + 1);
    if (len > FERRY_HEADERS_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "headers",
                             "headers are longer than %d bytes", FERRY_HEADERS_MAX);
    json_error_t jerr;
    json_t *doc = json_loadb(headers, len, JSON_DECODE_ANY, &jerr);
    if (doc == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "headers",
                             "headers are not valid JSON: %s at line %d, column %d",
                             jerr.text, jerr.line, jerr.column);
    ferry_code rc = FERRY_OK;
    if (!json_is_object(doc)) {
        rc = ferry__error_set(err, FERRY_EINVAL, "headers",
                           "headers must be a JSON object of strings");
        goto out;
    }
    const char *name;
    json_t *value;
    json_object_foreach(doc, name, value) {
        if (!json_is_string(value)) {
            rc = ferry__error_set(err, FERRY_EINVAL, "headers",
                               "header \"%.64s\" is not a string", name);
            goto out;
        }
        if (header_name_reserved(name)) {
            rc = ferry__error_set(err, FERRY_EINVAL, "headers",
                               "header name \"%.64s\" is empty or reserved for the relay",
                               name);
            goto out;
        }
    }
out:
    json_decref(doc);
    return rc;
}

ferry_code ferry_msg_check(const ferry_msg *msg, const ferry_emit_opts *opts,
                           ferry_error *err)
{
    if (msg == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "msg", "message is NULL");
    size_t max_payload = opts && opts->max_payload ? opts->max_payload
                                                   : FERRY_DEFAULT_MAX_PAYLOAD;
    ferry_code rc;
    if ((rc = check_topic(msg->topic, err)) != FERRY_OK ||
        (rc = check_text("key", "key", msg->key, msg->key_len, FERRY_KEY_MAX, true,
                         err)) != FERRY_OK ||
        (rc = check_text("type", "type", msg->type, 0, FERRY_TYPE_MAX, true,
                         err)) != FERRY_OK ||
        (rc = check_text("aggregatetype", "aggregate type", msg->aggregate_type, 0,
                         FERRY_TYPE_MAX, false, err)) != FERRY_OK ||
        (rc = check_payload(msg->payload, msg->payload_len, max_payload,
                            err)) != FERRY_OK ||
        (rc = check_headers(msg->headers, err)) != FERRY_OK)
        return rc;
    if (msg->delay_ms < 0 || msg->delay_ms > FERRY_DELAY_MAX_MS)
        return ferry__error_set(err, FERRY_EINVAL, "delay_ms",
                             "delay must be between 0 and one year in milliseconds");
    return FERRY_OK;
}

int ferry__hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ferry__int_parse ferry__parse_long(const char *text, long min, long max, long *out)
{
    const char *p = text[0] == '-' ? text + 1 : text;
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || p[digits] != '\0' || (p[0] == '0' && digits > 1))
        return FERRY_INT_SYNTAX;
    long v = 0;
    for (size_t i = 0; i < digits; i++) {
        int d = p[i] - '0';
        if (v > (LONG_MAX - d) / 10)
            return FERRY_INT_RANGE;
        v = v * 10 + d;
    }
    if (p != text)
        v = -v;
    if (v < min || v > max)
        return FERRY_INT_RANGE;
    *out = v;
    return FERRY_INT_OK;
}
