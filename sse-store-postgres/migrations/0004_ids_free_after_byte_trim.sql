-- A publisher id is free again once its event has left retention by bytes too (below
-- streams.floor), not only by count or age: 0003's append still matched such an event until
-- the sweeper deleted it, so a publisher reusing the id got `duplicate` and its new event was
-- dropped. The same function as in 0003 otherwise.

CREATE OR REPLACE FUNCTION {schema}.append(
    p_stream     text,
    p_epoch      bigint,
    p_events     text[],
    p_ids        text[],
    p_data       text[],
    p_max_len    bigint,
    p_max_age_ms bigint,
    p_channel    text,
    p_max_bytes  bigint DEFAULT 16777216
) RETURNS TABLE (r_epoch bigint, r_position bigint, r_duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_n     bigint := coalesce(cardinality(p_data), 0);
    v_epoch bigint;
    v_head  bigint;
    v_time  timestamptz;
    v_new   bigint;
    v_floor bigint;
    v_added bigint;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;

    IF p_ids IS NULL THEN
        INSERT INTO {schema}.streams AS s (name, epoch, head, last_time)
        VALUES (p_stream, p_epoch, v_n, clock_timestamp())
        ON CONFLICT (name) DO UPDATE
            SET head = s.head + v_n,
                last_time = greatest(s.last_time, clock_timestamp())
        RETURNING s.epoch, s.head - v_n, s.last_time INTO v_epoch, v_head, v_time;

        INSERT INTO {schema}.events (stream, position, event, publisher_id, data, appended_at, size)
        SELECT p_stream, v_head + t.ord, t.ev, NULL, t.dat, v_time, octet_length(t.dat)
        FROM unnest(p_events, p_data) WITH ORDINALITY AS t (ev, dat, ord);

        SELECT coalesce(sum(octet_length(d)), 0) INTO v_added FROM unnest(p_data) AS d;
        PERFORM {schema}.retain_bytes(p_stream, v_head + v_n, v_added, p_max_len, p_max_bytes);
        PERFORM {schema}.notify_appended(p_channel, p_stream, v_epoch, v_head + 1, v_head + v_n, v_time, p_data);
        RETURN QUERY SELECT v_epoch, v_head + g, false FROM generate_series(1::bigint, v_n) AS g;
        RETURN;
    END IF;

    INSERT INTO {schema}.streams AS s (name, epoch, head, last_time)
    VALUES (p_stream, p_epoch, 0, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
        SET last_time = greatest(s.last_time, clock_timestamp())
    RETURNING s.epoch, s.head, s.last_time, s.floor INTO v_epoch, v_head, v_time, v_floor;

    -- An id is free again once its event has left retention, by count, age or bytes, swept
    -- yet or not. Such events are in the expired prefix of the log, so deleting them leaves
    -- no hole.
    DELETE FROM {schema}.events AS e
    WHERE e.stream = p_stream
      AND e.publisher_id = ANY (p_ids)
      AND (e.position <= v_head - p_max_len
           OR e.position < v_floor
           OR e.appended_at <= v_time - interval '1 millisecond' * p_max_age_ms);

    RETURN QUERY
    WITH input AS (
        SELECT t.ord, t.ev, t.pid, t.dat
        FROM unnest(p_events, p_ids, p_data) WITH ORDINALITY AS t (ev, pid, dat, ord)
    ), known AS (
        SELECT e.publisher_id AS pid, e.position AS pos
        FROM {schema}.events AS e
        WHERE e.stream = p_stream AND e.publisher_id = ANY (p_ids)
    ), fresh AS (
        -- Every event without an id, and the first of each id not already retained.
        SELECT i.ord, i.ev, i.pid, i.dat, v_head + row_number() OVER (ORDER BY i.ord) AS pos
        FROM input AS i
        WHERE i.pid IS NULL
           OR (NOT EXISTS (SELECT 1 FROM known AS k WHERE k.pid = i.pid)
               AND i.ord = (SELECT min(j.ord) FROM input AS j WHERE j.pid = i.pid))
    ), inserted AS (
        INSERT INTO {schema}.events (stream, position, event, publisher_id, data, appended_at, size)
        SELECT p_stream, f.pos, f.ev, f.pid, f.dat, v_time, octet_length(f.dat) FROM fresh AS f
        RETURNING 1
    )
    SELECT v_epoch,
           coalesce(f.pos, k.pos, (SELECT f2.pos FROM fresh AS f2 WHERE f2.pid = i.pid)),
           f.pos IS NULL
    FROM input AS i
    LEFT JOIN fresh AS f ON f.ord = i.ord
    LEFT JOIN known AS k ON k.pid = i.pid AND f.ord IS NULL
    ORDER BY i.ord;

    SELECT count(*), coalesce(sum(e.size), 0) INTO v_new, v_added
    FROM {schema}.events AS e
    WHERE e.stream = p_stream AND e.position > v_head;

    IF v_new > 0 THEN
        UPDATE {schema}.streams SET head = v_head + v_new WHERE name = p_stream;
        PERFORM {schema}.retain_bytes(p_stream, v_head + v_new, v_added, p_max_len, p_max_bytes);
        PERFORM {schema}.notify_appended(p_channel, p_stream, v_epoch, v_head + 1, v_head + v_new, v_time, p_data);
    END IF;
END;
$$;
