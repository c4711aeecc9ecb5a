-- ferry schema, version 29: schema 27's promise kept — the reconciler
-- cannot move a healthy message to the dead letters.
--
-- What changes, and why (a review of schema 27):
--
--   * ferry.outbox_dead_letter runs as the owner since schema 27 and moves
--     a row once its attempts, plus one when p_count_attempt (the relay's
--     own failed attempt), reach at least one. The caller chose
--     p_count_attempt: ferry_reconciler could call it with true and move
--     any unpublished row with no failed attempt, parking a healthy key.
--     Counting an attempt is now the relay's alone (the session's role a
--     member of ferry_relay); anyone else gets 42501.
--   * ferry_reconciler could also raise a row's attempts itself (UPDATE of
--     attempts, available_at and last_error, granted by schema 1 and used
--     by nothing of the reconciler's) and then move it. The grant is gone.
--
-- tests/test_privileges.c: reconciler_forges_no_message_and_deletes_no_unsent_one.

CREATE OR REPLACE FUNCTION ferry.outbox_dead_letter(p_id uuid, p_min_attempts integer,
                                                    p_count_attempt boolean, p_reason text,
                                                    OUT outcome text, OUT topic text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    o ferry.outbox;
    n integer;
BEGIN
    -- Counting an attempt is the relay's: it is the one that tried. Run
    -- as the owner, a caller that could count one could move any row.
    IF p_count_attempt AND NOT pg_has_role(session_user, 'ferry_relay', 'MEMBER') THEN
        RAISE EXCEPTION 'only the relay counts a delivery attempt (p_count_attempt)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO o FROM ferry.outbox WHERE id = p_id AND published_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'gone';
        RETURN;
    END IF;
    topic := o.topic;
    n := o.attempts + CASE WHEN p_count_attempt THEN 1 ELSE 0 END;
    IF n < greatest(p_min_attempts, 1) THEN
        outcome := 'gone';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM ferry.dead_letter d WHERE d.message_id = p_id AND d.consumer = '') THEN
        IF p_count_attempt THEN
            UPDATE ferry.outbox SET attempts = n, last_error = p_reason WHERE id = p_id;
        END IF;
        outcome := 'clash';
        RETURN;
    END IF;
    DELETE FROM ferry.outbox WHERE id = p_id;
    INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid,
                                   type, payload, headers, seq, shard, created_at, attempts,
                                   reason)
    VALUES (o.id, '', o.topic, o.aggregatetype, o.aggregateid, o.type, o.payload, o.headers,
            o.seq, o.shard, o.created_at, n, p_reason);
    outcome := 'moved';
END
$fn$;

REVOKE UPDATE ON ferry.outbox FROM ferry_reconciler;
