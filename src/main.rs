//! The `zhima-worker` binary: parse the command line, load settings, set up
//! logging, run the subcommand. Everything else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use zhima_worker::{cli::Cli, config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = config::load(cli.config.as_deref()).context("loading configuration")?;
    let mut log = settings.log.clone();
    log.filter = cli.command.log_filter(&log.filter);
    telemetry::init(&log)?;
    cli.command.run(settings).await
}
