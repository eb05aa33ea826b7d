//! wfm-bench: measures the worker against the limits of this machine, in one
//! run, on the local PostgreSQL and RabbitMQ, and prints a table (medians of
//! `--runs`). See BENCHMARKS.md.
//!
//! 1. broker limit: drain rate of a pre-filled queue by a consumer that only acks
//! 2. database limit: the worker's own batched writes, driven without the broker
//! 3. worker, backlog: the real binary draining a pre-filled queue of checkins
//! 4. worker, one message per transaction (batch size 1)
//! 5. publish→commit latency at a steady offered load
//! 6. the worker's peak RSS during (3)
//! 7. worker, versions backlog
//!
//! `--history` measures checkin history at scale (8-12), `--cluster` the
//! worker on private RabbitMQ clusters (13-14), `--tracing` the cost of
//! OpenTelemetry (15).

mod cluster;
mod env;
mod history;
mod latency;
mod nodes;
mod payload;
mod phases;
mod reports;
mod traces;

use std::path::PathBuf;

use clap::Parser;

use phases::{Backlog, Limits};

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
    /// (15) off/on pairs of drains.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// The script that runs private RabbitMQ nodes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh"))]
    cluster_script: PathBuf,
}

#[derive(Default)]
struct Run {
    broker: f64,
    database: f64,
    backlog: f64,
    single: f64,
    p50: f64,
    p99: f64,
    max: f64,
    rss_mib: f64,
    versions: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    };
    if args.history {
        return history_report(&args, &limits, &exe).await;
    }
    if args.tracing {
        let o = traces::overhead(&limits, &exe, args.messages, args.pairs).await?;
        let cost = 1.0 - o.on / o.off;
        println!("\nwfm-bench --tracing (medians of {} pairs)\n", args.pairs);
        println!("| measurement | result | target |\n|---|---:|---|");
        println!(
            "| (15) backlog of {} checkins, tracing off / on | {:.0} / {:.0} msgs/s: {:.1} % slower; {} exports, {:.1} MiB | ≤ 3 %: {} |",
            args.messages,
            o.off,
            o.on,
            cost * 100.0,
            o.requests,
            o.bytes as f64 / (1 << 20) as f64,
            if cost <= 0.03 { "met" } else { "MISSED" }
        );
        println!("\nmachine: {}", machine_facts().await);
        return Ok(());
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
        runs.push(measure(&args, &limits, &exe).await?);
    }
    print_report(&args, &runs).await;
    Ok(())
}

async fn measure(args: &Args, limits: &Limits<'_>, exe: &std::path::Path) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let on = |phase: u8| args.phases.contains(&phase);
    if on(1) {
        run.broker = phases::broker_limit(limits, args.messages).await?;
        eprintln!("  broker limit      {:>9.0} msgs/s", run.broker);
    }
    if on(2) {
        run.database = phases::database_limit(limits, args.messages).await?;
        eprintln!("  database limit    {:>9.0} msgs/s", run.database);
    }
    if on(3) {
        let drain = phases::worker_drain(
            limits,
            exe,
            Backlog::Checkins,
            args.messages,
            args.batch_size,
        )
        .await?;
        (run.backlog, run.rss_mib) = (drain.rate, drain.peak_rss_kib as f64 / 1024.0);
        eprintln!(
            "  worker backlog    {:>9.0} msgs/s, peak RSS {:.1} MiB",
            run.backlog, run.rss_mib
        );
    }
    if on(4) {
        run.single = phases::worker_drain(limits, exe, Backlog::Checkins, args.single_messages, 1)
            .await?
            .rate;
        eprintln!("  worker batch=1    {:>9.0} msgs/s", run.single);
    }
    if on(7) {
        run.versions = phases::worker_drain(
            limits,
            exe,
            Backlog::Versions,
            args.versions,
            args.batch_size,
        )
        .await?
        .rate;
        eprintln!("  worker versions   {:>9.0} msgs/s", run.versions);
    }
    if on(5) {
        let latency = latency::latency(limits, exe, args.latency_rate, args.latency_secs).await?;
        (run.p50, run.p99, run.max) = (latency.p50_ms, latency.p99_ms, latency.max_ms);
        eprintln!(
            "  latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            run.p50, run.p99, run.max
        );
    }
    Ok(run)
}

fn median(runs: &[Run], field: fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(field).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn print_report(args: &Args, runs: &[Run]) {
    let m = |f: fn(&Run) -> f64| median(runs, f);
    let (broker, database, backlog, single) = (
        m(|r| r.broker),
        m(|r| r.database),
        m(|r| r.backlog),
        m(|r| r.single),
    );
    let serial = 1.0 / (1.0 / broker + 1.0 / database);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\nwfm-bench: medians of {} run(s)\n", runs.len());
    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!(
        "| (1) broker limit, ack-only consumer, {} msgs | {broker:.0} msgs/s | |",
        args.messages
    );
    println!(
        "| (2) database limit, batched writes, {} msgs | {database:.0} msgs/s | |",
        args.messages
    );
    println!("| L serial limit 1/(1/(1)+1/(2)) | {serial:.0} msgs/s | |");
    println!(
        "| (3) worker, backlog of {} checkins | {backlog:.0} msgs/s | ≥ 10,000: {} |",
        args.messages,
        verdict(backlog >= 10_000.0)
    );
    println!(
        "| (4) worker, batch size 1, {} checkins | {single:.0} msgs/s | |",
        args.single_messages
    );
    println!(
        "| (5) latency p50 / p99 / max at {}/s for {} s | {:.1} / {:.1} / {:.1} ms | p99 ≤ 25 ms: {} |",
        args.latency_rate,
        args.latency_secs,
        m(|r| r.p50),
        m(|r| r.p99),
        m(|r| r.max),
        verdict(m(|r| r.p99) <= 25.0)
    );
    println!(
        "| (6) worker peak RSS during (3) | {:.1} MiB | ≤ 64 MiB: {} |",
        m(|r| r.rss_mib),
        verdict(m(|r| r.rss_mib) <= 64.0)
    );
    println!(
        "| (7) worker, backlog of {} versions | {:.0} msgs/s | ≥ 5,000: {} |",
        args.versions,
        m(|r| r.versions),
        verdict(m(|r| r.versions) >= 5000.0)
    );
    println!("| 3/1 | {:.2} | |", backlog / broker);
    println!("| 3/2 | {:.2} | |", backlog / database);
    println!(
        "| 3/4 | {:.1} | ≥ 10: {} |",
        backlog / single,
        verdict(backlog / single >= 10.0)
    );
    println!(
        "| 3/L | {:.2} | ≥ 0.5: {} |",
        backlog / serial,
        verdict(backlog / serial >= 0.5)
    );
    println!("\nmachine: {}", machine_facts().await);
}

/// Phases 8-12 (see `history`), one run, printed as a table.
async fn history_report(
    args: &Args,
    limits: &Limits<'_>,
    exe: &std::path::Path,
) -> anyhow::Result<()> {
    let (ordinary, partitioned) = history::partitioned_drain(limits, exe, args.messages).await?;
    let dropped = history::drop_by_retention(limits, args.day_rows).await?;
    let dropped_small = history::drop_by_retention(limits, args.day_rows / 10).await?;
    let deleted = history::drop_by_delete(limits, args.day_rows).await?;
    eprintln!(
        "  (9) drop {:.3} s, DELETE {:.1} s",
        dropped.seconds, deleted.seconds
    );
    let conversion =
        history::convert_while_ingesting(limits, exe, args.legacy_rows, args.ingest_rate).await?;
    eprintln!(
        "  (10) conversion {:.1} s, longest pause {:.0} ms",
        conversion.seconds, conversion.longest_pause_ms
    );
    let reports = reports::reports(limits, args.clusters, args.checkins_per_cluster, 5).await?;
    let (with, without) = reports::summary_cost(limits, args.messages).await?;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mib = |bytes: i64| bytes as f64 / (1 << 20) as f64;
    println!("\nwfm-bench --history\n");
    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!(
        "| (8) backlog of {} checkins: ordinary / partitioned (maintenance creating and dropping partitions) | {ordinary:.0} / {partitioned:.0} msgs/s = {:.2} | ≥ 0.95: {} |",
        args.messages,
        partitioned / ordinary,
        verdict(partitioned / ordinary >= 0.95)
    );
    println!(
        "| (9) one day of {} checkins dropped by retention | {:.3} s, {:.2} MiB WAL | < 1 s: {} |",
        args.day_rows,
        dropped.seconds,
        mib(dropped.wal_bytes),
        verdict(dropped.seconds < 1.0)
    );
    println!(
        "| (9) one day of {} checkins dropped by retention | {:.3} s, {:.2} MiB WAL | flat with rows |",
        args.day_rows / 10,
        dropped_small.seconds,
        mib(dropped_small.wal_bytes)
    );
    println!(
        "| (9) the same {} checkins by DELETE | {:.2} s, {:.1} MiB WAL | |",
        args.day_rows,
        deleted.seconds,
        mib(deleted.wal_bytes)
    );
    println!(
        "| (10) conversion of {} legacy rows while ingesting {}/s | {:.1} s; longest pause {:.0} ms; rows {} → {} (+{} ingested) | pause ≤ 1 s: {} |",
        conversion.rows_before,
        args.ingest_rate,
        conversion.seconds,
        conversion.longest_pause_ms,
        conversion.rows_before,
        conversion.rows_after,
        conversion.ingested,
        verdict(conversion.longest_pause_ms <= 1000.0)
    );
    for report in &reports {
        println!(
            "| (11) {} at {} clusters (one-day window, {} rows): full history / summaries p99 | {:.0} / {:.1} ms, identical: {} | < 50 ms: {} |",
            report.name,
            args.clusters,
            report.rows,
            report.history_p99_ms,
            report.summary_p99_ms,
            report.identical,
            verdict(report.summary_p99_ms < 50.0 && report.identical)
        );
    }
    println!(
        "| (12) batched write of {} checkins, with / without summaries | {with:.0} / {without:.0} msgs/s = {:.3} | ≥ 0.95: {} |",
        args.messages,
        with / without,
        verdict(with / without >= 0.95)
    );
    println!("\nmachine: {}", machine_facts().await);
    Ok(())
}

async fn machine_facts() -> String {
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
        "{cores} cores ({cpu}); PostgreSQL {postgres}; RabbitMQ {rabbitmq}; {}; wfm-worker {}",
        output("rustc", &["--version"]),
        env!("CARGO_PKG_VERSION")
    )
}
