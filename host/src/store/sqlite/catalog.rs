//! Projection views' commits and leases: the SQLite side of what the two
//! backends do differently (everything else of the catalog is
//! `store::queries`, shared with PostgreSQL).
//!
//! Here the single writer is the only writer, so a checkpoint is read and
//! then moved in the writer's transaction, rows travel as one JSON array,
//! and a lease's expiry is this host's clock (PostgreSQL uses the
//! database's, as its hosts' clocks need not agree).

use sqlx::SqliteConnection;

use crate::store::{RowWrite, StoreError, ViewCommit, now_us};

fn encode<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Write a batch's rows and move its checkpoint, if the checkpoint is still
/// where the batch started.
pub async fn commit_view(
    conn: &mut SqliteConnection,
    commit: ViewCommit,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let generation = commit.generation as i64;
    let actual: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_generations WHERE name = ? AND generation = ?",
    )
    .bind(&commit.projection)
    .bind(generation)
    .fetch_optional(&mut *conn)
    .await?;
    if actual != Some(commit.from_position as i64) {
        return Ok(Err(StoreError::CheckpointMoved {
            projection: commit.projection,
            generation: commit.generation,
            expected: commit.from_position,
            actual: actual.map(|p| p as u64),
        }));
    }
    let mut puts: Vec<(&str, String)> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    for (key, write) in &commit.writes {
        match write {
            RowWrite::Put(value) => puts.push((key, hex::encode(value))),
            RowWrite::Delete => deletes.push(key),
        }
    }
    if !puts.is_empty() {
        sqlx::query(
            "INSERT INTO view_rows (projection, generation, key, value) \
             SELECT ?, ?, value->>0, unhex(value->>1) FROM json_each(?) WHERE true \
             ON CONFLICT (projection, generation, key) DO UPDATE SET value = excluded.value",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(encode(&puts)?)
        .execute(&mut *conn)
        .await?;
    }
    if !deletes.is_empty() {
        sqlx::query(
            "DELETE FROM view_rows WHERE projection = ? AND generation = ? \
             AND key IN (SELECT value FROM json_each(?))",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(encode(&deletes)?)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(skip) = &commit.skip {
        sqlx::query(
            "INSERT OR REPLACE INTO projection_skips \
             (name, generation, position, stream_id, event_type, reason, skipped_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(skip.position as i64)
        .bind(&skip.stream_id)
        .bind(&skip.event_type)
        .bind(&skip.reason)
        .bind(now_us())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE projection_generations SET position = ? WHERE name = ? AND generation = ?")
        .bind(commit.to_position as i64)
        .bind(&commit.projection)
        .bind(generation)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(()))
}

/// Take or renew a lease (see `EventStore::try_lease`).
pub async fn try_lease(
    conn: &mut SqliteConnection,
    name: String,
    holder: String,
    ttl_us: i64,
) -> Result<Result<bool, StoreError>, sqlx::Error> {
    let now = now_us();
    let done = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3 + ?4) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
    )
    .bind(&name)
    .bind(&holder)
    .bind(now)
    .bind(ttl_us)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(done.rows_affected() == 1))
}
