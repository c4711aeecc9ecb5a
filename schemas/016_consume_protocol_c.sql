-- ferry schema, version 16: the C consumer on the consumer protocol
-- (issue 15 item 1), and the protocol's hot path made cheaper (issue 13).
--
-- What changes, and why:
--
--   * lib/consume.c now calls only the protocol functions of version 12
--     (consume_claim, consume_finish, consume_fail, consume_ready), as
--     every other language does, so the rules live once. consume_finish
--     runs for every message, so its usual case — a message from Kafka
--     that was never held and never failed — costs two index probes on
--     small tables and nothing else: what it did before (is the message
--     in the inbox? then unhold it, which checks the name a second time
--     and deletes nothing, and delete its attempts, which are none) is
--     done only when there is a held copy or a failed attempt to drop.
--     What a call means is unchanged.
--   * ferry.consume_finish_many(consumer, ids): consume_finish for many
--     messages of one transaction in one call (protocol version 1.1, an
--     added function: consume_protocol() still says 1, and nothing of
--     version 1 changes). The C consumer finishes a batch with it: one
--     statement and one name check per batch, not per message, and only
--     the ids that have a held copy or a counted failure go through
--     consume_finish itself.
--   * ferry.inbox_attempt rows of messages applied long ago (a consumer
--     that gave up on a message outside the protocol, a row left by a
--     version-1 client that never called consume_finish) are garbage:
--     the reconciler's garbage sweep deletes them past the dedupe window,
--     so it may delete from the table now.
--
-- Names, signatures, grants and meanings of the protocol's functions are
-- unchanged: protocol version 1.

CREATE OR REPLACE FUNCTION ferry.consume_finish(consumer text, id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM ferry.consumer_guard_($1);
    -- Nothing held under this id and no failed try counted: nothing to
    -- drop (the usual case, a message applied the first time it came).
    IF NOT EXISTS (SELECT 1 FROM ferry.inbox_held h WHERE h.consumer = $1 AND h.message_id = $2)
       AND NOT EXISTS (SELECT 1 FROM ferry.inbox_attempt a
                        WHERE a.consumer = $1 AND a.message_id = $2) THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM ferry.inbox i WHERE i.consumer = $1 AND i.message_id = $2)
       OR EXISTS (SELECT 1 FROM ferry.inbox_held h
                    JOIN ferry.inbox_key k USING (consumer, topic, key)
                   WHERE h.consumer = $1 AND h.message_id = $2 AND h.seq <= k.seq) THEN
        PERFORM ferry.inbox_unhold($1, $2);
        DELETE FROM ferry.inbox_attempt a WHERE a.consumer = $1 AND a.message_id = $2;
    END IF;
END
$fn$;

-- consume_finish(consumer, id) for each of ids, in their order, in the
-- caller's transaction: what a client that applied several messages in
-- one transaction calls last, instead of one consume_finish each. At most
-- 10000 ids a call.
CREATE FUNCTION ferry.consume_finish_many(consumer text, ids uuid[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id uuid;
BEGIN
    PERFORM ferry.consumer_guard_($1);
    IF coalesce(cardinality($2), 0) > 10000 THEN
        RAISE EXCEPTION 'at most 10000 ids a call'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'ids';
    END IF;
    -- consume_finish's usual case (nothing held, no failed try) for all
    -- of them in one statement; the others one by one, through it.
    FOR v_id IN
        SELECT u.mid FROM unnest($2) WITH ORDINALITY AS u(mid, n)
         WHERE u.mid IS NOT NULL
           AND (EXISTS (SELECT 1 FROM ferry.inbox_held h
                         WHERE h.consumer = $1 AND h.message_id = u.mid)
                OR EXISTS (SELECT 1 FROM ferry.inbox_attempt a
                            WHERE a.consumer = $1 AND a.message_id = u.mid))
         ORDER BY u.n
    LOOP
        PERFORM ferry.consume_finish($1, v_id);
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.consume_finish_many(text, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.consume_finish_many(text, uuid[]) TO ferry_consumer;

-- The garbage sweep (reconciler/sweep_garbage.c) deletes attempts of
-- messages long gone.
GRANT DELETE ON ferry.inbox_attempt TO ferry_reconciler;
