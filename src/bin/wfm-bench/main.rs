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
mod table;
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
    /// Count the worker's instructions per checkin under callgrind instead
    /// (phase 16: drains of a third of `--messages`, and of all; valgrind
    /// runs the worker ~50 times slower, and `--messages 15000` is enough).
    #[arg(long)]
    instructions: bool,
    /// Pairs of runs for the side-by-side measurements: (8), (12), (15).
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
    /// (3) split at its first row stored; (7)'s in `versions_start`.
    backlog_start: phases::Start,
    single: f64,
    /// Latency at the offered load, and at ten times it.
    low: Option<latency::Latencies>,
    high: Option<latency::Latencies>,
    /// Publish→deliver through the broker alone, at the same two loads.
    floor: Option<latency::Latencies>,
    floor_high: Option<latency::Latencies>,
    rss_mib: f64,
    cpu_us: f64,
    /// The worker's context switches per stored checkin in (3).
    switches: f64,
    /// `cpu_us` by kind of thread.
    cpu_split: procfs::CpuByThread,
    resident: String,
    versions: f64,
    versions_start: phases::Start,
    /// (7)'s limits: the broker alone and the version upsert alone.
    versions_broker: f64,
    versions_database: f64,
    /// The worker's CPU per stored version in (7): how much of the two
    /// cores it takes from the broker and the database beside it.
    versions_cpu: procfs::CpuByThread,
    versions_cpu_us: f64,
    /// How busy the machine was, and what its host stole, during each
    /// phase, by phase number ((5)'s are in its [`latency::Latencies`]);
    /// unmeasured (NaN) where a phase did not run.
    host: [procfs::HostLoad; 8],
}

/// One of a run's latency measurements.
type Measured = fn(&Run) -> &Option<latency::Latencies>;

impl Run {
    fn serial(&self) -> f64 {
        serial(self.broker, self.database)
    }

    fn versions_serial(&self) -> f64 {
        serial(self.versions_broker, self.versions_database)
    }
}

/// The rate if every message paid the broker's cost and the database's one
/// after the other.
fn serial(broker: f64, database: f64) -> f64 {
    1.0 / (1.0 / broker + 1.0 / database)
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
        runs.push(measure(&args, &limits, &exe).await?);
    }
    table::print_report(&args, &runs).await;
    Ok(())
}

async fn measure(args: &Args, limits: &Limits<'_>, exe: &std::path::Path) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let on = |phase: u8| args.phases.contains(&phase);
    if on(1) {
        let host = procfs::HostWatch::start();
        run.broker = phases::broker_limit(limits, Backlog::Checkins, args.messages).await?;
        run.host[1] = host.load();
        eprintln!(
            "  broker limit      {:>9.0} msgs/s; {}",
            run.broker,
            host_note(run.host[1])
        );
    }
    if on(2) {
        let host = procfs::HostWatch::start();
        run.database = phases::database_limit(limits, args.messages).await?;
        run.host[2] = host.load();
        eprintln!(
            "  database limit    {:>9.0} msgs/s; {}",
            run.database,
            host_note(run.host[2])
        );
    }
    if on(3) {
        let host = procfs::HostWatch::start();
        let checkins = Backlog::Checkins;
        let drain =
            phases::worker_drain(limits, exe, checkins, args.messages, args.batch_size).await?;
        (run.backlog, run.rss_mib) = (drain.rate, drain.peak_rss_kib as f64 / 1024.0);
        run.backlog_start = drain.start;
        run.cpu_us = drain.cpu_us_per_msg;
        run.switches = drain.switches_per_msg;
        run.cpu_split = drain.cpu_split_us.unwrap_or_default();
        run.resident = drain.resident.map(|r| r.to_string()).unwrap_or_default();
        run.host[3] = host.load();
        eprintln!(
            "  worker backlog    {:>9.0} msgs/s ({}), {:.1} µs CPU/msg (runtime {:.1}, AMQP I/O {:.1}, other {:.1}), {:.2} context switches/msg, {:.0} msgs/batch, peak RSS {:.1} MiB ({}); {}",
            run.backlog,
            start_note(drain.start),
            run.cpu_us,
            run.cpu_split.runtime,
            run.cpu_split.amqp_io,
            run.cpu_split.other,
            run.switches,
            drain.mean_batch,
            run.rss_mib,
            run.resident,
            host_note(run.host[3])
        );
    }
    if on(4) {
        let host = procfs::HostWatch::start();
        let checkins = Backlog::Checkins;
        run.single = phases::worker_drain(limits, exe, checkins, args.single_messages, 1)
            .await?
            .rate;
        run.host[4] = host.load();
        eprintln!(
            "  worker batch=1    {:>9.0} msgs/s; {}",
            run.single,
            host_note(run.host[4])
        );
    }
    if on(7) {
        let host = procfs::HostWatch::start();
        let versions = Backlog::Versions;
        let drain =
            phases::worker_drain(limits, exe, versions, args.versions, args.batch_size).await?;
        (run.versions, run.versions_start) = (drain.rate, drain.start);
        run.versions_cpu_us = drain.cpu_us_per_msg;
        run.versions_cpu = drain.cpu_split_us.unwrap_or_default();
        run.versions_broker = phases::broker_limit(limits, versions, args.versions).await?;
        run.versions_database = phases::versions_database_limit(limits, args.versions).await?;
        run.host[7] = host.load();
        eprintln!(
            "  worker versions   {:>9.0} msgs/s ({}), {:.1} µs CPU/msg (runtime {:.1}, AMQP I/O {:.1}, other {:.1}), {:.0} msgs/batch (broker alone {:.0}, database alone {:.0}); {}",
            run.versions,
            start_note(drain.start),
            run.versions_cpu_us,
            run.versions_cpu.runtime,
            run.versions_cpu.amqp_io,
            run.versions_cpu.other,
            drain.mean_batch,
            run.versions_broker,
            run.versions_database,
            host_note(run.host[7])
        );
    }
    if on(5) {
        for (rate, slot) in [
            (args.latency_rate, &mut run.low),
            (args.latency_rate * 10, &mut run.high),
        ] {
            let l = latency::latency(limits, exe, rate, args.latency_secs).await?;
            eprintln!(
                "  latency at {rate}/s: p50 {:.1} ms (to the insert {:.1}; a burst's first {:.1}, last {:.1}), p99 {:.1} ms, max {:.1} ms; {:.1} µs CPU/msg, {:.2} context switches/msg, {:.1} msgs/batch; at most {} ready; {}",
                l.p50_ms,
                l.insert_p50_ms,
                l.first_p50_ms,
                l.last_p50_ms,
                l.p99_ms,
                l.max_ms,
                l.cpu_us,
                l.switches,
                l.mean_batch,
                l.most_ready,
                host_note(l.host)
            );
            *slot = Some(l);
        }
        for (rate, slot) in [
            (args.latency_rate, &mut run.floor),
            (args.latency_rate * 10, &mut run.floor_high),
        ] {
            let l = latency::broker_latency(limits, rate, args.latency_secs).await?;
            eprintln!(
                "  broker alone at {rate}/s: p50 {:.1} ms (a burst's first {:.1}, last {:.1}), p99 {:.1} ms, max {:.1} ms; at most {} ready; {}",
                l.p50_ms,
                l.first_p50_ms,
                l.last_p50_ms,
                l.p99_ms,
                l.max_ms,
                l.most_ready,
                host_note(l.host)
            );
            *slot = Some(l);
        }
    }
    Ok(run)
}

/// A phase's load on the machine for its progress line.
fn host_note(load: procfs::HostLoad) -> String {
    format!(
        "the machine {} busy, {} of its CPU stolen by the host",
        table::percent(load.busy_pct),
        table::percent(load.stolen_pct)
    )
}

fn start_note(start: phases::Start) -> String {
    format!(
        "first row after {:.0} ms, then {:.0} msgs/s",
        start.first_row_ms, start.after_rate
    )
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
        "{cores} cores ({cpu}); PostgreSQL {postgres}; RabbitMQ {rabbitmq}; {}; wfm-worker {}",
        output("rustc", &["--version"]),
        env!("CARGO_PKG_VERSION")
    )
}
