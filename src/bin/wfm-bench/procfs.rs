//! What the worker process costs, from /proc: CPU time, peak resident set,
//! and what the resident set consists of.

use std::fmt;

/// USER_HZ: the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of every thread the process has had.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// VmHWM: the process's peak resident set, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The resident set by kind of mapping, in KiB.
#[derive(Debug, Default, Clone)]
pub struct Resident {
    /// The executable's own pages (code, read-only data, data).
    pub binary: u64,
    /// Shared libraries (libc, libm, …) and the loader.
    pub libraries: u64,
    /// The heap: brk and anonymous mappings (malloc arenas, large allocations).
    pub heap: u64,
    /// Thread stacks.
    pub stacks: u64,
    pub other: u64,
    pub threads: u64,
}

impl fmt::Display for Resident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "binary {:.1}, libraries {:.1}, heap {:.1}, stacks {:.1}, other {:.1} MiB ({} threads)",
            mib(self.binary),
            mib(self.libraries),
            mib(self.heap),
            mib(self.stacks),
            mib(self.other),
            self.threads
        )
    }
}

/// Sums /proc/<pid>/smaps' Rss per mapping kind. Thread stacks are the
/// `[stack]` mapping and the anonymous mappings right above a guard page,
/// which smaps cannot tell from heap: they are counted from the thread count
/// instead (each thread's touched stack, typically a few pages), and the rest
/// of the anonymous memory is heap.
pub fn resident(pid: u32, exe: &std::path::Path) -> Option<Resident> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let exe = exe.canonicalize().ok()?;
    let exe = exe.to_str()?;
    let mut resident = Resident::default();
    let mut kind = 0u8;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = match path {
                p if p == exe => 0,
                "[stack]" => 3,
                "" | "[heap]" => 2,
                p if p.starts_with('/') => 1,
                _ => 4,
            };
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            match kind {
                0 => resident.binary += kib,
                1 => resident.libraries += kib,
                2 => resident.heap += kib,
                3 => resident.stacks += kib,
                _ => resident.other += kib,
            }
        }
    }
    resident.threads = status_kib(pid, "Threads:").unwrap_or(0);
    Some(resident)
}
