//! `zhima-worker run`: builds the worker's components, consumes the main queue
//! with a bounded number of jobs in flight, reconnects when the broker goes
//! away, pauses on configuration faults (probing until fixed), and drains on
//! SIGINT/SIGTERM.
//!
//! The per-job logic is in `processor`; the per-delivery broker work in
//! `queue::consumer`. This module owns task lifecycles only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use secrecy::ExposeSecret;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::control::Control;
use crate::health::{self, Readiness};
use crate::processor::{Processor, ProcessorParts};
use crate::queue::{self, Publisher, QueueError, Topology, consumer, short};
use crate::rate_limit::{Rate, UpstreamLimiter};
use crate::store::JobStore;
use crate::upstream::UpstreamClient;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once every queue is empty and nothing is in flight.
    pub until_idle: bool,
}

/// How long `--until-idle` waits between its two emptiness checks.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

pub async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
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
        settings,
        topology,
        processor,
        client,
        limiter,
        control,
        readiness,
        tasks: JoinSet::new(),
        has_connected: false,
    };
    let outcome = worker.run(options).await;
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

struct Worker {
    settings: Settings,
    topology: Arc<Topology>,
    processor: Arc<Processor>,
    client: Arc<UpstreamClient>,
    limiter: Arc<UpstreamLimiter>,
    control: Arc<Control>,
    readiness: Arc<Readiness>,
    tasks: JoinSet<()>,
    /// Set once a session has consumed: from then on every broker error,
    /// refusals included, is waited out by reconnecting.
    has_connected: bool,
}

enum ConsumeEnd {
    Stopped,
    Paused,
    Idle,
}

impl Worker {
    /// Sessions until stopped. A broker that refuses our credentials or vhost
    /// before the first session is an error (a configuration fault that
    /// retrying cannot fix); any other failure is retried with backoff.
    async fn run(&mut self, options: RunOptions) -> Result<(), QueueError> {
        let mut backoff = Duration::from_millis(500);
        while !self.control.is_stopping() {
            let outcome = self.session(options).await;
            self.readiness
                .broker_connected
                .store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => break,
                Err(error) if error.is_refused() && !self.has_connected => {
                    self.drain().await;
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(error.message = %error, error.cause_chain = ?error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "broker connection lost or refused; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = self.control.stopped() => {},
                    }
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                }
            }
        }
        self.drain().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// One broker connection: declare, consume until stopped, idle, or the
    /// connection fails. In-flight jobs are drained before it closes.
    async fn session(&mut self, options: RunOptions) -> Result<(), QueueError> {
        let connection = queue::connect(&self.settings.amqp, "run").await?;
        let channel = open_channel(&connection).await?;
        self.topology.declare(&channel).await?;
        let publisher = Publisher::open(&connection).await?;
        let prefetch = u16::try_from(self.settings.worker.concurrency.get()).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(QueueError::broker("basic.qos"))?;
        let mut idle = match options.until_idle {
            true => Some(IdleDetector::new(
                open_channel(&connection).await?,
                &self.topology,
            )),
            false => None,
        };
        self.readiness
            .broker_connected
            .store(true, Ordering::Relaxed);
        self.has_connected = true;
        tracing::info!(queue = %self.topology.names.queue, prefetch, "consuming");
        loop {
            if self.control.is_paused() {
                self.wait_for_resume().await;
            }
            if self.control.is_stopping() {
                break;
            }
            match self.consume(&channel, &publisher, idle.as_mut()).await? {
                ConsumeEnd::Paused => continue,
                ConsumeEnd::Stopped => break,
                ConsumeEnd::Idle => {
                    tracing::info!("queues empty and nothing in flight: exiting (--until-idle)");
                    self.control.stop();
                    break;
                }
            }
        }
        self.drain().await;
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }

    async fn consume(
        &mut self,
        channel: &Channel,
        publisher: &Publisher,
        mut idle: Option<&mut IdleDetector>,
    ) -> Result<ConsumeEnd, QueueError> {
        let mut consumer = channel
            .basic_consume(
                short(&self.topology.names.queue)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::broker("basic.consume"))?;
        let concurrency = self.settings.worker.concurrency.get() as usize;
        let mut idle_tick = tokio::time::interval(IDLE_CHECK_INTERVAL);
        loop {
            metrics::gauge!("zhima_jobs_in_flight").set(self.tasks.len() as f64);
            tokio::select! {
                biased;
                () = self.control.stopped() => {
                    stop_consuming(channel, &mut consumer).await;
                    return Ok(ConsumeEnd::Stopped);
                }
                () = self.control.paused() => {
                    stop_consuming(channel, &mut consumer).await;
                    self.drain().await;
                    return Ok(ConsumeEnd::Paused);
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(error.message = %error, "job task failed");
                    }
                }
                _ = idle_tick.tick(), if idle.is_some() => {
                    if let Some(detector) = idle.as_deref_mut()
                        && detector.is_idle(self.tasks.len()).await?
                    {
                        stop_consuming(channel, &mut consumer).await;
                        return Ok(ConsumeEnd::Idle);
                    }
                }
                next = consumer.next(), if self.tasks.len() < concurrency => match next {
                    Some(Ok(delivery)) => {
                        if let Some(detector) = idle.as_deref_mut() {
                            detector.reset();
                        }
                        self.spawn(delivery, publisher.clone());
                    }
                    Some(Err(error)) => return Err(QueueError::broker("consume")(error)),
                    None => return Err(QueueError::ConsumerCancelled),
                },
            }
        }
    }

    fn spawn(&mut self, delivery: lapin::message::Delivery, publisher: Publisher) {
        let processor = Arc::clone(&self.processor);
        let topology = Arc::clone(&self.topology);
        self.tasks.spawn(async move {
            consumer::handle(delivery, &processor, &publisher, &topology).await;
        });
    }

    /// Probes the gateway every `worker.probe_interval_s` with a request that
    /// cannot be billed, until it passes or shutdown begins.
    async fn wait_for_resume(&self) {
        let interval = self.settings.worker.probe_interval();
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {},
                () = self.control.stopped() => return,
            }
            // The probe reaches the upstream too: it takes a permit.
            let permit = tokio::select! {
                permit = self.limiter.acquire() => permit,
                () = self.control.stopped() => return,
            };
            let probed = self
                .client
                .probe(&self.settings.upstream.product_code)
                .await;
            drop(permit);
            match probed {
                Ok(()) => {
                    tracing::info!("configuration probe passed: resuming consumption");
                    self.control.resume();
                    metrics::gauge!("zhima_consumption_paused").set(0.0);
                    return;
                }
                Err(reason) => {
                    tracing::error!(error.message = %reason,
                        "configuration probe still failing; consumption stays paused");
                }
            }
        }
    }

    /// Lets in-flight jobs finish within `worker.shutdown_grace_s`; the rest
    /// are aborted, and their deliveries go back to the queue when the channel
    /// closes.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let grace = tokio::time::sleep(self.settings.worker.shutdown_grace());
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
}

async fn open_channel(connection: &Connection) -> Result<Channel, QueueError> {
    connection
        .create_channel()
        .await
        .map_err(QueueError::broker("channel.open"))
}

/// Cancels the consumer and hands back whatever it had already buffered.
async fn stop_consuming(channel: &Channel, consumer: &mut Consumer) {
    let tag = consumer.tag();
    if let Err(error) = channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
    {
        tracing::debug!(error.message = %error, "basic.cancel failed");
        return;
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        consumer::hand_back(&delivery).await;
    }
}

/// `--until-idle`: two checks at least 0.5 s apart that both find every queue
/// we feed from empty and nothing in flight here.
struct IdleDetector {
    channel: Channel,
    queues: Vec<String>,
    quiet_checks: u32,
}

impl IdleDetector {
    fn new(channel: Channel, topology: &Topology) -> Self {
        let mut queues = vec![topology.names.queue.clone()];
        queues.extend(topology.delay_queues());
        Self {
            channel,
            queues,
            quiet_checks: 0,
        }
    }

    fn reset(&mut self) {
        self.quiet_checks = 0;
    }

    async fn is_idle(&mut self, in_flight: usize) -> Result<bool, QueueError> {
        if in_flight > 0 {
            self.reset();
            return Ok(false);
        }
        for queue in &self.queues {
            if queue::topology::ready_messages(&self.channel, queue).await? > 0 {
                self.reset();
                return Ok(false);
            }
        }
        self.quiet_checks += 1;
        Ok(self.quiet_checks >= 2)
    }
}
