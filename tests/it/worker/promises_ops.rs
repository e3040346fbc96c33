//! The README's operating promises (issue 18, second half), each backed by a
//! test named after it: no key, signature or secret in the logs even at
//! TRACE; the metrics exist at zero and the rate-limit series move as
//! "Scaling out" says; a killed replica's share is reclaimed within
//! `lease_ms + heartbeat_ms`; `requeue-dead --limit`; a retry copy in a delay
//! tier of an earlier configuration; a whole run in GBK.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use zhima_worker::queue::{self, ATTEMPT_HEADER};
use zhima_worker::sandbox::{self, AppAuthToken, Faults, SandboxConfig, SandboxReply};

use crate::support::http::{free_local_addr, sample, scrape, scrape_when_up, value_of};
use crate::support::worker::throttled_calls;
use crate::support::{
    self, Db, TestWorker, count_values, eventually, exits_zero_within, job, sigterm, spawn_worker,
    spawn_worker_with, until,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Both directions of every connection through a [`recording_relay`].
#[derive(Clone, Default)]
struct Recording {
    to_gateway: Arc<Mutex<Vec<u8>>>,
    from_gateway: Arc<Mutex<Vec<u8>>>,
}

impl Recording {
    fn requests(&self) -> String {
        String::from_utf8_lossy(&self.to_gateway.lock().unwrap()).into_owned()
    }

    fn answers(&self) -> String {
        String::from_utf8_lossy(&self.from_gateway.lock().unwrap()).into_owned()
    }
}

/// A TCP relay in front of `target` that keeps a copy of every byte each way,
/// so a test sees the requests (and their `sign`) exactly as the gateway did.
async fn recording_relay(target: SocketAddr) -> (SocketAddr, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recording = Recording::default();
    let record = recording.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let (client_read, client_write) = inbound.into_split();
            let (gateway_read, gateway_write) = outbound.into_split();
            tokio::spawn(copy_and_keep(
                client_read,
                gateway_write,
                Arc::clone(&record.to_gateway),
            ));
            tokio::spawn(copy_and_keep(
                gateway_read,
                client_write,
                Arc::clone(&record.from_gateway),
            ));
        }
    });
    (addr, recording)
}

async fn copy_and_keep(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    kept: Arc<Mutex<Vec<u8>>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        kept.lock().unwrap().extend_from_slice(&buffer[..read]);
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Every `sign=` query parameter of the recorded requests, as sent
/// (percent-encoded) and decoded.
fn request_signs(requests: &str) -> Vec<(String, String)> {
    let mut signs = Vec::new();
    for (at, _) in requests.match_indices("sign=") {
        if !matches!(requests[..at].chars().last(), Some('?' | '&')) {
            continue;
        }
        let raw: String = requests[at + "sign=".len()..]
            .chars()
            .take_while(|c| !matches!(c, '&' | ' ' | '\r' | '\n'))
            .collect();
        let decoded = form_urlencoded::parse(format!("sign={raw}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        signs.push((raw, decoded));
    }
    signs
}

/// Every `"sign":"..."` member of the recorded answers.
fn answer_signs(answers: &str) -> Vec<String> {
    answers
        .match_indices("\"sign\":\"")
        .map(|(at, found)| {
            answers[at + found.len()..]
                .chars()
                .take_while(|c| *c != '"')
                .collect()
        })
        .collect()
}

/// The runs of ASCII letters and digits of `text` at least `min` long: the
/// parts of a base64 value that survive any escaping (URL, JSON) unchanged.
fn alphanumeric_runs(text: &str, min: usize) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|run| run.len() >= min)
        .map(str::to_owned)
        .collect()
}

/// Every byte as `%XX`: a spelling of a URL's credential that nothing but the
/// raw URL contains.
fn percent_encode_all(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

/// A connection URL with its password written percent-encoded byte by byte
/// (the same password once decoded), and that password decoded.
fn with_encoded_password(url: &str) -> (String, String, String) {
    let parsed = url::Url::parse(url).expect("a URL");
    let password = percent_encoding::percent_decode_str(parsed.password().expect("a password"))
        .decode_utf8()
        .expect("utf-8")
        .into_owned();
    let user = percent_encoding::percent_decode_str(parsed.username())
        .decode_utf8()
        .expect("utf-8")
        .into_owned();
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (_, host_and_path) = rest.split_once('@').expect("credentials");
    let encoded = percent_encode_all(&password);
    let rewritten = format!("{scheme}://{user}:{encoded}@{host_and_path}");
    (rewritten, encoded, password)
}

/// What the logs must not contain: `(what, text)`.
fn private_key_parts() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keys/test_merchant_private.pem"
    );
    let pem = std::fs::read_to_string(path).expect("the test key");
    let lines: Vec<&str> = pem
        .lines()
        .filter(|line| !line.starts_with("-----") && !line.trim().is_empty())
        .collect();
    let body = lines.concat();
    let mut parts = vec![("the private key's base64 body".to_owned(), body.clone())];
    for line in &lines {
        parts.push(("a line of the private key".to_owned(), (*line).to_owned()));
    }
    let chars: Vec<char> = body.chars().collect();
    for start in (0..chars.len().saturating_sub(32)).step_by(16) {
        let window: String = chars[start..start + 32].iter().collect();
        parts.push((
            format!("32 characters of the private key at {start}"),
            window,
        ));
    }
    parts
}

fn random_token() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    format!("tok{tail}")
}

fn assert_absent(logs: &str, what: &str, secret: &str) {
    assert!(!secret.is_empty(), "{what}: nothing to look for");
    if let Some(at) = logs.find(secret) {
        let start = logs[..at].rfind('\n').map_or(0, |n| n + 1);
        let end = logs[at..].find('\n').map_or(logs.len(), |n| at + n);
        panic!(
            "{what} appears in the logs:\n{}",
            &logs[start..end.min(start + 2000)]
        );
    }
}

#[tokio::test]
async fn keys_signatures_and_secrets_never_appear_in_logs_even_at_trace() {
    let token = random_token();
    let mut sandbox_config = SandboxConfig::with_test_keys().expect("test keys");
    sandbox_config.seed = Some(7);
    sandbox_config.faults = Faults {
        system_error_rate: 0.2,
        broken_sign_rate: 0.1,
        ..Faults::default()
    };
    sandbox_config.app_auth_tokens = vec![AppAuthToken {
        app_id: sandbox::DEFAULT_APP_ID.to_owned(),
        token: token.clone(),
    }];
    let sandbox = sandbox::start(sandbox_config).await.expect("sandbox");
    let mut worker = support::worker::build(Db::Postgres, sandbox).await;
    let (relay, recording) = recording_relay(worker.sandbox.addr).await;
    let (database_url, database_password_encoded, database_password) =
        with_encoded_password(&worker.database_url);
    let default_amqp = zhima_worker::config::load(None).expect("defaults").amqp.url;
    let (amqp_url, amqp_password_encoded, amqp_password) =
        with_encoded_password(secrecy::ExposeSecret::expose_secret(&default_amqp));
    for (key, value) in [
        (
            "ZHIMA__UPSTREAM__GATEWAY_URL",
            format!("http://{relay}/gateway.do"),
        ),
        ("ZHIMA__UPSTREAM__APP_AUTH_TOKEN", token.clone()),
        ("DATABASE_URL", database_url),
        ("ZHIMA__AMQP__URL", amqp_url),
        ("ZHIMA__LOG__FILTER", "trace".to_owned()),
    ] {
        worker.env.insert(key.to_owned(), value);
    }
    for n in 0..12 {
        worker.publish_job(&job("secret", n)).await;
    }
    let output = worker
        .command(&["run", "--until-idle"])
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "run exited {}", output.status);
    let statuses = worker.statuses().await;
    assert_eq!(
        support::succeeded(&statuses),
        12,
        "{:?}",
        count_values(&statuses)
    );
    assert!(
        logs.lines().any(|line| line.contains("TRACE")),
        "the run logged at TRACE"
    );

    let requests = recording.requests();
    assert!(
        requests.contains(&format!("app_auth_token={token}")),
        "the token was sent (ISV mode)"
    );
    let sent_signs = request_signs(&requests);
    let answered_signs = answer_signs(&recording.answers());
    let calls = worker.sandbox.stats().requests;
    assert_eq!(sent_signs.len() as u64, calls, "one sign per request");
    assert!(answered_signs.len() > 12, "{}", answered_signs.len());

    let mut secrets = vec![("upstream.app_auth_token".to_owned(), token)];
    secrets.extend(private_key_parts());
    for (raw, decoded) in &sent_signs {
        secrets.push(("a request's sign as sent".into(), raw.clone()));
        secrets.push(("a request's sign".into(), decoded.clone()));
        for run in alphanumeric_runs(decoded, 16) {
            secrets.push(("part of a request's sign".into(), run));
        }
    }
    for sign in &answered_signs {
        secrets.push(("an answer's sign".into(), sign.clone()));
        for run in alphanumeric_runs(sign, 16) {
            secrets.push(("part of an answer's sign".into(), run));
        }
    }
    secrets.push((
        "the database password as written in the URL".into(),
        database_password_encoded,
    ));
    secrets.push((
        "the broker password as written in the URL".into(),
        amqp_password_encoded,
    ));
    for (what, secret) in &secrets {
        assert_absent(&logs, what, secret);
    }
    for (what, password) in [("database", database_password), ("broker", amqp_password)] {
        for spelling in [format!(":{password}@"), format!("\\u0000{password}")] {
            assert_absent(&logs, &format!("the {what} password"), &spelling);
        }
    }
    worker.cleanup().await;
}

/// Every counter and gauge the README lists in the `/metrics` row, with the
/// labels they carry before any job. Histograms appear with their first
/// sample (a fake zero would be data), so they are left out here.
const SERIES_AT_ZERO: [&str; 14] = [
    r#"zhima_jobs_total{outcome="succeeded"}"#,
    r#"zhima_jobs_total{outcome="failed"}"#,
    r#"zhima_jobs_total{outcome="retried"}"#,
    r#"zhima_jobs_total{outcome="handed_back"}"#,
    r#"zhima_jobs_total{outcome="duplicate"}"#,
    r#"zhima_jobs_total{outcome="invalid"}"#,
    r#"zhima_jobs_total{outcome="conflict"}"#,
    r#"zhima_upstream_calls_total{code="10000",sub_code=""}"#,
    "zhima_retries_scheduled_total",
    "zhima_jobs_in_flight",
    "zhima_consumption_paused",
    "zhima_rate_limit_backoffs_total",
    r#"zhima_config_probes_total{result="passed"}"#,
    r#"zhima_config_probes_total{result="failed"}"#,
];

/// Gauges that hold the replica's share as soon as it is known: they exist
/// from start-up, at zero or already at their value.
const GAUGES_FROM_START_UP: [&str; 2] =
    ["zhima_replicas_live", "zhima_rate_limit_permits_per_second"];

#[tokio::test]
async fn counters_and_gauges_exist_at_zero_from_start_up() {
    counters_and_gauges_from_start_up(Db::Postgres).await;
}

/// SQLite keeps no lease: the gauges still say one replica, the whole rate.
#[tokio::test]
async fn on_sqlite_the_replica_and_rate_gauges_read_one_and_the_whole_rate() {
    counters_and_gauges_from_start_up(Db::Sqlite).await;
}

async fn counters_and_gauges_from_start_up(db: Db) {
    let worker = spawn_worker(db).await;
    let listen = free_local_addr();
    let metrics_url = format!("http://{listen}/metrics");
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let metrics = scrape_when_up(&metrics_url).await;
    for series in SERIES_AT_ZERO {
        assert_eq!(
            value_of(&metrics, series),
            Some(0.0),
            "{series} at zero before any job in\n{metrics}"
        );
    }
    for series in GAUGES_FROM_START_UP {
        assert!(
            value_of(&metrics, series).is_some(),
            "{series} from start-up in\n{metrics}"
        );
    }
    let total: f64 = worker.env["ZHIMA__RATE_LIMIT__QPS"].parse().unwrap();
    let url = &metrics_url;
    until(
        LIMIT,
        "one live replica with the whole rate",
        || async move {
            let metrics = scrape(url).await.unwrap_or_default();
            value_of(&metrics, "zhima_replicas_live") == Some(1.0)
                && value_of(&metrics, "zhima_rate_limit_permits_per_second") == Some(total)
        },
    )
    .await;
    sigterm(&child);
    exits_zero_within(&mut child, LIMIT).await;
    assert_eq!(worker.sandbox.stats().requests, 0, "no job, no call");
    worker.cleanup().await;
}

/// A background poller of one gauge: the lowest value it has seen.
fn watch_lowest(metrics_url: String, series: &'static str) -> Arc<Mutex<Option<f64>>> {
    let lowest = Arc::new(Mutex::new(None::<f64>));
    let seen = Arc::clone(&lowest);
    tokio::spawn(async move {
        loop {
            if let Some(value) = scrape(&metrics_url)
                .await
                .and_then(|metrics| value_of(&metrics, series))
            {
                let mut lowest = seen.lock().unwrap();
                *lowest = Some(lowest.map_or(value, |low: f64| low.min(value)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    lowest
}

#[tokio::test]
async fn a_throttled_answer_halves_the_rate_counts_one_backoff_and_every_call_waits_for_a_timed_permit()
 {
    let worker = spawn_worker(Db::Postgres).await;
    let share = "20";
    let listen = free_local_addr();
    let metrics_url = format!("http://{listen}/metrics");
    let mut child = worker.start_run(&[
        ("ZHIMA__HTTP__LISTEN", &listen),
        ("ZHIMA__RATE_LIMIT__QPS", share),
        ("ZHIMA__RATE_LIMIT__BURST", "2"),
    ]);
    let share: f64 = share.parse().unwrap();
    let url = &metrics_url;
    until(LIMIT, "the whole rate", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        value_of(&metrics, "zhima_rate_limit_permits_per_second") == Some(share)
    })
    .await;
    let lowest = watch_lowest(metrics_url.clone(), "zhima_rate_limit_permits_per_second");
    worker.sandbox.respond_next(1, SandboxReply::Throttled);
    for n in 0..6 {
        worker.publish_job(&job("throttled", n)).await;
    }
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 6)
        .await;
    let metrics = scrape(&metrics_url).await.expect("metrics");
    let stats = worker.sandbox.stats();
    let throttled = throttled_calls(&stats);
    assert_eq!(throttled, 1, "{:?}", stats.errors);
    assert_eq!(
        value_of(&metrics, "zhima_rate_limit_backoffs_total"),
        Some(1.0),
        "one 40005, one back-off"
    );
    assert_eq!(
        value_of(&metrics, "zhima_rate_limit_wait_seconds_count"),
        Some(stats.requests as f64),
        "one timed permit per call"
    );
    assert_eq!(
        value_of(
            &metrics,
            r#"zhima_upstream_calls_total{code="10000",sub_code=""}"#
        ),
        Some(6.0),
        "the series at zero from start-up is the one successes count in"
    );
    let lowest = lowest.lock().unwrap().expect("the gauge was read");
    assert!(
        lowest <= share / 2.0 + share / 10.0,
        "the rate was halved (then grew back a tenth a second): lowest {lowest}/s"
    );
    // "Every second without one adds back a tenth of the share": five idle
    // seconds take a halved rate back to the whole share, which the next
    // permit shows.
    tokio::time::sleep(Duration::from_secs(6)).await;
    worker.publish_job(&job("after_idle", 1)).await;
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 7)
        .await;
    let metrics = scrape(url).await.expect("metrics");
    assert_eq!(
        value_of(&metrics, "zhima_rate_limit_permits_per_second"),
        Some(share),
        "the whole share again after idle seconds"
    );
    sigterm(&child);
    exits_zero_within(&mut child, LIMIT).await;
    worker.cleanup().await;
}

#[tokio::test]
async fn a_killed_replicas_share_is_reclaimed_within_lease_plus_heartbeat() {
    let worker = spawn_worker(Db::Postgres).await;
    let limits = zhima_worker::config::load(None)
        .expect("defaults")
        .rate_limit;
    let bound = Duration::from_millis(limits.lease_ms + limits.heartbeat_ms);
    let env = [
        ("ZHIMA__RATE_LIMIT__QPS", "20"),
        ("ZHIMA__RATE_LIMIT__BURST", "2"),
    ];
    let listen = free_local_addr();
    let metrics_url = format!("http://{listen}/metrics");
    let mut survivor_env = env.to_vec();
    survivor_env.push(("ZHIMA__HTTP__LISTEN", &listen));
    let mut survivor = worker.start_run(&survivor_env);
    let share_of = |replicas: f64| 20.0 / replicas;
    let replicas_and_rate = |metrics: &str| {
        (
            value_of(metrics, "zhima_replicas_live"),
            value_of(metrics, "zhima_rate_limit_permits_per_second"),
        )
    };
    let url = &metrics_url;
    let replicas_and_rate = &replicas_and_rate;
    until(LIMIT, "one replica with the whole rate", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        replicas_and_rate(&metrics) == (Some(1.0), Some(share_of(1.0)))
    })
    .await;
    let mut victim = worker.start_run(&env);
    until(LIMIT, "two replicas, half the rate each", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        replicas_and_rate(&metrics) == (Some(2.0), Some(share_of(2.0)))
    })
    .await;

    let killed_at = Instant::now();
    victim.start_kill().expect("SIGKILL");
    let reclaimed_after = loop {
        let metrics = scrape(&metrics_url).await.unwrap_or_default();
        let seen_at = killed_at.elapsed();
        if replicas_and_rate(&metrics) == (Some(1.0), Some(share_of(1.0))) {
            break seen_at;
        }
        assert!(
            seen_at < LIMIT,
            "never reclaimed: {:?}",
            replicas_and_rate(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = victim.wait().await;
    eprintln!("a killed replica's share was reclaimed after {reclaimed_after:?} (bound {bound:?})");
    assert!(
        reclaimed_after <= bound,
        "reclaimed after {reclaimed_after:?}, over lease_ms + heartbeat_ms = {bound:?}"
    );
    sigterm(&survivor);
    exits_zero_within(&mut survivor, LIMIT).await;
    worker.cleanup().await;
}

async fn rows_with_status(worker: &TestWorker, status: &str) -> Vec<String> {
    let statuses = worker.statuses().await;
    statuses
        .into_iter()
        .filter(|(_, s)| s == status)
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn requeue_dead_with_a_limit_moves_exactly_that_many_and_leaves_the_rest() {
    const DEAD: u32 = 5;
    const MOVED: u32 = 2;
    let faults = Faults {
        system_error_rate: 1.0,
        system_error_style: sandbox::SystemErrorStyle::Business40004,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    worker
        .env
        .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "2".into());
    for n in 0..DEAD {
        worker.publish_job(&job("limited", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let dead_queue = worker.topology.names.dead_queue.clone();
    assert_eq!(worker.ready(&dead_queue).await, DEAD);

    let output = worker
        .command(&["requeue-dead", "--limit", &MOVED.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "requeue-dead exited {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("requeued {MOVED},")), "{stdout}");
    assert_eq!(
        worker.ready(&dead_queue).await,
        DEAD - MOVED,
        "the rest stay dead"
    );
    assert_eq!(worker.ready(&worker.topology.names.queue).await, MOVED);
    let requeued = rows_with_status(&worker, "retrying").await;
    assert_eq!(requeued.len(), MOVED as usize, "{requeued:?}");
    assert_eq!(
        rows_with_status(&worker, "failed").await.len(),
        (DEAD - MOVED) as usize
    );

    worker.sandbox.set_faults(Faults::default());
    worker.run_until_idle(LIMIT).await;
    assert_eq!(rows_with_status(&worker, "succeeded").await, requeued);
    assert_eq!(worker.ready(&dead_queue).await, DEAD - MOVED);
    for n in 0..DEAD {
        let id = format!("limited_{n}");
        let billed = u64::from(requeued.contains(&id));
        assert_eq!(worker.sandbox.billed_for(&id), billed, "{id}");
    }
    worker.cleanup().await;
}

/// A delay tier that the harness's retry settings (100..400 ms) do not have:
/// long enough that the retry copy is still there when the first worker has
/// stopped.
const OLD_TIER_MS: &str = "8000";

#[tokio::test]
async fn a_retry_copy_in_a_delay_tier_of_an_earlier_configuration_comes_back_and_is_processed() {
    let worker = spawn_worker(Db::Postgres).await;
    let old_queue = worker
        .topology
        .names
        .delay_queue(Duration::from_millis(OLD_TIER_MS.parse().unwrap()));
    assert!(
        !worker.topology.delay_queues().contains(&old_queue),
        "the current configuration has no {old_queue}"
    );
    worker.sandbox.respond_next(1, SandboxReply::SystemError);
    worker.publish_job(&job("old_tier", 1)).await;
    let mut earlier = worker.start_run(&[
        ("ZHIMA__RETRY__INITIAL_DELAY_MS", OLD_TIER_MS),
        ("ZHIMA__RETRY__MAX_DELAY_MS", OLD_TIER_MS),
    ]);
    let old_queue_ref = &old_queue;
    let worker_ref = &worker;
    until(
        LIMIT,
        "the retry copy waits in the old tier",
        || async move {
            !rows_with_status(worker_ref, "retrying").await.is_empty()
                && worker_ref.ready(old_queue_ref).await == 1
        },
    )
    .await;
    sigterm(&earlier);
    exits_zero_within(&mut earlier, LIMIT).await;
    assert_eq!(
        worker.ready(&old_queue).await,
        1,
        "still waiting when the earlier configuration stopped"
    );
    let headers_attempt = peek_attempt(&old_queue).await;
    assert_eq!(
        headers_attempt,
        Some(2),
        "the copy carries {ATTEMPT_HEADER}"
    );

    let mut current = worker.start_run(&[]);
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 1)
        .await;
    assert_eq!(worker.ready(&old_queue).await, 0, "the old tier drained");
    assert_eq!(
        worker
            .count("SELECT COUNT(*) FROM relation_checks WHERE attempts = 2")
            .await,
        1,
        "the copy ran as attempt 2"
    );
    assert_eq!(worker.sandbox.calls_for("old_tier_1"), 2);
    assert_eq!(worker.sandbox.billed_for("old_tier_1"), 1);
    sigterm(&current);
    exits_zero_within(&mut current, LIMIT).await;
    delete_queue(&old_queue).await;
    worker.cleanup().await;
}

async fn broker_channel() -> (lapin::Connection, lapin::Channel) {
    let settings = zhima_worker::config::load(None).expect("defaults");
    let connection = queue::connect(&settings.amqp, "test")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// The `x-zhima-attempt` of the message at the head of `queue_name`, which
/// is handed back untouched.
async fn peek_attempt(queue_name: &str) -> Option<u32> {
    let (connection, channel) = broker_channel().await;
    let message = channel
        .basic_get(
            queue_name.into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("a message");
    let attempt = queue::header_u32(
        message.delivery.properties.headers().as_ref(),
        ATTEMPT_HEADER,
    );
    message
        .delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack");
    let _ = connection.close(200, "peeked".into()).await;
    attempt
}

async fn delete_queue(queue_name: &str) {
    let (connection, channel) = broker_channel().await;
    let _ = channel
        .queue_delete(queue_name.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "deleted".into()).await;
}

/// Names in GBK, some with characters GB2312 lacks (喆, 堃, 镕, 昇, 琍).
const GBK_NAMES: [(&str, &str); 6] = [
    ("欧阳喆", "司马相如"),
    ("王堃", "诸葛孔明"),
    ("钱镕", "上官婉儿"),
    ("赵昇", "李琍"),
    ("慕容复", "段誉"),
    ("东方不败", "令狐冲"),
];

/// `张三` → `张*`: the first character kept, the rest starred.
fn masked_name(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().expect("a name");
    std::iter::once(first).chain(chars.map(|_| '*')).collect()
}

/// `text` as a form-urlencoded request carries it: its GBK bytes, each
/// `%XX` but for ASCII letters and digits (GBK trail bytes can be ASCII).
fn percent_encoded_gbk(text: &str) -> String {
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable, "{text} is GBK");
    form_urlencoded::byte_serialize(&bytes).collect()
}

#[tokio::test]
async fn a_whole_run_in_gbk_with_chinese_names_succeeds_stored_masked_and_billed_once() {
    let mut worker = spawn_worker(Db::Postgres).await;
    let (relay, recording) = recording_relay(worker.sandbox.addr).await;
    worker.env.insert(
        "ZHIMA__UPSTREAM__GATEWAY_URL".into(),
        format!("http://{relay}/gateway.do"),
    );
    worker
        .env
        .insert("ZHIMA__UPSTREAM__CHARSET".into(), "gbk".into());
    for (n, (name, relation_name)) in (0u32..).zip(GBK_NAMES) {
        let mut message = job("gbk", n);
        message["name"] = name.into();
        message["relation_name"] = relation_name.into();
        worker.publish_job(&message).await;
    }
    worker.run_until_idle(LIMIT).await;

    let statuses = worker.statuses().await;
    assert_eq!(
        support::succeeded(&statuses),
        GBK_NAMES.len(),
        "{:?}",
        count_values(&statuses)
    );
    let names: std::collections::BTreeMap<String, String> = worker
        .query_rows("SELECT transaction_id, name_masked FROM relation_checks")
        .await
        .into_iter()
        .collect();
    let relation_names: std::collections::BTreeMap<String, String> = worker
        .query_rows("SELECT transaction_id, relation_name_masked FROM relation_checks")
        .await
        .into_iter()
        .collect();
    let requests = recording.requests();
    assert!(
        requests.contains("charset=gbk"),
        "requests name the charset"
    );
    for (n, (name, relation_name)) in GBK_NAMES.iter().enumerate() {
        let id = format!("gbk_{n}");
        assert_eq!(names[&id], masked_name(name), "{id}");
        assert_eq!(relation_names[&id], masked_name(relation_name), "{id}");
        assert_eq!(worker.sandbox.calls_for(&id), 1, "{id}");
        assert_eq!(worker.sandbox.billed_for(&id), 1, "{id}");
        for text in [name, relation_name] {
            assert!(
                requests.contains(&percent_encoded_gbk(text)),
                "{text} went out in GBK"
            );
        }
    }
    worker.cleanup().await;
}

/// The sum of every sample of `name` (all label sets).
fn sum_of(metrics: &str, name: &str) -> f64 {
    sum_where(metrics, name, |_| true)
}

/// The sum of the samples of `name` whose label text passes `keep`.
fn sum_where(metrics: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let labels = match key.strip_prefix(name)? {
                "" => "",
                rest => rest.strip_prefix('{')?.strip_suffix('}')?,
            };
            keep(labels).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The worker's stderr, line by line, as it comes.
fn keep_lines(child: &mut tokio::process::Child) -> Arc<Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&lines);
    let stderr = child.stderr.take().expect("stderr piped");
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    lines
}

/// JSON log lines whose `fields.message` is `message`.
fn log_events(lines: &Mutex<Vec<String>>, message: &str) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["message"] == message)
        .collect()
}

/// A field of the span `name` in a JSON line's `spans` (outermost first).
fn span_field<'a>(event: &'a serde_json::Value, name: &str, field: &str) -> &'a serde_json::Value {
    event["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == name))
        .map_or(&serde_json::Value::Null, |span| &span[field])
}

/// Jobs somewhere on the broker (ready in the main or a delay queue) or
/// final in the database: with nothing unacked, every published job is one
/// of these.
async fn jobs_accounted_for(worker: &TestWorker) -> u32 {
    let mut total = worker.ready(&worker.topology.names.queue).await;
    for queue in worker.topology.delay_queues() {
        total += worker.ready(&queue).await;
    }
    let statuses = worker.statuses().await;
    total + statuses.values().filter(|s| *s == "succeeded").count() as u32
}

#[tokio::test]
async fn every_counter_matches_the_sandbox_the_broker_and_the_log_after_faults_a_pause_and_a_shutdown()
 {
    let worker = spawn_worker(Db::Sqlite).await;
    let listen = free_local_addr();
    let metrics_url = format!("http://{listen}/metrics");
    let url = metrics_url.as_str();
    let mut command = worker.command(&["run"]);
    command
        .envs([
            ("ZHIMA__HTTP__LISTEN", listen.as_str()),
            ("ZHIMA__LOG__FORMAT", "json"),
            ("ZHIMA__LOG__FILTER", "info"),
            ("ZHIMA__WORKER__MAX_UNVERIFIED_IN_ROW", "3"),
            ("ZHIMA__WORKER__PROBE_INTERVAL_S", "1"),
            ("ZHIMA__WORKER__CONCURRENCY", "4"),
            ("ZHIMA__WORKER__SHUTDOWN_GRACE_S", "1"),
        ])
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("worker starts");
    let log = keep_lines(&mut child);
    let total: f64 = worker.env["ZHIMA__RATE_LIMIT__QPS"].parse().unwrap();
    until(
        LIMIT,
        "SQLite: one replica with the whole rate",
        || async move {
            let metrics = scrape(url).await.unwrap_or_default();
            value_of(&metrics, "zhima_replicas_live") == Some(1.0)
                && value_of(&metrics, "zhima_rate_limit_permits_per_second") == Some(total)
        },
    )
    .await;

    // Transient faults, then answers that never verify until the worker pauses.
    worker.sandbox.respond_next(2, SandboxReply::SystemError);
    for n in 0..10 {
        worker.publish_job(&job("truth_a", n)).await;
    }
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 10)
        .await;
    worker.sandbox.set_faults(Faults {
        broken_sign_rate: 1.0,
        latency_ms: 100,
        ..Faults::default()
    });
    for n in 0..12 {
        worker.publish_job(&job("truth_b", n)).await;
    }
    let test_worker = &worker;
    until(
        LIMIT,
        "paused, nothing in flight, every job queued or stored",
        || async move {
            let metrics = scrape(url).await.unwrap_or_default();
            value_of(&metrics, "zhima_consumption_paused") == Some(1.0)
                && value_of(&metrics, "zhima_jobs_in_flight") == Some(0.0)
                && jobs_accounted_for(test_worker).await == 22
        },
    )
    .await;
    worker.sandbox.set_faults(Faults::default());
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 22)
        .await;
    until(LIMIT, "resumed with nothing in flight", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        value_of(&metrics, "zhima_consumption_paused") == Some(0.0)
            && value_of(&metrics, "zhima_jobs_in_flight") == Some(0.0)
    })
    .await;

    let metrics = scrape(url).await.expect("metrics");
    let stats = worker.sandbox.stats();
    let calls = sum_of(&metrics, "zhima_upstream_calls_total");
    let probes = sum_of(&metrics, "zhima_config_probes_total");
    let failed_probes = sample(&metrics, r#"zhima_config_probes_total{result="failed"}"#);
    assert!(
        sample(&metrics, r#"zhima_config_probes_total{result="passed"}"#) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        calls + probes,
        stats.requests as f64,
        "every request the sandbox saw is a counted call or probe\n{metrics}"
    );
    let unverified = sum_where(&metrics, "zhima_upstream_calls_total", |labels| {
        labels.contains(r#"code="UNVERIFIED""#)
    });
    assert!(unverified >= 3.0, "the pause took 3 in a row: {unverified}");
    assert_eq!(
        unverified + failed_probes,
        stats.broken_signatures as f64,
        "answers with a broken sign have their own label, not 10000\n{metrics}"
    );
    let system_errors = sum_where(&metrics, "zhima_upstream_calls_total", |labels| {
        !labels.contains(r#"code="10000""#) && !labels.contains(r#"code="UNVERIFIED""#)
    });
    assert_eq!(system_errors, 2.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"zhima_upstream_calls_total{code="10000",sub_code=""}"#
        ),
        22.0,
        "one verified success per job"
    );
    for n in 0..10 {
        assert_eq!(worker.sandbox.billed_for(&format!("truth_a_{n}")), 1);
    }
    for n in 0..12 {
        assert_eq!(worker.sandbox.billed_for(&format!("truth_b_{n}")), 1);
    }
    let jobs = |outcome: &str| {
        sample(
            &metrics,
            &format!(r#"zhima_jobs_total{{outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(jobs("succeeded"), 22.0);
    assert_eq!(jobs("retried"), system_errors + unverified);
    assert_eq!(
        sample(&metrics, "zhima_retries_scheduled_total"),
        jobs("retried")
    );
    let processed = log_events(&log, "job processed");
    let handed_back_lines = processed
        .iter()
        .filter(|event| span_field(event, "process_job", "outcome") == "handed_back")
        .count();
    assert_eq!(jobs("handed_back"), handed_back_lines as f64, "{metrics}");
    assert_eq!(
        sum_of(&metrics, "zhima_jobs_total"),
        processed.len() as f64,
        "one count per `job processed` line"
    );
    assert_eq!(
        sample(&metrics, "zhima_rate_limit_wait_seconds_count"),
        calls,
        "one timed permit per job call"
    );
    assert_eq!(
        sample(&metrics, "zhima_upstream_latency_seconds_count"),
        calls,
        "one latency sample per job call"
    );
    for outcome in ["failed", "duplicate", "invalid", "conflict"] {
        assert_eq!(jobs(outcome), 0.0, "{outcome}: none happened");
    }
    assert_eq!(
        sample(&metrics, "zhima_rate_limit_backoffs_total"),
        throttled_calls(&stats) as f64,
        "no 40005, no back-off"
    );
    assert_eq!(
        worker.count("SELECT count(*) FROM delay_queues").await,
        worker.topology.delay_queues().len() as i64,
        "run registers its delay queues for `status`"
    );

    // Shutdown with calls in flight past the grace: they are handed back.
    worker.sandbox.set_faults(Faults {
        latency_ms: 20_000,
        ..Faults::default()
    });
    let handed_back_before = jobs("handed_back");
    for n in 0..3 {
        worker.publish_job(&job("truth_c", n)).await;
    }
    until(LIMIT, "three calls in flight", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        value_of(&metrics, "zhima_jobs_in_flight") == Some(3.0)
    })
    .await;
    sigterm(&child);
    exits_zero_within(&mut child, LIMIT).await;
    let main_queue = worker.topology.names.queue.as_str();
    until(LIMIT, "the three back on the broker", || async move {
        test_worker.ready(main_queue).await == 3
    })
    .await;
    let summary = eventually(LIMIT, "the run summary line", || async {
        log_events(&log, "run summary").pop()
    })
    .await;
    let tally = summary["fields"]["jobs"].as_str().unwrap_or_default();
    let handed_back = handed_back_before as u64 + 3;
    assert!(
        tally.contains(&format!("handed_back={handed_back} ")),
        "{tally}"
    );
    worker.cleanup().await;
}

/// Every key of a JSON line: its event fields and each span's fields.
fn keys_of(event: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = event["fields"]
        .as_object()
        .map(|fields| fields.keys().cloned().collect())
        .unwrap_or_default();
    for span in event["spans"].as_array().into_iter().flatten() {
        let fields = span.as_object().into_iter().flatten();
        keys.extend(
            fields
                .filter(|(key, _)| *key != "name")
                .map(|(key, _)| key.clone()),
        );
    }
    keys
}

#[tokio::test]
async fn throttling_retries_and_exhausted_attempts_log_a_warn_with_code_and_sub_code_and_every_line_its_worker_id()
 {
    let worker = spawn_worker(Db::Postgres).await;
    let mut command = worker.command(&["run"]);
    command
        .envs([
            ("ZHIMA__LOG__FORMAT", "json"),
            ("ZHIMA__LOG__FILTER", "info"),
            ("ZHIMA__RETRY__MAX_ATTEMPTS", "2"),
        ])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("worker starts");
    let log = keep_lines(&mut child);
    worker.sandbox.respond_next(1, SandboxReply::Throttled);
    worker.publish_job(&job("logged_throttle", 1)).await;
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == 1)
        .await;
    worker.sandbox.respond_next(2, SandboxReply::SystemError);
    worker.publish_job(&job("logged_exhausted", 1)).await;
    worker
        .wait_for_statuses(LIMIT, |s| {
            s.values().filter(|v| *v == "failed").count() == 1
        })
        .await;
    sigterm(&child);
    exits_zero_within(&mut child, LIMIT).await;
    let lines: Vec<serde_json::Value> = log
        .lock()
        .unwrap()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let warn = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["level"] == "WARN" && l["fields"]["message"] == message)
            .collect()
    };
    let throttled = warn("upstream throttled us: this replica's rate halved, job retried");
    assert_eq!(throttled.len(), 1, "one 40005, one line");
    assert_eq!(throttled[0]["fields"]["code"], "40005", "{}", throttled[0]);
    assert_eq!(
        throttled[0]["fields"]["sub_code"], "isv.app-call-limited",
        "{}",
        throttled[0]
    );
    let retried = warn("job retried");
    assert_eq!(retried.len(), 1, "the first SYSTEM_ERROR is retried");
    let exhausted = warn("attempts exhausted: job dead-lettered");
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0]["fields"]["attempts"], 2);
    for line in retried.iter().chain(&exhausted) {
        let code = line["fields"]["code"].as_str().unwrap();
        assert!(!code.is_empty() && code != "10000", "{line}");
        assert!(line["fields"]["sub_code"].is_string(), "{line}");
        assert_eq!(
            span_field(line, "process_job", "transaction_id"),
            "logged_exhausted_1"
        );
    }
    let worker_ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with("zhima_worker")
        })
        .map(|l| {
            span_field(l, "worker", "worker_id")
                .as_str()
                .unwrap_or_else(|| panic!("no worker_id: {l}"))
        })
        .collect();
    assert_eq!(worker_ids.len(), 1, "one replica, one id: {worker_ids:?}");
    for line in &lines {
        let keys = keys_of(line);
        let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "a field repeated in {line}");
        assert!(
            line.get("span").is_none(),
            "no copy of the innermost span: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| !l.to_string().contains("already exists, skipping")),
        "the sqlx notice is not shown at INFO"
    );
    worker.cleanup().await;
}

#[tokio::test]
async fn one_replica_of_two_reports_the_queue_depths_and_each_names_its_build() {
    let worker = spawn_worker(Db::Postgres).await;
    let listens = [free_local_addr(), free_local_addr()];
    let urls: Vec<String> = listens
        .iter()
        .map(|l| format!("http://{l}/metrics"))
        .collect();
    let mut children: Vec<_> = listens
        .iter()
        .map(|listen| worker.start_run(&[("ZHIMA__HTTP__LISTEN", listen.as_str())]))
        .collect();
    for url in &urls {
        until(LIMIT, "two live replicas", || async move {
            let metrics = scrape(url).await.unwrap_or_default();
            value_of(&metrics, "zhima_replicas_live") == Some(2.0)
        })
        .await;
    }
    let (connection, channel) = broker_channel().await;
    let dead = worker.topology.names.dead_queue.clone();
    for _ in 0..3 {
        channel
            .basic_publish(
                "".into(),
                dead.as_str().into(),
                Default::default(),
                b"{}",
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let dead_series = format!(r#"zhima_queue_messages_ready{{queue="{dead}",kind="dead"}}"#);
    let main_series = format!(
        r#"zhima_queue_consumers{{queue="{}",kind="main"}}"#,
        worker.topology.names.queue
    );
    let (dead_series, main_series) = (&dead_series, &main_series);
    let urls_ref = &urls;
    let reporter = eventually(
        LIMIT,
        "one reporter with the broker's figures",
        || async move {
            let mut reporters = Vec::new();
            for url in urls_ref {
                let metrics = scrape(url).await.unwrap_or_default();
                if value_of(&metrics, "zhima_queue_depth_reporter") == Some(1.0) {
                    reporters.push(metrics);
                }
            }
            let [metrics] = reporters.as_slice() else {
                return None;
            };
            (value_of(metrics, dead_series) == Some(3.0)
                && value_of(metrics, main_series) == Some(2.0))
            .then(|| metrics.clone())
        },
    )
    .await;
    for url in &urls {
        let metrics = scrape(url).await.unwrap();
        let build = format!(
            r#"zhima_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value_of(&metrics, &build), Some(1.0), "{metrics}");
        if value_of(&metrics, "zhima_queue_depth_reporter") == Some(0.0) {
            let other = value_of(&metrics, dead_series);
            assert!(other.is_none_or(f64::is_nan), "not the reporter: {other:?}");
        }
    }
    for delay_queue in worker.topology.delay_queues() {
        let series = format!(r#"zhima_queue_messages_ready{{queue="{delay_queue}",kind="delay"}}"#);
        assert_eq!(value_of(&reporter, &series), Some(0.0), "{series}");
    }
    let _ = connection.close(200, "done".into()).await;
    for child in &mut children {
        sigterm(child);
        exits_zero_within(child, LIMIT).await;
    }
    worker.cleanup().await;
}
