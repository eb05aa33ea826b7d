//! wfm-worker: consumes cluster checkins and component version events from
//! RabbitMQ, validates them, and records them in PostgreSQL.
//!
//! Sources → transforms → sinks: [`broker`] delivers, [`message`] parses into
//! domain values, [`store`] writes batches, and [`pipeline`] ties them together
//! and alone decides when a delivery is acked — only after its rows commit, or
//! after its dead-letter copy is confirmed.
// Two exceptions, audited where they are: setting SO_RCVLOWAT on the consuming
// connection's socket (broker/socket.rs), which no safe binding offers; and
// the call of an SSE2 function from code built with SSE2 (message/scan.rs),
// which the language does not yet see as safe.
#![deny(unsafe_code)]

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod entry;
pub mod http;
pub mod message;
pub mod pipeline;
pub mod publish;
pub mod readiness;
pub mod shutdown;
pub mod store;
pub mod telemetry;
