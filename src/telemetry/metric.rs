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
/// Counter, by [`RESULT`]: gateway probes made while paused (`app`); they
/// reach the upstream but are no job's call, so they are not in
/// [`UPSTREAM_CALLS_TOTAL`].
pub(crate) const CONFIG_PROBES_TOTAL: &str = "zhima_config_probes_total";
/// Gauge, by [`QUEUE`]: ready messages in the main, each delay and the dead
/// queue, read from the broker every few seconds by one replica (the live
/// lease with the lowest worker_id; SQLite: the one replica); `NaN` on the
/// others, so `max by (queue)` gives the broker's figure.
pub(crate) const QUEUE_MESSAGES_READY: &str = "zhima_queue_messages_ready";
/// Gauge, by [`QUEUE`]: consumers of each queue, read with
/// [`QUEUE_MESSAGES_READY`].
pub(crate) const QUEUE_CONSUMERS: &str = "zhima_queue_consumers";
/// Gauge: 1 on the replica that refreshes the queue gauges, 0 elsewhere.
pub(crate) const QUEUE_DEPTH_REPORTER: &str = "zhima_queue_depth_reporter";
/// Gauge, always 1, by [`VERSION`]: which build runs.
pub(crate) const BUILD_INFO: &str = "zhima_build_info";

/// Label of [`JOBS_TOTAL`]: a [`crate::processor::JobOutcome`].
pub(crate) const OUTCOME: &str = "outcome";
/// Label of [`UPSTREAM_CALLS_TOTAL`]: the gateway's code, or `HTTP_<status>`,
/// or `NONE` when no answer came.
pub(crate) const CODE: &str = "code";
/// Label of [`UPSTREAM_CALLS_TOTAL`]: the gateway's sub_code, empty if none.
pub(crate) const SUB_CODE: &str = "sub_code";
/// Label of [`QUEUE_MESSAGES_READY`] and [`QUEUE_CONSUMERS`]: the queue's name.
pub(crate) const QUEUE: &str = "queue";
/// Label of [`QUEUE_MESSAGES_READY`] and [`QUEUE_CONSUMERS`]: `main`,
/// `delay` or `dead`, so alerts need not know the configured names.
pub(crate) const KIND: &str = "kind";
/// Label of [`BUILD_INFO`]: the crate version (`CARGO_PKG_VERSION`).
pub(crate) const VERSION: &str = "version";
/// Label of [`CONFIG_PROBES_TOTAL`]: [`PROBE_PASSED`] or [`PROBE_FAILED`].
pub(crate) const RESULT: &str = "result";
/// A probe whose answer shows the configuration works again.
pub(crate) const PROBE_PASSED: &str = "passed";
/// A probe that still meets the configuration fault (or no answer).
pub(crate) const PROBE_FAILED: &str = "failed";
/// [`CODE`] of an answer whose signature is missing or wrong: its code was
/// not trusted, so it is not counted as one (the claimed code goes in
/// [`SUB_CODE`]).
pub(crate) const CODE_UNVERIFIED: &str = "UNVERIFIED";

/// Counter: result events published to the results exchange and confirmed
/// (`results::relay`).
pub(crate) const RESULT_EVENTS_PUBLISHED_TOTAL: &str = "zhima_result_events_published_total";
/// Gauge: result events in the outbox not yet sent (every replica's).
pub(crate) const RESULT_EVENTS_BACKLOG: &str = "zhima_result_events_backlog";

/// Gauge, by [`ROLE`]: seconds until a configured certificate (certificate
/// mode) stops being valid; negative once expired (`upstream::reload`).
pub(crate) const CERTIFICATE_EXPIRY_SECONDS: &str = "zhima_certificate_expiry_seconds";
/// Label of [`CERTIFICATE_EXPIRY_SECONDS`]: `app`, `alipay` or `root` (the
/// root bundle's RSA root that expires first).
pub(crate) const ROLE: &str = "role";

/// Gauge: units of the statement day's budget taken so far (`crate::spend`):
/// billed queries, plus those whose outcome is still unknown. Shared by every
/// replica through the database; each replica shows the count it last saw.
pub(crate) const SPEND_BILLED_TODAY: &str = "zhima_spend_billed_today";
/// Gauge: `spend.daily_limit` in force on this replica (0 = no limit).
pub(crate) const SPEND_DAILY_LIMIT: &str = "zhima_spend_daily_limit";
/// Gauge: 1 while this replica holds consumption at the daily limit.
pub(crate) const SPEND_HELD: &str = "zhima_spend_held";
/// Counter: deliveries turned back at the daily limit (each waits in the queue).
pub(crate) const SPEND_REFUSED_TOTAL: &str = "zhima_spend_refused_total";
