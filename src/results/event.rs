//! The result events: what a job's final outcome (or a batch's completion)
//! looks like on the results exchange and in `zhima-worker results`. One type
//! per event, serialized with serde, so the outbox and the command cannot
//! drift apart. Pure: no I/O.
//!
//! No personal data: the event carries ids, the answer and the normalized
//! error, never the contact's ID number, names or phone.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

/// The `event` field of a job's result.
pub const RELATION_RESULT: &str = "relation.result";
/// The `event` field (and routing key) of a finished batch.
pub const BATCH_COMPLETED: &str = "batch.completed";
/// Routing key of a `succeeded` job's event.
pub const ROUTING_SUCCEEDED: &str = "relation.succeeded";
/// Routing key of a `failed` job's event.
pub const ROUTING_FAILED: &str = "relation.failed";

/// One job's final outcome: the body of a `relation.succeeded` or
/// `relation.failed` event, and one line of `zhima-worker results`. Absent
/// values are `null`; timestamps are UTC RFC 3339 with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEvent {
    /// Always [`RELATION_RESULT`].
    pub event: String,
    pub transaction_id: String,
    pub external_ref: Option<String>,
    pub batch_id: Option<String>,
    /// `succeeded` or `failed`.
    pub status: String,
    pub biz_no: Option<String>,
    pub relation_rank: Option<String>,
    pub recency: Option<String>,
    pub relation_score: Option<i64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempts: u32,
    #[serde(serialize_with = "millis_opt")]
    pub first_call_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "millis_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Answer reuse: the transaction_id whose paid answer this job was
    /// given (no upstream call, nothing billed; `biz_no` is null, the
    /// answer fields are the payer's). Null for a job answered by its own
    /// call. Added after the original fields; read as null when absent.
    #[serde(default)]
    pub reused_from: Option<String>,
}

impl ResultEvent {
    /// The routing key: by status.
    pub fn routing_key(&self) -> &'static str {
        match self.status.as_str() {
            "succeeded" => ROUTING_SUCCEEDED,
            _ => ROUTING_FAILED,
        }
    }

    /// The AMQP message_id: the transaction_id (consumers dedupe by it).
    pub fn message_id(&self) -> &str {
        &self.transaction_id
    }

    /// The CSV header of `zhima-worker results --format csv`, in body order.
    pub const CSV_HEADER: [&'static str; 14] = [
        "transaction_id",
        "external_ref",
        "batch_id",
        "status",
        "biz_no",
        "relation_rank",
        "recency",
        "relation_score",
        "error_code",
        "error_message",
        "attempts",
        "first_call_at",
        "completed_at",
        "reused_from",
    ];

    /// The CSV cells, in [`ResultEvent::CSV_HEADER`] order (absent = empty).
    pub fn csv_record(&self) -> [String; 14] {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let at = |value: &Option<DateTime<Utc>>| value.map(to_millis).unwrap_or_default();
        [
            self.transaction_id.clone(),
            text(&self.external_ref),
            text(&self.batch_id),
            self.status.clone(),
            text(&self.biz_no),
            text(&self.relation_rank),
            text(&self.recency),
            self.relation_score
                .map(|s| s.to_string())
                .unwrap_or_default(),
            text(&self.error_code),
            text(&self.error_message),
            self.attempts.to_string(),
            at(&self.first_call_at),
            at(&self.completed_at),
            text(&self.reused_from),
        ]
    }
}

/// The body of a `batch.completed` event: the counts when the last job of
/// the batch became final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCompleted {
    /// Always [`BATCH_COMPLETED`].
    pub event: String,
    pub batch_id: String,
    /// Jobs published by `enqueue` for the batch.
    pub size: u64,
    pub succeeded: u64,
    pub failed: u64,
    #[serde(serialize_with = "millis_opt")]
    pub enqueued_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "millis")]
    pub completed_at: DateTime<Utc>,
}

/// The fixed timestamp form of every event: `2026-12-01T14:07:11.123Z`.
pub(crate) fn to_millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&to_millis(*at))
}

fn millis_opt<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => millis(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn failed_event() -> ResultEvent {
        ResultEvent {
            event: RELATION_RESULT.into(),
            transaction_id: "t_1".into(),
            external_ref: None,
            batch_id: Some("b-1".into()),
            status: "failed".into(),
            biz_no: None,
            relation_rank: None,
            recency: None,
            relation_score: None,
            error_code: Some("INVALID_PARAMETER".into()),
            error_message: Some("field `cert_no`: bad check digit".into()),
            attempts: 0,
            first_call_at: None,
            completed_at: Some("2026-12-01T06:00:00.5Z".parse().unwrap()),
            reused_from: None,
        }
    }

    #[test]
    fn the_body_has_every_documented_field_with_nulls_for_absent_values() {
        let body: serde_json::Value = serde_json::to_value(failed_event()).unwrap();
        let object = body.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = ResultEvent::CSV_HEADER.to_vec();
        expected.push("event");
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(body["event"], "relation.result");
        assert_eq!(body["external_ref"], serde_json::Value::Null);
        assert_eq!(body["first_call_at"], serde_json::Value::Null);
        assert_eq!(body["completed_at"], "2026-12-01T06:00:00.500Z");
        assert_eq!(body["attempts"], 0);
        assert_eq!(body["reused_from"], serde_json::Value::Null);
    }

    #[test]
    fn a_reused_answer_names_its_payer_in_the_body_and_the_last_csv_cell() {
        let mut event = failed_event();
        event.status = "succeeded".into();
        event.reused_from = Some("paid_1".into());
        let body = serde_json::to_value(&event).unwrap();
        assert_eq!(body["reused_from"], "paid_1");
        assert_eq!(event.csv_record()[13], "paid_1");
        assert_eq!(ResultEvent::CSV_HEADER[13], "reused_from");
        // An event written before the field existed still reads.
        let mut old = body.as_object().unwrap().clone();
        old.remove("reused_from");
        let read: ResultEvent = serde_json::from_value(old.into()).unwrap();
        assert_eq!(read.reused_from, None);
    }

    #[test]
    fn routing_key_follows_the_status_and_message_id_is_the_transaction_id() {
        let mut event = failed_event();
        assert_eq!(event.routing_key(), "relation.failed");
        event.status = "succeeded".into();
        assert_eq!(event.routing_key(), "relation.succeeded");
        assert_eq!(event.message_id(), "t_1");
    }

    #[test]
    fn an_event_reads_back_equal() {
        let event = failed_event();
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<ResultEvent>(&text).unwrap(), event);
    }
}
