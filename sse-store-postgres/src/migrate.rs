//! Embedded migrations, applied by [`PostgresStore::migrate`](crate::PostgresStore::migrate).
//!
//! sqlx's own migrator does not fit a configurable schema: its migrations are fixed SQL and
//! its bookkeeping table lives wherever `search_path` points. Ours are templates (`{schema}`
//! stands for the quoted schema), applied in one transaction under an advisory lock, and
//! recorded in `<schema>.sse_migrations` with a checksum of the template, so every schema has
//! its own history (ADR 0009).

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction};

use crate::{PostgresStoreError, Schema};

/// One embedded migration.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// Every migration of this build, oldest first. Never edit one that has shipped: add another.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "streams, events, sessions and the append function",
        sql: include_str!("../migrations/0001_schema.sql"),
    },
    Migration {
        version: 2,
        description: "notifications carry small appends whole",
        sql: include_str!("../migrations/0002_inline_notifications.sql"),
    },
    Migration {
        version: 3,
        description: "retention by bytes",
        sql: include_str!("../migrations/0003_retention_by_bytes.sql"),
    },
    Migration {
        version: 4,
        description: "publisher ids free after retention by bytes",
        sql: include_str!("../migrations/0004_ids_free_after_byte_trim.sql"),
    },
];

/// The version the newest embedded migration brings the schema to.
pub(crate) const LATEST: i32 = 4;

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The advisory lock that serialises migrators of one schema (instances starting together).
fn lock_key(schema: &Schema) -> i64 {
    let digest = Sha256::digest(format!("sse-store-postgres:migrate:{schema}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Brings `schema` up to [`LATEST`]; returns the versions it applied.
pub(crate) async fn run(pool: &PgPool, schema: &Schema) -> Result<Vec<i32>, PostgresStoreError> {
    let mut tx = pool.begin().await?;
    match apply(&mut tx, schema).await {
        Ok(ran) => {
            tx.commit().await?;
            if !ran.is_empty() {
                tracing::info!(schema = %schema, versions = ?ran, "applied migrations");
            }
            Ok(ran)
        }
        Err(err) => {
            // Roll back now rather than when the connection is next used: until then the
            // transaction would keep its locks.
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}

async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    schema: &Schema,
) -> Result<Vec<i32>, PostgresStoreError> {
    let q = schema.quoted();
    // CREATE SCHEMA / CREATE TABLE IF NOT EXISTS are not safe against a concurrent run of the
    // same statements: several instances starting at once wait for each other here.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut **tx)
        .await?;
    // Only create the schema when it is missing, so that a role without CREATE on the
    // database can use a schema its administrator made for it.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(&mut **tx)
            .await?;
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {q}")))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {q}.sse_migrations (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             checksum    text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )"
    )))
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT version, checksum FROM {q}.sse_migrations ORDER BY version"
    )))
    .fetch_all(&mut **tx)
    .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        applied.push((row.try_get::<i32, _>(0)?, row.try_get::<String, _>(1)?));
    }

    let mut ran = Vec::new();
    for migration in MIGRATIONS {
        let sum = checksum(migration.sql);
        match applied.iter().find(|(v, _)| *v == migration.version) {
            Some((_, recorded)) if *recorded == sum => {}
            Some(_) => {
                return Err(PostgresStoreError::MigrationChanged {
                    version: migration.version,
                    description: migration.description.to_owned(),
                });
            }
            None => {
                sqlx::raw_sql(AssertSqlSafe(migration.sql.replace("{schema}", &q)))
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {q}.sse_migrations (version, description, checksum) \
                     VALUES ($1, $2, $3)"
                )))
                .bind(migration.version)
                .bind(migration.description)
                .bind(sum)
                .execute(&mut **tx)
                .await?;
                ran.push(migration.version);
            }
        }
    }
    if let Some((newer, _)) = applied.iter().find(|(v, _)| *v > LATEST) {
        // A newer build migrated this schema (a rolling upgrade in progress, or a rollback):
        // migrations only ever add, so keep going, but say so.
        tracing::warn!(
            schema = %schema,
            version = newer,
            latest = LATEST,
            "the schema has migrations newer than this build knows"
        );
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_templated() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(
                m.sql.contains("{schema}."),
                "migration {} is templated",
                m.version
            );
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST));
        assert_ne!(
            lock_key(&Schema::default()),
            lock_key(&Schema::new("other").expect("valid"))
        );
    }
}
