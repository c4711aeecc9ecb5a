-- ferry schema, version 41: locks no other role can hold, lease rows the
-- reconciler can only expire, reserved header names in every spelling.
--
-- What changes, and why (an outside audit, each reproduced):
--
--   * Any role that may connect could stop every emit of the database:
--     emit took the mode lock (schema 32) as an advisory lock, shared,
--     waiting; `SELECT pg_advisory_lock(1718903419, 0)` by a role with no
--     ferry grant at all held them all, for as long as it liked. The mode
--     lock is now a lock on ferry.mode_gate, an empty table only the
--     owner may lock: emit takes it ACCESS SHARE, the turn from wal to
--     table (ferry.settings_wal_turn) ACCESS EXCLUSIVE, as before. And a
--     writer that found its shard busy waited for the wake-up lock
--     (ferry.wake_lock(), advisory: the relay's handshake takes it
--     exclusively for an instant); one held by another role stopped those
--     writers too. It is now tried: a writer that does not get it
--     notifies, which is never wrong (the relay's own try is unchanged).
--   * The reconciler may only expire a relay's lease (schema 39), but the
--     two policies that let it write ferry.lease are ORed: it could set a
--     relay lease's epoch to the largest bigint (every relay then failed
--     every acquisition with "bigint out of range" and published nothing;
--     repair could not help) or rename it (a delete). A trigger now keeps
--     every column of a relay's lease but expires_at as it was, and
--     expires_at no later than now, for a role that is not the relay's,
--     not the owner and not a superuser.
--   * A header name the relay reserves was refused in any case by lower(),
--     which maps no letter outside ASCII there but İ: "ce_ıd" (dotless i)
--     and "ce_ſource" (long s) passed, and Java's equalsIgnoreCase,
--     Python's upper() and JavaScript's toUpperCase take them for ce_id
--     and ce_source. ferry.header_name_fold folds ASCII letters and those
--     that case mappings take to ASCII (İ ı K ſ and the ligatures ﬀ ﬁ ﬂ
--     ﬃ ﬄ ﬅ ﬆ), without regard to the database's locale (under a Turkish
--     one lower('I') is 'ı'); lib/validate.c folds alike, so the client
--     refuses first and the caller's transaction stays usable.
--
-- ferry.emit_with_id is schema 36's but for those two locks and the fold.

CREATE TABLE ferry.mode_gate ();
COMMENT ON TABLE ferry.mode_gate IS
    'no rows: its lock is the emit mode lock (emit ACCESS SHARE, the turn from wal ACCESS EXCLUSIVE)';
REVOKE ALL ON ferry.mode_gate FROM PUBLIC;

-- The fold of a header name against which the reserved names are checked.
CREATE FUNCTION ferry.header_name_fold(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
           pg_catalog.translate(p_name,
                                'ABCDEFGHIJKLMNOPQRSTUVWXYZ' OPERATOR(pg_catalog.||) U&'\0130\0131\212A\017F',
                                'abcdefghijklmnopqrstuvwxyziiks'),
           U&'\FB00', 'ff'), U&'\FB01', 'fi'), U&'\FB02', 'fl'), U&'\FB03', 'ffi'),
           U&'\FB04', 'ffl'), U&'\FB05', 'st'), U&'\FB06', 'st')
$$;
REVOKE ALL ON FUNCTION ferry.header_name_fold(text) FROM PUBLIC;

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
    v_payload jsonb;
    v_bytes integer;
    v_mode text;
    v_token text;
    v_shard integer;
    v_aggtype text;
    v_htext text;
    v_dup boolean;
    v_waits boolean;
    v_ptext text;
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
    -- The mode lock, shared, to the end of the transaction, before the
    -- mode is read (schema 32): a turn from wal to table takes it
    -- exclusively, so it waits for every transaction that read 'wal'
    -- here to end, and one that comes during the turn reads 'table'
    -- after it. Under READ COMMITTED the read below is of the mode as it
    -- is once the lock is held. A table's lock, which only its owner may
    -- take (schema 41): it was an advisory lock, which any role that can
    -- connect could hold exclusively and so stop every emit.
    LOCK TABLE ferry.mode_gate IN ACCESS SHARE MODE;
    SELECT max_payload_bytes, shard_count, emit_mode, wal_token
      INTO v_max, v_shards, v_mode, v_token FROM ferry.settings;
    -- Under REPEATABLE READ or SERIALIZABLE the mode read is the one of
    -- the transaction's snapshot, which may be from before a turn that
    -- has ended since: the row is locked FOR SHARE, which fails with
    -- serialization_failure when it was changed after the snapshot, and
    -- the transaction is to be retried. (KEY SHARE would not: a change of
    -- columns no key holds does not conflict with it.)
    IF v_mode = 'wal' AND current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM 1 FROM ferry.settings FOR SHARE;
    END IF;
    IF octet_length(p_payload) > v_max THEN
        RAISE EXCEPTION 'payload is over the limit of % bytes (ferry.settings.max_payload_bytes)',
                        v_max
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payload';
    END IF;
    -- The relay publishes jsonb's canonical text, which can be longer than
    -- what was written ("[1,2]" is "[1, 2]"; "1e5" is "100000"): the limit
    -- is checked on that, the size that will be published.
    v_payload := p_payload::jsonb;
    v_ptext := v_payload::text;          -- once: wal mode writes this text
    v_bytes := octet_length(v_ptext);
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
        -- In any case: a consumer that reads header names without regard
        -- to case (as HTTP's are read) would take FERRY_ID for ferry_id.
        -- Folded without regard to the database's locale (schema 41): ASCII
        -- letters, and the letters some language's case mapping takes to
        -- them (Java's equalsIgnoreCase takes "ı" for "I", Python's upper()
        -- "ﬁ" for "FI"), so that no spelling passes for a reserved name.
        SELECT h INTO v_name FROM jsonb_object_keys(v_headers) AS h,
               LATERAL (SELECT ferry.header_name_fold(h) AS f) AS x
         WHERE h = '' OR x.f LIKE 'ferry\_%'
            OR x.f IN ('ce_specversion', 'ce_id', 'ce_type', 'ce_source', 'ce_time')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'header name "%" is empty or reserved for the relay', left(v_name, 64)
                USING ERRCODE = 'invalid_parameter_value', COLUMN = 'headers';
        END IF;
    END IF;


    -- WAL mode: the message is a transactional logical message, decoded by
    -- the WAL source (daemon/relay_wal.c) in commit order and never written
    -- to a table. The per-key position is handed out exactly as in table
    -- mode (the key row's lock orders the writers of a key by commit), so
    -- consumers see no difference. What must wait goes to the table, which
    -- the table path publishes: a delayed message; and any message of a key
    -- that has a row waiting in the outbox (delayed, failing, put back by a
    -- replay) or is parked behind a relay dead letter, so that it cannot
    -- overtake them. Those checks run after the position is taken, that is
    -- after any earlier writer of the key has ended, so they see its row.
    IF v_mode = 'wal' AND p_delay_ms = 0 THEN
        UPDATE ferry.outbox_key SET seq = seq + 1
         WHERE topic = p_topic AND key = p_key
        RETURNING seq, shard INTO v_seq, v_shard;
        IF v_seq IS NULL THEN
            INSERT INTO ferry.outbox_key AS k (topic, key, shard, seq)
            VALUES (p_topic, p_key,
                    ((hashtextextended(p_key, 0) & 2147483647) % v_shards)::integer, 1)
            ON CONFLICT (topic, key) DO UPDATE SET seq = k.seq + 1
            RETURNING k.seq, k.shard INTO v_seq, v_shard;
        END IF;
        -- One look at the table for two things. An id that a message
        -- waiting there has is refused as table mode's primary key refuses
        -- it, with its error, also when this message would go to WAL
        -- under another key. (One that went to WAL left no row to find:
        -- ids are the caller's to keep unique, README "What is refused".)
        -- And whether the key has something waiting or parked.
        SELECT EXISTS (SELECT 1 FROM ferry.outbox o WHERE o.id = p_id),
               EXISTS (SELECT 1 FROM ferry.outbox o
                        WHERE o.shard = v_shard AND o.topic = p_topic
                          AND o.aggregateid = p_key AND o.published_at IS NULL)
               OR EXISTS (SELECT 1 FROM ferry.dead_letter d
                           WHERE d.consumer = '' AND d.topic = p_topic
                             AND d.aggregateid = p_key)
          INTO v_dup, v_waits;
        IF v_dup THEN
            RAISE EXCEPTION 'duplicate key value violates unique constraint "outbox_pkey"'
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'outbox_pkey',
                      TABLE = 'outbox', SCHEMA = 'ferry', COLUMN = 'id',
                      DETAIL = format('Key (id)=(%s) already exists.', p_id);
        END IF;
        IF NOT v_waits THEN
            -- The content (daemon/relay_wal_msg.c reads it): a header line
            -- of space-separated fields, then topic, key, aggregate type,
            -- type and headers back to back (their lengths in octets are
            -- in the header), then the payload to the end. wal_token
            -- proves the message is emit's: pg_logical_emit_message is
            -- open to every role, and the relay refuses a 'ferry' message
            -- without the token, which only the relay and the owner read.
            v_aggtype := coalesce(p_aggregatetype, '');
            v_htext := v_headers::text;
            PERFORM pg_logical_emit_message(true, 'ferry',
                '1 ' || v_token || ' ' || p_id::text || ' ' || v_seq::text || ' '
                || (extract(epoch FROM now()) * 1000000)::bigint::text || ' '
                || octet_length(p_topic)::text || ' ' || octet_length(p_key)::text || ' '
                || octet_length(v_aggtype)::text || ' ' || octet_length(p_type)::text || ' '
                || octet_length(v_htext)::text || E'\n'
                || p_topic || p_key || v_aggtype || p_type || v_htext || v_ptext);
            RETURN v_seq;      -- no wake-up: no table relay has a row to fetch
        END IF;
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type,
                                  payload, headers, seq, shard, available_at, payload_bytes,
                                  wal_lsn)
        VALUES (p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
                v_payload, v_headers, v_seq, v_shard, now(), v_bytes,
                'FFFFFFFF/FFFFFFFF');              -- stamped once seen (schema 36)
    ELSE
        -- The common case, a key seen before: one statement, one row update.
        WITH k AS (
            UPDATE ferry.outbox_key SET seq = seq + 1
             WHERE topic = p_topic AND key = p_key
            RETURNING seq, shard)
        INSERT INTO ferry.outbox (id, topic, aggregatetype, aggregateid, type,
                                  payload, headers, seq, shard, available_at, payload_bytes,
                                  wal_lsn)
        SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
               v_payload, v_headers, k.seq, k.shard,
               now() + p_delay_ms * interval '1 millisecond', v_bytes,
               CASE WHEN v_mode = 'wal' THEN 'FFFFFFFF/FFFFFFFF'::pg_lsn
                    ELSE pg_current_wal_insert_lsn() END
          FROM k
        RETURNING seq, shard INTO v_seq, v_shard;
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
                                      payload, headers, seq, shard, available_at, payload_bytes,
                                      wal_lsn)
            SELECT p_id, p_topic, coalesce(p_aggregatetype, ''), p_key, p_type,
                   v_payload, v_headers, k.seq, k.shard,
                   now() + p_delay_ms * interval '1 millisecond', v_bytes,
                   CASE WHEN v_mode = 'wal' THEN 'FFFFFFFF/FFFFFFFF'::pg_lsn
                        ELSE pg_current_wal_insert_lsn() END
              FROM k
            RETURNING seq, shard INTO v_seq, v_shard;
        END IF;
    END IF;

    -- Wake the shard's relay unless it is busy enough to look again by
    -- itself. Sent at commit, one per transaction whatever the number of
    -- emits (same channel, same payload). Everything here is a lock, seen
    -- as it is now, never through the transaction's snapshot: a flag in a
    -- table, read under REPEATABLE READ, was the one of the snapshot.
    --
    -- A busy relay holds its shards' busy locks (ferry.wake_shard_lock)
    -- exclusively; a writer that finds its shard's lock free notifies.
    -- One that finds it held takes the wake-up lock (ferry.wake_lock)
    -- shared, to its end, and looks again. A relay that lets its busy
    -- locks go takes the wake-up lock exclusively (and lets it go) before
    -- its last look: every writer that found its shard busy after taking
    -- it has then committed or rolled back, and its row is seen by that
    -- look; every later one finds the shard free and notifies. The busy
    -- lock is only tried and let go at once (a session lock, so as not to
    -- keep it to the commit and make a relay that wants to go busy fail
    -- to get it).
    IF (CASE WHEN pg_try_advisory_lock_shared(1718903418, v_shard)
             THEN pg_advisory_unlock_shared(1718903418, v_shard) ELSE false END) THEN
        PERFORM pg_notify('ferry_outbox', '');
    ELSE
        -- Tried, not waited for (schema 41): any role may take an advisory
        -- lock, and one that held this one exclusively stopped every such
        -- writer. The relay holds it only for an instant; a writer that
        -- does not get it notifies, which is never wrong.
        IF NOT pg_try_advisory_xact_lock_shared(1718903417, 1)         -- ferry.wake_lock()
           OR (CASE WHEN pg_try_advisory_lock_shared(1718903418, v_shard)
                    THEN pg_advisory_unlock_shared(1718903418, v_shard) ELSE false END) THEN
            PERFORM pg_notify('ferry_outbox', '');
        END IF;
    END IF;
    RETURN v_seq;
END
$fn$;


CREATE OR REPLACE FUNCTION ferry.settings_wal_turn() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NEW.emit_mode = 'wal' THEN
        NEW.wal_until_lsn := NULL;
    ELSIF OLD.emit_mode = 'wal' THEN
        -- Every transaction that emitted in wal mode has ended once this
        -- is held (emit holds it shared to its end): the point is past
        -- their commits.
        LOCK TABLE ferry.mode_gate IN ACCESS EXCLUSIVE MODE;        -- the mode lock
        NEW.wal_until_lsn := pg_current_wal_insert_lsn();
    END IF;
    RETURN NEW;
END
$fn$;

-- A relay's lease row, written by a role that is not the relay's: only
-- expired, nothing else changed (the reconciler's job, reconciler/
-- sweep_outbox.c EXPIRE_SQL). Row security lets only the reconciler get
-- here besides the relay and the owner.
CREATE FUNCTION ferry.lease_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF OLD.name ~ '^(shard|relay|wal):'
       AND NOT pg_has_role(current_user, 'ferry_relay', 'USAGE')
       AND current_user <> (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                             WHERE c.oid = TG_RELID)
       AND (NEW.name IS DISTINCT FROM OLD.name OR NEW.holder IS DISTINCT FROM OLD.holder
            OR NEW.epoch IS DISTINCT FROM OLD.epoch
            OR NEW.acquired_at IS DISTINCT FROM OLD.acquired_at
            OR NEW.renewed_at IS DISTINCT FROM OLD.renewed_at
            OR NEW.expires_at > now()) THEN
        RAISE EXCEPTION 'lease "%" is a relay''s: this role may only expire it', left(OLD.name, 64)
            USING ERRCODE = 'insufficient_privilege', TABLE = 'lease', SCHEMA = 'ferry';
    END IF;
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.lease_guard() FROM PUBLIC;
CREATE TRIGGER lease_guard BEFORE UPDATE ON ferry.lease
    FOR EACH ROW EXECUTE FUNCTION ferry.lease_guard();
