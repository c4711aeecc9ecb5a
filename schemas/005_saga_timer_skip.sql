-- ferry schema, version 5: a timer worker can get past a saga it cannot run.
--
-- ferry.saga_next_due(now) hands back the saga with the earliest due
-- timer, so a worker that fails on that one saga (its definition changed,
-- say) was handed the same row again and again, and no other saga's timer
-- fired (issue 12 item 8). This overload leaves out the sagas the caller
-- names: ferry_saga_fire_timers() passes those it already failed on in
-- this call. The row itself is not touched, so the reconciler still sees
-- the saga overdue and reports it.

CREATE FUNCTION ferry.saga_next_due(p_now_ms bigint, p_skip uuid[])
RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.id FROM ferry.saga s
     WHERE s.state IN ('running', 'compensating')
       AND s.deadline <= to_timestamp(p_now_ms / 1000.0)
       AND s.id <> ALL (coalesce(p_skip, '{}'))
     ORDER BY s.deadline
     LIMIT 1
       FOR UPDATE SKIP LOCKED;
$fn$;

REVOKE ALL ON FUNCTION ferry.saga_next_due(bigint, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.saga_next_due(bigint, uuid[])
    TO ferry_writer, ferry_reconciler;
