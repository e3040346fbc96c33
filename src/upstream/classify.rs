//! From raw answer bytes to a typed outcome: locate the signed node, verify it,
//! parse only the verified slice, and say what the worker should do about a
//! failure. Pure: no I/O.
//!
//! Trust rules: `code` 10000 counts only when signed and verified. An unsigned
//! error is used for its gateway-level code alone (the real gateway leaves
//! unknown-app and unknown-method errors unsigned); anything else whose
//! signature is missing or wrong is [`ErrorClass::Unverified`].

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::response::{self, NodeKind, Verification};
use super::signing::{Charset, PublicKey, SignType};
use super::{CallReport, UpstreamError};

/// What the worker does about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later with the same transaction_id (SYSTEM_ERROR, 20000, 5xx,
    /// timeouts, unreadable answers).
    Retryable,
    /// 40005 call-rate limited: slow down and try again.
    Throttled,
    /// The answer's own signature is missing or wrong: retry (the upstream
    /// replays its recorded answer unbilled); many in a row mean a wrong
    /// Alipay public key.
    Unverified,
    /// The job itself is wrong; trying again gives the same answer.
    Permanent,
    /// Our set-up is wrong (keys, app id, contract, permission): every job
    /// would fail the same way, so stop consuming until it is fixed.
    Configuration,
}

/// A non-success answer from the gateway, as it came (codes not normalized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFault {
    pub(crate) code: String,
    pub(crate) msg: String,
    pub(crate) sub_code: Option<String>,
    pub(crate) sub_msg: Option<String>,
    /// Whether the answer's signature verified.
    pub(crate) verified: bool,
}

const GATEWAY_ECHO_PREFIX: &str = "网关生成的验签字符串为：";

impl GatewayFault {
    /// The sub_code without its namespace (`ZMCREDIT.`, `isv.`, …), upper case,
    /// `-` as `_`: `isv.invalid-signature` → `INVALID_SIGNATURE`. A 20000
    /// ("service currently unavailable", 系统繁忙) is stored as `SYSTEM_ERROR`,
    /// the business code with the same meaning; the ledger keeps the raw codes.
    pub(crate) fn normalized_code(&self) -> String {
        if self.code == "20000" {
            return "SYSTEM_ERROR".into();
        }
        match &self.sub_code {
            Some(sub_code) if !sub_code.trim().is_empty() => normalize_sub_code(sub_code),
            _ => format!("GATEWAY_{}", self.code),
        }
    }

    pub(crate) fn class(&self) -> ErrorClass {
        if !self.verified {
            return match self.code.as_str() {
                "40001" | "40002" => ErrorClass::Configuration,
                _ => ErrorClass::Unverified,
            };
        }
        match self.code.as_str() {
            "20000" => ErrorClass::Retryable,
            "20001" | "40001" | "40002" | "40006" => ErrorClass::Configuration,
            "40005" => ErrorClass::Throttled,
            "40004" => match self.normalized_code().as_str() {
                "SYSTEM_ERROR" => ErrorClass::Retryable,
                "NO_VALID_ARRANGEMENT" => ErrorClass::Configuration,
                _ => ErrorClass::Permanent,
            },
            _ => ErrorClass::Retryable,
        }
    }

    pub(crate) fn is_signature_rejected(&self) -> bool {
        self.normalized_code() == "INVALID_SIGNATURE"
    }

    /// The string the gateway verified, which it echoes after rejecting our
    /// signature (the real gateway writes `&` as `&amp;` there).
    pub(crate) fn gateway_string_to_sign(&self) -> Option<String> {
        let sub_msg = self.sub_msg.as_deref()?;
        let start = sub_msg.find(GATEWAY_ECHO_PREFIX)? + GATEWAY_ECHO_PREFIX.len();
        Some(sub_msg[start..].replace("&amp;", "&"))
    }
}

impl std::fmt::Display for GatewayFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway answered {} {}", self.code, self.msg)?;
        if let Some(sub_code) = &self.sub_code {
            write!(f, " / {sub_code}")?;
        }
        if let Some(sub_msg) = &self.sub_msg
            && !self.is_signature_rejected()
        {
            write!(f, " ({sub_msg})")?;
        }
        if !self.verified {
            write!(f, " [unsigned or unverified answer]")?;
        }
        Ok(())
    }
}

pub(crate) fn normalize_sub_code(sub_code: &str) -> String {
    let trimmed = sub_code.trim();
    let tail = trimmed.rsplit('.').next().unwrap_or(trimmed);
    tail.to_ascii_uppercase().replace('-', "_")
}

impl UpstreamError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Timeout
            | Self::Connect(_)
            | Self::Malformed { .. }
            | Self::Redirect { .. }
            | Self::TooLarge { .. } => ErrorClass::Retryable,
            Self::Http { status: 429 } => ErrorClass::Throttled,
            Self::Http { status } if *status >= 500 => ErrorClass::Retryable,
            Self::Http { .. } => ErrorClass::Configuration,
            Self::Unverified { .. } => ErrorClass::Unverified,
            Self::Gateway(fault) => fault.class(),
            Self::SignatureRejected(_) | Self::Signing(_) => ErrorClass::Configuration,
            Self::Encode(_) => ErrorClass::Permanent,
            // The answer was not used: the same transaction_id is retried
            // (replayed unbilled) once the certificate can be fetched.
            Self::CertificateFetch { .. } => ErrorClass::Retryable,
            // Every answer signed with it would be refused the same way.
            Self::CertificateUntrusted { .. } => ErrorClass::Configuration,
        }
    }

    /// The normalized `error_code` stored with the job.
    pub fn error_code(&self) -> String {
        match self {
            Self::Timeout => "TIMEOUT".into(),
            Self::Connect(_) => "CONNECT_ERROR".into(),
            Self::Http { status } | Self::Redirect { status } => format!("HTTP_{status}"),
            Self::TooLarge { .. } => "RESPONSE_TOO_LARGE".into(),
            Self::Malformed { .. } => "MALFORMED_RESPONSE".into(),
            Self::Unverified { .. } => "UNVERIFIED_RESPONSE".into(),
            Self::Gateway(fault) => fault.normalized_code(),
            Self::SignatureRejected(mismatch) => mismatch.fault.normalized_code(),
            Self::Signing(_) => "SIGNING_ERROR".into(),
            Self::Encode(_) => "ENCODE_ERROR".into(),
            Self::CertificateFetch { .. } => "ALIPAY_CERT_FETCH_FAILED".into(),
            Self::CertificateUntrusted { .. } => "ALIPAY_CERT_UNTRUSTED".into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    code: Option<String>,
    #[serde(default)]
    msg: String,
    sub_code: Option<String>,
    sub_msg: Option<String>,
}

/// Reads one HTTP answer. `elapsed` is left for the caller to fill.
pub(super) fn read_answer<A: DeserializeOwned>(
    body: &[u8],
    status: u16,
    method: &str,
    charset: Charset,
    sign_type: SignType,
    key: &PublicKey,
) -> CallReport<A> {
    let mut report = CallReport::<A> {
        http_status: Some(status),
        elapsed: std::time::Duration::ZERO,
        code: None,
        sub_code: None,
        raw_body: Some(charset.decode(body).into_owned()),
        outcome: Err(UpstreamError::Http { status }),
    };
    if status != 200 {
        return report;
    }
    let node_name = response::response_node_name(method);
    let extracted = match response::extract(body, &node_name, charset) {
        Ok(extracted) => extracted,
        Err(error) => {
            report.outcome = Err(malformed(error));
            return report;
        }
    };
    let content = charset.decode(extracted.content);
    let envelope: Envelope = match serde_json::from_str(&content) {
        Ok(envelope) => envelope,
        Err(error) => {
            report.outcome = Err(malformed(error));
            return report;
        }
    };
    report.code.clone_from(&envelope.code);
    report.sub_code.clone_from(&envelope.sub_code);
    let verification = response::verify(&extracted, key, sign_type);
    report.outcome = judge(extracted.node, verification, envelope, &content);
    report
}

fn judge<A: DeserializeOwned>(
    node: NodeKind,
    verification: Verification,
    envelope: Envelope,
    content: &str,
) -> Result<A, UpstreamError> {
    let code = envelope.code.unwrap_or_default();
    let verified = matches!(verification, Verification::Verified);
    let unverified_reason = match verification {
        Verification::Verified => None,
        Verification::Unsigned => Some("missing"),
        Verification::Failed => Some("invalid"),
    };
    if code == "10000" && node == NodeKind::Method {
        if let Some(reason) = unverified_reason {
            return Err(UpstreamError::Unverified {
                reason: reason.into(),
                code: Some(code),
            });
        }
        return serde_json::from_str(content).map_err(malformed);
    }
    let fault = GatewayFault {
        code,
        msg: envelope.msg,
        sub_code: envelope.sub_code,
        sub_msg: envelope.sub_msg,
        verified,
    };
    match (unverified_reason, fault.class()) {
        (Some(reason), ErrorClass::Unverified) => Err(UpstreamError::Unverified {
            reason: reason.into(),
            code: Some(fault.code),
        }),
        _ => Err(UpstreamError::Gateway(Box::new(fault))),
    }
}

fn malformed(error: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Malformed {
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn fault(code: &str, sub_code: Option<&str>, verified: bool) -> GatewayFault {
        GatewayFault {
            code: code.into(),
            msg: String::new(),
            sub_code: sub_code.map(Into::into),
            sub_msg: None,
            verified,
        }
    }

    #[test]
    fn sub_codes_are_normalized_whatever_their_prefix_and_case() {
        assert_eq!(normalize_sub_code("ZMCREDIT.system_error"), "SYSTEM_ERROR");
        assert_eq!(
            normalize_sub_code("isv.invalid-signature"),
            "INVALID_SIGNATURE"
        );
        assert_eq!(normalize_sub_code("INVALID_PARAMETER"), "INVALID_PARAMETER");
        assert_eq!(
            fault("40004", None, true).normalized_code(),
            "GATEWAY_40004"
        );
        assert_eq!(
            fault("20000", Some("isp.unknow-error"), true).normalized_code(),
            "SYSTEM_ERROR"
        );
    }

    #[test]
    fn signed_faults_are_classified_by_code_and_sub_code() {
        let cases = [
            ("20000", Some("isp.unknow-error"), ErrorClass::Retryable),
            (
                "40004",
                Some("ZMCREDIT.SYSTEM_ERROR"),
                ErrorClass::Retryable,
            ),
            ("40005", Some("isv.app-call-limited"), ErrorClass::Throttled),
            ("40004", Some("INVALID_PARAMETER"), ErrorClass::Permanent),
            (
                "40004",
                Some("API_PRODUCT_NOT_MATCH"),
                ErrorClass::Permanent,
            ),
            ("40004", Some("PRODUCT_CODE_IS_NULL"), ErrorClass::Permanent),
            (
                "40004",
                Some("INVALID_TRANSACTION_ID"),
                ErrorClass::Permanent,
            ),
            (
                "40004",
                Some("TRANSACTION_ID_REPEAT"),
                ErrorClass::Permanent,
            ),
            (
                "40004",
                Some("TRANSACTION_ID_EXPIRED"),
                ErrorClass::Permanent,
            ),
            (
                "40004",
                Some("NO_VALID_ARRANGEMENT"),
                ErrorClass::Configuration,
            ),
            (
                "40002",
                Some("isv.invalid-signature"),
                ErrorClass::Configuration,
            ),
            (
                "40006",
                Some("isv.insufficient-isv-permissions"),
                ErrorClass::Configuration,
            ),
            (
                "20001",
                Some("aop.invalid-app-auth-token"),
                ErrorClass::Configuration,
            ),
        ];
        for (code, sub_code, class) in cases {
            assert_eq!(
                fault(code, sub_code, true).class(),
                class,
                "{code} {sub_code:?}"
            );
        }
    }

    #[test]
    fn unsigned_faults_count_only_for_gateway_level_codes() {
        assert_eq!(
            fault("40002", Some("isv.invalid-app-id"), false).class(),
            ErrorClass::Configuration
        );
        assert_eq!(
            fault("40004", Some("INVALID_PARAMETER"), false).class(),
            ErrorClass::Unverified
        );
    }

    #[test]
    fn gateway_echo_of_the_string_to_sign_is_extracted() {
        let mut rejected = fault("40002", Some("isv.invalid-signature"), true);
        rejected.sub_msg = Some(format!(
            "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，{GATEWAY_ECHO_PREFIX}a=1&b=2"
        ));
        assert!(rejected.is_signature_rejected());
        assert_eq!(
            rejected.gateway_string_to_sign().as_deref(),
            Some("a=1&b=2")
        );
        rejected.sub_msg = Some(format!("{GATEWAY_ECHO_PREFIX}a=1&amp;b=2"));
        assert_eq!(
            rejected.gateway_string_to_sign().as_deref(),
            Some("a=1&b=2")
        );
    }

    #[test]
    fn transport_failures_are_retryable_and_named() {
        assert_eq!(UpstreamError::Timeout.class(), ErrorClass::Retryable);
        assert_eq!(UpstreamError::Http { status: 502 }.error_code(), "HTTP_502");
        assert_eq!(
            UpstreamError::Http { status: 502 }.class(),
            ErrorClass::Retryable
        );
        assert_eq!(
            UpstreamError::Http { status: 404 }.class(),
            ErrorClass::Configuration
        );
        assert_eq!(
            UpstreamError::Http { status: 429 }.class(),
            ErrorClass::Throttled
        );
    }
}
