//! Replicas sharing one upstream rate limit. `rate_limit.qps` and `burst` are
//! the merchant's totals; each replica keeps its governor limiter local (no
//! round trip per call) and sets it to its [`Share`] of the totals, computed
//! from the live leases in `worker_leases` (PostgreSQL).
//!
//! The [`LeaseKeeper`] renews this replica's lease every `heartbeat_ms` (the
//! database's `now()` + `lease_ms`, so host clocks never matter) and reads the
//! live leases in the same round trip. The share is deterministic: the total
//! rate divided exactly by the number of live replicas (below one call per
//! second if need be, so every replica keeps making progress), the burst and
//! the cap (rate + burst) split by sorted worker_id with at least one each.
//!
//! Safety rules, in the order a replica meets them:
//! - joining: it makes no call until the others have heartbeated since it
//!   registered (so they have already shrunk their shares), and then for one
//!   more second (the limiter reopens a renewed grant a window later, so the
//!   others' calls under their old shares are out of the window);
//! - member: permits are granted only until the last successful heartbeat's
//!   send time + `lease_ms`, the earliest moment its lease can expire in the
//!   others' view; a replica cut off from the database stops calling by then,
//!   before anyone can reclaim its share, and joins afresh when it is back;
//! - clean exit: the lease is deleted, so the others grow at once.
//!
//! With SQLite (one machine, one writer) there is one replica: the share is
//! the whole and no lease is kept. This module runs no SQL itself (that is in
//! `store`) and never calls the upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use crate::config::RateLimitSettings;
use crate::control::Control;
use crate::rate_limit::{Rate, Share, UpstreamLimiter};
use crate::store::{JobStore, Membership, StoreError};

/// A joining replica that never sees every other lease renewed (a peer stuck
/// without dying) joins anyway after this many lease durations.
const JOIN_PATIENCE_LEASES: u32 = 4;
/// How long a clean exit waits for the heartbeat task and the lease deletion.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// Failing heartbeats are logged once per this period, not every beat.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

/// This replica's part of `total` among the live `worker_ids` (which should
/// include `me`; it is added if missing).
pub(crate) fn share_for<'a>(
    total: Rate,
    worker_ids: impl IntoIterator<Item = &'a str>,
    me: &str,
) -> Share {
    let mut ids: Vec<&str> = worker_ids.into_iter().collect();
    ids.push(me);
    ids.sort_unstable();
    ids.dedup();
    let count = u32::try_from(ids.len()).unwrap_or(u32::MAX).max(1);
    let index = ids.iter().position(|id| *id == me).unwrap_or(0);
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    let split = |whole: u32| whole / count + u32::from(index < whole % count);
    let burst = split(total.burst.get());
    let cap = split(total.per_second.get().saturating_add(total.burst.get()));
    Share {
        total_per_second: total.per_second,
        replicas: std::num::NonZeroU32::new(count).unwrap_or(std::num::NonZeroU32::MIN),
        burst: std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN),
        cap: std::num::NonZeroU32::new(cap).unwrap_or(std::num::NonZeroU32::MIN),
    }
}

/// `hostname-pid-random`: unique per process even when a pid is reused, and
/// telling an operator which host a lease belongs to.
pub(crate) fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(40)
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Keeps this replica's lease and its share while it runs; [`release`]
/// (after the drain) deletes the lease.
///
/// [`release`]: LeaseKeeper::release
pub(crate) struct LeaseKeeper {
    worker_id: String,
    store: JobStore,
    /// Whether this replica refreshes the queue depth gauges: the live
    /// lease with the lowest worker_id does (SQLite: the one replica).
    reports_queues: Arc<AtomicBool>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl LeaseKeeper {
    /// Registers and returns once this replica is a member (the others have
    /// seen it and its share is in force), or once shutdown begins. Database
    /// outages are waited out, not returned: the store was reachable a moment
    /// ago and the heartbeat keeps trying.
    pub(crate) async fn start(
        worker_id: String,
        store: JobStore,
        limiter: Arc<UpstreamLimiter>,
        settings: &RateLimitSettings,
        control: &Control,
    ) -> Self {
        if !store.is_shared() {
            // The whole rate, one replica: the gauges say so once.
            limiter.record_rate();
            metrics::gauge!(crate::telemetry::metric::REPLICAS_LIVE).set(1.0);
            return Self {
                worker_id,
                store,
                reports_queues: Arc::new(AtomicBool::new(true)),
                running: None,
            };
        }
        limiter.grant_until(Instant::now());
        let (stop, stopped) = oneshot::channel();
        let (joined_tx, mut joined) = watch::channel(false);
        let reports_queues = Arc::new(AtomicBool::new(false));
        let mut heartbeat = Heartbeat::new(worker_id.clone(), store.clone(), limiter, settings);
        heartbeat.reports_queues = Arc::clone(&reports_queues);
        let task = tokio::spawn(heartbeat.run(stopped, joined_tx).in_current_span());
        tokio::select! {
            _ = joined.wait_for(|joined| *joined) => {},
            () = control.stopped() => {},
        }
        Self {
            worker_id,
            store,
            reports_queues,
            running: Some((stop, task)),
        }
    }

    /// True while this replica is the one that refreshes the queue depth
    /// gauges (see the field); read by `queue::status::report_depths`.
    pub(crate) fn queue_reporter(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reports_queues)
    }

    /// Stops the heartbeat, then deletes the lease so the other replicas take
    /// this share at their next heartbeat. Call it after the drain: no upstream
    /// call may follow.
    pub(crate) async fn release(self) {
        let Some((stop, mut task)) = self.running else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(RELEASE_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        let released =
            tokio::time::timeout(RELEASE_TIMEOUT, self.store.release_lease(&self.worker_id)).await;
        match released {
            Ok(Ok(())) => tracing::info!("lease released"),
            Ok(Err(error)) => tracing::warn!(error.message = %error,
                "could not delete the lease; it expires by itself within rate_limit.lease_ms"),
            Err(_) => tracing::warn!(
                "deleting the lease timed out; it expires by itself within rate_limit.lease_ms"
            ),
        }
    }
}

/// Where a replica stands with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No lease known to be stored: no permits.
    Unregistered,
    /// The lease is stored; the next heartbeat's database time is the bar.
    Registered {
        since: Instant,
    },
    /// Waiting until every other live lease was renewed after `bar`, which
    /// proves its holder has counted this replica.
    Joining {
        bar: DateTime<Utc>,
        since: Instant,
    },
    Member,
}

/// The heartbeat task's state.
struct Heartbeat {
    worker_id: String,
    store: JobStore,
    limiter: Arc<UpstreamLimiter>,
    total: Rate,
    heartbeat: Duration,
    lease: Duration,
    phase: Phase,
    granted_until: Option<Instant>,
    replicas: usize,
    failing_since: Option<Instant>,
    last_failure_log: Option<Instant>,
    reports_queues: Arc<AtomicBool>,
}

impl Heartbeat {
    fn new(
        worker_id: String,
        store: JobStore,
        limiter: Arc<UpstreamLimiter>,
        settings: &RateLimitSettings,
    ) -> Self {
        Self {
            worker_id,
            store,
            limiter,
            total: Rate {
                per_second: settings.qps,
                burst: settings.burst,
            },
            heartbeat: settings.heartbeat(),
            lease: settings.lease(),
            phase: Phase::Unregistered,
            granted_until: None,
            replicas: 0,
            failing_since: None,
            last_failure_log: None,
            reports_queues: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>, joined: watch::Sender<bool>) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                _ = tick.tick() => {},
            }
            self.beat().await;
            joined.send_if_modified(|joined| {
                let changed = !*joined && self.phase == Phase::Member;
                *joined |= changed;
                changed
            });
        }
    }

    async fn beat(&mut self) {
        let sent = Instant::now();
        let beat = self.store.heartbeat_lease(&self.worker_id, self.lease);
        match tokio::time::timeout(self.lease, beat).await {
            Ok(Ok(membership)) => self.on_success(&membership, sent),
            Ok(Err(error)) => self.on_failure(Some(&error)),
            Err(_) => self.on_failure(None),
        }
    }

    fn on_success(&mut self, membership: &Membership, sent: Instant) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                failed_for_ms = since.elapsed().as_millis() as u64,
                "lease heartbeat recovered"
            );
        }
        let lapsed = self.granted_until.is_some_and(|until| sent >= until);
        self.phase = match self.phase {
            Phase::Member if lapsed => {
                tracing::warn!("lease lapsed while the database was unreachable: joining again");
                Phase::Registered { since: sent }
            }
            Phase::Member => Phase::Member,
            Phase::Unregistered => Phase::Registered { since: sent },
            Phase::Registered { since } => Phase::Joining {
                bar: membership.now,
                since,
            },
            Phase::Joining { bar, since } => self.joined_phase(membership, bar, since),
        };
        if self.phase == Phase::Member {
            self.apply(membership, sent);
        }
    }

    fn joined_phase(&self, membership: &Membership, bar: DateTime<Utc>, since: Instant) -> Phase {
        let seen_by_all = membership
            .live
            .iter()
            .filter(|lease| lease.worker_id != self.worker_id)
            .all(|lease| lease.heartbeat_at >= bar);
        if seen_by_all {
            return Phase::Member;
        }
        if since.elapsed() > self.lease * JOIN_PATIENCE_LEASES {
            tracing::warn!("a live lease was not renewed for long; joining without its ack");
            return Phase::Member;
        }
        Phase::Joining { bar, since }
    }

    fn apply(&mut self, membership: &Membership, sent: Instant) {
        let ids = membership.live.iter().map(|lease| lease.worker_id.as_str());
        let lowest = ids.clone().chain([self.worker_id.as_str()]).min();
        self.reports_queues
            .store(lowest == Some(self.worker_id.as_str()), Ordering::Relaxed);
        let share = share_for(self.total, ids, &self.worker_id);
        self.limiter.set_share(share);
        let until = sent + self.lease;
        self.limiter.grant_until(until);
        self.granted_until = Some(until);
        let replicas = share.replicas.get() as usize;
        if replicas != self.replicas {
            self.replicas = replicas;
            metrics::gauge!(crate::telemetry::metric::REPLICAS_LIVE).set(replicas as f64);
            tracing::info!(
                replicas,
                share_qps = share.per_second(),
                share_burst = share.burst.get(),
                "replicas changed: rate limit share updated"
            );
        }
    }

    fn on_failure(&mut self, error: Option<&StoreError>) {
        let now = Instant::now();
        let first = self.failing_since.is_none();
        self.failing_since.get_or_insert(now);
        let due = self
            .last_failure_log
            .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_PERIOD);
        if first || due {
            self.last_failure_log = Some(now);
            let lapses_in_ms = self
                .granted_until
                .map(|until| until.saturating_duration_since(now).as_millis() as u64);
            match error {
                Some(error) => tracing::warn!(error.message = %error, lapses_in_ms,
                    "lease heartbeat failed; upstream calls stop when the lease lapses"),
                None => tracing::warn!(
                    lapses_in_ms,
                    "lease heartbeat timed out; upstream calls stop when the lease lapses"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::LiveLease;
    use std::num::NonZeroU32;

    fn total(qps: u32, burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(qps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn shares_add_up_to_the_total_whatever_the_order() {
        let ids = ["c", "a", "b"];
        let shares: Vec<Share> = ids
            .iter()
            .map(|me| share_for(total(31, 5), ids, me))
            .collect();
        let rate: f64 = shares.iter().map(Share::per_second).sum();
        assert!((rate - 31.0).abs() < 1e-9);
        let burst: u32 = shares.iter().map(|s| s.burst.get()).sum();
        assert_eq!(burst, 5);
        let cap: u32 = shares.iter().map(|s| s.cap.get()).sum();
        assert_eq!(cap, 31 + 5, "the caps add up to the rate plus the burst");
        assert_eq!(share_for(total(31, 5), ["b", "a", "c"], "a").burst.get(), 2);
        assert_eq!(share_for(total(31, 5), ["b", "a", "c"], "c").burst.get(), 1);
    }

    #[test]
    fn every_replica_gets_a_burst_of_one_when_the_total_burst_is_smaller() {
        for me in ["a", "b", "c"] {
            assert_eq!(share_for(total(2, 1), ["a", "b", "c"], me).burst.get(), 1);
        }
    }

    #[test]
    fn a_missing_self_is_counted() {
        let share = share_for(total(30, 3), ["a", "b"], "z");
        assert_eq!(share.replicas.get(), 3);
    }

    #[test]
    fn worker_ids_are_unique_per_call() {
        assert_ne!(new_worker_id(), new_worker_id());
        assert!(new_worker_id().contains(&std::process::id().to_string()));
    }

    async fn sqlite_store() -> (tempfile::TempDir, JobStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/t.sqlite?mode=rwc", dir.path().display());
        JobStore::migrate(&url).await.unwrap();
        (dir, JobStore::connect(&url, 2).await.unwrap())
    }

    fn heartbeat(store: JobStore, limiter: Arc<UpstreamLimiter>, id: &str) -> Heartbeat {
        let settings = RateLimitSettings {
            qps: NonZeroU32::new(30).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
            heartbeat_ms: 250,
            lease_ms: 1500,
        };
        Heartbeat::new(id.into(), store, limiter, &settings)
    }

    fn membership(now: DateTime<Utc>, leases: &[(&str, DateTime<Utc>)]) -> Membership {
        Membership {
            now,
            live: leases
                .iter()
                .map(|(id, at)| LiveLease {
                    worker_id: (*id).into(),
                    heartbeat_at: *at,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_joining_replica_waits_until_the_others_have_renewed_since_it_registered() {
        let (_dir, store) = sqlite_store().await;
        let limiter = Arc::new(UpstreamLimiter::new(total(30, 3)));
        let mut beat = heartbeat(store, Arc::clone(&limiter), "me");
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let now = Instant::now();
        beat.on_success(&membership(t(0), &[("me", t(0)), ("old", t(0))]), now);
        beat.on_success(&membership(t(1), &[("me", t(1)), ("old", t(0))]), now);
        assert!(matches!(beat.phase, Phase::Joining { .. }));
        beat.on_success(&membership(t(2), &[("me", t(2)), ("old", t(0))]), now);
        assert!(
            matches!(beat.phase, Phase::Joining { .. }),
            "old has not seen us"
        );
        assert_eq!(limiter.share().replicas.get(), 1, "no share applied yet");
        beat.on_success(&membership(t(3), &[("me", t(3)), ("old", t(2))]), now);
        assert_eq!(beat.phase, Phase::Member);
        assert_eq!(limiter.share().replicas.get(), 2);
    }

    #[tokio::test]
    async fn a_member_whose_grant_lapsed_joins_again() {
        let (_dir, store) = sqlite_store().await;
        let limiter = Arc::new(UpstreamLimiter::new(total(30, 3)));
        let mut beat = heartbeat(store, limiter, "me");
        beat.phase = Phase::Member;
        let start = Instant::now();
        let at = Utc::now();
        beat.on_success(&membership(at, &[("me", at)]), start);
        assert_eq!(beat.phase, Phase::Member);
        beat.on_success(
            &membership(at, &[("me", at)]),
            start + Duration::from_secs(2),
        );
        assert!(matches!(beat.phase, Phase::Registered { .. }));
    }

    #[tokio::test]
    async fn the_sqlite_heartbeat_returns_every_live_lease() {
        let (_dir, store) = sqlite_store().await;
        let lease = Duration::from_secs(5);
        store.heartbeat_lease("a", lease).await.unwrap();
        let seen = store.heartbeat_lease("b", lease).await.unwrap();
        let mut ids: Vec<_> = seen.live.iter().map(|l| l.worker_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);
        store.release_lease("a").await.unwrap();
        let seen = store.heartbeat_lease("b", lease).await.unwrap();
        assert_eq!(seen.live.len(), 1);
    }
}
