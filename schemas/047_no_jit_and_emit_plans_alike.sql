-- ferry schema, version 47: no statement of ferry's per-message
-- functions is compiled by JIT, and emit plans alike whoever calls it.
-- (A benchmark of schema 46.)
--
-- What changes, and why:
--
--   * Schema 46 turned sequential scans off in the consumer protocol's,
--     the saga store's and the participants' functions. A setting made for
--     a call holds for the functions it calls, so the emits of the saga
--     store and the participants (a command, a reply) ran with it too; a
--     statement that has no way but a sequential scan (emit's read of
--     ferry.settings' one row) is then costed above jit_above_cost, and
--     PostgreSQL compiled it by JIT on every call: 45 ms a read in
--     bench-saga, where sagas completed 9/s instead of 155.
--   * Those functions now also set jit = off for their call: compiling
--     pays only for statements that run long over many rows, and none of
--     theirs does.
--   * emit, emit_message, emit_with_id and wal_park set enable_seqscan =
--     on for their call, as they set search_path: their plans are their
--     own, the same from a saga store, a participant or an application
--     that turns sequential scans off for its own statements (schema 46
--     says why emit keeps sequential scans).
--
-- test_lang_protocol no_statement_is_compiled_and_emit_plans_alike reads
-- the plans auto_explain reports for every nested statement.

DO $do$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'ferry'::regnamespace AND p.prokind = 'f'
           AND 'enable_seqscan=off' = ANY (p.proconfig)
         ORDER BY 1
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET jit = off', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'ferry'::regnamespace AND p.prokind = 'f'
           AND p.proname = ANY (ARRAY['emit', 'emit_message', 'emit_with_id', 'wal_park'])
         ORDER BY 1
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = on', f);
    END LOOP;
END
$do$;
