//! `kiln verify`: walk the global log and check its hash chain.
//!
//! Each event's hash covers its content and the previous event's hash (see
//! [`crate::store::hash_chain`]), so the first event whose stored hash does
//! not match what its content and its predecessor give is where the log was
//! edited, reordered or had an event inserted; a position that does not
//! follow the previous one is where events were removed. The last event is
//! checked against the tail the store recorded apart from the events, so
//! that removing the last events shows too.
//!
//! The chain is not keyed: whoever can write the database can rewrite every
//! event and the recorded tail consistently, and the walk then finds
//! nothing. The report prints the head's position and hash so that an
//! operator can keep them elsewhere; `--expect-head` checks the chain
//! against them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::store::hash_chain;
use crate::store::sqlite::SqliteOptions;
use crate::store::{EventLog, GlobalQuery, Position, RecordedEvent, RecordedTail, StoreError};

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
    /// The log ends at `last`, but the store recorded its tail at `recorded`:
    /// the events after `last` were removed.
    Truncated { last: Position, recorded: Position },
    /// The event at the recorded tail's position is not the one the store
    /// recorded there (it was replaced, with a hash that chains).
    TailReplaced { position: Position },
    /// The event at `position` is beyond the tail the store recorded, even
    /// after the walk: it was not appended by the store.
    Unrecorded { position: Position },
    /// The event at `position` does not have the hash `--expect-head` gave
    /// (or the log does not reach `position`): the chain was rewritten.
    NotExpected { position: Position },
}

impl Break {
    pub fn position(&self) -> Position {
        match self {
            Break::Missing { position, .. }
            | Break::Altered { position }
            | Break::TailReplaced { position }
            | Break::Unrecorded { position }
            | Break::NotExpected { position } => *position,
            Break::Truncated { last, .. } => last + 1,
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
            Break::Truncated { last, recorded } => write!(
                f,
                "events removed at the end: the log ends at {last}, but the store recorded its tail at {recorded}"
            ),
            Break::TailReplaced { position } => write!(
                f,
                "event {position} was replaced: its hash is not the one the store recorded for the log's tail"
            ),
            Break::Unrecorded { position } => write!(
                f,
                "event {position} was inserted at the end: it is beyond the tail the store recorded"
            ),
            Break::NotExpected { position } => write!(
                f,
                "the hash at position {position} is not the one --expect-head gave: the chain was rewritten"
            ),
        }
    }
}

/// A position and hash kept elsewhere (`--expect-head`): `HASH` is the
/// head's hash; `POSITION:HASH` the hash of the event at `POSITION`, still
/// checkable after the log has grown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedHead {
    pub position: Option<Position>,
    pub hash: [u8; 32],
}

impl std::str::FromStr for ExpectedHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = match s.split_once(':') {
            Some((position, hash)) => {
                let position = position
                    .parse::<Position>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{position:?} is not a position (1 or more)"))?;
                (Some(position), hash)
            }
            None => (None, s),
        };
        let hash = hex::decode(hash)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| format!("{hash:?} is not a hash (64 hexadecimal digits)"))?;
        Ok(Self { position, hash })
    }
}

/// The outcome of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Events checked, up to the break if there is one.
    pub checked: u64,
    /// The last position of the log.
    pub head: Position,
    /// The hash of the last event, when the whole log checked out (hex);
    /// keep it elsewhere to check the chain later with `--expect-head`.
    pub head_hash: Option<String>,
    pub broken: Option<Break>,
}

/// The walk's progress through the log.
struct Walk<'a> {
    /// Read before the walk: appends made meanwhile go beyond it.
    recorded: RecordedTail,
    expect: Option<&'a ExpectedHead>,
    previous: [u8; 32],
    /// The next position the log should have.
    expected: Position,
    checked: u64,
}

impl Walk<'_> {
    /// Check one event against its predecessor, the recorded tail and the
    /// expected hash.
    fn check(&mut self, e: &RecordedEvent) -> Result<(), Break> {
        if e.position != self.expected {
            return Err(Break::Missing {
                position: self.expected,
                found: e.position,
            });
        }
        let hash = hash_chain::recorded_hash(&self.previous, e);
        if hash != e.hash {
            return Err(Break::Altered {
                position: e.position,
            });
        }
        if e.position == self.recorded.position && hash != self.recorded.hash {
            return Err(Break::TailReplaced {
                position: e.position,
            });
        }
        if let Some(expect) = self.expect
            && expect.position == Some(e.position)
            && expect.hash != hash
        {
            return Err(Break::NotExpected {
                position: e.position,
            });
        }
        self.previous = hash;
        self.expected += 1;
        self.checked += 1;
        Ok(())
    }

    /// What the end of the log breaks, if anything, given the tail the
    /// store recorded once the walk was done.
    fn finish(&self, recorded_after: RecordedTail) -> Option<Break> {
        let last = self.expected - 1;
        if last > recorded_after.position {
            return Some(Break::Unrecorded {
                position: recorded_after.position + 1,
            });
        }
        if last < self.recorded.position {
            return Some(Break::Truncated {
                last,
                recorded: self.recorded.position,
            });
        }
        let expect = self.expect?;
        match expect.position {
            Some(position) if position > last => Some(Break::NotExpected { position }),
            None if expect.hash != self.previous => Some(Break::NotExpected { position: last }),
            _ => None,
        }
    }
}

/// Walk the log from position 1, calling `progress(checked, head)` after
/// each page. Stops at the first break.
pub async fn verify_log(
    store: &dyn EventLog,
    page: u32,
    expect: Option<&ExpectedHead>,
    mut progress: impl FnMut(u64, Position),
) -> Result<Report, StoreError> {
    let head = store.head_position().await?;
    let mut walk = Walk {
        recorded: store.recorded_tail().await?,
        expect,
        previous: hash_chain::GENESIS,
        expected: 1,
        checked: 0,
    };
    let broken = loop {
        let events = store
            .read_global(GlobalQuery {
                from_position: walk.expected,
                until_position: None,
                limit: page.max(1),
                types: None,
            })
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break walk.finish(store.recorded_tail().await?);
        };
        if let Err(broken) = events.iter().try_for_each(|e| walk.check(e)) {
            break Some(broken);
        }
        progress(walk.checked, head.max(last));
    };
    Ok(Report {
        checked: walk.checked,
        head: head.max(walk.expected - 1),
        head_hash: broken
            .is_none()
            .then(|| (walk.checked > 0).then(|| hex::encode(walk.previous)))
            .flatten(),
        broken,
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
    /// Fail unless the chain has this hash: `HASH` at its head, or
    /// `POSITION:HASH` at that position (as an earlier report printed it).
    /// The chain is not keyed, so only a hash kept elsewhere shows a
    /// rewrite of the whole log.
    #[arg(long, value_name = "[POSITION:]HASH")]
    pub expect_head: Option<ExpectedHead>,
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
    let report = verify_log(
        store,
        args.page,
        args.expect_head.as_ref(),
        |checked, head| {
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
        },
    )
    .await;
    store.close().await;
    let report = report.context("reading the log")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, started);
    }
    Ok(report.broken.is_none())
}

fn print_report(report: &Report, started: Instant) {
    match &report.broken {
        None => {
            println!(
                "ok: the hash chain of all {} events is intact ({:.2} s)",
                report.checked,
                started.elapsed().as_secs_f64()
            );
            if let Some(hash) = &report.head_hash {
                println!(
                    "head: position {} hash {hash}
                     keep it elsewhere: `kiln verify --expect-head {}:{hash}` then fails if the chain up to it is rewritten",
                    report.head, report.head
                );
            }
        }
        Some(b) => println!(
            "BROKEN at position {}: {b} ({} events before it are intact)",
            b.position(),
            report.checked
        ),
    }
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
        check_expecting(db, None).await
    }

    async fn check_expecting(db: &TestDb, expect: Option<&str>) -> Report {
        let expect: Option<ExpectedHead> = expect.map(|e| e.parse().unwrap());
        let store = db.open().await;
        let mut pages = 0;
        let report = verify_log(&*store, 3, expect.as_ref(), |_, _| pages += 1)
            .await
            .unwrap();
        store.close().await;
        assert!(pages > 0 || report.broken.is_some(), "progress is reported");
        report
    }

    async fn untouched(db: TestDb) {
        log_of(&db, 10).await;
        let report = check(&db).await;
        assert_eq!(report.broken, None);
        assert_eq!((report.checked, report.head), (10, 10));
        let events = read_all(&db).await;
        assert_eq!(report.head_hash, Some(hex::encode(events[9].hash)));
    }

    async fn read_all(db: &TestDb) -> Vec<RecordedEvent> {
        let store = db.open().await;
        let events = store.read_all(1, 1000, None).await.unwrap();
        store.close().await;
        events
    }

    /// A bytes literal in the database's own SQL.
    fn blob(db: &TestDb, bytes: &[u8]) -> String {
        match db {
            TestDb::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
            TestDb::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
        }
    }

    /// Replace the last event (10) with another whose hash chains, as
    /// someone who knows the hash function would.
    async fn forge_last_event(db: &TestDb) -> [u8; 32] {
        let events = read_all(db).await;
        let last = &events[9];
        let data = r#"{"n":999}"#;
        let hash = hash_chain::event_hash(
            &events[8].hash,
            &hash_chain::HashInput {
                position: 10,
                stream_id: &last.stream_id,
                version: last.version,
                event_type: &last.event_type,
                schema: last.schema,
                data,
                metadata: &last.metadata,
                recorded_at_us: last.recorded_at_us,
            },
        );
        db.execute(&format!(
            "DELETE FROM events WHERE position = 10; \
             INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
             VALUES (10, '{}', {}, '{}', {}, '{data}', '{}', {}, {})",
            last.stream_id,
            last.version,
            last.event_type,
            last.schema,
            last.metadata,
            last.recorded_at_us,
            blob(db, &hash)
        ))
        .await;
        hash
    }

    async fn truncated_log(db: TestDb) {
        log_of(&db, 10).await;
        db.execute("DELETE FROM events WHERE position = 10").await;
        let report = check(&db).await;
        assert_eq!(
            report.broken,
            Some(Break::Truncated {
                last: 9,
                recorded: 10
            })
        );
        assert_eq!(report.head_hash, None);
        // A store opened on it goes on after the recorded tail: the gap stays.
        log_of(&db, 1).await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Missing {
                position: 10,
                found: 11
            })
        );
    }

    async fn replaced_last_event(db: TestDb) {
        log_of(&db, 10).await;
        forge_last_event(&db).await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::TailReplaced { position: 10 })
        );
    }

    /// A rewrite of the chain and the recorded tail together passes the
    /// walk; only a head kept elsewhere shows it.
    async fn expected_head(db: TestDb) {
        log_of(&db, 10).await;
        let head = check(&db).await.head_hash.unwrap();
        let fifth = hex::encode(read_all(&db).await[4].hash);
        assert_eq!(check_expecting(&db, Some(&head)).await.broken, None);
        assert_eq!(
            check_expecting(&db, Some(&format!("10:{head}")))
                .await
                .broken,
            None
        );
        assert_eq!(
            check_expecting(&db, Some(&format!("5:{fifth}")))
                .await
                .broken,
            None
        );
        let wrong = hex::encode([7u8; 32]);
        assert_eq!(
            check_expecting(&db, Some(&wrong)).await.broken,
            Some(Break::NotExpected { position: 10 })
        );
        assert_eq!(
            check_expecting(&db, Some(&format!("11:{head}")))
                .await
                .broken,
            Some(Break::NotExpected { position: 11 })
        );

        let forged = forge_last_event(&db).await;
        db.execute(&format!(
            "UPDATE log_tail SET hash = {}",
            blob(&db, &forged)
        ))
        .await;
        let report = check(&db).await;
        assert_eq!(report.broken, None, "an unkeyed chain rewritten whole");
        assert_eq!(report.head_hash, Some(hex::encode(forged)));
        assert_eq!(
            check_expecting(&db, Some(&head)).await.broken,
            Some(Break::NotExpected { position: 10 })
        );
        assert_eq!(
            check_expecting(&db, Some(&format!("5:{fifth}")))
                .await
                .broken,
            None
        );
    }

    #[test]
    fn expected_heads_are_parsed() {
        let hash = "ab".repeat(32);
        assert_eq!(
            hash.parse::<ExpectedHead>(),
            Ok(ExpectedHead {
                position: None,
                hash: [0xab; 32]
            })
        );
        assert_eq!(
            format!("42:{hash}")
                .parse::<ExpectedHead>()
                .map(|e| e.position),
            Ok(Some(42))
        );
        assert!("0:00".parse::<ExpectedHead>().is_err());
        assert!("abc".parse::<ExpectedHead>().is_err());
        assert!(format!("x:{hash}").parse::<ExpectedHead>().is_err());
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

    /// An event added at the end with a hash that chains, past the store.
    async fn appended_past_the_store(db: TestDb) {
        log_of(&db, 10).await;
        let events = read_all(&db).await;
        let last = &events[9];
        let hash = hash_chain::event_hash(
            &last.hash,
            &hash_chain::HashInput {
                position: 11,
                stream_id: "s-9",
                version: 1,
                event_type: "Forged",
                schema: 1,
                data: "{}",
                metadata: "{}",
                recorded_at_us: last.recorded_at_us,
            },
        );
        db.execute(&format!(
            "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
             VALUES (11, 's-9', 1, 'Forged', 1, '{{}}', '{{}}', {}, {})",
            last.recorded_at_us,
            blob(&db, &hash)
        ))
        .await;
        assert_eq!(
            check(&db).await.broken,
            Some(Break::Unrecorded { position: 11 })
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
        truncated_log,
        replaced_last_event,
        appended_past_the_store,
        expected_head,
    );
}
