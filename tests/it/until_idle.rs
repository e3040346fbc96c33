//! `run --until-idle` as cron or a Kubernetes Job runs it: `--max-wait`
//! ends a run paused on a configuration fault with exit 4 and the jobs still
//! queued, and every exit of `run` (idle, `--max-wait`, SIGTERM) logs one
//! "run summary" line with the jobs by outcome, the duration and the rate.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Child;
use zhima_worker::sandbox::{self, SandboxConfig};

use crate::support::{self, Db, TestWorker, count_values, job, sigterm, spawn_worker};

const LIMIT: Duration = Duration::from_secs(60);

/// `zhima-worker run ARGS` with its JSON log lines captured.
fn start(worker: &TestWorker, args: &[&str]) -> Child {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let mut command = worker.command(&all);
    command.stderr(Stdio::piped());
    command.spawn().expect("worker starts")
}

/// Waits (within `limit`) for the exit; the status and the log lines.
async fn finish(child: Child, limit: Duration) -> (ExitStatus, Vec<Value>) {
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("run did not exit within {limit:?}"))
        .expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{stderr}");
    }
    let lines = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (output.status, lines)
}

/// The fields of the one "run summary" line, which is at INFO.
fn summary(lines: &[Value]) -> &Value {
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "run summary")
        .collect();
    assert_eq!(summaries.len(), 1, "one run summary line");
    assert_eq!(summaries[0]["level"], "INFO");
    &summaries[0]["fields"]
}

/// The count after `word=` in the summary's `jobs` field.
fn count_of(words: &str, word: &str) -> Option<u64> {
    words
        .split(' ')
        .find_map(|pair| pair.strip_prefix(word)?.strip_prefix('='))
        .and_then(|count| count.parse().ok())
}

fn assert_rate_and_duration(summary: &Value) {
    let duration = summary["duration_s"].as_f64().expect("duration_s");
    let rate = summary["jobs_per_second"]
        .as_f64()
        .expect("jobs_per_second");
    assert!(duration > 0.0, "{summary}");
    assert!(rate >= 0.0, "{summary}");
}

#[tokio::test]
async fn run_until_idle_logs_a_summary_with_the_jobs_by_outcome() {
    let worker = spawn_worker(Db::Postgres).await;
    for n in 0..5 {
        worker.publish_job(&job("idle", n)).await;
    }
    worker.publish_raw(b"not a job").await;
    let (status, lines) = finish(start(&worker, &["--until-idle"]), LIMIT).await;
    assert!(status.success(), "run --until-idle exited {status}");
    let summary = summary(&lines);
    assert_eq!(
        summary["jobs"],
        "succeeded=5 failed=0 retried=0 handed_back=0 duplicate=0 invalid=1 conflict=0 reused=0"
    );
    assert_eq!(summary["jobs_total"], 6);
    assert_rate_and_duration(summary);
    worker.cleanup().await;
}

#[tokio::test]
async fn sigterm_also_logs_the_run_summary() {
    let worker = spawn_worker(Db::Postgres).await;
    for n in 0..3 {
        worker.publish_job(&job("term", n)).await;
    }
    let child = start(&worker, &[]);
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 3)
        .await;
    sigterm(&child);
    let (status, lines) = finish(child, LIMIT).await;
    assert!(status.success(), "run exited {status}");
    let summary = summary(&lines);
    assert_eq!(
        summary["jobs"],
        "succeeded=3 failed=0 retried=0 handed_back=0 duplicate=0 invalid=0 conflict=0 reused=0"
    );
    assert_rate_and_duration(summary);
    worker.cleanup().await;
}

/// A sandbox that knows another app_id than ours: every call is refused with
/// `isv.invalid-app-id`, a configuration fault that pauses consumption.
async fn unknown_app_id_worker() -> TestWorker {
    let mut config = SandboxConfig::with_test_keys().expect("test keys");
    config.seed = Some(7);
    config.apps[0].app_id = "2088000000000001".into();
    let faulty = sandbox::start(config).await.expect("sandbox starts");
    support::worker::build(Db::Postgres, faulty).await
}

#[tokio::test]
async fn paused_longer_than_max_wait_exits_4_with_the_jobs_still_queued() {
    let worker = unknown_app_id_worker().await;
    let jobs = 5;
    for n in 0..jobs {
        worker.publish_job(&job("wait", n)).await;
    }
    let began = Instant::now();
    let child = start(&worker, &["--until-idle", "--max-wait", "2s"]);
    let (status, lines) = finish(child, Duration::from_secs(30)).await;
    let took = began.elapsed();
    assert_eq!(status.code(), Some(4), "run exited {status}");
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(20)).contains(&took),
        "gave up after {took:?}"
    );
    let why = lines
        .iter()
        .find(|line| {
            line["level"] == "ERROR"
                && line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("longer than --max-wait"))
        })
        .expect("the reason for exit 4 is logged");
    assert_eq!(
        why["fields"]["reason"]
            .as_str()
            .map(|r| r.contains("isv.invalid-app-id")),
        Some(true),
        "{why}"
    );
    let statuses = worker.statuses().await;
    assert!(
        statuses.values().all(|s| s != "failed" && s != "succeeded"),
        "no job burnt: {:?}",
        count_values(&statuses)
    );
    assert_eq!(worker.ready(&worker.topology.names.queue).await, jobs);
    let summary = summary(&lines);
    let words = summary["jobs"].as_str().expect("jobs");
    assert!(
        words.starts_with("succeeded=0 failed=0 retried=0 handed_back="),
        "{words}"
    );
    assert_eq!(
        count_of(words, "handed_back"),
        summary["jobs_total"].as_u64()
    );
    assert!(count_of(words, "handed_back") > Some(0), "{words}");
    worker.cleanup().await;
}

#[tokio::test]
async fn max_wait_of_zero_or_garbage_is_a_usage_error_naming_the_flag() {
    for value in ["0", "soon", "90"] {
        let output = tokio::process::Command::new(support::BIN)
            .args(["run", "--max-wait", value])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("runs");
        assert_eq!(output.status.code(), Some(64), "--max-wait {value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--max-wait <DURATION>'"
            )),
            "{value}: {stderr}"
        );
    }
}
