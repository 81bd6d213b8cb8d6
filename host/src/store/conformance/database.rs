//! The database of one test: a temporary SQLite file, or a PostgreSQL
//! database of its own ([`ScratchDatabase`]) dropped when the test ends,
//! whether it passed or failed.

use std::sync::Arc;
use std::time::Duration;

use kiln_testkit::ScratchDatabase;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use crate::store::EventStore;
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};

/// The database of one test.
pub(crate) enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(Box<ScratchDatabase>),
}

/// Small pools: tests run in parallel on one server.
pub(super) fn test_postgres_options() -> PostgresOptions {
    PostgresOptions {
        read_connections: 3,
        poll_interval: Duration::from_millis(200),
        ..PostgresOptions::default()
    }
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database for `test`, or `None` (after saying why) when no
    /// server is configured and none is required (see
    /// [`kiln_testkit::test_server`]).
    pub(crate) async fn postgres(test: &str) -> Option<Self> {
        let db = ScratchDatabase::for_test(test).await?;
        Some(TestDb::Postgres(Box::new(db)))
    }

    /// Options that connect to the PostgreSQL database.
    pub(super) fn postgres_options(&self) -> PgConnectOptions {
        match self {
            TestDb::Postgres(db) => db.connect_options(),
            TestDb::Sqlite(_) => panic!("a PostgreSQL-only test ran on SQLite"),
        }
    }

    /// A store on this database: on PostgreSQL, a new instance each time,
    /// with connections of its own, as another host would have.
    pub(crate) async fn open(&self) -> Arc<dyn EventStore> {
        match self {
            TestDb::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
                Arc::new(
                    SqliteStore::open(&url, SqliteOptions::default())
                        .await
                        .unwrap(),
                )
            }
            TestDb::Postgres(_) => self.open_postgres(test_postgres_options()).await,
        }
    }

    pub(super) async fn open_postgres(&self, options: PostgresOptions) -> Arc<dyn EventStore> {
        Arc::new(
            PostgresStore::connect(self.postgres_options(), options)
                .await
                .unwrap(),
        )
    }

    /// `n` stores standing for `n` hosts. A SQLite file has one writer by
    /// design, so there they are one store shared.
    pub(super) async fn open_hosts(&self, n: usize) -> Vec<Arc<dyn EventStore>> {
        match self {
            TestDb::Sqlite(_) => {
                let store = self.open().await;
                vec![store; n]
            }
            TestDb::Postgres(_) => {
                let mut stores = Vec::with_capacity(n);
                for _ in 0..n {
                    stores.push(self.open().await);
                }
                stores
            }
        }
    }

    /// Run SQL on the database directly, past the store.
    pub(crate) async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                let _ = conn.close().await;
            }
            TestDb::Postgres(db) => {
                let mut conn = sqlx::PgConnection::connect_with(&db.connect_options())
                    .await
                    .unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                let _ = conn.close().await;
            }
        }
    }
}
