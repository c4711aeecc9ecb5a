/*
 * httpd.c — GET/HEAD /metrics and /healthz over libmicrohttpd, for the
 * relay's metrics (metrics.c) and the reconciler's (rc_metrics.c).
 *
 * libmicrohttpd runs its own thread and calls handle_request there; the
 * caller's callbacks synchronise with its own threads (httpd.h). This
 * module's only shared state is the start error below, behind a mutex
 * because libmicrohttpd may log from either thread.
 */
#include "httpd.h"
#include "internal.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>
#include <microhttpd.h>

#define HEALTH_REASON_SIZE 256
#define START_ERROR_SIZE 256

struct httpd {
    struct MHD_Daemon *daemon;              /* NULL while starting */
    httpd_metrics_fn metrics;
    httpd_health_fn health;                 /* NULL: always healthy */
    void *arg;                              /* borrowed */

    pthread_mutex_t lock;                   /* guards the two below */
    /* While httpd_start starts the daemon, libmicrohttpd's log lines go
     * here, so that a failure can say why (the bind error). */
    int capture_log;
    char start_error[START_ERROR_SIZE];
};

#define TEXT_PLAIN "text/plain; charset=utf-8"
#define PROMETHEUS_TEXT "text/plain; version=0.0.4; charset=utf-8"

/* Queue a response with body (len bytes). With owned, body was malloc'd
 * and this call takes it over, whatever happens; else it is copied. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             char *body, size_t len, int owned, const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE
                                                         : MHD_RESPMEM_MUST_COPY);
    if (!resp) {
        /* libmicrohttpd takes the buffer only with the response. */
        if (owned)
            free(body);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_YES;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
        (allow && MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES))
        ret = MHD_NO;
    if (ret == MHD_YES)
        ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *text, const char *allow)
{
    return reply(conn, status, TEXT_PLAIN, (char *)text, strlen(text), 0, allow);
}

static enum MHD_Result serve_healthz(httpd *h, struct MHD_Connection *conn)
{
    char reason[HEALTH_REASON_SIZE] = "";
    if (!h->health || h->health(h->arg, reason, sizeof reason))
        return reply_text(conn, MHD_HTTP_OK, "ok\n", NULL);
    /* A callback may fill reason to the brim without a terminator. */
    reason[sizeof reason - 1] = '\0';
    char body[HEALTH_REASON_SIZE + 2];
    snprintf(body, sizeof body, "%s\n", reason[0] ? reason : "unhealthy");
    return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, body, NULL);
}

static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    httpd *h = cls;
    int is_metrics = strcmp(url, "/metrics") == 0;
    int is_healthz = strcmp(url, "/healthz") == 0;
    /* Answered on the first call, before any request body: neither
     * endpoint takes one, and a refusal needs none. */
    if (!is_metrics && !is_healthz)
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n", NULL);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n",
                          "GET, HEAD");
    if (is_healthz)
        return serve_healthz(h, conn);
    char *text = h->metrics(h->arg);
    if (!text)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL);
    return reply(conn, MHD_HTTP_OK, PROMETHEUS_TEXT, text, strlen(text), 1, NULL);
}

/* libmicrohttpd's log: kept while httpd_start starts the daemon (to
 * explain a failure), dropped afterwards — the daemons' logs are
 * structured and this module has no seam into them. Runs on either
 * thread, hence the lock. */
__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    httpd *h = cls;
    pthread_mutex_lock(&h->lock);
    if (h->capture_log) {
        vsnprintf(h->start_error, sizeof h->start_error, fmt, ap);
        size_t n = strlen(h->start_error);
        while (n > 0 && (h->start_error[n - 1] == '\n' || h->start_error[n - 1] == '\r'))
            h->start_error[--n] = '\0';
    }
    pthread_mutex_unlock(&h->lock);
}

__attribute__((format(printf, 3, 4)))
static void set_error(char *errbuf, size_t errlen, const char *fmt, ...)
{
    if (!errbuf || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

/*
 * HOST:PORT into a socket address. HOST is a name, an IPv4 address, an
 * IPv6 address in brackets, or "*" or nothing for every IPv4 interface.
 * PORT is 0..65535 (0: the kernel picks).
 */
static int parse_address(const char *host_port, struct sockaddr_storage *ss, int *ipv6,
                         char *errbuf, size_t errlen)
{
    char host[256];
    const char *port_text;
    int bracketed = 0;

    if (!host_port || !*host_port) {
        set_error(errbuf, errlen, "invalid metrics address \"\": expected HOST:PORT");
        return -1;
    }
    if (host_port[0] == '[') {
        const char *close = strchr(host_port, ']');
        if (!close || close[1] != ':') {
            set_error(errbuf, errlen,
                      "invalid metrics address \"%s\": expected [IPV6]:PORT", host_port);
            return -1;
        }
        size_t n = (size_t)(close - host_port - 1);
        if (n == 0 || n >= sizeof host) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": bad IPv6 host",
                      host_port);
            return -1;
        }
        memcpy(host, host_port + 1, n);
        host[n] = '\0';
        port_text = close + 2;
        bracketed = 1;
    } else {
        const char *colon = strrchr(host_port, ':');
        if (!colon) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": expected HOST:PORT",
                      host_port);
            return -1;
        }
        if (memchr(host_port, ':', (size_t)(colon - host_port))) {
            set_error(errbuf, errlen,
                      "invalid metrics address \"%s\": an IPv6 host needs brackets, "
                      "as in [::1]:9100", host_port);
            return -1;
        }
        size_t n = (size_t)(colon - host_port);
        if (n >= sizeof host) {
            set_error(errbuf, errlen, "invalid metrics address \"%s\": host too long",
                      host_port);
            return -1;
        }
        memcpy(host, host_port, n);
        host[n] = '\0';
        port_text = colon + 1;
    }

    /* Digits only: strtol would take a sign, spaces and "0x". */
    long port = 0;
    size_t digits = strspn(port_text, "0123456789");
    if (digits == 0 || digits > 5 || port_text[digits] != '\0' ||
        (port = strtol(port_text, NULL, 10)) > 65535) {
        set_error(errbuf, errlen, "invalid metrics address \"%s\": bad port \"%s\"",
                  host_port, port_text);
        return -1;
    }

    memset(ss, 0, sizeof *ss);
    if (!bracketed && (host[0] == '\0' || strcmp(host, "*") == 0)) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port);
        *ipv6 = 0;
        return 0;
    }

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
    if (bracketed)
        hints.ai_flags |= AI_NUMERICHOST;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port_text, &hints, &res);
    if (rc != 0 || !res) {
        set_error(errbuf, errlen, "could not resolve metrics address \"%s\": %s", host_port,
                  rc != 0 ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    /* The first answer, as most servers do for a name with several. */
    if (res->ai_addrlen > sizeof *ss ||
        (res->ai_family != AF_INET && res->ai_family != AF_INET6)) {
        set_error(errbuf, errlen, "could not use metrics address \"%s\": not IPv4 or IPv6",
                  host_port);
        freeaddrinfo(res);
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *ipv6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

httpd *httpd_start(const char *host_port, httpd_metrics_fn metrics, httpd_health_fn health,
                   void *arg, int *bound_port, char *errbuf, size_t errlen)
{
    assert(metrics);
    struct sockaddr_storage ss;
    int ipv6 = 0;
    if (parse_address(host_port, &ss, &ipv6, errbuf, errlen) != 0)
        return NULL;
    uint16_t port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);

    httpd *h = calloc(1, sizeof *h);
    if (!h) {
        set_error(errbuf, errlen, "could not serve metrics on \"%s\": out of memory",
                  host_port);
        return NULL;
    }
    if (pthread_mutex_init(&h->lock, NULL) != 0) {
        set_error(errbuf, errlen, "could not serve metrics on \"%s\": no mutex", host_port);
        goto out_free;
    }
    h->metrics = metrics;
    h->health = health;
    h->arg = arg;
    /* No other thread sees h yet; the lock is for libmicrohttpd's. */
    h->capture_log = 1;

    /* Without MHD_USE_DUAL_STACK an IPv6 socket is IPV6_V6ONLY: "[::]"
     * means IPv6 only, as written. The logger must be the first option to
     * see every message. */
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ipv6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, handle_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTPD_CONNECTIONS_MAX,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTPD_CONNECTIONS_PER_ADDRESS,
        MHD_OPTION_END);

    char why[START_ERROR_SIZE];
    pthread_mutex_lock(&h->lock);
    h->capture_log = 0;
    snprintf(why, sizeof why, "%s", h->start_error);
    pthread_mutex_unlock(&h->lock);

    if (!d) {
        set_error(errbuf, errlen, "could not serve metrics on \"%s\": %s", host_port,
                  why[0] ? why : "libmicrohttpd did not start");
        goto out_destroy_lock;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || info->port == 0) {
        set_error(errbuf, errlen,
                  "could not serve metrics on \"%s\": the bound port is unknown", host_port);
        goto out_stop_daemon;
    }
    h->daemon = d;
    if (bound_port)
        *bound_port = info->port;
    return h;

out_stop_daemon:
    MHD_stop_daemon(d);
out_destroy_lock:
    pthread_mutex_destroy(&h->lock);
out_free:
    free(h);
    return NULL;
}

/*
 * The grammar httpd_start() accepts, checked where a setting is read so
 * that a bad one is refused with its place (binding it — in use, a name
 * that does not resolve — stays an error at start): HOST:PORT, HOST empty
 * or "*" (every IPv4 interface), a name, an IPv4 address, or an IPv6
 * address in brackets; PORT 0..65535 (0: the kernel picks). NULL, or what
 * is wrong. One check for both programs' --metrics.
 */
const char *httpd_address_problem(const char *s)
{
    const char *port;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1 || close[1] != ':')
            return "expected HOST:PORT, with an IPv6 host as [ADDRESS]:PORT";
        hostlen = (size_t)(close - s - 1);
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return "expected HOST:PORT";
        if (memchr(s, ':', (size_t)(colon - s)))
            return "an IPv6 host needs brackets, as in [::1]:9187";
        hostlen = (size_t)(colon - s);
        port = colon + 1;
    }
    if (hostlen > 255)
        return "host name too long";
    for (const char *h = s; h < port - 1; h++)
        if ((unsigned char)*h <= ' ' || (unsigned char)*h >= 0x7f)
            return "the host contains a space or a control character";
    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || digits > 5 || port[digits] != '\0' || strtol(port, NULL, 10) > 65535)
        return "the port must be a number from 0 to 65535";
    return NULL;
}

int httpd_connections(const httpd *h)
{
    const union MHD_DaemonInfo *info =
        h && h->daemon ? MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS)
                       : NULL;
    return info ? (int)info->num_connections : -1;
}

void httpd_stop(httpd *h)
{
    if (!h)
        return;
    /* Joins the HTTP thread: no callback runs after this. */
    MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void httpd_address(const char *host_port, int bound_port, char *out, size_t len)
{
    const char *colon = strrchr(host_port, ':');
    size_t host = colon ? (size_t)(colon - host_port) : strlen(host_port);
    if (host == 0 || (host == 1 && host_port[0] == '*'))
        snprintf(out, len, "0.0.0.0:%d", bound_port);
    else
        snprintf(out, len, "%.*s:%d", (int)host, host_port, bound_port);
}

void httpd_log_listen(const char *host_port, int bound_port)
{
    char address[300];
    httpd_address(host_port, bound_port, address, sizeof address);
    ferry__log_json(FERRY_LOG_INFO, "metrics.listen",
                   json_pack("{s:s, s:i}", "address", address, "port", bound_port),
                   "serving /metrics and /healthz on %s", address);
}
