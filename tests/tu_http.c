/* tu_http.c — see tu_http.h. */
#include "tu_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "testutil.h"

tu_http_reply tu_http_raw(int family, const char *address, int port, const char *request)
{
    tu_http_reply rep = {.status = -1};
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET6, address, &a->sin6_addr), 1);
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET, address, &a->sin_addr), 1);
        len = sizeof *a;
    }
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    /* A server that never answers fails the test instead of hanging it. */
    struct timeval tv = {.tv_sec = 10};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        close(fd);
        if (e == ECONNREFUSED)
            return rep;
        fail_msg("connect to %s port %d: %s", address, port, strerror(e));
    }
    size_t n = strlen(request);
    for (size_t off = 0; off < n;) {
        ssize_t w = send(fd, request + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            fail_msg("send: %s", strerror(errno));
        off += (size_t)w;
    }
    size_t cap = 8192, got = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (cap - got < 1024) {
            cap *= 2;
            char *p = realloc(buf, cap);
            assert_non_null(p);
            buf = p;
        }
        ssize_t r = recv(fd, buf + got, cap - got - 1, 0);
        if (r < 0) {
            free(buf);
            close(fd);
            fail_msg("recv: %s", strerror(errno));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    rep.raw = buf;
    int minor;
    if (sscanf(buf, "HTTP/1.%d %d ", &minor, &rep.status) != 2)
        fail_msg("not an HTTP response: %.80s", buf);
    const char *sep = strstr(buf, "\r\n\r\n");
    assert_non_null(sep);
    rep.body = sep + 4;
    return rep;
}

tu_http_reply tu_http_get(int port, const char *path)
{
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    return tu_http_raw(AF_INET, "127.0.0.1", port, req);
}

void tu_http_expect(int port, const char *path, int status, const char *body)
{
    tu_http_reply r = tu_http_get(port, path);
    if (r.status != status || (body != NULL && strcmp(r.body, body) != 0)) {
        char got[256];
        snprintf(got, sizeof got, "%d \"%.200s\"", r.status, r.body ? r.body : "");
        free(r.raw);
        fail_msg("GET %s: want %d \"%s\", got %s", path, status, body ? body : "...", got);
    }
    free(r.raw);
}

int tu_prom_find(const char *text, const char *series, double *v)
{
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(text, key);
    if (!p || strstr(p + 1, key))
        return -1;
    p += strlen(key);
    char *end;
    *v = strtod(p, &end);
    return end == p || *end != '\n' ? -1 : 0;
}

void tu_await_health(int port, int status, const char *want, int timeout_ms)
{
    char last[512] = "";
    int last_status = 0;
    for (int64_t end = clk_mono_ms() + timeout_ms;;) {
        tu_http_reply r = tu_http_get(port, "/healthz");
        int ok = r.status == status && (want == NULL || (r.body && strstr(r.body, want)));
        last_status = r.status;
        snprintf(last, sizeof last, "%s", r.body ? r.body : "");
        free(r.raw);
        if (ok)
            return;
        if (clk_mono_ms() > end)
            fail_msg("/healthz did not answer %d \"...%s...\" within %d ms; last: %d \"%s\"",
                     status, want ? want : "", timeout_ms, last_status, last);
        clk_sleep_ms(50);
    }
}
