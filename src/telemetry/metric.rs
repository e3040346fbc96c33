//! Every Prometheus metric name and label key the worker emits, in one place,
//! so a dashboard, an alert or a test can find what a series is called, and a
//! rename touches one line.
//!
//! Names only: this module records nothing and installs nothing (the
//! recorder and the zero registration are in `health`). Label values that
//! come from an outcome enum use that enum's `as_str`
//! ([`crate::processor::JobOutcome`] for [`JOBS_TOTAL`]).

/// Counter, by [`OUTCOME`]: one increment per job result.
pub(crate) const JOBS_TOTAL: &str = "zhima_jobs_total";
/// Counter, by [`CODE`] and [`SUB_CODE`]: one increment per gateway call.
pub(crate) const UPSTREAM_CALLS_TOTAL: &str = "zhima_upstream_calls_total";
/// Histogram: one sample per gateway call.
pub(crate) const UPSTREAM_LATENCY_SECONDS: &str = "zhima_upstream_latency_seconds";
/// Counter: retry copies published to a delay queue (`queue::consumer`).
pub(crate) const RETRIES_SCHEDULED_TOTAL: &str = "zhima_retries_scheduled_total";
/// Histogram: time spent waiting for a rate-limit permit.
pub(crate) const RATE_LIMIT_WAIT_SECONDS: &str = "zhima_rate_limit_wait_seconds";
/// Gauge: jobs being processed now (`queue::session`).
pub(crate) const JOBS_IN_FLIGHT: &str = "zhima_jobs_in_flight";
/// Gauge: 1 while consumption is paused on a configuration fault.
pub(crate) const CONSUMPTION_PAUSED: &str = "zhima_consumption_paused";
/// Gauge: replicas sharing the upstream rate limit (`cluster`).
pub(crate) const REPLICAS_LIVE: &str = "zhima_replicas_live";
/// Gauge: this replica's current upstream rate (`rate_limit`).
pub(crate) const RATE_LIMIT_PERMITS_PER_SECOND: &str = "zhima_rate_limit_permits_per_second";
/// Counter: times the upstream's call-rate limit halved this replica's rate.
pub(crate) const RATE_LIMIT_BACKOFFS_TOTAL: &str = "zhima_rate_limit_backoffs_total";

/// Label of [`JOBS_TOTAL`]: a [`crate::processor::JobOutcome`].
pub(crate) const OUTCOME: &str = "outcome";
/// Label of [`UPSTREAM_CALLS_TOTAL`]: the gateway's code, or `HTTP_<status>`,
/// or `NONE` when no answer came.
pub(crate) const CODE: &str = "code";
/// Label of [`UPSTREAM_CALLS_TOTAL`]: the gateway's sub_code, empty if none.
pub(crate) const SUB_CODE: &str = "sub_code";

/// Gauge, by [`ROLE`]: seconds until a configured certificate (certificate
/// mode) stops being valid; negative once expired (`upstream::reload`).
pub(crate) const CERTIFICATE_EXPIRY_SECONDS: &str = "zhima_certificate_expiry_seconds";
/// Label of [`CERTIFICATE_EXPIRY_SECONDS`]: `app`, `alipay` or `root` (the
/// root bundle's RSA root that expires first).
pub(crate) const ROLE: &str = "role";
