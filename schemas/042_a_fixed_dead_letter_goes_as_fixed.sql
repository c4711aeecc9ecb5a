-- ferry schema, version 42: a dead letter fixed and replayed goes as
-- fixed. (An outside audit.)
--
-- What changes, and why:
--
--   * A consumer's dead letter may be fixed before it is replayed (README:
--     "poison again unless fixed first"). When a copy of the message had
--     come again meanwhile (a relay's resend, a crash before the offset
--     store, a rebalance), it was held at its position behind the letter;
--     the replay then held the letter's content at that position, which
--     keeps its first copy: the stale copy went to the handler and the fix
--     was lost (a poison message came back as a dead letter, unfixed; a
--     refused one was applied as it was before the fix). The replay now
--     removes a held copy at the letter's position first.
--
-- ferry.replay_dead_letter is schema 35's but for that.

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
    -- A copy of the message held at its position behind the letter (it
    -- came again: a resend, a crash before the offset store) gives way to
    -- the letter, which the operator may have fixed (schema 42).
    DELETE FROM ferry.inbox_held h
     WHERE h.consumer = d.consumer AND h.topic = d.topic AND h.key = d.aggregateid
       AND CASE WHEN d.seq > 0 THEN h.seq = d.seq
                ELSE h.seq IS NULL AND h.message_id = d.message_id END;
    PERFORM ferry.inbox_hold_row_(d.consumer, d.message_id, d.topic, d.aggregateid,
                                  nullif(d.seq, 0), d.type, d.aggregatetype,
                                  coalesce(d.payload_text, d.payload::text), d.headers,
                                  -1, -1, 'replay');
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;
