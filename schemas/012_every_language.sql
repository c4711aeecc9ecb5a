-- ferry schema, version 12: every language (issue 15).
--
-- What changes, and why:
--
--   * The consumer protocol, version 1: a small set of functions with
--     named parameters and defaults that gives a service in any language
--     the C consumer's guarantee (README, "From any language"). Until now
--     a service not written in C had to reverse-engineer inbox_claim,
--     inbox_hold (12 positional arguments), inbox_ready, inbox_unhold and
--     inbox_dead_letter (11), and get retries, dead letters, discard
--     markers and the held-message drain right on its own. The protocol
--     functions hold no rule of their own about order or dedupe: each
--     delegates to the inbox functions of versions 2, 6 and 8, so there is
--     one implementation. What is new is only what a client cannot keep
--     safely in its own memory: the count of failed attempts of a message
--     (ferry.inbox_attempt), so that the bound on attempts holds across a
--     restart of the service.
--
--       ferry.consume_protocol()   1; a later version adds functions or
--                                  parameters with defaults, and never
--                                  changes what a version-1 call means
--       ferry.consume_claim()      in the message's transaction, first:
--                                  the verdict (apply, discarded,
--                                  duplicate, late, held, parked)
--       ferry.consume_finish()     in the same transaction, last
--       ferry.consume_fail()       after a failed try, in a transaction of
--                                  its own: retry, or dead-lettered
--       ferry.consume_ready()      held messages whose turn has come
--       ferry.consume_skip_gap()   declare a key's missing positions lost
--
--   * ferry.emit_message(): emit from SQL with everything the C API has
--     (aggregate type, delay, headers, an explicit id), by name, with
--     defaults. A new name, not a third ferry.emit overload: an overload
--     whose extra parameters have defaults makes every existing 4- and
--     5-argument call of ferry.emit with a jsonb payload ambiguous.
--
-- Migrations 010 and 011 are other changes'; this file assumes nothing of
-- them but ferry.emit_with_id's signature, which stays.

-- ---------------------------------------------------------------- state

-- Failed tries of a message not yet applied, per consumer: the bound on
-- attempts, kept by the database so that it holds across restarts of any
-- client. A row lives from a message's first failure until it is applied
-- (consume_finish) or dead-lettered (consume_fail).
CREATE TABLE ferry.inbox_attempt (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
REVOKE ALL ON ferry.inbox_attempt FROM PUBLIC;
GRANT SELECT ON ferry.inbox_attempt TO ferry_reconciler;

-- ---------------------------------------------------------------- protocol

CREATE FUNCTION ferry.consume_protocol() RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT 1 $fn$;

-- The decision about one message, first thing in the transaction that
-- applies it, under the key's row lock (ferry.inbox_claim). verdict:
--   apply       run the handler, then consume_finish, then COMMIT;
--   discarded   a discard marker (header ferry_discarded): its position is
--               consumed without the handler; consume_finish, COMMIT;
--   duplicate   this id was applied before;
--   late        its position was applied (or skipped) before;
--   held        positions before it are missing: it is kept in
--               ferry.inbox_held and applied from there in its turn;
--   parked      its key waits behind a dead letter: kept the same way.
-- For every verdict: consume_finish, COMMIT, and only then let Kafka move
-- past the message. drain is true when held messages of this key became
-- ready: after the COMMIT, consume_ready(consumer, topic, key).
--
-- payload is needed to hold a message (an error naming it otherwise).
-- seq is the ferry_seq header as a number, NULL when there is none (a
-- message not from a ferry relay: deduplicated by id only, never held).
-- A seq out of 1 .. 2^63-2 is a data error (22003): the message is
-- poison (consume_fail with permanent => true and seq => NULL).
CREATE FUNCTION ferry.consume_claim(consumer text, id uuid, topic text, key text,
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
    v := ferry.inbox_claim($1, $2, $3, $4, $5, coalesce($12, false));
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
        PERFORM ferry.inbox_hold($1, $2, $3, $4, $5, $8, $9, $6, $7,
                                 coalesce($10, -1), coalesce($11, -1), v);
        verdict := CASE WHEN v = 'gap' THEN 'held' ELSE 'parked' END;
    ELSE
        RAISE EXCEPTION 'ferry.inbox_claim gave "%", which protocol version 1 does not know', v
            USING ERRCODE = 'internal_error';
    END IF;
END
$fn$;

-- Last thing in the message's transaction, whatever the verdict: a held
-- copy of a message that is done with (applied, a discard marker, a
-- duplicate, a stale copy of a position already applied) is dropped, and
-- its failed attempts forgotten. A message still waiting (held, parked)
-- keeps its held copy. Rolled back with the transaction, like the rest.
CREATE FUNCTION ferry.consume_finish(consumer text, id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM ferry.consumer_guard_($1);
    IF EXISTS (SELECT 1 FROM ferry.inbox i WHERE i.consumer = $1 AND i.message_id = $2)
       OR EXISTS (SELECT 1 FROM ferry.inbox_held h
                    JOIN ferry.inbox_key k USING (consumer, topic, key)
                   WHERE h.consumer = $1 AND h.message_id = $2 AND h.seq <= k.seq) THEN
        PERFORM ferry.inbox_unhold($1, $2);
        DELETE FROM ferry.inbox_attempt a WHERE a.consumer = $1 AND a.message_id = $2;
    END IF;
END
$fn$;

-- A try failed: the transaction that claimed the message was rolled back.
-- Call this in a transaction of its own, then COMMIT. It counts the
-- failure; outcome:
--   retry          try the message again (after a backoff that grows with
--                  attempts); do not let Kafka move past it;
--   dead_lettered  the attempts reached max_attempts, or permanent was
--                  set (the message itself is bad: not JSON, a position
--                  that is not one, refused by the handler for good). It
--                  is in ferry.dead_letter (dead_letter_id) and its key is
--                  parked behind it; let Kafka move past it.
-- Failures that are not the message's (a lost connection, a
-- serialization failure, a deadlock) are not counted: retry those without
-- calling this, a bounded number of times.
CREATE FUNCTION ferry.consume_fail(consumer text, id uuid, topic text, key text,
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
BEGIN
    PERFORM ferry.consumer_guard_($1);
    IF $11 IS NULL OR $11 < 1 OR $11 > 1000 THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 1000'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'max_attempts';
    END IF;
    INSERT INTO ferry.inbox_attempt AS a (consumer, message_id, attempts, last_error)
    VALUES ($1, $2, 1, v_error)
    ON CONFLICT ON CONSTRAINT inbox_attempt_pkey DO UPDATE
        SET attempts = a.attempts + 1, last_error = EXCLUDED.last_error, failed_at = now()
    RETURNING a.attempts INTO attempts;
    IF attempts < $11 AND NOT coalesce($12, false) THEN
        outcome := 'retry';
        RETURN;
    END IF;
    dead_letter_id := ferry.inbox_dead_letter($1, $2, $3, $4, $6, $9, $10,
                                              coalesce($7, 'null'), $8, attempts, v_error);
    DELETE FROM ferry.inbox_attempt a WHERE a.consumer = $1 AND a.message_id = $2;
    outcome := 'dead_lettered';
END
$fn$;

-- Held messages whose turn has come, oldest position first: of one key
-- (topic and key given: after a claim said drain) or of every key (both
-- NULL: on a timer, for keys released from outside by a replay, a discard
-- or a skipped gap). Each row is a message as it was received: claim it
-- like one from Kafka, in a transaction of its own, with the row's
-- columns (seq, payload, headers, type, aggregatetype).
CREATE FUNCTION ferry.consume_ready(consumer text, topic text DEFAULT NULL,
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
        RETURN QUERY SELECT * FROM ferry.inbox_ready($1, $4);
    ELSE
        RETURN QUERY SELECT * FROM ferry.inbox_ready_key($1, $2, $3, $4);
    END IF;
END
$fn$;

-- The positions missing before a key's first held message are lost for
-- good (the operator knows: a topic's retention ran out, say): the key
-- moves to just before it and the held messages are applied from there.
-- Returns the number of positions skipped. The consumer's own decision,
-- under its own name; ferry.inbox_skip_gap stays the reconciler's, for
-- any name.
CREATE FUNCTION ferry.consume_skip_gap(consumer text, topic text, key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM ferry.consumer_guard_($1);
    RETURN ferry.inbox_skip_gap($1, $2, $3);
END
$fn$;

-- ---------------------------------------------------------------- emit

-- Everything ferry_emit() can say, by name:
--   SELECT ferry.emit_message(topic => 'orders', key => 'o-1', type => 'OrderPlaced',
--                             payload => '{"id": 1}', aggregatetype => 'order',
--                             delay_ms => 60000, headers => '{"traceparent": "..."}');
-- Returns the message id: id when given (a retry that must keep its id,
-- an id the caller stored beforehand), else a new UUIDv7. payload and
-- headers are JSON text, so that text that is not JSON is refused with an
-- error naming the field (a jsonb value: pass it as ::text). Every other
-- check is ferry.emit_with_id's, the one writer of the outbox.
CREATE FUNCTION ferry.emit_message(topic text, key text, type text, payload text,
                                   headers text DEFAULT '{}',
                                   aggregatetype text DEFAULT '',
                                   delay_ms bigint DEFAULT 0,
                                   id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id uuid := coalesce($8, ferry.uuid_v7());
    v_json jsonb;
BEGIN
    IF $4 IS NOT NULL THEN
        BEGIN
            v_json := $4::jsonb;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'payload is not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
        END;
    END IF;
    IF $5 IS NOT NULL THEN
        BEGIN
            v_json := $5::jsonb;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'headers are not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END;
    END IF;
    PERFORM ferry.emit_with_id(v_id, $1, $2, $3, $4, coalesce($5, '{}'),
                               coalesce($6, ''), $7);
    RETURN v_id;
END
$fn$;

-- ---------------------------------------------------------------- grants

REVOKE ALL ON FUNCTION
    ferry.consume_protocol(),
    ferry.consume_claim(text, uuid, text, text, bigint, text, jsonb, text, text, integer,
                        bigint, boolean),
    ferry.consume_finish(text, uuid),
    ferry.consume_fail(text, uuid, text, text, text, bigint, text, jsonb, text, text,
                       integer, boolean),
    ferry.consume_ready(text, text, text, integer),
    ferry.consume_skip_gap(text, text, text),
    ferry.emit_message(text, text, text, text, text, text, bigint, uuid)
FROM PUBLIC;
-- The protocol is ferry_consumer's, under the names its role owns (each
-- function checks, through the inbox function it calls or itself).
GRANT EXECUTE ON FUNCTION
    ferry.consume_protocol(),
    ferry.consume_claim(text, uuid, text, text, bigint, text, jsonb, text, text, integer,
                        bigint, boolean),
    ferry.consume_finish(text, uuid),
    ferry.consume_fail(text, uuid, text, text, text, bigint, text, jsonb, text, text,
                       integer, boolean),
    ferry.consume_ready(text, text, text, integer),
    ferry.consume_skip_gap(text, text, text)
TO ferry_consumer;
-- Emitting is ferry_writer's (and so ferry_consumer's), like ferry.emit's
-- text overload.
GRANT EXECUTE ON FUNCTION
    ferry.emit_message(text, text, text, text, text, text, bigint, uuid)
TO ferry_writer;
