-- ferry schema, version 7: the relay schedules per key (issue 11).
--
-- What changes, and why:
--
--   * Wake-ups never lose a commit. ferry.emit_with_id read wake_relays when
--     its statement ran; a relay that turned the flag on and took its last
--     look before such a writer committed left the row for the poll (a
--     second, or poll_interval_ms). Now a writer that reads the flag off
--     holds a shared advisory lock to its commit, and the relay turning the
--     flag on waits (without blocking: it tries, and looks meanwhile) until
--     it can take that lock exclusively. ferry.wake_lock() names the key.
--   * The payload limit applies to what is published: jsonb's canonical
--     text, which can be longer than the input (an 800,001-byte compact
--     array became 1,200,000 bytes).
--   * outbox.payload_bytes keeps that size, so the relay bounds each fetch
--     by bytes as well as rows (rows from before this version have NULL and
--     count as max_payload_bytes).

ALTER TABLE ferry.outbox ADD COLUMN payload_bytes integer;

-- The advisory lock of the wake-up handshake: (classid, objid).
CREATE FUNCTION ferry.wake_lock(OUT classid integer, OUT objid integer)
LANGUAGE sql IMMUTABLE AS $$ SELECT 1718903417, 1 $$;
REVOKE ALL ON FUNCTION ferry.wake_lock() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.wake_lock() TO ferry_writer, ferry_relay, ferry_reconciler;

CREATE OR REPLACE FUNCTION ferry.emit_with_id(p_id uuid, p_topic text, p_key text,
                                   p_type text, p_payload text,
                                   p_headers text DEFAULT '{}',
                                   p_aggregatetype text DEFAULT '',
                                   p_delay_ms bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_seq bigint;
    v_max integer;
    v_shards integer;
    v_headers jsonb;
    v_name text;
    v_wake boolean;
    v_payload jsonb;
    v_bytes integer;
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'message id must not be null'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'id';
    END IF;
    IF p_topic IS NULL OR p_topic = '' THEN
        RAISE EXCEPTION 'topic must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'topic';
    END IF;
    IF octet_length(p_topic) > 249 THEN
        RAISE EXCEPTION 'topic is longer than 249 bytes'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'topic';
    END IF;
    IF p_topic !~ '^[A-Za-z0-9._-]+$' OR p_topic IN ('.', '..') THEN
        RAISE EXCEPTION 'topic "%" is not a valid Kafka topic name (letters, digits, ".", "_", "-")',
                        left(p_topic, 64)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'topic';
    END IF;
    IF p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'key must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'key';
    END IF;
    IF octet_length(p_key) > 1024 THEN
        RAISE EXCEPTION 'key is longer than 1024 bytes'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'key';
    END IF;
    IF p_type IS NULL OR p_type = '' THEN
        RAISE EXCEPTION 'type must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'type';
    END IF;
    IF octet_length(p_type) > 255 THEN
        RAISE EXCEPTION 'type is longer than 255 bytes'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'type';
    END IF;
    IF octet_length(p_aggregatetype) > 255 THEN
        RAISE EXCEPTION 'aggregate type is longer than 255 bytes'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'aggregatetype';
    END IF;
    IF p_payload IS NULL THEN
        RAISE EXCEPTION 'payload must not be null (use the JSON text null instead)'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
    END IF;
    SELECT max_payload_bytes, shard_count, wake_relays
      INTO v_max, v_shards, v_wake FROM ferry.settings;
    IF octet_length(p_payload) > v_max THEN
        RAISE EXCEPTION 'payload is over the limit of % bytes (ferry.settings.max_payload_bytes)',
                        v_max
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
    END IF;
    -- The relay publishes jsonb's canonical text, which can be longer than
    -- what was written ("[1,2]" is "[1, 2]"; "1e5" is "100000"): the limit
    -- is checked on that, the size that will be published.
    v_payload := p_payload::jsonb;
    v_bytes := octet_length(v_payload::text);
    IF v_bytes > v_max THEN
        RAISE EXCEPTION 'payload is over the limit of % bytes (ferry.settings.max_payload_bytes) as it will be published: % bytes of canonical JSON',
                        v_max, v_bytes
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
    END IF;
    IF p_delay_ms IS NULL OR p_delay_ms < 0 OR p_delay_ms > 31536000000 THEN
        RAISE EXCEPTION 'delay must be between 0 and one year in milliseconds'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'delay_ms';
    END IF;
    IF p_headers IS NULL OR p_headers = '{}' THEN
        v_headers := '{}';
    ELSE
        IF octet_length(p_headers) > 65536 THEN
            RAISE EXCEPTION 'headers are longer than 65536 bytes'
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END IF;
        v_headers := p_headers::jsonb;
        IF jsonb_typeof(v_headers) <> 'object' THEN
            RAISE EXCEPTION 'headers must be a JSON object of strings, not %',
                            jsonb_typeof(v_headers)
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END IF;
        SELECT h.key INTO v_name FROM jsonb_each(v_headers) AS h
         WHERE jsonb_typeof(h.value) <> 'string' LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'header "%" is not a string', left(v_name, 64)
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END IF;
        SELECT h INTO v_name FROM jsonb_object_keys(v_headers) AS h
         WHERE h = '' OR h LIKE 'ferry\_%'
            OR h IN ('ce_specversion', 'ce_id', 'ce_type', 'ce_source', 'ce_time')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'header name "%" is empty or reserved for the relay', left(v_name, 64)
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END IF;
    END IF;

    -- The common case, a key seen before: one statement, one row update.
    WITH k AS (
        UPDATE ferry.outbox_key SET seq = seq + 1
         WHERE topic = p_topic AND key = p_key
        RETURNING seq, shard)
    INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type,
                              payload, headers, seq, shard, available_at, payload_bytes)
    SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
           v_payload, v_headers, k.seq, k.shard,
           now() + p_delay_ms * interval '1 millisecond', v_bytes
      FROM k
    RETURNING seq INTO v_seq;
    IF v_seq IS NULL THEN
        -- A new key. A concurrent first emit may win the insert; ON CONFLICT
        -- then waits for it to end and takes the next position after it.
        WITH k AS (
            INSERT INTO ferry.outbox_key AS k (topic, key, shard, seq)
            VALUES (p_topic, p_key,
                    ((hashtextextended(p_key, 0) & 2147483647) % v_shards)::integer, 1)
            ON CONFLICT (topic, key) DO UPDATE SET seq = k.seq + 1
            RETURNING k.seq, k.shard)
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type,
                                  payload, headers, seq, shard, available_at, payload_bytes)
        SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
               v_payload, v_headers, k.seq, k.shard,
               now() + p_delay_ms * interval '1 millisecond', v_bytes
          FROM k
        RETURNING seq INTO v_seq;
    END IF;
    -- Wake an idle relay. Sent at commit, one per transaction whatever the
    -- number of emits (same channel, same payload). See wake_relays.
    --
    -- No commit may wait for the relay's poll. A writer that finds the flag
    -- off holds a shared advisory lock to its commit and looks again; a
    -- relay that turns the flag on takes that lock exclusively (and lets it
    -- go) before its last look, so every writer that read the flag off has
    -- committed or rolled back by then, and every later one reads it on.
    -- The lock is taken only while the flag is off, that is while a busy
    -- relay looks again by itself; shared locks do not wait for each other.
    IF NOT v_wake THEN
        PERFORM pg_advisory_xact_lock_shared(1718903417, 1);   -- see ferry.wake_lock
        SELECT wake_relays INTO v_wake FROM ferry.settings;
    END IF;
    IF v_wake THEN
        PERFORM pg_notify('ferry_outbox', '');
    END IF;
    RETURN v_seq;
END
$fn$;
