//! `JobStore`: every SQL statement in the crate. One row per job in
//! `relation_checks`, one append-only ledger row per upstream call in
//! `upstream_calls`, `worker_leases` for replicas sharing a rate limit, and
//! (in `results`) the `result_events` outbox and the `batches`: a job's event
//! is written in the transaction that makes it final.
//!
//! PostgreSQL (production, several replicas) and SQLite (one machine) sit
//! behind one interface, each with its own SQL in `postgres` and `sqlite`
//! (the `Any` driver translates neither placeholders nor types), one method
//! per statement of the `dialect::Dialect` trait. What holds on every backend
//! is written once here, over that trait: the `record` transaction, the frozen
//! `succeeded` row, the end of `begin_call` and the biz_no conflict. Writes are
//! idempotent per `transaction_id`, so a redelivery after a crash does no harm,
//! and a `succeeded` row is never downgraded.
//!
//! This module must not decide retries, talk to the broker or the upstream, or
//! see unmasked personal data: callers hand it `PiiMasked` values only.
//!
//! Timestamps are UTC. PostgreSQL stores `timestamptz`; SQLite stores TEXT in
//! the fixed form `YYYY-MM-DDTHH:MM:SS.sssZ` (always milliseconds, always `Z`),
//! so lexical order equals time order and SQLite's own
//! `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')` writes the same form.

/// Runs `$body` with `$pool` bound to the store's pool, whichever backend it
/// is: the one place (with `connect` and `migrate`) that lists the backends.
/// `$body` is written once, generic over [`dialect::Dialect`].
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Postgres($pool) => $body,
            $crate::store::Backend::Sqlite($pool) => $body,
        }
    };
}

/// What a call start does to an existing row (`EXCLUDED` is the new one),
/// on both backends: the first call time and absent columns are filled,
/// never overwritten; a final row or one with another fingerprint is left as
/// it is.
macro_rules! start_call_conflict_sql {
    () => {
        " ON CONFLICT (transaction_id) DO UPDATE SET \
            first_call_at = COALESCE(relation_checks.first_call_at, EXCLUDED.first_call_at), \
            external_ref = COALESCE(EXCLUDED.external_ref, relation_checks.external_ref), \
            cert_no_masked = COALESCE(relation_checks.cert_no_masked, EXCLUDED.cert_no_masked), \
            name_masked = COALESCE(relation_checks.name_masked, EXCLUDED.name_masked), \
            relation_phone_masked = \
                COALESCE(relation_checks.relation_phone_masked, EXCLUDED.relation_phone_masked), \
            relation_name_masked = \
                COALESCE(relation_checks.relation_name_masked, EXCLUDED.relation_name_masked), \
            business_fingerprint = \
                COALESCE(relation_checks.business_fingerprint, EXCLUDED.business_fingerprint), \
            batch_id = COALESCE(relation_checks.batch_id, EXCLUDED.batch_id), \
            cert_no_hmac = COALESCE(relation_checks.cert_no_hmac, EXCLUDED.cert_no_hmac), \
            relation_phone_hmac = \
                COALESCE(relation_checks.relation_phone_hmac, EXCLUDED.relation_phone_hmac), \
            updated_at = EXCLUDED.updated_at \
          WHERE relation_checks.status NOT IN ('succeeded', 'failed') \
            AND (relation_checks.business_fingerprint IS NULL \
                 OR relation_checks.business_fingerprint = EXCLUDED.business_fingerprint)"
    };
}

/// The columns a call start writes (both backends).
macro_rules! start_call_insert_sql {
    () => {
        "INSERT INTO relation_checks (transaction_id, external_ref, status, attempts, \
            cert_no_masked, name_masked, relation_phone_masked, relation_name_masked, \
            created_at, updated_at, first_call_at, business_fingerprint, batch_id, \
            cert_no_hmac, relation_phone_hmac) "
    };
}

mod certs;
mod dialect;
mod erase;
mod group;
mod leases;
mod lookup;
mod postgres;
mod reconcile;
mod results;
mod reuse;
mod spend;
mod sqlite;
mod status;

pub use certs::CertificateFetch;
pub(crate) use erase::{Erased, PersonKey, PurgeCutoffs, Purged};
#[cfg(test)]
pub(crate) use leases::LiveLease;
pub(crate) use leases::Membership;
pub(crate) use lookup::{JobRecord, MAX_ROWS_PER_REFERENCE};
#[cfg(test)]
pub(crate) use reconcile::ExportResult;
pub(crate) use reconcile::{ExportRow, StoredCheck};
pub(crate) use results::{BatchStart, ResultFilter};
pub(crate) use spend::{Reservation, SpendDayRow};
pub(crate) use status::{BatchRecord, StoreOverview};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Pool, SqlitePool};
use tokio::sync::Notify;

use dialect::Dialect;
use leases::LeaseSql;

/// Where a job stands. `succeeded` and `failed` are final: the worker acks a
/// redelivered final job without calling the upstream again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobStatus {
    Pending,
    Retrying,
    Succeeded,
    Failed,
}

impl JobStatus {
    /// Every status, in the order reports list them.
    pub(crate) const ALL: [JobStatus; 4] = [
        JobStatus::Pending,
        JobStatus::Retrying,
        JobStatus::Succeeded,
        JobStatus::Failed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// A final job is never called upstream again (until `requeue-dead` resets
    /// a failed one).
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status text the store does not know (only possible if the table was
/// written by something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Failures of the store. `StoreError::is_unavailable` tells the consumer
/// whether to pause and retry (database down) rather than give up on a job.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database.url has scheme `{scheme}`; use postgres://, postgresql:// or sqlite: \
         (DATABASE_URL or ZHIMA__DATABASE__URL)"
    )]
    UnsupportedUrl { scheme: String },
    /// The worker does not guess where data belongs: the SQLite file's
    /// directory must exist (`make run` makes `data/` with mode 0700).
    #[error(
        "the directory {} of the SQLite database (database.url) does not exist; \
         create it with `mkdir -m 700 {0}` or point database.url elsewhere",
        .path.display()
    )]
    MissingDirectory { path: std::path::PathBuf },
    #[error("could not create the SQLite database file {}", .path.display())]
    CreateFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to the database at database.url")]
    Connect(#[source] sqlx::Error),
    /// TLS to PostgreSQL failed (a certificate that does not verify, a server
    /// without TLS): a configuration fault, never retried.
    #[error(
        "TLS to the database (database.url) failed: {reason}; trusted: the CA of \
         database.tls_ca_path or the URL's sslrootcert, and the Mozilla roots"
    )]
    Tls {
        reason: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database {operation} failed")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The upstream's business number is the reconciliation key; a second job
    /// claiming one already stored means corrupt data, not a retryable fault.
    #[error("biz_no {biz_no} is already stored for another transaction_id")]
    DuplicateBizNo { biz_no: String },
    /// The transaction_id is stored for different business fields (another
    /// contact, ID number or product): the stored job stays as it is and this
    /// one must not be sent under that id.
    #[error(
        "TRANSACTION_ID_CONFLICT: transaction_id {transaction_id} is already stored for \
         different business fields; the stored job is left as it is: send this contact again \
         under a new transaction_id"
    )]
    TransactionIdConflict { transaction_id: String },
    #[error("stored value in column `{column}` is malformed: {detail}")]
    Malformed {
        column: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// True when the database could not be reached or was too busy: the
    /// consumer should pause and retry without acking, since the job itself is
    /// fine.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect(e) | Self::Query { source: e, .. } => is_transient(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient(e),
            _ => false,
        }
    }

    /// The database's own words for a statement it refused (its error code and
    /// message), for the dead-letter reason of a job it will never accept. The
    /// message names the rule broken, e.g. `invalid byte sequence for encoding
    /// "UTF8": 0x00`; the values bound to a statement are masked or ids, so it
    /// carries no personal data. None when the database said nothing.
    pub(crate) fn database_reason(&self) -> Option<String> {
        let source = match self {
            Self::Connect(e) | Self::Query { source: e, .. } => e,
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e,
            _ => return None,
        };
        let db = source.as_database_error()?;
        let message: String = db.message().chars().take(MAX_REASON_CHARS).collect();
        Some(match db.code() {
            Some(code) => format!("database error {code}: {message}"),
            None => format!("database error: {message}"),
        })
    }

    fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { operation, source }
    }

    /// A failed connection attempt: [`StoreError::Tls`] when the TLS
    /// handshake failed, [`StoreError::Connect`] otherwise.
    fn connect(source: sqlx::Error) -> StoreError {
        let reason = match &source {
            sqlx::Error::Tls(error) => Some(
                crate::tls::handshake_failure(error.as_ref()).unwrap_or_else(|| error.to_string()),
            ),
            other => crate::tls::handshake_failure(other),
        };
        match reason {
            Some(reason) => StoreError::Tls { reason, source },
            None => StoreError::Connect(source),
        }
    }
}

/// The longest database message quoted in a dead-letter reason.
const MAX_REASON_CHARS: usize = 300;

/// Connection loss, pool exhaustion, server shutdown, lock contention and
/// serialization conflicts all clear by themselves; everything else (bad
/// data, a broken constraint, a schema mismatch) fails the same way on every
/// attempt, so the job is dead-lettered instead of looped. Codes are judged by
/// the backend that produced them: the two code spaces overlap as numbers.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Protocol(message) if is_cut_ssl_request(message) => true,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                is_transient_postgres_code(&code)
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                is_transient_sqlite_code(&code)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// sqlx reads the one-byte answer to PostgreSQL's SSLRequest without checking
/// for the end of the stream: a connection closed at that moment (a restart,
/// a proxy cut) reads as the byte 0x00, a protocol error, though it is a lost
/// connection like any other.
fn is_cut_ssl_request(message: &str) -> bool {
    message.starts_with("unexpected response from SSLRequest: 0x00")
}

/// PostgreSQL SQLSTATEs that clear by themselves: connection exceptions
/// (class 08), operator intervention by shutdown or recovery (57P0x),
/// insufficient resources (class 53), serialization failure (40001) and
/// deadlock (40P01).
fn is_transient_postgres_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P0")
        || code.starts_with("53")
        || code == "40001"
        || code == "40P01"
}

/// SQLite result codes (sqlx reports the extended code) for BUSY (5) and
/// LOCKED (6): BUSY_RECOVERY 261, BUSY_SNAPSHOT 517, BUSY_TIMEOUT 773,
/// LOCKED_SHAREDCACHE 262, LOCKED_VTAB 518. Listed rather than masked, so a
/// code that is not SQLite's never passes for one.
fn is_transient_sqlite_code(code: &str) -> bool {
    const BUSY_OR_LOCKED: [&str; 7] = ["5", "261", "517", "773", "6", "262", "518"];
    BUSY_OR_LOCKED.contains(&code)
}

/// Personal data as stored: already masked by the caller (see `job::mask_*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PiiMasked {
    pub(crate) cert_no: String,
    pub(crate) name: String,
    pub(crate) relation_phone: String,
    pub(crate) relation_name: String,
    /// The blind index of the ID number ([`crate::pii::PiiKey::cert_no_index`]),
    /// stored when the row is first written so `erase --cert-no` finds it.
    pub(crate) cert_no_hmac: Option<String>,
    /// The blind index of the contact's phone
    /// ([`crate::pii::PiiKey::phone_index`]).
    pub(crate) relation_phone_hmac: Option<String>,
}

/// What identifies a job's row and fills its descriptive columns when the row
/// is first created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobKey<'a> {
    pub(crate) transaction_id: &'a str,
    pub(crate) external_ref: Option<&'a str>,
    /// The producer's batch, stored when the row is created.
    pub(crate) batch_id: Option<&'a str>,
    pub(crate) masked: &'a PiiMasked,
    /// The keyed hash of the job's business fields
    /// ([`crate::pii::PiiKey::fingerprint`]), stored when the row is created.
    pub(crate) fingerprint: &'a str,
}

/// One upstream HTTP call for the ledger that billing is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallRecord {
    pub(crate) attempt: u32,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) duration_ms: u64,
    pub(crate) http_status: Option<u16>,
    pub(crate) code: Option<String>,
    pub(crate) sub_code: Option<String>,
    /// `succeeded`, `retryable`, `permanent`, `configuration` or `unverified`.
    pub(crate) outcome: String,
}

/// The new state of a job's row after an attempt (or without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowUpdate {
    Succeeded {
        biz_no: String,
        relation_rank: String,
        recency: Option<String>,
        relation_score: Option<i64>,
        response_body: String,
        /// The question's keyed hash while answer reuse is on: the paid
        /// answer is indexed for reuse in the outcome's own transaction.
        question_hmac: Option<String>,
    },
    /// `response_body` None keeps the previous evidence (e.g. after a timeout).
    Retrying {
        error_code: String,
        error_message: String,
        response_body: Option<String>,
    },
    Failed {
        error_code: String,
        error_message: String,
        response_body: Option<String>,
    },
}

impl RowUpdate {
    fn status(&self) -> JobStatus {
        match self {
            Self::Succeeded { .. } => JobStatus::Succeeded,
            Self::Retrying { .. } => JobStatus::Retrying,
            Self::Failed { .. } => JobStatus::Failed,
        }
    }
}

/// The column values one [`RowUpdate`] writes, shared by both backends so the
/// transition rules live in one place.
struct RowValues<'a> {
    status: JobStatus,
    biz_no: Option<&'a str>,
    relation_rank: Option<&'a str>,
    recency: Option<&'a str>,
    relation_score: Option<i64>,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    response_body: Option<&'a str>,
    question_hmac: Option<&'a str>,
}

impl<'a> From<&'a RowUpdate> for RowValues<'a> {
    fn from(update: &'a RowUpdate) -> Self {
        let status = update.status();
        match update {
            RowUpdate::Succeeded {
                biz_no,
                relation_rank,
                recency,
                relation_score,
                response_body,
                question_hmac,
            } => RowValues {
                status,
                biz_no: Some(biz_no),
                relation_rank: Some(relation_rank),
                recency: recency.as_deref(),
                relation_score: *relation_score,
                error_code: None,
                error_message: None,
                response_body: Some(response_body),
                question_hmac: question_hmac.as_deref(),
            },
            RowUpdate::Retrying {
                error_code,
                error_message,
                response_body,
            }
            | RowUpdate::Failed {
                error_code,
                error_message,
                response_body,
            } => RowValues {
                status,
                biz_no: None,
                relation_rank: None,
                recency: None,
                relation_score: None,
                error_code: Some(error_code),
                error_message: Some(error_message),
                response_body: response_body.as_deref(),
                question_hmac: None,
            },
        }
    }
}

/// What [`JobStore::find`] reports about a stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingJob {
    pub status: JobStatus,
    pub(crate) attempts: u32,
    /// When the first upstream call was made: the upstream honours the same
    /// transaction_id for about 24 h from then.
    pub(crate) first_call_at: Option<DateTime<Utc>>,
    /// The business-field fingerprint stored when the job was first seen;
    /// None for rows from before fingerprints and for rejected messages.
    pub(crate) fingerprint: Option<String>,
    /// The batch the row counts in, if any.
    pub(crate) batch_id: Option<String>,
}

impl ExistingJob {
    /// True when the row belongs to a job with other business fields than
    /// `fingerprint`. A row without a fingerprint conflicts with nothing.
    pub(crate) fn conflicts_with(&self, fingerprint: &str) -> bool {
        self.fingerprint
            .as_deref()
            .is_some_and(|f| f != fingerprint)
    }
}

/// Handle to the job database; cheap to clone (it wraps a pool).
#[derive(Clone)]
pub struct JobStore {
    backend: Backend,
    /// Set when result events are on: every outcome transaction that writes
    /// an outbox row wakes the relay through it after the commit.
    events: Option<Arc<Notify>>,
    /// Set by [`JobStore::with_grouped_commits`] (PostgreSQL): where
    /// `record` and `try_begin_call` send their work.
    group: Option<group::GroupCommits>,
}

/// Shows only the backend: connection details may hold a password.
impl fmt::Debug for JobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        };
        f.debug_struct("JobStore")
            .field("backend", &backend)
            .finish()
    }
}

#[derive(Clone)]
enum Backend {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Which backend a `database.url` selects.
enum Scheme {
    Postgres,
    Sqlite,
}

fn scheme_of(url: &str) -> Result<Scheme, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Scheme::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Scheme::Sqlite)
    } else {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(StoreError::UnsupportedUrl {
            scheme: scheme.chars().take(32).collect(),
        })
    }
}

impl JobStore {
    /// Opens a pool for `url` and checks it with one connection, so a wrong URL
    /// or a down database fails at start-up rather than on the first job.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let backend = match scheme_of(url)? {
            Scheme::Postgres => Backend::Postgres(postgres::connect(url, max_connections).await?),
            Scheme::Sqlite => Backend::Sqlite(sqlite::connect(url, max_connections).await?),
        };
        Ok(Self {
            backend,
            events: None,
            group: None,
        })
    }

    /// Turns grouped commits on (PostgreSQL; nothing changes on SQLite):
    /// the outcomes and call starts that concurrent jobs hand in while a
    /// commit is under way share one transaction (see `group`). Call after
    /// [`Self::with_result_events`], inside the runtime.
    pub(crate) fn with_grouped_commits(mut self) -> Self {
        if let Backend::Postgres(pool) = &self.backend {
            self.group = Some(group::GroupCommits::start(
                pool.clone(),
                self.events_enabled(),
            ));
        }
        self
    }

    /// Turns result events on (`results.exchange` set): outcome transactions
    /// then write their events into the `result_events` outbox.
    pub(crate) fn with_result_events(mut self, enabled: bool) -> Self {
        self.events = enabled.then(|| Arc::new(Notify::new()));
        self
    }

    pub(crate) fn events_enabled(&self) -> bool {
        self.events.is_some()
    }

    /// What the relay waits on: notified after each commit that wrote an
    /// event. None when events are off.
    pub(crate) fn events_written(&self) -> Option<Arc<Notify>> {
        self.events.clone()
    }

    fn notify_events(&self) {
        if let Some(notify) = &self.events {
            notify.notify_one();
        }
    }

    /// Applies the embedded migrations on a dedicated connection: a failed
    /// migration through a pool can leave PostgreSQL's advisory lock held.
    /// Several replicas may run this at once; on PostgreSQL the migrator's
    /// advisory lock makes them take turns and the later ones find nothing to do.
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        match scheme_of(url)? {
            Scheme::Postgres => postgres::migrate(url).await,
            Scheme::Sqlite => sqlite::migrate(url).await,
        }
    }

    /// Round-trips a trivial query; used by readiness checks.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => Dialect::ping(pool).await)
    }

    /// The job's row, if any; a final one means a redelivery that must be acked
    /// without a new upstream call.
    pub async fn find(&self, transaction_id: &str) -> Result<Option<ExistingJob>, StoreError> {
        with_pool!(self, pool => Dialect::find(pool, transaction_id).await)
    }

    /// Called before an upstream call (just before its rate-limit permit is
    /// taken, so the time can lead the call by the permit wait: conservative
    /// for the validity window). Creates the row as `pending` if it is new,
    /// and records `now` as the first call time if none is stored.
    /// Returns the stored first call time, which bounds how long the job may
    /// keep retrying under the same transaction_id. A final row is left
    /// untouched (its first call time, or `now` if it never had one, is
    /// returned): a concurrent replica finished the job meanwhile.
    ///
    /// The row's fingerprint and masked fields are written only when absent,
    /// so a redelivery never rewrites them; a row whose fingerprint differs
    /// from the job's is left untouched and the call fails with
    /// [`StoreError::TransactionIdConflict`] (checked in the same statement,
    /// so two replicas racing with different jobs cannot both begin).
    pub(crate) async fn begin_call(
        &self,
        job: &JobKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        with_pool!(self, pool => begin_call_in(pool, job, now).await)
    }

    /// [`Self::begin_call`] in one statement for the common case: `Some`
    /// (the stored first call time) when the row was created or is non-final
    /// with the job's fingerprint (or none); `None`, with the row untouched,
    /// when it is final or holds another fingerprint, which the caller then
    /// reads with [`Self::find`].
    pub(crate) async fn try_begin_call(
        &self,
        job: &JobKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if let Some(group) = &self.group
            && let Some(started) = group.start_call(job, now).await
        {
            return started;
        }
        with_pool!(self, pool => Dialect::start_call(pool, job, now).await)
    }

    /// In one transaction: appends `call` to the ledger (if any) and moves the
    /// job's row to `update`'s state, counting the attempt. A `succeeded` row is
    /// frozen: a later update (a redelivery after a crash, whose replayed call
    /// the upstream does not bill) only counts the attempt, and the stored
    /// status, `succeeded`, is returned. Fails with
    /// [`StoreError::DuplicateBizNo`] if another job already holds the biz_no.
    pub(crate) async fn record(
        &self,
        job: &JobKey<'_>,
        call: Option<&CallRecord>,
        update: &RowUpdate,
    ) -> Result<JobStatus, StoreError> {
        let grouped = match &self.group {
            Some(group) => group.record(job, call, update).await,
            None => None,
        };
        let (status, wrote_event) = match grouped {
            Some(recorded) => recorded?,
            None => {
                let values = RowValues::from(update);
                let events = self.events_enabled();
                with_pool!(self, pool => record_in(pool, job, call, &values, events).await)?
            }
        };
        if wrote_event {
            self.notify_events();
        }
        Ok(status)
    }

    /// For an invalid message that still carries a valid transaction_id: a
    /// `failed` row, so the producer can see why (with its result event, in
    /// the same transaction). A final row is left alone.
    pub async fn record_rejected(
        &self,
        transaction_id: &str,
        external_ref: Option<&str>,
        batch_id: Option<&str>,
        error_code: &str,
        error_message: &str,
    ) -> Result<(), StoreError> {
        let rejected = Rejected {
            transaction_id,
            external_ref,
            batch_id,
            error_code,
            error_message,
        };
        let events = self.events_enabled();
        let wrote_event =
            with_pool!(self, pool => record_rejected_in(pool, &rejected, events).await)?;
        if wrote_event {
            self.notify_events();
        }
        Ok(())
    }

    /// Job counts for every status (zero included), in [`JobStatus::ALL`] order.
    pub(crate) async fn counts_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let stored = with_pool!(self, pool => Dialect::counts_by_status(pool).await)?;
        let mut counts: Vec<(JobStatus, i64)> = JobStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for (status, count) in stored {
            let status = parse_status(&status)?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = count;
            }
        }
        Ok(counts)
    }

    /// For `requeue-dead`: a `failed` row goes back to `retrying` (attempts and
    /// first call time are kept, so the 24 h window still applies). Any other
    /// row, or none, is left as it is.
    pub(crate) async fn reset_to_retrying(&self, transaction_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => Dialect::reset_to_retrying(pool, transaction_id).await)
    }

    /// Whether several replicas can share this store and so must split the
    /// upstream rate limit (PostgreSQL); SQLite allows one writer, one replica.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Extends this replica's lease to the database's now + `lease` and
    /// returns every live lease (this one included), judged by the
    /// database's clock.
    pub(crate) async fn heartbeat_lease(
        &self,
        worker_id: &str,
        lease: std::time::Duration,
    ) -> Result<Membership, StoreError> {
        with_pool!(self, pool => LeaseSql::heartbeat(pool, worker_id, lease).await)
    }

    /// Deletes this replica's lease on a clean exit, so the others take its
    /// share at their next heartbeat instead of after the lease expires.
    pub(crate) async fn release_lease(&self, worker_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => LeaseSql::release(pool, worker_id).await)
    }

    /// The ledger rows of one job, by attempt then start time.
    pub(crate) async fn calls_for(
        &self,
        transaction_id: &str,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let rows = with_pool!(self, pool => Dialect::calls_for(pool, transaction_id).await)?;
        rows.into_iter().map(call_from_db).collect()
    }
}

/// [`JobStore::begin_call`] on any backend. When its one statement changed no
/// row, the existing row either belongs to other business fields (refused,
/// untouched) or is final and already holds the job's first call time (or
/// never had one: `now` is returned).
async fn begin_call_in<D: Dialect>(
    pool: &Pool<D>,
    job: &JobKey<'_>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    if let Some(first_call_at) = D::start_call(pool, job, now).await? {
        return Ok(first_call_at);
    }
    let existing = D::find(pool, job.transaction_id).await?;
    if existing
        .as_ref()
        .is_some_and(|row| row.conflicts_with(job.fingerprint))
    {
        return Err(StoreError::TransactionIdConflict {
            transaction_id: job.transaction_id.to_owned(),
        });
    }
    Ok(existing.and_then(|row| row.first_call_at).unwrap_or(now))
}

/// [`JobStore::record`] on any backend, in one transaction. The statements
/// that write come first (ledger, then the row if missing), so SQLite takes
/// its writer lock at once and never has to upgrade a read lock, which could
/// fail as busy without waiting; PostgreSQL locks the row on reading it.
///
/// When the row becomes final (from a non-final status, or from the other
/// final status), [`results::after_final`] writes its result event and moves
/// its batch on, in this same transaction. Returns the stored status and
/// whether an outbox row was written.
async fn record_in<D: Dialect>(
    pool: &Pool<D>,
    job: &JobKey<'_>,
    call: Option<&CallRecord>,
    values: &RowValues<'_>,
    events: bool,
) -> Result<(JobStatus, bool), StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let recorded = record_in_tx(&mut tx, job, call, values, events, None).await?;
    tx.commit().await.map_err(StoreError::query("commit"))?;
    Ok(recorded)
}

/// [`record_in`]'s statements in the caller's transaction (one outcome of a
/// grouped commit, see `group`).
async fn record_in_tx<D: Dialect>(
    tx: &mut sqlx::Transaction<'_, D>,
    job: &JobKey<'_>,
    call: Option<&CallRecord>,
    values: &RowValues<'_>,
    events: bool,
    deferred: Option<&mut Vec<results::DeferredEvent>>,
) -> Result<(JobStatus, bool), StoreError> {
    let current = D::open_outcome(tx, job, call).await?;
    let attempts_added = u8::from(call.is_some());
    let mut wrote_event = false;
    let status = match Settle::of(current, values) {
        Settle::CountAttempt => {
            D::count_attempt(tx, job.transaction_id, attempts_added).await?;
            current
        }
        Settle::Final => {
            let event =
                D::apply_final_update(tx, job.transaction_id, attempts_added, values).await?;
            wrote_event = results::after_final_deferring(tx, event, events, deferred).await?;
            values.status
        }
        Settle::Update => {
            D::apply_update(tx, job.transaction_id, attempts_added, values)
                .await
                .map_err(|e| update_error(e, values))?;
            values.status
        }
    };
    Ok((status, wrote_event))
}

/// What an outcome does to its job's row, given the row's status under the
/// outcome's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// The job already succeeded (a redelivery's call): only the attempt
    /// counts; the row, its answer and its event stay as they are.
    CountAttempt,
    /// The row becomes final now: updated, and its result event written.
    Final,
    /// Any other change (retrying, or a final row's repeat): updated only.
    Update,
}

impl Settle {
    fn of(current: JobStatus, values: &RowValues<'_>) -> Self {
        if current == JobStatus::Succeeded {
            Self::CountAttempt
        } else if values.status.is_final() && values.status != current {
            Self::Final
        } else {
            Self::Update
        }
    }
}

/// [`JobStore::record_rejected`] on any backend, in one transaction: the
/// row's upsert is the first statement (SQLite's writer lock at once), and
/// only a row it changed (one that was not final) gets an event.
async fn record_rejected_in<D: Dialect>(
    pool: &Pool<D>,
    rejected: &Rejected<'_>,
    events: bool,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let mut wrote_event = false;
    if D::record_rejected(&mut tx, rejected).await? {
        wrote_event = results::after_final(&mut tx, rejected.transaction_id, events).await?;
    }
    tx.commit().await.map_err(StoreError::query("commit"))?;
    Ok(wrote_event)
}

/// The row update never changes the primary key, so the only unique
/// constraint it can break is `biz_no`'s.
fn update_error(e: sqlx::Error, values: &RowValues<'_>) -> StoreError {
    let is_unique_violation = e
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation());
    if is_unique_violation {
        StoreError::DuplicateBizNo {
            biz_no: values.biz_no.unwrap_or_default().to_owned(),
        }
    } else {
        StoreError::query("update job row")(e)
    }
}

/// Arguments of [`JobStore::record_rejected`], passed to the backends as one.
struct Rejected<'a> {
    transaction_id: &'a str,
    external_ref: Option<&'a str>,
    batch_id: Option<&'a str>,
    error_code: &'a str,
    error_message: &'a str,
}

fn parse_status(text: &str) -> Result<JobStatus, StoreError> {
    text.parse()
        .map_err(|e: UnknownStatus| StoreError::Malformed {
            column: "status",
            detail: e.to_string(),
        })
}

fn attempts_from_db(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Malformed {
        column: "attempts",
        detail: format!("{value} is not a valid attempt count"),
    })
}

fn call_from_db(row: LedgerRow) -> Result<CallRecord, StoreError> {
    let attempt = attempts_from_db(row.attempt)?;
    let duration_ms = u64::try_from(row.duration_ms).map_err(|_| StoreError::Malformed {
        column: "duration_ms",
        detail: format!("{} is negative", row.duration_ms),
    })?;
    let http_status = row
        .http_status
        .map(|s| {
            u16::try_from(s).map_err(|_| StoreError::Malformed {
                column: "http_status",
                detail: format!("{s} is not an HTTP status"),
            })
        })
        .transpose()?;
    Ok(CallRecord {
        attempt,
        started_at: row.started_at,
        duration_ms,
        http_status,
        code: row.code,
        sub_code: row.sub_code,
        outcome: row.outcome,
    })
}

/// A ledger row as both backends read it (SQLite's timestamp already parsed).
struct LedgerRow {
    attempt: i64,
    started_at: DateTime<Utc>,
    duration_ms: i64,
    http_status: Option<i64>,
    code: Option<String>,
    sub_code: Option<String>,
    outcome: String,
}

/// Database integers are signed; durations beyond `i64::MAX` ms do not occur,
/// so saturating is safe.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
