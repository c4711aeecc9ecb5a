-- ferry schema, version 33: a reused message id no longer stops its key.
--
-- What changes, and why:
--
--   * A message at its key's next position whose id the inbox already
--     has (another message's: ids are the producer's to keep unique, and
--     emit cannot refuse one whose first user has left the outbox) was
--     answered 'duplicate' and the key put back before its position, so
--     that a discard marker held there could consume it (schema 24). With
--     no marker there, nothing ever consumed the position: every later
--     message of the key was held as a gap, for ever (an outside audit).
--     README: such a message "is skipped". Now the key stays past it
--     unless a marker is held at the position; and one that arrives
--     ahead of its turn, its id's first user applied already, is held as
--     any other (it was answered 'duplicate' and dropped, leaving the
--     same hole), so that its position is consumed when it comes.
--   * ferry.inbox_unhold (consume_finish's: let go of an applied
--     message's held copies) let go of every held row of the id, so one
--     held ahead of its turn under a reused id was dropped when the id's
--     first user was applied (in the same batch, or later): the same
--     hole. It now lets go only of rows at or behind the key's position,
--     the applied message's own; a row ahead is another message.
--
-- ferry.inbox_claim's body is schema 24's but for three places, and
-- ferry.inbox_unhold's schema 10's but for the row ahead (CREATE OR
-- REPLACE keeps owners and grants).

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
            -- The inbox has this id. A marker held at this position (its
            -- discarded dead letter's, schema 24) consumes the position:
            -- the key goes back and the marker is applied in its turn.
            -- Otherwise the id was another message's (ids are the
            -- producer's to keep unique): this one is skipped and its
            -- position consumed, or the key waited for it for ever.
            IF EXISTS (SELECT 1 FROM ferry.inbox_held h
                        WHERE h.consumer = p_consumer AND h.topic = p_topic
                          AND h.key = p_key AND h.seq = p_seq
                          AND h.message_id <> p_id) THEN
                UPDATE ferry.inbox_key SET seq = p_seq - 1
                 WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
            END IF;
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
    -- Not its turn: a message the inbox has already, whose position a
    -- marker holds (a discarded dead letter's id counts as applied), is a
    -- duplicate, not one to hold. One whose id was another message's is
    -- held as any other: its position is consumed when it comes (above).
    IF (v_parked IS NOT NULL AND p_seq >= v_parked)
       OR (p_seq > v_last + 1 AND NOT (p_first_any AND v_last = 0)) THEN
        IF EXISTS (SELECT 1 FROM ferry.inbox i
                    WHERE i.consumer = p_consumer AND i.message_id = p_id)
           AND EXISTS (SELECT 1 FROM ferry.inbox_held h
                        WHERE h.consumer = p_consumer AND h.topic = p_topic
                          AND h.key = p_key AND h.seq = p_seq
                          AND h.message_id <> p_id) THEN
            RETURN 'duplicate';
        END IF;
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
        -- As above: skipped, its position consumed, unless a marker holds it.
        IF NOT EXISTS (SELECT 1 FROM ferry.inbox_held h
                        WHERE h.consumer = p_consumer AND h.topic = p_topic
                          AND h.key = p_key AND h.seq = p_seq
                          AND h.message_id <> p_id) THEN
            UPDATE ferry.inbox_key SET seq = p_seq
             WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
            PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
        END IF;
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

CREATE OR REPLACE FUNCTION ferry.inbox_unhold(p_consumer text, p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    WITH gone AS (
        DELETE FROM ferry.inbox_held h
         WHERE h.consumer = p_consumer AND h.message_id = p_id
           AND NOT EXISTS (SELECT 1 FROM ferry.inbox_key k
                            WHERE k.consumer = h.consumer AND k.topic = h.topic
                              AND k.key = h.key AND h.seq > k.seq)
        RETURNING topic, key, seq)
    SELECT ferry.inbox_settle_(p_consumer, g.topic, g.key) FROM gone g
     WHERE g.seq IS NOT NULL;
$fn$;
