-- ferry schema, version 45: a batch of keys a consumer has not seen costs
-- a look-up per key, however many keys it has seen. (bench-saga's
-- statement profile.)
--
-- What changes, and why:
--
--   * ferry.consume_claim_many (protocol 1.2) and consume_claim_next (1.3)
--     made the rows of a batch's new keys with INSERT ... SELECT ... WHERE
--     NOT EXISTS (the consumer's row of the key) ON CONFLICT DO NOTHING.
--     PostgreSQL turns that NOT EXISTS into an anti-join, and in the plan a
--     session keeps for the function (made after its first calls, with the
--     estimates of then) could choose as its inner side a scan of all the
--     consumer's keys, rescanned for every new key: in bench-saga, where
--     every saga's key is new to the orchestrator and each participant, a
--     batch of 79 new keys read the consumer's 3,992 keys 79 times (0.5 s),
--     and the claims took more of the server's time than anything else.
--     The NOT EXISTS only restated ON CONFLICT DO NOTHING, which looks each
--     row up in the key's unique index before inserting it and skips one
--     that is there: it is gone, and the result is the same row for row
--     (both see the rows committed before the statement; a row another
--     transaction is inserting makes either wait for it).
--
-- Each function is schema 43's but for that clause; names, signatures,
-- grants and answers are unchanged (protocol version 1).

CREATE OR REPLACE FUNCTION ferry.consume_claim_many(consumer text, ids uuid[], topics text[],
                                         keys text[], seqs bigint[],
                                         payloads text[] DEFAULT NULL,
                                         headers jsonb[] DEFAULT NULL,
                                         types text[] DEFAULT NULL,
                                         aggregatetypes text[] DEFAULT NULL,
                                         kafka_partitions integer[] DEFAULT NULL,
                                         kafka_offsets bigint[] DEFAULT NULL,
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
    v_done integer := 0;
    v_one text;
    v_more boolean;
    r record;
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
    IF ($6 IS NOT NULL AND cardinality($6) <> v_n) OR ($7 IS NOT NULL AND cardinality($7) <> v_n)
       OR ($8 IS NOT NULL AND cardinality($8) <> v_n) OR ($9 IS NOT NULL AND cardinality($9) <> v_n)
       OR ($10 IS NOT NULL AND cardinality($10) <> v_n)
       OR ($11 IS NOT NULL AND cardinality($11) <> v_n) THEN
        RAISE EXCEPTION 'payloads, headers, types, aggregatetypes, kafka_partitions and '
                        'kafka_offsets must be NULL or as long as ids'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'payloads';
    END IF;
    -- A NULL id, topic or key is refused naming its argument (schema 43):
    -- a topic or key was a not-null violation of ferry.inbox_key (23502),
    -- which a client takes for its handler's failure.
    IF array_position($2, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'ids must not hold a NULL (element %)', array_position($2, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'ids';
    END IF;
    IF array_position($3, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'topics must not hold a NULL (element %)', array_position($3, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'topics';
    END IF;
    IF array_position($4, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'keys must not hold a NULL (element %)', array_position($4, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'keys';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    v_verdict := array_fill(NULL::text, ARRAY[v_n]);
    v_drain := array_fill(NULL::boolean, ARRAY[v_n]);

    -- The usual keys, all at once; an id the inbox has already (which
    -- consume_claim would call a duplicate and undo) undoes all of it.
    IF (SELECT count(DISTINCT u.id) FROM unnest($2) u(id)) = v_n THEN
        BEGIN
            FOR r IN
                WITH m AS (
                    SELECT u.n, u.id, u.topic COLLATE "default" AS topic,
                           u.key COLLATE "default" AS key, u.seq,
                           row_number() OVER w AS r, count(*) OVER w2 AS cnt,
                           first_value(u.seq) OVER w AS s1,
                           coalesce($7[u.n::integer], '{}') ? 'ferry_discarded' AS discarded
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
                -- A key this consumer has not seen: its first position
                -- (any, with first_any), as inbox_claim would create it.
                fresh AS (
                    INSERT INTO ferry.inbox_key AS k (consumer, topic, key, seq, ready)
                    SELECT v_consumer, ks.topic, ks.key, ks.s1 + ks.cnt - 1,
                           EXISTS (
                               SELECT 1 FROM ferry.inbox_held h
                                WHERE h.consumer = v_consumer AND h.topic = ks.topic
                                  AND h.key = ks.key AND h.seq <= ks.s1 + ks.cnt
                                  AND NOT (h.seq = ks.s1 + ks.cnt - 1
                                           AND h.message_id = ks.last_id))
                      FROM ks
                     WHERE (ks.s1 = 1 OR coalesce($12, false))
                    ON CONFLICT DO NOTHING
                    RETURNING k.topic, k.key, k.parked_seq),
                up AS (
                    UPDATE ferry.inbox_key k
                       SET seq = ks.s1 + ks.cnt - 1,
                           ready = EXISTS (
                               SELECT 1 FROM ferry.inbox_held h
                                WHERE h.consumer = k.consumer AND h.topic = k.topic
                                  AND h.key = k.key AND h.seq <= ks.s1 + ks.cnt
                                  AND NOT (h.seq = ks.s1 + ks.cnt - 1
                                           AND h.message_id = ks.last_id)
                                  AND (h.seq <= ks.s1 + ks.cnt - 1 OR k.parked_seq IS NULL
                                       OR h.seq < k.parked_seq))
                      FROM ks
                     WHERE k.consumer = v_consumer AND k.topic = ks.topic AND k.key = ks.key
                       AND (k.seq = ks.s1 - 1 OR (k.seq = 0 AND coalesce($12, false)))
                       AND (k.parked_seq IS NULL OR ks.s1 + ks.cnt - 1 < k.parked_seq)
                    RETURNING k.topic, k.key, k.parked_seq),
                claimed AS (
                    SELECT * FROM up UNION ALL SELECT * FROM fresh),
                mine AS (
                    SELECT m.*, claimed.parked_seq FROM m JOIN claimed USING (topic, key)),
                ins AS (
                    INSERT INTO ferry.inbox (consumer, message_id, topic, key, seq)
                    SELECT v_consumer, mine.id, mine.topic, mine.key, mine.seq FROM mine
                    ON CONFLICT DO NOTHING
                    RETURNING 1)
                SELECT mine.n, mine.discarded,
                       EXISTS (SELECT 1 FROM ferry.inbox_held h
                                WHERE h.consumer = v_consumer AND h.topic = mine.topic
                                  AND h.key = mine.key AND h.seq <= mine.seq + 1
                                  AND NOT (h.seq = mine.seq AND h.message_id = mine.id)
                                  AND (h.seq <= mine.seq OR mine.parked_seq IS NULL
                                       OR h.seq < mine.parked_seq)) AS more,
                       (SELECT count(*) FROM ins) AS inserted,
                       (SELECT count(*) FROM mine) AS claimed
                  FROM mine
            LOOP
                v_verdict[r.n] := CASE WHEN r.discarded THEN 'discarded' ELSE 'apply' END;
                v_drain[r.n] := r.more;
                v_done := v_done + 1;
                IF r.inserted <> r.claimed THEN
                    RAISE EXCEPTION USING ERRCODE = 'unique_violation',
                                          MESSAGE = 'ferry: consume_claim_many falls back';
                END IF;
            END LOOP;
        EXCEPTION WHEN unique_violation THEN
            v_verdict := array_fill(NULL::text, ARRAY[v_n]);
            v_drain := array_fill(NULL::boolean, ARRAY[v_n]);
            v_done := 0;
        END;
    END IF;

    -- The rest, through consume_claim, in the given order.
    IF v_done < v_n THEN
        FOR i IN 1 .. v_n LOOP
            CONTINUE WHEN v_verdict[i] IS NOT NULL;
            SELECT c.verdict, c.drain INTO v_one, v_more
              FROM ferry.consume_claim(v_consumer, $2[i], $3[i] COLLATE "default",
                                       $4[i] COLLATE "default", $5[i],
                                       $6[i], coalesce($7[i], '{}'), coalesce($8[i], ''),
                                       coalesce($9[i], ''), coalesce($10[i], -1),
                                       coalesce($11[i], -1), coalesce($12, false)) c;
            v_verdict[i] := v_one;
            v_drain[i] := v_more;
        END LOOP;
    END IF;

    RETURN QUERY SELECT u.v, u.d FROM unnest(v_verdict, v_drain) WITH ORDINALITY AS u(v, d, n)
                  ORDER BY u.n;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.consume_claim_next(consumer text, ids uuid[], topics text[], keys text[],
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
    -- A NULL id, topic or key is refused naming its argument (schema 43):
    -- a topic or key was a not-null violation of ferry.inbox_key (23502),
    -- which a client takes for its handler's failure.
    IF array_position($2, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'ids must not hold a NULL (element %)', array_position($2, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'ids';
    END IF;
    IF array_position($3, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'topics must not hold a NULL (element %)', array_position($3, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'topics';
    END IF;
    IF array_position($4, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'keys must not hold a NULL (element %)', array_position($4, NULL)
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'keys';
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
