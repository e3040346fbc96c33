//! The relay: moves result events from the `result_events` outbox to the
//! results exchange. Each round claims up to `results.batch_size` unsent
//! rows (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so replicas share the work),
//! publishes them persistent with publisher confirms (all sent, then the
//! confirms awaited together), and marks them sent in the claim's
//! transaction. A crash anywhere before that commit leaves the rows unsent:
//! they go out again (at least once; consumers dedupe by message_id).
//!
//! The relay wakes as soon as this process commits an event (the store's
//! `Notify`; it then lingers 100 ms to gather the events committed meanwhile)
//! and every `results.poll_interval_ms` for rows that other
//! replicas, or an earlier crash, left behind. A lost broker connection is
//! reopened with backoff; nothing is lost meanwhile (the rows wait).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AmqpSettings, ResultSettings};
use crate::queue::publisher::Outgoing;
use crate::queue::topology::declare_results_exchange;
use crate::queue::{self, Publisher, QueueError};
use crate::store::{JobStore, StoreError};
use crate::telemetry::metric;

/// How long one round waits for its publishes to be written and confirmed
/// before giving the rows back and reconnecting.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay waits after a wake-up before claiming, so that the
/// events of jobs finishing close together share one round.
const LINGER: Duration = Duration::from_millis(100);
/// The longest pause between two attempts to reach the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Set to `1`, the relay does not start: events stay in the outbox until a
/// later `run` without it. A fault hook for tests (a crash between commit
/// and publish); never set it in production.
pub(crate) const HOLD_ENV: &str = "ZHIMA_TEST_HOLD_RESULT_EVENTS";

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the broker did not take and confirm the result events within {} s", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout,
}

/// The running relay task.
pub(crate) struct Relay {
    task: JoinHandle<()>,
    finishing: watch::Sender<bool>,
}

impl Relay {
    /// Starts the relay when result events are on (and not held by
    /// [`HOLD_ENV`]); None otherwise.
    pub(crate) fn spawn(
        store: &JobStore,
        amqp: &AmqpSettings,
        results: &ResultSettings,
    ) -> Option<Self> {
        let wake = store.events_written()?;
        if std::env::var(HOLD_ENV).is_ok_and(|value| value == "1") {
            tracing::warn!(
                env = HOLD_ENV,
                "result events held in the outbox (test fault hook)"
            );
            return None;
        }
        let (finishing, finish_seen) = watch::channel(false);
        let worker = RelayLoop {
            store: store.clone(),
            amqp: amqp.clone(),
            exchange: results.exchange.clone(),
            batch_size: results.batch_size,
            poll: results.poll_interval(),
            wake,
            finish_seen,
        };
        Some(Self {
            task: tokio::spawn(worker.run()),
            finishing,
        })
    }

    /// Asks the relay to send what is left and stop once the outbox is empty;
    /// waits for that at most `limit` (None: as long as it takes), then stops
    /// it. Rows still unsent go out after the next start.
    pub(crate) async fn finish(self, limit: Option<Duration>) {
        let _ = self.finishing.send(true);
        let mut task = self.task;
        match limit {
            None => {
                let _ = (&mut task).await;
            }
            Some(limit) => {
                if tokio::time::timeout(limit, &mut task).await.is_err() {
                    tracing::warn!(
                        "result events left in the outbox at shutdown; they are sent after restart"
                    );
                    task.abort();
                }
            }
        }
    }
}

struct RelayLoop {
    store: JobStore,
    amqp: AmqpSettings,
    exchange: String,
    batch_size: u32,
    poll: Duration,
    wake: Arc<tokio::sync::Notify>,
    finish_seen: watch::Receiver<bool>,
}

impl RelayLoop {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(error.message = %error, error.cause_chain = ?error,
                        "result event relay interrupted; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {},
                _ = self.finish_seen.changed() => {},
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One broker connection: rounds until finished and drained, or an error.
    async fn session(&mut self) -> Result<(), RelayError> {
        let connection = queue::connect(&self.amqp, "results relay").await?;
        let publisher = Publisher::open(&connection).await?;
        declare_results_exchange(publisher.channel(), &self.exchange).await?;
        let outcome = self.rounds(&publisher).await;
        let _ = connection.close(200, "results relay done".into()).await;
        outcome
    }

    /// Rounds until finished and drained. Woken by a commit, the relay first
    /// lingers [`LINGER`] so that events committed close together go out in
    /// one round (one claim, one set of confirms) instead of one round each;
    /// the backlog is counted at most once per poll interval (and on every
    /// round while finishing, to know when the outbox is drained).
    async fn rounds(&mut self, publisher: &Publisher) -> Result<(), RelayError> {
        let mut counted_at: Option<Instant> = None;
        loop {
            let sent = self.round(publisher).await?;
            if sent >= self.batch_size as usize {
                continue;
            }
            let finishing = *self.finish_seen.borrow();
            if finishing || counted_at.is_none_or(|at| at.elapsed() >= self.poll) {
                let backlog = self.store.unsent_events().await?;
                metrics::gauge!(metric::RESULT_EVENTS_BACKLOG).set(backlog as f64);
                counted_at = Some(Instant::now());
                if finishing && backlog == 0 {
                    return Ok(());
                }
            }
            let wait = match finishing {
                true => self.poll.min(Duration::from_millis(100)),
                false => self.poll,
            };
            let woken = tokio::select! {
                () = self.wake.notified() => true,
                () = tokio::time::sleep(wait) => false,
                _ = self.finish_seen.changed(), if !finishing => false,
            };
            if woken && !finishing {
                tokio::select! {
                    () = tokio::time::sleep(LINGER.min(self.poll)) => {},
                    _ = self.finish_seen.changed() => {},
                }
            }
        }
    }

    /// Claims, publishes and marks one batch; returns how many were sent.
    async fn round(&self, publisher: &Publisher) -> Result<usize, RelayError> {
        let claim = self.store.claim_events(self.batch_size).await?;
        if claim.events.is_empty() {
            return Ok(0);
        }
        // Every publish of the round at once: each queues its frames on its
        // first poll, and the join polls them first in claim order, so the
        // messages go out in that order, in as few writes as the connection
        // thread manages, and this task wakes once for them all rather than
        // once per event (a round trip with lapin's thread each).
        // The time limit covers the sends too: lapin holds publishes while
        // the broker blocks the connection (a memory or disk alarm).
        let sends = claim.events.iter().map(|event| {
            publisher.send(Outgoing::result_event(
                &self.exchange,
                &event.routing_key,
                event.body.as_bytes(),
                &event.message_id,
            ))
        });
        let target = format!("exchange {}", self.exchange);
        let published = async {
            let confirms = futures_util::future::join_all(sends).await;
            for confirm in confirms {
                Publisher::confirmed(confirm?, target.clone()).await?;
            }
            Ok::<(), QueueError>(())
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, published)
            .await
            .map_err(|_| RelayError::ConfirmTimeout)??;
        let sent = claim.events.len();
        self.store.mark_sent(claim).await?;
        metrics::counter!(metric::RESULT_EVENTS_PUBLISHED_TOTAL).increment(sent as u64);
        Ok(sent)
    }
}
