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
//! - `until_idle`: `run --until-idle` in cron or a Job (`--max-wait`, the
//!   summary at exit).
//! - `broker`, `cli`, `enqueue`: the binary's operator and debugging commands.
//! - `client`, `sandbox`: the upstream client and the simulated gateway.
//! - `deploy`: the compose file and Dockerfile against the real loader and CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod broker;
mod certificate;
mod cli;
mod client;
mod deploy;
mod enqueue;
mod enqueue_input;
mod help;
mod in_process;
mod reconcile;
mod sandbox;
mod scale;
mod until_idle;
mod worker;
