//! The sandbox gateway driven over HTTP: every gateway and business error code,
//! the transaction_id rules, each fault kind, statistics and the bill.
//!
//! Requests are built here from the signing primitives (not with the project's
//! client), so these tests also pin the wire details: GBK, GET vs POST,
//! absolute-form targets.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zhima_worker::sandbox::{
    self, Faults, RunningSandbox, SandboxApp, SandboxArgs, SandboxClock, SandboxConfig,
    SandboxReply, SystemErrorStyle,
};
use zhima_worker::upstream::signing::{Charset, PrivateKey, PublicKey, SignType, sign_params};

const APP_ID: &str = "2014072300007148";
const APP_WITHOUT_CONTRACT: &str = "2021000000000002";
const NODE: &str = "zhima_credit_relation_query_response";
const SIGN_MARK: &[u8] = b",\"sign\":\"";

fn key_path(name: &str) -> String {
    format!("{}/config/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn merchant_key() -> PrivateKey {
    PrivateKey::from_file(key_path("test_merchant_private.pem").as_ref()).unwrap()
}

fn platform_key() -> PublicKey {
    PublicKey::from_file(key_path("test_sandbox_public.pem").as_ref()).unwrap()
}

fn test_config() -> SandboxConfig {
    let mut config = SandboxConfig::with_test_keys().unwrap();
    let public_key = config.apps[0].public_key.clone();
    config.apps.push(SandboxApp {
        app_id: APP_WITHOUT_CONTRACT.into(),
        public_key,
        has_contract: false,
    });
    config
}

struct Harness {
    sandbox: RunningSandbox,
    http: reqwest::Client,
}

async fn spawn() -> Harness {
    spawn_with(|_| {}).await
}

async fn spawn_with(adjust: impl FnOnce(&mut SandboxConfig)) -> Harness {
    let mut config = test_config();
    adjust(&mut config);
    let sandbox = sandbox::start(config).await.unwrap();
    Harness {
        sandbox,
        http: reqwest::Client::new(),
    }
}

fn now_utc8() -> String {
    let offset = FixedOffset::east_opt(8 * 3600).unwrap();
    Utc::now()
        .with_timezone(&offset)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn biz(transaction_id: &str) -> Value {
    json!({
        "product_code": "w1010100001000001200",
        "transaction_id": transaction_id,
        "cert_no": "640202199007164686",
        "name": "张三",
        "relation_phone": "15843991158",
        "relation_name": "李四",
        "relation": "family",
        "linked_merchant_id": "2088721630869411"
    })
}

/// One request as a client would build it; edit `params` before `send`.
#[derive(Clone)]
struct TestRequest {
    params: BTreeMap<String, String>,
    charset: Charset,
    sign_type: SignType,
    use_get: bool,
    /// Replaces the computed signature (`Some("")` sends none).
    sign_override: Option<String>,
}

impl TestRequest {
    fn new(transaction_id: &str) -> Self {
        Self::with_biz(&biz(transaction_id).to_string())
    }

    fn with_biz(biz_content: &str) -> Self {
        let params = [
            ("app_id", APP_ID),
            ("method", "zhima.credit.relation.query"),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", &now_utc8()),
            ("version", "1.0"),
            ("biz_content", biz_content),
        ];
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            params,
            charset: Charset::Utf8,
            sign_type: SignType::Rsa2,
            use_get: false,
            sign_override: None,
        }
    }

    fn set(mut self, key: &str, value: &str) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }

    fn without(mut self, key: &str) -> Self {
        self.params.remove(key);
        self
    }

    fn charset(mut self, charset: Charset) -> Self {
        self.charset = charset;
        self.set("charset", charset.as_str())
    }

    fn sign_type(mut self, sign_type: SignType) -> Self {
        self.sign_type = sign_type;
        self.set("sign_type", sign_type.as_str())
    }

    fn sign(&self) -> String {
        let params = self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        sign_params(params, &merchant_key(), self.sign_type, self.charset)
            .unwrap()
            .sign
    }

    /// (query string, form body), percent-encoded in the request charset.
    fn encode(&self) -> (String, String) {
        let sign = self.sign_override.clone().unwrap_or_else(|| self.sign());
        let mut query = Vec::new();
        let mut body = Vec::new();
        for (key, value) in &self.params {
            let in_body = !self.use_get && (key == "biz_content" || key == "app_auth_token");
            (if in_body { &mut body } else { &mut query }).push((key.as_str(), value.as_str()));
        }
        if !sign.is_empty() {
            query.push(("sign", &sign));
        }
        (form(&query, self.charset), form(&body, self.charset))
    }
}

fn encode_utf8(text: &str) -> Cow<'_, [u8]> {
    Charset::Utf8.encode(text)
}
fn encode_gbk(text: &str) -> Cow<'_, [u8]> {
    Charset::Gbk.encode(text)
}
fn encode_gb18030(text: &str) -> Cow<'_, [u8]> {
    Charset::Gb18030.encode(text)
}

fn form(pairs: &[(&str, &str)], charset: Charset) -> String {
    let encoder: &dyn Fn(&str) -> Cow<'_, [u8]> = match charset {
        Charset::Utf8 => &encode_utf8,
        Charset::Gbk | Charset::Gb2312 => &encode_gbk,
        Charset::Gb18030 => &encode_gb18030,
    };
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.encoding_override(Some(encoder));
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    charset: Charset,
    sign_type: SignType,
}

impl Answer {
    /// The node (response or error) as JSON, decoded in the request charset.
    fn node(&self) -> Value {
        let text = self.charset.decode(&self.body);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let object = value.as_object().unwrap();
        object
            .get(NODE)
            .or_else(|| object.get("error_response"))
            .unwrap()
            .clone()
    }

    fn code(&self) -> (String, String) {
        let node = self.node();
        let field = |name: &str| {
            node.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        (field("code"), field("sub_code"))
    }

    /// The node's raw bytes and the sign, cut out of the exact layout.
    fn split(&self) -> (&[u8], Option<String>) {
        let start = self.body.iter().position(|b| *b == b':').unwrap() + 1;
        assert!(self.body.ends_with(b"}"), "body ends with }}");
        match self
            .body
            .windows(SIGN_MARK.len())
            .rposition(|w| w == SIGN_MARK)
        {
            Some(at) => {
                let sign = &self.body[at + SIGN_MARK.len()..self.body.len() - 2];
                (
                    &self.body[start..at],
                    Some(String::from_utf8(sign.to_vec()).unwrap()),
                )
            }
            None => (&self.body[start..self.body.len() - 1], None),
        }
    }

    fn is_signed(&self) -> bool {
        self.split().1.is_some()
    }

    fn is_verified(&self) -> bool {
        let (node, sign) = self.split();
        sign.is_some_and(|sign| platform_key().verify(self.sign_type, node, &sign).is_ok())
    }
}

impl Harness {
    async fn send(&self, request: &TestRequest) -> Answer {
        let (query, body) = request.encode();
        let url = format!("{}?{query}", self.sandbox.gateway_url());
        let builder = if request.use_get {
            self.http.get(url)
        } else {
            let content_type = format!(
                "application/x-www-form-urlencoded;charset={}",
                request.charset.as_str()
            );
            self.http
                .post(url)
                .header("content-type", content_type)
                .body(body)
        };
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.bytes().await.unwrap().to_vec();
        Answer {
            status,
            content_type,
            body,
            charset: request.charset,
            sign_type: request.sign_type,
        }
    }

    async fn query(&self, transaction_id: &str) -> Answer {
        self.send(&TestRequest::new(transaction_id)).await
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.sandbox.base_url()))
            .send()
            .await
            .unwrap()
    }

    async fn stats_json(&self) -> Value {
        serde_json::from_slice(&self.get("/stats").await.bytes().await.unwrap()).unwrap()
    }
}

fn assert_success(answer: &Answer) {
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.code().0,
        "10000",
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(answer.is_verified(), "answer verifies");
}

// ---------------------------------------------------------------- successes

#[tokio::test]
async fn a_signed_post_gets_a_verified_answer_in_the_exact_layout() {
    let harness = spawn().await;
    let answer = harness.query("t_layout").await;
    assert_success(&answer);
    assert_eq!(answer.content_type, "text/html;charset=utf-8");
    assert!(answer.body.starts_with(
        b"{\"zhima_credit_relation_query_response\":{\"code\":\"10000\",\"msg\":\"Success\","
    ));
    assert!(answer.body.ends_with(b"\"}"), "no trailing newline");
    let node = answer.node();
    let biz_no = node["biz_no"].as_str().unwrap();
    assert_eq!(biz_no.len(), 32);
    assert!(biz_no.starts_with("ZM") && biz_no[2..].bytes().all(|b| b.is_ascii_digit()));
    let rank = node["relation_rank"].as_str().unwrap();
    assert!(["V_CT_RL_SG", "V_CT_RL_MD", "V_CT_RL_WK", "V_CT_RL_NO"].contains(&rank));
    assert_eq!(rank == "V_CT_RL_NO", node.get("relation_info").is_none());
    assert!(node["relation_score"].as_u64().unwrap() <= 100);
}

#[tokio::test]
async fn the_same_contact_gets_the_same_answer_under_another_transaction_id() {
    let harness = spawn().await;
    let first = harness.query("t_same_1").await.node();
    let second = harness.query("t_same_2").await.node();
    for field in ["relation_rank", "relation_info", "relation_score"] {
        assert_eq!(first.get(field), second.get(field));
    }
    assert_ne!(first["biz_no"], second["biz_no"]);
}

#[tokio::test]
async fn without_relation_the_score_is_zero() {
    let harness = spawn().await;
    let mut content = biz("t_norel");
    content.as_object_mut().unwrap().remove("relation");
    let answer = harness
        .send(&TestRequest::with_biz(&content.to_string()))
        .await;
    assert_success(&answer);
    assert_eq!(answer.node()["relation_score"], 0);
}

#[tokio::test]
async fn gbk_requests_with_chinese_names_are_verified_and_answered_in_gbk() {
    let harness = spawn().await;
    for charset in [Charset::Gbk, Charset::Gb2312, Charset::Gb18030] {
        let id = format!("t_{}", charset.as_str());
        let answer = harness.send(&TestRequest::new(&id).charset(charset)).await;
        assert_success(&answer);
        assert_eq!(
            answer.content_type,
            format!("text/html;charset={}", charset.as_str())
        );
    }
}

#[tokio::test]
async fn a_bad_signature_in_gbk_echoes_the_verified_string_in_gbk() {
    let harness = spawn().await;
    let mut request = TestRequest::new("t_gbk_bad").charset(Charset::Gbk);
    request.sign_override = Some(TestRequest::new("other").sign());
    let answer = harness.send(&request).await;
    assert_eq!(
        answer.code(),
        ("40002".into(), "isv.invalid-signature".into())
    );
    assert!(answer.is_verified());
    let sub_msg = answer.node()["sub_msg"].as_str().unwrap().to_owned();
    assert!(sub_msg.starts_with(
        "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为："
    ));
    assert!(sub_msg.contains("\"name\":\"张三\"") && sub_msg.contains("charset=gbk"));
    assert!(
        !sub_msg.contains("sign="),
        "sign is not part of the string to sign"
    );
}

#[tokio::test]
async fn a_get_request_with_everything_in_the_query_string_is_answered() {
    let harness = spawn().await;
    let mut request = TestRequest::new("t_get");
    request.use_get = true;
    assert_success(&harness.send(&request).await);
}

#[tokio::test]
async fn legacy_rsa_requests_get_rsa_signed_answers() {
    let harness = spawn().await;
    let answer = harness
        .send(&TestRequest::new("t_rsa").sign_type(SignType::Rsa))
        .await;
    assert_success(&answer);
}

#[tokio::test]
async fn an_absolute_form_request_target_is_served() {
    let harness = spawn().await;
    let (query, body) = TestRequest::new("t_absolute").encode();
    let addr = harness.sandbox.addr;
    let head = format!(
        "POST http://{addr}/gateway.do?{query} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded;charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"code\":\"10000\""), "{text}");
    assert_eq!(harness.sandbox.billed_for("t_absolute"), 1);
}

// ---------------------------------------------------------- gateway errors

struct Case {
    name: &'static str,
    request: TestRequest,
    code: &'static str,
    sub_code: &'static str,
    signed: bool,
}

fn case(
    name: &'static str,
    request: TestRequest,
    code: &'static str,
    sub_code: &'static str,
) -> Case {
    Case {
        name,
        request,
        code,
        sub_code,
        signed: true,
    }
}

fn gateway_cases() -> Vec<Case> {
    let base = || TestRequest::new("t_gateway");
    let mut wrong_key = base();
    wrong_key.sign_override = Some(base().set("version", "1.0 ").sign());
    let mut no_sign = base();
    no_sign.sign_override = Some(String::new());
    vec![
        Case {
            signed: false,
            ..case(
                "no method",
                base().without("method"),
                "40001",
                "isv.missing-method",
            )
        },
        Case {
            signed: false,
            ..case(
                "other method",
                base().set("method", "alipay.trade.pay"),
                "40002",
                "isv.invalid-method",
            )
        },
        Case {
            signed: false,
            ..case(
                "no app_id",
                base().without("app_id"),
                "40001",
                "isv.missing-app-id",
            )
        },
        Case {
            signed: false,
            ..case(
                "unknown app_id",
                base().set("app_id", "1"),
                "40002",
                "isv.invalid-app-id",
            )
        },
        case(
            "unknown charset",
            base().set("charset", "latin1").without("sign_type"),
            "40002",
            "isv.invalid-charset",
        ),
        case(
            "no sign_type",
            base().without("sign_type").without("timestamp"),
            "40001",
            "isv.missing-signature-type",
        ),
        case(
            "unknown sign_type",
            base().set("sign_type", "DSA"),
            "40002",
            "isv.invalid-signature-type",
        ),
        case(
            "no sign",
            {
                let mut r = no_sign;
                r.params.remove("timestamp");
                r
            },
            "40001",
            "isv.missing-signature",
        ),
        case(
            "no timestamp",
            base().without("timestamp").set("version", "9"),
            "40001",
            "isv.missing-timestamp",
        ),
        case(
            "timestamp not a real date",
            base().set("timestamp", "2024-02-30 10:00:00"),
            "40002",
            "isv.invalid-timestamp",
        ),
        case(
            "timestamp not zero-padded",
            base().set("timestamp", "2024-1-05 10:00:00"),
            "40002",
            "isv.invalid-timestamp",
        ),
        case(
            "timestamp with T",
            base().set("timestamp", "2024-01-05T10:00:00"),
            "40002",
            "isv.invalid-timestamp",
        ),
        case(
            "no version",
            base().without("version"),
            "40001",
            "isv.missing-version",
        ),
        case(
            "other version",
            base().set("version", "2.0").set("format", "xml"),
            "40002",
            "isv.invalid-parameter",
        ),
        case(
            "format xml",
            base().set("format", "xml"),
            "40002",
            "isv.invalid-format",
        ),
        case(
            "signature over other bytes",
            wrong_key,
            "40002",
            "isv.invalid-signature",
        ),
        case(
            "app_auth_token",
            base().set("app_auth_token", "201510BB0c409dd5758b4d939d4008a525463X18"),
            "20001",
            "aop.invalid-app-auth-token",
        ),
        case(
            "biz_content not JSON",
            TestRequest::with_biz("{not json"),
            "40002",
            "isv.invalid-parameter",
        ),
        case(
            "biz_content not an object",
            TestRequest::with_biz("[1]"),
            "40002",
            "isv.invalid-parameter",
        ),
    ]
}

#[tokio::test]
async fn gateway_errors_come_in_the_gateways_order_and_shape() {
    let harness = spawn().await;
    for case in gateway_cases() {
        let answer = harness.send(&case.request).await;
        assert_eq!(answer.status, 200, "{}", case.name);
        assert_eq!(
            answer.code(),
            (case.code.into(), case.sub_code.into()),
            "{}",
            case.name
        );
        assert_eq!(answer.is_signed(), case.signed, "{}: signed", case.name);
        if case.signed {
            assert!(answer.is_verified(), "{}: verifies", case.name);
        }
        let node = answer.node();
        assert!(
            node["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            case.name
        );
        assert!(
            node["sub_msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            case.name
        );
    }
    assert_eq!(harness.sandbox.stats().billed, 0);
}

#[tokio::test]
async fn a_missing_method_is_answered_under_error_response_and_others_under_the_method_node() {
    let harness = spawn().await;
    let answer = harness
        .send(&TestRequest::new("t_node").without("method"))
        .await;
    assert_eq!(answer.body, "{\"error_response\":{\"code\":\"40001\",\"msg\":\"Missing Required Arguments\",\"sub_code\":\"isv.missing-method\",\"sub_msg\":\"缺少方法名参数\"}}".as_bytes());
    let answer = harness
        .send(&TestRequest::new("t_node").set("app_id", "999"))
        .await;
    assert!(
        answer
            .body
            .starts_with(b"{\"zhima_credit_relation_query_response\":{\"code\":\"40002\"")
    );
    assert!(!answer.is_signed());
}

#[tokio::test]
async fn format_and_charset_are_case_insensitive_and_format_is_optional() {
    let harness = spawn().await;
    assert_success(
        &harness
            .send(
                &TestRequest::new("t_case1")
                    .set("format", "json")
                    .set("charset", "UTF-8"),
            )
            .await,
    );
    assert_success(
        &harness
            .send(
                &TestRequest::new("t_case2")
                    .without("format")
                    .without("charset"),
            )
            .await,
    );
}

// --------------------------------------------------------- business errors

fn with_field(transaction_id: &str, field: &str, value: Value) -> TestRequest {
    let mut content = biz(transaction_id);
    match value {
        Value::Null => content.as_object_mut().unwrap().remove(field),
        other => content.as_object_mut().unwrap().insert(field.into(), other),
    };
    TestRequest::with_biz(&content.to_string())
}

#[tokio::test]
async fn business_rules_answer_40004_with_the_seeds_sub_code_and_description() {
    let harness = spawn().await;
    let cases = [
        (
            TestRequest::new("t").without("biz_content"),
            "PRODUCT_CODE_IS_NULL",
            "产品码为空",
        ),
        (
            with_field("t", "product_code", Value::Null),
            "PRODUCT_CODE_IS_NULL",
            "产品码为空",
        ),
        (
            with_field("t", "product_code", json!("")),
            "PRODUCT_CODE_IS_NULL",
            "产品码为空",
        ),
        (
            with_field("t", "product_code", json!("w1010100000000002978")),
            "API_PRODUCT_NOT_MATCH",
            "输入的产品码不正确",
        ),
        (
            TestRequest::new("t").set("app_id", APP_WITHOUT_CONTRACT),
            "NO_VALID_ARRANGEMENT",
            "无有效合约",
        ),
        (
            with_field("t", "transaction_id", Value::Null),
            "INVALID_TRANSACTION_ID",
            "业务流水号不正确",
        ),
        (
            with_field("t", "transaction_id", json!("loan-1")),
            "INVALID_TRANSACTION_ID",
            "业务流水号不正确",
        ),
        (
            with_field("t", "transaction_id", json!("a".repeat(65))),
            "INVALID_TRANSACTION_ID",
            "业务流水号不正确",
        ),
        (
            with_field("t", "cert_no", json!("640202199007164687")),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "cert_no", Value::Null),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "name", json!("张|三")),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "name", json!("   ")),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "relation_phone", json!("12843991158")),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "relation_phone", json!(15843991158u64)),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "relation_name", json!("a".repeat(65))),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "relation", json!("Family")),
            "INVALID_PARAMETER",
            "参数有误",
        ),
        (
            with_field("t", "linked_merchant_id", json!("x".repeat(33))),
            "INVALID_PARAMETER",
            "参数有误",
        ),
    ];
    for (request, sub_code, description) in cases {
        let answer = harness.send(&request).await;
        assert_eq!(
            answer.code(),
            ("40004".into(), sub_code.into()),
            "{sub_code}"
        );
        assert_eq!(answer.node()["msg"], "Business Failed");
        assert_eq!(answer.node()["sub_msg"], description);
        assert!(answer.is_verified(), "{sub_code} verifies");
    }
    assert_eq!(harness.sandbox.stats().billed, 0);
}

#[tokio::test]
async fn an_empty_or_null_relation_counts_as_absent() {
    let harness = spawn().await;
    let answer = harness
        .send(&with_field("t_rel_null", "relation", json!("")))
        .await;
    assert_success(&answer);
    assert_eq!(answer.node()["relation_score"], 0);
}

// ------------------------------------------------------ transaction_id rules

#[tokio::test]
async fn the_same_id_and_parameters_replay_the_first_answer_byte_for_byte_unbilled() {
    let harness = spawn().await;
    let first = harness.query("t_replay").await;
    assert_success(&first);
    let reordered = r#"{ "relation_name" : "李四", "relation":"family","cert_no":"640202199007164686",
        "name":"张三", "relation_phone":"15843991158", "transaction_id":"t_replay",
        "linked_merchant_id":"2088721630869411", "product_code":"w1010100001000001200" }"#;
    let second = harness.send(&TestRequest::with_biz(reordered)).await;
    assert_eq!(first.body, second.body);
    let stats = harness.sandbox.stats();
    assert_eq!((stats.billed, stats.unbilled_repeats), (1, 1));
    assert_eq!(stats.transactions["t_replay"].calls, 2);
    assert_eq!(stats.transactions["t_replay"].billed, 1);
}

#[tokio::test]
async fn the_same_id_with_other_parameters_is_transaction_id_repeat() {
    let harness = spawn().await;
    assert_success(&harness.query("t_repeat").await);
    let answer = harness
        .send(&with_field(
            "t_repeat",
            "relation_phone",
            json!("13900000000"),
        ))
        .await;
    assert_eq!(
        answer.code(),
        ("40004".into(), "TRANSACTION_ID_REPEAT".into())
    );
    assert!(answer.is_verified());
    assert_eq!(harness.sandbox.stats().billed, 1);
}

#[tokio::test]
async fn transaction_ids_are_per_app() {
    let harness = spawn_with(|config| {
        let mut other = config.apps[0].clone();
        other.app_id = "2014072300007149".into();
        config.apps.push(other);
    })
    .await;
    assert_success(&harness.query("t_per_app").await);
    let other = harness
        .send(
            &with_field("t_per_app", "relation_phone", json!("13900000000"))
                .set("app_id", "2014072300007149"),
        )
        .await;
    assert_success(&other);
    assert_eq!(harness.sandbox.stats().billed, 2);
}

#[tokio::test]
async fn a_failed_query_is_not_recorded_so_the_id_can_still_succeed() {
    let harness = spawn().await;
    let bad = harness
        .send(&with_field("t_fail_first", "cert_no", json!("1")))
        .await;
    assert_eq!(bad.code().1, "INVALID_PARAMETER");
    assert_success(&harness.query("t_fail_first").await);
    assert_eq!(harness.sandbox.billed_for("t_fail_first"), 1);
}

#[tokio::test]
async fn a_transaction_id_expires_after_the_validity() {
    let harness = spawn_with(|config| config.validity = Duration::from_millis(300)).await;
    let first = harness.query("t_expire").await;
    assert_success(&first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = harness.query("t_expire").await;
        if answer.code().1 == "TRANSACTION_ID_EXPIRED" {
            assert!(answer.is_verified());
            assert_eq!(answer.node()["sub_msg"], "业务流水号已过期");
            break;
        }
        assert_eq!(answer.body, first.body, "a replay until it expires");
        assert!(Instant::now() < deadline, "never expired");
        tokio::task::yield_now().await;
    }
    assert_eq!(harness.sandbox.stats().billed, 1);
}

// ------------------------------------------------------------------ faults

#[tokio::test]
async fn injected_system_errors_take_either_style_and_bill_nothing() {
    let harness = spawn().await;
    let styles = [
        (
            SystemErrorStyle::Gateway20000,
            ("20000", "isp.unknow-error", "Service Currently Unavailable"),
        ),
        (
            SystemErrorStyle::Business40004,
            ("40004", "SYSTEM_ERROR", "Business Failed"),
        ),
    ];
    for (style, (code, sub_code, msg)) in styles {
        harness.sandbox.set_faults(Faults {
            system_error_rate: 1.0,
            system_error_style: style,
            ..Faults::default()
        });
        let answer = harness.query("t_system").await;
        assert_eq!(answer.code(), (code.into(), sub_code.into()));
        assert_eq!(answer.node()["msg"], msg);
        assert!(answer.is_verified());
    }
    harness.sandbox.set_faults(Faults::default());
    assert_success(&harness.query("t_system").await);
    let stats = harness.sandbox.stats();
    assert_eq!(stats.billed, 1);
    assert_eq!(stats.errors["20000:isp.unknow-error"], 1);
    assert_eq!(stats.errors["40004:SYSTEM_ERROR"], 1);
}

#[tokio::test]
async fn an_outage_before_processing_bills_nothing() {
    let harness = spawn_with(|config| config.faults.http_5xx_before_rate = 1.0).await;
    let answer = harness.query("t_5xx_before").await;
    assert!([502, 503].contains(&answer.status));
    assert_eq!(harness.sandbox.stats().billed, 0);
    harness.sandbox.set_faults(Faults::default());
    assert_success(&harness.query("t_5xx_before").await);
    assert_eq!(harness.sandbox.stats().unbilled_repeats, 0);
}

#[tokio::test]
async fn an_outage_after_billing_loses_the_answer_but_a_retry_with_the_same_id_gets_it_unbilled() {
    let harness = spawn_with(|config| config.faults.http_5xx_after_billing_rate = 1.0).await;
    let lost = harness.query("t_5xx_after").await;
    assert!([502, 503].contains(&lost.status));
    assert_eq!(harness.sandbox.billed_for("t_5xx_after"), 1);
    let retry = harness.query("t_5xx_after").await;
    assert_success(&retry);
    let stats = harness.sandbox.stats();
    assert_eq!((stats.billed, stats.unbilled_repeats), (1, 1));
    let billed = harness.sandbox.bill_rows();
    assert_eq!(retry.node()["biz_no"], billed[0].biz_no.as_str());
    let renamed = harness.query("t_5xx_after_new_id").await;
    assert!(
        [502, 503].contains(&renamed.status),
        "a new id is billed (and lost) again"
    );
    assert_eq!(harness.sandbox.stats().billed, 2);
}

#[tokio::test]
async fn slow_answers_and_fixed_latency_delay_the_answer() {
    let harness = spawn_with(|config| {
        config.faults = Faults {
            slow_rate: 1.0,
            slow_ms: 150,
            latency_ms: 100,
            ..Faults::default()
        };
    })
    .await;
    let started = Instant::now();
    assert_success(&harness.query("t_slow").await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(harness.sandbox.stats().slow_answers, 1);
}

#[tokio::test]
async fn broken_signatures_are_flipped_or_stripped_and_never_verify() {
    let harness = spawn_with(|config| {
        config.faults.broken_sign_rate = 1.0;
        config.seed = Some(3);
    })
    .await;
    let (mut flipped, mut stripped) = (0, 0);
    for n in 0..12 {
        let answer = harness.query(&format!("t_broken_{n}")).await;
        assert_eq!(answer.code().0, "10000");
        assert!(!answer.is_verified());
        if answer.is_signed() {
            flipped += 1
        } else {
            stripped += 1
        }
    }
    assert!(
        flipped > 0 && stripped > 0,
        "{flipped} flipped, {stripped} stripped"
    );
    assert_eq!(harness.sandbox.stats().broken_signatures, 12);
}

#[tokio::test]
async fn calls_above_the_qps_cap_are_call_limited() {
    let harness = spawn_with(|config| config.faults.qps_cap = Some(3)).await;
    let requests = (0..10)
        .map(|n| TestRequest::new(&format!("t_cap_{n}")))
        .collect::<Vec<_>>();
    let answers = futures_util::future::join_all(requests.iter().map(|r| harness.send(r))).await;
    let limited: Vec<_> = answers.iter().filter(|a| a.code().0 == "40005").collect();
    assert!(limited.len() >= 7, "{} limited", limited.len());
    for answer in &limited {
        assert_eq!(answer.code().1, "isv.app-call-limited");
        assert_eq!(answer.node()["msg"], "Call Limited");
        assert!(answer.is_verified());
    }
    assert!(harness.sandbox.stats().billed <= 3);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_fault_decisions() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let harness = spawn_with(|config| {
            config.seed = Some(7);
            config.faults.system_error_rate = 0.5;
        })
        .await;
        let mut codes = Vec::new();
        for n in 0..16 {
            codes.push(harness.query(&format!("t_seed_{n}")).await.code().0);
        }
        runs.push(codes);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&"10000".to_owned()) && runs[0].contains(&"20000".to_owned()));
}

#[tokio::test]
async fn faults_can_be_read_and_replaced_through_the_admin_endpoint() {
    let harness = spawn().await;
    let url = format!("{}/admin/faults", harness.sandbox.base_url());
    let current = harness
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let current: Faults = serde_json::from_slice(&current).unwrap();
    assert_eq!(current, Faults::default());
    let put = harness
        .http
        .put(&url)
        .body(json!({"system_error_rate": 1.0, "system_error_style": "business-40004"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(harness.query("t_admin").await.code().1, "SYSTEM_ERROR");
    for bad in [json!({"slow_rate": 2.0}), json!({"no_such_fault": 1})] {
        let response = harness
            .http
            .put(&url)
            .body(bad.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    assert_eq!(
        harness.sandbox.faults().system_error_style,
        SystemErrorStyle::Business40004
    );
}

// -------------------------------------------------------------- observation

#[tokio::test]
async fn stats_count_requests_billing_errors_windows_and_concurrency() {
    let harness = spawn_with(|config| config.faults.latency_ms = 150).await;
    let requests = (0..6)
        .map(|n| TestRequest::new(&format!("t_stats_{}", n % 3)))
        .collect::<Vec<_>>();
    futures_util::future::join_all(requests.iter().map(|r| harness.send(r))).await;
    harness
        .send(&TestRequest::new("t_stats_x").without("sign_type"))
        .await;
    let stats = harness.stats_json().await;
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["billed"], 3);
    assert_eq!(stats["unbilled_repeats"], 3);
    assert_eq!(stats["errors"]["40001:isv.missing-signature-type"], 1);
    assert_eq!(
        stats["transactions"]["t_stats_0"],
        json!({"calls": 2, "billed": 1})
    );
    assert_eq!(
        stats["transactions"].get("t_stats_x"),
        None,
        "a refused request is not recorded per id"
    );
    assert!(stats["max_requests_per_second"].as_u64().unwrap() >= 6);
    assert!(stats["max_in_flight"].as_u64().unwrap() >= 2);
    assert_eq!(stats["in_flight"], 0);
}

/// 23:59:59 UTC+8 on 2024-05-21: a real clock there would bill the next
/// query on the next day.
fn last_second_of_2024_05_21_utc8() -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339("2024-05-21T23:59:59+08:00")
        .unwrap()
        .to_utc()
}

#[tokio::test]
async fn the_bill_lists_billed_queries_of_a_utc8_day_as_csv() {
    let pinned = last_second_of_2024_05_21_utc8();
    let harness = spawn_with(|config| config.clock = SandboxClock::Fixed(pinned)).await;
    let answer = harness.query("t_bill_1").await;
    harness.query("t_bill_1").await;
    harness.query("t_bill_2").await;
    let day = pinned
        .with_timezone(&FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive();
    let response = harness.get(&format!("/bill?date={day}")).await;
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let csv = response.text().await.unwrap();
    assert_eq!(csv, harness.sandbox.bill_csv(day));
    let lines: Vec<&str> = csv.split('\n').collect();
    assert_eq!(lines[0], "biz_no,transaction_id,app_id,billed_at");
    assert_eq!(lines.len(), 4, "header, two rows, final LF: {csv:?}");
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[0], answer.node()["biz_no"]);
    assert!(first[0].starts_with("ZM20240521"), "{}", first[0]);
    assert_eq!(&first[1..], ["t_bill_1", APP_ID, "2024-05-21 23:59:59"]);
    assert!(!csv.contains('\r'));
    for other_day in ["2001-01-01", "2024-05-22"] {
        let text = harness
            .get(&format!("/bill?date={other_day}"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(
            text, "biz_no,transaction_id,app_id,billed_at\n",
            "{other_day}"
        );
    }
    assert_eq!(harness.get("/bill?date=yesterday").await.status(), 400);
}

#[tokio::test]
async fn healthz_answers_ok() {
    let harness = spawn().await;
    let response = harness.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
}

// ---------------------------------------------------------------- robustness

#[tokio::test]
async fn a_body_over_one_mebibyte_is_rejected() {
    let harness = spawn().await;
    let (query, _) = TestRequest::new("t_huge").encode();
    let body = format!("biz_content={}", "a".repeat(1024 * 1024 + 1));
    let response = harness
        .http
        .post(format!("{}?{query}", harness.sandbox.gateway_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(harness.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn undecodable_bytes_still_get_a_valid_signed_answer() {
    let harness = spawn().await;
    for (charset, bad) in [
        ("gbk", "%81%20%FF"),
        ("utf-8", "%C3%28%FF%FE"),
        ("gb18030", "%84%31%FF"),
    ] {
        let (query, _) = TestRequest::new("t_bytes").encode();
        let url = format!("{}?{query}", harness.sandbox.gateway_url())
            .replace("charset=utf-8", &format!("charset={charset}"));
        let body = format!("biz_content=%7B%22name%22%3A%22{bad}%22%7D&junk=%zz%");
        let response = harness.http.post(url).body(body).send().await.unwrap();
        let answer = Answer {
            status: response.status().as_u16(),
            content_type: String::new(),
            body: response.bytes().await.unwrap().to_vec(),
            charset: charset.parse().unwrap(),
            sign_type: SignType::Rsa2,
        };
        assert_eq!(
            answer.code(),
            ("40002".into(), "isv.invalid-signature".into()),
            "{charset}"
        );
        assert!(
            answer.is_verified(),
            "{charset}: the echo of bad bytes is still signed"
        );
    }
}

#[tokio::test]
async fn random_requests_never_bring_the_sandbox_down() {
    let harness = spawn().await;
    let mut rng = StdRng::seed_from_u64(0xfeed);
    let alphabet = b"&=%+abcdefgGBKutf8-_.0123456789ABCDEF{}\":,";
    let valid = TestRequest::new("t_fuzz").encode();
    for round in 0..300 {
        let len = rng.random_range(0..200);
        let mut query: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect();
        if round % 3 == 0 {
            query = format!("{}&{query}", valid.0);
        }
        let body: Vec<u8> = (0..rng.random_range(0..300))
            .map(|_| rng.random())
            .collect();
        let url = format!(
            "{}?{}",
            harness.sandbox.gateway_url(),
            query.replace(['#', ' '], "")
        );
        let request = if round % 2 == 0 {
            harness.http.post(url).body(body)
        } else {
            harness.http.get(url)
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.starts_with(b"{\"") && bytes.ends_with(b"}"),
            "round {round}"
        );
    }
    assert_eq!(harness.get("/healthz").await.status(), 200);
    assert_eq!(harness.sandbox.stats().requests, 300);
}

// ------------------------------------------------------------------- the CLI

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: SandboxArgs,
}

fn parse(argv: &[&str]) -> Result<SandboxArgs, String> {
    use clap::Parser as _;
    Cli::try_parse_from(std::iter::once("sandbox").chain(argv.iter().copied()))
        .map(|cli| cli.args)
        .map_err(|e| e.to_string())
}

#[test]
fn bad_flags_give_an_error_naming_the_flag() {
    let error = parse(&["--app", "2014072300007148"]).unwrap_err();
    assert!(
        error.contains("--app") && error.contains("APP_ID=PUBLIC_KEY_FILE"),
        "{error}"
    );
    let error = parse(&["--slow-rate", "1.5"]).unwrap_err();
    assert!(error.contains("--slow-rate"), "{error}");
    let error = parse(&["--validity-s", "0"]).unwrap_err();
    assert!(error.contains("--validity-s"), "{error}");
}

#[test]
fn without_flags_the_sandbox_uses_the_test_keys_and_the_default_app() {
    let config = parse(&[]).unwrap().to_config().unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8480");
    assert_eq!(config.apps.len(), 1);
    assert_eq!(config.apps[0].app_id, APP_ID);
    assert!(config.apps[0].has_contract);
    assert_eq!(config.validity, Duration::from_secs(86_400));
}

#[test]
fn flags_set_apps_validity_and_faults() {
    let key = key_path("test_merchant_public.pem");
    let args = parse(&[
        "--listen",
        "127.0.0.1:0",
        "--app",
        &format!("111={key}"),
        "--app-without-contract",
        &format!("222={key}"),
        "--validity-s",
        "0.25",
        "--system-error-rate",
        "0.5",
        "--system-error-style",
        "business-40004",
        "--qps-cap",
        "10",
        "--seed",
        "9",
    ])
    .unwrap();
    let config = args.to_config().unwrap();
    let apps: Vec<_> = config
        .apps
        .iter()
        .map(|a| (a.app_id.as_str(), a.has_contract))
        .collect();
    assert_eq!(apps, [("111", true), ("222", false)]);
    assert_eq!(config.validity, Duration::from_millis(250));
    assert_eq!(
        config.faults.system_error_style,
        SystemErrorStyle::Business40004
    );
    assert_eq!(config.faults.qps_cap, Some(10));
    assert_eq!(config.seed, Some(9));
    let missing = parse(&["--app", "1=/no/such/key.pem"])
        .unwrap()
        .to_config()
        .unwrap_err();
    assert!(format!("{missing:#}").contains("/no/such/key.pem"));
}

// ----------------------------------------------------------- scripted replies

#[tokio::test]
async fn scripted_replies_come_in_order_before_any_rate() {
    let harness = spawn().await;
    let sandbox = &harness.sandbox;
    sandbox.respond_next(2, SandboxReply::SystemError);
    sandbox.respond_next(1, SandboxReply::Unavailable);
    sandbox.respond_next(1, SandboxReply::Throttled);
    sandbox.respond_next(1, SandboxReply::LostAfterBilling);
    sandbox.respond_next(1, SandboxReply::BrokenSignature);
    sandbox.respond_next(1, SandboxReply::Unsigned);
    for _ in 0..2 {
        assert_eq!(harness.query("t_script").await.code().0, "20000");
    }
    assert_eq!(harness.query("t_script").await.status, 503);
    assert_eq!(
        harness.query("t_script").await.code().1,
        "isv.app-call-limited"
    );
    assert_eq!(harness.query("t_script").await.status, 502);
    assert_eq!(sandbox.billed_for("t_script"), 1);
    let broken = harness.query("t_script").await;
    assert!(broken.is_signed() && !broken.is_verified());
    let unsigned = harness.query("t_script").await;
    assert!(!unsigned.is_signed());
    assert_success(&harness.query("t_script").await);
    assert_eq!(sandbox.calls_for("t_script"), 8);
    assert_eq!(sandbox.billed_for("t_script"), 1);
}

// ------------------------------------------------------------ the binary

#[tokio::test]
async fn the_binary_prints_its_address_first_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(crate::support::BIN)
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first.strip_prefix("listening on ").unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{first}"
    );
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_binary_rejects_a_malformed_app_flag_naming_it() {
    let output = tokio::process::Command::new(crate::support::BIN)
        .args(["sandbox", "--app", "no-equals-sign"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--app") && stderr.contains("APP_ID=PUBLIC_KEY_FILE"),
        "{stderr}"
    );
}

// ------------------------------------------------------------ edges (issue 9)

const ISV_TOKEN: &str = "201510BB0c409dd5758b4d939d4008a525463X18";

#[tokio::test]
async fn a_registered_app_auth_token_is_accepted_and_unknown_ones_still_get_20001() {
    let harness = spawn_with(|config| {
        config.app_auth_tokens.push(sandbox::AppAuthToken {
            app_id: APP_ID.into(),
            token: ISV_TOKEN.into(),
        });
    })
    .await;
    let granted = harness
        .send(&TestRequest::new("t_isv_1").set("app_auth_token", ISV_TOKEN))
        .await;
    assert_success(&granted);
    let unknown = harness
        .send(&TestRequest::new("t_isv_2").set("app_auth_token", "201510BBother"))
        .await;
    assert_eq!(unknown.code().0, "20001");
    let other_app = harness
        .send(
            &TestRequest::new("t_isv_3")
                .set("app_id", APP_WITHOUT_CONTRACT)
                .set("app_auth_token", ISV_TOKEN),
        )
        .await;
    assert_eq!(other_app.code().0, "20001", "a token is granted to one app");
}

#[test]
fn the_app_auth_token_flag_registers_tokens_without_printing_them() {
    let args = parse(&[
        "--app-auth-token",
        &format!("{APP_ID}={ISV_TOKEN}"),
        "--app-auth-token",
        "2021000000000002=second",
    ])
    .unwrap();
    let config = args.to_config().unwrap();
    assert_eq!(config.app_auth_tokens.len(), 2);
    assert_eq!(config.app_auth_tokens[0].app_id, APP_ID);
    assert_eq!(config.app_auth_tokens[0].token, ISV_TOKEN);
    assert!(
        !format!("{config:?}").contains(ISV_TOKEN),
        "tokens are not printed"
    );
    let error = parse(&["--app-auth-token", "secret-without-app"]).unwrap_err();
    assert!(error.contains("APP_ID=TOKEN"), "{error}");
}

#[tokio::test]
async fn put_admin_faults_merges_the_given_fields_into_the_current_ones() {
    let harness = spawn_with(|config| {
        config.faults.latency_ms = 7;
        config.faults.qps_cap = Some(50);
    })
    .await;
    let url = format!("{}/admin/faults", harness.sandbox.base_url());
    let put = |body: Value| {
        let request = harness.http.put(&url).body(body.to_string());
        async move { request.send().await.unwrap() }
    };
    let response = put(json!({"system_error_rate": 0.25})).await;
    assert_eq!(response.status(), 200);
    let answered: Faults = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let expected = Faults {
        system_error_rate: 0.25,
        latency_ms: 7,
        qps_cap: Some(50),
        ..Faults::default()
    };
    assert_eq!(answered, expected);
    assert_eq!(harness.sandbox.faults(), expected);

    assert_eq!(put(json!({"slow_rate": 3.0})).await.status(), 400);
    assert_eq!(put(json!({"latency_ms": 1, "nope": 1})).await.status(), 400);
    assert_eq!(put(json!([1])).await.status(), 400);
    assert_eq!(
        harness.sandbox.faults(),
        expected,
        "a refused change changes nothing"
    );

    assert_eq!(put(json!({"qps_cap": null})).await.status(), 200);
    assert_eq!(harness.sandbox.faults().qps_cap, None);
    assert_eq!(harness.sandbox.faults().latency_ms, 7);
}

#[tokio::test]
async fn unsigned_or_refused_requests_do_not_grow_the_per_id_stats() {
    let harness = spawn().await;
    let huge_id = "x".repeat(200 * 1024);
    let requests = [
        TestRequest::new(&huge_id).without("sign"),
        TestRequest::new(&huge_id).set("sign", "YWJj"),
        TestRequest::new(&huge_id).set("app_id", "2099000000000000"),
        TestRequest::new("t_refused").without("sign_type"),
    ];
    for (n, request) in requests.iter().cycle().take(20).enumerate() {
        let mut request = request.clone();
        if n % 4 != 3 {
            request.sign_override = Some(String::new());
        }
        let answer = harness.send(&request).await;
        assert_ne!(answer.code().0, "10000");
    }
    let stats = harness.get("/stats").await.bytes().await.unwrap();
    assert!(stats.len() < 4096, "/stats grew to {} bytes", stats.len());
    let stats: Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(stats["requests"], 20);
    assert_eq!(stats["transactions"], json!({}));
    // A signed call still counts per id, failures included.
    harness
        .send(&with_field("t_counted", "relation_phone", json!("1")))
        .await;
    assert_eq!(harness.sandbox.calls_for("t_counted"), 1);
}

#[tokio::test]
async fn a_connection_without_a_complete_request_header_is_dropped() {
    let harness =
        spawn_with(|config| config.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(harness.sandbox.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sandbox\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buffer))
        .await
        .expect("the sandbox dropped the connection in time");
    // Closed (0 bytes) or answered with a 408 before closing: never left open.
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    // A complete request on a fresh connection is still served.
    assert_eq!(harness.get("/healthz").await.status(), 200);
}
