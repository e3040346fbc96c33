//! The operator's HTTP endpoint of `run`: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (broker and database
//! reachable, consumption not paused).
//!
//! Off unless `http.listen` is set, so replicas on one host never collide.
//! It only reads state; it never changes how jobs are processed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::control::Control;
use crate::store::JobStore;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
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
pub struct Readiness {
    pub broker_connected: AtomicBool,
    pub store: JobStore,
    pub control: Arc<Control>,
}

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global Prometheus recorder and registers every counter and
/// gauge at zero, so dashboards see the series before the first job
/// (histograms appear with their first sample: a fake zero would be data).
pub fn install_metrics() -> Result<PrometheusHandle, HealthError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(HealthError::Recorder)?
        .install_recorder()
        .map_err(HealthError::Recorder)?;
    register_metrics();
    Ok(handle)
}

fn register_metrics() {
    metrics::describe_counter!("zhima_jobs_total", "Jobs handled, by outcome");
    for outcome in [
        "succeeded",
        "failed",
        "retried",
        "handed_back",
        "duplicate",
        "invalid",
    ] {
        metrics::counter!("zhima_jobs_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        "zhima_upstream_calls_total",
        "Gateway calls, by code and sub_code"
    );
    metrics::describe_histogram!(
        "zhima_upstream_latency_seconds",
        metrics::Unit::Seconds,
        "Gateway call latency"
    );
    metrics::describe_counter!(
        "zhima_retries_scheduled_total",
        "Retry copies published to a delay queue"
    );
    metrics::counter!("zhima_retries_scheduled_total").increment(0);
    metrics::describe_histogram!(
        "zhima_rate_limit_wait_seconds",
        metrics::Unit::Seconds,
        "Time spent waiting for a rate-limit permit"
    );
    metrics::describe_gauge!("zhima_jobs_in_flight", "Jobs being processed now");
    metrics::gauge!("zhima_jobs_in_flight").set(0.0);
    metrics::describe_gauge!(
        "zhima_consumption_paused",
        "1 while consumption is paused on a configuration fault"
    );
    metrics::gauge!("zhima_consumption_paused").set(0.0);
    metrics::describe_gauge!(
        "zhima_replicas_live",
        "Replicas sharing the upstream rate limit (live leases)"
    );
    metrics::gauge!("zhima_replicas_live").set(0.0);
    metrics::describe_gauge!(
        "zhima_rate_limit_permits_per_second",
        "This replica's current upstream rate (its share, after back-off)"
    );
    metrics::gauge!("zhima_rate_limit_permits_per_second").set(0.0);
    metrics::describe_counter!(
        "zhima_rate_limit_backoffs_total",
        "Times the upstream's call-rate limit halved this replica's rate"
    );
    metrics::counter!("zhima_rate_limit_backoffs_total").increment(0);
}

/// Binds `listen` (port 0 allowed), logs the real address and serves until
/// the process ends. Returns the bound address.
pub async fn serve(
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
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(error.message = %error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(addr)
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
