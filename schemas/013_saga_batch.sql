-- ferry schema, version 13: a saga event in two round trips (issue 13
-- item 2).
--
-- Before, every event cost the driver a round trip per statement: lock
-- the row, store the state, one ferry.saga_audit per audit row (each
-- numbering itself with max(n) + 1), and per command an emit and its
-- audit row -- five or more round trips, each a wake-up of the backend on
-- a busy machine. A participant likewise: look up the key, SAVEPOINT,
-- RELEASE, record the outcome, emit the reply.
--
-- The functions below take what the C side computed (the engine's next
-- state, the audit rows, the commands) in one call, so that an event is
-- "lock and load" then "store, audit, emit": two round trips whatever it
-- sends. Nothing about what is checked changes:
--   * the store is still UPDATE ... WHERE version = <the revision loaded>,
--     and when that finds no row nothing else is written (false comes
--     back, the driver retries the event on the newer revision);
--   * the audit rows are numbered after the saga's last one, found once
--     per event under the saga's row lock (held since ferry.saga_lock, or
--     taken by the UPDATE itself), in the order given;
--   * every command and reply still goes through ferry.emit_with_id, the
--     one writer of the outbox, in the order given, with the ids the C
--     side generated (the audit row of a send names its message id).
-- The older functions (saga_create, saga_save, saga_audit,
-- participant_record, saga_next_due) stay, unchanged, for callers of an
-- older library.

-- Append audit rows and emit commands for saga p_id; the caller holds the
-- saga's row lock. p_audit: [{step, kind, status, attempt, message_id,
-- detail}]; p_commands: [{id, topic, key, type, aggregate_type, payload,
-- headers, delay_ms}] with payload and headers as JSON text (a string), so
-- that a payload's numbers reach ferry.emit_with_id as they were written.
-- Not callable by any role: only through the functions below.
CREATE FUNCTION ferry.saga_record(p_id uuid, p_audit jsonb, p_commands jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_n integer;
    c jsonb;
BEGIN
    IF jsonb_array_length(p_audit) > 0 THEN
        SELECT coalesce(max(n), 0) INTO v_n FROM ferry.saga_step WHERE saga_id = p_id;
        INSERT INTO ferry.saga_step (saga_id, n, step, kind, status, attempt, message_id,
                                     detail)
        SELECT p_id, v_n + a.i::integer, a.e->>'step', a.e->>'kind', a.e->>'status',
               (a.e->>'attempt')::integer, (a.e->>'message_id')::uuid,
               nullif(a.e->'detail', 'null'::jsonb)
          FROM jsonb_array_elements(p_audit) WITH ORDINALITY AS a(e, i);
    END IF;
    FOR c IN SELECT x.e FROM jsonb_array_elements(p_commands) WITH ORDINALITY AS x(e, i)
              ORDER BY x.i LOOP
        PERFORM ferry.emit_with_id((c->>'id')::uuid, c->>'topic', c->>'key', c->>'type',
                                   c->>'payload', c->>'headers', c->>'aggregate_type',
                                   (c->>'delay_ms')::bigint);
    END LOOP;
END
$fn$;

-- A new saga: its row, its audit rows and its first commands.
CREATE FUNCTION ferry.saga_begin(p_id uuid, p_definition text, p_hash text, p_state text,
                                 p_current integer, p_context jsonb, p_deadline_ms bigint,
                                 p_version bigint, p_engine jsonb, p_audit jsonb,
                                 p_commands jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO ferry.saga (id, definition, definition_hash, state, current_step, context,
                            deadline, version, engine)
    VALUES (p_id, p_definition, p_hash, p_state, p_current, p_context,
            CASE WHEN p_deadline_ms > 0 THEN to_timestamp(p_deadline_ms / 1000.0) END,
            p_version, p_engine);
    PERFORM ferry.saga_record(p_id, p_audit, p_commands);
END
$fn$;

-- The engine's next state over the revision that was loaded, then its
-- audit rows and commands. False, with nothing written, when another
-- writer got there first.
CREATE FUNCTION ferry.saga_store(p_id uuid, p_old_version bigint, p_version bigint,
                                 p_state text, p_current integer, p_deadline_ms bigint,
                                 p_engine jsonb, p_audit jsonb, p_commands jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    UPDATE ferry.saga
       SET version = p_version, state = p_state, current_step = p_current,
           deadline = CASE WHEN p_deadline_ms > 0 THEN to_timestamp(p_deadline_ms / 1000.0) END,
           engine = p_engine, updated_at = now()
     WHERE id = p_id AND version = p_old_version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM ferry.saga_record(p_id, p_audit, p_commands);
    RETURN true;
END
$fn$;

-- The next due saga (as ferry.saga_next_due(bigint, uuid[]): skipping
-- the ids given and rows another worker holds), locked and loaded in the
-- same statement, as ferry.saga_lock returns it: a timer no longer costs
-- a look-up and then a second read of the row it found. p_now_ms NULL:
-- the transaction's time (a timer no longer asks for it first). No row
-- when none is due.
CREATE FUNCTION ferry.saga_lock_next_due(p_now_ms bigint, p_skip uuid[])
RETURNS TABLE (id uuid, definition text, definition_hash text, context text, version bigint,
               engine text, now_ms bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
    SELECT s.id, s.definition, s.definition_hash, s.context::text, s.version, s.engine::text,
           floor(extract(epoch FROM now()) * 1000)::bigint
      FROM ferry.saga s
     WHERE s.state IN ('running', 'compensating')
       AND s.deadline <= coalesce(to_timestamp(p_now_ms / 1000.0), now())
       AND s.id <> ALL (coalesce(p_skip, '{}'))
     ORDER BY s.deadline
     LIMIT 1
       FOR UPDATE SKIP LOCKED;
END
$fn$;

-- A participant's answer to one command: the outcome recorded when the key
-- is new (p_record; as ferry.participant_record, under the step's lock
-- from ferry.participant_begin), then the reply emitted through
-- ferry.emit_with_id with the id the C side generated.
CREATE FUNCTION ferry.participant_finish(p_participant text, p_saga uuid, p_step integer,
                                         p_kind text, p_round integer, p_record boolean,
                                         p_outcome text, p_reason text, p_message_id uuid,
                                         p_reply_id uuid, p_reply_topic text,
                                         p_reply_key text, p_reply_type text,
                                         p_reply_payload text, p_reply_headers text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_record THEN
        PERFORM ferry.participant_record(p_participant, p_saga, p_step, p_kind, p_round,
                                         p_outcome, p_reason, p_message_id);
    END IF;
    PERFORM ferry.emit_with_id(p_reply_id, p_reply_topic, p_reply_key, p_reply_type,
                               p_reply_payload, p_reply_headers, p_participant, 0);
END
$fn$;

REVOKE ALL ON FUNCTION
    ferry.saga_record(uuid, jsonb, jsonb),
    ferry.saga_begin(uuid, text, text, text, integer, jsonb, bigint, bigint, jsonb, jsonb,
                     jsonb),
    ferry.saga_store(uuid, bigint, bigint, text, integer, bigint, jsonb, jsonb, jsonb),
    ferry.saga_lock_next_due(bigint, uuid[]),
    ferry.participant_finish(text, uuid, integer, text, integer, boolean, text, text, uuid,
                             uuid, text, text, text, text, text)
FROM PUBLIC;
-- As the functions they replace (003, 005): the service (as a writer or
-- inside a consumer) starts and runs sagas and participants; the
-- reconciler stores sagas and fires their timers.
GRANT EXECUTE ON FUNCTION
    ferry.saga_begin(uuid, text, text, text, integer, jsonb, bigint, bigint, jsonb, jsonb,
                     jsonb),
    ferry.participant_finish(text, uuid, integer, text, integer, boolean, text, text, uuid,
                             uuid, text, text, text, text, text)
TO ferry_writer;
GRANT EXECUTE ON FUNCTION
    ferry.saga_store(uuid, bigint, bigint, text, integer, bigint, jsonb, jsonb, jsonb),
    ferry.saga_lock_next_due(bigint, uuid[])
TO ferry_writer, ferry_reconciler;

-- The same lock and load, in plpgsql: a LANGUAGE sql function that cannot
-- be inlined (SECURITY DEFINER, SET, FOR UPDATE) plans its query at every
-- call, and this one runs at every event; plpgsql keeps the plan for the
-- session. pg_stat_statements in bench-saga on the contended 2-core
-- machine: 0.27 ms per call, of which the query itself 0.055 ms.
CREATE OR REPLACE FUNCTION ferry.saga_lock(p_id uuid)
RETURNS TABLE (definition text, definition_hash text, context text, version bigint,
               engine text, now_ms bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
    SELECT s.definition, s.definition_hash, s.context::text, s.version, s.engine::text,
           floor(extract(epoch FROM now()) * 1000)::bigint
      FROM ferry.saga s WHERE s.id = p_id FOR UPDATE;
END
$fn$;
