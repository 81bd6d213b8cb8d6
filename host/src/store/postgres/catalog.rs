//! Projection views, their generations and checkpoints, and stored plugin
//! versions: the PostgreSQL side of everything that is not the event log.
//!
//! Fencing differs from SQLite, where the single writer is the only writer:
//! here several hosts write, so a checkpoint moves with a conditional
//! `UPDATE` (which also locks the row until the commit), never with a read
//! followed by a write.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::int8;
use crate::store::{
    DeployMode, Deployment, GenerationRecord, GenerationRole, LeaseRecord, NewDeployment, RowWrite,
    SkipRecord, StoreError, ViewCommit, ViewId, now_us,
};

/// Write a batch's rows and move its checkpoint, if the checkpoint is still
/// where the batch started.
pub async fn commit_view(
    conn: &mut PgConnection,
    commit: ViewCommit,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let generation = int8(commit.generation);
    if let Some((key, _)) = commit.writes.iter().find(|(key, _)| key.contains('\0')) {
        // Refused before anything is written: a NUL would fail the batch.
        return Ok(Err(StoreError::Corrupt(format!(
            "view key {:?} of {} contains a NUL character, which PostgreSQL text cannot hold",
            key.replace('\0', "\\0"),
            commit.projection
        ))));
    }
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
    if moved == 0 {
        let actual: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM projection_generations WHERE name = $1 AND generation = $2",
        )
        .bind(&commit.projection)
        .bind(generation)
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(Err(StoreError::CheckpointMoved {
            projection: commit.projection,
            generation: commit.generation,
            expected: commit.from_position,
            actual: actual.map(|p| p as u64),
        }));
    }
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
    if let Some(skip) = &commit.skip {
        sqlx::query(
            "INSERT INTO projection_skips \
             (name, generation, position, stream_id, event_type, reason, skipped_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (name, generation, position) DO UPDATE SET \
             stream_id = excluded.stream_id, event_type = excluded.event_type, \
             reason = excluded.reason, skipped_at = excluded.skipped_at",
        )
        .bind(&commit.projection)
        .bind(generation)
        .bind(int8(skip.position))
        .bind(&skip.stream_id)
        .bind(&skip.event_type)
        .bind(&skip.reason)
        .bind(now_us())
        .execute(&mut *conn)
        .await?;
    }
    Ok(Ok(()))
}

/// The smallest string greater than every string starting with `prefix`
/// (in code point order, which is the byte order of the "C" collation), if
/// there is one: the end of a prefix range.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // Skip the surrogate gap; char::MAX has no successor.
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub async fn view_scan(
    readers: &PgPool,
    view: ViewId<'_>,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    // A range on the primary key: the scan stops at the prefix's end.
    let end = prefix_end(prefix);
    let rows = sqlx::query(
        "SELECT key, value FROM view_rows WHERE projection = $1 AND generation = $2 \
         AND key >= $3 AND ($4::text IS NULL OR key > $4) AND ($5::text IS NULL OR key < $5) \
         ORDER BY key LIMIT $6",
    )
    .bind(view.projection)
    .bind(int8(view.generation))
    .bind(prefix)
    .bind(after)
    .bind(end.as_deref())
    .bind(i64::from(limit))
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

pub async fn generations(readers: &PgPool) -> Result<Vec<GenerationRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, generation, plugin_hash, role, position FROM projection_generations \
         ORDER BY name, generation",
    )
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(GenerationRecord {
                name: row.try_get(0)?,
                generation: row.try_get::<i64, _>(1)? as u64,
                plugin_hash: row.try_get(2)?,
                role: GenerationRole::parse(row.try_get(3)?)?,
                position: row.try_get::<i64, _>(4)? as u64,
            })
        })
        .collect()
}

pub async fn save_generation(
    conn: &mut PgConnection,
    record: GenerationRecord,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_generations (name, generation, plugin_hash, role, position, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, generation) DO UPDATE SET \
         role = excluded.role, plugin_hash = excluded.plugin_hash",
    )
    .bind(&record.name)
    .bind(int8(record.generation))
    .bind(&record.plugin_hash)
    .bind(record.role.as_str())
    .bind(int8(record.position))
    .bind(now_us())
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

pub async fn promote_generation(
    conn: &mut PgConnection,
    projection: String,
    generation: u64,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    // Locks the promoted row: two hosts promoting at once take turns.
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT generation FROM projection_generations WHERE name = $1 AND generation = $2 \
         FOR UPDATE",
    )
    .bind(&projection)
    .bind(int8(generation))
    .fetch_optional(&mut *conn)
    .await?;
    if found.is_none() {
        return Ok(Err(StoreError::Corrupt(format!(
            "projection {projection} has no generation {generation} to promote"
        ))));
    }
    sqlx::query(
        "UPDATE projection_generations SET role = 'retired' \
         WHERE name = $1 AND role = 'active' AND generation <> $2",
    )
    .bind(&projection)
    .bind(int8(generation))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE projection_generations SET role = 'active' WHERE name = $1 AND generation = $2",
    )
    .bind(&projection)
    .bind(int8(generation))
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

pub async fn drop_generation(
    conn: &mut PgConnection,
    projection: String,
    generation: u64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM view_rows WHERE projection = $1 AND generation = $2 AND key IN \
         (SELECT key FROM view_rows WHERE projection = $1 AND generation = $2 ORDER BY key LIMIT $3)",
    )
    .bind(&projection)
    .bind(int8(generation))
    .bind(i64::from(limit.max(1)))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted == 0 {
        sqlx::query("DELETE FROM projection_generations WHERE name = $1 AND generation = $2")
            .bind(&projection)
            .bind(int8(generation))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(deleted))
}

pub async fn skips(
    readers: &PgPool,
    projection: &str,
) -> Result<Vec<(u64, SkipRecord)>, StoreError> {
    let rows = sqlx::query(
        "SELECT generation, position, stream_id, event_type, reason FROM projection_skips \
         WHERE name = $1 ORDER BY skipped_at DESC, position DESC",
    )
    .bind(projection)
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>(0)? as u64,
                SkipRecord {
                    position: row.try_get::<i64, _>(1)? as u64,
                    stream_id: row.try_get(2)?,
                    event_type: row.try_get(3)?,
                    reason: row.try_get(4)?,
                },
            ))
        })
        .collect()
}

pub async fn record_deployment(
    conn: &mut PgConnection,
    deployment: NewDeployment,
) -> Result<Result<Deployment, StoreError>, sqlx::Error> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO plugin_blobs (hash, bytes, size, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(&deployment.hash)
    .bind(deployment.bytes.as_slice())
    .bind(deployment.bytes.len() as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO plugin_deployments (name, hash, kind, mode, source, deployed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&deployment.name)
    .bind(&deployment.hash)
    .bind(&deployment.kind)
    .bind(deployment.mode.as_str())
    .bind(&deployment.source)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Ok(Deployment {
        id: id as u64,
        size: deployment.bytes.len() as u64,
        name: deployment.name,
        hash: deployment.hash,
        kind: deployment.kind,
        mode: deployment.mode,
        source: deployment.source,
        deployed_at_us: now,
    }))
}

fn deployment_from_row(row: &PgRow) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: row.try_get::<i64, _>(0)? as u64,
        name: row.try_get(1)?,
        hash: row.try_get(2)?,
        kind: row.try_get(3)?,
        mode: DeployMode::parse(row.try_get(4)?)?,
        source: row.try_get(5)?,
        size: row.try_get::<i64, _>(6)? as u64,
        deployed_at_us: row.try_get(7)?,
    })
}

/// Deployments of one name, newest first; or, without a name, the latest
/// deployment of every name.
pub async fn plugin_history(
    readers: &PgPool,
    name: Option<&str>,
) -> Result<Vec<Deployment>, StoreError> {
    const COLUMNS: &str = "SELECT d.id, d.name, d.hash, d.kind, d.mode, d.source, b.size, d.deployed_at \
         FROM plugin_deployments d JOIN plugin_blobs b ON b.hash = d.hash";
    let rows =
        match name {
            Some(name) => {
                sqlx::query(&format!("{COLUMNS} WHERE d.name = $1 ORDER BY d.id DESC"))
                    .bind(name)
                    .fetch_all(readers)
                    .await?
            }
            None => sqlx::query(&format!(
                "{COLUMNS} WHERE d.id IN (SELECT MAX(id) FROM plugin_deployments GROUP BY name) \
                 ORDER BY d.name"
            ))
            .fetch_all(readers)
            .await?,
        };
    rows.iter().map(deployment_from_row).collect()
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

pub async fn release_lease(
    conn: &mut PgConnection,
    name: String,
    holder: String,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(&name)
        .bind(&holder)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(()))
}

pub async fn leases(readers: &PgPool) -> Result<Vec<LeaseRecord>, StoreError> {
    let rows = sqlx::query("SELECT name, holder, expires_at FROM leases ORDER BY name")
        .fetch_all(readers)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(LeaseRecord {
                name: row.try_get(0)?,
                holder: row.try_get(1)?,
                expires_at_us: row.try_get(2)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix_range() {
        assert_eq!(prefix_end("acc-"), Some("acc.".to_string()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_string()));
        assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".to_string()));
    }
}
