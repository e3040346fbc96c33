//! `enqueue`: reads job records (JSON Lines, or CSV with a header), validates
//! each one with the worker's own rules (`crate::job::decode_job`), gives a
//! fresh transaction_id to records that carry none, and publishes the valid
//! ones, persistent, to the jobs exchange with publisher confirms. A JSON
//! Lines record longer than the message limit (64 KiB) is refused without
//! being buffered, and a transaction_id used twice in one input is refused on
//! its second line, naming the first.
//!
//! Reading and validating run on a blocking thread that feeds the publisher
//! through a bounded channel, so parsing overlaps with waiting for confirms.
//! Publishing is pipelined: up to `window` messages are in flight before the
//! oldest confirm is awaited.
//!
//! Every run is one batch: its id (`--batch-id`, or one minted here) is
//! stamped on every published message, its `batches` row is created before
//! the first publish and its size recorded once everything is confirmed, so
//! the worker can tell when the batch's last job is final (`batch.completed`).
//!
//! This module prints nothing and logs no record content (records are personal
//! data): it reports invalid lines, assigned ids and progress through
//! [`EnqueueEvent`]s and leaves the presentation to the caller. The one place
//! record content goes is the `--rejects` file the caller asked for, created
//! private and never over an existing file.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use lapin::PublisherConfirm;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::publisher::{Outgoing, describe};
use super::{Publisher, QueueError, QueueNames, Topology};
use crate::capped::{CappedRecords, RecordTooLong};
use crate::config::Settings;
use crate::job::{Job, JobError, MAX_BODY_BYTES, TransactionId, decode_job, validate_batch_id};
use crate::line_ends::LineEnds;
use crate::store::{BatchStart, JobStore, StoreError};

/// Confirms awaited at most this far behind the newest publish by default:
/// enough to keep the broker busy, small enough to bound memory.
pub const DEFAULT_WINDOW: usize = 1000;
/// Prefix of the transaction_ids `enqueue` mints, so they are recognisable.
const ASSIGNED_PREFIX: &str = "zw_";
/// Random characters after the prefix: 62^29 ids, and 32 characters in all.
const ASSIGNED_RANDOM_CHARS: usize = 29;

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values whose header names the job fields.
    Csv,
}

impl InputFormat {
    /// `.jsonl`, `.json` and `.ndjson` are JSON Lines; `.csv` is CSV; anything
    /// else is left to `--format`.
    pub(crate) fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "jsonl" | "json" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// Publish nothing if any record is invalid (all-or-nothing batches).
    pub(crate) strict: bool,
    /// Messages in flight before the oldest confirm is awaited.
    pub(crate) window: usize,
    /// Where to write the rejected records with their reasons (created new,
    /// mode 0600; see [`JsonlRejects`] and [`CsvRejects`] for the layout).
    pub(crate) rejects: Option<PathBuf>,
    /// The batch id to use (`[A-Za-z0-9_-]{1,64}`); None mints one.
    pub(crate) batch_id: Option<String>,
    /// `--fresh`: every published job says `"fresh": true` (never answered
    /// from a stored answer), whatever its record says.
    pub(crate) fresh: bool,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        Self {
            strict: false,
            window: DEFAULT_WINDOW,
            rejects: None,
            batch_id: None,
            fresh: false,
        }
    }
}

/// What `enqueue` tells its caller while it runs. `line` is the 1-based line
/// of the input where the record starts (CSV: the header is line 1).
#[derive(Debug, Clone, Copy)]
pub enum EnqueueEvent<'a> {
    /// The record was not published. `reason` names the field and the rule,
    /// never the value. The ids are the record's own when they are readable
    /// (valid under their rules): not personal data, and what the producer
    /// knows the record by.
    Invalid {
        line: u64,
        reason: &'a str,
        transaction_id: Option<&'a str>,
        external_ref: Option<&'a str>,
    },
    /// The record had no transaction_id; it was published (and confirmed) under
    /// this one, which the producer needs to find its result.
    Assigned {
        line: u64,
        transaction_id: &'a TransactionId,
    },
    /// Confirmed publishes so far.
    Published { total: u64 },
}

/// Totals of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueReport {
    /// Records the broker confirmed.
    pub published: u64,
    pub invalid: u64,
    /// Published records whose transaction_id was minted here.
    pub(crate) assigned: u64,
    /// Valid records not published because `strict` found invalid ones.
    pub(crate) withheld: u64,
    /// The batch every published record was stamped with.
    pub batch_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("reading the input failed")]
    Read(#[source] std::io::Error),
    #[error("reading the CSV input failed")]
    Csv(#[source] csv::Error),
    /// A CSV record cannot be skipped without reading it whole (a quoted
    /// cell may span lines), so the input stops there.
    #[error(
        "line {line}: a CSV record longer than {max_kib} KiB (the message limit); \
         stopped there without reading the rest of it"
    )]
    CsvRecordTooLong { line: u64, max_kib: u64 },
    #[error("preparing the broker (connect, declare the topology) failed")]
    Setup(#[source] QueueError),
    /// Jobs confirmed before the failure stay queued; re-running the same
    /// input publishes them again, which the worker acks as duplicates when
    /// they carry fixed transaction_ids.
    #[error("publishing failed after {published} jobs were confirmed")]
    Publish {
        published: u64,
        #[source]
        source: QueueError,
    },
    #[error("the input reader thread stopped unexpectedly")]
    ReaderCrashed,
    #[error("--batch-id: {0}")]
    BatchId(crate::job::FieldError),
    #[error(
        "batch {batch_id} was enqueued already (its size is recorded); \
         choose another --batch-id, or leave it out to get a new one"
    )]
    BatchTaken { batch_id: String },
    /// The database could not record the batch: before publishing, nothing
    /// was published; after, the jobs are queued but the batch has no size
    /// (it never completes): re-running with the same `--batch-id` records it.
    #[error("recording batch {batch_id} in the database failed (has `zhima-worker migrate` run?)")]
    Batch {
        batch_id: String,
        #[source]
        source: StoreError,
    },
    /// It would hold personal data of another run, or something else.
    #[error(
        "the rejects file {} already exists; enqueue never overwrites one: \
         choose a new name or remove it",
        path.display()
    )]
    RejectsExist { path: PathBuf },
    #[error("creating the rejects file {} failed", path.display())]
    RejectsCreate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the rejects file failed")]
    RejectsWrite(#[source] std::io::Error),
}

/// A caller's sink for [`EnqueueEvent`]s.
pub(crate) type Observer<'o> = dyn FnMut(EnqueueEvent<'_>) + Send + 'o;

/// Creates the rejects file if asked (first, so a name already taken stops
/// the run before anything is published), declares the whole topology (so an
/// empty input still leaves it in place), then reads, validates and publishes
/// every record of `input`.
pub async fn enqueue(
    input: Box<dyn BufRead + Send>,
    format: InputFormat,
    settings: &Settings,
    options: &EnqueueOptions,
    observer: &mut Observer<'_>,
) -> Result<EnqueueReport, EnqueueError> {
    let batch_id = match &options.batch_id {
        Some(chosen) => {
            validate_batch_id(chosen).map_err(EnqueueError::BatchId)?;
            chosen.clone()
        }
        None => new_batch_id(),
    };
    let rejects = options
        .rejects
        .as_deref()
        .map(create_rejects_file)
        .transpose()?;
    let store = open_batch(settings, &batch_id).await?;
    let topology = Topology::from_settings(settings).map_err(EnqueueError::Setup)?;
    let connection = super::connect(&settings.amqp, "enqueue")
        .await
        .map_err(EnqueueError::Setup)?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(EnqueueError::Setup)?;
    topology
        .declare(publisher.channel())
        .await
        .map_err(EnqueueError::Setup)?;
    let source = Source {
        input,
        format,
        rejects,
    };
    let outcome = publish_input(
        source,
        settings,
        Target {
            publisher: &publisher,
            names: &topology.names,
            batch_id: &batch_id,
            fresh: options.fresh,
        },
        options,
        observer,
    )
    .await;
    // Best effort: every publish that matters has been confirmed already.
    let _ = connection.close(200, "enqueue done".into()).await;
    let report = outcome?;
    store
        .record_batch_size(&batch_id, report.published)
        .await
        .map_err(|source| EnqueueError::Batch {
            batch_id: batch_id.clone(),
            source,
        })?;
    Ok(report)
}

/// Migrates (as `run` does) and creates the batch's row, refusing a batch id
/// whose size an earlier run recorded.
async fn open_batch(settings: &Settings, batch_id: &str) -> Result<JobStore, EnqueueError> {
    use secrecy::ExposeSecret;
    let failed = |source| EnqueueError::Batch {
        batch_id: batch_id.to_owned(),
        source,
    };
    let url = settings.database.url.expose_secret();
    JobStore::migrate(url).await.map_err(failed)?;
    let store = JobStore::connect(url, 1)
        .await
        .map_err(failed)?
        .with_result_events(settings.results.enabled());
    match store.start_batch(batch_id).await.map_err(failed)? {
        BatchStart::Open => Ok(store),
        BatchStart::AlreadyEnqueued => Err(EnqueueError::BatchTaken {
            batch_id: batch_id.to_owned(),
        }),
    }
}

/// A fresh batch id: `b_` + the UTC time + 8 random characters, e.g.
/// `b_20261201T140712Z_k3J9xQ2a` (valid under the batch id rule).
pub(crate) fn new_batch_id() -> String {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    format!("b_{}_{random}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}

/// Where the valid records go.
#[derive(Clone, Copy)]
struct Target<'a> {
    publisher: &'a Publisher,
    names: &'a QueueNames,
    batch_id: &'a str,
    /// Every published job says `"fresh": true`.
    fresh: bool,
}

/// Runs the reader thread and the publishing loop against an already
/// declared topology; the reader's own failure wins over a clean publish.
async fn publish_input(
    source: Source,
    settings: &Settings,
    target: Target<'_>,
    options: &EnqueueOptions,
    observer: &mut Observer<'_>,
) -> Result<EnqueueReport, EnqueueError> {
    let Source {
        input,
        format,
        rejects,
    } = source;
    let (sender, receiver) = mpsc::channel(options.window.max(1) * 2);
    let validator = RecordValidator {
        default_product_code: settings.upstream.product_code.clone(),
    };
    let reader = tokio::task::spawn_blocking(move || match format {
        InputFormat::Jsonl => read_jsonl(input, &validator, &sender, rejects),
        InputFormat::Csv => read_csv(input, &validator, &sender, rejects),
    });
    let mut pipeline = Pipeline::new(target, options.window);
    let published = pipeline.run(receiver, options.strict, observer).await;
    let read = reader.await.map_err(|_| EnqueueError::ReaderCrashed)?;
    let mut report = pipeline.report;
    report.batch_id = target.batch_id.to_owned();
    published.map_err(|source| EnqueueError::Publish {
        published: report.published,
        source,
    })?;
    read?;
    Ok(report)
}

/// What the reader thread reads, and where it writes the rejected records.
struct Source {
    input: Box<dyn BufRead + Send>,
    format: InputFormat,
    rejects: Option<File>,
}

/// The rejects file holds personal data: only its owner may read it, and an
/// existing file (another run's rejects, or anything else) is never replaced.
fn create_rejects_file(path: &Path) -> Result<File, EnqueueError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|source| {
        let path = path.to_owned();
        match source.kind() {
            std::io::ErrorKind::AlreadyExists => EnqueueError::RejectsExist { path },
            _ => EnqueueError::RejectsCreate { path, source },
        }
    })
}

/// `--rejects` for JSON Lines input: one JSON object per rejected line,
/// `{"line", "transaction_id", "external_ref", "reason", "record"}`, where
/// `record` is the line as read (surrounding whitespace trimmed; invalid
/// UTF-8 replaced; `null` for a line over the size limit, which is never
/// read). `jq -r .record` gives back input `enqueue` reads.
struct JsonlRejects(BufWriter<File>);

#[derive(serde::Serialize)]
struct RejectedLine<'a> {
    line: u64,
    transaction_id: Option<&'a str>,
    external_ref: Option<&'a str>,
    reason: &'a str,
    record: Option<Cow<'a, str>>,
}

impl JsonlRejects {
    fn write(&mut self, checked: &Checked, record: Option<&[u8]>) -> Result<(), EnqueueError> {
        let Checked::Invalid { line, reason, ids } = checked else {
            return Ok(());
        };
        let entry = RejectedLine {
            line: *line,
            transaction_id: ids.transaction_id.as_deref(),
            external_ref: ids.external_ref.as_deref(),
            reason,
            record: record.map(String::from_utf8_lossy),
        };
        serde_json::to_writer(&mut self.0, &entry)
            .map_err(|error| EnqueueError::RejectsWrite(error.into()))?;
        self.0.write_all(b"\n").map_err(EnqueueError::RejectsWrite)
    }

    fn finish(mut self) -> Result<(), EnqueueError> {
        self.0.flush().map_err(EnqueueError::RejectsWrite)
    }
}

/// `--rejects` for CSV input: the input's header row and each rejected row
/// as read (byte for byte per cell; a short row padded to the header), with
/// two columns added, `reject_line` and `reject_reason`. `enqueue` ignores
/// unknown columns, so the corrected file can be enqueued as it is.
struct CsvRejects {
    writer: csv::Writer<File>,
    columns: usize,
}

impl CsvRejects {
    fn start(file: File, headers: &csv::ByteRecord) -> Result<Self, EnqueueError> {
        let mut writer = csv::Writer::from_writer(file);
        let mut row = headers.clone();
        row.push_field(b"reject_line");
        row.push_field(b"reject_reason");
        writer.write_byte_record(&row).map_err(csv_write_error)?;
        Ok(Self {
            writer,
            columns: headers.len(),
        })
    }

    fn write(&mut self, checked: &Checked, cells: &csv::ByteRecord) -> Result<(), EnqueueError> {
        let Checked::Invalid { line, reason, .. } = checked else {
            return Ok(());
        };
        let mut row = cells.clone();
        while row.len() < self.columns {
            row.push_field(b"");
        }
        row.push_field(line.to_string().as_bytes());
        row.push_field(reason.as_bytes());
        self.writer.write_byte_record(&row).map_err(csv_write_error)
    }

    fn finish(mut self) -> Result<(), EnqueueError> {
        self.writer.flush().map_err(EnqueueError::RejectsWrite)
    }
}

fn csv_write_error(error: csv::Error) -> EnqueueError {
    EnqueueError::RejectsWrite(std::io::Error::other(error))
}

/// One input record after validation.
enum Checked {
    Valid(ValidRecord),
    Invalid {
        line: u64,
        reason: String,
        ids: RecordIds,
    },
}

/// What names a rejected record for its producer, when readable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RecordIds {
    transaction_id: Option<String>,
    external_ref: Option<String>,
}

impl RecordIds {
    /// The record's own transaction_id (not one minted here, which names
    /// nothing the producer knows) if it follows the id rules, and its
    /// external_ref if it is a non-empty single-line text of at most 256
    /// characters.
    fn of(object: &Map<String, Value>, assigned: bool) -> Self {
        let text = |field: &str| object.get(field).and_then(Value::as_str);
        let transaction_id = text("transaction_id")
            .filter(|_| !assigned)
            .filter(|id| id.parse::<TransactionId>().is_ok());
        let external_ref = text("external_ref").filter(|reference| {
            !reference.is_empty()
                && reference.chars().count() <= 256
                && !reference.chars().any(char::is_control)
        });
        Self {
            transaction_id: transaction_id.map(str::to_owned),
            external_ref: external_ref.map(str::to_owned),
        }
    }

    fn of_job(job: &Job) -> Self {
        Self {
            transaction_id: Some(job.query.transaction_id.as_str().to_owned()),
            external_ref: job.external_ref.clone(),
        }
    }
}

struct ValidRecord {
    line: u64,
    job: Job,
    /// True when the transaction_id was minted here.
    assigned: bool,
}

/// Applies the worker's decoding rules to records, so `enqueue` accepts
/// exactly what `run` would process.
struct RecordValidator {
    default_product_code: String,
}

impl RecordValidator {
    fn check_json(&self, line: u64, bytes: &[u8]) -> Checked {
        if bytes.len() <= MAX_BODY_BYTES
            && let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(bytes)
        {
            return self.check_object(line, object);
        }
        match decode_job(bytes, &self.default_product_code) {
            Ok(job) => Checked::Valid(ValidRecord {
                line,
                job,
                assigned: false,
            }),
            Err(rejected) => invalid(line, &rejected.error, RecordIds::default()),
        }
    }

    /// A record without a transaction_id (absent, null or empty) gets a new
    /// one before validation, so the id rules apply to it like to any other.
    fn check_object(&self, line: u64, mut object: Map<String, Value>) -> Checked {
        let assigned = lacks_transaction_id(&object);
        if assigned {
            object.insert("transaction_id".into(), Value::String(new_transaction_id()));
        }
        let ids = RecordIds::of(&object, assigned);
        if let Some(field) = first_blank_required_field(&object) {
            return Checked::Invalid {
                line,
                reason: format!("field `{field}`: is blank; a value is required"),
                ids,
            };
        }
        let body = Value::Object(object).to_string();
        match decode_job(body.as_bytes(), &self.default_product_code) {
            Ok(job) => Checked::Valid(ValidRecord {
                line,
                job,
                assigned,
            }),
            Err(rejected) => invalid(line, &rejected.error, ids),
        }
    }
}

/// The job fields without which a record is refused, in the order the job
/// layer checks them; the transaction_id is not one here, as one is minted.
const REQUIRED_FIELDS: [&str; 4] = ["cert_no", "name", "relation_phone", "relation_name"];

/// A required field present but empty or only whitespace: a JSON `""` and an
/// empty CSV cell are the same mistake, so they get the same reason (an
/// absent field or CSV column stays "is required").
fn first_blank_required_field(object: &Map<String, Value>) -> Option<&'static str> {
    REQUIRED_FIELDS.into_iter().find(
        |field| matches!(object.get(*field), Some(Value::String(value)) if value.trim().is_empty()),
    )
}

fn lacks_transaction_id(object: &Map<String, Value>) -> bool {
    match object.get("transaction_id") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// `zw_` and 29 random letters and digits: valid under the transaction_id
/// rules and, at 62^29 possibilities, never reused by chance.
pub(crate) fn new_transaction_id() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(ASSIGNED_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{ASSIGNED_PREFIX}{random}")
}

/// The reason reported for a rejected record: the job layer's own text, which
/// names the field and rule but never quotes a value, worded for a record.
fn invalid(line: u64, error: &JobError, ids: RecordIds) -> Checked {
    let reason = match error {
        JobError::NotJson(detail) => format!("not valid JSON ({detail})"),
        JobError::NotObject => "not a JSON object".to_owned(),
        JobError::TooLarge { bytes } => {
            format!("record is {bytes} bytes, over the {MAX_BODY_BYTES}-byte limit")
        }
        JobError::Field(field) => field.to_string(),
    };
    Checked::Invalid { line, reason, ids }
}

/// Reads JSON Lines; blank lines are skipped but still counted, so reported
/// line numbers match an editor's. Stops early if the publisher has gone.
fn read_jsonl(
    input: Box<dyn BufRead + Send>,
    validator: &RecordValidator,
    sender: &mpsc::Sender<Checked>,
    rejects: Option<File>,
) -> Result<(), EnqueueError> {
    let mut rejects = rejects.map(|file| JsonlRejects(BufWriter::new(file)));
    let mut lines = LineReader::new(input, MAX_BODY_BYTES);
    let mut guard = DuplicateGuard::default();
    let mut line = 0u64;
    while let Some(read) = lines.next_line().map_err(EnqueueError::Read)? {
        line += 1;
        let checked = match read {
            LineRead::TooLong => Checked::Invalid {
                line,
                reason: format!(
                    "line is over the {MAX_BODY_BYTES}-byte message limit (skipped unread)"
                ),
                ids: RecordIds::default(),
            },
            LineRead::Complete => {
                let record = lines.line().trim_ascii();
                if record.is_empty() {
                    continue;
                }
                guard.check(validator.check_json(line, record))
            }
        };
        if let Some(rejects) = &mut rejects {
            let record = (read == LineRead::Complete).then(|| lines.line().trim_ascii());
            rejects.write(&checked, record)?;
        }
        if sender.blocking_send(checked).is_err() {
            break;
        }
    }
    rejects.map_or(Ok(()), JsonlRejects::finish)
}

/// How a line ended up in a [`LineReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineRead {
    /// The whole line (without its `\n`) is in [`LineReader::line`].
    Complete,
    /// The line was longer than the limit: it was read through and dropped.
    TooLong,
}

/// Reads lines of at most `limit` bytes. Only that much is ever buffered: the
/// rest of a longer line is consumed and dropped, so a file without newlines
/// (or `/dev/zero`) cannot grow memory. A UTF-8 byte-order mark at the start
/// of the input is skipped, as spreadsheets write one.
struct LineReader<R> {
    input: R,
    limit: usize,
    buffer: Vec<u8>,
    at_start: bool,
}

impl<R: BufRead> LineReader<R> {
    fn new(input: R, limit: usize) -> Self {
        Self {
            input,
            limit,
            buffer: Vec::new(),
            at_start: true,
        }
    }

    /// The line last read [`LineRead::Complete`].
    fn line(&self) -> &[u8] {
        &self.buffer
    }

    fn next_line(&mut self) -> std::io::Result<Option<LineRead>> {
        self.buffer.clear();
        if std::mem::take(&mut self.at_start) {
            self.skip_byte_order_mark()?;
        }
        let mut started = false;
        let mut too_long = false;
        loop {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Ok(started.then_some(Self::outcome(too_long)));
            }
            started = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            if !too_long && self.buffer.len() + content.len() <= self.limit {
                self.buffer.extend_from_slice(content);
            } else {
                too_long = true;
                self.buffer.clear();
            }
            let used = content.len() + usize::from(newline.is_some());
            self.input.consume(used);
            if newline.is_some() {
                return Ok(Some(Self::outcome(too_long)));
            }
        }
    }

    fn outcome(too_long: bool) -> LineRead {
        if too_long {
            LineRead::TooLong
        } else {
            LineRead::Complete
        }
    }

    fn skip_byte_order_mark(&mut self) -> std::io::Result<()> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let mut seen = 0;
        while seen < BOM.len() {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let take = (BOM.len() - seen).min(available.len());
            if available[..take] != BOM[seen..seen + take] {
                // Not a BOM: keep what was matched so far as line content.
                self.buffer.extend_from_slice(&BOM[..seen]);
                return Ok(());
            }
            self.input.consume(take);
            seen += take;
        }
        if seen < BOM.len() {
            self.buffer.extend_from_slice(&BOM[..seen]);
        }
        Ok(())
    }
}

/// Refuses a record whose transaction_id an earlier record of the same input
/// already carries: two contacts under one id would be one job upstream (and
/// the worker refuses the second as TRANSACTION_ID_CONFLICT anyway). Minted
/// ids are fresh, so only producer-given ones are remembered.
#[derive(Default)]
struct DuplicateGuard {
    first_lines: HashMap<TransactionId, u64>,
}

impl DuplicateGuard {
    fn check(&mut self, checked: Checked) -> Checked {
        let Checked::Valid(record) = checked else {
            return checked;
        };
        if record.assigned {
            return Checked::Valid(record);
        }
        let id = &record.job.query.transaction_id;
        match self.first_lines.get(id) {
            Some(first) => Checked::Invalid {
                line: record.line,
                reason: format!(
                    "field `transaction_id`: {id} is already used on line {first}; \
                     one transaction_id per job"
                ),
                ids: RecordIds::of_job(&record.job),
            },
            None => {
                self.first_lines.insert(id.clone(), record.line);
                Checked::Valid(record)
            }
        }
    }
}

/// Reads CSV with a header row. Columns map to job fields by header name
/// (unknown columns are ignored, like unknown JSON fields); an empty cell is
/// an absent field, except in a required column, where it is a blank value
/// (reported like a JSON `""`).
fn read_csv(
    input: Box<dyn BufRead + Send>,
    validator: &RecordValidator,
    sender: &mpsc::Sender<Checked>,
    rejects: Option<File>,
) -> Result<(), EnqueueError> {
    let max_record = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX);
    let (line_ends, lines) = LineEnds::new(input);
    let (capped, limit) = CappedRecords::new(line_ends, max_record);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(capped);
    let headers = csv_headers(&mut reader)?;
    let mut rejects = match rejects {
        Some(file) => Some(CsvRejects::start(
            file,
            reader.byte_headers().map_err(csv_fatal)?,
        )?),
        None => None,
    };
    limit.next_record_at(reader.position().byte());
    let mut guard = DuplicateGuard::default();
    let mut cells = csv::ByteRecord::new();
    loop {
        let start = reader.position().clone();
        let read = reader.read_byte_record(&mut cells).map_err(csv_fatal)?;
        limit.next_record_at(reader.position().byte());
        let line = start.line() + lines.blank_lines_at(start.byte());
        lines.forget_before(reader.position().byte());
        if !read {
            break;
        }
        let checked = check_csv_row(validator, &headers, line, &cells, &mut guard);
        if let Some(rejects) = &mut rejects {
            rejects.write(&checked, &cells)?;
        }
        if sender.blocking_send(checked).is_err() {
            break;
        }
    }
    rejects.map_or(Ok(()), CsvRejects::finish)
}

/// A row that is not UTF-8 is an invalid record, not a fatal error.
fn check_csv_row(
    validator: &RecordValidator,
    headers: &[String],
    line: u64,
    cells: &csv::ByteRecord,
    guard: &mut DuplicateGuard,
) -> Checked {
    match csv::StringRecord::from_byte_record(cells.clone()) {
        Ok(record) => guard.check(validator.check_object(line, csv_object(headers, &record))),
        Err(_) => Checked::Invalid {
            line,
            reason: "row is not valid UTF-8".to_owned(),
            ids: RecordIds::default(),
        },
    }
}

/// Header names, trimmed, with a spreadsheet's byte-order mark removed.
fn csv_headers<R: std::io::Read>(reader: &mut csv::Reader<R>) -> Result<Vec<String>, EnqueueError> {
    let headers = reader.headers().map_err(csv_fatal)?;
    Ok(headers
        .iter()
        .map(|name| name.trim_start_matches('\u{feff}').trim().to_owned())
        .collect())
}

fn csv_object(headers: &[String], record: &csv::StringRecord) -> Map<String, Value> {
    headers
        .iter()
        .zip(record.iter())
        .filter(|(name, cell)| {
            !name.is_empty() && (!cell.is_empty() || REQUIRED_FIELDS.contains(&name.as_str()))
        })
        .map(|(name, cell)| (name.clone(), Value::String(cell.to_owned())))
        .collect()
}

fn csv_fatal(error: csv::Error) -> EnqueueError {
    match RecordTooLong::within(&error) {
        Some(too_long) => EnqueueError::CsvRecordTooLong {
            line: too_long.line,
            max_kib: too_long.max_kib,
        },
        None => EnqueueError::Csv(error),
    }
}

/// A publish awaiting its confirm.
struct InFlight {
    confirm: PublisherConfirm,
    line: u64,
    assigned: Option<TransactionId>,
}

/// The sliding window of unconfirmed publishes, and the running totals.
struct Pipeline<'p> {
    publisher: &'p Publisher,
    names: &'p QueueNames,
    batch_id: &'p str,
    fresh: bool,
    target: String,
    window: usize,
    in_flight: VecDeque<InFlight>,
    report: EnqueueReport,
}

impl<'p> Pipeline<'p> {
    fn new(target: Target<'p>, window: usize) -> Self {
        Self {
            publisher: target.publisher,
            names: target.names,
            batch_id: target.batch_id,
            fresh: target.fresh,
            target: describe(&Outgoing::job(target.names, &[], None)),
            window: window.max(1),
            in_flight: VecDeque::new(),
            report: EnqueueReport::default(),
        }
    }

    /// Publishes valid records as they arrive, or, when `strict`, holds them
    /// until the input is known to be clean.
    async fn run(
        &mut self,
        mut receiver: mpsc::Receiver<Checked>,
        strict: bool,
        observer: &mut Observer<'_>,
    ) -> Result<(), QueueError> {
        let mut held = Vec::new();
        while let Some(checked) = receiver.recv().await {
            match checked {
                Checked::Invalid { line, reason, ids } => {
                    self.report.invalid += 1;
                    observer(EnqueueEvent::Invalid {
                        line,
                        reason: &reason,
                        transaction_id: ids.transaction_id.as_deref(),
                        external_ref: ids.external_ref.as_deref(),
                    });
                }
                Checked::Valid(record) if strict => held.push(record),
                Checked::Valid(record) => self.push(record, observer).await?,
            }
        }
        if self.report.invalid > 0 {
            self.report.withheld = u64::try_from(held.len()).unwrap_or(u64::MAX);
            held.clear();
        }
        for record in held {
            self.push(record, observer).await?;
        }
        self.drain(observer).await
    }

    async fn push(
        &mut self,
        mut record: ValidRecord,
        observer: &mut Observer<'_>,
    ) -> Result<(), QueueError> {
        record.job.batch_id = Some(self.batch_id.to_owned());
        record.job.fresh |= self.fresh;
        let body = record.job.to_message_body();
        let id = &record.job.query.transaction_id;
        let message = Outgoing::job(self.names, &body, Some(id.as_str()));
        let confirm = self.publisher.send(message).await?;
        self.in_flight.push_back(InFlight {
            confirm,
            line: record.line,
            assigned: record.assigned.then(|| id.clone()),
        });
        while self.in_flight.len() >= self.window {
            self.confirm_oldest(observer).await?;
        }
        Ok(())
    }

    async fn drain(&mut self, observer: &mut Observer<'_>) -> Result<(), QueueError> {
        while !self.in_flight.is_empty() {
            self.confirm_oldest(observer).await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self, observer: &mut Observer<'_>) -> Result<(), QueueError> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        Publisher::confirmed(oldest.confirm, self.target.clone()).await?;
        self.report.published += 1;
        if let Some(transaction_id) = &oldest.assigned {
            self.report.assigned += 1;
            observer(EnqueueEvent::Assigned {
                line: oldest.line,
                transaction_id,
            });
        }
        observer(EnqueueEvent::Published {
            total: self.report.published,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::io::Read;

    const VALID: &str = r#"{"transaction_id": "t_1", "cert_no": "640202199007164686",
        "name": "张三", "relation_phone": "15843991158", "relation_name": "李四"}"#;

    fn validator() -> RecordValidator {
        RecordValidator {
            default_product_code: "w1010100001000001200".into(),
        }
    }

    fn check(record: &str) -> Checked {
        validator().check_json(7, record.as_bytes())
    }

    fn reason_of(checked: Checked) -> String {
        match checked {
            Checked::Invalid { line, reason, .. } => {
                assert_eq!(line, 7);
                reason
            }
            Checked::Valid(_) => panic!("expected an invalid record"),
        }
    }

    fn collect(format: InputFormat, text: &'static str) -> Vec<Checked> {
        let (sender, mut receiver) = mpsc::channel(100);
        let input: Box<dyn BufRead + Send> = Box::new(text.as_bytes());
        let outcome = match format {
            InputFormat::Jsonl => read_jsonl(input, &validator(), &sender, None),
            InputFormat::Csv => read_csv(input, &validator(), &sender, None),
        };
        outcome.unwrap();
        drop(sender);
        let mut all = Vec::new();
        while let Ok(checked) = receiver.try_recv() {
            all.push(checked);
        }
        all
    }

    #[test]
    fn a_valid_record_keeps_its_transaction_id_and_gets_the_default_product_code() {
        let Checked::Valid(record) = check(VALID) else {
            panic!("valid")
        };
        assert!(!record.assigned);
        assert_eq!(record.job.query.transaction_id.as_str(), "t_1");
        assert_eq!(record.job.query.product_code, "w1010100001000001200");
    }

    #[test]
    fn a_record_without_transaction_id_gets_a_fresh_valid_one() {
        for id in [None, Some(Value::Null), Some(Value::String(String::new()))] {
            let mut object: Map<String, Value> = serde_json::from_str(VALID).unwrap();
            object.remove("transaction_id");
            if let Some(id) = id {
                object.insert("transaction_id".into(), id);
            }
            let text = Value::Object(object).to_string();
            let Checked::Valid(record) = check(&text) else {
                panic!("valid")
            };
            assert!(record.assigned);
            let id = record.job.query.transaction_id.as_str();
            assert!(id.starts_with("zw_") && id.len() == 32, "{id}");
        }
    }

    #[test]
    fn minted_transaction_ids_differ_and_follow_the_id_rules() {
        let a = new_transaction_id();
        assert_ne!(a, new_transaction_id());
        assert!(a.parse::<TransactionId>().is_ok());
    }

    #[test]
    fn invalid_records_name_the_field_and_rule_without_the_value() {
        let bad_check = VALID.replace("4686", "4685");
        let reason = reason_of(check(&bad_check));
        assert!(reason.contains("cert_no") && reason.contains("check character"));
        assert!(!reason.contains("640202"), "{reason}");
        let short_phone = VALID.replace("15843991158", "1584399115");
        assert!(reason_of(check(&short_phone)).contains("relation_phone"));
        let pipe = VALID.replace("张三", "张|三");
        assert!(reason_of(check(&pipe)).contains("`name`"));
        assert!(reason_of(check("not json")).contains("not valid JSON"));
        assert!(reason_of(check("[1]")).contains("not a JSON object"));
    }

    #[test]
    fn jsonl_line_numbers_count_blank_lines() {
        let text = "\n{\"transaction_id\":\"x\"}\r\n   \n[]\n";
        let lines: Vec<u64> = collect(InputFormat::Jsonl, text)
            .into_iter()
            .map(|checked| match checked {
                Checked::Invalid { line, .. } => line,
                Checked::Valid(record) => record.line,
            })
            .collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn csv_columns_map_by_header_and_empty_cells_are_absent() {
        let text = "\u{feff}name,cert_no,relation_phone,relation_name,relation,transaction_id,note\n\
                    张三,640202199007164686,15843991158,李四,,,hello\n\
                    张三,640202199007164686,158,李四,friend,c_2,\n";
        let all = collect(InputFormat::Csv, text);
        assert_eq!(all.len(), 2);
        let Checked::Valid(record) = &all[0] else {
            panic!("first row is valid")
        };
        assert_eq!(record.line, 2);
        assert!(record.assigned);
        assert_eq!(record.job.query.relation, None);
        let Checked::Invalid { line, reason, .. } = &all[1] else {
            panic!("second row is invalid")
        };
        assert_eq!(*line, 3);
        assert!(reason.contains("relation_phone"), "{reason}");
    }

    fn collect_from(input: Box<dyn BufRead + Send>) -> Vec<Checked> {
        let (sender, mut receiver) = mpsc::channel(100);
        read_jsonl(input, &validator(), &sender, None).unwrap();
        drop(sender);
        let mut all = Vec::new();
        while let Ok(checked) = receiver.try_recv() {
            all.push(checked);
        }
        all
    }

    fn lines_and_reasons(all: &[Checked]) -> Vec<(u64, String)> {
        all.iter()
            .map(|checked| match checked {
                Checked::Invalid { line, reason, .. } => (*line, reason.clone()),
                Checked::Valid(record) => (record.line, "valid".to_owned()),
            })
            .collect()
    }

    fn one_line(record: &str) -> String {
        format!("{}\n", record.replace('\n', " "))
    }

    #[test]
    fn a_line_over_64_kib_is_rejected_naming_it_without_buffering_it() {
        let huge = 32 * 1024 * 1024;
        let input = std::io::repeat(b' ')
            .take(huge)
            .chain(std::io::Cursor::new(format!("\n{}", one_line(VALID))));
        let mut lines = LineReader::new(std::io::BufReader::new(input), MAX_BODY_BYTES);
        assert_eq!(lines.next_line().unwrap(), Some(LineRead::TooLong));
        assert!(
            lines.buffer.capacity() <= 2 * (MAX_BODY_BYTES + 1),
            "buffered {} bytes of a {huge}-byte line",
            lines.buffer.capacity()
        );
        assert_eq!(lines.next_line().unwrap(), Some(LineRead::Complete));
        assert_eq!(lines.line(), one_line(VALID).trim_end().as_bytes());
        assert_eq!(lines.next_line().unwrap(), None);

        let input = std::io::repeat(b'{')
            .take(MAX_BODY_BYTES as u64 + 1)
            .chain(std::io::Cursor::new(format!("\n{}", one_line(VALID))));
        let all = lines_and_reasons(&collect_from(Box::new(std::io::BufReader::new(input))));
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].0, 1);
        assert!(all[0].1.contains("65536-byte"), "{}", all[0].1);
        assert_eq!(all[1], (2, "valid".to_owned()));
    }

    /// Counts the bytes taken from it, to show a reader stopped early.
    struct Counted<R> {
        inner: R,
        taken: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl<R: std::io::Read> std::io::Read for Counted<R> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let read = self.inner.read(buffer)?;
            self.taken
                .fetch_add(read as u64, std::sync::atomic::Ordering::SeqCst);
            Ok(read)
        }
    }

    #[test]
    fn a_csv_record_over_64_kib_stops_the_input_naming_its_line_without_reading_it_whole() {
        let head = "name,cert_no,relation_phone,relation_name,transaction_id\n\
                    张三,640202199007164686,15843991158,李四,c_1\n\
                    张三,640202199007164686,15843991158,\"";
        let huge = 32 * 1024 * 1024;
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = Counted {
            inner: std::io::Cursor::new(head)
                .chain(std::io::repeat(b'x').take(huge))
                .chain(std::io::Cursor::new("\",c_2\n")),
            taken: std::sync::Arc::clone(&taken),
        };
        let (sender, mut receiver) = mpsc::channel(100);
        let error = read_csv(
            Box::new(std::io::BufReader::new(input)),
            &validator(),
            &sender,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                EnqueueError::CsvRecordTooLong {
                    line: 3,
                    max_kib: 64
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("line 3"), "{error}");
        let taken = taken.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            taken < 1024 * 1024,
            "read {taken} bytes of a {huge}-byte record"
        );
        let Ok(Checked::Valid(first)) = receiver.try_recv() else {
            panic!("the record before it was checked")
        };
        assert_eq!(first.line, 2);
    }

    #[test]
    fn a_line_of_exactly_64_kib_is_read() {
        let record = one_line(VALID);
        let padded = format!(
            "{}{}\n",
            record.trim_end(),
            " ".repeat(MAX_BODY_BYTES - record.len() + 1)
        );
        assert_eq!(padded.len(), MAX_BODY_BYTES + 1);
        let all = lines_and_reasons(&collect_from(Box::new(std::io::Cursor::new(padded))));
        assert_eq!(all, [(1, "valid".to_owned())]);
    }

    #[test]
    fn a_utf8_bom_at_the_start_of_a_jsonl_file_is_skipped() {
        let text = format!("\u{feff}{}", one_line(VALID));
        let all = lines_and_reasons(&collect_from(Box::new(std::io::Cursor::new(text))));
        assert_eq!(all, [(1, "valid".to_owned())]);
        // Read one byte at a time, and a lone first byte of a BOM is content.
        let text = format!("\u{feff}{}", one_line(VALID));
        let slow = std::io::BufReader::with_capacity(1, std::io::Cursor::new(text));
        let all = lines_and_reasons(&collect_from(Box::new(slow)));
        assert_eq!(all, [(1, "valid".to_owned())]);
        let mut lines = LineReader::new(&b"\xEF{}\n"[..], 100);
        assert_eq!(lines.next_line().unwrap(), Some(LineRead::Complete));
        assert_eq!(lines.line(), b"\xEF{}");
    }

    #[test]
    fn duplicate_transaction_ids_in_one_input_are_refused_naming_both_lines() {
        let other_contact = VALID.replace("李四", "王五");
        let text = format!(
            "{}\n{}{}",
            one_line(VALID),
            one_line(&other_contact),
            one_line(&VALID.replace("t_1", "t_2"))
        );
        let all = lines_and_reasons(&collect_from(Box::new(std::io::Cursor::new(text))));
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0], (1, "valid".to_owned()));
        assert_eq!(all[1].0, 3);
        assert!(
            all[1].1.contains("t_1") && all[1].1.contains("line 1"),
            "{}",
            all[1].1
        );
        assert_eq!(all[2], (4, "valid".to_owned()));

        let csv = "transaction_id,name,cert_no,relation_phone,relation_name\n\
                   c_1,张三,640202199007164686,15843991158,李四\n\
                   ,张三,640202199007164686,15843991158,李四\n\
                   c_1,王五,640202199007164686,15843991158,李四\n";
        let all = lines_and_reasons(&collect(InputFormat::Csv, csv));
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[2].0, 4);
        assert!(
            all[2].1.contains("c_1") && all[2].1.contains("line 2"),
            "{}",
            all[2].1
        );
    }

    #[test]
    fn csv_rows_are_named_by_their_own_line_with_lone_cr_line_ends() {
        let header = "name,cert_no,relation_phone,relation_name,transaction_id";
        let valid = "张三,640202199007164686,15843991158,李四,c_1";
        let blank = ",640202199007164686,15843991158,李四,c_2";
        for end in ["\r", "\n", "\r\n"] {
            let csv = [header, valid, "", blank, ""].join(end);
            let all =
                lines_and_reasons(&collect(InputFormat::Csv, Box::leak(csv.into_boxed_str())));
            let blank_name = "field `name`: is blank; a value is required";
            let expected = [(2, "valid".to_owned()), (4, blank_name.to_owned())];
            assert_eq!(all, expected, "{end:?}");
        }
    }

    #[test]
    fn a_blank_field_gets_the_same_reason_in_csv_and_jsonl() {
        let header = "name,cert_no,relation_phone,relation_name,transaction_id\n";
        let csv = format!("{header},640202199007164686,15843991158,李四,c_1\n");
        let csv = lines_and_reasons(&collect(InputFormat::Csv, Box::leak(csv.into_boxed_str())));
        let jsonl = one_line(&VALID.replace("张三", ""));
        let jsonl = lines_and_reasons(&collect_from(Box::new(std::io::Cursor::new(jsonl))));
        let spaces = one_line(&VALID.replace("15843991158", "  "));
        let spaces = lines_and_reasons(&collect_from(Box::new(std::io::Cursor::new(spaces))));
        let blank = "field `name`: is blank; a value is required";
        assert_eq!(csv, [(2, blank.to_owned())]);
        assert_eq!(jsonl, [(1, blank.to_owned())]);
        let blank_phone = "field `relation_phone`: is blank; a value is required";
        assert_eq!(spaces, [(1, blank_phone.to_owned())]);
    }

    fn ids_of(checked: &Checked) -> RecordIds {
        match checked {
            Checked::Invalid { ids, .. } => ids.clone(),
            Checked::Valid(_) => panic!("expected an invalid record"),
        }
    }

    #[test]
    fn a_rejected_record_is_named_by_its_readable_transaction_id_and_external_ref() {
        let with_ref = VALID.replace("4686\"", "4685\", \"external_ref\": \"loan-1/c-1\"");
        let both = RecordIds {
            transaction_id: Some("t_1".into()),
            external_ref: Some("loan-1/c-1".into()),
        };
        assert_eq!(ids_of(&check(&with_ref)), both);
        let unreadable = with_ref
            .replace("t_1", "t 1")
            .replace("loan-1/c-1", "a\\nb");
        assert_eq!(ids_of(&check(&unreadable)), RecordIds::default());
        let minted = VALID.replace("\"t_1\"", "\"\"").replace("4686", "4685");
        assert_eq!(ids_of(&check(&minted)), RecordIds::default());
        assert_eq!(ids_of(&check("not json")), RecordIds::default());
        let csv = "transaction_id,external_ref,name,cert_no,relation_phone,relation_name\n\
                   c_1,r-1,张三,640202199007164686,158,李四\n\
                   c_2,r-2,张三,640202199007164686,15843991158,李四\n\
                   c_2,,王五,640202199007164686,15843991158,李四\n";
        let all = collect(InputFormat::Csv, csv);
        assert_eq!(ids_of(&all[0]).transaction_id.as_deref(), Some("c_1"));
        assert_eq!(ids_of(&all[0]).external_ref.as_deref(), Some("r-1"));
        assert_eq!(ids_of(&all[2]).transaction_id.as_deref(), Some("c_2"));
        assert_eq!(ids_of(&all[2]).external_ref, None);
    }

    #[test]
    fn rejects_file_holds_each_rejected_jsonl_line_with_its_reason_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.jsonl");
        let bad = VALID.replace("4686", "4685");
        let text = format!(
            "{}  {}\nnot json\n",
            one_line(VALID),
            one_line(&bad).trim_end()
        );
        let (sender, _receiver) = mpsc::channel(100);
        let file = create_rejects_file(&path).unwrap();
        read_jsonl(
            Box::new(std::io::Cursor::new(text)),
            &validator(),
            &sender,
            Some(file),
        )
        .unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        let entries: Vec<Value> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 2, "{written}");
        assert_eq!(entries[0]["line"], 2);
        assert_eq!(entries[0]["transaction_id"], "t_1");
        assert_eq!(entries[0]["external_ref"], Value::Null);
        assert!(entries[0]["reason"].as_str().unwrap().contains("cert_no"));
        assert_eq!(entries[0]["record"], one_line(&bad).trim_end());
        assert_eq!(entries[1]["line"], 3);
        assert_eq!(entries[1]["record"], "not json");
        assert!(
            entries[1]["reason"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn rejects_file_for_csv_keeps_the_columns_adds_the_reason_and_enqueues_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.csv");
        let text = "transaction_id,name,cert_no,relation_phone,relation_name\r\n\
                    c_1,张三,640202199007164686,15843991158,李四\r\n\
                    c_2,\"张\r\n三\",640202199007164686,158,李四\r\n\
                    c_3,张三\r\n";
        let (sender, _receiver) = mpsc::channel(100);
        let file = create_rejects_file(&path).unwrap();
        let input = Box::new(std::io::Cursor::new(text));
        read_csv(input, &validator(), &sender, Some(file)).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        let mut lines = written.lines();
        assert_eq!(
            lines.next(),
            Some(
                "transaction_id,name,cert_no,relation_phone,relation_name,reject_line,reject_reason"
            )
        );
        assert!(
            written.contains("c_2,\"张\r\n三\",640202199007164686,158,李四,3,\"field `name`"),
            "{written}"
        );
        assert!(
            written.contains("c_3,张三,,,,5,field `cert_no`: is required"),
            "{written}"
        );
        let again = lines_and_reasons(&collect(
            InputFormat::Csv,
            Box::leak(written.into_boxed_str()),
        ));
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(again[0].1.contains("`name`") && again[1].1.contains("cert_no"));
    }

    #[test]
    fn rejects_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.jsonl");
        create_rejects_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let error = create_rejects_file(&path).unwrap_err();
        assert!(
            matches!(error, EnqueueError::RejectsExist { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("already exists"), "{error}");
    }

    fn lines_of(all: &[Checked]) -> Vec<u64> {
        lines_and_reasons(all)
            .into_iter()
            .map(|(line, _)| line)
            .collect()
    }

    #[test]
    fn csv_line_numbers_are_physical_lines_with_crlf_blank_lines_and_multi_line_cells() {
        let crlf = "name,cert_no\r\na,b\r\nc,d\r\n";
        assert_eq!(lines_of(&collect(InputFormat::Csv, crlf)), [2, 3]);
        let blank = "name,cert_no\n\na,b\n\n\nc,d\n";
        assert_eq!(lines_of(&collect(InputFormat::Csv, blank)), [3, 6]);
        let blank_crlf = "name,cert_no\r\n\r\na,b\r\n\r\nc,d\r\n";
        assert_eq!(lines_of(&collect(InputFormat::Csv, blank_crlf)), [3, 5]);
        let multi = "name,cert_no\na,\"b\r\nb\"\r\nc,d\n";
        assert_eq!(lines_of(&collect(InputFormat::Csv, multi)), [2, 4]);
    }

    #[test]
    fn formats_follow_the_file_extension() {
        assert_eq!(
            InputFormat::from_path(Path::new("a/b.JSONL")),
            Some(InputFormat::Jsonl)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("x.ndjson")),
            Some(InputFormat::Jsonl)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("x.csv")),
            Some(InputFormat::Csv)
        );
        assert_eq!(InputFormat::from_path(Path::new("x.txt")), None);
    }
}
