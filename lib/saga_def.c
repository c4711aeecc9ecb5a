/*
 * saga_def.c — saga definitions from YAML: load, check, free.
 *
 * The format (schemas/saga.schema.json documents every field):
 *
 *   saga: order-checkout            # [A-Za-z0-9._-]{1,128}
 *   version: 1                      # integer >= 1
 *   deadline: 10m                   # the whole saga, from its start
 *   steps:                          # 1..FERRY_SAGA_STEPS_MAX, run in order
 *     - name: reserve-payment       # unique, [A-Za-z0-9._-]{1,128}
 *       topic: payments.commands    # the participant's command topic
 *       action:       {type: ReservePayment, payload: {order: "${context.order_id}"}}
 *       compensation: {type: ReleasePayment, payload: {order: "${context.order_id}"}}
 *       timeout: 30s                # for one send of the action to be answered
 *       retry: {attempts: 3, backoff: 1s, max_backoff: 10s}   # optional
 *       pivot: false                # optional; at most one step is the pivot
 *
 * Durations are "500ms", "30s", "5m", "2h", "1d" or sums such as "1h30m",
 * or plain integers counting milliseconds. A payload is any YAML value,
 * turned into JSON: quoted scalars are strings; plain ones follow the YAML
 * 1.2 core schema (null, true/false, integers, floats), everything else is
 * a string. A string holding "${" must be exactly "${context.PATH}".
 *
 * Numbers keep the digits they are written with (saga_tmpl.h says why):
 * each payload is also built as JSON text, and that text is what the
 * driver sends. Only what JSON cannot spell is respelled: a leading "+"
 * and leading zeros are dropped, ".5" becomes "0.5" and "3." "3". A
 * number PostgreSQL's numeric (so jsonb) cannot hold, such as 1e-16384,
 * is refused where it is written. The public ferry_saga_command.payload
 * is the same value as jansson holds it, for reading: there a number
 * beyond int64 or a double is the nearest double (1e400: DBL_MAX).
 *
 * Why our own reader over libyaml's events, not libcyaml. The contract is
 * to report every error with its line, column and field. libcyaml stops
 * at the first error, knows no positions past its log lines, cannot
 * express a payload (any JSON value) or a duration that is either a
 * string or an integer, and (1.3.1) reads integers with an unchecked
 * strtoll ("12abc" is 12). daemon/config.c therefore needs three passes
 * around it. Here one recursive walk over the event stream does it all:
 * each value is checked where its event carries its position, a bad value
 * is recorded and skipped, and the walk goes on. Checks across fields
 * (pivot, compensations, timeouts against the deadline) run afterwards on
 * positions remembered during the walk. The walk itself (events, places,
 * errors, mappings, scalars) is yaml_walk.c, which the reconciler's rules
 * file loader shares; what is here is what only sagas have.
 *
 * What stops the walk (nothing after it could be trusted or is worth
 * reading): a YAML syntax error (libyaml cannot resume), any anchor or
 * alias (refused outright: no "billion laughs", memory stays linear in
 * the document), nesting deeper than FERRY_SAGA_DEPTH_MAX, a second
 * document, and running out of memory. Documents over FERRY_SAGA_FILE_MAX
 * bytes are not parsed at all.
 */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <yaml.h>

#include "internal.h"
#include "saga_def_hook.h"
#include "saga_tmpl.h"
#include "yaml_walk.h"

_Static_assert(FERRY_SAGA_STEPS_MAX >= 1 && FERRY_SAGA_STEPS_MAX <= 1024, "steps limit");
_Static_assert(FERRY_SAGA_DEPTH_MAX >= 8, "payloads need some nesting");
_Static_assert(FERRY_SAGA_TIMEOUT_MAX_MS < INT64_MAX / FERRY_SAGA_ATTEMPTS_MAX / 4,
               "timeout x attempts + backoffs cannot overflow");
_Static_assert(FERRY_SAGA_FILE_MAX <= INT_MAX, "positions fit an int");

typedef ferry__yw_place place;

/* Where each step's parts were, for the checks after the walk. */
typedef struct step_places {
    place at;                         /* the step's mapping */
    place name, timeout, compensation, retry, attempts, backoff, max_backoff;
    bool is_mapping;                  /* else only "expected a step" was said */
    bool timeout_ok;                  /* timeout read and valid */
    bool retry_ok;                    /* retry absent, or read and valid */
    bool compensation_given;          /* the key is there (valid or not) */
    bool backoff_given, max_backoff_given;
} step_places;

/* A walker and what the walk fills in. */
typedef struct loader {
    ferry__yw w;
    ferry_saga_def *def;
    place deadline_at;
    bool deadline_ok;
    step_places sp[FERRY_SAGA_STEPS_MAX];
} loader;

/* What the loader allocates: the public definition and, beside it, each
 * command's payload as JSON text. ferry__saga_def_tmpl and
 * ferry_saga_def_destroy find the templates from the definition, which is
 * why a definition must come from the loader (the registry frees it with
 * ferry_saga_def_destroy in any case). */
typedef struct def_full {
    ferry_saga_def def;                        /* first: a def is its def_full */
    ferry__tmpl tmpl[FERRY_SAGA_STEPS_MAX][2];  /* [step][ferry_saga_command_kind] */
} def_full;
_Static_assert(offsetof(def_full, def) == 0, "def_full: the definition comes first");
_Static_assert(FERRY_SAGA_CMD_ACTION == 0 && FERRY_SAGA_CMD_COMPENSATION == 1,
               "def_full's templates are indexed by command kind");

static def_full *full_of(const ferry_saga_def *def)
{
    return (def_full *)def;
}

const ferry__tmpl *ferry__saga_def_tmpl(const ferry_saga_def *def, size_t step,
                                      ferry_saga_command_kind kind)
{
    return &full_of(def)->tmpl[step][kind == FERRY_SAGA_CMD_COMPENSATION];
}

/* ------------------------------------------------------------ memory */

static void command_free(ferry_saga_command *c)
{
    free(c->type);
    json_decref(c->payload);
    c->type = NULL;
    c->payload = NULL;
}

void ferry_saga_def_destroy(ferry_saga_def *def)
{
    if (!def)
        return;
    for (size_t i = 0; def->steps && i < def->step_count; i++) {
        ferry_saga_step_def *s = &def->steps[i];
        free(s->name);
        free(s->topic);
        command_free(&s->action);
        command_free(&s->compensation);
    }
    for (size_t i = 0; i < FERRY_SAGA_STEPS_MAX; i++) {
        ferry__tmpl_free(&full_of(def)->tmpl[i][0]);
        ferry__tmpl_free(&full_of(def)->tmpl[i][1]);
    }
    free(def->steps);
    free(def->name);
    free(def->file);
    free(def);
}

/* The old name, for one more release (ferry.h). */
void ferry_saga_def_free(ferry_saga_def *def)
{
    ferry_saga_def_destroy(def);
}

/* ------------------------------------------------------------ payloads */

/* "${context.PATH}" and nothing else, PATH of [A-Za-z0-9_-] segments. */
static bool valid_template(const char *s)
{
    static const char head[] = "${context.";
    size_t n = strlen(s);
    if (strncmp(s, head, sizeof head - 1) != 0 || n < sizeof head || s[n - 1] != '}')
        return false;
    bool segment = false;
    for (size_t i = sizeof head - 1; i < n - 1; i++) {
        char c = s[i];
        if (c == '.') {
            if (!segment)
                return false;
            segment = false;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '-') {
            segment = true;
        } else {
            return false;
        }
    }
    return segment;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? with a '.' or an e. */
static bool is_float(const char *s)
{
    const char *p = s + (*s == '-' || *s == '+');
    size_t lead = strspn(p, "0123456789");
    bool frac = false;
    p += lead;
    if (*p == '.') {
        size_t f = strspn(p + 1, "0123456789");
        if (lead == 0 && f == 0)
            return false;
        p += 1 + f;
        frac = true;
    } else if (lead == 0) {
        return false;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        p += (*p == '-' || *p == '+');
        size_t e = strspn(p, "0123456789");
        if (e == 0)
            return false;
        p += e;
        frac = true;
    }
    return *p == '\0' && frac;
}

/* The nearest double to a number jansson cannot hold exactly: for the
 * public payload only (the text keeps the digits). */
static json_t *json_nearest(const char *v)
{
    double d = strtod(v, NULL);
    if (!isfinite(d))
        d = d < 0 ? -DBL_MAX : DBL_MAX;
    return json_real(d);
}

/*
 * A plain scalar that is a number (integer or float by is_float) onto t as
 * JSON, its digits as written: a leading "+" and leading zeros dropped,
 * ".5" -> "0.5", "3." -> "3", the exponent as it is. Refused (*ok false)
 * when PostgreSQL's numeric cannot hold it, as ferry_emit would refuse
 * the command later: checked by ferry_msg_check, the one place that knows
 * numeric's limits.
 */
static int number_text(ferry__yw *w, ferry__tmpl *t, const char *v, place at, bool *ok)
{
    static const char digits[] = "0123456789";
    const char *p = v + (*v == '+');
    size_t start = t->len;
    *ok = false;
    if (*p == '-' && ferry__tmpl_append(t, p++, 1) != 0)
        return ferry__yw_oom(w);
    size_t lead = strspn(p, digits), zeros = 0;
    while (zeros + 1 < lead && p[zeros] == '0')
        zeros++;
    if (lead == 0 ? ferry__tmpl_append(t, "0", 1) : ferry__tmpl_append(t, p + zeros, lead - zeros))
        return ferry__yw_oom(w);
    p += lead;
    if (*p == '.') {
        size_t frac = strspn(p + 1, digits);
        if (frac > 0 && ferry__tmpl_append(t, p, frac + 1) != 0)
            return ferry__yw_oom(w);
        p += 1 + frac;
    }
    if (ferry__tmpl_append(t, p, strlen(p)) != 0)
        return ferry__yw_oom(w);
    ferry_msg probe = {.topic = "t", .key = "k", .type = "t", .payload = t->text + start,
                       .payload_len = t->len - start};
    ferry_error err;
    if (ferry_msg_check(&probe, NULL, &err) != FERRY_OK) {
        ferry__yw_error(w, at, "number %.64s is out of range: PostgreSQL's numeric cannot hold it "
                       "(quote it to keep a string)", v);
        return 0;
    }
    *ok = true;
    return 0;
}

/* A scalar as JSON, into *out and onto t: *out NULL after an error. */
static int json_scalar(ferry__yw *w, const yaml_event_t *ev, ferry__tmpl *t, json_t **out)
{
    const char *v = ferry__yw_scalar(ev);
    size_t len = ev->data.scalar.length;
    place at = ferry__yw_place_of(ev->start_mark);
    *out = NULL;
    if (ferry__yw_is_plain(ev)) {
        const char *digits = v + (*v == '-' || *v == '+');
        size_t nd = strspn(digits, "0123456789");
        const char *word = NULL;
        if (ferry__yw_is_null(ev)) {
            *out = json_null();
            word = "null";
        } else if (ferry__yw_plain_true(v) || ferry__yw_plain_false(v)) {
            *out = json_boolean(ferry__yw_plain_true(v));
            word = ferry__yw_plain_true(v) ? "true" : "false";
        }
        if (word)
            return ferry__tmpl_append(t, word, strlen(word)) != 0 ? ferry__yw_oom(w) : 0;
        if (nd > 0 && digits[nd] == '\0') {
            if (digits[0] == '0' && nd > 1) {
                ferry__yw_error(w, at, "ambiguous number \"%.64s\": quote it to keep a string, or "
                           "drop the leading zeros", v);
                return 0;
            }
            bool ok;
            if (number_text(w, t, v, at, &ok) != 0 || !ok)
                return w->fatal ? -1 : 0;
            errno = 0;
            long long n = strtoll(v, NULL, 10);
            *out = errno == ERANGE ? json_nearest(v) : json_integer(n);
            return *out ? 0 : ferry__yw_oom(w);
        }
        if (is_float(v)) {
            bool ok;
            if (number_text(w, t, v, at, &ok) != 0 || !ok)
                return w->fatal ? -1 : 0;
            *out = json_nearest(v);
            return *out ? 0 : ferry__yw_oom(w);
        }
        if (digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'o') && digits[2] &&
            strspn(digits + 2, "0123456789abcdefABCDEF") == strlen(digits + 2)) {
            ferry__yw_error(w, at, "ambiguous number \"%.64s\": quote it to keep a string, or write "
                       "it in decimal", v);
            return 0;
        }
        if (strcasecmp(v, ".inf") == 0 || strcasecmp(v, "-.inf") == 0 ||
            strcasecmp(v, "+.inf") == 0 || strcasecmp(v, ".nan") == 0) {
            ferry__yw_error(w, at, "%s has no JSON value (quote it to keep a string)", v);
            return 0;
        }
    }
    if (strstr(v, "${")) {
        static const char head[] = "${context.";
        if (!valid_template(v)) {
            ferry__yw_error(w, at, "\"%.64s\" is not a template: a template is a whole string "
                       "\"${context.PATH}\", PATH being names separated by dots", v);
            return 0;
        }
        if (ferry__tmpl_append_ref(t, v + sizeof head - 1, len - sizeof head) != 0)
            return ferry__yw_oom(w);
    } else if (ferry__tmpl_append_string(t, v, len) != 0) {
        return ferry__yw_oom(w);
    }
    *out = json_stringn(v, len);
    return *out ? 0 : ferry__yw_oom(w);
}

/*
 * Any YAML value as JSON, its first event in ev (deleted by the caller):
 * as a jansson value into *out and as text onto t (which holds garbage
 * after an error: the load fails then anyway). *out is NULL after an
 * error in it (recorded) or when the walk stopped.
 */
static int read_json(ferry__yw *w, yaml_event_t *ev, ferry__tmpl *t, json_t **out)
{
    *out = NULL;
    if (ev->type == YAML_SCALAR_EVENT)
        return json_scalar(w, ev, t, out);

    bool mapping = ev->type == YAML_MAPPING_START_EVENT;
    json_t *c = mapping ? json_object() : json_array();
    bool bad = false;
    if (!c)
        return ferry__yw_oom(w);
    if (ferry__tmpl_append(t, mapping ? "{" : "[", 1) != 0)
        goto out_oom;
    yaml_event_t item, val;
    int more;
    for (size_t i = 0; (more = ferry__yw_next_item(w, &item)) > 0; i++) {
        if (i > 0 && ferry__tmpl_append(t, ",", 1) != 0) {
            yaml_event_delete(&item);
            goto out_oom;
        }
        json_t *v = NULL;
        int rc;
        if (!mapping) {
            size_t old = ferry__yw_push_index(w, i);
            rc = read_json(w, &item, t, &v);
            yaml_event_delete(&item);
            ferry__yw_pop(w, old);
            if (rc != 0)
                goto out_fatal;
            if (!v)
                bad = true;
            else if (json_array_append_new(c, v) != 0)
                goto out_oom;
            continue;
        }
        if (item.type != YAML_SCALAR_EVENT) {
            char buf[96];
            ferry__yw_error(w, ferry__yw_place_of(item.start_mark), "a key must be a string, not %s",
                       ferry__yw_describe(&item, buf, sizeof buf));
            bad = true;
            rc = ferry__yw_skip(w, &item);
            yaml_event_delete(&item);
            if (rc != 0 || ferry__yw_next(w, &val) != 0)
                goto out_fatal;
            rc = ferry__yw_skip(w, &val);
            yaml_event_delete(&val);
            if (rc != 0)
                goto out_fatal;
            continue;
        }
        size_t old = ferry__yw_push_key(w, ferry__yw_scalar(&item));
        bool dup = json_object_get(c, ferry__yw_scalar(&item)) != NULL;
        if (dup) {
            ferry__yw_error(w, ferry__yw_place_of(item.start_mark), "duplicate key \"%.64s\"", ferry__yw_scalar(&item));
            bad = true;
        } else if (memmem(ferry__yw_scalar(&item), item.data.scalar.length, "${", 2) != NULL) {
            /* Only values are templates: a key holding one was sent as it
             * was written, "${context.sku}" and all. */
            ferry__yw_error(w, ferry__yw_place_of(item.start_mark), "key \"%.64s\" holds \"${\": "
                            "only a value can be \"${context.PATH}\"", ferry__yw_scalar(&item));
            bad = true;
        }
        if (ferry__tmpl_append_string(t, ferry__yw_scalar(&item), item.data.scalar.length) != 0 ||
            ferry__tmpl_append(t, ":", 1) != 0) {
            yaml_event_delete(&item);
            goto out_oom;
        }
        if (ferry__yw_next(w, &val) != 0) {
            yaml_event_delete(&item);
            goto out_fatal;
        }
        rc = dup ? ferry__yw_skip(w, &val) : read_json(w, &val, t, &v);
        yaml_event_delete(&val);
        ferry__yw_pop(w, old);
        if (rc == 0 && v && json_object_set_new(c, ferry__yw_scalar(&item), v) != 0)
            rc = ferry__yw_oom(w);
        yaml_event_delete(&item);
        if (rc != 0)
            goto out_fatal;
        if (!dup && !v)
            bad = true;
    }
    if (more < 0)
        goto out_fatal;
    if (ferry__tmpl_append(t, mapping ? "}" : "]", 1) != 0)
        goto out_oom;
    if (bad) {
        json_decref(c);
        return 0;
    }
    *out = c;
    return 0;

out_oom:
    ferry__yw_oom(w);
out_fatal:
    json_decref(c);
    return -1;
}

/* ------------------------------------------------------------ commands */

static const char *const command_keys[] = {"type", "payload"};
enum { CMD_TYPE, CMD_PAYLOAD, N_CMD_KEYS };
static const bool command_required[N_CMD_KEYS] = {[CMD_TYPE] = true};

typedef struct command_ctx {
    ferry_saga_command *cmd;
    ferry__tmpl *tmpl;
} command_ctx;

static int command_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    command_ctx *cc = arg;
    ferry_saga_command *cmd = cc->cmd;
    if (index == CMD_PAYLOAD) {
        json_t *payload = NULL;
        if (read_json(w, val, cc->tmpl, &payload) != 0)
            return -1;
        cmd->payload = payload;
        return 0;
    }
    bool ok;
    if (ferry__yw_get_string(w, val, "an event type", &cmd->type, &ok) != 0 || !ok)
        return w->fatal ? -1 : 0;
    /* The type becomes the message's type: check it as ferry_emit will. */
    return ferry__yw_check_type(w, val, cmd->type, &ok);
}

/* action: or compensation: — a mapping of type and payload (default {}),
 * the payload's text onto tmpl. */
static int read_command(ferry__yw *w, yaml_event_t *ev, ferry_saga_command *cmd, ferry__tmpl *tmpl,
                        bool *ok)
{
    *ok = false;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return ferry__yw_wrong_type(w, ev, "a command (a mapping with type and payload)");
    bool seen[N_CMD_KEYS];
    size_t before = w->errs->total;
    command_ctx cc = {cmd, tmpl};
    if (ferry__yw_read_mapping(w, command_keys, N_CMD_KEYS, seen, command_value, &cc) != 0)
        return -1;
    ferry__yw_require_keys(w, ferry__yw_place_of(ev->start_mark), command_keys, command_required,
                          seen, N_CMD_KEYS);
    if (!seen[CMD_PAYLOAD]) {
        cmd->payload = json_object();
        if (!cmd->payload || ferry__tmpl_append(tmpl, "{}", 2) != 0)
            return ferry__yw_oom(w);
    }
    /* A payload that is one reference has no text of its own: give it its
     * NUL, so that the text is never NULL. */
    if (ferry__tmpl_append(tmpl, "", 0) != 0)
        return ferry__yw_oom(w);
    *ok = w->errs->total == before;
    return 0;
}

/* ------------------------------------------------------------ retry */

static const char *const retry_keys[] = {"attempts", "backoff", "max_backoff"};
enum { RETRY_ATTEMPTS, RETRY_BACKOFF, RETRY_MAX_BACKOFF, N_RETRY_KEYS };

typedef struct step_ctx {
    loader *ld;
    size_t index;
    ferry_saga_step_def *step;
    step_places *sp;
} step_ctx;

static int retry_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    step_ctx *sc = arg;
    ferry_saga_retry *r = &sc->step->retry;
    bool ok;
    int rc;
    place at = ferry__yw_place_of(val->start_mark);
    switch (index) {
    case RETRY_ATTEMPTS:
        sc->sp->attempts = at;
        rc = ferry__yw_get_int(w, val, 1, FERRY_SAGA_ATTEMPTS_MAX, &r->attempts, &ok);
        break;
    case RETRY_BACKOFF:
        sc->sp->backoff = at;
        rc = ferry__yw_get_duration(w, val, true, &r->backoff_ms, &ok);
        sc->sp->backoff_given = ok;
        break;
    default:
        sc->sp->max_backoff = at;
        rc = ferry__yw_get_duration(w, val, true, &r->max_backoff_ms, &ok);
        sc->sp->max_backoff_given = ok;
        break;
    }
    if (rc == 0 && !ok)
        sc->sp->retry_ok = false;
    return rc;
}

static int read_retry(ferry__yw *w, yaml_event_t *ev, step_ctx *sc)
{
    if (ferry__yw_is_null(ev))
        return 0;
    if (ev->type != YAML_MAPPING_START_EVENT) {
        sc->sp->retry_ok = false;
        return ferry__yw_wrong_type(w, ev, "a retry policy (a mapping with attempts, backoff, "
                                   "max_backoff)");
    }
    bool seen[N_RETRY_KEYS];
    return ferry__yw_read_mapping(w, retry_keys, N_RETRY_KEYS, seen, retry_value, sc);
}

/* ------------------------------------------------------------ steps */

static const char *const step_keys[] = {"name", "topic", "action", "compensation",
                                        "timeout", "retry", "pivot"};
enum { STEP_NAME, STEP_TOPIC, STEP_ACTION, STEP_COMPENSATION, STEP_TIMEOUT, STEP_RETRY,
       STEP_PIVOT, N_STEP_KEYS };
static const bool step_required[N_STEP_KEYS] = {
    [STEP_NAME] = true, [STEP_TOPIC] = true, [STEP_ACTION] = true, [STEP_TIMEOUT] = true,
};

static int step_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    step_ctx *sc = arg;
    loader *ld = sc->ld;
    ferry_saga_step_def *s = sc->step;
    ferry_saga_def *def = ld->def;
    place at = ferry__yw_place_of(val->start_mark);
    bool ok;
    int rc = 0;
    switch (index) {
    case STEP_NAME:
        sc->sp->name = at;
        rc = ferry__yw_get_string(w, val, "a step name", &s->name, &ok);
        if (rc != 0 || !ok)
            break;
        ferry__yw_check_name(w, val, s->name, FERRY_SAGA_NAME_MAX);
        for (size_t i = 0; i < sc->index; i++) {
            if (def->steps[i].name && strcmp(def->steps[i].name, s->name) == 0) {
                ferry__yw_error(w, at, "duplicate step name \"%.64s\" (steps[%zu] at line %d)",
                               s->name, i, ld->sp[i].name.line);
                break;
            }
        }
        break;
    case STEP_TOPIC:
        rc = ferry__yw_get_string(w, val, "a topic name", &s->topic, &ok);
        if (rc == 0 && ok)
            rc = ferry__yw_check_topic(w, val, s->topic, &ok);
        break;
    case STEP_ACTION:
        rc = read_command(w, val, &s->action, &full_of(def)->tmpl[sc->index][0], &ok);
        break;
    case STEP_COMPENSATION:
        if (ferry__yw_is_null(val))    /* "none", said explicitly */
            break;
        sc->sp->compensation_given = true;
        sc->sp->compensation = key_at;
        rc = read_command(w, val, &s->compensation, &full_of(def)->tmpl[sc->index][1], &ok);
        s->has_compensation = rc == 0 && ok;
        break;
    case STEP_TIMEOUT:
        sc->sp->timeout = at;
        rc = ferry__yw_get_duration(w, val, false, &s->timeout_ms, &sc->sp->timeout_ok);
        break;
    case STEP_RETRY:
        sc->sp->retry = key_at;
        rc = read_retry(w, val, sc);
        break;
    case STEP_PIVOT:
        rc = ferry__yw_get_bool(w, val, &s->pivot, &ok);
        if (rc != 0 || !ok || !s->pivot)
            break;
        if (def->pivot_index >= 0) {
            ferry__yw_error(w, at, "a second pivot: steps[%d] at line %d is the pivot already; a "
                           "saga has at most one", def->pivot_index,
                           ld->sp[def->pivot_index].at.line);
            s->pivot = 0;
        } else {
            def->pivot_index = (int)sc->index;
        }
        break;
    }
    return rc;
}

static int read_step(ferry__yw *w, yaml_event_t *ev, size_t index, void *arg)
{
    loader *ld = arg;
    step_ctx sc = {ld, index, &ld->def->steps[index], &ld->sp[index]};
    sc.sp->at = ferry__yw_place_of(ev->start_mark);
    sc.sp->retry_ok = true;
    sc.step->retry.attempts = 1;
    if (ev->type != YAML_MAPPING_START_EVENT)
        return ferry__yw_wrong_type(w, ev, "a step (a mapping with name, topic, action, "
                                   "compensation, timeout, ...)");
    sc.sp->is_mapping = true;
    bool seen[N_STEP_KEYS];
    if (ferry__yw_read_mapping(w, step_keys, N_STEP_KEYS, seen, step_value, &sc) != 0)
        return -1;
    ferry__yw_require_keys(w, sc.sp->at, step_keys, step_required, seen, N_STEP_KEYS);
    return 0;
}

static int read_steps(loader *ld, yaml_event_t *ev)
{
    ferry__yw *w = &ld->w;
    ferry_saga_def *def = ld->def;
    if (ferry__yw_read_sequence(w, ev, "steps", FERRY_SAGA_STEPS_MAX, &def->step_count,
                               read_step, ld) != 0)
        return -1;
    if (ev->type == YAML_SEQUENCE_START_EVENT && def->step_count == 0)
        ferry__yw_error(w, ferry__yw_place_of(ev->start_mark), "a saga needs at least one step");
    return 0;
}

/* ------------------------------------------------------------ the document */

static const char *const saga_keys[] = {"saga", "version", "deadline", "steps"};
enum { SAGA_NAME, SAGA_VERSION, SAGA_DEADLINE, SAGA_STEPS, N_SAGA_KEYS };
_Static_assert(N_SAGA_KEYS <= FERRY_YW_KEYS_MAX && N_STEP_KEYS <= FERRY_YW_KEYS_MAX &&
               N_RETRY_KEYS <= FERRY_YW_KEYS_MAX && N_CMD_KEYS <= FERRY_YW_KEYS_MAX,
               "ferry_yw_read_mapping's table");
static const bool saga_required[N_SAGA_KEYS] = {true, true, true, true};

static int saga_value(ferry__yw *w, int index, place key_at, yaml_event_t *val, void *arg)
{
    loader *ld = arg;
    ferry_saga_def *def = ld->def;
    bool ok;
    switch (index) {
    case SAGA_NAME: {
        int rc = ferry__yw_get_string(w, val, "a saga name", &def->name, &ok);
        if (rc == 0 && ok)
            ferry__yw_check_name(w, val, def->name, FERRY_SAGA_NAME_MAX);
        return rc;
    }
    case SAGA_VERSION:
        return ferry__yw_get_int(w, val, 1, INT_MAX, &def->version, &ok);
    case SAGA_DEADLINE:
        ld->deadline_at = ferry__yw_place_of(val->start_mark);
        return ferry__yw_get_duration(w, val, false, &def->deadline_ms, &ld->deadline_ok);
    default:
        return read_steps(ld, val);
    }
}

/* ------------------------------------------------------------ checks across fields */

/* The longest one step can take: every send timing out, every backoff. */
static int64_t step_budget(const ferry_saga_step_def *s, int64_t *backoffs)
{
    int64_t wait = s->retry.backoff_ms, total = 0;
    for (int k = 1; k < s->retry.attempts; k++) {
        total += wait < s->retry.max_backoff_ms ? wait : s->retry.max_backoff_ms;
        if (wait < FERRY_SAGA_TIMEOUT_MAX_MS)
            wait *= 2;
    }
    *backoffs = total;
    return s->timeout_ms * s->retry.attempts + total;
}

static void check_steps(loader *ld)
{
    ferry__yw *w = &ld->w;
    ferry_saga_def *def = ld->def;
    char field[64];
    for (size_t i = 0; i < def->step_count; i++) {
        ferry_saga_step_def *s = &def->steps[i];
        step_places *sp = &ld->sp[i];
        bool before_pivot = def->pivot_index < 0 || (int)i < def->pivot_index;
        if (!sp->is_mapping)
            continue;

        snprintf(field, sizeof field, "steps[%zu].compensation", i);
        if (before_pivot && !sp->compensation_given)
            ferry__yw_error_at(w, sp->at, field, "missing: %s",
                              def->pivot_index < 0
                                  ? "every step needs a compensation when the saga has no pivot"
                                  : "every step before the pivot needs a compensation");
        if (def->pivot_index >= 0 && (int)i > def->pivot_index && sp->compensation_given)
            ferry__yw_error_at(w, sp->compensation, field, "a step after the pivot (steps[%d]) is "
                              "never compensated: remove the compensation", def->pivot_index);

        if (!sp->retry_ok)
            continue;
        if (!sp->max_backoff_given) {
            /* The deadline, or the backoff where that is longer: compensations
             * and refusals past the pivot are resent after the backoff past
             * any deadline, so a long one is meant. (It was the deadline
             * alone: lint took such a file, and the registry then refused it
             * as "retry.max_backoff is invalid", a field the file lacks.) */
            s->retry.max_backoff_ms = ld->deadline_ok ? def->deadline_ms : FERRY_SAGA_TIMEOUT_MAX_MS;
            if (s->retry.max_backoff_ms < s->retry.backoff_ms)
                s->retry.max_backoff_ms = s->retry.backoff_ms;
        } else if (sp->backoff_given && s->retry.backoff_ms > s->retry.max_backoff_ms) {
            char a[32], b[32];
            snprintf(field, sizeof field, "steps[%zu].retry.max_backoff", i);
            ferry__yw_error_at(w, sp->max_backoff, field, "max_backoff %s is shorter than "
                              "backoff %s",
                              ferry__yw_format_duration(s->retry.max_backoff_ms, a, sizeof a),
                              ferry__yw_format_duration(s->retry.backoff_ms, b, sizeof b));
            continue;
        }
        if (!sp->timeout_ok || !ld->deadline_ok)
            continue;
        int64_t backoffs, budget = step_budget(s, &backoffs);
        if (budget > def->deadline_ms) {
            char t[32], bo[48], all[32], dl[32], how[160];
            snprintf(field, sizeof field, "steps[%zu].timeout", i);
            if (s->retry.attempts == 1)
                snprintf(how, sizeof how, "timeout %s",
                         ferry__yw_format_duration(s->timeout_ms, t, sizeof t));
            else
                snprintf(how, sizeof how, "timeout %s x %d attempts%s%s = %s",
                         ferry__yw_format_duration(s->timeout_ms, t, sizeof t), s->retry.attempts,
                         backoffs ? " + backoff " : "",
                         backoffs ? ferry__yw_format_duration(backoffs, bo, sizeof bo) : "",
                         ferry__yw_format_duration(budget, all, sizeof all));
            ferry__yw_error_at(w, sp->timeout, field, "%s is longer than the saga's deadline of "
                              "%s (line %d)", how,
                              ferry__yw_format_duration(def->deadline_ms, dl, sizeof dl),
                              ld->deadline_at.line);
        }
    }
}

static void fnv1a_hex(const unsigned char *p, size_t n, char out[17])
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ------------------------------------------------------------ entry points */

/* The walk of one text, in the loader ferry__yw_parse made for it. */
static ferry_code read_def(void *arg, void *out)
{
    loader *ld = arg;
    ferry__yw *w = &ld->w;
    ferry_code rc = FERRY_ENOMEM;

    def_full *full = ferry__saga_malloc_(sizeof *full);
    ferry_saga_step_def *steps = ferry__saga_malloc_(FERRY_SAGA_STEPS_MAX * sizeof *steps);
    if (!full || !steps) {
        free(full);
        free(steps);
        ferry__yw_oom(w);
        return rc;
    }
    memset(full, 0, sizeof *full);
    ferry_saga_def *def = &full->def;
    memset(steps, 0, FERRY_SAGA_STEPS_MAX * sizeof *steps);
    def->steps = steps;
    def->pivot_index = -1;
    ld->def = def;
    def->file = ferry__yw_strndup(w, w->file, strlen(w->file));
    if (!def->file)
        goto out_free_def;

    const ferry__yw_doc doc = {
        .expected = "a saga definition (a mapping with saga, version, deadline and steps)",
        .one = "saga definition",
        .keys = saga_keys,
        .nkeys = N_SAGA_KEYS,
        .required = saga_required,
        .value = saga_value,
        .arg = ld,
    };
    if (ferry__yw_read_document(w, &doc) == 0)
        check_steps(ld);
    rc = ferry__yw_outcome(w);
    if (rc != FERRY_OK)
        goto out_free_def;
    fnv1a_hex(w->text, w->len, def->hash);
    *(ferry_saga_def **)out = def;
    return FERRY_OK;

out_free_def:
    ferry_saga_def_destroy(def);
    return rc;
}

_Static_assert(offsetof(loader, w) == 0, "ferry_yw_loader: the walker comes first");
static const ferry__yw_loader def_loader = {
    .what = "the saga definition",
    .text_arg = "yaml",
    .max = FERRY_SAGA_FILE_MAX,
    .size = sizeof(loader),
    .read = read_def,
};

ferry_code ferry_saga_def_parse(const char *yaml, size_t len, const char *name,
                                ferry_saga_def **out, ferry_saga_load_errors *errs)
{
    return ferry__yw_parse(&def_loader, yaml, len, name, out, errs);
}

ferry_code ferry_saga_def_load(const char *path, ferry_saga_def **out,
                               ferry_saga_load_errors *errs)
{
    return ferry__yw_load(&def_loader, path, out, errs);
}
