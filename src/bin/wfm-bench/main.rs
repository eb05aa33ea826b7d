//! wfm-bench: measures the worker against the limits of this machine, in one
//! run, on the local PostgreSQL and RabbitMQ, and prints a table (medians of
//! `--runs`). See BENCHMARKS.md.
//!
//! 1. broker limit: drain rate of a pre-filled queue by a consumer that only acks
//! 2. database limit: the worker's own batched writes, driven without the broker
//! 3. worker, backlog: the real binary draining a pre-filled queue of checkins
//! 4. worker, one message per transaction (batch size 1)
//! 5. publish→commit latency at a steady offered load and at ten times it (and
//!    their floors: publish→deliver through the broker alone)
//! 6. the worker's peak RSS during (3)
//! 7. worker, versions backlog (and its limits: the broker alone, the version
//!    upsert alone)
//!
//! `--history` measures checkin history at scale (8-12), `--cluster` the
//! worker on private RabbitMQ clusters (13-14), `--tracing` the cost of
//! OpenTelemetry (15), `--instructions` the worker's instructions per checkin
//! under callgrind (16).

mod cluster;
mod env;
mod history;
mod instructions;
mod latency;
mod nodes;
mod pairs;
mod payload;
mod phases;
mod procfs;
mod reports;
mod run;
mod table;
mod traces;

use std::path::PathBuf;

use clap::Parser;

use phases::Limits;

#[derive(Parser)]
#[command(
    name = "wfm-bench",
    about = "Benchmark wfm-worker against this machine's limits"
)]
struct Args {
    /// Repeat every measurement this many times and report medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Backlog size for (1), (2) and (3).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Backlog size for (4), one message per transaction (slow: keep it smaller).
    #[arg(long, default_value_t = 10_000)]
    single_messages: usize,
    /// Backlog of version events for (7).
    #[arg(long, default_value_t = 20_000)]
    versions: usize,
    /// Offered load for (5), messages per second.
    #[arg(long, default_value_t = 1000)]
    latency_rate: usize,
    /// Duration of (5), seconds.
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// The worker's batch size and prefetch (its defaults).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_url: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Run only these phases (1-7, comma-separated); the report needs them all.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4, 5, 7])]
    phases: Vec<u8>,
    /// The wfm-worker binary; by default the one beside this benchmark.
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Measure checkin history at scale instead (phases 8-12, one run).
    #[arg(long)]
    history: bool,
    /// (10) rows of the legacy table converted while the worker ingests.
    #[arg(long, default_value_t = 5_000_000)]
    legacy_rows: i64,
    /// (10) checkins published a second meanwhile.
    #[arg(long, default_value_t = 3_300)]
    ingest_rate: usize,
    /// (9) rows of the day removed.
    #[arg(long, default_value_t = 1_000_000)]
    day_rows: i64,
    /// (11) clusters, and history rows per cluster.
    #[arg(long, default_value_t = 1_000_000)]
    clusters: i64,
    #[arg(long, default_value_t = 3)]
    checkins_per_cluster: i64,
    /// Measure on private RabbitMQ clusters instead (phases 13-14, one run; root).
    #[arg(long)]
    cluster: bool,
    /// (14) checkins published a second while nodes stop.
    #[arg(long, default_value_t = 1_000)]
    recovery_rate: usize,
    /// Measure the cost of OpenTelemetry tracing instead (phase 15).
    #[arg(long)]
    tracing: bool,
    /// Count the worker's instructions per checkin under callgrind instead
    /// (phase 16: drains of a third of `--messages`, and of all; valgrind
    /// runs the worker ~50 times slower, and `--messages 15000` is enough).
    #[arg(long)]
    instructions: bool,
    /// Pairs of runs for the side-by-side measurements: (8), (12), (15).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Create every database in this locale (collation and character type,
    /// from template0), e.g. `en_US.UTF-8` as RDS creates them; by default the
    /// server's own. It must be installed where PostgreSQL runs.
    #[arg(long)]
    db_locale: Option<String>,
    /// The script that runs private RabbitMQ nodes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh"))]
    cluster_script: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(locale) = args.db_locale.clone() {
        env::set_db_locale(locale)?;
    }
    let exe = args.worker.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("wfm-worker")
    });
    anyhow::ensure!(
        exe.exists(),
        "no worker binary at {} (cargo build --release --bins)",
        exe.display()
    );
    let limits = Limits {
        admin_url: &args.admin_url,
        amqp_url: &args.amqp_url,
        prefetch: args.prefetch,
        batch_size: args.batch_size,
        batches: wfm_worker::config::PipelineSettings {
            batch_size: args.batch_size,
            batch_bytes: worker_batch_bytes()?,
            ..Default::default()
        },
    };
    if args.history {
        return history::report(&args, &limits, &exe).await;
    }
    if args.tracing {
        let o = traces::overhead(&limits, &exe, args.messages, args.pairs).await?;
        let cost = 1.0 - o.drains.ratio;
        println!("\nwfm-bench --tracing (medians of {} pairs)\n", args.pairs);
        println!("| measurement | result | target |\n|---|---:|---|");
        println!(
            "| (15) backlog of {} checkins, tracing off / on | {:.0} / {:.0} msgs/s; cost {:.1} % (median of the pairs' on/off ratios {:.3}); {} exports, {:.1} MiB | ≤ 3 %: {} |",
            args.messages,
            o.drains.base,
            o.drains.variant,
            cost * 100.0,
            o.drains.ratio,
            o.requests,
            o.bytes as f64 / (1 << 20) as f64,
            if cost <= 0.03 { "met" } else { "MISSED" }
        );
        println!("\nmachine: {}", machine_facts().await);
        return Ok(());
    }
    if args.instructions {
        return instructions::report(&limits, &exe, args.messages).await;
    }
    if args.cluster {
        let (script, count) = (&args.cluster_script, args.messages);
        cluster::report(&limits, &exe, script, count, args.recovery_rate).await?;
        println!("\nmachine: {}", machine_facts().await);
        return Ok(());
    }
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n} of {}", args.runs);
        runs.push(run::measure(&args, &limits, &exe).await?);
    }
    table::print_report(&args, &runs).await;
    Ok(())
}

/// The worker's batch byte bound: WFM_BATCH_BYTES, which the worker inherits
/// from this process, or its default.
fn worker_batch_bytes() -> anyhow::Result<usize> {
    let Ok(set) = std::env::var("WFM_BATCH_BYTES") else {
        return Ok(wfm_worker::config::PipelineSettings::default().batch_bytes);
    };
    let size: bytesize::ByteSize = set
        .parse()
        .map_err(|e| anyhow::anyhow!("WFM_BATCH_BYTES={set}: {e}"))?;
    Ok(usize::try_from(size.as_u64())?)
}

pub(crate) async fn machine_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let output = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let postgres = output(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-Atc",
            "SHOW server_version",
        ],
    );
    let rabbitmq = output("rabbitmqctl", &["version"]);
    format!(
        "{cores} cores ({cpu}); PostgreSQL {postgres}, databases in {}; RabbitMQ {rabbitmq}; {}; wfm-worker {}",
        env::db_locale().unwrap_or("the server's default locale"),
        output("rustc", &["--version"]),
        env!("CARGO_PKG_VERSION")
    )
}
