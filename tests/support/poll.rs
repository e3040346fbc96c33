//! Waiting for a condition in tests: one poller, which fails the test with
//! what it waited for when the time is up.

use std::future::Future;
use std::time::Duration;

const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` every 50 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `condition` every 50 ms until it holds, or fails after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(limit, what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await;
}
