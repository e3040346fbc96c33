//! zhima-worker: contact verification jobs from RabbitMQ, checked against Zhima
//! Credit's `zhima.credit.relation.query`, with the answers stored for the nightly
//! reconciliation.
//!
//! A job's path, top-down:
//!
//! 1. [`queue`] takes a delivery from `zhima.relation.verify` and hands its body
//!    to [`job`], which decodes and validates it (an invalid job is dead-lettered
//!    and never sent upstream).
//! 2. [`processor`] checks [`store`] for a final row (a redelivery after a crash
//!    is acked without a new call), waits for a [`rate_limit`] permit and calls
//!    [`upstream`], which signs the request ([`upstream::signing`]), posts it, and
//!    verifies and classifies the signed answer ([`upstream::response`]).
//! 3. The outcome is committed to [`store`] first; only then does [`queue`] ack,
//!    or publish a confirmed copy to a delay tier chosen by [`retry`], or
//!    dead-letter it.
//!
//! `app` wires these together and drains on shutdown; [`sandbox`] is the
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
pub mod health;
pub mod job;
pub mod pii;
pub mod processor;
pub mod queue;
pub mod rate_limit;
mod reconcile;
pub mod retry;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod upstream;
