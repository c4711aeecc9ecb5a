-- ferry schema, version 37: a worker fires the timers of the sagas it can
-- run, and only those.
--
-- What changes, and why:
--
--   * ferry.saga_lock_next_due picked the oldest due saga of any
--     definition, whether or not the caller's registry held it. A saga the
--     worker cannot run -- another service's definition in a shared
--     database, or one started under a definition since edited (its hash
--     differs: refused, README "Changing a definition") -- failed, was
--     passed by for the rest of the call, and counted against the call's
--     max and its skip list. A few dozen of them, always the oldest due,
--     stopped the worker firing any timer at all, call after call (an
--     outside audit: 70 sagas under an edited file, every call
--     FERRY_EINVAL, the worker's own saga never fired;
--     tests/test_saga_batch.c,
--     timers_of_sagas_the_worker_cannot_run_do_not_stop_its_own).
--   * Now the caller passes its registry's definitions, as names and
--     hashes in two arrays of one length, and only sagas of one of those
--     pairs are taken. The others stay due: the reconciler reports them
--     (a worker that holds their definition fires them). The two-argument
--     form stays for clients older than this schema.
CREATE FUNCTION ferry.saga_lock_next_due(p_now_ms bigint, p_skip uuid[], p_names text[],
                                         p_hashes text[])
RETURNS TABLE (id uuid, definition text, definition_hash text, context text, version bigint,
               engine text, now_ms bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF cardinality(p_names) IS DISTINCT FROM cardinality(p_hashes) THEN
        RAISE EXCEPTION 'names and hashes are not of one length'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'p_hashes';
    END IF;
    RETURN QUERY
    SELECT s.id, s.definition, s.definition_hash, s.context::text, s.version, s.engine::text,
           floor(extract(epoch FROM now()) * 1000)::bigint
      FROM ferry.saga s
     WHERE s.state IN ('running', 'compensating')
       AND s.deadline <= coalesce(to_timestamp(p_now_ms / 1000.0), now())
       AND s.id <> ALL (coalesce(p_skip, '{}'))
       AND (s.definition, s.definition_hash) IN (SELECT d.n, d.h
                                                   FROM unnest(p_names, p_hashes) AS d (n, h))
     ORDER BY s.deadline
     LIMIT 1
       FOR UPDATE SKIP LOCKED;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.saga_lock_next_due(bigint, uuid[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.saga_lock_next_due(bigint, uuid[], text[], text[])
    TO ferry_writer, ferry_reconciler;
