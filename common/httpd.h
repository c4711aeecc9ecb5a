/*
 * httpd.h — the small HTTP server behind `--metrics HOST:PORT`:
 * GET/HEAD /metrics (the Prometheus text exposition) and /healthz, on
 * libmicrohttpd's own thread. It knows nothing of what is measured: the
 * relay (metrics.c) and the reconciler (rc_metrics.c) each give it two
 * callbacks and a context.
 *
 * The callbacks run on libmicrohttpd's thread, concurrently with whatever
 * the caller's threads do to arg: they must synchronise with them.
 * httpd_stop() joins that thread, so no callback runs after it returns.
 */
#ifndef FERRY_HTTPD_H
#define FERRY_HTTPD_H

#include <stddef.h>

typedef struct httpd httpd;

/* Connections served at once, and from one address. A connection that
 * sends a byte now and then is never idle long enough to be timed out:
 * 64 such held every slot, and a probe of /healthz got no answer (an
 * outside audit). From one address they now hold at most a few; a probe
 * from another (the kubelet's, a scraper's) is answered. */
enum { HTTPD_CONNECTIONS_MAX = 256, HTTPD_CONNECTIONS_PER_ADDRESS = 8 };

/* The /metrics body: malloc'd text (the server frees it), NULL when out of
 * memory (the request gets a 500). */
typedef char *(*httpd_metrics_fn)(void *arg);
/* 1 when healthy; else 0 with the reason in reason (for the 503 body).
 * reason holds len bytes and starts empty; an empty reason is answered
 * as "unhealthy". */
typedef int (*httpd_health_fn)(void *arg, char *reason, size_t len);

/* Serve GET/HEAD /metrics and /healthz on host_port ("127.0.0.1:9187",
 * "[::1]:0", ":9187", "*:0"; "*" or nothing is every IPv4 interface, an
 * IPv6 host needs brackets). *bound_port (may be NULL) gets the port bound
 * (for ":0"). NULL with errbuf filled on failure, *bound_port untouched.
 * metrics must not be NULL; health may be (always healthy). arg is
 * borrowed and must outlive the server. */
httpd *httpd_start(const char *host_port, httpd_metrics_fn metrics, httpd_health_fn health,
                   void *arg, int *bound_port, char *errbuf, size_t errlen);
/* The address served, for the log: host_port's host ("0.0.0.0" for
 * nothing or "*") and the bound port, "127.0.0.1:43817", "[::1]:9187".
 * Into out (len bytes). */
void httpd_address(const char *host_port, int bound_port, char *out, size_t len);
/* Log where the metrics are served (the event "metrics.listen", with the
 * address and the bound port): with port 0, or behind a proxy, the one
 * way to know where to scrape. */
void httpd_log_listen(const char *host_port, int bound_port);
/* NULL when host_port is of the form httpd_start takes (HOST:PORT, an
 * IPv6 host in brackets, PORT 0..65535), else what is wrong with it. */
const char *httpd_address_problem(const char *host_port);
/* The connections open now (-1 unknown): for tests that wait for the
 * server to have taken theirs. */
int httpd_connections(const httpd *h);
/* Stop serving and free h; NULL ok. */
void httpd_stop(httpd *h);

#endif
