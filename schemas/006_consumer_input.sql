-- ferry schema, version 6: the consumer's input is hostile (issue 12).
--
-- What changes, and why:
--
--   * A key is parked behind its *lowest* dead letter, and only positions
--     at or after that one wait: ferry.inbox_key.parked_seq keeps that
--     position beside parked_by. Before, the last dead letter of a key
--     took over parked_by, so discarding the first one released nothing
--     and discarding the last skipped everything held before it.
--   * Discarding a consumer's dead letter consumes exactly its own
--     position, in order: at once when it is the key's next position,
--     otherwise through a marker held at that position, consumed when the
--     key gets there. A discard ahead of a gap leaves the gap.
--   * A dead letter keeps a payload that was not JSON as it was received
--     (dead_letter.payload_text), so a replay hands the consumer those
--     bytes, not a JSON string of them; and any data error on the JSON
--     cast (22003 for 1e-16384, say) keeps it as text too.
--   * inbox_claim refuses a position that is not in 1 .. 2^63-2 with a data
--     error (22003): a consumer makes such a message poison.
--   * Finding held messages that are ready no longer reads every held row
--     of the consumer: inbox_ready() probes one row per held key, and
--     inbox_ready_key() reads the ready run of one key by its index.
--
-- Migration 005 is another change's; this file assumes nothing of it.

ALTER TABLE ferry.inbox_key ADD COLUMN parked_seq bigint;     -- parked_by's position
UPDATE ferry.inbox_key k SET parked_seq = d.seq
  FROM ferry.dead_letter d WHERE d.id = k.parked_by;
-- A parked_by whose dead letter is gone (deleted by hand) parks nothing.
UPDATE ferry.inbox_key SET parked_by = NULL WHERE parked_by IS NOT NULL AND parked_seq IS NULL;

ALTER TABLE ferry.dead_letter ADD COLUMN payload_text text;   -- as received, when not JSON

ALTER TABLE ferry.inbox_held DROP CONSTRAINT inbox_held_reason_check;
ALTER TABLE ferry.inbox_held ADD CONSTRAINT inbox_held_reason_check
    CHECK (reason IN ('gap', 'parked', 'replay', 'discarded'));

-- Replayed messages without a position, found without reading the rest.
CREATE INDEX inbox_held_unpositioned ON ferry.inbox_held (consumer) WHERE seq IS NULL;
-- A key's lowest remaining consumer dead letter, when one is replayed or
-- discarded.
CREATE INDEX dead_letter_consumer_key ON ferry.dead_letter (consumer, topic, aggregateid, seq)
    WHERE consumer <> '';

-- As in version 2 (see 002_consumer.sql for the verdicts), with two
-- changes: a position out of range is a data error, and a parked key
-- parks only the positions at or after its lowest dead letter.
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

    UPDATE ferry.inbox_key SET seq = p_seq
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       AND seq = p_seq - 1 AND (parked_seq IS NULL OR p_seq < parked_seq)
    RETURNING EXISTS (SELECT 1 FROM ferry.inbox_held h
                       WHERE h.consumer = p_consumer AND h.topic = p_topic
                         AND h.key = p_key AND h.seq = p_seq + 1)
      INTO v_more;
    IF FOUND THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, p_seq)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            UPDATE ferry.inbox_key SET seq = p_seq - 1
             WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
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
    UPDATE ferry.inbox_key SET seq = p_seq
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    PERFORM 1 FROM ferry.inbox_held
      WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
        AND seq = p_seq + 1;
    RETURN CASE WHEN FOUND THEN 'apply_more' ELSE 'apply' END;
END
$fn$;

-- As in version 2, except: a payload that is not JSON — or that jsonb
-- refuses for any data reason — is kept as received in payload_text (and
-- as a JSON string in payload, for readers of that column); and the key
-- is parked behind this dead letter only when it is the lowest one of the
-- key still ahead of the key's position, so an earlier dead letter keeps
-- the key and a later one does not take it over.
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
    RETURN v_id;
END
$fn$;

-- Held messages this consumer should look at now: replayed messages
-- without a position, and per held key its first held row when that is
-- the key's next position (below any dead letter) or a stale copy of a
-- position already applied. One index probe per held key, not a read of
-- every held row: a walk over the distinct keys of inbox_held_position
-- (a loose index scan), stopped as soon as p_limit rows are found. The
-- consumer calls it on a timer, as the safety net; what an apply makes
-- ready it drains by key (inbox_ready_key).
CREATE OR REPLACE FUNCTION ferry.inbox_ready(p_consumer text, p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH RECURSIVE keys(topic, key) AS (
        (SELECT h.topic, h.key FROM ferry.inbox_held h
          WHERE h.consumer = p_consumer AND h.seq IS NOT NULL
          ORDER BY h.topic, h.key LIMIT 1)
        UNION ALL
        SELECT n.topic, n.key
          FROM keys w
         CROSS JOIN LATERAL (
            SELECT h.topic, h.key FROM ferry.inbox_held h
             WHERE h.consumer = p_consumer AND (h.topic, h.key) > (w.topic, w.key)
               AND h.seq IS NOT NULL
             ORDER BY h.topic, h.key LIMIT 1) n
    )
    (SELECT h.* FROM ferry.inbox_held h
      WHERE h.consumer = p_consumer AND h.seq IS NULL
      ORDER BY h.held_at LIMIT p_limit)
    UNION ALL
    (SELECT f.*
       FROM keys
       JOIN ferry.inbox_key k
         ON k.consumer = p_consumer AND k.topic = keys.topic AND k.key = keys.key
      CROSS JOIN LATERAL (
            SELECT h.* FROM ferry.inbox_held h
             WHERE h.consumer = p_consumer AND h.topic = keys.topic AND h.key = keys.key
               AND h.seq IS NOT NULL
             ORDER BY h.seq LIMIT 1) f
      WHERE f.seq <= k.seq
         OR (f.seq = k.seq + 1 AND (k.parked_seq IS NULL OR f.seq < k.parked_seq))
      LIMIT p_limit)
    LIMIT p_limit;
$fn$;

-- The held messages of one key that are ready now, in position order: its
-- stale copies of applied positions, then the run of positions that
-- follows the key's position without a hole, below any dead letter. At
-- most p_limit rows, read through the key's index: the cost does not
-- grow with what else is held.
CREATE FUNCTION ferry.inbox_ready_key(p_consumer text, p_topic text, p_key text,
                                      p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH k AS (
        SELECT seq, parked_seq FROM ferry.inbox_key
         WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
    )
    (SELECT h.* FROM ferry.inbox_held h, k
      WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
        AND h.seq <= k.seq
      ORDER BY h.seq LIMIT p_limit)
    UNION ALL
    (SELECT (r.h).* FROM (
        SELECT h, h.seq - k.seq AS ahead, row_number() OVER (ORDER BY h.seq) AS n
          FROM ferry.inbox_held h, k
         WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
           AND h.seq > k.seq
         ORDER BY h.seq LIMIT p_limit) r, k
      WHERE r.ahead = r.n AND (k.parked_seq IS NULL OR (r.h).seq < k.parked_seq)
      ORDER BY r.n)
    LIMIT p_limit;
$fn$;

-- Dead letters, both sides. The relay side is as in version 2. Consumer
-- side: replaying hands the message back to that consumer (held, applied
-- when its turn comes), as it was received; discarding consumes exactly
-- its own position, in order (see discard_dead_letter). Either way the
-- key is then parked behind its lowest remaining dead letter, if any.
CREATE OR REPLACE FUNCTION ferry.replay_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    d ferry.dead_letter;
BEGIN
    DELETE FROM ferry.dead_letter WHERE id = p_id RETURNING * INTO d;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF d.consumer = '' THEN
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at,
                                  attempts, last_error)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, d.payload,
                d.headers, d.seq, d.shard, d.created_at, now(), 0,
                'replayed: ' || d.reason);
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                  aggregatetype, payload, headers, reason)
    VALUES (d.consumer, d.topic, d.aggregateid, nullif(d.seq, 0), d.message_id, d.type,
            d.aggregatetype, coalesce(d.payload_text, d.payload::text), d.headers, 'replay')
    ON CONFLICT DO NOTHING;
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;

-- Discarding a consumer's dead letter consumes exactly its position: the
-- message id is recorded as applied (a redelivery of it is a duplicate),
-- and the position is counted as done in order — at once when it is the
-- key's next position, otherwise through a marker held at that position
-- (payload null, header ferry_discarded), which the consumer consumes
-- without calling the handler when the key gets there. Positions before
-- it are not touched: a gap stays a gap.
CREATE OR REPLACE FUNCTION ferry.discard_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    d ferry.dead_letter;
    v_last bigint;
    v_marker uuid;
BEGIN
    DELETE FROM ferry.dead_letter WHERE id = p_id RETURNING * INTO d;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF d.consumer = '' THEN
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, 'null',
                jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                d.seq, d.shard, d.created_at, now());
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
    VALUES (d.consumer, d.message_id, d.topic, d.aggregateid, d.seq)
    ON CONFLICT DO NOTHING;
    IF d.seq > 0 THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq)
        VALUES (d.consumer, d.topic, d.aggregateid, 0)
        ON CONFLICT DO NOTHING;
        SELECT seq INTO v_last FROM ferry.inbox_key
         WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
           FOR UPDATE;
        IF d.seq = v_last + 1 THEN
            UPDATE ferry.inbox_key SET seq = d.seq
             WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid;
        ELSIF d.seq > v_last + 1 THEN
            -- Its own marker id, so that a redelivery of the message is
            -- still recognised as the discarded message.
            v_marker := md5('ferry discarded ' || d.consumer || ' ' || d.message_id)::uuid;
            DELETE FROM ferry.inbox_held
             WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
               AND seq = d.seq;
            INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                          aggregatetype, payload, headers, reason)
            VALUES (d.consumer, d.topic, d.aggregateid, d.seq, v_marker, d.type,
                    d.aggregatetype, 'null',
                    jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                    'discarded')
            ON CONFLICT DO NOTHING;
        END IF;
        -- d.seq <= v_last: the position was passed already (a skipped gap).
    END IF;
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;

-- Internal to replay and discard: a key parked behind dead letter p_gone
-- (now gone) is parked behind its lowest remaining dead letter ahead of
-- its position, or released. Not granted to anyone: the callers are
-- SECURITY DEFINER and run it as the owner.
CREATE FUNCTION ferry.inbox_repark_(p_consumer text, p_topic text, p_key text, p_gone bigint)
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
$fn$;
REVOKE ALL ON FUNCTION ferry.inbox_repark_(text, text, text, bigint) FROM PUBLIC;

-- The new reader of held messages has inbox_ready's grants.
REVOKE ALL ON FUNCTION ferry.inbox_ready_key(text, text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.inbox_ready_key(text, text, text, integer) TO ferry_writer;
