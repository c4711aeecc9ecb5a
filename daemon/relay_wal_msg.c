/*
 * relay_wal_msg.c — reading the replication stream: CopyData frames
 * (PostgreSQL's streaming replication protocol), pgoutput's messages
 * (protocol version 1) and the content emit writes (schemas/011_wal.sql).
 *
 * Pure and hostile-proof: every length is checked against what is left
 * before it is used, every number against its range, and a message that
 * does not parse is refused with what is wrong, never guessed at. The
 * content in particular can come from any role of the database
 * (pg_logical_emit_message is open to all): it must carry the database's
 * wal_token, which only the relay and the owner can read.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "relay_wal.h"
#include "../lib/internal.h"

/* PostgreSQL's timestamps count microseconds from 2000-01-01 UTC. */
#define PG_EPOCH_UNIX_US INT64_C(946684800000000)

/* What is wrong into why; always -1, so that a check can return it. */
__attribute__((format(printf, 3, 4)))
static int refuse(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int wal_frame_parse(const char *buf, size_t len, wal_frame *out, char *why, size_t whylen)
{
    const unsigned char *p = (const unsigned char *)buf;
    if (len < 1)
        return refuse(why, whylen, "empty CopyData message");
    wal_frame f = {.kind = (char)p[0]};
    if (p[0] == 'w') {
        /* XLogData: start, end of WAL, send time, then the data. */
        if (len < 25)
            return refuse(why, whylen, "XLogData of %zu bytes, shorter than its 25-byte header",
                          len);
        f.start = get64(p + 1);
        f.wal_end = get64(p + 9);
        f.data = buf + 25;
        f.len = len - 25;
    } else if (p[0] == 'k') {
        /* Primary keepalive: end of WAL, send time, reply requested. */
        if (len < 18)
            return refuse(why, whylen, "keepalive of %zu bytes, not 18", len);
        f.wal_end = get64(p + 1);
        f.reply = p[17] != 0;
    } else {
        return refuse(why, whylen, "unknown CopyData message type 0x%02x", p[0]);
    }
    *out = f;
    return 0;
}

/* A pgoutput time (microseconds since 2000-01-01) as Unix microseconds,
 * or -1 when it cannot be one: past what int64 holds once moved to 1970
 * (a real server sends no such time; `infinity` is INT64_MAX). */
static int pg_time_us(uint64_t raw, int64_t *out)
{
    int64_t t = (int64_t)raw;
    if (t > INT64_MAX - PG_EPOCH_UNIX_US)
        return -1;
    *out = t + PG_EPOCH_UNIX_US;
    return 0;
}

int wal_pgout_parse(const char *data, size_t len, wal_pgout *out, char *why, size_t whylen)
{
    const unsigned char *p = (const unsigned char *)data;
    if (len < 1)
        return refuse(why, whylen, "empty pgoutput message");
    wal_pgout m = {.tag = (char)p[0]};
    switch (p[0]) {
    case 'B':   /* final LSN, commit time, xid */
        if (len != 21)
            return refuse(why, whylen, "BEGIN of %zu bytes, not 21", len);
        if (pg_time_us(get64(p + 9), &m.commit_us) != 0)
            return refuse(why, whylen, "BEGIN with a commit time out of range");
        m.xid = get32(p + 17);
        break;
    case 'C':   /* flags, commit LSN, end LSN, commit time */
        if (len != 26)
            return refuse(why, whylen, "COMMIT of %zu bytes, not 26", len);
        m.commit_lsn = get64(p + 2);
        m.end_lsn = get64(p + 10);
        if (pg_time_us(get64(p + 18), &m.commit_us) != 0)
            return refuse(why, whylen, "COMMIT with a commit time out of range");
        if (m.end_lsn == 0 || m.end_lsn < m.commit_lsn)
            return refuse(why, whylen, "COMMIT ends at %" PRIu64 ", before it starts (%" PRIu64 ")",
                          m.end_lsn, m.commit_lsn);
        break;
    case 'M': { /* flags, LSN, prefix\0, length, content */
        if (len < 11)
            return refuse(why, whylen, "logical message of %zu bytes, shorter than its header",
                          len);
        m.transactional = (p[1] & 1) != 0;
        m.lsn = get64(p + 2);
        const unsigned char *nul = memchr(p + 10, '\0', len - 10);
        if (nul == NULL)
            return refuse(why, whylen, "logical message at %" PRIu64 ": its prefix has no end",
                          m.lsn);
        size_t at = (size_t)(nul - p) + 1;
        if (len - at < 4)
            return refuse(why, whylen, "logical message at %" PRIu64 ": no content length", m.lsn);
        uint32_t n = get32(p + at);
        if ((size_t)n != len - at - 4)
            return refuse(why, whylen, "logical message at %" PRIu64 ": content length %" PRIu32
                          " but %zu bytes follow", m.lsn, n, len - at - 4);
        m.prefix = data + 10;
        m.content = data + at + 4;
        m.content_len = n;
        break;
    }
    default:
        break;  /* relations, types, rows, origins: not ours to read here */
    }
    *out = m;
    return 0;
}

void wal_scratch_free(wal_scratch *s)
{
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

/* The next space- or newline-ended field of the header line. */
static const char *field(const char **at, const char *end, size_t *n)
{
    const char *s = *at;
    const char *e = s;
    while (e < end && *e != ' ' && *e != '\n')
        e++;
    if (e == end)
        return NULL;
    *n = (size_t)(e - s);
    *at = e + 1;
    return s;
}

static int number(const char *s, size_t n, long long max, long long *out)
{
    if (n == 0 || n > 19 || (n > 1 && s[0] == '0'))
        return -1;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (max - (s[i] - '0')) / 10)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int wal_msg_parse(const char *content, size_t len, const char *token, long max_payload,
                  wal_scratch *scratch, wal_msg *out, char *why, size_t whylen)
{
    const char *at = content, *end = content + len;
    const char *f[10];
    size_t n[10];
    /* Version, token, id, seq, created, and five lengths. */
    for (int i = 0; i < 10; i++) {
        f[i] = field(&at, end, &n[i]);
        if (f[i] == NULL || (i < 9 && at[-1] != ' ') || (i == 9 && at[-1] != '\n'))
            return refuse(why, whylen, "content: the header line is cut short at field %d", i + 1);
    }
    if (n[0] != 1 || f[0][0] != '1')
        return refuse(why, whylen, "content: version \"%.*s\" is not 1", (int)(n[0] > 8 ? 8 : n[0]),
                      f[0]);
    if (n[1] != strlen(token) || memcmp(f[1], token, n[1]) != 0)
        return refuse(why, whylen, "content: the token is not this database's wal_token (not "
                      "written by ferry.emit)");
    char idtext[FERRY_UUID_STRING_SIZE];
    if (n[2] != FERRY_UUID_STRING_SIZE - 1)
        return refuse(why, whylen, "content: id is not a UUID");
    memcpy(idtext, f[2], n[2]);
    idtext[n[2]] = '\0';
    wal_msg m = {0};
    if (ferry_uuid_parse(idtext, &m.id) != FERRY_OK)
        return refuse(why, whylen, "content: id is not a UUID");
    long long seq, created, lens[5];
    if (number(f[3], n[3], INT64_MAX, &seq) != 0 || seq < 1)
        return refuse(why, whylen, "content: seq is not a position");
    if (number(f[4], n[4], INT64_MAX, &created) != 0)
        return refuse(why, whylen, "content: created is not a time");
    static const char *const names[5] = {"topic", "key", "aggregate type", "type", "headers"};
    /* Headers: emit limits its input to 64 KiB, and the canonical text
     * it writes can be longer. */
    static const long long maxes[5] = {249, 1024, 255, 255, 1048576};
    size_t total = 0;
    for (int i = 0; i < 5; i++) {
        if (number(f[5 + i], n[5 + i], maxes[i], &lens[i]) != 0)
            return refuse(why, whylen, "content: the length of %s is not a number up to %lld",
                          names[i], maxes[i]);
        total += (size_t)lens[i];
    }
    size_t rest = (size_t)(end - at);
    if (total > rest)
        return refuse(why, whylen, "content: its fields need %zu bytes, %zu are left", total, rest);
    size_t payload_len = rest - total;
    if (max_payload > 0 && payload_len > (size_t)max_payload)
        return refuse(why, whylen, "content: payload of %zu bytes is over the limit of %ld",
                      payload_len, max_payload);
    if (memchr(at, '\0', rest) != NULL)
        return refuse(why, whylen, "content: a NUL byte");
    /* NUL-terminated copies, back to back. */
    size_t need = rest + 6;
    if (scratch->cap < need) {
        char *b = realloc(scratch->buf, need);
        if (b == NULL)
            return refuse(why, whylen, "out of memory");
        scratch->buf = b;
        scratch->cap = need;
    }
    char *w = scratch->buf;
    const char *ptr[6];
    size_t plen[6] = {(size_t)lens[0], (size_t)lens[1], (size_t)lens[2], (size_t)lens[3],
                      (size_t)lens[4], payload_len};
    for (int i = 0; i < 6; i++) {
        memcpy(w, at, plen[i]);
        w[plen[i]] = '\0';
        ptr[i] = w;
        w += plen[i] + 1;
        at += plen[i];
    }
    if (!ferry__topic_valid(ptr[0], plen[0]))
        return refuse(why, whylen, "content: topic is not a valid Kafka topic name");
    if (plen[1] == 0 || plen[3] == 0)
        return refuse(why, whylen, "content: %s is empty", plen[1] == 0 ? "key" : "type");
    size_t bad;
    for (int i = 1; i < 6; i++)
        if (!ferry__utf8_valid(ptr[i], plen[i], &bad))
            return refuse(why, whylen, "content: %s is not UTF-8 (byte %zu)",
                          i < 5 ? names[i] : "payload", bad);
    if (plen[4] > 0 && !(plen[4] == 2 && memcmp(ptr[4], "{}", 2) == 0)) {
        /* Headers: a JSON object of strings, as emit checked ("{}", what
         * emit writes for none, needs no parser). */
        json_error_t jerr;
        json_t *h = json_loadb(ptr[4], plen[4], 0, &jerr);
        int ok = json_is_object(h);
        const char *k;
        json_t *v;
        if (ok)
            json_object_foreach(h, k, v) ok = ok && json_is_string(v);
        json_decref(h);
        if (!ok)
            return refuse(why, whylen, "content: headers are not a JSON object of strings");
    }
    m.seq = seq;
    m.created_us = created;
    m.topic = ptr[0];
    m.key = ptr[1];
    m.aggtype = ptr[2];
    m.type = ptr[3];
    m.headers = plen[4] > 0 ? ptr[4] : "{}";
    m.payload = ptr[5];
    m.payload_len = payload_len;
    *out = m;
    return 0;
}

void wal_lsn_format(uint64_t lsn, char out[32])
{
    snprintf(out, 32, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
}

int wal_lsn_parse(const char *text, uint64_t *out)
{
    unsigned hi, lo;
    int used = 0;
    if (text == NULL || sscanf(text, "%8X/%8X%n", &hi, &lo, &used) != 2 ||
        text[used] != '\0')
        return -1;
    *out = (uint64_t)hi << 32 | lo;
    return 0;
}
