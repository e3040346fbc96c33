//! The processor against SQLite and a gateway that is not there: the paths
//! that need no broker and no answer (expiry, a failed call's retry).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::path::PathBuf;

use super::*;
use crate::rate_limit::Rate;
use crate::store::JobStatus;

const BODY: &str = r#"{"transaction_id": "expiry_1", "cert_no": "640202199007164686",
    "name": "张三", "relation_phone": "15843991158", "relation_name": "李四",
    "relation": "family", "linked_merchant_id": "2088721630869411",
    "product_code": "w1010100001000001200"}"#;

const WINDOW: Duration = Duration::from_secs(600);

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/keys")
        .join(name)
}

fn pii_key() -> PiiKey {
    PiiKey::from_bytes(&[7; 32])
}

/// A processor whose gateway refuses connections (nothing listens on the
/// discard port), so any call fails at once as retryable.
async fn processor(dir: &tempfile::TempDir) -> (Processor, JobStore) {
    let url = format!("sqlite:{}", dir.path().join("jobs.db").display());
    JobStore::migrate(&url).await.unwrap();
    let store = JobStore::connect(&url, 2).await.unwrap();
    let mut upstream = crate::config::defaults().upstream;
    upstream.gateway_url = "http://127.0.0.1:9/gateway.do".parse().unwrap();
    upstream.private_key_path = key_path("test_merchant_private.pem");
    upstream.alipay_public_key_path = key_path("test_sandbox_public.pem");
    upstream.allow_shared_key_file = true;
    let rate = Rate {
        per_second: NonZeroU32::new(100).unwrap(),
        burst: NonZeroU32::new(10).unwrap(),
    };
    let processor = Processor::new(ProcessorParts {
        store: store.clone(),
        client: Arc::new(UpstreamClient::new(&upstream).unwrap()),
        limiter: Arc::new(UpstreamLimiter::new(rate)),
        policy: RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1), 3).unwrap(),
        control: Arc::new(Control::new(3)),
        default_product_code: "w1010100001000001200".into(),
        pii_key: pii_key(),
        safe_call_window: WINDOW,
    });
    (processor, store)
}

/// Records a first call for the job at `at`, as another replica would have.
async fn begin_call_at(store: &JobStore, at: DateTime<Utc>) {
    let job = job::decode_job(BODY.as_bytes(), "unused").unwrap();
    let masked = mask(&job, &pii_key());
    let fingerprint = pii_key().fingerprint(&job.query);
    let key = JobKey {
        transaction_id: job.query.transaction_id.as_str(),
        external_ref: None,
        batch_id: None,
        masked: &masked,
        fingerprint: &fingerprint,
    };
    store.begin_call(&key, at).await.unwrap();
}

const FIRST: Attempt = Attempt {
    number: 1,
    throttled: 0,
};

#[tokio::test]
async fn a_job_whose_stored_first_call_is_too_old_is_expired_without_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (processor, store) = processor(&dir).await;
    begin_call_at(&store, Utc::now() - chrono::Duration::hours(1)).await;

    let disposition = processor.process(BODY.as_bytes(), FIRST).await;

    let Disposition::DeadLetter { reason } = disposition else {
        panic!("expected a dead letter, got {disposition:?}");
    };
    assert!(reason.contains("older than 600 s"), "{reason}");
    let row = store.find("expiry_1").await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert!(store.calls_for("expiry_1").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_job_inside_the_window_is_called_and_a_failed_call_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (processor, store) = processor(&dir).await;
    begin_call_at(&store, Utc::now() - chrono::Duration::minutes(1)).await;

    let disposition = processor.process(BODY.as_bytes(), FIRST).await;

    assert_eq!(
        disposition,
        Disposition::Retry {
            delay: Duration::from_secs(1),
            next_attempt: 2,
            throttled: 0
        }
    );
    let calls = store.calls_for("expiry_1").await.unwrap();
    let outcomes: Vec<_> = calls.iter().map(|call| call.outcome.as_str()).collect();
    assert_eq!(outcomes, [CallOutcome::Retryable.as_str()]);
    let row = store.find("expiry_1").await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Retrying);
}
