-- ferry schema, version 23: the reconciler rewrites no dead letter.
--
-- What changes, and why:
--
--   * ferry_reconciler could UPDATE any dead letter so long as the row
--     came out a relay's (schema 8's dead_letter_reconciler_update: USING
--     true, WITH CHECK consumer = '' AND shard >= 0), and DELETE any. So
--     the role could rewrite a letter's payload and replay it (a message
--     nobody emitted), turn a consumer's letter into the relay's, or
--     delete one past ferry.dead_letter_log, the record of every decision.
--     README ("Schema and roles") says it may not: it replays and
--     discards through ferry.replay_dead_letter / discard_dead_letter,
--     which run as the schema's owner and log nothing themselves;
--     `ferry-reconcile repair --replay/--discard` locks the letter first
--     (SELECT ... FOR UPDATE, which needs an UPDATE policy's USING) and
--     logs the decision. Nothing of the reconciler's updates or deletes a
--     letter by hand (tests/test_privileges.c,
--     reconciler_rewrites_and_takes_no_dead_letter).
--   * Now its UPDATE policy lets it lock any letter and change none
--     (WITH CHECK false), and it has no DELETE policy: a delete by the
--     role finds no row. The relay's policies, and the INSERT policy both
--     share (relay dead letters only), stay as they are.

DROP POLICY dead_letter_reconciler_update ON ferry.dead_letter;
CREATE POLICY dead_letter_reconciler_update ON ferry.dead_letter FOR UPDATE
    TO ferry_reconciler USING (true) WITH CHECK (false);
DROP POLICY dead_letter_reconciler_delete ON ferry.dead_letter;
