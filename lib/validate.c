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
#include <string.h>

#include <jansson.h>

#include "internal.h"

_Static_assert(FERRY_TOPIC_MAX == 249, "Kafka's topic name limit");
_Static_assert(FERRY_KEY_MAX < 2000, "keys must fit a btree index entry");

static bool topic_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static ferry_code check_topic(const char *topic, ferry_error *err)
{
    if (topic == NULL || topic[0] == '\0')
        return ferry_err_set(err, FERRY_EINVAL, "topic", "topic must not be empty");
    size_t len = strlen(topic);
    if (len > FERRY_TOPIC_MAX)
        return ferry_err_set(err, FERRY_EINVAL, "topic",
                             "topic is %zu bytes, longer than %d", len, FERRY_TOPIC_MAX);
    for (size_t i = 0; i < len; i++) {
        if (!topic_char_ok(topic[i]))
            return ferry_err_set(err, FERRY_EINVAL, "topic",
                                 "topic \"%.64s\" is not a valid Kafka topic name "
                                 "(letters, digits, \".\", \"_\", \"-\"): bad byte at %zu",
                                 topic, i);
    }
    if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
        return ferry_err_set(err, FERRY_EINVAL, "topic",
                             "topic \"%s\" is not a valid Kafka topic name", topic);
    return FERRY_OK;
}

/* A text field: given length (0 = strlen), no NUL inside, valid UTF-8,
 * within max bytes; empty refused when required. */
static ferry_code check_text(const char *field, const char *what, const char *s,
                             size_t len, size_t max, bool required, ferry_error *err)
{
    if (s == NULL) {
        if (required)
            return ferry_err_set(err, FERRY_EINVAL, field, "%s must not be empty", what);
        return FERRY_OK;
    }
    size_t slen = strnlen(s, len ? len : max + 1);
    if (len == 0)
        len = slen;
    else if (slen < len)
        return ferry_err_set(err, FERRY_EINVAL, field,
                             "%s contains a NUL byte at offset %zu", what, slen);
    if (len == 0 && required)
        return ferry_err_set(err, FERRY_EINVAL, field, "%s must not be empty", what);
    if (len > max)
        return ferry_err_set(err, FERRY_EINVAL, field, "%s is longer than %zu bytes",
                             what, max);
    size_t bad;
    if (!ferry_utf8_valid(s, len, &bad))
        return ferry_err_set(err, FERRY_EINVAL, field,
                             "%s is not valid UTF-8 (bad byte at offset %zu)", what, bad);
    return FERRY_OK;
}

static ferry_code check_payload(const char *payload, size_t len, size_t max,
                                ferry_error *err)
{
    if (payload == NULL)
        return ferry_err_set(err, FERRY_EINVAL, "payload",
                             "payload must not be NULL (use the JSON text \"null\")");
    size_t slen = strnlen(payload, len ? len : max + 1);
    if (len == 0)
        len = slen;
    else if (slen < len)
        return ferry_err_set(err, FERRY_EINVAL, "payload",
                             "payload contains a NUL byte at offset %zu", slen);
    if (len > max)
        return ferry_err_set(err, FERRY_EINVAL, "payload",
                             "payload is over the limit of %zu bytes", max);
    /* jansson validates UTF-8, refuses \u0000 (as jsonb does) and bounds
     * nesting depth. Integers too big for int64 are read as reals; numbers
     * beyond a double's range are refused (RFC 8259 warns against them). */
    json_error_t jerr;
    json_t *doc = json_loadb(payload, len,
                             JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
    if (doc == NULL)
        return ferry_err_set(err, FERRY_EINVAL, "payload",
                             "payload is not valid JSON: %s at line %d, column %d",
                             jerr.text, jerr.line, jerr.column);
    json_decref(doc);
    return FERRY_OK;
}

static bool header_name_reserved(const char *name)
{
    static const char *const ce[] = {"ce_specversion", "ce_id", "ce_type",
                                     "ce_source", "ce_time"};
    if (name[0] == '\0' || strncmp(name, "ferry_", 6) == 0)
        return true;
    for (size_t i = 0; i < sizeof ce / sizeof ce[0]; i++)
        if (strcmp(name, ce[i]) == 0)
            return true;
    return false;
}

static ferry_code check_headers(const char *headers, ferry_error *err)
{
    if (headers == NULL)
        return FERRY_OK;
    size_t len = strnlen(headers, FERRY_HEADERS_MAX + 1);
    if (len > FERRY_HEADERS_MAX)
        return ferry_err_set(err, FERRY_EINVAL, "headers",
                             "headers are longer than %d bytes", FERRY_HEADERS_MAX);
    json_error_t jerr;
    json_t *doc = json_loadb(headers, len, JSON_DECODE_ANY, &jerr);
    if (doc == NULL)
        return ferry_err_set(err, FERRY_EINVAL, "headers",
                             "headers are not valid JSON: %s at line %d, column %d",
                             jerr.text, jerr.line, jerr.column);
    ferry_code rc = FERRY_OK;
    if (!json_is_object(doc)) {
        rc = ferry_err_set(err, FERRY_EINVAL, "headers",
                           "headers must be a JSON object of strings");
        goto out;
    }
    const char *name;
    json_t *value;
    json_object_foreach(doc, name, value) {
        if (!json_is_string(value)) {
            rc = ferry_err_set(err, FERRY_EINVAL, "headers",
                               "header \"%.64s\" is not a string", name);
            goto out;
        }
        if (header_name_reserved(name)) {
            rc = ferry_err_set(err, FERRY_EINVAL, "headers",
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
        return ferry_err_set(err, FERRY_EINVAL, "msg", "message is NULL");
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
        return ferry_err_set(err, FERRY_EINVAL, "delay_ms",
                             "delay must be between 0 and one year in milliseconds");
    return FERRY_OK;
}

ferry_int_parse ferry_parse_long(const char *text, long min, long max, long *out)
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
