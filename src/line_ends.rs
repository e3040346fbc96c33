//! Line numbers for CSV inputs (the `enqueue` input, the reconciliation
//! statement). The csv crate ends a record at LF, CRLF or a lone CR but counts
//! lines at LF only, and names a record by the line where its read started,
//! before any blank lines it skips. [`LineEnds`] reads a lone CR as LF and
//! keeps the bytes of the record being read, so that [`LineIndex`] can count
//! the blank lines before it: a record's physical line is
//! `position.line() + index.blank_lines_at(position.byte())`.

use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

/// A CSV input's bytes as the CSV reader gets them, noting where lines end.
/// A lone CR (old Mac line ends) is read as LF, byte for byte: the CSV reader
/// ends a record at either but counts lines at LF only. CRLF is left alone
/// and offsets do not move; CR is never a GBK trail byte, so this holds in
/// both encodings.
pub(crate) struct LineEnds<R> {
    inner: R,
    /// A byte read to see what followed a CR, handed out with the next read.
    lookahead: Option<u8>,
    index: LineIndex,
}

/// The bytes handed to the CSV reader since the start of the record being
/// read, to count the blank lines it skips before a record (csv names a
/// record by the line where its read started). Bounded: the reader is capped
/// ([`CappedRecords`]) at [`MAX_RECORD_BYTES`] past that start, so at most
/// that much plus one read buffer is held.
#[derive(Clone, Default)]
pub(crate) struct LineIndex(Arc<Mutex<Recent>>);

#[derive(Default)]
struct Recent {
    /// Input offset of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
}

impl LineIndex {
    /// How many line ends follow `offset` before anything else: the blank
    /// lines a record read from `offset` skipped.
    pub(crate) fn blank_lines_at(&self, offset: u64) -> u64 {
        let recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = usize::try_from(offset.saturating_sub(recent.start)).unwrap_or(usize::MAX);
        let after = recent.bytes.get(skip..).unwrap_or_default();
        let ends = after.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
        u64::try_from(ends.filter(|b| **b == b'\n').count()).unwrap_or(u64::MAX)
    }

    /// Forgets what is before `offset`, where the next record's read starts.
    pub(crate) fn forget_before(&self, offset: u64) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let drop = usize::try_from(offset.saturating_sub(recent.start)).unwrap_or(usize::MAX);
        let drop = drop.min(recent.bytes.len());
        recent.bytes.drain(..drop);
        recent.start += u64::try_from(drop).unwrap_or(u64::MAX);
    }

    fn extend(&self, bytes: &[u8]) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        recent.bytes.extend_from_slice(bytes);
    }
}

impl<R: Read> LineEnds<R> {
    pub(crate) fn new(inner: R) -> (Self, LineIndex) {
        let index = LineIndex::default();
        let reader = Self {
            inner,
            lookahead: None,
            index: index.clone(),
        };
        (reader, index)
    }
}

impl<R: Read> Read for LineEnds<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        if let Some(byte) = self.lookahead.take() {
            buffer[0] = byte;
            filled = 1;
        }
        filled += self.inner.read(&mut buffer[filled..])?;
        for index in 0..filled {
            if buffer[index] == b'\r' {
                let next = if index + 1 < filled {
                    Some(buffer[index + 1])
                } else {
                    let mut one = [0u8; 1];
                    let read = self.inner.read(&mut one)?;
                    self.lookahead = (read == 1).then_some(one[0]);
                    self.lookahead
                };
                if next != Some(b'\n') {
                    buffer[index] = b'\n';
                }
            }
        }
        self.index.extend(&buffer[..filled]);
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn lone_crs_are_read_as_line_feeds_whatever_the_read_sizes() {
        let input = b"a\rb\r\nc\r\rd\r";
        for size in 1..=input.len() {
            let (mut reader, index) = LineEnds::new(&input[..]);
            let mut out = Vec::new();
            let mut buffer = vec![0u8; size];
            loop {
                let read = reader.read(&mut buffer).unwrap();
                if read == 0 {
                    break;
                }
                out.extend_from_slice(&buffer[..read]);
            }
            assert_eq!(out, b"a\nb\r\nc\n\nd\n", "buffer of {size}");
            assert_eq!(index.blank_lines_at(3), 1, "buffer of {size}");
            assert_eq!(index.blank_lines_at(5), 0, "buffer of {size}");
        }
    }
}
