-- sse-store-postgres, migration 1: tables, indexes and the append function.
--
-- `{schema}` stands for the configured schema, quoted; the migrator substitutes it and runs
-- this file in one transaction, then records it in {schema}.sse_migrations.

-- One row per stream log. Every append locks this row, which orders concurrent appends to a
-- stream: positions are handed out, and committed, in order (a sequence would not do: a
-- reader could see position 11 committed before 10 and skip 10 for good).
CREATE TABLE {schema}.streams (
    name      text        PRIMARY KEY,
    -- Random when the row is created: a stream whose row is lost and comes back starts a
    -- new epoch, so no cursor into the old log is ever mistaken for one into the new.
    epoch     bigint      NOT NULL,
    -- The newest position ever appended in this epoch.
    head      bigint      NOT NULL,
    -- The append time of the newest event (never moves backwards), see events.appended_at.
    last_time timestamptz NOT NULL
);

CREATE TABLE {schema}.events (
    -- Dropping a stream row drops its log with it: positions restart under a new epoch only.
    stream       text        NOT NULL REFERENCES {schema}.streams (name) ON DELETE CASCADE,
    position     bigint      NOT NULL,
    -- The SSE event name, if any.
    event        text,
    -- The publisher's idempotency key, if any.
    publisher_id text,
    data         text        NOT NULL,
    -- Taken under the stream row's lock and never less than the previous event's, so that
    -- within a stream it grows with the position: the events younger than max_age are a
    -- suffix of the log, and retention by age never punches a hole into it.
    appended_at  timestamptz NOT NULL,
    PRIMARY KEY (stream, position)
);

-- Idempotency: at most one retained event per (stream, publisher id), found by index.
CREATE UNIQUE INDEX events_publisher_id ON {schema}.events (stream, publisher_id)
    WHERE publisher_id IS NOT NULL;

-- Retention by age: the sweeper deletes `appended_at <= cutoff` by an index range scan.
CREATE INDEX events_appended_at ON {schema}.events (appended_at);

CREATE TABLE {schema}.sessions (
    id         bytea       PRIMARY KEY CHECK (octet_length(id) = 16),
    principal  text,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    cursor     text
);

-- Session expiry: the sweeper deletes `expires_at <= now` by an index range scan.
CREATE INDEX sessions_expires_at ON {schema}.sessions (expires_at);

-- Appends a batch of events to one stream, in one transaction (the caller's statement), and
-- returns one row per event: the stream's epoch, the event's position, and whether it was a
-- duplicate of a retained event with the same publisher id (ADR 0004).
--
-- p_ids is NULL when no event of the batch has a publisher id: the common case takes the row
-- lock and the new head in one upsert. With ids, the row is locked first so that the
-- duplicate check (each statement of a volatile function sees a fresh snapshot) sees every
-- earlier append to the stream.
--
-- The NOTIFY carries `<epoch> <first> <last> <stream>` only (payloads are limited to 8000
-- bytes): listeners read the events from the table. It is delivered at commit, and
-- notifications of one stream commit in position order because the row lock orders them.
CREATE FUNCTION {schema}.append(
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

        PERFORM pg_notify(p_channel, concat_ws(' ', v_epoch, v_head + 1, v_head + v_n, p_stream));
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
        PERFORM pg_notify(p_channel, concat_ws(' ', v_epoch, v_head + 1, v_head + v_new, p_stream));
    END IF;
END;
$$;
