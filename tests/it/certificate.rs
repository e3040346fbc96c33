//! Certificate mode (公钥证书模式): the `cert-sn` debugging command against the
//! fixtures of tests/fixtures/certs/ (their SNs computed independently with
//! OpenSSL, see src/upstream/cert/tests.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::BIN;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/certs")
        .join(name)
}

fn zhima(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cert_sn_prints_the_leaf_sn_and_the_root_sn() {
    let leaf = fixture("leaf_chain.crt");
    let output = zhima(&["cert-sn", leaf.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // printf '%s%s' 'CN=Zhima Test Class 2 R1,OU=Certification Authority,O=Zhima Test,C=CN' \
    //   183574552716694439010320730699203078393 | md5sum
    assert_eq!(stdout(&output), "bb3cda92e16d34e98405afc0ced667da\n");

    let roots = fixture("roots.crt");
    let output = zhima(&["cert-sn", "--root", roots.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "9098519e37a071850e7280dd9e0460f6_128bd16a2df8c6b7c742e16bfc5ec6e1\n"
    );
}

#[test]
fn cert_sn_refuses_hostile_files_with_exit_1_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let huge = dir.path().join("huge.crt");
    std::fs::write(&huge, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let key = fixture("leaf.key");
    let ec_only = fixture("root_ec.crt");
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["cert-sn", key.to_str().unwrap()],
            "holds a private key, not a certificate",
        ),
        (
            vec!["cert-sn", garbage.to_str().unwrap()],
            "not a valid X.509 certificate",
        ),
        (
            vec!["cert-sn", empty.to_str().unwrap()],
            "no PEM certificate",
        ),
        (vec!["cert-sn", huge.to_str().unwrap()], "larger than"),
        (
            vec!["cert-sn", "--root", ec_only.to_str().unwrap()],
            "no root in the bundle is RSA-signed",
        ),
        (vec!["cert-sn", "/nonexistent/x.crt"], "/nonexistent/x.crt"),
    ];
    for (args, reason) in cases {
        let output = zhima(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
        assert!(
            stderr(&output).contains(reason),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("MII"), "key material in {args:?}");
    }
    let output = zhima(&["cert-sn"]);
    assert_eq!(output.status.code(), Some(64));
}

// ---------------------------------------------------------------------------
// The client in certificate mode against the sandbox in certificate mode.

use zhima_worker::config::{self, UpstreamSettings};
use zhima_worker::job::{Relation, RelationQuery, TransactionId};
use zhima_worker::sandbox::{self, RunningSandbox, SandboxConfig};
use zhima_worker::upstream::{ErrorClass, UpstreamClient, UpstreamError};

const APP_ID: &str = zhima_worker::sandbox::DEFAULT_APP_ID;

/// A sandbox in certificate mode for the test app; its files in the dir.
async fn cert_sandbox() -> (tempfile::TempDir, RunningSandbox) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SandboxConfig::with_test_keys()
        .unwrap()
        .with_generated_certificates(
            dir.path(),
            &[(APP_ID.to_owned(), sandbox::test_app_public_key_file())],
        )
        .unwrap();
    config.seed = Some(5);
    (dir, sandbox::start(config).await.unwrap())
}

fn cert_settings(gateway_url: &str, dir: &Path) -> UpstreamSettings {
    let mut upstream = config::load(None).unwrap().upstream;
    upstream.gateway_url = gateway_url.parse().unwrap();
    upstream.private_key_path = key_path("test_merchant_private.pem");
    upstream.alipay_public_key_path = PathBuf::from("/nonexistent/not-needed.pem");
    upstream.app_cert_path = dir.join(format!("appCertPublicKey_{APP_ID}.crt"));
    upstream.alipay_cert_path = dir.join("alipayCertPublicKey_RSA2.crt");
    upstream.alipay_root_cert_path = dir.join("alipayRootCert.crt");
    upstream.timeout_ms = 5000;
    upstream.allow_shared_key_file = true;
    upstream
}

fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/keys")
        .join(name)
}

fn query(transaction_id: &str) -> RelationQuery {
    RelationQuery {
        product_code: "w1010100001000001200".into(),
        transaction_id: transaction_id.parse::<TransactionId>().unwrap(),
        cert_no: "640202199007164686".into(),
        name: "张三".into(),
        relation_phone: "15843991158".into(),
        relation_name: "欧阳李四".into(),
        relation: Some(Relation::Family),
        linked_merchant_id: None,
    }
}

#[tokio::test]
async fn a_query_in_certificate_mode_succeeds_and_the_answer_names_the_certificate() {
    let (dir, sandbox) = cert_sandbox().await;
    let client = UpstreamClient::new(&cert_settings(&sandbox.gateway_url(), dir.path())).unwrap();
    let report = client.query_relation(&query("cert_ok_1")).await;
    let answer = report.outcome.unwrap();
    assert!(!answer.biz_no.is_empty());
    let raw = report.raw_body.unwrap();
    let sn = sandbox.alipay_cert_sn().unwrap();
    assert!(
        raw.contains(&format!("\"alipay_cert_sn\":\"{sn}\"")),
        "{raw}"
    );
    assert_eq!(sandbox.billed_for("cert_ok_1"), 1);
    assert!(
        sandbox.stats().cert_downloads.is_empty(),
        "configured certificate used"
    );
}

#[tokio::test]
async fn the_sandbox_refuses_key_mode_and_wrong_sns_for_a_certificate_mode_app() {
    let (dir, sandbox) = cert_sandbox().await;
    // Key mode against a certificate-mode app: isv.missing-app-cert-sn,
    // signed with the Alipay certificate's key (so unverifiable here).
    let mut key_mode = cert_settings(&sandbox.gateway_url(), dir.path());
    key_mode.app_cert_path = PathBuf::new();
    key_mode.alipay_cert_path = PathBuf::new();
    key_mode.alipay_root_cert_path = PathBuf::new();
    key_mode.alipay_public_key_path = key_path("test_sandbox_public.pem");
    let client = UpstreamClient::new(&key_mode).unwrap();
    let report = client.query_relation(&query("cert_key_mode")).await;
    assert_eq!(report.code.as_deref(), Some("40002"));
    assert!(
        report
            .raw_body
            .unwrap()
            .contains(r#""sub_code":"isv.missing-app-cert-sn""#)
    );
    assert_eq!(sandbox.billed_for("cert_key_mode"), 0);

    // Another app certificate (same key, other SN): isv.app-cert-not-exist.
    let other = tempfile::tempdir().unwrap();
    let (_other_dir, _other_sandbox) = {
        let mut config = SandboxConfig::with_test_keys()
            .unwrap()
            .with_generated_certificates(
                other.path(),
                &[(APP_ID.to_owned(), sandbox::test_app_public_key_file())],
            )
            .unwrap();
        config.seed = Some(1);
        (other, sandbox::start(config).await.unwrap())
    };
    let mut wrong_app = cert_settings(&sandbox.gateway_url(), dir.path());
    wrong_app.app_cert_path = _other_dir
        .path()
        .join(format!("appCertPublicKey_{APP_ID}.crt"));
    let client = UpstreamClient::new(&wrong_app).unwrap();
    let report = client.query_relation(&query("cert_wrong_app")).await;
    assert!(
        report
            .raw_body
            .as_deref()
            .unwrap()
            .contains(r#""sub_code":"isv.app-cert-not-exist""#)
    );
    let error = report.outcome.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Configuration, "{error}");

    // The other sandbox's root bundle: the documented root SN error.
    let mut wrong_root = cert_settings(&sandbox.gateway_url(), dir.path());
    wrong_root.alipay_root_cert_path = _other_dir.path().join("alipayRootCert.crt");
    // The Alipay certificate must chain to the configured roots at start-up.
    let error = UpstreamClient::new(&wrong_root).err().unwrap();
    assert!(
        error.to_string().contains("upstream.alipay_cert_path"),
        "{error}"
    );
    wrong_root.alipay_cert_path = _other_dir.path().join("alipayCertPublicKey_RSA2.crt");
    let client = UpstreamClient::new(&wrong_root).unwrap();
    let report = client.query_relation(&query("cert_wrong_root")).await;
    assert!(
        report
            .raw_body
            .unwrap()
            .contains(r#""sub_code":"isv.invalid-alipay-root-cert-sn""#)
    );
    assert_eq!(sandbox.stats().billed, 0);
}

#[tokio::test]
async fn start_up_refuses_each_bad_certificate_naming_its_key() {
    let (dir, sandbox) = cert_sandbox().await;
    let url = sandbox.gateway_url();
    let fixtures = |name: &str| fixture(name);
    type Adjust = fn(&mut UpstreamSettings, &dyn Fn(&str) -> PathBuf, &Path);
    let cases: [(&str, Adjust, &str); 7] = [
        (
            "app certificate of another key",
            |s, f, _| s.app_cert_path = f("leaf.crt"),
            "upstream.app_cert_path: certificate bb3cda92e16d34e98405afc0ced667da does not hold the public half",
        ),
        (
            "a private key given as the app certificate",
            |s, f, _| s.app_cert_path = f("leaf.key"),
            "upstream.app_cert_path is unusable",
        ),
        (
            "garbage root bundle",
            |s, f, _| s.alipay_root_cert_path = f("make.sh"),
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ),
        (
            "root bundle without an RSA root",
            |s, f, _| s.alipay_root_cert_path = f("root_ec.crt"),
            "upstream.alipay_root_cert_path is unusable",
        ),
        (
            "Alipay certificate whose issuer's name is in the bundle, not its key",
            |s, f, _| {
                s.alipay_cert_path = f("leaf_chain.crt");
                s.alipay_root_cert_path = f("stranger.crt");
            },
            "does not chain to any root",
        ),
        (
            "Alipay certificate minted with an end-entity certificate's key",
            |s, f, _| {
                s.alipay_cert_path = f("forged_chain.crt");
                s.alipay_root_cert_path = f("roots.crt");
            },
            "does not chain to any root",
        ),
        (
            "missing file",
            |s, _, _| s.alipay_cert_path = PathBuf::from("/nonexistent/alipay.crt"),
            "/nonexistent/alipay.crt",
        ),
    ];
    for (what, adjust, expected) in cases {
        let mut settings = cert_settings(&url, dir.path());
        adjust(&mut settings, &fixtures, dir.path());
        let error = UpstreamClient::new(&settings)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        let text = format!("{error:#}");
        let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        assert!(chain.contains(expected), "{what}: {chain} / {text}");
        assert!(!chain.contains("MII"), "{what}: key material in the error");
    }
    // The console's Alipay certificate file holds the leaf only: when its
    // issuer is in neither file, the chain cannot be checked and the file is
    // used as configured (with a WARN), not refused.
    let mut settings = cert_settings(&url, dir.path());
    settings.alipay_cert_path = fixture("leaf.crt");
    settings.alipay_root_cert_path = fixture("roots.crt");
    UpstreamClient::new(&settings).unwrap();
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_app_certificate_is_refused_at_start_up() {
    let (dir, sandbox) = cert_sandbox().await;
    // Certificates for the app key with a validity in the past / future,
    // issued by a throwaway CA (validity is checked before anything else).
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    // The test merchant key is PKCS#8, which rcgen reads.
    let app_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(key_path("test_merchant_private.pem")).unwrap(),
    )
    .unwrap();
    for (not_before, not_after, expected) in [
        (
            rcgen::date_time_ymd(2000, 1, 1),
            rcgen::date_time_ymd(2001, 1, 1),
            "has expired",
        ),
        (
            rcgen::date_time_ymd(2090, 1, 1),
            rcgen::date_time_ymd(2091, 1, 1),
            "is not yet valid",
        ),
    ] {
        let mut params = rcgen::CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&app_key, &issuer).unwrap();
        let path = dir.path().join("dated.crt");
        std::fs::write(&path, cert.pem()).unwrap();
        let mut settings = cert_settings(&sandbox.gateway_url(), dir.path());
        settings.app_cert_path = path;
        let error = UpstreamClient::new(&settings).err().unwrap().to_string();
        assert!(error.contains("upstream.app_cert_path"), "{error}");
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test]
async fn after_a_rotation_the_new_certificate_is_downloaded_once_and_verifies() {
    let (dir, sandbox) = cert_sandbox().await;
    let client = UpstreamClient::new(&cert_settings(&sandbox.gateway_url(), dir.path())).unwrap();
    client
        .query_relation(&query("rot_before"))
        .await
        .outcome
        .unwrap();
    let old = sandbox.alipay_cert_sn().unwrap();
    let new = sandbox.rotate_alipay_cert(false).unwrap();
    assert_ne!(old, new);
    let mut tasks = Vec::new();
    let client = std::sync::Arc::new(client);
    for n in 0..8 {
        let client = std::sync::Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            client
                .query_relation(&query(&format!("rot_after_{n}")))
                .await
        }));
    }
    for task in tasks {
        let report = task.await.unwrap();
        report.outcome.unwrap();
        assert!(report.raw_body.unwrap().contains(&new));
    }
    let downloads = sandbox.stats().cert_downloads;
    assert_eq!(downloads.get(&new), Some(&1), "{downloads:?}");
    assert_eq!(downloads.len(), 1, "{downloads:?}");
}

#[tokio::test]
async fn a_downloaded_certificate_that_does_not_chain_is_a_configuration_fault() {
    let (dir, sandbox) = cert_sandbox().await;
    let client = UpstreamClient::new(&cert_settings(&sandbox.gateway_url(), dir.path())).unwrap();
    let stranger = sandbox.rotate_alipay_cert(true).unwrap();
    for _ in 0..2 {
        let report = client.query_relation(&query("rot_untrusted")).await;
        let error = report.outcome.unwrap_err();
        assert!(
            matches!(&error, UpstreamError::CertificateUntrusted { sn, .. } if *sn == stranger),
            "{error}"
        );
        assert_eq!(error.class(), ErrorClass::Configuration);
        assert_eq!(error.error_code(), "ALIPAY_CERT_UNTRUSTED");
        let text = error.to_string();
        assert!(text.contains("upstream.alipay_root_cert_path"), "{text}");
        assert!(text.contains("does not chain"), "{text}");
        // Never trusted; not downloaded again within the retry pause.
        assert_eq!(sandbox.stats().cert_downloads.get(&stranger), Some(&1));
    }
    // A trusted rotation later: the same transaction_id succeeds, billed once.
    sandbox.rotate_alipay_cert(false).unwrap();
    client
        .query_relation(&query("rot_untrusted"))
        .await
        .outcome
        .unwrap();
    assert_eq!(sandbox.billed_for("rot_untrusted"), 1);
}

/// A gateway that always answers `body` (HTTP 200).
async fn fixed_answer_server(body: String) -> String {
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { body }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/gateway.do")
}

#[tokio::test]
async fn hostile_alipay_cert_sns_are_never_looked_up_or_trusted() {
    let (dir, _sandbox) = cert_sandbox().await;
    let node = r#"{"code":"10000","msg":"Success","biz_no":"ZM1","relation_rank":"high"}"#;
    let cases = [
        (
            "a".repeat(10_000),
            "not a certificate SN (10000 characters)",
        ),
        ("../../etc/passwd".to_owned(), "not a certificate SN"),
        (
            "0123456789ABCDEF0123456789ABCDEF".to_owned(),
            "not a certificate SN",
        ),
    ];
    for (sn, expected) in cases {
        let body = format!(
            r#"{{"zhima_credit_relation_query_response":{node},"alipay_cert_sn":{},"sign":"AAAA"}}"#,
            serde_json::to_string(&sn).unwrap()
        );
        let url = fixed_answer_server(body).await;
        let client = UpstreamClient::new(&cert_settings(&url, dir.path())).unwrap();
        let error = client
            .query_relation(&query("hostile_sn"))
            .await
            .outcome
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Unverified, "{error}");
        assert!(error.to_string().contains(expected), "{error}");
        assert!(error.to_string().len() < 500, "the SN is not echoed");
    }
    // A well-formed but unknown SN from a gateway that cannot deliver it:
    // retryable, nothing trusted.
    let body = format!(
        r#"{{"zhima_credit_relation_query_response":{node},"alipay_cert_sn":"0123456789abcdef0123456789abcdef","sign":"AAAA"}}"#
    );
    let url = fixed_answer_server(body).await;
    let client = UpstreamClient::new(&cert_settings(&url, dir.path())).unwrap();
    let error = client
        .query_relation(&query("hostile_sn"))
        .await
        .outcome
        .unwrap_err();
    assert!(
        matches!(error, UpstreamError::CertificateFetch { .. }),
        "{error}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
    // A non-string SN is ignored and the configured certificate is tried.
    let body = format!(
        r#"{{"zhima_credit_relation_query_response":{node},"alipay_cert_sn":{{"x":1}},"sign":"AAAA"}}"#
    );
    let url = fixed_answer_server(body).await;
    let client = UpstreamClient::new(&cert_settings(&url, dir.path())).unwrap();
    let error = client
        .query_relation(&query("hostile_sn"))
        .await
        .outcome
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Unverified, "{error}");
}

// ---------------------------------------------------------------------------
// The worker (`zhima-worker run`) in certificate mode, end to end.

use std::time::Duration;

use crate::support::http::{free_local_addr, get_text};
use crate::support::worker::build;
use crate::support::{Db, TestWorker, count_values, job, succeeded};
use zhima_worker::sandbox::Faults;
use zhima_worker::upstream::cert::read_pem_file;
use zhima_worker::upstream::response::{SignTypeChoice, verify_response_body};
use zhima_worker::upstream::signing::PublicKey;

const LIMIT: Duration = Duration::from_secs(90);

/// A worker whose sandbox serves certificate mode, configured with the
/// sandbox's generated files (kept in the returned dir).
async fn cert_worker(db: Db, faults: Faults) -> (tempfile::TempDir, TestWorker) {
    let (dir, sandbox) = cert_sandbox().await;
    sandbox.set_faults(faults);
    let mut worker = build(db, sandbox).await;
    let file = |name: String| dir.path().join(name).display().to_string();
    for (key, value) in [
        (
            "ZHIMA__UPSTREAM__APP_CERT_PATH",
            file(format!("appCertPublicKey_{APP_ID}.crt")),
        ),
        (
            "ZHIMA__UPSTREAM__ALIPAY_CERT_PATH",
            file("alipayCertPublicKey_RSA2.crt".into()),
        ),
        (
            "ZHIMA__UPSTREAM__ALIPAY_ROOT_CERT_PATH",
            file("alipayRootCert.crt".into()),
        ),
        // Not needed in certificate mode: a path that does not exist proves it.
        (
            "ZHIMA__UPSTREAM__ALIPAY_PUBLIC_KEY_PATH",
            "/nonexistent/alipay_public.pem".into(),
        ),
    ] {
        worker.env.insert(key.into(), value);
    }
    (dir, worker)
}

/// The keys of every certificate the sandbox signed with, from its answers
/// to the download method (a test-side view, independent of the worker).
fn key_of(pem_file: &Path) -> PublicKey {
    read_pem_file(pem_file).unwrap()[0].public_key().unwrap()
}

/// Every stored answer verifies with one of `keys`.
async fn stored_answers_verify(worker: &TestWorker, keys: &[PublicKey]) {
    let bodies = worker
        .query_rows("SELECT transaction_id, response_body FROM relation_checks")
        .await;
    assert!(!bodies.is_empty());
    for (transaction_id, body) in bodies {
        let verified = keys.iter().any(|key| {
            verify_response_body(
                body.as_bytes(),
                "zhima.credit.relation.query",
                key,
                SignTypeChoice::Rsa2,
            )
            .is_ok()
        });
        assert!(verified, "{transaction_id}: stored evidence verifies");
    }
}

#[tokio::test]
async fn a_batch_with_faults_in_certificate_mode_ends_as_in_key_mode() {
    for db in [Db::Postgres, Db::Sqlite] {
        let faults = Faults {
            system_error_rate: 0.3,
            http_5xx_after_billing_rate: 0.2,
            ..Faults::default()
        };
        let (dir, mut worker) = cert_worker(db, faults).await;
        // About 44 % of calls fail here (30 % SYSTEM_ERROR, then 20 % of the
        // rest a 502 after billing): 8 attempts leave a job failed with odds
        // 0.44^8 ≈ 1.4e-3, ~8 % for the 60 jobs of this test (seen); 20
        // attempts (≤ 8 s of back-off at 400 ms) make it ≈ 7e-8 per job.
        worker
            .env
            .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "20".into());
        for n in 0..30 {
            worker.publish_job(&job("certflaky", n)).await;
        }
        worker.run_until_idle(LIMIT).await;
        let statuses = worker.statuses().await;
        let failures = worker
            .query_rows(
                "SELECT transaction_id, COALESCE(error_code, '') || ' / ' || \
                 COALESCE(error_message, '') || ' / attempts ' || attempts \
                 FROM relation_checks WHERE status <> 'succeeded'",
            )
            .await;
        assert_eq!(
            succeeded(&statuses),
            30,
            "{db:?}: {:?}: {failures:?}",
            count_values(&statuses)
        );
        let stats = worker.sandbox.stats();
        assert!(stats.requests > 30, "faults forced retries");
        for n in 0..30 {
            assert_eq!(worker.sandbox.billed_for(&format!("certflaky_{n}")), 1);
        }
        let ledger = worker.count("SELECT COUNT(*) FROM upstream_calls").await;
        assert_eq!(ledger, i64::try_from(stats.requests).unwrap());
        stored_answers_verify(
            &worker,
            &[key_of(&dir.path().join("alipayCertPublicKey_RSA2.crt"))],
        )
        .await;
        worker.cleanup().await;
    }
}

/// Lines of a replica's stderr (JSON logs) that mention Alipay certificates.
fn collect_certificate_lines(
    child: &mut tokio::process::Child,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt as _;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&lines);
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if line.contains("Alipay certificate") {
                sink.lock().unwrap().push(line);
            }
        }
    });
    lines
}

#[tokio::test]
async fn rotation_mid_run_is_downloaded_once_and_used_by_both_replicas() {
    let (dir, worker) = cert_worker(
        Db::Postgres,
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    for n in 0..120 {
        worker.publish_job(&job("certrot", n)).await;
    }
    let mut replicas = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..2 {
        let mut command = worker.command(&["run", "--until-idle"]);
        command.stderr(std::process::Stdio::piped());
        command.env("ZHIMA__WORKER__CONCURRENCY", "4");
        let mut child = command.spawn().unwrap();
        logs.push(collect_certificate_lines(&mut child));
        replicas.push(child);
    }
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= 20)
        .await;
    let old = worker.sandbox.alipay_cert_sn().unwrap();
    let new = worker.sandbox.rotate_alipay_cert(false).unwrap();
    for child in &mut replicas {
        let status = tokio::time::timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 120, "{:?}", count_values(&statuses));
    for n in 0..120 {
        assert_eq!(worker.sandbox.billed_for(&format!("certrot_{n}")), 1);
    }
    let downloads = worker.sandbox.stats().cert_downloads;
    assert_eq!(downloads.get(&new), Some(&1), "{downloads:?}");
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(
        worker
            .query_rows("SELECT cert_sn, cert_sn FROM alipay_certificates")
            .await
            .into_iter()
            .map(|(sn, _)| sn)
            .collect::<Vec<_>>(),
        vec![new.clone()]
    );
    // One replica downloaded it, the other found it in the database.
    let lines: Vec<Vec<String>> = logs.iter().map(|l| l.lock().unwrap().clone()).collect();
    let count = |needle: &str| {
        lines
            .iter()
            .filter(|replica| replica.iter().any(|line| line.contains(needle)))
            .count()
    };
    assert_eq!(count("downloaded and trusted"), 1, "{lines:?}");
    assert_eq!(count("loaded from the database"), 1, "{lines:?}");
    // Answers before the rotation verify with the old certificate, after it
    // with the new one; nothing else was stored.
    let new_pem = dir.path().join("rotated.crt");
    let stored: String = worker
        .query_rows("SELECT pem, pem FROM alipay_certificates")
        .await
        .remove(0)
        .0;
    std::fs::write(&new_pem, stored).unwrap();
    assert_ne!(old, new);
    stored_answers_verify(
        &worker,
        &[
            key_of(&dir.path().join("alipayCertPublicKey_RSA2.crt")),
            key_of(&new_pem),
        ],
    )
    .await;
    worker.cleanup().await;
}

#[tokio::test]
async fn a_download_that_does_not_chain_pauses_with_advice_and_stores_no_success() {
    let (dir, worker) = cert_worker(Db::Postgres, Faults::default()).await;
    let stranger = worker.sandbox.rotate_alipay_cert(true).unwrap();
    for n in 0..10 {
        worker.publish_job(&job("certbad", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    crate::support::until(LIMIT, "paused on the untrusted certificate", || async {
        let (status, reason) = get_text(&format!("http://{listen}/readyz")).await;
        status == 503 && reason.contains("does not chain")
    })
    .await;
    let (_, reason) = get_text(&format!("http://{listen}/readyz")).await;
    assert!(
        reason.contains("upstream.alipay_root_cert_path"),
        "advice: {reason}"
    );
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 0, "{:?}", count_values(&statuses));
    assert!(statuses.values().all(|s| s != "failed"));
    assert_eq!(
        worker
            .count("SELECT COUNT(*) FROM alipay_certificates")
            .await,
        0,
        "the untrusted certificate {stranger} is not stored"
    );
    // Alipay (here the sandbox) fixes its certificate: the probe resumes,
    // every job succeeds, each billed once (the earlier answers replayed).
    let fixed = worker.sandbox.rotate_alipay_cert(false).unwrap();
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 10)
        .await;
    assert_eq!(succeeded(&statuses), 10);
    for n in 0..10 {
        assert_eq!(worker.sandbox.billed_for(&format!("certbad_{n}")), 1);
    }
    assert_eq!(
        worker
            .query_rows("SELECT cert_sn, cert_sn FROM alipay_certificates")
            .await
            .into_iter()
            .map(|(sn, _)| sn)
            .collect::<Vec<_>>(),
        vec![fixed]
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    drop(dir);
    worker.cleanup().await;
}

// ---------------------------------------------------------------------------
// Rotation without restart: several Alipay public keys in key mode, reload.

fn key_mode_settings(gateway_url: &str, alipay_keys: &Path) -> UpstreamSettings {
    let mut upstream = config::load(None).unwrap().upstream;
    upstream.gateway_url = gateway_url.parse().unwrap();
    upstream.private_key_path = key_path("test_merchant_private.pem");
    upstream.alipay_public_key_path = alipay_keys.to_owned();
    upstream.timeout_ms = 5000;
    upstream.allow_shared_key_file = true;
    upstream
}

fn concat_keys(dir: &Path, name: &str, keys: &[&str]) -> PathBuf {
    let text: String = keys
        .iter()
        .map(|key| std::fs::read_to_string(key_path(key)).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn key_mode_accepts_an_answer_verifying_with_any_configured_alipay_key() {
    let sandbox = sandbox::start(SandboxConfig::with_test_keys().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The old key first, the new (the sandbox's) second, as during a rotation.
    let both = concat_keys(
        dir.path(),
        "both.pem",
        &["test_merchant_public.pem", "test_sandbox_public.pem"],
    );
    let client = UpstreamClient::new(&key_mode_settings(&sandbox.gateway_url(), &both)).unwrap();
    client
        .query_relation(&query("rotate_key_1"))
        .await
        .outcome
        .unwrap();
    // Neither key: unverified, as with one wrong key.
    let wrong = concat_keys(
        dir.path(),
        "wrong.pem",
        &["test_merchant_public.pem", "test_merchant_public.pem"],
    );
    let client = UpstreamClient::new(&key_mode_settings(&sandbox.gateway_url(), &wrong)).unwrap();
    let error = client
        .query_relation(&query("rotate_key_2"))
        .await
        .outcome
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Unverified, "{error}");
    // A private key among the public ones is refused at start-up.
    let mixed = concat_keys(
        dir.path(),
        "mixed.pem",
        &["test_sandbox_public.pem", "test_merchant_private.pem"],
    );
    let error = UpstreamClient::new(&key_mode_settings(&sandbox.gateway_url(), &mixed))
        .err()
        .unwrap();
    assert!(
        format!("{error:?}").contains("PrivateKeyInPublicSlot"),
        "{error:?}"
    );
}

#[tokio::test]
async fn reload_swaps_keys_and_keeps_the_old_ones_when_the_new_files_are_unusable() {
    let sandbox = sandbox::start(SandboxConfig::with_test_keys().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alipay = concat_keys(dir.path(), "alipay.pem", &["test_merchant_public.pem"]);
    let settings = key_mode_settings(&sandbox.gateway_url(), &alipay);
    let client = UpstreamClient::new(&settings).unwrap();
    let error = client
        .query_relation(&query("reload_1"))
        .await
        .outcome
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Unverified);
    // The right key arrives: a reload picks it up, no restart.
    concat_keys(dir.path(), "alipay.pem", &["test_sandbox_public.pem"]);
    client.reload(&settings).unwrap();
    client
        .query_relation(&query("reload_1"))
        .await
        .outcome
        .unwrap();
    // A broken file: refused, the loaded key stays in use.
    std::fs::write(
        &alipay,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let error = client.reload(&settings).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("upstream.alipay_public_key_path"),
        "{error}"
    );
    client
        .query_relation(&query("reload_2"))
        .await
        .outcome
        .unwrap();

    // Certificate mode: the expiries are those of the configured files.
    let (cert_dir, cert_sandbox) = cert_sandbox().await;
    let cert_client =
        UpstreamClient::new(&cert_settings(&cert_sandbox.gateway_url(), cert_dir.path())).unwrap();
    let roles: Vec<&str> = cert_client
        .certificate_expiries()
        .iter()
        .map(|expiry| expiry.role)
        .collect();
    assert_eq!(roles, ["app", "alipay", "root"]);
    assert!(client.certificate_expiries().is_empty(), "key mode");
}

#[tokio::test]
async fn the_worker_publishes_certificate_expiry_and_survives_sighup() {
    let (dir, worker) = cert_worker(Db::Sqlite, Faults::default()).await;
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let url = format!("http://{listen}/metrics");
    crate::support::http::scrape_when_up(&url).await;
    // /metrics is up before the client is: wait for the gauge.
    let metrics = crate::support::eventually(LIMIT, "the certificate expiry gauge", || async {
        crate::support::http::scrape(&url)
            .await
            .filter(|text| text.contains("zhima_certificate_expiry_seconds{role=\"alipay\"}"))
    })
    .await;
    let alipay = read_pem_file(&dir.path().join("alipayCertPublicKey_RSA2.crt")).unwrap();
    let now = chrono::Utc::now().timestamp();
    #[allow(clippy::cast_precision_loss)]
    let expected = (alipay[0].not_after() - now) as f64;
    let seen = crate::support::http::sample(
        &metrics,
        r#"zhima_certificate_expiry_seconds{role="alipay"}"#,
    );
    assert!((seen - expected).abs() < 120.0, "{seen} vs {expected}");
    for role in ["app", "root"] {
        let series = format!(r#"zhima_certificate_expiry_seconds{{role="{role}"}}"#);
        assert!(
            crate::support::http::sample(&metrics, &series) > 0.0,
            "{role}"
        );
    }
    // SIGHUP reloads (here: the same files); the worker keeps running.
    crate::support::process::send_signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    worker.publish_job(&job("afterhup", 1)).await;
    worker.wait_for_statuses(LIMIT, |s| succeeded(s) == 1).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

/// A download request as an SDK sends it, signed with the merchant key, or
/// with `sign` replaced when `sign_override` is given.
async fn download_request(
    sandbox: &RunningSandbox,
    app_id: &str,
    biz_content: &str,
    sign_override: Option<&str>,
) -> String {
    use zhima_worker::upstream::signing::{PrivateKey, SignType, string_to_sign};
    let key = PrivateKey::from_file(&key_path("test_merchant_private.pem")).unwrap();
    let params = [
        ("app_id", app_id),
        ("method", "alipay.open.app.alipaycert.download"),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("timestamp", "2026-01-01 00:00:00"),
        ("version", "1.0"),
        ("biz_content", biz_content),
    ];
    let sign = match sign_override {
        Some(sign) => sign.to_owned(),
        None => key
            .sign(SignType::Rsa2, string_to_sign(params).as_bytes())
            .unwrap(),
    };
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        form.append_pair(name, value);
    }
    form.append_pair("sign", &sign);
    reqwest::Client::new()
        .post(sandbox.gateway_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_sandbox_download_method_refuses_hostile_requests() {
    let (_dir, sandbox) = cert_sandbox().await;
    let current = sandbox.alipay_cert_sn().unwrap();
    let good = download_request(
        &sandbox,
        APP_ID,
        &format!(r#"{{"alipay_cert_sn":"{current}"}}"#),
        None,
    )
    .await;
    assert!(good.contains(r#""code":"10000""#), "{good}");
    assert!(good.contains("alipay_cert_content"), "{good}");
    let long = "a".repeat(10_000);
    let cases = [
        (
            APP_ID,
            format!(r#"{{"alipay_cert_sn":"{long}"}}"#),
            None,
            "isv.alipay-cert-not-exist",
        ),
        (
            APP_ID,
            r#"{"alipay_cert_sn":42}"#.to_owned(),
            None,
            "isv.alipay-cert-not-exist",
        ),
        (
            APP_ID,
            "not json".to_owned(),
            None,
            "isv.alipay-cert-not-exist",
        ),
        (
            APP_ID,
            format!(r#"{{"alipay_cert_sn":"{current}"}}"#),
            Some("AAAA"),
            "isv.invalid-signature",
        ),
        (
            "2099000000000000",
            format!(r#"{{"alipay_cert_sn":"{current}"}}"#),
            None,
            "isv.invalid-app-id",
        ),
    ];
    for (app_id, biz, sign, expected) in cases {
        let body = download_request(&sandbox, app_id, &biz, sign).await;
        assert!(body.contains(expected), "{expected}: {body}");
        assert!(!body.contains("alipay_cert_content"), "{expected}: {body}");
    }
    assert_eq!(sandbox.stats().cert_downloads.get(&current), Some(&1));
}

#[tokio::test]
async fn sighup_picks_up_a_rotated_alipay_key_without_a_restart() {
    let sandbox = crate::support::worker::start_sandbox(
        Faults::default(),
        zhima_worker::sandbox::SandboxClock::System,
    )
    .await;
    let mut worker = build(Db::Sqlite, sandbox).await;
    let dir = tempfile::tempdir().unwrap();
    // Only the old key at first: every answer fails verification.
    let keys = concat_keys(dir.path(), "alipay.pem", &["test_merchant_public.pem"]);
    worker.env.insert(
        "ZHIMA__UPSTREAM__ALIPAY_PUBLIC_KEY_PATH".into(),
        keys.display().to_string(),
    );
    for n in 0..10 {
        worker.publish_job(&job("hup", n)).await;
    }
    let mut child = worker.start_run(&[]);
    crate::support::until(LIMIT, "unverified answers seen", || async {
        worker.sandbox.stats().requests >= 3
    })
    .await;
    assert_eq!(
        succeeded(&worker.statuses().await),
        0,
        "nothing verified yet"
    );
    // The rotation: old and new key in the file, then SIGHUP.
    concat_keys(
        dir.path(),
        "alipay.pem",
        &["test_merchant_public.pem", "test_sandbox_public.pem"],
    );
    crate::support::process::send_signal(&child, "HUP");
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 10)
        .await;
    assert_eq!(succeeded(&statuses), 10);
    for n in 0..10 {
        assert_eq!(worker.sandbox.billed_for(&format!("hup_{n}")), 1);
    }
    assert!(child.try_wait().unwrap().is_none(), "the same process");
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn replicas_fetching_the_same_certificate_take_turns_on_postgresql() {
    use zhima_worker::store::JobStore;
    let name = format!("zw_certlock_{}", crate::support::worker::random_id());
    let url = crate::support::postgres::create_migrated_database(&name).await;
    let first = JobStore::connect(&url, 2).await.unwrap();
    let second = JobStore::connect(&url, 2).await.unwrap();
    let sn = "0123456789abcdef0123456789abcdef";
    let mut holding = first.begin_certificate_fetch(sn).await.unwrap();
    assert_eq!(holding.stored().await.unwrap(), None);
    // The second replica waits for the lock...
    let waiting = tokio::spawn(async move {
        let mut fetch = second.begin_certificate_fetch(sn).await.unwrap();
        fetch.stored().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the lock is held by the first fetch"
    );
    // ...and finds what the first stored.
    holding
        .store("-----BEGIN CERTIFICATE-----", chrono::Utc::now())
        .await
        .unwrap();
    let seen = tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap();
    assert_eq!(seen.as_deref(), Some("-----BEGIN CERTIFICATE-----"));
    // Another SN is not blocked by a held lock.
    let _held = first.begin_certificate_fetch(sn).await.unwrap();
    let third = JobStore::connect(&url, 2).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        third.begin_certificate_fetch("fedcba9876543210fedcba9876543210"),
    )
    .await
    .unwrap()
    .unwrap();
    drop(_held);
    drop((first, third));
    crate::support::postgres::drop_database(&name).await;
}

#[test]
fn the_three_certificate_paths_are_set_together_or_not_at_all() {
    let run = |env: &[(&str, &str)]| {
        Command::new(BIN)
            .args(["config", "show"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("ZHIMA__UPSTREAM__APP_CERT_PATH", "app.crt")],
            "`upstream.alipay_cert_path` must be set in certificate mode",
        ),
        (
            &[
                ("ZHIMA__UPSTREAM__APP_CERT_PATH", "app.crt"),
                ("ZHIMA__UPSTREAM__ALIPAY_CERT_PATH", "alipay.crt"),
            ],
            "`upstream.alipay_root_cert_path` must be set in certificate mode",
        ),
        (
            &[("ZHIMA__UPSTREAM__ALIPAY_ROOT_CERT_PATH", "root.crt")],
            "`upstream.alipay_root_cert_path` is only used in certificate mode",
        ),
    ];
    for (env, expected) in cases {
        let output = run(env);
        assert_eq!(output.status.code(), Some(1), "{env:?}");
        assert!(
            stderr(&output).contains(expected),
            "{env:?}: {}",
            stderr(&output)
        );
    }
    let all = run(&[
        ("ZHIMA__UPSTREAM__APP_CERT_PATH", "app.crt"),
        ("ZHIMA__UPSTREAM__ALIPAY_CERT_PATH", "alipay.crt"),
        ("ZHIMA__UPSTREAM__ALIPAY_ROOT_CERT_PATH", "root.crt"),
    ]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert!(stdout(&all).contains("upstream.app_cert_path = \"app.crt\""));
}

#[tokio::test]
async fn the_sandbox_serves_certificate_mode_from_given_files() {
    // Files as --cert-dir wrote them, given back with the explicit flags'
    // constructor.
    let dir = tempfile::tempdir().unwrap();
    let generated = SandboxConfig::with_test_keys()
        .unwrap()
        .with_generated_certificates(
            dir.path(),
            &[(APP_ID.to_owned(), sandbox::test_app_public_key_file())],
        )
        .unwrap();
    drop(generated);
    let mut config = SandboxConfig::with_test_keys().unwrap();
    config.certificates = Some(
        sandbox::SandboxCertificates::from_files(
            &dir.path().join("alipayRootCert.crt"),
            &dir.path().join("alipayCertPublicKey_RSA2.crt"),
            &dir.path().join("alipayCertPrivateKey.pem"),
            &[(
                APP_ID.to_owned(),
                dir.path().join(format!("appCertPublicKey_{APP_ID}.crt")),
            )],
        )
        .unwrap(),
    );
    let sandbox = sandbox::start(config).await.unwrap();
    let client = UpstreamClient::new(&cert_settings(&sandbox.gateway_url(), dir.path())).unwrap();
    client
        .query_relation(&query("from_files"))
        .await
        .outcome
        .unwrap();
    // Without the root's key there is nothing to issue a rotation with.
    let refused = sandbox.rotate_alipay_cert(false).unwrap_err();
    assert!(refused.contains("--cert-dir"), "{refused}");
    let answer = reqwest::Client::new()
        .post(format!("{}/admin/rotate-alipay-cert", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
}

/// [`zhima`], killed after `limit` (a sandbox that started by mistake would
/// otherwise serve forever).
fn zhima_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn sandbox_certificate_flags_are_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("roots.crt");
    let leaf = fixture("leaf.crt");
    let key = fixture("leaf.key");
    let root = root.to_str().unwrap();
    let leaf = leaf.to_str().unwrap();
    let key = key.to_str().unwrap();
    let cert_dir = dir.path().to_str().unwrap();
    let ec_root = fixture("root_ec.crt");
    let ec_root = ec_root.to_str().unwrap();
    let app_cert = format!("{APP_ID}={leaf}");
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec!["--root-cert", root],
            "needs --root-cert, --alipay-cert, --alipay-cert-key and at least one --app-cert",
        ),
        (
            vec!["--cert-dir", cert_dir, "--root-cert", root],
            "--cert-dir generates every certificate",
        ),
        (
            vec![
                "--root-cert",
                root,
                "--alipay-cert",
                leaf,
                "--alipay-cert-key",
                key,
                "--app-cert",
                "2099000000000000=x.crt",
            ],
            "no such app",
        ),
        (
            vec![
                "--root-cert",
                ec_root,
                "--alipay-cert",
                leaf,
                "--alipay-cert-key",
                key,
                "--app-cert",
                &app_cert,
            ],
            "no root in the bundle is RSA-signed",
        ),
        (
            vec![
                "--root-cert",
                root,
                "--alipay-cert",
                key,
                "--alipay-cert-key",
                key,
                "--app-cert",
                &app_cert,
            ],
            "holds a private key",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["sandbox", "--listen", "127.0.0.1:0"];
        args.extend(flags.iter().copied());
        let output = zhima_within(&args, Duration::from_secs(30));
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty(), "{args:?}: did not listen");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
