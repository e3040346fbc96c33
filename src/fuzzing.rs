//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each one
//! forwards to the real parser of outside data, so a target tests exactly what
//! production runs. Not part of the API: hidden from the docs, compiled only
//! with the feature, and it makes no internal type public; results come back
//! as plain values the targets can compare.
//!
//! Must not: hold logic of its own beyond converting results, or be used by
//! the worker.

use std::path::Path;

use chrono::FixedOffset;

use crate::job;
use crate::reconcile::ReconcileError;
use crate::reconcile::statement::{ColumnMap, EncodingChoice, Statement};
use crate::sandbox::params::RequestParams;
use crate::upstream::response::{self, NodeKind, Verification};
pub use crate::upstream::signing::{Charset, PrivateKey, PublicKey, SignType, string_to_sign};

/// The answer node of `zhima.credit.relation.query`.
pub const RESPONSE_NODE: &str = "zhima_credit_relation_query_response";

/// What the answer parser made of a body that it could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The method's own node (rather than `error_response`).
    pub method_node: bool,
    /// The node's value exactly as received, `{` to `}`: the signed bytes.
    pub content: &'a [u8],
    /// Whether `sign` verified over `content` with the key given.
    pub verified: bool,
}

/// The worker's answer check (`upstream::response::extract` then `verify`),
/// as `classify` runs it on every gateway answer.
pub fn check_answer<'a>(
    body: &'a [u8],
    charset: Charset,
    key: &PublicKey,
    sign_type: SignType,
) -> Result<Answer<'a>, String> {
    let extracted =
        response::extract(body, RESPONSE_NODE, charset).map_err(|error| error.to_string())?;
    let verified = response::verify(&extracted, key, sign_type) == Verification::Verified;
    Ok(Answer {
        method_node: extracted.node == NodeKind::Method,
        content: extracted.content,
        verified,
    })
}

/// A message body the job decoder accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedJob(job::Job);

impl DecodedJob {
    /// The body the worker publishes for this job (`enqueue`, retries).
    pub fn to_message_body(&self) -> Vec<u8> {
        self.0.to_message_body()
    }
}

/// Why the job decoder refused a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRejection {
    /// The `error_code` stored for it.
    pub code: &'static str,
    /// The field named, for a field error.
    pub field: Option<&'static str>,
    /// The reason as it goes into `x-zhima-error`.
    pub reason: String,
}

/// `job::decode_job`, the decoder every delivery goes through.
pub fn decode_job(body: &[u8], default_product_code: &str) -> Result<DecodedJob, JobRejection> {
    job::decode_job(body, default_product_code)
        .map(DecodedJob)
        .map_err(|rejected| JobRejection {
            code: rejected.error.code(),
            field: match &rejected.error {
                job::JobError::Field(error) => Some(error.field),
                _ => None,
            },
            reason: rejected.error.to_string(),
        })
}

/// The encoding `reconcile --encoding` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementEncoding {
    Auto,
    Utf8,
    Gbk,
}

/// One row read from a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    pub line: u64,
    pub biz_no: String,
    pub transaction_id: String,
}

/// Why a statement could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementError {
    /// The line the error names, when it names one.
    pub line: Option<u64>,
    /// The file has no header at all (empty, or comments only).
    pub no_header: bool,
    pub message: String,
}

/// Reads the statement at `path` to its end with `reconcile`'s reader, in UTC+8;
/// `columns` is a `--columns` value (`None`: the sandbox's layout).
pub fn read_statement(
    path: &Path,
    encoding: StatementEncoding,
    columns: Option<&str>,
) -> Result<Vec<StatementRow>, StatementError> {
    let columns: ColumnMap = match columns {
        Some(text) => text.parse().map_err(statement_error)?,
        None => ColumnMap::default(),
    };
    let choice = match encoding {
        StatementEncoding::Auto => EncodingChoice::Auto,
        StatementEncoding::Utf8 => EncodingChoice::Utf8,
        StatementEncoding::Gbk => EncodingChoice::Gbk,
    };
    let offset = FixedOffset::east_opt(8 * 3600).ok_or_else(|| StatementError {
        line: None,
        no_header: false,
        message: "UTC+8 is not an offset".to_owned(),
    })?;
    let mut statement = Statement::open(path, choice, &columns, offset).map_err(statement_error)?;
    let mut rows = Vec::new();
    while let Some(row) = statement.next_row().map_err(statement_error)? {
        rows.push(StatementRow {
            line: row.line,
            biz_no: row.biz_no.clone(),
            transaction_id: row.transaction_id.clone(),
        });
    }
    Ok(rows)
}

fn statement_error(error: ReconcileError) -> StatementError {
    let line = match &error {
        ReconcileError::MalformedLine { line, .. } | ReconcileError::MissingColumn { line, .. } => {
            Some(*line)
        }
        _ => None,
    };
    StatementError {
        line,
        no_header: matches!(error, ReconcileError::NoHeader { .. }),
        message: error.to_string(),
    }
}

/// `k=v&...` as the worker puts parameters on the wire (query string and
/// form body), percent-encoded in `charset`.
pub fn encode_pairs<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    charset: Charset,
) -> String {
    crate::upstream::encode_pairs(pairs, charset)
}

/// The parameters as the sandbox gateway reads them back from a query string
/// and a form body (first value of a repeated key, decoded in the `charset`
/// parameter's encoding), in arrival order.
pub fn decode_request(query: &[u8], body: &[u8]) -> Vec<(String, String)> {
    RequestParams::parse(query, body)
        .iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}
