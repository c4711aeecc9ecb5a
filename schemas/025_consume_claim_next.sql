-- ferry schema, version 25: a batch's usual claims without its payloads
-- and headers (issue 13 item 1; protocol version 1.3, an added function).
--
-- What changes, and why:
--
--   * ferry.consume_claim_next(consumer, ids, topics, keys, seqs,
--     discarded => NULL, first_any => false) claims, in the caller's
--     transaction, the messages that consume_claim_many claims in its
--     one-statement path: those of each key that are, in the arrays'
--     order, the next positions of their key (a key not parked before
--     them; a key the consumer has not seen, from position 1, or any with
--     first_any), with ids not seen before. For those it answers what
--     consume_claim_many would. Every other message it leaves alone and
--     answers with a NULL verdict: the caller claims those next, in the
--     same transaction and in the arrays' order, with consume_claim_many
--     (or consume_claim). Keys do not affect one another's claims, so the
--     answers are those consume_claim_many gives the whole batch.
--     discarded[i] says whether message i carries the header
--     ferry_discarded (consume_claim_many's headers ? 'ferry_discarded').
--   * Why: consume_claim_many takes every message's payload and headers,
--     which only a message that must be held needs. bench-consume's
--     batches of 100 spent 1 of the claim's 3.7 ms on the server parsing
--     the headers as jsonb[], and the client made a JSON text of each
--     message's headers for it. Also, the held copies of a key are looked
--     for here once per key, and again (per message, for drain, and for
--     the key's ready flag) only when it has some: consume_claim_many
--     looks once per key and once per message. Measured on one
--     connection, 100 messages over 100 keys the consumer has seen: 3.6
--     ms a batch with consume_claim_many, 2.3 with this.
--   * An id given twice in the arrays, or one the inbox already has
--     among the messages it would claim, makes it claim nothing (every
--     verdict NULL), as either sends consume_claim_many to its one-by-one
--     path.
--
-- Names, signatures, grants and meanings of the protocol's other
-- functions are unchanged: protocol version 1 (consume_protocol() still
-- says 1; a client looks for the function with to_regprocedure).

CREATE FUNCTION ferry.consume_claim_next(consumer text, ids uuid[], topics text[], keys text[],
                                         seqs bigint[], discarded boolean[] DEFAULT NULL,
                                         first_any boolean DEFAULT false)
RETURNS TABLE (verdict text, drain boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- In the database's collation, whatever the caller's (schema 16).
    v_consumer text COLLATE "default" := $1;
    v_n integer := coalesce(cardinality($2), 0);
    v_verdict text[];
    v_drain boolean[];
BEGIN
    PERFORM ferry.consumer_guard_(v_consumer);
    IF v_n > 10000 THEN
        RAISE EXCEPTION 'at most 10000 messages a call'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'ids';
    END IF;
    IF coalesce(cardinality($3), 0) <> v_n OR coalesce(cardinality($4), 0) <> v_n
       OR coalesce(cardinality($5), 0) <> v_n THEN
        RAISE EXCEPTION 'ids, topics, keys and seqs must be of one length'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'seqs';
    END IF;
    IF $6 IS NOT NULL AND cardinality($6) <> v_n THEN
        RAISE EXCEPTION 'discarded must be NULL or as long as ids'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'discarded';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;

    -- consume_claim_many's one-statement path (schema 20), with the held
    -- copies looked for once per key first (kh.held), and only where
    -- there are some afterwards.
    IF (SELECT count(DISTINCT u.id) FROM unnest($2) u(id)) = v_n THEN
        BEGIN
            WITH m AS (
                SELECT u.n, u.id, u.topic COLLATE "default" AS topic,
                       u.key COLLATE "default" AS key, u.seq,
                       row_number() OVER w AS r, count(*) OVER w2 AS cnt,
                       first_value(u.seq) OVER w AS s1
                  FROM unnest($2, $3, $4, $5) WITH ORDINALITY AS u(id, topic, key, seq, n)
                WINDOW w AS (PARTITION BY u.topic, u.key ORDER BY u.n),
                       w2 AS (PARTITION BY u.topic, u.key)),
            ks AS (
                SELECT m.topic, m.key, min(m.s1) AS s1, max(m.cnt) AS cnt,
                       (array_agg(m.id ORDER BY m.n DESC))[1] AS last_id
                  FROM m GROUP BY m.topic, m.key
                HAVING bool_and(m.seq IS NOT NULL AND m.seq = m.s1 + m.r - 1)
                   AND min(m.s1) >= 1
                   AND min(m.s1) <= 9223372036854775806 - max(m.cnt) + 1),
            kh AS (
                SELECT ks.*,
                       EXISTS (SELECT 1 FROM ferry.inbox_held h
                                WHERE h.consumer = v_consumer AND h.topic = ks.topic
                                  AND h.key = ks.key AND h.seq <= ks.s1 + ks.cnt) AS held
                  FROM ks),
            fresh AS (
                INSERT INTO ferry.inbox_key AS k (consumer, topic, key, seq, ready)
                SELECT v_consumer, kh.topic, kh.key, kh.s1 + kh.cnt - 1,
                       kh.held AND EXISTS (
                           SELECT 1 FROM ferry.inbox_held h
                            WHERE h.consumer = v_consumer AND h.topic = kh.topic
                              AND h.key = kh.key AND h.seq <= kh.s1 + kh.cnt
                              AND NOT (h.seq = kh.s1 + kh.cnt - 1
                                       AND h.message_id = kh.last_id))
                  FROM kh
                 WHERE (kh.s1 = 1 OR coalesce($7, false))
                   AND NOT EXISTS (SELECT 1 FROM ferry.inbox_key k2
                                    WHERE k2.consumer = v_consumer AND k2.topic = kh.topic
                                      AND k2.key = kh.key)
                ON CONFLICT DO NOTHING
                RETURNING k.topic, k.key, k.parked_seq),
            up AS (
                UPDATE ferry.inbox_key k
                   SET seq = kh.s1 + kh.cnt - 1,
                       ready = kh.held AND EXISTS (
                           SELECT 1 FROM ferry.inbox_held h
                            WHERE h.consumer = k.consumer AND h.topic = k.topic
                              AND h.key = k.key AND h.seq <= kh.s1 + kh.cnt
                              AND NOT (h.seq = kh.s1 + kh.cnt - 1
                                       AND h.message_id = kh.last_id)
                              AND (h.seq <= kh.s1 + kh.cnt - 1 OR k.parked_seq IS NULL
                                   OR h.seq < k.parked_seq))
                  FROM kh
                 WHERE k.consumer = v_consumer AND k.topic = kh.topic AND k.key = kh.key
                   AND (k.seq = kh.s1 - 1 OR (k.seq = 0 AND coalesce($7, false)))
                   AND (k.parked_seq IS NULL OR kh.s1 + kh.cnt - 1 < k.parked_seq)
                RETURNING k.topic, k.key, k.parked_seq, kh.held),
            -- A new key's held copies are looked for again (it is new
            -- once).
            claimed AS (
                SELECT * FROM up UNION ALL SELECT fresh.*, true FROM fresh),
            mine AS (
                SELECT m.*, claimed.parked_seq, claimed.held
                  FROM m JOIN claimed USING (topic, key)),
            -- No ON CONFLICT: an id the inbox has is a unique_violation,
            -- which undoes this block's claims (below).
            ins AS (
                INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
                SELECT v_consumer, mine.id, mine.topic, mine.key, mine.seq FROM mine),
            answer AS (
                SELECT mine.n,
                       CASE WHEN coalesce($6[mine.n::integer], false) THEN 'discarded'
                            ELSE 'apply' END AS verdict,
                       mine.held AND EXISTS (
                           SELECT 1 FROM ferry.inbox_held h
                            WHERE h.consumer = v_consumer AND h.topic = mine.topic
                              AND h.key = mine.key AND h.seq <= mine.seq + 1
                              AND NOT (h.seq = mine.seq AND h.message_id = mine.id)
                              AND (h.seq <= mine.seq OR mine.parked_seq IS NULL
                                   OR h.seq < mine.parked_seq)) AS drain
                  FROM mine)
            SELECT array_agg(a.verdict ORDER BY g.n), array_agg(a.drain ORDER BY g.n)
              INTO v_verdict, v_drain
              FROM generate_series(1, v_n) AS g(n) LEFT JOIN answer a ON a.n = g.n;
        EXCEPTION WHEN unique_violation THEN
            v_verdict := NULL;
            v_drain := NULL;
        END;
    END IF;

    IF v_verdict IS NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::boolean FROM generate_series(1, v_n);
    ELSE
        RETURN QUERY SELECT u.v, u.d FROM unnest(v_verdict, v_drain) WITH ORDINALITY AS u(v, d, n)
                      ORDER BY u.n;
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION ferry.consume_claim_next(text, uuid[], text[], text[], bigint[], boolean[],
                                                boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ferry.consume_claim_next(text, uuid[], text[], text[], bigint[],
                                                   boolean[], boolean) TO ferry_consumer;
