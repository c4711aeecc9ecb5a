/* kafkatmp.c — see kafkatmp.h.
 *
 * The child's stdin is one end of a socketpair rather than a pipe so that
 * writing to a broker that died fails with EPIPE (send with MSG_NOSIGNAL)
 * instead of killing the test with SIGPIPE; its stdout is a pipe. Out of
 * memory aborts: this is a test harness. */
#include "kafkatmp.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

enum {
    KT_START_TIMEOUT_MS = 30000,
    KT_REPLY_TIMEOUT_MS = 30000,
    KT_TERM_TIMEOUT_MS = 10000,
    KT_LINE_MAX = 4096,            /* longest reply line we keep */
    KT_BROKERS_MAX = 32,
};

struct kt_broker {
    pid_t pid;
    int ctl_fd;                    /* our end of the child's stdin, -1 once closed */
    int out_fd;                    /* read end of the child's stdout */
    bool reaped;
    int status;                    /* as kt_wait reports it, once reaped */
    char *bootstrap;
    size_t rlen;                   /* bytes buffered in rbuf */
    char rbuf[KT_LINE_MAX];
};

static void *kt_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "kafkatmp: out of memory\n");
        abort();
    }
    return p;
}

static char *kt_xmemdup(const void *data, size_t len)
{
    char *p = kt_xmalloc(len + 1);
    if (len > 0)
        memcpy(p, data, len);
    p[len] = '\0';
    return p;
}

static int kt_decode_status(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

/* ------------------------------------------------------------------ */
/* The control channel                                                  */

int kt_read_line(kt_broker *kb, char *line, size_t len, int timeout_ms)
{
    long long deadline = clk_mono_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(kb->rbuf, '\n', kb->rlen);
        if (nl != NULL) {
            size_t n = (size_t)(nl - kb->rbuf);
            if (line != NULL && len > 0) {
                size_t keep = n < len - 1 ? n : len - 1;
                memcpy(line, kb->rbuf, keep);
                line[keep] = '\0';
            }
            kb->rlen -= n + 1;
            memmove(kb->rbuf, nl + 1, kb->rlen);
            return 0;
        }
        if (kb->rlen == sizeof kb->rbuf) {
            fprintf(stderr, "kafkatmp: reply line longer than %d bytes\n", KT_LINE_MAX);
            kb->rlen = 0;
            return -1;
        }
        long long left = deadline - clk_mono_ms();
        if (left <= 0) {
            fprintf(stderr, "kafkatmp: no reply from devkafka (pid %ld) within %d ms\n",
                    (long)kb->pid, timeout_ms);
            return -1;
        }
        struct pollfd pfd = {.fd = kb->out_fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno != EINTR) {
            fprintf(stderr, "kafkatmp: poll: %s\n", strerror(errno));
            return -1;
        }
        if (rc <= 0)
            continue;
        ssize_t got = read(kb->out_fd, kb->rbuf + kb->rlen, sizeof kb->rbuf - kb->rlen);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            fprintf(stderr, "kafkatmp: devkafka (pid %ld) closed its stdout%s%s\n",
                    (long)kb->pid, got < 0 ? ": " : "", got < 0 ? strerror(errno) : "");
            return -1;
        }
        kb->rlen += (size_t)got;
    }
}

int kt_send_raw(kt_broker *kb, const void *data, size_t len)
{
    if (kb->ctl_fd < 0) {
        fprintf(stderr, "kafkatmp: devkafka's stdin is already closed\n");
        return -1;
    }
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(kb->ctl_fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "kafkatmp: could not write to devkafka (pid %ld): %s\n",
                    (long)kb->pid, strerror(errno));
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void kt_close_stdin(kt_broker *kb)
{
    if (kb->ctl_fd >= 0) {
        close(kb->ctl_fd);
        kb->ctl_fd = -1;
    }
}

static int kt_vcommand(kt_broker *kb, char *reply, size_t len, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static int kt_vcommand(kt_broker *kb, char *reply, size_t len, const char *fmt, va_list ap)
{
    if (reply != NULL && len > 0)
        reply[0] = '\0';
    char *cmd = NULL;
    int n = vasprintf(&cmd, fmt, ap);
    if (n < 0) {
        fprintf(stderr, "kafkatmp: out of memory\n");
        abort();
    }
    char *line = kt_xmalloc((size_t)n + 2);
    memcpy(line, cmd, (size_t)n);
    line[n] = '\n';
    int rc = kt_send_raw(kb, line, (size_t)n + 1);
    free(line);
    char got[KT_LINE_MAX];
    if (rc == 0)
        rc = kt_read_line(kb, got, sizeof got, KT_REPLY_TIMEOUT_MS);
    if (rc == 0) {
        if (reply != NULL && len > 0)
            snprintf(reply, len, "%s", got);
        if (strcmp(got, "ok") == 0 || strncmp(got, "ok ", 3) == 0)
            rc = 0;
        else {
            fprintf(stderr, "kafkatmp: \"%.200s\": %s\n", cmd, got);
            rc = -1;
        }
    }
    free(cmd);
    return rc;
}

int kt_command(kt_broker *kb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = kt_vcommand(kb, NULL, 0, fmt, ap);
    va_end(ap);
    return rc;
}

int kt_command_reply(kt_broker *kb, char *reply, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = kt_vcommand(kb, reply, len, fmt, ap);
    va_end(ap);
    return rc;
}

/* ------------------------------------------------------------------ */
/* The child process                                                    */

kt_broker *kt_start(int brokers)
{
    if (brokers < 1 || brokers > KT_BROKERS_MAX) {
        fprintf(stderr, "kt_start: %d brokers: must be 1..%d\n", brokers, KT_BROKERS_MAX);
        return NULL;
    }
    const char *bin = getenv("FERRY_RELAY_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = "build/asan/ferry-relay";
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "kt_start: cannot run %s: %s (build it, or set FERRY_RELAY_BIN)\n", bin,
                strerror(errno));
        return NULL;
    }
    kt_broker *kb = kt_xmalloc(sizeof *kb);
    memset(kb, 0, sizeof *kb);
    kb->pid = -1;
    kb->ctl_fd = kb->out_fd = -1;

    int ctl[2], out[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0) {
        fprintf(stderr, "kt_start: socketpair: %s\n", strerror(errno));
        goto out_free;
    }
    if (pipe2(out, O_CLOEXEC) != 0) {
        fprintf(stderr, "kt_start: pipe: %s\n", strerror(errno));
        goto out_close_ctl;
    }
    char nbrokers[16];
    snprintf(nbrokers, sizeof nbrokers, "%d", brokers);
    char *argv[] = {(char *)bin, "devkafka", "--brokers", nbrokers, NULL};
    static const char exec_failed[] = "kt_start: exec of the devkafka binary failed\n";

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "kt_start: fork: %s\n", strerror(errno));
        goto out_close_out;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls from here to exec. Die with the
         * test process (more exactly: with the thread that forked); if it
         * is already gone, the death signal came too early to arrive. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        if (dup2(ctl[1], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execv(bin, argv);
        ssize_t ignored = write(STDERR_FILENO, exec_failed, sizeof exec_failed - 1);
        (void)ignored;
        _exit(127);
    }
    close(ctl[1]);
    close(out[1]);
    kb->pid = pid;
    kb->ctl_fd = ctl[0];
    kb->out_fd = out[0];

    char line[KT_LINE_MAX] = "";
    if (kt_read_line(kb, line, sizeof line, KT_START_TIMEOUT_MS) != 0 || line[0] == '\0' ||
        strchr(line, ':') == NULL) {
        fprintf(stderr, "kt_start: %s devkafka --brokers %d gave no bootstrap servers%s%s\n",
                bin, brokers, line[0] ? ": " : "", line);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(kb->ctl_fd);
        close(kb->out_fd);
        free(kb);
        return NULL;
    }
    kb->bootstrap = kt_xmemdup(line, strlen(line));
    return kb;

out_close_out:
    close(out[0]);
    close(out[1]);
out_close_ctl:
    close(ctl[0]);
    close(ctl[1]);
out_free:
    free(kb);
    return NULL;
}

const char *kt_bootstrap(const kt_broker *kb)
{
    return kb->bootstrap;
}

pid_t kt_pid(const kt_broker *kb)
{
    return kb->pid;
}

int kt_wait(kt_broker *kb, int timeout_ms)
{
    long long deadline = clk_mono_ms() + timeout_ms;
    while (!kb->reaped) {
        int wstatus;
        pid_t r = waitpid(kb->pid, &wstatus, WNOHANG);
        if (r == kb->pid) {
            kb->reaped = true;
            kb->status = kt_decode_status(wstatus);
            break;
        }
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "kafkatmp: waitpid %ld: %s\n", (long)kb->pid, strerror(errno));
            return -1;
        }
        if (clk_mono_ms() >= deadline)
            return -1;
        clk_sleep_ms(5);   /* polling interval for the child's exit */
    }
    return kb->status;
}

int kt_terminate(kt_broker *kb)
{
    if (kb->reaped)
        return kb->status;
    kill(kb->pid, SIGTERM);
    int status = kt_wait(kb, KT_TERM_TIMEOUT_MS);
    if (status == -1 && !kb->reaped) {
        fprintf(stderr, "kafkatmp: devkafka (pid %ld) ignored SIGTERM for %d ms; killing it\n",
                (long)kb->pid, KT_TERM_TIMEOUT_MS);
        kill(kb->pid, SIGKILL);
        int wstatus;
        if (waitpid(kb->pid, &wstatus, 0) == kb->pid) {
            kb->reaped = true;
            kb->status = kt_decode_status(wstatus);
        }
        status = kb->status;
    }
    return status;
}

void kt_stop(kt_broker *kb)
{
    if (kb == NULL)
        return;
    kt_terminate(kb);
    kt_close_stdin(kb);
    close(kb->out_fd);
    free(kb->bootstrap);
    free(kb);
}

/* ------------------------------------------------------------------ */
/* Consumer                                                             */

static void kt_msg_copy(kt_msg *dst, const rd_kafka_message_t *m)
{
    memset(dst, 0, sizeof *dst);
    const char *topic = rd_kafka_topic_name(m->rkt);
    dst->topic = kt_xmemdup(topic, strlen(topic));
    dst->partition = m->partition;
    dst->offset = m->offset;
    if (m->key != NULL) {
        dst->key = kt_xmemdup(m->key, m->key_len);
        dst->key_len = m->key_len;
    }
    if (m->payload != NULL) {
        dst->value = kt_xmemdup(m->payload, m->len);
        dst->value_len = m->len;
    }
    rd_kafka_timestamp_type_t tstype;
    dst->timestamp = rd_kafka_message_timestamp(m, &tstype);
    if (tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
        dst->timestamp = -1;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR || hdrs == NULL)
        return;
    size_t n = rd_kafka_header_cnt(hdrs);
    if (n == 0)
        return;
    dst->headers = kt_xmalloc(n * sizeof *dst->headers);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *val;
        size_t size;
        kt_hdr *h = &dst->headers[dst->header_count];
        if (rd_kafka_header_get_all(hdrs, i, &name, &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        h->name = kt_xmemdup(name, strlen(name));
        h->value = val != NULL ? kt_xmemdup(val, size) : NULL;
        h->value_len = val != NULL ? size : 0;
        dst->header_count++;
    }
}

static int kt_msg_order(const void *a, const void *b)
{
    const kt_msg *x = a, *y = b;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static bool kt_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[256];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kt_consume: %s=%s: %s\n", name, value, errstr);
        return false;
    }
    return true;
}

/* The partition count of topic, waiting for the topic to appear until
 * deadline; 0 if it did not. */
static int kt_partition_count(rd_kafka_t *rk, const char *topic, long long deadline)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (rkt == NULL) {
        fprintf(stderr, "kt_consume: topic %s: %s\n", topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        return 0;
    }
    int count = 0;
    rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (;;) {
        long long left = deadline - clk_mono_ms();
        if (left <= 0)
            break;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err =
            rd_kafka_metadata(rk, 0, rkt, &md, (int)(left < 2000 ? left : 2000));
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1) {
            err = md->topics[0].err;
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
                count = md->topics[0].partition_cnt;
        }
        if (md != NULL)
            rd_kafka_metadata_destroy(md);
        if (count > 0)
            break;
        last = err;
        clk_sleep_ms(50);   /* the topic is created by its first producer */
    }
    if (count == 0)
        fprintf(stderr, "kt_consume: topic %s did not appear: %s\n", topic,
                rd_kafka_err2str(last));
    rd_kafka_topic_destroy(rkt);
    return count;
}

/* Each partition's high watermark into (*ends)[p] (malloc'd, the
 * caller frees it), 0 for an empty one: the number of partitions that
 * hold messages, or -1 (and *ends NULL) if a watermark could not be had
 * before deadline. */
static int kt_watermarks(rd_kafka_t *rk, const char *topic, int partitions, long long deadline,
                         int64_t **ends)
{
    *ends = kt_xmalloc((size_t)partitions * sizeof **ends);
    int holding = 0;
    for (int p = 0; p < partitions; p++) {
        long long left = deadline - clk_mono_ms();
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t err =
            left <= 0 ? RD_KAFKA_RESP_ERR__TIMED_OUT
                      : rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, (int)left);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "kt_consume: %s [%d]: no watermarks (%s): reading until the "
                    "timeout\n", topic, p, rd_kafka_err2str(err));
            free(*ends);
            *ends = NULL;
            return -1;
        }
        (*ends)[p] = hi > lo ? hi : 0;
        holding += hi > lo;
    }
    return holding;
}

kt_msgs *kt_consume(const char *bootstrap, const char *topic, size_t want, int timeout_ms)
{
    static unsigned long serial;
    long long deadline = clk_mono_ms() + timeout_ms;
    char group[96];
    snprintf(group, sizeof group, "kafkatmp-%ld-%lu-%lld", (long)getpid(), ++serial,
             (long long)clk_mono_ms());

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!kt_set(conf, "bootstrap.servers", bootstrap) || !kt_set(conf, "group.id", group) ||
        !kt_set(conf, "enable.auto.commit", "false") ||
        !kt_set(conf, "enable.auto.offset.store", "false") ||
        !kt_set(conf, "auto.offset.reset", "earliest") ||
        !kt_set(conf, "enable.partition.eof", "false")) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL) {
        fprintf(stderr, "kt_consume: could not create the consumer: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);

    kt_msgs *out = kt_xmalloc(sizeof *out);
    out->count = 0;
    out->msgs = NULL;
    size_t cap = 0;

    int partitions = kt_partition_count(rk, topic, deadline);
    /* want 0: up to each partition's high watermark as it is now (ends[p],
     * the offset after its last message), then stop: an event to wait
     * for, where reading "until the timeout" cost every such read its
     * whole timeout (8 s in one test) and could still end early on a
     * loaded machine. unread counts the partitions not yet read to their
     * end; -1 if a watermark could not be had (then: until the timeout). */
    int64_t *ends = NULL;
    int unread = -1;
    if (want == 0 && partitions > 0)
        unread = kt_watermarks(rk, topic, partitions, deadline, &ends);
    if (partitions > 0 && unread != 0) {
        rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(partitions);
        for (int p = 0; p < partitions; p++)
            rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
        rd_kafka_topic_partition_list_destroy(parts);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
            fprintf(stderr, "kt_consume: assign: %s\n", rd_kafka_err2str(err));
        while (err == RD_KAFKA_RESP_ERR_NO_ERROR && (want == 0 || out->count < want) &&
               unread != 0) {
            long long left = deadline - clk_mono_ms();
            if (left <= 0)
                break;
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, (int)(left < 100 ? left : 100));
            if (m == NULL)
                continue;
            if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "kt_consume: %s [%d]: %s\n", topic, (int)m->partition,
                        rd_kafka_message_errstr(m));
            } else {
                if (ends != NULL && m->partition >= 0 && m->partition < partitions &&
                    ends[m->partition] > 0 && m->offset + 1 >= ends[m->partition]) {
                    ends[m->partition] = 0;     /* read to its end */
                    unread--;
                }
                if (out->count == cap) {
                    cap = cap ? cap * 2 : 64;
                    kt_msg *grown = realloc(out->msgs, cap * sizeof *grown);
                    if (grown == NULL) {
                        fprintf(stderr, "kafkatmp: out of memory\n");
                        abort();
                    }
                    out->msgs = grown;
                }
                kt_msg_copy(&out->msgs[out->count++], m);
            }
            rd_kafka_message_destroy(m);
        }
    }
    free(ends);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (out->count > 1)
        qsort(out->msgs, out->count, sizeof *out->msgs, kt_msg_order);
    return out;
}

void kt_msgs_free(kt_msgs *msgs)
{
    if (msgs == NULL)
        return;
    for (size_t i = 0; i < msgs->count; i++) {
        kt_msg *m = &msgs->msgs[i];
        for (size_t h = 0; h < m->header_count; h++) {
            free(m->headers[h].name);
            free(m->headers[h].value);
        }
        free(m->headers);
        free(m->topic);
        free(m->key);
        free(m->value);
    }
    free(msgs->msgs);
    free(msgs);
}

const char *kt_header(const kt_msg *msg, const char *name)
{
    for (size_t i = 0; i < msg->header_count; i++)
        if (strcmp(msg->headers[i].name, name) == 0)
            return msg->headers[i].value;
    return NULL;
}
