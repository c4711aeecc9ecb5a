-- ferry schema, version 3: the saga driver and its participants
-- (lib/saga_driver.c, lib/participant.c).
--
-- ferry.saga (version 1) keeps one row per saga; this migration adds the
-- engine's whole state (ferry_saga_state as JSON, readable with ->>) and
-- gives the existing columns their meaning for the driver:
--   state         the engine's status name (running, compensating, ...)
--   current_step  state.current
--   deadline      state.wake_ms: the next timer. Any worker (or the
--                 reconciler) fires it: ferry_saga_fire_timers() picks rows
--                 with deadline <= now FOR UPDATE SKIP LOCKED, through the
--                 saga_open_deadline index.
--   version       state.revision: the optimistic lock. Every store is
--                 UPDATE ... WHERE version = <the revision loaded>.
--
-- Participants record the outcome of every command they process, keyed by
-- the command's idempotency key (participant, saga, step, kind, round),
-- refusals included, and per (participant, saga, step) whether the step's
-- action ran and whether it has been compensated (the tombstone that makes
-- a late action be refused).
--
-- The service's role (ferry_writer) has no table privilege: it works
-- through the SECURITY DEFINER functions below, as with the inbox.

ALTER TABLE ferry.saga ADD COLUMN engine jsonb;

-- Per (participant, saga, step): the row every command of the step locks
-- first, so that an action and a compensation of one step never interleave.
CREATE TABLE ferry.participant_step (
    participant     text        NOT NULL,
    saga_id         uuid        NOT NULL,
    step            integer     NOT NULL CHECK (step >= 0),
    action_applied  boolean     NOT NULL DEFAULT false,
    compensated_at  timestamptz,            -- the tombstone: actions refused from here on
    PRIMARY KEY (participant, saga_id, step)
);

-- The outcome of every command processed, by idempotency key.
--   applied     the action or compensation ran
--   refused     the callback refused it (a business refusal): never applied
--   tombstone   a compensation of a step whose action never ran: a no-op,
--               recorded, and later actions of the step are refused
--   too_late    an action that arrived after its step's compensation: refused
CREATE TABLE ferry.participant_command (
    participant  text        NOT NULL,
    saga_id      uuid        NOT NULL,
    step         integer     NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('action', 'compensation')),
    round        integer     NOT NULL CHECK (round >= 0),
    outcome      text        NOT NULL
                 CHECK (outcome IN ('applied', 'refused', 'tombstone', 'too_late')),
    reason       text,
    message_id   uuid,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (participant, saga_id, step, kind, round)
);

-- --------------------------------------------------------------- driver

CREATE FUNCTION ferry.saga_create(p_id uuid, p_definition text, p_hash text, p_state text,
                                  p_current integer, p_context jsonb, p_deadline_ms bigint,
                                  p_version bigint, p_engine jsonb)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO ferry.saga (id, definition, definition_hash, state, current_step, context,
                            deadline, version, engine)
    VALUES (p_id, p_definition, p_hash, p_state, p_current, p_context,
            CASE WHEN p_deadline_ms > 0 THEN to_timestamp(p_deadline_ms / 1000.0) END,
            p_version, p_engine);
$fn$;

-- Load and lock one saga for the rest of the caller's transaction. now_ms
-- is the transaction's time by the database clock: the time the driver
-- gives the engine.
CREATE FUNCTION ferry.saga_lock(p_id uuid)
RETURNS TABLE (definition text, definition_hash text, context text, version bigint,
               engine text, now_ms bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.definition, s.definition_hash, s.context::text, s.version, s.engine::text,
           floor(extract(epoch FROM now()) * 1000)::bigint
      FROM ferry.saga s WHERE s.id = p_id FOR UPDATE;
$fn$;

-- The next saga whose timer is due by p_now_ms, locked for the caller's
-- transaction; rows another worker holds are skipped. NULL when none.
CREATE FUNCTION ferry.saga_next_due(p_now_ms bigint)
RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.id FROM ferry.saga s
     WHERE s.state IN ('running', 'compensating')
       AND s.deadline <= to_timestamp(p_now_ms / 1000.0)
     ORDER BY s.deadline
     LIMIT 1
       FOR UPDATE SKIP LOCKED;
$fn$;

-- Store the engine's next state, only over the revision that was loaded.
-- False when another writer got there first.
CREATE FUNCTION ferry.saga_save(p_id uuid, p_old_version bigint, p_version bigint,
                                p_state text, p_current integer, p_deadline_ms bigint,
                                p_engine jsonb)
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
    RETURN FOUND;
END
$fn$;

-- One audit row; n follows the saga's earlier rows (the caller holds the
-- saga's row lock, so n cannot be taken twice).
CREATE FUNCTION ferry.saga_audit(p_id uuid, p_step text, p_kind text, p_status text,
                                 p_attempt integer, p_message_id uuid, p_detail jsonb)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO ferry.saga_step (saga_id, n, step, kind, status, attempt, message_id, detail)
    SELECT p_id, coalesce(max(n), 0) + 1, p_step, p_kind, p_status, p_attempt, p_message_id,
           p_detail
      FROM ferry.saga_step WHERE saga_id = p_id;
$fn$;

-- ---------------------------------------------------------- participants

-- Lock the step's row (making it on first sight) and say what is known:
-- the outcome already recorded for this key (NULL when new), whether the
-- step's action ran, and whether the step is compensated.
CREATE FUNCTION ferry.participant_begin(p_participant text, p_saga uuid, p_step integer,
                                        p_kind text, p_round integer,
                                        OUT outcome text, OUT reason text,
                                        OUT action_applied boolean, OUT compensated boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO ferry.participant_step (participant, saga_id, step)
    VALUES (p_participant, p_saga, p_step) ON CONFLICT DO NOTHING;
    SELECT s.action_applied, s.compensated_at IS NOT NULL
      INTO action_applied, compensated
      FROM ferry.participant_step s
     WHERE s.participant = p_participant AND s.saga_id = p_saga AND s.step = p_step
       FOR UPDATE;
    SELECT c.outcome, c.reason INTO outcome, reason
      FROM ferry.participant_command c
     WHERE c.participant = p_participant AND c.saga_id = p_saga AND c.step = p_step
       AND c.kind = p_kind AND c.round = p_round;
END
$fn$;

-- Record the outcome of a key processed for the first time (the caller
-- holds the step's lock from participant_begin).
CREATE FUNCTION ferry.participant_record(p_participant text, p_saga uuid, p_step integer,
                                         p_kind text, p_round integer, p_outcome text,
                                         p_reason text, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO ferry.participant_command (participant, saga_id, step, kind, round, outcome,
                                           reason, message_id)
    VALUES (p_participant, p_saga, p_step, p_kind, p_round, p_outcome, p_reason, p_message_id);
    IF p_kind = 'action' AND p_outcome = 'applied' THEN
        UPDATE ferry.participant_step SET action_applied = true
         WHERE participant = p_participant AND saga_id = p_saga AND step = p_step;
    ELSIF p_kind = 'compensation' AND p_outcome IN ('applied', 'tombstone') THEN
        UPDATE ferry.participant_step SET compensated_at = coalesce(compensated_at, now())
         WHERE participant = p_participant AND saga_id = p_saga AND step = p_step;
    END IF;
END
$fn$;

-- ----------------------------------------------------------------- roles

REVOKE ALL ON ferry.participant_step, ferry.participant_command FROM PUBLIC;
REVOKE ALL ON FUNCTION
    ferry.saga_create(uuid, text, text, text, integer, jsonb, bigint, bigint, jsonb),
    ferry.saga_lock(uuid),
    ferry.saga_next_due(bigint),
    ferry.saga_save(uuid, bigint, bigint, text, integer, bigint, jsonb),
    ferry.saga_audit(uuid, text, text, text, integer, uuid, jsonb),
    ferry.participant_begin(text, uuid, integer, text, integer),
    ferry.participant_record(text, uuid, integer, text, integer, text, text, uuid)
FROM PUBLIC;
-- The service runs sagas and participants.
GRANT EXECUTE ON FUNCTION
    ferry.saga_create(uuid, text, text, text, integer, jsonb, bigint, bigint, jsonb),
    ferry.saga_lock(uuid),
    ferry.saga_next_due(bigint),
    ferry.saga_save(uuid, bigint, bigint, text, integer, bigint, jsonb),
    ferry.saga_audit(uuid, text, text, text, integer, uuid, jsonb),
    ferry.participant_begin(text, uuid, integer, text, integer),
    ferry.participant_record(text, uuid, integer, text, integer, text, text, uuid)
TO ferry_writer;
-- The reconciler reads everything and fires timers the workers left.
GRANT SELECT ON ferry.participant_step, ferry.participant_command TO ferry_reconciler;
GRANT EXECUTE ON FUNCTION
    ferry.saga_lock(uuid),
    ferry.saga_next_due(bigint),
    ferry.saga_save(uuid, bigint, bigint, text, integer, bigint, jsonb),
    ferry.saga_audit(uuid, text, text, text, integer, uuid, jsonb)
TO ferry_reconciler;
