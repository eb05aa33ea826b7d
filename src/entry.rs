//! The program behind the `wfm-worker` binary: settings → telemetry →
//! subcommand → exit code. It lives in the library so that the whole program
//! is compiled once: a binary that awaited the library's futures would compile
//! them again (a release build from a fresh clone was ~40 s longer).

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::{
    app, broker,
    cli::{self, Command, DlqCommand, HealthcheckArgs, MigrateCommand, PublishCommand},
    config::ConfigError,
    dlq, http, publish, shutdown, telemetry,
};

/// Why a command failed. Printed with its chain of causes.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Run(#[from] app::RunError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Traces(#[from] telemetry::traces::TracesError),
    #[error("--data-file {path}: {reason}")]
    DataFile { path: String, reason: String },
    #[error("{0}")]
    Unhealthy(String),
}

/// Parses the command line, runs the command, and maps the outcome to the
/// exit code (failures are logged with their causes).
pub fn main() -> ExitCode {
    let cli = cli::parse();
    telemetry::init(cli.log_format);
    // A fixed number (one unless told otherwise), not one per core of the
    // node; multi-thread even for one, so that the setting can raise it
    // (BENCHMARKS.md, "One runtime thread").
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.worker_threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wfm-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = causes(&error), "wfm-worker failed");
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause…`, each cause once (a message that already ends with
/// its cause's text does not repeat it).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

async fn execute(command: Command) -> Result<(), EntryError> {
    let traces = telemetry::traces::init()?;
    let result = run_command(command).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result
}

async fn run_command(command: Command) -> Result<(), EntryError> {
    match command {
        Command::Run(args) => {
            let settings = args.validate()?;
            let token = CancellationToken::new();
            shutdown::cancel_on_signal(token.clone());
            app::run(settings, token).await?;
        }
        Command::Bootstrap(args) => {
            app::bootstrap(&args.database.validate()?).await?;
        }
        Command::Maintain(args) => {
            let report =
                app::maintain(&args.database.validate()?, &args.history.settings()).await?;
            println!("{report}");
        }
        Command::Migrate(MigrateCommand::PartitionCheckins(args)) => {
            let history = args.history.settings();
            let report = app::partition_checkins(&args.database.validate()?, &history).await?;
            println!("{report}");
        }
        Command::Publish(command) => publish(command).await?,
        Command::Dlq(command) => dead_letters(command).await?,
        Command::Healthcheck(args) => healthcheck(args).await?,
    }
    Ok(())
}

async fn publish(command: PublishCommand) -> Result<(), EntryError> {
    let (kind, documents, limits, broker) = match command {
        PublishCommand::Version(args) => {
            let data = match &args.data_file {
                Some(path) => Some(
                    serde_json::from_str(&std::fs::read_to_string(path).map_err(|source| {
                        EntryError::DataFile {
                            path: path.display().to_string(),
                            reason: source.to_string(),
                        }
                    })?)
                    .map_err(|e| EntryError::DataFile {
                        path: path.display().to_string(),
                        reason: format!("not JSON: {e}"),
                    })?,
                ),
                None => None,
            };
            let spec = publish::VersionSpec {
                component: args.component,
                train: args.train,
                version: args.version,
                released: args.released,
                data,
            };
            (
                publish::Kind::Version,
                vec![spec.to_document()],
                args.limits,
                args.broker,
            )
        }
        PublishCommand::Checkin(args) => {
            let documents = publish::read_documents(&args.file)?;
            (publish::Kind::Checkin, documents, args.limits, args.broker)
        }
    };
    publish::validate(kind, &documents, &limits.limits())?;
    let ids = publish::publish(&broker.validate()?, kind, &documents).await?;
    // The message ids on stdout, one per line: scripts can record them.
    for id in ids {
        println!("{id}");
    }
    Ok(())
}

async fn dead_letters(command: DlqCommand) -> Result<(), EntryError> {
    let now = chrono::Utc::now();
    match command {
        DlqCommand::List(args) => {
            let listing = dlq::list(&args.broker.validate()?, args.limit).await?;
            print_entries(&listing.entries, now);
            eprintln!(
                "{} message(s) in the dead-letter queue; {} shown (--limit {})",
                listing.total,
                listing.entries.len(),
                args.limit
            );
        }
        DlqCommand::Replay(args) => {
            let selection = if args.all {
                dlq::Selection::All
            } else {
                dlq::Selection::Ids(args.message_id.into_iter().collect())
            };
            let done = dlq::replay(&args.broker.validate()?, &selection, args.dry_run).await?;
            print_entries(&done.replayed, now);
            let verb = if args.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            eprintln!(
                "{verb} {} of the {} message(s) in the dead-letter queue; {} left in place",
                done.replayed.len(),
                done.examined,
                done.skipped
            );
        }
    }
    Ok(())
}

fn print_entries(entries: &[dlq::Entry], now: chrono::DateTime<chrono::Utc>) {
    println!("{:<38} {:<24} {:>5}  REASON", "MESSAGE ID", "QUEUE", "AGE");
    for entry in entries {
        println!(
            "{:<38} {:<24} {:>5}  {}",
            entry.message_id,
            entry.queue,
            entry.age(now),
            entry.reason
        );
    }
}

async fn healthcheck(args: HealthcheckArgs) -> Result<(), EntryError> {
    let mut addr = args.http.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http::get(addr, "/healthz"),
    )
    .await
    .map_err(|_| EntryError::Unhealthy("GET /healthz timed out after 5 s".to_owned()))?
    .map_err(|e| EntryError::Unhealthy(format!("GET /healthz: {e}")))?;
    if status != 200 {
        return Err(EntryError::Unhealthy(format!(
            "GET /healthz answered {status}: {body}"
        )));
    }
    Ok(())
}
