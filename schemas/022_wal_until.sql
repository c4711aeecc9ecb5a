-- ferry schema, version 22: leaving wal mode keeps each key's order.
--
-- What changes, and why:
--
--   * ferry.settings.wal_until_lsn: where WAL was when emit_mode last
--     turned from 'wal' to 'table' (NULL while in wal mode, and before
--     any such turn). The table path holds a row back until the WAL
--     source's slot is confirmed past the row's wal_lsn (schema 14) only
--     while emit_mode was 'wal'. But a message emitted in wal mode just
--     before the turn may not be published yet (the WAL relay down,
--     behind, stuck on Kafka), and its key's next message, emitted in
--     table mode after the turn, went out first: position 2 in Kafka
--     before position 1 (tests/test_wal_outage.c,
--     leaving_wal_mode_keeps_each_keys_order). Now the table path also
--     holds rows back while the slot has not confirmed past the turn:
--     until then it cannot tell which keys have messages still in WAL.
--     Once the WAL relay is past the turn, nothing waits. A lost slot
--     never confirms: its messages may be gone, and nothing waits for it
--     (README, "When the slot is lost"); a slot dropped likewise.
--   * A trigger of its own records the turn, beside the one that guards
--     emit_mode (schema 11), which stays as it is. BEFORE triggers fire
--     in name order: the guard refuses a bad turn first.
ALTER TABLE ferry.settings ADD COLUMN wal_until_lsn pg_lsn;

CREATE FUNCTION ferry.settings_wal_turn() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NEW.emit_mode = 'wal' THEN
        NEW.wal_until_lsn := NULL;
    ELSIF OLD.emit_mode = 'wal' THEN
        NEW.wal_until_lsn := pg_current_wal_insert_lsn();
    END IF;
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.settings_wal_turn() FROM PUBLIC;
CREATE TRIGGER settings_wal_turn BEFORE UPDATE OF emit_mode ON ferry.settings
    FOR EACH ROW EXECUTE FUNCTION ferry.settings_wal_turn();
