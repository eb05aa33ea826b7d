//! What `/readyz` reports, kept up to date by the parts of the worker that know
//! it: start-up (bootstrap), the connection (broker), each queue's pipeline
//! (consuming, or paused after a systemic failure), the dead-letter connection
//! (blocked by a broker alarm).
//!
//! The database's state comes from the writes themselves and, when nothing
//! was written for a while, from a background check on a connection of its
//! own (`app::probe`). Reading it never touches the database or the broker, so
//! a probe of `/readyz` is cheap, cannot hold up the writers, and cannot hang.

use std::{
    collections::BTreeMap,
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How a queue is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    Consuming,
    /// Consumption stopped after a systemic failure; the reason, bounded.
    Paused(String),
}

/// Why the database is not usable, as readiness tells it: no server text
/// (it names hosts and versions), only what kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseProblem {
    CannotConnect,
    QueryFails,
    NoAnswer,
    WritesFail,
}

impl DatabaseProblem {
    const ALL: [DatabaseProblem; 4] = [
        Self::CannotConnect,
        Self::QueryFails,
        Self::NoAnswer,
        Self::WritesFail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CannotConnect => "cannot connect",
            Self::QueryFails => "queries fail",
            Self::NoAnswer => "no answer in time",
            Self::WritesFail => "writes fail",
        }
    }
}

/// How the database is doing, from the last write or background check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseState {
    Ok,
    Unreachable(DatabaseProblem),
    /// Nothing has reached it for longer than [`STALE`].
    Unknown,
}

/// A database not heard from for this long is not assumed to be well.
pub const STALE: Duration = Duration::from_secs(30);

/// Shared readiness state. Cheap to update: a few atomics and short locks.
#[derive(Debug, Default)]
pub struct Readiness {
    bootstrapped: AtomicBool,
    broker_connected: AtomicBool,
    /// Milliseconds since [`EPOCH`] of the last successful write or check (0: never).
    database_ok_at: AtomicU64,
    /// 0, or 1 + the index of the latest [`DatabaseProblem`] since then.
    database_problem: AtomicU8,
    /// `Some(reason)` while the broker blocks the dead-letter connection.
    blocked: Mutex<Option<String>>,
    queues: Mutex<BTreeMap<String, QueueState>>,
}

/// A point-in-time copy of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bootstrapped: bool,
    pub broker_connected: bool,
    pub database: DatabaseState,
    pub blocked: Option<String>,
    pub queues: BTreeMap<String, QueueState>,
}

/// Queues a ready worker consumes.
pub const QUEUES: usize = 2;

impl Snapshot {
    /// Queues consuming (not paused).
    pub fn consuming(&self) -> usize {
        self.queues
            .values()
            .filter(|q| **q == QueueState::Consuming)
            .count()
    }

    /// Ready: bootstrapped, connected, every queue consuming, the database well.
    pub fn ready(&self) -> bool {
        self.bootstrapped
            && self.broker_connected
            && self.consuming() == QUEUES
            && self.database == DatabaseState::Ok
    }
}

impl Readiness {
    pub fn set_bootstrapped(&self) {
        self.bootstrapped.store(true, Ordering::Relaxed);
    }

    /// A lost connection loses its consumers too.
    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
        if !connected {
            lock(&self.queues).clear();
            *lock(&self.blocked) = None;
        }
    }

    pub fn set_queue(&self, queue: &str, state: QueueState) {
        lock(&self.queues).insert(queue.to_owned(), state);
    }

    pub fn set_blocked(&self, reason: Option<&str>) {
        *lock(&self.blocked) = reason.map(crate::message::excerpt);
    }

    /// A write committed, or a check answered.
    pub fn database_ok(&self) {
        self.database_ok_at
            .store(now_ms().max(1), Ordering::Relaxed);
        self.database_problem.store(0, Ordering::Relaxed);
    }

    pub fn database_failed(&self, problem: DatabaseProblem) {
        let index = DatabaseProblem::ALL
            .iter()
            .position(|p| *p == problem)
            .unwrap_or(0);
        self.database_problem
            .store(index as u8 + 1, Ordering::Relaxed);
    }

    /// Whether the database answered within `window` (then no check is needed).
    pub fn database_ok_within(&self, window: Duration) -> bool {
        let at = self.database_ok_at.load(Ordering::Relaxed);
        at != 0
            && self.database_problem.load(Ordering::Relaxed) == 0
            && now_ms().saturating_sub(at) < window.as_millis() as u64
    }

    fn database(&self) -> DatabaseState {
        match self.database_problem.load(Ordering::Relaxed) {
            0 if self.database_ok_within(STALE) => DatabaseState::Ok,
            0 => DatabaseState::Unknown,
            n => DatabaseState::Unreachable(DatabaseProblem::ALL[usize::from(n - 1)]),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bootstrapped: self.bootstrapped.load(Ordering::Relaxed),
            broker_connected: self.broker_connected.load(Ordering::Relaxed),
            database: self.database(),
            blocked: lock(&self.blocked).clone(),
            queues: lock(&self.queues).clone(),
        }
    }
}

/// The reference point of the database timestamps (atomics hold no `Instant`).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The state is plain data: a panic elsewhere while a lock was held cannot
/// leave it inconsistent, so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
