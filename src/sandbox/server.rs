//! The sandbox's HTTP surface: `/gateway.do` (GET and POST, origin- or
//! absolute-form targets), `/stats`, `/bill`, `/healthz` and `/admin/faults`.
//!
//! Thin: it extracts raw bytes and hands them to the engine. Parameters are
//! never read with axum's `Query`/`Form`, which assume UTF-8 (see `params`).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;
use serde::Deserialize;

use super::engine::{Engine, HttpAnswer};
use super::faults::Faults;
use super::ledger::bill_csv;

/// Larger bodies are refused before parsing: a real request is a few hundred
/// bytes, and reading without a limit would let one client exhaust memory.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

pub(crate) fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/gateway.do", get(gateway).post(gateway))
        .route("/stats", get(stats))
        .route("/bill", get(bill))
        .route("/healthz", get(healthz))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route(
            "/admin/rotate-alipay-cert",
            axum::routing::post(rotate_alipay_cert),
        )
        .with_state(engine)
}

async fn gateway(
    State(engine): State<Arc<Engine>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if declared_length(&headers).is_some_and(|length| length > MAX_BODY_BYTES) {
        return too_large();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return too_large();
    };
    let form: &[u8] = if method == Method::POST && is_form(&headers) {
        &body
    } else {
        b""
    };
    let query = uri.query().unwrap_or_default().as_bytes();
    into_response(engine.handle(query, form).await)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body without a content type is read as a form too, as servlets do for
/// a POST to the gateway.
fn is_form(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_none_or(|value| {
        value.to_str().is_ok_and(|text| {
            text.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    })
}

fn too_large() -> Response {
    let message = format!("request body unreadable or over {MAX_BODY_BYTES} bytes\n");
    (StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
}

fn into_response(answer: HttpAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

async fn stats(State(engine): State<Arc<Engine>>) -> Response {
    axum::Json(engine.stats()).into_response()
}

#[derive(Debug, Deserialize)]
struct BillQuery {
    date: Option<String>,
}

/// `date` is a UTC+8 day; without it, the whole statement.
async fn bill(State(engine): State<Arc<Engine>>, Query(query): Query<BillQuery>) -> Response {
    let date = match query
        .date
        .as_deref()
        .map(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d"))
    {
        None => None,
        Some(Ok(date)) => Some(date),
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "date must be YYYY-MM-DD\n").into_response();
        }
    };
    let csv = bill_csv(&engine.bill_rows(date));
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Debug, Deserialize)]
struct RotateQuery {
    /// Issue the new certificate from a root outside the bundle (a drill of
    /// a download that does not chain).
    #[serde(default)]
    untrusted: bool,
}

/// Certificate mode: answers are signed from now on under a freshly issued
/// Alipay certificate; answers `{"alipay_cert_sn": "<new SN>"}`. 409 when
/// the sandbox is not in certificate mode or has no root key (`--cert-dir`).
async fn rotate_alipay_cert(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<RotateQuery>,
) -> Response {
    let rotated = tokio::task::spawn_blocking(move || engine.rotate_alipay_cert(query.untrusted))
        .await
        .unwrap_or_else(|error| Err(error.to_string()));
    match rotated {
        Ok(sn) => axum::Json(serde_json::json!({ "alipay_cert_sn": sn })).into_response(),
        Err(reason) => (StatusCode::CONFLICT, format!("{reason}\n")).into_response(),
    }
}

async fn get_faults(State(engine): State<Arc<Engine>>) -> Response {
    axum::Json(engine.faults()).into_response()
}

/// Why a `PUT /admin/faults` body was refused.
#[derive(Debug, thiserror::Error)]
pub enum MergeFaultsError {
    #[error("invalid faults JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the faults must be a JSON object of fields to change")]
    NotAnObject,
    #[error(transparent)]
    Invalid(#[from] super::faults::FaultsError),
}

/// `current` with the fields of `changes` (a JSON object) replaced; unknown
/// fields and out-of-range rates are refused and change nothing.
pub(crate) fn merge_faults(current: &Faults, changes: &[u8]) -> Result<Faults, MergeFaultsError> {
    let serde_json::Value::Object(changes) = serde_json::from_slice(changes)? else {
        return Err(MergeFaultsError::NotAnObject);
    };
    let serde_json::Value::Object(mut merged) = serde_json::to_value(current)? else {
        return Err(MergeFaultsError::NotAnObject);
    };
    merged.extend(changes);
    let faults: Faults = serde_json::from_value(serde_json::Value::Object(merged))?;
    faults.validate()?;
    Ok(faults)
}

/// Merges the given fields into the current fault settings (the others keep
/// their values) and answers the result.
async fn put_faults(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    match engine.update_faults(|current| merge_faults(current, &body)) {
        Ok(faults) => axum::Json(faults).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}
