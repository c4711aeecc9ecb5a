/*
 * fuzz_emit.c — emit validation (lib/validate.c: ferry_msg_check, what
 * ferry_emit and ferry_emit_batch run before touching the connection) on
 * hostile messages.
 *
 * The input is one flag byte, then the fields split at 0xff bytes (a byte
 * that never occurs in UTF-8, so every valid text can still be written):
 *
 *   FLAGS topic 0xff key 0xff type 0xff aggregate_type 0xff payload 0xff
 *   headers 0xff delay_ms
 *
 * FLAGS: bit 0 passes payload_len 0 (read up to a NUL) instead of its
 * length; bit 1 passes key_len 0 likewise; bit 2 leaves aggregate_type
 * NULL; bit 3 leaves headers NULL; bit 4 sets max_payload to 64 bytes.
 * Missing fields are empty; delay_ms is decimal text.
 *
 * The promise: a message the client accepts is one PostgreSQL accepts
 * too, so that a refusal never happens on the server, where it would abort
 * the caller's transaction (ferry.h, ferry_emit). Checked here against
 * PostgreSQL's rules for what reaches it: text without NUL in valid UTF-8,
 * the length limits of schemas/001_ferry.sql, a topic Kafka accepts, and
 * for payload numbers the limits of jsonb's numeric (numeric_in and
 * make_result in PostgreSQL's numeric.c): an exponent within +-(INT_MAX/2),
 * at most 16383 digits after the point, a weight that fits an int16 in
 * base 10000. A refusal must name one of the fields.
 */
#include "fuzz.h"

#include <limits.h>

#define FIELDS 7

static bool text_ok(const char *s, size_t n, size_t max, bool required)
{
    if (s == NULL)
        return !required;
    if (memchr(s, '\0', n) || n > max || (required && n == 0))
        return false;
    return fuzz_utf8_ok((const unsigned char *)s, n);
}

static bool topic_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return false;
    return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/*
 * Would PostgreSQL's numeric_in take the JSON number at s[0..n)? s is a
 * number token as JSON spells it: -?int(.frac)?([eE][+-]?exp)?.
 */
static bool pg_numeric_ok(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    /* de: the decimal exponent of the first nonzero digit, if any. */
    bool nonzero = false;
    long long de = 0, frac_digits = 0;
    size_t int_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    for (size_t k = int_start; k < i && !nonzero; k++)
        if (s[k] != '0')
            nonzero = true, de = (long long)(i - k) - 1;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            frac_digits++;
            if (!nonzero && s[i] != '0')
                nonzero = true, de = -frac_digits;
            i++;
        }
    }
    long long exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool neg = false;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            neg = s[i++] == '-';
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (exp < (1LL << 40))
                exp = exp * 10 + (s[i] - '0');
            i++;
        }
        if (neg)
            exp = -exp;
    }
    if (exp >= INT_MAX / 2 || exp <= -(INT_MAX / 2))
        return false;
    long long dscale = frac_digits - exp;
    if (dscale < 0)
        dscale = 0;
    if (dscale > 0x3FFF)              /* NUMERIC_DSCALE_MAX */
        return false;
    if (nonzero) {
        de += exp;
        long long w = de >= 0 ? de / 4 : -((-de + 3) / 4);   /* floor(de / 4) */
        if (w > 32767 || w < -32768)
            return false;
    }
    return true;
}

/* Every number in a JSON text that jansson accepted, outside strings. */
static const char *bad_number(const char *json, size_t n, size_t *at)
{
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        char c = json[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t end = i;
            while (end < n && json[end] != '\0' && strchr("+-.eE0123456789", json[end]))
                end++;
            if (!pg_numeric_ok(json + i, end - i)) {
                *at = i;
                return json + i;
            }
            i = end - 1;
        }
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    data++, size--;

    /* Split at 0xff; each field a heap copy of its own exact length. */
    char *f[FIELDS];
    size_t len[FIELDS];
    size_t start = 0, k = 0;
    for (size_t i = 0; i <= size && k < FIELDS; i++) {
        if (i == size || (data[i] == 0xff && k < FIELDS - 1)) {
            len[k] = i - start;
            f[k] = fuzz_strndup(data + start, len[k]);
            k++;
            start = i + 1;
        }
    }
    for (; k < FIELDS; k++) {
        len[k] = 0;
        f[k] = fuzz_strndup(data, 0);
    }

    ferry_msg msg = {
        .topic = f[0],
        .key = f[1],
        .key_len = flags & 2 ? 0 : len[1],
        .type = f[2],
        .aggregate_type = flags & 4 ? NULL : f[3],
        .payload = f[4],
        .payload_len = flags & 1 ? 0 : len[4],
        .headers = flags & 8 ? NULL : f[5],
        .delay_ms = strtoll(f[6], NULL, 10),
    };
    ferry_emit_opts opts = {.max_payload = flags & 16 ? 64 : 0};
    ferry_error err;
    memset(&err, 0x5a, sizeof err);
    ferry_code rc = ferry_msg_check(&msg, &opts, &err);
    FUZZ_CHECK(rc == FERRY_OK || rc == FERRY_EINVAL, "returned %s", ferry_code_name(rc));

    /* What reaches the server is the text up to the NUL in the
     * length-less modes: judge that. */
    size_t key_n = msg.key_len ? msg.key_len : strlen(msg.key);
    size_t payload_n = msg.payload_len ? msg.payload_len : strlen(msg.payload);
    if (rc == FERRY_EINVAL) {
        FUZZ_CHECK(fuzz_terminated(err.field, sizeof err.field) &&
                   fuzz_terminated(err.message, sizeof err.message), "error unterminated");
        static const char *const names[] = {"topic", "key", "type", "aggregatetype",
                                            "payload", "headers", "delay_ms"};
        bool known = false;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            known = known || strcmp(err.field, names[i]) == 0;
        FUZZ_CHECK(known, "refused with field \"%s\": %s", err.field, err.message);
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
        /* A message quotes hostile bytes escaped (issue 12 item 11). */
        FUZZ_CHECK(!fuzz_has_control(err.message) && fuzz_utf8_ok((const unsigned char *)
                   err.message, strlen(err.message)),
                   "message quotes control or invalid bytes: %s", err.message);
    } else {
        FUZZ_CHECK(topic_ok(msg.topic), "accepted topic \"%s\"", msg.topic);
        FUZZ_CHECK(text_ok(msg.key, key_n, FERRY_KEY_MAX, true), "accepted a bad key");
        FUZZ_CHECK(text_ok(msg.type, strlen(msg.type), FERRY_TYPE_MAX, true),
                   "accepted a bad type");
        FUZZ_CHECK(msg.aggregate_type == NULL ||
                   text_ok(msg.aggregate_type, strlen(msg.aggregate_type), FERRY_TYPE_MAX,
                           false), "accepted a bad aggregate type");
        FUZZ_CHECK(fuzz_utf8_ok((const unsigned char *)msg.payload, payload_n) &&
                   !memchr(msg.payload, '\0', payload_n), "accepted a payload PostgreSQL "
                   "cannot store as text");
        FUZZ_CHECK(payload_n <= (opts.max_payload ? opts.max_payload
                                                  : FERRY_DEFAULT_MAX_PAYLOAD),
                   "accepted %zu payload bytes", payload_n);
        FUZZ_CHECK(msg.headers == NULL || strlen(msg.headers) <= FERRY_HEADERS_MAX,
                   "accepted long headers");
        FUZZ_CHECK(msg.delay_ms >= 0 && msg.delay_ms <= FERRY_DELAY_MAX_MS,
                   "accepted delay %lld", (long long)msg.delay_ms);
        /* No number jsonb's numeric refuses (issue 12 item 5). */
        size_t at;
        const char *bad = bad_number(msg.payload, payload_n, &at);
        FUZZ_CHECK(bad == NULL, "accepted a number PostgreSQL refuses at offset %zu: %.40s",
                   at, bad);
    }

    for (k = 0; k < FIELDS; k++)
        free(f[k]);
    return 0;
}
