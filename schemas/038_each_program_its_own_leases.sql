-- ferry schema, version 38: the relay writes only the relays' leases.
--
-- What changes, and why:
--
--   * ferry_relay had INSERT, UPDATE and DELETE on every row of
--     ferry.lease, the reconciler's lease ("reconciler") included: a relay
--     role could take it for an hour and so stop every `ferry-reconcile
--     repair` and `run` (an outside audit). Row-level security now keeps
--     the relay's writes to the names the relay uses: "shard:N" (the
--     shards), "relay:HOLDER" (its heartbeat) and "wal:SLOT" (the WAL
--     source's slot). It still reads every lease (status shows them all).
--   * The reconciler keeps writing any lease: expiring a dead relay's is
--     its job. The table's owner, who runs migrations and may run either
--     program, is not subject to the policies (no FORCE), nor is a
--     superuser.
ALTER TABLE ferry.lease ENABLE ROW LEVEL SECURITY;

CREATE POLICY lease_read ON ferry.lease FOR SELECT
    USING (true);
CREATE POLICY lease_relay ON ferry.lease FOR ALL TO ferry_relay
    USING (name ~ '^(shard|relay|wal):')
    WITH CHECK (name ~ '^(shard|relay|wal):');
CREATE POLICY lease_reconciler ON ferry.lease FOR ALL TO ferry_reconciler
    USING (true)
    WITH CHECK (true);
