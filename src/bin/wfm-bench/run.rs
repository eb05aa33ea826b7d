//! One run of the standard phases (1)-(7): each phase's figures, and its
//! progress line as it finishes.

use std::path::Path;

use crate::{
    Args, latency,
    phases::{self, Backlog, Limits},
    procfs, table,
};

/// What one run measured, phase by phase (left at the default where a phase
/// did not run).
#[derive(Default)]
pub(crate) struct Run {
    pub(crate) broker: f64,
    pub(crate) database: f64,
    pub(crate) backlog: f64,
    /// (3) split at its first row stored; (7)'s in `versions_start`.
    pub(crate) backlog_start: phases::Start,
    pub(crate) single: f64,
    /// Latency at the offered load, and at ten times it.
    pub(crate) low: Option<latency::Latencies>,
    pub(crate) high: Option<latency::Latencies>,
    /// Publish→deliver through the broker alone, at the same two loads.
    pub(crate) floor: Option<latency::Latencies>,
    pub(crate) floor_high: Option<latency::Latencies>,
    pub(crate) rss_mib: f64,
    pub(crate) cpu_us: f64,
    /// The worker's context switches per stored checkin in (3).
    pub(crate) switches: f64,
    /// `cpu_us` by kind of thread.
    pub(crate) cpu_split: procfs::CpuByThread,
    pub(crate) resident: String,
    pub(crate) versions: f64,
    pub(crate) versions_start: phases::Start,
    /// (7)'s limits: the broker alone and the version upsert alone.
    pub(crate) versions_broker: f64,
    pub(crate) versions_database: f64,
    /// The worker's CPU per stored version in (7): how much of the two
    /// cores it takes from the broker and the database beside it.
    pub(crate) versions_cpu: procfs::CpuByThread,
    pub(crate) versions_cpu_us: f64,
    /// How busy the machine was, and what its host stole, during each
    /// phase, by phase number ((5)'s are in its [`latency::Latencies`]);
    /// unmeasured (NaN) where a phase did not run.
    pub(crate) host: [procfs::HostLoad; 8],
}

/// One of a run's latency measurements.
pub(crate) type Measured = fn(&Run) -> &Option<latency::Latencies>;

impl Run {
    pub(crate) fn serial(&self) -> f64 {
        serial(self.broker, self.database)
    }

    pub(crate) fn versions_serial(&self) -> f64 {
        serial(self.versions_broker, self.versions_database)
    }
}

/// The rate if every message paid the broker's cost and the database's one
/// after the other.
fn serial(broker: f64, database: f64) -> f64 {
    1.0 / (1.0 / broker + 1.0 / database)
}

pub(crate) async fn measure(args: &Args, limits: &Limits<'_>, exe: &Path) -> anyhow::Result<Run> {
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
            "  worker backlog    {:>9.0} msgs/s ({}), {}, {:.2} context switches/msg, {:.0} msgs/batch, peak RSS {:.1} MiB ({}); {}",
            run.backlog,
            start_note(drain.start),
            cpu_note(run.cpu_us, run.cpu_split),
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
            "  worker versions   {:>9.0} msgs/s ({}), {}, {:.0} msgs/batch (broker alone {:.0}, database alone {:.0}); {}",
            run.versions,
            start_note(drain.start),
            cpu_note(run.versions_cpu_us, run.versions_cpu),
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

/// A drain's CPU per message for its progress line, with its split by thread.
fn cpu_note(total_us: f64, split: procfs::CpuByThread) -> String {
    format!(
        "{total_us:.1} µs CPU/msg (runtime {:.1}, AMQP I/O {:.1}, other {:.1})",
        split.runtime, split.amqp_io, split.other
    )
}

fn start_note(start: phases::Start) -> String {
    format!(
        "first row after {:.0} ms, then {:.0} msgs/s",
        start.first_row_ms, start.after_rate
    )
}
