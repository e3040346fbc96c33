//! `zhima-worker run`: builds the worker's components and owns the lifetimes
//! of its tasks: the jobs in flight (bounded, drained on SIGINT/SIGTERM within
//! `worker.shutdown_grace_s`), the lease keeper, the readiness flag, and the
//! configuration probe that ends a pause.
//!
//! The per-job logic is in `processor`; everything on the broker (sessions,
//! reconnects, hand-back, `--until-idle`) in `queue::session`. This module
//! speaks no AMQP and decides no outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::control::Control;
use crate::health::{self, Readiness};
use crate::processor::{Processor, ProcessorParts};
use crate::queue::Topology;
use crate::queue::session::{self, ConsumeOptions, Inbound, JobRunner};
use crate::rate_limit::{Rate, UpstreamLimiter};
use crate::store::JobStore;
use crate::upstream::UpstreamClient;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunOptions {
    /// Exit once every queue is empty and nothing is in flight.
    pub(crate) until_idle: bool,
}

/// The longest wait between two attempts to reach the database at start-up.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    let pii_key =
        crate::pii::PiiKey::load(&settings.pii.hmac_key_path).context("loading the PII key")?;
    let control = Arc::new(Control::new(settings.worker.max_unverified_in_row.get()));
    spawn_signal_listener(Arc::clone(&control))?;
    let store = open_store(&settings, &control).await?;
    let readiness = Arc::new(Readiness {
        broker_connected: AtomicBool::new(false),
        store: store.clone(),
        control: Arc::clone(&control),
    });
    if !settings.http.listen.is_empty() {
        let metrics = health::install_metrics()?;
        health::serve(&settings.http.listen, metrics, Arc::clone(&readiness)).await?;
    }
    let client =
        UpstreamClient::new(&settings.upstream).context("setting up the upstream client")?;
    let policy = settings.retry_policy().context("retry settings")?;
    let topology = Arc::new(Topology::for_policy(&settings.amqp, &policy));
    let client = Arc::new(client);
    let limiter = Arc::new(UpstreamLimiter::new(Rate {
        per_second: settings.rate_limit.qps,
        burst: settings.rate_limit.burst,
    }));
    let processor = Arc::new(Processor::new(ProcessorParts {
        store: store.clone(),
        client: Arc::clone(&client),
        limiter: Arc::clone(&limiter),
        policy,
        control: Arc::clone(&control),
        default_product_code: settings.upstream.product_code.clone(),
        pii_key,
        safe_call_window: settings.upstream.safe_call_window(),
    }));
    // Before consuming: the other replicas must have made room for this one.
    let lease = crate::cluster::LeaseKeeper::start(
        store,
        Arc::clone(&limiter),
        &settings.rate_limit,
        &control,
    )
    .await;
    let mut worker = Worker {
        processor,
        tasks: JoinSet::new(),
        shutdown_grace: settings.worker.shutdown_grace(),
        client,
        limiter,
        product_code: settings.upstream.product_code.clone(),
        probe_interval: settings.worker.probe_interval(),
        control: Arc::clone(&control),
        readiness,
    };
    let options = ConsumeOptions {
        concurrency: settings.worker.concurrency,
        until_idle: options.until_idle,
    };
    let outcome =
        session::consume_until_stopped(&settings.amqp, topology, options, &control, &mut worker)
            .await;
    lease.release().await;
    outcome.context("connecting to the broker at start-up")
}

/// Migrates and connects, waiting out a database that is not up yet; a
/// database that refuses us for another reason (bad URL, password) is fatal.
async fn open_store(settings: &Settings, control: &Control) -> anyhow::Result<JobStore> {
    let url = settings.database.url.expose_secret();
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            JobStore::migrate(url).await?;
            JobStore::connect(url, settings.database.max_connections.get()).await
        };
        match attempt.await {
            Ok(store) => return Ok(store),
            Err(error) if error.is_unavailable() && !control.is_stopping() => {
                tracing::warn!(error.message = %error, "database not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            }
            Err(error) => return Err(error).context("opening the database"),
        }
    }
}

/// Installs the SIGINT/SIGTERM handlers now (a signal that arrives before a
/// handler exists would kill the process uncleanly) and stops the worker on
/// the first one.
fn spawn_signal_listener(control: Arc<Control>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested: no new deliveries, finishing in-flight jobs");
        control.stop();
    });
    Ok(())
}

/// The jobs in flight and the probe that ends a pause: the [`JobRunner`] the
/// broker sessions hand their deliveries to.
struct Worker {
    processor: Arc<Processor>,
    tasks: JoinSet<()>,
    shutdown_grace: Duration,
    client: Arc<UpstreamClient>,
    limiter: Arc<UpstreamLimiter>,
    product_code: String,
    probe_interval: Duration,
    control: Arc<Control>,
    readiness: Arc<Readiness>,
}

impl JobRunner for Worker {
    fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    fn start(&mut self, job: Inbound) {
        let processor = Arc::clone(&self.processor);
        self.tasks.spawn(async move {
            job.handle(&processor).await;
        });
    }

    async fn join_one(&mut self) {
        if let Some(Err(error)) = self.tasks.join_next().await {
            tracing::error!(error.message = %error, "job task failed");
        }
    }

    /// Lets in-flight jobs finish within `worker.shutdown_grace_s`; the rest
    /// are aborted, and their deliveries go back to the queue when the channel
    /// closes.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let grace = tokio::time::sleep(self.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    None => return,
                    Some(Err(error)) if error.is_panic() => {
                        tracing::error!(error.message = %error, "job task panicked");
                    }
                    Some(_) => {}
                },
                () = &mut grace => {
                    tracing::warn!(in_flight = self.tasks.len(),
                        "shutdown grace over: handing back the remaining jobs");
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }

    /// A configuration fault paused consumption: the session has cancelled
    /// its consumer, handed back what it had buffered and drained the jobs in
    /// flight, then calls this before consuming again. Probes the gateway every `worker.probe_interval_s` with a
    /// request that cannot be billed, and resumes once one passes; returns
    /// early when shutdown begins.
    async fn wait_for_resume(&mut self) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.probe_interval) => {},
                () = self.control.stopped() => return,
            }
            // The probe reaches the upstream too: it takes a permit.
            let permit = tokio::select! {
                permit = self.limiter.acquire() => permit,
                () = self.control.stopped() => return,
            };
            let probed = self.client.probe(&self.product_code).await;
            drop(permit);
            match probed {
                Ok(()) => {
                    tracing::info!("configuration probe passed: resuming consumption");
                    self.control.resume();
                    metrics::gauge!(crate::telemetry::metric::CONSUMPTION_PAUSED).set(0.0);
                    return;
                }
                Err(reason) => {
                    tracing::error!(error.message = %reason,
                        "configuration probe still failing; consumption stays paused");
                }
            }
        }
    }

    fn set_broker_connected(&self, connected: bool) {
        self.readiness
            .broker_connected
            .store(connected, Ordering::Relaxed);
    }
}
