//! The integration tests: one binary, one module per area, all against the
//! real RabbitMQ and PostgreSQL where they need a broker or a database.
//!
//! One binary links the crate once for every area (seven used to link it
//! seven times). Tests of different areas now share the binary's threads, so
//! a test that changes process-wide state (figment's `Jail`) runs in a child
//! copy of the binary (`support::own_process`).
//!
//! - `worker`, `scale`, `reconcile`: the real `zhima-worker run` end to end
//!   (`support::worker`); `in_process`: the processor's fault handling with
//!   no broker (`support::in_process`).
//! - `results`: result events from the outbox, batches, the `results` command;
//!   `reuse`: answer reuse (`reuse.max_age_days`, `"fresh": true`).
//! - `until_idle`: `run --until-idle` in cron or a Job (`--max-wait`, the
//!   summary at exit).
//! - `broker`, `cli`, `enqueue`, `status`: the binary's operator and debugging
//!   commands; `lookup` (`show`) and `dead` (the dead-letter tools).
//! - `client`, `sandbox`: the upstream client and the simulated gateway.
//! - `deploy`: everything under deploy/ (compose, Dockerfile, systemd unit,
//!   Kubernetes manifests, alert rules, dashboard) against the real loader,
//!   CLI, routes and metric names; promtool and systemd-analyze where present.
//! - `tls`: `amqps://` and PostgreSQL `sslmode` with a CA made by the test
//!   (`support::tls`: stunnel, a throwaway PostgreSQL cluster).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod broker;
mod certificate;
mod cli;
mod client;
mod dead;
mod deploy;
mod enqueue;
mod enqueue_input;
mod help;
mod in_process;
mod lookup;
mod personal_data;
mod reconcile;
mod results;
mod reuse;
mod sandbox;
mod scale;
mod spend;
mod status;
mod tls;
mod until_idle;
mod worker;
