//! The upstream rate limit of this process: a governor limiter shared by every
//! job task, with a permit taken right before each upstream call (never while
//! waiting for deliveries).
//!
//! The burst is always set explicitly: governor's default burst equals the
//! rate, which lets twice the rate through in the first second. The limiter can
//! be replaced when this process's `Share` of the merchant's total changes
//! (see `cluster`) or when throttled answers make it back off; governor quotas
//! are immutable, so that means a new limiter. A replacement is drained at
//! once (its burst used up), so a swap never lets a fresh burst through, and it
//! happens only when the quota in force really changes. Waiters re-check the
//! limiter in force after every wait, so a shrunken share applies to them too.
//!
//! Adaptive back-off (AIMD): a throttled answer halves the local rate (at most
//! once a second, never below one call per second or the share if smaller);
//! every second without one adds back a tenth of the share until the share is
//! reached. Permits can also be granted only until a deadline (the lease's
//! validity): past it, callers wait until it is renewed. No I/O here.
//!
//! The upstream counts arrivals, not permits, and a call can reach it any
//! time between its permit and its answer (a new connection, a stalled
//! thread, a slow network). Pacing permits alone therefore bounds nothing at
//! the upstream: calls held up on the way land together with later ones. So a
//! permit is a `CallPermit` held for the whole call, and a call counts
//! against `Share::cap` from its permit until `WINDOW` after its answer.
//! The latest-permitted call of any one-second window of arrivals found every
//! other call of that window still counted (each was permitted before it and
//! answered after the window began, so after its own permit minus a second),
//! so no window holds more than the cap, however the calls were delayed. A
//! larger cap applies only `WINDOW` after it is set (a smaller one at once),
//! and a lapsed grant, when renewed, reopens only after `WINDOW`: the calls
//! the other replicas made under the old shares are out of any window that
//! holds calls made under the new ones.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// A rate in calls per second plus a burst, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// One replica's part of the merchant's total: `total_per_second / replicas`
/// calls per second, split exactly (it may be below one call per second), so
/// the shares of all replicas add up to the total; plus a burst of its own,
/// and a cap on its calls that may reach the upstream within one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) total_per_second: NonZeroU32,
    pub(crate) replicas: NonZeroU32,
    pub(crate) burst: NonZeroU32,
    /// The most calls of this replica in any one-second window at the
    /// upstream; the caps of all replicas add up to the rate plus the burst.
    pub(crate) cap: NonZeroU32,
}

impl Share {
    /// All of `rate`: a single replica.
    pub(crate) fn whole(rate: Rate) -> Self {
        Self {
            total_per_second: rate.per_second,
            replicas: NonZeroU32::MIN,
            burst: rate.burst,
            cap: rate.per_second.saturating_add(rate.burst.get()),
        }
    }

    pub(crate) fn per_second(&self) -> f64 {
        f64::from(self.total_per_second.get()) / f64::from(self.replicas.get())
    }
}

/// A throttled answer multiplies the local rate by this.
const BACKOFF_FACTOR: f64 = 0.5;
/// Each recovery step adds back this fraction of the share.
const RECOVERY_STEP: f64 = 0.1;
/// At most one decrease, and one recovery step, per this period: the throttled
/// answers of one overload arrive together and deserve one halving, and
/// limiter swaps stay rare.
const ADJUST_PERIOD: Duration = Duration::from_secs(1);
/// The window the upstream counts calls in.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

pub struct UpstreamLimiter {
    state: Mutex<State>,
    /// Wakes waiters when the limiter is swapped, a lapsed grant is renewed
    /// or a call ends while the window is full of calls in flight.
    changed: Notify,
}

/// Permission for one upstream call: hold it until the call is over (answer,
/// error or cancellation). Dropping it ends the call; it still counts against
/// the cap for [`WINDOW`].
#[must_use = "the call counts as in flight only while the permit is held"]
pub(crate) struct CallPermit<'a> {
    limiter: &'a UpstreamLimiter,
    waited: Duration,
}

impl CallPermit<'_> {
    /// How long the caller waited for it (for the metrics).
    pub(crate) fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        self.limiter.finish(Instant::now());
    }
}

struct State {
    share: Share,
    /// The fraction of the share in force, in (0, 1]; below 1 while backing off.
    backoff: f64,
    last_decrease: Option<Instant>,
    last_adjust: Instant,
    /// Permits are given only before this instant; `None`: always.
    granted_until: Option<Instant>,
    quota: Quota,
    limiter: Arc<DefaultDirectRateLimiter>,
    window: CallWindow,
}

/// What one look at the limiter gives a caller.
enum Permit {
    Granted,
    NotBefore(Duration),
    /// The grant lapsed, or every call of the window is still in flight: wait
    /// for a renewal or a call's end.
    Suspended,
}

/// The calls that may still share a one-second window at the upstream with
/// a call permitted now: those in flight, and those answered less than
/// [`WINDOW`] ago.
#[derive(Debug)]
struct CallWindow {
    in_flight: u32,
    /// When the recent calls ended, oldest first.
    ended: VecDeque<Instant>,
    cap: u32,
    /// A larger cap and the instant from which it applies.
    raise: Option<(u32, Instant)>,
}

/// Whether the window has room for one more call.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Yes,
    NotBefore(Instant),
    /// Full of calls in flight: the first to end frees a place a second later.
    WhenACallEnds,
}

impl CallWindow {
    fn new(cap: NonZeroU32) -> Self {
        Self {
            in_flight: 0,
            ended: VecDeque::new(),
            cap: cap.get(),
            raise: None,
        }
    }

    fn room(&mut self, now: Instant) -> Room {
        if let Some((cap, at)) = self.raise
            && at <= now
        {
            self.cap = cap;
            self.raise = None;
        }
        while let Some(ended) = self.ended.front() {
            if now.saturating_duration_since(*ended) < WINDOW {
                break;
            }
            self.ended.pop_front();
        }
        if self.counted() < u64::from(self.cap) {
            return Room::Yes;
        }
        let freed = self.ended.front().map(|ended| *ended + WINDOW);
        let raised = self.raise.map(|(_, at)| at);
        match (freed, raised) {
            (Some(a), Some(b)) => Room::NotBefore(a.min(b)),
            (Some(at), None) | (None, Some(at)) => Room::NotBefore(at),
            (None, None) => Room::WhenACallEnds,
        }
    }

    fn counted(&self) -> u64 {
        u64::from(self.in_flight) + self.ended.len() as u64
    }

    fn start(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// Returns whether a caller may be waiting for exactly this.
    fn end(&mut self, now: Instant) -> bool {
        let waited_on = self.ended.is_empty() && self.counted() >= u64::from(self.cap);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ended.push_back(now);
        waited_on
    }

    /// A smaller cap applies at once, a larger one a window later.
    fn set_cap(&mut self, cap: NonZeroU32, now: Instant) {
        let cap = cap.get();
        if cap <= self.cap {
            self.cap = cap;
            self.raise = None;
        } else if self.raise.is_none_or(|(pending, _)| pending != cap) {
            self.raise = Some((cap, now + WINDOW));
        }
    }

    /// No call for a window, then `cap`: what a replica that had no share
    /// gets when it gains one.
    fn reopen(&mut self, cap: NonZeroU32, now: Instant) {
        self.cap = 0;
        self.raise = Some((cap.get(), now + WINDOW));
    }
}

impl UpstreamLimiter {
    /// Starts with a full burst: nothing was called before.
    pub fn new(rate: Rate) -> Self {
        let share = Share::whole(rate);
        let quota = quota_for(share, 1.0);
        Self {
            state: Mutex::new(State {
                share,
                backoff: 1.0,
                last_decrease: None,
                last_adjust: Instant::now(),
                granted_until: None,
                quota,
                limiter: Arc::new(RateLimiter::direct(quota)),
                window: CallWindow::new(share.cap),
            }),
            changed: Notify::new(),
        }
    }

    /// Waits for a permit for one call; hold it until the call is over.
    pub(crate) async fn acquire(&self) -> CallPermit<'_> {
        let started = Instant::now();
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            match self.try_acquire(Instant::now()) {
                Permit::Granted => {
                    return CallPermit {
                        limiter: self,
                        waited: started.elapsed(),
                    };
                }
                Permit::NotBefore(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = changed => {},
                    }
                }
                Permit::Suspended => changed.await,
            }
        }
    }

    /// The share in force, rounded down to whole calls per second (at least
    /// one); see [`UpstreamLimiter::share`] for the exact value.
    #[cfg(test)]
    pub(crate) fn rate(&self) -> Rate {
        let share = self.lock().share;
        let per_second = share.total_per_second.get() / share.replicas.get();
        Rate {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: share.burst,
        }
    }

    #[cfg(test)]
    pub(crate) fn share(&self) -> Share {
        self.lock().share
    }

    /// The calls per second allowed now: the share, less any back-off.
    #[cfg(test)]
    pub(crate) fn permits_per_second(&self) -> f64 {
        effective_per_second(&self.lock())
    }

    /// Makes `rate` the whole share. Returns whether the share changed.
    #[cfg(test)]
    pub(crate) fn set_rate(&self, rate: Rate) -> bool {
        self.set_share(Share::whole(rate))
    }

    /// Returns whether the share changed; the limiter is swapped only if the
    /// quota in force changes with it.
    pub(crate) fn set_share(&self, share: Share) -> bool {
        let mut state = self.lock();
        let changed = state.share != share;
        if changed {
            state.share = share;
            state.window.set_cap(share.cap, Instant::now());
            if state.rebuild() {
                self.changed.notify_waiters();
            }
        }
        // Also when nothing changed: the gauge starts at zero.
        metrics::gauge!(crate::telemetry::metric::RATE_LIMIT_PERMITS_PER_SECOND)
            .set(effective_per_second(&state));
        changed
    }

    /// Sets `zhima_rate_limit_permits_per_second` to the rate in force, for
    /// a replica whose share never changes (SQLite: no leases), where no
    /// [`UpstreamLimiter::set_share`] would ever set it.
    pub(crate) fn record_rate(&self) {
        metrics::gauge!(crate::telemetry::metric::RATE_LIMIT_PERMITS_PER_SECOND)
            .set(effective_per_second(&self.lock()));
    }

    /// Permits are given only before `deadline` until the next grant: the
    /// share belongs to this replica only while its lease is valid.
    /// Renewing a lapsed grant reopens the window only after [`WINDOW`].
    pub(crate) fn grant_until(&self, deadline: Instant) {
        let now = Instant::now();
        let mut state = self.lock();
        let lapsed = state.granted_until.is_some_and(|until| until <= now);
        state.granted_until = Some(deadline);
        if lapsed {
            let cap = state.share.cap;
            state.window.reopen(cap, now);
            self.changed.notify_waiters();
        }
    }

    /// The upstream answered "call rate limited": back off multiplicatively.
    pub(crate) fn note_throttled(&self) {
        self.note_throttled_at(Instant::now());
    }

    fn note_throttled_at(&self, now: Instant) {
        let mut state = self.lock();
        if state
            .last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < ADJUST_PERIOD)
        {
            return;
        }
        state.backoff = (state.backoff * BACKOFF_FACTOR).max(floor_backoff(state.share));
        state.last_decrease = Some(now);
        state.last_adjust = now;
        if state.rebuild() {
            self.changed.notify_waiters();
        }
        metrics::counter!(crate::telemetry::metric::RATE_LIMIT_BACKOFFS_TOTAL).increment(1);
    }

    fn try_acquire(&self, now: Instant) -> Permit {
        let mut state = self.lock();
        if state.granted_until.is_some_and(|until| until <= now) {
            return Permit::Suspended;
        }
        if state.recover_at(now) {
            self.changed.notify_waiters();
        }
        match state.window.room(now) {
            Room::Yes => {}
            Room::NotBefore(at) => return Permit::NotBefore(at.saturating_duration_since(now)),
            Room::WhenACallEnds => return Permit::Suspended,
        }
        match state.limiter.check() {
            Ok(()) => {
                state.window.start();
                Permit::Granted
            }
            Err(not_until) => {
                Permit::NotBefore(not_until.wait_time_from(state.limiter.clock().now()))
            }
        }
    }

    fn finish(&self, now: Instant) {
        if self.lock().window.end(now) {
            self.changed.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    /// One additive step back towards the whole share per [`ADJUST_PERIOD`]
    /// without a throttled answer. Returns whether the limiter was swapped.
    /// Every whole period since the last adjustment counts, also those that
    /// passed without a call (an idle replica asks for no permit, yet "every
    /// second without a throttled answer adds back a tenth").
    fn recover_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last_adjust);
        if self.backoff >= 1.0 || elapsed < ADJUST_PERIOD {
            return false;
        }
        let periods =
            u32::try_from(elapsed.as_millis() / ADJUST_PERIOD.as_millis()).unwrap_or(u32::MAX);
        self.backoff = (self.backoff + RECOVERY_STEP * f64::from(periods)).min(1.0);
        self.last_adjust = if self.backoff >= 1.0 {
            now
        } else {
            self.last_adjust + ADJUST_PERIOD * periods
        };
        self.rebuild()
    }

    /// Swaps in a drained limiter if the quota in force changed.
    fn rebuild(&mut self) -> bool {
        let quota = quota_for(self.share, self.backoff);
        if quota == self.quota {
            return false;
        }
        let limiter = RateLimiter::direct(quota);
        let _ = limiter.check_n(self.share.burst);
        self.quota = quota;
        self.limiter = Arc::new(limiter);
        metrics::gauge!(crate::telemetry::metric::RATE_LIMIT_PERMITS_PER_SECOND)
            .set(effective_per_second(self));
        true
    }
}

/// The smallest back-off fraction: one call per second, or the whole share
/// when the share is smaller than that.
fn floor_backoff(share: Share) -> f64 {
    (1.0 / share.per_second()).min(1.0)
}

fn effective_per_second(state: &State) -> f64 {
    state.share.per_second() * state.backoff.max(floor_backoff(state.share))
}

/// Without back-off the period is exact integer arithmetic, so an unchanged
/// share always yields an equal quota (and no swap).
fn quota_for(share: Share, backoff: f64) -> Quota {
    let period = if backoff >= 1.0 {
        Duration::from_secs(u64::from(share.replicas.get())) / share.total_per_second.get()
    } else {
        let per_second = share.per_second() * backoff.max(floor_backoff(share));
        Duration::from_secs_f64(1.0 / per_second)
    };
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(share.total_per_second))
        .allow_burst(share.burst)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[tokio::test]
    async fn burst_passes_at_once_and_the_rest_is_paced() {
        let limiter = UpstreamLimiter::new(rate(20, 3));
        let started = Instant::now();
        for _ in 0..3 {
            drop(limiter.acquire().await);
        }
        assert!(started.elapsed() < Duration::from_millis(40));
        for _ in 0..4 {
            drop(limiter.acquire().await);
        }
        // four more permits at 20/s need at least ~150 ms after the burst
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn setting_the_same_rate_keeps_the_limiter() {
        let limiter = UpstreamLimiter::new(rate(10, 2));
        assert!(!limiter.set_rate(rate(10, 2)));
        assert!(limiter.set_rate(rate(5, 2)));
        assert_eq!(limiter.rate(), rate(5, 2));
    }

    fn share(total: u32, replicas: u32, burst: u32) -> Share {
        Share {
            total_per_second: NonZeroU32::new(total).unwrap(),
            replicas: NonZeroU32::new(replicas).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            cap: NonZeroU32::new((total + burst) / replicas).unwrap(),
        }
    }

    #[test]
    fn shares_split_the_total_exactly_even_below_one_call_per_second() {
        assert_eq!(share(30, 3, 1).per_second(), 10.0);
        assert_eq!(share(2, 3, 1).per_second(), 2.0 / 3.0);
        let limiter = UpstreamLimiter::new(rate(2, 1));
        limiter.set_share(share(2, 3, 1));
        assert!((limiter.permits_per_second() - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_swapped_limiter_starts_without_a_burst() {
        let limiter = UpstreamLimiter::new(rate(10, 5));
        assert!(limiter.set_share(share(30, 2, 5)));
        assert!(matches!(
            limiter.try_acquire(Instant::now()),
            Permit::NotBefore(_)
        ));
    }

    #[test]
    fn an_unchanged_quota_keeps_the_limiter() {
        let limiter = UpstreamLimiter::new(rate(10, 5));
        let before = Arc::clone(&limiter.lock().limiter);
        assert!(limiter.set_share(share(20, 2, 5)), "the share changed");
        assert!(Arc::ptr_eq(&before, &limiter.lock().limiter), "same quota");
    }

    #[test]
    fn throttling_halves_the_rate_once_a_second_and_recovery_adds_a_tenth() {
        let limiter = UpstreamLimiter::new(rate(40, 2));
        let start = Instant::now();
        limiter.note_throttled_at(start);
        assert_eq!(limiter.permits_per_second(), 20.0);
        limiter.note_throttled_at(start + Duration::from_millis(300));
        assert_eq!(limiter.permits_per_second(), 20.0, "one halving per second");
        limiter.note_throttled_at(start + Duration::from_millis(1100));
        assert_eq!(limiter.permits_per_second(), 10.0);
        let mut now = start + Duration::from_millis(1100);
        let mut steps = 0;
        while limiter.permits_per_second() < 40.0 {
            now += ADJUST_PERIOD;
            limiter.try_acquire(now);
            steps += 1;
            assert!(steps <= 8, "recovers within 8 steps");
        }
        assert_eq!(steps, 8, "back from a quarter in tenths of the share");
    }

    #[test]
    fn idle_seconds_count_towards_recovery() {
        let limiter = UpstreamLimiter::new(rate(40, 2));
        let start = Instant::now();
        limiter.note_throttled_at(start);
        assert_eq!(limiter.permits_per_second(), 20.0);
        limiter.try_acquire(start + Duration::from_millis(2500));
        assert_eq!(
            limiter.permits_per_second(),
            28.0,
            "two idle seconds, two tenths"
        );
        limiter.try_acquire(start + Duration::from_secs(9));
        assert_eq!(
            limiter.permits_per_second(),
            40.0,
            "back to the whole share"
        );
    }

    #[test]
    fn back_off_never_goes_below_one_call_per_second() {
        let limiter = UpstreamLimiter::new(rate(4, 1));
        let mut now = Instant::now();
        for _ in 0..10 {
            limiter.note_throttled_at(now);
            now += ADJUST_PERIOD;
        }
        assert_eq!(limiter.permits_per_second(), 1.0);
    }

    #[tokio::test]
    async fn a_lapsed_grant_suspends_permits_until_it_is_renewed() {
        let limiter = Arc::new(UpstreamLimiter::new(rate(1000, 10)));
        limiter.grant_until(Instant::now());
        assert!(matches!(
            limiter.try_acquire(Instant::now()),
            Permit::Suspended
        ));
        let waiter = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move { limiter.acquire().await.waited() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        limiter.grant_until(Instant::now() + Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the renewal wakes the waiter")
            .unwrap();
    }

    fn cap(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_call_counts_against_the_cap_until_a_second_after_it_ends() {
        let mut window = CallWindow::new(cap(2));
        let t = Instant::now();
        assert_eq!(window.room(t), Room::Yes);
        window.start();
        window.start();
        assert_eq!(window.room(t), Room::WhenACallEnds, "both still in flight");
        let ended = t + Duration::from_millis(300);
        assert!(window.end(ended), "a waiter may be waiting for this end");
        assert_eq!(window.room(ended), Room::NotBefore(ended + WINDOW));
        assert_eq!(
            window.room(ended + WINDOW - Duration::from_millis(1)),
            Room::NotBefore(ended + WINDOW)
        );
        assert_eq!(window.room(ended + WINDOW), Room::Yes);
    }

    #[test]
    fn a_larger_cap_applies_a_window_later_and_a_smaller_one_at_once() {
        let mut window = CallWindow::new(cap(1));
        let t = Instant::now();
        window.start();
        window.set_cap(cap(3), t);
        assert_eq!(window.room(t), Room::NotBefore(t + WINDOW));
        assert_eq!(window.room(t + WINDOW), Room::Yes);
        window.start();
        window.start();
        assert_eq!(window.room(t + WINDOW), Room::WhenACallEnds);
        window.set_cap(cap(2), t + WINDOW);
        window.end(t + WINDOW);
        assert_eq!(
            window.room(t + WINDOW),
            Room::NotBefore(t + WINDOW + WINDOW),
            "three counted, the smaller cap of two is in force at once"
        );
        window.end(t + WINDOW);
        window.end(t + WINDOW);
        window.reopen(cap(2), t + WINDOW * 3);
        assert_eq!(window.room(t + WINDOW * 3), Room::NotBefore(t + WINDOW * 4));
        assert_eq!(window.room(t + WINDOW * 4), Room::Yes);
    }

    #[tokio::test]
    async fn calls_in_flight_hold_back_permits_beyond_the_cap_whatever_the_rate() {
        let limiter = UpstreamLimiter::new(rate(1000, 3));
        assert!(limiter.set_share(Share {
            cap: cap(3),
            ..Share::whole(rate(1000, 3))
        }));
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while held.len() < 3 {
            assert!(Instant::now() < deadline, "three permits within the burst");
            held.push(limiter.acquire().await);
        }
        assert!(matches!(
            limiter.try_acquire(Instant::now()),
            Permit::Suspended
        ));
        drop(held.pop());
        let now = Instant::now();
        match limiter.try_acquire(now) {
            Permit::NotBefore(wait) => assert!(wait > WINDOW / 2, "{wait:?}"),
            _ => panic!("an ended call still counts for a second"),
        }
    }

    #[test]
    fn a_renewed_grant_lets_calls_through_only_a_window_later() {
        let limiter = UpstreamLimiter::new(rate(1000, 10));
        limiter.grant_until(Instant::now());
        limiter.grant_until(Instant::now() + Duration::from_secs(60));
        match limiter.try_acquire(Instant::now()) {
            Permit::NotBefore(wait) => assert!(wait > WINDOW / 2, "{wait:?}"),
            _ => {
                panic!("the other replicas' calls under the old shares may still be in the window")
            }
        }
    }
}
