//! The `--history` table.

use super::{convert_while_ingesting, drop_by_delete, drop_by_retention, partitioned_drain};
use crate::phases::Limits;

/// Phases 8-12 (see `history`), one run, printed as a table.
pub async fn report(
    args: &crate::Args,
    limits: &Limits<'_>,
    exe: &std::path::Path,
) -> anyhow::Result<()> {
    let drains = partitioned_drain(limits, exe, args.messages, args.pairs).await?;
    let dropped = drop_by_retention(limits, args.day_rows).await?;
    let dropped_small = drop_by_retention(limits, args.day_rows / 10).await?;
    let deleted = drop_by_delete(limits, args.day_rows).await?;
    eprintln!(
        "  (9) drop {:.3} s, DELETE {:.1} s",
        dropped.seconds, deleted.seconds
    );
    let conversion =
        convert_while_ingesting(limits, exe, args.legacy_rows, args.ingest_rate).await?;
    eprintln!(
        "  (10) conversion {:.1} s, longest pause {:.0} ms from {:.1} s, switch {:.0} ms ({} attempt(s))",
        conversion.seconds,
        conversion.longest_pause_ms,
        conversion.pause_began_s,
        conversion.switch_ms,
        conversion.switch_attempts
    );
    let reports =
        crate::reports::reports(limits, args.clusters, args.checkins_per_cluster, 5).await?;
    let summaries = crate::reports::summary_cost(limits, args.messages, args.pairs).await?;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mib = |bytes: i64| bytes as f64 / (1 << 20) as f64;
    println!("\nwfm-bench --history\n");
    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!(
        "| (8) backlog of {} checkins: ordinary / partitioned (maintenance creating and dropping partitions), medians of {} pairs | {:.0} / {:.0} msgs/s; ratio {:.2} | ≥ 0.95: {} |",
        args.messages,
        args.pairs,
        drains.base,
        drains.variant,
        drains.ratio,
        verdict(drains.ratio >= 0.95)
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
        "| (12) batched write of {} checkins, without / with summaries, medians of {} pairs | {:.0} / {:.0} msgs/s; ratio {:.3} | ≥ 0.95: {} |",
        args.messages,
        args.pairs,
        summaries.base,
        summaries.variant,
        summaries.ratio,
        verdict(summaries.ratio >= 0.95)
    );
    println!("\nmachine: {}", crate::machine_facts().await);
    Ok(())
}
