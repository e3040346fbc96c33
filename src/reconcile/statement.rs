//! Reading the upstream's statement: a CSV file, UTF-8 or GBK, one billed
//! query per row, streamed row by row (memory does not grow with the file).
//!
//! The layout defaults to the sandbox's `/bill` (header
//! `biz_no,transaction_id,app_id,billed_at`); other layouts name their three
//! columns with a [`ColumnMap`]. Extra columns are ignored, lines starting
//! with `#` (the banner and footer lines of Alipay's downloaded statements)
//! are skipped, and cells are trimmed (Alipay pads cells with tabs). Times are
//! `yyyy-MM-dd HH:mm:ss` (or `/` for `-`, or `T` for the space) in the
//! reconciliation zone. A row that cannot be read is an error naming its line,
//! never silently skipped: a skipped row could hide a billed query.
//!
//! The CSV is split on bytes and only the needed cells are decoded: GBK's
//! multi-byte sequences never contain `,`, `"`, `#` or line ends, so this is
//! safe for both encodings (a UTF-8 statement is still checked whole, line by
//! line, so one stray byte is reported at its line). This module reads the
//! file; it knows nothing of the database.
//!
//! Bounds: a record (a line, or a quoted cell spanning lines) over
//! [`MAX_RECORD_BYTES`] is an error naming its line, found without reading
//! more than that of it, and each of the three cells read is at most
//! [`MAX_CELL_BYTES`].

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::ReconcileError;
use crate::capped::{CappedRecords, RecordLimit, RecordTooLong};
use crate::line_ends::{LineEnds, LineIndex};

/// The longest record (header included) read: real statement lines are a
/// few hundred bytes.
pub(crate) const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// The longest biz_no, transaction_id or time cell.
pub(crate) const MAX_CELL_BYTES: usize = 1024;
/// The CSV reader's buffer.
const READ_BUFFER: usize = 1 << 16;

/// `--encoding`: `auto` reads the file once to check that it is valid UTF-8
/// (then UTF-8, BOM stripped) and otherwise takes it as GBK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EncodingChoice {
    #[default]
    Auto,
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// GBK, decoded as its superset GB18030 (which also covers GB2312).
    #[value(alias = "gb18030", alias = "gb2312")]
    Gbk,
}

/// The encoding actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextEncoding {
    Utf8,
    Gbk,
}

impl TextEncoding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Utf8 => "UTF-8",
            Self::Gbk => "GBK",
        }
    }

    fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            Self::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Self::Gbk => {
                encoding_rs::GBK.decode_without_bom_handling_and_without_replacement(bytes)
            }
        }
    }
}

/// Which header names hold the three cells reconciliation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnMap {
    pub(crate) biz_no: String,
    pub(crate) transaction_id: String,
    pub(crate) time: String,
}

impl Default for ColumnMap {
    /// The sandbox's `/bill` header.
    fn default() -> Self {
        Self {
            biz_no: "biz_no".into(),
            transaction_id: "transaction_id".into(),
            time: "billed_at".into(),
        }
    }
}

/// `biz_no=业务流水号,transaction_id=商户订单号,time=计费时间`; keys left out keep
/// their default name. `billed_at` is accepted for `time`.
impl FromStr for ColumnMap {
    type Err = ReconcileError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ReconcileError::BadColumns(text.to_owned());
        let mut map = Self::default();
        for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (key, name) = pair.split_once('=').ok_or_else(bad)?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad());
            }
            let slot = match key.trim() {
                "biz_no" => &mut map.biz_no,
                "transaction_id" => &mut map.transaction_id,
                "time" | "billed_at" => &mut map.time,
                _ => return Err(bad()),
            };
            *slot = name.to_owned();
        }
        Ok(map)
    }
}

/// One billed query. Reused between rows to save allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatementRow {
    /// 1-based line number in the file (comments and the header count).
    pub(crate) line: u64,
    pub(crate) biz_no: String,
    pub(crate) transaction_id: String,
    pub(crate) billed_at: DateTime<Utc>,
}

/// An open statement positioned after its header.
pub(crate) struct Statement {
    reader: csv::Reader<CappedRecords<LineEnds<File>>>,
    /// Where the line ends are, to name the line of each record.
    lines: LineIndex,
    /// The line the last record read starts on.
    record_line: u64,
    limit: RecordLimit,
    record: csv::ByteRecord,
    encoding: TextEncoding,
    /// Field indices of biz_no, transaction_id and time.
    fields: [usize; 3],
    names: ColumnMap,
    offset: FixedOffset,
    row: StatementRow,
    total_bytes: u64,
}

impl Statement {
    /// Opens `path`, settles the encoding and finds the mapped columns in the
    /// header (the first line that is not a `#` comment).
    pub(crate) fn open(
        path: &Path,
        choice: EncodingChoice,
        columns: &ColumnMap,
        offset: FixedOffset,
    ) -> Result<Self, ReconcileError> {
        let unreadable = |source| ReconcileError::ReadStatement {
            path: path.to_path_buf(),
            source,
        };
        let encoding = match choice {
            EncodingChoice::Auto => detect(path)?,
            EncodingChoice::Utf8 => TextEncoding::Utf8,
            EncodingChoice::Gbk => TextEncoding::Gbk,
        };
        let file = File::open(path).map_err(unreadable)?;
        let total_bytes = file.metadata().map_err(unreadable)?.len();
        let (line_ends, lines) = LineEnds::new(file);
        let (capped, limit) = CappedRecords::new(line_ends, MAX_RECORD_BYTES);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .buffer_capacity(READ_BUFFER)
            .from_reader(capped);
        let mut statement = Self {
            reader,
            lines,
            record_line: 0,
            limit,
            record: csv::ByteRecord::new(),
            encoding,
            fields: [0; 3],
            names: columns.clone(),
            offset,
            row: StatementRow {
                line: 0,
                biz_no: String::new(),
                transaction_id: String::new(),
                billed_at: DateTime::<Utc>::MIN_UTC,
            },
            total_bytes,
        };
        statement.read_header(path)?;
        Ok(statement)
    }

    pub(crate) fn encoding(&self) -> TextEncoding {
        self.encoding
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn bytes_read(&self) -> u64 {
        self.reader.position().byte()
    }

    fn read_header(&mut self, path: &Path) -> Result<(), ReconcileError> {
        if !self.read_record()? {
            return Err(ReconcileError::NoHeader {
                path: path.to_path_buf(),
            });
        }
        let line = self.record_line;
        let mut header = Vec::with_capacity(self.record.len());
        for (at, cell) in self.record.iter().enumerate() {
            let cell = if at == 0 && self.encoding == TextEncoding::Utf8 {
                cell.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(cell)
            } else {
                cell
            };
            let name = self.encoding.decode(cell).ok_or_else(|| {
                malformed(
                    line,
                    format!("header is not valid {}", self.encoding.name()),
                )
            })?;
            header.push(name.trim().to_owned());
        }
        let find = |column: &str| {
            header
                .iter()
                .position(|name| name == column)
                .ok_or_else(|| ReconcileError::MissingColumn {
                    line,
                    column: column.to_owned(),
                    found: header.join(","),
                })
        };
        self.fields = [
            find(&self.names.biz_no)?,
            find(&self.names.transaction_id)?,
            find(&self.names.time)?,
        ];
        Ok(())
    }

    fn read_record(&mut self) -> Result<bool, ReconcileError> {
        let start = self.reader.position().clone();
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| csv_error(&e))?;
        let next_start = self.reader.position().byte();
        self.limit.next_record_at(next_start);
        // csv names a record by the line where its read started, before
        // the blank lines it skipped.
        self.record_line = start.line() + self.lines.blank_lines_at(start.byte());
        self.lines.forget_before(next_start);
        if more && self.encoding == TextEncoding::Utf8 {
            check_utf8(&self.record, self.record_line)?;
        }
        Ok(more)
    }

    /// The next billed row, or `None` at the end of the file.
    pub(crate) fn next_row(&mut self) -> Result<Option<&StatementRow>, ReconcileError> {
        if !self.read_record()? {
            return Ok(None);
        }
        let Self {
            record,
            encoding,
            fields,
            names,
            offset,
            row,
            record_line,
            ..
        } = self;
        let line = *record_line;
        let [biz_field, transaction_field, time_field] = *fields;
        row.line = line;
        refill(
            &mut row.biz_no,
            &cell(record, *encoding, line, biz_field, &names.biz_no)?,
        );
        let transaction_id = cell(
            record,
            *encoding,
            line,
            transaction_field,
            &names.transaction_id,
        )?;
        refill(&mut row.transaction_id, &transaction_id);
        let time = cell(record, *encoding, line, time_field, &names.time)?;
        row.billed_at = parse_time(&time, *offset).ok_or_else(|| {
            malformed(
                line,
                format!(
                    "`{time}` in column `{}` is not yyyy-MM-dd HH:mm:ss",
                    names.time
                ),
            )
        })?;
        Ok(Some(&self.row))
    }
}

/// A trimmed, non-empty cell, decoded (borrowed when it is UTF-8 already).
fn cell<'r>(
    record: &'r csv::ByteRecord,
    encoding: TextEncoding,
    line: u64,
    field: usize,
    name: &str,
) -> Result<Cow<'r, str>, ReconcileError> {
    let bytes = record.get(field).ok_or_else(|| {
        malformed(
            line,
            format!(
                "{} fields, but column `{name}` is field {}",
                record.len(),
                field + 1
            ),
        )
    })?;
    if bytes.len() > MAX_CELL_BYTES {
        return Err(malformed(
            line,
            format!(
                "column `{name}` is {} bytes, over the limit of {MAX_CELL_BYTES}",
                bytes.len()
            ),
        ));
    }
    let text = encoding.decode(bytes).ok_or_else(|| {
        malformed(
            line,
            format!("column `{name}` is not valid {}", encoding.name()),
        )
    })?;
    let trimmed = match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
        Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
    };
    if trimmed.is_empty() {
        return Err(malformed(line, format!("column `{name}` is empty")));
    }
    Ok(trimmed)
}

/// A UTF-8 statement is checked record by record (not only the cells read),
/// so one stray byte is reported at its line.
fn check_utf8(record: &csv::ByteRecord, line: u64) -> Result<(), ReconcileError> {
    let Err(error) = std::str::from_utf8(record.as_slice()) else {
        return Ok(());
    };
    let bad_at = error.valid_up_to();
    let mut field_end = 0;
    let field = record
        .iter()
        .position(|cell| {
            field_end += cell.len();
            bad_at < field_end
        })
        .map_or(0, |at| at + 1);
    let byte = record.as_slice().get(bad_at).copied().unwrap_or(0);
    Err(malformed(
        line,
        format!(
            "byte 0x{byte:02X} in field {field} is not valid UTF-8 (the statement is read as \
             UTF-8; fix the line, or pass --encoding gbk if the file is GBK)"
        ),
    ))
}

fn refill(slot: &mut String, value: &str) {
    slot.clear();
    slot.push_str(value);
}

fn malformed(line: u64, reason: String) -> ReconcileError {
    ReconcileError::MalformedLine { line, reason }
}

fn csv_error(error: &csv::Error) -> ReconcileError {
    let line = error.position().map_or(0, csv::Position::line);
    if let Some(too_long) = RecordTooLong::within(error) {
        return malformed(
            too_long.line,
            format!(
                "line (or quoted cell) longer than {} KiB: not a statement row",
                too_long.max_kib
            ),
        );
    }
    match error.kind() {
        csv::ErrorKind::Io(e) => ReconcileError::MalformedLine {
            line,
            reason: format!("read error: {e}"),
        },
        _ => malformed(line, error.to_string()),
    }
}

/// The statement's local time in `offset`, as UTC.
pub(crate) fn parse_time(text: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        "%Y-%m-%d %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ];
    let local = FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())?;
    local
        .checked_sub_signed(chrono::TimeDelta::seconds(i64::from(
            offset.local_minus_utc(),
        )))
        .map(|utc| utc.and_utc())
}

/// UTF-8 when the file is valid UTF-8 from end to end, starts with a UTF-8
/// BOM, or has many valid multi-byte UTF-8 sequences for each invalid one (a
/// UTF-8 file with a stray byte: its line is then reported by the reader);
/// anything else GBK (GBK text holds few sequences that happen to be valid
/// UTF-8, and many that are not). Read in chunks, so a multi-byte sequence
/// across a chunk boundary is carried over.
fn detect(path: &Path) -> Result<TextEncoding, ReconcileError> {
    /// Valid multi-byte sequences needed per invalid one to call it UTF-8.
    const VALID_PER_INVALID: u64 = 16;
    let unreadable = |source| ReconcileError::ReadStatement {
        path: PathBuf::from(path),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut carried = 0;
    let (mut valid, mut invalid) = (0u64, 0u64);
    let mut is_start = true;
    loop {
        let read = file.read(&mut buffer[carried..]).map_err(unreadable)?;
        let filled = carried + read;
        let mut chunk = &buffer[..filled];
        if is_start && chunk.len() >= 3 {
            if chunk.starts_with(b"\xEF\xBB\xBF") {
                return Ok(TextEncoding::Utf8);
            }
            is_start = false;
        }
        let count_leads =
            |bytes: &[u8]| u64::try_from(bytes.iter().filter(|b| **b >= 0xC0).count()).unwrap_or(0);
        let kept = loop {
            match std::str::from_utf8(chunk) {
                Ok(text) => {
                    valid += count_leads(text.as_bytes());
                    break 0;
                }
                Err(e) => {
                    let (good, rest) = chunk.split_at(e.valid_up_to());
                    valid += count_leads(good);
                    match e.error_len() {
                        Some(bad) => {
                            invalid += 1;
                            chunk = rest.get(bad..).unwrap_or_default();
                        }
                        // Cut at the chunk's end: carried over to the next read.
                        None if read > 0 => break rest.len(),
                        None => {
                            invalid += 1;
                            break 0;
                        }
                    }
                }
            }
        };
        if read == 0 {
            let is_utf8 = invalid == 0 || valid >= invalid.saturating_mul(VALID_PER_INVALID);
            return Ok(if is_utf8 {
                TextEncoding::Utf8
            } else {
                TextEncoding::Gbk
            });
        }
        buffer.copy_within(filled - kept..filled, 0);
        carried = kept;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::Write;

    use super::*;

    fn utc8() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn rows(statement: &mut Statement) -> Vec<StatementRow> {
        let mut rows = Vec::new();
        while let Some(row) = statement.next_row().unwrap() {
            rows.push(row.clone());
        }
        rows
    }

    #[test]
    fn the_sandbox_bill_is_read_with_times_converted_from_utc8() {
        let file = write(
            b"\xEF\xBB\xBFbiz_no,transaction_id,app_id,billed_at\nZM1,t1,app,2024-05-21 00:30:00\n",
        );
        let mut statement = Statement::open(
            file.path(),
            EncodingChoice::Auto,
            &ColumnMap::default(),
            utc8(),
        )
        .unwrap();
        assert_eq!(statement.encoding(), TextEncoding::Utf8);
        let rows = rows(&mut statement);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 2);
        assert_eq!(
            (rows[0].biz_no.as_str(), rows[0].transaction_id.as_str()),
            ("ZM1", "t1")
        );
        assert_eq!(rows[0].billed_at.to_rfc3339(), "2024-05-20T16:30:00+00:00");
    }

    #[test]
    fn a_gbk_statement_with_mapped_chinese_columns_comments_and_tabs_is_read() {
        let text = "#支付宝业务明细查询\n#账号：[20881234]\n\
                    业务流水号,商户订单号,备注,计费时间\n\
                    ZM9\t,t9\t,联系人验证,2024/05/21 08:00:00\n\
                    #-----业务明细列表结束-----\n";
        let (bytes, _, _) = encoding_rs::GBK.encode(text);
        let file = write(&bytes);
        let columns: ColumnMap = "biz_no=业务流水号,transaction_id=商户订单号,time=计费时间"
            .parse()
            .unwrap();
        let mut statement =
            Statement::open(file.path(), EncodingChoice::Auto, &columns, utc8()).unwrap();
        assert_eq!(statement.encoding(), TextEncoding::Gbk);
        let rows = rows(&mut statement);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 4);
        assert_eq!(
            (rows[0].biz_no.as_str(), rows[0].transaction_id.as_str()),
            ("ZM9", "t9")
        );
        assert_eq!(rows[0].billed_at.to_rfc3339(), "2024-05-21T00:00:00+00:00");
    }

    #[test]
    fn a_bad_row_is_an_error_naming_its_line() {
        let file = write(
            b"biz_no,transaction_id,billed_at\nZM1,t1,2024-05-21 00:30:00\nZM2,t2,yesterday\n",
        );
        let mut statement = Statement::open(
            file.path(),
            EncodingChoice::Utf8,
            &ColumnMap::default(),
            utc8(),
        )
        .unwrap();
        assert!(statement.next_row().unwrap().is_some());
        let error = statement.next_row().unwrap_err();
        assert!(
            matches!(error, ReconcileError::MalformedLine { line: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("line 3"), "{error}");

        let short = write(b"biz_no,transaction_id,billed_at\nZM1,t1\n");
        let mut statement = Statement::open(
            short.path(),
            EncodingChoice::Utf8,
            &ColumnMap::default(),
            utc8(),
        )
        .unwrap();
        let error = statement.next_row().unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn a_missing_column_names_the_header_line_and_what_was_found() {
        let file = write(b"a,b\n1,2\n");
        let error = Statement::open(
            file.path(),
            EncodingChoice::Auto,
            &ColumnMap::default(),
            utc8(),
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("biz_no"), "{error}");
        assert!(error.to_string().contains("a,b"), "{error}");
    }

    #[test]
    fn column_maps_reject_unknown_keys_and_empty_names() {
        assert!("biz=x".parse::<ColumnMap>().is_err());
        assert!("biz_no=".parse::<ColumnMap>().is_err());
        let map: ColumnMap = "time=t".parse().unwrap();
        assert_eq!((map.biz_no.as_str(), map.time.as_str()), ("biz_no", "t"));
    }

    #[test]
    fn a_giant_cell_is_an_error_naming_its_line() {
        let mut bytes =
            b"biz_no,transaction_id,app_id,billed_at\nZM1,t1,a,2024-05-21 00:30:00\nZM2,t2,"
                .to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 300 * 1024));
        bytes.extend_from_slice(b",2024-05-21 00:30:00\nZM3,t3,a,2024-05-21 00:30:00\n");
        let file = write(&bytes);
        let mut statement = Statement::open(
            file.path(),
            EncodingChoice::Utf8,
            &ColumnMap::default(),
            utc8(),
        )
        .unwrap();
        assert!(statement.next_row().unwrap().is_some());
        let error = statement.next_row().unwrap_err();
        assert!(
            matches!(error, ReconcileError::MalformedLine { line: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("KiB"), "{error}");
    }

    #[test]
    fn a_giant_quoted_cell_over_many_lines_and_a_giant_header_are_errors_too() {
        let mut bytes = b"biz_no,transaction_id,app_id,billed_at\nZM2,t2,\"".to_vec();
        for _ in 0..100_000 {
            bytes.extend_from_slice(b"ab\n");
        }
        bytes.extend_from_slice(b"\",2024-05-21 00:30:00\n");
        let file = write(&bytes);
        let mut statement = Statement::open(
            file.path(),
            EncodingChoice::Utf8,
            &ColumnMap::default(),
            utc8(),
        )
        .unwrap();
        let error = statement.next_row().unwrap_err();
        assert!(
            matches!(error, ReconcileError::MalformedLine { .. }),
            "{error}"
        );

        let header = write(&vec![b'h'; 1 << 20]);
        let error = Statement::open(
            header.path(),
            EncodingChoice::Utf8,
            &ColumnMap::default(),
            utc8(),
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn one_stray_invalid_byte_in_a_utf8_statement_is_reported_at_its_line() {
        let mut bytes = "业务流水号,商户订单号,备注,计费时间\n\
                         ZM1,t1,联系人验证,2024-05-21 08:00:00\n\
                         ZM2,t2,联系人验证,2024-05-21 08:00:00\n"
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(b"ZM3,t3,\xFF,2024-05-21 08:00:00\n");
        bytes.extend_from_slice("ZM4,t4,联系人验证,2024-05-21 08:00:00\n".as_bytes());
        let file = write(&bytes);
        let columns: ColumnMap = "biz_no=业务流水号,transaction_id=商户订单号,time=计费时间"
            .parse()
            .unwrap();
        let mut statement =
            Statement::open(file.path(), EncodingChoice::Auto, &columns, utc8()).unwrap();
        assert_eq!(statement.encoding(), TextEncoding::Utf8);
        assert!(statement.next_row().unwrap().is_some());
        assert!(statement.next_row().unwrap().is_some());
        let error = statement.next_row().unwrap_err();
        assert!(
            matches!(error, ReconcileError::MalformedLine { line: 4, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn a_gbk_statement_is_still_taken_as_gbk() {
        let mut text = String::from("业务流水号,商户订单号,备注,计费时间\n");
        for n in 0..50 {
            text.push_str(&format!(
                "ZM{n},t{n},联系人验证张三李四,2024-05-21 08:00:00\n"
            ));
        }
        let file = write(&encoding_rs::GBK.encode(&text).0);
        assert_eq!(detect(file.path()).unwrap(), TextEncoding::Gbk);
    }

    #[test]
    fn rows_after_blank_lines_and_with_cr_only_line_ends_are_named_by_their_own_line() {
        for end in ["\n", "\r\n", "\r"] {
            let text = format!(
                "#banner{end}biz_no,transaction_id,billed_at{end}ZM1,t1,2024-05-21 00:30:00{end}\
                 {end}{end}ZM2,t2,2024-05-21 00:30:00{end}ZM3,t3,yesterday{end}"
            );
            let file = write(text.as_bytes());
            let mut statement = Statement::open(
                file.path(),
                EncodingChoice::Utf8,
                &ColumnMap::default(),
                utc8(),
            )
            .unwrap();
            assert_eq!(statement.next_row().unwrap().unwrap().line, 3, "{end:?}");
            assert_eq!(statement.next_row().unwrap().unwrap().line, 6, "{end:?}");
            let error = statement.next_row().unwrap_err();
            assert!(error.to_string().contains("line 7"), "{end:?}: {error}");
        }
    }

    #[test]
    fn utf8_split_across_detection_chunks_is_still_utf8() {
        let mut bytes = b"biz_no,transaction_id,billed_at\n".to_vec();
        while bytes.len() < (1 << 16) - 1 {
            bytes.push(b'#');
        }
        bytes.extend_from_slice("张\n".as_bytes());
        let file = write(&bytes);
        assert_eq!(detect(file.path()).unwrap(), TextEncoding::Utf8);
    }
}
