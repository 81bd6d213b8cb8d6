//! The writer's statements, run on SQLite's connection directly.
//!
//! Through sqlx every query is a round trip to the connection's own thread:
//! the writer sends the query, that thread wakes, runs it and wakes the
//! writer again. Under load on a small machine each hop waits for a core,
//! and a batch made several. The writer instead locks the connection once
//! per batch ([`sqlx::sqlite::LockedSqliteHandle`]) and runs its prepared
//! statements itself, binding values directly (no JSON documents to build
//! and parse), so a batch costs what SQLite costs.
//!
//! This is the only module that calls SQLite's C API; its types keep the
//! rules that API sets: a statement is used only while the connection is
//! locked ([`Direct`] borrows the lock), a value bound to a statement lives
//! until the statement has run (bindings are cleared before [`Direct::run`]
//! and [`Direct::query`] return), and every prepared statement is finalized
//! before the connection closes ([`Direct::finalize_all`]).
#![expect(
    unsafe_code,
    reason = "calls into SQLite's C API on the connection sqlx lends the writer"
)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;

/// An error SQLite reported.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (SQLite error {code})")]
pub struct SqliteError {
    /// The extended result code.
    pub code: i32,
    pub message: String,
}

impl SqliteError {
    fn other(message: impl Into<String>) -> Self {
        Self {
            code: ffi::SQLITE_MISUSE,
            message: message.into(),
        }
    }
}

/// A value bound to a statement's next `?`.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    Null,
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(text)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(text: &'a String) -> Self {
        Value::Text(text)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Value::Blob(bytes)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// A prepared statement, owned by [`Prepared`].
struct Statement(NonNull<ffi::sqlite3_stmt>);

/// The writer's prepared statements, kept across batches (preparing one
/// costs more than running it). They belong to one connection.
#[derive(Default)]
pub struct Prepared {
    statements: HashMap<&'static str, Statement>,
}

// SAFETY: the statements are only touched through a `Direct`, which holds
// the connection's lock, so no two threads use them at once.
unsafe impl Send for Prepared {}

impl Prepared {
    /// Whether statements are left that must be finalized before the
    /// connection closes.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// The writer's access to the locked connection.
pub struct Direct<'a> {
    db: NonNull<ffi::sqlite3>,
    prepared: &'a mut Prepared,
}

/// One result row, valid inside the callback of [`Direct::query`].
pub struct Row {
    stmt: *mut ffi::sqlite3_stmt,
}

impl Row {
    pub fn is_null(&self, column: usize) -> bool {
        // SAFETY: `stmt` is on a row (the callback runs only then).
        unsafe { ffi::sqlite3_column_type(self.stmt, column as c_int) == ffi::SQLITE_NULL }
    }

    pub fn int(&self, column: usize) -> i64 {
        // SAFETY: as above; an out-of-range column reads as NULL (0).
        unsafe { ffi::sqlite3_column_int64(self.stmt, column as c_int) }
    }

    pub fn text(&self, column: usize) -> Result<String, SqliteError> {
        // SAFETY: as above. The pointer and length describe the column's
        // text, valid until the next step; it is copied before then.
        unsafe {
            let ptr = ffi::sqlite3_column_text(self.stmt, column as c_int);
            let len = ffi::sqlite3_column_bytes(self.stmt, column as c_int);
            if ptr.is_null() || len <= 0 {
                return Ok(String::new());
            }
            let bytes = std::slice::from_raw_parts(ptr, len as usize);
            String::from_utf8(bytes.to_vec())
                .map_err(|_| SqliteError::other(format!("column {column} is not UTF-8 text")))
        }
    }
}

impl<'a> Direct<'a> {
    /// Borrow the locked connection for direct statements.
    pub fn new(handle: &'a mut LockedSqliteHandle<'_>, prepared: &'a mut Prepared) -> Self {
        Self {
            db: handle.as_raw_handle(),
            prepared,
        }
    }

    /// Finalize every prepared statement: required before the connection
    /// closes (sqlx's close fails on a statement left behind).
    pub fn finalize_all(&mut self) {
        for (_, statement) in self.prepared.statements.drain() {
            // SAFETY: the statement was prepared on this connection, is not
            // in use (the lock is held) and is never used again.
            unsafe {
                ffi::sqlite3_finalize(statement.0.as_ptr());
            }
        }
    }

    fn error(&self, code: c_int) -> SqliteError {
        // SAFETY: the connection is open and locked; the message is copied
        // before any other call on it.
        let message = unsafe {
            let text = ffi::sqlite3_errmsg(self.db.as_ptr());
            if text.is_null() {
                String::from("unknown error")
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            }
        };
        // SAFETY: as above.
        let extended = unsafe { ffi::sqlite3_extended_errcode(self.db.as_ptr()) };
        SqliteError {
            code: if extended != 0 { extended } else { code },
            message,
        }
    }

    /// Run SQL without parameters or results (`BEGIN`, `COMMIT`, a pragma).
    pub fn execute(&mut self, sql: &str) -> Result<(), SqliteError> {
        let text = std::ffi::CString::new(sql)
            .map_err(|_| SqliteError::other("SQL text contains a NUL byte"))?;
        // SAFETY: the connection is open and locked; `text` is a valid C
        // string; no callback, no error message buffer.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db.as_ptr(),
                text.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc))
        }
    }

    /// The statement for `sql`, prepared the first time.
    fn statement(&mut self, sql: &'static str) -> Result<*mut ffi::sqlite3_stmt, SqliteError> {
        if let Some(s) = self.prepared.statements.get(sql) {
            return Ok(s.0.as_ptr());
        }
        let len = c_int::try_from(sql.len()).map_err(|_| SqliteError::other("SQL too long"))?;
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        // SAFETY: the connection is open and locked; `sql` is valid for
        // `len` bytes; the statement is stored and finalized by `Prepared`.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                self.db.as_ptr(),
                sql.as_ptr() as *const c_char,
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| SqliteError::other("empty statement"))?;
        self.prepared.statements.insert(sql, Statement(stmt));
        Ok(stmt.as_ptr())
    }

    /// Run a statement with `params`; returns the rows it changed.
    pub fn run(&mut self, sql: &'static str, params: &[Value<'_>]) -> Result<u64, SqliteError> {
        self.query(sql, params, |_| Ok(()))?;
        // SAFETY: the connection is open and locked.
        Ok(unsafe { ffi::sqlite3_changes64(self.db.as_ptr()) }.max(0) as u64)
    }

    /// Run a statement with `params`, calling `each` for every row.
    pub fn query(
        &mut self,
        sql: &'static str,
        params: &[Value<'_>],
        mut each: impl FnMut(&Row) -> Result<(), SqliteError>,
    ) -> Result<(), SqliteError> {
        let stmt = self.statement(sql)?;
        let outcome = self.bind(stmt, params).and_then(|()| {
            loop {
                // SAFETY: the statement is prepared, its parameters bound to
                // values that outlive this call.
                match unsafe { ffi::sqlite3_step(stmt) } {
                    ffi::SQLITE_ROW => each(&Row { stmt })?,
                    ffi::SQLITE_DONE => break Ok(()),
                    rc => break Err(self.error(rc)),
                }
            }
        });
        // SAFETY: the statement is prepared; resetting it and clearing its
        // bindings drops every pointer to `params` before they go away.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        outcome
    }

    fn bind(&self, stmt: *mut ffi::sqlite3_stmt, params: &[Value<'_>]) -> Result<(), SqliteError> {
        for (i, value) in params.iter().enumerate() {
            let index = i as c_int + 1;
            // SAFETY: the statement is prepared; text and blob pointers are
            // valid for their lengths until the bindings are cleared, which
            // `query` does before the values can be dropped (so SQLite need
            // not copy them).
            let rc = unsafe {
                match *value {
                    Value::Int(n) => ffi::sqlite3_bind_int64(stmt, index, n),
                    Value::Null => ffi::sqlite3_bind_null(stmt, index),
                    Value::Text(text) => ffi::sqlite3_bind_text(
                        stmt,
                        index,
                        text.as_ptr() as *const c_char,
                        c_int::try_from(text.len())
                            .map_err(|_| SqliteError::other("text value too long"))?,
                        ffi::SQLITE_STATIC(),
                    ),
                    Value::Blob(bytes) => ffi::sqlite3_bind_blob(
                        stmt,
                        index,
                        bytes.as_ptr().cast(),
                        c_int::try_from(bytes.len())
                            .map_err(|_| SqliteError::other("blob value too long"))?,
                        ffi::SQLITE_STATIC(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.error(rc));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, SqliteConnection};

    #[tokio::test]
    async fn statements_bind_run_and_read_back_values() {
        let mut conn = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory database");
        let mut prepared = Prepared::default();
        {
            let mut handle = conn.lock_handle().await.expect("lock");
            let mut db = Direct::new(&mut handle, &mut prepared);
            db.execute("CREATE TABLE t (n INTEGER, s TEXT, b BLOB)")
                .expect("create");
            for (n, s) in [(1, "one"), (2, "two")] {
                let changed = db
                    .run(
                        "INSERT INTO t (n, s, b) VALUES (?, ?, ?)",
                        &[Value::Int(n), Value::Text(s), Value::Blob(&[7, 8])],
                    )
                    .expect("insert");
                assert_eq!(changed, 1);
            }
            db.run(
                "INSERT INTO t (n, s, b) VALUES (?, ?, ?)",
                &[Value::Int(3), Value::Null, Value::Null],
            )
            .expect("insert nulls");
            let mut seen = Vec::new();
            db.query(
                "SELECT n, s FROM t WHERE n >= ? ORDER BY n",
                &[Value::Int(2)],
                |row| {
                    seen.push((row.int(0), row.is_null(1), row.text(1)?));
                    Ok(())
                },
            )
            .expect("select");
            assert_eq!(
                seen,
                vec![(2, false, "two".to_string()), (3, true, String::new())]
            );
            // A statement is prepared once and reused.
            assert_eq!(db.prepared.statements.len(), 2);
            let err = db
                .run("INSERT INTO missing VALUES (?)", &[Value::Int(1)])
                .expect_err("no such table");
            assert!(err.message.contains("missing"), "{err}");
            db.finalize_all();
        }
        assert!(prepared.is_empty());
        // The connection closes cleanly: no statement was left behind.
        conn.close().await.expect("close");
    }
}
