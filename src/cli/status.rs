//! `status` and `status --batch ID`: gathers the database's and the broker's
//! figures, prints them as a table or JSON, once or every `--watch` seconds.
//!
//! It only reads (see `crate::queue::status` for how the dead queue's
//! reasons are read without losing a message) and holds no state between
//! refreshes but the open database pool.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::queue::status::{self as broker, BrokerOverview, QueueCounts};
use crate::store::{BatchRecord, JobStatus, JobStore, StoreOverview};

/// `status` exits 1 when `--batch` names a batch nobody knows.
const EXIT_UNKNOWN_BATCH: u8 = 1;
/// The window of "the rate over the last minute", in seconds.
const RATE_WINDOW_S: f64 = 60.0;

/// How `status` was asked to run.
#[derive(Debug, Clone)]
pub(crate) struct StatusOptions {
    pub(crate) batch: Option<String>,
    pub(crate) json: bool,
    pub(crate) watch: Option<Duration>,
}

/// `--watch [SECONDS]`: a whole number of seconds from 1 to 3600.
pub(crate) fn parse_watch(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(seconds @ 1..=3600) => Ok(Duration::from_secs(seconds)),
        _ => Err(format!(
            "{text:?} is not a refresh interval: give whole seconds from 1 to 3600 (e.g. --watch 5)"
        )),
    }
}

pub(crate) async fn status(
    settings: &Settings,
    options: StatusOptions,
) -> anyhow::Result<ExitCode> {
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let Some(interval) = options.watch else {
        return show_once(settings, &store, &options).await;
    };
    let clear = !options.json && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        match show_once(settings, &store, &options).await {
            Ok(code) if code != ExitCode::SUCCESS => return Ok(code),
            Ok(_) => {}
            Err(error) if first => return Err(error),
            // Later failures (a broker restart) are shown, and retried.
            Err(error) => eprintln!("error: {error:#}"),
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn show_once(
    settings: &Settings,
    store: &JobStore,
    options: &StatusOptions,
) -> anyhow::Result<ExitCode> {
    if let Some(batch_id) = &options.batch {
        let Some(record) = store.batch(batch_id).await.context(MIGRATE_HINT)? else {
            eprintln!("error: no batch {batch_id:?}: no `batches` row and no job carries it");
            return Ok(ExitCode::from(EXIT_UNKNOWN_BATCH));
        };
        let progress = BatchProgress::from_record(batch_id, &record);
        match options.json {
            true => println!("{}", serde_json::to_string(&progress)?),
            false => print!("{}", render_batch(&progress)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let overview = store.overview().await.context(MIGRATE_HINT)?;
    let registered = store
        .registered_delay_queues()
        .await
        .context(MIGRATE_HINT)?;
    let queues = broker::broker_overview(settings, &registered)
        .await
        .context("reading the queues")?;
    let report = StatusReport::new(&overview, queues);
    match options.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => print!("{}", render_status(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

const MIGRATE_HINT: &str = "reading the database (has `zhima-worker migrate` run?)";

/// What `status` prints, also its `--json` shape.
#[derive(Debug, serde::Serialize)]
pub(crate) struct StatusReport {
    /// Rows by status (a job has a row once a worker picked it up).
    pub(crate) jobs: std::collections::BTreeMap<&'static str, i64>,
    /// Of the `succeeded` rows, those answered from a stored paid answer
    /// (answer reuse, `reuse.max_age_days`): never sent upstream, not billed.
    pub(crate) reused: i64,
    /// Jobs finished in the last minute, per second.
    pub(crate) jobs_per_second_last_minute: f64,
    /// Live leases; `null` on SQLite (no leases: one replica at most).
    pub(crate) replicas: Option<usize>,
    pub(crate) replica_ids: Option<Vec<String>>,
    pub(crate) queues: BrokerOverview,
}

impl StatusReport {
    pub(crate) fn new(store: &StoreOverview, queues: BrokerOverview) -> Self {
        Self {
            jobs: store
                .counts
                .iter()
                .map(|(status, count)| (status.as_str(), *count))
                .collect(),
            reused: store.reused,
            jobs_per_second_last_minute: per_second(store.completed_last_minute),
            replicas: store.live_replicas.as_ref().map(Vec::len),
            replica_ids: store.live_replicas.clone(),
            queues,
        }
    }
}

fn per_second(completed_last_minute: i64) -> f64 {
    let rate = completed_last_minute as f64 / RATE_WINDOW_S;
    (rate * 100.0).round() / 100.0
}

/// One batch's progress, also its `--json` shape.
#[derive(Debug, PartialEq, serde::Serialize)]
pub(crate) struct BatchProgress {
    pub(crate) batch_id: String,
    /// `null` until `enqueue` has published the whole batch.
    pub(crate) total: Option<i64>,
    pub(crate) succeeded: i64,
    pub(crate) failed: i64,
    /// Picked up, not final (pending or retrying).
    pub(crate) in_progress: i64,
    /// Published but not picked up yet; `null` while the total is unknown.
    pub(crate) not_started: Option<i64>,
    pub(crate) jobs_per_second_last_minute: f64,
    /// Seconds until every job is final at the last minute's rate; `null`
    /// when the total is unknown or nothing finished in the last minute.
    pub(crate) eta_seconds: Option<u64>,
    pub(crate) complete: bool,
    /// Whether `batches` has the batch (a producer may choose a batch id
    /// that no `enqueue` registered: its total is never known).
    pub(crate) registered: bool,
}

impl BatchProgress {
    pub(crate) fn from_record(batch_id: &str, record: &BatchRecord) -> Self {
        let count = |wanted: JobStatus| {
            record
                .counts
                .iter()
                .find(|(status, _)| *status == wanted)
                .map_or(0, |(_, count)| *count)
        };
        let succeeded = count(JobStatus::Succeeded);
        let failed = count(JobStatus::Failed);
        let in_progress = count(JobStatus::Pending) + count(JobStatus::Retrying);
        let seen = succeeded + failed + in_progress;
        let not_started = record.size.map(|size| (size - seen).max(0));
        let remaining = not_started.map(|waiting| waiting + in_progress);
        let rate = record.completed_last_minute as f64 / RATE_WINDOW_S;
        let eta_seconds = match remaining {
            Some(0) => Some(0),
            Some(left) if rate > 0.0 => Some((left as f64 / rate).ceil() as u64),
            _ => None,
        };
        Self {
            batch_id: batch_id.to_owned(),
            total: record.size,
            succeeded,
            failed,
            in_progress,
            not_started,
            jobs_per_second_last_minute: per_second(record.completed_last_minute),
            eta_seconds,
            complete: remaining == Some(0),
            registered: record.registered,
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn human_duration(seconds: u64) -> String {
    let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, _) => format!("{minutes}m{secs:02}s"),
        _ => format!("{hours}h{minutes:02}m"),
    }
}

pub(crate) fn render_batch(progress: &BatchProgress) -> String {
    let unknown = match progress.registered {
        true => "unknown until enqueue finishes",
        false => "unknown: no `batches` row (a batch id the producer chose)",
    };
    let total = progress
        .total
        .map_or_else(|| unknown.to_owned(), |total| total.to_string());
    let not_started = progress
        .not_started
        .map_or_else(|| unknown.to_owned(), |n| n.to_string());
    let eta = match (progress.complete, progress.eta_seconds) {
        (true, _) => "done".to_owned(),
        (false, Some(seconds)) => human_duration(seconds),
        (false, None) if progress.total.is_none() => unknown.to_owned(),
        (false, None) => "unknown: no job finished in the last minute".to_owned(),
    };
    let rows = [
        ("total", total),
        ("succeeded", progress.succeeded.to_string()),
        ("failed", progress.failed.to_string()),
        ("in progress", progress.in_progress.to_string()),
        ("not yet started", not_started),
        (
            "rate (last minute)",
            format!("{}/s", progress.jobs_per_second_last_minute),
        ),
        ("ETA", eta),
    ];
    let mut out = format!("BATCH {}\n", progress.batch_id);
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<18}  {value}");
    }
    out
}

/// What the READY column shows for a queue that does not exist.
const NOT_DECLARED: &str = "not declared";

pub(crate) fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut jobs = vec![row(["JOBS (database rows)", "", "COUNT", ""])];
    for status in JobStatus::ALL {
        let count = report.jobs.get(status.as_str()).copied().unwrap_or(0);
        jobs.push(row([status.as_str(), "", &count.to_string(), ""]));
    }
    let reused = report.reused.to_string();
    jobs.push(row(["(succeeded by reuse)", "", &reused, ""]));
    let _ = write!(out, "{}", align(&jobs));
    let _ = writeln!(
        out,
        "rate over the last minute: {}/s",
        report.jobs_per_second_last_minute
    );
    let _ = match &report.replica_ids {
        Some(ids) if ids.is_empty() => writeln!(out, "replicas (live leases): 0"),
        Some(ids) => writeln!(
            out,
            "replicas (live leases): {} ({})",
            ids.len(),
            ids.join(", ")
        ),
        None => writeln!(
            out,
            "replicas: SQLite keeps no leases (one replica at most)"
        ),
    };
    out.push('\n');
    let queues = &report.queues;
    let mut rows = vec![row(["QUEUE (broker)", "NAME", "READY", "CONSUMERS"])];
    rows.push(queue_row("main", &queues.main));
    let retry = match queues.delays.iter().any(|delay| delay.counts.exists) {
        true => queues.retry_total().to_string(),
        false => NOT_DECLARED.to_owned(),
    };
    rows.push(row([
        "retry",
        &format!("({} delay queues)", queues.delays.len()),
        &retry,
        "",
    ]));
    for delay in &queues.delays {
        let label = match delay.current {
            true => format!("  {}ms", delay.delay_ms),
            false => format!("  {}ms (earlier config)", delay.delay_ms),
        };
        rows.push(queue_row(&label, &delay.counts));
    }
    rows.push(queue_row("dead", &queues.dead));
    let _ = write!(out, "{}", align(&rows));
    render_dead_reasons(&mut out, queues);
    if !queues.main.exists {
        let _ = writeln!(
            out,
            "\nqueue {} does not exist yet: run `zhima-worker run` or `enqueue` once",
            queues.main.name
        );
    }
    let _ = writeln!(
        out,
        "\nREADY counts messages waiting; unacknowledged ones (held by workers) are not \
         reported over AMQP: see zhima_jobs_in_flight on /metrics, or \
         `rabbitmqctl list_queues name messages_unacknowledged`."
    );
    out
}

fn render_dead_reasons(out: &mut String, queues: &BrokerOverview) {
    let reasons = &queues.dead_reasons;
    if reasons.read == 0 {
        return;
    }
    let mut rows = vec![row(["DEAD BY REASON (x-zhima-error)", "", "COUNT", ""])];
    for (reason, count) in &reasons.by_reason {
        rows.push(row([reason, "", &count.to_string(), ""]));
    }
    out.push('\n');
    let _ = write!(out, "{}", align(&rows));
    if let Some(partial) = &reasons.partial {
        let _ = writeln!(out, "(reasons of {} messages: {partial})", reasons.read);
    }
}

type Row = [String; 4];

fn row(cells: [&str; 4]) -> Row {
    cells.map(str::to_owned)
}

fn queue_row(label: &str, counts: &QueueCounts) -> Row {
    let number = |n: Option<u32>| n.map_or_else(String::new, |n| n.to_string());
    let ready = match counts.exists {
        true => number(counts.ready),
        false => NOT_DECLARED.to_owned(),
    };
    [
        label.to_owned(),
        counts.name.clone(),
        ready,
        number(counts.consumers),
    ]
}

/// Left-aligned text columns, right-aligned number columns.
fn align(rows: &[Row]) -> String {
    let mut widths = [0usize; 4];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let [first, second, third, fourth] = widths;
    let mut out = String::new();
    for [label, name, number, consumers] in rows {
        let line =
            format!("{label:<first$}  {name:<second$}  {number:>third$}  {consumers:>fourth$}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn record(size: Option<i64>, counts: [i64; 4], last_minute: i64) -> BatchRecord {
        BatchRecord {
            size,
            registered: true,
            counts: JobStatus::ALL.into_iter().zip(counts).collect(),
            completed_last_minute: last_minute,
        }
    }

    #[test]
    fn batch_progress_counts_what_is_not_started_and_an_eta_at_the_last_minutes_rate() {
        // pending 5, retrying 5, succeeded 80, failed 10 of 1000; 120 in the last minute.
        let progress = BatchProgress::from_record("b1", &record(Some(1000), [5, 5, 80, 10], 120));
        assert_eq!(progress.in_progress, 10);
        assert_eq!(progress.not_started, Some(900));
        assert_eq!(progress.jobs_per_second_last_minute, 2.0);
        assert_eq!(progress.eta_seconds, Some(455), "910 left at 2/s");
        assert!(!progress.complete);
        let text = render_batch(&progress);
        assert!(text.contains("not yet started     900"), "{text}");
        assert!(text.contains("ETA                 7m35s"), "{text}");
    }

    #[test]
    fn a_batch_still_being_enqueued_has_no_total_and_says_so() {
        let mut unregistered = record(None, [0, 0, 1, 0], 0);
        unregistered.registered = false;
        let text = render_batch(&BatchProgress::from_record("b9", &unregistered));
        assert!(text.contains("no `batches` row"), "{text}");
        let progress = BatchProgress::from_record("b2", &record(None, [0, 0, 3, 0], 3));
        assert_eq!(progress.total, None);
        assert_eq!(progress.not_started, None);
        assert_eq!(progress.eta_seconds, None);
        let text = render_batch(&progress);
        assert!(
            text.contains("total               unknown until enqueue finishes"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_batch_is_done_and_an_idle_one_has_no_eta() {
        let done = BatchProgress::from_record("b3", &record(Some(4), [0, 0, 3, 1], 0));
        assert!(done.complete);
        assert!(render_batch(&done).contains("ETA                 done"));
        let idle = BatchProgress::from_record("b4", &record(Some(9), [0, 0, 3, 1], 0));
        assert_eq!(idle.eta_seconds, None);
        assert!(render_batch(&idle).contains("no job finished in the last minute"));
    }

    #[test]
    fn watch_and_batch_values_are_checked() {
        assert_eq!(parse_watch("5"), Ok(Duration::from_secs(5)));
        for bad in ["0", "-1", "3601", "1.5", "", "ten"] {
            assert!(parse_watch(bad).is_err(), "{bad}");
        }
        assert!(crate::cli::parse_batch_id("batch_2024-01").is_ok());
        for bad in ["", "a b", "x;y", &"b".repeat(65), "批次"] {
            assert!(crate::cli::parse_batch_id(bad).is_err(), "{bad}");
        }
    }

    fn counts(name: &str, ready: Option<u32>) -> QueueCounts {
        QueueCounts {
            name: name.into(),
            exists: ready.is_some(),
            ready,
            consumers: ready.map(|_| 1),
        }
    }

    fn report(main: Option<u32>, delays: &[(u64, bool, Option<u32>)]) -> StatusReport {
        let store = StoreOverview {
            counts: JobStatus::ALL.into_iter().map(|s| (s, 0)).collect(),
            completed_last_minute: 30,
            live_replicas: Some(vec!["h-1".into()]),
            reused: 4,
        };
        let queues = BrokerOverview {
            main: counts("q", main),
            delays: delays
                .iter()
                .map(|(ms, current, ready)| broker::DelayQueue {
                    delay_ms: *ms,
                    current: *current,
                    counts: counts(&format!("q.delay.{ms}"), *ready),
                })
                .collect(),
            dead: counts("q.dead", main.map(|_| 0)),
            dead_reasons: Default::default(),
        };
        StatusReport::new(&store, queues)
    }

    #[test]
    fn status_lists_every_status_sums_the_delay_queues_and_marks_earlier_ones() {
        let text = render_status(&report(
            Some(3),
            &[
                (500, false, Some(1)),
                (1000, true, Some(2)),
                (2000, true, Some(5)),
            ],
        ));
        for status in ["pending", "retrying", "succeeded", "failed"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(status) && l.ends_with(" 0")),
                "{text}"
            );
        }
        let cells = |label: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(label)).unwrap();
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(cells("main"), ["main", "q", "3", "1"]);
        assert_eq!(cells("retry ").last().unwrap(), "8");
        assert_eq!(
            cells("  500ms"),
            ["500ms", "(earlier", "config)", "q.delay.500", "1", "1"]
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("(succeeded by reuse)") && l.ends_with(" 4")),
            "{text}"
        );
        assert!(text.contains("rate over the last minute: 0.5/s"), "{text}");
        assert!(text.contains("replicas (live leases): 1 (h-1)"), "{text}");
        assert!(!text.contains("does not exist yet"), "{text}");
    }

    #[test]
    fn missing_queues_read_not_declared_and_say_how_to_create_them() {
        let text = render_status(&report(None, &[(1000, true, None)]));
        for label in ["main", "retry ", "  1000ms", "dead"] {
            let line = text.lines().find(|l| l.starts_with(label)).unwrap();
            assert!(line.ends_with("not declared"), "{label}: {text}");
        }
        let order: Vec<&str> = text.lines().skip(1).take(4).collect();
        assert!(
            order[0].starts_with("pending") && order[3].starts_with("failed"),
            "{text}"
        );
        assert!(text.contains("queue q does not exist yet"), "{text}");
    }

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(185), "3m05s");
        assert_eq!(human_duration(3720), "1h02m");
    }
}
