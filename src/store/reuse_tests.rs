//! Answer reuse in the store: every scenario on both backends, with
//! `store::tests`' databases (`TestDb`, `on_both_backends!`).

use chrono::{TimeDelta, Utc};

use super::TestDb;
use crate::store::{Backend, CallRecord, JobKey, JobStatus, JobStore, PiiMasked, RowUpdate};

fn masked(person: &str) -> PiiMasked {
    PiiMasked {
        cert_no: "640202********4686".into(),
        name: "张*".into(),
        relation_phone: "158****1158".into(),
        relation_name: "李*".into(),
        cert_no_hmac: Some(format!("cert_hmac_{person}")),
        relation_phone_hmac: Some(format!("phone_hmac_{person}")),
    }
}

fn key<'a>(transaction_id: &'a str, masked: &'a PiiMasked) -> JobKey<'a> {
    JobKey {
        transaction_id,
        external_ref: Some("loan-1/contact-1"),
        batch_id: None,
        masked,
        fingerprint: transaction_id,
    }
}

fn call() -> CallRecord {
    CallRecord {
        attempt: 1,
        started_at: Utc::now(),
        duration_ms: 40,
        http_status: Some(200),
        code: Some("10000".into()),
        sub_code: None,
        outcome: "succeeded".into(),
    }
}

/// A job that called, was answered (`biz_no`, rank) and indexed under
/// `question`.
async fn paid(store: &JobStore, transaction_id: &str, question: &str, biz_no: &str, rank: &str) {
    let masked = masked("p");
    let key = key(transaction_id, &masked);
    store.begin_call(&key, Utc::now()).await.unwrap();
    let answer = RowUpdate::Succeeded {
        biz_no: biz_no.into(),
        relation_rank: rank.into(),
        recency: Some("V_CT_RL180D".into()),
        relation_score: Some(87),
        response_body: "{\"signed\":true}".into(),
        question_hmac: Some(question.into()),
    };
    let status = store.record(&key, Some(&call()), &answer).await.unwrap();
    assert_eq!(status, JobStatus::Succeeded);
}

async fn reuse(store: &JobStore, transaction_id: &str, question: &str) -> Option<String> {
    let masked = masked("r");
    let since = Utc::now() - TimeDelta::days(1);
    store
        .reuse_answer(&key(transaction_id, &masked), question, since)
        .await
        .unwrap()
}

/// `(status, attempts, biz_no, relation_rank, recency, relation_score,
/// reused_from, response_body, has_first_call, cert_no_hmac)` of a row.
type Row = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
);

async fn row(store: &JobStore, transaction_id: &str) -> Row {
    let sql = "SELECT status, CAST(attempts AS BIGINT), biz_no, relation_rank, recency, \
         relation_score, reused_from, response_body, \
         CAST(CASE WHEN first_call_at IS NULL THEN 0 ELSE 1 END AS BIGINT), cert_no_hmac \
         FROM relation_checks WHERE transaction_id = $1";
    match &store.backend {
        Backend::Postgres(pool) => sqlx::query_as(sql)
            .bind(transaction_id)
            .fetch_one(pool)
            .await
            .unwrap(),
        Backend::Sqlite(pool) => sqlx::query_as(sql)
            .bind(transaction_id)
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

async fn scalar(store: &JobStore, sql: &'static str) -> i64 {
    match &store.backend {
        Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

async fn event_bodies(store: &JobStore) -> Vec<serde_json::Value> {
    let sql = "SELECT body FROM result_events ORDER BY id";
    let bodies: Vec<String> = match &store.backend {
        Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    };
    bodies
        .iter()
        .map(|body| serde_json::from_str(body).unwrap())
        .collect()
}

async fn a_reused_job_copies_the_paid_answer_without_biz_no_ledger_or_call(db: &TestDb) {
    let store = &db.store;
    let store = store.clone().with_result_events(true);
    paid(&store, "paid_1", "q1", "ZM0001", "V_CT_RL_SG").await;
    assert_eq!(
        reuse(&store, "again_1", "q1").await.as_deref(),
        Some("paid_1")
    );
    let (status, attempts, biz_no, rank, recency, score, reused_from, body, first_call, cert) =
        row(&store, "again_1").await;
    assert_eq!(status, "succeeded");
    assert_eq!(attempts, 0);
    assert_eq!(biz_no, None, "the upstream billed nothing for it");
    assert_eq!(rank.as_deref(), Some("V_CT_RL_SG"));
    assert_eq!(recency.as_deref(), Some("V_CT_RL180D"));
    assert_eq!(score, Some(87));
    assert_eq!(reused_from.as_deref(), Some("paid_1"));
    assert_eq!(body, None, "the evidence stays on the payer's row");
    assert_eq!(first_call, 0);
    assert_eq!(cert.as_deref(), Some("cert_hmac_r"), "erase finds it");
    let ledger = scalar(
        &store,
        "SELECT CAST(count(*) AS BIGINT) FROM upstream_calls",
    )
    .await;
    assert_eq!(ledger, 1, "only the payer's call");
    let events = event_bodies(&store).await;
    assert_eq!(events.len(), 2);
    let (payer, reused) = (&events[0], &events[1]);
    assert_eq!(reused["transaction_id"], "again_1");
    assert_eq!(reused["reused_from"], "paid_1");
    assert_eq!(reused["status"], "succeeded");
    assert_eq!(reused["biz_no"], serde_json::Value::Null);
    assert_eq!(payer["reused_from"], serde_json::Value::Null);
    for field in ["relation_rank", "recency", "relation_score", "status"] {
        assert_eq!(reused[field], payer[field], "{field}");
    }
    assert_eq!(store.reused_count().await.unwrap(), 1);
}
on_both_backends!(a_reused_job_copies_the_paid_answer_without_biz_no_ledger_or_call);

async fn only_a_recent_paid_success_to_the_same_question_is_reused(db: &TestDb) {
    let store = &db.store;
    paid(store, "paid_1", "q1", "ZM0001", "V_CT_RL_SG").await;
    assert_eq!(
        reuse(store, "other_q", "q2").await,
        None,
        "another question"
    );
    let masked = masked("r");
    let future = Utc::now() + TimeDelta::seconds(5);
    let too_old = store
        .reuse_answer(&key("too_old", &masked), "q1", future)
        .await
        .unwrap();
    assert_eq!(too_old, None, "answered before the cutoff");
    // A failed answer is never indexed, hence never reused.
    let failed_key = key("failed_1", &masked);
    store.begin_call(&failed_key, Utc::now()).await.unwrap();
    let failure = RowUpdate::Failed {
        error_code: "SYSTEM_ERROR".into(),
        error_message: "gave up".into(),
        response_body: None,
    };
    store.record(&failed_key, None, &failure).await.unwrap();
    assert_eq!(reuse(store, "after_fail", "q3").await, None);
    let rows = scalar(
        store,
        "SELECT CAST(count(*) AS BIGINT) FROM relation_checks",
    )
    .await;
    assert_eq!(rows, 2, "a job not reused gets no row from the attempt");
}
on_both_backends!(only_a_recent_paid_success_to_the_same_question_is_reused);

async fn an_existing_row_is_never_answered_from_elsewhere(db: &TestDb) {
    let store = &db.store;
    paid(store, "paid_1", "q1", "ZM0001", "V_CT_RL_SG").await;
    let masked = masked("r");
    let begun = key("begun_1", &masked);
    store.begin_call(&begun, Utc::now()).await.unwrap();
    assert_eq!(reuse(store, "begun_1", "q1").await, None);
    let (status, _, _, rank, ..) = row(store, "begun_1").await;
    assert_eq!((status.as_str(), rank), ("pending", None), "left as it was");
    // A redelivered reused job: its row exists, nothing new is written.
    assert!(reuse(store, "again_1", "q1").await.is_some());
    assert_eq!(reuse(store, "again_1", "q1").await, None);
    assert_eq!(store.reused_count().await.unwrap(), 1);
    // The payer itself.
    assert_eq!(reuse(store, "paid_1", "q1").await, None);
}
on_both_backends!(an_existing_row_is_never_answered_from_elsewhere);

async fn reused_from_always_names_the_payer_and_the_newest_paid_answer_wins(db: &TestDb) {
    let store = &db.store;
    paid(store, "paid_old", "q1", "ZM0001", "V_CT_RL_OLD").await;
    assert_eq!(
        reuse(store, "copy_1", "q1").await.as_deref(),
        Some("paid_old")
    );
    // A reused row is never a source: the next copy still names the payer.
    assert_eq!(
        reuse(store, "copy_2", "q1").await.as_deref(),
        Some("paid_old")
    );
    // A fresh job paid again later: its newer answer is the one reused.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    paid(store, "paid_new", "q1", "ZM0002", "V_CT_RL_NEW").await;
    assert_eq!(
        reuse(store, "copy_3", "q1").await.as_deref(),
        Some("paid_new")
    );
    let (.., rank, _, _, reused_from, _, _, _) = row(store, "copy_3").await;
    assert_eq!(rank.as_deref(), Some("V_CT_RL_NEW"));
    assert_eq!(reused_from.as_deref(), Some("paid_new"));
}
on_both_backends!(reused_from_always_names_the_payer_and_the_newest_paid_answer_wins);

async fn reconciliation_counts_only_paid_rows_and_show_names_the_payer(db: &TestDb) {
    let store = &db.store;
    paid(store, "paid_1", "q1", "ZM0001", "V_CT_RL_SG").await;
    assert!(reuse(store, "copy_1", "q1").await.is_some());
    let start = Utc::now() - TimeDelta::hours(1);
    let end = Utc::now() + TimeDelta::hours(1);
    assert_eq!(store.count_billable(start, end).await.unwrap(), 1);
    use futures_util::TryStreamExt;
    let billable: Vec<_> = store.billable_rows(start, end).try_collect().await.unwrap();
    assert_eq!(billable.len(), 1);
    assert_eq!(billable[0].transaction_id, "paid_1");
    let checks = store
        .checks_by_transaction_id(&["copy_1".to_owned()])
        .await
        .unwrap();
    assert_eq!(checks[0].reused_from.as_deref(), Some("paid_1"));
    let exported: Vec<_> = store.export_rows(start, end).try_collect().await.unwrap();
    let copy = exported
        .iter()
        .find(|row| row.transaction_id == "copy_1")
        .unwrap();
    assert_eq!(copy.biz_no, None);
    assert_eq!(copy.result.reused_from.as_deref(), Some("paid_1"));
    let shown = store.job_record("copy_1").await.unwrap().unwrap();
    assert_eq!(shown.reused_from.as_deref(), Some("paid_1"));
    assert_eq!(shown.attempts, 0);
}
on_both_backends!(reconciliation_counts_only_paid_rows_and_show_names_the_payer);
