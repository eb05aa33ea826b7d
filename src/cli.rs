//! The command line: `wfm-worker <subcommand>`, every flag also an environment variable.

use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::{
    config::{BrokerArgs, DatabaseArgs, HistoryArgs, HttpArgs, LimitsArgs, RunArgs},
    telemetry::LogFormat,
};

/// Records cluster checkins and component version events from RabbitMQ in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "wfm-worker", version)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for collectors.
    #[arg(
        long,
        env = "WFM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Threads of the async runtime (1 to 64). Without a number tokio starts
    /// one per core of the node, whatever the pod's CPU request. lapin runs an
    /// I/O thread of its own per broker connection. One by default: a second
    /// runtime thread mostly wakes the first (two to three wakes per batch at
    /// low load) and, on two cores shared with the broker and the database,
    /// cost CPU, throughput and latency (BENCHMARKS.md, "One runtime thread").
    /// More help only where the worker's own CPU is the limit.
    #[arg(
        long,
        env = "WFM_WORKER_THREADS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64),
        global = true
    )]
    pub worker_threads: u16,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: boxing variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Apply the schema, declare the broker topology, then consume checkins and
    /// version events until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Apply the schema files to the database and exit (for an init job).
    Bootstrap(BootstrapArgs),
    /// Keep checkin history in shape once and exit: partitions created ahead,
    /// history beyond WFM_CHECKIN_RETENTION dropped, deduplication keys rotated
    /// (for a CronJob; `run` does the same every ten minutes).
    Maintain(HistoryDatabaseArgs),
    /// Changes to the schema that are never applied at start-up.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Publish checkins or version events, validated locally with the worker's
    /// own rules, persistent and with publisher confirms.
    #[command(subcommand)]
    Publish(PublishCommand),
    /// Inspect the dead-letter queue, and replay messages to the queues they came from.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Probe the worker's /healthz on this host; exit 0 when it answers 200
    /// (the container's HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum PublishCommand {
    /// Publish one version event (routing key `version.publish`).
    #[command(disable_version_flag = true)]
    Version(PublishVersionArgs),
    /// Publish checkins from a file: one JSON document, or JSON lines (one
    /// checkin per line); `-` reads standard input.
    Checkin(PublishCheckinArgs),
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Convert a live `clusters_checkins` into a table partitioned by checkin
    /// time, online (writers wait milliseconds) and resumably; the existing
    /// rows become its first partition, nothing is copied.
    PartitionCheckins(HistoryDatabaseArgs),
}

#[derive(Debug, clap::Args)]
pub struct HistoryDatabaseArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered messages (message id, source queue, age, reason),
    /// leaving the queue as it is.
    List(DlqListArgs),
    /// Republish dead-lettered messages to the queue each came from, with
    /// publisher confirms; each leaves the dead-letter queue only once its
    /// republish is confirmed.
    Replay(DlqReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct DlqListArgs {
    /// List at most this many messages.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["message_id", "all"])))]
pub struct DlqReplayArgs {
    /// Replay the message with this `message_id` (repeat for several).
    #[arg(long)]
    pub message_id: Vec<String>,
    /// Replay every message in the dead-letter queue.
    #[arg(long)]
    pub all: bool,
    /// Show what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
pub struct PublishVersionArgs {
    /// Component name, 1 to 32 characters (e.g. deis-router).
    #[arg(long)]
    pub component: String,
    /// Release train, 1 to 24 characters (e.g. stable).
    #[arg(long)]
    pub train: String,
    /// Version, 1 to 32 characters (e.g. v2.4.0).
    #[arg(long)]
    pub version: String,
    /// Release time, RFC 3339 (e.g. 2016-08-02T17:00:00Z).
    #[arg(long)]
    pub released: String,
    /// JSON file with the release notes and other data (`version.data`).
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
pub struct PublishCheckinArgs {
    /// File of checkins (`-` for standard input).
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Parses the process's command line. clap reports an invalid value by the
/// flag it belongs to (`invalid value 'lots' for '--max-message-bytes
/// <MAX_MESSAGE_BYTES>'`); when the value came from a `WFM_*` variable, the
/// operator never typed that flag, so the one-line error names the variable.
pub fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(error) => match from_environment(&error, &argv) {
            Some(line) => {
                eprintln!("wfm-worker: {line}");
                std::process::exit(2);
            }
            None => error.exit(),
        },
    }
}

/// The one-line error for an invalid value set by a variable, if it was.
fn from_environment(error: &clap::Error, argv: &[OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let typed = argv.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if typed {
        return None;
    }
    let variable = variable_of(&Cli::command(), flag.strip_prefix("--")?)?;
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.as_str(),
        _ => "",
    };
    let reason = match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!("one of {}", valid.join(", "))
        }
        _ => std::error::Error::source(error).map_or_else(String::new, ToString::to_string),
    };
    Some(format!("{variable}={value:?} is invalid: {reason}"))
}

/// The variable of the flag `--long` in any subcommand.
fn variable_of(command: &clap::Command, long: &str) -> Option<String> {
    let here = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    here.or_else(|| {
        command
            .get_subcommands()
            .find_map(|sub| variable_of(sub, long))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every variable of every subcommand, with its default.
    fn variables(command: &clap::Command, found: &mut BTreeMap<String, Option<String>>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                let default = arg
                    .get_default_values()
                    .first()
                    .map(|v| v.to_string_lossy().into_owned());
                found.insert(env.to_string_lossy().into_owned(), default);
            }
        }
        for sub in command.get_subcommands() {
            variables(sub, found);
        }
    }

    #[test]
    fn env_example_documents_every_variable_with_its_default() {
        let mut in_code = BTreeMap::new();
        variables(&Cli::command(), &mut in_code);
        let example = include_str!("../config/wfm-worker.env.example");
        // `#WFM_X=` documents a variable without a default.
        let in_file: BTreeMap<String, Option<String>> = example
            .lines()
            .filter(|line| line.starts_with("WFM_") || line.starts_with("#WFM_"))
            .filter_map(|line| line.trim_start_matches('#').split_once('='))
            .map(|(k, v)| (k.to_owned(), (!v.is_empty()).then(|| v.to_owned())))
            .collect();
        assert_eq!(in_code, in_file);
    }

    #[test]
    fn the_runtime_has_one_thread_unless_told_otherwise() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.worker_threads);
        assert_eq!(parse(&["wfm-worker", "bootstrap"]).unwrap(), 1);
        let more = parse(&["wfm-worker", "run", "--worker-threads", "4"]);
        assert_eq!(more.unwrap(), 4);
        assert!(parse(&["wfm-worker", "run", "--worker-threads", "0"]).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod errors {
    use super::*;

    fn error_of(args: &[&str]) -> String {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let error = Cli::try_parse_from(&argv).unwrap_err();
        from_environment(&error, &argv).unwrap_or_else(|| "clap's own".to_owned())
    }

    #[test]
    fn a_typed_flag_keeps_claps_message() {
        let shown = error_of(&["wfm-worker", "run", "--max-message-bytes", "lots"]);
        assert_eq!(shown, "clap's own");
    }

    #[test]
    fn variables_are_found_in_any_subcommand() {
        assert_eq!(
            variable_of(&Cli::command(), "batch-linger-ms").as_deref(),
            Some("WFM_BATCH_LINGER_MS")
        );
        assert_eq!(
            variable_of(&Cli::command(), "http-addr").as_deref(),
            Some("WFM_HTTP_ADDR")
        );
    }
}
