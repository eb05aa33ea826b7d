//! `--instructions` (16): the worker's instructions per stored checkin, by
//! kind of thread, counted by valgrind's callgrind during (3)'s drain.
//!
//! Why: CPU time per message moves with the machine (a VM's speed drifted by
//! more than a change's effect within one sitting, BENCHMARKS.md), while an
//! instruction count of the same binary on the same input is repeatable, so a
//! change of a few per cent can be shown with one run of each binary. What it
//! cannot show is what costs time without instructions: cache misses, branch
//! mispredictions, wake-ups; CPU time (3) remains the measure of record. And
//! a large copy counts one instruction per byte (glibc's `rep movsb`), so
//! copies weigh far more here than in time.
//!
//! Two drains, of a third of the messages and of all of them; the difference
//! divided by the difference in messages leaves out start-up and shutdown.
//! Under valgrind the worker runs ~50 times slower, one thread at a time, so
//! its batches may form differently from a native run: the mean batch of each
//! drain is reported beside the counts.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::phases::{self, Backlog, Limits};

/// Instructions by kind of thread, as in (3)'s CPU split.
#[derive(Default, Clone, Copy)]
struct ByThread {
    runtime: u64,
    amqp_io: u64,
    other: u64,
}

impl ByThread {
    fn total(self) -> u64 {
        self.runtime + self.amqp_io + self.other
    }
}

/// Runs both drains under callgrind and prints what one more checkin costs.
pub async fn report(limits: &Limits<'_>, exe: &Path, messages: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "--instructions needs valgrind (apt-get install valgrind)"
    );
    let small = (messages / 3).max(1);
    anyhow::ensure!(messages > small, "--messages must be at least 2");
    let dir = std::env::temp_dir().join(format!("wfm-bench-callgrind-{}", std::process::id()));
    let mut counted = Vec::new();
    for count in [small, messages] {
        let out = dir.join(count.to_string());
        fs::create_dir_all(&out)?;
        let wrapper = write_wrapper(&out, exe)?;
        eprintln!("  draining {count} checkins under callgrind");
        let drain = phases::worker_drain(
            limits,
            &wrapper,
            Backlog::Checkins,
            count,
            limits.batch_size,
        )
        .await?;
        counted.push((count, read_counts(&out)?, drain.mean_batch));
    }
    let [(n0, i0, b0), (n1, i1, b1)] = [counted[0], counted[1]];
    let per = |f: fn(ByThread) -> u64| (f(i1) as f64 - f(i0) as f64) / (n1 - n0) as f64;
    println!("\nwfm-bench --instructions (callgrind; drains of {n0} and {n1} checkins)\n");
    println!("| measurement | result |\n|---|---:|");
    println!(
        "| (16) worker instructions per stored checkin: all threads | {:.0} |",
        per(ByThread::total)
    );
    println!(
        "| (16) of which runtime threads / AMQP I/O threads / other | {:.0} / {:.0} / {:.0} |",
        per(|t| t.runtime),
        per(|t| t.amqp_io),
        per(|t| t.other)
    );
    println!("| (16) mean batch of the two drains | {b0:.0} / {b1:.0} msgs |");
    println!(
        "\ncallgrind's files (one per thread): {} (callgrind_annotate <file>)",
        dir.display()
    );
    println!("machine: {}", crate::machine_facts().await);
    Ok(())
}

/// A script that runs `exe` under callgrind, its files in `out`: the drain
/// spawns a worker binary by path, and this is one.
fn write_wrapper(out: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    let path = out.join("worker.sh");
    let script = format!(
        "#!/bin/sh\nexec valgrind --tool=callgrind --separate-threads=yes --log-file='{out}/valgrind.log' --callgrind-out-file='{out}/cg.%p' '{}' \"$@\"\n",
        exe.display(),
        out = out.display(),
    );
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Sums callgrind's per-thread files in `out` by kind of thread, told by the
/// function each kind of thread loops in.
fn read_counts(out: &Path) -> anyhow::Result<ByThread> {
    let mut sum = ByThread::default();
    let mut files = 0;
    for entry in fs::read_dir(out)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // `cg.<pid>-<thread>`; `cg.<pid>` alone holds no counts.
        if !name.starts_with("cg.") || !name.contains('-') {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let instructions = summary(&text)
            .ok_or_else(|| anyhow::anyhow!("no summary line in {}", path.display()))?;
        let kind = if text.contains("IoLoop<RK,C>::run") {
            &mut sum.amqp_io
        } else if text.contains("scheduler::multi_thread::worker::run") {
            &mut sum.runtime
        } else {
            &mut sum.other
        };
        *kind += instructions;
        files += 1;
    }
    anyhow::ensure!(files > 0, "callgrind wrote nothing in {}", out.display());
    Ok(sum)
}

/// The `summary:` (or, from older valgrinds, `totals:`) line's count.
fn summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|count| count.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_line_is_read() {
        let text = "version: 1\nevents: Ir\nfn=(1) main\n0x1 3\nsummary: 12345\n";
        assert_eq!(super::summary(text), Some(12345));
        assert_eq!(super::summary("totals: 7\n"), Some(7));
        assert_eq!(super::summary("events: Ir\n"), None);
    }
}
