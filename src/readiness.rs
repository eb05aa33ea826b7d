//! What `/readyz` reports, kept up to date by the parts of the worker that know
//! it: start-up (bootstrap), the connection (broker), each queue's pipeline
//! (consuming, or paused after a systemic failure), the dead-letter connection
//! (blocked by a broker alarm).
//!
//! Reading it never touches the database or the broker, so a probe is cheap,
//! cannot hold up the writers, and cannot hang.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// How a queue is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    Consuming,
    /// Consumption stopped after a systemic failure; the reason, bounded.
    Paused(String),
}

/// Shared readiness state. Cheap to update: a few atomics and short locks.
#[derive(Debug, Default)]
pub struct Readiness {
    bootstrapped: AtomicBool,
    broker_connected: AtomicBool,
    /// `Some(reason)` while the broker blocks the dead-letter connection.
    blocked: Mutex<Option<String>>,
    queues: Mutex<BTreeMap<String, QueueState>>,
}

/// A point-in-time copy of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bootstrapped: bool,
    pub broker_connected: bool,
    pub blocked: Option<String>,
    pub queues: BTreeMap<String, QueueState>,
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

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bootstrapped: self.bootstrapped.load(Ordering::Relaxed),
            broker_connected: self.broker_connected.load(Ordering::Relaxed),
            blocked: lock(&self.blocked).clone(),
            queues: lock(&self.queues).clone(),
        }
    }
}

/// The state is plain data: a panic elsewhere while a lock was held cannot
/// leave it inconsistent, so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
