-- ferry schema, version 8: privileges (issue 12, items 6 and 7).
--
-- What changes, and why:
--
--   * The programs can run as their roles: every shipped role may read
--     ferry.schema_version, which each program checks at start-up. Before,
--     only ferry_reconciler could (it reads every table), so `ferry-relay
--     run` as a ferry_relay member and a consumer as a ferry_writer member
--     failed on "permission denied for table schema_version".
--   * Consuming is its own role, ferry_consumer (a member of ferry_writer:
--     a handler emits), and ferry_writer only emits (and runs sagas, as
--     before). Before, any writer could call the inbox functions.
--   * A service is confined to its own consumer names: ferry.consumer_owner
--     maps each name to the role that owns it, and every inbox function
--     that takes a consumer name refuses (42501) a caller that is not a
--     member of that role — or of the owner of the ferry schema, which acts
--     for every consumer (the migrating role; superusers). The caller is
--     the role set with SET ROLE, else the session's login role: inside a
--     SECURITY DEFINER function current_user is the definer, so it is
--     read from the session. An unregistered name belongs to no one. The
--     empty name is the relay's: no consumer may use it (22023), so no one
--     makes relay dead letters (consumer '', shard -1) through the inbox.
--   * Dead letters by table privilege are confined by row: ferry_relay and
--     ferry_reconciler may insert only relay dead letters (consumer '',
--     shard >= 0), and only ferry_reconciler may change or delete a
--     consumer's (row-level security; the definer functions, run as the
--     owner, are not subject to it). ferry_relay no longer calls
--     replay_dead_letter / discard_dead_letter, which hand consumer dead
--     letters back to consumers; the reconciler and the operator do.
--
-- Migration 007 is another change's; this file assumes nothing of it.

-- ----------------------------------------------------------------- roles

DO $roles$
BEGIN
    CREATE ROLE ferry_consumer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;   -- made by another database's migration
END
$roles$;
GRANT ferry_writer TO ferry_consumer;
GRANT USAGE ON SCHEMA ferry TO ferry_consumer;

-- Every program reads the schema version before it starts.
GRANT SELECT ON ferry.schema_version
    TO ferry_writer, ferry_consumer, ferry_relay, ferry_reconciler;

-- ------------------------------------------------------- consumer names

-- Which role owns each consumer name. Written by the operator (the owner
-- of the ferry schema), never by the shipped roles:
--   INSERT INTO ferry.consumer_owner VALUES ('payments', 'payments_svc');
-- role is a role name, not an oid: a name whose role was dropped belongs to
-- no one (the check joins pg_roles) rather than to the next role given the
-- oid.
CREATE TABLE ferry.consumer_owner (
    consumer  text        PRIMARY KEY CHECK (consumer <> ''),
    role      name        NOT NULL,
    added_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON ferry.consumer_owner FROM PUBLIC;
GRANT SELECT ON ferry.consumer_owner TO ferry_reconciler;

-- Refuse the caller unless it may act for consumer p_consumer. Called
-- first thing by every inbox function that takes a consumer name; not
-- granted to anyone (the callers are SECURITY DEFINER and run it as the
-- owner).
CREATE FUNCTION ferry.consumer_guard_(p_consumer text) RETURNS void
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
REVOKE ALL ON FUNCTION ferry.consumer_guard_(text) FROM PUBLIC;

-- The inbox functions as in version 6 (inbox_claim, inbox_dead_letter,
-- inbox_ready, inbox_ready_key) and version 2 (inbox_hold, inbox_unhold),
-- each with the guard first and nothing else changed.

CREATE OR REPLACE FUNCTION ferry.inbox_claim(p_consumer text, p_id uuid, p_topic text,
                                             p_key text, p_seq bigint,
                                             p_first_any boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_last bigint;
    v_parked bigint;
    v_more boolean;
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    IF p_seq IS NULL THEN
        INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
        VALUES (p_consumer, p_id, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        RETURN CASE WHEN FOUND THEN 'apply' ELSE 'duplicate' END;
    END IF;
    -- p_seq - 1 and p_seq + 1 below must exist.
    IF p_seq < 1 OR p_seq > 9223372036854775806 THEN
        RAISE EXCEPTION 'position % is out of range (1 .. 9223372036854775806)', p_seq
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;

    UPDATE ferry.inbox_key SET seq = p_seq
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       AND seq = p_seq - 1 AND (parked_seq IS NULL OR p_seq < parked_seq)
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

    SELECT seq, parked_seq INTO v_last, v_parked
      FROM ferry.inbox_key
     WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO ferry.inbox_key (consumer, topic, key, seq)
        VALUES (p_consumer, p_topic, p_key, 0)
        ON CONFLICT DO NOTHING;
        SELECT seq, parked_seq INTO v_last, v_parked
          FROM ferry.inbox_key
         WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
           FOR UPDATE;
    END IF;

    IF p_seq <= v_last THEN
        RETURN 'late';
    END IF;
    IF v_parked IS NOT NULL AND p_seq >= v_parked THEN
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
BEGIN
    PERFORM ferry.consumer_guard_(p_consumer);
    BEGIN
        v_payload := p_payload::jsonb;
    EXCEPTION WHEN data_exception THEN
        v_payload := to_jsonb(p_payload);
        v_text := p_payload;
    END;
    INSERT INTO ferry.dead_letter (message_id, consumer, topic, aggregatetype, aggregateid,
                                   type, payload, payload_text, headers, seq, shard,
                                   created_at, attempts, reason)
    VALUES (p_id, p_consumer, p_topic, coalesce(p_aggregatetype, ''), p_key,
            coalesce(p_type, ''), v_payload, v_text, coalesce(p_headers, '{}'),
            coalesce(p_seq, 0), -1, now(), p_attempts, p_reason)
    ON CONFLICT (message_id, consumer) DO UPDATE
        SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason, failed_at = now()
    RETURNING id INTO v_id;
    IF p_seq IS NOT NULL THEN
        INSERT INTO ferry.inbox_key AS k (consumer, topic, key, seq, parked_by, parked_seq)
        VALUES (p_consumer, p_topic, p_key, 0, v_id, p_seq)
        ON CONFLICT (consumer, topic, key) DO UPDATE
            SET parked_by = v_id, parked_seq = p_seq
          WHERE k.seq < p_seq AND (k.parked_seq IS NULL OR p_seq <= k.parked_seq);
    END IF;
    DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id;
    RETURN v_id;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_ready(p_consumer text, p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    WITH RECURSIVE keys(topic, key) AS (
        (SELECT h.topic, h.key FROM ferry.inbox_held h
          WHERE h.consumer = p_consumer AND h.seq IS NOT NULL
          ORDER BY h.topic, h.key LIMIT 1)
        UNION ALL
        SELECT n.topic, n.key
          FROM keys w
         CROSS JOIN LATERAL (
            SELECT h.topic, h.key FROM ferry.inbox_held h
             WHERE h.consumer = p_consumer AND (h.topic, h.key) > (w.topic, w.key)
               AND h.seq IS NOT NULL
             ORDER BY h.topic, h.key LIMIT 1) n
    )
    (SELECT h.* FROM ferry.inbox_held h
      WHERE h.consumer = p_consumer AND h.seq IS NULL
      ORDER BY h.held_at LIMIT p_limit)
    UNION ALL
    (SELECT f.*
       FROM keys
       JOIN ferry.inbox_key k
         ON k.consumer = p_consumer AND k.topic = keys.topic AND k.key = keys.key
      CROSS JOIN LATERAL (
            SELECT h.* FROM ferry.inbox_held h
             WHERE h.consumer = p_consumer AND h.topic = keys.topic AND h.key = keys.key
               AND h.seq IS NOT NULL
             ORDER BY h.seq LIMIT 1) f
      WHERE f.seq <= k.seq
         OR (f.seq = k.seq + 1 AND (k.parked_seq IS NULL OR f.seq < k.parked_seq))
      LIMIT p_limit)
    LIMIT p_limit;
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_ready_key(p_consumer text, p_topic text, p_key text,
                                      p_limit integer)
RETURNS SETOF ferry.inbox_held
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    WITH k AS (
        SELECT seq, parked_seq FROM ferry.inbox_key
         WHERE consumer = p_consumer AND topic = p_topic AND key = p_key
    )
    (SELECT h.* FROM ferry.inbox_held h, k
      WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
        AND h.seq <= k.seq
      ORDER BY h.seq LIMIT p_limit)
    UNION ALL
    (SELECT (r.h).* FROM (
        SELECT h, h.seq - k.seq AS ahead, row_number() OVER (ORDER BY h.seq) AS n
          FROM ferry.inbox_held h, k
         WHERE h.consumer = p_consumer AND h.topic = p_topic AND h.key = p_key
           AND h.seq > k.seq
         ORDER BY h.seq LIMIT p_limit) r, k
      WHERE r.ahead = r.n AND (k.parked_seq IS NULL OR (r.h).seq < k.parked_seq)
      ORDER BY r.n)
    LIMIT p_limit;
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_hold(p_consumer text, p_id uuid, p_topic text, p_key text,
                                 p_seq bigint, p_type text, p_aggregatetype text,
                                 p_payload text, p_headers jsonb, p_partition integer,
                                 p_offset bigint, p_reason text)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    INSERT INTO ferry.inbox_held (consumer, topic, key, seq, message_id, type,
                                  aggregatetype, payload, headers, kafka_partition,
                                  kafka_offset, reason)
    VALUES (p_consumer, p_topic, p_key, p_seq, p_id, coalesce(p_type, ''),
            coalesce(p_aggregatetype, ''), p_payload, coalesce(p_headers, '{}'),
            p_partition, p_offset, p_reason)
    ON CONFLICT DO NOTHING;
$fn$;

CREATE OR REPLACE FUNCTION ferry.inbox_unhold(p_consumer text, p_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT ferry.consumer_guard_(p_consumer);
    DELETE FROM ferry.inbox_held WHERE consumer = p_consumer AND message_id = p_id;
$fn$;

-- Consuming moves from ferry_writer to ferry_consumer (which is a writer
-- too). inbox_skip_gap stays the reconciler's, for any consumer.
REVOKE EXECUTE ON FUNCTION
    ferry.inbox_claim(text, uuid, text, text, bigint, boolean),
    ferry.inbox_hold(text, uuid, text, text, bigint, text, text, text, jsonb, integer,
                     bigint, text),
    ferry.inbox_dead_letter(text, uuid, text, text, bigint, text, text, text, jsonb,
                            integer, text),
    ferry.inbox_ready(text, integer),
    ferry.inbox_ready_key(text, text, text, integer),
    ferry.inbox_unhold(text, uuid)
FROM ferry_writer;
GRANT EXECUTE ON FUNCTION
    ferry.inbox_claim(text, uuid, text, text, bigint, boolean),
    ferry.inbox_hold(text, uuid, text, text, bigint, text, text, text, jsonb, integer,
                     bigint, text),
    ferry.inbox_dead_letter(text, uuid, text, text, bigint, text, text, text, jsonb,
                            integer, text),
    ferry.inbox_ready(text, integer),
    ferry.inbox_ready_key(text, text, text, integer),
    ferry.inbox_unhold(text, uuid)
TO ferry_consumer;

-- ---------------------------------------------------------- dead letters

-- The relay dead-letters by table privilege (daemon/relay.c), as does the
-- reconciler's over-attempted sweep: both write relay dead letters only.
-- Each may read every dead letter (the status page, the reports, and the
-- relay's fetch, which skips keys parked by any). The reconciler locks
-- (FOR UPDATE, which needs UPDATE's USING), replays and discards any; it
-- may not turn a letter into a consumer's.
ALTER TABLE ferry.dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letter_read ON ferry.dead_letter FOR SELECT
    TO ferry_relay, ferry_reconciler USING (true);
CREATE POLICY dead_letter_relay_insert ON ferry.dead_letter FOR INSERT
    TO ferry_relay, ferry_reconciler WITH CHECK (consumer = '' AND shard >= 0);
CREATE POLICY dead_letter_relay_update ON ferry.dead_letter FOR UPDATE
    TO ferry_relay USING (consumer = '') WITH CHECK (consumer = '' AND shard >= 0);
CREATE POLICY dead_letter_relay_delete ON ferry.dead_letter FOR DELETE
    TO ferry_relay USING (consumer = '');
CREATE POLICY dead_letter_reconciler_update ON ferry.dead_letter FOR UPDATE
    TO ferry_reconciler USING (true) WITH CHECK (consumer = '' AND shard >= 0);
CREATE POLICY dead_letter_reconciler_delete ON ferry.dead_letter FOR DELETE
    TO ferry_reconciler USING (true);

REVOKE EXECUTE ON FUNCTION ferry.replay_dead_letter(bigint), ferry.discard_dead_letter(bigint)
FROM ferry_relay;
