//! Handlers of the `enqueue` operator command (`status` has its own file,
//! `requeue-dead` is with the other dead-letter tools in `dead`). They open
//! inputs, print, and choose exit codes; the work is in `crate::queue::enqueue`.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::EXIT_USAGE;
use crate::config::Settings;
use crate::queue::enqueue::{self, EnqueueEvent, EnqueueOptions, EnqueueReport, InputFormat};

/// `enqueue`'s exit code when some records were invalid.
const EXIT_INVALID: u8 = 2;

/// The arguments of `enqueue`.
pub(crate) struct EnqueueInput<'a> {
    pub(crate) file: &'a Path,
    pub(crate) format: Option<InputFormat>,
    pub(crate) strict: bool,
    pub(crate) rejects: Option<PathBuf>,
    pub(crate) batch_id: Option<String>,
    pub(crate) fresh: bool,
}

pub(crate) async fn enqueue(
    settings: &Settings,
    input: EnqueueInput<'_>,
) -> anyhow::Result<ExitCode> {
    let EnqueueInput {
        file,
        format,
        strict,
        rejects,
        batch_id,
        fresh,
    } = input;
    let is_stdin = file == Path::new("-");
    let guessed = if is_stdin {
        Some(InputFormat::Jsonl)
    } else {
        InputFormat::from_path(file)
    };
    let Some(format) = format.or(guessed) else {
        eprintln!(
            "error: cannot tell the format of {} from its extension; pass --format jsonl or --format csv",
            file.display()
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| progress_bar(input_size(file, is_stdin)));
    let input = open_input(file, is_stdin, progress.as_ref())?;
    let mut observer = |event: EnqueueEvent<'_>| print_event(progress.as_ref(), event);
    let options = EnqueueOptions {
        strict,
        rejects,
        batch_id,
        fresh,
        ..EnqueueOptions::default()
    };
    let outcome = enqueue::enqueue(input, format, settings, &options, &mut observer).await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let report = outcome.context("enqueueing jobs")?;
    print_summary(&report);
    Ok(if report.invalid > 0 {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(report: &EnqueueReport) {
    let withheld = if report.withheld > 0 {
        format!(
            " (--strict: {} valid records not published)",
            report.withheld
        )
    } else {
        String::new()
    };
    println!(
        "enqueued {}, invalid {}, assigned {} transaction_ids{withheld}; batch_id {}",
        report.published, report.invalid, report.assigned, report.batch_id
    );
}

/// A bar with a length advances as the input is read (see
/// [`progress_bar`]).
fn open_input(
    file: &Path,
    is_stdin: bool,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<Box<dyn BufRead + Send>> {
    if is_stdin {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let opened = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(match progress {
        Some(bar) if bar.length().is_some() => {
            Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(opened)))
        }
        _ => Box::new(BufReader::with_capacity(1 << 16, opened)),
    })
}

/// The size of a regular file; `None` for stdin, pipes and devices,
/// whose end is not known in advance.
fn input_size(file: &Path, is_stdin: bool) -> Option<u64> {
    let metadata = std::fs::metadata(file).ok().filter(|_| !is_stdin)?;
    metadata.is_file().then_some(metadata.len())
}

const FILE_TEMPLATE: &str = "{bar:30} {percent:>3}% of {total_bytes} read, {msg} (ETA {eta})";
const STREAM_TEMPLATE: &str = "{spinner} {pos} jobs published ({per_sec})";

/// For a file of known size, a bar over its bytes (position: bytes read)
/// with the percentage and an ETA, the published count as its message;
/// otherwise a spinner counting published jobs.
fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    let (bar, template) = match total_bytes {
        Some(total) => (ProgressBar::new(total), FILE_TEMPLATE),
        None => (ProgressBar::new_spinner(), STREAM_TEMPLATE),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message("0 jobs published");
    bar
}

/// Invalid lines go to stderr, assigned ids to stdout (the producer needs
/// them to find its results); both above the progress bar, if any.
fn print_event(progress: Option<&ProgressBar>, event: EnqueueEvent<'_>) {
    let print = || match event {
        EnqueueEvent::Invalid {
            line,
            reason,
            transaction_id,
            external_ref,
        } => eprintln!(
            "line {line}: invalid: {reason}{}",
            naming(transaction_id, external_ref)
        ),
        EnqueueEvent::Assigned {
            line,
            transaction_id,
        } => println!("line {line}: assigned transaction_id {transaction_id}"),
        EnqueueEvent::Published { .. } => {}
    };
    match (progress, event) {
        (Some(bar), EnqueueEvent::Published { total }) if bar.length().is_some() => {
            bar.set_message(format!("{total} jobs published"));
        }
        (Some(bar), EnqueueEvent::Published { total }) => bar.set_position(total),
        (Some(bar), _) => bar.suspend(print),
        (None, _) => print(),
    }
}

/// ` (transaction_id t_1, external_ref "loan-1")`, or what of it is known.
fn naming(transaction_id: Option<&str>, external_ref: Option<&str>) -> String {
    let names: Vec<String> = [
        transaction_id.map(|id| format!("transaction_id {id}")),
        external_ref.map(|reference| format!("external_ref {reference:?}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::Read;

    use super::*;

    #[test]
    fn enqueue_progress_for_a_file_is_a_bar_over_its_bytes_that_advances_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        std::fs::write(&path, "x".repeat(200_000)).unwrap();
        let bar = progress_bar(input_size(&path, false));
        assert_eq!(bar.length(), Some(200_000));
        let mut input = open_input(&path, false, Some(&bar)).unwrap();
        let mut first = [0u8; 10];
        input.read_exact(&mut first).unwrap();
        assert!(bar.position() > 0 && bar.position() < 200_000);
        std::io::copy(&mut input, &mut std::io::sink()).unwrap();
        assert_eq!(bar.position(), 200_000);
    }

    #[test]
    fn enqueue_progress_for_stdin_and_pipes_stays_a_spinner() {
        assert_eq!(input_size(Path::new("-"), true), None);
        assert_eq!(input_size(Path::new("/dev/null"), false), None);
        assert_eq!(progress_bar(None).length(), None);
    }

    #[test]
    fn enqueue_progress_templates_parse() {
        for template in [FILE_TEMPLATE, STREAM_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
