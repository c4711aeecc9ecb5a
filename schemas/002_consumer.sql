-- ferry schema, version 2: the consumer side (lib/consume.c).
--
-- A consumer applies each message in its own transaction on the service's
-- database. Three tables keep that exactly once in effect and in per-key
-- order, whatever the crashes and redeliveries:
--
--   ferry.inbox       (version 1) the (consumer, message id) of every
--                     message applied: the dedupe record;
--   ferry.inbox_key   per (consumer, topic, key): the last position applied
--                     and, when the key is parked, the dead letter it waits
--                     behind;
--   ferry.inbox_held  messages that arrived but may not be applied yet: a
--                     gap before them, or their key parked. Kafka's offset
--                     moves past them once they are held here; the consumer
--                     applies them from here when their turn comes.
--
-- Positions are the relay's ferry_seq header: 1, 2, 3 ... per (topic, key)
-- in the emitting database, in commit order, without holes.

-- The reconciler deletes inbox rows by age; rows arrive in applied_at
-- order, so a BRIN index serves that at a fraction of a B-tree's cost per
-- message (a fifth of the inbox's WAL, measured by bench-consume).
DROP INDEX ferry.inbox_applied_at;
CREATE INDEX inbox_applied_at ON ferry.inbox USING brin (applied_at);

CREATE TABLE ferry.inbox_key (
    consumer   text   NOT NULL,
    topic      text   NOT NULL,
    key        text   NOT NULL,
    seq        bigint NOT NULL DEFAULT 0,   -- last position applied (or skipped)
    parked_by  bigint,                      -- ferry.dead_letter.id, while parked
    PRIMARY KEY (consumer, topic, key)
) WITH (fillfactor = 50);                   -- keeps the per-message update HOT

CREATE TABLE ferry.inbox_held (
    consumer         text        NOT NULL,
    topic            text        NOT NULL,
    key              text        NOT NULL,
    seq              bigint,                -- NULL: a message without a position
    message_id       uuid        NOT NULL,
    type             text        NOT NULL DEFAULT '',
    aggregatetype    text        NOT NULL DEFAULT '',
    payload          text        NOT NULL,  -- as received, parsed when applied
    headers          jsonb       NOT NULL DEFAULT '{}',
    kafka_partition  integer     NOT NULL DEFAULT -1,
    kafka_offset     bigint      NOT NULL DEFAULT -1,
    reason           text        NOT NULL CHECK (reason IN ('gap', 'parked', 'replay')),
    held_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
-- One held copy per position; and the drain's lookup.
CREATE UNIQUE INDEX inbox_held_position ON ferry.inbox_held (consumer, topic, key, seq);

-- The consumer's whole decision about one message, in one round trip,
-- inside the transaction that will apply it. Returns
--   'apply'        the next position of its key (or a message without a
--                  position): the inbox row is written and the key's
--                  position advanced, so the caller runs the handler and
--                  commits — or rolls back and all of this with it;
--   'apply_more'   as 'apply', and the key's next position is held, so
--                  the caller drains it after this commits;
--   'duplicate'    this message id was applied before;
--   'late'         its position is at or behind the last one applied: a
--                  redelivery, skipped;
--   'gap'          positions are missing before it: the caller holds it;
--   'parked'       its key waits behind a dead letter: the caller holds it.
--
-- p_seq is NULL for a message that carries no position (not published by
-- a ferry relay): it is deduplicated by id only and never held.
-- p_first_any: a key never seen by this consumer starts at whatever
-- position arrives first, rather than at 1 (for consumers that start on a
-- topic whose beginning Kafka no longer keeps).
CREATE FUNCTION ferry.inbox_claim(p_consumer text, p_id uuid, p_topic text, p_key text,
                                  p_seq bigint, p_first_any boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_last bigint;
    v_parked bigint;
    v_more boolean;
BEGIN
    IF p_seq IS NULL THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        RETURN CASE WHEN FOUND THEN 'apply' ELSE 'duplicate' END;
    END IF;

    -- The usual case first, in two statements: the key's next position,
    -- key not parked. The UPDATE takes the row lock itself; when another
    -- transaction moved the position first, it re-reads the row after that
    -- one ends, finds no match, and the general path below decides.
    UPDATE ferry.inbox_key SET seq = p_seq
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       AND seq = p_seq - 1 AND parked_by IS NULL
    RETURNING EXISTS (SELECT 1 FROM ferry.inbox_held h
                       WHERE h.consumer = p_consumer AND h.topic = p_topic
                         AND h.key = p_key AND h.seq = p_seq + 1)
      INTO v_more;
    IF FOUND THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, p_seq)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            UPDATE ferry.inbox_key SET seq = p_seq - 1
             WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
            RETURN 'duplicate';
        END IF;
        RETURN CASE WHEN v_more THEN 'apply_more' ELSE 'apply' END;
    END IF;

    -- The key's row lock serialises every consumer instance that holds a
    -- message of this key (a partition that moved in a rebalance, a drain
    -- of held messages) until this transaction ends.
    SELECT seq, parked_by INTO v_last, v_parked
      FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq)
        VALUES (p_consumer, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        SELECT seq, parked_by INTO v_last, v_parked
          FROM ferry.inbox_key
         WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
           FOR UPDATE;
    END IF;

    IF p_seq <= v_last THEN
        RETURN 'late';
    END IF;
    IF v_parked IS NOT NULL THEN
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
    UPDATE ferry.inbox_key SET seq = p_seq
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    PERFORM 1 FROM ferry.inbox_held
      WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
        AND seq = p_seq + 1;
    RETURN CASE WHEN FOUND THEN 'apply_more' ELSE 'apply' END;
END
$fn$;

-- Hold a message that may not be applied yet ('gap' or 'parked' from
-- inbox_claim). Holding the same position twice keeps the first copy.
CREATE FUNCTION ferry.inbox_hold(p_consumer text, p_id uuid, p_topic text, p_key text,
                                 p_seq bigint, p_type text, p_aggregatetype text,
                                 p_payload text, p_headers jsonb, p_partition integer,
                                 p_offset bigint, p_reason text)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                  aggregatetype, payload, headers, kafka_partition,
                                  kafka_offset, reason)
    VALUES (p_consumer, p_topic, p_key, p_seq, p_id, coalesce(p_type, ''),
            coalesce(p_aggregatetype, ''), p_payload, coalesce(p_headers, '{}'),
            p_partition, p_offset, p_reason)
    ON CONFLICT DO NOTHING;
$fn$;

-- A message the handler kept failing on: into the dead letters with the
-- consumer's name and the reason, and its key parked behind it (when it
-- has a position), so that the key's later messages are held rather than
-- applied out of order. Returns the dead letter's id.
CREATE FUNCTION ferry.inbox_dead_letter(p_consumer text, p_id uuid, p_topic text,
                                        p_key text, p_seq bigint, p_type text,
                                        p_aggregatetype text, p_payload text,
                                        p_headers jsonb, p_attempts integer,
                                        p_reason text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_payload jsonb;
    v_id bigint;
BEGIN
    BEGIN
        v_payload := p_payload::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        v_payload := to_jsonb(p_payload);   -- not JSON: kept as a JSON string
    END;
    INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid,
                                   type, payload, headers, seq, shard, created_at,
                                   attempts, reason)
    VALUES (p_id, p_consumer, p_topic, coalesce(p_aggregatetype, ''), p_key,
            coalesce(p_type, ''), v_payload, coalesce(p_headers, '{}'),
            coalesce(p_seq, 0), -1, now(), p_attempts, p_reason)
    ON CONFLICT (message_id, consumer) DO UPDATE
        SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason, failed_at = now()
    RETURNING id INTO v_id;
    IF p_seq IS NOT NULL THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq, parked_by)
        VALUES (p_consumer, p_topic, p_key, 0, v_id)
        ON CONFLICT (consumer, topic, key) DO UPDATE SET parked_by = v_id;
    END IF;
    -- The held copy, if the message came from there, is the dead letter now.
    DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id;
    RETURN v_id;
END
$fn$;

-- Held messages this consumer should look at now: the next position of a
-- key that is not parked, a replayed message without a position, and
-- stale copies of positions already applied (claimed as 'late' and
-- dropped). The consumer asks after each apply_more and on a timer (a
-- replay or a skip by an operator releases keys from outside).
CREATE FUNCTION ferry.inbox_ready(p_consumer text, p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT h.*
      FROM ferry.inbox_held h
      LEFT JOIN ferry.inbox_key k USING (consumer, topic, key)
     WHERE h.consumer = p_consumer
       AND (h.seq IS NULL
            OR h.seq <= k.seq
            OR (k.parked_by IS NULL AND h.seq = k.seq + 1))
     ORDER BY h.topic, h.key, h.seq, h.held_at
     LIMIT p_limit;
$fn$;

-- Drop a held message once it was applied or found late.
CREATE FUNCTION ferry.inbox_unhold(p_consumer text, p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id;
$fn$;

-- An operator (or the reconciler) declares the missing positions before a
-- key's first held message lost for good: the key's position jumps to
-- just before it, so the held messages are applied from there. Returns the
-- number of positions skipped (0 when there was no gap to skip).
CREATE FUNCTION ferry.inbox_skip_gap(p_consumer text, p_topic text, p_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_last bigint;
BEGIN
    SELECT seq INTO v_last FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key FOR UPDATE;
    SELECT min(seq) INTO v_first FROM ferry.inbox_held
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    IF v_last IS NULL OR v_first IS NULL OR v_first <= v_last + 1 THEN
        RETURN 0;
    END IF;
    UPDATE ferry.inbox_key SET seq = v_first - 1
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    RETURN v_first - 1 - v_last;
END
$fn$;

-- Dead letters, both sides. Relay side (consumer = ''): replaying puts the
-- message back into the outbox with its id and position, so it is
-- published next; discarding publishes in its place a marker with the same
-- id and position, payload null and the header ferry_discarded (the
-- reason), so that consumers see the position accounted for instead of a
-- gap that would hold the key for ever. Consumer side: replaying hands the
-- message back to that consumer (held, applied next) and releases the key;
-- discarding drops it, counts its position as done, and releases the key.
-- Both return false when there is no such dead letter.
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
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at,
                                  attempts, last_error)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, d.payload,
                d.headers, d.seq, d.shard, d.created_at, now(), 0,
                'replayed: ' || d.reason);
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    IF d.seq > 0 THEN
        INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                      aggregatetype, payload, headers, reason)
        VALUES (d.consumer, d.topic, d.aggregateid, d.seq, d.message_id, d.type,
                d.aggregatetype, d.payload::text, d.headers, 'replay')
        ON CONFLICT DO NOTHING;
        UPDATE ferry.inbox_key SET parked_by = NULL
         WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
           AND parked_by = p_id;
    ELSE
        -- No position: nothing waits behind it; held for the next drain.
        INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                      aggregatetype, payload, headers, reason)
        VALUES (d.consumer, d.topic, d.aggregateid, NULL, d.message_id, d.type,
                d.aggregatetype, d.payload::text, d.headers, 'replay')
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.discard_dead_letter(p_id bigint) RETURNS boolean
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
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, 'null',
                jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                d.seq, d.shard, d.created_at, now());
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    -- Counted as done: a redelivery of it is 'late' from now on.
    INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
    VALUES (d.consumer, d.message_id, d.topic, d.aggregateid, d.seq)
    ON CONFLICT DO NOTHING;
    UPDATE ferry.inbox_key SET parked_by = NULL, seq = greatest(seq, d.seq)
     WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
       AND parked_by = p_id;
    RETURN true;
END
$fn$;

-- The service's role applies messages: ferry_writer emits and consumes.
REVOKE ALL ON ferry.inbox_key, ferry.inbox_held FROM PUBLIC;
REVOKE ALL ON FUNCTION
    ferry.inbox_claim(text, uuid, text, text, bigint, boolean),
    ferry.inbox_hold(text, uuid, text, text, bigint, text, text, text, jsonb, integer,
                     bigint, text),
    ferry.inbox_dead_letter(text, uuid, text, text, bigint, text, text, text, jsonb,
                            integer, text),
    ferry.inbox_ready(text, integer),
    ferry.inbox_unhold(text, uuid),
    ferry.inbox_skip_gap(text, text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    ferry.inbox_claim(text, uuid, text, text, bigint, boolean),
    ferry.inbox_hold(text, uuid, text, text, bigint, text, text, text, jsonb, integer,
                     bigint, text),
    ferry.inbox_dead_letter(text, uuid, text, text, bigint, text, text, text, jsonb,
                            integer, text),
    ferry.inbox_ready(text, integer),
    ferry.inbox_unhold(text, uuid)
TO ferry_writer;
GRANT EXECUTE ON FUNCTION ferry.inbox_skip_gap(text, text, text),
    ferry.replay_dead_letter(bigint), ferry.discard_dead_letter(bigint)
TO ferry_reconciler;
GRANT SELECT ON ferry.inbox_key, ferry.inbox_held TO ferry_reconciler;
GRANT DELETE ON ferry.inbox_held TO ferry_reconciler;
