//! Databases made for one test or one benchmark phase on a PostgreSQL
//! server, and dropped afterwards.

use sqlx::Connection;

/// A database of its own on the server an admin URL points at.
pub struct ScratchDatabase {
    /// The URL of the new database (the admin URL with its name).
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchDatabase {
    /// Create the database `name` (a plain identifier; the role needs
    /// CREATEDB) on the server of `admin_url`, dropping one left over under
    /// that name.
    pub async fn create(admin_url: &str, name: &str) -> Result<Self, sqlx::Error> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(sqlx::Error::Configuration(
                format!("{name:?} is not a plain database name").into(),
            ));
        }
        let (base, _) = admin_url.rsplit_once('/').ok_or_else(|| {
            sqlx::Error::Configuration("the admin URL must end in /database".into())
        })?;
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(Self {
            url: format!("{base}/{name}"),
            admin_url: admin_url.to_string(),
            name: name.to_string(),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drop the database, ending its sessions first (stop its hosts before).
    /// A failure is reported on stderr: dropping is cleanup.
    pub async fn drop(self) {
        let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await else {
            eprintln!("could not drop database {}", self.name);
            return;
        };
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut conn)
        .await;
        if let Err(e) = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .execute(&mut conn)
            .await
        {
            eprintln!("could not drop database {}: {e}", self.name);
        }
        let _ = conn.close().await;
    }
}
