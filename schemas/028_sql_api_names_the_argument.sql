-- ferry schema, version 28: the SQL API names the argument it refuses
-- (README, "From any language": a refusal is SQLSTATE 22023 with the
-- field in COLUMN).
--
-- What changes, and why (each found by an outside audit):
--
--   * ferry.emit(text, ...) refused a payload whose number jsonb cannot
--     hold ('1e1000000') with 22003, "value overflows numeric format",
--     naming no field, where ferry.emit_message and the C API say 22023,
--     payload: it caught only the two invalid-text errors of the cast.
--     It now catches every data exception of the cast, as emit_message
--     does.
--   * ferry.consume_fail took positions ferry.consume_claim refuses (0,
--     2^63 - 1) and parked the key at them: at position 0, the key's
--     position 1 was parked behind it. It now refuses them as the claim
--     does (22003, COLUMN seq). (seq => NULL stays the way to report a
--     message whose position was the bad part.)
--   * ferry.consume_claim and consume_fail with a NULL id, topic or key
--     failed on a not-null constraint of an inbox table (23502), naming
--     no argument; now 22023 with the argument in COLUMN.
--
-- Signatures, owners, SECURITY DEFINER, search_path and grants are
-- unchanged (CREATE OR REPLACE keeps the grants).

CREATE OR REPLACE FUNCTION ferry.emit(p_topic text, p_key text, p_type text,
                           p_payload text, p_headers text DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id uuid := ferry.uuid_v7();
    v_json jsonb;
BEGIN
    IF p_payload IS NOT NULL THEN
        BEGIN
            v_json := p_payload::jsonb;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'payload is not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
        END;
    END IF;
    IF p_headers IS NOT NULL THEN
        BEGIN
            v_json := p_headers::jsonb;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'headers are not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END;
    END IF;
    PERFORM ferry.emit_with_id(v_id, p_topic, p_key, p_type, p_payload, p_headers);
    RETURN v_id;
END
$fn$;


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
    -- A NULL id, topic or key is refused naming it, as every other
    -- argument that is wrong is (schema 28; it was a not-null violation
    -- of an inbox table, 23502, naming no argument).
    IF $2 IS NULL OR $3 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION '% must not be null',
                        CASE WHEN $2 IS NULL THEN 'id' WHEN $3 IS NULL THEN 'topic' ELSE 'key' END
            USING ERRCODE = 'invalid_parameter_value',
                  COLUMN = CASE WHEN $2 IS NULL THEN 'id' WHEN $3 IS NULL THEN 'topic' ELSE 'key' END;
    END IF;
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
    IF $2 IS NULL OR $3 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION '% must not be null',
                        CASE WHEN $2 IS NULL THEN 'id' WHEN $3 IS NULL THEN 'topic' ELSE 'key' END
            USING ERRCODE = 'invalid_parameter_value',
                  COLUMN = CASE WHEN $2 IS NULL THEN 'id' WHEN $3 IS NULL THEN 'topic' ELSE 'key' END;
    END IF;
    -- The positions consume_claim takes, and no other: a failure at
    -- position 0 parked the key where its position 1 then waited for ever.
    IF $6 IS NOT NULL AND ($6 < 1 OR $6 > 9223372036854775806) THEN
        RAISE EXCEPTION 'position % is out of range (1 .. 9223372036854775806)', $6
            USING ERRCODE = 'numeric_value_out_of_range', COLUMN = 'seq';
    END IF;
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
