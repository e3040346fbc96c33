//! Handler of `show`: one job by transaction_id, or every job of one
//! `external_ref`: its row (masked personal data only), each upstream call
//! from the ledger, and, when it is not final, the queue its message is in.
//! The rows come from `crate::store`, the queues from `crate::queue::dead`;
//! this file checks the arguments, prints and chooses the exit code.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::EXIT_USAGE;
use crate::config::Settings;
use crate::job::TransactionId;
use crate::queue::dead::{self, Whereabouts};
use crate::store::{CallRecord, JobRecord, JobStatus, JobStore, MAX_ROWS_PER_REFERENCE};

pub(super) const SHOW: &str = "\
Exit codes:
  0   found: the row (and its calls), or a message in a queue when no row exists yet
  1   no such job (no row and no queued message), or an error: configuration,
      database or broker unreachable
  64  usage error, or an ID or REF that breaks its rule (the message names it)

Where the message is: every delay queue and the dead queue are read and left
exactly as they were; the main queue is read only when it is a classic queue
(each look would count against a quorum queue's x-delivery-limit). A job being
processed is held by a worker and shows in no queue.

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  zhima-worker show loan8812_c1
  zhima-worker show --external-ref loan-8812/contact-1 --json | jq '.[].status'";

/// The longest `external_ref` a job may carry (the job message's rule).
const EXTERNAL_REF_MAX_CHARS: usize = 256;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The job's transaction_id ([A-Za-z0-9_]{1,64}).
    #[arg(
        value_name = "TRANSACTION_ID",
        required_unless_present = "external_ref",
        conflicts_with = "external_ref"
    )]
    transaction_id: Option<String>,
    /// Every job carrying this producer reference instead (at most 100 shown).
    #[arg(long, value_name = "REF")]
    external_ref: Option<String>,
    /// One JSON object (an array of them with --external-ref) instead of text.
    #[arg(long)]
    json: bool,
}

/// A job as shown: its row when there is one, its calls, its queue.
struct Shown {
    transaction_id: String,
    record: Option<JobRecord>,
    calls: Vec<CallRecord>,
    location: Located,
}

/// Where the job's message is, as far as the broker could tell.
enum Located {
    /// Succeeded: nothing of it is queued any more, so no queue was read.
    Final,
    Looked(Whereabouts),
    /// The broker could not be read; the row is still shown.
    Unknown(String),
}

pub(super) async fn show(settings: &Settings, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let key = match (&args.transaction_id, &args.external_ref) {
        (Some(id), _) => check_transaction_id(id).map(Key::TransactionId),
        (None, Some(reference)) => check_external_ref(reference).map(Key::ExternalRef),
        (None, None) => Err("give a TRANSACTION_ID or --external-ref REF".into()),
    };
    let key = match key {
        Ok(key) => key,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let (jobs, truncated) = find(settings, &store, &key).await?;
    if jobs.is_empty() {
        eprintln!("{}", key.not_found());
        return Ok(ExitCode::FAILURE);
    }
    if args.json {
        let values: Vec<Value> = jobs.iter().map(to_json).collect();
        let out = match key {
            Key::TransactionId(_) => values.into_iter().next().unwrap_or(Value::Null),
            Key::ExternalRef(_) => Value::Array(values),
        };
        println!("{out}");
    } else {
        let texts: Vec<String> = jobs.iter().map(to_text).collect();
        print!("{}", texts.join("\n"));
    }
    if truncated {
        eprintln!(
            "note: more than {MAX_ROWS_PER_REFERENCE} jobs carry this external_ref; \
             the first {MAX_ROWS_PER_REFERENCE} by creation are shown"
        );
    }
    Ok(ExitCode::SUCCESS)
}

enum Key {
    TransactionId(String),
    ExternalRef(String),
}

impl Key {
    fn not_found(&self) -> String {
        match self {
            Key::TransactionId(id) => format!(
                "no job with transaction_id {id}: no row in the database and no message \
                 in the delay or dead queues"
            ),
            Key::ExternalRef(reference) => format!(
                "no job with external_ref \"{}\" in the database",
                printable(reference)
            ),
        }
    }
}

/// The rule of the job message, with a message that names the argument and
/// never echoes a hostile value.
fn check_transaction_id(id: &str) -> Result<String, String> {
    TransactionId::from_str(id)
        .map(String::from)
        .map_err(|e| format!("TRANSACTION_ID {}", e.rule))
}

fn check_external_ref(reference: &str) -> Result<String, String> {
    if reference.is_empty() {
        return Err("--external-ref must not be empty".into());
    }
    if reference.chars().count() > EXTERNAL_REF_MAX_CHARS {
        return Err(format!(
            "--external-ref must be at most {EXTERNAL_REF_MAX_CHARS} characters"
        ));
    }
    if reference.chars().any(char::is_control) {
        return Err("--external-ref must not contain control characters".into());
    }
    Ok(reference.to_owned())
}

/// The jobs for `key`, and whether an external_ref matched more than shown.
/// The queues are read once for all the jobs that are not final.
async fn find(
    settings: &Settings,
    store: &JobStore,
    key: &Key,
) -> anyhow::Result<(Vec<Shown>, bool)> {
    let mut records = match key {
        Key::TransactionId(id) => store.job_record(id).await?.into_iter().collect(),
        Key::ExternalRef(reference) => store.job_records_by_external_ref(reference).await?,
    };
    let limit = usize::try_from(MAX_ROWS_PER_REFERENCE).unwrap_or(usize::MAX);
    let truncated = records.len() > limit;
    records.truncate(limit);
    let ids: Vec<String> = match (key, records.is_empty()) {
        (Key::TransactionId(id), true) => vec![id.clone()],
        _ => records
            .iter()
            .filter(|record| record.status != JobStatus::Succeeded)
            .map(|record| record.transaction_id.clone())
            .collect(),
    };
    let mut located = locate(settings, &ids).await;
    let mut jobs = Vec::with_capacity(records.len());
    for record in records {
        let location = if record.status == JobStatus::Succeeded {
            Located::Final
        } else {
            located.take(&record.transaction_id)
        };
        jobs.push(Shown {
            transaction_id: record.transaction_id.clone(),
            calls: store
                .calls_for(&record.transaction_id)
                .await
                .context("reading the upstream_calls ledger")?,
            record: Some(record),
            location,
        });
    }
    if let (Key::TransactionId(id), true) = (key, jobs.is_empty()) {
        let location = located.take(id);
        if let Located::Unknown(error) = &location {
            anyhow::bail!(
                "no row for transaction_id {id}, and the queues could not be read: {error}"
            );
        }
        let queued = matches!(&location, Located::Looked(w) if !w.found.is_empty());
        let calls = store.calls_for(id).await?;
        if queued || !calls.is_empty() {
            jobs.push(Shown {
                transaction_id: id.clone(),
                record: None,
                calls,
                location,
            });
        }
    }
    Ok((jobs, truncated))
}

/// What one pass over the queues found for each id looked for.
enum LocatedAll {
    Found(Vec<(String, Whereabouts)>),
    Failed(String),
}

impl LocatedAll {
    fn take(&mut self, transaction_id: &str) -> Located {
        match self {
            Self::Failed(error) => Located::Unknown(error.clone()),
            Self::Found(all) => all
                .iter()
                .position(|(id, _)| id == transaction_id)
                .map(|at| Located::Looked(all.swap_remove(at).1))
                .unwrap_or_else(|| Located::Unknown("not looked for".into())),
        }
    }
}

async fn locate(settings: &Settings, transaction_ids: &[String]) -> LocatedAll {
    if transaction_ids.is_empty() {
        return LocatedAll::Found(Vec::new());
    }
    match dead::locate(settings, transaction_ids).await {
        Ok(found) => LocatedAll::Found(transaction_ids.iter().cloned().zip(found).collect()),
        Err(error) => LocatedAll::Failed(format!("{:#}", anyhow::Error::from(error))),
    }
}

/// Control characters as escapes, so a hostile value (a producer's
/// reference, a message id, a reason) cannot drive the terminal; everything
/// else as it is.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn to_text(job: &Shown) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: Option<String>| {
        let value = value.map_or_else(|| "-".to_owned(), |v| printable(&v));
        let _ = writeln!(out, "{label:<16}{value}");
    };
    line("transaction_id", Some(job.transaction_id.clone()));
    match &job.record {
        Some(row) => {
            for (label, value) in record_fields(row) {
                line(label, value);
            }
        }
        None => line("status", Some("no row yet (never called)".into())),
    }
    line("queue", Some(location_text(&job.location)));
    let _ = writeln!(out, "calls ({}):", job.calls.len());
    if !job.calls.is_empty() {
        let _ = writeln!(
            out,
            "  {:<8}{:<26}{:>12}  {:<6}{:<8}{:<32}OUTCOME",
            "ATTEMPT", "STARTED_AT", "DURATION_MS", "HTTP", "CODE", "SUB_CODE"
        );
    }
    for call in &job.calls {
        let _ = writeln!(
            out,
            "  {:<8}{:<26}{:>12}  {:<6}{:<8}{:<32}{}",
            call.attempt,
            time(&call.started_at),
            call.duration_ms,
            call.http_status
                .map_or_else(|| "-".into(), |s| s.to_string()),
            printable(call.code.as_deref().unwrap_or("-")),
            printable(call.sub_code.as_deref().unwrap_or("-")),
            printable(&call.outcome),
        );
    }
    out
}

/// The row's fields in the order `show` prints them (personal ones masked as
/// stored).
fn record_fields(row: &JobRecord) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("external_ref", row.external_ref.clone()),
        ("batch_id", row.batch_id.clone()),
        ("status", Some(row.status.to_string())),
        ("attempts", Some(row.attempts.to_string())),
        ("biz_no", row.biz_no.clone()),
        ("relation_rank", row.relation_rank.clone()),
        ("recency", row.recency.clone()),
        ("relation_score", row.relation_score.map(|s| s.to_string())),
        ("error_code", row.error_code.clone()),
        ("error_message", row.error_message.clone()),
        ("cert_no", row.cert_no_masked.clone()),
        ("name", row.name_masked.clone()),
        ("relation_phone", row.relation_phone_masked.clone()),
        ("relation_name", row.relation_name_masked.clone()),
        ("created_at", Some(time(&row.created_at))),
        ("updated_at", Some(time(&row.updated_at))),
        ("first_call_at", row.first_call_at.as_ref().map(time)),
        ("completed_at", row.completed_at.as_ref().map(time)),
        ("reused_from", row.reused_from.clone()),
    ]
}

fn location_text(location: &Located) -> String {
    match location {
        Located::Final => "none: the job succeeded".into(),
        Located::Unknown(error) => format!("unknown: the broker could not be read: {error}"),
        Located::Looked(whereabouts) if whereabouts.found.is_empty() => {
            let mut text = "in no delay queue and not in the dead queue".to_owned();
            if let Some(main) = &whereabouts.main_not_scanned {
                let _ = write!(
                    text,
                    "; if not final, waiting in the main queue {main} (not read: a quorum queue) \
                     or being processed"
                );
            }
            text
        }
        Located::Looked(whereabouts) => whereabouts
            .found
            .iter()
            .map(|place| {
                let mut text = format!("{} queue {}", place.kind, place.queue);
                if let Some(attempt) = place.entry.attempt {
                    let _ = write!(text, " (attempt {attempt})");
                }
                if let Some(reason) = &place.entry.reason {
                    let _ = write!(text, ": {reason}");
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn to_json(job: &Shown) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("transaction_id".into(), json!(job.transaction_id));
    match &job.record {
        Some(row) => {
            for (label, value) in record_fields(row) {
                object.insert(label.into(), json!(value));
            }
            object.insert("attempts".into(), json!(row.attempts));
            object.insert("relation_score".into(), json!(row.relation_score));
        }
        None => {
            object.insert("status".into(), Value::Null);
        }
    }
    let calls: Vec<Value> = job
        .calls
        .iter()
        .map(|call| {
            json!({
                "attempt": call.attempt,
                "started_at": time(&call.started_at),
                "duration_ms": call.duration_ms,
                "http_status": call.http_status,
                "code": call.code,
                "sub_code": call.sub_code,
                "outcome": call.outcome,
            })
        })
        .collect();
    object.insert("calls".into(), Value::Array(calls));
    object.insert("location".into(), location_json(&job.location));
    Value::Object(object)
}

fn location_json(location: &Located) -> Value {
    match location {
        Located::Final => json!({"state": "final", "queues": []}),
        Located::Unknown(error) => json!({"state": "unknown", "queues": [], "error": error}),
        Located::Looked(whereabouts) => {
            let queues: Vec<Value> = whereabouts
                .found
                .iter()
                .map(|place| {
                    json!({
                        "queue": place.queue,
                        "kind": place.kind,
                        "attempt": place.entry.attempt,
                        "reason": place.entry.reason,
                    })
                })
                .collect();
            let state = if queues.is_empty() {
                "not_found"
            } else {
                "queued"
            };
            json!({
                "state": state,
                "queues": queues,
                "main_queue_not_read": whereabouts.main_not_scanned,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn hostile_ids_and_references_are_refused_naming_the_argument_without_echoing_it() {
        let long = "a".repeat(10_000);
        for (id, rule) in [
            ("", "must not be empty"),
            ("t\u{1b}[2J", "letters, digits and underscores"),
            ("t 1", "letters, digits and underscores"),
            (long.as_str(), "at most 64"),
        ] {
            let error = check_transaction_id(id).unwrap_err();
            assert!(error.starts_with("TRANSACTION_ID "), "{error}");
            assert!(error.contains(rule), "{error}");
            assert!(error.len() < 100, "echoed the value: {error}");
        }
        assert_eq!(check_transaction_id("loan8812_c1").unwrap(), "loan8812_c1");

        assert!(check_external_ref("").unwrap_err().contains("empty"));
        assert!(
            check_external_ref("a\u{7}b")
                .unwrap_err()
                .contains("control")
        );
        assert!(check_external_ref(&long).unwrap_err().contains("256"));
        assert_eq!(
            check_external_ref("loan-8812/contact-1").unwrap(),
            "loan-8812/contact-1"
        );
    }

    fn record(status: JobStatus) -> JobRecord {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T06:12:09.114Z")
            .unwrap()
            .with_timezone(&Utc);
        JobRecord {
            transaction_id: "t_1".into(),
            external_ref: Some("loan-1\u{1b}[2J".into()),
            batch_id: None,
            status,
            attempts: 1,
            biz_no: None,
            relation_rank: None,
            recency: None,
            relation_score: None,
            error_code: Some("SYSTEM_ERROR".into()),
            error_message: None,
            cert_no_masked: Some("640202********4686".into()),
            name_masked: Some("张*".into()),
            relation_phone_masked: Some("158****1158".into()),
            relation_name_masked: None,
            created_at: at,
            updated_at: at,
            first_call_at: Some(at),
            completed_at: None,
            reused_from: None,
        }
    }

    #[test]
    fn a_job_in_no_queue_says_the_main_queue_was_not_read_and_json_keeps_types() {
        let shown = Shown {
            transaction_id: "t_1".into(),
            record: Some(record(JobStatus::Retrying)),
            calls: vec![CallRecord {
                attempt: 1,
                started_at: record(JobStatus::Retrying).created_at,
                duration_ms: 48,
                http_status: Some(200),
                code: Some("40004".into()),
                sub_code: Some("SYSTEM_ERROR".into()),
                outcome: "retryable".into(),
            }],
            location: Located::Looked(Whereabouts {
                found: Vec::new(),
                main_not_scanned: Some("zhima.relation.verify".into()),
            }),
        };
        let text = to_text(&shown);
        assert!(
            text.contains("waiting in the main queue zhima.relation.verify (not read"),
            "{text}"
        );
        assert!(text.contains("external_ref    loan-1\\u{1b}[2J"), "{text}");
        assert!(text.contains("calls (1):"), "{text}");
        let json = to_json(&shown);
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["relation_score"], Value::Null);
        assert_eq!(json["status"], "retrying");
        assert_eq!(json["calls"][0]["duration_ms"], 48);
        assert_eq!(json["calls"][0]["http_status"], 200);
        assert_eq!(json["location"]["state"], "not_found");
        assert_eq!(
            json["location"]["main_queue_not_read"],
            "zhima.relation.verify"
        );
        let done = Shown {
            location: Located::Final,
            ..shown
        };
        assert_eq!(to_json(&done)["location"]["state"], "final");
        assert!(to_text(&done).contains("none: the job succeeded"));
    }

    #[test]
    fn control_characters_from_stored_values_are_printed_escaped() {
        assert_eq!(printable("ok 张三"), "ok 张三");
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
    }
}
