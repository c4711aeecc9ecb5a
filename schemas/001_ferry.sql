-- ferry schema, migration 001: the foundation.
--
-- Applied by ferry_migrate() (and `ferry-relay migrate`) inside one
-- transaction, under an advisory lock, exactly once per database; the
-- runner records it in ferry.schema_version with a checksum of this text,
-- so never edit a migration that has shipped: add the next one.
--
-- Every object is created by the migrating role; the functions that the
-- least-privileged ferry_writer may call are SECURITY DEFINER with a fixed
-- search_path, so a writer can emit without any privilege on the tables.

CREATE SCHEMA IF NOT EXISTS ferry;
REVOKE ALL ON SCHEMA ferry FROM PUBLIC;

-- One row of database-wide settings. shard_count is read when a key is
-- first seen and stored with it, so changing it later re-shards new keys
-- only and never moves a key that already has rows in flight.
CREATE TABLE ferry.settings (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_count        integer NOT NULL DEFAULT 16
                       CHECK (shard_count BETWEEN 1 AND 4096),
    max_payload_bytes  integer NOT NULL DEFAULT 1048576
                       CHECK (max_payload_bytes BETWEEN 1 AND 268435456),
    -- Set by a relay about to go idle, cleared by one that is busy: emit
    -- sends a NOTIFY only while it is set. PostgreSQL serializes the
    -- commits of all notifying transactions of a database on one lock,
    -- held through the commit's WAL flush, so notifying on every emit
    -- would make concurrent writers commit one at a time; a busy relay
    -- needs no wake-up anyway.
    wake_relays        boolean NOT NULL DEFAULT true
);
INSERT INTO ferry.settings DEFAULT VALUES;

-- Keys keep the shard they were given, so lowering shard_count would leave
-- keys on shards no relay serves. It may only grow (relays pick the new
-- shards up at their next lease renewal).
CREATE FUNCTION ferry.settings_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.shard_count < OLD.shard_count THEN
        RAISE EXCEPTION 'shard_count may only grow (from %, not to %): keys keep their shard',
                        OLD.shard_count, NEW.shard_count
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'shard_count';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER settings_guard BEFORE UPDATE OF shard_count ON ferry.settings
    FOR EACH ROW EXECUTE FUNCTION ferry.settings_guard();

-- Per-(topic, key) position. This row is the ordering mechanism: emit
-- increments seq with an UPDATE, which holds the row lock until the
-- emitting transaction ends. A second transaction emitting on the same key
-- waits for the first to commit (or roll back) and then reads the committed
-- seq, so positions of a key are handed out in commit order and without
-- gaps: a rolled-back emit rolls its increment back too. Rows are kept
-- forever (one per key ever used); deleting one would restart its
-- positions and break consumers' ordering checks.
CREATE TABLE ferry.outbox_key (
    topic  text    NOT NULL,
    key    text    NOT NULL,
    shard  integer NOT NULL,
    seq    bigint  NOT NULL,
    PRIMARY KEY (topic, key)
) WITH (fillfactor = 50);      -- room on the page keeps the increments HOT

-- The outbox. Column names follow the Debezium outbox convention (id,
-- aggregatetype, aggregateid, type, payload) so that a service can move
-- between ferry's relay and Debezium's outbox event router. aggregateid is
-- the Kafka message key.
CREATE TABLE ferry.outbox (
    id             uuid        PRIMARY KEY,          -- message id, UUIDv7
    topic          text        NOT NULL,
    aggregatetype  text        NOT NULL DEFAULT '',
    aggregateid    text        NOT NULL,             -- the key
    type           text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    seq            bigint      NOT NULL,             -- position within (topic, key)
    shard          integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    available_at   timestamptz NOT NULL DEFAULT now(),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    published_at   timestamptz                       -- set instead of DELETE under retention
);
-- One row per position, and the relay's fetch path: unpublished rows of a
-- shard in per-key order. Partial, so that rows marked published (retention
-- mode) drop out of the relay's way; positions only grow, so a marked row
-- can never clash with a new one.
CREATE UNIQUE INDEX outbox_position ON ferry.outbox (shard, topic, aggregateid, seq)
    WHERE published_at IS NULL;

-- Messages that failed permanently, on the relay side (consumer = '') or
-- in a consumer; kept with the reason until replayed or discarded.
CREATE TABLE ferry.dead_letter (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     uuid        NOT NULL,
    consumer       text        NOT NULL DEFAULT '',
    topic          text        NOT NULL,
    aggregatetype  text        NOT NULL DEFAULT '',
    aggregateid    text        NOT NULL,
    type           text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    seq            bigint      NOT NULL,
    shard          integer     NOT NULL,
    created_at     timestamptz NOT NULL,
    failed_at      timestamptz NOT NULL DEFAULT now(),
    attempts       integer     NOT NULL DEFAULT 0,
    reason         text        NOT NULL,
    UNIQUE (message_id, consumer)
);
-- The relay's fetch skips keys parked behind a dead letter.
CREATE INDEX dead_letter_parked ON ferry.dead_letter (topic, aggregateid)
    WHERE consumer = '';

-- The dedupe record of every message a consumer applied, written in the
-- consumer's own transaction.
CREATE TABLE ferry.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    seq         bigint      NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_applied_at ON ferry.inbox (applied_at);

-- Leases, always judged by the database clock. epoch rises on every change
-- of holder and is the fencing token checked by every acknowledgement.
CREATE TABLE ferry.lease (
    name         text        PRIMARY KEY,
    holder       text,
    epoch        bigint      NOT NULL DEFAULT 0,
    expires_at   timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at  timestamptz,
    renewed_at   timestamptz
);

-- Saga instances and the audit trail of their steps.
CREATE TABLE ferry.saga (
    id               uuid        PRIMARY KEY,
    definition       text        NOT NULL,
    definition_hash  text        NOT NULL,
    state            text        NOT NULL
                     CHECK (state IN ('running', 'compensating', 'completed',
                                      'compensated', 'failed')),
    current_step     integer     NOT NULL DEFAULT 0,
    context          jsonb       NOT NULL DEFAULT '{}',
    deadline         timestamptz,
    version          bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_open_deadline ON ferry.saga (deadline)
    WHERE state IN ('running', 'compensating');

CREATE TABLE ferry.saga_step (
    saga_id     uuid        NOT NULL REFERENCES ferry.saga (id) ON DELETE CASCADE,
    n           integer     NOT NULL,                -- audit order within the saga
    step        text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('action', 'compensation')),
    status      text        NOT NULL
                CHECK (status IN ('sent', 'succeeded', 'failed', 'timed_out')),
    attempt     integer     NOT NULL DEFAULT 1,
    message_id  uuid,
    at          timestamptz NOT NULL DEFAULT now(),
    detail      jsonb,
    PRIMARY KEY (saga_id, n)
);

-- ---------------------------------------------------------------------
-- Emit. The checks here are the same as lib/validate.c's, with the same
-- limits (FERRY_*_MAX in lib/ferry.h) and the same measure of size: the
-- bytes of the JSON text as sent. tests/test_emit.c runs every bad input
-- through both paths to keep them in step. Errors are 22023
-- (invalid_parameter_value) with the offending field in the error's COLUMN.

-- A UUIDv7 made by the database clock, for the SQL path. The C path makes
-- its own on the client (lib/uuid.c); both sort by creation time.
CREATE FUNCTION ferry.uuid_v7() RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    b bytea := uuid_send(gen_random_uuid());
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
BEGIN
    b := overlay(b PLACING substring(int8send(ms) FROM 3) FROM 1 FOR 6);
    b := set_byte(b, 6, (get_byte(b, 6) & 15) | 112);   -- version 7
    RETURN encode(b, 'hex')::uuid;                       -- variant bits kept from v4
END
$fn$;

-- The one writer of ferry.outbox; returns the message's position within
-- its (topic, key). The C API calls it directly (a prepared statement per
-- connection), so it is written for speed: the checks are inline and
-- cheap when headers are empty, and the position and the row go in one
-- statement.
--
-- Ordering: the upsert on ferry.outbox_key takes the key's row lock and
-- holds it to the end of the caller's transaction. See ferry.outbox_key.
CREATE FUNCTION ferry.emit_with_id(p_id uuid, p_topic text, p_key text,
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
                              payload, headers, seq, shard, available_at)
    SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
           p_payload::jsonb, v_headers, k.seq, k.shard,
           now() + p_delay_ms * interval '1 millisecond'
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
                                  payload, headers, seq, shard, available_at)
        SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
               p_payload::jsonb, v_headers, k.seq, k.shard,
               now() + p_delay_ms * interval '1 millisecond'
          FROM k
        RETURNING seq INTO v_seq;
    END IF;
    -- Wake an idle relay. Sent at commit, one per transaction whatever the
    -- number of emits (same channel, same payload). See wake_relays.
    IF v_wake THEN
        PERFORM pg_notify('ferry_outbox', '');
    END IF;
    RETURN v_seq;
END
$fn$;

-- The universal emit, for services in any language:
--   BEGIN; UPDATE ...; SELECT ferry.emit('orders', 'order-42', 'OrderPlaced', '{...}'); COMMIT;
-- With jsonb arguments, sizes are those of their canonical JSON text.
CREATE FUNCTION ferry.emit(p_topic text, p_key text, p_type text,
                           p_payload jsonb, p_headers jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id uuid := ferry.uuid_v7();
BEGIN
    PERFORM ferry.emit_with_id(v_id, p_topic, p_key, p_type, p_payload::text,
                               coalesce(p_headers, '{}')::text);
    RETURN v_id;
END
$fn$;

-- The same with payload and headers as text. An untyped literal or
-- parameter resolves to this overload, so that text that is not JSON is
-- refused with an error naming the field rather than a bare cast error.
CREATE FUNCTION ferry.emit(p_topic text, p_key text, p_type text,
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
        EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
            RAISE EXCEPTION 'payload is not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
        END;
    END IF;
    IF p_headers IS NOT NULL THEN
        BEGIN
            v_json := p_headers::jsonb;
        EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
            RAISE EXCEPTION 'headers are not valid JSON: %', SQLERRM
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END;
    END IF;
    PERFORM ferry.emit_with_id(v_id, p_topic, p_key, p_type, p_payload, p_headers);
    RETURN v_id;
END
$fn$;

-- ---------------------------------------------------------------------
-- Dead letters of the relay park their key: later messages of the key wait
-- (order before availability). Replaying puts the message back where it
-- was, with its id and position, so it is published next; discarding drops
-- it and lets the key's later messages go. Both return false when there
-- is no such relay dead letter.

CREATE FUNCTION ferry.replay_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    WITH d AS (
        DELETE FROM ferry.dead_letter WHERE id = p_id AND consumer = '' RETURNING *)
    INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type, payload,
                              headers, seq, shard, created_at, available_at,
                              attempts, last_error)
    SELECT message_id, topic, aggregatetype, aggregateid, type, payload, headers,
           seq, shard, created_at, now(), 0, 'replayed: ' || reason
      FROM d;
    IF FOUND THEN
        PERFORM pg_notify('ferry_outbox', '');
    END IF;
    RETURN FOUND;
END
$fn$;

CREATE FUNCTION ferry.discard_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM ferry.dead_letter WHERE id = p_id AND consumer = '';
    IF FOUND THEN
        PERFORM pg_notify('ferry_outbox', '');
    END IF;
    RETURN FOUND;
END
$fn$;

-- ---------------------------------------------------------------------
-- Least-privilege roles. NOLOGIN: grant them to the service's own login
-- role (GRANT ferry_writer TO orders_service). Roles are cluster-wide, so
-- a second database's migration finds them already there.

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['ferry_writer', 'ferry_relay', 'ferry_reconciler'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;   -- made by another database's migration
        END;
    END LOOP;
END
$roles$;

REVOKE ALL ON ALL TABLES IN SCHEMA ferry FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ferry FROM PUBLIC;
GRANT USAGE ON SCHEMA ferry TO ferry_writer, ferry_relay, ferry_reconciler;

-- The writer emits and does nothing else: no table privilege at all.
GRANT EXECUTE ON FUNCTION
    ferry.emit(text, text, text, jsonb, jsonb),
    ferry.emit(text, text, text, text, text),
    ferry.emit_with_id(uuid, text, text, text, text, text, text, bigint),
    ferry.uuid_v7()
TO ferry_writer;

-- The relay reads and acknowledges the outbox, moves failures to the dead
-- letters, and takes leases.
GRANT SELECT ON ferry.settings, ferry.outbox_key TO ferry_relay;
GRANT UPDATE (wake_relays) ON ferry.settings TO ferry_relay;
GRANT SELECT, UPDATE (attempts, last_error, published_at), DELETE
    ON ferry.outbox TO ferry_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON ferry.dead_letter TO ferry_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON ferry.lease TO ferry_relay;
GRANT EXECUTE ON FUNCTION ferry.replay_dead_letter(bigint),
    ferry.discard_dead_letter(bigint) TO ferry_relay, ferry_reconciler;

-- The reconciler reads everything, repairs leases, sagas and dead letters,
-- and collects inbox garbage.
GRANT SELECT ON ALL TABLES IN SCHEMA ferry TO ferry_reconciler;
GRANT UPDATE (available_at, attempts, last_error) ON ferry.outbox TO ferry_reconciler;
GRANT INSERT, UPDATE, DELETE ON ferry.dead_letter, ferry.lease,
    ferry.saga, ferry.saga_step TO ferry_reconciler;
GRANT DELETE ON ferry.inbox TO ferry_reconciler;
GRANT EXECUTE ON FUNCTION
    ferry.emit(text, text, text, jsonb, jsonb),
    ferry.emit_with_id(uuid, text, text, text, text, text, text, bigint),
    ferry.uuid_v7()
TO ferry_reconciler;
