//! How the consuming connection's deliveries are being taken, which decides
//! how long lapin's thread lets input gather before it reads.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// Shared by a consuming connection's socket and the readers of its queues.
///
/// A reader taking deliveries in bulk (a backlog, or a stream it lingers
/// for) gains nothing from each delivery reaching it as soon as it arrives:
/// lapin's thread may wait for a chunk ([`super::LOW_WATER`]) and read it
/// with one wake. A reader writing each few messages at once (low load)
/// loses by it: a message that sits in the socket during that wait misses
/// the batch a freed write permit takes, and waits a whole transaction more
/// (BENCHMARKS.md, "Each delivery as it arrives at low load"). So the socket
/// waits for chunks only while some reader is in bulk.
#[derive(Clone, Debug, Default)]
pub struct Pace(Arc<AtomicUsize>);

impl Pace {
    /// Marks a reader as taking deliveries in bulk until the mark is dropped.
    pub fn in_bulk(&self) -> InBulk {
        // Relaxed: a stale read costs one wait of the other kind, nothing more.
        self.0.fetch_add(1, Ordering::Relaxed);
        InBulk(self.0.clone())
    }

    /// Whether some reader takes deliveries in bulk.
    pub fn bulk(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// A reader in bulk (see [`Pace::in_bulk`]).
#[derive(Debug)]
pub struct InBulk(Arc<AtomicUsize>);

impl Drop for InBulk {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn bulk_while_any_reader_holds_its_mark() {
        let pace = Pace::default();
        assert!(!pace.bulk());
        let checkins = pace.in_bulk();
        let versions = pace.clone().in_bulk();
        drop(checkins);
        assert!(pace.bulk(), "one reader is still in bulk");
        drop(versions);
        assert!(!pace.bulk());
    }
}
