//! The operator's HTTP endpoint of `run`: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (broker and database
//! reachable, consumption not paused).
//!
//! Off unless `http.listen` is set, so replicas on one host never collide.
//! It only reads state; it never changes how jobs are processed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::control::Control;
use crate::processor::JobOutcome;
use crate::store::JobStore;
use crate::telemetry::metric;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthError {
    #[error("could not install the metrics recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
    #[error("could not listen on http.listen {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `/readyz` looks at.
pub(crate) struct Readiness {
    pub(crate) broker_connected: AtomicBool,
    pub(crate) store: JobStore,
    pub(crate) control: Arc<Control>,
}

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global Prometheus recorder and registers every counter and
/// gauge at zero, so dashboards see the series before the first job
/// (histograms appear with their first sample: a fake zero would be data).
pub(crate) fn install_metrics() -> Result<PrometheusHandle, HealthError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(HealthError::Recorder)?
        .install_recorder()
        .map_err(HealthError::Recorder)?;
    register_metrics();
    Ok(handle)
}

fn register_metrics() {
    metrics::describe_counter!(metric::JOBS_TOTAL, "Jobs handled, by outcome");
    for outcome in JobOutcome::ALL {
        metrics::counter!(metric::JOBS_TOTAL, metric::OUTCOME => outcome.as_str()).increment(0);
    }
    metrics::describe_counter!(
        metric::UPSTREAM_CALLS_TOTAL,
        "Gateway calls, by code and sub_code"
    );
    // Other codes appear with their first call; success is the series every
    // error ratio divides by.
    metrics::counter!(metric::UPSTREAM_CALLS_TOTAL, metric::CODE => "10000", metric::SUB_CODE => "")
        .increment(0);
    metrics::describe_histogram!(
        metric::UPSTREAM_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Gateway call latency"
    );
    metrics::describe_counter!(
        metric::RETRIES_SCHEDULED_TOTAL,
        "Retry copies published to a delay queue"
    );
    metrics::counter!(metric::RETRIES_SCHEDULED_TOTAL).increment(0);
    metrics::describe_histogram!(
        metric::RATE_LIMIT_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time spent waiting for a rate-limit permit"
    );
    metrics::describe_gauge!(metric::JOBS_IN_FLIGHT, "Jobs being processed now");
    metrics::gauge!(metric::JOBS_IN_FLIGHT).set(0.0);
    metrics::describe_gauge!(
        metric::CONSUMPTION_PAUSED,
        "1 while consumption is paused on a configuration fault"
    );
    metrics::gauge!(metric::CONSUMPTION_PAUSED).set(0.0);
    metrics::describe_gauge!(
        metric::REPLICAS_LIVE,
        "Replicas sharing the upstream rate limit (live leases)"
    );
    metrics::gauge!(metric::REPLICAS_LIVE).set(0.0);
    metrics::describe_gauge!(
        metric::RATE_LIMIT_PERMITS_PER_SECOND,
        "This replica's current upstream rate (its share, after back-off)"
    );
    metrics::gauge!(metric::RATE_LIMIT_PERMITS_PER_SECOND).set(0.0);
    metrics::describe_counter!(
        metric::RATE_LIMIT_BACKOFFS_TOTAL,
        "Times the upstream's call-rate limit halved this replica's rate"
    );
    metrics::counter!(metric::RATE_LIMIT_BACKOFFS_TOTAL).increment(0);
    metrics::describe_counter!(
        metric::CONFIG_PROBES_TOTAL,
        "Gateway probes made while paused on a configuration fault, by result"
    );
    metrics::describe_gauge!(
        metric::BUILD_INFO,
        "Always 1; the version label names the build"
    );
    metrics::gauge!(metric::BUILD_INFO, metric::VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::describe_gauge!(
        metric::QUEUE_MESSAGES_READY,
        "Ready messages per queue (main, delay, dead), from the reporting replica; NaN elsewhere"
    );
    metrics::describe_gauge!(
        metric::QUEUE_CONSUMERS,
        "Consumers per queue, from the reporting replica; NaN elsewhere"
    );
    metrics::describe_gauge!(
        metric::QUEUE_DEPTH_REPORTER,
        "1 on the replica that refreshes the queue gauges"
    );
    metrics::gauge!(metric::QUEUE_DEPTH_REPORTER).set(0.0);
    for result in [metric::PROBE_PASSED, metric::PROBE_FAILED] {
        metrics::counter!(metric::CONFIG_PROBES_TOTAL, metric::RESULT => result).increment(0);
    }
    metrics::describe_counter!(
        metric::RESULT_EVENTS_PUBLISHED_TOTAL,
        "Result events published to the results exchange and confirmed"
    );
    metrics::counter!(metric::RESULT_EVENTS_PUBLISHED_TOTAL).increment(0);
    metrics::describe_gauge!(
        metric::RESULT_EVENTS_BACKLOG,
        "Result events in the outbox not yet sent (every replica's)"
    );
    metrics::gauge!(metric::RESULT_EVENTS_BACKLOG).set(0.0);
    metrics::describe_gauge!(
        metric::CERTIFICATE_EXPIRY_SECONDS,
        "Certificate mode: seconds until a configured certificate expires, by role"
    );
    register_spend_metrics();
}

/// The daily budget's series (`crate::spend`), at zero until it runs.
fn register_spend_metrics() {
    metrics::describe_gauge!(
        metric::SPEND_BILLED_TODAY,
        "Units of the statement day's budget used (billed, or outcome unknown), every replica's"
    );
    metrics::gauge!(metric::SPEND_BILLED_TODAY).set(0.0);
    metrics::describe_gauge!(
        metric::SPEND_DAILY_LIMIT,
        "spend.daily_limit in force on this replica (0 = no limit)"
    );
    metrics::gauge!(metric::SPEND_DAILY_LIMIT).set(0.0);
    metrics::describe_gauge!(
        metric::SPEND_HELD,
        "1 while consumption is held at the daily spend limit"
    );
    metrics::gauge!(metric::SPEND_HELD).set(0.0);
    metrics::describe_counter!(
        metric::SPEND_REFUSED_TOTAL,
        "Deliveries turned back at the daily spend limit"
    );
    metrics::counter!(metric::SPEND_REFUSED_TOTAL).increment(0);
}

/// Binds `listen` (port 0 allowed), logs the real address and serves until
/// the process ends. Returns the bound address.
pub(crate) async fn serve(
    listen: &str,
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
) -> Result<SocketAddr, HealthError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| HealthError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HealthError::Bind {
        addr: listen.to_owned(),
        source,
    })?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness);
    tokio::spawn(
        serve_http(listener, app, HEADER_READ_TIMEOUT, std::future::pending()).in_current_span(),
    );
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(addr)
}

/// How long a connection may take to send a complete request header (also
/// between requests on a kept-alive connection) before it is dropped, so that
/// idle or trickling clients cannot hold connections (and file descriptors)
/// open forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` over HTTP/1.1 on `listener` until `shutdown` completes, then
/// lets requests in progress finish (idle kept-alive connections close at
/// once). Connections that send no complete request header within
/// `header_timeout` are dropped. Used by both HTTP servers of the crate
/// (`http.listen` and the sandbox): axum's own `serve` has no such timeout.
pub(crate) async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error.message = %error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop_seen = stop_seen.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop_seen.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, String) {
    if !readiness.broker_connected.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker not connected\n".into(),
        );
    }
    if let Err(error) = readiness.store.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {error}\n"),
        );
    }
    if let Some(reason) = readiness.control.pause_reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("consumption paused: {reason}\n"),
        );
    }
    (StatusCode::OK, "ready\n".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn server(header_timeout: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        tokio::spawn(serve_http(
            listener,
            app,
            header_timeout,
            std::future::pending(),
        ));
        addr
    }

    /// Reads until the server closes the connection (or a deadline passes).
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
        let mut seen = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buffer = [0u8; 512];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection was left open");
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn a_connection_without_a_complete_request_header_is_dropped() {
        let addr = server(Duration::from_millis(300)).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = read_to_close(&mut silent).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );

        let mut trickling = tokio::net::TcpStream::connect(addr).await.unwrap();
        trickling
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut trickling).await;
        assert!(!answer.contains("ok\n"), "{answer}");

        let mut complete = tokio::net::TcpStream::connect(addr).await.unwrap();
        complete
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut complete).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
    }
}
