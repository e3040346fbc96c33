//! The SQL of the daily budget (`spend.daily_limit`, see `crate::spend`):
//! `spend_days` (one counter row per statement day), `spend_reservations`
//! (one unit of budget per transaction_id, `held` then `billed`, deleted when
//! given back) and `spend_refusals` (jobs turned back at the limit).
//!
//! Taking a unit is one transaction that first locks the day's counter row
//! (PostgreSQL `FOR UPDATE`; SQLite has one writer), so replicas take turns
//! and the guarded `used < limit` update can never let the day's count pass
//! the limit. A transaction_id that already holds a unit (any day) takes no
//! second one. Days are `YYYY-MM-DD` texts chosen by the caller; this module
//! decides nothing about what a call cost: that is `crate::spend`.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use super::sqlite::to_text;
use super::{JobStore, StoreError};

/// What asking for one unit of a day's budget gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// A new unit is held for this transaction_id; `used` counts it.
    Taken { used: i64 },
    /// The transaction_id already holds a unit (an earlier attempt, maybe a
    /// crashed one): no second unit; the call may go ahead.
    AlreadyHeld,
    /// The day's units are all taken: do not call.
    Refused { used: i64 },
}

/// One statement day of the budget tables, for `zhima-worker spend`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SpendDayRow {
    pub(crate) day: String,
    /// Units taken that day (held + billed).
    pub(crate) used: i64,
    /// Units whose call succeeded.
    pub(crate) billed_units: i64,
    /// Units whose outcome is still unknown (counted as used).
    pub(crate) held: i64,
    /// Jobs turned back at the limit.
    pub(crate) refused: i64,
    /// The limit the last reserving replica enforced (0 = no row).
    pub(crate) daily_limit: i64,
}

/// The budget statements of one backend.
pub(super) trait SpendSql: sqlx::Database {
    fn reserve(
        pool: &sqlx::Pool<Self>,
        transaction_id: &str,
        day: &str,
        limit: i64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;

    /// Marks the transaction_id's unit billed (if it has one).
    fn mark_billed(
        pool: &sqlx::Pool<Self>,
        transaction_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives a `held` unit back (a billed one is never given back); true
    /// when one was.
    fn release(
        pool: &sqlx::Pool<Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn note_refusal(
        pool: &sqlx::Pool<Self>,
        day: &str,
        transaction_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn used(
        pool: &sqlx::Pool<Self>,
        day: &str,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Units of `day` still `held` for a job waiting for its retry (its row
    /// says `retrying`: an earlier attempt's outcome was uncertain), taken
    /// after `since`. A job's first call in flight does not count: it
    /// settles its unit when it returns.
    fn pending_units(
        pool: &sqlx::Pool<Self>,
        day: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Deletes the three tables' rows of days before `day`; how many.
    fn forget_before(
        pool: &sqlx::Pool<Self>,
        day: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every day of the three tables in `[first, last]` (inclusive).
    fn days(
        pool: &sqlx::Pool<Self>,
        first: &str,
        last: &str,
    ) -> impl Future<Output = Result<Vec<SpendDayRow>, StoreError>> + Send;
}

/// The statements that differ between the backends: placeholders, the row
/// lock, and how a timestamp is bound.
struct Statements {
    open_day: &'static str,
    lock_day: &'static str,
    find_unit: &'static str,
    take_unit: &'static str,
    insert_unit: &'static str,
    mark_billed: &'static str,
    delete_held: &'static str,
    give_back: &'static str,
    note_refusal: &'static str,
    used: &'static str,
    days: &'static str,
    forget: [&'static str; 3],
    pending: &'static str,
}

const PG: Statements = Statements {
    open_day: "INSERT INTO spend_days (day, used, daily_limit) VALUES ($1, 0, $2) \
               ON CONFLICT (day) DO NOTHING",
    lock_day: "SELECT used FROM spend_days WHERE day = $1 FOR UPDATE",
    find_unit: "SELECT count(*) FROM spend_reservations WHERE transaction_id = $1",
    take_unit: "UPDATE spend_days SET used = used + 1, daily_limit = $2 \
                WHERE day = $1 AND used < $2 RETURNING used",
    insert_unit: "INSERT INTO spend_reservations (transaction_id, day, state, reserved_at) \
                  VALUES ($1, $2, 'held', $3)",
    mark_billed: "UPDATE spend_reservations SET state = 'billed', settled_at = $2 \
                  WHERE transaction_id = $1",
    delete_held: "DELETE FROM spend_reservations WHERE transaction_id = $1 AND state = 'held' \
                  RETURNING day",
    give_back: "UPDATE spend_days SET used = used - 1 WHERE day = $1 AND used > 0",
    note_refusal: "INSERT INTO spend_refusals (day, transaction_id, refused_at) \
                   VALUES ($1, $2, $3) ON CONFLICT (day, transaction_id) DO NOTHING",
    used: "SELECT used FROM spend_days WHERE day = $1",
    days: DAYS_PG,
    forget: [
        "DELETE FROM spend_days WHERE day < $1",
        "DELETE FROM spend_reservations WHERE day < $1",
        "DELETE FROM spend_refusals WHERE day < $1",
    ],
    pending: "SELECT count(*) FROM spend_reservations r \
              JOIN relation_checks c ON c.transaction_id = r.transaction_id \
              WHERE r.day = $1 AND r.state = 'held' AND r.reserved_at > $2 \
                AND c.status = 'retrying'",
};

const SQLITE: Statements = Statements {
    open_day: "INSERT INTO spend_days (day, used, daily_limit) VALUES (?1, 0, ?2) \
               ON CONFLICT (day) DO NOTHING",
    lock_day: "SELECT used FROM spend_days WHERE day = ?1",
    find_unit: "SELECT count(*) FROM spend_reservations WHERE transaction_id = ?1",
    take_unit: "UPDATE spend_days SET used = used + 1, daily_limit = ?2 \
                WHERE day = ?1 AND used < ?2 RETURNING used",
    insert_unit: "INSERT INTO spend_reservations (transaction_id, day, state, reserved_at) \
                  VALUES (?1, ?2, 'held', ?3)",
    mark_billed: "UPDATE spend_reservations SET state = 'billed', settled_at = ?2 \
                  WHERE transaction_id = ?1",
    delete_held: "DELETE FROM spend_reservations WHERE transaction_id = ?1 AND state = 'held' \
                  RETURNING day",
    give_back: "UPDATE spend_days SET used = used - 1 WHERE day = ?1 AND used > 0",
    note_refusal: "INSERT INTO spend_refusals (day, transaction_id, refused_at) \
                   VALUES (?1, ?2, ?3) ON CONFLICT (day, transaction_id) DO NOTHING",
    used: "SELECT used FROM spend_days WHERE day = ?1",
    days: DAYS_SQLITE,
    forget: [
        "DELETE FROM spend_days WHERE day < ?1",
        "DELETE FROM spend_reservations WHERE day < ?1",
        "DELETE FROM spend_refusals WHERE day < ?1",
    ],
    pending: "SELECT count(*) FROM spend_reservations r \
              JOIN relation_checks c ON c.transaction_id = r.transaction_id \
              WHERE r.day = ?1 AND r.state = 'held' AND r.reserved_at > ?2 \
                AND c.status = 'retrying'",
};

/// Days from any of the three tables, with their counts.
const DAYS_PG: &str = "\
WITH all_days AS (
    SELECT day FROM spend_days WHERE day >= $1 AND day <= $2
    UNION SELECT day FROM spend_reservations WHERE day >= $1 AND day <= $2
    UNION SELECT day FROM spend_refusals WHERE day >= $1 AND day <= $2
)
SELECT a.day,
    COALESCE((SELECT used FROM spend_days d WHERE d.day = a.day), 0) AS used,
    (SELECT count(*) FROM spend_reservations r WHERE r.day = a.day AND r.state = 'billed') AS billed,
    (SELECT count(*) FROM spend_reservations r WHERE r.day = a.day AND r.state = 'held') AS held,
    (SELECT count(*) FROM spend_refusals f WHERE f.day = a.day) AS refused,
    COALESCE((SELECT daily_limit FROM spend_days d WHERE d.day = a.day), 0) AS daily_limit
FROM all_days a ORDER BY a.day";

const DAYS_SQLITE: &str = "\
WITH all_days AS (
    SELECT day FROM spend_days WHERE day >= ?1 AND day <= ?2
    UNION SELECT day FROM spend_reservations WHERE day >= ?1 AND day <= ?2
    UNION SELECT day FROM spend_refusals WHERE day >= ?1 AND day <= ?2
)
SELECT a.day,
    COALESCE((SELECT used FROM spend_days d WHERE d.day = a.day), 0) AS used,
    (SELECT count(*) FROM spend_reservations r WHERE r.day = a.day AND r.state = 'billed') AS billed,
    (SELECT count(*) FROM spend_reservations r WHERE r.day = a.day AND r.state = 'held') AS held,
    (SELECT count(*) FROM spend_refusals f WHERE f.day = a.day) AS refused,
    COALESCE((SELECT daily_limit FROM spend_days d WHERE d.day = a.day), 0) AS daily_limit
FROM all_days a ORDER BY a.day";

type DayTuple = (String, i64, i64, i64, i64, i64);

fn day_row((day, used, billed_units, held, refused, daily_limit): DayTuple) -> SpendDayRow {
    SpendDayRow {
        day,
        used,
        billed_units,
        held,
        refused,
        daily_limit,
    }
}

/// The same orchestration for each backend: only the SQL text and the way a
/// timestamp is bound differ (`$time` turns a `DateTime<Utc>` into the bound
/// value).
macro_rules! spend_sql {
    ($db:ty, $pool:ty, $sql:expr, $time:expr) => {
        impl SpendSql for $db {
            async fn reserve(
                pool: &$pool,
                transaction_id: &str,
                day: &str,
                limit: i64,
                now: DateTime<Utc>,
            ) -> Result<Reservation, StoreError> {
                let sql = &$sql;
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                sqlx::query(sql.open_day)
                    .bind(day)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                let _: i64 = sqlx::query_scalar(sql.lock_day)
                    .bind(day)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                let held: i64 = sqlx::query_scalar(sql.find_unit)
                    .bind(transaction_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                if held > 0 {
                    tx.commit()
                        .await
                        .map_err(StoreError::query("reserve spend"))?;
                    return Ok(Reservation::AlreadyHeld);
                }
                let taken: Option<i64> = sqlx::query_scalar(sql.take_unit)
                    .bind(day)
                    .bind(limit)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                let Some(used) = taken else {
                    let used: i64 = sqlx::query_scalar(sql.used)
                        .bind(day)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(StoreError::query("reserve spend"))?;
                    tx.commit()
                        .await
                        .map_err(StoreError::query("reserve spend"))?;
                    return Ok(Reservation::Refused { used });
                };
                sqlx::query(sql.insert_unit)
                    .bind(transaction_id)
                    .bind(day)
                    .bind($time(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                tx.commit()
                    .await
                    .map_err(StoreError::query("reserve spend"))?;
                Ok(Reservation::Taken { used })
            }

            async fn mark_billed(
                pool: &$pool,
                transaction_id: &str,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query($sql.mark_billed)
                    .bind(transaction_id)
                    .bind($time(now))
                    .execute(pool)
                    .await
                    .map_err(StoreError::query("mark the spend billed"))?;
                Ok(())
            }

            async fn release(pool: &$pool, transaction_id: &str) -> Result<bool, StoreError> {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(StoreError::query("give spend back"))?;
                let day: Option<String> = sqlx::query_scalar($sql.delete_held)
                    .bind(transaction_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::query("give spend back"))?;
                let Some(day) = day else {
                    tx.commit()
                        .await
                        .map_err(StoreError::query("give spend back"))?;
                    return Ok(false);
                };
                sqlx::query($sql.give_back)
                    .bind(day)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("give spend back"))?;
                tx.commit()
                    .await
                    .map_err(StoreError::query("give spend back"))?;
                Ok(true)
            }

            async fn note_refusal(
                pool: &$pool,
                day: &str,
                transaction_id: &str,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query($sql.note_refusal)
                    .bind(day)
                    .bind(transaction_id)
                    .bind($time(now))
                    .execute(pool)
                    .await
                    .map_err(StoreError::query("count a refusal for budget"))?;
                Ok(())
            }

            async fn used(pool: &$pool, day: &str) -> Result<i64, StoreError> {
                let used: Option<i64> = sqlx::query_scalar($sql.used)
                    .bind(day)
                    .fetch_optional(pool)
                    .await
                    .map_err(StoreError::query("read the day's spend"))?;
                Ok(used.unwrap_or(0))
            }

            async fn pending_units(
                pool: &$pool,
                day: &str,
                since: DateTime<Utc>,
            ) -> Result<i64, StoreError> {
                sqlx::query_scalar($sql.pending)
                    .bind(day)
                    .bind($time(since))
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::query("count the day's pending spend units"))
            }

            async fn forget_before(pool: &$pool, day: &str) -> Result<u64, StoreError> {
                let mut deleted = 0;
                for statement in $sql.forget {
                    deleted += sqlx::query(statement)
                        .bind(day)
                        .execute(pool)
                        .await
                        .map_err(StoreError::query("forget old spend days"))?
                        .rows_affected();
                }
                Ok(deleted)
            }

            async fn days(
                pool: &$pool,
                first: &str,
                last: &str,
            ) -> Result<Vec<SpendDayRow>, StoreError> {
                let rows: Vec<DayTuple> = sqlx::query_as($sql.days)
                    .bind(first)
                    .bind(last)
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::query("read the spend days"))?;
                Ok(rows.into_iter().map(day_row).collect())
            }
        }
    };
}

fn pg_time(at: DateTime<Utc>) -> DateTime<Utc> {
    at
}

spend_sql!(Postgres, PgPool, PG, pg_time);
spend_sql!(Sqlite, SqlitePool, SQLITE, to_text);

impl JobStore {
    /// Takes one unit of `day`'s budget for `transaction_id` unless it holds
    /// one already or `used` has reached `limit` (see the module doc).
    pub(crate) async fn reserve_spend(
        &self,
        transaction_id: &str,
        day: &str,
        limit: i64,
    ) -> Result<Reservation, StoreError> {
        with_pool!(self, pool => SpendSql::reserve(pool, transaction_id, day, limit, Utc::now()).await)
    }

    /// The call succeeded: the unit is billed for good.
    pub(crate) async fn mark_spend_billed(&self, transaction_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => SpendSql::mark_billed(pool, transaction_id, Utc::now()).await)
    }

    /// The call was certainly not billed: the `held` unit goes back to its
    /// day. True when one did.
    pub(crate) async fn release_spend(&self, transaction_id: &str) -> Result<bool, StoreError> {
        with_pool!(self, pool => SpendSql::release(pool, transaction_id).await)
    }

    /// Counts `transaction_id` once among `day`'s jobs refused for budget.
    pub(crate) async fn note_spend_refusal(
        &self,
        day: &str,
        transaction_id: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => SpendSql::note_refusal(pool, day, transaction_id, Utc::now()).await)
    }

    /// The units `day` has used (held + billed), 0 for a day never reserved.
    pub(crate) async fn spend_used(&self, day: &str) -> Result<i64, StoreError> {
        with_pool!(self, pool => SpendSql::used(pool, day).await)
    }

    /// Units of `day` held for jobs waiting for a retry that will settle
    /// them (row `retrying`, unit taken after `since`).
    pub(crate) async fn pending_spend_units(
        &self,
        day: &str,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        with_pool!(self, pool => SpendSql::pending_units(pool, day, since).await)
    }

    /// Deletes the budget tables' rows of days before `day` (retention);
    /// how many.
    pub(crate) async fn forget_spend_before(&self, day: &str) -> Result<u64, StoreError> {
        with_pool!(self, pool => SpendSql::forget_before(pool, day).await)
    }

    /// The budget tables' days from `first` to `last` (inclusive), in order.
    pub(crate) async fn spend_days(
        &self,
        first: &str,
        last: &str,
    ) -> Result<Vec<SpendDayRow>, StoreError> {
        with_pool!(self, pool => SpendSql::days(pool, first, last).await)
    }
}
