-- ferry schema, version 31: emit_mode 'wal' is refused while the slot is
-- lost, as it is while the slot is missing.
--
-- What changes, and why:
--
--   * ferry.settings_emit_mode_guard() (schema 11) refused emit_mode
--     'wal' without the logical slot, but took it with a slot PostgreSQL
--     had invalidated (pg_replication_slots.wal_status = 'lost'): emit then
--     wrote messages as logical messages that no slot would ever decode,
--     and nothing went to the table (an outside audit). The README treats
--     a lost slot as a missing one ("set emit_mode = 'table'", then
--     `ferry-relay slot recreate`); now the guard does too. Switching to
--     'table' is never refused.
--
-- Nothing else changes.

CREATE OR REPLACE FUNCTION ferry.settings_emit_mode_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_status text;
BEGIN
    IF NEW.emit_mode <> 'wal' THEN
        RETURN NEW;
    END IF;
    SELECT coalesce(wal_status, '') INTO v_status FROM pg_replication_slots
     WHERE slot_name = NEW.wal_slot AND database = current_database()
       AND slot_type = 'logical' AND plugin = 'pgoutput';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'emit_mode wal needs the logical replication slot "%" (plugin pgoutput) in this database: create it first (ferry-relay slot create)',
                        NEW.wal_slot
            USING ERRCODE = 'object_not_in_prerequisite_state', COLUMN = 'emit_mode';
    END IF;
    IF v_status = 'lost' THEN
        RAISE EXCEPTION 'emit_mode wal needs the logical replication slot "%", which is lost (wal_status lost): nothing would decode what emit writes; recreate it first (ferry-relay slot recreate)',
                        NEW.wal_slot
            USING ERRCODE = 'object_not_in_prerequisite_state', COLUMN = 'emit_mode';
    END IF;
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.settings_emit_mode_guard() FROM PUBLIC;
