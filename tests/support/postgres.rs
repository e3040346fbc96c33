//! Throwaway databases on the real PostgreSQL server: created per test or
//! bench under a random name, dropped (best effort) when it is done.

use sqlx::Connection;

/// The role `scripts/ensure-services.sh` creates (CREATEDB, not superuser);
/// `ZHIMA_TEST_POSTGRES_URL` names another server or role.
pub const PG_SERVER: &str = "postgres://zhima_test:zhima_test@127.0.0.1:5432";

/// The URL of `database` on the test server.
pub fn pg_url(database: &str) -> String {
    let server = std::env::var("ZHIMA_TEST_POSTGRES_URL")
        .map(|url| url.trim_end_matches("/postgres").to_owned())
        .unwrap_or_else(|_| PG_SERVER.to_owned());
    format!("{server}/{database}")
}

/// Creates the empty database `name`; returns its URL.
pub async fn create_database(name: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(&pg_url("postgres"))
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    pg_url(name)
}

/// Creates database `name` and runs the migrations; returns its URL.
pub async fn create_migrated_database(name: &str) -> String {
    let url = create_database(name).await;
    zhima_worker::store::JobStore::migrate(&url)
        .await
        .expect("migrate");
    url
}

/// Best effort: a run that already has its result should not fail on
/// clean-up.
pub async fn drop_database(name: &str) {
    let Ok(mut admin) = sqlx::PgConnection::connect(&pg_url("postgres")).await else {
        return;
    };
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
