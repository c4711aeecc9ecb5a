-- ferry schema, version 24: a redelivered discarded message is a
-- duplicate.
--
-- What changes, and why:
--
--   * ferry.discard_dead_letter(id) on a consumer's dead letter counts its
--     id as applied (an inbox row) and, when positions before it are
--     missing, holds a marker at its position. A redelivery of the
--     message itself while that gap was open was answered 'gap' (held; by
--     consume_claim, 'held') although the inbox had its id and nothing
--     was held: README promises "a redelivery is a duplicate", and the
--     consumers counted it as held. Nothing was ever applied twice: the
--     hold kept the marker, the first copy. The same for a key parked
--     behind a later dead letter. Now inbox_claim looks the id up in the
--     inbox before it answers 'gap' or 'parked', an index probe on that
--     path only (tests/test_lang_protocol.c,
--     a_redelivered_discarded_message_is_a_duplicate).
--
-- Only ferry.inbox_claim changes; its signature, owner, SECURITY DEFINER,
-- search_path and grants are those of migration 10 (CREATE OR REPLACE
-- keeps the grants). Its body is migration 10's but for the lookup.

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
    -- Not its turn: a message the inbox has already is a duplicate, not
    -- one to hold (a discarded dead letter's id counts as applied).
    IF (v_parked IS NOT NULL AND p_seq >= v_parked)
       OR (p_seq > v_last + 1 AND NOT (p_first_any AND v_last = 0)) THEN
        IF EXISTS (SELECT 1 FROM ferry.inbox i
                    WHERE i.consumer = p_consumer AND i.message_id = p_id) THEN
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
