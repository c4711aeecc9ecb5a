/*
 * relay_lag.c — the per-shard lag gauges, off the relay's hot path.
 *
 * A thread of its own with a session of its own, every LAG_PERIOD_MS:
 * for each shard this relay holds (and only those, so that a sum over
 * relays reads the truth once), the rows ready to publish and the age of
 * the oldest, counting at most LAG_CAP rows a shard through the relay's
 * own index (a backlog of 30 M rows costs the same as one of LAG_CAP).
 * Delayed rows (available_at to come) are not lag and are not counted.
 * A held shard with nothing waiting reads 0, so its series never vanishes.
 *
 * The same look says whether due rows wait for the WAL slot (the gate of
 * relay_fetch.c: wal mode, or the turn back from it) longer than
 * stuck_ms: with no WAL relay confirming the slot they would wait for
 * ever, while the scheduler sees only rows that are not ready yet, as a
 * delayed one is. /healthz then says so (relay.c, update_health).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relay_int.h"

#define LAG_PERIOD_MS 5000
#define LAG_CAP 20000

struct relay_lag {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stop;
    char *conninfo;
    char holder[256];           /* its session is named 'ferry-relay-lag HOLDER' */
    relay_metrics *m;
    int stuck_ms;
    atomic_char held[MAX_SHARDS];
    int pause_ms;               /* test builds: FERRY_RELAY_TEST_LAG_PAUSE_MS */
    int period_ms;              /* LAG_PERIOD_MS; test builds: FERRY_RELAY_TEST_LAG_PERIOD_MS */
    int dirty;                  /* under lock: the shards held changed, measure now */
    /* Under lock: the last look's rows held by the WAL gate past
     * stuck_ms, and the longest such wait. */
    long long gate_rows;
    double gate_age_s;
};

static void measure(relay_lag *l, PGconn *c)
{
    char shard[16], cap[16], stuck[16];
    snprintf(cap, sizeof cap, "%d", LAG_CAP);
    snprintf(stuck, sizeof stuck, "%d", l->stuck_ms);
    /* Each shard's series is replaced in place, or cleared when the shard
     * is no longer held: a scrape during the measurement sees every held
     * shard (a reset first, then the shards one by one, let it miss
     * some). A shard whose look failed keeps its last figures. */
    long long gate_rows = 0;
    double gate_age = 0;
    int pause = l->pause_ms;
    for (int s = 0; s < MAX_SHARDS; s++) {
        if (!atomic_load(&l->held[s])) {
            metrics_clear_shard(l->m, s);
            continue;
        }
        snprintf(shard, sizeof shard, "%d", s);
        const char *params[3] = {shard, cap, stuck};
        PGresult *res = PQexecParams(
            c,
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0), "
            "       count(*) FILTER (WHERE gated), "
            "       coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE gated)), "
            "                0) "
            "FROM (SELECT created_at, available_at, "
            "             wal_lsn > (" RELAY_WAL_CONFIRMED_SQL ") "
            "             AND available_at <= now() - $3::int * interval '1 millisecond' AS gated "
            "      FROM ferry.outbox o "
            "      WHERE shard = $1::int AND published_at IS NULL AND available_at <= now() "
            "        AND NOT EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.consumer = '' "
            "                         AND d.topic = o.topic AND d.aggregateid = o.aggregateid) "
            "      ORDER BY shard, topic, aggregateid, seq LIMIT $2::int) r",
            3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
            metrics_set_shard(l->m, s, strtoll(PQgetvalue(res, 0, 0), NULL, 10),
                              strtod(PQgetvalue(res, 0, 1), NULL));
            gate_rows += strtoll(PQgetvalue(res, 0, 2), NULL, 10);
            double age = strtod(PQgetvalue(res, 0, 3), NULL);
            gate_age = age > gate_age ? age : gate_age;
        }
        PQclear(res);
        if (pause > 0) {
            /* Test hook: a measurement under way for a while (one pause
             * a measurement, after its first shard). */
            ferry__log(FERRY_LOG_DEBUG, "lag.test_pause", "pausing %d ms in a measurement",
                      pause);
            ferry__sleep_ms(pause);
            pause = 0;
        }
    }
    pthread_mutex_lock(&l->lock);
    l->gate_rows = gate_rows;
    l->gate_age_s = gate_age;
    pthread_mutex_unlock(&l->lock);
}

int relay_lag_gate_held(relay_lag *l, char *why, size_t size)
{
    if (l == NULL)
        return 0;
    pthread_mutex_lock(&l->lock);
    long long rows = l->gate_rows;
    double age = l->gate_age_s;
    pthread_mutex_unlock(&l->lock);
    if (rows == 0)
        return 0;
    snprintf(why, size, "%lld row%s waited over %d ms (the longest %.0f s) for the WAL slot to "
             "be confirmed past them: is a WAL relay (--outbox-source wal) reading the slot?",
             rows, rows == 1 ? "" : "s", l->stuck_ms, age);
    return 1;
}

static void *lag_main(void *arg)
{
    relay_lag *l = arg;
    PGconn *c = NULL;
    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        pthread_mutex_unlock(&l->lock);
        if (c == NULL || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = PQconnectdb(l->conninfo);
            ferry__log_pq_notices(c, "lag");
            if (PQstatus(c) == CONNECTION_OK) {
                ferry_error err;
                /* Not 'ferry-relay HOLDER': that name says a relay HOLDER
                 * is live (relay_refuse_live_holder), and 'ferry-relay
                 * lag' would say so of a relay named lag. */
                ferry__set_application_name(c, "ferry-relay-lag", l->holder, &err);
                PQclear(PQexec(c, "SET statement_timeout = '10s'; SET enable_sort = off"));
            }
        }
        if (PQstatus(c) == CONNECTION_OK)
            measure(l, c);
        pthread_mutex_lock(&l->lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int64_t ns = until.tv_nsec + (int64_t)(l->period_ms % 1000) * 1000000;
        until.tv_sec += l->period_ms / 1000 + ns / 1000000000;
        until.tv_nsec = (long)(ns % 1000000000);
        /* Until the period ends or the shards held change. Before the
         * flag, a signal only woke the wait to wait again: a relay that
         * took or gave back a shard exported it as before for up to the
         * whole period (both relays a shard, or neither, around a
         * handover; an outside audit). */
        while (!l->stop && !l->dirty &&
               pthread_cond_timedwait(&l->wake, &l->lock, &until) == 0)
            ;
        l->dirty = 0;
    }
    pthread_mutex_unlock(&l->lock);
    PQfinish(c);
    return NULL;
}

relay_lag *relay_lag_start(const char *conninfo, const char *holder, relay_metrics *m,
                           int stuck_ms)
{
    if (m == NULL)
        return NULL;
    relay_lag *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->conninfo = strdup(conninfo);
    snprintf(l->holder, sizeof l->holder, "%s", holder);
    l->m = m;
    l->stuck_ms = stuck_ms;
#ifdef FERRY_TEST_HOOKS
    /* Test hook (tests/test_relay_faults.c): each measurement pauses after
     * its first shard, for a scrape to come while it is under way. */
    const char *pause = getenv("FERRY_RELAY_TEST_LAG_PAUSE_MS");
    l->pause_ms = pause ? atoi(pause) : 0;
#endif
    l->period_ms = LAG_PERIOD_MS;
#ifdef FERRY_TEST_HOOKS
    /* Test hook (tests/test_relay_faults.c): a period so long that only a
     * change of the shards held brings a measurement. */
    const char *period = getenv("FERRY_RELAY_TEST_LAG_PERIOD_MS");
    if (period != NULL && atoi(period) > 0) {
        l->period_ms = atoi(period);
        ferry__log(FERRY_LOG_DEBUG, "lag.test_period", "lag measured every %d ms",
                   l->period_ms);
    }
#endif
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->wake, NULL);
    if (l->conninfo == NULL || pthread_create(&l->thread, NULL, lag_main, l) != 0) {
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->wake);
        free(l->conninfo);
        free(l);
        return NULL;
    }
    return l;
}

/* Which shards this relay holds now; a change is measured at once. */
void relay_lag_sync(relay_lag *l, const sched *s)
{
    if (l == NULL)
        return;
    int changed = 0;
    for (int i = 0; i < MAX_SHARDS; i++) {
        char h = sched_lease_epoch(s, i) != 0;
        if (atomic_exchange(&l->held[i], h) != h)
            changed = 1;
    }
    if (changed) {
        pthread_mutex_lock(&l->lock);
        l->dirty = 1;
        pthread_cond_signal(&l->wake);
        pthread_mutex_unlock(&l->lock);
    }
}

void relay_lag_stop(relay_lag *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->lock);
    l->stop = 1;
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->wake);
    free(l->conninfo);
    free(l);
}
