-- ferry schema, version 34: a message whose id another one has keeps its
-- own place; a consumer name is its owner's under one collation only; the
-- reconciler cannot read the WAL token; a dead letter's message decoded
-- again is not parked beside it. (Two outside audits.)
--
-- What changes, and why:
--
--   * ferry.inbox_dead_letter stored a poison message whose id a dead
--     letter of the same consumer already had (another key's: ids are the
--     producer's to keep unique, and a hostile one reuses them) as an
--     update of that letter: its payload was stored nowhere, the letter
--     took its reason, and its key was parked behind the other key's
--     letter, so that replaying or discarding it released the other key
--     and this one waited for ever. It is now a letter of its own under
--     an id derived from it (ferry.inbox_other_id_: consumer, topic, key,
--     position and id), and parks its own key only.
--   * ferry.inbox_dead_letter let go of every held message of the id, so
--     a poison message deleted another key's held message of the same id
--     (its offset had moved on: lost, and that key stopped at its
--     position). It now lets go only of the message's own held copy.
--   * ferry.inbox_hold kept the first row of an id, so a message held
--     while another key held one of the same id was answered 'held' and
--     dropped, and its key waited for ever. ferry.replay_dead_letter did
--     the same with a consumer's dead letter (its letter gone). Both now
--     hold such a message under the derived id; it is applied in its turn.
--     A position held already keeps its first copy, as before.
--   * ferry.inbox_skip_gap skipped every position before the key's first
--     held message, a dead-lettered one too: the letter, replayed, was
--     then 'late' and never applied, and the key's next message went
--     first. It now skips the missing positions only, up to the first
--     held or dead-lettered one.
--   * ferry.consumer_guard_ compared the consumer name under the caller's
--     collation, as did the inbox functions: under a non-deterministic
--     collation the caller makes (any role may, in pg_temp), 'SHOP'
--     equalled the caller's 'shop', and a consumer role read and wrote
--     another consumer's inbox. A call under any collation but the
--     default is now refused (22023, column consumer) before anything is
--     read; the consume_* functions pass their names under the default.
--   * ferry.inbox_hold and ferry.inbox_dead_letter, granted to consumers,
--     now refuse a position out of 1 .. 2^63 - 2 as consume_* do.
--   * ferry_reconciler could read ferry.settings.wal_token (SELECT on
--     every table, schema 1), and with it write 'ferry' logical messages
--     the WAL relay publishes: any id, position and headers. It now reads
--     every column of ferry.settings but that one.
--   * ferry.wal_park put a message in the outbox that was a relay dead
--     letter already (the stream decoded it again after a restart before
--     the slot was confirmed past it): the letter could then be neither
--     replayed nor discarded (both insert its id into the outbox), and its
--     key stopped for good. wal_park now leaves such a message alone (it
--     is in the dead letters); replay_dead_letter and discard_dead_letter
--     take over a copy of the message already waiting in the outbox
--     instead of failing on it.
--
-- Each function is its last version's (inbox_dead_letter, inbox_hold,
-- inbox_skip_gap: schema 10; consumer_guard_: 8; replay_dead_letter,
-- discard_dead_letter: 6; wal_park: 11) but for what is said above
-- (CREATE OR REPLACE keeps owners and grants).

CREATE FUNCTION ferry.inbox_other_id_(p_consumer text, p_id uuid, p_topic text, p_key text,
                                      p_seq bigint)
RETURNS uuid
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT md5(jsonb_build_array('ferry other id', p_consumer, p_topic, p_key, p_seq,
                                 p_id::text)::text)::uuid;
$fn$;
REVOKE ALL ON FUNCTION ferry.inbox_other_id_(text, uuid, text, text, bigint) FROM PUBLIC;

-- Hold a message: under its id, else (another message of another key or
-- position holds that id) under the derived one, else a fresh one. A
-- position held already keeps its first copy.
CREATE FUNCTION ferry.inbox_hold_row_(p_consumer text, p_id uuid, p_topic text, p_key text,
                                      p_seq bigint, p_type text, p_aggregatetype text,
                                      p_payload text, p_headers jsonb, p_partition integer,
                                      p_offset bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id uuid := p_id;
BEGIN
    FOR i IN 1..3 LOOP
        INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                      aggregatetype, payload, headers, kafka_partition,
                                      kafka_offset, reason)
        VALUES (p_consumer, p_topic, p_key, p_seq, v_id, coalesce(p_type, ''),
                coalesce(p_aggregatetype, ''), p_payload, coalesce(p_headers, '{}'),
                coalesce(p_partition, -1), coalesce(p_offset, -1), p_reason)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM ferry.inbox_held h
                    WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
                      AND (h.seq = p_seq
                           OR (h.message_id = v_id AND h.seq IS NOT DISTINCT FROM p_seq))) THEN
            RETURN;             -- this message, or its position, is held already
        END IF;
        v_id := CASE WHEN i = 1
                     THEN ferry.inbox_other_id_(p_consumer, p_id, p_topic, p_key, p_seq)
                     ELSE gen_random_uuid() END;
    END LOOP;
    RAISE EXCEPTION 'could not hold message % of %/%: its ids are taken', p_id, p_topic, p_key
        USING ERRCODE = 'unique_violation';
END
$fn$;
REVOKE ALL ON FUNCTION ferry.inbox_hold_row_(text, uuid, text, text, bigint, text, text, text,
                                             jsonb, integer, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ferry.consumer_guard_(p_consumer text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- The invoking role: SET ROLE's, else the session's. current_user is
    -- the definer here.
    v_caller name := CASE WHEN current_setting('role') = 'none' THEN session_user
                          ELSE current_setting('role') END;
    v_owner name;
BEGIN
    -- The collation the calling function runs under (its arguments'): any
    -- other than the default may make other names equal this one, in the
    -- look-up below and in the caller's own statements (schema 34).
    IF pg_collation_for(p_consumer) IS DISTINCT FROM '"default"' THEN
        RAISE EXCEPTION 'the consumer name and the other arguments must be given under the '
                        'default collation, not %', pg_collation_for(p_consumer)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer';
    END IF;
    IF p_consumer IS NULL OR p_consumer = '' THEN
        RAISE EXCEPTION 'the consumer name must not be empty: the empty name is the relay''s'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer';
    END IF;
    -- The owner of the ferry schema (and so every superuser) acts for all.
    IF pg_has_role(v_caller, (SELECT nspowner FROM pg_namespace WHERE nspname = 'ferry'),
                   'MEMBER') THEN
        RETURN;
    END IF;
    SELECT o.role INTO v_owner
      FROM ferry.consumer_owner o JOIN pg_roles r ON r.rolname = o.role
     WHERE o.consumer = p_consumer;
    IF v_owner IS NULL THEN
        RAISE EXCEPTION 'permission denied for consumer "%": no role owns that name', p_consumer
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The operator registers it: INSERT INTO ferry.consumer_owner '
                         '(consumer, role) VALUES (''<name>'', ''<its role>'').';
    END IF;
    IF NOT pg_has_role(v_caller, v_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied for consumer "%": role "%" is not a member of its '
                        'owner "%"', p_consumer, v_caller, v_owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_dead_letter(p_consumer text, p_id uuid, p_topic text,
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
    v_text text;
    v_id bigint;
    v_mid uuid := p_id;
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    IF p_seq IS NOT NULL AND (p_seq < 1 OR p_seq > 9223372036854775806) THEN
        RAISE EXCEPTION 'position % is out of range (1 .. 9223372036854775806)', p_seq
            USING ERRCODE = 'numeric_value_out_of_range', COLUMN = 'seq';
    END IF;
    BEGIN
        v_payload := p_payload::jsonb;
    EXCEPTION WHEN data_exception THEN
        v_payload := to_jsonb(p_payload);
        v_text := p_payload;
    END;
    -- The letter of this message (again: the count and the reason move
    -- on); one of another message under its id is left as it is, and this
    -- one gets a letter of its own under the derived id.
    FOR i IN 1..3 LOOP
        INSERT INTO ferry.dead_letter AS d (message_id, consumer, topic, aggregatetype,
                                            aggregateid, type, payload, payload_text,
                                            headers, seq, shard, created_at, attempts, reason)
        VALUES (v_mid, p_consumer, p_topic, coalesce(p_aggregatetype, ''), p_key,
                coalesce(p_type, ''), v_payload, v_text, coalesce(p_headers, '{}'),
                coalesce(p_seq, 0), -1, now(), p_attempts, p_reason)
        ON CONFLICT (message_id, consumer) DO UPDATE
            SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason, failed_at = now()
          WHERE d.topic = EXCLUDED.topic AND d.aggregateid = EXCLUDED.aggregateid
            AND d.seq = EXCLUDED.seq
        RETURNING id INTO v_id;
        EXIT WHEN FOUND;
        v_mid := CASE WHEN i = 1
                      THEN ferry.inbox_other_id_(p_consumer, p_id, p_topic, p_key, p_seq)
                      ELSE gen_random_uuid() END;
    END LOOP;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'could not dead-letter message % of %/%: its ids are taken', p_id,
                        p_topic, p_key
            USING ERRCODE = 'unique_violation';
    END IF;
    IF p_seq IS NOT NULL THEN
        INSERT INTO ferry.inbox_key AS k (consumer, topic, key, seq, parked_by, parked_seq)
        VALUES (p_consumer, p_topic, p_key, 0, v_id, p_seq)
        ON CONFLICT (consumer, topic, key) DO UPDATE
            SET parked_by = v_id, parked_seq = p_seq
          WHERE k.seq < p_seq AND (k.parked_seq IS NULL OR p_seq <= k.parked_seq);
    END IF;
    -- Its own held copy only: another key's message of the same id stays.
    DELETE FROM ferry.inbox_held h
     WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
       AND h.message_id IN (p_id, v_mid)
       AND (p_seq IS NULL OR h.seq IS NULL OR h.seq = p_seq);
    PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
    RETURN v_id;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_hold(p_consumer text, p_id uuid, p_topic text, p_key text,
                                 p_seq bigint, p_type text, p_aggregatetype text,
                                 p_payload text, p_headers jsonb, p_partition integer,
                                 p_offset bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    IF p_seq IS NOT NULL AND (p_seq < 1 OR p_seq > 9223372036854775806) THEN
        RAISE EXCEPTION 'position % is out of range (1 .. 9223372036854775806)', p_seq
            USING ERRCODE = 'numeric_value_out_of_range', COLUMN = 'seq';
    END IF;
    PERFORM ferry.inbox_hold_row_(p_consumer, p_id, p_topic, p_key, p_seq, p_type,
                                  p_aggregatetype, p_payload, p_headers, p_partition,
                                  p_offset, p_reason);
    IF p_seq IS NOT NULL THEN
        PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_skip_gap(p_consumer text, p_topic text, p_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_last bigint;
    v_parked bigint;
BEGIN
    SELECT seq, parked_seq INTO v_last, v_parked FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key FOR UPDATE;
    SELECT min(seq) INTO v_first FROM ferry.inbox_held
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    -- A dead-lettered position is not missing: the gap ends before it.
    v_first := least(v_first, v_parked);
    IF v_last IS NULL OR v_first IS NULL OR v_first <= v_last + 1 THEN
        RETURN 0;
    END IF;
    UPDATE ferry.inbox_key SET seq = v_first - 1
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key;
    PERFORM ferry.inbox_settle_(p_consumer, p_topic, p_key);
    RETURN v_first - 1 - v_last;
END
$fn$;

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
        -- A copy of the message waiting in the outbox already (the WAL
        -- relay parked it there before schema 34) goes as it is.
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                                  headers, seq, shard, created_at, available_at,
                                  attempts, last_error)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, d.payload,
                d.headers, d.seq, d.shard, d.created_at, now(), 0,
                'replayed: ' || d.reason)
        ON CONFLICT DO NOTHING;
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    PERFORM ferry.inbox_hold_row_(d.consumer, d.message_id, d.topic, d.aggregateid,
                                  nullif(d.seq, 0), d.type, d.aggregatetype,
                                  coalesce(d.payload_text, d.payload::text), d.headers,
                                  -1, -1, 'replay');
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.discard_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    d ferry.dead_letter;
    v_last bigint;
    v_marker uuid;
BEGIN
    DELETE FROM ferry.dead_letter WHERE id = p_id RETURNING * INTO d;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF d.consumer = '' THEN
        -- A copy of the message waiting in the outbox already (the WAL
        -- relay parked it there before schema 34) becomes the marker.
        INSERT INTO ferry.outbox AS o (id, topic, aggregatetype, aggregateid, type, payload,
                                       headers, seq, shard, created_at, available_at)
        VALUES (d.message_id, d.topic, d.aggregatetype, d.aggregateid, d.type, 'null',
                jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                d.seq, d.shard, d.created_at, now())
        ON CONFLICT (id) DO UPDATE
            SET payload = EXCLUDED.payload, headers = EXCLUDED.headers,
                available_at = EXCLUDED.available_at
          WHERE o.published_at IS NULL AND o.topic = EXCLUDED.topic
            AND o.aggregateid = EXCLUDED.aggregateid AND o.seq = EXCLUDED.seq;
        PERFORM pg_notify('ferry_outbox', '');
        RETURN true;
    END IF;
    INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
    VALUES (d.consumer, d.message_id, d.topic, d.aggregateid, d.seq)
    ON CONFLICT DO NOTHING;
    IF d.seq > 0 THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq)
        VALUES (d.consumer, d.topic, d.aggregateid, 0)
        ON CONFLICT DO NOTHING;
        SELECT seq INTO v_last FROM ferry.inbox_key
         WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
           FOR UPDATE;
        IF d.seq = v_last + 1 THEN
            UPDATE ferry.inbox_key SET seq = d.seq
             WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid;
        ELSIF d.seq > v_last + 1 THEN
            -- Its own marker id, so that a redelivery of the message is
            -- still recognised as the discarded message.
            v_marker := md5('ferry discarded ' || d.consumer || ' ' || d.message_id)::uuid;
            DELETE FROM ferry.inbox_held
             WHERE consumer = d.consumer AND topic = d.topic AND key = d.aggregateid
               AND seq = d.seq;
            INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                          aggregatetype, payload, headers, reason)
            VALUES (d.consumer, d.topic, d.aggregateid, d.seq, v_marker, d.type,
                    d.aggregatetype, 'null',
                    jsonb_build_object('ferry_discarded', left(d.reason, 1024)),
                    'discarded')
            ON CONFLICT DO NOTHING;
        END IF;
        -- d.seq <= v_last: the position was passed already (a skipped gap).
    END IF;
    PERFORM ferry.inbox_repark_(d.consumer, d.topic, d.aggregateid, p_id);
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.wal_park(p_id uuid, p_topic text, p_key text,
                                          p_aggregatetype text, p_type text, p_payload jsonb,
                                          p_headers jsonb, p_seq bigint,
                                          p_created_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- The message is a relay dead letter already: decoded again after a
    -- restart. It stays there, where replay and discard find it.
    IF EXISTS (SELECT 1 FROM ferry.dead_letter d
                WHERE d.message_id = p_id AND d.consumer = '') THEN
        RETURN true;
    END IF;
    INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload, headers,
                              seq, shard, created_at, available_at, payload_bytes)
    SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type, p_payload,
           coalesce(p_headers, '{}'), p_seq, k.shard, p_created_at, now(),
           octet_length(p_payload::text)
      FROM ferry.outbox_key k
     WHERE k.topic = p_topic AND k.key = p_key
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$fn$;

-- The reconciler reads every column of the settings but the WAL token.
REVOKE SELECT ON ferry.settings FROM ferry_reconciler;
DO $do$
DECLARE
    v_cols text;
BEGIN
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO v_cols
      FROM pg_attribute
     WHERE attrelid = 'ferry.settings'::regclass AND attnum > 0 AND NOT attisdropped
       AND attname <> 'wal_token';
    EXECUTE format('GRANT SELECT (%s) ON ferry.settings TO ferry_reconciler', v_cols);
END
$do$;
