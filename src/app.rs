//! `zhima-worker run`: builds the worker's components and owns the lifetimes
//! of its tasks: the jobs in flight (bounded, drained on SIGINT/SIGTERM within
//! `worker.shutdown_grace_s`), the lease keeper, the readiness flag, and the
//! configuration probe that ends a pause (or, past `--max-wait`, gives up),
//! and the summary of the jobs it finished, logged at exit.
//!
//! The per-job logic is in `processor`; everything on the broker (sessions,
//! reconnects, hand-back, `--until-idle`) in `queue::session`. This module
//! speaks no AMQP and decides no outcome.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Settings;
use crate::control::Control;
use crate::health::{self, Readiness};
use crate::processor::{JobOutcome, Processor, ProcessorParts};
use crate::queue::Topology;
use crate::queue::session::{self, ConsumeOptions, Inbound, JobRunner};
use crate::rate_limit::{Rate, UpstreamLimiter};
use crate::results::relay::Relay;
use crate::spend::SpendGate;
use crate::store::JobStore;
use crate::telemetry::metric;
use crate::upstream::UpstreamClient;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunOptions {
    /// Exit once every queue is empty and nothing is in flight.
    pub(crate) until_idle: bool,
    /// Give up once consumption has stayed paused (on a configuration fault)
    /// this long without a break: the jobs are handed back and `run` exits 4.
    pub(crate) max_wait: Option<Duration>,
}

/// How `run` ended, which decides its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// A signal, or `--until-idle` found nothing left to do.
    Stopped,
    /// Paused for longer than `--max-wait`.
    PausedTooLong,
}

/// The smallest `--max-wait`: a zero wait would give up at the first pause.
const MIN_MAX_WAIT: Duration = Duration::from_secs(1);

/// Parses `--max-wait`: a positive whole number with a unit, `90s`, `15m`
/// or `2h`. clap names the flag in the error.
pub(crate) fn parse_max_wait(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{text}' has no unit: write e.g. 90s, 15m or 2h"))?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: write e.g. 90s, 15m or 2h"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "unknown unit '{unit}': use s, m or h (e.g. 90s, 15m, 2h)"
            ));
        }
    };
    let wait = Duration::from_secs(number.saturating_mul(seconds_per_unit));
    if wait < MIN_MAX_WAIT {
        return Err("must be at least 1s (e.g. 90s, 15m, 2h)".into());
    }
    Ok(wait)
}

/// The longest wait between two attempts to reach the database at start-up.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) async fn run(settings: Settings, options: RunOptions) -> anyhow::Result<RunEnd> {
    let worker_id = crate::cluster::new_worker_id();
    // Every line of this replica, its job tasks' included, carries worker_id.
    let span = tracing::info_span!("worker", worker_id = %worker_id);
    // A task of its own, on the runtime's worker threads rather than on the
    // thread `#[tokio::main]` blocks on: the consumer loop is woken for
    // every delivery, and waking a task on a busy worker thread costs no
    // system call, where the parked main thread had to be unparked (about
    // 1.4 context switches per job in the production bench).
    tokio::spawn(run_replica(settings, options, worker_id).instrument(span))
        .await
        .context("the worker's task failed")?
}

async fn run_replica(
    settings: Settings,
    options: RunOptions,
    worker_id: String,
) -> anyhow::Result<RunEnd> {
    let started = Instant::now();
    let pii_key =
        crate::pii::PiiKey::load(&settings.pii.hmac_key_path).context("loading the PII key")?;
    let control = Arc::new(Control::new(settings.worker.max_unverified_in_row.get()));
    spawn_signal_listener(Arc::clone(&control))?;
    let store = open_store(&settings, &control)
        .await?
        .with_result_events(settings.results.enabled())
        .with_grouped_commits();
    let relay = Relay::spawn(&store, &settings.amqp, &settings.results);
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
    client.attach_certificate_store(store.clone());
    let policy = settings.retry_policy().context("retry settings")?;
    let topology = Arc::new(
        Topology::for_policy(&settings.amqp, &policy)
            .with_results_exchange(&settings.results.exchange),
    );
    register_delay_queues(&store, &topology).await;
    let client = Arc::new(client);
    crate::upstream::reload::spawn_key_maintenance(Arc::clone(&client), settings.upstream.clone())
        .context("installing the SIGHUP handler (key and certificate reload)")?;
    let limiter = Arc::new(UpstreamLimiter::new(Rate {
        per_second: settings.rate_limit.qps,
        burst: settings.rate_limit.burst,
    }));
    let processor = Processor::new(ProcessorParts {
        store: store.clone(),
        client: Arc::clone(&client),
        limiter: Arc::clone(&limiter),
        policy,
        control: Arc::clone(&control),
        default_product_code: settings.upstream.product_code.clone(),
        pii_key,
        safe_call_window: settings.upstream.safe_call_window(),
    });
    let spend = Arc::new(SpendGate::new(
        store.clone(),
        Arc::clone(&control),
        &settings,
    ));
    crate::spend::spawn_limit_reload(Arc::clone(&spend))
        .context("installing the SIGHUP handler (spend.daily_limit reload)")?;
    let processor = Arc::new(
        processor
            .with_answer_reuse(settings.reuse.max_age())
            .with_spend(Arc::clone(&spend)),
    );
    // Before consuming: the other replicas must have made room for this one.
    let store_for_gauges = store.clone();
    let lease = crate::cluster::LeaseKeeper::start(
        worker_id,
        store,
        Arc::clone(&limiter),
        &settings.rate_limit,
        &control,
    )
    .await;
    let depth_gauges = (!settings.http.listen.is_empty())
        .then(|| spawn_depth_gauges(&settings, &store_for_gauges, lease.queue_reporter()));
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
        tally: JobTally::default(),
        max_wait: options.max_wait,
        paused_since: None,
        has_waited_too_long: false,
        spend,
        spend_recheck: settings.spend.recheck_interval(),
    };
    let options = ConsumeOptions {
        concurrency: settings.worker.concurrency,
        until_idle: options.until_idle,
    };
    let outcome =
        session::consume_until_stopped(&settings.amqp, topology, options, &control, &mut worker)
            .await;
    if let Some(gauges) = depth_gauges {
        gauges.abort();
    }
    if let Some(relay) = relay {
        finish_relay(
            relay,
            options.until_idle,
            &control,
            settings.worker.shutdown_grace(),
        )
        .await;
    }
    lease.release().await;
    worker.tally.log_summary(started.elapsed());
    outcome.context("connecting to the broker at start-up")?;
    Ok(match worker.has_waited_too_long {
        true => RunEnd::PausedTooLong,
        false => RunEnd::Stopped,
    })
}

/// Sends the events still in the outbox before `run` returns. After
/// `--until-idle` found the queues idle, `run` exits only once the outbox is
/// drained (a signal meanwhile turns that into the best effort below); after
/// a signal, the relay gets `worker.shutdown_grace_s`, and what is left goes
/// out after the next start.
async fn finish_relay(relay: Relay, until_idle: bool, control: &Control, grace: Duration) {
    if until_idle && !control.is_stopping() {
        let drained = relay.finish(None);
        tokio::pin!(drained);
        tokio::select! {
            () = &mut drained => return,
            () = control.stopped() => {},
        }
        // A signal while draining: give the rest the shutdown grace.
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("result events left in the outbox at shutdown; sent after restart");
        }
        return;
    }
    relay.finish(Some(grace)).await;
}

/// The jobs this process finished, by outcome: counted where each job's task
/// ends (an aborted task's delivery returns to the queue: `handed_back`).
#[derive(Debug, Default)]
pub(crate) struct JobTally {
    counts: [u64; JobOutcome::ALL.len()],
}

impl JobTally {
    pub(crate) fn add(&mut self, outcome: JobOutcome) {
        if let Some(index) = JobOutcome::ALL.iter().position(|o| *o == outcome) {
            self.counts[index] += 1;
        }
    }

    /// A task aborted at the end of the grace: its delivery returns to the
    /// queue when the channel closes. The processor never saw it end, so
    /// `zhima_jobs_total` is counted here.
    fn add_aborted(&mut self) {
        metrics::counter!(metric::JOBS_TOTAL,
            metric::OUTCOME => JobOutcome::HandedBack.as_str())
        .increment(1);
        self.add(JobOutcome::HandedBack);
    }

    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The one INFO line every exit of `run` ends with.
    fn log_summary(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let rate = match seconds > 0.0 {
            true => self.total() as f64 / seconds,
            false => 0.0,
        };
        tracing::info!(
            jobs = %self,
            jobs_total = self.total(),
            duration_s = (seconds * 10.0).round() / 10.0,
            jobs_per_second = (rate * 100.0).round() / 100.0,
            "run summary"
        );
    }
}

/// `succeeded=3 failed=0 ...`: every outcome word, zeros included.
impl fmt::Display for JobTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (outcome, count)) in JobOutcome::ALL.iter().zip(self.counts).enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{outcome}={count}")?;
        }
        Ok(())
    }
}

/// Migrates and connects, waiting out a database that is not up yet; a
/// database that refuses us for another reason (bad URL, password) is fatal.
/// With `/metrics` served: the queue depth gauges (one replica refreshes
/// them, see `queue::status::report_depths`).
fn spawn_depth_gauges(
    settings: &Settings,
    store: &JobStore,
    reporter: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let settings = settings.clone();
    let store = store.clone();
    tokio::spawn(
        async move {
            let registered = store.registered_delay_queues().await.unwrap_or_default();
            crate::queue::status::report_depths(settings, registered, reporter).await;
        }
        .in_current_span(),
    )
}

/// Records this configuration's delay queues for `status`, which cannot
/// list queues over AMQP. A failure costs only that listing: logged, not fatal.
async fn register_delay_queues(store: &JobStore, topology: &Topology) {
    let queues: Vec<(String, u64)> = topology
        .delay_tiers()
        .map(|(name, delay)| (name, u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)))
        .collect();
    if let Err(error) = store.register_delay_queues(&queues).await {
        tracing::warn!(error.message = %error,
            "could not register the delay queues; `status` may not list them");
    }
}

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
    tokio::spawn(
        async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutdown requested: no new deliveries, finishing in-flight jobs");
            control.stop();
        }
        .in_current_span(),
    );
    Ok(())
}

impl Worker {
    /// Held at the daily spend limit: no probe (the gateway is fine), but a
    /// re-read of the shared count every `spend.recheck_interval_s`, at once
    /// after `SIGHUP` changed the limit and at the next statement day;
    /// returns once calling may resume, or when shutdown begins. Not bounded
    /// by `--max-wait`, which is about configuration faults.
    async fn wait_for_budget(&mut self) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.spend_recheck) => {},
                () = self.spend.changed() => {},
                () = self.control.stopped() => return,
            }
            match self.spend.may_resume().await {
                Ok(true) => {
                    tracing::info!("daily spend below the limit again: resuming consumption");
                    self.control.resume();
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(error.message = %error,
                    "could not re-read the daily spend; consumption stays held"),
            }
        }
    }

    /// `--max-wait` ran out: stop as on SIGTERM (the paused session holds no
    /// delivery; anything left goes back to the queue) and exit 4.
    fn give_up_waiting(&mut self, paused_for: Duration) {
        tracing::error!(
            paused_for_s = paused_for.as_secs(),
            max_wait_s = self.max_wait.map(|wait| wait.as_secs()),
            reason = self.control.pause_reason().as_deref().unwrap_or("unknown"),
            "consumption paused on a configuration fault for longer than --max-wait: \
             leaving the jobs queued and exiting with code 4"
        );
        self.has_waited_too_long = true;
        self.control.stop();
    }
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The jobs in flight and the probe that ends a pause: the [`JobRunner`] the
/// broker sessions hand their deliveries to.
struct Worker {
    processor: Arc<Processor>,
    tasks: JoinSet<JobOutcome>,
    shutdown_grace: Duration,
    client: Arc<UpstreamClient>,
    limiter: Arc<UpstreamLimiter>,
    product_code: String,
    probe_interval: Duration,
    control: Arc<Control>,
    readiness: Arc<Readiness>,
    tally: JobTally,
    max_wait: Option<Duration>,
    /// When the current pause began (kept across reconnects; cleared on
    /// resume): `--max-wait` counts from here.
    paused_since: Option<tokio::time::Instant>,
    has_waited_too_long: bool,
    /// The daily budget, re-checked while consumption is held at its limit.
    spend: Arc<SpendGate>,
    spend_recheck: Duration,
}

impl JobRunner for Worker {
    fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    fn start(&mut self, job: Inbound) {
        let processor = Arc::clone(&self.processor);
        self.tasks
            .spawn(async move { job.handle(&processor).await }.in_current_span());
    }

    async fn join_one(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(outcome)) => self.tally.add(outcome),
            Some(Err(error)) => tracing::error!(error.message = %error, "job task failed"),
            None => {}
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
                    Some(Ok(outcome)) => self.tally.add(outcome),
                    Some(Err(error)) if error.is_panic() => {
                        tracing::error!(error.message = %error, "job task panicked");
                    }
                    Some(Err(_)) => self.tally.add_aborted(),
                },
                () = &mut grace => {
                    tracing::warn!(in_flight = self.tasks.len(),
                        "shutdown grace over: handing back the remaining jobs");
                    self.tasks.abort_all();
                    while let Some(joined) = self.tasks.join_next().await {
                        match joined {
                            Ok(outcome) => self.tally.add(outcome),
                            Err(_) => self.tally.add_aborted(),
                        }
                    }
                    return;
                }
            }
        }
    }

    /// A configuration fault paused consumption: the session has cancelled
    /// its consumer, handed back what it had buffered and drained the jobs in
    /// flight, then calls this before consuming again. Probes the gateway
    /// every `worker.probe_interval_s` with a request that cannot be billed,
    /// and resumes once one passes; returns early when shutdown begins, and
    /// begins it once the pause has lasted `--max-wait`.
    async fn wait_for_resume(&mut self) {
        if self.control.is_budget_hold() {
            self.wait_for_budget().await;
            return;
        }
        let paused_since = *self
            .paused_since
            .get_or_insert_with(tokio::time::Instant::now);
        let give_up_at = self.max_wait.map(|wait| paused_since + wait);
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.probe_interval) => {},
                () = self.control.stopped() => return,
                () = sleep_until(give_up_at) => {
                    self.give_up_waiting(paused_since.elapsed());
                    return;
                }
            }
            // The probe reaches the upstream too: it takes a permit.
            let permit = tokio::select! {
                permit = self.limiter.acquire() => permit,
                () = self.control.stopped() => return,
            };
            let probed = self.client.probe(&self.product_code).await;
            drop(permit);
            let result = match probed {
                Ok(()) => metric::PROBE_PASSED,
                Err(_) => metric::PROBE_FAILED,
            };
            metrics::counter!(metric::CONFIG_PROBES_TOTAL, metric::RESULT => result).increment(1);
            match probed {
                Ok(()) => {
                    tracing::info!("configuration probe passed: resuming consumption");
                    self.paused_since = None;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn max_wait_takes_seconds_minutes_and_hours() {
        assert_eq!(parse_max_wait("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_max_wait("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_max_wait("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn max_wait_rejects_zero_bare_numbers_and_garbage() {
        for text in [
            "0", "0s", "0m", "90", "", "s", "abc", "1.5h", "10d", "-5s", "5 s",
        ] {
            assert!(parse_max_wait(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn job_tally_names_every_outcome_word_with_its_count() {
        let mut tally = JobTally::default();
        tally.add(JobOutcome::Succeeded);
        tally.add(JobOutcome::Succeeded);
        tally.add(JobOutcome::HandedBack);
        assert_eq!(tally.total(), 3);
        assert_eq!(
            tally.to_string(),
            "succeeded=2 failed=0 retried=0 handed_back=1 duplicate=0 invalid=0 conflict=0 reused=0"
        );
    }
}
