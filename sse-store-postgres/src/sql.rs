//! The store's statements, written out once per schema when the store connects.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use crate::Schema;

/// One statement: cheap to clone into a query (a reference count).
#[derive(Clone, Debug)]
pub(crate) struct Sql(Arc<str>);

impl Sql {
    fn new(text: String) -> Self {
        Sql(Arc::from(text))
    }

    pub(crate) fn get(&self) -> AssertSqlSafe<Arc<str>> {
        AssertSqlSafe(self.0.clone())
    }
}

/// Every statement the store runs, for one schema.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) append: Sql,
    pub(crate) read: Sql,
    pub(crate) ping: Sql,
    pub(crate) session_create: Sql,
    pub(crate) session_load: Sql,
    pub(crate) session_touch: Sql,
    pub(crate) session_touch_many: Sql,
    pub(crate) session_record_cursors: Sql,
    pub(crate) session_record_cursor: Sql,
    pub(crate) session_delete: Sql,
    pub(crate) sweep_sessions: Sql,
    pub(crate) sweep_count: Sql,
    pub(crate) sweep_age: Sql,
    pub(crate) sweep_streams: Sql,
}

impl Queries {
    pub(crate) fn new(schema: &Schema) -> Self {
        let q = schema.quoted();
        Queries {
            append: Sql::new(format!(
                "SELECT r_epoch, r_position, r_duplicate \
                 FROM {q}.append($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            )),
            // One statement, so one snapshot: epoch, head, oldest and the events agree.
            // `oldest` is the first event inside every retention bound (count, bytes through
            // the stream's floor, age); since append times
            // grow with positions, every event from there to the head is retained, so the
            // page is read from there without filtering again.
            read: Sql::new(format!(
                "SELECT s.epoch, s.head, coalesce(o.position, s.head + 1), \
                        e.position, e.event, e.publisher_id, e.data, \
                        (extract(epoch FROM e.appended_at) * 1000)::int8 \
                 FROM {q}.streams AS s \
                 LEFT JOIN LATERAL ( \
                     SELECT x.position FROM {q}.events AS x \
                     WHERE x.stream = s.name \
                       AND x.position > s.head - $2 \
                       AND x.position >= s.floor \
                       AND x.appended_at > now() - interval '1 millisecond' * $3 \
                     ORDER BY x.position LIMIT 1 \
                 ) AS o ON true \
                 LEFT JOIN LATERAL ( \
                     SELECT x.position, x.event, x.publisher_id, x.data, x.appended_at \
                     FROM {q}.events AS x \
                     WHERE x.stream = s.name \
                       AND x.position > greatest($4, coalesce(o.position, s.head + 1) - 1) \
                       AND x.position <= s.head \
                     ORDER BY x.position LIMIT $5 \
                 ) AS e ON true \
                 WHERE s.name = $1 \
                 ORDER BY e.position"
            )),
            ping: Sql::new(format!("SELECT count(*) FROM {q}.sse_migrations")),
            session_create: Sql::new(format!(
                "INSERT INTO {q}.sessions (id, principal, created_at, expires_at, cursor) \
                 VALUES ($1, $2, to_timestamp($3::float8 / 1000), \
                         to_timestamp($4::float8 / 1000), $5) \
                 ON CONFLICT (id) DO UPDATE SET principal = EXCLUDED.principal, \
                     created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, \
                     cursor = EXCLUDED.cursor"
            )),
            session_load: Sql::new(format!(
                "SELECT principal, (extract(epoch FROM created_at) * 1000)::int8, \
                        (extract(epoch FROM expires_at) * 1000)::int8, cursor \
                 FROM {q}.sessions \
                 WHERE id = $1 AND expires_at > to_timestamp($2::float8 / 1000)"
            )),
            session_touch: Sql::new(format!(
                "UPDATE {q}.sessions SET expires_at = to_timestamp($2::float8 / 1000) \
                 WHERE id = $1 AND expires_at > to_timestamp($3::float8 / 1000)"
            )),
            session_record_cursors: Sql::new(format!(
                "UPDATE {q}.sessions AS s \
                 SET cursor = v.cursor, expires_at = to_timestamp($3::float8 / 1000) \
                 FROM unnest($1::bytea[], $2::text[]) AS v(id, cursor) \
                 WHERE s.id = v.id AND s.expires_at > to_timestamp($4::float8 / 1000)"
            )),
            session_touch_many: Sql::new(format!(
                "UPDATE {q}.sessions SET expires_at = to_timestamp($2::float8 / 1000) \
                 WHERE id = ANY($1) AND expires_at > to_timestamp($3::float8 / 1000)"
            )),
            session_record_cursor: Sql::new(format!(
                "UPDATE {q}.sessions \
                 SET cursor = $2, expires_at = to_timestamp($3::float8 / 1000) \
                 WHERE id = $1 AND expires_at > to_timestamp($4::float8 / 1000)"
            )),
            // The session's private stream goes with it: nobody can read it any more.
            session_delete: Sql::new(format!(
                "WITH gone AS (DELETE FROM {q}.sessions WHERE id = $1) \
                 DELETE FROM {q}.streams WHERE name = $2"
            )),
            sweep_sessions: Sql::new(format!(
                "WITH gone AS ( \
                     DELETE FROM {q}.sessions WHERE id IN ( \
                         SELECT id FROM {q}.sessions \
                         WHERE expires_at <= to_timestamp($1::float8 / 1000) LIMIT $2) \
                     RETURNING id \
                 ), private AS ( \
                     DELETE FROM {q}.streams \
                     WHERE name IN (SELECT '@session:' || encode(id, 'hex') FROM gone) \
                 ) \
                 SELECT count(*) FROM gone"
            )),
            // Events rows are never updated, so their ctid is stable: delete a batch by it.
            sweep_count: Sql::new(format!(
                "DELETE FROM {q}.events WHERE ctid = ANY (ARRAY( \
                     SELECT e.ctid FROM {q}.streams AS s \
                     JOIN {q}.events AS e ON e.stream = s.name \
                         AND e.position < greatest(s.head - $1 + 1, s.floor) \
                     LIMIT $2))"
            )),
            sweep_age: Sql::new(format!(
                "DELETE FROM {q}.events WHERE ctid = ANY (ARRAY( \
                     SELECT ctid FROM {q}.events \
                     WHERE appended_at <= now() - interval '1 millisecond' * $1 \
                     LIMIT $2))"
            )),
            // Stream rows are updated by every append: delete by name and check the
            // condition again on the row as it is when locked.
            sweep_streams: Sql::new(format!(
                "DELETE FROM {q}.streams \
                 WHERE name IN ( \
                     SELECT name FROM {q}.streams \
                     WHERE last_time <= now() - interval '1 millisecond' * $1 LIMIT $2) \
                   AND last_time <= now() - interval '1 millisecond' * $1"
            )),
        }
    }
}
