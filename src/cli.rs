//! The command line: `wfm-worker <subcommand>`, every flag also an environment variable.

use clap::{Parser, Subcommand};

use crate::{
    config::{DatabaseArgs, RunArgs},
    telemetry::LogFormat,
};

/// Records cluster checkins and component version events from RabbitMQ in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "wfm-worker", version, propagate_version = true)]
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
pub enum Command {
    /// Apply the schema, declare the broker topology, then consume checkins and
    /// version events until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Apply the schema files to the database and exit (for an init job).
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}
