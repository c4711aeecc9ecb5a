-- ferry schema, version 46: the consumer protocol's and the saga store's
-- work grows with what they are asked, not with the tables. (An outside
-- audit of plans, after schema 45.)
--
-- What changes, and why:
--
--   * PostgreSQL plans a function's statements once a session, after its
--     first calls, with the estimates of then, and keeps the plans until
--     the next ANALYZE of their tables. Made while the inbox tables were
--     empty or small (a new database, a new consumer, the first held
--     copies), they stayed while the tables grew, and read far more than
--     they were asked to: a batch claim of 50 messages read 500,000 rows
--     of ferry.inbox_held (each key's look for held copies walked every
--     held copy of the consumer) and 5,028 of ferry.inbox_key (a
--     sequential scan, planned while the table was one page); one claim
--     and finish, 20,114 and 10,000; a saga event read the whole audit
--     trail for the saga's last number (40,055 rows). In production each
--     lasted until autovacuum next analysed the table, in a benchmark for
--     the whole run. test_lang_protocol a_batch_reads_rows_of_its_own_keys_only,
--     one_message_reads_rows_of_its_own_key_only and
--     a_saga_event_reads_its_own_audit_only count them.
--   * Two causes. (1) Both indexes of ferry.inbox_held began with
--     consumer, so on a small table a look-up by (consumer, topic, key,
--     seq) could take the primary key (consumer, message_id) and one by
--     (consumer, message_id) the position index, reading every row of the
--     consumer through the first column. The primary key is now
--     (message_id, consumer): each look-up has one index whose leading
--     columns it names. (2) Sequential scans, cheapest while a table is a
--     page or two, are turned off in the consumer protocol's functions and
--     the saga store's and participants' (enable_seqscan = off, set for
--     the call as search_path is): an index then serves every look-up
--     whatever the estimates said when the plan was made. A statement no
--     index can serve is still a sequential scan.
--   * Not emit. Its key row's plan, made on a small ferry.outbox_key, is a
--     sequential scan too (two emits read 10,056 rows of 5,000 keys), but
--     an index scan is the worse plan for a key written many times in one
--     transaction, the batch case: the row's versions form a chain that
--     every look-up through the index follows from its start, which made
--     test_emit's batch of 10,000 messages take minutes instead of a
--     second. (A sequential scan reads them a page at a time.) It is left
--     to autovacuum's ANALYZE, which comes soon on a table that grows.
--     Emits inside the saga store and the participants' calls run with
--     their caller's setting.
--
-- Names, signatures, grants and answers are unchanged.

ALTER TABLE ferry.inbox_held
    DROP CONSTRAINT inbox_held_pkey,
    ADD CONSTRAINT inbox_held_pkey PRIMARY KEY (message_id, consumer);

DO $do$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'ferry'::regnamespace AND p.prokind = 'f'
           AND p.proname = ANY (ARRAY[
               -- the consumer protocol and what it calls
               'consume_claim', 'consume_claim_many', 'consume_claim_next', 'consume_fail',
               'consume_finish', 'consume_finish_many', 'consume_ready', 'consume_skip_gap',
               'inbox_claim', 'inbox_dead_letter', 'inbox_hold', 'inbox_hold_row_',
               'inbox_skip_gap',
               -- sagas and participants
               'saga_begin', 'saga_lock', 'saga_lock_next_due', 'saga_record', 'saga_save',
               'saga_store', 'participant_begin', 'participant_finish', 'participant_record'])
         ORDER BY 1
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = off', f);
    END LOOP;
END
$do$;
