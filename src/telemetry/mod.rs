//! Log subscriber set-up: human-readable on a terminal, JSON lines otherwise
//! (or as configured), always on stderr so stdout carries only results; and,
//! in `metric`, the name of every metric the worker emits.
//!
//! Spans and events never carry payloads, signatures, keys or unmasked PII;
//! that is the callers' rule, this module only decides the output format.

pub(crate) mod metric;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log.filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
pub fn init(settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter_text =
        quiet_notices(&std::env::var("RUST_LOG").unwrap_or_else(|_| settings.filter.clone()));
    let filter = EnvFilter::try_new(&filter_text).map_err(|source| TelemetryError::Filter {
        filter: filter_text.clone(),
        source,
    })?;
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        // Each span's fields once, in `spans` (outermost first: `worker`
        // with worker_id, then `process_job`, ...); no `span` copy of the
        // innermost one.
        builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_span_events(FmtSpan::NONE)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// PostgreSQL's notices (sqlx logs them at INFO, e.g. `relation
/// "_sqlx_migrations" already exists, skipping` on every start) are shown
/// from WARN up, unless the filter names their target itself.
const NOTICE_TARGET: &str = "sqlx::postgres::notice";

fn quiet_notices(filter: &str) -> String {
    if filter.contains(NOTICE_TARGET) {
        return filter.to_owned();
    }
    match filter.trim() {
        "" => format!("{NOTICE_TARGET}=warn"),
        text => format!("{text},{NOTICE_TARGET}=warn"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn postgres_notices_are_quiet_unless_the_filter_names_them() {
        assert_eq!(quiet_notices("info"), "info,sqlx::postgres::notice=warn");
        assert_eq!(quiet_notices(""), "sqlx::postgres::notice=warn");
        let asked = "info,sqlx::postgres::notice=debug";
        assert_eq!(quiet_notices(asked), asked);
        assert!(EnvFilter::try_new(quiet_notices("debug,lapin=off")).is_ok());
    }
}
