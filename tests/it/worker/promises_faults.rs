//! The README's fault promises, each shown end to end against the real
//! `zhima-worker run`: the dead-letter reason header, a database outage longer
//! than the store's retry budget, signals with calls still in flight, each
//! configuration fault, a SIGKILL between the call and the commit, and the
//! transaction_id window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use zhima_worker::sandbox::{self, Faults, SandboxApp, SandboxConfig, SystemErrorStyle};

use crate::support::http::{free_local_addr, get_text_promptly, sample_or_zero};
use crate::support::proxy::{database_through_switch, postgres_addr, switchable_proxy};
use crate::support::{
    self, Db, TestWorker, count_values, eventually, job, send_signal, spawn_worker,
    spawn_worker_with,
};

const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// The sandbox's faults cleared, `run --until-idle` ends every one of the
/// `jobs` succeeded.
async fn every_job_succeeds_once_the_faults_clear(worker: &TestWorker, jobs: u32) {
    worker.sandbox.set_faults(Faults::default());
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(
        support::succeeded(&statuses),
        jobs as usize,
        "{:?}",
        count_values(&statuses)
    );
}

/// Takes every message off the dead queue: (transaction_id, or the body when
/// it is not a JSON job) → the `x-zhima-error` header, `None` when absent.
async fn drain_dead_queue(worker: &TestWorker) -> BTreeMap<String, Option<String>> {
    let settings = zhima_worker::config::load(None).unwrap();
    let connection = zhima_worker::queue::connect(&settings.amqp, "test dead queue reader")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = worker.topology.names.dead_queue.as_str();
    let mut reasons = BTreeMap::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        let key = serde_json::from_slice::<serde_json::Value>(&delivery.data)
            .ok()
            .and_then(|body| body["transaction_id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&delivery.data).into_owned());
        let reason = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| {
                headers
                    .inner()
                    .iter()
                    .find(|(name, _)| name.as_str() == zhima_worker::queue::ERROR_HEADER)
                    .map(|(_, value)| value.clone())
            })
            .map(|value| match value {
                AMQPValue::LongString(text) => {
                    String::from_utf8_lossy(text.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            });
        reasons.insert(key, reason);
    }
    let _ = connection.close(200, "done".into()).await;
    reasons
}

fn reason_of<'a>(reasons: &'a BTreeMap<String, Option<String>>, key: &str) -> &'a str {
    reasons
        .get(key)
        .unwrap_or_else(|| panic!("{key} is not in the dead queue: {reasons:?}"))
        .as_deref()
        .unwrap_or_else(|| panic!("{key} was dead-lettered without x-zhima-error"))
}

// ------------------------------------------- 1. the reason in x-zhima-error

#[tokio::test]
async fn dead_lettered_messages_carry_the_reason_in_x_zhima_error() {
    let mut worker = spawn_worker(Db::Postgres).await;
    worker
        .env
        .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "3".into());
    let stored = job("dead_stored", 1);
    worker.publish_job(&stored).await;
    worker.run_until_idle(LIMIT).await;

    worker.sandbox.set_faults(Faults {
        system_error_rate: 1.0,
        system_error_style: SystemErrorStyle::Business40004,
        ..Faults::default()
    });
    let mut invalid = job("dead_invalid", 1);
    invalid["cert_no"] = "640202199007164687".into();
    let mut nul_in_name = job("dead_nul", 1);
    nul_in_name["name"] = "\u{0}张三".into();
    let mut conflict = stored.clone();
    conflict["relation_phone"] = "13900000000".into();
    for message in [&invalid, &nul_in_name, &conflict, &job("dead_doomed", 1)] {
        worker.publish_job(message).await;
    }
    worker.publish_raw(b"not json at all").await;
    worker.run_until_idle(LIMIT).await;

    let reasons = drain_dead_queue(&worker).await;
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    let invalid_reason = reason_of(&reasons, "dead_invalid_1");
    assert!(invalid_reason.contains("cert_no"), "{invalid_reason}");
    let not_json = reason_of(&reasons, "not json at all");
    assert!(not_json.contains("not valid JSON"), "{not_json}");
    let control_character = reason_of(&reasons, "dead_nul_1");
    assert!(
        control_character.contains("`name`") && control_character.contains("control characters"),
        "{control_character}"
    );
    let reused = reason_of(&reasons, "dead_stored_1");
    assert!(reused.contains("TRANSACTION_ID_CONFLICT"), "{reused}");
    let exhausted = reason_of(&reasons, "dead_doomed_1");
    assert!(
        exhausted.contains("gave up after 3 attempts") && exhausted.contains("SYSTEM_ERROR"),
        "{exhausted}"
    );
    worker.cleanup().await;
}

// ------------------------------------------------- 2. database unreachable

/// Longer than the store's 30 s retry budget: the held deliveries are handed
/// back (and redelivered), `/readyz` says why meanwhile, and once the
/// database is back every job ends succeeded, billed once, none failed.
#[tokio::test]
async fn database_unreachable_for_longer_than_30_s_hands_jobs_back_and_readyz_is_503_meanwhile() {
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    let database = database_through_switch(&mut worker).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "10".into());
    let jobs = 40;
    for n in 0..jobs {
        worker.publish_job(&job("db_cut", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let readyz = format!("http://{listen}/readyz");
    let readyz = readyz.as_str();
    let metrics_url = format!("http://{listen}/metrics");
    let metrics_url = metrics_url.as_str();
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) >= 5)
        .await;
    let (ready, _) = get_text_promptly(readyz).await;
    assert_eq!(ready, 200, "ready before the cut");

    database.send_replace(None);
    let reason = eventually(LIMIT, "/readyz turns 503 during the cut", || async move {
        let (status, body) = get_text_promptly(readyz).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(reason.contains("database unreachable"), "{reason}");
    let handed_back = eventually(
        Duration::from_secs(120),
        "the held deliveries are handed back",
        || async move {
            let (_, metrics) = get_text_promptly(metrics_url).await;
            let count = sample_or_zero(&metrics, r#"zhima_jobs_total{outcome="handed_back"}"#);
            (count > 0.0).then_some(count)
        },
    )
    .await;
    assert!(handed_back > 0.0);
    assert!(child.try_wait().unwrap().is_none(), "the worker survives");
    let (still, _) = get_text_promptly(readyz).await;
    assert_eq!(still, 503, "/readyz stays 503 while the database is cut");

    database.send_replace(Some(postgres_addr()));
    let statuses = worker
        .wait_for_statuses(Duration::from_secs(120), |s| {
            support::succeeded(s) == jobs as usize
        })
        .await;
    assert_eq!(count_values(&statuses).get("failed"), None);
    for n in 0..jobs {
        assert_eq!(worker.sandbox.billed_for(&format!("db_cut_{n}")), 1);
    }
    let (ready, body) = get_text_promptly(readyz).await;
    assert_eq!(ready, 200, "ready again after the cut: {body}");
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

// ------------------------------- 3. signals with calls still in flight

/// Answers take 10 s and the grace is 1 s: the signal must stop the worker
/// within a few seconds with exit 0, handing back the jobs whose calls were in
/// flight; a later run processes them (their repeated calls are replays, not
/// new bills), and none is failed.
async fn signal_with_calls_in_flight_past_the_grace_hands_them_back_and_exits_zero(
    signal: &str,
    prefix: &str,
) {
    let faults = Faults {
        latency_ms: 10_000,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    worker
        .env
        .insert("ZHIMA__WORKER__SHUTDOWN_GRACE_S".into(), "1".into());
    let jobs = 12;
    for n in 0..jobs {
        worker.publish_job(&job(prefix, n)).await;
    }
    let mut child = worker.start_run(&[]);
    let sandbox = &worker.sandbox;
    let in_flight = eventually(LIMIT, "calls in flight at the sandbox", || async move {
        let stats = sandbox.stats();
        (stats.in_flight >= 4).then_some(stats.in_flight)
    })
    .await;
    send_signal(&child, signal);
    let status = tokio::time::timeout(Duration::from_secs(8), child.wait())
        .await
        .expect("exits once the 1 s grace is over, not after the 10 s answers")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    let statuses = worker.statuses().await;
    assert_eq!(
        support::succeeded(&statuses),
        0,
        "no answer arrived in time"
    );
    assert_eq!(count_values(&statuses).get("failed"), None);
    let billed_before = worker.sandbox.stats().billed;
    assert!(
        billed_before >= in_flight,
        "the in-flight calls were billed"
    );

    every_job_succeeds_once_the_faults_clear(&worker, jobs).await;
    for n in 0..jobs {
        assert_eq!(worker.sandbox.billed_for(&format!("{prefix}_{n}")), 1);
    }
    assert!(
        worker.sandbox.stats().unbilled_repeats >= billed_before,
        "every handed-back call was replayed, not billed again"
    );
    worker.cleanup().await;
}

#[tokio::test]
async fn sigterm_with_calls_in_flight_when_the_grace_runs_out_hands_them_back_and_exits_zero() {
    signal_with_calls_in_flight_past_the_grace_hands_them_back_and_exits_zero("TERM", "grace_term")
        .await;
}

#[tokio::test]
async fn sigint_with_calls_in_flight_when_the_grace_runs_out_hands_them_back_and_exits_zero() {
    signal_with_calls_in_flight_past_the_grace_hands_them_back_and_exits_zero("INT", "grace_int")
        .await;
}

// ---------------------------------------------- 4. configuration faults

/// A gateway that answers every request with a signed 40006 (insufficient
/// permissions), as Alipay does for an app lacking the product's permission.
async fn insufficient_permissions_gateway() -> (SocketAddr, Arc<AtomicU64>) {
    use zhima_worker::sandbox::codes::Node;
    use zhima_worker::sandbox::gateway::{RESPONSE_NODE, Reply};
    use zhima_worker::upstream::signing::{Charset, PrivateKey, SignType};
    let key = PrivateKey::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keys/test_sandbox_private.pem"
    )))
    .unwrap();
    let reply = Reply {
        node: Node {
            code: "40006".into(),
            msg: "Insufficient Permissions".into(),
            sub_code: Some("isv.insufficient-isv-permissions".into()),
            sub_msg: Some("ISV权限不足".into()),
            biz_no: None,
            relation_rank: None,
            relation_info: None,
            relation_score: None,
        },
        node_name: RESPONSE_NODE,
        sign_type: Some(SignType::Rsa2),
        charset: Charset::Utf8,
    };
    let body = zhima_worker::sandbox::reply::render(&reply, &key, None).unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let app = axum::Router::new().route(
        "/gateway.do",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { ([("content-type", "text/html;charset=utf-8")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, requests)
}

#[derive(Debug, Clone, Copy)]
enum ConfigurationFault {
    OurSignatureRejected,
    UnknownAppId,
    InsufficientPermissions40006,
    InvalidAuthToken20001,
}

const AUTH_TOKEN: &str = "202405AAtestAuthToken";

fn sandbox_config(apps: Vec<SandboxApp>, tokens: bool) -> SandboxConfig {
    let mut config = SandboxConfig::with_test_keys().unwrap();
    config.seed = Some(7);
    if !apps.is_empty() {
        config.apps = apps;
    }
    if tokens {
        config.app_auth_tokens = vec![sandbox::AppAuthToken {
            app_id: sandbox::DEFAULT_APP_ID.into(),
            token: AUTH_TOKEN.into(),
        }];
    }
    config
}

/// A gateway that keeps answering with one configuration fault.
struct FaultyGateway {
    addr: SocketAddr,
    sandbox: Option<sandbox::RunningSandbox>,
    fake_requests: Option<Arc<AtomicU64>>,
    /// What `/readyz` must name while paused.
    expected_reason: &'static str,
}

impl FaultyGateway {
    async fn start(fault: ConfigurationFault) -> Self {
        let good_app = SandboxConfig::with_test_keys().unwrap().apps.remove(0);
        let (apps, expected_reason) = match fault {
            ConfigurationFault::OurSignatureRejected => {
                let not_our_key = zhima_worker::upstream::signing::PublicKey::from_file(
                    std::path::Path::new(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/config/keys/test_sandbox_public.pem"
                    )),
                )
                .unwrap();
                let app = SandboxApp {
                    public_key: not_our_key,
                    ..good_app
                };
                (vec![app], "rejected our request signature")
            }
            ConfigurationFault::UnknownAppId => {
                let app = SandboxApp {
                    app_id: "2088000000000001".into(),
                    ..good_app
                };
                (vec![app], "isv.invalid-app-id")
            }
            ConfigurationFault::InvalidAuthToken20001 => {
                (vec![good_app], "aop.invalid-app-auth-token")
            }
            ConfigurationFault::InsufficientPermissions40006 => {
                let (addr, requests) = insufficient_permissions_gateway().await;
                return Self {
                    addr,
                    sandbox: None,
                    fake_requests: Some(requests),
                    expected_reason: "40006",
                };
            }
        };
        let running = sandbox::start(sandbox_config(apps, false)).await.unwrap();
        Self {
            addr: running.addr,
            sandbox: Some(running),
            fake_requests: None,
            expected_reason,
        }
    }

    fn requests(&self) -> u64 {
        match (&self.sandbox, &self.fake_requests) {
            (Some(sandbox), _) => sandbox.stats().requests,
            (None, Some(requests)) => requests.load(Ordering::SeqCst),
            (None, None) => 0,
        }
    }
}

/// The worker reaches the gateway through a switch: first the faulty one,
/// then (the fault "fixed") the good sandbox. Meanwhile consumption pauses,
/// every job is handed back unfailed, and the probe resumes it afterwards.
async fn configuration_fault_pauses_then_the_probe_resumes(fault: ConfigurationFault) {
    let token = matches!(fault, ConfigurationFault::InvalidAuthToken20001);
    let good = sandbox::start(sandbox_config(Vec::new(), token))
        .await
        .unwrap();
    let mut worker = support::worker::build(Db::Postgres, good).await;
    let faulty = FaultyGateway::start(fault).await;
    let (port, gateway) = switchable_proxy(Some(faulty.addr)).await;
    worker.env.insert(
        "ZHIMA__UPSTREAM__GATEWAY_URL".into(),
        format!("http://127.0.0.1:{port}/gateway.do"),
    );
    if token {
        worker
            .env
            .insert("ZHIMA__UPSTREAM__APP_AUTH_TOKEN".into(), AUTH_TOKEN.into());
    }
    let jobs = 10;
    for n in 0..jobs {
        worker.publish_job(&job("config", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let main_queue = worker.topology.names.queue.clone();
    let main_queue = main_queue.as_str();
    let readyz = format!("http://{listen}/readyz");
    let readyz = readyz.as_str();
    let test_worker = &worker;
    let reason = eventually(LIMIT, "paused with every job handed back", || async move {
        let (status, body) = get_text_promptly(readyz).await;
        let handed_back = test_worker.ready(main_queue).await == jobs;
        (status == 503 && body.contains("paused") && handed_back).then_some(body)
    })
    .await;
    assert!(
        reason.contains(faulty.expected_reason),
        "{fault:?}: {reason}"
    );
    let (_, metrics) = get_text_promptly(&format!("http://{listen}/metrics")).await;
    assert_eq!(sample_or_zero(&metrics, "zhima_consumption_paused"), 1.0);
    let seen = faulty.requests();
    let faulty = &faulty;
    eventually(LIMIT, "the paused worker probes", || async move {
        (faulty.requests() > seen).then_some(())
    })
    .await;
    assert_eq!(worker.ready(main_queue).await, jobs, "still paused");
    let statuses = worker.statuses().await;
    assert!(
        statuses.values().all(|s| s != "failed" && s != "succeeded"),
        "{fault:?}: no job burnt: {:?}",
        count_values(&statuses)
    );
    assert_eq!(worker.sandbox.stats().requests, 0);

    gateway.send_replace(Some(worker.sandbox.addr));
    worker
        .wait_for_statuses(LIMIT, |s| support::succeeded(s) == jobs as usize)
        .await;
    for n in 0..jobs {
        assert_eq!(worker.sandbox.billed_for(&format!("config_{n}")), 1);
    }
    let (ready, body) = get_text_promptly(readyz).await;
    assert_eq!(ready, 200, "resumed: {body}");
    let (_, metrics) = get_text_promptly(&format!("http://{listen}/metrics")).await;
    assert_eq!(sample_or_zero(&metrics, "zhima_consumption_paused"), 0.0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn our_signature_rejected_pauses_consumption_until_the_probe_passes() {
    configuration_fault_pauses_then_the_probe_resumes(ConfigurationFault::OurSignatureRejected)
        .await;
}

#[tokio::test]
async fn unknown_app_id_pauses_consumption_until_the_probe_passes() {
    configuration_fault_pauses_then_the_probe_resumes(ConfigurationFault::UnknownAppId).await;
}

#[tokio::test]
async fn insufficient_permissions_40006_pauses_consumption_until_the_probe_passes() {
    configuration_fault_pauses_then_the_probe_resumes(
        ConfigurationFault::InsufficientPermissions40006,
    )
    .await;
}

#[tokio::test]
async fn invalid_auth_token_20001_pauses_consumption_until_the_probe_passes() {
    configuration_fault_pauses_then_the_probe_resumes(ConfigurationFault::InvalidAuthToken20001)
        .await;
}

// ------------------------------------ 5. SIGKILL between call and commit

/// Answers take 3 s and the sandbox bills a query before it waits, so the
/// kill lands while billed calls are still on their way back: those jobs must
/// be called again and answered from the record (unbilled repeats > 0), and
/// every job ends succeeded, billed once.
#[tokio::test]
async fn sigkill_between_the_call_and_the_commit_loses_nothing_and_bills_nothing_twice() {
    let faults = Faults {
        latency_ms: 3_000,
        ..Faults::default()
    };
    let worker = spawn_worker_with(Db::Postgres, faults).await;
    let jobs = 12;
    for n in 0..jobs {
        worker.publish_job(&job("killed", n)).await;
    }
    let mut child = worker.start_run(&[]);
    let sandbox = &worker.sandbox;
    let billed_in_flight = eventually(LIMIT, "billed calls in flight", || async move {
        let stats = sandbox.stats();
        (stats.in_flight >= 4 && stats.billed >= 4).then_some(stats.billed)
    })
    .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    let stored = support::succeeded(&worker.statuses().await) as u64;
    assert!(
        stored < billed_in_flight,
        "the kill landed after billing and before the commit ({stored} stored, {billed_in_flight} billed)"
    );

    every_job_succeeds_once_the_faults_clear(&worker, jobs).await;
    let repeated: Vec<String> = (0..jobs)
        .map(|n| format!("killed_{n}"))
        .filter(|id| worker.sandbox.calls_for(id) > 1)
        .collect();
    for n in 0..jobs {
        assert_eq!(worker.sandbox.billed_for(&format!("killed_{n}")), 1);
    }
    let stats = worker.sandbox.stats();
    assert!(
        stats.unbilled_repeats > 0,
        "the window was hit: {} unbilled repeats",
        stats.unbilled_repeats
    );
    assert_eq!(
        stats.unbilled_repeats,
        repeated.len() as u64,
        "the repeats are the killed jobs' second calls: {repeated:?}"
    );
    worker.cleanup().await;
}

// ---------------------------------------- 6. TRANSACTION_WINDOW_EXCEEDED

/// A job whose row says its first call was two days ago (past
/// `transaction_validity_s - transaction_margin_s`, 23 h by default) is
/// failed with TRANSACTION_WINDOW_EXCEEDED and dead-lettered with that
/// reason, and never sent upstream.
#[tokio::test]
async fn a_job_whose_first_call_is_too_old_fails_with_transaction_window_exceeded_without_a_call() {
    let worker = spawn_worker(Db::Postgres).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&worker.database_url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO relation_checks (transaction_id, status, attempts, first_call_at) \
         VALUES ('window_1', 'retrying', 1, now() - interval '2 days')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    worker.publish_job(&job("window", 1)).await;
    worker.publish_job(&job("window", 2)).await;
    worker.run_until_idle(LIMIT).await;

    let rows = worker
        .query_rows(
            "SELECT transaction_id, status || ' ' || coalesce(error_code, '') FROM relation_checks",
        )
        .await;
    let rows: BTreeMap<_, _> = rows.into_iter().collect();
    assert_eq!(rows["window_1"], "failed TRANSACTION_WINDOW_EXCEEDED");
    assert_eq!(rows["window_2"], "succeeded ", "a fresh job is called");
    assert_eq!(worker.sandbox.calls_for("window_1"), 0, "no upstream call");
    let reasons = drain_dead_queue(&worker).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    let reason = reason_of(&reasons, "window_1");
    assert!(reason.contains("TRANSACTION_WINDOW_EXCEEDED"), "{reason}");
    worker.cleanup().await;
}
