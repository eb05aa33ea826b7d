//! The command line: `wfm-worker <subcommand>`, every flag also an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{
    config::{BrokerArgs, DatabaseArgs, RunArgs},
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
    pub limits: PublishLimits,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
pub struct PublishCheckinArgs {
    /// File of checkins (`-` for standard input).
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub limits: PublishLimits,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, clap::Args)]
pub struct PublishLimits {
    /// Larger messages are refused, as the worker would refuse them.
    #[arg(long, env = "WFM_MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub max_message_bytes: usize,
}

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The worker's HTTP address; an unspecified host (0.0.0.0) is probed on 127.0.0.1.
    #[arg(long, env = "WFM_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

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
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
