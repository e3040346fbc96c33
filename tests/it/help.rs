//! Help that stands alone: every subcommand's `--help` gives its exit codes,
//! environment variables and an example; `config show` prints the effective
//! configuration with each value's source and never a secret.

use std::process::{Command, Output};

use clap::CommandFactory;
use zhima_worker::cli::Cli;

use crate::support::BIN;

/// The binary with a clean environment for configuration: only `env` set.
fn zhima(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL");
    for (name, _) in std::env::vars() {
        if name.starts_with("ZHIMA__") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

/// Every subcommand path, nested ones included (`config show`).
fn subcommand_paths(command: &clap::Command, prefix: &[String], paths: &mut Vec<Vec<String>>) {
    for sub in command.get_subcommands() {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_owned());
        paths.push(path.clone());
        subcommand_paths(sub, &path, paths);
    }
}

#[test]
fn the_binary_and_every_subcommand_help_give_exit_codes_environment_and_an_example() {
    let mut paths = vec![Vec::new()];
    subcommand_paths(&Cli::command(), &[], &mut paths);
    assert!(paths.len() >= 13, "{paths:?}");
    for path in paths
        .iter()
        .filter(|path| path.last().map(String::as_str) != Some("help"))
    {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let output = zhima(&args, &[]);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        for section in ["Exit codes:", "Environment:", "Example:"] {
            assert!(help.contains(section), "`{args:?}` lacks {section}\n{help}");
        }
        let example = help.split("Example:").nth(1).unwrap();
        assert!(
            example.contains("zhima-worker ") && example.contains(&format!(" {}", path.join(" "))),
            "`{args:?}`'s example does not run it: {example}"
        );
    }
}

#[test]
fn config_show_names_the_source_of_each_value_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.toml");
    std::fs::write(
        &file,
        "[rate_limit]\nqps = 20\n\n[upstream]\napp_auth_token = \"tok-from-file-s3cr3t\"\n\
         proxy = \"http://proxyuser:proxy-pw-9@proxy:3128\"\n",
    )
    .unwrap();
    let output = zhima(
        &["--config", file.to_str().unwrap(), "config", "show"],
        &[
            ("ZHIMA__UPSTREAM__APP_ID", "2021000000000001"),
            (
                "DATABASE_URL",
                "postgres://zhima:db-pw-Xy7@db.internal/zhima",
            ),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = |key: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let file_source = format!("# from: file {}", file.display());
    assert_eq!(
        line("rate_limit.qps"),
        format!("rate_limit.qps = 20 {file_source}")
    );
    assert_eq!(
        line("upstream.app_id"),
        "upstream.app_id = \"2021000000000001\" # from: env ZHIMA__UPSTREAM__APP_ID"
    );
    assert_eq!(
        line("database.url"),
        "database.url = \"postgres://zhima:***@db.internal/zhima\" # from: env DATABASE_URL"
    );
    assert_eq!(
        line("retry.max_attempts"),
        "retry.max_attempts = 8 # from: default"
    );
    assert_eq!(
        line("upstream.app_auth_token"),
        format!("upstream.app_auth_token = \"***\" {file_source}")
    );
    let everything = format!("{stdout}{}", String::from_utf8(output.stderr).unwrap());
    for secret in ["tok-from-file-s3cr3t", "db-pw-Xy7", "proxy-pw-9"] {
        assert!(
            !everything.contains(secret),
            "{secret} shown:\n{everything}"
        );
    }
}

#[test]
fn config_show_json_names_the_variable_that_set_a_value() {
    let output = zhima(
        &["config", "show", "--json"],
        &[("AMQP_URL", "amqp://worker:amqp-pw-5@mq:5672/%2f")],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains("amqp-pw-5"), "{stdout}");
    let values: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let amqp = values
        .iter()
        .find(|value| value["key"] == "amqp.url")
        .unwrap();
    assert_eq!(amqp["value"], "\"amqp://worker:***@mq:5672/%2f\"");
    assert_eq!(
        amqp["source"],
        serde_json::json!({"kind": "env", "name": "AMQP_URL"})
    );
}

#[test]
fn config_show_with_an_invalid_configuration_fails_like_every_other_command() {
    let env = [("ZHIMA__RATE_LIMIT__BURST", "0")];
    let shown = zhima(&["config", "show"], &env);
    let migrated = zhima(&["migrate"], &env);
    assert_eq!(shown.status.code(), Some(1));
    assert!(shown.stdout.is_empty());
    let stderr = String::from_utf8(shown.stderr).unwrap();
    assert!(stderr.contains("rate_limit.burst"), "{stderr}");
    assert_eq!(stderr, String::from_utf8(migrated.stderr).unwrap());
}
