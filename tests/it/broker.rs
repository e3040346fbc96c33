//! The operator commands against a broker that will not have us (wrong
//! password, missing vhost) and before the topology exists.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::support::BIN;
use crate::support::worker::{random_id, write_pii_key};

/// A deadline, not a wait: a refused start-up ends in well under a second.
const LIMIT: Duration = Duration::from_secs(60);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct Setup {
    _dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn setup(amqp_url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = random_id();
    let env = vec![
        (
            "DATABASE_URL".to_owned(),
            format!("sqlite:{}/jobs.sqlite?mode=rwc", dir.path().display()),
        ),
        ("AMQP_URL".to_owned(), amqp_url.to_owned()),
        ("ZHIMA__AMQP__EXCHANGE".to_owned(), format!("b_{id}.jobs")),
        ("ZHIMA__AMQP__QUEUE".to_owned(), format!("b_{id}.verify")),
        ("ZHIMA__AMQP__DEAD_QUEUE".to_owned(), format!("b_{id}.dead")),
        ("ZHIMA__LOG__FORMAT".to_owned(), "pretty".to_owned()),
        // `run` needs the PII key, and the published test key is 0644 on a
        // fresh clone: the broker is what these tests are about.
        (
            "ZHIMA__PII__HMAC_KEY_PATH".to_owned(),
            write_pii_key(dir.path()).display().to_string(),
        ),
        (
            "ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE".to_owned(),
            "true".to_owned(),
        ),
    ];
    Setup { _dir: dir, env }
}

async fn zhima(setup: &Setup, args: &[&str]) -> Outcome {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{}` did not end within {LIMIT:?}", args.join(" ")))
        .unwrap();
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn every_command_exits_1_naming(amqp_url: &str, expected: &str) {
    let setup = setup(amqp_url);
    assert_eq!(zhima(&setup, &["migrate"]).await.code, Some(0));
    let jobs = setup._dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, "").unwrap();
    let jobs = jobs.display().to_string();
    for args in [
        vec!["run"],
        vec!["enqueue", &jobs],
        vec!["status"],
        vec!["requeue-dead"],
    ] {
        let outcome = zhima(&setup, &args).await;
        assert_eq!(outcome.code, Some(1), "{args:?}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains(expected),
            "{args:?}: {}",
            outcome.stderr
        );
    }
}

#[tokio::test]
async fn a_broker_refusing_our_password_is_a_start_up_error_for_every_command() {
    every_command_exits_1_naming(
        "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
        "ACCESS_REFUSED",
    )
    .await;
}

#[tokio::test]
async fn a_vhost_that_does_not_exist_is_a_start_up_error_for_every_command() {
    every_command_exits_1_naming(
        "amqp://guest:guest@127.0.0.1:5672/zhima-no-such-vhost",
        "vhost",
    )
    .await;
}

#[tokio::test]
async fn status_before_the_topology_exists_prints_a_clear_line_and_no_errors() {
    let setup = setup("amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(zhima(&setup, &["migrate"]).await.code, Some(0));
    let status = zhima(&setup, &["status"]).await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let queue = &setup.env[3].1;
    assert!(
        status.stdout.contains(&format!(
            "queue {queue} does not exist yet: run `zhima-worker run` or `enqueue` once"
        )),
        "{}",
        status.stdout
    );
    assert!(!status.stderr.contains("ERROR"), "{}", status.stderr);
}
