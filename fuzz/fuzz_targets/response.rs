//! The gateway answer check (`upstream::response`: locate the signed node and
//! `sign` by a byte scan, verify the signature) on hostile bodies.
//!
//! Input, first byte:
//! - high bit clear: the rest is a body as received, read in the charset of
//!   the low two bits and verified with the vectors' platform key (seeds: the
//!   response vectors, so mutations land around validly signed nodes);
//! - high bit set: a body signed here with the sandbox test key (one of
//!   `TEMPLATES`, by the low bits), then edited by the rest of the input: each
//!   edit is `offset (u16 LE), bytes to delete, bytes to insert, the bytes`.
//!   Edits outside the node keep the signature valid, so near-valid answers
//!   (repeated or escaped keys, odd spacing, trailing data) are explored.
//!
//! Oracles: no panic; a body grown to 1 MiB (its middle repeated) is judged
//! in under a second (sampled, one input in 256); and when the verdict is
//! "verified", an independent parse of the whole body (serde_json, after
//! decoding it as the worker does) holds exactly one member named as the
//! node and one `sign`, and the node's value equals the parse of the
//! verified bytes.
#![no_main]

use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use zhima_worker::fuzzing::{
    Charset, PrivateKey, PublicKey, RESPONSE_NODE, SignType, check_answer,
};

const CHARSETS: [Charset; 4] = [
    Charset::Utf8,
    Charset::Gbk,
    Charset::Gb2312,
    Charset::Gb18030,
];
const ONE_MIB: usize = 1 << 20;
/// "Well under a second" for 1 MiB, with room for a loaded 2-core machine.
const LINEAR_BOUND: Duration = Duration::from_secs(1);

struct Keys {
    sandbox: PublicKey,
    platform: PublicKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    sandbox: PublicKey::from_pem_or_base64(include_str!(
        "../../config/keys/test_sandbox_public.pem"
    ))
    .expect("the sandbox test public key"),
    platform: PublicKey::from_pem_or_base64(include_str!(
        "../../tests/vectors/keys/platform_public.pem"
    ))
    .expect("the vectors' platform public key"),
});

struct Template {
    charset: Charset,
    sign_type: SignType,
    body: Vec<u8>,
}

/// Signed once per process: RSA signing per execution would dominate the run.
static TEMPLATES: LazyLock<Vec<Template>> = LazyLock::new(|| {
    let key =
        PrivateKey::from_pem_or_base64(include_str!("../../config/keys/test_sandbox_private.pem"))
            .expect("the sandbox test private key");
    let success = r#"{"code":"10000","msg":"Success","biz_no":"ZM201608223000000242400084180839","relation_rank":"V_CT_RL_SG","relation_info":{"recency":"V_CT_RL180D"},"relation_score":99}"#;
    let business_error = r#"{"code":"40004","msg":"Business Failed","sub_code":"ZMCREDIT.SYSTEM_ERROR","sub_msg":"系统错误，请重试"}"#;
    let gbk_success = r#"{"code":"10000","msg":"成功","biz_no":"ZM2016表\\示","relation_rank":"V_CT_RL_SG","note":"{\"x\":[1,2]}","relation_score":"88"}"#;
    let four_byte = r#"{"code":"10000","msg":"𠀀😀","biz_no":"ZM1","relation_rank":"V_CT_RL_SG","relation_score":1}"#;
    let gateway_error = r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature","sub_msg":"验签出错"}"#;
    let slashes = r#"{"code":"10000","msg":"Success","biz_no":"ZM/1","relation_rank":"V_CT_RL_SG","link":"http://a/b","relation_score":2}"#;
    let specs: [(Charset, SignType, &str, &str, Layout); 8] = [
        (
            Charset::Utf8,
            SignType::Rsa2,
            RESPONSE_NODE,
            success,
            Layout::NodeFirst,
        ),
        (
            Charset::Utf8,
            SignType::Rsa2,
            RESPONSE_NODE,
            business_error,
            Layout::SignFirst,
        ),
        (
            Charset::Gbk,
            SignType::Rsa2,
            RESPONSE_NODE,
            gbk_success,
            Layout::NodeFirst,
        ),
        (
            Charset::Gb18030,
            SignType::Rsa2,
            RESPONSE_NODE,
            four_byte,
            Layout::Spaced,
        ),
        (
            Charset::Utf8,
            SignType::Rsa2,
            "error_response",
            gateway_error,
            Layout::NodeFirst,
        ),
        (
            Charset::Utf8,
            SignType::Rsa2,
            RESPONSE_NODE,
            slashes,
            Layout::EscapedSlashes,
        ),
        (
            Charset::Utf8,
            SignType::Rsa,
            RESPONSE_NODE,
            success,
            Layout::NodeFirst,
        ),
        (
            Charset::Gb2312,
            SignType::Rsa2,
            RESPONSE_NODE,
            business_error,
            Layout::Spaced,
        ),
    ];
    specs
        .iter()
        .map(|(charset, sign_type, node, content, layout)| {
            let signed = charset.encode(content);
            let sign = key.sign(*sign_type, &signed).expect("signing a template");
            let written = match layout {
                Layout::EscapedSlashes => content.replace('/', "\\/"),
                _ => (*content).to_owned(),
            };
            let text = match layout {
                Layout::NodeFirst | Layout::EscapedSlashes => {
                    format!(r#"{{"{node}":{written},"sign":"{sign}"}}"#)
                }
                Layout::SignFirst => format!(r#"{{"sign":"{sign}","{node}":{written}}}"#),
                Layout::Spaced => {
                    format!("{{\r\n  \"{node}\" : {written} ,\n\t\"sign\":\"{sign}\" }}\n")
                }
            };
            Template {
                charset: *charset,
                sign_type: *sign_type,
                body: charset.encode(&text).into_owned(),
            }
        })
        .collect()
});

#[derive(Clone, Copy)]
enum Layout {
    NodeFirst,
    SignFirst,
    Spaced,
    EscapedSlashes,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (body, charset, sign_type, key) = if mode & 0x80 == 0 {
        let sign_type = if mode & 4 == 0 {
            SignType::Rsa2
        } else {
            SignType::Rsa
        };
        let charset = CHARSETS[usize::from(mode & 3)];
        (rest.to_vec(), charset, sign_type, &KEYS.platform)
    } else {
        let template = &TEMPLATES[usize::from(mode & 0x7f) % TEMPLATES.len()];
        let body = apply_edits(&template.body, rest);
        (body, template.charset, template.sign_type, &KEYS.sandbox)
    };
    let verdict = check_answer(&body, charset, key, sign_type);
    if let Ok(answer) = &verdict {
        if answer.verified {
            differential(&body, charset, answer.method_node, answer.content);
        }
    }
    if sampled(data) {
        linear_time(&body, charset, key, sign_type);
    }
});

/// `offset (u16 LE) | delete (u8) | insert length (u8) | bytes`, repeated.
fn apply_edits(template: &[u8], mut edits: &[u8]) -> Vec<u8> {
    let mut body = template.to_vec();
    while let [low, high, delete, insert, tail @ ..] = edits {
        let at = usize::from(u16::from_le_bytes([*low, *high])) % (body.len() + 1);
        let delete = usize::from(*delete % 16).min(body.len() - at);
        let insert = usize::from(*insert % 64).min(tail.len());
        body.splice(at..at + delete, tail[..insert].iter().copied());
        edits = &tail[insert..];
    }
    body
}

fn differential(body: &[u8], charset: Charset, method_node: bool, content: &[u8]) {
    let node = if method_node {
        RESPONSE_NODE
    } else {
        "error_response"
    };
    // Decoded as the worker decodes for display and parsing (lossy).
    let text = charset.decode(body);
    let Ok(TopLevel(members)) = serde_json::from_str::<TopLevel>(&text) else {
        return;
    };
    let named = |name: &str| members.iter().filter(|(key, _)| key == name).count();
    assert_eq!(
        named(node),
        1,
        "the verified node {node} is not the only one"
    );
    assert_eq!(named("sign"), 1, "a verified body has one `sign`");
    if !method_node {
        assert_eq!(
            named(RESPONSE_NODE),
            0,
            "error_response verified beside a method node"
        );
    }
    let whole = members
        .iter()
        .find(|(key, _)| key == node)
        .map(|(_, value)| value)
        .expect("counted above");
    let slice: Value = serde_json::from_str(&charset.decode(content))
        .expect("the whole body parsed, so the verified node parses");
    assert_eq!(
        whole, &slice,
        "the node a JSON parser reads is not the verified one"
    );
}

/// The top-level members in order, repeats kept (a map would keep one).
struct TopLevel(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(TopLevel(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn sampled(data: &[u8]) -> bool {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 256 == 0
}

/// The body's middle third repeated until the body is 1 MiB: repeated
/// members, nesting, escapes or multi-byte characters all grow with it.
fn linear_time(body: &[u8], charset: Charset, key: &PublicKey, sign_type: SignType) {
    if body.len() < 3 {
        return;
    }
    let (head, rest) = body.split_at(body.len() / 3);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    let mut grown = Vec::with_capacity(ONE_MIB + body.len());
    grown.extend_from_slice(head);
    while grown.len() + middle.len() + tail.len() <= ONE_MIB {
        grown.extend_from_slice(middle);
    }
    grown.extend_from_slice(tail);
    let started = Instant::now();
    let _ = check_answer(&grown, charset, key, sign_type);
    let elapsed = started.elapsed();
    assert!(
        elapsed < LINEAR_BOUND,
        "{} bytes judged in {elapsed:?}",
        grown.len()
    );
}
