/*
 * relay_lease.c — shard leases: renew what this relay holds, serve every
 * lease its name has, take its share, give shards back when asked.
 *
 * Every comparison is the database's (common/lease.c). The scheduler decides
 * which shard to give back and when (relay_sched.c, pick_release): one
 * with nothing in flight or unacknowledged, so that the next holder never
 * starts a shard whose rows this one may still acknowledge.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "relay_int.h"

static json_t *fields_shard(int shard, int64_t epoch)
{
    return json_pack("{s:i, s:I}", "shard", shard, "epoch", (json_int_t)epoch);
}

static int shard_of_lease(const char *name)
{
    if (strncmp(name, SHARD_PREFIX, strlen(SHARD_PREFIX)) != 0)
        return -1;
    /* Only as the relay writes it: "-0", "+0" or "00" is no shard's, or
     * a row someone added would be served as shard 0 beside its lease. */
    const char *digits = name + strlen(SHARD_PREFIX);
    long v;
    char again[24];
    if (ferry__parse_long(digits, 0, MAX_SHARDS - 1, &v) != 0)
        return -1;
    snprintf(again, sizeof again, "%ld", v);
    return strcmp(again, digits) == 0 ? (int)v : -1;
}

/* Log the shards gained in one tick as one line: a start takes many. */
typedef struct gained {
    char list[512];
    size_t len;
    int n;
} gained;

static void gained_add(gained *g, int shard)
{
    if (g->len < sizeof g->list - 8)
        g->len += (size_t)snprintf(g->list + g->len, sizeof g->list - g->len, "%s%d",
                                   g->n ? "," : "", shard);
    g->n++;
}

/* Serve each shard lease of got[0..n) (reclaimed or acquired) under the
 * epoch it was taken with, and add it to g. */
static void serve_taken(relay *r, const ferry__lease *got, size_t n, gained *g)
{
    for (size_t i = 0; i < n; i++) {
        int s = shard_of_lease(got[i].name);
        if (s < 0)
            continue;
        sched_lease_set(r->s, s, got[i].epoch);
        gained_add(g, s);
    }
}

/*
 * Renew, then move towards this relay's share: ceil(shards / live relays).
 * Renewal returns every unexpired lease under our name, and each is served:
 * one we did not know (an acquisition whose reply was lost, say) is
 * adopted under the epoch the database has, rather than renewed for ever
 * and never published.
 */
int relay_lease_tick(relay *r)
{
    const relay_config *cfg = r->cfg;
    ferry_error err;
    if (relay_db_refresh_settings(r) != 0)
        return -1;
    size_t cap = (size_t)r->db.shard_count;
    ferry__lease *got = malloc(cap * sizeof *got);
    if (got == NULL)
        return -1;
    int rc = -1;
    size_t n = 0;
    gained g = {{0}, 0, 0};

    if (ferry__lease_heartbeat(r->db.main, r->heartbeat_name, r->holder, cfg->lease_ttl_ms, NULL,
                              &err) != FERRY_OK && err.code != FERRY_ESTATE) {
        relay_db_lost(r, "heartbeat", &err);
        goto out;
    }
    if (!r->reclaimed) {
        /* Leases still under our name belong to an earlier process of the
         * same name (relay_db.c refused to start beside a live one): take
         * them over with a new epoch, so that its acknowledgements, if any
         * are still on their way, are refused. */
        if (ferry__lease_reclaim(r->db.main, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms, cap, got,
                                &n, &err) != FERRY_OK) {
            relay_db_lost(r, "lease reclaim", &err);
            goto out;
        }
        serve_taken(r, got, n, &g);
        if (n > 0)
            ferry__log_json(FERRY_LOG_INFO, "lease.reclaimed",
                           json_pack("{s:s}", "shards", g.list),
                           "took back shards %s from an earlier process named %s", g.list,
                           r->holder);
        g = (gained){{0}, 0, 0};
        r->reclaimed = 1;
    }
    if (ferry__lease_renew(r->db.main, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms, cap, got, &n,
                          &err) != FERRY_OK) {
        relay_db_lost(r, "lease renewal", &err);
        goto out;
    }
    int64_t still[MAX_SHARDS] = {0};
    for (size_t i = 0; i < n; i++) {
        int s = shard_of_lease(got[i].name);
        if (s >= 0)
            still[s] = got[i].epoch;
    }
    for (int s = 0; s < MAX_SHARDS; s++) {
        int64_t mine = sched_lease_epoch(r->s, s);
        if (mine != 0 && still[s] != mine) {
            ferry__log_json(FERRY_LOG_WARN, "lease.lost", fields_shard(s, mine),
                           "lease of shard %d lost; stopping work on it", s);
            sched_lease_lost(r->s, s);
            relay_count(r, M_LEASES_LOST, 1);
            mine = 0;
        }
        if (still[s] != 0 && mine == 0) {
            ferry__log_json(FERRY_LOG_WARN, "lease.adopted", fields_shard(s, still[s]),
                           "shard %d is leased under our name but was not served (a lost "
                           "reply?): serving it", s);
            sched_lease_set(r->s, s, still[s]);
        }
    }

    int live = 1;
    if (ferry__lease_count_live(r->db.main, RELAY_PREFIX, &live, &err) != FERRY_OK) {
        relay_db_lost(r, "lease count", &err);
        goto out;
    }
    if (live < 1)
        live = 1;
    int target = cfg->once ? r->db.shard_count : (r->db.shard_count + live - 1) / live;
    int held = sched_leases_held(r->s);
    if (held < target) {
        if (ferry__lease_acquire(r->db.main, SHARD_PREFIX, r->holder, cfg->lease_ttl_ms,
                                (size_t)(target - held), got, &n, &err) != FERRY_OK) {
            relay_db_lost(r, "lease acquisition", &err);
            goto out;
        }
        serve_taken(r, got, n, &g);
        relay_count(r, M_LEASES_ACQUIRED, (uint64_t)g.n);
        if (g.n > 0)
            ferry__log_json(FERRY_LOG_INFO, "lease.acquired",
                           json_pack("{s:s, s:i}", "shards", g.list, "count", g.n),
                           "took the lease of %d shard%s: %s", g.n, g.n == 1 ? "" : "s", g.list);
    }
    sched_lease_target(r->s, target);
    rc = 0;
out:
    if (rc != 0)
        r->lease_failures++;
    r->lease_last_failed = rc != 0;
    if (r->m != NULL)
        metrics_set(r->m, G_LEASES_HELD, sched_leases_held(r->s));
    free(got);
    return rc;
}

void relay_lease_release(relay *r, int shard)
{
    ferry_error err;
    char name[32];
    snprintf(name, sizeof name, SHARD_PREFIX "%d", shard);
    int64_t epoch = sched_lease_epoch(r->s, shard);
    relay_wake_drop(r, shard);
    if (ferry__lease_release(r->db.main, name, r->holder, &err) != FERRY_OK) {
        relay_db_lost(r, "lease release", &err);
        return;
    }
    ferry__log_json(FERRY_LOG_INFO, "lease.released", fields_shard(shard, epoch),
                   "gave the lease of shard %d back (its share went to another relay)", shard);
    sched_lease_lost(r->s, shard);
}

void relay_leases_release_all(relay *r)
{
    ferry_error err;
    relay_wake_drop_all(r);
    for (int s = 0; s < MAX_SHARDS; s++) {
        if (sched_lease_epoch(r->s, s) == 0)
            continue;
        char name[32];
        snprintf(name, sizeof name, SHARD_PREFIX "%d", s);
        if (ferry__lease_release(r->db.main, name, r->holder, &err) != FERRY_OK)
            break;
        sched_lease_lost(r->s, s);
    }
    ferry__lease_release(r->db.main, r->heartbeat_name, r->holder, &err);
}
