-- ferry schema, version 9: one path from the outbox to the dead letters
-- (issue 17, "one path per SQL concept").
--
-- What changes, and why:
--
--   * Moving an outbox row to the relay's dead letters was written twice,
--     with different rules for a clash (a relay dead letter already there
--     for the same message id — possible when a service emits again with an
--     id it used before, ferry.emit_with_id, after the first row was moved):
--     the relay's statement deleted the row and then inserted ON CONFLICT
--     DO NOTHING, so on a clash the row was deleted and no letter written:
--     the message was lost without a trace. The reconciler left such rows
--     alone, but a letter written between its check and its insert failed
--     its whole batch. As ferry.emit_with_id is the one writer of the
--     outbox, ferry.outbox_dead_letter is now the one mover, called by both.
--
--   * The rule for a clash: the row stays in the outbox and the existing
--     letter is kept, both untouched but for the attempt being counted;
--     the caller is told ('clash') and says so. Never drop the row (it is
--     a message nobody has published), never overwrite the letter (it is
--     another message's record, perhaps about to be replayed), and never
--     fail the statement (one such row would then stop the reconciler's
--     whole batch, pass after pass). The row is left where the relay and
--     the reconciler's over_attempted sweep both keep showing it. Two
--     messages with one id is for a person to settle (a replay or a discard
--     of the letter would write its id into the outbox again, and clash
--     too): once one of them is deleted, the next move goes through.

-- Move outbox row p_id to the relay's dead letters (consumer ''), if it is
-- still there, unpublished, and its attempts — counting the caller's own
-- attempt that just failed when p_count_attempt (the relay) — reach
-- p_min_attempts. The letter records those attempts and p_reason.
--
-- outcome: 'moved'; 'clash' (a relay dead letter for p_id exists: the row
-- stays, with the attempt counted and p_reason as its last error when
-- p_count_attempt); 'gone' (no such unpublished row, or under
-- p_min_attempts: nothing done). topic: the row's, when there was one.
--
-- Race-free without a subtransaction: the row is locked first, and every
-- writer of a relay dead letter for an outbox id (this function) locks
-- that row first, so the check for a clash holds until the insert. A
-- letter inserted by hand meanwhile makes the insert fail (unique
-- violation): loud, never a silent drop.
--
-- SECURITY INVOKER: the callers' own table privileges apply (DELETE on the
-- outbox, INSERT of relay dead letters under dead_letter_relay_insert), so
-- it grants nothing a role did not already have.
CREATE FUNCTION ferry.outbox_dead_letter(p_id uuid, p_min_attempts integer,
                                         p_count_attempt boolean, p_reason text,
                                         OUT outcome text, OUT topic text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    o ferry.outbox;
    n integer;
BEGIN
    SELECT * INTO o FROM ferry.outbox WHERE id = p_id AND published_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'gone';
        RETURN;
    END IF;
    topic := o.topic;
    n := o.attempts + CASE WHEN p_count_attempt THEN 1 ELSE 0 END;
    IF n < p_min_attempts THEN
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
REVOKE ALL ON FUNCTION ferry.outbox_dead_letter(uuid, integer, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.outbox_dead_letter(uuid, integer, boolean, text)
    TO ferry_relay, ferry_reconciler;
