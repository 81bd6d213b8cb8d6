//! Projection views, their generations and checkpoints, and stored plugin
//! versions: the SQLite side of everything that is not the event log.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::store::{
    DeployMode, Deployment, GenerationRecord, GenerationRole, LeaseRecord, NewDeployment, RowWrite,
    SkipRecord, StoreError, ViewCommit, ViewId, now_us,
};

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

/// The smallest string greater than every string starting with `prefix`,
/// if there is one: the end of a prefix range.
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
    readers: &SqlitePool,
    view: ViewId<'_>,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    // A range on the primary key: the scan stops at the prefix's end.
    let end = prefix_end(prefix);
    let rows = sqlx::query(
        "SELECT key, value FROM view_rows WHERE projection = ? AND generation = ? \
         AND key >= ? AND (? IS NULL OR key > ?) AND (? IS NULL OR key < ?) \
         ORDER BY key LIMIT ?",
    )
    .bind(view.projection)
    .bind(view.generation as i64)
    .bind(prefix)
    .bind(after)
    .bind(after)
    .bind(end.as_deref())
    .bind(end.as_deref())
    .bind(i64::from(limit))
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

pub async fn generations(readers: &SqlitePool) -> Result<Vec<GenerationRecord>, StoreError> {
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
    conn: &mut SqliteConnection,
    record: GenerationRecord,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_generations (name, generation, plugin_hash, role, position, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, generation) DO UPDATE SET \
         role = excluded.role, plugin_hash = excluded.plugin_hash",
    )
    .bind(&record.name)
    .bind(record.generation as i64)
    .bind(&record.plugin_hash)
    .bind(record.role.as_str())
    .bind(record.position as i64)
    .bind(now_us())
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

pub async fn promote_generation(
    conn: &mut SqliteConnection,
    projection: String,
    generation: u64,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT generation FROM projection_generations WHERE name = ? AND generation = ?",
    )
    .bind(&projection)
    .bind(generation as i64)
    .fetch_optional(&mut *conn)
    .await?;
    if found.is_none() {
        return Ok(Err(StoreError::Corrupt(format!(
            "projection {projection} has no generation {generation} to promote"
        ))));
    }
    sqlx::query(
        "UPDATE projection_generations SET role = 'retired' \
         WHERE name = ? AND role = 'active' AND generation <> ?",
    )
    .bind(&projection)
    .bind(generation as i64)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE projection_generations SET role = 'active' WHERE name = ? AND generation = ?",
    )
    .bind(&projection)
    .bind(generation as i64)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

pub async fn drop_generation(
    conn: &mut SqliteConnection,
    projection: String,
    generation: u64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM view_rows WHERE projection = ?1 AND generation = ?2 AND key IN \
         (SELECT key FROM view_rows WHERE projection = ?1 AND generation = ?2 ORDER BY key LIMIT ?3)",
    )
    .bind(&projection)
    .bind(generation as i64)
    .bind(i64::from(limit.max(1)))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted == 0 {
        sqlx::query("DELETE FROM projection_generations WHERE name = ? AND generation = ?")
            .bind(&projection)
            .bind(generation as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(deleted))
}

pub async fn skips(
    readers: &SqlitePool,
    projection: &str,
) -> Result<Vec<(u64, SkipRecord)>, StoreError> {
    let rows = sqlx::query(
        "SELECT generation, position, stream_id, event_type, reason FROM projection_skips \
         WHERE name = ? ORDER BY skipped_at DESC, position DESC",
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
    conn: &mut SqliteConnection,
    deployment: NewDeployment,
) -> Result<Result<Deployment, StoreError>, sqlx::Error> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO plugin_blobs (hash, bytes, size, created_at) VALUES (?, ?, ?, ?) \
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
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
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

fn deployment_from_row(row: &SqliteRow) -> Result<Deployment, StoreError> {
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
    readers: &SqlitePool,
    name: Option<&str>,
) -> Result<Vec<Deployment>, StoreError> {
    const COLUMNS: &str = "SELECT d.id, d.name, d.hash, d.kind, d.mode, d.source, b.size, d.deployed_at \
         FROM plugin_deployments d JOIN plugin_blobs b ON b.hash = d.hash";
    let rows =
        match name {
            Some(name) => {
                sqlx::query(&format!("{COLUMNS} WHERE d.name = ? ORDER BY d.id DESC"))
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

pub async fn release_lease(
    conn: &mut SqliteConnection,
    name: String,
    holder: String,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    sqlx::query("DELETE FROM leases WHERE name = ? AND holder = ?")
        .bind(&name)
        .bind(&holder)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(()))
}

pub async fn leases(readers: &SqlitePool) -> Result<Vec<LeaseRecord>, StoreError> {
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
