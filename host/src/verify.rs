//! `kiln verify`: walk the global log and check its hash chain.
//!
//! Each event's hash covers its content and the previous event's hash (see
//! [`crate::store::hash_chain`]), so the first event whose stored hash does
//! not match what its content and its predecessor give is where the log was
//! edited, reordered or had an event inserted; a position that does not
//! follow the previous one is where events were removed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::store::hash_chain;
use crate::store::sqlite::SqliteOptions;
use crate::store::{EventLog, GlobalQuery, Position, StoreError};

/// Events read per page.
pub const PAGE_EVENTS_DEFAULT: u32 = 10_000;

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Break {
    /// Events are missing: the log jumps from `position - 1` to `found`.
    Missing { position: Position, found: Position },
    /// The event at `position` is not what was written there (its content or
    /// hash was changed, it was moved, or it was inserted).
    Altered { position: Position },
}

impl Break {
    pub fn position(&self) -> Position {
        match self {
            Break::Missing { position, .. } | Break::Altered { position } => *position,
        }
    }
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Missing { position, found } => write!(
                f,
                "events removed: position {position} is missing (the log goes on at {found})"
            ),
            Break::Altered { position } => write!(
                f,
                "event {position} was altered, moved or inserted: its hash does not match its content and the event before it"
            ),
        }
    }
}

/// The outcome of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Events checked, up to the break if there is one.
    pub checked: u64,
    /// The last position of the log.
    pub head: Position,
    pub broken: Option<Break>,
}

/// Walk the log from position 1, calling `progress(checked, head)` after
/// each page. Stops at the first break.
pub async fn verify_log(
    store: &dyn EventLog,
    page: u32,
    mut progress: impl FnMut(u64, Position),
) -> Result<Report, StoreError> {
    let head = store.head_position().await?;
    let mut previous = hash_chain::GENESIS;
    let mut expected: Position = 1;
    let mut checked = 0u64;
    loop {
        let events = store
            .read_global(GlobalQuery {
                from_position: expected,
                until_position: None,
                limit: page.max(1),
                types: None,
            })
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        for e in &events {
            if e.position != expected {
                return Ok(Report {
                    checked,
                    head,
                    broken: Some(Break::Missing {
                        position: expected,
                        found: e.position,
                    }),
                });
            }
            let hash = hash_chain::recorded_hash(&previous, e);
            if hash != e.hash {
                return Ok(Report {
                    checked,
                    head,
                    broken: Some(Break::Altered {
                        position: e.position,
                    }),
                });
            }
            previous = hash;
            expected += 1;
            checked += 1;
        }
        progress(checked, head.max(last));
    }
    Ok(Report {
        checked,
        head,
        broken: None,
    })
}

/// Options of `kiln verify`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The event store: `sqlite://path` (or a plain path), or `postgres://…`.
    #[arg(long, env = "KILN_DB", default_value = "sqlite://kiln.db")]
    pub db: String,
    /// Events read per page.
    #[arg(long, default_value_t = PAGE_EVENTS_DEFAULT)]
    pub page: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `kiln verify`; `Ok(false)` when the chain is broken.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    if !crate::store::is_postgres_url(&args.db) {
        let path = args
            .db
            .strip_prefix("sqlite://")
            .or_else(|| args.db.strip_prefix("sqlite:"))
            .unwrap_or(&args.db);
        // Opening would create an empty database: refuse a path that is not there.
        if !PathBuf::from(path).exists() {
            anyhow::bail!("no database at {path}");
        }
    }
    let store = crate::store::open(
        &args.db,
        SqliteOptions::default(),
        crate::store::postgres::PostgresOptions::default(),
    )
    .await
    .with_context(|| format!("opening {}", crate::server::redact(&args.db)))?;
    let store = &*store;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let report = verify_log(store, args.page, |checked, head| {
        if last_print.elapsed().as_millis() >= 500 || checked == head {
            let share = if head == 0 {
                1.0
            } else {
                checked as f64 / head as f64
            };
            eprintln!(
                "verified {checked} of {head} events ({:.1}%), {:.0} events/s",
                share * 100.0,
                checked as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
            last_print = Instant::now();
        }
    })
    .await;
    store.close().await;
    let report = report.context("reading the log")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.broken {
            None => println!(
                "ok: the hash chain of all {} events is intact ({:.2} s)",
                report.checked,
                started.elapsed().as_secs_f64()
            ),
            Some(b) => println!(
                "BROKEN at position {}: {b} ({} events before it are intact)",
                b.position(),
                report.checked
            ),
        }
    }
    Ok(report.broken.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::TestDb;
    use crate::store::{AppendRequest, ExpectedVersion, NewEvent};

    /// Fill `db` with `n` events over two streams.
    async fn log_of(db: &TestDb, n: usize) {
        let store = db.open().await;
        for i in 0..n {
            store
                .append(AppendRequest {
                    stream_id: format!("s-{}", i % 2),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent {
                        event_type: "Happened".into(),
                        schema: 1,
                        data: format!(r#"{{"n":{i}}}"#),
                        metadata: "{}".into(),
                    }],
                    idempotency: None,
                })
                .await
                .unwrap();
        }
        store.close().await;
    }

    async fn check(db: &TestDb) -> Report {
        let store = db.open().await;
        let mut pages = 0;
        let report = verify_log(&*store, 3, |_, _| pages += 1).await.unwrap();
        store.close().await;
        assert!(pages > 0 || report.broken.is_some(), "progress is reported");
        report
    }

    async fn untouched(db: TestDb) {
        log_of(&db, 10).await;
        let report = check(&db).await;
        assert_eq!(report.broken, None);
        assert_eq!((report.checked, report.head), (10, 10));
    }

    async fn changed_payload(db: TestDb) {
        log_of(&db, 10).await;
        db.execute(r#"UPDATE events SET data = '{"n":999}' WHERE position = 6"#)
            .await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Altered { position: 6 })
        );
    }

    async fn deleted_event(db: TestDb) {
        log_of(&db, 10).await;
        db.execute("DELETE FROM events WHERE position = 4").await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Missing {
                position: 4,
                found: 5
            })
        );
    }

    async fn reordered_pair(db: TestDb) {
        log_of(&db, 10).await;
        // Swap events 7 and 8 (hashes travel with their rows).
        db.execute(
            "UPDATE events SET position = -7 WHERE position = 7; \
             UPDATE events SET position = 7 WHERE position = 8; \
             UPDATE events SET position = 8 WHERE position = -7;",
        )
        .await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Altered { position: 7 })
        );
    }

    async fn inserted_event(db: TestDb) {
        log_of(&db, 5).await;
        // A forged event at the end, with a copied hash.
        db.execute(
            "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
             SELECT 6, 's-0', 99, 'Forged', 1, '{}', '{}', recorded_at, hash FROM events WHERE position = 5",
        )
        .await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Altered { position: 6 })
        );
    }

    /// Each check on both backends.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod sqlite_backend {
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::$name(super::TestDb::sqlite()).await;
                    }
                )*
            }
            mod postgres_backend {
                $(
                    #[tokio::test]
                    async fn $name() {
                        if let Some(db) = super::TestDb::postgres(stringify!($name)).await {
                            super::$name(db).await;
                        }
                    }
                )*
            }
        };
    }

    on_both_backends!(
        untouched,
        changed_payload,
        deleted_event,
        reordered_pair,
        inserted_event,
    );
}
