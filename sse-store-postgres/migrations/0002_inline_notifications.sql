-- Notifications carry small appends whole, so that listeners need not read each new event
-- back from the table (about half of the statements per published event during a fan-out).
--
-- Payload: `<epoch> <first> <last> <stream>`, as before, then, when the events fit,
-- ` <append time, ms since the epoch> <JSON array of [event, publisher_id, data] per position>`.
-- Stream names hold no space, so the fields split on the first five spaces. The events are
-- added only while the whole payload stays under NOTIFY's 8000 bytes, and looked at only when
-- the batch's data is small (p_data is an upper bound of what was inserted). An instance of an
-- earlier version cannot read the longer payload: it resynchronises its windows from the
-- tables instead, which loses nothing (upgrade every instance).
CREATE FUNCTION {schema}.notify_appended(
    p_channel text,
    p_stream  text,
    p_epoch   bigint,
    p_first   bigint,
    p_last    bigint,
    p_time    timestamptz,
    p_data    text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_head   text := concat_ws(' ', p_epoch, p_first, p_last, p_stream);
    v_events text;
BEGIN
    IF (SELECT coalesce(sum(octet_length(d)), 0) FROM unnest(p_data) AS d) <= 6000 THEN
        SELECT json_agg(json_build_array(e.event, e.publisher_id, e.data) ORDER BY e.position)::text
        INTO v_events
        FROM {schema}.events AS e
        WHERE e.stream = p_stream AND e.position BETWEEN p_first AND p_last;
        IF v_events IS NOT NULL THEN
            v_events := concat_ws(' ', v_head, (extract(epoch FROM p_time) * 1000)::int8, v_events);
            IF octet_length(v_events) < 8000 THEN
                PERFORM pg_notify(p_channel, v_events);
                RETURN;
            END IF;
        END IF;
    END IF;
    PERFORM pg_notify(p_channel, v_head);
END;
$$;

-- The same function as in 0001, announcing appends through notify_appended.
CREATE OR REPLACE FUNCTION {schema}.append(
    p_stream     text,
    p_epoch      bigint,
    p_events     text[],
    p_ids        text[],
    p_data       text[],
    p_max_len    bigint,
    p_max_age_ms bigint,
    p_channel    text
) RETURNS TABLE (r_epoch bigint, r_position bigint, r_duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_n     bigint := coalesce(cardinality(p_data), 0);
    v_epoch bigint;
    v_head  bigint;
    v_time  timestamptz;
    v_new   bigint;
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

        INSERT INTO {schema}.events (stream, position, event, publisher_id, data, appended_at)
        SELECT p_stream, v_head + t.ord, t.ev, NULL, t.dat, v_time
        FROM unnest(p_events, p_data) WITH ORDINALITY AS t (ev, dat, ord);

        PERFORM {schema}.notify_appended(p_channel, p_stream, v_epoch, v_head + 1, v_head + v_n, v_time, p_data);
        RETURN QUERY SELECT v_epoch, v_head + g, false FROM generate_series(1::bigint, v_n) AS g;
        RETURN;
    END IF;

    INSERT INTO {schema}.streams AS s (name, epoch, head, last_time)
    VALUES (p_stream, p_epoch, 0, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
        SET last_time = greatest(s.last_time, clock_timestamp())
    RETURNING s.epoch, s.head, s.last_time INTO v_epoch, v_head, v_time;

    -- An id is free again once its event has left retention, swept yet or not. Such events
    -- are in the expired prefix of the log, so deleting them leaves no hole.
    DELETE FROM {schema}.events AS e
    WHERE e.stream = p_stream
      AND e.publisher_id = ANY (p_ids)
      AND (e.position <= v_head - p_max_len
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
        INSERT INTO {schema}.events (stream, position, event, publisher_id, data, appended_at)
        SELECT p_stream, f.pos, f.ev, f.pid, f.dat, v_time FROM fresh AS f
        RETURNING 1
    )
    SELECT v_epoch,
           coalesce(f.pos, k.pos, (SELECT f2.pos FROM fresh AS f2 WHERE f2.pid = i.pid)),
           f.pos IS NULL
    FROM input AS i
    LEFT JOIN fresh AS f ON f.ord = i.ord
    LEFT JOIN known AS k ON k.pid = i.pid AND f.ord IS NULL
    ORDER BY i.ord;

    SELECT count(*) INTO v_new
    FROM {schema}.events AS e
    WHERE e.stream = p_stream AND e.position > v_head;

    IF v_new > 0 THEN
        UPDATE {schema}.streams SET head = v_head + v_new WHERE name = p_stream;
        PERFORM {schema}.notify_appended(p_channel, p_stream, v_epoch, v_head + 1, v_head + v_new, v_time, p_data);
    END IF;
END;
$$;
