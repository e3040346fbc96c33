//! The gateway's checks, in the real gateway's order: request parameters in,
//! either an accepted call or the exact error answer out.
//!
//! Pure: no clock, no state, no I/O. The stateful rules that sit between these
//! checks and the answer (the call-rate cap, injected outages, transaction_id
//! records) live in `engine` and `ledger`.

use chrono::{NaiveDateTime, Timelike};
use serde_json::{Map, Value};

use super::codes::{BusinessError, GatewayError, Node};
use super::params::{RequestCharset, RequestParams};
use super::{AppAuthToken, SandboxApp};
use crate::job::{self, TransactionId};
use crate::upstream::signing::{Charset, SignType, string_to_sign};

/// The one method this gateway serves.
pub(crate) const METHOD: &str = "zhima.credit.relation.query";
/// The node every answer after the method check is placed under.
pub const RESPONSE_NODE: &str = "zhima_credit_relation_query_response";
/// The node of an answer to a request whose method is missing or unknown.
pub(crate) const ERROR_NODE: &str = "error_response";

/// A finished answer, before it is serialized and signed.
#[derive(Debug, Clone)]
pub struct Reply {
    pub node: Node,
    pub node_name: &'static str,
    /// `None` only for the two answers the gateway leaves unsigned.
    pub sign_type: Option<SignType>,
    pub charset: Charset,
}

/// A request that passed every gateway check: signed by a known app.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) app_id: String,
    pub(crate) has_contract: bool,
    pub(crate) sign_type: SignType,
    pub(crate) charset: Charset,
    /// `None` when `biz_content` was absent (the product then says
    /// PRODUCT_CODE_IS_NULL).
    pub(crate) biz: Option<Map<String, Value>>,
}

impl Call {
    /// A signed answer to this call in its charset and sign type.
    pub(crate) fn reply(&self, node: Node) -> Reply {
        Reply {
            node,
            node_name: RESPONSE_NODE,
            sign_type: Some(self.sign_type),
            charset: self.charset,
        }
    }
}

/// The validated business parameters of a call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub(crate) transaction_id: TransactionId,
    pub(crate) contact: ContactFields,
    /// The business parameters with absent-equivalent values (null, "") dropped:
    /// compared by value, so key order and spacing do not matter.
    pub(crate) canonical: Map<String, Value>,
}

/// The fields that decide the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContactFields {
    pub(crate) cert_no: String,
    pub(crate) relation_phone: String,
    pub(crate) relation_name: String,
    pub(crate) has_relation: bool,
}

/// Runs the gateway's checks up to and including `biz_content` parsing.
pub(crate) fn check_request(
    params: &RequestParams,
    apps: &[SandboxApp],
    tokens: &[AppAuthToken],
) -> Result<Call, Box<Reply>> {
    let charset = params.charset.effective();
    let app = identify_app(params, apps).map_err(|(node_name, error)| {
        Box::new(Reply {
            node: error.node(),
            node_name,
            sign_type: None,
            charset,
        })
    })?;
    let fallback_sign_type = params
        .get("sign_type")
        .and_then(|v| v.parse().ok())
        .unwrap_or(SignType::Rsa2);
    let signed = |error: GatewayError| {
        Box::new(Reply {
            node: error.node(),
            node_name: RESPONSE_NODE,
            sign_type: Some(fallback_sign_type),
            charset,
        })
    };
    let sign_type = check_system_params(params).map_err(signed)?;
    check_signature(params, app, sign_type, charset).map_err(signed)?;
    let biz = check_extras(params, app, tokens).map_err(signed)?;
    Ok(Call {
        app_id: app.app_id.clone(),
        has_contract: app.has_contract,
        sign_type,
        charset,
        biz,
    })
}

/// method, then app_id. Both answers are unsigned: the gateway does not know
/// yet which method's node or which app's sign_type to answer with.
fn identify_app<'a>(
    params: &RequestParams,
    apps: &'a [SandboxApp],
) -> Result<&'a SandboxApp, (&'static str, GatewayError)> {
    match params.get("method") {
        None => return Err((ERROR_NODE, GatewayError::MissingMethod)),
        Some(method) if method != METHOD => return Err((ERROR_NODE, GatewayError::InvalidMethod)),
        Some(_) => {}
    }
    let app_id = params
        .get("app_id")
        .ok_or((RESPONSE_NODE, GatewayError::MissingAppId))?;
    apps.iter()
        .find(|app| app.app_id == app_id)
        .ok_or((RESPONSE_NODE, GatewayError::InvalidAppId))
}

/// charset, sign_type, sign, timestamp, version, format — in that order.
fn check_system_params(params: &RequestParams) -> Result<SignType, GatewayError> {
    if let RequestCharset::Invalid(_) = params.charset {
        return Err(GatewayError::InvalidCharset);
    }
    let sign_type = match params.get("sign_type") {
        None => return Err(GatewayError::MissingSignType),
        Some(value) => value
            .parse::<SignType>()
            .map_err(|_| GatewayError::InvalidSignType)?,
    };
    if params.get("sign").is_none() {
        return Err(GatewayError::MissingSign);
    }
    match params.get("timestamp") {
        None => return Err(GatewayError::MissingTimestamp),
        Some(value) if !is_valid_timestamp(value) => return Err(GatewayError::InvalidTimestamp),
        Some(_) => {}
    }
    match params.get("version") {
        None => return Err(GatewayError::MissingVersion),
        Some(value) if value != "1.0" => return Err(GatewayError::InvalidVersion),
        Some(_) => {}
    }
    match params.get("format") {
        Some(value) if !value.eq_ignore_ascii_case("json") => Err(GatewayError::InvalidFormat),
        _ => Ok(sign_type),
    }
}

/// `yyyy-MM-dd HH:mm:ss` exactly, and a real date and time. No clock check:
/// SDKs send host-local time. A leap second (`:60`) is refused.
pub(crate) fn is_valid_timestamp(value: &str) -> bool {
    const SHAPE: &[u8; 19] = b"dddd-dd-dd dd:dd:dd";
    let bytes = value.as_bytes();
    let shaped = bytes.len() == SHAPE.len()
        && bytes
            .iter()
            .zip(SHAPE)
            .all(|(byte, expected)| match expected {
                b'd' => byte.is_ascii_digit(),
                other => byte == other,
            });
    shaped
        && NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S")
            .is_ok_and(|parsed| parsed.nanosecond() < 1_000_000_000)
}

/// Verifies over the bytes the gateway rebuilds: the string to sign from the
/// decoded parameters, encoded in the request charset.
fn check_signature(
    params: &RequestParams,
    app: &SandboxApp,
    sign_type: SignType,
    charset: Charset,
) -> Result<(), GatewayError> {
    let verified = string_to_sign(params.iter());
    let sign = params.get("sign").unwrap_or_default();
    app.public_key
        .verify(sign_type, &charset.encode(&verified), sign)
        .map_err(|_| GatewayError::InvalidSignature { verified })
}

/// app_auth_token (valid only when registered for this app), then biz_content.
fn check_extras(
    params: &RequestParams,
    app: &SandboxApp,
    tokens: &[AppAuthToken],
) -> Result<Option<Map<String, Value>>, GatewayError> {
    if let Some(token) = params.get("app_auth_token") {
        let is_granted = tokens
            .iter()
            .any(|granted| granted.app_id == app.app_id && granted.token == token);
        if !is_granted {
            return Err(GatewayError::InvalidAppAuthToken);
        }
    }
    let Some(biz_content) = params.get("biz_content") else {
        return Ok(None);
    };
    match serde_json::from_str::<Value>(biz_content) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        _ => Err(GatewayError::InvalidBizContent),
    }
}

/// The product's checks, in order: product code, contract, transaction_id,
/// then every other field with the client's own validation rules.
pub(crate) fn check_business(call: &Call, product_code: &str) -> Result<Query, BusinessError> {
    let Some(biz) = &call.biz else {
        return Err(BusinessError::ProductCodeIsNull);
    };
    let canonical = canonical(biz);
    match text(&canonical, "product_code") {
        Field::Absent => return Err(BusinessError::ProductCodeIsNull),
        Field::Text(code) if code.trim().is_empty() => {
            return Err(BusinessError::ProductCodeIsNull);
        }
        Field::Text(code) if code == product_code => {}
        _ => return Err(BusinessError::ApiProductNotMatch),
    }
    if !call.has_contract {
        return Err(BusinessError::NoValidArrangement);
    }
    let Field::Text(transaction_id) = text(&canonical, "transaction_id") else {
        return Err(BusinessError::InvalidTransactionId);
    };
    let transaction_id: TransactionId = transaction_id
        .parse()
        .map_err(|_| BusinessError::InvalidTransactionId)?;
    let contact = check_fields(&canonical).map_err(|_| BusinessError::InvalidParameter)?;
    Ok(Query {
        transaction_id,
        contact,
        canonical,
    })
}

/// Validates every field but product_code and transaction_id.
fn check_fields(biz: &Map<String, Value>) -> Result<ContactFields, job::FieldError> {
    let required = |field: &'static str| match text(biz, field) {
        Field::Text(value) => Ok(value.to_owned()),
        _ => Err(field_error(field, "is required and must be a string")),
    };
    let optional = |field: &'static str| match text(biz, field) {
        Field::Absent => Ok(None),
        Field::Text(value) => Ok(Some(value)),
        Field::NotText => Err(field_error(field, "must be a string")),
    };
    let cert_no = required("cert_no")?;
    job::validate_cert_no(&cert_no)?;
    job::validate_person_name("name", &required("name")?)?;
    let relation_phone = required("relation_phone")?;
    job::validate_mobile(&relation_phone)?;
    let relation_name = required("relation_name")?;
    job::validate_person_name("relation_name", &relation_name)?;
    let relation = optional("relation")?
        .map(job::validate_relation)
        .transpose()?
        .flatten();
    optional("linked_merchant_id")?
        .map(job::validate_linked_merchant_id)
        .transpose()?;
    Ok(ContactFields {
        cert_no,
        relation_phone,
        relation_name,
        has_relation: relation.is_some(),
    })
}

fn field_error(field: &'static str, rule: &str) -> job::FieldError {
    job::FieldError {
        field,
        rule: rule.to_owned(),
    }
}

enum Field<'a> {
    Absent,
    Text(&'a str),
    NotText,
}

fn text<'a>(biz: &'a Map<String, Value>, field: &str) -> Field<'a> {
    match biz.get(field) {
        None => Field::Absent,
        Some(Value::String(value)) => Field::Text(value),
        Some(_) => Field::NotText,
    }
}

/// null and "" mean "absent" for every field, so they neither count as a
/// value nor make two otherwise equal requests differ.
fn canonical(biz: &Map<String, Value>) -> Map<String, Value> {
    biz.iter()
        .filter(|(_, value)| !matches!(value, Value::Null) && value.as_str() != Some(""))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The transaction_id a signed call names, for per-id call counts: read
/// before the business checks so that failed calls are counted too, but only
/// from calls that passed the gateway's checks (signature included) and only
/// when it is a valid id, so that hostile requests cannot grow the counts.
pub(crate) fn peek_transaction_id(call: &Call) -> Option<String> {
    let id = call.biz.as_ref()?.get("transaction_id")?.as_str()?;
    id.parse::<TransactionId>().ok()?;
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::sandbox::SandboxConfig;

    #[test]
    fn timestamps_must_be_zero_padded_real_dates() {
        assert!(is_valid_timestamp("2024-02-29 23:59:59"));
        for bad in [
            "2023-02-29 10:00:00",
            "2024-1-05 10:00:00",
            "2024-01-05T10:00:00",
            "2024-01-05 24:00:00",
            "2024-01-05 10:00:60",
            "2024-01-05 10:00",
            "２０２４-01-05 10:00:00",
        ] {
            assert!(!is_valid_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn random_parameters_never_panic_the_checks() {
        let apps = SandboxConfig::with_test_keys().unwrap().apps;
        let mut rng = StdRng::seed_from_u64(11);
        let keys = [
            "method",
            "app_id",
            "charset",
            "sign_type",
            "sign",
            "timestamp",
            "version",
            "format",
            "biz_content",
        ];
        let values = [
            METHOD,
            "2014072300007148",
            "gbk",
            "RSA2",
            "YWJj",
            "2024-01-05 10:00:00",
            "1.0",
            "{}",
            "%FF",
            "",
        ];
        let json_values = [
            "{\"product_code\":\"w1010100001000001200\",\"transaction_id\":\"a\"}",
            "{\"cert_no\":1}",
            "null",
        ];
        for _ in 0..5_000 {
            let mut query = String::new();
            for key in keys {
                if rng.random_bool(0.8) {
                    let value = if key == "biz_content" && rng.random_bool(0.5) {
                        json_values[rng.random_range(0..json_values.len())]
                    } else {
                        values[rng.random_range(0..values.len())]
                    };
                    query.push_str(&format!("{key}={value}&"));
                }
            }
            let params = RequestParams::parse(query.as_bytes(), b"");
            if let Ok(call) = check_request(&params, &apps, &[]) {
                let _ = check_business(&call, "w1010100001000001200");
            }
        }
    }
}
