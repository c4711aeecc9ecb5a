-- ferry schema, version 27: the reconciler writes no message of its own
-- making and deletes none that was not published.
--
-- What changes, and why:
--
--   * ferry_reconciler could INSERT relay dead letters (schema 8's
--     dead_letter_relay_insert was TO ferry_relay, ferry_reconciler), so
--     the role could write a letter for a message nobody emitted, with any
--     payload, position and headers (a reserved ferry_discarded too), and
--     then replay it into the outbox with `ferry-reconcile repair
--     --replay`: a forged message, at a position a real one then also
--     took, so that consumers applied one and dropped the other as late.
--     README ("Schema and roles") says the role may not rewrite a message.
--     Its one use of the privilege was moving over-attempted outbox rows
--     to the relay's dead letters through ferry.outbox_dead_letter, which
--     now runs as the schema's owner (SECURITY DEFINER): the role moves
--     real rows, as they are, and writes no letter itself. The INSERT
--     policy is the relay's alone (the relay produces whatever it
--     publishes anyway, and its WAL source writes letters of messages that
--     were never rows).
--   * ferry_reconciler could DELETE any outbox row (schema 4), a message
--     nobody had published, lost without a trace. Its garbage sweep deletes
--     published rows past retention only; it now does so through
--     ferry.outbox_purge_published, which deletes nothing else, and the
--     privilege is gone.
--   * ferry.outbox_dead_letter moves a row only after at least one failed
--     attempt (besides p_min_attempts): run as the owner, it must not let
--     a caller park a healthy key by moving its next message with
--     p_min_attempts 0. The relay counts its own attempt (p_count_attempt)
--     and the reconciler's sweep asks for max_attempts, so neither call
--     changes.
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

ALTER POLICY dead_letter_relay_insert ON ferry.dead_letter TO ferry_relay;
REVOKE INSERT ON ferry.dead_letter FROM ferry_reconciler;

-- The garbage sweep's batch (reconciler/sweep_garbage.c): up to p_limit
-- published rows past p_before, after (p_after_at, p_after_id) in
-- (published_at, id) order, deleted; the row comparison bounds the index
-- scan on published_at (outbox_published), and the ties of one
-- acknowledgement (one now()) are ordered by id. deleted: rows deleted;
-- looked: rows of the batch; last_at, last_id: its last row, NULL when it
-- had none. Deletes nothing unpublished, whatever it is given.
CREATE FUNCTION ferry.outbox_purge_published(p_before timestamptz, p_after_at timestamptz,
                                             p_after_id uuid, p_limit integer,
                                             OUT deleted bigint, OUT looked bigint,
                                             OUT last_at text, OUT last_id text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'limit must be 1 .. 100000'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'limit';
    END IF;
    WITH b AS MATERIALIZED (
        SELECT o.id, o.published_at FROM ferry.outbox o
         WHERE o.published_at IS NOT NULL AND o.published_at < p_before
           AND (o.published_at, o.id) > (p_after_at, p_after_id)
         ORDER BY o.published_at, o.id LIMIT p_limit),
    d AS (DELETE FROM ferry.outbox o WHERE o.id = ANY (ARRAY(SELECT id FROM b))
            AND o.published_at IS NOT NULL AND o.published_at < p_before RETURNING 1),
    last AS (SELECT b.published_at, b.id FROM b ORDER BY b.published_at DESC, b.id DESC LIMIT 1)
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM b),
           last.published_at::text, last.id::text
      INTO deleted, looked, last_at, last_id
      FROM (SELECT 1) one LEFT JOIN last ON true;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.outbox_purge_published(timestamptz, timestamptz, uuid, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.outbox_purge_published(timestamptz, timestamptz, uuid, integer)
    TO ferry_reconciler;

REVOKE DELETE ON ferry.outbox FROM ferry_reconciler;
