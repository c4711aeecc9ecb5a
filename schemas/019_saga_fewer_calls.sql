-- ferry schema, version 19: a saga event and a participant's answer with
-- fewer statements on the server (issue 13 item 2).
--
-- Schema 13 made an event two round trips; what is left is server time,
-- and on a busy machine server time is the rate (bench-saga's profile,
-- FERRY_BENCH_STATEMENTS=1). Every call of a SECURITY DEFINER function
-- with a SET clause saves and restores the settings and recomputes the
-- search path, and every plpgsql statement starts an executor; both were
-- paid for calls that only forwarded to another function:
--   * ferry.saga_store and ferry.saga_begin called ferry.saga_record,
--     which found the last audit number with one statement and inserted
--     the audit rows with another;
--   * ferry.participant_finish called ferry.participant_record;
--   * ferry.participant_begin, having just inserted the step's row (the
--     first command of a step, the common case), read it back FOR UPDATE
--     to learn that nothing had run and nothing was compensated.
-- The functions below do the same writes in the same order with the same
-- checks, inline: the revision check first and nothing written when it
-- fails; the audit rows numbered after the saga's last one under the
-- saga's row lock (held since ferry.saga_lock, or taken by the UPDATE),
-- in the order given, now in one statement; every command and reply
-- through ferry.emit_with_id, the one writer of the outbox, in order. A
-- row this transaction inserted is its own until it commits: a second
-- command of the step waits on the insert's key, then finds the row.
-- Grants are kept (CREATE OR REPLACE keeps them); saga_record and
-- participant_record stay, unchanged, for callers of an older library.

CREATE OR REPLACE FUNCTION ferry.saga_store(p_id uuid, p_old_version bigint, p_version bigint,
                                            p_state text, p_current integer,
                                            p_deadline_ms bigint, p_engine jsonb,
                                            p_audit jsonb, p_commands jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    c jsonb;
BEGIN
    UPDATE ferry.saga
       SET version = p_version, state = p_state, current_step = p_current,
           deadline = CASE WHEN p_deadline_ms > 0 THEN to_timestamp(p_deadline_ms / 1000.0) END,
           engine = p_engine, updated_at = now()
     WHERE id = p_id AND version = p_old_version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- The saga's last number read once (an InitPlan), under the row lock.
    INSERT INTO ferry.saga_step (saga_id, n, step, kind, status, attempt, message_id, detail)
    SELECT p_id, (SELECT coalesce(max(s.n), 0) FROM ferry.saga_step s WHERE s.saga_id = p_id)
                 + a.i::integer,
           a.e->>'step', a.e->>'kind', a.e->>'status', (a.e->>'attempt')::integer,
           (a.e->>'message_id')::uuid, nullif(a.e->'detail', 'null'::jsonb)
      FROM jsonb_array_elements(p_audit) WITH ORDINALITY AS a(e, i);
    FOR c IN SELECT x.e FROM jsonb_array_elements(p_commands) WITH ORDINALITY AS x(e, i)
              ORDER BY x.i LOOP
        PERFORM ferry.emit_with_id((c->>'id')::uuid, c->>'topic', c->>'key', c->>'type',
                                   c->>'payload', c->>'headers', c->>'aggregate_type',
                                   (c->>'delay_ms')::bigint);
    END LOOP;
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.saga_begin(p_id uuid, p_definition text, p_hash text,
                                            p_state text, p_current integer, p_context jsonb,
                                            p_deadline_ms bigint, p_version bigint,
                                            p_engine jsonb, p_audit jsonb, p_commands jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    c jsonb;
BEGIN
    INSERT INTO ferry.saga (id, definition, definition_hash, state, current_step, context,
                            deadline, version, engine)
    VALUES (p_id, p_definition, p_hash, p_state, p_current, p_context,
            CASE WHEN p_deadline_ms > 0 THEN to_timestamp(p_deadline_ms / 1000.0) END,
            p_version, p_engine);
    -- A new saga has no audit rows: they are numbered from 1.
    INSERT INTO ferry.saga_step (saga_id, n, step, kind, status, attempt, message_id, detail)
    SELECT p_id, a.i::integer, a.e->>'step', a.e->>'kind', a.e->>'status',
           (a.e->>'attempt')::integer, (a.e->>'message_id')::uuid,
           nullif(a.e->'detail', 'null'::jsonb)
      FROM jsonb_array_elements(p_audit) WITH ORDINALITY AS a(e, i);
    FOR c IN SELECT x.e FROM jsonb_array_elements(p_commands) WITH ORDINALITY AS x(e, i)
              ORDER BY x.i LOOP
        PERFORM ferry.emit_with_id((c->>'id')::uuid, c->>'topic', c->>'key', c->>'type',
                                   c->>'payload', c->>'headers', c->>'aggregate_type',
                                   (c->>'delay_ms')::bigint);
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.participant_begin(p_participant text, p_saga uuid,
                                                   p_step integer, p_kind text,
                                                   p_round integer,
                                                   OUT outcome text, OUT reason text,
                                                   OUT action_applied boolean,
                                                   OUT compensated boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO ferry.participant_step (participant, saga_id, step)
    VALUES (p_participant, p_saga, p_step) ON CONFLICT DO NOTHING;
    IF FOUND THEN
        -- Inserted here: this transaction's own row, with its defaults.
        action_applied := false;
        compensated := false;
    ELSE
        SELECT s.action_applied, s.compensated_at IS NOT NULL
          INTO action_applied, compensated
          FROM ferry.participant_step s
         WHERE s.participant = p_participant AND s.saga_id = p_saga AND s.step = p_step
           FOR UPDATE;
    END IF;
    -- Looked up either way: the outcome of a key belongs to the key, not
    -- to the step row (a step row removed by hand must not make a key
    -- that was processed look new).
    SELECT c.outcome, c.reason INTO outcome, reason
      FROM ferry.participant_command c
     WHERE c.participant = p_participant AND c.saga_id = p_saga AND c.step = p_step
       AND c.kind = p_kind AND c.round = p_round;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.participant_finish(p_participant text, p_saga uuid,
                                                    p_step integer, p_kind text,
                                                    p_round integer, p_record boolean,
                                                    p_outcome text, p_reason text,
                                                    p_message_id uuid, p_reply_id uuid,
                                                    p_reply_topic text, p_reply_key text,
                                                    p_reply_type text, p_reply_payload text,
                                                    p_reply_headers text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_record THEN
        -- As ferry.participant_record, under the step's lock from
        -- ferry.participant_begin.
        INSERT INTO ferry.participant_command (participant, saga_id, step, kind, round,
                                               outcome, reason, message_id)
        VALUES (p_participant, p_saga, p_step, p_kind, p_round, p_outcome, p_reason,
                p_message_id);
        IF p_kind = 'action' AND p_outcome = 'applied' THEN
            UPDATE ferry.participant_step SET action_applied = true
             WHERE participant = p_participant AND saga_id = p_saga AND step = p_step;
        ELSIF p_kind = 'compensation' AND p_outcome IN ('applied', 'tombstone') THEN
            UPDATE ferry.participant_step SET compensated_at = coalesce(compensated_at, now())
             WHERE participant = p_participant AND saga_id = p_saga AND step = p_step;
        END IF;
    END IF;
    PERFORM ferry.emit_with_id(p_reply_id, p_reply_topic, p_reply_key, p_reply_type,
                               p_reply_payload, p_reply_headers, p_participant, 0);
END
$fn$;
