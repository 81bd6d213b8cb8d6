//! Which database errors mean "no connection can be had" (retry later,
//! `503 unavailable`) and which are a bug to look at (`500 internal`).
//!
//! Only the first kind is [`super::StoreError::Unavailable`]: a pool that
//! timed out or closed, an I/O or TLS failure, a server that went away or
//! is shutting down, a SQLite file that is busy, full or cannot be opened.
//! Everything else (a violated constraint, a row that does not decode, a
//! statement that fails) is [`super::StoreError::Internal`].

use libsqlite3_sys as ffi;
use sqlx::error::DatabaseError;

/// Whether `e` says the database cannot be reached now (as opposed to an
/// error in what was asked of it).
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => database_unavailable(db.as_ref()),
        _ => false,
    }
}

/// A database's own error that means it cannot serve now.
fn database_unavailable(db: &dyn DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres_unavailable(pg.code());
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(sqlite_unavailable);
    }
    false
}

/// SQLite result codes (extended or primary) of a file that cannot be used
/// now: busy or locked by another connection, out of memory, an I/O error,
/// a full disk, a file that cannot be opened.
pub fn sqlite_unavailable(code: i32) -> bool {
    matches!(
        code & 0xff,
        ffi::SQLITE_BUSY
            | ffi::SQLITE_LOCKED
            | ffi::SQLITE_NOMEM
            | ffi::SQLITE_IOERR
            | ffi::SQLITE_FULL
            | ffi::SQLITE_CANTOPEN
    )
}

/// PostgreSQL SQLSTATEs of a server that cannot serve now: class 08
/// (connection exception), 53 (insufficient resources: disk full, out of
/// memory, too many connections), 57 (operator intervention: shutting
/// down, cancelled, cannot connect now), 58 (system error: I/O), and the
/// two transaction conflicts that a retry resolves (40001 serialization
/// failure, 40P01 deadlock).
pub fn postgres_unavailable(sqlstate: &str) -> bool {
    ["08", "53", "57", "58"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
        || matches!(sqlstate, "40001" | "40P01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable() {
        assert!(connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(connection_lost(&sqlx::Error::PoolClosed));
        assert!(connection_lost(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
        assert!(!connection_lost(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!connection_lost(&sqlx::Error::Decode("bad".into())));
    }

    #[test]
    fn sqlite_codes() {
        assert!(sqlite_unavailable(ffi::SQLITE_BUSY));
        assert!(sqlite_unavailable(ffi::SQLITE_IOERR_FSYNC));
        assert!(sqlite_unavailable(ffi::SQLITE_FULL));
        assert!(!sqlite_unavailable(ffi::SQLITE_CONSTRAINT_TRIGGER));
        assert!(!sqlite_unavailable(ffi::SQLITE_CONSTRAINT_UNIQUE));
        assert!(!sqlite_unavailable(ffi::SQLITE_ERROR));
        assert!(!sqlite_unavailable(ffi::SQLITE_CORRUPT));
    }

    #[test]
    fn postgres_states() {
        assert!(postgres_unavailable("08006"));
        assert!(postgres_unavailable("57P01"));
        assert!(postgres_unavailable("53300"));
        assert!(postgres_unavailable("40001"));
        assert!(!postgres_unavailable("23505"));
        assert!(!postgres_unavailable("42P01"));
        assert!(!postgres_unavailable("22P02"));
    }
}
