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
--   * The protocol's text arguments are compared in the database's
--     collation, whatever collation the caller's values carry. A value of
--     type name (the literal 'UTF8' of convert_from(payload, 'UTF8'), a
--     column of a catalog) or an explicit COLLATE makes a whole call
--     collate "C"; the functions' comparisons with ferry's columns then
--     could not use their indexes (built in the database's collation),
--     and every claim scanned ferry.inbox_key whole: bench-consume's
--     consumer ran at a tenth of its speed (pg_stat_statements: 2 ms a
--     claim instead of 0.02). Each function now passes its text arguments
--     on as COLLATE "default". Equality means the same in both (ferry's
--     collations are deterministic), so no answer changes.
--
-- Names, signatures, grants and meanings of the protocol's functions are
-- unchanged: protocol version 1.

CREATE OR REPLACE FUNCTION ferry.consume_finish(consumer text, id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- In the database's collation, whatever the caller's (see above).
    v_consumer text COLLATE "default" := $1;
BEGIN
    PERFORM ferry.consumer_guard_(v_consumer);
    -- Nothing held under this id and no failed try counted: nothing to
    -- drop (the usual case, a message applied the first time it came).
    IF NOT EXISTS (SELECT 1 FROM ferry.inbox_held h WHERE h.consumer = v_consumer AND h.message_id = $2)
       AND NOT EXISTS (SELECT 1 FROM ferry.inbox_attempt a
                        WHERE a.consumer = v_consumer AND a.message_id = $2) THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM ferry.inbox i WHERE i.consumer = v_consumer AND i.message_id = $2)
       OR EXISTS (SELECT 1 FROM ferry.inbox_held h
                    JOIN ferry.inbox_key k USING (consumer, topic, key)
                   WHERE h.consumer = v_consumer AND h.message_id = $2 AND h.seq <= k.seq) THEN
        PERFORM ferry.inbox_unhold(v_consumer, $2);
        DELETE FROM ferry.inbox_attempt a WHERE a.consumer = v_consumer AND a.message_id = $2;
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
    v_consumer text COLLATE "default" := $1;
BEGIN
    PERFORM ferry.consumer_guard_(v_consumer);
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
                         WHERE h.consumer = v_consumer AND h.message_id = u.mid)
                OR EXISTS (SELECT 1 FROM ferry.inbox_attempt a
                            WHERE a.consumer = v_consumer AND a.message_id = u.mid))
         ORDER BY u.n
    LOOP
        PERFORM ferry.consume_finish(v_consumer, v_id);
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.consume_finish_many(text, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.consume_finish_many(text, uuid[]) TO ferry_consumer;

-- The garbage sweep (reconciler/sweep_garbage.c) deletes attempts of
-- messages long gone.
GRANT DELETE ON ferry.inbox_attempt TO ferry_reconciler;

-- The other protocol functions of version 12, unchanged but for the
-- collation of their text arguments (see above).
CREATE OR REPLACE FUNCTION ferry.consume_claim(consumer text, id uuid, topic text, key text,
                                    seq bigint DEFAULT NULL,
                                    payload text DEFAULT NULL,
                                    headers jsonb DEFAULT '{}',
                                    type text DEFAULT '',
                                    aggregatetype text DEFAULT '',
                                    kafka_partition integer DEFAULT -1,
                                    kafka_offset bigint DEFAULT -1,
                                    first_any boolean DEFAULT false,
                                    OUT verdict text, OUT drain boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v text;
BEGIN
    -- Named parameters are also variables here: positional references
    -- ($n) keep them apart from the tables' columns of the same names.
    v := ferry.inbox_claim($1 COLLATE "default", $2, $3 COLLATE "default",
                           $4 COLLATE "default", $5, coalesce($12, false));
    drain := v = 'apply_more';
    IF v IN ('apply', 'apply_more') THEN
        verdict := CASE WHEN coalesce($7, '{}') ? 'ferry_discarded' THEN 'discarded'
                        ELSE 'apply' END;
    ELSIF v IN ('duplicate', 'late') THEN
        verdict := v;
    ELSIF v IN ('gap', 'parked') THEN
        IF $6 IS NULL THEN
            RAISE EXCEPTION 'payload is needed to hold message % (its turn has not come)', $2
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
        END IF;
        -- A held message claimed again from the drain is held already:
        -- inbox_hold keeps the first copy.
        PERFORM ferry.inbox_hold($1 COLLATE "default", $2, $3 COLLATE "default",
                                 $4 COLLATE "default", $5, $8, $9, $6, $7,
                                 coalesce($10, -1), coalesce($11, -1), v);
        verdict := CASE WHEN v = 'gap' THEN 'held' ELSE 'parked' END;
    ELSE
        RAISE EXCEPTION 'ferry.inbox_claim gave "%", which protocol version 1 does not know', v
            USING ERRCODE = 'internal_error';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.consume_fail(consumer text, id uuid, topic text, key text,
                                   error text,
                                   seq bigint DEFAULT NULL,
                                   payload text DEFAULT 'null',
                                   headers jsonb DEFAULT '{}',
                                   type text DEFAULT '',
                                   aggregatetype text DEFAULT '',
                                   max_attempts integer DEFAULT 5,
                                   permanent boolean DEFAULT false,
                                   OUT outcome text, OUT attempts integer,
                                   OUT dead_letter_id bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_error text := left(coalesce(nullif($5, ''), 'no reason given'), 2000);
    v_consumer text COLLATE "default" := $1;
BEGIN
    PERFORM ferry.consumer_guard_(v_consumer);
    IF $11 IS NULL OR $11 < 1 OR $11 > 1000 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 1000'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'max_attempts';
    END IF;
    INSERT INTO ferry.inbox_attempt AS a (consumer, message_id, attempts, last_error)
    VALUES (v_consumer, $2, 1, v_error)
    ON CONFLICT ON CONSTRAINT inbox_attempt_pkey DO UPDATE
        SET attempts = a.attempts + 1, last_error = EXCLUDED.last_error, failed_at = now()
    RETURNING a.attempts INTO attempts;
    IF attempts < $11 AND NOT coalesce($12, false) THEN
        outcome := 'retry';
        RETURN;
    END IF;
    dead_letter_id := ferry.inbox_dead_letter(v_consumer, $2, $3 COLLATE "default",
                                              $4 COLLATE "default", $6, $9, $10,
                                              coalesce($7, 'null'), $8, attempts, v_error);
    DELETE FROM ferry.inbox_attempt a WHERE a.consumer = v_consumer AND a.message_id = $2;
    outcome := 'dead_lettered';
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.consume_ready(consumer text, topic text DEFAULT NULL,
                                    key text DEFAULT NULL, max_rows integer DEFAULT 100)
RETURNS SETOF ferry.inbox_held
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF $4 IS NULL OR $4 < 1 OR $4 > 10000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 10000'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'max_rows';
    END IF;
    IF ($2 IS NULL) <> ($3 IS NULL) THEN
        RAISE EXCEPTION 'give both topic and key, or neither'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'key';
    END IF;
    IF $2 IS NULL THEN
        RETURN QUERY SELECT * FROM ferry.inbox_ready($1 COLLATE "default", $4);
    ELSE
        RETURN QUERY SELECT * FROM ferry.inbox_ready_key($1 COLLATE "default",
                                                         $2 COLLATE "default",
                                                         $3 COLLATE "default", $4);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.consume_skip_gap(consumer text, topic text, key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM ferry.consumer_guard_($1 COLLATE "default");
    RETURN ferry.inbox_skip_gap($1 COLLATE "default", $2 COLLATE "default",
                                $3 COLLATE "default");
END
$fn$;
