-- ferry schema, version 40: the WAL relay parks a message only once its
-- transaction is visible, and is told when it could not.
--
-- What changes, and why:
--
--   * The WAL sender decodes a transaction as soon as its commit record is
--     flushed, before the committing backend leaves the proc array: for a
--     moment (for as long as a synchronous standby keeps it waiting) other
--     sessions do not see it. ferry.wal_park, putting a parked key's
--     message in the table, checked the position against the key row it
--     could see -- the one from before that transaction -- found it not
--     handed out, inserted nothing and returned false; the relay did not
--     look at the answer and confirmed the slot past the message: lost (an
--     outside audit: 10 of 40 messages of a parked key, one writer, no
--     crash; tests/test_wal_faults.c,
--     a_message_parked_before_its_commit_is_visible_is_not_lost).
--   * wal_park now waits for the position to become visible, a few seconds
--     at most, reading the key row again each time (a new snapshot per
--     statement). It returns true when the message is in the table (put
--     there now, or already) or is a relay dead letter; false when the
--     position is still not one emit handed out, and then the relay
--     restarts its stream from the slot rather than go past the message.
--
-- ferry.wal_park is schema 35's but for the wait and the answer.
CREATE OR REPLACE FUNCTION ferry.wal_park(p_id uuid, p_topic text, p_key text,
                                          p_aggregatetype text, p_type text, p_payload jsonb,
                                          p_headers jsonb, p_seq bigint,
                                          p_created_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_seq bigint;
    v_shard integer;
BEGIN
    -- The message is a relay dead letter already: decoded again after a
    -- restart. It stays there, where replay and discard find it.
    IF EXISTS (SELECT 1 FROM ferry.dead_letter d
                WHERE d.message_id = p_id AND d.consumer = '') THEN
        RETURN true;
    END IF;
    IF p_seq < 1 THEN
        RETURN false;
    END IF;
    -- Up to about 5 s: 1 ms, 2 ms, ... 20 ms, then 20 ms at a time.
    FOR i IN 1 .. 260 LOOP
        SELECT k.seq, k.shard INTO v_seq, v_shard
          FROM ferry.outbox_key k WHERE k.topic = p_topic AND k.key = p_key;
        EXIT WHEN v_seq >= p_seq;
        PERFORM pg_sleep(least(i, 20) / 1000.0);
    END LOOP;
    IF v_seq IS NULL OR v_seq < p_seq THEN
        RETURN false;                   -- not a position emit handed out (yet)
    END IF;
    INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload, headers,
                              seq, shard, created_at, available_at, payload_bytes)
    VALUES (p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type, p_payload,
            coalesce(p_headers, '{}'), p_seq, v_shard, p_created_at, now(),
            octet_length(p_payload::text))
    ON CONFLICT DO NOTHING;             -- there already: parked by an earlier run
    RETURN true;
END
$fn$;
