/*
 * consume.c — apply each message once in effect, in per-key order: the
 * inbox side of ferry (ferry.h, "Consume").
 *
 * One consumer is one Kafka consumer-group member and one PGconn, driven
 * from the caller's thread. For each message:
 *
 *   BEGIN; SELECT ferry.consume_claim(...)  -- dedupe + order, key row locked
 *          handler(conn, msg)               -- the caller's effect, may emit
 *          SELECT ferry.consume_finish(...)
 *   COMMIT;
 *   store offset+1                          -- only now may Kafka move past it
 *
 * The rules (order, dedupe, holding, attempts, dead letters) are the SQL
 * consumer protocol's (schemas/012_every_language.sql, README "From any
 * language"): this file calls only its functions — consume_claim,
 * consume_finish, consume_fail, consume_ready — as a service in any other
 * language does, so there is one implementation of them.
 *
 * The invariant that makes this exactly once in effect: a message's
 * offset is stored only after the transaction that applied it (or
 * decided it needs no applying) committed, and that transaction wrote the
 * inbox row under the key's row lock, so a redelivery — after a crash, a
 * rebalance, a relay that published twice — finds the row and does
 * nothing. Offsets are committed by librdkafka's auto-commit from the
 * stored offsets, and synchronously when partitions are revoked or the
 * consumer closes.
 *
 * Messages that may not be applied yet (a gap before them, their key
 * parked behind a dead letter) are copied into ferry.inbox_held by their
 * claim, in that same kind of transaction, so that Kafka can move on; they
 * are applied from there when their turn comes (see drain()).
 */
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "consume_intake.h"
#include "consume_plan.h"
#include "internal.h"

enum {
    DEFAULT_MAX_ATTEMPTS = 5,
    MAX_ATTEMPTS_LIMIT = 1000,
    DEFAULT_BACKOFF_BASE_MS = 10,
    DEFAULT_BACKOFF_MAX_MS = 2000,
    DEFAULT_HELD_SCAN_MS = 1000,
    NAME_MAX_LEN = 200,
    TOPICS_MAX = 1000,
    DRAIN_BATCH = 100,              /* held messages looked at per query */
    DRAIN_ROUNDS_MAX = 10,          /* queries per poll, so Kafka is polled too */
    DUE_MAX = 16,                   /* keys remembered for a keyed drain */
    REASON_MAX = CONSUME_REASON_MAX,
    /* A failure that is neither the handler's nor the message's (a missing
     * function, a permission, a database that stays down) is tried this
     * many times for one message; then ferry_consumer_poll() returns it
     * and the message is delivered again on the next poll. */
    SYSTEM_ATTEMPTS_MAX = 10,
    TRANSIENT_ATTEMPTS_MAX = 100,
    /* Messages applied in one transaction (see apply_batch): enough that
     * the commit's WAL flush is a small share of each message's cost.
     * (Batches were opt-in for a while because bench-saga "left sagas
     * stuck" with them; the sagas had completed, the bench had lost count
     * of them: see bench/bench_saga.c, PENDING_MAX.) batch_ms stays 0 by
     * default: a batch is what has already arrived, so batches grow with
     * the load and a lone message is never delayed. */
    DEFAULT_BATCH_MAX = 100,
    BATCH_MAX_LIMIT = 1000,
    BATCH_MS_LIMIT = 60000,
};
_Static_assert(SYSTEM_ATTEMPTS_MAX > 0 && TRANSIENT_ATTEMPTS_MAX >= SYSTEM_ATTEMPTS_MAX,
               "bounded, and transient failures get at least as many tries");

/* A key whose held messages an apply made ready (claim said apply_more). */
typedef struct due_key {
    char topic[FERRY_TOPIC_MAX + 1];
    char key[2 * FERRY_KEY_MAX + 8];
} due_key;

/* What ferry.consume_claim said of a message: apply (with drain: its
 * key's held messages are ready after it: V_APPLY_MORE), discarded (a
 * marker: applied without the handler, w->marker), duplicate, late, held
 * (V_GAP), parked. */
typedef enum verdict {
    V_APPLY, V_APPLY_MORE, V_DUPLICATE, V_LATE, V_GAP, V_PARKED
} verdict;

/* The claim and the finish are prepared once per session: planning the
 * claim every time cost a fifth of the inbox's overhead (bench-consume).
 * The payload goes as bytes (binary format: it need not end in a NUL) and
 * is NULL when it could not be held as text: a claim that would hold it
 * then fails (22023), and the message is dead-lettered instead. */
#define CLAIM_STMT "ferry_consume_claim_v1"
#define CLAIM_NPARAMS 12
static const char claim_sql[] =
    "SELECT verdict, drain FROM ferry.consume_claim($1, $2::uuid, $3, $4, $5::bigint, "
    "convert_from($6::bytea, 'UTF8'), $7::jsonb, $8, $9, $10::integer, $11::bigint, "
    "$12::boolean)";
/* A batch's claims in one statement (protocol 1.2, schema 20): each
 * array holds one element per message; text in the arrays' literal
 * syntax (claim_many_args). */
#define CLAIM_MANY_STMT "ferry_consume_claim_many_v1"
#define CLAIM_MANY_NPARAMS 12
static const char claim_many_sql[] =
    "SELECT verdict, drain FROM ferry.consume_claim_many($1, $2::uuid[], $3::text[], "
    "$4::text[], $5::bigint[], $6::text[], $7::jsonb[], $8::text[], $9::text[], "
    "$10::integer[], $11::bigint[], $12::boolean)";
/* A batch's usual claims without payloads and headers (protocol 1.3,
 * schema 25): a NULL verdict for each message it leaves to
 * consume_claim_many. */
#define CLAIM_NEXT_STMT "ferry_consume_claim_next_v1"
#define CLAIM_NEXT_NPARAMS 7
static const char claim_next_sql[] =
    "SELECT verdict, drain FROM ferry.consume_claim_next($1, $2::uuid[], $3::text[], "
    "$4::text[], $5::bigint[], $6::boolean[], $7::boolean)";
#define FINISH_STMT "ferry_consume_finish_v1"
static const char finish_sql[] = "SELECT ferry.consume_finish($1, $2::uuid)";
/* A batch's finishes in one statement (protocol 1.1, schema 16). */
#define FINISH_MANY_STMT "ferry_consume_finish_many_v1"
static const char finish_many_sql[] = "SELECT ferry.consume_finish_many($1, $2::uuid[])";

struct ferry_consumer {
    char name[NAME_MAX_LEN + 1];
    PGconn *conn;
    rd_kafka_t *rk;
    ferry_handler_fn handler;
    void *handler_arg;
    ferry_tx_opts tx;
    int max_attempts, backoff_base_ms, backoff_max_ms, held_scan_ms;
    int first_any;
    size_t max_payload;
    int batch_max, batch_ms;
    consume_work *batch;            /* batch_max slots, when batch_max > 1 */
    verdict *batch_verdicts;        /* as many */
    bool *batch_poison;             /* as many: apply_batch's plan */
    unsigned revoke_gen;            /* counts revocations: a batch in hand
                                       checks its partitions when it moved */
    rd_kafka_topic_partition_list_t *held;  /* as the rebalance callbacks left it,
                                               for their log lines (NULL: none yet) */

    int claim_pid;                  /* backend where CLAIM_STMT and FINISH_STMT
                                       are prepared */
    volatile sig_atomic_t stop;
    int closed;
    int drain_due;                  /* an apply said a held message is next */
    int scan_due;                   /* look at every held key (inbox_ready) */
    due_key due[DUE_MAX];           /* keys to drain by key (inbox_ready_key) */
    int due_count;
    int64_t next_scan_ms;
#ifdef FERRY_TEST_HOOKS
    long kill_after_commits;        /* test hook, see ferry_consumer_new */
    long commits;
    const char *gather_file;        /* test hook, see poll_batch */
#endif
    ferry_consumer_stats stats;
};

/* ---------------------------------------------------------------- helpers */

static int name_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!ferry__topic_char_ok(s[i]))
            return 0;
    return 1;
}

static void backoff(const ferry_consumer *c, int attempt)
{
    ferry__backoff_sleep(c->backoff_base_ms, c->backoff_max_ms, attempt);
}

/* The length of the UTF-8 character at p (at most len bytes), or 0 when
 * the bytes there are not one. */
static size_t utf8_char_len(const char *p, size_t len)
{
    unsigned char b = (unsigned char)p[0];
    size_t n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3
             : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    size_t bad;
    if (n == 0 || n > len || (n == 1 && b == 0) || !ferry__utf8_valid(p, n, &bad))
        return 0;
    return n;
}

/*
 * src (len bytes, any bytes) as text PostgreSQL can hold, into dst:
 * valid UTF-8 characters are copied, every other byte (and NUL) is
 * written as \xNN, and the result is cut only between characters. A
 * reason or a name read from a hostile message goes through here before
 * it is stored. Returns 1 when src was already clean and fitted.
 */
static int text_clean(char *dst, size_t size, const char *src, size_t len)
{
    size_t o = 0;
    int clean = 1;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_char_len(src + i, len - i);
        size_t out = n ? n : 4;
        if (o + out >= size) {
            clean = 0;      /* cut, between two characters */
            break;
        }
        if (n == 0) {
            snprintf(dst + o, size - o, "\\x%02x", (unsigned char)src[i]);
            clean = 0;
            i++;
        } else {
            memcpy(dst + o, src + i, n);
            i += n;
        }
        o += out;
    }
    dst[o] = '\0';
    return clean;
}

/* A stand-in id for a message that carries none (not from a ferry relay):
 * the same Kafka coordinates always give the same id, so a redelivery of
 * that offset is still recognised. Two FNV-1a hashes, version 8 bits. */
static void coordinates_id(const char *topic, int32_t partition, int64_t offset,
                           char out[FERRY_UUID_STRING_SIZE])
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%s/%" PRId32 "/%" PRId64, topic, partition, offset);
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
    for (int i = 0; i < n && i < (int)sizeof buf; i++) {
        h1 = (h1 ^ (uint8_t)buf[i]) * 0x100000001b3ULL;
        h2 = (h2 ^ (uint8_t)buf[i]) * 0x100000001b3ULL + 0x9e3779b97f4a7c15ULL;
    }
    ferry_uuid id;
    for (int i = 0; i < 8; i++) {
        id.bytes[i] = (uint8_t)(h1 >> (56 - 8 * i));
        id.bytes[8 + i] = (uint8_t)(h2 >> (56 - 8 * i));
    }
    id.bytes[6] = (uint8_t)((id.bytes[6] & 0x0f) | 0x80);   /* version 8 */
    id.bytes[8] = (uint8_t)((id.bytes[8] & 0x3f) | 0x80);   /* RFC 9562 variant */
    ferry_uuid_format(&id, out);
}

/* ---------------------------------------------------------------- one message */

/* consume_intake.h: one message, from Kafka or from ferry.inbox_held. */
typedef consume_work work;

void ferry__consume_work_free(work *w)
{
    json_decref(w->headers);
    json_decref(w->payload);
    w->headers = w->payload = NULL;
    free(w->payload_copy);
    w->payload_copy = NULL;
}

void ferry__consume_work_move(work *dst, const work *src)
{
    if (dst == src)
        return;
    *dst = *src;
    ferry_message *m = &dst->msg;
    if (m->id == src->id)
        m->id = dst->id;
    if (m->key == src->key_text)
        m->key = dst->key_text;
    if (m->type == src->type)
        m->type = dst->type;
    if (m->aggregate_type == src->aggregate_type)
        m->aggregate_type = dst->aggregate_type;
    m->internal_ = dst;
}

/* The map of every header, built from Kafka's on first use. Later
 * occurrences win, as ferry_message_header() promises; a value that
 * PostgreSQL text cannot hold (not UTF-8, or with a NUL byte: jsonb
 * refuses \u0000) is left out, so that a held message or a dead letter
 * keeps every other header. Returns NULL only when memory is short. */
static json_t *ensure_headers(work *w)
{
    if (w->headers != NULL)
        return w->headers;
    w->headers = json_object();
    if (w->headers == NULL || w->kafka_headers == NULL)
        return w->headers;
    const char *name;
    const void *val;
    size_t size;
    for (size_t i = 0; rd_kafka_header_get_all(w->kafka_headers, i, &name, &val, &size) ==
                       RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
        json_t *s = val && memchr(val, 0, size) == NULL ? json_stringn(val, size) : NULL;
        if (s != NULL)
            json_object_set_new(w->headers, name, s);
    }
    return w->headers;
}

const char *ferry_message_header(const ferry_message *msg, const char *name)
{
    if (msg == NULL || name == NULL || msg->internal_ == NULL)
        return NULL;
    /* The view is read-only to the handler; the lazily built map is ours. */
    work *w = (work *)msg->internal_;
    return json_string_value(json_object_get(ensure_headers(w), name));
}

ferry_code ferry_message_alone(const ferry_message *msg, ferry_error *err)
{
    if (msg == NULL || msg->internal_ == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "msg", "ferry_message_alone: no message");
    work *w = (work *)msg->internal_;
    if (!w->in_batch)
        return FERRY_OK;
    /* The batch rolls back; this message then runs in a transaction of
     * its own (apply_batch), where this call returns FERRY_OK. */
    w->alone_asked = 1;
    return ferry__error_set(err, FERRY_ESTATE, NULL,
                         "message %s asks for a transaction of its own", w->id);
}

/*
 * Header name as a NUL-terminated copy in buf: "" when absent, or when its
 * value does not fit (every header read this way has a short legal form,
 * so a longer one is as good as malformed and is treated as missing).
 */
static const char *header(work *w, const char *name, char *buf, size_t size)
{
    buf[0] = '\0';
    if (w->headers != NULL) {
        const char *v = json_string_value(json_object_get(w->headers, name));
        if (v != NULL && strlen(v) < size)
            snprintf(buf, size, "%s", v);
        return buf;
    }
    const void *val;
    size_t len;
    if (w->kafka_headers != NULL &&
        rd_kafka_header_get_last(w->kafka_headers, name, &val, &len) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        val != NULL && len < size && memchr(val, 0, len) == NULL) {
        memcpy(buf, val, len);
        buf[len] = '\0';
    }
    return buf;
}

/* Can PostgreSQL text hold it: UTF-8 without NUL bytes. (A payload that
 * parsed as JSON can: jansson takes only that.) */
static int payload_text_ok(const char *p, size_t len)
{
    size_t bad;
    return memchr(p, 0, len) == NULL && ferry__utf8_valid(p, len, &bad);
}

/* Whether the header map the claim is sent (ensure_headers) will have
 * name: some occurrence of it with a value PostgreSQL text can hold. So
 * the client and the server agree on what the message carries: a
 * ferry_discarded header with no value, or one not UTF-8, made the client
 * take the message for a discard marker (the handler not called) while
 * the server, which never saw the header, answered 'apply'; held first,
 * it was applied instead. */
static int has_text_header(work *w, const char *name)
{
    if (w->headers != NULL || w->kafka_headers == NULL)
        return w->headers != NULL && json_object_get(w->headers, name) != NULL;
    const void *val;
    size_t size;
    for (size_t i = 0;
         rd_kafka_header_get(w->kafka_headers, i, name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
         i++) {
        if (val != NULL && payload_text_ok(val, size))
            return 1;
    }
    return 0;
}

static int has_header(work *w, const char *name)
{
    if (w->headers != NULL)
        return json_object_get(w->headers, name) != NULL;
    const void *val;
    size_t len;
    return w->kafka_headers != NULL &&
           rd_kafka_header_get_last(w->kafka_headers, name, &val, &len) ==
               RD_KAFKA_RESP_ERR_NO_ERROR;
}


/*
 * A position as the relay writes it: decimal digits, no sign, space or
 * leading zero, 1 .. 2^63-2 (the claim needs position + 1). Anything else
 * is not a position, however strtoll() would read it.
 */
static int position_parse(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 19 || s[0] == '0')
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        int d = s[i] - '0';
        if (v > (INT64_MAX - 1 - d) / 10)
            return 0;       /* over 2^63-2 */
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* Fill in what both sources share once msg's key, payload text and
 * headers are in place: id, position, type, parsed payload, poison. */
static void work_finish(work *w, size_t max_payload)
{
    ferry_message *m = &w->msg;
    m->internal_ = w;
    m->attempt = 0;             /* apply_fn counts the tries */

    /* ferry_id, else ce_id, else the coordinates: a header that is not a
     * UUID counts as absent. */
    char idbuf[64];
    ferry_uuid u;
    if (ferry_uuid_parse(header(w, "ferry_id", idbuf, sizeof idbuf), &u) == FERRY_OK ||
        ferry_uuid_parse(header(w, "ce_id", idbuf, sizeof idbuf), &u) == FERRY_OK)
        ferry_uuid_format(&u, w->id);
    else
        coordinates_id(m->topic, m->partition, m->offset, w->id);
    m->id = w->id;

    const char *type_name = "ferry_type";
    m->type = header(w, type_name, w->type, sizeof w->type);
    if (*m->type == '\0') {
        type_name = "ce_type";
        m->type = header(w, type_name, w->type, sizeof w->type);
    }
    m->aggregate_type = header(w, "ferry_aggregate_type", w->aggregate_type,
                               sizeof w->aggregate_type);
    /* Names stored in text columns when the message is held or
     * dead-lettered: bytes that are not UTF-8 make it poison (it cannot be
     * kept faithfully) and are stored escaped. */
    char clean[FERRY_TYPE_MAX + 1];
    if (!text_clean(clean, sizeof clean, w->type, strlen(w->type))) {
        snprintf(w->poison, sizeof w->poison, "header %s is not UTF-8 text", type_name);
        snprintf(w->type, sizeof w->type, "%s", clean);
        w->unholdable = 1;
    }
    if (!text_clean(clean, sizeof clean, w->aggregate_type, strlen(w->aggregate_type))) {
        snprintf(w->poison, sizeof w->poison, "header ferry_aggregate_type is not UTF-8 text");
        snprintf(w->aggregate_type, sizeof w->aggregate_type, "%s", clean);
        w->unholdable = 1;
    }
    w->marker = has_text_header(w, "ferry_discarded");

    char seqbuf[64];
    const char *seq = header(w, "ferry_seq", seqbuf, sizeof seqbuf);
    m->position = 0;
    w->seq_text[0] = '\0';
    if (*seq != '\0' || has_header(w, "ferry_seq")) {
        int64_t v;
        if (!position_parse(seq, &v)) {
            char shown[4 * sizeof seqbuf];     /* every byte escaped, if need be */
            ferry__escape_text(shown, sizeof shown, seq);
            snprintf(w->poison, sizeof w->poison,
                     "header ferry_seq is \"%s\", not a position", shown);
        } else {
            m->position = v;
            snprintf(w->seq_text, sizeof w->seq_text, "%" PRId64, v);
        }
    }
    /* A key shown escaped is not the key it names: its message takes no
     * position, so that no claim holds it or counts it towards the real
     * key of that name; it is dead-lettered at once. */
    if (w->key_shown) {
        m->position = 0;
        w->seq_text[0] = '\0';
    }

    if (w->marker && !payload_text_ok(m->payload_text, m->payload_len))
        w->payload_is_text = 0;
    if (w->poison[0] == '\0' && !w->marker) {
        if (m->payload_len > max_payload) {
            snprintf(w->poison, sizeof w->poison,
                     "payload of %zu bytes is over the consumer's limit of %zu",
                     m->payload_len, max_payload);
        } else {
            json_error_t jerr;
            w->payload = json_loadb(m->payload_text, m->payload_len,
                                    JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            if (w->payload == NULL) {
                /* jansson quotes the payload ("near '...'"), cut anywhere. */
                char jtext[4 * JSON_ERROR_TEXT_LENGTH];
                ferry__escape_text(jtext, sizeof jtext, jerr.text);
                snprintf(w->poison, sizeof w->poison,
                         "payload is not valid JSON: %s at line %d, column %d", jtext,
                         jerr.line, jerr.column);
                if (!payload_text_ok(m->payload_text, m->payload_len)) {
                    w->payload_is_text = 0;
                    snprintf(w->poison, sizeof w->poison, "payload is not UTF-8 text");
                }
            }
        }
    }
    /* Poisoned before its payload was looked at (the key, a name, the
     * position): the dead letter may store the payload as text only if it
     * is text, or it fails and is written bare, without the headers it
     * could have kept. */
    if (w->poison[0] != '\0' && w->payload_is_text)
        w->payload_is_text = payload_text_ok(m->payload_text, m->payload_len);
    m->payload = w->payload ? w->payload : json_null();
}

/* A Kafka message as work. Keys and header values that are not UTF-8 text
 * (PostgreSQL text cannot hold them) are kept hex-encoded, and such a key
 * makes the message poison: it could not be ordered or stored faithfully. */
void ferry__consume_intake(work *w, rd_kafka_message_t *rkm, const char *topic,
                           rd_kafka_headers_t *headers, size_t max_payload)
{
    memset(w, 0, sizeof *w);
    w->rkm = rkm;
    ferry_message *m = &w->msg;
    m->topic = topic;
    m->partition = rkm->partition;
    m->offset = rkm->offset;
    m->payload_text = rkm->payload ? (const char *)rkm->payload : "null";
    m->payload_len = rkm->payload ? rkm->len : 4;
    /* ferry.h promises NUL-terminated strings, and librdkafka's payload
     * has no NUL after it: a handler reading payload_text as a C string
     * read on into the record's headers. The copy is the handler's view;
     * without the memory for it the message cannot be shown as promised
     * and goes to the dead letters, whole (the claim and the letter use
     * payload_len). */
    /* Only a payload the handler may see: one over max_payload goes to the
     * dead letters (by payload_len) without it, and need not be held twice. */
    if (rkm->payload != NULL && rkm->len <= max_payload) {
        w->payload_copy = malloc(rkm->len + 1);
        if (w->payload_copy != NULL) {
            memcpy(w->payload_copy, rkm->payload, rkm->len);
            w->payload_copy[rkm->len] = '\0';
            m->payload_text = w->payload_copy;
        }
    }

    size_t bad;
    if (rkm->key == NULL) {
        m->key = "";
    } else if (rkm->key_len <= FERRY_KEY_MAX && memchr(rkm->key, 0, rkm->key_len) == NULL &&
               ferry__utf8_valid(rkm->key, rkm->key_len, &bad)) {
        memcpy(w->key_text, rkm->key, rkm->key_len);
        w->key_text[rkm->key_len] = '\0';
        m->key = w->key_text;
    } else {
        size_t n = rkm->key_len < FERRY_KEY_MAX ? rkm->key_len : FERRY_KEY_MAX;
        char *p = w->key_text;
        p += sprintf(p, "\\x");
        for (size_t i = 0; i < n; i++)
            p += sprintf(p, "%02x", ((const unsigned char *)rkm->key)[i]);
        m->key = w->key_text;
        w->key_shown = 1;
        w->unholdable = 1;
        snprintf(w->poison, sizeof w->poison,
                 "the message key is not UTF-8 text of at most %d bytes", FERRY_KEY_MAX);
    }
    m->key_len = strlen(m->key);

    w->kafka_headers = headers;
    /* Decided by work_finish() for a payload it parses; one too large to
     * parse is checked here. */
    w->payload_is_text = 1;
    if (m->payload_len > max_payload && !payload_text_ok(m->payload_text, m->payload_len))
        w->payload_is_text = 0;
    work_finish(w, max_payload);
    if (rkm->payload != NULL && rkm->len <= max_payload && w->payload_copy == NULL &&
        w->poison[0] == '\0')
        snprintf(w->poison, sizeof w->poison,
                 "out of memory: the payload (%zu bytes) could not be given to the handler",
                 m->payload_len);
}

enum {
    H_CONSUMER, H_TOPIC, H_KEY, H_SEQ, H_ID, H_TYPE, H_AGGTYPE, H_PAYLOAD, H_HEADERS,
    H_PARTITION, H_OFFSET, H_REASON, H_HELD_AT
};

/* Row i of a ferry.inbox_ready() result as work; borrows from res. */
static void work_from_held(ferry_consumer *c, work *w, PGresult *res, int i)
{
    memset(w, 0, sizeof *w);
    w->from_held = 1;
    ferry_message *m = &w->msg;
    m->topic = PQgetvalue(res, i, H_TOPIC);
    m->key = PQgetvalue(res, i, H_KEY);
    m->key_len = strlen(m->key);
    m->partition = atoi(PQgetvalue(res, i, H_PARTITION));
    m->offset = -1;
    m->payload_text = PQgetvalue(res, i, H_PAYLOAD);
    m->payload_len = (size_t)PQgetlength(res, i, H_PAYLOAD);
    w->payload_is_text = 1;
    json_error_t jerr;
    w->headers = json_loads(PQgetvalue(res, i, H_HEADERS), 0, &jerr);
    if (!json_is_object(w->headers)) {
        json_decref(w->headers);
        w->headers = json_object();
    }
    /* The row's columns are the truth: the headers may lack an id, or
     * carry a position the replay did not keep. */
    json_object_set_new(w->headers, "ferry_id", json_string(PQgetvalue(res, i, H_ID)));
    if (PQgetisnull(res, i, H_SEQ))
        json_object_del(w->headers, "ferry_seq");
    else
        json_object_set_new(w->headers, "ferry_seq", json_string(PQgetvalue(res, i, H_SEQ)));
    if (*PQgetvalue(res, i, H_TYPE) != '\0')
        json_object_set_new(w->headers, "ferry_type", json_string(PQgetvalue(res, i, H_TYPE)));
    work_finish(w, c->max_payload);
}

/* ---------------------------------------------------------------- transactions */

typedef struct apply_ctx {
    ferry_consumer *c;
    work *w;
    verdict v;
    int handler_failed;         /* the failure came from the handler */
    int poisoned;               /* claimed for applying (or holding), but it is poison */
} apply_ctx;

/* consume_claim's (verdict, drain) as a verdict; a discard marker is
 * applied without the handler, so it is marked on w. */
static int parse_verdict(const char *s, const char *drain, work *w, verdict *out)
{
    static const struct { const char *name; verdict v; } names[] = {
        {"apply", V_APPLY}, {"discarded", V_APPLY}, {"duplicate", V_DUPLICATE},
        {"late", V_LATE}, {"held", V_GAP}, {"parked", V_PARKED},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].v;
            if (*out == V_APPLY && strcmp(drain, "t") == 0)
                *out = V_APPLY_MORE;
            if (strcmp(s, "discarded") == 0)
                w->marker = 1;
            return 0;
        }
    }
    return -1;
}

/* The claim and the finish as prepared statements on this backend: a new
 * backend (after a reset) has none. */
static ferry_code prepare_claim(PGconn *conn, ferry_consumer *c, ferry_error *err)
{
    if (PQbackendPID(conn) == c->claim_pid)
        return FERRY_OK;
    PGresult *pr = PQprepare(conn, CLAIM_STMT, claim_sql, CLAIM_NPARAMS, NULL);
    if (PQresultStatus(pr) == PGRES_COMMAND_OK) {
        PQclear(pr);
        pr = PQprepare(conn, FINISH_STMT, finish_sql, 2, NULL);
    }
    if (PQresultStatus(pr) == PGRES_COMMAND_OK) {
        PQclear(pr);
        pr = PQprepare(conn, FINISH_MANY_STMT, finish_many_sql, 2, NULL);
    }
    if (PQresultStatus(pr) == PGRES_COMMAND_OK) {
        PQclear(pr);
        pr = PQprepare(conn, CLAIM_MANY_STMT, claim_many_sql, CLAIM_MANY_NPARAMS, NULL);
    }
    if (PQresultStatus(pr) == PGRES_COMMAND_OK) {
        PQclear(pr);
        pr = PQprepare(conn, CLAIM_NEXT_STMT, claim_next_sql, CLAIM_NEXT_NPARAMS, NULL);
    }
    if (PQresultStatus(pr) != PGRES_COMMAND_OK) {
        ferry_code rc = ferry_error_from_pg(err, conn, pr, "could not prepare the claim");
        PQclear(pr);
        /* Some may be there: dropped (errors ignored), so that the next
         * try prepares all on a clean slate. Only ours: the handler's own
         * prepared statements live on the same session. */
        PQclear(PQexec(conn, "DEALLOCATE " CLAIM_STMT));
        PQclear(PQexec(conn, "DEALLOCATE " FINISH_STMT));
        PQclear(PQexec(conn, "DEALLOCATE " FINISH_MANY_STMT));
        PQclear(PQexec(conn, "DEALLOCATE " CLAIM_MANY_STMT));
        PQclear(PQexec(conn, "DEALLOCATE " CLAIM_NEXT_STMT));
        return rc;
    }
    PQclear(pr);
    c->claim_pid = PQbackendPID(conn);
    return FERRY_OK;
}

/* consume_claim's parameters for one message; what it allocates,
 * claim_args_free() frees. */
typedef struct claim_args {
    const char *p[CLAIM_NPARAMS];
    int lens[CLAIM_NPARAMS];
    int fmts[CLAIM_NPARAMS];
    char part[16], off[24];
    char *hjson;
} claim_args;

static ferry_code claim_args_fill(const ferry_consumer *c, work *w, claim_args *a,
                                  ferry_error *err)
{
    memset(a, 0, sizeof *a);
    /* Every header, as they are held (a hold needs them; a discard marker
     * is told by them). */
    a->hjson = json_dumps(ensure_headers(w), JSON_COMPACT);
    if (a->hjson == NULL)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
    snprintf(a->part, sizeof a->part, "%" PRId32, w->msg.partition);
    snprintf(a->off, sizeof a->off, "%" PRId64, w->msg.offset);
    a->p[0] = c->name;
    a->p[1] = w->id;
    a->p[2] = w->msg.topic;
    a->p[3] = w->msg.key;
    a->p[4] = w->seq_text[0] ? w->seq_text : NULL;
    /* Held as received, when text can hold it; otherwise NULL, which a
     * claim that must hold it refuses (see claim_failed). */
    if (w->payload_is_text && !w->unholdable) {
        a->p[5] = w->msg.payload_text;
        a->lens[5] = (int)w->msg.payload_len;
        a->fmts[5] = 1;
    }
    a->p[6] = a->hjson;
    a->p[7] = w->msg.type;
    a->p[8] = w->msg.aggregate_type;
    a->p[9] = a->part;
    a->p[10] = a->off;
    a->p[11] = c->first_any ? "t" : "f";
    return FERRY_OK;
}

static void claim_args_free(claim_args *a)
{
    free(a->hjson);
    a->hjson = NULL;
}

/* Send w's claim (in pipeline mode). */
static ferry_code send_claim(PGconn *conn, const ferry_consumer *c, work *w, ferry_error *err)
{
    claim_args ca;
    ferry_code rc = claim_args_fill(c, w, &ca, err);
    if (rc != FERRY_OK)
        return rc;
    /* libpq copies the parameters into its buffer here. */
    int ok = PQsendQueryPrepared(conn, CLAIM_STMT, CLAIM_NPARAMS, ca.p, ca.lens, ca.fmts, 0);
    claim_args_free(&ca);
    if (!ok)
        return ferry_error_from_pg(err, conn, NULL, "could not send the claim");
    return FERRY_OK;
}

/* The claim of w failed with err (res: its result): is it the message's
 * own fault, or the session's? */
static void claim_failed(ferry_consumer *c, work *w, int *poisoned, ferry_error *err)
{
    if (strcmp(err->sqlstate, "26000") == 0) {
        /* The session lost the prepared statements (DISCARD ALL in a
         * handler, a pooler): prepare again on the retry. */
        c->claim_pid = 0;
        err->retriable = 1;
    } else if (strcmp(err->sqlstate, "22023") == 0 && (!w->payload_is_text || w->unholdable)) {
        /* Its turn has not come and it cannot be kept as text until then
         * (the claim was given no payload): dead-lettered now, which
         * parks its key behind it. */
        *poisoned = 1;
        ferry__error_set(err, FERRY_EINVAL, "payload", "%s (arrived while its key was held)",
                      w->poison[0] ? w->poison : "payload is not UTF-8 text");
    }
}

/* The claim's row: its verdict into *v. */
static ferry_code claim_result(PGconn *conn, ferry_consumer *c, work *w, PGresult *res,
                               verdict *v, int *poisoned, ferry_error *err)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 2) {
        ferry_code rc = ferry_error_from_pg(err, conn, res, "could not claim the message");
        claim_failed(c, w, poisoned, err);
        return err->code != FERRY_OK ? err->code : rc;
    }
    if (parse_verdict(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), w, v) != 0)
        return ferry__error_set(err, FERRY_ESCHEMA, NULL,
                             "ferry.consume_claim gave an answer this library does not know");
    return FERRY_OK;
}

/* A BEGIN's result, as query 0 of a pipeline. */
static ferry_code begin_result(PGconn *conn, PGresult *res, ferry_error *err)
{
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return ferry_error_from_pg(err, conn, res, "could not begin a transaction");
    return FERRY_OK;
}

/* consume_claim_many's arrays for ws[0..n): 0, or -1 (out of memory, or a
 * message that text cannot carry: claimed one by one instead). */
enum { CM_IDS, CM_TOPICS, CM_KEYS, CM_SEQS, CM_PAYLOADS, CM_HEADERS, CM_TYPES, CM_AGGS,
       CM_PARTS, CM_OFFS, CM_ARRAYS };

static int claim_many_args(work *ws, const int *idx, int n, ferry__alit *a)
{
    memset(a, 0, sizeof(ferry__alit) * CM_ARRAYS);
    for (int i = 0; i < n; i++) {
        work *w = &ws[idx != NULL ? idx[i] : i];
        if (w->unholdable)
            return -1;
        char *hjson = json_dumps(ensure_headers(w), JSON_COMPACT);
        if (hjson == NULL)
            return -1;
        char num[24];
        ferry__alit_str(&a[CM_IDS], w->id);
        ferry__alit_str(&a[CM_TOPICS], w->msg.topic);
        ferry__alit_str(&a[CM_KEYS], w->msg.key);
        ferry__alit_str(&a[CM_SEQS], w->seq_text[0] ? w->seq_text : NULL);
        /* Held as received, when text can hold it (see claim_args_fill). */
        ferry__alit_elem(&a[CM_PAYLOADS], w->payload_is_text ? w->msg.payload_text : NULL,
                  w->msg.payload_len);
        ferry__alit_str(&a[CM_HEADERS], hjson);
        free(hjson);
        ferry__alit_str(&a[CM_TYPES], w->msg.type);
        ferry__alit_str(&a[CM_AGGS], w->msg.aggregate_type);
        snprintf(num, sizeof num, "%" PRId32, w->msg.partition);
        ferry__alit_str(&a[CM_PARTS], num);
        snprintf(num, sizeof num, "%" PRId64, w->msg.offset);
        ferry__alit_str(&a[CM_OFFS], num);
    }
    for (int k = 0; k < CM_ARRAYS; k++)
        if (ferry__alit_end(&a[k]) == NULL)
            return -1;
    return 0;
}

static void claim_many_free(ferry__alit *a)
{
    for (int k = 0; k < CM_ARRAYS; k++)
        free(a[k].p);
}

/* A batch claim's result: n rows of (verdict, drain), or the error; a
 * statement the session no longer has (26000) is prepared again on the
 * retry. */
static ferry_code claim_rows_check(ferry_consumer *c, PGresult *res, int n, ferry_error *err)
{
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == n && PQnfields(res) == 2)
        return FERRY_OK;
    ferry_code rc = ferry_error_from_pg(err, c->conn, res, "could not claim the messages");
    if (strcmp(err->sqlstate, "26000") == 0) {
        c->claim_pid = 0;
        err->retriable = 1;
    }
    return rc;
}

typedef struct claim_many_ctx {
    ferry_consumer *c;
    work *ws;
    const int *idx;                 /* the messages of ws claimed (NULL: n first) */
    int n;
    verdict *v;
    int begin;                      /* query 0 is BEGIN */
} claim_many_ctx;

/* BEGIN's result (with begin), then consume_claim_many's: one row per
 * message. */
static ferry_code claim_many_result(void *ctx, int q, PGresult *res, bool *keep,
                                    ferry_error *err)
{
    claim_many_ctx *cm = ctx;
    PGconn *conn = cm->c->conn;
    if (q == 0 && cm->begin)
        return begin_result(conn, res, err);
    ferry_code rc = claim_rows_check(cm->c, res, cm->n, err);
    if (rc != FERRY_OK)
        return rc;
    for (int i = 0; i < cm->n; i++) {
        int j = cm->idx != NULL ? cm->idx[i] : i;
        if (parse_verdict(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), &cm->ws[j],
                          &cm->v[j]) != 0)
            return ferry__error_set(err, FERRY_ESCHEMA, NULL,
                                    "ferry.consume_claim_many gave an answer this library "
                                    "does not know");
    }
    return FERRY_OK;
}

/* One round trip of a batch claim: BEGIN (with begin) and the prepared
 * statement stmt with its parameters, in pipeline mode; on_result takes
 * each result (query 0 is BEGIN's, with begin). */
static ferry_code claim_round_trip(ferry_consumer *c, const char *stmt, int nparams,
                                   const char *const *p, int begin,
                                   ferry__pipe_result_fn on_result, void *ctx, ferry_error *err)
{
    PGconn *conn = c->conn;
    ferry_code rc = FERRY_OK;
    if (!PQenterPipelineMode(conn))
        return ferry_error_from_pg(err, conn, NULL, "could not send the claims");
    int sent = 0, want = begin ? 2 : 1;
    if (!begin || PQsendQueryParams(conn, ferry__begin_sql(c->tx.isolation, false), 0, NULL,
                                    NULL, NULL, NULL, 0)) {
        sent = begin;
        if (PQsendQueryPrepared(conn, stmt, nparams, p, NULL, NULL, 0))
            sent++;
    }
    if (sent < want)
        rc = ferry_error_from_pg(err, conn, NULL, "could not send the claims");
    if (!ferry__pipeline_sync(conn, &rc, "could not send the claims", err))
        return rc;
    return ferry__pipeline_read(conn, sent, rc, on_result, ctx,
                                "the claims' results ended early", err);
}

/*
 * BEGIN (with begin) and one consume_claim_many for the n messages of ws
 * that idx names (NULL: the first n), in one round trip: the server
 * claims the usual ones in one UPDATE and one INSERT (schema 20).
 * Verdicts into v, at the messages' indexes. A failed claim names no
 * message: *index stays -1 and the batch is applied one by one
 * (apply_batch).
 */
static ferry_code begin_and_claim_many(ferry_consumer *c, work *ws, const int *idx, int n,
                                       verdict *v, const ferry__alit *a, int begin,
                                       ferry_error *err)
{
    const char *p[CLAIM_MANY_NPARAMS] = {
        c->name, a[CM_IDS].p, a[CM_TOPICS].p, a[CM_KEYS].p, a[CM_SEQS].p, a[CM_PAYLOADS].p,
        a[CM_HEADERS].p, a[CM_TYPES].p, a[CM_AGGS].p, a[CM_PARTS].p, a[CM_OFFS].p,
        c->first_any ? "t" : "f"};
    claim_many_ctx cm = {c, ws, idx, n, v, begin};
    return claim_round_trip(c, CLAIM_MANY_STMT, CLAIM_MANY_NPARAMS, p, begin, claim_many_result,
                            &cm, err);
}

/* Whether w carries the header ferry_discarded as its headers reach the
 * server, without building them: exactly ensure_headers' test (the name as
 * a C string, so "ferry_discarded\0x" is one too; a value that is text:
 * not NULL, no NUL, valid UTF-8). */
static int has_discarded_header(const work *w)
{
    const char *name;
    const void *val;
    size_t size;
    if (w->kafka_headers == NULL)
        return 0;
    for (size_t i = 0; rd_kafka_header_get_all(w->kafka_headers, i, &name, &val, &size) ==
                       RD_KAFKA_RESP_ERR_NO_ERROR; i++)
        if (strcmp(name, "ferry_discarded") == 0 && val != NULL &&
            memchr(val, 0, size) == NULL && ferry__utf8_valid(val, size, NULL))
            return 1;
    return 0;
}

/* consume_claim_next's arrays for ws[0..n): 0, or -1 (out of memory). */
enum { CN_IDS, CN_TOPICS, CN_KEYS, CN_SEQS, CN_DISCARDED, CN_ARRAYS };

static int claim_next_args(const work *ws, int n, ferry__alit *a)
{
    memset(a, 0, sizeof(ferry__alit) * CN_ARRAYS);
    for (int i = 0; i < n; i++) {
        const work *w = &ws[i];
        ferry__alit_str(&a[CN_IDS], w->id);
        ferry__alit_str(&a[CN_TOPICS], w->msg.topic);
        ferry__alit_str(&a[CN_KEYS], w->msg.key);
        ferry__alit_str(&a[CN_SEQS], w->seq_text[0] ? w->seq_text : NULL);
        ferry__alit_str(&a[CN_DISCARDED], has_discarded_header(w) ? "t" : "f");
    }
    for (int k = 0; k < CN_ARRAYS; k++)
        if (ferry__alit_end(&a[k]) == NULL)
            return -1;
    return 0;
}

typedef struct claim_next_ctx {
    ferry_consumer *c;
    work *ws;
    int n;
    verdict *v;
    int *rest;                      /* the indexes consume_claim_next left */
    int nrest;
} claim_next_ctx;

/* BEGIN's result, then consume_claim_next's: one row per message, a NULL
 * verdict for one it left. */
static ferry_code claim_next_result(void *ctx, int q, PGresult *res, bool *keep,
                                    ferry_error *err)
{
    claim_next_ctx *cn = ctx;
    PGconn *conn = cn->c->conn;
    if (q == 0)
        return begin_result(conn, res, err);
    ferry_code rc = claim_rows_check(cn->c, res, cn->n, err);
    if (rc != FERRY_OK)
        return rc;
    for (int i = 0; i < cn->n; i++) {
        if (PQgetisnull(res, i, 0)) {
            cn->rest[cn->nrest++] = i;
            continue;
        }
        if (parse_verdict(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), &cn->ws[i],
                          &cn->v[i]) != 0)
            return ferry__error_set(err, FERRY_ESCHEMA, NULL,
                                    "ferry.consume_claim_next gave an answer this library "
                                    "does not know");
    }
    return FERRY_OK;
}

/*
 * BEGIN and one consume_claim_next for ws[0..n), in one round trip: the
 * usual messages, without their payloads and headers (schema 25); then,
 * only if some are left (a gap, a redelivery, a parked key, a message
 * without a position), one consume_claim_many of those with theirs, in
 * the same transaction. Verdicts into v. A failure names no message.
 */
static ferry_code begin_and_claim_next(ferry_consumer *c, work *ws, int n, verdict *v,
                                       ferry_error *err)
{
    ferry__alit a[CM_ARRAYS] = {0};
    int *rest = malloc(sizeof(int) * (size_t)n);
    if (rest == NULL || claim_next_args(ws, n, a) != 0) {
        free(rest);
        claim_many_free(a);
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
    }
    const char *p[CLAIM_NEXT_NPARAMS] = {c->name, a[CN_IDS].p, a[CN_TOPICS].p, a[CN_KEYS].p,
                                         a[CN_SEQS].p, a[CN_DISCARDED].p,
                                         c->first_any ? "t" : "f"};
    claim_next_ctx cn = {c, ws, n, v, rest, 0};
    ferry_code rc = claim_round_trip(c, CLAIM_NEXT_STMT, CLAIM_NEXT_NPARAMS, p, 1,
                                     claim_next_result, &cn, err);
    claim_many_free(a);
    memset(a, 0, sizeof a);
    if (rc == FERRY_OK && cn.nrest > 0) {
        if (claim_many_args(ws, rest, cn.nrest, a) != 0)
            rc = ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
        else
            rc = begin_and_claim_many(c, ws, rest, cn.nrest, v, a, 0, err);
    }
    claim_many_free(a);
    free(rest);
    return rc;
}

typedef struct claims_ctx {
    ferry_consumer *c;
    work *ws;
    verdict *v;
    int *index;                     /* the message whose claim failed */
    int *poisoned;
} claims_ctx;

/* BEGIN's result, then one consume_claim's per message. */
static ferry_code claims_result(void *ctx, int q, PGresult *res, bool *keep,
                                ferry_error *err)
{
    claims_ctx *cl = ctx;
    if (q == 0)
        return begin_result(cl->c->conn, res, err);
    ferry_code rc = claim_result(cl->c->conn, cl->c, &cl->ws[q - 1], res, &cl->v[q - 1],
                                 cl->poisoned, err);
    if (rc != FERRY_OK)
        *cl->index = q - 1;
    return rc;
}

/*
 * BEGIN and the claims of ws[0..n), in one round trip (pipeline mode):
 * the inbox then costs the server's work, not an extra round trip per
 * message. Verdicts into v; on a failure, *index is the message whose
 * claim failed (-1: none in particular).
 */
static ferry_code begin_and_claims(ferry_consumer *c, work *ws, int n, verdict *v, int *index,
                                   int *poisoned, ferry_error *err)
{
    PGconn *conn = c->conn;
    *index = -1;
    ferry_code rc = prepare_claim(conn, c, err);
    if (rc != FERRY_OK)
        return rc;
    if (n > 1) {
        /* What is left to consume_claim_many may need holding: a message
         * that text cannot hold is claimed one by one (below), and so is
         * its batch. */
        int holdable = 1;
        for (int i = 0; i < n && holdable; i++)
            holdable = !ws[i].unholdable;
        if (holdable)
            return begin_and_claim_next(c, ws, n, v, err);
    }
    if (!PQenterPipelineMode(conn) ||
        !PQsendQueryParams(conn, ferry__begin_sql(c->tx.isolation, false), 0, NULL, NULL, NULL,
                           NULL, 0)) {
        rc = ferry_error_from_pg(err, conn, NULL, "could not send the claims");
        PQexitPipelineMode(conn);
        return rc;
    }
    int sent = n;
    for (int i = 0; i < n; i++) {
        if ((rc = send_claim(conn, c, &ws[i], err)) != FERRY_OK) {
            sent = i;           /* the rest is not sent; what was is read below */
            break;
        }
    }
    if (!PQpipelineSync(conn)) {
        rc = ferry_error_from_pg(err, conn, NULL, "could not send the claims");
        PQexitPipelineMode(conn);
        return rc;
    }

    /* BEGIN's result, then each claim's. */
    claims_ctx cl = {c, ws, v, index, poisoned};
    rc = ferry__pipeline_read(conn, sent + 1, rc, claims_result, &cl,
                              "the claims' results ended early", err);
    if (rc != FERRY_OK && sent < n)
        ferry__rollback_quietly(conn);   /* BEGIN ran; the caller may not roll back */
    return rc;
}

typedef struct commit_ctx {
    PGconn *conn;
    int finishes;                   /* queries before the COMMIT */
} commit_ctx;

/* The finishes' results, then the COMMIT's. */
static ferry_code commit_result(void *ctx, int q, PGresult *res, bool *keep,
                                ferry_error *err)
{
    const commit_ctx *cc = ctx;
    ExecStatusType st = PQresultStatus(res);
    if (q < cc->finishes)
        return st == PGRES_TUPLES_OK
                   ? FERRY_OK
                   : ferry_error_from_pg(err, cc->conn, res, "could not finish the message");
    if (st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0)
        return FERRY_OK;
    if (st == PGRES_COMMAND_OK)
        return ferry__error_set(err, FERRY_EDB, NULL, "COMMIT rolled back");
    return ferry_error_from_pg(err, cc->conn, res, "could not commit");
}

/*
 * The finishes of ws[0..n) and COMMIT, in one round trip (pipeline mode):
 * consume_finish drops what is done with (a held copy, counted
 * attempts), then the transaction commits. A batch is finished by one
 * consume_finish_many (one statement and one name check, not n). On a
 * failure the transaction is rolled back.
 */
static ferry_code finish_and_commit(ferry_consumer *c, const work *ws, int n, ferry_error *err)
{
    PGconn *conn = c->conn;
    ferry_code rc = FERRY_OK;
    /* The ids as a uuid[] literal, for one finish of them all. */
    ferry__alit ids = {0};
    if (n > 1) {
        for (int i = 0; i < n; i++)
            ferry__alit_str(&ids, ws[i].id);
        if (ferry__alit_end(&ids) == NULL) {
            free(ids.p);
            ferry__rollback_quietly(conn);
            return ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
        }
    }
    int nf = n > 1 ? 1 : n;         /* finish statements */
    if (!PQenterPipelineMode(conn)) {
        free(ids.p);
        return ferry_error_from_pg(err, conn, NULL, "could not send the commit");
    }
    /* Sent: the finishes, then the COMMIT as query nf; on a failure to
     * send, what was sent is synced and read, and no COMMIT goes. */
    int sent = 0;
    for (; sent < nf; sent++) {
        const char *p[2] = {c->name, n > 1 ? ids.p : ws[sent].id};
        if (!PQsendQueryPrepared(conn, n > 1 ? FINISH_MANY_STMT : FINISH_STMT, 2, p, NULL,
                                 NULL, 0))
            break;
    }
    free(ids.p);
    n = nf;
    if (sent == n && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
        sent = n + 1;
    if (sent <= n)
        rc = ferry_error_from_pg(err, conn, NULL, "could not send the commit");
    if (!ferry__pipeline_sync(conn, &rc, "could not send the commit", err))
        return rc;
    commit_ctx cc = {conn, n};
    rc = ferry__pipeline_read(conn, sent, rc, commit_result, &cc,
                              "the commit's results ended early", err);
    if (rc != FERRY_OK)
        ferry__rollback_quietly(conn);   /* a finish failed: the COMMIT did not run */
    return rc;
}

/* What a claimed message needs inside its transaction, between its claim
 * and its finish: the handler, for a message whose turn it is. The rest
 * the claim did (held it) or needs nothing (skipped). */
static ferry_code apply_body(PGconn *conn, apply_ctx *a, ferry_error *err)
{
    ferry_consumer *c = a->c;
    work *w = a->w;
    switch (a->v) {
    case V_DUPLICATE:
    case V_LATE:
    case V_GAP:
    case V_PARKED:
        return FERRY_OK;
    case V_APPLY:
    case V_APPLY_MORE:
        break;
    }

    if (w->poison[0] != '\0') {
        a->poisoned = 1;
        return ferry__error_set(err, FERRY_EINVAL, "payload", "%s", w->poison);
    }
    if (!w->marker) {
        ferry__err_clear(err);
        ferry_code rc = c->handler(conn, &w->msg, c->handler_arg, err);
        if (rc != FERRY_OK) {
            a->handler_failed = 1;
            if (err->code == FERRY_OK)
                ferry__error_set(err, rc, NULL, "the handler failed (%s)", ferry_code_name(rc));
            return rc;
        }
    }
    return FERRY_OK;
}

/* The handler left the transaction as it must be? When it returned
 * success over a transaction it left aborted or closed (a failed
 * statement whose error it dropped), that is its failure, and the
 * message's: counted against it (a->handler_failed), as a handler's
 * error would be, so that it is dead-lettered at max_attempts instead of
 * being tried again as the database's failure without end. */
static ferry_code still_in_transaction(PGconn *conn, apply_ctx *a, ferry_error *err)
{
    if (PQtransactionStatus(conn) == PQTRANS_INTRANS)
        return FERRY_OK;
    if (PQstatus(conn) != CONNECTION_OK)
        return ferry_error_from_pg(err, conn, NULL, "connection lost in transaction");
    a->handler_failed = 1;
    return ferry__error_set(err, FERRY_EUSER, NULL,
                            "the handler returned success but left the transaction "
                            "aborted or closed");
}

/* A COMMIT (with the finish before it) that PostgreSQL refused for what
 * the transaction did, not for the state of the database: a deferred
 * constraint (class 23), a deferred trigger's data error or raised
 * exception (22, P0). The handler's work cannot commit, so it is counted
 * against the message as a handler failure. Transient failures
 * (serialization, deadlock, a lost connection) are not among these. */
static int commit_refused(PGconn *conn, const ferry_error *e)
{
    return PQstatus(conn) == CONNECTION_OK &&
           (strncmp(e->sqlstate, "23", 2) == 0 || strncmp(e->sqlstate, "22", 2) == 0 ||
            strncmp(e->sqlstate, "P0", 2) == 0);
}

/*
 * One try at one message: BEGIN + claim, the body, finish + COMMIT. Unlike
 * ferry_tx_run() it needs no transaction id to find out what a COMMIT
 * whose reply was lost did: trying the message again is the answer, as
 * the claim then finds it applied (or not).
 */
static ferry_code apply_tx(PGconn *conn, void *arg, ferry_error *err)
{
    apply_ctx *a = arg;
    a->handler_failed = a->poisoned = 0;
    /* Tries that failed at this message, and this one. */
    a->w->msg.attempt = a->w->failed_tries + 1;
    ferry__err_clear(err);
    if (PQstatus(conn) != CONNECTION_OK) {
        PQreset(conn);
        if (PQstatus(conn) != CONNECTION_OK)
            return ferry_error_from_pg(err, conn, NULL, "could not reconnect");
        a->c->stats.reconnects++;
    }
    int index;
    ferry_code rc = begin_and_claims(a->c, a->w, 1, &a->v, &index, &a->poisoned, err);
    if (rc == FERRY_OK)
        rc = apply_body(conn, a, err);
    if (rc == FERRY_OK)
        rc = still_in_transaction(conn, a, err);
    if (rc != FERRY_OK) {
        ferry__rollback_quietly(conn);
        a->w->failed_tries++;
        return rc;
    }
    rc = finish_and_commit(a->c, a->w, 1, err);
    if (rc != FERRY_OK) {
        a->w->failed_tries++;
        if (commit_refused(conn, err))
            a->handler_failed = 1;
    }
    return rc;
}

/* ferry.consume_fail for a message whose try failed (or that is poison). */
typedef struct fail_ctx {
    ferry_consumer *c;
    work *w;
    const char *reason;         /* clean text (see ferry__escape_text) */
    int permanent;              /* the message itself is bad: no retry */
    int bare;                   /* last resort: no headers, the payload as hex */
    int dead_lettered;          /* out: consume_fail's outcome */
    int attempts;               /* out: its count of failed tries */
} fail_ctx;

static ferry_code fail_fn(PGconn *conn, void *arg, ferry_error *err)
{
    fail_ctx *d = arg;
    work *w = d->w;
    char max[16];
    snprintf(max, sizeof max, "%d", d->c->max_attempts);
    char *hjson = d->bare ? strdup("{}") : json_dumps(ensure_headers(w), JSON_COMPACT);
    if (hjson == NULL)
        return ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
    /* The payload goes as bytes (it need not end in a NUL); one that is
     * not text is kept hex-encoded rather than lost. */
    char *hex = NULL;
    const char *payload = w->msg.payload_text;
    size_t plen = w->msg.payload_len;
    if (!w->payload_is_text || d->bare) {
        hex = malloc(2 * plen + 64);
        if (hex == NULL) {
            free(hjson);
            return ferry__error_set(err, FERRY_ENOMEM, NULL, "out of memory");
        }
        char *q = hex + sprintf(hex, "%s, hex: ", d->bare ? "as received" : "not UTF-8 text");
        for (size_t i = 0; i < plen; i++)
            q += sprintf(q, "%02x", (unsigned char)payload[i]);
        payload = hex;
        plen = (size_t)(q - hex);
    }
    /* A key shown as its bytes in hex is a name a real key may have:
     * the letter takes no position, so that it parks no key. */
    const char *p[12] = {d->c->name, w->id, w->msg.topic, w->msg.key, d->reason,
                         w->seq_text[0] && !w->key_shown ? w->seq_text : NULL, payload, hjson,
                         w->msg.type,
                         w->msg.aggregate_type, max, d->permanent ? "t" : "f"};
    int lens[12] = {0};
    int fmts[12] = {0};
    lens[6] = (int)plen;
    fmts[6] = 1;
    PGresult *res = PQexecParams(conn,
                                 "SELECT outcome, attempts FROM ferry.consume_fail($1, "
                                 "$2::uuid, $3, $4, $5, $6::bigint, "
                                 "convert_from($7::bytea, 'UTF8'), $8::jsonb, $9, $10, "
                                 "$11::integer, $12::boolean)",
                                 12, NULL, p, lens, fmts, 0);
    free(hex);
    free(hjson);
    ferry_code rc = FERRY_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = ferry_error_from_pg(err, conn, res, "could not count the failure");
    } else {
        d->dead_lettered = strcmp(PQgetvalue(res, 0, 0), "dead_lettered") == 0;
        d->attempts = atoi(PQgetvalue(res, 0, 1));
        if (!d->dead_lettered && strcmp(PQgetvalue(res, 0, 0), "retry") != 0)
            rc = ferry__error_set(err, FERRY_ESCHEMA, NULL, "ferry.consume_fail gave an answer "
                               "this library does not know");
    }
    PQclear(res);
    return rc;
}

static int transient(const ferry_consumer *c, ferry_code rc, const ferry_error *e)
{
    return e->retriable || rc == FERRY_ECONN || rc == FERRY_ECOMMIT_UNKNOWN ||
           PQstatus(c->conn) != CONNECTION_OK;
}

/* PostgreSQL refused the data it was given (SQLSTATE class 22, data
 * exception: bad encoding, out of range, \u0000; class 54: too large for
 * an index): the message's fault, not the database's. */
static int data_error(const ferry_error *e)
{
    return strncmp(e->sqlstate, "22", 2) == 0 || strncmp(e->sqlstate, "54", 2) == 0;
}

/* fn's own transaction, through the library's helper. */
static ferry_code helper_tx(ferry_consumer *c, ferry_tx_fn fn, void *arg, ferry_error *err)
{
    int was_down = PQstatus(c->conn) != CONNECTION_OK;
    ferry_code rc = ferry_tx_run(c->conn, &c->tx, fn, arg, NULL, err);
    if (was_down && PQstatus(c->conn) == CONNECTION_OK)
        c->stats.reconnects++;
    return rc;
}

/* Run fn, retrying transient failures — at most TRANSIENT_ATTEMPTS_MAX
 * tries, or until a stop is asked for (*stopped = 1). Other failures come
 * back as they are. own: fn runs its transaction itself (apply_tx);
 * otherwise ferry_tx_run() does. */
static ferry_code run_tx(ferry_consumer *c, ferry_tx_fn fn, int own, void *arg, int *stopped,
                         ferry_error *err)
{
    for (int attempt = 1;; attempt++) {
        ferry_code rc = own ? fn(c->conn, arg, err) : helper_tx(c, fn, arg, err);
        if (rc == FERRY_OK || !transient(c, rc, err) || attempt >= TRANSIENT_ATTEMPTS_MAX)
            return rc;
        c->stats.transient_retries++;
        ferry__log(attempt == 1 ? FERRY_LOG_INFO : FERRY_LOG_DEBUG, "consumer.retry",
                  "consumer %s: %s; retrying", c->name, err->message);
        if (c->stop) {
            *stopped = 1;
            return rc;
        }
        backoff(c, attempt);
    }
}

/* Store the offset after msg: Kafka may now move past it. */
static void store_offset(ferry_consumer *c, const work *w)
{
    if (w->from_held)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, w->msg.topic, w->msg.partition)->offset =
        w->msg.offset + 1;
    /* Refused for a partition this member no longer holds (a rebalance
     * while it applied): the new owner will find the inbox row. */
    if (rd_kafka_offsets_store(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        l->elems[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        c->stats.offsets_stored++;
    rd_kafka_topic_partition_list_destroy(l);
}

/* Store the offsets after ws[0..n), a committed batch in Kafka order:
 * one list and one call for the batch, the last offset of each partition
 * (one call per message cost a list, two locks and a lookup each). */
static void store_offsets(ferry_consumer *c, const work *ws, int n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int i = 0; i < n; i++) {
        if (ws[i].from_held)
            continue;
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(l, ws[i].msg.topic, ws[i].msg.partition);
        if (p == NULL)
            p = rd_kafka_topic_partition_list_add(l, ws[i].msg.topic, ws[i].msg.partition);
        p->offset = ws[i].msg.offset + 1;
    }
    /* A partition this member no longer holds is refused (see
     * store_offset); the others are stored. */
    if (l->cnt > 0 && rd_kafka_offsets_store(c->rk, l) != RD_KAFKA_RESP_ERR__INVALID_ARG) {
        for (int i = 0; i < n; i++) {
            const rd_kafka_topic_partition_t *p =
                ws[i].from_held ? NULL
                                : rd_kafka_topic_partition_list_find(l, ws[i].msg.topic,
                                                                     ws[i].msg.partition);
            if (p != NULL && p->err == RD_KAFKA_RESP_ERR_NO_ERROR)
                c->stats.offsets_stored++;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* After a committed transaction: the test hook that dies right between
 * the database commit and the offset store. Only the test build
 * (-DFERRY_TEST_HOOKS: build/asan, build/vg) has it; the shipped library
 * must hold no raise(SIGKILL) a stray environment variable could reach,
 * and tests/install_check.sh checks that it does not. */
static void after_commit(ferry_consumer *c)
{
#ifdef FERRY_TEST_HOOKS
    c->commits++;
    if (c->kill_after_commits > 0 && c->commits == c->kill_after_commits) {
        ferry__log(FERRY_LOG_WARN, "consumer.test_kill",
                  "consumer %s: killed after commit %ld (FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT)",
                  c->name, c->commits);
        raise(SIGKILL);
    }
#else
    (void)c;
#endif
}

/* What became of a message: done with (its offset may be stored), left
 * for redelivery by a stop, or left for redelivery by a failure that is
 * not the message's, which ferry_consumer_poll() returns. */
typedef enum outcome { O_DONE, O_STOPPED, O_FAILED } outcome;

/*
 * A failed try of w counted by ferry.consume_fail, in a transaction of its
 * own, within bounded attempts: *retry = 1 when the message is to be
 * tried again, 0 when it is dead-lettered now (the attempts reached
 * max_attempts, or permanent: the message itself is bad). The reason may
 * quote anything (a handler's message, jansson's error text cut inside a
 * character): it is stored escaped, valid UTF-8 without a control
 * character (ferry__escape_text). If PostgreSQL refuses the message's data
 * even so, the dead letter is written once more bare — no headers, the
 * payload as hex — so that the message is kept whatever it holds.
 */
static outcome fail_message(ferry_consumer *c, work *w, int permanent, const char *reason,
                            int *retry, ferry_error *e)
{
    char clean[REASON_MAX];
    ferry__escape_text(clean, sizeof clean, reason);
    fail_ctx d = {c, w, clean, permanent, 0, 0, 0};
    int stopped = 0;
    *retry = 0;
    for (int tries = 1;; tries++) {
        ferry_code rc = run_tx(c, fail_fn, 0, &d, &stopped, e);
        if (rc == FERRY_OK)
            break;
        if (stopped)
            return O_STOPPED;
        ferry__log(FERRY_LOG_ERROR, "consumer.dead_letter_failed", "consumer %s: %s",
                  c->name, e->message);
        if (data_error(e) && !d.bare) {
            d.bare = 1;         /* at once: the same data would fail the same way */
            d.permanent = 1;    /* its data is the fault */
            continue;
        }
        if (tries >= SYSTEM_ATTEMPTS_MAX || transient(c, rc, e))
            return O_FAILED;    /* transient: run_tx spent its tries already */
        backoff(c, 20);
        if (c->stop)
            return O_STOPPED;
    }
    after_commit(c);
    if (!d.dead_lettered) {
        ferry__log(FERRY_LOG_INFO, "consumer.handler_failed",
                  "consumer %s: message %s, failure %d of %d: %s", c->name, w->id, d.attempts,
                  c->max_attempts, clean);
        *retry = 1;
        return O_DONE;
    }
    c->stats.dead_lettered++;
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}", "consumer", c->name, "topic",
                          w->msg.topic, "key", w->msg.key, "message_id", w->id, "attempts",
                          d.attempts, "reason", clean);
    ferry__log_json(FERRY_LOG_WARN, "consumer.dead_lettered", f,
                   "consumer %s: message %s dead-lettered after %d attempts: %s", c->name,
                   w->id, d.attempts, clean);
    return O_DONE;
}

/* Poison: dead-lettered at once. */
static outcome dead_letter(ferry_consumer *c, work *w, const char *reason, ferry_error *e)
{
    int retry;
    return fail_message(c, w, 1, reason, &retry, e);
}

/* The handler failed on w with rc (err says why): the failure counted
 * (FERRY_EINVAL: the handler refuses the message for good). *retry as
 * fail_message's. */
static outcome handler_failure(ferry_consumer *c, work *w, ferry_code rc, const ferry_error *err,
                               int *retry, ferry_error *e)
{
    c->stats.handler_failures++;
    char reason[REASON_MAX];
    snprintf(reason, sizeof reason, "%s", err->message);
    return fail_message(c, w, rc == FERRY_EINVAL, reason, retry, e);
}

/* Remember msg's key for a keyed drain; when the list is full, the next
 * drain looks at every held key instead. */
static void due_add(ferry_consumer *c, const work *w)
{
    for (int i = 0; i < c->due_count; i++)
        if (strcmp(c->due[i].key, w->msg.key) == 0 && strcmp(c->due[i].topic, w->msg.topic) == 0)
            return;
    if (c->due_count == DUE_MAX) {
        c->scan_due = 1;
        return;
    }
    due_key *k = &c->due[c->due_count++];
    snprintf(k->topic, sizeof k->topic, "%s", w->msg.topic);
    snprintf(k->key, sizeof k->key, "%s", w->msg.key);
}

/*
 * Apply one message, whatever it takes, within bounded attempts:
 * transient failures are retried, handler failures counted (by
 * consume_fail, which dead-letters the message at max_attempts), the
 * poison dead-lettered. A data error from PostgreSQL on the claim makes
 * the message poison too. Any other failure is tried SYSTEM_ATTEMPTS_MAX
 * times, then returned in *e (O_FAILED).
 */
static void account(ferry_consumer *c, const work *w, verdict v);

static outcome process(ferry_consumer *c, work *w, ferry_error *e)
{
    apply_ctx a = {c, w, V_APPLY, 0, 0};
    int stopped = 0;
    for (int system_failures = 0;;) {
        ferry_code rc = run_tx(c, apply_tx, 1, &a, &stopped, e);
        if (stopped)
            return O_STOPPED;
        if (rc == FERRY_OK)
            break;
        if (a.poisoned) {
            char reason[REASON_MAX];
            snprintf(reason, sizeof reason, "%s", e->message);
            return dead_letter(c, w, reason, e);
        }
        if (!a.handler_failed && data_error(e)) {
            /* PostgreSQL cannot take this message's data: it is poison,
             * whatever the handler would say. */
            snprintf(w->poison, sizeof w->poison, "PostgreSQL refused the message: %s",
                     e->message);
            w->unholdable = 1;
            return dead_letter(c, w, w->poison, e);
        }
        if (!a.handler_failed) {
            /* The claim itself failed for a reason that is not the
             * message's (permissions, a schema change, a database that
             * stays down): no attempt is counted against the message;
             * wait and try again, a bounded number of times. */
            ferry__log(FERRY_LOG_ERROR, "consumer.claim_failed", "consumer %s: %s", c->name,
                      e->message);
            if (++system_failures >= SYSTEM_ATTEMPTS_MAX || transient(c, rc, e))
                return O_FAILED;
            backoff(c, 20);
            if (c->stop)
                return O_STOPPED;
            continue;
        }
        ferry_error herr = *e;
        int retry;
        outcome o = handler_failure(c, w, rc, &herr, &retry, e);
        if (o != O_DONE || !retry)
            return o;
        backoff(c, w->failed_tries);
        if (c->stop)
            return O_STOPPED;
    }
    after_commit(c);
    account(c, w, a.v);
    return O_DONE;
}

/* The counters, logs and keyed drains for a message whose transaction
 * committed with verdict v. */
static void account(ferry_consumer *c, const work *w, verdict v)
{
    switch (v) {
    case V_APPLY_MORE:
        due_add(c, w);
        c->drain_due = 1;
        /* fall through */
    case V_APPLY:
        if (w->marker)
            c->stats.discard_markers++;
        else if (w->from_held)
            c->stats.drained++;
        else
            c->stats.applied++;
        break;
    case V_DUPLICATE:
    case V_LATE:
        if (v == V_DUPLICATE)
            c->stats.duplicates++;
        else
            c->stats.late++;
        if (w->from_held) {
            due_add(c, w);      /* more stale copies, or the next position, may follow */
            c->drain_due = 1;
        }
        if (ferry__log_threshold() >= FERRY_LOG_DEBUG)
            ferry__log(FERRY_LOG_DEBUG, "consumer.skipped",
                      "consumer %s: message %s (%s/%s position %" PRId64 ") skipped: %s",
                      c->name, w->id, w->msg.topic, w->msg.key, w->msg.position,
                      v == V_DUPLICATE ? "already applied" : "position already applied");
        break;
    case V_GAP:
        if (!w->from_held) {
            c->stats.held_gap++;
            ferry__log(FERRY_LOG_INFO, "consumer.gap",
                      "consumer %s: %s/%s position %" PRId64 " held: positions before it "
                      "have not arrived", c->name, w->msg.topic, w->msg.key, w->msg.position);
        }
        break;
    case V_PARKED:
        if (!w->from_held)
            c->stats.held_parked++;
        break;
    }
}

static uint64_t progress(const ferry_consumer *c)
{
    return c->stats.drained + c->stats.discard_markers + c->stats.dead_lettered +
           c->stats.late + c->stats.duplicates;
}

/* Process the held rows in res. Returns FERRY_OK, or the failure that
 * stopped it (in *e). */
static ferry_code drain_rows(ferry_consumer *c, PGresult *res, ferry_error *e)
{
    for (int i = 0; i < PQntuples(res) && !c->stop; i++) {
        work w;
        work_from_held(c, &w, res, i);
        outcome o = process(c, &w, e);
        ferry__consume_work_free(&w);
        if (o == O_FAILED)
            return e->code != FERRY_OK ? e->code : FERRY_EDB;
    }
    return FERRY_OK;
}

static PGresult *held_query(ferry_consumer *c, const due_key *k)
{
    char limit[16];
    snprintf(limit, sizeof limit, "%d", DRAIN_BATCH);
    static const char cols[] = "SELECT consumer, topic, key, seq, message_id, type, "
                               "aggregatetype, payload, headers, kafka_partition, "
                               "kafka_offset, reason, held_at ";
    char sql[400];
    if (k == NULL) {
        snprintf(sql, sizeof sql, "%sFROM ferry.consume_ready($1, max_rows => $2::integer)",
                 cols);
        const char *p[2] = {c->name, limit};
        return PQexecParams(c->conn, sql, 2, NULL, p, NULL, NULL, 0);
    }
    snprintf(sql, sizeof sql, "%sFROM ferry.consume_ready($1, $2, $3, $4::integer)", cols);
    const char *p[4] = {c->name, k->topic, k->key, limit};
    return PQexecParams(c->conn, sql, 4, NULL, p, NULL, NULL, 0);
}

/*
 * Apply held messages that became ready. What an apply made ready (claim
 * said apply_more) is drained by key, at a cost that does not grow with
 * the held backlog; every held key is looked at on a timer and at start,
 * the safety net for keys released from outside (a replay, a discard, a
 * skipped gap) and for a hold that raced an apply. Bounded per call, so
 * that a long backlog does not keep Kafka from being polled.
 */
static ferry_code drain(ferry_consumer *c, ferry_error *e)
{
    c->drain_due = 0;
    if (ferry__now_ms() >= c->next_scan_ms) {
        c->scan_due = 1;
        c->next_scan_ms = ferry__now_ms() + c->held_scan_ms;
    }
    for (int round = 0; round < DRAIN_ROUNDS_MAX && !c->stop; round++) {
        if (PQstatus(c->conn) != CONNECTION_OK)
            return FERRY_OK;    /* the next message's transaction reconnects */
        due_key k;
        int keyed = !c->scan_due && c->due_count > 0;
        if (keyed) {
            k = c->due[--c->due_count];
        } else if (c->scan_due) {
            c->scan_due = 0;
        } else {
            return FERRY_OK;    /* nothing due */
        }
        PGresult *res = held_query(c, keyed ? &k : NULL);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            ferry_error qe;
            ferry_error_from_pg(&qe, c->conn, res, "could not look for held messages");
            ferry__log(FERRY_LOG_WARN, "consumer.drain_failed", "consumer %s: %s", c->name,
                      qe.message);
            PQclear(res);
            return FERRY_OK;    /* the timer tries again */
        }
        uint64_t before = progress(c);
        int n = PQntuples(res);
        ferry_code rc = drain_rows(c, res, e);
        PQclear(res);
        if (rc != FERRY_OK)
            return rc;
        /* A full batch from the scan may have more behind it; a scan that
         * moved nothing must not spin. */
        if (!keyed && n == DRAIN_BATCH && progress(c) != before)
            c->scan_due = 1;
    }
    c->drain_due = c->scan_due || c->due_count > 0;    /* the next poll goes on */
    return FERRY_OK;
}

/* The message comes again on the next poll: Kafka is sent back to it,
 * since the ones after it may be fetched already. */
static void redeliver(ferry_consumer *c, const work *w)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, w->msg.topic, w->msg.partition)->offset =
        w->msg.offset;
    rd_kafka_error_t *kerr = rd_kafka_seek_partitions(c->rk, l, 5000);
    if (kerr != NULL && rd_kafka_error_code(kerr) == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        /* Not confirmed in time (librdkafka before 2.1 reads the timeout
         * as microseconds), not failed: the seek goes on, and the messages
         * fetched behind it are dropped at poll by the partition's version
         * barrier, which the call raised before it returned. */
        ferry__log(FERRY_LOG_DEBUG, "consumer.seek_unconfirmed",
                  "consumer %s: going back to %s [%" PRId32 "] offset %" PRId64
                  " not confirmed yet: %s", c->name, w->msg.topic, w->msg.partition,
                  w->msg.offset, rd_kafka_error_string(kerr));
        rd_kafka_error_destroy(kerr);
    } else if (kerr != NULL) {
        ferry__log(FERRY_LOG_ERROR, "consumer.seek_failed",
                  "consumer %s: could not go back to %s [%" PRId32 "] offset %" PRId64
                  ": %s (the message comes again after a restart or rebalance)", c->name,
                  w->msg.topic, w->msg.partition, w->msg.offset, rd_kafka_error_string(kerr));
        rd_kafka_error_destroy(kerr);
    } else if (l->elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ferry__log(FERRY_LOG_ERROR, "consumer.seek_failed",
                  "consumer %s: could not go back to %s [%" PRId32 "] offset %" PRId64 ": %s",
                  c->name, w->msg.topic, w->msg.partition, w->msg.offset,
                  rd_kafka_err2str(l->elems[0].err));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---------------------------------------------------------------- batches */

/*
 * A batch: up to batch_max messages from Kafka applied in one transaction,
 * so that one WAL flush and one COMMIT serve them all:
 *
 *   BEGIN; claim 1; claim 2; ... claim n     -- one round trip (pipeline)
 *   body 1 (handler, or hold); body 2; ...   -- in Kafka order
 *   COMMIT;
 *   store the offsets of 1 .. n              -- only now
 *
 * Every guarantee of the one-message path holds because each message is
 * still claimed under its key's row lock in the transaction that applies
 * it, and the claims run in the order the messages came: per-key order,
 * the inbox's dedupe, gaps held. The claims of a batch all run before its
 * handlers; nothing a handler does is read by a claim, so that changes no
 * verdict.
 *
 * Isolation of a failure: when anything in the batch fails, the whole
 * transaction rolls back, and the batch goes again in three parts — the
 * messages before the failing one (as a batch), the failing one alone
 * through process() (retries, dead letter, parked key), then the rest
 * (as a batch) — so a poison message is rolled back and dead-lettered
 * alone while the others commit, in their order. A failure that names no
 * message (COMMIT, the connection) sends every message of the batch
 * through process() one by one, where the claim tells what committed.
 * Each failure takes at least one message out of the batches, so a batch
 * of n costs at most 2n transactions. Offsets are stored only after the
 * transaction that applied (or held, or skipped) the message committed,
 * in Kafka order, so a crash anywhere repeats what was not stored and
 * the inbox makes the repeat a no-op.
 */

/* The batch's transaction failed: which message, if one, and why. */
typedef struct batch_failure {
    int index;                  /* the failing message; -1: none in particular */
    int handler_failed;         /* its handler failed (counted as an attempt) */
    int alone;                  /* its handler asked for its own transaction */
    ferry_code rc;
    ferry_error err;
} batch_failure;

/* One try at ws[0..n) in one transaction. FERRY_OK: committed, verdicts
 * in v. Otherwise rolled back, and f says what failed. */
static ferry_code batch_tx(ferry_consumer *c, work *ws, int n, verdict *v, batch_failure *f)
{
    PGconn *conn = c->conn;
    memset(f, 0, sizeof *f);
    f->index = -1;
    ferry_error *err = &f->err;
    if (PQstatus(conn) != CONNECTION_OK) {
        PQreset(conn);
        if (PQstatus(conn) != CONNECTION_OK)
            return f->rc = ferry_error_from_pg(err, conn, NULL, "could not reconnect");
        c->stats.reconnects++;
    }
    /* A message's attempt counts the tries that failed at it, not those
     * a neighbour in its batch failed. */
    for (int i = 0; i < n; i++)
        ws[i].msg.attempt = ws[i].failed_tries + 1;
    int poisoned = 0;
    ferry_code rc = begin_and_claims(c, ws, n, v, &f->index, &poisoned, err);
    for (int i = 0; rc == FERRY_OK && i < n; i++) {
        apply_ctx a = {c, &ws[i], v[i], 0, 0};
        ws[i].in_batch = 1;
        ferry__err_clear(err);
        rc = apply_body(conn, &a, err);
        ws[i].in_batch = 0;
        if (rc == FERRY_OK)
            rc = still_in_transaction(conn, &a, err);
        if (rc != FERRY_OK) {
            f->index = i;
            f->alone = ws[i].alone_asked;
            /* An attempt counted against the message, as process() would. */
            f->handler_failed = a.handler_failed && !f->alone && !transient(c, rc, err);
        }
    }
    if (rc != FERRY_OK) {
        ferry__rollback_quietly(conn);
    } else {
        rc = finish_and_commit(c, ws, n, err);
    }
    if (rc != FERRY_OK) {
        if (f->index >= 0 && !f->alone)
            ws[f->index].failed_tries++;
        for (int i = 0; f->index < 0 && i < n; i++)
            ws[i].failed_tries++;       /* the batch's own failure: each message's try */
    }
    return f->rc = rc;
}

/* Send Kafka back to the first of ws[from..n) in each partition, so that
 * what was not done comes again (a failure, or a stop). */
static void redeliver_rest(ferry_consumer *c, const work *ws, int from, int n)
{
    for (int i = from; i < n; i++) {
        int seen = 0;
        for (int j = from; j < i && !seen; j++)
            seen = ws[j].msg.partition == ws[i].msg.partition &&
                   strcmp(ws[j].msg.topic, ws[i].msg.topic) == 0;
        if (!seen)
            redeliver(c, &ws[i]);
    }
}

/* ws[0..n) one by one through process(), the way the one-message path
 * applies them. Returns the index of the first message not done (n when
 * all were), its outcome in *o. Their offsets are the caller's to store. */
static int one_by_one(ferry_consumer *c, work *ws, int n, outcome *o, ferry_error *e)
{
    *o = O_DONE;
    for (int i = 0; i < n; i++) {
        *o = process(c, &ws[i], e);
        if (*o != O_DONE)
            return i;
    }
    return n;
}

/* The message that failed its batch, alone: what its failure in the batch
 * already told is not asked again. */
static outcome failed_alone(ferry_consumer *c, work *w, const batch_failure *f, ferry_error *e)
{
    if (!f->handler_failed)
        return process(c, w, e);
    int retry;
    outcome o = handler_failure(c, w, f->rc, &f->err, &retry, e);
    if (o != O_DONE || !retry)
        return o;
    backoff(c, w->failed_tries);
    if (c->stop)
        return O_STOPPED;
    return process(c, w, e);
}

/* A batch ws[0..n) committed with verdicts v: counted, each message
 * accounted (the planner says when their offsets are stored). */
static void batch_committed(ferry_consumer *c, work *ws, int n, const verdict *v)
{
    after_commit(c);
    c->stats.batches++;
    c->stats.batch_messages += (uint64_t)n;
    /* A position held in the batch and made ready by a later one of it
     * needs no scan: the claims run in order, each holding what it holds,
     * so the later claim says drain. */
    for (int k = 0; k < n; k++)
        account(c, &ws[k], v[k]);
}

/*
 * Apply ws[0..n), all from Kafka, in batches (see above), as the planner
 * (consume_plan.c) says: it picks each step and when offsets may be
 * stored; this carries the steps out. Returns the index of the first
 * message not done (n when all were), its outcome in *o (O_DONE when all
 * were).
 */
static int apply_batch(ferry_consumer *c, work *ws, int n, outcome *o, ferry_error *e)
{
    verdict *v = c->batch_verdicts;
    bool *poison = c->batch_poison;
    for (int i = 0; i < n; i++)
        poison[i] = ws[i].poison[0] != '\0';
    cplan plan;
    ferry__cplan_init(&plan, n, poison);
    cplan_result r = {0};
    const cplan_result *told = NULL;
    batch_failure failed;           /* how the last run's batch failed */
    memset(&failed, 0, sizeof failed);
    int stored = 0;
    *o = O_DONE;
    for (;;) {
        int ack_to;
        cplan_step s = ferry__cplan_next(&plan, told, c->stop != 0, &ack_to);
        if (ack_to > stored) {
            store_offsets(c, ws + stored, ack_to - stored);
            stored = ack_to;
        }
        r = (cplan_result){.failed_at = -1};
        told = &r;
        switch (s.what) {
        case CPLAN_BATCH: {
            batch_failure f;
            ferry_code rc = batch_tx(c, ws + s.from, s.to - s.from, v, &f);
            if (rc == FERRY_OK) {
                batch_committed(c, ws + s.from, s.to - s.from, v);
                r.ok = true;
                break;
            }
            c->stats.batch_fallbacks++;
            r.failed_at = f.index;
            /* What the failing message goes alone with is what its run's
             * batch said of it, not the retry of the ones before it. */
            if (!s.first)
                break;
            failed = f;
            if (f.err.retriable || transient(c, rc, &f.err))
                c->stats.transient_retries++;
            ferry__log(FERRY_LOG_INFO, "consumer.batch_failed",
                      "consumer %s: a batch of %d rolled back at message %d (%s): %s", c->name,
                      s.to - s.from, f.index,
                      f.alone ? "its handler asks to run alone" : "applied apart",
                      f.err.message);
            break;
        }
        case CPLAN_ONE_BY_ONE:
            r.done = one_by_one(c, ws + s.from, s.to - s.from, o, e);
            break;
        case CPLAN_FAILED_ALONE:
            ws[s.from].alone_asked = 0;
            *o = failed_alone(c, &ws[s.from], &failed, e);
            r.ok = *o == O_DONE;
            break;
        case CPLAN_END:
        default:
            if (s.from < n && *o == O_DONE)
                *o = O_STOPPED;
            return s.from;
        }
    }
}

/* Is w's partition still assigned to this member (assignment: from
 * rd_kafka_assignment())? */
static int assigned(const rd_kafka_topic_partition_list_t *assignment, const work *w)
{
    for (int i = 0; i < assignment->cnt; i++)
        if (assignment->elems[i].partition == w->msg.partition &&
            strcmp(assignment->elems[i].topic, w->msg.topic) == 0)
            return 1;
    return 0;
}

/*
 * Partitions were revoked while a batch was being gathered: its messages
 * of partitions this member no longer holds are let go, unapplied — their
 * offsets were not stored, so the next owner gets them, in their order.
 * Returns how many are left in ws.
 */
static int drop_revoked(ferry_consumer *c, work *ws, int n)
{
    rd_kafka_topic_partition_list_t *assignment = NULL;
    if (rd_kafka_assignment(c->rk, &assignment) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        assignment = rd_kafka_topic_partition_list_new(0);   /* none: let all go */
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (assigned(assignment, &ws[i])) {
            /* Not a plain struct copy: the message's id, key and type
             * point into its slot's own buffers, and the next message
             * moved would overwrite them (a message claimed under
             * another's key). */
            if (kept != i)
                ferry__consume_work_move(&ws[kept], &ws[i]);
            kept++;
        } else {
            rd_kafka_message_t *rkm = ws[i].rkm;
            ferry__consume_work_free(&ws[i]);
            rd_kafka_message_destroy(rkm);
            c->stats.batch_dropped++;
        }
    }
    rd_kafka_topic_partition_list_destroy(assignment);
    return kept;
}

/*
 * Gather a batch that starts with first: what else has arrived, up to
 * batch_max messages, waiting at most batch_ms for more; then apply it.
 * An error event met on the way ends the gathering and is returned in
 * *event for the caller to handle after the batch.
 */
static ferry_code poll_batch(ferry_consumer *c, rd_kafka_message_t *first,
                             rd_kafka_message_t **event, ferry_error *e)
{
    work *ws = c->batch;
    int n = 0;
    unsigned gen = c->revoke_gen;
    int64_t deadline = ferry__now_ms() + c->batch_ms;
    rd_kafka_message_t *rkm = first;
    *event = NULL;
    for (;;) {
        if (rkm != NULL) {
            rd_kafka_headers_t *hdrs = NULL;
            if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
                hdrs = NULL;
            c->stats.received++;
            ferry__consume_intake(&ws[n], rkm, rd_kafka_topic_name(rkm->rkt), hdrs,
                                  c->max_payload);
            n++;
            if (n >= c->batch_max)
                break;
#ifdef FERRY_TEST_HOOKS
            /* Test hook: say (by making a file, once) that a batch is in
             * hand and waiting for more, for a test that rebalances then. */
            if (c->gather_file != NULL && c->batch_ms > 0) {
                FILE *note = fopen(c->gather_file, "w");
                if (note != NULL)
                    fclose(note);
                c->gather_file = NULL;
            }
#endif
        }
        if (c->stop)
            break;
        /* Waits in slices, so that a stop is seen soon. */
        int64_t left = deadline - ferry__now_ms();
        rkm = rd_kafka_consumer_poll(c->rk, left > 100 ? 100 : left > 0 ? (int)left : 0);
        if (c->revoke_gen != gen) {
            n = drop_revoked(c, ws, n);
            gen = c->revoke_gen;
        }
        if (rkm == NULL && left > 100)
            continue;
        if (rkm == NULL)
            break;
        if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            *event = rkm;
            break;
        }
    }

    outcome o = O_DONE;
    int done = apply_batch(c, ws, n, &o, e);
    if (done < n)
        redeliver_rest(c, ws, done, n);
    for (int i = 0; i < n; i++) {
        rd_kafka_message_t *m = ws[i].rkm;
        ferry__consume_work_free(&ws[i]);
        rd_kafka_message_destroy(m);
    }
    if (o == O_FAILED)
        return e->code != FERRY_OK ? e->code : FERRY_EDB;
    return FERRY_OK;
}

/* ---------------------------------------------------------------- Kafka */

/* "topic[p]" for each partition of l, as a JSON array. */
static json_t *partitions_json(const rd_kafka_topic_partition_list_t *l)
{
    json_t *a = json_array();
    for (int i = 0; l != NULL && i < l->cnt; i++) {
        char one[FERRY_TOPIC_MAX + 16];
        snprintf(one, sizeof one, "%s[%" PRId32 "]", l->elems[i].topic, l->elems[i].partition);
        json_array_append_new(a, json_string(one));
    }
    return a;
}

/*
 * What is held after a change: under the eager protocol the change says
 * it (the whole new assignment, or nothing); under the cooperative one
 * it moves only parts, added to or taken from what was held. Kept here,
 * not asked of rd_kafka_assignment(): called from the rebalance callback
 * while rd_kafka_consumer_close() runs it, that waits for a reply that
 * never comes (a hang seen in test_consume). Returns -1 out of memory
 * (the log line then says nothing of what is held).
 */
static int note_held(ferry_consumer *c, const rd_kafka_topic_partition_list_t *parts,
                     int assign, int cooperative)
{
    if (!cooperative || c->held == NULL) {
        if (c->held != NULL)
            rd_kafka_topic_partition_list_destroy(c->held);
        c->held = !cooperative && assign ? rd_kafka_topic_partition_list_copy(parts)
                                         : rd_kafka_topic_partition_list_new(parts->cnt + 1);
        if (c->held == NULL)
            return -1;
        if (!cooperative)
            return 0;
    }
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &parts->elems[i];
        int there = rd_kafka_topic_partition_list_find(c->held, p->topic, p->partition) != NULL;
        if (assign && !there)
            rd_kafka_topic_partition_list_add(c->held, p->topic, p->partition);
        else if (!assign && there)
            rd_kafka_topic_partition_list_del(c->held, p->topic, p->partition);
    }
    rd_kafka_topic_partition_list_sort(c->held, NULL, NULL);
    return 0;
}

/*
 * One JSON event per assignment change (consumer.assigned, .revoked,
 * .lost): the partitions that moved, and those held after the change.
 */
static void log_assignment(ferry_consumer *c, const char *event, const char *what,
                           const rd_kafka_topic_partition_list_t *parts, int assign,
                           int cooperative)
{
    const rd_kafka_topic_partition_list_t *held =
        note_held(c, parts, assign, cooperative) == 0 ? c->held : NULL;
    json_t *f = json_pack("{s:s, s:s, s:o, s:i, s:o}", "consumer", c->name, "change", what,
                          "partitions", partitions_json(parts), "held_count",
                          held ? held->cnt : -1, "held", partitions_json(held));
    ferry__log_json(FERRY_LOG_INFO, event, f, "consumer %s: %d partitions %s, %d held",
                   c->name, parts->cnt, what, held ? held->cnt : -1);
}

/* Take (assign) or give back parts as the rebalance protocol in use
 * wants: under the cooperative one, those partitions only; under the
 * eager one, the whole assignment (none when giving back). */
static void reassign(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int assign,
                     int cooperative)
{
    if (cooperative) {
        rd_kafka_error_t *e = assign ? rd_kafka_incremental_assign(rk, parts)
                                     : rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, assign ? parts : NULL);
    }
}

/* How long the revoke callback waits for its commit. */
#define REVOKE_COMMIT_MS 10000

/*
 * Commit the stored offsets and wait for the answer, at most timeout_ms.
 * A synchronous rd_kafka_commit() in the revoke callback waits for ever
 * when the callback runs inside rd_kafka_consumer_close() and no answer
 * comes (seen in test_consume: a child stuck there 14 minutes; librdkafka
 * #4041 is the same for other blocking calls in that callback). Past the
 * bound the next owner may get the messages again, and the inbox skips
 * what was applied.
 */
static rd_kafka_resp_err_t commit_bounded(rd_kafka_t *rk, int timeout_ms)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    if (q == NULL)
        return RD_KAFKA_RESP_ERR__CRIT_SYS_RESOURCE;
    rd_kafka_resp_err_t err = rd_kafka_commit_queue(rk, NULL, q, NULL, NULL);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
        if (ev == NULL) {
            err = RD_KAFKA_RESP_ERR__TIMED_OUT;
        } else {
            err = rd_kafka_event_error(ev);
            rd_kafka_event_destroy(ev);
        }
    }
    rd_kafka_queue_destroy(q);
    return err;
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    ferry_consumer *c = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        c->stats.assigned += (uint64_t)parts->cnt;
        reassign(rk, parts, 1, cooperative);
        log_assignment(c, "consumer.assigned", "assigned", parts, 1, cooperative);
        return;
    }
    /* Revoked (or lost): what was applied is committed before the
     * partitions go, so the next owner starts after it. No message is in
     * hand here: this runs inside rd_kafka_consumer_poll(), between
     * messages. */
    c->stats.revoked += (uint64_t)parts->cnt;
    c->revoke_gen++;            /* a batch being gathered lets their messages go */
    int lost = rd_kafka_assignment_lost(rk);
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !lost) {
        rd_kafka_resp_err_t cerr = commit_bounded(rk, REVOKE_COMMIT_MS);
        if (cerr != RD_KAFKA_RESP_ERR_NO_ERROR && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
            ferry__log(FERRY_LOG_WARN, "consumer.commit_failed",
                      "consumer %s: could not commit offsets before the rebalance: %s "
                      "(the next owner will skip what was applied)", c->name,
                      rd_kafka_err2str(cerr));
    }
    reassign(rk, parts, 0, cooperative);
    log_assignment(c, lost ? "consumer.lost" : "consumer.revoked", lost ? "lost" : "revoked",
                   parts, 0, cooperative);
}

/* librdkafka's own log lines, as ferry's JSON lines. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int ours = level <= 3 ? FERRY_LOG_ERROR : level == 4 ? FERRY_LOG_WARN
             : level <= 6 ? FERRY_LOG_INFO : FERRY_LOG_DEBUG;
    if (ours > ferry__log_threshold())
        return;
    json_t *f = json_pack("{s:s, s:s}", "client", rd_kafka_name(rk), "facility", fac);
    ferry__log_json(ours, "kafka.log", f, "%s", buf);
}

static ferry_code kafka_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                            ferry_error *err)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return ferry__error_set(err, FERRY_EINVAL, "kafka_props",
                             "Kafka property %s=%s: %s", name, value, errstr);
    return FERRY_OK;
}

/* Properties that the guarantee depends on: a user may not change them. */
static int fixed_property(const char *name)
{
    return strcmp(name, "enable.auto.offset.store") == 0 ||
           strcmp(name, "group.id") == 0 || strcmp(name, "enable.partition.eof") == 0;
}

static ferry_code kafka_new(ferry_consumer *c, const ferry_consumer_conf *conf, ferry_error *err)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    ferry_code rc;
    if ((rc = kafka_set(kc, "bootstrap.servers", conf->kafka, err)) != FERRY_OK ||
        (rc = kafka_set(kc, "group.id", conf->group ? conf->group : conf->name, err)) !=
            FERRY_OK ||
        (rc = kafka_set(kc, "enable.auto.offset.store", "false", err)) != FERRY_OK ||
        (rc = kafka_set(kc, "enable.auto.commit", "true", err)) != FERRY_OK ||
        /* Commit often: progress not committed before a crash or a
         * rebalance is redelivered (and skipped, at the cost of a round
         * trip per message). */
        (rc = kafka_set(kc, "auto.commit.interval.ms", "1000", err)) != FERRY_OK ||
        (rc = kafka_set(kc, "auto.offset.reset", "earliest", err)) != FERRY_OK ||
        (rc = kafka_set(kc, "enable.partition.eof", "false", err)) != FERRY_OK ||
        (rc = kafka_set(kc, "client.id", c->name, err)) != FERRY_OK)
        goto out_conf;
    for (const char *const *p = conf->kafka_props; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        char name[256];
        if (eq == NULL || eq == *p || (size_t)(eq - *p) >= sizeof name) {
            rc = ferry__error_set(err, FERRY_EINVAL, "kafka_props",
                               "Kafka property \"%.100s\" is not name=value", *p);
            goto out_conf;
        }
        memcpy(name, *p, (size_t)(eq - *p));
        name[eq - *p] = '\0';
        if (fixed_property(name)) {
            rc = ferry__error_set(err, FERRY_EINVAL, "kafka_props",
                               "Kafka property %s is set by the consumer and may not be "
                               "changed (the inbox guarantee depends on it)", name);
            goto out_conf;
        }
        if ((rc = kafka_set(kc, name, eq + 1, err)) != FERRY_OK)
            goto out_conf;
    }
    rd_kafka_conf_set_opaque(kc, c);
    rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
    rd_kafka_conf_set_log_cb(kc, kafka_log);

    char errstr[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, sizeof errstr);
    if (c->rk == NULL) {
        rc = ferry__error_set(err, FERRY_EKAFKA, NULL, "could not create the Kafka consumer: %s",
                           errstr);
        goto out_conf;
    }
    /* kc belongs to c->rk now. */
    rd_kafka_poll_set_consumer(c->rk);

    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)conf->topic_count);
    for (size_t i = 0; i < conf->topic_count; i++)
        rd_kafka_topic_partition_list_add(topics, conf->topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(c->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = ferry__error_set(err, FERRY_EKAFKA, NULL, "could not subscribe: %s",
                           rd_kafka_err2str(kerr));
        rd_kafka_destroy(c->rk);
        c->rk = NULL;
        return rc;
    }
    return FERRY_OK;

out_conf:
    rd_kafka_conf_destroy(kc);
    return rc;
}

/* ---------------------------------------------------------------- public */

static ferry_code check_conf(const ferry_consumer_conf *conf, ferry_error *err)
{
    if (conf == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "conf", "the consumer configuration is NULL");
    if (!name_ok(conf->name, NAME_MAX_LEN))
        return ferry__error_set(err, FERRY_EINVAL, "name",
                             "consumer name \"%.64s\" must be 1..%d of [A-Za-z0-9._-]",
                             conf->name ? conf->name : "(null)", NAME_MAX_LEN);
    if (conf->group != NULL && !name_ok(conf->group, 255))
        return ferry__error_set(err, FERRY_EINVAL, "group",
                             "consumer group \"%.64s\" must be 1..255 of [A-Za-z0-9._-]",
                             conf->group);
    if (conf->db == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "db", "no database conninfo given");
    if (conf->kafka == NULL || *conf->kafka == '\0')
        return ferry__error_set(err, FERRY_EINVAL, "kafka", "no Kafka bootstrap servers given");
    if (conf->handler == NULL)
        return ferry__error_set(err, FERRY_EINVAL, "handler", "no handler given");
    if (conf->topics == NULL || conf->topic_count == 0 || conf->topic_count > TOPICS_MAX)
        return ferry__error_set(err, FERRY_EINVAL, "topics", "give 1..%d topics", TOPICS_MAX);
    for (size_t i = 0; i < conf->topic_count; i++) {
        if (!name_ok(conf->topics[i], FERRY_TOPIC_MAX))
            return ferry__error_set(err, FERRY_EINVAL, "topics",
                                 "topic \"%.64s\" is not a valid Kafka topic name",
                                 conf->topics[i] ? conf->topics[i] : "(null)");
    }
    if (conf->max_attempts < 0 || conf->max_attempts > MAX_ATTEMPTS_LIMIT)
        return ferry__error_set(err, FERRY_EINVAL, "max_attempts",
                             "max_attempts must be 0..%d", MAX_ATTEMPTS_LIMIT);
    if (conf->backoff_base_ms < 0 || conf->backoff_max_ms < 0 || conf->held_scan_ms < 0 ||
        conf->backoff_base_ms > 600000 || conf->backoff_max_ms > 600000 ||
        conf->held_scan_ms > 3600000)
        return ferry__error_set(err, FERRY_EINVAL, "backoff_ms",
                             "backoff and scan intervals must be 0..600000 ms");
    if (conf->batch_max < 0 || conf->batch_max > BATCH_MAX_LIMIT)
        return ferry__error_set(err, FERRY_EINVAL, "batch_max", "batch_max must be 0..%d",
                             BATCH_MAX_LIMIT);
    if (conf->batch_ms < 0 || conf->batch_ms > BATCH_MS_LIMIT)
        return ferry__error_set(err, FERRY_EINVAL, "batch_ms", "batch_ms must be 0..%d",
                             BATCH_MS_LIMIT);
    if (conf->isolation != FERRY_READ_COMMITTED && conf->isolation != FERRY_REPEATABLE_READ &&
        conf->isolation != FERRY_SERIALIZABLE)
        return ferry__error_set(err, FERRY_EINVAL, "isolation", "unknown isolation level");
    return FERRY_OK;
}

ferry_code ferry_consumer_new(const ferry_consumer_conf *conf, ferry_consumer **out,
                              ferry_error *err)
{
    ferry_error local;
    ferry_error *e = err ? err : &local;
    ferry__err_clear(e);
    ferry_code rc = check_conf(conf, e);
    if (rc != FERRY_OK)
        return rc;
    if (out == NULL)
        return ferry__error_set(e, FERRY_EINVAL, "out", "ferry_consumer_new: out is NULL");

    ferry_consumer *c = calloc(1, sizeof *c);
    if (c == NULL)
        return ferry__error_set(e, FERRY_ENOMEM, NULL, "out of memory");
    snprintf(c->name, sizeof c->name, "%s", conf->name);
    c->handler = conf->handler;
    c->handler_arg = conf->handler_arg;
    c->max_attempts = conf->max_attempts ? conf->max_attempts : DEFAULT_MAX_ATTEMPTS;
    c->backoff_base_ms = conf->backoff_base_ms ? conf->backoff_base_ms : DEFAULT_BACKOFF_BASE_MS;
    c->backoff_max_ms = conf->backoff_max_ms ? conf->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_base_ms)
        c->backoff_max_ms = c->backoff_base_ms;
    c->held_scan_ms = conf->held_scan_ms ? conf->held_scan_ms : DEFAULT_HELD_SCAN_MS;
    c->first_any = conf->first_position_any != 0;
    c->max_payload = conf->max_payload ? conf->max_payload : FERRY_DEFAULT_MAX_PAYLOAD;
    /* One attempt per ferry_tx_run(): this file decides what to retry,
     * the helper still resolves a COMMIT whose reply was lost. */
    c->tx = (ferry_tx_opts){.isolation = conf->isolation, .max_attempts = 1};
    c->drain_due = 1;       /* held messages left by an earlier run */
    c->scan_due = 1;
    c->batch_max = conf->batch_max ? conf->batch_max : DEFAULT_BATCH_MAX;
    c->batch_ms = conf->batch_ms;

#ifdef FERRY_TEST_HOOKS
    /* Test hook (tests/test_consume.c): die by SIGKILL right after the Nth
     * database commit, before the offset is stored — the crash the inbox
     * exists for. Test build only, see after_commit(). */
    const char *hook = getenv("FERRY_CONSUMER_TEST_KILL_AFTER_COMMIT");
    if (hook != NULL)
        c->kill_after_commits = strtol(hook, NULL, 10);
    /* Test hook: the batch size of a consumer whose configuration leaves
     * it at the default, so that a whole test binary runs with batches
     * and without (tests/test_consume.c runs itself both ways). */
    c->gather_file = getenv("FERRY_CONSUMER_TEST_GATHER_FILE");
    const char *batch_hook = getenv("FERRY_CONSUMER_TEST_BATCH_MAX");
    if (batch_hook != NULL && conf->batch_max == 0) {
        long b = strtol(batch_hook, NULL, 10);
        if (b >= 1 && b <= BATCH_MAX_LIMIT)
            c->batch_max = (int)b;
    }
#endif
    if (c->batch_max > 1) {
        c->batch = calloc((size_t)c->batch_max, sizeof *c->batch);
        c->batch_verdicts = calloc((size_t)c->batch_max, sizeof *c->batch_verdicts);
        c->batch_poison = calloc((size_t)c->batch_max, sizeof *c->batch_poison);
        if (c->batch == NULL || c->batch_verdicts == NULL || c->batch_poison == NULL) {
            rc = ferry__error_set(e, FERRY_ENOMEM, NULL, "out of memory");
            c->conn = NULL;
            goto out_conn;
        }
    }

    c->conn = ferry__connect_utf8(conf->db);
    if (PQstatus(c->conn) != CONNECTION_OK) {
        rc = ferry_error_from_pg(e, c->conn, NULL, "could not connect to the database");
        goto out_conn;
    }
    int version = 0;
    if ((rc = ferry_schema_version(c->conn, &version, e)) != FERRY_OK)
        goto out_conn;
    if (version != ferry_schema_version_known()) {
        rc = ferry__error_set(e, FERRY_ESCHEMA, NULL,
                           "the database's ferry schema is at version %d, this library "
                           "needs %d: run ferry_migrate() or `ferry-relay migrate`",
                           version, ferry_schema_version_known());
        goto out_conn;
    }
    /* May this session use the name? (ferry.consumer_owner, schema 8.) A
     * role that may not would otherwise fail on every message; say so
     * now, naming the cause. Reads one held row at most. */
    const char *np[1] = {c->name};
    PGresult *res = PQexecParams(c->conn,
                                 "SELECT count(*) FROM ferry.consume_ready($1, max_rows => 1)",
                                 1, NULL, np, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char context[NAME_MAX_LEN + 64];
        snprintf(context, sizeof context, "consumer \"%s\" may not consume", c->name);
        rc = ferry_error_from_pg(e, c->conn, res, context);
        PQclear(res);
        goto out_conn;
    }
    PQclear(res);
    if ((rc = kafka_new(c, conf, e)) != FERRY_OK)
        goto out_conn;
    *out = c;
    return FERRY_OK;

out_conn:
    PQfinish(c->conn);
    free(c->batch);
    free(c->batch_verdicts);
    free(c->batch_poison);
    free(c);
    return rc;
}

ferry_code ferry_consumer_poll(ferry_consumer *c, int timeout_ms, ferry_error *err)
{
    ferry_error local;
    ferry_error *e = err ? err : &local;
    ferry__err_clear(e);
    if (c == NULL)
        return ferry__error_set(e, FERRY_EINVAL, "c", "ferry_consumer_poll: c is NULL");
    if (c->closed)
        return ferry__error_set(e, FERRY_ESTATE, NULL, "the consumer is closed");

    ferry_code drc;
    if ((c->drain_due || ferry__now_ms() >= c->next_scan_ms) && (drc = drain(c, e)) != FERRY_OK)
        return drc;
    if (c->stop)
        return FERRY_OK;

    rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c->rk, c->drain_due ? 0 : timeout_ms);
    if (rkm == NULL)
        return FERRY_OK;
    if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        char fatal[512];
        rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(c->rk, fatal, sizeof fatal);
        ferry_code rc = FERRY_OK;
        if (ferr != RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = ferry__error_set(e, FERRY_EKAFKA, NULL, "fatal Kafka error: %s", fatal);
        else
            ferry__log(FERRY_LOG_WARN, "consumer.kafka_error", "consumer %s: %s", c->name,
                      rd_kafka_message_errstr(rkm));
        rd_kafka_message_destroy(rkm);
        return rc;
    }
    if (c->batch_max > 1) {
        rd_kafka_message_t *event = NULL;
        ferry_code brc = poll_batch(c, rkm, &event, e);
        if (event != NULL) {
            char fatal[512];
            if (brc == FERRY_OK &&
                rd_kafka_fatal_error(c->rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR)
                brc = ferry__error_set(e, FERRY_EKAFKA, NULL, "fatal Kafka error: %s", fatal);
            else
                ferry__log(FERRY_LOG_WARN, "consumer.kafka_error", "consumer %s: %s", c->name,
                          rd_kafka_message_errstr(event));
            rd_kafka_message_destroy(event);
        }
        if (brc != FERRY_OK)
            return brc;
        if (c->drain_due && !c->stop)
            return drain(c, e);
        return FERRY_OK;
    }
    c->stats.received++;
    work w;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        hdrs = NULL;
    ferry__consume_intake(&w, rkm, rd_kafka_topic_name(rkm->rkt), hdrs, c->max_payload);
    outcome o = process(c, &w, e);
    if (o == O_DONE)
        store_offset(c, &w);
    else if (o == O_FAILED)
        redeliver(c, &w);
    ferry__consume_work_free(&w);
    rd_kafka_message_destroy(rkm);
    if (o == O_FAILED)
        return e->code != FERRY_OK ? e->code : FERRY_EDB;
    if (c->drain_due && !c->stop)
        return drain(c, e);
    return FERRY_OK;
}

ferry_code ferry_consumer_run(ferry_consumer *c, ferry_error *err)
{
    ferry_error local;
    ferry_error *e = err ? err : &local;
    ferry_code rc = FERRY_OK;
    while (c != NULL && !c->stop && rc == FERRY_OK)
        rc = ferry_consumer_poll(c, 100, e);
    if (c == NULL)
        return ferry__error_set(e, FERRY_EINVAL, "c", "ferry_consumer_run: c is NULL");
    ferry_error cerr;
    ferry_code crc = ferry_consumer_close(c, &cerr);
    if (rc == FERRY_OK && crc != FERRY_OK) {
        *e = cerr;
        rc = crc;
    }
    return rc;
}

void ferry_consumer_stop(ferry_consumer *c)
{
    if (c != NULL)
        c->stop = 1;
}

ferry_code ferry_consumer_close(ferry_consumer *c, ferry_error *err)
{
    ferry_error local;
    ferry_error *e = err ? err : &local;
    ferry__err_clear(e);
    if (c == NULL || c->closed)
        return FERRY_OK;
    c->closed = 1;
    ferry_code rc = FERRY_OK;
    /* Leaves the group; the revoke callback commits the stored offsets. */
    rd_kafka_resp_err_t kerr = rd_kafka_consumer_close(c->rk);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
        rc = ferry__error_set(e, FERRY_EKAFKA, NULL, "could not close the Kafka consumer: %s",
                           rd_kafka_err2str(kerr));
    rd_kafka_destroy(c->rk);
    c->rk = NULL;
    PQfinish(c->conn);
    c->conn = NULL;
    return rc;
}

void ferry_consumer_destroy(ferry_consumer *c)
{
    if (c == NULL)
        return;
    ferry_consumer_close(c, NULL);
    if (c->held != NULL)
        rd_kafka_topic_partition_list_destroy(c->held);
    free(c->batch);
    free(c->batch_verdicts);
    free(c->batch_poison);
    free(c);
}

int ferry_consumer_partitions(ferry_consumer *c, ferry_partition *out, size_t max)
{
    if (c == NULL || c->rk == NULL || (out == NULL && max > 0))
        return -1;
    rd_kafka_topic_partition_list_t *held = NULL;
    if (rd_kafka_assignment(c->rk, &held) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    rd_kafka_topic_partition_list_sort(held, NULL, NULL);
    int n = held->cnt;
    for (int i = 0; i < n && (size_t)i < max; i++) {
        snprintf(out[i].topic, sizeof out[i].topic, "%s", held->elems[i].topic);
        out[i].partition = held->elems[i].partition;
    }
    rd_kafka_topic_partition_list_destroy(held);
    return n;
}

void ferry_consumer_stats_get(const ferry_consumer *c, ferry_consumer_stats *out)
{
    if (c == NULL || out == NULL)
        return;
    *out = c->stats;
}
