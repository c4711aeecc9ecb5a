-- ferry schema, version 44: the reconciler cannot rename its own lease
-- into a relay's either. (A review of schema 41.)
--
-- What changes, and why:
--
--   * ferry.lease_guard (schema 41) looked only at the old name: the
--     reconciler could insert a lease of its own ('x', epoch the largest
--     bigint, expired) and rename it 'shard:0' (its policies are ORed: the
--     expiry one takes any new row that has expired), a relay lease no
--     relay could then acquire ("bigint out of range" on every tick) on a
--     new database, a new shard, a new heartbeat or slot name. The guard
--     now holds when the old or the new name is a relay's: a renamed row
--     is refused.
--   * It recognised the owner by name only; a member of the owner role,
--     which row security treats as the owner, is now one too.

CREATE OR REPLACE FUNCTION ferry.lease_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF (OLD.name ~ '^(shard|relay|wal):' OR NEW.name ~ '^(shard|relay|wal):')
       AND NOT pg_has_role(current_user, 'ferry_relay', 'USAGE')
       AND NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c
                                           WHERE c.oid = TG_RELID), 'USAGE')
       AND (NEW.name IS DISTINCT FROM OLD.name OR NEW.holder IS DISTINCT FROM OLD.holder
            OR NEW.epoch IS DISTINCT FROM OLD.epoch
            OR NEW.acquired_at IS DISTINCT FROM OLD.acquired_at
            OR NEW.renewed_at IS DISTINCT FROM OLD.renewed_at
            OR NEW.expires_at > now()) THEN
        RAISE EXCEPTION 'lease "%" is a relay''s: this role may only expire it',
                        left(CASE WHEN OLD.name ~ '^(shard|relay|wal):' THEN OLD.name
                                  ELSE NEW.name END, 64)
            USING ERRCODE = 'insufficient_privilege', TABLE = 'lease', SCHEMA = 'ferry';
    END IF;
    RETURN NEW;
END
$fn$;
