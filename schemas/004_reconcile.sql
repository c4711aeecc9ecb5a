-- ferry schema, version 4: what ferry-reconcile needs (reconciler/).
--
-- The reconciler sweeps for to-dos that never executed (DESIGN.md,
-- "Reconcile"). It keeps three records of its own:
--
--   ferry.dead_letter_log    every dead letter replayed or discarded, with
--                            who asked, why, and the whole letter as it
--                            was: a discard drops a message from the flow,
--                            never from the record;
--   ferry.reconcile_action   per (rule, key), the last repair message a
--                            compliance rule emitted, so that a row the
--                            service has not dealt with yet is not sent
--                            again until the rule's repeat_after passed;
--   ferry.reconcile_pass     one row per repair pass: who ran it, when,
--                            and its report.

CREATE TABLE ferry.dead_letter_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dead_letter_id  bigint      NOT NULL,
    message_id      uuid        NOT NULL,
    consumer        text        NOT NULL,
    topic           text        NOT NULL,
    aggregateid     text        NOT NULL,
    seq             bigint      NOT NULL,
    action          text        NOT NULL CHECK (action IN ('replay', 'discard')),
    actor           text        NOT NULL,
    reason          text        NOT NULL,
    letter          jsonb       NOT NULL,   -- the ferry.dead_letter row, whole
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_log_message ON ferry.dead_letter_log (message_id);

CREATE TABLE ferry.reconcile_action (
    rule        text        NOT NULL,
    key         text        NOT NULL,
    message_id  uuid        NOT NULL,
    emitted_at  timestamptz NOT NULL DEFAULT now(),
    times       integer     NOT NULL DEFAULT 1,   -- repair messages sent for this row so far
    PRIMARY KEY (rule, key)
);

CREATE TABLE ferry.reconcile_pass (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    holder       text        NOT NULL,
    actor        text        NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    status       integer     NOT NULL,            -- the exit status, fsck's
    report       jsonb       NOT NULL
);

-- Published rows kept under the relay's mark retention are purged by age:
-- the purge finds them by this index, without touching unpublished rows.
CREATE INDEX outbox_published ON ferry.outbox (published_at)
    WHERE published_at IS NOT NULL;

-- Rows the relay failed to deliver (attempts > 0): few, and found by the
-- over-attempted check without reading the healthy rest of the outbox.
CREATE INDEX outbox_attempted ON ferry.outbox (attempts)
    WHERE attempts > 0 AND published_at IS NULL;

-- The reconciler moves over-attempted outbox rows to the dead letters and
-- purges published ones, so it may delete outbox rows; and it keeps its
-- own records.
GRANT DELETE ON ferry.outbox TO ferry_reconciler;
REVOKE ALL ON ferry.dead_letter_log, ferry.reconcile_action, ferry.reconcile_pass FROM PUBLIC;
GRANT SELECT, INSERT ON ferry.dead_letter_log TO ferry_reconciler;
GRANT SELECT, INSERT, DELETE ON ferry.reconcile_pass TO ferry_reconciler;   -- kept 30 days
GRANT SELECT, INSERT, UPDATE, DELETE ON ferry.reconcile_action TO ferry_reconciler;
