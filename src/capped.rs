//! A reader that bounds the record a CSV parser is reading, for files from
//! outside (`enqueue`'s CSV input, `reconcile`'s statements): a record over
//! the maximum is an error naming its line, found after reading the maximum
//! and never more. It must not interpret the bytes: the CSV reader does.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The input as the CSV reader sees it: reading stops with [`RecordTooLong`]
/// once the record being read reaches its maximum.
///
/// The CSV reader asks for more bytes only when it has consumed every byte
/// it was given, so when the reads reach the limit (the current record's start
/// plus the maximum, moved forward by [`RecordLimit::next_record_at`] after
/// each record), the current record holds all of them.
pub(crate) struct CappedRecords<R> {
    inner: R,
    /// Bytes handed to the CSV reader so far.
    handed: u64,
    /// Line ends among them, to name the line where the limit is reached.
    line_ends: u64,
    limit: Arc<AtomicU64>,
    max_record_bytes: u64,
}

/// The handle that moves a [`CappedRecords`]' limit after each record.
#[derive(Clone)]
pub(crate) struct RecordLimit {
    limit: Arc<AtomicU64>,
    max_record_bytes: u64,
}

impl RecordLimit {
    /// The next record starts at byte `start` of the input (the CSV reader's
    /// position after the record it just returned).
    pub(crate) fn next_record_at(&self, start: u64) {
        self.limit.store(
            start.saturating_add(self.max_record_bytes),
            Ordering::Relaxed,
        );
    }
}

/// The io error a [`CappedRecords`] returns at its limit; carries the line.
#[derive(Debug, thiserror::Error)]
#[error("a record longer than {max_kib} KiB at line {line}")]
pub(crate) struct RecordTooLong {
    pub(crate) line: u64,
    pub(crate) max_kib: u64,
}

impl RecordTooLong {
    /// The [`RecordTooLong`] inside a CSV reader's error, if that is what it is.
    pub(crate) fn within(error: &csv::Error) -> Option<&Self> {
        match error.kind() {
            csv::ErrorKind::Io(e) => e.get_ref().and_then(|inner| inner.downcast_ref()),
            _ => None,
        }
    }
}

impl<R: Read> CappedRecords<R> {
    pub(crate) fn new(inner: R, max_record_bytes: u64) -> (Self, RecordLimit) {
        let limit = Arc::new(AtomicU64::new(max_record_bytes));
        let reader = Self {
            inner,
            handed: 0,
            line_ends: 0,
            limit: Arc::clone(&limit),
            max_record_bytes,
        };
        (
            reader,
            RecordLimit {
                limit,
                max_record_bytes,
            },
        )
    }
}

impl<R: Read> Read for CappedRecords<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        let room = limit.saturating_sub(self.handed);
        if room == 0 {
            return Err(std::io::Error::other(RecordTooLong {
                line: self.line_ends + 1,
                max_kib: self.max_record_bytes / 1024,
            }));
        }
        let wanted = buffer
            .len()
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        let Some(slice) = buffer.get_mut(..wanted) else {
            return Ok(0);
        };
        let read = self.inner.read(slice)?;
        let got = slice.get(..read).unwrap_or_default();
        self.line_ends += u64::try_from(got.iter().filter(|b| **b == b'\n').count()).unwrap_or(0);
        self.handed += u64::try_from(read).unwrap_or(0);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_record_over_the_maximum_is_an_error_naming_its_line_after_reading_the_maximum() {
        let mut input = b"a,b\n1,2\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend(b"\n3,4\n");
        let (capped, limit) = CappedRecords::new(&input[..], 100);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .buffer_capacity(16)
            .from_reader(capped);
        let mut record = csv::ByteRecord::new();
        for _ in 0..2 {
            assert!(reader.read_byte_record(&mut record).unwrap());
            limit.next_record_at(reader.position().byte());
        }
        let error = reader.read_byte_record(&mut record).unwrap_err();
        let too_long = RecordTooLong::within(&error).expect("RecordTooLong");
        assert_eq!(too_long.line, 3);
        assert!(
            reader.get_ref().handed <= 8 + 100,
            "read {} bytes: past the maximum",
            reader.get_ref().handed
        );
    }
}
