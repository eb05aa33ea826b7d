//! Logging: `tracing`, human-readable on a terminal or one JSON object per line.
//! `RUST_LOG` filters (default `info`). Log lines carry data in fields, never
//! message payloads or credentials.

use tracing_subscriber::{EnvFilter, fmt};

/// lapin logs every message the broker returns at `warn`, body included; a
/// returned dead-letter copy is the original payload. The worker reports
/// refused copies itself, without the payload, so lapin's line is always off
/// (whatever `RUST_LOG` says).
fn quiet_returned_messages() -> tracing_subscriber::filter::Directive {
    "lapin::returned_messages=off"
        .parse()
        .expect("a valid directive")
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stderr, leaving stdout to
/// commands that print results.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(quiet_returned_messages());
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Ignoring the error: a subscriber already installed (tests) is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

pub mod traces;
