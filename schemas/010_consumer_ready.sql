-- ferry schema, version 10: held messages found without a walk over the
-- held backlog (issue 12, item 13).
--
-- What changes, and why:
--
--   * ferry.inbox_key.ready: true exactly when the key has a held message
--     the consumer should look at now — its first held position is the
--     key's next one (below any dead letter), or a stale copy of a
--     position already applied. A partial index holds only those keys, so
--     inbox_ready() reads the ready keys and nothing else: its cost no
--     longer grows with the held messages that wait behind a gap or a
--     parked key (version 6 probed one row per held key: 25,000 buffers a
--     call beside 5,000 blocked keys, tests/test_consume_drain.c).
--   * Every function that changes what a key holds, where it stands or
--     what parks it keeps the flag true: inbox_claim as it advances the
--     key (in the UPDATE it makes anyway, so the flag costs the hot path
--     no statement, and a value that does not change keeps the update
--     HOT); the others (hold, unhold, dead letter, replay, discard, skip
--     gap) through inbox_settle_(), which computes it from the key's first
--     held row under the key's row lock.
--   * A held row deleted by hand (the reconciler may) can leave a key
--     flagged that is not ready: inbox_ready() still checks each flagged
--     key's first held row, so such a key is looked at, never wrongly
--     applied, until its next change settles the flag.
--
-- Names, signatures, grants and meanings of the consumer protocol's
-- functions are unchanged.

ALTER TABLE ferry.inbox_key ADD COLUMN ready boolean NOT NULL DEFAULT false;
CREATE INDEX inbox_key_ready ON ferry.inbox_key (consumer, topic, key) WHERE ready;

-- Internal: set the ready flag of one key from its first held row. Not
-- granted to anyone: the callers are SECURITY DEFINER and run it as the
-- owner. Locks the key's row (the callers hold it already, or must).
CREATE FUNCTION ferry.inbox_settle_(p_consumer text, p_topic text, p_key text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    UPDATE ferry.inbox_key k
       SET ready = f.ready
      FROM (SELECT coalesce((
                SELECT h.seq <= k2.seq
                    OR (h.seq = k2.seq + 1 AND (k2.parked_seq IS NULL OR h.seq < k2.parked_seq))
                  FROM ferry.inbox_held h
                 WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
                   AND h.seq IS NOT NULL
                 ORDER BY h.seq LIMIT 1), false) AS ready
              FROM ferry.inbox_key k2
             WHERE k2.consumer = p_consumer AND k2.topic = p_topic AND k2.key = p_key) f
     WHERE k.consumer = p_consumer AND k.topic = p_topic AND k.key = p_key
       AND k.ready IS DISTINCT FROM f.ready;
$fn$;
REVOKE ALL ON FUNCTION ferry.inbox_settle_(text, text, text) FROM PUBLIC;

-- The flag as it stands for what is held now.
UPDATE ferry.inbox_key k SET ready = true
 WHERE EXISTS (
    SELECT 1 FROM (
        SELECT h.seq FROM ferry.inbox_held h
         WHERE h.consumer = k.consumer AND h.topic = k.topic AND h.key = k.key
           AND h.seq IS NOT NULL
         ORDER BY h.seq LIMIT 1) f
     WHERE f.seq <= k.seq
        OR (f.seq = k.seq + 1 AND (k.parked_seq IS NULL OR f.seq < k.parked_seq)));

-- As in version 8, except that the key's ready flag is set with its
-- position: whether, once this message is applied, a held message of the
-- key is ready — its next position, or a stale copy of one applied (this
-- message's own held copy aside, which the drain unholds in the same
-- transaction). 'apply_more' says exactly that now.
CREATE OR REPLACE FUNCTION ferry.inbox_claim(p_consumer text, p_id uuid, p_topic text,
                                             p_key text, p_seq bigint,
                                             p_first_any boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_last bigint;
    v_parked bigint;
    v_more boolean;
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    IF p_seq IS NULL THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        RETURN CASE WHEN FOUND THEN 'apply' ELSE 'duplicate' END;
    END IF;
    -- p_seq - 1 and p_seq + 1 below must exist.
    IF p_seq < 1 OR p_seq > 9223372036854775806 THEN
        RAISE EXCEPTION 'position % is out of range (1 .. 9223372036854775806)', p_seq
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;

    UPDATE ferry.inbox_key k SET seq = p_seq,
           ready = EXISTS (SELECT 1 FROM ferry.inbox_held h
                            WHERE h.consumer = p_consumer AND h.topic = p_topic
                              AND h.key = p_key AND h.seq <= p_seq + 1
                              AND NOT (h.seq = p_seq AND h.message_id = p_id)
                              AND (h.seq <= p_seq OR k.parked_seq IS NULL
                                   OR h.seq < k.parked_seq))
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       AND seq = p_seq - 1 AND (parked_seq IS NULL OR p_seq < parked_seq)
    RETURNING k.ready INTO v_more;
    IF FOUND THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, p_seq)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            UPDATE ferry.inbox_key SET seq = p_seq - 1
             WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
            PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
            RETURN 'duplicate';
        END IF;
        RETURN CASE WHEN v_more THEN 'apply_more' ELSE 'apply' END;
    END IF;

    SELECT seq, parked_seq INTO v_last, v_parked
      FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq)
        VALUES (p_consumer, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        SELECT seq, parked_seq INTO v_last, v_parked
          FROM ferry.inbox_key
         WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
           FOR UPDATE;
    END IF;

    IF p_seq <= v_last THEN
        RETURN 'late';
    END IF;
    IF v_parked IS NOT NULL AND p_seq >= v_parked THEN
        RETURN 'parked';
    END IF;
    IF p_seq > v_last + 1 AND NOT (p_first_any AND v_last = 0) THEN
        RETURN 'gap';
    END IF;

    INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
    VALUES (p_consumer, p_id, p_topic, p_key, p_seq)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    UPDATE ferry.inbox_key k SET seq = p_seq,
           ready = EXISTS (SELECT 1 FROM ferry.inbox_held h
                            WHERE h.consumer = p_consumer AND h.topic = p_topic
                              AND h.key = p_key AND h.seq <= p_seq + 1
                              AND NOT (h.seq = p_seq AND h.message_id = p_id)
                              AND (h.seq <= p_seq OR k.parked_seq IS NULL
                                   OR h.seq < k.parked_seq))
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
    RETURNING k.ready INTO v_more;
    RETURN CASE WHEN v_more THEN 'apply_more' ELSE 'apply' END;
END
$fn$;

-- As in version 8, then the key's flag settled: a message held at the
-- key's next position (a hold that raced an apply, or a caller that holds
-- without claiming) is ready at once.
CREATE OR REPLACE FUNCTION ferry.inbox_hold(p_consumer text, p_id uuid, p_topic text, p_key text,
                                 p_seq bigint, p_type text, p_aggregatetype text,
                                 p_payload text, p_headers jsonb, p_partition integer,
                                 p_offset bigint, p_reason text)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                  aggregatetype, payload, headers, kafka_partition,
                                  kafka_offset, reason)
    VALUES (p_consumer, p_topic, p_key, p_seq, p_id, coalesce(p_type, ''),
            coalesce(p_aggregatetype, ''), p_payload, coalesce(p_headers, '{}'),
            p_partition, p_offset, p_reason)
    ON CONFLICT DO NOTHING;
    SELECT ferry.inbox_settle_(p_consumer, p_topic, p_key) WHERE p_seq IS NOT NULL;
$fn$;

-- As in version 8, then the key's flag settled (the drain's last message
-- of a run clears it).
CREATE OR REPLACE FUNCTION ferry.inbox_unhold(p_consumer text, p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    WITH gone AS (
        DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id
        RETURNING topic, key, seq)
    SELECT ferry.inbox_settle_(p_consumer, g.topic, g.key) FROM gone g
     WHERE g.seq IS NOT NULL;
$fn$;

-- As in version 8, then the key's flag settled: parking a key, or taking
-- its held copy, may leave nothing ready.
CREATE OR REPLACE FUNCTION ferry.inbox_dead_letter(p_consumer text, p_id uuid, p_topic text,
                                                   p_key text, p_seq bigint, p_type text,
                                                   p_aggregatetype text, p_payload text,
                                                   p_headers jsonb, p_attempts integer,
                                                   p_reason text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_payload jsonb;
    v_text text;
    v_id bigint;
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    BEGIN
        v_payload := p_payload::jsonb;
    EXCEPTION WHEN data_exception THEN
        v_payload := to_jsonb(p_payload);
        v_text := p_payload;
    END;
    INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid,
                                   type, payload, payload_text, headers, seq, shard,
                                   created_at, attempts, reason)
    VALUES (p_id, p_consumer, p_topic, coalesce(p_aggregatetype, ''), p_key,
            coalesce(p_type, ''), v_payload, v_text, coalesce(p_headers, '{}'),
            coalesce(p_seq, 0), -1, now(), p_attempts, p_reason)
    ON CONFLICT (message_id, consumer) DO UPDATE
        SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason, failed_at = now()
    RETURNING id INTO v_id;
    IF p_seq IS NOT NULL THEN
        INSERT INTO ferry.inbox_key AS k (consumer, topic, key, seq, parked_by, parked_seq)
        VALUES (p_consumer, p_topic, p_key, 0, v_id, p_seq)
        ON CONFLICT (consumer, topic, key) DO UPDATE
            SET parked_by = v_id, parked_seq = p_seq
          WHERE k.seq < p_seq AND (k.parked_seq IS NULL OR p_seq <= k.parked_seq);
    END IF;
    DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id;
    PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
    RETURN v_id;
END
$fn$;

-- As in version 2, then the key's flag settled: the position it jumps to
-- makes the first held message the next one.
CREATE OR REPLACE FUNCTION ferry.inbox_skip_gap(p_consumer text, p_topic text, p_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_last bigint;
BEGIN
    SELECT seq INTO v_last FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key FOR UPDATE;
    SELECT min(seq) INTO v_first FROM ferry.inbox_held
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    IF v_last IS NULL OR v_first IS NULL OR v_first <= v_last + 1 THEN
        RETURN 0;
    END IF;
    UPDATE ferry.inbox_key SET seq = v_first - 1
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
    RETURN v_first - 1 - v_last;
END
$fn$;

-- As in version 6, then the key's flag settled. Replay and discard end
-- with this call, after they have held, advanced or released what they
-- do, so the flag covers both.
CREATE OR REPLACE FUNCTION ferry.inbox_repark_(p_consumer text, p_topic text, p_key text,
                                               p_gone bigint)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    UPDATE ferry.inbox_key k
       SET (parked_by, parked_seq) = (
            SELECT d.id, d.seq FROM ferry.dead_letter d
             WHERE d.consumer = p_consumer AND d.topic = p_topic AND d.aggregateid = p_key
               AND d.seq > k.seq
             ORDER BY d.seq, d.id LIMIT 1)
     WHERE k.consumer = p_consumer AND k.topic = p_topic AND k.key = p_key
       AND k.parked_by = p_gone;
    SELECT ferry.inbox_settle_(p_consumer, p_topic, p_key);
$fn$;

-- Held messages this consumer should look at now: replayed messages
-- without a position, and per flagged key its first held row, when that
-- is still ready. Reads the flagged keys through their partial index and
-- nothing of the keys that wait, so a call costs what it returns, not
-- what is held.
CREATE OR REPLACE FUNCTION ferry.inbox_ready(p_consumer text, p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    (SELECT h.* FROM ferry.inbox_held h
      WHERE h.consumer = p_consumer AND h.seq IS NULL
      ORDER BY h.held_at LIMIT p_limit)
    UNION ALL
    (SELECT f.*
       FROM ferry.inbox_key k
      CROSS JOIN LATERAL (
            SELECT h.* FROM ferry.inbox_held h
             WHERE h.consumer = p_consumer AND h.topic = k.topic AND h.key = k.key
               AND h.seq IS NOT NULL
             ORDER BY h.seq LIMIT 1) f
      WHERE k.consumer = p_consumer AND k.ready
        AND (f.seq <= k.seq
             OR (f.seq = k.seq + 1 AND (k.parked_seq IS NULL OR f.seq < k.parked_seq)))
      LIMIT p_limit)
    LIMIT p_limit;
$fn$;
