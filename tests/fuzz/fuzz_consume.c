/*
 * fuzz_consume.c — the consumer's intake of a Kafka message
 * (lib/consume_intake.h: ferry__consume_intake, what ferry_consumer_poll() makes
 * of a message before any transaction) on hostile messages: "anything the
 * consumer reads from Kafka is hostile" (issue 12).
 *
 * The input is one flag byte, then fields split at 0xff; inside a field
 * 0xff 0xff stands for one 0xff byte, so any bytes can be written:
 *
 *   FLAGS key 0xff payload (0xff header-name 0xff header-value)*
 *
 * FLAGS: bit 0 gives the message no key (NULL) and bit 1 no payload (a
 * tombstone); bit 2 sets the payload limit to 64 bytes; bit 3 passes no
 * header list at all; bit 4 adds an empty header value as NULL (a header
 * without a value); bits 5-7 pick the topic, partition and offset. A name
 * without a value gets an empty one. At most HEADERS_MAX headers.
 *
 * The message is built on the stack, its headers with rd_kafka_headers_new
 * and rd_kafka_header_add: no broker, no database. What must hold, besides
 * no crash, leak or undefined behaviour, is judged against this file's own
 * reading of the headers (rd_kafka_header_get_last's: the last occurrence
 * of a name wins):
 *
 *   - the verdict is one of: poison (dead-lettered at once, with a
 *     reason), a discard marker, or a message to claim whose payload is
 *     parsed JSON within the limit;
 *   - a reason is text a terminal and PostgreSQL both take: valid UTF-8,
 *     no control character (C0, DEL, C1), shorter than its buffer;
 *   - a position is accepted only when ferry_seq is strictly decimal
 *     (digits, no sign, space or leading zero) in 1 .. 2^63-2, and then it
 *     is that number; a ferry_seq that is not one makes the message poison;
 *   - every name the message is held or dead-lettered under (key, type,
 *     aggregate type, position text, id) is text PostgreSQL can hold, and a
 *     key, type or aggregate type that was not is poison;
 *   - the id is a canonical UUID, the same on a second reading (a
 *     redelivery must be recognised);
 *   - payload_is_text is the truth about the payload when it matters (a
 *     dead letter or a hold stores it as text only then);
 *   - ferry_message_header() returns the last value PostgreSQL text can
 *     hold, or NULL.
 */
#include "fuzz.h"

#include <inttypes.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "consume_intake.h"

#define HEADERS_MAX 16
#define FIELDS (2 + 2 * HEADERS_MAX)

typedef struct field {
    char *p;                /* heap, exactly len bytes (plus a NUL ASan ignores) */
    size_t len;
} field;

/* UTF-8 that PostgreSQL text can hold: valid, no NUL. */
static bool text_ok(const char *s, size_t n)
{
    return memchr(s, '\0', n) == NULL && fuzz_utf8_ok((const unsigned char *)s, n);
}

/* Anything a terminal may act on: C0 (tab and newline included), DEL, C1. */
static bool any_control(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    for (; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
            return true;
    return false;
}

static bool uuid_canonical(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdef", s[i]) || s[i] == '\0')
            return false;
    }
    return true;
}

typedef struct hdr {
    const char *name;       /* as rd_kafka_header_get_all gives it: up to a NUL */
    bool whole;             /* the name has no NUL: get_last's lookups can find it */
    const char *value;      /* NULL: a header without a value */
    size_t len;
} hdr;

/* The last header called name as rd_kafka_header_get_last finds it (it
 * compares the name's length too), or NULL. */
static const hdr *last(const hdr *h, size_t n, const char *name)
{
    for (size_t i = n; i-- > 0;)
        if (h[i].whole && strcmp(h[i].name, name) == 0)
            return &h[i];
    return NULL;
}

/* Whether some header called name has a value PostgreSQL text can hold:
 * what the header map the claim is sent has (a discard marker's test). */
static bool any_text(const hdr *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].whole && strcmp(h[i].name, name) == 0 && h[i].value != NULL &&
            text_ok(h[i].value, h[i].len))
            return true;
    return false;
}

/* The value as consume.c reads a short header: "" when absent, without a
 * value, with a NUL, or max bytes or longer. */
static void short_value(const hdr *h, size_t max, char *out)
{
    out[0] = '\0';
    if (h != NULL && h->value != NULL && h->len < max && !memchr(h->value, '\0', h->len)) {
        memcpy(out, h->value, h->len);
        out[h->len] = '\0';
    }
}

/* Strictly decimal, 1 .. 2^63-2, written independently of position_parse. */
static bool position_ok(const hdr *h, int64_t *out)
{
    if (h == NULL || h->value == NULL || h->len == 0 || h->len > 19 || h->value[0] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < h->len; i++) {
        if (h->value[i] < '0' || h->value[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(h->value[i] - '0');     /* 19 digits fit a uint64 */
    }
    if (v > (uint64_t)INT64_MAX - 1)
        return false;
    *out = (int64_t)v;
    return true;
}

/* A name read from a header (type, aggregate type): what the intake must
 * make of its bytes. */
static void check_name(const char *what, const char *got, const char *raw, bool poison)
{
    FUZZ_CHECK(strlen(got) <= FERRY_TYPE_MAX, "%s of %zu bytes", what, strlen(got));
    FUZZ_CHECK(text_ok(got, strlen(got)), "%s kept as text PostgreSQL refuses", what);
    if (text_ok(raw, strlen(raw)))
        FUZZ_CHECK(strcmp(got, raw) == 0, "%s changed on the way", what);
    else
        FUZZ_CHECK(poison, "%s is not UTF-8, and the message is not poison", what);
}

static size_t split(const uint8_t *data, size_t size, field *f)
{
    size_t k = 0;
    uint8_t *buf = malloc(size + 1);
    if (!buf)
        abort();
    size_t n = 0;
    for (size_t i = 0; i <= size && k < FIELDS; i++) {
        if (i < size && data[i] == 0xff && i + 1 < size && data[i + 1] == 0xff) {
            buf[n++] = 0xff;
            i++;
        } else if (i == size || data[i] == 0xff) {
            f[k].p = fuzz_strndup(buf, n);
            f[k].len = n;
            k++;
            n = 0;
        } else {
            buf[n++] = data[i];
        }
    }
    free(buf);
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    field f[FIELDS];
    size_t nf = split(data + 1, size - 1, f);

    static const char *const topics[] = {"orders", "a.b-c_d"};
    const char *topic = topics[(flags >> 5) & 1];
    size_t max_payload = flags & 4 ? 64 : FERRY_DEFAULT_MAX_PAYLOAD;

    hdr h[HEADERS_MAX];
    size_t nh = 0;
    rd_kafka_headers_t *hs = flags & 8 ? NULL : rd_kafka_headers_new(4);
    for (size_t i = 2; i < nf && nh < HEADERS_MAX; i += 2) {
        const field *v = i + 1 < nf ? &f[i + 1] : NULL;
        h[nh].name = f[i].p;
        h[nh].whole = strlen(f[i].p) == f[i].len;
        h[nh].value = v && (v->len || !(flags & 16)) ? v->p : NULL;
        h[nh].len = h[nh].value ? v->len : 0;
        if (hs) {
            rd_kafka_resp_err_t e = rd_kafka_header_add(hs, f[i].p, (ssize_t)f[i].len,
                                                        h[nh].value, (ssize_t)h[nh].len);
            FUZZ_CHECK(e == RD_KAFKA_RESP_ERR_NO_ERROR, "rd_kafka_header_add: %d", e);
        }
        nh++;
    }
    if (!hs)
        nh = 0;

    const field *key = nf > 0 ? &f[0] : NULL;
    const field *payload = nf > 1 ? &f[1] : NULL;
    rd_kafka_message_t rkm;
    memset(&rkm, 0, sizeof rkm);
    rkm.partition = (int32_t)(flags >> 6);
    rkm.offset = flags & 128 ? INT64_MAX : (int64_t)flags * 1000003;
    if (!(flags & 1) && key) {
        rkm.key = key->p;
        rkm.key_len = key->len;
    }
    if (!(flags & 2) && payload) {
        rkm.payload = payload->p;
        rkm.len = payload->len;
    }

    consume_work w, again;
    memset(&w, 0x5a, sizeof w);                 /* whatever it held is overwritten */
    ferry__consume_intake(&w, &rkm, topic, hs, max_payload);
    const ferry_message *m = &w.msg;
    bool poison = w.poison[0] != '\0';

    /* The verdict. */
    FUZZ_CHECK(fuzz_terminated(w.poison, sizeof w.poison), "reason unterminated");
    FUZZ_CHECK(m->payload != NULL, "no payload value, not even null");
    if (poison) {
        FUZZ_CHECK(fuzz_utf8_ok((const unsigned char *)w.poison, strlen(w.poison)) &&
                   !any_control(w.poison),
                   "reason is not plain text: %s", w.poison);
    } else {
        FUZZ_CHECK(!w.unholdable, "unholdable, but not poison");
        if (!w.marker) {
            FUZZ_CHECK(w.payload != NULL, "to be claimed, but the payload is not JSON");
            FUZZ_CHECK(m->payload_len <= max_payload, "a payload over the limit to be claimed");
        }
    }
    FUZZ_CHECK(w.marker == any_text(h, nh, "ferry_discarded"), "marker %d", w.marker);
    FUZZ_CHECK(!w.from_held && w.rkm == &rkm && m->internal_ == &w, "not read from Kafka");

    /* What was read as it was. */
    FUZZ_CHECK(m->topic == topic && m->partition == rkm.partition &&
               m->offset == rkm.offset && m->attempt == 0, "coordinates changed");
    if (rkm.payload) {
        /* A copy with a NUL after it (ferry.h: strings are NUL-terminated),
         * or, without the memory for one, poison. */
        FUZZ_CHECK(m->payload_len == rkm.len &&
                   memcmp(m->payload_text, rkm.payload, rkm.len) == 0 &&
                   (rkm.len > max_payload || m->payload_text[rkm.len] == '\0' ||
                    w.poison[0] != '\0'),
                   "payload not the message's, or not NUL-terminated");
    } else {
        FUZZ_CHECK(m->payload_len == 4 && memcmp(m->payload_text, "null", 4) == 0,
                   "a tombstone is not null");
    }
    bool ptext = text_ok(m->payload_text, m->payload_len);
    if (!w.payload_is_text)
        FUZZ_CHECK(!ptext, "payload taken for binary, but it is text");
    if (w.payload_is_text && (poison || w.marker))
        FUZZ_CHECK(ptext, "payload to be stored as text, but it is not: the dead letter or "
                          "hold fails on it");

    /* The key. */
    FUZZ_CHECK(m->key != NULL && m->key_len == strlen(m->key), "key_len %zu", m->key_len);
    FUZZ_CHECK(text_ok(m->key, m->key_len), "key kept as text PostgreSQL refuses");
    if (rkm.key == NULL) {
        FUZZ_CHECK(m->key_len == 0, "no key read as \"%s\"", m->key);
    } else if (rkm.key_len <= FERRY_KEY_MAX && text_ok(rkm.key, rkm.key_len)) {
        FUZZ_CHECK(m->key_len == rkm.key_len && memcmp(m->key, rkm.key, rkm.key_len) == 0,
                   "a text key changed");
    } else {
        FUZZ_CHECK(poison, "a key that is not text of at most %d bytes, not poison",
                   FERRY_KEY_MAX);
        FUZZ_CHECK(strncmp(m->key, "\\x", 2) == 0, "a bad key not kept as hex");
    }

    /* Names from headers. */
    char raw[FERRY_TYPE_MAX + 1];
    short_value(last(h, nh, "ferry_type"), sizeof raw, raw);
    if (raw[0] == '\0')
        short_value(last(h, nh, "ce_type"), sizeof raw, raw);
    check_name("type", m->type, raw, poison);
    FUZZ_CHECK(m->type == w.type, "type not in the work");
    short_value(last(h, nh, "ferry_aggregate_type"), sizeof raw, raw);
    check_name("aggregate_type", m->aggregate_type, raw, poison);
    if (w.unholdable)
        FUZZ_CHECK(poison, "unholdable without a reason");

    /* The position: none for a key that is not text (it is not the key
     * its escaped name spells, and takes no position there). */
    const hdr *seq = last(h, nh, "ferry_seq");
    int64_t want;
    int key_text = rkm.key == NULL || (rkm.key_len <= FERRY_KEY_MAX &&
                                       text_ok(rkm.key, rkm.key_len));
    if (!key_text) {
        FUZZ_CHECK(m->position == 0 && w.seq_text[0] == '\0' && w.unholdable,
                   "a key that is not text took position %" PRId64, m->position);
    } else if (position_ok(seq, &want)) {
        char text[24];
        snprintf(text, sizeof text, "%" PRId64, want);
        FUZZ_CHECK(m->position == want && strcmp(w.seq_text, text) == 0,
                   "ferry_seq %s read as %" PRId64 " (\"%s\")", text, m->position, w.seq_text);
    } else {
        FUZZ_CHECK(m->position == 0 && w.seq_text[0] == '\0',
                   "ferry_seq that is not a position accepted as %" PRId64, m->position);
        if (seq != NULL)
            FUZZ_CHECK(poison, "ferry_seq that is not a position, and not poison");
    }
    FUZZ_CHECK(m->position >= 0 && m->position <= INT64_MAX - 1, "position %" PRId64,
               m->position);

    /* Read again into a slot, moved to another (drop_revoked closing up a
     * batch), the first slot's buffers then scribbled over: the moved
     * message reads as the first reading did, from its new slot. */
    {
        static consume_work slot, moved;
        ferry__consume_intake(&slot, &rkm, topic, hs, max_payload);
        ferry__consume_work_move(&moved, &slot);
        memset(slot.id, 'x', sizeof slot.id - 1);
        memset(slot.key_text, 'x', sizeof slot.key_text - 1);
        memset(slot.type, 'x', sizeof slot.type - 1);
        memset(slot.aggregate_type, 'x', sizeof slot.aggregate_type - 1);
        FUZZ_CHECK(strcmp(moved.msg.id, m->id) == 0 && strcmp(moved.msg.key, m->key) == 0 &&
                   strcmp(moved.msg.type, m->type) == 0 &&
                   strcmp(moved.msg.aggregate_type, m->aggregate_type) == 0 &&
                   moved.msg.internal_ == &moved,
                   "a moved message reads another's id, key or type");
        ferry__consume_work_free(&moved);
    }

    /* The id, and a second reading: a redelivery is the same message. */
    FUZZ_CHECK(m->id == w.id && uuid_canonical(w.id), "id \"%.40s\"", w.id);
    ferry__consume_intake(&again, &rkm, topic, hs, max_payload);
    FUZZ_CHECK(strcmp(again.id, w.id) == 0 && again.msg.position == m->position &&
               strcmp(again.poison, w.poison) == 0 && strcmp(again.msg.key, m->key) == 0 &&
               again.marker == w.marker, "a second reading differs");
    ferry__consume_work_free(&again);

    /* Headers as the handler sees them: the map ensure_headers() builds
     * from rd_kafka_header_get_all, whose names end at a NUL. (So a header
     * "ferry_seq\0x" shows as ferry_seq here but not to the intake.) */
    for (size_t i = 0; i < nh; i++) {
        const char *got = ferry_message_header(m, h[i].name);
        const hdr *x = NULL;
        for (size_t j = nh; j-- > 0 && !x;)
            if (strcmp(h[j].name, h[i].name) == 0 && h[j].value &&
                text_ok(h[j].value, h[j].len))
                x = &h[j];
        if (!fuzz_utf8_ok((const unsigned char *)h[i].name, strlen(h[i].name)))
            x = NULL;                           /* jansson keeps no such name */
        if (x == NULL)
            FUZZ_CHECK(got == NULL, "header %zu: a value PostgreSQL text refuses", i);
        else
            FUZZ_CHECK(got != NULL && strlen(got) == x->len &&
                       memcmp(got, x->value, x->len) == 0, "header %zu: not the last value", i);
    }

    ferry__consume_work_free(&w);
    if (hs)
        rd_kafka_headers_destroy(hs);
    for (size_t k = 0; k < nf; k++)
        free(f[k].p);
    return 0;
}
