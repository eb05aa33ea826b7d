//! What the worker process costs, from /proc: CPU time, peak resident set,
//! and what the resident set consists of.

use std::fmt;

/// USER_HZ: the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of every thread the process has had.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    utime_stime(stat.rsplit_once(')')?.1)
}

/// Where a process's CPU time went, by kind of thread: seconds (user +
/// system) of the threads alive when it is read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuByThread {
    /// tokio's runtime threads: deciding, writing, acking.
    pub runtime: f64,
    /// lapin's I/O threads, one per broker connection: socket reads and
    /// writes, AMQP frame parsing, handing deliveries over.
    pub amqp_io: f64,
    /// Everything else (the main thread, blocking-pool threads).
    pub other: f64,
}

impl CpuByThread {
    /// Each kind of thread's time multiplied by `factor` (to µs per message).
    pub fn scaled(self, factor: f64) -> Self {
        CpuByThread {
            runtime: self.runtime * factor,
            amqp_io: self.amqp_io * factor,
            other: self.other * factor,
        }
    }
}

/// [`CpuByThread`] of `pid`, from /proc/<pid>/task/*/stat.
pub fn cpu_by_thread(pid: u32) -> Option<CpuByThread> {
    let mut split = CpuByThread::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, secs)) = thread_cpu(&stat) {
            match name {
                "tokio-rt-worker" => split.runtime += secs,
                "lapin-io-loop" => split.amqp_io += secs,
                _ => split.other += secs,
            }
        }
    }
    Some(split)
}

/// The command name and user + system CPU seconds of a /proc stat line.
fn thread_cpu(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    Some((name, utime_stime(rest)?))
}

/// utime + stime, in seconds, from the fields after a stat line's `(name)`.
fn utime_stime(rest: &str) -> Option<f64> {
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Context switches of the threads of `pid` alive when it is read,
/// voluntary (a thread that waits: for a socket, a lock, more work) and not
/// (preempted), from /proc/<pid>/task/*/status. Each is a thread put to
/// sleep or woken, the work a message costs beyond its own at low load.
/// A count, as `f64` for figures per message (as [`cpu_secs`]).
pub fn context_switches(pid: u32) -> Option<f64> {
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        switches += switches_in(&status).unwrap_or(0);
    }
    Some(switches as f64)
}

/// Voluntary + involuntary context switches from a /proc status file.
fn switches_in(status: &str) -> Option<u64> {
    Some(
        status_field(status, "voluntary_ctxt_switches:")?
            + status_field(status, "nonvoluntary_ctxt_switches:")?,
    )
}

/// VmHWM: the process's peak resident set, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, field)
}

/// The number after `field` (its name with the colon) in a /proc status
/// file; a unit after it (`kB`) is left out.
fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The machine's CPU time so far, from /proc/stat's `cpu` line (ticks, all
/// cores): in all, idle (waiting for I/O included), and what the hypervisor
/// gave to other guests while this machine had work to run (steal). A
/// virtual machine whose host is busy runs the broker, the database and the
/// worker late by that much, so a phase's steal says how far its figures are
/// the machine's and not theirs; and a machine that is busy nearly all the
/// time has no CPU to spare for catching up, whoever needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    total: u64,
    idle: u64,
    steal: u64,
}

impl HostCpu {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// The aggregate line: user nice system idle iowait irq softirq steal
    /// (guest time is already counted in user).
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.strip_prefix("cpu ")?.split_whitespace();
        let mut ticks = [0u64; 8];
        for tick in &mut ticks {
            *tick = fields.next()?.parse().ok()?;
        }
        Some(HostCpu {
            total: ticks.iter().sum(),
            idle: ticks[3] + ticks[4],
            steal: ticks[7],
        })
    }

    /// How the machine's CPU time between `self` and `later` was spent.
    pub fn load_until(self, later: Self) -> HostLoad {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return HostLoad::UNMEASURED;
        }
        let idle = later.idle.saturating_sub(self.idle);
        let steal = later.steal.saturating_sub(self.steal);
        let pct = |ticks: u64| 100.0 * ticks as f64 / total as f64;
        HostLoad {
            busy_pct: pct(total.saturating_sub(idle + steal)),
            stolen_pct: pct(steal),
        }
    }
}

/// The machine's CPU time over a phase, in percent of all of it: spent
/// running anything of this machine's (the broker, the database, the worker
/// and this benchmark alike), and stolen by the host. NaN where it was not
/// measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostLoad {
    pub busy_pct: f64,
    pub stolen_pct: f64,
}

impl HostLoad {
    pub const UNMEASURED: HostLoad = HostLoad {
        busy_pct: f64::NAN,
        stolen_pct: f64::NAN,
    };
}

impl Default for HostLoad {
    fn default() -> Self {
        Self::UNMEASURED
    }
}

/// The machine's load from when it was started: see [`HostCpu`].
pub struct HostWatch(Option<HostCpu>);

impl HostWatch {
    pub fn start() -> Self {
        HostWatch(HostCpu::now())
    }

    /// The machine's load since [`HostWatch::start`] (unmeasured where
    /// /proc/stat cannot be read).
    pub fn load(&self) -> HostLoad {
        match (self.0, HostCpu::now()) {
            (Some(before), Some(now)) => before.load_until(now),
            _ => HostLoad::UNMEASURED,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_stat_line_gives_its_name_and_cpu_seconds() {
        // Fields 14 and 15 (utime, stime) are 150 and 25 ticks.
        let stat = "4242 (lapin-io-loop) S 1 2 3 0 -1 4194368 10 0 0 0 150 25 0 0 20 0 6 0 100 0 0";
        assert_eq!(thread_cpu(stat), Some(("lapin-io-loop", 1.75)));
        // A name may hold spaces and parentheses; the last `)` ends it.
        let odd = "7 (a (b) c) R 1 2 3 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 0 0";
        assert_eq!(thread_cpu(odd), Some(("a (b) c", 0.03)));
        assert_eq!(thread_cpu("7 (short) R 1"), None);
    }

    #[test]
    fn context_switches_are_the_voluntary_and_involuntary_ones_together() {
        let status = "Name:\tlapin-io-loop\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t8444\nnonvoluntary_ctxt_switches:\t3394\n";
        assert_eq!(switches_in(status), Some(11_838));
        assert_eq!(switches_in("Name:\tx\nvoluntary_ctxt_switches:\t1\n"), None);
        // This thread's own file (other tests' threads come and go): a sleep
        // is a voluntary switch.
        let mine = || switches_in(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
        let before = mine().expect("this thread's status");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = mine().expect("this thread's status");
        assert!(after > before, "{before} then {after}");
        assert!(context_switches(std::process::id()).is_some());
    }

    #[test]
    fn busy_and_steal_are_shares_of_all_cpu_time_between_two_readings() {
        let before = HostCpu::parse("cpu  204040 0 35869 109206 6370 0 3804 25145 0 0").unwrap();
        let after = HostCpu::parse("cpu  207403 0 37704 111387 6792 0 4138 26667 0 0").unwrap();
        let load = before.load_until(after);
        // Of 9,657 ticks: 1,522 stolen; 2,181 idle and 422 waiting for I/O.
        assert!((load.stolen_pct - 15.76).abs() < 0.01, "{load:?}");
        assert!((load.busy_pct - 57.28).abs() < 0.01, "{load:?}");
        let none = before.load_until(before);
        assert!(none.busy_pct.is_nan() && none.stolen_pct.is_nan());
        // A kernel without the steal field, or a per-core line, is not read.
        assert_eq!(HostCpu::parse("cpu  1 2 3 4 5 6 7"), None);
        assert_eq!(HostCpu::parse("cpu0 1 2 3 4 5 6 7 8 0 0"), None);
        assert!(HostCpu::now().is_some(), "this machine's /proc/stat");
    }

    #[test]
    fn threads_are_counted_by_their_name() {
        // A thread named like lapin's burns 100 ms of CPU and stays alive
        // (a thread that ended is no longer in /proc) until it is read.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let (burnt, ready) = std::sync::mpsc::channel();
        let burner = std::thread::Builder::new()
            .name("lapin-io-loop".into())
            .spawn(move || {
                let own = || {
                    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                    thread_cpu(&stat).unwrap().1
                };
                let mut x = 0u64;
                while own() < 0.1 {
                    for _ in 0..1_000_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                burnt.send(()).unwrap();
                let _ = wait.recv();
            })
            .unwrap();
        ready.recv().unwrap();
        let split = cpu_by_thread(std::process::id()).expect("/proc of this process");
        done.send(()).unwrap();
        burner.join().unwrap();
        assert!(split.amqp_io >= 0.1, "{split:?}");
        assert!(split.runtime < 0.05, "no tokio threads here: {split:?}");
    }
}
