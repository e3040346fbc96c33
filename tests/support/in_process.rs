//! The in-process harness: the worker's own `Processor`, built from its parts
//! as `app` builds it, against a fresh SQLite file and a sandbox gateway on
//! port 0, with no broker and no child process. A fault scenario is then a
//! short test: plan the sandbox's answers, deliver a message body, and read
//! back the dispositions, the row, the ledger and the sandbox's stats.
//!
//! What the consumer would do with a `Retry` (publish a delayed copy carrying
//! the next attempt's counters) the harness does at once by calling again
//! with those counters; the delay is the broker's business, not the
//! processor's. It never speaks AMQP: the broker-side handling of each
//! disposition is covered end to end in `tests/it/worker.rs`.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::Connection;
use zhima_worker::config::{self, Settings};
use zhima_worker::control::Control;
use zhima_worker::pii::PiiKey;
use zhima_worker::processor::{Attempt, Disposition, Processor, ProcessorParts};
use zhima_worker::rate_limit::{Rate, UpstreamLimiter};
use zhima_worker::retry::RetryPolicy;
use zhima_worker::sandbox::{Faults, RunningSandbox};
use zhima_worker::store::JobStore;
use zhima_worker::upstream::UpstreamClient;

use super::worker::start_sandbox;

/// The same schedule as the end-to-end harness: short, so nothing waits long
/// if a test does sleep out a delay.
const INITIAL_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(400);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// More deliveries than any retry schedule here allows: a bound, so that a
/// processor that retried forever fails the test instead of hanging it.
const MAX_DELIVERIES: usize = 64;

/// The first delivery of a job.
pub const FIRST_ATTEMPT: Attempt = Attempt {
    number: 1,
    throttled: 0,
};

pub struct InProcess {
    pub sandbox: RunningSandbox,
    processor: Processor,
    database_url: String,
    _dir: tempfile::TempDir,
}

/// A harness whose sandbox injects `faults`, with the default retry budget.
pub async fn start(faults: Faults) -> InProcess {
    start_with(faults, DEFAULT_MAX_ATTEMPTS).await
}

/// A harness whose sandbox injects `faults` and whose retry policy gives up
/// after `max_attempts` calls.
pub async fn start_with(faults: Faults, max_attempts: u32) -> InProcess {
    let sandbox = start_sandbox(faults, zhima_worker::sandbox::SandboxClock::System).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite:{}/jobs.sqlite?mode=rwc", dir.path().display());
    let settings = settings_for(&sandbox);
    let processor = Processor::new(parts(&settings, &database_url, max_attempts).await);
    InProcess {
        sandbox,
        processor,
        database_url,
        _dir: dir,
    }
}

/// The defaults, pointed at this sandbox and allowed the published test key.
fn settings_for(sandbox: &RunningSandbox) -> Settings {
    let mut settings = config::load(None).expect("default settings");
    settings.upstream.gateway_url = sandbox.gateway_url().parse().expect("gateway url");
    settings.upstream.private_key_path = key_path("test_merchant_private.pem");
    settings.upstream.alipay_public_key_path = key_path("test_sandbox_public.pem");
    // The test keys are published in the repository (mode 0644 on a fresh
    // clone): not secret, so the shared-file rule does not apply to them.
    settings.upstream.allow_shared_key_file = true;
    settings
}

fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/keys")
        .join(name)
}

/// Each part built the way `app::run` builds it, except the PII key (fresh
/// random bytes, no key file) and the rate, which is high enough that no
/// test waits for a permit.
async fn parts(settings: &Settings, database_url: &str, max_attempts: u32) -> ProcessorParts {
    JobStore::migrate(database_url).await.expect("migrate");
    let store = JobStore::connect(database_url, 1)
        .await
        .expect("store opens");
    let client = UpstreamClient::new(&settings.upstream).expect("upstream client");
    let per_second = NonZeroU32::new(1000).expect("non-zero");
    let key: [u8; 32] = rand::rng().random();
    ProcessorParts {
        store,
        client: Arc::new(client),
        limiter: Arc::new(UpstreamLimiter::new(Rate {
            per_second,
            burst: per_second,
        })),
        policy: RetryPolicy::new(INITIAL_DELAY, MAX_DELAY, max_attempts).expect("retry policy"),
        control: Arc::new(Control::new(settings.worker.max_unverified_in_row.get())),
        default_product_code: settings.upstream.product_code.clone(),
        pii_key: PiiKey::from_bytes(&key),
        safe_call_window: settings.upstream.safe_call_window(),
    }
}

impl InProcess {
    /// One delivery of `job`, as the consumer would hand it over.
    pub async fn deliver(&self, job: &serde_json::Value, attempt: Attempt) -> Disposition {
        let body = serde_json::to_vec(job).expect("json");
        self.deliver_raw(&body, attempt).await
    }

    pub async fn deliver_raw(&self, body: &[u8], attempt: Attempt) -> Disposition {
        self.processor.process(body, attempt).await
    }

    /// Delivers `job` as a first attempt and replays every `Retry` with its
    /// counters until the processor lets the message go another way; returns
    /// every disposition in order, the last one not a `Retry`.
    pub async fn deliver_until_settled(&self, job: &serde_json::Value) -> Vec<Disposition> {
        let mut attempt = FIRST_ATTEMPT;
        let mut dispositions = Vec::new();
        while dispositions.len() < MAX_DELIVERIES {
            let disposition = self.deliver(job, attempt).await;
            dispositions.push(disposition.clone());
            let Disposition::Retry {
                next_attempt,
                throttled,
                ..
            } = disposition
            else {
                return dispositions;
            };
            attempt = Attempt {
                number: next_attempt,
                throttled,
            };
        }
        panic!("still retrying after {MAX_DELIVERIES} deliveries: {dispositions:?}");
    }

    /// The job's row: status and error code (`None` when it has none).
    pub async fn row(&self, transaction_id: &str) -> Option<(String, Option<String>)> {
        let mut conn = self.connection().await;
        sqlx::query_as("SELECT status, error_code FROM relation_checks WHERE transaction_id = ?")
            .bind(transaction_id)
            .fetch_optional(&mut conn)
            .await
            .expect("query")
    }

    /// The job's entries in the ledger of upstream calls.
    pub async fn ledger_calls(&self, transaction_id: &str) -> i64 {
        let mut conn = self.connection().await;
        sqlx::query_scalar("SELECT COUNT(*) FROM upstream_calls WHERE transaction_id = ?")
            .bind(transaction_id)
            .fetch_one(&mut conn)
            .await
            .expect("query")
    }

    pub async fn rows(&self) -> i64 {
        let mut conn = self.connection().await;
        sqlx::query_scalar("SELECT COUNT(*) FROM relation_checks")
            .fetch_one(&mut conn)
            .await
            .expect("query")
    }

    async fn connection(&self) -> sqlx::SqliteConnection {
        sqlx::SqliteConnection::connect(&self.database_url)
            .await
            .expect("sqlite")
    }
}
