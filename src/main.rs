//! The `wfm-worker` binary: settings → telemetry → subcommand → exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use wfm_worker::{
    app,
    cli::{Cli, Command},
    shutdown, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
    Ok(())
}
