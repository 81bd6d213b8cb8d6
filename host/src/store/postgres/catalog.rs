//! Projection views' commits and leases: the PostgreSQL side of what the
//! two backends do differently (everything else of the catalog is
//! `store::queries`, shared with SQLite).
//!
//! Fencing differs from SQLite, where the single writer is the only writer:
//! here several hosts write, so a checkpoint moves with a conditional
//! `UPDATE` (which also locks the row until the commit), never with a read
//! followed by a write. PostgreSQL text cannot hold NUL, so keys are checked
//! first; and leases expire by the database's clock, as the hosts' clocks
//! need not agree.

use sqlx::PgConnection;

use super::int8;
use crate::store::{RowWrite, SkipRecord, StoreError, ViewCommit, now_us};

/// Write a batch's rows and move its checkpoint, if the checkpoint is still
/// where the batch started.
pub async fn commit_view(
    conn: &mut PgConnection,
    commit: ViewCommit,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    if let Err(refused) = refuse_nul_keys(&commit) {
        return Ok(Err(refused));
    }
    if let Err(refused) = move_checkpoint(conn, &commit).await? {
        return Ok(Err(refused));
    }
    write_rows(conn, &commit).await?;
    if let Some(skip) = &commit.skip {
        record_skip(conn, &commit, skip).await?;
    }
    Ok(Ok(()))
}

/// Refused before anything is written: a NUL would fail the batch.
fn refuse_nul_keys(commit: &ViewCommit) -> Result<(), StoreError> {
    match commit.writes.iter().find(|(key, _)| key.contains('\0')) {
        Some((key, _)) => Err(StoreError::Corrupt(format!(
            "view key {:?} of {} contains a NUL character, which PostgreSQL text cannot hold",
            key.replace('\0', "\\0"),
            commit.projection
        ))),
        None => Ok(()),
    }
}

/// Move the checkpoint from where the batch started to where it ends, or
/// say where it is instead.
async fn move_checkpoint(
    conn: &mut PgConnection,
    commit: &ViewCommit,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let generation = int8(commit.generation);
    let moved = sqlx::query(
        "UPDATE projection_generations SET position = $4 \
         WHERE name = $1 AND generation = $2 AND position = $3",
    )
    .bind(&commit.projection)
    .bind(generation)
    .bind(int8(commit.from_position))
    .bind(int8(commit.to_position))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved != 0 {
        return Ok(Ok(()));
    }
    let actual: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_generations WHERE name = $1 AND generation = $2",
    )
    .bind(&commit.projection)
    .bind(generation)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Err(StoreError::CheckpointMoved {
        projection: commit.projection.clone(),
        generation: commit.generation,
        expected: commit.from_position,
        actual: actual.map(|p| p as u64),
    }))
}

/// Put and delete the batch's rows, one statement each (arrays bound).
async fn write_rows(conn: &mut PgConnection, commit: &ViewCommit) -> Result<(), sqlx::Error> {
    let generation = int8(commit.generation);
    let mut put_keys: Vec<&str> = Vec::new();
    let mut put_values: Vec<&[u8]> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    for (key, write) in &commit.writes {
        match write {
            RowWrite::Put(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            RowWrite::Delete => deletes.push(key),
        }
    }
    if !put_keys.is_empty() {
        sqlx::query(
            "INSERT INTO view_rows (projection, generation, key, value) \
             SELECT $1, $2, k, v FROM UNNEST($3::text[], $4::bytea[]) AS w (k, v) \
             ON CONFLICT (projection, generation, key) DO UPDATE SET value = excluded.value",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(&put_keys)
        .bind(&put_values)
        .execute(&mut *conn)
        .await?;
    }
    if !deletes.is_empty() {
        sqlx::query(
            "DELETE FROM view_rows WHERE projection = $1 AND generation = $2 AND key = ANY($3)",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(&deletes)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn record_skip(
    conn: &mut PgConnection,
    commit: &ViewCommit,
    skip: &SkipRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_skips \
         (name, generation, position, stream_id, event_type, reason, skipped_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (name, generation, position) DO UPDATE SET \
         stream_id = excluded.stream_id, event_type = excluded.event_type, \
         reason = excluded.reason, skipped_at = excluded.skipped_at",
    )
    .bind(&commit.projection)
    .bind(int8(commit.generation))
    .bind(int8(skip.position))
    .bind(&skip.stream_id)
    .bind(&skip.event_type)
    .bind(&skip.reason)
    .bind(now_us())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Take or renew a lease (see `EventStore::try_lease`).
pub async fn try_lease(
    conn: &mut PgConnection,
    name: String,
    holder: String,
    ttl_us: i64,
) -> Result<Result<bool, StoreError>, sqlx::Error> {
    // The database's clock: the hosts' clocks need not agree.
    let done = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) \
         VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000000)::bigint + $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE leases.holder = excluded.holder \
            OR leases.expires_at <= (extract(epoch from clock_timestamp()) * 1000000)::bigint",
    )
    .bind(&name)
    .bind(&holder)
    .bind(ttl_us)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(done.rows_affected() == 1))
}
