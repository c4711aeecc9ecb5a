/*
 * tu_http.h — a tiny HTTP/1.0 client for the metrics endpoints, and
 * reading a Prometheus exposition. The client fails the running cmocka
 * test on error; the readers call no cmocka function (threads other than
 * the test's may use them).
 */
#ifndef FERRY_TU_HTTP_H
#define FERRY_TU_HTTP_H

typedef struct tu_http_reply {
    int status;                 /* -1: the connection was refused */
    char *raw;                  /* the whole response, NUL-terminated, malloc'd;
                                   NULL when refused */
    const char *body;           /* into raw */
} tu_http_reply;

/* Connect to address:port (family AF_INET or AF_INET6), send request as
 * is and read the response to EOF (HTTP/1.0: the server closes after one
 * response). A refused connection is status -1, so that a caller can wait
 * for a server to start; any other failure, or an answer that is not
 * HTTP, fails the test. The caller frees raw. */
tu_http_reply tu_http_raw(int family, const char *address, int port, const char *request);
/* GET path from 127.0.0.1:port. */
tu_http_reply tu_http_get(int port, const char *path);
/* GET path and fail the test unless the answer is status with, when body
 * is not NULL, exactly that body. */
void tu_http_expect(int port, const char *path, int status, const char *body);
/* Wait until /healthz on 127.0.0.1:port answers status with a body that
 * contains want (NULL: anything); fails with the last answer after
 * timeout_ms. */
void tu_await_health(int port, int status, const char *want, int timeout_ms);

/* The value of the sample named exactly `series` (name plus labels) in
 * the exposition text into *v: 0, or -1 when it is missing, repeated or
 * malformed. */
int tu_prom_find(const char *text, const char *series, double *v);

#endif
