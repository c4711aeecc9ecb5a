-- ferry schema, version 39: the reconciler expires the relays' leases and
-- takes none of them.
--
-- What changes, and why:
--
--   * Schema 38 kept the relay's writes on ferry.lease to the relays'
--     names. The reconciler could still write any lease: give itself the
--     sixteen shard leases until 'infinity', and every relay then found
--     every shard taken and published nothing (an outside audit). Its job
--     on those rows is to expire a dead relay's (reconciler/sweep_outbox.c,
--     EXPIRE_SQL): it may now update a relay's lease only to an expiry
--     that has come, and may not insert or delete one. Its own lease
--     ("reconciler") and any other name it writes as before.
DROP POLICY lease_reconciler ON ferry.lease;
CREATE POLICY lease_reconciler_own ON ferry.lease FOR ALL TO ferry_reconciler
    USING (name !~ '^(shard|relay|wal):')
    WITH CHECK (name !~ '^(shard|relay|wal):');
CREATE POLICY lease_reconciler_expire ON ferry.lease FOR UPDATE TO ferry_reconciler
    USING (name ~ '^(shard|relay|wal):')
    WITH CHECK (expires_at <= now());

-- And the relay writes a relay dead letter only at a position emit handed
-- out to its key, in the key's shard, as ferry.wal_park takes one (schema
-- 35): it could insert one for any key at any position, which a replay
-- then published as a message nobody emitted, at a position a real one
-- takes too (an outside audit). Its own dead letters come from the WAL
-- source (a message it decoded) or through ferry.outbox_dead_letter (the
-- owner's, which policies do not bind).
ALTER POLICY dead_letter_relay_insert ON ferry.dead_letter
    WITH CHECK (consumer = '' AND shard >= 0
                AND seq BETWEEN 1 AND coalesce((SELECT k.seq FROM ferry.outbox_key k
                                                 WHERE k.topic = dead_letter.topic
                                                   AND k.key = dead_letter.aggregateid
                                                   AND k.shard = dead_letter.shard), 0));
ALTER POLICY dead_letter_relay_update ON ferry.dead_letter
    WITH CHECK (consumer = '' AND shard >= 0
                AND seq BETWEEN 1 AND coalesce((SELECT k.seq FROM ferry.outbox_key k
                                                 WHERE k.topic = dead_letter.topic
                                                   AND k.key = dead_letter.aggregateid
                                                   AND k.shard = dead_letter.shard), 0));
