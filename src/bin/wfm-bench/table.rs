//! The table `wfm-bench` prints at the end of a run of the main phases:
//! medians of the runs, ratios taken within each run, and each target's
//! verdict.

use crate::{
    Args, latency, machine_facts,
    procfs::HostLoad,
    run::{Measured, Run},
};

fn median(runs: &[Run], field: impl Fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(field).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) async fn print_report(args: &Args, runs: &[Run]) {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs, f);
    // A phase left out (`--phases`) measures 0: no verdict on it.
    let verdict = |value: f64, ok: bool| {
        if !value.is_finite() || value == 0.0 {
            "not measured"
        } else if ok {
            "met"
        } else {
            "MISSED"
        }
    };
    let (broker, database, backlog) = (m(&|r| r.broker), m(&|r| r.database), m(&|r| r.backlog));
    let lat = |which: Measured, f: fn(&latency::Latencies) -> f64| {
        m(&|r| which(r).as_ref().map_or(f64::NAN, f))
    };
    println!(
        "\nwfm-bench: medians of {} run(s); ratios are taken within each run\n",
        runs.len()
    );
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
    println!(
        "| L serial limit 1/(1/(1)+1/(2)) | {:.0} msgs/s | |",
        m(&Run::serial)
    );
    println!(
        "| (3) worker, backlog of {} checkins | {backlog:.0} msgs/s | |",
        args.messages
    );
    println!(
        "| (3) the worker's start (spawn → first row stored, polled every 2 ms) / its rate after it | {:.0} ms / {:.0} msgs/s | |",
        m(&|r| r.backlog_start.first_row_ms),
        m(&|r| r.backlog_start.after_rate)
    );
    let cpu = m(&|r| r.cpu_us);
    println!(
        "| (3) worker CPU (user + system, all threads) per stored checkin | {cpu:.1} µs | ≤ 13 µs: {} |",
        verdict(cpu, cpu <= 13.0)
    );
    println!(
        "| (3) of which runtime threads / AMQP I/O threads (lapin, one per connection) / other | {:.1} / {:.1} / {:.1} µs | |",
        m(&|r| r.cpu_split.runtime),
        m(&|r| r.cpu_split.amqp_io),
        m(&|r| r.cpu_split.other)
    );
    println!(
        "| (3) the worker's context switches (all its threads, voluntary and not) per stored checkin | {:.2} | |",
        m(&|r| r.switches)
    );
    println!(
        "| (4) worker, batch size 1, {} checkins | {:.0} msgs/s | |",
        args.single_messages,
        m(&|r| r.single)
    );
    // The two latency points: the offered load, with its target, and ten
    // times it; each with the worker's figures and its floor's.
    let points: [(usize, Measured, Measured); 2] = [
        (args.latency_rate, |r| &r.low, |r| &r.floor),
        (args.latency_rate * 10, |r| &r.high, |r| &r.floor_high),
    ];
    for (rate, worker, _) in points {
        let (p50, p99, max) = (
            lat(worker, |l| l.p50_ms),
            lat(worker, |l| l.p99_ms),
            lat(worker, |l| l.max_ms),
        );
        let target = if rate == args.latency_rate {
            format!(
                "p99 ≤ 5 ms, p50 ≤ 3 ms: {}",
                verdict(p99, p99 <= 5.0 && p50 <= 3.0)
            )
        } else {
            String::new()
        };
        println!(
            "| (5) publish→commit p50 / p99 / max at {rate}/s for {} s | {p50:.1} / {p99:.1} / {max:.1} ms | {target} |",
            args.latency_secs
        );
        println!(
            "| (5) at {rate}/s, the worker's CPU per checkin / its context switches per checkin / its mean batch | {:.1} µs / {:.2} / {:.1} msgs | |",
            lat(worker, |l| l.cpu_us),
            lat(worker, |l| l.switches),
            lat(worker, |l| l.mean_batch),
        );
    }
    for (rate, _, floor) in points {
        println!(
            "| (5) its floor: publish→deliver, the broker alone (ack-only consumer), p50 / p99 / max at {rate}/s | {:.1} / {:.1} / {:.1} ms | |",
            lat(floor, |l| l.p50_ms),
            lat(floor, |l| l.p99_ms),
            lat(floor, |l| l.max_ms),
        );
    }
    for (rate, worker, floor) in points {
        println!(
            "| (5) at {rate}/s, p50 of the first / the last message of each burst ({} at once): publish→commit; the broker alone | {:.1} / {:.1} ms; {:.1} / {:.1} ms | |",
            rate / 100,
            lat(worker, |l| l.first_p50_ms),
            lat(worker, |l| l.last_p50_ms),
            lat(floor, |l| l.first_p50_ms),
            lat(floor, |l| l.last_p50_ms),
        );
    }
    let [(low, worker, floor), (high, worker_high, floor_high)] = points;
    println!(
        "| (5) p50 publish→insert (the row's insert inside the worker's transaction, by PostgreSQL's clock) at {low}/s / {high}/s | {:.1} / {:.1} ms | |",
        lat(worker, |l| l.insert_p50_ms),
        lat(worker_high, |l| l.insert_p50_ms),
    );
    println!(
        "| (5) the most messages its queue held ready at once (sampled every 100 ms) at {low}/s / {high}/s; the broker alone at {low}/s / {high}/s | {:.0} / {:.0}; {:.0} / {:.0} | |",
        lat(worker, |l| f64::from(l.most_ready)),
        lat(worker_high, |l| f64::from(l.most_ready)),
        lat(floor, |l| f64::from(l.most_ready)),
        lat(floor_high, |l| f64::from(l.most_ready)),
    );
    let rss = m(&|r| r.rss_mib);
    println!(
        "| (6) worker peak RSS during (3) | {rss:.1} MiB | ≤ 28 MiB: {} |",
        verdict(rss, rss <= 28.0)
    );
    if let Some(last) = runs.last() {
        println!(
            "| (6) resident at the end of (3), last run | {} | |",
            last.resident
        );
    }
    let versions = m(&|r| r.versions);
    println!(
        "| (7) worker, backlog of {} versions | {versions:.0} msgs/s | ≥ 40,000: {} |",
        args.versions,
        verdict(versions, versions >= 40_000.0)
    );
    println!(
        "| (7) the worker's start (as in (3)) / its rate after it | {:.0} ms / {:.0} msgs/s | |",
        m(&|r| r.versions_start.first_row_ms),
        m(&|r| r.versions_start.after_rate)
    );
    println!(
        "| (7) worker CPU (user + system, all threads) per stored version; runtime threads / AMQP I/O threads / other | {:.1} µs; {:.1} / {:.1} / {:.1} µs | |",
        m(&|r| r.versions_cpu_us),
        m(&|r| r.versions_cpu.runtime),
        m(&|r| r.versions_cpu.amqp_io),
        m(&|r| r.versions_cpu.other)
    );
    println!(
        "| (7) its limits: the broker alone (as (1)) / the version upsert alone (as (2)) / serial L | {:.0} / {:.0} / {:.0} msgs/s | |",
        m(&|r| r.versions_broker),
        m(&|r| r.versions_database),
        m(&Run::versions_serial)
    );
    println!(
        "| (7) over its database limit / over its L | {:.2} / {:.2} | |",
        m(&|r| r.versions / r.versions_database),
        m(&|r| r.versions / r.versions_serial())
    );
    let over_serial = m(&|r| r.backlog / r.serial());
    let over_database = m(&|r| r.backlog / r.database);
    println!("| 3/1 | {:.2} | |", m(&|r| r.backlog / r.broker));
    println!(
        "| 3/2 | {over_database:.2} | ≥ 1.0: {} |",
        verdict(over_database, over_database >= 1.0)
    );
    let over_single = m(&|r| r.backlog / r.single);
    println!(
        "| 3/4 | {over_single:.1} | ≥ 10: {} |",
        verdict(over_single, over_single >= 10.0)
    );
    println!(
        "| 3/L | {over_serial:.2} | ≥ 1.3: {} |",
        verdict(over_serial, over_serial >= 1.3)
    );
    // The machine's load, two rows for each share: the main phases, and
    // (5)'s four loads.
    let shares: [(&str, &str, Share); 2] = [
        (
            "busy",
            "the share of the machine's CPU time spent running anything (broker, database, worker and this benchmark)",
            |h| h.busy_pct,
        ),
        (
            "steal",
            "the share of the machine's CPU time its host gave to others",
            |h| h.stolen_pct,
        ),
    ];
    for (share, what, pick) in shares {
        let phase = |p: usize| percent(m(&|r| pick(r.host[p])));
        let load =
            |which: Measured| percent(m(&|r| which(r).as_ref().map_or(f64::NAN, |l| pick(l.host))));
        println!(
            "| {share}: {what} during (1) / (2) / (3) / (4) / (7) | {} / {} / {} / {} / {} | |",
            phase(1),
            phase(2),
            phase(3),
            phase(4),
            phase(7)
        );
        println!(
            "| {share} during (5) at {low}/s / {high}/s; the broker alone at {low}/s / {high}/s | {} / {}; {} / {} | |",
            load(worker),
            load(worker_high),
            load(floor),
            load(floor_high),
        );
    }
    println!("\nmachine: {}", machine_facts().await);
}

/// One share of a phase's [`HostLoad`].
type Share = fn(HostLoad) -> f64;

/// A percentage to one decimal, or a dash where it was not measured.
pub(crate) fn percent(pct: f64) -> String {
    if pct.is_finite() {
        format!("{pct:.1} %")
    } else {
        "–".to_owned()
    }
}
