//! Every answer code the sandbox can give, with the real gateway's `code`,
//! `msg`, `sub_code` and `sub_msg` texts, and the response node they become.
//!
//! Clients classify answers by these strings (retryable, configuration fault,
//! permanent), so they are spelled exactly as the gateway and the seed spell them.
//! Nothing here decides *when* an error applies; see `gateway` and `ledger`.

use serde::{Deserialize, Serialize};

/// The content of `zhima_credit_relation_query_response` (or `error_response`).
/// Field order is the gateway's: code, msg, sub_code, sub_msg, then the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub code: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_rank: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_info: Option<RelationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_score: Option<u8>,
}

/// Present only when a relation exists (the seed: "只有存在关系时才能输出").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationInfo {
    pub(crate) recency: String,
}

impl Node {
    fn error(code: &str, msg: &str, sub_code: &str, sub_msg: String) -> Self {
        Self {
            code: code.to_owned(),
            msg: msg.to_owned(),
            sub_code: Some(sub_code.to_owned()),
            sub_msg: Some(sub_msg),
            biz_no: None,
            relation_rank: None,
            relation_info: None,
            relation_score: None,
        }
    }

    /// The key under which `/stats` counts this answer: `code:sub_code`, or
    /// `None` for a success.
    pub(crate) fn error_key(&self) -> Option<String> {
        if self.code == SUCCESS_CODE {
            return None;
        }
        Some(match &self.sub_code {
            Some(sub_code) => format!("{}:{sub_code}", self.code),
            None => self.code.clone(),
        })
    }
}

pub(crate) const SUCCESS_CODE: &str = "10000";
pub(crate) const SUCCESS_MSG: &str = "Success";

/// Prefix of the `sub_msg` of `isv.invalid-signature`; the gateway appends the
/// string it verified so that a merchant can diff it against their own.
pub(crate) const INVALID_SIGNATURE_PREFIX: &str =
    "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：";

/// Rejections by the gateway itself, before the product sees the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GatewayError {
    MissingMethod,
    InvalidMethod,
    MissingAppId,
    InvalidAppId,
    InvalidCharset,
    MissingSignType,
    InvalidSignType,
    MissingSign,
    MissingTimestamp,
    InvalidTimestamp,
    MissingVersion,
    InvalidVersion,
    InvalidFormat,
    InvalidSignature {
        verified: String,
    },
    InvalidAppAuthToken,
    InvalidBizContent,
    CallLimited,
    /// The 20000 flavour of an injected outage.
    ServiceUnavailable,
    /// Certificate mode: an app in certificate mode sent no `app_cert_sn`.
    MissingAppCertSn,
    /// Certificate mode: `app_cert_sn` is not the app's certificate.
    AppCertNotExist,
    /// Certificate mode: `alipay_root_cert_sn` missing or without the
    /// sandbox's root (the sandbox's own sub_code, documented in the README).
    InvalidRootCertSn,
}

impl GatewayError {
    pub(crate) fn node(&self) -> Node {
        let (code, msg, sub_code, sub_msg) = self.texts();
        Node::error(code, msg, sub_code, sub_msg)
    }

    /// [`GatewayError::node`] as JSON, for nodes of other shapes' methods.
    pub(crate) fn node_json(&self) -> serde_json::Value {
        let (code, msg, sub_code, sub_msg) = self.texts();
        serde_json::json!({"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg})
    }

    fn texts(&self) -> (&'static str, &'static str, &'static str, String) {
        const MISSING: (&str, &str) = ("40001", "Missing Required Arguments");
        const INVALID: (&str, &str) = ("40002", "Invalid Arguments");
        let (pair, sub_code, sub_msg) = match self {
            Self::MissingMethod => (MISSING, "isv.missing-method", "缺少方法名参数"),
            Self::InvalidMethod => (INVALID, "isv.invalid-method", "不存在的方法名"),
            Self::MissingAppId => (MISSING, "isv.missing-app-id", "缺少appId参数"),
            Self::InvalidAppId => (INVALID, "isv.invalid-app-id", "无效的AppID参数"),
            Self::InvalidCharset => (INVALID, "isv.invalid-charset", "字符集错误"),
            Self::MissingSignType => (MISSING, "isv.missing-signature-type", "缺少签名类型参数"),
            Self::InvalidSignType => (INVALID, "isv.invalid-signature-type", "无效的签名类型"),
            Self::MissingSign => (MISSING, "isv.missing-signature", "缺少签名参数"),
            Self::MissingTimestamp => (MISSING, "isv.missing-timestamp", "缺少时间戳参数"),
            Self::InvalidTimestamp => (INVALID, "isv.invalid-timestamp", "非法的时间戳参数"),
            Self::MissingVersion => (MISSING, "isv.missing-version", "缺少版本参数"),
            Self::InvalidVersion => (INVALID, "isv.invalid-parameter", "参数无效"),
            Self::InvalidFormat => (INVALID, "isv.invalid-format", "无效的数据格式"),
            Self::InvalidSignature { verified } => {
                let sub_msg = format!("{INVALID_SIGNATURE_PREFIX}{verified}");
                return (INVALID.0, INVALID.1, "isv.invalid-signature", sub_msg);
            }
            Self::InvalidAppAuthToken => (
                ("20001", "Insufficient Token Permissions"),
                "aop.invalid-app-auth-token",
                "无效的应用授权令牌",
            ),
            Self::InvalidBizContent => (INVALID, "isv.invalid-parameter", "参数无效"),
            Self::CallLimited => (
                ("40005", "Call Limited"),
                "isv.app-call-limited",
                "应用调用频率超限",
            ),
            Self::ServiceUnavailable => (
                ("20000", "Service Currently Unavailable"),
                "isp.unknow-error",
                "系统繁忙",
            ),
            Self::MissingAppCertSn => {
                (INVALID, "isv.missing-app-cert-sn", "缺少应用公钥证书序列号")
            }
            Self::AppCertNotExist => (INVALID, "isv.app-cert-not-exist", "应用公钥证书不存在"),
            Self::InvalidRootCertSn => (
                INVALID,
                "isv.invalid-alipay-root-cert-sn",
                "支付宝根证书序列号错误",
            ),
        };
        (pair.0, pair.1, sub_code, sub_msg.to_owned())
    }
}

/// Business failures (40004), with the seed's sub_code and description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BusinessError {
    ProductCodeIsNull,
    ApiProductNotMatch,
    NoValidArrangement,
    InvalidTransactionId,
    InvalidParameter,
    SystemError,
    TransactionIdExpired,
    TransactionIdRepeat,
}

impl BusinessError {
    pub(crate) fn node(self) -> Node {
        let (sub_code, description) = match self {
            Self::ProductCodeIsNull => ("PRODUCT_CODE_IS_NULL", "产品码为空"),
            Self::ApiProductNotMatch => ("API_PRODUCT_NOT_MATCH", "输入的产品码不正确"),
            Self::NoValidArrangement => ("NO_VALID_ARRANGEMENT", "无有效合约"),
            Self::InvalidTransactionId => ("INVALID_TRANSACTION_ID", "业务流水号不正确"),
            Self::InvalidParameter => ("INVALID_PARAMETER", "参数有误"),
            Self::SystemError => ("SYSTEM_ERROR", "系统繁忙"),
            Self::TransactionIdExpired => ("TRANSACTION_ID_EXPIRED", "业务流水号已过期"),
            Self::TransactionIdRepeat => (
                "TRANSACTION_ID_REPEAT",
                "相同业务流水号但业务参数不一致,无法提供服务",
            ),
        };
        Node::error("40004", "Business Failed", sub_code, description.to_owned())
    }
}
