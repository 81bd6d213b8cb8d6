//! What one batch writes on the connection directly: the appends checked
//! against stream versions and idempotency keys, their events chained and
//! inserted, the recorded tail, keys, snapshots and purges.

use std::collections::HashMap;

use lru::LruCache;

use super::super::Tail;
use super::super::direct::{Direct, SqliteError, Value};
use crate::store::hash_chain::{self, HashInput};
use crate::store::{
    AppendOutcome, AppendRequest, IdempotencyEntry, NewEvent, RecordedEvent, Snapshot, StoreError,
    now_us,
};

pub(super) type Staged = (
    Vec<Result<AppendOutcome, StoreError>>,
    Vec<u64>,
    HashMap<String, u64>,
);

/// Check and write the batch's appends, snapshots and purges.
pub(super) fn stage(
    db: &mut Direct<'_>,
    cache: &mut LruCache<String, u64>,
    tail: &mut Tail,
    appends: Vec<AppendRequest>,
    snapshots: &[Snapshot],
    purges: &[i64],
) -> Result<Staged, SqliteError> {
    let first_tail = tail.position;
    let (mut versions, mut keys) = lookup(cache, db, &appends)?;
    let mut key_rows: Vec<IdempotencyEntry> = Vec::new();
    let mut outcomes = Vec::with_capacity(appends.len());
    for request in appends {
        outcomes.push(stage_append(
            request,
            tail,
            &mut versions,
            &mut keys,
            &mut key_rows,
        ));
    }
    insert_events(db, &outcomes)?;
    if tail.position != first_tail {
        record_tail(db, tail)?;
    }
    insert_keys(db, &key_rows)?;
    save_snapshots(db, snapshots)?;
    let purged = purge_keys(db, purges)?;
    Ok((outcomes, purged, versions))
}

/// Insert the events of the batch's committed appends.
fn insert_events(
    db: &mut Direct<'_>,
    outcomes: &[Result<AppendOutcome, StoreError>],
) -> Result<(), SqliteError> {
    for outcome in outcomes {
        let Ok(AppendOutcome::Committed { events, .. }) = outcome else {
            continue;
        };
        for e in events {
            db.run(
                "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &[
                    Value::Int(e.position as i64),
                    Value::Text(&e.stream_id),
                    Value::Int(e.version as i64),
                    Value::Text(&e.event_type),
                    Value::Int(i64::from(e.schema)),
                    Value::Text(&e.data),
                    Value::Text(&e.metadata),
                    Value::Int(e.recorded_at_us),
                    Value::Blob(&e.hash),
                ],
            )?;
        }
    }
    Ok(())
}

/// Record where the log now ends, beside the events (see `log_tail`).
fn record_tail(db: &mut Direct<'_>, tail: &Tail) -> Result<(), SqliteError> {
    db.run(
        "UPDATE log_tail SET position = ?, hash = ?, recorded_at = ? WHERE id = 1",
        &[
            Value::Int(tail.position as i64),
            Value::Blob(&tail.hash),
            Value::Int(tail.recorded_at_us),
        ],
    )?;
    Ok(())
}

/// Insert (or replace an expired) idempotency entry per keyed append.
fn insert_keys(db: &mut Direct<'_>, key_rows: &[IdempotencyEntry]) -> Result<(), SqliteError> {
    for k in key_rows {
        db.run(
            "INSERT OR REPLACE INTO idempotency_keys (key, request_hash, stream_id, version, first_position, event_count, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::Text(&k.key),
                Value::Text(&k.request_hash),
                Value::Text(&k.stream_id),
                Value::Int(k.version as i64),
                k.first_position.map(|p| p as i64).into(),
                Value::Int(i64::from(k.event_count)),
                Value::Int(k.created_at_us),
            ],
        )?;
    }
    Ok(())
}

/// Keep each snapshot unless a later one of the stream and plugin is kept.
fn save_snapshots(db: &mut Direct<'_>, snapshots: &[Snapshot]) -> Result<(), SqliteError> {
    for s in snapshots {
        db.run(
            "INSERT INTO snapshots (stream_id, plugin_hash, version, state, taken_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (stream_id, plugin_hash) DO UPDATE SET version = excluded.version, \
             state = excluded.state, taken_at = excluded.taken_at WHERE excluded.version > snapshots.version",
            &[
                Value::Text(&s.stream_id),
                Value::Text(&s.plugin_hash),
                Value::Int(s.version as i64),
                Value::Blob(&s.state),
                Value::Int(now_us()),
            ],
        )?;
    }
    Ok(())
}

/// Delete idempotency entries older than each purge's time; the number
/// deleted per purge.
fn purge_keys(db: &mut Direct<'_>, purges: &[i64]) -> Result<Vec<u64>, SqliteError> {
    let mut purged = Vec::with_capacity(purges.len());
    let prefix = crate::store::SAGA_IDEMPOTENCY_PREFIX;
    for before_us in purges {
        // Keys of saga commands are kept longer: a saga retried after a
        // long outage must still find the result of its command.
        purged.push(db.run(
            "DELETE FROM idempotency_keys WHERE created_at < ? \
             AND (substr(key, 1, length(?)) <> ? OR created_at < ?)",
            &[
                Value::Int(*before_us),
                Value::Text(prefix),
                Value::Text(prefix),
                Value::Int(now_us() - crate::store::SAGA_IDEMPOTENCY_RETENTION_US),
            ],
        )?);
    }
    Ok(purged)
}

/// Stream versions and idempotency entries, by stream and by key.
type Checks = (HashMap<String, u64>, HashMap<String, IdempotencyEntry>);

/// What a batch's appends are checked against: the current version of each
/// of its streams (from the cache, the rest from the events) and the
/// idempotency entries of its keys.
fn lookup(
    cache: &mut LruCache<String, u64>,
    db: &mut Direct<'_>,
    appends: &[AppendRequest],
) -> Result<Checks, SqliteError> {
    let mut versions = HashMap::with_capacity(appends.len());
    for request in appends {
        let stream = &request.stream_id;
        if versions.contains_key(stream) {
            continue;
        }
        let version = match cache.get(stream) {
            Some(v) => *v,
            None => {
                let mut version = 0;
                db.query(
                    "SELECT MAX(version) FROM events WHERE stream_id = ?",
                    &[Value::Text(stream)],
                    |row| {
                        version = row.int(0).max(0) as u64;
                        Ok(())
                    },
                )?;
                version
            }
        };
        versions.insert(stream.clone(), version);
    }
    let mut found = HashMap::new();
    for claim in appends.iter().filter_map(|r| r.idempotency.as_ref()) {
        db.query(
            "SELECT key, request_hash, stream_id, version, first_position, event_count, created_at \
             FROM idempotency_keys WHERE key = ?",
            &[Value::Text(&claim.key)],
            |row| {
                let entry = IdempotencyEntry {
                    key: row.text(0)?,
                    request_hash: row.text(1)?,
                    stream_id: row.text(2)?,
                    version: row.int(3) as u64,
                    first_position: (!row.is_null(4)).then(|| row.int(4) as u64),
                    event_count: row.int(5) as u32,
                    created_at_us: row.int(6),
                };
                found.insert(entry.key.clone(), entry);
                Ok(())
            },
        )?;
    }
    Ok((versions, found))
}

/// Check one append against the batch's view of versions and keys, and
/// stage its rows. The result is this request's own answer.
fn stage_append(
    request: AppendRequest,
    tail: &mut Tail,
    versions: &mut HashMap<String, u64>,
    keys: &mut HashMap<String, IdempotencyEntry>,
    key_rows: &mut Vec<IdempotencyEntry>,
) -> Result<AppendOutcome, StoreError> {
    if let Some(claim) = &request.idempotency
        && let Some(entry) = keys.get(&claim.key)
        && entry.created_at_us >= claim.window_start_us
    {
        // Expired entries fall through: the key is free again and its row
        // is replaced.
        return Ok(AppendOutcome::AlreadyApplied(entry.clone()));
    }
    let actual = versions.get(&request.stream_id).copied().unwrap_or(0);
    if !request.expected.matches(actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream_id: request.stream_id,
            expected: request.expected,
            actual,
        });
    }
    // Recorded times never decrease along positions, so time travel by
    // recorded time agrees with the order of the log. They are kept to the
    // millisecond, the precision the API shows, so a time a client read
    // back selects exactly the events it saw.
    let recorded_at_us = (now_us() / 1000 * 1000).max(tail.recorded_at_us);
    let recorded = chain_events(
        tail,
        &request.stream_id,
        actual,
        request.events,
        recorded_at_us,
    );
    let version = actual + recorded.len() as u64;
    versions.insert(request.stream_id.clone(), version);
    if let Some(claim) = request.idempotency {
        let entry = IdempotencyEntry {
            key: claim.key,
            request_hash: claim.request_hash,
            stream_id: request.stream_id,
            version,
            first_position: recorded.first().map(|e| e.position),
            event_count: recorded.len() as u32,
            created_at_us: recorded_at_us,
        };
        keys.insert(entry.key.clone(), entry.clone());
        key_rows.push(entry);
    }
    Ok(AppendOutcome::Committed {
        version,
        events: recorded,
    })
}

/// Continue the log from `tail` with a stream's events, the first after
/// version `actual`: their positions, versions and chained hashes.
fn chain_events(
    tail: &mut Tail,
    stream_id: &str,
    actual: u64,
    events: Vec<NewEvent>,
    recorded_at_us: i64,
) -> Vec<RecordedEvent> {
    let mut recorded = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let position = tail.position + 1;
        let version = actual + 1 + i as u64;
        let hash = hash_chain::event_hash(
            &tail.hash,
            &HashInput {
                position,
                stream_id,
                version,
                event_type: &event.event_type,
                schema: event.schema,
                data: &event.data,
                metadata: &event.metadata,
                recorded_at_us,
            },
        );
        *tail = Tail {
            position,
            hash,
            recorded_at_us,
        };
        recorded.push(RecordedEvent {
            position,
            stream_id: stream_id.to_string(),
            version,
            event_type: event.event_type,
            schema: event.schema,
            data: event.data,
            metadata: event.metadata,
            recorded_at_us,
            hash,
        });
    }
    recorded
}
