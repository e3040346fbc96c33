//! `alipay_certificates`: the Alipay certificates downloaded in certificate
//! mode (`alipay.open.app.alipaycert.download`), shared by every replica and
//! kept across restarts.
//!
//! A fetch runs under [`CertificateFetch`], a transaction that holds a lock on
//! the SN (PostgreSQL: a transaction-level advisory lock; SQLite: one process
//! anyway), so when Alipay rotates its certificate the replicas that meet the
//! new SN together download it once: the first one stores it, the others find
//! it stored when the lock is theirs. Rows are written only by
//! [`CertificateFetch::store`], which the client calls after the certificate
//! chained to a configured root; a refused download leaves nothing behind.
//!
//! This module stores and reads PEM text; checking certificates is
//! `upstream::cert`'s job.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Sqlite, Transaction};

use super::{Backend, JobStore, StoreError};

const PG_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('zhima.alipay_certificates'), hashtext($1))";
const PG_FIND: &str = "SELECT pem FROM alipay_certificates WHERE cert_sn = $1";
const PG_INSERT: &str = "INSERT INTO alipay_certificates (cert_sn, pem, not_after) \
     VALUES ($1, $2, $3) ON CONFLICT (cert_sn) DO NOTHING";
const SQLITE_FIND: &str = "SELECT pem FROM alipay_certificates WHERE cert_sn = ?1";
const SQLITE_INSERT: &str = "INSERT INTO alipay_certificates (cert_sn, pem, not_after) \
     VALUES (?1, ?2, ?3) ON CONFLICT (cert_sn) DO NOTHING";

/// An open fetch of one SN: holds the SN's lock until stored or dropped
/// (dropping rolls back and releases it).
pub struct CertificateFetch {
    sn: String,
    tx: FetchTx,
}

enum FetchTx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl std::fmt::Debug for CertificateFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateFetch")
            .field("sn", &self.sn)
            .finish_non_exhaustive()
    }
}

impl JobStore {
    /// The stored PEM of certificate `sn`, if some replica stored it.
    pub async fn find_alipay_certificate(&self, sn: &str) -> Result<Option<String>, StoreError> {
        let pem = match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar::<_, String>(PG_FIND)
                    .bind(sn)
                    .fetch_optional(pool)
                    .await
            }
            Backend::Sqlite(pool) => {
                sqlx::query_scalar::<_, String>(SQLITE_FIND)
                    .bind(sn)
                    .fetch_optional(pool)
                    .await
            }
        };
        pem.map_err(StoreError::query("find alipay certificate"))
    }

    /// Opens a fetch of `sn`: waits for another replica's fetch of the same
    /// SN to end, then returns with the lock held.
    pub async fn begin_certificate_fetch(&self, sn: &str) -> Result<CertificateFetch, StoreError> {
        let tx = match &self.backend {
            Backend::Postgres(pool) => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(StoreError::query("begin certificate fetch"))?;
                sqlx::query(PG_LOCK)
                    .bind(sn)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("lock certificate fetch"))?;
                FetchTx::Postgres(tx)
            }
            Backend::Sqlite(pool) => FetchTx::Sqlite(
                pool.begin()
                    .await
                    .map_err(StoreError::query("begin certificate fetch"))?,
            ),
        };
        Ok(CertificateFetch {
            sn: sn.to_owned(),
            tx,
        })
    }
}

impl CertificateFetch {
    /// The PEM stored by whoever held the lock before us, if any.
    pub async fn stored(&mut self) -> Result<Option<String>, StoreError> {
        let pem = match &mut self.tx {
            FetchTx::Postgres(tx) => {
                sqlx::query_scalar::<_, String>(PG_FIND)
                    .bind(&self.sn)
                    .fetch_optional(&mut **tx)
                    .await
            }
            FetchTx::Sqlite(tx) => {
                sqlx::query_scalar::<_, String>(SQLITE_FIND)
                    .bind(&self.sn)
                    .fetch_optional(&mut **tx)
                    .await
            }
        };
        pem.map_err(StoreError::query("find alipay certificate"))
    }

    /// Stores a certificate that chained to a configured root, and releases
    /// the lock. A row already there (same SN) is kept.
    pub async fn store(self, pem: &str, not_after: DateTime<Utc>) -> Result<(), StoreError> {
        match self.tx {
            FetchTx::Postgres(mut tx) => {
                sqlx::query(PG_INSERT)
                    .bind(&self.sn)
                    .bind(pem)
                    .bind(not_after)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("store alipay certificate"))?;
                tx.commit().await.map_err(StoreError::query("commit"))
            }
            FetchTx::Sqlite(mut tx) => {
                sqlx::query(SQLITE_INSERT)
                    .bind(&self.sn)
                    .bind(pem)
                    .bind(super::sqlite::to_text(not_after))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("store alipay certificate"))?;
                tx.commit().await.map_err(StoreError::query("commit"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    async fn sqlite_store() -> (tempfile::TempDir, JobStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("certs.db").display());
        JobStore::migrate(&url).await.unwrap();
        let store = JobStore::connect(&url, 2).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_stored_certificate_is_found_and_a_dropped_fetch_stores_nothing() {
        let (_dir, store) = sqlite_store().await;
        let sn = "9098519e37a071850e7280dd9e0460f6";
        assert_eq!(store.find_alipay_certificate(sn).await.unwrap(), None);
        let mut fetch = store.begin_certificate_fetch(sn).await.unwrap();
        assert_eq!(fetch.stored().await.unwrap(), None);
        drop(fetch);
        assert_eq!(store.find_alipay_certificate(sn).await.unwrap(), None);

        let fetch = store.begin_certificate_fetch(sn).await.unwrap();
        fetch.store("PEM-1", Utc::now()).await.unwrap();
        let mut again = store.begin_certificate_fetch(sn).await.unwrap();
        assert_eq!(again.stored().await.unwrap().as_deref(), Some("PEM-1"));
        // A second store of the same SN keeps the first row.
        again.store("PEM-2", Utc::now()).await.unwrap();
        assert_eq!(
            store.find_alipay_certificate(sn).await.unwrap().as_deref(),
            Some("PEM-1")
        );
    }
}
