//! What the integration tests (`tests/it/`) and the benchmarks (`benches/`)
//! share: one copy, included by the test binary and by each bench with
//! `#[path = "../tests/support/mod.rs"] mod support;`.
//!
//! - [`worker`]: the end-to-end harness; the real `zhima-worker` binary as a
//!   child process against a sandbox on port 0, a fresh database and uniquely
//!   named queues on the real RabbitMQ.
//! - [`in_process`]: the processor itself against SQLite and a sandbox on
//!   port 0, with no broker, for short fault scenarios.
//! - [`jobs`]: valid job messages and IDs; [`postgres`] and [`broker`]:
//!   throwaway databases and queues; [`process`]: watching, signalling and
//!   waiting for child processes; [`own_process`]: running a test in a child
//!   copy of its binary.
//! - [`http`]: free ports, GETs of a worker's HTTP server and its Prometheus
//!   samples; [`poll`]: the one `eventually` poller; [`proxy`]: a TCP
//!   forwarder that cuts and redirects a worker's connections.
//! - [`tls`]: a test CA, stunnel in front of RabbitMQ and a PostgreSQL
//!   cluster with `ssl = on`, each stopped when dropped.
//!
//! Only for tests and benches: setup failures panic, clean-up is best effort.
//! Each includer uses a part of it.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod broker;
pub mod http;
pub mod in_process;
pub mod jobs;
pub mod own_process;
pub mod poll;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod worker;

pub use jobs::{cert_no, count_values, job, succeeded, with_check_character};
pub use poll::{eventually, until};
pub use process::{
    ProcUsage, exits_zero_within, send_signal, send_sigterm, sigterm, watch_until_exit,
};
pub use worker::{Db, TestWorker, spawn_worker, spawn_worker_with, spawn_worker_with_clock};

/// The binary under test, built by cargo for integration tests and benches.
pub const BIN: &str = env!("CARGO_BIN_EXE_zhima-worker");
