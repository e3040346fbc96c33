//! The project's client (`UpstreamClient`) on the wire and against the
//! sandbox gateway: the exact request it sends (utf-8 and GBK), and every kind
//! of answer it must classify.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use zhima_worker::config::{self, UpstreamSettings};
use zhima_worker::job::{Relation, RelationQuery, TransactionId};
use zhima_worker::job::{mask_cert_no, mask_name, mask_phone};
use zhima_worker::sandbox::{self, Faults, RunningSandbox, SandboxConfig, SystemErrorStyle};
use zhima_worker::upstream::signing::{self, Charset, PublicKey, SignType};
use zhima_worker::upstream::{ClientSetupError, ErrorClass, UpstreamClient, UpstreamError};

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/keys")
        .join(name)
}

fn settings(gateway_url: &str) -> UpstreamSettings {
    let mut upstream = config::load(None).unwrap().upstream;
    upstream.gateway_url = gateway_url.parse().unwrap();
    upstream.private_key_path = key_path("test_merchant_private.pem");
    upstream.alipay_public_key_path = key_path("test_sandbox_public.pem");
    upstream.timeout_ms = 2000;
    // The test keys are published in the repository (mode 0644 on a fresh
    // clone): not secret, so the shared-file rule does not apply to them.
    upstream.allow_shared_key_file = true;
    upstream
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

async fn sandbox_with(adjust: impl FnOnce(&mut SandboxConfig)) -> RunningSandbox {
    let mut config = SandboxConfig::with_test_keys().unwrap();
    config.seed = Some(11);
    adjust(&mut config);
    sandbox::start(config).await.unwrap()
}

#[derive(Debug, Default, Clone)]
struct Captured {
    method: String,
    query: String,
    content_type: String,
    body: Vec<u8>,
}

/// A server that records the first request and answers 200 with an empty
/// JSON object.
async fn capture_server() -> (String, Arc<Mutex<Option<Captured>>>) {
    let seen = Arc::new(Mutex::new(None));
    let store = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: Request| {
        let store = Arc::clone(&store);
        async move {
            let (parts, body) = request.into_parts();
            let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            *store.lock().unwrap() = Some(Captured {
                method: parts.method.to_string(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: body.to_vec(),
            });
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/gateway.do"), seen)
}

/// Splits `k=v&…` and percent-decodes each side to raw bytes.
fn decode_pairs(text: &str) -> Vec<(String, Vec<u8>)> {
    text.split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            let value = value.replace('+', " ");
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(&value).collect();
            (key.to_owned(), bytes)
        })
        .collect()
}

async fn captured_request(charset: Charset) -> (Captured, Vec<(String, String)>) {
    let (url, seen) = capture_server().await;
    let mut upstream = settings(&url);
    upstream.charset = charset;
    let client = UpstreamClient::new(&upstream).unwrap();
    let _ = client.query_relation(&query("wire_1")).await;
    let captured = seen.lock().unwrap().clone().expect("a request arrived");
    let mut params: Vec<(String, String)> = decode_pairs(&captured.query)
        .into_iter()
        .chain(decode_pairs(std::str::from_utf8(&captured.body).unwrap()))
        .map(|(k, v)| (k, charset.decode(&v).into_owned()))
        .collect();
    params.sort();
    (captured, params)
}

async fn request_is_exact(charset: Charset, label: &str) {
    let (captured, params) = captured_request(charset).await;
    assert_eq!(captured.method, "POST");
    assert_eq!(
        captured.content_type,
        format!("application/x-www-form-urlencoded;charset={label}")
    );
    let query_keys: Vec<&str> = captured
        .query
        .split('&')
        .map(|p| p.split_once('=').unwrap().0)
        .collect();
    assert_eq!(
        query_keys,
        [
            "app_id",
            "method",
            "format",
            "charset",
            "sign_type",
            "timestamp",
            "version",
            "sign"
        ]
    );
    let body = std::str::from_utf8(&captured.body).unwrap();
    assert!(body.starts_with("biz_content="), "{body}");
    assert!(!body.contains('&'), "only biz_content in the body: {body}");
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("method"), "zhima.credit.relation.query");
    assert_eq!(get("format"), "JSON");
    assert_eq!(get("version"), "1.0");
    assert_eq!(get("sign_type"), "RSA2");
    assert_eq!(get("charset"), label);
    assert_eq!(
        get("biz_content"),
        r#"{"product_code":"w1010100001000001200","transaction_id":"wire_1","cert_no":"640202199007164686","name":"张三","relation_phone":"15843991158","relation_name":"欧阳李四","relation":"family"}"#
    );
    let timestamp = get("timestamp");
    assert!(
        chrono::NaiveDateTime::parse_from_str(&timestamp, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{timestamp}"
    );
    let unsigned: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "sign")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let string_to_sign = signing::string_to_sign(unsigned.iter().copied());
    let public = PublicKey::from_file(&key_path("test_merchant_public.pem")).unwrap();
    public
        .verify(
            SignType::Rsa2,
            &charset.encode(&string_to_sign),
            &get("sign"),
        )
        .expect("the sign covers the charset-encoded string to sign");
}

#[tokio::test]
async fn utf8_request_has_the_exact_query_body_and_headers() {
    request_is_exact(Charset::Utf8, "utf-8").await;
}

#[tokio::test]
async fn gbk_request_is_encoded_and_signed_in_gbk() {
    request_is_exact(Charset::Gbk, "gbk").await;
    let (captured, _) = captured_request(Charset::Gbk).await;
    let body = std::str::from_utf8(&captured.body).unwrap();
    // 张 is D5C5 in GBK (E5BCA0 in UTF-8)
    assert!(body.contains("%D5%C5"), "{body}");
    assert!(!body.contains("%E5%BC%A0"), "{body}");
}

#[tokio::test]
async fn verified_success_carries_the_answer() {
    let sandbox = sandbox_with(|_| {}).await;
    for (charset, sign_type) in [
        (Charset::Utf8, SignType::Rsa2),
        (Charset::Gbk, SignType::Rsa2),
        (Charset::Utf8, SignType::Rsa),
        (Charset::Gb18030, SignType::Rsa2),
    ] {
        let mut upstream = settings(&sandbox.gateway_url());
        upstream.charset = charset;
        upstream.sign_type = sign_type;
        let client = UpstreamClient::new(&upstream).unwrap();
        let transaction_id = format!(
            "ok_{}_{}",
            charset.as_str().replace('-', ""),
            sign_type.as_str()
        );
        let report = client.query_relation(&query(&transaction_id)).await;
        let answer = report
            .outcome
            .unwrap_or_else(|e| panic!("{charset:?} {sign_type:?}: {e}"));
        assert_eq!(answer.biz_no.len(), 32);
        assert!(answer.biz_no.starts_with("ZM"));
        assert!(answer.relation_rank.starts_with("V_CT_RL_"));
        assert_eq!(report.code.as_deref(), Some("10000"));
        assert_eq!(report.http_status, Some(200));
        assert!(report.raw_body.unwrap().contains(&answer.biz_no));
    }
}

async fn failure(
    sandbox: &RunningSandbox,
    adjust: impl FnOnce(&mut UpstreamSettings),
    query: RelationQuery,
) -> UpstreamError {
    let mut upstream = settings(&sandbox.gateway_url());
    adjust(&mut upstream);
    let client = UpstreamClient::new(&upstream).unwrap();
    client
        .query_relation(&query)
        .await
        .outcome
        .expect_err("the call fails")
}

#[tokio::test]
async fn business_errors_are_permanent_and_normalized() {
    let sandbox = sandbox_with(|_| {}).await;
    let mut wrong_product = query("biz_1");
    wrong_product.product_code = "w0000000000000000000".into();
    let error = failure(&sandbox, |_| {}, wrong_product).await;
    assert_eq!(error.error_code(), "API_PRODUCT_NOT_MATCH");
    assert_eq!(error.class(), ErrorClass::Permanent);

    let mut bad_phone = query("biz_2");
    bad_phone.relation_phone = "1234".into();
    let error = failure(&sandbox, |_| {}, bad_phone).await;
    assert_eq!(error.error_code(), "INVALID_PARAMETER");
    assert_eq!(error.class(), ErrorClass::Permanent);

    let client = UpstreamClient::new(&settings(&sandbox.gateway_url())).unwrap();
    client
        .query_relation(&query("biz_3"))
        .await
        .outcome
        .unwrap();
    let mut changed = query("biz_3");
    changed.relation_name = "王五".into();
    let error = failure(&sandbox, |_| {}, changed).await;
    assert_eq!(error.error_code(), "TRANSACTION_ID_REPEAT");
    assert_eq!(error.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn same_transaction_id_replays_the_first_answer_unbilled() {
    let sandbox = sandbox_with(|_| {}).await;
    let client = UpstreamClient::new(&settings(&sandbox.gateway_url())).unwrap();
    let first = client.query_relation(&query("replay_1")).await;
    let second = client.query_relation(&query("replay_1")).await;
    assert_eq!(first.raw_body, second.raw_body);
    assert_eq!(first.outcome.unwrap(), second.outcome.unwrap());
    assert_eq!(sandbox.billed_for("replay_1"), 1);
    assert_eq!(sandbox.calls_for("replay_1"), 2);
}

#[tokio::test]
async fn expired_transaction_id_is_permanent() {
    let sandbox = sandbox_with(|config| config.validity = Duration::from_millis(50)).await;
    let client = UpstreamClient::new(&settings(&sandbox.gateway_url())).unwrap();
    client
        .query_relation(&query("old_1"))
        .await
        .outcome
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let error = client
        .query_relation(&query("old_1"))
        .await
        .outcome
        .unwrap_err();
    assert_eq!(error.error_code(), "TRANSACTION_ID_EXPIRED");
    assert_eq!(error.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn rejected_signature_shows_both_strings_to_sign_without_pii() {
    let sandbox = sandbox_with(|_| {}).await;
    let error = failure(
        &sandbox,
        |upstream| upstream.private_key_path = key_path("test_sandbox_private.pem"),
        query("sig_1"),
    )
    .await;
    assert_eq!(error.class(), ErrorClass::Configuration);
    assert_eq!(error.error_code(), "INVALID_SIGNATURE");
    let UpstreamError::SignatureRejected(mismatch) = &error else {
        panic!("{error:?}");
    };
    assert!(
        mismatch
            .ours
            .starts_with("app_id=2014072300007148&biz_content=")
    );
    assert!(
        mismatch
            .theirs
            .starts_with("app_id=2014072300007148&biz_content=")
    );
    assert_eq!(mismatch.ours, mismatch.theirs, "same string, different key");
    let shown = error.to_string();
    assert!(shown.contains("our string to sign"), "{shown}");
    assert!(
        !shown.contains("640202199007164686"),
        "cert_no masked: {shown}"
    );
    assert!(shown.contains("640202********4686"), "{shown}");
    assert!(!shown.contains("15843991158"), "phone masked: {shown}");
}

#[tokio::test]
async fn unknown_app_and_missing_contract_are_configuration_faults() {
    let sandbox = sandbox_with(|_| {}).await;
    let error = failure(
        &sandbox,
        |u| u.app_id = "2099000000000000".into(),
        query("app_1"),
    )
    .await;
    assert_eq!(error.class(), ErrorClass::Configuration);
    assert_eq!(error.error_code(), "INVALID_APP_ID");

    let no_contract = sandbox_with(|config| config.apps[0].has_contract = false).await;
    let error = failure(&no_contract, |_| {}, query("app_2")).await;
    assert_eq!(error.class(), ErrorClass::Configuration);
    assert_eq!(error.error_code(), "NO_VALID_ARRANGEMENT");
}

#[tokio::test]
async fn wrong_alipay_public_key_makes_answers_unverified() {
    let sandbox = sandbox_with(|_| {}).await;
    let error = failure(
        &sandbox,
        |u| u.alipay_public_key_path = key_path("test_merchant_public.pem"),
        query("key_1"),
    )
    .await;
    assert_eq!(error.class(), ErrorClass::Unverified);
    assert_eq!(error.error_code(), "UNVERIFIED_RESPONSE");
}

#[tokio::test]
async fn transient_faults_are_retryable_and_throttling_is_its_own_class() {
    let sandbox = sandbox_with(|_| {}).await;
    let cases = [
        (
            Faults {
                system_error_rate: 1.0,
                ..Faults::default()
            },
            ErrorClass::Retryable,
            "SYSTEM_ERROR",
        ),
        (
            Faults {
                system_error_rate: 1.0,
                system_error_style: SystemErrorStyle::Business40004,
                ..Faults::default()
            },
            ErrorClass::Retryable,
            "SYSTEM_ERROR",
        ),
        (
            Faults {
                http_5xx_before_rate: 1.0,
                ..Faults::default()
            },
            ErrorClass::Retryable,
            "HTTP_5",
        ),
        (
            Faults {
                broken_sign_rate: 1.0,
                ..Faults::default()
            },
            ErrorClass::Unverified,
            "UNVERIFIED_RESPONSE",
        ),
        (
            Faults {
                qps_cap: Some(0),
                ..Faults::default()
            },
            ErrorClass::Throttled,
            "APP_CALL_LIMITED",
        ),
        (
            Faults {
                latency_ms: 3000,
                ..Faults::default()
            },
            ErrorClass::Retryable,
            "TIMEOUT",
        ),
    ];
    for (n, (faults, class, code)) in cases.into_iter().enumerate() {
        sandbox.set_faults(faults.clone());
        let error = failure(&sandbox, |_| {}, query(&format!("fault_{n}"))).await;
        assert_eq!(error.class(), class, "{faults:?}: {error}");
        assert!(
            error.error_code().starts_with(code),
            "{faults:?}: {}",
            error.error_code()
        );
    }
}

#[tokio::test]
async fn probe_passes_on_a_good_setup_without_billing_and_fails_without_contract() {
    let sandbox = sandbox_with(|_| {}).await;
    let client = UpstreamClient::new(&settings(&sandbox.gateway_url())).unwrap();
    client
        .probe("w1010100001000001200")
        .await
        .expect("probe passes");
    assert_eq!(sandbox.stats().billed, 0);

    let no_contract = sandbox_with(|config| config.apps[0].has_contract = false).await;
    let client = UpstreamClient::new(&settings(&no_contract.gateway_url())).unwrap();
    let reason = client.probe("w1010100001000001200").await.unwrap_err();
    assert!(reason.contains("NO_VALID_ARRANGEMENT"), "{reason}");
}

#[tokio::test]
async fn isv_mode_with_a_registered_app_auth_token_succeeds_against_the_sandbox() {
    const TOKEN: &str = "201510BB0c409dd5758b4d939d4008a525463X18";
    let sandbox = sandbox_with(|config| {
        config.app_auth_tokens.push(sandbox::AppAuthToken {
            app_id: sandbox::DEFAULT_APP_ID.into(),
            token: TOKEN.into(),
        });
    })
    .await;
    let mut upstream = settings(&sandbox.gateway_url());
    upstream.app_auth_token = TOKEN.to_owned().into();
    let client = UpstreamClient::new(&upstream).unwrap();
    let report = client.query_relation(&query("isv_1")).await;
    let answer = report.outcome.expect("the ISV call succeeds");
    assert!(answer.biz_no.starts_with("ZM"));
    assert_eq!(sandbox.billed_for("isv_1"), 1);

    let error = failure(
        &sandbox,
        |upstream| upstream.app_auth_token = "201510BBunknown".to_owned().into(),
        query("isv_2"),
    )
    .await;
    assert_eq!(error.error_code(), "INVALID_APP_AUTH_TOKEN", "{error}");
    assert!(error.to_string().contains("20001"), "{error}");
}

/// The ways a value can be written in JSON or plain text: as is, with
/// serde_json's escapes, with every non-ASCII or special character as
/// `\uXXXX` (either hex case), and with `/` escaped.
fn spellings(text: &str) -> Vec<String> {
    let json = serde_json::to_string(text).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    let all_escaped = |upper: bool| -> String {
        text.encode_utf16()
            .map(|unit| match char::from_u32(u32::from(unit)) {
                Some(c) if c.is_ascii_alphanumeric() => c.to_string(),
                _ if upper => format!("\\u{unit:04X}"),
                _ => format!("\\u{unit:04x}"),
            })
            .collect()
    };
    vec![
        text.to_owned(),
        json.clone(),
        json.replace('/', "\\/"),
        all_escaped(false),
        all_escaped(true),
    ]
}

/// Fails if any substring (2 characters or more) of a personal value that is
/// neither part of its mask nor present in `neutral` appears in `shown`, in
/// any spelling.
fn assert_no_pii(shown: &str, values: &[(&str, String)], neutral: &str) {
    let masks: Vec<&str> = values.iter().map(|(_, mask)| mask.as_str()).collect();
    for (value, _) in values {
        let chars: Vec<char> = value.chars().collect();
        for start in 0..chars.len() {
            for end in start + 2..=chars.len() {
                let piece: String = chars[start..end].iter().collect();
                if masks.iter().any(|mask| mask.contains(&piece)) || neutral.contains(&piece) {
                    continue;
                }
                for spelling in spellings(&piece) {
                    assert!(
                        !shown.contains(&spelling),
                        "{piece:?} of {value:?} appears as {spelling:?} in:\n{shown}"
                    );
                }
            }
        }
    }
}

/// Each character JSON escapes (quote, backslash, controls) and the ones a
/// Java or JavaScript encoder escapes (U+2028, U+2029, DEL, `/`, non-ASCII),
/// in every personal field: validation refuses some of them, but the masking
/// must not rely on it.
#[tokio::test]
async fn a_rejected_signature_never_shows_any_spelling_of_personal_values() {
    let sandbox = sandbox_with(|_| {}).await;
    let wrong_key = |upstream: &mut UpstreamSettings| {
        upstream.private_key_path = key_path("test_sandbox_private.pem");
    };
    let mut hostile = query("sig_pii");
    hostile.cert_no = "ABCDEF\"\\\t\n\u{1}\u{1f}\u{7f}\u{2028}\u{2029}éQRST".into();
    hostile.name = "欧\"阳\\娜\t丽\n芳\u{8}\u{c}\r\u{2028}婷\u{2029}/&=".into();
    hostile.relation_phone = "电话\t\"\\\n\u{2028}号码".into();
    hostile.relation_name = "李\u{7f}四\u{1}五\u{1f}六\u{e000}七".into();
    let values = [
        (hostile.cert_no.as_str(), mask_cert_no(&hostile.cert_no)),
        (hostile.name.as_str(), mask_name(&hostile.name)),
        (
            hostile.relation_phone.as_str(),
            mask_phone(&hostile.relation_phone),
        ),
        (
            hostile.relation_name.as_str(),
            mask_name(&hostile.relation_name),
        ),
    ];
    let neutral = failure(&sandbox, wrong_key, query("sig_neutral")).await;
    let neutral = format!("{neutral}\n{neutral:?}");
    let error = failure(&sandbox, wrong_key, hostile.clone()).await;
    assert_eq!(error.error_code(), "INVALID_SIGNATURE", "{error}");
    let UpstreamError::SignatureRejected(mismatch) = &error else {
        panic!("{error:?}");
    };
    assert!(
        mismatch.theirs.contains("biz_content={"),
        "{}",
        mismatch.theirs
    );
    assert_eq!(mismatch.ours, mismatch.theirs, "same string, different key");
    assert_no_pii(&error.to_string(), &values, &neutral);
    assert_no_pii(&format!("{error:?}"), &values, &neutral);
}

/// Serves one 307 to `location` for every request.
async fn redirect_server(location: String) -> String {
    let app = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/gateway.do")
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_is_retryable() {
    let (other_origin, seen_by_other) = capture_server().await;
    let redirecting = redirect_server(other_origin).await;
    let client = UpstreamClient::new(&settings(&redirecting)).unwrap();
    let report = client.query_relation(&query("redirect_1")).await;
    assert_eq!(report.http_status, Some(307));
    let error = report.outcome.expect_err("a redirect is a failure");
    assert!(
        matches!(error, UpstreamError::Redirect { status: 307 }),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert_eq!(error.error_code(), "HTTP_307");
    assert!(error.to_string().contains("307"), "{error}");
    assert!(
        seen_by_other.lock().unwrap().is_none(),
        "the other origin received the request (with the plaintext PII)"
    );
}

/// Answers every request with an endless chunked body and counts the bytes
/// it managed to send; the count is final once the task ends.
async fn endless_body_server() -> (String, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 64 * 1024];
        let _ = socket.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        // At most 64 MiB: enough to exceed any sane limit, small enough that
        // a client that buffers everything fails by timeout, not by OOM.
        for _ in 0..1024 {
            if socket.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            counter.fetch_add(0x10000, Ordering::SeqCst);
        }
        std::future::pending::<()>().await;
    });
    (format!("http://{addr}/gateway.do"), sent, task)
}

#[tokio::test]
async fn an_endless_answer_fails_as_retryable_after_max_response_bytes() {
    let (url, sent, server) = endless_body_server().await;
    let mut upstream = settings(&url);
    upstream.timeout_ms = 20_000;
    let client = UpstreamClient::new(&upstream).unwrap();
    let report = client.query_relation(&query("endless_1")).await;
    let error = report.outcome.expect_err("too long");
    assert!(
        matches!(error, UpstreamError::TooLarge { limit: 1_048_576 }),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert_eq!(error.error_code(), "RESPONSE_TOO_LARGE");
    assert!(report.raw_body.is_none());
    drop(client);
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the server sees the connection close")
        .unwrap();
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "the client kept reading: {sent} bytes sent before it hung up"
    );
}

#[tokio::test]
async fn a_declared_length_over_the_limit_fails_before_reading_and_a_smaller_limit_applies() {
    let sandbox = sandbox_with(|_| {}).await;
    let mut upstream = settings(&sandbox.gateway_url());
    upstream.max_response_bytes = 64;
    let client = UpstreamClient::new(&upstream).unwrap();
    let error = client
        .query_relation(&query("small_limit_1"))
        .await
        .outcome
        .expect_err("every real answer is over 64 bytes");
    assert!(
        matches!(error, UpstreamError::TooLarge { limit: 64 }),
        "{error:?}"
    );
    upstream.max_response_bytes = 1 << 20;
    let client = UpstreamClient::new(&upstream).unwrap();
    client
        .query_relation(&query("small_limit_2"))
        .await
        .outcome
        .expect("the default limit holds a real answer");
}

#[tokio::test]
async fn a_private_key_file_others_can_read_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app_private.pem");
    std::fs::copy(key_path("test_merchant_private.pem"), &key).unwrap();
    let mut upstream = settings("http://127.0.0.1:9/gateway.do");
    upstream.private_key_path = key.clone();
    upstream.allow_shared_key_file = false;
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let Err(error) = UpstreamClient::new(&upstream) else {
            panic!("mode {mode:o} accepted");
        };
        assert!(
            matches!(error, ClientSetupError::SharedKeyFile { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(key.to_str().unwrap()), "{text}");
        assert!(
            text.contains("chmod 600") && text.contains("allow_shared_key_file"),
            "{text}"
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    upstream.allow_shared_key_file = true;
    assert!(UpstreamClient::new(&upstream).is_ok());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    upstream.allow_shared_key_file = false;
    assert!(UpstreamClient::new(&upstream).is_ok());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(UpstreamClient::new(&upstream).is_ok());
}
