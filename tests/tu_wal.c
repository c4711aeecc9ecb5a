/*
 * tu_wal.c — see tu_wal.h.
 */
#include "tu_wal.h"

#include <stdlib.h>

#include "testutil.h"

/* pgoutput's Message ('M'): flags (1 byte), LSN (8), the prefix as a
 * C string, the content's length (4), the content. With the prefix
 * "ferry" the content starts at byte 21 (1-based). The content is emit's
 * (schemas/011_wal.sql): a header line, then the fields back to back. */
static const char msgs_fn[] =
    "CREATE OR REPLACE FUNCTION public.tu_wal_msgs() RETURNS TABLE ("
    "  ord bigint, lsn pg_lsn, xid xid, token text, id uuid, seq bigint, created_us bigint,"
    "  topic text, key text, aggtype text, type text, headers jsonb, payload jsonb) "
    "LANGUAGE sql AS $$ "
    "WITH c AS (SELECT row_number() OVER () AS ord, c.lsn, c.xid, c.data "
    "             FROM pg_logical_slot_peek_binary_changes('ferry', NULL, NULL, "
    "                  'proto_version', '1', 'publication_names', 'ferry_outbox', "
    "                  'messages', 'true') c), "
    "m AS (SELECT ord, lsn, xid, substring(data FROM 21) AS content FROM c "
    "       WHERE get_byte(data, 0) = 77 "
    "         AND substring(data FROM 11 FOR 6) = '\\x666572727900'::bytea), "
    "h AS (SELECT ord, lsn, xid, content, position('\\x0a'::bytea IN content) AS nl FROM m), "
    "f AS (SELECT ord, lsn, xid, content, nl + 1 AS b, "
    "             string_to_array(convert_from(substring(content FROM 1 FOR nl - 1), 'UTF8'), ' ') a "
    "        FROM h) "
    "SELECT ord, lsn, xid, a[2], a[3]::uuid, a[4]::bigint, a[5]::bigint, "
    "  convert_from(substring(content FROM b FOR a[6]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int FOR a[7]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int FOR a[8]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int "
    "                         FOR a[9]::int), 'UTF8'), "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int + a[9]::int "
    "                         FOR a[10]::int), 'UTF8')::jsonb, "
    "  convert_from(substring(content FROM b + a[6]::int + a[7]::int + a[8]::int + a[9]::int "
    "                         + a[10]::int), 'UTF8')::jsonb "
    "  FROM f ORDER BY ord $$";

void tu_wal_prepare(PGconn *c)
{
    tu_exec(c, "SELECT pg_create_logical_replication_slot('ferry', 'pgoutput') "
               "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'ferry')");
    tu_exec(c, "SELECT pg_replication_slot_advance('ferry', pg_current_wal_lsn())");
    tu_exec(c, msgs_fn);
}

void tu_wal_mode(PGconn *c, const char *mode)
{
    char *sql = tu_sprintf("UPDATE ferry.settings SET emit_mode = '%s'", mode);
    tu_exec(c, sql);
    free(sql);
}
