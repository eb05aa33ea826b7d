//! The `wfm-worker` binary: settings → telemetry → subcommand → exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use wfm_worker::{
    app,
    cli::{Command, DlqCommand, HealthcheckArgs, MigrateCommand, PublishCommand},
    dlq, http, publish, shutdown, telemetry,
};

fn main() -> ExitCode {
    let cli = wfm_worker::cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            tracing::error!(error = format!("{error:#}"), "wfm-worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    let traces = telemetry::traces::init()?;
    let result = run_command(command).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result
}

async fn run_command(command: Command) -> anyhow::Result<()> {
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

async fn publish(command: PublishCommand) -> anyhow::Result<()> {
    let (kind, documents, limits, broker) = match command {
        PublishCommand::Version(args) => {
            let data = match &args.data_file {
                Some(path) => Some(
                    serde_json::from_str(&std::fs::read_to_string(path)?).map_err(|e| {
                        anyhow::anyhow!("--data-file {} is not JSON: {e}", path.display())
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

async fn dead_letters(command: DlqCommand) -> anyhow::Result<()> {
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

async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let mut addr = args.http.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http::get(addr, "/healthz"),
    )
    .await??;
    anyhow::ensure!(status == 200, "GET /healthz answered {status}: {body}");
    Ok(())
}
