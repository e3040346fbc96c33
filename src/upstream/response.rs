//! Locating and verifying the signed part of a gateway answer.
//!
//! Responsible for: finding, in the raw body bytes, the value of
//! `<method>_response` (or `error_response`) and the top-level `sign`, by a
//! string-aware brace scan that understands GBK/GB18030 double-byte characters;
//! verifying `sign` over exactly those bytes; and the `verify-response`
//! command's verdict.
//!
//! Must not: transcode or re-serialize before verifying (the signature covers
//! the bytes as received), interpret business fields (that is `classify`'s job,
//! on the slice verified here), or do I/O.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use super::signing::{Charset, PublicKey, SignType};

const ERROR_NODE: &str = "error_response";

/// "zhima.credit.relation.query" -> "zhima_credit_relation_query_response",
/// the key under which the gateway puts a method's answer.
pub(crate) fn response_node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// Which node held the answer: the method's own, or the gateway's generic
/// `error_response` (sent, unsigned, before the method is even known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Method,
    Error,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Method => "method response",
            Self::Error => ERROR_NODE,
        })
    }
}

/// Borrowed from the body so the verified bytes are exactly the received ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtractedResponse<'a> {
    pub(crate) node: NodeKind,
    /// The raw value of the node, `{` to `}` inclusive, in the body's charset.
    pub(crate) content: &'a [u8],
    /// The top-level `sign`, JSON-unescaped (some serializers write `\/`).
    pub(crate) sign: Option<String>,
}

/// An outcome rather than an error: an unsigned error answer is normal, and the
/// caller decides what each verdict means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verification {
    Verified,
    Unsigned,
    Failed,
}

/// `--sign-type` of `verify-response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignTypeChoice {
    Rsa2,
    Rsa,
    /// RSA2 first (the common case), then RSA.
    #[default]
    Auto,
}

impl FromStr for SignTypeChoice {
    type Err = ResponseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match text.parse::<SignType>() {
            Ok(SignType::Rsa2) => Ok(Self::Rsa2),
            Ok(SignType::Rsa) => Ok(Self::Rsa),
            Err(_) => Err(ResponseError::UnknownSignTypeChoice {
                value: text.to_owned(),
            }),
        }
    }
}

/// What `verify-response` proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub(crate) node: NodeKind,
    pub(crate) sign_type: SignType,
}

/// Each variant says what is wrong with the body, so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("the body is not a JSON object: {reason} (at byte {offset})")]
    NotAnObject { offset: usize, reason: &'static str },
    #[error("the body has neither {node:?} nor \"error_response\"")]
    NodeMissing { node: String },
    #[error("the body repeats the top-level key {key:?}; refusing to guess which one was signed")]
    RepeatedKey { key: String },
    #[error("unbalanced braces or an unterminated string in {key:?} (starting at byte {offset})")]
    Unbalanced { key: String, offset: usize },
    #[error("the value of {node:?} is not a JSON object")]
    NodeNotObject { node: String },
    #[error("the top-level \"sign\" is not a JSON string")]
    SignNotString,
    #[error("the top-level {key:?} is not a JSON string")]
    NotAString { key: String },
    #[error("the {node} is unsigned (no top-level \"sign\")")]
    Unsigned { node: NodeKind },
    #[error("the signature over the {node} does not verify as {tried}")]
    BadSignature { node: NodeKind, tried: &'static str },
    #[error("unknown sign type {value:?}: expected RSA2, RSA or auto")]
    UnknownSignTypeChoice { value: String },
}

/// Brace matching over bytes rather than a JSON parse, because the signature
/// covers the node's text exactly as sent (spacing, key order, escapes) and a
/// body in GBK is not valid UTF-8 for a JSON parser anyway.
pub(crate) fn extract<'a>(
    body: &'a [u8],
    node_name: &str,
    charset: Charset,
) -> Result<ExtractedResponse<'a>, ResponseError> {
    let members = scan_top_level(body, charset)?;
    let find = |name: &str| members.iter().find(|member| member.name == name.as_bytes());
    let (node, member, name) = match (find(node_name), find(ERROR_NODE)) {
        (Some(member), _) => (NodeKind::Method, member, node_name),
        (None, Some(member)) => (NodeKind::Error, member, ERROR_NODE),
        (None, None) => {
            return Err(ResponseError::NodeMissing {
                node: node_name.to_owned(),
            });
        }
    };
    if member.value.first() != Some(&b'{') {
        return Err(ResponseError::NodeNotObject {
            node: name.to_owned(),
        });
    }
    reject_repeated_keys_in_node(member.value, name, charset)?;
    let sign = match find("sign") {
        Some(sign) => Some(decode_sign(sign.value)?),
        None => None,
    };
    Ok(ExtractedResponse {
        node,
        content: member.value,
        sign,
    })
}

/// A top-level string member other than the nodes (certificate mode's
/// `alipay_cert_sn`), JSON-unescaped; None when absent.
pub(crate) fn top_level_string(
    body: &[u8],
    name: &str,
    charset: Charset,
) -> Result<Option<String>, ResponseError> {
    let members = scan_top_level(body, charset)?;
    let Some(member) = members.iter().find(|member| member.name == name.as_bytes()) else {
        return Ok(None);
    };
    if member.value.first() != Some(&b'"') {
        return Err(ResponseError::NotAString { key: name.into() });
    }
    serde_json::from_slice::<String>(member.value)
        .map(Some)
        .map_err(|_| ResponseError::NotAString { key: name.into() })
}

/// The `\/` retry exists because some gateways' serializers escape `/` in the
/// body after signing the unescaped text (the official SDKs do the same retry).
pub(crate) fn verify(
    extracted: &ExtractedResponse<'_>,
    key: &PublicKey,
    sign_type: SignType,
) -> Verification {
    let Some(sign) = extracted.sign.as_deref() else {
        return Verification::Unsigned;
    };
    if key.verify(sign_type, extracted.content, sign).is_ok() {
        return Verification::Verified;
    }
    if let Some(unescaped) = unescape_slashes(extracted.content)
        && key.verify(sign_type, &unescaped, sign).is_ok()
    {
        return Verification::Verified;
    }
    Verification::Failed
}

/// The `verify-response` command's logic. The charset is guessed (UTF-8 when the
/// bytes are valid UTF-8, else GBK) only to scan braces correctly; the bytes
/// verified are always the received ones.
pub fn verify_response_body(
    body: &[u8],
    method: &str,
    key: &PublicKey,
    choice: SignTypeChoice,
) -> Result<VerifyReport, ResponseError> {
    let charset = if std::str::from_utf8(body).is_ok() {
        Charset::Utf8
    } else {
        Charset::Gbk
    };
    let extracted = extract(body, &response_node_name(method), charset)?;
    let node = extracted.node;
    if extracted.sign.is_none() {
        return Err(ResponseError::Unsigned { node });
    }
    let (candidates, tried): (&[SignType], &'static str) = match choice {
        SignTypeChoice::Rsa2 => (&[SignType::Rsa2], "RSA2"),
        SignTypeChoice::Rsa => (&[SignType::Rsa], "RSA"),
        SignTypeChoice::Auto => (&[SignType::Rsa2, SignType::Rsa], "RSA2 or RSA"),
    };
    candidates
        .iter()
        .copied()
        .find(|sign_type| verify(&extracted, key, *sign_type) == Verification::Verified)
        .map(|sign_type| VerifyReport { node, sign_type })
        .ok_or(ResponseError::BadSignature { node, tried })
}

fn unescape_slashes(content: &[u8]) -> Option<Vec<u8>> {
    if !content.windows(2).any(|pair| pair == b"\\/") {
        return None;
    }
    let mut out = Vec::with_capacity(content.len());
    let mut index = 0;
    while index < content.len() {
        if content[index] == b'\\' && content.get(index + 1) == Some(&b'/') {
            out.push(b'/');
            index += 2;
        } else {
            out.push(content[index]);
            index += 1;
        }
    }
    Some(out)
}

fn decode_sign(raw: &[u8]) -> Result<String, ResponseError> {
    if raw.first() != Some(&b'"') {
        return Err(ResponseError::SignNotString);
    }
    serde_json::from_slice::<String>(raw).map_err(|_| ResponseError::SignNotString)
}

/// Member names are compared as a JSON parser sees them (after unescaping), so
/// `"sig\u006e"` is a second `sign`: whichever copy a later reader (jsonb,
/// Python) keeps, it must be the one that was verified, and only refusing the
/// body guarantees that. A hash set keeps the check linear in the body size.
fn reject_repeated_names(members: &[Member<'_>]) -> Result<(), ResponseError> {
    let mut seen = HashSet::with_capacity(members.len());
    for member in members {
        if !seen.insert(member.name.as_ref()) {
            return Err(ResponseError::RepeatedKey {
                key: String::from_utf8_lossy(&member.name).into_owned(),
            });
        }
    }
    Ok(())
}

/// The signed node's own members: a repeated name there would let a reader
/// pick a value the signature does not vouch for in the same way.
fn reject_repeated_keys_in_node(
    node: &[u8],
    node_name: &str,
    charset: Charset,
) -> Result<(), ResponseError> {
    let mut scanner = Scanner {
        body: node,
        position: 0,
        charset,
    };
    let members = scanner.object().map_err(|error| match error {
        ResponseError::NotAnObject { .. } => ResponseError::NodeNotObject {
            node: node_name.to_owned(),
        },
        other => other,
    })?;
    reject_repeated_names(&members).map_err(|error| match error {
        ResponseError::RepeatedKey { key } => ResponseError::RepeatedKey {
            key: format!("{node_name}.{key}"),
        },
        other => other,
    })
}

/// One `"key": value` of an object: the name JSON-unescaped (in the body's
/// charset), the value the raw slice exactly as written.
struct Member<'a> {
    name: Cow<'a, [u8]>,
    value: &'a [u8],
}

fn scan_top_level(body: &[u8], charset: Charset) -> Result<Vec<Member<'_>>, ResponseError> {
    let mut scanner = Scanner {
        body,
        position: 0,
        charset,
    };
    scanner.skip_whitespace();
    let members = scanner.object()?;
    scanner.skip_whitespace();
    if scanner.position != body.len() {
        return Err(scanner.malformed("unexpected data after the closing '}'"));
    }
    reject_repeated_names(&members)?;
    Ok(members)
}

struct Scanner<'a> {
    body: &'a [u8],
    position: usize,
    charset: Charset,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.position).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.position += 1;
        }
    }

    fn malformed(&self, reason: &'static str) -> ResponseError {
        ResponseError::NotAnObject {
            offset: self.position,
            reason,
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ResponseError> {
        if self.peek() == Some(byte) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.malformed(reason))
        }
    }

    /// At `{`: the object's members, up to and including its `}`.
    fn object(&mut self) -> Result<Vec<Member<'a>>, ResponseError> {
        self.expect(b'{', "it does not start with '{'")?;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(members);
        }
        loop {
            members.push(self.member()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b'}') => {
                    self.position += 1;
                    return Ok(members);
                }
                _ => return Err(self.malformed("expected ',' or '}' after a member")),
            }
        }
    }

    fn member(&mut self) -> Result<Member<'a>, ResponseError> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return Err(self.malformed("expected a quoted key"));
        }
        let key_start = self.position;
        let key_end = self
            .skip_string()
            .ok_or_else(|| ResponseError::Unbalanced {
                key: String::new(),
                offset: key_start,
            })?;
        let key = &self.body[key_start + 1..key_end - 1];
        let name = unescape_name(key, self.charset).ok_or(ResponseError::NotAnObject {
            offset: key_start,
            reason: "a member name has an invalid escape",
        })?;
        self.skip_whitespace();
        self.expect(b':', "expected ':' after a key")?;
        self.skip_whitespace();
        let value_start = self.position;
        let value_end = self.skip_value().map_err(|reason| match reason {
            ValueError::Unbalanced => ResponseError::Unbalanced {
                key: String::from_utf8_lossy(key).into_owned(),
                offset: value_start,
            },
            ValueError::Missing => self.malformed("expected a value after ':'"),
        })?;
        Ok(Member {
            name,
            value: &self.body[value_start..value_end],
        })
    }

    /// At an opening quote; returns the position just past the closing quote.
    fn skip_string(&mut self) -> Option<usize> {
        self.position += 1;
        while let Some(byte) = self.peek() {
            match byte {
                b'"' => {
                    self.position += 1;
                    return Some(self.position);
                }
                b'\\' => self.position += 2,
                _ => self.advance_character(byte),
            }
        }
        None
    }

    /// In the GB family a lead byte's trail may be ASCII such as `\`, `{` or `}`
    /// (表 is B1 5C in GBK), so the pair is skipped as one; a GB18030 four-byte sequence is two
    /// such pairs. UTF-8 needs nothing: its continuation bytes are never ASCII.
    fn advance_character(&mut self, byte: u8) {
        let is_lead = (0x81..=0xFE).contains(&byte);
        self.position += if is_lead && self.charset.has_ascii_trail_bytes() {
            2
        } else {
            1
        };
    }

    fn skip_value(&mut self) -> Result<usize, ValueError> {
        match self.peek() {
            Some(b'"') => self.skip_string().ok_or(ValueError::Unbalanced),
            Some(b'{' | b'[') => self.skip_container(),
            _ => self.skip_scalar(),
        }
    }

    fn skip_container(&mut self) -> Result<usize, ValueError> {
        let mut closers: Vec<u8> = Vec::new();
        while let Some(byte) = self.peek() {
            match byte {
                b'{' => closers.push(b'}'),
                b'[' => closers.push(b']'),
                b'}' | b']' => {
                    if closers.pop() != Some(byte) {
                        return Err(ValueError::Unbalanced);
                    }
                    if closers.is_empty() {
                        self.position += 1;
                        return Ok(self.position);
                    }
                }
                b'"' => {
                    self.skip_string().ok_or(ValueError::Unbalanced)?;
                    continue;
                }
                _ => {
                    self.advance_character(byte);
                    continue;
                }
            }
            self.position += 1;
        }
        Err(ValueError::Unbalanced)
    }

    fn skip_scalar(&mut self) -> Result<usize, ValueError> {
        let start = self.position;
        while let Some(byte) = self.peek() {
            if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                break;
            }
            self.advance_character(byte);
        }
        if self.position == start {
            Err(ValueError::Missing)
        } else {
            Ok(self.position.min(self.body.len()))
        }
    }
}

enum ValueError {
    Unbalanced,
    Missing,
}

/// A member name as a JSON parser reads it, in the body's charset: `\uXXXX`
/// (surrogate pairs included) and the short escapes decoded. `None` for an
/// escape no parser accepts (unknown letter, bad hex, lone surrogate). The
/// common case, a name without `\`, is borrowed as is.
fn unescape_name(raw: &[u8], charset: Charset) -> Option<Cow<'_, [u8]>> {
    if !raw.contains(&b'\\') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while let Some(&byte) = raw.get(index) {
        if byte != b'\\' {
            let width = if (0x81..=0xFE).contains(&byte) && charset.has_ascii_trail_bytes() {
                2
            } else {
                1
            };
            out.extend_from_slice(raw.get(index..index + width)?);
            index += width;
            continue;
        }
        let escape = *raw.get(index + 1)?;
        index += 2;
        let decoded = match escape {
            b'"' | b'\\' | b'/' => char::from(escape),
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (character, used) = unicode_escape(&raw[index..])?;
                index += used;
                character
            }
            _ => return None,
        };
        let mut buffer = [0u8; 4];
        out.extend_from_slice(&charset.encode(decoded.encode_utf8(&mut buffer)));
    }
    Some(Cow::Owned(out))
}

/// After `\u`: the character and how many bytes it took (4, or 10 for a
/// surrogate pair written as two escapes).
fn unicode_escape(rest: &[u8]) -> Option<(char, usize)> {
    let first = hex4(rest)?;
    if !(0xD800..=0xDBFF).contains(&first) {
        return char::from_u32(first).map(|character| (character, 4));
    }
    if rest.get(4..6)? != b"\\u" {
        return None;
    }
    let second = hex4(rest.get(6..)?)?;
    if !(0xDC00..=0xDFFF).contains(&second) {
        return None;
    }
    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
    char::from_u32(code).map(|character| (character, 10))
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    let digits = bytes.get(..4)?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::upstream::signing::test_support::*;

    const NODE: &str = "zhima_credit_relation_query_response";
    const METHOD: &str = "zhima.credit.relation.query";

    /// A body as the gateway builds it: `{"<node>":<content>,"sign":"..."}`,
    /// signed by the merchant test key over `content` in its charset.
    fn signed_body(content: &[u8], sign_type: SignType) -> (Vec<u8>, String) {
        let sign = merchant_private_pkcs8().sign(sign_type, content).unwrap();
        let mut body = format!("{{\"{NODE}\":").into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(format!(",\"sign\":\"{sign}\"}}").as_bytes());
        (body, sign)
    }

    #[test]
    fn every_response_vector_gets_its_expected_verdict() {
        let key = platform_public();
        for vector in vectors().response_vectors {
            let charset: Charset = vector.charset.parse().unwrap();
            let sign_type: SignType = vector.sign_type.parse().unwrap();
            let body = charset.encode(&vector.body);
            let verdict = match extract(&body, NODE, charset) {
                Ok(extracted) => {
                    let verified = verify(&extracted, &key, sign_type) == Verification::Verified;
                    if let Some(expected) = &vector.signed_content {
                        assert_eq!(
                            extracted.content,
                            charset.encode(expected).as_ref(),
                            "{}",
                            vector.id
                        );
                    }
                    verified
                }
                Err(_) => false,
            };
            assert_eq!(verdict, vector.expect_verify, "{}", vector.id);
            let command = verify_response_body(&body, METHOD, &key, SignTypeChoice::Auto);
            assert_eq!(
                command.is_ok(),
                vector.expect_verify,
                "{}: {command:?}",
                vector.id
            );
        }
    }

    #[test]
    fn unsigned_and_tampered_vectors_say_why_they_fail() {
        let key = platform_public();
        let vectors = vectors().response_vectors;
        let body = |id: &str| {
            vectors
                .iter()
                .find(|v| v.id == id)
                .unwrap()
                .body
                .clone()
                .into_bytes()
        };
        let error = verify_response_body(
            &body("t05_success_without_sign"),
            METHOD,
            &key,
            SignTypeChoice::Auto,
        );
        assert!(matches!(
            error,
            Err(ResponseError::Unsigned {
                node: NodeKind::Method
            })
        ));
        let error = verify_response_body(
            &body("t10_unsigned_error_response"),
            METHOD,
            &key,
            SignTypeChoice::Auto,
        );
        assert!(matches!(
            error,
            Err(ResponseError::Unsigned {
                node: NodeKind::Error
            })
        ));
        let error = verify_response_body(
            &body("t01_tampered_score"),
            METHOD,
            &key,
            SignTypeChoice::Rsa2,
        );
        assert!(matches!(
            error,
            Err(ResponseError::BadSignature { tried: "RSA2", .. })
        ));
    }

    #[test]
    fn auto_falls_back_to_legacy_rsa_and_says_so() {
        let (body, _) = signed_body(br#"{"code":"10000","msg":"Success"}"#, SignType::Rsa);
        let report =
            verify_response_body(&body, METHOD, &merchant_public(), SignTypeChoice::Auto).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                node: NodeKind::Method,
                sign_type: SignType::Rsa
            }
        );
        let report = verify_response_body(&body, METHOD, &merchant_public(), SignTypeChoice::Rsa2);
        assert!(report.is_err());
    }

    #[test]
    fn a_signed_business_failure_verifies() {
        let content =
            r#"{"code":"40004","msg":"Business Failed","sub_code":"ZMCREDIT.INVALID_PARAMETER"}"#;
        let (body, _) = signed_body(content.as_bytes(), SignType::Rsa2);
        let report =
            verify_response_body(&body, METHOD, &merchant_public(), SignTypeChoice::Auto).unwrap();
        assert_eq!(report.sign_type, SignType::Rsa2);
    }

    #[test]
    fn gbk_text_whose_trail_bytes_are_backslash_and_braces_is_extracted_whole() {
        let tricky = "张三亄亇乗";
        let encoded = Charset::Gbk.encode(tricky);
        assert_eq!(&encoded[4..], &[0x81, b'{', 0x81, b'}', 0x81, b'\\']);
        let mut content = br#"{"code":"40004","sub_msg":""#.to_vec();
        content.extend_from_slice(&encoded);
        content.extend_from_slice(br#"","relation_info":{"x":"}"}}"#);
        let (body, sign) = signed_body(&content, SignType::Rsa2);
        assert!(std::str::from_utf8(&body).is_err());

        let extracted = extract(&body, NODE, Charset::Gbk).unwrap();
        assert_eq!(extracted.content, content.as_slice());
        assert_eq!(extracted.sign.as_deref(), Some(sign.as_str()));
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Verified
        );
        let report =
            verify_response_body(&body, METHOD, &merchant_public(), SignTypeChoice::Auto).unwrap();
        assert_eq!(report.node, NodeKind::Method);
        let naive = extract(&body, NODE, Charset::Utf8);
        assert!(!matches!(naive, Ok(ref wrong) if wrong.content == content.as_slice()));
    }

    #[test]
    fn gb18030_four_byte_characters_do_not_confuse_the_scan() {
        let encoded = Charset::Gb18030.encode("😀乗");
        assert_eq!(encoded.len(), 6);
        let mut content = br#"{"sub_msg":""#.to_vec();
        content.extend_from_slice(&encoded);
        content.extend_from_slice(br#""}"#);
        let (body, _) = signed_body(&content, SignType::Rsa2);
        assert_eq!(
            extract(&body, NODE, Charset::Gb18030).unwrap().content,
            content.as_slice()
        );
    }

    #[test]
    fn whitespace_around_colons_and_commas_is_tolerated() {
        let content = br#"{ "code" : "10000" , "msg" : "Success" }"#;
        let sign = merchant_private_pkcs8()
            .sign(SignType::Rsa2, content)
            .unwrap();
        let body = format!(
            "\r\n {{ \"{NODE}\" :\t{} ,\n  \"sign\" : \"{sign}\" \n}}\n",
            std::str::from_utf8(content).unwrap()
        );
        let extracted = extract(body.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.content, content);
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Verified
        );
    }

    #[test]
    fn sign_may_come_before_the_node_and_be_followed_by_other_members() {
        let content = br#"{"code":"10000","nested":{"a":[1,{"b":"}"}]}}"#;
        let sign = merchant_private_pkcs8()
            .sign(SignType::Rsa2, content)
            .unwrap();
        let body = format!(
            r#"{{"sign":"{sign}","alipay_cert_sn":"abc","{NODE}":{},"extra":null}}"#,
            std::str::from_utf8(content).unwrap()
        );
        let report = verify_response_body(
            body.as_bytes(),
            METHOD,
            &merchant_public(),
            SignTypeChoice::Rsa2,
        )
        .unwrap();
        assert_eq!(report.node, NodeKind::Method);
        let body = format!(
            r#"{{"{NODE}":{},"sign":"{sign}","alipay_cert_sn":"abc"}}"#,
            std::str::from_utf8(content).unwrap()
        );
        let extracted = extract(body.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.content, content);
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Verified
        );
    }

    #[test]
    fn a_repeated_node_is_rejected() {
        let (body, _) = signed_body(br#"{"code":"10000"}"#, SignType::Rsa2);
        let mut repeated = body[..body.len() - 1].to_vec();
        repeated.extend_from_slice(format!(r#","{NODE}":{{"code":"40004"}}}}"#).as_bytes());
        let error = extract(&repeated, NODE, Charset::Utf8).unwrap_err();
        assert!(
            matches!(error, ResponseError::RepeatedKey { ref key } if key == NODE),
            "{error:?}"
        );
        let twice_signed = br#"{"error_response":{},"sign":"a","sign":"b"}"#;
        assert!(matches!(
            extract(twice_signed, NODE, Charset::Utf8),
            Err(ResponseError::RepeatedKey { .. })
        ));
    }

    #[test]
    fn an_escaped_slash_in_the_body_verifies_against_the_unescaped_text() {
        let signed_text = br#"{"code":"10000","url":"https://a/b"}"#;
        let sign = merchant_private_pkcs8()
            .sign(SignType::Rsa2, signed_text)
            .unwrap();
        let escaped_sign = sign.replace('/', "\\/");
        let body = format!(
            r#"{{"{NODE}":{{"code":"10000","url":"https:\/\/a\/b"}},"sign":"{escaped_sign}"}}"#
        );
        let extracted = extract(body.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.sign.as_deref(), Some(sign.as_str()));
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Verified
        );
        let tampered = body.replace("https", "http");
        let extracted = extract(tampered.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Failed
        );
    }

    #[test]
    fn error_response_is_used_only_when_the_method_node_is_absent() {
        let body = br#"{"error_response":{"code":"40002"}}"#;
        let extracted = extract(body, NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.node, NodeKind::Error);
        assert_eq!(extracted.sign, None);
        assert_eq!(
            verify(&extracted, &merchant_public(), SignType::Rsa2),
            Verification::Unsigned
        );
        let both =
            format!(r#"{{"error_response":{{"code":"40002"}},"{NODE}":{{"code":"10000"}}}}"#);
        let extracted = extract(both.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.node, NodeKind::Method);
        assert_eq!(extracted.content, br#"{"code":"10000"}"#);
    }

    #[test]
    fn malformed_bodies_are_rejected_with_the_reason() {
        let missing = extract(br#"{"other_response":{}}"#, NODE, Charset::Utf8);
        assert!(matches!(missing, Err(ResponseError::NodeMissing { .. })));
        let not_object = extract(br#"["a"]"#, NODE, Charset::Utf8);
        assert!(matches!(not_object, Err(ResponseError::NotAnObject { .. })));
        let html = extract(b"<html>502 Bad Gateway</html>", NODE, Charset::Utf8);
        assert!(matches!(html, Err(ResponseError::NotAnObject { .. })));
        let unbalanced = format!(r#"{{"{NODE}":{{"code":"10000","a":{{"b":1}}"#);
        assert!(matches!(
            extract(unbalanced.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::Unbalanced { .. })
        ));
        let unterminated = format!(r#"{{"{NODE}":{{"code":"10000}}}}"#);
        assert!(matches!(
            extract(unterminated.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::Unbalanced { .. })
        ));
        let mismatched = format!(r#"{{"{NODE}":{{"a":[1}}]}}"#);
        assert!(matches!(
            extract(mismatched.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::Unbalanced { .. })
        ));
        let string_node = format!(r#"{{"{NODE}":"10000"}}"#);
        assert!(matches!(
            extract(string_node.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::NodeNotObject { .. })
        ));
        let numeric_sign = format!(r#"{{"{NODE}":{{}},"sign":42}}"#);
        assert!(matches!(
            extract(numeric_sign.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::SignNotString)
        ));
        let trailing = format!(r#"{{"{NODE}":{{}}}} x"#);
        assert!(matches!(
            extract(trailing.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::NotAnObject { .. })
        ));
        let empty_value = format!(r#"{{"{NODE}":,"sign":"a"}}"#);
        assert!(matches!(
            extract(empty_value.as_bytes(), NODE, Charset::Utf8),
            Err(ResponseError::NotAnObject { .. })
        ));
    }

    #[test]
    fn truncated_bodies_never_panic() {
        let (body, _) = signed_body("{\"sub_msg\":\"乗亄\"}".as_bytes(), SignType::Rsa2);
        let gbk_body = {
            let text = String::from_utf8(body.clone()).unwrap();
            Charset::Gbk.encode(&text).into_owned()
        };
        for charset in [Charset::Utf8, Charset::Gbk, Charset::Gb18030] {
            for source in [&body, &gbk_body] {
                for end in 0..source.len() {
                    let _ = extract(&source[..end], NODE, charset);
                }
            }
        }
    }

    /// The signed body with `extra` (raw JSON members) added at the top level.
    fn with_top_level_members(extra: &str) -> Vec<u8> {
        let (body, _) = signed_body(br#"{"code":"10000","biz_no":"real"}"#, SignType::Rsa2);
        let mut out = body[..body.len() - 1].to_vec();
        out.extend_from_slice(format!(",{extra}}}").as_bytes());
        out
    }

    #[test]
    fn an_escaped_second_node_or_sign_is_rejected_as_a_repeated_key() {
        let forged = r#"{"code":"10000","biz_no":"forged"}"#;
        let spellings = [
            format!(r#""zhima_credit_relation_query_respons\u0065":{forged}"#),
            format!(r#""zhima\u005Fcredit_relation_query_response":{forged}"#),
            format!(r#""\u007ahima\u005fcredit_relation_query_response":{forged}"#),
            r#""sig\u006e":"AAAA""#.to_owned(),
            r#""\u0073\u0069\u0067\u006E":"AAAA""#.to_owned(),
        ];
        for extra in spellings {
            let body = with_top_level_members(&extra);
            let verdict =
                verify_response_body(&body, METHOD, &merchant_public(), SignTypeChoice::Auto);
            assert!(
                matches!(verdict, Err(ResponseError::RepeatedKey { .. })),
                "{extra}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_node_spelled_with_escapes_is_the_node_a_json_parser_sees() {
        let content = br#"{"code":"10000"}"#;
        let sign = merchant_private_pkcs8()
            .sign(SignType::Rsa2, content)
            .unwrap();
        let body = format!(
            r#"{{"zhima_credit_relation_query_respons\u0065":{{"code":"10000"}},"\u0073ign":"{sign}"}}"#
        );
        let extracted = extract(body.as_bytes(), NODE, Charset::Utf8).unwrap();
        assert_eq!(extracted.node, NodeKind::Method);
        assert_eq!(extracted.content, content);
        assert_eq!(extracted.sign.as_deref(), Some(sign.as_str()));
    }

    #[test]
    fn a_repeated_key_inside_the_signed_node_is_rejected_whatever_its_spelling() {
        for content in [
            r#"{"code":"10000","biz_no":"a","biz_no":"b"}"#,
            r#"{"code":"10000","biz_no":"a","biz_n\u006f":"b"}"#,
            r#"{"code":"10000","c\u006fde":"40004"}"#,
        ] {
            let (body, _) = signed_body(content.as_bytes(), SignType::Rsa2);
            let error = extract(&body, NODE, Charset::Utf8).unwrap_err();
            assert!(
                matches!(error, ResponseError::RepeatedKey { ref key } if key.starts_with(NODE)),
                "{content}: {error:?}"
            );
        }
        let nested_repeats_are_not_our_business = r#"{"code":"10000","x":{"a":1,"a":2}}"#;
        let (body, _) = signed_body(
            nested_repeats_are_not_our_business.as_bytes(),
            SignType::Rsa2,
        );
        assert!(extract(&body, NODE, Charset::Utf8).is_ok());
    }

    #[test]
    fn names_with_invalid_escapes_are_malformed() {
        for name in [
            r#"\x"#,
            r#"\u12"#,
            r#"\u+123"#,
            r#"\ud800"#,
            r#"\udc00x"#,
            r#"\ud800\u0041"#,
        ] {
            let body = with_top_level_members(&format!(r#""{name}":1"#));
            assert!(
                matches!(
                    extract(&body, NODE, Charset::Utf8),
                    Err(ResponseError::NotAnObject { .. })
                ),
                "{name}"
            );
        }
        let pair = with_top_level_members(r#""\ud83d\ude00":1,"😀":2"#);
        assert!(matches!(
            extract(&pair, NODE, Charset::Utf8),
            Err(ResponseError::RepeatedKey { .. })
        ));
    }

    #[test]
    fn a_gbk_name_whose_trail_byte_is_a_backslash_is_not_an_escape() {
        let name = Charset::Gbk.encode("乗");
        assert_eq!(name.as_ref(), &[0x81, b'\\']);
        let mut body = format!("{{\"{NODE}\":{{\"").into_bytes();
        body.extend_from_slice(&name);
        body.extend_from_slice(b"\":1,\"");
        body.extend_from_slice(&name);
        body.extend_from_slice(b"n\":2}}");
        assert!(extract(&body, NODE, Charset::Gbk).is_ok());
    }

    fn body_with_members(count: usize) -> Vec<u8> {
        let mut body = format!(r#"{{"{NODE}":{{"code":"10000"}}"#);
        for index in 0..count {
            body.push_str(&format!(r#","k{index}":0"#));
        }
        body.push_str(r#","sign":"AAAA"}"#);
        body.into_bytes()
    }

    /// The CPU time of this thread, not the wall clock: on a loaded machine
    /// a longer run is descheduled more often, which is not the code's cost.
    fn fastest_of_three(body: &[u8]) -> std::time::Duration {
        (0..3)
            .map(|_| {
                let started = cpu_time::ThreadTime::now();
                assert!(extract(body, NODE, Charset::Utf8).is_ok());
                started.elapsed()
            })
            .min()
            .unwrap()
    }

    /// Not a timing target (that is `cargo bench --bench crypto`): a quadratic
    /// check is 100 times slower for 10 times the members, a linear one about
    /// 10; 40 leaves room for a loaded machine.
    #[test]
    fn the_repeated_key_check_scales_linearly_with_the_member_count() {
        let small = fastest_of_three(&body_with_members(10_000));
        let large = fastest_of_three(&body_with_members(100_000));
        assert!(
            large < small * 40,
            "10 000 members: {small:?}, 100 000 members: {large:?}"
        );
    }

    #[test]
    fn the_node_name_is_the_method_with_underscores() {
        assert_eq!(response_node_name(METHOD), NODE);
    }

    #[test]
    fn sign_type_choice_parses_case_insensitively() {
        assert_eq!(
            "AUTO".parse::<SignTypeChoice>().unwrap(),
            SignTypeChoice::Auto
        );
        assert_eq!(
            "rsa2".parse::<SignTypeChoice>().unwrap(),
            SignTypeChoice::Rsa2
        );
        assert_eq!(
            "RSA".parse::<SignTypeChoice>().unwrap(),
            SignTypeChoice::Rsa
        );
        assert!("sha1".parse::<SignTypeChoice>().is_err());
    }
}
