//! Throughput of request signing and response verification, per core.
//!
//! `cargo bench --bench crypto` prints how many requests one core signs per
//! second and how many responses it verifies (extract + verify, as the worker
//! does), for RSA2 and legacy RSA, with the backend that did the work. These
//! numbers bound the useful `rate_limit.qps` per replica. It also times the
//! judgement of a hostile answer: a 1 MiB body with 100 000 members (target
//! < 50 ms; the repeated-key guard must stay linear). Uses the test keys in
//! `tests/vectors/keys/`; no network, no files written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use zhima_worker::upstream::response::{self, SignTypeChoice};
use zhima_worker::upstream::signing::{
    self, CRYPTO_BACKEND, Charset, PrivateKey, PublicKey, SignType,
};

const MESSAGES: usize = 2_000;
const RESPONSES: usize = 20_000;

fn key_text(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/keys/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

/// About 400 bytes, like a real request's string to sign.
fn request_params(index: usize) -> Vec<(String, String)> {
    let biz_content = format!(
        r#"{{"product_code":"w1010100001000001200","transaction_id":"bench_{index:08}","cert_no":"640202199007164686","name":"张三","relation_phone":"15843991158","relation_name":"李四","relation":"family","linked_merchant_id":"2088721630869411"}}"#
    );
    [
        ("app_id", "2014072300007148"),
        ("method", "zhima.credit.relation.query"),
        ("charset", "utf-8"),
        ("timestamp", "2024-05-20 10:30:00"),
        ("version", "1.0"),
        ("format", "JSON"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("biz_content".to_owned(), biz_content)])
    .collect()
}

fn bench_signing(key: &PrivateKey, sign_type: SignType, backend: &str) {
    let messages: Vec<String> = (0..MESSAGES)
        .map(|index| {
            let mut params = request_params(index);
            params.push(("sign_type".to_owned(), sign_type.as_str().to_owned()));
            signing::string_to_sign(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
        .collect();
    let average = messages.iter().map(String::len).sum::<usize>() / messages.len();
    let started = Instant::now();
    for message in &messages {
        let bytes = Charset::Utf8.encode(message);
        black_box(key.sign(sign_type, &bytes).unwrap());
    }
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let name = sign_type.as_str().to_lowercase();
    println!(
        "crypto: {name} sign {rate:.0}/s per core (backend {backend}; {MESSAGES} requests of ~{average} bytes)"
    );
}

fn bench_verifying(key: &PrivateKey, public: &PublicKey, sign_type: SignType) {
    let distinct = 200;
    let bodies: Vec<Vec<u8>> = (0..distinct)
        .map(|index| {
            let content = format!(
                r#"{{"code":"10000","msg":"Success","biz_no":"ZM2016082230000002424000{index:08}","relation_rank":"V_CT_RL_SG","relation_info":{{"recency":"V_CT_RL180D"}},"relation_score":99}}"#
            );
            let sign = key.sign(sign_type, content.as_bytes()).unwrap();
            format!(r#"{{"zhima_credit_relation_query_response":{content},"sign":"{sign}"}}"#)
                .into_bytes()
        })
        .collect();
    let choice = match sign_type {
        SignType::Rsa2 => SignTypeChoice::Rsa2,
        SignType::Rsa => SignTypeChoice::Rsa,
    };
    let started = Instant::now();
    for index in 0..RESPONSES {
        let body = &bodies[index % distinct];
        let report =
            response::verify_response_body(body, "zhima.credit.relation.query", public, choice);
        assert!(black_box(report).is_ok());
    }
    let rate = RESPONSES as f64 / started.elapsed().as_secs_f64();
    let name = sign_type.as_str().to_lowercase();
    println!(
        "crypto: {name} verify {rate:.0}/s per core (backend {CRYPTO_BACKEND}; {RESPONSES} responses, extract + verify)"
    );
}

const HOSTILE_MEMBERS: usize = 100_000;
const HOSTILE_RUNS: usize = 20;

/// `{"code":"10000","0000":0,"0001":0,...}`: `count` members (4-character
/// base-36 names, 10 bytes each) and a last one padded to `target_bytes`.
fn many_members(count: usize, target_bytes: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut text = String::with_capacity(target_bytes);
    text.push_str(r#"{"code":"10000""#);
    for index in 0..count - 1 {
        let name: String = [46_656, 1_296, 36, 1]
            .iter()
            .map(|place| char::from(DIGITS[index / place % 36]))
            .collect();
        text.push_str(&format!(r#","{name}":0"#));
    }
    let padding = target_bytes.saturating_sub(text.len() + r#","last":""}"#.len());
    text.push_str(&format!(r#","last":"{}"}}"#, "x".repeat(padding)));
    text
}

/// Extract + repeated-key guard + verify, as the worker judges an answer, on
/// a 1 MiB body whose 100 000 members sit in the signed node or at the top level.
fn bench_hostile_body(key: &PrivateKey, public: &PublicKey) {
    let node = "zhima_credit_relation_query_response";
    let inside = many_members(HOSTILE_MEMBERS, (1 << 20) - 512);
    let sign = key.sign(SignType::Rsa2, inside.as_bytes()).unwrap();
    let in_node = format!(r#"{{"{node}":{inside},"sign":"{sign}"}}"#).into_bytes();
    let small = r#"{"code":"10000"}"#;
    let small_sign = key.sign(SignType::Rsa2, small.as_bytes()).unwrap();
    let top_members = many_members(HOSTILE_MEMBERS, (1 << 20) - 512);
    let at_top = format!(
        r#"{{"{node}":{small},"sign":"{small_sign}",{}"#,
        &top_members[1..]
    )
    .into_bytes();
    for (label, body) in [
        ("in the signed node", &in_node),
        ("at the top level", &at_top),
    ] {
        let mut times: Vec<f64> = (0..HOSTILE_RUNS)
            .map(|_| {
                let started = Instant::now();
                let report = response::verify_response_body(
                    body,
                    "zhima.credit.relation.query",
                    public,
                    SignTypeChoice::Rsa2,
                );
                assert!(black_box(report).is_ok());
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let worst = times[times.len() - 1];
        println!(
            "crypto: hostile body judged in {median:.1} ms median, {worst:.1} ms worst \
             ({} bytes, {HOSTILE_MEMBERS} members {label}, {HOSTILE_RUNS} runs; target < 50 ms)",
            body.len()
        );
    }
}

fn main() {
    let key = PrivateKey::from_pem_or_base64(&key_text("merchant_private_pkcs8.pem")).unwrap();
    let public = PublicKey::from_pem_or_base64(&key_text("merchant_public.pem")).unwrap();
    println!("crypto: requests signed per second per core, single thread");
    bench_signing(&key, SignType::Rsa2, CRYPTO_BACKEND);
    bench_signing(&key, SignType::Rsa, "rsa");
    println!("crypto: responses verified per second per core, single thread");
    bench_verifying(&key, &public, SignType::Rsa2);
    bench_verifying(&key, &public, SignType::Rsa);
    println!("crypto: a 1 MiB answer with 100 000 members, single thread");
    bench_hostile_body(&key, &public);
}
