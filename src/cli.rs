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
        let in_file: BTreeMap<String, Option<String>> = example
            .lines()
            .filter(|line| line.starts_with("WFM_"))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
            .collect();
        assert_eq!(in_code, in_file);
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
