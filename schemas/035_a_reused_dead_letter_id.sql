-- ferry schema, version 35: a relay dead letter whose id was used again
-- goes back all the same; the relay parks only positions emit handed out.
-- (An outside audit.)
--
-- What changes, and why:
--
--   * An id is refused by emit only while a row waiting in the outbox has
--     it; once a message was dead-lettered at the relay, its id could be
--     used again (by any writer, or the reconciler's emit). Replaying the
--     letter then put nothing back (ON CONFLICT DO NOTHING, meant for a
--     copy of the same message) and discarding it wrote no marker, the
--     letter gone either way: the key's consumers saw a gap at its
--     position for ever. The message, or its marker, now goes back at its
--     position under a new id when another message has its own.
--   * ferry.wal_park, granted to the relay's role for the messages of a
--     parked key, put a row at any position it was given, one emit never
--     handed out included: the relay's role could write a message at
--     position 999 of a key at 11 (README: the relay may not emit). It
--     now puts one only at a position the key has reached.
--
-- Each function is schema 34's but for what is said above.

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
        -- A copy of the message waiting in the outbox already (the WAL
        -- relay parked it there before schema 34) goes as it is; another
        -- message under its id (used again once its row had left) keeps
        -- it, and this one goes back at its position under a new one.
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at,
                                  attempts, last_error)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, d.payload,
                d.headers, d.seq, d.shard, d.created_at, now(), 0,
                'replayed: ' || d.reason)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM ferry.outbox o
                                      WHERE o.id = d.message_id AND o.topic = d.topic
                                        AND o.aggregateid = d.aggregateid
                                        AND o.seq = d.seq) THEN
            INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                      headers, seq, shard, created_at, available_at,
                                      attempts, last_error)
            VALUES (ferry.uuid_v7(), d.topic, d.aggregatetype, d.aggregateid, d.type,
                    d.payload, d.headers, d.seq, d.shard, d.created_at, now(), 0,
                    'replayed under a new id (its own was used again): ' || d.reason);
        END IF;
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    PERFORM ferry.inbox_hold_row_(d.consumer, d.message_id, d.topic, d.aggregateid,
                                  nullif(d.seq, 0), d.type, d.aggregatetype,
                                  coalesce(d.payload_text, d.payload::text), d.headers,
                                  -1, -1, 'replay');
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;

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
        -- A copy of the message waiting in the outbox already (the WAL
        -- relay parked it there before schema 34) becomes the marker.
        INSERT INTO ferry.outbox AS o (id, topic, aggregatetype, aggregateid, type, payload,
                                       headers, seq, shard, created_at, available_at)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, 'null',
                jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                d.seq, d.shard, d.created_at, now())
        ON CONFLICT (id) DO UPDATE
            SET payload = EXCLUDED.payload, headers = EXCLUDED.headers,
                available_at = EXCLUDED.available_at
          WHERE o.published_at IS NULL AND o.topic = EXCLUDED.topic
            AND o.aggregateid = EXCLUDED.aggregateid AND o.seq = EXCLUDED.seq;
        -- Another message under its id (used again once its row had left):
        -- the marker takes a new one.
        IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM ferry.outbox o
                                      WHERE o.id = d.message_id AND o.topic = d.topic
                                        AND o.aggregateid = d.aggregateid
                                        AND o.seq = d.seq) THEN
            INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                      headers, seq, shard, created_at, available_at)
            VALUES (ferry.uuid_v7(), d.topic, d.aggregatetype, d.aggregateid, d.type, 'null',
                    jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                    d.seq, d.shard, d.created_at, now());
        END IF;
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

CREATE OR REPLACE FUNCTION ferry.wal_park(p_id uuid, p_topic text, p_key text,
                                          p_aggregatetype text, p_type text, p_payload jsonb,
                                          p_headers jsonb, p_seq bigint,
                                          p_created_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- The message is a relay dead letter already: decoded again after a
    -- restart. It stays there, where replay and discard find it.
    IF EXISTS (SELECT 1 FROM ferry.dead_letter d
                WHERE d.message_id = p_id AND d.consumer = '') THEN
        RETURN true;
    END IF;
    INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload, headers,
                              seq, shard, created_at, available_at, payload_bytes)
    SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type, p_payload,
           coalesce(p_headers, '{}'), p_seq, k.shard, p_created_at, now(),
           octet_length(p_payload::text)
      FROM ferry.outbox_key k
     WHERE k.topic = p_topic AND k.key = p_key
       AND p_seq BETWEEN 1 AND k.seq       -- a position emit handed out
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$fn$;
