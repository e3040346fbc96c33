//! The consume sessions of `run`: connect, declare the topology, set the
//! prefetch, consume the main queue, cancel and hand back on pause or
//! shutdown, detect `--until-idle`, and reconnect with backoff when the broker
//! goes away. A broker that refuses us before the first session is fatal.
//!
//! A session runs no job and owns no task: it hands each delivery to a
//! [`JobRunner`] (the worker in `app`), which runs, counts and drains the jobs
//! and probes while consumption is paused. It decides nothing about outcomes.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::{Publisher, QueueError, Topology, consumer, short};
use crate::config::AmqpSettings;
use crate::control::Control;
use crate::processor::{JobOutcome, Processor};

/// How long `--until-idle` waits between its two emptiness checks.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// One delivery, with what answering it on the broker needs.
pub(crate) struct Inbound {
    delivery: Delivery,
    /// The channel it came on, which acks it.
    channel: Channel,
    publisher: Publisher,
    topology: Arc<Topology>,
}

impl Inbound {
    /// Processes the job, then acks, retries, dead-letters or hands back the
    /// delivery as the processor decided (see [`consumer::handle`]); what
    /// became of the job.
    pub(crate) async fn handle(self, processor: &Processor) -> JobOutcome {
        let Self {
            delivery,
            channel,
            publisher,
            topology,
        } = self;
        let broker = consumer::Broker {
            channel: &channel,
            publisher: &publisher,
            topology: &topology,
        };
        consumer::handle(delivery, processor, broker).await
    }
}

/// The worker's side of a session: it owns the jobs' tasks and the
/// configuration probe; the session only says when to start, wait or drain.
pub(crate) trait JobRunner {
    /// Jobs started and not yet finished.
    fn in_flight(&self) -> usize;
    /// Starts the job of one delivery and returns at once.
    fn start(&mut self, job: Inbound);
    /// Waits until one job in flight finishes (called only while one is).
    fn join_one(&mut self) -> impl Future<Output = ()> + Send;
    /// Waits for the jobs in flight; those still running when the grace runs
    /// out are aborted, and their deliveries return when the channel closes.
    fn drain(&mut self) -> impl Future<Output = ()> + Send;
    /// Consumption is paused and no consumer is open: returns once it may
    /// resume, or shutdown began (which the runner may begin itself, e.g.
    /// when `--max-wait` runs out).
    fn wait_for_resume(&mut self) -> impl Future<Output = ()> + Send;
    /// Whether a session is up (the readiness check reports it).
    fn set_broker_connected(&self, connected: bool);
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsumeOptions {
    /// Jobs in flight at most; also the channel's prefetch.
    pub(crate) concurrency: NonZeroU32,
    /// Stop once every queue we feed from is empty and nothing is in flight.
    pub(crate) until_idle: bool,
}

/// Sessions until shutdown (or idle with `until_idle`). Err only when the
/// broker refuses our credentials or vhost before the first session: a
/// configuration fault that retrying cannot fix. Every other failure is
/// waited out by reconnecting with backoff.
pub(crate) async fn consume_until_stopped(
    settings: &AmqpSettings,
    topology: Arc<Topology>,
    options: ConsumeOptions,
    control: &Control,
    runner: &mut impl JobRunner,
) -> Result<(), QueueError> {
    let mut sessions = Sessions {
        settings,
        topology,
        options,
        control,
        runner,
        has_connected: false,
    };
    sessions.run().await
}

struct Sessions<'a, R> {
    settings: &'a AmqpSettings,
    topology: Arc<Topology>,
    options: ConsumeOptions,
    control: &'a Control,
    runner: &'a mut R,
    /// Set once a session has consumed: from then on every broker error,
    /// refusals included, is waited out by reconnecting.
    has_connected: bool,
}

enum ConsumeEnd {
    Stopped,
    Paused,
    Idle,
}

impl<R: JobRunner> Sessions<'_, R> {
    async fn run(&mut self) -> Result<(), QueueError> {
        let mut backoff = Duration::from_millis(500);
        while !self.control.is_stopping() {
            let outcome = self.session().await;
            self.runner.set_broker_connected(false);
            match outcome {
                Ok(()) => break,
                Err(error) if error.is_refused() && !self.has_connected => {
                    self.runner.drain().await;
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
        self.runner.drain().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// One broker connection: declare, consume until stopped, idle, or the
    /// connection fails. In-flight jobs are drained before it closes.
    async fn session(&mut self) -> Result<(), QueueError> {
        let connection = super::connect(self.settings, "run").await?;
        let channel = open_channel(&connection).await?;
        self.topology.declare(&channel).await?;
        let publisher = Publisher::open(&connection).await?;
        let prefetch = u16::try_from(self.options.concurrency.get()).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(QueueError::broker("basic.qos"))?;
        let mut idle = match self.options.until_idle {
            true => Some(IdleDetector::new(
                open_channel(&connection).await?,
                &self.topology,
            )),
            false => None,
        };
        self.runner.set_broker_connected(true);
        self.has_connected = true;
        tracing::info!(queue = %self.topology.names.queue, prefetch, "consuming");
        loop {
            if self.control.is_paused() {
                self.runner.wait_for_resume().await;
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
        self.runner.drain().await;
        record_in_flight(self.runner.in_flight());
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }

    /// One consumer on the main queue, until shutdown, a pause (the jobs in
    /// flight are drained first), idleness, or a broker failure.
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
        let concurrency = self.options.concurrency.get() as usize;
        let mut idle_tick = tokio::time::interval(IDLE_CHECK_INTERVAL);
        loop {
            record_in_flight(self.runner.in_flight());
            tokio::select! {
                biased;
                () = self.control.stopped() => {
                    stop_consuming(channel, &mut consumer).await;
                    return Ok(ConsumeEnd::Stopped);
                }
                () = self.control.paused() => {
                    stop_consuming(channel, &mut consumer).await;
                    self.runner.drain().await;
                    record_in_flight(self.runner.in_flight());
                    return Ok(ConsumeEnd::Paused);
                }
                () = self.runner.join_one(), if self.runner.in_flight() > 0 => {}
                _ = idle_tick.tick(), if idle.is_some() => {
                    if let Some(detector) = idle.as_deref_mut()
                        && detector.is_idle(self.runner.in_flight()).await?
                    {
                        stop_consuming(channel, &mut consumer).await;
                        return Ok(ConsumeEnd::Idle);
                    }
                }
                next = consumer.next(), if self.runner.in_flight() < concurrency => match next {
                    Some(Ok(delivery)) => {
                        if let Some(detector) = idle.as_deref_mut() {
                            detector.reset();
                        }
                        self.runner.start(Inbound {
                            delivery,
                            channel: channel.clone(),
                            publisher: publisher.clone(),
                            topology: Arc::clone(&self.topology),
                        });
                    }
                    Some(Err(error)) => return Err(QueueError::broker("consume")(error)),
                    None => return Err(QueueError::ConsumerCancelled),
                },
            }
        }
    }
}

/// `zhima_jobs_in_flight`: the deliveries a job task holds unacked now.
/// Set on every turn of the consume loop and after each drain, so a pause
/// or a shutdown never leaves the handed-back jobs counted.
fn record_in_flight(in_flight: usize) {
    metrics::gauge!(crate::telemetry::metric::JOBS_IN_FLIGHT).set(in_flight as f64);
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
            if super::topology::ready_messages(&self.channel, queue).await? > 0 {
                self.reset();
                return Ok(false);
            }
        }
        self.quiet_checks += 1;
        Ok(self.quiet_checks >= 2)
    }
}
