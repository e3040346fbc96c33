//! The SQL of answer reuse (issue 17): finding the newest paid answer to a
//! question by its keyed hash (`question_hmac`, [`crate::pii::PiiKey::question_hash`]),
//! completing a new job from it. A paid answer is indexed (`question_hmac`)
//! by the outcome's own update (`RowUpdate::Succeeded`), in its transaction.
//!
//! A reused row is written, with its answer copied from the paying row and
//! its result event (and batch progress), in ONE transaction by one
//! `INSERT … SELECT … ON CONFLICT DO NOTHING`: the lookup and the copy cannot
//! drift apart, a transaction_id already stored (a redelivery, a job already
//! begun, another job's id) is left to the ordinary flow untouched, and two
//! replicas racing on one transaction_id cannot both write it.
//!
//! Most new jobs ask a new question: a plain indexed read looks for a paid
//! answer first, and only when there is one does the writing transaction
//! run (it checks again, in its one statement), so a miss costs one read
//! and, on SQLite, never takes the writer lock.
//!
//! What a reused row holds: status `succeeded`, the payer's `relation_rank`,
//! `recency`, `relation_score` and `question_hmac`, `reused_from` = the
//! payer's transaction_id; no `biz_no` (the upstream billed nothing for this
//! transaction_id, and biz_no is the unique reconciliation key of a billed
//! query), no `response_body` (the evidence stays on the payer's row), no
//! ledger entry, no first call, 0 attempts. Only rows that paid are ever
//! candidates (`reused_from IS NULL`), so `reused_from` always names the
//! payer, never another reused row.
//!
//! This module decides nothing about when to reuse (that is
//! `crate::processor::reuse`) and sees only masked personal data and hashes.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, PgPool, Pool, Postgres, Sqlite, SqlitePool, Transaction};

use super::dialect::Dialect;
use super::sqlite::to_text;
use super::{JobKey, JobStore, StoreError, results};

impl JobStore {
    /// Completes the job of `key` from the newest `succeeded` answer that a
    /// job paid for, to the question `question_hash`, completed at or after
    /// `answered_since`. Returns the payer's transaction_id, or None (and
    /// writes nothing) when there is no such answer or a row for the
    /// transaction_id exists already.
    pub(crate) async fn reuse_answer(
        &self,
        key: &JobKey<'_>,
        question_hash: &str,
        answered_since: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let has_answer = with_pool!(self, pool => {
            ReuseSql::has_answer(pool, question_hash, answered_since).await
        })
        .map_err(StoreError::query("look for a stored answer"))?;
        if !has_answer {
            return Ok(None);
        }
        let events = self.events_enabled();
        let reuse = Reuse {
            key,
            question_hash,
            answered_since,
        };
        let (payer, wrote_event) = with_pool!(self, pool => reuse_in(pool, &reuse, events).await)?;
        if wrote_event {
            self.notify_events();
        }
        Ok(payer)
    }

    /// How many stored rows were answered from another job's paid answer.
    pub(crate) async fn reused_count(&self) -> Result<i64, StoreError> {
        with_pool!(self, pool => ReuseSql::reused_count(pool).await)
            .map_err(StoreError::query("count reused answers"))
    }
}

/// The arguments of [`JobStore::reuse_answer`], passed to the backends as one.
pub(super) struct Reuse<'a> {
    key: &'a JobKey<'a>,
    question_hash: &'a str,
    answered_since: DateTime<Utc>,
}

async fn reuse_in<D: Dialect + ReuseSql>(
    pool: &Pool<D>,
    reuse: &Reuse<'_>,
    events: bool,
) -> Result<(Option<String>, bool), StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let Some(payer) = D::insert_reused(&mut tx, reuse).await? else {
        tx.rollback().await.map_err(StoreError::query("rollback"))?;
        return Ok((None, false));
    };
    let wrote_event = results::after_final(&mut tx, reuse.key.transaction_id, events).await?;
    tx.commit().await.map_err(StoreError::query("commit"))?;
    Ok((Some(payer), wrote_event))
}

/// The statements of this file for one backend.
pub(super) trait ReuseSql: Database {
    /// Whether a paid answer to the question completed at or after `since`
    /// exists (a read; [`ReuseSql::insert_reused`] decides).
    fn has_answer(
        pool: &Pool<Self>,
        question_hash: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// The reused row, copied from the newest matching paid answer; the
    /// payer's transaction_id, or None when nothing was written.
    fn insert_reused(
        tx: &mut Transaction<'_, Self>,
        reuse: &Reuse<'_>,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    fn reused_count(pool: &Pool<Self>) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
}

/// The paid answers to the question `question` completed at or after
/// `since` (both SQL expressions, placeholders); the partial index
/// `relation_checks_question_hmac_idx` (migration 0007) serves it.
fn payer_filter(question: &str, since: &str) -> String {
    format!(
        "payer.question_hmac = {question} AND payer.status = 'succeeded' \
         AND payer.reused_from IS NULL AND payer.relation_rank IS NOT NULL \
         AND payer.completed_at >= {since}"
    )
}

fn has_answer_sql(placeholder: &str) -> String {
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM relation_checks AS payer WHERE {} LIMIT 1) AS found",
        payer_filter(&format!("{placeholder}1"), &format!("{placeholder}2"))
    )
}

/// The one statement of a reuse, in either dialect's placeholders (`{n}`
/// replaced by `$n` or `?n`) and time of now.
fn insert_reused_sql(placeholder: &str, now: &str) -> String {
    let p = |n: u8| format!("{placeholder}{n}");
    format!(
        "INSERT INTO relation_checks (transaction_id, external_ref, batch_id, status, attempts, \
             relation_rank, recency, relation_score, cert_no_masked, name_masked, \
             relation_phone_masked, relation_name_masked, business_fingerprint, cert_no_hmac, \
             relation_phone_hmac, question_hmac, reused_from, created_at, updated_at, \
             completed_at) \
         SELECT {t}, {r}, {b}, 'succeeded', 0, payer.relation_rank, payer.recency, \
             payer.relation_score, {m1}, {m2}, {m3}, {m4}, {f}, {h1}, {h2}, payer.question_hmac, \
             payer.transaction_id, {now}, {now}, {now} \
         FROM relation_checks AS payer \
         WHERE {filter} AND payer.transaction_id <> {t} \
         ORDER BY payer.completed_at DESC, payer.transaction_id LIMIT 1 \
         ON CONFLICT (transaction_id) DO NOTHING \
         RETURNING reused_from",
        t = p(1),
        r = p(2),
        b = p(3),
        m1 = p(4),
        m2 = p(5),
        m3 = p(6),
        m4 = p(7),
        f = p(8),
        h1 = p(9),
        h2 = p(10),
        filter = payer_filter(&p(11), &p(12)),
    )
}

/// Binds [`insert_reused_sql`]'s parameters 1 to 11 (12 is the time, whose
/// type is the backend's).
macro_rules! bind_reuse {
    ($query:expr, $reuse:expr) => {{
        let key = $reuse.key;
        $query
            .bind(key.transaction_id)
            .bind(key.external_ref)
            .bind(key.batch_id)
            .bind(&key.masked.cert_no)
            .bind(&key.masked.name)
            .bind(&key.masked.relation_phone)
            .bind(&key.masked.relation_name)
            .bind(key.fingerprint)
            .bind(key.masked.cert_no_hmac.as_deref())
            .bind(key.masked.relation_phone_hmac.as_deref())
            .bind($reuse.question_hash)
    }};
}

impl ReuseSql for Postgres {
    async fn has_answer(
        pool: &PgPool,
        question_hash: &str,
        since: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(has_answer_sql("$")))
            .bind(question_hash)
            .bind(since)
            .fetch_one(pool)
            .await?;
        Ok(found > 0)
    }

    async fn insert_reused(
        tx: &mut Transaction<'_, Postgres>,
        reuse: &Reuse<'_>,
    ) -> Result<Option<String>, StoreError> {
        let sql = insert_reused_sql("$", "now()");
        let query = sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql));
        let payer = bind_reuse!(query, reuse)
            .bind(reuse.answered_since)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("reuse a stored answer"))?;
        Ok(payer.flatten())
    }

    async fn reused_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM relation_checks WHERE reused_from IS NOT NULL")
            .fetch_one(pool)
            .await
    }
}

/// SQLite: the `INSERT … SELECT` has a WHERE clause, which its upsert
/// grammar requires; timestamps are the store's fixed UTC text form.
impl ReuseSql for Sqlite {
    async fn has_answer(
        pool: &SqlitePool,
        question_hash: &str,
        since: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(has_answer_sql("?")))
            .bind(question_hash)
            .bind(to_text(since))
            .fetch_one(pool)
            .await?;
        Ok(found > 0)
    }

    async fn insert_reused(
        tx: &mut Transaction<'_, Sqlite>,
        reuse: &Reuse<'_>,
    ) -> Result<Option<String>, StoreError> {
        let sql = insert_reused_sql("?", "?13");
        let query = sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql));
        let payer = bind_reuse!(query, reuse)
            .bind(to_text(reuse.answered_since))
            .bind(to_text(Utc::now()))
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("reuse a stored answer"))?;
        Ok(payer.flatten())
    }

    async fn reused_count(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM relation_checks WHERE reused_from IS NOT NULL")
            .fetch_one(pool)
            .await
    }
}
