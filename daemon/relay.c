/*
 * relay.c — publish ferry.outbox to Kafka: the loop.
 *
 * One thread runs the loop; librdkafka runs its own threads and hands
 * delivery reports back to this one through rd_kafka_poll(). Each turn:
 *
 *   leases       every lease_ttl/3: renew, adopt, take the share
 *                (relay_lease.c)
 *   reports      delivery reports and the acknowledgement's result go to
 *                the scheduler; failed messages are counted in the database
 *   plan         relay_sched says what to do now: acknowledge, give a
 *                shard back, turn wake-ups on or off, try the wake-up
 *                handshake (relay_wake.c), fetch a batch (and how many rows), stop, and
 *                how long to wait for events after
 *   wait         for a delivery report, a NOTIFY, the acknowledgement's
 *                result, or the plan's timeout
 *
 * Invariants kept here and in the stage files (relay_sched.h says which
 * decisions keep them):
 *   - a row is acknowledged only after its delivery report says it is
 *     persisted, and only while the epoch it was produced under holds;
 *   - rows of one key are produced in position order, one sweep's worth at
 *     a time, so a resend after a failure starts at the key's first
 *     unacknowledged row;
 *   - the producer is idempotent with the gapless guarantee and never
 *     times a message out: within a partition nothing after a lost message
 *     is written; if librdkafka cannot keep that it raises a fatal error
 *     and the producer is rebuilt;
 *   - at most max_inflight messages are produced and unacknowledged, and a
 *     fetch brings at most batch_size rows and a byte budget; no row is
 *     produced while the producer holds the source's budget of bytes in
 *     flight (64 MiB at most, less if its queue is smaller; a partition
 *     an eighth of it), so the relay's memory stays bounded whatever the
 *     payloads' size and the broker's pace.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "relay.h"
#include "relay_int.h"
#include "httpd.h"

static volatile sig_atomic_t stop_requested;
/* SIGHUP: the relay reloads nothing (its settings are read at start); the
 * loop says so rather than staying silent or dying of the default action. */
static volatile sig_atomic_t hup_received;

void relay_request_stop(void) { stop_requested = 1; }

int64_t relay_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void relay_count(relay *r, metric_counter c, uint64_t n)
{
    if (r->m != NULL)
        metrics_add(r->m, c, n);
}

void relay_log_stop(const relay *r, int status, const char *name, uint64_t n, uint64_t refused)
{
    ferry__log_json(FERRY_LOG_INFO, "relay.stop",
                   json_pack("{s:I, s:I, s:I, s:I}", "produced", (json_int_t)r->produced,
                             "delivered", (json_int_t)r->delivered, name, (json_int_t)n,
                             "refused", (json_int_t)refused),
                   "ferry-relay stopped (%s)", status == 0 ? "everything delivered"
                                                           : "not everything delivered");
}

/* ------------------------------------------------------------------ health */

static void log_events(relay *r)
{
    sched_event ev[16];
    int n;
    while ((n = sched_events(r->s, ev, 16)) > 0) {
        for (int i = 0; i < n; i++) {
            const sched_event *e = &ev[i];
            switch (e->kind) {
            case EV_PARTITION_STUCK: {
                json_t *f = json_pack("{s:s, s:i, s:I}", "topic", e->topic, "partition",
                                      e->partition, "age_ms", (json_int_t)e->age_ms);
                if (e->partition >= 0)
                    ferry__log_json(FERRY_LOG_WARN, "partition.stuck", f,
                                   "partition %s/%d has not answered for %lld ms; its keys "
                                   "wait, every other key goes on", e->topic, e->partition,
                                   (long long)e->age_ms);
                else
                    ferry__log_json(FERRY_LOG_WARN, "partition.stuck", f,
                                   "topic %s has no partition the producer can use after "
                                   "%lld ms (unknown? not authorised?); its keys wait, every "
                                   "other key goes on", e->topic, (long long)e->age_ms);
                break;
            }
            case EV_PARTITION_RECOVERED:
                ferry__log_json(FERRY_LOG_INFO, "partition.recovered",
                               json_pack("{s:s, s:i}", "topic", e->topic, "partition",
                                         e->partition),
                               "partition %s/%d answers again", e->topic, e->partition);
                break;
            case EV_KEY_STUCK:
                ferry__log_json(FERRY_LOG_WARN, "key.stuck",
                               json_pack("{s:s, s:s, s:I}", "topic", e->topic, "key", e->key,
                                         "age_ms", (json_int_t)e->age_ms),
                               "key %s/%s has failed for %lld ms; it is retried with backoff "
                               "until max_attempts moves its message to the dead letters",
                               e->topic, e->key, (long long)e->age_ms);
                break;
            case EV_KEY_RECOVERED:
                ferry__log_json(FERRY_LOG_INFO, "key.recovered",
                               json_pack("{s:s, s:s}", "topic", e->topic, "key", e->key),
                               "key %s/%s is no longer failing", e->topic, e->key);
                break;
            case EV_KEY_LEFT:
                ferry__log_json(FERRY_LOG_WARN, "key.left",
                               json_pack("{s:s, s:s, s:I}", "topic", e->topic, "key", e->key,
                                         "age_ms", (json_int_t)e->age_ms),
                               "key %s/%s: its failing message left the outbox after %lld ms "
                               "(dead-lettered, or discarded); no longer counted as stuck. A "
                               "dead-lettered message parks its key until it is replayed or "
                               "discarded (ferry-reconcile repair; ferry-relay status lists "
                               "the dead letters)", e->topic, e->key, (long long)e->age_ms);
                break;
            }
        }
    }
}

void relay_set_health(relay *r, int healthy, const char *reason)
{
    if (healthy == r->healthy && strcmp(reason, r->health_reason) == 0)
        return;
    r->healthy = healthy;
    snprintf(r->health_reason, sizeof r->health_reason, "%s", reason);
    if (r->m != NULL)
        metrics_set_health(r->m, healthy, healthy ? NULL : reason);
}

/* /healthz and the gauges, from the scheduler's view. The stuck reason
 * changes every second (it names its age): updated at most once a second. */
static void update_health(relay *r, int64_t now)
{
    char why_gate[256];
    sched_stats st;
    sched_stats_get(r->s, now, &st);
    if (r->m != NULL) {
        metrics_set(r->m, G_INFLIGHT, st.inflight);
        metrics_set(r->m, G_ACK_PENDING, st.unacked);
        metrics_set(r->m, G_KAFKA_QUEUE, r->k.rk ? rd_kafka_outq_len(r->k.rk) : 0);
        metrics_set(r->m, G_STUCK_PARTITIONS, st.stuck_partitions);
        metrics_set(r->m, G_STUCK_KEYS, st.stuck_keys);
        metrics_set(r->m, G_OLDEST_INFLIGHT_MS, st.oldest_inflight_ms);
        metrics_set(r->m, G_INFLIGHT_BYTES, (int64_t)sched_inflight_bytes(r->s));
        /* Seen at the handshake, which a busy relay does not make: while
         * busy, writers do not notify anyway. */
        metrics_set(r->m, G_WAKE_FOREIGN, r->wake.foreign_told && !r->wake.off);
    }
    relay_lag_sync(r->lag, r->s);
    /* librdkafka says when every broker is down, not when one is back: with
     * nothing in flight no delivery report would tell us, so ask, at most
     * once a second and for at most 200 ms. */
    if (atomic_load(&r->k.down) && sched_inflight(r->s) == 0 && now >= r->next_kafka_probe) {
        char why[256];
        relay_kafka_reachable(r, 200, why, sizeof why);
        r->next_kafka_probe = now + 1000;
    }
    if (!r->db.ok)
        relay_set_health(r, 0, "database unreachable: reconnecting");
    else if (atomic_load(&r->k.down))
        relay_set_health(r, 0, "kafka unreachable: every broker is down");
    else if (st.stuck_reason[0] != '\0')
        relay_set_health(r, 0, st.stuck_reason);
    else if (relay_lag_gate_held(r->lag, why_gate, sizeof why_gate))
        relay_set_health(r, 0, why_gate);
    else
        relay_set_health(r, 1, "");
}

/* ------------------------------------------------------------------ setup */

static relay *relay_new(const relay_config *cfg, relay_metrics *m)
{
    relay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->cfg = cfg;
    r->m = m;
    r->k.event_pipe[0] = r->k.event_pipe[1] = -1;
    r->db.backoff_ms = 100;
    r->healthy = -1;
    sched_config sc = {.max_inflight = cfg->max_inflight, .batch_size = cfg->batch_size,
                       .stuck_ms = cfg->stuck_ms, .poll_interval_ms = cfg->poll_interval_ms,
                       .stop_grace_ms = cfg->stop_grace_ms, .once = cfg->once,
                       .max_attempts = cfg->max_attempts};
    r->s = sched_new(&sc);
    if (r->s == NULL) {
        free(r);
        return NULL;
    }
    if (cfg->holder != NULL) {
        snprintf(r->holder, sizeof r->holder, "%s", cfg->holder);
    } else {
        /* host:pid, within RELAY_HOLDER_MAX: a long host name (a
         * Kubernetes pod's) keeps its end, where pods differ, and the pid
         * stays whole. */
        char host[256] = "localhost", pid[24];
        gethostname(host, sizeof host - 1);
        int np = snprintf(pid, sizeof pid, ":%ld", (long)getpid());
        size_t hl = strlen(host), room = RELAY_HOLDER_MAX - (size_t)np;
        const char *h = hl > room ? host + (hl - room) : host;
        snprintf(r->holder, sizeof r->holder, "%s%s", h, pid);
    }
    snprintf(r->heartbeat_name, sizeof r->heartbeat_name, RELAY_PREFIX "%s", r->holder);
    return r;
}

static void relay_free(relay *r)
{
    if (r == NULL)
        return;
    relay_lag_stop(r->lag);
    relay_kafka_free(r);
    PQclear(r->ack.res);
    PQfinish(r->db.ack);
    PQfinish(r->db.main);
    sched_free(r->s);
    free(r);
}

/* 0 once a broker answered; 1 when a stop came first (nothing held or
 * produced: a clean stop); -1 when --once could not reach it. */
int relay_await_kafka(relay *r)
{
    char why[256];
    int told = 0;
    /* Not ready until a broker answered: the first look takes up to 5 s. */
    relay_set_health(r, 0, "starting: waiting for Kafka to answer");
    for (;;) {
        if (relay_kafka_reachable(r, told ? 1000 : 5000, why, sizeof why)) {
            if (told)
                ferry__log(FERRY_LOG_INFO, "kafka.reachable", "Kafka at %s answers",
                          r->k.bootstrap);
            return 0;
        }
        if (r->cfg->once) {
            /* --once publishes what is ready now, or says it cannot. */
            ferry__log(FERRY_LOG_ERROR, "kafka.connect", "could not reach Kafka at %s: %s",
                      r->k.bootstrap, why);
            return -1;
        }
        if (!told) {
            ferry__log_json(FERRY_LOG_WARN, "kafka.waiting",
                           json_pack("{s:s, s:s}", "kafka", r->k.bootstrap, "error", why),
                           "could not reach Kafka at %s (%s); waiting for it, holding no "
                           "shard", r->k.bootstrap, why);
            told = 1;
        }
        atomic_store(&r->k.down, 1);
        relay_set_health(r, 0, "kafka unreachable: waiting for a broker to answer");
        if (stop_requested) {
            /* Nothing held, nothing produced: a clean stop (exit 0), as a
             * supervisor's stop of a relay waiting for its broker is. */
            ferry__log(FERRY_LOG_INFO, "relay.stopping",
                      "stopping while waiting for Kafka: no shard held, nothing in flight");
            return 1;
        }
        rd_kafka_poll(r->k.rk, 0);
    }
}

/* 0 started; 1 stopped before it did (relay_await_kafka); -1 failed. */
static int relay_start(relay *r)
{
    if (relay_db_connect(r) != 0)
        return -1;
    if (relay_kafka_start(r) != 0)
        return -1;
    int rc = relay_await_kafka(r);
    if (rc != 0)
        return rc;
    ferry__log_json(FERRY_LOG_INFO, "relay.start",
                   json_pack("{s:s, s:i, s:s}", "holder", r->holder, "shards",
                             r->db.shard_count, "kafka", r->k.bootstrap),
                   "ferry-relay %s started", ferry_version());
    return 0;
}

/* ------------------------------------------------------------------ the loop */

/* Delivery reports, NOTIFYs and the acknowledgement's result wake us. */
static void wait_for_events(relay *r, int timeout_ms)
{
    struct pollfd fds[3] = {
        {.fd = r->k.event_pipe[0], .events = POLLIN},
        {.fd = r->db.ok ? PQsocket(r->db.main) : -1, .events = POLLIN},
        {.fd = r->ack.sent > 0 ? PQsocket(r->db.ack) : -1,
         .events = POLLIN | (r->ack.flushing ? POLLOUT : 0)}};
    if (timeout_ms > 0)
        poll(fds, 3, timeout_ms);
    char buf[256];
    while (read(r->k.event_pipe[0], buf, sizeof buf) > 0)
        ;
}

int relay_run(const relay_config *cfg, relay_metrics *m)
{
    ferry_log_level_set((ferry_log_level)cfg->log_level);
    relay *r = relay_new(cfg, m);
    if (r == NULL) {
        ferry__log(FERRY_LOG_ERROR, "relay.start", "out of memory");
        return 1;
    }
    int status = 1;
    if (cfg->outbox_source == RELAY_SOURCE_WAL) {
        /* The WAL source has its own loop (relay_wal.c), with this one's
         * producer, headers and partitioning. */
        status = relay_wal_run(r, &stop_requested);
        goto out;
    }
    int started = relay_start(r);
    if (started == 1) {
        status = 0;
        relay_log_stop(r, status, "undelivered", r->undelivered, r->refused);
    }
    if (started != 0)
        goto out;
    if (!cfg->once)
        r->lag = relay_lag_start(cfg->db, r->holder, m, cfg->stuck_ms);

    int stopping = 0, clean = 0, stuck = 0;
    char fatal[512];
    for (;;) {
        int64_t now = ferry__now_ms();
        if (hup_received) {
            hup_received = 0;
            ferry__log_json(FERRY_LOG_WARN, "signal.ignored", json_pack("{s:s}", "signal", "SIGHUP"),
                           "SIGHUP ignored: ferry-relay reloads nothing; restart it to apply "
                           "new settings");
        }
        if (stop_requested && !stopping) {
            stopping = 1;
            sched_stop(r->s, now);
            ferry__log(FERRY_LOG_INFO, "relay.stopping",
                      "stopping: no more fetches; waiting up to %d ms for %d in-flight "
                      "deliveries", cfg->stop_grace_ms, sched_inflight(r->s));
        }
        relay_db_maybe_reconnect(r);
        int tick_due = r->db.ok && now >= r->next_lease_tick;
        if (tick_due && (r->ack.sent == 0 || now >= r->next_lease_tick + cfg->lease_ttl_ms / 6)) {
            /* Also while stopping: the leases must hold until the last
             * acknowledgement, or it is refused. Not beside one, though:
             * the acknowledgement reads the lease rows FOR SHARE in its
             * own order, which a renewal updating several of them in
             * another could deadlock with. So once the tick is due no
             * acknowledgement is sent, and the tick runs when the one in
             * flight has ended, the loop going on meanwhile: at 2,000
             * rows/s one is nearly always in flight, and waiting for it
             * here held every fetch back by a commit every TTL/3. Only
             * an acknowledgement still out a sixth of the TTL later is
             * waited for, as before, the renewal coming first. */
            relay_ack_poll(r, 1);
            relay_lease_tick(r);
            relay_wake_recheck(r);
            r->next_lease_tick = now + cfg->lease_ttl_ms / 3;
            tick_due = 0;
        }
        rd_kafka_poll(r->k.rk, 0);
        if (rd_kafka_fatal_error(r->k.rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR &&
            relay_kafka_rebuild(r, fatal) != 0)
            goto out;
        relay_record_failures(r);
        relay_ack_poll(r, 0);

        now = ferry__now_ms();
        sched_plan plan;
        sched_plan_next(r->s, now, &plan);
        if (plan.polled)
            relay_count(r, M_WAKEUPS_POLL, 1);
        log_events(r);
        if (plan.release_shard >= 0)
            relay_lease_release(r, plan.release_shard);
        relay_wake_sync(r);
        if (plan.wake != 0 && r->db.ok)
            relay_wake_set(r, plan.wake > 0);
        if (plan.try_handshake && r->db.ok)
            relay_wake_handshake(r);
        if (plan.send_ack && !tick_due)
            relay_ack_send(r);
        /* A producer too small for the grown limit: no fetch until what is
         * in flight is settled (at most RESIZE_WAIT_MS), then it is made
         * again. Not while stopping: the message stays for the next relay. */
        if (!stopping && relay_kafka_resize_if_due(r, now) != 0)
            goto out;
        if (r->k.resize && plan.fetch) {
            plan.fetch = 0;
            if (plan.timeout_ms < 10)
                plan.timeout_ms = 10;   /* delivery reports wake the wait */
        }
        if (plan.fetch && r->db.ok && !stopping)
            relay_fetch_and_produce(r, plan.limit);
        if (now >= r->next_stats) {
            update_health(r, now);
            r->next_stats = now + 200;
        }
        if (plan.stop) {
            clean = plan.stop_clean;
            stuck = plan.stop_stuck;
            break;
        }
        if (plan.fetch || (tick_due && r->ack.sent == 0))
            plan.timeout_ms = 0;    /* a fetch to go on with, or the tick is free to run */
        wait_for_events(r, plan.timeout_ms);
        relay_db_drain_notifies(r);
    }

    if (stuck) {
        ferry__log(FERRY_LOG_ERROR, "relay.once_stuck",
                  "--once gave up: %d messages in flight in partitions that have not answered "
                  "for %d ms (stuck_ms); their rows stay in the outbox for the next run",
                  sched_inflight(r->s), cfg->stuck_ms);
    } else if (!clean && cfg->once && sched_inflight(r->s) == 0 &&
               sched_ack_pending(r->s) == 0) {
        /* --once settled with rows left: messages lost past max_attempts
         * sweeps, or rows held back past its bound of sweeps made again. */
        ferry__log(FERRY_LOG_ERROR, "relay.once_incomplete",
                  "--once stopped with rows left to publish (messages lost %d times, or "
                  "partitions that held rows back sweep after sweep): run it again",
                  cfg->max_attempts);
    } else if (!clean) {
        /* The grace is over with messages in flight (a partition that does
         * not answer, a broker away): they stay in the outbox and go out
         * again later, from the first unacknowledged row of each key. */
        ferry__log(FERRY_LOG_ERROR, "relay.stop_timeout",
                  "gave up after %d ms with %d in flight and %d acknowledgements pending",
                  cfg->stop_grace_ms, sched_inflight(r->s), sched_ack_pending(r->s));
        relay_kafka_stop(r, 200);
    }
    /* Acknowledge what was delivered, then let others take over. */
    for (int tries = 0; tries < 3 && r->db.ok &&
                        (sched_ack_pending(r->s) > 0 || r->ack.sent > 0); tries++) {
        relay_ack_poll(r, 1);
        relay_ack_send(r);
        relay_ack_poll(r, 1);
    }
    relay_record_failures(r);
    if (cfg->once)
        status = clean && r->refused == 0 && r->permanent_failures == 0 ? 0 : 1;
    else
        status = clean && r->refused == 0 ? 0 : 1;
    if (sched_ack_pending(r->s) > 0 || sched_inflight(r->s) > 0)
        status = 1;
    if (cfg->once && sched_leases_held(r->s) == 0) {
        if (r->lease_last_failed) {
            /* Not "taken by another": the database refused its last try
             * (see the db.error above), and every row is still there. An
             * earlier failure followed by a tick that found every shard
             * leased is "taken by another". */
            status = 1;
            ferry__log(FERRY_LOG_ERROR, "relay.once",
                      "could not take any shard's lease (%llu failed tries, the errors above): "
                      "nothing published", (unsigned long long)r->lease_failures);
        } else {
            ferry__log(FERRY_LOG_WARN, "relay.once",
                      "every shard is leased by another relay: nothing to do");
        }
    }
    if (r->db.ok)
        relay_leases_release_all(r);
    relay_log_stop(r, status, "undelivered", r->undelivered, r->refused);
out:
    relay_free(r);
    return status;
}

/* ------------------------------------------------------------------ command */

/*
 * Stopping is bounded whatever the relay waits on. The loop above waits
 * stop_grace_ms for deliveries, then acknowledges and gives its leases
 * back; each of those, the lag gauges' session and a reconnection can wait
 * on a database that does not answer (its server processes stopped, a
 * black-holed host: no statement_timeout fires, and the TCP timeouts do
 * not reach a Unix socket). So a watchdog thread, told of the first
 * SIGTERM or SIGINT through a pipe (write() is async-signal-safe), ends
 * the process stop_grace_ms + STOP_FINAL_MS after it if the relay has not
 * ended by then: exit 1. Nothing is lost by it: what was delivered and not
 * acknowledged is published again by the next holder of its shard (a
 * duplicate), the leases expire after their TTL, and the WAL slot was
 * never confirmed past what Kafka had not acknowledged.
 */
#define STOP_FINAL_MS 5000

static volatile sig_atomic_t stop_pipe[2] = {-1, -1};

static void *stop_watchdog(void *arg)
{
    const relay_config *cfg = arg;
    struct pollfd p = {.fd = stop_pipe[0], .events = POLLIN};
    int64_t deadline = -1;
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - ferry__now_ms();
            if (left <= 0)
                break;
            timeout = (int)left;
        }
        if (poll(&p, 1, timeout) <= 0)
            continue;       /* the deadline (looked at above), or EINTR */
        char c;
        if (read(stop_pipe[0], &c, 1) != 1)
            continue;
        if (c == 'q')
            return NULL;    /* the relay ended by itself */
        if (deadline < 0)
            deadline = ferry__now_ms() + cfg->stop_grace_ms + STOP_FINAL_MS;
    }
    ferry__log_json(FERRY_LOG_ERROR, "relay.stop_forced",
                   json_pack("{s:i, s:i}", "stop_grace_ms", cfg->stop_grace_ms, "final_ms",
                             STOP_FINAL_MS),
                   "still running %d ms after the stop was asked (stop_grace_ms + %d ms): "
                   "exiting now. Undelivered rows stay in the outbox; delivered ones not yet "
                   "acknowledged go out again from the next holder (duplicates, never a "
                   "loss); the leases expire after their TTL",
                   cfg->stop_grace_ms + STOP_FINAL_MS, STOP_FINAL_MS);
    _exit(1);
}

/* Start the watchdog, with the stop signals blocked in its thread (they go
 * to the loop's, whose poll they cut short). 0, or -1 (said). */
static int stop_watchdog_start(const relay_config *cfg, pthread_t *t)
{
    int fds[2];
    if (pipe(fds) != 0) {
        ferry__log(FERRY_LOG_ERROR, "relay.start", "could not make a pipe: %s", strerror(errno));
        return -1;
    }
    stop_pipe[0] = fds[0];
    stop_pipe[1] = fds[1];
    for (int i = 0; i < 2; i++)
        fcntl(stop_pipe[i], F_SETFD, FD_CLOEXEC);
    fcntl(stop_pipe[1], F_SETFL, O_NONBLOCK);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(t, NULL, stop_watchdog, (void *)cfg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        ferry__log(FERRY_LOG_ERROR, "relay.start", "could not start a thread: %s", strerror(rc));
        close(stop_pipe[0]);
        close(stop_pipe[1]);
        stop_pipe[0] = stop_pipe[1] = -1;
        return -1;
    }
    return 0;
}

static void stop_watchdog_end(pthread_t t)
{
    (void)!write(stop_pipe[1], "q", 1);
    pthread_join(t, NULL);
    /* Not written to from here on (a handler running on another thread
     * looks first), then closed. */
    int fds[2] = {stop_pipe[0], stop_pipe[1]};
    stop_pipe[1] = -1;
    stop_pipe[0] = -1;
    close(fds[0]);
    close(fds[1]);
}

static void on_signal(int sig)
{
    if (sig == SIGHUP) {
        hup_received = 1;
        return;
    }
    relay_request_stop();
    int fd = stop_pipe[1];
    if (fd >= 0) {
        int saved = errno;
        (void)!write(fd, "s", 1);
        errno = saved;
    }
}

int cmd_run(int argc, char **argv)
{
    relay_config cfg;
    char errbuf[1024];
    int loaded = relay_config_load(&cfg, argc, argv, errbuf, sizeof errbuf);
    if (loaded == 1) {
        printf("usage: ferry-relay [run] [--db CONNINFO] [--kafka BOOTSTRAP] [OPTION]...\n\n"
               "Publish the outbox to Kafka until SIGTERM or SIGINT.\n\n");
        relay_config_usage(stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    if (loaded != 0) {
        fprintf(stderr, "ferry-relay run: %s\n", errbuf);
        return 2;
    }
    /* The watchdog first: a stop signal from the first moment on is
     * bounded (connecting can hang too). */
    pthread_t watchdog;
    if (stop_watchdog_start(&cfg, &watchdog) != 0) {
        relay_config_free(&cfg);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    relay_metrics *m = metrics_new();
    int status = 1;
    if (m == NULL)
        goto out;
    /* Not ready before the database and a broker answered: /healthz is
     * served from here on, and connecting can take seconds. */
    metrics_set_health(m, 0, "starting: connecting to the database and Kafka");
    if (cfg.metrics != NULL) {
        int port = 0;
        if (metrics_serve(m, cfg.metrics, &port, errbuf, sizeof errbuf) != 0) {
            fprintf(stderr, "ferry-relay run: --metrics %s: %s\n", cfg.metrics, errbuf);
            goto out;
        }
        httpd_log_listen(cfg.metrics, port);
    }
    status = relay_run(&cfg, m);
out:
    stop_watchdog_end(watchdog);
    metrics_free(m);
    relay_config_free(&cfg);
    return status;
}
