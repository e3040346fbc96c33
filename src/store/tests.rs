//! Store tests against the real PostgreSQL server on the machine (a fresh,
//! randomly named database per test, dropped at the end) and SQLite (a file in
//! a temporary directory). Every behaviour is checked on both backends.
//!
//! `ZHIMA_TEST_POSTGRES_URL` overrides the server (default
//! `postgres://zhima_test:zhima_test@127.0.0.1:5432/postgres`, the role
//! `scripts/ensure-services.sh` creates).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, FromRow, PgConnection};

use super::*;

fn admin_url() -> String {
    std::env::var("ZHIMA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://zhima_test:zhima_test@127.0.0.1:5432/postgres".to_owned())
}

/// A migrated, empty database that is removed when [`TestDb::finish`] runs.
struct TestDb {
    url: String,
    store: JobStore,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { name: String },
    Sqlite { _dir: tempfile::TempDir },
}

async fn create_postgres_database() -> (String, String) {
    let name = format!("zhima_store_test_{:016x}", rand::random::<u64>());
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let base = admin_url();
    let server = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(server, _)| server);
    (format!("{server}/{name}"), name)
}

impl TestDb {
    async fn postgres() -> Self {
        let (url, name) = create_postgres_database().await;
        JobStore::migrate(&url).await.unwrap();
        let store = JobStore::connect(&url, 4).await.unwrap();
        Self {
            url,
            store,
            cleanup: Cleanup::Postgres { name },
        }
    }

    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("jobs.db").display());
        JobStore::migrate(&url).await.unwrap();
        let store = JobStore::connect(&url, 4).await.unwrap();
        Self {
            url,
            store,
            cleanup: Cleanup::Sqlite { _dir: dir },
        }
    }

    async fn finish(self) {
        match &self.store.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
        if let Cleanup::Postgres { name } = self.cleanup {
            drop_postgres_database(&name).await;
        }
    }
}

async fn drop_postgres_database(name: &str) {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
}

/// Runs one scenario on both backends, each on its own fresh database.
macro_rules! on_both_backends {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn on_postgres() {
                let db = super::TestDb::postgres().await;
                super::$scenario(&db).await;
                db.finish().await;
            }

            #[tokio::test]
            async fn on_sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$scenario(&db).await;
                db.finish().await;
            }
        }
    };
}

/// Every column a test looks at, read back with SQL both backends accept.
#[derive(Debug, FromRow)]
struct Snapshot {
    status: String,
    attempts: i64,
    external_ref: Option<String>,
    biz_no: Option<String>,
    relation_rank: Option<String>,
    recency: Option<String>,
    relation_score: Option<i64>,
    error_code: Option<String>,
    error_message: Option<String>,
    cert_no_masked: Option<String>,
    name_masked: Option<String>,
    relation_phone_masked: Option<String>,
    relation_name_masked: Option<String>,
    response_body: Option<String>,
    is_completed: i64,
    has_first_call: i64,
}

const SNAPSHOT_SQL: &str = "SELECT status, CAST(attempts AS BIGINT) AS attempts, external_ref, \
     biz_no, relation_rank, recency, relation_score, error_code, error_message, cert_no_masked, \
     name_masked, relation_phone_masked, relation_name_masked, response_body, \
     CAST(CASE WHEN completed_at IS NULL THEN 0 ELSE 1 END AS BIGINT) AS is_completed, \
     CAST(CASE WHEN first_call_at IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_first_call \
     FROM relation_checks WHERE transaction_id = $1";

async fn snapshot(store: &JobStore, transaction_id: &str) -> Snapshot {
    match &store.backend {
        Backend::Postgres(pool) => sqlx::query_as(SNAPSHOT_SQL)
            .bind(transaction_id)
            .fetch_one(pool)
            .await
            .unwrap(),
        Backend::Sqlite(pool) => sqlx::query_as(SNAPSHOT_SQL)
            .bind(transaction_id)
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

async fn count_rows(store: &JobStore, table: &'static str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT CAST(count(*) AS BIGINT) FROM {table}"));
    let (count,): (i64,) = match &store.backend {
        Backend::Postgres(pool) => sqlx::query_as(sql).fetch_one(pool).await.unwrap(),
        Backend::Sqlite(pool) => sqlx::query_as(sql).fetch_one(pool).await.unwrap(),
    };
    count
}

fn masked() -> PiiMasked {
    PiiMasked {
        cert_no: "640202********4686".into(),
        name: "张*".into(),
        relation_phone: "158****1158".into(),
        relation_name: "李*".into(),
        cert_no_hmac: Some("hmac_cert_first".into()),
        relation_phone_hmac: Some("hmac_phone_first".into()),
    }
}

fn key<'a>(transaction_id: &'a str, masked: &'a PiiMasked) -> JobKey<'a> {
    JobKey {
        transaction_id,
        external_ref: Some("loan-8812/contact-1"),
        batch_id: None,
        masked,
        fingerprint: "fp_first_contact",
    }
}

/// A fixed instant with whole milliseconds, which both backends keep exactly.
fn at(seconds_after_base: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + seconds_after_base, 123_000_000).unwrap()
}

fn call(attempt: u32, started_at: DateTime<Utc>, outcome: &str) -> CallRecord {
    CallRecord {
        attempt,
        started_at,
        duration_ms: 87,
        http_status: Some(200),
        code: Some(
            if outcome == "succeeded" {
                "10000"
            } else {
                "40004"
            }
            .into(),
        ),
        sub_code: (outcome != "succeeded").then(|| "SYSTEM_ERROR".into()),
        outcome: outcome.into(),
    }
}

fn success(biz_no: &str) -> RowUpdate {
    RowUpdate::Succeeded {
        biz_no: biz_no.into(),
        relation_rank: "V_CT_RL_SG".into(),
        recency: Some("V_CT_RL180D".into()),
        relation_score: Some(99),
        response_body: format!(
            r#"{{"zhima_credit_relation_query_response":{{"biz_no":"{biz_no}"}},"sign":"x"}}"#
        ),
        question_hmac: None,
    }
}

fn retrying() -> RowUpdate {
    RowUpdate::Retrying {
        error_code: "SYSTEM_ERROR".into(),
        error_message: "系统繁忙".into(),
        response_body: Some("{\"retry\":1}".into()),
    }
}

fn failed() -> RowUpdate {
    RowUpdate::Failed {
        error_code: "INVALID_PARAMETER".into(),
        error_message: "参数有误".into(),
        response_body: None,
    }
}

/// The migrations shipped (both dialects have the same files).
fn migration_files() -> i64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    let files = std::fs::read_dir(dir).unwrap().count();
    i64::try_from(files).unwrap()
}

async fn migrating_twice_is_a_no_op(db: &TestDb) {
    JobStore::migrate(&db.url).await.unwrap();
    JobStore::migrate(&db.url).await.unwrap();
    assert_eq!(
        count_rows(&db.store, "_sqlx_migrations").await,
        migration_files()
    );
    assert_eq!(count_rows(&db.store, "relation_checks").await, 0);
    assert_eq!(count_rows(&db.store, "worker_leases").await, 0);
    db.store.ping().await.unwrap();
}
on_both_backends!(migrating_twice_is_a_no_op);

async fn a_successful_call_stores_the_answer_and_one_ledger_row(db: &TestDb) {
    let masked = masked();
    let job = key("loan8812_c1", &masked);
    assert_eq!(db.store.find("loan8812_c1").await.unwrap(), None);

    let first = db.store.begin_call(&job, at(0)).await.unwrap();
    assert_eq!(first, at(0));
    let pending = db.store.find("loan8812_c1").await.unwrap().unwrap();
    assert_eq!(pending.status, JobStatus::Pending);
    assert_eq!(pending.attempts, 0);

    let ledger = call(1, at(1), "succeeded");
    let status = db
        .store
        .record(&job, Some(&ledger), &success("ZM2016082230000002424"))
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);

    let row = snapshot(&db.store, "loan8812_c1").await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.external_ref.as_deref(), Some("loan-8812/contact-1"));
    assert_eq!(row.biz_no.as_deref(), Some("ZM2016082230000002424"));
    assert_eq!(row.relation_rank.as_deref(), Some("V_CT_RL_SG"));
    assert_eq!(row.recency.as_deref(), Some("V_CT_RL180D"));
    assert_eq!(row.relation_score, Some(99));
    assert_eq!(row.error_code, None);
    assert_eq!(row.cert_no_masked.as_deref(), Some("640202********4686"));
    assert_eq!(row.name_masked.as_deref(), Some("张*"));
    assert_eq!(row.relation_phone_masked.as_deref(), Some("158****1158"));
    assert_eq!(row.relation_name_masked.as_deref(), Some("李*"));
    assert!(row.response_body.unwrap().contains("ZM2016082230000002424"));
    assert_eq!(row.is_completed, 1);

    let found = db.store.find("loan8812_c1").await.unwrap().unwrap();
    assert_eq!(
        found,
        ExistingJob {
            status: JobStatus::Succeeded,
            attempts: 1,
            first_call_at: Some(at(0)),
            fingerprint: Some("fp_first_contact".into()),
            batch_id: None,
        }
    );
    assert!(found.status.is_final());
    assert_eq!(
        db.store.calls_for("loan8812_c1").await.unwrap(),
        vec![ledger]
    );
}
on_both_backends!(a_successful_call_stores_the_answer_and_one_ledger_row);

async fn a_retried_job_keeps_its_first_call_time_and_then_succeeds(db: &TestDb) {
    let masked = masked();
    let job = key("retry_then_ok", &masked);
    db.store.begin_call(&job, at(0)).await.unwrap();
    let status = db
        .store
        .record(&job, Some(&call(1, at(0), "retryable")), &retrying())
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Retrying);
    let row = snapshot(&db.store, "retry_then_ok").await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.error_code.as_deref()),
        ("retrying", 1, Some("SYSTEM_ERROR"))
    );
    assert_eq!(row.error_message.as_deref(), Some("系统繁忙"));
    assert_eq!(row.is_completed, 0);

    let first = db.store.begin_call(&job, at(600)).await.unwrap();
    assert_eq!(first, at(0), "the first call time must not move on retry");
    let status = db
        .store
        .record(
            &job,
            Some(&call(2, at(600), "succeeded")),
            &success("ZM_RETRIED"),
        )
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);

    let row = snapshot(&db.store, "retry_then_ok").await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 2));
    assert_eq!((row.error_code, row.error_message), (None, None));
    assert_eq!(row.biz_no.as_deref(), Some("ZM_RETRIED"));
    assert_eq!(row.is_completed, 1);
    let attempts: Vec<u32> = db
        .store
        .calls_for("retry_then_ok")
        .await
        .unwrap()
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2]);
}
on_both_backends!(a_retried_job_keeps_its_first_call_time_and_then_succeeds);

async fn a_succeeded_row_is_never_downgraded(db: &TestDb) {
    let masked = masked();
    let job = key("done_once", &masked);
    db.store.begin_call(&job, at(0)).await.unwrap();
    db.store
        .record(
            &job,
            Some(&call(1, at(0), "succeeded")),
            &success("ZM_FIRST"),
        )
        .await
        .unwrap();

    let after_failure = db
        .store
        .record(&job, Some(&call(2, at(5), "permanent")), &failed())
        .await
        .unwrap();
    assert_eq!(after_failure, JobStatus::Succeeded);
    let after_retry = db.store.record(&job, None, &retrying()).await.unwrap();
    assert_eq!(after_retry, JobStatus::Succeeded);
    let second_success = db
        .store
        .record(&job, None, &success("ZM_SECOND"))
        .await
        .unwrap();
    assert_eq!(second_success, JobStatus::Succeeded);
    db.store
        .record_rejected("done_once", None, None, "INVALID_JSON", "body is not JSON")
        .await
        .unwrap();
    db.store.reset_to_retrying("done_once").await.unwrap();
    assert_eq!(db.store.begin_call(&job, at(900)).await.unwrap(), at(0));

    let row = snapshot(&db.store, "done_once").await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.biz_no.as_deref(), Some("ZM_FIRST"));
    assert_eq!(row.error_code, None);
    assert_eq!(row.attempts, 2, "the replayed call is still counted");
    assert_eq!(db.store.calls_for("done_once").await.unwrap().len(), 2);
}
on_both_backends!(a_succeeded_row_is_never_downgraded);

async fn a_biz_no_can_belong_to_one_job_only(db: &TestDb) {
    let masked = masked();
    let first = key("owner_of_biz_no", &masked);
    let second = key("thief_of_biz_no", &masked);
    db.store
        .record(
            &first,
            Some(&call(1, at(0), "succeeded")),
            &success("ZM_SHARED"),
        )
        .await
        .unwrap();
    db.store
        .record(&second, Some(&call(1, at(1), "retryable")), &retrying())
        .await
        .unwrap();

    let err = db
        .store
        .record(
            &second,
            Some(&call(2, at(2), "succeeded")),
            &success("ZM_SHARED"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateBizNo { biz_no } if biz_no == "ZM_SHARED"),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
    let row = snapshot(&db.store, "thief_of_biz_no").await;
    assert_eq!((row.status.as_str(), row.attempts), ("retrying", 1));
    assert_eq!(row.biz_no, None);

    for id in ["no_biz_a", "no_biz_b"] {
        db.store
            .record(&key(id, &masked), None, &failed())
            .await
            .unwrap();
    }
    assert_eq!(snapshot(&db.store, "no_biz_b").await.biz_no, None);
}
on_both_backends!(a_biz_no_can_belong_to_one_job_only);

async fn a_rejected_message_gets_a_failed_row_unless_already_final(db: &TestDb) {
    db.store
        .record_rejected(
            "bad_cert",
            Some("ref-1"),
            None,
            "INVALID_PARAMETER",
            "field `cert_no`: check",
        )
        .await
        .unwrap();
    let row = snapshot(&db.store, "bad_cert").await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 0);
    assert_eq!(row.external_ref.as_deref(), Some("ref-1"));
    assert_eq!(row.error_code.as_deref(), Some("INVALID_PARAMETER"));
    assert_eq!(row.error_message.as_deref(), Some("field `cert_no`: check"));
    assert_eq!((row.is_completed, row.has_first_call), (1, 0));
    assert_eq!(row.cert_no_masked, None);

    db.store
        .record_rejected("bad_cert", None, None, "INVALID_JSON", "second reason")
        .await
        .unwrap();
    let row = snapshot(&db.store, "bad_cert").await;
    assert_eq!(row.error_code.as_deref(), Some("INVALID_PARAMETER"));

    let masked = masked();
    let job = key("in_flight", &masked);
    db.store.begin_call(&job, at(0)).await.unwrap();
    db.store
        .record_rejected(
            "in_flight",
            None,
            None,
            "INVALID_PARAMETER",
            "later copy was bad",
        )
        .await
        .unwrap();
    let row = snapshot(&db.store, "in_flight").await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.external_ref.as_deref(), Some("loan-8812/contact-1"));
    assert_eq!(db.store.calls_for("bad_cert").await.unwrap(), vec![]);
}
on_both_backends!(a_rejected_message_gets_a_failed_row_unless_already_final);

async fn counts_cover_every_status_including_zero(db: &TestDb) {
    let empty = db.store.counts_by_status().await.unwrap();
    assert_eq!(
        empty,
        JobStatus::ALL.iter().map(|s| (*s, 0)).collect::<Vec<_>>()
    );
    let masked = masked();
    db.store
        .begin_call(&key("p1", &masked), at(0))
        .await
        .unwrap();
    db.store
        .begin_call(&key("p2", &masked), at(0))
        .await
        .unwrap();
    db.store
        .record(&key("s1", &masked), None, &success("ZM_S1"))
        .await
        .unwrap();
    db.store
        .record_rejected("f1", None, None, "INVALID_JSON", "x")
        .await
        .unwrap();
    let counts = db.store.counts_by_status().await.unwrap();
    assert_eq!(
        counts,
        vec![
            (JobStatus::Pending, 2),
            (JobStatus::Retrying, 0),
            (JobStatus::Succeeded, 1),
            (JobStatus::Failed, 1),
        ]
    );
}
on_both_backends!(counts_cover_every_status_including_zero);

async fn requeued_dead_jobs_become_retrying_and_keep_their_history(db: &TestDb) {
    let masked = masked();
    let job = key("dead_one", &masked);
    db.store.begin_call(&job, at(0)).await.unwrap();
    db.store
        .record(&job, Some(&call(1, at(0), "retryable")), &failed())
        .await
        .unwrap();
    assert_eq!(snapshot(&db.store, "dead_one").await.is_completed, 1);

    db.store.reset_to_retrying("dead_one").await.unwrap();
    let found = db.store.find("dead_one").await.unwrap().unwrap();
    assert_eq!(found.status, JobStatus::Retrying);
    assert_eq!(found.attempts, 1);
    assert_eq!(found.first_call_at, Some(at(0)));
    let row = snapshot(&db.store, "dead_one").await;
    assert_eq!(row.is_completed, 0);
    assert_eq!(row.error_code.as_deref(), Some("INVALID_PARAMETER"));

    db.store.reset_to_retrying("never_stored").await.unwrap();
    assert_eq!(db.store.find("never_stored").await.unwrap(), None);
}
on_both_backends!(requeued_dead_jobs_become_retrying_and_keep_their_history);

async fn begin_call_leaves_a_final_row_untouched(db: &TestDb) {
    db.store
        .record_rejected("rejected_first", None, None, "INVALID_PARAMETER", "x")
        .await
        .unwrap();
    let masked = masked();
    let first = db
        .store
        .begin_call(&key("rejected_first", &masked), at(42))
        .await
        .unwrap();
    assert_eq!(first, at(42));
    let row = snapshot(&db.store, "rejected_first").await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.has_first_call, 0);
    assert_eq!(row.cert_no_masked, None);
}
on_both_backends!(begin_call_leaves_a_final_row_untouched);

#[tokio::test]
async fn three_replicas_migrating_one_postgres_database_at_once_all_succeed() {
    let (url, name) = create_postgres_database().await;
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { JobStore::migrate(&url).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let store = JobStore::connect(&url, 2).await.unwrap();
    assert_eq!(
        count_rows(&store, "_sqlx_migrations").await,
        migration_files()
    );
    assert_eq!(count_rows(&store, "upstream_calls").await, 0);
    if let Backend::Postgres(pool) = &store.backend {
        pool.close().await;
    }
    drop_postgres_database(&name).await;
}

#[tokio::test]
async fn sqlite_timestamps_are_fixed_width_utc_text() {
    let db = TestDb::sqlite().await;
    let masked = masked();
    db.store
        .begin_call(&key("ts", &masked), at(0) + TimeDelta::microseconds(456))
        .await
        .unwrap();
    let Backend::Sqlite(pool) = &db.store.backend else {
        panic!("not sqlite");
    };
    let (created, first): (String, String) =
        sqlx::query_as("SELECT created_at, first_call_at FROM relation_checks")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(first, "2025-06-15T15:06:40.123Z");
    assert_eq!(created.len(), first.len());
    assert!(created.ends_with('Z') && created.as_bytes()[10] == b'T');
    db.finish().await;
}

#[tokio::test]
async fn an_unknown_url_scheme_is_refused_naming_the_setting() {
    let Err(err) = JobStore::connect("mysql://localhost/jobs", 1).await else {
        panic!("mysql must be refused");
    };
    let text = err.to_string();
    assert!(
        text.contains("database.url") && text.contains("`mysql`"),
        "{text}"
    );
    assert!(!err.is_unavailable());
    assert!(matches!(
        JobStore::migrate("jobs.db").await,
        Err(StoreError::UnsupportedUrl { .. })
    ));
}

/// sqlx reports a connection closed while it waits for the answer to its
/// SSLRequest as a protocol error: it is a lost connection all the same.
#[test]
fn a_connection_closed_during_the_ssl_request_is_transient() {
    let cut = StoreError::Connect(sqlx::Error::Protocol(
        "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into(),
    ));
    assert!(cut.is_unavailable(), "{cut:?}");
    let garbage = StoreError::Connect(sqlx::Error::Protocol(
        "unexpected response from SSLRequest: 0x48".into(),
    ));
    assert!(!garbage.is_unavailable(), "{garbage:?}");
}

#[tokio::test]
async fn a_database_that_refuses_connections_is_reported_unavailable() {
    let Err(err) = JobStore::connect("postgres://postgres@127.0.0.1:1/none", 1).await else {
        panic!("nothing listens on port 1");
    };
    assert!(err.is_unavailable(), "{err:?}");
}

#[test]
fn statuses_round_trip_through_their_text() {
    for status in JobStatus::ALL {
        assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
    }
    assert!("done".parse::<JobStatus>().is_err());
    assert!(!JobStatus::Retrying.is_final());
    assert!(JobStatus::Failed.is_final());
}

#[test]
fn postgres_connection_resource_and_serialization_errors_are_transient() {
    for code in [
        "08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03", "57P04", "53000",
        "53100", "53200", "53300", "53400", "40001", "40P01",
    ] {
        assert!(
            is_transient_postgres_code(code),
            "{code} should be transient"
        );
    }
}

#[test]
fn postgres_data_constraint_and_syntax_errors_are_permanent() {
    // 22021 is the NUL-in-text error; 22021 & 0xff == 5 made it look like
    // SQLite's BUSY when one rule served both backends.
    for code in [
        "22021", "22001", "22P02", "23505", "23502", "23514", "42P01", "42703", "40002", "57014",
        "XX000", "00005", "00006",
    ] {
        assert!(
            !is_transient_postgres_code(code),
            "{code} should be permanent"
        );
    }
}

#[test]
fn sqlite_busy_and_locked_are_transient_and_everything_else_is_permanent() {
    // Primary codes 5 (BUSY) and 6 (LOCKED) and their extended codes.
    for code in ["5", "6", "261", "517", "773", "262", "518"] {
        assert!(is_transient_sqlite_code(code), "{code} should be transient");
    }
    // CONSTRAINT (19, 2067 unique), ERROR (1), TOOBIG (18), MISMATCH (20),
    // and PostgreSQL-looking codes that an old rule read as BUSY.
    for code in [
        "1", "18", "19", "20", "2067", "1555", "22021", "53300", "08006",
    ] {
        assert!(
            !is_transient_sqlite_code(code),
            "{code} should be permanent"
        );
    }
}

async fn a_nul_in_a_stored_value_is_a_permanent_error_with_the_databases_reason(db: &TestDb) {
    let mut masked = masked();
    masked.name = "\0*".into();
    let job = key("nul_name", &masked);
    match db.store.begin_call(&job, at(0)).await {
        // SQLite stores the NUL like any other character.
        Ok(_) => assert!(!db.store.is_shared(), "PostgreSQL must refuse a NUL"),
        Err(error) => {
            assert!(!error.is_unavailable(), "{error:?} must not be retried");
            let reason = error.database_reason().unwrap_or_default();
            assert!(reason.contains("22021"), "{reason}");
        }
    }
}
on_both_backends!(a_nul_in_a_stored_value_is_a_permanent_error_with_the_databases_reason);

async fn a_transaction_id_reused_for_other_business_fields_is_refused_and_the_row_untouched(
    db: &TestDb,
) {
    let first_masked = masked();
    let first = key("reused_id", &first_masked);
    assert_eq!(db.store.begin_call(&first, at(0)).await.unwrap(), at(0));
    let other_masked = PiiMasked {
        name: "王*".into(),
        relation_phone: "139****0000".into(),
        ..masked()
    };
    let other = JobKey {
        fingerprint: "fp_second_contact",
        external_ref: Some("loan-9/contact-2"),
        ..key("reused_id", &other_masked)
    };
    let before = snapshot(&db.store, "reused_id").await;
    let Err(error) = db.store.begin_call(&other, at(60)).await else {
        panic!("a different fingerprint must be refused");
    };
    assert!(
        matches!(error, StoreError::TransactionIdConflict { .. }),
        "{error:?}"
    );
    assert!(!error.is_unavailable());
    assert!(
        error.to_string().starts_with("TRANSACTION_ID_CONFLICT"),
        "{error}"
    );
    let after = snapshot(&db.store, "reused_id").await;
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    assert_eq!(after.name_masked.as_deref(), Some("张*"));
    let found = db.store.find("reused_id").await.unwrap().unwrap();
    assert_eq!(found.fingerprint.as_deref(), Some("fp_first_contact"));
    assert!(found.conflicts_with("fp_second_contact"));

    // The same job again stays idempotent; a finished row still refuses others.
    assert_eq!(db.store.begin_call(&first, at(90)).await.unwrap(), at(0));
    db.store
        .record(
            &first,
            Some(&call(1, at(0), "succeeded")),
            &success("ZM_REUSED"),
        )
        .await
        .unwrap();
    assert!(matches!(
        db.store.begin_call(&other, at(120)).await,
        Err(StoreError::TransactionIdConflict { .. })
    ));
    assert_eq!(snapshot(&db.store, "reused_id").await.status, "succeeded");
}
on_both_backends!(
    a_transaction_id_reused_for_other_business_fields_is_refused_and_the_row_untouched
);

#[tokio::test]
async fn a_new_sqlite_database_and_its_wal_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let url = format!("sqlite:{}?mode=rwc", path.display());
    JobStore::migrate(&url).await.unwrap();
    let store = JobStore::connect(&url, 1).await.unwrap();
    store.ping().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("jobs.sqlite{suffix}"));
        if let Ok(metadata) = std::fs::metadata(&file) {
            let mode = metadata.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
        } else {
            assert!(!suffix.is_empty(), "the database file exists");
        }
    }
}

#[tokio::test]
async fn a_missing_sqlite_directory_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("data");
    let url = format!("sqlite:{}/zhima.sqlite?mode=rwc", missing.display());
    for outcome in [
        JobStore::migrate(&url).await.err(),
        JobStore::connect(&url, 1).await.err(),
    ] {
        let error = outcome.expect("a missing directory must be refused");
        let text = error.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("database.url"), "{text}");
        assert!(!error.is_unavailable(), "not worth waiting for: {error:?}");
    }
    assert!(!missing.exists(), "the directory is reported, not created");
}

// --- result events (the outbox) and batches ---

#[derive(Debug, FromRow)]
struct OutboxRow {
    message_id: String,
    routing_key: String,
    body: String,
}

async fn outbox(store: &JobStore) -> Vec<OutboxRow> {
    let sql = "SELECT message_id, routing_key, body FROM result_events ORDER BY id";
    match &store.backend {
        Backend::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        Backend::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

fn batch_key<'a>(transaction_id: &'a str, batch_id: &'a str, masked: &'a PiiMasked) -> JobKey<'a> {
    JobKey {
        batch_id: Some(batch_id),
        ..key(transaction_id, masked)
    }
}

fn with_events(db: &TestDb) -> JobStore {
    db.store.clone().with_result_events(true)
}

async fn a_final_outcome_writes_exactly_one_event_with_the_row_s_fields(db: &TestDb) {
    let store = with_events(db);
    let masked = masked();
    let job = key("ev_1", &masked);
    store.begin_call(&job, at(0)).await.unwrap();
    store
        .record(&job, Some(&call(1, at(0), "retryable")), &retrying())
        .await
        .unwrap();
    assert!(outbox(&store).await.is_empty(), "a retry is not final");
    store
        .record(
            &job,
            Some(&call(2, at(5), "succeeded")),
            &success("biz_ev_1"),
        )
        .await
        .unwrap();
    // A redelivery after a crash: the row stays succeeded, no second event.
    store
        .record(
            &job,
            Some(&call(3, at(9), "succeeded")),
            &success("biz_ev_1"),
        )
        .await
        .unwrap();
    let events = outbox(&store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message_id, "ev_1");
    assert_eq!(events[0].routing_key, "relation.succeeded");
    let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["event"], "relation.result");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["biz_no"], "biz_ev_1");
    assert_eq!(body["relation_rank"], "V_CT_RL_SG");
    assert_eq!(body["relation_score"], 99);
    assert_eq!(body["external_ref"], "loan-8812/contact-1");
    assert_eq!(body["batch_id"], serde_json::Value::Null);
    assert_eq!(body["error_code"], serde_json::Value::Null);
    assert_eq!(body["attempts"], 2);
    assert_eq!(body["first_call_at"], "2025-06-15T15:06:40.123Z");
    assert!(body["completed_at"].is_string());
    let text = &events[0].body;
    assert!(!text.contains("李*") && !text.contains("640202"), "{text}");
    assert_eq!(store.unsent_events().await.unwrap(), 1);
}
on_both_backends!(a_final_outcome_writes_exactly_one_event_with_the_row_s_fields);

async fn a_rejected_message_with_a_readable_id_gets_a_failed_event_once(db: &TestDb) {
    let store = with_events(db);
    for _ in 0..2 {
        store
            .record_rejected(
                "rej_1",
                Some("ref-9"),
                Some("b-rej"),
                "INVALID_PARAMETER",
                "field `cert_no`: check digit",
            )
            .await
            .unwrap();
    }
    let events = outbox(&store).await;
    let jobs: Vec<&OutboxRow> = events.iter().filter(|e| e.message_id == "rej_1").collect();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].routing_key, "relation.failed");
    let body: serde_json::Value = serde_json::from_str(&jobs[0].body).unwrap();
    assert_eq!(body["error_code"], "INVALID_PARAMETER");
    assert_eq!(body["batch_id"], "b-rej");
    assert_eq!(body["attempts"], 0);
    assert_eq!(body["biz_no"], serde_json::Value::Null);
}
on_both_backends!(a_rejected_message_with_a_readable_id_gets_a_failed_event_once);

async fn with_events_off_no_outbox_row_is_written(db: &TestDb) {
    let masked = masked();
    let job = key("quiet_1", &masked);
    db.store
        .record(&job, Some(&call(1, at(0), "permanent")), &failed())
        .await
        .unwrap();
    db.store
        .record_rejected("quiet_2", None, None, "INVALID_JSON", "x")
        .await
        .unwrap();
    assert!(outbox(&db.store).await.is_empty());
}
on_both_backends!(with_events_off_no_outbox_row_is_written);

async fn claimed_events_are_sent_once_and_a_dropped_claim_gives_them_back(db: &TestDb) {
    let store = with_events(db);
    let masked = masked();
    for id in ["c_1", "c_2", "c_3"] {
        store
            .record(&key(id, &masked), None, &failed())
            .await
            .unwrap();
    }
    let dropped = store.claim_events(2).await.unwrap();
    assert_eq!(dropped.events.len(), 2);
    drop(dropped);
    assert_eq!(store.unsent_events().await.unwrap(), 3);
    let claim = store.claim_events(2).await.unwrap();
    let ids: Vec<&str> = claim.events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["c_1", "c_2"], "oldest first");
    store.mark_sent(claim).await.unwrap();
    assert_eq!(store.unsent_events().await.unwrap(), 1);
    let rest = store.claim_events(10).await.unwrap();
    let ids: Vec<&str> = rest.events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["c_3"]);
    store.mark_sent(rest).await.unwrap();
    assert_eq!(store.unsent_events().await.unwrap(), 0);
    assert!(store.claim_events(10).await.unwrap().events.is_empty());
}
on_both_backends!(claimed_events_are_sent_once_and_a_dropped_claim_gives_them_back);

/// PostgreSQL: two relays claiming at once never hold the same row.
#[tokio::test]
async fn two_relays_on_postgres_claim_disjoint_events() {
    let db = TestDb::postgres().await;
    let store = with_events(&db);
    let masked = masked();
    for n in 0..6 {
        let id = format!("pair_{n}");
        store
            .record(&key(&id, &masked), None, &failed())
            .await
            .unwrap();
    }
    let first = store.claim_events(4).await.unwrap();
    let second = store.claim_events(4).await.unwrap();
    assert_eq!(first.events.len(), 4);
    assert_eq!(second.events.len(), 2, "the locked rows are skipped");
    let mut all: Vec<i64> = first
        .events
        .iter()
        .chain(&second.events)
        .map(|e| e.id)
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 6);
    store.mark_sent(second).await.unwrap();
    store.mark_sent(first).await.unwrap();
    assert_eq!(store.unsent_events().await.unwrap(), 0);
    db.finish().await;
}

fn completions(events: &[OutboxRow], batch_id: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.routing_key == "batch.completed" && e.message_id == batch_id)
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect()
}

async fn a_batch_completes_once_its_last_job_is_final(db: &TestDb) {
    let store = with_events(db);
    let masked = masked();
    assert_eq!(store.start_batch("b-1").await.unwrap(), BatchStart::Open);
    let jobs = ["b1_a", "b1_b", "b1_c"];
    store
        .record(
            &batch_key(jobs[0], "b-1", &masked),
            None,
            &success("biz_b1_a"),
        )
        .await
        .unwrap();
    store
        .record(&batch_key(jobs[1], "b-1", &masked), None, &failed())
        .await
        .unwrap();
    assert!(!store.record_batch_size("b-1", 3).await.unwrap());
    assert!(completions(&outbox(&store).await, "b-1").is_empty());
    store
        .record(&batch_key(jobs[2], "b-1", &masked), None, &retrying())
        .await
        .unwrap();
    assert!(completions(&outbox(&store).await, "b-1").is_empty());
    store
        .record(
            &batch_key(jobs[2], "b-1", &masked),
            None,
            &success("biz_b1_c"),
        )
        .await
        .unwrap();
    let done = completions(&outbox(&store).await, "b-1");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["event"], "batch.completed");
    assert_eq!(done[0]["size"], 3);
    assert_eq!(done[0]["succeeded"], 2);
    assert_eq!(done[0]["failed"], 1);
    assert!(done[0]["enqueued_at"].is_string());
    // Recording again, or re-finishing a job, completes nothing twice.
    assert!(!store.record_batch_size("b-1", 3).await.unwrap());
    store
        .record_rejected(jobs[1], None, Some("b-1"), "INVALID_JSON", "x")
        .await
        .unwrap();
    assert_eq!(completions(&outbox(&store).await, "b-1").len(), 1);
    assert_eq!(
        store.start_batch("b-1").await.unwrap(),
        BatchStart::AlreadyEnqueued
    );
}
on_both_backends!(a_batch_completes_once_its_last_job_is_final);

async fn a_batch_finished_before_its_size_was_recorded_completes_then(db: &TestDb) {
    let store = with_events(db);
    let masked = masked();
    store.start_batch("b-early").await.unwrap();
    for id in ["early_1", "early_2"] {
        store
            .record(&batch_key(id, "b-early", &masked), None, &failed())
            .await
            .unwrap();
    }
    assert!(completions(&outbox(&store).await, "b-early").is_empty());
    assert!(store.record_batch_size("b-early", 2).await.unwrap());
    let done = completions(&outbox(&store).await, "b-early");
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0]["succeeded"].as_u64(), done[0]["failed"].as_u64()),
        (Some(0), Some(2))
    );
}
on_both_backends!(a_batch_finished_before_its_size_was_recorded_completes_then);

/// The last two jobs of many batches finish at the same moment on separate
/// connections: each batch still completes exactly once.
async fn racing_last_jobs_complete_their_batch_exactly_once(db: &TestDb) {
    let store = with_events(db);
    const BATCHES: usize = 12;
    for b in 0..BATCHES {
        let batch = format!("race-{b}");
        store.start_batch(&batch).await.unwrap();
        store.record_batch_size(&batch, 2).await.unwrap();
    }
    let mut tasks = Vec::new();
    for b in 0..BATCHES {
        for j in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let batch = format!("race-{b}");
                let id = format!("race_{b}_{j}");
                let masked = masked();
                store
                    .record(&batch_key(&id, &batch, &masked), None, &failed())
                    .await
                    .unwrap();
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let events = outbox(&store).await;
    for b in 0..BATCHES {
        let done = completions(&events, &format!("race-{b}"));
        assert_eq!(done.len(), 1, "batch race-{b}: {done:?}");
        assert_eq!(done[0]["failed"], 2);
    }
}
on_both_backends!(racing_last_jobs_complete_their_batch_exactly_once);

async fn results_stream_the_final_rows_of_a_batch_in_completion_order(db: &TestDb) {
    use futures_util::TryStreamExt;
    let masked = masked();
    for (id, update) in [
        ("r_1", success("biz_r_1")),
        ("r_2", failed()),
        ("r_3", retrying()),
    ] {
        db.store
            .record(&batch_key(id, "b-r", &masked), None, &update)
            .await
            .unwrap();
    }
    db.store
        .record(&key("r_other", &masked), None, &failed())
        .await
        .unwrap();
    let rows: Vec<_> = db
        .store
        .results(ResultFilter::Batch("b-r"))
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.transaction_id.as_str()).collect();
    assert_eq!(ids, ["r_1", "r_2"], "final rows of the batch only");
    assert_eq!(rows[0].biz_no.as_deref(), Some("biz_r_1"));
    assert_eq!(rows[1].error_code.as_deref(), Some("INVALID_PARAMETER"));
    let day: Vec<_> = db
        .store
        .results(ResultFilter::Completed {
            start: Utc::now() - TimeDelta::hours(1),
            end: Utc::now() + TimeDelta::hours(1),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(day.len(), 3);
}
on_both_backends!(results_stream_the_final_rows_of_a_batch_in_completion_order);

async fn a_final_job_enqueued_again_joins_the_new_batch_which_completes(db: &TestDb) {
    let store = with_events(db);
    let masked = masked();
    store
        .record(
            &batch_key("again_1", "b-old", &masked),
            None,
            &success("biz_again"),
        )
        .await
        .unwrap();
    store.start_batch("b-new").await.unwrap();
    store.record_batch_size("b-new", 1).await.unwrap();
    store.join_batch("again_1", "b-new").await.unwrap();
    // Joining the batch it is in already changes nothing.
    store.join_batch("again_1", "b-new").await.unwrap();
    let events = outbox(&store).await;
    let results: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e.message_id == "again_1")
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "the result again, for the new batch");
    assert_eq!(results[1]["batch_id"], "b-new");
    assert_eq!(results[1]["biz_no"], "biz_again");
    let done = completions(&events, "b-new");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["succeeded"], 1);
    assert_eq!(
        store
            .find("again_1")
            .await
            .unwrap()
            .unwrap()
            .batch_id
            .as_deref(),
        Some("b-new")
    );
    // A row that is not final never moves.
    store
        .record(&batch_key("again_2", "b-old", &masked), None, &retrying())
        .await
        .unwrap();
    store.join_batch("again_2", "b-new").await.unwrap();
    assert_eq!(
        store
            .find("again_2")
            .await
            .unwrap()
            .unwrap()
            .batch_id
            .as_deref(),
        Some("b-old")
    );
}
on_both_backends!(a_final_job_enqueued_again_joins_the_new_batch_which_completes);

// The daily budget (`store::spend`).

async fn a_day_s_budget_is_taken_unit_by_unit_and_never_past_the_limit(db: &TestDb) {
    let store = &db.store;
    let day = "2026-12-01";
    for (n, id) in ["s1", "s2", "s3"].into_iter().enumerate() {
        let used = i64::try_from(n).unwrap() + 1;
        assert_eq!(
            store.reserve_spend(id, day, 3).await.unwrap(),
            Reservation::Taken { used }
        );
    }
    assert_eq!(
        store.reserve_spend("s4", day, 3).await.unwrap(),
        Reservation::Refused { used: 3 }
    );
    // A retry of a transaction_id that holds a unit takes no second one.
    assert_eq!(
        store.reserve_spend("s1", day, 3).await.unwrap(),
        Reservation::AlreadyHeld
    );
    // A unit given back makes room; a billed one is never given back.
    assert!(store.release_spend("s2").await.unwrap());
    assert!(!store.release_spend("s2").await.unwrap());
    assert_eq!(
        store.reserve_spend("s4", day, 3).await.unwrap(),
        Reservation::Taken { used: 3 }
    );
    store.mark_spend_billed("s1").await.unwrap();
    assert!(!store.release_spend("s1").await.unwrap());
    assert_eq!(store.spend_used(day).await.unwrap(), 3);
    // A raised limit takes effect at once; another day starts from zero.
    assert_eq!(
        store.reserve_spend("s5", day, 4).await.unwrap(),
        Reservation::Taken { used: 4 }
    );
    assert_eq!(
        store.reserve_spend("n1", "2026-12-02", 4).await.unwrap(),
        Reservation::Taken { used: 1 }
    );
    store.note_spend_refusal(day, "s6").await.unwrap();
    store.note_spend_refusal(day, "s6").await.unwrap();
    store.note_spend_refusal(day, "s7").await.unwrap();
    let days = store.spend_days("2026-11-30", "2026-12-02").await.unwrap();
    assert_eq!(
        days,
        vec![
            SpendDayRow {
                day: day.into(),
                used: 4,
                billed_units: 1,
                held: 3,
                refused: 2,
                daily_limit: 4,
            },
            SpendDayRow {
                day: "2026-12-02".into(),
                used: 1,
                billed_units: 0,
                held: 1,
                refused: 0,
                daily_limit: 4,
            },
        ]
    );
    assert_eq!(store.spend_used("2026-12-03").await.unwrap(), 0);
    // Held units (s3, s4, s5) are pending only while their job waits for a
    // retry; not without a row, nor once final, nor when taken before `since`.
    let long_ago = Utc::now() - TimeDelta::hours(1);
    assert_eq!(store.pending_spend_units(day, long_ago).await.unwrap(), 0);
    let masked = masked();
    store
        .record(&key("s3", &masked), None, &retrying())
        .await
        .unwrap();
    store
        .record(&key("s4", &masked), None, &retrying())
        .await
        .unwrap();
    assert_eq!(store.pending_spend_units(day, long_ago).await.unwrap(), 2);
    store
        .record(&key("s3", &masked), None, &failed())
        .await
        .unwrap();
    assert_eq!(store.pending_spend_units(day, long_ago).await.unwrap(), 1);
    let later = Utc::now() + TimeDelta::hours(1);
    assert_eq!(store.pending_spend_units(day, later).await.unwrap(), 0);
    // Retention: the days before the cutoff go, the cutoff day stays.
    assert_eq!(
        store.forget_spend_before("2026-12-02").await.unwrap(),
        1 + 4 + 2
    );
    let days = store.spend_days("2026-11-30", "2026-12-02").await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].day, "2026-12-02");
}
on_both_backends!(a_day_s_budget_is_taken_unit_by_unit_and_never_past_the_limit);

async fn racing_reservations_take_exactly_the_limit(db: &TestDb) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let store = db.store.clone();
        tasks.spawn(async move {
            let mut taken = 0;
            for n in 0..25 {
                let id = format!("race_{worker}_{n}");
                if let Reservation::Taken { .. } =
                    store.reserve_spend(&id, "2026-12-01", 100).await.unwrap()
                {
                    taken += 1;
                }
            }
            taken
        });
    }
    let mut taken = 0;
    while let Some(joined) = tasks.join_next().await {
        taken += joined.unwrap();
    }
    assert_eq!(taken, 100);
    assert_eq!(db.store.spend_used("2026-12-01").await.unwrap(), 100);
    assert_eq!(count_rows(&db.store, "spend_reservations").await, 100);
}
on_both_backends!(racing_reservations_take_exactly_the_limit);

/// Grouped commits (PostgreSQL): concurrent call starts and outcomes share
/// transactions, and an outcome that the database refuses (a biz_no taken)
/// fails alone: every other one of its group is committed, with its event and
/// its ledger row.
#[tokio::test]
async fn grouped_commits_commit_every_outcome_and_fail_only_the_refused_one() {
    let db = TestDb::postgres().await;
    let store = with_events(&db).with_grouped_commits();
    let masked = masked();
    store
        .record(
            &key("group_owner", &masked),
            Some(&call(1, at(0), "succeeded")),
            &success("ZM_GROUP_TAKEN"),
        )
        .await
        .unwrap();
    let ids: Vec<String> = (0..40).map(|n| format!("group_{n}")).collect();
    let outcomes = futures_util::future::join_all(ids.iter().enumerate().map(|(n, id)| {
        let store = store.clone();
        let masked = &masked;
        async move {
            let job = key(id, masked);
            let started = store.try_begin_call(&job, at(1)).await.unwrap();
            assert_eq!(started, Some(at(1)), "{id}");
            let update = match n {
                7 => success("ZM_GROUP_TAKEN"),
                n if n % 3 == 0 => failed(),
                n => success(&format!("ZM_GROUP_{n}")),
            };
            store
                .record(&job, Some(&call(1, at(2), "succeeded")), &update)
                .await
        }
    }))
    .await;
    for (n, outcome) in outcomes.iter().enumerate() {
        match n {
            7 => assert!(
                matches!(outcome, Err(StoreError::DuplicateBizNo { biz_no }) if biz_no == "ZM_GROUP_TAKEN"),
                "{outcome:?}"
            ),
            n if n % 3 == 0 => assert_eq!(*outcome.as_ref().unwrap(), JobStatus::Failed),
            _ => assert_eq!(*outcome.as_ref().unwrap(), JobStatus::Succeeded),
        }
    }
    let refused = snapshot(&store, "group_7").await;
    assert_eq!((refused.status.as_str(), refused.attempts), ("pending", 0));
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 7) {
        let row = snapshot(&store, id).await;
        assert_eq!(row.attempts, 1, "{id}");
        assert_eq!(row.is_completed, 1, "{id}");
        let expected = (n % 3 != 0).then(|| format!("ZM_GROUP_{n}"));
        assert_eq!(row.biz_no, expected, "{id}");
        assert_eq!(store.calls_for(id).await.unwrap().len(), 1, "{id}");
    }
    // The owner's event and one per committed outcome; none for group_7.
    let events = outbox(&store).await;
    assert_eq!(events.len(), 1 + 39);
    assert!(events.iter().all(|event| event.message_id != "group_7"));
    drop(store);
    db.finish().await;
}

/// A group's outcomes of every kind in one commit (PostgreSQL): rows made
/// final (succeeded, failed), retries, and calls of jobs that already
/// succeeded (a redelivery: only the attempt counts, the answer stays and no
/// second event is written), each exactly as on its own: one ledger row per
/// call, one event per row made final, with the row's own fields.
#[tokio::test]
async fn grouped_outcomes_of_every_kind_settle_each_job_as_on_its_own() {
    let db = TestDb::postgres().await;
    let store = with_events(&db).with_grouped_commits();
    let masked = masked();
    let done_before: Vec<String> = (0..5).map(|n| format!("mixed_done_{n}")).collect();
    for id in &done_before {
        store
            .record(
                &key(id, &masked),
                Some(&call(1, at(0), "succeeded")),
                &success(&format!("ZM_{id}")),
            )
            .await
            .unwrap();
    }
    let fresh: Vec<String> = (0..30).map(|n| format!("mixed_{n}")).collect();
    for id in &fresh {
        store.begin_call(&key(id, &masked), at(1)).await.unwrap();
    }
    let requests: Vec<(&String, RowUpdate, &str)> = fresh
        .iter()
        .enumerate()
        .map(|(n, id)| match n % 3 {
            0 => (id, retrying(), "retryable"),
            1 => (id, success(&format!("ZM_{id}")), "succeeded"),
            _ => (id, failed(), "permanent"),
        })
        .chain(
            done_before
                .iter()
                .map(|id| (id, success("ZM_SECOND_ANSWER"), "succeeded")),
        )
        .collect();
    let outcomes = futures_util::future::join_all(requests.iter().map(|(id, update, outcome)| {
        let store = store.clone();
        let masked = &masked;
        async move {
            store
                .record(&key(id, masked), Some(&call(2, at(2), outcome)), update)
                .await
                .unwrap()
        }
    }))
    .await;
    for ((id, update, _), status) in requests.iter().zip(&outcomes) {
        let expected = match (id.starts_with("mixed_done_"), update) {
            (true, _) => JobStatus::Succeeded,
            (false, RowUpdate::Retrying { .. }) => JobStatus::Retrying,
            (false, RowUpdate::Succeeded { .. }) => JobStatus::Succeeded,
            (false, RowUpdate::Failed { .. }) => JobStatus::Failed,
        };
        assert_eq!(*status, expected, "{id}");
    }
    for (n, id) in fresh.iter().enumerate() {
        let row = snapshot(&store, id).await;
        assert_eq!(row.attempts, 1, "{id}");
        assert_eq!(store.calls_for(id).await.unwrap().len(), 1, "{id}");
        match n % 3 {
            0 => {
                assert_eq!(
                    (row.status.as_str(), row.is_completed),
                    ("retrying", 0),
                    "{id}"
                );
                assert_eq!(row.error_code.as_deref(), Some("SYSTEM_ERROR"), "{id}");
            }
            1 => {
                assert_eq!(
                    (row.status.as_str(), row.is_completed),
                    ("succeeded", 1),
                    "{id}"
                );
                assert_eq!(row.biz_no, Some(format!("ZM_{id}")), "{id}");
                assert_eq!(row.relation_score, Some(99), "{id}");
            }
            _ => {
                assert_eq!(
                    (row.status.as_str(), row.is_completed),
                    ("failed", 1),
                    "{id}"
                );
                assert_eq!(row.error_code.as_deref(), Some("INVALID_PARAMETER"), "{id}");
            }
        }
    }
    for id in &done_before {
        let row = snapshot(&store, id).await;
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("succeeded", 2),
            "{id}"
        );
        assert_eq!(row.biz_no, Some(format!("ZM_{id}")), "{id}");
        assert_eq!(store.calls_for(id).await.unwrap().len(), 2, "{id}");
    }
    // One event per row made final: the five earlier successes, then the
    // twenty of this group (none for a retry or a second answer).
    let events = outbox(&store).await;
    assert_eq!(events.len(), 5 + 20);
    for (n, id) in fresh.iter().enumerate() {
        let mine: Vec<_> = events.iter().filter(|e| &e.message_id == id).collect();
        match n % 3 {
            0 => assert!(mine.is_empty(), "{id}"),
            1 => {
                assert_eq!(mine.len(), 1, "{id}");
                assert!(mine[0].body.contains(&format!("ZM_{id}")), "{id}");
            }
            _ => {
                assert_eq!(mine.len(), 1, "{id}");
                assert!(mine[0].body.contains("INVALID_PARAMETER"), "{id}");
            }
        }
    }
    drop(store);
    db.finish().await;
}

/// The call starts of a group in one statement (PostgreSQL): each job gets
/// what the one-job statement would give it, in the order asked (new rows
/// and open ones their first call time, a final row or one of another
/// contact nothing), and a transaction_id twice in one statement is refused
/// (the group then runs each request on its own).
#[tokio::test]
async fn call_starts_in_one_statement_answer_each_job_as_one_at_a_time() {
    let db = TestDb::postgres().await;
    let Backend::Postgres(pool) = &db.store.backend else {
        unreachable!("a PostgreSQL store");
    };
    let masked = masked();
    let store = &db.store;
    store
        .begin_call(&key("sc_open", &masked), at(0))
        .await
        .unwrap();
    store
        .record(
            &key("sc_final", &masked),
            Some(&call(1, at(0), "succeeded")),
            &success("ZM_SC_FINAL"),
        )
        .await
        .unwrap();
    let other = JobKey {
        fingerprint: "fp_another_contact",
        ..key("sc_other", &masked)
    };
    store.begin_call(&other, at(0)).await.unwrap();
    let jobs = [
        (key("sc_new_1", &masked), at(5)),
        (key("sc_final", &masked), at(5)),
        (key("sc_open", &masked), at(5)),
        (key("sc_other", &masked), at(5)),
        (key("sc_new_2", &masked), at(6)),
    ];
    let started = super::postgres::start_calls_on(pool, &jobs).await.unwrap();
    assert_eq!(started, [Some(at(5)), None, Some(at(0)), None, Some(at(6))]);
    for id in ["sc_new_1", "sc_new_2"] {
        let row = snapshot(store, id).await;
        assert_eq!((row.status.as_str(), row.attempts), ("pending", 0), "{id}");
        assert_eq!(row.cert_no_masked.as_deref(), Some(masked.cert_no.as_str()));
        let found = store.find(id).await.unwrap().unwrap();
        assert!(!found.conflicts_with("fp_first_contact"), "{id}");
        assert!(found.conflicts_with("fp_another_contact"), "{id}");
    }
    assert_eq!(snapshot(store, "sc_final").await.status, "succeeded");
    let twice = [
        (key("sc_twice", &masked), at(7)),
        (key("sc_twice", &masked), at(7)),
    ];
    assert!(super::postgres::start_calls_on(pool, &twice).await.is_err());
    assert!(store.find("sc_twice").await.unwrap().is_none());
    db.finish().await;
}

#[path = "reuse_tests.rs"]
mod reuse;
