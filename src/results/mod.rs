//! Results back to the pipeline: the [`event`]s a final job (or a finished
//! batch) produces, and the `relay` that publishes them from the
//! transactional outbox to the results exchange.
//!
//! The outbox rows are written by `store` in the outcome transaction; this
//! module only shapes events and moves them to the broker through `queue`.

pub mod event;
pub(crate) mod relay;
