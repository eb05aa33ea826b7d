//! The kill switch: when the database refuses every write (the store's probe
//! says so: a revoked grant, a missing table, a trigger refusing everything),
//! no message is to blame, so none may be dead-lettered or burn its attempts.
//! The queue stops consuming, hands everything back, says why on `/readyz`,
//! and tries again after a pause: 1 s (`first_pause`), doubling to 60 s,
//! until a batch stores. A lost channel ends the pause early (see the
//! reader's `pause`).

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;

/// One queue's switch, shared by its reader and its batches.
pub(super) struct Breaker {
    state: Mutex<State>,
    tripped: Notify,
    first_pause: Duration,
}

#[derive(Default)]
struct State {
    /// Set by a batch that met a systemic failure; the reader pauses.
    pending: Option<String>,
    /// Pauses since the last batch that stored something.
    pauses: u32,
}

const LONGEST_PAUSE: Duration = Duration::from_secs(60);

impl Breaker {
    /// A switch whose pauses start at `first_pause`.
    pub fn new(first_pause: Duration) -> Breaker {
        Breaker {
            state: Mutex::default(),
            tripped: Notify::new(),
            first_pause,
        }
    }

    /// A batch found the database failing as a whole.
    pub fn trip(&self, reason: &str) {
        let mut state = self.lock();
        if state.pending.is_none() {
            state.pending = Some(reason.to_owned());
            self.tripped.notify_one();
        }
    }

    /// A batch stored something: the database works, pauses start over.
    pub fn reset(&self) {
        self.lock().pauses = 0;
    }

    /// Waits until a batch trips the switch.
    pub async fn tripped(&self) {
        loop {
            // Registered before the check, so a trip in between is not missed;
            // a stale wake-up (a trip already taken) just loops.
            let notified = self.tripped.notified();
            if self.lock().pending.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Takes the reason of the trip, and how long to pause for it.
    pub fn pause(&self) -> (String, Duration) {
        let mut state = self.lock();
        let reason = state.pending.take().unwrap_or_default();
        let pause = self
            .first_pause
            .saturating_mul(1 << state.pauses.min(6))
            .min(LONGEST_PAUSE.max(self.first_pause));
        state.pauses += 1;
        (reason, pause)
    }

    /// Whether a trip is waiting for the reader.
    pub fn is_tripped(&self) -> bool {
        self.lock().pending.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_a_minute_and_start_over_after_a_success() {
        let breaker = Breaker::new(Duration::from_secs(1));
        let mut pauses = Vec::new();
        for _ in 0..8 {
            breaker.trip("x");
            pauses.push(breaker.pause().1.as_secs());
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
        breaker.reset();
        breaker.trip("x");
        assert_eq!(breaker.pause(), ("x".to_owned(), Duration::from_secs(1)));
    }

    #[test]
    fn a_first_pause_beyond_a_minute_is_not_cut_short() {
        let breaker = Breaker::new(Duration::from_secs(300));
        breaker.trip("x");
        assert_eq!(breaker.pause().1, Duration::from_secs(300));
        breaker.trip("x");
        assert_eq!(breaker.pause().1, Duration::from_secs(300));
    }

    #[tokio::test]
    async fn a_trip_before_waiting_is_not_missed() {
        let breaker = Breaker::new(Duration::from_secs(1));
        breaker.trip("first");
        breaker.trip("second");
        breaker.tripped().await;
        assert_eq!(breaker.pause().0, "first");
        assert!(!breaker.is_tripped());
    }
}
