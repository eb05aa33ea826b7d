//! A known set of messages for fault scenarios, and the checks that nothing was
//! lost, nothing stored twice, and every cluster holds its newest checkin.

use std::{collections::HashSet, time::Duration};

use super::{Outgoing, TestEnv, broker::message_id, checkin_body, wait_until};

pub struct Scenario {
    pub messages: Vec<Outgoing>,
    pub valid: HashSet<String>,
    pub invalid: HashSet<String>,
}

/// `total` checkins with unique message ids: 300 clusters checking in again and
/// again with event times out of arrival order, and every 97th message invalid.
pub fn scenario(total: usize) -> Scenario {
    let mut scenario = Scenario {
        messages: Vec::with_capacity(total),
        valid: HashSet::new(),
        invalid: HashSet::new(),
    };
    for i in 0..total {
        let id = format!("s-{i}");
        // A permutation of 0..total: unique event times, scrambled order.
        let at_ms = 1_600_000_000_000 + ((i * 7919) % total) as i64;
        let body = if i % 97 == 13 {
            scenario.invalid.insert(id.clone());
            format!(r#"{{"id":"00000000-0000-4000-8000-{:012}"}}"#, i % 300)
        } else {
            scenario.valid.insert(id.clone());
            checkin_body(&format!("00000000-0000-4000-8000-{:012}", i % 300), &id)
        };
        let mut message = Outgoing::new(body).id(id);
        message.timestamp_ms = Some(at_ms);
        scenario.messages.push(message);
    }
    scenario
}

const CHECKINS: &str = "SELECT count(*) FROM clusters_checkins";

/// What a fault may do to dead-letter copies. A copy is confirmed on the
/// dead-letter connection before its original is acked on the consuming one,
/// so a fault that kills the consuming connection (or the process) between the
/// two makes the redelivered original be copied again. Any other fault leaves
/// exactly one copy per invalid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    ExactlyOnce,
    /// Every invalid message at least once; duplicates only from the window
    /// the fault struck in (a few batches' worth at most).
    AtLeastOnce,
}

/// Most duplicate copies one broker-side fault may cause: the invalid messages
/// of the batches in flight when it struck.
const MAX_DUPLICATE_COPIES: usize = 20;

impl TestEnv {
    /// Rows stored now: how far the work had got when a fault struck.
    pub async fn stored(&self) -> i64 {
        self.db.try_count(CHECKINS).await.unwrap_or(0)
    }

    /// Waits until `at_least` rows are stored, to strike mid-stream.
    pub async fn wait_for_progress(&self, at_least: i64) {
        self.wait_for_rows(CHECKINS, at_least).await;
    }

    /// Waits for the scenario to drain, then checks every guarantee.
    pub async fn assert_scenario_outcome(&self, scenario: &Scenario, copies: Copies) {
        let valid = scenario.valid.len() as i64;
        wait_until(
            "every valid checkin to be stored",
            Duration::from_secs(180),
            || async {
                self.db
                    .try_count(CHECKINS)
                    .await
                    .is_some_and(|n| n >= valid)
            },
        )
        .await;
        self.wait_for_dead_letters(scenario.invalid.len() as u32)
            .await;
        let queue = self.broker.topology.checkin_queue.clone();
        wait_until(
            "the checkin queue to drain",
            Duration::from_secs(60),
            || async { self.broker.ready(&queue).await == 0 },
        )
        .await;

        let client = self.db.client().await;
        let rows = client
            .query("SELECT message_id FROM clusters_checkins", &[])
            .await
            .unwrap();
        let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            stored.len(),
            scenario.valid.len(),
            "no checkin stored twice"
        );
        let stored: HashSet<String> = stored.into_iter().collect();
        assert_eq!(stored, scenario.valid, "every valid checkin stored");

        let letters = self.broker.take_dead_letters().await;
        let dead: Vec<String> = letters.iter().map(message_id).collect();
        let duplicates = dead.len() - scenario.invalid.len().min(dead.len());
        match copies {
            Copies::ExactlyOnce => {
                assert_eq!(duplicates, 0, "each invalid message dead-lettered once")
            }
            Copies::AtLeastOnce => assert!(
                duplicates <= MAX_DUPLICATE_COPIES,
                "{duplicates} duplicate dead-letter copies from one fault"
            ),
        }
        assert_eq!(
            dead.into_iter().collect::<HashSet<_>>(),
            scenario.invalid,
            "every invalid message, and only those, dead-lettered"
        );

        let stale: i64 = client
            .query_one(
                "SELECT count(*) FROM clusters c
                 JOIN (SELECT DISTINCT ON (cluster_id) cluster_id, data::text AS newest
                         FROM clusters_checkins ORDER BY cluster_id, created_at DESC) n USING (cluster_id)
                 WHERE c.data::text <> n.newest",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            stale, 0,
            "every cluster holds its newest checkin by event time"
        );
        let clusters: i64 = client
            .query_one("SELECT count(*) FROM clusters", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(clusters, 300);
    }

    /// A message published now is stored: the worker is healthy again.
    pub async fn assert_still_working(&self) {
        let body = checkin_body("0f8e1c0d-9b7a-4f7e-9a3b-5e2a4d3c6c1f", "after");
        self.broker
            .publish_checkins(&[Outgoing::new(body).id("after-the-fault")])
            .await;
        self.wait_for_rows(
            "SELECT count(*) FROM clusters_checkins WHERE message_id = 'after-the-fault'",
            1,
        )
        .await;
    }
}
