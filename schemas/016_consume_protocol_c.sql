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

-- The garbage sweep (reconciler/sweep_garbage.c) deletes attempts of
-- messages long gone.
GRANT DELETE ON ferry.inbox_attempt TO ferry_reconciler;
