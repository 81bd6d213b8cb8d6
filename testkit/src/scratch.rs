//! A database of its own on a PostgreSQL server, for one test or one
//! benchmark phase, dropped after it on every path.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::DATABASE_URL_VAR;

/// A database of its own on the server an admin URL points at.
///
/// [`ScratchDatabase::remove`] drops it and says whether that worked; when
/// that is not reached (an early return, a failed assertion) dropping the
/// value drops the database, blocking until the server has.
pub struct ScratchDatabase {
    /// The admin URL with this database's name.
    url: String,
    /// The database named by the admin URL, from which this one was created
    /// and is dropped.
    admin: PgConnectOptions,
    name: String,
    /// Set once `remove` ran: `Drop` then has nothing left to do.
    removed: bool,
}

impl ScratchDatabase {
    /// A fresh database for `test` on the server of `KILN_TEST_DATABASE_URL`,
    /// or `None` (after saying why) when no server is configured; see
    /// [`crate::test_server`].
    ///
    /// # Panics
    /// When the database cannot be created (a test helper: the test fails),
    /// and as [`crate::test_server`] does.
    pub async fn for_test(test: &str) -> Option<Self> {
        let admin_url = crate::test_server(test)?;
        let name = format!("kiln_t_{}", uuid::Uuid::new_v4().simple());
        match Self::create(&admin_url, &name).await {
            Ok(db) => Some(db),
            Err(e) => panic!("cannot create a test database on {DATABASE_URL_VAR}: {e}"),
        }
    }

    /// Create the database `name` (a plain identifier; the role needs
    /// CREATEDB) on the server of `admin_url`, dropping one left over under
    /// that name.
    pub async fn create(admin_url: &str, name: &str) -> Result<Self, sqlx::Error> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(sqlx::Error::Configuration(
                format!("{name:?} is not a plain database name").into(),
            ));
        }
        let url = database_url(admin_url, name)?;
        let admin = PgConnectOptions::from_str(admin_url)?;
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(Self {
            url,
            admin,
            name: name.to_string(),
            removed: false,
        })
    }

    /// The URL of the database (the admin URL with its name).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Options that connect to the database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// Drop the database, ending the sessions still on it first (stop its
    /// hosts before, or they see their connections cut).
    pub async fn remove(mut self) -> Result<(), sqlx::Error> {
        let removed = drop_database(&self.admin, &self.name).await;
        self.removed = true;
        removed
    }
}

impl Drop for ScratchDatabase {
    /// Drop the database when [`ScratchDatabase::remove`] was not reached,
    /// also while a failed test's panic unwinds. `Drop` cannot await the
    /// test's runtime, so this runs on a thread of its own with a runtime of
    /// its own, and waits for it.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        let removed = std::thread::spawn(move || -> Result<(), sqlx::Error> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&admin, &name))
        })
        .join();
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop database {}: the dropping thread panicked",
                self.name
            ),
        }
    }
}

/// `admin_url` with its database replaced by `name` (a query string kept).
fn database_url(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    let (path, query) = match admin_url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (admin_url, None),
    };
    let authority = path.find("://").map(|i| i + 3);
    let slash = authority.and_then(|start| path[start..].find('/').map(|i| start + i));
    let Some(slash) = slash else {
        return Err(sqlx::Error::Configuration(
            "the admin URL must be scheme://host/database".into(),
        ));
    };
    let mut url = format!("{}/{name}", &path[..slash]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

/// End the sessions left on the database (a failed test's stores), then
/// drop it. Not `WITH (FORCE)`: that also wants to end the server's
/// autovacuum worker, which a role that is not a superuser may not; a plain
/// DROP makes the worker give way. Retried: a store may be reconnecting
/// meanwhile.
async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(admin).await?;
    let mut attempt = 0;
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut conn)
        .await?;
        match sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => break,
            Err(_) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    conn.close().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail on any error")]

    use super::*;

    /// Whether the server of `db` still has a database called `name`.
    async fn exists(admin: &PgConnectOptions, name: &str) -> bool {
        let mut conn = PgConnection::connect_with(admin).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n == 1
    }

    #[test]
    fn the_url_names_the_new_database() {
        let url = |admin| database_url(admin, "kiln_t_1").unwrap();
        assert_eq!(
            url("postgres://u:p@h:5432/d"),
            "postgres://u:p@h:5432/kiln_t_1"
        );
        assert_eq!(
            url("postgres://u@h/d?sslmode=disable"),
            "postgres://u@h/kiln_t_1?sslmode=disable"
        );
        assert!(database_url("postgres://u@h", "x").is_err());
        assert!(database_url("not a url", "x").is_err());
    }

    #[tokio::test]
    async fn only_plain_names_are_created() {
        for name in ["", "a-b", "x; DROP DATABASE y", "\"q\""] {
            let err = ScratchDatabase::create("postgres://u@127.0.0.1:1/d", name)
                .await
                .err()
                .expect("refused before connecting");
            assert!(matches!(err, sqlx::Error::Configuration(_)), "{err:?}");
        }
    }

    #[tokio::test]
    async fn remove_drops_the_database_and_its_sessions() {
        let Some(db) = ScratchDatabase::for_test("remove_drops_the_database").await else {
            return;
        };
        let (admin, name) = (db.admin.clone(), db.name().to_string());
        assert!(exists(&admin, &name).await);
        // A session left open, as a host that was not stopped leaves one.
        let mut left_open = PgConnection::connect(db.url()).await.unwrap();
        sqlx::query("SELECT 1")
            .execute(&mut left_open)
            .await
            .unwrap();
        db.remove().await.unwrap();
        assert!(!exists(&admin, &name).await);
    }

    #[tokio::test]
    async fn a_database_never_removed_is_dropped_with_its_value() {
        let Some(db) = ScratchDatabase::for_test("dropped_with_its_value").await else {
            return;
        };
        let (admin, name) = (db.admin.clone(), db.name().to_string());
        let mut left_open = PgConnection::connect_with(&db.connect_options())
            .await
            .unwrap();
        sqlx::query("SELECT 1")
            .execute(&mut left_open)
            .await
            .unwrap();
        drop(db);
        assert!(!exists(&admin, &name).await);
    }

    #[tokio::test]
    async fn a_panicking_test_leaves_no_database_behind() {
        let Some(db) = ScratchDatabase::for_test("a_panicking_test").await else {
            return;
        };
        let (admin, name) = (db.admin.clone(), db.name().to_string());
        let failed = tokio::spawn(async move {
            let _db = db;
            panic!("a failed assertion");
        })
        .await;
        assert!(failed.is_err_and(|e| e.is_panic()));
        assert!(!exists(&admin, &name).await);
    }
}
