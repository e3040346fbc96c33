//! zhima-worker: contact verification jobs from RabbitMQ, checked against Zhima
//! Credit's `zhima.credit.relation.query`, with the answers stored for the nightly
//! reconciliation.
//!
//! A job's path, top-down:
//!
//! 1. [`queue`] takes a delivery from `zhima.relation.verify` and hands its body
//!    to [`job`], which decodes and validates it (an invalid job is dead-lettered
//!    and never sent upstream).
//! 2. [`processor`] checks [`store`] for the job's row: a final one means a
//!    redelivery after a crash (acked without a new call), one with other
//!    business fields a reused transaction_id (dead-lettered). It then records
//!    the call's start (`begin_call`: the row, and the first call time, whose
//!    age bounds how long the job may keep retrying under one transaction_id;
//!    past that it fails `TRANSACTION_WINDOW_EXCEEDED`), waits for a
//!    [`rate_limit`] permit and calls [`upstream`], which signs the request
//!    ([`upstream::signing`]), posts it, and verifies and classifies the signed
//!    answer ([`upstream::response`]).
//! 3. A pure decision (`processor::decide`) turns the classified answer and
//!    the attempt into the row update, the ledger entry and what to do with the
//!    delivery, with the backoff from [`retry`]. The outcome is committed to
//!    [`store`] first; only then does [`queue`] ack, or publish a confirmed copy
//!    to a delay tier, or dead-letter it.
//! 4. When the job became final, the same transaction wrote its result event
//!    to the outbox (and completed its batch when it was the last one); the
//!    [`results`] relay publishes it to the results exchange with confirms.
//!
//! `app` wires these together, owns the in-flight jobs and drains on
//! shutdown ([`queue`] runs the broker sessions); [`sandbox`] is the
//! simulated gateway used by tests and `make run`; [`cli`] maps subcommands onto
//! the library.

// Anything `pub` here that the binary, the tests and the benches cannot reach
// is `pub(crate)`, so the public surface is the real API and the compiler
// finds dead code. (Set here rather than in Cargo.toml's `[lints]`, which
// would also apply it to the test and bench crates.)
#![warn(unreachable_pub)]

mod app;
mod capped;
pub mod cli;
mod cluster;
pub mod config;
pub mod control;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod job;
mod line_ends;
pub mod pii;
pub mod processor;
pub mod queue;
pub mod rate_limit;
mod reconcile;
pub mod results;
pub mod retry;
pub mod sandbox;
mod spend;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
