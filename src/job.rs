//! Job messages: decoding an AMQP body into a validated `Job`, the per-field
//! rules of `zhima.credit.relation.query` (shared with the sandbox gateway), and
//! the PII masks used in logs and stored rows.
//!
//! Everything here is pure: no I/O, no logging. The only ambient input is the
//! clock (today's date in UTC+8 bounds an ID card's birth date). An error built
//! here never carries a full personal value (ID number, name, phone), because
//! its text ends up in logs, AMQP headers and the database.

use std::fmt;
use std::str::FromStr;

use chrono::{NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Bodies above this size are rejected before any parsing, so a runaway
/// producer cannot make the worker allocate a huge JSON tree.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The seed allows 64 characters for `transaction_id`.
const TRANSACTION_ID_MAX: usize = 64;
/// Names are limited to 64 characters by the seed.
const NAME_MAX_CHARS: usize = 64;
/// `product_code` and `linked_merchant_id` are limited to 32 by the seed.
const CODE_MAX_CHARS: usize = 32;
/// `external_ref` is the producer's free text, bounded so rows stay small.
const EXTERNAL_REF_MAX_CHARS: usize = 256;
/// A batch id is at most 64 characters of `[A-Za-z0-9_-]`.
const BATCH_ID_MAX: usize = 64;
/// The rule a batch id breaks, as reported (never quoting the value).
pub(crate) const BATCH_ID_RULE: &str = "must be 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`";
/// Characters forbidden in names besides control characters: the seed's set
/// (`/u0001` in the seed means U+0001) is a floor; a quote is not part of a
/// real name either, and both `"` and `\` only invite escaping bugs downstream.
const FORBIDDEN_NAME_CHARS: [char; 7] = [',', '\u{1}', '|', '&', '^', '\\', '"'];
/// Why a control character is refused: PostgreSQL cannot store U+0000 at all,
/// and the others are invisible in every report that shows the value.
const NO_CONTROL_CHARS: &str = "must not contain control characters (U+0000 to U+001F, U+007F)";
/// First two digits of a mainland resident ID (province-level division).
const PROVINCE_PREFIXES: [u8; 36] = [
    11, 12, 13, 14, 15, // north
    21, 22, 23, // north-east
    31, 32, 33, 34, 35, 36, 37, // east
    41, 42, 43, 44, 45, 46, // south-central
    50, 51, 52, 53, 54, // south-west
    61, 62, 63, 64, 65, // north-west
    71, 81, 82, 83, 91, // Taiwan, Hong Kong, Macao and the other codes the gateway accepts
];
/// ISO 7064 MOD 11-2 weights for the first 17 digits of an 18-digit ID.
const CHECK_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check character indexed by the weighted sum modulo 11.
const CHECK_CHARS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// A field that breaks one of the seed's rules. `rule` describes the rule, never
/// the offending value, because values are personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {rule}")]
pub struct FieldError {
    pub(crate) field: &'static str,
    pub(crate) rule: String,
}

impl FieldError {
    fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

/// The job's idempotency key: the upstream answers the same id with its first
/// answer (unbilled) for about a day, so every retry reuses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TransactionId(String);

impl TransactionId {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TransactionId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl TryFrom<String> for TransactionId {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let field = "transaction_id";
        if value.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(FieldError::new(
                field,
                "may contain only letters, digits and underscores",
            ));
        }
        if value.len() > TRANSACTION_ID_MAX {
            return Err(FieldError::new(field, "must be at most 64 characters"));
        }
        Ok(Self(value))
    }
}

impl From<TransactionId> for String {
    fn from(id: TransactionId) -> Self {
        id.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The relation types the upstream supports; anything else is rejected rather
/// than sent, since the gateway would answer INVALID_PARAMETER anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    Family,
    Workmate,
    Schoolmate,
    Friend,
}

impl Relation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Family => "family",
            Self::Workmate => "workmate",
            Self::Schoolmate => "schoolmate",
            Self::Friend => "friend",
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The business parameters (`biz_content`) of `zhima.credit.relation.query`.
/// Field order matches the seed's example so a serialized request reads like
/// the documentation; absent optional fields are left out, not sent as null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelationQuery {
    pub product_code: String,
    pub transaction_id: TransactionId,
    pub cert_no: String,
    pub name: String,
    pub relation_phone: String,
    pub relation_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation: Option<Relation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_merchant_id: Option<String>,
}

impl RelationQuery {
    /// Checks every field against the seed's rules, so an invalid query is
    /// never sent upstream (it would be billed or rejected for nothing).
    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        validate_product_code(&self.product_code)?;
        validate_cert_no(&self.cert_no)?;
        validate_person_name("name", &self.name)?;
        validate_mobile(&self.relation_phone)?;
        validate_person_name("relation_name", &self.relation_name)?;
        if let Some(id) = &self.linked_merchant_id {
            validate_linked_merchant_id(id)?;
        }
        Ok(())
    }
}

impl RelationQuery {
    /// The fields that say what this transaction_id asks about, by name, in a
    /// fixed order, normalized so that spellings the upstream treats alike
    /// compare equal: surrounding whitespace trimmed, the ID number's check
    /// character upper-cased, absent optional fields as `""`. The input of the
    /// job's fingerprint ([`crate::pii::PiiKey::fingerprint`]); never stored
    /// or logged as such, since it is personal data.
    pub(crate) fn business_fields(&self) -> [(&'static str, String); 8] {
        let trimmed = |v: &str| v.trim().to_owned();
        [
            ("transaction_id", self.transaction_id.as_str().to_owned()),
            ("product_code", trimmed(&self.product_code)),
            ("cert_no", self.cert_no.trim().to_ascii_uppercase()),
            ("name", trimmed(&self.name)),
            ("relation_phone", trimmed(&self.relation_phone)),
            ("relation_name", trimmed(&self.relation_name)),
            (
                "relation",
                self.relation
                    .map(Relation::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (
                "linked_merchant_id",
                self.linked_merchant_id
                    .as_deref()
                    .map(trimmed)
                    .unwrap_or_default(),
            ),
        ]
    }
}

/// A decoded, validated job. The attempt counter is not here: it lives in the
/// AMQP headers, owned by the queue layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) query: RelationQuery,
    pub(crate) external_ref: Option<String>,
    /// The producer's batch (`[A-Za-z0-9_-]{1,64}`), if any.
    pub(crate) batch_id: Option<String>,
    /// `"fresh": true`: never answer this job from a stored answer (answer
    /// reuse, `reuse.max_age_days`); it is always sent upstream.
    pub(crate) fresh: bool,
}

impl Job {
    /// The JSON body to publish for this job; [`decode_job`] reads it back to an
    /// equal job. Optional fields that are absent are left out.
    pub(crate) fn to_message_body(&self) -> Vec<u8> {
        let q = &self.query;
        let mut map = Map::new();
        let mut put = |key: &str, value: &str| {
            map.insert(key.to_owned(), Value::String(value.to_owned()));
        };
        put("transaction_id", q.transaction_id.as_str());
        put("cert_no", &q.cert_no);
        put("name", &q.name);
        put("relation_phone", &q.relation_phone);
        put("relation_name", &q.relation_name);
        if let Some(relation) = q.relation {
            put("relation", relation.as_str());
        }
        if let Some(id) = &q.linked_merchant_id {
            put("linked_merchant_id", id);
        }
        put("product_code", &q.product_code);
        if let Some(external_ref) = &self.external_ref {
            put("external_ref", external_ref);
        }
        if let Some(batch_id) = &self.batch_id {
            put("batch_id", batch_id);
        }
        if self.fresh {
            map.insert("fresh".to_owned(), Value::Bool(true));
        }
        Value::Object(map).to_string().into_bytes()
    }
}

/// Why a message body was not accepted as a job. The `Display` text is the
/// reason put in the `x-zhima-error` header, so it never quotes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JobError {
    #[error("body is {bytes} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { bytes: usize },
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error(transparent)]
    Field(FieldError),
}

impl JobError {
    /// The normalized `error_code` stored on the job's `failed` row.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "BODY_TOO_LARGE",
            Self::NotJson(_) | Self::NotObject => "INVALID_JSON",
            Self::Field(e) if e.field == "transaction_id" => "INVALID_TRANSACTION_ID",
            Self::Field(_) => "INVALID_PARAMETER",
        }
    }
}

/// A message that cannot become a job. What could be salvaged from it is kept
/// so the worker can still write a `failed` row for the producer to find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub(crate) struct RejectedJob {
    pub(crate) error: JobError,
    /// Present only when the body carried a valid transaction_id.
    pub(crate) transaction_id: Option<TransactionId>,
    /// Present only when the body carried a valid external_ref.
    pub(crate) external_ref: Option<String>,
    /// Present only when the body carried a valid batch_id.
    pub(crate) batch_id: Option<String>,
}

/// Decodes and validates an AMQP message body.
///
/// Oversized bodies are refused before parsing. Every field must be a JSON
/// string; `relation` may also be null or `""` (absent), and an empty
/// `linked_merchant_id` or `external_ref` counts as absent too. Unknown fields
/// are ignored so producers can add their own. A missing `product_code` takes
/// `default_product_code`.
pub(crate) fn decode_job(body: &[u8], default_product_code: &str) -> Result<Job, RejectedJob> {
    if body.len() > MAX_BODY_BYTES {
        return Err(rejected(JobError::TooLarge { bytes: body.len() }));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| rejected(JobError::NotJson(e.to_string())))?;
    let Value::Object(object) = value else {
        return Err(rejected(JobError::NotObject));
    };
    job_from_object(&object, default_product_code).map_err(|e| RejectedJob {
        error: JobError::Field(e),
        transaction_id: salvage_transaction_id(&object),
        external_ref: salvage_external_ref(&object),
        batch_id: salvage_batch_id(&object),
    })
}

fn rejected(error: JobError) -> RejectedJob {
    RejectedJob {
        error,
        transaction_id: None,
        external_ref: None,
        batch_id: None,
    }
}

fn job_from_object(
    object: &Map<String, Value>,
    default_product_code: &str,
) -> Result<Job, FieldError> {
    let transaction_id =
        TransactionId::try_from(required_string(object, "transaction_id")?.to_owned())?;
    let product_code = optional_string(object, "product_code")?.unwrap_or(default_product_code);
    let query = RelationQuery {
        product_code: product_code.to_owned(),
        transaction_id,
        cert_no: required_string(object, "cert_no")?.to_owned(),
        name: required_string(object, "name")?.to_owned(),
        relation_phone: required_string(object, "relation_phone")?.to_owned(),
        relation_name: required_string(object, "relation_name")?.to_owned(),
        relation: decode_relation(object)?,
        linked_merchant_id: non_empty(optional_string(object, "linked_merchant_id")?),
    };
    query.validate()?;
    let external_ref = non_empty(optional_string(object, "external_ref")?);
    if let Some(text) = &external_ref {
        validate_external_ref(text)?;
    }
    let batch_id = non_empty(optional_string(object, "batch_id")?);
    if let Some(text) = &batch_id {
        validate_batch_id(text)?;
    }
    Ok(Job {
        query,
        external_ref,
        batch_id,
        fresh: decode_fresh(object)?,
    })
}

/// `fresh` is a JSON boolean when present; anything else (a string such as
/// `"true"`, a number, null) is refused rather than guessed at, since a
/// producer that meant `true` would otherwise be answered from a stored
/// answer it asked not to get.
fn decode_fresh(object: &Map<String, Value>) -> Result<bool, FieldError> {
    match object.get("fresh") {
        None => Ok(false),
        Some(Value::Bool(fresh)) => Ok(*fresh),
        Some(other) => Err(FieldError::new(
            "fresh",
            format!(
                "must be a JSON boolean (true or false), not {}",
                json_kind(other)
            ),
        )),
    }
}

fn decode_relation(object: &Map<String, Value>) -> Result<Option<Relation>, FieldError> {
    match object.get("relation") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => validate_relation(s),
        Some(other) => Err(mistyped("relation", other)),
    }
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, FieldError> {
    optional_string(object, field)?.ok_or_else(|| FieldError::new(field, "is required"))
}

fn optional_string<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, FieldError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(mistyped(field, other)),
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn mistyped(field: &'static str, value: &Value) -> FieldError {
    FieldError::new(
        field,
        format!("must be a JSON string, not {}", json_kind(value)),
    )
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn salvage_transaction_id(object: &Map<String, Value>) -> Option<TransactionId> {
    let s = object.get("transaction_id")?.as_str()?;
    TransactionId::from_str(s).ok()
}

fn salvage_external_ref(object: &Map<String, Value>) -> Option<String> {
    let s = object.get("external_ref")?.as_str()?;
    validate_external_ref(s).ok()?;
    non_empty(Some(s))
}

fn salvage_batch_id(object: &Map<String, Value>) -> Option<String> {
    let s = object.get("batch_id")?.as_str()?;
    validate_batch_id(s).ok()?;
    Some(s.to_owned())
}

/// A batch id: 1 to 64 characters of `[A-Za-z0-9_-]` (it names a row, a
/// routing message_id and a CLI argument, so nothing else is let in).
pub(crate) fn validate_batch_id(v: &str) -> Result<(), FieldError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if v.is_empty() || v.len() > BATCH_ID_MAX || !v.chars().all(allowed) {
        return Err(FieldError::new("batch_id", BATCH_ID_RULE));
    }
    Ok(())
}

fn validate_external_ref(v: &str) -> Result<(), FieldError> {
    if v.chars().count() > EXTERNAL_REF_MAX_CHARS {
        return Err(FieldError::new(
            "external_ref",
            "must be at most 256 characters",
        ));
    }
    if has_control_char(v) {
        return Err(FieldError::new("external_ref", NO_CONTROL_CHARS));
    }
    Ok(())
}

/// U+0000 to U+001F and U+007F: exactly the ASCII control characters.
fn has_control_char(v: &str) -> bool {
    v.chars().any(|c| c.is_ascii_control())
}

/// Validates a mainland resident ID number against today's date in UTC+8
/// (the upstream's time zone), see [`validate_cert_no_on`].
pub(crate) fn validate_cert_no(v: &str) -> Result<(), FieldError> {
    validate_cert_no_on(v, today_utc8())
}

/// Today's date in UTC+8, the time zone the upstream's dates are in.
pub(crate) fn today_utc8() -> NaiveDate {
    (Utc::now() + TimeDelta::hours(8)).date_naive()
}

/// Validates an 18-digit ID (province prefix, real birth date between
/// 1900-01-01 and `today`, ISO 7064 MOD 11-2 check character, `x` or `X`) or a
/// 15-digit one (region, YYMMDD in the 1900s, sequence).
pub(crate) fn validate_cert_no_on(v: &str, today: NaiveDate) -> Result<(), FieldError> {
    let field = "cert_no";
    let bytes = v.as_bytes();
    match bytes.len() {
        18 => {
            let (body, check) = bytes.split_at(17);
            if !body.iter().all(u8::is_ascii_digit) {
                return Err(FieldError::new(
                    field,
                    "the first 17 characters must be digits",
                ));
            }
            check_province(body)?;
            let year = digits_value(&body[6..10]);
            check_birth_date(year, &body[10..14], today)?;
            check_check_char(body, check[0])
        }
        15 => {
            if !bytes.iter().all(u8::is_ascii_digit) {
                return Err(FieldError::new(
                    field,
                    "a 15-character ID must be all digits",
                ));
            }
            check_province(bytes)?;
            let year = 1900 + digits_value(&bytes[6..8]);
            check_birth_date(year, &bytes[8..12], today)
        }
        _ => Err(FieldError::new(
            field,
            "must be an 18- or 15-character ID number",
        )),
    }
}

fn digits_value(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
}

fn check_province(digits: &[u8]) -> Result<(), FieldError> {
    let prefix = u8::try_from(digits_value(&digits[..2])).unwrap_or(0);
    if PROVINCE_PREFIXES.contains(&prefix) {
        Ok(())
    } else {
        Err(FieldError::new(
            "cert_no",
            "does not start with a known province code",
        ))
    }
}

fn check_birth_date(year: u32, month_day: &[u8], today: NaiveDate) -> Result<(), FieldError> {
    let month = digits_value(&month_day[..2]);
    let day = digits_value(&month_day[2..]);
    let date = i32::try_from(year)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, month, day))
        .ok_or_else(|| FieldError::new("cert_no", "birth date is not a real date"))?;
    let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN);
    if date < earliest || date > today {
        return Err(FieldError::new(
            "cert_no",
            "birth date must be between 1900-01-01 and today",
        ));
    }
    Ok(())
}

fn check_check_char(body: &[u8], check: u8) -> Result<(), FieldError> {
    let sum: u32 = body
        .iter()
        .zip(CHECK_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let expected = CHECK_CHARS[(sum % 11) as usize];
    if char::from(check).to_ascii_uppercase() == expected {
        Ok(())
    } else {
        Err(FieldError::new("cert_no", "check character does not match"))
    }
}

/// Validates `name` or `relation_name` (pass the field name for the error):
/// 1–64 characters counted as code points, not blank, no control character,
/// none of the characters the seed forbids (they are separators in the
/// upstream's own records) and no `"` or `\`.
pub(crate) fn validate_person_name(field: &'static str, v: &str) -> Result<(), FieldError> {
    if v.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty or blank"));
    }
    if v.chars().count() > NAME_MAX_CHARS {
        return Err(FieldError::new(field, "must be at most 64 characters"));
    }
    if has_control_char(v) {
        return Err(FieldError::new(field, NO_CONTROL_CHARS));
    }
    if let Some(c) = v.chars().find(|c| FORBIDDEN_NAME_CHARS.contains(c)) {
        return Err(FieldError::new(
            field,
            format!("must not contain {}", c.escape_default()),
        ));
    }
    Ok(())
}

/// Validates a mainland mobile number: 11 digits, `1[3-9]` then nine digits.
pub(crate) fn validate_mobile(v: &str) -> Result<(), FieldError> {
    let field = "relation_phone";
    let bytes = v.as_bytes();
    if bytes.len() != 11 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(FieldError::new(field, "must be 11 digits"));
    }
    if bytes[0] != b'1' || !(b'3'..=b'9').contains(&bytes[1]) {
        return Err(FieldError::new(
            field,
            "must be a mainland mobile number (1[3-9]…)",
        ));
    }
    Ok(())
}

/// Parses `relation`: `""` means absent; otherwise exactly one of the four
/// lowercase names (the gateway is case-sensitive, so `Family` is refused).
pub(crate) fn validate_relation(v: &str) -> Result<Option<Relation>, FieldError> {
    match v {
        "" => Ok(None),
        "family" => Ok(Some(Relation::Family)),
        "workmate" => Ok(Some(Relation::Workmate)),
        "schoolmate" => Ok(Some(Relation::Schoolmate)),
        "friend" => Ok(Some(Relation::Friend)),
        _ => Err(FieldError::new(
            "relation",
            "must be one of family, workmate, schoolmate, friend",
        )),
    }
}

/// Validates a present `linked_merchant_id`: non-blank, at most 32 characters.
pub(crate) fn validate_linked_merchant_id(v: &str) -> Result<(), FieldError> {
    validate_code("linked_merchant_id", v)
}

/// Validates `product_code`: non-blank, at most 32 characters.
pub(crate) fn validate_product_code(v: &str) -> Result<(), FieldError> {
    validate_code("product_code", v)
}

fn validate_code(field: &'static str, v: &str) -> Result<(), FieldError> {
    if v.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty or blank"));
    }
    if v.chars().count() > CODE_MAX_CHARS {
        return Err(FieldError::new(field, "must be at most 32 characters"));
    }
    Ok(())
}

/// Masks an ID number for logs and rows: the first 6 (region) and last 4
/// characters stay, the rest become `*`, e.g. `640202********4686`. Shorter
/// values are masked entirely so nothing useful leaks from malformed input.
pub fn mask_cert_no(v: &str) -> String {
    mask_middle(v, 6, 4)
}

/// Masks a name: first character kept, the rest `*` (`张*`, `欧阳**`); a
/// one-character name becomes `*`.
pub fn mask_name(v: &str) -> String {
    let count = v.chars().count();
    if count <= 1 {
        return "*".repeat(count);
    }
    mask_middle(v, 1, 0)
}

/// Masks a phone number: first 3 and last 4 kept, e.g. `158****1158`.
pub fn mask_phone(v: &str) -> String {
    mask_middle(v, 3, 4)
}

fn mask_middle(v: &str, head: usize, tail: usize) -> String {
    let count = v.chars().count();
    if count <= head + tail {
        return "*".repeat(count);
    }
    v.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < head || i >= count - tail {
                c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const VALID_CERT: &str = "640202199007164686";

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn cert_ok(v: &str) -> bool {
        validate_cert_no_on(v, day(2025, 6, 1)).is_ok()
    }

    fn sample_object() -> Map<String, Value> {
        let body = r#"{"transaction_id": "loan8812_c1", "cert_no": "640202199007164686",
            "name": "张三", "relation_phone": "15843991158", "relation_name": "李四",
            "relation": "family", "linked_merchant_id": "2088721630869411",
            "product_code": "w1010100001000001200", "external_ref": "loan-8812/contact-1"}"#;
        serde_json::from_str(body).unwrap()
    }

    fn body_with(change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut object = sample_object();
        change(&mut object);
        Value::Object(object).to_string().into_bytes()
    }

    fn decode(body: &[u8]) -> Result<Job, RejectedJob> {
        decode_job(body, "default_product")
    }

    fn field_error(body: &[u8]) -> FieldError {
        match decode(body).unwrap_err().error {
            JobError::Field(e) => e,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn the_seed_example_id_is_valid() {
        assert!(cert_ok(VALID_CERT));
        assert!(validate_cert_no(VALID_CERT).is_ok());
    }

    #[test]
    fn a_wrong_check_digit_is_rejected() {
        let err = validate_cert_no_on("640202199007164685", day(2025, 6, 1)).unwrap_err();
        assert_eq!(err.field, "cert_no");
        assert!(err.rule.contains("check character"), "{err}");
        assert!(!cert_ok("110105198001010015"));
        assert!(cert_ok("110105198001010016"));
        assert!(cert_ok("110105198001010024"));
    }

    #[test]
    fn check_character_x_is_accepted_in_either_case() {
        assert!(cert_ok("11010519800101018X"));
        assert!(cert_ok("11010519800101018x"));
        assert!(!cert_ok("110105198001010180"));
        assert!(!cert_ok("11010519800101001X"));
    }

    #[test]
    fn x_is_accepted_only_in_the_last_position() {
        assert!(!cert_ok("1101051980010101X8"));
    }

    #[test]
    fn february_29_is_valid_only_in_leap_years() {
        assert!(cert_ok("110105200002291235"));
        assert!(!cert_ok("110105190002291239"));
        assert!(!cert_ok("110105202302291236"));
    }

    #[test]
    fn birth_dates_from_1900_to_today_are_accepted() {
        assert!(cert_ok("110105190001011231"));
        assert!(!cert_ok("110105189912311237"));
        assert!(validate_cert_no_on("110105202402291233", day(2024, 2, 29)).is_ok());
        assert!(validate_cert_no_on("110105202402291233", day(2024, 2, 28)).is_err());
    }

    #[test]
    fn a_future_birth_date_is_rejected() {
        let err = validate_cert_no("110105209901011234").unwrap_err();
        assert!(err.rule.contains("birth date"), "{err}");
    }

    #[test]
    fn fifteen_digit_ids_are_checked_for_region_and_date() {
        assert!(cert_ok("110105800101123"));
        assert!(cert_ok("640202900716468"));
        assert!(!cert_ok("110105800230123"));
        assert!(!cert_ok("100105800101123"));
        assert!(!cert_ok("11010580010112X"));
    }

    #[test]
    fn ids_of_other_lengths_or_with_letters_are_rejected() {
        assert!(!cert_ok(""));
        assert!(!cert_ok("64020219900716468"));
        assert!(!cert_ok("6402021990071646860"));
        assert!(!cert_ok("64020219900716A686"));
        assert!(!cert_ok("６40202199007164686"));
    }

    #[test]
    fn unknown_province_prefixes_are_rejected() {
        assert!(!cert_ok("100105198001011236"));
        assert!(!cert_ok("160105198001011237"));
        assert!(cert_ok("910105198001011237"));
        assert!(cert_ok("830105198001011237"));
        let err = validate_cert_no_on("100105198001011236", day(2025, 6, 1)).unwrap_err();
        assert!(err.rule.contains("province"), "{err}");
    }

    #[test]
    fn names_of_64_characters_pass_and_65_fail_counting_characters_not_bytes() {
        let sixty_four = "张".repeat(64);
        assert_eq!(sixty_four.len(), 192);
        assert!(validate_person_name("name", &sixty_four).is_ok());
        let sixty_five = "张".repeat(65);
        let err = validate_person_name("name", &sixty_five).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(validate_person_name("name", "张").is_ok());
    }

    #[test]
    fn empty_and_whitespace_only_names_are_rejected() {
        for name in ["", " ", "\t\n", "\u{3000}"] {
            assert!(
                validate_person_name("relation_name", name).is_err(),
                "{name:?}"
            );
        }
        assert!(validate_person_name("relation_name", "欧阳 娜娜").is_ok());
    }

    #[test]
    fn every_forbidden_name_character_is_rejected() {
        for c in [',', '\u{1}', '|', '&', '^', '\\'] {
            let name = format!("张{c}三");
            let err = validate_person_name("name", &name).unwrap_err();
            assert!(err.rule.contains("must not contain"), "{err}");
        }
        assert!(validate_person_name("name", "张，三").is_ok());
    }

    #[test]
    fn nul_and_control_characters_are_rejected_in_names_and_external_ref() {
        let controls = ('\u{0}'..='\u{1f}').chain(['\u{7f}']);
        for c in controls {
            for field in ["name", "relation_name"] {
                let err = validate_person_name(field, &format!("{c}张三")).unwrap_err();
                assert_eq!(err.field, field, "{c:?}");
                assert!(err.rule.contains("control characters"), "{c:?}: {err}");
            }
            let err = validate_external_ref(&format!("loan-1{c}")).unwrap_err();
            assert_eq!(err.field, "external_ref", "{c:?}");
        }
        assert!(validate_external_ref("loan-8812/contact-1 第一").is_ok());
    }

    #[test]
    fn quotes_and_backslashes_are_rejected_in_names() {
        for c in ['"', '\\'] {
            let err = validate_person_name("relation_name", &format!("李{c}四")).unwrap_err();
            assert_eq!(err.field, "relation_name");
            assert!(err.rule.contains("must not contain"), "{err}");
        }
        assert!(validate_person_name("name", "欧阳·娜娜").is_ok());
    }

    #[test]
    fn a_message_with_a_nul_in_a_name_is_rejected_naming_the_field() {
        let body = r#"{"transaction_id":"nul_1","cert_no":"640202199007164686",
            "name":"\u0000张三","relation_phone":"15843991158","relation_name":"李四"}"#;
        let rejected = decode(body.as_bytes()).unwrap_err();
        assert_eq!(rejected.error.code(), "INVALID_PARAMETER");
        assert!(
            rejected.to_string().starts_with("field `name`"),
            "{rejected}"
        );
        assert_eq!(
            rejected.transaction_id.as_ref().map(TransactionId::as_str),
            Some("nul_1")
        );
        let err = field_error(&body_with(|o| {
            o.insert("external_ref".into(), Value::from("ref\u{0}"));
        }));
        assert_eq!(err.field, "external_ref");
    }

    #[test]
    fn mobile_numbers_must_be_eleven_digits_starting_13_to_19() {
        assert!(validate_mobile("15843991158").is_ok());
        assert!(validate_mobile("13000000000").is_ok());
        assert!(validate_mobile("19999999999").is_ok());
        for bad in [
            "12843991158",
            "10843991158",
            "25843991158",
            "1584399115",
            "158439911580",
            "1584399115a",
            "+8615843991158",
            "",
        ] {
            assert!(validate_mobile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transaction_ids_allow_64_word_characters_and_nothing_else() {
        assert!(TransactionId::from_str(&"a".repeat(64)).is_ok());
        assert!(TransactionId::from_str(&"a".repeat(65)).is_err());
        assert!(TransactionId::from_str("loan_8812_C1").is_ok());
        for bad in ["", "loan-8812", "loan 8812", "贷款", "a.b"] {
            let err = TransactionId::from_str(bad).unwrap_err();
            assert_eq!(err.field, "transaction_id");
        }
        let id = TransactionId::try_from("abc".to_owned()).unwrap();
        assert_eq!(id.to_string(), "abc");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"abc\"");
    }

    #[test]
    fn relation_accepts_only_the_four_lowercase_names() {
        assert_eq!(validate_relation("").unwrap(), None);
        assert_eq!(validate_relation("family").unwrap(), Some(Relation::Family));
        assert_eq!(
            validate_relation("workmate").unwrap(),
            Some(Relation::Workmate)
        );
        assert_eq!(
            validate_relation("schoolmate").unwrap(),
            Some(Relation::Schoolmate)
        );
        assert_eq!(validate_relation("friend").unwrap(), Some(Relation::Friend));
        for bad in ["Family", "FAMILY", " family", "spouse"] {
            assert!(validate_relation(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn product_code_and_linked_merchant_id_are_limited_to_32_characters() {
        assert!(validate_product_code(&"w".repeat(32)).is_ok());
        assert!(validate_product_code(&"w".repeat(33)).is_err());
        assert!(validate_product_code("  ").is_err());
        assert!(validate_linked_merchant_id(&"2".repeat(32)).is_ok());
        assert!(validate_linked_merchant_id(&"2".repeat(33)).is_err());
        assert!(validate_linked_merchant_id("").is_err());
    }

    #[test]
    fn the_seed_example_decodes_into_a_job() {
        let job = decode(&body_with(|_| {})).unwrap();
        assert_eq!(job.query.transaction_id.as_str(), "loan8812_c1");
        assert_eq!(job.query.relation, Some(Relation::Family));
        assert_eq!(job.query.product_code, "w1010100001000001200");
        assert_eq!(
            job.query.linked_merchant_id.as_deref(),
            Some("2088721630869411")
        );
        assert_eq!(job.external_ref.as_deref(), Some("loan-8812/contact-1"));
    }

    #[test]
    fn biz_content_lists_fields_in_the_seeds_order() {
        let job = decode(&body_with(|_| {})).unwrap();
        let json = serde_json::to_string(&job.query).unwrap();
        assert_eq!(
            json,
            r#"{"product_code":"w1010100001000001200","transaction_id":"loan8812_c1","cert_no":"640202199007164686","name":"张三","relation_phone":"15843991158","relation_name":"李四","relation":"family","linked_merchant_id":"2088721630869411"}"#
        );
    }

    #[test]
    fn absent_optional_fields_are_left_out_of_biz_content() {
        let job = decode(&body_with(|o| {
            o.remove("relation");
            o.remove("linked_merchant_id");
        }))
        .unwrap();
        let json = serde_json::to_string(&job.query).unwrap();
        assert!(!json.contains("relation\""), "{json}");
        assert!(!json.contains("linked_merchant_id"), "{json}");
    }

    #[test]
    fn a_missing_product_code_takes_the_configured_default() {
        let job = decode(&body_with(|o| {
            o.remove("product_code");
        }))
        .unwrap();
        assert_eq!(job.query.product_code, "default_product");
    }

    #[test]
    fn a_body_over_64_kib_is_rejected_without_parsing() {
        let mut body = vec![b'{'; 65 * 1024];
        body[0] = b'x';
        let rejected = decode(&body).unwrap_err();
        assert_eq!(rejected.error, JobError::TooLarge { bytes: 65 * 1024 });
        assert_eq!(rejected.error.code(), "BODY_TOO_LARGE");
        assert!(rejected.transaction_id.is_none());
    }

    #[test]
    fn a_body_of_exactly_64_kib_is_parsed() {
        let mut object = sample_object();
        let filler = " ".repeat(MAX_BODY_BYTES);
        object.insert("padding".into(), Value::String(String::new()));
        let mut body = Value::Object(object).to_string().into_bytes();
        body.extend_from_slice(&filler.as_bytes()[..MAX_BODY_BYTES - body.len()]);
        assert_eq!(body.len(), MAX_BODY_BYTES);
        assert!(decode(&body).is_ok());
    }

    #[test]
    fn a_body_that_is_not_json_is_rejected_without_echoing_it() {
        let rejected = decode(b"640202199007164686 not json").unwrap_err();
        assert!(matches!(rejected.error, JobError::NotJson(_)));
        assert_eq!(rejected.error.code(), "INVALID_JSON");
        assert!(!rejected.to_string().contains("640202199007164686"));
    }

    #[test]
    fn a_json_array_or_string_is_not_a_job() {
        for body in [&b"[1, 2]"[..], b"\"640202199007164686\"", b"null"] {
            let rejected = decode(body).unwrap_err();
            assert_eq!(rejected.error, JobError::NotObject);
            assert_eq!(rejected.error.code(), "INVALID_JSON");
        }
    }

    #[test]
    fn a_number_where_a_string_is_expected_is_rejected() {
        let err = field_error(&body_with(|o| {
            o.insert("relation_phone".into(), Value::from(15843991158_u64));
        }));
        assert_eq!(err.field, "relation_phone");
        assert!(err.rule.contains("JSON string"), "{err}");
        assert!(!err.to_string().contains("15843991158"));
    }

    #[test]
    fn a_missing_required_field_is_invalid_parameter() {
        let rejected = decode(&body_with(|o| {
            o.remove("relation_name");
        }))
        .unwrap_err();
        assert_eq!(rejected.error.code(), "INVALID_PARAMETER");
        assert_eq!(rejected.to_string(), "field `relation_name`: is required");
    }

    #[test]
    fn relation_may_be_null_or_empty_but_not_capitalized() {
        for value in [Value::Null, Value::from("")] {
            let job = decode(&body_with(|o| {
                o.insert("relation".into(), value);
            }))
            .unwrap();
            assert_eq!(job.query.relation, None);
        }
        let err = field_error(&body_with(|o| {
            o.insert("relation".into(), Value::from("Family"));
        }));
        assert_eq!(err.field, "relation");
        let err = field_error(&body_with(|o| {
            o.insert("relation".into(), Value::from(1));
        }));
        assert_eq!(err.field, "relation");
    }

    #[test]
    fn null_is_not_accepted_for_other_optional_fields() {
        let err = field_error(&body_with(|o| {
            o.insert("linked_merchant_id".into(), Value::Null);
        }));
        assert_eq!(err.field, "linked_merchant_id");
    }

    #[test]
    fn empty_linked_merchant_id_and_external_ref_mean_absent() {
        let job = decode(&body_with(|o| {
            o.insert("linked_merchant_id".into(), Value::from(""));
            o.insert("external_ref".into(), Value::from(""));
        }))
        .unwrap();
        assert_eq!(job.query.linked_merchant_id, None);
        assert_eq!(job.external_ref, None);
    }

    #[test]
    fn external_ref_is_limited_to_256_characters() {
        let ok = decode(&body_with(|o| {
            o.insert("external_ref".into(), Value::from("参".repeat(256)));
        }));
        assert!(ok.is_ok());
        let err = field_error(&body_with(|o| {
            o.insert("external_ref".into(), Value::from("参".repeat(257)));
        }));
        assert_eq!(err.field, "external_ref");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let job = decode(&body_with(|o| {
            o.insert("priority".into(), Value::from(7));
            o.insert("meta".into(), serde_json::json!({"a": [1]}));
        }));
        assert!(job.is_ok());
    }

    #[test]
    fn a_valid_transaction_id_is_salvaged_from_an_invalid_job() {
        let rejected = decode(&body_with(|o| {
            o.insert("cert_no".into(), Value::from("640202199007164685"));
        }))
        .unwrap_err();
        assert_eq!(rejected.error.code(), "INVALID_PARAMETER");
        assert_eq!(
            rejected.transaction_id.as_ref().map(TransactionId::as_str),
            Some("loan8812_c1")
        );
        assert_eq!(
            rejected.external_ref.as_deref(),
            Some("loan-8812/contact-1")
        );
    }

    #[test]
    fn an_invalid_transaction_id_is_not_salvaged() {
        let rejected = decode(&body_with(|o| {
            o.insert("transaction_id".into(), Value::from("loan-8812"));
        }))
        .unwrap_err();
        assert_eq!(rejected.error.code(), "INVALID_TRANSACTION_ID");
        assert!(rejected.transaction_id.is_none());
    }

    #[test]
    fn rejection_messages_never_contain_the_full_id_number_name_or_phone() {
        let bodies = [
            body_with(|o| {
                o.insert("cert_no".into(), Value::from("640202199007164685"));
            }),
            body_with(|o| {
                o.insert("name".into(), Value::from("张,三"));
            }),
            body_with(|o| {
                o.insert("relation_phone".into(), Value::from("12843991158"));
            }),
            body_with(|o| {
                o.insert("cert_no".into(), Value::from(640202199007164685_u64));
            }),
        ];
        for body in bodies {
            let rejected = decode(&body).unwrap_err();
            let text = format!("{rejected} {rejected:?}");
            for secret in ["640202199007164685", "张,三", "12843991158"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }

    #[test]
    fn batch_id_is_optional_and_echoed_in_the_published_body() {
        let job = decode(&body_with(|o| {
            o.insert("batch_id".into(), Value::from("run-2026_12_01-A"));
        }))
        .unwrap();
        assert_eq!(job.batch_id.as_deref(), Some("run-2026_12_01-A"));
        assert_eq!(decode(&job.to_message_body()).unwrap(), job);
        let without = decode(&body_with(|o| {
            o.insert("batch_id".into(), Value::from(""));
        }))
        .unwrap();
        assert_eq!(without.batch_id, None);
        assert!(validate_batch_id(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn hostile_batch_ids_are_refused_with_the_field_and_the_rule() {
        let hostile = [
            Value::from("a".repeat(65)),
            Value::from("run 1"),
            Value::from("run/1"),
            Value::from("run.1"),
            Value::from("run\u{0}1"),
            Value::from("run\n1"),
            Value::from("批次1"),
            Value::from("x'; DROP TABLE batches;--"),
            Value::from(42),
            Value::Bool(true),
            Value::Array(vec![]),
            Value::Null,
        ];
        for value in hostile {
            let rejected = decode(&body_with(|o| {
                o.insert("batch_id".into(), value.clone());
            }))
            .unwrap_err();
            let JobError::Field(field) = &rejected.error else {
                panic!("{value:?}: {rejected:?}");
            };
            assert_eq!(field.field, "batch_id", "{value:?}");
            assert!(rejected.batch_id.is_none(), "{value:?}");
            assert!(rejected.transaction_id.is_some(), "{value:?}");
        }
        let other_field_wrong = decode(&body_with(|o| {
            o.insert("batch_id".into(), Value::from("b-1"));
            o.insert("relation_phone".into(), Value::from("1"));
        }))
        .unwrap_err();
        assert_eq!(other_field_wrong.batch_id.as_deref(), Some("b-1"));
    }

    #[test]
    fn a_published_body_decodes_back_to_the_same_job() {
        let job = decode(&body_with(|_| {})).unwrap();
        assert_eq!(decode(&job.to_message_body()).unwrap(), job);
        let minimal = decode(&body_with(|o| {
            o.remove("relation");
            o.remove("linked_merchant_id");
            o.remove("external_ref");
        }))
        .unwrap();
        assert_eq!(decode(&minimal.to_message_body()).unwrap(), minimal);
    }

    #[test]
    fn masks_keep_only_the_documented_characters() {
        assert_eq!(mask_cert_no("640202199007164686"), "640202********4686");
        assert_eq!(mask_cert_no("640202900716468"), "640202*****6468");
        assert_eq!(mask_cert_no("1234"), "****");
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name("欧阳娜"), "欧**");
        assert_eq!(mask_name("张"), "*");
        assert_eq!(mask_name(""), "");
        assert_eq!(mask_phone("15843991158"), "158****1158");
        assert_eq!(mask_phone("1584"), "****");
    }

    #[test]
    fn fresh_is_an_optional_boolean_kept_through_the_message_body() {
        assert!(!decode(&body_with(|_| {})).unwrap().fresh);
        for (value, fresh) in [(true, true), (false, false)] {
            let job = decode(&body_with(|o| {
                o.insert("fresh".into(), Value::Bool(value));
            }))
            .unwrap();
            assert_eq!(job.fresh, fresh);
            let again = decode(&job.to_message_body()).unwrap();
            assert_eq!(again, job);
        }
    }

    #[test]
    fn a_fresh_that_is_not_a_boolean_is_refused_naming_the_field() {
        let hostile: [Value; 7] = [
            Value::String("true".into()),
            Value::String("".into()),
            Value::from(1),
            Value::from(0),
            Value::Null,
            serde_json::json!([true]),
            serde_json::json!({"fresh": true}),
        ];
        for value in hostile {
            let rejected = decode(&body_with(|o| {
                o.insert("fresh".into(), value.clone());
            }))
            .unwrap_err();
            let JobError::Field(error) = &rejected.error else {
                panic!("{value}: {rejected:?}");
            };
            assert_eq!(error.field, "fresh", "{value}");
            assert!(error.rule.contains("JSON boolean"), "{}", error.rule);
            assert_eq!(rejected.error.code(), "INVALID_PARAMETER");
            // The row of the refused job can still be written.
            assert_eq!(
                rejected.transaction_id.as_ref().map(TransactionId::as_str),
                Some("loan8812_c1")
            );
        }
    }
}

#[cfg(test)]
#[path = "job_properties.rs"]
mod properties;
