//! The reconciliation statement reader (`reconcile::statement`) on arbitrary
//! files: UTF-8 and GBK (and the automatic choice), in both layouts (the
//! sandbox's `/bill` header, and Alipay's downloaded statement with Chinese
//! column names mapped by `--columns`).
//!
//! Input: the first byte chooses the encoding (low two bits: auto, UTF-8,
//! GBK) and the layout (bit 2); the rest is the file.
//!
//! Oracles: no panic; memory bounded (libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb`); every row read carries a line within the file, in
//! increasing order, with its cells trimmed, non-empty and within the cell
//! limit; every error but "no header" names a line within the file.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use zhima_worker::fuzzing::{StatementEncoding, read_statement};

const ALIPAY_COLUMNS: &str = "biz_no=业务流水号,transaction_id=商户订单号,time=计费时间";
const MAX_CELL_BYTES: usize = 1024;

/// One file rewritten per input (in memory-backed /dev/shm when there is one).
static FILE: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    let path = dir.path().join("statement.csv");
    (dir, path)
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, content)) = data.split_first() else {
        return;
    };
    let encoding = match mode & 3 {
        0 | 3 => StatementEncoding::Auto,
        1 => StatementEncoding::Utf8,
        _ => StatementEncoding::Gbk,
    };
    let columns = (mode & 4 != 0).then_some(ALIPAY_COLUMNS);
    let path = &FILE.1;
    std::fs::write(path, content).expect("writing the statement");
    // A line is ended by LF, CRLF or a lone CR: no line number can exceed this.
    let line_ends = content
        .iter()
        .enumerate()
        .filter(|(at, byte)| {
            **byte == b'\n' || (**byte == b'\r' && content.get(at + 1) != Some(&b'\n'))
        })
        .count();
    let lines = 1 + line_ends as u64;
    match read_statement(path, encoding, columns) {
        Ok(rows) => {
            let mut previous = 0;
            for row in rows {
                assert!(
                    row.line > previous && row.line <= lines,
                    "row line {} after {previous}, of {lines}",
                    row.line
                );
                previous = row.line;
                for cell in [&row.biz_no, &row.transaction_id] {
                    assert!(!cell.is_empty(), "an empty cell was accepted");
                    assert_eq!(cell.trim(), cell.as_str(), "a cell was not trimmed");
                    assert!(
                        cell.len() <= 4 * MAX_CELL_BYTES,
                        "a giant cell was accepted"
                    );
                }
            }
        }
        Err(error) if error.no_header => {}
        Err(error) => {
            let line = error
                .line
                .unwrap_or_else(|| panic!("the error names no line: {}", error.message));
            assert!(
                (1..=lines).contains(&line),
                "the error names line {line} of {lines}: {}",
                error.message
            );
            assert!(
                error.message.contains(&format!("line {line}")),
                "the message does not say its line: {}",
                error.message
            );
        }
    }
});
